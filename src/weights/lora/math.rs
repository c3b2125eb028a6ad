//! The arithmetic of patching, defined to the last bit so that every machine, thread count and
//! placement produces the same bytes, and so that a Python reference can reproduce it exactly
//! (`tools/make_lora_fixtures.py` does, with element-wise torch ops):
//!
//! ```text
//! for each patched element (i, j), all in f32, each operation rounded (never fused):
//!   acc ← W[i, j]                                  (decoded exactly; scaled fp8: fp8 · scale)
//!   for each term t, in manifest order (file order, then module order):
//!     d ← up[i, 0] · down[0, j]
//!     d ← d + up[i, k] · down[k, j]   for k = 1 … rank-1, in order
//!     acc ← acc + d · scale_t          scale_t = f32(strength_t · alpha_t / rank_t)
//!   (a full-difference term contributes acc ← acc + diff[i, j] · f32(strength_t))
//!   W'[i, j] ← round_to_nearest_even(acc) in the stored dtype   (scaled fp8: of acc / scale)
//! ```
//!
//! The k-sum runs in a fixed order, so it is not a BLAS call (whose blocking and FMA use vary
//! by CPU); it vectorises across `j`, which leaves each element's order unchanged.

#[cfg(test)]
use half::bf16;
use half::f16;

use crate::weights::DType;

/// f32 → fp8 e4m3fn: largest finite value, and the magnitude from which values are clamped
/// (values below it round to a finite value by round-to-nearest-even).
const E4M3_MAX: f32 = 448.0;
const E4M3_CLAMP: f32 = 464.0;
const E5M2_MAX: f32 = 57344.0;
const E5M2_CLAMP: f32 = 61440.0;

/// The dtypes [`decode`]/[`encode`] handle: the stored float types of safetensors weights.
pub fn patchable(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32 | DType::F16 | DType::BF16 | DType::F8_E4M3 | DType::F8_E5M2
    )
}

/// Decodes `bytes` (little-endian, `dtype`) into `out`, multiplying by `scale` when given
/// (ComfyUI scaled fp8: the product is rounded to f32 once). Exact for every dtype without a
/// scale. Panics if the lengths disagree or the dtype is not [`patchable`] (callers check).
pub fn decode(dtype: DType, bytes: &[u8], scale: Option<f32>, out: &mut [f32]) {
    let w = dtype.block().1 as usize;
    assert_eq!(bytes.len(), out.len() * w, "decode: length mismatch");
    match scale {
        None => decode_with(dtype, bytes, out, |v| v),
        Some(s) => decode_with(dtype, bytes, out, |v| v * s),
    }
}

#[inline(always)]
fn decode_with(dtype: DType, bytes: &[u8], out: &mut [f32], f: impl Fn(f32) -> f32) {
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f(f16::from_le_bytes([b[0], b[1]]).to_f32());
            }
        }
        DType::BF16 => {
            // bf16 is the top half of an f32: exact.
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f(f32::from_bits(
                    u32::from(u16::from_le_bytes([b[0], b[1]])) << 16,
                ));
            }
        }
        DType::F8_E4M3 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f(float8::F8E4M3::from_bits(b).to_f32());
            }
        }
        DType::F8_E5M2 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f(float8::F8E5M2::from_bits(b).to_f32());
            }
        }
        other => panic!("decode: {other} is not a patchable dtype"),
    }
}

/// f32 → bf16 bits, round to nearest, ties to even (NaN stays NaN, quiet).
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((x >> 16) | 0x40) as u16;
    }
    ((x + 0x7FFF + ((x >> 16) & 1)) >> 16) as u16
}

/// Rounds `vals` to `dtype` (round to nearest, ties to even) into `out`, dividing by `scale`
/// first when given. Returns how many values did not fit: fp8 values beyond the largest finite
/// number are clamped to it (fp8 e4m3fn has no infinity; ComfyUI clamps too), f16/bf16 values
/// overflow to ±∞. Panics on length mismatch or a dtype that is not [`patchable`].
pub fn encode(dtype: DType, vals: &[f32], scale: Option<f32>, out: &mut [u8]) -> u64 {
    let w = dtype.block().1 as usize;
    assert_eq!(out.len(), vals.len() * w, "encode: length mismatch");
    match scale {
        None => encode_with(dtype, vals, out, |v| v),
        Some(s) => encode_with(dtype, vals, out, |v| v / s),
    }
}

#[inline(always)]
fn encode_with(dtype: DType, vals: &[f32], out: &mut [u8], f: impl Fn(f32) -> f32) -> u64 {
    let mut bad = 0u64;
    match dtype {
        DType::F32 => {
            for (o, &v) in out.chunks_exact_mut(4).zip(vals) {
                let v = f(v);
                bad += u64::from(v.is_infinite());
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(vals) {
                let h = f16::from_f32(f(v));
                bad += u64::from(h.is_infinite());
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        DType::BF16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(vals) {
                let h = bf16_bits(f(v));
                bad += u64::from(h & 0x7FFF == 0x7F80);
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        DType::F8_E4M3 | DType::F8_E5M2 => {
            let (max, clamp) = if dtype == DType::F8_E4M3 {
                (E4M3_MAX, E4M3_CLAMP)
            } else {
                (E5M2_MAX, E5M2_CLAMP)
            };
            for (o, &v) in out.iter_mut().zip(vals) {
                let mut x = f(v);
                if x.abs() >= clamp {
                    bad += 1;
                    x = max.copysign(x);
                }
                *o = if dtype == DType::F8_E4M3 {
                    float8::F8E4M3::from_f32(x).to_bits()
                } else {
                    float8::F8E5M2::from_f32(x).to_bits()
                };
            }
        }
        other => panic!("encode: {other} is not a patchable dtype"),
    }
    bad
}

/// Adds `scale · (up_row · down)` to `w` (one row of the weight), with the summation order of
/// the module docs. `up_row` has `rank` values, `down` is `rank × w.len()` row-major; `acc` is
/// scratch of `w.len()` values.
pub(crate) fn add_low_rank_row(
    w: &mut [f32],
    up_row: &[f32],
    down: &[f32],
    scale: f32,
    acc: &mut [f32],
) {
    let cols = w.len();
    debug_assert_eq!(down.len(), up_row.len() * cols);
    debug_assert_eq!(acc.len(), cols);
    let (first, rest) = down.split_at(cols);
    let u0 = up_row[0];
    for (a, &d) in acc.iter_mut().zip(first) {
        *a = u0 * d;
    }
    for (k, drow) in rest.chunks_exact(cols).enumerate() {
        let u = up_row[k + 1];
        axpy(acc, u, drow);
    }
    for (x, &a) in w.iter_mut().zip(acc.iter()) {
        *x += a * scale;
    }
}

/// `acc[j] = acc[j] + u · d[j]`: one multiply and one add, each rounded.
#[inline]
fn axpy(acc: &mut [f32], u: f32, d: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above); the function is the same
            // safe loop compiled with wider vectors (no FMA: the bits do not change).
            unsafe { axpy_avx2(acc, u, d) };
            return;
        }
    }
    axpy_plain(acc, u, d);
}

#[inline(always)]
fn axpy_plain(acc: &mut [f32], u: f32, d: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(d) {
        *a += u * x;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn axpy_avx2(acc: &mut [f32], u: f32, d: &[f32]) {
    axpy_plain(acc, u, d)
}

/// Adds `scale · diff_row` to `w`.
pub(crate) fn add_full_row(w: &mut [f32], diff_row: &[f32], scale: f32) {
    for (x, &d) in w.iter_mut().zip(diff_row) {
        *x += d * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_exact() {
        let vals = [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            1.2345678,
            1e-3,
            -65504.0,
            448.0,
            -0.001953125,
        ];
        for dtype in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::F8_E4M3,
            DType::F8_E5M2,
        ] {
            let w = dtype.block().1 as usize;
            let mut bytes = vec![0u8; vals.len() * w];
            encode(dtype, &vals, None, &mut bytes);
            let mut back = vec![0f32; vals.len()];
            decode(dtype, &bytes, None, &mut back);
            let mut again = vec![0u8; bytes.len()];
            encode(dtype, &back, None, &mut again);
            assert_eq!(
                bytes, again,
                "{dtype}: decode ∘ encode is not the identity on stored values"
            );
        }
    }

    #[test]
    fn bf16_rounding_matches_the_half_crate() {
        let mut x: u32 = 0x9E37_79B9;
        let specials = [
            0u32,
            0x8000_0000,
            0x7F80_0000,
            0xFF80_0000,
            0x7F7F_FFFF,
            0xFF7F_FFFF,
            0x7F7F_8000,
            0x3F80_8000,
            0x3F81_8000,
            0x0000_8000,
            0x0001_7FFF,
            0x7FC0_0001,
            0xFF80_0001,
        ];
        for i in 0..2_000_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let bits = if (i as usize) < specials.len() {
                specials[i as usize]
            } else {
                x
            };
            let v = f32::from_bits(bits);
            let want = bf16::from_f32(v).to_bits();
            let got = bf16_bits(v);
            if v.is_nan() {
                assert!(bf16::from_bits(got).is_nan());
            } else {
                assert_eq!(got, want, "{bits:#010x}");
            }
        }
    }

    #[test]
    fn rounding_is_nearest_even() {
        // bf16 has 8 significant bits: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 → 1 (even).
        let tie = 1.0 + 2f32.powi(-8);
        let above = 1.0 + 2f32.powi(-8) + 2f32.powi(-20);
        let mut b = [0u8; 4];
        encode(DType::BF16, &[tie, above], None, &mut b);
        assert_eq!(bf16::from_le_bytes([b[0], b[1]]).to_f32(), 1.0);
        assert_eq!(
            bf16::from_le_bytes([b[2], b[3]]).to_f32(),
            1.0 + 2f32.powi(-7)
        );
        // e4m3: between 1.0 and 1.125 the tie 1.0625 goes to 1.0; 1.1875 to 1.25.
        let mut f = [0u8; 2];
        encode(DType::F8_E4M3, &[1.0625, 1.1875], None, &mut f);
        assert_eq!(float8::F8E4M3::from_bits(f[0]).to_f32(), 1.0);
        assert_eq!(float8::F8E4M3::from_bits(f[1]).to_f32(), 1.25);
    }

    #[test]
    fn fp8_saturates_and_counts() {
        let mut f = [0u8; 4];
        let n = encode(DType::F8_E4M3, &[450.0, 464.0, -1e6, 10.0], None, &mut f);
        let back: Vec<f32> = f
            .iter()
            .map(|&b| float8::F8E4M3::from_bits(b).to_f32())
            .collect();
        assert_eq!(back, [448.0, 448.0, -448.0, 10.0]);
        assert_eq!(n, 2);
        let n = encode(DType::F8_E5M2, &[61439.0, 61440.0, 0.0, 0.0], None, &mut f);
        let back: Vec<f32> = f
            .iter()
            .map(|&b| float8::F8E5M2::from_bits(b).to_f32())
            .collect();
        assert_eq!(&back[..2], [57344.0, 57344.0]);
        assert_eq!(n, 1);
        let mut h = [0u8; 2];
        assert_eq!(encode(DType::F16, &[1e6], None, &mut h), 1);
    }

    #[test]
    fn scaled_fp8_dequantises_and_requantises_with_the_same_scale() {
        let scale = 0.0123f32;
        let stored = [0x38u8, 0xB8, 0x7E, 0x01];
        let mut w = [0f32; 4];
        decode(DType::F8_E4M3, &stored, Some(scale), &mut w);
        assert_eq!(w[0], 1.0 * scale);
        assert_eq!(w[2], 448.0 * scale);
        let mut back = [0u8; 4];
        assert_eq!(encode(DType::F8_E4M3, &w, Some(scale), &mut back), 0);
        assert_eq!(back, stored);
    }

    #[test]
    fn low_rank_row_sums_in_order() {
        // Values chosen so that a different summation order changes the result.
        let up = [1.0f32, 1e8, -1e8];
        let down = [1.0f32; 6];
        let mut w = [0.5f32, 0.25];
        let mut acc = [0f32; 2];
        add_low_rank_row(&mut w, &up, &down, 2.0, &mut acc);
        // ((1·1 + 1e8·1) + -1e8·1) = 0 (the 1 is lost in 1e8), then · 2 + w.
        assert_eq!(w, [0.5, 0.25]);
        let up = [1e8f32, -1e8, 1.0];
        let mut w = [0.5f32, 0.25];
        add_low_rank_row(&mut w, &up, &down, 2.0, &mut acc);
        assert_eq!(w, [2.5, 2.25]);
    }
}
