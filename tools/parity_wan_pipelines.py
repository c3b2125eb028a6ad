#!/usr/bin/env python3
"""End-to-end parity fixtures for Wan (issues 10, 15): diffusers' pipelines with tiny models and
mgpu's initial noise, in float32 on the CPU — the whole chain at once, UniPC (bh2) on Wan's
flow σ with shift 5, true CFG against a negative prompt, the VAE decode:

  Wan 2.1 text-to-video `WanPipeline` on the tiny Wan 2.1 model
  A14B text-to-video    `WanPipeline` with two experts switching at boundary 0.875

  A14B image-to-video   `WanImageToVideoPipeline`: the first frame's VAE encoding and mask,
                        the two experts switching at boundary 0.9
  TI2V-5B               `WanPipeline(expand_timesteps=True)` (text-to-video) and
                        `WanImageToVideoPipeline(expand_timesteps=True)` (image-to-video: the
                        image's latent is frame 0, its tokens at timestep 0): the 48-channel
                        model with per-token timesteps and the Wan 2.2 VAE

Models (the same files mgpu reads):
  experts  manifests/tiny/wan22-i2v-{high,low}-noise-tiny.safetensors (`mgpu make-tiny wan
           --experts --i2v`; original Wan layout, bf16) converted to diffusers'
           `WanTransformer3DModel` names (tools/parity_wan.py's `to_original`, inverted); the
           same for wan-tiny.safetensors and wan22-{high,low}-noise-tiny.safetensors
  VAE      tests/fixtures/parity/wan_vae/vae_diffusers.safetensors (the same weights as
           vae.safetensors, which mgpu reads; tools/parity_wan_vae.py)
  TI2V     manifests/tiny/wan22-ti2v-5b-tiny.safetensors (`mgpu make-tiny wan --ti2v`, 48
           channels in and out), converted as the experts are, and
           tests/fixtures/parity/wan22_vae/vae{,_diffusers}.safetensors (the same weights in
           both layouts; tools/parity_wan22_vae.py)
  text     manifests/tiny/umt5-tiny.safetensors + umt5-tokenizer.json in transformers'
           `UMT5EncoderModel`; the prompt embeddings are computed here exactly as
           `WanPipeline._get_t5_prompt_embeds` does (ids padded to 512 with the mask, rows past
           the prompt's length zeroed) and handed to the pipeline (its own tokenizer argument
           wants a transformers tokenizer object; the prompts are plain ASCII, so the prompt
           cleaning diffusers would apply changes nothing)
First frame: a seeded 96 × 64 picture at the job's size (written as first-frame.png; mgpu's
cover-crop and diffusers' resize both leave it as it is).

Writes under tests/fixtures/parity/: wan21_t2v_pipeline/, wan22_t2v_pipeline/ (A14B),
wan22_i2v_pipeline/ (A14B) and wan22_ti2v_pipeline/ (TI2V-5B), each:
  first-frame.png        the init image (where a case is image-to-video)
  expected.safetensors   video.N (float16 [frames, H, W, 3] in [0, 1], the pipeline's `np`
                         output, rounded to float16) and noise.N (float32 [C, T, h, w], mgpu's noise) per case
  meta.json              cases (prompt, negative prompt, seed, steps, init image or not),
                         size, frames, shift, cfg, boundary, versions

tests/wan_pipelines.rs runs `mgpu run` on the same jobs (sampler `uni_pc_bh2`, scheduler
`flow_sigmas`) and compares: noise bit for bit, every frame within PSNR ≥ 40 dB.

Install (CPU): torch==2.15.0 diffusers==0.42.1 transformers tokenizers safetensors numpy pillow
Run from the repository root:
  venv/bin/python tools/parity_wan_pipelines.py
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mgpu_noise import normal_f32  # noqa: E402
from parity_wan import TINY as WAN_TINY, to_original  # noqa: E402
from parity_wan22_i2v import TINY as VAE_TINY  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY_DIR = ROOT / "manifests" / "tiny"
VAE = ROOT / "tests" / "fixtures" / "parity" / "wan_vae" / "vae_diffusers.safetensors"
PARITY = ROOT / "tests" / "fixtures" / "parity"
OUT = PARITY / "wan22_i2v_pipeline"
OUT_TI2V = PARITY / "wan22_ti2v_pipeline"
OUT_T2V21 = PARITY / "wan21_t2v_pipeline"
OUT_T2V22 = PARITY / "wan22_t2v_pipeline"
T2V_BOUNDARY = 0.875  # Wan 2.2 A14B text-to-video's

WIDTH, HEIGHT, FRAMES = 96, 64, 9
SHIFT, CFG, BOUNDARY = 5.0, 3.5, 0.9
TEXT_LEN = 512  # WanPipeline's max_sequence_length
# mgpu's `t5::Config::tiny_umt5` (make-tiny umt5)
UMT5 = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
            relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.0,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False)
CASES = [
    dict(prompt="the sun sets over a green hill, clouds drifting", negative="blurry, static, low quality",
         seed=42, steps=6, image=True),
    # four steps: two on each expert (timesteps 999, 937 | 833, 625 at shift 5; case 0: 999, 961, 909 | 833, 714, 501)
    dict(prompt="a red kite over the sea", negative="", seed=7, steps=4, image=True),
]
T2V_CASES = [
    dict(prompt="a red kite over the sea", negative="blurry, static, low quality", seed=3, steps=6, image=False),
    # two steps on each expert (timesteps 999, 937 | 833, 625 at shift 5)
    dict(prompt="the sun sets over a green hill, clouds drifting", negative="", seed=9, steps=4, image=False),
]
TI2V_CASES = [
    dict(prompt="a red kite over the sea", negative="blurry, static, low quality", seed=5, steps=5, image=False),
    dict(prompt="the sun sets over a green hill, clouds drifting", negative="", seed=11, steps=4, image=True),
]


def expert(name, in_channels=36, out_channels=16):
    """A tiny Wan model of `mgpu make-tiny`, read from its original-layout file into diffusers'."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    model = WanTransformer3DModel(**dict(WAN_TINY, in_channels=in_channels, out_channels=out_channels)).eval()
    sd = model.state_dict()
    orig = to_original(sd, WAN_TINY["num_layers"])
    by_id = {id(v): k for k, v in sd.items()}
    file = load_file(str(TINY_DIR / name))
    assert set(file) == set(orig), sorted(set(file) ^ set(orig))
    model.load_state_dict({by_id[id(t)]: file[o].float() for o, t in orig.items()}, strict=True)
    return model


def text_encoder():
    from safetensors.torch import load_file
    from transformers import UMT5Config, UMT5EncoderModel

    sd = {k: v.float() for k, v in load_file(str(TINY_DIR / "umt5-tiny.safetensors")).items()}
    model = UMT5EncoderModel(UMT5Config(vocab_size=sd["shared.weight"].shape[0], **UMT5)).eval()
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    model.load_state_dict(sd, strict=True)
    return model


def prompt_embeds(model, tok, prompt):
    """WanPipeline._get_t5_prompt_embeds for one prompt, with the ids the tokenizer gives."""
    ids = tok.encode(prompt).ids[:TEXT_LEN]
    assert ids[-1] == 1, f"{prompt!r}: the tokenizer should end with </s> (id 1): {ids}"
    n = len(ids)
    padded = torch.tensor([ids + [0] * (TEXT_LEN - n)])
    mask = torch.zeros(1, TEXT_LEN, dtype=torch.long)
    mask[0, :n] = 1
    with torch.no_grad():
        h = model(input_ids=padded, attention_mask=mask).last_hidden_state
    out = torch.zeros_like(h)
    out[:, :n] = h[:, :n]
    return out


def first_frame():
    """A seeded picture with structure (gradients, a disc) and some noise, 96 × 64."""
    from PIL import Image

    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    rng = np.random.default_rng(15)
    r = 255 * x / (WIDTH - 1)
    g = 255 * y / (HEIGHT - 1)
    b = np.where((x - 60) ** 2 + (y - 28) ** 2 < 18**2, 230.0, 40.0)
    rgb = np.stack([r, g, b], -1) + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8), "RGB")


def scheduler():
    """WanPipeline's scheduler as Wan-AI's Wan 2.2 Diffusers repositories configure it (UniPC bh2,
    order 2, lower_order_final, final σ 0), flow σ with shift SHIFT."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=SHIFT, prediction_type="flow_prediction",
                                   solver_order=2, solver_type="bh2", lower_order_final=True,
                                   final_sigmas_type="zero", num_train_timesteps=1000)


def run_cases(out, cases, channels, t2v, i2v, enc, tok, spatial, extra_meta):
    """Runs `cases` (text-to-video on `t2v`, image-to-video on `i2v`) and writes the fixture."""
    import diffusers
    import transformers
    from safetensors.torch import save_file

    image = first_frame()
    out.mkdir(parents=True, exist_ok=True)
    if any(c["image"] for c in cases):
        image.save(out / "first-frame.png")
    t, h, w = (FRAMES - 1) // 4 + 1, HEIGHT // spatial, WIDTH // spatial
    tensors = {}
    for i, c in enumerate(cases):
        noise = torch.tensor(normal_f32(c["seed"], 0, channels * t * h * w), dtype=torch.float32)
        noise = noise.reshape(1, channels, t, h, w)
        pipe, kw = (i2v, dict(image=image)) if c["image"] else (t2v, {})
        video = pipe(prompt_embeds=prompt_embeds(enc, tok, c["prompt"]),
                     negative_prompt_embeds=prompt_embeds(enc, tok, c["negative"]),
                     height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=c["steps"],
                     guidance_scale=CFG, latents=noise, output_type="np", **kw).frames[0]
        # float16 halves the fixture; its rounding (≤ 2⁻¹¹ relative) is ~20 dB below the
        # ≈ 53 dB the test measures
        tensors[f"video.{i}"] = torch.from_numpy(np.ascontiguousarray(video, dtype=np.float32)).half()
        tensors[f"noise.{i}"] = noise[0].contiguous()
        print(f"{out.name} case {i}: {c['prompt']!r} seed {c['seed']}, {c['steps']} steps, "
              f"{'image' if c['image'] else 'text'}-to-video: frames {tuple(video.shape)}, "
              f"timesteps {[int(x) for x in pipe.scheduler.timesteps]}")
    save_file(tensors, str(out / "expected.safetensors"))
    (out / "meta.json").write_text(json.dumps(dict({
        "about": "generated by tools/parity_wan_pipelines.py; do not edit",
        "cases": cases, "width": WIDTH, "height": HEIGHT, "frames": FRAMES,
        "shift": SHIFT, "cfg": CFG,
        "versions": dict(torch=torch.__version__, diffusers=diffusers.__version__,
                         transformers=transformers.__version__, numpy=np.__version__),
    }, **extra_meta), indent=2) + "\n")
    print("wrote", out)


def main():
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from parity_wan22_vae import TINY as VAE22_TINY

    torch.set_grad_enabled(False)
    enc = text_encoder()
    tok = Tokenizer.from_file(str(TINY_DIR / "umt5-tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()

    # A14B image-to-video: two experts, the Wan 2.1 VAE
    vae = AutoencoderKLWan(**VAE_TINY).eval()
    vae.load_state_dict({k: v.float() for k, v in load_file(str(VAE)).items()}, strict=True)
    high, low = expert("wan22-i2v-high-noise-tiny.safetensors"), expert("wan22-i2v-low-noise-tiny.safetensors")
    a14b = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler(),
                                   transformer=high, transformer_2=low, boundary_ratio=BOUNDARY,
                                   expand_timesteps=False)
    run_cases(OUT, CASES, 16, None, a14b, enc, tok, 8, dict(boundary=BOUNDARY))

    # text-to-video: Wan 2.1 (one model) and A14B (two experts), the Wan 2.1 VAE
    t2v21 = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler(),
                        transformer=expert("wan-tiny.safetensors", 16))
    run_cases(OUT_T2V21, T2V_CASES, 16, t2v21, None, enc, tok, 8, {})
    t2v22 = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler(),
                        transformer=expert("wan22-high-noise-tiny.safetensors", 16),
                        transformer_2=expert("wan22-low-noise-tiny.safetensors", 16),
                        boundary_ratio=T2V_BOUNDARY)
    run_cases(OUT_T2V22, T2V_CASES, 16, t2v22, None, enc, tok, 8, dict(boundary=T2V_BOUNDARY))

    # TI2V-5B: one model, per-token timesteps, the Wan 2.2 VAE (16× in space)
    vae22 = AutoencoderKLWan(**VAE22_TINY).eval()
    vae22.load_state_dict({k: v.float() for k, v in
                           load_file(str(PARITY / "wan22_vae" / "vae_diffusers.safetensors")).items()}, strict=True)
    ti2v = expert("wan22-ti2v-5b-tiny.safetensors", 48, 48)
    common = dict(tokenizer=None, text_encoder=None, vae=vae22, scheduler=scheduler(), transformer=ti2v,
                  expand_timesteps=True)
    run_cases(OUT_TI2V, TI2V_CASES, 48, WanPipeline(**common),
              WanImageToVideoPipeline(**common), enc, tok, 16, {})


if __name__ == "__main__":
    main()
