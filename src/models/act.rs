//! Activation functions shared by the model families, where mgpu computes them differently
//! from candle's defaults.
//!
//! [`gelu_tanh`]: GELU with the tanh approximation (FLUX's MLPs, T5's gated-GELU, Wan's FFN
//! and embeddings; PyTorch's `gelu(approximate="tanh")`). On the CPU in f32 candle evaluates it
//! per element through libm's scalar `tanhf`, which was ≈ 30 % of the drawing demo's time
//! (benches/RESULTS.md "CPU GELU"). Here it is the same function written as
//! `v · σ(2u)` = `v / (1 + e^(−2u))`, `u = √(2/π)(v + 0.044715 v³)` (`½(1 + tanh u) = σ(2u)`
//! exactly), with an `exp` made of plain IEEE operations (range reduction by `ln 2`, a
//! degree-7 polynomial, the exponent written into the bits): no branches, no libm, so the
//! compiler vectorises the loop, and no fused multiply-adds or CPU-specific library code, so
//! every x86-64 or ARM machine computes the same bits. It differs from `tanhf`'s result by a
//! few units in the last place (the unit tests bound it against an f64 reference), so CPU
//! outputs changed once when it came in (the demo's goldens were re-recorded then).
//!
//! Other dtypes on the CPU (bf16/f16 compute) and every GPU keep candle's `gelu`: the CUDA
//! paths have their own kernels and their own golden files.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// GELU, tanh approximation (see the module doc for how and where it is computed).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&GeluTanhCpu)
    } else {
        x.gelu()
    }
}

/// The f32 CPU GELU as a candle op (inference only: no backward).
struct GeluTanhCpu;

impl CustomOp1 for GeluTanhCpu {
    fn name(&self) -> &'static str {
        "gelu-tanh-cpu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("gelu-tanh-cpu: expected f32, got {:?}", s.dtype())
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("gelu-tanh-cpu: expected a contiguous tensor")
        };
        // a plain map over the slice, which the compiler vectorises
        let out = data[start..end].iter().map(|&v| gelu(v)).collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `√(2/π)`, as candle's and PyTorch's constant.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

/// GELU (tanh approximation) of one value: `v / (1 + e^(−2u))`.
#[inline(always)]
fn gelu(v: f32) -> f32 {
    let u = SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v);
    v / (1.0 + exp(-2.0 * u))
}

/// `e^x` from IEEE operations only: `x = n ln 2 + r` with `|r| ≤ ½ ln 2`, `e^r` by its Taylor
/// polynomial to degree 7 (truncation < 5e-9 relative), `2^n` written into the exponent bits.
/// `x` is clamped to [−87, 88] first (a NaN becomes −87: callers keep their own NaN), so `2^n` stays a normal float: results below `e^−87` or
/// above `e^88` saturate there, which [`gelu`] turns into its exact limits (0 and `v`).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n · LN2_HI` is exact for the |n| ≤ 127 used here (Cody–Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    // max/min rather than clamp: the same for every number, and a NaN (which clamp keeps and
    // this maps to −87) needs no extra handling in the vectorised loop.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n ∈ [−126, 127] after the clamp: a normal power of two. `t`'s bits are those of
    // 1.5 · 2^23 plus n (its unit in the last place is 1), so n + 127 is an integer addition on
    // them: no float-to-int conversion, which keeps the loop vectorisable.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn gelu_f64(v: f64) -> f64 {
        let u = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
        0.5 * v * (1.0 + u.tanh())
    }

    /// Every 1/4096 from −12 to 12, plus the far tails.
    fn samples() -> Vec<f32> {
        let mut v: Vec<f32> = (-49152..=49152).map(|i| i as f32 / 4096.0).collect();
        v.extend([
            -1e30, -1e6, -100.0, -40.0, 40.0, 100.0, 1e6, 1e30, 1e-30, -1e-30, 0.0, -0.0,
        ]);
        v
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_f64() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        // f32's unit in the last place is 2^-23 ≈ 1.19e-7 relative.
        assert!(worst < 3.0 * 1.19e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn gelu_matches_f64_reference() {
        let mut worst = 0f64;
        for v in samples() {
            let got = gelu(v) as f64;
            let want = gelu_f64(v as f64);
            // relative to max(|v|, tiny): the output's scale is the input's
            let err = (got - want).abs() / (v as f64).abs().max(1e-30);
            worst = worst.max(err);
            assert!(got.is_finite(), "gelu({v}) = {got}");
        }
        assert!(
            worst < 4.0 * 1.19e-7,
            "worst error relative to |v|: {worst:e}"
        );
    }

    #[test]
    fn gelu_limits_and_specials() {
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(1e30), 1e30);
        assert_eq!(gelu(50.0), 50.0);
        assert!(gelu(-50.0).abs() < 1e-30);
        assert!(gelu(f32::NAN).is_nan());
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn tensor_op_matches_elementwise_and_takes_strided_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(-300f32, 300.0, &dev)?
            .affine(1.0 / 37.0, 0.0)?
            .reshape((20, 30))?;
        let y = gelu_tanh(&x)?;
        let want: Vec<f32> = x
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(gelu)
            .collect();
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, want);
        // a column slice (not contiguous) gives the same values as its contiguous copy
        let cols = x.narrow(1, 5, 10)?;
        assert!(!cols.is_contiguous());
        let a = gelu_tanh(&cols)?.flatten_all()?.to_vec1::<f32>()?;
        let b = gelu_tanh(&cols.contiguous()?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(a, b);
        // close to candle's libm-based gelu
        let c = cols.gelu()?.flatten_all()?.to_vec1::<f32>()?;
        for (p, q) in a.iter().zip(&c) {
            assert!((p - q).abs() <= 4e-7 * q.abs().max(1.0), "{p} vs {q}");
        }
        Ok(())
    }

    #[test]
    fn other_dtypes_keep_candles_gelu() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(-50f32, 50.0, &dev)?
            .affine(0.1, 0.0)?
            .to_dtype(DType::BF16)?;
        let a = gelu_tanh(&x)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let b = x.gelu()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        assert_eq!(a, b);
        Ok(())
    }
}
