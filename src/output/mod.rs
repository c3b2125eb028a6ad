//! Output files: decoded images as 8-bit PNGs with generation metadata, written atomically;
//! img2img init images read back into tensors. See `docs/output.md`.
//!
//! Connects the executor (which hands over the VAE's decoded tensor and the job's
//! [`ImageRecord`]) to the file system; golden checks ([`crate::golden`]) hash the same pixels.
//!
//! # Public API (what the executor calls)
//! - [`image_to_rgb8`]`(&Tensor) -> Result<RgbImage, OutputError>`: `[1, 3, H, W]` or
//!   `[3, H, W]` in [-1, 1] → RGB8 with ComfyUI's truncating conversion.
//! - [`write_png`]`(&Path, &RgbImage, &ImageRecord) -> Result<(), OutputError>`: atomic write
//!   with `parameters` (A1111 [`Infotext`]) and `mgpu` (JSON [`ImageRecord`]) chunks;
//!   [`encode_png`]`(&RgbImage, &ImageRecord) -> Result<Vec<u8>, OutputError>` for the bytes.
//! - [`read_png_metadata`]`(&Path) -> Result<PngMetadata, OutputError>`: both chunks back.
//! - [`write_atomic`]`(&Path, impl FnOnce(&mut dyn Write) -> io::Result<()>)`.
//! - [`load_init_image`]`(&Path, width, height, InitFit) -> Result<Tensor, OutputError>`:
//!   `[1, 3, H, W]` f32 on the CPU in [-1, 1]; [`InitFit`] is `exact` (default) or `resize`.
//! - [`FileHashes::compute`]`(&Path)`: `sha256` and, for safetensors, `autov3`, for the record.
//! - [`Infotext`]: `from_record(&ImageRecord)`, `FromStr`, `Display`, `get(key)`.

pub mod hash;
pub mod infotext;
pub mod pixels;
pub mod png;
pub mod record;
mod ffmpeg_tmp;
pub use ffmpeg_tmp::Ffmpeg;

use std::path::PathBuf;

pub use hash::FileHashes;
pub use infotext::Infotext;
pub use pixels::{image_to_rgb8, load_init_image, rgb8_to_tensor, InitFit};
pub use png::{encode_png, read_png_metadata, write_atomic, write_png, PngMetadata};
pub use record::{ImageRecord, LoraRecord, ModelRecord, RECORD_FORMAT};

/// Why an image could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("expected an RGB image tensor of shape [1, 3, H, W] or [3, H, W], got {shape:?}")]
    NotAnImage { shape: Vec<usize> },
    #[error("the decoded image has {count} NaN or infinite values out of {total}: the model or VAE produced invalid numbers")]
    NonFinite { count: usize, total: usize },
    #[error("cannot encode PNG: {0}")]
    PngEncode(#[source] ::png::EncodingError),
    #[error("cannot read PNG {}: {source}", path.display())]
    PngDecode {
        path: PathBuf,
        source: ::png::DecodingError,
    },
    #[error("{} has an `mgpu` metadata chunk that is not a valid record: {source}", path.display())]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{} is not a readable PNG or JPEG image: {source}", path.display())]
    ImageDecode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("init image {} is {}x{} pixels but the job is {}x{}: resize the image, change the job's size, or set the init image fit to `resize`", path.display(), got.0, got.1, want.0, want.1)]
    InitSize {
        path: PathBuf,
        got: (u32, u32),
        want: (u32, u32),
    },
    #[error("tensor operation failed while converting an image: {0}")]
    Tensor(#[from] candle_core::Error),
}
