//! Helpers shared by the executor's integration tests (`exec_placements`, `exec_failures`):
//! the tiny pipeline's manifest with extras, planning and running its tasks in chosen batches
//! through the [`mgpu::exec::pipeline::Generator`], and bit-for-bit comparisons.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use mgpu::exec::pipeline::{generator, HashMode, PipelineOptions, UnitHome};
use mgpu::exec::{Event, ImageTask, JobError, Rendered};
use mgpu::manifest::{self, Manifest};
use mgpu::{hardware, plan};

pub const HW: &str = "[[devices]]\nname = \"cpu\"\nmemory = \"16GiB\"\n";

/// The tiny pipeline with `flux_extra` added to the FLUX model's table and `jobs` appended.
pub fn manifest_text(out: &Path, flux_extra: &str, jobs: &str) -> String {
    format!(
        r#"
[settings]
output_root = "{out}"
compute = "cpu"

[models.flux]
family = "flux"
file = "tiny/flux-tiny.safetensors"
{flux_extra}

[models.t5]
family = "t5"
file = "tiny/t5-tiny.safetensors"
tokenizer = "tiny/t5-tokenizer.json"

[models.clip]
family = "clip-l"
file = "tiny/clip-tiny.safetensors"
tokenizer = "tiny/clip-tokenizer.json"

[models.vae]
family = "flux-vae"
file = "tiny/ae-tiny.safetensors"

[pipelines.tiny]
diffusion = "flux"
text_encoders = ["clip", "t5"]
vae = "vae"

[defaults]
width = 64
height = 48
steps = 2
sampler = "euler_ancestral"
{jobs}
"#,
        out = out.display()
    )
}

pub const JOBS: &str = r#"
[[jobs]]
name = "fox"
prompt = "a red fox in snow"
seed = 42
count = 3

[[jobs]]
name = "house"
prompt = "a lighthouse at night, long exposure"
seed = 7
"#;

/// One job of two images (seed 42): what the compact-weight tests run.
pub const TWO_FOXES: &str = r#"
[[jobs]]
name = "fox"
prompt = "a red fox in snow"
seed = 42
count = 2
"#;

pub fn load(text: &str) -> Arc<Manifest> {
    // The manifest "lives" in manifests/, so `tiny/…` resolves to the committed tiny models.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/exec-test.toml");
    Arc::new(manifest::load_str(&path, text).unwrap_or_else(|d| panic!("{}", d.render(false))))
}

pub fn tasks(m: &Manifest) -> Vec<ImageTask> {
    m.jobs
        .iter()
        .flat_map(|j| {
            let job = Arc::new(j.clone());
            j.images().map(move |image| ImageTask {
                job: job.clone(),
                image,
                hash: String::new(),
            })
        })
        .collect()
}

pub struct Run {
    pub results: Vec<Option<Result<Rendered, JobError>>>,
    pub events: Vec<Event>,
}

impl Run {
    pub fn ok(&self, i: usize) -> &Rendered {
        match &self.results[i] {
            Some(Ok(r)) => r,
            Some(Err(e)) => panic!("task {i} failed: {e}"),
            None => panic!("task {i} was not run"),
        }
    }
    pub fn notes(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Note { message } => Some(message.as_str()),
                _ => None,
            })
            .collect()
    }
    /// Units fetched by each engine pass of the diffusion model (one per `Step` pass).
    pub fn fetched(&self) -> Vec<usize> {
        self.events
            .iter()
            .flat_map(|e| match e {
                Event::Step { passes, .. } => passes.iter().map(|p| p.fetched_units).collect(),
                _ => Vec::new(),
            })
            .collect()
    }
    /// Bytes streamed by the diffusion model's first engine pass, over all links.
    pub fn first_pass_bytes(&self) -> u64 {
        self.events
            .iter()
            .find_map(|e| match e {
                Event::Step { passes, .. } => passes.first().map(|p| p.link_bytes.iter().sum()),
                _ => None,
            })
            .unwrap_or(0)
    }
    pub fn measured(&self, model: &str) -> Vec<(String, u64)> {
        self.events
            .iter()
            .find_map(|e| match e {
                Event::Loaded { model: m, measured } if m == model => Some(measured.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Loaded event for `{model}`"))
    }
}

/// Plans `m` for a CPU-only machine and runs its tasks in `batches` (indices into the task
/// list) through the generator.
pub fn run(m: &Arc<Manifest>, options: PipelineOptions, batches: &[&[usize]]) -> Run {
    let hw = hardware::file::parse(Path::new("hw.toml"), HW).unwrap();
    let inv = plan::manifest::read_inventories(m).unwrap_or_else(|d| panic!("{}", d.render(false)));
    let req = plan::manifest::request(m, &inv);
    let p = plan::plan(&req, &hw).unwrap_or_else(|e| panic!("{e:?}"));
    let all = tasks(m);
    let mut events = Vec::new();
    let mut g = generator(m.clone(), Arc::new(p), Arc::new(hw), options).unwrap();
    g.prepare(&all, &mut |e| events.push(e)).unwrap();
    let mut results: Vec<Option<Result<Rendered, JobError>>> =
        (0..all.len()).map(|_| None).collect();
    for b in batches {
        let batch: Vec<ImageTask> = b.iter().map(|&i| all[i].clone()).collect();
        let out = g.run_batch(&batch, &mut |e| events.push(e)).unwrap();
        assert_eq!(out.len(), b.len());
        for (&i, r) in b.iter().zip(out) {
            results[i] = Some(r);
        }
    }
    Run { results, events }
}

pub fn options(cache: &Path) -> PipelineOptions {
    PipelineOptions {
        cache_dir: Some(cache.to_path_buf()),
        hashes: HashMode::Off,
        ..Default::default()
    }
}

pub const FLUX_BLOCKS: [&str; 4] = [
    "double_blocks.0",
    "double_blocks.1",
    "single_blocks.0",
    "single_blocks.1",
];

/// Every unit of every model of the tiny pipeline homed on `home`.
pub fn everything_on(mut o: PipelineOptions, home: UnitHome) -> PipelineOptions {
    for u in FLUX_BLOCKS {
        o = o.with_home("flux", u, home);
    }
    for u in ["encoder.block.0", "encoder.block.1"] {
        o = o.with_home("t5", u, home);
    }
    for u in ["text_model.encoder.layers.0", "text_model.encoder.layers.1"] {
        o = o.with_home("clip", u, home);
    }
    for u in ["encoder", "decoder"] {
        o = o.with_home("vae", u, home);
    }
    o
}

/// Same latent bits, same shape, same pixels.
pub fn assert_same(a: &Rendered, b: &Rendered, what: &str) {
    assert_eq!(a.latent_shape, b.latent_shape, "{what}: latent shape");
    let bits = |r: &Rendered| r.latent.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(a) == bits(b), "{what}: latents differ");
    assert_eq!(
        a.rgb().dimensions(),
        b.rgb().dimensions(),
        "{what}: image size"
    );
    assert!(
        a.rgb().as_raw() == b.rgb().as_raw(),
        "{what}: pixels differ"
    );
}

pub fn assert_all_same(reference: &Run, other: &Run, n: usize, what: &str) {
    for i in 0..n {
        assert_same(reference.ok(i), other.ok(i), &format!("{what}, task {i}"));
    }
}

/// [`assert_all_same`] for videos: also every frame, task by task.
pub fn assert_all_frames_same(reference: &Run, other: &Run, n: usize, what: &str) {
    for i in 0..n {
        let (a, b) = (reference.ok(i), other.ok(i));
        assert_same(a, b, &format!("{what}, task {i}"));
        assert_eq!(a.frames.len(), b.frames.len(), "{what}, task {i}: frames");
        for (k, (fa, fb)) in a.frames.iter().zip(&b.frames).enumerate() {
            assert!(
                fa.as_raw() == fb.as_raw(),
                "{what}, task {i}: frame {k} differs"
            );
        }
    }
}
