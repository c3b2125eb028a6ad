//! Wan 2.2 TI2V-5B through the executor and the binary: the tiny TI2V pipeline
//! (manifests/tiny/wan22-ti2v-5b-tiny.safetensors and wan22-vae-tiny.safetensors, from
//! `mgpu make-tiny wan --ti2v` and `mgpu make-tiny wan-vae --ti2v`), text-to-video and
//! image-to-video.
//!
//! - Every placement (resident, host, disk) and every batching gives the same latent bits and
//!   frames as the all-resident batch-1 run, for both kinds of job.
//! - Image-to-video: the result's latent frame 0 is the init image's latent, exactly; the
//!   decoder is causal, so the clip's first frame depends on the image alone (not on the seed
//!   or the prompt), while the rest of the clip depends on all three.
//! - A Wan 2.1 VAE with the 48-channel model is refused naming both files; a 16-channel
//!   text-to-video model with an `init_image` fails the job saying what is needed.
//! - The demo manifest (manifests/demo-wan22-ti2v.toml) runs through the binary.

mod common;
mod exec_common;

use std::path::Path;
use std::sync::Arc;

use exec_common::{assert_same, load, options, run, tasks, HW};
use mgpu::exec::pipeline::{generator, UnitHome};
use mgpu::exec::ImageTask;
use mgpu::manifest::Manifest;
use mgpu::{hardware, plan};

fn manifest(out: &Path, model: &str, vae: &str, jobs: &str) -> Arc<Manifest> {
    load(&format!(
        r#"
[settings]
output_root = "{out}"
compute = "cpu"

[models.ti2v]
family = "wan"
file = "{model}"

[models.umt5]
family = "umt5"
file = "tiny/umt5-tiny.safetensors"
tokenizer = "tiny/umt5-tokenizer.json"

[models.vae]
family = "wan-vae"
file = "{vae}"

[pipelines.ti2v]
diffusion = "ti2v"
text_encoders = ["umt5"]
vae = "vae"

[defaults]
width = 96
height = 64
frames = 9
steps = 3
negative_prompt = "blurry"
{jobs}
"#,
        out = out.display()
    ))
}

const MODEL: &str = "tiny/wan22-ti2v-5b-tiny.safetensors";
const VAE: &str = "tiny/wan22-vae-tiny.safetensors";

/// Task 0: text-to-video; tasks 1, 2: image-to-video from the same image, two seeds; task 3:
/// image-to-video with another prompt and Heun (two evaluations per step).
const JOBS: &str = r#"
[[jobs]]
name = "hill"
prompt = "clouds over a green hill"
seed = 42

[[jobs]]
name = "sunset"
prompt = "the sun sets over a green hill"
init_image = "tiny/i2v-first-frame.png"
seed = 7
count = 2

[[jobs]]
name = "storm"
prompt = "a storm rolls in"
init_image = "tiny/i2v-first-frame.png"
seed = 7
sampler = "heun"
"#;

#[test]
fn text_and_image_to_video_give_the_same_bits_in_every_placement() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let m = manifest(&out, MODEL, VAE, JOBS);
    let n = tasks(&m).len();
    assert_eq!(n, 4);
    let reference = run(&m, options(&cache), &[&[0], &[1], &[2], &[3]]);
    for i in 0..n {
        let r = reference.ok(i);
        // 9 frames of 96 × 64 through the Wan 2.2 VAE: 3 latent frames of 4 × 6.
        assert_eq!(r.latent_shape, vec![1, 48, 3, 4, 6], "task {i}");
        assert_eq!(r.frames.len(), 9, "task {i}");
        assert_eq!(r.frames[0].dimensions(), (96, 64), "task {i}");
    }
    // Latent frame 0 of `[1, 48, 3, 4, 6]`: the first 24 values of each channel's 72.
    let frame0 = |i: usize| -> Vec<f32> {
        let l = &reference.ok(i).latent;
        (0..48)
            .flat_map(|c| l[c * 72..c * 72 + 24].to_vec())
            .collect()
    };
    let pixels = |i: usize, f: usize| reference.ok(i).frames[f].as_raw().clone();
    // Image-to-video: latent frame 0 is the image's latent whatever the seed and prompt; the
    // decoded first frame is therefore the same too, and the rest of the clip differs.
    assert!(frame0(1) == frame0(2) && frame0(1) == frame0(3));
    assert!(frame0(0) != frame0(1), "text-to-video samples frame 0");
    assert!(pixels(1, 0) == pixels(2, 0) && pixels(1, 0) == pixels(3, 0));
    assert!(
        pixels(1, 8) != pixels(2, 8),
        "the seed changes the later frames"
    );
    assert!(
        pixels(1, 8) != pixels(3, 8),
        "the prompt changes the later frames"
    );

    // Batched in any grouping, streamed from host memory and from disk: the same bits.
    let batched = run(&m, options(&cache), &[&[3, 0], &[2, 1]]);
    let mut o = options(&cache);
    o = o.with_home("ti2v", "blocks.0", UnitHome::Host);
    o = o.with_home("ti2v", "blocks.1", UnitHome::Disk);
    for u in ["encoder", "decoder"] {
        o = o.with_home("vae", u, UnitHome::Host);
    }
    let streamed = run(&m, o, &[&[0, 1, 2, 3]]);
    for (other, what) in [(&batched, "batched"), (&streamed, "streamed, one batch")] {
        for i in 0..n {
            assert_same(reference.ok(i), other.ok(i), &format!("{what}, task {i}"));
            for (k, (a, b)) in reference
                .ok(i)
                .frames
                .iter()
                .zip(&other.ok(i).frames)
                .enumerate()
            {
                assert!(a.as_raw() == b.as_raw(), "{what}, task {i}: frame {k}");
            }
        }
    }
}

/// Runs the first task of `m` through plan → generator, returning its error text.
fn first_task_error(m: &Arc<Manifest>, cache: &Path) -> String {
    let hw = hardware::file::parse(Path::new("hw.toml"), HW).unwrap();
    let inv = plan::manifest::read_inventories(m).unwrap_or_else(|d| panic!("{}", d.render(false)));
    let p = plan::plan(&plan::manifest::request(m, &inv), &hw).unwrap_or_else(|e| panic!("{e:?}"));
    let all = tasks(m);
    let mut g = generator(m.clone(), Arc::new(p), Arc::new(hw), options(cache)).unwrap();
    let batch: Vec<ImageTask> = all[..1].to_vec();
    match g.prepare(&all, &mut |_| {}) {
        Err(e) => e.to_string(),
        Ok(()) => match g.run_batch(&batch, &mut |_| {}) {
            Err(e) => e.to_string(),
            Ok(r) => match r.into_iter().next() {
                Some(Err(e)) => e.to_string(),
                _ => panic!("the task ran"),
            },
        },
    }
}

#[test]
fn mismatched_vaes_and_t2v_weights_with_an_image_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let image_job =
        "[[jobs]]\nname = \"s\"\nprompt = \"p\"\ninit_image = \"tiny/i2v-first-frame.png\"\n";
    // TI2V-5B with the Wan 2.1 VAE.
    let m = manifest(&out, MODEL, "tiny/wan-vae-tiny.safetensors", image_job);
    let e = first_task_error(&m, &cache);
    for part in [
        "model `ti2v` (",
        "wan22-ti2v-5b-tiny.safetensors) denoises 48-channel latents, but the pipeline's VAE `vae` (",
        "wan-vae-tiny.safetensors) is the Wan 2.1 VAE",
        "with 16-channel latents",
        "(Wan 2.2 TI2V-5B: the Wan 2.2 VAE, wan2.2_vae.safetensors)",
    ] {
        assert!(e.contains(part), "{part:?} not in: {e}");
    }
    // 80 × 64 passes the manifest's Wan multiple (16) but not TI2V-5B's 32.
    let m = manifest(
        &out,
        MODEL,
        VAE,
        "[[jobs]]\nname = \"s\"\nprompt = \"p\"\nwidth = 80\n",
    );
    let e = first_task_error(&m, &cache);
    assert!(
        e.contains("`ti2v` needs a width and height that are multiples of 32")
            && e.contains("not 80×64: use 64×64"),
        "{e}"
    );
    // A Wan 2.1 text-to-video model (with its own VAE) given a first frame: the job fails
    // saying which weights take one.
    let m = manifest(
        &out,
        "tiny/wan-tiny.safetensors",
        "tiny/wan-vae-tiny.safetensors",
        image_job,
    );
    let e = first_task_error(&m, &cache);
    assert!(
        e.contains("`ti2v` is a text-to-video model: `init_image` needs image-to-video weights")
            && e.contains("Wan 2.2 TI2V-5B, 48"),
        "{e}"
    );
}

#[test]
fn the_ti2v_demo_runs_through_the_binary() {
    let root = common::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("manifests/demo-wan22-ti2v.toml")).unwrap();
    let m = dir.path().join("demo-wan22-ti2v.toml");
    std::fs::write(&m, text).unwrap();
    std::fs::create_dir_all(dir.path().join("tiny")).unwrap();
    for f in [
        "wan22-ti2v-5b-tiny.safetensors",
        "wan22-vae-tiny.safetensors",
        "umt5-tiny.safetensors",
        "umt5-tokenizer.json",
        "i2v-first-frame.png",
    ] {
        std::fs::copy(
            root.join("manifests/tiny").join(f),
            dir.path().join("tiny").join(f),
        )
        .unwrap();
    }
    let o = common::mgpu(&["check", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    let o = common::mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    for (clip, init) in [("hill-42.png", false), ("sunset-7.png", true)] {
        let path = dir.path().join("out/demo-wan22-ti2v").join(clip);
        let frames = mgpu::output::decode_apng_file(&path).unwrap();
        assert_eq!(
            (frames.len(), frames[0].dimensions()),
            (9, (128, 96)),
            "{clip}"
        );
        let meta = mgpu::output::read_output_metadata(&path).unwrap();
        let r = serde_json::to_value(meta.record.unwrap()).unwrap();
        assert_eq!(r["init_image"].is_string(), init, "{clip}: {r}");
    }
}
