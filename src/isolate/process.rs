//! Running one child process: its streams read while it runs, a timeout that kills a hung
//! one, and what its death by a signal means (out of memory, or a crash).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::trial::Trial;

/// What a finished child left: its exit status and both streams.
pub(super) struct Finished {
    pub(super) status: std::process::ExitStatus,
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: String,
}

/// Starts `command` (the trial at `batch_size`), reads both its streams, and waits for
/// it at most `timeout` (`floor` is the part of it no trial's time set): past it the child
/// (and its process group) is killed and the trial is an error.
pub(super) fn run(
    mut command: Command,
    batch_size: usize,
    timeout: Duration,
    floor: Duration,
) -> candle_core::Result<Finished> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group: a Ctrl-C at the terminal reaches the parent only, which
    // then stops after this trial instead of losing it.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().map_err(|e| {
        candle_core::Error::Msg(format!(
            "cannot start the trial process {:?}: {e}",
            command.get_program()
        ))
    })?;
    // Both streams are read on threads of their own: a child blocked on a full pipe
    // would otherwise never finish.
    let drain = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                stop(&mut child);
                candle_core::bail!(
                    "the trial at batch size {batch_size} did not finish within {:.0} s \
                     (ten times the slowest trial so far, plus {:.0} s) and was stopped: a \
                     hung kernel? not counted as out of memory; run a pre-flight check at \
                     that size to see it",
                    timeout.as_secs_f64(),
                    floor.as_secs_f64()
                )
            }
            Err(e) => candle_core::bail!("waiting for the trial process: {e}"),
        }
    };
    let join = |t: std::thread::JoinHandle<Vec<u8>>| t.join().unwrap_or_default();
    Ok(Finished {
        status,
        stdout: join(stdout),
        stderr: String::from_utf8_lossy(&join(stderr)).into_owned(),
    })
}

/// Kills a hung child and its process group, and reaps it.
fn stop(child: &mut std::process::Child) {
    #[cfg(unix)]
    // SAFETY: kill(2) with the negated process group id the child was started in.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(unix)]
pub(super) fn killed_by(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn killed_by(_status: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// What Rust's default allocation-error handler prints before it aborts the process.
const ALLOCATION_FAILED: &str = "memory allocation of ";

/// The trial of a child killed by `signal`, whose standard error was `stderr`: out of
/// memory for the kernel's out-of-memory kill (SIGKILL) and for an abort after an
/// allocation failure; an error naming the signal for anything else (a crash).
pub(super) fn killed(batch_size: usize, signal: i32, stderr: &str) -> candle_core::Result<Trial> {
    let allocation_failed = stderr
        .lines()
        .any(|l| l.contains(ALLOCATION_FAILED) && l.contains("failed"));
    let oom = |why: &str| {
        Ok(Trial::unmeasured_oom(
            batch_size,
            format!("trial process killed by signal {signal} ({why}): counted as out of memory"),
        ))
    };
    match signal_name(signal) {
        "SIGKILL" => oom("SIGKILL: the kernel's out-of-memory killer, or a job limit"),
        "SIGABRT" if allocation_failed => oom("SIGABRT after an allocation failure"),
        name => {
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("nothing on stderr");
            candle_core::bail!(
                "the trial process at batch size {batch_size} crashed with signal {signal} \
                 ({name}): {last}; this is not out of memory, run a pre-flight check at that \
                 size to see the failure"
            )
        }
    }
}

/// The usual name of a signal number.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
