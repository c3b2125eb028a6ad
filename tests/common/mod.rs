//! Helpers shared by the integration tests: manifest files and schema, a copy of the tiny
//! demo to run, the `mgpu` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The `.toml` files of a folder, sorted.
pub fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// The committed schema, compiled by an independent validator.
pub fn schema_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string("schemas/manifest.schema.json")
        .expect("schemas/manifest.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

/// TOML text as JSON (what an editor validates against the schema); `None` when the TOML does
/// not parse or holds a value JSON cannot represent.
pub fn toml_to_json(text: &str) -> Option<serde_json::Value> {
    let v: toml::Value = toml::from_str(text).ok()?;
    let json = serde_json::to_value(&v).ok()?;
    has_no_null(&json).then_some(json)
}

/// serde_json turns nan/inf into null.
fn has_no_null(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Array(a) => a.iter().all(has_no_null),
        serde_json::Value::Object(o) => o.values().all(has_no_null),
        _ => true,
    }
}

/// The schema validator's errors for `json`, one line each.
pub fn schema_errors(json: &serde_json::Value) -> Vec<String> {
    schema_validator()
        .iter_errors(json)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the demo (manifests/tiny.toml and every file of manifests/tiny/) in a temporary
/// folder, its manifest text passed through `edit` first. Returns the folder and the manifest.
pub fn demo_with(edit: impl FnOnce(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("manifests/tiny.toml")).unwrap();
    std::fs::write(dir.path().join("tiny.toml"), edit(text)).unwrap();
    std::fs::create_dir_all(dir.path().join("tiny")).unwrap();
    for e in std::fs::read_dir(root.join("manifests/tiny")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("tiny").join(e.file_name())).unwrap();
    }
    let m = dir.path().join("tiny.toml");
    (dir, m)
}

/// [`demo_with`] unchanged.
pub fn demo() -> (tempfile::TempDir, PathBuf) {
    demo_with(|t| t)
}

/// Runs the `mgpu` binary of this build without colours.
pub fn mgpu(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mgpu"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// A finished command's stderr, lossily decoded.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
