//! The drawing model (manifests/demo.toml) end to end against diffusers (issue 16).
//!
//! `tools/parity_draw.py` ran diffusers' `FluxPipeline` (float32, CPU) with the trained
//! weights (manifests/draw/, clip-tiny), mgpu's initial noise for each seed and mgpu's
//! σ schedule (20 Euler steps, σ = t, true CFG 4 against the empty prompt) and committed the
//! pictures and the noise under tests/fixtures/parity/draw/. Here `mgpu run` makes the same
//! jobs from the same files and must agree: its noise bit for bit, its PNGs within
//! PSNR ≥ 40 dB of diffusers' float pictures (a PNG's own rounding alone costs ≈ 59 dB).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::{mgpu, repo_root, stderr};
use serde::Deserialize;

#[derive(Deserialize)]
struct Meta {
    size: u32,
    steps: u32,
    cfg: f64,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    seed: u64,
}

fn fixture() -> (Meta, HashMap<String, Tensor>) {
    let dir = repo_root().join("tests/fixtures/parity/draw");
    let meta = std::fs::read_to_string(dir.join("meta.json"))
        .unwrap_or_else(|e| panic!("meta.json: {e} (regenerate with tools/parity_draw.py)"));
    let meta: Meta = serde_json::from_str(&meta).unwrap();
    let t = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)
        .unwrap_or_else(|e| panic!("expected.safetensors: {e}"));
    (meta, t)
}

/// The drawing manifest's models (at absolute paths) with the fixture's jobs, in a manifest under `dir`.
fn manifest(dir: &Path, meta: &Meta) -> std::path::PathBuf {
    let demo = std::fs::read_to_string(repo_root().join("manifests/demo.toml")).unwrap();
    let mut head = demo.split("\n[defaults]").next().unwrap().to_string();
    for folder in ["tiny", "draw"] {
        let abs = repo_root().join("manifests").join(folder);
        head = head.replace(&format!("\"{folder}/"), &format!("\"{}/", abs.display()));
    }
    let mut text = format!(
        "{head}\n[defaults]\nwidth = {s}\nheight = {s}\nsteps = {}\ncfg = {}\noutput = \"{{job}}.png\"\n",
        meta.steps,
        meta.cfg,
        s = meta.size
    )
    .replace("output_root = \"out/demo\"", "output_root = \"out\"");
    for (i, c) in meta.cases.iter().enumerate() {
        text += &format!(
            "\n[[jobs]]\nname = \"case{i}\"\nprompt = \"{}\"\nseed = {}\n",
            c.prompt, c.seed
        );
    }
    let m = dir.join("parity.toml");
    std::fs::write(&m, text).unwrap();
    m
}

#[test]
fn the_drawing_demo_matches_diffusers_flux_pipeline() {
    let (meta, expected) = fixture();
    let lat = (meta.size / 8) as usize;
    for (i, c) in meta.cases.iter().enumerate() {
        let ours = mgpu::sample::noise::normal_f32(
            c.seed,
            mgpu::sample::noise::INITIAL_STREAM,
            16 * lat * lat,
        );
        let theirs = expected[&format!("noise.{i}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            ours.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "case {i}: the fixture's noise is not mgpu's noise for seed {}",
            c.seed
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &meta);
    let o = mgpu(&["run", m.to_str().unwrap(), "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for (i, c) in meta.cases.iter().enumerate() {
        let png = image::open(dir.path().join(format!("out/case{i}.png")))
            .unwrap()
            .to_rgb8();
        let want = expected[&format!("image.{i}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(png.as_raw().len(), want.len());
        let mse = png
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (f64::from(a) / 255.0 - f64::from(b)).powi(2))
            .sum::<f64>()
            / want.len() as f64;
        let psnr = -10.0 * mse.max(1e-12).log10();
        eprintln!(
            "case {i} ({:?}, seed {}): PSNR {psnr:.1} dB",
            c.prompt, c.seed
        );
        assert!(
            psnr >= 40.0,
            "case {i} ({:?}, seed {}): PSNR {psnr:.1} dB against diffusers, expected ≥ 40",
            c.prompt,
            c.seed
        );
    }
}
