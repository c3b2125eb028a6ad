//! Text-encoder key layouts. Both keep Hugging Face `transformers` names as canonical
//! (docs/decisions.md §5); what varies in real files is the wrapping:
//!
//! - T5-XXL (`t5xxl_fp16.safetensors`, HF `T5EncoderModel`): `shared.weight` and the tied
//!   `encoder.embed_tokens.weight` (either or both present; canonical is `shared.weight`),
//!   `encoder.block.N.layer.M.…`, and in all-in-one checkpoints a
//!   `text_encoders.t5xxl.transformer.` prefix.
//! - umT5-XXL (Wan; ComfyUI's `umt5_xxl_fp16.safetensors` and
//!   `umt5_xxl_fp8_e4m3fn_scaled.safetensors`, HF `UMT5EncoderModel`): the same names with a
//!   `relative_attention_bias` in every block, and ComfyUI's `spiece_model` (a U8 tensor holding
//!   the SentencePiece tokenizer model, read by
//!   [`crate::models::tokenize::T5Tokenizer::umt5_from_file`], ignored here). The scaled-fp8
//!   file's `scaled_fp8` marker and per-weight `scale_weight` scalars are handled for every
//!   family by the canonicalizer.
//! - CLIP-L (`clip_l.safetensors`, HF `CLIPTextModel`): `text_model.…`, sometimes without the
//!   `text_model.` level (some ComfyUI exports) or under `text_encoders.clip_l.transformer.` /
//!   `cond_stage_model.transformer.`; a `position_ids` buffer and `logit_scale` may ride along.

use std::collections::HashSet;

use super::spec::{entry, no_rev, supported, Entry, Need, Norm, Spec, W, WB};
use super::Layout;
use crate::family::Family;

const FOREIGN: &[&str] = &[
    "model.diffusion_model.",
    "diffusion_model.",
    "vae.",
    "first_stage_model.",
];

pub(crate) fn t5_spec(family: Family) -> Spec {
    let mut foreign: Vec<&str> = FOREIGN.to_vec();
    foreign.extend([
        "text_encoders.clip_l.",
        "clip_l.",
        "text_encoders.clip_g.",
        "clip_g.",
    ]);
    Spec {
        family,
        canonical_layout: Layout::T5Hf,
        own_prefixes: vec![
            "text_encoders.t5xxl.transformer.",
            "text_encoders.umt5xxl.transformer.",
            "t5xxl.transformer.",
            "umt5xxl.transformer.",
            "text_encoders.t5xxl.",
            "t5xxl.",
        ],
        foreign_prefixes: foreign,
        schema: Some(t5_schema()),
        alias: None,
        normalize: t5_normalize,
        rev_count: no_rev,
        unsupported: supported,
    }
}

fn t5_schema() -> Vec<Entry> {
    use Need::*;
    let b = "encoder.block.{i}.layer";
    vec![
        entry("shared", W, Required),
        entry(format!("{b}.0.SelfAttention.q"), W, Required),
        entry(format!("{b}.0.SelfAttention.k"), W, Required),
        entry(format!("{b}.0.SelfAttention.v"), W, Required),
        entry(format!("{b}.0.SelfAttention.o"), W, Required),
        // T5: block 0 only; umT5: every block.
        entry(
            format!("{b}.0.SelfAttention.relative_attention_bias"),
            W,
            Optional,
        ),
        entry(format!("{b}.0.layer_norm"), W, Required),
        // T5 v1.1 / umT5 have the gated wi_0/wi_1; the original T5 a single wi.
        entry(format!("{b}.1.DenseReluDense.wi_0"), W, Optional),
        entry(format!("{b}.1.DenseReluDense.wi_1"), W, Optional),
        entry(format!("{b}.1.DenseReluDense.wi"), W, Optional),
        entry(format!("{b}.1.DenseReluDense.wo"), W, Required),
        entry(format!("{b}.1.layer_norm"), W, Required),
        entry("encoder.final_layer_norm", W, Required),
    ]
}

fn t5_normalize(name: &str, all: &HashSet<&str>) -> Norm {
    if name == "spiece_model" {
        return Norm::Ignore(
            "SentencePiece tokenizer model (ComfyUI embeds it; the tokenizer reads it)",
        );
    }
    if name == "encoder.embed_tokens.weight" {
        if all.contains("shared.weight") {
            return Norm::Ignore("tied to `shared.weight` (same embedding)");
        }
        return Norm::Keep("shared.weight".into());
    }
    Norm::Keep(name.to_string())
}

pub(crate) fn clip_spec() -> Spec {
    let mut foreign: Vec<&str> = FOREIGN.to_vec();
    foreign.extend([
        "text_encoders.t5xxl.",
        "t5xxl.",
        "text_encoders.clip_g.",
        "clip_g.",
    ]);
    Spec {
        family: Family::ClipL,
        canonical_layout: Layout::ClipHf,
        own_prefixes: vec![
            "text_encoders.clip_l.transformer.",
            "clip_l.transformer.",
            "cond_stage_model.transformer.",
            "text_encoders.clip_l.",
            "clip_l.",
            "transformer.",
        ],
        foreign_prefixes: foreign,
        schema: Some(clip_schema()),
        alias: None,
        normalize: clip_normalize,
        rev_count: no_rev,
        unsupported: supported,
    }
}

fn clip_schema() -> Vec<Entry> {
    use Need::*;
    let l = "text_model.encoder.layers.{i}";
    vec![
        entry("text_model.embeddings.token_embedding", W, Required),
        entry("text_model.embeddings.position_embedding", W, Required),
        entry(format!("{l}.self_attn.q_proj"), WB, Required),
        entry(format!("{l}.self_attn.k_proj"), WB, Required),
        entry(format!("{l}.self_attn.v_proj"), WB, Required),
        entry(format!("{l}.self_attn.out_proj"), WB, Required),
        entry(format!("{l}.layer_norm1"), WB, Required),
        entry(format!("{l}.layer_norm2"), WB, Required),
        entry(format!("{l}.mlp.fc1"), WB, Required),
        entry(format!("{l}.mlp.fc2"), WB, Required),
        entry("text_model.final_layer_norm", WB, Required),
        // CLIPTextModelWithProjection / ComfyUI exports carry the projection.
        entry("text_projection", W, Optional),
    ]
}

fn clip_normalize(name: &str, _all: &HashSet<&str>) -> Norm {
    let bare = ["embeddings.", "encoder.", "final_layer_norm."];
    let name = if bare.iter().any(|p| name.starts_with(p)) {
        format!("text_model.{name}")
    } else {
        name.to_string()
    };
    match name.as_str() {
        "text_model.embeddings.position_ids" => {
            Norm::Ignore("position-id buffer (recomputed, not a weight)")
        }
        "logit_scale" => Norm::Ignore("contrastive logit scale (unused by the text encoder)"),
        _ => Norm::Keep(name),
    }
}
