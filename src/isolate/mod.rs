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

mod process;

use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::memory::Capacity;
use crate::runner::TrialSource;
use crate::search::Purpose;
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
    /// A child measures whatever the purpose: a child stopped early saves no process start,
    /// and the seeded search, which alone confirms, does not run children (the parent
    /// never measured what they hold).
    fn trial(&mut self, batch_size: usize, _purpose: Purpose) -> candle_core::Result<Trial> {
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
        let command = self.process.command(request);
        let output = process::run(command, batch_size, self.timeout(), self.timeout_floor)?;
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
        if let Some(signal) = process::killed_by(&output.status) {
            return process::killed(batch_size, signal, stderr).map(|trial| ChildTrial {
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
}

#[cfg(all(test, unix))]
mod tests;
