//! GGML block quantisers: f32 values to the stored bytes of Q4_0, Q4_1, Q5_0, Q5_1 and Q4_K,
//! so tests and benchmarks can write GGUF files in those block types
//! ([`super::write::GgufWriter::add_f32`]). Q8_0's quantiser is
//! [`super::dequant::quantize_q8_0`]; [`super::dequant`] reads all of them back.
//!
//! Q4_0, Q4_1, Q5_0 and Q5_1 follow llama.cpp's reference quantisers (`quantize_row_q4_0_ref`,
//! `_q4_1_ref`, `_q5_0_ref`, `_q5_1_ref` in `ggml-quants.c`) operation for operation, so they
//! give the bytes llama.cpp's reference path gives: the scale is computed in f32, its inverse
//! from the f32 (not the f16-rounded) scale, the f16 rounding is to nearest even, and a
//! quantised value is `x * id + offset` truncated toward zero (C's float-to-int conversion).
//! Q4_K is a simple one-pass quantiser, *not* llama.cpp's (whose `make_qkx2_quants` searches
//! for the scale and min of each group); see [`quantize_q4_k`].
//!
//! Every function takes a whole number of blocks (32 values; 256 for Q4_K) and returns the
//! blocks in ggml's layout (`ggml-common.h`). The functions check nothing and never panic: a
//! trailing partial block is ignored, and NaN or infinite values give unspecified (but
//! well-formed) blocks; callers check lengths and finiteness (the writer refuses both).

// Index loops mirror ggml's block layouts (value j and value j + 16 share byte j).
#![allow(clippy::needless_range_loop)]

use half::f16;

use super::dequant::QK_K;

/// Values per Q4_0/Q4_1/Q5_0/Q5_1 block.
const QK: usize = 32;

/// The signature every quantiser here (and [`super::dequant::quantize_q8_0`]) has: whole
/// blocks of f32 values in, the stored blocks out.
pub type Quantizer = fn(&[f32]) -> Vec<u8>;

/// The value with the largest magnitude, signed (the first one if several tie), as
/// llama.cpp's symmetric quantisers find it; 0 for a block of zeros.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Minimum and maximum as llama.cpp's affine quantisers find them.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `1 / d`, or 0 when `d` is zero (either sign).
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Quantises one block of 32 symmetrically to `bits` (4 or 5) bits as `quantize_row_q4_0_ref`
/// and `quantize_row_q5_0_ref` do: `d = max / -2^(bits-1)` where `max` is the signed value of
/// largest magnitude, `q = min(2^bits - 1, (int8)(x / d + 2^(bits-1) + 0.5))`. Returns `d` and
/// the 32 quantised values.
fn symmetric(x: &[f32], bits: u32) -> (f32, [u8; QK]) {
    let half = (1u32 << (bits - 1)) as f32;
    // One constant (8.5, 16.5), added once: `x * id + 8.5f` in C.
    let offset = half + 0.5;
    let top = ((1u32 << bits) - 1) as i8;
    let d = signed_absmax(x) / -half;
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qj, &v) in q.iter_mut().zip(x) {
        // `as i8` truncates toward zero like C's conversion (and saturates where C's is
        // undefined); the values here are in 0..=2^bits.
        *qj = ((v * id + offset) as i8).min(top) as u8;
    }
    (d, q)
}

/// Quantises one block of 32 with a minimum to `bits` (4 or 5) bits as
/// `quantize_row_q4_1_ref` and `quantize_row_q5_1_ref` do: `d = (max - min) / (2^bits - 1)`,
/// `q = min(2^bits - 1, (int8)((x - min) / d + 0.5))`. Returns `d`, `min` and the values.
fn affine(x: &[f32], bits: u32) -> (f32, f32, [u8; QK]) {
    let top = ((1u32 << bits) - 1) as i8;
    let (min, max) = min_max(x);
    let d = (max - min) / top as f32;
    let id = inverse(d);
    let mut q = [0u8; QK];
    for (qj, &v) in q.iter_mut().zip(x) {
        *qj = (((v - min) * id + 0.5) as i8).min(top) as u8;
    }
    (d, min, q)
}

/// The low nibbles of 32 values: value j (j < 16) in the low nibble of byte j, value j + 16 in
/// its high nibble.
fn nibbles(q: &[u8; QK]) -> [u8; QK / 2] {
    let mut qs = [0u8; QK / 2];
    for j in 0..QK / 2 {
        qs[j] = (q[j] & 0x0F) | ((q[j + QK / 2] & 0x0F) << 4);
    }
    qs
}

/// The fifth bits of 32 values: bit j of the `u32` is the fifth bit of value j.
fn fifth_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..QK {
        qh |= u32::from((q[j] >> 4) & 1) << j;
    }
    qh.to_le_bytes()
}

fn put_f16(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Q4_0 as llama.cpp's `quantize_row_q4_0_ref`: per block of 32, `d = max / -8` (`max` the
/// signed value of largest magnitude), `q = min(15, (int8)(x / d + 8.5))`; 18 bytes `d: f16,
/// qs: [u8; 16]`. A block of zeros stores `d = -0.0` and `q = 8`, as llama.cpp's does.
/// `src.len()` must be a multiple of 32 (a trailing partial block is ignored).
pub fn quantize_q4_0(src: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / QK * 18);
    for x in src.chunks_exact(QK) {
        let (d, q) = symmetric(x, 4);
        put_f16(&mut out, d);
        out.extend_from_slice(&nibbles(&q));
    }
    out
}

/// Q4_1 as llama.cpp's `quantize_row_q4_1_ref`: per block of 32, `d = (max - min) / 15`,
/// `q = min(15, (int8)((x - min) / d + 0.5))`; 20 bytes `d: f16, m: f16 (= min), qs: [u8;
/// 16]`. `src.len()` must be a multiple of 32 (a trailing partial block is ignored).
pub fn quantize_q4_1(src: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / QK * 20);
    for x in src.chunks_exact(QK) {
        let (d, min, q) = affine(x, 4);
        put_f16(&mut out, d);
        put_f16(&mut out, min);
        out.extend_from_slice(&nibbles(&q));
    }
    out
}

/// Q5_0 as llama.cpp's `quantize_row_q5_0_ref`: per block of 32, `d = max / -16` (`max` the
/// signed value of largest magnitude), `q = min(31, (int8)(x / d + 16.5))`; 22 bytes `d: f16,
/// qh: u32 (bit j = fifth bit of value j), qs: [u8; 16] (low nibbles)`. `src.len()` must be a
/// multiple of 32 (a trailing partial block is ignored).
pub fn quantize_q5_0(src: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / QK * 22);
    for x in src.chunks_exact(QK) {
        let (d, q) = symmetric(x, 5);
        put_f16(&mut out, d);
        out.extend_from_slice(&fifth_bits(&q));
        out.extend_from_slice(&nibbles(&q));
    }
    out
}

/// Q5_1 as llama.cpp's `quantize_row_q5_1_ref`: per block of 32, `d = (max - min) / 31`,
/// `q = (x - min) / d + 0.5` truncated; 24 bytes `d: f16, m: f16 (= min), qh: u32, qs: [u8;
/// 16]`. llama.cpp does not clamp `q` here (it cannot exceed 31 for finite values); this
/// clamps it to 31 anyway, which changes nothing for them. `src.len()` must be a multiple of 32
/// (a trailing partial block is ignored).
pub fn quantize_q5_1(src: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / QK * 24);
    for x in src.chunks_exact(QK) {
        let (d, min, q) = affine(x, 5);
        put_f16(&mut out, d);
        put_f16(&mut out, min);
        out.extend_from_slice(&fifth_bits(&q));
        out.extend_from_slice(&nibbles(&q));
    }
    out
}

/// `round(v / unit)` clamped to a 6-bit scale, 0 when `unit` is 0.
fn six_bits(v: f32, unit: f32) -> u8 {
    if unit > 0.0 {
        (v / unit).round().clamp(0.0, 63.0) as u8
    } else {
        0
    }
}

/// Packs eight 6-bit scales and mins into Q4_K's 12 bytes (the inverse of dequant's
/// `scale_min_k4`): bytes 0..4 hold scales 0..4 and bytes 4..8 mins 0..4 in their low six
/// bits, with the top two bits of scales (mins) 4..8 in their top two bits; bytes 8..12 hold the
/// low four bits of scales 4..8 (low nibble) and mins 4..8 (high nibble).
fn pack_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = (sc[j] & 0x3F) | ((sc[4 + j] >> 4) << 6);
        s[4 + j] = (mn[j] & 0x3F) | ((mn[4 + j] >> 4) << 6);
        s[8 + j] = (sc[4 + j] & 0x0F) | ((mn[4 + j] & 0x0F) << 4);
    }
    s
}

/// Q4_K by a simple one-pass quantiser (not llama.cpp's `quantize_row_q4_K_ref`, whose
/// `make_qkx2_quants` searches each group's scale and min to minimise a weighted error; the
/// layout is the same, so any GGUF reader reads these blocks). Per super-block of 256 values,
/// for each of its eight groups of 32: `min_g = min(0, min x)`, `scale_g = (max x - min_g) /
/// 15`; then `d = max scale_g / 63` and `dmin = max (-min_g) / 63`, stored as f16, and with
/// those f16-rounded values `sc_g = round(scale_g / d)` and `mn_g = round(-min_g / dmin)`
/// (each clamped to 0..=63, 0 when `d` or `dmin` is 0) and `q = round((x + dmin * mn_g) / (d *
/// sc_g))` clamped to 0..=15 (0 when `d * sc_g` is 0); `round` is half away from zero.
///
/// A value comes back within half its group's step `d * sc_g`, except where the rounding of
/// `sc_g` and `mn_g` leaves it outside the group's range, which costs at most `7.5 * d +
/// dmin / 2`: fine for tests and benchmarks, a little worse than llama.cpp's for real weights.
/// 144 bytes per super-block: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]` (group
/// `2c + n` in nibble `n` of `qs[32c..32c + 32]`). `src.len()` must be a multiple of 256 (a
/// trailing partial super-block is ignored).
pub fn quantize_q4_k(src: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / QK_K * 144);
    for block in src.chunks_exact(QK_K) {
        let mut scale = [0f32; 8];
        let mut neg_min = [0f32; 8];
        for (g, x) in block.chunks_exact(QK).enumerate() {
            let (lo, hi) = min_max(x);
            let min = lo.min(0.0);
            scale[g] = (hi - min) / 15.0;
            neg_min[g] = -min;
        }
        let d = f16::from_f32(scale.iter().fold(0f32, |a, &s| a.max(s)) / 63.0);
        let dmin = f16::from_f32(neg_min.iter().fold(0f32, |a, &m| a.max(m)) / 63.0);
        let (df, dminf) = (d.to_f32(), dmin.to_f32());
        let mut sc = [0u8; 8];
        let mut mn = [0u8; 8];
        for g in 0..8 {
            sc[g] = six_bits(scale[g], df);
            mn[g] = six_bits(neg_min[g], dminf);
        }
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&dmin.to_le_bytes());
        out.extend_from_slice(&pack_scales(&sc, &mn));

        let mut q = [0u8; QK_K];
        for (g, (x, qg)) in block
            .chunks_exact(QK)
            .zip(q.chunks_exact_mut(QK))
            .enumerate()
        {
            // The dequantiser's arithmetic: x = (d * sc) * q - (dmin * mn).
            let step = df * sc[g] as f32;
            let offset = dminf * mn[g] as f32;
            if step == 0.0 {
                continue;
            }
            for (qj, &v) in qg.iter_mut().zip(x) {
                *qj = ((v + offset) / step).round().clamp(0.0, 15.0) as u8;
            }
        }
        // Group 2c in the low nibbles of qs[32c..32c + 32], group 2c + 1 in the high ones.
        for c in 0..4 {
            for l in 0..QK {
                out.push(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::dequant;
    use super::*;

    /// A dequantiser of [`super::super::dequant`]: whole blocks in, f32 values out.
    type Dequantizer = fn(&[u8], &mut [f32]);

    /// Deterministic values with structure: signs, magnitudes varying by block, an all-positive
    /// and an all-negative stretch, and repeated extremes.
    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let base = ((i as f32) * 0.731 + seed).sin() * (1.0 + (i / 32 % 5) as f32);
                match i / 64 % 4 {
                    1 => base.abs() + 0.25,
                    2 => -base.abs() - 3.0,
                    _ => base,
                }
            })
            .collect()
    }

    fn round_trip(q: Quantizer, dq: Dequantizer, x: &[f32]) -> Vec<f32> {
        let mut y = vec![f32::NAN; x.len()];
        dq(&q(x), &mut y);
        y
    }

    fn f16_at(b: &[u8], at: usize) -> f32 {
        f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
    }

    /// f16 rounds to 11 significant bits: relative error at most 2^-11.
    const F16_EPS: f32 = 1.0 / 2048.0;

    #[test]
    fn byte_lengths_are_blocks_times_block_size() {
        let x = values(3 * 256 + 32, 0.5);
        let cases: [(Quantizer, usize, usize); 5] = [
            (quantize_q4_0, 32, 18),
            (quantize_q4_1, 32, 20),
            (quantize_q5_0, 32, 22),
            (quantize_q5_1, 32, 24),
            (quantize_q4_k, 256, 144),
        ];
        for (q, block, size) in cases {
            assert_eq!(q(&x[..3 * 256]).len(), 3 * 256 / block * size, "{size}");
            assert_eq!(q(&[]).len(), 0);
            // A trailing partial block is ignored, not a panic.
            assert_eq!(q(&x).len(), x.len() / block * size, "{size}");
        }
    }

    #[test]
    fn q4_0_and_q5_0_round_trip_within_half_a_step() {
        // |x - x̂| ≤ |d|/2 (d the f32 scale), plus |q - half| ≤ half times d's f16 rounding;
        // a value of the sign opposite to `max` with x/d > half - 1/2 is clamped to the top
        // code and is off by up to one step (x/d - (half - 1)).
        let x = values(512, 0.1);
        for (bits, q, dq, size) in [
            (
                4,
                quantize_q4_0 as Quantizer,
                dequant::q4_0 as Dequantizer,
                18,
            ),
            (5, quantize_q5_0, dequant::q5_0, 22),
        ] {
            let half = (1 << (bits - 1)) as f32;
            let bytes = q(&x);
            let y = round_trip(q, dq, &x);
            for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let d = signed_absmax(xs) / -half;
                assert_eq!(
                    f16_at(&bytes, b * size),
                    f16::from_f32(d).to_f32(),
                    "Q{bits}_0 d"
                );
                for (&v, &w) in xs.iter().zip(ys) {
                    let t = v / d;
                    let bound = d.abs() * ((t - (half - 1.0)).max(0.5) + half * F16_EPS) * 1.0001;
                    assert!(
                        (v - w).abs() <= bound,
                        "Q{bits}_0 block {b}: {v} vs {w} (d {d})"
                    );
                }
            }
        }
    }

    #[test]
    fn q4_1_and_q5_1_round_trip_within_half_a_step() {
        // |x - x̂| ≤ d/2, plus q ≤ 2^bits - 1 times d's f16 rounding, plus min's f16 rounding.
        let x = values(512, 2.0);
        for (bits, q, dq, size) in [
            (
                4,
                quantize_q4_1 as Quantizer,
                dequant::q4_1 as Dequantizer,
                20,
            ),
            (5, quantize_q5_1, dequant::q5_1, 24),
        ] {
            let top = ((1 << bits) - 1) as f32;
            let bytes = q(&x);
            let y = round_trip(q, dq, &x);
            for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let (min, max) = min_max(xs);
                let d = (max - min) / top;
                assert_eq!(
                    f16_at(&bytes, b * size),
                    f16::from_f32(d).to_f32(),
                    "Q{bits}_1 d"
                );
                assert_eq!(
                    f16_at(&bytes, b * size + 2),
                    f16::from_f32(min).to_f32(),
                    "Q{bits}_1 m"
                );
                let bound = (d * (0.5 + top * F16_EPS) + min.abs() * F16_EPS) * 1.0001 + 1e-6;
                for (&v, &w) in xs.iter().zip(ys) {
                    assert!(
                        (v - w).abs() <= bound,
                        "Q{bits}_1 block {b}: {v} vs {w} (d {d})"
                    );
                }
            }
        }
    }

    #[test]
    fn q4_k_round_trips_within_its_bound() {
        let x = values(4 * 256, 0.7);
        let bytes = quantize_q4_k(&x);
        let y = round_trip(quantize_q4_k, dequant::q4_k, &x);
        for (b, (xs, ys)) in x.chunks(256).zip(y.chunks(256)).enumerate() {
            let blk = &bytes[144 * b..144 * b + 144];
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            let groups: Vec<(f32, f32)> = xs
                .chunks(32)
                .map(|g| {
                    let (lo, hi) = min_max(g);
                    (hi - lo.min(0.0), -lo.min(0.0))
                })
                .collect();
            let max_scale = groups.iter().fold(0f32, |a, g| a.max(g.0 / 15.0));
            let max_min = groups.iter().fold(0f32, |a, g| a.max(g.1));
            assert_eq!(d, f16::from_f32(max_scale / 63.0).to_f32(), "block {b}: d");
            assert_eq!(
                dmin,
                f16::from_f32(max_min / 63.0).to_f32(),
                "block {b}: dmin"
            );
            for (g, (gx, gy)) in xs.chunks(32).zip(ys.chunks(32)).enumerate() {
                // Half the group's step, plus what rounding the 6-bit scale and min can leave
                // outside the group's range (15 * d/2 at the top, dmin/2 at the bottom).
                let step = d * (groups[g].0 / 15.0 / d).round().min(63.0);
                let bound = (step / 2.0 + 7.5 * d + dmin / 2.0) * 1.0001 + 1e-6;
                for (&v, &w) in gx.iter().zip(gy) {
                    assert!((v - w).abs() <= bound, "block {b} group {g}: {v} vs {w}");
                }
            }
        }
        // The group with the largest range is quantised with sc = 63: its values come back
        // within about half a step (d * 63 / 2, plus d's f16 rounding).
        let xs = &x[..256];
        let (g, _) = xs
            .chunks(32)
            .map(|g| {
                let (lo, hi) = min_max(g);
                hi - lo.min(0.0)
            })
            .enumerate()
            .fold((0, 0f32), |a, (i, r)| if r > a.1 { (i, r) } else { a });
        let d = f16_at(&bytes, 0);
        let dmin = f16_at(&bytes, 2);
        for (v, w) in xs[32 * g..32 * g + 32].iter().zip(&y[32 * g..32 * g + 32]) {
            assert!(
                (v - w).abs() <= d * 63.0 * (0.5 + 16.0 * F16_EPS) + dmin,
                "{v} vs {w}"
            );
        }
    }

    #[test]
    fn hand_made_blocks_round_trip_exactly() {
        let code = |j: usize, modulus: usize| (j * 7 + 3) % modulus;
        // Q4_0: x = d (q - 8) with d = -max/8 = 0.25 (q = 0 present).
        let x: Vec<f32> = (0..32).map(|j| 0.25 * (code(j, 16) as f32 - 8.0)).collect();
        let b = quantize_q4_0(&x);
        assert_eq!(f16_at(&b, 0), 0.25);
        for j in 0..16 {
            assert_eq!(
                b[2 + j],
                code(j, 16) as u8 | ((code(j + 16, 16) as u8) << 4)
            );
        }
        assert_eq!(round_trip(quantize_q4_0, dequant::q4_0, &x), x);
        // Q5_0: x = d (q - 16), d = 0.5 (q = 0 present).
        let x: Vec<f32> = (0..32).map(|j| 0.5 * (code(j, 32) as f32 - 16.0)).collect();
        let b = quantize_q5_0(&x);
        assert_eq!(f16_at(&b, 0), 0.5);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..32 {
            assert_eq!(
                (qh >> j) & 1,
                (code(j, 32) >> 4) as u32,
                "fifth bit of value {j}"
            );
        }
        assert_eq!(round_trip(quantize_q5_0, dequant::q5_0, &x), x);
        // Q4_1 and Q5_1: x = d q + m with q = 0 and the top code present.
        let x: Vec<f32> = (0..32).map(|j| 0.125 * code(j, 16) as f32 - 3.0).collect();
        let b = quantize_q4_1(&x);
        assert_eq!((f16_at(&b, 0), f16_at(&b, 2)), (0.125, -3.0));
        assert_eq!(round_trip(quantize_q4_1, dequant::q4_1, &x), x);
        let x: Vec<f32> = (0..32).map(|j| 0.0625 * code(j, 32) as f32 + 1.5).collect();
        let b = quantize_q5_1(&x);
        assert_eq!((f16_at(&b, 0), f16_at(&b, 2)), (0.0625, 1.5));
        assert_eq!(
            &b[8..24],
            &nibbles(&std::array::from_fn(|j| code(j, 32) as u8))
        );
        assert_eq!(round_trip(quantize_q5_1, dequant::q5_1, &x), x);
        // Q4_K: x = (d sc_g) q - dmin mn_g with d = 2^-6, dmin = 2^-5, one group with sc = 63
        // and one with mn = 63, every group holding q = 0 and q = 15.
        let sc: [u8; 8] = [63, 1, 17, 40, 5, 33, 62, 9];
        let mn: [u8; 8] = [0, 63, 12, 7, 50, 1, 31, 20];
        let (d, dmin) = (1.0 / 64.0, 1.0 / 32.0);
        let x: Vec<f32> = (0..256)
            .map(|i| {
                let g = i / 32;
                d * sc[g] as f32 * code(i % 32 + g, 16) as f32 - dmin * mn[g] as f32
            })
            .collect();
        let b = quantize_q4_k(&x);
        assert_eq!((f16_at(&b, 0), f16_at(&b, 2)), (d, dmin));
        assert_eq!(&b[4..16], &pack_scales(&sc, &mn));
        for c in 0..4 {
            for l in 0..32 {
                let lo = code(l + 2 * c, 16) as u8;
                let hi = code(l + 2 * c + 1, 16) as u8;
                assert_eq!(b[16 + 32 * c + l], lo | (hi << 4), "qs[{}]", 32 * c + l);
            }
        }
        assert_eq!(round_trip(quantize_q4_k, dequant::q4_k, &x), x);
    }

    #[test]
    fn q4_k_scales_pack_as_the_dequantiser_unpacks() {
        // Every 6-bit value in every slot: the dequantised group scales and mins with d = dmin
        // = 1 and all codes q = 1 give back sc_g - mn_g.
        for k in 0..64usize {
            let sc: [u8; 8] = std::array::from_fn(|g| ((k + 9 * g) % 64) as u8);
            let mn: [u8; 8] = std::array::from_fn(|g| ((k * 5 + 3 * g) % 64) as u8);
            let mut b = vec![0u8; 144];
            b[0..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
            b[2..4].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
            b[4..16].copy_from_slice(&pack_scales(&sc, &mn));
            b[16..144].fill(0x11);
            let mut y = [0f32; 256];
            dequant::q4_k(&b, &mut y);
            for (g, ys) in y.chunks(32).enumerate() {
                assert!(
                    ys.iter().all(|&v| v == sc[g] as f32 - mn[g] as f32),
                    "k {k} g {g}"
                );
            }
        }
    }

    #[test]
    fn zeros_give_zeros() {
        let x = [0f32; 512];
        let cases: [(Quantizer, Dequantizer); 5] = [
            (quantize_q4_0, dequant::q4_0),
            (quantize_q4_1, dequant::q4_1),
            (quantize_q5_0, dequant::q5_0),
            (quantize_q5_1, dequant::q5_1),
            (quantize_q4_k, dequant::q4_k),
        ];
        for (i, (q, dq)) in cases.into_iter().enumerate() {
            assert!(round_trip(q, dq, &x).iter().all(|&v| v == 0.0), "case {i}");
        }
        // llama.cpp's symmetric quantisers store d = 0 / -8 = -0.0 and the middle code.
        assert_eq!(
            &quantize_q4_0(&x[..32])[..],
            &[&[0x00, 0x80][..], &[0x88; 16]].concat()[..]
        );
        let q5 = quantize_q5_0(&x[..32]);
        assert_eq!(&q5[..6], &[0x00, 0x80, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(q5[6..].iter().all(|&b| b == 0));
        // The affine ones and Q4_K store all-zero blocks.
        assert!(quantize_q4_1(&x).iter().all(|&b| b == 0));
        assert!(quantize_q5_1(&x).iter().all(|&b| b == 0));
        assert!(quantize_q4_k(&x).iter().all(|&b| b == 0));
    }

    #[test]
    fn constant_and_tiny_blocks_do_not_divide_by_zero() {
        // max == min: d = 0, every q = 0, the value is m.
        let x = [1.5f32; 32];
        assert_eq!(round_trip(quantize_q4_1, dequant::q4_1, &x), x);
        assert_eq!(round_trip(quantize_q5_1, dequant::q5_1, &x), x);
        // A constant positive super-block: min_g = 0, dmin = 0.
        let x = [2.0f32; 256];
        let y = round_trip(quantize_q4_k, dequant::q4_k, &x);
        assert!(y.iter().all(|&v| (v - 2.0).abs() <= 2.0 / 15.0), "{y:?}");
        // Values so small that d rounds to zero in f16: zeros come back, nothing is NaN.
        let x: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 1e-12).collect();
        for (q, dq) in [
            (quantize_q4_0 as Quantizer, dequant::q4_0 as Dequantizer),
            (quantize_q4_1, dequant::q4_1),
            (quantize_q5_0, dequant::q5_0),
            (quantize_q5_1, dequant::q5_1),
            (quantize_q4_k, dequant::q4_k),
        ] {
            let y = round_trip(q, dq, &x);
            assert!(y.iter().all(|v| v.abs() <= 1e-7), "{y:?}");
        }
    }
}
