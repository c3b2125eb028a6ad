#!/usr/bin/env python3
"""Reference fixtures for mgpu's text encoders (T5 encoder, CLIP-L text model) and tokenizers.

What it does
  Builds tiny-config `T5EncoderModel` and `CLIPTextModelWithProjection` (transformers) with fixed
  seeds, saves their weights in the real checkpoint layouts (Hugging Face names, as in ComfyUI's
  `t5xxl_fp16.safetensors` / `clip_l.safetensors`), builds tiny tokenizers the way the real ones
  are built (a SentencePiece Unigram model for T5 with a precompiled normalizer, read by
  transformers' `T5Tokenizer`; a byte-level BPE vocab.json + merges.txt for CLIP, read by
  transformers' `CLIPTokenizer`), and writes the reference outputs that `tests/text_parity.rs`
  compares with: token ids exactly as diffusers' `FluxPipeline` asks for them
  (`padding="max_length"`, `truncation=True`), T5 `last_hidden_state` (no attention mask, as
  FluxPipeline calls it), CLIP `last_hidden_state` and `pooler_output` (what FluxPipeline feeds
  FLUX as `pooled_projections`), the projected `text_embeds`, and T5's relative-position bucket
  table. Everything in f32.

Install (versions the committed fixtures were made with)
  python -m pip install torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3 \
      sentencepiece==0.2.3 safetensors numpy
  (CPU-only torch is enough.)

Run (from the repository root)
  python tools/parity_text.py            # rewrites tests/fixtures/parity/text/
  cargo test --test text_parity          # checks mgpu against them

The output is deterministic (fixed seeds, single-threaded SentencePiece training); CI never runs
this script, it reads the committed fixtures.
"""

import io
import json
import os
import pathlib
import tempfile

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)
from transformers.models.t5.modeling_t5 import T5Attention

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "parity" / "text"

# Training text for the tiny vocabularies: prompts of the kind FLUX users write.
CORPUS = [
    "a photo of a cat sitting on a red chair",
    "an astronaut riding a horse on the moon, digital art",
    "the quick brown fox jumps over the lazy dog",
    "a watercolor painting of a lighthouse at sunset",
    "portrait of an old man with a white beard, studio lighting",
    "a bowl of fruit on a wooden table, oil painting",
    "a city street at night in the rain, neon signs",
    "a small house in the mountains covered with snow",
    "close up photo of a dog's face, shallow depth of field",
    "it's a sunny day at the beach with blue water and white sand",
    "3 red apples and 12 green pears",
]

# Prompts the fixtures encode: plain, mixed case and punctuation, unicode (full-width letters,
# a ligature and accents that the normalizers rewrite, CJK and an emoji the vocabularies lack),
# special-token text, whitespace runs, contractions, digits, empty, and one long enough to be
# truncated by both tokenizers.
PROMPTS = [
    "a photo of a cat sitting on a red chair",
    "An Astronaut riding a HORSE on the Moon, digital-art!!",
    "Ｃａｔ ﬁsh café naïve — 東京 🐱",
    "  leading   and trailing\tspaces\nand a newline  ",
    "it's a dog's life, isn't it? 1234",
    "a cat </s> a dog <extra_id_0>",
    "",
    " ".join(CORPUS * 2),
]

T5_MAX_LEN = 32  # tiny stand-in for FluxPipeline's max_sequence_length (512 dev / 256 schnell)
T5_LONG_MAX_LEN = 160  # one prompt padded past max_distance=128 to exercise the far buckets
CLIP_MAX_LEN = 77  # CLIP's model_max_length, as in FluxPipeline


def t5_tokenizer(tmp: pathlib.Path):
    """A tiny SentencePiece Unigram model with T5's special ids and a small precompiled normalizer."""
    # A normalization rule table in SentencePiece's TSV format (source code points -> target):
    # full-width Latin letters and the "fi" ligature, as nmt_nfkc (T5's rule set) folds them; a
    # small table keeps the precompiled charsmap, and so the committed fixture, a few KB.
    rules = [(0xFF21 + i, 0x41 + i) for i in range(26)] + [(0xFF41 + i, 0x61 + i) for i in range(26)]
    tsv = tmp / "rules.tsv"
    with open(tsv, "w") as f:
        for src, dst in rules:
            f.write(f"{src:X}\t{dst:X}\n")
        f.write("FB01\t66 69\n")  # ﬁ -> fi
        f.write("3000\t20\n")  # ideographic space -> space
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 5),
        model_writer=model,
        vocab_size=120,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        normalization_rule_tsv=str(tsv),
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    # The trainer records the rule file's (temporary) path: blank it so the fixture does not
    # depend on where the script ran.
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    proto.normalizer_spec.normalization_rule_tsv = ""
    model = io.BytesIO(proto.SerializeToString())
    folder = tmp / "t5tok"
    folder.mkdir()
    (folder / "spiece.model").write_bytes(model.getvalue())
    from_spm = T5Tokenizer.from_pretrained(str(folder))  # transformers' own conversion
    from_spm.save_pretrained(str(tmp / "t5tok_saved"))
    from_json = T5Tokenizer(tokenizer_file=str(tmp / "t5tok_saved" / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return model.getvalue(), from_spm, from_json, sp, tmp / "t5tok_saved" / "tokenizer.json"


def bytes_to_unicode():
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_vocab(num_merges=64):
    """CLIP's vocabulary layout in miniature: 256 byte symbols, the same with `</w>`, one token per
    learned merge (learned here by plain BPE counting on CORPUS), then the two specials last, so
    `<|endoftext|>` has the highest id as in the real vocab."""
    import re

    b2u = bytes_to_unicode()
    words = {}
    for line in CORPUS:
        for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", line.lower()):
            syms = tuple(b2u[b] for b in w.encode("utf-8"))
            syms = syms[:-1] + (syms[-1] + "</w>",)
            words[syms] = words.get(syms, 0) + 1
    merges = []
    for _ in range(num_merges):
        pairs = {}
        for syms, n in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + n
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])  # ties: lexicographically first
        merges.append(best)
        merged = {}
        for syms, n in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    base = list(b2u.values())
    tokens = base + [t + "</w>" for t in base] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return vocab, merges


def reinit(model, seed):
    """Replace transformers' initialisation (tiny std for T5) with O(1) activations, so every
    term (relative bias, gating, layer-norm weights) visibly shapes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name or "embed" in name or name == "shared.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = pathlib.Path(tmpdir)

        # ---------------- T5 ----------------
        spiece, tok_spm, tok_json, sp, tok_json_path = t5_tokenizer(tmp)
        (OUT / "t5-spiece.model").write_bytes(spiece)
        (OUT / "t5-tokenizer.json").write_text(
            json.dumps(json.load(open(tok_json_path)), ensure_ascii=False, indent=1) + "\n"
        )
        t5_vocab = len(tok_spm)
        t5_model_vocab = (t5_vocab + 15) // 16 * 16  # padded, as 32100 -> 32128 in T5-XXL
        t5_cfg = T5Config(
            vocab_size=t5_model_vocab,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            dropout_rate=0.0,
            layer_norm_epsilon=1e-6,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        )
        t5 = T5EncoderModel(t5_cfg).eval()
        reinit(t5, 1)
        sd = {k: v.contiguous() for k, v in t5.state_dict().items()}
        # ComfyUI's t5xxl files carry `shared.weight`, some also the tied duplicate
        # `encoder.embed_tokens.weight`: keep both so the loader's "both present" path is tested.
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"].clone()
        save_file(sd, str(OUT / "t5-model.safetensors"))

        t5_cases, t5_out = [], {}
        for i, prompt in enumerate(PROMPTS):
            for max_len in [T5_MAX_LEN] + ([T5_LONG_MAX_LEN] if i == len(PROMPTS) - 1 else []):
                enc = tok_spm(prompt, padding="max_length", max_length=max_len, truncation=True)
                ids = enc["input_ids"]
                assert ids == tok_json(prompt, padding="max_length", max_length=max_len, truncation=True)["input_ids"]
                full = tok_spm(prompt)["input_ids"]
                sp_ids = sp.encode(prompt) + [1]
                with torch.no_grad():
                    hidden = t5(input_ids=torch.tensor([ids])).last_hidden_state[0]
                key = f"t5.{len(t5_cases)}"
                t5_out[key] = hidden.contiguous()
                t5_cases.append(
                    {
                        "prompt": prompt,
                        "max_len": max_len,
                        "ids": ids,
                        "tokens": len(full),
                        "truncated": len(full) > max_len,
                        "sentencepiece_agrees": sp_ids == full,
                        "hidden": key,
                    }
                )
        rel = torch.arange(-300, 301)
        buckets = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
        meta["t5"] = {
            "config": {
                "vocab_size": t5_model_vocab,
                "d_model": 32,
                "d_kv": 8,
                "d_ff": 48,
                "num_layers": 2,
                "num_heads": 4,
                "relative_attention_num_buckets": 32,
                "relative_attention_max_distance": 128,
                "layer_norm_epsilon": 1e-6,
            },
            "tokenizer_vocab": t5_vocab,
            "cases": t5_cases,
            "bucket_positions_from": -300,
            "buckets": buckets.tolist(),
        }
        save_file(t5_out, str(OUT / "t5-expected.safetensors"))

        # ---------------- CLIP ----------------
        vocab, merges = clip_vocab()
        (OUT / "clip-vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
        (OUT / "clip-merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        # Read the way FLUX's `tokenizer/` folder (vocab.json + merges.txt, no tokenizer.json) is read.
        (tmp / "clipsrc").mkdir()
        (tmp / "clipsrc" / "vocab.json").write_text((OUT / "clip-vocab.json").read_text())
        (tmp / "clipsrc" / "merges.txt").write_text((OUT / "clip-merges.txt").read_text())
        clip_tok = CLIPTokenizer.from_pretrained(str(tmp / "clipsrc"))
        clip_tok.save_pretrained(str(tmp / "cliptok"))
        (OUT / "clip-tokenizer.json").write_text(
            json.dumps(json.load(open(tmp / "cliptok" / "tokenizer.json")), ensure_ascii=False, indent=1) + "\n"
        )
        clip_cfg = CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            projection_dim=24,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LEN,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            # FLUX's text_encoder/config.json (as openai/clip-vit-large-patch14) says 0/2/1: the
            # legacy eos id 2 makes transformers pool at argmax(ids), the first <|endoftext|>.
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        clip = CLIPTextModelWithProjection(clip_cfg).eval()
        reinit(clip, 2)
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(OUT / "clip-model.safetensors"))

        clip_cases, clip_out = [], {}
        for prompt in PROMPTS:
            ids = clip_tok(prompt, padding="max_length", max_length=CLIP_MAX_LEN, truncation=True)["input_ids"]
            full = clip_tok(prompt)["input_ids"]
            with torch.no_grad():
                t = torch.tensor([ids])
                out = clip.text_model(input_ids=t)
                proj = clip(input_ids=t).text_embeds[0]
            key = f"clip.{len(clip_cases)}"
            clip_out[key + ".hidden"] = out.last_hidden_state[0].contiguous()
            clip_out[key + ".pooled"] = out.pooler_output[0].contiguous()
            clip_out[key + ".projected"] = proj.contiguous()
            clip_cases.append(
                {
                    "prompt": prompt,
                    "ids": ids,
                    "tokens": len(full),
                    "truncated": len(full) > CLIP_MAX_LEN,
                    "expected": key,
                }
            )
        meta["clip"] = {
            "config": {
                "vocab_size": len(vocab),
                "hidden_size": 32,
                "intermediate_size": 64,
                "projection_dim": 24,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": CLIP_MAX_LEN,
                "layer_norm_eps": 1e-5,
                "eos_token_id": vocab["<|endoftext|>"],
            },
            "cases": clip_cases,
        }
        save_file(clip_out, str(OUT / "clip-expected.safetensors"))

    meta["generated_by"] = {
        "script": "tools/parity_text.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "tokenizers": __import__("tokenizers").__version__,
        "sentencepiece": spm.__version__,
    }
    (OUT / "cases.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    for p in sorted(OUT.iterdir()):
        print(f"{p.relative_to(ROOT)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
