//! Isolated trials: each trial runs in a child process, so a trial that aborts (an
//! allocation failure on the CPU aborts the process) or is killed (by the kernel's
//! out-of-memory killer, say) costs the child, not the search. Out of memory is a child
//! killed by SIGKILL (the kernel's out-of-memory killer) or aborted after Rust's "memory
//! allocation of N bytes failed"; the signal is in the trial's detail. Any other signal
//! (SIGSEGV, SIGBUS, SIGILL, an abort after a panic) is a crash, and a child that reports an
//! error stops the search with that error: neither is ever counted as out of memory.
//!
//! The child is the maxbatch binary's hidden `trial` subcommand, which prints the
//! [`Trial`] as JSON on stdout and exits 0.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::runner::TrialSource;
use crate::trial::Trial;

/// Trials run by a child process each.
#[derive(Debug, Clone)]
pub struct ChildProcessTrials {
    program: PathBuf,
    args: Vec<OsString>,
    hard_limit: Option<u64>,
}

impl ChildProcessTrials {
    /// Trials that run `program args… --batch-size B` for each batch size B; sizes
    /// predicted past `hard_limit` are not started.
    pub fn new(program: PathBuf, args: Vec<OsString>, hard_limit: Option<u64>) -> Self {
        Self {
            program,
            args,
            hard_limit,
        }
    }
}

impl TrialSource for ChildProcessTrials {
    fn trial(&mut self, batch_size: usize) -> candle_core::Result<Trial> {
        self.child_trial(batch_size, self.args.clone())
    }

    fn soak(&mut self, batch_size: usize, steps: usize) -> candle_core::Result<Trial> {
        let mut args = without_flag(&self.args, "--steps-per-trial");
        args.extend(["--steps-per-trial".into(), steps.to_string().into()]);
        self.child_trial(batch_size, args)
    }

    fn hard_limit(&self) -> Option<u64> {
        self.hard_limit
    }
}

/// `args` without `flag` and its value.
fn without_flag(args: &[OsString], flag: &str) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg == flag {
            skip_value = true;
        } else {
            kept.push(arg.clone());
        }
    }
    kept
}

impl ChildProcessTrials {
    /// Runs the child with `args` at `batch_size` and reads its trial.
    fn child_trial(&self, batch_size: usize, args: Vec<OsString>) -> candle_core::Result<Trial> {
        let mut command = Command::new(&self.program);
        command
            .args(&args)
            .arg("--batch-size")
            .arg(batch_size.to_string())
            .stdin(Stdio::null());
        // Its own process group: a Ctrl-C at the terminal reaches the parent only, which
        // then stops after this trial instead of losing it.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let output = command.output().map_err(|e| {
            candle_core::Error::Msg(format!(
                "cannot start the trial process {}: {e}",
                self.program.display()
            ))
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            return serde_json::from_slice(&output.stdout).map_err(|e| {
                candle_core::Error::Msg(format!(
                    "the trial process printed no trial ({e}): {}",
                    stderr.trim()
                ))
            });
        }
        if let Some(signal) = killed_by(&output.status) {
            return killed(batch_size, signal, &stderr);
        }
        let message = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim_start_matches("error: ");
        candle_core::bail!("the trial process failed ({}): {message}", output.status)
    }
}

#[cfg(unix)]
fn killed_by(status: &std::process::ExitStatus) -> Option<i32> {
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
fn killed(batch_size: usize, signal: i32, stderr: &str) -> candle_core::Result<Trial> {
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
                 ({name}): {last}; this is not out of memory, rerun that size with \
                 `maxbatch check --batch-size {batch_size}` to see the failure"
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::trial::Outcome;

    fn shell(script: &str) -> ChildProcessTrials {
        // `sh -c SCRIPT NAME --batch-size B`: the script sees the batch size as $2.
        ChildProcessTrials::new(
            PathBuf::from("sh"),
            vec!["-c".into(), script.into(), "trial".into()],
            None,
        )
    }

    #[test]
    fn a_child_killed_for_memory_is_out_of_memory() {
        let trial = shell("echo 'memory allocation of 4096 bytes failed' >&2; kill -ABRT $$")
            .trial(8)
            .unwrap();
        assert_eq!((trial.batch_size, trial.outcome), (8, Outcome::Oom));
        assert!(trial.detail.unwrap().contains("signal 6 (SIGABRT"));
        let trial = shell("kill -KILL $$").trial(8).unwrap();
        assert_eq!(trial.outcome, Outcome::Oom);
        assert!(trial.detail.unwrap().contains("signal 9"));
    }

    #[test]
    fn a_child_that_crashes_stops_the_search_naming_the_signal() {
        for (script, name) in [
            ("kill -SEGV $$", "SIGSEGV"),
            ("kill -BUS $$", "SIGBUS"),
            ("kill -ILL $$", "SIGILL"),
            // A panic that aborts (panic = "abort") prints its message, not an allocation failure.
            (
                "echo 'thread main panicked at src/x.rs' >&2; kill -ABRT $$",
                "SIGABRT",
            ),
        ] {
            let err = shell(script).trial(8).unwrap_err().to_string();
            assert!(
                err.contains(name) && err.contains("not out of memory"),
                "{script}: {err}"
            );
        }
    }

    #[test]
    fn a_child_that_fails_stops_the_search_with_its_message() {
        let err = shell("echo 'error: shape mismatch' >&2; exit 2")
            .trial(4)
            .unwrap_err();
        assert!(err.to_string().contains("shape mismatch"), "{err}");
        let err = shell("echo not json").trial(4).unwrap_err();
        assert!(err.to_string().contains("printed no trial"), "{err}");
    }

    #[test]
    fn a_childs_trial_comes_back_whole() {
        let trial = Trial {
            batch_size: 4,
            outcome: Outcome::Fits,
            peak_bytes: Some(1234),
            phase_peaks: vec![crate::trial::PhasePeak {
                phase: crate::Phase::Backward,
                peak_bytes: 1200,
            }],
            step_peaks: vec![1234, 1230],
            held_by_part: Vec::new(),
            step_seconds: Some(0.5),
            step_times: vec![0.7, 0.5],
            samples_per_second: Some(8.0),
            steps: 2,
            stopped_after: None,
            predicted: false,
            peak_is_approximate: false,
            reserved_bytes: None,
            leaked_bytes: None,
            detail: None,
        };
        let json = serde_json::to_string(&trial).unwrap();
        let got = shell(&format!("echo '{json}'")).trial(4).unwrap();
        assert_eq!(got, trial);
    }
}
