#!/usr/bin/env python3
"""Writes full-size weight files with the real names, shapes and file names, for measuring
`mgpu run` at real size on a machine where the real checkpoints cannot be downloaded.

The tensors are all zeros and the files are sparse (a safetensors header, then `truncate`),
so writing a 28 GB checkpoint takes a second and reading it comes from the page cache; the
compute is the real compute (matrix products do not look at the values). Pixels are grey.

    python3 tools/full_size_files.py DIR wan14b   # wan2.1_t2v_14B_bf16.safetensors,
                                                  # umt5_xxl_fp16.safetensors, wan_2.1_vae.safetensors
    python3 tools/full_size_files.py DIR wan1.3b
    python3 tools/full_size_files.py DIR flux-dev   # flux1-dev.safetensors (bf16), t5xxl_fp16,
                                                  # clip_l, ae (f32), and both tokenizers
    python3 tools/full_size_files.py DIR wan22-a14b  # wan2.2_t2v_{high,low}_noise_14B_bf16.safetensors
                                                     # (Wan 2.2 A14B's two experts: the Wan 2.1
                                                     # 14B layout each), umT5, the Wan 2.1 VAE
    python3 tools/full_size_files.py --dense DIR flux-dev   # every byte written (see below)

`--dense` writes every data byte instead of leaving holes, so the disk really holds the files
and a read of them after evicting their pages (tools/evict.py) reaches the disk: the data is
one 4 MiB block of random small values repeated (each 2- or 4-byte value a normal number of
magnitude 2^-12 to 2^-11 with a random sign and mantissa, in the file's dtype), so every
model computes finite numbers; the files are synced before the script ends.

Layouts come from the committed parity fixtures (names and shapes of the real checkpoints:
tests/fixtures/parity/wan/layout_wan_14b.txt, …) and, for umT5-XXL, from its Hugging Face
names (24 blocks, d_model 4096, d_ff 10240, 64 heads, a position bias in every block).
Standard library only.
"""

import json
import os
import random
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"BF16": 2, "F16": 2, "F32": 4}
# (exponent field of 2^-12, its shift, mantissa bits) per dtype, for --dense.
SMALL = {"BF16": (115, 7, 7), "F16": (3, 10, 10), "F32": (115, 23, 23)}
BLOCK = 4 << 20


def dense_block(dtype, seed=11):
    """BLOCK bytes of random small normal numbers of `dtype` (little-endian)."""
    exp, shift, mbits = SMALL[dtype]
    size = SIZES[dtype]
    rng = random.Random(seed)
    bits = size * 8
    words = [(rng.getrandbits(1) << (bits - 1)) | (exp << shift) | rng.getrandbits(mbits)
             for _ in range(BLOCK // size)]
    return struct.pack(f"<{len(words)}{'H' if size == 2 else 'I'}", *words)


def read_layout(path):
    out = []
    with open(path) as f:
        for line in f:
            name, shape = line.rstrip("\n").split("\t")
            out.append((name, [int(d) for d in shape.split(",")] if shape else []))
    return out


def umt5_layout():
    d, ff, heads, buckets, vocab = 4096, 10240, 64, 32, 256384
    out = [("shared.weight", [vocab, d])]
    for i in range(24):
        b = f"encoder.block.{i}.layer"
        for m in "qkvo":
            out.append((f"{b}.0.SelfAttention.{m}.weight", [d, d]))
        out.append((f"{b}.0.SelfAttention.relative_attention_bias.weight", [buckets, heads]))
        out.append((f"{b}.0.layer_norm.weight", [d]))
        out.append((f"{b}.1.DenseReluDense.wi_0.weight", [ff, d]))
        out.append((f"{b}.1.DenseReluDense.wi_1.weight", [ff, d]))
        out.append((f"{b}.1.DenseReluDense.wo.weight", [d, ff]))
        out.append((f"{b}.1.layer_norm.weight", [d]))
    out.append(("encoder.final_layer_norm.weight", [d]))
    return out


def t5xxl_layout():
    """T5 v1.1 XXL's encoder as ComfyUI's t5xxl_fp16.safetensors names it (transformers' names):
    24 blocks, d_model 4096, d_ff 10240, 64 heads, the position bias in block 0 only."""
    d, ff, heads, buckets, vocab = 4096, 10240, 64, 32, 32128
    out = [("shared.weight", [vocab, d]), ("encoder.final_layer_norm.weight", [d])]
    for i in range(24):
        b = f"encoder.block.{i}.layer"
        for m in "qkvo":
            out.append((f"{b}.0.SelfAttention.{m}.weight", [d, d]))
        if i == 0:
            out.append((f"{b}.0.SelfAttention.relative_attention_bias.weight", [buckets, heads]))
        out.append((f"{b}.0.layer_norm.weight", [d]))
        out.append((f"{b}.1.DenseReluDense.wi_0.weight", [ff, d]))
        out.append((f"{b}.1.DenseReluDense.wi_1.weight", [ff, d]))
        out.append((f"{b}.1.DenseReluDense.wo.weight", [d, ff]))
        out.append((f"{b}.1.layer_norm.weight", [d]))
    return out


def clip_l_layout():
    """CLIP ViT-L/14's text model (transformers' names, as in ComfyUI's clip_l.safetensors):
    12 layers, width 768, MLP 3072, 77 positions, vocabulary 49408."""
    d, ff = 768, 3072
    t = "text_model"
    out = [(f"{t}.embeddings.token_embedding.weight", [49408, d]),
           (f"{t}.embeddings.position_embedding.weight", [77, d]),
           (f"{t}.final_layer_norm.weight", [d]), (f"{t}.final_layer_norm.bias", [d]),
           ("text_projection.weight", [d, d])]
    for i in range(12):
        b = f"{t}.encoder.layers.{i}"
        for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += [(f"{b}.self_attn.{m}.weight", [d, d]), (f"{b}.self_attn.{m}.bias", [d])]
        for n in ("layer_norm1", "layer_norm2"):
            out += [(f"{b}.{n}.weight", [d]), (f"{b}.{n}.bias", [d])]
        out += [(f"{b}.mlp.fc1.weight", [ff, d]), (f"{b}.mlp.fc1.bias", [ff]),
                (f"{b}.mlp.fc2.weight", [d, ff]), (f"{b}.mlp.fc2.bias", [d])]
    return out


DENSE = False


def write(path, layout, dtype, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    for name, shape in sorted(layout):
        n = SIZES[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        if DENSE:
            # 8 + len(h) is a multiple of 8, so every value of the block lands aligned.
            block, left = dense_block(dtype), offset
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
            f.flush()
            os.fsync(f.fileno())
        else:
            f.truncate(8 + len(h) + offset)
    kind = "dense small random values, synced" if DENSE else "sparse zeros"
    print(f"wrote {path}: {len(layout)} tensors, {offset / 1e9:.2f} GB ({kind})", flush=True)


def main():
    global DENSE
    if len(sys.argv) > 1 and sys.argv[1] == "--dense":
        DENSE = True
        del sys.argv[1]
    if len(sys.argv) != 3 or sys.argv[2] not in ("flux-dev", "wan14b", "wan1.3b", "wan22-a14b"):
        sys.exit(__doc__)
    out, which = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    fx = os.path.join(ROOT, "tests", "fixtures", "parity")
    what = "small random values" if DENSE else "zeros"
    note = {"mgpu": f"tools/full_size_files.py: {what} in the real layout, not a trained model"}
    if which == "flux-dev":
        write(os.path.join(out, "flux1-dev.safetensors"),
              read_layout(os.path.join(fx, "flux", "layout_flux_dev.txt")), "BF16", note)
        write(os.path.join(out, "t5xxl_fp16.safetensors"), t5xxl_layout(), "F16", note)
        write(os.path.join(out, "clip_l.safetensors"), clip_l_layout(), "F16", note)
        write(os.path.join(out, "ae.safetensors"),
              read_layout(os.path.join(fx, "flux", "layout_ae.txt")), "F32", note)
        # The parity fixtures' tokenizers (small vocabularies: every id they give is valid for
        # the full-size embeddings; the words do not matter to zero weights).
        for name in ("t5-tokenizer.json", "clip-tokenizer.json"):
            with open(os.path.join(fx, "text", name), "rb") as src:
                with open(os.path.join(out, name), "wb") as dst:
                    dst.write(src.read())
        return
    if which == "wan22-a14b":
        # ComfyUI publishes these experts as fp16 and fp8_scaled; bf16 here, so that the
        # measurement is the streaming, not a conversion at load.
        for expert in ("high", "low"):
            write(os.path.join(out, f"wan2.2_t2v_{expert}_noise_14B_bf16.safetensors"),
                  read_layout(os.path.join(fx, "wan", "layout_wan_14b.txt")), "BF16", note)
    elif which == "wan14b":
        write(os.path.join(out, "wan2.1_t2v_14B_bf16.safetensors"),
              read_layout(os.path.join(fx, "wan", "layout_wan_14b.txt")), "BF16", note)
    else:
        write(os.path.join(out, "wan2.1_t2v_1.3B_bf16.safetensors"),
              read_layout(os.path.join(fx, "wan", "layout_wan_1_3b.txt")), "BF16", note)
    write(os.path.join(out, "umt5_xxl_fp16.safetensors"), umt5_layout(), "F16", note)
    write(os.path.join(out, "wan_2.1_vae.safetensors"),
          read_layout(os.path.join(fx, "wan_vae", "layout_wan21_vae.txt")), "BF16", note)


if __name__ == "__main__":
    main()
