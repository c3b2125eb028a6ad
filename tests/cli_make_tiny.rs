//! `mgpu make-tiny`: deterministic files in the real layouts that the models load and run,
//! FLUX as a city96-style GGUF that `mgpu inspect` reads and `mgpu run` runs, and clear
//! refusals for what it cannot write.

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use mgpu::models::flux::{self, FluxDit};
use mgpu::models::{tiny, vae};

fn mgpu(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mgpu"))
        .args(args)
        .output()
        .expect("run mgpu")
}

fn make(family: &str, dir: &Path, extra: &[&str]) {
    let mut args = vec!["make-tiny", family, "--out", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = mgpu(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    for d in [&a, &b] {
        make("flux", d.path(), &["--seed", "7"]);
        make("flux-vae", d.path(), &["--seed", "7"]);
    }
    make("flux", c.path(), &["--seed", "8"]);
    for f in [
        "flux-tiny.safetensors",
        "lora-tiny.safetensors",
        "ae-tiny.safetensors",
    ] {
        let x = std::fs::read(a.path().join(f)).unwrap();
        assert_eq!(
            x,
            std::fs::read(b.path().join(f)).unwrap(),
            "{f} differs between runs"
        );
        assert!(
            x.len() < 400 * 1024,
            "{f} is {} bytes: keep tiny files small",
            x.len()
        );
    }
    assert_ne!(
        std::fs::read(a.path().join("flux-tiny.safetensors")).unwrap(),
        std::fs::read(c.path().join("flux-tiny.safetensors")).unwrap()
    );
}

#[test]
fn written_models_have_the_layout_and_run() {
    let d = tempfile::tempdir().unwrap();
    make("flux", d.path(), &[]);
    make("flux-vae", d.path(), &[]);
    make(
        "flux",
        d.path(),
        &["--variant", "schnell", "--dtype", "f32"],
    );

    let header =
        mgpu::weights::safetensors::read_header(&d.path().join("flux-tiny.safetensors")).unwrap();
    let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    let layout = tiny::flux_layout(&flux::Config::tiny()).unwrap();
    assert_eq!(names.len(), layout.len());
    assert!(names.iter().all(|n| layout.contains_key(*n)));
    assert!(header
        .tensors
        .iter()
        .all(|t| t.dtype == mgpu::weights::DType::BF16));
    assert!(header.metadata["mgpu"].contains("random weights"));

    let dev = Device::Cpu;
    let load = |f: &str| unsafe {
        VarBuilder::from_mmaped_safetensors(&[d.path().join(f)], DType::F32, &dev).unwrap()
    };
    for (file, cfg, g) in [
        ("flux-tiny.safetensors", flux::Config::tiny(), Some(3.5)),
        (
            "flux-schnell-tiny.safetensors",
            flux::Config::tiny_schnell(),
            None,
        ),
    ] {
        let vb = load(file);
        let inferred =
            flux::Config::infer(|n| vb.get_unchecked(n).ok().map(|t| t.dims().to_vec())).unwrap();
        assert_eq!(inferred, cfg, "{file}");
        let dit = FluxDit::new(&cfg, vb.clone()).unwrap();
        let units = FluxDit::units(&cfg);
        let latent = Tensor::randn(0f32, 1.0, (1, 16, 4, 6), &dev).unwrap();
        let txt = Tensor::randn(0f32, 1.0, (1, 5, 32), &dev).unwrap();
        let vec = Tensor::randn(0f32, 1.0, (1, 32), &dev).unwrap();
        let v = dit
            .forward(&latent, &txt, &vec, 0.9, g, &mut |i| Ok(vb.pp(&units[i])))
            .unwrap();
        assert_eq!(v.dims(), &[1, 16, 4, 6]);
        let ae = vae::AutoEncoder::new(&vae::Config::tiny(), load("ae-tiny.safetensors")).unwrap();
        let img = ae.decoder.decode(&v).unwrap();
        assert_eq!(img.dims(), &[1, 3, 32, 48]);
        assert!(img
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite()));
    }

    let lora =
        mgpu::weights::safetensors::read_header(&d.path().join("lora-tiny.safetensors")).unwrap();
    let find = |n: &str| {
        lora.tensors
            .iter()
            .find(|t| t.name == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(
        find("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight").shape,
        vec![4, 32]
    );
    assert_eq!(
        find("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight").shape,
        vec![96, 4]
    );
    assert_eq!(
        find("lora_unet_single_blocks_1_linear1.alpha").shape,
        Vec::<u64>::new()
    );
}

#[test]
fn unsupported_requests_fail_with_exit_2_and_say_why() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let cases = [
        (
            vec!["make-tiny", "t5", "--out", dir, "--format", "gguf"],
            "GGUF is written for flux only",
        ),
        (
            vec!["make-tiny", "flux-vae", "--out", dir, "--format", "gguf"],
            "use --format safetensors for flux-vae",
        ),
        (
            // Wan runs since issue #10; its tiny model is written as safetensors only.
            vec!["make-tiny", "wan", "--out", dir, "--format", "gguf"],
            "GGUF for flux only",
        ),
        (
            vec!["make-tiny", "flx", "--out", dir],
            "did you mean `flux`",
        ),
    ];
    for (args, msg) in cases {
        let out = mgpu(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        0,
        "nothing written on refusal"
    );
}

#[test]
fn text_encoders_and_tokenizers_load_and_run() {
    use candle_core::{DType, Device};
    use mgpu::models::{clip, t5, tokenize};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    for fam in ["t5", "clip-l"] {
        let out = mgpu(&["make-tiny", fam, "--out", dir]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dev = Device::Cpu;
    let tok = tokenize::T5Tokenizer::from_file(d.path().join("t5-tokenizer.json")).unwrap();
    let ids = tok.encode("a red fox in snow", 16).unwrap();
    let w = candle_core::safetensors::load(d.path().join("t5-tiny.safetensors"), &dev).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(w, DType::F32, &dev);
    let enc = t5::T5Encoder::new(&t5::Config::tiny(), vb.clone()).unwrap();
    let h = enc
        .forward(&ids.ids, &mut |i| Ok(vb.pp(format!("encoder.block.{i}"))))
        .unwrap();
    assert_eq!(h.dims3().unwrap(), (1, 16, t5::Config::tiny().d_model));

    let tok = tokenize::ClipTokenizer::from_file(d.path().join("clip-tokenizer.json")).unwrap();
    let ids = tok.encode("a red fox in snow").unwrap();
    let w = candle_core::safetensors::load(d.path().join("clip-tiny.safetensors"), &dev).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(w, DType::F32, &dev);
    let m = clip::ClipTextModel::new(&clip::Config::tiny(), vb.clone()).unwrap();
    let out = m
        .forward(&ids.ids, &mut |i| {
            Ok(vb.pp(format!("text_model.encoder.layers.{i}")))
        })
        .unwrap();
    assert_eq!(
        out.pooled.dims2().unwrap(),
        (1, clip::Config::tiny().hidden_size)
    );
}

fn mgpu_ok(args: &[&str]) -> String {
    let out = mgpu(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gguf_flux_is_city96_q8_0_of_the_safetensors_and_inspect_reads_it() {
    use mgpu::weights::gguf::dequant::quantize_q8_0;
    use mgpu::weights::{DType as W, Format, WeightFile};
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    make("flux", a.path(), &["--format", "gguf"]);
    make("flux", a.path(), &[]); // the bf16 safetensors of the same seed
    make("flux", b.path(), &["--format", "gguf"]);
    make(
        "flux",
        b.path(),
        &["--format", "gguf", "--variant", "schnell"],
    );
    let gg = a.path().join("flux-tiny-Q8_0.gguf");
    let bytes = std::fs::read(&gg).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(b.path().join("flux-tiny-Q8_0.gguf")).unwrap(),
        "same seed, same bytes"
    );
    assert!(bytes.len() < 400 * 1024, "{} bytes", bytes.len());
    // The LoRA beside it stays safetensors.
    let lora = WeightFile::open(b.path().join("lora-tiny.safetensors")).unwrap();
    assert_eq!(lora.format(), Format::Safetensors);

    let text = mgpu_ok(&["inspect", gg.to_str().unwrap()]);
    assert!(text.contains("format    GGUF v3 (alignment 32)"), "{text}");
    assert!(
        text.contains("family    flux (original key layout)"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&mgpu_ok(&["inspect", "--json", gg.to_str().unwrap()])).unwrap();
    assert_eq!(
        v["format"],
        serde_json::json!({"kind": "gguf", "version": 3, "alignment": 32})
    );
    assert_eq!(v["detected"]["family"], "flux");
    assert_eq!(v["metadata"]["general.architecture"], "flux");
    assert_eq!(v["metadata"]["general.quantization_version"], 2);
    assert_eq!(v["metadata"]["general.file_type"], 7);
    let tensors = v["tensors"].as_array().unwrap();
    let q8 = tensors.iter().filter(|t| t["dtype"] == "Q8_0").count();
    assert_eq!(q8, 26, "every matrix of the blocks");
    let qkv = tensors
        .iter()
        .find(|t| t["name"] == "double_blocks.0.img_attn.qkv.weight")
        .unwrap();
    assert_eq!(
        (&qkv["dtype"], &qkv["shape"]),
        (&serde_json::json!("Q8_0"), &serde_json::json!([96, 32]))
    );

    // City96's conversion of the bf16 safetensors: same names and shapes, F32 tensors hold
    // the same values, Q8_0 blocks are llama.cpp's quantisation of them.
    let st = WeightFile::open(a.path().join("flux-tiny.safetensors")).unwrap();
    let g = WeightFile::open(&gg).unwrap();
    assert_eq!(g.tensors().len(), st.tensors().len());
    for t in g.tensors() {
        let s = st.get(&t.name).unwrap();
        assert_eq!(t.shape, s.shape, "{}", t.name);
        let want = st.to_f32(&t.name).unwrap();
        match t.dtype {
            W::F32 => {
                assert_eq!(g.to_f32(&t.name).unwrap(), want, "{}", t.name);
                let kept = [
                    "img_in.",
                    "txt_in.",
                    "time_in.",
                    "vector_in.",
                    "guidance_in.",
                    "final_layer.",
                ];
                assert!(
                    t.shape.len() == 1 || kept.iter().any(|k| t.name.starts_with(k)),
                    "{} is F32",
                    t.name
                );
            }
            W::Q8_0 => assert_eq!(g.raw(&t.name).unwrap(), quantize_q8_0(&want), "{}", t.name),
            other => panic!("{}: {other}", t.name),
        }
    }

    let schnell = WeightFile::open(b.path().join("flux-schnell-tiny-Q8_0.gguf")).unwrap();
    assert_eq!(
        mgpu::weights::detect_family(schnell.tensors()),
        Some(mgpu::family::Family::Flux)
    );
    assert!(schnell.get("guidance_in.in_layer.weight").is_none());
    assert_eq!(schnell.tensors().len(), 80);
}

/// The demo (manifests/tiny.toml: FLUX with a LoRA, half its blocks streamed from disk, T5,
/// CLIP-L, VAE on the CPU) with its FLUX model replaced by `make-tiny flux --format gguf`:
/// `mgpu run` makes every image, computing in f32 (dequantised at load) and in bf16 (the Q8_0
/// blocks stay quantised until used).
#[test]
fn a_gguf_flux_runs_the_demo_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    for f in [
        "ae-tiny.safetensors",
        "t5-tiny.safetensors",
        "t5-tokenizer.json",
        "clip-tiny.safetensors",
        "clip-tokenizer.json",
    ] {
        std::fs::copy(Path::new("manifests/tiny").join(f), tiny.join(f)).unwrap();
    }
    make("flux", &tiny, &["--format", "gguf"]);
    let demo = std::fs::read_to_string("manifests/tiny.toml").unwrap();
    let from = "file = \"tiny/flux-tiny.safetensors\"";
    assert!(demo.contains(from));
    let gguf = demo.replace(from, "file = \"tiny/flux-tiny-Q8_0.gguf\"");
    let bf16 = gguf
        .replace("out/tiny", "out/bf16")
        .replace("[models.flux]\n", "[models.flux]\ndtype = \"bf16\"\n");
    assert!(bf16.contains("dtype = \"bf16\""));
    for (name, text, root) in [
        ("gguf.toml", gguf, "out/tiny"),
        ("bf16.toml", bf16, "out/bf16"),
    ] {
        let m = dir.path().join(name);
        std::fs::write(&m, text).unwrap();
        let report = dir.path().join(format!("{name}.json"));
        mgpu_ok(&[
            "run",
            m.to_str().unwrap(),
            "-q",
            "--report",
            report.to_str().unwrap(),
        ]);
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(r["status"], "ok", "{name}");
        assert_eq!(r["counts"]["made"], 4, "{name}");
        // The plan counts what the executor holds, unit by unit: LoRA-patched Q8_0 blocks
        // dequantised to the compute dtype, on the compute device and on disk alike, the
        // file's F32 norms and biases shrunk to bf16 in the bf16 run (decision 38).
        let flux = r["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "flux")
            .unwrap();
        for d in flux["devices"].as_array().unwrap() {
            let (p, m) = (
                d["planned_bytes"].as_u64().unwrap(),
                d["measured_bytes"].as_u64().unwrap(),
            );
            assert_eq!(p, m, "{name}: {d}");
        }
        for t in r["tasks"].as_array().unwrap() {
            let png = Path::new(t["output"].as_str().unwrap());
            assert!(png.starts_with(dir.path().join(root)), "{}", png.display());
            let meta = mgpu::output::read_png_metadata(png).unwrap();
            let record = meta.record.unwrap();
            let flux = record.models.iter().find(|m| m.name == "flux").unwrap();
            assert_eq!(flux.file, "tiny/flux-tiny-Q8_0.gguf");
            assert_eq!(record.loras.len(), 1, "the demo's LoRA is applied");
        }
    }
}

/// `make-tiny wan --experts` writes the two committed Wan 2.2 A14B-style experts (the same
/// bytes: the demo and tests/wan22.rs use them), different from each other; other families
/// refuse `--experts`.
#[test]
fn wan_experts_are_the_committed_files() {
    let d = tempfile::tempdir().unwrap();
    make("wan", d.path(), &["--experts"]);
    let read = |p: &Path| std::fs::read(p).unwrap();
    let names = [
        "wan22-high-noise-tiny.safetensors",
        "wan22-low-noise-tiny.safetensors",
    ];
    for f in names {
        assert!(
            read(&d.path().join(f)) == read(&Path::new("manifests/tiny").join(f)),
            "{f}: regenerate with `mgpu make-tiny wan --experts --out manifests/tiny`"
        );
    }
    assert_ne!(
        read(&d.path().join(names[0])),
        read(&d.path().join(names[1]))
    );
    assert!(!d.path().join("wan-tiny.safetensors").exists());
    let out = mgpu(&[
        "make-tiny",
        "flux",
        "--experts",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only wan has experts"), "{err}");
}

/// `make-tiny wan --ti2v` and `make-tiny wan-vae --ti2v` write the committed Wan 2.2
/// TI2V-5B-style transformer and Wan 2.2 VAE (the TI2V demo and tests/wan22_ti2v.rs use them);
/// other families and `--experts` refuse `--ti2v`.
#[test]
fn ti2v_models_are_the_committed_files() {
    let d = tempfile::tempdir().unwrap();
    make("wan", d.path(), &["--ti2v"]);
    make("wan-vae", d.path(), &["--ti2v"]);
    let read = |p: &Path| std::fs::read(p).unwrap();
    for (f, cmd) in [
        ("wan22-ti2v-5b-tiny.safetensors", "wan --ti2v"),
        ("wan22-vae-tiny.safetensors", "wan-vae --ti2v"),
    ] {
        assert!(
            read(&d.path().join(f)) == read(&Path::new("manifests/tiny").join(f)),
            "{f}: regenerate with `mgpu make-tiny {cmd} --out manifests/tiny`"
        );
    }
    assert!(!d.path().join("wan-tiny.safetensors").exists());
    let dir = d.path().to_str().unwrap();
    for (args, want) in [
        (vec!["make-tiny", "umt5", "--ti2v"], "exists for wan"),
        (
            vec!["make-tiny", "wan", "--experts", "--ti2v"],
            "TI2V-5B is one model",
        ),
    ] {
        let mut args = args;
        args.extend(["--out", dir]);
        let out = mgpu(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}
