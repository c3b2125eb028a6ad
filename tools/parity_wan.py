#!/usr/bin/env python3
"""Reference fixtures for mgpu's Wan 2.1 diffusion transformer (tests/models_wan.rs).

Builds a tiny-config diffusers `WanTransformer3DModel` with a fixed seed, rounds its weights to
bfloat16, and writes under tests/fixtures/parity/wan/:

  dit.safetensors            the tiny transformer in the ORIGINAL Wan layout (the names of
                             `wan/modules/model.py`, ComfyUI's `wan2.1_t2v_*.safetensors` and
                             city96's Wan GGUFs), bf16
  dit_diffusers.safetensors  the same tensors under diffusers' names, bf16 (keymap test)
  dit_io.safetensors         inputs and outputs of one forward:
                               latent [1, 16, T=3, 6, 8], context [1, 7, 32] (a short prompt),
                               context_padded [1, 512, 32] (the same, zero-padded to 512 tokens
                               as WanPipeline pads it), timestep (1000·σ, f32),
                               out          the f32 forward with the 7-token context,
                               out_padded   the f32 forward with the padded context,
                               out_bf16     the padded forward of the model loaded with
                                            `from_pretrained(torch_dtype=torch.bfloat16)`, i.e.
                                            with diffusers' f32 islands (`_keep_in_fp32_modules`)
  layout_wan_14b.txt         names and shapes of the REAL Wan 2.1 T2V 14B checkpoint in the
  layout_wan_1_3b.txt        original layout, and of the 1.3B one: diffusers' full-size models
                             built on the meta device (no memory), names converted
  meta.json                  configs, versions, seeds, the reference's parameter dtypes in bf16

The conversion diffusers → original is written here (`to_original`) and checked against
diffusers' own converter (`convert_wan_transformer_to_diffusers`, original → diffusers): the
round trip must give back every name.

Install (CPU):
  python -m venv venv && venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.15.0
  venv/bin/pip install diffusers==0.42.1 transformers==5.24.0 safetensors numpy
Run from the repository root:
  venv/bin/python tools/parity_wan.py
"""

import json
import math
import os
from pathlib import Path

import torch
import diffusers
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "parity" / "wan"

# Must equal mgpu's `models::wan::Config::tiny()`.
TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
# Wan 2.1 T2V (wan/configs/wan_t2v_14B.py, wan_t2v_1_3B.py; Wan-AI/Wan2.1-T2V-*-Diffusers).
REAL = {
    "14b": dict(TINY, num_attention_heads=40, attention_head_dim=128, text_dim=4096, ffn_dim=13824, num_layers=40),
    "1_3b": dict(TINY, num_attention_heads=12, attention_head_dim=128, text_dim=4096, ffn_dim=8960, num_layers=30),
}
LATENT = (1, 16, 3, 6, 8)  # T = 3 latent frames (9 video frames), 6 × 8: 3·3·4 = 36 tokens
TXT_LEN = 7
TEXT_LEN = 512
SIGMA = 0.6513
TIMESTEP = 1000.0 * SIGMA


def randomize_(model, seed):
    """Re-initialises every parameter so that norms, biases and modulations all matter:
    matrices and conv kernels ~ N(0, 1/fan_in), the modulation tables 0.5·N, 1-d norm weights
    1 + 0.1·N, biases 0.1·N; then rounds to bf16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=g)
            if name.endswith("scale_shift_table"):
                p.copy_(0.5 * n)
            elif p.dim() >= 2:
                p.copy_(n / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):  # RMSNorm / LayerNorm scales
                p.copy_(1.0 + 0.1 * n)
            else:
                p.copy_(0.1 * n)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def to_original(sd, n_layers):
    """diffusers WanTransformer3DModel state dict -> original Wan names (wan/modules/model.py)."""
    out, used = {}, set()

    def take(dst, src):
        used.add(src)
        out[dst] = sd[src]

    def lin(dst, src):
        for p in ("weight", "bias"):
            take(f"{dst}.{p}", f"{src}.{p}")

    take("patch_embedding.weight", "patch_embedding.weight")
    take("patch_embedding.bias", "patch_embedding.bias")
    c = "condition_embedder"
    lin("text_embedding.0", f"{c}.text_embedder.linear_1")
    lin("text_embedding.2", f"{c}.text_embedder.linear_2")
    lin("time_embedding.0", f"{c}.time_embedder.linear_1")
    lin("time_embedding.2", f"{c}.time_embedder.linear_2")
    lin("time_projection.1", f"{c}.time_proj")
    for i in range(n_layers):
        s, d = f"blocks.{i}", f"blocks.{i}"
        for attn, orig in (("attn1", "self_attn"), ("attn2", "cross_attn")):
            for a, o in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o")):
                lin(f"{d}.{orig}.{o}", f"{s}.{attn}.{a}")
            take(f"{d}.{orig}.norm_q.weight", f"{s}.{attn}.norm_q.weight")
            take(f"{d}.{orig}.norm_k.weight", f"{s}.{attn}.norm_k.weight")
        # diffusers' norm2 (the affine cross-attention norm) is the original norm3; the
        # original norm1/norm2 have no parameters.
        lin(f"{d}.norm3", f"{s}.norm2")
        lin(f"{d}.ffn.0", f"{s}.ffn.net.0.proj")
        lin(f"{d}.ffn.2", f"{s}.ffn.net.2")
        take(f"{d}.modulation", f"{s}.scale_shift_table")
    lin("head.head", "proj_out")
    take("head.modulation", "scale_shift_table")
    unused = set(sd) - used
    assert not unused, f"diffusers keys not converted: {sorted(unused)}"
    # diffusers' own converter must take the names back.
    back = convert_wan_transformer_to_diffusers({k: v for k, v in out.items()})
    assert set(back) == set(sd), sorted(set(back) ^ set(sd))
    for k, v in back.items():
        assert v is sd[k] or v.shape == sd[k].shape, k
    return out


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

    def run(m, x, ctx):
        return m(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]

    out = run(model, latent, context)
    out_padded = run(model, latent, padded)

    # bf16 as `from_pretrained(torch_dtype=torch.bfloat16)` loads it: parameters whose name has
    # a segment in `_keep_in_fp32_modules` (time_embedder, scale_shift_table, norm1/2/3) stay
    # f32, everything else is bf16 (diffusers' rule in models/model_loading_utils.py; done by
    # hand here because from_pretrained needs `accelerate` for it).
    m16 = WanTransformer3DModel(**TINY).eval()
    m16.load_state_dict(sd)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    for name, p in m16.named_parameters():
        if not any(k in name.split(".") for k in keep):
            p.data = p.data.to(torch.bfloat16)
    dtypes = {k: str(v.dtype) for k, v in m16.state_dict().items() if v.dtype != torch.bfloat16}
    assert "condition_embedder.time_embedder.linear_1.weight" in dtypes, dtypes
    assert "blocks.0.scale_shift_table" in dtypes and "blocks.0.norm2.weight" in dtypes, dtypes
    out_bf16 = run(m16, latent.to(torch.bfloat16), padded.to(torch.bfloat16)).float()

    save_file(
        f32(dict(latent=latent, context=context, context_padded=padded, timestep=t,
                 out=out, out_padded=out_padded, out_bf16=out_bf16)),
        OUT / "dit_io.safetensors",
    )

    # ---- Real layouts, from full-size models on the meta device ----
    for name, cfg in REAL.items():
        with torch.device("meta"):
            real = WanTransformer3DModel(**cfg)
        write_layout(OUT / f"layout_wan_{name}.txt", to_original(real.state_dict(), cfg["num_layers"]))

    meta = dict(
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        tiny=TINY,
        real=REAL,
        latent=LATENT,
        txt_len=TXT_LEN,
        text_len=TEXT_LEN,
        sigma=SIGMA,
        timestep=TIMESTEP,
        seeds=dict(weights=1, inputs=2),
        f32_in_bf16_model=dtypes,
    )
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name:28} {os.path.getsize(f):>8} bytes")


if __name__ == "__main__":
    main()
