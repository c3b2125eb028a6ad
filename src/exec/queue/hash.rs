//! The task hash: a SHA-256 over everything that decides an image's pixels, so a rerun can
//! tell a finished output (same hash in its PNG's `mgpu` record) from a stale one.
//!
//! Covered: prompt, seed, size, steps, sampler, scheduler, guidance, denoise, the init image's
//! bytes; the classifier-free guidance scale and negative prompt (when `cfg` is not 1), the
//! `shift` when given, a video's frames and frame rate; for every model of the job's pipeline (diffusion model, text encoders in order, VAE):
//! family, the weights file ([`FileFingerprint`]: path, size and a hash of its first and last
//! MiB, which hold the header), the tokenizer file, the FLUX variant if forced, the compute
//! dtype, the compute backend (`cpu`/`cuda`: kernels round differently), the LoRA mode and
//! each LoRA (file fingerprint + strength, in order); and the mgpu version.
//!
//! Not covered: placement (allocation, overrides, donors, prefetch slots: placement never
//! changes pixels, docs/decisions.md §4), batch sizes (same reason), names of jobs, models and
//! pipelines, output paths, `keep_loaded`, LoRA `strict`. The hash input is a JSON document
//! ([`TaskKey`]), so what is covered is visible in one place and tests can print it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::family::Family;
use crate::manifest::{ComputeDtype, FluxVariant, Job, JobImage, LoraMode, Manifest, Model};
use crate::sample::{Sampler, Scheduler};

/// Bytes hashed at each end of a weights file (a safetensors header longer than this is
/// hashed whole).
pub const SAMPLE_BYTES: u64 = 1 << 20;

/// Version of the hash input layout: bump when [`TaskKey`] changes meaning, so old outputs
/// are regenerated rather than wrongly kept.
pub const HASH_SCHEME: u32 = 1;

/// A file that cannot be read for hashing.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash {what} {}: {source}", path.display())]
pub struct HashError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// What identifies a (large) weights or tokenizer file without reading all of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileFingerprint {
    /// Relative to the manifest's folder when inside it (moving the whole project keeps
    /// outputs valid), else absolute; `/` separators.
    pub path: String,
    pub size: u64,
    /// SHA-256 of the first max(1 MiB, safetensors header) bytes and the last 1 MiB.
    pub sample_sha256: String,
}

impl FileFingerprint {
    /// Reads the ends of `path`; `base` is the manifest's folder.
    pub fn of(path: &Path, base: &Path, what: &'static str) -> Result<Self, HashError> {
        let err = |e| HashError {
            what,
            path: path.to_path_buf(),
            source: e,
        };
        let mut f = File::open(path).map_err(err)?;
        let size = f.metadata().map_err(err)?.len();
        let mut prefix = SAMPLE_BYTES;
        if size >= 8 {
            let mut n = [0u8; 8];
            f.read_exact(&mut n).map_err(err)?;
            // A safetensors header: hash all of it, whatever its length.
            let header_end = u64::from_le_bytes(n).saturating_add(8);
            if header_end <= size {
                prefix = prefix.max(header_end);
            }
            f.seek(SeekFrom::Start(0)).map_err(err)?;
        }
        let mut h = Sha256::new();
        h.update(size.to_le_bytes());
        let head = prefix.min(size);
        hash_range(&mut f, 0, head, &mut h).map_err(err)?;
        let tail_start = size.saturating_sub(SAMPLE_BYTES).max(head);
        hash_range(&mut f, tail_start, size - tail_start, &mut h).map_err(err)?;
        Ok(FileFingerprint {
            path: shown_path(path, base),
            size,
            sample_sha256: hex(h.finalize()),
        })
    }
}

fn hash_range(f: &mut File, start: u64, len: u64, h: &mut Sha256) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = (left.min(buf.len() as u64)) as usize;
        f.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

fn shown_path(path: &Path, base: &Path) -> String {
    let p = path.strip_prefix(base).unwrap_or(path);
    p.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
        .replace("//", "/")
}

/// Lowercase hex.
pub fn hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(Sha256::digest(bytes))
}

/// The pixel-deciding part of one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelKey {
    pub family: Family,
    pub file: FileFingerprint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<FileFingerprint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<FluxVariant>,
    pub dtype: ComputeDtype,
    /// `cpu` or `cuda`: which kernels compute (not which GPU: same model, same bits).
    pub backend: &'static str,
    pub lora_mode: LoraMode,
    pub loras: Vec<LoraKey>,
    /// VAE `decode_tile`: tiled decoding changes pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_tile: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraKey {
    pub file: FileFingerprint,
    pub strength: f64,
}

/// The hash input of one image: serialised to JSON, then SHA-256.
#[derive(Debug, Clone, Serialize)]
pub struct TaskKey<'a> {
    pub scheme: u32,
    pub mgpu_version: &'static str,
    pub prompt: &'a str,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub sampler: Sampler,
    pub scheduler: Scheduler,
    pub guidance: f64,
    pub denoise: f64,
    /// SHA-256 of the init image file's bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_image: Option<&'a str>,
    /// Diffusion model, text encoders in the pipeline's order, VAE.
    pub models: Vec<&'a ModelKey>,
    /// True classifier-free guidance: the scale and the negative prompt (left out at
    /// `cfg = 1`, where neither changes a pixel, so image jobs hash as they always did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cfg: Option<CfgKey<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
    /// Frames and frame rate of a video (left out for images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    /// The pipeline's expert `boundary` when the manifest gives one (Wan 2.2 A14B; the
    /// default follows from the weights, which `models` fingerprints, the low-noise expert
    /// right after the high-noise one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boundary: Option<f64>,
    /// The pipeline's T5 token count when the manifest gives one (FLUX).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sequence_length: Option<u32>,
    /// The low-noise expert's guidance scale, when the job gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cfg_low_noise: Option<f64>,
}

/// The guidance part of a [`TaskKey`].
#[derive(Debug, Clone, Serialize)]
pub struct CfgKey<'a> {
    pub scale: f64,
    pub negative_prompt: &'a str,
}

/// Hashes the images of one manifest: reads each model, tokenizer, LoRA and init image file
/// once (their ends; init images whole) and then hashes any image without touching disk.
#[derive(Debug, Clone)]
pub struct TaskHasher {
    models: BTreeMap<String, ModelKey>,
    /// Pipeline name → model names (diffusion, its low-noise expert, encoders, VAE).
    pipelines: BTreeMap<String, Vec<String>>,
    /// Pipeline name → the manifest's expert boundary and T5 token count.
    settings: BTreeMap<String, (Option<f64>, Option<u32>)>,
    init_images: BTreeMap<PathBuf, String>,
}

impl TaskHasher {
    /// Fingerprints every file the manifest's jobs use.
    pub fn new(m: &Manifest) -> Result<Self, HashError> {
        let mut models = BTreeMap::new();
        let mut pipelines = BTreeMap::new();
        let mut init_images = BTreeMap::new();
        let mut settings = BTreeMap::new();
        for job in &m.jobs {
            if !pipelines.contains_key(&job.pipeline) {
                let Some(p) = m.pipelines.get(&job.pipeline) else {
                    continue; // validation guarantees it exists
                };
                settings.insert(job.pipeline.clone(), (p.boundary, p.max_sequence_length));
                let names: Vec<String> = std::iter::once(&p.diffusion)
                    .chain(&p.low_noise)
                    .chain(&p.text_encoders)
                    .chain(std::iter::once(&p.vae))
                    .cloned()
                    .collect();
                for n in &names {
                    if let (false, Some(model)) = (models.contains_key(n), m.models.get(n)) {
                        models.insert(n.clone(), model_key(model, &m.dir)?);
                    }
                }
                pipelines.insert(job.pipeline.clone(), names);
            }
            if let Some(init) = &job.init_image {
                if !init_images.contains_key(init) {
                    let bytes = std::fs::read(init).map_err(|e| HashError {
                        what: "init image",
                        path: init.clone(),
                        source: e,
                    })?;
                    init_images.insert(init.clone(), sha256_hex(&bytes));
                }
            }
        }
        Ok(TaskHasher {
            models,
            pipelines,
            settings,
            init_images,
        })
    }

    /// The hash input of image `image` of `job` (a job of the manifest this was built from).
    pub fn key<'a>(&'a self, job: &'a Job, image: &JobImage) -> TaskKey<'a> {
        let models = self
            .pipelines
            .get(&job.pipeline)
            .map(|names| names.iter().filter_map(|n| self.models.get(n)).collect())
            .unwrap_or_default();
        TaskKey {
            scheme: HASH_SCHEME,
            mgpu_version: env!("CARGO_PKG_VERSION"),
            prompt: &job.prompt,
            seed: image.seed,
            width: job.width,
            height: job.height,
            steps: job.steps,
            sampler: job.sampler,
            scheduler: job.scheduler,
            guidance: job.guidance,
            denoise: job.denoise,
            init_image: job
                .init_image
                .as_ref()
                .and_then(|p| self.init_images.get(p))
                .map(String::as_str),
            models,
            cfg: job.true_cfg().then(|| CfgKey {
                scale: job.cfg,
                negative_prompt: job.negative_prompt.as_deref().unwrap_or(""),
            }),
            shift: job.shift,
            frames: job.is_video().then_some(job.frames),
            fps: job.fps,
            boundary: self.settings.get(&job.pipeline).and_then(|s| s.0),
            max_sequence_length: self.settings.get(&job.pipeline).and_then(|s| s.1),
            cfg_low_noise: job.cfg_low_noise,
        }
    }

    /// The task hash, lowercase hex SHA-256 of the key's JSON.
    pub fn hash(&self, job: &Job, image: &JobImage) -> String {
        let json = serde_json::to_vec(&self.key(job, image)).expect("a TaskKey always serialises");
        sha256_hex(&json)
    }
}

fn model_key(model: &Model, base: &Path) -> Result<ModelKey, HashError> {
    let loras = model
        .loras
        .iter()
        .map(|l| {
            Ok(LoraKey {
                file: FileFingerprint::of(&l.file, base, "LoRA file")?,
                strength: l.strength,
            })
        })
        .collect::<Result<Vec<_>, HashError>>()?;
    Ok(ModelKey {
        family: model.family,
        file: FileFingerprint::of(&model.file, base, "weights file")?,
        tokenizer: model
            .tokenizer
            .as_ref()
            .map(|t| FileFingerprint::of(t, base, "tokenizer file"))
            .transpose()?,
        variant: model.variant,
        dtype: model.dtype,
        backend: if model.compute.is_cuda() {
            "cuda"
        } else {
            "cpu"
        },
        lora_mode: model.lora_mode,
        loras,
        decode_tile: model.decode_tile,
    })
}
