//! GGUF files (llama.cpp's format, also used by city96's ComfyUI-GGUF for FLUX/Wan checkpoints):
//! header, metadata key-values, tensor infos and the aligned data section, versions 2 and 3,
//! little-endian. [`parse`] reads all of it from the bytes of a memory map and validates it
//! before any tensor data is touched; [`dequant`] turns the block-quantised data into f32;
//! [`write::GgufWriter`] writes v3 files (what `mgpu make-tiny --format gguf` uses).
//!
//! Layout (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>): `GGUF` magic, `u32`
//! version, `u64` tensor count, `u64` key-value count, the key-values (`string` key, `u32` value
//! type, value), the tensor infos (`string` name, `u32` n_dims, `u64` ne\[n_dims\], `u32` ggml
//! type, `u64` offset), padding to `general.alignment` (default 32), then the data; each
//! tensor's offset is relative to the start of the data and a multiple of the alignment.
//!
//! **Dimension order.** GGUF stores `ne[0]` first, the fastest-varying dimension (ggml order),
//! so a PyTorch `[out, in]` weight is stored as `ne = [in, out]`. [`TensorInfo::shape`] is
//! always the PyTorch order (`ne` reversed), and block quantisation runs along the last
//! PyTorch dimension. City96's ComfyUI-GGUF stores tensors of more than 4 dimensions flattened
//! and records the real shape in `comfy.gguf.orig_shape.<name>` (array of i32, PyTorch order);
//! when present (and consistent) that shape is the one reported.
//!
//! Every length read from the file is checked against the bytes left before anything is
//! allocated: a string claiming 2^62 bytes, or a tensor count of 2^40, is an error, not an
//! allocation.

pub mod dequant;
pub mod quantize;
pub mod write;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use super::dtype::{ggml_supported_names, ggml_type_name};
use super::meta::{MetaArray, MetaValue, Metadata};
use super::{DType, TensorInfo, WeightsError};

pub use write::{city96_type, GgufWriter, FILE_TYPE_MOSTLY_Q8_0, QUANTIZATION_VERSION};

/// `GGUF` as the first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are refused (stack safety on hostile files).
const MAX_DEPTH: usize = 16;

/// A validated GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    pub metadata: Metadata,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or [`DEFAULT_ALIGNMENT`].
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_start: u64,
}

/// GGUF value type ids (the discriminants are the ids files store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type takes on disk.
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, at: usize, msg: impl std::fmt::Display) -> WeightsError {
        WeightsError::format(self.path, format!("at byte {at}: {msg}"))
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], WeightsError> {
        if n > self.remaining() {
            return Err(self.err(
                self.pos,
                format!(
                    "{what} needs {n} bytes but only {} are left in the {}-byte file (truncated or corrupt)",
                    self.remaining(),
                    self.buf.len()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WeightsError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, WeightsError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, WeightsError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string's bytes.
    fn string_bytes(&mut self, what: &str) -> Result<&'a [u8], WeightsError> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > self.remaining() {
            return Err(self.err(
                at,
                format!(
                    "{what}: string length {n} exceeds the {} bytes left in the file",
                    self.remaining()
                ),
            ));
        }
        self.take(n, what)
    }

    fn utf8(&mut self, what: &str) -> Result<String, WeightsError> {
        let at = self.pos;
        let b = self.string_bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|e| self.err(at, format!("{what} is not valid UTF-8: {e}")))
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<MetaValue, WeightsError> {
        use ValueType as T;
        Ok(match ty {
            T::U8 => MetaValue::U8(self.array::<1>(key)?[0]),
            T::I8 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            T::U16 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            T::I16 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            T::U32 => MetaValue::U32(self.u32(key)?),
            T::I32 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            T::U64 => MetaValue::U64(self.u64(key)?),
            T::I64 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            T::F32 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            T::F64 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            T::Bool => MetaValue::Bool(self.bool(key)?),
            T::String => {
                MetaValue::String(String::from_utf8_lossy(self.string_bytes(key)?).into_owned())
            }
            T::Array => MetaValue::Array(self.meta_array(key, depth)?),
        })
    }

    fn bool(&mut self, key: &str) -> Result<bool, WeightsError> {
        let at = self.pos;
        match self.array::<1>(key)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(at, format!("`{key}`: bool value {b} is neither 0 nor 1"))),
        }
    }

    fn meta_array(&mut self, key: &str, depth: usize) -> Result<MetaArray, WeightsError> {
        if depth >= MAX_DEPTH {
            return Err(self.err(
                self.pos,
                format!("`{key}`: arrays nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let at = self.pos;
        let type_id = self.u32(key)?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| {
            self.err(
                at,
                format!("`{key}`: unknown array element type {type_id} (valid: 0..=12)"),
            )
        })?;
        let n = self.u64(key)?;
        let need = n.saturating_mul(ty.min_size());
        if need > self.remaining() {
            return Err(self.err(
                at,
                format!(
                    "`{key}`: array of {n} {} values needs at least {need} bytes but only {} are left",
                    type_name(ty),
                    self.remaining()
                ),
            ));
        }
        // `n` is now at most the bytes left, so these allocations are bounded by the file size.
        let n = n as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let bytes = self.take((n * std::mem::size_of::<$t>()) as u64, key)?;
                MetaArray::$variant(
                    bytes
                        .chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => MetaArray::U8(self.take(n as u64, key)?.to_vec()),
            ValueType::I8 => {
                MetaArray::I8(self.take(n as u64, key)?.iter().map(|&b| b as i8).collect())
            }
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(key)?);
                }
                MetaArray::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(String::from_utf8_lossy(self.string_bytes(key)?).into_owned());
                }
                MetaArray::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.meta_array(key, depth + 1)?);
                }
                MetaArray::Array(v)
            }
        })
    }
}

fn type_name(ty: ValueType) -> &'static str {
    use ValueType::*;
    match ty {
        U8 => "u8",
        I8 => "i8",
        U16 => "u16",
        I16 => "i16",
        U32 => "u32",
        I32 => "i32",
        F32 => "f32",
        Bool => "bool",
        String => "string",
        Array => "array",
        U64 => "u64",
        I64 => "i64",
        F64 => "f64",
    }
}

/// Whether `bytes` starts like a GGUF file.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Parses and validates the GGUF file whose complete contents are `bytes` (normally a memory
/// map). Nothing outside the header is read.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Header, WeightsError> {
    let mut c = Cursor {
        path,
        buf: bytes,
        pos: 0,
    };
    let magic = c.array::<4>("the GGUF magic")?;
    if magic != MAGIC {
        return Err(c.err(
            0,
            format!("magic {magic:02x?} is not `GGUF`: not a GGUF file"),
        ));
    }
    let version = c.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(c.err(
                4,
                "GGUF version 1 (2023 pre-release format) is not supported (supported: 2, 3)",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(c.err(
                4,
                "big-endian GGUF file: only little-endian GGUF is supported",
            ))
        }
        v => return Err(c.err(4, format!("unknown GGUF version {v} (supported: 2, 3)"))),
    }
    let n_tensors = c.u64("the tensor count")?;
    let n_kv = c.u64("the metadata count")?;
    // Each key-value takes at least 13 bytes, each tensor info at least 24: refuse counts the
    // file cannot hold before reserving anything for them.
    let need = n_kv
        .saturating_mul(13)
        .saturating_add(n_tensors.saturating_mul(24));
    if need > c.remaining() {
        return Err(c.err(
            8,
            format!(
                "header declares {n_tensors} tensors and {n_kv} metadata entries, which need at least {need} bytes, but only {} are left",
                c.remaining()
            ),
        ));
    }

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let at = c.pos;
        let key = c.utf8("a metadata key")?;
        let type_at = c.pos;
        let type_id = c.u32(&key)?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| {
            c.err(
                type_at,
                format!("`{key}`: unknown value type {type_id} (valid: 0..=12)"),
            )
        })?;
        let value = c.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(c.err(at, format!("metadata key `{key}` appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && matches!(v, MetaValue::U8(_) | MetaValue::U16(_) | MetaValue::U32(_) | MetaValue::U64(_)) => a,
            _ => {
                return Err(WeightsError::format(
                    path,
                    format!("general.alignment = {v} ({}) is not a valid alignment: expected a power of two as u32", v.type_name()),
                ))
            }
        },
    };

    let mut raw = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let at = c.pos;
        let name = c.utf8("a tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(c.err(
                at,
                format!("tensor `{name}` has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(c.u64(&name)?);
        }
        let type_at = c.pos;
        let type_id = c.u32(&name)?;
        let offset = c.u64(&name)?;
        raw.push((at, name, ne, type_at, type_id, offset));
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;

    let mut seen = HashSet::with_capacity(raw.len());
    let mut tensors = Vec::with_capacity(raw.len());
    for (at, name, ne, type_at, type_id, offset) in raw {
        if !seen.insert(name.clone()) {
            return Err(c.err(at, format!("tensor `{name}` appears twice")));
        }
        let bad = |m: String| WeightsError::tensor(path, &name, m);
        let dtype = DType::from_ggml(type_id).ok_or_else(|| {
            let what = match ggml_type_name(type_id) {
                Some(n) => format!("unsupported type {n}"),
                None => format!("unknown GGML type id {type_id}"),
            };
            WeightsError::format(
                path,
                format!(
                    "at byte {type_at}: {what} in tensor `{name}` (supported: {})",
                    ggml_supported_names()
                ),
            )
        })?;
        let numel = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("dimensions {ne:?} overflow a 64-bit element count")))?;
        let (block, _) = dtype.block();
        if block > 1 && ne.first().is_some_and(|&row| row % block != 0) {
            return Err(bad(format!(
                "row length {} of this {dtype} tensor is not a multiple of its {block}-value block",
                ne[0]
            )));
        }
        let len = dtype.storage_bytes(numel).ok_or_else(|| {
            bad(format!(
                "{numel} values of {dtype} do not fit in 64-bit byte sizes or whole blocks"
            ))
        })?;
        if offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {offset} is not a multiple of the file's alignment {alignment}"
            )));
        }
        let start = data_start
            .checked_add(offset)
            .filter(|s| s.checked_add(len).is_some_and(|e| e <= file_len))
            .ok_or_else(|| {
                bad(format!(
                    "data [{offset}, +{len}) relative to the data section at {data_start} runs past the end of the {file_len}-byte file (truncated or corrupt)"
                ))
            })?;
        let mut shape: Vec<u64> = ne.iter().rev().copied().collect();
        if let Some(orig) = orig_shape(path, &metadata, &name, numel)? {
            shape = orig;
        }
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            offset: start,
            len,
        });
    }

    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.len > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    super::check_no_overlap(path, &by_offset)?;
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

/// City96's `comfy.gguf.orig_shape.<name>`: the PyTorch shape of a tensor stored reshaped.
fn orig_shape(
    path: &Path,
    meta: &Metadata,
    name: &str,
    numel: u64,
) -> Result<Option<Vec<u64>>, WeightsError> {
    let key = format!("comfy.gguf.orig_shape.{name}");
    let Some(v) = meta.get(&key) else {
        return Ok(None);
    };
    let bad = |m: String| WeightsError::tensor(path, name, format!("metadata `{key}` = {v}: {m}"));
    let MetaValue::Array(MetaArray::I32(dims)) = v else {
        return Err(bad(format!(
            "expected an array of i32, found {}",
            v.type_name()
        )));
    };
    let shape = dims
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| bad("negative dimension".into()))?;
    let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    if n != Some(numel) {
        return Err(bad(format!(
            "holds {n:?} values but the stored tensor has {numel}"
        )));
    }
    Ok(Some(shape))
}

#[cfg(test)]
mod tests;
