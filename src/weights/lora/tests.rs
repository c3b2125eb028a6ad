//! Unit tests: fused-row placement, strict/non-strict, shape errors, the arithmetic; key
//! formats in `formats`, fp8 and GGUF bases (bake vs on_dequant) in `quantized`. Reference checks against peft live in tests/lora_fixtures.rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::bf16;

use super::*;
use crate::weights::keymap::{canonicalize, FluxDims};
use crate::weights::TensorInfo;

mod formats;
mod quantized;

/// A tiny FLUX (hidden 4, mlp 8, 2 double, 2 single blocks) in BFL layout.
pub(crate) fn tiny_dims() -> FluxDims {
    FluxDims {
        hidden: 4,
        mlp: 8,
        double: 2,
        single: 2,
        in_channels: 2,
        context: 3,
        vec_in: 3,
        guidance: true,
        head_dim: 2,
    }
}

fn layout(dtype: DType) -> CanonicalLayout {
    let infos: Vec<TensorInfo> = tiny_dims()
        .bfl_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let len = dtype.storage_bytes(shape.iter().product()).unwrap();
            TensorInfo {
                name,
                dtype,
                shape,
                offset: 0,
                len,
            }
        })
        .collect();
    canonicalize(Family::Flux, &infos).unwrap()
}

/// Deterministic small values.
fn vals(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503))
                % 1000) as f32
                / 1000.0
                - 0.5
        })
        .collect()
}

struct T {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
    dtype: safetensors::Dtype,
}

fn t(name: &str, shape: &[usize], data: Vec<f32>) -> T {
    T {
        name: name.into(),
        shape: shape.to_vec(),
        data,
        dtype: safetensors::Dtype::F32,
    }
}

fn write(
    dir: &Path,
    file: &str,
    tensors: &[T],
    metadata: Option<HashMap<String, String>>,
) -> PathBuf {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| match t.dtype {
            safetensors::Dtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            safetensors::Dtype::BF16 => t
                .data
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
            safetensors::Dtype::F8_E4M3 => t
                .data
                .iter()
                .map(|v| float8::F8E4M3::from_f32(*v).to_bits())
                .collect(),
            _ => unreachable!(),
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            (
                t.name.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let path = dir.join(file);
    safetensors::tensor::serialize_to_file(views, metadata, &path).unwrap();
    path
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_f32_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The reference formula for one low-rank term on a whole tensor, written independently of
/// the kernel (plain loops in the documented order).
fn reference(
    w: &[f32],
    cols: usize,
    rows: std::ops::Range<usize>,
    up: &[f32],
    down: &[f32],
    rank: usize,
    scale: f32,
) -> Vec<f32> {
    let mut out = w.to_vec();
    for i in rows.clone() {
        for j in 0..cols {
            let li = i - rows.start;
            let mut d = up[li * rank] * down[j];
            for k in 1..rank {
                d += up[li * rank + k] * down[k * cols + j];
            }
            out[i * cols + j] += d * scale;
        }
    }
    out
}

fn patch_f32(set: &LoraSet, l: &CanonicalLayout, name: &str, w: &[f32]) -> Vec<f32> {
    let t = l.get(name).unwrap();
    let p = set
        .patch(
            name,
            BaseTensor {
                dtype: DType::F32,
                shape: &t.shape,
                bytes: &f32_bytes(w),
                scale: None,
            },
        )
        .unwrap()
        .unwrap();
    from_f32_bytes(&p.bytes)
}

#[test]
fn kohya_fused_qkv_with_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::F32);
    let (down, up) = (vals(2 * 4, 1), vals(12 * 2, 2));
    let path = write(
        dir.path(),
        "k.safetensors",
        &[
            t(
                "lora_unet_double_blocks_1_img_attn_qkv.lora_down.weight",
                &[2, 4],
                down.clone(),
            ),
            t(
                "lora_unet_double_blocks_1_img_attn_qkv.lora_up.weight",
                &[12, 2],
                up.clone(),
            ),
            t(
                "lora_unet_double_blocks_1_img_attn_qkv.alpha",
                &[],
                vec![1.0],
            ),
        ],
        None,
    );
    let (set, report) = LoraSet::load(&[(path, 0.5)], Family::Flux, &l, true).unwrap();
    assert_eq!(
        set.patched_names().collect::<Vec<_>>(),
        ["double_blocks.1.img_attn.qkv.weight"]
    );
    assert_eq!(report.files[0].formats, ["kohya"]);
    assert_eq!(
        (
            report.files[0].matched_modules,
            report.files[0].matched_tensors
        ),
        (1, 3)
    );
    let w = vals(48, 3);
    let got = patch_f32(&set, &l, "double_blocks.1.img_attn.qkv.weight", &w);
    // scale = 0.5 · 1 / 2
    assert_eq!(got, reference(&w, 4, 0..12, &up, &down, 2, 0.25));
    assert!(set
        .patch(
            "img_in.weight",
            BaseTensor {
                dtype: DType::F32,
                shape: &[4, 2],
                bytes: &[0; 32],
                scale: None
            }
        )
        .unwrap()
        .is_none());
}

#[test]
fn peft_separate_qkv_lands_in_fused_rows() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::F32);
    let mut ts = Vec::new();
    let mut factors = HashMap::new();
    for (i, m) in ["to_q", "to_k", "to_v"].iter().enumerate() {
        let (a, b) = (vals(3 * 4, 10 + i as u32), vals(4 * 3, 20 + i as u32));
        ts.push(t(
            &format!("transformer.single_transformer_blocks.0.attn.{m}.lora_A.weight"),
            &[3, 4],
            a.clone(),
        ));
        ts.push(t(
            &format!("transformer.single_transformer_blocks.0.attn.{m}.lora_B.weight"),
            &[4, 3],
            b.clone(),
        ));
        factors.insert(*m, (a, b));
    }
    let (a, b) = (vals(3 * 4, 30), vals(8 * 3, 31));
    ts.push(t(
        "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight",
        &[3, 4],
        a.clone(),
    ));
    ts.push(t(
        "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight",
        &[8, 3],
        b.clone(),
    ));
    factors.insert("proj_mlp", (a, b));
    // No alpha anywhere: alpha = rank, factor 1.
    let path = write(dir.path(), "p.safetensors", &ts, None);
    let (set, report) = LoraSet::load(&[(path, 1.0)], Family::Flux, &l, true).unwrap();
    assert_eq!(report.files[0].formats, ["peft"]);
    let d = set.delta("single_blocks.0.linear1.weight").unwrap();
    let rows: Vec<_> = d
        .terms
        .iter()
        .map(|t| (t.module.as_str(), t.rows.clone(), t.factor))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "transformer.single_transformer_blocks.0.attn.to_k",
                4..8,
                1.0
            ),
            (
                "transformer.single_transformer_blocks.0.attn.to_q",
                0..4,
                1.0
            ),
            (
                "transformer.single_transformer_blocks.0.attn.to_v",
                8..12,
                1.0
            ),
            (
                "transformer.single_transformer_blocks.0.proj_mlp",
                12..20,
                1.0
            ),
        ]
    );
    let w = vals(20 * 4, 5);
    let got = patch_f32(&set, &l, "single_blocks.0.linear1.weight", &w);
    let mut want = w.clone();
    for (m, r) in [
        ("to_q", 0..4),
        ("to_k", 4..8),
        ("to_v", 8..12),
        ("proj_mlp", 12..20),
    ] {
        let (a, b) = &factors[m];
        want = reference(&want, 4, r, b, a, 3, 1.0);
    }
    assert_eq!(got, want);
}

#[test]
fn unmatched_strict_and_lenient() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::F32);
    let path = write(
        dir.path(),
        "u.safetensors",
        &[
            t(
                "lora_unet_double_blocks_0_img_attn_qkvv.lora_down.weight",
                &[2, 4],
                vals(8, 1),
            ),
            t(
                "lora_unet_double_blocks_0_img_attn_qkvv.lora_up.weight",
                &[12, 2],
                vals(24, 2),
            ),
            t(
                "lora_unet_double_blocks_0_img_mlp_0.lora_down.weight",
                &[2, 4],
                vals(8, 1),
            ),
            t(
                "lora_unet_double_blocks_0_img_mlp_0.lora_up.weight",
                &[8, 2],
                vals(16, 2),
            ),
            t(
                "transformer.transformer_blocks.0.attn.to_qq.lora_A.weight",
                &[2, 4],
                vals(8, 1),
            ),
            t(
                "transformer.transformer_blocks.0.attn.to_qq.lora_B.weight",
                &[4, 2],
                vals(8, 1),
            ),
            t("some_random_tensor", &[1], vec![1.0]),
        ],
        None,
    );
    let e = LoraSet::load(&[(path.clone(), 1.0)], Family::Flux, &l, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("3 LoRA modules match nothing in the flux model (set `strict = false`"),
        "{e}"
    );
    assert!(e.contains("`lora_unet_double_blocks_0_img_attn_qkvv` (did you mean `lora_unet_double_blocks_0_img_attn_qkv`?)"), "{e}");
    assert!(e.contains("`transformer.transformer_blocks.0.attn.to_qq` (did you mean `transformer.transformer_blocks.0.attn.to_q`?)"), "{e}");
    assert!(
        e.contains("`some_random_tensor`: not a LoRA tensor name"),
        "{e}"
    );
    insta::assert_snapshot!(
        "unmatched_strict",
        e.replace(&dir.path().display().to_string(), "<dir>")
    );
    let (set, report) = LoraSet::load(&[(path, 1.0)], Family::Flux, &l, false).unwrap();
    assert_eq!(
        set.patched_names().collect::<Vec<_>>(),
        ["double_blocks.0.img_mlp.0.weight"]
    );
    assert_eq!(report.unmatched(), 3);
    assert!(
        report.warnings[0]
            .contains("3 LoRA modules match nothing in the flux model and are skipped"),
        "{:?}",
        report.warnings
    );
    insta::assert_snapshot!(
        "unmatched_lenient_report",
        report
            .to_string()
            .replace(&dir.path().display().to_string(), "<dir>")
    );
}

#[test]
fn shape_and_rank_errors() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::F32);
    let cases: Vec<(Vec<T>, &str)> = vec![
        (
            vec![
                t("lora_unet_img_in.lora_down.weight", &[2, 2], vals(4, 1)),
                t("lora_unet_img_in.lora_up.weight", &[4, 3], vals(12, 1)),
            ],
            "rank mismatch: down `lora_unet_img_in.lora_down.weight` has rank 2",
        ),
        (
            vec![
                t("lora_unet_img_in.lora_down.weight", &[2, 5], vals(10, 1)),
                t("lora_unet_img_in.lora_up.weight", &[4, 2], vals(8, 1)),
            ],
            "it reads 5 inputs but `img_in.weight` has 2",
        ),
        (
            vec![
                t(
                    "transformer.transformer_blocks.0.attn.to_k.lora_A.weight",
                    &[2, 4],
                    vals(8, 1),
                ),
                t(
                    "transformer.transformer_blocks.0.attn.to_k.lora_B.weight",
                    &[12, 2],
                    vals(24, 1),
                ),
            ],
            "it writes 12 rows but its target in `double_blocks.0.img_attn.qkv.weight` has 4",
        ),
        (
            vec![t("lora_unet_img_in.lora_down.weight", &[2, 2], vals(4, 1))],
            "has only one of its two LoRA factors",
        ),
        (
            vec![
                t("lora_unet_img_in.lora_down.weight", &[2, 2], vals(4, 1)),
                t("lora_unet_img_in.lora_up.weight", &[4, 2], vals(8, 1)),
                t("lora_unet_img_in.alpha", &[2], vec![1.0, 2.0]),
            ],
            "alpha must be one number",
        ),
        (
            vec![
                t("lora_unet_img_in.lora_down.weight", &[2, 2], vals(4, 1)),
                t(
                    "lora_unet_img_in.lora_up.weight",
                    &[4, 2, 3, 3],
                    vals(72, 1),
                ),
            ],
            "conv LoRAs whose up factor is not 1×1",
        ),
        (
            vec![
                t(
                    "lora_unet_img_in.lora_down.weight",
                    &[2, 2],
                    vec![0.0, f32::NAN, 0.0, 0.0],
                ),
                t("lora_unet_img_in.lora_up.weight", &[4, 2], vals(8, 1)),
            ],
            "holds a non-finite value",
        ),
        (
            vec![
                t("lora_unet_img_in.lora_down.weight", &[2, 2], vals(4, 1)),
                t("lora_unet_img_in.lora_up.weight", &[4, 2], vals(8, 1)),
                t("lora_unet_img_in.lora_A.weight", &[2, 2], vals(4, 1)),
            ],
            "duplicates `lora_unet_img_in.lora_A.weight`",
        ),
        (
            vec![t("lora_unet_final_layer_linear.diff_b", &[3], vals(3, 1))],
            "difference of shape [3] does not fit `final_layer.linear.bias`",
        ),
        (
            vec![
                t(
                    "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                    &[2, 4],
                    vals(8, 1),
                ),
                t(
                    "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
                    &[12, 2],
                    vals(24, 1),
                ),
                t(
                    "transformer.transformer_blocks.0.attn.to_v.lora_A.weight",
                    &[2, 4],
                    vals(8, 1),
                ),
                t(
                    "transformer.transformer_blocks.0.attn.to_v.lora_B.weight",
                    &[4, 2],
                    vals(8, 1),
                ),
            ],
            "both patch rows 8..12 of `double_blocks.0.img_attn.qkv.weight`",
        ),
    ];
    for (i, (ts, want)) in cases.into_iter().enumerate() {
        let p = write(dir.path(), &format!("e{i}.safetensors"), &ts, None);
        let e = LoraSet::load(&[(p.clone(), 1.0)], Family::Flux, &l, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "case {i}: {e}");
        assert!(
            e.contains(&p.display().to_string()),
            "case {i} names the file: {e}"
        );
    }
    let p = write(
        dir.path(),
        "hada.safetensors",
        &[t("lora_unet_img_in.hada_w1_a", &[2, 2], vals(4, 1))],
        None,
    );
    let e = LoraSet::load(&[(p, 1.0)], Family::Flux, &l, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("LoHa is not supported"), "{e}");
}

#[test]
fn strengths_are_checked_and_rescaled() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::F32);
    let (a, b) = (vals(8, 1), vals(8, 2));
    let p = write(
        dir.path(),
        "s.safetensors",
        &[
            t("lora_unet_img_in.lora_down.weight", &[4, 2], a.clone()),
            t("lora_unet_img_in.lora_up.weight", &[4, 4], vals(16, 2)),
            t("lora_unet_img_in.alpha", &[], vec![3.0]),
        ],
        None,
    );
    let _ = b;
    for s in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = LoraSet::load(&[(p.clone(), s)], Family::Flux, &l, true).unwrap_err();
        assert!(matches!(e, LoraError::BadStrength { .. }), "{e}");
    }
    let (set, _) = LoraSet::load(&[(p.clone(), 0.8)], Family::Flux, &l, true).unwrap();
    let term = &set.delta("img_in.weight").unwrap().terms[0];
    assert_eq!(
        (term.factor, term.scale),
        (0.75, (0.75f64 * 0.8f32 as f64) as f32)
    );
    let set2 = set.with_strengths(&[-1.5]).unwrap();
    assert_eq!(set2.delta("img_in.weight").unwrap().terms[0].scale, -1.125);
    assert!(set.with_strengths(&[f32::NAN]).is_err());
    assert!(set.with_strengths(&[1.0, 2.0]).is_err());
    // Strength 0: matched and reported, nothing patched.
    let (set0, report) = LoraSet::load(&[(p, 0.0)], Family::Flux, &l, true).unwrap();
    assert!(set0.is_empty());
    assert!(report.warnings.iter().any(|w| w.contains("strength 0")));
}

#[test]
fn several_loras_sum_in_f32_and_round_once() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::BF16);
    let (a1, b1) = (vals(8, 1), vals(8, 2));
    let (a2, b2) = (vals(8, 3), vals(8, 4));
    let p1 = write(
        dir.path(),
        "1.safetensors",
        &[
            t("lora_unet_img_in.lora_down.weight", &[2, 2], vals(4, 5)),
            t("lora_unet_img_in.lora_up.weight", &[4, 2], b1.clone()),
        ],
        None,
    );
    let p2 = write(
        dir.path(),
        "2.safetensors",
        &[
            t("diffusion_model.img_in.lora_A.weight", &[2, 2], vals(4, 6)),
            t("diffusion_model.img_in.lora_B.weight", &[4, 2], b2.clone()),
        ],
        None,
    );
    let _ = (a1, a2);
    let (set, report) = LoraSet::load(&[(p1, 0.7), (p2, -0.3)], Family::Flux, &l, true).unwrap();
    assert_eq!(report.patched["img_in.weight"], [0, 1]);
    let w: Vec<f32> = vals(8, 7)
        .into_iter()
        .map(|v| bf16::from_f32(v).to_f32())
        .collect();
    let w_bytes: Vec<u8> = w
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    let got = set
        .patch(
            "img_in.weight",
            BaseTensor {
                dtype: DType::BF16,
                shape: &[4, 2],
                bytes: &w_bytes,
                scale: None,
            },
        )
        .unwrap()
        .unwrap();
    let s1 = term_scale(1.0, 0.7);
    let s2 = term_scale(1.0, -0.3);
    let step1 = reference(&w, 2, 0..4, &b1, &vals(4, 5), 2, s1);
    let both = reference(&step1, 2, 0..4, &b2, &vals(4, 6), 2, s2);
    let want: Vec<u8> = both
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    assert_eq!(got.bytes, want);
    // Rounding after each LoRA would not be the same in general; the one-rounding result is.
    assert_eq!(got.dtype, DType::BF16);
}
