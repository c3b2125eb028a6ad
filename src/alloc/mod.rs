//! The allocation language: how one model's weights are spread over devices.
//!
//! What users write (see `docs/allocation.md` and the README for the reference):
//! - DisTorch2 expert strings, `entry(';' entry)*` with `entry := device ',' value`:
//!   bytes mode `cuda:0,2.5gb;cpu,*`, ratio mode `cuda:0,25%;cpu,75%`, fraction mode
//!   `cuda:0,0.1;cpu,0.5` (of each device's total memory). The mode is decided from the
//!   values' syntax (a unit or a bare byte count → bytes, `%` → ratio, a decimal fraction → fraction),
//!   never from letters in device names.
//! - `virtual_vram` + `donor` (manifest keys): move that many bytes of weights off the compute
//!   device to the donor.
//! - `auto`: the planner picks the fastest placement that fits.
//! - `overrides` (manifest key): regex on tensor or unit names → device, first match wins.
//!
//! This module holds the parsed value. Turning it into per-device byte quotas for a given
//! model and machine is the planner's job ([`crate::plan`]).

use crate::device::DeviceName;
use crate::units::ByteSize;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Absolute sizes (`2.5gb`), at most one wildcard `*` taking the remainder.
    Bytes,
    /// Shares normalised by their sum (`25%`), at most one wildcard `*` taking what is left of 100%.
    Ratio,
    /// Fractions of each device's total memory (`0.1`).
    Fraction,
}

/// An expert string: entries in the order the user wrote them (the order is kept: it is the
/// order in which devices are filled).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertAllocation {
    pub mode: Mode,
    pub entries: Vec<Entry>,
}

/// One `device,value` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub device: DeviceName,
    /// `None` for a bare `*`.
    pub value: Option<Value>,
    /// `*` present (bare, or after a value as in DisTorch's `cpu,5gb*`): this device takes the
    /// remainder of the model.
    pub wildcard: bool,
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

/// `overrides = [{ pattern = "single_blocks\\.(3[0-7])\\..*", device = "cpu" }]`: tensors or
/// units whose name matches `pattern` (a full match) are placed on `device`; first match wins.
#[derive(Debug, Clone)]
pub struct Override {
    pub pattern: regex::Regex,
    pub device: DeviceName,
}
