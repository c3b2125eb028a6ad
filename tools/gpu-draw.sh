#!/usr/bin/env bash
# Trains the drawing model (issue 16, tools/train_draw.py) on the lent GPU machine in two device
# calls of under 10 minutes each, as run 5 was (docs/demo.md):
#
#   tools/gpu-draw.sh part0 [train_draw flags]   autoencoder + first DiT part; the float32
#                                                checkpoints stay on the device in
#                                                target-draw/ck (31 MB each: too big to return)
#   tools/gpu-draw.sh part1 [train_draw flags]   goes on from target-draw/ck if the machine is
#                                                still warm, else from .carry/draw-p0 (the shipped
#                                                files part 0 returned, carried back in)
#
#   tools/gpu-draw.sh finetune [flags]           one call: a fine-tune of the committed model
#                                                (--resume manifests/draw --lr-restart) + evaluation
#
#   tools/gpu-draw.sh fresh [flags]              one call: a model from scratch (autoencoder 1.2
#                                                minutes, DiT DIT_MINUTES, default 6.8, on its own
#                                                learning-rate schedule) + evaluation (held-out and
#                                                50 training relation captions, with swap counts),
#                                                e.g. `fresh --slot-aux 0.3 --shape-weight 3`
#
# Each writes the shipped files to $OUT/draw and the log to $OUT/train{0,1,-finetune,-fresh}.log. Issue part 1
# as soon as part 0 returns (the machine is released after ~30 s idle), with carry
# [".carry/wheels", ".carry/draw-p0"] after copying part 0's $OUT/draw to .carry/draw-p0.
# The same flags must go to both parts (train_draw.py refuses a resume with another width).
# DIT_MINUTES0/DIT_MINUTES1 split the DiT budget (defaults 7.3 + 8.6 = 15.9 minutes, with the
# autoencoder's 1.2 and the pool builds ≈ 18 minutes of device time).
# Needs torch (the device's /opt/torch venv) and diffusers (wheel in .carry/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: tools/gpu-draw.sh part0|part1|finetune|fresh [train_draw.py flags]}
shift
OUT=${OUT:-/tmp/draw-out}
D0=${DIT_MINUTES0:-7.3}
D1=${DIT_MINUTES1:-8.6}
TOTAL=$(python3 -c "print($D0 + $D1)")
python3 -m pip install --no-deps -q .carry/wheels/*.whl >/dev/null 2>&1 || echo "gpu-draw: no diffusers wheel installed (.carry/wheels)" >&2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
case $part in
  part0)
    timeout 585 python3 tools/train_draw.py --out "$OUT/draw" --checkpoints target-draw/ck \
      --vae-minutes 1.2 --dit-minutes "$D0" --total-minutes "$TOTAL" --save-every 60 --no-eval "$@" \
      >"$OUT/train0.log" 2>&1 || echo "gpu-draw: part0 exited with $?"
    log=$OUT/train0.log
    ;;
  part1)
    from=target-draw/ck
    [ -f "$from/draw-checkpoint-model.pt" ] || from=.carry/draw-p0
    echo "gpu-draw: part1 goes on from $from"
    timeout 585 python3 tools/train_draw.py --out "$OUT/draw" --checkpoints target-draw/ck1 --resume "$from" \
      --dit-minutes "$D1" --total-minutes "$TOTAL" --save-every 60 "$@" \
      >"$OUT/train1.log" 2>&1 || echo "gpu-draw: part1 exited with $?"
    log=$OUT/train1.log
    ;;
  finetune)
    # one call: go on from the committed model (manifests/draw's shipped files) with this
    # part's own learning-rate schedule over DIT_MINUTES (default 7.5), then evaluate
    echo "gpu-draw: finetune goes on from manifests/draw"
    timeout 585 python3 tools/train_draw.py --out "$OUT/draw" --checkpoints target-draw/ckf --resume manifests/draw \
      --lr-restart --dit-minutes "${DIT_MINUTES:-7.5}" --save-every 60 "$@" \
      >"$OUT/train-finetune.log" 2>&1 || echo "gpu-draw: finetune exited with $?"
    log=$OUT/train-finetune.log
    ;;
  fresh)
    # one call, everything inside `timeout 585`: Python and imports ≈ 10 s, autoencoder 72 s
    # (+ ≈ 3 s of latent statistics), pool of 200 000 ≈ 20 s (run 5 part 1: 27 s from start to
    # the first DiT step, imports and checkpoint loading included), DiT 6.8 min = 408 s (its
    # compile, ≈ 41 s, inside), saves ≈ 2 s, evaluation of 100 held-out + 50 training relation
    # captions ≈ 10-20 s (3 batches of 50 × 20 CFG steps of the uncompiled model, the checker
    # ≈ 10 ms a picture on the CPU): ≈ 525-540 s. The weights and draw-train.json are written
    # before the evaluation, so a call cut short there still returns a model; --eval-limit N
    # shortens the evaluation if a larger DIT_MINUTES needs the time.
    D=${DIT_MINUTES:-6.8}
    echo "gpu-draw: fresh, DiT $D minutes"
    timeout 585 python3 tools/train_draw.py --out "$OUT/draw" --checkpoints target-draw/ck-fresh \
      --vae-minutes 1.2 --dit-minutes "$D" --total-minutes "$D" --save-every 60 "$@" \
      >"$OUT/train-fresh.log" 2>&1 || echo "gpu-draw: fresh exited with $?"
    log=$OUT/train-fresh.log
    ;;
  *) echo "gpu-draw: unknown part '$part' (part0, part1, finetune or fresh)" >&2; exit 2 ;;
esac
grep -v Warning "$log" | tail -40
