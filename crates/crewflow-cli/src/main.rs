//! The `crewflow` binary: see the crewflow-cli crate.

/// mimalloc rather than the system's allocator: `crewflow serve` allocates on many threads at
/// once (the runtime's workers and the threads SQLite calls hand off to), where glibc's arenas
/// contend; served turns ran 40 % faster with it (`serve_turns`, docs/server.md, Speed).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    crewflow_cli::main()
}
