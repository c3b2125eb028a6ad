//! Wan 2.2 A14B image-to-video end to end against diffusers (issue 15).
//!
//! `tools/parity_wan22_i2v_pipeline.py` ran diffusers' `WanImageToVideoPipeline` (float32,
//! CPU) with the tiny demo's two image-to-video experts, the tiny umT5, the Wan VAE of the
//! parity fixtures, a seeded first frame and mgpu's initial noise — UniPC bh2 on Wan's flow σ
//! (shift 5), the experts switching at boundary 0.9, true CFG 3.5 against a negative prompt —
//! and committed the clips and the noise under tests/fixtures/parity/wan22_i2v_pipeline/.
//! Here `mgpu run` makes the same jobs from the same files (`sampler = "uni_pc_bh2"`,
//! `scheduler = "flow_sigmas"`) and must agree: its noise bit for bit, every frame within
//! PSNR ≥ 40 dB of diffusers' float frames (an 8-bit frame's own rounding costs ≈ 59 dB).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::{mgpu, repo_root, stderr};
use serde::Deserialize;

#[derive(Deserialize)]
struct Meta {
    cases: Vec<Case>,
    width: u32,
    height: u32,
    frames: u32,
    shift: f64,
    cfg: f64,
    boundary: f64,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    negative: String,
    seed: u64,
    steps: u32,
}

fn fixture_dir() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/parity/wan22_i2v_pipeline")
}

fn fixture() -> (Meta, HashMap<String, Tensor>) {
    let dir = fixture_dir();
    let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap_or_else(|e| {
        panic!("meta.json: {e} (regenerate with tools/parity_wan22_i2v_pipeline.py)")
    });
    let meta: Meta = serde_json::from_str(&meta).unwrap();
    let t = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)
        .unwrap_or_else(|e| panic!("expected.safetensors: {e}"));
    (meta, t)
}

/// The fixture's jobs on the tiny experts, umT5 and the parity VAE, at absolute paths.
fn manifest(dir: &Path, meta: &Meta) -> std::path::PathBuf {
    let root = repo_root();
    let tiny = |f: &str| root.join("manifests/tiny").join(f).display().to_string();
    let mut text = format!(
        r#"[settings]
output_root = "out"
compute = "cpu"

[models.i2v_high]
family = "wan"
file = "{high}"

[models.i2v_low]
family = "wan"
file = "{low}"

[models.umt5]
family = "umt5"
file = "{umt5}"
tokenizer = "{tok}"

[models.vae]
family = "wan-vae"
file = "{vae}"

[pipelines.i2v]
text_encoders = ["umt5"]
vae = "vae"
diffusion = "i2v_high"
diffusion_low_noise = "i2v_low"
boundary = {boundary}

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
        high = tiny("wan22-i2v-high-noise-tiny.safetensors"),
        low = tiny("wan22-i2v-low-noise-tiny.safetensors"),
        umt5 = tiny("umt5-tiny.safetensors"),
        tok = tiny("umt5-tokenizer.json"),
        vae = root
            .join("tests/fixtures/parity/wan_vae/vae.safetensors")
            .display(),
        boundary = meta.boundary,
        width = meta.width,
        height = meta.height,
        frames = meta.frames,
        shift = meta.shift,
        cfg = meta.cfg,
    );
    let image = fixture_dir().join("first-frame.png");
    for (i, c) in meta.cases.iter().enumerate() {
        text += &format!(
            "\n[[jobs]]\nname = \"case{i}\"\nprompt = \"{}\"\nnegative_prompt = \"{}\"\nseed = {}\nsteps = {}\ninit_image = \"{}\"\n",
            c.prompt,
            c.negative,
            c.seed,
            c.steps,
            image.display()
        );
    }
    let m = dir.join("parity.toml");
    std::fs::write(&m, text).unwrap();
    m
}

#[test]
fn image_to_video_matches_diffusers_wan_image_to_video_pipeline() {
    let (meta, expected) = fixture();
    let latent = 16
        * ((meta.frames as usize - 1) / 4 + 1)
        * (meta.height as usize / 8)
        * (meta.width as usize / 8);
    for (i, c) in meta.cases.iter().enumerate() {
        let ours =
            mgpu::sample::noise::normal_f32(c.seed, mgpu::sample::noise::INITIAL_STREAM, latent);
        let theirs = expected[&format!("noise.{i}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ours.len(), theirs.len());
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
    let mut results = vec![];
    for (i, c) in meta.cases.iter().enumerate() {
        let frames =
            mgpu::output::decode_apng_file(&dir.path().join(format!("out/case{i}.png"))).unwrap();
        let want = expected[&format!("video.{i}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(frames.len(), meta.frames as usize);
        let per_frame = want.len() / frames.len();
        let mut worst = f64::INFINITY;
        let mut each = vec![];
        for (f, frame) in frames.iter().enumerate() {
            let w = &want[f * per_frame..(f + 1) * per_frame];
            assert_eq!(frame.as_raw().len(), w.len());
            let mse = frame
                .as_raw()
                .iter()
                .zip(w)
                .map(|(&a, &b)| (f64::from(a) / 255.0 - f64::from(b)).powi(2))
                .sum::<f64>()
                / w.len() as f64;
            let psnr = -10.0 * mse.max(1e-12).log10();
            each.push(format!("{psnr:.1}"));
            worst = worst.min(psnr);
        }
        eprintln!(
            "case {i} ({:?}, seed {}, {} steps): frames' PSNR {} dB",
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
            "case {i} ({:?}, seed {}): a frame is at PSNR {worst:.1} dB against diffusers, expected ≥ 40",
            c.prompt,
            c.seed
        );
    }
}
