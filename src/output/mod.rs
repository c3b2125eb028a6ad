//! Output files: decoded images as 8-bit PNGs and videos as animated PNGs or H.264 MP4s, with
//! generation metadata, written atomically; img2img init images read back into tensors. See
//! `docs/output.md`.
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
//!
//! Videos ([`video`], [`apng`], [`mp4`]):
//! - [`write_video`]`(&Path, &[RgbImage], Fps, &ImageRecord)`: `.png`/`.apng` → animated PNG
//!   ([`encode_apng`], needs nothing), `.mp4` → H.264 through ffmpeg ([`write_mp4`],
//!   [`Ffmpeg::find`]); both atomic, both carrying `parameters` and `mgpu`.
//! - [`read_output_metadata`]`(&Path) -> Result<OutputMetadata, OutputError>`: PNG, APNG or
//!   MP4 (the MP4 boxes are parsed in Rust, [`read_mp4_metadata`]: no ffprobe needed).
//! - [`video_extensions`], [`needs_ffmpeg`], [`VideoFormat::from_path`] for validation;
//!   [`decode_apng`] for golden comparisons.

pub mod apng;
pub mod hash;
pub mod infotext;
pub mod mp4;
pub mod mp4box;
pub mod pixels;
pub mod png;
pub mod record;
pub mod video;

use std::path::PathBuf;

pub use apng::{decode_apng, decode_apng_file, encode_apng, write_apng};
pub use hash::FileHashes;
pub use infotext::Infotext;
pub use mp4::{write_mp4, Ffmpeg, FFMPEG_ENV};
pub use mp4box::read_mp4_metadata;
pub use pixels::{image_to_rgb8, load_init_image, rgb8_to_tensor, InitFit};
pub use png::{confine, encode_png, read_png_metadata, write_atomic, write_png, PngMetadata};
pub use record::{ImageRecord, LoraRecord, ModelRecord, RECORD_FORMAT};
pub use video::{
    needs_ffmpeg, read_output_metadata, video_extensions, write_video, Fps, OutputKind,
    OutputMetadata, VideoFormat,
};

/// Why an image could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// The folder an output goes into resolves (through a symbolic link) outside the output
    /// root: `out/fox -> /elsewhere`.
    #[error("refusing to write {}: its folder is really {}, outside the output root {} (a symbolic link inside the output root points out of it); remove the link or point `[settings].output_root` at the real folder", path.display(), real.display(), root.display())]
    Escapes {
        path: PathBuf,
        real: PathBuf,
        root: PathBuf,
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
    #[error("a video needs at least one frame, got none")]
    NoFrames,
    #[error("frame {index} is {}x{} pixels but frame 0 is {}x{}: all frames of a video must have one size", got.0, got.1, want.0, want.1)]
    FrameSize {
        index: usize,
        got: (u32, u32),
        want: (u32, u32),
    },
    #[error("invalid frame rate `{value}`: {reason}")]
    InvalidFps { value: String, reason: String },
    #[error("{} is not a video output: the file name must end in {}", path.display(), video::EXTENSIONS_TEXT)]
    VideoExtension { path: PathBuf },
    #[error("H.264 MP4 (yuv420p) needs an even width and height, but the video is {width}x{height}: make both even, or write an animated PNG (.png) instead")]
    OddVideoSize { width: u32, height: u32 },
    #[error("writing MP4 needs ffmpeg: {reason}; install it (Debian/Ubuntu: `apt-get install ffmpeg`) or set {} to its path, or write an animated PNG (.png), which needs nothing", mp4::FFMPEG_ENV)]
    FfmpegMissing { reason: String },
    #[error("ffmpeg ({}) failed writing {} ({status}); its last words: {stderr}", ffmpeg.display(), path.display())]
    Ffmpeg {
        ffmpeg: PathBuf,
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("cannot read MP4 {}: {reason}", path.display())]
    Mp4 { path: PathBuf, reason: String },
    #[error("{} has an `mgpu` metadata tag that is not a valid record: {source}", path.display())]
    Mp4Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot decode the animated PNG {}: {reason}", path.display())]
    Apng { path: PathBuf, reason: String },
}
