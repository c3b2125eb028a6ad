//! What loading a set of LoRAs did, per file: how many of its tensors matched the base model,
//! which did not (with the closest base module name), what belongs to other components, and
//! which base tensors will be patched. Plain data (serde) plus a text rendering; the run
//! reporter decides where it goes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::family::Family;

/// A LoRA module the base model does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmatched {
    /// The module key as stored in the LoRA file (without `.lora_down.weight` etc.).
    pub key: String,
    /// The closest module name the base model has, in the same spelling.
    pub suggestion: Option<String>,
    /// Why it did not match, when it is not simply an unknown name.
    pub reason: Option<String>,
}

/// One LoRA file's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: PathBuf,
    pub strength: f32,
    /// Key spellings seen: `kohya`, `peft`, `bfl`, `diff`.
    pub formats: Vec<&'static str>,
    /// Tensors in the file.
    pub tensors: usize,
    /// Modules (a down/up/alpha group, or a difference) in the file.
    pub modules: usize,
    /// Modules applied to this model, and the tensors they consumed.
    pub matched_modules: usize,
    pub matched_tensors: usize,
    /// Modules addressed to other components (`clip-l`: 72), applied when those load.
    pub other_components: BTreeMap<String, usize>,
    pub unmatched: Vec<Unmatched>,
    /// Canonical base tensors this file changes.
    pub patched: Vec<String>,
    /// Where alpha came from when the file has no `.alpha` tensors.
    pub alpha_source: Option<String>,
}

/// The outcome of [`super::LoraSet::load`].
#[derive(Debug, Clone, Serialize)]
pub struct LoraReport {
    pub family: Family,
    pub files: Vec<FileReport>,
    /// Every canonical tensor that will be patched, with the files (indices) patching it.
    pub patched: BTreeMap<String, Vec<usize>>,
    pub warnings: Vec<String>,
}

impl LoraReport {
    pub fn matched_modules(&self) -> usize {
        self.files.iter().map(|f| f.matched_modules).sum()
    }

    pub fn unmatched(&self) -> usize {
        self.files.iter().map(|f| f.unmatched.len()).sum()
    }
}

impl fmt::Display for Unmatched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.key)?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

impl fmt::Display for LoraReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "LoRA on {}: {} file{}, {} base tensor{} patched",
            self.family,
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" },
            self.patched.len(),
            if self.patched.len() == 1 { "" } else { "s" }
        )?;
        for r in &self.files {
            write!(
                f,
                "  {} (strength {}, {}): {}/{} modules matched ({} tensors), {} base tensor{} patched",
                r.path.display(),
                r.strength,
                if r.formats.is_empty() { "no LoRA keys".to_string() } else { r.formats.join("+") },
                r.matched_modules,
                r.modules,
                r.matched_tensors,
                r.patched.len(),
                if r.patched.len() == 1 { "" } else { "s" }
            )?;
            for (c, n) in &r.other_components {
                write!(f, "; {n} for {c}")?;
            }
            writeln!(f)?;
            for u in r.unmatched.iter().take(10) {
                writeln!(f, "    unmatched: {u}")?;
            }
            if r.unmatched.len() > 10 {
                writeln!(f, "    … and {} more unmatched", r.unmatched.len() - 10)?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}
