//! Why a plan was refused. Every error names the model and, through [`Location`], the part of
//! its manifest entry at fault (an allocation entry by index, an override by index, `compute`,
//! …), so the manifest layer can attach a span; messages carry the numbers and a fix.

use std::fmt;

use serde::Serialize;

use crate::device::DeviceName;
use crate::hardware::{HardwareError, Usable};
use crate::units::ByteSize;

/// The part of a model's manifest entry an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "at", content = "index")]
pub enum Location {
    /// The model's `compute` key.
    Compute,
    /// The whole `allocation` value.
    Allocation,
    /// Entry `i` (0-based, as written) of an expert allocation string.
    Entry(usize),
    /// `virtual_vram`.
    VirtualVram,
    /// `donor`.
    Donor,
    /// `overrides[i]`.
    Override(usize),
    /// `prefetch`.
    Prefetch,
    /// `dtype`.
    Dtype,
}

/// Why an override changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoEffect {
    /// Matches no unit and no tensor name.
    NoMatch,
    /// Matches only tensors outside the blocks, which always stay on the compute device.
    OnlyResident,
    /// Every unit it matches was claimed by an earlier override (first match wins).
    Shadowed { by: usize },
}

/// A part of a device's demand, for messages: `22.2 GiB weights of flux`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Demand {
    pub what: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("hardware: {0}")]
    Hardware(HardwareError),
    #[error("model `{model}`: device `{device}` is not on this machine (it has {available})")]
    UnknownDevice {
        model: String,
        device: DeviceName,
        at: Location,
        available: String,
    },
    #[error("model `{model}`: `disk` cannot compute; set compute = \"cuda:N\" or \"cpu\"")]
    DiskCannotCompute { model: String },
    #[error("model `{model}`: `dtype = \"fp8\"` multiplies on fp8 tensor cores, and `{device}`{} has compute capability {}.{}; they need 8.9 or newer (Ada, Hopper, Blackwell)", label.as_ref().map(|l| format!(" ({l})")).unwrap_or_default(), capability.0, capability.1)]
    Fp8Unsupported {
        model: String,
        device: DeviceName,
        label: Option<String>,
        capability: (u32, u32),
    },
    #[error("model `{model}`: the allocation holds {} of the model's {} and has no wildcard `*` to take the remaining {}{}", ByteSize(*held).human(), ByteSize(*total).human(), ByteSize(total - held).human(), fix_text(fix))]
    QuotaShort {
        model: String,
        held: u64,
        total: u64,
        fix: Option<String>,
    },
    #[error("model `{model}`: the shares add up to {sum}% before the wildcard; with a wildcard they must stay at or under 100%")]
    RatioOverflow { model: String, sum: f64 },
    #[error("model `{model}`: every share is 0%; give at least one device a positive share")]
    ZeroShares { model: String },
    #[error("model `{model}`: `disk` has no memory to take a fraction of; use bytes mode (`disk,*`) or an override")]
    FractionOfDisk { model: String, entry: usize },
    #[error(
        "model `{model}`: override {index} (`{pattern}`) {}",
        no_effect_text(reason, examples)
    )]
    OverrideNoEffect {
        model: String,
        index: usize,
        pattern: String,
        reason: NoEffect,
        examples: String,
    },
    #[error("model `{model}`: prefetch = 0 cannot stream the {streamed} blocks placed off `{compute}`; use prefetch ≥ 1 (2 overlaps each copy with compute)")]
    PrefetchZero {
        model: String,
        compute: DeviceName,
        streamed: usize,
    },
    #[error("{}", does_not_fit_text(&.0.device, .0.need, &.0.demands, &.0.usable, &.0.fix))]
    DoesNotFit(Box<NotFit>),
}

/// A device whose weights and working set exceed its usable memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotFit {
    pub device: DeviceName,
    /// Weights plus the largest working set, bytes.
    pub need: u64,
    /// What makes up `need`.
    pub demands: Vec<Demand>,
    pub usable: Usable,
    pub fix: Fix,
}

/// What to change when a device overflows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fix {
    /// Move at least `bytes` away; `model`'s allocation written as `text` fits (checked by
    /// planning with it).
    Allocation {
        model: String,
        bytes: u64,
        key: &'static str,
        text: String,
    },
    /// Move at least `bytes` away; no single allocation change was found that fits.
    MoveBytes { bytes: u64 },
    /// Nothing placement can do: the working set alone does not fit.
    Shrink { text: String },
}

impl PlanError {
    /// The model the error is about, if any.
    pub fn model(&self) -> Option<&str> {
        use PlanError::*;
        match self {
            Hardware(_) | DoesNotFit(_) => None,
            UnknownDevice { model, .. }
            | DiskCannotCompute { model }
            | Fp8Unsupported { model, .. }
            | QuotaShort { model, .. }
            | RatioOverflow { model, .. }
            | ZeroShares { model }
            | FractionOfDisk { model, .. }
            | OverrideNoEffect { model, .. }
            | PrefetchZero { model, .. } => Some(model),
        }
    }

    /// Where in the model's entry the error points.
    pub fn location(&self) -> Option<Location> {
        use PlanError::*;
        match self {
            UnknownDevice { at, .. } => Some(*at),
            DiskCannotCompute { .. } => Some(Location::Compute),
            Fp8Unsupported { .. } => Some(Location::Dtype),
            QuotaShort { .. } | RatioOverflow { .. } | ZeroShares { .. } => {
                Some(Location::Allocation)
            }
            FractionOfDisk { entry, .. } => Some(Location::Entry(*entry)),
            OverrideNoEffect { index, .. } => Some(Location::Override(*index)),
            PrefetchZero { .. } => Some(Location::Prefetch),
            Hardware(_) | DoesNotFit(_) => None,
        }
    }
}

fn fix_text(fix: &Option<String>) -> String {
    match fix {
        Some(f) => format!("; e.g. allocation = \"{f}\""),
        None => String::new(),
    }
}

fn no_effect_text(r: &NoEffect, examples: &str) -> String {
    match r {
        NoEffect::NoMatch if examples.is_empty() => {
            "matches no block and no tensor name (patterns must match a whole name)".into()
        }
        NoEffect::NoMatch => format!(
            "matches no block and no tensor name (patterns must match a whole name; blocks are named like {examples})"
        ),
        NoEffect::OnlyResident => {
            "matches only tensors outside the blocks, which always stay on the compute device".into()
        }
        NoEffect::Shadowed { by } => {
            format!("matches only blocks that override {by} already placed (first match wins)")
        }
    }
}

fn gib(b: u64) -> String {
    format!("{:.1}", ByteSize(b).as_gib())
}

fn does_not_fit_text(
    device: &DeviceName,
    need: u64,
    demands: &[Demand],
    usable: &Usable,
    fix: &Fix,
) -> String {
    let parts: Vec<String> = demands
        .iter()
        .map(|d| format!("{} {}", gib(d.bytes), d.what))
        .collect();
    let has = if usable.reserve.0 > 0 {
        format!(
            "has {} GiB usable ({} GiB {} − {} GiB reserve)",
            gib(usable.usable.0),
            gib(usable.capacity.0),
            if usable.from_free { "free" } else { "total" },
            gib(usable.reserve.0)
        )
    } else {
        format!("has {} GiB", gib(usable.usable.0))
    };
    let fix = match fix {
        Fix::Allocation {
            model,
            bytes,
            key,
            text,
        } => format!(
            "; move ≥ {} GiB to a donor, e.g. for `{model}`: {key} = \"{text}\"",
            gib(*bytes)
        ),
        Fix::MoveBytes { bytes } => format!("; move ≥ {} GiB to a donor", gib(*bytes)),
        Fix::Shrink { text } => format!("; {text}"),
    };
    format!(
        "{device} needs {} GiB: {}; {has}{fix}",
        gib(need),
        parts.join(" + ")
    )
}

/// All the reasons a plan was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanErrors(pub Vec<PlanError>);

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanErrors {}

impl From<PlanError> for PlanErrors {
    fn from(e: PlanError) -> Self {
        PlanErrors(vec![e])
    }
}
