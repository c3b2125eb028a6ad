//! Module names → canonical tensors, for LoRA files. A LoRA addresses a *module* (a linear or
//! conv) by name, in whatever layout its trainer used: BFL (`double_blocks.0.img_attn.qkv`),
//! diffusers (`transformer_blocks.0.attn.to_q`, which is the first third of the BFL `qkv`
//! rows), or kohya's flattening of either with `_` for `.`
//! (`double_blocks_0_img_attn_qkv`). The flattening is ambiguous in general (`img_attn`
//! contains an underscore), so it is never parsed: the index holds the flattened spelling of
//! every module the *base model* has, and a LoRA name either is one of them or is unknown.

use std::collections::HashMap;
use std::ops::Range;

use serde::Serialize;

use super::spec::Slot;
use super::{spec_for, template, CanonicalLayout};
use crate::family::Family;

/// Where a module's weight lands: rows `rows` of canonical tensor `tensor`, with the rows of
/// the module's output exchanged in halves first when `swap` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleTarget {
    /// Canonical tensor name (`double_blocks.0.img_attn.qkv.weight`).
    pub tensor: String,
    pub rows: Range<u64>,
    pub swap: bool,
}

impl ModuleTarget {
    /// The same rows of the module's bias (`….bias`), for bias-difference patches.
    pub fn bias(&self) -> Option<ModuleTarget> {
        let m = self.tensor.strip_suffix(".weight")?;
        Some(ModuleTarget {
            tensor: format!("{m}.bias"),
            rows: self.rows.clone(),
            swap: self.swap,
        })
    }
}

/// Result of looking up a flattened (`_`-joined) module name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Found(&'a ModuleTarget),
    /// Two different modules flatten to this name.
    Ambiguous,
    NotFound,
}

/// Every module name of a base model, in every spelling LoRA files use.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    pub family: Family,
    dotted: HashMap<String, ModuleTarget>,
    flat: HashMap<String, Option<ModuleTarget>>,
}

impl ModuleIndex {
    /// Builds the index of `layout`'s modules: canonical names and, where the family has an
    /// alternative layout, its names too (with the rows they occupy in fused tensors).
    pub fn build(layout: &CanonicalLayout) -> Self {
        let spec = spec_for(layout.family);
        let names: Vec<&str> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
        let n_rev = (spec.rev_count)(&names);
        let mut dotted = HashMap::new();
        for t in &layout.tensors {
            let Some(module) = t.name.strip_suffix(".weight") else {
                continue;
            };
            let rows = t.rows();
            dotted.insert(
                module.to_string(),
                ModuleTarget {
                    tensor: t.name.clone(),
                    rows: 0..rows,
                    swap: false,
                },
            );
            let Some((_, rules)) = &spec.alias else {
                continue;
            };
            for r in rules
                .iter()
                .filter(|r| r.params.contains(&("weight", "weight")))
            {
                let Some(caps) = template::matches(&r.canonical, module) else {
                    continue;
                };
                let Some(alias) = template::fill(&r.alias, &caps, n_rev) else {
                    continue;
                };
                let target = match r.slot {
                    Slot::Whole | Slot::LinearAsConv => ModuleTarget {
                        tensor: t.name.clone(),
                        rows: 0..rows,
                        swap: false,
                    },
                    Slot::SwapHalves => ModuleTarget {
                        tensor: t.name.clone(),
                        rows: 0..rows,
                        swap: true,
                    },
                    Slot::Part { index, split } => {
                        match split.range(index as usize, rows, t.cols()) {
                            Some(range) => ModuleTarget {
                                tensor: t.name.clone(),
                                rows: range,
                                swap: false,
                            },
                            None => continue,
                        }
                    }
                };
                dotted.entry(alias).or_insert(target);
            }
        }
        let mut flat: HashMap<String, Option<ModuleTarget>> = HashMap::new();
        for (name, target) in &dotted {
            let key = name.replace('.', "_");
            match flat.get_mut(&key) {
                None => {
                    flat.insert(key, Some(target.clone()));
                }
                Some(existing) => {
                    if existing.as_ref() != Some(target) {
                        *existing = None;
                    }
                }
            }
        }
        ModuleIndex {
            family: layout.family,
            dotted,
            flat,
        }
    }

    /// Looks up a dotted module name (`double_blocks.0.img_attn.qkv`, `transformer_blocks.0.attn.to_q`).
    pub fn dotted(&self, module: &str) -> Option<&ModuleTarget> {
        self.dotted.get(module)
    }

    /// Looks up a flattened module name (`double_blocks_0_img_attn_qkv`).
    pub fn flat(&self, module: &str) -> Lookup<'_> {
        match self.flat.get(module) {
            Some(Some(t)) => Lookup::Found(t),
            Some(None) => Lookup::Ambiguous,
            None => Lookup::NotFound,
        }
    }

    /// The closest known module name in the same spelling (dotted or flattened).
    pub fn suggest(&self, module: &str, flattened: bool) -> Option<String> {
        if flattened {
            super::suggest(module, self.flat.keys().map(String::as_str))
        } else {
            super::suggest(module, self.dotted.keys().map(String::as_str))
        }
    }

    pub fn len(&self) -> usize {
        self.dotted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dotted.is_empty()
    }
}
