//! The video demo through the real binary: `mgpu run manifests/demo-video.toml` on a copy, its
//! resume, the `.mp4` check without ffmpeg, MP4 runs (when ffmpeg is there) and golden
//! record/verify of clips naming the first differing frame.

mod common;

use std::path::{Path, PathBuf};

use common::{mgpu, repo_root, stderr};

/// A copy of manifests/demo-video.toml (passed through `edit`) and manifests/tiny/ in a
/// temporary folder.
fn video_demo_with(edit: impl FnOnce(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("manifests/demo-video.toml")).unwrap();
    let m = dir.path().join("demo-video.toml");
    std::fs::write(&m, edit(text)).unwrap();
    std::fs::create_dir_all(dir.path().join("tiny")).unwrap();
    for e in std::fs::read_dir(root.join("manifests/tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("tiny").join(e.file_name())).unwrap();
    }
    (dir, m)
}

/// The run record stored in an output file.
fn record_of(path: &Path) -> serde_json::Value {
    let meta = mgpu::output::read_output_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let record = meta
        .record
        .unwrap_or_else(|| panic!("{}: no mgpu record", path.display()));
    serde_json::to_value(&record).unwrap()
}

fn ffmpeg_present() -> bool {
    match mgpu::output::Ffmpeg::locate() {
        Ok(_) => true,
        Err(e) if std::env::var_os("MGPU_REQUIRE_FFMPEG").is_some_and(|v| !v.is_empty()) => {
            panic!("this test needs ffmpeg (MGPU_REQUIRE_FFMPEG is set): {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: needs ffmpeg with libx264: {e}");
            false
        }
    }
}

#[test]
fn video_demo_runs_then_resumes() {
    let (dir, m) = video_demo_with(|t| t);
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = dir.path().join("out/demo-video");
    let fox = out.join("fox-42.png");
    let waves = out.join("waves-7.png");
    let r = record_of(&fox);
    assert_eq!(r["frames"], 17, "{r}");
    assert_eq!(r["fps"], 16, "{r}");
    assert_eq!(r["cfg_scale"], 5.0, "{r}");
    assert_eq!(r["negative_prompt"], "blurry, static, low quality", "{r}");
    assert_eq!(record_of(&waves)["frames"], 9);
    // An animated PNG: every frame decodes.
    let frames = mgpu::output::decode_apng_file(&fox).unwrap();
    assert_eq!(frames.len(), 17);
    assert_eq!(frames[0].dimensions(), (96, 64));

    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 made, 2 up to date"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn mp4_without_ffmpeg_is_a_check_error() {
    let (_dir, m) = video_demo_with(|t| t.replace("{job}-{seed}.png", "{job}-{seed}.mp4"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mgpu"))
        .args(["check", m.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .env("MGPU_FFMPEG", "/nonexistent/ffmpeg")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("`.mp4` outputs need `ffmpeg`"), "{e}");
    assert!(e.contains("demo-video.toml:"), "{e}");
    assert!(e.contains("write lossless animated PNGs"), "{e}");
}

#[test]
fn mp4_runs_and_resumes() {
    if !ffmpeg_present() {
        return;
    }
    let (dir, m) = video_demo_with(|t| t.replace("{job}-{seed}.png", "{job}-{seed}.mp4"));
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let fox = dir.path().join("out/demo-video/fox-42.mp4");
    let r = record_of(&fox);
    assert_eq!(r["frames"], 17, "{r}");
    let o = mgpu(&["run", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 made, 2 up to date"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn video_golden_names_the_first_differing_frame() {
    let (dir, m) = video_demo_with(|t| t);
    let gdir = dir.path().join("golden/video");
    let g = gdir.to_str().unwrap();
    let o = mgpu(&["golden", "record", m.to_str().unwrap(), "--dir", g]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gdir.join("golden.json")).unwrap()).unwrap();
    let text = index.to_string();
    assert!(text.contains("frames_sha256"), "{text}");

    let o = mgpu(&["golden", "verify", m.to_str().unwrap(), "--dir", g]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 identical"), "{}", stderr(&o));

    // Another negative prompt changes every frame after the first step's guidance.
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace("blurry, static", "grainy, static")).unwrap();
    let o = mgpu(&["golden", "verify", m.to_str().unwrap(), "--dir", g]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("first differing frame: 1 of 17"), "{e}");
}
