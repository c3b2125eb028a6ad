//! LoRA patching and key mapping checked against outside references: the fixtures under
//! tests/fixtures/lora/ were made by tools/make_lora_fixtures.py with diffusers and peft (the
//! base models are diffusers'/transformers' own modules, the LoRAs peft adapters saved by
//! diffusers/peft or converted to kohya/BFL keys, the expectations peft's own merge and the
//! documented arithmetic). See that script's header for what each file is.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mgpu::family::Family;
use mgpu::weights::keymap::{canonicalize, CanonicalLayout, Layout};
use mgpu::weights::lora::{BaseTensor, LoraSet};
use mgpu::weights::safetensors::{read_header, Header};
use mgpu::weights::{DType, TensorInfo};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora")
}

#[derive(serde::Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    family: String,
    base: String,
    loras: Vec<(String, f32)>,
    tensors: usize,
    /// fp8 values beyond the largest finite value, clamped (the reference clamps too).
    saturated: u64,
    expected_exact: String,
    expected_peft: Option<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(dir().join("cases.json")).unwrap();
    serde_json::from_str::<Cases>(&text).unwrap().cases
}

fn bytes(path: &Path, t: &TensorInfo) -> Vec<u8> {
    let all = std::fs::read(path).unwrap();
    all[t.offset as usize..(t.offset + t.len) as usize].to_vec()
}

fn find<'a>(h: &'a Header, name: &str) -> &'a TensorInfo {
    h.tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor `{name}`"))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The canonical tensor's bytes as the executor builds them: parts read, assembled.
fn canonical_bytes(path: &Path, h: &Header, layout: &CanonicalLayout, name: &str) -> Vec<u8> {
    let t = layout.get(name).unwrap();
    let parts: Vec<Vec<u8>> = t
        .parts
        .iter()
        .map(|p| bytes(path, find(h, &p.source)))
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    t.assemble(&refs).unwrap()
}

#[test]
fn diffusers_base_assembles_to_the_bfl_base() {
    // The script checked its BFL file against diffusers' own BFL → diffusers converter.
    let (dp, bp) = (
        dir().join("flux_base_diffusers_f32.safetensors"),
        dir().join("flux_base_bfl_f32.safetensors"),
    );
    let (dh, bh) = (read_header(&dp).unwrap(), read_header(&bp).unwrap());
    let dl = canonicalize(Family::Flux, &dh.tensors).unwrap();
    let bl = canonicalize(Family::Flux, &bh.tensors).unwrap();
    assert_eq!(
        (dl.layout, bl.layout),
        (Layout::FluxDiffusers, Layout::FluxBfl)
    );
    let names = |l: &CanonicalLayout| {
        l.tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&dl), names(&bl));
    for t in &bl.tensors {
        assert_eq!(
            canonical_bytes(&dp, &dh, &dl, &t.name),
            bytes(&bp, find(&bh, &t.name)),
            "{}",
            t.name
        );
    }
}

#[test]
fn every_case_matches_the_references() {
    let cases = cases();
    assert!(cases.len() >= 10);
    for case in &cases {
        let family: Family = case.family.parse().unwrap();
        let base_path = dir().join(&case.base);
        let h = read_header(&base_path).unwrap();
        let layout = canonicalize(family, &h.tensors).unwrap();
        let specs: Vec<(PathBuf, f32)> = case
            .loras
            .iter()
            .map(|(p, s)| (dir().join(p), *s))
            .collect();
        let (set, report) = LoraSet::load(&specs, family, &layout, true).unwrap();
        assert_eq!(report.unmatched(), 0, "{}", case.name);
        assert!(
            report.warnings.is_empty(),
            "{}: {:?}",
            case.name,
            report.warnings
        );

        let ep = dir().join(&case.expected_exact);
        let eh = read_header(&ep).unwrap();
        let want: BTreeSet<&str> = eh.tensors.iter().map(|t| t.name.as_str()).collect();
        let got: BTreeSet<&str> = set.patched_names().collect();
        assert_eq!(got, want, "{}: patched tensors", case.name);
        assert_eq!(got.len(), case.tensors);

        let peft = case
            .expected_peft
            .as_ref()
            .map(|p| (dir().join(p), read_header(&dir().join(p)).unwrap()));
        let mut worst = 0f64;
        let mut saturated = 0;
        for name in want {
            let t = layout.get(name).unwrap();
            let base = canonical_bytes(&base_path, &h, &layout, name);
            let scale = t
                .scale
                .as_ref()
                .map(|s| f32s(&bytes(&base_path, find(&h, s)))[0]);
            let patched = set
                .patch(
                    name,
                    BaseTensor {
                        dtype: t.dtype,
                        shape: &t.shape,
                        bytes: &base,
                        scale,
                    },
                )
                .unwrap()
                .unwrap();
            saturated += patched.saturated;
            let exact = bytes(&ep, find(&eh, name));
            assert!(
                patched.bytes == exact,
                "{}: `{name}` ({}) differs from the exact reference",
                case.name,
                t.dtype
            );
            if let Some((pp, ph)) = &peft {
                assert_eq!(t.dtype, DType::F32);
                let ours = f32s(&patched.bytes);
                let theirs = f32s(&bytes(pp, find(ph, name)));
                for (a, b) in ours.iter().zip(&theirs) {
                    let rel = f64::from((a - b).abs()) / (1.0 + f64::from(b.abs()));
                    worst = worst.max(rel);
                }
            }
        }
        assert_eq!(saturated, case.saturated, "{}: saturated values", case.name);
        // peft sums `B @ A` in a BLAS order (with FMA) where mgpu uses a fixed order: the
        // results may differ by a few units in the last place, nothing more. 2^-21 ≈ 4.8e-7
        // relative to (1 + |w|) is 4 f32 epsilons; a misplaced row or wrong scale is ~0.1.
        assert!(
            worst <= 2f64.powi(-21),
            "{}: differs from peft's merge by {worst:e}",
            case.name
        );
    }
}

#[test]
fn reports_name_formats_and_alpha_sources() {
    let family = Family::Flux;
    let base = dir().join("flux_base_bfl_f32.safetensors");
    let layout = canonicalize(family, &read_header(&base).unwrap().tensors).unwrap();
    let specs = vec![
        (dir().join("lora_a_peft/adapter_model.safetensors"), 1.0),
        (dir().join("lora_k_kohya.safetensors"), 1.0),
        (dir().join("lora_b_bfl_bf16.safetensors"), 1.0),
        (dir().join("lora_clip_kohya.safetensors"), 1.0),
    ];
    let (_, report) = LoraSet::load(&specs, family, &layout, true).unwrap();
    let formats: Vec<Vec<&str>> = report.files.iter().map(|f| f.formats.clone()).collect();
    assert_eq!(
        formats,
        [vec!["peft"], vec!["kohya"], vec!["bfl"], vec!["kohya"]]
    );
    assert!(report.files[0]
        .alpha_source
        .as_deref()
        .unwrap()
        .ends_with("adapter_config.json"));
    assert_eq!(
        report.files[1].alpha_source, None,
        "kohya files carry alpha tensors"
    );
    assert_eq!(report.files[3].matched_modules, 0);
    assert_eq!(report.files[3].other_components.get("clip-l"), Some(&12));
    assert!(report.warnings.iter().any(|w| w.contains(
        "lora_clip_kohya.safetensors: no module of this LoRA applies to the flux model"
    )));
    let text = report.to_string();
    assert!(
        text.starts_with("LoRA on flux: 4 files, 34 base tensors patched"),
        "{text}"
    );
    assert!(text.contains("lora_k_kohya.safetensors (strength 1, kohya): 11/11 modules matched (33 tensors), 11 base tensors patched"), "{text}");
}
