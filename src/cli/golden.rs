//! `mgpu golden record|verify MANIFEST`: golden outputs (docs/golden.md).
//!
//! Both run every image of the manifest into a temporary output root (the manifest's own
//! outputs and the golden files are never touched by a verification) through the same
//! [`super::run::execute`] as `mgpu run`. `record` writes `golden/<manifest-stem>/` only when
//! every image was made, and refuses to replace existing golden files without `--force`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::run::{execute, pipeline_generator, GoldenMode, RunOptions};
use super::Status;
use crate::golden;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Run the manifest and write its golden files: per image the SHA-256 of the decoded RGB8
    /// pixels and of the final latent, a copy of the PNG and the latent (.npy), and this
    /// machine's fingerprint.
    Record(Common),
    /// Run the manifest again and compare with its golden files: bit-exact when this machine's
    /// fingerprint matches the recording's, else within PSNR ≥ 40 dB and latent max |Δ| ≤ 1e-3.
    /// Prints which images differ and by how much; exit 1 on any difference.
    Verify(Common),
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// The manifest to run.
    pub manifest: PathBuf,
    /// The golden folder (default: `golden/<manifest-stem>`, relative to the current folder).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// `record`: replace existing golden files (the old ones are removed only once the new
    /// recording is complete).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub hardware: super::HardwareArg,
    /// Write the JSON run report (with the golden comparison) to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print the JSON run report (with the golden comparison) on stdout; the same as
    /// `--report -`.
    #[arg(long, conflicts_with = "report")]
    pub json: bool,
    /// Write an HTML report: the run's cards and plots and, for `verify`, the reference, the
    /// new output and a difference heat map of every output that differs, with its PSNR.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Print only failures, warnings and the summary.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub color: super::ColorArg,
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    let (c, record) = match args.action {
        Action::Record(c) => (c, true),
        Action::Verify(c) => (c, false),
    };
    let dir = c
        .dir
        .clone()
        .unwrap_or_else(|| golden::default_dir(&c.manifest));
    if !record && c.force {
        anyhow::bail!("--force only applies to `mgpu golden record`");
    }
    let scratch = tempfile::Builder::new()
        .prefix("mgpu-golden-")
        .tempdir()
        .context("creating a temporary output folder")?;
    let opts = RunOptions {
        manifest: c.manifest,
        hardware: c.hardware,
        force: true,
        shard: None,
        report: if c.json {
            Some(PathBuf::from("-"))
        } else {
            c.report
        },
        html: c.html,
        golden: if record {
            GoldenMode::Record {
                dir,
                force: c.force,
            }
        } else {
            GoldenMode::Verify(dir)
        },
        quiet: c.quiet,
        color: c.color.for_stderr(),
        output_root: Some(scratch.path().join("out")),
        grace: None,
    };
    execute(&opts, &mut pipeline_generator)
}
