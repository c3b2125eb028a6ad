//! The streaming benchmark harness (`mgpu bench`): a diffusion transformer of any family
//! (FLUX, Wan) with generated weights, run for a number of denoising steps under several
//! placements, on the CPU or a CUDA GPU, with the measured step times next to the floor and
//! the bit-identity check.
//!
//! Weights are generated on the compute device (no files: the 12 B FLUX-dev shape is 23.8 GB,
//! Wan 14B 28.6 GB) from a fixed seed, so every placement computes on the same bytes. A
//! placement is `resident` or `SOURCE:P` — P % of the blocks (spread evenly through the
//! execution order) streamed from SOURCE (`cpu`, `disk`, or a donor `cuda:N`), optionally
//! with the blocks' matrices stored compact (`@q8_0`, `@fp8`: [`Storage`]). Engines are
//! built by [`crate::exec::distribute::build_engine`], the same homes and backends
//! `mgpu run` uses. Each step is one engine pass that applies every fetched block to every
//! model evaluation of the batch in turn (with `cfg`, two per job: prompt and negative
//! prompt, combined as the pipeline does), then an Euler update. The model output of the
//! first step is hashed per job: placements and batch sizes must give the same bytes as the
//! all-resident batch-1 run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::distribute::{build_engine, PlacedUnit, Pools, Target, UnitSource};
use super::engine::{EngineError, PassStats};
use super::unit::UnitData;
use crate::device::{DeviceName, UnitHome};
use crate::models::spec::{self, DiffusionModel, StepInputs};
use crate::models::tiny;

mod ops;
mod render;
mod storage;

pub use ops::{profile_ops, profile_wan_ops};
pub use render::render;
use storage::host_tensor;
pub use storage::Storage;

/// One placement to measure.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Placement {
    /// Where the streamed share lives (`Host`, `Disk` or a `Donor`); `None`: all resident.
    pub source: Option<UnitHome>,
    /// Percent of blocks streamed.
    pub percent: u32,
    /// How the blocks' matrices are stored (the suffix): `@q8_0`/`@q4_k` as GGUF blocks (as
    /// city96's GGUF files store them), streamed blocks travel quantised and are dequantised
    /// on the compute device, resident ones are dequantised once; `@fp8` as ComfyUI scaled
    /// fp8 (e4m3fn + a per-tensor scale, as `*_fp8_scaled` files store them), streamed blocks
    /// travel as fp8 and are widened on the compute device, resident ones once;
    /// `@fp8-compute` as `@fp8`, and the blocks' projections and MLPs multiply in e4m3 on the
    /// tensor cores (`dtype = "fp8"`, [`crate::models::fp8`]): their weights stay e4m3 on the
    /// compute device, resident or fetched.
    pub storage: Storage,
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (t, storage) = match t.split_once('@') {
            None => (t, Storage::Plain),
            Some((t, suffix)) => (
                t,
                Storage::ALL
                    .into_iter()
                    .find(|st| st.suffix().strip_prefix('@') == Some(suffix))
                    .ok_or_else(|| {
                        format!(
                            "placement `{s}`: unknown storage `@{suffix}` (known: @q8_0, @q4_k, @fp8, @fp8-compute)"
                        )
                    })?,
            ),
        };
        if t == "resident" {
            return Ok(Placement {
                source: None,
                percent: 0,
                storage,
            });
        }
        let (src, pct) = t.rsplit_once(':').ok_or_else(|| {
            format!("placement `{t}`: expected `resident` or SOURCE:PERCENT, like `cpu:50` or `cuda:1:100`")
        })?;
        let percent: u32 = pct
            .parse()
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| format!("placement `{t}`: `{pct}` is not a percentage 0–100"))?;
        let source = match DeviceName::parse(src).map_err(|e| format!("placement `{t}`: {e}"))? {
            DeviceName::Cpu => UnitHome::Host,
            DeviceName::Disk => UnitHome::Disk,
            DeviceName::Cuda(i) => UnitHome::Donor(i),
        };
        Ok(Placement {
            source: Some(source),
            percent,
            storage,
        })
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            None | Some(UnitHome::Compute) => f.write_str("resident"),
            Some(UnitHome::Host) => write!(f, "cpu:{}", self.percent),
            Some(UnitHome::Disk) => write!(f, "disk:{}", self.percent),
            Some(UnitHome::Donor(i)) => write!(f, "cuda:{i}:{}", self.percent),
        }?;
        f.write_str(self.storage.suffix())?;
        Ok(())
    }
}

/// Which blocks of `n` stream when `percent` of them do: spread evenly through the order
/// (block i streams when ⌊(i+1)·p⌋ > ⌊i·p⌋), so every fetch has resident compute to hide behind.
pub fn spread(n: usize, percent: u32) -> Vec<bool> {
    let k = (n * percent as usize + 50) / 100;
    (0..n).map(|i| (i + 1) * k / n > i * k / n).collect()
}

/// Settings of one benchmark run (the model's config is given to [`run`] beside it).
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model_name: String,
    pub width: usize,
    pub height: usize,
    /// Frames of a video (1 for images).
    pub frames: usize,
    pub txt_tokens: usize,
    pub steps: usize,
    pub warmup: usize,
    pub batches: Vec<usize>,
    pub placements: Vec<Placement>,
    pub slots: usize,
    /// Slots for particular cells, by (placement as written, batch); `slots` elsewhere.
    pub slots_for: std::collections::BTreeMap<(String, usize), usize>,
    pub dtype: DType,
    pub seed: u64,
    /// True classifier-free guidance: two model evaluations per job and step.
    pub cfg: bool,
    /// Two experts (Wan 2.2 A14B) switching at this boundary: a second model with its own
    /// weights (seed + 1) in the same placement, the steps on Wan 2.2's T2V schedule
    /// (`flow_sigmas`, shift 12), each step on the expert `sample::high_noise_expert` picks.
    /// `None`: one model, σ falling linearly.
    pub experts: Option<f64>,
    /// `--lora-rank`: a rank-R LoRA term on every GGML-stored block matrix, added at every
    /// dequantisation (`lora_mode = "on_dequant"`); 0: none.
    pub lora_rank: usize,
}

/// One measured (placement, batch) cell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    pub placement: String,
    pub batch: usize,
    /// Prefetch slots K of this cell.
    pub slots: usize,
    /// Median seconds per step over the timed steps.
    pub step_seconds: f64,
    /// Median seconds per step the compute device stalled waiting for fetches.
    pub wait_seconds: f64,
    /// Bytes streamed per step.
    pub streamed_bytes: u64,
    /// Achieved bandwidth of the streamed bytes over the wall seconds per step, GB/s (1e9).
    pub streamed_gbps: f64,
    /// Hashes of the first step's velocity, one per job.
    pub hashes: Vec<String>,
    /// Same bytes as the all-resident batch-1 run.
    pub identical: Option<bool>,
    /// fp8 compute (`@fp8-compute`), all resident, batch 1: the first step's velocity against
    /// that of the bf16 `resident` cell of the same run (same generated weights, same job).
    pub quality: Option<Quality>,
    /// The planner's step time for this placement on the hardware file given to `mgpu bench
    /// --hardware` ([`crate::plan::predict_step`]); `None` without one.
    pub predicted_seconds: Option<f64>,
    /// The work between passes the prediction assumed (seconds per step; measured on this
    /// batch's cells that stream nothing), `None` when there was none to measure.
    pub gap_seconds: Option<f64>,
    /// Wall seconds of all timed steps together (with two experts: the switch included).
    pub run_seconds: f64,
    /// With two experts: the first step (0-based, counting warm-up) of the low-noise one.
    pub switch_step: Option<usize>,
    pub steps: Vec<PassStats>,
}

/// How far one output is from a reference ([`crate::models::fp8::compare`]).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Quality {
    pub max_abs_error: f32,
    /// Over the reference's peak magnitude.
    pub psnr_db: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub device: String,
    pub model: String,
    pub parameters: u64,
    pub block_bytes: u64,
    pub resident_bytes: u64,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    /// Tokens of one evaluation through the blocks (image/video + text for FLUX).
    pub tokens: usize,
    pub txt_tokens: usize,
    /// Model evaluations per job and step (2 with `cfg`).
    pub evals_per_job: usize,
    pub slots: usize,
    pub setup_seconds: f64,
    pub measurements: Vec<Measurement>,
}

type Units = Vec<(String, Vec<(String, Vec<usize>)>)>;

/// Unit names in order, each with its tensors (relative names, shapes); the resident rest
/// under the empty name first.
fn layout_units<M: DiffusionModel>(cfg: &M::Config) -> candle_core::Result<Units> {
    let layout = spec::diffusion_layout::<M>(cfg)?;
    let names = M::units(cfg);
    let mut units: Units = std::iter::once((String::new(), vec![]))
        .chain(names.iter().map(|n| (n.clone(), vec![])))
        .collect();
    for (name, shape) in layout {
        match names
            .iter()
            .position(|u| name.starts_with(&format!("{u}.")))
        {
            Some(i) => units[i + 1]
                .1
                .push((name[names[i].len() + 1..].to_string(), shape)),
            None => units[0].1.push((name, shape)),
        }
    }
    Ok(units)
}

/// Random f32 values for tensor `name`: on a CUDA device from its seeded generator (fast at
/// 12 B parameters), on the CPU from [`tiny::init_values`]; both scaled as the tiny models are
/// (weights by 1/√fan_in, norm scales around 1, the rest small). Inputs (`latent`, `txt`,
/// `vec`) are standard normal-sized.
fn generate(
    seed: u64,
    name: &str,
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_input = matches!(name, "latent" | "txt" | "vec" | "neg");
    let is_norm =
        leaf == "scale" || (shape.len() == 1 && leaf == "weight" && name.contains("norm"));
    if device.is_cuda() {
        let (offset, std) = if is_input {
            (0.0, 1.0)
        } else if shape.len() >= 2 {
            (
                0.0,
                (1.0 / shape[1..].iter().product::<usize>().max(1) as f64).sqrt(),
            )
        } else if is_norm {
            (1.0, 0.05)
        } else {
            (0.0, 0.01)
        };
        return Tensor::randn(offset as f32, std as f32, shape, device);
    }
    let mut v = tiny::init_values(seed, name, shape);
    if is_input {
        v.iter_mut().for_each(|x| *x *= 1.7);
    }
    Tensor::from_vec(v, shape, device)
}

fn fnv_hex(t: &Tensor) -> candle_core::Result<String> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(format!("{:016x}", tiny::fnv1a64(&bytes)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// The engine error for a setup failure outside the engine itself.
fn setup_err(unit: &str, message: String) -> EngineError {
    EngineError::Fetch {
        unit: unit.into(),
        link: "setup".into(),
        message,
    }
}

/// One model's generated weights, and their host copies for the streamed placements, per
/// [`Storage`] (indexed by `Storage::index`).
struct Weights {
    /// Per storage: each unit's tensors on the compute device (for compact storages: the
    /// compact host copy widened once, through the same path as a fetch).
    resident: [Vec<HashMap<String, Tensor>>; Storage::ALL.len()],
    /// Per storage: each block's host copy (`None` for the resident rest or when no
    /// placement needs it).
    host: [Vec<Option<UnitData>>; Storage::ALL.len()],
}

impl Weights {
    /// Generates the weights of `units` from `seed` on `device` (and the host copies the
    /// placements of `cfg` need); also returns the parameter count.
    fn generate(
        units: &Units,
        family: crate::family::Family,
        cfg: &BenchConfig,
        seed: u64,
        device: &Device,
        progress: &mut impl FnMut(&str),
    ) -> Result<(Weights, u64), EngineError> {
        // Weights: generated on the device, deterministic from the seed.
        device.set_seed(seed).ok();
        let mut resident: Vec<HashMap<String, Tensor>> = Vec::with_capacity(units.len());
        let mut parameters = 0u64;
        for (unit, tensors) in units.iter() {
            let mut m = HashMap::new();
            for (name, shape) in tensors {
                let full = if unit.is_empty() {
                    name.clone()
                } else {
                    format!("{unit}.{name}")
                };
                let t = generate(seed, &full, shape, device)?.to_dtype(cfg.dtype)?;
                parameters += t.elem_count() as u64;
                m.insert(name.clone(), t);
            }
            resident.push(m);
        }
        // Host copies of the blocks, made once, shared by every streamed placement; compact
        // copies for the `@q8_0` and `@fp8` placements.
        let wants = |st: Storage| {
            cfg.placements.iter().any(|p| {
                p.storage == st && (st != Storage::Plain || (p.source.is_some() && p.percent > 0))
            })
        };
        let mut host: [Vec<Option<UnitData>>; Storage::ALL.len()] = Default::default();
        let mut residents: [Vec<HashMap<String, Tensor>>; Storage::ALL.len()] = Default::default();
        for st in Storage::ALL {
            let k = st.index();
            host[k] = vec![None; units.len()];
            if !wants(st) {
                continue;
            }
            progress(st.progress());
            for (i, (name, tensors)) in units.iter().enumerate().skip(1) {
                let mut ts = Vec::new();
                for (tname, shape) in tensors {
                    let t = resident[i][tname].to_device(&Device::Cpu)?;
                    let linear = family.fp8_linear(&format!("{name}.{tname}"));
                    let mut h = host_tensor(tname, shape, &t, cfg.dtype, st, linear)?;
                    if cfg.lora_rank > 0 && h.quant.is_some_and(|q| q.is_quantized()) {
                        let (rows, cols) = (shape[0] as u64, shape[1..].iter().product::<usize>());
                        let full = format!("{name}.{tname}");
                        h.lora = Some(Arc::new(storage::synthetic_lora(
                            &full,
                            rows,
                            cols as u64,
                            cfg.lora_rank,
                        )));
                    }
                    ts.push(h);
                }
                host[k][i] = Some(UnitData {
                    name: name.clone(),
                    tensors: ts,
                });
            }
            if st != Storage::Plain {
                // Resident compact blocks: widened once, through the same path as a fetch.
                residents[k].push(resident[0].clone());
                for d in host[k].iter().skip(1).flatten() {
                    residents[k].push(d.materialize(device, cfg.dtype)?);
                }
            }
        }
        residents[0] = resident;
        Ok((
            Weights {
                resident: residents,
                host,
            },
            parameters,
        ))
    }
}

/// Runs the benchmark for family `M` with config `model` on `device` (CPU or CUDA). `pools`
/// keeps page-locked copies across placements; `cache_dir` takes the spill files of `disk`
/// placements (choose a folder on a disk: it holds the streamed blocks).
pub fn run<M: DiffusionModel>(
    model: &M::Config,
    cfg: &BenchConfig,
    device: &Device,
    cache_dir: &Path,
    pools: &mut Pools,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, EngineError> {
    let t0 = Instant::now();
    let units = layout_units::<M>(model)?;
    let n_experts = if cfg.experts.is_some() { 2 } else { 1 };
    let mut weights = Vec::with_capacity(n_experts);
    let mut parameters = 0u64;
    for e in 0..n_experts {
        let (w, p) = Weights::generate(
            &units,
            M::FAMILY,
            cfg,
            cfg.seed.wrapping_add(e as u64),
            device,
            &mut progress,
        )?;
        weights.push(w);
        parameters += p;
    }
    let esize = cfg.dtype.size_in_bytes() as u64;
    let unit_bytes: Vec<u64> = weights[0].resident[0]
        .iter()
        .map(|m| m.values().map(|t| t.elem_count() as u64 * esize).sum())
        .collect();
    let setup_seconds = t0.elapsed().as_secs_f64();
    let n_blocks = units.len() - 1;
    let target = Target {
        name: match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => DeviceName::Cuda(gpu_id as u32),
            _ => DeviceName::Cpu,
        },
        device: device.clone(),
        dtype: cfg.dtype,
    };
    // Inputs, per job (seeded per job index, so a job's inputs do not depend on its batch):
    // the latent, the text context, the pooled vector if the family takes one, and under
    // `cfg` a second context standing for the negative prompt.
    let needs = M::text_needs(model);
    let latent_shape = M::latent_shape(
        model,
        cfg.width as u32,
        cfg.height as u32,
        cfg.frames as u32,
    );
    let max_batch = cfg.batches.iter().copied().max().unwrap_or(1);
    let mut inputs = Vec::with_capacity(max_batch);
    for j in 0..max_batch {
        let seed = cfg.seed.wrapping_add(1000 + j as u64);
        let latent = generate(seed, "latent", &latent_shape, device)?;
        let ctx_shape = [1, cfg.txt_tokens, needs.context_dim];
        let txt = generate(seed, "txt", &ctx_shape, device)?;
        let neg = cfg
            .cfg
            .then(|| generate(seed, "neg", &ctx_shape, device))
            .transpose()?;
        let vec = needs
            .pooled
            .map(|(_, d)| generate(seed, "vec", &[1, d], device))
            .transpose()?;
        inputs.push((latent, txt, vec, neg));
    }
    let dits = weights
        .iter()
        .map(|w| {
            M::new(
                model,
                candle_nn::VarBuilder::from_tensors(w.resident[0][0].clone(), cfg.dtype, device),
            )
        })
        .collect::<candle_core::Result<Vec<M>>>()?;
    let total = cfg.warmup + cfg.steps;
    // σ per step (and the end): linear for one model; Wan 2.2 T2V's schedule for experts.
    let sigmas: Vec<f64> = match cfg.experts {
        None => (0..=total).map(|s| 1.0 - s as f64 / total as f64).collect(),
        Some(_) => crate::sample::schedule(
            &crate::sample::ModelSampling::wan(12.0)
                .map_err(|e| setup_err("model sampling", e.to_string()))?,
            crate::sample::Scheduler::FlowSigmas,
            total as u32,
            1.0,
        )
        .map_err(|e| setup_err("schedule", e.to_string()))?,
    };
    let ms = M::model_sampling(model, cfg.width as u32, cfg.height as u32, None)
        .map_err(|e| setup_err("model sampling", e.to_string()))?;
    // The network's timestep as a run would give it: whole timesteps on the experts'
    // `flow_sigmas` schedule (decision §30), continuous on the linear one.
    let scheduler = match cfg.experts {
        Some(_) => crate::sample::Scheduler::FlowSigmas,
        None => crate::sample::Scheduler::Simple,
    };
    let timestep = |sigma: f64| ms.model_timestep(sigma, scheduler);
    let guidance = M::guidance(model, 3.5);

    let mut measurements = Vec::new();
    // The all-resident batch-1 hash, per storage (plain, Q8_0, fp8).
    let mut reference: HashMap<Storage, String> = HashMap::new();
    // The all-resident batch-1 first velocity of the first job, per storage (for `quality`).
    let mut reference_velocity: HashMap<Storage, Tensor> = HashMap::new();
    let mut quality = None;
    // The second expert's page-locked copies (the first uses `pools`).
    let mut expert_pools: Vec<Pools> = (1..weights.len()).map(|_| Pools::default()).collect();
    for &batch in &cfg.batches {
        for placement in &cfg.placements {
            progress(&format!("{placement}, batch {batch}"));
            let streamed = match &placement.source {
                Some(_) => spread(n_blocks, placement.percent),
                None => vec![false; n_blocks],
            };
            let mut placed_all = Vec::with_capacity(weights.len());
            for w in &weights {
                let k = placement.storage.index();
                let (homes, residents) = (&w.host[k], &w.resident[k]);
                let mut placed = Vec::with_capacity(n_blocks);
                for i in 1..units.len() {
                    let name = units[i].0.clone();
                    placed.push(match (streamed[i - 1], placement.source) {
                        (true, Some(home)) => PlacedUnit {
                            home,
                            data: UnitSource::Host(homes[i].clone().ok_or_else(|| {
                                setup_err(&name, "no host copy of a streamed unit".into())
                            })?),
                            name,
                        },
                        _ => PlacedUnit {
                            home: UnitHome::Compute,
                            data: UnitSource::Device(residents[i].clone()),
                            name,
                        },
                    });
                }
                placed_all.push(placed);
            }
            let homes = &weights[0].host[placement.storage.index()];
            let streamed_bytes: u64 = (1..units.len())
                .filter(|&i| streamed[i - 1])
                .map(|i| homes[i].as_ref().map_or(0, |d| d.bytes()))
                .sum();
            let slots = cfg
                .slots_for
                .get(&(placement.to_string(), batch))
                .copied()
                .unwrap_or(cfg.slots);
            let mut engines = Vec::with_capacity(placed_all.len());
            for (j, placed) in placed_all.into_iter().enumerate() {
                // Pools reuse page-locked copies by unit name, and both experts name their
                // blocks alike: each expert keeps its own pool.
                let pool = match j {
                    0 => &mut *pools,
                    _ => &mut expert_pools[j - 1],
                };
                engines.push(
                    build_engine(placed, &target, slots, cache_dir, pool)
                        .map_err(|e| setup_err(&placement.to_string(), e))?
                        .engine,
                );
            }
            let mut latents: Vec<Tensor> = inputs[..batch].iter().map(|x| x.0.clone()).collect();
            let mut stats = Vec::new();
            let mut hashes = Vec::new();
            let mut switch_step = None;
            let mut timed = None;
            for step in 0..total {
                if step == cfg.warmup {
                    timed = Some(Instant::now());
                }
                let sigma = sigmas[step];
                let e = match cfg.experts {
                    Some(b) if !crate::sample::high_noise_expert(timestep(sigma), b) => 1,
                    _ => 0,
                };
                if e == 1 && switch_step.is_none() {
                    switch_step = Some(step);
                }
                let (dit, engine) = (&dits[e], &mut engines[e]);
                let mut evals = Vec::new();
                for (l, (_, txt, vec, neg)) in latents.iter().zip(&inputs) {
                    for context in std::iter::once(txt).chain(neg) {
                        evals.push(StepInputs {
                            latent: l,
                            context,
                            pooled: vec.as_ref(),
                            timestep: timestep(sigma),
                            guidance,
                            clean_frames: 0,
                        });
                    }
                }
                let mut states = evals
                    .iter()
                    .map(|e| dit.prepare(e))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                drop(evals);
                let pass = engine.pass(|i, wts| {
                    let block = M::build_unit(model, i, wts.var_builder())?;
                    for s in states.iter_mut() {
                        dit.run_block(&block, s)?;
                    }
                    Ok::<_, EngineError>(())
                })?;
                let mut outs = Vec::with_capacity(states.len());
                for s in states {
                    outs.push(dit.finish(s)?);
                }
                // Guidance as the pipeline combines it: uncond + 5 · (cond − uncond).
                let vels: Vec<Tensor> = if cfg.cfg {
                    outs.chunks(2)
                        .map(|p| &p[1] + ((&p[0] - &p[1])? * 5.0)?)
                        .collect::<candle_core::Result<_>>()?
                } else {
                    outs
                };
                if step == 0 {
                    hashes = vels
                        .iter()
                        .map(fnv_hex)
                        .collect::<candle_core::Result<_>>()?;
                    if placement.source.is_none() && batch == 1 {
                        let st = placement.storage;
                        let v = vels[0].to_device(&Device::Cpu)?;
                        quality = match (st, reference_velocity.get(&Storage::Plain)) {
                            (Storage::Fp8Compute, Some(r)) => {
                                let (max_abs_error, psnr_db) = crate::models::fp8::compare(&v, r)?;
                                Some(Quality {
                                    max_abs_error,
                                    psnr_db,
                                })
                            }
                            _ => None,
                        };
                        reference_velocity.insert(st, v);
                    }
                }
                let dt = match cfg.experts {
                    None => -1.0 / total as f64,
                    Some(_) => sigmas[step + 1] - sigma,
                };
                latents = latents
                    .iter()
                    .zip(&vels)
                    .map(|(l, v)| l + (v * dt)?)
                    .collect::<candle_core::Result<_>>()?;
                if step >= cfg.warmup {
                    stats.push(pass);
                }
            }
            let run_seconds = timed.map_or(0.0, |t| t.elapsed().as_secs_f64());
            if cfg.experts.is_some() {
                // Two experts: the final latents, which both experts and the switch shaped.
                hashes = latents
                    .iter()
                    .map(fnv_hex)
                    .collect::<candle_core::Result<_>>()?;
            }
            drop(engines);
            if placement.source.is_none() && batch == 1 {
                if let Some(h) = hashes.first() {
                    reference.insert(placement.storage, h.clone());
                }
            }
            let identical = reference
                .get(&placement.storage)
                .map(|r| hashes.first() == Some(r));
            let step_seconds = median(stats.iter().map(|s| s.seconds).collect());
            let wait_seconds = median(stats.iter().map(|s| s.wait_seconds).collect());
            measurements.push(Measurement {
                placement: placement.to_string(),
                batch,
                slots,
                step_seconds,
                wait_seconds,
                streamed_bytes,
                // over the wall seconds per step: the pass alone can be shorter than the
                // link needs, copies continuing between passes
                streamed_gbps: if run_seconds > 0.0 && !stats.is_empty() {
                    streamed_bytes as f64 * stats.len() as f64 / run_seconds / 1e9
                } else {
                    0.0
                },
                hashes,
                identical,
                quality: quality.take(),
                predicted_seconds: None,
                gap_seconds: None,
                run_seconds,
                switch_step,
                steps: stats,
            });
        }
    }
    let latent_tokens: usize = latent_shape.iter().skip(2).product::<usize>() / 4;
    Ok(BenchReport {
        device: device_name(device),
        model: cfg.model_name.clone(),
        parameters,
        block_bytes: unit_bytes[1..].iter().sum(),
        resident_bytes: unit_bytes[0],
        width: cfg.width,
        height: cfg.height,
        frames: cfg.frames,
        tokens: latent_tokens
            + if needs.pooled.is_some() {
                cfg.txt_tokens
            } else {
                0
            },
        txt_tokens: cfg.txt_tokens,
        evals_per_job: if cfg.cfg { 2 } else { 1 },
        slots: cfg.slots,
        setup_seconds,
        measurements,
    })
}

fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests;
