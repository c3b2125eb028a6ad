#!/usr/bin/env python3
"""Trains the drawing model (issue 16; manifests/demo.toml): a tiny FLUX-architecture model
that learns to draw what its prompts say, in the real checkpoint layouts mgpu reads.

What it trains, in order, on scenes from tools/draw_scenes.py (coloured circles, squares and
triangles on a coloured background, described by their captions; the held-out captions are
never shown):

  1. the autoencoder: diffusers' AutoencoderKL in FLUX's configuration (16 latent channels,
     8× downsampling, no quant convs), block widths 32/64/64/64, L1 + MSE + a small KL term;
     then the latent scaling/shift factors from the encoded training scenes, as FLUX's are;
  2. a training set made once on the device: --pool scenes as scaled latents, T5 ids and
     CLIP pooled vectors (making scenes per step cost more than the step itself);
  3. the transformer: diffusers' FluxTransformer2DModel (schnell-style: no guidance
     embedding, true classifier-free guidance instead; 4 double + 4 single blocks of width
     --width, 192 by default: 6 heads of 32; run 4 was 128) by rectified-flow matching on the
     latents, through torch.compile on a GPU, together with a tiny T5 v1.1 encoder
     (--t5-width 64 and --t5-layers 2 by default) whose tokenizer knows the scene words whole.
     CLIP-L's slot is the existing frozen random tiny CLIP (manifests/tiny/clip-tiny.safetensors).
     10 % of the captions are dropped to "" so the model also learns the unconditional
     prediction. Text is tokenised exactly as mgpu does for a FLUX pipeline with
     `max_sequence_length = 32`: T5 padded with <pad> to 32 tokens and encoded unmasked, CLIP
     padded with <|endoftext|> to 77. float32 with TF32 matmuls: bf16 autocast of this stage
     failed inside cuBLAS on the lent H200 (torch 2.11). The EMA weights are saved every
     --save-every seconds, so a run cut short leaves a model.

Training-only options aimed at the swapped relations (docs/demo.md): --order-aux (`OrderHead`:
T5 must name the colour in each of the picture's slots; 0.1 by default since run 6), --slot-aux
(`SlotHead`: every colour and shape token of a relation caption must say which slot its object
is in, in the token itself, where the image tokens' attention reads colour and shape from) and
--shape-weight (the flow loss weighted to the latent pixels the shapes cover, so a swap costs
more than a slightly wrong background). The last two are off by default: without them a command
trains what it trained before they existed.

It writes to --out (default manifests/draw/):

  flux-draw.safetensors      the transformer, BFL layout (flux1-schnell.safetensors names),
                             bf16, metadata axes_dims_rope (head width 32 is not FLUX's 128)
  ae-draw.safetensors        the autoencoder, ae.safetensors layout, bf16, metadata
                             scaling_factor / shift_factor
  t5-draw.safetensors        the T5 encoder, Hugging Face layout, bf16
  t5-draw-tokenizer.json     manifests/tiny/t5-tokenizer.json with the scene words appended
  draw-train.json            versions, configs, seeds, steps, losses, held-out score, seconds

Weights are rounded to bf16 once; the held-out evaluation at the end (--no-eval skips it;
tools/check_draw.py scores through `mgpu run` instead) samples with those rounded weights in
float32, as mgpu computes on a CPU, using mgpu's schedule (σ = t, linear, 20 Euler steps)
and CFG 4.

Reproducible: seeds for weights, data and noise are fixed and the scene stream is a pure
function of the seed. CUDA kernels are not bitwise deterministic (atomics in backward
passes), so a rerun on a GPU gives a model of the same quality, not the same bytes.

Run on a GPU machine (torch, transformers, diffusers 0.42, safetensors, numpy, tokenizers):
  python3 tools/train_draw.py --out manifests/draw
Training in parts (device calls of at most 10 minutes): every save also writes
draw-checkpoint-{model,ema,vae}.pt to --checkpoints (float32, ≈ 31 + 31 + 5 MB at width 192,
not the optimizer state); a later part goes on from the folder holding them, or from a folder
of shipped files if the checkpoints are gone, with new scenes (the pool and noise seeds move
with the part). Run 5 (docs/demo.md), two calls on the same warm machine:
  python3 tools/train_draw.py --out $OUT/draw --checkpoints target-draw/ck --vae-minutes 1.2 \
      --dit-minutes 7.3 --total-minutes 15.9 --no-eval
  python3 tools/train_draw.py --out $OUT/draw --checkpoints target-draw/ck1 --resume target-draw/ck \
      --dit-minutes 8.6 --total-minutes 15.9 --no-eval
From scratch in one call, with the evaluation: tools/gpu-draw.sh fresh [flags] (autoencoder 1.2,
DiT 6.8 minutes).
Measured on the lent H200 (2026-12-03): width 192 compiled ≈ 15 000 scenes/s after a 41 s
compile (batch 512 from the pool); width 128 uncompiled ≈ 9 000.
A smoke run on a CPU (minutes, a model that does not draw): --smoke
"""

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import draw_scenes as scenes  # noqa: E402
from parity_flux import VAE as FLUX_VAE, dit_to_bfl, img_ids, pack, unpack, vae_to_bfl  # noqa: E402
from draw_aux import OrderHead, SlotHead, order_slots, shape_cover, shape_weights, slot_labels  # noqa: E402,F401

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "manifests" / "tiny"
DRAW = ROOT / "manifests" / "draw"

# T5 padded to 32 tokens (the longest caption has 13): the manifests say `max_sequence_length =
# 32`, as diffusers' FluxPipeline takes it. schnell's default 256 made the text stream four times
# the 64 image tokens: most of every step's work went to padding.
T5_LEN = 32
CLIP_LEN = 77
HEAD_DIM = 32
DIT = dict(
    patch_size=1,
    in_channels=64,
    num_layers=4,
    num_single_layers=4,
    attention_head_dim=HEAD_DIM,
    num_attention_heads=6,
    joint_attention_dim=64,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 14, 14),
    guidance_embeds=False,
)
# FLUX's autoencoder configuration (tools/parity_flux.py) at these widths; the latent factors
# are fitted after training and travel as metadata.
VAE = {k: v for k, v in FLUX_VAE.items() if not k.endswith("_factor")} | dict(
    block_out_channels=(32, 64, 64, 64),
    norm_num_groups=32,
)
T5 = dict(
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)
# manifests/tiny/clip-tiny.safetensors (mgpu's `clip::Config::tiny`).
CLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    # legacy eos id 2: transformers pools at argmax(ids), the first <|endoftext|> (the last id)
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)


def dit_config(width, t5_width=T5["d_model"]):
    """The transformer's configuration at `width` (heads of HEAD_DIM; the RoPE axes fill one
    head), reading T5 outputs of `t5_width`."""
    if width % HEAD_DIM:
        raise SystemExit(f"--width {width}: must be a multiple of the head width {HEAD_DIM}")
    return dict(DIT, num_attention_heads=width // HEAD_DIM, joint_attention_dim=t5_width)


def t5_config(width, layers):
    """The T5 encoder at `width` (heads of 16, feed-forward 2 × width) with `layers` blocks."""
    if width % T5["d_kv"]:
        raise SystemExit(f"--t5-width {width}: must be a multiple of the head width {T5['d_kv']}")
    return dict(T5, d_model=width, d_ff=2 * width, num_heads=width // T5["d_kv"], num_layers=layers)


def t5_config_of(folder):
    """The T5 configuration a trained folder was made with (its draw-train.json)."""
    return {k: v for k, v in json.loads((Path(folder) / "draw-train.json").read_text())["t5"].items() if k != "vocab_size"}


def dit_config_of(folder):
    """The transformer configuration a trained folder was made with (its draw-train.json; folders
    from before --width record theirs there too)."""
    return dict(json.loads((Path(folder) / "draw-train.json").read_text())["dit"], axes_dims_rope=tuple(DIT["axes_dims_rope"]))


SEEDS = dict(vae_weights=1, vae_data=2, dit_weights=3, dit_data=4, dit_noise=5, eval_noise=6)
EVAL_STEPS = 20
EVAL_CFG = 4.0
DROP = 0.1


# ------------------------------------------------------------------ text


def t5_tokenizer_json():
    """The tiny T5 tokenizer with the scene words appended as whole pieces."""
    j = json.loads((TINY / "t5-tokenizer.json").read_text())
    have = {p for p, _ in j["model"]["vocab"]}
    for w in scenes.WORDS:
        if "▁" + w not in have:
            j["model"]["vocab"].append(["▁" + w, -3.0])
    return j


class Text:
    """Tokenisers and encoders: T5 (trained) and CLIP (frozen), as mgpu pads them."""

    def __init__(self, device, t5_json, t5_cfg=T5):
        from tokenizers import Tokenizer
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
        from safetensors.torch import load_file

        self.t5_tok = Tokenizer.from_str(json.dumps(t5_json))
        self.t5_tok.no_padding()
        self.t5_tok.no_truncation()
        self.clip_tok = Tokenizer.from_file(str(TINY / "clip-tokenizer.json"))
        self.clip_tok.no_padding()
        self.clip_tok.no_truncation()
        self.clip_eos = self.clip_tok.token_to_id("<|endoftext|>")
        vocab = self.t5_tok.get_vocab_size()
        self.t5_vocab = (vocab + 7) // 8 * 8
        torch.manual_seed(SEEDS["dit_weights"])
        self.t5 = T5EncoderModel(T5Config(vocab_size=self.t5_vocab, **t5_cfg)).to(device)
        clip_sd = load_file(str(TINY / "clip-tiny.safetensors"))
        self.clip_vocab = clip_sd["text_model.embeddings.token_embedding.weight"].shape[0]
        self.clip = CLIPTextModel(CLIPTextConfig(vocab_size=self.clip_vocab, **CLIP))
        if not any(k.startswith("text_model.") for k in self.clip.state_dict()):
            # transformers 5 dropped the `text_model.` level of CLIPTextModel
            clip_sd = {k.removeprefix("text_model."): v for k, v in clip_sd.items()}
        missing, unexpected = self.clip.load_state_dict(clip_sd, strict=False)
        assert not [m for m in missing if "position_ids" not in m], missing
        assert not [u for u in unexpected if u != "text_projection.weight"], unexpected
        self.clip = self.clip.to(device).eval().requires_grad_(False)
        self.device = device
        self._clip_cache = {}
        self._t5_cache = {}
        self._slot_cache = {}

    def check_ids(self, ids, vocab, what):
        if int(ids.max()) >= vocab or int(ids.min()) < 0:
            raise ValueError(f"{what} token id out of range 0..{vocab}")
        return ids

    def t5_ids(self, captions):
        out = []
        for c in captions:
            ids = self._t5_cache.get(c)
            if ids is None:
                ids = self.t5_tok.encode(c).ids[:T5_LEN]
                ids[-1] = 1  # </s> stays last when truncated
                ids = self._t5_cache[c] = ids + [0] * (T5_LEN - len(ids))
            out.append(ids)
        return self.check_ids(torch.tensor(out), self.t5_vocab, "T5").to(self.device)

    def slot_labels(self, captions):
        """`SlotHead`'s targets for `captions`: int64 [n, T5_LEN], per T5 position as `t5_ids`
        lays the caption out (see `slot_labels`)."""
        out = []
        for c in captions:
            lab = self._slot_cache.get(c)
            if lab is None:
                lab = self._slot_cache[c] = slot_labels(self.t5_tok, c, T5_LEN)
            out.append(lab)
        return torch.tensor(out, dtype=torch.long, device=self.device)

    def clip_ids(self, captions):
        out = []
        for c in captions:
            ids = self.clip_tok.encode(c).ids[:CLIP_LEN]
            ids[-1] = self.clip_eos if len(ids) == CLIP_LEN else ids[-1]
            out.append(ids + [self.clip_eos] * (CLIP_LEN - len(ids)))
        return self.check_ids(torch.tensor(out), self.clip_vocab, "CLIP").to(self.device)

    def pooled(self, captions):
        """CLIP's pooled vectors (frozen, so cached per caption)."""
        todo = [c for c in dict.fromkeys(captions) if c not in self._clip_cache]
        if todo:
            with torch.no_grad():
                p = self.clip(input_ids=self.clip_ids(todo)).pooler_output.float()
            for c, v in zip(todo, p):
                self._clip_cache[c] = v
        return torch.stack([self._clip_cache[c] for c in captions])

    def context(self, t5, captions):
        return t5(input_ids=self.t5_ids(captions)).last_hidden_state


# ------------------------------------------------------------------ helpers


def batch_specs(rng, n):
    """`n` training scenes, none with a held-out caption."""
    out = []
    while len(out) < n:
        s = scenes.sample_spec(rng)
        if s["caption"] not in scenes.HELDOUT:
            out.append(s)
    return out


def lr_at(frac, peak, warm=0.03):
    """Warm-up, then cosine decay to 5 % of the peak, by elapsed fraction of the budget."""
    if frac < warm:
        return peak * frac / warm
    p = (frac - warm) / (1 - warm)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def round_bf16_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))


def bf16(d):
    return {k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in d.items()}


# ------------------------------------------------------------------ stages


def train_vae(args, device, log):
    from diffusers import AutoencoderKL

    torch.manual_seed(SEEDS["vae_weights"])
    vae = AutoencoderKL(**VAE).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    rng = random.Random(SEEDS["vae_data"])
    budget = args.vae_minutes * 60
    t0, step, hist = time.time(), 0, []
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1 or (args.smoke and step >= 3):
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(frac, args.vae_lr)
        x = scenes.render_torch(batch_specs(rng, args.vae_batch), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            post = vae.encode(x).latent_dist
            z = post.sample()
            y = vae.decode(z).sample.float()
        kl = post.kl().mean() / (16 * 16 * 16)
        rec = (y - x).abs().mean() + F.mse_loss(y, x)
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        hist.append(rec.item())
        if step % 200 == 0:
            log(f"vae step {step} rec {np.mean(hist[-200:]):.4f} kl {kl.item():.3f} ({time.time() - t0:.0f} s)")
    vae.eval()
    round_bf16_(vae)
    # Latent statistics over fresh scenes (posterior means), as FLUX's factors were fitted.
    with torch.no_grad():
        zs = []
        for _ in range(4 if args.smoke else 32):
            x = scenes.render_torch(batch_specs(rng, 64), device)
            zs.append(vae.encode(x).latent_dist.mean.float())
        z = torch.cat(zs)
        shift = z.mean().item()
        scale = 1.0 / (z - shift).std().item()
        x = scenes.render_torch(batch_specs(random.Random(99), 64), device)
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        psnr = 10 * math.log10(4.0 / F.mse_loss(y, x).item())
    log(f"vae: {step} steps, reconstruction PSNR {psnr:.1f} dB, shift {shift:.4f} scale {scale:.4f}")
    return vae, dict(steps=step, final_rec=float(np.mean(hist[-100:])), psnr_db=psnr,
                     shift_factor=shift, scaling_factor=scale, seconds=time.time() - t0)


@torch.no_grad()
def build_pool(args, device, vae, text, shift, scale, log):
    """The DiT's training set, made once on the device: `--pool` scenes (none with a held-out
    caption) as scaled latents, T5 ids, CLIP pooled vectors and `order_slots`, so a step only
    indexes it; with --slot-aux the per-token `slot_labels` too, with --shape-weight the shapes'
    cover of each latent pixel (`shape_cover`, as uint8 counts of 64)."""
    rng = random.Random(SEEDS["dit_data"] + 1000 * args.part)  # each resumed part sees new scenes
    xs, ids, pooled, caps, slots, labels, covers = [], [], [], [], [], [], []
    chunk = 512 if device.type == "cuda" else 64  # the autoencoder's activations: ~10 GB at 512 on a CPU
    log_every = max(1, args.pool // 10 // chunk) * chunk
    for k in range(0, args.pool, chunk):
        specs = batch_specs(rng, min(chunk, args.pool - k))
        c = [s["caption"] for s in specs]
        x = scenes.render_torch(specs, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            z = vae.encode(x).latent_dist.mean.float()
        xs.append((z - shift) * scale)
        ids.append(text.t5_ids(c))
        pooled.append(text.pooled(c))
        caps += c
        slots += [order_slots(s) for s in specs]
        if args.slot_aux > 0:
            labels.append(text.slot_labels(c))
        if args.shape_weight > 0:
            covers.append((shape_cover(x, specs) * 64).round().to(torch.uint8))
        if device.type == "cpu" and (k + chunk) % log_every == 0:
            log(f"pool: {k + chunk} scenes encoded")
    log(f"pool: {len(caps)} scenes, {len(set(caps))} distinct captions")
    if covers:
        cover = torch.cat(covers).float().mean().item() / 64
        log(f"pool: shapes cover {cover:.1%} of the latent pixels (mean flow-loss weight {1 + args.shape_weight * cover:.2f}, "
            "divided out by the weighted mean)")
    return (torch.cat(xs), torch.cat(ids), torch.cat(pooled), torch.tensor(slots, device=device),
            torch.cat(labels) if labels else None, torch.cat(covers) if covers else None,
            text.t5_ids([""]), text.pooled([""]))


def save_weights(out, dit, t5, vae, shift, scale):
    """The shipped files, rounded to bf16 (the modules are not changed)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(bf16(dit_to_bfl(dit.state_dict(), DIT["num_layers"], DIT["num_single_layers"])),
              str(out / "flux-draw.safetensors"),
              metadata={"axes_dims_rope": json.dumps(list(DIT["axes_dims_rope"]))})
    save_file(bf16(vae_to_bfl(vae.state_dict(), len(VAE["block_out_channels"]))),
              str(out / "ae-draw.safetensors"),
              metadata={"scaling_factor": repr(scale), "shift_factor": repr(shift)})
    t5_sd = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(bf16(t5_sd), str(out / "t5-draw.safetensors"))


CHECKPOINT = ("draw-checkpoint-model.pt", "draw-checkpoint-ema.pt", "draw-checkpoint-vae.pt")


def save_checkpoint(args, dit, t5, ema_dit, ema_t5, vae, vae_info, steps, scenes_seen, seconds, head=None,
                    slot_head=None):
    """Everything a later part needs to go on, float32, in three files in --checkpoints (≈ 31,
    31 and 5 MB at width 192: too big to come back from a device call, so they stay on the
    device for the next call; a part can also go on from the shipped weights, see
    load_resume); the optimizer state is not kept, each part warms AdamW up again."""
    f32 = lambda m: {k: v.detach().float().cpu() for k, v in m.state_dict().items()}  # noqa: E731
    args.checkpoints.mkdir(parents=True, exist_ok=True)
    model, ema, rest = (args.checkpoints / n for n in CHECKPOINT)
    heads = {k: f32(m) for k, m in (("order_head", head), ("slot_head", slot_head)) if m is not None}
    torch.save(dict(dit=f32(dit), t5=f32(t5), **heads), model)
    torch.save(dict(dit=f32(ema_dit), t5=f32(ema_t5)), ema)
    torch.save(dict(vae=f32(vae), vae_info=vae_info, steps=steps, scenes=scenes_seen, part=args.part,
                    seconds=seconds, t5_len=T5_LEN, dit_config=args.dit, t5_config=args.t5), rest)


def load_resume(folder):
    """What an earlier part left in `folder`: its float32 checkpoint if there is one, else its
    shipped bf16 files and draw-train.json (the EMA weights then start both the trained model and
    its EMA)."""
    if (folder / CHECKPOINT[0]).exists():
        model, ema, rest = (torch.load(folder / n, map_location="cpu", weights_only=True) for n in CHECKPOINT)
        return dict(rest, dit=model["dit"], t5=model["t5"], ema_dit=ema["dit"], ema_t5=ema["t5"],
                    order_head=model.get("order_head"), slot_head=model.get("slot_head"))
    from safetensors import safe_open
    from safetensors.torch import load_file
    from parity_draw import dit_from_bfl, vae_from_bfl

    meta = json.loads((folder / "draw-train.json").read_text())
    cfg = dit_config_of(folder)
    f32 = lambda f: {k: v.float() for k, v in load_file(str(folder / f)).items()}  # noqa: E731
    dit = dit_from_bfl(f32("flux-draw.safetensors"), cfg["num_layers"], cfg["num_single_layers"])
    t5 = f32("t5-draw.safetensors")
    t5["encoder.embed_tokens.weight"] = t5["shared.weight"]
    vae = vae_from_bfl(f32("ae-draw.safetensors"), len(VAE["block_out_channels"]))
    with safe_open(str(folder / "ae-draw.safetensors"), "pt") as f:
        factors = {k: float(v) for k, v in f.metadata().items() if k.endswith("_factor")}
    info = meta["dit_training"]
    return dict(dit=dit, t5=t5, ema_dit=dit, ema_t5=t5, vae=vae, vae_info=dict(meta["vae_training"], **factors),
                steps=info["total_steps"], scenes=info["total_scenes"], part=info["part"],
                seconds=info.get("total_seconds", info["seconds"]), t5_len=meta.get("t5_len", 256), dit_config=cfg,
                t5_config=t5_config_of(folder))


def train_dit(args, device, vae, vae_info, text, shift, scale, log, resume=None):
    from diffusers import FluxTransformer2DModel

    pool_x, pool_ids, pool_pooled, pool_slots, pool_labels, pool_cover, empty_ids, empty_pooled = build_pool(
        args, device, vae, text, shift, scale, log)
    torch.manual_seed(SEEDS["dit_weights"] + 100)
    dit = FluxTransformer2DModel(**args.dit).to(device)
    t5 = text.t5.train()
    ema_dit, ema_t5 = copy.deepcopy(dit).eval(), copy.deepcopy(t5).eval()
    steps0, scenes0, seconds0 = 0, 0, 0.0
    if resume is not None:
        for m, k in ((dit, "dit"), (t5, "t5"), (ema_dit, "ema_dit"), (ema_t5, "ema_t5")):
            m.load_state_dict(resume[k])
        steps0, scenes0, seconds0 = resume["steps"], resume["scenes"], resume.get("seconds", 0.0)
        if resume.get("dit_config", DIT) != args.dit:
            raise SystemExit(f"{args.resume}: trained at width {resume['dit_config']['num_attention_heads'] * HEAD_DIM}, "
                             f"this run asks for --width {args.width}")
        if resume.get("t5_config", T5) != args.t5:
            raise SystemExit(f"{args.resume}: its T5 is {resume.get('t5_config', T5)}, this run asks for {args.t5} "
                             "(--t5-width / --t5-layers)")
        if resume.get("t5_len", 256) != T5_LEN:
            raise SystemExit(f"{args.resume}: trained with T5 at {resume.get('t5_len', 256)} tokens, this script uses {T5_LEN}")
        log(f"resumed part {args.part} after {steps0} steps, {scenes0} scenes")
    head = OrderHead(args.t5["d_model"]).to(device) if args.order_aux > 0 else None
    if head is not None and resume is not None and resume.get("order_head") is not None:
        head.load_state_dict(resume["order_head"])
    slot_head = SlotHead(args.t5["d_model"]).to(device) if args.slot_aux > 0 else None
    if slot_head is not None and resume is not None and resume.get("slot_head") is not None:
        slot_head.load_state_dict(resume["slot_head"])
    params = list(dit.parameters()) + list(t5.parameters())
    head_params = [p for m in (head, slot_head) if m is not None for p in m.parameters()]
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(params + head_params, lr=args.dit_lr, weight_decay=0.01, betas=(0.9, 0.99), fused=cuda)
    # torch.compile fuses the many small elementwise kernels of a model this narrow (the step is
    # bound by them, not by its GEMMs); its compile time counts in the budget. If compiling
    # fails, the first step says so and the loop goes on with the plain module.
    fwd = torch.compile(dit) if args.compile else dit
    ema_params = list(ema_dit.parameters()) + list(ema_t5.parameters())
    gen = torch.Generator(device=device).manual_seed(SEEDS["dit_noise"] + 1000 * args.part)
    h = w = scenes.SIZE // 8
    ids = img_ids(h, w).to(device)
    txt_ids = torch.zeros(T5_LEN, 3, device=device)
    b = args.dit_batch
    budget = args.dit_minutes * 60
    # The learning rate follows one schedule over every part (--total-minutes), or with
    # --lr-restart one over this part alone; each part warms AdamW's fresh moments up again over
    # its first 200 steps.
    total = max(args.total_minutes or 0.0, args.dit_minutes) * 60
    t0, step, hist, aux_hist, saved = time.time(), 0, [], [], time.time()
    slot_hist, whist = [], []
    while True:
        spent = time.time() - t0
        if spent >= budget or (args.smoke and step >= 3):
            break
        frac = spent / budget if args.lr_restart else (seconds0 + spent) / total
        lr = lr_at(frac, args.dit_lr) * (min(1.0, (step + 1) / 200) if resume else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.no_grad():
            pick = torch.randint(len(pool_x), (b,), generator=gen, device=device)
            x0 = pool_x[pick]
            drop = torch.rand(b, generator=gen, device=device) < DROP
            tok = torch.where(drop[:, None], empty_ids, pool_ids[pick])
            pooled = torch.where(drop[:, None], empty_pooled, pool_pooled[pick])
            slots = torch.where(drop[:, None], -1, pool_slots[pick])
            if slot_head is not None:
                labels = torch.where(drop[:, None], -100, pool_labels[pick])
            if pool_cover is not None:
                wgt = shape_weights(pool_cover[pick].float() / 64, args.shape_weight)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            # logit-normal times (SD3), with a uniform share so the ends are seen too
            t = torch.sigmoid(torch.randn(b, generator=gen, device=device))
            u = torch.rand(b, generator=gen, device=device)
            t = torch.where(torch.rand(b, generator=gen, device=device) < 0.2, u, t)
            tt = t.view(-1, 1, 1, 1)
            xt = (1 - tt) * x0 + tt * noise
            target = pack(noise - x0)
        # float32 with TF32 matmuls: bf16 autocast of this stage failed in a cuBLAS bf16 GEMM of
        # the backward pass (CUBLAS_STATUS_EXECUTION_FAILED, torch 2.11, H200)
        ctx = t5(input_ids=tok).last_hidden_state
        try:
            pred = fwd(hidden_states=pack(xt), encoder_hidden_states=ctx, pooled_projections=pooled,
                       timestep=t, img_ids=ids, txt_ids=txt_ids, return_dict=False)[0]
            if pool_cover is None:
                loss = F.mse_loss(pred, target)
                total_loss = loss
            else:
                # --shape-weight: a weighted mean, Σ w·(pred - target)² / Σ w, so the loss keeps
                # the scale of the plain mean whatever the shapes cover (the weights only move
                # the emphasis to the shapes' pixels, they do not raise the learning rate); the
                # plain mean is still what `loss` logs, comparable with runs without it
                sq = (pred - target).square()
                loss = sq.detach().mean()
                total_loss = (wgt * sq).sum() / wgt.sum()
                whist.append(total_loss.detach())
            if head is not None:
                # relation captions only (count scenes and dropped captions are -1)
                ce = F.cross_entropy(head(ctx).flatten(0, 1), slots.flatten().clamp(min=0), reduction="none")
                keep = (slots.flatten() >= 0).float()
                aux = (ce * keep).sum() / keep.sum().clamp(min=1.0)
                total_loss = total_loss + args.order_aux * aux
                aux_hist.append(aux.detach())
            if slot_head is not None:
                # colour and shape tokens of relation captions only (the rest is -100)
                keep = labels.flatten() != -100
                ce = F.cross_entropy(slot_head(ctx).flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
                slot = ce / keep.sum().clamp(min=1)
                total_loss = total_loss + args.slot_aux * slot
                slot_hist.append(slot.detach())
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
        except Exception as e:  # noqa: BLE001 - only the compiled module's first step is retried
            if fwd is dit or step > 0:
                raise
            log(f"torch.compile failed ({type(e).__name__}: {str(e)[:300]}); going on uncompiled")
            fwd = dit
            opt.zero_grad(set_to_none=True)
            continue
        if step == 0:
            log(f"first step done ({time.time() - t0:.1f} s{', compiled' if fwd is not dit else ''})")
        torch.nn.utils.clip_grad_norm_(params + head_params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + steps0 + step) / (10 + steps0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        hist.append(loss.detach())
        if step % args.log_every == 0:
            hist = [torch.stack(hist).mean()]
            aux_msg = ""
            if whist:
                whist = [torch.stack(whist).mean()]
                aux_msg += f" weighted {whist[0].item():.4f}"
            if aux_hist:
                aux_hist = [torch.stack(aux_hist).mean()]
                aux_msg += f" order {aux_hist[0].item():.3f}"
            if slot_hist:
                slot_hist = [torch.stack(slot_hist).mean()]
                aux_msg += f" slot {slot_hist[0].item():.3f}"
            log(f"dit step {step} loss {hist[0].item():.4f}{aux_msg} lr {opt.param_groups[0]['lr']:.2e} "
                f"({time.time() - t0:.0f} s)")
        if time.time() - saved > args.save_every:
            # a run cut short still leaves a usable model, and a checkpoint to go on from
            save_weights(args.out, ema_dit, ema_t5, vae, shift, scale)
            save_checkpoint(args, dit, t5, ema_dit, ema_t5, vae, vae_info, steps0 + step, scenes0 + step * b,
                            seconds0 + time.time() - t0, head, slot_head)
            saved = time.time()
    save_checkpoint(args, dit, t5, ema_dit, ema_t5, vae, vae_info, steps0 + step, scenes0 + step * b,
                    seconds0 + time.time() - t0, head, slot_head)
    round_bf16_(ema_dit)
    round_bf16_(ema_t5)
    return ema_dit, ema_t5, dict(steps=step, batch=b, pool=len(pool_x), final_loss=torch.stack(hist).mean().item(),
                                 seconds=time.time() - t0, part=args.part, total_steps=steps0 + step,
                                 total_scenes=scenes0 + step * b, total_seconds=seconds0 + time.time() - t0,
                                 compiled=fwd is not dit, order_aux=args.order_aux,
                                 final_order_loss=torch.stack(aux_hist).mean().item() if aux_hist else None,
                                 slot_aux=args.slot_aux,
                                 final_slot_loss=torch.stack(slot_hist).mean().item() if slot_hist else None,
                                 shape_weight=args.shape_weight,
                                 final_weighted_loss=torch.stack(whist).mean().item() if whist else None)


@torch.no_grad()
def sample(dit, t5, vae, text, captions, seeds, shift, scale, device, steps=EVAL_STEPS, cfg=EVAL_CFG):
    """Euler on σ = linspace(1, 0) with true CFG against "", in float32: uint8 images."""
    h = w = scenes.SIZE // 8
    ids = img_ids(h, w).to(device)
    txt_ids = torch.zeros(T5_LEN, 3, device=device)
    n = len(captions)
    noise = torch.stack([torch.randn(16, h, w, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
    x = pack(noise)
    ctx = text.context(t5, list(captions) + [""] * n).float()
    pooled = text.pooled(list(captions) + [""] * n)
    sigmas = np.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        s = torch.full((2 * n,), float(sigmas[i]), device=device)
        v = dit(hidden_states=torch.cat([x, x]), encoder_hidden_states=ctx, pooled_projections=pooled,
                timestep=s, img_ids=ids, txt_ids=txt_ids, return_dict=False)[0]
        cond, unc = v[:n], v[n:]
        x = x + (sigmas[i + 1] - sigmas[i]) * (unc + cfg * (cond - unc))
    z = unpack(x, h, w) / scale + shift
    img = vae.decode(z).sample.clamp(-1, 1)
    return ((img + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def score(dit, t5, vae, text, shift, scale, device, caps, seed0):
    """(right, relation wrong with the shapes right, misses) over `caps`, seeds seed0 + index."""
    ok, swapped, fails = 0, 0, []
    for i in range(0, len(caps), 50):
        chunk = caps[i:i + 50]
        imgs = sample(dit, t5, vae, text, chunk, [seed0 + i + j for j in range(len(chunk))], shift, scale, device)
        for c, im in zip(chunk, imgs):
            good, why = scenes.check(im, c)
            ok += good
            swapped += " is not " in why
            if not good:
                fails.append((c, why))
    return ok, swapped, fails


def training_relation_captions(n=50, seed=777):
    """`n` relation captions of the training distribution (none held out): whether the model has
    learned word order shows here first (docs/demo.md: run 5 swapped 22 of 50)."""
    rng, caps = random.Random(seed), []
    while len(caps) < n:
        c = scenes.sample_spec(rng, "relation")["caption"]
        if c not in scenes.HELDOUT and c not in caps:
            caps.append(c)
    return caps


def evaluate(dit, t5, vae, text, shift, scale, device, log, limit=None):
    """Held-out captions (seeds 1000 + index) and 50 training relation captions (seeds 2000 +
    index), the first `limit` of each: right, and wrong with both shapes right but the relation
    not (nearly always the two shapes swapped). What draw-train.json records of it."""
    dit, t5, vae = (m.float().eval() for m in (dit, t5, vae))
    caps = scenes.heldout_captions()[:limit]
    ok, swapped, fails = score(dit, t5, vae, text, shift, scale, device, caps, 1000)
    for c, why in fails[:15]:
        log(f"  miss: {c}: {why}")
    log(f"held-out: {ok}/{len(caps)} correct ({100 * ok / len(caps):.0f} %), {swapped} with the relation wrong")
    train = training_relation_captions()[:limit]
    t_ok, t_swapped, _ = score(dit, t5, vae, text, shift, scale, device, train, 2000)
    log(f"training relation captions: {t_ok}/{len(train)} correct, {t_swapped} with the relation wrong")
    return dict(correct_fraction=ok / len(caps), evaluated=len(caps), correct=ok, relation_wrong=swapped,
                training_relations=dict(captions=len(train), correct=t_ok, relation_wrong=t_swapped, seeds="2000 + index"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DRAW)
    ap.add_argument("--vae-minutes", type=float, default=1.2)
    ap.add_argument("--dit-minutes", type=float, default=6.0, help="this part's DiT training time")
    ap.add_argument("--total-minutes", type=float, help="DiT minutes over all parts, for the learning-rate schedule (default: --dit-minutes)")
    ap.add_argument("--vae-batch", type=int, default=64)
    ap.add_argument("--dit-batch", type=int, default=512)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--dit-lr", type=float, default=8e-4)
    ap.add_argument("--width", type=int, default=192, help="transformer width (heads of 32; run 4 was 128)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the transformer (default: on a GPU)")
    ap.add_argument("--checkpoints", type=Path, help="where the float32 checkpoints go (default: --out)")
    ap.add_argument("--t5-width", type=int, default=T5["d_model"], help="T5 width (heads of 16; runs 1-5: 64)")
    ap.add_argument("--t5-layers", type=int, default=T5["num_layers"], help="T5 blocks (runs 1-5: 2)")
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--order-aux", type=float, default=0.1,
                    help="weight of the training-only word-order loss on T5 (OrderHead; 0: off; runs 1-5 had none)")
    ap.add_argument("--slot-aux", type=float, default=0.0,
                    help="weight of the training-only per-token slot loss on T5 (SlotHead: each colour and shape "
                         "token of a relation caption says whether its object is top/left or bottom/right; 0: off)")
    ap.add_argument("--shape-weight", type=float, default=0.0,
                    help="weight the flow loss per latent pixel by 1 + this × the share the shapes cover "
                         "(a weighted mean, so the loss keeps its scale; 0: off, the plain mean)")
    ap.add_argument("--log-every", type=int, default=500, help="DiT steps between loss lines")
    ap.add_argument("--pool", type=int, default=200_000, help="training scenes made up front")
    ap.add_argument("--save-every", type=float, default=60.0, help="seconds between saves")
    ap.add_argument("--resume", type=Path, help="go on from an earlier part in this folder: its draw-checkpoint-*.pt files, else its shipped files (skips the autoencoder)")
    ap.add_argument("--lr-restart", action="store_true",
                    help="this part runs its own learning-rate schedule over --dit-minutes (warm-up, cosine to 5 %%) "
                         "instead of going on with the earlier parts' one: a fine-tune of a finished model")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation (tools/check_draw.py scores through mgpu instead)")
    ap.add_argument("--eval-limit", type=int,
                    help="evaluate only the first N held-out and N training relation captions (default: all 100 and 50; --smoke: 4)")
    ap.add_argument("--smoke", action="store_true", help="a few steps of each stage (CPU check)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.t5 = t5_config(args.t5_width, args.t5_layers)
    args.dit = dit_config(args.width, args.t5_width)
    args.checkpoints = args.checkpoints or args.out
    if args.compile is None:
        args.compile = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:6.1f} s] {msg}", flush=True)

    import diffusers
    import transformers

    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    t5_json = t5_tokenizer_json()
    text = Text(device, t5_json, args.t5)
    resume = None
    if args.resume:
        from diffusers import AutoencoderKL

        resume = load_resume(args.resume)
        args.part = resume["part"] + 1
        vae = AutoencoderKL(**VAE).to(device).eval()
        vae.load_state_dict(resume["vae"])
        vae_info = resume["vae_info"]
    else:
        args.part = 0
        vae, vae_info = train_vae(args, device, log)
    shift, scale = vae_info["shift_factor"], vae_info["scaling_factor"]
    (args.out / "t5-draw-tokenizer.json").write_text(json.dumps(t5_json, ensure_ascii=False, indent=1) + "\n")
    dit, t5, dit_info = train_dit(args, device, vae, vae_info, text, shift, scale, log, resume)
    save_weights(args.out, dit, t5, vae, shift, scale)

    def write_meta(ev):
        meta = dict(
            versions=dict(python=sys.version.split()[0], torch=torch.__version__, diffusers=diffusers.__version__,
                          transformers=transformers.__version__, numpy=np.__version__),
            device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            smoke=args.smoke,
            args={k: str(v) for k, v in vars(args).items()},
            seeds=SEEDS,
            dit=args.dit, vae=VAE, t5=dict(args.t5, vocab_size=text.t5_vocab), clip=CLIP,
            t5_len=T5_LEN, clip_len=CLIP_LEN, caption_dropout=DROP,
            vae_training=vae_info, dit_training=dit_info,
            heldout=dict(dict(captions=len(scenes.HELDOUT), correct_fraction=None, steps=EVAL_STEPS, cfg=EVAL_CFG,
                              seeds="1000 + index (torch.manual_seed noise, not mgpu's)"), **(ev or {})),
            seconds=time.time() - t_start,
        )
        (args.out / "draw-train.json").write_text(json.dumps(meta, indent=1) + "\n")

    # written before the evaluation too: a call cut short there still leaves a folder that
    # mgpu reads and a later part can --resume from
    write_meta(None)
    if not args.no_eval:
        limit = args.eval_limit if args.eval_limit is not None else (4 if args.smoke else None)
        write_meta(evaluate(dit, t5, vae, text, shift, scale, device, log, limit=limit))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
