//! Wan 2.1 transformer key layouts: the canonical original names of the Wan team's
//! `wan/modules/model.py` (`blocks.N.self_attn.q`, the layout of ComfyUI's
//! `wan2.1_t2v_*.safetensors`, fp8 and scaled-fp8 files and city96's Wan GGUFs) and the
//! diffusers `WanTransformer3DModel` names (`blocks.N.attn1.to_q`).
//!
//! Every diffusers tensor is one original tensor under another name, with the same bytes: no
//! fused or split tensors and no transforms. The renames: `condition_embedder.*` are the
//! `text_embedding`/`time_embedding`/`time_projection` MLPs, `attn1`/`attn2` are
//! `self_attn`/`cross_attn` with `to_q`/`to_k`/`to_v`/`to_out.0` for `q`/`k`/`v`/`o`, the
//! blocks' `scale_shift_table` [1, 6, dim] is `modulation` and the top-level one [1, 2, dim]
//! `head.modulation` (the same (shift, scale, gate, …) order in both), `proj_out` is
//! `head.head`, `ffn.net.0.proj`/`ffn.net.2` are `ffn.0`/`ffn.2`, and diffusers' `norm2` (the
//! affine LayerNorm before the cross-attention) is the original `norm3` — the original
//! `norm1`/`norm2` and diffusers' `norm1`/`norm3` have no parameters.
//!
//! Image-to-video tensors (`img_emb.*`, `cross_attn.k_img`, …, diffusers'
//! `condition_embedder.image_embedder.*`, `attn2.add_k_proj`, …) are mapped too, so that the
//! model code can name them when it refuses such a checkpoint.
//!
//! The correspondence follows diffusers' own converter
//! (`diffusers/loaders/single_file_utils.py`, `convert_wan_transformer_to_diffusers`), read in
//! the other direction; `tools/parity_wan.py` checks its inverse against it.

use super::spec::{entry, rule, Entry, Need, Rule, Slot, LIN, W, WB};
use super::spec::{keep, no_rev, supported, Spec};
use super::Layout;
use crate::family::Family;

pub(crate) fn spec() -> Spec {
    Spec {
        family: Family::Wan,
        canonical_layout: Layout::WanOriginal,
        own_prefixes: vec!["model.diffusion_model.", "diffusion_model.", "transformer."],
        foreign_prefixes: vec![
            "vae.",
            "first_stage_model.",
            "text_encoders.",
            "cond_stage_model.",
            "conditioner.",
            "clip_vision.",
        ],
        schema: Some(schema()),
        alias: Some((Layout::WanDiffusers, rules())),
        normalize: keep,
        rev_count: no_rev,
        unsupported: supported,
    }
}

/// The modulation tables are bare parameters, not modules' `weight`s.
const MODULATION: &[&str] = &["modulation"];
const EMB_POS: &[&str] = &["emb_pos"];
const ATTN: [&str; 4] = ["q", "k", "v", "o"];

fn schema() -> Vec<Entry> {
    use Need::*;
    let mut s = vec![
        entry("patch_embedding", WB, Required),
        entry("text_embedding.0", WB, Required),
        entry("text_embedding.2", WB, Required),
        entry("time_embedding.0", WB, Required),
        entry("time_embedding.2", WB, Required),
        entry("time_projection.1", WB, Required),
        entry("head.head", WB, Required),
        entry("head", MODULATION, Required),
        // Image-to-video (I2V, FLF2V): CLIP image-embedding projection.
        entry("img_emb.proj.0", WB, Optional),
        entry("img_emb.proj.1", WB, Optional),
        entry("img_emb.proj.3", WB, Optional),
        entry("img_emb.proj.4", WB, Optional),
        entry("img_emb", EMB_POS, Optional),
    ];
    let b = "blocks.{i}";
    for a in ["self_attn", "cross_attn"] {
        for m in ATTN {
            s.push(entry(format!("{b}.{a}.{m}"), WB, Required));
        }
        // Absent in models built with `qk_norm=False` (no official one).
        s.push(entry(format!("{b}.{a}.norm_q"), W, Optional));
        s.push(entry(format!("{b}.{a}.norm_k"), W, Optional));
    }
    // Absent with `cross_attn_norm=False` (no official one).
    s.push(entry(format!("{b}.norm3"), WB, Optional));
    s.push(entry(format!("{b}.ffn.0"), WB, Required));
    s.push(entry(format!("{b}.ffn.2"), WB, Required));
    s.push(entry(b, MODULATION, Required));
    s.push(entry(format!("{b}.cross_attn.k_img"), WB, Optional));
    s.push(entry(format!("{b}.cross_attn.v_img"), WB, Optional));
    s.push(entry(format!("{b}.cross_attn.norm_k_img"), W, Optional));
    s
}

fn rules() -> Vec<Rule> {
    use Slot::Whole;
    let c = "condition_embedder";
    let mut r = vec![
        // The one name both layouts share.
        rule("patch_embedding", "patch_embedding", Whole, LIN),
        rule(
            format!("{c}.text_embedder.linear_1"),
            "text_embedding.0",
            Whole,
            LIN,
        ),
        rule(
            format!("{c}.text_embedder.linear_2"),
            "text_embedding.2",
            Whole,
            LIN,
        ),
        rule(
            format!("{c}.time_embedder.linear_1"),
            "time_embedding.0",
            Whole,
            LIN,
        ),
        rule(
            format!("{c}.time_embedder.linear_2"),
            "time_embedding.2",
            Whole,
            LIN,
        ),
        rule(format!("{c}.time_proj"), "time_projection.1", Whole, LIN),
        rule("proj_out", "head.head", Whole, LIN),
        // The top-level `scale_shift_table` has no module part.
        rule("", "head", Whole, &[("scale_shift_table", "modulation")]),
        rule(
            format!("{c}.image_embedder.norm1"),
            "img_emb.proj.0",
            Whole,
            LIN,
        ),
        rule(
            format!("{c}.image_embedder.ff.net.0.proj"),
            "img_emb.proj.1",
            Whole,
            LIN,
        ),
        rule(
            format!("{c}.image_embedder.ff.net.2"),
            "img_emb.proj.3",
            Whole,
            LIN,
        ),
        rule(
            format!("{c}.image_embedder.norm2"),
            "img_emb.proj.4",
            Whole,
            LIN,
        ),
        rule(
            format!("{c}.image_embedder"),
            "img_emb",
            Whole,
            &[("pos_embed", "emb_pos")],
        ),
    ];
    let b = "blocks.{i}";
    for (alias, canonical) in [("attn1", "self_attn"), ("attn2", "cross_attn")] {
        for (a, m) in ["to_q", "to_k", "to_v", "to_out.0"].into_iter().zip(ATTN) {
            r.push(rule(
                format!("{b}.{alias}.{a}"),
                format!("{b}.{canonical}.{m}"),
                Whole,
                LIN,
            ));
        }
        for n in ["norm_q", "norm_k"] {
            r.push(rule(
                format!("{b}.{alias}.{n}"),
                format!("{b}.{canonical}.{n}"),
                Whole,
                LIN,
            ));
        }
    }
    for (a, m) in [
        ("add_k_proj", "k_img"),
        ("add_v_proj", "v_img"),
        ("norm_added_k", "norm_k_img"),
    ] {
        r.push(rule(
            format!("{b}.attn2.{a}"),
            format!("{b}.cross_attn.{m}"),
            Whole,
            LIN,
        ));
    }
    r.extend([
        rule(format!("{b}.norm2"), format!("{b}.norm3"), Whole, LIN),
        rule(
            format!("{b}.ffn.net.0.proj"),
            format!("{b}.ffn.0"),
            Whole,
            LIN,
        ),
        rule(format!("{b}.ffn.net.2"), format!("{b}.ffn.2"), Whole, LIN),
        rule(b, b, Whole, &[("scale_shift_table", "modulation")]),
    ]);
    r
}

/// Wan 2.1 text-to-video sizes, for generating complete key lists in tests and docs.
#[derive(Debug, Clone, Copy)]
pub struct WanDims {
    pub dim: u64,
    pub ffn: u64,
    pub layers: u64,
    pub in_dim: u64,
    pub out_dim: u64,
    pub text_dim: u64,
    pub freq_dim: u64,
}

impl WanDims {
    /// Wan 2.1 T2V 14B: 40 blocks of width 5120, FFN 13824.
    pub const T2V_14B: WanDims = WanDims {
        dim: 5120,
        ffn: 13824,
        layers: 40,
        in_dim: 16,
        out_dim: 16,
        text_dim: 4096,
        freq_dim: 256,
    };
    /// Wan 2.1 T2V 1.3B: 30 blocks of width 1536, FFN 8960.
    pub const T2V_1_3B: WanDims = WanDims {
        dim: 1536,
        ffn: 8960,
        layers: 30,
        ..Self::T2V_14B
    };
    /// Wan 2.2 TI2V-5B: 30 blocks of width 3072, FFN 14336, the Wan 2.2 VAE's 48 latent
    /// channels in and out.
    pub const TI2V_5B: WanDims = WanDims {
        dim: 3072,
        ffn: 14336,
        layers: 30,
        in_dim: 48,
        out_dim: 48,
        ..Self::T2V_14B
    };

    /// The complete original key list with shapes (patch (1, 2, 2)).
    pub fn original_tensors(&self) -> Vec<(String, Vec<u64>)> {
        self.tensors(false)
    }

    /// The complete diffusers `WanTransformer3DModel` key list with shapes.
    pub fn diffusers_tensors(&self) -> Vec<(String, Vec<u64>)> {
        self.tensors(true)
    }

    fn tensors(&self, diffusers: bool) -> Vec<(String, Vec<u64>)> {
        let d = self.dim;
        let n = |orig: &str, diff: &str| if diffusers { diff } else { orig }.to_string();
        let mut v: Vec<(String, Vec<u64>)> = Vec::new();
        let mut lin = |name: String, out: u64, inp: u64| {
            v.push((format!("{name}.weight"), vec![out, inp]));
            v.push((format!("{name}.bias"), vec![out]));
        };
        let c = "condition_embedder";
        lin(
            n("text_embedding.0", &format!("{c}.text_embedder.linear_1")),
            d,
            self.text_dim,
        );
        lin(
            n("text_embedding.2", &format!("{c}.text_embedder.linear_2")),
            d,
            d,
        );
        lin(
            n("time_embedding.0", &format!("{c}.time_embedder.linear_1")),
            d,
            self.freq_dim,
        );
        lin(
            n("time_embedding.2", &format!("{c}.time_embedder.linear_2")),
            d,
            d,
        );
        lin(n("time_projection.1", &format!("{c}.time_proj")), 6 * d, d);
        lin(n("head.head", "proj_out"), 4 * self.out_dim, d);
        for i in 0..self.layers {
            let b = format!("blocks.{i}");
            for (orig, diff) in [("self_attn", "attn1"), ("cross_attn", "attn2")] {
                let a = format!("{b}.{}", n(orig, diff));
                for (m, dm) in [
                    ("q", "to_q"),
                    ("k", "to_k"),
                    ("v", "to_v"),
                    ("o", "to_out.0"),
                ] {
                    lin(format!("{a}.{}", n(m, dm)), d, d);
                }
            }
            lin(format!("{b}.{}", n("ffn.0", "ffn.net.0.proj")), self.ffn, d);
            lin(format!("{b}.{}", n("ffn.2", "ffn.net.2")), d, self.ffn);
        }
        v.push((
            "patch_embedding.weight".into(),
            vec![d, self.in_dim, 1, 2, 2],
        ));
        v.push(("patch_embedding.bias".into(), vec![d]));
        v.push((n("head.modulation", "scale_shift_table"), vec![1, 2, d]));
        for i in 0..self.layers {
            let b = format!("blocks.{i}");
            for (orig, diff) in [("self_attn", "attn1"), ("cross_attn", "attn2")] {
                for norm in ["norm_q", "norm_k"] {
                    v.push((format!("{b}.{}.{norm}.weight", n(orig, diff)), vec![d]));
                }
            }
            let norm = n("norm3", "norm2");
            v.push((format!("{b}.{norm}.weight"), vec![d]));
            v.push((format!("{b}.{norm}.bias"), vec![d]));
            v.push((
                format!("{b}.{}", n("modulation", "scale_shift_table")),
                vec![1, 6, d],
            ));
        }
        v
    }
}
