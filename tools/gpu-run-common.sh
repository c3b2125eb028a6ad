# Shared start of the `mgpu run` checks on a GPU machine (tools/gpu-fp8-run.sh,
# tools/gpu-lora-run.sh); sourced, not run. Arguments: the caller's $1 (the mgpu binary,
# default .carry/bin/mgpu), $2 (the output folder, default $OUT or $3) and $3 (the default
# folder). Sets ROOT (the repository), BIN and OUTDIR (absolute), W (a scratch folder),
# FAIL=0, and the CUDA library path.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-.carry/bin/mgpu}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
OUTDIR=${2:-${OUT:-$3}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export RUST_BACKTRACE=0
FAIL=0
W=$(mktemp -d)
