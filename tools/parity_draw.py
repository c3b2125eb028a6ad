#!/usr/bin/env python3
"""End-to-end parity fixture for the drawing demo (issue 16): diffusers' FluxPipeline with the
demo's trained weights, mgpu's initial noise and mgpu's σ schedule, in float32 on the CPU.

Reads the trained files from manifests/draw/ (written by tools/train_draw.py) and the
frozen CLIP from manifests/tiny/:
flux-draw.safetensors (BFL layout), ae-draw.safetensors (ae layout), t5-draw.safetensors +
t5-draw-tokenizer.json, clip-tiny.safetensors + clip-tokenizer.json. Converts them back to
diffusers/transformers modules, builds a `FluxPipeline` with FLUX.1-schnell's scheduler
configuration (no shift; the model has no guidance embedding) and its own tokenizers, and runs
the prompts of PROMPTS with `true_cfg_scale` = CFG against the empty negative prompt, STEPS
Euler steps on σ = 1, 1 − 1/STEPS, …, 1/STEPS (the pipeline appends 0), T5 at 256 tokens,
starting from mgpu's noise for each seed (tools/mgpu_noise.py: Philox4x32-10 + Box–Muller as
documented in src/sample/noise.rs, stream 0, shape [16, h/8, w/8], packed as the pipeline packs latents).

Writes tests/fixtures/parity/draw/:
  expected.safetensors   image.N (float32 [H, W, 3] in [0, 1], the pipeline's `np` output)
                         and noise.N (float32 [16, h/8, w/8]) for each prompt N
  meta.json              prompts, seeds, size, steps, cfg, sigmas, versions

tests/draw_parity.rs runs `mgpu run` on the same jobs, checks that mgpu's noise equals
noise.N bit for bit and that each PNG is within PSNR ≥ 40 dB of image.N.

Run from the repository root (CPU; the versions of tools/parity_flux.py):
  venv/bin/python tools/parity_draw.py
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_draw import CLIP, T5_LEN, VAE, dit_config_of, t5_config_of  # noqa: E402
from mgpu_noise import normal_f32  # noqa: E402
from parity_flux import pack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Overridable for trying a freshly trained model before it is committed.
DRAW = Path(os.environ.get("DRAW_WEIGHTS", ROOT / "manifests" / "draw"))
TINY = ROOT / "manifests" / "tiny"
OUT = Path(os.environ.get("DRAW_FIXTURE", ROOT / "tests" / "fixtures" / "parity" / "draw"))

PROMPTS = [
    ("a red circle above a blue square on a yellow background", 1),
    ("two green triangles on a white background", 2),
]
SIZE = 128
STEPS = 20
CFG = 4.0

def mgpu_noise(seed, shape, stream=0):
    """mgpu's noise for `seed` (tools/mgpu_noise.py) as a float32 tensor of `shape`."""
    return torch.tensor(normal_f32(seed, stream, int(np.prod(shape))), dtype=torch.float32).reshape(shape)


# ---------------------------------------------------------------- BFL -> diffusers


def dit_from_bfl(sd, n_double, n_single):
    out = {}

    def lin(dst, src, bias=True):
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        if bias:
            out[f"{dst}.bias"] = sd[f"{src}.bias"]

    def split(dsts, src):
        for p in ("weight", "bias"):
            t = sd[f"{src}.{p}"]
            sizes = [n for _, n in dsts]
            for (d, _), part in zip(dsts, torch.split(t, sizes, 0)):
                out[f"{d}.{p}"] = part

    h = sd["img_in.weight"].shape[0]
    lin("x_embedder", "img_in")
    lin("context_embedder", "txt_in")
    lin("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer")
    lin("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")
    lin("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")
    lin("time_text_embed.text_embedder.linear_2", "vector_in.out_layer")
    for i in range(n_double):
        d, s = f"transformer_blocks.{i}", f"double_blocks.{i}"
        lin(f"{d}.norm1.linear", f"{s}.img_mod.lin")
        lin(f"{d}.norm1_context.linear", f"{s}.txt_mod.lin")
        split([(f"{d}.attn.to_q", h), (f"{d}.attn.to_k", h), (f"{d}.attn.to_v", h)], f"{s}.img_attn.qkv")
        split([(f"{d}.attn.add_q_proj", h), (f"{d}.attn.add_k_proj", h), (f"{d}.attn.add_v_proj", h)], f"{s}.txt_attn.qkv")
        out[f"{d}.attn.norm_q.weight"] = sd[f"{s}.img_attn.norm.query_norm.scale"]
        out[f"{d}.attn.norm_k.weight"] = sd[f"{s}.img_attn.norm.key_norm.scale"]
        out[f"{d}.attn.norm_added_q.weight"] = sd[f"{s}.txt_attn.norm.query_norm.scale"]
        out[f"{d}.attn.norm_added_k.weight"] = sd[f"{s}.txt_attn.norm.key_norm.scale"]
        lin(f"{d}.attn.to_out.0", f"{s}.img_attn.proj")
        lin(f"{d}.attn.to_add_out", f"{s}.txt_attn.proj")
        lin(f"{d}.ff.net.0.proj", f"{s}.img_mlp.0")
        lin(f"{d}.ff.net.2", f"{s}.img_mlp.2")
        lin(f"{d}.ff_context.net.0.proj", f"{s}.txt_mlp.0")
        lin(f"{d}.ff_context.net.2", f"{s}.txt_mlp.2")
    mlp = sd["single_blocks.0.linear1.weight"].shape[0] - 3 * h
    for i in range(n_single):
        d, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        split([(f"{d}.attn.to_q", h), (f"{d}.attn.to_k", h), (f"{d}.attn.to_v", h), (f"{d}.proj_mlp", mlp)], f"{s}.linear1")
        lin(f"{d}.proj_out", f"{s}.linear2")
        out[f"{d}.attn.norm_q.weight"] = sd[f"{s}.norm.query_norm.scale"]
        out[f"{d}.attn.norm_k.weight"] = sd[f"{s}.norm.key_norm.scale"]
        lin(f"{d}.norm.linear", f"{s}.modulation.lin")
    for p in ("weight", "bias"):
        shift, scale = sd[f"final_layer.adaLN_modulation.1.{p}"].chunk(2, 0)
        out[f"norm_out.linear.{p}"] = torch.cat([scale, shift], 0)
    lin("proj_out", "final_layer.linear")
    return out


def vae_from_bfl(sd, n_levels):
    out = {}

    def copy(dst, src):
        for p in ("weight", "bias"):
            k = f"{src}.{p}"
            if k in sd:
                t = sd[k]
                if p == "weight" and t.dim() == 4 and src.split(".")[-1] in ("q", "k", "v", "proj_out") and "attn_1" in src:
                    t = t.reshape(t.shape[0], t.shape[1])
                out[f"{dst}.{p}"] = t

    def resnet(dst, src):
        for n in ("norm1", "conv1", "norm2", "conv2"):
            copy(f"{dst}.{n}", f"{src}.{n}")
        copy(f"{dst}.conv_shortcut", f"{src}.nin_shortcut")

    def mid(dst, src):
        resnet(f"{dst}.resnets.0", f"{src}.block_1")
        resnet(f"{dst}.resnets.1", f"{src}.block_2")
        a = f"{dst}.attentions.0"
        copy(f"{a}.group_norm", f"{src}.attn_1.norm")
        copy(f"{a}.to_q", f"{src}.attn_1.q")
        copy(f"{a}.to_k", f"{src}.attn_1.k")
        copy(f"{a}.to_v", f"{src}.attn_1.v")
        copy(f"{a}.to_out.0", f"{src}.attn_1.proj_out")

    for part in ("encoder", "decoder"):
        copy(f"{part}.conv_in", f"{part}.conv_in")
        mid(f"{part}.mid_block", f"{part}.mid")
        copy(f"{part}.conv_norm_out", f"{part}.norm_out")
        copy(f"{part}.conv_out", f"{part}.conv_out")
    blocks = lambda prefix: sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})
    for i in range(n_levels):
        for j in blocks(f"encoder.down.{i}.block."):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
        copy(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
        lvl = n_levels - 1 - i
        for j in blocks(f"decoder.up.{lvl}.block."):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{lvl}.block.{j}")
        copy(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{lvl}.upsample.conv")
    return out


def f32(sd):
    return {k: v.to(torch.float32) for k, v in sd.items()}


def load_strict(model, sd, what, ignore=()):
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not any(i in m for i in ignore)]
    unexpected = [u for u in unexpected if not any(i in u for i in ignore)]
    assert not missing and not unexpected, f"{what}: missing {missing}, unexpected {unexpected}"


@torch.no_grad()
def main():
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)

    dit_sd = f32(load_file(str(DRAW / "flux-draw.safetensors")))
    cfg = dit_config_of(DRAW)  # the width the committed weights were trained at
    dit = FluxTransformer2DModel(**cfg)
    load_strict(dit, dit_from_bfl(dit_sd, cfg["num_layers"], cfg["num_single_layers"]), "transformer")

    with safe_open(str(DRAW / "ae-draw.safetensors"), "pt") as f:
        meta = f.metadata()
    scale, shift = float(meta["scaling_factor"]), float(meta["shift_factor"])
    vae = AutoencoderKL(**VAE, scaling_factor=scale, shift_factor=shift)
    load_strict(vae, vae_from_bfl(f32(load_file(str(DRAW / "ae-draw.safetensors"))), len(VAE["block_out_channels"])), "vae")

    t5_sd = f32(load_file(str(DRAW / "t5-draw.safetensors")))
    t5 = T5EncoderModel(T5Config(vocab_size=t5_sd["shared.weight"].shape[0], **t5_config_of(DRAW)))
    load_strict(t5, t5_sd, "t5", ignore=("embed_tokens",))

    clip_sd = f32(load_file(str(TINY / "clip-tiny.safetensors")))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=clip_sd["text_model.embeddings.token_embedding.weight"].shape[0], **CLIP))
    if not any(k.startswith("text_model.") for k in clip.state_dict()):
        clip_sd = {k.removeprefix("text_model."): v for k, v in clip_sd.items()}
    load_strict(clip, clip_sd, "clip", ignore=("position_ids", "text_projection"))

    t5_tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(DRAW / "t5-draw-tokenizer.json")),
        pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=T5_LEN,
    )
    clip_tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(TINY / "clip-tokenizer.json")),
        bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_max_length=77,
    )
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=sched, vae=vae.eval(), text_encoder=clip.eval(), tokenizer=clip_tok,
                        text_encoder_2=t5.eval(), tokenizer_2=t5_tok, transformer=dit.eval())

    lat = SIZE // 8
    sigmas = np.linspace(1.0, 1.0 / STEPS, STEPS)
    tensors, cases = {}, []
    for i, (prompt, seed) in enumerate(PROMPTS):
        noise = mgpu_noise(seed, (16, lat, lat))
        img = pipe(prompt=prompt, negative_prompt="", true_cfg_scale=CFG, height=SIZE, width=SIZE,
                   num_inference_steps=STEPS, sigmas=sigmas, max_sequence_length=T5_LEN,
                   latents=pack(noise[None]), output_type="np").images[0]
        tensors[f"image.{i}"] = torch.from_numpy(np.ascontiguousarray(img)).float()
        tensors[f"noise.{i}"] = noise
        cases.append(dict(prompt=prompt, seed=seed))
        print(f"{prompt!r} seed {seed}: mean {img.mean():.4f}")
    save_file(tensors, str(OUT / "expected.safetensors"))
    meta = dict(
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__),
        size=SIZE, steps=STEPS, cfg=CFG, t5_len=T5_LEN, sigmas=sched.sigmas.tolist(), cases=cases,
    )
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
