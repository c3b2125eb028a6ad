//! The resolved update of one canonical tensor: a list of terms (one per LoRA module that
//! touches it), each adding `scale · up · down` (or `scale · diff`) to a row range. Kept as
//! factors, not as a dense matrix, so that [`super::QuantizedLora::OnDequant`] can hold them
//! beside a quantised weight for the price of `(rows + cols) · rank` floats.

use std::ops::Range;
use std::sync::Arc;

use super::math;

/// f32 operations a rank-`rank` term adds per value it patches: the k-sum (`2 · rank`), then
/// the scale and the add.
pub fn term_flops_per_value(rank: usize) -> u64 {
    2 * rank as u64 + 2
}

/// The factors of one term, f32, rows already in canonical order (a diffusers
/// `norm_out.linear` LoRA has its `up` rows swapped in halves at load).
#[derive(Debug, Clone)]
pub enum DeltaKind {
    /// `up`: `rows.len() × rank`, `down`: `rank × cols`, both row-major.
    LowRank {
        rank: usize,
        up: Arc<[f32]>,
        down: Arc<[f32]>,
    },
    /// `diff`: `rows.len() × cols`.
    Full { diff: Arc<[f32]> },
}

/// One LoRA module's contribution to a canonical tensor.
#[derive(Debug, Clone)]
pub struct DeltaTerm {
    /// Index of the LoRA file in the set (manifest order).
    pub file: usize,
    /// The module key as stored in the LoRA file.
    pub module: String,
    /// Rows of the canonical tensor it adds to.
    pub rows: Range<u64>,
    /// `alpha / rank` (`alpha / √rank` for rsLoRA, 1 for full differences), before strength.
    pub factor: f64,
    /// The multiplier applied: `f32(factor · strength)`.
    pub scale: f32,
    pub kind: DeltaKind,
}

impl DeltaTerm {
    /// A term over `rows` of a tensor `cols` values wide with deterministic pseudo-random
    /// factors (xorshift from `seed`, |value| < amp / 2; `rank` 0: a full difference): for the
    /// benchmark's LoRAs and the GPU kernels' checks, not for models.
    pub fn pseudo_random(
        rows: Range<u64>,
        cols: u64,
        rank: usize,
        scale: f32,
        amp: f32,
        seed: u64,
    ) -> DeltaTerm {
        let mut x = seed | 1;
        let mut floats = |n: u64| -> Arc<[f32]> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp
                })
                .collect()
        };
        let n = rows.end - rows.start;
        let kind = if rank == 0 {
            DeltaKind::Full {
                diff: floats(n * cols),
            }
        } else {
            let up = floats(n * rank as u64);
            let down = floats(rank as u64 * cols);
            DeltaKind::LowRank { rank, up, down }
        };
        DeltaTerm {
            file: 0,
            module: format!("pseudo-random-{seed:x}"),
            rows,
            factor: 1.0,
            scale,
            kind,
        }
    }
}

/// All terms patching one canonical tensor (`rows × cols`, cols = product of trailing dims).
#[derive(Debug, Clone)]
pub struct TensorDelta {
    pub name: String,
    pub rows: u64,
    pub cols: u64,
    /// In application order: file order, then module order.
    pub terms: Vec<DeltaTerm>,
}

impl TensorDelta {
    pub(crate) fn check_shape(&self, shape: &[u64]) -> Result<(), String> {
        let rows = shape.first().copied().unwrap_or(1);
        let cols: u64 = shape.iter().skip(1).product();
        if rows != self.rows || cols != self.cols {
            return Err(format!(
                "shape {shape:?} does not match the base layout the LoRAs were loaded for ({} × {})",
                self.rows, self.cols
            ));
        }
        Ok(())
    }

    /// Adds every term to row `i` (`w` holds that row, `acc` is scratch of `cols` values).
    pub(crate) fn apply_row(&self, i: u64, w: &mut [f32], acc: &mut [f32]) {
        for t in &self.terms {
            if !t.rows.contains(&i) {
                continue;
            }
            let li = (i - t.rows.start) as usize;
            match &t.kind {
                DeltaKind::LowRank { rank, up, down } => {
                    math::add_low_rank_row(w, &up[li * rank..(li + 1) * rank], down, t.scale, acc)
                }
                DeltaKind::Full { diff } => {
                    let c = w.len();
                    math::add_full_row(w, &diff[li * c..(li + 1) * c], t.scale)
                }
            }
        }
    }

    /// Adds every term to `w` (the whole tensor, f32, canonical shape), with the arithmetic of
    /// [`math`]: the reference for both bake and apply-at-dequantisation.
    pub fn apply_f32(&self, w: &mut [f32]) -> Result<(), String> {
        use rayon::prelude::*;
        let cols = self.cols as usize;
        if w.len() as u64 != self.rows * self.cols {
            return Err(format!(
                "{} values given, {} × {} expected",
                w.len(),
                self.rows,
                self.cols
            ));
        }
        w.par_chunks_mut(cols.max(1)).enumerate().for_each_init(
            || vec![0f32; cols],
            |acc, (i, row)| self.apply_row(i as u64, row, acc),
        );
        Ok(())
    }

    /// Bytes the factors take in f32 (what apply-at-dequantisation keeps per tensor).
    pub fn factor_bytes(&self) -> u64 {
        self.terms
            .iter()
            .map(|t| match &t.kind {
                DeltaKind::LowRank { up, down, .. } => (up.len() + down.len()) as u64 * 4,
                DeltaKind::Full { diff } => diff.len() as u64 * 4,
            })
            .sum()
    }

    /// Floating-point operations to add the delta to a dequantised weight once:
    /// `2 · rank` per element of each low-rank term's rows (the k-sum), plus 2 (scale, add).
    pub fn flops(&self) -> u64 {
        self.terms
            .iter()
            .map(|t| {
                let n = (t.rows.end - t.rows.start) * self.cols;
                match &t.kind {
                    DeltaKind::LowRank { rank, .. } => n * term_flops_per_value(*rank),
                    DeltaKind::Full { .. } => 2 * n,
                }
            })
            .sum()
    }
}
