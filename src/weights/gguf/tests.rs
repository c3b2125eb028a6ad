//! GGUF header tests: the committed fixtures (written by gguf-py, see
//! tools/make_gguf_fixtures.py), and hostile headers built byte by byte. The bit-exact
//! dequantisation checks live in tests/gguf_reference.rs.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn parse_file(name: &str) -> Result<Header, WeightsError> {
    let p = fixture(name);
    parse(&p, &std::fs::read(&p).unwrap())
}

#[test]
fn reads_gguf_py_metadata_of_every_type() {
    let h = parse_file("all_types.gguf").unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 32);
    assert_eq!(h.data_start % 32, 0);
    let m = &h.metadata;
    assert_eq!(
        m["general.architecture"],
        MetaValue::String("mgpu-test".into())
    );
    assert_eq!(m["test.u8"], MetaValue::U8(200));
    assert_eq!(m["test.i8"], MetaValue::I8(-100));
    assert_eq!(m["test.u16"], MetaValue::U16(60000));
    assert_eq!(m["test.i16"], MetaValue::I16(-30000));
    assert_eq!(m["test.u32"], MetaValue::U32(4_000_000_000));
    assert_eq!(m["test.i32"], MetaValue::I32(-2_000_000_000));
    assert_eq!(m["test.u64"], MetaValue::U64((1 << 63) + 5));
    assert_eq!(m["test.i64"], MetaValue::I64(-(1 << 62)));
    assert_eq!(m["test.f32"], MetaValue::F32(0.1));
    assert_eq!(m["test.f64"], MetaValue::F64(-2.5e300));
    assert_eq!(m["test.bool"], MetaValue::Bool(true));
    assert_eq!(m["test.string"], MetaValue::String("héllo, gguf".into()));
    assert_eq!(
        m["test.array_i32"],
        MetaValue::Array(MetaArray::I32(vec![1, -2, 3]))
    );
    assert_eq!(
        m["test.array_str"],
        MetaValue::Array(MetaArray::String(vec!["a".into(), "bc".into(), "".into()]))
    );
    assert_eq!(
        m["test.array_nested"],
        MetaValue::Array(MetaArray::Array(vec![
            MetaArray::I32(vec![1, 2]),
            MetaArray::I32(vec![3])
        ]))
    );
}

#[test]
fn shapes_are_pytorch_order() {
    let h = parse_file("all_types.gguf").unwrap();
    let get = |n: &str| h.tensors.iter().find(|t| t.name == n).unwrap();
    // gguf-py was given numpy arrays of shape (3, 2, 64): ne = [64, 2, 3] in the file.
    let t = get("t.q4_0");
    assert_eq!(
        (t.dtype, t.shape.clone(), t.len),
        (DType::Q4_0, vec![3, 2, 64], 12 * 18)
    );
    let t = get("t.q6_k");
    assert_eq!(
        (t.dtype, t.shape.clone(), t.len),
        (DType::Q6_K, vec![2, 512], 4 * 210)
    );
    assert_eq!(get("t.bf16").dtype, DType::BF16);
    assert_eq!(get("t.f64").dtype, DType::F64);
    for t in &h.tensors {
        assert_eq!((t.offset - h.data_start) % h.alignment, 0, "{}", t.name);
    }
    // File order is kept.
    assert_eq!(h.tensors[0].name, "t.f32");
}

#[test]
fn v2_and_custom_alignment() {
    let v2 = parse_file("v2.gguf").unwrap();
    assert_eq!(v2.version, 2);
    let a64 = parse_file("align64.gguf").unwrap();
    assert_eq!(a64.alignment, 64);
    assert_eq!(a64.metadata["general.alignment"], MetaValue::U32(64));
    assert_eq!(a64.data_start % 64, 0);
    for t in &a64.tensors {
        assert_eq!((t.offset - a64.data_start) % 64, 0);
    }
    let names = |h: &Header| {
        h.tensors
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&v2), names(&a64));
}

#[test]
fn city96_orig_shape() {
    let h = parse_file("wan_orig_shape.gguf").unwrap();
    let pe = h
        .tensors
        .iter()
        .find(|t| t.name == "patch_embedding.weight")
        .unwrap();
    assert_eq!(pe.shape, vec![32, 16, 1, 2, 2]);
    assert_eq!(pe.dtype, DType::F16);
}

#[test]
fn every_truncation_is_a_clean_error() {
    for name in ["v2.gguf", "align64.gguf"] {
        let p = fixture(name);
        let bytes = std::fs::read(&p).unwrap();
        for n in 0..bytes.len() {
            assert!(parse(&p, &bytes[..n]).is_err(), "{name} cut at {n} parsed");
        }
        assert!(parse(&p, &bytes).is_ok());
    }
}

/// Builds GGUF files byte by byte.
#[derive(Default)]
struct Builder {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    version: u32,
    data_len: usize,
}

impl Builder {
    fn new() -> Self {
        Builder {
            version: 3,
            ..Default::default()
        }
    }
    fn str(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }
    fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
        Self::str(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }
    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Self {
        Self::str(&mut self.infos, name);
        self.infos.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }
    fn data(mut self, n: usize) -> Self {
        self.data_len = n;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(self.n_tensors.to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        b.extend(&self.infos);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(vec![0u8; self.data_len]);
        b
    }
    fn err(&self) -> String {
        parse(Path::new("x.gguf"), &self.bytes())
            .unwrap_err()
            .to_string()
    }
}

#[test]
fn builder_makes_valid_files() {
    let b = Builder::new()
        .kv(
            "general.architecture",
            8,
            &[&4u64.to_le_bytes()[..], b"flux"].concat(),
        )
        .tensor("a", &[32, 2], 8, 0)
        .tensor("b", &[4], 0, 96)
        .data(128);
    let h = parse(Path::new("x.gguf"), &b.bytes()).unwrap();
    assert_eq!(h.tensors[0].shape, vec![2, 32]);
    assert_eq!(h.tensors[0].len, 68);
    assert_eq!(h.tensors[1].offset, h.data_start + 96);
}

#[test]
fn hostile_headers_are_clean_errors() {
    let huge_str = [&(1u64 << 62).to_le_bytes()[..], b"x"].concat();
    let cases: Vec<(Builder, &str)> = vec![
        (
            Builder::new().kv("k", 8, &huge_str),
            "string length 4611686018427387904 exceeds",
        ),
        (
            Builder::new().kv(
                "k",
                9,
                &[&0u32.to_le_bytes()[..], &(1u64 << 60).to_le_bytes()].concat(),
            ),
            "array of 1152921504606846976 u8 values needs",
        ),
        (
            Builder::new().kv(
                "k",
                9,
                &[&99u32.to_le_bytes()[..], &1u64.to_le_bytes()].concat(),
            ),
            "unknown array element type 99",
        ),
        (Builder::new().kv("k", 13, &[0]), "unknown value type 13"),
        (Builder::new().kv("k", 7, &[2]), "bool value 2"),
        (
            Builder::new().kv("k", 4, &[0; 4]).kv("k", 4, &[0; 4]),
            "`k` appears twice",
        ),
        (
            Builder::new().kv("general.alignment", 4, &48u32.to_le_bytes()),
            "not a valid alignment",
        ),
        (
            Builder::new().kv("general.alignment", 4, &0u32.to_le_bytes()),
            "not a valid alignment",
        ),
        (
            Builder::new().kv("general.alignment", 5, &32i32.to_le_bytes()),
            "not a valid alignment",
        ),
        (
            Builder::new().tensor("t", &[1, 1, 1, 1, 1], 0, 0).data(32),
            "5 dimensions",
        ),
        (
            Builder::new().tensor("t", &[256], 23, 0).data(1024),
            "unsupported type IQ4_XS in tensor `t` (supported: F32, F16, Q4_0",
        ),
        (
            Builder::new().tensor("t", &[32], 77, 0).data(1024),
            "unknown GGML type id 77 in tensor `t`",
        ),
        (
            Builder::new().tensor("t", &[16, 2], 8, 0).data(1024),
            "row length 16 of this Q8_0 tensor is not a multiple of its 32-value block",
        ),
        (
            Builder::new().tensor("t", &[4], 0, 8).data(64),
            "not a multiple of the file's alignment 32",
        ),
        (
            Builder::new().tensor("t", &[64], 0, 0).data(64),
            "runs past the end",
        ),
        (
            Builder::new()
                .tensor("t", &[1 << 40, 1 << 40], 0, 0)
                .data(64),
            "overflow",
        ),
        (
            Builder::new().tensor("t", &[1 << 62], 0, 0).data(64),
            "64-bit byte sizes",
        ),
        (
            Builder::new()
                .tensor("t", &[8], 0, 0)
                .tensor("u", &[8], 0, 0)
                .data(64),
            "overlaps tensor",
        ),
        (
            Builder::new()
                .tensor("t", &[8], 0, 0)
                .tensor("t", &[8], 0, 32)
                .data(64),
            "`t` appears twice",
        ),
    ];
    for (b, want) in cases {
        let e = b.err();
        assert!(e.contains(want), "want `{want}` in: {e}");
    }
}

#[test]
fn hostile_counts_and_versions() {
    let mut b = Builder::new().bytes();
    b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = parse(Path::new("x"), &b).unwrap_err().to_string();
    assert!(e.contains("declares 1099511627776 tensors"), "{e}");
    let mut v = Builder::new();
    v.version = 1;
    assert!(v.err().contains("version 1"));
    v.version = 3u32.swap_bytes();
    assert!(v.err().contains("big-endian"));
    v.version = 7;
    assert!(v.err().contains("unknown GGUF version 7"));
    let e = parse(Path::new("x"), b"GGML\x03\x00\x00\x00")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    // Arrays nested 17 deep.
    let mut nested = Vec::new();
    for _ in 0..17 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(0u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    let e = Builder::new().kv("deep", 9, &nested).err();
    assert!(e.contains("nested deeper"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any byte of a valid file overwritten with any value: an error or a header whose every
    /// tensor lies inside the file — never a panic.
    #[test]
    fn mutated_files_never_panic(at in 0usize..2784, byte in any::<u8>(), at2 in 0usize..2784, byte2 in any::<u8>()) {
        let p = fixture("v2.gguf");
        let mut bytes = std::fs::read(&p).unwrap();
        let at = at % bytes.len();
        let at2 = at2 % bytes.len();
        bytes[at] = byte;
        bytes[at2] = byte2;
        if let Ok(h) = parse(&p, &bytes) {
            for t in &h.tensors {
                prop_assert!(t.offset + t.len <= bytes.len() as u64);
            }
        }
    }
}
