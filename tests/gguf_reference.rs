//! Proof against outside references: mgpu's GGUF dequantisation must equal llama.cpp's
//! reference dequantiser (gguf-py 0.19.0 `gguf.quants.dequantize`) bit for bit, for every
//! supported type, on fixtures and expected values written by tools/make_gguf_fixtures.py
//! (expected values are `.npy` files written by numpy itself). City96-style diffusion GGUFs
//! must present the same inventory as the safetensors they were converted from.

use std::path::{Path, PathBuf};

use mgpu::family::Family;
use mgpu::weights::npy::read_f32;
use mgpu::weights::{detect_family, DType, Format, WeightFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn expected(name: &str) -> mgpu::weights::npy::NpyF32 {
    let p = fixture(&format!("expected/{name}.npy"));
    read_f32(&std::fs::read(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Bit-for-bit equality; NaN equals NaN (the payload of a NaN made by `inf * 0` depends on the
/// CPU, not on the dequantiser).
fn assert_bits(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{name}[{i}]: mgpu {g:e} ({:#010x}) vs gguf-py {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn every_type_is_bit_exact_with_gguf_py() {
    let f = WeightFile::open(fixture("all_types.gguf")).unwrap();
    assert_eq!(
        f.format(),
        Format::Gguf {
            version: 3,
            alignment: 32
        }
    );
    let mut seen = std::collections::HashSet::new();
    for t in f.tensors() {
        let want = expected(&t.name);
        assert_eq!(t.shape, want.shape, "{}: shape", t.name);
        assert_bits(&t.name, &f.to_f32(&t.name).unwrap(), &want.data);
        seen.insert(t.dtype);
    }
    // Every GGML type mgpu claims to support is covered by the fixture, except I16/I64 (plain
    // integer types gguf-py writes the same way as I8/I32).
    for d in mgpu::weights::dtype::GGML_SUPPORTED {
        if !matches!(d, DType::I16 | DType::I64) {
            assert!(seen.contains(d), "fixture lacks {d}");
        }
    }
    assert_eq!(f.to_f32("edge.q4_k").unwrap().len(), 8 * 256);
}

#[test]
fn bf16_output_rounds_the_reference_values() {
    let f = WeightFile::open(fixture("all_types.gguf")).unwrap();
    for name in ["t.q4_k", "t.q8_0", "t.bf16", "t.f32"] {
        let want: Vec<half::bf16> = expected(name)
            .data
            .iter()
            .map(|&x| half::bf16::from_f32(x))
            .collect();
        assert_eq!(f.to_bf16(name).unwrap(), want, "{name}");
    }
}

#[test]
fn v2_and_alignment_64_read_like_v3() {
    let v3 = WeightFile::open(fixture("all_types.gguf")).unwrap();
    for file in ["v2.gguf", "align64.gguf"] {
        let f = WeightFile::open(fixture(file)).unwrap();
        assert_eq!(f.tensors().len(), 3, "{file}");
        for t in f.tensors() {
            assert_bits(
                &format!("{file}:{}", t.name),
                &f.to_f32(&t.name).unwrap(),
                &v3.to_f32(&t.name).unwrap(),
            );
        }
    }
    assert!(matches!(
        WeightFile::open(fixture("v2.gguf")).unwrap().format(),
        Format::Gguf { version: 2, .. }
    ));
}

#[test]
fn candle_tensors_from_gguf() {
    let f = WeightFile::open(fixture("all_types.gguf")).unwrap();
    let dev = candle_core::Device::Cpu;
    for name in ["t.q5_k", "t.f16", "t.bf16"] {
        let t = f.to_candle(name, candle_core::DType::F32, &dev).unwrap();
        let want = expected(name);
        assert_eq!(
            t.dims().iter().map(|&d| d as u64).collect::<Vec<_>>(),
            want.shape
        );
        assert_bits(
            name,
            &t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &want.data,
        );
    }
    let t = f
        .to_candle("t.q8_0", candle_core::DType::BF16, &dev)
        .unwrap();
    assert_eq!(t.dtype(), candle_core::DType::BF16);
}

#[test]
fn city96_flux_gguf_has_the_safetensors_inventory() {
    let st = WeightFile::open(fixture("flux_tiny.safetensors")).unwrap();
    let gg = WeightFile::open(fixture("flux_tiny_city96.gguf")).unwrap();
    assert_eq!(gg.metadata()["general.architecture"].as_str(), Some("flux"));
    assert_eq!(detect_family(st.tensors()), Some(Family::Flux));
    assert_eq!(detect_family(gg.tensors()), Some(Family::Flux));
    let mut a: Vec<_> = st
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let mut b: Vec<_> = gg
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let mut q8 = 0;
    for t in gg.tensors() {
        // Each byte range lies in its file and has the size its dtype and shape need.
        assert_eq!(Some(t.len), t.dtype.storage_bytes(t.numel()), "{}", t.name);
        let s = st.get(&t.name).unwrap();
        assert_eq!(s.dtype, DType::BF16);
        let (g, w) = (gg.to_f32(&t.name).unwrap(), st.to_f32(&t.name).unwrap());
        match t.dtype {
            // BF16 → F32 is exact: identical values.
            DType::F32 => assert_bits(&t.name, &g, &w),
            // Q8_0: q = round(x / d) with d = max|x| / 127, then d is stored as f16 (relative
            // error ≤ 2^-11), so |x̂ - x| ≤ d/2 + 127 · d · 2^-11.
            DType::Q8_0 => {
                q8 += 1;
                for (bg, bw) in g.chunks(32).zip(w.chunks(32)) {
                    let step = bw.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                    for (x, y) in bg.iter().zip(bw) {
                        assert!(
                            (x - y).abs() <= step * (0.5 + 127.0 / 2048.0) * 1.0001,
                            "{}: {x} vs {y}",
                            t.name
                        );
                    }
                }
            }
            other => panic!("unexpected {other} for {}", t.name),
        }
    }
    assert!(q8 >= 10, "only {q8} quantised tensors");
}

#[test]
fn wan_gguf_with_original_5d_shape() {
    let f = WeightFile::open(fixture("wan_orig_shape.gguf")).unwrap();
    assert_eq!(detect_family(f.tensors()), Some(Family::Wan));
    let t = f.get("patch_embedding.weight").unwrap();
    assert_eq!(t.shape, vec![32, 16, 1, 2, 2]);
    let want = expected("wan.patch_embedding.weight");
    assert_eq!(want.shape, t.shape);
    assert_bits(
        "patch_embedding",
        &f.to_f32("patch_embedding.weight").unwrap(),
        &want.data,
    );
    let c = f
        .to_candle(
            "patch_embedding.weight",
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
    assert_eq!(c.dims(), [32, 16, 1, 2, 2]);
}

#[test]
fn npy_writer_matches_numpy_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(fixture("expected")).unwrap() {
        let p = e.unwrap().path();
        let numpy = std::fs::read(&p).unwrap();
        let a = read_f32(&numpy).unwrap();
        let out = dir.path().join("x.npy");
        mgpu::weights::npy::write_f32(&out, &a.shape, &a.data).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), numpy, "{}", p.display());
        n += 1;
    }
    assert!(n >= 25);
}

/// candle's CPU dequantisation (a second, independent implementation) agrees bit for bit with
/// mgpu's and gguf-py's on every block type; `to_qtensor` hands candle the mapped blocks.
#[test]
fn candle_qtensor_dequantises_identically() {
    let f = WeightFile::open(fixture("all_types.gguf")).unwrap();
    let dev = candle_core::Device::Cpu;
    let mut n = 0;
    for t in f.tensors() {
        if matches!(t.dtype, DType::I8 | DType::I32 | DType::F64) {
            assert!(f
                .to_qtensor(&t.name, &dev)
                .unwrap_err()
                .to_string()
                .contains("use to_candle"));
            continue;
        }
        let q = f.to_qtensor(&t.name, &dev).unwrap();
        assert_eq!(
            q.shape()
                .dims()
                .iter()
                .map(|&d| d as u64)
                .collect::<Vec<_>>(),
            t.shape
        );
        let c = q
            .dequantize(&dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_bits(&format!("candle {}", t.name), &c, &expected(&t.name).data);
        n += 1;
    }
    assert_eq!(n, 23);
}
