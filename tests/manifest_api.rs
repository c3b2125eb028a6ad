//! The manifest's public API as later stages use it: defaults, resolved paths, per-image
//! outputs, warnings, `diagnostic_at`, `check_files`.

use std::path::Path;

use mgpu::alloc::{Allocation, Mode};
use mgpu::device::DeviceName;
use mgpu::manifest::{self, ComputeDtype, LoraMode};

const BASE: &str = r#"
[settings]
compute = "cuda:0"

[models.flux]
family = "flux"
file = "models/flux.safetensors"
allocation = "cuda:0,8gb;cuda:3,*"

[models.t5]
family = "t5"
file = "models/t5.safetensors"
tokenizer = "models/t5.json"
compute = "cpu"

[models.clip]
family = "clip-l"
file = "models/clip.safetensors"
tokenizer = "models/clip.json"

[models.vae]
family = "flux-vae"
file = "models/ae.safetensors"

[pipelines.dev]
diffusion = "flux"
text_encoders = ["clip", "t5"]
vae = "vae"
"#;

fn load(jobs: &str) -> manifest::Manifest {
    let text = format!("{BASE}\n{jobs}");
    match manifest::load_str(Path::new("/srv/m/manifest.toml"), &text) {
        Ok(m) => m,
        Err(d) => panic!("{}", d.render(false)),
    }
}

#[test]
fn defaults_are_applied_and_paths_resolved() {
    let m = load("[[jobs]]\nprompt = \"a fox\"\n");
    assert_eq!(m.dir, Path::new("/srv/m"));
    assert_eq!(m.settings.output_root, Path::new("/srv/m"));
    let flux = &m.models["flux"];
    assert_eq!(flux.file, Path::new("/srv/m/models/flux.safetensors"));
    assert_eq!(flux.compute, DeviceName::Cuda(0));
    assert_eq!(flux.dtype, ComputeDtype::Bf16);
    assert_eq!(flux.lora_mode, LoraMode::Bake);
    assert_eq!(flux.allocation.mode(), Some(Mode::Bytes));
    assert_eq!(m.models["t5"].dtype, ComputeDtype::F32, "f32 on the CPU");
    assert_eq!(m.models["vae"].allocation, Allocation::Auto);
    let j = &m.jobs[0];
    assert_eq!(
        (j.name.as_str(), j.pipeline.as_str(), j.seed, j.count),
        ("job1", "dev", 0, 1)
    );
    assert_eq!(
        (j.width, j.height, j.steps, j.guidance, j.denoise),
        (1024, 1024, 20, 3.5, 1.0)
    );
    assert_eq!(j.output.as_str(), "{job}-{seed}.png");
    assert_eq!(j.image(0).path, Path::new("/srv/m/job1-0.png"));
}

#[test]
fn defaults_table_then_job_keys_win() {
    let m = load(
        r#"
[defaults]
steps = 8
width = 512
output = "out/{job}/{index:03}.png"

[[jobs]]
name = "fox"
prompt = "a fox"
seed = 10
count = 3
steps = 4

[[jobs]]
prompt = "a cube"
init_image = "in/cube.png"
"#,
    );
    let fox = &m.jobs[0];
    assert_eq!((fox.steps, fox.width, fox.height), (4, 512, 1024));
    let imgs: Vec<(u32, u64, String)> = fox
        .images()
        .map(|i| (i.index, i.seed, i.path.display().to_string()))
        .collect();
    assert_eq!(
        imgs,
        [
            (0, 10, "/srv/m/out/fox/000.png".to_string()),
            (1, 11, "/srv/m/out/fox/001.png".to_string()),
            (2, 12, "/srv/m/out/fox/002.png".to_string())
        ]
    );
    let cube = &m.jobs[1];
    assert_eq!(cube.name, "job2");
    assert_eq!(
        cube.init_image.as_deref(),
        Some(Path::new("/srv/m/in/cube.png"))
    );
    assert_eq!(cube.denoise, 0.75);
    // Jobs serialize (the executor fingerprints them).
    let json = serde_json::to_value(fox).unwrap();
    assert_eq!(json["output"], "out/{job}/{index:03}.png");
    assert_eq!(json["sampler"], "euler");
}

#[test]
fn diagnostic_at_points_inside_the_allocation_string() {
    let m = load("[[jobs]]\nprompt = \"a fox\"\n");
    let Allocation::Expert(e) = &m.models["flux"].allocation else {
        panic!()
    };
    let entry = &e.entries[1];
    assert_eq!(entry.device, DeviceName::Cuda(3));
    let d = m.diagnostic_at(
        "flux",
        "allocation",
        Some(entry.span.device.clone()),
        "`cuda:3` is not on this machine",
        "devices here: cpu, cuda:0, cuda:1",
    );
    insta::assert_snapshot!(d.render(false), @r#"
    error: `cuda:3` is not on this machine
     --> /srv/m/manifest.toml:8:26
      |
    8 | allocation = "cuda:0,8gb;cuda:3,*"
      |                          ^^^^^^
      |
      = help: devices here: cpu, cuda:0, cuda:1
    "#);
    // A key that is not written points at the model's table and says a default applies.
    let d = m.diagnostic_at(
        "vae",
        "allocation",
        None,
        "quotas cannot hold the 160 MiB model",
        "use `auto`",
    );
    let text = d.render(false);
    assert!(
        text.contains("[models.vae]") && text.contains("`allocation` is not written here"),
        "{text}"
    );
    // Nested keys and jobs.
    assert!(m.span_of("models.t5.tokenizer").is_some());
    let d = m.diagnostic_at_path("jobs.0.prompt", Some(2..5), "x", "y");
    assert!(d.render(false).contains("prompt = \"a fox\""));
}

#[test]
fn warnings_do_not_make_a_manifest_invalid() {
    let text = format!(
        "{BASE}\n[models.wan]\nfamily = \"wan\"\nfile = \"wan.safetensors\"\n\n[models.spare]\nfamily = \"FLUX\"\nfile = \"x.gguf\"\nlora_mode = \"on_dequant\"\n\n[models.vae2]\nfamily = \"flux-vae\"\nfile = \"ae2.safetensors\"\nlora_mode = \"on_dequant\"\n\n[[jobs]]\nprompt = \"a fox\"\n"
    );
    let m = manifest::load_str(Path::new("w.toml"), &text).unwrap();
    insta::assert_snapshot!(m.warnings.render(false));
}

#[test]
fn check_files_reports_resolved_paths() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{BASE}\n[[jobs]]\nprompt = \"a fox\"\ninit_image = \"fox.png\"\n");
    let path = dir.path().join("m.toml");
    std::fs::write(&path, &text).unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    for f in [
        "flux.safetensors",
        "t5.safetensors",
        "t5.json",
        "clip.safetensors",
        "clip.json",
    ] {
        std::fs::write(dir.path().join("models").join(f), b"x").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("models/ae.safetensors")).unwrap();
    let m = manifest::load(&path).unwrap();
    let d = m.check_files();
    let text = d
        .render(false)
        .replace(&dir.path().display().to_string(), "[DIR]");
    insta::assert_snapshot!(text);
    assert_eq!(d.error_count(), 2);
}

#[test]
fn unreadable_manifest_is_one_error() {
    let d = manifest::load(Path::new("no/such/manifest.toml")).unwrap_err();
    assert_eq!(d.error_count(), 1);
    assert!(d
        .render(false)
        .starts_with("error: cannot read manifest `no/such/manifest.toml`"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Damaged manifests (a byte range replaced by arbitrary text) never panic, and every
    /// diagnostic points inside the text.
    #[test]
    fn damaged_manifests_never_panic(at in 0usize..2000, len in 0usize..12, junk in "\\PC{0,6}") {
        let text = std::fs::read_to_string("manifests/flux-dev-2gpu.toml").unwrap();
        let mut at = at.min(text.len());
        while !text.is_char_boundary(at) { at -= 1; }
        let mut end = (at + len).min(text.len());
        while !text.is_char_boundary(end) { end -= 1; }
        let damaged = format!("{}{}{}", &text[..at], junk, &text[end..]);
        let diags = match manifest::load_str(Path::new("d.toml"), &damaged) {
            Ok(m) => m.warnings,
            Err(d) => d,
        };
        for d in &diags {
            if let Some(l) = &d.primary {
                proptest::prop_assert!(l.span.end <= damaged.len(), "{:?} in {:?}", l.span, damaged);
            }
            let _ = d.render(true);
        }
    }
}
