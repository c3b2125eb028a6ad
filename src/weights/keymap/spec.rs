//! The data each family's key-layout table is made of: the canonical schema (which tensors a
//! complete model has), the rules that map an alternative layout's names onto it, and the
//! prefixes that wrap the names in real files. The tables themselves live in `flux.rs`,
//! `vae.rs`, `wan_vae.rs` and `text.rs`; the engine that applies them is in `mod.rs`.

use std::collections::HashSet;
use std::ops::Range;

use super::Layout;
use crate::family::Family;
use crate::weights::TensorInfo;

/// Whether a schema entry must be present in a complete model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Required,
    Optional,
}

/// One module of the canonical schema: `module.param` for each param.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub module: String,
    pub params: &'static [&'static str],
    pub need: Need,
}

pub(crate) fn entry(
    module: impl Into<String>,
    params: &'static [&'static str],
    need: Need,
) -> Entry {
    Entry {
        module: module.into(),
        params,
        need,
    }
}

pub(crate) const WB: &[&str] = &["weight", "bias"];
pub(crate) const W: &[&str] = &["weight"];
pub(crate) const SCALE: &[&str] = &["scale"];

/// Alias param → canonical param, for a linear/conv module (both kept) and an RMS norm whose
/// diffusers `weight` is BFL's `scale`.
pub(crate) const LIN: &[(&str, &str)] = &[("weight", "weight"), ("bias", "bias")];
pub(crate) const NORM: &[(&str, &str)] = &[("weight", "scale")];

/// How the row sizes of a fused tensor's parts follow from its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    /// q, k, v: three equal thirds (`double_blocks.N.*_attn.qkv`).
    Thirds,
    /// q, k, v of `hidden` rows each (hidden = the input width), then the rest (the MLP input
    /// projection): FLUX single blocks' `linear1`.
    Hidden3ThenRest,
}

impl Split {
    pub(crate) fn count(self) -> usize {
        match self {
            Split::Thirds => 3,
            Split::Hidden3ThenRest => 4,
        }
    }

    /// Row range of part `k` in a fused tensor of `rows` × `cols` (cols = product of the
    /// trailing dims), or `None` if the shape cannot be split this way.
    pub(crate) fn range(self, k: usize, rows: u64, cols: u64) -> Option<Range<u64>> {
        match self {
            Split::Thirds => {
                if !rows.is_multiple_of(3) || k >= 3 {
                    return None;
                }
                let h = rows / 3;
                Some(h * k as u64..h * (k as u64 + 1))
            }
            Split::Hidden3ThenRest => {
                let h = cols;
                if rows <= 3 * h {
                    return None;
                }
                match k {
                    0..=2 => Some(h * k as u64..h * (k as u64 + 1)),
                    3 => Some(3 * h..rows),
                    _ => None,
                }
            }
        }
    }
}

/// How an alias tensor lands in its canonical tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The same tensor under another name.
    Whole,
    /// The same shape with the two halves of dim 0 exchanged (diffusers' `norm_out.linear` is
    /// (scale, shift); BFL's `final_layer.adaLN_modulation.1` is (shift, scale)).
    SwapHalves,
    /// Part `index` of a tensor fused along dim 0.
    Part { index: u8, split: Split },
    /// A linear `[out, in]` that the canonical layout stores as a 1×1 conv `[out, in, 1, 1]`
    /// (same bytes, two more dims).
    LinearAsConv,
}

/// Maps the module `alias` of the alternative layout to the canonical module `canonical`.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub alias: String,
    pub canonical: String,
    pub slot: Slot,
    pub params: &'static [(&'static str, &'static str)],
}

pub(crate) fn rule(
    alias: impl Into<String>,
    canonical: impl Into<String>,
    slot: Slot,
    params: &'static [(&'static str, &'static str)],
) -> Rule {
    Rule {
        alias: alias.into(),
        canonical: canonical.into(),
        slot,
        params,
    }
}

/// What a family-specific normalisation does with a name (after prefix stripping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Norm {
    /// Use this name (possibly rewritten).
    Keep(String),
    /// Set the tensor aside, for this reason (a buffer, a tied duplicate, …).
    Ignore(&'static str),
}

/// Everything the engine needs to know about one family's files.
pub(crate) struct Spec {
    pub family: Family,
    pub canonical_layout: Layout,
    /// Prefixes wrapping this component's names in real files (tried longest first).
    pub own_prefixes: Vec<&'static str>,
    /// Prefixes of *other* components in all-in-one checkpoints: set aside, not errors.
    pub foreign_prefixes: Vec<&'static str>,
    /// The complete canonical schema; `None` for families mapped as they are (not yet run).
    pub schema: Option<Vec<Entry>>,
    /// The alternative layout and its rules, if the family has one.
    pub alias: Option<(Layout, Vec<Rule>)>,
    /// Family-specific renames/ignores applied after prefix stripping.
    pub normalize: fn(&str, &HashSet<&str>) -> Norm,
    /// For layouts with reversed indices (`{r}`/`{R}`): how many, from the (stripped) names.
    pub rev_count: fn(&[&str]) -> Option<u64>,
    /// Why a file of this family cannot be used (a variant mgpu does not support), from its
    /// (prefix-stripped name, tensor) list; `None` when it can.
    pub unsupported: fn(&[(&str, &TensorInfo)]) -> Option<String>,
}

pub(crate) fn keep(name: &str, _all: &HashSet<&str>) -> Norm {
    Norm::Keep(name.to_string())
}

pub(crate) fn no_rev(_: &[&str]) -> Option<u64> {
    None
}

pub(crate) fn supported(_: &[(&str, &TensorInfo)]) -> Option<String> {
    None
}
