//! Key layouts: one mapping layer between the tensor names real checkpoint files use and the
//! one canonical layout per family that model code, placement units and LoRA patching see
//! (docs/decisions.md §5).
//!
//! [`canonicalize`] takes a file's tensor list (from a header reader, [`TensorInfo`]) and a
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
//! Families not yet run (Wan, Wan VAE) are mapped as they are, prefixes stripped.

mod flux;
mod index;
mod spec;
mod template;
mod text;
mod vae;

pub use flux::FluxDims;
pub use index::{Lookup, ModuleIndex, ModuleTarget};
pub use vae::VaeDims;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use serde::Serialize;

use self::spec::{Entry, Need, Norm, Rule, Slot, Spec};
use super::{DType, TensorInfo};
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
    /// Names taken as they are (families not yet run).
    Native,
}

impl Layout {
    pub const fn name(self) -> &'static str {
        match self {
            Layout::FluxBfl => "bfl",
            Layout::FluxDiffusers | Layout::VaeDiffusers => "diffusers",
            Layout::VaeLdm => "ldm",
            Layout::T5Hf | Layout::ClipHf => "hf",
            Layout::Native => "native",
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
            if rows % 2 != 0 {
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
                Family::Wan => native_spec(f, vec!["model.diffusion_model.", "diffusion_model."]),
                Family::WanVae => native_spec(f, vec!["first_stage_model.", "vae."]),
            })
            .collect()
    });
    specs
        .iter()
        .find(|s| s.family == family)
        .expect("every family has a spec")
}

fn native_spec(family: Family, own_prefixes: Vec<&'static str>) -> Spec {
    Spec {
        family,
        canonical_layout: Layout::Native,
        own_prefixes,
        foreign_prefixes: vec![],
        schema: None,
        alias: None,
        normalize: spec::keep,
        rev_count: spec::no_rev,
    }
}

/// Strips the longest own prefix: (rest, prefix).
fn strip_own<'a>(spec: &Spec, name: &'a str) -> (&'a str, Option<&'static str>) {
    spec.own_prefixes
        .iter()
        .filter(|p| name.starts_with(**p) && name.len() > p.len())
        .max_by_key(|p| p.len())
        .map_or((name, None), |p| (&name[p.len()..], Some(*p)))
}

fn foreign_prefix(spec: &Spec, name: &str) -> Option<&'static str> {
    spec.foreign_prefixes
        .iter()
        .copied()
        .find(|p| name.starts_with(p))
}

/// `module.param` → (module, param).
fn split_param(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('.')
}

fn schema_match<'s>(schema: &'s [Entry], name: &str) -> Option<(&'s Entry, template::Caps)> {
    let (module, param) = split_param(name)?;
    schema
        .iter()
        .filter(|e| e.params.contains(&param))
        .find_map(|e| template::matches(&e.module, module).map(|c| (e, c)))
}

/// An alias name's rule and canonical name (`None` when the rule needs a reversed-index count
/// that is unknown).
fn alias_match<'s>(
    rules: &'s [Rule],
    name: &str,
    n_rev: Option<u64>,
) -> Option<(&'s Rule, Option<String>)> {
    let (module, param) = split_param(name)?;
    rules.iter().find_map(|r| {
        let (_, cparam) = r.params.iter().find(|(a, _)| *a == param)?;
        let caps = template::matches(&r.alias, module)?;
        Some((
            r,
            template::fill(&r.canonical, &caps, n_rev).map(|m| format!("{m}.{cparam}")),
        ))
    })
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
    // A diffusers VAE decoder name whose level cannot be reversed without the full list still
    // belongs to the `decoder` unit: the unit is the first segment in both layouts.
    if family == Family::FluxVae {
        let spec = spec_for(family);
        let (stripped, _) = strip_own(spec, raw);
        let (_, rules) = spec.alias.as_ref()?;
        alias_match(rules, stripped, None)?;
        return family.unit_of(stripped);
    }
    None
}

/// Maps a file's tensors onto `family`'s canonical layout; see the module docs.
pub fn canonicalize(
    family: Family,
    tensors: &[TensorInfo],
) -> Result<CanonicalLayout, KeymapError> {
    let spec = spec_for(family);
    let mut ignored = Vec::new();
    let mut prefixes = BTreeSet::new();
    let mut scaled_fp8 = None;
    let mut own: Vec<(&str, &TensorInfo)> = Vec::new();
    let mut scale_of: Vec<(&str, &TensorInfo)> = Vec::new();
    for t in tensors {
        let (stripped, prefix) = strip_own(spec, &t.name);
        match prefix {
            Some(p) => {
                prefixes.insert(p.to_string());
            }
            None => {
                if let Some(p) = foreign_prefix(spec, &t.name) {
                    ignored.push(Ignored {
                        name: t.name.clone(),
                        reason: format!("another component of an all-in-one checkpoint (`{p}`)"),
                    });
                    continue;
                }
            }
        }
        if stripped == "scaled_fp8" {
            scaled_fp8 = Some(t.dtype);
            ignored.push(Ignored {
                name: t.name.clone(),
                reason: "ComfyUI scaled-fp8 marker".into(),
            });
        } else if let Some(base) = stripped.strip_suffix(".scale_weight") {
            scale_of.push((base, t));
        } else if stripped.ends_with(".scale_input") {
            ignored.push(Ignored {
                name: t.name.clone(),
                reason: "fp8 activation scale (used by fp8 matmuls only, not to dequantise)".into(),
            });
        } else {
            own.push((stripped, t));
        }
    }
    if own.is_empty() {
        return Err(KeymapError::NoTensors {
            family,
            others: ignored.into_iter().map(|i| i.name).collect(),
        });
    }

    let all: HashSet<&str> = own.iter().map(|(n, _)| *n).collect();
    let mut kept: Vec<(String, &TensorInfo)> = Vec::with_capacity(own.len());
    for (name, t) in own {
        match (spec.normalize)(name, &all) {
            Norm::Keep(n) => kept.push((n, t)),
            Norm::Ignore(reason) => ignored.push(Ignored {
                name: t.name.clone(),
                reason: reason.into(),
            }),
        }
    }
    let mut scales: HashMap<String, &TensorInfo> = HashMap::new();
    for (base, t) in scale_of {
        let weight = format!("{base}.weight");
        let weight = match (spec.normalize)(&weight, &all) {
            Norm::Keep(n) => n,
            Norm::Ignore(_) => weight,
        };
        scales.insert(weight, t);
    }

    let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    let n_rev = (spec.rev_count)(&names);
    let mut unknown_raw: Vec<&TensorInfo> = Vec::new();
    // (canonical name, slot, stripped source name, source)
    let mut mapped: Vec<(String, Slot, &str, &TensorInfo)> = Vec::new();
    let layout = match (&spec.schema, &spec.alias) {
        (None, _) => {
            for (n, t) in &kept {
                mapped.push((n.clone(), Slot::Whole, n.as_str(), t));
            }
            spec.canonical_layout
        }
        (Some(schema), alias) => {
            let mut canon_only: Option<&str> = None;
            let mut alias_only: Option<&str> = None;
            let mut classified = Vec::with_capacity(kept.len());
            for (n, t) in &kept {
                let canon = schema_match(schema, n).is_some();
                let al = alias
                    .as_ref()
                    .and_then(|(_, rules)| alias_match(rules, n, n_rev));
                match (canon, &al) {
                    (true, None) => {
                        canon_only.get_or_insert(&t.name);
                    }
                    (false, Some(_)) => {
                        alias_only.get_or_insert(&t.name);
                    }
                    _ => {}
                }
                classified.push((n, *t, canon, al));
            }
            let use_alias = alias_only.is_some();
            if let (Some(c), Some(a), Some((alias_layout, _))) = (canon_only, alias_only, alias) {
                return Err(KeymapError::MixedLayouts {
                    family,
                    a: spec.canonical_layout,
                    a_example: c.to_string(),
                    b: *alias_layout,
                    b_example: a.to_string(),
                });
            }
            for (n, t, canon, al) in classified {
                match (use_alias, canon, al) {
                    (true, _, Some((rule, Some(c)))) => mapped.push((c, rule.slot, n.as_str(), t)),
                    (false, true, _) => mapped.push((n.clone(), Slot::Whole, n.as_str(), t)),
                    _ => unknown_raw.push(t),
                }
            }
            if use_alias {
                alias
                    .as_ref()
                    .map(|(l, _)| *l)
                    .unwrap_or(spec.canonical_layout)
            } else {
                spec.canonical_layout
            }
        }
    };

    // Group sources by canonical name.
    let mut groups: BTreeMap<String, Vec<(Slot, &str, &TensorInfo)>> = BTreeMap::new();
    for (c, slot, n, t) in mapped {
        groups.entry(c).or_default().push((slot, n, t));
    }
    let mut missing = Vec::new();
    // Fused tensors with some parts present: their absent parts are reported, not the whole.
    let mut partial: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(groups.len());
    for (name, mut srcs) in groups {
        let shape_err = |tensor: &str, message: String| KeymapError::Shape {
            family,
            layout,
            tensor: tensor.to_string(),
            message,
        };
        let slot = srcs[0].0;
        let (parts, shape, transform) = match slot {
            Slot::Part { split, .. } => {
                srcs.sort_by_key(|(s, _, _)| match s {
                    Slot::Part { index, .. } => *index,
                    _ => u8::MAX,
                });
                for w in srcs.windows(2) {
                    if w[0].0 == w[1].0 {
                        return Err(KeymapError::Duplicate {
                            family,
                            layout,
                            canonical: name,
                            first: w[0].2.name.clone(),
                            second: w[1].2.name.clone(),
                        });
                    }
                }
                let have: Vec<u8> = srcs
                    .iter()
                    .filter_map(|(s, _, _)| match s {
                        Slot::Part { index, .. } => Some(*index),
                        _ => None,
                    })
                    .collect();
                if have.len() != srcs.len() {
                    return Err(shape_err(&name, "mixes whole and partial sources".into()));
                }
                let absent: Vec<u8> = (0..split.count() as u8)
                    .filter(|k| !have.contains(k))
                    .collect();
                if !absent.is_empty() {
                    partial.insert(name.clone());
                    for k in absent {
                        let alias = alias_name_for(spec, &name, k, n_rev);
                        missing.push(format!(
                            "`{alias}` (part {} of {} of `{name}`)",
                            k + 1,
                            split.count()
                        ));
                    }
                    continue;
                }
                let first = srcs[0].2;
                if first.shape.is_empty() {
                    return Err(shape_err(
                        &first.name,
                        "a part of a fused tensor cannot be a scalar".into(),
                    ));
                }
                let trailing = &first.shape[1..];
                let mut parts = Vec::with_capacity(srcs.len());
                let mut row = 0u64;
                for (_, _, t) in &srcs {
                    if t.dtype != first.dtype {
                        return Err(shape_err(
                            &t.name,
                            format!(
                                "is {} but `{}` is {}: parts of `{name}` must share a dtype",
                                t.dtype, first.name, first.dtype
                            ),
                        ));
                    }
                    if t.shape.len() != first.shape.len() || &t.shape[1..] != trailing {
                        return Err(shape_err(
                            &t.name,
                            format!("has shape {:?} but `{}` has {:?}: parts of `{name}` must agree after dim 0", t.shape, first.name, first.shape),
                        ));
                    }
                    parts.push(Part {
                        source: t.name.clone(),
                        rows: row..row + t.shape[0],
                    });
                    row += t.shape[0];
                }
                // The split's "input width" of a bias is the size of its q part.
                let cols: u64 = if trailing.is_empty() {
                    parts[0].rows.end - parts[0].rows.start
                } else {
                    trailing.iter().product()
                };
                for (k, p) in parts.iter().enumerate() {
                    if split.range(k, row, cols) != Some(p.rows.clone()) {
                        let sizes: Vec<u64> =
                            parts.iter().map(|p| p.rows.end - p.rows.start).collect();
                        let want = match split {
                            spec::Split::Thirds => "three equal parts (q, k, v)".to_string(),
                            spec::Split::Hidden3ThenRest => {
                                format!("q, k, v of {cols} rows each (the hidden width) and then the MLP rows")
                            }
                        };
                        return Err(shape_err(
                            &name,
                            format!("parts have {sizes:?} rows; a fused `{name}` needs {want}"),
                        ));
                    }
                }
                let mut shape = vec![row];
                shape.extend_from_slice(trailing);
                (parts, shape, Transform::None)
            }
            _ => {
                if srcs.len() > 1 {
                    return Err(KeymapError::Duplicate {
                        family,
                        layout,
                        canonical: name,
                        first: srcs[0].2.name.clone(),
                        second: srcs[1].2.name.clone(),
                    });
                }
                let t = srcs[0].2;
                let rows = t.shape.first().copied().unwrap_or(1);
                let part = Part {
                    source: t.name.clone(),
                    rows: 0..rows,
                };
                match slot {
                    Slot::SwapHalves => {
                        if t.shape.is_empty() || rows % 2 != 0 {
                            return Err(shape_err(
                                &t.name,
                                format!(
                                    "shape {:?}: the shift/scale halves need an even dim 0",
                                    t.shape
                                ),
                            ));
                        }
                        (vec![part], t.shape.clone(), Transform::SwapHalvesDim0)
                    }
                    Slot::LinearAsConv if t.shape.len() == 2 => {
                        let mut s = t.shape.clone();
                        s.extend([1, 1]);
                        (vec![part], s, Transform::None)
                    }
                    _ => (vec![part], t.shape.clone(), Transform::None),
                }
            }
        };
        let dtype = srcs[0].2.dtype;
        if parts.len() > 1
            && dtype.is_quantized()
            && dtype.storage_bytes(shape[1..].iter().product()).is_none()
        {
            return Err(shape_err(
                &name,
                format!("{dtype} rows are not whole blocks, so the parts cannot be joined"),
            ));
        }
        let mut scale = None;
        for (_, n, _) in &srcs {
            if let Some(s) = scales.remove(*n) {
                if srcs.len() > 1 {
                    return Err(shape_err(
                        &s.name,
                        format!("scaled-fp8 parts of the fused `{name}` would need one scale each; only whole tensors can be scaled"),
                    ));
                }
                if s.numel() != 1 || !matches!(s.dtype, DType::F32 | DType::F16 | DType::BF16) {
                    return Err(shape_err(
                        &s.name,
                        format!("scale of shape {:?} ({}): only one f32/f16/bf16 number per tensor (tensor-wise scaled fp8) is supported", s.shape, s.dtype),
                    ));
                }
                scale = Some(s.name.clone());
            }
        }
        out.push(CanonicalTensor {
            name,
            shape,
            dtype,
            parts,
            transform,
            scale,
        });
    }
    let mut unknown: Vec<UnknownName> = unknown_raw
        .into_iter()
        .map(|t| UnknownName {
            name: t.name.clone(),
            suggestion: None,
        })
        .collect();
    let mut leftover: Vec<&TensorInfo> = scales.into_values().collect();
    leftover.sort_by(|a, b| a.name.cmp(&b.name));
    unknown.extend(leftover.into_iter().map(|t| UnknownName {
        name: t.name.clone(),
        suggestion: None,
    }));

    out.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    if let Some(schema) = &spec.schema {
        let present: HashSet<&str> = out
            .iter()
            .map(|t| t.name.as_str())
            .chain(partial.iter().map(String::as_str))
            .collect();
        let alias_layout = layout != spec.canonical_layout;
        missing.extend(
            missing_required(schema, &present)
                .into_iter()
                .map(|m| describe_missing(spec, alias_layout, &m, n_rev)),
        );
    }
    if !unknown.is_empty() || !missing.is_empty() {
        let known: Vec<String> = out
            .iter()
            .map(|t| t.name.clone())
            .chain(
                out.iter()
                    .flat_map(|t| t.parts.iter().map(|p| p.source.clone())),
            )
            .collect();
        for u in unknown.iter_mut().take(50) {
            u.suggestion = suggest(&u.name, known.iter().map(String::as_str));
        }
        return Err(KeymapError::Mismatch {
            family,
            layout,
            unknown,
            missing,
        });
    }
    let index = out
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    Ok(CanonicalLayout {
        family,
        layout,
        prefixes: prefixes.into_iter().collect(),
        tensors: out,
        ignored,
        scaled_fp8,
        index,
    })
}

/// The alias-layout name of part `k` of canonical tensor `name` (for messages).
fn alias_name_for(spec: &Spec, name: &str, k: u8, n_rev: Option<u64>) -> String {
    let Some((module, param)) = split_param(name) else {
        return name.to_string();
    };
    spec.alias
        .iter()
        .flat_map(|(_, rules)| rules.iter())
        .filter(|r| matches!(r.slot, Slot::Part { index, .. } if index == k))
        .find_map(|r| {
            let (aparam, _) = r.params.iter().find(|(_, c)| *c == param)?;
            let caps = template::matches(&r.canonical, module)?;
            Some(format!(
                "{}.{aparam}",
                template::fill(&r.alias, &caps, n_rev)?
            ))
        })
        .unwrap_or_else(|| format!("{name}[{k}]"))
}

/// A missing canonical tensor, in the file's own layout when that is the alternative one.
fn describe_missing(spec: &Spec, alias_layout: bool, name: &str, n_rev: Option<u64>) -> String {
    let aliases: Vec<String> = match (&spec.alias, split_param(name)) {
        (Some((_, rules)), Some((module, param))) if alias_layout => rules
            .iter()
            .filter_map(|r| {
                let (aparam, _) = r.params.iter().find(|(_, c)| *c == param)?;
                let caps = template::matches(&r.canonical, module)?;
                Some(format!(
                    "`{}.{aparam}`",
                    template::fill(&r.alias, &caps, n_rev)?
                ))
            })
            .collect(),
        _ => Vec::new(),
    };
    match aliases.as_slice() {
        [] => format!("`{name}`"),
        [one] => format!("{one} (canonical `{name}`)"),
        many => format!("{} (the parts of canonical `{name}`)", many.join(", ")),
    }
}

/// Required schema names absent from `present`, for the index ranges `present` shows.
fn missing_required(schema: &[Entry], present: &HashSet<&str>) -> Vec<String> {
    // Largest index seen per scope (`double_blocks.{i}`, `encoder.down.2.block.{j}`).
    let mut scopes: HashMap<String, u64> = HashMap::new();
    for name in present {
        if let Some((e, caps)) = schema_match(schema, name) {
            for (k, ph) in template::placeholders(&e.module).into_iter().enumerate() {
                if let (Some((s, _)), Some(v)) =
                    (template::scope(&e.module, &caps, k), caps.get(ph))
                {
                    let m = scopes.entry(s).or_insert(v);
                    *m = (*m).max(v);
                }
            }
        }
    }
    let mut missing = Vec::new();
    for e in schema.iter().filter(|e| e.need == Need::Required) {
        let phs = template::placeholders(&e.module);
        let mut instances = vec![template::Caps::default()];
        for (k, ph) in phs.iter().enumerate() {
            let mut next = Vec::new();
            for caps in &instances {
                let Some((s, _)) = template::scope(&e.module, caps, k) else {
                    continue;
                };
                if let Some(&max) = scopes.get(&s) {
                    next.extend((0..=max).map(|v| template::with(caps, ph, v)));
                }
            }
            instances = next;
        }
        for caps in instances {
            let Some(module) = template::fill(&e.module, &caps, None) else {
                continue;
            };
            for p in e.params {
                let n = format!("{module}.{p}");
                if !present.contains(n.as_str()) {
                    missing.push(n);
                }
            }
        }
    }
    missing.sort_by(|a, b| natural_cmp(a, b));
    missing
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
