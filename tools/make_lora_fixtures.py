#!/usr/bin/env python3
"""Writes tests/fixtures/lora/: tiny FLUX / CLIP-L / T5 base weights in their real key layouts,
LoRAs made with the reference tooling (peft, diffusers) in the formats real files use, and the
expected merged weights, for tests/lora_fixtures.rs.

Install (pinned; CPU torch is enough):
    python -m venv venv && venv/bin/pip install torch==2.15.* diffusers==0.42.1 \
        transformers==5.24.* peft==0.21.2 safetensors numpy
Run from the repository root:
    venv/bin/python tools/make_lora_fixtures.py
It is deterministic (fixed seeds, CPU) and rewrites every file under tests/fixtures/lora/.

What is made, and by what:
- Base FLUX transformer: diffusers' own `FluxTransformer2DModel` at a tiny size (hidden 8, two
  double and two single blocks). Its state dict is the diffusers-layout base; the BFL-layout
  base is converted by `diffusers_to_bfl` below and checked against diffusers' own
  `convert_flux_transformer_checkpoint_to_diffusers` (BFL → diffusers), which must give back
  the diffusers tensors exactly. That converter hard-codes FLUX.1's width (`inner_dim = 3072`);
  the check runs its source with that one constant set to the tiny width.
- LoRAs are peft adapters on those models (`get_peft_model` with `LoraConfig`, random
  `init_lora_weights=False`), saved by the tools users' files come from:
    A  diffusers `FluxPipeline.save_lora_weights` (keys `transformer.…lora_A/B.weight`, alpha in
       the `lora_adapter_metadata` header) and peft `save_pretrained`
       (`adapter_model.safetensors` + `adapter_config.json`, keys `base_model.model.…`);
    K  kohya/ComfyUI keys on BFL names (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`,
       `.alpha`), converted here from a peft adapter: separate q/k/v (and single-block
       q/k/v/mlp) factors become one fused factor pair (`down` stacked, `up` block-diagonal,
       alpha scaled with the rank so alpha/rank is unchanged), and the diffusers
       `norm_out.linear` factor gets its up rows swapped in halves (BFL's shift/scale order);
    B  BFL/ComfyUI keys (`diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight`, some as
       `.lora_down/.lora_up`), bf16 factors, no alpha (alpha = rank);
    CLIP-L and T5 text-encoder adapters in kohya keys (`lora_te1_…`, `lora_te3_…`).
- Expected results, two per case:
    peft   peft's own merge (`merge_and_unload`, or diffusers' `fuse_lora` for several adapters
           in order) of the f32 base, converted to BFL names. peft computes `B @ A` with a BLAS
           matmul, whose summation order is not mgpu's, so Rust compares within a tolerance.
    exact  mgpu's documented arithmetic (src/weights/lora/math.rs) with element-wise torch ops:
           d = up[:,0]·down[0,:], then d = d + up[:,k]·down[k,:] in order, W + d·f32(strength·
           alpha/rank), LoRAs in manifest order, one rounding to the stored dtype (bf16, or fp8
           e4m3fn via w/scale for ComfyUI scaled fp8). Rust must match these bit for bit.
cases.json lists every case (base file, family, LoRAs with strengths, expected files).
"""

import inspect
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import diffusers
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.loaders import single_file_utils
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "lora")
H, MLP, N_DOUBLE, N_SINGLE = 8, 32, 2, 2
TORCH_BF16 = torch.bfloat16


def tiny_flux(seed):
    torch.manual_seed(seed)
    m = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=N_DOUBLE, num_single_layers=N_SINGLE,
        attention_head_dim=H, num_attention_heads=1, joint_attention_dim=8,
        pooled_projection_dim=8, guidance_embeds=False, axes_dims_rope=(2, 2, 4),
    )
    # Re-draw every tensor (some are initialised to 0/1) so that no value is special.
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return m.eval()


def sd_clone(m):
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# diffusers → BFL (the inverse of diffusers' convert_flux_transformer_checkpoint_to_diffusers)

def swap_halves(t):
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def diffusers_to_bfl(sd):
    out = {}
    def put(bfl, dif, f=lambda t: t):
        for p in ("weight", "bias"):
            if f"{dif}.{p}" in sd:
                out[f"{bfl}.{p}"] = f(sd[f"{dif}.{p}"])
    def fuse(bfl, difs):
        for p in ("weight", "bias"):
            out[f"{bfl}.{p}"] = torch.cat([sd[f"{d}.{p}"] for d in difs], dim=0)
    put("img_in", "x_embedder")
    put("txt_in", "context_embedder")
    put("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    put("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    put("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    put("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    put("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
    put("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    put("final_layer.linear", "proj_out")
    put("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves)
    for i in range(N_DOUBLE):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        put(f"{b}.img_mod.lin", f"{d}.norm1.linear")
        put(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
        fuse(f"{b}.img_attn.qkv", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"])
        fuse(f"{b}.txt_attn.qkv", [f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"])
        out[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_added_k.weight"]
        put(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
        put(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
        put(f"{b}.img_mlp.0", f"{d}.ff.net.0.proj")
        put(f"{b}.img_mlp.2", f"{d}.ff.net.2")
        put(f"{b}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        put(f"{b}.txt_mlp.2", f"{d}.ff_context.net.2")
    for i in range(N_SINGLE):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        put(f"{b}.modulation.lin", f"{d}.norm.linear")
        fuse(f"{b}.linear1", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"])
        out[f"{b}.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        put(f"{b}.linear2", f"{d}.proj_out")
    return {k: v.contiguous() for k, v in out.items()}


def check_with_diffusers_converter(bfl, dif):
    """Runs diffusers' BFL → diffusers converter (its source, width constant set to H)."""
    src = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in src, "diffusers' converter changed; update this check"
    src = src.replace("inner_dim = 3072", f"inner_dim = {H}")
    ns = dict(vars(single_file_utils))
    exec(src, ns)
    back = ns["convert_flux_transformer_checkpoint_to_diffusers"]({k: v.clone() for k, v in bfl.items()})
    assert set(back) == set(dif), (set(back) ^ set(dif))
    for k in dif:
        assert torch.equal(back[k], dif[k]), k


# ---------------------------------------------------------------------------------------------
# The documented arithmetic

def f32(x):
    return torch.tensor(x, dtype=torch.float32)


def low_rank_delta(up, down, scale):
    """Σ_k up[:, k]·down[k, :] in order, then · scale; element-wise f32 ops only."""
    up, down = up.float(), down.float()
    acc = up[:, 0:1] * down[0:1, :]
    for k in range(1, up.shape[1]):
        acc = acc + up[:, k:k + 1] * down[k:k + 1, :]
    return acc * f32(scale)


def apply_terms(base, terms):
    """base: {name: f32 tensor (canonical shape)}; terms: [(name, row0, up, down, scale)] in
    application order. Returns {name: patched f32} for the patched names."""
    out = {}
    for name, row0, up, down, scale in terms:
        w = out.get(name, base[name].float().clone())
        flat = w.reshape(w.shape[0], -1)
        d = low_rank_delta(up, down.reshape(down.shape[0], -1), scale)
        flat[row0:row0 + d.shape[0]] = flat[row0:row0 + d.shape[0]] + d
        out[name] = flat.reshape(w.shape)
    return out


# ---------------------------------------------------------------------------------------------
# LoRA factors → BFL targets

DOUBLE_FUSED = {  # diffusers module suffix → (BFL module suffix, part index, parts)
    "attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
    "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1), "attn.add_v_proj": ("txt_attn.qkv", 2),
}
DOUBLE_WHOLE = {
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
}
SINGLE_FUSED = {"attn.to_q": 0, "attn.to_k": 1, "attn.to_v": 2, "proj_mlp": 3}
SINGLE_WHOLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
GLOBAL = {
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}


def bfl_target(module):
    """diffusers module → (BFL module, row offset, fused part index or None, swap)."""
    if module in GLOBAL:
        return GLOBAL[module], 0, None, module == "norm_out.linear"
    parts = module.split(".")
    i, rest = int(parts[1]), ".".join(parts[2:])
    if parts[0] == "transformer_blocks":
        if rest in DOUBLE_FUSED:
            b, k = DOUBLE_FUSED[rest]
            return f"double_blocks.{i}.{b}", k * H, k, False
        return f"double_blocks.{i}.{DOUBLE_WHOLE[rest]}", 0, None, False
    if rest in SINGLE_FUSED:
        k = SINGLE_FUSED[rest]
        return f"single_blocks.{i}.linear1", k * H, k, False
    return f"single_blocks.{i}.{SINGLE_WHOLE[rest]}", 0, None, False


def peft_factors(model, adapter):
    """{diffusers module: (A, B, alpha, r)} of a peft-wrapped model's adapter."""
    from peft.tuners.lora import LoraLayer
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and adapter in mod.lora_A:
            name = name.removeprefix("base_model.model.")
            out[name] = (mod.lora_A[adapter].weight.detach().clone(), mod.lora_B[adapter].weight.detach().clone(),
                         mod.lora_alpha[adapter], mod.r[adapter])
    return out


def flux_terms(factors, strength):
    """Terms on BFL names, in the order mgpu applies them (file order, then module name order
    is irrelevant: one file never patches the same rows twice)."""
    terms = []
    for module, (A, B, alpha, r) in sorted(factors.items()):
        bfl, row0, _, swap = bfl_target(module)
        up = swap_halves(B) if swap else B
        terms.append((f"{bfl}.weight", row0, up, A, alpha / r * strength))
    return terms


def kohya_fused(factors):
    """kohya/ComfyUI BFL-named LoRA from per-module diffusers factors (see the header)."""
    groups = {}
    for module, (A, B, alpha, r) in factors.items():
        bfl, row0, part, swap = bfl_target(module)
        groups.setdefault(bfl, []).append((part, row0, A, swap_halves(B) if swap else B, alpha, r))
    out = {}
    for bfl, items in groups.items():
        items.sort(key=lambda x: (x[0] is not None, x[0]))
        key = "lora_unet_" + bfl.replace(".", "_")
        if items[0][0] is None:
            _, _, A, B, alpha, r = items[0]
            down, up, rank, alpha_k = A, B, r, alpha
        else:
            n_parts = 3 if bfl.endswith("qkv") else 4
            assert [x[0] for x in items] == list(range(n_parts)), (bfl, [x[0] for x in items])
            alphas = {x[4] / x[5] for x in items}
            assert len(alphas) == 1, "fused parts need one alpha/rank"
            down = torch.cat([x[2] for x in items], dim=0)
            rank = down.shape[0]
            rows = sum(x[3].shape[0] for x in items)
            up = torch.zeros(rows, rank)
            r0 = c0 = 0
            for x in items:
                up[r0:r0 + x[3].shape[0], c0:c0 + x[5]] = x[3]
                r0 += x[3].shape[0]
                c0 += x[5]
            alpha_k = items[0][4] / items[0][5] * rank
        out[f"{key}.lora_down.weight"] = down.contiguous()
        out[f"{key}.lora_up.weight"] = up.contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(alpha_k))
    return out


def kohya_terms(kohya, strength):
    terms = []
    for k in sorted(kohya):
        if not k.endswith(".lora_down.weight"):
            continue
        key = k[: -len(".lora_down.weight")]
        down, up = kohya[k], kohya[f"{key}.lora_up.weight"]
        alpha = kohya[f"{key}.alpha"].item()
        module = key[len("lora_unet_"):]
        bfl = BFL_FLAT[module]
        terms.append((f"{bfl}.weight", 0, up, down, alpha / down.shape[0] * strength))
    return terms


BFL_FLAT = {}


def save(tensors, name, metadata=None):
    path = os.path.join(OUT, name)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, path, metadata=metadata)
    return name


def to_bf16(d):
    return {k: v.to(TORCH_BF16) for k, v in d.items()}


def max_ulp_diff(a, b):
    """Largest difference in f32 units in the last place (for the report)."""
    a, b = a.float().reshape(-1), b.float().reshape(-1)
    ia = a.view(torch.int32).to(torch.int64)
    ib = b.view(torch.int32).to(torch.int64)
    ia = torch.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int((ia - ib).abs().max().item())


# ---------------------------------------------------------------------------------------------

def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    cases = []
    stats = {}

    # Base FLUX ----------------------------------------------------------------------------
    model = tiny_flux(0)
    dif = sd_clone(model)
    bfl = diffusers_to_bfl(dif)
    check_with_diffusers_converter(bfl, dif)
    for k in bfl:
        if k.endswith(".weight"):
            BFL_FLAT[k[: -len(".weight")].replace(".", "_")] = k[: -len(".weight")]
    save(dif, "flux_base_diffusers_f32.safetensors")
    save(bfl, "flux_base_bfl_f32.safetensors")
    bfl_bf16 = to_bf16(bfl)
    save({f"model.diffusion_model.{k}": v for k, v in bfl_bf16.items()}, "flux_base_bfl_bf16.safetensors")

    # ComfyUI scaled fp8: 2-D weights as e4m3fn with a per-tensor scale, the rest bf16.
    fp8, scales = {}, {}
    for k, v in bfl.items():
        if k.endswith(".weight") and v.dim() == 2:
            s = (v.abs().max() / 448.0).float()
            fp8[k] = (v / s).clamp(-448, 448).to(torch.float8_e4m3fn)
            scales[k] = s
        else:
            fp8[k] = v.to(TORCH_BF16)
    fp8_file = {f"model.diffusion_model.{k}": v for k, v in fp8.items()}
    for k, s in scales.items():
        fp8_file[f"model.diffusion_model.{k[:-len('.weight')]}.scale_weight"] = s.reshape(())
    fp8_file["model.diffusion_model.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save(fp8_file, "flux_base_bfl_fp8_scaled.safetensors")

    # LoRA A: peft on every linear, r 4, alpha 8 ------------------------------------------
    targets_all = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
                   "proj_mlp", "proj_out", "norm.linear", "norm1.linear", "norm1_context.linear", "ff.net.0.proj",
                   "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm_out.linear", "x_embedder",
                   "context_embedder", "linear_1", "linear_2"]
    cfg_a = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets_all)
    cfg_k = LoraConfig(r=2, lora_alpha=1, init_lora_weights=False,
                       target_modules=["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "proj_mlp",
                                       "ff.net.0.proj", "norm_out.linear", "linear_1"])
    cfg_b = LoraConfig(r=3, lora_alpha=3, init_lora_weights=False,
                       target_modules=["to_out.0", "to_add_out", "ff_context.net.2", "norm1.linear"],
                       exclude_modules=None)

    def adapter(cfg, seed, bf16_factors=False):
        m = tiny_flux(0)
        torch.manual_seed(seed)
        pm = get_peft_model(m, cfg)
        if bf16_factors:
            with torch.no_grad():
                for n, p in pm.named_parameters():
                    if "lora_" in n:
                        p.copy_(p.to(TORCH_BF16).float())
        return pm

    pa = adapter(cfg_a, 1)
    fa = peft_factors(pa, "default")
    sd_a = {k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(pa).items()}
    tmp = tempfile.mkdtemp()
    FluxPipeline.save_lora_weights(tmp, transformer_lora_layers=sd_a,
                                   transformer_lora_adapter_metadata=cfg_a.to_dict())
    shutil.move(os.path.join(tmp, "pytorch_lora_weights.safetensors"), os.path.join(OUT, "lora_a_diffusers.safetensors"))
    peft_dir = os.path.join(OUT, "lora_a_peft")
    pa.save_pretrained(peft_dir)
    for extra in os.listdir(peft_dir):
        if extra not in ("adapter_model.safetensors", "adapter_config.json"):
            os.remove(os.path.join(peft_dir, extra))

    pk = adapter(cfg_k, 2)
    fk = peft_factors(pk, "default")
    kohya = kohya_fused(fk)
    save(kohya, "lora_k_kohya.safetensors")

    pb = adapter(cfg_b, 3, bf16_factors=True)
    fb = peft_factors(pb, "default")
    lora_b = {}
    for j, (module, (A, B, alpha, r)) in enumerate(sorted(fb.items())):
        bfl_mod, row0, part, swap = bfl_target(module)
        assert part is None and not swap
        a_name, b_name = ("lora_A.weight", "lora_B.weight") if j % 2 == 0 else ("lora_down.weight", "lora_up.weight")
        lora_b[f"diffusion_model.{bfl_mod}.{a_name}"] = A.to(TORCH_BF16)
        lora_b[f"diffusion_model.{bfl_mod}.{b_name}"] = B.to(TORCH_BF16)
    save(lora_b, "lora_b_bfl_bf16.safetensors")

    # peft merges (f32), in BFL names ------------------------------------------------------
    def peft_merged(strengths):
        """strengths: [(cfg, seed, bf16, strength, factors)] → merged f32 BFL dict via diffusers
        fuse_lora; checks that the adapters drawn here are the saved ones."""
        m = tiny_flux(0)
        names = []
        for n, (cfg, seed, bf16, _, want) in enumerate(strengths):
            torch.manual_seed(seed)
            name = f"a{n}"
            m.add_adapter(cfg, adapter_name=name)
            if bf16:
                with torch.no_grad():
                    for pn, p in m.named_parameters():
                        if f"lora_" in pn and f".{name}." in pn:
                            p.copy_(p.to(TORCH_BF16).float())
            names.append(name)
            got = peft_factors(m, name)
            assert set(got) == set(want)
            for k, (A, B, *_rest) in want.items():
                assert torch.equal(got[k][0], A) and torch.equal(got[k][1], B), (name, k)
        m.set_adapters(names, weights=[x[3] for x in strengths])
        m.fuse_lora(lora_scale=1.0, adapter_names=names)
        m.unload_lora()
        return diffusers_to_bfl(sd_clone(m))

    def patched_only(full, names):
        return {k: full[k] for k in names}

    def write_case(case, family, base, loras, terms, merged_peft, base_f32, dtype, scale_of=None):
        exact = apply_terms(base_f32, terms)
        names = sorted(exact)
        entry = {"name": case, "family": family, "base": base, "loras": loras, "tensors": len(names), "saturated": 0}
        if dtype == "f32":
            entry["expected_exact"] = save(exact, f"expected_{case}_exact.safetensors")
        elif dtype == "bf16":
            entry["expected_exact"] = save(to_bf16(exact), f"expected_{case}_exact.safetensors")
        elif dtype == "fp8":
            q, clamped = {}, 0
            for k, v in exact.items():
                s = scale_of[k]
                # Beyond 464 (448 + half an ulp) e4m3fn has no value: clamped, and counted.
                clamped += int(((v / s).abs() >= 464).sum())
                q[k] = (v / s).clamp(-448, 448).to(torch.float8_e4m3fn)
            entry["saturated"] = clamped
            entry["expected_exact"] = save(q, f"expected_{case}_exact.safetensors")
        if merged_peft is not None:
            mp = patched_only(merged_peft, names)
            entry["expected_peft"] = save(mp, f"expected_{case}_peft_f32.safetensors")
            stats[case] = max(max_ulp_diff(mp[k], exact[k]) for k in names)
            entry["peft_vs_exact_max_ulp"] = stats[case]
        cases.append(entry)
        return exact

    base32 = bfl
    base_bf = {k: v.float() for k, v in bfl_bf16.items()}
    base_fp8 = {k: (fp8[k].float() * scales[k]) if k in scales else fp8[k].float() for k in fp8}

    merged_a = peft_merged([(cfg_a, 1, False, 0.75, fa)])
    write_case("a_diffusers_f32", "flux", "flux_base_bfl_f32.safetensors",
               [["lora_a_diffusers.safetensors", 0.75]], flux_terms(fa, 0.75), merged_a, base32, "f32")
    write_case("a_peft_on_diffusers_base_f32", "flux", "flux_base_diffusers_f32.safetensors",
               [["lora_a_peft/adapter_model.safetensors", 0.75]], flux_terms(fa, 0.75), merged_a, base32, "f32")
    write_case("a_diffusers_bf16", "flux", "flux_base_bfl_bf16.safetensors",
               [["lora_a_diffusers.safetensors", 0.75]], flux_terms(fa, 0.75), None, base_bf, "bf16")
    write_case("a_diffusers_scaled_fp8", "flux", "flux_base_bfl_fp8_scaled.safetensors",
               [["lora_a_diffusers.safetensors", 0.75]], flux_terms(fa, 0.75), None, base_fp8, "fp8",
               scale_of=scales)
    merged_k = peft_merged([(cfg_k, 2, False, -1.25, fk)])
    write_case("k_kohya_f32", "flux", "flux_base_bfl_f32.safetensors",
               [["lora_k_kohya.safetensors", -1.25]], kohya_terms(kohya, -1.25), merged_k, base32, "f32")
    merged_b = peft_merged([(cfg_b, 3, True, 0.5, fb)])
    write_case("b_bfl_bf16_factors_f32", "flux", "flux_base_bfl_f32.safetensors",
               [["lora_b_bfl_bf16.safetensors", 0.5]], flux_terms(fb, 0.5), merged_b, base32, "f32")
    stack = [(cfg_a, 1, False, 0.75, fa), (cfg_k, 2, False, -1.25, fk), (cfg_b, 3, True, 0.5, fb)]
    stack_terms = flux_terms(fa, 0.75) + kohya_terms(kohya, -1.25) + flux_terms(fb, 0.5)
    stack_loras = [["lora_a_diffusers.safetensors", 0.75], ["lora_k_kohya.safetensors", -1.25],
                   ["lora_b_bfl_bf16.safetensors", 0.5]]
    merged_stack = peft_merged(stack)
    write_case("stack_f32", "flux", "flux_base_bfl_f32.safetensors", stack_loras, stack_terms, merged_stack,
               base32, "f32")
    write_case("stack_bf16", "flux", "flux_base_bfl_bf16.safetensors", stack_loras, stack_terms, None, base_bf,
               "bf16")

    # Text encoders ------------------------------------------------------------------------
    torch.manual_seed(10)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=8)).eval()
    with torch.no_grad():
        for p in clip.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    # transformers 5 saves CLIPTextModel without the `text_model.` level that clip_l files
    # have; the base file keeps the bare names (mgpu accepts both), LoRA keys and expectations
    # use the canonical `text_model.` names.
    def canon_clip(name):
        return f"text_model.{name}" if name.startswith(("embeddings.", "encoder.", "final_layer_norm.")) else name
    clip_saved = {k: v for k, v in sd_clone(clip).items() if not k.endswith("position_ids")}
    save(clip_saved, "clip_base_f32.safetensors")
    clip_base = {canon_clip(k): v for k, v in clip_saved.items()}
    torch.manual_seed(11)
    pc = get_peft_model(clip, LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                         target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]))
    fc = peft_factors(pc, "default")
    clip_lora, clip_terms = {}, []
    for module, (A, B, alpha, r) in sorted(fc.items()):
        module = canon_clip(module)
        key = "lora_te1_" + module.replace(".", "_")
        clip_lora[f"{key}.lora_down.weight"] = A
        clip_lora[f"{key}.lora_up.weight"] = B
        clip_lora[f"{key}.alpha"] = torch.tensor(float(alpha))
        clip_terms.append((f"{module}.weight", 0, B, A, alpha / r * 1.5))
    save(clip_lora, "lora_clip_kohya.safetensors")
    for m in pc.modules():
        if hasattr(m, "scale_layer") and hasattr(m, "lora_A"):
            m.scale_layer(1.5)
    clip_merged = {canon_clip(k): v for k, v in sd_clone(pc.merge_and_unload()).items()
                   if not k.endswith("position_ids")}
    write_case("clip_kohya_f32", "clip-l", "clip_base_f32.safetensors", [["lora_clip_kohya.safetensors", 1.5]],
               clip_terms, clip_merged, clip_base, "f32")

    torch.manual_seed(20)
    t5 = T5EncoderModel(T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2,
                                 relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")).eval()
    with torch.no_grad():
        for p in t5.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    t5_base = {k: v for k, v in sd_clone(t5).items() if k != "encoder.embed_tokens.weight"}
    save(t5_base, "t5_base_f32.safetensors")
    torch.manual_seed(21)
    pt = get_peft_model(t5, LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                       target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"]))
    ft = peft_factors(pt, "default")
    t5_lora, t5_terms = {}, []
    for module, (A, B, alpha, r) in sorted(ft.items()):
        key = "lora_te3_" + module.replace(".", "_")
        t5_lora[f"{key}.lora_down.weight"] = A
        t5_lora[f"{key}.lora_up.weight"] = B
        t5_terms.append((f"{module}.weight", 0, B, A, alpha / r * -0.5))
    save(t5_lora, "lora_t5_kohya.safetensors")
    for m in pt.modules():
        if hasattr(m, "scale_layer") and hasattr(m, "lora_A"):
            m.scale_layer(-0.5)
    t5_merged = {k: v for k, v in sd_clone(pt.merge_and_unload()).items() if k != "encoder.embed_tokens.weight"}
    write_case("t5_kohya_f32", "t5", "t5_base_f32.safetensors", [["lora_t5_kohya.safetensors", -0.5]], t5_terms,
               t5_merged, t5_base, "f32")

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"generator": "tools/make_lora_fixtures.py", "torch": torch.__version__,
                   "diffusers": diffusers.__version__, "peft": __import__("peft").__version__,
                   "cases": cases}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(dp, n)) for dp, _, ns in os.walk(OUT) for n in ns)
    print(f"wrote {OUT}: {total} bytes; peft vs exact max ulp: {stats}")


if __name__ == "__main__":
    sys.exit(main())
