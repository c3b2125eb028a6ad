//! Table tests of the Wan-family layouts: umT5-XXL (ComfyUI's fp16 and scaled-fp8 files) and
//! the Wan 2.1 transformer (original/ComfyUI and diffusers names, fp8, unit names).

use super::*;

/// ComfyUI's umT5-XXL text encoders (Wan): HF `UMT5EncoderModel` names, a relative-position
/// bias in every block, a 256384-row embedding and the embedded tokenizer `spiece_model` (U8).
/// `fp8` gives the `umt5_xxl_fp8_e4m3fn_scaled` form: linear weights e4m3 with a float32
/// `scale_weight` each and the `scaled_fp8` marker; embedding, norms and bias tables f16.
fn umt5_xxl_file(fp8: bool) -> Vec<TensorInfo> {
    let mut linear = Vec::new();
    let mut rest = t5_tensors(24, false);
    rest[0].1 = vec![256_384, 4096];
    for i in 1..24 {
        rest.push((
            format!("encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"),
            vec![32, 64],
        ));
    }
    if fp8 {
        rest.retain(|(n, s)| {
            let lin = s.len() == 2 && n.starts_with("encoder.block.") && !n.contains("bias");
            if lin {
                linear.push((n.clone(), s.clone()));
            }
            !lin
        });
    }
    let mut out = infos(&rest, DType::F16);
    out.extend(infos(&linear, DType::F8_E4M3));
    let scalar = |name: String, dtype, shape: Vec<u64>| TensorInfo {
        name,
        dtype,
        len: dtype.storage_bytes(shape.iter().product()).unwrap(),
        shape,
        offset: 0,
    };
    for (n, _) in &linear {
        out.push(scalar(
            n.replace(".weight", ".scale_weight"),
            DType::F32,
            vec![],
        ));
    }
    if fp8 {
        out.push(scalar("scaled_fp8".into(), DType::F8_E4M3, vec![0]));
    }
    out.push(scalar("spiece_model".into(), DType::U8, vec![4_548_313]));
    out
}

#[test]
fn umt5_comfyui_files_map_in_both_forms() {
    let want: BTreeMap<String, Vec<u64>> =
        crate::models::t5::tensor_shapes(&crate::models::t5::Config::umt5_xxl())
            .into_iter()
            .map(|(n, s)| (n, s.into_iter().map(|d| d as u64).collect()))
            .collect();
    for fp8 in [false, true] {
        let file = umt5_xxl_file(fp8);
        assert_eq!(
            crate::weights::detect_family(&file),
            Some(Family::UmT5),
            "fp8 {fp8}"
        );
        let l = canonicalize(Family::UmT5, &file).unwrap();
        assert_eq!(l.layout, Layout::T5Hf);
        assert_eq!(
            shapes(&l),
            want,
            "fp8 {fp8}: exactly what the encoder reads"
        );
        assert_eq!(l.tensors.len(), 24 * 10 + 2);
        let ignored: Vec<&str> = l.ignored.iter().map(|i| i.name.as_str()).collect();
        let q = l
            .get("encoder.block.7.layer.0.SelfAttention.q.weight")
            .unwrap();
        let norm = l.get("encoder.block.7.layer.0.layer_norm.weight").unwrap();
        if fp8 {
            assert_eq!(l.scaled_fp8, Some(DType::F8_E4M3));
            assert_eq!(ignored, ["scaled_fp8", "spiece_model"]);
            assert_eq!(
                q.scale.as_deref(),
                Some("encoder.block.7.layer.0.SelfAttention.q.scale_weight")
            );
            assert_eq!(q.dtype, DType::F8_E4M3);
            let scaled = l.tensors.iter().filter(|t| t.scale.is_some()).count();
            assert_eq!(scaled, 24 * 7, "q k v o wi_0 wi_1 wo of every block");
        } else {
            assert_eq!(l.scaled_fp8, None);
            assert_eq!(ignored, ["spiece_model"]);
            assert_eq!((q.dtype, q.scale.as_deref()), (DType::F16, None));
        }
        assert_eq!(norm.scale, None);
    }
    // Under an all-in-one prefix, as ComfyUI's `text_encoders.umt5xxl.transformer.`.
    let prefixed: Vec<TensorInfo> = umt5_xxl_file(true)
        .into_iter()
        .map(|mut t| {
            t.name = format!("text_encoders.umt5xxl.transformer.{}", t.name);
            t
        })
        .collect();
    let l = canonicalize(Family::UmT5, &prefixed).unwrap();
    assert_eq!(l.prefixes, ["text_encoders.umt5xxl.transformer."]);
    assert_eq!(l.scaled_fp8, Some(DType::F8_E4M3));
}

#[test]
fn wan_diffusers_maps_to_exactly_the_original_key_list() {
    for (d, n) in [(WanDims::T2V_14B, 1095), (WanDims::T2V_1_3B, 825)] {
        let diffusers = d.diffusers_tensors();
        let original = d.original_tensors();
        assert_eq!((diffusers.len(), original.len()), (n, n));
        let l = canonicalize(Family::Wan, &infos(&diffusers, DType::BF16)).unwrap();
        assert_eq!(l.layout, Layout::WanDiffusers);
        let want: BTreeMap<String, Vec<u64>> = original.iter().cloned().collect();
        assert_eq!(shapes(&l), want);
        assert!(l.tensors.iter().all(|t| t.is_passthrough()));
        assert_eq!(
            l.describe(),
            format!("wan, diffusers layout, {n} → {n} tensors")
        );
        let o = canonicalize(Family::Wan, &infos(&original, DType::BF16)).unwrap();
        assert_eq!(o.layout, Layout::WanOriginal);
        assert_eq!(shapes(&o), want);
        assert!(o.tensors.iter().all(|t| t.parts[0].source == t.name));
    }
    let l = canonicalize(
        Family::Wan,
        &infos(&WanDims::T2V_1_3B.diffusers_tensors(), DType::BF16),
    )
    .unwrap();
    let source = |n: &str| l.get(n).unwrap().parts[0].source.clone();
    for (canonical, diffusers) in [
        ("head.modulation", "scale_shift_table"),
        ("blocks.3.modulation", "blocks.3.scale_shift_table"),
        ("blocks.3.norm3.weight", "blocks.3.norm2.weight"),
        (
            "blocks.29.cross_attn.o.bias",
            "blocks.29.attn2.to_out.0.bias",
        ),
        (
            "blocks.0.self_attn.norm_k.weight",
            "blocks.0.attn1.norm_k.weight",
        ),
        ("blocks.7.ffn.0.weight", "blocks.7.ffn.net.0.proj.weight"),
        ("head.head.weight", "proj_out.weight"),
        (
            "time_projection.1.bias",
            "condition_embedder.time_proj.bias",
        ),
        (
            "text_embedding.2.weight",
            "condition_embedder.text_embedder.linear_2.weight",
        ),
        ("patch_embedding.weight", "patch_embedding.weight"),
    ] {
        assert_eq!(source(canonical), diffusers, "{canonical}");
    }
    assert_eq!(
        l.get("patch_embedding.weight").unwrap().shape,
        [1536, 16, 1, 2, 2]
    );
}

#[test]
fn wan_prefixes_missing_and_mixed() {
    let orig = prefixed(
        &WanDims::T2V_1_3B.original_tensors(),
        "model.diffusion_model.",
    );
    let l = canonicalize(Family::Wan, &infos(&orig, DType::BF16)).unwrap();
    assert_eq!(l.prefixes, ["model.diffusion_model."]);
    assert_eq!(l.layout, Layout::WanOriginal);

    // A missing bare parameter is named in the file's own spelling.
    let mut diff = WanDims::T2V_1_3B.diffusers_tensors();
    diff.retain(|(n, _)| n != "scale_shift_table" && n != "blocks.4.scale_shift_table");
    let e = canonicalize(Family::Wan, &infos(&diff, DType::BF16))
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 missing tensors"), "{e}");
    assert!(
        e.contains("missing: `scale_shift_table` (canonical `head.modulation`)"),
        "{e}"
    );
    assert!(
        e.contains("missing: `blocks.4.scale_shift_table` (canonical `blocks.4.modulation`)"),
        "{e}"
    );

    let mut mixed = WanDims::T2V_1_3B.original_tensors();
    mixed.push(("blocks.0.attn1.to_q.weight".into(), vec![1536, 1536]));
    let e = canonicalize(Family::Wan, &infos(&mixed, DType::BF16)).unwrap_err();
    assert!(matches!(e, KeymapError::MixedLayouts { .. }), "{e}");

    // Image-to-video tensors map (the model refuses them by name), in both layouts.
    let mut i2v = WanDims::T2V_1_3B.original_tensors();
    i2v.push(("img_emb.proj.1.weight".into(), vec![1536, 1280]));
    i2v.push(("blocks.0.cross_attn.k_img.weight".into(), vec![1536, 1536]));
    assert!(canonicalize(Family::Wan, &infos(&i2v, DType::BF16)).is_ok());
    let mut i2v = WanDims::T2V_1_3B.diffusers_tensors();
    i2v.push((
        "condition_embedder.image_embedder.ff.net.0.proj.weight".into(),
        vec![1536, 1280],
    ));
    i2v.push(("blocks.0.attn2.add_k_proj.weight".into(), vec![1536, 1536]));
    let l = canonicalize(Family::Wan, &infos(&i2v, DType::BF16)).unwrap();
    assert!(l.get("img_emb.proj.1.weight").is_some());
    assert!(l.get("blocks.0.cross_attn.k_img.weight").is_some());
}

#[test]
fn wan_fp8_and_scaled_fp8_map() {
    // ComfyUI's fp8 files: block matrices in fp8 e4m3fn, the rest in bf16/f32, with the
    // `model.diffusion_model.` prefix (plain) or a `scaled_fp8` marker and one f32
    // `scale_weight` per fp8 matrix (scaled).
    let d = WanDims::T2V_1_3B;
    let list = prefixed(&d.original_tensors(), "model.diffusion_model.");
    let mut fp8: Vec<TensorInfo> = list
        .iter()
        .map(|(n, s)| {
            let q = n.contains(".blocks.") && s.len() == 2;
            infos(
                &[(n.clone(), s.clone())],
                if q { DType::F8_E4M3 } else { DType::BF16 },
            )
            .remove(0)
        })
        .collect();
    let l = canonicalize(Family::Wan, &fp8).unwrap();
    assert_eq!(l.layout, Layout::WanOriginal);
    assert_eq!(l.tensors.len(), 825);
    assert_eq!(
        l.get("blocks.3.ffn.0.weight").unwrap().dtype,
        DType::F8_E4M3
    );
    assert_eq!(l.get("blocks.3.ffn.0.bias").unwrap().dtype, DType::BF16);
    assert_eq!(l.scaled_fp8, None);

    let scalar = |name: String| TensorInfo {
        name,
        dtype: DType::F32,
        shape: vec![],
        offset: 0,
        len: 4,
    };
    let scales: Vec<TensorInfo> = fp8
        .iter()
        .filter(|t| t.dtype == DType::F8_E4M3)
        .map(|t| scalar(t.name.replace(".weight", ".scale_weight")))
        .collect();
    let n_scales = scales.len();
    assert_eq!(n_scales, 30 * 10);
    fp8.extend(scales);
    fp8.push(TensorInfo {
        name: "model.diffusion_model.scaled_fp8".into(),
        dtype: DType::F8_E4M3,
        shape: vec![0],
        offset: 0,
        len: 0,
    });
    let l = canonicalize(Family::Wan, &fp8).unwrap();
    assert_eq!(l.scaled_fp8, Some(DType::F8_E4M3));
    assert_eq!(
        l.get("blocks.29.cross_attn.v.weight")
            .unwrap()
            .scale
            .as_deref(),
        Some("model.diffusion_model.blocks.29.cross_attn.v.scale_weight")
    );
    assert_eq!(
        l.tensors.iter().filter(|t| t.scale.is_some()).count(),
        n_scales
    );
}

#[test]
fn wan_unit_names_and_module_index() {
    for (raw, want) in [
        ("blocks.3.attn2.to_k.weight", Some("blocks.3")),
        ("transformer.blocks.29.ffn.net.2.bias", Some("blocks.29")),
        ("blocks.12.scale_shift_table", Some("blocks.12")),
        ("diffusion_model.blocks.0.norm3.bias", Some("blocks.0")),
        ("scale_shift_table", None),
        ("condition_embedder.time_proj.weight", None),
        ("head.modulation", None),
        ("vae.decoder.conv1.weight", None),
    ] {
        assert_eq!(
            canonical_unit_name(Family::Wan, raw).as_deref(),
            want,
            "{raw}"
        );
    }
    assert_eq!(
        canonical_name(Family::Wan, "scale_shift_table").as_deref(),
        Some("head.modulation")
    );
    assert_eq!(
        canonical_name(Family::Wan, "blocks.2.norm2.weight").as_deref(),
        Some("blocks.2.norm3.weight")
    );

    // LoRA modules resolve in both spellings, dotted and kohya-flattened, whichever layout the
    // base file uses.
    let d = WanDims::T2V_1_3B;
    for list in [d.original_tensors(), d.diffusers_tensors()] {
        let l = canonicalize(Family::Wan, &infos(&list, DType::BF16)).unwrap();
        let ix = ModuleIndex::build(&l);
        let t = |tensor: &str| ModuleTarget {
            tensor: tensor.into(),
            rows: 0..1536,
            swap: false,
        };
        for (m, want) in [
            ("blocks.0.self_attn.q", t("blocks.0.self_attn.q.weight")),
            ("blocks.0.attn1.to_q", t("blocks.0.self_attn.q.weight")),
            (
                "blocks.17.attn2.to_out.0",
                t("blocks.17.cross_attn.o.weight"),
            ),
            ("blocks.17.cross_attn.o", t("blocks.17.cross_attn.o.weight")),
            ("blocks.5.ffn.net.2", t("blocks.5.ffn.2.weight")),
            (
                "condition_embedder.text_embedder.linear_1",
                t("text_embedding.0.weight"),
            ),
        ] {
            assert_eq!(ix.dotted(m), Some(&want), "{m}");
            assert_eq!(ix.flat(&m.replace('.', "_")), Lookup::Found(&want), "{m}");
        }
        assert_eq!(
            ix.dotted("blocks.5.ffn.0").unwrap().rows,
            0..8960,
            "ffn.0 has ffn_dim rows"
        );
        assert_eq!(ix.dotted("proj_out").unwrap().tensor, "head.head.weight");
        assert_eq!(
            ix.dotted("condition_embedder.time_proj").unwrap().tensor,
            "time_projection.1.weight"
        );
    }
}
