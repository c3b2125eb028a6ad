//! The batched job queue: the half of the executor that knows about output files and nothing
//! about models. It drives a [`Generator`] (the pipeline) and writes what it makes.
//!
//! Stages (docs/executor.md, "Queue, resume and locking"):
//! 1. [`TaskHasher::new`]: fingerprint the files that decide pixels ([`hash`]);
//! 2. [`Queue::new`] (with the output root's [`RunLock`] held): [`expand`] the jobs into
//!    [`ImageTask`]s, keep this [`Shard`]'s, decide per image ([`Action`]): make it, skip it
//!    (its PNG carries the same job hash), or refuse (a file mgpu did not write is in the
//!    way); remove temporary files of killed runs;
//! 3. [`Queue::run`]: [`Generator::prepare`] once with every image to make, then
//!    [`Generator::run_batch`] per batch ([`batch`]: grouped by pipeline and shape, cut by the
//!    job's `batch` or [`Generator::max_batch`]); each image is written atomically with its
//!    job hash as soon as its batch returns. A failing image fails alone; an [`ExecError`] or
//!    Ctrl-C stops the run after what was written.
//!
//! Progress goes out as [`RunEvent`]s to an [`Observer`] ([`crate::report`] renders them and
//! builds the JSON run report; [`crate::golden`] checks rendered images).

pub mod batch;
pub mod fake;
pub mod hash;
pub mod lock;
pub mod select;
pub mod shard;

#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::{Event, ExecError, Generator, ImageTask, Rendered};
use crate::manifest::Manifest;
use crate::output::{encode_png, write_atomic, write_video, Fps};

pub use batch::{batches, GroupKey};
pub use hash::{sha256_hex, FileFingerprint, HashError, TaskHasher, TaskKey};
pub use lock::{LockError, LockInfo, RunLock, Takeover};
pub use select::{expand, remove_stale_temp_files, select, Action, RunReason, Selected};
pub use shard::{Shard, ShardArg, ShardError};

/// One image of the run, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    pub job: String,
    /// Index within the job.
    pub index: u32,
    pub seed: u64,
    pub output: PathBuf,
    pub hash: String,
    /// Position in the manifest's expanded image list (decides the shard).
    pub position: usize,
    #[serde(flatten)]
    pub action: Action,
}

/// Progress of a run, as the queue sees it. Task numbers index the run's list
/// ([`Queue::selected`], this shard's images in manifest order).
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// The run's images and what happens to each; `batches` will run.
    Planned {
        tasks: Vec<TaskInfo>,
        batches: usize,
        removed_temp: Vec<PathBuf>,
        temp_errors: Vec<String>,
    },
    /// Batch `batch` (from 0) of `batches` starts with these tasks.
    Batch {
        batch: usize,
        batches: usize,
        tasks: Vec<usize>,
        steps: u32,
    },
    /// What the generator reports (loading, steps, notes). Its own `Event::BatchStarted` is
    /// dropped: the queue announces batches with the run's task numbers.
    Exec(Event),
    /// An image was written.
    Written {
        task: usize,
        path: PathBuf,
        seconds: f64,
        sha256: String,
    },
    /// An image failed; the run goes on.
    Failed { task: usize, error: String },
    /// The run stops before its end (Ctrl-C, or the generator cannot go on).
    Stopping { reason: String },
}

/// Receives the run's progress.
pub trait Observer {
    fn event(&mut self, event: &RunEvent);
    /// Every image made, after it was written to `output` (golden checks read its pixels and
    /// latent here).
    fn rendered(&mut self, _task: &ImageTask, _rendered: &Rendered, _output: &Path) {}
}

/// An observer that ignores everything.
impl Observer for () {
    fn event(&mut self, _: &RunEvent) {}
}

/// How one image ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskStatus {
    /// Written; `seconds` as the generator measured its share of the batch.
    Done {
        seconds: f64,
        sha256: String,
    },
    /// Up to date already.
    Skipped,
    Failed(String),
    /// Not reached: the run stopped first.
    NotRun,
}

/// Why a run stopped early.
#[derive(Debug)]
pub enum Stop {
    /// Ctrl-C (the stop flag was set).
    Interrupted,
    /// The generator cannot go on.
    Error(ExecError),
}

/// What a run did, per task of [`Queue::selected`].
#[derive(Debug)]
pub struct Outcome {
    pub status: Vec<TaskStatus>,
    pub stop: Option<Stop>,
}

impl Outcome {
    pub fn count(&self, f: impl Fn(&TaskStatus) -> bool) -> usize {
        self.status.iter().filter(|s| f(s)).count()
    }

    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, TaskStatus::Failed(_)))
    }
}

/// The images of one run (one shard of a manifest) and what to do with each.
#[derive(Debug, Clone)]
pub struct Queue {
    pub selected: Vec<Selected>,
    /// Temporary files of killed runs that were removed, and those that could not be.
    pub removed_temp: Vec<PathBuf>,
    pub temp_errors: Vec<String>,
}

impl Queue {
    /// Expands the manifest's jobs, keeps `shard`'s images, decides what to make (`force`:
    /// everything; pass `--force || settings.overwrite`) and removes stale temporary files.
    /// Call with the output root's [`RunLock`] held.
    pub fn new(m: &Manifest, hasher: &TaskHasher, shard: Option<Shard>, force: bool) -> Self {
        Self::from_tasks(expand(m, hasher), shard, force)
    }

    /// [`Queue::new`] from an already expanded list.
    pub fn from_tasks(tasks: Vec<ImageTask>, shard: Option<Shard>, force: bool) -> Self {
        let selected = select(tasks, shard, force);
        let outputs: Vec<&Path> = selected
            .iter()
            .map(|s| s.task.image.path.as_path())
            .collect();
        let (removed_temp, temp_errors) = remove_stale_temp_files(&outputs);
        Queue {
            selected,
            removed_temp,
            temp_errors,
        }
    }

    /// Run-list indices of the images to make.
    pub fn to_run(&self) -> Vec<usize> {
        self.selected
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.action, Action::Run(_)))
            .map(|(i, _)| i)
            .collect()
    }

    /// What the report shows per task.
    pub fn infos(&self) -> Vec<TaskInfo> {
        self.selected
            .iter()
            .map(|s| TaskInfo {
                job: s.task.job.name.clone(),
                index: s.task.image.index,
                seed: s.task.image.seed,
                output: s.task.image.path.clone(),
                hash: s.task.hash.clone(),
                position: s.position,
                action: s.action.clone(),
            })
            .collect()
    }

    /// Makes the images: `prepare` once, then each batch; writes each image as soon as its
    /// batch returns. `stop` (set by a Ctrl-C handler) is checked before each batch.
    pub fn run(
        &self,
        generator: &mut dyn Generator,
        stop: Option<&AtomicBool>,
        obs: &mut dyn Observer,
    ) -> Outcome {
        let tasks: Vec<ImageTask> = self.selected.iter().map(|s| s.task.clone()).collect();
        let mut status: Vec<TaskStatus> = self
            .selected
            .iter()
            .map(|s| match s.action {
                Action::Skip => TaskStatus::Skipped,
                Action::Refuse(ref why) => TaskStatus::Failed(why.clone()),
                Action::Run(_) => TaskStatus::NotRun,
            })
            .collect();
        let order = self.to_run();
        let cut = batches(&tasks, &order, |t| match t.job.batch {
            Some(b) => b as usize,
            None => generator.max_batch(t),
        });
        obs.event(&RunEvent::Planned {
            tasks: self.infos(),
            batches: cut.len(),
            removed_temp: self.removed_temp.clone(),
            temp_errors: self.temp_errors.clone(),
        });
        for (i, s) in self.selected.iter().enumerate() {
            if let Action::Refuse(why) = &s.action {
                obs.event(&RunEvent::Failed {
                    task: i,
                    error: why.clone(),
                });
            }
        }
        if order.is_empty() {
            return Outcome { status, stop: None };
        }
        let stopped = |stop: Option<&AtomicBool>| stop.is_some_and(|s| s.load(Ordering::SeqCst));
        let finish = |status, stop_reason: Stop, obs: &mut dyn Observer| {
            let reason = match &stop_reason {
                Stop::Interrupted => "interrupted (SIGINT or SIGTERM)".to_string(),
                Stop::Error(e) => e.to_string(),
            };
            obs.event(&RunEvent::Stopping { reason });
            Outcome {
                status,
                stop: Some(stop_reason),
            }
        };

        let to_make: Vec<ImageTask> = order.iter().map(|&i| tasks[i].clone()).collect();
        let prepared = generator.prepare(&to_make, &mut |e| forward(obs, e));
        if let Err(e) = prepared {
            return finish(status, Stop::Error(e), obs);
        }
        if stopped(stop) {
            return finish(status, Stop::Interrupted, obs);
        }
        for (b, members) in cut.iter().enumerate() {
            if stopped(stop) {
                return finish(status, Stop::Interrupted, obs);
            }
            let batch: Vec<ImageTask> = members.iter().map(|&i| tasks[i].clone()).collect();
            obs.event(&RunEvent::Batch {
                batch: b,
                batches: cut.len(),
                tasks: members.clone(),
                steps: batch[0].job.steps,
            });
            let results = match generator.run_batch(&batch, &mut |e| forward(obs, e)) {
                Ok(r) => r,
                Err(e) => return finish(status, Stop::Error(e), obs),
            };
            if results.len() != batch.len() {
                let e = ExecError::Other(format!(
                    "internal error: the generator returned {} results for a batch of {} images",
                    results.len(),
                    batch.len()
                ));
                return finish(status, Stop::Error(e), obs);
            }
            for ((&i, task), result) in members.iter().zip(&batch).zip(results) {
                status[i] = match result.map_err(|e| e.message).and_then(|r| {
                    let started = Instant::now();
                    let sha = write(task, &r)?;
                    let bytes = std::fs::metadata(&task.image.path).map_or(0, |m| m.len());
                    forward(
                        obs,
                        Event::Phase {
                            model: "outputs".into(),
                            phase: crate::exec::phase::Phase::Write,
                            seconds: started.elapsed().as_secs_f64(),
                            bytes,
                        },
                    );
                    obs.rendered(task, &r, &task.image.path);
                    Ok((r.seconds + started.elapsed().as_secs_f64(), sha))
                }) {
                    Ok((seconds, sha256)) => {
                        obs.event(&RunEvent::Written {
                            task: i,
                            path: task.image.path.clone(),
                            seconds,
                            sha256: sha256.clone(),
                        });
                        TaskStatus::Done { seconds, sha256 }
                    }
                    Err(error) => {
                        obs.event(&RunEvent::Failed {
                            task: i,
                            error: error.clone(),
                        });
                        TaskStatus::Failed(error)
                    }
                };
            }
        }
        Outcome { status, stop: None }
    }
}

fn forward(obs: &mut dyn Observer, e: Event) {
    if !matches!(e, Event::BatchStarted { .. }) {
        obs.event(&RunEvent::Exec(e));
    }
}

/// Writes one image (PNG) or video (animated PNG, MP4) with its job hash; returns the SHA-256
/// of the file's bytes.
fn write(task: &ImageTask, r: &Rendered) -> Result<String, String> {
    crate::output::confine(&task.job.output_root, &task.image.path).map_err(|e| e.to_string())?;
    let mut record = r.record.clone();
    record.job_hash = Some(task.hash.clone());
    let (w, h) = r.rgb().dimensions();
    if (w, h) != (task.job.width, task.job.height) {
        return Err(format!(
            "the pipeline made a {w}x{h} image for a {}x{} job",
            task.job.width, task.job.height
        ));
    }
    if let Some(fps) = task.job.fps {
        // A video: an animated PNG or an MP4, written atomically; the report hashes the file.
        if r.frames.len() as u32 != task.job.frames {
            return Err(format!(
                "the pipeline made {} frames for a {}-frame job",
                r.frames.len(),
                task.job.frames
            ));
        }
        let path = &task.image.path;
        let fps = u16::try_from(fps)
            .map_err(|e| e.to_string())
            .and_then(|f| Fps::integer(f).map_err(|e| e.to_string()))?;
        write_video(path, &r.frames, fps, &record).map_err(|e| e.to_string())?;
        let bytes =
            std::fs::read(path).map_err(|e| format!("reading back {}: {e}", path.display()))?;
        return Ok(sha256_hex(&bytes));
    }
    if r.frames.len() != 1 {
        return Err(format!(
            "the pipeline made {} frames for an image job",
            r.frames.len()
        ));
    }
    let bytes = encode_png(r.rgb(), &record).map_err(|e| e.to_string())?;
    write_atomic(&task.image.path, |out| out.write_all(&bytes)).map_err(|e| e.to_string())?;
    Ok(sha256_hex(&bytes))
}
