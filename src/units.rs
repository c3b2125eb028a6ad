//! Memory sizes as users write them: `8gb`, `2.5GiB`, `500mb`, `3.0g`, `1024`.
//!
//! One type, [`ByteSize`], used everywhere a size is written: allocation strings, `virtual_vram`,
//! hardware files. Units are 1024-based whatever their spelling (`gb` = `GiB` = 2³⁰ bytes),
//! as in ComfyUI-MultiGPU, whose users write `gb` and mean GiB. Unknown units are errors
//! (DisTorch2 read `2tb` as 2 bytes; here `tb` is a unit and `2xb` is refused).
//! Link bandwidths are not sizes: they are decimal GB/s (see [`crate::hardware`]).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

/// Accepted unit spellings (lower-cased) and their factors. The first spelling of each factor
/// is the one [`ByteSize`]'s `Display` does not use; Display writes `B`, `KiB`, `MiB`, `GiB`,
/// `TiB`.
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", KIB),
    ("kb", KIB),
    ("kib", KIB),
    ("m", MIB),
    ("mb", MIB),
    ("mib", MIB),
    ("g", GIB),
    ("gb", GIB),
    ("gib", GIB),
    ("t", TIB),
    ("tb", TIB),
    ("tib", TIB),
];

/// The unit spellings shown in help text.
pub const UNIT_HELP: &str = "b, kb, mb, gb, tb (also k/m/g/t and KiB/MiB/GiB/TiB; all 1024-based)";

/// Why a size did not parse. `offset..offset+len` is the byte range of the offending part of
/// the input, for carets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseSizeError {
    pub kind: SizeErrorKind,
    pub offset: usize,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeErrorKind {
    #[error("empty size: expected a number with an optional unit, like `8gb` or `512MiB`")]
    Empty,
    #[error("`{0}` is not a number: expected digits with an optional decimal point, like `2.5gb`")]
    BadNumber(String),
    #[error("negative size `{0}`: sizes must be zero or more")]
    Negative(String),
    #[error("unknown unit `{0}`: expected one of {UNIT_HELP}")]
    UnknownUnit(String),
    #[error("size `{0}` is too large (more than 2^64 bytes)")]
    TooLarge(String),
}

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    pub const fn gib(n: u64) -> Self {
        ByteSize(n * GIB)
    }

    /// As GiB in floating point (for arithmetic in reports and predictions).
    pub fn as_gib(self) -> f64 {
        self.0 as f64 / GIB as f64
    }

    /// Approximate, for people: `23.81 GiB`, `512.0 MiB`, `12 B`.
    pub fn human(self) -> String {
        let b = self.0;
        let (v, u) = if b >= TIB {
            (b as f64 / TIB as f64, "TiB")
        } else if b >= GIB {
            (b as f64 / GIB as f64, "GiB")
        } else if b >= MIB {
            (b as f64 / MIB as f64, "MiB")
        } else if b >= KIB {
            (b as f64 / KIB as f64, "KiB")
        } else {
            return format!("{b} B");
        };
        if v >= 100.0 {
            format!("{v:.0} {u}")
        } else if v >= 10.0 {
            format!("{v:.1} {u}")
        } else {
            format!("{v:.2} {u}")
        }
    }

    /// Parses the number-and-unit text `s`; error offsets are relative to `s`.
    pub fn parse(s: &str) -> Result<Self, ParseSizeError> {
        let lead = s.len() - s.trim_start().len();
        let t = s.trim();
        if t.is_empty() {
            return Err(ParseSizeError {
                kind: SizeErrorKind::Empty,
                offset: 0,
                len: s.len().max(1),
            });
        }
        // Split into the numeric part and the unit part.
        let num_end = t
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '-' || c == '+'))))
            .map(|(i, _)| i)
            .unwrap_or(t.len());
        let num = &t[..num_end];
        let unit_raw = &t[num_end..];
        let unit = unit_raw.trim_start();
        let unit_off = lead + num_end + (unit_raw.len() - unit.len());
        let err = |kind, offset, len| ParseSizeError { kind, offset, len };
        if num.starts_with('-') {
            return Err(err(SizeErrorKind::Negative(t.to_string()), lead, t.len()));
        }
        let digits = num.strip_prefix('+').unwrap_or(num);
        if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 {
            let shown = if num.is_empty() { t } else { num };
            let len = if num.is_empty() { t.len() } else { num.len() };
            return Err(err(SizeErrorKind::BadNumber(shown.to_string()), lead, len));
        }
        let lower = unit.to_ascii_lowercase();
        let Some(&(_, factor)) = UNITS.iter().find(|(u, _)| *u == lower) else {
            return Err(err(
                SizeErrorKind::UnknownUnit(unit.to_string()),
                unit_off,
                unit.len(),
            ));
        };
        let too_large = || err(SizeErrorKind::TooLarge(t.to_string()), lead, t.len());
        // Integers are exact; decimals go through f64 and round to the nearest byte.
        let bytes = if !digits.contains('.') {
            digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(factor))
                .ok_or_else(too_large)?
        } else {
            let v: f64 = digits
                .parse()
                .map_err(|_| err(SizeErrorKind::BadNumber(num.to_string()), lead, num.len()))?;
            let b = (v * factor as f64).round();
            if !b.is_finite() || b >= u64::MAX as f64 {
                return Err(too_large());
            }
            b as u64
        };
        Ok(ByteSize(bytes))
    }
}

impl FromStr for ByteSize {
    type Err = ParseSizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteSize::parse(s)
    }
}

/// Exact: the largest unit (TiB, GiB, MiB) in which the size is written with at most three
/// decimals and reads back to the same number of bytes, whole KiB, else plain bytes
/// (`1395864372B`).
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, factor) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if b < factor {
                continue;
            }
            if b.is_multiple_of(factor) {
                return write!(f, "{}{unit}", b / factor);
            }
            if factor == KIB {
                break;
            }
            let text = format!("{:.3}", b as f64 / factor as f64);
            let text = text.trim_end_matches('0').trim_end_matches('.');
            let candidate = format!("{text}{unit}");
            if ByteSize::parse(&candidate) == Ok(*self) {
                return f.write_str(&candidate);
            }
        }
        write!(f, "{b}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a size such as \"24GiB\" or \"512mb\" (units: {UNIT_HELP}) or a whole number of bytes"
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| {
                    E::custom(format!("negative size {v}: sizes must be zero or more"))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Pattern accepted by [`ByteSize::parse`], for the JSON schema (case-insensitive units).
pub const SIZE_PATTERN: &str =
    r"^\s*\+?([0-9]+\.?[0-9]*|\.[0-9]+)\s*([bB]|[kKmMgGtT]([bB]|[iI][bB])?)?\s*$";

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": format!("A memory size: a number with an optional unit ({UNIT_HELP}), or a whole number of bytes."),
            "oneOf": [
                { "type": "string", "pattern": SIZE_PATTERN },
                { "type": "integer", "minimum": 0 }
            ],
            "examples": ["24GiB", "8gb", "2.5gb", "512MiB"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_table() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1024", 1024),
            ("12b", 12),
            ("1k", KIB),
            ("1kb", KIB),
            ("1KiB", KIB),
            ("500mb", 500 * MIB),
            ("500MB", 500 * MIB),
            ("2.5gb", 5 * GIB / 2),
            ("3.0g", 3 * GIB),
            ("8 GiB", 8 * GIB),
            (" 24gib ", 24 * GIB),
            ("2tb", 2 * TIB),
            (".5gb", GIB / 2),
            ("1.", 1),
            ("+4gb", 4 * GIB),
        ];
        for (s, want) in cases {
            assert_eq!(ByteSize::parse(s), Ok(ByteSize(*want)), "{s}");
        }
    }

    #[test]
    fn rejects_table() {
        let cases: &[(&str, SizeErrorKind, usize, usize)] = &[
            ("", SizeErrorKind::Empty, 0, 1),
            ("gb", SizeErrorKind::BadNumber("gb".into()), 0, 2),
            ("2xb", SizeErrorKind::UnknownUnit("xb".into()), 1, 2),
            ("2 pb", SizeErrorKind::UnknownUnit("pb".into()), 2, 2),
            ("-1gb", SizeErrorKind::Negative("-1gb".into()), 0, 4),
            ("1.2.3gb", SizeErrorKind::BadNumber("1.2.3".into()), 0, 5),
            ("nan", SizeErrorKind::BadNumber("nan".into()), 0, 3),
            ("inf", SizeErrorKind::BadNumber("inf".into()), 0, 3),
            (
                "99999999999tb",
                SizeErrorKind::TooLarge("99999999999tb".into()),
                0,
                13,
            ),
            ("*", SizeErrorKind::BadNumber("*".into()), 0, 1),
        ];
        for (s, kind, off, len) in cases {
            let e = ByteSize::parse(s).unwrap_err();
            assert_eq!((&e.kind, e.offset, e.len), (kind, *off, *len), "{s}");
        }
    }

    #[test]
    fn display_table() {
        let cases: &[(u64, &str)] = &[
            (0, "0B"),
            (12, "12B"),
            (KIB, "1KiB"),
            (24 * GIB, "24GiB"),
            (5 * GIB / 2, "2.5GiB"),
            (1_395_864_371, "1.3GiB"),
            (1_395_864_372, "1395864372B"),
            (1_000_000_007, "1000000007B"),
        ];
        for (b, want) in cases {
            assert_eq!(ByteSize(*b).to_string(), *want, "{b}");
        }
    }

    #[test]
    fn serde_accepts_strings_and_integers() {
        #[derive(Deserialize)]
        struct W {
            a: ByteSize,
            b: ByteSize,
        }
        let w: W = toml::from_str("a = \"80GiB\"\nb = 4096").unwrap();
        assert_eq!((w.a, w.b), (ByteSize::gib(80), ByteSize(4096)));
        let e = toml::from_str::<W>("a = \"80 zb\"\nb = 1").err().unwrap();
        assert!(e.to_string().contains("unknown unit `zb`"), "{e}");
        let e = toml::from_str::<W>("a = -3\nb = 1").err().unwrap();
        assert!(e.to_string().contains("negative size"), "{e}");
    }

    #[test]
    fn schema_pattern_agrees_with_parser() {
        let re = regex::Regex::new(SIZE_PATTERN).unwrap();
        for s in ["8gb", "2.5GiB", "1024", " 3 mb ", ".5g", "7KIB"] {
            assert!(re.is_match(s) && ByteSize::parse(s).is_ok(), "{s}");
        }
        for s in ["", "gb", "2xb", "-1gb", "1.2.3", "*"] {
            assert!(!re.is_match(s) && ByteSize::parse(s).is_err(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(b in any::<u64>()) {
            let s = ByteSize(b).to_string();
            prop_assert_eq!(ByteSize::parse(&s), Ok(ByteSize(b)));
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = ByteSize::parse(&s);
        }

        #[test]
        fn error_spans_are_in_bounds(s in "[ 0-9.+*a-zA-Z-]{0,12}") {
            if let Err(e) = ByteSize::parse(&s) {
                prop_assert!(e.offset + e.len <= s.len().max(1));
            }
        }
    }
}
