#!/usr/bin/env python3
"""Reference fixtures for mgpu's FLUX DiT and FLUX VAE (tests/models_flux.rs).

Builds tiny-config diffusers models with fixed seeds, converts their weights to the real
checkpoint layouts (BFL/ComfyUI names for the transformer, `ae.safetensors` names for the
autoencoder), runs them in float32 on the CPU and writes, under tests/fixtures/parity/flux/:

  dit.safetensors        tiny FLUX transformer with guidance embedding, BFL layout (bf16)
  dit_io.safetensors     one forward: inputs, dev output (guidance 3.5) and schnell output
                         (same weights without `guidance_in`), and the dev output computed
                         in bfloat16
  euler.safetensors      a 4-step Euler flow-matching sample of the dev model with diffusers'
                         FlowMatchEulerDiscreteScheduler (FLUX.1-dev scheduler config):
                         initial noise, sigmas, the timesteps given to the model, the result
  vae.safetensors        tiny FLUX autoencoder, ae.safetensors layout (bf16)
  vae_io.safetensors     a decode, an encode (posterior mean) and a sampled encode with
                         given noise
  layout_flux_dev.txt    names and shapes of the REAL FLUX.1-dev checkpoint layout, derived
                         from diffusers' full-size model built on the meta device (no memory)
  layout_ae.txt          the same for the real ae.safetensors
  meta.json              configs, versions, seeds

Weights are rounded to bfloat16 before the reference runs (the reference then computes in
float32 with bf16-representable weights), so the bf16 files hold them exactly at half the
size. Latents passed to the models are in the DiT's convention: unpacked [1, 16, h, w],
scaled by the VAE's scaling/shift factors.

Install (CPU):
  python -m venv venv && venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.15.0
  venv/bin/pip install diffusers==0.42.1 transformers==5.24.0 safetensors numpy
Run from the repository root:
  venv/bin/python tools/parity_flux.py
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import diffusers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "parity" / "flux"

# Must equal mgpu's `models::flux::Config::tiny()` and `models::vae::Config::tiny()`.
DIT = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    latent_channels=16,
    norm_num_groups=4,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=0.3611,
    shift_factor=0.1159,
)
REAL_VAE = dict(VAE, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
# FLUX.1-dev's scheduler/scheduler_config.json.
SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
LATENT_HW = (8, 12)  # latent height × width: 4 × 6 = 24 image tokens, non-square on purpose
TXT_LEN = 7
GUIDANCE = 3.5
TIMESTEP = 0.7


def randomize_(model, seed):
    """Re-initialises every parameter so that norms, biases and scales all matter:
    matrices ~ N(0, 1/fan_in), 1-d norm weights 1 + 0.1·N, biases 0.1·N; then rounds to bf16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(n / math.sqrt(fan_in))
            elif name.endswith("weight"):  # RMSNorm / GroupNorm scales
                p.copy_(1.0 + 0.1 * n)
            else:
                p.copy_(0.1 * n)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def dit_to_bfl(sd, n_double, n_single):
    """diffusers FluxTransformer2DModel state dict -> BFL flux1-*.safetensors names."""
    out, used = {}, set()

    def take(k):
        used.add(k)
        return sd[k]

    def lin(dst, src, bias=True):
        out[f"{dst}.weight"] = take(f"{src}.weight")
        if bias:
            out[f"{dst}.bias"] = take(f"{src}.bias")

    def fused(dst, srcs):
        out[f"{dst}.weight"] = torch.cat([take(f"{s}.weight") for s in srcs], 0)
        out[f"{dst}.bias"] = torch.cat([take(f"{s}.bias") for s in srcs], 0)

    lin("img_in", "x_embedder")
    lin("txt_in", "context_embedder")
    lin("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    lin("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    lin("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    lin("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "time_text_embed.guidance_embedder.linear_1.weight" in sd:
        lin("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        lin("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    for i in range(n_double):
        s, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
        lin(f"{d}.img_mod.lin", f"{s}.norm1.linear")
        lin(f"{d}.txt_mod.lin", f"{s}.norm1_context.linear")
        fused(f"{d}.img_attn.qkv", [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v"])
        fused(f"{d}.txt_attn.qkv", [f"{s}.attn.add_q_proj", f"{s}.attn.add_k_proj", f"{s}.attn.add_v_proj"])
        out[f"{d}.img_attn.norm.query_norm.scale"] = take(f"{s}.attn.norm_q.weight")
        out[f"{d}.img_attn.norm.key_norm.scale"] = take(f"{s}.attn.norm_k.weight")
        out[f"{d}.txt_attn.norm.query_norm.scale"] = take(f"{s}.attn.norm_added_q.weight")
        out[f"{d}.txt_attn.norm.key_norm.scale"] = take(f"{s}.attn.norm_added_k.weight")
        lin(f"{d}.img_attn.proj", f"{s}.attn.to_out.0")
        lin(f"{d}.txt_attn.proj", f"{s}.attn.to_add_out")
        lin(f"{d}.img_mlp.0", f"{s}.ff.net.0.proj")
        lin(f"{d}.img_mlp.2", f"{s}.ff.net.2")
        lin(f"{d}.txt_mlp.0", f"{s}.ff_context.net.0.proj")
        lin(f"{d}.txt_mlp.2", f"{s}.ff_context.net.2")
    for i in range(n_single):
        s, d = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        fused(f"{d}.linear1", [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v", f"{s}.proj_mlp"])
        lin(f"{d}.linear2", f"{s}.proj_out")
        out[f"{d}.norm.query_norm.scale"] = take(f"{s}.attn.norm_q.weight")
        out[f"{d}.norm.key_norm.scale"] = take(f"{s}.attn.norm_k.weight")
        lin(f"{d}.modulation.lin", f"{s}.norm.linear")
    # diffusers' AdaLayerNormContinuous splits (scale, shift); BFL's LastLayer (shift, scale).
    for p in ("weight", "bias"):
        scale, shift = take(f"norm_out.linear.{p}").chunk(2, 0)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale], 0)
    lin("final_layer.linear", "proj_out")
    unused = set(sd) - used
    assert not unused, f"diffusers keys not converted: {sorted(unused)}"
    return out


def vae_to_bfl(sd, n_levels):
    """diffusers AutoencoderKL (FLUX config) state dict -> ae.safetensors names."""
    out, used = {}, set()

    def copy(dst, src):
        for p in ("weight", "bias"):
            k = f"{src}.{p}"
            if k in sd:
                used.add(k)
                t = sd[k]
                # Attention projections are Linear in diffusers, 1×1 convolutions in BFL.
                if p == "weight" and t.dim() == 2 and dst.split(".")[-1] in ("q", "k", "v", "proj_out"):
                    t = t.reshape(*t.shape, 1, 1)
                out[f"{dst}.{p}"] = t

    def resnet(dst, src):
        for n in ("norm1", "conv1", "norm2", "conv2"):
            copy(f"{dst}.{n}", f"{src}.{n}")
        copy(f"{dst}.nin_shortcut", f"{src}.conv_shortcut")

    def mid(dst, src):
        resnet(f"{dst}.block_1", f"{src}.resnets.0")
        resnet(f"{dst}.block_2", f"{src}.resnets.1")
        a = f"{src}.attentions.0"
        copy(f"{dst}.attn_1.norm", f"{a}.group_norm")
        copy(f"{dst}.attn_1.q", f"{a}.to_q")
        copy(f"{dst}.attn_1.k", f"{a}.to_k")
        copy(f"{dst}.attn_1.v", f"{a}.to_v")
        copy(f"{dst}.attn_1.proj_out", f"{a}.to_out.0")

    for part in ("encoder", "decoder"):
        copy(f"{part}.conv_in", f"{part}.conv_in")
        mid(f"{part}.mid", f"{part}.mid_block")
        copy(f"{part}.norm_out", f"{part}.conv_norm_out")
        copy(f"{part}.conv_out", f"{part}.conv_out")
    blocks = lambda prefix: {int(k.split(".")[4]) for k in sd if k.startswith(prefix)}
    for i in range(n_levels):
        for j in blocks(f"encoder.down_blocks.{i}.resnets."):
            resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}")
        copy(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
        # diffusers' up_blocks run deepest first; BFL numbers levels by resolution (up.0 = full).
        lvl = n_levels - 1 - i
        for j in blocks(f"decoder.up_blocks.{i}.resnets."):
            resnet(f"decoder.up.{lvl}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}")
        copy(f"decoder.up.{lvl}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv")
    unused = set(sd) - used
    assert not unused, f"diffusers keys not converted: {sorted(unused)}"
    return out


def pack(latents):
    """[1, 16, h, w] -> [1, h/2·w/2, 64] (diffusers FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens, h, w):
    b, _, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def img_ids(h, w):
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def write_layout(path, sd):
    lines = [f"{k}\t{','.join(str(d) for d in v.shape)}" for k, v in sorted(sd.items())]
    path.write_text("\n".join(lines) + "\n")


def bf16(d):
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in d.items()}


def f32(d):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in d.items()}


@torch.no_grad()
def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    # ---- DiT: dev (with guidance) and schnell (same weights, no guidance_in) ----
    dev = FluxTransformer2DModel(**DIT, guidance_embeds=True).eval()
    randomize_(dev, seed=1)
    schnell = FluxTransformer2DModel(**DIT, guidance_embeds=False).eval()
    schnell.load_state_dict({k: v for k, v in dev.state_dict().items() if "guidance_embedder" not in k})
    bfl = dit_to_bfl(dev.state_dict(), DIT["num_layers"], DIT["num_single_layers"])
    save_file(bf16(bfl), OUT / "dit.safetensors")

    g = torch.Generator().manual_seed(2)
    h, w = LATENT_HW
    latent = torch.randn(1, 16, h, w, generator=g)
    txt = torch.randn(1, TXT_LEN, DIT["joint_attention_dim"], generator=g)
    vec = torch.randn(1, DIT["pooled_projection_dim"], generator=g)
    txt_ids = torch.zeros(TXT_LEN, 3)
    ids = img_ids(h, w)

    def run(model, x, t, guidance):
        out = model(
            hidden_states=pack(x),
            encoder_hidden_states=txt,
            pooled_projections=vec,
            timestep=t,
            img_ids=ids,
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack(out, h, w)

    t = torch.tensor([TIMESTEP], dtype=torch.float32)
    out_dev = run(dev, latent, t, torch.tensor([GUIDANCE], dtype=torch.float32))
    out_schnell = run(schnell, latent, t, None)
    # The same forward in bfloat16 (weights, activations and the timestep/guidance values
    # rounded as diffusers and BFL round them), for the bf16 compute path used on GPUs.
    dev_bf16 = FluxTransformer2DModel(**DIT, guidance_embeds=True).eval().to(torch.bfloat16)
    dev_bf16.load_state_dict(dev.state_dict())
    out_dev_bf16 = unpack(dev_bf16(
        hidden_states=pack(latent).to(torch.bfloat16),
        encoder_hidden_states=txt.to(torch.bfloat16),
        pooled_projections=vec.to(torch.bfloat16),
        timestep=t,
        img_ids=ids,
        txt_ids=txt_ids,
        guidance=torch.tensor([GUIDANCE]),
        return_dict=False,
    )[0].float(), h, w)
    save_file(
        f32(dict(latent=latent, txt=txt, vec=vec, timestep=t, guidance=torch.tensor([GUIDANCE]),
                 out_dev=out_dev, out_schnell=out_schnell, out_dev_bf16=out_dev_bf16)),
        OUT / "dit_io.safetensors",
    )

    # ---- 4-step Euler flow-matching sample (FluxPipeline's loop, dev model) ----
    steps = 4
    sched = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    seq_len = (h // 2) * (w // 2)
    m = (SCHEDULER["max_shift"] - SCHEDULER["base_shift"]) / (SCHEDULER["max_image_seq_len"] - SCHEDULER["base_image_seq_len"])
    mu = seq_len * m + (SCHEDULER["base_shift"] - m * SCHEDULER["base_image_seq_len"])
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    noise = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(3))
    x = pack(noise)
    model_t = []
    guidance = torch.full([1], GUIDANCE, dtype=torch.float32)
    for ts in sched.timesteps:
        tt = ts.expand(1).to(torch.float32) / 1000
        model_t.append(tt)
        v = pack(run(dev, unpack(x, h, w), tt, guidance))
        x = sched.step(v, ts, x, return_dict=False)[0]
    save_file(
        f32(dict(noise=noise, sigmas=sched.sigmas, timesteps=torch.cat(model_t), result=unpack(x, h, w))),
        OUT / "euler.safetensors",
    )

    # ---- VAE ----
    vae = AutoencoderKL(**VAE).eval()
    randomize_(vae, seed=4)
    n_levels = len(VAE["block_out_channels"])
    save_file(bf16(vae_to_bfl(vae.state_dict(), n_levels)), OUT / "vae.safetensors")
    g = torch.Generator().manual_seed(5)
    sf, sh = VAE["scaling_factor"], VAE["shift_factor"]
    dec_in = torch.randn(1, 16, h, w, generator=g)
    dec_out = vae.decode(dec_in / sf + sh).sample
    enc_in = torch.rand(1, 3, 8 * h, 8 * w, generator=g) * 2 - 1
    post = vae.encode(enc_in).latent_dist
    enc_mean = (post.mean - sh) * sf
    enc_noise = torch.randn(post.mean.shape, generator=g)
    enc_sample = (post.mean + post.std * enc_noise - sh) * sf
    save_file(
        f32(dict(decode_in=dec_in, decode_out=dec_out, encode_in=enc_in, encode_mean=enc_mean,
                 encode_noise=enc_noise, encode_sample=enc_sample)),
        OUT / "vae_io.safetensors",
    )

    # ---- Real layouts, from full-size models on the meta device ----
    with torch.device("meta"):
        real_dit = FluxTransformer2DModel(guidance_embeds=True)
        real_vae = AutoencoderKL(**REAL_VAE)
    write_layout(OUT / "layout_flux_dev.txt", dit_to_bfl(real_dit.state_dict(), 19, 38))
    write_layout(OUT / "layout_ae.txt", vae_to_bfl(real_vae.state_dict(), 4))

    meta = dict(
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        dit=dict(DIT, guidance_embeds="dev: true, schnell: false"),
        vae=VAE,
        scheduler=SCHEDULER,
        latent_hw=LATENT_HW,
        txt_len=TXT_LEN,
        timestep=TIMESTEP,
        guidance=GUIDANCE,
        euler=dict(steps=steps, mu=mu, sigmas=sched.sigmas.tolist(), timesteps=torch.cat(model_t).tolist()),
        seeds=dict(dit_weights=1, dit_inputs=2, euler_noise=3, vae_weights=4, vae_inputs=5),
    )
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name:24} {os.path.getsize(f):>8} bytes")


if __name__ == "__main__":
    main()
