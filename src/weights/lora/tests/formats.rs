//! Key formats: BFL/diffusers/kohya spellings, text encoders, conv LoRAs, peft metadata.

use std::collections::HashMap;

use super::*;

#[test]
fn bfl_and_diffusers_spellings_and_text_encoder_keys() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::F32);
    let (a, b) = (vals(2 * 4, 1), vals(4 * 2, 2));
    let path = write(
        dir.path(),
        "mixed.safetensors",
        &[
            t("diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight", &[2, 4], a.clone()),
            t("diffusion_model.double_blocks.0.img_attn.proj.lora_B.weight", &[4, 2], b.clone()),
            t("diffusion_model.double_blocks.0.txt_attn.proj.lora_down.weight", &[2, 4], a.clone()),
            t("diffusion_model.double_blocks.0.txt_attn.proj.lora_up.weight", &[4, 2], b.clone()),
            t("transformer_blocks.1.attn.to_out.0.lora_A.weight", &[2, 4], a.clone()),
            t("transformer_blocks.1.attn.to_out.0.lora_B.weight", &[4, 2], b.clone()),
            t("lora_transformer_single_transformer_blocks_1_proj_out.lora_down.weight", &[2, 12], vals(24, 3)),
            t("lora_transformer_single_transformer_blocks_1_proj_out.lora_up.weight", &[4, 2], b.clone()),
            t("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", &[2, 8], vals(16, 4)),
            t("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", &[8, 2], vals(16, 5)),
            t("text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight", &[2, 8], vals(16, 6)),
            t("text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight", &[8, 2], vals(16, 7)),
        ],
        None,
    );
    let (set, report) = LoraSet::load(&[(path, 1.0)], Family::Flux, &l, true).unwrap();
    let names: Vec<&str> = set.patched_names().collect();
    assert_eq!(
        names,
        [
            "double_blocks.0.img_attn.proj.weight",
            "double_blocks.0.txt_attn.proj.weight",
            "double_blocks.1.img_attn.proj.weight",
            "single_blocks.1.linear2.weight"
        ]
    );
    let f = &report.files[0];
    assert_eq!(f.formats, ["bfl", "kohya", "peft"]);
    assert_eq!((f.modules, f.matched_modules), (6, 4));
    assert_eq!(f.other_components.get("clip-l"), Some(&1));
    assert_eq!(f.other_components.get("t5"), Some(&1));
    let text = report.to_string();
    assert!(
        text.contains(
            "4/6 modules matched (8 tensors), 4 base tensors patched; 1 for clip-l; 1 for t5"
        ),
        "{text}"
    );
}

#[test]
fn clip_and_t5_loras() {
    use crate::weights::keymap::canonicalize;
    let dir = tempfile::tempdir().unwrap();
    let d = 8u64;
    let mut clip = vec![
        (
            "text_model.embeddings.token_embedding.weight".to_string(),
            vec![10, d],
        ),
        (
            "text_model.embeddings.position_embedding.weight".to_string(),
            vec![5, d],
        ),
        ("text_model.final_layer_norm.weight".to_string(), vec![d]),
        ("text_model.final_layer_norm.bias".to_string(), vec![d]),
    ];
    for m in [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "layer_norm1",
        "layer_norm2",
        "mlp.fc1",
        "mlp.fc2",
    ] {
        let shape = if m.starts_with("layer_norm") {
            vec![d]
        } else {
            vec![d, d]
        };
        clip.push((format!("text_model.encoder.layers.0.{m}.weight"), shape));
        clip.push((format!("text_model.encoder.layers.0.{m}.bias"), vec![d]));
    }
    let infos: Vec<TensorInfo> = clip
        .into_iter()
        .map(|(name, shape)| TensorInfo {
            name,
            dtype: DType::F16,
            len: 0,
            offset: 0,
            shape,
        })
        .collect();
    let l = canonicalize(Family::ClipL, &infos).unwrap();
    let p = write(
        dir.path(),
        "te.safetensors",
        &[
            t(
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
                &[2, 8],
                vals(16, 1),
            ),
            t(
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
                &[8, 2],
                vals(16, 2),
            ),
            t(
                "text_encoder.text_model.encoder.layers.0.mlp.fc2.lora_A.weight",
                &[2, 8],
                vals(16, 1),
            ),
            t(
                "text_encoder.text_model.encoder.layers.0.mlp.fc2.lora_B.weight",
                &[8, 2],
                vals(16, 2),
            ),
            t(
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                &[2, 4],
                vals(8, 1),
            ),
            t(
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
                &[12, 2],
                vals(24, 2),
            ),
        ],
        None,
    );
    let (set, report) = LoraSet::load(&[(p, 1.0)], Family::ClipL, &l, true).unwrap();
    assert_eq!(
        set.patched_names().collect::<Vec<_>>(),
        [
            "text_model.encoder.layers.0.mlp.fc2.weight",
            "text_model.encoder.layers.0.self_attn.q_proj.weight"
        ]
    );
    assert_eq!(
        report.files[0].other_components.get("the diffusion model"),
        Some(&1)
    );

    let mut t5 = vec![
        ("shared.weight".to_string(), vec![10, d]),
        ("encoder.final_layer_norm.weight".to_string(), vec![d]),
    ];
    for m in [
        "0.SelfAttention.q",
        "0.SelfAttention.k",
        "0.SelfAttention.v",
        "0.SelfAttention.o",
        "1.DenseReluDense.wi_0",
        "1.DenseReluDense.wi_1",
        "1.DenseReluDense.wo",
    ] {
        t5.push((format!("encoder.block.0.layer.{m}.weight"), vec![d, d]));
    }
    t5.push(("encoder.block.0.layer.0.layer_norm.weight".into(), vec![d]));
    t5.push(("encoder.block.0.layer.1.layer_norm.weight".into(), vec![d]));
    let infos: Vec<TensorInfo> = t5
        .into_iter()
        .map(|(name, shape)| TensorInfo {
            name,
            dtype: DType::F16,
            len: 0,
            offset: 0,
            shape,
        })
        .collect();
    let l = canonicalize(Family::T5, &infos).unwrap();
    let p = write(
        dir.path(),
        "t5.safetensors",
        &[
            t(
                "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0.lora_down.weight",
                &[2, 8],
                vals(16, 1),
            ),
            t(
                "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0.lora_up.weight",
                &[8, 2],
                vals(16, 2),
            ),
            t(
                "lora_te2_encoder_block_0_layer_0_SelfAttention_o.lora_down.weight",
                &[2, 8],
                vals(16, 1),
            ),
            t(
                "lora_te2_encoder_block_0_layer_0_SelfAttention_o.lora_up.weight",
                &[8, 2],
                vals(16, 2),
            ),
        ],
        None,
    );
    let (set, _) = LoraSet::load(&[(p, 1.0)], Family::T5, &l, true).unwrap();
    assert_eq!(
        set.patched_names().collect::<Vec<_>>(),
        [
            "encoder.block.0.layer.0.SelfAttention.o.weight",
            "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
        ]
    );
}

#[test]
fn conv_lora_on_vae() {
    use crate::weights::keymap::{canonicalize, VaeDims};
    let dir = tempfile::tempdir().unwrap();
    let dims = VaeDims {
        ch: 4,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        in_channels: 3,
        z_channels: 2,
    };
    let infos: Vec<TensorInfo> = dims
        .ldm_tensors()
        .into_iter()
        .map(|(name, shape)| TensorInfo {
            name,
            dtype: DType::F32,
            len: 0,
            offset: 0,
            shape,
        })
        .collect();
    let l = canonicalize(Family::FluxVae, &infos).unwrap();
    let conv = l.get("decoder.up.1.block.0.conv1.weight").unwrap();
    assert_eq!(conv.shape, [8, 8, 3, 3]);
    let (down, up) = (vals(2 * 8 * 9, 1), vals(8 * 2, 2));
    let p = write(
        dir.path(),
        "c.safetensors",
        &[
            t(
                "vae.decoder.up_blocks.0.resnets.0.conv1.lora_down.weight",
                &[2, 8, 3, 3],
                down.clone(),
            ),
            t(
                "vae.decoder.up_blocks.0.resnets.0.conv1.lora_up.weight",
                &[8, 2, 1, 1],
                up.clone(),
            ),
            t(
                "vae.decoder.mid_block.attentions.0.to_q.lora_A.weight",
                &[1, 8],
                vals(8, 3),
            ),
            t(
                "vae.decoder.mid_block.attentions.0.to_q.lora_B.weight",
                &[8, 1],
                vals(8, 4),
            ),
        ],
        None,
    );
    let (set, _) = LoraSet::load(&[(p, 1.0)], Family::FluxVae, &l, true).unwrap();
    let w = vals(8 * 72, 5);
    let got = patch_f32(&set, &l, "decoder.up.1.block.0.conv1.weight", &w);
    assert_eq!(got, reference(&w, 72, 0..8, &up, &down, 2, 1.0));
    assert!(
        set.delta("decoder.mid.attn_1.q.weight").is_some(),
        "a linear LoRA on the 1×1-conv attention"
    );
}

#[test]
fn peft_metadata_alpha_and_diff_patches() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::F32);
    let mut md = HashMap::new();
    md.insert("lora_adapter_metadata".to_string(), r#"{"transformer.r": 2, "transformer.lora_alpha": 8, "transformer.alpha_pattern": {"x_embedder": 1}}"#.to_string());
    let p = write(
        dir.path(),
        "m.safetensors",
        &[
            t("transformer.x_embedder.lora_A.weight", &[2, 2], vals(4, 1)),
            t("transformer.x_embedder.lora_B.weight", &[4, 2], vals(8, 2)),
            t(
                "transformer.context_embedder.lora_A.weight",
                &[2, 3],
                vals(6, 1),
            ),
            t(
                "transformer.context_embedder.lora_B.weight",
                &[4, 2],
                vals(8, 2),
            ),
            t(
                "diffusion_model.final_layer.linear.diff_b",
                &[2],
                vec![0.5, -0.25],
            ),
            t(
                "diffusion_model.vector_in.in_layer.diff",
                &[4, 3],
                vals(12, 3),
            ),
        ],
        Some(md),
    );
    let (set, report) = LoraSet::load(&[(p, 2.0)], Family::Flux, &l, true).unwrap();
    assert_eq!(
        set.delta("vector_in.in_layer.weight").unwrap().terms[0].factor,
        1.0
    );
    let x = set.delta("img_in.weight").unwrap().terms[0].factor;
    assert_eq!(x, 0.5, "alpha_pattern 1 / rank 2");
    assert_eq!(
        set.delta("txt_in.weight").unwrap().terms[0].factor,
        4.0,
        "lora_alpha 8 / rank 2"
    );
    assert_eq!(
        report.files[0].alpha_source.as_deref(),
        Some("safetensors metadata `lora_adapter_metadata`")
    );
    let got = patch_f32(&set, &l, "final_layer.linear.bias", &[1.0, 1.0]);
    assert_eq!(got, [2.0, 0.5]);
    assert_eq!(report.files[0].formats, ["diff", "peft"]);
}

#[test]
fn norm_out_lora_swaps_halves_into_final_modulation() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::F32);
    let (a, b) = (vals(2 * 4, 1), vals(8 * 2, 2));
    let path = write(
        dir.path(),
        "n.safetensors",
        &[
            t(
                "transformer.norm_out.linear.lora_A.weight",
                &[2, 4],
                a.clone(),
            ),
            t(
                "transformer.norm_out.linear.lora_B.weight",
                &[8, 2],
                b.clone(),
            ),
        ],
        None,
    );
    let (set, _) = LoraSet::load(&[(path, 1.0)], Family::Flux, &l, true).unwrap();
    let w = vals(32, 9);
    let got = patch_f32(&set, &l, "final_layer.adaLN_modulation.1.weight", &w);
    // The diffusers delta is (scale; shift); BFL stores (shift; scale): rows 0..4 get the
    // delta's rows 4..8.
    let mut b_swapped = b[8..].to_vec();
    b_swapped.extend_from_slice(&b[..8]);
    assert_eq!(got, reference(&w, 4, 0..8, &b_swapped, &a, 2, 1.0));
}
