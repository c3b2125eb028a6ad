//! Model families: the architectures a manifest's `family` key names, and what every stage
//! needs to know about each without loading it: its role in a pipeline, the image-size
//! multiple it needs, and how its tensors group into placement units.
//!
//! Unit grouping works on canonical tensor names (BFL/ComfyUI layout for FLUX and its VAE,
//! Hugging Face layout for T5 and CLIP, with any `model.diffusion_model.`-style prefix already
//! stripped by [`crate::weights`]' key mapping). Tensors outside any block are "resident":
//! small, used at every step, kept on the compute device.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// FLUX.1 dev/schnell diffusion transformer (BFL layout: `double_blocks.N`, `single_blocks.N`).
    Flux,
    /// The FLUX autoencoder (`ae.safetensors`: 16 latent channels).
    FluxVae,
    /// T5-XXL encoder (`t5xxl_fp16.safetensors`: `encoder.block.N`).
    T5,
    /// CLIP-L text encoder (`clip_l.safetensors`: `text_model.encoder.layers.N`).
    ClipL,
    /// Wan 2.1 text-to-video diffusion transformer (`blocks.N`).
    Wan,
    /// The Wan 2.1 video autoencoder (`wan_2.1_vae.safetensors`).
    WanVae,
    /// umT5-XXL, Wan's text encoder (`encoder.block.N`).
    UmT5,
}

/// What a family does in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Diffusion,
    TextEncoder,
    Vae,
}

pub const ALL: &[Family] = &[
    Family::Flux,
    Family::FluxVae,
    Family::T5,
    Family::ClipL,
    Family::Wan,
    Family::WanVae,
    Family::UmT5,
];

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Family::Flux => "flux",
            Family::FluxVae => "flux-vae",
            Family::T5 => "t5",
            Family::ClipL => "clip-l",
            Family::Wan => "wan",
            Family::WanVae => "wan-vae",
            Family::UmT5 => "umt5",
        }
    }

    pub const fn role(self) -> Role {
        match self {
            Family::Flux | Family::Wan => Role::Diffusion,
            Family::T5 | Family::ClipL | Family::UmT5 => Role::TextEncoder,
            Family::FluxVae | Family::WanVae => Role::Vae,
        }
    }

    /// How messages name the family's model code (`FLUX \`flux\`: …`).
    pub const fn label(self) -> &'static str {
        match self {
            Family::Flux => "FLUX",
            Family::FluxVae => "VAE",
            Family::T5 => "T5",
            Family::ClipL => "CLIP",
            Family::Wan => "Wan",
            Family::WanVae => "Wan VAE",
            Family::UmT5 => "umT5",
        }
    }

    /// For a diffusion family: the families of the text encoders it needs (in the order they
    /// run) and of its VAE. The one pairing table: manifest validation and the executor read
    /// it. `None` for families that are not diffusion models.
    pub const fn companions(self) -> Option<(&'static [Family], Family)> {
        match self {
            Family::Flux => Some((&[Family::ClipL, Family::T5], Family::FluxVae)),
            Family::Wan => Some((&[Family::UmT5], Family::WanVae)),
            _ => None,
        }
    }

    /// Whether the family makes videos (its jobs have `frames`).
    pub const fn is_video(self) -> bool {
        matches!(self, Family::Wan | Family::WanVae)
    }

    /// Image width and height must be multiples of this (VAE factor × patch size).
    pub const fn size_multiple(self) -> u32 {
        match self {
            Family::Flux | Family::FluxVae => 16,
            Family::Wan | Family::WanVae => 16,
            _ => 1,
        }
    }

    /// The placement unit a canonical tensor name belongs to: a block name such as
    /// `double_blocks.3`, or `None` for resident tensors.
    pub fn unit_of(self, name: &str) -> Option<String> {
        let block = |prefix: &str| -> Option<String> {
            let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
            let idx = rest.split('.').next()?;
            idx.parse::<u32>().ok()?;
            Some(format!("{prefix}.{idx}"))
        };
        match self {
            Family::Flux => block("double_blocks").or_else(|| block("single_blocks")),
            Family::T5 | Family::UmT5 => block("encoder.block"),
            Family::ClipL => block("text_model.encoder.layers"),
            Family::Wan => block("blocks"),
            Family::FluxVae | Family::WanVae => ["encoder", "decoder"]
                .into_iter()
                .find(|p| name.strip_prefix(p).is_some_and(|r| r.starts_with('.')))
                .map(str::to_string),
        }
    }

    /// Whether the canonical weight `name` is a linear layer that fp8 compute (`dtype =
    /// "fp8"`) multiplies in e4m3 ([`crate::models::fp8`]): the blocks' projections and MLPs
    /// of FLUX (not the modulations, whose one-row products gain nothing) and of Wan
    /// (`blocks.N.{self_attn,cross_attn}.{q,k,v,o}`, `blocks.N.ffn.{0,2}`; not the
    /// modulation, the norms, the embeddings or the head). Other families have no fp8
    /// compute.
    pub fn fp8_linear(self, name: &str) -> bool {
        const FLUX: &[&str] = &[
            "attn.qkv.weight",
            "attn.proj.weight",
            "mlp.0.weight",
            "mlp.2.weight",
            "linear1.weight",
            "linear2.weight",
        ];
        const WAN: &[&str] = &[
            "self_attn.q.weight",
            "self_attn.k.weight",
            "self_attn.v.weight",
            "self_attn.o.weight",
            "cross_attn.q.weight",
            "cross_attn.k.weight",
            "cross_attn.v.weight",
            "cross_attn.o.weight",
            "ffn.0.weight",
            "ffn.2.weight",
        ];
        match self {
            Family::Flux => {
                let Some(unit) = self.unit_of(name) else {
                    return false;
                };
                let rel = &name[unit.len() + 1..];
                let rel = rel
                    .strip_prefix("img_")
                    .or_else(|| rel.strip_prefix("txt_"))
                    .unwrap_or(rel);
                FLUX.contains(&rel)
                    && (rel.starts_with("linear") == unit.starts_with("single_blocks"))
            }
            Family::Wan => self
                .unit_of(name)
                .is_some_and(|unit| WAN.contains(&&name[unit.len() + 1..])),
            _ => false,
        }
    }

    pub fn parse(s: &str) -> Result<Self, FamilyError> {
        let t = s.trim().to_ascii_lowercase();
        let alias = match t.as_str() {
            "flux1" | "flux.1" | "flux-dev" | "flux-schnell" => Some(Family::Flux),
            "ae" | "flux-ae" => Some(Family::FluxVae),
            "t5xxl" | "t5-xxl" => Some(Family::T5),
            "clip" | "clip_l" | "clipl" => Some(Family::ClipL),
            "umt5xxl" | "umt5-xxl" => Some(Family::UmT5),
            _ => None,
        };
        if let Some(f) = ALL.iter().copied().find(|f| f.name() == t).or(alias) {
            return Ok(f);
        }
        let suggestion = ALL
            .iter()
            .map(|f| (strsim::damerau_levenshtein(&t, f.name()), f.name()))
            .filter(|&(d, _)| d <= 2)
            .min()
            .map(|(_, n)| n.to_string());
        Err(FamilyError {
            name: s.to_string(),
            suggestion,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model family `{name}`{}: expected one of {}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(), names())]
pub struct FamilyError {
    pub name: String,
    pub suggestion: Option<String>,
}

/// `flux, flux-vae, t5, …` for messages.
pub fn names() -> String {
    ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

impl FromStr for Family {
    type Err = FamilyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::parse(s)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Family {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Family {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        Family::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Family {
    fn schema_name() -> Cow<'static, str> {
        "Family".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = ALL.iter().map(|f| f.name()).collect();
        json_schema!({
            "description": "Architecture family of a model component. flux: FLUX.1 dev/schnell transformer; flux-vae: FLUX autoencoder (ae.safetensors); t5: T5-XXL encoder; clip-l: CLIP-L text encoder; wan: Wan 2.1 text-to-video transformer, or one of Wan 2.2 A14B's two experts; wan-vae: its video autoencoder; umt5: umT5-XXL, its text encoder.",
            "type": "string",
            "enum": names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_linears() {
        let f = Family::Flux;
        for yes in [
            "double_blocks.0.img_attn.qkv.weight",
            "double_blocks.18.txt_mlp.2.weight",
            "single_blocks.37.linear1.weight",
            "single_blocks.0.linear2.weight",
        ] {
            assert!(f.fp8_linear(yes), "{yes}");
        }
        for no in [
            "double_blocks.0.img_attn.qkv.bias",
            "double_blocks.0.img_mod.lin.weight",
            "single_blocks.0.modulation.lin.weight",
            "double_blocks.0.linear1.weight",
            "final_layer.linear.weight",
            "img_in.weight",
        ] {
            assert!(!f.fp8_linear(no), "{no}");
        }
        let w = Family::Wan;
        for yes in [
            "blocks.0.self_attn.q.weight",
            "blocks.0.self_attn.o.weight",
            "blocks.39.cross_attn.k.weight",
            "blocks.7.cross_attn.v.weight",
            "blocks.0.ffn.0.weight",
            "blocks.29.ffn.2.weight",
        ] {
            assert!(w.fp8_linear(yes), "{yes}");
        }
        for no in [
            "blocks.0.self_attn.q.bias",
            "blocks.0.self_attn.norm_q.weight",
            "blocks.0.norm3.weight",
            "blocks.0.modulation",
            "head.head.weight",
            "patch_embedding.weight",
            "text_embedding.0.weight",
            "time_embedding.2.weight",
            "time_projection.1.weight",
            "self_attn.q.weight",
        ] {
            assert!(!w.fp8_linear(no), "{no}");
        }
        for f in [Family::T5, Family::UmT5, Family::ClipL, Family::WanVae] {
            assert!(!f.fp8_linear("blocks.0.ffn.0.weight"));
            assert!(!f.fp8_linear("encoder.block.0.layer.1.DenseReluDense.wi_0.weight"));
        }
    }

    #[test]
    fn units_table() {
        let cases = [
            (
                Family::Flux,
                "double_blocks.3.img_attn.qkv.weight",
                Some("double_blocks.3"),
            ),
            (
                Family::Flux,
                "single_blocks.37.linear1.weight",
                Some("single_blocks.37"),
            ),
            (Family::Flux, "img_in.weight", None),
            (Family::Flux, "double_blocks_x.3.w", None),
            (
                Family::T5,
                "encoder.block.23.layer.1.DenseReluDense.wo.weight",
                Some("encoder.block.23"),
            ),
            (Family::T5, "shared.weight", None),
            (
                Family::ClipL,
                "text_model.encoder.layers.11.mlp.fc1.weight",
                Some("text_model.encoder.layers.11"),
            ),
            (
                Family::FluxVae,
                "decoder.up.0.block.0.conv1.weight",
                Some("decoder"),
            ),
            (Family::FluxVae, "encoder.conv_in.weight", Some("encoder")),
            (Family::Wan, "blocks.39.ffn.0.weight", Some("blocks.39")),
            (
                Family::WanVae,
                "decoder.upsamples.3.time_conv.weight",
                Some("decoder"),
            ),
            (
                Family::WanVae,
                "encoder.downsamples.0.residual.0.gamma",
                Some("encoder"),
            ),
            (Family::WanVae, "conv1.weight", None),
            (Family::WanVae, "conv2.bias", None),
        ];
        for (f, n, want) in cases {
            assert_eq!(f.unit_of(n).as_deref(), want, "{f} {n}");
        }
    }

    #[test]
    fn parse_table() {
        assert_eq!(Family::parse("flux"), Ok(Family::Flux));
        assert_eq!(Family::parse("CLIP-L"), Ok(Family::ClipL));
        assert_eq!(Family::parse("t5xxl"), Ok(Family::T5));
        let e = Family::parse("fluxx").unwrap_err();
        assert_eq!(e.suggestion.as_deref(), Some("flux"));
        assert!(e.to_string().contains("expected one of flux, flux-vae"));
        for f in ALL {
            assert_eq!(Family::parse(f.name()), Ok(*f));
        }
    }
}
