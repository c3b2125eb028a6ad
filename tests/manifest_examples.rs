//! The example manifests users copy, and the committed JSON schema they point to.

mod common;

#[test]
fn committed_schema_is_up_to_date() {
    let committed = std::fs::read_to_string("schemas/manifest.schema.json").unwrap_or_default();
    let generated = mgpu::manifest::schema::manifest_schema_json();
    assert!(
        committed == generated,
        "schemas/manifest.schema.json is stale; regenerate it with\n\n    cargo run -- schema manifest > schemas/manifest.schema.json\n"
    );
}

#[test]
fn every_example_manifest_is_valid_for_mgpu_and_for_the_schema() {
    let files = common::toml_files("manifests");
    assert!(files.len() >= 4, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#:schema ../schemas/manifest.schema.json\n"),
            "{} must start with `#:schema ../schemas/manifest.schema.json`",
            path.display()
        );
        // mgpu: syntax, shape and semantics (not file existence: the weights are not here).
        let m = match mgpu::manifest::load(&path) {
            Ok(m) => m,
            Err(d) => panic!("{} is invalid:\n{}", path.display(), d.render(false)),
        };
        assert!(
            m.warnings.is_empty(),
            "{} has warnings:\n{}",
            path.display(),
            m.warnings.render(false)
        );
        assert!(
            !m.jobs.is_empty() && !m.pipelines.is_empty(),
            "{}",
            path.display()
        );
        // The JSON schema, by an independent validator.
        let json = common::toml_to_json(&text).expect("TOML converts to JSON");
        let errors = common::schema_errors(&json);
        assert!(
            errors.is_empty(),
            "{} fails the schema:\n{}",
            path.display(),
            errors.join("\n")
        );
    }
}

#[test]
fn demo_manifest_names_the_tiny_files() {
    let m = mgpu::manifest::load(std::path::Path::new("manifests/tiny.toml")).unwrap();
    let tiny = m.dir.join("tiny");
    let names = |f: &std::path::Path| f.strip_prefix(&tiny).unwrap().display().to_string();
    let mut files: Vec<String> = m.models.values().map(|x| names(&x.file)).collect();
    files.extend(
        m.models
            .values()
            .filter_map(|x| x.tokenizer.as_deref())
            .map(names),
    );
    files.extend(
        m.models
            .values()
            .flat_map(|x| x.loras.iter().map(|l| names(&l.file))),
    );
    files.sort();
    assert_eq!(
        files,
        [
            "ae-tiny.safetensors",
            "clip-tiny.safetensors",
            "clip-tokenizer.json",
            "flux-tiny.safetensors",
            "lora-tiny.safetensors",
            "t5-tiny.safetensors",
            "t5-tokenizer.json"
        ]
    );
    for j in &m.jobs {
        assert!(
            j.width <= 256 && j.height <= 256 && j.steps <= 8,
            "{}",
            j.name
        );
        assert!(m
            .models
            .values()
            .all(|x| x.compute == mgpu::device::DeviceName::Cpu));
    }
}
