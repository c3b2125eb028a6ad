//! FLUX autoencoder key layouts: the canonical LDM names of BFL's `ae.safetensors`
//! (`decoder.up.0.block.0.conv1.weight`) and diffusers' `AutoencoderKL` names
//! (`decoder.up_blocks.3.resnets.0.conv1.weight`). diffusers numbers decoder levels from the
//! bottom (`up_blocks.i` is LDM's `up.(n-1-i)`), calls `nin_shortcut` `conv_shortcut`, and stores
//! the mid-block attention projections as linears `[c, c]` where LDM has 1×1 convs
//! `[c, c, 1, 1]` (same bytes). Follows diffusers' `convert_ldm_vae_checkpoint`
//! (`diffusers/loaders/single_file_utils.py`), read in the other direction.

use super::spec::{entry, rule, Entry, Need, Rule, Slot, LIN, WB};
use super::spec::{keep, supported, Spec};
use super::{template, Layout};
use crate::family::Family;

pub(crate) fn spec() -> Spec {
    Spec {
        family: Family::FluxVae,
        canonical_layout: Layout::VaeLdm,
        own_prefixes: vec!["first_stage_model.", "vae."],
        foreign_prefixes: vec![
            "model.diffusion_model.",
            "diffusion_model.",
            "text_encoders.",
            "cond_stage_model.",
            "conditioner.",
        ],
        schema: Some(schema()),
        alias: Some((Layout::VaeDiffusers, rules())),
        normalize: keep,
        rev_count,
        unsupported: supported,
    }
}

const RESNET: &[&str] = &["norm1", "conv1", "norm2", "conv2"];

fn resnet_entries(s: &mut Vec<Entry>, prefix: &str) {
    for m in RESNET {
        s.push(entry(format!("{prefix}.{m}"), WB, Need::Required));
    }
    // Only where the channel count changes.
    s.push(entry(format!("{prefix}.nin_shortcut"), WB, Need::Optional));
}

fn schema() -> Vec<Entry> {
    use Need::*;
    let mut s = Vec::new();
    for part in ["encoder", "decoder"] {
        s.push(entry(format!("{part}.conv_in"), WB, Required));
        s.push(entry(format!("{part}.norm_out"), WB, Required));
        s.push(entry(format!("{part}.conv_out"), WB, Required));
        resnet_entries(&mut s, &format!("{part}.mid.block_1"));
        resnet_entries(&mut s, &format!("{part}.mid.block_2"));
        for m in ["norm", "q", "k", "v", "proj_out"] {
            s.push(entry(format!("{part}.mid.attn_1.{m}"), WB, Required));
        }
    }
    resnet_entries(&mut s, "encoder.down.{i}.block.{j}");
    // The last level has no downsampler and the first no upsampler.
    s.push(entry("encoder.down.{i}.downsample.conv", WB, Optional));
    resnet_entries(&mut s, "decoder.up.{R}.block.{j}");
    s.push(entry("decoder.up.{R}.upsample.conv", WB, Optional));
    // SD-style VAEs have these; FLUX's has not.
    s.push(entry("quant_conv", WB, Optional));
    s.push(entry("post_quant_conv", WB, Optional));
    s
}

fn resnet_rules(r: &mut Vec<Rule>, alias: &str, canonical: &str) {
    for m in RESNET {
        r.push(rule(
            format!("{alias}.{m}"),
            format!("{canonical}.{m}"),
            Slot::Whole,
            LIN,
        ));
    }
    r.push(rule(
        format!("{alias}.conv_shortcut"),
        format!("{canonical}.nin_shortcut"),
        Slot::Whole,
        LIN,
    ));
}

fn rules() -> Vec<Rule> {
    use Slot::*;
    let mut r = Vec::new();
    for part in ["encoder", "decoder"] {
        // Names diffusers shares with LDM.
        r.push(rule(
            format!("{part}.conv_in"),
            format!("{part}.conv_in"),
            Whole,
            LIN,
        ));
        r.push(rule(
            format!("{part}.conv_out"),
            format!("{part}.conv_out"),
            Whole,
            LIN,
        ));
        r.push(rule(
            format!("{part}.conv_norm_out"),
            format!("{part}.norm_out"),
            Whole,
            LIN,
        ));
        resnet_rules(
            &mut r,
            &format!("{part}.mid_block.resnets.0"),
            &format!("{part}.mid.block_1"),
        );
        resnet_rules(
            &mut r,
            &format!("{part}.mid_block.resnets.1"),
            &format!("{part}.mid.block_2"),
        );
        let a = format!("{part}.mid_block.attentions.0");
        let c = format!("{part}.mid.attn_1");
        r.push(rule(
            format!("{a}.group_norm"),
            format!("{c}.norm"),
            Whole,
            LIN,
        ));
        // Current diffusers names, then the deprecated ones older files still carry.
        for (new, old, ldm) in [
            ("to_q", "query", "q"),
            ("to_k", "key", "k"),
            ("to_v", "value", "v"),
            ("to_out.0", "proj_attn", "proj_out"),
        ] {
            r.push(rule(
                format!("{a}.{new}"),
                format!("{c}.{ldm}"),
                LinearAsConv,
                LIN,
            ));
            r.push(rule(
                format!("{a}.{old}"),
                format!("{c}.{ldm}"),
                LinearAsConv,
                LIN,
            ));
        }
    }
    resnet_rules(
        &mut r,
        "encoder.down_blocks.{i}.resnets.{j}",
        "encoder.down.{i}.block.{j}",
    );
    r.push(rule(
        "encoder.down_blocks.{i}.downsamplers.0.conv",
        "encoder.down.{i}.downsample.conv",
        Whole,
        LIN,
    ));
    resnet_rules(
        &mut r,
        "decoder.up_blocks.{r}.resnets.{j}",
        "decoder.up.{R}.block.{j}",
    );
    r.push(rule(
        "decoder.up_blocks.{r}.upsamplers.0.conv",
        "decoder.up.{R}.upsample.conv",
        Whole,
        LIN,
    ));
    r.push(rule("quant_conv", "quant_conv", Whole, LIN));
    r.push(rule("post_quant_conv", "post_quant_conv", Whole, LIN));
    r
}

/// Number of decoder levels, from either layout's names.
fn rev_count(names: &[&str]) -> Option<u64> {
    let mut n: Option<u64> = None;
    for name in names {
        for tpl in ["decoder.up_blocks.{r}", "decoder.up.{R}"] {
            let segs: Vec<&str> = name.splitn(4, '.').collect();
            if segs.len() < 3 {
                continue;
            }
            let head = segs[..3].join(".");
            if let Some(c) = template::matches(tpl, &head) {
                let v = c.get("{r}").or(c.get("{R}")).unwrap_or(0);
                n = Some(n.map_or(v + 1, |m| m.max(v + 1)));
            }
        }
    }
    n
}

/// FLUX VAE sizes, for generating complete key lists in tests.
#[derive(Debug, Clone)]
pub struct VaeDims {
    pub ch: u64,
    pub ch_mult: Vec<u64>,
    pub num_res_blocks: u64,
    pub in_channels: u64,
    pub z_channels: u64,
}

impl VaeDims {
    /// BFL's FLUX autoencoder: 128 channels × (1, 2, 4, 4), 2 res blocks, 16 latent channels.
    pub fn flux() -> Self {
        VaeDims {
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            in_channels: 3,
            z_channels: 16,
        }
    }

    /// The complete LDM key list with shapes (as in `ae.safetensors`).
    pub fn ldm_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let mut v = Vec::new();
        let conv = |v: &mut Vec<(String, Vec<u64>)>, n: String, o: u64, i: u64, k: u64| {
            v.push((format!("{n}.weight"), vec![o, i, k, k]));
            v.push((format!("{n}.bias"), vec![o]));
        };
        let norm = |v: &mut Vec<(String, Vec<u64>)>, n: String, c: u64| {
            v.push((format!("{n}.weight"), vec![c]));
            v.push((format!("{n}.bias"), vec![c]));
        };
        let resnet = |v: &mut Vec<(String, Vec<u64>)>, p: String, i: u64, o: u64| {
            norm(v, format!("{p}.norm1"), i);
            conv(v, format!("{p}.conv1"), o, i, 3);
            norm(v, format!("{p}.norm2"), o);
            conv(v, format!("{p}.conv2"), o, o, 3);
            if i != o {
                conv(v, format!("{p}.nin_shortcut"), o, i, 1);
            }
        };
        let mid = |v: &mut Vec<(String, Vec<u64>)>, p: &str, c: u64| {
            resnet(v, format!("{p}.mid.block_1"), c, c);
            norm(v, format!("{p}.mid.attn_1.norm"), c);
            for m in ["q", "k", "v", "proj_out"] {
                conv(v, format!("{p}.mid.attn_1.{m}"), c, c, 1);
            }
            resnet(v, format!("{p}.mid.block_2"), c, c);
        };
        let n = self.ch_mult.len() as u64;
        let chans: Vec<u64> = self.ch_mult.iter().map(|m| m * self.ch).collect();
        conv(
            &mut v,
            "encoder.conv_in".into(),
            self.ch,
            self.in_channels,
            3,
        );
        let mut c = self.ch;
        for (i, &co) in chans.iter().enumerate() {
            for j in 0..self.num_res_blocks {
                resnet(&mut v, format!("encoder.down.{i}.block.{j}"), c, co);
                c = co;
            }
            if (i as u64) < n - 1 {
                conv(&mut v, format!("encoder.down.{i}.downsample.conv"), c, c, 3);
            }
        }
        mid(&mut v, "encoder", c);
        norm(&mut v, "encoder.norm_out".into(), c);
        conv(&mut v, "encoder.conv_out".into(), 2 * self.z_channels, c, 3);
        let mut c = chans[chans.len() - 1];
        conv(&mut v, "decoder.conv_in".into(), c, self.z_channels, 3);
        mid(&mut v, "decoder", c);
        for i in (0..n).rev() {
            let co = chans[i as usize];
            for j in 0..self.num_res_blocks + 1 {
                resnet(&mut v, format!("decoder.up.{i}.block.{j}"), c, co);
                c = co;
            }
            if i > 0 {
                conv(&mut v, format!("decoder.up.{i}.upsample.conv"), c, c, 3);
            }
        }
        norm(&mut v, "decoder.norm_out".into(), c);
        conv(&mut v, "decoder.conv_out".into(), self.in_channels, c, 3);
        v
    }
}
