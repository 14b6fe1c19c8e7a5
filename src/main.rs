//! `cutover`: copy a live PostgreSQL database and stream its changes to targets. The commands
//! are in [`cli`]; what they do is the `cutover` library's.

mod cli;

/// mimalloc instead of glibc's malloc: every change is encoded into a few short-lived
/// allocations on the runtime's threads, where glibc's arenas spent a quarter of the sink
/// side's CPU splitting and consolidating free chunks (perf on the messages benchmark,
/// BENCHMARKS.md history 2026-12-07).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
