//! The executor: load, patch LoRAs, distribute, stream units, run the batched job queue.
//! The only place where weights move. Design: docs/executor.md.
//!
//! Two layers meet at the [`Generator`] trait:
//! - the *queue* ([`queue`]: expand jobs into [`ImageTask`]s, hash, shard, skip finished
//!   outputs, lock the output root, batch, write PNGs atomically, report progress, golden
//!   checks) knows nothing about models;
//! - the *pipeline* ([`pipeline`]: load → patch → distribute, text encoding, lockstep
//!   sampling through the streaming [`engine`], VAE decode) knows nothing about files of
//!   outputs or resumption.

pub mod bench;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod distribute;
pub mod engine;
pub mod hostmem;
pub mod load;
pub mod phase;
pub mod pipeline;
pub mod queue;
pub mod sass_key;
pub mod unit;

#[cfg(test)]
mod engine_tests;

use std::sync::Arc;

use crate::manifest::{Job, JobImage};
use crate::output::ImageRecord;

pub use engine::PassStats;

/// One image to make: a job of the manifest and which of its `count` images.
#[derive(Debug, Clone)]
pub struct ImageTask {
    pub job: Arc<Job>,
    /// Index within the job, seed (job seed + index) and output path.
    pub image: JobImage,
    /// Fingerprint of everything that decides the pixels (docs/executor.md, "Queue, resume
    /// and locking"), hex; written into the PNG's `mgpu` record so a rerun can skip it.
    pub hash: String,
}

/// A finished image (or video) before it is written.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The decoded frames, at least one; an image is one frame.
    pub frames: Vec<image::RgbImage>,
    /// The final latent (what the VAE decoded), f32 in C order, and its shape: golden files
    /// hash it next to the pixels.
    pub latent: Vec<f32>,
    pub latent_shape: Vec<usize>,
    /// Metadata for the PNG (the queue adds the task hash).
    pub record: ImageRecord,
    /// Seconds spent on this image's share of the batch (encode + denoise + decode).
    pub seconds: f64,
}

impl Rendered {
    /// The first frame (the image, for image families).
    pub fn rgb(&self) -> &image::RgbImage {
        &self.frames[0]
    }
}

/// Why one image failed (the run goes on; the report lists it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
}

impl JobError {
    pub fn new(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
        }
    }
}

/// What went wrong before or around the jobs: models that cannot load, a plan that does not
/// fit, a poisoned engine. Fails the whole run (exit 2 unless the cause is the input).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    Load(String),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Other(String),
}

/// Progress of a run, in typed events; [`crate::report`] renders them (bars on a terminal,
/// plain lines otherwise) and the run report collects them.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage started for a model: `loading`, `patching`, `distributing`, `encoding`, …
    Stage { model: String, stage: String },
    /// A model is ready: the bytes it holds per device, as measured.
    Loaded {
        model: String,
        /// (device, bytes) as measured after distribution.
        measured: Vec<(String, u64)>,
    },
    /// A batch started: the task indices (into the run's task list) it holds.
    BatchStarted { tasks: Vec<usize>, steps: u32 },
    /// One denoising step of the current batch finished (one or more engine passes).
    Step {
        step: u32,
        steps: u32,
        passes: Vec<PassStats>,
    },
    /// A note for the log (prompt truncated, a component released, …).
    Note { message: String },
    /// Time spent in one phase for `model` (a model name, or a file's name for hashing):
    /// see [`phase`]. The run report sums these.
    Phase {
        model: String,
        phase: phase::Phase,
        seconds: f64,
        bytes: u64,
    },
}

/// Makes images. The queue hands it every task of the run once ([`Generator::prepare`]),
/// then batches of tasks that share a pipeline, size, steps, sampler, scheduler and denoise.
pub trait Generator {
    /// Called once before any batch with every task of the run (already filtered: no task
    /// whose output exists): encode the prompts, load what the first batches need.
    fn prepare(
        &mut self,
        tasks: &[ImageTask],
        events: &mut dyn FnMut(Event),
    ) -> Result<(), ExecError>;

    /// Makes the images of one batch; one result per task, in order. A task that fails
    /// fails alone. An `Err` for the whole batch means the generator cannot go on.
    fn run_batch(
        &mut self,
        batch: &[ImageTask],
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<Result<Rendered, JobError>>, ExecError>;

    /// The largest batch the plan allows for tasks like `task` (activation budget).
    fn max_batch(&self, task: &ImageTask) -> usize;
}
