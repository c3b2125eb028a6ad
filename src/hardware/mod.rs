//! The machine as a value: devices (memory, bf16 compute rate) and directed links (GB/s), from
//! `mgpu probe` ([`probe`](mod@probe)) on the real machine or a hardware TOML file ([`file`](mod@file)) anywhere, so
//! plans can be made on a laptop or in CI for a server.
//!
//! [`Hardware`] holds only what was measured or written down. What was not is filled in by the
//! lookups [`Hardware::link`], [`Hardware::disk_read`] and [`Hardware::tflops`], which return the
//! documented defaults (PCIe 4.0 x16 host↔GPU 25 GB/s, NVLink 50 GB/s, PCIe peer 20 GB/s, disk
//! 2 GB/s, per-GPU compute rates) flagged as assumed, so every plan can say which of its numbers
//! are measured and which are guesses. `disk` is never a device entry: it is always present, and
//! a `[[links]] from = "disk"` entry sets its read bandwidth. The planner ([`crate::plan`])
//! reads hardware only through this module.

pub mod cpu_bench;
pub mod file;
pub mod probe;

#[cfg(feature = "cuda")]
pub mod cuda;

use std::collections::BTreeSet;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::device::DeviceName;
use crate::units::{ByteSize, GIB};

/// Host→GPU and GPU→host copies from pinned memory over PCIe 4.0 x16, when not measured.
pub const DEFAULT_HOST_GPU_GBPS: f64 = 25.0;
/// GPU→GPU over NVLink, when declared (`kind = "nvlink"`) but not measured. Deliberately
/// conservative: 2× H100 NV18 measured 396 GB/s (`shared/reference/anchors.md`).
pub const DEFAULT_NVLINK_GBPS: f64 = 50.0;
/// GPU→GPU peer copies over PCIe, the default for GPU pairs nothing is known about.
pub const DEFAULT_PCIE_PEER_GBPS: f64 = 20.0;
/// Reading weights from the memory-mapped file (NVMe-class disk), when not measured.
pub const DEFAULT_DISK_GBPS: f64 = 2.0;
/// bf16 matrix-product rate assumed for a CPU, when not measured (a small number on purpose).
pub const DEFAULT_CPU_TFLOPS: f64 = 0.5;
/// bf16 matrix-product rate assumed for a GPU whose name is not in [`KNOWN_GPUS`].
pub const DEFAULT_GPU_TFLOPS: f64 = 50.0;

/// Memory kept free on each CUDA device for the CUDA context, cuBLAS workspaces and allocator
/// slack; plans never place anything in it.
pub const CUDA_RESERVE: ByteSize = ByteSize(GIB);
/// Memory kept free on the host for the operating system and mgpu itself.
pub const CPU_RESERVE: ByteSize = ByteSize(2 * GIB);

/// bf16 dense matrix-product rates assumed for GPUs by name (a case-insensitive substring of the
/// device label), first match wins. Only the H100 SXM number is measured (anchors.md: 791
/// TFLOP/s for an 8192³ product); the others are about 75% of the datasheet's dense bf16 peak.
pub const KNOWN_GPUS: &[(&str, f64)] = &[
    ("H100 80GB HBM3", 790.0),
    ("H200", 790.0),
    ("H100", 550.0),
    ("A100", 230.0),
    ("L40S", 270.0),
    ("RTX 6000 Ada", 270.0),
    ("RTX 4090", 120.0),
    ("RTX A6000", 115.0),
    ("RTX 3090", 53.0),
];

/// A machine: its devices and the measured or declared links between them.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Hardware {
    pub devices: Vec<Device>,
    pub links: Vec<Link>,
}

/// One device: the host (`cpu`) or a CUDA GPU. Never `disk`, which is implicit.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Device {
    pub name: DeviceName,
    /// Total memory.
    pub memory: ByteSize,
    /// Memory free when probed; plans use it instead of `memory` when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free: Option<ByteSize>,
    /// Measured bf16 matrix-product rate (`mgpu probe --bench`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tflops_bf16: Option<f64>,
    /// What the device is, e.g. `NVIDIA H100 80GB HBM3` or the CPU model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// CUDA compute capability (major, minor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<(u32, u32)>,
}

/// What carries a link, when its rate was not measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// PCIe: host↔GPU, or GPU↔GPU peer copies through the PCIe switch.
    Pcie,
    /// NVLink between two GPUs.
    Nvlink,
}

/// A directed link. `gbps` is decimal GB/s (10⁹ bytes per second), as benchmarks print it.
/// At least one of `gbps` (measured) and `kind` (then the kind's default rate is assumed) is set.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Link {
    pub from: DeviceName,
    pub to: DeviceName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<LinkKind>,
}

/// Where a rate came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "basis", content = "detail")]
pub enum Basis {
    /// Written in the hardware file or measured by `probe --bench`.
    Measured,
    /// Not measured; the text says what was assumed and why.
    Assumed(String),
}

impl Basis {
    pub fn is_assumed(&self) -> bool {
        matches!(self, Basis::Assumed(_))
    }
}

/// A rate with its provenance: GB/s for links, TFLOP/s for compute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    pub value: f64,
    pub basis: Basis,
}

impl Rate {
    fn measured(value: f64) -> Self {
        Rate {
            value,
            basis: Basis::Measured,
        }
    }
    fn assumed(value: f64, why: impl Into<String>) -> Self {
        Rate {
            value,
            basis: Basis::Assumed(why.into()),
        }
    }
    pub fn is_assumed(&self) -> bool {
        self.basis.is_assumed()
    }
}

/// A problem with a hardware description. `device`/`link` are indices into the file's
/// `[[devices]]`/`[[links]]` arrays so a reader with spans can point at the entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HardwareError {
    #[error("device `{name}` is listed twice (entries {first} and {second})")]
    DuplicateDevice {
        name: DeviceName,
        first: usize,
        second: usize,
    },
    #[error("`disk` is not a device entry: it is always present; set its read bandwidth with [[links]] from = \"disk\", to = \"cpu\", gbps = N")]
    DiskDevice { device: usize },
    #[error("device `{name}` has no memory (memory = 0)")]
    ZeroMemory { name: DeviceName, device: usize },
    #[error("device `{name}`: free memory {free} is more than its total memory {memory}")]
    FreeExceedsMemory {
        name: DeviceName,
        free: ByteSize,
        memory: ByteSize,
        device: usize,
    },
    #[error("device `{name}`: tflops_bf16 = {value} must be a positive number")]
    BadTflops {
        name: DeviceName,
        value: f64,
        device: usize,
    },
    #[error("link {from} → {to} names `{missing}`, which is not a device here (devices: {known}){}", if *missing == DeviceName::Disk { "; `disk` can only be a link's `from`" } else { "" })]
    UnknownLinkEnd {
        from: DeviceName,
        to: DeviceName,
        missing: DeviceName,
        known: String,
        link: usize,
    },
    #[error("link {from} → {to}: gbps = {value} must be a positive number of GB/s (10⁹ bytes/s)")]
    BadGbps {
        from: DeviceName,
        to: DeviceName,
        value: f64,
        link: usize,
    },
    #[error("link {from} → {to} has neither `gbps` (measured) nor `kind` (\"pcie\" or \"nvlink\", then a default rate is assumed)")]
    NoRate {
        from: DeviceName,
        to: DeviceName,
        link: usize,
    },
    #[error("link {from} → {to} goes from a device to itself")]
    SelfLink {
        from: DeviceName,
        to: DeviceName,
        link: usize,
    },
    #[error("link {from} → {to} is listed twice (entries {first} and {second})")]
    DuplicateLink {
        from: DeviceName,
        to: DeviceName,
        first: usize,
        second: usize,
    },
    #[error("link {from} → {to}: kind = \"nvlink\" joins two GPUs; use \"pcie\" for host links")]
    NvlinkToHost {
        from: DeviceName,
        to: DeviceName,
        link: usize,
    },
}

impl HardwareError {
    /// The `[[devices]]` or `[[links]]` entry at fault, for pointing into a file.
    pub fn entry(&self) -> (&'static str, usize) {
        use HardwareError::*;
        match *self {
            DuplicateDevice { second, .. } => ("devices", second),
            DiskDevice { device } | ZeroMemory { device, .. } => ("devices", device),
            FreeExceedsMemory { device, .. } | BadTflops { device, .. } => ("devices", device),
            UnknownLinkEnd { link, .. } | BadGbps { link, .. } | NoRate { link, .. } => {
                ("links", link)
            }
            SelfLink { link, .. } | NvlinkToHost { link, .. } => ("links", link),
            DuplicateLink { second, .. } => ("links", second),
        }
    }
}

impl Hardware {
    /// Checks the description; returns every problem found, not only the first.
    pub fn validate(&self) -> Result<(), Vec<HardwareError>> {
        let mut errs = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            if d.name == DeviceName::Disk {
                errs.push(HardwareError::DiskDevice { device: i });
                continue;
            }
            if let Some(first) = self.devices[..i].iter().position(|e| e.name == d.name) {
                errs.push(HardwareError::DuplicateDevice {
                    name: d.name,
                    first,
                    second: i,
                });
            }
            if d.memory.0 == 0 {
                errs.push(HardwareError::ZeroMemory {
                    name: d.name,
                    device: i,
                });
            }
            if let Some(free) = d.free.filter(|f| *f > d.memory) {
                errs.push(HardwareError::FreeExceedsMemory {
                    name: d.name,
                    free,
                    memory: d.memory,
                    device: i,
                });
            }
            if let Some(t) = d.tflops_bf16.filter(|t| !(t.is_finite() && *t > 0.0)) {
                errs.push(HardwareError::BadTflops {
                    name: d.name,
                    value: t,
                    device: i,
                });
            }
        }
        let known = || {
            let mut names: Vec<String> = self
                .devices
                .iter()
                .filter(|d| d.name != DeviceName::Disk)
                .map(|d| d.name.to_string())
                .collect();
            names.push("disk (as `from` only)".into());
            names.join(", ")
        };
        for (i, l) in self.links.iter().enumerate() {
            let (from, to) = (l.from, l.to);
            for end in [from, to] {
                let ok = if end == DeviceName::Disk {
                    end == from
                } else {
                    self.device(end).is_some()
                };
                if !ok {
                    errs.push(HardwareError::UnknownLinkEnd {
                        from,
                        to,
                        missing: end,
                        known: known(),
                        link: i,
                    });
                }
            }
            if from == to {
                errs.push(HardwareError::SelfLink { from, to, link: i });
            }
            if let Some(first) = self.links[..i]
                .iter()
                .position(|m| m.from == from && m.to == to)
            {
                errs.push(HardwareError::DuplicateLink {
                    from,
                    to,
                    first,
                    second: i,
                });
            }
            match (l.gbps, l.kind) {
                (None, None) => errs.push(HardwareError::NoRate { from, to, link: i }),
                (Some(g), _) if !(g.is_finite() && g > 0.0) => errs.push(HardwareError::BadGbps {
                    from,
                    to,
                    value: g,
                    link: i,
                }),
                _ => {}
            }
            if l.kind == Some(LinkKind::Nvlink) && !(from.is_cuda() && to.is_cuda()) {
                errs.push(HardwareError::NvlinkToHost { from, to, link: i });
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    pub fn device(&self, name: DeviceName) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// Whether `name` can hold weights or compute here (`disk` always can hold weights).
    pub fn has(&self, name: DeviceName) -> bool {
        name == DeviceName::Disk || self.device(name).is_some()
    }

    /// Device names for messages: `cuda:0, cuda:1, cpu, disk`.
    pub fn names(&self) -> String {
        let mut names: Vec<String> = self.devices.iter().map(|d| d.name.to_string()).collect();
        names.push("disk".into());
        names.join(", ")
    }

    /// Sorted set of device names (without `disk`).
    pub fn device_names(&self) -> BTreeSet<DeviceName> {
        self.devices.iter().map(|d| d.name).collect()
    }

    /// The rate of copies from `from` to `to` (both `cpu` or `cuda:N`), measured if the file
    /// lists the link, else the documented default for that pair.
    pub fn link(&self, from: DeviceName, to: DeviceName) -> Rate {
        let find = |a, b| self.links.iter().find(|l| l.from == a && l.to == b);
        if let Some(l) = find(from, to) {
            return match (l.gbps, l.kind) {
                (Some(g), _) => Rate::measured(g),
                (None, Some(k)) => default_rate(from, to, Some(k)),
                (None, None) => default_rate(from, to, None),
            };
        }
        if let Some(g) = find(to, from).and_then(|l| l.gbps) {
            return Rate::assumed(g, format!("same as the measured {to} → {from}"));
        }
        let kind = find(to, from).and_then(|l| l.kind);
        default_rate(from, to, kind)
    }

    /// The rate at which weights are read from the memory-mapped file: the `from = "disk"`
    /// link (the one to `cpu` if several), else [`DEFAULT_DISK_GBPS`].
    pub fn disk_read(&self) -> Rate {
        let disk: Vec<&Link> = self
            .links
            .iter()
            .filter(|l| l.from == DeviceName::Disk)
            .collect();
        let pick = disk
            .iter()
            .find(|l| l.to == DeviceName::Cpu)
            .or(disk.first());
        match pick.and_then(|l| l.gbps) {
            Some(g) => Rate::measured(g),
            None => Rate::assumed(DEFAULT_DISK_GBPS, "NVMe-class disk read, not measured"),
        }
    }

    /// bf16 matrix-product rate of `name` in TFLOP/s: measured if known, else assumed from
    /// the device label ([`KNOWN_GPUS`]) or the CPU/GPU default.
    pub fn tflops(&self, name: DeviceName) -> Rate {
        let dev = self.device(name);
        if let Some(t) = dev.and_then(|d| d.tflops_bf16) {
            return Rate::measured(t);
        }
        match name {
            DeviceName::Cuda(_) => {
                let label = dev.and_then(|d| d.label.as_deref()).unwrap_or("");
                let lower = label.to_ascii_lowercase();
                match KNOWN_GPUS
                    .iter()
                    .find(|(k, _)| lower.contains(&k.to_ascii_lowercase()))
                {
                    Some((k, t)) => Rate::assumed(*t, format!("typical for {k}, not measured")),
                    None if label.is_empty() => {
                        Rate::assumed(DEFAULT_GPU_TFLOPS, "unknown GPU model, conservative")
                    }
                    None => Rate::assumed(
                        DEFAULT_GPU_TFLOPS,
                        format!("{label} not in the table, conservative"),
                    ),
                }
            }
            _ => Rate::assumed(DEFAULT_CPU_TFLOPS, "CPU, not measured"),
        }
    }

    /// Memory a plan may fill on `name`: free (or total) memory less the reserve.
    /// `None` for devices not on the machine; `disk` is unbounded.
    pub fn usable(&self, name: DeviceName) -> Option<Usable> {
        if name == DeviceName::Disk {
            return Some(Usable {
                capacity: ByteSize(u64::MAX),
                reserve: ByteSize(0),
                usable: ByteSize(u64::MAX),
                from_free: false,
            });
        }
        let d = self.device(name)?;
        let capacity = d.free.unwrap_or(d.memory);
        let reserve = if name.is_cuda() {
            CUDA_RESERVE
        } else {
            CPU_RESERVE
        };
        Some(Usable {
            capacity,
            reserve,
            usable: ByteSize(capacity.0.saturating_sub(reserve.0)),
            from_free: d.free.is_some(),
        })
    }
}

/// How much of a device a plan may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usable {
    /// Free memory if probed, else total memory.
    pub capacity: ByteSize,
    pub reserve: ByteSize,
    /// `capacity − reserve`.
    pub usable: ByteSize,
    /// Whether `capacity` is the probed free memory.
    pub from_free: bool,
}

fn default_rate(from: DeviceName, to: DeviceName, kind: Option<LinkKind>) -> Rate {
    use DeviceName::*;
    match (from, to, kind) {
        (Cuda(_), Cuda(_), Some(LinkKind::Nvlink)) => Rate::assumed(
            DEFAULT_NVLINK_GBPS,
            "NVLink default, conservative (2×H100 NV18 measured 396 GB/s): measure with `mgpu probe --bench`",
        ),
        (Cuda(_), Cuda(_), _) => Rate::assumed(DEFAULT_PCIE_PEER_GBPS, "PCIe peer copy default"),
        (Disk, _, _) => Rate::assumed(DEFAULT_DISK_GBPS, "NVMe-class disk read, not measured"),
        _ => Rate::assumed(DEFAULT_HOST_GPU_GBPS, "PCIe 4.0 x16 pinned-copy default"),
    }
}

impl fmt::Display for Hardware {
    /// A short table: one line per device, then one per link.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<8} {:>10} {:>10} {:>16}  label",
            "device", "memory", "free", "bf16 TFLOP/s"
        )?;
        for d in &self.devices {
            let t = self.tflops(d.name);
            let t = match (t.is_assumed(), t.value < 10.0) {
                (true, true) => format!("~{:.1} (assumed)", t.value),
                (true, false) => format!("~{:.0} (assumed)", t.value),
                (false, _) => format!("{:.1}", t.value),
            };
            writeln!(
                f,
                "{:<8} {:>10} {:>10} {:>16}  {}{}",
                d.name.to_string(),
                d.memory.human(),
                d.free.map(|x| x.human()).unwrap_or_else(|| "-".into()),
                t,
                d.label.as_deref().unwrap_or("-"),
                d.compute_capability
                    .map(|(a, b)| format!(" (sm_{a}{b})"))
                    .unwrap_or_default(),
            )?;
        }
        if !self.links.is_empty() {
            writeln!(f, "{:<8} {:<8} {:>10}", "from", "to", "GB/s")?;
        }
        for l in &self.links {
            let rate = self.link_rate_for_display(l);
            writeln!(
                f,
                "{:<8} {:<8} {:>10}",
                l.from.to_string(),
                l.to.to_string(),
                rate
            )?;
        }
        Ok(())
    }
}

impl Hardware {
    fn link_rate_for_display(&self, l: &Link) -> String {
        match (l.gbps, l.kind) {
            (Some(g), _) => format!("{g:.1}"),
            (None, _) if l.from == DeviceName::Disk => format!("~{DEFAULT_DISK_GBPS} (assumed)"),
            (None, _) => format!("~{} (assumed)", self.link(l.from, l.to).value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn dev(name: &str, gib: u64) -> Device {
        Device {
            name: name.parse().unwrap(),
            memory: ByteSize::gib(gib),
            free: None,
            tflops_bf16: None,
            label: None,
            compute_capability: None,
        }
    }

    fn link(from: &str, to: &str, gbps: Option<f64>, kind: Option<LinkKind>) -> Link {
        Link {
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
            gbps,
            kind,
        }
    }

    #[test]
    fn validation_collects_every_problem() {
        let mut free = dev("cuda:1", 24);
        free.free = Some(ByteSize::gib(25));
        let mut bad_t = dev("cpu", 64);
        bad_t.tflops_bf16 = Some(f64::NAN);
        let hw = Hardware {
            devices: vec![
                dev("cuda:0", 80),
                dev("cuda:0", 80),
                dev("disk", 1),
                free,
                bad_t,
                dev("cuda:2", 0),
            ],
            links: vec![
                link("cpu", "cuda:0", Some(0.0), None),
                link("cpu", "cuda:7", Some(5.0), None),
                link("cpu", "cuda:0", Some(5.0), None),
                link("cuda:0", "cuda:1", None, None),
                link("cuda:0", "cuda:0", Some(5.0), None),
                link("cpu", "disk", Some(5.0), None),
                link("cpu", "cuda:1", None, Some(LinkKind::Nvlink)),
            ],
        };
        let errs = hw.validate().unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let want = [
            "listed twice (entries 0 and 1)",
            "`disk` is not a device entry",
            "free memory 25GiB is more than its total memory 24GiB",
            "tflops_bf16 = NaN must be a positive number",
            "`cuda:2` has no memory",
            "gbps = 0 must be a positive number",
            "names `cuda:7`, which is not a device here",
            "link cpu → cuda:0 is listed twice (entries 0 and 2)",
            "has neither `gbps`",
            "goes from a device to itself",
            "`disk` can only be a link's `from`",
            "kind = \"nvlink\" joins two GPUs",
        ];
        for w in want {
            assert!(
                text.iter().any(|t| t.contains(w)),
                "missing {w:?} in {text:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{text:#?}");
    }

    #[test]
    fn link_lookup_measured_reverse_declared_default() {
        let hw = Hardware {
            devices: vec![
                dev("cuda:0", 80),
                dev("cuda:1", 80),
                dev("cuda:2", 80),
                dev("cpu", 128),
            ],
            links: vec![
                link("cpu", "cuda:0", Some(55.1), None),
                link("cuda:1", "cuda:0", None, Some(LinkKind::Nvlink)),
                link("cuda:2", "cuda:0", Some(396.0), None),
                link("disk", "cpu", Some(6.5), None),
            ],
        };
        hw.validate().unwrap();
        assert_eq!(
            hw.link(DeviceName::Cpu, DeviceName::Cuda(0)),
            Rate::measured(55.1)
        );
        let r = hw.link(DeviceName::Cuda(0), DeviceName::Cpu);
        assert!(r.is_assumed() && r.value == 55.1, "{r:?}");
        let r = hw.link(DeviceName::Cuda(1), DeviceName::Cuda(0));
        assert!(r.is_assumed() && r.value == DEFAULT_NVLINK_GBPS, "{r:?}");
        // Declared in one direction only: the other direction inherits the kind.
        assert_eq!(
            hw.link(DeviceName::Cuda(0), DeviceName::Cuda(1)).value,
            DEFAULT_NVLINK_GBPS
        );
        assert_eq!(
            hw.link(DeviceName::Cuda(1), DeviceName::Cuda(2)).value,
            DEFAULT_PCIE_PEER_GBPS
        );
        assert_eq!(
            hw.link(DeviceName::Cpu, DeviceName::Cuda(1)).value,
            DEFAULT_HOST_GPU_GBPS
        );
        assert_eq!(hw.disk_read(), Rate::measured(6.5));
        let none = Hardware {
            devices: vec![dev("cpu", 8)],
            links: vec![],
        };
        assert!(none.disk_read().is_assumed());
    }

    #[test]
    fn tflops_lookup() {
        let mut h100 = dev("cuda:0", 80);
        h100.label = Some("NVIDIA H100 80GB HBM3".into());
        let mut g4090 = dev("cuda:1", 24);
        g4090.label = Some("NVIDIA GeForce RTX 4090".into());
        let mut measured = dev("cuda:2", 24);
        measured.tflops_bf16 = Some(123.0);
        let hw = Hardware {
            devices: vec![h100, g4090, measured, dev("cuda:3", 8), dev("cpu", 64)],
            links: vec![],
        };
        assert_eq!(hw.tflops(DeviceName::Cuda(0)).value, 790.0);
        assert!(hw.tflops(DeviceName::Cuda(0)).is_assumed());
        assert_eq!(hw.tflops(DeviceName::Cuda(1)).value, 120.0);
        assert_eq!(hw.tflops(DeviceName::Cuda(2)), Rate::measured(123.0));
        assert_eq!(hw.tflops(DeviceName::Cuda(3)).value, DEFAULT_GPU_TFLOPS);
        assert_eq!(hw.tflops(DeviceName::Cpu).value, DEFAULT_CPU_TFLOPS);
    }

    #[test]
    fn usable_subtracts_reserve_from_free_or_total() {
        let mut g = dev("cuda:0", 24);
        g.free = Some(ByteSize::gib(20));
        let hw = Hardware {
            devices: vec![g, dev("cpu", 64)],
            links: vec![],
        };
        assert_eq!(
            hw.usable(DeviceName::Cuda(0)).unwrap().usable,
            ByteSize::gib(19)
        );
        assert_eq!(
            hw.usable(DeviceName::Cpu).unwrap().usable,
            ByteSize::gib(62)
        );
        assert_eq!(hw.usable(DeviceName::Cuda(5)), None);
        assert_eq!(
            hw.usable(DeviceName::Disk).unwrap().usable,
            ByteSize(u64::MAX)
        );
    }
}
