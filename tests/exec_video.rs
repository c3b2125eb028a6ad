//! Issue #10 through the executor: the tiny Wan 2.1 pipeline (manifests/tiny/, made by
//! `mgpu make-tiny wan|wan-vae|umt5`) run through the same [`Generator`] as FLUX. Every
//! placement of every model (resident, host, disk, mixed) and every batching gives the same
//! latent bits and the same frames as the all-resident batch-1 run; classifier-free guidance
//! evaluates the prompt and the negative prompt in one pass over the weights (one fetch per
//! block serves both); the outputs are videos of the asked frame count.
//!
//! [`Generator`]: mgpu::exec::pipeline::Generator

mod exec_common;

use std::path::Path;
use std::sync::Arc;

use exec_common::{assert_all_frames_same, load, options, run, tasks, HW};
use mgpu::exec::pipeline::{generator, PipelineOptions, UnitHome};
use mgpu::exec::ImageTask;
use mgpu::manifest::Manifest;
use mgpu::{hardware, plan};

fn wan_manifest(out: &Path, jobs: &str) -> Arc<Manifest> {
    wan_manifest_with_vae(out, "tiny/wan-vae-tiny.safetensors", jobs)
}

fn wan_manifest_with_vae(out: &Path, vae: &str, jobs: &str) -> Arc<Manifest> {
    load(&format!(
        r#"
[settings]
output_root = "{out}"
compute = "cpu"

[models.wan]
family = "wan"
file = "tiny/wan-tiny.safetensors"

[models.umt5]
family = "umt5"
file = "tiny/umt5-tiny.safetensors"
tokenizer = "tiny/umt5-tokenizer.json"

[models.vae]
family = "wan-vae"
file = "{vae}"

[pipelines.t2v]
diffusion = "wan"
text_encoders = ["umt5"]
vae = "vae"

[defaults]
width = 48
height = 32
frames = 9
steps = 3
negative_prompt = "blurry"
{jobs}
"#,
        out = out.display()
    ))
}

const JOBS: &str = r#"
[[jobs]]
name = "fox"
prompt = "a red fox running through snow"
seed = 42
count = 2

[[jobs]]
name = "waves"
prompt = "waves at sunset"
seed = 7
sampler = "euler"
"#;

/// Every unit of the tiny Wan pipeline homed on `home`.
fn everything_on(mut o: PipelineOptions, home: UnitHome) -> PipelineOptions {
    for u in ["blocks.0", "blocks.1"] {
        o = o.with_home("wan", u, home);
    }
    for u in ["encoder.block.0", "encoder.block.1"] {
        o = o.with_home("umt5", u, home);
    }
    for u in ["encoder", "decoder"] {
        o = o.with_home("vae", u, home);
    }
    o
}

#[test]
fn wan_placements_and_batches_give_identical_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let m = wan_manifest(&out, JOBS);
    let n = tasks(&m).len();
    assert_eq!(n, 3);
    let reference = run(&m, options(&cache), &[&[0], &[1], &[2]]);
    let r0 = reference.ok(0);
    // 9 frames → 3 latent frames of 32/8 × 48/8.
    assert_eq!(r0.latent_shape, vec![1, 16, 3, 4, 6]);
    assert_eq!(r0.frames.len(), 9);
    assert_eq!(r0.rgb().dimensions(), (48, 32));
    assert_ne!(r0.latent, reference.ok(1).latent, "seeds differ");
    assert_ne!(
        r0.frames[0].as_raw(),
        r0.frames[8].as_raw(),
        "frames of a clip differ"
    );
    assert!(reference.fetched().iter().all(|&f| f == 0));

    let batched = run(&m, options(&cache), &[&[0, 1], &[2]]);
    assert_all_frames_same(&reference, &batched, n, "resident, batch of 2");

    let half = options(&cache).with_home("wan", "blocks.1", UnitHome::Host);
    let host = run(&m, half, &[&[0, 1], &[2]]);
    assert_all_frames_same(&reference, &host, n, "half the blocks from host memory");
    // One block fetched per pass: the prompt and the negative prompt of both jobs share it.
    assert!(
        host.fetched().iter().all(|&f| f == 1),
        "{:?}",
        host.fetched()
    );

    let disk = run(
        &m,
        everything_on(options(&cache), UnitHome::Disk),
        &[&[2, 0, 1]],
    );
    assert_all_frames_same(&reference, &disk, n, "everything streamed from disk");
    let all_host = run(
        &m,
        everything_on(options(&cache), UnitHome::Host),
        &[&[1], &[0, 2]],
    );
    assert_all_frames_same(&reference, &all_host, n, "everything from host memory");
}

#[test]
fn guidance_uses_the_negative_prompt_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let job = |extra: &str| {
        format!("[[jobs]]\nname = \"fox\"\nprompt = \"a red fox\"\nseed = 3\n{extra}\n")
    };
    let guided = run(&wan_manifest(&out, &job("")), options(&cache), &[&[0]]);
    let other_neg = run(
        &wan_manifest(&out, &job("negative_prompt = \"sharp, bright\"")),
        options(&cache),
        &[&[0]],
    );
    let unguided = run(
        &wan_manifest(&out, &job("cfg = 1.0")),
        options(&cache),
        &[&[0]],
    );
    let (g, o, u) = (guided.ok(0), other_neg.ok(0), unguided.ok(0));
    assert_ne!(g.latent, o.latent, "the negative prompt changes the result");
    assert_ne!(g.latent, u.latent, "cfg 1 skips guidance");
    assert_eq!(g.record.cfg_scale, 5.0);
    assert_eq!(g.record.negative_prompt.as_deref(), Some("blurry"));
    assert_eq!(u.record.negative_prompt, None);
    assert_eq!((g.record.frames, g.record.fps), (Some(9), Some(16)));
    // Three prompts were encoded once each: two prompts' negative halves share "blurry".
    let encoded = guided
        .events
        .iter()
        .filter(|e| matches!(e, mgpu::exec::Event::Stage { stage, .. } if stage.starts_with("encoding")))
        .count();
    assert_eq!(encoded, 1);
}

/// A Wan 2.2 VAE file (the tiny parity fixture, original layout) in a Wan 2.1 pipeline: it
/// plans, and the pairing is refused before the VAE's weights are read, naming both files and
/// what fits, instead of failing on the latent shapes.
#[test]
fn a_wan22_vae_with_a_wan21_model_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let vae = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity/wan22_vae/vae.safetensors");
    let m = wan_manifest_with_vae(&out, &vae.display().to_string(), JOBS);
    let hw = hardware::file::parse(Path::new("hw.toml"), HW).unwrap();
    let inv =
        plan::manifest::read_inventories(&m).unwrap_or_else(|d| panic!("{}", d.render(false)));
    let p = plan::plan(&plan::manifest::request(&m, &inv), &hw).unwrap_or_else(|e| panic!("{e:?}"));
    let all = tasks(&m);
    let mut g = generator(m.clone(), Arc::new(p), Arc::new(hw), options(&cache)).unwrap();
    let mut events = Vec::new();
    let batch: Vec<ImageTask> = all[..1].to_vec();
    let msg = match g.prepare(&all, &mut |e| events.push(e)) {
        Err(e) => e.to_string(),
        Ok(()) => match g.run_batch(&batch, &mut |e| events.push(e)) {
            Err(e) => e.to_string(),
            Ok(r) => match r.into_iter().next() {
                Some(Err(e)) => e.to_string(),
                _ => panic!("a Wan 2.2 VAE ran in a Wan 2.1 pipeline"),
            },
        },
    };
    for part in [
        "model `wan` (",
        "wan-tiny.safetensors) denoises 16-channel latents, but the pipeline's VAE `vae` (",
        "wan22_vae/vae.safetensors) is the Wan 2.2 VAE",
        "with 48-channel latents",
        "the Wan 2.1 VAE, wan_2.1_vae.safetensors",
    ] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
}
