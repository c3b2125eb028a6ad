//! From a manifest to the images this run makes: expand every job into [`ImageTask`]s (with
//! their hashes), keep this shard's, decide per image whether it is made or skipped, and
//! remove temporary files that killed runs left next to this shard's outputs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Shard, TaskHasher};
use crate::exec::ImageTask;
use crate::manifest::Manifest;
use crate::output::read_output_metadata;

/// Every image of the manifest, in order: jobs as written, each job's images by index. The
/// position in this list decides the shard.
pub fn expand(m: &Manifest, hasher: &TaskHasher) -> Vec<ImageTask> {
    let mut out = Vec::new();
    for job in &m.jobs {
        let job = Arc::new(job.clone());
        for image in job.images() {
            let hash = hasher.hash(&job, &image);
            out.push(ImageTask {
                job: job.clone(),
                image,
                hash,
            });
        }
    }
    out
}

/// Why an image is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunReason {
    /// No file at the output path.
    Missing,
    /// `--force` or `[settings] overwrite = true`.
    Forced,
    /// The file was made by mgpu with other inputs (its job hash differs).
    Changed,
    /// The file was made by mgpu without a job hash (an older version or `mgpu` outside a run).
    NoHash,
}

/// What the run does with one image of its shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "reason")]
pub enum Action {
    Run(RunReason),
    /// The file exists with this image's job hash: nothing to do.
    Skip,
    /// A file that mgpu did not write is in the way (not a PNG, or a PNG without an `mgpu`
    /// record): it is never overwritten without `--force`; the image fails.
    Refuse(String),
}

/// One image of the shard and what happens to it.
#[derive(Debug, Clone)]
pub struct Selected {
    pub task: ImageTask,
    /// Position in the expanded list of the whole manifest.
    pub position: usize,
    pub action: Action,
}

/// Keeps this shard's images (all of them without a shard) and decides, reading each
/// existing output's `mgpu` record, which to make.
pub fn select(tasks: Vec<ImageTask>, shard: Option<Shard>, force: bool) -> Vec<Selected> {
    tasks
        .into_iter()
        .enumerate()
        .filter(|(pos, _)| shard.is_none_or(|s| s.keeps(*pos)))
        .map(|(position, task)| {
            let action = decide(&task, force);
            Selected {
                task,
                position,
                action,
            }
        })
        .collect()
}

fn decide(task: &ImageTask, force: bool) -> Action {
    let path = &task.image.path;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Action::Run(RunReason::Missing)
        }
        Err(e) => {
            return Action::Refuse(format!(
                "cannot look at the existing output {}: {e}",
                path.display()
            ))
        }
        Ok(m) if m.is_dir() => {
            return Action::Refuse(format!(
            "the output path {} is a folder: change the job's `output` template or move the folder",
            path.display()
        ))
        }
        Ok(_) => {}
    }
    // A FIFO, socket or device there (or a link to one) would block or misbehave when read or
    // replaced: refused even with --force (#12 defect 5).
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() {
            return Action::Refuse(format!(
                "the output path {} is not a regular file (a FIFO, socket or device, or a link to one): move it away",
                path.display()
            ));
        }
    }
    if force {
        return Action::Run(RunReason::Forced);
    }
    match read_output_metadata(path) {
        Ok(meta) => match meta.record.map(|r| r.job_hash) {
            Some(Some(h)) if h == task.hash => Action::Skip,
            Some(Some(_)) => Action::Run(RunReason::Changed),
            Some(None) => Action::Run(RunReason::NoHash),
            None => Action::Refuse(format!(
                "{} exists and was not written by mgpu (no `mgpu` record): move it away, or rerun with --force to overwrite it",
                path.display()
            )),
        },
        Err(e) => Action::Refuse(format!(
            "{} exists but is not a readable {} ({e}): move it away, or rerun with --force to overwrite it",
            path.display(),
            if crate::output::needs_ffmpeg(path) {
                "MP4"
            } else {
                "PNG"
            }
        )),
    }
}

/// Removes the temporary files that `output::write_atomic` leaves when a run is killed
/// mid-write (`.NAME.XXXXXX.tmp` next to output `NAME`), for this run's outputs only: another
/// shard may be writing its own right now. Returns the files removed and the ones that could
/// not be (with why).
pub fn remove_stale_temp_files(outputs: &[&Path]) -> (Vec<PathBuf>, Vec<String>) {
    let mut by_dir: std::collections::BTreeMap<&Path, BTreeSet<String>> = Default::default();
    for p in outputs {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            continue;
        };
        by_dir
            .entry(dir)
            .or_default()
            .insert(name.to_string_lossy().into_owned());
    }
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    for (dir, names) in by_dir {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue; // not created yet: nothing to clean
        };
        for e in entries.filter_map(|e| e.ok()) {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(target) = temp_target(&file) else {
                continue;
            };
            if !names.contains(target) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            match std::fs::remove_file(e.path()) {
                Ok(()) => removed.push(e.path()),
                Err(err) => failed.push(format!("{}: {err}", e.path().display())),
            }
        }
    }
    removed.sort();
    (removed, failed)
}

/// The output name a temporary file of `write_atomic` belongs to: `.fox-42.png.a1B2c3.tmp` →
/// `fox-42.png` (the random part has no dot).
fn temp_target(file: &str) -> Option<&str> {
    let inner = file.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (target, random) = inner.rsplit_once('.')?;
    (!target.is_empty() && !random.is_empty() && !random.contains('.')).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names() {
        assert_eq!(temp_target(".fox-42.png.a1B2c3.tmp"), Some("fox-42.png"));
        assert_eq!(temp_target(".a.b.png.XYZ.tmp"), Some("a.b.png"));
        assert_eq!(temp_target("fox-42.png.a1B2c3.tmp"), None);
        assert_eq!(temp_target(".fox.tmp"), None);
        assert_eq!(temp_target(".fox-42.png"), None);
        assert_eq!(temp_target("..x.tmp"), None);
    }

    #[test]
    fn real_write_atomic_temp_names_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fox-42.png");
        // Create one the way write_atomic does (same prefix/suffix), and keep it.
        let tmp = tempfile::Builder::new()
            .prefix(".fox-42.png.")
            .suffix(".tmp")
            .tempfile_in(dir.path())
            .unwrap();
        let (_, kept) = tmp.keep().unwrap();
        let other = dir.path().join(".other.png.abcdef.tmp");
        std::fs::write(&other, b"x").unwrap();
        let (removed, failed) = remove_stale_temp_files(&[&out]);
        assert_eq!(removed, vec![kept.clone()]);
        assert!(failed.is_empty());
        assert!(!kept.exists());
        assert!(
            other.exists(),
            "another output's temporary file is left alone"
        );
    }
}
