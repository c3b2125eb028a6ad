//! Parity of mgpu's umT5 path (Wan 2.1's text encoder) with transformers / diffusers / ComfyUI,
//! on the fixtures tools/parity_umt5.py writes to tests/fixtures/parity/text/umt5-*:
//! - prompt cleaning against Python's `html.unescape` + `regex` whitespace (+ ftfy's quotes);
//! - the umT5 tokenizer from `spiece.model`, from `tokenizer.json` and from the `spiece_model`
//!   tensor of ComfyUI-style weight files, against transformers' ids (exact) and SentencePiece's;
//! - the masked encoder, loaded through the weights layer and the key map from a bf16 file and
//!   a ComfyUI scaled-fp8 file, against `UMT5EncoderModel` as WanPipeline uses it (padded rows
//!   zeroed), within 1e-4 relative (max |ours − theirs| / max |theirs|), in f32.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use mgpu::family::Family;
use mgpu::models::t5;
use mgpu::models::tokenize::{clean, T5Tokenizer};
use mgpu::weights::keymap::canonicalize;
use mgpu::weights::WeightFile;
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/text")
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("umt5-cases.json")).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

#[test]
fn prompt_cleaning_matches_python() {
    let c = cases();
    let mut ftfy_differs = 0;
    for case in c["clean"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ours = clean::wan_prompt_clean(prompt);
        assert_eq!(ours, case["clean"].as_str().unwrap(), "{prompt:?}");
        if case["ftfy_differs"].as_bool().unwrap() {
            ftfy_differs += 1;
            assert_ne!(ours, case["diffusers"].as_str().unwrap());
        } else {
            assert_eq!(ours, case["diffusers"].as_str().unwrap(), "{prompt:?}");
        }
    }
    eprintln!(
        "cleaning: {} prompts; real ftfy changes {ftfy_differs} of them further",
        c["clean"].as_array().unwrap().len()
    );
}

#[test]
fn umt5_tokenizers_match_transformers_and_sentencepiece() {
    let c = cases();
    let u = &c["umt5"];
    let sources = [
        ("spiece.model", dir().join("umt5-spiece.model")),
        ("tokenizer.json", dir().join("umt5-tokenizer.json")),
        ("bf16 weights", dir().join("umt5-model.safetensors")),
        (
            "scaled-fp8 weights",
            dir().join("umt5-fp8-scaled.safetensors"),
        ),
    ];
    for (what, path) in &sources {
        let tok = T5Tokenizer::umt5_from_file(path).unwrap();
        assert_eq!(tok.vocab_size(), usize_of(&u["tokenizer_vocab"]), "{what}");
        assert_eq!(
            tok.vocab_size(),
            usize_of(&u["spiece_pieces"]) + usize_of(&u["extra_ids"])
        );
        for case in u["cases"].as_array().unwrap() {
            let cleaned = clean::wan_prompt_clean(case["prompt"].as_str().unwrap());
            assert_eq!(cleaned, case["cleaned"].as_str().unwrap());
            let e = tok.encode(&cleaned, usize_of(&case["max_len"])).unwrap();
            assert_eq!(e.ids, u32s(&case["ids"]), "{what}: {cleaned:?}");
            assert_eq!(e.tokens, usize_of(&case["tokens"]), "{what}: {cleaned:?}");
            assert_eq!(e.truncated, case["truncated"].as_bool().unwrap());
            assert_eq!(e.valid_len(), usize_of(&case["valid_len"]), "{what}");
            // ComfyUI tokenises with sentencepiece itself: same ids wherever the prompt has
            // no special-token text (sentencepiece reads `</s>` as characters).
            if case["sentencepiece_agrees"].as_bool().unwrap() && !e.truncated {
                assert_eq!(
                    e.ids[..e.valid_len()],
                    u32s(&case["sentencepiece"])[..],
                    "{what}: {cleaned:?}"
                );
            }
        }
    }
}

/// The canonical tensors of a weights file as f32 candle tensors, through the key map (which
/// must recognise the file as umT5 and skip its `spiece_model`).
fn load_canonical(
    path: &Path,
) -> (
    HashMap<String, Tensor>,
    mgpu::weights::keymap::CanonicalLayout,
) {
    let file = WeightFile::open(path).unwrap();
    assert_eq!(
        mgpu::weights::detect_family(file.tensors()),
        Some(Family::UmT5)
    );
    let layout = canonicalize(Family::UmT5, file.tensors()).unwrap();
    assert!(layout.ignored.iter().any(|i| i.name == "spiece_model"));
    let mut out = HashMap::new();
    for t in &layout.tensors {
        assert_eq!(t.parts.len(), 1, "{}", t.name);
        let v = file
            .to_candle(&t.parts[0].source, DType::F32, &Device::Cpu)
            .unwrap();
        out.insert(t.name.clone(), v);
    }
    (out, layout)
}

type Units = BTreeMap<String, HashMap<String, Tensor>>;
fn split(tensors: HashMap<String, Tensor>) -> (HashMap<String, Tensor>, Units) {
    let mut resident = HashMap::new();
    let mut units = Units::new();
    for (name, t) in tensors {
        match Family::UmT5.unit_of(&name) {
            Some(u) => {
                units
                    .entry(u.clone())
                    .or_default()
                    .insert(name[u.len() + 1..].to_string(), t);
            }
            None => {
                resident.insert(name, t);
            }
        }
    }
    (resident, units)
}

fn rel_err(ours: &Tensor, theirs: &Tensor) -> f32 {
    assert_eq!(ours.dims(), theirs.dims());
    let max = |t: Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    max((ours - theirs).unwrap()) / max(theirs.clone())
}

fn config(v: &Value) -> t5::Config {
    t5::Config {
        vocab_size: usize_of(&v["vocab_size"]),
        d_model: usize_of(&v["d_model"]),
        d_kv: usize_of(&v["d_kv"]),
        d_ff: usize_of(&v["d_ff"]),
        num_layers: usize_of(&v["num_layers"]),
        num_heads: usize_of(&v["num_heads"]),
        relative_attention_num_buckets: usize_of(&v["relative_attention_num_buckets"]),
        relative_attention_max_distance: usize_of(&v["relative_attention_max_distance"]),
        layer_norm_epsilon: v["layer_norm_epsilon"].as_f64().unwrap(),
        per_layer_position_bias: true,
    }
}

fn check_encoder(file: &str, suffix: &str, only_fp8_cases: bool) -> f32 {
    let c = cases();
    let u = &c["umt5"];
    let cfg = config(&u["config"]);
    let (tensors, layout) = load_canonical(&dir().join(file));
    if suffix == ".fp8" {
        assert!(layout.scaled_fp8.is_some(), "{file}: scaled_fp8 marker");
        assert!(layout.tensors.iter().any(|t| t.scale.is_some()));
    }
    let (resident, units) = split(tensors);
    assert_eq!(units.keys().cloned().collect::<Vec<_>>(), t5::units(&cfg));
    let enc = t5::T5Encoder::new(
        &cfg,
        VarBuilder::from_tensors(resident, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let expected =
        candle_core::safetensors::load(dir().join("umt5-expected.safetensors"), &Device::Cpu)
            .unwrap();
    let mut worst = 0f32;
    let mut checked = 0;
    for case in u["cases"].as_array().unwrap() {
        if only_fp8_cases && !case["fp8"].as_bool().unwrap() {
            continue;
        }
        let ids = u32s(&case["ids"]);
        let valid = usize_of(&case["valid_len"]);
        let mut state = enc.prepare_masked(&ids, valid).unwrap();
        for i in 0..cfg.num_layers {
            let vb = VarBuilder::from_tensors(
                units[&format!("encoder.block.{i}")].clone(),
                DType::F32,
                &Device::Cpu,
            );
            enc.run_unit(i, vb, &mut state).unwrap();
        }
        let ours = enc.finish(state).unwrap();
        let key = format!("{}{suffix}", case["expected"].as_str().unwrap());
        let theirs = expected[&key].unsqueeze(0).unwrap();
        let err = rel_err(&ours, &theirs);
        assert!(
            err <= TOLERANCE,
            "{file} {:?} ({valid} of {} valid): relative error {err:e}",
            case["cleaned"],
            ids.len()
        );
        let tail: Vec<f32> = ours
            .narrow(1, valid, ids.len() - valid)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(tail.iter().all(|&v| v == 0.0));
        worst = worst.max(err);
        checked += 1;
    }
    assert!(checked >= 3);
    worst
}

#[test]
fn umt5_encoder_matches_transformers_with_masks() {
    let worst = check_encoder("umt5-model.safetensors", "", false);
    eprintln!("umT5 (bf16 file, f32 compute): worst relative error {worst:e}");
}

#[test]
fn umt5_scaled_fp8_file_loads_and_matches() {
    let worst = check_encoder("umt5-fp8-scaled.safetensors", ".fp8", true);
    eprintln!(
        "umT5 (ComfyUI scaled-fp8 file, dequantised, f32 compute): worst relative error {worst:e}"
    );
}
