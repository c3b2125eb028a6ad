#!/usr/bin/env bash
# Builds the CUDA binary of mgpu on a machine WITHOUT a GPU or a CUDA toolkit (a CI box, a
# laptop), for a GPU machine that has the NVIDIA driver and the CUDA runtime libraries but no
# Rust toolchain. Users with a CUDA toolkit installed simply run
#   CUDA_COMPUTE_CAP=<cc> cargo build --release --features cuda
#
# What it does:
#   1. installs nvcc + headers + libraries of CUDA 13.0 from PyPI wheels into $CUDA_DIR
#      (default /opt/cuda130), without touching the system;
#   2. makes a link-time stub for libcuda.so.1 (the real one ships with the driver);
#   3. builds `cargo build --release --features cuda` in its own target dir
#      ($CARGO_TARGET_DIR, default target-cuda/) and writes a stripped binary to $OUT_BIN
#      (default .carry/bin/mgpu).
#
# Why CUDA 13.0: the PTX that nvcc emits must not be newer than the driver on the GPU machine
# understands (driver 580 = CUDA 13.0; newer nvcc gives CUDA_ERROR_UNSUPPORTED_PTX_VERSION at
# run time). Match the toolkit to your driver: `nvidia-smi` prints "CUDA Version".
# CUDA_COMPUTE_CAP defaults to 90 (H100/H200); the binary then runs on that architecture only.
#
# On the GPU machine: export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH
# (the binary loads libcuda.so.1, libcublas.so.13, libcurand.so.10, libcudart.so.13).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CUDA_DIR=${CUDA_DIR:-/opt/cuda130}
OUT_BIN=${OUT_BIN:-$ROOT/.carry/bin/mgpu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-cuda}

if [ ! -x "$CUDA_DIR/cuda/bin/nvcc" ]; then
  echo "installing CUDA 13.0 build tools from PyPI into $CUDA_DIR" >&2
  mkdir -p "$CUDA_DIR"
  python3 -m venv "$CUDA_DIR/venv"
  "$CUDA_DIR/venv/bin/pip" install -q \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" \
    "nvidia-curand==10.4.0.*" "nvidia-cuda-cccl==13.0.85"
  WHEELS=$(ls -d "$CUDA_DIR"/venv/lib/python3*/site-packages/nvidia/cu13)
  mkdir -p "$CUDA_DIR/cuda/lib/stubs"
  ( cd "$CUDA_DIR/cuda"
    ln -sfn "$WHEELS/bin" bin; ln -sfn "$WHEELS/include" include; ln -sfn "$WHEELS/nvvm" nvvm
    ln -sfn lib lib64
    for f in "$WHEELS"/lib/*.so.*; do b=$(basename "$f"); ln -sf "$f" "lib/$b"; ln -sf "$f" "lib/${b%%.so.*}.so"; done
    for f in "$WHEELS"/lib/*.a; do [ -e "$f" ] && ln -sf "$f" lib/; done )
fi

# The libcuda stub: one dummy definition per driver entry point cudarc declares.
if [ ! -e "$CUDA_DIR/cuda/lib/stubs/libcuda.so" ]; then
  ( cd "$ROOT" && cargo fetch -q )
  SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -n 1)/src/driver/sys/mod.rs
  grep -o '^pub unsafe fn cu[A-Za-z0-9_]*' "$SYS" | awk '{print "int "$4"(void){return 999;}"}' | sort -u \
    > "$CUDA_DIR/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_DIR/cuda/lib/stubs/libcuda.so" "$CUDA_DIR/libcuda_stub.c"
fi

export CUDA_HOME=$CUDA_DIR/cuda
export PATH=$CUDA_HOME/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$CUDA_HOME/lib:$CUDA_HOME/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
nvcc --version | tail -n 1 >&2
( cd "$ROOT" && cargo build --release --features cuda )
mkdir -p "$(dirname "$OUT_BIN")"
strip -o "$OUT_BIN" "$CARGO_TARGET_DIR/release/mgpu"
ls -la "$OUT_BIN" >&2
