#!/usr/bin/env bash
# The GPU pass for issue #13, "GGML blocks travel as blocks", on one H200 (one device call,
# ≈ 5.5 min, 317 s on 2026-12-04):
#   check    `mgpu bench --check-fp8`: every dequantisation kernel against the CPU's
#            dequantisation (Q8_0 with all 65 536 f16 scales; Q4_0, Q4_1, Q5_0, Q5_1, Q2_K …
#            Q6_K on 8 192 pseudo-random blocks each; 8 values per thread and one per thread),
#            plus the fp8 checks: bytes must be equal
#   compute  `mgpu bench` on the FLUX.1-dev shape (11.9 B parameters, generated) at 1024²,
#            batch 1 and 4, bf16 compute: `resident@q8_0`, `cpu:100@q8_0`, `resident@q4_k`,
#            `cpu:100@q4_k` (Q4_K matrices; rows not whole 256-value blocks in Q5_0), the
#            compact blocks widened on the compute stream
# The bench's `identical` column is the bit-identity check: every streamed cell must hash like
# the resident one of its storage (the GPU kernels vs the CPU dequantisation, 11.9 B values).
#
# Usage: tools/gpu-ggml.sh [path/to/mgpu] [output folder]
#   STEPS (default 6), WARMUP (default 2), HW (default benches/hw-h200-2026-12-04.toml: the
#   planner's hardware file for K and the predictions)
# Needs: an mgpu built with `--features cuda` (tools/build-cuda.sh), the CUDA 13 libraries in
# /usr/local/cuda/lib64, ~60 GB of host RAM. Results in the output folder: check.txt,
# compute.txt/json. Exit code 1 if a check fails, a cell is not
# bit-identical, or a bench fails.
set -u
BIN=${1:-.carry/bin/mgpu}
OUTDIR=${2:-${OUT:-/tmp/gpu-ggml}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export RUST_BACKTRACE=0
HWF=${HW:-benches/hw-h200-2026-12-04.toml}
FAIL=0
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"

stamp "check: the dequantisation and widening kernels against the CPU"
timeout 90 "$BIN" bench --check-fp8 --device cuda:0 2>&1 | tee "$OUTDIR/check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || FAIL=1

bench() { # name, placements
  stamp "bench $1: $2"
  timeout 400 "$BIN" bench --model dev --size 1024 --steps "${STEPS:-6}" \
    --warmup "${WARMUP:-2}" --batch 1,4 --placements "$2" --slots auto --hardware "$HWF" \
    --json "$OUTDIR/$1.json" 2>&1 | tee "$OUTDIR/$1.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || FAIL=1
  grep -q "| no " "$OUTDIR/$1.txt" && { echo "a cell is not bit-identical"; FAIL=1; }
}
bench compute resident@q8_0,cpu:100@q8_0,resident@q4_k,cpu:100@q4_k
stamp "done"
exit $FAIL
