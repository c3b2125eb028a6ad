//! Stored bytes → f32 (and bf16) for every [`DType`]: plain floats widened exactly, integers
//! converted as numpy's `astype(float32)` does, fp8 (E4M3FN, E5M2) through exact lookup tables,
//! GGML blocks through [`super::gguf::dequant`]. Large tensors are split across rayon threads
//! on block boundaries; the result does not depend on the thread count.
//!
//! Callers are [`super::WeightFile::to_f32`] (the one door out of files) and anyone holding
//! validated raw bytes (LoRA patching, benches).

use half::{bf16, f16};
use rayon::prelude::*;

use super::gguf::dequant;
use super::DType;

/// Output values per parallel work item (256 KiB of f32): large enough to amortise scheduling,
/// small enough to balance across threads.
const CHUNK_VALUES: usize = 64 * 1024;
/// Below this many values a tensor is converted on the calling thread.
const PARALLEL_MIN: usize = 1 << 20;

/// Converts `src` (the stored bytes of `dst.len()` values of `dtype`) into f32.
///
/// # Panics
/// If `src.len()` is not the storage size of `dst.len()` values of `dtype`: callers pass byte
/// ranges that a header validation has already matched to the shape.
pub fn to_f32_into(dtype: DType, src: &[u8], dst: &mut [f32]) {
    let (block_vals, block_bytes) = dtype.block();
    let (block_vals, block_bytes) = (block_vals as usize, block_bytes as usize);
    assert!(
        dst.len().is_multiple_of(block_vals) && src.len() == dst.len() / block_vals * block_bytes,
        "{} bytes of {dtype} cannot hold {} values",
        src.len(),
        dst.len()
    );
    if dst.len() < PARALLEL_MIN {
        convert_serial(dtype, src, dst);
        return;
    }
    let blocks_per_chunk = (CHUNK_VALUES / block_vals).max(1);
    src.par_chunks(blocks_per_chunk * block_bytes)
        .zip(dst.par_chunks_mut(blocks_per_chunk * block_vals))
        .for_each(|(s, d)| convert_serial(dtype, s, d));
}

/// [`to_f32_into`] into a new vector.
pub fn to_f32(dtype: DType, src: &[u8], numel: usize) -> Vec<f32> {
    let mut out = vec![0f32; numel];
    to_f32_into(dtype, src, &mut out);
    out
}

/// f32 → bf16, round to nearest even (NaN stays NaN), as candle and PyTorch round.
pub fn f32_to_bf16(src: &[f32]) -> Vec<bf16> {
    if src.len() < PARALLEL_MIN {
        return src.iter().map(|&x| bf16::from_f32(x)).collect();
    }
    let mut out = vec![bf16::ZERO; src.len()];
    out.par_chunks_mut(CHUNK_VALUES)
        .zip(src.par_chunks(CHUNK_VALUES))
        .for_each(|(o, s)| {
            o.iter_mut()
                .zip(s)
                .for_each(|(o, &x)| *o = bf16::from_f32(x))
        });
    out
}

fn convert_serial(dtype: DType, src: &[u8], dst: &mut [f32]) {
    use DType::*;
    match dtype {
        F32 => each::<4>(src, dst, f32::from_le_bytes),
        F16 => f16_slice(src, dst),
        BF16 => each::<2>(src, dst, |b| {
            f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
        }),
        F64 => each::<8>(src, dst, |b| f64::from_le_bytes(b) as f32),
        F8_E4M3 => each::<1>(src, dst, |b| F8_E4M3_TABLE[b[0] as usize]),
        F8_E5M2 => each::<1>(src, dst, |b| F8_E5M2_TABLE[b[0] as usize]),
        Bool => each::<1>(src, dst, |b| if b[0] != 0 { 1.0 } else { 0.0 }),
        U8 => each::<1>(src, dst, |b| b[0] as f32),
        I8 => each::<1>(src, dst, |b| b[0] as i8 as f32),
        I16 => each::<2>(src, dst, |b| i16::from_le_bytes(b) as f32),
        I32 => each::<4>(src, dst, |b| i32::from_le_bytes(b) as f32),
        I64 => each::<8>(src, dst, |b| i64::from_le_bytes(b) as f32),
        Q4_0 => dequant::q4_0(src, dst),
        Q4_1 => dequant::q4_1(src, dst),
        Q5_0 => dequant::q5_0(src, dst),
        Q5_1 => dequant::q5_1(src, dst),
        Q8_0 => dequant::q8_0(src, dst),
        Q2_K => dequant::q2_k(src, dst),
        Q3_K => dequant::q3_k(src, dst),
        Q4_K => dequant::q4_k(src, dst),
        Q5_K => dequant::q5_k(src, dst),
        Q6_K => dequant::q6_k(src, dst),
    }
}

#[inline(always)]
fn each<const N: usize>(src: &[u8], dst: &mut [f32], f: impl Fn([u8; N]) -> f32) {
    for (c, d) in src.chunks_exact(N).zip(dst.iter_mut()) {
        *d = f(c.try_into().expect("chunks_exact yields N bytes"));
    }
}

/// f16 → f32 through `half`'s slice conversion (F16C when the CPU has it), via an aligned
/// stack buffer because mapped bytes need not be 2-byte aligned.
fn f16_slice(src: &[u8], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    const N: usize = 1024;
    let mut buf = [f16::ZERO; N];
    for (s, d) in src.chunks(2 * N).zip(dst.chunks_mut(N)) {
        let n = d.len();
        for (b, c) in buf[..n].iter_mut().zip(s.chunks_exact(2)) {
            *b = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
        }
        buf[..n].convert_to_f32_slice(d);
    }
}

/// Decodes a float8 byte with `exp_bits` exponent bits (bias `2^(e-1) - 1`) and the rest
/// mantissa. `fn_variant`: the E4M3FN convention (no infinities, only S.1111.111 is NaN);
/// otherwise IEEE-like (all-ones exponent is inf or NaN).
const fn f8_to_f32(b: u8, exp_bits: u32, fn_variant: bool) -> f32 {
    let man_bits = 7 - exp_bits;
    let sign = ((b >> 7) as u32) << 31;
    let e = ((b as u32) >> man_bits) & ((1 << exp_bits) - 1);
    let m = (b as u32) & ((1 << man_bits) - 1);
    let bias: i32 = (1 << (exp_bits - 1)) - 1;
    let max_e = (1 << exp_bits) - 1;
    let bits = if fn_variant && e == max_e && m == (1 << man_bits) - 1 {
        0x7FC0_0000
    } else if !fn_variant && e == max_e {
        if m == 0 {
            0x7F80_0000
        } else {
            0x7FC0_0000
        }
    } else if e == 0 {
        if m == 0 {
            0
        } else {
            // Subnormal m * 2^(1 - bias - man_bits): normalise the mantissa.
            let mut shift: i32 = 0;
            let mut mm = m;
            while mm & (1 << man_bits) == 0 {
                mm <<= 1;
                shift += 1;
            }
            let exp = 1 - bias - shift + 127;
            ((exp as u32) << 23) | ((mm & ((1 << man_bits) - 1)) << (23 - man_bits))
        }
    } else {
        (((e as i32 + 127 - bias) as u32) << 23) | (m << (23 - man_bits))
    };
    f32::from_bits(sign | bits)
}

const fn f8_table(exp_bits: u32, fn_variant: bool) -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = f8_to_f32(i as u8, exp_bits, fn_variant);
        i += 1;
    }
    t
}

/// `torch.float8_e4m3fn` (safetensors `F8_E4M3`) → f32 for every byte.
pub static F8_E4M3_TABLE: [f32; 256] = f8_table(4, true);
/// `torch.float8_e5m2` (safetensors `F8_E5M2`) → f32 for every byte.
pub static F8_E5M2_TABLE: [f32; 256] = f8_table(5, false);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_known_values() {
        let e4 = |b: u8| F8_E4M3_TABLE[b as usize];
        assert_eq!(e4(0x00), 0.0);
        assert_eq!(e4(0x38), 1.0);
        assert_eq!(e4(0x7E), 448.0);
        assert_eq!(e4(0x01), 2f32.powi(-9));
        assert_eq!(e4(0xB8), -1.0);
        assert!(e4(0x7F).is_nan() && e4(0xFF).is_nan());
        assert_eq!(e4(0x80).to_bits(), 0x8000_0000);
        let e5 = |b: u8| F8_E5M2_TABLE[b as usize];
        assert_eq!(e5(0x3C), 1.0);
        assert_eq!(e5(0x7B), 57344.0);
        assert_eq!(e5(0x7C), f32::INFINITY);
        assert_eq!(e5(0xFC), f32::NEG_INFINITY);
        assert!(e5(0x7D).is_nan());
        assert_eq!(e5(0x01), 2f32.powi(-16));
    }

    #[test]
    fn plain_types() {
        let b: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(to_f32(DType::F32, &b, 2), [1.5, -2.0]);
        let b: Vec<u8> = [f16::from_f32(0.25), f16::from_f32(-3.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(to_f32(DType::F16, &b, 2), [0.25, -3.0]);
        let b: Vec<u8> = [bf16::from_f32(0.5), bf16::from_f32(-7.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(to_f32(DType::BF16, &b, 2), [0.5, -7.0]);
        assert_eq!(to_f32(DType::I8, &[0xFF, 3], 2), [-1.0, 3.0]);
        assert_eq!(to_f32(DType::Bool, &[0, 2], 2), [0.0, 1.0]);
        let b: Vec<u8> = [16_777_217i64, -5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(to_f32(DType::I64, &b, 2), [16_777_216.0, -5.0]);
    }

    #[test]
    fn f16_unaligned_and_long() {
        let vals: Vec<f32> = (0..3000).map(|i| i as f32 * 0.5 - 700.0).collect();
        let mut bytes = vec![0u8];
        bytes.extend(vals.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()));
        assert_eq!(to_f32(DType::F16, &bytes[1..], vals.len()), vals);
    }

    #[test]
    fn parallel_split_matches_serial() {
        // Above PARALLEL_MIN, on a block type whose block does not divide CHUNK_VALUES evenly
        // in bytes: both paths must give identical bits.
        let n = PARALLEL_MIN + 256 * 3;
        let nb = n / 256;
        let mut src = vec![0u8; nb * 210];
        let mut x = 0x1234_5678u32;
        for (i, b) in src.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = if i % 210 == 209 { 0x1C } else { x as u8 };
        }
        let par = to_f32(DType::Q6_K, &src, n);
        let mut ser = vec![0f32; n];
        convert_serial(DType::Q6_K, &src, &mut ser);
        assert!(par
            .iter()
            .zip(&ser)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    #[should_panic(expected = "cannot hold")]
    fn length_mismatch_is_a_bug() {
        to_f32(DType::Q8_0, &[0u8; 33], 32);
    }
}
