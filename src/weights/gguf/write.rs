//! Writing GGUF v3 files: [`GgufWriter`] collects metadata key-values and tensors, checks each
//! as it is added, and writes header, tensor infos, padding and the aligned data in one go,
//! atomically (a temporary file renamed over the target, [`crate::output::write_atomic`]).
//!
//! The bytes are laid out as llama.cpp's gguf-py `GGUFWriter` lays them out: key-values in the
//! order they were added (`general.architecture` first), tensor infos in the order the tensors
//! were added with `ne` in ggml order (the PyTorch shape reversed), each tensor's data at an
//! offset that is a multiple of the alignment (`general.alignment` if added as a `u32` power of
//! two, else 32) and zero-padded to the next multiple, the last one included. Rewriting a
//! gguf-py file with the same key order gives the same bytes (the tests check the committed
//! fixtures).
//!
//! Tensors are added as stored bytes of any GGML type mgpu reads ([`GgufWriter::add_tensor`])
//! or as f32 values encoded here ([`GgufWriter::add_f32`]): F32, F16 and BF16 rounded to
//! nearest even, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 by llama.cpp's reference quantisers
//! ([`super::quantize`], [`super::dequant::quantize_q8_0`]), Q4_K by a simpler one-pass
//! quantiser ([`super::quantize::quantize_q4_k`]).
//! [`city96_type`] is the type city96's ComfyUI-GGUF `convert.py` gives each tensor of a
//! diffusion-model state dict. The writer holds the data in memory until [`GgufWriter::finish`]:
//! it is meant for test, tiny and converted models, not for streaming tens of gigabytes.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::dequant::quantize_q8_0;
use super::quantize::{
    quantize_q4_0, quantize_q4_1, quantize_q4_k, quantize_q5_0, quantize_q5_1, Quantizer,
};
use super::{ValueType, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::weights::dtype::ggml_supported_names;
use crate::weights::lora::math;
use crate::weights::{DType, MetaArray, MetaValue, WeightsError};

/// `general.quantization_version` of files with GGML block types (gguf-py's
/// `GGML_QUANT_VERSION`).
pub const QUANTIZATION_VERSION: u32 = 2;
/// `general.file_type` of a file quantised to Q8_0 (llama.cpp's `LLAMA_FTYPE_MOSTLY_Q8_0`),
/// as city96's FLUX Q8_0 files carry it.
pub const FILE_TYPE_MOSTLY_Q8_0: u32 = 7;

/// Name parts whose `.weight` tensors city96's `convert.py` keeps at full precision: the
/// embedders and the final layer of FLUX (and of SD's UNets).
const CITY96_FULL_PRECISION: &[&str] = &[
    "time_embedding.",
    "add_embedding.",
    "time_in.",
    "txt_in.",
    "vector_in.",
    "img_in.",
    "guidance_in.",
    "final_layer.",
];

/// The type city96's ComfyUI-GGUF `tools/convert.py` stores a state-dict tensor as when it
/// converts a checkpoint to `quant` (Q8_0 for the FLUX Q8_0 files): `quant` for tensors of 2 or
/// more dimensions, F32 (lossless for a bf16 checkpoint) for 1-D tensors (biases, norm scales),
/// the embedders' and final layer's weights (`img_in.`, `txt_in.`, `time_in.`, `vector_in.`,
/// `guidance_in.`, `final_layer.`, `time_embedding.`, `add_embedding.`), 4-D convolution
/// kernels that are 3×3 or 1×1 or have 4 input or output channels, and tensors whose rows are
/// not a whole number of `quant`'s blocks (gguf-py refuses to quantise those; convert.py falls
/// back to F32).
pub fn city96_type(name: &str, shape: &[u64], quant: DType) -> DType {
    let conv_kept =
        shape.len() == 4 && (shape[0].min(shape[1]) == 4 || shape[3] == 3 || shape[3] == 1);
    let kept = name.contains(".weight") && CITY96_FULL_PRECISION.iter().any(|p| name.contains(p));
    let row = shape.last().copied().unwrap_or(1);
    if shape.len() < 2 || conv_kept || kept || row % quant.block().0 != 0 {
        DType::F32
    } else {
        quant
    }
}

/// The quantiser [`GgufWriter::add_f32`] encodes `dtype` with, if it has one.
fn quantizer(dtype: DType) -> Option<Quantizer> {
    Some(match dtype {
        DType::Q4_0 => quantize_q4_0,
        DType::Q4_1 => quantize_q4_1,
        DType::Q5_0 => quantize_q5_0,
        DType::Q5_1 => quantize_q5_1,
        DType::Q8_0 => quantize_q8_0,
        DType::Q4_K => quantize_q4_k,
        _ => return None,
    })
}

/// One tensor waiting to be written.
struct Pending {
    name: String,
    /// PyTorch order.
    shape: Vec<u64>,
    ggml_id: u32,
    data: Vec<u8>,
}

/// A GGUF v3 file being assembled; nothing touches the disk before [`Self::finish`].
///
/// ```no_run
/// # fn main() -> Result<(), mgpu::weights::WeightsError> {
/// use mgpu::weights::{gguf::GgufWriter, DType, MetaValue};
/// let mut w = GgufWriter::new("model-Q8_0.gguf", "flux");
/// w.add_metadata("general.quantization_version", MetaValue::U32(2))?;
/// w.add_f32("img_in.bias", &[32], DType::F32, &[0.0; 32])?;
/// w.add_f32("double_blocks.0.img_attn.qkv.weight", &[96, 32], DType::Q8_0, &vec![0.5; 96 * 32])?;
/// let bytes = w.finish()?;
/// # let _ = bytes; Ok(()) }
/// ```
pub struct GgufWriter {
    path: PathBuf,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<Pending>,
    names: HashSet<String>,
}

impl GgufWriter {
    /// A writer for `path` whose first key-value is `general.architecture = architecture`.
    pub fn new(path: impl Into<PathBuf>, architecture: &str) -> Self {
        GgufWriter {
            path: path.into(),
            alignment: DEFAULT_ALIGNMENT,
            metadata: vec![(
                "general.architecture".into(),
                MetaValue::String(architecture.into()),
            )],
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// The file this writer writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a key-value after those already added. `general.alignment` must be a `u32` power
    /// of two and sets the alignment of the data; a key may be added once.
    pub fn add_metadata(&mut self, key: &str, value: MetaValue) -> Result<(), WeightsError> {
        if self.metadata.iter().any(|(k, _)| k == key) {
            return Err(WeightsError::format(
                &self.path,
                format!("metadata key `{key}` added twice"),
            ));
        }
        if key == "general.alignment" {
            match value {
                MetaValue::U32(a) if a.is_power_of_two() => self.alignment = a.into(),
                _ => {
                    return Err(WeightsError::format(
                        &self.path,
                        format!(
                            "general.alignment = {value} ({}) is not a valid alignment: expected a power of two as u32",
                            value.type_name()
                        ),
                    ))
                }
            }
        }
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Adds a tensor as stored bytes: `data` holds `shape` (PyTorch order, at most 4
    /// dimensions) of `dtype` exactly as GGUF stores it (little-endian values or GGML blocks
    /// along the last dimension). Any type mgpu reads from GGUF can be written.
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[u64],
        dtype: DType,
        data: Vec<u8>,
    ) -> Result<(), WeightsError> {
        let (ggml_id, want) = self.check(name, shape, dtype)?;
        if data.len() as u64 != want {
            return Err(self.bad(
                name,
                format!(
                    "{} bytes given, but {shape:?} values of {dtype} take {want}",
                    data.len()
                ),
            ));
        }
        self.names.insert(name.to_string());
        self.tensors.push(Pending {
            name: name.to_string(),
            shape: shape.to_vec(),
            ggml_id,
            data,
        });
        Ok(())
    }

    /// Adds a tensor from f32 values (row-major, PyTorch `shape`) encoded as `dtype`: F32 as
    /// is, F16 and BF16 rounded to nearest even (values too large for them are refused, not
    /// stored as infinities), Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 by llama.cpp's reference
    /// quantisers and Q4_K by [`quantize_q4_k`]'s one-pass quantiser. For the block types rows
    /// (the last dimension) must be whole blocks, 32 values (256 for Q4_K), and every value
    /// must be finite.
    pub fn add_f32(
        &mut self,
        name: &str,
        shape: &[u64],
        dtype: DType,
        values: &[f32],
    ) -> Result<(), WeightsError> {
        self.check(name, shape, dtype)?;
        let numel: u64 = shape.iter().product();
        if values.len() as u64 != numel {
            return Err(self.bad(
                name,
                format!(
                    "{} values given for shape {shape:?} ({numel} values)",
                    values.len()
                ),
            ));
        }
        let data = match dtype {
            DType::F32 | DType::F16 | DType::BF16 => {
                let mut out = vec![0u8; values.len() * dtype.block().1 as usize];
                let infinite = math::encode(dtype, values, None, &mut out);
                let given = values.iter().filter(|v| v.is_infinite()).count() as u64;
                if infinite > given {
                    return Err(self.bad(
                        name,
                        format!(
                            "{} finite values are too large for {dtype} (they would be stored as infinities)",
                            infinite - given
                        ),
                    ));
                }
                out
            }
            other => {
                let Some(quantize) = quantizer(other) else {
                    return Err(self.bad(
                        name,
                        format!("add_f32 encodes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q4_K, not {other}; add {other} data as stored bytes with add_tensor"),
                    ));
                };
                // `check` has made the rows whole blocks, so `values` is whole blocks too.
                let bad = values.iter().filter(|v| !v.is_finite()).count();
                if bad > 0 {
                    return Err(self.bad(
                        name,
                        format!("{bad} values are NaN or infinite; {other} cannot store them"),
                    ));
                }
                quantize(values)
            }
        };
        self.add_tensor(name, shape, dtype, data)
    }

    /// The checks every new tensor passes; returns its GGML type id and stored size in bytes.
    fn check(&self, name: &str, shape: &[u64], dtype: DType) -> Result<(u32, u64), WeightsError> {
        if self.names.contains(name) {
            return Err(self.bad(name, "added twice".into()));
        }
        let Some(id) = dtype.ggml_id().filter(|&id| DType::from_ggml(id).is_some()) else {
            return Err(self.bad(
                name,
                format!(
                    "{dtype} cannot be written to GGUF (GGML types: {})",
                    ggml_supported_names()
                ),
            ));
        };
        if shape.len() > MAX_DIMS as usize {
            return Err(self.bad(
                name,
                format!(
                    "shape {shape:?} has {} dimensions; GGUF holds at most {MAX_DIMS} (city96 stores such tensors flattened, with the real shape in `comfy.gguf.orig_shape.<name>`)",
                    shape.len()
                ),
            ));
        }
        let (block, _) = dtype.block();
        let row = shape.last().copied().unwrap_or(1);
        if block > 1 && row % block != 0 {
            return Err(self.bad(
                name,
                format!("row length {row} of shape {shape:?} is not a multiple of {dtype}'s {block}-value block"),
            ));
        }
        shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| dtype.storage_bytes(n))
            .map(|bytes| (id, bytes))
            .ok_or_else(|| {
                self.bad(
                    name,
                    format!("shape {shape:?} of {dtype} overflows 64-bit sizes"),
                )
            })
    }

    fn bad(&self, name: &str, message: String) -> WeightsError {
        WeightsError::tensor(&self.path, name, message)
    }

    /// The header, tensor infos and the padding before the data.
    fn header(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut h, key);
            h.extend_from_slice(&(value_type(value) as u32).to_le_bytes());
            put_value(&mut h, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut h, &t.name);
            h.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ggml_id.to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = self.align(offset + t.data.len() as u64);
        }
        h.resize(self.align(h.len() as u64) as usize, 0);
        h
    }

    fn align(&self, n: u64) -> u64 {
        n.div_ceil(self.alignment) * self.alignment
    }

    /// Writes the file (atomically: `path` keeps its old content if anything fails) and
    /// returns its size in bytes.
    pub fn finish(self) -> Result<u64, WeightsError> {
        let header = self.header();
        let mut size = header.len() as u64;
        for t in &self.tensors {
            size += self.align(t.data.len() as u64);
        }
        crate::output::write_atomic(&self.path, |w| {
            w.write_all(&header)?;
            for t in &self.tensors {
                w.write_all(&t.data)?;
                let pad = self.align(t.data.len() as u64) - t.data.len() as u64;
                std::io::copy(&mut std::io::repeat(0).take(pad), w)?;
            }
            Ok(())
        })
        .map_err(|e| match e {
            crate::output::OutputError::Io { path, op, source } => {
                WeightsError::Write { path, op, source }
            }
            other => WeightsError::format(&self.path, other.to_string()),
        })?;
        Ok(size)
    }
}

fn put_string(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn value_type(v: &MetaValue) -> ValueType {
    match v {
        MetaValue::U8(_) => ValueType::U8,
        MetaValue::I8(_) => ValueType::I8,
        MetaValue::U16(_) => ValueType::U16,
        MetaValue::I16(_) => ValueType::I16,
        MetaValue::U32(_) => ValueType::U32,
        MetaValue::I32(_) => ValueType::I32,
        MetaValue::U64(_) => ValueType::U64,
        MetaValue::I64(_) => ValueType::I64,
        MetaValue::F32(_) => ValueType::F32,
        MetaValue::F64(_) => ValueType::F64,
        MetaValue::Bool(_) => ValueType::Bool,
        MetaValue::String(_) => ValueType::String,
        MetaValue::Array(_) => ValueType::Array,
    }
}

fn element_type(a: &MetaArray) -> ValueType {
    match a {
        MetaArray::U8(_) => ValueType::U8,
        MetaArray::I8(_) => ValueType::I8,
        MetaArray::U16(_) => ValueType::U16,
        MetaArray::I16(_) => ValueType::I16,
        MetaArray::U32(_) => ValueType::U32,
        MetaArray::I32(_) => ValueType::I32,
        MetaArray::U64(_) => ValueType::U64,
        MetaArray::I64(_) => ValueType::I64,
        MetaArray::F32(_) => ValueType::F32,
        MetaArray::F64(_) => ValueType::F64,
        MetaArray::Bool(_) => ValueType::Bool,
        MetaArray::String(_) => ValueType::String,
        MetaArray::Array(_) => ValueType::Array,
    }
}

fn put_value(h: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => h.push(*x),
        MetaValue::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => h.push(u8::from(*x)),
        MetaValue::String(s) => put_string(h, s),
        MetaValue::Array(a) => put_array(h, a),
    }
}

/// Element type, count, elements (an array of arrays repeats this for each element).
fn put_array(h: &mut Vec<u8>, a: &MetaArray) {
    h.extend_from_slice(&(element_type(a) as u32).to_le_bytes());
    h.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                h.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        MetaArray::U8(v) => h.extend_from_slice(v),
        MetaArray::I8(v) => le!(v),
        MetaArray::U16(v) => le!(v),
        MetaArray::I16(v) => le!(v),
        MetaArray::U32(v) => le!(v),
        MetaArray::I32(v) => le!(v),
        MetaArray::U64(v) => le!(v),
        MetaArray::I64(v) => le!(v),
        MetaArray::F32(v) => le!(v),
        MetaArray::F64(v) => le!(v),
        MetaArray::Bool(v) => h.extend(v.iter().map(|&b| u8::from(b))),
        MetaArray::String(v) => {
            for s in v {
                put_string(h, s);
            }
        }
        MetaArray::Array(v) => {
            for inner in v {
                put_array(h, inner);
            }
        }
    }
}

#[cfg(test)]
mod tests;
