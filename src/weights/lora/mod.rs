//! LoRA: load → patch, once, before weights are distributed.
//!
//! [`LoraSet::load`] reads every LoRA file of one model (in manifest order, each with its
//! strength), resolves each module name against the base model's canonical layout
//! ([`crate::weights::keymap::ModuleIndex`]: kohya, peft/diffusers, BFL and text-encoder
//! spellings, and q/k/v factors that land in row ranges of a fused `qkv`/`linear1`), checks
//! every shape, and keeps the factors in f32 as [`TensorDelta`]s, one per patched canonical
//! tensor. It returns a [`LoraReport`]; unknown modules are an error unless `strict` is off.
//!
//! The executor then reads each base tensor once and asks [`LoraSet::patch`] for the patched
//! bytes: all LoRAs are summed in f32 onto the decoded weight and the result is rounded once
//! to the stored dtype (the exact arithmetic is in [`math`]). Quantised (GGUF) bases have two
//! modes ([`QuantizedLora`]): [`LoraSet::bake`] (dequantise, patch, keep as bf16) or
//! [`LoraSet::delta`] (keep the quantised weight; add the delta after every dequantisation
//! with [`TensorDelta::apply_f32`]'s operations: on a GPU by `exec::cuda::lora`'s kernel, the
//! same bytes). docs/lora.md has the formats, the
//! choices and the numbers.

pub mod math;

mod delta;
mod file;
mod keys;
mod load;
mod mode;
mod report;

pub use delta::{term_flops_per_value, DeltaKind, DeltaTerm, TensorDelta};
pub use mode::{QuantizedLora, QuantizedLoraError};
pub use report::{FileReport, LoraReport, Unmatched};

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;

use crate::family::Family;
use crate::weights::keymap::CanonicalLayout;
use crate::weights::{DType, WeightsError};

/// LoRA errors. Each names the LoRA file (or, when patching, the base tensor).
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    Read(#[from] WeightsError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: strength {strength} is not a finite number", path.display())]
    BadStrength { path: PathBuf, strength: f32 },
    #[error("LoRAs were loaded for {family} against a {base} base layout")]
    FamilyMismatch { family: Family, base: Family },
    #[error("{}: {}{message}", path.display(), if tensor.is_empty() { String::new() } else { format!("tensor `{tensor}`: ") })]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{}: adapter config: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}", render_unmatched(path, *family, unmatched))]
    Unmatched {
        path: PathBuf,
        family: Family,
        unmatched: Vec<Unmatched>,
    },
    #[error("base tensor `{tensor}`: {message}")]
    Base { tensor: String, message: String },
}

fn render_unmatched(path: &std::path::Path, family: Family, unmatched: &[Unmatched]) -> String {
    let mut s = format!(
        "{}: {} LoRA module{} match{} nothing in the {family} model (set `strict = false` to skip {} with a warning):",
        path.display(),
        unmatched.len(),
        if unmatched.len() == 1 { "" } else { "s" },
        if unmatched.len() == 1 { "es" } else { "" },
        if unmatched.len() == 1 { "it" } else { "them" },
    );
    for u in unmatched.iter().take(10) {
        s.push_str(&format!("\n  {u}"));
    }
    if unmatched.len() > 10 {
        s.push_str(&format!("\n  … and {} more", unmatched.len() - 10));
    }
    s
}

/// A base tensor's stored bytes, in the canonical layout (already assembled).
#[derive(Debug, Clone, Copy)]
pub struct BaseTensor<'a> {
    pub dtype: DType,
    pub shape: &'a [u64],
    pub bytes: &'a [u8],
    /// ComfyUI scaled fp8: the tensor's `scale_weight` value.
    pub scale: Option<f32>,
}

/// Patched bytes in the base tensor's dtype (or the `store` dtype of [`LoraSet::bake`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patched {
    pub bytes: Vec<u8>,
    pub dtype: DType,
    /// Values that did not fit the dtype: clamped to the largest fp8 value, or ±∞ in f16/bf16.
    pub saturated: u64,
}

/// Every LoRA of one model, resolved to canonical tensors, factors in f32.
#[derive(Debug, Clone)]
pub struct LoraSet {
    family: Family,
    files: Vec<(PathBuf, f32)>,
    deltas: BTreeMap<String, TensorDelta>,
}

impl LoraSet {
    /// A set that patches nothing.
    pub fn empty(family: Family) -> Self {
        LoraSet {
            family,
            files: Vec::new(),
            deltas: BTreeMap::new(),
        }
    }

    /// Loads `specs` (file, strength), in manifest order, for the `family` model whose
    /// canonical layout is `base`; see the module docs.
    pub fn load(
        specs: &[(PathBuf, f32)],
        family: Family,
        base: &CanonicalLayout,
        strict: bool,
    ) -> Result<(LoraSet, LoraReport), LoraError> {
        load::load(specs, family, base, strict)
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// (file, strength) in manifest order.
    pub fn files(&self) -> &[(PathBuf, f32)] {
        &self.files
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    /// Canonical names of the tensors this set changes, in name order.
    pub fn patched_names(&self) -> impl Iterator<Item = &str> {
        self.deltas.keys().map(String::as_str)
    }

    /// The delta of one canonical tensor (for [`QuantizedLora::OnDequant`]).
    pub fn delta(&self, name: &str) -> Option<&TensorDelta> {
        self.deltas.get(name)
    }

    /// The same LoRAs at other strengths (one per file, manifest order), without reading any
    /// file again.
    pub fn with_strengths(&self, strengths: &[f32]) -> Result<LoraSet, LoraError> {
        if strengths.len() != self.files.len() {
            return Err(LoraError::Base {
                tensor: String::new(),
                message: format!(
                    "{} strengths given for {} LoRA files",
                    strengths.len(),
                    self.files.len()
                ),
            });
        }
        for ((path, _), &s) in self.files.iter().zip(strengths) {
            if !s.is_finite() {
                return Err(LoraError::BadStrength {
                    path: path.clone(),
                    strength: s,
                });
            }
        }
        let mut out = self.clone();
        for (f, &s) in out.files.iter_mut().zip(strengths) {
            f.1 = s;
        }
        for d in out.deltas.values_mut() {
            for t in &mut d.terms {
                t.scale = term_scale(t.factor, strengths[t.file]);
            }
        }
        Ok(out)
    }

    /// The patched bytes of canonical tensor `name`, or `None` when no LoRA touches it (keep
    /// the base bytes as they are). Rows no LoRA touches are copied unchanged.
    pub fn patch(&self, name: &str, base: BaseTensor<'_>) -> Result<Option<Patched>, LoraError> {
        if !self.deltas.contains_key(name) {
            return Ok(None);
        }
        let mut bytes = base.bytes.to_vec();
        let saturated =
            self.patch_in_place(name, base.dtype, base.shape, &mut bytes, base.scale)?;
        Ok(saturated.map(|saturated| Patched {
            bytes,
            dtype: base.dtype,
            saturated,
        }))
    }

    /// [`LoraSet::patch`] on a buffer the caller owns (a staging buffer the weights were read
    /// into): only the touched rows are rewritten. `None` when no LoRA touches `name`;
    /// otherwise the count of values that did not fit the dtype (see [`Patched::saturated`]).
    pub fn patch_in_place(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        bytes: &mut [u8],
        scale: Option<f32>,
    ) -> Result<Option<u64>, LoraError> {
        let Some(d) = self.deltas.get(name) else {
            return Ok(None);
        };
        let bad = |message: String| LoraError::Base {
            tensor: name.to_string(),
            message,
        };
        if !math::patchable(dtype) {
            return Err(bad(format!(
                "is {dtype}: LoRAs patch f32/f16/bf16/fp8 bytes directly; dequantise quantised weights and use `bake` or `delta`"
            )));
        }
        d.check_shape(shape).map_err(bad)?;
        let cols = d.cols as usize;
        let row_bytes = cols * dtype.block().1 as usize;
        if bytes.len() != d.rows as usize * row_bytes {
            return Err(bad(format!(
                "has {} bytes, {} expected for {shape:?} {dtype}",
                bytes.len(),
                d.rows as usize * row_bytes
            )));
        }
        if let Some(s) = scale {
            if !s.is_finite() || s == 0.0 {
                return Err(bad(format!("scale_weight {s} cannot be divided by")));
            }
        }
        let saturated = bytes
            .par_chunks_mut(row_bytes.max(1))
            .enumerate()
            .map_init(
                || (vec![0f32; cols], vec![0f32; cols]),
                |(w, acc), (i, row)| {
                    let i = i as u64;
                    if !d.terms.iter().any(|t| t.rows.contains(&i)) {
                        return 0;
                    }
                    math::decode(dtype, row, scale, w);
                    d.apply_row(i, w, acc);
                    math::encode(dtype, w, scale, row)
                },
            )
            .sum();
        Ok(Some(saturated))
    }

    /// Bake mode for quantised bases: adds the deltas to `dequantized` (the whole tensor in
    /// f32, canonical shape `shape`) and rounds it once to `store` (bf16 normally). `None`
    /// when no LoRA touches `name`: keep the quantised weight.
    pub fn bake(
        &self,
        name: &str,
        shape: &[u64],
        dequantized: &mut [f32],
        store: DType,
    ) -> Result<Option<Patched>, LoraError> {
        let Some(d) = self.deltas.get(name) else {
            return Ok(None);
        };
        let bad = |message: String| LoraError::Base {
            tensor: name.to_string(),
            message,
        };
        if !math::patchable(store) {
            return Err(bad(format!("cannot store a baked tensor as {store}")));
        }
        d.check_shape(shape).map_err(bad)?;
        d.apply_f32(dequantized).map_err(bad)?;
        let mut bytes = vec![0u8; dequantized.len() * store.block().1 as usize];
        let saturated = math::encode(store, dequantized, None, &mut bytes);
        Ok(Some(Patched {
            bytes,
            dtype: store,
            saturated,
        }))
    }

    /// Adds the deltas of `name` to `w` (canonical shape, f32) in place; false when no LoRA
    /// touches it.
    pub fn apply_f32(&self, name: &str, w: &mut [f32]) -> Result<bool, LoraError> {
        match self.deltas.get(name) {
            None => Ok(false),
            Some(d) => {
                d.apply_f32(w).map_err(|message| LoraError::Base {
                    tensor: name.to_string(),
                    message,
                })?;
                Ok(true)
            }
        }
    }
}

/// The f32 multiplier of a term: `f32(factor · strength)` with the product in f64, as peft and
/// ComfyUI compute `scaling · weight` / `strength · alpha / rank` in Python floats.
pub(crate) fn term_scale(factor: f64, strength: f32) -> f32 {
    (factor * f64::from(strength)) as f32
}

#[cfg(test)]
mod tests;
