#!/usr/bin/env bash
# `lora_mode = "on_dequant"` through `mgpu run` on one GPU (decision 39): the tiny tour
# (manifests/tiny.toml: FLUX-shaped models and a LoRA) with its transformer written as a Q8_0
# GGUF (`mgpu make-tiny flux --format gguf`), computed in bf16 on cuda:0:
#   1. `mgpu golden record` with `lora_mode = "bake"`, the transformer resident (the patched
#      matrices dequantised at load);
#   2. `mgpu golden verify` with `lora_mode = "on_dequant"` (the blocks kept, the LoRA terms
#      added by the fused kernel at every dequantisation) resident, all blocks in host RAM and
#      all blocks in the memory-mapped file: each must be bit-identical to the bake recording.
#
# Usage: tools/gpu-lora-run.sh [path/to/mgpu] [output folder]
# Needs: an mgpu built with `--features cuda` (tools/build-cuda.sh), the CUDA 13 libraries in
# /usr/local/cuda/lib64. Under a minute. Results: lora-run.txt (one line per check) and the
# logs of the checks that failed. Exit code 1 if a check fails.
# shellcheck source=tools/gpu-run-common.sh
. "$(dirname "$0")/gpu-run-common.sh" "${1:-}" "${2:-}" /tmp/gpu-lora-run
: >"$OUTDIR/lora-run.txt"
mkdir -p "$W/tiny"
cp "$ROOT"/manifests/tiny/*.safetensors "$ROOT"/manifests/tiny/*.json "$W/tiny/"
"$BIN" make-tiny flux --out "$W/tiny" --format gguf >"$W/make.log" 2>&1 || {
  cat "$W/make.log"
  exit 1
}

# variant MODE ALLOCATION NAME: the tiny tour on cuda:0 in bf16 with the GGUF transformer.
variant() {
  python3 - "$ROOT/manifests/tiny.toml" "$1" "$2" "$W/$3.toml" "$W/out/$3" <<'EOF'
import re, sys
src, mode, alloc, dst, out = sys.argv[1:]
s = open(src).read()
s = s.replace('compute = "cpu"', 'compute = "cuda:0"', 1)
s = re.sub(r'(?m)^output_root = .*$', f'output_root = "{out}"', s, count=1)
s = s.replace('file = "tiny/flux-tiny.safetensors"', 'file = "tiny/flux-tiny-Q8_0.gguf"', 1)
s = re.sub(r'(?m)^allocation = "cpu,50%;disk,50%"$',
           f'allocation = "{alloc}"\ndtype = "bf16"\nlora_mode = "{mode}"', s, count=1)
assert 'lora_mode' in s and 'Q8_0.gguf' in s
open(dst, "w").write(s)
EOF
}

check() {
  local name=$1 log
  shift
  log=$(echo "$name" | tr ' ' '-')
  if timeout 300 "$@" >"$W/$log.log" 2>&1; then status=pass; else status="exit $?"; fi
  line=$(grep -E 'identical|differ|error|golden|PASS|FAIL' "$W/$log.log" | tail -n 2 | tr '\n' ' ')
  printf '%-30s %-8s %s\n' "$name" "$status" "$line" | tee -a "$OUTDIR/lora-run.txt"
  if [ "$status" != pass ]; then
    FAIL=1
    cp "$W/$log.log" "$OUTDIR/"
  fi
}

variant bake "cuda:0,*" bake
variant on_dequant "cuda:0,*" resident
variant on_dequant "cpu,*" host
variant on_dequant "disk,*" disk
check "bake record" "$BIN" golden record "$W/bake.toml" --dir "$W/golden"
check "on_dequant resident" "$BIN" golden verify "$W/resident.toml" --dir "$W/golden"
check "on_dequant host" "$BIN" golden verify "$W/host.toml" --dir "$W/golden"
check "on_dequant disk" "$BIN" golden verify "$W/disk.toml" --dir "$W/golden"
"$BIN" run "$W/host.toml" -q --report "$OUTDIR/host-report.json" >/dev/null 2>&1 || true
rm -rf "$W"
exit $FAIL
