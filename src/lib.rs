//! mgpu: run diffusion models whose weights do not fit on one GPU.
//!
//! A run goes through these stages, each in its own module:
//!
//! 1. [`manifest`]: read the TOML manifest into raw types that keep spans, validate it against
//!    the JSON schema and semantic rules, and report every error at once, cargo-style.
//! 2. [`hardware`]: the machine as a value (devices, memory, links), from a probe or a file.
//! 3. [`inventory`]: tensor names, shapes, dtypes and bytes read from weight-file headers,
//!    grouped into placement units (transformer blocks).
//! 4. [`plan`]: a pure function of manifest + hardware + inventories: which unit lives where,
//!    the prefetch depth, the predicted step time.
//! 5. [`exec`]: the executor, the only place weights move: load, patch LoRAs, distribute,
//!    stream units to the compute device, run the batched job queue.
//! 6. [`output`] / [`golden`]: images with metadata, golden hashes.
//!
//! Model code ([`models`]) and samplers ([`sample`]) only compute; small languages
//! ([`units::ByteSize`], [`device::DeviceName`], [`alloc::Allocation`]) are one type each.

// Module docs name private modules to say where things happen; rustdoc builds with
// `--document-private-items` resolve them.
#![allow(rustdoc::private_intra_doc_links)]

pub mod alloc;
pub mod cli;
pub mod device;
pub mod exec;
pub mod family;
pub mod golden;
pub mod hardware;
pub mod inventory;
pub mod manifest;
pub mod models;
pub mod output;
pub mod plan;
pub mod report;
pub mod sample;
pub mod units;
pub mod weights;
