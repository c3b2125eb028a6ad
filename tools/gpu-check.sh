#!/usr/bin/env bash
# The GPU acceptance pass of mgpu, in one go on a GPU machine (one or two GPUs):
#   probe     `mgpu probe --bench --save hw.toml`: devices, copy rates, bf16 TFLOP/s
#   pipeline  `mgpu run` of the tiny demo (5 images, one batch of 3) computed on cuda:0 under
#             several allocations (all resident, half in host RAM, all in host RAM, half on
#             disk, a donor GPU, a mix, text encoders streamed) and with batches of 1: every
#             PNG must be byte-identical to the resident run's
#   bench     `mgpu bench` on the FLUX.1-dev shape at 1024²: resident, 25–100 % streamed from
#             page-locked host memory, 100 % from a donor GPU, GGUF Q8_0; batch 1 and 4; with
#             the planner's prediction for each cell (`--hardware hw.toml`)
#   golden    `mgpu golden record` of the tiny demo on cuda:0, then `golden verify` of it under
#             streamed allocations (bit-exact: same machine fingerprint), and `golden verify` of
#             the committed CPU golden files (golden/tiny) on this machine's CPU (tolerance
#             rule when its CPU differs from the recording's)
#   peer      the diffusers baseline on the same machine (.carry/peer, see its README)
#   first-image  time to first image at full size (issue 11; not in the default, ~36 GB of disk
#             and RAM): tools/gpu-first-image.sh generates FLUX.1-dev, T5-XXL, CLIP-L and ae
#             files with the real names and shapes (sparse) and runs the real `mgpu run` of 4
#             images at 1024² per case (FI_CASES, default "first cold-hash warm"), with the
#             report's per-phase seconds; fails if a case fails, misses the target overhead
#             (1.3 × bytes / page-cache read rate + 2 s) or writes other PNG bytes than the first
#
# Usage: tools/gpu-check.sh [path/to/mgpu] [output folder]
#   PHASES="probe pipeline golden bench peer first-image"   which parts run (default: all
#   but peer and first-image)
#   PLACEMENTS=...  BATCHES=1,4  STEPS=20  SLOTS=auto|K  the bench's cells (auto, the
#   default: the planner's K per cell from hw.toml, what `mgpu run` would use; 2 without
#   hw.toml)
# Timing (2x H200, 2026-11-26): probe ~20 s, pipeline + golden ~40 s, bench ~70 s of setup
# (+~150 s to quantise when a @q8_0 placement is asked) and 5-25 s per cell at 20 steps:
# the whole default bench is close to a 600 s device call, so give it its own call or
# narrow PLACEMENTS.
# Needs: an mgpu built with `--features cuda` (docs/gpu.md), the CUDA 13 libraries in
# /usr/local/cuda/lib64. Results: probe.txt, hw.toml, pipeline.txt, pipe-*.json, bench.txt,
# golden.txt, golden-gpu.json, bench.json (and anchors.json for peer; first-image/ for
# first-image) in the output folder.
# Exit code 1 if a pipeline placement differs from the resident run, a golden check fails or a
# bench placement is not bit-identical.
set -u
BIN=${1:-.carry/bin/mgpu}
OUTDIR=${2:-${OUT:-/tmp/gpu-check}}
PHASES=${PHASES:-"probe pipeline golden bench"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
has() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
FAIL=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"
nvidia-smi topo -m >>"$OUTDIR/gpu.txt" 2>&1

if has probe; then
  echo "== probe"
  timeout 120 "$BIN" probe --bench --save "$OUTDIR/hw.toml" 2>&1 | tee "$OUTDIR/probe.txt"
fi

# demo_on_gpu NAME FLUX_ALLOCATION T5_ALLOCATION: manifests/tiny.toml computed on cuda:0, with
# the fox job at 3 images (so a run makes 5 images in batches of 3 + 1 + 1), to stdout.
demo_on_gpu() {
  sed -e 's/^compute = "cpu"/compute = "cuda:0"/' \
      -e "s|^output_root = .*|output_root = \"out/$1\"|" \
      -e "s|^allocation = \"cpu,50%;disk,50%\"|allocation = \"$2\"|" \
      -e "s|^tokenizer = \"tiny/t5-tokenizer.json\"|tokenizer = \"tiny/t5-tokenizer.json\"\nallocation = \"$3\"|" \
      -e 's/^count = 2$/count = 3/' \
      "$ROOT/manifests/tiny.toml"
}

if has pipeline; then
  echo "== pipeline: the tiny demo on cuda:0 under several allocations"
  W=$(mktemp -d)
  cp -r "$ROOT/manifests/tiny" "$W/"
  # name | flux allocation | t5 allocation. The fox job makes 3 images, run as one batch of
  # 3 except in `batch-1`, which sets `batch = 1` for every job.
  CASES="resident|cuda:0,*|cuda:0,*
batch-1|cuda:0,50%;cpu,*|cuda:0,*
half-cpu|cuda:0,50%;cpu,*|cuda:0,*
all-cpu|cpu,*|cuda:0,*
half-disk|cuda:0,50%;disk,*|cuda:0,*
encoders-streamed|cuda:0,50%;cpu,*|cpu,*"
  if [ "$NGPU" -gt 1 ]; then
    CASES="$CASES
donor-gpu|cuda:0,25%;cuda:1,*|cuda:0,*
mixed|cuda:0,25%;cuda:1,25%;cpu,25%;disk,*|cuda:1,*"
  fi
  : >"$OUTDIR/pipeline.txt"
  while IFS='|' read -r name flux t5; do
    demo_on_gpu "$name" "$flux" "$t5" >"$W/$name.toml"
    [ "$name" = batch-1 ] && sed -i 's/^\[defaults\]$/[defaults]\nbatch = 1/' "$W/$name.toml"
    t0=$(date +%s.%N)
    if timeout 120 "$BIN" run "$W/$name.toml" --report "$W/pipe-$name.json" \
        >"$W/pipe-$name.log" 2>&1; then status=ok; else status="FAILED rc=$?"; fi
    t1=$(date +%s.%N)
    sum=$(cd "$W/out/$name" 2>/dev/null && sha256sum ./*.png | sha256sum | cut -c1-16)
    n=$(ls "$W/out/$name"/*.png 2>/dev/null | wc -l)
    bs=$(python3 -c "import json,sys; print('+'.join(str(len(b['tasks'])) for b in json.load(open(sys.argv[1]))['batches']))" \
      "$W/pipe-$name.json" 2>/dev/null || echo -)
    [ "$name" = resident ] && REF=$sum
    same=$([ "$sum" = "${REF:-}" ] && echo identical || echo DIFFERENT)
    [ "$status" = ok ] && [ "$same" = identical ] || FAIL=1
    printf '%-18s flux %-38s t5 %-10s %-8s %d PNGs in batches %-9s %s  %s  %.1fs\n' "$name" \
      "$flux" "$t5" "$status" "$n" "$bs" "$sum" "$same" "$(awk "BEGIN{print $t1 - $t0}")" |
      tee -a "$OUTDIR/pipeline.txt"
    # Reports and logs come back only for failures (a device run returns few files).
    [ "$status" = ok ] && [ "$same" = identical ] ||
      cp "$W/pipe-$name.log" "$W/pipe-$name.json" "$OUTDIR/" 2>/dev/null
    [ "$status" = ok ] || tail -n 20 "$W/pipe-$name.log"
  done <<<"$CASES"
  # The plan of one streamed case, as a user would look at it first.
  "$BIN" plan "$W/half-cpu.toml" --hardware "$OUTDIR/hw.toml" >"$OUTDIR/plan-half-cpu.txt" 2>&1
  rm -rf "$W"
fi

if has golden; then
  echo "== golden: record on cuda:0, verify under other allocations; committed CPU golden files"
  W=$(mktemp -d)
  cp -r "$ROOT/manifests/tiny" "$W/"
  : >"$OUTDIR/golden.txt"
  # check NAME COMMAND...: one line of the pass/fail table; the log comes back on failure.
  check() {
    local name=$1; shift
    if timeout 180 "$@" >"$W/golden-$name.log" 2>&1; then status=pass; else
      status="FAIL rc=$?"; FAIL=1; cp "$W/golden-$name.log" "$OUTDIR/"; fi
    printf '%-28s %-10s %s\n' "$name" "$status" \
      "$(grep -E 'identical|differ|within|golden|error' "$W/golden-$name.log" | tail -n 1)" |
      tee -a "$OUTDIR/golden.txt"
  }
  demo_on_gpu gpu 'cuda:0,*' 'cuda:0,*' >"$W/gpu.toml"
  demo_on_gpu gpu-half-cpu 'cuda:0,50%;cpu,*' 'cpu,*' >"$W/gpu-half-cpu.toml"
  check record-cuda0 "$BIN" golden record "$W/gpu.toml" --dir "$W/golden-gpu"
  cp "$W/golden-gpu/golden.json" "$OUTDIR/golden-gpu.json" 2>/dev/null
  check verify-cuda0 "$BIN" golden verify "$W/gpu.toml" --dir "$W/golden-gpu"
  check verify-cuda0-half-cpu "$BIN" golden verify "$W/gpu-half-cpu.toml" --dir "$W/golden-gpu"
  if [ "$NGPU" -gt 1 ]; then
    demo_on_gpu gpu-donor 'cuda:0,25%;cuda:1,*' 'cuda:1,*' >"$W/gpu-donor.toml"
    check verify-cuda0-donor-cuda1 "$BIN" golden verify "$W/gpu-donor.toml" --dir "$W/golden-gpu"
  fi
  # The committed golden files were recorded on another machine's CPU: bit-exact only if this
  # CPU has the same fingerprint, else the tolerance rule (docs/golden.md).
  check verify-committed-cpu-demo "$BIN" golden verify "$ROOT/manifests/tiny.toml" \
    --dir "$ROOT/golden/tiny" --report "$OUTDIR/golden-cpu-report.json"
  rm -rf "$W"
fi

if has bench; then
  echo "== bench: FLUX.1-dev shape, 1024²"
  P=${PLACEMENTS:-resident,cpu:25,cpu:50,cpu:75,cpu:100,resident@q8_0,cpu:100@q8_0}
  if [ "$NGPU" -gt 1 ] && [ -z "${PLACEMENTS:-}" ]; then P="$P,cuda:1:100"; fi
  HW=()
  [ -f "$OUTDIR/hw.toml" ] && HW=(--hardware "$OUTDIR/hw.toml")
  SL=${SLOTS:-auto}
  [ ${#HW[@]} -eq 0 ] && [ "$SL" = auto ] && SL=2
  timeout 540 "$BIN" bench --model dev --size 1024 --steps "${STEPS:-20}" --warmup 2 \
    --batch "${BATCHES:-1,4}" --placements "$P" --slots "$SL" "${HW[@]}" \
    --json "$OUTDIR/bench.json" 2>&1 |
    tee "$OUTDIR/bench.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || FAIL=1
fi

if has peer; then
  echo "== peer: diffusers"
  python3 -m pip install --no-deps -q "$ROOT"/.carry/peer/wheels/*.whl 2>&1 | tail -n 2
  OUT="$OUTDIR" PYTHONUNBUFFERED=1 timeout 540 python3 "$ROOT/.carry/peer/peer_diffusers_flux.py" \
    2>&1 | tee "$OUTDIR/peer.txt"
fi
if has first-image; then
  echo "== first-image: the full-size pipeline's load path"
  CASES=${FI_CASES:-"first cold-hash warm"} PEER=0 "$ROOT/tools/gpu-first-image.sh" "$BIN" \
    "$OUTDIR/first-image" 2>&1 | tail -n 12
  python3 - "$OUTDIR/first-image/first-image.json" <<'PY' || FAIL=1
import json, sys
r = json.load(open(sys.argv[1]))
bad = []
shas = {c["png_sha"] for c in r["cases"]}
for c in r["cases"]:
    target = c.get("target_s", r["target_s"])
    if c["rc"] != 0:
        bad.append(f"{c['case']}: exit code {c['rc']}")
    elif c["overhead_s"] > target:
        bad.append(f"{c['case']}: overhead {c['overhead_s']} s > target {target:.2f} s")
if len(shas) > 1:
    bad.append(f"the cases wrote different PNG bytes: {sorted(shas)}")
print("first-image:", "; ".join(bad) if bad else f"{len(r['cases'])} cases within the target overhead ({r['target_s']:.2f} s), same PNGs")
sys.exit(1 if bad else 0)
PY
fi
exit $FAIL
