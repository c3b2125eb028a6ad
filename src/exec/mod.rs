//! The executor: load, patch LoRAs, distribute, stream units, run the batched job queue.
//! The only place where weights move. Design: docs/executor.md.

pub mod bench;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod unit;

#[cfg(test)]
mod engine_tests;
