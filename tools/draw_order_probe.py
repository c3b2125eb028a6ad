#!/usr/bin/env python3
"""Can the drawing demo's T5 carry word order? A probe, on the CPU (issue 16).

The drawing model (tools/train_draw.py) swaps the two shapes of a relation caption about as
often as it gets them right, also on captions it trained on. FLUX's text tokens have no
positions inside the transformer (`txt_ids` = 0), so which shape is named first must come
from the T5 encoder's outputs. This probe asks whether a T5 of a given size *can* carry it
when trained for exactly that: the same tokenizer, captions and T5 configuration as the
training script, and a head shaped like the transformer's use of the text (train_draw.py's
`OrderHead`: two learned queries — "first slot" (top or left) and "second slot" — attending
over the T5 outputs, each predicting the colour of the shape there). Relation captions only; half of them put the
first-named shape in the second slot ("below", "right of").

    python3 tools/draw_order_probe.py --t5-width 64 --t5-layers 2 --steps 1500

prints the probe's accuracy on fresh captions (chance: 20 % per slot) against steps. Needs
torch, transformers and tokenizers (no GPU).
"""

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import draw_scenes as scenes  # noqa: E402
import train_draw as td  # noqa: E402


def batch(rng, text, n):
    """`n` relation captions with the colours in the first (top/left) and second slot."""
    specs = [scenes.sample_spec(rng, "relation") for _ in range(n)]
    slots = torch.tensor([td.order_slots(s) for s in specs])
    return text.t5_ids([s["caption"] for s in specs]), slots[:, 0], slots[:, 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--t5-width", type=int, default=td.T5["d_model"])
    ap.add_argument("--t5-layers", type=int, default=td.T5["num_layers"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = td.t5_config(args.t5_width, args.t5_layers)
    text = td.Text(torch.device("cpu"), td.t5_tokenizer_json(), cfg)
    t5, head = text.t5.train(), td.OrderHead(args.t5_width)
    opt = torch.optim.AdamW(list(t5.parameters()) + list(head.parameters()), lr=args.lr, weight_decay=0.01)
    rng, test_rng = random.Random(args.seed + 1), random.Random(args.seed + 2)
    test = batch(test_rng, text, 1000)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        ids, a, b = batch(rng, text, args.batch)
        logits = head(t5(input_ids=ids).last_hidden_state)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.stack([a, b], 1).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps:
            with torch.no_grad():
                ids, a, b = test
                p = head(t5.eval()(input_ids=ids).last_hidden_state).argmax(-1)
                t5.train()
            both = ((p[:, 0] == a) & (p[:, 1] == b)).float().mean().item()
            swapped = ((p[:, 0] == b) & (p[:, 1] == a)).float().mean().item()
            print(f"T5 {args.t5_width}x{args.t5_layers} step {step}: loss {loss.item():.3f}, "
                  f"both slots right {100 * both:.1f} %, swapped {100 * swapped:.1f} % "
                  f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
