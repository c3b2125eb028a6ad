//! Comparing mgpu's tensors with a reference implementation's, for the parity tests of the FLUX
//! and Wan models (tests/models_flux.rs, models_wan.rs, models_wan22_ti2v.rs, wan22_i2v.rs, and
//! the VAE tests through tests/wan_vae_common): fixtures under `tests/fixtures/parity/<dir>/`, written by
//! `tools/parity_<dir>.py`, and the error measures every one of them reports; for the
//! end-to-end tests (draw_parity.rs, wan_pipelines.rs), the noise check and 8-bit PSNR.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// `tests/fixtures/parity/<dir>/<name>`.
pub fn fixture(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(dir)
        .join(name)
}

/// The tensors of fixture `<dir>/<name>`.
pub fn load(dir: &str, name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(dir, name), &Device::Cpu).unwrap_or_else(|e| {
        panic!("fixture {dir}/{name}: {e} (regenerate with tools/parity_{dir}.py)")
    })
}

/// Every element as f32 (converted from any float dtype), in order.
pub fn f32_values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Every element as f64, in order.
pub fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// (‖a−b‖/‖b‖, max|a−b| / max|b|, max|a−b|)
pub fn errors(a: &Tensor, b: &Tensor) -> (f64, f64, f64) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (flat(a), flat(b));
    let diff2: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm2: f64 = b.iter().map(|y| y * y).sum();
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let max_b = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    (diff2.sqrt() / norm2.sqrt(), max_diff / max_b, max_diff)
}

/// `a` is `b` within `tol`, relative: ‖a−b‖/‖b‖ and max|a−b| / max|b| (printed either way).
pub fn assert_close_within(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let (l2, maxrel, maxabs) = errors(a, b);
    eprintln!(
        "{what}: relative L2 error {l2:.2e}, max-abs error {maxabs:.2e} (/ max|ref| {maxrel:.2e})"
    );
    assert!(
        l2 <= tol && maxrel <= tol,
        "{what}: L2 {l2:.3e}, max {maxrel:.3e} exceed {tol:e}"
    );
}

/// Asserts that a fixture's initial noise is mgpu's, bit for bit: `sample::noise::normal_f32`
/// for `seed` on the initial stream, as many values as the fixture has.
pub fn assert_is_mgpus_noise(what: &str, seed: u64, fixture: &Tensor) {
    let theirs = fixture.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ours =
        mgpu::sample::noise::normal_f32(seed, mgpu::sample::noise::INITIAL_STREAM, theirs.len());
    assert!(
        ours.iter()
            .zip(&theirs)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{what}: the fixture's noise is not mgpu's noise for seed {seed}"
    );
}

/// PSNR in dB of 8-bit pixels against a reference's float pixels in [0, 1] (any float
/// dtype), element by element.
pub fn psnr_u8(pixels: &[u8], reference: &Tensor) -> f64 {
    let want = f32_values(reference);
    assert_eq!(pixels.len(), want.len(), "pixel counts differ");
    let mse = pixels
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (f64::from(a) / 255.0 - f64::from(b)).powi(2))
        .sum::<f64>()
        / want.len() as f64;
    -10.0 * mse.max(1e-12).log10()
}
