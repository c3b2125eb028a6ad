//! Seeded Gaussian noise: deterministic from the job seed alone, independent of the job's
//! position in a batch and of the device (generated on the CPU in f32, then moved).
//!
//! # The generator, exactly (so other tools can reproduce it)
//! Counter-based: Philox4x32-10 (Salmon et al., SC'11; the Random123 / cuRAND / JAX Philox)
//! followed by the Box–Muller transform.
//! - Key: the 64-bit job seed, `key = [seed & 0xffffffff, seed >> 32]`.
//! - Stream `s` (64-bit): 0 for the initial latent noise, `1 + i` for the noise a stochastic
//!   sampler adds at step `i` (0-based step of the σ sequence being sampled).
//! - Block `j` (64-bit) of stream `s`: `counter = [j & 0xffffffff, j >> 32, s & 0xffffffff, s >> 32]`,
//!   `[w0, w1, w2, w3] = philox4x32_10(counter, key)`.
//! - Uniforms: `a = w1·2³² + w0`, `b = w3·2³² + w2` (u64);
//!   `u1 = ((a >> 12) + 0.5) · 2⁻⁵²` in (0, 1) and `u2 = (b >> 12) · 2⁻⁵²` in [0, 1), both exact in f64.
//! - Box–Muller in f64: `r = sqrt(−2 ln u1)`, `θ = 2π·u2`; element `2j` is `r·cos θ` and element
//!   `2j + 1` is `r·sin θ`, each rounded to the nearest f32. `ln`, `sin`, `cos` are the `libm`
//!   crate's (a port of musl's), so the bits do not depend on the platform's math library.
//! - A tensor of shape `[d0, d1, …]` takes elements `0 .. d0·d1·…` in row-major (C) order. A
//!   job's latent is generated on its own (batch dimension 1), so the same seed gives the same
//!   noise alone or anywhere in a batch, on any device.
//!
//! `tools/parity_samplers.py` re-implements this in Python and the fixtures it writes are
//! checked bit for bit.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::SampleError;

/// The stream of the initial latent noise.
pub const INITIAL_STREAM: u64 = 0;

/// The stream of the noise a stochastic sampler adds at step `step`.
pub const fn step_stream(step: usize) -> u64 {
    1 + step as u64
}

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// One Philox4x32 round.
#[inline]
fn philox_round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let p0 = u64::from(PHILOX_M0) * u64::from(c[0]);
    let p1 = u64::from(PHILOX_M1) * u64::from(c[2]);
    let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
    let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// Philox4x32 with 10 rounds (Random123's `philox4x32_10`).
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        }
        c = philox_round(c, k);
    }
    c
}

/// The two standard normal values of block `block` of stream `stream` for `seed`.
#[inline]
fn normal_pair(seed: u64, stream: u64, block: u64) -> [f32; 2] {
    let counter = [
        block as u32,
        (block >> 32) as u32,
        stream as u32,
        (stream >> 32) as u32,
    ];
    let w = philox4x32_10(counter, [seed as u32, (seed >> 32) as u32]);
    let a = (u64::from(w[1]) << 32) | u64::from(w[0]);
    let b = (u64::from(w[3]) << 32) | u64::from(w[2]);
    const TWO_POW_M52: f64 = 1.0 / (1u64 << 52) as f64;
    let u1 = ((a >> 12) as f64 + 0.5) * TWO_POW_M52;
    let u2 = (b >> 12) as f64 * TWO_POW_M52;
    let r = libm::sqrt(-2.0 * libm::log(u1));
    let theta = std::f64::consts::TAU * u2;
    [(r * libm::cos(theta)) as f32, (r * libm::sin(theta)) as f32]
}

/// The first `count` standard normal values of `stream` for `seed`.
pub fn normal_f32(seed: u64, stream: u64, count: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; count];
    // Counter-based: blocks are independent, so the split across threads cannot change a bit.
    const CHUNK: usize = 1 << 14; // elements per task (even, so pairs never straddle tasks)
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let first_block = (ci * CHUNK / 2) as u64;
            for (bi, pair) in chunk.chunks_mut(2).enumerate() {
                let z = normal_pair(seed, stream, first_block + bi as u64);
                pair.copy_from_slice(&z[..pair.len()]);
            }
        });
    out
}

/// A tensor of standard normal noise from `stream` of `seed`, generated on the CPU in f32,
/// then moved to `device` and converted to `dtype`.
pub fn noise_tensor(
    seed: u64,
    stream: u64,
    shape: &[usize],
    device: &Device,
    dtype: DType,
) -> Result<Tensor, SampleError> {
    let count = shape.iter().product();
    let t = Tensor::from_vec(normal_f32(seed, stream, count), shape, &Device::Cpu)?;
    Ok(t.to_device(device)?.to_dtype(dtype)?)
}

/// Where a stochastic sampler (euler_ancestral, dpmpp_2m_sde) gets its per-step noise.
pub trait StepNoise: Send {
    /// Standard normal noise for step `step`, with the shape, device and dtype of `like`.
    fn step_noise(&mut self, step: usize, like: &Tensor) -> Result<Tensor, SampleError>;
}

/// The job's seeded noise (see the module docs for the exact generator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeededNoise {
    pub seed: u64,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The initial latent noise (stream 0).
    pub fn initial(
        &self,
        shape: &[usize],
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor, SampleError> {
        noise_tensor(self.seed, INITIAL_STREAM, shape, device, dtype)
    }
}

impl StepNoise for SeededNoise {
    fn step_noise(&mut self, step: usize, like: &Tensor) -> Result<Tensor, SampleError> {
        noise_tensor(
            self.seed,
            step_stream(step),
            like.dims(),
            like.device(),
            like.dtype(),
        )
    }
}

/// Pre-made per-step noise (tests and parity fixtures): `steps[i]` is the noise of step `i`.
#[derive(Debug, Clone)]
pub struct FixedNoise {
    pub steps: Vec<Tensor>,
}

impl StepNoise for FixedNoise {
    fn step_noise(&mut self, step: usize, like: &Tensor) -> Result<Tensor, SampleError> {
        let t = self.steps.get(step).ok_or(SampleError::MissingNoise {
            step,
            available: self.steps.len(),
        })?;
        if t.dims() != like.dims() {
            return Err(SampleError::Shape {
                what: "step noise",
                expected: like.dims().to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.to_device(like.device())?.to_dtype(like.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Random123 `tests/kat_vectors`, the three `philox4x32 10` lines (counter, key, result).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn deterministic_prefix_stable_and_streams_distinct() {
        let long = normal_f32(42, 0, 100_001);
        let short = normal_f32(42, 0, 7);
        assert_eq!(long[..7], short[..]);
        assert_ne!(normal_f32(42, 1, 7), short);
        assert_ne!(normal_f32(43, 0, 7), short);
        // Odd counts end with the cosine half of the last pair.
        assert_eq!(normal_f32(42, 0, 3)[2], long[2]);
    }

    /// Pins the generator: any change to it changes every image, so it must be deliberate.
    #[test]
    fn pinned_hash_of_first_values() {
        let v = normal_f32(42, 0, 4096);
        let mut h = Sha256::new();
        for x in &v {
            h.update(x.to_le_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "bb3f79aab813adacd060ea212a241c19493963cbf091685abb4df6b7e1ac1cfb"
        );
    }

    #[test]
    fn statistics_are_standard_normal() {
        let n = 1 << 20;
        let v = normal_f32(7, 3, n);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        let kurt = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(4))
            .sum::<f64>()
            / n as f64
            / (var * var);
        // Standard errors at n = 2^20: mean 0.001, variance 0.0014, kurtosis 0.0048.
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var - 1.0).abs() < 0.007, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.03, "kurtosis {kurt}");
        let within1 = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n as f64;
        assert!(
            (within1 - 0.682_689_5).abs() < 0.003,
            "P(|z|<1) = {within1}"
        );
        // Neighbours (cos/sin halves of a pair, and across pairs) are uncorrelated.
        for lag in [1usize, 2] {
            let c = v
                .windows(lag + 1)
                .map(|w| f64::from(w[0]) * f64::from(w[lag]))
                .sum::<f64>()
                / n as f64;
            assert!(c.abs() < 0.005, "lag {lag} correlation {c}");
        }
    }

    #[test]
    fn tensors_follow_row_major_order_and_any_device_dtype() -> Result<(), SampleError> {
        let t = noise_tensor(5, INITIAL_STREAM, &[1, 2, 3, 4], &Device::Cpu, DType::F64)?;
        let flat: Vec<f64> = t.flatten_all()?.to_vec1()?;
        let want: Vec<f64> = normal_f32(5, 0, 24).into_iter().map(f64::from).collect();
        assert_eq!(flat, want);
        let mut s = SeededNoise::new(5);
        let step3 = s.step_noise(3, &t)?;
        assert_eq!(step3.dims(), &[1, 2, 3, 4]);
        let want3: Vec<f64> = normal_f32(5, 4, 24).into_iter().map(f64::from).collect();
        assert_eq!(step3.flatten_all()?.to_vec1::<f64>()?, want3);
        Ok(())
    }
}
