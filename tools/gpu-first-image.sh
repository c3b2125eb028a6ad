#!/usr/bin/env bash
# Time to first image at full size (issue #11), in one go on the GPU machine:
#   files     tools/full_size_files.py flux-dev: FLUX.1-dev bf16 (23.8 GB), T5-XXL fp16
#             (9.5 GB), CLIP-L, ae with the real names and shapes (sparse zeros: reads come
#             from the page cache, as for weights a user has read before)
#   read      the page-cache read rate of those files (a second `cat`), the bytes/bandwidth
#             floor of the issue's target
#   runs      `mgpu run` of one job of 4 images, 1024², 20 steps, batch 4, everything on
#             cuda:0, under several cases: `first` (a first process: the CUDA driver's JIT
#             cache empty — CUDA_CACHE_PATH a new folder — the hash cache as the cases before
#             left it; MGPU_SASS=log counts the kernel modules loaded from prebuilt SASS and
#             JIT-compiled), `first-jit` (the same with MGPU_SASS=off: every module through the
#             driver's JIT, as before the SASS was built in), `cold-hash` (a new hash cache), `warm`,
#             FLUX's blocks in host RAM with cuMemHostRegister (`host`, the default) and
#             cuMemHostAlloc (`host-alloc`), half and half (`half`), and `disk` (below);
#             per case: wall, the report's phases, sampling + decode, the load overhead
#             (wall − sample − decode) against the target, peak RSS, user+system CPU
#   disk      weights on disk: the same files written dense (full_size_files.py --dense, into
#             $WORK/dense, once: 33.9 GB, needs that much free disk), one `mgpu run` to fill
#             their hash cache (from the page cache, not measured), their pages evicted
#             (tools/evict.py: fsync + POSIX_FADV_DONTNEED, no root), a cold sequential read
#             of the T5 file for the disk rate (at most 20 s), evicted again, then the timed
#             run; target overhead 1.3 × bytes / disk rate
#   peer      diffusers loading the same pipeline (tools/peer_diffusers_flux_load.py), if
#             diffusers can be imported or its wheels are in .carry/wheels
# Usage: tools/gpu-first-image.sh [path/to/mgpu] [output folder]
#   CASES="first cold-hash warm host host-alloc half"  PEER=1
#   (every case also: first-jit dense disk; `dense` only writes the dense files). Each run takes ≈ 20–45 s, the disk case ≈ 60 s
#   plus writing 33.9 GB the first time; keep one call under the device's time limit, e.g.
#   CASES="first first-jit cold-hash warm" PEER=0, then CASES=disk PEER=0.
# Needs: an mgpu built with `--features cuda`, ~36 GB of disk for the files' headers and
# about that much free RAM for their pages. Results: first-image.txt, first-image.json,
# run-*.json (reports), peer.json in the output folder.
set -u
BIN=${1:-.carry/bin/mgpu}
OUTDIR=${2:-${OUT:-/tmp/first-image-out}}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${WORK:-/tmp/first-image}
CASES=${CASES:-"first cold-hash warm host host-alloc half"}
mkdir -p "$OUTDIR" "$W"
OUTDIR=$(cd "$OUTDIR" && pwd)
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}

echo "== files"
[ -f "$W/models/flux1-dev.safetensors" ] || python3 "$ROOT/tools/full_size_files.py" "$W/models" flux-dev
FILES=("$W"/models/*.safetensors)
BYTES=$(du -cb --apparent-size "${FILES[@]}" | tail -n1 | cut -f1)
cat "${FILES[@]}" >/dev/null
t0=$(date +%s.%N); cat "${FILES[@]}" >/dev/null; t1=$(date +%s.%N)
READ_GBS=$(awk "BEGIN{printf \"%.2f\", $BYTES / ($t1 - $t0) / 1e9}")
echo "read: $BYTES bytes in $(awk "BEGIN{print $t1 - $t0}") s from the page cache = $READ_GBS GB/s" |
  tee "$OUTDIR/first-image.txt"

manifest() { # ALLOCATION
  cat <<TOML
[settings]
output_root = "out"
compute = "cuda:0"
[models.flux]
family = "flux"
file = "models/flux1-dev.safetensors"
variant = "dev"
allocation = "$1"
[models.t5]
family = "t5"
file = "models/t5xxl_fp16.safetensors"
tokenizer = "models/t5-tokenizer.json"
[models.clip]
family = "clip-l"
file = "models/clip_l.safetensors"
tokenizer = "models/clip-tokenizer.json"
[models.vae]
family = "flux-vae"
file = "models/ae.safetensors"
[pipelines.dev]
diffusion = "flux"
text_encoders = ["clip", "t5"]
vae = "vae"
[defaults]
width = 1024
height = 1024
steps = 20
guidance = 3.5
batch = 4
[[jobs]]
name = "fox"
prompt = "a red fox in snow, golden hour, 85mm photograph"
seed = 42
count = 4
TOML
}

# One case: NAME ALLOCATION [ENV=VALUE...]; runs under a Python wrapper for the child's peak
# RSS and CPU seconds (no /usr/bin/time on the machine). The manifest goes to $MDIR (default
# $W, whose models/ it reads); TARGET_S, when set, is the case's own target overhead.
run_case() {
  local name=$1 alloc=$2; shift 2
  local mdir=${MDIR:-$W}
  manifest "$alloc" >"$mdir/$name.toml"
  env "$@" python3 - "$BIN" "$mdir/$name.toml" "$OUTDIR/run-$name.json" "$OUTDIR/case-$name.json" "$name" "$alloc" "$READ_GBS" "${TARGET_S:-}" <<'PY'
import glob, hashlib, json, os, resource, subprocess, sys, time
bin_, manifest, report, out, name, alloc, read_gbs, target_s = sys.argv[1:]
t0 = time.time()
p = subprocess.run([bin_, "run", manifest, "--force", "--report", report],
                   capture_output=True, text=True)
wall = time.time() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
phases = {}
try:
    for ph in json.load(open(report)).get("phases", []):
        phases[ph["phase"]] = phases.get(ph["phase"], 0.0) + ph["seconds"]
except Exception:
    pass  # a failed run leaves no report: rc and stderr say why
lines = [l for l in p.stderr.splitlines() if l.startswith("time:") or "error" in l]
# MGPU_SASS=log: one line per kernel module the run loaded (prebuilt SASS or the driver's JIT)
sass = [l for l in p.stderr.splitlines() if l.startswith("sass: ")]
pngs = sorted(glob.glob(os.path.join(os.path.dirname(manifest), "out", "**", "*.png"), recursive=True))
h = hashlib.sha256()
for f in pngs:
    h.update(open(f, "rb").read())
sd = phases.get("sample", 0.0) + phases.get("decode", 0.0)
rec = {"case": name, "flux_allocation": alloc, "rc": p.returncode, "wall_s": round(wall, 2),
       "sample_s": round(phases.get("sample", 0.0), 2), "decode_s": round(phases.get("decode", 0.0), 2),
       "overhead_s": round(wall - sd, 2), "phases_s": {k: round(v, 2) for k, v in phases.items()},
       "max_rss_gib": round(ru.ru_maxrss / 2**20, 2), "user_s": round(ru.ru_utime, 1),
       "sys_s": round(ru.ru_stime, 1), "pngs": len(pngs), "png_sha": h.hexdigest()[:16],
       "summary": lines[-3:]}
if sass:
    rec["modules"] = {"sass": sum("from prebuilt SASS" in l for l in sass),
                      "jit": sum("to the JIT" in l or "refused" in l for l in sass)}
if target_s:
    rec["target_s"] = float(target_s)
for k in ("CUDA_CACHE_PATH", "MGPU_SASS", "MGPU_PIN"):
    if k in os.environ:
        rec.setdefault("env", {})[k] = os.environ[k]
json.dump(rec, open(out, "w"), indent=1)
print(json.dumps(rec))
if p.returncode != 0:
    print(p.stderr[-3000:])
PY
}

# The disk case: dense files, their hash cache filled, pages evicted, the disk rate, the run
# (`disk_case write`: only the files, for a call of its own on a slow disk).
disk_case() {
  local D="$W/dense" need=34000000000 avail
  mkdir -p "$D/models"
  if [ ! -f "$D/models/.complete" ]; then
    avail=$(df -B1 --output=avail "$D" | tail -n1 | tr -d ' ')
    if [ "$avail" -lt "$need" ]; then
      echo "disk: only $avail bytes free in $D, the dense files need $need: skipped"
      return
    fi
    rm -f "$D"/models/*.safetensors
    local t0 t1
    t0=$(date +%s.%N)
    python3 "$ROOT/tools/full_size_files.py" --dense "$D/models" flux-dev || return
    t1=$(date +%s.%N)
    touch "$D/models/.complete"
    echo "disk: dense files written and synced in $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s"
  fi
  [ "${1:-}" = write ] && return
  local DF=("$D"/models/*.safetensors) DBYTES DGBS
  DBYTES=$(du -cb --apparent-size "${DF[@]}" | tail -n1 | cut -f1)
  echo "disk: filling the dense files' hash cache (one run, pages from the page cache; not measured)"
  rm -rf "$D/out"
  MDIR="$D" run_case disk-prime "cuda:0,*" MGPU_CACHE_DIR="$D/cache" >/dev/null
  rm -f "$OUTDIR/case-disk-prime.json" "$OUTDIR/run-disk-prime.json"
  DGBS=$(python3 "$ROOT/tools/evict.py" --read "$D/models/t5xxl_fp16.safetensors" --seconds 20 "${DF[@]}" | tail -n1)
  python3 "$ROOT/tools/evict.py" "${DF[@]}"
  command -v fincore >/dev/null && fincore "${DF[@]}"
  local floor target
  floor=$(awk "BEGIN{printf \"%.2f\", $DBYTES / ($DGBS * 1e9)}")
  target=$(awk "BEGIN{printf \"%.2f\", 1.3 * $DBYTES / ($DGBS * 1e9)}")
  echo "disk: $DBYTES bytes, cold sequential read $DGBS GB/s: floor $floor s, target overhead <= $target s (1.3 x bytes / disk rate)"
  rm -rf "$D/out"
  MDIR="$D" TARGET_S="$target" run_case disk "cuda:0,*" MGPU_CACHE_DIR="$D/cache"
  python3 - "$OUTDIR/case-disk.json" "$DGBS" "$DBYTES" <<'PY'
import json, sys
p, gbs, nbytes = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
r = json.load(open(p))
r["disk_read_GBps"], r["bytes"] = gbs, nbytes
json.dump(r, open(p, "w"), indent=1)
PY
}

echo "== runs (MGPU_CACHE_DIR=$W/cache: cold first, warm after)"
rm -rf "$W/cache" "$W/cache0" "$W/out" "$W"/jit-*
for c in $CASES; do
  case $c in
    first) run_case first "cuda:0,*" MGPU_CACHE_DIR="$W/cache" CUDA_CACHE_PATH="$(mktemp -d "$W/jit-XXXX")" MGPU_SASS=log ;;
    first-jit) run_case first-jit "cuda:0,*" MGPU_CACHE_DIR="$W/cache" CUDA_CACHE_PATH="$(mktemp -d "$W/jit-XXXX")" MGPU_SASS=off ;;
    dense) disk_case write ;;
    disk) disk_case ;;
    cold-hash) run_case cold-hash "cuda:0,*" MGPU_CACHE_DIR="$W/cache" ;;
    warm) run_case warm "cuda:0,*" MGPU_CACHE_DIR="$W/cache" ;;
    host) run_case host "cpu,*" MGPU_CACHE_DIR="$W/cache" MGPU_PIN=register ;;
    host-alloc) run_case host-alloc "cpu,*" MGPU_CACHE_DIR="$W/cache" MGPU_PIN=alloc ;;
    half) run_case half "cuda:0,50%;cpu,*" MGPU_CACHE_DIR="$W/cache" ;;
    *) echo "unknown case $c" ;;
  esac
done 2>&1 | tee -a "$OUTDIR/first-image.txt"
python3 - "$OUTDIR" "$BYTES" "$READ_GBS" <<'PY' | tee -a "$OUTDIR/first-image.txt"
import glob, json, os, sys
outdir, nbytes, gbs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
floor = nbytes / (gbs * 1e9)
target = 1.3 * floor + 2
rows = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(outdir, "case-*.json")))]
print(f"weights {nbytes/1e9:.1f} GB, page-cache read {gbs} GB/s: floor {floor:.2f} s, target overhead <= {target:.2f} s")
print(f"{'case':<14} {'flux':<18} {'wall':>6} {'sample':>7} {'decode':>7} {'overhead':>9} {'met':>4} {'RSS GiB':>8} {'CPU s':>7}")
for r in rows:
    met = "yes" if r["overhead_s"] <= r.get("target_s", target) else "no"
    print(f"{r['case']:<14} {r['flux_allocation']:<18} {r['wall_s']:>6} {r['sample_s']:>7} {r['decode_s']:>7} {r['overhead_s']:>9} {met:>4} {r['max_rss_gib']:>8} {r['user_s']+r['sys_s']:>7.1f}")
    print(f"{'':<14} {r['phases_s']} pngs {r.get('pngs')} {r.get('png_sha')} {r.get('env', '')}")
    if "target_s" in r:
        print(f"{'':<14} own target {r['target_s']} s (disk {r.get('disk_read_GBps')} GB/s): overhead {r['overhead_s']} s = {r['overhead_s'] / r['target_s']:.2f} x target")
json.dump({"bytes": nbytes, "read_GBps": gbs, "floor_s": floor, "target_s": target, "cases": rows},
          open(os.path.join(outdir, "first-image.json"), "w"), indent=1)
PY

if [ "${PEER:-1}" = 1 ]; then
  echo "== peer: diffusers loading the same pipeline"
  if ! python3 -c "import diffusers" 2>/dev/null && ls "$ROOT"/.carry/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$ROOT"/.carry/wheels/*.whl &&
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  OUT="$OUTDIR" PYTHONUNBUFFERED=1 timeout 400 python3 "$ROOT/tools/peer_diffusers_flux_load.py" \
    --dir "$W/diffusers" 2>&1 | tee "$OUTDIR/peer.txt" | tail -n 30
fi
