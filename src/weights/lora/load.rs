//! [`super::LoraSet::load`]: files → modules → targets → checked f32 terms, plus the report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::delta::{DeltaKind, DeltaTerm, TensorDelta};
use super::file::{read_tensors_f32, AdapterConfigs, LoraTensor};
use super::keys::{classify, format_of, split_key, Component, Role, Spelling};
use super::report::{FileReport, LoraReport, Unmatched};
use super::{term_scale, LoraError, LoraSet};
use crate::family::Family;
use crate::weights::keymap::{natural_cmp, CanonicalLayout, Lookup, ModuleIndex, ModuleTarget};

/// One file's terms (canonical tensor, term), its report and its warnings.
struct Resolved {
    terms: Vec<(String, DeltaTerm)>,
    report: FileReport,
    warnings: Vec<String>,
}

/// The tensors of one module key.
#[derive(Default)]
struct Group<'a> {
    down: Option<&'a LoraTensor>,
    up: Option<&'a LoraTensor>,
    alpha: Option<&'a LoraTensor>,
    diff: Option<&'a LoraTensor>,
    diff_b: Option<&'a LoraTensor>,
    unsupported: Option<(&'static str, &'a str)>,
    tensors: usize,
}

pub(super) fn load(
    specs: &[(PathBuf, f32)],
    family: Family,
    base: &CanonicalLayout,
    strict: bool,
) -> Result<(LoraSet, LoraReport), LoraError> {
    for (path, s) in specs {
        if !s.is_finite() {
            return Err(LoraError::BadStrength {
                path: path.clone(),
                strength: *s,
            });
        }
    }
    if base.family != family {
        return Err(LoraError::FamilyMismatch {
            family,
            base: base.family,
        });
    }
    let index = ModuleIndex::build(base);
    let mut deltas: BTreeMap<String, TensorDelta> = BTreeMap::new();
    let mut report = LoraReport {
        family,
        files: Vec::new(),
        patched: BTreeMap::new(),
        warnings: Vec::new(),
    };
    for (fi, (path, strength)) in specs.iter().enumerate() {
        let file = read_tensors_f32(path)?;
        let configs = AdapterConfigs::load(path, &file.metadata)?;
        let Resolved {
            terms,
            report: mut fr,
            warnings,
        } = resolve_file(
            fi,
            path,
            *strength,
            &file.tensors,
            &configs,
            &index,
            base,
            strict,
        )?;
        report.warnings.extend(warnings);
        if *strength == 0.0 {
            report.warnings.push(format!(
                "{}: strength 0, the LoRA changes nothing",
                path.display()
            ));
        }
        let mut patched = BTreeSet::new();
        for (tensor, term) in terms {
            patched.insert(tensor.clone());
            if *strength == 0.0 {
                continue;
            }
            let t = base
                .get(&tensor)
                .expect("targets come from the base layout");
            deltas
                .entry(tensor.clone())
                .or_insert_with(|| TensorDelta {
                    name: tensor.clone(),
                    rows: t.rows(),
                    cols: t.cols(),
                    terms: Vec::new(),
                })
                .terms
                .push(term);
        }
        for p in &patched {
            report.patched.entry(p.clone()).or_default().push(fi);
        }
        fr.patched = patched.into_iter().collect();
        fr.patched.sort_by(|a, b| natural_cmp(a, b));
        report.files.push(fr);
    }
    Ok((
        LoraSet {
            family,
            files: specs.to_vec(),
            deltas,
        },
        report,
    ))
}

#[allow(clippy::too_many_arguments)]
fn resolve_file(
    fi: usize,
    path: &Path,
    strength: f32,
    tensors: &[LoraTensor],
    configs: &AdapterConfigs,
    index: &ModuleIndex,
    base: &CanonicalLayout,
    strict: bool,
) -> Result<Resolved, LoraError> {
    let err = |tensor: &str, message: String| LoraError::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        message,
    };
    let mut groups: BTreeMap<&str, Group> = BTreeMap::new();
    let mut unmatched = Vec::new();
    let mut formats = BTreeSet::new();
    for t in tensors {
        let Some((module, role)) = split_key(&t.name) else {
            unmatched.push(Unmatched {
                key: t.name.clone(),
                suggestion: None,
                reason: Some(
                    "not a LoRA tensor name (expected `<module>.lora_down.weight`/`lora_up.weight`/`lora_A.weight`/`lora_B.weight`/`alpha`/`diff`/`diff_b`)".into(),
                ),
            });
            continue;
        };
        formats.insert(format_of(module, role));
        let g = groups.entry(module).or_default();
        g.tensors += 1;
        let slot = match role {
            Role::Down => &mut g.down,
            Role::Up => &mut g.up,
            Role::Alpha => &mut g.alpha,
            Role::Diff => &mut g.diff,
            Role::DiffB => &mut g.diff_b,
            Role::Unsupported(what) => {
                g.unsupported = Some((what, &t.name));
                continue;
            }
        };
        if let Some(prev) = slot.replace(t) {
            return Err(err(
                &t.name,
                format!(
                    "duplicates `{}` (both give the same factor of `{module}`)",
                    prev.name
                ),
            ));
        }
    }

    let own = Component::of(base.family);
    let mut other: BTreeMap<String, usize> = BTreeMap::new();
    let mut terms: Vec<(String, DeltaTerm)> = Vec::new();
    let mut matched_modules = 0;
    let mut matched_tensors = 0;
    let mut alpha_from_config = false;
    let mut modules: Vec<&str> = groups.keys().copied().collect();
    modules.sort_by(|a, b| natural_cmp(a, b));
    for module in modules {
        let g = &groups[module];
        let (component, rest, spelling) = classify(module);
        if let Some(c) = component {
            if c != own {
                *other.entry(c.name().to_string()).or_default() += 1;
                continue;
            }
        }
        let prefix = &module[..module.len() - rest.len()];
        let found = match spelling {
            Spelling::Dotted => index.dotted(rest).map_or(Lookup::NotFound, Lookup::Found),
            Spelling::Flat => index.flat(rest),
        };
        let target = match found {
            Lookup::Found(t) => t,
            Lookup::Ambiguous => {
                unmatched.push(Unmatched {
                    key: module.to_string(),
                    suggestion: None,
                    reason: Some(
                        "this flattened name fits two different modules of the base model".into(),
                    ),
                });
                continue;
            }
            Lookup::NotFound => {
                let suggestion = index
                    .suggest(rest, spelling == Spelling::Flat)
                    .map(|s| format!("{prefix}{s}"));
                unmatched.push(Unmatched {
                    key: module.to_string(),
                    suggestion,
                    reason: None,
                });
                continue;
            }
        };
        if let Some((what, name)) = g.unsupported {
            unmatched.push(Unmatched {
                key: name.to_string(),
                suggestion: None,
                reason: Some(format!("{what} is not supported; mgpu applies plain LoRA (down/up/alpha) and full differences")),
            });
            continue;
        }
        let t = base.get(&target.tensor).expect("index targets exist");
        let cols = t.cols();
        let n_rows = target.rows.end - target.rows.start;
        let mut made = 0;
        match (g.down, g.up) {
            (Some(down), Some(up)) => {
                let (rank, up_data, down_data) =
                    low_rank(down, up, n_rows, cols, &target.tensor).map_err(|m| err(module, m))?;
                let alpha = match g.alpha {
                    Some(a) => {
                        if a.data.len() != 1 {
                            return Err(err(
                                &a.name,
                                format!("alpha must be one number, has shape {:?}", a.shape),
                            ));
                        }
                        f64::from(a.data[0])
                    }
                    None => match configs.for_module(module) {
                        Some((c, peft_path)) => {
                            if c.use_dora {
                                return Err(err(
                                    module,
                                    "the adapter config says `use_dora`: DoRA is not supported"
                                        .into(),
                                ));
                            }
                            alpha_from_config = true;
                            c.alpha_for(peft_path).unwrap_or(rank as f64)
                        }
                        None => rank as f64,
                    },
                };
                let rslora = configs
                    .for_module(module)
                    .is_some_and(|(c, _)| c.use_rslora);
                let factor = if rslora {
                    alpha / (rank as f64).sqrt()
                } else {
                    alpha / rank as f64
                };
                let up_data = if target.swap {
                    swap_halves(&up_data, rank)
                } else {
                    up_data
                };
                terms.push((
                    target.tensor.clone(),
                    DeltaTerm {
                        file: fi,
                        module: module.to_string(),
                        rows: target.rows.clone(),
                        factor,
                        scale: term_scale(factor, strength),
                        kind: DeltaKind::LowRank {
                            rank,
                            up: up_data.into(),
                            down: down_data.into(),
                        },
                    },
                ));
                made += 2 + usize::from(g.alpha.is_some());
            }
            (Some(x), None) | (None, Some(x)) => {
                return Err(err(
                    &x.name,
                    format!("`{module}` has only one of its two LoRA factors (down/A and up/B)"),
                ));
            }
            (None, None) => {
                if let Some(a) = g.alpha {
                    if g.diff.is_none() && g.diff_b.is_none() {
                        return Err(err(
                            &a.name,
                            format!("`{module}` has an alpha but no LoRA factors"),
                        ));
                    }
                }
            }
        }
        if let Some(diff) = g.diff {
            let data = full_diff(diff, target, cols).map_err(|m| err(&diff.name, m))?;
            terms.push((
                target.tensor.clone(),
                full_term(fi, &diff.name, target, data, strength),
            ));
            made += 1;
        }
        if let Some(db) = g.diff_b {
            let Some(bias) = target.bias().filter(|b| base.get(&b.tensor).is_some()) else {
                return Err(err(
                    &db.name,
                    format!("a bias difference, but `{}` has no bias", target.tensor),
                ));
            };
            let data = full_diff(db, &bias, 1).map_err(|m| err(&db.name, m))?;
            terms.push((
                bias.tensor.clone(),
                full_term(fi, &db.name, &bias, data, strength),
            ));
            made += 1;
        }
        matched_modules += 1;
        matched_tensors += made;
    }

    // Two modules of one file patching the same rows would double-apply (files that carry a
    // LoRA twice, in two spellings): refuse, or keep the first.
    let mut warnings = Vec::new();
    let mut kept: Vec<(String, DeltaTerm)> = Vec::with_capacity(terms.len());
    for (tensor, term) in terms {
        if let Some((_, prev)) = kept.iter().find(|(t, p)| {
            *t == tensor && p.rows.start < term.rows.end && term.rows.start < p.rows.end
        }) {
            let msg = format!(
                "`{}` and `{}` both patch rows {}..{} of `{tensor}`",
                prev.module,
                term.module,
                prev.rows.start.max(term.rows.start),
                prev.rows.end.min(term.rows.end)
            );
            if strict {
                return Err(err(
                    &term.module,
                    format!("{msg}; a file must patch each weight once"),
                ));
            }
            warnings.push(format!("{}: {msg}; keeping the first", path.display()));
            continue;
        }
        kept.push((tensor, term));
    }

    if !unmatched.is_empty() {
        if strict {
            return Err(LoraError::Unmatched {
                path: path.to_path_buf(),
                family: base.family,
                unmatched,
            });
        }
        warnings.push(format!(
            "{}: {} LoRA module{} match nothing in the {} model and are skipped",
            path.display(),
            unmatched.len(),
            if unmatched.len() == 1 { "" } else { "s" },
            base.family
        ));
    }
    if matched_modules == 0 && !groups.is_empty() {
        warnings.push(format!(
            "{}: no module of this LoRA applies to the {} model",
            path.display(),
            base.family
        ));
    }
    let report = FileReport {
        path: path.to_path_buf(),
        strength,
        formats: formats.into_iter().collect(),
        tensors: tensors.len(),
        modules: groups.len(),
        matched_modules,
        matched_tensors,
        other_components: other,
        unmatched,
        patched: Vec::new(),
        alpha_source: if alpha_from_config {
            configs.source.clone()
        } else {
            None
        },
    };
    Ok(Resolved {
        terms: kept,
        report,
        warnings,
    })
}

/// Checks a down/up pair against a target of `n_rows` × `cols` and returns (rank, up, down)
/// as row-major `n_rows × rank` and `rank × cols`. Conv factors are flattened: `down`
/// `[rank, in, kh, kw]` → `[rank, in·kh·kw]`; `up` must be `[out, rank]` or `[out, rank, 1, 1]`.
fn low_rank(
    down: &LoraTensor,
    up: &LoraTensor,
    n_rows: u64,
    cols: u64,
    tensor: &str,
) -> Result<(usize, Vec<f32>, Vec<f32>), String> {
    if !(down.shape.len() == 2 || down.shape.len() == 4) {
        return Err(format!(
            "down `{}` has shape {:?}; expected [rank, in] or [rank, in, kh, kw]",
            down.name, down.shape
        ));
    }
    match up.shape.as_slice() {
        [_, _] => {}
        [_, _, 1, 1] => {}
        [_, _, kh, kw] => {
            return Err(format!(
                "up `{}` has a {kh}×{kw} kernel: conv LoRAs whose up factor is not 1×1 (Tucker/LoCon with lora_mid) are not supported",
                up.name
            ))
        }
        s => return Err(format!("up `{}` has shape {s:?}; expected [out, rank] or [out, rank, 1, 1]", up.name)),
    }
    let rank = down.shape[0];
    if rank == 0 {
        return Err(format!("down `{}` has rank 0", down.name));
    }
    if up.shape[1] != rank {
        return Err(format!(
            "rank mismatch: down `{}` has rank {rank} (shape {:?}) but up `{}` has rank {} (shape {:?})",
            down.name, down.shape, up.name, up.shape[1], up.shape
        ));
    }
    let d_cols: u64 = down.shape[1..].iter().product();
    if d_cols != cols {
        return Err(format!(
            "down `{}` is {:?}: it reads {d_cols} inputs but `{tensor}` has {cols}",
            down.name, down.shape
        ));
    }
    if up.shape[0] != n_rows {
        return Err(format!(
            "up `{}` is {:?}: it writes {} rows but its target in `{tensor}` has {n_rows}",
            up.name, up.shape, up.shape[0]
        ));
    }
    Ok((rank as usize, up.data.clone(), down.data.clone()))
}

fn full_diff(diff: &LoraTensor, target: &ModuleTarget, cols: u64) -> Result<Vec<f32>, String> {
    let n_rows = target.rows.end - target.rows.start;
    let numel: u64 = diff.shape.iter().product();
    if numel != n_rows * cols || diff.shape.first().copied().unwrap_or(1) != n_rows {
        return Err(format!(
            "difference of shape {:?} does not fit `{}` rows {}..{} ({n_rows} × {cols})",
            diff.shape, target.tensor, target.rows.start, target.rows.end
        ));
    }
    Ok(if target.swap {
        swap_halves(&diff.data, cols as usize)
    } else {
        diff.data.clone()
    })
}

fn full_term(
    fi: usize,
    name: &str,
    target: &ModuleTarget,
    data: Vec<f32>,
    strength: f32,
) -> DeltaTerm {
    DeltaTerm {
        file: fi,
        module: name.to_string(),
        rows: target.rows.clone(),
        factor: 1.0,
        scale: term_scale(1.0, strength),
        kind: DeltaKind::Full {
            diff: Arc::from(data),
        },
    }
}

/// Exchanges the two halves of the rows of a row-major matrix with `width` columns.
fn swap_halves(data: &[f32], width: usize) -> Vec<f32> {
    let mut v = data.to_vec();
    v.rotate_left(data.len() / 2 / width.max(1) * width);
    v
}
