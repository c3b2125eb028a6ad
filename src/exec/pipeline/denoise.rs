//! One batch: img2img encoding, lockstep sampling through the streaming engine, decoding.
//!
//! Every task has its own [`SamplerRun`] (seeded noise from its own seed, so nothing depends
//! on the batch). A round asks each unfinished run for its next model call; the calls are
//! evaluated in ONE engine pass, each fetched block applied to every task in turn
//! (docs/decisions.md §4, never one concatenated tensor); each run then advances. The VAE
//! passes work the same way: the encoder (img2img tasks) and the decoder are each fetched
//! once per batch and applied per task.
//!
//! A task fails alone ([`JobError`]): an init image that cannot be read or has the wrong
//! size, a model call that errors, or a NaN/∞ anywhere in its denoised latent (checked after
//! every model call, so a failing task stops costing compute at once). Its neighbours'
//! computations never see it. An engine error (a fetch failing) fails the batch
//! ([`ExecError`]): the weights are no longer trustworthy.
//!
//! img2img: the init image is encoded deterministically to the posterior *mean* (no sampled
//! latent, so no extra noise stream), shifted and scaled into model space, and mixed with the
//! task's seeded noise at the schedule's first σ ([`SamplerRun::start`]).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType as CDType, Device, Tensor};

use super::encode::Conditioning;
use super::models::{FluxModel, VaeModel};
use crate::exec::{Event, ExecError, ImageTask, JobError, PassStats};
use crate::manifest::FluxVariant;
use crate::models::{flux, vae};
use crate::output::{image_to_rgb8, load_init_image, InitFit};
use crate::sample::{ModelSampling, SampleSpec, SamplerRun};

/// A task of the batch with its conditioning.
pub(crate) struct TaskIn<'a> {
    pub task: &'a ImageTask,
    pub cond: Result<Arc<Conditioning>, JobError>,
}

/// What a finished task produced.
pub(crate) struct TaskOut {
    /// The final latent `[1, 16, h, w]`, f32 on the host.
    pub latent: Tensor,
    pub rgb: image::RgbImage,
    /// The model-sampling shift used.
    pub shift: f64,
    /// This task's share of the batch.
    pub seconds: f64,
}

/// The model sampling of a FLUX variant at a size.
pub(crate) fn model_sampling(variant: FluxVariant, width: u32, height: u32) -> ModelSampling {
    match variant {
        FluxVariant::Dev => ModelSampling::flux_dev(width, height),
        FluxVariant::Schnell => ModelSampling::flux_schnell(),
    }
}

fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    let v = t.flatten_all()?.to_dtype(CDType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

/// A task in flight.
struct Live<'a> {
    task: &'a ImageTask,
    run: SamplerRun,
    ms: ModelSampling,
    txt: Tensor,
    vec: Tensor,
}

/// Runs one batch; one result per input, in order.
pub(crate) fn run(
    flux: &mut FluxModel,
    vae: &mut VaeModel,
    inputs: Vec<TaskIn<'_>>,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<Result<TaskOut, JobError>>, ExecError> {
    let t0 = Instant::now();
    let n = inputs.len();
    let mut failed: Vec<Option<JobError>> = vec![None; n];
    let fdev = flux.target.device.clone();
    let vdev = vae.target.device.clone();
    let vdtype = vae.target.dtype;
    let vname = vae.name.clone();

    // img2img: read the init images, then one encoder pass for all of them.
    let mut init_images: Vec<Option<Tensor>> = vec![None; n];
    for (k, inp) in inputs.iter().enumerate() {
        if let Err(e) = &inp.cond {
            failed[k] = Some(e.clone());
            continue;
        }
        if let Some(path) = &inp.task.job.init_image {
            let job = &inp.task.job;
            match load_init_image(path, job.width, job.height, InitFit::Exact)
                .map_err(|e| JobError::new(format!("init image: {e}")))
                .and_then(|t| {
                    t.to_device(&vdev)
                        .and_then(|t| t.to_dtype(vdtype))
                        .map_err(|e| JobError::new(format!("init image: {e}")))
                }) {
                Ok(t) => init_images[k] = Some(t),
                Err(e) => failed[k] = Some(e),
            }
        }
    }
    let mut inits: Vec<Option<Tensor>> = vec![None; n];
    if init_images.iter().any(Option::is_some) {
        let cfg = vae.cfg.clone();
        vae.encoder.pass(|_, w| -> Result<(), ExecError> {
            let enc = vae::Encoder::new(&cfg, w.var_builder())?;
            for k in 0..n {
                let Some(img) = &init_images[k] else { continue };
                match enc
                    .encode(img, None)
                    .and_then(|z| z.to_device(&fdev)?.to_dtype(CDType::F32))
                {
                    Ok(z) => inits[k] = Some(z),
                    Err(e) => failed[k] = Some(JobError::new(format!("VAE `{vname}` encode: {e}"))),
                }
            }
            Ok(())
        })?;
    }

    // Sampler runs.
    let mut live: Vec<Option<Live>> = Vec::with_capacity(n);
    for (k, inp) in inputs.iter().enumerate() {
        if failed[k].is_some() {
            live.push(None);
            continue;
        }
        let job = &inp.task.job;
        let started = (|| -> Result<Live, JobError> {
            let cond = inp.cond.as_ref().map_err(Clone::clone)?;
            let ms = model_sampling(flux.variant, job.width, job.height);
            let spec = SampleSpec {
                sampler: job.sampler,
                scheduler: job.scheduler,
                steps: job.steps,
                denoise: job.denoise,
                seed: inp.task.image.seed,
            };
            let (h, w) = (job.height as usize / 8, job.width as usize / 8);
            let shape = [1, flux::config::LATENT_CHANNELS, h, w];
            let run = SamplerRun::start(&spec, &ms, &shape, inits[k].as_ref(), &fdev, CDType::F32)
                .map_err(|e| JobError::new(format!("sampler: {e}")))?;
            let dev = |t: &Tensor| {
                t.to_device(&fdev)
                    .map_err(|e| JobError::new(format!("conditioning: {e}")))
            };
            Ok(Live {
                task: inp.task,
                run,
                ms,
                txt: dev(&cond.txt)?,
                vec: dev(&cond.vec)?,
            })
        })();
        match started {
            Ok(l) => live.push(Some(l)),
            Err(e) => {
                failed[k] = Some(e);
                live.push(None);
            }
        }
    }
    drop(inits);

    // Lockstep sampling: one engine pass per round.
    let steps = live
        .iter()
        .flatten()
        .map(|l| l.run.total_steps())
        .max()
        .unwrap_or(0) as u32;
    let mut pending: Vec<PassStats> = Vec::new();
    let mut current_step: Option<usize> = None;
    loop {
        // (task index, input, σ, step)
        let calls: Vec<(usize, Tensor, f64, usize)> = live
            .iter()
            .enumerate()
            .filter_map(|(k, l)| {
                let c = l.as_ref()?.run.next_call()?;
                Some((k, c.x.clone(), c.sigma, c.step))
            })
            .collect();
        let Some(step) = calls.iter().map(|c| c.3).min() else {
            break;
        };
        if current_step.is_some_and(|s| s != step) && !pending.is_empty() {
            events(Event::Step {
                step: current_step.unwrap_or(0) as u32 + 1,
                steps,
                passes: std::mem::take(&mut pending),
            });
        }
        current_step = Some(step);
        let guidance = |job: &crate::manifest::Job| match flux.variant {
            FluxVariant::Dev => Some(job.guidance),
            FluxVariant::Schnell => None,
        };
        let mut states: Vec<(usize, Option<flux::State>)> = Vec::with_capacity(calls.len());
        for (k, x, sigma, _) in &calls {
            let l = live[*k].as_ref().expect("calls come from live runs");
            let g = guidance(&l.task.job);
            match flux
                .dit
                .prepare(x, &l.txt, &l.vec, l.ms.timestep(*sigma), g)
            {
                Ok(s) => states.push((*k, Some(s))),
                Err(e) => {
                    failed[*k] = Some(JobError::new(format!("FLUX `{}`: {e}", flux.name)));
                    states.push((*k, None));
                }
            }
        }
        let (dit, cfg, name) = (&flux.dit, &flux.cfg, &flux.name);
        let pass = flux.engine.pass(|i, w| -> Result<(), ExecError> {
            let block = flux::FluxDit::build_unit(cfg, i, w.var_builder())?;
            for (k, s) in states.iter_mut() {
                if let Some(st) = s {
                    if let Err(e) = dit.run_block(&block, st) {
                        failed[*k] = Some(JobError::new(format!("FLUX `{name}`: {e}")));
                        *s = None;
                    }
                }
            }
            Ok(())
        })?;
        pending.push(pass);
        for ((k, s), (_, x, sigma, _)) in states.into_iter().zip(&calls) {
            let Some(st) = s else {
                live[k] = None;
                continue;
            };
            let l = live[k].as_mut().expect("calls come from live runs");
            let r = (|| -> Result<(), JobError> {
                let v = flux
                    .dit
                    .finish(st)
                    .map_err(|e| JobError::new(format!("FLUX `{}`: {e}", flux.name)))?;
                let d =
                    l.ms.denoised_from_velocity(x, *sigma, &v)
                        .map_err(|e| JobError::new(format!("sampler: {e}")))?;
                let finite = all_finite(&d).map_err(|e| JobError::new(e.to_string()))?;
                if !finite {
                    return Err(JobError::new(format!(
                        "the denoised latent has NaN or infinite values at step {} of {} (σ = {sigma:.4}): the model produced invalid numbers",
                        step + 1,
                        l.run.total_steps()
                    )));
                }
                l.run
                    .advance(&d)
                    .map_err(|e| JobError::new(format!("sampler: {e}")))
            })();
            if let Err(e) = r {
                failed[k] = Some(e);
                live[k] = None;
            }
        }
    }
    if !pending.is_empty() {
        events(Event::Step {
            step: current_step.unwrap_or(0) as u32 + 1,
            steps,
            passes: pending,
        });
    }
    let sampled_seconds = t0.elapsed().as_secs_f64();

    // Decode: one decoder pass for the batch.
    let mut latents: Vec<Option<Tensor>> = vec![None; n];
    let mut shifts = vec![0.0; n];
    for (k, l) in live.into_iter().enumerate() {
        let Some(l) = l else { continue };
        shifts[k] = l.ms.shift();
        match l.run.finish() {
            Ok(x) => latents[k] = Some(x),
            Err(e) => failed[k] = Some(JobError::new(format!("sampler: {e}"))),
        }
    }
    let mut images: Vec<Option<(image::RgbImage, f64)>> = vec![None; n];
    if latents.iter().any(Option::is_some) {
        let cfg = vae.cfg.clone();
        let tiling = vae.tiling;
        vae.decoder.pass(|_, w| -> Result<(), ExecError> {
            let dec = vae::Decoder::new(&cfg, w.var_builder())?;
            for k in 0..n {
                let Some(z) = &latents[k] else { continue };
                let t = Instant::now();
                let img = z
                    .to_device(&vdev)
                    .and_then(|z| z.to_dtype(vdtype))
                    .and_then(|z| match tiling {
                        Some(t) => dec.decode_tiled(&z, t),
                        None => dec.decode(&z),
                    })
                    .map_err(|e| JobError::new(format!("VAE `{vname}` decode: {e}")))
                    .and_then(|img| {
                        image_to_rgb8(&img)
                            .map_err(|e| JobError::new(format!("VAE `{vname}` decode: {e}")))
                    });
                match img {
                    Ok(rgb) => images[k] = Some((rgb, t.elapsed().as_secs_f64())),
                    Err(e) => failed[k] = Some(e),
                }
            }
            Ok(())
        })?;
    }
    let share = sampled_seconds / n.max(1) as f64;
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        if let Some(e) = failed[k].take() {
            out.push(Err(e));
            continue;
        }
        let (Some(z), Some((rgb, decode_s))) = (latents[k].take(), images[k].take()) else {
            out.push(Err(JobError::new(
                "the task produced no image (a bug in the executor)",
            )));
            continue;
        };
        let latent = z.to_device(&Device::Cpu).map_err(ExecError::from)?;
        out.push(Ok(TaskOut {
            latent,
            rgb,
            shift: shifts[k],
            seconds: share + decode_s,
        }));
    }
    Ok(out)
}
