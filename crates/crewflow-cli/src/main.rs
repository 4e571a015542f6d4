//! The `crewflow` binary: see the crewflow-cli crate.

fn main() -> std::process::ExitCode {
    crewflow_cli::main()
}
