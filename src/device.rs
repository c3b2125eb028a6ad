//! Device names: `cpu`, `cuda:N`, and `disk` (weights left in the memory-mapped file).
//!
//! One type, [`DeviceName`], used by manifests, allocation strings, hardware files and plans;
//! [`UnitHome`] is the same place seen from a model's compute device (the executor's view).
//! `cuda` alone means `cuda:0` and is written back as `cuda:0`. Names other ComfyUI tools accept
//! (`mps`, `xpu:0`, `npu:0`, `mlu:0`, `directml`) are recognised and refused with a message
//! saying mgpu runs on CPUs and CUDA GPUs. Whether a device exists on the machine is checked
//! at plan time against [`crate::hardware::Hardware`], not here.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where weights can live or computation can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceName {
    /// Host RAM (page-locked when a CUDA device streams from it).
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(u32),
    /// The weight file itself, memory-mapped and read on demand. A storage home only.
    Disk,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("empty device name: expected `cpu`, `cuda:N` or `disk`")]
    Empty,
    #[error(
        "`{name}` is not supported: mgpu runs on CPUs and CUDA GPUs; use `cpu`, `cuda:N` or `disk`"
    )]
    Unsupported { name: String },
    #[error(
        "`{name}` has a bad device index: expected `cuda:N` with N a whole number, like `cuda:1`"
    )]
    BadIndex { name: String },
    #[error("unknown device `{name}`: expected `cpu`, `cuda:N` or `disk`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    Unknown {
        name: String,
        suggestion: Option<String>,
    },
}

/// Device families other tools accept that mgpu does not run on.
const UNSUPPORTED: &[&str] = &[
    "mps",
    "xpu",
    "npu",
    "mlu",
    "directml",
    "privateuseone",
    "hip",
    "rocm",
    "vulkan",
    "metal",
];

impl DeviceName {
    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceName::Cuda(_))
    }

    /// Whether computation can run here (everything but `disk`).
    pub fn can_compute(self) -> bool {
        !matches!(self, DeviceName::Disk)
    }

    pub fn parse(s: &str) -> Result<Self, DeviceError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(DeviceError::Empty);
        }
        let lower = t.to_ascii_lowercase();
        let (base, index) = match lower.split_once(':') {
            Some((b, i)) => (b, Some(i)),
            None => (lower.as_str(), None),
        };
        match (base, index) {
            ("cpu", None) => Ok(DeviceName::Cpu),
            ("disk", None) => Ok(DeviceName::Disk),
            ("cuda", None) => Ok(DeviceName::Cuda(0)),
            ("cuda", Some(i)) => i
                .parse::<u32>()
                .ok()
                .filter(|_| i.chars().all(|c| c.is_ascii_digit()))
                .map(DeviceName::Cuda)
                .ok_or_else(|| DeviceError::BadIndex {
                    name: t.to_string(),
                }),
            (b, _) if UNSUPPORTED.contains(&b) => Err(DeviceError::Unsupported {
                name: t.to_string(),
            }),
            _ => {
                let suggestion = ["cpu", "disk", "cuda"]
                    .into_iter()
                    .map(|c| (strsim::damerau_levenshtein(base, c), c))
                    .filter(|&(d, _)| d <= 2)
                    .min()
                    .map(|(_, c)| match (c, index) {
                        ("cuda", Some(i)) => format!("cuda:{i}"),
                        ("cuda", None) => "cuda:0".to_string(),
                        (c, _) => c.to_string(),
                    });
                Err(DeviceError::Unknown {
                    name: t.to_string(),
                    suggestion,
                })
            }
        }
    }
}

impl FromStr for DeviceName {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceName::parse(s)
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceName::Cpu => f.write_str("cpu"),
            DeviceName::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceName::Disk => f.write_str("disk"),
        }
    }
}

impl Serialize for DeviceName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DeviceName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a device name: \"cpu\", \"cuda:N\" or \"disk\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DeviceName, E> {
                DeviceName::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Pattern for the JSON schema.
pub const DEVICE_PATTERN: &str =
    r"^\s*([cC][pP][uU]|[dD][iI][sS][kK]|[cC][uU][dD][aA](:[0-9]+)?)\s*$";

impl JsonSchema for DeviceName {
    fn schema_name() -> Cow<'static, str> {
        "DeviceName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A device: `cpu` (host RAM), `cuda:N` (a CUDA GPU; `cuda` = `cuda:0`) or `disk` (weights stay in the memory-mapped file; storage only).",
            "type": "string",
            "pattern": DEVICE_PATTERN,
            "examples": ["cuda:0", "cuda:1", "cpu", "disk"]
        })
    }
}

/// Where one placement unit lives during a run, relative to its model's compute device: the
/// one type for a block's home in the executor, the streaming backends and the benchmark
/// ([`DeviceName`] is the absolute name plans and manifests use; [`UnitHome::from_plan`] and
/// [`UnitHome::device`] convert). Relative, because a CPU compute device can still stream a
/// unit from host memory (`Host`), which an absolute `cpu` home could not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitHome {
    /// Resident on the compute device.
    Compute,
    /// Host memory, streamed.
    Host,
    /// The memory-mapped weight file (or a spill file), streamed.
    Disk,
    /// Another GPU's memory (`cuda:N`), streamed.
    Donor(u32),
}

impl UnitHome {
    /// The home of a unit the plan put on `home` for a model computing on `compute`.
    pub fn from_plan(home: DeviceName, compute: DeviceName) -> UnitHome {
        match home {
            h if h == compute => UnitHome::Compute,
            DeviceName::Cpu => UnitHome::Host,
            DeviceName::Disk => UnitHome::Disk,
            DeviceName::Cuda(n) => UnitHome::Donor(n),
        }
    }

    /// The device name the home's bytes are counted under.
    pub fn device(self, compute: DeviceName) -> DeviceName {
        match self {
            UnitHome::Compute => compute,
            UnitHome::Host => DeviceName::Cpu,
            UnitHome::Disk => DeviceName::Disk,
            UnitHome::Donor(n) => DeviceName::Cuda(n),
        }
    }
}

impl std::fmt::Display for UnitHome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitHome::Compute => f.write_str("compute"),
            UnitHome::Host => f.write_str("host"),
            UnitHome::Disk => f.write_str("disk"),
            UnitHome::Donor(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl PartialOrd for UnitHome {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for UnitHome {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let key = |h: &UnitHome| match h {
            UnitHome::Compute => (0, 0),
            UnitHome::Donor(n) => (1, *n),
            UnitHome::Host => (2, 0),
            UnitHome::Disk => (3, 0),
        };
        key(self).cmp(&key(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_from_plan() {
        use DeviceName::*;
        assert_eq!(UnitHome::from_plan(Cpu, Cpu), UnitHome::Compute);
        assert_eq!(UnitHome::from_plan(Disk, Cpu), UnitHome::Disk);
        assert_eq!(UnitHome::from_plan(Cpu, Cuda(0)), UnitHome::Host);
        assert_eq!(UnitHome::from_plan(Cuda(1), Cuda(0)), UnitHome::Donor(1));
        assert_eq!(UnitHome::from_plan(Cuda(0), Cuda(0)), UnitHome::Compute);
        assert_eq!(UnitHome::Donor(2).device(Cuda(0)), Cuda(2));
        assert_eq!(UnitHome::Compute.device(Cuda(0)), Cuda(0));
    }

    use proptest::prelude::*;

    #[test]
    fn parses_table() {
        let cases = [
            ("cpu", DeviceName::Cpu),
            ("CPU", DeviceName::Cpu),
            (" disk ", DeviceName::Disk),
            ("cuda", DeviceName::Cuda(0)),
            ("cuda:0", DeviceName::Cuda(0)),
            ("cuda:12", DeviceName::Cuda(12)),
            ("CUDA:1", DeviceName::Cuda(1)),
        ];
        for (s, want) in cases {
            assert_eq!(DeviceName::parse(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_table() {
        let msg = |s: &str| DeviceName::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg(""),
            "empty device name: expected `cpu`, `cuda:N` or `disk`"
        );
        assert!(msg("mps").contains("`mps` is not supported"));
        assert!(msg("xpu:0").contains("`xpu:0` is not supported"));
        assert!(msg("cuda:x").contains("bad device index"));
        assert!(msg("cuda:-1").contains("bad device index"));
        assert!(msg("cuda:+1").contains("bad device index"));
        assert!(
            msg("cdua:1").contains("did you mean `cuda:1`?"),
            "{}",
            msg("cdua:1")
        );
        assert!(msg("cpy").contains("did you mean `cpu`?"));
        assert!(!msg("banana").contains("did you mean"));
    }

    #[test]
    fn schema_pattern_agrees_with_parser() {
        let re = regex::Regex::new(DEVICE_PATTERN).unwrap();
        for s in ["cpu", "cuda", "cuda:3", "disk", "CUDA:1"] {
            assert!(re.is_match(s) && DeviceName::parse(s).is_ok(), "{s}");
        }
        for s in ["", "mps", "cuda:x", "cuda:", "gpu"] {
            assert!(!re.is_match(s) && DeviceName::parse(s).is_err(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(i in any::<u32>(), k in 0..3u8) {
            let d = match k { 0 => DeviceName::Cpu, 1 => DeviceName::Disk, _ => DeviceName::Cuda(i) };
            prop_assert_eq!(DeviceName::parse(&d.to_string()), Ok(d));
        }
        #[test]
        fn never_panics(s in "\\PC{0,16}") {
            let _ = DeviceName::parse(&s);
        }
    }
}
