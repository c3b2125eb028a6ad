//! `mgpu probe` from the command line: the table, JSON, `--save` round trip, and `--bench` on
//! a build without CUDA.

use std::process::Command;

fn mgpu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mgpu"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn probe_lists_the_host() {
    let (code, out, _) = mgpu(&["probe"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("cpu ")), "{out}");
}

#[test]
fn probe_json_has_the_hardware() {
    let (code, out, _) = mgpu(&["probe", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let devices = v["hardware"]["devices"].as_array().unwrap();
    assert!(devices.iter().any(|d| d["name"] == "cpu"), "{out}");
}

#[test]
fn probe_save_writes_a_hardware_file_that_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hw.toml");
    let (code, out, err) = mgpu(&["probe", "--save", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let hw = mgpu::hardware::file::read(&path).unwrap();
    assert!(hw.device(mgpu::device::DeviceName::Cpu).is_some());
    let (code, _, err) = mgpu(&["probe", "--save", "/nonexistent-dir/hw.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot write hardware file /nonexistent-dir/hw.toml"),
        "{err}"
    );
}

/// Issue 14: a CPU build's `--bench` measures what it can (tests/rough_edges.rs checks the
/// numbers) and says what needs the CUDA build, instead of exiting 2.
#[cfg(not(feature = "cuda"))]
#[test]
fn bench_on_a_cpu_build_says_what_needs_the_cuda_build() {
    let dir = tempfile::tempdir().unwrap();
    let hw = dir.path().join("hw.toml");
    let (code, out, err) = mgpu(&[
        "probe",
        "--bench",
        "--save",
        hw.to_str().unwrap(),
        "--disk-test-size",
        "8MiB",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("need the CUDA build"), "{out}");
}
