#!/usr/bin/env python3
"""Reference fixtures for mgpu's Wan 2.1 video autoencoder (tests/models_wan_vae.rs).

Builds a tiny-config diffusers `AutoencoderKLWan` (the Wan 2.1 structure: 4 levels, 2 residual
blocks per level, temporal down-sampling in the last two levels, 16 latent channels) with a
fixed seed, rounds its weights to bfloat16, and writes under tests/fixtures/parity/wan_vae/:

  vae.safetensors            its weights in the ORIGINAL Wan layout (`encoder.downsamples.N.…`,
                             `conv1`, `conv2`, `decoder.upsamples.N.…`: the names of Wan's
                             `wan/modules/vae.py` and ComfyUI's `wan_2.1_vae.safetensors`), bf16
  vae_diffusers.safetensors  the same weights under diffusers' `AutoencoderKLWan` names, bf16
  vae_io.safetensors         float32 inputs and outputs:
                               decode_in    [1, 16, 3, 4, 6]  a latent in the DiT's space,
                                            (z_raw − mean) / std per channel
                               decode_out   [1, 3, 9, 32, 48] the decoder's output for
                                            z_raw = decode_in / (1/std) + mean, NOT clamped
                               encode_in    [1, 3, 9, 32, 48] a clip in [-1, 1]
                               encode_mu    [1, 16, 3, 4, 6]  the posterior mean (raw)
                               encode_mean  [1, 16, 3, 4, 6]  (mu − mean) · (1/std), the
                                            DiT-space latent
                               latents_mean, latents_std [16]
  layout_wan21_vae.txt       names and shapes of the REAL `wan_2.1_vae.safetensors` (original
                             layout): diffusers' full-size default `AutoencoderKLWan` built on
                             the meta device, names converted to the original layout
  meta.json                  config, versions, seeds

The decode loop is diffusers' `AutoencoderKLWan._decode` (post_quant_conv, then one latent
frame at a time through the decoder with its feature cache) without the final clamp; the script
checks that clamping it gives exactly `vae.decode(z).sample`. The encode is `vae.encode(x)`,
whose `latent_dist.mean` is the posterior mean. The normalisation follows diffusers'
WanPipeline / WanImageToVideoPipeline (`latents_std = 1 / std`; decode `z / latents_std + mean`,
encode `(mu − mean) · latents_std`).

The conversion to the original layout is written here from the structure of Wan's `vae.py` and
checked against diffusers' own converter (`convert_wan_vae_to_diffusers`): converting back must
give diffusers' state dict exactly, names and values.

Install (CPU): torch==2.15.0 diffusers==0.42.1 safetensors numpy
Run from the repository root:
  /work/venv/bin/python tools/parity_wan_vae.py
"""

import json
import math
import os
from pathlib import Path

import torch
import diffusers
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "parity" / "wan_vae"

# Must equal mgpu's `models::wan_vae::Config::tiny()`.
TINY = dict(
    base_dim=4,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
)
LATENT_THW = (3, 4, 6)  # → 9 frames of 32 × 48 pixels; non-square on purpose
SEEDS = dict(weights=11, inputs=12)


def randomize_(model, seed):
    """Re-initialises every parameter so that norms and biases matter: conv weights
    ~ N(0, 1/fan_in), RMS-norm gammas 1 + 0.1·N, biases 0.1·N; then rounds to bf16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * n)
            elif p.dim() >= 2:
                p.copy_(n / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * n)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3",
          "conv2": "residual.6", "conv_shortcut": "shortcut"}


def to_original(sd, num_res_blocks):
    """diffusers AutoencoderKLWan (Wan 2.1) state dict -> original Wan names."""
    out = {}

    def resnet_rest(rest):
        mod, param = rest.rsplit(".", 1)
        return f"{RESNET[mod]}.{param}"

    per_level = num_res_blocks + 2  # residual blocks + the resample
    for k, v in sd.items():
        p = k.split(".")
        if k.startswith(("quant_conv.", "post_quant_conv.")):
            new = ("conv1." if p[0] == "quant_conv" else "conv2.") + p[1]
        elif p[1] == "conv_in":
            new = f"{p[0]}.conv1.{p[2]}"
        elif p[1] == "norm_out":
            new = f"{p[0]}.head.0.{p[2]}"
        elif p[1] == "conv_out":
            new = f"{p[0]}.head.2.{p[2]}"
        elif p[1] == "mid_block":
            if p[2] == "attentions":
                new = f"{p[0]}.middle.1." + ".".join(p[4:])
            else:
                new = f"{p[0]}.middle.{2 * int(p[3])}." + resnet_rest(".".join(p[4:]))
        elif p[1] == "down_blocks":
            rest = ".".join(p[3:])
            if p[3] not in ("resample", "time_conv"):
                rest = resnet_rest(rest)
            new = f"encoder.downsamples.{p[2]}.{rest}"
        elif p[1] == "up_blocks":
            level = int(p[2])
            if p[3] == "resnets":
                idx = level * per_level + int(p[4])
                rest = resnet_rest(".".join(p[5:]))
            else:
                assert p[3:5] == ["upsamplers", "0"], k
                idx = level * per_level + num_res_blocks + 1
                rest = ".".join(p[5:])
            new = f"decoder.upsamples.{idx}.{rest}"
        else:
            raise KeyError(f"unconverted diffusers key {k}")
        assert new not in out, new
        out[new] = v
    # Independent check: diffusers' own converter must give back the original dict.
    back = convert_wan_vae_to_diffusers(dict(out))
    assert sorted(back) == sorted(sd), sorted(set(back) ^ set(sd))
    for k in sd:
        assert back[k] is sd[k] or torch.equal(back[k], sd[k]), k
    return out


def write_layout(path, sd):
    lines = [f"{k}\t{','.join(str(d) for d in v.shape)}" for k, v in sorted(sd.items())]
    path.write_text("\n".join(lines) + "\n")


def bf16(d):
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in d.items()}


def f32(d):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in d.items()}


def decode_unclamped(vae, z):
    """diffusers' `AutoencoderKLWan._decode` without the final clamp."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map,
                                feat_idx=vae._conv_idx, first_chunk=(i == 0)))
    vae.clear_cache()
    return torch.cat(outs, 2)


@torch.no_grad()
def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    vae = AutoencoderKLWan(**TINY).eval()
    randomize_(vae, SEEDS["weights"])
    sd = vae.state_dict()
    orig = to_original(sd, TINY["num_res_blocks"])
    save_file(bf16(orig), OUT / "vae.safetensors")
    save_file(bf16(sd), OUT / "vae_diffusers.safetensors")

    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32)
    inv_std = 1.0 / std
    bc = lambda v: v.view(1, -1, 1, 1, 1)

    g = torch.Generator().manual_seed(SEEDS["inputs"])
    t, h, w = LATENT_THW
    frames = 1 + 4 * (t - 1)
    decode_in = torch.randn(1, TINY["z_dim"], t, h, w, generator=g)
    z = decode_in / bc(inv_std) + bc(mean)
    decode_out = decode_unclamped(vae, z)
    assert decode_out.shape == (1, 3, frames, 8 * h, 8 * w), decode_out.shape
    assert torch.equal(decode_out.clamp(-1.0, 1.0), vae.decode(z).sample)

    encode_in = torch.rand(1, 3, frames, 8 * h, 8 * w, generator=g) * 2 - 1
    mu = vae.encode(encode_in).latent_dist.mean
    assert mu.shape == (1, TINY["z_dim"], t, h, w), mu.shape
    encode_mean = (mu - bc(mean)) * bc(inv_std)
    save_file(
        f32(dict(decode_in=decode_in, decode_out=decode_out, encode_in=encode_in,
                 encode_mu=mu, encode_mean=encode_mean, latents_mean=mean, latents_std=std)),
        OUT / "vae_io.safetensors",
    )

    # The real Wan 2.1 VAE: diffusers' defaults are its config.
    with torch.device("meta"):
        real = AutoencoderKLWan()
    assert real.config.base_dim == 96 and real.config.z_dim == 16
    write_layout(OUT / "layout_wan21_vae.txt", to_original(real.state_dict(), 2))

    meta = dict(
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        tiny=TINY,
        latent_thw=LATENT_THW,
        frames=frames,
        seeds=SEEDS,
        decode_out_range=[decode_out.min().item(), decode_out.max().item()],
        encode_mu_range=[mu.min().item(), mu.max().item()],
    )
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name:28} {os.path.getsize(f):>8} bytes")
    print(json.dumps(meta["decode_out_range"]), json.dumps(meta["encode_mu_range"]))


if __name__ == "__main__":
    main()
