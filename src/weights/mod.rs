//! Weight files: what is in them (headers) and, later, their bytes.
//!
//! Every reader validates a file's header completely (offsets in bounds, no overlaps, sizes
//! matching shape × dtype) before any tensor data is touched, and reports problems as
//! [`WeightsError`] naming the file and the tensor. Readers never allocate on the word of an
//! unchecked header: a corrupt length cannot make mgpu reserve gigabytes.

pub mod dtype;
pub mod safetensors;

pub use dtype::DType;

use std::path::{Path, PathBuf};

/// One tensor as recorded in a file header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    /// The name exactly as stored in the file.
    pub name: String,
    pub dtype: DType,
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

/// Errors from reading weight files. Each names the file; `tensor` names the tensor when one
/// is at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
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
}

impl WeightsError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        WeightsError::Io { path: path.to_path_buf(), source }
    }
    pub fn format(path: &Path, message: impl Into<String>) -> Self {
        WeightsError::Format { path: path.to_path_buf(), message: message.into() }
    }
    pub fn tensor(path: &Path, tensor: &str, message: impl Into<String>) -> Self {
        WeightsError::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}
