//! `mgpu inspect`, run as the built binary on the committed fixtures.

use std::path::Path;
use std::process::{Command, Output};

use mgpu::weights::npy::read_f32;

fn mgpu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mgpu"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn text_city96_gguf() {
    let o = mgpu(&["inspect", "tests/fixtures/gguf/flux_tiny_city96.gguf"]);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!(stdout(&o));
}

#[test]
fn text_scaled_fp8_safetensors() {
    let o = mgpu(&["inspect", "tests/fixtures/safetensors/fp8.safetensors"]);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!(stdout(&o));
}

#[test]
fn text_sharded_and_torch() {
    let o = mgpu(&[
        "inspect",
        "tests/fixtures/safetensors/sharded/model.safetensors.index.json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!("sharded", stdout(&o));
    let o = mgpu(&["inspect", "--all", "tests/fixtures/torch/lightning.ckpt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!("lightning", stdout(&o));
}

#[test]
fn json_lists_everything() {
    let o = mgpu(&[
        "inspect",
        "--json",
        "tests/fixtures/gguf/flux_tiny_city96.gguf",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["format"],
        serde_json::json!({"kind": "gguf", "version": 3, "alignment": 32})
    );
    assert_eq!(v["detected"]["family"], "flux");
    assert_eq!(v["detected"]["layout"], "original");
    assert_eq!(v["metadata"]["general.architecture"], "flux");
    let n = v["tensor_count"].as_u64().unwrap() as usize;
    assert_eq!(v["tensors"].as_array().unwrap().len(), n);
    let qkv = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "double_blocks.1.img_attn.qkv.weight")
        .unwrap();
    assert_eq!(qkv["dtype"], "Q8_0");
    assert_eq!(qkv["shape"], serde_json::json!([96, 32]));
    assert_eq!(qkv["len"], 96 * 34);
    let total: u64 = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["len"].as_u64().unwrap())
        .sum();
    assert_eq!(v["total_bytes"].as_u64(), Some(total));

    let o = mgpu(&[
        "inspect",
        "--json",
        "tests/fixtures/safetensors/sharded/model.safetensors.index.json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["format"],
        serde_json::json!({"kind": "safetensors-sharded", "shards": 2})
    );
    assert!(v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["file"].as_str().unwrap().starts_with("model-0000")));
}

#[test]
fn dump_writes_the_reference_values_as_npy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q4k.npy");
    let o = mgpu(&[
        "inspect",
        "tests/fixtures/gguf/all_types.gguf",
        "--dump",
        "t.q4_k",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("`t.q4_k` Q4_K [2, 512] as f32 (1024 values)"),
        "{}",
        stdout(&o)
    );
    let ours = std::fs::read(&out).unwrap();
    // Byte-identical to numpy.save of gguf-py's dequantisation: same header, same values.
    let numpy = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/expected/t.q4_k.npy"),
    )
    .unwrap();
    assert_eq!(ours, numpy);
    assert_eq!(read_f32(&ours).unwrap().shape, [2, 512]);
}

#[test]
fn errors() {
    let o = mgpu(&[
        "inspect",
        "tests/fixtures/gguf/all_types.gguf",
        "--dump",
        "t.q4_kk",
        "--out",
        "/tmp/never.npy",
    ]);
    assert_eq!(o.status.code(), Some(1));
    insta::assert_snapshot!("unknown_tensor", stderr(&o));
    assert!(!Path::new("/tmp/never.npy").exists());
    let o = mgpu(&["inspect", "tests/fixtures/torch/evil.pt"]);
    assert_eq!(o.status.code(), Some(1));
    insta::assert_snapshot!("evil", stderr(&o));
    let o = mgpu(&["inspect", "Cargo.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unrecognised format"), "{}", stderr(&o));
    let o = mgpu(&[
        "inspect",
        "tests/fixtures/gguf/all_types.gguf",
        "--dump",
        "t.q4_k",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--out"), "{}", stderr(&o));
}

/// #12 defect 8: `inspect` of a folder says it is a folder (it said "No such device").
#[test]
fn a_folder_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let o = mgpu(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("is a folder: name one weights file"), "{e}");
    assert!(!e.contains("No such device"), "{e}");
}
