#!/usr/bin/env python3
"""Reference fixtures for mgpu's Wan 2.2 TI2V-5B diffusion transformer (tests/wan22_ti2v.rs).

TI2V-5B is the Wan architecture with the Wan 2.2 VAE's 48 latent channels in and out and
*per-token* timesteps: diffusers' `WanPipeline` / `WanImageToVideoPipeline` with
`expand_timesteps=True` (Wan 2.2's `textimage2video.py` likewise) give the transformer a
timestep per latent token, `mask · t`, where the mask is 0 on the tokens of latent frame 0 when
an init image is given (that frame holds the image's latent) and 1 elsewhere.

Builds a tiny-config diffusers `WanTransformer3DModel` (tools/parity_wan.py's tiny config with
48 channels in and out) with a fixed seed, rounds its weights to bfloat16, and writes under
tests/fixtures/parity/wan22_ti2v/:

  dit.safetensors            the tiny transformer in the ORIGINAL Wan layout (the names of
                             `wan2.2_ti2v_5B_fp16.safetensors`), bf16
  dit_diffusers.safetensors  the same tensors under diffusers' names, bf16
  dit_io.safetensors         inputs and outputs of forwards with per-token timesteps:
                               latent [1, 48, T=3, 4, 6] (3 · 2 · 3 = 18 tokens),
                               context_padded [1, 512, 32], timestep (1000·σ, f32),
                               timesteps_t2v [1, 18]  all t (WanPipeline's all-ones mask),
                               timesteps_i2v [1, 18]  0 on frame 0's 6 tokens, t after
                                                      (WanImageToVideoPipeline's mask),
                               out_scalar   the f32 forward with the scalar timestep,
                               out_t2v      the f32 forward with timesteps_t2v,
                               out_i2v      the f32 forward with timesteps_i2v,
                               out_i2v_bf16 the i2v forward of the model loaded as
                                            `from_pretrained(torch_dtype=torch.bfloat16)` loads
                                            it (diffusers' f32 islands)
  condition.safetensors      what `WanImageToVideoPipeline(expand_timesteps=True)
                             .prepare_latents` returns for a 9-frame 64 × 96 job around the tiny
                             Wan 2.2 VAE of tests/fixtures/parity/wan22_vae/ (written by
                             tools/parity_wan22_vae.py): image [1, 3, 64, 96] (seeded, already
                             at the job's size), condition [1, 48, 1, 4, 6] (the image alone,
                             encoded and normalised), first_frame_mask [1, 1, 3, 4, 6]
  layout_ti2v_5b.txt         names and shapes of the REAL TI2V-5B transformer in the original
                             layout: diffusers' full-size model on the meta device, converted
  meta.json                  configs, versions, seeds

Install (CPU): torch==2.15.0 diffusers==0.42.1 transformers==5.24.0 safetensors numpy
Run from the repository root:
  venv/bin/python tools/parity_wan22_ti2v.py
"""

import json
import os
import sys
from pathlib import Path

import torch
import diffusers
from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline,
                       WanTransformer3DModel)
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The tiny Wan 2.1 fixture's helpers (randomisation, diffusers → original names checked against
# diffusers' own converter, layouts, dtype casts): the same conventions for both fixtures.
from parity_wan import TINY as WAN21_TINY, bf16, f32, randomize_, to_original, write_layout  # noqa: E402
from parity_wan22_vae import TINY as VAE22_TINY  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "parity" / "wan22_ti2v"
VAE = ROOT / "tests" / "fixtures" / "parity" / "wan22_vae" / "vae_diffusers.safetensors"

# Must equal mgpu's `models::wan::Config::tiny_ti2v()`.
TINY = dict(WAN21_TINY, in_channels=48, out_channels=48)
# Wan 2.2 TI2V-5B (wan/configs/wan_ti2v_5B.py; Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/).
REAL = dict(TINY, num_attention_heads=24, attention_head_dim=128, text_dim=4096,
            ffn_dim=14336, num_layers=30)
LATENT = (1, 48, 3, 4, 6)  # 9 video frames of 64 × 96 through the Wan 2.2 VAE (4×, 16×)
TEXT_LEN, TXT_LEN = 512, 7
SIGMA = 0.6513
TIMESTEP = 1000.0 * SIGMA
HEIGHT, WIDTH, FRAMES = 64, 96, 9


def token_timesteps(mask, t):
    """diffusers' expand_timesteps: `(mask[0][0][:, ::2, ::2] * t).flatten()`, batch 1."""
    return (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0)


@torch.no_grad()
def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    model = WanTransformer3DModel(**TINY).eval()
    randomize_(model, seed=1)
    sd = model.state_dict()
    save_file(bf16(to_original(sd, TINY["num_layers"])), OUT / "dit.safetensors")
    save_file(bf16(sd), OUT / "dit_diffusers.safetensors")

    g = torch.Generator().manual_seed(2)
    latent = torch.randn(*LATENT, generator=g)
    context = torch.randn(1, TXT_LEN, TINY["text_dim"], generator=g)
    padded = torch.cat([context, context.new_zeros(1, TEXT_LEN - TXT_LEN, TINY["text_dim"])], 1)
    t = torch.tensor([TIMESTEP], dtype=torch.float32)

    # The pipelines' masks: all ones (text-to-video), 0 on latent frame 0 (image-to-video).
    ones = torch.ones(LATENT, dtype=torch.float32)
    ffm = torch.ones((1, 1) + LATENT[2:], dtype=torch.float32)
    ffm[:, :, 0] = 0
    ts_t2v = token_timesteps(ones, t)
    ts_i2v = token_timesteps(ffm, t)
    assert ts_i2v.shape == (1, 18) and (ts_i2v[0, :6] == 0).all() and (ts_i2v[0, 6:] == t).all()

    def run(m, x, ts):
        return m(hidden_states=x, timestep=ts, encoder_hidden_states=padded.to(x.dtype),
                 return_dict=False)[0]

    out_scalar = run(model, latent, t)
    out_t2v = run(model, latent, ts_t2v)
    out_i2v = run(model, latent, ts_i2v)

    # bf16 as from_pretrained(torch_dtype=bfloat16) loads it (see tools/parity_wan.py).
    m16 = WanTransformer3DModel(**TINY).eval()
    m16.load_state_dict(sd)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    for name, p in m16.named_parameters():
        if not any(k in name.split(".") for k in keep):
            p.data = p.data.to(torch.bfloat16)
    out_i2v_bf16 = run(m16, latent.to(torch.bfloat16), ts_i2v).float()

    save_file(
        f32(dict(latent=latent, context_padded=padded, timestep=t, timesteps_t2v=ts_t2v,
                 timesteps_i2v=ts_i2v, out_scalar=out_scalar, out_t2v=out_t2v, out_i2v=out_i2v,
                 out_i2v_bf16=out_i2v_bf16)),
        OUT / "dit_io.safetensors",
    )

    # ---- The image-to-video condition: the init image alone, encoded and normalised ----
    vae = AutoencoderKLWan(**VAE22_TINY).eval()
    vae.load_state_dict({k: v.float() for k, v in load_file(VAE).items()}, strict=True)
    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae,
        scheduler=UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5.0,
                                          prediction_type="flow_prediction"),
        expand_timesteps=True,
    )
    gi = torch.Generator().manual_seed(21)
    image = torch.rand((1, 3, HEIGHT, WIDTH), generator=gi) * 2 - 1
    _, condition, first_frame_mask = pipe.prepare_latents(
        image, 1, 48, HEIGHT, WIDTH, FRAMES, torch.float32, torch.device("cpu"),
        torch.Generator().manual_seed(0), None,
    )
    assert condition.shape == (1, 48, 1, 4, 6), condition.shape
    assert first_frame_mask.shape == (1, 1, 3, 4, 6), first_frame_mask.shape
    save_file(f32(dict(image=image, condition=condition, first_frame_mask=first_frame_mask)),
              OUT / "condition.safetensors")

    # ---- The real layout, from the full-size model on the meta device ----
    with torch.device("meta"):
        real = WanTransformer3DModel(**REAL)
    write_layout(OUT / "layout_ti2v_5b.txt", to_original(real.state_dict(), REAL["num_layers"]))

    meta = dict(
        about="generated by tools/parity_wan22_ti2v.py; do not edit",
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        tiny=TINY,
        real=REAL,
        latent=LATENT,
        sigma=SIGMA,
        timestep=TIMESTEP,
        job=dict(height=HEIGHT, width=WIDTH, frames=FRAMES),
        seeds=dict(weights=1, inputs=2, image=21),
        out_i2v_vs_out_t2v_max_abs=float((out_i2v - out_t2v).abs().max()),
        out_t2v_vs_out_scalar_max_abs=float((out_t2v - out_scalar).abs().max()),
    )
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name:28} {os.path.getsize(f):>8} bytes")


if __name__ == "__main__":
    main()
