//! Deterministic pseudo-random tensors for the tiny demo models (`mgpu make-tiny`).
//!
//! Each tensor's values depend only on the seed and the tensor's name (FNV-1a of the name mixed
//! into the seed, then a SplitMix64 stream and Box–Muller), not on the order tensors are made
//! in or on the machine, so a tiny model file is the same bytes everywhere. Nothing here is
//! used for sampling noise (that generator lives in [`crate::sample`]).

use candle_core::{Device, Result, Tensor};

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1]: 53 random bits, never 0 (Box–Muller takes its log).
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// `mean + std · N(0, 1)` values of the given shape, on the CPU, f32.
pub fn normal(seed: u64, name: &str, shape: &[usize], mean: f32, std: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = SplitMix64(seed ^ fnv1a(name));
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (rng.unit(), rng.unit());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push(mean + std * (r * t.cos()) as f32);
        out.push(mean + std * (r * t.sin()) as f32);
    }
    out.truncate(n);
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// A tiny-model weight by the role its name suggests: norm scales near 1, biases near 0,
/// embeddings N(0, 1), matrices N(0, 1/fan_in) so activations stay O(1) through the blocks.
pub fn weight(seed: u64, name: &str, shape: &[usize]) -> Result<Tensor> {
    let is_norm = name.contains("norm") || name.contains("layer_norm");
    if is_norm && name.ends_with(".weight") {
        normal(seed, name, shape, 1.0, 0.1)
    } else if name.ends_with(".bias") {
        normal(seed, name, shape, 0.0, 0.1)
    } else if shape.len() == 1
        || name.contains("embed")
        || name.contains("relative_attention_bias")
        || name == "shared.weight"
    {
        normal(seed, name, shape, 0.0, 1.0)
    } else {
        let fan_in = *shape.last().expect("matrix has dims") as f32;
        normal(seed, name, shape, 0.0, fan_in.powf(-0.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_name_and_seed() {
        let a = normal(7, "x.weight", &[3, 5], 0.0, 1.0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let b = normal(7, "x.weight", &[3, 5], 0.0, 1.0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let c = normal(8, "x.weight", &[3, 5], 0.0, 1.0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let d = normal(7, "y.weight", &[3, 5], 0.0, 1.0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn moments_are_right() {
        let v = normal(1, "m", &[20000], 2.0, 0.5)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!((mean - 2.0).abs() < 0.02, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "{var}");
    }
}
