//! The `mgpu` binary: parse the command line, run it, turn the outcome into an exit code.
//! Everything else lives in the library (`mgpu::cli`).

fn main() -> std::process::ExitCode {
    mgpu::cli::main()
}
