#!/usr/bin/env python3
"""Reference fixtures for mgpu's Wan 2.2 video autoencoder (tests/models_wan22_vae.rs).

Builds a tiny-config diffusers `AutoencoderKLWan` with the Wan 2.2 structure (`is_residual`,
`patch_size` 2, 12 = 3 · 2 · 2 channels in and out, 4 levels of 2 residual blocks with
average-pool / duplicate shortcuts, temporal down-sampling in the last two levels, the real 48
latent channels and Wan 2.2's latent mean/std; encoder width 4, decoder width 3 — the real file
has 160 and 256, different on purpose here too) with a fixed seed, rounds its weights to
bfloat16, and writes under tests/fixtures/parity/wan22_vae/:

  vae.safetensors            its weights in the ORIGINAL Wan 2.2 layout (Wan2.2
                             `wan/modules/vae2_2.py`, also ComfyUI's `wan2.2_vae.safetensors`):
                             `encoder.downsamples.L.downsamples.M.residual.N`,
                             `encoder.downsamples.L.downsamples.2.resample.1` / `.time_conv`,
                             `decoder.upsamples.L.upsamples.M…`, `conv1`, `conv2`, bf16
  vae_diffusers.safetensors  the same weights under diffusers' names, bf16
  vae_io.safetensors         float32 inputs and outputs:
                               decode_in    [1, 48, 3, 2, 3]  a latent in the DiT's space,
                                            (z_raw − mean) / std per channel
                               decode_out   [1, 3, 9, 32, 48] the decoder's output for
                                            z_raw = decode_in / (1/std) + mean, unpatchified,
                                            NOT clamped
                               encode_in    [1, 3, 9, 32, 48] a clip in [-1, 1]
                               encode_mu    [1, 48, 3, 2, 3]  the posterior mean (raw)
                               encode_mean  [1, 48, 3, 2, 3]  (mu − mean) · (1/std)
                               latents_mean, latents_std [48]
  layout_wan22_vae.txt       names and shapes of the REAL `wan2.2_vae.safetensors` (original
                             layout): diffusers' full-size Wan 2.2 config (the
                             Wan-AI/Wan2.2-TI2V-5B-Diffusers `vae/config.json` values: base_dim
                             160, decoder_base_dim 256, z_dim 48, in/out channels 12,
                             is_residual, patch_size 2) built on the meta device, names
                             converted to the original layout
  meta.json                  config, versions, seeds

The decode loop is diffusers' `AutoencoderKLWan._decode` (post_quant_conv, one latent frame at
a time through the decoder with its feature cache, `first_chunk` on the first, unpatchify)
without the final clamp; the script checks that clamping it gives exactly
`vae.decode(z).sample`. The encode is `vae.encode(x)`, whose `latent_dist.mean` is the
posterior mean.

The conversion to the original layout is written here from the structure of Wan 2.2's
`vae2_2.py`. With `--wan-repo DIR` (a checkout of https://github.com/Wan-Video/Wan2.2) it is
checked independently: the original `WanVAE_` built with the tiny config has exactly the
converted names and shapes, and with the converted weights it decodes and encodes to the same
values as diffusers (einops, which that file imports, is replaced by a small shim covering the
patterns it uses). The real layout is checked against the original `WanVAE_` at full size on
the meta device the same way.

Install (CPU): torch==2.15.0 diffusers==0.42.1 safetensors numpy
Run from the repository root:
  python tools/parity_wan22_vae.py [--wan-repo /path/to/Wan2.2]
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import types
from pathlib import Path

import torch
import diffusers
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "parity" / "wan22_vae"

# Wan 2.2's latent normalisation (`Wan2_2_VAE` in vae2_2.py; diffusers' hub config).
MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
    0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
    0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899,
    -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894,
    1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146,
    0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709,
    0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537,
    0.5444, 0.4089, 0.7468, 0.7744,
]

COMMON = dict(
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    latents_mean=MEAN,
    latents_std=STD,
    scale_factor_spatial=16,
)
# Must equal mgpu's `models::wan_vae::Config::tiny22()`.
TINY = dict(base_dim=4, decoder_base_dim=3, **COMMON)
# The real `wan2.2_vae.safetensors` (Wan2.2-TI2V-5B-Diffusers vae/config.json).
REAL = dict(base_dim=160, decoder_base_dim=256, **COMMON)
LATENT_THW = (3, 2, 3)  # → 9 frames of 32 × 48 pixels; non-square on purpose
SEEDS = dict(weights=21, inputs=22)


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
    """diffusers AutoencoderKLWan (Wan 2.2, is_residual) state dict -> original Wan 2.2 names."""
    out = {}

    def resnet_rest(rest):
        mod, param = rest.rsplit(".", 1)
        return f"{RESNET[mod]}.{param}"

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
        elif p[1] in ("down_blocks", "up_blocks"):
            outer, inner = ("downsamples", "downsamples") if p[1] == "down_blocks" \
                else ("upsamples", "upsamples")
            level = int(p[2])
            if p[3] == "resnets":
                idx = int(p[4])
                rest = resnet_rest(".".join(p[5:]))
            else:
                # The resampler follows the level's residual blocks in the original Sequential.
                assert p[3] in ("downsampler", "upsampler"), k
                idx = num_res_blocks + (0 if p[3] == "downsampler" else 1)
                rest = ".".join(p[4:])
            new = f"{p[0]}.{outer}.{level}.{inner}.{idx}.{rest}"
        else:
            raise KeyError(f"unconverted diffusers key {k}")
        assert new not in out, new
        out[new] = v
    assert len(out) == len(sd)
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
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map,
                                feat_idx=vae._conv_idx, first_chunk=(i == 0)))
    vae.clear_cache()
    return unpatchify(torch.cat(outs, 2), patch_size=vae.config.patch_size)


# --- the independent check against Wan 2.2's own code -----------------------------------------

def _einops_shim():
    """`einops.rearrange` for exactly the patterns vae2_2.py uses."""
    def rearrange(x, pattern, **k):
        p = " ".join(pattern.replace("->", " -> ").split())
        if p == "b c t h w -> (b t) c h w":
            b, c, t, h, w = x.shape
            return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        if p == "(b t) c h w -> b c t h w":
            bt, c, h, w = x.shape
            t = k["t"]
            return x.reshape(bt // t, t, c, h, w).permute(0, 2, 1, 3, 4)
        if p == "b c f (h q) (w r) -> b (c r q) f h w":
            q, r = k["q"], k["r"]
            b, c, f, hq, wr = x.shape
            x = x.reshape(b, c, f, hq // q, q, wr // r, r).permute(0, 1, 6, 4, 2, 3, 5)
            return x.reshape(b, c * r * q, f, hq // q, wr // r)
        if p == "b (c r q) f h w -> b c f (h q) (w r)":
            q, r = k["q"], k["r"]
            b, crq, f, h, w = x.shape
            x = x.reshape(b, crq // (r * q), r, q, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
            return x.reshape(b, crq // (r * q), f, h * q, w * r)
        raise NotImplementedError(pattern)
    mod = types.ModuleType("einops")
    mod.rearrange = rearrange
    return mod


def load_wan22(repo):
    sys.modules.setdefault("einops", _einops_shim())
    path = Path(repo) / "wan" / "modules" / "vae2_2.py"
    spec = importlib.util.spec_from_file_location("wan22_vae2_2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def original_model(mod, cfg):
    return mod.WanVAE_(
        dim=cfg["base_dim"], dec_dim=cfg["decoder_base_dim"], z_dim=cfg["z_dim"],
        dim_mult=cfg["dim_mult"], num_res_blocks=cfg["num_res_blocks"],
        attn_scales=cfg["attn_scales"], temperal_downsample=cfg["temperal_downsample"],
    )


def check_against_original(mod, orig_sd, z_raw, decode_out, encode_in, mu):
    model = original_model(mod, TINY).eval()
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in orig_sd.items()}
    assert want == got, sorted(set(want.items()) ^ set(got.items()))[:10]
    model.load_state_dict({k: v.to(torch.float32) for k, v in orig_sd.items()})
    scale = [torch.zeros(48), torch.ones(48)]  # raw latents in and out
    dec = model.decode(z_raw, scale)
    enc = model.encode(encode_in, scale)
    d_err = (dec - decode_out).abs().max().item()
    e_err = (enc - mu).abs().max().item()
    print(f"Wan 2.2 original code vs diffusers: decode max |Δ| {d_err:.2e}, encode {e_err:.2e}")
    assert d_err < 1e-4 * decode_out.abs().max().item(), d_err
    assert e_err < 1e-4 * mu.abs().max().item(), e_err


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wan-repo", help="a checkout of Wan-Video/Wan2.2 for the independent check")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    vae = AutoencoderKLWan(**TINY).eval()
    randomize_(vae, SEEDS["weights"])
    sd = vae.state_dict()
    orig = to_original(sd, TINY["num_res_blocks"])
    save_file(bf16(orig), OUT / "vae.safetensors")
    save_file(bf16(sd), OUT / "vae_diffusers.safetensors")

    mean = torch.tensor(MEAN, dtype=torch.float32)
    std = torch.tensor(STD, dtype=torch.float32)
    inv_std = 1.0 / std
    bc = lambda v: v.view(1, -1, 1, 1, 1)

    g = torch.Generator().manual_seed(SEEDS["inputs"])
    t, h, w = LATENT_THW
    frames = 1 + 4 * (t - 1)
    z_dim = TINY["z_dim"]
    decode_in = torch.randn(1, z_dim, t, h, w, generator=g)
    z = decode_in / bc(inv_std) + bc(mean)
    decode_out = decode_unclamped(vae, z)
    assert decode_out.shape == (1, 3, frames, 16 * h, 16 * w), decode_out.shape
    assert torch.equal(decode_out.clamp(-1.0, 1.0), vae.decode(z).sample)

    encode_in = torch.rand(1, 3, frames, 16 * h, 16 * w, generator=g) * 2 - 1
    mu = vae.encode(encode_in).latent_dist.mean
    assert mu.shape == (1, z_dim, t, h, w), mu.shape
    encode_mean = (mu - bc(mean)) * bc(inv_std)
    save_file(
        f32(dict(decode_in=decode_in, decode_out=decode_out, encode_in=encode_in,
                 encode_mu=mu, encode_mean=encode_mean, latents_mean=mean, latents_std=std)),
        OUT / "vae_io.safetensors",
    )

    with torch.device("meta"):
        real = AutoencoderKLWan(**REAL)
    real_orig = to_original(real.state_dict(), REAL["num_res_blocks"])
    write_layout(OUT / "layout_wan22_vae.txt", real_orig)

    checked = False
    if args.wan_repo:
        mod = load_wan22(args.wan_repo)
        check_against_original(mod, orig, z, decode_out, encode_in, mu)
        with torch.device("meta"):
            full = original_model(mod, REAL)
        want = {k: tuple(v.shape) for k, v in full.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in real_orig.items()}
        assert want == got, sorted(set(want.items()) ^ set(got.items()))[:10]
        print(f"real layout: {len(got)} tensors, as Wan 2.2's WanVAE_ names them")
        checked = True

    meta = dict(
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        tiny={k: v for k, v in TINY.items() if k not in ("latents_mean", "latents_std")},
        latent_thw=LATENT_THW,
        frames=frames,
        seeds=SEEDS,
        checked_against_wan22_original=checked,
        real_tensors=len(real_orig),
        decode_out_range=[decode_out.min().item(), decode_out.max().item()],
        encode_mu_range=[mu.min().item(), mu.max().item()],
    )
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name:28} {os.path.getsize(f):>8} bytes")
    print(json.dumps(meta["decode_out_range"]), json.dumps(meta["encode_mu_range"]))


if __name__ == "__main__":
    main()
