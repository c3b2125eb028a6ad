//! [`WeightFile`]: one open weight file (or sharded set) of any supported format, memory-mapped,
//! with its validated tensor inventory. The single door through which tensor bytes leave
//! files: the inventory reads [`WeightFile::tensors`], the executor and LoRA patching read
//! [`WeightFile::raw`] / [`WeightFile::to_f32`] / [`WeightFile::to_candle`].
//!
//! Formats are recognised by their first bytes, never by file name: a safetensors header
//! length + `{`, `GGUF`, `PK` (a PyTorch zip checkpoint); a JSON object is a sharded-set index.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::meta::{MetaValue, Metadata};
use super::pickle::{self, Layout};
use super::{convert, gguf, safetensors, shards, DType, TensorInfo, WeightsError};

/// A file format, as detected from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Format {
    Safetensors,
    /// A `*.safetensors.index.json` set.
    SafetensorsSharded {
        shards: usize,
    },
    Gguf {
        version: u32,
        alignment: u64,
    },
    /// A `torch.save` zip archive (`.bin`, `.pt`, `.pth`, `.ckpt`).
    PyTorch,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Safetensors => f.write_str("safetensors"),
            Format::SafetensorsSharded { shards } => {
                write!(f, "safetensors, sharded ({shards} files)")
            }
            Format::Gguf { version, alignment } => {
                write!(f, "GGUF v{version} (alignment {alignment})")
            }
            Format::PyTorch => f.write_str("PyTorch zip checkpoint"),
        }
    }
}

/// A memory map and a byte range in it ([`WeightFile::mapped`]).
pub type MappedRange = (Arc<Mmap>, std::ops::Range<usize>);

/// One mapped file of the set.
struct Source {
    path: PathBuf,
    /// Shared so the executor can keep ranges of it as `disk` homes ([`WeightFile::mapped`]).
    map: Arc<Mmap>,
}

/// Per-tensor facts beside its [`TensorInfo`].
#[derive(Debug, Clone)]
struct Slot {
    source: usize,
    /// Strides of a non-contiguous PyTorch view.
    stride: Option<Vec<u64>>,
    /// Index of the `scale_weight` tensor of a ComfyUI scaled-fp8 weight.
    scale: Option<usize>,
}

/// An open weight file; see the module doc. `Send + Sync`: share it across threads freely.
pub struct WeightFile {
    path: PathBuf,
    format: Format,
    sources: Vec<Source>,
    tensors: Vec<TensorInfo>,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    metadata: Metadata,
}

impl fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightFile")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn map(path: &Path) -> Result<Mmap, WeightsError> {
    let file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
    // SAFETY: the map is read-only. If another process truncates or rewrites the file while it
    // is mapped, reads may fault or see changed bytes — the same contract as every mmap-based
    // weights loader (safetensors, llama.cpp); mgpu never writes to weight files.
    unsafe { Mmap::map(&file) }.map_err(|e| WeightsError::io(path, e))
}

impl WeightFile {
    /// Opens and validates `path`: detects the format from its first bytes, maps it, and checks
    /// the whole header (or index and every shard) before returning. No tensor data is read.
    pub fn open(path: impl AsRef<Path>) -> Result<WeightFile, WeightsError> {
        let path = path.as_ref();
        let m = map(path)?;
        let bytes: &[u8] = &m;
        if gguf::has_magic(bytes) {
            let h = gguf::parse(path, bytes)?;
            let format = Format::Gguf {
                version: h.version,
                alignment: h.alignment,
            };
            return Self::build(
                path,
                format,
                vec![Source {
                    path: path.into(),
                    map: Arc::new(m),
                }],
                h.metadata,
                one_source(h.tensors),
            );
        }
        if pickle::has_zip_magic(bytes) {
            let ck = pickle::read(path, bytes)?;
            let mut metadata = Metadata::new();
            if let Some(k) = &ck.nested_under {
                metadata.insert(
                    "pytorch.state_dict_key".into(),
                    MetaValue::String(k.clone()),
                );
            }
            if !ck.skipped.is_empty() {
                metadata.insert(
                    "pytorch.skipped_keys".into(),
                    MetaValue::Array(super::meta::MetaArray::String(ck.skipped.clone())),
                );
            }
            let tensors = ck
                .tensors
                .into_iter()
                .map(|e| {
                    let stride = match e.layout {
                        Layout::Contiguous => None,
                        Layout::Strided { stride } => Some(stride),
                    };
                    (
                        e.info,
                        Slot {
                            source: 0,
                            stride,
                            scale: None,
                        },
                    )
                })
                .collect();
            return Self::build(
                path,
                Format::PyTorch,
                vec![Source {
                    path: path.into(),
                    map: Arc::new(m),
                }],
                metadata,
                tensors,
            );
        }
        if safetensors::has_magic(bytes) {
            let h = safetensors::header_from_bytes(path, bytes)?;
            let metadata = h
                .metadata
                .into_iter()
                .map(|(k, v)| (k, MetaValue::String(v)))
                .collect();
            return Self::build(
                path,
                Format::Safetensors,
                vec![Source {
                    path: path.into(),
                    map: Arc::new(m),
                }],
                metadata,
                one_source(h.tensors),
            );
        }
        if bytes.first() == Some(&b'{') || shards::is_index_name(path) {
            return Self::open_sharded(path, bytes);
        }
        if pickle::is_legacy_pickle(bytes) {
            return Err(WeightsError::format(
                path,
                "legacy PyTorch serialization (a bare pickle, torch < 1.6 or `_use_new_zipfile_serialization=False`) is not supported: re-save it with a current torch.save, or convert it to safetensors",
            ));
        }
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Err(WeightsError::format(
            path,
            format!(
                "unrecognised format (first bytes {}): expected safetensors, a safetensors index (.index.json), GGUF, or a PyTorch zip checkpoint",
                if head.is_empty() { "none: empty file".to_string() } else { head.join(" ") }
            ),
        ))
    }

    fn open_sharded(path: &Path, bytes: &[u8]) -> Result<WeightFile, WeightsError> {
        let index = shards::read_index(path, bytes)?;
        let mut sources = Vec::with_capacity(index.shards.len());
        let mut tensors = Vec::new();
        let mut owner: HashMap<&str, usize> = HashMap::new();
        let mut headers = Vec::with_capacity(index.shards.len());
        for shard in &index.shards {
            let m = map(shard)?;
            let h = safetensors::header_from_bytes(shard, &m)?;
            headers.push(h);
            sources.push(Source {
                path: shard.clone(),
                map: Arc::new(m),
            });
        }
        for (i, h) in headers.iter().enumerate() {
            for t in &h.tensors {
                if let Some(&j) = owner.get(t.name.as_str()) {
                    return Err(WeightsError::tensor(
                        path,
                        &t.name,
                        format!(
                            "is in two shards: {} and {}",
                            index.shards[j].display(),
                            index.shards[i].display()
                        ),
                    ));
                }
                owner.insert(&t.name, i);
                match index.weight_map.get(&t.name) {
                    Some(&want) if want == i => {}
                    Some(&want) => {
                        return Err(WeightsError::tensor(
                            path,
                            &t.name,
                            format!(
                                "the index maps it to {} but it is in {}",
                                index.shards[want].display(),
                                index.shards[i].display()
                            ),
                        ))
                    }
                    None => {
                        return Err(WeightsError::tensor(
                            path,
                            &t.name,
                            format!(
                                "is in {} but not listed in the index's weight_map",
                                index.shards[i].display()
                            ),
                        ))
                    }
                }
                tensors.push((
                    t.clone(),
                    Slot {
                        source: i,
                        stride: None,
                        scale: None,
                    },
                ));
            }
        }
        if let Some((name, &i)) = index
            .weight_map
            .iter()
            .find(|(n, _)| !owner.contains_key(n.as_str()))
        {
            return Err(WeightsError::tensor(
                path,
                name,
                format!(
                    "the index maps it to {}, which has no such tensor",
                    index.shards[i].display()
                ),
            ));
        }
        let format = Format::SafetensorsSharded {
            shards: sources.len(),
        };
        Self::build(path, format, sources, index.metadata, tensors)
    }

    fn build(
        path: &Path,
        format: Format,
        sources: Vec<Source>,
        metadata: Metadata,
        entries: Vec<(TensorInfo, Slot)>,
    ) -> Result<WeightFile, WeightsError> {
        let (tensors, mut slots): (Vec<TensorInfo>, Vec<Slot>) = entries.into_iter().unzip();
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(WeightsError::tensor(path, &t.name, "appears twice"));
            }
        }
        // ComfyUI scaled fp8: `P.weight` (fp8) is dequantised as fp8 × `P.scale_weight`.
        for (i, t) in tensors.iter().enumerate() {
            if !matches!(t.dtype, DType::F8_E4M3 | DType::F8_E5M2) {
                continue;
            }
            let Some(prefix) = t.name.strip_suffix("weight") else {
                continue;
            };
            let Some(&s) = by_name.get(&format!("{prefix}scale_weight")) else {
                continue;
            };
            let st = &tensors[s];
            if !matches!(st.dtype, DType::F32 | DType::F16 | DType::BF16) || st.numel() != 1 {
                return Err(WeightsError::tensor(
                    path,
                    &st.name,
                    format!(
                        "scale of fp8 weight `{}` must be one f32/f16/bf16 value, found {} {:?}",
                        t.name, st.dtype, st.shape
                    ),
                ));
            }
            slots[i].scale = Some(s);
        }
        Ok(WeightFile {
            path: path.to_path_buf(),
            format,
            sources,
            tensors,
            slots,
            by_name,
            metadata,
        })
    }

    /// The path given to [`WeightFile::open`] (the index, for a sharded set).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Every tensor, in file order (shard by shard for a sharded set). Shapes are PyTorch order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if present.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// GGUF key-values, safetensors `__metadata__`, a sharded index's `metadata`; for PyTorch
    /// checkpoints, `pytorch.state_dict_key` / `pytorch.skipped_keys` when they apply.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Sum of every tensor's stored bytes.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len).sum()
    }

    /// The file holding `name`'s bytes (a shard, for sharded sets).
    pub fn file_of(&self, name: &str) -> Result<&Path, WeightsError> {
        let i = self.index(name)?;
        Ok(&self.sources[self.slots[i].source].path)
    }

    /// The name of a present tensor closest to `name` (for "did you mean" messages).
    pub fn suggest(&self, name: &str) -> Option<&str> {
        self.tensors
            .iter()
            .map(|t| (strsim::levenshtein(name, &t.name), t.name.as_str()))
            .filter(|&(d, n)| d <= (n.len().max(name.len()) / 3).max(2))
            .min()
            .map(|(_, n)| n)
    }

    fn index(&self, name: &str) -> Result<usize, WeightsError> {
        self.by_name.get(name).copied().ok_or_else(|| {
            let hint = self
                .suggest(name)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            WeightsError::tensor(
                &self.path,
                name,
                format!("no such tensor in this file{hint}"),
            )
        })
    }

    /// The stored bytes of `name`, zero-copy from the memory map: little-endian elements or
    /// GGML blocks exactly as in the file. Refused for strided PyTorch views (see [`Self::bytes`]).
    pub fn raw(&self, name: &str) -> Result<&[u8], WeightsError> {
        let i = self.index(name)?;
        let t = &self.tensors[i];
        if self.slots[i].stride.is_some() {
            return Err(WeightsError::tensor(
                &self.path,
                name,
                "is a non-contiguous view in the checkpoint, so it has no single byte range; use bytes() to get a contiguous copy",
            ));
        }
        Ok(&self.sources[self.slots[i].source].map[t.offset as usize..(t.offset + t.len) as usize])
    }

    /// The memory map holding `name`'s stored bytes and their byte range in it, for callers
    /// that keep the bytes in place beyond this borrow (the executor's `disk` homes). `None`
    /// for strided PyTorch views, which have no single range (see [`Self::bytes`]).
    pub fn mapped(&self, name: &str) -> Result<Option<MappedRange>, WeightsError> {
        let i = self.index(name)?;
        if self.slots[i].stride.is_some() {
            return Ok(None);
        }
        let t = &self.tensors[i];
        let map = &self.sources[self.slots[i].source].map;
        Ok(Some((
            map.clone(),
            t.offset as usize..(t.offset + t.len) as usize,
        )))
    }

    /// The stored bytes of `name` in row-major order: borrowed from the map when contiguous,
    /// copied (gathered) for strided PyTorch views.
    pub fn bytes(&self, name: &str) -> Result<Cow<'_, [u8]>, WeightsError> {
        let i = self.index(name)?;
        let t = &self.tensors[i];
        match &self.slots[i].stride {
            None => self.raw(name).map(Cow::Borrowed),
            Some(stride) => {
                let span = pickle::strided_span(t.dtype, &t.shape, stride);
                let map = &self.sources[self.slots[i].source].map;
                let base = &map[t.offset as usize..(t.offset + span) as usize];
                Ok(Cow::Owned(pickle::gather(base, t.dtype, &t.shape, stride)))
            }
        }
    }

    /// The scale of a ComfyUI scaled-fp8 weight (`P.scale_weight` beside fp8 `P.weight`).
    pub fn scale_of(&self, name: &str) -> Result<Option<f32>, WeightsError> {
        let i = self.index(name)?;
        match self.slots[i].scale {
            None => Ok(None),
            Some(s) => {
                let st = &self.tensors[s];
                Ok(Some(convert::to_f32(st.dtype, self.raw(&st.name)?, 1)[0]))
            }
        }
    }

    /// Names of the ComfyUI scaled-fp8 weights (fp8 `P.weight` with a `P.scale_weight`).
    pub fn scaled_fp8_weights(&self) -> Vec<&str> {
        self.tensors
            .iter()
            .zip(&self.slots)
            .filter(|(_, s)| s.scale.is_some())
            .map(|(t, _)| t.name.as_str())
            .collect()
    }

    /// `name` dequantised to f32, in row-major PyTorch order: GGML blocks dequantised
    /// (bit-exact with gguf-py), f16/bf16/fp8 widened exactly, scaled fp8 multiplied by its
    /// scale (`f32(w) * scale`, one rounding), integers converted.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, WeightsError> {
        let i = self.index(name)?;
        let numel = usize::try_from(self.tensors[i].numel()).map_err(|_| {
            WeightsError::tensor(&self.path, name, "too many elements for this machine")
        })?;
        let mut out = vec![0f32; numel];
        self.to_f32_into(name, &mut out)?;
        Ok(out)
    }

    /// [`Self::to_f32`] into a caller's buffer of exactly `numel` values. For large tensors the
    /// first touch of a fresh allocation (page faults) costs several times the dequantisation
    /// itself (benches/RESULTS.md): callers converting many tensors should reuse one buffer.
    pub fn to_f32_into(&self, name: &str, out: &mut [f32]) -> Result<(), WeightsError> {
        let i = self.index(name)?;
        let t = &self.tensors[i];
        if out.len() as u64 != t.numel() {
            return Err(WeightsError::tensor(
                &self.path,
                name,
                format!(
                    "has {} values but the output buffer holds {}",
                    t.numel(),
                    out.len()
                ),
            ));
        }
        let bytes = self.bytes(name)?;
        convert::to_f32_into(t.dtype, &bytes, out);
        if let Some(scale) = self.scale_of(name)? {
            out.iter_mut().for_each(|x| *x *= scale);
        }
        Ok(())
    }

    /// `name` as bf16: stored bf16 bytes as they are, anything else through [`Self::to_f32`]
    /// rounded to nearest even.
    pub fn to_bf16(&self, name: &str) -> Result<Vec<half::bf16>, WeightsError> {
        let i = self.index(name)?;
        if self.tensors[i].dtype == DType::BF16 {
            let b = self.bytes(name)?;
            return Ok(b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                .collect());
        }
        Ok(convert::f32_to_bf16(&self.to_f32(name)?))
    }

    /// `name` as a candle tensor of `dtype` on `device`, shaped as [`TensorInfo::shape`].
    /// Types candle holds natively (f32, f16, bf16, f64, u8, i16, i32, i64, unscaled fp8 e4m3)
    /// are handed over as stored and converted by candle when `dtype` differs; GGML blocks,
    /// scaled fp8 and the rest go through [`Self::to_f32`]. Rounding to bf16/f16 is to nearest
    /// even either way.
    pub fn to_candle(
        &self,
        name: &str,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor, WeightsError> {
        use candle_core::DType as C;
        let i = self.index(name)?;
        let t = &self.tensors[i];
        let shape: Vec<usize> = t
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                WeightsError::tensor(&self.path, name, "shape too large for this machine")
            })?;
        let native = match t.dtype {
            DType::F32 => Some(C::F32),
            DType::F16 => Some(C::F16),
            DType::BF16 => Some(C::BF16),
            DType::F64 => Some(C::F64),
            DType::U8 => Some(C::U8),
            DType::I16 => Some(C::I16),
            DType::I32 => Some(C::I32),
            DType::I64 => Some(C::I64),
            DType::F8_E4M3 if self.slots[i].scale.is_none() => Some(C::F8E4M3),
            _ => None,
        };
        let candle_err =
            |e: candle_core::Error| WeightsError::tensor(&self.path, name, format!("candle: {e}"));
        let tensor = match native {
            Some(stored) => {
                let bytes = self.bytes(name)?;
                candle_core::Tensor::from_raw_buffer(&bytes, stored, &shape, device)
                    .map_err(candle_err)?
            }
            None => candle_core::Tensor::from_vec(self.to_f32(name)?, shape, device)
                .map_err(candle_err)?,
        };
        if tensor.dtype() == dtype {
            Ok(tensor)
        } else {
            tensor.to_dtype(dtype).map_err(candle_err)
        }
    }
}

impl WeightFile {
    /// `name` as a candle quantized tensor on `device`, blocks as stored (for GGUF bases that
    /// travel quantized and are dequantised on the GPU by candle's kernels, which agree bit for
    /// bit with [`Self::to_f32`] on the CPU — tests/gguf_reference.rs checks it). Holds F32, F16,
    /// BF16 and the GGML block types; the shape is [`TensorInfo::shape`].
    pub fn to_qtensor(
        &self,
        name: &str,
        device: &candle_core::Device,
    ) -> Result<candle_core::quantized::QTensor, WeightsError> {
        let i = self.index(name)?;
        let t = &self.tensors[i];
        let g = ggml_type(t.dtype).ok_or_else(|| {
            WeightsError::tensor(
                &self.path,
                name,
                format!(
                    "{} is not a GGML type candle's QTensor holds; use to_candle",
                    t.dtype
                ),
            )
        })?;
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let bytes = self.bytes(name)?;
        // candle reinterprets the bytes as block structs (f16/f32 fields): a mapped tensor at an
        // offset that is not 4-aligned (legal with `general.alignment` 1 or 2, or in
        // safetensors) must be copied to aligned memory first.
        let aligned: Vec<u32>;
        let data: &[u8] = if (bytes.as_ptr() as usize).is_multiple_of(4) {
            &bytes
        } else {
            let mut v = vec![0u32; bytes.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<u32, u8>(&mut v)[..bytes.len()].copy_from_slice(&bytes);
            aligned = v;
            &bytemuck::cast_slice::<u32, u8>(&aligned)[..bytes.len()]
        };
        candle_core::quantized::ggml_file::qtensor_from_ggml(g, data, shape, device)
            .map_err(|e| WeightsError::tensor(&self.path, name, format!("candle: {e}")))
    }
}

fn one_source(tensors: Vec<TensorInfo>) -> Vec<(TensorInfo, Slot)> {
    tensors
        .into_iter()
        .map(|t| {
            (
                t,
                Slot {
                    source: 0,
                    stride: None,
                    scale: None,
                },
            )
        })
        .collect()
}

/// candle's GGML type for a stored dtype, where candle's `QTensor` holds it (F32, F16, BF16 and
/// the Q4_0…Q6_K block types).
pub fn ggml_type(d: DType) -> Option<candle_core::quantized::GgmlDType> {
    use candle_core::quantized::GgmlDType as G;
    Some(match d {
        DType::F32 => G::F32,
        DType::F16 => G::F16,
        DType::BF16 => G::BF16,
        DType::Q4_0 => G::Q4_0,
        DType::Q4_1 => G::Q4_1,
        DType::Q5_0 => G::Q5_0,
        DType::Q5_1 => G::Q5_1,
        DType::Q8_0 => G::Q8_0,
        DType::Q2_K => G::Q2K,
        DType::Q3_K => G::Q3K,
        DType::Q4_K => G::Q4K,
        DType::Q5_K => G::Q5K,
        DType::Q6_K => G::Q6K,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
