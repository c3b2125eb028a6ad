//! Sampler and scheduler names as ComfyUI users write them (`euler`, `dpmpp_2m`, `karras`, …).
//! Each is one type with `FromStr` (with "did you mean"), `Display`, serde and `JsonSchema`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Generates a name enum with its string table and trait impls.
macro_rules! name_enum {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $schema_doc:literal, { $($(#[$vdoc:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $ty { $($(#[$vdoc])* $var),+ }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$var),+];
            pub const fn name(self) -> &'static str {
                match self { $($ty::$var => $s),+ }
            }
            pub fn parse(s: &str) -> Result<Self, NameError> {
                let t = s.trim().to_ascii_lowercase();
                Self::ALL.iter().copied().find(|v| v.name() == t).ok_or_else(|| NameError {
                    what: $what,
                    name: s.to_string(),
                    suggestion: suggest(&t, Self::ALL.iter().map(|v| v.name())),
                    valid: Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
                })
            }
        }
        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> { Self::parse(s) }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.name()) }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<str>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> { stringify!($ty).into() }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
                json_schema!({ "description": $schema_doc, "type": "string", "enum": names })
            }
        }
    };
}

name_enum!(
    /// A sampling algorithm (k-diffusion / ComfyUI names and meanings).
    Sampler, "sampler",
    "Sampling algorithm, as in ComfyUI: euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, ddim.",
    {
        Euler => "euler",
        EulerAncestral => "euler_ancestral",
        Heun => "heun",
        Dpmpp2m => "dpmpp_2m",
        Dpmpp2mSde => "dpmpp_2m_sde",
        Ddim => "ddim",
    }
);

name_enum!(
    /// A noise schedule (sigma sequence), as in ComfyUI.
    Scheduler, "scheduler",
    "Noise schedule, as in ComfyUI: simple, normal, karras, exponential, beta, sgm_uniform.",
    {
        Simple => "simple",
        Normal => "normal",
        Karras => "karras",
        Exponential => "exponential",
        Beta => "beta",
        SgmUniform => "sgm_uniform",
    }
);

/// An unknown sampler or scheduler name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}`{}: expected one of {valid}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
    pub suggestion: Option<String>,
    pub valid: String,
}

/// The closest candidate within an edit distance of 3, if any.
pub fn suggest<'a>(input: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(input, c), c))
        .filter(|&(d, c)| d <= 3 && d < c.len())
        .min()
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all() {
        for s in Sampler::ALL {
            assert_eq!(Sampler::parse(&s.to_string()), Ok(*s));
        }
        for s in Scheduler::ALL {
            assert_eq!(Scheduler::parse(&s.to_string()), Ok(*s));
        }
    }

    #[test]
    fn did_you_mean() {
        let e = Sampler::parse("eulr").unwrap_err();
        assert_eq!(e.suggestion.as_deref(), Some("euler"));
        assert_eq!(
            e.to_string(),
            "unknown sampler `eulr` (did you mean `euler`?): expected one of euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, ddim"
        );
        assert_eq!(
            Scheduler::parse("karas").unwrap_err().suggestion.as_deref(),
            Some("karras")
        );
        assert_eq!(Scheduler::parse("zzzzzzzz").unwrap_err().suggestion, None);
    }
}
