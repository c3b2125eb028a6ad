//! Every file in `manifests/invalid/` is one error class; its full rendered diagnostic is
//! pinned by an insta snapshot (`tests/snapshots/manifest_invalid__<stem>.snap`).
//! Also records, per file, whether the JSON schema alone rejects it too.

mod common;

use std::path::Path;

#[test]
fn every_invalid_manifest_fails_with_its_snapshot() {
    let files = common::toml_files("manifests/invalid");
    assert!(
        files.len() >= 30,
        "expected one file per error class, found {}",
        files.len()
    );
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let diags = match mgpu::manifest::load(&path) {
            Ok(m) => {
                // A few classes are only caught when files are checked.
                let d = m.check_files();
                assert!(d.has_errors(), "{} is valid", path.display());
                d
            }
            Err(d) => d,
        };
        assert!(diags.has_errors(), "{}: no errors", path.display());
        insta::assert_snapshot!(
            stem.as_str(),
            diags.render(false),
            &format!("mgpu check {}", path.display())
        );
    }
}

/// Which invalid files the JSON schema rejects on its own (the rest need mgpu's semantic
/// checks: references, roles, output templates, collisions, allocation rules the schema's
/// pattern cannot express…). Keeps the schema honest: it must reject at least these.
const SCHEMA_REJECTS: &[&str] = &[
    "alloc-comma-separator",
    "alloc-distorch-suffix",
    "alloc-empty",
    "alloc-empty-entry",
    "alloc-missing-comma",
    "alloc-negative",
    "alloc-not-finite",
    "alloc-unknown-unit",
    "bad-device",
    "bad-family",
    "bad-name",
    "bad-virtual-vram",
    "decode-tile",
    "denoise",
    "key-in-wrong-table",
    "many-errors",
    "max-sequence-length",
    "missing-key",
    "not-finite",
    "numbers-out-of-range",
    "toml-syntax",
    "unknown-key",
    "video-keys",
    "wrong-type",
];

#[test]
fn schema_verdicts_are_as_recorded() {
    let validator = common::schema_validator();
    let mut rejected = Vec::new();
    for path in common::toml_files("manifests/invalid") {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let ok = match common::toml_to_json(&text) {
            Some(json) => validator.is_valid(&json),
            None => false, // TOML syntax error, or a value JSON cannot hold (nan, inf)
        };
        if !ok {
            rejected.push(stem);
        }
    }
    rejected.sort();
    let want: Vec<String> = SCHEMA_REJECTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        rejected, want,
        "update SCHEMA_REJECTS if the schema changed on purpose"
    );
    let _ = Path::new(".");
}
