//! File hashes for image metadata, in one pass over the file: the SHA-256 of the whole file
//! (A1111 "Model hash" = its first 10 hex digits, civitai "AutoV2") and, for safetensors files,
//! the SHA-256 of everything after the header (A1111's LoRA hash, civitai "AutoV3"; A1111
//! writes its first 12 digits in "Lora hashes").

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::OutputError;

/// Hashes of one weights file, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHashes {
    pub sha256: String,
    /// Present for safetensors files (a valid 8-byte header length that fits the file).
    pub autov3: Option<String>,
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl FileHashes {
    /// Reads `path` once and computes both hashes.
    pub fn compute(path: &Path) -> Result<Self, OutputError> {
        let io = |op: &'static str| {
            move |e: std::io::Error| OutputError::Io {
                path: path.to_path_buf(),
                op,
                source: e,
            }
        };
        let mut file = File::open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("read the size of"))?.len();
        let mut whole = Sha256::new();
        let mut data = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos: u64 = 0;
        // The safetensors data starts after the 8-byte little-endian header length and the header.
        let mut data_start: Option<u64> = None;
        if len >= 8 {
            let mut first = [0u8; 8];
            file.read_exact(&mut first).map_err(io("read"))?;
            whole.update(first);
            pos = 8;
            data_start = Some(8u64.saturating_add(u64::from_le_bytes(first)));
        }
        loop {
            let n = file.read(&mut buf).map_err(io("read"))?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            whole.update(chunk);
            if let Some(start) = data_start {
                if pos + n as u64 > start {
                    data.update(&chunk[start.saturating_sub(pos) as usize..]);
                }
            }
            pos += n as u64;
        }
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let autov3 = match data_start {
            Some(start) if is_safetensors && start <= len => Some(hex(data.finalize())),
            _ => None,
        };
        Ok(FileHashes {
            sha256: hex(whole.finalize()),
            autov3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_file_and_data_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let header = br#"{"__metadata__":{}}"#;
        let body = vec![7u8; 3 << 20]; // spans several read buffers
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&body);
        let st = dir.path().join("lora.safetensors");
        std::fs::write(&st, &bytes).unwrap();
        let h = FileHashes::compute(&st).unwrap();
        assert_eq!(h.sha256, hex(Sha256::digest(&bytes)));
        assert_eq!(
            h.autov3.as_deref(),
            Some(hex(Sha256::digest(&body)).as_str())
        );

        let gguf = dir.path().join("model.gguf");
        std::fs::write(&gguf, b"GGUF....").unwrap();
        let h = FileHashes::compute(&gguf).unwrap();
        assert_eq!(h.autov3, None);
        // SHA-256 of the empty file, a well-known value.
        let empty = dir.path().join("empty.safetensors");
        std::fs::write(&empty, b"").unwrap();
        let h = FileHashes::compute(&empty).unwrap();
        assert_eq!(
            h.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(h.autov3, None);
        let e = FileHashes::compute(&dir.path().join("missing.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot open ") && e.contains("missing.safetensors"),
            "{e}"
        );
    }
}
