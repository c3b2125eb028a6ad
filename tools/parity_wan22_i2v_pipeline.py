#!/usr/bin/env python3
"""End-to-end parity fixture for Wan 2.2 A14B image-to-video (issue 15): diffusers'
`WanImageToVideoPipeline` with the tiny demo's models, mgpu's initial noise, in float32 on
the CPU — the whole chain at once: the first frame's VAE encoding and mask, the two experts
switching at boundary 0.9, UniPC (bh2) on Wan's flow σ with shift 5, true CFG against a
negative prompt, the VAE decode.

Models (the same files mgpu reads):
  experts  manifests/tiny/wan22-i2v-{high,low}-noise-tiny.safetensors (`mgpu make-tiny wan
           --experts --i2v`; original Wan layout, bf16) converted to diffusers'
           `WanTransformer3DModel` names (tools/parity_wan.py's `to_original`, inverted)
  VAE      tests/fixtures/parity/wan_vae/vae_diffusers.safetensors (the same weights as
           vae.safetensors, which mgpu reads; tools/parity_wan_vae.py)
  text     manifests/tiny/umt5-tiny.safetensors + umt5-tokenizer.json in transformers'
           `UMT5EncoderModel`; the prompt embeddings are computed here exactly as
           `WanPipeline._get_t5_prompt_embeds` does (ids padded to 512 with the mask, rows past
           the prompt's length zeroed) and handed to the pipeline (its own tokenizer argument
           wants a transformers tokenizer object; the prompts are plain ASCII, so the prompt
           cleaning diffusers would apply changes nothing)
First frame: a seeded 96 × 64 picture at the job's size (written as first-frame.png; mgpu's
cover-crop and diffusers' resize both leave it as it is).

Writes tests/fixtures/parity/wan22_i2v_pipeline/:
  first-frame.png        the init image
  expected.safetensors   video.N (float32 [frames, H, W, 3] in [0, 1], the pipeline's `np`
                         output) and noise.N (float32 [16, T, h, w], mgpu's noise) per case
  meta.json              cases (prompt, negative prompt, seed, steps), size, frames, shift,
                         cfg, boundary, versions

tests/wan22_i2v.rs runs `mgpu run` on the same jobs (sampler `uni_pc_bh2`, scheduler
`flow_sigmas`) and compares: noise bit for bit, every frame within PSNR ≥ 40 dB.

Install (CPU): torch==2.15.0 diffusers==0.42.1 transformers tokenizers safetensors numpy pillow
Run from the repository root:
  venv/bin/python tools/parity_wan22_i2v_pipeline.py
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
OUT = ROOT / "tests" / "fixtures" / "parity" / "wan22_i2v_pipeline"

WIDTH, HEIGHT, FRAMES = 96, 64, 9
SHIFT, CFG, BOUNDARY = 5.0, 3.5, 0.9
TEXT_LEN = 512  # WanPipeline's max_sequence_length
# mgpu's `t5::Config::tiny_umt5` (make-tiny umt5)
UMT5 = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
            relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.0,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False)
CASES = [
    dict(prompt="the sun sets over a green hill, clouds drifting", negative="blurry, static, low quality",
         seed=42, steps=6),
    # four steps: two on each expert (timesteps 999, 937 | 833, 625 at shift 5; case 0: 999, 961, 909 | 833, 714, 501)
    dict(prompt="a red kite over the sea", negative="", seed=7, steps=4),
]


def expert(name):
    """A tiny image-to-video expert, read from its original-layout file into diffusers' model."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    model = WanTransformer3DModel(**dict(WAN_TINY, in_channels=36)).eval()
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


def main():
    import diffusers
    import transformers
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    torch.set_grad_enabled(False)
    vae = AutoencoderKLWan(**VAE_TINY).eval()
    vae.load_state_dict({k: v.float() for k, v in load_file(str(VAE)).items()}, strict=True)
    high, low = expert("wan22-i2v-high-noise-tiny.safetensors"), expert("wan22-i2v-low-noise-tiny.safetensors")
    enc = text_encoder()
    tok = Tokenizer.from_file(str(TINY_DIR / "umt5-tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    # WanPipeline's scheduler as Wan-AI/Wan2.2-I2V-A14B-Diffusers configures it (UniPC bh2,
    # order 2, lower_order_final, final σ 0), flow σ with Wan 2.2 I2V's shift 5
    sched = UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=SHIFT, prediction_type="flow_prediction",
                                    solver_order=2, solver_type="bh2", lower_order_final=True,
                                    final_sigmas_type="zero", num_train_timesteps=1000)
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=sched,
                                   transformer=high, transformer_2=low, boundary_ratio=BOUNDARY,
                                   expand_timesteps=False)
    image = first_frame()
    OUT.mkdir(parents=True, exist_ok=True)
    image.save(OUT / "first-frame.png")
    t, h, w = (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8
    tensors = {}
    for i, c in enumerate(CASES):
        noise = torch.tensor(normal_f32(c["seed"], 0, 16 * t * h * w), dtype=torch.float32).reshape(1, 16, t, h, w)
        video = pipe(image=image, prompt_embeds=prompt_embeds(enc, tok, c["prompt"]),
                     negative_prompt_embeds=prompt_embeds(enc, tok, c["negative"]),
                     height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=c["steps"],
                     guidance_scale=CFG, guidance_scale_2=CFG, latents=noise, output_type="np").frames[0]
        tensors[f"video.{i}"] = torch.from_numpy(np.ascontiguousarray(video, dtype=np.float32))
        tensors[f"noise.{i}"] = noise[0].contiguous()
        print(f"case {i}: {c['prompt']!r} seed {c['seed']}, {c['steps']} steps: frames {tuple(video.shape)}, "
              f"timesteps {[int(x) for x in pipe.scheduler.timesteps]}")
    save_file(tensors, str(OUT / "expected.safetensors"))
    (OUT / "meta.json").write_text(json.dumps({
        "about": "generated by tools/parity_wan22_i2v_pipeline.py; do not edit",
        "cases": CASES, "width": WIDTH, "height": HEIGHT, "frames": FRAMES,
        "shift": SHIFT, "cfg": CFG, "boundary": BOUNDARY,
        "versions": dict(torch=torch.__version__, diffusers=diffusers.__version__,
                         transformers=transformers.__version__, numpy=np.__version__),
    }, indent=2) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
