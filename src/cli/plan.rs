//! `mgpu plan MANIFEST`: where every block of every model the jobs need will live, how much
//! memory each device holds, and the predicted step time, before any weight is loaded.
//! Reads weight-file headers only; plans for this machine (probe) or for `--hardware FILE`.

use std::path::PathBuf;

use anyhow::Context;

use super::check::ColorChoice;
use super::Status;
use crate::hardware::{file, probe, Hardware};
use crate::manifest::{self, Diagnostics};
use crate::plan;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest to plan.
    pub manifest: PathBuf,
    /// Plan for the machine described by this hardware file (`mgpu probe --save FILE` writes
    /// one) instead of probing this machine.
    #[arg(long, value_name = "FILE")]
    pub hardware: Option<PathBuf>,
    /// Print the plan as JSON (models[].name, compute, placement, blocks[], predicted, …).
    #[arg(long)]
    pub json: bool,
    /// Color diagnostics: auto, always or never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
}

/// The hardware to plan for: the file given, else a probe of this machine.
pub fn hardware(path: Option<&PathBuf>) -> anyhow::Result<Hardware> {
    match path {
        Some(p) => file::read(p).map_err(|e| anyhow::anyhow!("{e}")),
        None => Ok(probe::probe(false)
            .context("probing this machine")?
            .hardware),
    }
}

fn fail(diags: &Diagnostics, color: bool, what: &str) -> Status {
    eprintln!("{}", diags.render(color));
    eprintln!("{what}: {}", diags.counts());
    Status::Failed
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    let color = args.color.for_stderr();
    let shown = args.manifest.display().to_string();
    let m = match manifest::load(&args.manifest) {
        Ok(m) => m,
        Err(d) => return Ok(fail(&d, color, &format!("{shown}: invalid"))),
    };
    if !m.warnings.is_empty() {
        eprintln!("{}", m.warnings.render(color));
    }
    let hw = hardware(args.hardware.as_ref())?;
    let inventories = match plan::manifest::read_inventories(&m) {
        Ok(i) => i,
        Err(d) => return Ok(fail(&d, color, &format!("{shown}: cannot plan"))),
    };
    let request = plan::manifest::request(&m, &inventories);
    match plan::plan(&request, &hw) {
        Ok(p) => {
            if args.json {
                println!("{}", plan::render_json(&p));
            } else {
                print!("{}", plan::render_text(&p));
            }
            Ok(Status::Ok)
        }
        Err(errors) => {
            let d = plan::manifest::diagnostics(&m, &errors);
            Ok(fail(
                &d,
                color,
                &format!("{shown}: does not fit this machine"),
            ))
        }
    }
}
