//! Table tests of the key layouts with real key names and shapes.

use std::collections::BTreeMap;

use super::*;
use crate::weights::TensorInfo;

pub(crate) fn infos(list: &[(String, Vec<u64>)], dtype: DType) -> Vec<TensorInfo> {
    let mut off = 0;
    list.iter()
        .map(|(n, s)| {
            let len = dtype.storage_bytes(s.iter().product()).unwrap();
            let t = TensorInfo {
                name: n.clone(),
                dtype,
                shape: s.clone(),
                offset: off,
                len,
            };
            off += len;
            t
        })
        .collect()
}

fn prefixed(list: &[(String, Vec<u64>)], p: &str) -> Vec<(String, Vec<u64>)> {
    list.iter()
        .map(|(n, s)| (format!("{p}{n}"), s.clone()))
        .collect()
}

fn shapes(l: &CanonicalLayout) -> BTreeMap<String, Vec<u64>> {
    l.tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect()
}

#[test]
fn flux_dev_diffusers_maps_to_exactly_the_bfl_key_list() {
    let d = FluxDims::DEV;
    let diffusers = d.diffusers_tensors();
    let bfl = d.bfl_tensors();
    assert_eq!(diffusers.len(), 1160);
    assert_eq!(bfl.len(), 780);
    let l = canonicalize(Family::Flux, &infos(&diffusers, DType::BF16)).unwrap();
    assert_eq!(l.layout, Layout::FluxDiffusers);
    let want: BTreeMap<String, Vec<u64>> = bfl.into_iter().collect();
    assert_eq!(shapes(&l), want);
    assert_eq!(l.describe(), "flux, diffusers layout, 1160 → 780 tensors");

    let qkv = l.get("double_blocks.7.img_attn.qkv.weight").unwrap();
    assert_eq!(qkv.shape, [9216, 3072]);
    let parts: Vec<(&str, Range<u64>)> = qkv
        .parts
        .iter()
        .map(|p| (p.source.as_str(), p.rows.clone()))
        .collect();
    assert_eq!(
        parts,
        [
            ("transformer_blocks.7.attn.to_q.weight", 0..3072),
            ("transformer_blocks.7.attn.to_k.weight", 3072..6144),
            ("transformer_blocks.7.attn.to_v.weight", 6144..9216),
        ]
    );
    let txt = l.get("double_blocks.0.txt_attn.qkv.bias").unwrap();
    assert_eq!(
        txt.parts[2].source,
        "transformer_blocks.0.attn.add_v_proj.bias"
    );
    let l1 = l.get("single_blocks.37.linear1.weight").unwrap();
    assert_eq!(l1.shape, [21504, 3072]);
    let rows: Vec<Range<u64>> = l1.parts.iter().map(|p| p.rows.clone()).collect();
    assert_eq!(rows, [0..3072, 3072..6144, 6144..9216, 9216..21504]);
    assert_eq!(
        l1.parts[3].source,
        "single_transformer_blocks.37.proj_mlp.weight"
    );
    let ada = l.get("final_layer.adaLN_modulation.1.weight").unwrap();
    assert_eq!(ada.transform, Transform::SwapHalvesDim0);
    assert_eq!(ada.parts[0].source, "norm_out.linear.weight");
    let n = l
        .get("double_blocks.2.txt_attn.norm.key_norm.scale")
        .unwrap();
    assert_eq!(
        n.parts[0].source,
        "transformer_blocks.2.attn.norm_added_k.weight"
    );
    assert!(l
        .get("single_blocks.5.linear2.weight")
        .unwrap()
        .is_passthrough());
}

#[test]
fn flux_bfl_with_prefixes() {
    let bfl = FluxDims::DEV.bfl_tensors();
    for p in ["", "model.diffusion_model.", "diffusion_model."] {
        let l = canonicalize(Family::Flux, &infos(&prefixed(&bfl, p), DType::F8_E4M3)).unwrap();
        assert_eq!(l.layout, Layout::FluxBfl, "{p}");
        assert_eq!(l.tensors.len(), 780);
        assert!(l
            .tensors
            .iter()
            .all(|t| t.is_passthrough() && t.dtype == DType::F8_E4M3));
        let want: Vec<String> = if p.is_empty() {
            vec![]
        } else {
            vec![p.to_string()]
        };
        assert_eq!(l.prefixes, want);
        assert_eq!(
            l.get("double_blocks.3.img_attn.qkv.weight").unwrap().parts[0].source,
            format!("{p}double_blocks.3.img_attn.qkv.weight")
        );
    }
    // Natural order: block 2 before block 10.
    let l = canonicalize(Family::Flux, &infos(&bfl, DType::BF16)).unwrap();
    let pos = |n: &str| l.tensors.iter().position(|t| t.name == n).unwrap();
    assert!(pos("double_blocks.2.img_mod.lin.weight") < pos("double_blocks.10.img_mod.lin.weight"));
}

#[test]
fn flux_schnell_has_no_guidance() {
    let d = FluxDims {
        guidance: false,
        ..FluxDims::DEV
    };
    let l = canonicalize(Family::Flux, &infos(&d.diffusers_tensors(), DType::BF16)).unwrap();
    assert_eq!(l.tensors.len(), 776);
    assert!(l.get("guidance_in.in_layer.weight").is_none());
}

#[test]
fn mixed_layouts_are_refused() {
    let mut list = FluxDims::DEV.bfl_tensors();
    list.push((
        "transformer_blocks.0.attn.to_q.weight".into(),
        vec![3072, 3072],
    ));
    let e = canonicalize(Family::Flux, &infos(&list, DType::BF16)).unwrap_err();
    assert!(matches!(e, KeymapError::MixedLayouts { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("bfl layout (e.g. `img_in.weight`)")
            && msg.contains("`transformer_blocks.0.attn.to_q.weight`"),
        "{msg}"
    );
}

#[test]
fn missing_and_unknown_are_listed() {
    let mut list = FluxDims::DEV.diffusers_tensors();
    list.retain(|(n, _)| {
        n != "transformer_blocks.3.attn.to_k.weight"
            && n != "single_transformer_blocks.5.proj_out.bias"
    });
    list.push((
        "transformer_blocks.0.attn.to_qq.weight".into(),
        vec![3072, 3072],
    ));
    let e = canonicalize(Family::Flux, &infos(&list, DType::BF16)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("flux (diffusers layout): 1 unknown tensor and 2 missing tensors"),
        "{msg}"
    );
    assert!(msg.contains("unknown: `transformer_blocks.0.attn.to_qq.weight` (did you mean `transformer_blocks.0.attn.to_q.weight`?)"), "{msg}");
    assert!(msg.contains("missing: `transformer_blocks.3.attn.to_k.weight` (part 2 of 3 of `double_blocks.3.img_attn.qkv.weight`)"), "{msg}");
    assert!(msg.contains("missing: `single_transformer_blocks.5.proj_out.bias` (canonical `single_blocks.5.linear2.bias`)"), "{msg}");

    insta::assert_snapshot!("flux_diffusers_mismatch", msg);

    let mut bfl = FluxDims::DEV.bfl_tensors();
    bfl.retain(|(n, _)| !n.starts_with("double_blocks.18.") && n != "img_in.bias");
    bfl.push((
        "double_blocks.0.img_attn.qkv.wieght".into(),
        vec![9216, 3072],
    ));
    let e = canonicalize(Family::Flux, &infos(&bfl, DType::BF16)).unwrap_err();
    let KeymapError::Mismatch {
        unknown, missing, ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(
        unknown[0].suggestion.as_deref(),
        Some("double_blocks.0.img_attn.qkv.weight")
    );
    // Block 18 vanished entirely: the index range ends at 17, so only img_in.bias is missing.
    assert_eq!(missing, &["`img_in.bias`"]);
}

#[test]
fn a_hole_in_the_blocks_is_missing() {
    let mut bfl = FluxDims::DEV.bfl_tensors();
    bfl.retain(|(n, _)| !n.starts_with("single_blocks.4."));
    let e = canonicalize(Family::Flux, &infos(&bfl, DType::BF16)).unwrap_err();
    let KeymapError::Mismatch { missing, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(missing.len(), 8, "{missing:?}");
    assert!(missing.contains(&"`single_blocks.4.linear1.weight`".to_string()));
}

#[test]
fn an_absurd_block_index_is_an_error_not_a_hang() {
    let mut bfl = FluxDims::DEV.bfl_tensors();
    bfl.push((
        "double_blocks.4000000000.img_mod.lin.weight".into(),
        vec![18432, 3072],
    ));
    let e = canonicalize(Family::Flux, &infos(&bfl, DType::BF16)).unwrap_err();
    let KeymapError::Mismatch { missing, .. } = &e else {
        panic!("{e}")
    };
    assert!(missing.contains(&"`double_blocks.19.img_mod.lin.bias`".to_string()));
    assert!(missing.len() < 100_000);
}

#[test]
fn bad_fused_shapes_and_duplicates() {
    let mut list = FluxDims::DEV.diffusers_tensors();
    for (n, s) in list.iter_mut() {
        if n == "transformer_blocks.1.attn.to_v.weight" {
            *s = vec![3072, 3000];
        }
    }
    let e = canonicalize(Family::Flux, &infos(&list, DType::BF16))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`transformer_blocks.1.attn.to_v.weight`: has shape [3072, 3000]"),
        "{e}"
    );

    let mut list = FluxDims::DEV.diffusers_tensors();
    for (n, s) in list.iter_mut() {
        if n == "single_transformer_blocks.0.attn.to_q.weight"
            || n == "single_transformer_blocks.0.attn.to_q.bias"
        {
            s[0] = 3000;
        }
    }
    let e = canonicalize(Family::Flux, &infos(&list, DType::BF16))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("parts have [3000, 3072, 3072, 12288] rows"),
        "{e}"
    );

    let mut list = FluxDims::DEV.bfl_tensors();
    list.push(("model.diffusion_model.img_in.weight".into(), vec![3072, 64]));
    let e = canonicalize(Family::Flux, &infos(&list, DType::BF16))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "`img_in.weight` and `model.diffusion_model.img_in.weight` both map to `img_in.weight`"
        ),
        "{e}"
    );
}

#[test]
fn all_in_one_checkpoint_splits_by_component() {
    let mut list = prefixed(&FluxDims::DEV.bfl_tensors(), "model.diffusion_model.");
    list.extend(prefixed(&VaeDims::flux().ldm_tensors(), "vae."));
    list.extend(prefixed(
        &t5_tensors(2, false),
        "text_encoders.t5xxl.transformer.",
    ));
    list.extend(prefixed(
        &clip_tensors(2, true),
        "text_encoders.clip_l.transformer.",
    ));
    let infos = infos(&list, DType::BF16);
    let flux = canonicalize(Family::Flux, &infos).unwrap();
    assert_eq!(flux.tensors.len(), 780);
    assert!(flux
        .ignored
        .iter()
        .any(|i| i.name == "vae.decoder.conv_in.weight" && i.reason.contains("`vae.`")));
    let vae = canonicalize(Family::FluxVae, &infos).unwrap();
    assert_eq!(vae.layout, Layout::VaeLdm);
    assert_eq!(vae.tensors.len(), VaeDims::flux().ldm_tensors().len());
    let t5 = canonicalize(Family::T5, &infos).unwrap();
    assert_eq!(t5.prefixes, ["text_encoders.t5xxl.transformer."]);
    let clip = canonicalize(Family::ClipL, &infos).unwrap();
    assert!(clip
        .get("text_model.encoder.layers.1.mlp.fc2.bias")
        .is_some());

    let e = canonicalize(
        Family::Flux,
        &self::infos(
            &prefixed(&VaeDims::flux().ldm_tensors(), "vae."),
            DType::BF16,
        ),
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with(
            "no flux tensors found; the file holds other components' tensors, e.g. `vae."
        ),
        "{e}"
    );
}

#[test]
fn scaled_fp8_companions() {
    let mut list = prefixed(&FluxDims::DEV.bfl_tensors(), "model.diffusion_model.");
    let mut infos = infos(&list, DType::F8_E4M3);
    let scalar = |name: &str, dtype| TensorInfo {
        name: name.into(),
        dtype,
        shape: vec![],
        offset: 0,
        len: 4,
    };
    infos.push(scalar("model.diffusion_model.scaled_fp8", DType::F8_E4M3));
    infos.push(scalar(
        "model.diffusion_model.double_blocks.0.img_attn.qkv.scale_weight",
        DType::F32,
    ));
    infos.push(scalar(
        "model.diffusion_model.double_blocks.0.img_attn.qkv.scale_input",
        DType::F32,
    ));
    let l = canonicalize(Family::Flux, &infos).unwrap();
    assert_eq!(l.scaled_fp8, Some(DType::F8_E4M3));
    assert_eq!(
        l.get("double_blocks.0.img_attn.qkv.weight")
            .unwrap()
            .scale
            .as_deref(),
        Some("model.diffusion_model.double_blocks.0.img_attn.qkv.scale_weight")
    );
    assert_eq!(
        l.get("double_blocks.0.img_attn.qkv.bias").unwrap().scale,
        None
    );
    assert_eq!(l.ignored.len(), 2);

    // A scale without its weight, and a block-wise scale, are errors.
    infos.push(scalar(
        "model.diffusion_model.double_blocks.0.nonsense.scale_weight",
        DType::F32,
    ));
    let e = canonicalize(Family::Flux, &infos).unwrap_err().to_string();
    assert!(
        e.contains("unknown: `model.diffusion_model.double_blocks.0.nonsense.scale_weight`"),
        "{e}"
    );
    infos.pop();
    infos.push(TensorInfo {
        name: "model.diffusion_model.img_in.scale_weight".into(),
        dtype: DType::F32,
        shape: vec![3072, 1],
        offset: 0,
        len: 3072 * 4,
    });
    let e = canonicalize(Family::Flux, &infos).unwrap_err().to_string();
    assert!(e.contains("only one f32/f16/bf16 number per tensor"), "{e}");
    list.push(("model.diffusion_model.img_in.comfy_quant".into(), vec![20]));
    let e = canonicalize(Family::Flux, &self::infos(&list, DType::U8))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mixed-precision quantisation is not supported"),
        "{e}"
    );
}

#[test]
fn assemble_fused_and_swapped() {
    let d = FluxDims {
        hidden: 4,
        mlp: 8,
        double: 1,
        single: 1,
        in_channels: 2,
        context: 3,
        vec_in: 3,
        guidance: false,
        head_dim: 2,
    };
    let l = canonicalize(Family::Flux, &infos(&d.diffusers_tensors(), DType::F16)).unwrap();
    let qkv = l.get("double_blocks.0.img_attn.qkv.weight").unwrap();
    let row = 4 * 2; // 4 f16 values
    let q = vec![1u8; 4 * row];
    let k = vec![2u8; 4 * row];
    let v = vec![3u8; 4 * row];
    let out = qkv.assemble(&[&q, &k, &v]).unwrap();
    assert_eq!(out, [q.clone(), k.clone(), v.clone()].concat());
    let e = qkv.assemble(&[&q, &k]).unwrap_err().to_string();
    assert!(e.contains("2 parts given, 3 expected"), "{e}");
    let e = qkv.assemble(&[&q, &k, &v[1..]]).unwrap_err().to_string();
    assert!(e.contains("has 31 bytes, 32 expected"), "{e}");

    let ada = l.get("final_layer.adaLN_modulation.1.weight").unwrap();
    assert_eq!(ada.shape, [8, 4]);
    let scale_shift: Vec<u8> = (0..8u8).flat_map(|r| vec![r; row]).collect();
    let shift_scale = ada.assemble(&[&scale_shift]).unwrap();
    let rows: Vec<u8> = shift_scale.chunks(row).map(|c| c[0]).collect();
    assert_eq!(rows, [4, 5, 6, 7, 0, 1, 2, 3]);
}

/// diffusers `AutoencoderKL` names for an LDM key list, written independently of the rules
/// (from diffusers' naming: reversed up blocks, conv_shortcut, linear attention).
fn diffusers_vae(ldm: &[(String, Vec<u64>)]) -> Vec<(String, Vec<u64>)> {
    let n_up = 4;
    ldm.iter()
        .map(|(n, s)| {
            let mut segs: Vec<String> = n.split('.').map(String::from).collect();
            let mut shape = s.clone();
            if segs[1] == "down" {
                segs[1] = "down_blocks".into();
                if segs[3] == "block" {
                    segs[3] = "resnets".into();
                } else {
                    segs.splice(3..4, ["downsamplers".to_string(), "0".to_string()]);
                }
            } else if segs[1] == "up" {
                segs[1] = "up_blocks".into();
                segs[2] = (n_up - 1 - segs[2].parse::<u64>().unwrap()).to_string();
                if segs[3] == "block" {
                    segs[3] = "resnets".into();
                } else {
                    segs.splice(3..4, ["upsamplers".to_string(), "0".to_string()]);
                }
            } else if segs[1] == "mid" {
                let (a, b) = match segs[2].as_str() {
                    "block_1" => ("resnets", "0"),
                    "block_2" => ("resnets", "1"),
                    _ => ("attentions", "0"),
                };
                segs.splice(
                    1..3,
                    ["mid_block".to_string(), a.to_string(), b.to_string()],
                );
                if a == "attentions" {
                    let m = match segs[4].as_str() {
                        "norm" => "group_norm",
                        "q" => "to_q",
                        "k" => "to_k",
                        "v" => "to_v",
                        _ => "to_out.0",
                    };
                    segs[4] = m.into();
                    if shape.len() == 4 {
                        shape.truncate(2);
                    }
                }
            } else if segs[1] == "norm_out" {
                segs[1] = "conv_norm_out".into();
            }
            let name = segs.join(".").replace("nin_shortcut", "conv_shortcut");
            (name, shape)
        })
        .collect()
}

#[test]
fn flux_vae_diffusers_maps_to_ldm() {
    let ldm = VaeDims::flux().ldm_tensors();
    let l = canonicalize(Family::FluxVae, &infos(&ldm, DType::F32)).unwrap();
    assert_eq!(l.layout, Layout::VaeLdm);
    let diff = diffusers_vae(&ldm);
    assert!(!diff
        .iter()
        .any(|(n, _)| n == "decoder.up_blocks.0.resnets.2.conv_shortcut.weight"));
    assert!(diff
        .iter()
        .any(|(n, _)| n == "decoder.up_blocks.2.resnets.0.conv_shortcut.weight"));
    assert!(diff
        .iter()
        .any(|(n, s)| n == "encoder.mid_block.attentions.0.to_out.0.weight" && s == &[512, 512]));
    let l = canonicalize(Family::FluxVae, &infos(&diff, DType::F32)).unwrap();
    assert_eq!(l.layout, Layout::VaeDiffusers);
    let want: BTreeMap<String, Vec<u64>> = ldm.into_iter().collect();
    assert_eq!(shapes(&l), want);
    assert_eq!(
        l.get("decoder.up.3.block.0.conv1.weight").unwrap().parts[0].source,
        "decoder.up_blocks.0.resnets.0.conv1.weight"
    );
    assert_eq!(
        l.get("decoder.up.1.upsample.conv.bias").unwrap().parts[0].source,
        "decoder.up_blocks.2.upsamplers.0.conv.bias"
    );
    let q = l.get("encoder.mid.attn_1.q.weight").unwrap();
    assert_eq!(
        (q.shape.as_slice(), q.parts[0].source.as_str()),
        (
            [512u64, 512, 1, 1].as_slice(),
            "encoder.mid_block.attentions.0.to_q.weight"
        )
    );
    assert!(q.is_passthrough());
}

/// HF T5EncoderModel keys (T5-XXL widths), optionally with the tied `encoder.embed_tokens`.
pub(crate) fn t5_tensors(blocks: u64, with_embed_tokens: bool) -> Vec<(String, Vec<u64>)> {
    let (d, ff, heads) = (4096, 10240, 64);
    let mut v = vec![("shared.weight".to_string(), vec![32128, d])];
    if with_embed_tokens {
        v.push(("encoder.embed_tokens.weight".into(), vec![32128, d]));
    }
    for i in 0..blocks {
        let b = format!("encoder.block.{i}.layer");
        for p in ["q", "k", "v", "o"] {
            v.push((format!("{b}.0.SelfAttention.{p}.weight"), vec![d, d]));
        }
        if i == 0 {
            v.push((
                format!("{b}.0.SelfAttention.relative_attention_bias.weight"),
                vec![32, heads],
            ));
        }
        v.push((format!("{b}.0.layer_norm.weight"), vec![d]));
        v.push((format!("{b}.1.DenseReluDense.wi_0.weight"), vec![ff, d]));
        v.push((format!("{b}.1.DenseReluDense.wi_1.weight"), vec![ff, d]));
        v.push((format!("{b}.1.DenseReluDense.wo.weight"), vec![d, ff]));
        v.push((format!("{b}.1.layer_norm.weight"), vec![d]));
    }
    v.push(("encoder.final_layer_norm.weight".into(), vec![d]));
    v
}

/// HF CLIPTextModel keys (CLIP-L widths), with or without the `text_model.` level.
pub(crate) fn clip_tensors(layers: u64, text_model: bool) -> Vec<(String, Vec<u64>)> {
    let (d, ff) = (768, 3072);
    let p = if text_model { "text_model." } else { "" };
    let mut v = vec![
        (
            format!("{p}embeddings.token_embedding.weight"),
            vec![49408, d],
        ),
        (
            format!("{p}embeddings.position_embedding.weight"),
            vec![77, d],
        ),
        (format!("{p}embeddings.position_ids"), vec![1, 77]),
    ];
    for i in 0..layers {
        let l = format!("{p}encoder.layers.{i}");
        for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            v.push((format!("{l}.self_attn.{m}.weight"), vec![d, d]));
            v.push((format!("{l}.self_attn.{m}.bias"), vec![d]));
        }
        for m in ["layer_norm1", "layer_norm2"] {
            v.push((format!("{l}.{m}.weight"), vec![d]));
            v.push((format!("{l}.{m}.bias"), vec![d]));
        }
        v.push((format!("{l}.mlp.fc1.weight"), vec![ff, d]));
        v.push((format!("{l}.mlp.fc1.bias"), vec![ff]));
        v.push((format!("{l}.mlp.fc2.weight"), vec![d, ff]));
        v.push((format!("{l}.mlp.fc2.bias"), vec![d]));
    }
    v.push((format!("{p}final_layer_norm.weight"), vec![d]));
    v.push((format!("{p}final_layer_norm.bias"), vec![d]));
    v.push(("text_projection.weight".into(), vec![d, d]));
    v
}

#[test]
fn t5_layouts() {
    let l = canonicalize(Family::T5, &infos(&t5_tensors(24, true), DType::F16)).unwrap();
    assert_eq!(l.layout, Layout::T5Hf);
    assert_eq!(l.tensors.len(), 24 * 9 + 1 + 2);
    assert_eq!(l.ignored[0].name, "encoder.embed_tokens.weight");
    // Only the tied copy: it becomes `shared.weight`.
    let mut only_embed = t5_tensors(2, true);
    only_embed.retain(|(n, _)| n != "shared.weight");
    let l = canonicalize(Family::T5, &infos(&only_embed, DType::F16)).unwrap();
    assert_eq!(
        l.get("shared.weight").unwrap().parts[0].source,
        "encoder.embed_tokens.weight"
    );
    let mut broken = t5_tensors(3, false);
    broken.retain(|(n, _)| n != "encoder.block.1.layer.1.DenseReluDense.wo.weight");
    let e = canonicalize(Family::T5, &infos(&broken, DType::F16))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing: `encoder.block.1.layer.1.DenseReluDense.wo.weight`"),
        "{e}"
    );
}

#[test]
fn clip_layouts() {
    for (tm, prefix) in [
        (true, ""),
        (false, ""),
        (true, "text_encoders.clip_l.transformer."),
        (true, "cond_stage_model.transformer."),
    ] {
        let l = canonicalize(
            Family::ClipL,
            &infos(&prefixed(&clip_tensors(12, tm), prefix), DType::F16),
        )
        .unwrap();
        assert_eq!(l.tensors.len(), 12 * 16 + 2 + 2 + 1, "{tm} {prefix}");
        assert!(l
            .get("text_model.encoder.layers.11.self_attn.out_proj.bias")
            .is_some());
        assert!(l
            .ignored
            .iter()
            .any(|i| i.name.ends_with("embeddings.position_ids")));
    }
}

#[test]
fn unit_names_table() {
    let cases = [
        (
            Family::Flux,
            "model.diffusion_model.double_blocks.3.img_attn.qkv.weight",
            Some("double_blocks.3"),
        ),
        (
            Family::Flux,
            "transformer_blocks.3.attn.to_q.weight",
            Some("double_blocks.3"),
        ),
        (
            Family::Flux,
            "transformer.transformer_blocks.18.ff_context.net.2.bias",
            Some("double_blocks.18"),
        ),
        (
            Family::Flux,
            "single_transformer_blocks.37.proj_mlp.weight",
            Some("single_blocks.37"),
        ),
        (
            Family::Flux,
            "single_blocks.0.norm.key_norm.scale",
            Some("single_blocks.0"),
        ),
        (Family::Flux, "x_embedder.weight", None),
        (Family::Flux, "norm_out.linear.weight", None),
        (Family::Flux, "transformer_blocks.3.attn.to_qq.weight", None),
        (Family::Flux, "vae.decoder.conv_in.weight", None),
        (
            Family::FluxVae,
            "decoder.up_blocks.0.resnets.0.conv1.weight",
            Some("decoder"),
        ),
        (
            Family::FluxVae,
            "vae.encoder.down.0.block.1.conv2.bias",
            Some("encoder"),
        ),
        (
            Family::FluxVae,
            "encoder.mid_block.attentions.0.to_q.weight",
            Some("encoder"),
        ),
        (
            Family::T5,
            "text_encoders.t5xxl.transformer.encoder.block.3.layer.0.SelfAttention.q.weight",
            Some("encoder.block.3"),
        ),
        (Family::T5, "shared.weight", None),
        (
            Family::ClipL,
            "encoder.layers.5.mlp.fc1.weight",
            Some("text_model.encoder.layers.5"),
        ),
        (Family::ClipL, "text_model.final_layer_norm.bias", None),
        (
            Family::Wan,
            "model.diffusion_model.blocks.39.ffn.0.weight",
            Some("blocks.39"),
        ),
    ];
    for (f, raw, want) in cases {
        assert_eq!(canonical_unit_name(f, raw).as_deref(), want, "{f} {raw}");
    }
    assert_eq!(
        canonical_name(Family::Flux, "norm_out.linear.bias").as_deref(),
        Some("final_layer.adaLN_modulation.1.bias")
    );
    assert_eq!(
        canonical_name(
            Family::FluxVae,
            "decoder.up_blocks.0.resnets.0.conv1.weight"
        ),
        None
    );
}

#[test]
fn module_index_resolves_every_spelling() {
    let l = canonicalize(
        Family::Flux,
        &infos(&FluxDims::DEV.bfl_tensors(), DType::BF16),
    )
    .unwrap();
    let ix = ModuleIndex::build(&l);
    let t = |tensor: &str, rows: Range<u64>, swap| ModuleTarget {
        tensor: tensor.into(),
        rows,
        swap,
    };
    let cases = [
        (
            "double_blocks.0.img_attn.qkv",
            t("double_blocks.0.img_attn.qkv.weight", 0..9216, false),
        ),
        (
            "transformer_blocks.4.attn.to_k",
            t("double_blocks.4.img_attn.qkv.weight", 3072..6144, false),
        ),
        (
            "transformer_blocks.4.attn.add_v_proj",
            t("double_blocks.4.txt_attn.qkv.weight", 6144..9216, false),
        ),
        (
            "single_transformer_blocks.9.attn.to_v",
            t("single_blocks.9.linear1.weight", 6144..9216, false),
        ),
        (
            "single_transformer_blocks.9.proj_mlp",
            t("single_blocks.9.linear1.weight", 9216..21504, false),
        ),
        (
            "norm_out.linear",
            t("final_layer.adaLN_modulation.1.weight", 0..6144, true),
        ),
        (
            "time_text_embed.guidance_embedder.linear_2",
            t("guidance_in.out_layer.weight", 0..3072, false),
        ),
    ];
    for (m, want) in cases {
        assert_eq!(ix.dotted(m), Some(&want), "{m}");
        assert_eq!(ix.flat(&m.replace('.', "_")), Lookup::Found(&want), "{m}");
    }
    assert_eq!(ix.flat("double_blocks_0_img_attn_qkvv"), Lookup::NotFound);
    assert_eq!(
        ix.suggest("double_blocks_0_img_attn_qkvv", true).as_deref(),
        Some("double_blocks_0_img_attn_qkv")
    );
    assert_eq!(
        ix.dotted("double_blocks.0.img_attn.qkv")
            .unwrap()
            .bias()
            .unwrap()
            .tensor,
        "double_blocks.0.img_attn.qkv.bias"
    );

    let vae = canonicalize(
        Family::FluxVae,
        &infos(&VaeDims::flux().ldm_tensors(), DType::F32),
    )
    .unwrap();
    let ix = ModuleIndex::build(&vae);
    assert_eq!(
        ix.dotted("decoder.up_blocks.0.resnets.1.conv2")
            .unwrap()
            .tensor,
        "decoder.up.3.block.1.conv2.weight"
    );
    assert_eq!(
        ix.dotted("decoder.mid_block.attentions.0.to_q")
            .unwrap()
            .tensor,
        "decoder.mid.attn_1.q.weight"
    );
}

#[test]
fn natural_order() {
    let mut v = vec!["b.10.x", "b.2.x", "a", "b.2", "b.x"];
    v.sort_by(|a, b| natural_cmp(a, b));
    assert_eq!(v, ["a", "b.2", "b.2.x", "b.10.x", "b.x"]);
}

mod wan;
