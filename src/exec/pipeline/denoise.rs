//! One batch, for any family: img2img encoding, lockstep sampling through the streaming
//! engine, decoding.
//!
//! Every task has its own [`SamplerRun`] (seeded noise from its own seed, so nothing depends
//! on the batch). A round asks each unfinished run for its next model call; the calls become
//! model evaluations — one per task, two for a task with classifier-free guidance (its prompt
//! and its negative prompt) — evaluated in ONE engine pass, each fetched block applied to
//! every evaluation in turn (docs/decisions.md §4, never one concatenated tensor), so one
//! weight fetch serves the whole batch and both halves of its guidance. Guidance combines the
//! two model outputs as `uncond + cfg · (cond − uncond)`, as Wan's reference and diffusers'
//! pipelines do; each run then advances. The VAE passes work the same way: the encoder
//! (img2img tasks) and the decoder are each fetched once per batch and applied per task.
//!
//! A task fails alone ([`JobError`]): an init image that cannot be read or has the wrong
//! size, a model evaluation that errors, or a NaN/∞ anywhere in its denoised latent (checked
//! after every model call, so a failing task stops costing compute at once). Its neighbours'
//! computations never see it. An engine error (a fetch failing) fails the batch
//! ([`ExecError`]): the weights are no longer trustworthy.
//!
//! Image-to-video (a model with image conditioning, [`i2v`]): the init image becomes the
//! first frame of a conditioning video, encoded in the same encoder pass, and the model's
//! image conditioning from its latent follows the noisy latent in every evaluation; sampling
//! starts from pure noise. A first-frame model (Wan 2.2 TI2V-5B) instead has the init image's
//! latent as frame 0 of every evaluation's input (embedded at timestep 0) and of the result.
//!
//! img2img: the init image is encoded deterministically to the posterior *mean* (no sampled
//! latent, so no extra noise stream), in the diffusion model's latent space, and mixed with
//! the task's seeded noise at the schedule's first σ ([`SamplerRun::start`]).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType as CDType, Device, Tensor};

use super::encode::Conditioning;
use super::experts::Experts;
use super::family::Codec;
use super::i2v;
use crate::exec::phase::Phase;
use crate::exec::{Event, ExecError, ImageTask, JobError, PassStats};
use crate::models::spec::StepInputs;
use crate::output::{image_to_rgb8, load_init_image, InitFit};
use crate::sample::{ModelSampling, SampleSpec, SamplerRun};

/// A task of the batch with its conditioning (and, under classifier-free guidance, the
/// conditioning of its negative prompt).
pub(crate) struct TaskIn<'a> {
    pub task: &'a ImageTask,
    pub cond: Result<Arc<Conditioning>, JobError>,
    pub uncond: Option<Result<Arc<Conditioning>, JobError>>,
}

/// What a finished task produced.
pub(crate) struct TaskOut {
    /// The final latent (`[1, C, h, w]` or `[1, C, T, h, w]`), f32 on the host.
    pub latent: Tensor,
    /// The decoded frames (one for an image).
    pub frames: Vec<image::RgbImage>,
    /// The model-sampling shift used.
    pub shift: f64,
    /// The distilled guidance given to the model, if it takes one.
    pub guidance: Option<f64>,
    /// This task's share of the batch.
    pub seconds: f64,
}

fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    let v = t.flatten_all()?.to_dtype(CDType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

/// One conditioning on the compute device.
struct Cond {
    context: Tensor,
    pooled: Option<Tensor>,
}

impl Cond {
    fn on(c: &Conditioning, dev: &Device) -> Result<Cond, JobError> {
        let to = |t: &Tensor| {
            t.to_device(dev)
                .map_err(|e| JobError::new(format!("conditioning: {e}")))
        };
        Ok(Cond {
            context: to(&c.context)?,
            pooled: c.pooled.as_ref().map(to).transpose()?,
        })
    }
}

/// A task in flight.
struct Live<'a> {
    task: &'a ImageTask,
    run: SamplerRun,
    ms: ModelSampling,
    guidance: Option<f64>,
    cond: Cond,
    /// The negative prompt's conditioning under classifier-free guidance.
    uncond: Option<Cond>,
    /// Image-to-video: the image conditioning that follows the noisy latent.
    condition: Option<Tensor>,
    /// First-frame image-to-video (TI2V): the init image's latent `[1, C, 1, h, w]`, frame 0
    /// of every model input and of the result.
    first: Option<Tensor>,
}

/// Runs one batch; one result per input, in order.
pub(crate) fn run(
    dits: &mut Experts<'_>,
    vae: &mut dyn Codec,
    inputs: Vec<TaskIn<'_>>,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<Result<TaskOut, JobError>>, ExecError> {
    let t0 = Instant::now();
    let n = inputs.len();
    let mut failed: Vec<Option<JobError>> = vec![None; n];
    let fdev = dits.any(events)?.device().clone();
    // The loop's time from here (a model loaded above reports its own load phases).
    let t_sample = Instant::now();

    // Init images, then one encoder pass for all of them: img2img starting latents, or
    // image-to-video conditioning videos (`i2v`) when the model takes image conditioning.
    let (condition_channels, first_frame, size_multiple, model_name) = {
        let d = dits.any(events)?;
        let h = d.header();
        let name = d.name().to_string();
        (h.condition_channels, h.first_frame, h.size_multiple, name)
    };
    let mut init_images: Vec<Option<Tensor>> = vec![None; n];
    for (k, inp) in inputs.iter().enumerate() {
        if let Some(e) = [Some(&inp.cond), inp.uncond.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|c| c.as_ref().err())
        {
            failed[k] = Some(e.clone());
            continue;
        }
        let job = &inp.task.job;
        if let Some(e) = i2v::mismatch(job, condition_channels, first_frame, &model_name) {
            failed[k] = Some(e);
            continue;
        }
        if let Some(e) = size_mismatch(job, size_multiple, &model_name) {
            failed[k] = Some(e);
            continue;
        }
        if first_frame && job.init_image.is_some() {
            match i2v::first_frame_image(job, vae.device(), vae.dtype()) {
                Ok(t) => init_images[k] = Some(t),
                Err(e) => failed[k] = Some(e),
            }
        } else if condition_channels > 0 {
            match i2v::conditioning_video(job, vae.device(), vae.dtype()) {
                Ok(t) => init_images[k] = Some(t),
                Err(e) => failed[k] = Some(e),
            }
        } else if let Some(path) = &job.init_image {
            match load_init_image(path, job.width, job.height, InitFit::Exact)
                .map_err(|e| JobError::new(format!("init image: {e}")))
                .and_then(|t| {
                    t.to_device(vae.device())
                        .and_then(|t| t.to_dtype(vae.dtype()))
                        .map_err(|e| JobError::new(format!("init image: {e}")))
                }) {
                Ok(t) => init_images[k] = Some(t),
                Err(e) => failed[k] = Some(e),
            }
        }
    }
    let mut inits: Vec<Option<Tensor>> = vec![None; n];
    let mut conditions: Vec<Option<Tensor>> = vec![None; n];
    let mut firsts: Vec<Option<Tensor>> = vec![None; n];
    for (k, r) in vae.encode(&init_images)?.into_iter().enumerate() {
        match r {
            None => {}
            Some(Ok(z)) => match z.to_device(&fdev).and_then(|z| z.to_dtype(CDType::F32)) {
                Ok(z) if first_frame => firsts[k] = Some(z),
                Ok(z) if condition_channels > 0 => match dits.any(events)?.image_condition(&z) {
                    Ok(c) => conditions[k] = Some(c),
                    Err(e) => failed[k] = Some(JobError::new(format!("init image: {e}"))),
                },
                Ok(z) => inits[k] = Some(z),
                Err(e) => failed[k] = Some(JobError::new(format!("init image: {e}"))),
            },
            Some(Err(e)) => failed[k] = Some(JobError::new(e)),
        }
    }
    drop(init_images);

    // Sampler runs. The experts of a pipeline share shapes and sampling.
    let dit = dits.any(events)?;
    let mut live: Vec<Option<Live>> = Vec::with_capacity(n);
    for (k, inp) in inputs.iter().enumerate() {
        if failed[k].is_some() {
            live.push(None);
            continue;
        }
        let job = &inp.task.job;
        let started = (|| -> Result<Live, JobError> {
            let cond = inp.cond.as_ref().map_err(Clone::clone)?;
            let ms = dit.sampling(job).map_err(JobError::new)?;
            let spec = SampleSpec {
                sampler: job.sampler,
                scheduler: job.scheduler,
                steps: job.steps,
                denoise: job.denoise,
                seed: inp.task.image.seed,
            };
            let shape = dit.latent_shape(job);
            let run = SamplerRun::start(&spec, &ms, &shape, inits[k].as_ref(), &fdev, CDType::F32)
                .map_err(|e| JobError::new(format!("sampler: {e}")))?;
            let uncond = match &inp.uncond {
                Some(u) => Some(Cond::on(u.as_ref().map_err(Clone::clone)?, &fdev)?),
                None => None,
            };
            Ok(Live {
                task: inp.task,
                run,
                ms,
                guidance: dit.guidance(job),
                cond: Cond::on(cond, &fdev)?,
                uncond,
                condition: conditions[k].take(),
                first: firsts[k].take(),
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
        // (task index, input, σ, step, model input: the input and any image conditioning)
        let mut calls: Vec<(usize, Tensor, f64, usize, Tensor)> = Vec::new();
        for (k, l) in live.iter().enumerate() {
            let Some(l) = l.as_ref() else { continue };
            let Some(c) = l.run.next_call() else { continue };
            match i2v::model_input(c.x, l.condition.as_ref(), l.first.as_ref()) {
                Ok(xin) => calls.push((k, c.x.clone(), c.sigma, c.step, xin)),
                Err(e) => failed[k] = Some(JobError::new(format!("image conditioning: {e}"))),
            }
        }
        for k in 0..n {
            if failed[k].is_some() {
                live[k] = None;
            }
        }
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
        // Evaluations: per call, the prompt's, then the negative prompt's under guidance;
        // one pass per expert the round needs (the step's starting σ picks it).
        let mut per_call: Vec<Vec<Result<Tensor, String>>> = calls.iter().map(|_| vec![]).collect();
        let mut call_expert = vec![0; calls.len()];
        for expert in 0..dits.len() {
            let mut owners: Vec<usize> = Vec::new();
            let mut evals: Vec<StepInputs> = Vec::new();
            for (c, (k, _, sigma, step, xin)) in calls.iter().enumerate() {
                let l = live[*k].as_ref().expect("calls come from live runs");
                let start = l.run.sigmas().get(*step).copied().unwrap_or(*sigma);
                let scheduler = l.task.job.scheduler;
                if dits.pick(l.ms.model_timestep(start, scheduler)) != expert {
                    continue;
                }
                call_expert[c] = expert;
                for cond in std::iter::once(&l.cond).chain(l.uncond.as_ref()) {
                    owners.push(c);
                    evals.push(StepInputs {
                        latent: xin,
                        context: &cond.context,
                        pooled: cond.pooled.as_ref(),
                        timestep: l.ms.model_timestep(*sigma, scheduler),
                        guidance: l.guidance,
                        clean_frames: usize::from(l.first.is_some()),
                    });
                }
            }
            if evals.is_empty() {
                continue;
            }
            let (outputs, pass) = dits.get(expert, events)?.evaluate(&evals)?;
            drop(evals);
            pending.push(pass);
            for (c, o) in owners.into_iter().zip(outputs) {
                per_call[c].push(o);
            }
        }
        for (((k, x, sigma, _, _), outs), expert) in calls.iter().zip(per_call).zip(call_expert) {
            let k = *k;
            let r = (|| -> Result<(), JobError> {
                let l = live[k].as_mut().expect("calls come from live runs");
                let mut outs = outs.into_iter();
                let cond = outs.next().unwrap_or_else(|| Err("no model output".into()));
                let v = cond.map_err(JobError::new)?;
                let v = match outs.next() {
                    None => v,
                    Some(u) => {
                        let u = u.map_err(JobError::new)?;
                        let scale = l.task.job.cfg_for(expert);
                        v.sub(&u)
                            .and_then(|d| d * scale)
                            .and_then(|d| &u + d)
                            .map_err(|e| JobError::new(format!("guidance: {e}")))?
                    }
                };
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
    events(Event::Phase {
        model: dits.label(),
        phase: Phase::Sample,
        seconds: t_sample.elapsed().as_secs_f64(),
        bytes: 0,
    });

    // Decode: one decoder pass for the batch.
    let mut latents: Vec<Option<Tensor>> = vec![None; n];
    let mut shifts = vec![0.0; n];
    let mut guidances = vec![None; n];
    for (k, l) in live.into_iter().enumerate() {
        let Some(l) = l else { continue };
        shifts[k] = l.ms.shift();
        guidances[k] = l.guidance;
        let done = l.run.finish().and_then(|x| match &l.first {
            Some(f) => Ok(i2v::with_first_frame(&x, f)?),
            None => Ok(x),
        });
        match done {
            Ok(x) => latents[k] = Some(x),
            Err(e) => failed[k] = Some(JobError::new(format!("sampler: {e}"))),
        }
    }
    let t_decode = Instant::now();
    let decoded = vae.decode(&latents)?;
    events(Event::Phase {
        model: vae.name().to_string(),
        phase: Phase::Decode,
        seconds: t_decode.elapsed().as_secs_f64(),
        bytes: 0,
    });
    let share = sampled_seconds / n.max(1) as f64;
    let mut out = Vec::with_capacity(n);
    for (k, d) in decoded.into_iter().enumerate() {
        if let Some(e) = failed[k].take() {
            out.push(Err(e));
            continue;
        }
        let (Some(z), Some(d)) = (latents[k].take(), d) else {
            out.push(Err(JobError::new(
                "the task produced no image (a bug in the executor)",
            )));
            continue;
        };
        let name = vae.name().to_string();
        let frames = d.map_err(JobError::new).and_then(|(frames, s)| {
            to_rgb(&frames)
                .map(|f| (f, s))
                .map_err(|e| JobError::new(format!("VAE `{name}` decode: {e}")))
        });
        let (frames, decode_s) = match frames {
            Ok(f) => f,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        let latent = z.to_device(&Device::Cpu).map_err(ExecError::from)?;
        out.push(Ok(TaskOut {
            latent,
            frames,
            shift: shifts[k],
            guidance: guidances[k],
            seconds: share + decode_s,
        }));
    }
    Ok(out)
}

/// Why `job`'s size does not fit a model whose tokens cover `multiple` pixels per side (the
/// manifest checked the family's multiple; weights may need more: Wan 2.2 TI2V-5B's 32).
fn size_mismatch(job: &crate::manifest::Job, multiple: u32, model: &str) -> Option<JobError> {
    let m = multiple.max(1);
    if job.width.is_multiple_of(m) && job.height.is_multiple_of(m) {
        return None;
    }
    let near = |v: u32| (v / m).max(1) * m;
    Some(JobError::new(format!(
        "`{model}` needs a width and height that are multiples of {m} (its VAE's compression × its patch), not {}×{}: use {}×{}",
        job.width,
        job.height,
        near(job.width),
        near(job.height)
    )))
}

/// Frames `[F, 3, H, W]` in [-1, 1] → one RGB8 image per frame (at least one).
fn to_rgb(frames: &Tensor) -> Result<Vec<image::RgbImage>, crate::output::OutputError> {
    let (f, _c, _h, _w) = frames.dims4()?;
    if f == 0 {
        return Err(crate::output::OutputError::NotAnImage {
            shape: frames.dims().to_vec(),
        });
    }
    (0..f)
        .map(|i| image_to_rgb8(&frames.narrow(0, i, 1)?))
        .collect()
}
