//! The allocation language: how one model's weights are spread over devices.
//!
//! What users write (see `docs/allocation.md` and the README for the reference):
//! - DisTorch2 expert strings, `entry(';' entry)*` with `entry := device ',' value`:
//!   bytes mode `cuda:0,2.5gb;cpu,*`, ratio mode `cuda:0,25%;cpu,75%`, fraction mode
//!   `cuda:0,0.1;cpu,0.5` (of each device's total memory). The mode is decided from the
//!   values' syntax (a unit or a bare byte count → bytes, `%` → ratio, a decimal fraction →
//!   fraction), never from letters in device names.
//! - `virtual_vram` + `donor` (manifest keys): move that many bytes of weights off the compute
//!   device to the donor. Written as one string (in plans, JSON, `Display`) it reads
//!   `virtual_vram=12GiB;donor=cpu`, which [`Allocation::from_str`] accepts too.
//! - `auto`: the planner picks the fastest placement that fits.
//! - `overrides` (manifest key): regex on tensor or unit names → device, first match wins.
//!
//! [`parse`] is the one parser (the manifest, `FromStr` and serde all go through it). Its errors
//! carry byte ranges into the string so callers can underline the bad part; every parsed
//! [`Entry`] keeps the ranges of its device and value ([`EntrySpan`]) so later stages (the
//! planner: "cuda:3 is not on this machine") can point at them too.
//!
//! This module holds the parsed value. Turning it into per-device byte quotas for a given
//! model and machine is the planner's job ([`crate::plan`]).

mod parse;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::device::DeviceName;
use crate::units::ByteSize;

pub(crate) use parse::{
    device_help as parse_device_help, device_message as parse_device_message,
    size_message as parse_size_message,
};
pub use parse::{parse, parse_all, AllocError, AllocErrorKind, ParseAllocationError};

/// A parsed allocation for one model.
#[derive(Debug, Clone, PartialEq)]
pub enum Allocation {
    /// `"auto"`: the planner chooses.
    Auto,
    /// A DisTorch2 expert string.
    Expert(ExpertAllocation),
    /// `virtual_vram = SIZE`, `donor = DEVICE`: this many bytes of weights leave the compute
    /// device for the donor (default donor `cpu`); the compute device keeps the rest.
    VirtualVram { bytes: ByteSize, donor: DeviceName },
}

/// The mode of an expert string, decided from the syntax of its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Absolute sizes (`2.5gb`), at most one wildcard `*` taking the remainder.
    Bytes,
    /// Shares normalised by their sum (`25%`), at most one wildcard `*` taking what is left of 100%.
    Ratio,
    /// Fractions of each device's total memory (`0.1`).
    Fraction,
}

impl Mode {
    /// How a value of this mode is called in messages: "a size", "a percentage", "a fraction".
    pub fn noun(self) -> &'static str {
        match self {
            Mode::Bytes => "a size",
            Mode::Ratio => "a percentage",
            Mode::Fraction => "a fraction",
        }
    }
}

/// An expert string: entries in the order the user wrote them (the order is kept: it is the
/// order in which devices are filled).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertAllocation {
    pub mode: Mode,
    pub entries: Vec<Entry>,
}

/// One `device,value` entry.
///
/// Equality ignores [`Entry::span`]: two entries are equal when they mean the same thing,
/// wherever they were written.
#[derive(Debug, Clone)]
pub struct Entry {
    pub device: DeviceName,
    /// `None` for a bare `*`.
    pub value: Option<Value>,
    /// `*` present (bare, or after a value as in DisTorch's `cpu,5gb*`): this device takes the
    /// remainder of the model.
    pub wildcard: bool,
    /// Where the entry was written in the allocation string (all zero for entries built in
    /// code).
    pub span: EntrySpan,
}

/// Byte ranges of an entry's parts in the allocation string it was parsed from. Ranges are
/// relative to the string's content (not to a file): a manifest maps them into the file with
/// [`crate::manifest::Manifest::diagnostic_at`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntrySpan {
    /// The whole `device,value` entry, trimmed.
    pub entry: Range<usize>,
    /// The device name.
    pub device: Range<usize>,
    /// The value, including a trailing `*`.
    pub value: Range<usize>,
}

impl Entry {
    /// An entry built in code (no source span).
    pub fn new(device: DeviceName, value: Option<Value>, wildcard: bool) -> Self {
        Entry {
            device,
            value,
            wildcard,
            span: EntrySpan::default(),
        }
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.device == other.device && self.value == other.value && self.wildcard == other.wildcard
    }
}

/// A value in an expert string; its variant matches the string's [`Mode`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Bytes(ByteSize),
    /// Percent as written (`25%` → 25.0).
    Percent(f64),
    /// Fraction of the device's total memory as written (`0.1`).
    Fraction(f64),
}

impl Value {
    pub fn mode(self) -> Mode {
        match self {
            Value::Bytes(_) => Mode::Bytes,
            Value::Percent(_) => Mode::Ratio,
            Value::Fraction(_) => Mode::Fraction,
        }
    }
}

impl Allocation {
    /// The expert string's mode, if this is one.
    pub fn mode(&self) -> Option<Mode> {
        match self {
            Allocation::Expert(e) => Some(e.mode),
            _ => None,
        }
    }

    /// Every device this allocation names explicitly, in the order written (the donor for
    /// virtual VRAM; nothing for `auto`).
    pub fn devices(&self) -> Vec<DeviceName> {
        match self {
            Allocation::Auto => Vec::new(),
            Allocation::Expert(e) => e.entries.iter().map(|e| e.device).collect(),
            Allocation::VirtualVram { donor, .. } => vec![*donor],
        }
    }
}

impl ExpertAllocation {
    /// The entry that takes the remainder, if any.
    pub fn wildcard(&self) -> Option<&Entry> {
        self.entries.iter().find(|e| e.wildcard)
    }

    /// The entry for `device`, if named.
    pub fn entry(&self, device: DeviceName) -> Option<&Entry> {
        self.entries.iter().find(|e| e.device == device)
    }
}

/// Overrides placement for tensors or units whose name matches a regex.
///
/// In a manifest: `overrides = [{ pattern = "single_blocks\\.(3[0-7])", device = "cpu" }]`.
/// `pattern` is matched against placement-unit names (`single_blocks.37`) and tensor names
/// (`single_blocks.37.linear1.weight`), always as a full match (it is compiled anchored,
/// `^(?:pattern)$`, as [`Override::new`] does); the first override that matches wins, like
/// llama.cpp's `-ot`.
#[derive(Debug, Clone)]
pub struct Override {
    /// The anchored regex (`^(?:…)$`); [`Override::pattern_str`] gives the pattern as written.
    pub pattern: regex::Regex,
    pub device: DeviceName,
}

impl Override {
    /// Compiles `pattern` anchored at both ends.
    pub fn new(pattern: &str, device: DeviceName) -> Result<Self, regex::Error> {
        Ok(Override {
            pattern: regex::Regex::new(&anchor(pattern))?,
            device,
        })
    }

    /// Whether `name` (a unit or tensor name) matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.is_match(name)
    }

    /// The pattern as the user wrote it (without the anchors [`Override::new`] adds).
    pub fn pattern_str(&self) -> &str {
        let s = self.pattern.as_str();
        s.strip_prefix("^(?:")
            .and_then(|s| s.strip_suffix(")$"))
            .unwrap_or(s)
    }

    /// The device of the first override in `overrides` that matches `name`.
    pub fn first_match(overrides: &[Override], name: &str) -> Option<DeviceName> {
        overrides.iter().find(|o| o.matches(name)).map(|o| o.device)
    }
}

/// `^(?:pattern)$`: the anchored form every override is compiled to.
pub fn anchor(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

impl PartialEq for Override {
    fn eq(&self, other: &Self) -> bool {
        self.pattern.as_str() == other.pattern.as_str() && self.device == other.device
    }
}

impl Serialize for Override {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Override", 2)?;
        st.serialize_field("pattern", self.pattern_str())?;
        st.serialize_field("device", &self.device)?;
        st.end()
    }
}

// ---------------------------------------------------------------------------------------------
// Display: the canonical spelling, which parses back to an equal value.

/// A fraction always carries a decimal point (`1.0`, not `1`, which would be one byte).
fn fmt_fraction(f: &mut fmt::Formatter<'_>, v: f64) -> fmt::Result {
    let s = v.to_string();
    if s.contains('.') {
        f.write_str(&s)
    } else {
        write!(f, "{s}.0")
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Bytes(b) => write!(f, "{b}"),
            Value::Percent(p) => write!(f, "{p}%"),
            Value::Fraction(v) => fmt_fraction(f, v),
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},", self.device)?;
        if let Some(v) = self.value {
            write!(f, "{v}")?;
        }
        if self.wildcard {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl fmt::Display for ExpertAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allocation::Auto => f.write_str("auto"),
            Allocation::Expert(e) => write!(f, "{e}"),
            Allocation::VirtualVram { bytes, donor } => {
                write!(f, "virtual_vram={bytes};donor={donor}")
            }
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Bytes => "bytes",
            Mode::Ratio => "ratio",
            Mode::Fraction => "fraction",
        })
    }
}

impl FromStr for Allocation {
    type Err = ParseAllocationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_all(s).map_err(|errors| ParseAllocationError {
            input: s.to_string(),
            errors,
        })
    }
}

impl Serialize for Allocation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Allocation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Allocation;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an allocation string: \"auto\", sizes (\"cuda:0,8gb;cpu,*\"), percentages \
                     (\"cuda:0,25%;cpu,75%\") or fractions (\"cuda:0,0.5;cpu,0.25\")",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Allocation, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A device inside an allocation entry, for [`ALLOCATION_PATTERN`] (no anchors, no spaces).
const DEV: &str = r"([cC][pP][uU]|[dD][iI][sS][kK]|[cC][uU][dD][aA](:[0-9]+)?)";
/// A value: a size, percentage, fraction or `*`, possibly a size followed by `*`.
const VAL: &str =
    r"(\*|\+?([0-9]+\.?[0-9]*|\.[0-9]+)\s*(%|[bB]|[kKmMgGtT]([bB]|[iI][bB])?)?\s*\*?)";

/// The JSON schema's pattern for allocation strings. It accepts every string [`parse`]
/// accepts (a property test checks this) and is looser than the parser: mixing modes,
/// duplicate devices and out-of-range values are caught by `mgpu check`.
pub static ALLOCATION_PATTERN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let entry = format!(r"\s*{DEV}\s*,\s*{VAL}\s*");
    let size = crate::units::SIZE_PATTERN
        .trim_start_matches('^')
        .trim_end_matches('$');
    let virt = format!(
        r"\s*virtual_vram\s*=\s*{size}\s*(;\s*donor\s*=\s*{DEV}\s*)?;?\s*|\s*donor\s*=\s*{DEV}\s*;\s*virtual_vram\s*=\s*{size}\s*;?\s*"
    );
    format!(r"^(\s*[aA][uU][tT][oO]\s*|{entry}(;{entry})*;?\s*|{virt})$")
});

impl JsonSchema for Allocation {
    fn schema_name() -> Cow<'static, str> {
        "Allocation".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How this model's weights are spread over devices (DisTorch2 \
                expert string). `auto`: the planner picks the fastest placement that fits. \
                Otherwise `device,value` entries separated by `;`, filled in the order written. \
                The kind of value decides the mode: sizes (`cuda:0,8gb;cpu,*`: at most that \
                many bytes per device, units b/kb/mb/gb/tb or KiB/MiB/GiB/TiB, all 1024-based, \
                a bare integer is bytes; `*` marks the one device that takes the remainder, \
                also written `cpu,4gb*`), percentages (`cuda:0,25%;cpu,75%`: shares of the \
                model, normalised by their sum; a `*` device takes what is left of 100%) or \
                fractions (`cuda:0,0.5;cpu,0.25`: that fraction of each device's total memory; \
                no `*`). One mode per string.",
            "type": "string",
            "pattern": *ALLOCATION_PATTERN,
            "examples": ["auto", "cuda:0,8gb;cpu,*", "cuda:0,20GiB;cuda:1,*", "cuda:0,25%;cpu,75%", "cuda:0,0.5;cpu,0.25"]
        })
    }
}
