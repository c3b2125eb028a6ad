//! The command line: clap definitions (their doc comments are the `--help` text) and dispatch.
//!
//! Each subcommand lives in its own file with its `Args` struct and a `run` function returning
//! [`Status`]. Exit codes: 0 ok, 1 invalid input or failed checks/jobs, 2 usage or internal
//! error, 75 output root locked by another run (try again later), 130 interrupted (SIGINT),
//! 143 terminated (SIGTERM). Only this module and [`crate::report`] print.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::hardware::{file, Hardware};

pub mod bench;
pub mod check;
pub mod completions;
pub mod golden;
pub mod inspect;
pub mod make_tiny;
pub mod plan;
pub mod probe;
pub mod report;
pub mod run;
pub mod schema;

/// What a command concluded, when it ran to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything checked out / every job succeeded (exit 0).
    Ok,
    /// The input was invalid or some check/job failed; details were printed (exit 1).
    Failed,
    /// The command could not do its work for a reason other than the input (an internal
    /// error); details were printed (exit 2).
    Error,
    /// Another run holds the output root: try again later (exit 75, sysexits' `EX_TEMPFAIL`).
    Locked,
    /// Stopped by SIGINT / Ctrl-C (exit 130).
    Interrupted,
    /// Stopped by SIGTERM (a scheduler's stop; exit 143).
    Terminated,
}

impl Status {
    /// The more severe of two statuses (Ok < Failed < Locked < Error < Interrupted <
    /// Terminated).
    pub fn worst(self, other: Status) -> Status {
        let rank = |s: Status| match s {
            Status::Ok => 0,
            Status::Failed => 1,
            Status::Locked => 2,
            Status::Error => 3,
            Status::Interrupted => 4,
            Status::Terminated => 5,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// mgpu runs diffusion image and video models whose weights do not fit on one GPU.
///
/// Write a TOML manifest naming models, devices, how to spread each model's weights and the
/// jobs to run; `mgpu check` validates it, `mgpu plan` shows where every block will live and
/// how fast a step will be, `mgpu run` produces the images.
///
/// Exit codes: 0 ok, 1 invalid input or failed jobs/checks, 2 usage or internal error,
/// 75 output root locked by another run (try again later), 130 interrupted (SIGINT),
/// 143 terminated (SIGTERM).
#[derive(Debug, Parser)]
#[command(name = "mgpu", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a manifest: syntax, keys, references, numbers, output paths, and that the
    /// files it names exist. Prints every problem with its place in the file; exit 0 when
    /// valid (warnings allowed), 1 when not.
    #[command(after_help = "Example:\n  mgpu check manifests/demo.toml          \
                            # every problem at once, then a summary\n  \
                            mgpu check m.toml --json | jq .valid")]
    Check(check::Args),
    /// Show where every block of every model will live, the memory per device and the
    /// predicted step time, before loading any weights (reads file headers only).
    #[command(
        after_help = "Example:\n  mgpu plan manifests/demo.toml --hardware benches/hw-h100x2-2026-11-26.toml"
    )]
    Plan(plan::Args),
    /// List this machine's devices and link rates; `--save` writes a hardware file.
    Probe(probe::Args),
    /// Show what a weight file holds (format, family, tensors) or dump one tensor as .npy.
    Inspect(inspect::Args),
    /// Print the JSON schema of the manifest, the hardware file or a JSON output (for editors:
    /// start a manifest with `#:schema ../schemas/manifest.schema.json`).
    Schema(schema::Args),
    /// Write a tiny random-weight model of a family in its real key layout (demo and tests).
    MakeTiny(make_tiny::Args),
    /// Measure block streaming on a FLUX-shaped transformer with generated weights.
    Bench(bench::Args),
    /// Make the manifest's images: resumes (skips images whose file carries the same job
    /// hash), `--shard I/N` splits a manifest over machines, `--report` writes a JSON run
    /// report. Exit 0 all made, 1 failed images or invalid input, 2 usage/internal error,
    /// 75 output root locked by another run (try again later), 130 SIGINT, 143 SIGTERM.
    #[command(
        after_help = "Example:\n  mgpu run manifests/demo.toml --report run.json --html report.html"
    )]
    Run(run::Args),
    /// Record or verify golden outputs: hashes of decoded pixels and latents, with copies.
    Golden(golden::Args),
    /// Rebuild the HTML report from a JSON run report (`mgpu run --report FILE`).
    Report(report::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff) of mgpu and every subcommand.
    Man(completions::ManArgs),
}

/// `--hardware FILE`, defined once for every subcommand that plans (plan, run, golden,
/// bench).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HardwareArg {
    /// Plan (and predict) for the machine described by this hardware file instead of probing
    /// this one (`mgpu probe --bench --save FILE` writes one; benches/*.toml are measured
    /// machines).
    #[arg(long, value_name = "FILE")]
    pub hardware: Option<PathBuf>,
}

impl HardwareArg {
    /// The file's machine, if a file was given.
    pub fn read(&self) -> anyhow::Result<Option<Hardware>> {
        self.hardware
            .as_ref()
            .map(|p| file::read(p).map_err(|e| anyhow::anyhow!("{e}")))
            .transpose()
    }

    /// The file's machine, else a probe of this one.
    pub fn resolve(&self) -> anyhow::Result<Hardware> {
        match self.read()? {
            Some(h) => Ok(h),
            None => Ok(crate::hardware::probe::probe(false)
                .context("probing this machine")?
                .hardware),
        }
    }
}

/// `--color WHEN`, defined once for every subcommand that prints diagnostics.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ColorArg {
    /// Color diagnostics: auto (when stderr is a terminal and NO_COLOR is not set), always
    /// or never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
}

impl ColorArg {
    /// Whether to color output written to stderr.
    pub fn for_stderr(self) -> bool {
        self.color.for_stderr()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to color output written to stderr.
    pub fn for_stderr(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// Parses the command line, runs it and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(Status::Ok) => ExitCode::SUCCESS,
        Ok(Status::Failed) => ExitCode::from(1),
        Ok(Status::Error) => ExitCode::from(2),
        Ok(Status::Locked) => ExitCode::from(75),
        Ok(Status::Interrupted) => ExitCode::from(130),
        Ok(Status::Terminated) => ExitCode::from(143),
        Err(e) => {
            eprintln!("{}", error_line(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// `error: MESSAGE`, unless the message is a rendered diagnostic that already starts with
/// `error:` (a bad `--hardware` file said "error: error:", #12 defect 8).
fn error_line(message: &str) -> String {
    if message.starts_with("error:") {
        message.to_string()
    } else {
        format!("error: {message}")
    }
}

pub fn run(cli: Cli) -> anyhow::Result<Status> {
    match cli.command {
        Command::Plan(args) => plan::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::MakeTiny(args) => make_tiny::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Check(args) => check::run(args),
        Command::Schema(args) => schema::run(args),
        Command::Run(args) => run::run(args),
        Command::Golden(args) => golden::run(args),
        Command::Report(args) => report::run(args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}
