//! `mgpu run` as a user runs it, on a copy of the tiny demo (manifests/tiny.toml).
//!
//! Invalid input, bad `--shard`, a locked output root, a fully up-to-date output root (resume
//! without loading a model), and whole runs through the real FLUX pipeline on the tiny
//! models: end to end, resumed, sharded.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{demo, mgpu, stderr};

use mgpu::exec::queue::{expand, TaskHasher};

/// The entries of an output root, but the file-hash cache folder that every run keeps there
/// (`.mgpu-cache`): temporary files and locks left behind would show.
fn outputs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".mgpu-cache")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn invalid_manifest_exits_1_with_diagnostics() {
    let (dir, m) = demo();
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("steps = 4", "steps = 0");
    std::fs::write(&m, text).unwrap();
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("tiny.toml: invalid"), "{}", stderr(&o));
    assert!(!dir.path().join("out").exists(), "nothing is written");
}

#[test]
fn missing_model_file_exits_1_naming_it() {
    let (dir, m) = demo();
    std::fs::remove_file(dir.path().join("tiny/ae-tiny.safetensors")).unwrap();
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("weights file not found"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("ae-tiny.safetensors"), "{}", stderr(&o));
}

#[test]
fn bad_shard_is_a_usage_error() {
    let (_dir, m) = demo();
    for (shard, want) in [
        ("4/4", "shard index 4 is out of range for 4 shards"),
        ("1/0", "has N = 0"),
        ("x", "is not a shard: expected `I/N`"),
    ] {
        let o = mgpu(&["run", m.to_str().unwrap(), "--shard", shard]);
        assert_eq!(o.status.code(), Some(2), "{shard}");
        assert!(stderr(&o).contains(want), "{shard}: {}", stderr(&o));
    }
}

#[test]
fn a_locked_output_root_is_refused_naming_the_holder() {
    let (dir, m) = demo();
    let root = dir.path().join("out/tiny");
    // This test process holds the lock (kernel lock and record): it must be respected, with
    // exit 75 (EX_TEMPFAIL, "try again later", #12) rather than 2.
    let me = std::process::id();
    let (lock, _) =
        mgpu::exec::queue::RunLock::acquire(&root, None, Some(Path::new("other.toml"))).unwrap();
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("another mgpu run is writing to"), "{e}");
    assert!(e.contains(&format!("process {me} on host")), "{e}");
    assert!(e.contains("running other.toml"), "{e}");
    assert!(root.join(".mgpu.lock").exists(), "the holder's lock stays");
    assert_eq!(outputs(&root), vec![".mgpu.lock"]);
    drop(lock);
}

/// Writes every demo image as if a finished run had made it (the job hash in its record).
fn prefill(m: &Path) -> Vec<PathBuf> {
    let manifest = mgpu::manifest::load(m).unwrap();
    let hasher = TaskHasher::new(&manifest).unwrap();
    expand(&manifest, &hasher)
        .into_iter()
        .map(|t| {
            let (rgb, _, _) = mgpu::exec::queue::fake::FakeGenerator::image_of(&t);
            let mut gen = mgpu::exec::queue::fake::FakeGenerator::default();
            let mut r =
                mgpu::exec::Generator::run_batch(&mut gen, std::slice::from_ref(&t), &mut |_| {})
                    .unwrap()
                    .remove(0)
                    .unwrap()
                    .record;
            r.job_hash = Some(t.hash.clone());
            mgpu::output::write_png(&t.image.path, &rgb, &r).unwrap();
            t.image.path
        })
        .collect()
}

#[test]
fn an_up_to_date_root_needs_no_model_and_reports_every_image_skipped() {
    let (dir, m) = demo();
    let made = prefill(&m);
    assert_eq!(made.len(), 4);
    let before: Vec<Vec<u8>> = made.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let report = dir.path().join("report.json");
    let o = mgpu(&[
        "run",
        m.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(e.contains("4 images: 0 to make, 4 up to date"), "{e}");
    assert!(e.contains("done: 0 made, 4 up to date, 0 failed"), "{e}");
    let after: Vec<Vec<u8>> = made.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(before, after, "files untouched");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["status"], "ok");
    assert_eq!(r["counts"]["skipped"], 4);
    assert!(r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["status"] == "skipped" && t["sha256"].as_str().unwrap().len() == 64));
    // No lock left behind.
    assert!(!dir.path().join("out/tiny/.mgpu.lock").exists());
    // A shard of an up-to-date root: its own images only.
    let o = mgpu(&["run", m.to_str().unwrap(), "--shard", "1/3", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 made, 1 up to date, 0 failed"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("(shard 1/3)"), "{}", stderr(&o));
}

#[test]
fn a_file_mgpu_did_not_write_fails_its_image_with_exit_1() {
    let (dir, m) = demo();
    let made = prefill(&m);
    std::fs::write(&made[1], b"my own picture").unwrap();
    let o = mgpu(&["run", m.to_str().unwrap()]);
    let e = stderr(&o);
    // The other three are up to date; this one is refused without loading anything.
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("not a readable PNG") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(std::fs::read(&made[1]).unwrap(), b"my own picture");
    drop(dir);
}

// ---- With the FLUX pipeline ----

#[test]
fn demo_runs_end_to_end_then_resumes() {
    let (dir, m) = demo();
    let report = dir.path().join("report.json");
    let o = mgpu(&[
        "run",
        m.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let root = dir.path().join("out/tiny");
    assert_eq!(
        outputs(&root),
        [
            "fox-42.png",
            "fox-43.png",
            "lighthouse-7.png",
            "small-123.png"
        ]
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["counts"]["made"], 4);
    // Plan vs measured bytes for every model, step times with fetch waits.
    for model in r["models"].as_array().unwrap() {
        assert!(
            model["devices"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["measured_bytes"].is_u64() && d["planned_bytes"].is_u64()),
            "{model}"
        );
    }
    assert!(r["batches"][0]["step_times"][0]["fetch_wait_seconds"].is_f64());
    for t in r["tasks"].as_array().unwrap() {
        let file = std::fs::read(t["output"].as_str().unwrap()).unwrap();
        assert_eq!(
            t["sha256"].as_str().unwrap(),
            mgpu::exec::queue::sha256_hex(&file)
        );
    }
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("0 made, 4 up to date"),
        "{}",
        stderr(&o)
    );
    let model_hash = |png: &str| {
        let meta = mgpu::output::read_png_metadata(&root.join(png)).unwrap();
        let params = meta.parameters.unwrap();
        (
            params.get("Model hash").map(str::to_string),
            meta.record.unwrap().models[0].sha256.clone(),
        )
    };
    let (shown, recorded) = model_hash("fox-42.png");
    assert_eq!(shown.as_deref().map(str::len), Some(10));
    assert_eq!(recorded.as_deref().map(str::len), Some(64));
    let o = mgpu(&["run", m.to_str().unwrap(), "--force", "-q"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("4 made, 0 up to date"),
        "{}",
        stderr(&o)
    );
    // Without file hashes: the same pixels, no hashes in the records, and the images still
    // count as up to date (the job hash does not include them).
    let before = std::fs::read(root.join("fox-42.png")).unwrap();
    let o = mgpu(&[
        "run",
        m.to_str().unwrap(),
        "--force",
        "-q",
        "--no-file-hashes",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(model_hash("fox-42.png"), (None, None));
    let decode = |b: &[u8]| image::load_from_memory(b).unwrap().to_rgb8().into_raw();
    assert_eq!(
        decode(&before),
        decode(&std::fs::read(root.join("fox-42.png")).unwrap())
    );
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("0 made, 4 up to date"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn shards_split_the_demo_into_one_root() {
    let (dir, m) = demo();
    for s in ["0/2", "1/2"] {
        let o = mgpu(&["run", m.to_str().unwrap(), "--shard", s, "-q"]);
        assert_eq!(o.status.code(), Some(0), "{s}: {}", stderr(&o));
        assert!(stderr(&o).contains("2 made"), "{s}: {}", stderr(&o));
    }
    assert_eq!(outputs(&dir.path().join("out/tiny")).len(), 4);
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("0 made, 4 up to date"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn killed_demo_run_resumes_without_duplicates_or_corrupt_files() {
    let (dir, m) = demo();
    // More images so the kill lands mid-run.
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("count = 2", "count = 12");
    std::fs::write(&m, text).unwrap();
    let root = dir.path().join("out/tiny");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mgpu"))
        .args(["run", m.to_str().unwrap(), "-q"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !outputs(&root)
        .iter()
        .any(|f| f.ends_with(".png") && !f.starts_with('.'))
    {
        assert!(t0.elapsed().as_secs() < 300, "no output appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let o = mgpu(&["run", m.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(
        e.contains("taking over the stale lock") || !e.contains("lock"),
        "{e}"
    );
    check_complete(&m, &root);
}

/// Every image of the manifest exists once, decodes, carries its job hash; no temporary or
/// lock file is left.
pub fn check_complete(m: &Path, root: &Path) {
    let manifest = mgpu::manifest::load(m).unwrap();
    let tasks = expand(&manifest, &TaskHasher::new(&manifest).unwrap());
    let names = outputs(root);
    assert_eq!(names.len(), tasks.len(), "{names:?}");
    for t in tasks {
        let meta = mgpu::output::read_png_metadata(&t.image.path).unwrap();
        assert_eq!(meta.record.unwrap().job_hash.unwrap(), t.hash);
        image::open(&t.image.path).unwrap();
    }
}

/// `decode_tile` on the VAE: images wider than a tile decode in blended tiles, which changes
/// pixels, so the job hash changes too and a rerun without it remakes them; an image that
/// fits in one tile decodes exactly as untiled (only its hash differs).
#[test]
fn decode_tile_tiles_large_images_and_is_part_of_the_job_hash() {
    let (dir, m) = demo();
    let untiled = std::fs::read_to_string(&m).unwrap();
    let tiled = untiled.replace(
        "file = \"tiny/ae-tiny.safetensors\"",
        "file = \"tiny/ae-tiny.safetensors\"\ndecode_tile = 16",
    );
    assert_ne!(tiled, untiled);
    let pixels = |name: &str| image::open(dir.path().join("out/tiny").join(name)).unwrap();
    let run = |text: &str| {
        std::fs::write(&m, text).unwrap();
        let o = mgpu(&["run", m.to_str().unwrap(), "-q"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stderr(&o)
    };
    run(&untiled);
    // fox: 128² = 16×16 latent pixels, one tile of 16: the same pixels either way.
    let (fox, small) = (pixels("fox-42.png"), pixels("small-123.png"));
    let tiled = tiled.replace("width = 96\nheight = 96", "width = 256\nheight = 96");
    let untiled_wide = untiled.replace("width = 96\nheight = 96", "width = 256\nheight = 96");
    assert_ne!(untiled_wide, untiled);
    run(&untiled_wide);
    let wide = pixels("small-123.png");
    assert_eq!(wide.width(), 256);
    let e = run(&tiled);
    assert!(e.contains("5 made") || e.contains("4 made"), "{e}");
    assert_eq!(pixels("fox-42.png"), fox, "one tile decodes as untiled");
    let tiled_wide = pixels("small-123.png");
    // 32×12 latent pixels in tiles of 16: blended tiles, not the untiled decode.
    assert_ne!(tiled_wide, wide, "tiles change pixels");
    assert_ne!(tiled_wide, small);
    // Same manifest again: everything is up to date.
    let e = run(&tiled);
    assert!(e.contains("0 made"), "{e}");
}

/// #12 defect 8: a bad `--hardware` file is reported once as `error:`, not `error: error:`.
#[test]
fn a_bad_hardware_file_says_error_once() {
    let (dir, m) = demo();
    let hw = dir.path().join("hw.toml");
    std::fs::write(&hw, "garbage = [\n").unwrap();
    let o = mgpu(&[
        "run",
        m.to_str().unwrap(),
        "--hardware",
        hw.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("hw.toml:1:"), "{e}");
    assert!(!e.contains("error: error:"), "{e}");
}

/// #12 defect 5: a FIFO given as a weights file is refused at `run` (and `check`) time with a
/// clear error instead of blocking forever on the first read.
#[test]
fn a_fifo_as_weights_file_is_refused_not_read() {
    let (dir, m) = demo();
    let weights = dir.path().join("tiny/ae-tiny.safetensors");
    std::fs::remove_file(&weights).unwrap();
    let c = std::ffi::CString::new(weights.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    for cmd in ["check", "run"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mgpu"))
            .args([cmd, m.to_str().unwrap()])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > std::time::Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("mgpu {cmd} blocked on the FIFO");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is not a regular file"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
}
