//! Wan end to end against diffusers' pipelines (issues 10 and 15).
//!
//! `tools/parity_wan_pipelines.py` ran diffusers (float32, CPU) from mgpu's initial noise
//! with UniPC bh2 on Wan's flow σ (shift 5) and true CFG 3.5 against a negative prompt, the tiny
//! umT5 and a seeded first frame, and committed the clips and the noise:
//! - `wan21_t2v_pipeline/`: `WanPipeline` with the tiny Wan 2.1 model and the parity Wan VAE;
//! - `wan22_t2v_pipeline/`: `WanPipeline` with the tiny A14B text-to-video experts (switching
//!   at boundary 0.875);
//! - `wan22_i2v_pipeline/`: `WanImageToVideoPipeline` with the tiny demo's two A14B
//!   image-to-video experts (switching at boundary 0.9) and the parity Wan VAE;
//! - `wan22_ti2v_pipeline/`: the tiny TI2V-5B demo model with the parity Wan 2.2 VAE through
//!   `WanPipeline(expand_timesteps=True)` (text-to-video) and
//!   `WanImageToVideoPipeline(expand_timesteps=True)` (image-to-video, per-token timesteps).
//!
//! Here `mgpu run` makes the same jobs from the same files (`sampler = "uni_pc_bh2"`,
//! `scheduler = "flow_sigmas"`) and must agree: its noise bit for bit, every frame within
//! PSNR ≥ 40 dB of diffusers' float frames (an 8-bit frame's own rounding costs ≈ 59 dB).

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
    cases: Vec<Case>,
    width: u32,
    height: u32,
    frames: u32,
    shift: f64,
    cfg: f64,
    /// The A14B expert switch; absent for TI2V-5B (one model).
    boundary: Option<f64>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    negative: String,
    seed: u64,
    steps: u32,
    /// Image-to-video (the fixture's first-frame.png) or text-to-video.
    image: bool,
}

/// What a fixture runs on: the diffusion model(s) and the VAE, relative to the repository.
struct Models {
    fixture: &'static str,
    diffusion: &'static str,
    low_noise: Option<&'static str>,
    vae: &'static str,
    /// Latent channels and spatial compression of the VAE.
    channels: usize,
    spatial: usize,
}

const WAN21_T2V: Models = Models {
    fixture: "tests/fixtures/parity/wan21_t2v_pipeline",
    diffusion: "manifests/tiny/wan-tiny.safetensors",
    low_noise: None,
    vae: "tests/fixtures/parity/wan_vae/vae.safetensors",
    channels: 16,
    spatial: 8,
};

const A14B_T2V: Models = Models {
    fixture: "tests/fixtures/parity/wan22_t2v_pipeline",
    diffusion: "manifests/tiny/wan22-high-noise-tiny.safetensors",
    low_noise: Some("manifests/tiny/wan22-low-noise-tiny.safetensors"),
    vae: "tests/fixtures/parity/wan_vae/vae.safetensors",
    channels: 16,
    spatial: 8,
};

const A14B_I2V: Models = Models {
    fixture: "tests/fixtures/parity/wan22_i2v_pipeline",
    diffusion: "manifests/tiny/wan22-i2v-high-noise-tiny.safetensors",
    low_noise: Some("manifests/tiny/wan22-i2v-low-noise-tiny.safetensors"),
    vae: "tests/fixtures/parity/wan_vae/vae.safetensors",
    channels: 16,
    spatial: 8,
};

const TI2V_5B: Models = Models {
    fixture: "tests/fixtures/parity/wan22_ti2v_pipeline",
    diffusion: "manifests/tiny/wan22-ti2v-5b-tiny.safetensors",
    low_noise: None,
    vae: "tests/fixtures/parity/wan22_vae/vae.safetensors",
    channels: 48,
    spatial: 16,
};

fn fixture(models: &Models) -> (Meta, HashMap<String, Tensor>) {
    let dir = repo_root().join(models.fixture);
    let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap_or_else(|e| {
        panic!("meta.json: {e} (regenerate with tools/parity_wan_pipelines.py)")
    });
    let meta: Meta = serde_json::from_str(&meta).unwrap();
    let t = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)
        .unwrap_or_else(|e| panic!("expected.safetensors: {e}"));
    (meta, t)
}

/// The fixture's jobs on its models and the tiny umT5, at absolute paths.
fn manifest(dir: &Path, models: &Models, meta: &Meta) -> std::path::PathBuf {
    let root = repo_root();
    let tiny = |f: &str| root.join("manifests/tiny").join(f).display().to_string();
    let at = |f: &str| root.join(f).display().to_string();
    let (low_model, low_key) = match (models.low_noise, meta.boundary) {
        (Some(f), Some(b)) => (
            format!("[models.low]\nfamily = \"wan\"\nfile = \"{}\"\n", at(f)),
            format!("diffusion_low_noise = \"low\"\nboundary = {b}\n"),
        ),
        _ => (String::new(), String::new()),
    };
    let mut text = format!(
        r#"[settings]
output_root = "out"
compute = "cpu"

[models.dit]
family = "wan"
file = "{dit}"

{low_model}
[models.umt5]
family = "umt5"
file = "{umt5}"
tokenizer = "{tok}"

[models.vae]
family = "wan-vae"
file = "{vae}"

[pipelines.video]
text_encoders = ["umt5"]
vae = "vae"
diffusion = "dit"
{low_key}
[defaults]
width = {width}
height = {height}
frames = {frames}
shift = {shift}
cfg = {cfg}
sampler = "uni_pc_bh2"
scheduler = "flow_sigmas"
output = "{{job}}.png"
"#,
        dit = at(models.diffusion),
        umt5 = tiny("umt5-tiny.safetensors"),
        tok = tiny("umt5-tokenizer.json"),
        vae = at(models.vae),
        width = meta.width,
        height = meta.height,
        frames = meta.frames,
        shift = meta.shift,
        cfg = meta.cfg,
    );
    let image = root.join(models.fixture).join("first-frame.png");
    for (i, c) in meta.cases.iter().enumerate() {
        text += &format!(
            "\n[[jobs]]\nname = \"case{i}\"\nprompt = \"{}\"\nnegative_prompt = \"{}\"\nseed = {}\nsteps = {}\n",
            c.prompt, c.negative, c.seed, c.steps,
        );
        if c.image {
            text += &format!("init_image = \"{}\"\n", image.display());
        }
    }
    let m = dir.join("parity.toml");
    std::fs::write(&m, text).unwrap();
    m
}

#[test]
fn wan21_text_to_video_matches_diffusers_wan_pipeline() {
    matches_diffusers(&WAN21_T2V);
}

#[test]
fn a14b_text_to_video_matches_diffusers_wan_pipeline_with_two_experts() {
    matches_diffusers(&A14B_T2V);
}

#[test]
fn a14b_image_to_video_matches_diffusers_wan_image_to_video_pipeline() {
    matches_diffusers(&A14B_I2V);
}

#[test]
fn ti2v_5b_text_and_image_to_video_match_diffusers_with_expand_timesteps() {
    matches_diffusers(&TI2V_5B);
}

fn matches_diffusers(models: &Models) {
    let (meta, expected) = fixture(models);
    let latent = models.channels
        * ((meta.frames as usize - 1) / 4 + 1)
        * (meta.height as usize / models.spatial)
        * (meta.width as usize / models.spatial);
    for (i, c) in meta.cases.iter().enumerate() {
        let noise = &expected[&format!("noise.{i}")];
        assert_eq!(noise.elem_count(), latent, "case {i}: noise size");
        assert_is_mgpus_noise(&format!("{} case {i}", models.fixture), c.seed, noise);
    }

    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), models, &meta);
    let o = mgpu(&["run", m.to_str().unwrap(), "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut results = vec![];
    for (i, c) in meta.cases.iter().enumerate() {
        let frames =
            mgpu::output::decode_apng_file(&dir.path().join(format!("out/case{i}.png"))).unwrap();
        let video = &expected[&format!("video.{i}")];
        assert_eq!(video.dim(0).unwrap(), frames.len());
        assert_eq!(frames.len(), meta.frames as usize);
        let mut worst = f64::INFINITY;
        let mut each = vec![];
        for (f, frame) in frames.iter().enumerate() {
            let psnr = psnr_u8(frame.as_raw(), &video.get(f).unwrap());
            each.push(format!("{psnr:.1}"));
            worst = worst.min(psnr);
        }
        eprintln!(
            "{} case {i} ({:?}, seed {}, {} steps): frames' PSNR {} dB",
            models.fixture,
            c.prompt,
            c.seed,
            c.steps,
            each.join(" ")
        );
        results.push((i, worst));
    }
    for (i, worst) in results {
        let c = &meta.cases[i];
        assert!(
            worst >= 40.0,
            "{} case {i} ({:?}, seed {}): a frame is at PSNR {worst:.1} dB against diffusers, expected ≥ 40",
            models.fixture,
            c.prompt,
            c.seed
        );
    }
}
