//! Helpers shared by the manifest tests.

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
