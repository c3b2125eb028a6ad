//! PyTorch checkpoints (`.bin`, `.pt`, `.pth`, `.ckpt` written by `torch.save` since torch 1.6):
//! a zip archive holding `<root>/data.pkl` (a pickle describing the object) and one
//! `<root>/data/<key>` entry per storage, stored uncompressed. [`read`] unpickles `data.pkl`
//! with the restricted [`vm`] (tensors only, no code), finds the state dict — the top-level dict
//! if it holds tensors, else the dict under `state_dict`, `model`, `module` or
//! `model_state_dict` (Lightning `.ckpt` files, training scripts) — and turns every tensor into
//! a [`TensorInfo`] pointing into the archive's bytes, checked against its storage's bounds.
//!
//! Tensors may be views: several may share a storage (tied weights) and a view may start at an
//! offset or be strided (a transposed weight). Contiguous tensors are served zero-copy from the
//! memory map; strided ones are copied to contiguous order by [`gather`] when read. The legacy
//! pre-1.6 format (a bare pickle stream) is refused with a clear message.

pub mod vm;

use std::path::Path;
use std::rc::Rc;

use super::{DType, TensorInfo, WeightsError};
use vm::{PickleError, TensorRef, Value};

/// Keys under which checkpoints nest their state dict, in the order they are tried.
pub const NESTED_KEYS: &[&str] = &["state_dict", "model", "module", "model_state_dict"];

/// How a tensor's elements sit in its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Row-major and dense: `TensorInfo::offset..+len` is the whole tensor.
    Contiguous,
    /// A strided view: element `idx` is at `TensorInfo::offset + Σ idx_i * stride_i * elem_size`.
    Strided { stride: Vec<u64> },
}

/// A tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `offset` is the absolute position of element 0; `len` is `numel * elem_size`.
    pub info: TensorInfo,
    pub layout: Layout,
}

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// In the order of the state dict.
    pub tensors: Vec<Entry>,
    /// Where the state dict was: `None` for the top level, else the key it was under.
    pub nested_under: Option<String>,
    /// Keys of the state dict whose values are not tensors (skipped).
    pub skipped: Vec<String>,
}

/// The first bytes of a zip archive.
pub fn has_zip_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// Whether `bytes` look like the legacy (pre-1.6) torch format: a bare pickle (protocol 2).
pub fn is_legacy_pickle(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x80\x02")
        || bytes.starts_with(b"\x80\x03")
        || bytes.starts_with(b"\x80\x04")
}

/// Reads the checkpoint whose complete contents are `bytes` (a memory map of `path`).
pub fn read(path: &Path, bytes: &[u8]) -> Result<Checkpoint, WeightsError> {
    let fail = |m: String| WeightsError::format(path, m);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| fail(format!("not a readable zip archive: {e}")))?;
    let pkl_names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.to_string())
        .collect();
    let root = match &pkl_names[..] {
        [one] => one.trim_end_matches("data.pkl").to_string(),
        [] => {
            return Err(fail(
                "zip archive without `<name>/data.pkl`: not a PyTorch checkpoint".into(),
            ))
        }
        many => {
            return Err(fail(format!(
                "zip archive with {} `data.pkl` records: ambiguous checkpoint",
                many.len()
            )))
        }
    };
    let mut entry = |name: &str| -> Result<Option<(u64, u64)>, WeightsError> {
        let Some(i) = zip.index_for_name(name) else {
            return Ok(None);
        };
        let f = zip
            .by_index_raw(i)
            .map_err(|e| fail(format!("archive entry `{name}`: {e}")))?;
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(fail(format!(
                "archive entry `{name}` is compressed ({}); torch.save stores entries uncompressed and mgpu maps them directly — re-save the checkpoint with torch.save",
                f.compression()
            )));
        }
        let start = f
            .data_start()
            .ok_or_else(|| fail(format!("archive entry `{name}`: data position unknown")))?;
        let size = f.compressed_size();
        if start
            .checked_add(size)
            .is_none_or(|e| e > bytes.len() as u64)
        {
            return Err(fail(format!(
                "archive entry `{name}` runs past the end of the file (truncated)"
            )));
        }
        Ok(Some((start, size)))
    };

    if let Some((s, n)) = entry(&format!("{root}byteorder"))? {
        let order = &bytes[s as usize..(s + n) as usize];
        if order != b"little" {
            return Err(fail(format!(
                "checkpoint byte order is `{}`; only little-endian checkpoints are supported",
                String::from_utf8_lossy(order)
            )));
        }
    }
    let (s, n) = entry(&format!("{root}data.pkl"))?.expect("data.pkl is listed");
    let pickle = &bytes[s as usize..(s + n) as usize];
    let value = vm::unpickle(pickle).map_err(|e| match e {
        PickleError::Refused { module, name } => WeightsError::RefusedGlobal {
            path: path.to_path_buf(),
            module,
            name,
        },
        other => fail(format!("{root}data.pkl: {other}")),
    })?;

    let (dict, nested_under) = find_state_dict(&value).ok_or_else(|| {
        fail(format!(
            "no state dict found: the checkpoint holds a {} without tensors at the top level or under {}",
            value.kind(),
            NESTED_KEYS.join(", ")
        ))
    })?;
    let dict = dict.borrow();
    let mut tensors = Vec::new();
    let mut skipped = Vec::new();
    let mut storage_spans = std::collections::HashMap::new();
    for (k, v) in &dict.entries {
        let name = match k {
            Value::Str(s) => s.to_string(),
            other => format!("{other:?}"),
        };
        let Value::Tensor(t) = v else {
            skipped.push(name);
            continue;
        };
        let key = &t.storage.key;
        let span = match storage_spans.get(key) {
            Some(s) => *s,
            None => {
                let s = entry(&format!("{root}data/{key}"))?.ok_or_else(|| {
                    WeightsError::tensor(
                        path,
                        &name,
                        format!("its storage `{root}data/{key}` is missing from the archive"),
                    )
                })?;
                storage_spans.insert(key.clone(), s);
                s
            }
        };
        tensors.push(tensor_entry(path, &name, t, span)?);
    }
    Ok(Checkpoint {
        tensors,
        nested_under,
        skipped,
    })
}

fn find_state_dict(v: &Value) -> Option<(Rc<std::cell::RefCell<vm::Dict>>, Option<String>)> {
    let Value::Dict(d) = v else { return None };
    let has_tensors = |d: &vm::Dict| d.entries.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    if has_tensors(&d.borrow()) {
        return Some((d.clone(), None));
    }
    for key in NESTED_KEYS {
        let b = d.borrow();
        let found = b.entries.iter().find_map(|(k, v)| match (k, v) {
            (Value::Str(s), Value::Dict(inner)) if &**s == *key && has_tensors(&inner.borrow()) => {
                Some(inner.clone())
            }
            _ => None,
        });
        if let Some(inner) = found {
            return Some((inner, Some(key.to_string())));
        }
    }
    None
}

/// Checks a tensor view against its storage's bytes and locates it in the file.
fn tensor_entry(
    path: &Path,
    name: &str,
    t: &TensorRef,
    (start, size): (u64, u64),
) -> Result<Entry, WeightsError> {
    let bad = |m: String| WeightsError::tensor(path, name, m);
    let (_, es) = t.dtype.block();
    let storage_elems = match t.storage.dtype {
        Some(_) => t.storage.numel,
        None => t.storage.numel / es,
    };
    let declared = t
        .storage
        .numel
        .checked_mul(if t.storage.dtype.is_some() { es } else { 1 });
    if declared != Some(size) {
        return Err(bad(format!(
            "storage `{}` should hold {} bytes but its archive entry has {size}",
            t.storage.key,
            declared.map_or("an overflowing number of".into(), |d| d.to_string())
        )));
    }
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("size {:?} overflows", t.size)))?;
    if numel > 0 {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.storage_offset, |a, (&n, &s)| {
                a.checked_add((n - 1).checked_mul(s)?)
            })
            .ok_or_else(|| bad("view bounds overflow".into()))?;
        if last >= storage_elems {
            return Err(bad(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {storage_elems}",
                t.storage_offset, t.size, t.stride
            )));
        }
    }
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&n, &s) in t.size.iter().zip(&t.stride).rev() {
            if n != 1 && s != expect {
                ok = false;
            }
            expect = expect.saturating_mul(n);
        }
        ok || numel == 0
    };
    let info = TensorInfo {
        name: name.to_string(),
        dtype: t.dtype,
        shape: t.size.clone(),
        offset: start + t.storage_offset.min(storage_elems) * es,
        len: numel * es,
    };
    let layout = if contiguous {
        Layout::Contiguous
    } else {
        Layout::Strided {
            stride: t.stride.clone(),
        }
    };
    Ok(Entry { info, layout })
}

/// Copies a strided view to contiguous row-major bytes. `base` starts at element 0 of the view
/// (the file bytes from `TensorInfo::offset`); bounds were checked when the entry was built.
pub fn gather(base: &[u8], dtype: DType, shape: &[u64], stride: &[u64]) -> Vec<u8> {
    let es = dtype.block().1 as usize;
    let numel: u64 = shape.iter().product();
    let mut out = Vec::with_capacity(numel as usize * es);
    if numel == 0 {
        return out;
    }
    let mut idx = vec![0u64; shape.len()];
    loop {
        let at = idx.iter().zip(stride).map(|(i, s)| i * s).sum::<u64>() as usize * es;
        out.extend_from_slice(&base[at..at + es]);
        // Odometer increment, last dimension fastest.
        let mut d = shape.len();
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Bytes a strided view spans from its element 0 (for bounds checks of `gather`'s `base`).
pub fn strided_span(dtype: DType, shape: &[u64], stride: &[u64]) -> u64 {
    if shape.contains(&0) {
        return 0;
    }
    let last: u64 = shape.iter().zip(stride).map(|(&n, &s)| (n - 1) * s).sum();
    (last + 1) * dtype.block().1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_transposed() {
        // base is a 2x3 row-major matrix [[0,1,2],[3,4,5]] of u8; its transpose has shape
        // [3, 2] and strides [1, 3].
        let base = [0u8, 1, 2, 3, 4, 5];
        assert_eq!(
            gather(&base, DType::U8, &[3, 2], &[1, 3]),
            [0, 3, 1, 4, 2, 5]
        );
        assert_eq!(strided_span(DType::U8, &[3, 2], &[1, 3]), 6);
        assert_eq!(gather(&base, DType::U8, &[0, 2], &[1, 3]), Vec::<u8>::new());
        assert_eq!(gather(&base, DType::U8, &[], &[]), [0]);
    }
}
