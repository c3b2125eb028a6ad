//! The validated manifest types: only [`super::validate`] builds them, so holding one means
//! every reference resolves, every number is in range and every path is resolved against
//! the manifest's folder. Later stages (planner, executor) read these.

use std::path::PathBuf;

use serde::Serialize;

use super::names::{ComputeDtype, FluxVariant, LoraMode};
use super::template::{OutputTemplate, Vars};
use crate::alloc::{Allocation, Override};
use crate::device::DeviceName;
use crate::family::Family;
use crate::sample::{Sampler, Scheduler};

/// `[settings]`, with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Absolute folder every job's output path is under.
    pub output_root: PathBuf,
    /// Regenerate every image, like `mgpu run --force` (false: skip up-to-date ones).
    pub overwrite: bool,
    /// The default compute device, if set.
    pub compute: Option<DeviceName>,
}

/// One model component.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub name: String,
    pub family: Family,
    /// The weights file, resolved against the manifest's folder.
    pub file: PathBuf,
    pub compute: DeviceName,
    /// `Auto` when the manifest gives neither `allocation` nor `virtual_vram`.
    pub allocation: Allocation,
    /// Tried in order before the allocation; see [`Override`].
    pub overrides: Vec<Override>,
    pub loras: Vec<Lora>,
    pub lora_mode: LoraMode,
    /// Explicit, or the default for `compute` ([`ComputeDtype::default_for`]).
    pub dtype: ComputeDtype,
    /// Resolved tokenizer file; always `Some` for text encoders except umT5, whose weights
    /// file may carry its SentencePiece model (`spiece_model`, as ComfyUI saves it).
    pub tokenizer: Option<PathBuf>,
    /// Only for `flux`; `None`: detect from the weights.
    pub variant: Option<FluxVariant>,
    /// Prefetch slots; `None`: the planner chooses.
    pub prefetch: Option<u32>,
    pub keep_loaded: bool,
    /// VAEs only: tiled decoding with tiles of this many latent pixels (16–4096).
    pub decode_tile: Option<u32>,
}

/// One LoRA of a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lora {
    /// Resolved against the manifest's folder.
    pub file: PathBuf,
    /// Finite; 1.0 by default.
    pub strength: f64,
    /// Fail (true, default) or warn when a LoRA tensor matches no model weight.
    pub strict: bool,
}

/// A pipeline: names of its models, each checked to exist and to have the right role.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pipeline {
    pub name: String,
    /// The diffusion model; with `low_noise`, the high-noise expert.
    pub diffusion: String,
    /// Wan 2.2 A14B's low-noise expert: a model of `diffusion`'s family, never `diffusion`.
    pub low_noise: Option<String>,
    /// The experts' switch as a fraction of 1000 timesteps, in (0, 1); only with `low_noise`
    /// (`None`: the weights' default, `models::spec::DiffusionModel::boundary`).
    pub boundary: Option<f64>,
    /// FLUX's T5 token count when the manifest gives one (2…512; `None`: the model's
    /// default, 512 for dev and 256 for schnell).
    pub max_sequence_length: Option<u32>,
    /// In the order written (for FLUX: one clip-l and one t5).
    pub text_encoders: Vec<String>,
    pub vae: String,
}

/// One `[[jobs]]` entry with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// Position in the manifest's `[[jobs]]` list, from 0.
    pub index: usize,
    /// Unique among jobs (`job1`, `job2`, … when not given).
    pub name: String,
    pub pipeline: String,
    pub prompt: String,
    /// Seed of image 0; image i uses `seed + i` (never overflows).
    pub seed: u64,
    /// Number of images, ≥ 1.
    pub count: u32,
    /// Multiples of the diffusion family's [`Family::size_multiple`].
    pub width: u32,
    pub height: u32,
    /// ≥ 1.
    pub steps: u32,
    pub sampler: Sampler,
    pub scheduler: Scheduler,
    /// Finite, ≥ 0.
    pub guidance: f64,
    pub output: OutputTemplate,
    /// `[settings].output_root`, absolute (so [`Job::images`] needs nothing else).
    pub output_root: PathBuf,
    /// Resolved against the manifest's folder.
    pub init_image: Option<PathBuf>,
    /// In (0, 1]; 1.0 without `init_image`.
    pub denoise: f64,
    /// Largest batch for this job's images; `None`: chosen from free memory.
    pub batch: Option<u32>,
    /// The unconditional prompt of true classifier-free guidance; `None`: empty.
    pub negative_prompt: Option<String>,
    /// Classifier-free guidance scale, ≥ 0 (the family's default applied); 1 = no
    /// unconditional evaluation.
    pub cfg: f64,
    /// The low-noise expert's guidance scale, ≥ 0, only for pipelines with two experts;
    /// `None`: `cfg`.
    pub cfg_low_noise: Option<f64>,
    /// Model-sampling shift, > 0; `None`: the model's own.
    pub shift: Option<f64>,
    /// Frames per output: 1 for image families, 4k+1 for video families.
    pub frames: u32,
    /// Frames per second of a video output (video families only).
    pub fps: Option<u32>,
}

/// One image of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobImage {
    /// From 0 to `count - 1`.
    pub index: u32,
    pub seed: u64,
    /// Absolute output path.
    pub path: PathBuf,
}

impl Job {
    /// Whether each step evaluates the model twice (prompt and negative prompt).
    pub fn true_cfg(&self) -> bool {
        self.cfg != 1.0 || self.cfg_low_noise.is_some_and(|c| c != 1.0)
    }

    /// The guidance scale of a step of expert `expert` (0: the only model or the high-noise
    /// expert, 1: the low-noise expert).
    pub fn cfg_for(&self, expert: usize) -> f64 {
        match (expert, self.cfg_low_noise) {
            (1, Some(c)) => c,
            _ => self.cfg,
        }
    }

    /// Whether the outputs are videos.
    pub fn is_video(&self) -> bool {
        self.fps.is_some()
    }

    /// The placeholder values of image `index`.
    pub fn vars(&self, index: u32) -> Vars<'_> {
        Vars {
            seed: self.seed.wrapping_add(index as u64),
            index,
            job: &self.name,
            pipeline: &self.pipeline,
            width: self.width,
            height: self.height,
            steps: self.steps,
            sampler: self.sampler.name(),
            scheduler: self.scheduler.name(),
        }
    }

    /// Image `index` (`< count`): its seed and output path.
    pub fn image(&self, index: u32) -> JobImage {
        let rel = self.output.render(&self.vars(index));
        JobImage {
            index,
            seed: self.seed.wrapping_add(index as u64),
            path: super::validate::normalize(&self.output_root.join(rel)),
        }
    }

    /// Every image of the job, in order.
    pub fn images(&self) -> impl Iterator<Item = JobImage> + '_ {
        (0..self.count).map(|i| self.image(i))
    }
}
