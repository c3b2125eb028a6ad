//! The Wan 2.1 VAE against outside references.
//!
//! - Parity with diffusers 0.42.1's `AutoencoderKLWan` (fixtures from
//!   `tools/parity_wan_vae.py`: the tiny config, f32, weights rounded to bf16): a decode of a
//!   3-frame latent (9 frames of 32×48, through the normalisation, unclamped) and an encode of
//!   a 9-frame clip (the raw posterior mean and the normalised DiT latent). Agreement within
//!   1e-4 relative, as ‖a−b‖/‖b‖ and as max|a−b| / max|b|.
//! - Both key layouts: the same weights in diffusers' names go through `weights::keymap` to the
//!   same canonical tensors, byte for byte, and decode to the same bytes.
//! - The real layout: `vae_layout::<WanVae>(&Config::wan21())` is exactly the 194 names and
//!   shapes of `wan_2.1_vae.safetensors` (derived by the script from diffusers' full-size model
//!   and checked there against diffusers' own converter), and inferring the config from it
//!   gives `Config::wan21()`.
//! - Random tiny weights (`models::tiny`) decode and encode to finite values; clear refusals.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use mgpu::models::coverage::Coverage;
use mgpu::models::spec::{vae_layout, Autoencoder};
use mgpu::models::tiny;
use mgpu::models::wan_vae::{Config, WanVae};

mod parity_common;
mod wan_vae_common;
use wan_vae_common::*;

/// This file's fixtures: `tests/fixtures/parity/wan_vae/`.
const DIR: &str = "wan_vae";

#[test]
fn decode_and_encode_match_diffusers() {
    decode_and_encode_match(
        DIR,
        &Config::tiny(),
        load(DIR, "vae.safetensors"),
        &[1, 16, 3, 4, 6],
    );
}

#[test]
fn both_layouts_give_identical_weights_and_outputs() {
    both_layouts_agree(DIR, &Config::tiny());
}

#[test]
fn real_layout_is_what_the_model_builds_and_infers_wan21() {
    real_layout_builds_infers_and_maps(DIR, "layout_wan21_vae.txt", &Config::wan21(), 194);
    // The tiny config has the same structure: inference recovers it too.
    let tiny_layout = vae_layout::<WanVae>(&Config::tiny()).unwrap();
    assert_eq!(tiny_layout.len(), 194);
    assert_eq!(
        WanVae::infer_config(&|n| tiny_layout.get(n).cloned(), &BTreeMap::new()).unwrap(),
        Config::tiny()
    );
}

#[test]
fn tiny_random_weights_decode_and_encode_to_finite_values() {
    let cfg = Config::tiny();
    let w = tiny::weights_for(&vae_layout::<WanVae>(&cfg).unwrap(), 7).unwrap();
    let (enc, dec, cov) = build(&cfg, w.into_iter().collect());
    assert_eq!(cov.unused(), Vec::<String>::new());
    let latent = Tensor::randn(0f32, 1.0, (1, 16, 2, 8, 8), &Device::Cpu).unwrap();
    let t0 = std::time::Instant::now();
    let frames = WanVae::decode(&dec, &latent, None).unwrap();
    eprintln!("tiny decode of 5 frames at 64×64: {:?}", t0.elapsed());
    assert_eq!(frames.dims(), &[5, 3, 64, 64]);
    let v: Vec<f32> = frames.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(max > 1e-3 && max < 1e3, "max |frame| {max}");
    let z = WanVae::encode(&enc, &frames.clamp(-1f32, 1f32).unwrap()).unwrap();
    assert_eq!(z.dims(), &[1, 16, 2, 8, 8]);
    let z: Vec<f32> = z.flatten_all().unwrap().to_vec1().unwrap();
    assert!(z.iter().all(|x| x.is_finite()));
}

#[test]
fn refusals_are_clear() {
    let cfg = Config::tiny();
    let (enc, dec, _) = build(&cfg, load(DIR, "vae.safetensors"));
    let latent = Tensor::zeros((1, 16, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let e = WanVae::decode(&dec, &latent, Some(32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("wan-vae does not tile yet"), "{e}");
    let bad = Tensor::zeros((1, 4, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let e = WanVae::decode(&dec, &bad, None).unwrap_err().to_string();
    assert!(e.contains("[1, 16, T, h, w]"), "{e}");
    let six = Tensor::zeros((6, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let e = WanVae::encode(&enc, &six).unwrap_err().to_string();
    assert!(e.contains("F = 1 + 4·k"), "{e}");
    let odd = Tensor::zeros((1, 3, 12, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(WanVae::encode(&enc, &odd).is_err());

    // 48 latent channels in Wan 2.1's layout: neither published VAE (the Wan 2.2 VAE, with 48,
    // is nested one level deeper; tests/models_wan22_vae.rs).
    let mut real = real_layout(DIR, "layout_wan21_vae.txt");
    real.insert("conv2.weight".into(), vec![48, 48, 1, 1, 1]);
    let meta = BTreeMap::new();
    let e = WanVae::infer_config(&|n| real.get(n).cloned(), &meta)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("48 latent channels, but the layout is Wan 2.1's"),
        "{e}"
    );

    // A missing tensor is named, by the config inference and by the constructors.
    let mut real = real_layout(DIR, "layout_wan21_vae.txt");
    real.remove("encoder.conv1.weight");
    let e = WanVae::infer_config(&|n| real.get(n).cloned(), &meta)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`encoder.conv1.weight` is missing"), "{e}");
    let mut w = load(DIR, "vae.safetensors");
    w.remove("decoder.upsamples.5.residual.3.gamma");
    let (vb, _) = Coverage::var_builder(w, DType::F32, &Device::Cpu);
    let e = WanVae::decoder(&cfg, vb.pp("decoder"), vb.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("upsamples.5.residual.3.gamma"), "{e}");
}
