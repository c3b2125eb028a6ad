//! Which blocks stream, and from which donor: spread through the execution order.
//!
//! [`select`] picks blocks whose bytes reach a target (at least it, or at most it) and spreads
//! them evenly over the step's *compute time*: by the time the step has done a fraction f of
//! its compute, about f of the streamed bytes have been needed. Each copy then overlaps the
//! compute of the resident blocks before it, and total copy time ≤ total compute is enough to
//! hide it (see `simulate`). DisTorch2 streams the tail of the model instead: the copies of the
//! last blocks can only overlap each other's compute, and the ring's K slots fill up.
//! [`assign_donors`] interleaves donors the same way, so that independent links copy
//! concurrently instead of one after the other.

/// One block the selection may choose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub bytes: u64,
    /// Seconds of compute (its position weight in the step).
    pub weight: f64,
}

/// Whether the selected bytes must reach the target or stay within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Select at least `target` bytes (a fixed quota on the compute device is an upper bound).
    Up,
    /// Select at most `target` bytes (the donors' quotas are upper bounds).
    Down,
}

/// Indices of the chosen blocks, in order; `None` if blocks no larger than `cap` cannot reach
/// the target when rounding up.
pub fn select(
    blocks: &[Candidate],
    target: u64,
    round: Round,
    cap: Option<u64>,
) -> Option<Vec<usize>> {
    let n = blocks.len();
    let eligible = |i: usize| cap.is_none_or(|c| blocks[i].bytes <= c);
    let eligible_bytes: u64 = (0..n)
        .filter(|&i| eligible(i))
        .map(|i| blocks[i].bytes)
        .sum();
    if target == 0 {
        return Some(vec![]);
    }
    if round == Round::Up && eligible_bytes < target {
        return None;
    }
    // Spread over the compute of the blocks that may stream (a cap can exclude a region: then
    // spread evenly within the rest rather than in a burst where it starts).
    let total_w: f64 = (0..n)
        .filter(|&i| eligible(i))
        .map(|i| blocks[i].weight)
        .sum();
    let use_bytes = total_w.is_nan() || total_w <= 0.0;
    let w = |i: usize| match (eligible(i), use_bytes) {
        (false, _) => 0.0,
        (true, true) => blocks[i].bytes as f64,
        (true, false) => blocks[i].weight,
    };
    let total_w = if use_bytes {
        eligible_bytes as f64
    } else {
        total_w
    };
    // Error diffusion in compute time.
    let mut sel = vec![false; n];
    let mut got = 0u64;
    let mut cum = 0.0;
    for i in 0..n {
        cum += w(i);
        let want = target as f64 * cum / total_w;
        if eligible(i) && (got as f64) + blocks[i].bytes as f64 / 2.0 <= want {
            sel[i] = true;
            got += blocks[i].bytes;
        }
    }
    match round {
        Round::Up => {
            while got < target {
                let i = farthest_unselected(&sel, &eligible)?;
                sel[i] = true;
                got += blocks[i].bytes;
            }
            // Drop surplus blocks while the target still holds, from the densest spots.
            while let Some(i) = densest_selected(&sel, |i| got - blocks[i].bytes >= target) {
                sel[i] = false;
                got -= blocks[i].bytes;
            }
        }
        Round::Down => {
            while got > target {
                let Some(i) = densest_selected(&sel, |_| true) else {
                    break;
                };
                sel[i] = false;
                got -= blocks[i].bytes;
            }
            while let Some(i) =
                farthest_unselected(&sel, &|i| eligible(i) && got + blocks[i].bytes <= target)
            {
                sel[i] = true;
                got += blocks[i].bytes;
            }
        }
    }
    Some((0..n).filter(|&i| sel[i]).collect())
}

/// Distance from each position to the nearest selected one (n+1 if none is selected).
fn gaps(sel: &[bool]) -> Vec<usize> {
    let n = sel.len();
    let mut d = vec![n + 1; n];
    let mut last: Option<usize> = None;
    for i in 0..n {
        if sel[i] {
            last = Some(i);
        }
        if let Some(l) = last {
            d[i] = i - l;
        }
    }
    last = None;
    for i in (0..n).rev() {
        if sel[i] {
            last = Some(i);
        }
        if let Some(l) = last {
            d[i] = d[i].min(l - i);
        }
    }
    d
}

/// The unselected allowed block farthest from any selected one (the middle of the longest gap).
fn farthest_unselected(sel: &[bool], allowed: &dyn Fn(usize) -> bool) -> Option<usize> {
    let d = gaps(sel);
    (0..sel.len())
        .filter(|&i| !sel[i] && allowed(i))
        .max_by_key(|&i| (d[i], std::cmp::Reverse(i)))
}

/// The selected allowed block with the closest selected neighbour.
fn densest_selected(sel: &[bool], allowed: impl Fn(usize) -> bool) -> Option<usize> {
    let n = sel.len();
    let near = |i: usize| {
        let left = (0..i).rev().find(|&j| sel[j]).map(|j| i - j);
        let right = (i + 1..n).find(|&j| sel[j]).map(|j| j - i);
        left.into_iter().chain(right).min().unwrap_or(n + 1)
    };
    (0..n)
        .filter(|&i| sel[i] && allowed(i))
        .min_by_key(|&i| (near(i), std::cmp::Reverse(i)))
}

/// Assigns streamed blocks (bytes, in order) to donors with capacities, interleaving donors in
/// proportion to their capacity. A block no donor has room for goes to donor `overflow`.
/// Returns the donor index per block.
pub fn assign_donors(blocks: &[u64], capacity: &[u64], overflow: usize) -> Vec<usize> {
    let total_cap: f64 = capacity.iter().map(|&c| c as f64).sum();
    let mut assigned = vec![0u64; capacity.len()];
    let mut cum = 0.0;
    blocks
        .iter()
        .map(|&b| {
            cum += b as f64;
            let pick = (0..capacity.len())
                .filter(|&d| assigned[d] + b <= capacity[d])
                .max_by(|&x, &y| {
                    let deficit =
                        |d: usize| capacity[d] as f64 / total_cap * cum - assigned[d] as f64;
                    deficit(x).total_cmp(&deficit(y)).then(y.cmp(&x))
                })
                .unwrap_or(overflow);
            assigned[pick] += b;
            pick
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn equal(n: usize) -> Vec<Candidate> {
        vec![
            Candidate {
                bytes: 100,
                weight: 1.0
            };
            n
        ]
    }

    #[test]
    fn spreads_evenly() {
        assert_eq!(
            select(&equal(8), 400, Round::Up, None).unwrap(),
            [0, 2, 4, 6]
        );
        assert_eq!(select(&equal(9), 300, Round::Up, None).unwrap(), [1, 4, 7]);
        assert_eq!(
            select(&equal(8), 0, Round::Up, None).unwrap(),
            Vec::<usize>::new()
        );
        assert_eq!(
            select(&equal(4), 400, Round::Up, None).unwrap(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn rounds_up_or_down_to_whole_blocks() {
        let got = |r| select(&equal(10), 250, r, None).unwrap().len();
        assert_eq!(got(Round::Up), 3);
        assert_eq!(got(Round::Down), 2);
        assert_eq!(select(&equal(3), 1000, Round::Up, None), None);
        assert_eq!(select(&equal(3), 1000, Round::Down, None).unwrap().len(), 3);
    }

    #[test]
    fn spreads_by_compute_not_bytes() {
        // FLUX-like: 4 big blocks then 8 small ones with the same compute each.
        let mut b = vec![
            Candidate {
                bytes: 680,
                weight: 1.0
            };
            4
        ];
        b.extend(vec![
            Candidate {
                bytes: 283,
                weight: 1.0
            };
            8
        ]);
        let s = select(&b, 1500, Round::Up, None).unwrap();
        let bytes: u64 = s.iter().map(|&i| b[i].bytes).sum();
        assert!(bytes >= 1500);
        // Both halves of the step (by compute) stream something.
        assert!(
            s.iter().any(|&i| i < 6) && s.iter().any(|&i| i >= 6),
            "{s:?}"
        );
    }

    #[test]
    fn cap_limits_block_size() {
        let mut b = vec![
            Candidate {
                bytes: 680,
                weight: 1.0
            };
            4
        ];
        b.extend(vec![
            Candidate {
                bytes: 283,
                weight: 1.0
            };
            8
        ]);
        let s = select(&b, 1000, Round::Up, Some(300)).unwrap();
        assert!(s.iter().all(|&i| i >= 4), "{s:?}");
        assert_eq!(select(&b, 3000, Round::Up, Some(300)), None);
    }

    #[test]
    fn donors_interleave_within_capacity() {
        let d = assign_donors(&[100; 6], &[300, 300], 1);
        assert_eq!(d, [0, 1, 0, 1, 0, 1]);
        let d = assign_donors(&[100; 6], &[400, 200], 1);
        assert_eq!(d.iter().filter(|&&x| x == 0).count(), 4);
        // No room anywhere: the overflow donor takes it.
        assert_eq!(assign_donors(&[500], &[100, 100], 1), [1]);
    }
}
