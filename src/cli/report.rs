//! `mgpu report RUN.json --html FILE`: rebuilds the HTML report from a JSON run report
//! (`mgpu run --report`), re-reading the thumbnails from the output files it names.

use std::path::PathBuf;

use anyhow::Context;

use super::Status;
use crate::report::{self, RunReport};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  mgpu run manifests/demo.toml --report run.json\n  \
                        mgpu report run.json --html report.html"
)]
pub struct Args {
    /// The JSON run report (`mgpu run --report FILE`, `mgpu golden verify --report FILE`).
    pub report: PathBuf,
    /// Write the HTML report to FILE: thumbnails are read from the outputs the report names
    /// (cards of outputs that are gone say so).
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    let text = std::fs::read_to_string(&args.report)
        .with_context(|| format!("reading the run report {}", args.report.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON (expected a run report written by `mgpu run --report`)",
            args.report.display()
        )
    })?;
    let parsed: RunReport = serde_json::from_value(value.clone()).with_context(|| {
        format!(
            "{} is not an mgpu run report (written by `mgpu run --report`)",
            args.report.display()
        )
    })?;
    if parsed.format > report::REPORT_FORMAT {
        eprintln!(
            "warning: {} has report format {}, newer than this mgpu's {}: fields it does not \
             know are shown only where the page renders them generically",
            args.report.display(),
            parsed.format,
            report::REPORT_FORMAT
        );
    }
    report::html::write(&args.html, &parsed, &value, true)
        .with_context(|| format!("writing the HTML report {}", args.html.display()))?;
    eprintln!("wrote {}", args.html.display());
    Ok(Status::Ok)
}
