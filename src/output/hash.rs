//! File hashes for image metadata, in one pass over the file: the SHA-256 of the whole file
//! (A1111 "Model hash" = its first 10 hex digits, civitai "AutoV2") and, for safetensors files,
//! the SHA-256 of everything after the header (A1111's LoRA hash, civitai "AutoV3"; A1111
//! writes its first 12 digits in "Lora hashes").

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

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
    /// Reads `path` once and computes both hashes. The whole-file digest runs on this thread,
    /// the data digest of a safetensors file on a second one fed the same buffers, so the
    /// pair costs the time of one SHA-256 pass (≈ 2 GB/s per core with SHA extensions), not
    /// two.
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
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let mut whole = Sha256::new();
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
        let data_start = data_start.filter(|&s| is_safetensors && s <= len);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Arc<[u8]>, usize)>(4);
            let data = data_start.map(|start| {
                let mut pos_d = pos;
                scope.spawn(move || {
                    let mut data = Sha256::new();
                    for (chunk, n) in rx {
                        let chunk = &chunk[..n];
                        if pos_d + n as u64 > start {
                            data.update(&chunk[start.saturating_sub(pos_d) as usize..]);
                        }
                        pos_d += n as u64;
                    }
                    hex(data.finalize())
                })
            });
            let mut tx = data.is_some().then_some(tx);
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0;
                while n < CHUNK {
                    let r = file.read(&mut buf[n..]).map_err(io("read"))?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                if n == 0 {
                    break;
                }
                let chunk: Arc<[u8]> = Arc::from(buf);
                if let Some(t) = &tx {
                    if t.send((chunk.clone(), n)).is_err() {
                        tx = None;
                    }
                }
                whole.update(&chunk[..n]);
                pos += n as u64;
            }
            drop(tx);
            let autov3 = match data {
                Some(h) => Some(h.join().map_err(|_| OutputError::Io {
                    path: path.to_path_buf(),
                    op: "hash",
                    source: std::io::Error::other("the hashing thread failed"),
                })?),
                None => None,
            };
            Ok(FileHashes {
                sha256: hex(whole.finalize()),
                autov3,
            })
        })
    }
}

/// Bytes read per buffer.
const CHUNK: usize = 4 << 20;

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
