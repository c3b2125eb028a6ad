//! Issue 14's rough edges a new user hit, each through the binary: the README's golden
//! sequence works as written, tokenizer folders pass `check`, the JSON outputs (`check`,
//! `plan`, `inspect`, `probe`, the run report) carry a version and validate against their
//! committed schemas, completions and the man page, and one example in the `--help` of run,
//! plan and check.

mod common;

use std::path::Path;

use common::{demo, mgpu, repo_root, stderr};
use mgpu::weights::gguf::GgufWriter;
use mgpu::weights::{DType, MetaArray, MetaValue};

fn validator(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo_root().join("schemas").join(file)).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("the schema compiles")
}

fn assert_valid(v: &jsonschema::Validator, json: &serde_json::Value) {
    let errors: Vec<String> = v.iter_errors(json).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Rough edge 1: the README's `golden record` / `golden verify` lines, run as written (from the
/// repository root, with the scratch folder they name replaced by a temporary one).
#[test]
fn readme_golden_sequence_works_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let block = &readme[readme.find("### Golden outputs").expect("the section")..];
    let block = &block[block.find("```sh").unwrap() + 5..];
    let block = &block[..block.find("```").unwrap()];
    let lines: Vec<&str> = block
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| l.starts_with("mgpu golden"))
        .collect();
    assert!(lines.len() >= 2, "{block}");
    let scratch = tempfile::tempdir().unwrap();
    for line in lines {
        let line = line.replace("/tmp/mgpu-golden", scratch.path().to_str().unwrap());
        // Pages go to the scratch folder, not into the repository.
        let args: Vec<String> = line
            .split_whitespace()
            .skip(1)
            .map(|a| match a.ends_with(".html") {
                true => scratch.path().join(a).display().to_string(),
                false => a.to_string(),
            })
            .collect();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mgpu"))
            .args(&args)
            .current_dir(repo_root())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "`{line}` failed:\n{}", stderr(&o));
    }
}

/// Rough edge 2: a Hugging Face tokenizer folder passes `check`; one without a tokenizer
/// file is an error that says what the folder lacks.
#[test]
fn tokenizer_folders_pass_check() {
    let (dir, m) = demo();
    let folder = dir.path().join("tiny/t5-tok");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        dir.path().join("tiny/t5-tokenizer.json"),
        folder.join("tokenizer.json"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace("tiny/t5-tokenizer.json", "tiny/t5-tok")).unwrap();
    let o = mgpu(&["check", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(folder.join("tokenizer.json")).unwrap();
    let o = mgpu(&["check", m.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_valid(&validator("check.schema.json"), &v);
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"], 1);
    let d = &v["diagnostics"][0];
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("holds neither `tokenizer.json` nor `spiece.model`"),
        "{d}"
    );
    assert_eq!(d["line"], 21, "{d}");
    assert!(
        d["rendered"].as_str().unwrap().contains("tiny.toml:21:"),
        "{d}"
    );
}

/// Rough edge 6: machine-readable outputs carry a version and match their schemas.
#[test]
fn json_outputs_match_their_schemas() {
    let (_dir, m) = demo();
    let o = mgpu(&["check", m.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_valid(&validator("check.schema.json"), &v);
    assert_eq!(
        (v["format"].as_u64(), v["valid"].as_bool()),
        (Some(1), Some(true))
    );
    let o = mgpu(&["run", m.to_str().unwrap(), "--quiet", "--report", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_valid(&validator("report.schema.json"), &v);
    assert!(v["mgpu_version"].is_string() && v["format"] == 1);
    let o = mgpu(&["plan", m.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_valid(&validator("plan.schema.json"), &v);
    assert!(v["mgpu_version"].is_string() && v["format"] == 1 && v["models"].is_array());
}

/// Rough edge 6, the rest: `inspect --json` (on each format, with and without `--all`) and
/// `probe --json` (with `--bench`) carry a version and match their committed schemas.
#[test]
fn inspect_and_probe_json_match_their_schemas() {
    let inspect = validator("inspect.schema.json");
    // A GGUF with a long string array (summarised unless --all), a nested array and a NaN.
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("meta.gguf");
    let mut w = GgufWriter::new(&gguf, "flux");
    let tokens = MetaArray::String((0..100).map(|i| format!("tok{i}")).collect());
    w.add_metadata("tokenizer.ggml.tokens", MetaValue::Array(tokens))
        .unwrap();
    let nested = MetaArray::Array(vec![MetaArray::I32(vec![1, 2]), MetaArray::I32(vec![3])]);
    w.add_metadata("test.nested", MetaValue::Array(nested))
        .unwrap();
    w.add_metadata("test.nan", MetaValue::F32(f32::NAN))
        .unwrap();
    w.add_f32("img_in.bias", &[4], DType::F32, &[0.0; 4])
        .unwrap();
    w.finish().unwrap();
    let gguf = gguf.to_str().unwrap();
    let files = [
        "manifests/tiny/flux-tiny.safetensors",
        "tests/fixtures/gguf/flux_tiny_city96.gguf",
        "tests/fixtures/gguf/all_types.gguf",
        "tests/fixtures/safetensors/fp8.safetensors",
        "tests/fixtures/safetensors/sharded/model.safetensors.index.json",
        "tests/fixtures/torch/lightning.ckpt",
        gguf,
    ];
    for file in files {
        for all in [false, true] {
            let mut args = vec!["inspect", "--json", file];
            if all {
                args.push("--all");
            }
            let o = mgpu(&args);
            assert!(o.status.success(), "{file}: {}", stderr(&o));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_valid(&inspect, &v);
            assert!(
                v["mgpu_version"].is_string() && v["inspect_format"] == 1,
                "{file}"
            );
            if file == gguf {
                let tokens = &v["metadata"]["tokenizer.ggml.tokens"];
                if all {
                    assert_eq!(tokens.as_array().map(Vec::len), Some(100));
                } else {
                    assert_eq!(
                        *tokens,
                        serde_json::json!({"type": "array<string>", "len": 100})
                    );
                }
                assert!(v["metadata"]["test.nan"].is_null());
            }
        }
    }
    let o = mgpu(&["probe", "--json", "--bench", "--disk-test-size", "8MiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_valid(&validator("probe.schema.json"), &v);
    assert!(v["mgpu_version"].is_string() && v["format"] == 1 && v["bench"].is_object());
}

/// Rough edges 9 and 10: completions, the man page, and an example in three `--help`s.
#[test]
fn completions_man_page_and_help_examples() {
    for shell in ["bash", "zsh", "fish"] {
        let o = mgpu(&["completions", shell]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains("verify-golden"), "{shell}");
    }
    let o = mgpu(&["man"]);
    assert!(o.status.success());
    let man = String::from_utf8(o.stdout).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH mgpu"),
        "{}",
        &man[..200.min(man.len())]
    );
    for cmd in ["run", "plan", "check"] {
        let o = mgpu(&[cmd, "--help"]);
        let help = String::from_utf8(o.stdout).unwrap();
        let example = help
            .lines()
            .skip_while(|l| !l.starts_with("Example"))
            .nth(1)
            .unwrap_or_else(|| panic!("`mgpu {cmd} --help` has no example:\n{help}"));
        assert!(
            example.trim().starts_with(&format!("mgpu {cmd} ")),
            "{example}"
        );
        // The example's files exist (it works as written from the repository root).
        for word in example.split_whitespace().filter(|w| w.contains('/')) {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(word).exists(),
                "{word}"
            );
        }
    }
}

/// Rough edge 4: `probe --bench --save` works on a CPU build: it measures the CPU's product
/// rate and the disk read rate, saves them, and says what it could not measure.
#[test]
fn probe_bench_measures_what_a_cpu_build_can() {
    let dir = tempfile::tempdir().unwrap();
    let hw = dir.path().join("hw.toml");
    let o = mgpu(&[
        "probe",
        "--bench",
        "--save",
        hw.to_str().unwrap(),
        "--disk-test-size",
        "8MiB",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("f32 1024³ product") && out.contains("disk read"),
        "{out}"
    );
    if !out.contains("cuda:") {
        assert!(
            out.contains("not measured in this build: GPU copy and compute rates"),
            "{out}"
        );
    }
    let text = std::fs::read_to_string(&hw).unwrap();
    assert!(text.contains("tflops_bf16 = "), "{text}");
    assert!(
        text.contains("from = \"disk\"\nto = \"cpu\"\ngbps = "),
        "{text}"
    );
    // The saved file plans: the measured rates, not the assumed ones.
    let (_d, m) = demo();
    let o = mgpu(&[
        "plan",
        m.to_str().unwrap(),
        "--hardware",
        hw.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = String::from_utf8(o.stdout).unwrap();
    assert!(!plan.contains("CPU, not measured"), "{plan}");
}

/// Rough edge 4: the CPU cost model is calibrated on the demo (13–15 ms per image-step on the
/// 2-core machine whose f32 product `probe --bench` measured at 0.148 TFLOP/s); before, the
/// plan predicted 0.7 ms.
#[test]
fn cpu_plans_of_the_demo_predict_the_measured_step() {
    let (dir, m) = demo();
    let hw = dir.path().join("hw.toml");
    std::fs::write(
        &hw,
        "[[devices]]\nname = \"cpu\"\nmemory = \"24GiB\"\ntflops_bf16 = 0.148\n\n\
         [[links]]\nfrom = \"disk\"\nto = \"cpu\"\ngbps = 3.1\n",
    )
    .unwrap();
    let o = mgpu(&[
        "plan",
        m.to_str().unwrap(),
        "--hardware",
        hw.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let flux = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "flux")
        .unwrap();
    let step = flux["predicted"]["step_seconds"].as_f64().unwrap();
    assert!(
        (0.011..0.017).contains(&step),
        "predicted {step} s/step, measured 0.013–0.015"
    );
}

/// Rough edge 3: planning before downloading. The README's FLUX manifest names files that are
/// not in the repository; `plan` uses the published layouts, chosen by family and file name,
/// and says they are assumed. `run` still needs the files.
#[test]
fn plan_works_before_the_weights_are_downloaded() {
    let m = repo_root().join("manifests/flux-dev-1gpu-cpu.toml");
    let hw = repo_root().join("benches/hw-h100x2-2026-11-26.toml");
    let o = mgpu(&[
        "plan",
        m.to_str().unwrap(),
        "--hardware",
        hw.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(plan.contains("assumed layout: no file at"), "{plan}");
    assert!(plan.contains("FLUX.1-dev (bf16, 23.8 GB)"), "{plan}");
    assert!(plan.contains("T5-XXL (fp16, 9.5 GB)"), "{plan}");
    assert!(
        stderr(&o).matches("warning: no file at").count() == 4,
        "{}",
        stderr(&o)
    );
    let o = mgpu(&[
        "plan",
        m.to_str().unwrap(),
        "--hardware",
        hw.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let flux = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "flux")
        .unwrap();
    assert_eq!(
        flux["blocks"].as_array().unwrap().len(),
        58,
        "resident + 19 double + 38 single"
    );
    let o = mgpu(&[
        "run",
        m.to_str().unwrap(),
        "--hardware",
        hw.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("weights file not found"),
        "{}",
        stderr(&o)
    );

    // The file name picks the variant and the storage; unknown quantisations need the file.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("flux1-dev.safetensors", "flux1-schnell-Q8_0.gguf")
        .replace("variant = \"dev\"\n", "")
        .replace("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors");
    let edited = dir.path().join("m.toml");
    let plan_of = |text: &str| {
        std::fs::write(&edited, text).unwrap();
        mgpu(&[
            "plan",
            edited.to_str().unwrap(),
            "--hardware",
            hw.to_str().unwrap(),
        ])
    };
    let o = plan_of(&text);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = String::from_utf8(o.stdout).unwrap();
    assert!(plan.contains("FLUX.1-schnell (Q8_0, 12.7 GB)"), "{plan}");
    assert!(plan.contains("T5-XXL (fp8, 4.8 GB)"), "{plan}");
    // Every llama.cpp file type city96 publishes, with its tensor types (a Q4_K_M's qkv
    // matrices in Q5_K); other file types need the file.
    let o = plan_of(&text.replace("schnell-Q8_0", "dev-Q4_K_M"));
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = String::from_utf8(o.stdout).unwrap();
    assert!(plan.contains("FLUX.1-dev (Q4_K_M, 6.9 GB)"), "{plan}");
    let o = plan_of(&text.replace("schnell-Q8_0", "dev-IQ4_XS"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("flux1-dev-IQ4_XS.gguf"),
        "{}",
        stderr(&o)
    );
}

/// fp8 compute on a GPU without fp8 tensor cores is refused when planning, before any weight
/// is read, with the `dtype` key underlined and the GPU named (here an A100-like capability
/// 8.0 written into the H100 machine's hardware file); the same manifest plans on the H100.
#[test]
fn fp8_compute_on_an_older_gpu_is_refused_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("fp8.toml");
    let text = std::fs::read_to_string(repo_root().join("manifests/flux-dev-1gpu-cpu.toml"))
        .unwrap()
        .replace(
            "variant = \"dev\"\n",
            "variant = \"dev\"\ndtype = \"fp8\"\n",
        );
    assert!(text.contains("dtype = \"fp8\""));
    std::fs::write(&m, text).unwrap();
    let h100 = repo_root().join("benches/hw-h100x2-2026-11-26.toml");
    let a100 = dir.path().join("a100.toml");
    std::fs::write(
        &a100,
        std::fs::read_to_string(&h100)
            .unwrap()
            .replace("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB")
            .replace("compute_capability = [9, 0]", "compute_capability = [8, 0]"),
    )
    .unwrap();
    let o = mgpu(&[
        "plan",
        m.to_str().unwrap(),
        "--hardware",
        a100.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "`cuda:0` (NVIDIA A100-SXM4-80GB) has compute capability 8.0; they need 8.9 or newer"
        ),
        "{err}"
    );
    assert!(
        err.contains("dtype = \"fp8\"") && err.contains("^^^^^"),
        "{err}"
    );
    assert!(err.contains("use dtype = \"bf16\" on this GPU"), "{err}");
    let o = mgpu(&[
        "plan",
        m.to_str().unwrap(),
        "--hardware",
        h100.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}
