//! Where a run's time goes: the phases of loading and making images, timed where they happen
//! and reported as [`super::Event::Phase`] (seconds and bytes per phase and model). The run
//! report sums them (`phases`), the terminal prints one summary line (docs/executor.md,
//! "Phases").
//!
//! Phases are wall-clock seconds of the thread that does the work; work that overlaps other
//! work (file hashing on background threads) is reported as such, so phases need not add up
//! to the run's wall time.

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One kind of work; see docs/executor.md for what each one covers.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening a weight file (header, validation, map) and copying mapped bytes into owned
    /// host homes (CPU builds).
    Read,
    /// SHA-256/AutoV3 of model and LoRA files for the records (background threads).
    Hash,
    /// Loading LoRA files and patching weights with them.
    Patch,
    /// Assembling, dequantising or widening tensors to the compute dtype on the host.
    Convert,
    /// Writing patched or converted weights homed on `disk` to a spill file.
    Spill,
    /// Page-locking host homes and copying them in (CUDA), donor uploads included.
    Pin,
    /// Placing weights on the compute device (mapped pages read as they are copied).
    Upload,
    /// Text encoding (per text encoder).
    Encode,
    /// The denoising loop of a batch.
    Sample,
    /// VAE decoding of a batch.
    Decode,
    /// Encoding and writing output files (PNG, APNG, MP4).
    Write,
}

impl Phase {
    pub const ALL: [Phase; 11] = [
        Phase::Read,
        Phase::Hash,
        Phase::Patch,
        Phase::Convert,
        Phase::Spill,
        Phase::Pin,
        Phase::Upload,
        Phase::Encode,
        Phase::Sample,
        Phase::Decode,
        Phase::Write,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Read => "read",
            Phase::Hash => "hash",
            Phase::Patch => "patch",
            Phase::Convert => "convert",
            Phase::Spill => "spill",
            Phase::Pin => "pin",
            Phase::Upload => "upload",
            Phase::Encode => "encode",
            Phase::Sample => "sample",
            Phase::Decode => "decode",
            Phase::Write => "write",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seconds and bytes of one phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    pub seconds: f64,
    pub bytes: u64,
}

/// Phase times of one piece of work (a model's load), in the order first seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Phases(pub Vec<(Phase, Spent)>);

impl Phases {
    /// Adds `seconds` and `bytes` to `phase`.
    pub fn add(&mut self, phase: Phase, seconds: f64, bytes: u64) {
        match self.0.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, s)) => {
                s.seconds += seconds;
                s.bytes += bytes;
            }
            None => self.0.push((phase, Spent { seconds, bytes })),
        }
    }

    /// Adds the time since `t0` to `phase`.
    pub fn since(&mut self, phase: Phase, t0: Instant, bytes: u64) {
        self.add(phase, t0.elapsed().as_secs_f64(), bytes);
    }

    /// Runs `f`, adding its time to `phase`.
    pub fn time<T>(&mut self, phase: Phase, bytes: u64, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let r = f();
        self.since(phase, t0, bytes);
        r
    }

    /// Adds every phase of `other`.
    pub fn merge(&mut self, other: &Phases) {
        for (p, s) in &other.0 {
            self.add(*p, s.seconds, s.bytes);
        }
    }

    /// One event per phase for `model`.
    pub fn events(&self, model: &str) -> impl Iterator<Item = super::Event> + '_ {
        let model = model.to_string();
        self.0.iter().map(move |(phase, s)| super::Event::Phase {
            model: model.clone(),
            phase: *phase,
            seconds: s.seconds,
            bytes: s.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_in_first_seen_order() {
        let mut p = Phases::default();
        p.add(Phase::Upload, 1.0, 10);
        p.add(Phase::Read, 0.5, 5);
        p.add(Phase::Upload, 2.0, 20);
        let x = p.time(Phase::Convert, 7, || 42);
        assert_eq!(x, 42);
        let mut q = Phases::default();
        q.add(Phase::Read, 0.25, 1);
        q.merge(&p);
        assert_eq!(
            q.0.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [Phase::Read, Phase::Upload, Phase::Convert]
        );
        assert_eq!(
            q.0[1].1,
            Spent {
                seconds: 3.0,
                bytes: 30
            }
        );
        assert_eq!(q.0[0].1.bytes, 6);
        let names: Vec<String> = Phase::ALL.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            serde_json::to_string(&Phase::Upload).unwrap(),
            format!("\"{}\"", names[6])
        );
        assert_eq!(q.events("m").count(), 3);
    }
}
