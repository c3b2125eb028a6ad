//! Dequantisation of GGML block types to f32, bit-exact with llama.cpp's reference
//! dequantiser in Python (`gguf.quants`, gguf-py 0.19.0), which tests/gguf_reference.rs checks
//! against committed fixtures.
//!
//! Bit-exactness is a matter of doing the same f32 operations in the same order: every scale is
//! an f16 widened exactly to f32, sub-block scales are formed first (`d * sc`, `dmin * m`, each
//! rounded to f32), then each value is `scale * q` (rounded) minus or plus the offset (rounded).
//! Rust never fuses a multiply and an add on its own, so plain arithmetic reproduces numpy's
//! element-wise float32 results. Each kernel works on whole blocks with fixed-size inner loops
//! the compiler can vectorise; [`super::super::convert`] splits large tensors across threads.
//!
//! Block layouts are ggml's (`ggml-common.h`); the index arithmetic below mirrors how gguf-py's
//! numpy reshapes lay the values out.

// Index loops mirror ggml's block layouts (value i comes from byte i % 32 of one array and
// bit i / 32 of another); iterator chains would hide that correspondence.
#![allow(clippy::needless_range_loop)]

use half::f16;

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

#[inline(always)]
fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q4_0: `d: f16, qs: [u8; 16]`; value j is the low nibble of `qs[j]` for j < 16, the high
/// nibble of `qs[j-16]` after; `x = d * (q - 8)`.
pub fn q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let d = h(b, 0);
        let qs = &b[2..18];
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            lo[j] = d * ((qs[j] & 0x0F) as i8 - 8) as f32;
            hi[j] = d * ((qs[j] >> 4) as i8 - 8) as f32;
        }
    }
}

/// Q4_1: `d: f16, m: f16, qs: [u8; 16]`; `x = d * q + m`.
pub fn q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
        let d = h(b, 0);
        let m = h(b, 2);
        let qs = &b[4..20];
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            lo[j] = d * (qs[j] & 0x0F) as f32 + m;
            hi[j] = d * (qs[j] >> 4) as f32 + m;
        }
    }
}

/// Q5_0: `d: f16, qh: u32, qs: [u8; 16]`; bit j of `qh` is the fifth bit of value j;
/// `x = d * (q - 16)`.
pub fn q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(32)) {
        let d = h(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q0 = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
            let q1 = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            lo[j] = d * (q0 as i8 - 16) as f32;
            hi[j] = d * (q1 as i8 - 16) as f32;
        }
    }
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs: [u8; 16]`; `x = d * q + m`.
pub fn q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(32)) {
        let d = h(b, 0);
        let m = h(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = &b[8..24];
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q0 = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
            let q1 = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            lo[j] = d * q0 as f32 + m;
            hi[j] = d * q1 as f32 + m;
        }
    }
}

/// Q8_0: `d: f16, qs: [i8; 32]`; `x = q * d`.
pub fn q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = h(b, 0);
        for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
            *yj = (q as i8) as f32 * d;
        }
    }
}

/// Q2_K: `scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16`. Sixteen groups of 16 values;
/// group g has scale `d * (scales[g] & 15)` and min `dmin * (scales[g] >> 4)`. Value
/// `i = 128*half + 32*s + l` is bits `2s..2s+2` of `qs[32*half + l]`; `x = dl * q - ml`.
pub fn q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(84).zip(dst.chunks_exact_mut(QK_K)) {
        let scales = &b[0..16];
        let qs = &b[16..80];
        let d = h(b, 80);
        let dmin = h(b, 82);
        for half in 0..2 {
            let q = &qs[32 * half..32 * half + 32];
            for s in 0..4 {
                let base = 128 * half + 32 * s;
                for sub in 0..2 {
                    let g = base / 16 + sub;
                    let dl = d * (scales[g] & 0x0F) as f32;
                    let ml = dmin * (scales[g] >> 4) as f32;
                    let out = &mut y[base + 16 * sub..base + 16 * sub + 16];
                    let q = &q[16 * sub..16 * sub + 16];
                    for l in 0..16 {
                        out[l] = dl * ((q[l] >> (2 * s)) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

/// Q3_K: `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16`. Sixteen 6-bit signed
/// scales (low 4 bits from `scales[0..8]` nibbles, high 2 bits from `scales[8..12]`) minus 32;
/// value `i` has low bits as in Q2_K and a high bit `(hmask[i % 32] >> (i / 32)) & 1` that,
/// when *clear*, subtracts 4; `x = (d * scale) * q`.
pub fn q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        let hmask = &b[0..32];
        let qs = &b[32..96];
        let sc = &b[96..108];
        let d = h(b, 108);
        let mut dl = [0f32; 16];
        for (k, dlk) in dl.iter_mut().enumerate() {
            let low = if k < 8 { sc[k] & 0x0F } else { sc[k - 8] >> 4 };
            let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
            let scale = ((low | (high << 4)) as i8).wrapping_sub(32);
            *dlk = d * scale as f32;
        }
        for half in 0..2 {
            let q = &qs[32 * half..32 * half + 32];
            for s in 0..4 {
                let base = 128 * half + 32 * s;
                let bit = base / 32;
                for sub in 0..2 {
                    let g = base / 16 + sub;
                    let out = &mut y[base + 16 * sub..base + 16 * sub + 16];
                    for l in 0..16 {
                        let lane = 16 * sub + l;
                        let low = ((q[lane] >> (2 * s)) & 3) as i8;
                        let hbit = ((hmask[lane] >> bit) & 1) ^ 1;
                        out[l] = dl[g] * (low - ((hbit << 2) as i8)) as f32;
                    }
                }
            }
        }
    }
}

/// The 6-bit scales and mins of Q4_K/Q5_K, unpacked from 12 bytes.
#[inline(always)]
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`. Eight groups of 32; group
/// `2c + n` is nibble `n` of `qs[32c..32c+32]`; `x = (d * sc) * q - (dmin * m)`.
pub fn q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        let d = h(b, 0);
        let dmin = h(b, 2);
        let (sc, mn) = scale_min_k4(&b[4..16]);
        let qs = &b[16..144];
        for c in 0..4 {
            let q = &qs[32 * c..32 * c + 32];
            let (d0, m0) = (d * sc[2 * c] as f32, dmin * mn[2 * c] as f32);
            let (d1, m1) = (d * sc[2 * c + 1] as f32, dmin * mn[2 * c + 1] as f32);
            let (lo, hi) = y[64 * c..64 * c + 64].split_at_mut(32);
            for l in 0..32 {
                lo[l] = d0 * (q[l] & 0x0F) as f32 - m0;
                hi[l] = d1 * (q[l] >> 4) as f32 - m1;
            }
        }
    }
}

/// Q5_K: `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`; as Q4_K with a
/// fifth bit `(qh[l] >> group) & 1`.
pub fn q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        let d = h(b, 0);
        let dmin = h(b, 2);
        let (sc, mn) = scale_min_k4(&b[4..16]);
        let qh = &b[16..48];
        let qs = &b[48..176];
        for c in 0..4 {
            let q = &qs[32 * c..32 * c + 32];
            let (g0, g1) = (2 * c, 2 * c + 1);
            let (d0, m0) = (d * sc[g0] as f32, dmin * mn[g0] as f32);
            let (d1, m1) = (d * sc[g1] as f32, dmin * mn[g1] as f32);
            let (lo, hi) = y[64 * c..64 * c + 64].split_at_mut(32);
            for l in 0..32 {
                let q0 = (q[l] & 0x0F) | (((qh[l] >> g0) & 1) << 4);
                let q1 = (q[l] >> 4) | (((qh[l] >> g1) & 1) << 4);
                lo[l] = d0 * q0 as f32 - m0;
                hi[l] = d1 * q1 as f32 - m1;
            }
        }
    }
}

/// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`. Value
/// `i = 128*half + 64*n + k` has low nibble `n` of `ql[64*half + k]` and high bits
/// `(qh[32*half + i%32] >> 2*((i%128)/32)) & 3`; `x = (d * scale[i/16]) * (q - 32)`.
pub fn q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        let ql = &b[0..128];
        let qh = &b[128..192];
        let scales = &b[192..208];
        let d = h(b, 208);
        let mut dd = [0f32; 16];
        for (g, ddg) in dd.iter_mut().enumerate() {
            *ddg = d * (scales[g] as i8) as f32;
        }
        for half in 0..2 {
            let ql = &ql[64 * half..64 * half + 64];
            let qh = &qh[32 * half..32 * half + 32];
            for s in 0..4 {
                // Values 128*half + 32*s .. +32: nibble s/2 of ql[32*(s%2) ..], bits 2s of qh.
                let base = 128 * half + 32 * s;
                let nib = (s / 2) as u32 * 4;
                let lq = &ql[32 * (s % 2)..32 * (s % 2) + 32];
                for sub in 0..2 {
                    let scale = dd[base / 16 + sub];
                    let out = &mut y[base + 16 * sub..base + 16 * sub + 16];
                    for l in 0..16 {
                        let lane = 16 * sub + l;
                        let q = ((lq[lane] >> nib) & 0x0F) | (((qh[lane] >> (2 * s)) & 3) << 4);
                        out[l] = scale * (q as i8 - 32) as f32;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_hand_block() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let mut y = [0f32; 32];
        q8_0(&b, &mut y);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 16.0) * 0.5);
        }
    }

    #[test]
    fn q4_0_nibble_order() {
        let mut b = vec![0u8; 18];
        b[0..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        b[2] = 0xA3; // value 0: low nibble 3, value 16: high nibble 10
        let mut y = [0f32; 32];
        q4_0(&b, &mut y);
        assert_eq!(y[0], 3.0 - 8.0);
        assert_eq!(y[16], 10.0 - 8.0);
        assert_eq!(y[1], -8.0);
    }
}

/// Q8_0 quantisation as llama.cpp's reference `quantize_row_q8_0_ref` defines it: per block of
/// 32, `d = max|x| / 127` stored as f16, `q = round(x / d)` (half away from zero). Used to make
/// quantised test and benchmark weights; `src.len()` must be a multiple of 32.
pub fn quantize_q8_0(src: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / 32 * 34);
    for block in src.chunks(32) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|x| (x * id).round() as i8 as u8));
    }
    out
}

#[cfg(test)]
mod quantize_tests {
    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let q = super::quantize_q8_0(&x);
        assert_eq!(q.len(), 3 * 34);
        let mut y = vec![0f32; 96];
        super::q8_0(&q, &mut y);
        for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let d = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, c) in xs.iter().zip(ys) {
                assert!((a - c).abs() <= d * 0.5 + 1e-3 * d, "block {b}: {a} vs {c}");
            }
        }
        assert!(super::quantize_q8_0(&[0.0; 32]).iter().all(|&b| b == 0));
    }
}
