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
    /// Reads `path` once and computes both hashes, on three threads that pass each buffer
    /// along: this one reads (into buffers it gets back, never zeroed or copied again), a
    /// second computes the whole-file digest, a third the data digest of a safetensors file
    /// and returns the buffer. So the pair costs one SHA-256 pass at the core's rate (≈ 1.2
    /// GB/s with SHA extensions: `sha256sum` on the lent H200's host; sha2 here), not two, and
    /// no reading or copying slows the digests down — before, the reading thread also copied
    /// each buffer and computed one digest: 0.73 GB/s on that host (benches/RESULTS.md).
    ///
    /// `data`: whether to compute the data digest too (`autov3`; only LoRAs' records carry
    /// it). A model's record needs the whole-file digest alone, and skipping the second saves
    /// a core for the length of the file (23.8 GB for FLUX.1-dev).
    pub fn compute(path: &Path, data: bool) -> Result<Self, OutputError> {
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
        let data_start = data_start.filter(|&s| data && is_safetensors && s <= len);
        type Buf = (Vec<u8>, usize);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        for _ in 0..BUFFERS {
            free_tx
                .send(vec![0u8; CHUNK])
                .expect("the receiver is alive");
        }
        let failed = || OutputError::Io {
            path: path.to_path_buf(),
            op: "hash",
            source: std::io::Error::other("a hashing thread failed"),
        };
        std::thread::scope(|scope| {
            let (whole_tx, whole_rx) = std::sync::mpsc::channel::<Buf>();
            let (data_tx, data_rx) = std::sync::mpsc::channel::<Buf>();
            let data = data_start.map(|start| {
                let free_tx = free_tx.clone();
                let mut pos_d = pos;
                scope.spawn(move || {
                    let mut data = Sha256::new();
                    for (buf, n) in data_rx {
                        if pos_d + n as u64 > start {
                            data.update(&buf[start.saturating_sub(pos_d) as usize..n]);
                        }
                        pos_d += n as u64;
                        let _ = free_tx.send(buf);
                    }
                    hex(data.finalize())
                })
            });
            // the whole-file digest hands each buffer on to the data digest, or back
            // (the reader's `recv` fails, rather than waiting for ever, once both are gone)
            let next = if data.is_some() {
                drop(free_tx);
                Ok(data_tx)
            } else {
                Err(free_tx)
            };
            let whole_h = scope.spawn(move || {
                for (buf, n) in whole_rx {
                    whole.update(&buf[..n]);
                    match &next {
                        Ok(t) => drop(t.send((buf, n))),
                        Err(t) => drop(t.send(buf)),
                    }
                }
                hex(whole.finalize())
            });
            let read: Result<(), OutputError> = (|| {
                // a recv error means both digest threads are gone: their join says why
                while let Ok(mut buf) = free_rx.recv() {
                    let mut n = 0;
                    while n < CHUNK {
                        let r = file.read(&mut buf[n..]).map_err(io("read"))?;
                        if r == 0 {
                            break;
                        }
                        n += r;
                    }
                    if n == 0 || whole_tx.send((buf, n)).is_err() {
                        break;
                    }
                }
                Ok(())
            })();
            drop(whole_tx);
            let sha256 = whole_h.join().map_err(|_| failed());
            let autov3 = data.map(|h| h.join().map_err(|_| failed())).transpose();
            read?;
            Ok(FileHashes {
                sha256: sha256?,
                autov3: autov3?,
            })
        })
    }
}

/// Bytes read per buffer, and how many buffers are in flight (read, or in a digest).
const CHUNK: usize = 4 << 20;
const BUFFERS: usize = 6;

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
        let h = FileHashes::compute(&st, true).unwrap();
        assert_eq!(h.sha256, hex(Sha256::digest(&bytes)));
        assert_eq!(
            h.autov3.as_deref(),
            Some(hex(Sha256::digest(&body)).as_str())
        );
        // A model's record needs the whole-file digest only.
        let whole = FileHashes::compute(&st, false).unwrap();
        assert_eq!((whole.sha256, whole.autov3), (h.sha256, None));

        let gguf = dir.path().join("model.gguf");
        std::fs::write(&gguf, b"GGUF....").unwrap();
        let h = FileHashes::compute(&gguf, true).unwrap();
        assert_eq!(h.autov3, None);
        // SHA-256 of the empty file, a well-known value.
        let empty = dir.path().join("empty.safetensors");
        std::fs::write(&empty, b"").unwrap();
        let h = FileHashes::compute(&empty, true).unwrap();
        assert_eq!(
            h.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(h.autov3, None);
        let e = FileHashes::compute(&dir.path().join("missing.safetensors"), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot open ") && e.contains("missing.safetensors"),
            "{e}"
        );
    }
}
