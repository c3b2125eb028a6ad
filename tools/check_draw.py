#!/usr/bin/env python3
"""Scores the drawing demo on its held-out captions, through the real `mgpu run` (issue 16).

  python3 tools/check_draw.py manifest DIR   writes DIR/heldout.toml: one job per held-out
                                             caption of tools/draw_scenes.py (captions the
                                             training never saw), seeds 1000 + index, with
                                             the demo's models and settings
  mgpu run DIR/heldout.toml                  makes the pictures (DIR/out/NNN.png)
  python3 tools/check_draw.py score DIR      checks each picture against its caption (colour,
                                             shape, count and position of each shape, the
                                             background) and prints the score and the misses

DRAW_WEIGHTS=FOLDER scores the trained files in FOLDER (a training part's output) instead of
manifests/draw/; T5's length comes from its draw-train.json. Needs numpy and Pillow.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import draw_scenes as scenes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
SEED0 = 1000


def write_manifest(d):
    d.mkdir(parents=True, exist_ok=True)
    t = lambda name: (MANIFESTS / name).resolve().as_posix()  # noqa: E731
    # DRAW_WEIGHTS: another folder of trained files (a training part's output) to score.
    w = os.environ.get("DRAW_WEIGHTS")
    w = Path(w).resolve() if w else MANIFESTS / "draw"
    d_ = lambda name: (w / name).as_posix()  # noqa: E731
    t5_len = json.loads((w / "draw-train.json").read_text()).get("t5_len", 256)
    lines = [
        "# Held-out captions of the drawing demo (tools/check_draw.py); not a committed manifest.",
        "[settings]",
        'output_root = "out"',
        'compute = "cpu"',
        "",
        "[models.flux]",
        'family = "flux"',
        f'file = "{d_("flux-draw.safetensors")}"',
        "[models.t5]",
        'family = "t5"',
        f'file = "{d_("t5-draw.safetensors")}"',
        f'tokenizer = "{d_("t5-draw-tokenizer.json")}"',
        "[models.clip]",
        'family = "clip-l"',
        f'file = "{t("tiny/clip-tiny.safetensors")}"',
        f'tokenizer = "{t("tiny/clip-tokenizer.json")}"',
        "[models.vae]",
        'family = "flux-vae"',
        f'file = "{d_("ae-draw.safetensors")}"',
        "[pipelines.draw]",
        'diffusion = "flux"',
        'text_encoders = ["clip", "t5"]',
        'vae = "vae"',
        f"max_sequence_length = {t5_len}",
        "",
        "[defaults]",
        "width = 128",
        "height = 128",
        "steps = 40",  # as manifests/demo.toml (run 4: 33 / 100 against 27 at 20 steps; docs/demo.md)
        "cfg = 4.0",
        'output = "{job}.png"',
        "",
    ]
    for i, c in enumerate(scenes.heldout_captions()):
        lines += ["[[jobs]]", f'name = "h{i:03}"', f'prompt = "{c}"', f"seed = {SEED0 + i}", ""]
    (d / "heldout.toml").write_text("\n".join(lines))
    print(f"wrote {d / 'heldout.toml'}: {len(scenes.heldout_captions())} jobs")


def score(d):
    caps = scenes.heldout_captions()
    ok, misses = 0, []
    for i, c in enumerate(caps):
        f = d / "out" / f"h{i:03}.png"
        if not f.exists():
            misses.append((c, f"{f} is missing"))
            continue
        good, why = scenes.check(np.asarray(Image.open(f).convert("RGB")), c)
        ok += good
        if not good:
            misses.append((f"h{i:03} {c}", why))
    for c, why in misses:
        print(f"miss {c}: {why}")
    print(f"held-out: {ok}/{len(caps)} correct ({100 * ok / len(caps):.0f} %)")
    return ok / len(caps)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("manifest", "score"):
        sys.exit(__doc__)
    d = Path(sys.argv[2])
    if sys.argv[1] == "manifest":
        write_manifest(d)
    else:
        score(d)
