//! LoRA tensor names: which module a tensor belongs to, what role it plays there (down/up
//! factor, alpha, full difference), and which model component the module is in.
//!
//! Spellings seen in real files (all mapped through [`crate::weights::keymap::ModuleIndex`],
//! never by parsing the module path):
//!
//! | trainer / tool            | example                                                          |
//! |---------------------------|------------------------------------------------------------------|
//! | kohya sd-scripts, ComfyUI | `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `.alpha` |
//! | OneTrainer                | `lora_transformer_transformer_blocks_0_attn_to_q.lora_up.weight` |
//! | SimpleTuner LyCORIS-LoRA  | `lycoris_transformer_blocks_0_attn_to_q.lora_down.weight`        |
//! | diffusers / peft          | `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`       |
//! | peft `save_pretrained`    | `base_model.model.transformer_blocks.0.attn.to_q.lora_B.weight`  |
//! | BFL / ComfyUI             | `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`     |
//! | text encoders             | `lora_te1_text_model_encoder_layers_0_self_attn_q_proj…` (CLIP-L), `lora_te2_`/`lora_te3_…` (T5), `text_encoder.…` |
//! | ComfyUI full differences  | `diffusion_model.img_in.diff`, `….diff_b` (bias)                  |

use crate::family::Family;

/// What a tensor is to its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `lora_down` / `lora_A`: `[rank, in]` (or `[rank, in, kh, kw]`).
    Down,
    /// `lora_up` / `lora_B`: `[out, rank]` (or `[out, rank, 1, 1]`).
    Up,
    /// Scalar alpha: the update is scaled by `alpha / rank`.
    Alpha,
    /// A full difference added to the weight (`.diff`, ComfyUI's `w_norm`).
    Diff,
    /// A full difference added to the bias (`.diff_b`, `b_norm`).
    DiffB,
    /// A network type mgpu does not apply (the text names it).
    Unsupported(&'static str),
}

const SUFFIXES: &[(&str, Role)] = &[
    (".lora_down.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    (".alpha", Role::Alpha),
    (".diff_b", Role::DiffB),
    (".diff", Role::Diff),
    (".w_norm", Role::Diff),
    (".b_norm", Role::DiffB),
    (
        ".lora_B.bias",
        Role::Unsupported("a LoRA bias (peft `lora_bias=True`)"),
    ),
    (
        ".dora_scale",
        Role::Unsupported("DoRA (weight-decomposed LoRA)"),
    ),
    (
        ".lora_magnitude_vector",
        Role::Unsupported("DoRA (weight-decomposed LoRA)"),
    ),
    (
        ".lora_mid.weight",
        Role::Unsupported("a LoCon/Tucker `lora_mid` factor"),
    ),
    (".hada_w1_a", Role::Unsupported("LoHa")),
    (".hada_w1_b", Role::Unsupported("LoHa")),
    (".hada_w2_a", Role::Unsupported("LoHa")),
    (".hada_w2_b", Role::Unsupported("LoHa")),
    (".hada_t1", Role::Unsupported("LoHa")),
    (".hada_t2", Role::Unsupported("LoHa")),
    (".lokr_w1", Role::Unsupported("LoKr")),
    (".lokr_w2", Role::Unsupported("LoKr")),
    (".lokr_w1_a", Role::Unsupported("LoKr")),
    (".lokr_w1_b", Role::Unsupported("LoKr")),
    (".lokr_w2_a", Role::Unsupported("LoKr")),
    (".lokr_w2_b", Role::Unsupported("LoKr")),
    (".lokr_t2", Role::Unsupported("LoKr")),
    (".a1.weight", Role::Unsupported("GLoRA")),
    (".a2.weight", Role::Unsupported("GLoRA")),
    (".b1.weight", Role::Unsupported("GLoRA")),
    (".b2.weight", Role::Unsupported("GLoRA")),
    (".oft_blocks", Role::Unsupported("OFT")),
    (".oft_diag", Role::Unsupported("OFT")),
];

/// Splits a tensor name into (module key, role); `None` for names that are no LoRA tensor.
pub(crate) fn split_key(name: &str) -> Option<(&str, Role)> {
    SUFFIXES
        .iter()
        .filter_map(|(suf, role)| name.strip_suffix(suf).map(|m| (m, *role)))
        .filter(|(m, _)| !m.is_empty())
        // `.diff` is a suffix of nothing longer here, but keep the longest match anyway.
        .max_by_key(|(m, _)| std::cmp::Reverse(m.len()))
}

/// The model component a LoRA module addresses, as its prefix says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Component {
    Diffusion,
    ClipL,
    T5,
    Vae,
}

impl Component {
    pub(crate) fn of(family: Family) -> Component {
        match family {
            Family::Flux | Family::Wan => Component::Diffusion,
            Family::ClipL => Component::ClipL,
            Family::T5 | Family::UmT5 => Component::T5,
            Family::FluxVae | Family::WanVae => Component::Vae,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Component::Diffusion => "the diffusion model",
            Component::ClipL => "clip-l",
            Component::T5 => "t5",
            Component::Vae => "the vae",
        }
    }
}

/// How the module path after the prefix is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spelling {
    /// `double_blocks.0.img_attn.qkv`
    Dotted,
    /// `double_blocks_0_img_attn_qkv` (kohya)
    Flat,
}

/// A module key's component (`None` when the key has no component prefix), the module path
/// after the prefix, and its spelling.
pub(crate) fn classify(module: &str) -> (Option<Component>, &str, Spelling) {
    use Component::*;
    use Spelling::*;
    // Longest first where one prefix extends another.
    const PREFIXES: &[(&str, Option<Component>, Spelling)] = &[
        ("lora_unet_", Some(Diffusion), Flat),
        ("lora_transformer_", Some(Diffusion), Flat),
        ("lycoris_", Some(Diffusion), Flat),
        ("lora_te1_", Some(ClipL), Flat),
        ("lora_te2_", Some(T5), Flat),
        ("lora_te3_", Some(T5), Flat),
        ("lora_te_", Some(ClipL), Flat),
        ("model.diffusion_model.", Some(Diffusion), Dotted),
        ("diffusion_model.", Some(Diffusion), Dotted),
        ("transformer.", Some(Diffusion), Dotted),
        ("unet.", Some(Diffusion), Dotted),
        ("text_encoders.clip_l.transformer.", Some(ClipL), Dotted),
        ("text_encoders.t5xxl.transformer.", Some(T5), Dotted),
        ("text_encoder_2.", Some(T5), Dotted),
        ("text_encoder.", Some(ClipL), Dotted),
        ("vae.", Some(Vae), Dotted),
        ("base_model.model.", None, Dotted),
    ];
    for (p, c, s) in PREFIXES {
        if let Some(rest) = module.strip_prefix(p) {
            if !rest.is_empty() {
                return (*c, rest, *s);
            }
        }
    }
    (None, module, Dotted)
}

/// The spelling family of a file's keys, for the report.
pub(crate) fn format_of(module: &str, role: Role) -> &'static str {
    let kohya =
        module.starts_with("lora_") && !module.contains('.') || module.starts_with("lycoris_");
    match role {
        Role::Diff | Role::DiffB => "diff",
        _ if kohya => "kohya",
        _ if module.starts_with("diffusion_model.")
            || module.starts_with("model.diffusion_model.") =>
        {
            "bfl"
        }
        _ => "peft",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_table() {
        let cases = [
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                Some(("lora_unet_double_blocks_0_img_attn_qkv", Role::Down)),
            ),
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
                Some(("lora_unet_double_blocks_0_img_attn_qkv", Role::Up)),
            ),
            (
                "lora_unet_double_blocks_0_img_attn_qkv.alpha",
                Some(("lora_unet_double_blocks_0_img_attn_qkv", Role::Alpha)),
            ),
            (
                "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
                Some(("transformer.transformer_blocks.0.attn.to_q", Role::Down)),
            ),
            (
                "transformer.transformer_blocks.0.attn.to_q.lora_B.weight",
                Some(("transformer.transformer_blocks.0.attn.to_q", Role::Up)),
            ),
            (
                "diffusion_model.img_in.diff",
                Some(("diffusion_model.img_in", Role::Diff)),
            ),
            (
                "diffusion_model.img_in.diff_b",
                Some(("diffusion_model.img_in", Role::DiffB)),
            ),
            (
                "x.dora_scale",
                Some(("x", Role::Unsupported("DoRA (weight-decomposed LoRA)"))),
            ),
            ("x.hada_w1_a", Some(("x", Role::Unsupported("LoHa")))),
            ("x.lokr_w1_a", Some(("x", Role::Unsupported("LoKr")))),
            ("transformer.proj_out.weight", None),
            (".alpha", None),
        ];
        for (k, want) in cases {
            assert_eq!(split_key(k), want, "{k}");
        }
    }

    #[test]
    fn classify_table() {
        use Component::*;
        use Spelling::*;
        let cases = [
            (
                "lora_unet_double_blocks_0_img_attn_qkv",
                (Some(Diffusion), "double_blocks_0_img_attn_qkv", Flat),
            ),
            (
                "lora_transformer_single_transformer_blocks_3_proj_mlp",
                (
                    Some(Diffusion),
                    "single_transformer_blocks_3_proj_mlp",
                    Flat,
                ),
            ),
            (
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                (
                    Some(ClipL),
                    "text_model_encoder_layers_0_self_attn_q_proj",
                    Flat,
                ),
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1",
                (Some(ClipL), "text_model_encoder_layers_0_mlp_fc1", Flat),
            ),
            (
                "lora_te3_encoder_block_0_layer_0_SelfAttention_q",
                (Some(T5), "encoder_block_0_layer_0_SelfAttention_q", Flat),
            ),
            (
                "transformer.transformer_blocks.0.attn.to_q",
                (Some(Diffusion), "transformer_blocks.0.attn.to_q", Dotted),
            ),
            (
                "diffusion_model.double_blocks.0.img_attn.qkv",
                (Some(Diffusion), "double_blocks.0.img_attn.qkv", Dotted),
            ),
            (
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
                (
                    Some(ClipL),
                    "text_model.encoder.layers.0.self_attn.q_proj",
                    Dotted,
                ),
            ),
            (
                "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q",
                (Some(T5), "encoder.block.0.layer.0.SelfAttention.q", Dotted),
            ),
            (
                "base_model.model.transformer_blocks.0.attn.to_q",
                (None, "transformer_blocks.0.attn.to_q", Dotted),
            ),
            (
                "double_blocks.0.img_attn.qkv",
                (None, "double_blocks.0.img_attn.qkv", Dotted),
            ),
        ];
        for (k, want) in cases {
            assert_eq!(classify(k), want, "{k}");
        }
    }
}
