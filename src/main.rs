//! The `maxbatch` binary: parse, resolve once, run, exit. The flags are declared in `cli`,
//! resolved into the values the commands take in `resolve`, and each command is a file of
//! `commands`; what they print is assembled and rendered in `output`; errors are said with
//! flags by `explain`.

mod child;
mod cli;
mod commands;
mod explain;
mod output;
mod progress;
mod resolve;
mod session;
mod signals;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Counts every heap byte, so CPU trials measure their peak.
#[global_allocator]
static ALLOCATOR: maxbatch::CountingAllocator = maxbatch::CountingAllocator::new();

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.verbose);
    maxbatch::memory::cpu::keep_freed_memory();
    match resolve::resolve(cli).and_then(commands::run) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", explain::message(&error));
            ExitCode::from(2)
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}
