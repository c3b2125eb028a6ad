#!/usr/bin/env bash
# fp8 compute (`dtype = "fp8"`, issue #13) through `mgpu run` on one GPU: the real executor
# path (loader quantisation, e4m3 homes, F8E4M3 slots, the fused e4m3 inputs, cuBLASLt), not
# the bench's generated weights. For the drawing demo (FLUX architecture, manifests/demo.toml)
# and the tiny Wan video demo (manifests/demo-video.toml), computed on cuda:0:
#   1. `mgpu golden record` of the bf16 run and of the fp8 run, the diffusion model resident;
#   2. `mgpu golden verify` of the fp8 run with the diffusion model's blocks half on the GPU
#      and half in host RAM, and all on disk (the memory-mapped file): must be identical to
#      the resident fp8 recording (same machine: bit-exact);
#   3. `mgpu golden verify` of the fp8 run against the bf16 recording: expected to differ;
#      its PSNR lines are the quality of fp8 compute on these models (not a pass/fail check).
#
# Usage: tools/gpu-fp8-run.sh [path/to/mgpu] [output folder]
# Needs: an mgpu built with `--features cuda` (tools/build-cuda.sh) for compute capability
# 8.9+ (fp8 tensor cores), the CUDA 13 libraries in /usr/local/cuda/lib64. About a minute.
# Results: fp8-run.txt (one line per check) and the logs of the checks that failed. Exit code
# 1 if a run fails or a placement is not bit-identical.
# shellcheck source=tools/gpu-run-common.sh
. "$(dirname "$0")/gpu-run-common.sh" "${1:-}" "${2:-}" /tmp/gpu-fp8-run
: >"$OUTDIR/fp8-run.txt"

# variant SRC MODEL DTYPE ALLOCATION NAME: SRC on cuda:0 with MODEL's dtype and allocation
# set, written beside SRC (its relative paths stay valid) with its own output folder.
variant() {
  python3 - "$ROOT/manifests/$1.toml" "$2" "$3" "$4" "$ROOT/manifests/.fp8run-$5.toml" "$W/out/$5" <<'EOF'
import re, sys
src, model, dtype, alloc, dst, out = sys.argv[1:]
s = open(src).read()
s = s.replace('compute = "cpu"', 'compute = "cuda:0"', 1)
s = re.sub(r'(?m)^output_root = .*$', f'output_root = "{out}"', s, count=1)
head = f"[models.{model}]\n"
i = s.index(head) + len(head)
j = s.find("\n[", i)
body = re.sub(r"(?m)^allocation = .*\n", "", s[i:j])
extra = f'allocation = "{alloc}"\n' + (f'dtype = "{dtype}"\n' if dtype != "bf16" else "")
open(dst, "w").write(s[:i] + extra + body + s[j:])
EOF
}

# check NAME EXPECT COMMAND...: runs COMMAND, EXPECT = pass (must exit 0) or report (any).
check() {
  local name=$1 expect=$2 log
  shift 2
  log=$(echo "$name" | tr ' ' '-')
  if timeout 300 "$@" >"$W/$log.log" 2>&1; then status=pass; else status="exit $?"; fi
  line=$(grep -E 'identical|differ|PSNR|error|golden' "$W/$log.log" | tail -n 3 | tr '\n' ' ')
  printf '%-28s %-8s %s\n' "$name" "$status" "$line" | tee -a "$OUTDIR/fp8-run.txt"
  if [ "$expect" = pass ] && [ "$status" != pass ]; then
    FAIL=1
    cp "$W/$log.log" "$OUTDIR/"
  fi
  [ "$expect" = report ] && cp "$W/$log.log" "$OUTDIR/"
}

for spec in demo:flux demo-video:wan; do
  src=${spec%%:*}
  model=${spec#*:}
  variant "$src" "$model" bf16 "cuda:0,*" "$src-bf16"
  variant "$src" "$model" fp8 "cuda:0,*" "$src-fp8"
  variant "$src" "$model" fp8 "cuda:0,50%;cpu,*" "$src-fp8-host"
  variant "$src" "$model" fp8 "disk,*" "$src-fp8-disk"
  m="$ROOT/manifests/.fp8run-$src"
  check "$src bf16 record" pass "$BIN" golden record "$m-bf16.toml" --dir "$W/g-$src-bf16"
  check "$src fp8 record" pass "$BIN" golden record "$m-fp8.toml" --dir "$W/g-$src-fp8"
  check "$src fp8 half host" pass "$BIN" golden verify "$m-fp8-host.toml" --dir "$W/g-$src-fp8"
  check "$src fp8 all disk" pass "$BIN" golden verify "$m-fp8-disk.toml" --dir "$W/g-$src-fp8"
  check "$src fp8 vs bf16" report "$BIN" golden verify "$m-fp8.toml" --dir "$W/g-$src-bf16"
done
rm -f "$ROOT"/manifests/.fp8run-*.toml
rm -rf "$W"
exit $FAIL
