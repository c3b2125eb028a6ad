//! The samplers (euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, ddim, uni_pc,
//! uni_pc_bh2) as a step-by-step
//! state machine, [`SamplerRun`], that asks for one model evaluation at a time. The executor
//! drives many runs in lockstep — every job of a batch waits for the same streamed block — so
//! the sampler never calls the model itself; [`sample`] is the simple loop for one job.
//!
//! The update formulas are ComfyUI's `comfy/k_diffusion/sampling.py` for CONST (flow) models
//! (read, not copied), in the k-diffusion convention: the model returns the x0-prediction
//! ("denoised") for an input at noise level σ, and `d = (x − denoised) / σ`.
//! - `euler`: `x ← x + d·(σ_next − σ)`.
//! - `ddim`: ComfyUI's `ddim` is `euler` (its only difference is the noise it uses for inpainting
//!   masks, which mgpu does not have).
//! - `heun`: Heun's second-order method, a second evaluation at σ_next (not on the last step).
//! - `euler_ancestral`: ComfyUI switches to `sample_euler_ancestral_RF` for CONST models
//!   (η = 1): step down to `σ_down = σ_next²/σ`, then rescale by `(1 − σ_next)/(1 − σ_down)` and
//!   add fresh noise with `√(σ_next² − σ_down²·(1 − σ_next)²/(1 − σ_down)²)`.
//! - `dpmpp_2m`: DPM-Solver++(2M) in `t = −ln σ`.
//! - `dpmpp_2m_sde`: DPM-Solver++(2M) SDE, midpoint, η = 1, in ComfyUI's half-log-SNR for CONST
//!   models `λ = ln((1 − σ)/σ)`; a first σ ≥ 1 is moved to `percent_to_sigma(1e-4)`
//!   (`offset_first_sigma_for_snr`), and that σ is also what the model is evaluated at.
//!   k-diffusion draws its noise from a Brownian tree; ours is the seeded per-step stream
//!   ([`super::noise`]), standard normal per step like the tree's normalised increments.
//! - `uni_pc` / `uni_pc_bh2`: UniPC of order 2 with lower-order final steps (variants bh1 / bh2),
//!   diffusers' `UniPCMultistepScheduler` as WanPipeline uses it, one model call per step; see
//!   [`super::unipc`]. A first σ ≥ 1 is moved to `1 − 1e-6` as diffusers' flow schedule does.
//!
//! Scalars are computed in f64; tensor arithmetic happens in the latent's dtype on its device.

use candle_core::Tensor;

use super::model_sampling::ModelSampling;
use super::noise::StepNoise;
use super::unipc::{UniPc, Variant};
use super::{SampleError, Sampler};

/// The model as the sampler sees it: the x0-prediction ("denoised") for `x` at noise level
/// `sigma`. For FLUX the executor runs the network at `timestep = ms.timestep(sigma)` (with
/// guidance / CFG folded in) and converts its velocity with
/// [`ModelSampling::denoised_from_velocity`].
pub trait Denoiser {
    type Error: From<SampleError>;
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor, Self::Error>;
}

/// One model evaluation a [`SamplerRun`] is waiting for.
#[derive(Debug, Clone, Copy)]
pub struct ModelCall<'a> {
    /// The model input (the current latent, or Heun's intermediate one).
    pub x: &'a Tensor,
    /// The noise level to evaluate at.
    pub sigma: f64,
    /// The step (0-based) this evaluation belongs to.
    pub step: usize,
}

#[derive(Debug)]
enum Stage {
    /// Waiting for the evaluation at `sigmas[step]` on `x`.
    First,
    /// Heun: waiting for the evaluation at `sigmas[step + 1]` on `x2`; `d` is the first slope.
    HeunSecond {
        x2: Tensor,
        d: Tensor,
    },
    Done,
}

/// How far below 1 UniPC starts when a σ sequence starts at 1 (diffusers: `sigmas[0] -= 1e-6`).
pub const UNIPC_FIRST_SIGMA_OFFSET: f64 = 1e-6;

/// A sampler walking a σ sequence for one job, one model evaluation at a time.
///
/// ```text
/// while let Some(call) = run.next_call() {
///     let denoised = model(call.x, call.sigma)?;
///     run.advance(&denoised)?;
/// }
/// let latent = run.finish()?;
/// ```
pub struct SamplerRun {
    sampler: Sampler,
    /// The σ the sampler works with (dpmpp_2m_sde may have moved the first one).
    sigmas: Vec<f64>,
    step: usize,
    stage: Stage,
    x: Tensor,
    old_denoised: Option<Tensor>,
    h_last: Option<f64>,
    unipc: UniPc,
    noise: Box<dyn StepNoise>,
}

impl std::fmt::Debug for SamplerRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerRun")
            .field("sampler", &self.sampler)
            .field("sigmas", &self.sigmas)
            .field("step", &self.step)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl SamplerRun {
    /// A run of `sampler` over `sigmas` (from [`super::schedule()`]) starting from `x`, the
    /// already noised latent (see [`ModelSampling::noise_scaling`]). `noise` supplies the
    /// per-step noise of the stochastic samplers.
    pub fn new(
        sampler: Sampler,
        ms: &ModelSampling,
        sigmas: &[f64],
        x: Tensor,
        noise: Box<dyn StepNoise>,
    ) -> Result<Self, SampleError> {
        if sigmas.len() < 2 {
            return Err(SampleError::Sigmas {
                why: format!("needs at least 2 values (one step), got {}", sigmas.len()),
            });
        }
        if let Some(bad) = sigmas.windows(2).find(|w| {
            w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Less)
                || w[1] < 0.0
                || !w[0].is_finite()
        }) {
            return Err(SampleError::Sigmas {
                why: format!(
                    "must be finite, non-negative and strictly decreasing, found {} then {}",
                    bad[0], bad[1]
                ),
            });
        }
        let mut sigmas = sigmas.to_vec();
        if sampler == Sampler::Dpmpp2mSde && sigmas[0] >= 1.0 {
            // offset_first_sigma_for_snr: λ = ln((1 − σ)/σ) is −∞ at σ = 1.
            sigmas[0] = ms.percent_to_sigma(1e-4);
        }
        if matches!(sampler, Sampler::UniPc | Sampler::UniPcBh2) && sigmas[0] >= 1.0 {
            // λ = ln((1 − σ)/σ) is −∞ at σ = 1; diffusers' flow schedule starts at 1 − 1e-6.
            sigmas[0] = 1.0 - UNIPC_FIRST_SIGMA_OFFSET;
            if sigmas[0] <= sigmas[1] {
                return Err(SampleError::Sigmas {
                    why: format!(
                        "uni_pc moves a first σ of 1 to 1 − 1e-6, which is not above the next σ {}",
                        sigmas[1]
                    ),
                });
            }
        }
        Ok(Self {
            sampler,
            sigmas,
            step: 0,
            stage: Stage::First,
            x,
            old_denoised: None,
            h_last: None,
            unipc: UniPc::default(),
            noise,
        })
    }

    pub fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// The σ sequence being walked (after any sampler adjustment).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Steps in the run (`sigmas.len() − 1`).
    pub fn total_steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// Steps completed so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Model evaluations the whole run needs (Heun needs two per step except a final step to 0).
    pub fn total_model_calls(&self) -> usize {
        let steps = self.total_steps();
        match self.sampler {
            Sampler::Heun => steps + self.sigmas[1..].iter().filter(|&&s| s != 0.0).count(),
            _ => steps,
        }
    }

    /// The current latent.
    pub fn latent(&self) -> &Tensor {
        &self.x
    }

    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// The model evaluation the run waits for, or `None` once it is done.
    pub fn next_call(&self) -> Option<ModelCall<'_>> {
        match &self.stage {
            Stage::First => Some(ModelCall {
                x: &self.x,
                sigma: self.sigmas[self.step],
                step: self.step,
            }),
            Stage::HeunSecond { x2, .. } => Some(ModelCall {
                x: x2,
                sigma: self.sigmas[self.step + 1],
                step: self.step,
            }),
            Stage::Done => None,
        }
    }

    /// Hands the run the x0-prediction for its [`next_call`](Self::next_call) and advances.
    pub fn advance(&mut self, denoised: &Tensor) -> Result<(), SampleError> {
        if denoised.dims() != self.x.dims() {
            return Err(SampleError::Shape {
                what: "denoised",
                expected: self.x.dims().to_vec(),
                got: denoised.dims().to_vec(),
            });
        }
        if self.is_done() {
            return Err(SampleError::Finished {
                steps: self.total_steps(),
            });
        }
        let denoised = &denoised.to_dtype(self.x.dtype())?;
        let stage = std::mem::replace(&mut self.stage, Stage::First);
        let (i, s, s_next) = (
            self.step,
            self.sigmas[self.step],
            self.sigmas[self.step + 1],
        );
        let finished_step = match stage {
            Stage::Done => unreachable!("checked above"),
            Stage::HeunSecond { x2, d } => {
                // d' = (d + d2)/2, x ← x + d'·(σ_next − σ)
                let d2 = ((&x2 - denoised)? / s_next)?;
                let d_prime = ((d + d2)? / 2.0)?;
                self.x = (&self.x + (d_prime * (s_next - s))?)?;
                true
            }
            Stage::First => match self.sampler {
                Sampler::Euler | Sampler::Ddim => {
                    let d = ((&self.x - denoised)? / s)?;
                    self.x = (&self.x + (d * (s_next - s))?)?;
                    true
                }
                Sampler::Heun => {
                    let d = ((&self.x - denoised)? / s)?;
                    let dt = s_next - s;
                    if s_next == 0.0 {
                        self.x = (&self.x + (d * dt)?)?;
                        true
                    } else {
                        let x2 = (&self.x + (&d * dt)?)?;
                        self.stage = Stage::HeunSecond { x2, d };
                        false
                    }
                }
                Sampler::EulerAncestral => {
                    self.x = self.euler_ancestral_rf(i, s, s_next, denoised)?;
                    true
                }
                Sampler::Dpmpp2m => {
                    self.x = self.dpmpp_2m(i, s, s_next, denoised)?;
                    self.old_denoised = Some(denoised.clone());
                    true
                }
                Sampler::Dpmpp2mSde => {
                    self.x = self.dpmpp_2m_sde(i, s, s_next, denoised)?;
                    self.old_denoised = Some(denoised.clone());
                    true
                }
                Sampler::UniPc | Sampler::UniPcBh2 => {
                    let variant = if self.sampler == Sampler::UniPc {
                        Variant::Bh1
                    } else {
                        Variant::Bh2
                    };
                    self.x = self
                        .unipc
                        .step(variant, &self.sigmas, i, &self.x, denoised)?;
                    true
                }
            },
        };
        if finished_step {
            self.step += 1;
            self.stage = if self.step == self.total_steps() {
                Stage::Done
            } else {
                Stage::First
            };
        }
        Ok(())
    }

    /// The final latent (CONST `inverse_noise_scaling` at σ = 0 is the identity).
    pub fn finish(self) -> Result<Tensor, SampleError> {
        if !self.is_done() {
            return Err(SampleError::NotFinished {
                done: self.step,
                steps: self.total_steps(),
            });
        }
        Ok(self.x)
    }

    /// `sample_euler_ancestral_RF` with η = 1, s_noise = 1.
    fn euler_ancestral_rf(
        &mut self,
        i: usize,
        s: f64,
        s_next: f64,
        denoised: &Tensor,
    ) -> Result<Tensor, SampleError> {
        if s_next == 0.0 {
            return Ok(denoised.clone());
        }
        const ETA: f64 = 1.0;
        let downstep_ratio = 1.0 + (s_next / s - 1.0) * ETA;
        let sigma_down = s_next * downstep_ratio;
        let alpha_next = 1.0 - s_next;
        let alpha_down = 1.0 - sigma_down;
        let renoise = (s_next * s_next
            - sigma_down * sigma_down * alpha_next * alpha_next / (alpha_down * alpha_down))
            .sqrt();
        let ratio = sigma_down / s;
        let x = (self.x.affine(ratio, 0.0)? + denoised.affine(1.0 - ratio, 0.0)?)?;
        let noise = self.noise.step_noise(i, &self.x)?;
        Ok((x.affine(alpha_next / alpha_down, 0.0)? + noise.affine(renoise, 0.0)?)?)
    }

    /// `sample_dpmpp_2m`.
    fn dpmpp_2m(
        &self,
        i: usize,
        s: f64,
        s_next: f64,
        denoised: &Tensor,
    ) -> Result<Tensor, SampleError> {
        let t = -s.ln();
        let t_next = -s_next.ln();
        let h = t_next - t;
        // σ(t_next)/σ(t) = e^(−t_next)/e^(−t); for σ_next = 0 this step returns `denoised`.
        let ratio = (-t_next).exp() / (-t).exp();
        let c = -(-h).exp_m1();
        match &self.old_denoised {
            Some(old) if s_next != 0.0 => {
                let h_last = t - (-self.sigmas[i - 1].ln());
                let r = h_last / h;
                let dd = (denoised.affine(1.0 + 1.0 / (2.0 * r), 0.0)?
                    - old.affine(1.0 / (2.0 * r), 0.0)?)?;
                Ok((self.x.affine(ratio, 0.0)? + dd.affine(c, 0.0)?)?)
            }
            _ => Ok((self.x.affine(ratio, 0.0)? + denoised.affine(c, 0.0)?)?),
        }
    }

    /// `sample_dpmpp_2m_sde` for CONST models, η = 1, s_noise = 1, midpoint.
    fn dpmpp_2m_sde(
        &mut self,
        i: usize,
        s: f64,
        s_next: f64,
        denoised: &Tensor,
    ) -> Result<Tensor, SampleError> {
        const ETA: f64 = 1.0;
        if s_next == 0.0 {
            // h_last keeps the previous h (ComfyUI does not recompute h on the final step).
            return Ok(denoised.clone());
        }
        let lambda = |sigma: f64| ((1.0 - sigma) / sigma).ln();
        let (lambda_s, lambda_t) = (lambda(s), lambda(s_next));
        let h = lambda_t - lambda_s;
        let h_eta = h * (ETA + 1.0);
        let alpha_t = s_next * lambda_t.exp();
        let one_minus_e = -(-h_eta).exp_m1();
        let mut x = (self.x.affine(s_next / s * (-h * ETA).exp(), 0.0)?
            + denoised.affine(alpha_t * one_minus_e, 0.0)?)?;
        if let (Some(old), Some(h_last)) = (&self.old_denoised, self.h_last) {
            let r = h_last / h;
            let diff = (denoised - old)?;
            x = (x + diff.affine(0.5 * alpha_t * one_minus_e * (1.0 / r), 0.0)?)?;
        }
        let noise = self.noise.step_noise(i, &self.x)?;
        let scale = s_next * (-(-2.0 * h * ETA).exp_m1()).sqrt();
        x = (x + noise.affine(scale, 0.0)?)?;
        self.h_last = Some(h);
        Ok(x)
    }
}

/// Runs `run` to the end with one model, evaluating one call at a time.
pub fn sample<D: Denoiser>(denoiser: &mut D, mut run: SamplerRun) -> Result<Tensor, D::Error> {
    while let Some(call) = run.next_call() {
        let denoised = denoiser.denoise(call.x, call.sigma)?;
        run.advance(&denoised)?;
    }
    Ok(run.finish()?)
}

#[cfg(test)]
mod tests {
    use super::super::noise::{FixedNoise, SeededNoise};
    use super::*;
    use candle_core::{DType, Device};

    /// The exact x0-prediction for data x0 = m (a point mass): denoised = m everywhere.
    struct Constant(Tensor);
    impl Denoiser for Constant {
        type Error = SampleError;
        fn denoise(&mut self, _x: &Tensor, _sigma: f64) -> Result<Tensor, SampleError> {
            Ok(self.0.clone())
        }
    }

    fn run(sampler: Sampler, sigmas: &[f64], x: &Tensor) -> SamplerRun {
        let ms = ModelSampling::flux_schnell();
        SamplerRun::new(
            sampler,
            &ms,
            sigmas,
            x.clone(),
            Box::new(SeededNoise::new(1)),
        )
        .unwrap()
    }

    #[test]
    fn every_sampler_recovers_a_point_mass() -> Result<(), SampleError> {
        // With a constant x0-prediction every sampler must end exactly on it (up to rounding).
        let dev = Device::Cpu;
        let target = Tensor::new(&[[0.5f64, -1.25], [2.0, 0.0]], &dev)?;
        let x = Tensor::new(&[[1.0f64, -0.3], [0.7, 2.2]], &dev)?;
        let sigmas = [1.0, 0.8, 0.5, 0.2, 0.0];
        for &sampler in Sampler::ALL {
            let out = sample(&mut Constant(target.clone()), run(sampler, &sigmas, &x))?;
            let err: f64 = (out - &target)?.abs()?.flatten_all()?.max(0)?.to_scalar()?;
            assert!(err < 1e-12, "{sampler}: {err}");
        }
        Ok(())
    }

    #[test]
    fn call_counts_and_sigmas() -> Result<(), SampleError> {
        let x = Tensor::zeros(3, DType::F64, &Device::Cpu)?;
        let sigmas = [1.0, 0.6, 0.3, 0.0];
        let heun = run(Sampler::Heun, &sigmas, &x);
        assert_eq!(heun.total_model_calls(), 5);
        let mut seen = vec![];
        let mut r = heun;
        while let Some(c) = r.next_call() {
            seen.push((c.step, c.sigma));
            let d = c.x.clone();
            r.advance(&d)?;
        }
        assert_eq!(seen, vec![(0, 1.0), (0, 0.6), (1, 0.6), (1, 0.3), (2, 0.3)]);
        let sde = run(Sampler::Dpmpp2mSde, &sigmas, &x);
        let first = sde.next_call().unwrap().sigma;
        assert!(
            (first - 0.9999).abs() < 1e-15,
            "schnell percent_to_sigma(1e-4) = 0.9999, got {first}"
        );
        assert_eq!(run(Sampler::Euler, &sigmas, &x).total_model_calls(), 3);
        Ok(())
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() -> Result<(), SampleError> {
        let dev = Device::Cpu;
        let x = Tensor::zeros(3, DType::F64, &dev)?;
        let ms = ModelSampling::flux_schnell();
        let noise = || Box::new(SeededNoise::new(0)) as Box<dyn StepNoise>;
        let e = SamplerRun::new(Sampler::Euler, &ms, &[1.0], x.clone(), noise()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid sigma sequence: needs at least 2 values (one step), got 1"
        );
        let e =
            SamplerRun::new(Sampler::Euler, &ms, &[1.0, 1.0, 0.0], x.clone(), noise()).unwrap_err();
        assert!(
            e.to_string()
                .contains("strictly decreasing, found 1 then 1"),
            "{e}"
        );

        let mut r = SamplerRun::new(Sampler::Euler, &ms, &[1.0, 0.0], x.clone(), noise())?;
        let wrong = Tensor::zeros(4, DType::F64, &dev)?;
        let e = r.advance(&wrong).unwrap_err();
        assert_eq!(e.to_string(), "denoised has shape [4], expected [3]");
        r.advance(&x)?;
        assert!(r.is_done());
        assert_eq!(
            r.advance(&x).unwrap_err().to_string(),
            "the sampler already finished all 1 steps"
        );

        let r = SamplerRun::new(Sampler::Euler, &ms, &[1.0, 0.5, 0.0], x.clone(), noise())?;
        assert_eq!(
            r.finish().unwrap_err().to_string(),
            "the sampler is not finished: 0 of 2 steps done"
        );

        let mut r = SamplerRun::new(
            Sampler::EulerAncestral,
            &ms,
            &[1.0, 0.5, 0.0],
            x.clone(),
            Box::new(FixedNoise { steps: vec![] }),
        )?;
        let e = r.advance(&x).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no noise for sampler step 0 (only 0 steps of noise were given)"
        );
        Ok(())
    }

    #[test]
    fn lockstep_runs_equal_solo_runs() -> Result<(), SampleError> {
        // Two jobs driven interleaved (as the executor batches them) give the same latents as
        // each run alone: a run's state is its own.
        let dev = Device::Cpu;
        let ms = ModelSampling::flux_dev(1024, 1024);
        let sigmas =
            super::super::schedule::schedule(&ms, crate::sample::Scheduler::Simple, 6, 1.0)?;
        let toy = |x: &Tensor, s: f64| -> Result<Tensor, SampleError> {
            Ok(x.affine(0.3 * (1.0 - s), 0.1)?)
        };
        let start = |seed: u64| -> Result<SamplerRun, SampleError> {
            let noise = SeededNoise::new(seed);
            let x = noise.initial(&[1, 2, 2, 2], &dev, DType::F32)?;
            SamplerRun::new(Sampler::Dpmpp2mSde, &ms, &sigmas, x, Box::new(noise))
        };
        let solo = |seed: u64| -> Result<Vec<f32>, SampleError> {
            let mut r = start(seed)?;
            while let Some(c) = r.next_call() {
                let d = toy(c.x, c.sigma)?;
                r.advance(&d)?;
            }
            Ok(r.finish()?.flatten_all()?.to_vec1()?)
        };
        let (mut a, mut b) = (start(11)?, start(12)?);
        while !(a.is_done() && b.is_done()) {
            for r in [&mut a, &mut b] {
                if let Some(c) = r.next_call() {
                    let d = toy(c.x, c.sigma)?;
                    r.advance(&d)?;
                }
            }
        }
        assert_eq!(a.finish()?.flatten_all()?.to_vec1::<f32>()?, solo(11)?);
        assert_eq!(b.finish()?.flatten_all()?.to_vec1::<f32>()?, solo(12)?);
        Ok(())
    }
}
