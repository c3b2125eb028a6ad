//! Kill -9 and resume, with a real process: this test binary runs `mgpu run`'s code
//! ([`mgpu::cli::run::execute`]: manifest, hash, lock, plan, queue, atomic writes, report) in a
//! child copy of itself, with the fake generator (slow steps) standing in for the FLUX
//! pipeline; the parent kills the child with SIGKILL once the first image is written, reruns,
//! and checks: every image exactly once, each decodes and carries its job hash, no temporary
//! or lock file left, the stale lock taken over. (tests/run_cli.rs has the same test with the
//! real binary and pipeline, ignored until the pipeline lands.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mgpu::cli::run::{execute, GoldenMode, RunOptions};
use mgpu::cli::Status;
use mgpu::exec::queue::fake::FakeGenerator;
use mgpu::exec::queue::{expand, TaskHasher};
use mgpu::exec::Generator;

const CHILD_ENV: &str = "MGPU_RUN_KILL_CHILD";
const REPORT_ENV: &str = "MGPU_RUN_KILL_REPORT";
const EXPECT_ENV: &str = "MGPU_RUN_KILL_EXPECT";

fn options(manifest: &Path, report: Option<PathBuf>) -> RunOptions {
    RunOptions {
        manifest: manifest.to_path_buf(),
        hardware: Default::default(),
        force: false,
        shard: None,
        report,
        html: None,
        golden: GoldenMode::Off,
        quiet: true,
        color: false,
        output_root: None,
        grace: None,
    }
}

/// Makes a generator for the manifest, plan and hardware it is given.
type Make = dyn FnMut(
    std::sync::Arc<mgpu::manifest::Manifest>,
    std::sync::Arc<mgpu::plan::Plan>,
    std::sync::Arc<mgpu::hardware::Hardware>,
) -> Result<Box<dyn Generator>, mgpu::exec::ExecError>;

fn fake(step_delay: Duration) -> Box<Make> {
    Box::new(move |_, _, _| {
        Ok(Box::new(FakeGenerator {
            max_batch: 1,
            step_delay,
            ..Default::default()
        }))
    })
}

/// The child: runs the manifest named by the environment slowly, until killed.
#[test]
#[ignore = "helper of killed_run_resumes (runs in a child process)"]
fn child_runner() {
    let Ok(manifest) = std::env::var(CHILD_ENV) else {
        return;
    };
    let report = std::env::var_os(REPORT_ENV).map(PathBuf::from);
    let status = execute(
        &options(Path::new(&manifest), report),
        &mut *fake(Duration::from_millis(150)),
    )
    .unwrap();
    let want = match std::env::var(EXPECT_ENV).as_deref() {
        Ok("interrupted") => Status::Interrupted,
        _ => Status::Ok,
    };
    assert_eq!(status, want);
}

fn demo(count: u32) -> (tempfile::TempDir, PathBuf) {
    common::demo_with(|t| t.replace("count = 2", &format!("count = {count}")))
}

fn pngs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".png") && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn killed_run_resumes() {
    let (dir, m) = demo(8);
    let root = dir.path().join("out/tiny");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "child_runner", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &m)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while pngs(&root).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no image appeared");
        assert!(child.try_wait().unwrap().is_none(), "the child ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup at all
    child.wait().unwrap();
    let before = pngs(&root);
    assert!(
        root.join(".mgpu.lock").exists(),
        "a killed run leaves its lock"
    );
    assert!(before.len() < 10, "killed before the end: {before:?}");

    // What a kill during a write would leave (the timing rarely hits it by itself).
    std::fs::write(root.join(".fox-45.png.Ab12Cd.tmp"), b"half a png").unwrap();

    let report = dir.path().join("report.json");
    let status = execute(
        &options(&m, Some(report.clone())),
        &mut *fake(Duration::ZERO),
    )
    .unwrap();
    assert_eq!(status, Status::Ok);

    let manifest = mgpu::manifest::load(&m).unwrap();
    let tasks = expand(&manifest, &TaskHasher::new(&manifest).unwrap());
    assert_eq!(tasks.len(), 10, "8 foxes, a lighthouse, a cube");
    let all: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        all.len(),
        10,
        "only the images, no temp or lock file: {all:?}"
    );
    for t in &tasks {
        let meta = mgpu::output::read_png_metadata(&t.image.path).unwrap();
        assert_eq!(meta.record.unwrap().job_hash.unwrap(), t.hash);
        let img = image::open(&t.image.path).unwrap().to_rgb8();
        assert_eq!(img, FakeGenerator::image_of(t).0);
    }
    // The rerun made exactly the images the killed run had not finished.
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let skipped = r["counts"]["skipped"].as_u64().unwrap() as usize;
    let made = r["counts"]["made"].as_u64().unwrap() as usize;
    assert_eq!(skipped, before.len());
    assert_eq!(made + skipped, 10);
}

#[test]
fn ctrl_c_stops_after_the_batch_and_releases_the_lock() {
    let (dir, m) = demo(8);
    let root = dir.path().join("out/tiny");
    let report = dir.path().join("report.json");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "child_runner", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &m)
        .env(REPORT_ENV, &report)
        .env(EXPECT_ENV, "interrupted")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while pngs(&root).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no image appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: sends SIGINT to our own child.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(r, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "the child saw Status::Interrupted");
    assert!(!root.join(".mgpu.lock").exists(), "the lock is released");
    let made = pngs(&root).len();
    assert!(made < 10, "stopped before the end: {made}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["status"], "interrupted");
    assert_eq!(r["counts"]["made"].as_u64().unwrap() as usize, made);
    assert_eq!(r["counts"]["not_run"].as_u64().unwrap() as usize, 10 - made);
}
