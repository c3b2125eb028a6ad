//! The FLUX pipeline as a [`Generator`]: load → patch → distribute each model per the plan,
//! encode prompts, sample batches in lockstep through the streaming engine, decode.
//!
//! Stages (docs/executor.md):
//! 1. [`generator`]: checks that every pipeline the manifest's jobs use can run (FLUX, its
//!    VAE, one CLIP-L and one T5); nothing is loaded yet.
//! 2. [`Generator::prepare`] with every task of the run: starts hashing the model and LoRA
//!    files in the background ([`hashes`]); reads each diffusion model's header for its
//!    variant (T5 keeps 512 tokens for dev, 256 for schnell); loads each CLIP/T5 pair and
//!    encodes every distinct prompt once (`encode`), keeping the results on the host;
//!    releases the text encoders (unless `keep_loaded` or
//!    [`PipelineOptions::keep_text_encoders`]); then loads the first pipeline's diffusion
//!    model and VAE. Loading is [`crate::exec::load`] → [`crate::exec::distribute`] per
//!    model (`models`), and reports [`Event::Loaded`] with the bytes held per device.
//! 3. [`Generator::run_batch`]: loads what the batch's pipeline needs (releasing models no
//!    remaining task needs first), samples the batch (`denoise`) and fills [`Rendered`]
//!    with the record (model and LoRA hashes). Conditioning and models are dropped as soon as
//!    no remaining task needs them.
//!
//! Placement never changes a value: every unit's bytes are fixed at load, whatever its home,
//! and converted to the compute dtype by one function; batches apply each block to each job
//! in turn. `tests/exec_placements.rs` proves it bit for bit.

mod denoise;
mod encode;
pub mod hashes;
mod models;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::DType as CDType;

use super::{Event, ExecError, Generator, ImageTask, JobError, Rendered};
use crate::family::Family;
use crate::hardware::Hardware;
use crate::manifest::{FluxVariant, Manifest};
use crate::models::tokenize::T5Tokenizer;
use crate::output::record::file_stem;
use crate::output::{ImageRecord, LoraRecord, ModelRecord, RECORD_FORMAT};
use crate::plan::Plan;

pub use super::distribute::UnitHome;
pub use encode::ENCODE_CHUNK;
pub use hashes::HashMode;

use encode::Conditioning;
use models::{ClipModel, Ctx, FluxModel, T5Model, VaeModel};

/// Unit homes that replace the plan's: model name → unit name → home.
pub type HomeOverrides = BTreeMap<String, BTreeMap<String, UnitHome>>;

/// The largest batch [`Generator::max_batch`] ever proposes: beyond it each streamed byte is
/// already shared by so many jobs that the transfer is negligible, while every job keeps its
/// latents and conditioning on the compute device for the whole batch.
pub const MAX_BATCH: usize = 64;

/// Options of a run that reach the pipeline. Build with `..Default::default()`: fields are
/// added over time.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Keep text encoders loaded after encoding (also per model: `keep_loaded`).
    pub keep_text_encoders: bool,
    /// Folder for spill files (patched weights homed on `disk`) and the file-hash cache.
    /// `None`: `OUTPUT_ROOT/.mgpu-cache`, on the disk the outputs go to (not `/tmp`, which is
    /// often RAM: `disk` homes must not silently become memory).
    pub cache_dir: Option<PathBuf>,
    /// Whether image records carry model and LoRA file hashes.
    pub hashes: HashMode,
    /// Unit homes replacing the plan's. Tests and benchmarks use it to stream units from host
    /// memory on a CPU compute device, where the plan's `cpu` home means resident.
    pub homes: HomeOverrides,
}

impl PipelineOptions {
    /// The same options with `unit` of `model` homed on `home`.
    pub fn with_home(mut self, model: &str, unit: &str, home: UnitHome) -> Self {
        self.homes
            .entry(model.to_string())
            .or_default()
            .insert(unit.to_string(), home);
        self
    }
}

/// Builds the generator for `manifest` on `hardware` following `plan`.
pub fn generator(
    manifest: Arc<Manifest>,
    plan: Arc<Plan>,
    hardware: Arc<Hardware>,
    options: PipelineOptions,
) -> Result<Box<dyn Generator>, ExecError> {
    Ok(Box::new(FluxPipeline::new(
        manifest, plan, hardware, options,
    )?))
}

/// The model names of one pipeline, by role.
#[derive(Debug, Clone)]
struct Roles {
    diffusion: String,
    clip: String,
    t5: String,
    vae: String,
}

/// Identifies one encoded prompt: the encoders, T5's length, the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CondKey {
    clip: String,
    t5: String,
    t5_len: usize,
    prompt: String,
}

type TaskId = (usize, u32);

fn task_id(t: &ImageTask) -> TaskId {
    (t.job.index, t.image.index)
}

struct FluxPipeline {
    cx: Ctx,
    roles: BTreeMap<String, Roles>,
    /// Diffusion model → variant, from its header.
    variants: HashMap<String, FluxVariant>,
    /// Tasks handed to `prepare` and not yet run.
    remaining: HashMap<TaskId, ImageTask>,
    conds: HashMap<CondKey, Result<Arc<Conditioning>, JobError>>,
    /// Remaining tasks per prompt (for the encode-time share and release).
    users: HashMap<CondKey, usize>,
    flux: HashMap<String, FluxModel>,
    vaes: HashMap<String, VaeModel>,
    clips: HashMap<String, ClipModel>,
    t5s: HashMap<String, T5Model>,
    hasher: hashes::FileHasher,
}

/// Drops the loaded models of `loaded` that no job in `needed` uses, with a note for each.
fn release_unneeded<V>(
    loaded: &mut HashMap<String, V>,
    needed: &HashSet<String>,
    events: &mut dyn FnMut(Event),
) {
    let mut gone: Vec<String> = loaded
        .keys()
        .filter(|k| !needed.contains(*k))
        .cloned()
        .collect();
    gone.sort();
    for k in gone {
        loaded.remove(&k);
        events(Event::Note {
            message: format!("model `{k}` released: no remaining job needs it"),
        });
    }
}

fn load_err(msg: String) -> ExecError {
    ExecError::Load(msg)
}

impl FluxPipeline {
    fn new(
        manifest: Arc<Manifest>,
        plan: Arc<Plan>,
        hardware: Arc<Hardware>,
        options: PipelineOptions,
    ) -> Result<Self, ExecError> {
        let mut roles = BTreeMap::new();
        for (name, p) in &manifest.pipelines {
            if !manifest.jobs.iter().any(|j| &j.pipeline == name) {
                continue;
            }
            let family = |m: &str| manifest.models.get(m).map(|m| m.family);
            let want = |m: &str, f: Family, role: &str| -> Result<(), ExecError> {
                match family(m) {
                    Some(got) if got == f => Ok(()),
                    Some(got) => Err(load_err(format!(
                        "pipeline `{name}`: {role} `{m}` is a {got} model; this version runs FLUX pipelines ({role}: {f})"
                    ))),
                    None => Err(load_err(format!("pipeline `{name}`: no model `{m}`"))),
                }
            };
            want(&p.diffusion, Family::Flux, "diffusion")?;
            want(&p.vae, Family::FluxVae, "vae")?;
            let pick = |f: Family| -> Result<String, ExecError> {
                let found: Vec<&String> = p
                    .text_encoders
                    .iter()
                    .filter(|e| family(e) == Some(f))
                    .collect();
                match found.as_slice() {
                    [one] => Ok((*one).clone()),
                    _ => Err(load_err(format!(
                        "pipeline `{name}`: FLUX needs exactly one {f} text encoder, `text_encoders` has {}",
                        found.len()
                    ))),
                }
            };
            let r = Roles {
                diffusion: p.diffusion.clone(),
                clip: pick(Family::ClipL)?,
                t5: pick(Family::T5)?,
                vae: p.vae.clone(),
            };
            if p.text_encoders.len() != 2 {
                return Err(load_err(format!(
                    "pipeline `{name}`: FLUX takes one clip-l and one t5 text encoder, `text_encoders` has {}",
                    p.text_encoders.len()
                )));
            }
            roles.insert(name.clone(), r);
        }
        let cx = Ctx::new(manifest, plan, hardware, options);
        let hasher = hashes::FileHasher::new(cx.options.hashes, &cx.cache_dir);
        Ok(FluxPipeline {
            cx,
            roles,
            variants: HashMap::new(),
            remaining: HashMap::new(),
            conds: HashMap::new(),
            users: HashMap::new(),
            flux: HashMap::new(),
            vaes: HashMap::new(),
            clips: HashMap::new(),
            t5s: HashMap::new(),
            hasher,
        })
    }

    fn roles(&self, pipeline: &str) -> Result<Roles, ExecError> {
        self.roles.get(pipeline).cloned().ok_or_else(|| {
            ExecError::Other(format!(
                "pipeline `{pipeline}` has no jobs in the manifest (a bug in the queue)"
            ))
        })
    }

    fn variant(&mut self, diffusion: &str) -> Result<FluxVariant, ExecError> {
        if let Some(v) = self.variants.get(diffusion) {
            return Ok(*v);
        }
        let model = self.cx.model(diffusion)?.clone();
        let (_, v) = models::flux_config(&model)?;
        self.variants.insert(diffusion.to_string(), v);
        Ok(v)
    }

    fn cond_key(&mut self, task: &ImageTask) -> Result<CondKey, ExecError> {
        let r = self.roles(&task.job.pipeline)?;
        let t5_len = match self.variant(&r.diffusion)? {
            FluxVariant::Dev => T5Tokenizer::MAX_LEN_DEV,
            FluxVariant::Schnell => T5Tokenizer::MAX_LEN_SCHNELL,
        };
        Ok(CondKey {
            clip: r.clip,
            t5: r.t5,
            t5_len,
            prompt: task.job.prompt.clone(),
        })
    }

    /// The compute dtype conditioning is stored in: the diffusion model's.
    fn cond_dtype(&self, key: &CondKey) -> CDType {
        self.roles
            .values()
            .find(|r| r.clip == key.clip && r.t5 == key.t5)
            .and_then(|r| self.cx.manifest.models.get(&r.diffusion))
            .map(|m| models::candle_dtype(m.dtype))
            .unwrap_or(CDType::F32)
    }

    /// Encodes every prompt of `tasks` not encoded yet, encoder pair by encoder pair.
    fn encode(
        &mut self,
        tasks: &[ImageTask],
        events: &mut dyn FnMut(Event),
    ) -> Result<(), ExecError> {
        // (clip, t5) → (t5_len → prompts), in first-seen order.
        type ByLen = Vec<(usize, Vec<String>)>;
        let mut todo: Vec<((String, String), ByLen)> = Vec::new();
        let mut seen = HashSet::new();
        for t in tasks {
            let key = self.cond_key(t)?;
            if self.conds.contains_key(&key) || !seen.insert(key.clone()) {
                continue;
            }
            let pair = (key.clip.clone(), key.t5.clone());
            let i = match todo.iter().position(|(p, _)| *p == pair) {
                Some(i) => i,
                None => {
                    todo.push((pair, Vec::new()));
                    todo.len() - 1
                }
            };
            let lens = &mut todo[i].1;
            match lens.iter_mut().find(|(l, _)| *l == key.t5_len) {
                Some((_, ps)) => ps.push(key.prompt),
                None => lens.push((key.t5_len, vec![key.prompt])),
            }
        }
        for ((clip_name, t5_name), lens) in todo {
            let mut clip = match self.clips.remove(&clip_name) {
                Some(c) => c,
                None => ClipModel::load(&mut self.cx, &clip_name, events)?,
            };
            let mut t5 = match self.t5s.remove(&t5_name) {
                Some(t) => t,
                None => T5Model::load(&mut self.cx, &t5_name, events)?,
            };
            for (len, prompts) in lens {
                for m in [&clip_name, &t5_name] {
                    events(Event::Stage {
                        model: m.clone(),
                        stage: format!(
                            "encoding {} prompt{}",
                            prompts.len(),
                            if prompts.len() == 1 { "" } else { "s" }
                        ),
                    });
                }
                let key0 = CondKey {
                    clip: clip_name.clone(),
                    t5: t5_name.clone(),
                    t5_len: len,
                    prompt: String::new(),
                };
                let store = self.cond_dtype(&key0);
                let out = encode::encode(&mut clip, &mut t5, &prompts, len, store, events)?;
                for (p, r) in prompts.into_iter().zip(out) {
                    let key = CondKey {
                        prompt: p,
                        ..key0.clone()
                    };
                    self.conds.insert(key, r.map(Arc::new));
                }
            }
            let keep = |name: &str| {
                self.cx.options.keep_text_encoders
                    || self
                        .cx
                        .manifest
                        .models
                        .get(name)
                        .is_some_and(|m| m.keep_loaded)
            };
            if keep(&clip_name) {
                self.clips.insert(clip_name, clip);
            } else {
                drop(clip);
                events(Event::Note {
                    message: format!("text encoder `{clip_name}` released"),
                });
            }
            if keep(&t5_name) {
                self.t5s.insert(t5_name, t5);
            } else {
                drop(t5);
                events(Event::Note {
                    message: format!("text encoder `{t5_name}` released"),
                });
            }
        }
        Ok(())
    }

    /// Releases diffusion models and VAEs no remaining task (nor `keep`) needs.
    fn release_unneeded(&mut self, keep: Option<&Roles>, events: &mut dyn FnMut(Event)) {
        let mut needed_d = HashSet::new();
        let mut needed_v = HashSet::new();
        for t in self.remaining.values() {
            if let Some(r) = self.roles.get(&t.job.pipeline) {
                needed_d.insert(r.diffusion.clone());
                needed_v.insert(r.vae.clone());
            }
        }
        if let Some(r) = keep {
            needed_d.insert(r.diffusion.clone());
            needed_v.insert(r.vae.clone());
        }
        release_unneeded(&mut self.flux, &needed_d, events);
        release_unneeded(&mut self.vaes, &needed_v, events);
    }

    fn ensure_loaded(&mut self, r: &Roles, events: &mut dyn FnMut(Event)) -> Result<(), ExecError> {
        if !self.flux.contains_key(&r.diffusion) {
            let m = FluxModel::load(&mut self.cx, &r.diffusion, events)?;
            self.variants.insert(r.diffusion.clone(), m.variant);
            self.flux.insert(r.diffusion.clone(), m);
        }
        if !self.vaes.contains_key(&r.vae) {
            let v = VaeModel::load(&mut self.cx, &r.vae, events)?;
            self.vaes.insert(r.vae.clone(), v);
        }
        Ok(())
    }

    /// Every file whose hash goes into the records of `tasks`.
    fn files(&self, tasks: &[ImageTask]) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let pipelines: HashSet<&str> = tasks.iter().map(|t| t.job.pipeline.as_str()).collect();
        for p in pipelines {
            if let Some(r) = self.roles.get(p) {
                for m in [&r.diffusion, &r.vae, &r.clip, &r.t5] {
                    if let Some(model) = self.cx.manifest.models.get(m) {
                        out.push(model.file.clone());
                        out.extend(model.loras.iter().map(|l| l.file.clone()));
                    }
                }
            }
        }
        out
    }

    fn record(&mut self, task: &ImageTask, r: &Roles, shift: f64) -> ImageRecord {
        let m = self.cx.manifest.clone();
        let job = &task.job;
        let shown = |p: &std::path::Path| super::load::display_path(p, &m.dir);
        let mut models = Vec::new();
        let mut loras = Vec::new();
        for name in [&r.diffusion, &r.vae, &r.clip, &r.t5] {
            let Some(model) = m.models.get(name) else {
                continue;
            };
            models.push(ModelRecord {
                name: model.name.clone(),
                family: model.family,
                file: shown(&model.file),
                sha256: self.hasher.get(&model.file).map(|h| h.sha256),
            });
            for l in &model.loras {
                let h = self.hasher.get(&l.file);
                loras.push(LoraRecord {
                    name: file_stem(&shown(&l.file)),
                    file: shown(&l.file),
                    strength: l.strength,
                    sha256: h.as_ref().map(|h| h.sha256.clone()),
                    autov3: h.and_then(|h| h.autov3),
                });
            }
        }
        let dev = self.variants.get(&r.diffusion) != Some(&FluxVariant::Schnell);
        ImageRecord {
            format: RECORD_FORMAT,
            mgpu_version: env!("CARGO_PKG_VERSION").to_string(),
            job: job.name.clone(),
            prompt: job.prompt.clone(),
            negative_prompt: None,
            seed: task.image.seed,
            sampler: job.sampler,
            scheduler: job.scheduler,
            steps: job.steps,
            cfg_scale: 1.0,
            guidance: dev.then_some(job.guidance),
            denoise: job.denoise,
            init_image: job.init_image.as_deref().map(shown),
            shift: Some(shift),
            width: job.width,
            height: job.height,
            models,
            loras,
            // The queue stamps the job hash after generation (`exec::queue`).
            job_hash: None,
        }
    }

    /// The largest batch the plan's memory allows for the diffusion model of `pipeline`: the
    /// planned batch plus as many more jobs as the compute device's free memory holds, at the
    /// planner's per-job cost (latents and conditioning; activations are counted once because
    /// jobs run through each block one at a time).
    fn plan_batch(&self, pipeline: &str) -> usize {
        let Some(r) = self.roles.get(pipeline) else {
            return 1;
        };
        let Ok(mp) = self.cx.model_plan(&r.diffusion) else {
            return 1;
        };
        let planned = mp.workload.batch.max(1) as u64;
        let per_job = mp.working_set.latents / planned;
        let free = self
            .cx
            .plan
            .devices
            .iter()
            .find(|d| d.name == mp.compute)
            .and_then(|d| d.free);
        let extra = match (free, per_job) {
            (Some(f), p) if p > 0 => f / p,
            _ => 0,
        };
        (planned + extra).clamp(1, MAX_BATCH as u64) as usize
    }
}

impl Generator for FluxPipeline {
    fn prepare(
        &mut self,
        tasks: &[ImageTask],
        events: &mut dyn FnMut(Event),
    ) -> Result<(), ExecError> {
        for t in tasks {
            self.roles(&t.job.pipeline)?;
            self.remaining.insert(task_id(t), t.clone());
            let key = self.cond_key(t)?;
            *self.users.entry(key).or_default() += 1;
        }
        self.hasher.start(self.files(tasks));
        self.encode(tasks, events)?;
        if let Some(first) = tasks.first() {
            let r = self.roles(&first.job.pipeline)?;
            self.ensure_loaded(&r, events)?;
        }
        for n in self.hasher.take_notes() {
            events(Event::Note { message: n });
        }
        Ok(())
    }

    fn run_batch(
        &mut self,
        batch: &[ImageTask],
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<Result<Rendered, JobError>>, ExecError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let pipeline = first.job.pipeline.clone();
        if let Some(t) = batch.iter().find(|t| t.job.pipeline != pipeline) {
            return Err(ExecError::Other(format!(
                "a batch mixes pipelines `{pipeline}` and `{}` (a bug in the queue)",
                t.job.pipeline
            )));
        }
        let r = self.roles(&pipeline)?;
        // Tasks `prepare` did not see (or whose encoding was released) are encoded now.
        self.encode(batch, events)?;
        self.release_unneeded(Some(&r), events);
        self.ensure_loaded(&r, events)?;
        let mut inputs = Vec::with_capacity(batch.len());
        let mut keys = Vec::with_capacity(batch.len());
        for t in batch {
            let key = self.cond_key(t)?;
            let cond = self.conds.get(&key).cloned().unwrap_or_else(|| {
                Err(JobError::new(
                    "the prompt was not encoded (a bug in the executor)",
                ))
            });
            keys.push(key);
            inputs.push(denoise::TaskIn { task: t, cond });
        }
        let (Some(flux), Some(vae)) = (self.flux.get_mut(&r.diffusion), self.vaes.get_mut(&r.vae))
        else {
            return Err(ExecError::Other(
                "models not loaded (a bug in the executor)".into(),
            ));
        };
        let outs = denoise::run(flux, vae, inputs, events)?;
        let mut results = Vec::with_capacity(batch.len());
        for ((t, key), out) in batch.iter().zip(&keys).zip(outs) {
            let users = self.users.get(key).copied().unwrap_or(1).max(1);
            let encode_share = match self.conds.get(key) {
                Some(Ok(c)) => c.seconds / users as f64,
                _ => 0.0,
            };
            let rendered = match out {
                Err(e) => Err(e),
                Ok(o) => {
                    let record = self.record(t, &r, o.shift);
                    let shape = o.latent.dims().to_vec();
                    match o.latent.flatten_all().and_then(|l| l.to_vec1::<f32>()) {
                        Ok(latent) => Ok(Rendered {
                            rgb: o.rgb,
                            latent,
                            latent_shape: shape,
                            record,
                            seconds: o.seconds + encode_share,
                        }),
                        Err(e) => Err(JobError::new(format!("reading the latent: {e}"))),
                    }
                }
            };
            results.push(rendered);
        }
        // Done: forget the tasks, drop what no remaining task needs.
        for (t, key) in batch.iter().zip(keys) {
            if self.remaining.remove(&task_id(t)).is_some() {
                if let Some(u) = self.users.get_mut(&key) {
                    *u = u.saturating_sub(1);
                    if *u == 0 {
                        self.users.remove(&key);
                        self.conds.remove(&key);
                    }
                }
            }
        }
        self.release_unneeded(None, events);
        for n in self.hasher.take_notes() {
            events(Event::Note { message: n });
        }
        Ok(results)
    }

    fn max_batch(&self, task: &ImageTask) -> usize {
        let plan = self.plan_batch(&task.job.pipeline);
        match task.job.batch {
            Some(b) => (b as usize).clamp(1, plan),
            None => plan,
        }
    }
}
