#!/usr/bin/env python3
"""Procedural scenes for the drawing demo (issue 16): captions, renderer and checker.

A scene is a flat-coloured background with one to three shapes, described by its caption:

  count     "a red circle on a yellow background", "two blue squares on a white background",
            "three green triangles on a black background"
  relation  "a red circle above a blue square on a yellow background"
            (above / below / left of / right of)

Six colours, three shapes. The renderer draws scenes at 128×128 (4×4 supersampled, so edges
are anti-aliased); the checker reads a picture back (nearest palette colour per pixel,
connected components, fill ratio for the shape, centroids for the relation) and says whether
it shows what its caption says. `HELDOUT` captions never occur in training
(tools/train_draw.py rejects them); `tools/check_draw.py` scores pictures of them.

Everything is deterministic from its seed. numpy only (torch for the batched renderer, imported
lazily), so the checker runs wherever Python 3 and numpy do.
"""

import random
import re

import numpy as np

SIZE = 128
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOR_NAMES = list(COLORS)
SHAPES = ["circle", "square", "triangle"]
RELATIONS = ["above", "below", "left of", "right of"]
COUNTS = {1: "a", 2: "two", 3: "three"}
# Words the demo's T5 tokenizer knows whole (tools/train_draw.py appends the missing ones).
WORDS = sorted(
    {"a", "on", "of", "background", "two", "three", "above", "below", "left", "right"}
    | set(COLOR_NAMES)
    | set(SHAPES)
    | {s + "s" for s in SHAPES}
)
R_MIN, R_MAX = 11, 17  # half-size in pixels
GAP = 3  # pixels between bounding boxes


def caption_of(spec):
    bg = spec["bg"]
    objs = spec["objects"]
    if spec["kind"] == "count":
        n, (shape, color) = len(objs), objs[0][:2]
        noun = shape if n == 1 else shape + "s"
        return f"{COUNTS[n]} {color} {noun} on a {bg} background"
    (s1, c1, *_), (s2, c2, *_) = objs
    return f"a {c1} {s1} {spec['relation']} a {c2} {s2} on a {bg} background"


_COUNT_RE = re.compile(r"^(a|two|three) (\w+) (circle|square|triangle)s? on a (\w+) background$")
_REL_RE = re.compile(
    r"^a (\w+) (circle|square|triangle) (above|below|left of|right of) a (\w+) (circle|square|triangle) on a (\w+) background$"
)


def parse(caption):
    """The checkable content of a caption: dict(kind, bg, objects=[(shape, color)], relation)."""
    m = _COUNT_RE.match(caption)
    if m:
        n = {"a": 1, "two": 2, "three": 3}[m[1]]
        return dict(kind="count", bg=m[4], objects=[(m[3], m[2])] * n, relation=None)
    m = _REL_RE.match(caption)
    if m:
        return dict(kind="relation", bg=m[6], objects=[(m[2], m[1]), (m[5], m[4])], relation=m[3])
    raise ValueError(f"not a scene caption: {caption!r}")


def _separated(a, b):
    (xa, ya, ra), (xb, yb, rb) = a, b
    return abs(xa - xb) > ra + rb + GAP or abs(ya - yb) > ra + rb + GAP


def _place(rng, r):
    return (rng.uniform(r + 2, SIZE - r - 2), rng.uniform(r + 2, SIZE - r - 2), r)


def _relation_holds(rel, a, b):
    """`a REL b` with the displacement clearly along the relation's axis (1.5 × the other
    axis, so the checker's "dominant axis" reading never sits on the diagonal), boxes apart
    along it."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    need = a[2] + b[2] + GAP
    if rel in ("above", "below"):
        ok = abs(dy) >= 1.5 * abs(dx) and abs(dy) > need
        return ok and (dy < 0 if rel == "above" else dy > 0)
    ok = abs(dx) >= 1.5 * abs(dy) and abs(dx) > need
    return ok and (dx < 0 if rel == "left of" else dx > 0)


def sample_spec(rng, kind=None):
    """A random scene from `rng` (random.Random): objects are (shape, color, cx, cy, r)."""
    kind = kind or ("relation" if rng.random() < 0.6 else "count")
    bg = rng.choice(COLOR_NAMES)
    fg = [c for c in COLOR_NAMES if c != bg]
    while True:
        if kind == "count":
            n = rng.choice([1, 2, 3])
            shape, color = rng.choice(SHAPES), rng.choice(fg)
            placed = []
            for _ in range(200):
                p = _place(rng, rng.uniform(R_MIN, R_MAX))
                if all(_separated(p, q) for q in placed):
                    placed.append(p)
                    if len(placed) == n:
                        break
            if len(placed) < n:
                continue
            objs = [(shape, color, *p) for p in placed]
            spec = dict(kind=kind, bg=bg, objects=objs, relation=None)
        else:
            c1, c2 = rng.sample(fg, 2)
            s1, s2 = rng.choice(SHAPES), rng.choice(SHAPES)
            rel = rng.choice(RELATIONS)
            a = _place(rng, rng.uniform(R_MIN, R_MAX))
            b = _place(rng, rng.uniform(R_MIN, R_MAX))
            if not _relation_holds(rel, a, b):
                continue
            spec = dict(kind=kind, bg=bg, objects=[(s1, c1, *a), (s2, c2, *b)], relation=rel)
        spec["caption"] = caption_of(spec)
        return spec


def heldout_captions(n_relation=80, n_count=20, seed=16):
    """Captions kept out of training: a fixed set drawn with its own seed."""
    rng = random.Random(seed)
    out, seen = [], set()
    for kind, n in (("relation", n_relation), ("count", n_count)):
        k = 0
        while k < n:
            c = sample_spec(rng, kind)["caption"]
            if c not in seen:
                seen.add(c)
                out.append(c)
                k += 1
    return out


HELDOUT = frozenset(heldout_captions())


def render_np(spec, ss=4):
    """One scene as uint8 [SIZE, SIZE, 3] (numpy; the reference for the torch renderer)."""
    n = SIZE * ss
    coords = (np.arange(n) + 0.5) / ss
    y, x = np.meshgrid(coords, coords, indexing="ij")
    img = np.empty((n, n, 3), np.float64)
    img[:] = COLORS[spec["bg"]]
    for shape, color, cx, cy, r in spec["objects"]:
        img[_mask(shape, x, y, cx, cy, r)] = COLORS[color]
    img = img.reshape(SIZE, ss, SIZE, ss, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _mask(shape, x, y, cx, cy, r):
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        return (abs(x - cx) <= r) & (abs(y - cy) <= r)
    # triangle, apex up: half-width grows from 0 at the apex to r at the base
    top = cy - r
    return (y >= top) & (y <= cy + r) & (abs(x - cx) <= (y - top) / 2)


def render_torch(specs, device, ss=4):
    """A batch of scenes as float [B, 3, SIZE, SIZE] in [-1, 1] (the training renderer)."""
    import torch

    b = len(specs)
    n = SIZE * ss
    coords = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / ss
    y, x = coords.view(1, n, 1), coords.view(1, 1, n)
    pal = torch.tensor([COLORS[c] for c in COLOR_NAMES], device=device, dtype=torch.float32)
    bg = torch.tensor([COLOR_NAMES.index(s["bg"]) for s in specs], device=device)
    img = pal[bg].view(b, 3, 1, 1).expand(b, 3, n, n).clone()
    for k in range(3):
        rows = [(i, s["objects"][k]) for i, s in enumerate(specs) if len(s["objects"]) > k]
        if not rows:
            continue
        idx = torch.tensor([i for i, _ in rows], device=device)
        p = torch.tensor([o[2:5] for _, o in rows], device=device, dtype=torch.float32)
        cx, cy, r = (p[:, j].view(-1, 1, 1) for j in range(3))
        sid = torch.tensor([SHAPES.index(o[0]) for _, o in rows], device=device).view(-1, 1, 1)
        circle = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        square = ((x - cx).abs() <= r) & ((y - cy).abs() <= r)
        top = cy - r
        tri = (y >= top) & (y <= cy + r) & ((x - cx).abs() <= (y - top) / 2)
        m = torch.where(sid == 0, circle, torch.where(sid == 1, square, tri))
        col = pal[torch.tensor([COLOR_NAMES.index(o[1]) for _, o in rows], device=device)]
        sub = img[idx]
        sub = torch.where(m.unsqueeze(1), col.view(-1, 3, 1, 1), sub)
        img[idx] = sub
    img = torch.nn.functional.avg_pool2d(img, ss)
    return img / 127.5 - 1.0


# ---------------------------------------------------------------- checker

MAX_COLOR_DIST = 90.0  # a pixel farther than this from every palette colour is unclassified
MIN_AREA = 120  # smaller components are edge fringes, not shapes (the smallest shape: 242 px)


def _components(mask):
    """4-connected components of a boolean mask: list of (ys, xs) index arrays."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    out = []
    for sy, sx in zip(*np.nonzero(mask)):
        if seen[sy, sx]:
            continue
        stack, ys, xs = [(sy, sx)], [], []
        seen[sy, sx] = True
        while stack:
            cy, cx = stack.pop()
            ys.append(cy)
            xs.append(cx)
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        out.append((np.array(ys), np.array(xs)))
    return out


def classify_shape(ys, xs):
    """circle / square / triangle by how much of its bounding box a blob fills (π/4, 1, 1/2)."""
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = len(ys) / box
    if fill > 0.88:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


def describe(img):
    """What a picture shows: (background colour, [(shape, colour, cx, cy, area)])."""
    img = np.asarray(img, dtype=np.float64)[..., :3]
    pal = np.array([COLORS[c] for c in COLOR_NAMES], np.float64)
    d = np.linalg.norm(img[:, :, None, :] - pal[None, None], axis=-1)
    label = d.argmin(-1)
    label[d.min(-1) > MAX_COLOR_DIST] = -1
    counts = np.bincount(label[label >= 0].ravel(), minlength=len(COLOR_NAMES))
    bg = int(counts.argmax())
    blobs = []
    for ci, name in enumerate(COLOR_NAMES):
        if ci == bg:
            continue
        for ys, xs in _components(label == ci):
            if len(ys) >= MIN_AREA:
                blobs.append((classify_shape(ys, xs), name, xs.mean(), ys.mean(), len(ys)))
    return COLOR_NAMES[bg], blobs


def check(img, caption):
    """(ok, why): whether `img` (uint8 H×W×3) shows what `caption` says."""
    want = parse(caption)
    bg, blobs = describe(img)
    if bg != want["bg"]:
        return False, f"background {bg}, expected {want['bg']}"
    got = sorted((s, c) for s, c, *_ in blobs)
    if got != sorted(want["objects"]):
        return False, f"shapes {got}, expected {sorted(want['objects'])}"
    if want["kind"] == "relation":
        (s1, c1), (s2, c2) = want["objects"]
        a = next(b for b in blobs if b[:2] == (s1, c1))
        b = next(b for b in blobs if b[:2] == (s2, c2))
        dx, dy = a[2] - b[2], a[3] - b[3]
        rel = want["relation"]
        if rel in ("above", "below"):
            ok = abs(dy) >= abs(dx) and (dy < 0 if rel == "above" else dy > 0)
        else:
            ok = abs(dx) >= abs(dy) and (dx < 0 if rel == "left of" else dx > 0)
        if not ok:
            return False, f"{c1} {s1} is not {rel} the {c2} {s2} (dx {dx:.0f}, dy {dy:.0f})"
    return True, "ok"


if __name__ == "__main__":
    # Self-test: rendered scenes pass the checker; swapped captions fail it.
    rng = random.Random(0)
    bad = 0
    for i in range(300):
        s = sample_spec(rng)
        ok, why = check(render_np(s), s["caption"])
        if not ok:
            bad += 1
            print("FAIL", s["caption"], why)
    print(f"{300 - bad}/300 rendered scenes pass; {len(HELDOUT)} held-out captions")
