//! Tiny random-weight models in the real key layouts, deterministic from a seed: the demo's
//! models (`mgpu make-tiny`) and test fixtures.
//!
//! The layout (names and shapes) is taken from the model constructors themselves: they are
//! run once over a [`ShapeRecorder`] backend that hands out zero-cost broadcast tensors and
//! notes every request. A generated file is therefore always loadable by this version's
//! model code; that the constructors consume the *real* layouts is proven separately against
//! independent key lists (`tests/models_flux.rs`).
//!
//! Values: tensor `name` gets the stream of SplitMix64 (Steele et al. 2014, constants as in
//! `java.util.SplittableRandom`) seeded with `seed XOR fnv1a64(name)`; each output `x` gives
//! the uniform `u = 2·(x >> 40)/2²⁴ − 1` in [-1, 1). A tensor therefore does not depend on
//! which other tensors exist. Scaling keeps activations near unit size:
//! - weights of rank ≥ 2: `u · √(3 / fan_in)` (variance 1/fan_in), fan_in = product of all
//!   dimensions after the first (input channels × kernel, also for 5-D video convolutions);
//! - norm scales (`*.scale`, `*.gamma` (Wan VAE RMS norms, stored `[C, 1, 1(, 1)]`), rank-1
//!   `*norm*.weight`): `1 + 0.1·u`;
//! - biases and other rank-0/1 tensors: `0.02·u`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::flux::{self, FluxDit};
use super::vae;

/// SplitMix64: a 64-bit generator with one word of state, good enough to fill test weights.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The stream for tensor `name` under `seed`.
    pub fn for_tensor(seed: u64, name: &str) -> Self {
        Self(seed ^ fnv1a64(name.as_bytes()))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), exactly representable in f32.
    pub fn next_uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0
    }
}

/// 64-bit FNV-1a hash.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// A `VarBuilder` backend that records every requested tensor and returns zeros that cost no
/// memory (a broadcast scalar).
#[derive(Debug, Default)]
pub struct ShapeRecorder {
    seen: Mutex<BTreeMap<String, Vec<usize>>>,
}

impl ShapeRecorder {
    /// Runs `build` over a recording `VarBuilder` of `dtype` on the CPU and returns the
    /// requested names and shapes, sorted by name.
    pub fn record(
        dtype: DType,
        build: impl FnOnce(VarBuilder) -> Result<()>,
    ) -> Result<BTreeMap<String, Vec<usize>>> {
        let rec = std::sync::Arc::new(ShapeRecorder::default());
        let vb =
            VarBuilder::from_backend(Box::new(SharedRecorder(rec.clone())), dtype, Device::Cpu);
        build(vb)?;
        let seen = rec
            .seen
            .lock()
            .map_err(|_| candle_core::Error::Msg("shape recorder poisoned".into()))?;
        Ok(seen.clone())
    }
}

struct SharedRecorder(std::sync::Arc<ShapeRecorder>);

impl SimpleBackend for SharedRecorder {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut seen = self
            .0
            .seen
            .lock()
            .map_err(|_| candle_core::Error::Msg("shape recorder poisoned".into()))?;
        if let Some(prev) = seen.insert(name.to_string(), s.dims().to_vec()) {
            if prev != s.dims() {
                candle_core::bail!(
                    "tensor `{name}` requested with shapes {prev:?} and {:?}",
                    s.dims()
                )
            }
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("shape recorder: `{name}` requested without a shape")
    }

    /// Every optional tensor is part of a checkpoint's layout, except the fp8-compute scales,
    /// which only the executor makes (`models::fp8`).
    fn contains_tensor(&self, name: &str) -> bool {
        !name.ends_with(&format!("weight{}", crate::models::fp8::SCALE_SUFFIX))
    }
}

/// Names and shapes of a FLUX transformer checkpoint for `cfg` (canonical BFL names).
pub fn flux_layout(cfg: &flux::Config) -> Result<BTreeMap<String, Vec<usize>>> {
    ShapeRecorder::record(DType::F32, |vb| {
        FluxDit::new(cfg, vb.clone())?;
        for (i, unit) in FluxDit::units(cfg).iter().enumerate() {
            FluxDit::build_unit(cfg, i, vb.pp(unit))?;
        }
        Ok(())
    })
}

/// Names and shapes of an `ae.safetensors` for `cfg`.
pub fn vae_layout(cfg: &vae::Config) -> Result<BTreeMap<String, Vec<usize>>> {
    ShapeRecorder::record(DType::F32, |vb| vae::AutoEncoder::new(cfg, vb).map(|_| ()))
}

/// The values of tensor `name` of `shape` under `seed` (rules in the module doc).
pub fn init_values(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut rng = SplitMix64::for_tensor(seed, name);
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_norm_scale = leaf == "scale"
        || leaf == "gamma"
        || (shape.len() == 1 && leaf == "weight" && name.contains("norm"));
    let (offset, scale) = if is_norm_scale {
        (1.0, 0.1)
    } else if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        (0.0, (3.0 / fan_in.max(1) as f32).sqrt())
    } else {
        (0.0, 0.02)
    };
    (0..n)
        .map(|_| offset + scale * rng.next_uniform())
        .collect()
}

/// Random tensors (f32, CPU) for every name of `layout`.
pub fn weights_for(
    layout: &BTreeMap<String, Vec<usize>>,
    seed: u64,
) -> Result<BTreeMap<String, Tensor>> {
    layout
        .iter()
        .map(|(name, shape)| {
            Ok((
                name.clone(),
                Tensor::from_vec(
                    init_values(seed, name, shape),
                    shape.as_slice(),
                    &Device::Cpu,
                )?,
            ))
        })
        .collect()
}

/// A random FLUX transformer in the BFL layout.
pub fn flux_weights(cfg: &flux::Config, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    weights_for(&flux_layout(cfg)?, seed)
}

/// A random FLUX autoencoder in the `ae.safetensors` layout.
pub fn vae_weights(cfg: &vae::Config, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    weights_for(&vae_layout(cfg)?, seed)
}

/// Rank of the tiny LoRA.
pub const LORA_RANK: usize = 4;
/// Its `alpha`: the update is scaled by `alpha / rank` = 0.5.
pub const LORA_ALPHA: f32 = 2.0;

/// A random LoRA for a FLUX transformer of `cfg` in the kohya/ComfyUI format: for every
/// linear layer inside a block (`double_blocks.0.img_attn.qkv.weight` …), tensors
/// `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` `[rank, in]`,
/// `….lora_up.weight` `[out, rank]` and `….alpha` (a scalar). `down` is scaled like a weight
/// (variance 1/in), `up` by `0.5·√(3/rank)`, so that the update is about a quarter of the
/// base weight's size.
pub fn flux_lora(cfg: &flux::Config, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, shape) in flux_layout(cfg)? {
        let in_block = name.starts_with("double_blocks.") || name.starts_with("single_blocks.");
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        if !in_block || shape.len() != 2 {
            continue;
        }
        let key = format!("lora_unet_{}", module.replace('.', "_"));
        let (o, i) = (shape[0], shape[1]);
        let down_name = format!("{key}.lora_down.weight");
        let up_name = format!("{key}.lora_up.weight");
        let down = init_values(seed, &down_name, &[LORA_RANK, i]);
        let mut rng = SplitMix64::for_tensor(seed, &up_name);
        let s = 0.5 * (3.0 / LORA_RANK as f32).sqrt();
        let up: Vec<f32> = (0..o * LORA_RANK).map(|_| s * rng.next_uniform()).collect();
        out.insert(
            down_name,
            Tensor::from_vec(down, (LORA_RANK, i), &Device::Cpu)?,
        );
        out.insert(up_name, Tensor::from_vec(up, (o, LORA_RANK), &Device::Cpu)?);
        out.insert(
            format!("{key}.alpha"),
            Tensor::new(LORA_ALPHA, &Device::Cpu)?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 0 (reference: Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn uniform_range() {
        let mut r = SplitMix64::new(7);
        for _ in 0..10_000 {
            let u = r.next_uniform();
            assert!((-1.0..1.0).contains(&u));
        }
    }

    #[test]
    fn tiny_layouts_have_expected_sizes() -> Result<()> {
        let l = flux_layout(&flux::Config::tiny())?;
        assert!(l.contains_key("guidance_in.in_layer.weight"));
        assert_eq!(l["double_blocks.1.img_attn.qkv.weight"], vec![96, 32]);
        assert_eq!(l["single_blocks.0.linear1.weight"], vec![3 * 32 + 128, 32]);
        let s = flux_layout(&flux::Config::tiny_schnell())?;
        assert_eq!(l.len(), s.len() + 4);
        let v = vae_layout(&vae::Config::tiny())?;
        assert_eq!(v["decoder.conv_in.weight"], vec![16, 16, 3, 3]);
        Ok(())
    }

    #[test]
    fn lora_covers_every_block_linear() -> Result<()> {
        let l = flux_lora(&flux::Config::tiny(), 0)?;
        // Double block: 2 streams × (mod.lin, qkv, proj, mlp.0, mlp.2); single: 3 linears.
        assert_eq!(l.len(), 3 * (2 * 2 * 5 + 2 * 3));
        assert_eq!(
            l["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].dims(),
            &[4, 32]
        );
        assert_eq!(
            l["lora_unet_single_blocks_1_linear2.lora_up.weight"].dims(),
            &[32, 4]
        );
        assert_eq!(
            l["lora_unet_single_blocks_1_linear2.alpha"].dims(),
            &[] as &[usize]
        );
        Ok(())
    }
}
