#!/usr/bin/env bash
# FLUX CUDA kernels on a GPU machine, in one go: correctness of every fused kernel (and whole
# blocks, and the tiny model) against f32 and the candle path, per-op timings, the resident
# FLUX-dev step at 1024² under several settings, bit-identity of streamed placements and
# batches with the kernels, and compute-sanitizer over the small checks.
#
# Needs: an mgpu built with `--features cuda` (docs/gpu.md), the CUDA 13 libraries in
# /usr/local/cuda/lib64, one GPU with ≥ 40 GB (80 GB for `streamed`). Nothing to install.
# Usage: tools/flux_kernels_gpu.sh [path/to/mgpu] [output folder]        (≈ 3 min on an H100)
#   PHASES="check ops steps streamed sanitize"   which parts run (default: all)
#   STEPS="on:flash:w8c128 on:cublas:w8c128 off:flash:w8c128"   the step runs' settings,
#         MGPU_FLUX_KERNELS:MGPU_ATTENTION:MGPU_FLASH_VARIANT (default shown)
# Results: check.txt, ops.txt, step-*.txt/json, streamed.txt, sanitize-*.txt in the folder.
set -u
BIN=${1:-target/release/mgpu}
OUTDIR=${2:-${OUT:-/tmp/flux-kernels}}
PHASES=${PHASES:-"check ops steps streamed sanitize"}
STEPS=${STEPS:-"on:flash:w8c128 on:cublas:w8c128 off:flash:w8c128"}
mkdir -p "$OUTDIR"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
has() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"
if has check; then
  echo "== check-kernels"
  timeout 150 "$BIN" bench --check-kernels 2>&1 | grep -v '^check: ' | tee "$OUTDIR/check.txt"
fi
if has ops; then
  echo "== ops"
  timeout 90 "$BIN" bench --ops 2>&1 | tee "$OUTDIR/ops.txt"
fi
if has steps; then
  for cfg in $STEPS; do
    IFS=: read -r kern attn var <<<"$cfg"
    echo "== step: MGPU_FLUX_KERNELS=$kern MGPU_ATTENTION=$attn MGPU_FLASH_VARIANT=$var"
    MGPU_FLUX_KERNELS=$kern MGPU_ATTENTION=$attn MGPU_FLASH_VARIANT=$var timeout 120 "$BIN" \
      bench --model dev --size 1024 --steps 4 --warmup 1 --placements resident \
      --json "$OUTDIR/step-$kern-$attn-$var.json" 2>&1 | grep -v '^bench: ' |
      tee "$OUTDIR/step-$kern-$attn-$var.txt"
  done
fi
if has streamed; then
  # Placement and batch must not change a job's bytes (the `identical` column).
  echo "== streamed placements and batches, kernels on"
  timeout 200 "$BIN" bench --model dev --size 1024 --steps 2 --warmup 1 --batch 1,2 \
    --placements resident,cpu:50 --json "$OUTDIR/streamed.json" 2>&1 | grep -v '^bench: ' |
    tee "$OUTDIR/streamed.txt"
fi
if has sanitize; then
  # Full logs go to the output folder; summary lines are printed. With --kernel-name only the
  # named kernels are instrumented. Racecheck aborts at the first cuBLAS call on Hopper
  # ("failed to handle a hardware exception"), so it covers what the checks run before it:
  # ln_modulate, qkv_rope, softmax and the flash kernels (which the checks call first).
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  sanitize() {  # name, sanitizer arguments…
    local name=$1; shift
    echo "== compute-sanitizer $name (bench --check-kernels=small)"
    timeout 100 "$CS" "$@" "$BIN" bench --check-kernels=small >"$OUTDIR/sanitize-$name.txt" 2>&1
    echo "exit $?"
    grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|Error|Warning|hazard|Race|\.cu:[0-9]|^check: ' \
      "$OUTDIR/sanitize-$name.txt" | head -30
  }
  sanitize memcheck --tool memcheck --print-limit 20
  sanitize racecheck-flash --tool racecheck --kernel-name kns=flash_fwd --print-limit 10
  sanitize racecheck-softmax --tool racecheck --kernel-name kns=softmax --print-limit 10
  sanitize racecheck-ln --tool racecheck --kernel-name kns=ln_modulate --print-limit 10
  sanitize synccheck-flash --tool synccheck --kernel-name kns=flash_fwd --print-limit 10
fi
