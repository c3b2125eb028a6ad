//! The pipeline as a [`Generator`], for every family: load → patch → distribute each model
//! per the plan, encode prompts, sample batches in lockstep through the streaming engine,
//! decode. One runner; a family's model code comes in through the traits of
//! [`crate::models::spec`] (adapted in `family`), never as a copy of this module.
//!
//! Stages (docs/executor.md):
//! 1. [`generator`]: checks that every pipeline the manifest's jobs use can run (its diffusion
//!    family's text encoders and VAE, [`Family::companions`]); nothing is loaded yet.
//! 2. [`Generator::prepare`] with every task of the run: starts hashing the model and LoRA
//!    files in the background ([`hashes`]); reads each diffusion model's header for what text
//!    it needs (FLUX: T5 at 512 tokens for dev, 256 for schnell, and CLIP's pooled vector;
//!    Wan: umT5 at 512 tokens, masked); loads the text encoders and encodes every distinct
//!    prompt — and negative prompt of a job with classifier-free guidance — once (`encode`),
//!    keeping the results on the host; releases the text encoders (unless `keep_loaded` or
//!    [`PipelineOptions::keep_text_encoders`]); then loads the first pipeline's diffusion
//!    model and VAE. Loading is [`crate::exec::load`] → [`crate::exec::distribute`] per model
//!    (`models`), and reports [`Event::Loaded`] with the bytes held per device.
//! 3. [`Generator::run_batch`]: loads what the batch's pipeline needs (releasing models no
//!    remaining task needs first), samples the batch (`denoise`) and fills [`Rendered`] with
//!    the record (model and LoRA hashes). Conditioning and models are dropped as soon as no
//!    remaining task needs them.
//!
//! Placement never changes a value: every unit's bytes are fixed at load, whatever its home,
//! and converted to the compute dtype by one function; batches apply each block to each model
//! evaluation in turn. `tests/exec_placements.rs` proves it bit for bit.

mod denoise;
mod encode;
mod experts;
mod family;
pub mod hashes;
mod i2v;
mod models;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::DType as CDType;

use super::{Event, ExecError, Generator, ImageTask, JobError, Rendered};
use crate::family::Family;
use crate::hardware::Hardware;
use crate::manifest::Manifest;
use crate::output::record::file_stem;
use crate::output::{ImageRecord, LoraRecord, ModelRecord, RECORD_FORMAT};
use crate::plan::Plan;

pub use super::distribute::UnitHome;
pub use encode::ENCODE_CHUNK;
pub use hashes::{HashMode, Need};

use encode::{Conditioning, TextModels};
use family::{Codec, Denoiser, Header};
use models::Ctx;

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
    /// `None`: spill files in `OUTPUT_ROOT/.mgpu-cache`, on the disk the outputs go to (not
    /// `/tmp`, which is often RAM: `disk` homes must not silently become memory), and the
    /// file-hash cache in the per-user cache folder ([`hashes::user_cache_dir`]).
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
    Ok(Box::new(Pipeline::new(manifest, plan, hardware, options)?))
}

/// The model names of one pipeline, by role.
#[derive(Debug, Clone)]
struct Roles {
    diffusion: String,
    /// Wan 2.2 A14B's low-noise expert (`diffusion` is then the high-noise one) and the
    /// manifest's `boundary`.
    low_noise: Option<String>,
    boundary: Option<f64>,
    /// The manifest's T5 token count (FLUX), else the model's default.
    max_sequence_length: Option<u32>,
    /// The encoder whose hidden states condition the model (T5, umT5).
    context: String,
    /// The encoder whose pooled vector conditions it (CLIP-L for FLUX), if any.
    pooled: Option<String>,
    vae: String,
}

impl Roles {
    /// Every model, in the order records list them: diffusion, VAE, text encoders.
    fn models(&self) -> Vec<&String> {
        let mut v = vec![&self.diffusion];
        v.extend(self.low_noise.as_ref());
        v.push(&self.vae);
        v.extend(self.pooled.as_ref());
        v.push(&self.context);
        v
    }
}

/// Identifies one encoded prompt: the encoders, how the context encoder runs, the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CondKey {
    context: String,
    tokens: usize,
    masked: bool,
    pooled: Option<String>,
    prompt: String,
}

type TaskId = (usize, u32);

fn task_id(t: &ImageTask) -> TaskId {
    (t.job.index, t.image.index)
}

struct Pipeline {
    cx: Ctx,
    roles: BTreeMap<String, Roles>,
    /// Diffusion model → what its header says.
    headers: HashMap<String, Header>,
    /// Tasks handed to `prepare` and not yet run.
    remaining: HashMap<TaskId, ImageTask>,
    conds: HashMap<CondKey, Result<Arc<Conditioning>, JobError>>,
    /// Remaining tasks per prompt (for the encode-time share and release).
    users: HashMap<CondKey, usize>,
    diffusion: HashMap<String, Box<dyn Denoiser>>,
    /// Each expert's config once loaded (both experts of a pipeline must agree).
    expert_configs: HashMap<String, String>,
    vaes: HashMap<String, Box<dyn Codec>>,
    text: TextModels,
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

/// The roles of pipeline `name`: its diffusion model's companions ([`Family::companions`])
/// found among its text encoders, each exactly once.
fn roles_of(manifest: &Manifest, name: &str) -> Result<Roles, ExecError> {
    let p = manifest
        .pipelines
        .get(name)
        .ok_or_else(|| load_err(format!("no pipeline `{name}`")))?;
    let family = |m: &str| manifest.models.get(m).map(|m| m.family);
    let df = family(&p.diffusion)
        .ok_or_else(|| load_err(format!("pipeline `{name}`: no model `{}`", p.diffusion)))?;
    let Some((text_families, vae_family)) = df.companions() else {
        return Err(load_err(format!(
            "pipeline `{name}`: diffusion `{}` is a {df} model, which this version cannot run",
            p.diffusion
        )));
    };
    match family(&p.vae) {
        Some(got) if got == vae_family => {}
        Some(got) => {
            return Err(load_err(format!(
                "pipeline `{name}`: vae `{}` is a {got} model; {df} needs a {vae_family} VAE",
                p.vae
            )))
        }
        None => return Err(load_err(format!("pipeline `{name}`: no model `{}`", p.vae))),
    }
    let mut context = None;
    let mut pooled = None;
    for f in text_families {
        let found: Vec<&String> = p
            .text_encoders
            .iter()
            .filter(|e| family(e) == Some(*f))
            .collect();
        let [one] = found.as_slice() else {
            return Err(load_err(format!(
                "pipeline `{name}`: {} needs exactly one {f} text encoder, `text_encoders` has {}",
                df.label(),
                found.len()
            )));
        };
        if *f == Family::ClipL {
            pooled = Some((*one).clone());
        } else {
            context = Some((*one).clone());
        }
    }
    if p.text_encoders.len() != text_families.len() {
        return Err(load_err(format!(
            "pipeline `{name}`: {} takes {} text encoder{} ({}), `text_encoders` has {}",
            df.label(),
            text_families.len(),
            if text_families.len() == 1 { "" } else { "s" },
            text_families
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(" and "),
            p.text_encoders.len()
        )));
    }
    let context = context.ok_or_else(|| {
        load_err(format!(
            "pipeline `{name}`: {df} has no context text encoder (a bug in the family table)"
        ))
    })?;
    if let Some(low) = &p.low_noise {
        let (Some(h), Some(l)) = (manifest.models.get(&p.diffusion), manifest.models.get(low))
        else {
            return Err(load_err(format!("pipeline `{name}`: no model `{low}`")));
        };
        if h.compute != l.compute {
            return Err(load_err(format!(
                "pipeline `{name}`: the experts compute on different devices (`{}` on {}, `{low}` on {}); give both the same `compute`",
                p.diffusion, h.compute, l.compute
            )));
        }
    }
    Ok(Roles {
        diffusion: p.diffusion.clone(),
        low_noise: p.low_noise.clone(),
        boundary: p.boundary,
        max_sequence_length: p.max_sequence_length,
        context,
        pooled,
        vae: p.vae.clone(),
    })
}

impl Pipeline {
    fn new(
        manifest: Arc<Manifest>,
        plan: Arc<Plan>,
        hardware: Arc<Hardware>,
        options: PipelineOptions,
    ) -> Result<Self, ExecError> {
        let mut roles = BTreeMap::new();
        for name in manifest.pipelines.keys() {
            if manifest.jobs.iter().any(|j| &j.pipeline == name) {
                roles.insert(name.clone(), roles_of(&manifest, name)?);
            }
        }
        let cx = Ctx::new(manifest, plan, hardware, options);
        // The hash cache is per user (shards and new output folders reuse it); an explicit
        // cache folder (tests, benchmarks) keeps it there instead.
        let hash_dir = match &cx.options.cache_dir {
            Some(d) => d.clone(),
            None => hashes::user_cache_dir(|k| std::env::var(k).ok())
                .unwrap_or_else(|| cx.cache_dir.clone()),
        };
        let hasher = hashes::FileHasher::new(cx.options.hashes, &hash_dir);
        Ok(Pipeline {
            cx,
            roles,
            headers: HashMap::new(),
            remaining: HashMap::new(),
            conds: HashMap::new(),
            users: HashMap::new(),
            diffusion: HashMap::new(),
            expert_configs: HashMap::new(),
            vaes: HashMap::new(),
            text: TextModels::default(),
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

    /// What diffusion model `name`'s header says (read once).
    fn header(&mut self, name: &str) -> Result<Header, ExecError> {
        if let Some(h) = self.headers.get(name) {
            return Ok(h.clone());
        }
        let h = family::header(self.cx.model(name)?)?;
        self.headers.insert(name.to_string(), h.clone());
        Ok(h)
    }

    /// The prompts a task needs encoded: its prompt, and its negative prompt when it uses
    /// classifier-free guidance.
    fn cond_keys(&mut self, task: &ImageTask) -> Result<Vec<CondKey>, ExecError> {
        let r = self.roles(&task.job.pipeline)?;
        let h = self.header(&r.diffusion)?;
        let key = |prompt: &str| CondKey {
            context: r.context.clone(),
            tokens: r
                .max_sequence_length
                .map_or(h.text.context_tokens, |n| n as usize),
            masked: h.text.masked,
            pooled: r.pooled.clone(),
            prompt: prompt.to_string(),
        };
        let mut keys = vec![key(&task.job.prompt)];
        if task.job.true_cfg() {
            keys.push(key(task.job.negative_prompt.as_deref().unwrap_or("")));
        }
        Ok(keys)
    }

    /// The compute dtype conditioning is stored in: the diffusion model's.
    fn cond_dtype(&self, key: &CondKey) -> CDType {
        self.roles
            .values()
            .find(|r| r.context == key.context && r.pooled == key.pooled)
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
        let mut todo: Vec<CondKey> = Vec::new();
        let mut seen = HashSet::new();
        for t in tasks {
            for key in self.cond_keys(t)? {
                if !self.conds.contains_key(&key) && seen.insert(key.clone()) {
                    todo.push(key);
                }
            }
        }
        // (context, pooled) → ((tokens, masked) → prompts), in first-seen order.
        type ByRun = Vec<((usize, bool), Vec<String>)>;
        let mut groups: Vec<((String, Option<String>), ByRun)> = Vec::new();
        for key in todo {
            let pair = (key.context.clone(), key.pooled.clone());
            let i = match groups.iter().position(|(p, _)| *p == pair) {
                Some(i) => i,
                None => {
                    groups.push((pair, Vec::new()));
                    groups.len() - 1
                }
            };
            let runs = &mut groups[i].1;
            let run = (key.tokens, key.masked);
            match runs.iter_mut().find(|(r, _)| *r == run) {
                Some((_, ps)) => ps.push(key.prompt),
                None => runs.push((run, vec![key.prompt])),
            }
        }
        for ((context, pooled), runs) in groups {
            for ((tokens, masked), prompts) in runs {
                let key0 = CondKey {
                    context: context.clone(),
                    tokens,
                    masked,
                    pooled: pooled.clone(),
                    prompt: String::new(),
                };
                let store = self.cond_dtype(&key0);
                let out = self.text.encode(
                    &mut self.cx,
                    &context,
                    pooled.as_deref(),
                    &prompts,
                    (tokens, masked),
                    store,
                    events,
                )?;
                for (p, r) in prompts.into_iter().zip(out) {
                    let key = CondKey {
                        prompt: p,
                        ..key0.clone()
                    };
                    self.conds.insert(key, r.map(Arc::new));
                }
            }
            let keep_all = self.cx.options.keep_text_encoders;
            let manifest = self.cx.manifest.clone();
            let keep =
                |name: &str| keep_all || manifest.models.get(name).is_some_and(|m| m.keep_loaded);
            for name in pooled.iter().chain(std::iter::once(&context)) {
                if !keep(name) && self.text.release(name) {
                    events(Event::Note {
                        message: format!("text encoder `{name}` released"),
                    });
                }
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
                needed_d.extend(r.low_noise.clone());
                needed_v.insert(r.vae.clone());
            }
        }
        if let Some(r) = keep {
            needed_d.insert(r.diffusion.clone());
            needed_d.extend(r.low_noise.clone());
            needed_v.insert(r.vae.clone());
        }
        release_unneeded(&mut self.diffusion, &needed_d, events);
        release_unneeded(&mut self.vaes, &needed_v, events);
    }

    fn ensure_loaded(&mut self, r: &Roles, events: &mut dyn FnMut(Event)) -> Result<(), ExecError> {
        // Of two experts, one is loaded here (the other when the sampler reaches it).
        let one_loaded = r
            .low_noise
            .as_ref()
            .is_some_and(|l| self.diffusion.contains_key(l));
        if !self.diffusion.contains_key(&r.diffusion) && !one_loaded {
            let m = family::load_diffusion(&mut self.cx, &r.diffusion, events)?;
            self.headers.insert(r.diffusion.clone(), m.header());
            self.diffusion.insert(r.diffusion.clone(), m);
        }
        if !self.vaes.contains_key(&r.vae) {
            let dit = self.header(&r.diffusion)?.latent_channels;
            family::check_vae_pairing(self.cx.model(&r.diffusion)?, dit, self.cx.model(&r.vae)?)?;
            let v = family::load_vae(&mut self.cx, &r.vae, events)?;
            self.vaes.insert(r.vae.clone(), v);
        }
        Ok(())
    }

    /// The diffusion models of `r` (one, or the high- and low-noise experts), the experts'
    /// boundary (the manifest's, else the weights' default) and whether the plan keeps both
    /// loaded.
    fn experts_of(&mut self, r: &Roles) -> Result<(Vec<String>, f64, bool), ExecError> {
        let Some(low) = &r.low_noise else {
            return Ok((vec![r.diffusion.clone()], 0.0, true));
        };
        let boundary = match r.boundary {
            Some(b) => b,
            None => self.header(&r.diffusion)?.boundary.ok_or_else(|| {
                load_err(format!(
                    "model `{}` has no default expert boundary: give the pipeline a `boundary`",
                    r.diffusion
                ))
            })?,
        };
        let switch = self
            .cx
            .plan
            .switches
            .iter()
            .find(|s| s.high == r.diffusion && &s.low == low)
            .ok_or_else(|| {
                load_err(format!(
                    "the plan has no expert switch `{}` → `{low}`: plan the same manifest that runs",
                    r.diffusion
                ))
            })?;
        Ok((
            vec![r.diffusion.clone(), low.clone()],
            boundary,
            switch.resident_both,
        ))
    }

    /// Every file whose hash goes into the records of `tasks`.
    fn files(&self, tasks: &[ImageTask]) -> Vec<(PathBuf, Need)> {
        let mut out = Vec::new();
        let pipelines: HashSet<&str> = tasks.iter().map(|t| t.job.pipeline.as_str()).collect();
        for p in pipelines {
            if let Some(r) = self.roles.get(p) {
                for m in r.models() {
                    if let Some(model) = self.cx.manifest.models.get(m) {
                        out.push((model.file.clone(), Need::Whole));
                        out.extend(
                            model
                                .loras
                                .iter()
                                .map(|l| (l.file.clone(), Need::WholeAndData)),
                        );
                    }
                }
            }
        }
        out
    }

    fn record(
        &mut self,
        task: &ImageTask,
        r: &Roles,
        shift: f64,
        guidance: Option<f64>,
        boundary: Option<f64>,
    ) -> ImageRecord {
        let m = self.cx.manifest.clone();
        let job = &task.job;
        let shown = |p: &std::path::Path| super::load::display_path(p, &m.dir);
        let mut models = Vec::new();
        let mut loras = Vec::new();
        for name in r.models() {
            let Some(model) = m.models.get(name) else {
                continue;
            };
            models.push(ModelRecord {
                name: model.name.clone(),
                family: model.family,
                file: shown(&model.file),
                sha256: self.hasher.get(&model.file, Need::Whole).map(|h| h.sha256),
            });
            for l in &model.loras {
                let h = self.hasher.get(&l.file, Need::WholeAndData);
                loras.push(LoraRecord {
                    name: file_stem(&shown(&l.file)),
                    file: shown(&l.file),
                    strength: l.strength,
                    sha256: h.as_ref().map(|h| h.sha256.clone()),
                    autov3: h.and_then(|h| h.autov3),
                });
            }
        }
        ImageRecord {
            format: RECORD_FORMAT,
            mgpu_version: env!("CARGO_PKG_VERSION").to_string(),
            job: job.name.clone(),
            prompt: job.prompt.clone(),
            negative_prompt: job
                .true_cfg()
                .then(|| job.negative_prompt.clone().unwrap_or_default()),
            seed: task.image.seed,
            sampler: job.sampler,
            scheduler: job.scheduler,
            steps: job.steps,
            cfg_scale: job.cfg,
            cfg_scale_low_noise: job.cfg_low_noise,
            expert_boundary: boundary,
            guidance,
            denoise: job.denoise,
            init_image: job.init_image.as_deref().map(shown),
            // Small files, read once per image: the record names exactly the bytes used.
            init_image_sha256: job
                .init_image
                .as_deref()
                .and_then(|p| std::fs::read(p).ok())
                .map(|b| super::queue::hash::sha256_hex(&b)),
            shift: Some(shift),
            width: job.width,
            height: job.height,
            frames: job.is_video().then_some(job.frames),
            fps: job.fps,
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

impl Generator for Pipeline {
    fn prepare(
        &mut self,
        tasks: &[ImageTask],
        events: &mut dyn FnMut(Event),
    ) -> Result<(), ExecError> {
        for t in tasks {
            self.roles(&t.job.pipeline)?;
            self.remaining.insert(task_id(t), t.clone());
            for key in self.cond_keys(t)? {
                *self.users.entry(key).or_default() += 1;
            }
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
        let missing = || {
            Err(JobError::new(
                "the prompt was not encoded (a bug in the executor)",
            ))
        };
        for t in batch {
            let k = self.cond_keys(t)?;
            let cond = self.conds.get(&k[0]).cloned().unwrap_or_else(missing);
            let uncond = k
                .get(1)
                .map(|n| self.conds.get(n).cloned().unwrap_or_else(missing));
            keys.push(k);
            inputs.push(denoise::TaskIn {
                task: t,
                cond,
                uncond,
            });
        }
        let (names, boundary, together) = self.experts_of(&r)?;
        let expert_boundary = (names.len() == 2).then_some(boundary);
        let Some(vae) = self.vaes.get_mut(&r.vae) else {
            return Err(ExecError::Other(
                "models not loaded (a bug in the executor)".into(),
            ));
        };
        let mut dits = experts::Experts::new(
            &mut self.cx,
            &mut self.diffusion,
            &mut self.expert_configs,
            names,
            boundary,
            together,
        );
        let outs = denoise::run(&mut dits, vae.as_mut(), inputs, events)?;
        let mut results = Vec::with_capacity(batch.len());
        for ((t, ks), out) in batch.iter().zip(&keys).zip(outs) {
            let encode_share: f64 = ks
                .iter()
                .map(|key| {
                    let users = self.users.get(key).copied().unwrap_or(1).max(1);
                    match self.conds.get(key) {
                        Some(Ok(c)) => c.seconds / users as f64,
                        _ => 0.0,
                    }
                })
                .sum();
            let rendered = match out {
                Err(e) => Err(e),
                Ok(o) => {
                    let record = self.record(t, &r, o.shift, o.guidance, expert_boundary);
                    let shape = o.latent.dims().to_vec();
                    match o.latent.flatten_all().and_then(|l| l.to_vec1::<f32>()) {
                        Ok(latent) => Ok(Rendered {
                            frames: o.frames,
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
        for (t, ks) in batch.iter().zip(keys) {
            if self.remaining.remove(&task_id(t)).is_some() {
                for key in ks {
                    if let Some(u) = self.users.get_mut(&key) {
                        *u = u.saturating_sub(1);
                        if *u == 0 {
                            self.users.remove(&key);
                            self.conds.remove(&key);
                        }
                    }
                }
            }
        }
        self.release_unneeded(None, events);
        for n in self.hasher.take_notes() {
            events(Event::Note { message: n });
        }
        for (path, seconds, bytes) in self.hasher.take_timings() {
            events(Event::Phase {
                model: path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into(),
                ),
                phase: crate::exec::phase::Phase::Hash,
                seconds,
                bytes,
            });
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
