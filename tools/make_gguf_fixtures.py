#!/usr/bin/env python3
"""Writes the GGUF reference fixtures under tests/fixtures/gguf/ (committed; CI never runs this).

The expected values come from llama.cpp's own Python package `gguf` (gguf-py), whose
`gguf.quants.dequantize` is the reference dequantiser mgpu's must match bit for bit.

Install (pinned):   python -m pip install gguf==0.19.0 numpy==2.* safetensors==0.6.* torch
Run from the repo:  python tools/make_gguf_fixtures.py
                    (here: /work/venv/bin/python tools/make_gguf_fixtures.py)

What it writes (all deterministic: seeded numpy, fixed metadata, so re-running changes nothing):

all_types.gguf        GGUF v3, one tensor per supported type, + metadata of every value type.
                      F16/BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 are quantised *by gguf-py* from seeded
                      float data. gguf-py 0.19.0 has no quantiser for the K-types (Q2_K..Q6_K:
                      `quantize_blocks` raises NotImplementedError), so their blocks are built
                      from known bytes: seeded random quant/scale bits, with the fp16 super-block
                      scales set to sensible values; `edge_*` tensors add blocks whose scales are
                      0, negative, subnormal, the fp16 maximum, inf and NaN.
expected/NAME.npy     gguf-py's dequantisation of every tensor of all_types.gguf (float32, in
                      PyTorch dimension order), written by numpy itself.
v2.gguf               the same layout with version field 2 (v2 and v3 differ only in that v3 may
                      be big-endian; little-endian files are byte-identical otherwise).
align64.gguf          general.alignment = 64 (tensor data aligned to 64 bytes).
flux_tiny.safetensors a tiny FLUX transformer in the BFL key layout (bf16), 2 double + 2 single
                      blocks.
flux_tiny_city96.gguf the same weights converted the way city96's ComfyUI-GGUF convert.py does:
                      general.architecture = "flux", 1-D tensors F32, 2-D weights Q8_0.
wan_orig_shape.gguf   a tiny Wan-layout GGUF whose 5-D patch_embedding is stored flattened with
                      its real shape in `comfy.gguf.orig_shape.<name>` (ARRAY of INT32), as
                      ComfyUI-GGUF's 5-D tools write it.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"


def check_versions() -> None:
    from importlib.metadata import version

    if version("gguf") != "0.19.0":
        sys.exit(f"gguf {version('gguf')} installed; these fixtures are pinned to gguf==0.19.0")


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def float_data(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Seeded float32 data with a few structured rows: a zero row, a constant row, large values."""
    x = rng(seed).standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    flat[0, :] = 0.0
    if flat.shape[0] > 1:
        flat[1, :] = 0.375
    if flat.shape[0] > 2:
        flat[2, :] *= 1000.0
    return x


def f16_bytes(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float16).view(np.uint8)


# Byte positions of the fp16 super-block scales in each K-type block (ggml-common.h layouts).
K_LAYOUT = {
    # type: (type_size, [(offset, kind)]) where kind "d" is a scale and "m" a min scale
    T.Q2_K: (84, [(80, "d"), (82, "m")]),
    T.Q3_K: (110, [(108, "d")]),
    T.Q4_K: (144, [(0, "d"), (2, "m")]),
    T.Q5_K: (176, [(0, "d"), (2, "m")]),
    T.Q6_K: (210, [(208, "d")]),
}


def k_blocks(qtype: T, n_blocks: int, seed: int, scales=None) -> np.ndarray:
    """Known-bytes K-type blocks: random bits, fp16 scales from `scales` or sensible randoms."""
    size, fields = K_LAYOUT[qtype]
    g = rng(seed)
    blocks = g.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off, kind in fields:
        if scales is None:
            v = np.abs(g.standard_normal(n_blocks)).astype(np.float32) * (0.02 if kind == "d" else 0.01)
        else:
            v = np.asarray(scales, dtype=np.float32)
        blocks[:, off:off + 2] = f16_bytes(v).reshape(n_blocks, 2)
    return blocks


EDGE_SCALES = [0.0, -0.0625, 6.0e-8, 65504.0, np.inf, np.nan, 1.0, -3.5]


def all_types_tensors():
    """(name, ggml type, raw bytes as the writer wants them, PyTorch shape)."""
    out = []
    shape32 = (3, 2, 64)  # 384 values: 12 blocks of 32; 3-D to pin the dimension order
    src = float_data(1, shape32)
    out.append(("t.f32", T.F32, src, shape32))
    out.append(("t.f16", T.F16, src.astype(np.float16), shape32))
    for i, q in enumerate([T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]):
        data = float_data(10 + i, shape32)
        out.append((f"t.{q.name.lower()}", q, gguf.quants.quantize(data, q), shape32))
    shape_k = (2, 512)  # 4 super-blocks
    for i, q in enumerate([T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]):
        n = shape_k[0] * shape_k[1] // 256
        blocks = k_blocks(q, n, 100 + i).reshape(shape_k[0], -1)
        out.append((f"t.{q.name.lower()}", q, blocks, shape_k))
        edge = k_blocks(q, len(EDGE_SCALES), 200 + i, scales=EDGE_SCALES).reshape(len(EDGE_SCALES), -1)
        out.append((f"edge.{q.name.lower()}", q, edge, (len(EDGE_SCALES), 256)))
    # 32-block types with edge scales too (quantised bytes, then scales overwritten).
    for i, q in enumerate([T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]):
        data = float_data(300 + i, (len(EDGE_SCALES), 32))
        raw = gguf.quants.quantize(data, q).copy()
        raw[:, 0:2] = f16_bytes(EDGE_SCALES).reshape(-1, 2)
        out.append((f"edge.{q.name.lower()}", q, raw, (len(EDGE_SCALES), 32)))
    # Plain integer/f64 types GGUF can hold.
    out.append(("t.i8", T.I8, np.arange(-64, 64, dtype=np.int8).reshape(4, 32), (4, 32)))
    out.append(("t.i32", T.I32, np.arange(-6, 6, dtype=np.int32).reshape(3, 4), (3, 4)))
    out.append(("t.f64", T.F64, float_data(7, (2, 3)).astype(np.float64), (2, 3)))
    return out


def add_metadata(w: gguf.GGUFWriter) -> None:
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float32("test.f32", 0.1)
    w.add_float64("test.f64", -2.5e300)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo, gguf")
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_str", ["a", "bc", ""])
    w.add_key_value("test.array_nested", [[1, 2], [3]], V.ARRAY)


def write_gguf(path: Path, tensors, *, arch: str, alignment: int | None = None, meta=None) -> None:
    w = gguf.GGUFWriter(str(path), arch=arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if meta is not None:
        meta(w)
    for name, q, raw, shape in tensors:
        if q in (T.F32, T.F16, T.I8, T.I32, T.F64):
            w.add_tensor(name, np.ascontiguousarray(raw))
        else:
            w.add_tensor(name, np.ascontiguousarray(raw), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def expected_values(q: T, raw: np.ndarray, shape) -> np.ndarray:
    if q in (T.I8, T.I32, T.F64):
        return raw.astype(np.float32).reshape(shape)
    deq = gguf.quants.dequantize(np.ascontiguousarray(raw).view(np.uint8) if q not in (T.F32, T.F16) else raw, q)
    return np.asarray(deq, dtype=np.float32).reshape(shape)


def flux_tiny_state_dict():
    """A tiny FLUX transformer in the BFL layout: hidden 32, 2 heads, mlp 128."""
    h, mlp, heads = 32, 128, 2
    hd = h // heads
    g = rng(42)
    sd = {}

    def lin(name, out_f, in_f, bias=True):
        sd[f"{name}.weight"] = (g.standard_normal((out_f, in_f)) * 0.05).astype(np.float32)
        if bias:
            sd[f"{name}.bias"] = (g.standard_normal(out_f) * 0.01).astype(np.float32)

    lin("img_in", h, 64)
    lin("txt_in", h, 64)
    lin("time_in.in_layer", h, 256)
    lin("time_in.out_layer", h, h)
    lin("vector_in.in_layer", h, 64)
    lin("vector_in.out_layer", h, h)
    lin("guidance_in.in_layer", h, 256)
    lin("guidance_in.out_layer", h, h)
    for b in range(2):
        for s in ("img", "txt"):
            p = f"double_blocks.{b}.{s}"
            lin(f"{p}_mod.lin", 6 * h, h)
            lin(f"{p}_attn.qkv", 3 * h, h)
            sd[f"{p}_attn.norm.query_norm.scale"] = np.ones(hd, np.float32)
            sd[f"{p}_attn.norm.key_norm.scale"] = np.ones(hd, np.float32)
            lin(f"{p}_attn.proj", h, h)
            lin(f"{p}_mlp.0", mlp, h)
            lin(f"{p}_mlp.2", h, mlp)
    for b in range(2):
        p = f"single_blocks.{b}"
        lin(f"{p}.linear1", 3 * h + mlp, h)
        lin(f"{p}.linear2", h, h + mlp)
        sd[f"{p}.norm.query_norm.scale"] = np.ones(hd, np.float32)
        sd[f"{p}.norm.key_norm.scale"] = np.ones(hd, np.float32)
        lin(f"{p}.modulation.lin", 3 * h, h)
    lin("final_layer.linear", 64, h)
    lin("final_layer.adaLN_modulation.1", 2 * h, h)
    return sd


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 (round to nearest even) and back, as torch does."""
    import torch

    return torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()


def write_flux(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    sd = {k: bf16_round(v) for k, v in flux_tiny_state_dict().items()}
    save_file({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()},
              str(out / "flux_tiny.safetensors"), metadata={"format": "pt"})
    # The city96 conversion: BF16 -> F32 (lossless); 1-D stays F32, 2-D weights become Q8_0.
    w = gguf.GGUFWriter(str(out / "flux_tiny_city96.gguf"), arch="flux")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for k, v in sd.items():
        if v.ndim == 1 or any(x in k for x in ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")):
            w.add_tensor(k, v)
        else:
            w.add_tensor(k, gguf.quants.quantize(v, T.Q8_0), raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_wan(out: Path) -> None:
    g = rng(7)
    w = gguf.GGUFWriter(str(out / "wan_orig_shape.gguf"), arch="wan")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    pe = (g.standard_normal((32, 16, 1, 2, 2)) * 0.05).astype(np.float16)
    # GGUF holds at most 4 dims: stored as (32, 64) with the real shape in metadata.
    w.add_tensor("patch_embedding.weight", pe.reshape(32, 64))
    w.add_array("comfy.gguf.orig_shape.patch_embedding.weight", [32, 16, 1, 2, 2])
    for name, shape in [
        ("blocks.0.self_attn.q.weight", (32, 32)),
        ("blocks.0.cross_attn.k.weight", (32, 32)),
        ("blocks.0.ffn.0.weight", (64, 32)),
        ("head.head.weight", (64, 32)),
    ]:
        data = (g.standard_normal(shape) * 0.05).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(data, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("blocks.0.norm3.weight", np.ones(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np.save(out / "expected" / "wan.patch_embedding.weight.npy", pe.astype(np.float32))


def main() -> int:
    check_versions()
    OUT.mkdir(parents=True, exist_ok=True)
    exp = OUT / "expected"
    exp.mkdir(exist_ok=True)
    for f in exp.glob("*.npy"):
        f.unlink()

    tensors = all_types_tensors()
    write_gguf(OUT / "all_types.gguf", tensors, arch="mgpu-test", meta=add_metadata)
    # gguf-py's own reader must read back what its writer wrote (guards the fixture itself).
    reader = gguf.GGUFReader(str(OUT / "all_types.gguf"))
    by_name = {t.name: t for t in reader.tensors}
    with np.errstate(invalid="ignore", over="ignore"):
        for name, q, raw, shape in tensors:
            want = expected_values(q, raw, shape)
            t = by_name[name]
            assert t.tensor_type == q, (name, t.tensor_type, q)
            got = expected_values(q, np.asarray(t.data), shape)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
            np.save(exp / f"{name}.npy", want)

    small = [t for t in tensors if t[0] in ("t.f32", "t.q8_0", "t.q4_k")]
    write_gguf(OUT / "v2.gguf", small, arch="mgpu-test")
    data = bytearray((OUT / "v2.gguf").read_bytes())
    assert struct.unpack_from("<I", data, 4)[0] == 3
    struct.pack_into("<I", data, 4, 2)
    (OUT / "v2.gguf").write_bytes(bytes(data))
    write_gguf(OUT / "align64.gguf", small, arch="mgpu-test", alignment=64)

    write_flux(OUT)
    write_wan(OUT)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
