//! Video outputs: one entry point for the queue, dispatching on the file extension.
//!
//! - `.png` / `.apng` → animated PNG ([`super::apng`]): lossless, written by the `png` crate,
//!   needs nothing installed; a one-frame video is a plain PNG, byte-identical to an image.
//! - `.mp4` → H.264 through an external `ffmpeg` ([`super::mp4`]); read back by parsing the MP4
//!   boxes in Rust ([`super::mp4box`]), so resuming needs no ffprobe.
//!
//! Every format carries the same two metadata entries as an image PNG: `parameters` (the
//! A1111-style [`Infotext`]) and `mgpu` (the JSON [`ImageRecord`], whose `job_hash` resume
//! compares). [`read_output_metadata`] reads them back from any of the three.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use image::RgbImage;

use super::infotext::Infotext;
use super::record::ImageRecord;
use super::{apng, mp4, mp4box, png, OutputError};

/// The extensions [`write_video`] accepts, lowercase, without the dot.
const EXTENSIONS: [&str; 3] = ["png", "apng", "mp4"];
/// [`EXTENSIONS`] for error messages.
pub(crate) const EXTENSIONS_TEXT: &str =
    "`.png` or `.apng` (animated PNG, lossless, needs nothing) or `.mp4` (H.264, needs ffmpeg)";

/// The file extensions a video output may have (lowercase, no dot; matching ignores case).
pub fn video_extensions() -> &'static [&'static str] {
    &EXTENSIONS
}

/// Whether writing `path` needs ffmpeg (an `.mp4` output); `false` for any other extension,
/// including invalid ones (see [`VideoFormat::from_path`]).
pub fn needs_ffmpeg(path: &Path) -> bool {
    matches!(VideoFormat::from_path(path), Ok(VideoFormat::Mp4))
}

/// How a video is written, chosen by the output's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFormat {
    /// Animated PNG (`.png`, `.apng`).
    Apng,
    /// H.264 in MP4 through ffmpeg (`.mp4`).
    Mp4,
}

impl VideoFormat {
    /// The format for `path`'s extension (case-insensitive), or an error listing the valid ones.
    pub fn from_path(path: &Path) -> Result<Self, OutputError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("png" | "apng") => Ok(VideoFormat::Apng),
            Some("mp4") => Ok(VideoFormat::Mp4),
            _ => Err(OutputError::VideoExtension {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// A frame rate as an exact fraction `num/den` frames per second (`16`, `30000/1001`), kept
/// reduced, with both parts in `1..=65535` so that APNG's 16-bit frame delay (`den/num` s) and
/// ffmpeg's `-framerate num/den` hold it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fps {
    num: u32,
    den: u32,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Fps {
    /// `num/den` frames per second, reduced; an error if either is 0 or, once reduced, above
    /// 65535.
    pub fn new(num: u32, den: u32) -> Result<Fps, OutputError> {
        Self::reduced(u64::from(num), u64::from(den), &format!("{num}/{den}"))
    }

    /// A whole number of frames per second (Wan 2.1 writes 16).
    pub fn integer(fps: u16) -> Result<Fps, OutputError> {
        Self::new(u32::from(fps), 1)
    }

    fn reduced(num: u64, den: u64, text: &str) -> Result<Fps, OutputError> {
        let bad = |reason: &str| OutputError::InvalidFps {
            value: text.to_string(),
            reason: reason.to_string(),
        };
        if num == 0 || den == 0 {
            return Err(bad("both parts of a frame rate must be positive"));
        }
        let g = gcd(num, den);
        let (num, den) = (num / g, den / g);
        if num > 65535 || den > 65535 {
            return Err(bad(
                "once reduced, numerator and denominator must be at most 65535 (APNG stores the frame delay in 16 bits)",
            ));
        }
        Ok(Fps {
            num: num as u32,
            den: den as u32,
        })
    }

    pub fn num(self) -> u32 {
        self.num
    }

    pub fn den(self) -> u32 {
        self.den
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.num) / f64::from(self.den)
    }
}

impl fmt::Display for Fps {
    /// `16`, or `num/den` when not whole (`30000/1001`): the form ffmpeg's `-framerate` takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

impl FromStr for Fps {
    type Err = OutputError;

    /// `16`, `30000/1001` or a decimal such as `23.976` (taken exactly: 2997/125).
    fn from_str(s: &str) -> Result<Fps, OutputError> {
        let t = s.trim();
        let bad = |reason: &str| OutputError::InvalidFps {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let digits = |d: &str| -> Result<u64, OutputError> {
            if d.is_empty() || d.len() > 9 || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(
                    "expected a number of frames per second such as `16`, `30000/1001` or `23.976`",
                ));
            }
            d.parse::<u64>().map_err(|_| bad("number too large"))
        };
        if let Some((n, d)) = t.split_once('/') {
            return Self::reduced(digits(n.trim())?, digits(d.trim())?, s);
        }
        match t.split_once('.') {
            None => Self::reduced(digits(t)?, 1, s),
            Some((whole, frac)) => {
                let whole = if whole.is_empty() { "0" } else { whole };
                let scale = 10u64.pow(u32::try_from(frac.len()).unwrap_or(u32::MAX).min(9));
                let n = digits(whole)? * scale + if frac.is_empty() { 0 } else { digits(frac)? };
                Self::reduced(n, scale, s)
            }
        }
    }
}

/// What kind of file [`read_output_metadata`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A still PNG (also what a one-frame video is written as).
    Png,
    /// An animated PNG.
    Apng,
    /// An MP4 file.
    Mp4,
}

/// The metadata of an image or video output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputMetadata {
    pub kind: OutputKind,
    pub width: u32,
    pub height: u32,
    /// Number of frames: 1 for a still PNG; the APNG's `acTL` frame count; the MP4 video
    /// track's sample count (0 if the file has no video track).
    pub frames: u32,
    /// The frame rate, when the file states a constant one (`None` for a still PNG).
    pub fps: Option<Fps>,
    /// The `parameters` entry (any A1111-style writer's), parsed.
    pub parameters: Option<Infotext>,
    /// The `mgpu` record, if this file has one.
    pub record: Option<ImageRecord>,
}

/// Writes `frames` as a video to `path`, atomically, with the record's `parameters` and `mgpu`
/// metadata: `.png`/`.apng` → animated PNG ([`apng::write_apng`]), `.mp4` → H.264 through
/// ffmpeg ([`mp4::write_mp4`]). Any other extension is an error naming the valid ones.
pub fn write_video(
    path: &Path,
    frames: &[RgbImage],
    fps: Fps,
    record: &ImageRecord,
) -> Result<(), OutputError> {
    match VideoFormat::from_path(path)? {
        VideoFormat::Apng => apng::write_apng(path, frames, fps, record),
        VideoFormat::Mp4 => mp4::write_mp4(path, frames, fps, record),
    }
}

/// Reads the metadata of an output file, by its extension: `.png`/`.apng` (still or animated
/// PNG) or `.mp4`. Any other extension is an error naming the valid ones.
pub fn read_output_metadata(path: &Path) -> Result<OutputMetadata, OutputError> {
    match VideoFormat::from_path(path)? {
        VideoFormat::Apng => {
            let m = png::read_png_metadata(path)?;
            Ok(OutputMetadata {
                kind: if m.animated {
                    OutputKind::Apng
                } else {
                    OutputKind::Png
                },
                width: m.width,
                height: m.height,
                frames: m.frames,
                fps: m.fps,
                parameters: m.parameters,
                record: m.record,
            })
        }
        VideoFormat::Mp4 => mp4box::read_mp4_metadata(path),
    }
}

/// Checks that there is at least one frame and all frames have frame 0's size; returns it.
pub(crate) fn check_frames(frames: &[RgbImage]) -> Result<(u32, u32), OutputError> {
    let first = frames.first().ok_or(OutputError::NoFrames)?.dimensions();
    for (index, f) in frames.iter().enumerate().skip(1) {
        if f.dimensions() != first {
            return Err(OutputError::FrameSize {
                index,
                got: f.dimensions(),
                want: first,
            });
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::example;
    use super::*;

    #[test]
    fn frame_rates() {
        let f = Fps::integer(16).unwrap();
        assert_eq!((f.num(), f.den(), f.to_string()), (16, 1, "16".into()));
        let ntsc = Fps::new(60000, 2002).unwrap();
        assert_eq!((ntsc.num(), ntsc.den()), (30000, 1001));
        assert_eq!(ntsc.to_string(), "30000/1001");
        assert_eq!("30000/1001".parse::<Fps>().unwrap(), ntsc);
        assert_eq!("16".parse::<Fps>().unwrap(), f);
        assert_eq!(" 16.0 ".parse::<Fps>().unwrap(), f);
        let d = "23.976".parse::<Fps>().unwrap();
        assert_eq!((d.num(), d.den()), (2997, 125));
        assert_eq!("12.5".parse::<Fps>().unwrap(), Fps::new(25, 2).unwrap());
        assert_eq!(".5".parse::<Fps>().unwrap(), Fps::new(1, 2).unwrap());
        for bad in ["0", "16/0", "abc", "-16", "1e3", "", "16/", "70000"] {
            let e = bad.parse::<Fps>().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid frame rate `{bad}`: ")),
                "{e}"
            );
        }
        let e = Fps::new(65537, 3).unwrap_err().to_string();
        assert!(e.contains("at most 65535"), "{e}");
        assert!((ntsc.as_f64() - 29.97).abs() < 1e-3);
    }

    #[test]
    fn extensions_and_dispatch() {
        assert_eq!(video_extensions(), &["png", "apng", "mp4"]);
        assert!(needs_ffmpeg(Path::new("out/a.MP4")));
        assert!(!needs_ffmpeg(Path::new("out/a.png")));
        assert!(!needs_ffmpeg(Path::new("out/a.webm")));
        assert_eq!(
            VideoFormat::from_path(Path::new("x.APNG")).unwrap(),
            VideoFormat::Apng
        );
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("clip.webm");
        let frames = vec![RgbImage::new(4, 4); 2];
        let fps = Fps::integer(16).unwrap();
        let e = write_video(&bad, &frames, fps, &example())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("clip.webm is not a video output: the file name must end in `.png` or `.apng` (animated PNG, lossless, needs nothing) or `.mp4` (H.264, needs ffmpeg)"),
            "{e}"
        );
        assert!(!bad.exists());
        let e = read_output_metadata(&dir.path().join("noext"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a video output"), "{e}");

        // Through the entry points: an APNG and a still PNG.
        let record = example();
        let anim = dir.path().join("v/anim.apng");
        write_video(&anim, &frames, fps, &record).unwrap();
        let m = read_output_metadata(&anim).unwrap();
        assert_eq!(
            (m.kind, m.width, m.height, m.frames, m.fps),
            (OutputKind::Apng, 4, 4, 2, Some(fps))
        );
        assert_eq!(m.record.as_ref(), Some(&record));
        assert_eq!(m.parameters, Some(Infotext::from_record(&record)));
        let still = dir.path().join("v/still.png");
        write_video(&still, &frames[..1], fps, &record).unwrap();
        let m = read_output_metadata(&still).unwrap();
        assert_eq!((m.kind, m.frames, m.fps), (OutputKind::Png, 1, None));
        assert_eq!(m.record, Some(record));
    }

    #[test]
    fn frame_checks() {
        assert_eq!(
            check_frames(&[]).unwrap_err().to_string(),
            "a video needs at least one frame, got none"
        );
        let e = check_frames(&[
            RgbImage::new(4, 2),
            RgbImage::new(4, 2),
            RgbImage::new(2, 4),
        ])
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "frame 2 is 2x4 pixels but frame 0 is 4x2: all frames of a video must have one size"
        );
        assert_eq!(check_frames(&[RgbImage::new(6, 2)]).unwrap(), (6, 2));
    }
}
