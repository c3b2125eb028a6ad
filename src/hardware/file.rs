//! Hardware files: the TOML form of [`Hardware`] that `mgpu probe --save` writes and
//! `--hardware FILE` reads, its JSON schema (`schemas/hardware.schema.json`), and errors that
//! point into the file.
//!
//! ```toml
//! [[devices]]
//! name = "cuda:0"
//! memory = "80GiB"          # total; optional free = "..."
//! tflops_bf16 = 790.0       # optional, measured by probe --bench
//! [[devices]]
//! name = "cpu"
//! memory = "128GiB"
//! [[links]]                 # directed; GB/s = 1e9 bytes per second
//! from = "cpu"
//! to = "cuda:0"
//! gbps = 55.0
//! ```
//! Raw types (`Toml*`) mirror the file and keep spans; [`parse`] turns them into a validated
//! [`Hardware`] or reports every problem with `--> file:line:col` and a caret.

use std::ops::Range;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{Device, Hardware, HardwareError, Link, LinkKind};
use crate::device::DeviceName;
use crate::units::ByteSize;

/// A hardware description: the devices of one machine and the links between them. Write it by
/// hand or with `mgpu probe --save FILE`; plans made with `--hardware FILE` use it instead of
/// probing. Anything not measured is assumed (documented defaults) and marked so in plans.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mgpu hardware file")]
pub struct TomlHardware {
    /// The host (`cpu`) and each CUDA GPU (`cuda:N`). `disk` is always present and is not listed.
    #[serde(default)]
    pub devices: Vec<TomlDevice>,
    /// Directed copy links with their measured rate (`gbps`) or their kind (then a default rate
    /// is assumed). Unlisted pairs use defaults: host↔GPU 25 GB/s, GPU↔GPU 20 GB/s (PCIe peer),
    /// disk 2 GB/s; a link listed in one direction only is assumed symmetric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<TomlLink>,
}

/// One device.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TomlDevice {
    /// `cpu` or `cuda:N`.
    #[schemars(with = "DeviceName")]
    pub name: Spanned<DeviceName>,
    /// Total memory, e.g. "80GiB" (1024-based units).
    #[schemars(with = "ByteSize")]
    pub memory: Spanned<ByteSize>,
    /// Memory free when probed; plans use it instead of `memory` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<ByteSize>")]
    pub free: Option<Spanned<ByteSize>>,
    /// Measured bf16 matrix-product rate in TFLOP/s (`mgpu probe --bench`). When absent a
    /// typical rate for the device's label is assumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<f64>", range(min = 0.0))]
    pub tflops_bf16: Option<Spanned<f64>>,
    /// What the device is, e.g. "NVIDIA H100 80GB HBM3" or the CPU model; also selects the
    /// assumed compute rate when `tflops_bf16` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// CUDA compute capability as [major, minor], e.g. [9, 0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<(u32, u32)>,
}

/// One directed link.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TomlLink {
    /// Source: `cpu`, `cuda:N`, or `disk` (then `gbps` is the read bandwidth of the weight files).
    #[schemars(with = "DeviceName")]
    pub from: Spanned<DeviceName>,
    /// Destination: `cpu` or `cuda:N`.
    #[schemars(with = "DeviceName")]
    pub to: Spanned<DeviceName>,
    /// Measured rate in decimal GB/s (10⁹ bytes per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<f64>", range(min = 0.0))]
    pub gbps: Option<Spanned<f64>>,
    /// What carries the link, when `gbps` was not measured: "nvlink" (assumed 50 GB/s,
    /// conservative) or "pcie" (assumed 25 GB/s host↔GPU, 20 GB/s GPU↔GPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<LinkKind>")]
    pub kind: Option<Spanned<LinkKind>>,
}

/// One problem, located in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// 1-based line and column of the start of the span, when known.
    pub line: Option<usize>,
    pub col: Option<usize>,
    /// The full cargo-style text: message, `--> file:line:col`, the line and a caret.
    pub rendered: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HardwareFileError {
    #[error("{}: cannot read hardware file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", diagnostics.iter().map(|d| d.rendered.as_str()).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
}

/// Reads and validates the hardware file at `path`.
pub fn read(path: &Path) -> Result<Hardware, HardwareFileError> {
    let src = std::fs::read_to_string(path).map_err(|source| HardwareFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &src)
}

/// Parses and validates `src`; `path` is only used in messages.
pub fn parse(path: &Path, src: &str) -> Result<Hardware, HardwareFileError> {
    let invalid = |diagnostics| HardwareFileError::Invalid {
        path: path.to_path_buf(),
        diagnostics,
    };
    let raw: TomlHardware = toml::from_str(src).map_err(|e| {
        let msg = e.message().trim_end().to_string();
        invalid(vec![diagnostic(path, src, e.span(), &msg, None)])
    })?;
    let hw = from_raw(&raw);
    hw.validate().map_err(|errs| {
        invalid(
            errs.iter()
                .map(|e| {
                    let span = span_of(&raw, e);
                    diagnostic(path, src, span, &e.to_string(), help_of(e))
                })
                .collect(),
        )
    })?;
    Ok(hw)
}

/// The TOML text of `hw`, which [`parse`] reads back to the same value.
pub fn to_toml(hw: &Hardware) -> String {
    let raw = to_raw(hw);
    let body = toml::to_string(&raw).expect("hardware values always serialise to TOML");
    format!(
        "# mgpu hardware file (schema: schemas/hardware.schema.json). Sizes are 1024-based;\n\
         # gbps is decimal GB/s (1e9 bytes/s). Unlisted links use documented defaults.\n{body}"
    )
}

/// Writes `hw` to `path` in the hardware file format.
pub fn write(path: &Path, hw: &Hardware) -> std::io::Result<()> {
    std::fs::write(path, to_toml(hw))
}

/// The JSON schema of hardware files.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(TomlHardware)
}

/// The schema as pretty JSON with a trailing newline, exactly as committed in
/// `schemas/hardware.schema.json`.
pub fn schema_json() -> String {
    let mut s = serde_json::to_string_pretty(&schema()).expect("schemas serialise");
    s.push('\n');
    s
}

fn from_raw(raw: &TomlHardware) -> Hardware {
    Hardware {
        devices: raw
            .devices
            .iter()
            .map(|d| Device {
                name: *d.name.get_ref(),
                memory: *d.memory.get_ref(),
                free: d.free.as_ref().map(|f| *f.get_ref()),
                tflops_bf16: d.tflops_bf16.as_ref().map(|t| *t.get_ref()),
                label: d.label.clone(),
                compute_capability: d.compute_capability,
            })
            .collect(),
        links: raw
            .links
            .iter()
            .map(|l| Link {
                from: *l.from.get_ref(),
                to: *l.to.get_ref(),
                gbps: l.gbps.as_ref().map(|g| *g.get_ref()),
                kind: l.kind.as_ref().map(|k| *k.get_ref()),
            })
            .collect(),
    }
}

fn to_raw(hw: &Hardware) -> TomlHardware {
    let s = |v| Spanned::new(0..0, v);
    TomlHardware {
        devices: hw
            .devices
            .iter()
            .map(|d| TomlDevice {
                name: s(d.name),
                memory: Spanned::new(0..0, d.memory),
                free: d.free.map(|f| Spanned::new(0..0, f)),
                tflops_bf16: d.tflops_bf16.map(|t| Spanned::new(0..0, t)),
                label: d.label.clone(),
                compute_capability: d.compute_capability,
            })
            .collect(),
        links: hw
            .links
            .iter()
            .map(|l| TomlLink {
                from: s(l.from),
                to: s(l.to),
                gbps: l.gbps.map(|g| Spanned::new(0..0, g)),
                kind: l.kind.map(|k| Spanned::new(0..0, k)),
            })
            .collect(),
    }
}

/// The span of the field a validation error is about.
fn span_of(raw: &TomlHardware, e: &HardwareError) -> Option<Range<usize>> {
    use HardwareError::*;
    let (table, i) = e.entry();
    if table == "devices" {
        let d = raw.devices.get(i)?;
        return Some(match e {
            ZeroMemory { .. } => d.memory.span(),
            FreeExceedsMemory { .. } => d.free.as_ref()?.span(),
            BadTflops { .. } => d.tflops_bf16.as_ref()?.span(),
            _ => d.name.span(),
        });
    }
    let l = raw.links.get(i)?;
    Some(match e {
        UnknownLinkEnd { missing, .. } if l.from.get_ref() == missing => l.from.span(),
        UnknownLinkEnd { .. } | SelfLink { .. } => l.to.span(),
        BadGbps { .. } => l.gbps.as_ref()?.span(),
        NvlinkToHost { .. } => l.kind.as_ref()?.span(),
        _ => l.from.span(),
    })
}

fn help_of(e: &HardwareError) -> Option<&'static str> {
    use HardwareError::*;
    match e {
        DiskDevice { .. } => Some("delete this [[devices]] entry; add [[links]] from = \"disk\", to = \"cpu\", gbps = 3.5 to state the disk's read rate"),
        NoRate { .. } => Some("add `gbps = 55.0` (measure with `mgpu probe --bench`) or `kind = \"pcie\"` / `kind = \"nvlink\"`"),
        DuplicateDevice { .. } | DuplicateLink { .. } => Some("keep one of the two entries"),
        _ => None,
    }
}

/// `error: MESSAGE` + `--> file:line:col` + the source line + a caret under `span`.
pub(crate) fn diagnostic(
    path: &Path,
    src: &str,
    span: Option<Range<usize>>,
    message: &str,
    help: Option<&str>,
) -> Diagnostic {
    let mut out = format!("error: {message}\n");
    let (mut line_no, mut col_no) = (None, None);
    match span.filter(|s| s.start <= src.len()) {
        Some(span) => {
            let start = span.start;
            let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
            let line = src[..start].matches('\n').count() + 1;
            let col = src[line_start..start].chars().count() + 1;
            let text = src[line_start..line_end].trim_end_matches('\r');
            let width = src[start..span.end.clamp(start, line_end)]
                .chars()
                .count()
                .max(1);
            let pad = " ".repeat(line.to_string().len());
            out += &format!(
                "{pad}--> {}:{line}:{col}\n{pad} |\n{line} | {text}\n{pad} | {}{}\n",
                path.display(),
                " ".repeat(col - 1),
                "^".repeat(width)
            );
            line_no = Some(line);
            col_no = Some(col);
        }
        None => out += &format!(" --> {}\n", path.display()),
    }
    if let Some(h) = help {
        out += &format!("  = help: {h}\n");
    }
    Diagnostic {
        message: message.to_string(),
        line: line_no,
        col: col_no,
        rendered: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[devices]]
name = "cuda:0"
memory = "80GiB"          # total; optional free = "..."
tflops_bf16 = 790.0       # optional, measured by probe --bench
[[devices]]
name = "cpu"
memory = "128GiB"
[[links]]                 # directed; GB/s = 1e9 bytes per second
from = "cpu"
to = "cuda:0"
gbps = 55.0
"#;

    fn p(src: &str) -> Result<Hardware, String> {
        parse(Path::new("hw.toml"), src).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_the_issue_example() {
        let hw = p(EXAMPLE).unwrap();
        assert_eq!(hw.devices.len(), 2);
        assert_eq!(hw.devices[0].tflops_bf16, Some(790.0));
        assert_eq!(hw.devices[1].memory, ByteSize::gib(128));
        assert_eq!(hw.links[0].gbps, Some(55.0));
    }

    #[test]
    fn round_trips() {
        let mut hw = p(EXAMPLE).unwrap();
        hw.devices[0].free = Some(ByteSize(80_000_000_000));
        hw.devices[0].label = Some("NVIDIA H100 80GB HBM3".into());
        hw.devices[0].compute_capability = Some((9, 0));
        hw.links.push(Link {
            from: DeviceName::Cuda(0),
            to: DeviceName::Cpu,
            gbps: Some(53.25),
            kind: None,
        });
        hw.links.push(Link {
            from: DeviceName::Disk,
            to: DeviceName::Cpu,
            gbps: Some(3.5),
            kind: None,
        });
        hw.devices.push(Device {
            name: DeviceName::Cuda(1),
            memory: ByteSize::gib(80),
            free: None,
            tflops_bf16: None,
            label: None,
            compute_capability: None,
        });
        hw.links.push(Link {
            from: DeviceName::Cuda(1),
            to: DeviceName::Cuda(0),
            gbps: None,
            kind: Some(LinkKind::Nvlink),
        });
        let text = to_toml(&hw);
        assert_eq!(p(&text).unwrap(), hw, "{text}");
    }

    #[test]
    fn errors_point_into_the_file() {
        let e = p("[[devices]]\nname = \"cuda:0\"\nmemory = \"80GiB\"\nmemroy = 1\n").unwrap_err();
        assert!(
            e.contains("unknown field `memroy`") && e.contains("hw.toml:4:1"),
            "{e}"
        );
        let e = p("[[devices]]\nname = \"cuda:0\"\nmemory = \"80 zb\"\n").unwrap_err();
        assert!(
            e.contains("unknown unit `zb`") && e.contains("hw.toml:3:10"),
            "{e}"
        );
        let src = "[[devices]]\nname = \"cpu\"\nmemory = \"8GiB\"\n[[links]]\nfrom = \"cpu\"\nto = \"cuda:3\"\ngbps = 25.0\n";
        let e = p(src).unwrap_err();
        insta::assert_snapshot!(e, @r#"
        error: link cpu → cuda:3 names `cuda:3`, which is not a device here (devices: cpu, disk (as `from` only))
         --> hw.toml:6:6
          |
        6 | to = "cuda:3"
          |      ^^^^^^^^
        "#);
        let src = "[[devices]]\nname = \"disk\"\nmemory = \"8GiB\"\n[[links]]\nfrom = \"cpu\"\nto = \"disk\"\ngbps = -1\n";
        let e = p(src).unwrap_err();
        insta::assert_snapshot!(e, @r#"
        error: `disk` is not a device entry: it is always present; set its read bandwidth with [[links]] from = "disk", to = "cpu", gbps = N
         --> hw.toml:2:8
          |
        2 | name = "disk"
          |        ^^^^^^
          = help: delete this [[devices]] entry; add [[links]] from = "disk", to = "cpu", gbps = 3.5 to state the disk's read rate

        error: link cpu → disk names `cpu`, which is not a device here (devices: disk (as `from` only))
         --> hw.toml:5:8
          |
        5 | from = "cpu"
          |        ^^^^^
        
        error: link cpu → disk names `disk`, which is not a device here (devices: disk (as `from` only)); `disk` can only be a link's `from`
         --> hw.toml:6:6
          |
        6 | to = "disk"
          |      ^^^^^^

        error: link cpu → disk: gbps = -1 must be a positive number of GB/s (10⁹ bytes/s)
         --> hw.toml:7:8
          |
        7 | gbps = -1
          |        ^^
        "#);
    }

    #[test]
    fn schema_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/hardware.schema.json");
        let want = schema_json();
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "schemas/hardware.schema.json is stale: run `UPDATE_SCHEMAS=1 cargo test --lib hardware::file` and commit it"
        );
    }

    #[test]
    fn example_files_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("hw-") && name.ends_with(".toml") {
                read(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2, "expected example hardware files in tests/data");
    }
}
