//! The drawing model (manifests/demo.toml) end to end against diffusers (issue 16).
//!
//! `tools/parity_draw.py` ran diffusers' `FluxPipeline` (float32, CPU) with the trained
//! weights (manifests/draw/, clip-tiny), mgpu's initial noise for each seed and mgpu's
//! σ schedule (20 Euler steps, σ = t, true CFG 4 against the empty prompt) and committed the
//! pictures and the noise under tests/fixtures/parity/draw/. Here `mgpu run` makes the same
//! jobs from the same files and must agree: its noise bit for bit, its PNGs within
//! PSNR ≥ 40 dB of diffusers' float pictures (a PNG's own rounding alone costs ≈ 59 dB).

mod common;
mod parity_common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::{mgpu, repo_root, stderr};
use parity_common::{assert_is_mgpus_noise, psnr_u8};
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
        let noise = &expected[&format!("noise.{i}")];
        assert_eq!(noise.elem_count(), 16 * lat * lat, "case {i}: noise size");
        assert_is_mgpus_noise(&format!("case {i}"), c.seed, noise);
    }

    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &meta);
    let o = mgpu(&["run", m.to_str().unwrap(), "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for (i, c) in meta.cases.iter().enumerate() {
        let png = image::open(dir.path().join(format!("out/case{i}.png")))
            .unwrap()
            .to_rgb8();
        let psnr = psnr_u8(png.as_raw(), &expected[&format!("image.{i}")]);
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
