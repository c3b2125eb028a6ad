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

/// The files mgpu reads that have a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The manifest (`schemas/manifest.schema.json`).
    Manifest,
    /// The hardware file of `mgpu probe --save` / `--hardware` (`schemas/hardware.schema.json`).
    Hardware,
}

/// The schema text for `which`, ending in a newline.
pub fn text(which: Which) -> String {
    match which {
        Which::Manifest => crate::manifest::schema::manifest_schema_json(),
        Which::Hardware => crate::hardware::file::schema_json(),
    }
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    print!("{}", text(args.which));
    Ok(Status::Ok)
}
