//! How far an output is from its golden: pixel differences (max abs, PSNR) and latent
//! differences (max abs), and the rule that judges them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The tolerance rule used when the machine fingerprint differs from the recording's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Tolerance {
    /// Smallest accepted PSNR of the RGB8 pixels, dB. 40 dB: differences invisible to the eye
    /// (a few levels on a fraction of the pixels), far above any wrong image (< 20 dB).
    pub min_psnr_db: f64,
    /// Largest accepted |Δ| of any latent value. FLUX latents span about ±4; 1e-3 admits the
    /// last-bit drift of another CPU's f32 kernel order over a short run, not a changed model.
    pub max_latent_abs_diff: f32,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            min_psnr_db: 40.0,
            max_latent_abs_diff: 1e-3,
        }
    }
}

/// Which rule judged a verification.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Rule {
    /// Same fingerprint: pixels and latents must be bit-identical.
    BitExact,
    /// Another machine: within the tolerance.
    Tolerance(Tolerance),
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::BitExact => f.write_str("bit-exact (same machine fingerprint)"),
            Rule::Tolerance(t) => write!(
                f,
                "tolerance (other machine): PSNR ≥ {} dB and latent max |Δ| ≤ {:e}",
                t.min_psnr_db, t.max_latent_abs_diff
            ),
        }
    }
}

/// Pixel differences of two RGB8 images of the same size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelDiff {
    pub max_abs: u8,
    /// Values (channels) that differ.
    pub differing: usize,
    /// `None` when identical (infinite PSNR).
    pub psnr_db: Option<f64>,
}

/// Compares two equally sized RGB8 buffers.
pub fn pixel_diff(a: &[u8], b: &[u8]) -> PixelDiff {
    debug_assert_eq!(a.len(), b.len());
    let mut max_abs = 0u8;
    let mut differing = 0usize;
    let mut sq = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = x.abs_diff(y);
        if d != 0 {
            differing += 1;
            max_abs = max_abs.max(d);
            sq += (d as f64) * (d as f64);
        }
    }
    let psnr_db = (differing > 0).then(|| {
        let mse = sq / a.len().max(1) as f64;
        10.0 * (255.0f64 * 255.0 / mse).log10()
    });
    PixelDiff {
        max_abs,
        differing,
        psnr_db,
    }
}

/// Largest |a − b| over two equally long latents (NaN counts as infinitely far).
pub fn latent_max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            if x.to_bits() == y.to_bits() {
                0.0
            } else {
                let d = (x - y).abs();
                if d.is_nan() {
                    f32::INFINITY
                } else {
                    d
                }
            }
        })
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_numbers() {
        let a = vec![10u8; 300];
        assert_eq!(
            pixel_diff(&a, &a),
            PixelDiff {
                max_abs: 0,
                differing: 0,
                psnr_db: None
            }
        );
        let mut b = a.clone();
        b[0] = 13;
        b[7] = 9;
        let d = pixel_diff(&a, &b);
        assert_eq!((d.max_abs, d.differing), (3, 2));
        // MSE = (9 + 1) / 300; PSNR = 10 log10(255² / MSE).
        let want = 10.0 * (255.0f64 * 255.0 * 300.0 / 10.0).log10();
        assert!((d.psnr_db.unwrap() - want).abs() < 1e-9);
        assert!((want - 62.90).abs() < 0.01, "{want}");
    }

    #[test]
    fn latent_numbers() {
        assert_eq!(latent_max_abs_diff(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(latent_max_abs_diff(&[1.0, 2.0], &[1.5, 1.0]), 1.0);
        assert_eq!(latent_max_abs_diff(&[f32::NAN], &[f32::NAN]), 0.0);
        assert_eq!(latent_max_abs_diff(&[f32::NAN], &[0.0]), f32::INFINITY);
        assert_eq!(
            Rule::Tolerance(Tolerance::default()).to_string(),
            "tolerance (other machine): PSNR ≥ 40 dB and latent max |Δ| ≤ 1e-3"
        );
    }
}
