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
    keep_freed_memory();
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

/// Asks glibc to keep freed memory for reuse instead of handing every large block back to
/// the kernel: trials allocate and free the same large activations step after step, and
/// without this each one is a fresh `mmap` whose pages fault in again (a third of a CPU
/// search's time was system time). The heap is counted by the allocator, so the figures
/// do not change; the resident size stays at the peak.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc malloc's tuning; called before any trial.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
