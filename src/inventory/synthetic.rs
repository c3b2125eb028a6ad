//! Inventories of real architectures built in memory, with the real checkpoint key names and
//! shapes, for tests, benchmarks and examples where no weight file exists. Each preset cites
//! where its shapes come from.

use super::Inventory;
use crate::family::Family;
use crate::weights::DType;

type Spec = (String, DType, Vec<u64>);

fn linear(out: &mut Vec<Spec>, dtype: DType, name: &str, o: u64, i: u64, bias: bool) {
    out.push((format!("{name}.weight"), dtype, vec![o, i]));
    if bias {
        out.push((format!("{name}.bias"), dtype, vec![o]));
    }
}

/// FLUX.1-dev transformer as in `flux1-dev.safetensors` (BFL layout, 11.9 B parameters, 23.8 GB
/// in bf16): hidden 3072, MLP 12288, 24 heads of 128, 19 double and 38 single blocks, guidance
/// embedding. Shapes follow BFL's `flux/model.py` (candle-transformers `flux::model::Config::dev`).
pub fn flux_dev(dtype: DType) -> Inventory {
    flux(dtype, 19, 38, true)
}

/// FLUX.1-schnell: as [`flux_dev`] without the guidance embedding.
pub fn flux_schnell(dtype: DType) -> Inventory {
    flux(dtype, 19, 38, false)
}

/// A FLUX-architecture transformer with `double` and `single` blocks.
pub fn flux(dtype: DType, double: u32, single: u32, guidance: bool) -> Inventory {
    let (h, mlp, head_dim) = (3072u64, 12288u64, 128u64);
    let mut t = Vec::new();
    linear(&mut t, dtype, "img_in", h, 64, true);
    linear(&mut t, dtype, "time_in.in_layer", h, 256, true);
    linear(&mut t, dtype, "time_in.out_layer", h, h, true);
    linear(&mut t, dtype, "vector_in.in_layer", h, 768, true);
    linear(&mut t, dtype, "vector_in.out_layer", h, h, true);
    if guidance {
        linear(&mut t, dtype, "guidance_in.in_layer", h, 256, true);
        linear(&mut t, dtype, "guidance_in.out_layer", h, h, true);
    }
    linear(&mut t, dtype, "txt_in", h, 4096, true);
    for i in 0..double {
        for s in ["img", "txt"] {
            let p = format!("double_blocks.{i}.{s}");
            linear(&mut t, dtype, &format!("{p}_mod.lin"), 6 * h, h, true);
            linear(&mut t, dtype, &format!("{p}_attn.qkv"), 3 * h, h, true);
            t.push((
                format!("{p}_attn.norm.query_norm.scale"),
                dtype,
                vec![head_dim],
            ));
            t.push((
                format!("{p}_attn.norm.key_norm.scale"),
                dtype,
                vec![head_dim],
            ));
            linear(&mut t, dtype, &format!("{p}_attn.proj"), h, h, true);
            linear(&mut t, dtype, &format!("{p}_mlp.0"), mlp, h, true);
            linear(&mut t, dtype, &format!("{p}_mlp.2"), h, mlp, true);
        }
    }
    for i in 0..single {
        let p = format!("single_blocks.{i}");
        linear(&mut t, dtype, &format!("{p}.linear1"), 3 * h + mlp, h, true);
        linear(&mut t, dtype, &format!("{p}.linear2"), h, h + mlp, true);
        t.push((format!("{p}.norm.query_norm.scale"), dtype, vec![head_dim]));
        t.push((format!("{p}.norm.key_norm.scale"), dtype, vec![head_dim]));
        linear(
            &mut t,
            dtype,
            &format!("{p}.modulation.lin"),
            3 * h,
            h,
            true,
        );
    }
    linear(
        &mut t,
        dtype,
        "final_layer.adaLN_modulation.1",
        2 * h,
        h,
        true,
    );
    linear(&mut t, dtype, "final_layer.linear", 64, h, true);
    Inventory::synthetic(Some(Family::Flux), &t)
}

/// T5 v1.1 XXL encoder as in `t5xxl_fp16.safetensors` (4.76 B parameters): d_model 4096,
/// d_ff 10240 (gated GELU), 64 heads of 64, 24 blocks (Hugging Face `T5EncoderModel` names).
pub fn t5_xxl(dtype: DType) -> Inventory {
    let (d, ff) = (4096u64, 10240u64);
    let mut t = vec![("shared.weight".to_string(), dtype, vec![32128, d])];
    for i in 0..24 {
        let p = format!("encoder.block.{i}.layer");
        for m in ["q", "k", "v", "o"] {
            linear(
                &mut t,
                dtype,
                &format!("{p}.0.SelfAttention.{m}"),
                d,
                d,
                false,
            );
        }
        if i == 0 {
            t.push((
                format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                dtype,
                vec![32, 64],
            ));
        }
        t.push((format!("{p}.0.layer_norm.weight"), dtype, vec![d]));
        linear(
            &mut t,
            dtype,
            &format!("{p}.1.DenseReluDense.wi_0"),
            ff,
            d,
            false,
        );
        linear(
            &mut t,
            dtype,
            &format!("{p}.1.DenseReluDense.wi_1"),
            ff,
            d,
            false,
        );
        linear(
            &mut t,
            dtype,
            &format!("{p}.1.DenseReluDense.wo"),
            d,
            ff,
            false,
        );
        t.push((format!("{p}.1.layer_norm.weight"), dtype, vec![d]));
    }
    t.push((
        "encoder.final_layer_norm.weight".to_string(),
        dtype,
        vec![d],
    ));
    Inventory::synthetic(Some(Family::T5), &t)
}

/// CLIP ViT-L/14 text encoder as in `clip_l.safetensors` (123 M parameters): width 768,
/// MLP 3072, 12 heads, 12 layers (Hugging Face `CLIPTextModel` names).
pub fn clip_l(dtype: DType) -> Inventory {
    let (d, ff) = (768u64, 3072u64);
    let mut t = vec![
        (
            "text_model.embeddings.token_embedding.weight".to_string(),
            dtype,
            vec![49408, d],
        ),
        (
            "text_model.embeddings.position_embedding.weight".to_string(),
            dtype,
            vec![77, d],
        ),
    ];
    for i in 0..12 {
        let p = format!("text_model.encoder.layers.{i}");
        for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            linear(&mut t, dtype, &format!("{p}.self_attn.{m}"), d, d, true);
        }
        for n in ["layer_norm1", "layer_norm2"] {
            t.push((format!("{p}.{n}.weight"), dtype, vec![d]));
            t.push((format!("{p}.{n}.bias"), dtype, vec![d]));
        }
        linear(&mut t, dtype, &format!("{p}.mlp.fc1"), ff, d, true);
        linear(&mut t, dtype, &format!("{p}.mlp.fc2"), d, ff, true);
    }
    t.push((
        "text_model.final_layer_norm.weight".to_string(),
        dtype,
        vec![d],
    ));
    t.push((
        "text_model.final_layer_norm.bias".to_string(),
        dtype,
        vec![d],
    ));
    Inventory::synthetic(Some(Family::ClipL), &t)
}

fn conv(out: &mut Vec<Spec>, dtype: DType, name: &str, o: u64, i: u64, k: u64) {
    out.push((format!("{name}.weight"), dtype, vec![o, i, k, k]));
    out.push((format!("{name}.bias"), dtype, vec![o]));
}

fn norm(out: &mut Vec<Spec>, dtype: DType, name: &str, c: u64) {
    out.push((format!("{name}.weight"), dtype, vec![c]));
    out.push((format!("{name}.bias"), dtype, vec![c]));
}

fn resnet(out: &mut Vec<Spec>, dtype: DType, p: &str, i: u64, o: u64) {
    norm(out, dtype, &format!("{p}.norm1"), i);
    conv(out, dtype, &format!("{p}.conv1"), o, i, 3);
    norm(out, dtype, &format!("{p}.norm2"), o);
    conv(out, dtype, &format!("{p}.conv2"), o, o, 3);
    if i != o {
        conv(out, dtype, &format!("{p}.nin_shortcut"), o, i, 1);
    }
}

fn mid(out: &mut Vec<Spec>, dtype: DType, p: &str, c: u64) {
    resnet(out, dtype, &format!("{p}.mid.block_1"), c, c);
    norm(out, dtype, &format!("{p}.mid.attn_1.norm"), c);
    for n in ["q", "k", "v", "proj_out"] {
        conv(out, dtype, &format!("{p}.mid.attn_1.{n}"), c, c, 1);
    }
    resnet(out, dtype, &format!("{p}.mid.block_2"), c, c);
}

/// The FLUX.1 autoencoder as in `ae.safetensors` (BFL layout, 83.8 M parameters, f32):
/// channels 128 × (1, 2, 4, 4), 2 resnets per encoder level and 3 per decoder level, one
/// attention in each mid block, 16 latent channels, no quant convs. Shapes follow BFL's
/// `flux/modules/autoencoder.py` (diffusers `AutoencoderKL` with FLUX.1's config).
pub fn flux_vae(dtype: DType) -> Inventory {
    let ch = [128u64, 128, 256, 512, 512];
    let mut t = Vec::new();
    conv(&mut t, dtype, "encoder.conv_in", 128, 3, 3);
    for level in 0..4 {
        let (i, o) = (ch[level], ch[level + 1]);
        for b in 0..2 {
            let p = format!("encoder.down.{level}.block.{b}");
            resnet(&mut t, dtype, &p, if b == 0 { i } else { o }, o);
        }
        if level < 3 {
            conv(
                &mut t,
                dtype,
                &format!("encoder.down.{level}.downsample.conv"),
                o,
                o,
                3,
            );
        }
    }
    mid(&mut t, dtype, "encoder", 512);
    norm(&mut t, dtype, "encoder.norm_out", 512);
    conv(&mut t, dtype, "encoder.conv_out", 32, 512, 3);
    conv(&mut t, dtype, "decoder.conv_in", 512, 16, 3);
    mid(&mut t, dtype, "decoder", 512);
    // Decoder levels are numbered as the encoder's: up.3 runs first (512 → 512).
    for level in (0..4).rev() {
        let o = ch[level + 1];
        let i = if level == 3 { 512 } else { ch[level + 2] };
        for b in 0..3 {
            let p = format!("decoder.up.{level}.block.{b}");
            resnet(&mut t, dtype, &p, if b == 0 { i } else { o }, o);
        }
        if level > 0 {
            conv(
                &mut t,
                dtype,
                &format!("decoder.up.{level}.upsample.conv"),
                o,
                o,
                3,
            );
        }
    }
    norm(&mut t, dtype, "decoder.norm_out", 128);
    conv(&mut t, dtype, "decoder.conv_out", 3, 128, 3);
    Inventory::synthetic(Some(Family::FluxVae), &t)
}

/// A Wan 2.1-architecture transformer with `layers` blocks of width `dim` and FFN `ffn`
/// (Wan 2.1 14B: 5120, 13824, 40; 1.3B: 1536, 8960, 30), names as in the official
/// `wan/modules/model.py` checkpoints.
pub fn wan(dtype: DType, dim: u64, ffn: u64, layers: u32) -> Inventory {
    wan_with_latent(dtype, dim, ffn, layers, 16)
}

/// [`wan`] with `latent` channels in and out (48: Wan 2.2 TI2V-5B, the Wan 2.2 VAE's latent).
pub fn wan_with_latent(dtype: DType, dim: u64, ffn: u64, layers: u32, latent: u64) -> Inventory {
    let mut t = vec![(
        "patch_embedding.weight".to_string(),
        dtype,
        vec![dim, latent, 1, 2, 2],
    )];
    t.push(("patch_embedding.bias".to_string(), dtype, vec![dim]));
    linear(&mut t, dtype, "text_embedding.0", dim, 4096, true);
    linear(&mut t, dtype, "text_embedding.2", dim, dim, true);
    linear(&mut t, dtype, "time_embedding.0", dim, 256, true);
    linear(&mut t, dtype, "time_embedding.2", dim, dim, true);
    linear(&mut t, dtype, "time_projection.1", 6 * dim, dim, true);
    for i in 0..layers {
        let p = format!("blocks.{i}");
        for a in ["self_attn", "cross_attn"] {
            for m in ["q", "k", "v", "o"] {
                linear(&mut t, dtype, &format!("{p}.{a}.{m}"), dim, dim, true);
            }
            t.push((format!("{p}.{a}.norm_q.weight"), dtype, vec![dim]));
            t.push((format!("{p}.{a}.norm_k.weight"), dtype, vec![dim]));
        }
        t.push((format!("{p}.norm3.weight"), dtype, vec![dim]));
        t.push((format!("{p}.norm3.bias"), dtype, vec![dim]));
        linear(&mut t, dtype, &format!("{p}.ffn.0"), ffn, dim, true);
        linear(&mut t, dtype, &format!("{p}.ffn.2"), dim, ffn, true);
        t.push((format!("{p}.modulation"), DType::F32, vec![1, 6, dim]));
    }
    linear(&mut t, dtype, "head.head", 4 * latent, dim, true);
    t.push(("head.modulation".to_string(), DType::F32, vec![1, 2, dim]));
    Inventory::synthetic(Some(Family::Wan), &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_dev_matches_the_published_checkpoint() {
        let inv = flux_dev(DType::BF16);
        assert_eq!(inv.total_params(), 11_901_408_320);
        assert_eq!(inv.total_bytes(), 23_802_816_640);
        assert_eq!(inv.blocks().count(), 57);
        assert_eq!(inv.unit("double_blocks.0").unwrap().bytes, 679_662_592);
        assert_eq!(inv.unit("single_blocks.37").unwrap().bytes, 283_183_616);
        assert_eq!(inv.resident_bytes(), 128_249_984);
        assert_eq!(inv.units.last().unwrap().name, "single_blocks.37");
        assert_eq!(
            super::super::detect_family(&inv.tensors).unwrap().0,
            Family::Flux
        );
    }

    #[test]
    fn encoders_match_their_published_sizes() {
        let t5 = t5_xxl(DType::F16);
        assert_eq!(t5.total_params(), 4_762_310_656);
        assert_eq!(t5.blocks().count(), 24);
        let clip = clip_l(DType::F16);
        assert_eq!(clip.total_params(), 123_060_480);
        // ae.safetensors: 83 819 683 parameters (335 MB in f32).
        let vae = flux_vae(DType::F32);
        assert_eq!(vae.total_params(), 83_819_683);
        assert_eq!(
            super::super::detect_family(&vae.tensors).unwrap().0,
            Family::FluxVae
        );
        assert_eq!(
            vae.units
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>(),
            ["encoder", "decoder"]
        );
        let wan = wan(DType::BF16, 5120, 13824, 40);
        let p = wan.total_params() as f64 / 1e9;
        assert!((14.0..14.5).contains(&p), "{p}");
    }
}
