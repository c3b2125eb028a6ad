//! FLUX.1 transformer key layouts: the canonical BFL/ComfyUI names (`double_blocks.N.img_attn.qkv`)
//! and the diffusers `FluxTransformer2DModel` names (`transformer_blocks.N.attn.to_q`), which
//! split the fused q/k/v (and, in single blocks, q/k/v/mlp-in) projections into separate
//! tensors and store the final modulation as (scale, shift) instead of (shift, scale).
//!
//! The correspondence follows diffusers' own converter
//! (`diffusers/loaders/single_file_utils.py`, `convert_flux_transformer_checkpoint_to_diffusers`),
//! read in the other direction, and is checked against it by `tools/make_lora_fixtures.py`.

use super::spec::{entry, rule, Entry, Need, Rule, Slot, Split, LIN, NORM, SCALE, WB};
use super::spec::{keep, no_rev, supported, Spec};
use super::Layout;
use crate::family::Family;

pub(crate) fn spec() -> Spec {
    Spec {
        family: Family::Flux,
        canonical_layout: Layout::FluxBfl,
        own_prefixes: vec!["model.diffusion_model.", "diffusion_model.", "transformer."],
        foreign_prefixes: vec![
            "vae.",
            "first_stage_model.",
            "text_encoders.",
            "cond_stage_model.",
            "conditioner.",
            "clip_l.",
            "t5xxl.",
        ],
        schema: Some(schema()),
        alias: Some((Layout::FluxDiffusers, rules())),
        normalize: keep,
        rev_count: no_rev,
        unsupported: supported,
    }
}

fn schema() -> Vec<Entry> {
    use Need::*;
    let mut s = vec![
        entry("img_in", WB, Required),
        entry("txt_in", WB, Required),
        entry("time_in.in_layer", WB, Required),
        entry("time_in.out_layer", WB, Required),
        entry("vector_in.in_layer", WB, Required),
        entry("vector_in.out_layer", WB, Required),
        // FLUX.1-dev has a guidance embedder, FLUX.1-schnell does not.
        entry("guidance_in.in_layer", WB, Optional),
        entry("guidance_in.out_layer", WB, Optional),
        entry("final_layer.linear", WB, Required),
        entry("final_layer.adaLN_modulation.1", WB, Required),
    ];
    for stream in ["img", "txt"] {
        let b = format!("double_blocks.{{i}}.{stream}");
        s.push(entry(format!("{b}_mod.lin"), WB, Required));
        s.push(entry(format!("{b}_attn.qkv"), WB, Required));
        s.push(entry(format!("{b}_attn.norm.query_norm"), SCALE, Required));
        s.push(entry(format!("{b}_attn.norm.key_norm"), SCALE, Required));
        s.push(entry(format!("{b}_attn.proj"), WB, Required));
        s.push(entry(format!("{b}_mlp.0"), WB, Required));
        s.push(entry(format!("{b}_mlp.2"), WB, Required));
    }
    for m in ["linear1", "linear2", "modulation.lin"] {
        s.push(entry(format!("single_blocks.{{i}}.{m}"), WB, Required));
    }
    s.push(entry("single_blocks.{i}.norm.query_norm", SCALE, Required));
    s.push(entry("single_blocks.{i}.norm.key_norm", SCALE, Required));
    s
}

fn rules() -> Vec<Rule> {
    use Slot::*;
    let part3 = |index| Part {
        index,
        split: Split::Thirds,
    };
    let part4 = |index| Part {
        index,
        split: Split::Hidden3ThenRest,
    };
    let mut r = vec![
        rule("x_embedder", "img_in", Whole, LIN),
        rule("context_embedder", "txt_in", Whole, LIN),
        rule(
            "time_text_embed.timestep_embedder.linear_1",
            "time_in.in_layer",
            Whole,
            LIN,
        ),
        rule(
            "time_text_embed.timestep_embedder.linear_2",
            "time_in.out_layer",
            Whole,
            LIN,
        ),
        rule(
            "time_text_embed.text_embedder.linear_1",
            "vector_in.in_layer",
            Whole,
            LIN,
        ),
        rule(
            "time_text_embed.text_embedder.linear_2",
            "vector_in.out_layer",
            Whole,
            LIN,
        ),
        rule(
            "time_text_embed.guidance_embedder.linear_1",
            "guidance_in.in_layer",
            Whole,
            LIN,
        ),
        rule(
            "time_text_embed.guidance_embedder.linear_2",
            "guidance_in.out_layer",
            Whole,
            LIN,
        ),
        rule("proj_out", "final_layer.linear", Whole, LIN),
        rule(
            "norm_out.linear",
            "final_layer.adaLN_modulation.1",
            SwapHalves,
            LIN,
        ),
    ];
    let d = "transformer_blocks.{i}";
    let b = "double_blocks.{i}";
    r.extend([
        rule(
            format!("{d}.norm1.linear"),
            format!("{b}.img_mod.lin"),
            Whole,
            LIN,
        ),
        rule(
            format!("{d}.norm1_context.linear"),
            format!("{b}.txt_mod.lin"),
            Whole,
            LIN,
        ),
        rule(
            format!("{d}.attn.to_q"),
            format!("{b}.img_attn.qkv"),
            part3(0),
            LIN,
        ),
        rule(
            format!("{d}.attn.to_k"),
            format!("{b}.img_attn.qkv"),
            part3(1),
            LIN,
        ),
        rule(
            format!("{d}.attn.to_v"),
            format!("{b}.img_attn.qkv"),
            part3(2),
            LIN,
        ),
        rule(
            format!("{d}.attn.add_q_proj"),
            format!("{b}.txt_attn.qkv"),
            part3(0),
            LIN,
        ),
        rule(
            format!("{d}.attn.add_k_proj"),
            format!("{b}.txt_attn.qkv"),
            part3(1),
            LIN,
        ),
        rule(
            format!("{d}.attn.add_v_proj"),
            format!("{b}.txt_attn.qkv"),
            part3(2),
            LIN,
        ),
        rule(
            format!("{d}.attn.norm_q"),
            format!("{b}.img_attn.norm.query_norm"),
            Whole,
            NORM,
        ),
        rule(
            format!("{d}.attn.norm_k"),
            format!("{b}.img_attn.norm.key_norm"),
            Whole,
            NORM,
        ),
        rule(
            format!("{d}.attn.norm_added_q"),
            format!("{b}.txt_attn.norm.query_norm"),
            Whole,
            NORM,
        ),
        rule(
            format!("{d}.attn.norm_added_k"),
            format!("{b}.txt_attn.norm.key_norm"),
            Whole,
            NORM,
        ),
        rule(
            format!("{d}.attn.to_out.0"),
            format!("{b}.img_attn.proj"),
            Whole,
            LIN,
        ),
        rule(
            format!("{d}.attn.to_add_out"),
            format!("{b}.txt_attn.proj"),
            Whole,
            LIN,
        ),
        rule(
            format!("{d}.ff.net.0.proj"),
            format!("{b}.img_mlp.0"),
            Whole,
            LIN,
        ),
        rule(
            format!("{d}.ff.net.2"),
            format!("{b}.img_mlp.2"),
            Whole,
            LIN,
        ),
        rule(
            format!("{d}.ff_context.net.0.proj"),
            format!("{b}.txt_mlp.0"),
            Whole,
            LIN,
        ),
        rule(
            format!("{d}.ff_context.net.2"),
            format!("{b}.txt_mlp.2"),
            Whole,
            LIN,
        ),
    ]);
    let d = "single_transformer_blocks.{i}";
    let b = "single_blocks.{i}";
    r.extend([
        rule(
            format!("{d}.norm.linear"),
            format!("{b}.modulation.lin"),
            Whole,
            LIN,
        ),
        rule(
            format!("{d}.attn.to_q"),
            format!("{b}.linear1"),
            part4(0),
            LIN,
        ),
        rule(
            format!("{d}.attn.to_k"),
            format!("{b}.linear1"),
            part4(1),
            LIN,
        ),
        rule(
            format!("{d}.attn.to_v"),
            format!("{b}.linear1"),
            part4(2),
            LIN,
        ),
        rule(
            format!("{d}.proj_mlp"),
            format!("{b}.linear1"),
            part4(3),
            LIN,
        ),
        rule(
            format!("{d}.attn.norm_q"),
            format!("{b}.norm.query_norm"),
            Whole,
            NORM,
        ),
        rule(
            format!("{d}.attn.norm_k"),
            format!("{b}.norm.key_norm"),
            Whole,
            NORM,
        ),
        rule(format!("{d}.proj_out"), format!("{b}.linear2"), Whole, LIN),
    ]);
    r
}

/// FLUX architecture sizes, for generating complete key lists in tests and docs.
#[derive(Debug, Clone, Copy)]
pub struct FluxDims {
    pub hidden: u64,
    pub mlp: u64,
    pub double: u64,
    pub single: u64,
    pub in_channels: u64,
    pub context: u64,
    pub vec_in: u64,
    pub guidance: bool,
    /// Per-head width (the q/k RMS-norm scales have this many elements).
    pub head_dim: u64,
}

impl FluxDims {
    /// FLUX.1-dev: 19 double and 38 single blocks, hidden 3072, MLP 12288, 24 heads of 128.
    pub const DEV: FluxDims = FluxDims {
        hidden: 3072,
        mlp: 12288,
        double: 19,
        single: 38,
        in_channels: 64,
        context: 4096,
        vec_in: 768,
        guidance: true,
        head_dim: 128,
    };

    /// The complete BFL key list with shapes, in the order BFL's checkpoints list modules.
    pub fn bfl_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (h, m) = (self.hidden, self.mlp);
        let mut v: Vec<(String, Vec<u64>)> = Vec::new();
        let mut lin = |name: String, out: u64, inp: u64| {
            v.push((format!("{name}.weight"), vec![out, inp]));
            v.push((format!("{name}.bias"), vec![out]));
        };
        lin("img_in".into(), h, self.in_channels);
        lin("time_in.in_layer".into(), h, 256);
        lin("time_in.out_layer".into(), h, h);
        if self.guidance {
            lin("guidance_in.in_layer".into(), h, 256);
            lin("guidance_in.out_layer".into(), h, h);
        }
        lin("vector_in.in_layer".into(), h, self.vec_in);
        lin("vector_in.out_layer".into(), h, h);
        lin("txt_in".into(), h, self.context);
        for i in 0..self.double {
            for s in ["img", "txt"] {
                lin(format!("double_blocks.{i}.{s}_mod.lin"), 6 * h, h);
                lin(format!("double_blocks.{i}.{s}_attn.qkv"), 3 * h, h);
                lin(format!("double_blocks.{i}.{s}_attn.proj"), h, h);
                lin(format!("double_blocks.{i}.{s}_mlp.0"), m, h);
                lin(format!("double_blocks.{i}.{s}_mlp.2"), h, m);
            }
        }
        for i in 0..self.single {
            lin(format!("single_blocks.{i}.linear1"), 3 * h + m, h);
            lin(format!("single_blocks.{i}.linear2"), h, h + m);
            lin(format!("single_blocks.{i}.modulation.lin"), 3 * h, h);
        }
        lin("final_layer.linear".into(), self.in_channels, h);
        lin("final_layer.adaLN_modulation.1".into(), 2 * h, h);
        for i in 0..self.double {
            for s in ["img", "txt"] {
                for n in ["query_norm", "key_norm"] {
                    v.push((
                        format!("double_blocks.{i}.{s}_attn.norm.{n}.scale"),
                        vec![self.head_dim],
                    ));
                }
            }
        }
        for i in 0..self.single {
            for n in ["query_norm", "key_norm"] {
                v.push((
                    format!("single_blocks.{i}.norm.{n}.scale"),
                    vec![self.head_dim],
                ));
            }
        }
        v
    }

    /// The complete diffusers `FluxTransformer2DModel` key list with shapes.
    pub fn diffusers_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (h, m) = (self.hidden, self.mlp);
        let mut v: Vec<(String, Vec<u64>)> = Vec::new();
        let mut lin = |name: String, out: u64, inp: u64| {
            v.push((format!("{name}.weight"), vec![out, inp]));
            v.push((format!("{name}.bias"), vec![out]));
        };
        let t = "time_text_embed";
        lin(format!("{t}.timestep_embedder.linear_1"), h, 256);
        lin(format!("{t}.timestep_embedder.linear_2"), h, h);
        if self.guidance {
            lin(format!("{t}.guidance_embedder.linear_1"), h, 256);
            lin(format!("{t}.guidance_embedder.linear_2"), h, h);
        }
        lin(format!("{t}.text_embedder.linear_1"), h, self.vec_in);
        lin(format!("{t}.text_embedder.linear_2"), h, h);
        lin("context_embedder".into(), h, self.context);
        lin("x_embedder".into(), h, self.in_channels);
        for i in 0..self.double {
            let d = format!("transformer_blocks.{i}");
            lin(format!("{d}.norm1.linear"), 6 * h, h);
            lin(format!("{d}.norm1_context.linear"), 6 * h, h);
            for p in [
                "to_q",
                "to_k",
                "to_v",
                "add_q_proj",
                "add_k_proj",
                "add_v_proj",
            ] {
                lin(format!("{d}.attn.{p}"), h, h);
            }
            lin(format!("{d}.attn.to_out.0"), h, h);
            lin(format!("{d}.attn.to_add_out"), h, h);
            lin(format!("{d}.ff.net.0.proj"), m, h);
            lin(format!("{d}.ff.net.2"), h, m);
            lin(format!("{d}.ff_context.net.0.proj"), m, h);
            lin(format!("{d}.ff_context.net.2"), h, m);
        }
        for i in 0..self.single {
            let d = format!("single_transformer_blocks.{i}");
            lin(format!("{d}.norm.linear"), 3 * h, h);
            for p in ["to_q", "to_k", "to_v"] {
                lin(format!("{d}.attn.{p}"), h, h);
            }
            lin(format!("{d}.proj_mlp"), m, h);
            lin(format!("{d}.proj_out"), h, h + m);
        }
        lin("proj_out".into(), self.in_channels, h);
        lin("norm_out.linear".into(), 2 * h, h);
        for i in 0..self.double {
            for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
                v.push((
                    format!("transformer_blocks.{i}.attn.{n}.weight"),
                    vec![self.head_dim],
                ));
            }
        }
        for i in 0..self.single {
            for n in ["norm_q", "norm_k"] {
                v.push((
                    format!("single_transformer_blocks.{i}.attn.{n}.weight"),
                    vec![self.head_dim],
                ));
            }
        }
        v
    }
}
