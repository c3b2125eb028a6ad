//! safetensors headers: `u64` little-endian header length, a JSON header, then the data.
//!
//! [`read_header`] reads only the header (at most [`MAX_HEADER_BYTES`]) and validates it fully
//! against the file's length before anything else reads tensor data: known dtypes, shapes whose
//! element count matches the byte range, ranges inside the data section, no two tensors
//! overlapping. Format reference: <https://github.com/huggingface/safetensors#format>.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::{DType, TensorInfo, WeightsError};

/// Headers larger than this are refused (the reference implementation's own limit).
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// A validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The `__metadata__` map, if present.
    pub metadata: BTreeMap<String, String>,
    /// Tensors sorted by their offset in the file.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset where the data section starts (8 + header length).
    pub data_start: u64,
}

/// Reads and validates the header of the safetensors file at `path` (reads only the header).
pub fn read_header(path: &Path) -> Result<Header, WeightsError> {
    let mut f = File::open(path).map_err(|e| WeightsError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| WeightsError::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    if file_len < 8 {
        return Err(too_short(path, file_len));
    }
    f.read_exact(&mut len_bytes)
        .map_err(|e| WeightsError::io(path, e))?;
    let n = check_header_len(path, u64::from_le_bytes(len_bytes), file_len)?;
    let mut json = vec![0u8; n as usize];
    f.seek(SeekFrom::Start(8))
        .map_err(|e| WeightsError::io(path, e))?;
    f.read_exact(&mut json)
        .map_err(|e| WeightsError::io(path, e))?;
    parse_header(path, &json, file_len)
}

/// Validates the header of a safetensors file whose complete contents are `bytes` (a memory
/// map): the same checks as [`read_header`], without a second read of the file.
pub fn header_from_bytes(path: &Path, bytes: &[u8]) -> Result<Header, WeightsError> {
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(too_short(path, file_len));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let n = check_header_len(path, n, file_len)?;
    parse_header(path, &bytes[8..8 + n as usize], file_len)
}

/// Whether `bytes` start like a safetensors file: a plausible header length, then `{`.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.len() >= 9
        && u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) <= MAX_HEADER_BYTES
        && bytes[8] == b'{'
}

fn too_short(path: &Path, file_len: u64) -> WeightsError {
    WeightsError::format(
        path,
        format!("file is {file_len} bytes: too short for a safetensors header (needs at least 8)"),
    )
}

fn check_header_len(path: &Path, n: u64, file_len: u64) -> Result<u64, WeightsError> {
    if n > MAX_HEADER_BYTES {
        return Err(WeightsError::format(
            path,
            format!("header length {n} is larger than the {MAX_HEADER_BYTES}-byte limit: not a safetensors file, or corrupt"),
        ));
    }
    if 8 + n > file_len {
        return Err(WeightsError::format(
            path,
            format!("header length {n} runs past the end of the {file_len}-byte file: truncated or not a safetensors file"),
        ));
    }
    Ok(n)
}

/// Validates a header's JSON `bytes` for a file of `file_len` bytes.
pub fn parse_header(path: &Path, bytes: &[u8], file_len: u64) -> Result<Header, WeightsError> {
    let data_start = 8 + bytes.len() as u64;
    let data_len = file_len
        .checked_sub(data_start)
        .ok_or_else(|| WeightsError::format(path, "header runs past the end of the file"))?;
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| WeightsError::format(path, format!("header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(WeightsError::format(path, "header is not a JSON object"));
    };
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(map.len());
    for (name, entry) in map {
        if name == "__metadata__" {
            let serde_json::Value::Object(m) = entry else {
                return Err(WeightsError::format(
                    path,
                    "`__metadata__` is not an object of strings",
                ));
            };
            for (k, v) in m {
                let serde_json::Value::String(v) = v else {
                    return Err(WeightsError::format(
                        path,
                        format!("`__metadata__.{k}` is not a string"),
                    ));
                };
                metadata.insert(k, v);
            }
            continue;
        }
        tensors.push(parse_entry(path, &name, &entry, data_start, data_len)?);
    }
    tensors.sort_by_key(|t| (t.offset, t.len));
    super::check_no_overlap(path, &tensors.iter().collect::<Vec<_>>())?;
    // The reference implementation refuses bytes after the last tensor's data (#12 defect 8):
    // a file with a tail is corrupt or was appended to.
    let used = tensors
        .iter()
        .map(|t| t.offset + t.len - data_start)
        .max()
        .unwrap_or(0);
    if used < data_len {
        return Err(WeightsError::format(
            path,
            format!(
                "{} bytes follow the data section (the tensors end at byte {} of the {data_len}-byte data section): the file was appended to or is corrupt; the safetensors format allows no trailing bytes",
                data_len - used,
                used
            ),
        ));
    }
    Ok(Header {
        metadata,
        tensors,
        data_start,
    })
}

fn parse_entry(
    path: &Path,
    name: &str,
    entry: &serde_json::Value,
    data_start: u64,
    data_len: u64,
) -> Result<TensorInfo, WeightsError> {
    let bad = |m: String| WeightsError::tensor(path, name, m);
    let obj = entry
        .as_object()
        .ok_or_else(|| bad("entry is not an object with dtype, shape and data_offsets".into()))?;
    let dtype_s = obj
        .get("dtype")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("missing string `dtype`".into()))?;
    let dtype = DType::from_safetensors_name(dtype_s).ok_or_else(|| {
        bad(format!(
            "unsupported dtype `{dtype_s}` (supported: BOOL, U8, I8, I16, I32, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2)"
        ))
    })?;
    let shape = obj
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("missing array `shape`".into()))?
        .iter()
        .map(|d| d.as_u64())
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| bad("`shape` must hold whole numbers".into()))?;
    let offs = obj
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or_else(|| bad("`data_offsets` must be two whole numbers [begin, end]".into()))?;
    let (begin, end) = offs;
    if begin > end {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] end before they begin"
        )));
    }
    if end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] run past the {data_len}-byte data section: file truncated or header corrupt"
        )));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} has too many elements")))?;
    let want = dtype
        .storage_bytes(numel)
        .ok_or_else(|| bad(format!("shape {shape:?} of {dtype} is too large")))?;
    if want != end - begin {
        return Err(bad(format!(
            "shape {shape:?} of {dtype} needs {want} bytes but data_offsets [{begin}, {end}] hold {}",
            end - begin
        )));
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        offset: data_start + begin,
        len: end - begin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(&vec![0u8; data_len]).unwrap();
        f
    }

    /// #12 defect 8: bytes after the data section are refused, as the reference does.
    #[test]
    fn trailing_bytes_are_refused() {
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        assert!(read_header(file(h, 16).path()).is_ok());
        let e = read_header(file(h, 21).path()).unwrap_err().to_string();
        assert!(e.contains("5 bytes follow the data section"), "{e}");
        let empty = r#"{"__metadata__":{"format":"pt"}}"#;
        assert!(read_header(file(empty, 0).path()).is_ok());
        assert!(read_header(file(empty, 3).path()).is_err());
    }

    #[test]
    fn reads_valid_header() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let f = file(h, 28);
        let hdr = read_header(f.path()).unwrap();
        assert_eq!(hdr.metadata["format"], "pt");
        let names: Vec<_> = hdr.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(hdr.tensors[1].offset, 8 + h.len() as u64 + 16);
        assert_eq!(hdr.tensors[1].len, 12);
    }

    #[test]
    fn rejects_bad_headers() {
        let cases = [
            (
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                8,
                "run past",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
                16,
                "needs 12 bytes",
            ),
            (
                r#"{"a":{"dtype":"Q9","shape":[4],"data_offsets":[0,16]}}"#,
                16,
                "unsupported dtype `Q9`",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                16,
                "overlaps",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
                16,
                "too many elements",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,16]}}"#,
                16,
                "whole numbers",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#,
                16,
                "end before",
            ),
            (r#"[1,2]"#, 0, "not a JSON object"),
            (r#"{"a":"#, 0, "not valid JSON"),
        ];
        for (h, n, want) in cases {
            let f = file(h, n);
            let e = read_header(f.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{h}: {e}");
        }
    }

    #[test]
    fn rejects_huge_or_truncated_length() {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&u64::MAX.to_le_bytes()).unwrap();
        let e = read_header(f.path()).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&1000u64.to_le_bytes()).unwrap();
        f.write_all(b"{}").unwrap();
        let e = read_header(f.path()).unwrap_err().to_string();
        assert!(e.contains("past the end"), "{e}");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"abc").unwrap();
        let e = read_header(f.path()).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }
}
