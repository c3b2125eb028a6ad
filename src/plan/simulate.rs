//! The streaming pipeline of one step, simulated: what the executor's ring of K slots does.
//!
//! Units run in execution order on the compute stream. A streamed unit is copied into one of K
//! slots on the compute device by the copy queue of its source link (one queue per physical
//! link; queues run concurrently, each in order). The copy of the m-th streamed unit may start
//! when its slot is free, i.e. when the (m−K)-th streamed unit has finished computing; the
//! unit's compute waits for its copy. Steps follow each other, so the first copies of a step
//! overlap the end of the previous one. [`step_seconds`] simulates three steps and returns the
//! last one: the steady state.
//!
//! Between two passes over the units the compute device also does work that is not a unit's
//! (the sampler's update, the inputs and outputs of the blocks, the host's own work): the
//! `gap`. Copies keep running through it, into the slots the last units freed, so a pass over
//! link-bound units is shorter than the step by up to the gap ([`step_seconds_with_gap`]: the
//! step, pass and gap). Measured on the H200 (benches/RESULTS.md, 2026-12-04): 12–17 ms per
//! step at batch 1; fp8 streamed with 8 slots passed in 0.175 s and stepped every 0.218 s.

/// One unit as the simulation sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimUnit {
    /// Seconds of compute per step (all jobs of the batch).
    pub compute: f64,
    /// For a streamed unit: its copy queue and copy seconds.
    pub fetch: Option<(usize, f64)>,
}

/// Steady-state seconds of one step with `slots` slots (≥ 1 when any unit is streamed), with
/// no work between passes.
pub fn step_seconds(units: &[SimUnit], slots: u32) -> f64 {
    step_seconds_with_gap(units, slots, 0.0)
}

/// Steady-state seconds of one step: a pass over the units, then `gap` seconds of other work
/// during which copies continue (a negative or non-finite gap counts as 0).
pub fn step_seconds_with_gap(units: &[SimUnit], slots: u32, gap: f64) -> f64 {
    let gap = if gap.is_finite() { gap.max(0.0) } else { 0.0 };
    const STEPS: usize = 3;
    let streamed: Vec<usize> = (0..units.len())
        .filter(|&i| units[i].fetch.is_some())
        .collect();
    let compute: f64 = units.iter().map(|u| u.compute).sum();
    if streamed.is_empty() {
        return compute + gap;
    }
    let k = slots.max(1) as usize;
    let queues = units
        .iter()
        .filter_map(|u| u.fetch.map(|f| f.0))
        .max()
        .unwrap_or(0)
        + 1;
    let mut queue_free = vec![0.0f64; queues];
    // Compute end time of each streamed unit, in streamed order across steps.
    let mut done: Vec<f64> = Vec::with_capacity(streamed.len() * STEPS);
    let mut t = 0.0f64;
    let mut step_end = [0.0f64; STEPS];
    // Copies are issued in streamed order as slots free up; a copy waiting for its slot holds
    // up the later copies of its queue (streams are in-order).
    for end in step_end.iter_mut() {
        for u in units {
            let ready = match u.fetch {
                None => 0.0,
                Some((q, secs)) => {
                    let m = done.len();
                    let slot_free = if m >= k { done[m - k] } else { 0.0 };
                    let start = queue_free[q].max(slot_free);
                    queue_free[q] = start + secs;
                    start + secs
                }
            };
            t = t.max(ready) + u.compute;
            if u.fetch.is_some() {
                done.push(t);
            }
        }
        t += gap;
        *end = t;
    }
    step_end[STEPS - 1] - step_end[STEPS - 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(c: f64) -> SimUnit {
        SimUnit {
            compute: c,
            fetch: None,
        }
    }
    fn st(c: f64, q: usize, f: f64) -> SimUnit {
        SimUnit {
            compute: c,
            fetch: Some((q, f)),
        }
    }

    #[test]
    fn resident_is_the_sum_of_compute() {
        assert_eq!(step_seconds(&[res(1.0), res(2.0)], 2), 3.0);
    }

    #[test]
    fn all_streamed_reaches_the_floor_with_two_slots() {
        // Copies longer than compute: the link is the bottleneck, 4 × 2 s.
        let u = vec![st(1.0, 0, 2.0); 4];
        assert!((step_seconds(&u, 2) - 8.0).abs() < 1e-9);
        // Copies shorter than compute: compute bound, copies hidden.
        let u = vec![st(2.0, 0, 1.0); 4];
        assert!((step_seconds(&u, 2) - 8.0).abs() < 1e-9);
    }

    #[test]
    fn one_slot_serialises_copy_and_compute() {
        let u = vec![st(1.0, 0, 1.0); 4];
        assert!((step_seconds(&u, 1) - 8.0).abs() < 1e-9);
        assert!((step_seconds(&u, 2) - 4.0).abs() < 1e-9);
    }

    #[test]
    fn independent_links_run_concurrently() {
        let one = vec![st(0.5, 0, 1.0); 4];
        let two: Vec<SimUnit> = (0..4).map(|i| st(0.5, i % 2, 1.0)).collect();
        assert!((step_seconds(&one, 4) - 4.0).abs() < 1e-9);
        assert!((step_seconds(&two, 4) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn copies_continue_through_the_gap_between_passes() {
        // Link-bound: 4 × 2 s of copies a step. With 1 s of other work between passes the
        // step stays 8 s (the link never rests) and the pass takes 7 s of it; compute-bound
        // units do not gain; the gap never makes a pass shorter than its compute.
        let pass = |u: &[SimUnit], gap: f64| step_seconds_with_gap(u, 2, gap) - gap.max(0.0);
        let u = vec![st(1.0, 0, 2.0); 4];
        assert!((pass(&u, 0.0) - 8.0).abs() < 1e-9);
        assert!((pass(&u, 1.0) - 7.0).abs() < 1e-9);
        // A long gap: the first two units (two slots) arrive before the pass; the third is
        // copied while the first computes (ready at 3), the fourth after it (ready at 5).
        assert!((pass(&u, 10.0) - 6.0).abs() < 1e-9);
        let c = vec![st(2.0, 0, 1.0); 4];
        assert!((pass(&c, 1.0) - 8.0).abs() < 1e-9);
        assert!((pass(&[res(1.0)], 0.5) - 1.0).abs() < 1e-9);
        assert_eq!(step_seconds_with_gap(&u, 2, f64::NAN), step_seconds(&u, 2));
    }

    #[test]
    fn interleaving_beats_tail_first() {
        // 8 units of 1 s compute; 4 are streamed with 1.5 s copies (6 s of copies, 8 s of
        // compute: hideable). Tail-first leaves the last four to wait on the link.
        let tail: Vec<SimUnit> = (0..8)
            .map(|i| if i >= 4 { st(1.0, 0, 1.5) } else { res(1.0) })
            .collect();
        let spread: Vec<SimUnit> = (0..8)
            .map(|i| {
                if i % 2 == 1 {
                    st(1.0, 0, 1.5)
                } else {
                    res(1.0)
                }
            })
            .collect();
        let (t, s) = (step_seconds(&tail, 2), step_seconds(&spread, 2));
        assert!((s - 8.0).abs() < 1e-9, "{s}");
        assert!(t > s + 0.5, "tail {t} spread {s}");
    }
}
