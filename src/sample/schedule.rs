//! Schedulers: the σ sequence a sampler walks, from a [`ModelSampling`], a [`Scheduler`] name,
//! a step count and the img2img denoise strength — ComfyUI's `calculate_sigmas` and
//! `KSampler.set_steps` (`comfy/samplers.py`, read, not copied), in f64.
//!
//! Every sequence starts at (or below) σ_max, decreases, and ends with 0. For `steps` steps it
//! has `steps + 1` entries, except `beta`, which drops repeated table indices as ComfyUI does.
//!
//! Two schedulers are not ComfyUI's: they evaluate the model's shift exactly, as diffusers does,
//! instead of picking from ComfyUI's 1000/10000-entry σ table (see docs/sampling.md):
//! - `simple_exact`: `σ(1 − i/steps)`, i < steps — diffusers' `FluxPipeline`
//!   (`np.linspace(1, 1/steps, steps)` through `FlowMatchEulerDiscreteScheduler`'s
//!   `time_shift(μ)`); ComfyUI's `simple` is the same points rounded down to its table.
//! - `flow_sigmas`: `σ(t)` at `t = np.linspace(1, 1/1000, steps + 1)[:-1]`, a first σ within
//!   1e-6 of 1 lowered by 1e-6 — diffusers' `use_flow_sigmas` branch of
//!   `UniPCMultistepScheduler.set_timesteps` (`num_train_timesteps = 1000`), as `WanPipeline`
//!   uses it.
//!
//! Both take σ(t) from the [`ModelSampling`] ([`ModelSampling::flow_sigma`]): FLUX's μ shift
//! or the discrete-flow shift, so one name serves FLUX and Wan.

use super::model_sampling::ModelSampling;
use super::special::betaincinv;
use super::{SampleError, Scheduler};

/// Above this, `denoise` counts as 1 (ComfyUI: `denoise > 0.9999`).
const FULL_DENOISE: f64 = 0.9999;

/// The σ sequence for `steps` steps at img2img strength `denoise` (1 = txt2img), as ComfyUI's
/// `KSampler`: for `denoise < 1` it builds the schedule for `int(steps / denoise)` steps and
/// keeps its last `steps + 1` σ, so sampling starts part way down.
pub fn schedule(
    ms: &ModelSampling,
    scheduler: Scheduler,
    steps: u32,
    denoise: f64,
) -> Result<Vec<f64>, SampleError> {
    if !(denoise > 0.0 && denoise <= 1.0) {
        return Err(SampleError::Denoise { denoise });
    }
    if steps == 0 {
        return Err(SampleError::Steps { steps });
    }
    if denoise > FULL_DENOISE {
        return full_schedule(ms, scheduler, steps);
    }
    let total = (f64::from(steps) / denoise) as u32; // Python int(): truncation
    let sigmas = full_schedule(ms, scheduler, total)?;
    let keep = (steps as usize + 1).min(sigmas.len());
    Ok(sigmas[sigmas.len() - keep..].to_vec())
}

/// The full σ sequence for `steps` steps (ComfyUI `calculate_sigmas`).
pub fn full_schedule(
    ms: &ModelSampling,
    scheduler: Scheduler,
    steps: u32,
) -> Result<Vec<f64>, SampleError> {
    if steps == 0 {
        return Err(SampleError::Steps { steps });
    }
    let n = steps as usize;
    Ok(match scheduler {
        Scheduler::Simple => simple(ms, n),
        Scheduler::Normal => normal(ms, n, false),
        Scheduler::SgmUniform => normal(ms, n, true),
        Scheduler::Karras => karras(n, ms.sigma_min(), ms.sigma_max(), 7.0),
        Scheduler::Exponential => exponential(n, ms.sigma_min(), ms.sigma_max()),
        Scheduler::Beta => beta(ms, n, 0.6, 0.6),
        Scheduler::SimpleExact => simple_exact(ms, n),
        Scheduler::FlowSigmas => flow_sigmas(ms, n),
    })
}

/// diffusers' `num_train_timesteps` for FLUX and Wan: the end of `flow_sigmas`' time grid.
const TRAIN_TIMESTEPS: f64 = 1000.0;

/// `numpy.linspace(start, stop, num)` (endpoint included) exactly as numpy computes it:
/// `start + i·((stop − start)/(num − 1))`, the last value set to `stop`.
fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// `simple_exact`: σ(t) at `t = np.linspace(1, 1/steps, steps)`, then 0 (FluxPipeline).
fn simple_exact(ms: &ModelSampling, steps: usize) -> Vec<f64> {
    let mut sigs: Vec<f64> = np_linspace(1.0, 1.0 / steps as f64, steps)
        .into_iter()
        .map(|t| ms.flow_sigma(t))
        .collect();
    sigs.push(0.0);
    sigs
}

/// `flow_sigmas`: σ(t) at `t = np.linspace(1, 1/1000, steps + 1)[:-1]`, a first σ within 1e-6 of
/// 1 lowered by 1e-6 (diffusers: "to avoid inf torch.log(alpha_si)"), then 0 (WanPipeline's
/// UniPC).
fn flow_sigmas(ms: &ModelSampling, steps: usize) -> Vec<f64> {
    let mut t = np_linspace(1.0, 1.0 / TRAIN_TIMESTEPS, steps + 1);
    t.pop();
    let mut sigs: Vec<f64> = t.into_iter().map(|t| ms.flow_sigma(t)).collect();
    const EPS: f64 = 1e-6;
    if (sigs[0] - 1.0).abs() < EPS {
        sigs[0] -= EPS;
    }
    sigs.push(0.0);
    sigs
}

/// `simple`: every `N/steps`-th entry of the σ table, from the top.
fn simple(ms: &ModelSampling, steps: usize) -> Vec<f64> {
    let table = ms.sigmas();
    let ss = table.len() as f64 / steps as f64;
    let mut sigs: Vec<f64> = (0..steps)
        .map(|x| table[table.len() - 1 - (x as f64 * ss) as usize])
        .collect();
    sigs.push(0.0);
    sigs
}

/// torch.linspace(start, end, n): the first half counts up from `start`, the second half down
/// from `end`, so both ends are exact.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        start + step * i as f64
                    } else {
                        end - step * (n - 1 - i) as f64
                    }
                })
                .collect()
        }
    }
}

/// `normal` (and `sgm_uniform` with `sgm`): σ at timesteps evenly spaced between
/// `timestep(σ_max)` and `timestep(σ_min)`. For FLUX, where `timestep(σ) = σ` but `sigma(t)`
/// applies the shift, the last σ is shifted twice — that is ComfyUI's behaviour, kept.
fn normal(ms: &ModelSampling, steps: usize, sgm: bool) -> Vec<f64> {
    let start = ms.timestep(ms.sigma_max());
    let end = ms.timestep(ms.sigma_min());
    let mut append_zero = true;
    let timesteps = if sgm {
        let mut t = linspace(start, end, steps + 1);
        t.pop();
        t
    } else {
        let mut n = steps;
        if ms.sigma(end).abs() <= 1e-5 {
            n += 1;
            append_zero = false;
        }
        linspace(start, end, n)
    };
    let mut sigs: Vec<f64> = timesteps.into_iter().map(|t| ms.sigma(t)).collect();
    if append_zero {
        sigs.push(0.0);
    }
    sigs
}

/// `karras`: Karras et al. (2022), ρ = 7, between the table's σ_min and σ_max.
pub fn karras(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let mut sigs: Vec<f64> = linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect();
    sigs.push(0.0);
    sigs
}

/// `exponential`: σ evenly spaced in log σ from σ_max down to σ_min.
pub fn exponential(steps: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let mut sigs: Vec<f64> = linspace(sigma_max.ln(), sigma_min.ln(), steps)
        .into_iter()
        .map(f64::exp)
        .collect();
    sigs.push(0.0);
    sigs
}

/// `beta` (Lee et al. 2024, arXiv:2407.12173): table indices at the Beta(α, β) quantiles of
/// `1 − i/steps`, rounded half-to-even like `numpy.rint`; repeated indices are dropped.
fn beta(ms: &ModelSampling, steps: usize, alpha: f64, beta: f64) -> Vec<f64> {
    let table = ms.sigmas();
    let total_timesteps = (table.len() - 1) as f64;
    let step = 1.0 / steps as f64; // numpy.linspace(0, 1, steps, endpoint=False)
    let mut sigs = Vec::with_capacity(steps + 1);
    let mut last_t = -1.0;
    for i in 0..steps {
        let q = 1.0 - i as f64 * step;
        let t = (betaincinv(alpha, beta, q) * total_timesteps).round_ties_even();
        if t != last_t {
            sigs.push(table[t as usize]);
        }
        last_t = t;
    }
    sigs.push(0.0);
    sigs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> ModelSampling {
        ModelSampling::flux_dev(1024, 1024)
    }

    #[test]
    fn diffusers_exact_schedules() {
        // FluxPipeline at 4 steps, schnell (σ = t): 1, 3/4, 1/2, 1/4, 0.
        let schnell = ModelSampling::flux_schnell();
        assert_eq!(
            full_schedule(&schnell, Scheduler::SimpleExact, 4).unwrap(),
            vec![1.0, 0.75, 0.5, 0.25, 0.0]
        );
        // simple_exact is `simple` without the table rounding: equal where steps divide 1000.
        let wan = ModelSampling::wan(5.0).unwrap();
        let a = full_schedule(&wan, Scheduler::SimpleExact, 8).unwrap();
        let b = full_schedule(&wan, Scheduler::Simple, 8).unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-15),
            "{a:?} {b:?}"
        );
        let a = full_schedule(&wan, Scheduler::SimpleExact, 6).unwrap();
        let b = full_schedule(&wan, Scheduler::Simple, 6).unwrap();
        assert!(
            a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-4),
            "{a:?} {b:?}"
        );
        // flow_sigmas: first σ 1 − 1e-6, t ends at 1/1000 + (1 − 1/1000)/steps.
        let f = full_schedule(&wan, Scheduler::FlowSigmas, 5).unwrap();
        assert_eq!(f.len(), 6);
        assert_eq!(f[0], 1.0 - 1e-6);
        let t_last = 1.0 - 4.0 * (1.0 - 0.001) / 5.0;
        assert!((f[4] - 5.0 * t_last / (1.0 + 4.0 * t_last)).abs() < 1e-15);
        assert_eq!(np_linspace(1.0, 0.25, 1), vec![1.0]);
    }

    #[test]
    fn linspace_matches_torch_ends() {
        assert_eq!(linspace(1.0, 0.0, 5), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(linspace(2.0, 3.0, 1), vec![2.0]);
        assert!(linspace(0.0, 1.0, 0).is_empty());
        let l = linspace(0.1, 0.7, 7);
        assert_eq!((l[0], l[6]), (0.1, 0.7));
    }

    #[test]
    fn every_scheduler_is_decreasing_and_ends_at_zero() {
        for ms in [
            dev(),
            ModelSampling::flux_schnell(),
            ModelSampling::flux_dev(512, 768),
        ] {
            for &sch in Scheduler::ALL {
                for steps in [1u32, 2, 4, 20, 50] {
                    let s = full_schedule(&ms, sch, steps).unwrap();
                    assert_eq!(*s.last().unwrap(), 0.0, "{sch} {steps}");
                    assert!(s.windows(2).all(|w| w[0] > w[1]), "{sch} {steps}: {s:?}");
                    assert!(s[0] <= 1.0);
                    if sch != Scheduler::Beta {
                        assert_eq!(s.len(), steps as usize + 1, "{sch} {steps}");
                    }
                }
            }
        }
    }

    #[test]
    fn simple_is_linear_in_time_for_schnell() {
        let s = full_schedule(&ModelSampling::flux_schnell(), Scheduler::Simple, 4).unwrap();
        assert_eq!(s, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn denoise_takes_the_tail_of_a_longer_schedule() {
        let ms = dev();
        let full = full_schedule(&ms, Scheduler::Simple, 33).unwrap();
        let part = schedule(&ms, Scheduler::Simple, 20, 0.6).unwrap(); // int(20 / 0.6) = 33
        assert_eq!(part.len(), 21);
        assert_eq!(part[..], full[13..]);
        assert_eq!(
            schedule(&ms, Scheduler::Karras, 8, 0.99995).unwrap(),
            full_schedule(&ms, Scheduler::Karras, 8).unwrap()
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        let ms = dev();
        assert_eq!(
            schedule(&ms, Scheduler::Simple, 0, 1.0)
                .unwrap_err()
                .to_string(),
            "invalid step count 0: at least 1 step is needed"
        );
        for d in [0.0, -0.5, 1.5, f64::NAN] {
            let e = schedule(&ms, Scheduler::Simple, 10, d).unwrap_err();
            assert!(matches!(e, SampleError::Denoise { .. }), "{d}");
        }
        assert_eq!(
            schedule(&ms, Scheduler::Simple, 10, 1.5)
                .unwrap_err()
                .to_string(),
            "invalid denoise strength 1.5: must be above 0 and at most 1 (1 = full text-to-image)"
        );
    }
}
