//! The engine of [`super::canonicalize`]: prefix stripping, layout detection, mapping names
//! through a family's rules, joining fused parts, and the missing/unknown checks against the
//! canonical schema. The tables it applies are in `flux.rs`, `vae.rs`, `wan_vae.rs` and
//! `text.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::spec::{self, Entry, Need, Norm, Rule, Slot, Spec};
use super::{
    natural_cmp, spec_for, suggest, template, CanonicalLayout, CanonicalTensor, Ignored,
    KeymapError, Part, Transform, UnknownName,
};
use crate::family::Family;
use crate::weights::{DType, TensorInfo};

/// Strips the longest own prefix: (rest, prefix).
pub(super) fn strip_own<'a>(spec: &Spec, name: &'a str) -> (&'a str, Option<&'static str>) {
    spec.own_prefixes
        .iter()
        .filter(|p| name.starts_with(**p) && name.len() > p.len())
        .max_by_key(|p| p.len())
        .map_or((name, None), |p| (&name[p.len()..], Some(*p)))
}

pub(super) fn foreign_prefix(spec: &Spec, name: &str) -> Option<&'static str> {
    spec.foreign_prefixes
        .iter()
        .copied()
        .find(|p| name.starts_with(p))
}

/// `module.param` → (module, param); a name without a dot is a bare parameter of the root
/// module `""` (diffusers Wan's top-level `scale_shift_table`).
pub(super) fn split_param(name: &str) -> Option<(&str, &str)> {
    Some(name.rsplit_once('.').unwrap_or(("", name)))
}

/// The inverse of [`split_param`].
pub(super) fn join_param(module: &str, param: &str) -> String {
    if module.is_empty() {
        param.to_string()
    } else {
        format!("{module}.{param}")
    }
}

pub(super) fn schema_match<'s>(
    schema: &'s [Entry],
    name: &str,
) -> Option<(&'s Entry, template::Caps)> {
    let (module, param) = split_param(name)?;
    schema
        .iter()
        .filter(|e| e.params.contains(&param))
        .find_map(|e| template::matches(&e.module, module).map(|c| (e, c)))
}

/// An alias name's rule and canonical name (`None` when the rule needs a reversed-index count
/// that is unknown).
pub(super) fn alias_match<'s>(
    rules: &'s [Rule],
    name: &str,
    n_rev: Option<u64>,
) -> Option<(&'s Rule, Option<String>)> {
    let (module, param) = split_param(name)?;
    rules.iter().find_map(|r| {
        let (_, cparam) = r.params.iter().find(|(a, _)| *a == param)?;
        let caps = template::matches(&r.alias, module)?;
        Some((
            r,
            template::fill(&r.canonical, &caps, n_rev).map(|m| join_param(&m, cparam)),
        ))
    })
}

/// Maps a file's tensors onto `family`'s canonical layout; see the module docs.
pub fn canonicalize(
    family: Family,
    tensors: &[TensorInfo],
) -> Result<CanonicalLayout, KeymapError> {
    let spec = spec_for(family);
    let mut ignored = Vec::new();
    let mut prefixes = BTreeSet::new();
    let mut scaled_fp8 = None;
    let mut own: Vec<(&str, &TensorInfo)> = Vec::new();
    let mut scale_of: Vec<(&str, &TensorInfo)> = Vec::new();
    for t in tensors {
        let (stripped, prefix) = strip_own(spec, &t.name);
        match prefix {
            Some(p) => {
                prefixes.insert(p.to_string());
            }
            None => {
                if let Some(p) = foreign_prefix(spec, &t.name) {
                    ignored.push(Ignored {
                        name: t.name.clone(),
                        reason: format!("another component of an all-in-one checkpoint (`{p}`)"),
                    });
                    continue;
                }
            }
        }
        if stripped == "scaled_fp8" {
            scaled_fp8 = Some(t.dtype);
            ignored.push(Ignored {
                name: t.name.clone(),
                reason: "ComfyUI scaled-fp8 marker".into(),
            });
        } else if let Some(base) = stripped.strip_suffix(".scale_weight") {
            scale_of.push((base, t));
        } else if stripped.ends_with(".scale_input") {
            ignored.push(Ignored {
                name: t.name.clone(),
                reason: "fp8 activation scale (used by fp8 matmuls only, not to dequantise)".into(),
            });
        } else {
            own.push((stripped, t));
        }
    }
    if own.is_empty() {
        return Err(KeymapError::NoTensors {
            family,
            others: ignored.into_iter().map(|i| i.name).collect(),
        });
    }
    if let Some(message) = (spec.unsupported)(&own) {
        return Err(KeymapError::Unsupported { family, message });
    }

    let all: HashSet<&str> = own.iter().map(|(n, _)| *n).collect();
    let mut kept: Vec<(String, &TensorInfo)> = Vec::with_capacity(own.len());
    for (name, t) in own {
        match (spec.normalize)(name, &all) {
            Norm::Keep(n) => kept.push((n, t)),
            Norm::Ignore(reason) => ignored.push(Ignored {
                name: t.name.clone(),
                reason: reason.into(),
            }),
        }
    }
    let mut scales: HashMap<String, &TensorInfo> = HashMap::new();
    for (base, t) in scale_of {
        let weight = format!("{base}.weight");
        let weight = match (spec.normalize)(&weight, &all) {
            Norm::Keep(n) => n,
            Norm::Ignore(_) => weight,
        };
        scales.insert(weight, t);
    }

    let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    let n_rev = (spec.rev_count)(&names);
    let mut unknown_raw: Vec<&TensorInfo> = Vec::new();
    // (canonical name, slot, stripped source name, source)
    let mut mapped: Vec<(String, Slot, &str, &TensorInfo)> = Vec::new();
    let layout = match (&spec.schema, &spec.alias) {
        (None, _) => {
            for (n, t) in &kept {
                mapped.push((n.clone(), Slot::Whole, n.as_str(), t));
            }
            spec.canonical_layout
        }
        (Some(schema), alias) => {
            let mut canon_only: Option<&str> = None;
            let mut alias_only: Option<&str> = None;
            let mut classified = Vec::with_capacity(kept.len());
            for (n, t) in &kept {
                let canon = schema_match(schema, n).is_some();
                let al = alias
                    .as_ref()
                    .and_then(|(_, rules)| alias_match(rules, n, n_rev));
                match (canon, &al) {
                    (true, None) => {
                        canon_only.get_or_insert(&t.name);
                    }
                    (false, Some(_)) => {
                        alias_only.get_or_insert(&t.name);
                    }
                    _ => {}
                }
                classified.push((n, *t, canon, al));
            }
            let use_alias = alias_only.is_some();
            if let (Some(c), Some(a), Some((alias_layout, _))) = (canon_only, alias_only, alias) {
                return Err(KeymapError::MixedLayouts {
                    family,
                    a: spec.canonical_layout,
                    a_example: c.to_string(),
                    b: *alias_layout,
                    b_example: a.to_string(),
                });
            }
            for (n, t, canon, al) in classified {
                match (use_alias, canon, al) {
                    (true, _, Some((rule, Some(c)))) => mapped.push((c, rule.slot, n.as_str(), t)),
                    (false, true, _) => mapped.push((n.clone(), Slot::Whole, n.as_str(), t)),
                    _ => unknown_raw.push(t),
                }
            }
            if use_alias {
                alias
                    .as_ref()
                    .map(|(l, _)| *l)
                    .unwrap_or(spec.canonical_layout)
            } else {
                spec.canonical_layout
            }
        }
    };

    // Group sources by canonical name.
    let mut groups: BTreeMap<String, Vec<(Slot, &str, &TensorInfo)>> = BTreeMap::new();
    for (c, slot, n, t) in mapped {
        groups.entry(c).or_default().push((slot, n, t));
    }
    let mut missing = Vec::new();
    // Fused tensors with some parts present: their absent parts are reported, not the whole.
    let mut partial: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(groups.len());
    for (name, srcs) in groups {
        match build_tensor(family, layout, n_rev, name.clone(), srcs, &mut scales)? {
            Built::Tensor(t) => out.push(t),
            Built::Absent(msgs) => {
                partial.insert(name);
                missing.extend(msgs);
            }
        }
    }
    let mut unknown: Vec<UnknownName> = unknown_raw
        .into_iter()
        .map(|t| UnknownName {
            name: t.name.clone(),
            suggestion: None,
        })
        .collect();
    let mut leftover: Vec<&TensorInfo> = scales.into_values().collect();
    leftover.sort_by(|a, b| a.name.cmp(&b.name));
    unknown.extend(leftover.into_iter().map(|t| UnknownName {
        name: t.name.clone(),
        suggestion: None,
    }));

    out.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    if let Some(schema) = &spec.schema {
        let present: HashSet<&str> = out
            .iter()
            .map(|t| t.name.as_str())
            .chain(partial.iter().map(String::as_str))
            .collect();
        let alias_layout = layout != spec.canonical_layout;
        missing.extend(
            missing_required(schema, &present)
                .into_iter()
                .map(|m| describe_missing(spec, alias_layout, &m, n_rev)),
        );
    }
    if !unknown.is_empty() || !missing.is_empty() {
        let known: Vec<String> = out
            .iter()
            .map(|t| t.name.clone())
            .chain(
                out.iter()
                    .flat_map(|t| t.parts.iter().map(|p| p.source.clone())),
            )
            .collect();
        for u in unknown.iter_mut().take(50) {
            u.suggestion = suggest(&u.name, known.iter().map(String::as_str));
        }
        return Err(KeymapError::Mismatch {
            family,
            layout,
            unknown,
            missing,
        });
    }
    let index = out
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    Ok(CanonicalLayout {
        family,
        layout,
        prefixes: prefixes.into_iter().collect(),
        tensors: out,
        ignored,
        scaled_fp8,
        index,
    })
}

/// The alias-layout name of part `k` of canonical tensor `name` (for messages).
fn alias_name_for(spec: &Spec, name: &str, k: u8, n_rev: Option<u64>) -> String {
    let Some((module, param)) = split_param(name) else {
        return name.to_string();
    };
    spec.alias
        .iter()
        .flat_map(|(_, rules)| rules.iter())
        .filter(|r| matches!(r.slot, Slot::Part { index, .. } if index == k))
        .find_map(|r| {
            let (aparam, _) = r.params.iter().find(|(_, c)| *c == param)?;
            let caps = template::matches(&r.canonical, module)?;
            Some(join_param(&template::fill(&r.alias, &caps, n_rev)?, aparam))
        })
        .unwrap_or_else(|| format!("{name}[{k}]"))
}

/// A missing canonical tensor, in the file's own layout when that is the alternative one.
fn describe_missing(spec: &Spec, alias_layout: bool, name: &str, n_rev: Option<u64>) -> String {
    let aliases: Vec<String> = match (&spec.alias, split_param(name)) {
        (Some((_, rules)), Some((module, param))) if alias_layout => rules
            .iter()
            .filter_map(|r| {
                let (aparam, _) = r.params.iter().find(|(_, c)| *c == param)?;
                let caps = template::matches(&r.canonical, module)?;
                Some(format!(
                    "`{}`",
                    join_param(&template::fill(&r.alias, &caps, n_rev)?, aparam)
                ))
            })
            .collect(),
        _ => Vec::new(),
    };
    match aliases.as_slice() {
        [] => format!("`{name}`"),
        [one] => format!("{one} (canonical `{name}`)"),
        many => format!("{} (the parts of canonical `{name}`)", many.join(", ")),
    }
}

/// Required schema names absent from `present`, for the index ranges `present` shows.
fn missing_required(schema: &[Entry], present: &HashSet<&str>) -> Vec<String> {
    // Largest index seen per scope (`double_blocks.{i}`, `encoder.down.2.block.{j}`).
    let mut scopes: HashMap<String, u64> = HashMap::new();
    for name in present {
        if let Some((e, caps)) = schema_match(schema, name) {
            for (k, ph) in template::placeholders(&e.module).into_iter().enumerate() {
                if let (Some((s, _)), Some(v)) =
                    (template::scope(&e.module, &caps, k), caps.get(ph))
                {
                    let m = scopes.entry(s).or_insert(v);
                    *m = (*m).max(v);
                }
            }
        }
    }
    let mut missing = Vec::new();
    for e in schema.iter().filter(|e| e.need == Need::Required) {
        let phs = template::placeholders(&e.module);
        let mut instances = vec![template::Caps::default()];
        for (k, ph) in phs.iter().enumerate() {
            let mut next = Vec::new();
            for caps in &instances {
                let Some((s, _)) = template::scope(&e.module, caps, k) else {
                    continue;
                };
                if let Some(&max) = scopes.get(&s) {
                    // A corrupt index (`double_blocks.4000000000`) must not make us list
                    // billions of names: no file has more blocks than tensors.
                    let max = max.min(present.len() as u64);
                    next.extend((0..=max).map(|v| template::with(caps, ph, v)));
                }
            }
            instances = next;
        }
        for caps in instances {
            let Some(module) = template::fill(&e.module, &caps, None) else {
                continue;
            };
            for p in e.params {
                let n = format!("{module}.{p}");
                if !present.contains(n.as_str()) {
                    missing.push(n);
                }
            }
        }
    }
    missing.sort_by(|a, b| natural_cmp(a, b));
    missing
}

/// What one canonical name's sources make: the tensor, or messages for its absent parts.
enum Built {
    Tensor(CanonicalTensor),
    Absent(Vec<String>),
}

/// Builds canonical tensor `name` from its sources (checking parts, shapes and dtypes) and
/// takes its scaled-fp8 scale out of `scales`.
fn build_tensor<'a>(
    family: Family,
    layout: super::Layout,
    n_rev: Option<u64>,
    name: String,
    mut srcs: Vec<(Slot, &str, &'a TensorInfo)>,
    scales: &mut HashMap<String, &'a TensorInfo>,
) -> Result<Built, KeymapError> {
    let shape_err = |tensor: &str, message: String| KeymapError::Shape {
        family,
        layout,
        tensor: tensor.to_string(),
        message,
    };
    let slot = srcs[0].0;
    let (parts, shape, transform) = match slot {
        Slot::Part { split, .. } => {
            srcs.sort_by_key(|(s, _, _)| match s {
                Slot::Part { index, .. } => *index,
                _ => u8::MAX,
            });
            for w in srcs.windows(2) {
                if w[0].0 == w[1].0 {
                    return Err(KeymapError::Duplicate {
                        family,
                        layout,
                        canonical: name,
                        first: w[0].2.name.clone(),
                        second: w[1].2.name.clone(),
                    });
                }
            }
            let have: Vec<u8> = srcs
                .iter()
                .filter_map(|(s, _, _)| match s {
                    Slot::Part { index, .. } => Some(*index),
                    _ => None,
                })
                .collect();
            if have.len() != srcs.len() {
                return Err(shape_err(&name, "mixes whole and partial sources".into()));
            }
            let absent: Vec<u8> = (0..split.count() as u8)
                .filter(|k| !have.contains(k))
                .collect();
            if !absent.is_empty() {
                let spec = spec_for(family);
                return Ok(Built::Absent(
                    absent
                        .into_iter()
                        .map(|k| {
                            let alias = alias_name_for(spec, &name, k, n_rev);
                            format!(
                                "`{alias}` (part {} of {} of `{name}`)",
                                k + 1,
                                split.count()
                            )
                        })
                        .collect(),
                ));
            }
            let first = srcs[0].2;
            if first.shape.is_empty() {
                return Err(shape_err(
                    &first.name,
                    "a part of a fused tensor cannot be a scalar".into(),
                ));
            }
            let trailing = &first.shape[1..];
            let mut parts = Vec::with_capacity(srcs.len());
            let mut row = 0u64;
            for (_, _, t) in &srcs {
                if t.dtype != first.dtype {
                    return Err(shape_err(
                        &t.name,
                        format!(
                            "is {} but `{}` is {}: parts of `{name}` must share a dtype",
                            t.dtype, first.name, first.dtype
                        ),
                    ));
                }
                if t.shape.len() != first.shape.len() || &t.shape[1..] != trailing {
                    return Err(shape_err(
                        &t.name,
                        format!("has shape {:?} but `{}` has {:?}: parts of `{name}` must agree after dim 0", t.shape, first.name, first.shape),
                    ));
                }
                parts.push(Part {
                    source: t.name.clone(),
                    rows: row..row + t.shape[0],
                });
                row += t.shape[0];
            }
            // The split's "input width" of a bias is the size of its q part.
            let cols: u64 = if trailing.is_empty() {
                parts[0].rows.end - parts[0].rows.start
            } else {
                trailing.iter().product()
            };
            for (k, p) in parts.iter().enumerate() {
                if split.range(k, row, cols) != Some(p.rows.clone()) {
                    let sizes: Vec<u64> = parts.iter().map(|p| p.rows.end - p.rows.start).collect();
                    let want = match split {
                        spec::Split::Thirds => "three equal parts (q, k, v)".to_string(),
                        spec::Split::Hidden3ThenRest => {
                            format!("q, k, v of {cols} rows each (the hidden width) and then the MLP rows")
                        }
                    };
                    return Err(shape_err(
                        &name,
                        format!("parts have {sizes:?} rows; a fused `{name}` needs {want}"),
                    ));
                }
            }
            let mut shape = vec![row];
            shape.extend_from_slice(trailing);
            (parts, shape, Transform::None)
        }
        _ => {
            if srcs.len() > 1 {
                return Err(KeymapError::Duplicate {
                    family,
                    layout,
                    canonical: name,
                    first: srcs[0].2.name.clone(),
                    second: srcs[1].2.name.clone(),
                });
            }
            let t = srcs[0].2;
            let rows = t.shape.first().copied().unwrap_or(1);
            let part = Part {
                source: t.name.clone(),
                rows: 0..rows,
            };
            match slot {
                Slot::SwapHalves => {
                    if t.shape.is_empty() || rows % 2 != 0 {
                        return Err(shape_err(
                            &t.name,
                            format!(
                                "shape {:?}: the shift/scale halves need an even dim 0",
                                t.shape
                            ),
                        ));
                    }
                    (vec![part], t.shape.clone(), Transform::SwapHalvesDim0)
                }
                Slot::LinearAsConv if t.shape.len() == 2 => {
                    let mut s = t.shape.clone();
                    s.extend([1, 1]);
                    (vec![part], s, Transform::None)
                }
                _ => (vec![part], t.shape.clone(), Transform::None),
            }
        }
    };
    let dtype = srcs[0].2.dtype;
    if parts.len() > 1
        && dtype.is_quantized()
        && dtype.storage_bytes(shape[1..].iter().product()).is_none()
    {
        return Err(shape_err(
            &name,
            format!("{dtype} rows are not whole blocks, so the parts cannot be joined"),
        ));
    }
    let mut scale = None;
    for (_, n, _) in &srcs {
        if let Some(s) = scales.remove(*n) {
            if srcs.len() > 1 {
                return Err(shape_err(
                    &s.name,
                    format!("scaled-fp8 parts of the fused `{name}` would need one scale each; only whole tensors can be scaled"),
                ));
            }
            if s.numel() != 1 || !matches!(s.dtype, DType::F32 | DType::F16 | DType::BF16) {
                return Err(shape_err(
                    &s.name,
                    format!("scale of shape {:?} ({}): only one f32/f16/bf16 number per tensor (tensor-wise scaled fp8) is supported", s.shape, s.dtype),
                ));
            }
            scale = Some(s.name.clone());
        }
    }
    Ok(Built::Tensor(CanonicalTensor {
        name,
        shape,
        dtype,
        parts,
        transform,
        scale,
    }))
}
