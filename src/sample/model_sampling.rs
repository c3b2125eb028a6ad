//! Model sampling for rectified-flow models (FLUX, and later Wan/SD3-style flows): how noise
//! level σ relates to the model's timestep, the 1000/10000-entry σ table the schedulers pick
//! from, and the CONST parameterisation that turns a velocity into an x0-prediction.
//!
//! This mirrors ComfyUI's `comfy/model_sampling.py` (read, not copied):
//! - [`ModelSampling::flux`] is `ModelSamplingFlux`: a table of 10000 σ values
//!   `σ_k = flux_time_shift(shift, 1, (k+1)/10000)` with
//!   `flux_time_shift(μ, 1, t) = e^μ / (e^μ + (1/t − 1))`, and `timestep(σ) = σ`. ComfyUI loads
//!   FLUX.1-dev with it (default shift 1.15; its `ModelSamplingFlux` node sets the shift from
//!   the image size, see [`flux_shift_for_size`]).
//! - [`ModelSampling::discrete_flow`] is `ModelSamplingDiscreteFlow`: 1000 entries
//!   `σ_k = time_snr_shift(shift, (k+1)/1000)` with
//!   `time_snr_shift(α, t) = α t / (1 + (α − 1) t)` and `timestep(σ) = σ · multiplier`.
//!   ComfyUI loads FLUX.1-schnell with it (shift 1, multiplier 1: σ = t) and Wan 2.1 with
//!   multiplier 1000 ([`ModelSampling::wan`]: `timestep = 1000·σ`).
//! - Both use ComfyUI's CONST parameterisation: `x_σ = σ·noise + (1 − σ)·x0`, the model input is
//!   `x_σ` unscaled, and a velocity output `v` gives `x0 = x_σ − σ·v`.
//!
//! ComfyUI keeps the table in f32; we compute it in f64 (the values differ by < 1e-7).

use candle_core::Tensor;

use super::SampleError;

/// Entries in `ModelSamplingFlux`'s table.
pub const FLUX_TABLE_LEN: usize = 10_000;
/// Entries in `ModelSamplingDiscreteFlow`'s table.
pub const DISCRETE_FLOW_TABLE_LEN: usize = 1_000;
/// Wan 2.1's timestep multiplier (ComfyUI `ModelSamplingDiscreteFlow` default; the network
/// takes `t = 1000·σ`).
pub const WAN_MULTIPLIER: f64 = 1000.0;
/// Wan 2.1's own text-to-video shift (`generate.py`: `sample_shift = 5.0` for t2v, both sizes).
pub const WAN_T2V_SHIFT: f64 = 5.0;

/// The FLUX.1-dev shift (`mu`) for an image of `width × height` pixels, exactly as ComfyUI's
/// `ModelSamplingFlux` node computes it: linear in the image-token count `w·h / 256`
/// (8× VAE, 2×2 patches), 0.5 at 256 tokens and 1.15 at 4096 tokens (1024×1024).
///
/// diffusers' `FluxPipeline` (`calculate_shift`) uses the same line with the integer token
/// count `(h / 16) · (w / 16)` of the packed latent; for sizes that are multiples of 16 (all
/// FLUX sizes mgpu accepts) the two agree exactly. We follow ComfyUI's formula.
pub fn flux_shift_for_size(width: u32, height: u32) -> f64 {
    const BASE_SHIFT: f64 = 0.5;
    const MAX_SHIFT: f64 = 1.15;
    const X1: f64 = 256.0;
    const X2: f64 = 4096.0;
    let m = (MAX_SHIFT - BASE_SHIFT) / (X2 - X1);
    let b = BASE_SHIFT - m * X1;
    (f64::from(width) * f64::from(height) / (8.0 * 8.0 * 2.0 * 2.0)) * m + b
}

/// `flux_time_shift(mu, 1.0, t) = e^mu / (e^mu + (1/t − 1))`.
pub fn flux_time_shift(mu: f64, t: f64) -> f64 {
    let e = mu.exp();
    e / (e + (1.0 / t - 1.0))
}

/// `time_snr_shift(alpha, t) = alpha·t / (1 + (alpha − 1)·t)` (identity for alpha = 1).
pub fn time_snr_shift(alpha: f64, t: f64) -> f64 {
    if alpha == 1.0 {
        return t;
    }
    alpha * t / (1.0 + (alpha - 1.0) * t)
}

/// Which of ComfyUI's flow model-sampling classes, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlowKind {
    /// `ModelSamplingFlux` (FLUX.1-dev): `shift` is the `mu` of `flux_time_shift`.
    Flux { shift: f64 },
    /// `ModelSamplingDiscreteFlow` (FLUX.1-schnell, SD3, Wan): `time_snr_shift(shift, t)`.
    DiscreteFlow { shift: f64, multiplier: f64 },
}

/// A flow model's sampling: σ ↔ timestep and the σ table (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSampling {
    kind: FlowKind,
    /// σ at timesteps `(k+1)/N`, ascending; `table[0]` is σ_min, `table[N−1]` is σ_max.
    table: Vec<f64>,
}

impl ModelSampling {
    /// ComfyUI's `ModelSamplingFlux` with the given shift (`mu`); any finite value.
    pub fn flux(shift: f64) -> Result<Self, SampleError> {
        if !shift.is_finite() {
            return Err(SampleError::Shift {
                shift,
                why: "must be a finite number",
            });
        }
        let kind = FlowKind::Flux { shift };
        Ok(Self::with_table(kind, FLUX_TABLE_LEN))
    }

    /// ComfyUI's `ModelSamplingDiscreteFlow` (shift > 0, multiplier > 0).
    pub fn discrete_flow(shift: f64, multiplier: f64) -> Result<Self, SampleError> {
        if !(shift.is_finite() && shift > 0.0) {
            return Err(SampleError::Shift {
                shift,
                why: "must be a finite number above 0",
            });
        }
        if !(multiplier.is_finite() && multiplier > 0.0) {
            return Err(SampleError::Multiplier { multiplier });
        }
        let kind = FlowKind::DiscreteFlow { shift, multiplier };
        Ok(Self::with_table(kind, DISCRETE_FLOW_TABLE_LEN))
    }

    /// FLUX.1-dev at `width × height`: `ModelSamplingFlux` with the resolution-dependent
    /// shift of [`flux_shift_for_size`] (1.15 at 1024×1024, ComfyUI's default for dev).
    pub fn flux_dev(width: u32, height: u32) -> Self {
        Self::with_table(
            FlowKind::Flux {
                shift: flux_shift_for_size(width, height),
            },
            FLUX_TABLE_LEN,
        )
    }

    /// Wan 2.1: `ModelSamplingDiscreteFlow` with the given shift and multiplier 1000, as ComfyUI
    /// loads `WAN21` models (`model_sampling`: CONST + discrete flow, `timestep = 1000·σ`).
    /// The shift's defaults differ between implementations (see docs/sampling.md): Wan's
    /// `generate.py` uses [`WAN_T2V_SHIFT`] (5.0) for text-to-video, ComfyUI's `WAN21_T2V`
    /// `sampling_settings` 8.0, diffusers' Wan docs 3.0 at 480p and 5.0 at 720p.
    pub fn wan(shift: f64) -> Result<Self, SampleError> {
        Self::discrete_flow(shift, WAN_MULTIPLIER)
    }

    /// FLUX.1-schnell: `ModelSamplingDiscreteFlow` with shift 1 and multiplier 1, as ComfyUI
    /// loads it (`sampling_settings = {"multiplier": 1.0, "shift": 1.0}`): σ = t.
    pub fn flux_schnell() -> Self {
        Self::with_table(
            FlowKind::DiscreteFlow {
                shift: 1.0,
                multiplier: 1.0,
            },
            DISCRETE_FLOW_TABLE_LEN,
        )
    }

    fn with_table(kind: FlowKind, n: usize) -> Self {
        let mut ms = Self {
            kind,
            table: Vec::new(),
        };
        ms.table = (1..=n)
            .map(|k| {
                let t = k as f64 / n as f64;
                match kind {
                    FlowKind::Flux { .. } => ms.sigma(t),
                    FlowKind::DiscreteFlow { multiplier, .. } => ms.sigma(t * multiplier),
                }
            })
            .collect();
        ms
    }

    pub fn kind(&self) -> FlowKind {
        self.kind
    }

    /// The shift parameter (FLUX `mu`, or the discrete-flow shift).
    pub fn shift(&self) -> f64 {
        match self.kind {
            FlowKind::Flux { shift } | FlowKind::DiscreteFlow { shift, .. } => shift,
        }
    }

    /// The σ table, ascending (ComfyUI's `model_sampling.sigmas`).
    pub fn sigmas(&self) -> &[f64] {
        &self.table
    }

    pub fn sigma_min(&self) -> f64 {
        self.table[0]
    }

    pub fn sigma_max(&self) -> f64 {
        self.table[self.table.len() - 1]
    }

    /// σ for a model timestep (ComfyUI `sigma(timestep)`).
    pub fn sigma(&self, timestep: f64) -> f64 {
        match self.kind {
            FlowKind::Flux { shift } => flux_time_shift(shift, timestep),
            FlowKind::DiscreteFlow { shift, multiplier } => {
                time_snr_shift(shift, timestep / multiplier)
            }
        }
    }

    /// The timestep the model is given at noise level σ (ComfyUI `timestep(sigma)`): σ for
    /// FLUX (dev and schnell); the FLUX network multiplies it by 1000 itself.
    pub fn timestep(&self, sigma: f64) -> f64 {
        match self.kind {
            FlowKind::Flux { .. } => sigma,
            FlowKind::DiscreteFlow { multiplier, .. } => sigma * multiplier,
        }
    }

    /// The timestep the network is given at σ under `scheduler`: [`Self::timestep`], except
    /// under `flow_sigmas`, which is diffusers' `UniPCMultistepScheduler(use_flow_sigmas)` —
    /// WanPipeline's scheduler, and Wan's own `FlowUniPCMultistepScheduler` — whose timesteps
    /// are `(σ · 1000).astype(int64)`: the network sees whole timesteps (truncated toward
    /// zero; 999 at σ = 1 − 1e-6), while the solver steps on the exact σ. For FLUX (timestep
    /// σ, the network multiplies by 1000) that is `⌊1000 σ⌋ / 1000`, what FluxPipeline passes
    /// (`t / 1000`) with that scheduler. Every other scheduler keeps ComfyUI's continuous
    /// `timestep(σ)`. The Wan 2.2 expert switch compares this timestep, as diffusers does.
    pub fn model_timestep(&self, sigma: f64, scheduler: super::Scheduler) -> f64 {
        if scheduler != super::Scheduler::FlowSigmas {
            return self.timestep(sigma);
        }
        match self.kind {
            FlowKind::Flux { .. } => (sigma * 1000.0).trunc() / 1000.0,
            FlowKind::DiscreteFlow { multiplier, .. } => (sigma * multiplier).trunc(),
        }
    }

    /// σ at flow time `t ∈ [0, 1]` (`t = 1` is pure noise): the model's shift applied to `t`,
    /// `flux_time_shift(μ, t)` or `time_snr_shift(shift, t)`, whatever the timestep multiplier.
    /// The diffusers-exact schedulers (`simple_exact`, `flow_sigmas`) evaluate this directly
    /// instead of picking from the σ table.
    pub fn flow_sigma(&self, t: f64) -> f64 {
        match self.kind {
            FlowKind::Flux { shift } => flux_time_shift(shift, t),
            FlowKind::DiscreteFlow { shift, .. } => time_snr_shift(shift, t),
        }
    }

    /// σ at a fraction of the way through sampling (ComfyUI `percent_to_sigma`): 1 at 0 %,
    /// 0 at 100 %.
    pub fn percent_to_sigma(&self, percent: f64) -> f64 {
        if percent <= 0.0 {
            return 1.0;
        }
        if percent >= 1.0 {
            return 0.0;
        }
        match self.kind {
            FlowKind::Flux { shift } => flux_time_shift(shift, 1.0 - percent),
            FlowKind::DiscreteFlow { shift, .. } => time_snr_shift(shift, 1.0 - percent),
        }
    }

    /// The sampler's starting latent (CONST `noise_scaling`): `σ·noise + (1 − σ)·latent`, where
    /// `latent` is the img2img init latent in model space (after the VAE's shift and scale);
    /// `None` is ComfyUI's empty latent (zeros), giving `σ·noise`.
    pub fn noise_scaling(
        &self,
        sigma: f64,
        noise: &Tensor,
        latent: Option<&Tensor>,
    ) -> Result<Tensor, SampleError> {
        match latent {
            None => Ok(noise.affine(sigma, 0.0)?),
            Some(latent) => {
                if latent.dims() != noise.dims() {
                    return Err(SampleError::Shape {
                        what: "img2img init latent",
                        expected: noise.dims().to_vec(),
                        got: latent.dims().to_vec(),
                    });
                }
                let latent = latent.to_dtype(noise.dtype())?;
                Ok((noise.affine(sigma, 0.0)? + latent.affine(1.0 - sigma, 0.0)?)?)
            }
        }
    }

    /// The x0-prediction from a velocity-predicting model (CONST `calculate_denoised`):
    /// `x0 = x − σ·v`. The executor's denoiser calls this on FLUX's output.
    pub fn denoised_from_velocity(
        &self,
        x: &Tensor,
        sigma: f64,
        v: &Tensor,
    ) -> Result<Tensor, SampleError> {
        if x.dims() != v.dims() {
            return Err(SampleError::Shape {
                what: "model output",
                expected: x.dims().to_vec(),
                got: v.dims().to_vec(),
            });
        }
        Ok((x - v.to_dtype(x.dtype())?.affine(sigma, 0.0)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn flux_shift_matches_comfyui_node_and_diffusers() {
        assert!((flux_shift_for_size(1024, 1024) - 1.15).abs() < 1e-15);
        assert!((flux_shift_for_size(256, 256) - 0.5).abs() < 1e-15);
        // diffusers calculate_shift(image_seq_len = (h/16)(w/16)) for 768×1344: 3·16·28·… tokens.
        let tokens = (768.0 / 16.0) * (1344.0 / 16.0);
        let m = (1.15 - 0.5) / (4096.0 - 256.0);
        let diffusers = tokens * m + (0.5 - m * 256.0);
        assert!((flux_shift_for_size(1344, 768) - diffusers).abs() < 1e-14);
    }

    #[test]
    fn tables_have_comfyui_shape() {
        let dev = ModelSampling::flux_dev(1024, 1024);
        assert_eq!(dev.sigmas().len(), 10_000);
        assert_eq!(dev.sigma_max(), 1.0);
        let want_min = 1.15f64.exp() / (1.15f64.exp() + 9999.0);
        assert!((dev.sigma_min() - want_min).abs() < 1e-16);
        assert!(dev.sigmas().windows(2).all(|w| w[0] < w[1]));

        let schnell = ModelSampling::flux_schnell();
        assert_eq!(schnell.sigmas().len(), 1000);
        assert_eq!(schnell.sigma_min(), 0.001);
        assert_eq!(schnell.sigma_max(), 1.0);
        assert_eq!(schnell.timestep(0.25), 0.25);
        assert_eq!(dev.timestep(0.25), 0.25);

        let sd3 = ModelSampling::discrete_flow(3.0, 1000.0).unwrap();
        assert_eq!(sd3.sigma_max(), 1.0);
        assert!((sd3.sigma(500.0) - 0.75).abs() < 1e-15);
        assert_eq!(sd3.timestep(0.75), 750.0);
    }

    #[test]
    fn wan_is_discrete_flow_with_multiplier_1000() {
        let wan = ModelSampling::wan(WAN_T2V_SHIFT).unwrap();
        assert_eq!(
            wan.kind(),
            FlowKind::DiscreteFlow {
                shift: 5.0,
                multiplier: 1000.0
            }
        );
        assert_eq!(wan.sigmas().len(), 1000);
        assert_eq!(wan.sigma_max(), 1.0);
        // ComfyUI: sigma(timestep) = shift·(t/1000) / (1 + (shift − 1)·t/1000)
        assert!((wan.sigma(500.0) - 2.5 / 3.0).abs() < 1e-15);
        assert_eq!(wan.timestep(0.25), 250.0);
        assert!((wan.sigma_min() - 5.0 * 0.001 / (1.0 + 4.0 * 0.001)).abs() < 1e-18);
        assert_eq!(wan.flow_sigma(0.5), wan.sigma(500.0));
        assert!(ModelSampling::wan(0.0).is_err());
        let dev = ModelSampling::flux_dev(1024, 1024);
        assert_eq!(dev.flow_sigma(0.3), flux_time_shift(1.15, 0.3));
    }

    #[test]
    fn flow_sigmas_give_the_network_whole_timesteps_as_diffusers_unipc() {
        use crate::sample::Scheduler;
        let wan = ModelSampling::wan(5.0).unwrap();
        // diffusers' flow-σ UniPC starts at σ = 1 − 1e-6: timestep 999, not 999.999
        assert_eq!(wan.model_timestep(1.0 - 1e-6, Scheduler::FlowSigmas), 999.0);
        assert_eq!(wan.model_timestep(0.96149, Scheduler::FlowSigmas), 961.0);
        assert_eq!(wan.model_timestep(0.0, Scheduler::FlowSigmas), 0.0);
        // every other scheduler keeps ComfyUI's continuous timestep
        for s in [Scheduler::Simple, Scheduler::SimpleExact, Scheduler::Beta] {
            assert_eq!(wan.model_timestep(0.96149, s), wan.timestep(0.96149));
        }
        let dev = ModelSampling::flux_dev(1024, 1024);
        assert_eq!(dev.model_timestep(0.55559, Scheduler::FlowSigmas), 0.555);
        assert_eq!(dev.model_timestep(0.55559, Scheduler::Simple), 0.55559);
    }

    #[test]
    fn percent_to_sigma_ends() {
        let dev = ModelSampling::flux_dev(1024, 1024);
        assert_eq!(dev.percent_to_sigma(0.0), 1.0);
        assert_eq!(dev.percent_to_sigma(1.0), 0.0);
        assert!((dev.percent_to_sigma(1e-4) - flux_time_shift(1.15, 0.9999)).abs() < 1e-16);
    }

    #[test]
    fn invalid_parameters_are_errors() {
        let e = ModelSampling::discrete_flow(0.0, 1.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid model-sampling shift 0: must be a finite number above 0"
        );
        let e = ModelSampling::discrete_flow(1.0, -2.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid model-sampling multiplier -2: must be a finite number above 0"
        );
        assert!(ModelSampling::flux(f64::NAN).is_err());
    }

    #[test]
    fn const_parameterisation() -> Result<(), SampleError> {
        let dev = Device::Cpu;
        let ms = ModelSampling::flux_schnell();
        let noise = Tensor::new(&[1.0f64, -2.0, 0.5], &dev)?;
        let x0 = Tensor::new(&[0.2f64, 0.4, -1.0], &dev)?;
        let x = ms.noise_scaling(0.25, &noise, Some(&x0))?;
        assert_eq!(
            x.to_vec1::<f64>()?,
            vec![0.25 + 0.15, -0.5 + 0.30000000000000004, 0.125 - 0.75]
        );
        // The exact velocity v = noise − x0 gives x0 back.
        let v = (&noise - &x0)?;
        let back = ms.denoised_from_velocity(&x, 0.25, &v)?;
        let diff: f64 = (back - &x0)?.abs()?.max(0)?.to_scalar()?;
        assert!(diff < 1e-15);
        assert_eq!(
            ms.noise_scaling(0.5, &noise, None)?.to_vec1::<f64>()?,
            vec![0.5, -1.0, 0.25]
        );
        let wrong = Tensor::zeros(2, DType::F64, &dev)?;
        assert!(matches!(
            ms.noise_scaling(0.5, &noise, Some(&wrong)),
            Err(SampleError::Shape { .. })
        ));
        Ok(())
    }
}
