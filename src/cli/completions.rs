//! `mgpu completions SHELL` and `mgpu man`: shell completion scripts and a roff man page,
//! generated from the same clap definitions that make `--help`.

use clap::CommandFactory;

use super::{Cli, Status};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  mgpu completions bash > ~/.local/share/bash-completion/completions/mgpu\n  \
                        mgpu completions zsh > ~/.zfunc/_mgpu\n  \
                        mgpu completions fish > ~/.config/fish/completions/mgpu.fish"
)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  mgpu man > mgpu.1 && man ./mgpu.1")]
pub struct ManArgs {}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<Status> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "mgpu", &mut std::io::stdout());
    Ok(Status::Ok)
}

/// The man page (roff), with a section per subcommand.
pub fn man_page() -> anyhow::Result<Vec<u8>> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("mgpu {}", sub.get_name());
        let sub = sub.clone().bin_name(name.clone());
        let m = clap_mangen::Man::new(sub);
        // Each subcommand as its own section: its synopsis, description and options.
        out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        m.render_synopsis_section(&mut out)?;
        m.render_description_section(&mut out)?;
        m.render_options_section(&mut out)?;
    }
    man.render_version_section(&mut out)?;
    man.render_authors_section(&mut out)?;
    Ok(out)
}

pub fn man(_: ManArgs) -> anyhow::Result<Status> {
    use std::io::Write as _;
    std::io::stdout().write_all(&man_page()?)?;
    Ok(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_page_name_every_subcommand() {
        let mut cmd = Cli::command();
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "mgpu", &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        let man = String::from_utf8(man_page().unwrap()).unwrap();
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name();
            assert!(bash.contains(name), "bash completion lacks {name}");
            assert!(
                man.contains(&format!("mgpu {name}").replace('-', "\\-")),
                "man page lacks {name}"
            );
        }
        assert!(bash.contains("--verify-golden"));
        assert!(man.contains("\\-\\-html"));
    }
}
