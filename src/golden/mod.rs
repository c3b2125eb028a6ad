//! Golden outputs: record hashes of decoded pixels and latents, verify bit-exactly.
//!
//! `golden/<manifest-stem>/` holds `golden.json` ([`GoldenFile`]: per output the SHA-256 of
//! the raw RGB8 pixels and of the final latent as f32 little-endian bytes, and the machine
//! [`Fingerprint`]), a copy of each PNG and each latent as `.npy` (so a mismatch can say by
//! how much). Layout and rules: docs/golden.md.
//!
//! - [`Recorder`]: `mgpu golden record` feeds it every image of a full run ([`Captured`]); it
//!   writes into a staging folder and swaps it in at the end, so golden files change only
//!   through a complete recording (and never over existing ones without `--force`).
//! - [`Verifier`]: `mgpu golden verify` and `mgpu run --verify-golden DIR` feed it the images
//!   of a run; each is compared with its golden by (job, index). The rule: the same
//!   fingerprint → bit-exact; another machine → [`Tolerance`] (PSNR and latent max |Δ|).
//!   The [`VerifyReport`] says which rule applied and, per output, the numbers.
//!
//! Connects the queue (its [`crate::exec::queue::Observer::rendered`] hook hands over pixels
//! and latents) to the report ([`crate::report`] renders [`VerifyReport`]).

pub mod compare;
pub mod fingerprint;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

pub use compare::{latent_max_abs_diff, pixel_diff, PixelDiff, Rule, Tolerance};
pub use fingerprint::{gpus_of, Fingerprint, GpuFingerprint};

use crate::exec::queue::sha256_hex;
use crate::exec::{ImageTask, Rendered};
use crate::weights::npy;

/// The golden file's name inside its folder.
pub const GOLDEN_FILE: &str = "golden.json";
/// Version of [`GoldenFile`]'s layout.
pub const GOLDEN_FORMAT: u32 = 1;

/// `golden/<stem>/golden.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenFile {
    pub format: u32,
    /// The manifest's file name.
    pub manifest: String,
    /// When it was recorded (UTC, RFC 3339).
    pub recorded: String,
    pub fingerprint: Fingerprint,
    /// In manifest order.
    pub outputs: Vec<GoldenOutput>,
}

/// One output's golden values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenOutput {
    pub job: String,
    pub index: u32,
    pub seed: u64,
    /// The output path relative to the output root (`/` separators).
    pub output: String,
    pub width: u32,
    pub height: u32,
    /// The job hash the image was made with (docs/executor.md).
    pub job_hash: String,
    /// SHA-256 of the decoded pixels: RGB8, row-major, no header; for a video, of every
    /// frame's in order.
    pub pixels_sha256: String,
    /// A video's per-frame SHA-256 (absent for images), so a mismatch names the first
    /// differing frame.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames_sha256: Vec<String>,
    /// SHA-256 of the final latent's f32 values, little-endian, C order.
    pub latent_sha256: String,
    pub latent_shape: Vec<usize>,
    /// The copies, relative to the golden folder.
    pub png: String,
    pub latent: String,
}

/// Why golden files could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("{} already holds golden files: rerun with --force to replace them (the old ones are removed only after the new recording is complete)", dir.display())]
    Exists { dir: PathBuf },
    #[error("no golden files in {}: record them with `mgpu golden record MANIFEST`", dir.display())]
    Missing { dir: PathBuf },
    #[error("{} is not a valid golden file: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GoldenError {
    let path = path.to_path_buf();
    move |source| GoldenError::Io { path, op, source }
}

/// SHA-256 of RGB8 pixels.
pub fn pixels_sha256(rgb: &RgbImage) -> String {
    sha256_hex(rgb.as_raw())
}

/// SHA-256 of every frame's RGB8 pixels in order (one frame: [`pixels_sha256`]).
pub fn frames_sha256(frames: &[RgbImage]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in frames {
        h.update(f.as_raw());
    }
    crate::exec::queue::hash::hex(h.finalize())
}

/// SHA-256 of a latent's f32 values, little-endian.
pub fn latent_sha256(latent: &[f32]) -> String {
    let bytes: Vec<u8> = latent.iter().flat_map(|v| v.to_le_bytes()).collect();
    sha256_hex(&bytes)
}

/// The default golden folder of a manifest: `golden/<manifest-stem>` (relative to the
/// current folder, normally the repository root).
pub fn default_dir(manifest: &Path) -> PathBuf {
    let stem = manifest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest".into());
    Path::new("golden").join(stem)
}

/// One image of a run, as golden files see it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub job: String,
    pub index: u32,
    pub seed: u64,
    /// Relative to the output root, `/` separators.
    pub output: String,
    pub job_hash: String,
    /// The decoded frames (one for an image).
    pub frames: Vec<RgbImage>,
    /// A video's frame rate (for the lossless copy of an MP4 output).
    pub fps: Option<u32>,
    /// The record written with it (a rendered output; `None` when read from its file).
    pub record: Option<crate::output::ImageRecord>,
    /// `None` for an image that was not rendered in this run (up to date, read from its file).
    pub latent: Option<(Vec<f32>, Vec<usize>)>,
    /// The written PNG.
    pub png: PathBuf,
}

fn relative(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

impl Captured {
    /// The first frame (the image, for image families).
    pub fn rgb(&self) -> &RgbImage {
        &self.frames[0]
    }

    /// A rendered image, written to `png` under `output_root`.
    pub fn rendered(task: &ImageTask, r: &Rendered, png: &Path, output_root: &Path) -> Self {
        Captured {
            job: task.job.name.clone(),
            index: task.image.index,
            seed: task.image.seed,
            output: relative(png, output_root),
            job_hash: task.hash.clone(),
            frames: r.frames.clone(),
            fps: task.job.fps,
            record: Some(r.record.clone()),
            latent: Some((r.latent.clone(), r.latent_shape.clone())),
            png: png.to_path_buf(),
        }
    }

    /// An up-to-date output of the run, read back from its file (pixels only; an animated
    /// PNG's every frame). An MP4 cannot be compared this way: its frames are lossy.
    pub fn from_file(task: &ImageTask, output_root: &Path) -> Result<Self, String> {
        let png = &task.image.path;
        if crate::output::needs_ffmpeg(png) {
            return Err(format!(
                "{} is up to date but an MP4 is lossy, so its frames cannot be compared with golden pixels: rerun with --force to render and compare it",
                png.display()
            ));
        }
        let frames = crate::output::decode_apng_file(png)
            .map_err(|e| format!("cannot read {}: {e}", png.display()))?;
        if frames.is_empty() {
            return Err(format!("{} has no frames", png.display()));
        }
        Ok(Captured {
            job: task.job.name.clone(),
            index: task.image.index,
            seed: task.image.seed,
            output: relative(png, output_root),
            job_hash: task.hash.clone(),
            frames,
            fps: task.job.fps,
            record: None,
            latent: None,
            png: png.clone(),
        })
    }
}

/// Writes a golden folder (see the module doc).
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    staging: tempfile::TempDir,
    outputs: Vec<GoldenOutput>,
}

impl Recorder {
    /// Starts a recording into `dir`; refuses when `dir` holds anything and `force` is off.
    pub fn new(dir: &Path, force: bool) -> Result<Self, GoldenError> {
        let occupied = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if occupied && !force {
            return Err(GoldenError::Exists {
                dir: dir.to_path_buf(),
            });
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
        let staging = tempfile::Builder::new()
            .prefix(".golden-staging-")
            .tempdir_in(&parent)
            .map_err(io("create a staging folder in", &parent))?;
        Ok(Recorder {
            dir: dir.to_path_buf(),
            staging,
            outputs: Vec::new(),
        })
    }

    /// Adds one rendered image: copies its PNG and writes its latent.
    pub fn add(&mut self, c: &Captured) -> Result<(), GoldenError> {
        let Some((latent, shape)) = &c.latent else {
            return Err(GoldenError::Invalid {
                path: c.png.clone(),
                reason: "golden files need the latent: record from a run that renders every image"
                    .into(),
            });
        };
        // The copy must hold the exact pixels: a PNG or animated PNG output is copied; an
        // MP4 (lossy) is kept as a lossless animated PNG of the frames beside its name.
        let lossy = crate::output::needs_ffmpeg(&c.png);
        let png = if lossy {
            format!("outputs/{}.frames.png", c.output)
        } else {
            format!("outputs/{}", c.output)
        };
        let stem = [".png", ".apng", ".mp4"]
            .iter()
            .find_map(|e| c.output.strip_suffix(e))
            .unwrap_or(&c.output);
        let latent_rel = format!("outputs/{stem}.latent.npy");
        let png_path = self.staging.path().join(&png);
        let latent_path = self.staging.path().join(&latent_rel);
        if let Some(parent) = png_path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        if lossy {
            let invalid = |reason: String| GoldenError::Invalid {
                path: c.png.clone(),
                reason,
            };
            let record = c
                .record
                .as_ref()
                .ok_or_else(|| invalid("no record to store with the frames".into()))?;
            let fps = crate::output::Fps::integer(c.fps.unwrap_or(16).min(65535) as u16)
                .map_err(|e| invalid(e.to_string()))?;
            let bytes = crate::output::encode_apng(&c.frames, fps, record)
                .map_err(|e| invalid(e.to_string()))?;
            std::fs::write(&png_path, bytes).map_err(io("write", &png_path))?;
        } else {
            std::fs::copy(&c.png, &png_path).map_err(io("copy", &c.png))?;
        }
        let shape64: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        npy::write_f32(&latent_path, &shape64, latent).map_err(io("write", &latent_path))?;
        self.outputs.push(GoldenOutput {
            job: c.job.clone(),
            index: c.index,
            seed: c.seed,
            output: c.output.clone(),
            width: c.rgb().width(),
            height: c.rgb().height(),
            job_hash: c.job_hash.clone(),
            pixels_sha256: frames_sha256(&c.frames),
            frames_sha256: if c.frames.len() > 1 {
                c.frames.iter().map(pixels_sha256).collect()
            } else {
                Vec::new()
            },
            latent_sha256: latent_sha256(latent),
            latent_shape: shape.clone(),
            png,
            latent: latent_rel,
        });
        Ok(())
    }

    /// Writes `golden.json` and moves the recording into place (replacing the old one).
    pub fn finish(
        mut self,
        manifest: &Path,
        fingerprint: Fingerprint,
    ) -> Result<GoldenFile, GoldenError> {
        let order = |o: &GoldenOutput| (o.job.clone(), o.index);
        self.outputs.sort_by_key(order);
        let file = GoldenFile {
            format: GOLDEN_FORMAT,
            manifest: manifest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            recorded: crate::exec::queue::lock::utc_timestamp(std::time::SystemTime::now()),
            fingerprint,
            outputs: self.outputs,
        };
        let json = serde_json::to_string_pretty(&file).expect("a GoldenFile always serialises");
        let path = self.staging.path().join(GOLDEN_FILE);
        std::fs::write(&path, json + "\n").map_err(io("write", &path))?;
        let staged = self.staging.keep();
        let old = self
            .dir
            .with_extension(format!("old-{}", std::process::id()));
        let had_old = self.dir.exists();
        if had_old {
            std::fs::rename(&self.dir, &old).map_err(io("move aside", &self.dir))?;
        }
        if let Err(e) = std::fs::rename(&staged, &self.dir) {
            if had_old {
                let _ = std::fs::rename(&old, &self.dir);
            }
            return Err(io("move into place", &self.dir)(e));
        }
        if had_old {
            std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
        }
        Ok(file)
    }
}

/// Reads `dir/golden.json`.
pub fn load(dir: &Path) -> Result<GoldenFile, GoldenError> {
    let path = dir.join(GOLDEN_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GoldenError::Missing {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io("read", &path)(e)),
    };
    let file: GoldenFile = serde_json::from_str(&text).map_err(|e| GoldenError::Invalid {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if file.format != GOLDEN_FORMAT {
        return Err(GoldenError::Invalid {
            path,
            reason: format!(
                "format {} (this mgpu reads format {GOLDEN_FORMAT}): record it again",
                file.format
            ),
        });
    }
    Ok(file)
}

/// How one output compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Bit-identical pixels and latent.
    Match,
    /// Not identical, within the tolerance (other machine only).
    WithinTolerance,
    Mismatch,
    /// The run made it; the golden files do not have it.
    NotInGolden,
}

/// One output's comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OutputCheck {
    pub job: String,
    pub index: u32,
    pub output: String,
    pub verdict: Verdict,
    pub pixels_equal: bool,
    /// `None`: not compared (the image was not rendered in this run).
    pub latent_equal: Option<bool>,
    pub max_pixel_diff: u8,
    /// `None` when the pixels are identical (infinite PSNR).
    pub psnr_db: Option<f64>,
    pub latent_max_abs_diff: Option<f32>,
    /// Why numbers are missing, or what else was noticed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The golden copy, relative to the golden folder (absent when there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_png: Option<String>,
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub rule: Rule,
    /// Why the bit-exact rule does not apply (empty when it does).
    pub fingerprint_differences: Vec<String>,
    pub outputs: Vec<OutputCheck>,
    /// Golden outputs the run did not make (`job#index → output`).
    pub missing: Vec<String>,
    pub ok: bool,
}

/// Compares a run's images with a golden folder.
#[derive(Debug)]
pub struct Verifier {
    dir: PathBuf,
    golden: GoldenFile,
    rule: Rule,
    differences: Vec<String>,
    checks: Vec<OutputCheck>,
}

impl Verifier {
    /// Loads `dir`'s golden file; `here` decides the rule ([`Fingerprint::differences`]).
    pub fn new(dir: &Path, here: &Fingerprint, tolerance: Tolerance) -> Result<Self, GoldenError> {
        let golden = load(dir)?;
        let differences = here.differences(&golden.fingerprint);
        let rule = if differences.is_empty() {
            Rule::BitExact
        } else {
            Rule::Tolerance(tolerance)
        };
        Ok(Verifier {
            dir: dir.to_path_buf(),
            golden,
            rule,
            differences,
            checks: Vec::new(),
        })
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Compares one image with its golden (by job and index).
    pub fn check(&mut self, c: &Captured) {
        let check = match self
            .golden
            .outputs
            .iter()
            .find(|g| g.job == c.job && g.index == c.index)
        {
            None => OutputCheck {
                job: c.job.clone(),
                index: c.index,
                output: c.output.clone(),
                verdict: Verdict::NotInGolden,
                pixels_equal: false,
                latent_equal: None,
                max_pixel_diff: 0,
                psnr_db: None,
                latent_max_abs_diff: None,
                notes: vec!["the golden files have no such output: record them again".into()],
                golden_png: None,
            },
            Some(g) => compare_one(&self.dir, g, c, self.rule),
        };
        self.checks.push(check);
    }

    /// The report. `complete`: the run was meant to make every golden output (a full run), so
    /// golden outputs it did not make are failures; a sharded run passes `false`.
    pub fn finish(mut self, complete: bool) -> VerifyReport {
        let missing: Vec<String> = if complete {
            self.golden
                .outputs
                .iter()
                .filter(|g| {
                    !self
                        .checks
                        .iter()
                        .any(|c| c.job == g.job && c.index == g.index)
                })
                .map(|g| format!("{}#{} → {}", g.job, g.index, g.output))
                .collect()
        } else {
            Vec::new()
        };
        let order = |c: &OutputCheck| (c.job.clone(), c.index);
        self.checks.sort_by_key(order);
        let ok = missing.is_empty()
            && self
                .checks
                .iter()
                .all(|c| matches!(c.verdict, Verdict::Match | Verdict::WithinTolerance));
        VerifyReport {
            dir: self.dir,
            rule: self.rule,
            fingerprint_differences: self.differences,
            outputs: self.checks,
            missing,
            ok,
        }
    }
}

/// The first 12 characters of a hash.
fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// The first frame whose hash differs from the golden's (videos recorded with per-frame
/// hashes and the same frame count).
fn first_differing_frame(g: &GoldenOutput, c: &Captured) -> Option<usize> {
    if g.frames_sha256.len() != c.frames.len() || c.frames.len() < 2 {
        return None;
    }
    c.frames
        .iter()
        .zip(&g.frames_sha256)
        .position(|(f, h)| pixels_sha256(f) != *h)
}

fn compare_one(dir: &Path, g: &GoldenOutput, c: &Captured, rule: Rule) -> OutputCheck {
    let mut notes = Vec::new();
    let pixels_equal = frames_sha256(&c.frames) == g.pixels_sha256;
    let (mut max_pixel_diff, mut psnr_db) = (0u8, None);
    let mut pixels_comparable = true;
    if !pixels_equal {
        if let Some(i) = first_differing_frame(g, c) {
            notes.push(format!(
                "first differing frame: {} of {}",
                i + 1,
                c.frames.len()
            ));
        }
        let png = dir.join(&g.png);
        match crate::output::decode_apng_file(&png) {
            Ok(golden) => {
                let dims = |f: &[RgbImage]| f.first().map(|i| i.dimensions());
                if golden.len() != c.frames.len() || dims(&golden) != dims(&c.frames) {
                    pixels_comparable = false;
                    let shape = |f: &[RgbImage]| match dims(f) {
                        Some((w, h)) if f.len() > 1 => format!("{w}x{h}×{} frames", f.len()),
                        Some((w, h)) => format!("{w}x{h}"),
                        None => "no frames".into(),
                    };
                    notes.push(format!(
                        "size differs: golden {}, now {}",
                        shape(&golden),
                        shape(&c.frames)
                    ));
                } else {
                    let cat = |f: &[RgbImage]| -> Vec<u8> {
                        f.iter().flat_map(|i| i.as_raw().iter().copied()).collect()
                    };
                    let d = pixel_diff(&cat(&golden), &cat(&c.frames));
                    max_pixel_diff = d.max_abs;
                    psnr_db = d.psnr_db;
                }
            }
            Err(e) => {
                pixels_comparable = false;
                notes.push(format!(
                    "cannot read the golden copy {}: {e}",
                    png.display()
                ));
            }
        }
    }
    let (mut latent_equal, mut latent_diff) = (None, None);
    let mut latent_comparable = true;
    match &c.latent {
        None => notes.push(
            "latent not compared: the image was up to date, not rendered in this run (rerun with --force to compare it)".into(),
        ),
        Some((latent, shape)) => {
            let equal = latent_sha256(latent) == g.latent_sha256 && *shape == g.latent_shape;
            latent_equal = Some(equal);
            if equal {
                latent_diff = Some(0.0);
            } else if *shape != g.latent_shape {
                latent_comparable = false;
                notes.push(format!(
                    "latent shape differs: golden {:?}, now {shape:?}",
                    g.latent_shape
                ));
            } else {
                let path = dir.join(&g.latent);
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| npy::read_f32(&b))
                {
                    Ok(gl) if gl.data.len() == latent.len() => {
                        latent_diff = Some(latent_max_abs_diff(&gl.data, latent))
                    }
                    Ok(_) => {
                        latent_comparable = false;
                        notes.push(format!("{} does not match its recorded shape", path.display()))
                    }
                    Err(e) => {
                        latent_comparable = false;
                        notes.push(format!("cannot read the golden latent {}: {e}", path.display()))
                    }
                }
            }
        }
    }
    let identical = pixels_equal && latent_equal != Some(false);
    if !identical && c.job_hash != g.job_hash {
        // Issue 14: a mismatch after a manifest edit says why rather than only "MISMATCH".
        notes.insert(
            0,
            format!(
                "the job hash changed since the recording ({} → {}): the job's settings, a \
                 model/LoRA file or mgpu's version differ, so different pixels are expected; \
                 record again with `mgpu golden record --force` if the change is intended",
                short(&g.job_hash),
                short(&c.job_hash)
            ),
        );
    }
    let verdict = if identical {
        Verdict::Match
    } else {
        match rule {
            Rule::BitExact => Verdict::Mismatch,
            Rule::Tolerance(t) => {
                let pixels_ok = pixels_equal
                    || (pixels_comparable && psnr_db.is_some_and(|p| p >= t.min_psnr_db));
                let latent_ok = latent_equal != Some(false)
                    || (latent_comparable
                        && latent_diff.is_some_and(|d| d <= t.max_latent_abs_diff));
                if pixels_ok && latent_ok {
                    Verdict::WithinTolerance
                } else {
                    Verdict::Mismatch
                }
            }
        }
    };
    OutputCheck {
        job: c.job.clone(),
        index: c.index,
        output: c.output.clone(),
        verdict,
        pixels_equal,
        latent_equal,
        max_pixel_diff,
        psnr_db,
        latent_max_abs_diff: latent_diff,
        notes,
        golden_png: Some(g.png.clone()),
    }
}
