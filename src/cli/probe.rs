//! `mgpu probe`: show the machine mgpu would plan for, and save it as a hardware file.
//!
//! Calls [`crate::hardware::probe`]; `--save FILE` writes [`crate::hardware::file`]'s format,
//! which `--hardware FILE` reads back anywhere.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use super::Status;
use crate::hardware::file;
use crate::hardware::probe::{self, ProbeOutput, ProbeReport};
use crate::units::ByteSize;

/// Show this machine's devices and rates, or save them as a hardware file.
///
/// Lists the host (RAM, CPU model) and each CUDA GPU (memory, compute capability, peer access);
/// `--bench` measures copy and compute rates. Plans use these numbers; anything not measured
/// is assumed (documented defaults) and marked so in plans.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also write the result as a hardware file to FILE (read it back with `--hardware FILE`).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Measure rates (a few seconds): the CPU's f32 matrix-product rate and the disk read
    /// rate in every build; with the CUDA build also host→GPU (pinned, pageable, and staged
    /// as `mgpu run` uploads resident weights), GPU→host and GPU→GPU copy rates and each
    /// GPU's bf16 product rate.
    #[arg(long)]
    pub bench: bool,
    /// With `--bench`: the size of the file written and read back to measure the disk
    /// (default 256MiB; rounded up to whole 4 MiB). It is written next to the `--save` file,
    /// or in the current folder, and removed afterwards; that folder needs this much free.
    #[arg(long, value_name = "SIZE", value_parser = parse_disk_size, requires = "bench")]
    pub disk_test_size: Option<ByteSize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--disk-test-size`: a size (the manifest's spellings) from 4 MiB to 64 GiB.
fn parse_disk_size(s: &str) -> Result<ByteSize, String> {
    let b: ByteSize = s.parse().map_err(|e| format!("{e}"))?;
    if !(4 << 20..=64 << 30).contains(&b.bytes()) {
        return Err(format!("{b} is outside 4MiB..=64GiB"));
    }
    Ok(b)
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    // The disk rate is measured where the hardware file goes (or here): the disk weights
    // would be read from is usually that one.
    let disk_dir = args
        .save
        .as_deref()
        .and_then(|p| p.parent())
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let disk_bytes = args
        .disk_test_size
        .map_or(crate::hardware::cpu_bench::DISK_BYTES, ByteSize::bytes);
    let report = probe::probe_in(args.bench, disk_dir, disk_bytes)?;
    if let Some(path) = &args.save {
        file::write(path, &report.hardware)
            .with_context(|| format!("cannot write hardware file {}", path.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&ProbeOutput::new(&report))?
        );
    } else {
        print!("{}", render(&report));
        if let Some(path) = &args.save {
            println!("saved to {}", path.display());
        }
    }
    Ok(Status::Ok)
}

/// The report as text: the device table, peer access, bench results, notes.
pub fn render(r: &ProbeReport) -> String {
    let mut out = r.hardware.to_string();
    for p in &r.peer_access {
        let _ = writeln!(
            out,
            "peer access {} → {}: {}",
            p.from,
            p.to,
            if p.possible { "yes" } else { "no" }
        );
    }
    if let Some(b) = &r.bench {
        let mut rows: Vec<String> = Vec::new();
        for (what, v) in [
            ("host→GPU pinned", &b.h2d_pinned),
            ("host→GPU pageable", &b.h2d_pageable),
            ("host→GPU staged", &b.h2d_staged),
            ("GPU→host pinned", &b.d2h_pinned),
        ] {
            rows.extend(
                v.iter()
                    .map(|(d, g)| format!("{what:<18} {d:<7} {g:>8.1} GB/s")),
            );
        }
        rows.extend(
            b.peer.iter().map(|(a, c, g)| {
                format!("{:<18} {:<7} {g:>8.1} GB/s", format!("peer {a}→{c}"), "")
            }),
        );
        rows.extend(b.tflops.iter().map(|(d, t)| match d {
            crate::device::DeviceName::Cpu => {
                format!(
                    "{:<18} {d:<7} {:>8.1} GFLOP/s",
                    "f32 1024³ product",
                    t * 1e3
                )
            }
            _ => format!("{:<18} {d:<7} {t:>8.1} TFLOP/s", "bf16 8192³ product"),
        }));
        if let Some(g) = b.host_copy_gbps {
            rows.push(format!(
                "{:<18} {:<7} {g:>8.1} GB/s",
                "host memory copy", "cpu"
            ));
        }
        if let Some(g) = b.disk_read_gbps {
            rows.push(format!("{:<18} {:<7} {g:>8.2} GB/s", "disk read", "disk"));
        }
        out.push_str("measured:\n");
        for row in rows {
            let _ = writeln!(out, "  {row}");
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}
