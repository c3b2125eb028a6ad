//! Wan 2.1 VAE key layouts: the canonical original names of Wan's `wan/modules/vae.py` (also
//! ComfyUI's `wan_2.1_vae.safetensors`: `encoder.downsamples.3.residual.2.weight`, `conv1`,
//! `decoder.upsamples.4.shortcut.weight`) and diffusers' `AutoencoderKLWan` names
//! (`encoder.down_blocks.3.conv1.weight`, `quant_conv`, `decoder.up_blocks.1.resnets.0.
//! conv_shortcut.weight`).
//!
//! diffusers keeps the encoder's flat list (`down_blocks.N` is `downsamples.N`) but groups the
//! decoder's flat `upsamples.N` into levels: `up_blocks.L.resnets.M` is
//! `upsamples.(L·P + M)` and `up_blocks.L.upsamplers.0` is `upsamples.(L·P + P − 1)`, with
//! `P` = residual blocks per level + 1 (diffusers' `convert_wan_vae_to_diffusers`,
//! `diffusers/loaders/single_file_utils.py`, hard-codes P = 4, read in the other direction).
//! That index arithmetic is not a template, so [`normalize`] first rewrites a diffusers decoder
//! name to its flat index, keeping diffusers' sub-names (`decoder.upsamples.6.norm1.gamma`),
//! counting P from the file's own names; the rules then rename the sub-modules like the
//! encoder's. Residual-block names: `norm1` → `residual.0`, `conv1` → `residual.2`, `norm2` →
//! `residual.3`, `conv2` → `residual.6`, `conv_shortcut` → `shortcut`.

use std::collections::HashSet;

use super::spec::{entry, no_rev, rule, Entry, Need, Norm, Rule, Slot, Spec, LIN, WB};
use super::{template, Layout};
use crate::family::Family;
use crate::weights::TensorInfo;

pub(crate) fn spec() -> Spec {
    Spec {
        family: Family::WanVae,
        canonical_layout: Layout::WanVaeOriginal,
        own_prefixes: vec!["first_stage_model.", "vae."],
        foreign_prefixes: vec![
            "model.diffusion_model.",
            "diffusion_model.",
            "text_encoders.",
            "cond_stage_model.",
            "conditioner.",
        ],
        schema: Some(schema()),
        alias: Some((Layout::WanVaeDiffusers, rules())),
        normalize,
        rev_count: no_rev,
        unsupported,
    }
}

const GAMMA: &[&str] = &["gamma"];
const GAMMA_P: &[(&str, &str)] = &[("gamma", "gamma")];

/// Residual block: (module, params) of its `residual` sequence.
const RESIDUAL: &[(&str, &[&str])] = &[
    ("residual.0", GAMMA),
    ("residual.2", WB),
    ("residual.3", GAMMA),
    ("residual.6", WB),
];

/// diffusers' residual-block sub-names → the original ones.
const RESNET: &[(&str, &str)] = &[
    ("norm1", "residual.0"),
    ("conv1", "residual.2"),
    ("norm2", "residual.3"),
    ("conv2", "residual.6"),
    ("conv_shortcut", "shortcut"),
];

fn residual_entries(s: &mut Vec<Entry>, prefix: &str, need: Need) {
    for (m, params) in RESIDUAL {
        s.push(entry(format!("{prefix}.{m}"), params, need));
    }
    // Only where the channel count changes.
    s.push(entry(format!("{prefix}.shortcut"), WB, Need::Optional));
}

fn schema() -> Vec<Entry> {
    use Need::*;
    let mut s = vec![entry("conv1", WB, Required), entry("conv2", WB, Required)];
    for part in ["encoder", "decoder"] {
        s.push(entry(format!("{part}.conv1"), WB, Required));
        residual_entries(&mut s, &format!("{part}.middle.0"), Required);
        s.push(entry(format!("{part}.middle.1.norm"), GAMMA, Required));
        s.push(entry(format!("{part}.middle.1.to_qkv"), WB, Required));
        s.push(entry(format!("{part}.middle.1.proj"), WB, Required));
        residual_entries(&mut s, &format!("{part}.middle.2"), Required);
        s.push(entry(format!("{part}.head.0"), GAMMA, Required));
        s.push(entry(format!("{part}.head.2"), WB, Required));
    }
    // Flat lists of residual blocks and resamplers: which index is which depends on the
    // config, so none is required here (the model constructors name what is missing).
    for list in ["encoder.downsamples.{i}", "decoder.upsamples.{i}"] {
        residual_entries(&mut s, list, Optional);
        s.push(entry(format!("{list}.resample.1"), WB, Optional));
        s.push(entry(format!("{list}.time_conv"), WB, Optional));
    }
    s
}

fn resnet_rules(r: &mut Vec<Rule>, alias: &str, canonical: &str) {
    for (a, c) in RESNET {
        let params = if a.starts_with("norm") { GAMMA_P } else { LIN };
        r.push(rule(
            format!("{alias}.{a}"),
            format!("{canonical}.{c}"),
            Slot::Whole,
            params,
        ));
    }
}

fn rules() -> Vec<Rule> {
    use Slot::Whole;
    let mut r = vec![
        rule("quant_conv", "conv1", Whole, LIN),
        rule("post_quant_conv", "conv2", Whole, LIN),
    ];
    for part in ["encoder", "decoder"] {
        r.push(rule(
            format!("{part}.conv_in"),
            format!("{part}.conv1"),
            Whole,
            LIN,
        ));
        resnet_rules(
            &mut r,
            &format!("{part}.mid_block.resnets.0"),
            &format!("{part}.middle.0"),
        );
        resnet_rules(
            &mut r,
            &format!("{part}.mid_block.resnets.1"),
            &format!("{part}.middle.2"),
        );
        let a = format!("{part}.mid_block.attentions.0");
        let c = format!("{part}.middle.1");
        r.push(rule(
            format!("{a}.norm"),
            format!("{c}.norm"),
            Whole,
            GAMMA_P,
        ));
        r.push(rule(
            format!("{a}.to_qkv"),
            format!("{c}.to_qkv"),
            Whole,
            LIN,
        ));
        r.push(rule(format!("{a}.proj"), format!("{c}.proj"), Whole, LIN));
        r.push(rule(
            format!("{part}.norm_out"),
            format!("{part}.head.0"),
            Whole,
            GAMMA_P,
        ));
        r.push(rule(
            format!("{part}.conv_out"),
            format!("{part}.head.2"),
            Whole,
            LIN,
        ));
    }
    // The encoder's list keeps its flat indices; the decoder's is flattened by `normalize`.
    for (alias, canonical) in [
        ("encoder.down_blocks.{i}", "encoder.downsamples.{i}"),
        ("decoder.upsamples.{i}", "decoder.upsamples.{i}"),
    ] {
        resnet_rules(&mut r, alias, canonical);
        for m in ["resample.1", "time_conv"] {
            r.push(rule(
                format!("{alias}.{m}"),
                format!("{canonical}.{m}"),
                Whole,
                LIN,
            ));
        }
    }
    r
}

/// Residual blocks per decoder level in diffusers' names (`decoder.up_blocks.0.resnets.M`).
fn decoder_resnets(all: &HashSet<&str>) -> Option<u64> {
    all.iter()
        .filter_map(|n| {
            let segs: Vec<&str> = n.splitn(6, '.').collect();
            let head = segs.get(..5)?.join(".");
            template::matches("decoder.up_blocks.0.resnets.{i}", &head)?.get("{i}")
        })
        .max()
        .map(|m| m + 1)
}

/// diffusers' `decoder.up_blocks.L.resnets.M.…` / `decoder.up_blocks.L.upsamplers.0.…` →
/// `decoder.upsamples.K.…` with the original flat index K (see the module doc); other names
/// unchanged. Without the file's names (a single-name lookup) the index is unknown and the
/// name stays as it is.
pub(crate) fn normalize(name: &str, all: &HashSet<&str>) -> Norm {
    let keep = || Norm::Keep(name.to_string());
    let Some(rest) = name.strip_prefix("decoder.up_blocks.") else {
        return keep();
    };
    let segs: Vec<&str> = rest.splitn(4, '.').collect();
    let [level, kind, index, tail] = segs.as_slice() else {
        return keep();
    };
    let (Ok(level), Ok(index)) = (level.parse::<u64>(), index.parse::<u64>()) else {
        return keep();
    };
    let Some(resnets) = decoder_resnets(all) else {
        return keep();
    };
    let per_level = resnets + 1;
    let flat = match *kind {
        "resnets" if index < resnets => level * per_level + index,
        "upsamplers" if index == 0 => level * per_level + resnets,
        _ => return keep(),
    };
    Norm::Keep(format!("decoder.upsamples.{flat}.{tail}"))
}

/// Refuses the Wan 2.2 VAE (48 latent channels), whose structure differs.
fn unsupported(tensors: &[(&str, &TensorInfo)]) -> Option<String> {
    tensors.iter().find_map(|(name, t)| {
        let z = match *name {
            "conv2.weight" | "post_quant_conv.weight" => t.shape.first(),
            "decoder.conv1.weight" | "decoder.conv_in.weight" => t.shape.get(1),
            _ => None,
        }?;
        (*z == 48).then(|| {
            format!("the Wan 2.2 VAE is not supported yet (`{}` has 48 latent channels); use the Wan 2.1 VAE (wan_2.1_vae.safetensors), which Wan 2.2's 14B models also use", t.name)
        })
    })
}
