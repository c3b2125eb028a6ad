//! The Wan 2.2 VAE (`wan2.2_vae.safetensors`, the autoencoder of Wan 2.2 TI2V-5B) against
//! outside references.
//!
//! - Parity with diffusers 0.42.1's `AutoencoderKLWan(is_residual=True, patch_size=2, z_dim=48)`
//!   (fixtures from `tools/parity_wan22_vae.py`: encoder width 4, decoder width 3, the real 48
//!   latent channels and normalisation, f32, weights rounded to bf16; the script also checks
//!   diffusers against Wan 2.2's own `vae2_2.py`): a decode of a 3-frame latent (9 frames of
//!   32×48, through the normalisation and the unpatchify, unclamped) and an encode of a
//!   9-frame clip (the raw posterior mean and the normalised DiT latent). Agreement within 1e-4
//!   relative, as ‖a−b‖/‖b‖ and as max|a−b| / max|b| (the Wan 2.1 tests' tolerance).
//! - Both key layouts: the same weights in diffusers' names go through `weights::keymap` to the
//!   same canonical tensors, byte for byte, and decode to the same bytes.
//! - The real layout: `vae_layout::<WanVae>(&Config::wan22())` is exactly the 196 names and
//!   shapes of `wan2.2_vae.safetensors` (derived by the script from diffusers' full-size
//!   Wan 2.2 config and checked there against Wan 2.2's `WanVAE_`), and inferring the config
//!   from it gives `Config::wan22()` (the same layout in diffusers' names is mapped back by
//!   `keymap::wan_vae`'s unit tests).
//! - Clear refusals: wrong latent widths and sizes, missing tensors named.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use mgpu::family::Family;
use mgpu::models::coverage::Coverage;
use mgpu::models::spec::{vae_layout, Autoencoder};
use mgpu::models::tiny;
use mgpu::models::wan_vae::{Config, WanVae};
use mgpu::weights::keymap::canonicalize;

mod parity_common;
mod wan_vae_common;
use wan_vae_common::*;

/// This file's fixtures: `tests/fixtures/parity/wan22_vae/`.
const DIR: &str = "wan22_vae";

#[test]
fn decode_and_encode_match_diffusers() {
    let cfg = Config::tiny22();
    let weights = load(DIR, "vae.safetensors");
    let shapes = shapes_of(&weights);
    assert_eq!(
        WanVae::infer_config(&|n| shapes.get(n).cloned(), &BTreeMap::new()).unwrap(),
        cfg,
        "the fixture's shapes give the tiny config"
    );
    decode_and_encode_match(DIR, &cfg, weights, &[1, 48, 3, 2, 3]);
}

#[test]
fn both_layouts_give_identical_weights_and_outputs() {
    let shapes = both_layouts_agree(DIR, &Config::tiny22());
    // The raw file is the original layout: the mapping keeps its names.
    assert_eq!(shapes_of(&load(DIR, "vae.safetensors")), shapes);
}

#[test]
fn real_layout_is_what_the_model_builds_and_infers_wan22() {
    let cfg = Config::wan22();
    let real = real_layout_builds_infers_and_maps(DIR, "layout_wan22_vae.txt", &cfg, 196);
    assert_eq!((cfg.spatial_factor(), cfg.temporal_factor()), (16, 4));
    // A ComfyUI-style prefix is stripped.
    let prefixed: BTreeMap<String, Vec<usize>> = real
        .iter()
        .map(|(k, v)| (format!("first_stage_model.{k}"), v.clone()))
        .collect();
    let l = canonicalize(Family::WanVae, &infos(&prefixed)).unwrap();
    assert_eq!(l.tensors.len(), 196);
}

#[test]
fn tiny_random_weights_decode_and_encode_to_finite_values() {
    let cfg = Config::tiny22();
    let w = tiny::weights_for(&vae_layout::<WanVae>(&cfg).unwrap(), 7).unwrap();
    let (enc, dec, cov) = build(&cfg, w.into_iter().collect());
    assert_eq!(cov.unused(), Vec::<String>::new());
    let latent = Tensor::randn(0f32, 1.0, (1, 48, 2, 4, 4), &Device::Cpu).unwrap();
    let frames = WanVae::decode(&dec, &latent, None).unwrap();
    assert_eq!(frames.dims(), &[5, 3, 64, 64]);
    let v: Vec<f32> = frames.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    let z = WanVae::encode(&enc, &frames.clamp(-1f32, 1f32).unwrap()).unwrap();
    assert_eq!(z.dims(), &[1, 48, 2, 4, 4]);
    let z: Vec<f32> = z.flatten_all().unwrap().to_vec1().unwrap();
    assert!(z.iter().all(|x| x.is_finite()));
}

#[test]
fn refusals_are_clear() {
    let cfg = Config::tiny22();
    let (enc, dec, _) = build(&cfg, load(DIR, "vae.safetensors"));
    let bad = Tensor::zeros((1, 16, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let e = WanVae::decode(&dec, &bad, None).unwrap_err().to_string();
    assert!(e.contains("[1, 48, T, h, w]"), "{e}");
    // 16× spatial compression: 24 pixels is a multiple of 8, not of 16.
    let odd = Tensor::zeros((1, 3, 24, 32), DType::F32, &Device::Cpu).unwrap();
    let e = WanVae::encode(&enc, &odd).unwrap_err().to_string();
    assert!(e.contains("multiples of 16"), "{e}");

    let meta = BTreeMap::new();
    // A missing tensor is named, by the config inference and by the constructors.
    let mut real = real_layout(DIR, "layout_wan22_vae.txt");
    real.remove("decoder.upsamples.1.upsamples.3.time_conv.weight");
    let e = WanVae::infer_config(&|n| real.get(n).cloned(), &meta)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`decoder.upsamples.1.upsamples.3` lacks a time_conv"),
        "{e}"
    );
    let mut real = real_layout(DIR, "layout_wan22_vae.txt");
    real.insert("conv2.weight".into(), vec![16, 16, 1, 1, 1]);
    let e = WanVae::infer_config(&|n| real.get(n).cloned(), &meta)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("16 latent channels, but the layout is Wan 2.2's"),
        "{e}"
    );
    let mut w = load(DIR, "vae.safetensors");
    w.remove("encoder.downsamples.2.downsamples.1.residual.3.gamma");
    let (vb, _) = Coverage::var_builder(w, DType::F32, &Device::Cpu);
    let e = WanVae::encoder(&cfg, vb.pp("encoder"), vb.clone())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("downsamples.2.downsamples.1.residual.3.gamma"),
        "{e}"
    );
}
