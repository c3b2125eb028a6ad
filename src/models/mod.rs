//! Model code (candle). Only computes: the executor hands each block its weights.
//!
//! Contract with the executor (docs/decisions.md §4–§6):
//! - Each family has a `Config` with named presets citing the reference implementation, and
//!   lists its placement units in execution order, named as [`crate::family::Family::unit_of`]
//!   names them (`double_blocks.0`, …, `single_blocks.37`).
//! - Resident parts (embeddings, final layers) are built once from a `VarBuilder`.
//! - A block is built for each use from a `VarBuilder` over its unit's tensors, already on the
//!   compute device; building is cheap (reference-counted tensors). Model code never moves
//!   weights between devices.
//! - Forward passes take one job at a time (batch dimension 1): a batch is the executor running
//!   each fetched block over every job of the batch in turn.

pub mod act;
pub mod clip;
pub mod coverage;
pub mod flux;
pub mod fp8;
pub mod seeded;
pub mod spec;
pub mod t5;
#[cfg(test)]
pub(crate) mod testutil;
pub mod tiny;
pub mod tokenize;
pub mod vae;
pub mod wan;
pub mod wan_vae;
