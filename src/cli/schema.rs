//! `mgpu schema [WHICH]`: prints a JSON schema (pretty, stable key order), for editors
//! (taplo's `#:schema` comment) and for the committed copies under `schemas/`.

use clap::{Args as ClapArgs, ValueEnum};

use super::Status;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Which schema to print.
    #[arg(value_enum, default_value_t = Which::Manifest)]
    pub which: Which,
}

/// The files mgpu reads and the outputs it writes that have a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The manifest (`schemas/manifest.schema.json`).
    Manifest,
    /// The hardware file of `mgpu probe --save` / `--hardware` (`schemas/hardware.schema.json`).
    Hardware,
    /// The JSON run report of `mgpu run --report` and `mgpu golden … --report/--json`, with
    /// the golden comparison (`schemas/report.schema.json`).
    Report,
    /// `mgpu check --json` (`schemas/check.schema.json`).
    Check,
    /// `mgpu plan --json` (`schemas/plan.schema.json`).
    Plan,
    /// `mgpu inspect --json` (`schemas/inspect.schema.json`).
    Inspect,
    /// `mgpu probe --json` (`schemas/probe.schema.json`).
    Probe,
}

impl Which {
    /// Every schema with its committed file under `schemas/`.
    pub const ALL: [(Which, &'static str); 7] = [
        (Which::Manifest, "manifest.schema.json"),
        (Which::Hardware, "hardware.schema.json"),
        (Which::Report, "report.schema.json"),
        (Which::Check, "check.schema.json"),
        (Which::Plan, "plan.schema.json"),
        (Which::Inspect, "inspect.schema.json"),
        (Which::Probe, "probe.schema.json"),
    ];
}

/// A type's schema as pretty JSON with a newline.
fn schema_of<T: schemars::JsonSchema>() -> String {
    let mut s = serde_json::to_string_pretty(&schemars::schema_for!(T)).expect("schemas serialise");
    s.push('\n');
    s
}

/// The schema text for `which`, ending in a newline.
pub fn text(which: Which) -> String {
    match which {
        Which::Manifest => crate::manifest::schema::manifest_schema_json(),
        Which::Hardware => crate::hardware::file::schema_json(),
        Which::Report => schema_of::<crate::report::RunReport>(),
        Which::Check => schema_of::<super::check::CheckOutput>(),
        Which::Plan => schema_of::<crate::plan::PlanOutput>(),
        Which::Inspect => schema_of::<super::inspect::InspectOutput<'static>>(),
        Which::Probe => schema_of::<crate::hardware::probe::ProbeOutput<'static>>(),
    }
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    print!("{}", text(args.which));
    Ok(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed schemas are what this build generates: regenerate with
    /// `mgpu schema report > schemas/report.schema.json` (and so on) when a type changes.
    #[test]
    fn committed_output_schemas_are_fresh() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        for (which, file) in Which::ALL {
            let committed = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("schemas/{file}: {e}"));
            assert!(
                committed == text(which),
                "schemas/{file} is stale: run `mgpu schema {} > schemas/{file}`",
                file.trim_end_matches(".schema.json")
            );
        }
    }
}
