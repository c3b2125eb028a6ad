//! [`WeightFile`] over every format: files written by the reference writers (the `safetensors`
//! crate here, torch.save and safetensors.torch through tools/make_torch_fixtures.py), hostile
//! and truncated files, sharded sets that disagree with their index.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Bit-equality, NaN matching any NaN.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

fn write_st(path: &Path, tensors: &[(&str, ::safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, ::safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                ::safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    ::safetensors::serialize_to_file(views, None, path).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn safetensors_written_by_the_reference_crate() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let w = [1.0f32, -2.0, 3.5, 0.25, 1e-3, -7.0];
    let bf: Vec<u8> = w
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let i: Vec<u8> = [-1i64, 5].iter().flat_map(|x| x.to_le_bytes()).collect();
    write_st(
        &p,
        &[
            ("w", ::safetensors::Dtype::F32, vec![2, 3], f32_bytes(&w)),
            ("w_bf16", ::safetensors::Dtype::BF16, vec![3, 2], bf.clone()),
            ("ids", ::safetensors::Dtype::I64, vec![2], i.clone()),
        ],
    );
    let f = WeightFile::open(&p).unwrap();
    assert_eq!(f.format(), Format::Safetensors);
    assert_eq!(f.tensors().len(), 3);
    assert_eq!(f.total_bytes(), 24 + 12 + 16);
    assert_eq!(f.get("w").unwrap().shape, vec![2, 3]);
    assert_eq!(f.raw("w_bf16").unwrap(), &bf[..]);
    assert_eq!(f.raw("ids").unwrap(), &i[..]);
    assert_eq!(f.to_f32("w").unwrap(), w);
    assert_eq!(f.to_f32("ids").unwrap(), [-1.0, 5.0]);
    let mut buf = [0f32; 6];
    f.to_f32_into("w", &mut buf).unwrap();
    assert_eq!(buf, w);
    assert!(f
        .to_f32_into("ids", &mut buf)
        .unwrap_err()
        .to_string()
        .contains("has 2 values but the output buffer holds 6"));
    assert_eq!(
        f.to_bf16("w_bf16").unwrap(),
        w.iter()
            .map(|&x| half::bf16::from_f32(x))
            .collect::<Vec<_>>()
    );
    assert_eq!(f.file_of("w").unwrap(), p);
    let dev = candle_core::Device::Cpu;
    let t = f.to_candle("w", candle_core::DType::BF16, &dev).unwrap();
    assert_eq!(t.dims(), [2, 3]);
    let rounded: Vec<f32> = w
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(
        t.to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        rounded
    );
    let t = f.to_candle("ids", candle_core::DType::I64, &dev).unwrap();
    assert_eq!(t.to_vec1::<i64>().unwrap(), [-1, 5]);
    let e = f.raw("w_bf61").unwrap_err().to_string();
    assert!(
        e.contains("no such tensor") && e.contains("did you mean `w_bf16`?"),
        "{e}"
    );
}

#[test]
fn fp8_every_bit_pattern_matches_torch() {
    let f = WeightFile::open(fixture("safetensors/fp8.safetensors")).unwrap();
    for k in ["all.e4m3", "all.e5m2"] {
        assert_eq!(f.get(k).unwrap().shape, vec![256]);
        let ours = f.to_f32(k).unwrap();
        let torch = f.to_f32(&format!("{k}.as_f32")).unwrap();
        assert!(same_bits(&ours, &torch), "{k}");
    }
    // candle's own fp8 conversion agrees too.
    let c = f
        .to_candle(
            "all.e4m3",
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
    assert!(same_bits(
        &c.to_vec1::<f32>().unwrap(),
        &f.to_f32("all.e4m3.as_f32").unwrap()
    ));
}

#[test]
fn comfyui_scaled_fp8() {
    let f = WeightFile::open(fixture("safetensors/fp8.safetensors")).unwrap();
    let w = "model.diffusion_model.double_blocks.0.img_attn.qkv.weight";
    assert_eq!(f.get(w).unwrap().dtype, DType::F8_E4M3);
    assert_eq!(f.scale_of(w).unwrap(), Some(0.0123));
    assert_eq!(f.scale_of("all.e4m3").unwrap(), None);
    let want = f.to_f32("expected.qkv").unwrap();
    assert!(same_bits(&f.to_f32(w).unwrap(), &want));
    let c = f
        .to_candle(w, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    assert!(same_bits(
        &c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        &want
    ));
    assert_eq!(f.get("scaled_fp8").unwrap().len, 0);
    assert_eq!(
        crate::weights::detect_family(f.tensors()),
        Some(crate::family::Family::Flux)
    );
}

#[test]
fn bad_scale_weight_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    write_st(
        &p,
        &[
            (
                "l.weight",
                ::safetensors::Dtype::F8_E4M3,
                vec![2],
                vec![0x38, 0x40],
            ),
            (
                "l.scale_weight",
                ::safetensors::Dtype::F32,
                vec![2],
                f32_bytes(&[1.0, 2.0]),
            ),
        ],
    );
    let e = WeightFile::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("scale of fp8 weight `l.weight` must be one"),
        "{e}"
    );
}

#[test]
fn sharded_set() {
    let f = WeightFile::open(fixture("safetensors/sharded/model.safetensors.index.json")).unwrap();
    assert_eq!(f.format(), Format::SafetensorsSharded { shards: 2 });
    assert_eq!(f.tensors().len(), 3);
    assert!(f
        .file_of("b.weight")
        .unwrap()
        .ends_with("model-00002-of-00002.safetensors"));
    assert_eq!(f.get("b.weight").unwrap().dtype, DType::F16);
    let total = f.metadata()["total_size"].as_u64().unwrap();
    assert_eq!(total, f.total_bytes());
    let direct = WeightFile::open(fixture(
        "safetensors/sharded/model-00001-of-00002.safetensors",
    ))
    .unwrap();
    assert_eq!(
        f.to_f32("a.weight").unwrap(),
        direct.to_f32("a.weight").unwrap()
    );
}

#[test]
fn sharded_sets_that_disagree_with_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let one = |name: &str, tensors: &[&str]| {
        let list: Vec<_> = tensors
            .iter()
            .map(|t| (*t, ::safetensors::Dtype::F32, vec![1], f32_bytes(&[1.0])))
            .collect();
        write_st(&d.join(name), &list);
    };
    one("s1.safetensors", &["a", "b"]);
    one("s2.safetensors", &["c"]);
    one("s3.safetensors", &["a"]);
    let cases = [
        (
            r#"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}}"#,
            None,
        ),
        (
            r#"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"missing.safetensors"}}"#,
            Some("missing.safetensors"),
        ),
        (
            r#"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors","z":"s2.safetensors"}}"#,
            Some("which has no such tensor"),
        ),
        (
            r#"{"weight_map":{"a":"s1.safetensors","c":"s2.safetensors"}}"#,
            Some("not listed in the index"),
        ),
        (
            r#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s2.safetensors"}}"#,
            Some("the index maps it to"),
        ),
        (
            r#"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s3.safetensors"}}"#,
            Some("is in two shards"),
        ),
    ];
    for (json, want) in cases {
        let ix = d.join("model.safetensors.index.json");
        std::fs::write(&ix, json).unwrap();
        match (WeightFile::open(&ix), want) {
            (Ok(f), None) => assert_eq!(f.tensors().len(), 3),
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{json}: {e}"),
            (r, w) => panic!("{json}: {r:?} (wanted {w:?})"),
        }
    }
}

#[test]
fn pytorch_state_dict_matches_torch() {
    let f = WeightFile::open(fixture("torch/state_dict.pt")).unwrap();
    let want = WeightFile::open(fixture("torch/expected.safetensors")).unwrap();
    assert_eq!(f.format(), Format::PyTorch);
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names[..3], ["layer.weight", "layer.bias", "half"]);
    for t in want.tensors() {
        if t.name == "fp8_as_f32" {
            continue;
        }
        let ours = f
            .get(&t.name)
            .unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!((ours.dtype, &ours.shape), (t.dtype, &t.shape), "{}", t.name);
        assert_eq!(
            &*f.bytes(&t.name).unwrap(),
            want.raw(&t.name).unwrap(),
            "{}",
            t.name
        );
        assert!(
            same_bits(&f.to_f32(&t.name).unwrap(), &want.to_f32(&t.name).unwrap()),
            "{}",
            t.name
        );
    }
    assert!(same_bits(
        &f.to_f32("fp8").unwrap(),
        &want.to_f32("fp8_as_f32").unwrap()
    ));
    // Views: the transposed one has no single byte range; the slice starts 4 values in.
    assert!(f
        .raw("transposed")
        .unwrap_err()
        .to_string()
        .contains("non-contiguous"));
    assert_eq!(
        f.get("rows").unwrap().offset,
        f.get("base").unwrap().offset + 16
    );
    assert_eq!(
        f.get("tied.a").unwrap().offset,
        f.get("tied.b").unwrap().offset
    );
    assert_eq!(f.get("scalar").unwrap().shape, Vec::<u64>::new());
    assert_eq!(f.to_f32("scalar").unwrap(), [2.5]);
    let t = f
        .to_candle(
            "transposed",
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
    assert_eq!(
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.to_f32("transposed").unwrap()
    );
}

#[test]
fn lightning_checkpoint_nests_its_state_dict() {
    let f = WeightFile::open(fixture("torch/lightning.ckpt")).unwrap();
    let want = WeightFile::open(fixture("torch/lightning_expected.safetensors")).unwrap();
    assert_eq!(
        f.metadata()["pytorch.state_dict_key"],
        MetaValue::String("state_dict".into())
    );
    assert_eq!(f.tensors().len(), 2);
    for n in ["model.w", "model.b"] {
        assert_eq!(f.raw(n).unwrap(), want.raw(n).unwrap());
    }
}

#[test]
fn pytorch_refusals() {
    // torch.save pickles with protocol 2, which spells Python 3's `builtins` as `__builtin__`.
    let p = fixture("torch/evil.pt");
    let e = WeightFile::open(&p).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "refusing global __builtin__.print in {}: mgpu loads tensors only, no code",
            p.display()
        )
    );
    let e = WeightFile::open(fixture("torch/legacy.pt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("legacy PyTorch serialization"), "{e}");
}

#[test]
fn unrecognised_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.bin");
    std::fs::write(&p, b"hello world").unwrap();
    let e = WeightFile::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("unrecognised format (first bytes 68 65 6c 6c 6f 20 77 6f)"),
        "{e}"
    );
    std::fs::write(&p, b"").unwrap();
    let e = WeightFile::open(&p).unwrap_err().to_string();
    assert!(e.contains("empty file"), "{e}");
    let e = WeightFile::open(dir.path().join("nope.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.gguf"), "{e}");
}

/// Every prefix of a valid file opens as an error (or, for a prefix that is itself complete,
/// as a file whose tensors all read) — never a panic.
fn every_prefix(rel: &str) {
    let src = fixture(rel);
    let bytes = std::fs::read(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(src.file_name().unwrap());
    for n in 0..bytes.len() {
        std::fs::write(&p, &bytes[..n]).unwrap();
        if let Ok(f) = WeightFile::open(&p) {
            for t in f.tensors() {
                f.to_f32(&t.name).unwrap();
            }
        }
    }
}

#[test]
fn truncated_pytorch_checkpoints() {
    every_prefix("torch/state_dict.pt");
}

#[test]
fn truncated_safetensors() {
    every_prefix("safetensors/fp8.safetensors");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random byte overwrites of a torch checkpoint: an error, or a file whose every tensor
    /// converts — never a panic, never a read outside the file.
    #[test]
    fn mutated_checkpoints_never_panic(edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..4)) {
        let src = fixture("torch/state_dict.pt");
        let mut bytes = std::fs::read(&src).unwrap();
        let n = bytes.len();
        for (at, b) in edits {
            bytes[at as usize % n] = b;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.pt");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(f) = WeightFile::open(&p) {
            for t in f.tensors() {
                prop_assert!(f.to_f32(&t.name).is_ok());
            }
        }
    }
}

#[test]
fn qtensor_from_unaligned_bytes() {
    // A hand-made safetensors file whose data section starts at an odd offset.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.safetensors");
    let header = br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    assert_eq!((8 + header.len()) % 2, 1);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend(f32_bytes(&[1.0, -2.0, 0.5, 8.0]));
    std::fs::write(&p, &b).unwrap();
    let f = WeightFile::open(&p).unwrap();
    let q = f.to_qtensor("w", &candle_core::Device::Cpu).unwrap();
    let v = q
        .dequantize(&candle_core::Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(v, [1.0, -2.0, 0.5, 8.0]);
}
