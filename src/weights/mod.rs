//! Weight files: what is in them (headers) and their bytes, for safetensors (single files and
//! sharded sets, including fp8 and ComfyUI scaled-fp8), GGUF v2/v3 (block-quantised types
//! dequantised bit-exactly with llama.cpp's reference) and PyTorch zip checkpoints (through a
//! restricted unpickler that runs no code).
//!
//! # The one door: [`WeightFile`]
//! ```no_run
//! # fn main() -> Result<(), mgpu::weights::WeightsError> {
//! use mgpu::weights::WeightFile;
//! let f = WeightFile::open("flux1-dev-Q8_0.gguf")?;     // format from the magic bytes
//! println!("{} tensors, {} bytes, {}", f.tensors().len(), f.total_bytes(), f.format());
//! let raw: &[u8] = f.raw("double_blocks.0.img_attn.qkv.weight")?;   // zero-copy, as stored
//! let w: Vec<f32> = f.to_f32("double_blocks.0.img_attn.qkv.weight")?; // dequantised
//! let t = f.to_candle("img_in.weight", candle_core::DType::BF16, &candle_core::Device::Cpu)?;
//! # let _ = (raw, w, t); Ok(()) }
//! ```
//! - [`WeightFile::open`] maps the file (every shard of a `*.safetensors.index.json` set) and
//!   validates the whole header before returning; no tensor data is read until asked for.
//! - [`WeightFile::tensors`] is the inventory: name, [`DType`], PyTorch-order shape, absolute
//!   byte offset and length in its file ([`WeightFile::file_of`] names the shard).
//! - [`WeightFile::raw`] is the stored bytes, borrowed from the map; [`WeightFile::bytes`] also
//!   serves strided PyTorch views by copying them contiguous.
//! - [`WeightFile::to_f32`], [`WeightFile::to_bf16`], [`WeightFile::to_candle`] convert:
//!   GGML blocks dequantised, fp8 widened (× `scale_weight` for scaled fp8), rounding to
//!   bf16/f16 to nearest even.
//! - [`WeightFile::metadata`] is the file-level metadata ([`MetaValue`]).
//! - [`detect_family`] guesses the model family from tensor names.
//!
//! Every reader validates a file's header completely (offsets in bounds, no overlaps, sizes
//! matching shape × dtype) before any tensor data is touched, and reports problems as
//! [`WeightsError`] naming the file and the tensor. Readers never allocate on the word of an
//! unchecked header: a corrupt length cannot make mgpu reserve gigabytes. See docs/weights.md.
//!
//! GGUF v3 files are also written, by [`gguf::GgufWriter`] (`mgpu make-tiny --format gguf`).

pub mod convert;
pub mod detect;
pub mod dtype;
pub mod gguf;
pub mod keymap;
pub mod lora;
pub mod meta;
pub mod npy;
pub mod pickle;
pub mod safetensors;
pub mod shards;
pub mod store;

pub use detect::{detect, detect_family, Detection, KeyLayout};
pub use dtype::DType;
pub use meta::{MetaArray, MetaValue, Metadata};
pub use store::{Format, WeightFile};

use std::path::{Path, PathBuf};

/// One tensor as recorded in a file header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct TensorInfo {
    /// The name exactly as stored in the file.
    pub name: String,
    pub dtype: DType,
    /// PyTorch dimension order, slowest-varying first (GGUF's reversed `ne` is turned around).
    pub shape: Vec<u64>,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: u64,
    /// Number of bytes of the tensor's data in the file.
    pub len: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// Errors from reading (and writing) weight files. Each names the file; `tensor` names the
/// tensor when one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a file failed; `op` is the step (`write`, `move into place`, …).
    #[error("cannot {op} {}: {source}", path.display())]
    Write {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// A PyTorch checkpoint's pickle names a global outside the restricted unpickler's
    /// allowlist: loading it the Python way would run that code.
    #[error("refusing global {module}.{name} in {}: mgpu loads tensors only, no code", path.display())]
    RefusedGlobal {
        path: PathBuf,
        module: String,
        name: String,
    },
}

impl WeightsError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        WeightsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn format(path: &Path, message: impl Into<String>) -> Self {
        WeightsError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
    pub fn tensor(path: &Path, tensor: &str, message: impl Into<String>) -> Self {
        WeightsError::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}

/// Header check shared by the readers: no tensor's data runs into the next one's. `sorted`
/// is in offset order.
pub(crate) fn check_no_overlap(path: &Path, sorted: &[&TensorInfo]) -> Result<(), WeightsError> {
    for pair in sorted.windows(2) {
        if pair[0].offset + pair[0].len > pair[1].offset {
            return Err(WeightsError::tensor(
                path,
                &pair[1].name,
                format!("data overlaps tensor `{}`", pair[0].name),
            ));
        }
    }
    Ok(())
}
