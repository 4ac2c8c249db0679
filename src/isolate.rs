//! Isolated trials: each trial runs in a child process, so a trial that aborts (an
//! allocation failure on the CPU aborts the process) or is killed (by the kernel's
//! out-of-memory killer, say) costs the child, not the search. Out of memory is a child
//! killed by SIGKILL (the kernel's out-of-memory killer) or aborted after Rust's "memory
//! allocation of N bytes failed"; the signal is in the trial's detail. Any other signal
//! (SIGSEGV, SIGBUS, SIGILL, an abort after a panic) is a crash, and a child that reports an
//! error stops the search with that error: neither is ever counted as out of memory.
//!
//! The child is the maxbatch binary's hidden `trial` subcommand, which prints a
//! [`ChildTrial`] (the trial, and the capacity it was measured against after the child's
//! warm-up step) as JSON on stdout and exits 0. A child that runs past its timeout (ten times
//! the slowest trial so far plus a floor: a hung kernel) is killed, and its trial is an
//! error naming the size, never out of memory.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::memory::Capacity;
use crate::runner::TrialSource;
use crate::trial::Trial;

/// What the hidden `trial` subcommand prints: the trial, and the device as the child
/// measured it after its warm-up step (what every trial is measured against).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildTrial {
    /// The trial.
    pub trial: Trial,
    /// The capacity the child measured the trial against.
    pub capacity: Capacity,
    /// What the device held outside the meter's count after the warm-up step (CUDA).
    pub overhead_bytes: Option<u64>,
    /// How the child's meter measures ([`MemoryMeter::describe`](crate::MemoryMeter::describe)).
    pub meter: String,
}

/// The device as the first child measured it (see [`ChildProcessTrials::calibrate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChildDevice {
    /// The capacity after the warm-up step: every later child is given it.
    pub capacity: Capacity,
    /// What the device held outside the meter's count after the warm-up step.
    pub overhead_bytes: Option<u64>,
    /// How the children's meter measures.
    pub meter: String,
}

/// How long a child trial may run before it is stopped as hung when no trial has finished
/// yet, and on top of ten times the slowest one once some have.
pub const TIMEOUT_FLOOR: Duration = Duration::from_secs(600);

/// One child trial to start: the batch size, the steps (`None`: the usual steps per trial)
/// and the capacity to measure against (`None`: the child's own reading, or whatever its
/// command says by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildRequest {
    /// The batch size.
    pub batch_size: usize,
    /// Consecutive steps (the verification run), or `None`.
    pub steps: Option<usize>,
    /// The capacity in bytes, or `None`.
    pub capacity: Option<u64>,
}

/// How to start a child that runs one trial and prints its [`ChildTrial`] as JSON on stdout:
/// the command line's hidden `trial` subcommand, its flags built from what the parent
/// resolved, or anything else that prints one.
pub trait TrialProcess {
    /// The command that runs `request`.
    fn command(&self, request: ChildRequest) -> Command;
}

/// Trials run by a child process each.
pub struct ChildProcessTrials {
    process: Box<dyn TrialProcess>,
    hard_limit: Option<u64>,
    /// The capacity the first child measured, which every later child is given.
    capacity: Option<u64>,
    /// The first child's trial, until the search asks for its size.
    kept: Option<Trial>,
    slowest: Option<Duration>,
    timeout_floor: Duration,
}

impl ChildProcessTrials {
    /// Trials that `process` starts, one child each; sizes predicted past `hard_limit` are
    /// not started.
    pub fn new(process: Box<dyn TrialProcess>, hard_limit: Option<u64>) -> Self {
        Self {
            process,
            hard_limit,
            capacity: None,
            kept: None,
            slowest: None,
            timeout_floor: TIMEOUT_FLOOR,
        }
    }

    /// How long a child may run when none has finished yet, and on top of ten times the
    /// slowest one that has (default [`TIMEOUT_FLOOR`]). A child past it is stopped as hung
    /// (a CUDA kernel that never ends): an error naming the size, never out of memory.
    pub fn timeout_floor(mut self, floor: Duration) -> Self {
        self.timeout_floor = floor;
        self
    }

    /// Runs the first child at `batch_size` and returns the device as it measured it after
    /// its warm-up step: the capacity every trial is measured against, which the parent,
    /// having given the device up, never measured itself. Later children are given that
    /// capacity, and the search's first trial at `batch_size` is this one.
    pub fn calibrate(&mut self, batch_size: usize) -> candle_core::Result<ChildDevice> {
        let child = self.child_trial(batch_size, None)?;
        let device = ChildDevice {
            capacity: child.capacity,
            overhead_bytes: child.overhead_bytes,
            meter: child.meter,
        };
        self.capacity = Some(device.capacity.bytes);
        self.kept = Some(child.trial);
        Ok(device)
    }

    /// The time a child may take now: the floor while no child has finished, else ten times
    /// the slowest so far plus the floor.
    fn timeout(&self) -> Duration {
        self.slowest.map_or(self.timeout_floor, |slowest| {
            slowest * 10 + self.timeout_floor
        })
    }
}

impl TrialSource for ChildProcessTrials {
    fn trial(&mut self, batch_size: usize) -> candle_core::Result<Trial> {
        if let Some(trial) = self.kept.take_if(|t| t.batch_size == batch_size) {
            return Ok(trial);
        }
        self.child_trial(batch_size, None).map(|child| child.trial)
    }

    fn verify(&mut self, batch_size: usize, steps: usize) -> candle_core::Result<Trial> {
        self.child_trial(batch_size, Some(steps))
            .map(|child| child.trial)
    }

    fn hard_limit(&self) -> Option<u64> {
        self.hard_limit
    }
}

/// What a finished child left: its exit status and both streams.
struct Finished {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl ChildProcessTrials {
    /// Runs the child at `batch_size` (for `steps` steps, when given) and reads its trial.
    fn child_trial(
        &mut self,
        batch_size: usize,
        steps: Option<usize>,
    ) -> candle_core::Result<ChildTrial> {
        let started = Instant::now();
        let request = ChildRequest {
            batch_size,
            steps,
            capacity: self.capacity,
        };
        let output = self.run_child(request)?;
        let stderr = output.stderr.as_str();
        if output.status.success() {
            let child: ChildTrial = serde_json::from_slice(&output.stdout).map_err(|e| {
                candle_core::Error::Msg(format!(
                    "the trial process printed no trial ({e}): {}",
                    stderr.trim()
                ))
            })?;
            let took = started.elapsed();
            self.slowest = Some(self.slowest.map_or(took, |s| s.max(took)));
            return Ok(child);
        }
        if let Some(signal) = killed_by(&output.status) {
            return killed(batch_size, signal, stderr).map(|trial| ChildTrial {
                trial,
                capacity: Capacity {
                    bytes: self.capacity.unwrap_or(0),
                    source: crate::memory::CapacitySource::Flag,
                    is_budget: false,
                },
                overhead_bytes: None,
                meter: String::new(),
            });
        }
        let message = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim_start_matches("error: ");
        candle_core::bail!("the trial process failed ({}): {message}", output.status)
    }

    /// Starts the child, reads both its streams, and waits for it at most [`Self::timeout`]:
    /// past it the child (and its process group) is killed and the trial is an error.
    fn run_child(&self, request: ChildRequest) -> candle_core::Result<Finished> {
        let batch_size = request.batch_size;
        let mut command = self.process.command(request);
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
        let timeout = self.timeout();
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    stop(&mut child);
                    candle_core::bail!(
                        "the trial at batch size {batch_size} did not finish within {:.0} s \
                         (ten times the slowest trial so far, plus {:.0} s) and was stopped: a \
                         hung kernel? not counted as out of memory; run a pre-flight check at \
                         that size to see it",
                        timeout.as_secs_f64(),
                        self.timeout_floor.as_secs_f64()
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::trial::Outcome;

    /// A child that is a shell script: `sh -c SCRIPT trial --batch-size B [--memory M]
    /// [--steps N]` (the script sees the batch size as $2).
    struct Shell(String);

    impl TrialProcess for Shell {
        fn command(&self, request: ChildRequest) -> Command {
            let mut command = Command::new("sh");
            command.args(["-c", &self.0, "trial", "--batch-size"]);
            command.arg(request.batch_size.to_string());
            if let Some(bytes) = request.capacity {
                command.args(["--memory", &bytes.to_string()]);
            }
            if let Some(steps) = request.steps {
                command.args(["--steps", &steps.to_string()]);
            }
            command
        }
    }

    fn shell(script: &str) -> ChildProcessTrials {
        ChildProcessTrials::new(Box::new(Shell(script.to_string())), None)
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

    fn fitting(batch_size: usize) -> Trial {
        Trial {
            peak_bytes: Some(1234),
            phase_peaks: vec![crate::trial::PhasePeak {
                phase: crate::Phase::Backward,
                peak_bytes: 1200,
            }],
            step_peaks: vec![1234, 1230],
            step_seconds: Some(0.5),
            step_times: vec![0.7, 0.5],
            samples_per_second: Some(8.0),
            steps: 2,
            ..Trial::new(batch_size, Outcome::Fits)
        }
    }

    /// What a child prints for `trial` against `capacity` bytes.
    fn printed(trial: Trial, capacity: u64) -> String {
        serde_json::to_string(&ChildTrial {
            trial,
            capacity: Capacity {
                bytes: capacity,
                source: crate::memory::CapacitySource::Device,
                is_budget: false,
            },
            overhead_bytes: Some(500),
            meter: "a pool".into(),
        })
        .unwrap()
    }

    #[test]
    fn a_childs_trial_comes_back_whole() {
        let json = printed(fitting(4), 1 << 30);
        let got = shell(&format!("echo '{json}'")).trial(4).unwrap();
        assert_eq!(got, fitting(4));
    }

    #[test]
    fn the_first_child_measures_the_capacity_every_later_child_is_given() {
        // The script prints its own arguments' --memory as the capacity it measured when
        // it was given one, else 7000 (what it "read after its warm-up step").
        let dir = std::env::temp_dir().join(format!("maxbatch-calibrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let runs = dir.join("runs");
        let _ = std::fs::remove_file(&runs);
        let script = format!(
            "echo run >> {runs}; memory=7000; prev=''; for a in \"$@\"; do \
             [ \"$prev\" = --memory ] && memory=$a; prev=$a; done; \
             echo \"$memory\" > {dir}/memory; echo '{json}'",
            runs = runs.display(),
            dir = dir.display(),
            json = printed(fitting(1), 7000)
        );
        let mut children = shell(&script);
        let device = children.calibrate(1).unwrap();
        assert_eq!(device.capacity.bytes, 7000);
        assert_eq!(device.overhead_bytes, Some(500));
        // The search's first trial is the calibration's: no second child.
        assert_eq!(children.trial(1).unwrap(), fitting(1));
        let count = || std::fs::read_to_string(&runs).unwrap().lines().count();
        assert_eq!(count(), 1);
        // Later children are given the measured capacity.
        children.trial(1).unwrap();
        assert_eq!(count(), 2);
        let given = std::fs::read_to_string(dir.join("memory")).unwrap();
        assert_eq!(given.trim(), "7000");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_hung_child_is_stopped_and_is_an_error_naming_its_size() {
        let json = printed(fitting(2), 1 << 30);
        // Each child sleeps as long as its batch size says, in tenths of a second.
        let script = format!("sleep \"0.$(( $2 ))\"; echo '{json}'");
        let mut children = shell(&script).timeout_floor(Duration::from_millis(150));
        // The first child has only the floor; 0.1 s fits in it.
        children.trial(1).unwrap();
        // Then ten times the slowest so far plus the floor: about 1.15 s, which 0.8 s fits.
        children.trial(8).unwrap();
        // A child that never ends is stopped once the slowest (0.8 s) times ten and the
        // floor have passed.
        let mut hung = shell("sleep 30").timeout_floor(Duration::from_millis(150));
        let started = Instant::now();
        let error = hung.trial(5).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "{error}");
        assert!(
            error.contains("batch size 5") && error.contains("not counted as out of memory"),
            "{error}"
        );
    }
}
