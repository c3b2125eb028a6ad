//! Load → patch: one model's weights, read once from its file, mapped to the family's
//! canonical layout, LoRAs applied, and handed out tensor by tensor in their final stored form
//! ([`HostTensor`]) for [`super::distribute`] to give each unit its home.
//!
//! Stages, per model (docs/executor.md, "Load → patch → distribute"):
//! 1. Open ([`ModelFile::open`]): [`WeightFile::open`] (memory map, header validated, no
//!    data read) and [`keymap::canonicalize`]; model code infers its config from
//!    [`ModelFile::shape_of`] and lists the tensors it needs ([`ModelFile::check`]).
//! 2. LoRAs ([`ModelFile::load_loras`]): every LoRA of the model, in manifest order, resolved
//!    against the canonical layout (`weights::lora`); `strict` is honoured per file.
//! 3. Tensors ([`ModelFile::tensor`]), once per needed tensor while distributing: the canonical
//!    bytes (a zero-copy range of the map when the tensor is stored as used, else assembled
//!    from its parts), LoRAs added in f32 and rounded once to the stored dtype. fp8 and
//!    scaled fp8 stay fp8 (with their scale) and GGUF blocks (every GGML type) computed in
//!    bf16 stay in their blocks: they are widened where they are used (`HostTensor::materialize`, on a GPU by a
//!    kernel with the same arithmetic), so homes hold and links move the compact bytes. GGML
//!    blocks computed in another dtype are converted once to it.
//!
//! The result of step 3 does not depend on where the unit will live: resident, host and disk
//! homes all hold these bytes, and [`super::unit::UnitData::materialize`] is the one
//! conversion to the compute dtype, so placement cannot change a value.
//!
//! GGML tensors computed in bf16 stay quantised and travel as stored (dequantised where they
//! are used). With LoRAs, `bake` (the default) dequantises a patched tensor at load (bit-exact
//! GGML dequantisation, `weights::convert`), adds the deltas in f32 (`LoraSet::bake`) and
//! rounds once to the compute dtype; `lora_mode = "on_dequant"` keeps its blocks and hands the
//! LoRA terms along ([`HostTensor::lora`]), to be added at every dequantisation with the same
//! f32 operations in the same order (`TensorDelta::apply_f32` on the CPU, a kernel doing
//! exactly that on a GPU) — the same numbers as `bake`, with the homes and the link holding
//! the blocks (decision 39). Computing in another dtype, the patched tensors are dequantised
//! at load either way. The planner counts each tensor as it is held (`plan::manifest`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType as CDType;

use super::unit::{stored_of, Bytes, HostTensor};
use crate::family::Family;
use crate::manifest::{LoraMode, Model};
use crate::weights::keymap::{self, CanonicalLayout, CanonicalTensor, KeymapError};
use crate::weights::lora::{math, LoraError, LoraReport, LoraSet};
use crate::weights::{convert, DType, WeightFile, WeightsError};

/// Why a model could not be loaded. Every variant names the model and its file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model `{model}`: {source}")]
    Weights {
        model: String,
        #[source]
        source: WeightsError,
    },
    #[error("model `{model}` ({}): {source}", file.display())]
    Keymap {
        model: String,
        file: PathBuf,
        #[source]
        source: Box<KeymapError>,
    },
    #[error("model `{model}`: {source}")]
    Lora {
        model: String,
        #[source]
        source: Box<LoraError>,
    },
    #[error("model `{model}` ({}): {message}", file.display())]
    Layout {
        model: String,
        file: PathBuf,
        message: String,
    },
    #[error("model `{model}` ({}): tensor `{tensor}`: {message}", file.display())]
    Tensor {
        model: String,
        file: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("model `{model}`: {message}")]
    Other { model: String, message: String },
}

/// The candle dtype that holds `d` as stored, if any.
pub fn native_dtype(d: DType) -> Option<CDType> {
    Some(match d {
        DType::F32 => CDType::F32,
        DType::F16 => CDType::F16,
        DType::BF16 => CDType::BF16,
        DType::F64 => CDType::F64,
        DType::U8 => CDType::U8,
        DType::I16 => CDType::I16,
        DType::I32 => CDType::I32,
        DType::I64 => CDType::I64,
        _ => return None,
    })
}

/// How one tensor reached its final bytes (for notes and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The file's bytes, left in the memory map.
    AsStored,
    /// Assembled from several parts or transformed (diffusers → BFL).
    Assembled,
    /// A LoRA changed it.
    Patched,
    /// Converted to the compute dtype (GGML blocks that do not stay compact).
    Converted,
}

/// One model's weight file, opened and mapped to the canonical layout.
pub struct ModelFile {
    pub model: String,
    pub family: Family,
    pub path: PathBuf,
    pub file: Arc<WeightFile>,
    pub layout: CanonicalLayout,
    compute: CDType,
    /// `dtype = "fp8"`: the family's fp8 linears are handed out as e4m3 weights with their
    /// scale ([`super::unit::to_fp8_compute`]).
    fp8_linears: bool,
    loras: LoraSet,
    lora_mode: LoraMode,
    /// Things the run log should say (LoRA warnings, saturated values, unused tensors).
    pub notes: Vec<String>,
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFile")
            .field("model", &self.model)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ModelFile {
    /// Opens `model.file` and maps its names to `model.family`'s canonical layout. Reads the
    /// header only. `compute` is the dtype the model computes in.
    pub fn open(model: &Model, compute: CDType) -> Result<ModelFile, LoadError> {
        let mut mf = Self::open_file(
            &model.name,
            model.family,
            &model.file,
            model.lora_mode,
            compute,
        )?;
        mf.fp8_linears = model.dtype.fp8_linears();
        Ok(mf)
    }

    /// [`ModelFile::open`] without a manifest model: `name` is the model's name in messages.
    pub fn open_file(
        name: &str,
        family: Family,
        path: &Path,
        lora_mode: LoraMode,
        compute: CDType,
    ) -> Result<ModelFile, LoadError> {
        let file = WeightFile::open(path).map_err(|source| LoadError::Weights {
            model: name.to_string(),
            source,
        })?;
        let layout =
            keymap::canonicalize(family, file.tensors()).map_err(|source| LoadError::Keymap {
                model: name.to_string(),
                file: path.to_path_buf(),
                source: Box::new(source),
            })?;
        Ok(ModelFile {
            model: name.to_string(),
            family,
            path: path.to_path_buf(),
            file: Arc::new(file),
            layout,
            compute,
            fp8_linears: false,
            loras: LoraSet::empty(family),
            lora_mode,
            notes: Vec::new(),
        })
    }

    /// The canonical shape of `name`, if the file has it.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.layout
            .get(name)
            .map(|t| t.shape.iter().map(|&d| d as usize).collect())
    }

    pub fn has(&self, name: &str) -> bool {
        self.layout.get(name).is_some()
    }

    fn layout_err(&self, message: String) -> LoadError {
        LoadError::Layout {
            model: self.model.clone(),
            file: self.path.clone(),
            message,
        }
    }

    fn tensor_err(&self, tensor: &str, message: impl Into<String>) -> LoadError {
        LoadError::Tensor {
            model: self.model.clone(),
            file: self.path.clone(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }

    /// Checks that the file has every tensor of `needed` (canonical name → shape the model
    /// code reads) with that shape. All problems are reported at once (the first ten).
    /// Canonical tensors the model does not read are noted, not loaded.
    pub fn check(&mut self, needed: &BTreeMap<String, Vec<usize>>) -> Result<(), LoadError> {
        let mut problems = Vec::new();
        for (name, want) in needed {
            match self.shape_of(name) {
                None => problems.push(format!("`{name}` {want:?} is missing")),
                Some(got) if &got != want => problems.push(format!(
                    "`{name}` has shape {got:?}, the model needs {want:?}"
                )),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            let n = problems.len();
            let mut msg = format!(
                "the weights do not fit the {} model inferred from them ({n} problem{}):",
                self.family,
                if n == 1 { "" } else { "s" }
            );
            for p in problems.iter().take(10) {
                msg.push_str(&format!("\n  {p}"));
            }
            if n > 10 {
                msg.push_str(&format!("\n  … and {} more", n - 10));
            }
            return Err(self.layout_err(msg));
        }
        let unused: Vec<&str> = self
            .layout
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| !needed.contains_key(*n))
            .collect();
        if !unused.is_empty() {
            let n = unused.len();
            self.notes.push(format!(
                "model `{}`: {n} tensor{} of {} {} not used by the model and not loaded (e.g. `{}`)",
                self.model,
                if n == 1 { "" } else { "s" },
                self.path.display(),
                if n == 1 { "is" } else { "are" },
                unused[0]
            ));
        }
        Ok(())
    }

    /// Loads the model's LoRAs (manifest order), resolved against the canonical layout.
    /// Unmatched modules fail the load for LoRAs with `strict = true` and are noted for the
    /// others; modules addressed to other components are noted.
    pub fn load_loras(
        &mut self,
        loras: &[crate::manifest::Lora],
    ) -> Result<Option<LoraReport>, LoadError> {
        if loras.is_empty() {
            return Ok(None);
        }
        let lerr = |source| LoadError::Lora {
            model: self.model.clone(),
            source: Box::new(source),
        };
        let specs: Vec<(PathBuf, f32)> = loras
            .iter()
            .map(|l| (l.file.clone(), l.strength as f32))
            .collect();
        // Lenient load, then `strict` per file: the LoRA reader takes one flag for all files.
        let (set, report) =
            LoraSet::load(&specs, self.family, &self.layout, false).map_err(lerr)?;
        for (l, fr) in loras.iter().zip(&report.files) {
            if fr.unmatched.is_empty() {
                continue;
            }
            if l.strict {
                return Err(lerr(LoraError::Unmatched {
                    path: l.file.clone(),
                    family: self.family,
                    unmatched: fr.unmatched.clone(),
                }));
            }
            self.notes.push(format!(
                "model `{}`: LoRA {}: {} module{} match nothing and {} skipped (`strict = false`), e.g. {}",
                self.model,
                l.file.display(),
                fr.unmatched.len(),
                if fr.unmatched.len() == 1 { "" } else { "s" },
                if fr.unmatched.len() == 1 { "is" } else { "are" },
                fr.unmatched[0]
            ));
        }
        for (l, fr) in loras.iter().zip(&report.files) {
            for (component, n) in &fr.other_components {
                self.notes.push(format!(
                    "model `{}`: LoRA {} has {n} module{} for {component}, not applied here: list the LoRA under that model to apply them",
                    self.model,
                    l.file.display(),
                    if *n == 1 { "" } else { "s" },
                ));
            }
        }
        for w in &report.warnings {
            self.notes.push(format!("model `{}`: {w}", self.model));
        }
        let quantized = self.layout.tensors.iter().any(|t| t.dtype.is_quantized());
        if self.lora_mode == LoraMode::OnDequant
            && !set.is_empty()
            && quantized
            && self.compute != CDType::BF16
        {
            self.notes.push(format!(
                "model `{}`: lora_mode = on_dequant keeps GGUF blocks only when computing in bf16; computing in {:?}, the patched weights are dequantised at load, as with `bake` (same numbers)",
                self.model, self.compute
            ));
        }
        self.loras = set;
        Ok(Some(report))
    }

    /// Canonical tensor `canonical` in its final stored form, named `rel` (its name relative
    /// to its unit): see the module docs. Reads the tensor's bytes once. With fp8 compute, an
    /// fp8 linear's weight is e4m3 with its scale: an e4m3 file's bytes as they are (a range
    /// of the map when untouched), anything else quantised once
    /// ([`super::unit::to_fp8_compute`]).
    pub fn tensor(
        &mut self,
        canonical: &str,
        rel: &str,
    ) -> Result<(HostTensor, Origin), LoadError> {
        let (t, origin) = self.stored_tensor(canonical, rel)?;
        if !(self.fp8_linears && self.family.fp8_linear(canonical) && t.shape.len() == 2) {
            return Ok((t, origin));
        }
        let kept = t.quant == Some(DType::F8_E4M3);
        let t = super::unit::to_fp8_compute(t).map_err(|e| {
            self.tensor_err(
                canonical,
                format!("cannot be made e4m3 for fp8 compute: {e}"),
            )
        })?;
        Ok((t, if kept { origin } else { Origin::Converted }))
    }

    fn stored_tensor(
        &mut self,
        canonical: &str,
        rel: &str,
    ) -> Result<(HostTensor, Origin), LoadError> {
        let ct = self
            .layout
            .get(canonical)
            .cloned()
            .ok_or_else(|| self.tensor_err(canonical, "is not in the file"))?;
        let shape: Vec<usize> = ct.shape.iter().map(|&d| d as usize).collect();
        let numel: usize = shape.iter().product();
        let touched = self.loras.delta(canonical).is_some();
        let scale = match &ct.scale {
            Some(s) => Some(self.scalar(s)?),
            None => None,
        };
        let native = native_dtype(ct.dtype).filter(|_| scale.is_none());
        // As stored: a range of the map, no copy.
        if let (Some(dt), false, true) = (native, touched, ct.is_passthrough()) {
            let wf = |source| LoadError::Weights {
                model: self.model.clone(),
                source,
            };
            if let Some((map, range)) = self.file.mapped(&ct.parts[0].source).map_err(wf)? {
                return Ok((
                    HostTensor {
                        name: rel.to_string(),
                        dtype: dt,
                        shape,
                        bytes: Bytes::Mapped {
                            map,
                            start: range.start,
                            len: range.len(),
                        },
                        quant: None,
                        scale: None,
                        lora: None,
                    },
                    Origin::AsStored,
                ));
            }
        }
        // GGML blocks computed in bf16 stay as stored and are dequantised where used (the
        // CPU's arithmetic on a GPU too, docs/gpu.md); under `on_dequant` a patched tensor
        // as well, carrying its LoRA terms (added there with `bake`'s f32 arithmetic).
        let on_dequant = touched && self.lora_mode == LoraMode::OnDequant;
        if ct.dtype.stays_quantized(
            stored_of(self.compute).unwrap_or(DType::F32),
            touched && !on_dequant,
        ) && ct.is_passthrough()
        {
            let lora = match self.loras.delta(canonical).filter(|_| on_dequant) {
                Some(d) => {
                    d.check_shape(&ct.shape)
                        .map_err(|message| LoadError::Lora {
                            model: self.model.clone(),
                            source: Box::new(LoraError::Base {
                                tensor: canonical.to_string(),
                                message,
                            }),
                        })?;
                    Some(Arc::new(d.clone()))
                }
                None => None,
            };
            let wf = |source| LoadError::Weights {
                model: self.model.clone(),
                source,
            };
            let bytes = match self.file.mapped(&ct.parts[0].source).map_err(wf)? {
                Some((map, range)) => Bytes::Mapped {
                    map,
                    start: range.start,
                    len: range.len(),
                },
                None => Bytes::Owned(Arc::from(self.assemble(&ct)?)),
            };
            return Ok((
                HostTensor {
                    name: rel.to_string(),
                    dtype: CDType::BF16,
                    shape,
                    bytes,
                    quant: Some(ct.dtype),
                    scale: None,
                    lora,
                },
                Origin::AsStored,
            ));
        }
        let store = stored_of(self.compute).ok_or_else(|| {
            self.tensor_err(
                canonical,
                format!("compute dtype {:?} is not bf16, f16 or f32", self.compute),
            )
        })?;
        // fp8 and scaled fp8 as stored and untouched: a range of the map, compact.
        if super::unit::is_fp8(ct.dtype) && !touched && ct.is_passthrough() {
            if let (Some(dt), Some((map, range))) = (
                native_dtype(store),
                self.file
                    .mapped(&ct.parts[0].source)
                    .map_err(|source| LoadError::Weights {
                        model: self.model.clone(),
                        source,
                    })?,
            ) {
                return Ok((
                    HostTensor {
                        name: rel.to_string(),
                        dtype: dt,
                        shape,
                        bytes: Bytes::Mapped {
                            map,
                            start: range.start,
                            len: range.len(),
                        },
                        quant: Some(ct.dtype),
                        scale,
                        lora: None,
                    },
                    Origin::AsStored,
                ));
            }
        }
        let mut bytes = self.assemble(&ct)?;
        let mut origin = if ct.is_passthrough() {
            Origin::AsStored
        } else {
            Origin::Assembled
        };
        let lerr = |model: &str, source| LoadError::Lora {
            model: model.to_string(),
            source: Box::new(source),
        };
        let (dtype, bytes) = if ct.dtype.is_quantized() {
            // GGUF: dequantise (exact), add LoRAs in f32, round once to the compute dtype.
            let mut f = convert::to_f32(ct.dtype, &bytes, numel);
            let patched = self
                .loras
                .bake(canonical, &ct.shape, &mut f, store)
                .map_err(|e| lerr(&self.model, e))?;
            let out = match patched {
                Some(p) => {
                    self.note_saturated(canonical, p.saturated, p.dtype);
                    origin = Origin::Patched;
                    p.bytes
                }
                None => {
                    origin = Origin::Converted;
                    let mut out = vec![0u8; numel * store.block().1 as usize];
                    math::encode(store, &f, None, &mut out);
                    out
                }
            };
            (native_dtype(store).unwrap_or(self.compute), out)
        } else if math::patchable(ct.dtype) {
            if touched {
                let sat = self
                    .loras
                    .patch_in_place(canonical, ct.dtype, &ct.shape, &mut bytes, scale)
                    .map_err(|e| lerr(&self.model, e))?;
                self.note_saturated(canonical, sat.unwrap_or(0), ct.dtype);
                origin = Origin::Patched;
            }
            match native {
                Some(dt) => (dt, bytes),
                None => {
                    // fp8 or scaled fp8 (patched in place when a LoRA touches it): the fp8
                    // bytes stay as they are and travel compact; `HostTensor::materialize`
                    // widens them (× scale, one f32 rounding, one rounding to the compute
                    // dtype) where they are used.
                    return Ok((
                        HostTensor {
                            name: rel.to_string(),
                            dtype: native_dtype(store).unwrap_or(self.compute),
                            shape,
                            bytes: Bytes::Owned(Arc::from(bytes)),
                            quant: Some(ct.dtype),
                            scale,
                            lora: None,
                        },
                        origin,
                    ));
                }
            }
        } else if let Some(dt) = native {
            if touched {
                return Err(self.tensor_err(
                    canonical,
                    format!("is {}: LoRAs patch floating-point weights only", ct.dtype),
                ));
            }
            (dt, bytes)
        } else {
            return Err(self.tensor_err(
                canonical,
                format!(
                    "is stored as {}, which the executor cannot compute with (supported: f32, f16, bf16, fp8, GGML blocks, integers)",
                    ct.dtype
                ),
            ));
        };
        Ok((
            HostTensor {
                name: rel.to_string(),
                dtype,
                shape,
                bytes: Bytes::Owned(Arc::from(bytes)),
                quant: None,
                scale: None,
                lora: None,
            },
            origin,
        ))
    }

    /// The canonical bytes of `ct` in its stored dtype, owned.
    fn assemble(&self, ct: &CanonicalTensor) -> Result<Vec<u8>, LoadError> {
        let wf = |source| LoadError::Weights {
            model: self.model.clone(),
            source,
        };
        if ct.is_passthrough() {
            return Ok(self
                .file
                .bytes(&ct.parts[0].source)
                .map_err(wf)?
                .into_owned());
        }
        let parts = ct
            .parts
            .iter()
            .map(|p| self.file.bytes(&p.source))
            .collect::<Result<Vec<_>, _>>()
            .map_err(wf)?;
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_ref()).collect();
        ct.assemble(&refs)
            .map_err(|e| self.tensor_err(&ct.name, e.to_string()))
    }

    /// The value of a stored scalar (a scaled-fp8 `scale_weight`).
    fn scalar(&self, stored: &str) -> Result<f32, LoadError> {
        let v = self
            .file
            .to_f32(stored)
            .map_err(|source| LoadError::Weights {
                model: self.model.clone(),
                source,
            })?;
        match v.as_slice() {
            [s] if s.is_finite() && *s != 0.0 => Ok(*s),
            _ => Err(self.tensor_err(
                stored,
                format!(
                    "a scale must be one finite non-zero value, found {} values",
                    v.len()
                ),
            )),
        }
    }

    fn note_saturated(&mut self, tensor: &str, saturated: u64, dtype: DType) {
        if saturated > 0 {
            self.notes.push(format!(
                "model `{}`: the LoRAs push {saturated} value{} of `{tensor}` beyond the range of {dtype} (clamped or ±∞)",
                self.model,
                if saturated == 1 { "" } else { "s" }
            ));
        }
    }

    /// Whether any LoRA changes `canonical`.
    pub fn patched(&self, canonical: &str) -> bool {
        self.loras.delta(canonical).is_some()
    }

    /// The LoRA files and strengths in effect (manifest order).
    pub fn lora_files(&self) -> &[(PathBuf, f32)] {
        self.loras.files()
    }

    /// Canonical names, grouped by placement unit in the family's naming: the unit name
    /// (`double_blocks.3`, or [`crate::inventory::RESIDENT`] for tensors outside any block)
    /// → (canonical name, name relative to the unit), for the names in `needed`.
    pub fn by_unit(&self, needed: &BTreeSet<String>) -> BTreeMap<String, Vec<(String, String)>> {
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for name in needed {
            match self.family.unit_of(name) {
                Some(u) => {
                    let rel = name.get(u.len() + 1..).unwrap_or_default().to_string();
                    out.entry(u).or_default().push((name.clone(), rel));
                }
                None => out
                    .entry(crate::inventory::RESIDENT.to_string())
                    .or_default()
                    .push((name.clone(), name.clone())),
            }
        }
        out
    }
}

/// Converts a load error into the executor's error for the whole run.
impl From<LoadError> for super::ExecError {
    fn from(e: LoadError) -> Self {
        super::ExecError::Load(e.to_string())
    }
}

/// Where a file lives, as the manifest named it: relative to the manifest's folder when it
/// is inside it, else absolute.
pub fn display_path(path: &Path, manifest_dir: &Path) -> String {
    path.strip_prefix(manifest_dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{flux, tiny};
    use safetensors::tensor::{serialize_to_file, TensorView};
    use safetensors::Dtype as St;

    const QKV: &str = "double_blocks.0.img_attn.qkv.weight";
    const SCALE: f32 = 0.015625;

    /// The tiny FLUX in f32, except `QKV` as ComfyUI scaled fp8 (e4m3 + `scale_weight`).
    fn write_scaled_fp8(path: &Path) -> Vec<f32> {
        let w = tiny::flux_weights(&flux::Config::tiny(), 3).unwrap();
        let mut owned: Vec<(String, St, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut fp8_values = Vec::new();
        for (name, t) in &w {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            if name == QKV {
                let bytes: Vec<u8> = v
                    .iter()
                    .map(|x| float8::F8E4M3::from_f32(x / SCALE).to_bits())
                    .collect();
                fp8_values = bytes
                    .iter()
                    .map(|b| float8::F8E4M3::from_bits(*b).to_f32() * SCALE)
                    .collect();
                owned.push((name.clone(), St::F8_E4M3, t.dims().to_vec(), bytes));
                owned.push((
                    name.replace(".weight", ".scale_weight"),
                    St::F32,
                    vec![],
                    SCALE.to_le_bytes().to_vec(),
                ));
            } else {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                owned.push((name.clone(), St::F32, t.dims().to_vec(), bytes));
            }
        }
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        serialize_to_file(views, None, path).unwrap();
        fp8_values
    }

    fn open(path: &Path, compute: CDType) -> ModelFile {
        ModelFile::open_file("flux", Family::Flux, path, LoraMode::Bake, compute).unwrap()
    }

    #[test]
    fn stored_tensors_stay_mapped_and_scaled_fp8_stays_compact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp8.safetensors");
        let want = write_scaled_fp8(&path);
        let mut mf = open(&path, CDType::F32);
        // As stored: a range of the map.
        let (t, origin) = mf.tensor("img_in.weight", "img_in.weight").unwrap();
        assert_eq!(origin, Origin::AsStored);
        assert!(matches!(t.bytes, Bytes::Mapped { .. }));
        // Scaled fp8: the file's fp8 bytes (a range of the map) and the scale; widened to
        // fp8 × scale in f32 (exact) where it is used.
        let (t, origin) = mf.tensor(QKV, "img_attn.qkv.weight").unwrap();
        assert_eq!(origin, Origin::AsStored);
        assert!(matches!(t.bytes, Bytes::Mapped { .. }));
        assert_eq!(t.dtype, CDType::F32);
        assert_eq!(t.quant, Some(DType::F8_E4M3));
        assert_eq!(t.scale, Some(SCALE));
        assert_eq!(t.bytes.len(), want.len());
        let m = t
            .materialize(&candle_core::Device::Cpu, CDType::F32)
            .unwrap();
        assert_eq!(m.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        // In bf16 compute: the same f32 values rounded once.
        let mut mf = open(&path, CDType::BF16);
        let (t, _) = mf.tensor(QKV, "img_attn.qkv.weight").unwrap();
        assert_eq!(t.dtype, CDType::BF16);
        let m = t
            .materialize(&candle_core::Device::Cpu, CDType::BF16)
            .unwrap();
        let round = candle_core::Tensor::from_vec(want, m.dims(), &candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(CDType::BF16)
            .unwrap();
        assert_eq!(
            m.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap(),
            round
                .flatten_all()
                .unwrap()
                .to_vec1::<half::bf16>()
                .unwrap()
        );
    }

    #[test]
    fn check_lists_missing_and_misshapen_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp8.safetensors");
        write_scaled_fp8(&path);
        let mut mf = open(&path, CDType::F32);
        let mut needed = tiny::flux_layout(&flux::Config::tiny()).unwrap();
        needed.insert("double_blocks.9.img_attn.qkv.weight".into(), vec![96, 32]);
        needed.insert("img_in.weight".into(), vec![32, 65]);
        let e = mf.check(&needed).unwrap_err().to_string();
        assert!(e.contains("fp8.safetensors"), "{e}");
        assert!(
            e.contains("`double_blocks.9.img_attn.qkv.weight` [96, 32] is missing"),
            "{e}"
        );
        assert!(
            e.contains("`img_in.weight` has shape [32, 64], the model needs [32, 65]"),
            "{e}"
        );
        // Only what the model reads is loaded; the rest is noted.
        let mut fewer = tiny::flux_layout(&flux::Config::tiny()).unwrap();
        fewer.remove("img_in.bias");
        mf.check(&fewer).unwrap();
        assert!(mf.notes[0].contains("1 tensor of"), "{:?}", mf.notes);
        // A tensor the file does not have.
        let e = mf.tensor("nope", "nope").unwrap_err().to_string();
        assert!(e.contains("tensor `nope`: is not in the file"), "{e}");
    }
}
