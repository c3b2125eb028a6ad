//! H.264 MP4 videos through an external `ffmpeg`, written atomically, with the record's
//! `parameters` and `mgpu` entries in the file's metadata.
//!
//! - Which ffmpeg: the program named by `MGPU_FFMPEG` when that is set (and only that one: a
//!   wrong path is an error, not a silent fall-back), else the first `ffmpeg` on `PATH`. It
//!   must have the `libx264` encoder (Debian's, Ubuntu's, Homebrew's and the static builds do).
//! - Encoding: raw `rgb24` frames are piped to ffmpeg's stdin and converted to `yuv420p` (the
//!   only 8-bit layout every browser and phone plays) with the BT.709 matrix in limited range,
//!   and tagged so (`-colorspace/-color_primaries/-color_trc bt709`, `-color_range tv`: players
//!   that follow the tags show the colours mgpu computed, whatever the size); `libx264
//!   -preset slow -crf 17`: CRF 17–18 is what x264's and ffmpeg's guides call visually
//!   lossless, and 17 keeps the fine texture of generated video; `slow` took 2.4 s for an
//!   81-frame 832×480 clip on a 2-core machine (`medium` 1.8 s), nothing next to sampling it. `-movflags +faststart` puts the
//!   index first so browsers can play while downloading.
//! - Metadata: `-movflags +use_metadata_tags` with the custom keys `parameters` (A1111
//!   infotext) and `mgpu` (JSON record) — the same names as the PNG chunks, stored as
//!   QuickTime `mdta` keys in `moov/udta/meta` (`keys` + `ilst`), the way ComfyUI stores its
//!   `prompt`/`workflow` in MP4s. ffprobe, exiftool and mediainfo list them;
//!   [`super::mp4box::read_mp4_metadata`] reads them back without ffprobe. (The iTunes-style
//!   `comment` that some players show cannot be written alongside: ffmpeg's MP4 muxer writes
//!   either `mdta` keys or iTunes tags.)
//! - Atomicity: ffmpeg writes `.NAME.XXXXXX.tmp` in the target folder (the pattern the queue's
//!   stale-file cleanup removes); after ffmpeg exits successfully the file is `fsync`ed and
//!   renamed over `NAME`, and the folder is `fsync`ed. A kill at any moment leaves `NAME`
//!   absent or complete; a failing ffmpeg leaves no temporary file and its stderr in the error.
//!   ffmpeg runs in its own process group, so a Ctrl-C at the terminal (which mgpu answers by
//!   finishing the current batch) does not abort the encode; if mgpu dies, ffmpeg sees the end
//!   of its input and finishes the temporary file, which the next run's cleanup removes.
//! - The bytes depend on the ffmpeg/x264 build and thread count: golden checks compare frames
//!   (APNG), not MP4 bytes.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use image::RgbImage;

use super::png::record_texts;
use super::png::Staged;
use super::record::ImageRecord;
use super::video::{check_frames, Fps};
use super::OutputError;

/// The environment variable naming the ffmpeg program to use (instead of `PATH`'s).
pub const FFMPEG_ENV: &str = "MGPU_FFMPEG";

/// x264's constant rate factor (see the module docs).
pub const CRF: u32 = 17;
/// x264's preset.
pub const PRESET: &str = "slow";

/// A usable ffmpeg: it ran, told its version and has `libx264`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ffmpeg {
    pub path: PathBuf,
    /// The word after `ffmpeg version` in `ffmpeg -version` (`5.1.6-0+deb12u1`, `7.1`).
    pub version: String,
}

impl Ffmpeg {
    /// The ffmpeg to use (see [`Ffmpeg::locate`]), or `None`.
    pub fn find() -> Option<Ffmpeg> {
        Self::locate().ok()
    }

    /// `MGPU_FFMPEG` when set, else the first `ffmpeg` on `PATH`; an error says why none is
    /// usable.
    pub fn locate() -> Result<Ffmpeg, OutputError> {
        locate_with(std::env::var_os(FFMPEG_ENV), std::env::var_os("PATH"))
    }

    /// Probes the ffmpeg program at `path`: `-version` for its version, `-encoders` for
    /// `libx264`.
    pub fn at(path: &Path) -> Result<Ffmpeg, OutputError> {
        let run = |arg: &str| -> Result<String, OutputError> {
            let out = Command::new(path)
                .args(["-hide_banner", arg])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map_err(|e| OutputError::FfmpegMissing {
                    reason: format!("{} cannot be run ({e})", path.display()),
                })?;
            if !out.status.success() {
                return Err(OutputError::FfmpegMissing {
                    reason: format!("`{} {arg}` failed ({})", path.display(), out.status),
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let version_text = run("-version")?;
        let version = version_text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("ffmpeg version "))
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| OutputError::FfmpegMissing {
                reason: format!(
                    "{} does not answer `-version` like ffmpeg (first line: {:?})",
                    path.display(),
                    version_text.lines().next().unwrap_or("")
                ),
            })?
            .to_string();
        let encoders = run("-encoders")?;
        if !encoders
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("libx264"))
        {
            return Err(OutputError::FfmpegMissing {
                reason: format!(
                    "{} (ffmpeg {version}) was built without the libx264 encoder",
                    path.display()
                ),
            });
        }
        Ok(Ffmpeg {
            path: path.to_path_buf(),
            version,
        })
    }

    /// The arguments that encode `w×h` rgb24 frames from stdin at `fps` into `out`.
    fn args(
        &self,
        (w, h): (u32, u32),
        fps: Fps,
        record: &ImageRecord,
        out: &Path,
    ) -> Vec<OsString> {
        const VF: &str = "scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int,format=yuv420p";
        let input = format!(
            "-hide_banner -nostdin -loglevel error -y \
             -f rawvideo -pix_fmt rgb24 -video_size {w}x{h} -framerate {fps} -i pipe:0 -an"
        );
        let codec = format!(
            "-c:v libx264 -preset {PRESET} -crf {CRF} -pix_fmt yuv420p \
             -colorspace bt709 -color_primaries bt709 -color_trc bt709 -color_range tv \
             -movflags +faststart+use_metadata_tags"
        );
        let mut a: Vec<OsString> = input.split_whitespace().map(Into::into).collect();
        a.extend(["-vf", VF].map(OsString::from));
        a.extend(codec.split_whitespace().map(OsString::from));
        for (key, text) in record_texts(record) {
            a.push("-metadata".into());
            a.push(format!("{key}={text}").into());
        }
        a.extend(["-f", "mp4"].map(OsString::from));
        a.push(out.as_os_str().to_owned());
        a
    }

    /// Encodes `frames` (at least one, all one even size) at `fps` into an MP4 at `path`,
    /// atomically (see the module docs).
    pub fn write_mp4(
        &self,
        path: &Path,
        frames: &[RgbImage],
        fps: Fps,
        record: &ImageRecord,
    ) -> Result<(), OutputError> {
        let size = check_even_frames(frames)?;
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |e: std::io::Error| OutputError::Io {
                path: p,
                op,
                source: e,
            }
        };
        // Removed on drop unless committed.
        let staged = Staged::beside(path)?;
        let tmp = staged.temp_path().to_path_buf();

        let mut cmd = Command::new(&self.path);
        cmd.args(self.args(size, fps, record, &tmp))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Its own process group: a Ctrl-C at the terminal reaches mgpu only, which finishes
        // the batch (this video included) before stopping; ffmpeg would abort the encode.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|e| OutputError::FfmpegMissing {
            reason: format!("{} cannot be run ({e})", self.path.display()),
        })?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let drain = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let fed = frames.iter().try_for_each(|f| stdin.write_all(f.as_raw()));
        drop(stdin); // EOF: ffmpeg finishes the file.
        let status = child.wait().map_err(io("wait for ffmpeg writing", path))?;
        let err_text = drain.join().unwrap_or_default();
        if !status.success() || fed.is_err() {
            let mut stderr = tail(&err_text);
            if let (true, Err(e)) = (stderr.is_empty(), &fed) {
                stderr = format!("(nothing on stderr; feeding frames failed: {e})");
            }
            return Err(OutputError::Ffmpeg {
                ffmpeg: self.path.clone(),
                path: path.to_path_buf(),
                status: status.to_string(),
                stderr,
            });
        }
        staged.commit()?;
        Ok(())
    }
}

/// Writes an H.264 MP4 with the ffmpeg of [`Ffmpeg::locate`] (see [`Ffmpeg::write_mp4`]).
/// Frame checks (count, one size, even width and height) come first, so they hold without
/// ffmpeg.
pub fn write_mp4(
    path: &Path,
    frames: &[RgbImage],
    fps: Fps,
    record: &ImageRecord,
) -> Result<(), OutputError> {
    check_even_frames(frames)?;
    Ffmpeg::locate()?.write_mp4(path, frames, fps, record)
}

/// [`check_frames`] plus yuv420p's even width and height.
pub fn check_even_frames(frames: &[RgbImage]) -> Result<(u32, u32), OutputError> {
    let (width, height) = check_frames(frames)?;
    if width % 2 != 0 || height % 2 != 0 {
        return Err(OutputError::OddVideoSize { width, height });
    }
    Ok((width, height))
}

/// [`Ffmpeg::locate`] with the values of `MGPU_FFMPEG` and `PATH` given.
fn locate_with(env: Option<OsString>, path_var: Option<OsString>) -> Result<Ffmpeg, OutputError> {
    match env {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            Ffmpeg::at(&p).map_err(|e| match e {
                OutputError::FfmpegMissing { reason } => OutputError::FfmpegMissing {
                    reason: format!("{FFMPEG_ENV} names {}, but {reason}", p.display()),
                },
                other => other,
            })
        }
        _ => {
            let path = search_path(path_var).ok_or_else(|| OutputError::FfmpegMissing {
                reason: "no `ffmpeg` program on PATH".into(),
            })?;
            Ffmpeg::at(&path)
        }
    }
}

/// The first executable file named `ffmpeg` in the `PATH` list.
fn search_path(path_var: Option<OsString>) -> Option<PathBuf> {
    std::env::split_paths(&path_var?)
        .map(|d| d.join("ffmpeg"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// The end of ffmpeg's stderr: its last 12 non-empty lines, at most 2000 bytes, joined by ` | `.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(12)..].join(" | ");
    if joined.len() <= 2000 {
        return joined;
    }
    let mut start = joined.len() - 2000;
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &joined[start..])
}

#[cfg(test)]
#[path = "mp4_tests.rs"]
mod tests;
