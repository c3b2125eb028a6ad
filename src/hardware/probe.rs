//! `mgpu probe`: the hardware of the machine mgpu runs on, as a [`Hardware`] value.
//!
//! The host is always probed: total and available RAM from `/proc/meminfo` (Linux) or
//! `sysctl hw.memsize` (macOS/BSD), the CPU model from `/proc/cpuinfo` or `sysctl`. CUDA
//! devices come from `super::cuda` in builds with the `cuda` feature; the CPU build reports
//! none and says so. `--bench` measures copy and compute rates and writes them into the
//! returned hardware as measured links and `tflops_bf16`: GPU rates in CUDA builds, the CPU's
//! product rate and the disk read rate in every build (`super::cpu_bench`).

use std::path::Path;

use schemars::JsonSchema;
use serde::Serialize;

use super::{Device, Hardware, Link};
use crate::device::DeviceName;
use crate::units::{ByteSize, KIB};

/// Whether one GPU can read another's memory directly (`cuDeviceCanAccessPeer`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PeerAccess {
    pub from: DeviceName,
    pub to: DeviceName,
    pub possible: bool,
}

/// Rates measured by `probe --bench`, GB/s for copies and TFLOP/s for the bf16 product.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct BenchResult {
    /// `[GPU, GB/s]`: host→GPU copies from pinned memory.
    pub h2d_pinned: Vec<(DeviceName, f64)>,
    /// `[GPU, GB/s]`: host→GPU copies from pageable memory.
    pub h2d_pageable: Vec<(DeviceName, f64)>,
    /// `[GPU, GB/s]`: host→GPU the way `mgpu run` uploads resident weights: tensors copied from ordinary
    /// memory through two reused page-locked staging buffers (`exec::cuda::upload`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub h2d_staged: Vec<(DeviceName, f64)>,
    /// `[GPU, GB/s]`: GPU→host copies into pinned memory.
    pub d2h_pinned: Vec<(DeviceName, f64)>,
    /// `[from GPU, to GPU, GB/s]`: peer copies.
    pub peer: Vec<(DeviceName, DeviceName, f64)>,
    /// `[device, TFLOP/s]`: each GPU's bf16 8192³ product, the CPU's f32 1024³ product.
    pub tflops: Vec<(DeviceName, f64)>,
    /// The host's memory copies on all cores, GB/s (bytes copied per second; each byte is read
    /// and written once): the bound on filling page-locked staging buffers (any build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_copy_gbps: Option<f64>,
    /// Reading a file back from disk (after dropping it from the page cache), GB/s: the
    /// `disk → cpu` link (any build).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_read_gbps: Option<f64>,
}

/// Version of the `mgpu probe --json` layout (bumped when a field changes meaning).
pub const PROBE_FORMAT: u32 = 1;

/// `mgpu probe --json`: the report with a version (schemas/probe.schema.json).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProbeOutput<'a> {
    pub format: u32,
    pub mgpu_version: String,
    #[serde(flatten)]
    pub report: &'a ProbeReport,
}

impl<'a> ProbeOutput<'a> {
    pub fn new(report: &'a ProbeReport) -> Self {
        ProbeOutput {
            format: PROBE_FORMAT,
            mgpu_version: env!("CARGO_PKG_VERSION").into(),
            report,
        }
    }
}

/// Everything `mgpu probe` found.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ProbeReport {
    pub hardware: Hardware,
    pub peer_access: Vec<PeerAccess>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bench: Option<BenchResult>,
    /// What could not be probed, and why.
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read the host's memory size: {0}; write a hardware file instead (see docs/planning.md)")]
    HostMemory(String),
}

/// Whether this build can see CUDA devices.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// Probes the machine; with `bench`, also measures rates (CUDA builds only).
pub fn probe(bench: bool) -> Result<ProbeReport, ProbeError> {
    probe_in(bench, Path::new("."), super::cpu_bench::DISK_BYTES)
}

/// [`probe`], measuring the disk rate (with `bench`) with a file of `disk_bytes` in
/// `disk_dir`.
pub fn probe_in(bench: bool, disk_dir: &Path, disk_bytes: u64) -> Result<ProbeReport, ProbeError> {
    let cpu = host()?;
    let mut report = ProbeReport {
        hardware: Hardware {
            devices: vec![],
            links: vec![],
        },
        peer_access: vec![],
        bench: None,
        notes: vec![],
    };
    probe_cuda(&mut report, bench);
    report.hardware.devices.push(cpu);
    if bench {
        bench_host(&mut report, disk_dir, disk_bytes);
    }
    if !CUDA_BUILD {
        report.notes.push(
            "this build has no CUDA support (built without `--features cuda`): no GPUs are listed"
                .into(),
        );
        if bench {
            report.notes.push(
                "not measured in this build: GPU copy and compute rates (they need the CUDA build, `cargo build --release --features cuda`)".into(),
            );
        }
    }
    Ok(report)
}

#[cfg(feature = "cuda")]
fn probe_cuda(report: &mut ProbeReport, bench: bool) {
    let p = super::cuda::probe();
    report.hardware.devices.extend(p.devices.iter().cloned());
    report.peer_access = p.peers.clone();
    report.notes.extend(p.notes.iter().cloned());
    if bench && !p.devices.is_empty() {
        let (result, notes) = super::cuda::bench(&p);
        report.notes.extend(notes);
        apply_bench(&mut report.hardware, &result);
        report.bench = Some(result);
    }
}

#[cfg(not(feature = "cuda"))]
fn probe_cuda(_: &mut ProbeReport, _: bool) {}

/// `--bench` on the host (every build): the CPU's f32 product rate becomes the cpu device's
/// compute rate, the disk read rate the `disk → cpu` link.
fn bench_host(report: &mut ProbeReport, disk_dir: &Path, disk_bytes: u64) {
    let mut r = report.bench.take().unwrap_or_default();
    match super::cpu_bench::matmul_tflops() {
        Ok(t) => {
            r.tflops.retain(|(d, _)| *d != DeviceName::Cpu);
            r.tflops.push((DeviceName::Cpu, t));
        }
        Err(e) => report.notes.push(format!("could not measure the CPU: {e}")),
    }
    r.host_copy_gbps = Some(super::cpu_bench::host_copy_gbps());
    match super::cpu_bench::disk_read_gbps(disk_dir, disk_bytes) {
        Ok(g) => r.disk_read_gbps = Some(g),
        Err(e) => report.notes.push(format!(
            "could not measure the disk read rate in {}: {e}",
            disk_dir.display()
        )),
    }
    report.notes.push(format!(
        "the cpu's rate is candle's f32 1024³ matrix product (CPU models compute in f32); \
         host copy is a memcpy between two 512 MiB buffers on every core; \
         the disk rate reads back a file of {} after dropping it from the page cache",
        crate::units::ByteSize(super::cpu_bench::disk_test_bytes(disk_bytes))
    ));
    apply_bench(&mut report.hardware, &r);
    report.bench = Some(r);
}

/// Writes measured rates into `hw`: `tflops_bf16`, cpu↔GPU links from pinned copies (what
/// streaming uses), GPU→GPU links from peer copies.
pub fn apply_bench(hw: &mut Hardware, r: &BenchResult) {
    for &(name, t) in &r.tflops {
        if let Some(d) = hw.devices.iter_mut().find(|d| d.name == name) {
            d.tflops_bf16 = Some(round2(t));
        }
    }
    let mut set = |from, to, gbps: f64| {
        hw.links.retain(|l| !(l.from == from && l.to == to));
        hw.links.push(Link {
            from,
            to,
            gbps: Some(round2(gbps)),
            kind: None,
        });
    };
    for &(d, g) in &r.h2d_pinned {
        set(DeviceName::Cpu, d, g);
    }
    for &(d, g) in &r.d2h_pinned {
        set(d, DeviceName::Cpu, g);
    }
    for &(a, b, g) in &r.peer {
        set(a, b, g);
    }
    if let Some(g) = r.disk_read_gbps {
        set(DeviceName::Disk, DeviceName::Cpu, g);
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The host as a device: RAM total and available, CPU model as the label.
pub fn host() -> Result<Device, ProbeError> {
    let (memory, free) = host_memory()?;
    Ok(Device {
        name: DeviceName::Cpu,
        memory,
        free,
        tflops_bf16: None,
        label: cpu_model(),
        compute_capability: None,
    })
}

fn host_memory() -> Result<(ByteSize, Option<ByteSize>), ProbeError> {
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        return parse_meminfo(&text)
            .ok_or_else(|| ProbeError::HostMemory("/proc/meminfo has no MemTotal line".into()));
    }
    // macOS and the BSDs: total only.
    let out = std::process::Command::new("sysctl")
        .args(["-n", "hw.memsize"])
        .output()
        .map_err(|e| {
            ProbeError::HostMemory(format!("no /proc/meminfo and `sysctl` failed: {e}"))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse::<u64>()
        .map(|b| (ByteSize(b), None))
        .map_err(|_| {
            ProbeError::HostMemory(format!("`sysctl -n hw.memsize` printed {:?}", text.trim()))
        })
}

/// (MemTotal, MemAvailable) from `/proc/meminfo` text (values in kB = KiB).
pub fn parse_meminfo(text: &str) -> Option<(ByteSize, Option<ByteSize>)> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(ByteSize(kb * KIB))
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")))
}

fn cpu_model() -> Option<String> {
    if let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") {
        return parse_cpuinfo(&text);
    }
    let out = std::process::Command::new("sysctl")
        .args(["-n", "machdep.cpu.brand_string"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The CPU model from `/proc/cpuinfo` text, with its logical CPU count:
/// `AMD EPYC 9654 96-Core Processor (×192)`.
pub fn parse_cpuinfo(text: &str) -> Option<String> {
    let value = |l: &str, key: &str| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    };
    let model = text
        .lines()
        .find_map(|l| value(l, "model name").or_else(|| value(l, "Model")))?;
    let n = text
        .lines()
        .filter(|l| value(l, "processor").is_some())
        .count();
    Some(if n > 1 {
        format!("{model} (×{n})")
    } else {
        model
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::GIB;

    #[test]
    fn meminfo() {
        let text = "MemTotal:       131900000 kB\nMemFree:         1000 kB\nMemAvailable:   120000000 kB\n";
        let (t, a) = parse_meminfo(text).unwrap();
        assert_eq!(t, ByteSize(131_900_000 * 1024));
        assert_eq!(a, Some(ByteSize(120_000_000 * 1024)));
        assert_eq!(parse_meminfo("MemFree: 3 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 4 kB\n").unwrap().1, None);
    }

    #[test]
    fn cpuinfo() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9654 96-Core Processor\n";
        assert_eq!(
            parse_cpuinfo(text).as_deref(),
            Some("AMD EPYC 9654 96-Core Processor (×2)")
        );
        assert_eq!(parse_cpuinfo("processor : 0\n"), None);
    }

    #[test]
    fn probes_this_host() {
        let r = probe(false).unwrap();
        let cpu = r
            .hardware
            .device(DeviceName::Cpu)
            .expect("cpu is always probed");
        assert!(cpu.memory.0 > GIB / 4, "{cpu:?}");
        r.hardware.validate().unwrap();
        if !CUDA_BUILD {
            assert!(r.notes.iter().any(|n| n.contains("no CUDA support")));
            let dir = tempfile::tempdir().unwrap();
            let benched = probe_in(true, dir.path(), 8 << 20).unwrap();
            assert!(benched
                .notes
                .iter()
                .any(|n| n.contains("need the CUDA build")));
            assert!(benched
                .hardware
                .device(DeviceName::Cpu)
                .unwrap()
                .tflops_bf16
                .is_some());
        }
    }

    #[test]
    fn bench_results_become_measured_links() {
        let mut hw = Hardware {
            devices: vec![host().unwrap()],
            links: vec![],
        };
        hw.devices.push(Device {
            name: DeviceName::Cuda(0),
            memory: ByteSize::gib(80),
            free: None,
            tflops_bf16: None,
            label: None,
            compute_capability: None,
        });
        let r = BenchResult {
            h2d_pinned: vec![(DeviceName::Cuda(0), 55.123)],
            d2h_pinned: vec![(DeviceName::Cuda(0), 54.0)],
            tflops: vec![(DeviceName::Cuda(0), 791.3)],
            ..Default::default()
        };
        apply_bench(&mut hw, &r);
        apply_bench(&mut hw, &r);
        assert_eq!(hw.links.len(), 2);
        assert_eq!(hw.link(DeviceName::Cpu, DeviceName::Cuda(0)).value, 55.12);
        assert!(!hw.tflops(DeviceName::Cuda(0)).is_assumed());
        hw.validate().unwrap();
    }
}
