//! `--shard I/N`: which part of a manifest's images one machine makes, so N machines (a Slurm
//! array, a Kubernetes Indexed Job, a CI matrix) split one manifest without talking to each
//! other. Shard `I` of `N` keeps the images whose position in the expanded image list (jobs in
//! manifest order, each job's images by index) is ≡ I (mod N): round-robin, so every shard gets
//! a mix of jobs and shapes, and the split does not depend on which outputs already exist.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Shard `index` of `count` (0 ≤ index < count), written `I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

/// Why a shard did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("`{0}` is not a shard: expected `I/N` with 0 ≤ I < N, like `0/4` (the first of four)")]
    Syntax(String),
    #[error(
        "`{0}` is not a whole number in shard `{1}`: expected `I/N` with 0 ≤ I < N, like `2/4`"
    )]
    Number(String, String),
    #[error("shard `{0}` has N = 0: there must be at least one shard, like `0/1`")]
    ZeroCount(String),
    #[error("shard index {index} is out of range for {count} shards: shards are numbered from 0, so `{count}` shards are `0/{count}` … `{last}/{count}`", last = count - 1)]
    OutOfRange { index: u32, count: u32 },
}

impl Shard {
    /// Shard `index` of `count`; checks 0 ≤ index < count.
    pub fn new(index: u32, count: u32) -> Result<Self, ShardError> {
        if count == 0 {
            return Err(ShardError::ZeroCount(format!("{index}/{count}")));
        }
        if index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    pub fn index(self) -> u32 {
        self.index
    }

    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether the image at `position` of the expanded list belongs to this shard.
    pub fn keeps(self, position: usize) -> bool {
        position as u64 % self.count as u64 == self.index as u64
    }

    /// Whether two shards may write the same output root at once: only different shards of
    /// the same split make disjoint sets of images.
    pub fn disjoint(self, other: Shard) -> bool {
        self.count == other.count && self.index != other.index
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, ShardError> {
        let t = s.trim();
        let (i, n) = t
            .split_once('/')
            .ok_or_else(|| ShardError::Syntax(s.to_string()))?;
        let num = |x: &str| {
            let x = x.trim();
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ShardError::Number(x.to_string(), t.to_string()));
            }
            x.parse::<u32>()
                .map_err(|_| ShardError::Number(x.to_string(), t.to_string()))
        };
        let (index, count) = (num(i)?, num(n)?);
        if count == 0 {
            return Err(ShardError::ZeroCount(t.to_string()));
        }
        Shard::new(index, count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Serialize for Shard {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Shard;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a shard `I/N` with 0 ≤ I < N, like `0/4`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Shard, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl JsonSchema for Shard {
    fn schema_name() -> Cow<'static, str> {
        "Shard".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Shard I of N (0 ≤ I < N): the images whose position in the expanded image list is ≡ I (mod N).",
            "type": "string",
            "pattern": "^[0-9]+/[0-9]+$",
            "examples": ["0/4", "3/8"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        type Want = Result<(u32, u32), &'static str>;
        let table: &[(&str, Want)] = &[
            ("0/1", Ok((0, 1))),
            ("3/8", Ok((3, 8))),
            (" 2 / 4 ", Ok((2, 4))),
            ("0/4294967295", Ok((0, u32::MAX))),
            ("4/4", Err("shard index 4 is out of range for 4 shards: shards are numbered from 0, so `4` shards are `0/4` … `3/4`")),
            ("1/0", Err("shard `1/0` has N = 0: there must be at least one shard, like `0/1`")),
            ("0/0", Err("shard `0/0` has N = 0")),
            ("3", Err("`3` is not a shard: expected `I/N`")),
            ("", Err("`` is not a shard")),
            ("-1/4", Err("`-1` is not a whole number in shard `-1/4`")),
            ("a/4", Err("`a` is not a whole number")),
            ("1/4/2", Err("`4/2` is not a whole number")),
            ("1/", Err("`` is not a whole number in shard `1/`")),
            ("+1/4", Err("`+1` is not a whole number")),
            ("1/99999999999", Err("`99999999999` is not a whole number")),
        ];
        for (input, want) in table {
            match (input.parse::<Shard>(), want) {
                (Ok(s), Ok((i, n))) => {
                    assert_eq!((s.index(), s.count()), (*i, *n), "{input}");
                    assert_eq!(s.to_string().parse::<Shard>().unwrap(), s);
                }
                (Err(e), Err(msg)) => {
                    assert!(e.to_string().contains(msg), "{input}: {e}")
                }
                (got, _) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(Shard::new(1, 3).unwrap().to_string(), "1/3");
    }

    #[test]
    fn serde_and_schema() {
        let s: Shard = serde_json::from_str("\"1/3\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"1/3\"");
        let e = serde_json::from_str::<Shard>("\"3/3\"").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = serde_json::from_str::<Shard>("3").unwrap_err();
        assert!(e.to_string().contains("a shard `I/N`"), "{e}");
        let schema = serde_json::to_value(schemars::schema_for!(Shard)).unwrap();
        assert_eq!(schema["pattern"], "^[0-9]+/[0-9]+$");
    }

    #[test]
    fn every_position_in_exactly_one_shard() {
        for n in 1..=7u32 {
            let shards: Vec<Shard> = (0..n).map(|i| Shard::new(i, n).unwrap()).collect();
            for pos in 0..50 {
                let owners = shards.iter().filter(|s| s.keeps(pos)).count();
                assert_eq!(owners, 1, "position {pos} with {n} shards");
            }
        }
        let a = Shard::new(0, 4).unwrap();
        assert!(a.disjoint(Shard::new(1, 4).unwrap()));
        assert!(!a.disjoint(a));
        assert!(!a.disjoint(Shard::new(1, 3).unwrap()));
    }
}
