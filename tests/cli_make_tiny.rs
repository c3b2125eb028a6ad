//! `mgpu make-tiny`: deterministic files in the real layouts that the models load and run,
//! and clear refusals for what it cannot write.

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
            vec!["make-tiny", "flux", "--out", dir, "--format", "gguf"],
            "GGUF files is not available yet",
        ),
        (
            vec!["make-tiny", "wan", "--out", dir],
            "planned but not run",
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
