#!/usr/bin/env python3
"""Writes the PyTorch-checkpoint and safetensors fixtures under tests/fixtures/torch/ and
tests/fixtures/safetensors/ (committed; CI never runs this). Every expected value is produced
by torch itself, so the Rust readers are checked against the reference implementation.

Install (pinned):   python -m pip install torch==2.* safetensors==0.6.* numpy==2.*
                    (made here with torch 2.15 CPU, safetensors and numpy from /work/venv)
Run from the repo:  python tools/make_torch_fixtures.py

torch/state_dict.pt     torch.save of a state dict: f32/f16/bf16/f64/i64/i32/i16/i8/u8/bool and
                        fp8 tensors, a Parameter, a transposed (strided) view, a slice view with a
                        storage offset, two names sharing one tensor (tied weights), a 0-d scalar.
torch/expected.safetensors  the same tensors made contiguous, written by safetensors.torch
                        (non-fp8 ones; fp8 expected values are in fp8.safetensors).
torch/lightning.ckpt    {"state_dict": {...}, "epoch": 3, "global_step": 10, "lr": 0.5} as
                        Lightning writes it (the state dict is nested).
torch/evil.pt           a pickle that would call builtins.print when loaded by torch.load with
                        weights_only=False: mgpu must refuse it by name.
torch/legacy.pt         the pre-1.6 non-zip format (_use_new_zipfile_serialization=False).
safetensors/fp8.safetensors  every fp8 bit pattern (E4M3FN and E5M2) and torch's float32 value
                        of each; plus a ComfyUI "scaled fp8" layer (fp8 weight, f32 scale_weight,
                        the `scaled_fp8` marker) and torch's dequantised `weight.float() * scale`.
safetensors/sharded/    model.safetensors.index.json + two shards (Hugging Face layout).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def state_dict() -> dict:
    g = gen(1)
    base = torch.randn(3, 4, generator=g)
    shared = torch.randn(2, 8, generator=g)
    sd = {
        "layer.weight": torch.nn.Parameter(torch.randn(4, 3, generator=g)),
        "layer.bias": torch.randn(4, generator=g),
        "half": torch.randn(2, 5, generator=g).half(),
        "bf16": torch.randn(5, 2, generator=g).bfloat16(),
        "f64": torch.randn(3, generator=g).double(),
        "i64": torch.arange(-3, 3),
        "i32": torch.arange(-2, 2, dtype=torch.int32),
        "i16": torch.arange(-2, 2, dtype=torch.int16),
        "i8": torch.arange(-2, 2, dtype=torch.int8),
        "u8": torch.arange(250, 254, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "fp8": torch.randn(6, generator=g).to(torch.float8_e4m3fn),
        "transposed": base.t(),
        "rows": base[1:],
        "base": base,
        "tied.a": shared,
        "tied.b": shared,
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    return sd


def main() -> int:
    tdir = ROOT / "torch"
    sdir = ROOT / "safetensors"
    (sdir / "sharded").mkdir(parents=True, exist_ok=True)
    tdir.mkdir(parents=True, exist_ok=True)

    sd = state_dict()
    torch.save(sd, tdir / "state_dict.pt")
    back = torch.load(tdir / "state_dict.pt", weights_only=True)
    assert not back["transposed"].is_contiguous() and back["rows"].storage_offset() == 4
    expected = {k: v.detach().contiguous().clone() for k, v in sd.items() if v.dtype != torch.float8_e4m3fn}
    expected["fp8_as_f32"] = sd["fp8"].float()
    save_file(expected, str(tdir / "expected.safetensors"))

    g = gen(2)
    lightning = {
        "epoch": 3,
        "global_step": 10,
        "lr": 0.5,
        "state_dict": {"model.w": torch.randn(2, 2, generator=g), "model.b": torch.randn(2, generator=g)},
        "loops": {"fit_loop": {"epoch_progress": {"total": 4}}},
    }
    torch.save(lightning, tdir / "lightning.ckpt")
    save_file({k: v.contiguous() for k, v in lightning["state_dict"].items()}, str(tdir / "lightning_expected.safetensors"))

    class Evil:
        def __reduce__(self):
            return (print, ("mgpu test fixture: torch.load(weights_only=False) would run this",))

    torch.save({"w": torch.zeros(2), "payload": Evil()}, tdir / "evil.pt")
    torch.save({"w": torch.zeros(2)}, tdir / "legacy.pt", _use_new_zipfile_serialization=False)

    # fp8: every bit pattern and torch's float32 value of it.
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    e4 = bits.view(torch.float8_e4m3fn)
    e5 = bits.view(torch.float8_e5m2)
    w = (torch.randn(4, 8, generator=gen(3)) * 3).to(torch.float8_e4m3fn)
    scale = torch.tensor(0.0123, dtype=torch.float32)
    save_file(
        {
            "all.e4m3": e4.clone(),
            "all.e4m3.as_f32": e4.float(),
            "all.e5m2": e5.clone(),
            "all.e5m2.as_f32": e5.float(),
            "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn),
            "model.diffusion_model.double_blocks.0.img_attn.qkv.weight": w,
            "model.diffusion_model.double_blocks.0.img_attn.qkv.scale_weight": scale,
            "model.diffusion_model.double_blocks.0.img_attn.qkv.bias": torch.zeros(4, dtype=torch.bfloat16),
            "expected.qkv": w.float() * scale,
        },
        str(sdir / "fp8.safetensors"),
        metadata={"format": "pt"},
    )

    # A sharded set in Hugging Face's layout.
    g = gen(4)
    shard1 = {"a.weight": torch.randn(3, 2, generator=g), "a.bias": torch.randn(3, generator=g)}
    shard2 = {"b.weight": torch.randn(2, 3, generator=g).half()}
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    save_file(shard1, str(sdir / "sharded" / names[0]), metadata={"format": "pt"})
    save_file(shard2, str(sdir / "sharded" / names[1]), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for s in (shard1, shard2) for t in s.values())
    index = {
        "metadata": {"total_size": total},
        "weight_map": {**{k: names[0] for k in shard1}, **{k: names[1] for k in shard2}},
    }
    (sdir / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    total = sum(f.stat().st_size for d in (tdir, sdir) for f in d.rglob("*") if f.is_file())
    print(f"wrote {tdir} and {sdir} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
