//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
//! Diffusion Models") for flow models, in the data-prediction (x0) form: the multistep
//! predictor UniP and corrector UniC with the B(h) variants `bh1` (B(h) = h) and `bh2`
//! (B(h) = eʰ − 1).
//!
//! The reference is diffusers' `UniPCMultistepScheduler` (`schedulers/scheduling_unipc_multistep.py`,
//! 0.42) as `WanPipeline` configures it — `prediction_type="flow_prediction"`,
//! `use_flow_sigmas=True`, `solver_order=2`, `lower_order_final=True`,
//! `final_sigmas_type="zero"`, `predict_x0=True` — which Wan 2.1's own
//! `wan/utils/fm_solvers_unipc.py` copies (read, not copied). For flow models `α = 1 − σ`, and the
//! half-log-SNR is `λ = ln(α/σ) = ln((1 − σ)/σ)`.
//!
//! Step `i` (σ = σᵢ → σ' = σᵢ₊₁) gets the model's x0-prediction `mᵢ` at the current latent and
//! makes exactly one model call:
//! 1. **Corrector** (UniC, from step 1 on): re-does step `i − 1` from the latent that step
//!    started from, now knowing `mᵢ`: with `h = λᵢ − λᵢ₋₁`, `x̂ = σᵢ/σᵢ₋₁·xᵢ₋₁ − αᵢ(e^{−h} − 1)mᵢ₋₁`,
//!    `xᵢ ← x̂ − αᵢ·B(h)·(Σₖ ρₖ Dₖ + ρ_last (mᵢ − mᵢ₋₁))`, the order being the one step `i − 1`
//!    used (order 1: ρ = ½; order 2: ρ solves the 2×2 system `R ρ = b` of `φ`-functions).
//! 2. **Predictor** (UniP): order `min(2, steps − i, i + 1)` (warm-up, and `lower_order_final`:
//!    the last step is first order); `x' = σ'/σ·xᵢ − α'(e^{−h} − 1)mᵢ − α'·B(h)·½·D₁` with
//!    `D₁ = (mᵢ₋₁ − mᵢ)/r₁`, `r₁ = (λᵢ₋₁ − λᵢ)/h` (order 2; order 1 drops the last term).
//!
//! Edge values, where diffusers' arithmetic is not finite:
//! - σ₀ = 1 (λ = −∞): diffusers' flow σ schedule moves the first σ to `1 − 1e-6`; the sampler
//!   does the same to a σ sequence that starts at 1 ([`super::SamplerRun::new`]), and the
//!   model is evaluated there.
//! - σ' = 0 on the last (first-order) step: the update's limit is `x' = mᵢ` (the
//!   x0-prediction). diffusers reaches it for `bh2`, but for `bh1` computes `B(h)·0 = −∞·0`
//!   and returns NaN; we return the limit for both.
//!
//! Scalars are f64; tensor arithmetic runs in the latent's dtype.

use candle_core::Tensor;

use super::SampleError;

/// The B(h) choice of UniPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `B(h) = h` (ComfyUI's `uni_pc`).
    Bh1,
    /// `B(h) = eʰ − 1` (ComfyUI's `uni_pc_bh2`; diffusers' and Wan's default).
    Bh2,
}

/// diffusers' `solver_order` as WanPipeline sets it.
const ORDER: usize = 2;

/// The half-log-SNR of a flow model at σ: `ln((1 − σ)/σ)`.
fn lambda(sigma: f64) -> f64 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// The multistep state between steps.
#[derive(Debug, Default)]
pub(super) struct UniPc {
    /// x0-predictions of the last steps (newest last, at most [`ORDER`]).
    outputs: Vec<Tensor>,
    /// The latent the previous predictor started from (what the corrector re-does).
    last_sample: Option<Tensor>,
    /// The previous predictor's order (the corrector's order).
    last_order: usize,
}

/// `hh = −h`, `e^{hh} − 1` and `B(h)` for one step.
struct Coeffs {
    hh: f64,
    h_phi_1: f64,
    b_h: f64,
}

fn coeffs(variant: Variant, h: f64) -> Coeffs {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = match variant {
        Variant::Bh1 => hh,
        Variant::Bh2 => h_phi_1,
    };
    Coeffs { hh, h_phi_1, b_h }
}

/// The right-hand side `b` of UniPC's order conditions for `order` terms: `b_k = k!·φ_{k+1}(hh)·hh/B(h)`
/// written as diffusers' recurrence (`h_phi_k ← h_phi_k/hh − 1/(k+1)!`).
fn rhs(c: &Coeffs, order: usize) -> Vec<f64> {
    let mut h_phi_k = c.h_phi_1 / c.hh - 1.0;
    let mut factorial = 1.0;
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        b.push(h_phi_k * factorial / c.b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / c.hh - 1.0 / factorial;
    }
    b
}

impl UniPc {
    /// One UniPC step `i` over `sigmas` from the current latent `x` with the model's
    /// x0-prediction `denoised` at `(x, sigmas[i])`; returns the next latent.
    pub(super) fn step(
        &mut self,
        variant: Variant,
        sigmas: &[f64],
        i: usize,
        x: &Tensor,
        denoised: &Tensor,
    ) -> Result<Tensor, SampleError> {
        let steps = sigmas.len() - 1;
        // 1. Corrector: redo step i − 1 knowing mᵢ.
        let x = match (&self.last_sample, self.outputs.last()) {
            (Some(last), Some(m0)) if i > 0 => {
                self.correct(variant, sigmas, i, last, m0, denoised)?
            }
            _ => x.clone(),
        };
        // 2. Remember mᵢ.
        self.outputs.push(denoised.clone());
        if self.outputs.len() > ORDER {
            self.outputs.remove(0);
        }
        // 3. Predictor of order min(2, steps − i, warm-up).
        let order = ORDER.min(steps - i).min(i + 1);
        let next = self.predict(variant, sigmas, i, &x, order)?;
        self.last_sample = Some(x);
        self.last_order = order;
        Ok(next)
    }

    /// UniP from `x` at σᵢ to σᵢ₊₁ with the stored outputs (newest = mᵢ).
    fn predict(
        &self,
        variant: Variant,
        sigmas: &[f64],
        i: usize,
        x: &Tensor,
        order: usize,
    ) -> Result<Tensor, SampleError> {
        let (s0, t) = (sigmas[i], sigmas[i + 1]);
        let m0 = &self.outputs[self.outputs.len() - 1];
        if t == 0.0 && order == 1 {
            // The limit σ' → 0: σ'/σ → 0, α' → 1, e^{−h} − 1 → −1, and no D term.
            return Ok(m0.clone());
        }
        let alpha_t = 1.0 - t;
        let h = lambda(t) - lambda(s0);
        let c = coeffs(variant, h);
        // x̂ = σ'/σ·x − α'(e^{−h} − 1)·m0
        let base = (x.affine(t / s0, 0.0)? + m0.affine(-alpha_t * c.h_phi_1, 0.0)?)?;
        if order == 1 {
            return Ok(base);
        }
        // Order 2 (diffusers' simplified predictor: ρ = ½).
        let m1 = &self.outputs[self.outputs.len() - 2];
        let rk = (lambda(sigmas[i - 1]) - lambda(s0)) / h;
        let d1 = ((m1 - m0)? / rk)?;
        Ok((base - d1.affine(alpha_t * c.b_h * 0.5, 0.0)?)?)
    }

    /// UniC for step `i − 1`, evaluated now that `m_t` = mᵢ is known: from `last` (the latent
    /// step i − 1 started from) at σᵢ₋₁ to σᵢ, with `m0` = mᵢ₋₁.
    fn correct(
        &self,
        variant: Variant,
        sigmas: &[f64],
        i: usize,
        last: &Tensor,
        m0: &Tensor,
        m_t: &Tensor,
    ) -> Result<Tensor, SampleError> {
        let order = self.last_order;
        let (s0, t) = (sigmas[i - 1], sigmas[i]);
        let alpha_t = 1.0 - t;
        let h = lambda(t) - lambda(s0);
        let c = coeffs(variant, h);
        let base = (last.affine(t / s0, 0.0)? + m0.affine(-alpha_t * c.h_phi_1, 0.0)?)?;
        let d1_t = (m_t - m0)?;
        let res = if order == 1 {
            // diffusers' simplified corrector of order 1: ρ = ½.
            d1_t.affine(0.5, 0.0)?
        } else {
            // Order 2: R = [[1, 1], [r₁, 1]], b from the φ recurrence; ρ = R⁻¹ b.
            let m1 = &self.outputs[self.outputs.len() - 2];
            let rk = (lambda(sigmas[i - 2]) - lambda(s0)) / h;
            let b = rhs(&c, 2);
            let det = 1.0 - rk;
            let rho0 = (b[0] - b[1]) / det;
            let rho1 = (b[1] - rk * b[0]) / det;
            let d1 = ((m1 - m0)? / rk)?;
            (d1.affine(rho0, 0.0)? + d1_t.affine(rho1, 0.0)?)?
        };
        Ok((base - res.affine(alpha_t * c.b_h, 0.0)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_conditions_match_the_closed_form() {
        // b₁ = φ₂·hh/B(h)·1!, with φ₂(z) = (eᶻ − 1 − z)/z²; check against the recurrence.
        for h in [0.05f64, 0.4, 1.3] {
            for v in [Variant::Bh1, Variant::Bh2] {
                let c = coeffs(v, h);
                let z = c.hh;
                let phi2 = (z.exp_m1() - z) / (z * z);
                let phi3 = (z.exp_m1() - z - z * z / 2.0) / (z * z * z);
                let b = rhs(&c, 2);
                assert!((b[0] - phi2 * z / c.b_h).abs() < 1e-12, "{v:?} {h}");
                assert!((b[1] - 2.0 * phi3 * z / c.b_h).abs() < 1e-12, "{v:?} {h}");
            }
        }
    }

    #[test]
    fn lambda_is_the_flow_half_log_snr() {
        assert_eq!(lambda(0.5), 0.0);
        assert!((lambda(0.2) - 4f64.ln()).abs() < 1e-15);
        assert_eq!(lambda(0.0), f64::INFINITY);
        assert_eq!(lambda(1.0), f64::NEG_INFINITY);
    }
}
