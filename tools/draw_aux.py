"""The drawing model's training-only objectives against swapped relations (tools/train_draw.py,
docs/demo.md, decision 32): the slot each relation scene puts its colours in (`order_slots`,
`OrderHead`), the per-token slot labels of a caption's colour and shape words (`slot_labels`,
`SlotHead`), and the flow loss's weights on the shapes' latent pixels (`shape_cover`,
`shape_weights`). Nothing here is shipped with the model."""

import torch
import torch.nn.functional as F

import draw_scenes as scenes
from parity_flux import pack


def slot_labels(tok, caption, length):
    """Per T5 position of `caption` (laid out as `Text.t5_ids` does: the tokenizer's pieces cut
    to `length` (T5_LEN) with </s> last, then <pad>): 0 on the pieces of the colour and shape words of the
    object in the picture's first slot (top for above/below, left for left of/right of), 1 on
    those of the object in the second slot, -100 (ignored) everywhere else and on every piece of
    a count caption or of "". The scene words are whole pieces of the tokenizer
    (`t5_tokenizer_json` appends them), but the pieces are found from the tokenizer's character
    offsets, not by counting words, so a word split in pieces would label all of them."""
    lab = [-100] * length
    m = scenes._REL_RE.match(caption)
    if m is None:
        return lab
    first = 0 if m[3] in ("above", "left of") else 1  # the slot of the object named first
    # groups 1, 2: the first-named object's colour and shape; 4, 5: the second's
    spans = [(m.span(g), first) for g in (1, 2)] + [(m.span(g), 1 - first) for g in (4, 5)]
    enc = tok.encode(caption)
    n = min(len(enc.ids), length)  # t5_ids keeps n pieces, the last of them replaced by </s>
    for i in range(n - 1):
        a, b = enc.offsets[i]
        if enc.special_tokens_mask[i]:
            continue
        for (s, e), slot in spans:
            if a < e and b > s:
                lab[i] = slot
    return lab


@torch.no_grad()
def order_slots(spec):
    """The palette indices of the colours in the picture's first slot (top, or left) and second
    slot of a relation scene; (-1, -1) for a count scene. What `OrderHead` is taught."""
    if spec["kind"] != "relation":
        return (-1, -1)
    (_, c1, *_), (_, c2, *_) = spec["objects"]
    if spec["relation"] in ("below", "right of"):
        c1, c2 = c2, c1
    return (scenes.COLOR_NAMES.index(c1), scenes.COLOR_NAMES.index(c2))


class OrderHead(torch.nn.Module):
    """Training-only auxiliary head (`--order-aux`): two learned queries — the picture's first
    slot (top/left) and second slot — attend over the T5 outputs, as the transformer's image
    tokens do, and name the colour there. Runs 1-5 swapped the shapes of relation captions
    about as often as not (word order unlearned: FLUX's text tokens carry no positions, so order
    must come from T5), while `tools/draw_order_probe.py` shows a width-64 2-block T5 learns
    this task within ~750 CPU steps when taught it directly. Not shipped."""

    def __init__(self, width):
        super().__init__()
        self.q = torch.nn.Parameter(torch.randn(2, width) / width**0.5)
        self.k = torch.nn.Linear(width, width)
        self.v = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, len(scenes.COLOR_NAMES))

    def forward(self, h):
        a = torch.softmax(torch.einsum("qd,bld->bql", self.q, self.k(h)) / h.shape[-1] ** 0.5, -1)
        return self.out(torch.einsum("bql,bld->bqd", a, self.v(h)))


class SlotHead(torch.nn.Module):
    """Training-only auxiliary head (`--slot-aux`): from each T5 output token alone, which slot
    of the picture (0: top/left, 1: bottom/right) the object it names is in, on the colour and
    shape tokens of relation captions (`slot_labels`). `OrderHead` taught T5 the slots (its loss
    went to 0.001 in run 6) and the transformer still swapped: T5 could keep the answer anywhere
    (in the relation word's token, say), not where the image tokens' attention finds colour and
    shape. A linear read-out per token puts it there. Not shipped."""

    def __init__(self, width):
        super().__init__()
        self.out = torch.nn.Linear(width, 2)

    def forward(self, h):
        return self.out(h)


@torch.no_grad()
def shape_cover(x, specs):
    """The share of each latent pixel (8 × 8 image pixels) that the shapes cover: float [B, SIZE/8,
    SIZE/8] in [0, 1], from `render_torch`'s images `x`. A pixel is shape when it is not exactly
    its scene's background colour: a background pixel's 4 × 4 subsamples are all that colour,
    and every other palette colour differs from it by ≥ 150 levels in some channel, so even one
    subsample of a shape moves the pixel ≥ 9 levels (0.07 in [-1, 1]): the 0.02 margin only
    keeps float rounding out of the test. Anti-aliased edges count as shape."""
    pal = torch.tensor([scenes.COLORS[c] for c in scenes.COLOR_NAMES], device=x.device, dtype=torch.float32)
    bg = pal[torch.tensor([scenes.COLOR_NAMES.index(s["bg"]) for s in specs], device=x.device)] / 127.5 - 1.0
    shape = ((x - bg.view(-1, 3, 1, 1)).abs().amax(1) > 0.02).float()
    return F.avg_pool2d(shape.unsqueeze(1), 8).squeeze(1)


def shape_weights(cover, a):
    """Per-element weights of the packed flow loss, [B, tokens, 64]: 1 + a × `cover` of the latent
    pixel, repeated over its 16 channels and packed as the latents are (`pack`: a token is a
    2 × 2 latent patch × 16 channels)."""
    b, h, w = cover.shape
    return pack(1.0 + a * cover.unsqueeze(1).expand(b, 16, h, w))
