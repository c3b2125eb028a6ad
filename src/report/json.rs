//! The run report (`mgpu run --report FILE`): per image its status, seconds, output and the
//! SHA-256 of the file; per batch the step times and fetch waits; per model the bytes the plan
//! put on each device next to what the pipeline measured. Field names are stable (bump
//! [`REPORT_FORMAT`] when one changes meaning); docs/executor.md documents each.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::exec::phase::Phase;
use crate::exec::queue::{Outcome, RunEvent, RunReason, Stop, TaskInfo, TaskStatus};
use crate::exec::Event;
use crate::golden::VerifyReport;
use crate::plan::Plan;

/// Version of the report layout.
pub const REPORT_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunReport {
    pub format: u32,
    pub mgpu_version: String,
    pub manifest: PathBuf,
    pub output_root: PathBuf,
    /// `I/N` when sharded.
    pub shard: Option<String>,
    /// UTC, RFC 3339.
    pub started: String,
    /// Wall time of the whole run.
    pub seconds: f64,
    pub status: RunStatus,
    /// Why the run stopped early, when it did.
    pub error: Option<String>,
    pub counts: Counts,
    /// This run's images (this shard's), in manifest order.
    pub tasks: Vec<TaskReport>,
    pub batches: Vec<BatchReport>,
    pub models: Vec<ModelReport>,
    /// `--verify-golden`: the comparison.
    pub golden: Option<VerifyReport>,
    /// Every job of the manifest with the settings that decide its images (what the HTML
    /// report's cards show); absent in reports written before it existed.
    #[serde(default)]
    pub jobs: Vec<JobReport>,
    /// Where the run's time went: seconds and bytes per phase and model, in the order first
    /// seen (docs/executor.md, "Phases"); absent in reports written before it existed.
    #[serde(default)]
    pub phases: Vec<PhaseReport>,
}

/// One phase of one model (or file, for `hash`; `outputs` for `write`), summed over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PhaseReport {
    pub phase: Phase,
    pub model: String,
    /// Wall-clock seconds of the thread doing the work (hashing runs in the background).
    pub seconds: f64,
    /// Bytes the phase moved or produced (0 where bytes mean nothing, e.g. `sample`).
    pub bytes: u64,
}

/// One `[[jobs]]` entry of the manifest, every default applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobReport {
    pub name: String,
    pub pipeline: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    /// 1 for images.
    pub frames: u32,
    /// Videos only.
    pub fps: Option<u32>,
    pub steps: u32,
    pub sampler: String,
    pub scheduler: String,
    pub guidance: f64,
    pub cfg: f64,
    /// The pipeline's models: diffusion model, text encoders, VAE.
    pub models: Vec<JobModel>,
    /// LoRAs of the pipeline's models, in order.
    pub loras: Vec<JobLora>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobModel {
    pub name: String,
    pub family: String,
    pub file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobLora {
    /// The model it patches.
    pub model: String,
    pub file: PathBuf,
    pub strength: f64,
}

/// The [`JobReport`]s of a manifest, in file order.
pub fn job_reports(m: &crate::manifest::Manifest) -> Vec<JobReport> {
    m.jobs
        .iter()
        .map(|j| {
            let names: Vec<&String> = m
                .pipelines
                .get(&j.pipeline)
                .map(|p| {
                    std::iter::once(&p.diffusion)
                        .chain(&p.text_encoders)
                        .chain(std::iter::once(&p.vae))
                        .collect()
                })
                .unwrap_or_default();
            let models: Vec<&crate::manifest::Model> =
                names.iter().filter_map(|n| m.models.get(*n)).collect();
            JobReport {
                name: j.name.clone(),
                pipeline: j.pipeline.clone(),
                prompt: j.prompt.clone(),
                negative_prompt: j.negative_prompt.clone(),
                width: j.width,
                height: j.height,
                frames: j.frames,
                fps: j.fps,
                steps: j.steps,
                sampler: j.sampler.to_string(),
                scheduler: j.scheduler.to_string(),
                guidance: j.guidance,
                cfg: j.cfg,
                models: models
                    .iter()
                    .map(|x| JobModel {
                        name: x.name.clone(),
                        family: x.family.to_string(),
                        file: x.file.clone(),
                    })
                    .collect(),
                loras: models
                    .iter()
                    .flat_map(|x| {
                        x.loras.iter().map(|l| JobLora {
                            model: x.name.clone(),
                            file: l.file.clone(),
                            strength: l.strength,
                        })
                    })
                    .collect(),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every image made or up to date (and golden outputs matched).
    Ok,
    /// Some images failed, or golden outputs did not match.
    Failed,
    /// Ctrl-C.
    Interrupted,
    /// The pipeline could not go on.
    Error,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Counts {
    pub images: usize,
    pub made: usize,
    pub skipped: usize,
    pub failed: usize,
    pub not_run: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Made,
    Skipped,
    Failed,
    NotRun,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskReport {
    pub job: String,
    pub index: u32,
    pub seed: u64,
    pub output: PathBuf,
    /// The job hash (docs/executor.md): what the PNG's `mgpu` record carries.
    pub job_hash: String,
    /// Position in the manifest's expanded image list.
    pub position: usize,
    pub status: TaskState,
    /// Why it was made: `missing`, `forced`, `changed`, `no_hash`.
    pub reason: Option<RunReason>,
    /// The batch (index into `batches`) it ran in.
    pub batch: Option<usize>,
    /// Its share of its batch's time, plus writing.
    pub seconds: Option<f64>,
    /// SHA-256 of the PNG file (made or up to date).
    pub sha256: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BatchReport {
    /// Indices into `tasks`.
    pub tasks: Vec<usize>,
    pub steps: u32,
    pub seconds: f64,
    /// One entry per denoising step.
    pub step_times: Vec<StepReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepReport {
    pub step: u32,
    /// Wall time of the step's engine passes.
    pub seconds: f64,
    /// Time spent waiting for streamed units (not hidden behind compute).
    pub fetch_wait_seconds: f64,
    pub passes: usize,
    pub fetched_units: usize,
    pub fetched_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelReport {
    pub name: String,
    pub compute: Option<String>,
    pub prefetch_slots: Option<u32>,
    /// The plan's predicted seconds per step (diffusion models).
    pub predicted_step_seconds: Option<f64>,
    pub devices: Vec<DeviceBytes>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeviceBytes {
    pub device: String,
    /// The plan's bytes on this device as held there: in the compute dtype on the compute
    /// device (the plan's resident working set), as stored (after load-time conversion) on
    /// donors.
    pub planned_bytes: Option<u64>,
    pub measured_bytes: Option<u64>,
}

/// Builds a [`RunReport`] from a run's events and outcome.
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    manifest: PathBuf,
    output_root: PathBuf,
    shard: Option<String>,
    started: String,
    plan: Option<Plan>,
    tasks: Vec<TaskInfo>,
    batches: Vec<BatchReport>,
    batch_of: BTreeMap<usize, usize>,
    measured: BTreeMap<String, Vec<(String, u64)>>,
    phases: Vec<PhaseReport>,
}

impl ReportBuilder {
    pub fn new(
        manifest: PathBuf,
        output_root: PathBuf,
        shard: Option<String>,
        plan: Option<Plan>,
    ) -> Self {
        ReportBuilder {
            manifest,
            output_root,
            shard,
            started: crate::exec::queue::lock::utc_timestamp(std::time::SystemTime::now()),
            plan,
            tasks: Vec::new(),
            batches: Vec::new(),
            batch_of: BTreeMap::new(),
            measured: BTreeMap::new(),
            phases: Vec::new(),
        }
    }

    /// Takes one event of the run.
    pub fn event(&mut self, e: &RunEvent) {
        match e {
            RunEvent::Planned { tasks, .. } => self.tasks = tasks.clone(),
            RunEvent::Batch { tasks, steps, .. } => {
                for &t in tasks {
                    self.batch_of.insert(t, self.batches.len());
                }
                self.batches.push(BatchReport {
                    tasks: tasks.clone(),
                    steps: *steps,
                    seconds: 0.0,
                    step_times: Vec::new(),
                });
            }
            RunEvent::Exec(Event::Phase {
                model,
                phase,
                seconds,
                bytes,
            }) => match self
                .phases
                .iter_mut()
                .find(|p| p.phase == *phase && &p.model == model)
            {
                Some(p) => {
                    p.seconds += seconds;
                    p.bytes += bytes;
                }
                None => self.phases.push(PhaseReport {
                    phase: *phase,
                    model: model.clone(),
                    seconds: *seconds,
                    bytes: *bytes,
                }),
            },
            RunEvent::Exec(Event::Loaded { model, measured }) => {
                self.measured.insert(model.clone(), measured.clone());
            }
            RunEvent::Exec(Event::Step { step, passes, .. }) => {
                if let Some(b) = self.batches.last_mut() {
                    let s = StepReport {
                        step: *step,
                        seconds: passes.iter().map(|p| p.seconds).sum(),
                        fetch_wait_seconds: passes.iter().map(|p| p.wait_seconds).sum(),
                        passes: passes.len(),
                        fetched_units: passes.iter().map(|p| p.fetched_units).sum(),
                        fetched_bytes: passes.iter().flat_map(|p| &p.link_bytes).sum(),
                    };
                    b.seconds += s.seconds;
                    b.step_times.push(s);
                }
            }
            _ => {}
        }
    }

    /// The report, once the run is over. `seconds`: the run's wall time.
    pub fn finish(
        &self,
        outcome: Option<&Outcome>,
        setup_error: Option<&str>,
        seconds: f64,
        golden: Option<VerifyReport>,
    ) -> RunReport {
        let mut counts = Counts {
            images: self.tasks.len(),
            ..Default::default()
        };
        let tasks: Vec<TaskReport> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let st = outcome.and_then(|o| o.status.get(i));
                let (status, secs, sha, error) = match st {
                    Some(TaskStatus::Done { seconds, sha256 }) => {
                        (TaskState::Made, Some(*seconds), Some(sha256.clone()), None)
                    }
                    Some(TaskStatus::Skipped) => (
                        TaskState::Skipped,
                        None,
                        std::fs::read(&t.output)
                            .ok()
                            .map(|b| crate::exec::queue::sha256_hex(&b)),
                        None,
                    ),
                    Some(TaskStatus::Failed(e)) => (TaskState::Failed, None, None, Some(e.clone())),
                    Some(TaskStatus::NotRun) | None => (TaskState::NotRun, None, None, None),
                };
                match status {
                    TaskState::Made => counts.made += 1,
                    TaskState::Skipped => counts.skipped += 1,
                    TaskState::Failed => counts.failed += 1,
                    TaskState::NotRun => counts.not_run += 1,
                }
                TaskReport {
                    job: t.job.clone(),
                    index: t.index,
                    seed: t.seed,
                    output: t.output.clone(),
                    job_hash: t.hash.clone(),
                    position: t.position,
                    status,
                    reason: match &t.action {
                        crate::exec::queue::Action::Run(r) => Some(r.clone()),
                        _ => None,
                    },
                    batch: self.batch_of.get(&i).copied(),
                    seconds: secs,
                    sha256: sha,
                    error,
                }
            })
            .collect();
        let stop = outcome.and_then(|o| o.stop.as_ref());
        let golden_failed = golden.as_ref().is_some_and(|g| !g.ok);
        let status = match (stop, setup_error) {
            (_, Some(_)) | (Some(Stop::Error(_)), _) => RunStatus::Error,
            (Some(Stop::Interrupted), _) => RunStatus::Interrupted,
            (None, None) if counts.failed > 0 || golden_failed => RunStatus::Failed,
            (None, None) => RunStatus::Ok,
        };
        let error = setup_error.map(String::from).or_else(|| match stop {
            Some(Stop::Error(e)) => Some(e.to_string()),
            Some(Stop::Interrupted) => Some("interrupted (SIGINT or SIGTERM)".into()),
            None => None,
        });
        RunReport {
            format: REPORT_FORMAT,
            mgpu_version: env!("CARGO_PKG_VERSION").into(),
            manifest: self.manifest.clone(),
            output_root: self.output_root.clone(),
            shard: self.shard.clone(),
            started: self.started.clone(),
            seconds,
            status,
            error,
            counts,
            tasks,
            batches: self.batches.clone(),
            models: self.models(),
            golden,
            jobs: Vec::new(),
            phases: self.phases.clone(),
        }
    }

    /// Per model: planned bytes per device from the plan, measured ones from `Loaded`.
    fn models(&self) -> Vec<ModelReport> {
        let mut out: Vec<ModelReport> = Vec::new();
        if let Some(plan) = &self.plan {
            for m in &plan.models {
                let mut devices: Vec<DeviceBytes> = m
                    .placement
                    .iter()
                    .map(|(d, b)| DeviceBytes {
                        device: d.to_string(),
                        // On the compute device weights are held in the compute dtype.
                        planned_bytes: Some(if *d == m.compute {
                            m.working_set.resident
                        } else {
                            *b
                        }),
                        measured_bytes: None,
                    })
                    .collect();
                fill_measured(&mut devices, self.measured.get(&m.name));
                out.push(ModelReport {
                    name: m.name.clone(),
                    compute: Some(m.compute.to_string()),
                    prefetch_slots: Some(m.prefetch_slots),
                    predicted_step_seconds: (m.family.role() == crate::family::Role::Diffusion)
                        .then_some(m.predicted.step_seconds),
                    devices,
                });
            }
        }
        for (name, measured) in &self.measured {
            if out.iter().any(|m| &m.name == name) {
                continue;
            }
            let mut devices = Vec::new();
            fill_measured(&mut devices, Some(measured));
            out.push(ModelReport {
                name: name.clone(),
                compute: None,
                prefetch_slots: None,
                predicted_step_seconds: None,
                devices,
            });
        }
        out
    }
}

fn fill_measured(devices: &mut Vec<DeviceBytes>, measured: Option<&Vec<(String, u64)>>) {
    for (dev, bytes) in measured.into_iter().flatten() {
        match devices.iter_mut().find(|d| &d.device == dev) {
            Some(d) => d.measured_bytes = Some(*bytes),
            None => devices.push(DeviceBytes {
                device: dev.clone(),
                planned_bytes: None,
                measured_bytes: Some(*bytes),
            }),
        }
    }
}
