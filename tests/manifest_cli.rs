//! `mgpu check` and `mgpu schema`, run as a user would.

use std::process::Command;

fn mgpu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mgpu"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_valid_manifest_exits_0_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("manifests/tiny.toml").unwrap();
    std::fs::write(dir.path().join("tiny.toml"), text).unwrap();
    std::fs::create_dir_all(dir.path().join("tiny")).unwrap();
    for f in [
        "flux-tiny.safetensors",
        "ae-tiny.safetensors",
        "t5-tiny.safetensors",
        "t5-tokenizer.json",
        "clip-tiny.safetensors",
        "clip-tokenizer.json",
        "lora-tiny.safetensors",
    ] {
        std::fs::write(dir.path().join("tiny").join(f), b"x").unwrap();
    }
    let path = dir.path().join("tiny.toml");
    let (code, stdout, stderr) = mgpu(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "{}: ok (4 models, 1 pipeline, 3 jobs → 4 images)\n",
            path.display()
        )
    );
}

#[test]
fn check_invalid_manifest_exits_1_with_all_errors() {
    let (code, _, stderr) = mgpu(&[
        "check",
        "manifests/invalid/many-errors.toml",
        "--color",
        "never",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.ends_with("manifests/invalid/many-errors.toml: invalid: 7 errors\n"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'));
}

#[test]
fn check_missing_files_exits_1() {
    let (code, _, stderr) = mgpu(&["check", "manifests/flux-dev-2gpu.toml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("error: weights file not found: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("  --> manifests/flux-dev-2gpu.toml:11:8"),
        "{stderr}"
    );
}

#[test]
fn check_colors_on_request() {
    let (code, _, stderr) = mgpu(&[
        "check",
        "manifests/invalid/bad-family.toml",
        "--color",
        "always",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("\x1b[1;31merror\x1b[0m"), "{stderr}");
}

#[test]
fn check_unreadable_file_exits_1() {
    let (code, _, stderr) = mgpu(&["check", "no/such.toml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read manifest `no/such.toml`"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = mgpu(&["check"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = mgpu(&["check", "x.toml", "--color", "sometimes"]);
    assert_eq!(code, 2);
    let (code, _, stderr) = mgpu(&["schema", "hardwar"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn schema_prints_the_committed_schema() {
    let (code, stdout, _) = mgpu(&["schema"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        std::fs::read_to_string("schemas/manifest.schema.json").unwrap()
    );
    let (_, named, _) = mgpu(&["schema", "manifest"]);
    assert_eq!(named, stdout);
}
