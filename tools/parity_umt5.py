#!/usr/bin/env python3
"""Reference fixtures for mgpu's umT5 text encoder (Wan 2.1's), its tokenizer and prompt cleaning.

What it does
  - Prompt cleaning: diffusers' WanPipeline `prompt_clean` (= Wan 2.1's `whitespace_clean(
    basic_clean(t))`: ftfy.fix_text, html.unescape twice, strip, `regex` \\s+ -> " ", strip) on
    tricky prompts, and the same with ftfy replaced by its `uncurl_quotes` alone (what mgpu does,
    src/models/tokenize/clean.rs); cases where real ftfy does more are flagged.
  - Tokenizer: a tiny SentencePiece Unigram model in umT5's layout (`<pad> </s> <s> <unk>` =
    0..3, byte fallback with the 256 `<0xNN>` pieces, a small precompiled normaliser), with
    google/umt5-xxl's 300 `<extra_id_N>` sentinels. References: `sentencepiece` itself with
    `add_eos` (ComfyUI's SPieceTokenizer) and transformers' `TokenizersBackend` built from the
    model (what transformers 5.24 maps `umt5` to), whose tokenizer.json is saved too. Ids as
    WanPipeline asks for them: `padding="max_length"`, `truncation=True`, with the attention mask.
  - Encoder: a tiny transformers `UMT5EncoderModel` (per-layer relative position bias, gated
    GELU), weights rounded to bf16, saved bf16 in the real key layout with ComfyUI's embedded
    `spiece_model` tensor (as umt5_xxl_fp16.safetensors), and a ComfyUI scaled-fp8 copy
    (umt5_xxl_fp8_e4m3fn_scaled.safetensors layout: F8_E4M3 linear weights, a float32
    `scale_weight` per weight, the `scaled_fp8` marker, `spiece_model`). Reference outputs in f32
    exactly as WanPipeline's `_get_t5_prompt_embeds`: encode the padded ids with the mask, keep
    the first seq_len rows, zero the rest; for the fp8 copy, with its dequantised weights.

Install (versions the committed fixtures were made with)
  python -m pip install torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3 \\
      sentencepiece==0.2.3 safetensors numpy ftfy==6.3.1 regex
Run (from the repository root)
  python tools/parity_umt5.py            # rewrites tests/fixtures/parity/text/umt5-*
  cargo test --test umt5_parity          # checks mgpu against them
CI never runs this script; it reads the committed fixtures.
"""

import html
import io
import json
import os
import pathlib
import tempfile

import ftfy
import regex
import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import UMT5Config, UMT5EncoderModel
from transformers.tokenization_utils_tokenizers import TokenizersBackend

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "parity" / "text"

CORPUS = [
    "a photo of a cat sitting on a red chair",
    "an astronaut riding a horse on the moon, digital art",
    "the quick brown fox jumps over the lazy dog",
    "a watercolor painting of a lighthouse at sunset",
    "a city street at night in the rain, neon signs",
    "a small house in the mountains covered with snow",
    "two cats fight on a stage, cinematic lighting",
    "it's a sunny day at the beach with blue water",
]

# Prompts for cleaning and encoding: plain, HTML entities (double-escaped too), curly quotes,
# whitespace runs, unicode outside the tiny vocabulary (byte fallback), special-token text,
# empty, and one long enough to be truncated.
PROMPTS = [
    "a photo of a cat sitting on a red chair",
    "Two cats &amp;amp; a dog &lt;3 &quot;boxing&quot; &#39;fast&#39; &notit;",
    "  leading\t\tand   trailing\nspaces\u00a0\u3000 ",
    "\u201cA lighthouse\u201d at sunset \u2018digital\u2019 art",
    "Ｃａｔ ﬁsh café naïve — 東京 🐱",
    "a cat </s> a dog <extra_id_0> <s>",
    "",
    " ".join(CORPUS),
]
# Cleaning-only extras: ftfy's heuristics at work (mojibake, ligature/width, C1 controls).
CLEAN_ONLY = [
    "the caf\u00c3\u00a9 is \u00e2\u20ac\u0153open\u00e2\u20ac\u009d",
    "\u0041\u0301 e\u0301 \ufb01 \uff21",
    "&amp;lt;b&amp;gt; &#128; &#x1F431; &#0; &",
    "\u001ctab\u001c",
]
MAX_LEN = 40  # tiny stand-in for WanPipeline's max_sequence_length = 512
EXTRA_IDS = 300  # google/umt5-xxl's sentinels


def whitespace_clean(text):
    return regex.sub(r"\s+", " ", text).strip()


def prompt_clean(text):
    """diffusers WanPipeline / Wan 2.1 with ftfy."""
    return whitespace_clean(html.unescape(html.unescape(ftfy.fix_text(text))).strip())


def prompt_clean_mgpu(text):
    """The same with ftfy.fix_text replaced by ftfy's uncurl_quotes alone (mgpu's choice)."""
    return whitespace_clean(html.unescape(html.unescape(ftfy.fixes.uncurl_quotes(text))).strip())


def umt5_spiece(tmp):
    """A tiny SentencePiece model in umT5's layout, with a small precompiled normaliser."""
    rules = [(0xFF21 + i, 0x41 + i) for i in range(26)] + [(0xFF41 + i, 0x61 + i) for i in range(26)]
    tsv = tmp / "rules.tsv"
    with open(tsv, "w") as f:
        for src, dst in rules:
            f.write(f"{src:X}\t{dst:X}\n")
        f.write("FB01\t66 69\n")
        f.write("3000\t20\n")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 5),
        model_writer=model,
        vocab_size=400,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        byte_fallback=True,
        normalization_rule_tsv=str(tsv),
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    proto.normalizer_spec.normalization_rule_tsv = ""
    assert [p.piece for p in proto.pieces[:5]] == ["<pad>", "</s>", "<s>", "<unk>", "<0x00>"]
    return proto.SerializeToString()


def reinit(model, seed):
    """O(1) activations (as tools/parity_text.py), then rounded to bf16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name or name == "shared.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            p.copy_(p.to(torch.bfloat16).float())


def scaled_fp8(sd):
    """ComfyUI's scaled fp8: each 2-D linear weight as e4m3 with a float32 `scale_weight`."""
    out, deq = {}, {}
    for k, v in sd.items():
        if v.ndim == 2 and ("SelfAttention" in k or "DenseReluDense" in k):
            if "relative_attention_bias" in k:
                out[k], deq[k] = v.to(torch.bfloat16), v
                continue
            scale = v.abs().max() / 448.0
            q = (v / scale).to(torch.float8_e4m3fn)
            out[k] = q
            out[k.replace(".weight", ".scale_weight")] = scale.reshape(()).float()
            deq[k] = q.float() * scale
        else:
            out[k], deq[k] = v.to(torch.bfloat16), v
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out, deq


def encode(model, ids, mask):
    """WanPipeline._get_t5_prompt_embeds for one prompt: masked encoding, rows past seq_len zeroed."""
    with torch.no_grad():
        h = model(torch.tensor([ids]), torch.tensor([mask])).last_hidden_state[0]
    n = sum(mask)
    return torch.cat([h[:n], h.new_zeros(len(ids) - n, h.shape[1])]).contiguous()


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {}

    # ---------------- cleaning ----------------
    clean_cases = []
    for p in PROMPTS + CLEAN_ONLY:
        ours, theirs = prompt_clean_mgpu(p), prompt_clean(p)
        clean_cases.append({"prompt": p, "clean": ours, "diffusers": theirs, "ftfy_differs": ours != theirs})
    meta["clean"] = clean_cases

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = pathlib.Path(tmpdir)
        spiece = umt5_spiece(tmp)
        (OUT / "umt5-spiece.model").write_bytes(spiece)
        sp = spm.SentencePieceProcessor(model_proto=spiece, add_eos=True)
        n_pieces = sp.get_piece_size()
        # transformers 5.24 maps `umt5` to its generic TokenizersBackend, which loads a
        # tokenizer.json as is and cannot read a spiece.model alone (and its T5Tokenizer
        # hard-codes unk id 2 and no byte fallback). So the reference tokenizer is built the way
        # that backend builds any SentencePiece model (SpmConverter.build_tokenizer_from_spm_proto:
        # the model's own unk id and byte fallback), plus T5's `$A </s>` template and
        # google/umt5-xxl's special tokens: <pad> </s> <s> <unk> and 300 sentinels after the
        # pieces, <extra_id_299> first.
        from sentencepiece import sentencepiece_model_pb2
        from tokenizers import AddedToken, processors
        from transformers.convert_slow_tokenizer import SpmConverter

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(spiece)
        backend = SpmConverter.build_tokenizer_from_spm_proto(
            proto=proto, vocab=[(p.piece, p.score) for p in proto.pieces], legacy=True)
        backend.add_special_tokens([AddedToken(f"<extra_id_{i}>", special=True, normalized=False)
                                    for i in reversed(range(EXTRA_IDS))])
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
        tok = TokenizersBackend(
            tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            bos_token="<s>", additional_special_tokens=[f"<extra_id_{i}>" for i in range(EXTRA_IDS)])
        assert tok.convert_tokens_to_ids("<extra_id_299>") == n_pieces
        assert tok.convert_tokens_to_ids("<extra_id_0>") == n_pieces + EXTRA_IDS - 1
        tok.save_pretrained(str(tmp / "saved"))
        tj = json.load(open(tmp / "saved" / "tokenizer.json"))
        assert tj["model"]["type"] == "Unigram" and tj["model"]["byte_fallback"] and tj["model"]["unk_id"] == 3
        (OUT / "umt5-tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False) + "\n")
        tokenizer_vocab = len(tok)

    model_vocab = (tokenizer_vocab + 127) // 128 * 128
    config = {
        "vocab_size": model_vocab, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_heads": 4,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "layer_norm_epsilon": 1e-6,
    }
    model = UMT5EncoderModel(UMT5Config(**config, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                                        attn_implementation="eager")).eval()
    reinit(model, 3)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    spiece_t = torch.tensor(list(spiece), dtype=torch.uint8)
    save_file({**{k: v.to(torch.bfloat16) for k, v in sd.items()}, "spiece_model": spiece_t},
              str(OUT / "umt5-model.safetensors"))
    fp8, deq = scaled_fp8(sd)
    save_file({**fp8, "spiece_model": spiece_t}, str(OUT / "umt5-fp8-scaled.safetensors"))
    model_fp8 = UMT5EncoderModel(UMT5Config(**config, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                                            attn_implementation="eager")).eval()
    model_fp8.load_state_dict({**deq, "encoder.embed_tokens.weight": deq["shared.weight"]})

    cases, expected = [], {}
    for i, prompt in enumerate(PROMPTS):
        cleaned = prompt_clean_mgpu(prompt)
        enc = tok(cleaned, padding="max_length", max_length=MAX_LEN, truncation=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        full = tok(cleaned)["input_ids"]
        sp_ids = sp.encode(cleaned)
        # With real ftfy (diffusers / Wan) the ids may still agree: the normaliser folds widths.
        ftfy_ids = tok(prompt_clean(prompt), padding="max_length", max_length=MAX_LEN, truncation=True)["input_ids"]
        key = f"umt5.{i}"
        expected[key] = encode(model, ids, mask)
        if i < 3:
            expected[key + ".fp8"] = encode(model_fp8, ids, mask)
        cases.append({
            "prompt": prompt, "cleaned": cleaned, "max_len": MAX_LEN, "ids": ids, "valid_len": sum(mask),
            "tokens": len(full), "truncated": len(full) > MAX_LEN,
            # ComfyUI tokenises with sentencepiece itself (add_eos) and neither pads nor truncates.
            "sentencepiece": sp_ids, "sentencepiece_agrees": sp_ids == full,
            "same_ids_with_ftfy": ftfy_ids == ids,
            "expected": key, "fp8": i < 3,
        })
    save_file(expected, str(OUT / "umt5-expected.safetensors"))
    meta["umt5"] = {
        "config": config, "tokenizer_vocab": tokenizer_vocab, "spiece_pieces": n_pieces,
        "extra_ids": EXTRA_IDS, "cases": cases,
    }
    meta["generated_by"] = {
        "script": "tools/parity_umt5.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "tokenizers": __import__("tokenizers").__version__,
        "sentencepiece": spm.__version__,
        "ftfy": ftfy.__version__,
    }
    (OUT / "umt5-cases.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    for p in sorted(OUT.glob("umt5-*")):
        print(f"{p.relative_to(ROOT)}: {os.path.getsize(p)} bytes")
    for c in cases:
        print(f"{c['valid_len']:2} valid, sp agrees {c['sentencepiece_agrees']}, same ids with ftfy {c['same_ids_with_ftfy']}: {c['cleaned'][:50]!r}")
    print("ftfy differs on:", [c["prompt"] for c in clean_cases if c["ftfy_differs"]])


if __name__ == "__main__":
    main()
