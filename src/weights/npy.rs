//! NumPy `.npy` files (format 1.0, falling back to 2.0 for huge headers): [`write_f32`] writes a
//! little-endian `<f4` C-order array, as `mgpu inspect --dump` does for one dequantised tensor;
//! [`read_f32`] reads such arrays back (tests use it on files numpy itself wrote).
//!
//! Format: `\x93NUMPY`, major, minor, a little-endian header length (u16 in 1.0, u32 in 2.0),
//! an ASCII Python dict literal padded with spaces and a final `\n` so that the data starts at
//! a multiple of 64 bytes, then the raw data. The header is written exactly as `numpy.save`
//! writes it (same key order, same spare space), so a dump is byte-identical to numpy's file.
//! Reference: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.

use std::io::Write;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";
const ALIGN: usize = 64;

/// The header (magic through padding) for a `<f4` C-order array of `shape`.
pub fn header_f32(shape: &[u64]) -> Vec<u8> {
    let dims = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // numpy leaves room for the first dimension to grow to 21 digits in place; doing the same
    // makes our files byte-identical to `numpy.save`'s.
    if let Some(first) = shape.first() {
        let digits = first.to_string().len();
        dict.push_str(&" ".repeat(21usize.saturating_sub(digits)));
    }
    let build = |len_bytes: usize, major: u8| {
        let pre = MAGIC.len() + 2 + len_bytes;
        let total = (pre + dict.len() + 1).div_ceil(ALIGN) * ALIGN;
        let hlen = total - pre;
        let mut h = Vec::with_capacity(total);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&[major, 0]);
        if len_bytes == 2 {
            h.extend_from_slice(&(hlen as u16).to_le_bytes());
        } else {
            h.extend_from_slice(&(hlen as u32).to_le_bytes());
        }
        h.extend_from_slice(dict.as_bytes());
        h.resize(total - 1, b' ');
        h.push(b'\n');
        h
    };
    let v1 = build(2, 1);
    if v1.len() - 10 <= u16::MAX as usize {
        v1
    } else {
        build(4, 2)
    }
}

/// Writes `data` (row-major, `shape.iter().product()` values) as an `.npy` file.
pub fn write_f32(path: &Path, shape: &[u64], data: &[f32]) -> std::io::Result<()> {
    let numel: u64 = shape.iter().product();
    if numel != data.len() as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "shape {shape:?} holds {numel} values but {} were given",
                data.len()
            ),
        ));
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&header_f32(shape))?;
    for chunk in data.chunks(16 * 1024) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        f.write_all(&bytes)?;
    }
    f.flush()
}

/// A parsed `.npy` array of `<f4` values.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyF32 {
    pub shape: Vec<u64>,
    pub data: Vec<f32>,
}

/// Reads an `.npy` file holding a little-endian float32 C-order array.
pub fn read_f32(bytes: &[u8]) -> Result<NpyF32, String> {
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err("not an .npy file (no \\x93NUMPY magic)".into());
    }
    let (hlen, pre): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = pre
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or("header runs past the end")?;
    if end % ALIGN != 0 && end % 16 != 0 {
        return Err(format!("data starts at {end}, not aligned"));
    }
    let header = std::str::from_utf8(&bytes[pre..end]).map_err(|_| "header is not ASCII")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or(format!("header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    if !field("descr")?.starts_with("'<f4'") {
        return Err(format!("descr is not '<f4': {header}"));
    }
    if !field("fortran_order")?.starts_with("False") {
        return Err("fortran_order arrays are not supported".into());
    }
    let shape_s = field("shape")?;
    let close = shape_s.find(')').ok_or("unterminated shape")?;
    let shape = shape_s[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|e| format!("bad dimension `{s}`: {e}"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    let numel = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let data = &bytes[end..];
    if data.len() as u64 != numel * 4 {
        return Err(format!(
            "shape {shape:?} needs {} bytes of data, file has {}",
            numel * 4,
            data.len()
        ));
    }
    let data = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok(NpyF32 { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_padded_to_64() {
        for shape in [
            &[][..],
            &[5],
            &[2, 3],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        ] {
            let h = header_f32(shape);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            assert_eq!(*h.last().unwrap(), b'\n');
            assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
        }
        let h = header_f32(&[2, 3]);
        assert!(std::str::from_utf8(&h[10..])
            .unwrap()
            .starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(String::from_utf8_lossy(&header_f32(&[7])).contains("'shape': (7,)"));
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let data: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
        write_f32(&p, &[2, 3], &data).unwrap();
        let back = read_f32(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            back,
            NpyF32 {
                shape: vec![2, 3],
                data
            }
        );
        write_f32(&p, &[], &[4.0]).unwrap();
        assert_eq!(
            read_f32(&std::fs::read(&p).unwrap()).unwrap().shape,
            Vec::<u64>::new()
        );
        assert!(write_f32(&p, &[2], &[1.0]).is_err());
    }
}
