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
    #[error("`{0}` is too large in shard `{1}`: shard numbers go up to 4294967295")]
    TooLarge(String, String),
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
                .map_err(|_| ShardError::TooLarge(x.to_string(), t.to_string()))
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

/// `--shard`: a fixed `I/N`, or `auto` (`auto/N`) taking the index (and count) from the
/// scheduler's environment ([`ShardArg::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    Fixed(Shard),
    /// `auto`, or `auto/N` giving the count (Kubernetes Indexed Jobs do not export it).
    Auto(Option<u32>),
}

/// The variables `--shard auto` reads, in order.
pub const AUTO_VARS: &str = "SLURM_ARRAY_TASK_ID (with SLURM_ARRAY_TASK_COUNT, or SLURM_ARRAY_TASK_MIN/MAX and SLURM_ARRAY_TASK_STEP), or JOB_COMPLETION_INDEX (with the count from `--shard auto/N` or MGPU_SHARD_COUNT)";

impl FromStr for ShardArg {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, ShardError> {
        let t = s.trim();
        if t == "auto" {
            return Ok(ShardArg::Auto(None));
        }
        if let Some(n) = t.strip_prefix("auto/") {
            let n = n.trim();
            let count = if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ShardError::Number(n.to_string(), t.to_string()));
            } else {
                n.parse::<u32>()
                    .map_err(|_| ShardError::TooLarge(n.to_string(), t.to_string()))?
            };
            if count == 0 {
                return Err(ShardError::ZeroCount(t.to_string()));
            }
            return Ok(ShardArg::Auto(Some(count)));
        }
        t.parse().map(ShardArg::Fixed)
    }
}

impl ShardArg {
    /// The shard, reading the scheduler's variables through `var` for `auto`:
    /// - Slurm job arrays: `SLURM_ARRAY_TASK_ID`; the count is `SLURM_ARRAY_TASK_COUNT`, the
    ///   index `(ID − MIN) / STEP` (`SLURM_ARRAY_TASK_MIN`, default 0; `_STEP`, default 1),
    ///   and the array must be a plain range (`--array=0-9` or `1-20:2`, not `1,4,7`);
    /// - Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX`, with the count from `auto/N` or
    ///   `MGPU_SHARD_COUNT` (set it to the Job's `completions`).
    ///
    /// A count given with `auto/N` must agree with Slurm's.
    pub fn resolve(self, var: &dyn Fn(&str) -> Option<String>) -> Result<Shard, String> {
        let count_flag = match self {
            ShardArg::Fixed(s) => return Ok(s),
            ShardArg::Auto(n) => n,
        };
        let num = |name: &str| -> Result<Option<u64>, String> {
            match var(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| format!("--shard auto: {name}={v:?} is not a whole number")),
            }
        };
        let make = |index: u64, count: u64, from: &str| -> Result<Shard, String> {
            let (Ok(i), Ok(n)) = (u32::try_from(index), u32::try_from(count)) else {
                return Err(format!(
                    "--shard auto: {from} gives shard {index}/{count}, more than 4294967295 shards"
                ));
            };
            Shard::new(i, n).map_err(|e| format!("--shard auto: {from}: {e}"))
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let from_range = num("SLURM_ARRAY_TASK_MAX")?
                .filter(|max| *max >= min)
                .map(|max| (max - min) / step + 1);
            let count = match (num("SLURM_ARRAY_TASK_COUNT")?, from_range) {
                (Some(c), Some(r)) if c != r => {
                    return Err(format!(
                        "--shard auto: this Slurm array is not a plain range (SLURM_ARRAY_TASK_COUNT={c}, but MIN..MAX step {step} holds {r} tasks): use --array=A-B[:S], or pass --shard I/N yourself"
                    ))
                }
                (Some(c), _) => c,
                (None, Some(r)) => r,
                (None, None) => {
                    return Err("--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX is, so the number of shards is unknown".into())
                }
            };
            if id < min || (id - min) % step != 0 {
                return Err(format!("--shard auto: SLURM_ARRAY_TASK_ID={id} is not in the array {min}-… step {step}"));
            }
            if let Some(n) = count_flag {
                if u64::from(n) != count {
                    return Err(format!(
                        "--shard auto/{n}: the Slurm array has {count} tasks"
                    ));
                }
            }
            return make((id - min) / step, count, "the Slurm array variables");
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = match (count_flag, num("MGPU_SHARD_COUNT")?) {
                (Some(n), Some(e)) if u64::from(n) != e => {
                    return Err(format!(
                        "--shard auto/{n} and MGPU_SHARD_COUNT={e} disagree"
                    ))
                }
                (Some(n), _) => u64::from(n),
                (None, Some(e)) => e,
                (None, None) => {
                    return Err("--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but the number of shards is not: pass --shard auto/N or set MGPU_SHARD_COUNT to the Job's `completions`".into())
                }
            };
            return make(index, count, "JOB_COMPLETION_INDEX");
        }
        Err(format!(
            "--shard auto: no scheduler variables found; looked for {AUTO_VARS}; outside a scheduler pass --shard I/N"
        ))
    }
}

/// Names the scheduler variable that says this process is one of several, when `--shard` was
/// not given (then every shard would make every image).
pub fn unsharded_warning(var: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
        .into_iter()
        .find(|v| var(v).is_some())
        .map(|v| {
            format!("{v} is set but --shard is not: this run makes every image of the manifest (and so does every other task of the array); pass --shard auto to split the manifest")
        })
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
            ("1/99999999999", Err("`99999999999` is too large in shard `1/99999999999`")),
            // #12 defect 8: a huge N is too large, not "not a whole number".
            ("0/18446744073709551615", Err("`18446744073709551615` is too large")),
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

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    /// #12: `--shard auto` from Slurm arrays and Kubernetes Indexed Jobs.
    #[test]
    fn shard_auto_from_the_scheduler() {
        let auto = |s: &str, pairs: &[(&str, &str)]| {
            s.parse::<ShardArg>()
                .unwrap()
                .resolve(&env(pairs))
                .map(|s| s.to_string())
        };
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert_eq!(auto("auto", &slurm).unwrap(), "2/3");
        assert_eq!(auto("auto/3", &slurm).unwrap(), "2/3");
        assert!(auto("auto/4", &slurm).unwrap_err().contains("has 3 tasks"));
        // 1-9:2 → 1,3,5,7,9: task 7 is shard 3 of 5; MAX alone gives the count.
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "9"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ];
        assert_eq!(auto("auto", &stepped).unwrap(), "3/5");
        let listed = [
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert!(auto("auto", &listed)
            .unwrap_err()
            .contains("not a plain range"));
        let k8s = [("JOB_COMPLETION_INDEX", "4")];
        assert_eq!(auto("auto/5", &k8s).unwrap(), "4/5");
        let e = auto("auto", &k8s).unwrap_err();
        assert!(e.contains("MGPU_SHARD_COUNT"), "{e}");
        let k8s_env = [("JOB_COMPLETION_INDEX", "4"), ("MGPU_SHARD_COUNT", "6")];
        assert_eq!(auto("auto", &k8s_env).unwrap(), "4/6");
        assert!(auto("auto/5", &k8s_env).unwrap_err().contains("disagree"));
        assert!(auto("auto/4", &k8s).unwrap_err().contains("out of range"));
        let e = auto("auto", &[]).unwrap_err();
        for v in [
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_COUNT",
            "JOB_COMPLETION_INDEX",
        ] {
            assert!(e.contains(v), "{e}");
        }
        let e = auto("auto", &[("SLURM_ARRAY_TASK_ID", "x")]).unwrap_err();
        assert!(e.contains("not a whole number"), "{e}");
        assert_eq!(
            auto("1/4", &slurm).unwrap(),
            "1/4",
            "a fixed shard ignores the variables"
        );
        assert!("auto/0".parse::<ShardArg>().is_err());
        assert!(unsharded_warning(&env(&k8s))
            .unwrap()
            .contains("JOB_COMPLETION_INDEX"));
        assert!(unsharded_warning(&env(&[])).is_none());
    }
}
