#!/usr/bin/env bash
# The GPU pass for Wan 2.1 (issue #10), one phase per device call (each fits 600 s on an H200):
#   bench  `mgpu probe --bench --save hw.toml`; the tiny video demo on cuda:0 under several
#          allocations (every APNG byte-identical to the resident run's); `mgpu bench` on the
#          Wan 2.1 1.3B and 14B shapes at 832×480, 81 frames (32 760 tokens), resident and 50 % /
#          100 % of the blocks streamed from page-locked host RAM, with the planner's K and
#          prediction per cell (`--hardware hw.toml`), without and with true CFG (2 evaluations
#          per step in one pass)
#   peer   diffusers' WanTransformer3DModel on the same machine (tools/peer_diffusers_wan.py;
#          its wheels in .carry/peer)
#   run    full-size files with the real names and shapes (tools/full_size_files.py: sparse
#          zeros) through `mgpu run` of manifests/wan-t2v-14b-24gb.toml's pipeline at 832×480,
#          81 frames: 12 GiB of blocks on the GPU, the rest streamed from host RAM, as on a
#          24 GB card; the run report has the per-batch step times
# Usage: PHASE=bench|peer|run tools/gpu-wan.sh [path/to/mgpu] [output folder]
#   STEPS (bench, default 2), RUN_STEPS (run, default 3), RUN_FRAMES (run, default 81)
set -u
BIN=${1:-.carry/bin/mgpu}
OUTDIR=${2:-${OUT:-/tmp/gpu-wan}}
PHASE=${PHASE:-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export RUST_BACKTRACE=0
FAIL=0
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"

if [ "$PHASE" = bench ]; then
  stamp "probe"
  timeout 120 "$BIN" probe --bench --save "$OUTDIR/hw.toml" > "$OUTDIR/probe.txt" 2>&1
  cat "$OUTDIR/probe.txt"
  stamp "video demo on cuda:0 under several allocations"
  for a in "cuda:0,*" "cuda:0,50%;cpu,*" "cpu,*" "cuda:0,50%;disk,*"; do
    name=$(echo "$a" | tr -c 'a-z0-9' '_')
    dir="$OUTDIR/demo-$name"; mkdir -p "$dir"
    sed -e "s#^compute = \"cpu\"#compute = \"cuda:0\"#" \
        -e "s#^allocation = .*#allocation = \"$a\"#" \
        -e "s#^output_root = .*#output_root = \"$dir/out\"#" \
        "$ROOT/manifests/demo-video.toml" > "$ROOT/manifests/gpu-demo-$name.toml"
    timeout 120 "$BIN" run "$ROOT/manifests/gpu-demo-$name.toml" --quiet --report "$dir/report.json" > "$dir/log.txt" 2>&1 \
      || { echo "demo $a failed:"; tail -5 "$dir/log.txt"; FAIL=1; }
    rm -f "$ROOT/manifests/gpu-demo-$name.toml"
    (cd "$dir/out" && sha256sum *.png) > "$dir/sha.txt" 2>/dev/null
    echo "$a: $(cat "$dir/sha.txt" | tr '\n' ' ')"
  done
  first=$(ls -d "$OUTDIR"/demo-* | head -1)
  for d in "$OUTDIR"/demo-*; do
    cmp -s "$first/sha.txt" "$d/sha.txt" || { echo "DIFFERS: $d"; FAIL=1; }
  done
  for m in wan1.3b wan14b; do
    for cfg in "" "--cfg"; do
      stamp "bench $m $cfg"
      tag="$m${cfg:+-cfg}"
      timeout 300 "$BIN" bench --model "$m" --width 832 --height 480 --frames 81 $cfg \
        --steps "${STEPS:-2}" --warmup 1 --batch 1 --placements resident,cpu:50,cpu:100 \
        --slots auto --hardware "$OUTDIR/hw.toml" --cache-dir /tmp/mgpu-bench \
        --json "$OUTDIR/bench-$tag.json" > "$OUTDIR/bench-$tag.txt" 2>&1 || FAIL=1
      cat "$OUTDIR/bench-$tag.txt" | grep -v '^bench: ' 
    done
  done
fi

if [ "$PHASE" = peer ]; then
  stamp "diffusers peer"
  python3 -m pip install --no-deps -q "$ROOT"/.carry/peer/*.whl 2>&1 | tail -2
  PYTHONUNBUFFERED=1 timeout 560 python3 "$ROOT/tools/peer_diffusers_wan.py" --out "$OUTDIR" --budget-s 480 2>&1 | tee "$OUTDIR/peer.txt"
fi

if [ "$PHASE" = run ]; then
  stamp "full-size files"
  W=/tmp/wan-full; mkdir -p $W
  python3 "$ROOT/tools/full_size_files.py" $W wan14b
  sed -e "s#\"models/\\([A-Za-z0-9_.]*safetensors\\)\"#\"$W/\\1\"#" \
      -e "s#\"models/umt5-tokenizer.json\"#\"$ROOT/manifests/tiny/umt5-tokenizer.json\"#" \
      -e "s#^output_root = .*#output_root = \"$OUTDIR/out\"#" \
      -e "s#^steps = .*#steps = ${RUN_STEPS:-3}#" \
      -e "s#^frames = .*#frames = ${RUN_FRAMES:-81}#" \
      -e "s#^count = 2#count = 1#" \
      "$ROOT/manifests/wan-t2v-14b-24gb.toml" > $W/wan.toml
  grep -v '^#' $W/wan.toml | head -30
  stamp "check + plan"
  "$BIN" check $W/wan.toml 2>&1 | tail -3
  "$BIN" plan $W/wan.toml 2>&1 | tee "$OUTDIR/plan.txt" | head -40
  stamp "run"
  ( timeout 520 "$BIN" run $W/wan.toml --report "$OUTDIR/run.json" > "$OUTDIR/run.txt" 2> "$OUTDIR/run-err.txt" ) &
  pid=$!
  peak=0
  while kill -0 $pid 2>/dev/null; do
    r=$(ps -o rss= -C mgpu 2>/dev/null | sort -n | tail -1); [ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
    g=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
    echo "$(( $(date +%s) - t0 )) rss_kib=$r gpu_mib=$g" >> "$OUTDIR/mem.txt"
    sleep 2
  done
  wait $pid || FAIL=1
  echo "peak host RSS: $(( peak / 1024 )) MiB; peak GPU: $(sort -t= -k3 -n "$OUTDIR/mem.txt" | tail -1)"
  stamp "done"
  grep -v "step .*/" "$OUTDIR/run-err.txt" | tail -60
  ls -la "$OUTDIR/out"/* 2>/dev/null
fi
stamp "end (fail=$FAIL)"
exit $FAIL
