//! `mgpu check MANIFEST`: validates a manifest (syntax, schema, references, ranges, output
//! templates) and checks that the files it names exist, without loading any weights.
//! Prints every error and warning cargo-style, then a one-line summary, on stderr.

use std::path::PathBuf;

use clap::Args as ClapArgs;

use super::Status;
use crate::manifest::{self, Diagnostics};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The manifest to check.
    pub manifest: PathBuf,
    #[command(flatten)]
    pub color: super::ColorArg,
}

/// The diagnostics and summary line `mgpu check` prints, and whether the manifest is valid.
pub fn report(path: &std::path::Path, color: bool) -> (String, bool) {
    let shown = path.display();
    let (diags, summary) = match manifest::load(path) {
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
    };
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
    let (text, ok) = report(&args.manifest, args.color.for_stderr());
    eprint!("{text}");
    Ok(if ok { Status::Ok } else { Status::Failed })
}
