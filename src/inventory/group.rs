//! Tensor names → placement units, in execution order; family detection from key names.
//!
//! Everything works on canonical names ([`canonical_name`]: checkpoint prefixes such as
//! `model.diffusion_model.` stripped). This is the one call site to swap for the full key
//! mapping (`weights::keymap`, diffusers layouts included) when it lands.
//!
//! Grouping: the family's own rule ([`Family::unit_of`]) when the family is known and its rule
//! finds blocks; otherwise prefix grouping: a tensor belongs to the unit named by its path up
//! to the first numeric component (`layers.3.mlp.fc1.weight` → `layers.3`). Order: the
//! family's block groups in execution order (FLUX: `double_blocks` then `single_blocks`),
//! other groups alphabetically, and blocks within a group by their number (numeric, so
//! `blocks.10` follows `blocks.9`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;

use super::{Unit, UnitKind, RESIDENT};
use crate::family::Family;
use crate::weights::TensorInfo;

/// How units were formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// The family's block naming ([`Family::unit_of`]).
    Family,
    /// The first numeric path component, for unknown layouts.
    Prefix,
}

/// Checkpoint prefixes stripped when the family is unknown (or its mapping does not know a
/// name), longest first.
const PREFIXES: &[&str] = &[
    "model.diffusion_model.",
    "diffusion_model.",
    "first_stage_model.",
    "text_encoders.t5xxl.transformer.",
    "text_encoders.clip_l.transformer.",
    "cond_stage_model.transformer.",
    "model.",
];

/// A tensor's canonical name: the family's key mapping ([`crate::weights::keymap`]: prefixes
/// stripped, diffusers layouts mapped to BFL; parts of fused tensors give the fused name) when
/// the family is known and the mapping knows the name, else `raw` without its checkpoint
/// prefix.
pub fn canonical_name<'a>(family: Option<Family>, raw: &'a str) -> Cow<'a, str> {
    if let Some(c) = family.and_then(|f| crate::weights::keymap::canonical_name(f, raw)) {
        return Cow::Owned(c);
    }
    for p in PREFIXES {
        if let Some(rest) = raw.strip_prefix(p) {
            if !rest.is_empty() {
                return Cow::Borrowed(rest);
            }
        }
    }
    Cow::Borrowed(raw)
}

/// The family a set of tensors belongs to, with the key that showed it; `None` if no rule
/// matches ([`crate::weights::detect`](mod@crate::weights::detect), shared with `mgpu inspect`).
pub fn detect_family(tensors: &[TensorInfo]) -> Option<(Family, String)> {
    crate::weights::detect(tensors).map(|d| (d.family, d.key))
}

/// The unit a canonical name belongs to under prefix grouping.
fn prefix_unit(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let i = (1..parts.len().saturating_sub(1)).find(|&i| parts[i].parse::<u32>().is_ok())?;
    Some(parts[..=i].join("."))
}

/// Prefix grouping for every tensor. Blocks are repeated structures: a group with a single
/// index (`final_layer.adaLN_modulation.1`) is not a block and stays resident.
fn prefix_units(canon: &[Cow<str>]) -> Vec<Option<String>> {
    let units: Vec<Option<String>> = canon.iter().map(|n| prefix_unit(n)).collect();
    let mut members: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for u in units.iter().flatten() {
        let (g, _) = u.rsplit_once('.').unwrap_or((u, ""));
        members.entry(g).or_default().insert(u);
    }
    let keep = |u: &String| {
        members
            .get(u.rsplit_once('.').map_or(u.as_str(), |(g, _)| g))
            .is_some_and(|m| m.len() > 1)
    };
    units.iter().map(|u| u.clone().filter(keep)).collect()
}

/// Groups tensors into units in execution order.
pub fn group(family: Option<Family>, tensors: &[TensorInfo]) -> (Vec<Unit>, Grouping) {
    let canon: Vec<Cow<str>> = tensors
        .iter()
        .map(|t| canonical_name(family, &t.name))
        .collect();
    let by_family: Option<Vec<Option<String>>> = family.and_then(|f| {
        let units: Vec<Option<String>> = canon.iter().map(|n| f.unit_of(n)).collect();
        units.iter().any(Option::is_some).then_some(units)
    });
    let (assign, grouping) = match by_family {
        Some(u) => (u, Grouping::Family),
        None => (prefix_units(&canon), Grouping::Prefix),
    };
    let mut blocks: BTreeMap<(usize, String, u64, String), Vec<usize>> = BTreeMap::new();
    let mut resident = Vec::new();
    for (i, unit) in assign.into_iter().enumerate() {
        match unit {
            None => resident.push(i),
            Some(name) => {
                let (group, index) = split_index(&name);
                let rank = group_rank(family, group);
                blocks
                    .entry((rank, group.to_string(), index, name.clone()))
                    .or_default()
                    .push(i);
            }
        }
    }
    let mut units = Vec::with_capacity(blocks.len() + 1);
    let mut push = |name: String, kind, idx: Vec<usize>| {
        let order = units.len();
        units.push(Unit {
            name,
            kind,
            bytes: idx.iter().map(|&i| tensors[i].len).sum(),
            params: idx.iter().map(|&i| tensors[i].numel()).sum(),
            tensors: idx,
            order,
        });
    };
    if !resident.is_empty() {
        push(RESIDENT.to_string(), UnitKind::Resident, resident);
    }
    for ((_, _, _, name), idx) in blocks {
        push(name, UnitKind::Block, idx);
    }
    (units, grouping)
}

/// `double_blocks.12` → (`double_blocks`, 12); names without a trailing number → (name, 0).
fn split_index(name: &str) -> (&str, u64) {
    match name.rsplit_once('.') {
        Some((g, i)) => match i.parse::<u64>() {
            Ok(n) => (g, n),
            Err(_) => (name, 0),
        },
        None => (name, 0),
    }
}

/// Execution rank of a block group: known groups of the family first, in their order.
fn group_rank(family: Option<Family>, group: &str) -> usize {
    let known: &[&str] = match family {
        Some(Family::Flux) => &["double_blocks", "single_blocks"],
        Some(Family::FluxVae | Family::WanVae) => &["encoder", "decoder"],
        _ => &[],
    };
    known
        .iter()
        .position(|g| *g == group)
        .unwrap_or(known.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;
    use crate::weights::DType;

    fn t(name: &str, shape: &[u64]) -> (String, DType, Vec<u64>) {
        (name.to_string(), DType::BF16, shape.to_vec())
    }

    fn names(inv: &Inventory) -> Vec<&str> {
        inv.units.iter().map(|u| u.name.as_str()).collect()
    }

    #[test]
    fn canonical_names() {
        let cases = [
            (
                "model.diffusion_model.double_blocks.0.img_mod.lin.weight",
                "double_blocks.0.img_mod.lin.weight",
            ),
            ("diffusion_model.img_in.weight", "img_in.weight"),
            (
                "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight",
                "encoder.block.0.layer.0.SelfAttention.q.weight",
            ),
            (
                "text_model.encoder.layers.0.mlp.fc1.weight",
                "text_model.encoder.layers.0.mlp.fc1.weight",
            ),
            (
                "first_stage_model.decoder.conv_in.weight",
                "decoder.conv_in.weight",
            ),
            ("model.layers.3.mlp.weight", "layers.3.mlp.weight"),
            ("model.", "model."),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_name(None, raw), want, "{raw}");
        }
    }

    #[test]
    fn detects_families() {
        type Case = (Vec<(String, DType, Vec<u64>)>, Option<Family>);
        let cases: Vec<Case> = vec![
            (
                vec![t("double_blocks.0.img_attn.qkv.weight", &[9216, 3072])],
                Some(Family::Flux),
            ),
            (
                vec![t(
                    "encoder.block.0.layer.0.SelfAttention.q.weight",
                    &[4096, 4096],
                )],
                Some(Family::T5),
            ),
            (
                vec![
                    t(
                        "encoder.block.0.layer.0.SelfAttention.q.weight",
                        &[4096, 4096],
                    ),
                    t(
                        "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
                        &[32, 64],
                    ),
                ],
                Some(Family::UmT5),
            ),
            (
                vec![t(
                    "text_model.encoder.layers.0.self_attn.q_proj.weight",
                    &[768, 768],
                )],
                Some(Family::ClipL),
            ),
            (
                vec![t(
                    "text_model.encoder.layers.0.self_attn.q_proj.weight",
                    &[1280, 1280],
                )],
                None,
            ),
            (
                vec![
                    t("decoder.up.0.block.0.conv1.weight", &[128, 128, 3, 3]),
                    t("decoder.conv_in.weight", &[512, 16, 3, 3]),
                ],
                Some(Family::FluxVae),
            ),
            (
                vec![
                    t("decoder.up.0.block.0.conv1.weight", &[128, 128, 3, 3]),
                    t("decoder.conv_in.weight", &[512, 4, 3, 3]),
                ],
                None,
            ),
            (
                vec![
                    t("blocks.0.self_attn.q.weight", &[8, 8]),
                    t("blocks.0.cross_attn.q.weight", &[8, 8]),
                ],
                Some(Family::Wan),
            ),
            (
                vec![
                    t("decoder.upsamples.0.residual.0.gamma", &[8]),
                    t("decoder.conv1.weight", &[384, 16, 3, 3, 3]),
                ],
                Some(Family::WanVae),
            ),
            (vec![t("layers.0.w", &[8])], None),
        ];
        for (tensors, want) in cases {
            let inv = Inventory::synthetic(None, &tensors);
            assert_eq!(
                detect_family(&inv.tensors).map(|(f, _)| f),
                want,
                "{:?}",
                tensors[0].0
            );
        }
    }

    #[test]
    fn prefix_grouping_orders_numerically() {
        let inv = Inventory::synthetic(
            None,
            &[
                t("model.layers.10.w", &[4]),
                t("model.layers.9.w", &[4]),
                t("model.layers.9.b", &[2]),
                t("model.embed.weight", &[8]),
                t("model.attn_layers.0.w", &[4]),
                t("norm.weight", &[4]),
                t("h.0.mlp", &[1]),
                t("h.1.mlp", &[1]),
                t("final_layer.adaLN_modulation.1.weight", &[4]),
            ],
        );
        assert_eq!(inv.grouping, Grouping::Prefix);
        assert_eq!(
            names(&inv),
            ["resident", "h.0", "h.1", "layers.9", "layers.10"]
        );
        assert_eq!(inv.unit("layers.9").unwrap().bytes, 12);
        // embed, attn_layers.0 (a group of one), norm, the final layer.
        assert_eq!(inv.unit("resident").unwrap().tensors.len(), 4);
    }

    #[test]
    fn family_grouping_falls_back_to_prefix_when_it_finds_no_blocks() {
        // A diffusers-layout FLUX file: the key mapping names its blocks the BFL way.
        let inv = Inventory::synthetic(
            Some(Family::Flux),
            &[
                t("transformer_blocks.0.attn.to_q.weight", &[4]),
                t("transformer_blocks.1.attn.to_q.weight", &[4]),
                t("single_transformer_blocks.0.proj_out.weight", &[4]),
                t("single_transformer_blocks.1.proj_out.weight", &[4]),
            ],
        );
        assert_eq!(inv.grouping, Grouping::Family);
        assert_eq!(
            names(&inv),
            [
                "double_blocks.0",
                "double_blocks.1",
                "single_blocks.0",
                "single_blocks.1"
            ]
        );
        let inv = Inventory::synthetic(
            Some(Family::Flux),
            &[
                t("single_blocks.1.linear1.weight", &[4]),
                t("double_blocks.2.img_mod.lin.weight", &[4]),
                t("img_in.weight", &[4]),
            ],
        );
        assert_eq!(inv.grouping, Grouping::Family);
        assert_eq!(
            names(&inv),
            ["resident", "double_blocks.2", "single_blocks.1"]
        );
    }

    #[test]
    fn vae_and_text_encoder_units() {
        let inv = Inventory::synthetic(
            Some(Family::FluxVae),
            &[
                t("decoder.conv_in.weight", &[4]),
                t("encoder.conv_in.weight", &[4]),
                t("decoder.up.0.block.0.conv1.weight", &[4]),
            ],
        );
        assert_eq!(names(&inv), ["encoder", "decoder"]);
        let inv = Inventory::synthetic(
            Some(Family::T5),
            &[
                t("encoder.block.11.layer.0.SelfAttention.q.weight", &[4]),
                t("encoder.block.2.layer.0.SelfAttention.q.weight", &[4]),
                t("shared.weight", &[4]),
                t("encoder.final_layer_norm.weight", &[4]),
            ],
        );
        assert_eq!(
            names(&inv),
            ["resident", "encoder.block.2", "encoder.block.11"]
        );
    }
}
