//! Parity of `mgpu::sample` with k-diffusion / ComfyUI, on the fixtures that
//! `tools/parity_samplers.py` writes to `tests/fixtures/samplers/` (see its header for which
//! reference produced what). Tolerance 1e-6 (absolute) unless noted.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use mgpu::sample::noise::normal_f32;
use mgpu::sample::special::betaincinv;
use mgpu::sample::{
    schedule, ModelSampling, SampleError, SampleSpec, Sampler, SamplerRun, Scheduler,
};
use serde::Deserialize;

fn fixture<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/samplers")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
struct MsSpec {
    kind: String,
    shift: f64,
    #[serde(default)]
    multiplier: Option<f64>,
}

fn model_sampling(spec: &MsSpec) -> ModelSampling {
    match spec.kind.as_str() {
        "flux" => ModelSampling::flux(spec.shift).unwrap(),
        "discrete_flow" => {
            ModelSampling::discrete_flow(spec.shift, spec.multiplier.unwrap()).unwrap()
        }
        other => panic!("unknown model sampling kind {other}"),
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ: {a:?} vs {b:?}");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[derive(Deserialize)]
struct NoiseFixture {
    cases: Vec<NoiseCase>,
}
#[derive(Deserialize)]
struct NoiseCase {
    seed: u64,
    stream: u64,
    f32_bits: Vec<u32>,
}

/// The documented generator, re-implemented in Python, gives the same f32 bits.
#[test]
fn noise_matches_the_python_reimplementation_bit_for_bit() {
    let f: NoiseFixture = fixture("noise.json");
    for c in &f.cases {
        let got: Vec<u32> = normal_f32(c.seed, c.stream, c.f32_bits.len())
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(got, c.f32_bits, "seed {} stream {}", c.seed, c.stream);
    }
}

#[derive(Deserialize)]
struct BetaFixture {
    cases: Vec<(f64, f64, f64, f64)>,
}

/// Our inverse regularized incomplete beta against scipy.stats.beta.ppf.
#[test]
fn beta_quantiles_match_scipy() {
    let f: BetaFixture = fixture("beta_ppf.json");
    let mut worst: f64 = 0.0;
    for &(a, b, q, want) in &f.cases {
        let got = betaincinv(a, b, q);
        let err = (got - want).abs();
        assert!(
            err < 1e-12,
            "beta.ppf({q}, {a}, {b}): {got} vs scipy {want}"
        );
        worst = worst.max(err);
    }
    eprintln!(
        "beta.ppf: max abs error vs scipy {worst:.1e} over {} points",
        f.cases.len()
    );
}

#[derive(Deserialize)]
struct TableSpec {
    #[serde(flatten)]
    spec: MsSpec,
    len: usize,
    entries: Vec<(usize, f64)>,
}

#[derive(Deserialize)]
struct ScheduleFixture {
    model_samplings: std::collections::BTreeMap<String, TableSpec>,
    cases: Vec<ScheduleCase>,
}
#[derive(Deserialize)]
struct ScheduleCase {
    model_sampling: String,
    scheduler: Scheduler,
    steps: u32,
    denoise: f64,
    sigmas: Vec<f64>,
}

#[test]
fn sigma_tables_and_schedules_match_comfyui() {
    let f: ScheduleFixture = fixture("schedules.json");
    for (name, t) in &f.model_samplings {
        let ms = model_sampling(&t.spec);
        assert_eq!(ms.sigmas().len(), t.len, "{name}");
        for &(i, want) in &t.entries {
            assert!(
                (ms.sigmas()[i] - want).abs() < 1e-15,
                "{name}[{i}]: {} vs {want}",
                ms.sigmas()[i]
            );
        }
    }
    let mut worst: f64 = 0.0;
    for c in &f.cases {
        let ms = model_sampling(&f.model_samplings[&c.model_sampling].spec);
        let got = schedule(&ms, c.scheduler, c.steps, c.denoise).unwrap();
        let what = format!(
            "{} {} steps={} denoise={}",
            c.model_sampling, c.scheduler, c.steps, c.denoise
        );
        let err = max_abs_diff(&got, &c.sigmas);
        assert!(err < 1e-12, "{what}: {got:?} vs {:?}", c.sigmas);
        worst = worst.max(err);
    }
    eprintln!(
        "schedules: max abs difference {worst:.1e} over {} cases",
        f.cases.len()
    );
}

#[derive(Deserialize)]
struct TrajFixture {
    shape: Vec<usize>,
    toy_mean: Vec<f64>,
    toy_std: Vec<f64>,
    model_samplings: std::collections::BTreeMap<String, MsSpec>,
    cases: Vec<TrajCase>,
}
#[derive(Deserialize)]
struct TrajCase {
    sampler: Sampler,
    scheduler: Scheduler,
    model_sampling: String,
    steps: u32,
    denoise: f64,
    seed: u64,
    init: Option<Vec<f64>>,
    sigmas: Vec<f64>,
    calls: Vec<f64>,
    trajectory: Vec<Vec<f64>>,
}

/// Every sampler × scheduler (and img2img, and schnell) on the toy model: the model is called
/// at the same σ and every intermediate latent matches the reference within 1e-6.
#[test]
fn sampler_trajectories_match_k_diffusion_and_comfyui() -> Result<(), SampleError> {
    let f: TrajFixture = fixture("trajectories.json");
    let dev = Device::Cpu;
    let mean = Tensor::from_vec(f.toy_mean.clone(), f.shape.as_slice(), &dev)?;
    let var = Tensor::from_vec(
        f.toy_std.iter().map(|s| s * s).collect::<Vec<_>>(),
        f.shape.as_slice(),
        &dev,
    )?;
    // Exact E[x0 | x_σ] for x0 ~ N(mean, var) and x_σ = σ·n + (1 − σ)·x0.
    let toy = |x: &Tensor, sigma: f64| -> Result<Tensor, SampleError> {
        let a = 1.0 - sigma;
        let gain = (var.affine(a, 0.0)? / var.affine(a * a, sigma * sigma)?)?;
        Ok((&mean + (gain * (x - mean.affine(a, 0.0)?)?)?)?)
    };
    let mut worst: f64 = 0.0;
    let mut seen = std::collections::BTreeSet::new();
    for c in &f.cases {
        let what = format!(
            "{} {} {} steps={} denoise={}",
            c.sampler, c.scheduler, c.model_sampling, c.steps, c.denoise
        );
        let ms = model_sampling(&f.model_samplings[&c.model_sampling]);
        let spec = SampleSpec {
            sampler: c.sampler,
            scheduler: c.scheduler,
            steps: c.steps,
            denoise: c.denoise,
            seed: c.seed,
        };
        let init = c
            .init
            .as_ref()
            .map(|v| Tensor::from_vec(v.clone(), f.shape.as_slice(), &dev))
            .transpose()?;
        let mut run = SamplerRun::start(&spec, &ms, &f.shape, init.as_ref(), &dev, DType::F64)?;
        assert!(
            max_abs_diff(run.sigmas(), &c.sigmas) < 1e-12 || c.sampler == Sampler::Dpmpp2mSde,
            "{what}: sigmas"
        );
        let mut calls = vec![];
        let mut traj = vec![run.latent().flatten_all()?.to_vec1::<f64>()?];
        while let Some(call) = run.next_call() {
            calls.push(call.sigma);
            let d = toy(call.x, call.sigma)?;
            let before = run.steps_done();
            run.advance(&d)?;
            if run.steps_done() > before {
                traj.push(run.latent().flatten_all()?.to_vec1::<f64>()?);
            }
        }
        assert_eq!(calls.len(), run.total_model_calls(), "{what}: call count");
        let err = max_abs_diff(&calls, &c.calls);
        assert!(
            err < 1e-12,
            "{what}: model called at {calls:?}, reference {:?}",
            c.calls
        );
        assert_eq!(traj.len(), c.trajectory.len(), "{what}: trajectory length");
        for (k, (got, want)) in traj.iter().zip(&c.trajectory).enumerate() {
            let err = max_abs_diff(got, want);
            assert!(
                err < 1e-6,
                "{what}: state {k} differs by {err:e}: {got:?} vs {want:?}"
            );
            worst = worst.max(err);
        }
        seen.insert((c.sampler, c.scheduler));
    }
    assert_eq!(
        seen.len(),
        Sampler::ALL.len() * Scheduler::ALL.len(),
        "every sampler × scheduler is covered"
    );
    eprintln!(
        "trajectories: max abs difference {worst:.1e} over {} cases",
        f.cases.len()
    );
    Ok(())
}
