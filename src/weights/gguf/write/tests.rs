//! [`GgufWriter`] tests: gguf-py's fixtures rewritten byte for byte, round trips through the
//! crate's own reader (`parse`, [`WeightFile`]) for every encoded type, refusals that name the
//! file and the tensor, and city96's type rule.

use std::path::Path;

use half::{bf16, f16};

use super::*;
use crate::weights::gguf::tests::fixture;
use crate::weights::gguf::{dequant, parse};
use crate::weights::{Format, WeightFile};

/// Rewrites the gguf-py fixture `name` with a [`GgufWriter`] into `out`: the key-values in
/// `keys` order (the order gguf-py wrote them), the tensors in file order as stored bytes.
/// Returns (fixture bytes, written bytes).
fn rewrite(name: &str, keys: &[&str], out: &Path) -> (Vec<u8>, Vec<u8>) {
    let p = fixture(name);
    let bytes = std::fs::read(&p).unwrap();
    let h = parse(&p, &bytes).unwrap();
    assert_eq!(keys.len(), h.metadata.len(), "{name}: keys");
    assert_eq!(keys[0], "general.architecture");
    let arch = h.metadata["general.architecture"].as_str().unwrap();
    let mut w = GgufWriter::new(out, arch);
    for k in &keys[1..] {
        w.add_metadata(k, h.metadata[*k].clone()).unwrap();
    }
    for t in &h.tensors {
        let raw = bytes[t.offset as usize..(t.offset + t.len) as usize].to_vec();
        w.add_tensor(&t.name, &t.shape, t.dtype, raw).unwrap();
    }
    let size = w.finish().unwrap();
    let written = std::fs::read(out).unwrap();
    assert_eq!(size, written.len() as u64, "{name}: reported size");
    (bytes, written)
}

#[test]
fn rewrites_gguf_py_files_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let all_types = [
        "general.architecture",
        "test.u8",
        "test.i8",
        "test.u16",
        "test.i16",
        "test.u32",
        "test.i32",
        "test.u64",
        "test.i64",
        "test.f32",
        "test.f64",
        "test.bool",
        "test.string",
        "test.array_i32",
        "test.array_str",
        "test.array_nested",
    ];
    let cases: [(&str, &[&str]); 3] = [
        // Every metadata value type (nested arrays too) and every GGML type mgpu reads.
        ("all_types.gguf", &all_types),
        (
            "align64.gguf",
            &["general.architecture", "general.alignment"],
        ),
        // city96's FLUX conversion: F32 and Q8_0 tensors, quantization_version, file_type.
        (
            "flux_tiny_city96.gguf",
            &[
                "general.architecture",
                "general.quantization_version",
                "general.file_type",
            ],
        ),
    ];
    for (name, keys) in cases {
        let (want, got) = rewrite(name, keys, &dir.path().join(name));
        assert_eq!(got.len(), want.len(), "{name}: length");
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first, None, "{name}: first differing byte");
    }
}

/// Deterministic values with structure: signs, a zero block, a wide range.
fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if (32..64).contains(&i) {
                0.0
            } else {
                ((i as f32) * 0.37 + seed).sin() * (1.0 + (i % 7) as f32)
            }
        })
        .collect()
}

fn le_bytes<T: Copy>(v: &[T], f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

#[test]
fn round_trip_through_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.gguf");
    let encoded: Vec<(&str, Vec<u64>, DType)> = vec![
        ("blocks.0.w", vec![3, 64], DType::Q8_0),
        ("blocks.0.w3", vec![2, 2, 96], DType::Q8_0),
        ("blocks.0.b", vec![10], DType::F32),
        ("f32.3d", vec![2, 3, 5], DType::F32),
        ("f16", vec![5, 7], DType::F16),
        ("bf16.4d", vec![3, 2, 2, 4], DType::BF16),
        ("scalar", vec![], DType::F32),
        ("empty", vec![0, 32], DType::Q8_0),
    ];
    let meta = vec![
        ("general.quantization_version", MetaValue::U32(2)),
        ("general.file_type", MetaValue::U32(FILE_TYPE_MOSTLY_Q8_0)),
        ("test.u8", MetaValue::U8(200)),
        ("test.i64", MetaValue::I64(-(1 << 40))),
        ("test.f32", MetaValue::F32(0.1)),
        ("test.bool", MetaValue::Bool(false)),
        ("test.string", MetaValue::String("héllo".into())),
        (
            "test.strings",
            MetaValue::Array(MetaArray::String(vec!["a".into(), String::new()])),
        ),
        (
            "comfy.gguf.orig_shape.unused",
            MetaValue::Array(MetaArray::I32(vec![1, -2])),
        ),
        (
            "test.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::F64(vec![1.5]),
                MetaArray::F64(vec![]),
            ])),
        ),
    ];
    let mut w = GgufWriter::new(&path, "flux");
    assert_eq!(w.path(), path);
    for (k, v) in &meta {
        w.add_metadata(k, v.clone()).unwrap();
    }
    let mut data = Vec::new();
    for (i, (name, shape, dtype)) in encoded.iter().enumerate() {
        let v = values(shape.iter().product::<u64>() as usize, i as f32);
        w.add_f32(name, shape, *dtype, &v).unwrap();
        data.push(v);
    }
    let ints: Vec<u8> = (0..32u8).map(|b| b.wrapping_mul(37)).collect();
    w.add_tensor("ints", &[4, 8], DType::I8, ints.clone())
        .unwrap();
    let size = w.finish().unwrap();

    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(size % 32, 0);
    let h = parse(&path, &bytes).unwrap();
    assert_eq!((h.version, h.alignment), (3, 32));
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut want_names: Vec<&str> = encoded.iter().map(|e| e.0).collect();
    want_names.push("ints");
    assert_eq!(names, want_names, "file order is the order added");
    for t in &h.tensors {
        assert_eq!((t.offset - h.data_start) % 32, 0, "{}", t.name);
    }
    // `ne` is the PyTorch shape reversed: [3, 64] is stored as ne = [64, 3].
    let info = 24
        + bytes[24..]
            .windows(10)
            .position(|w| w == b"blocks.0.w")
            .unwrap()
        + 10;
    assert_eq!(&bytes[info..info + 4], &2u32.to_le_bytes());
    assert_eq!(&bytes[info + 4..info + 12], &64u64.to_le_bytes());
    assert_eq!(&bytes[info + 12..info + 20], &3u64.to_le_bytes());
    assert_eq!(&bytes[info + 20..info + 24], &8u32.to_le_bytes()); // GGML Q8_0

    let f = WeightFile::open(&path).unwrap();
    assert_eq!(
        f.format(),
        Format::Gguf {
            version: 3,
            alignment: 32
        }
    );
    assert_eq!(f.metadata()["general.architecture"].as_str(), Some("flux"));
    for (k, v) in &meta {
        assert_eq!(&f.metadata()[*k], v, "{k}");
    }
    assert_eq!(f.metadata().len(), meta.len() + 1);
    for ((name, shape, dtype), v) in encoded.iter().zip(&data) {
        let t = f.get(name).unwrap();
        assert_eq!((&t.shape, t.dtype), (shape, *dtype), "{name}");
        let raw = f.raw(name).unwrap();
        let back = f.to_f32(name).unwrap();
        match dtype {
            DType::F32 => {
                assert_eq!(raw, le_bytes(v, |x| x.to_le_bytes().to_vec()), "{name}");
                assert_eq!(&back, v, "{name}");
            }
            DType::F16 => assert_eq!(
                raw,
                le_bytes(v, |x| f16::from_f32(x).to_le_bytes().to_vec()),
                "{name}"
            ),
            DType::BF16 => assert_eq!(
                raw,
                le_bytes(v, |x| bf16::from_f32(x).to_le_bytes().to_vec()),
                "{name}"
            ),
            DType::Q8_0 => {
                assert_eq!(raw, dequant::quantize_q8_0(v), "{name}");
                // |x̂ - x| ≤ d/2 + 127·d·2^-11 (d = max|x|/127, then rounded to f16).
                for (xs, ys) in v.chunks(32).zip(back.chunks(32)) {
                    let d = xs.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                    for (x, y) in xs.iter().zip(ys) {
                        assert!(
                            (x - y).abs() <= d * (0.5 + 127.0 / 2048.0) * 1.0001,
                            "{name}: {x} vs {y}"
                        );
                    }
                }
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(f.get("scalar").unwrap().shape, Vec::<u64>::new());
    assert_eq!(f.raw("empty").unwrap(), &[] as &[u8]);
    assert_eq!(f.raw("ints").unwrap(), ints);
    assert_eq!(f.get("ints").unwrap().dtype, DType::I8);
}

#[test]
fn block_quantised_tensors_round_trip_through_the_reader() {
    use crate::weights::gguf::quantize;
    type Quantize = fn(&[f32]) -> Vec<u8>;
    type Dequantize = fn(&[u8], &mut [f32]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocks.gguf");
    let cases: [(&str, Vec<u64>, DType, Quantize, Dequantize); 6] = [
        (
            "k",
            vec![3, 512],
            DType::Q4_K,
            quantize::quantize_q4_k,
            dequant::q4_k,
        ),
        (
            "q5_1",
            vec![2, 3, 64],
            DType::Q5_1,
            quantize::quantize_q5_1,
            dequant::q5_1,
        ),
        (
            "q4_0",
            vec![4, 32],
            DType::Q4_0,
            quantize::quantize_q4_0,
            dequant::q4_0,
        ),
        (
            "q4_1",
            vec![96],
            DType::Q4_1,
            quantize::quantize_q4_1,
            dequant::q4_1,
        ),
        (
            "q5_0",
            vec![2, 64],
            DType::Q5_0,
            quantize::quantize_q5_0,
            dequant::q5_0,
        ),
        (
            "k.empty",
            vec![0, 256],
            DType::Q4_K,
            quantize::quantize_q4_k,
            dequant::q4_k,
        ),
    ];
    let mut w = GgufWriter::new(&path, "flux");
    let mut data = Vec::new();
    for (i, (name, shape, dtype, _, _)) in cases.iter().enumerate() {
        let v = values(shape.iter().product::<u64>() as usize, 3.0 + i as f32);
        w.add_f32(name, shape, *dtype, &v).unwrap();
        data.push(v);
    }
    w.finish().unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let h = parse(&path, &bytes).unwrap();
    let f = WeightFile::open(&path).unwrap();
    for ((name, shape, dtype, quantize, dequantize), v) in cases.iter().zip(&data) {
        let t = &h.tensors.iter().find(|t| t.name == *name).unwrap();
        assert_eq!((&t.shape, t.dtype), (shape, *dtype), "{name}");
        let stored = quantize(v);
        assert_eq!(
            t.len,
            dtype.storage_bytes(v.len() as u64).unwrap(),
            "{name}"
        );
        assert_eq!(f.raw(name).unwrap(), stored, "{name}: stored bytes");
        let mut want = vec![0f32; v.len()];
        dequantize(&stored, &mut want);
        let back = f.to_f32(name).unwrap();
        assert_eq!(back, want, "{name}: quantise then dequantise");
        // And the values are close to what was written: within a few steps of the range.
        let scale = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (x, y) in v.iter().zip(&back) {
            assert!((x - y).abs() <= scale / 4.0, "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn general_alignment_sets_the_data_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a64.gguf");
    let mut w = GgufWriter::new(&path, "test");
    w.add_metadata("general.alignment", MetaValue::U32(64))
        .unwrap();
    w.add_f32("a", &[3], DType::F32, &[1.0, 2.0, 3.0]).unwrap();
    w.add_f32("b", &[2, 32], DType::Q8_0, &values(64, 1.0))
        .unwrap();
    let size = w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let h = parse(&path, &bytes).unwrap();
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_start % 64, 0);
    assert!(h
        .tensors
        .iter()
        .all(|t| (t.offset - h.data_start).is_multiple_of(64)));
    assert_eq!(size % 64, 0);
    assert_eq!(h.tensors[1].offset - h.data_start, 64);
}

#[test]
fn refusals_name_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let mut w = GgufWriter::new(&path, "flux");
    w.add_f32("x", &[32], DType::F32, &[0.0; 32]).unwrap();
    let err = |r: Result<(), WeightsError>| r.unwrap_err().to_string();
    let p = path.display().to_string();
    let cases = [
        (
            err(w.add_f32("x", &[32], DType::F32, &[0.0; 32])),
            "tensor `x`: added twice",
        ),
        (
            err(w.add_f32("q", &[2, 33], DType::Q8_0, &[0.0; 66])),
            "row length 33 of shape [2, 33] is not a multiple of Q8_0's 32-value block",
        ),
        (
            err(w.add_f32("q", &[1, 32], DType::Q8_0, &[f32::NAN; 32])),
            "32 values are NaN or infinite; Q8_0 cannot store them",
        ),
        (
            err(w.add_f32("h", &[2], DType::F16, &[1e6, f32::INFINITY])),
            "1 finite values are too large for F16",
        ),
        (
            err(w.add_f32("h", &[1], DType::BF16, &[f32::MAX])),
            "too large for BF16",
        ),
        (
            err(w.add_f32("n", &[2, 3], DType::F32, &[0.0; 5])),
            "5 values given for shape [2, 3] (6 values)",
        ),
        (
            err(w.add_f32("k", &[256], DType::Q6_K, &[0.0; 256])),
            "add_f32 encodes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q4_K, not Q6_K",
        ),
        (
            err(w.add_f32("k", &[2, 128], DType::Q4_K, &[0.0; 256])),
            "row length 128 of shape [2, 128] is not a multiple of Q4_K's 256-value block",
        ),
        (
            err(w.add_f32("q", &[2, 48], DType::Q5_1, &[0.0; 96])),
            "row length 48 of shape [2, 48] is not a multiple of Q5_1's 32-value block",
        ),
        (
            err(w.add_f32("k", &[256], DType::Q4_K, &[f32::INFINITY; 256])),
            "256 values are NaN or infinite; Q4_K cannot store them",
        ),
        (
            err(w.add_f32("q", &[32], DType::Q4_0, &{
                let mut v = [0.0; 32];
                v[3] = f32::NAN;
                v
            })),
            "1 values are NaN or infinite; Q4_0 cannot store them",
        ),
        (
            err(w.add_tensor("r", &[2, 32], DType::Q8_0, vec![0; 67])),
            "67 bytes given, but [2, 32] values of Q8_0 take 68",
        ),
        (
            err(w.add_tensor("f8", &[4], DType::F8_E4M3, vec![0; 4])),
            "F8_E4M3 cannot be written to GGUF (GGML types: F32, F16,",
        ),
        (
            err(w.add_tensor("d5", &[1, 1, 1, 1, 4], DType::F32, vec![0; 16])),
            "has 5 dimensions; GGUF holds at most 4",
        ),
        (
            err(w.add_tensor("o", &[u64::MAX, 4], DType::F32, vec![])),
            "overflows 64-bit sizes",
        ),
        (
            err(w.add_metadata("general.architecture", MetaValue::String("x".into()))),
            "metadata key `general.architecture` added twice",
        ),
        (
            err(w.add_metadata("general.alignment", MetaValue::U32(48))),
            "general.alignment = 48 (u32) is not a valid alignment",
        ),
        (
            err(w.add_metadata("general.alignment", MetaValue::U64(64))),
            "general.alignment = 64 (u64) is not a valid alignment",
        ),
    ];
    for (e, want) in cases {
        assert!(e.starts_with(&p), "{e}");
        assert!(e.contains(want), "{e}\nwanted: {want}");
    }
    assert!(!path.exists(), "nothing is written before finish");
    // The refused tensors left nothing behind: the file holds only `x`.
    w.finish().unwrap();
    let f = WeightFile::open(&path).unwrap();
    assert_eq!(f.tensors().len(), 1);
    assert_eq!(f.metadata().len(), 1);
}

#[test]
fn a_failed_write_names_the_file_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a folder: the rename into place fails.
    let path = dir.path().join("taken.gguf");
    std::fs::create_dir(&path).unwrap();
    let mut w = GgufWriter::new(&path, "flux");
    w.add_f32("x", &[4], DType::F32, &[1.0; 4]).unwrap();
    let e = w.finish().unwrap_err();
    assert!(matches!(e, WeightsError::Write { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("taken.gguf"), "{msg}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the folder remains");
}

#[test]
fn city96_types_follow_convert_py() {
    let q = DType::Q8_0;
    let cases: [(&str, &[u64], DType); 12] = [
        ("double_blocks.0.img_attn.qkv.weight", &[9216, 3072], q),
        ("single_blocks.3.linear2.weight", &[3072, 15360], q),
        ("double_blocks.0.img_attn.qkv.bias", &[9216], DType::F32),
        (
            "double_blocks.0.img_attn.norm.query_norm.scale",
            &[128],
            DType::F32,
        ),
        ("img_in.weight", &[3072, 64], DType::F32),
        ("txt_in.weight", &[3072, 4096], DType::F32),
        ("time_in.out_layer.weight", &[3072, 3072], DType::F32),
        (
            "final_layer.adaLN_modulation.1.weight",
            &[6144, 3072],
            DType::F32,
        ),
        ("some.linear.weight", &[64, 48], DType::F32), // rows not whole blocks
        ("conv.weight", &[320, 320, 3, 3], DType::F32),
        ("conv.weight", &[320, 320, 2, 32], q),
        ("scalar", &[], DType::F32),
    ];
    for (name, shape, want) in cases {
        assert_eq!(city96_type(name, shape, q), want, "{name} {shape:?}");
    }
    // The rule is the fixture's: city96's conversion of the tiny FLUX gives these types.
    let f = WeightFile::open(fixture("flux_tiny_city96.gguf")).unwrap();
    for t in f.tensors() {
        assert_eq!(city96_type(&t.name, &t.shape, q), t.dtype, "{}", t.name);
    }
}
