//! Key layouts: one mapping layer between the tensor names real checkpoint files use and the
//! one canonical layout per family that model code, placement units and LoRA patching see
//! (docs/decisions.md §5).
//!
//! [`canonicalize`] takes a file's tensor list (from a header reader, [`TensorInfo`](crate::weights::TensorInfo)) and a
//! [`Family`], strips wrapping prefixes (`model.diffusion_model.`, `diffusion_model.`, …), sets
//! aside other components of all-in-one checkpoints, detects which layout the names follow
//! (BFL or diffusers for FLUX, LDM or diffusers for its VAE, Hugging Face for T5/CLIP), and
//! returns a [`CanonicalLayout`]: every canonical tensor with its shape, dtype and the source
//! tensors it is made of. The mapping is data, not code: a diffusers FLUX `to_q`/`to_k`/`to_v`
//! trio becomes one [`CanonicalTensor`] `…img_attn.qkv.weight` with three [`Part`]s, each
//! saying which rows it fills; `norm_out.linear` becomes `final_layer.adaLN_modulation.1` with
//! [`Transform::SwapHalvesDim0`]. The executor reads each part's bytes and calls
//! [`CanonicalTensor::assemble`]; a tensor with one part and no transform is passed through.
//!
//! [`ModuleIndex`] answers the reverse question for LoRA files: which canonical tensor (and
//! which rows of it) a module name in any supported spelling addresses.
//!
//! The Wan transformer's and the Wan VAE's canonical layouts are the Wan team's original
//! ones; diffusers' `WanTransformer3DModel` and `AutoencoderKLWan` names are mapped onto them
//! (`wan.rs`, `wan_vae.rs`).

mod canonicalize;
mod flux;
mod index;
mod spec;
mod template;
mod text;
mod vae;
mod wan;
mod wan_vae;

pub use canonicalize::canonicalize;
pub use flux::FluxDims;
pub use index::{Lookup, ModuleIndex, ModuleTarget};
pub use vae::VaeDims;
pub use wan::WanDims;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use serde::Serialize;

use self::canonicalize::{alias_match, foreign_prefix, schema_match, strip_own};
use self::spec::{Norm, Spec};
use super::DType;
use crate::family::Family;

/// A key layout real files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// BFL / ComfyUI FLUX names (`double_blocks.0.img_attn.qkv.weight`). Canonical.
    FluxBfl,
    /// diffusers `FluxTransformer2DModel` names (`transformer_blocks.0.attn.to_q.weight`).
    FluxDiffusers,
    /// LDM autoencoder names of BFL's `ae.safetensors` (`decoder.up.0.block.0.conv1.weight`). Canonical.
    VaeLdm,
    /// diffusers `AutoencoderKL` names (`decoder.up_blocks.0.resnets.0.conv1.weight`).
    VaeDiffusers,
    /// Hugging Face `T5EncoderModel` names. Canonical.
    T5Hf,
    /// Hugging Face `CLIPTextModel` names. Canonical.
    ClipHf,
    /// The Wan team's original names (`blocks.0.self_attn.q.weight`), also ComfyUI's and
    /// city96's. Canonical.
    WanOriginal,
    /// diffusers `WanTransformer3DModel` names (`blocks.0.attn1.to_q.weight`).
    WanDiffusers,
    /// Wan's own VAE names (`wan/modules/vae.py`, ComfyUI's `wan_2.1_vae.safetensors`:
    /// `decoder.upsamples.0.residual.0.gamma`). Canonical.
    WanVaeOriginal,
    /// diffusers `AutoencoderKLWan` names (`decoder.up_blocks.0.resnets.0.norm1.gamma`).
    WanVaeDiffusers,
}

impl Layout {
    pub const fn name(self) -> &'static str {
        match self {
            Layout::FluxBfl => "bfl",
            Layout::FluxDiffusers
            | Layout::VaeDiffusers
            | Layout::WanDiffusers
            | Layout::WanVaeDiffusers => "diffusers",
            Layout::WanOriginal | Layout::WanVaeOriginal => "original",
            Layout::VaeLdm => "ldm",
            Layout::T5Hf | Layout::ClipHf => "hf",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happens to the assembled rows before model code sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transform {
    None,
    /// Exchange the first and second half of dim 0 (diffusers' (scale, shift) → BFL's
    /// (shift, scale) in the final modulation).
    SwapHalvesDim0,
}

/// One source tensor of a canonical tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// The tensor's name as stored in the file (prefix included).
    pub source: String,
    /// Where the source's rows land along dim 0 of the canonical tensor: parts are
    /// concatenated in order, then [`CanonicalTensor::transform`] applies to the whole.
    pub rows: Range<u64>,
}

/// A tensor in the canonical layout, and how to build it from the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanonicalTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: DType,
    pub parts: Vec<Part>,
    pub transform: Transform,
    /// ComfyUI "scaled fp8": the stored name of the scalar `scale_weight` this tensor is
    /// multiplied by when dequantised (`w = fp8 · scale`).
    pub scale: Option<String>,
}

impl CanonicalTensor {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Size of dim 0 (1 for a scalar).
    pub fn rows(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Product of the dims after the first: the width a LoRA's `down` must have.
    pub fn cols(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }

    /// Bytes of the stored data (`None` for a shape its dtype cannot hold).
    pub fn bytes(&self) -> Option<u64> {
        self.dtype.storage_bytes(self.numel())
    }

    /// True when the canonical tensor is one source tensor's bytes unchanged (the reader may
    /// hand them over without a copy; only the name, and for 1×1 convs the shape, differ).
    pub fn is_passthrough(&self) -> bool {
        self.parts.len() == 1 && self.transform == Transform::None
    }

    /// Builds the canonical tensor's bytes from its parts' bytes (given in `parts` order).
    pub fn assemble(&self, parts: &[&[u8]]) -> Result<Vec<u8>, KeymapError> {
        let bad = |message: String| KeymapError::Assemble {
            tensor: self.name.clone(),
            message,
        };
        if parts.len() != self.parts.len() {
            return Err(bad(format!(
                "{} parts given, {} expected",
                parts.len(),
                self.parts.len()
            )));
        }
        let row_bytes = self.dtype.storage_bytes(self.cols()).ok_or_else(|| {
            bad(format!(
                "a row of {} {} values is not a whole number of blocks",
                self.cols(),
                self.dtype
            ))
        })?;
        let total = self.bytes().ok_or_else(|| bad("shape too large".into()))?;
        let mut out = Vec::with_capacity(total as usize);
        for (p, bytes) in self.parts.iter().zip(parts) {
            let want = (p.rows.end - p.rows.start) * row_bytes;
            if bytes.len() as u64 != want {
                return Err(bad(format!(
                    "part `{}` has {} bytes, {want} expected",
                    p.source,
                    bytes.len()
                )));
            }
            out.extend_from_slice(bytes);
        }
        if out.len() as u64 != total {
            return Err(bad(format!(
                "parts hold {} bytes, the tensor needs {total}",
                out.len()
            )));
        }
        if self.transform == Transform::SwapHalvesDim0 {
            let rows = self.rows();
            if !rows.is_multiple_of(2) {
                return Err(bad(format!("cannot swap the halves of {rows} rows")));
            }
            out.rotate_left((rows / 2 * row_bytes) as usize);
        }
        Ok(out)
    }
}

/// A tensor of the file that is deliberately not part of the canonical layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    pub name: String,
    pub reason: String,
}

/// A file's tensors in their family's canonical layout.
#[derive(Debug, Clone, Serialize)]
pub struct CanonicalLayout {
    pub family: Family,
    /// The layout the file's names follow.
    pub layout: Layout,
    /// Prefixes that were stripped (empty when names were bare).
    pub prefixes: Vec<String>,
    /// Canonical tensors, in natural name order (block 2 before block 10).
    pub tensors: Vec<CanonicalTensor>,
    pub ignored: Vec<Ignored>,
    /// The dtype of ComfyUI's `scaled_fp8` marker tensor, when the file has one.
    pub scaled_fp8: Option<DType>,
    #[serde(skip)]
    index: HashMap<String, usize>,
}

impl CanonicalLayout {
    pub fn get(&self, name: &str) -> Option<&CanonicalTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// One line: `flux, diffusers layout (prefix `transformer.`), 1160 → 780 tensors`.
    pub fn describe(&self) -> String {
        let sources: usize = self.tensors.iter().map(|t| t.parts.len()).sum();
        let prefix = match self.prefixes.as_slice() {
            [] => String::new(),
            ps => format!(
                " (prefix {})",
                ps.iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "{}, {} layout{prefix}, {sources} → {} tensors",
            self.family,
            self.layout,
            self.tensors.len()
        )
    }
}

/// A name the mapping does not know, with the closest known name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownName {
    pub name: String,
    pub suggestion: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeymapError {
    #[error("no {family} tensors found{}", others_note(others))]
    NoTensors { family: Family, others: Vec<String> },
    #[error("{family}: the names mix the {a} layout (e.g. `{a_example}`) and the {b} layout (e.g. `{b_example}`); a file must use one layout")]
    MixedLayouts {
        family: Family,
        a: Layout,
        a_example: String,
        b: Layout,
        b_example: String,
    },
    #[error("{}", render_mismatch(*family, *layout, unknown, missing))]
    Mismatch {
        family: Family,
        layout: Layout,
        unknown: Vec<UnknownName>,
        missing: Vec<String>,
    },
    #[error("{family} ({layout} layout): `{first}` and `{second}` both map to `{canonical}`")]
    Duplicate {
        family: Family,
        layout: Layout,
        canonical: String,
        first: String,
        second: String,
    },
    #[error("{family} ({layout} layout): tensor `{tensor}`: {message}")]
    Shape {
        family: Family,
        layout: Layout,
        tensor: String,
        message: String,
    },
    #[error("tensor `{tensor}`: {message}")]
    Assemble { tensor: String, message: String },
    /// A variant of the family that mgpu does not support (a family's `unsupported` hook;
    /// none refuses one today — the Wan 2.2 VAE was, until it was implemented).
    #[error("{family}: {message}")]
    Unsupported { family: Family, message: String },
}

fn others_note(others: &[String]) -> String {
    match others {
        [] => " (the file is empty)".into(),
        o => format!(
            "; the file holds other components' tensors, e.g. {}",
            o.iter()
                .take(3)
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

const SHOW: usize = 10;

fn render_mismatch(
    family: Family,
    layout: Layout,
    unknown: &[UnknownName],
    missing: &[String],
) -> String {
    let mut s = format!("{family} ({layout} layout): ");
    let mut parts = Vec::new();
    if !unknown.is_empty() {
        parts.push(format!(
            "{} unknown tensor{}",
            unknown.len(),
            if unknown.len() == 1 { "" } else { "s" }
        ));
    }
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing tensor{}",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" }
        ));
    }
    s.push_str(&parts.join(" and "));
    for u in unknown.iter().take(SHOW) {
        s.push_str(&format!("\n  unknown: `{}`", u.name));
        if let Some(sug) = &u.suggestion {
            s.push_str(&format!(" (did you mean `{sug}`?)"));
        }
        if u.name.ends_with(".comfy_quant") || u.name.ends_with(".weight_scale") {
            s.push_str(" — ComfyUI mixed-precision quantisation is not supported; use a bf16/fp16/fp8 or GGUF file");
        }
    }
    if unknown.len() > SHOW {
        s.push_str(&format!("\n  … and {} more unknown", unknown.len() - SHOW));
    }
    for m in missing.iter().take(SHOW) {
        s.push_str(&format!("\n  missing: {m}"));
    }
    if missing.len() > SHOW {
        s.push_str(&format!("\n  … and {} more missing", missing.len() - SHOW));
    }
    s
}

pub(crate) fn spec_for(family: Family) -> &'static Spec {
    static SPECS: OnceLock<Vec<Spec>> = OnceLock::new();
    let specs = SPECS.get_or_init(|| {
        crate::family::ALL
            .iter()
            .map(|&f| match f {
                Family::Flux => flux::spec(),
                Family::FluxVae => vae::spec(),
                Family::T5 | Family::UmT5 => text::t5_spec(f),
                Family::ClipL => text::clip_spec(),
                Family::Wan => wan::spec(),
                Family::WanVae => wan_vae::spec(),
            })
            .collect()
    });
    specs
        .iter()
        .find(|s| s.family == family)
        .expect("every family has a spec")
}

/// The canonical name of one raw tensor name (prefix stripped, layout mapped), or `None`
/// when the family's mapping does not know it. Parts of fused tensors give the fused name.
pub fn canonical_name(family: Family, raw: &str) -> Option<String> {
    let spec = spec_for(family);
    let (stripped, prefix) = strip_own(spec, raw);
    if prefix.is_none() && foreign_prefix(spec, raw).is_some() {
        return None;
    }
    let name = match (spec.normalize)(stripped, &HashSet::new()) {
        Norm::Keep(n) => n,
        Norm::Ignore(_) => return None,
    };
    let Some(schema) = &spec.schema else {
        return Some(name);
    };
    if schema_match(schema, &name).is_some() {
        return Some(name);
    }
    let (_, rules) = spec.alias.as_ref()?;
    // Reversed indices need the whole name list (see `canonicalize`): not known from one name.
    alias_match(rules, &name, None)?.1
}

/// The placement unit (`double_blocks.3`, `encoder.block.7`, `decoder`) a raw tensor name
/// belongs to, in canonical naming; `None` for resident tensors and unknown names.
pub fn canonical_unit_name(family: Family, raw: &str) -> Option<String> {
    if let Some(c) = canonical_name(family, raw) {
        return family.unit_of(&c);
    }
    // A diffusers VAE decoder name whose level cannot be reversed (FLUX) or flattened (Wan)
    // without the full list still belongs to the `decoder` unit: the unit is the first segment
    // in both layouts.
    if family == Family::WanVae {
        let (stripped, _) = strip_own(spec_for(family), raw);
        if stripped.starts_with("decoder.up_blocks.") {
            return family.unit_of(stripped);
        }
    }
    if family == Family::FluxVae {
        let spec = spec_for(family);
        let (stripped, _) = strip_own(spec, raw);
        let (_, rules) = spec.alias.as_ref()?;
        alias_match(rules, stripped, None)?;
        return family.unit_of(stripped);
    }
    None
}

/// The closest of `known` to `name` by edit distance, if close enough to be a likely typo.
pub(crate) fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    let limit = (name.len() / 6).max(2);
    known
        .filter(|k| *k != name)
        .map(|k| (strsim::levenshtein(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k.to_string())
}

/// Orders names segment by segment, numeric segments by value (`blocks.2` < `blocks.10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    _ => p.cmp(q),
                };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
