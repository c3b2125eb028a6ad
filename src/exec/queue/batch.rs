//! Grouping and batching: images that share a pipeline, size, steps, sampler, scheduler and
//! denoise can step in lockstep through one model, so each streamed unit is fetched once per
//! step for the whole batch. Groups run in the order of their first image; each group is cut
//! into batches of at most the smallest limit of its images (the job's `batch`, else what the
//! generator's plan allows), keeping the images' order.

use crate::exec::ImageTask;
use crate::sample::{Sampler, Scheduler};

/// What images of one batch must share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub pipeline: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub sampler: Sampler,
    pub scheduler: Scheduler,
    /// `f64::to_bits` of the denoise strength.
    pub denoise_bits: u64,
}

impl GroupKey {
    pub fn of(task: &ImageTask) -> Self {
        let j = &task.job;
        GroupKey {
            pipeline: j.pipeline.clone(),
            width: j.width,
            height: j.height,
            steps: j.steps,
            sampler: j.sampler,
            scheduler: j.scheduler,
            denoise_bits: j.denoise.to_bits(),
        }
    }
}

/// Cuts the images `order` (indices into `tasks`) into batches. `limit(task)` is the largest
/// batch that image may be in (at least 1 is used).
pub fn batches(
    tasks: &[ImageTask],
    order: &[usize],
    mut limit: impl FnMut(&ImageTask) -> usize,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<(GroupKey, Vec<usize>)> = Vec::new();
    for &i in order {
        let key = GroupKey::of(&tasks[i]);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    let mut out = Vec::new();
    for (_, members) in groups {
        let mut current: Vec<usize> = Vec::new();
        let mut cap = usize::MAX;
        for i in members {
            let l = limit(&tasks[i]).max(1);
            if !current.is_empty() && (current.len() >= cap.min(l)) {
                out.push(std::mem::take(&mut current));
                cap = usize::MAX;
            }
            cap = cap.min(l);
            current.push(i);
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}
