//! The FLUX pipeline as a [`super::Generator`]: load → patch → distribute each model per the
//! plan, encode prompts, sample batches in lockstep through the streaming engine, decode.
//!
//! PLACEHOLDER on the branch that builds the queue: the pipeline engineer replaces this file.

use std::sync::Arc;

use super::{ExecError, Generator};
use crate::hardware::Hardware;
use crate::manifest::Manifest;
use crate::plan::Plan;

/// Options of a run that reach the pipeline.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Keep text encoders loaded after encoding (also per model: `keep_loaded`).
    pub keep_text_encoders: bool,
}

/// Builds the generator for `manifest` on `hardware` following `plan`.
pub fn generator(
    manifest: Arc<Manifest>,
    plan: Arc<Plan>,
    hardware: Arc<Hardware>,
    options: PipelineOptions,
) -> Result<Box<dyn Generator>, ExecError> {
    let _ = (manifest, plan, hardware, options);
    Err(ExecError::Other(
        "the FLUX pipeline is not built yet on this branch".into(),
    ))
}
