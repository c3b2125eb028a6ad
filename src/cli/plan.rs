//! `mgpu plan MANIFEST`: where every block of every model the jobs need will live, how much
//! memory each device holds, and the predicted step time, before any weight is loaded.
//! Reads weight-file headers only; plans for this machine (probe) or for `--hardware FILE`.
//! A weights file that is not there yet is planned with its family's published layout when
//! the file name says which (`plan::manifest::assumed_inventory`), marked as assumed.

use std::path::PathBuf;

use super::Status;
use crate::manifest::{self, Diagnostics};
use crate::plan;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest to plan.
    pub manifest: PathBuf,
    #[command(flatten)]
    pub hardware: super::HardwareArg,
    /// Print the plan as JSON (models[].name, compute, placement, blocks[], predicted, …).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub color: super::ColorArg,
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
    let hw = args.hardware.resolve()?;
    // Planning before downloading: missing files of known families get their published
    // layout, and the plan says so.
    let (inventories, assumed) = match plan::manifest::read_inventories_assuming(&m) {
        Ok(i) => i,
        Err(d) => return Ok(fail(&d, color, &format!("{shown}: cannot plan"))),
    };
    for note in assumed.values() {
        eprintln!("warning: {note}");
    }
    let request = plan::manifest::request(&m, &inventories);
    match plan::plan(&request, &hw) {
        Ok(mut p) => {
            for mp in &mut p.models {
                if let Some(note) = assumed.get(&mp.name) {
                    mp.notes.insert(0, format!("assumed layout: {note}"));
                }
            }
            if args.json {
                println!("{}", plan::render_json_output(&p));
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
                &format!("{shown}: cannot be planned for this machine"),
            ))
        }
    }
}
