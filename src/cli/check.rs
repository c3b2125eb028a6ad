//! `mgpu check MANIFEST`: validates a manifest (syntax, schema, references, ranges, output
//! templates) and checks that the files it names exist, without loading any weights.
//! Prints every error and warning cargo-style, then a one-line summary, on stderr.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use schemars::JsonSchema;
use serde::Serialize;

use super::Status;
use crate::manifest::{self, Diagnostic, Diagnostics, Severity};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The manifest to check.
    pub manifest: PathBuf,
    /// Print the result as JSON on stdout (schemas/check.schema.json) instead of text on
    /// stderr; the exit code is the same.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub color: super::ColorArg,
}

/// Version of the `mgpu check --json` layout.
pub const CHECK_FORMAT: u32 = 1;

/// `mgpu check --json`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CheckOutput {
    /// Layout version; bumped when a field changes meaning.
    pub format: u32,
    pub mgpu_version: String,
    pub manifest: PathBuf,
    /// No errors (warnings allowed).
    pub valid: bool,
    pub errors: usize,
    pub warnings: usize,
    /// The summary line the text output ends with.
    pub summary: String,
    pub diagnostics: Vec<DiagnosticOutput>,
}

/// One error or warning.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DiagnosticOutput {
    /// `error` or `warning`.
    pub severity: String,
    pub message: String,
    /// The file it points into, with its 1-based line and column (absent when it points
    /// nowhere).
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The text under the caret.
    pub label: Option<String>,
    pub help: Option<String>,
    pub notes: Vec<String>,
    /// The diagnostic as the text output shows it (no colors).
    pub rendered: String,
}

impl DiagnosticOutput {
    fn of(d: &Diagnostic) -> Self {
        let at = d
            .source
            .as_ref()
            .zip(d.primary.as_ref())
            .map(|(src, l)| (src.path.clone(), src.line_col(l.span.start)));
        DiagnosticOutput {
            severity: match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            }
            .into(),
            message: d.message.clone(),
            file: at
                .as_ref()
                .map(|(p, _)| p.clone())
                .or_else(|| d.source.as_ref().map(|s| s.path.clone())),
            line: at.as_ref().map(|(_, (l, _))| *l),
            column: at.as_ref().map(|(_, (_, c))| *c),
            label: d.primary.as_ref().map(|l| l.text.clone()),
            help: d.help.clone(),
            notes: d.notes.clone(),
            rendered: d.render(false),
        }
    }
}

/// What `mgpu check` found: the diagnostics and the summary line.
fn diagnose(path: &std::path::Path) -> (Diagnostics, String) {
    let shown = path.display();
    match manifest::load(path) {
        Ok(m) => {
            let mut all = m.warnings.clone();
            all.extend(m.check_files());
            all.sort();
            let images: u64 = m.jobs.iter().map(|j| j.count as u64).sum();
            let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
            let what = format!(
                "{}, {}, {} → {}",
                plural(m.models.len(), "model"),
                plural(m.pipelines.len(), "pipeline"),
                plural(m.jobs.len(), "job"),
                plural(images as usize, "image"),
            );
            let summary = if all.has_errors() {
                format!("{shown}: invalid: {}", all.counts())
            } else if all.is_empty() {
                format!("{shown}: ok ({what})")
            } else {
                format!("{shown}: ok ({what}); {}", all.counts())
            };
            (all, summary)
        }
        Err(diags) => {
            let summary = format!("{shown}: invalid: {}", diags.counts());
            (diags, summary)
        }
    }
}

/// The JSON of `mgpu check --json`.
pub fn json_report(path: &std::path::Path) -> CheckOutput {
    let (diags, summary) = diagnose(path);
    let all: Vec<&Diagnostic> = diags.iter().collect();
    CheckOutput {
        format: CHECK_FORMAT,
        mgpu_version: env!("CARGO_PKG_VERSION").into(),
        manifest: path.to_path_buf(),
        valid: !diags.has_errors(),
        errors: all.iter().filter(|d| d.severity == Severity::Error).count(),
        warnings: all
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count(),
        summary,
        diagnostics: all.into_iter().map(DiagnosticOutput::of).collect(),
    }
}

/// The diagnostics and summary line `mgpu check` prints, and whether the manifest is valid.
pub fn report(path: &std::path::Path, color: bool) -> (String, bool) {
    let (diags, summary) = diagnose(path);
    let ok = !diags.has_errors();
    let mut out = render(&diags, color);
    out.push_str(&summary);
    out.push('\n');
    (out, ok)
}

fn render(diags: &Diagnostics, color: bool) -> String {
    if diags.is_empty() {
        String::new()
    } else {
        format!("{}\n", diags.render(color))
    }
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    if args.json {
        let out = json_report(&args.manifest);
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("check output always serialises")
        );
        return Ok(if out.valid {
            Status::Ok
        } else {
            Status::Failed
        });
    }
    let (text, ok) = report(&args.manifest, args.color.for_stderr());
    eprint!("{text}");
    Ok(if ok { Status::Ok } else { Status::Failed })
}
