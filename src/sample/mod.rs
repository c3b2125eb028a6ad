//! Samplers, schedules and seeded noise, independent of any model.
//!
//! Everything here has the meaning ComfyUI users know (names in [`names`]); the formulas follow
//! ComfyUI's `comfy/model_sampling.py`, `comfy/samplers.py` and `comfy/k_diffusion/sampling.py`
//! for flow (CONST) models, and `tools/parity_samplers.py` proves them against k-diffusion and
//! ComfyUI re-implementations on an analytic toy model (fixtures in `tests/fixtures/samplers/`,
//! checked by `tests/sampler_parity.rs` to 1e-6). See `docs/sampling.md`.
//!
//! # How the executor samples one job
//! ```text
//! let ms = ModelSampling::flux_dev(width, height);            // or ModelSampling::flux_schnell()
//! let spec = SampleSpec { sampler, scheduler, steps, denoise, seed };
//! let mut run = SamplerRun::start(&spec, &ms, &[1, 16, height / 8, width / 8],
//!                                 init_latent.as_ref(), &device, DType::F32)?;
//! while let Some(call) = run.next_call() {
//!     // FLUX: v = dit(call.x, timestep = ms.timestep(call.sigma), guidance, text);
//!     let denoised = ms.denoised_from_velocity(call.x, call.sigma, &v)?;
//!     run.advance(&denoised)?;
//! }
//! let latent = run.finish()?;                                   // → VAE decode
//! ```
//! A batch is several runs driven in lockstep (each waits for its own `next_call`); runs share
//! nothing, so a job's latent does not depend on its batch. [`sample`] is the loop above for
//! one job with a [`Denoiser`].
//!
//! # Public API
//! - [`ModelSampling`]: `flux(shift)`, `discrete_flow(shift, multiplier)`, `flux_dev(w, h)`,
//!   `flux_schnell()`, `wan(shift)` ([`WAN_T2V_SHIFT`]); `sigma(t)`, `timestep(σ)`,
//!   `flow_sigma(t)`, `sigmas()`, `sigma_min()`, `sigma_max()`,
//!   `percent_to_sigma(p)`, `noise_scaling(σ, &noise, Option<&init>)`,
//!   `denoised_from_velocity(&x, σ, &v)`; [`flux_shift_for_size`]`(w, h) -> f64`.
//! - [`schedule()`]`(&ms, Scheduler, steps: u32, denoise: f64) -> Result<Vec<f64>>` and
//!   [`full_schedule`]`(&ms, Scheduler, steps)`.
//! - [`SamplerRun`]: `start(&SampleSpec, &ms, shape, Option<&Tensor>, &Device, DType)`,
//!   `new(Sampler, &ms, &sigmas, x, Box<dyn StepNoise>)`, `next_call() -> Option<ModelCall>`,
//!   `advance(&denoised)`, `finish() -> Tensor`, progress: `total_steps()`, `steps_done()`,
//!   `total_model_calls()`.
//! - [`Denoiser`] + [`sample`]`(&mut D, SamplerRun) -> Result<Tensor, D::Error>`.
//! - Noise: [`SeededNoise`]`{ seed }` (`initial(shape, device, dtype)`, [`StepNoise`]),
//!   [`noise::normal_f32`]`(seed, stream, count)`, [`noise::philox4x32_10`].

pub mod model_sampling;
pub mod names;
pub mod noise;
pub mod sampler;
pub mod schedule;
pub mod special;
pub mod unipc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

pub use model_sampling::{flux_shift_for_size, FlowKind, ModelSampling, WAN_T2V_SHIFT};
pub use names::{Sampler, Scheduler};
pub use noise::{FixedNoise, SeededNoise, StepNoise};
pub use sampler::{sample, Denoiser, ModelCall, SamplerRun};
pub use schedule::{full_schedule, schedule};

/// Whether Wan 2.2 A14B's high-noise expert evaluates a step that starts at model timestep
/// `timestep` (1000·σ), for the switch `boundary` (a fraction of the 1000 training
/// timesteps): `timestep ≥ 1000 · boundary`, the rule of diffusers' `WanPipeline` and Wan
/// 2.2's `generate.py`. (diffusers compares the scheduler's int64 timestep; for the boundaries
/// Wan ships, 0.875 and 0.9, whose 1000 · boundary is a whole number, that is the same test.)
pub fn high_noise_expert(timestep: f64, boundary: f64) -> bool {
    timestep >= 1000.0 * boundary
}

/// What one job asks of the sampler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleSpec {
    pub sampler: Sampler,
    pub scheduler: Scheduler,
    pub steps: u32,
    /// img2img strength in (0, 1]; 1 for text-to-image.
    pub denoise: f64,
    pub seed: u64,
}

impl SamplerRun {
    /// Everything a job needs to start: the σ sequence for `spec`, the seeded initial noise of
    /// `shape` (stream 0, see [`noise`]) scaled to the first σ and mixed with `init` (the
    /// img2img latent in model space, `None` for text-to-image), and the seeded per-step noise.
    pub fn start(
        spec: &SampleSpec,
        ms: &ModelSampling,
        shape: &[usize],
        init: Option<&Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, SampleError> {
        let sigmas = schedule(ms, spec.scheduler, spec.steps, spec.denoise)?;
        let noise = SeededNoise::new(spec.seed);
        let n0 = noise.initial(shape, device, dtype)?;
        let init = init.map(|t| t.to_device(device)).transpose()?;
        let x = ms.noise_scaling(sigmas[0], &n0, init.as_ref())?;
        SamplerRun::new(spec.sampler, ms, &sigmas, x, Box::new(noise))
    }
}

/// Why sampling could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("invalid step count {steps}: at least 1 step is needed")]
    Steps { steps: u32 },
    #[error("invalid denoise strength {denoise}: must be above 0 and at most 1 (1 = full text-to-image)")]
    Denoise { denoise: f64 },
    #[error("invalid model-sampling shift {shift}: {why}")]
    Shift { shift: f64, why: &'static str },
    #[error("invalid model-sampling multiplier {multiplier}: must be a finite number above 0")]
    Multiplier { multiplier: f64 },
    #[error("invalid sigma sequence: {why}")]
    Sigmas { why: String },
    #[error("{what} has shape {got:?}, expected {expected:?}")]
    Shape {
        what: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("no noise for sampler step {step} (only {available} steps of noise were given)")]
    MissingNoise { step: usize, available: usize },
    #[error("the sampler already finished all {steps} steps")]
    Finished { steps: usize },
    #[error("the sampler is not finished: {done} of {steps} steps done")]
    NotFinished { done: usize, steps: usize },
    #[error("tensor operation failed while sampling: {0}")]
    Tensor(#[from] candle_core::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_mixes_noise_and_init_at_the_first_sigma() -> Result<(), SampleError> {
        let dev = Device::Cpu;
        let ms = ModelSampling::flux_schnell();
        let spec = SampleSpec {
            sampler: Sampler::Euler,
            scheduler: Scheduler::Simple,
            steps: 4,
            denoise: 0.5,
            seed: 9,
        };
        let init = Tensor::full(0.25f32, (1, 2, 2, 2), &dev)?;
        let run = SamplerRun::start(&spec, &ms, &[1, 2, 2, 2], Some(&init), &dev, DType::F32)?;
        // int(4 / 0.5) = 8 steps of σ = 1, 7/8, …; the last 5: 0.5, 0.375, 0.25, 0.125, 0.
        assert_eq!(run.sigmas(), &[0.5, 0.375, 0.25, 0.125, 0.0]);
        let n: Vec<f32> = noise::normal_f32(9, 0, 8);
        let x: Vec<f32> = run.latent().flatten_all()?.to_vec1()?;
        for (xi, ni) in x.iter().zip(&n) {
            assert!((xi - (0.5 * ni + 0.5 * 0.25)).abs() < 1e-6);
        }
        let t2i = SampleSpec {
            denoise: 1.0,
            ..spec
        };
        let run = SamplerRun::start(&t2i, &ms, &[1, 2, 2, 2], None, &dev, DType::F32)?;
        assert_eq!(
            run.latent().flatten_all()?.to_vec1::<f32>()?,
            n,
            "σ_max = 1: pure noise"
        );
        Ok(())
    }
}
