//! Wan 2.2 A14B image-to-video: the conditioning layout, the tiny I2V demo through the real
//! binary (check, run, record, resume), and the check-time init image diagnostics.
//!
//! The conditioning is checked twice: against values derived by hand from the reference's
//! description (`WanImageToVideoPipeline.prepare_latents`: pixel-frame mask 1 on frame 0, its
//! first entry repeated 4 times, regrouped 4 per latent frame; mask channels first, then the
//! normalised latent), and against diffusers' own output on the tiny parity VAE
//! (`tools/parity_wan22_i2v.py`).

mod common;
mod parity_common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{mgpu, repo_root, stderr};
use mgpu::models::spec::{Autoencoder, DiffusionModel};
use mgpu::models::wan::{self, WanDit};
use mgpu::models::wan_vae::{Config as VaeConfig, WanVae};
use mgpu::models::{spec, tiny};

#[test]
fn the_conditioning_is_the_first_frame_mask_then_the_videos_latent() {
    // The VAE: tiny random weights, as the demo's.
    let vcfg = VaeConfig::tiny();
    let layout = spec::vae_layout::<WanVae>(&vcfg).unwrap();
    let w = tiny::weights_for(&layout, 3).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(w.into_iter().collect(), DType::F32, &Device::Cpu);
    let [enc, _] = WanVae::units();
    let e = WanVae::encoder(&vcfg, vb.pp(enc), vb.clone()).unwrap();
    // 9 frames of 32 × 48: the image, then 8 zero frames → 3 latent frames of 4 × 6.
    let img = Tensor::rand(-1f32, 1.0, (1, 3, 32, 48), &Device::Cpu).unwrap();
    let zeros = Tensor::zeros((8, 3, 32, 48), DType::F32, &Device::Cpu).unwrap();
    let video = Tensor::cat(&[&img, &zeros], 0).unwrap();
    let z = WanVae::encode(&e, &video).unwrap();
    assert_eq!(z.dims(), &[1, 16, 3, 4, 6]);
    let cfg = wan::Config::tiny_i2v();
    assert_eq!(WanDit::condition_channels(&cfg), 20);
    assert_eq!(WanDit::condition_channels(&wan::Config::tiny()), 0);
    let c = WanDit::image_condition(&cfg, &z).unwrap();
    assert_eq!(c.dims(), &[1, 20, 3, 4, 6]);
    // Mask, derived by hand for 9 pixel frames: [1, 0 ×8] → first entry ×4 → [1,1,1,1, 0 ×8]
    // → 3 groups of 4 (one per latent frame) → channel c of frame t is entry 4t + c.
    let expected_mask = [[1.0f32, 0.0, 0.0]; 4];
    let mask = c.narrow(1, 0, 4).unwrap();
    for (ch, frames) in expected_mask.iter().enumerate() {
        for (t, &v) in frames.iter().enumerate() {
            let plane = mask
                .narrow(1, ch, 1)
                .and_then(|m| m.narrow(2, t, 1))
                .and_then(|m| m.flatten_all())
                .and_then(|m| m.to_vec1::<f32>())
                .unwrap();
            assert!(plane.iter().all(|&x| x == v), "mask channel {ch} frame {t}");
        }
    }
    // Then the latent, unchanged.
    let lat = c.narrow(1, 4, 16).unwrap();
    assert_eq!(
        lat.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        z.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // A T2V model takes no conditioning.
    assert!(WanDit::image_condition(&wan::Config::tiny(), &z).is_err());
    // The latent shape the sampler denoises is the 16-channel one for both kinds.
    assert_eq!(
        WanDit::latent_shape(&cfg, 48, 32, 9),
        WanDit::latent_shape(&wan::Config::tiny(), 48, 32, 9)
    );
}

/// A copy of manifests/demo-wan22-i2v.toml (through `edit`) and manifests/tiny/.
fn i2v_demo_with(edit: impl FnOnce(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("manifests/demo-wan22-i2v.toml")).unwrap();
    let m = dir.path().join("demo-wan22-i2v.toml");
    std::fs::write(&m, edit(text)).unwrap();
    std::fs::create_dir_all(dir.path().join("tiny")).unwrap();
    for e in std::fs::read_dir(root.join("manifests/tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("tiny").join(e.file_name())).unwrap();
    }
    (dir, m)
}

fn record_of(path: &Path) -> serde_json::Value {
    let meta = mgpu::output::read_output_metadata(path).unwrap();
    serde_json::to_value(meta.record.unwrap()).unwrap()
}

#[test]
fn i2v_demo_runs_records_the_image_and_resumes() {
    let (dir, m) = i2v_demo_with(|t| t);
    let o = mgpu(&["check", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let sunset = dir.path().join("out/demo-wan22-i2v/sunset-42.png");
    let r = record_of(&sunset);
    let bytes = std::fs::read(dir.path().join("tiny/i2v-first-frame.png")).unwrap();
    assert_eq!(r["init_image"], "tiny/i2v-first-frame.png", "{r}");
    assert_eq!(
        r["init_image_sha256"],
        mgpu::exec::queue::sha256_hex(&bytes),
        "{r}"
    );
    assert_eq!(r["expert_boundary"], 0.9, "{r}");
    assert_eq!(r["denoise"], 1.0, "{r}");
    let frames = mgpu::output::decode_apng_file(&sunset).unwrap();
    assert_eq!((frames.len(), frames[0].dimensions()), (9, (96, 64)));

    // Resume: up to date. Another first frame: the job hash changes, the clip is remade and
    // differs.
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("0 made, 2 up to date"),
        "{}",
        stderr(&o)
    );
    image::RgbImage::from_fn(64, 96, |x, y| {
        image::Rgb([(x * 3) as u8, 200, (y * 2) as u8])
    })
    .save(dir.path().join("tiny/i2v-first-frame.png"))
    .unwrap();
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert!(stderr(&o).contains("2 made"), "{}", stderr(&o));
    let other = mgpu::output::decode_apng_file(&sunset).unwrap();
    assert_ne!(frames, other, "the init image must change the clip");
}

#[test]
fn init_image_problems_are_check_errors_and_i2v_needs_i2v_weights() {
    // Not decodable: an error at the job's `init_image`, with file and line.
    let (dir, m) =
        i2v_demo_with(|t| t.replace("tiny/i2v-first-frame.png", "tiny/umt5-tokenizer.json"));
    let o = mgpu(&["check", m.to_str().unwrap()]);
    let e = stderr(&o).replace(&dir.path().display().to_string(), "[DIR]");
    assert_eq!(o.status.code(), Some(1), "{e}");
    insta::assert_snapshot!("i2v_undecodable_init_image", e);

    // An img2img init image of the wrong size: a check error naming both sizes.
    let (dir, m) = common::demo_with(|t| {
        t.replace(
            "seed = 42\ncount = 2\n",
            "seed = 42\ncount = 2\ninit_image = \"tiny/i2v-first-frame.png\"\n",
        )
    });
    let o = mgpu(&["check", m.to_str().unwrap()]);
    let e = stderr(&o).replace(&dir.path().display().to_string(), "[DIR]");
    assert_eq!(o.status.code(), Some(1), "{e}");
    insta::assert_snapshot!("img2img_init_image_of_the_wrong_size", e);

    // `denoise` is refused for image-to-video.
    let (_d, m) = i2v_demo_with(|t| t.replace("seed = 42\n", "seed = 42\ndenoise = 0.5\n"));
    let e = stderr(&mgpu(&["check", m.to_str().unwrap()]));
    assert!(e.contains("image-to-video has no denoise strength"), "{e}");

    // Text-to-video experts with an init image fail the job clearly at run time.
    let (_d, m) = i2v_demo_with(|t| t.replace("wan22-i2v-", "wan22-"));
    let o = mgpu(&["run", m.to_str().unwrap()]);
    let e = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "{e}");
    assert!(
        e.contains("is a text-to-video model: `init_image` needs image-to-video weights"),
        "{e}"
    );
}

/// The assembled conditioning against diffusers' `WanImageToVideoPipeline.prepare_latents`
/// (fixture from `tools/parity_wan22_i2v.py`, on the tiny VAE of `tools/parity_wan_vae.py`).
#[test]
fn the_conditioning_matches_diffusers() {
    let io = parity_common::load("wan22_i2v", "condition.safetensors");
    let w = parity_common::load("wan_vae", "vae.safetensors");
    let vcfg = VaeConfig::tiny();
    let vb = candle_nn::VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
    let [enc, _] = WanVae::units();
    let e = WanVae::encoder(&vcfg, vb.pp(enc), vb.clone()).unwrap();
    let image = &io["image"];
    let zeros = Tensor::zeros((8, 3, 32, 48), DType::F32, &Device::Cpu).unwrap();
    let video = Tensor::cat(&[image, &zeros], 0).unwrap();
    let z = WanVae::encode(&e, &video).unwrap();
    let ours = WanDit::image_condition(&wan::Config::tiny_i2v(), &z).unwrap();
    let theirs = &io["condition"];
    assert_eq!(ours.dims(), theirs.dims());
    let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // The mask exactly; the latent to the VAE parity test's tolerance.
    let mask_len = 4 * 3 * 4 * 6;
    assert_eq!(a[..mask_len], b[..mask_len], "mask");
    parity_common::assert_close_within("conditioning vs diffusers", &ours, theirs, 1e-4);
}

#[test]
fn make_tiny_writes_the_committed_i2v_experts_and_refuses_i2v_alone() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().to_str().unwrap();
    let o = mgpu(&["make-tiny", "wan", "--experts", "--i2v", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for f in [
        "wan22-i2v-high-noise-tiny.safetensors",
        "wan22-i2v-low-noise-tiny.safetensors",
    ] {
        assert_eq!(
            std::fs::read(d.path().join(f)).unwrap(),
            std::fs::read(repo_root().join("manifests/tiny").join(f)).unwrap(),
            "{f}: regenerate with `mgpu make-tiny wan --experts --i2v --out manifests/tiny`"
        );
    }
    let h = mgpu::weights::safetensors::read_header(
        &d.path().join("wan22-i2v-high-noise-tiny.safetensors"),
    )
    .unwrap();
    let pe = h
        .tensors
        .iter()
        .find(|t| t.name == "patch_embedding.weight")
        .unwrap();
    assert_eq!(pe.shape[1], 36, "{:?}", pe.shape);
    let o = mgpu(&["make-tiny", "wan", "--i2v", "--out", out]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("make-tiny wan --experts --i2v"),
        "{}",
        stderr(&o)
    );
}
