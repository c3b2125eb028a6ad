//! Wan VAE key layouts (Wan 2.1 and Wan 2.2): the canonical original names of Wan's `wan/modules/vae.py` (also
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
//!
//! Wan 2.2's VAE (`wan2.2_vae.safetensors`, Wan2.2 `wan/modules/vae2_2.py`) nests one level
//! deeper: `encoder.downsamples.L.downsamples.M` (M < B: residual blocks, M = B: the
//! resampler, B residual blocks per level) and `decoder.upsamples.L.upsamples.M` (M ≤ B:
//! residual blocks, M = B + 1: the resampler); the rest is named as in Wan 2.1. diffusers
//! names them `encoder.down_blocks.L.resnets.M` / `encoder.down_blocks.L.downsampler` and
//! `decoder.up_blocks.L.resnets.M` / `decoder.up_blocks.L.upsampler` (singular, where Wan
//! 2.1's diffusers names say `upsamplers.0`). [`normalize`] rewrites those to the original
//! nesting with diffusers' sub-names (`encoder.down_blocks.L.downsamples.M.norm1.gamma`,
//! `decoder.up_blocks.L.upsamples.B+1.resample.1.weight`), counting B from the file's names;
//! a file is read as Wan 2.2's when it has `encoder.down_blocks.L.resnets.…` or `…sampler.…`
//! names. Without the file's names, only the encoder's residual blocks can be rewritten (a
//! lone `decoder.up_blocks.L.resnets.M` name may be either version's).

use std::collections::HashSet;

use super::spec::{entry, no_rev, rule, supported, Entry, Need, Norm, Rule, Slot, Spec, LIN, WB};
use super::{template, Layout};
use crate::family::Family;

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
        unsupported: supported,
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
    for list in [
        "encoder.downsamples.{i}",
        "decoder.upsamples.{i}",
        "encoder.downsamples.{i}.downsamples.{j}",
        "decoder.upsamples.{i}.upsamples.{j}",
    ] {
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
    // Wan 2.2's nesting, after `normalize`.
    for (alias, canonical) in [
        ("encoder.down_blocks.{i}", "encoder.downsamples.{i}"),
        ("decoder.upsamples.{i}", "decoder.upsamples.{i}"),
        (
            "encoder.down_blocks.{i}.downsamples.{j}",
            "encoder.downsamples.{i}.downsamples.{j}",
        ),
        (
            "decoder.up_blocks.{i}.upsamples.{j}",
            "decoder.upsamples.{i}.upsamples.{j}",
        ),
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

/// Whether `all` (a whole file's names) is Wan 2.2's VAE in diffusers' names.
fn is_v22(all: &HashSet<&str>) -> bool {
    all.iter().any(|n| {
        let segs: Vec<&str> = n.splitn(5, '.').collect();
        matches!(
            segs.as_slice(),
            ["encoder", "down_blocks", _, "resnets" | "downsampler", _]
                | ["decoder", "up_blocks", _, "upsampler", _]
        )
    })
}

/// Residual blocks under `{head}.resnets.M` in `all` (`head` = `decoder.up_blocks.2`).
fn resnets_under(all: &HashSet<&str>, head: &str) -> Option<u64> {
    all.iter()
        .filter_map(|n| {
            let rest = n.strip_prefix(head)?.strip_prefix(".resnets.")?;
            rest.split('.').next()?.parse::<u64>().ok()
        })
        .max()
        .map(|m| m + 1)
}

/// Wan 2.2's diffusers names → the original nesting with diffusers' sub-names (see the module
/// doc); `None` for other names and where the index needs the file's names and `all` does not
/// say (or is not Wan 2.2's).
fn normalize_v22(name: &str, all: &HashSet<&str>) -> Option<String> {
    let segs: Vec<&str> = name.splitn(4, '.').collect();
    let [part, blocks, level, rest] = segs.as_slice() else {
        return None;
    };
    level.parse::<u64>().ok()?;
    let (kind, after) = rest.split_once('.')?;
    let (inner, sampler) = match (*part, *blocks) {
        ("encoder", "down_blocks") => ("downsamples", "downsampler"),
        ("decoder", "up_blocks") => ("upsamples", "upsampler"),
        _ => return None,
    };
    if kind == "resnets" && (*part == "encoder" || is_v22(all)) {
        // A lone decoder name may be Wan 2.1's (flattened by `normalize`).
        let (m, tail) = after.split_once('.')?;
        m.parse::<u64>().ok()?;
        return Some(format!("{part}.{blocks}.{level}.{inner}.{m}.{tail}"));
    }
    if kind == sampler {
        // The resampler follows the level's residual blocks.
        let b = resnets_under(all, &format!("{part}.{blocks}.{level}"))?;
        return Some(format!("{part}.{blocks}.{level}.{inner}.{b}.{after}"));
    }
    None
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
    if let Some(n) = normalize_v22(name, all) {
        return Norm::Keep(n);
    }
    if is_v22(all) {
        return keep();
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::infos;
    use super::super::{
        canonical_name, canonical_unit_name, canonicalize, KeymapError, ModuleIndex,
    };
    use super::*;
    use crate::models::spec::vae_layout;
    use crate::models::wan_vae::{Config, WanVae};
    use crate::weights::DType;

    fn layout(cfg: &Config) -> Vec<(String, Vec<u64>)> {
        vae_layout::<WanVae>(cfg)
            .unwrap()
            .into_iter()
            .map(|(n, s)| (n, s.into_iter().map(|d| d as u64).collect()))
            .collect()
    }

    /// An original name in diffusers' spelling, written from diffusers' `AutoencoderKLWan`
    /// module tree (`mid_block.resnets/attentions`, `up_blocks.L.resnets.M`,
    /// `up_blocks.L.upsamplers.0`), independently of the rules above.
    fn to_diffusers(name: &str, nrb: usize) -> String {
        let resnet = |rest: &[&str]| -> String {
            let rest = rest.join(".");
            RESNET
                .iter()
                .find_map(|(d, o)| {
                    rest.strip_prefix(&format!("{o}."))
                        .map(|p| format!("{d}.{p}"))
                })
                .unwrap_or(rest)
        };
        let s: Vec<&str> = name.split('.').collect();
        match s.as_slice() {
            ["conv1", p] => format!("quant_conv.{p}"),
            ["conv2", p] => format!("post_quant_conv.{p}"),
            [part, "conv1", p] => format!("{part}.conv_in.{p}"),
            [part, "head", "0", p] => format!("{part}.norm_out.{p}"),
            [part, "head", "2", p] => format!("{part}.conv_out.{p}"),
            [part, "middle", "1", rest @ ..] => {
                format!("{part}.mid_block.attentions.0.{}", rest.join("."))
            }
            [part, "middle", k, rest @ ..] => format!(
                "{part}.mid_block.resnets.{}.{}",
                k.parse::<usize>().unwrap() / 2,
                resnet(rest)
            ),
            ["encoder", "downsamples", k, rest @ ..] => {
                format!("encoder.down_blocks.{k}.{}", resnet(rest))
            }
            ["decoder", "upsamples", k, rest @ ..] => {
                let (l, j) = (
                    k.parse::<usize>().unwrap() / (nrb + 2),
                    k.parse::<usize>().unwrap() % (nrb + 2),
                );
                if j == nrb + 1 {
                    format!("decoder.up_blocks.{l}.upsamplers.0.{}", rest.join("."))
                } else {
                    format!("decoder.up_blocks.{l}.resnets.{j}.{}", resnet(rest))
                }
            }
            _ => panic!("unexpected name {name}"),
        }
    }

    fn source<'a>(l: &'a super::super::CanonicalLayout, name: &str) -> &'a str {
        &l.get(name).unwrap().parts[0].source
    }

    /// The diffusers-named layout `diff` canonicalizes to exactly `orig` (names and shapes, no
    /// conversion), and `orig` itself is recognised as the original layout.
    fn assert_round_trip(orig: &[(String, Vec<u64>)], diff: &[(String, Vec<u64>)], cfg: &Config) {
        let l = canonicalize(Family::WanVae, &infos(diff, DType::BF16)).unwrap();
        assert_eq!(l.layout, Layout::WanVaeDiffusers, "{cfg:?}");
        let got: BTreeMap<String, Vec<u64>> = l
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let want: BTreeMap<String, Vec<u64>> = orig.iter().cloned().collect();
        assert_eq!(got, want, "{cfg:?}");
        assert!(l.tensors.iter().all(|t| t.is_passthrough()));
        let l = canonicalize(Family::WanVae, &infos(orig, DType::BF16)).unwrap();
        assert_eq!(l.layout, Layout::WanVaeOriginal);
        assert_eq!(l.tensors.len(), orig.len());
    }

    #[test]
    fn diffusers_maps_to_the_original_layout() {
        for cfg in [
            Config::wan21(),
            Config::tiny(),
            Config {
                num_res_blocks: 1,
                ..Config::tiny()
            },
            Config {
                num_res_blocks: 3,
                temporal_downsample: vec![true, false, true],
                ..Config::tiny()
            },
        ] {
            let orig = layout(&cfg);
            let nrb = cfg.num_res_blocks;
            let diff: Vec<(String, Vec<u64>)> = orig
                .iter()
                .map(|(n, s)| (to_diffusers(n, nrb), s.clone()))
                .collect();
            assert_round_trip(&orig, &diff, &cfg);
        }
        let orig = layout(&Config::wan21());
        let diff: Vec<(String, Vec<u64>)> = orig
            .iter()
            .map(|(n, s)| (format!("vae.{}", to_diffusers(n, 2)), s.clone()))
            .collect();
        let l = canonicalize(Family::WanVae, &infos(&diff, DType::BF16)).unwrap();
        assert_eq!(
            l.describe(),
            "wan-vae, diffusers layout (prefix `vae.`), 194 → 194 tensors"
        );
        for (canonical, diffusers) in [
            ("conv1.weight", "quant_conv.weight"),
            ("conv2.bias", "post_quant_conv.bias"),
            ("encoder.conv1.weight", "encoder.conv_in.weight"),
            (
                "encoder.downsamples.3.shortcut.weight",
                "encoder.down_blocks.3.conv_shortcut.weight",
            ),
            (
                "encoder.downsamples.5.time_conv.bias",
                "encoder.down_blocks.5.time_conv.bias",
            ),
            (
                "encoder.middle.2.residual.3.gamma",
                "encoder.mid_block.resnets.1.norm2.gamma",
            ),
            (
                "decoder.middle.1.to_qkv.weight",
                "decoder.mid_block.attentions.0.to_qkv.weight",
            ),
            (
                "decoder.upsamples.3.time_conv.weight",
                "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
            ),
            (
                "decoder.upsamples.4.shortcut.weight",
                "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "decoder.upsamples.11.resample.1.bias",
                "decoder.up_blocks.2.upsamplers.0.resample.1.bias",
            ),
            (
                "decoder.upsamples.14.residual.6.weight",
                "decoder.up_blocks.3.resnets.2.conv2.weight",
            ),
            ("decoder.head.0.gamma", "decoder.norm_out.gamma"),
        ] {
            assert_eq!(
                source(&l, canonical),
                format!("vae.{diffusers}"),
                "{canonical}"
            );
        }
        // Module lookups (LoRA files) know both spellings of the flat encoder list.
        let index = ModuleIndex::build(&l);
        for module in [
            "encoder.downsamples.3.residual.2",
            "encoder.down_blocks.3.conv1",
        ] {
            assert_eq!(
                index.dotted(module).map(|t| t.tensor.as_str()),
                Some("encoder.downsamples.3.residual.2.weight"),
                "{module}"
            );
        }
    }

    #[test]
    fn mismatches_are_named() {
        let orig = layout(&Config::tiny());
        let mut diff: Vec<(String, Vec<u64>)> = orig
            .iter()
            .map(|(n, s)| (to_diffusers(n, 2), s.clone()))
            .collect();
        // A resnet index past the level's count, and a missing output conv.
        diff.push((
            "decoder.up_blocks.1.resnets.3.norm1.gamma".into(),
            vec![8, 1, 1, 1],
        ));
        diff.retain(|(n, _)| n != "decoder.conv_out.weight");
        let e = canonicalize(Family::WanVae, &infos(&diff, DType::BF16)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, KeymapError::Mismatch { .. }), "{msg}");
        assert!(
            msg.contains("unknown: `decoder.up_blocks.1.resnets.3.norm1.gamma`"),
            "{msg}"
        );
        assert!(
            msg.contains("missing: `decoder.conv_out.weight` (canonical `decoder.head.2.weight`)"),
            "{msg}"
        );

        let mut mixed = diff.clone();
        mixed.push((
            "encoder.downsamples.0.residual.0.gamma".into(),
            vec![4, 1, 1, 1],
        ));
        let e = canonicalize(Family::WanVae, &infos(&mixed, DType::BF16)).unwrap_err();
        assert!(matches!(e, KeymapError::MixedLayouts { .. }), "{e}");
    }

    /// A Wan 2.2 original name in diffusers' spelling (`WanResidualDownBlock` /
    /// `WanResidualUpBlock`: `resnets.M`, `downsampler`, `upsampler`), independently of the
    /// rules above; the names outside the levels are spelled as in Wan 2.1.
    fn to_diffusers22(name: &str, nrb: usize) -> String {
        let s: Vec<&str> = name.split('.').collect();
        match s.as_slice() {
            [part, _, l, _, m, rest @ ..] if s[1] == s[3] => {
                let (blocks, sampler, per_level) = if *part == "encoder" {
                    ("down_blocks", "downsampler", nrb)
                } else {
                    ("up_blocks", "upsampler", nrb + 1)
                };
                if m.parse::<usize>().unwrap() == per_level {
                    format!("{part}.{blocks}.{l}.{sampler}.{}", rest.join("."))
                } else {
                    let rest = rest.join(".");
                    let rest = RESNET
                        .iter()
                        .find_map(|(d, o)| {
                            rest.strip_prefix(&format!("{o}."))
                                .map(|p| format!("{d}.{p}"))
                        })
                        .unwrap();
                    format!("{part}.{blocks}.{l}.resnets.{m}.{rest}")
                }
            }
            _ => to_diffusers(name, nrb),
        }
    }

    #[test]
    fn wan22_diffusers_maps_to_the_original_layout() {
        for cfg in [
            Config::wan22(),
            Config::tiny22(),
            Config {
                num_res_blocks: 1,
                ..Config::tiny22()
            },
            Config {
                num_res_blocks: 3,
                temporal_downsample: vec![true, false, true],
                ..Config::tiny22()
            },
        ] {
            let orig = layout(&cfg);
            let nrb = cfg.num_res_blocks;
            let diff: Vec<(String, Vec<u64>)> = orig
                .iter()
                .map(|(n, s)| (format!("vae.{}", to_diffusers22(n, nrb)), s.clone()))
                .collect();
            assert_round_trip(&orig, &diff, &cfg);
        }
        let orig = layout(&Config::wan22());
        let diff: Vec<(String, Vec<u64>)> = orig
            .iter()
            .map(|(n, s)| (to_diffusers22(n, 2), s.clone()))
            .collect();
        let l = canonicalize(Family::WanVae, &infos(&diff, DType::BF16)).unwrap();
        for (canonical, diffusers) in [
            (
                "encoder.downsamples.1.downsamples.0.shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.downsamples.2.downsamples.2.time_conv.bias",
                "encoder.down_blocks.2.downsampler.time_conv.bias",
            ),
            (
                "decoder.upsamples.0.upsamples.3.resample.1.weight",
                "decoder.up_blocks.0.upsampler.resample.1.weight",
            ),
            (
                "decoder.upsamples.3.upsamples.2.residual.3.gamma",
                "decoder.up_blocks.3.resnets.2.norm2.gamma",
            ),
            ("decoder.conv1.weight", "decoder.conv_in.weight"),
        ] {
            assert_eq!(source(&l, canonical), diffusers, "{canonical}");
        }
        // One name alone: the encoder's residual blocks are unambiguous, the resamplers need
        // the level's block count and the decoder's blocks the version.
        let f = Family::WanVae;
        assert_eq!(
            canonical_name(f, "encoder.down_blocks.1.resnets.0.conv1.weight").as_deref(),
            Some("encoder.downsamples.1.downsamples.0.residual.2.weight")
        );
        assert_eq!(
            canonical_name(f, "decoder.up_blocks.0.upsampler.resample.1.weight"),
            None
        );
        assert_eq!(
            canonical_unit_name(f, "decoder.up_blocks.0.upsampler.resample.1.weight").as_deref(),
            Some("decoder")
        );
    }

    #[test]
    fn single_names() {
        let f = Family::WanVae;
        for (raw, unit) in [
            (
                "decoder.up_blocks.2.resnets.1.conv1.weight",
                Some("decoder"),
            ),
            ("vae.encoder.down_blocks.3.conv1.weight", Some("encoder")),
            (
                "first_stage_model.decoder.upsamples.0.residual.0.gamma",
                Some("decoder"),
            ),
            ("quant_conv.weight", None),
            ("conv2.bias", None),
        ] {
            assert_eq!(canonical_unit_name(f, raw).as_deref(), unit, "{raw}");
        }
        assert_eq!(
            canonical_name(f, "encoder.down_blocks.5.time_conv.weight").as_deref(),
            Some("encoder.downsamples.5.time_conv.weight")
        );
        assert_eq!(
            canonical_name(f, "post_quant_conv.weight").as_deref(),
            Some("conv2.weight")
        );
        // The decoder's flat index needs the whole file's names.
        assert_eq!(
            canonical_name(f, "decoder.up_blocks.0.resnets.0.norm1.gamma"),
            None
        );
    }
}
