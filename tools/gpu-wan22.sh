#!/usr/bin/env bash
# The GPU pass for Wan 2.2 A14B (issue 15), one phase per device call (each fits 600 s on an
# H200). Full-size files with the real layout (tools/full_size_files.py wan22-a14b: two 14B
# experts, 28.6 GB of bf16 each, sparse zeros, so the compute is real and the pixels grey)
# through `mgpu run` of manifests/wan22-t2v-a14b-24gb.toml's pipeline at 832×480, 81 frames,
# CFG 4 (two evaluations per step), a full run of STEPS (default 20) steps including the
# expert switch at boundary 0.875 (shift 12: the switch falls after about half the steps).
# Each phase prints the plan (per-expert step prediction and the switch), the run report's
# step times and the executor's switch note, and peak host/GPU memory.
#   resident  both experts resident on the GPU (57 GB; the plan keeps both loaded)
#   host      both experts' blocks streamed from page-locked host RAM (the plan keeps both
#             loaded: 57 GB of host RAM); target: run ≤ 1.03 × resident's
#   swap      the manifest's own allocation (12 GiB of each expert on the GPU, the rest in host
#             RAM) planned for a 24 GiB card (`--hardware` = this machine's measured file with
#             cuda:0 set to 24 GiB): the experts do not fit side by side, so the executor
#             releases the high-noise expert and loads the low-noise one at the switch; compare
#             the note's seconds with the plan's swap prediction
#   bench     `mgpu bench --model wan22-a14b`: two generated 14B experts at 832×480×81, a full
#             run of STEPS timed steps (+1 warm-up) on Wan 2.2's T2V schedule (shift 12,
#             boundary 0.875) including the switch, resident vs 100 % of both experts' blocks
#             streamed from page-locked host RAM, with the planner's per-step prediction
#             (`--hardware`); CFG=1 adds true CFG (two evaluations per step: twice the time)
#   ti2v      the CUDA paths no GPU has run yet: the tiny Wan 2.2 demos (TI2V-5B text- and
#             image-to-video with its per-token timesteps, A14B image-to-video, A14B
#             text-to-video) on cuda:0 under four allocations; every clip must be byte-identical
#             across allocations (about a minute, mostly the first process's CUDA JIT);
#             then `mgpu bench --model ti2v-5b` at 1280×704×121 with CFG, resident vs 100 %
#             streamed from host RAM, with the planner's prediction
# Usage: PHASE=bench|resident|host|swap|ti2v tools/gpu-wan22.sh [path/to/mgpu] [output folder]
#   HW (default benches/hw-h200-2026-12-02.toml), STEPS (20), FRAMES (81)
set -u
BIN=${1:-.carry/bin/mgpu}
OUTDIR=${2:-${OUT:-/tmp/gpu-wan22}}
PHASE=${PHASE:-resident}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HW=${HW:-$ROOT/benches/hw-h200-2026-12-02.toml}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export RUST_BACKTRACE=0
FAIL=0
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"

if [ "$PHASE" = bench ]; then
  stamp "bench wan22-a14b"
  timeout 580 "$BIN" bench --model wan22-a14b --width 832 --height 480 --frames "${FRAMES:-81}" \
    ${CFG:+--cfg} --steps "${STEPS:-20}" --warmup 1 --batch 1 --placements resident,cpu:100 \
    --slots auto --hardware "$HW" --cache-dir /tmp/mgpu-bench \
    --json "$OUTDIR/bench-a14b.json" > "$OUTDIR/bench-a14b.txt" 2>&1 || FAIL=1
  grep -v '^bench: ' "$OUTDIR/bench-a14b.txt"
  stamp "end (fail=$FAIL)"
  exit $FAIL
fi

if [ "$PHASE" = ti2v ]; then
  for demo in demo-wan22-ti2v demo-wan22-i2v demo-wan22; do
    for a in "cuda:0,*" "cuda:0,50%;cpu,*" "cpu,*" "cuda:0,50%;disk,*"; do
      name=$(echo "$a" | tr -c 'a-z0-9' '_')
      dir="$OUTDIR/$demo-$name"; mkdir -p "$dir"
      stamp "$demo on cuda:0, allocation $a"
      sed -e "s#^compute = \"cpu\"#compute = \"cuda:0\"#" \
          -e "s#^allocation = .*#allocation = \"$a\"#" \
          -e "s#^output_root = .*#output_root = \"$dir/out\"#" \
          "$ROOT/manifests/$demo.toml" > "$ROOT/manifests/gpu-$demo-$name.toml"
      timeout 150 "$BIN" run "$ROOT/manifests/gpu-$demo-$name.toml" --quiet --report "$dir/report.json" \
        > "$dir/log.txt" 2>&1 || { echo "$demo $a failed:"; tail -8 "$dir/log.txt"; FAIL=1; }
      rm -f "$ROOT/manifests/gpu-$demo-$name.toml"
      (cd "$dir/out" 2>/dev/null && sha256sum *.png) > "$dir/sha.txt" 2>/dev/null
      echo "$a: $(tr '\n' ' ' < "$dir/sha.txt")"
    done
    # this demo's own folders only ("$demo"-* would also match demo-wan22-i2v-* for demo-wan22)
    first=
    for a in "cuda:0,*" "cuda:0,50%;cpu,*" "cpu,*" "cuda:0,50%;disk,*"; do
      d="$OUTDIR/$demo-$(echo "$a" | tr -c 'a-z0-9' '_')"
      first=${first:-$d}
      [ -s "$d/sha.txt" ] || { echo "$demo $a: no clips"; FAIL=1; continue; }
      cmp -s "$first/sha.txt" "$d/sha.txt" || { echo "DIFFERS: $d"; FAIL=1; }
    done
  done
  # TI2V-5B's speed at its native 720p (1280×704, 121 frames: 27 280 tokens), true CFG,
  # resident and all 30 blocks streamed from page-locked host RAM, with the planner's prediction
  stamp "bench ti2v-5b"
  timeout 300 "$BIN" bench --model ti2v-5b --width 1280 --height 704 --frames 121 --cfg \
    --steps "${STEPS_TI2V:-3}" --warmup 1 --batch 1 --placements resident,cpu:100 \
    --slots auto --hardware "$HW" --cache-dir /tmp/mgpu-bench \
    --json "$OUTDIR/bench-ti2v.json" > "$OUTDIR/bench-ti2v.txt" 2>&1 || FAIL=1
  grep -v '^bench: ' "$OUTDIR/bench-ti2v.txt"
  stamp "end (fail=$FAIL)"
  exit $FAIL
fi

case "$PHASE" in
  resident) ALLOC='cuda:0,*' ;;
  host) ALLOC='cpu,*' ;;
  swap) ALLOC='' ;;
  *) echo "PHASE must be bench, resident, host, swap or ti2v"; exit 2 ;;
esac

stamp "full-size files"
W=/tmp/wan22-full; mkdir -p $W
python3 "$ROOT/tools/full_size_files.py" $W wan22-a14b
sed -e "s#\"models/wan2.2_t2v_\\([a-z]*\\)_noise_14B_fp8_scaled.safetensors\"#\"$W/wan2.2_t2v_\\1_noise_14B_bf16.safetensors\"#" \
    -e "s#\"models/\\([A-Za-z0-9_.]*safetensors\\)\"#\"$W/\\1\"#" \
    -e "s#\"models/umt5-tokenizer.json\"#\"$ROOT/manifests/tiny/umt5-tokenizer.json\"#" \
    -e "s#^output_root = .*#output_root = \"$OUTDIR/out-$PHASE\"#" \
    -e "s#^steps = .*#steps = ${STEPS:-20}#" \
    -e "s#^frames = .*#frames = ${FRAMES:-81}#" \
    "$ROOT/manifests/wan22-t2v-a14b-24gb.toml" > $W/a14b.toml
if [ -n "$ALLOC" ]; then
  sed -i -e "s#^allocation = \"cuda:0,12gb;cpu,\\*\"#allocation = \"$ALLOC\"#" $W/a14b.toml
  cp "$HW" $W/hw.toml
else
  # The same machine, planned as a 24 GiB card.
  sed -e '0,/^memory = .*/s//memory = "24GiB"/' -e '0,/^free = .*/s//free = "24GiB"/' "$HW" > $W/hw.toml
fi
grep -v '^#' $W/a14b.toml | grep -v '^$' | head -40
stamp "check + plan ($PHASE)"
"$BIN" check $W/a14b.toml 2>&1 | tail -3
"$BIN" plan $W/a14b.toml --hardware $W/hw.toml 2>&1 | tee "$OUTDIR/plan-$PHASE.txt"
stamp "run ($PHASE)"
( timeout 560 "$BIN" run $W/a14b.toml --hardware $W/hw.toml --force --report "$OUTDIR/run-$PHASE.json" \
    > "$OUTDIR/run-$PHASE.txt" 2> "$OUTDIR/run-$PHASE-err.txt" ) &
pid=$!
peak=0
while kill -0 $pid 2>/dev/null; do
  r=$(ps -o rss= -C mgpu 2>/dev/null | sort -n | tail -1); [ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
  g=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
  echo "$(( $(date +%s) - t0 )) rss_kib=$r gpu_mib=$g" >> "$OUTDIR/mem-$PHASE.txt"
  sleep 2
done
wait $pid || FAIL=1
echo "peak host RSS: $(( peak / 1024 )) MiB; peak GPU: $(sort -t= -k3 -n "$OUTDIR/mem-$PHASE.txt" | tail -1)"
stamp "done"
grep -i "expert switch\|released\|loaded\|step 1/\|step ${STEPS:-20}/" "$OUTDIR/run-$PHASE-err.txt" | tail -20
grep -v "step .*/" "$OUTDIR/run-$PHASE-err.txt" | tail -40
ls -la "$OUTDIR/out-$PHASE"/* 2>/dev/null
stamp "end (fail=$FAIL)"
exit $FAIL
