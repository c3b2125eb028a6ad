//! Which model family a file holds, and in which key layout, guessed from tensor names alone
//! (no data read). [`detect_family`] is shared by `mgpu inspect` and `inventory::read`.
//!
//! Each family has signature tensor-name endings in each layout it is published in; the first
//! tensor whose name ends with a signature fixes the family, the layout and the prefix before
//! it (`model.diffusion_model.` in ComfyUI full checkpoints, `transformer.` in some diffusers
//! exports, none in BFL's own files). Diffusion models win over text encoders and VAEs when a
//! checkpoint bundles several components. Hidden sizes are not used: mgpu's tiny test models
//! keep the real key layout with tiny dimensions and must be detected like the real ones.

use crate::family::Family;

use super::TensorInfo;

/// How a file names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyLayout {
    /// Black Forest Labs / ComfyUI names (`double_blocks.0.img_attn.qkv.weight`), the original
    /// Wan names (`blocks.0.self_attn.q.weight`), the original VAE names.
    Original,
    /// Hugging Face diffusers names (`transformer_blocks.0.attn.to_q.weight`).
    Diffusers,
    /// Hugging Face transformers names (`encoder.block.0.layer.0.SelfAttention.q.weight`).
    Transformers,
    /// llama.cpp GGUF names (`enc.blk.0.attn_q.weight`).
    LlamaCpp,
}

impl KeyLayout {
    pub const fn name(self) -> &'static str {
        match self {
            KeyLayout::Original => "original",
            KeyLayout::Diffusers => "diffusers",
            KeyLayout::Transformers => "transformers",
            KeyLayout::LlamaCpp => "llama.cpp",
        }
    }
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[schemars(description = "The model family a file holds, its key layout and the name prefix.")]
pub struct Detection {
    pub family: Family,
    pub layout: KeyLayout,
    /// The prefix before the family's own names (`model.diffusion_model.`), or empty.
    pub prefix: String,
    /// The tensor whose name identified the family (for messages: "it has `…`").
    pub key: String,
}

/// (family, layout, name ending that identifies it). Checked in this order.
const SIGNATURES: &[(Family, KeyLayout, &str)] = &[
    (
        Family::Flux,
        KeyLayout::Original,
        "double_blocks.0.img_attn.qkv.weight",
    ),
    (
        Family::Flux,
        KeyLayout::Original,
        "single_blocks.0.linear1.weight",
    ),
    (
        Family::Flux,
        KeyLayout::Diffusers,
        "single_transformer_blocks.0.attn.to_q.weight",
    ),
    (
        Family::Wan,
        KeyLayout::Original,
        "blocks.0.self_attn.q.weight",
    ),
    (
        Family::Wan,
        KeyLayout::Original,
        "blocks.0.cross_attn.k.weight",
    ),
    (
        Family::Wan,
        KeyLayout::Diffusers,
        "blocks.0.attn2.to_k.weight",
    ),
    (
        Family::UmT5,
        KeyLayout::Transformers,
        "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (
        Family::T5,
        KeyLayout::Transformers,
        "encoder.block.0.layer.0.SelfAttention.q.weight",
    ),
    (Family::T5, KeyLayout::LlamaCpp, "enc.blk.0.attn_q.weight"),
    (
        Family::ClipL,
        KeyLayout::Transformers,
        "text_model.encoder.layers.0.self_attn.q_proj.weight",
    ),
    // Before the FLUX VAE: diffusers' Wan VAE also has `decoder.up_blocks.0.resnets.0.conv1`.
    // Only Wan's RMS norms are named `gamma`.
    (
        Family::WanVae,
        KeyLayout::Diffusers,
        "decoder.up_blocks.0.resnets.0.norm1.gamma",
    ),
    (
        Family::FluxVae,
        KeyLayout::Original,
        "decoder.up.0.block.0.conv1.weight",
    ),
    (
        Family::FluxVae,
        KeyLayout::Diffusers,
        "decoder.up_blocks.0.resnets.0.conv1.weight",
    ),
    (
        Family::WanVae,
        KeyLayout::Original,
        "decoder.upsamples.0.residual.0.gamma",
    ),
    // The Wan 2.2 VAE (original names: one level deeper).
    (
        Family::WanVae,
        KeyLayout::Original,
        "decoder.upsamples.0.upsamples.0.residual.0.gamma",
    ),
];

/// The family of a file's tensors, if recognised. Same as `detect(tensors).map(|d| d.family)`.
pub fn detect_family(tensors: &[TensorInfo]) -> Option<Family> {
    detect(tensors).map(|d| d.family)
}

/// Family, layout and prefix of a file's tensors, if recognised.
pub fn detect(tensors: &[TensorInfo]) -> Option<Detection> {
    for &(family, layout, sig) in SIGNATURES {
        let Some(t) = tensors.iter().find(|t| ends_with_component(&t.name, sig)) else {
            continue;
        };
        let prefix = t.name[..t.name.len() - sig.len()].to_string();
        let mut d = Detection {
            family,
            layout,
            prefix,
            key: t.name.clone(),
        };
        refine(&mut d, tensors);
        if accept(&d, tensors) {
            return Some(d);
        }
    }
    None
}

/// `name` ends with `sig` at a component boundary (`x.blocks.0…` but not `xblocks.0…`).
fn ends_with_component(name: &str, sig: &str) -> bool {
    name.strip_suffix(sig)
        .is_some_and(|p| p.is_empty() || p.ends_with('.'))
}

fn has(tensors: &[TensorInfo], prefix: &str, rest: &str) -> Option<usize> {
    let full = format!("{prefix}{rest}");
    tensors.iter().position(|t| t.name == full)
}

/// Distinctions a single signature cannot make.
fn refine(d: &mut Detection, tensors: &[TensorInfo]) {
    // llama.cpp T5 files: umT5 (Wan's encoder) has a 256384-token vocabulary.
    if d.family == Family::T5 && d.layout == KeyLayout::LlamaCpp {
        if let Some(i) = has(tensors, &d.prefix, "token_embd.weight") {
            if tensors[i].shape.first() == Some(&256_384) {
                d.family = Family::UmT5;
            }
        }
    }
}

/// Rejects look-alikes: a VAE whose latent has 4 channels is SD's, not FLUX's (`decoder.conv_in`
/// reads `[C, latent, 3, 3]`), and one whose convolutions are 5-D is a video VAE; CLIP's text
/// model with 32 layers is CLIP-G; diffusers' HunyuanVideo also has
/// `single_transformer_blocks` but patchifies with a conv (`x_embedder.proj`), where FLUX has a
/// linear `x_embedder`. Wan VAE convolutions are 5-D (time × height × width).
fn accept(d: &Detection, tensors: &[TensorInfo]) -> bool {
    match d.family {
        Family::Flux if d.layout == KeyLayout::Diffusers => {
            has(tensors, &d.prefix, "x_embedder.weight").is_some()
        }
        Family::FluxVae => has(tensors, &d.prefix, "decoder.conv_in.weight")
            .map(|i| tensors[i].shape.get(1) != Some(&4) && tensors[i].shape.len() == 4)
            .unwrap_or(true),
        Family::WanVae => ["decoder.conv1.weight", "decoder.conv_in.weight"]
            .iter()
            .filter_map(|n| has(tensors, &d.prefix, n))
            .all(|i| tensors[i].shape.len() == 5),
        // CLIP-G / bigG (SDXL, SD3) share CLIP-L's names: 32 layers of width 1280.
        Family::ClipL => {
            has(
                tensors,
                &d.prefix,
                "text_model.encoder.layers.31.self_attn.q_proj.weight",
            )
            .is_none()
                && has(
                    tensors,
                    &d.prefix,
                    "text_model.encoder.layers.0.self_attn.q_proj.weight",
                )
                .is_none_or(|i| tensors[i].shape.first() != Some(&1280))
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::DType;

    fn infos(names: &[&str]) -> Vec<TensorInfo> {
        names
            .iter()
            .map(|n| TensorInfo {
                name: n.to_string(),
                dtype: DType::F32,
                shape: vec![4, 4],
                offset: 0,
                len: 64,
            })
            .collect()
    }

    #[test]
    fn detection_table() {
        type Case<'a> = (&'a [&'a str], Option<(Family, KeyLayout, &'a str)>);
        let cases: &[Case] = &[
            (
                &["img_in.weight", "double_blocks.0.img_attn.qkv.weight"],
                Some((Family::Flux, KeyLayout::Original, "")),
            ),
            (
                &[
                    "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
                    "vae.decoder.up.0.block.0.conv1.weight",
                ],
                Some((Family::Flux, KeyLayout::Original, "model.diffusion_model.")),
            ),
            (
                &[
                    "x_embedder.weight",
                    "single_transformer_blocks.0.attn.to_q.weight",
                ],
                Some((Family::Flux, KeyLayout::Diffusers, "")),
            ),
            (
                &[
                    "x_embedder.proj.weight",
                    "single_transformer_blocks.0.attn.to_q.weight",
                ],
                None,
            ),
            (
                &["model.diffusion_model.blocks.0.self_attn.q.weight"],
                Some((Family::Wan, KeyLayout::Original, "model.diffusion_model.")),
            ),
            (
                &["blocks.0.attn2.to_k.weight"],
                Some((Family::Wan, KeyLayout::Diffusers, "")),
            ),
            (
                &[
                    "encoder.block.0.layer.0.SelfAttention.q.weight",
                    "shared.weight",
                ],
                Some((Family::T5, KeyLayout::Transformers, "")),
            ),
            (
                &[
                    "encoder.block.0.layer.0.SelfAttention.q.weight",
                    "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
                ],
                Some((Family::UmT5, KeyLayout::Transformers, "")),
            ),
            (
                &["enc.blk.0.attn_q.weight"],
                Some((Family::T5, KeyLayout::LlamaCpp, "")),
            ),
            (
                &["text_model.encoder.layers.0.self_attn.q_proj.weight"],
                Some((Family::ClipL, KeyLayout::Transformers, "")),
            ),
            (
                &[
                    "text_model.encoder.layers.0.self_attn.q_proj.weight",
                    "text_model.encoder.layers.31.self_attn.q_proj.weight",
                ],
                None,
            ),
            (
                &[
                    "decoder.up.0.block.0.conv1.weight",
                    "encoder.conv_in.weight",
                ],
                Some((Family::FluxVae, KeyLayout::Original, "")),
            ),
            (
                &["decoder.upsamples.0.residual.0.gamma"],
                Some((Family::WanVae, KeyLayout::Original, "")),
            ),
            (
                &["vae.decoder.up_blocks.0.resnets.0.norm1.gamma"],
                Some((Family::WanVae, KeyLayout::Diffusers, "vae.")),
            ),
            (
                &["decoder.upsamples.0.upsamples.0.residual.0.gamma"],
                Some((Family::WanVae, KeyLayout::Original, "")),
            ),
            (&["model.layers.0.self_attn.q_proj.weight"], None),
            (&["xdouble_blocks.0.img_attn.qkv.weight"], None),
            (&[], None),
        ];
        for (names, want) in cases {
            let got = detect(&infos(names)).map(|d| (d.family, d.layout, d.prefix));
            let want = want.map(|(f, l, p)| (f, l, p.to_string()));
            assert_eq!(got, want, "{names:?}");
        }
    }

    /// diffusers' Wan VAE has every name the FLUX VAE's diffusers signature looks for; it
    /// must still be the Wan VAE, and a 5-D `decoder.conv_in` is never a FLUX VAE.
    #[test]
    fn diffusers_wan_vae_is_not_flux_vae() {
        let shaped = |v: &[(&str, &[usize])]| -> Vec<TensorInfo> {
            v.iter()
                .map(|(n, s)| TensorInfo {
                    name: n.to_string(),
                    dtype: DType::BF16,
                    shape: s.iter().map(|d| *d as u64).collect(),
                    offset: 0,
                    len: 2 * s.iter().product::<usize>() as u64,
                })
                .collect()
        };
        let wan = [
            ("encoder.conv_in.weight", &[96usize, 3, 3, 3, 3][..]),
            ("decoder.conv_in.weight", &[384, 16, 3, 3, 3]),
            (
                "decoder.up_blocks.0.resnets.0.conv1.weight",
                &[384, 384, 3, 3, 3],
            ),
            ("decoder.up_blocks.0.resnets.0.norm1.gamma", &[384, 1, 1, 1]),
            (
                "decoder.mid_block.attentions.0.to_qkv.weight",
                &[1152, 384, 1, 1],
            ),
            ("post_quant_conv.weight", &[16, 16, 1, 1, 1]),
        ];
        let d = detect(&shaped(&wan)).unwrap();
        assert_eq!((d.family, d.layout), (Family::WanVae, KeyLayout::Diffusers));
        assert_eq!(d.key, "decoder.up_blocks.0.resnets.0.norm1.gamma");
        // Without the Wan-only `gamma`, the 5-D conv still keeps it from being a FLUX VAE.
        let no_gamma: Vec<_> = wan
            .iter()
            .filter(|(n, _)| !n.ends_with("gamma"))
            .copied()
            .collect();
        assert_eq!(detect_family(&shaped(&no_gamma)), None);
        // The FLUX VAE in diffusers' layout is unaffected.
        let flux = [
            ("decoder.conv_in.weight", &[512usize, 16, 3, 3][..]),
            (
                "decoder.up_blocks.0.resnets.0.conv1.weight",
                &[512, 512, 3, 3],
            ),
            ("decoder.up_blocks.0.resnets.0.norm1.weight", &[512]),
        ];
        let d = detect(&shaped(&flux)).unwrap();
        assert_eq!(
            (d.family, d.layout),
            (Family::FluxVae, KeyLayout::Diffusers)
        );
        // A `gamma` name over 4-D convolutions is not a Wan VAE.
        let odd = [
            ("decoder.conv_in.weight", &[512usize, 16, 3, 3][..]),
            ("decoder.up_blocks.0.resnets.0.norm1.gamma", &[512, 1, 1, 1]),
        ];
        assert_ne!(detect_family(&shaped(&odd)), Some(Family::WanVae));
    }

    #[test]
    fn sd_vae_is_not_flux_vae() {
        let mut t = infos(&[
            "decoder.up.0.block.0.conv1.weight",
            "decoder.conv_in.weight",
        ]);
        t[1].shape = vec![512, 4, 3, 3];
        assert_eq!(detect_family(&t), None);
        t[1].shape = vec![512, 16, 3, 3];
        assert_eq!(detect_family(&t), Some(Family::FluxVae));
    }
}
