//! One trial: a few full training steps at one batch size, measured. [`Trial`] is what it
//! found; [`run`] runs one. Never prints.
//!
//! A trial is out of memory the moment its peak exceeds the capacity, as a real
//! allocation failure would be; it stops at the next phase boundary (after the forward
//! pass, after the backward pass, after the update) instead of finishing its steps.

mod run;

use serde::{Deserialize, Serialize};

pub use run::{run, run_for};

use crate::search::{Fits, Through};
use crate::workload::Phase;

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step ran within the capacity.
    Fits,
    /// The trial ran out of memory (or was predicted to; see [`Trial::predicted`]).
    Oom,
}

/// Bytes one part of a training step held (see [`Trial::held_by_part`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPart {
    /// The part: "inputs", "embeddings", "blocks", "logits and loss", "backward pass".
    pub part: String,
    /// The bytes it held (for the backward pass: added above the forward pass's).
    pub bytes: u64,
}

/// The name [`Trial::held_by_part`] gives what the backward pass adds at its peak.
pub const BACKWARD_PART: &str = "backward pass";

/// One batch size, tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Samples per step.
    pub batch_size: usize,
    /// Fits or out of memory.
    pub outcome: Outcome,
    /// The measured peak bytes (a lower bound when the trial stopped early); `None` when
    /// the trial was not run.
    pub peak_bytes: Option<u64>,
    /// The peak so far at each phase boundary of the first step (after the forward pass,
    /// after the backward pass, after the update), for steps that report boundaries: the
    /// guided search fits a line through each, since the phase that sets the peak can
    /// change with the batch size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_peaks: Vec<PhasePeak>,
    /// The peak bytes of each step, from its start (the last one a lower bound when the
    /// trial stopped in it): equal from step to step when a step leaves nothing behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_peaks: Vec<u64>,
    /// Where the first step held its bytes, for the built-in models on the CPU: each part
    /// of the forward pass (inputs, embeddings, blocks, logits and loss) with the bytes it
    /// kept alive for the backward pass, then what the backward pass added above them at
    /// its peak (gradients and temporaries). Empty elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_by_part: Vec<HeldPart>,
    /// Wall-clock seconds per step: the mean of the completed steps after the first (the
    /// first pays for pages and buffers touched for the first time), or the first step's
    /// when it is the only one; `None` when no step completed.
    pub step_seconds: Option<f64>,
    /// Wall-clock seconds of each completed step, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_times: Vec<f64>,
    /// Seconds from the start of the last complete step to each of its phase boundaries
    /// (a generation's prefill and decode: their throughput). Empty when no step completed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_seconds: Vec<PhaseTime>,
    /// Samples trained per second (batch size / seconds per step) when it fit.
    #[serde(default)]
    pub samples_per_second: Option<f64>,
    /// Full steps completed.
    pub steps: usize,
    /// The phase after which an over-capacity trial was stopped.
    pub stopped_after: Option<Phase>,
    /// True when the trial was not run because its predicted peak would exhaust the
    /// machine; it counts as out of memory.
    pub predicted: bool,
    /// True when `peak_bytes` was sampled, not counted (a device without memory pools).
    pub peak_is_approximate: bool,
    /// The most bytes the device's allocator reserved (CUDA pools; `None` elsewhere).
    pub reserved_bytes: Option<u64>,
    /// Bytes still in use after the trial above what was in use before it: 0 after a clean
    /// recovery (CUDA; `None` where the meter cannot tell).
    pub leaked_bytes: Option<u64>,
    /// What happened, in words, when it is not a plain fit.
    pub detail: Option<String>,
}

impl Fits for Trial {
    fn fits(&self) -> bool {
        self.outcome == Outcome::Fits
    }
}

/// The peak bytes in use from the start of a trial to the end of one phase of its first
/// step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhasePeak {
    /// The phase that had just ended.
    pub phase: Phase,
    /// The most bytes in use since the trial started.
    pub peak_bytes: u64,
}

/// When one phase of a step ended, in seconds from the step's start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    /// The phase that had just ended.
    pub phase: Phase,
    /// Seconds from the start of the step.
    pub seconds: f64,
}

impl Trial {
    /// The seconds the `phase` of the last complete step took: from the boundary before
    /// it (or the step's start) to its own.
    pub fn phase_duration(&self, phase: Phase) -> Option<f64> {
        let at = self.phase_seconds.iter().position(|t| t.phase == phase)?;
        let start = match at {
            0 => 0.0,
            i => self.phase_seconds[i - 1].seconds,
        };
        Some(self.phase_seconds[at].seconds - start)
    }
}

/// Samples trained per second at `batch_size` with `step_seconds` a step (`None` for a
/// step that took no measurable time).
pub fn samples_per_second(batch_size: usize, step_seconds: f64) -> Option<f64> {
    (step_seconds > 0.0).then(|| batch_size as f64 / step_seconds)
}

/// The phase whose boundary peaks a line fitted `through` runs through (`None`: the overall
/// peaks, or no trial measured that boundary).
pub fn phase_of(trials: &[Trial], through: Through) -> Option<Phase> {
    match through {
        Through::Peaks => None,
        Through::Phase(k) => trials
            .iter()
            .find_map(|t| t.phase_peaks.get(k).map(|p| p.phase)),
    }
}

/// The last trial at `batch_size` that fit, if any.
pub fn fitting_trial(trials: &[Trial], batch_size: usize) -> Option<&Trial> {
    trials
        .iter()
        .rev()
        .find(|t| t.batch_size == batch_size && t.outcome == Outcome::Fits)
}

impl crate::search::Measured for Trial {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn peak(&self) -> Option<u64> {
        self.peak_bytes.filter(|&p| p > 0)
    }

    fn ran(&self) -> bool {
        !self.predicted
    }

    fn phase_peaks(&self) -> Vec<u64> {
        self.phase_peaks.iter().map(|p| p.peak_bytes).collect()
    }

    /// A fit, or a trial over the capacity only after its first step's update: every
    /// boundary of that step was measured, so its peak is the step's.
    fn peak_is_complete(&self) -> bool {
        self.outcome == Outcome::Fits
            || self
                .phase_peaks
                .last()
                .is_some_and(|p| p.phase == Phase::Update)
    }
}

impl Trial {
    /// How much the timed steps after the first differed, as a fraction of their mean
    /// ((slowest − fastest) / mean); `None` with fewer than two of them.
    pub fn timing_spread(&self) -> Option<f64> {
        let timed = self.step_times.get(1..).filter(|t| t.len() >= 2)?;
        let mean = timed.iter().sum::<f64>() / timed.len() as f64;
        let (fastest, slowest) = timed
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        (mean > 0.0).then(|| (slowest - fastest) / mean)
    }

    /// A size not run because its predicted peak exceeds `limit`, the most the machine can
    /// give: it counts as out of memory.
    pub fn predicted_oom(batch_size: usize, predicted: u64, limit: u64) -> Self {
        let detail = format!(
            "not run: predicted peak {} exceeds {}, the share of the machine's memory a trial may take",
            crate::format::bytes(predicted),
            crate::format::bytes(limit)
        );
        Trial {
            predicted: true,
            ..Self::unmeasured_oom(batch_size, detail)
        }
    }

    /// A trial at `batch_size` with `outcome` and nothing measured yet: the one place every
    /// field is written out; every other trial is this one with fields set.
    pub fn new(batch_size: usize, outcome: Outcome) -> Self {
        Trial {
            batch_size,
            outcome,
            peak_bytes: None,
            phase_peaks: Vec::new(),
            step_peaks: Vec::new(),
            held_by_part: Vec::new(),
            step_seconds: None,
            step_times: Vec::new(),
            phase_seconds: Vec::new(),
            samples_per_second: None,
            steps: 0,
            stopped_after: None,
            predicted: false,
            peak_is_approximate: false,
            reserved_bytes: None,
            leaked_bytes: None,
            detail: None,
        }
    }

    /// An out-of-memory trial with nothing measured (not run, or its process killed),
    /// and why.
    pub fn unmeasured_oom(batch_size: usize, detail: String) -> Self {
        Trial {
            detail: Some(detail),
            ..Self::new(batch_size, Outcome::Oom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_of_the_steps_after_the_first() {
        let mut trial = Trial::unmeasured_oom(2, String::new());
        trial.step_times = vec![9.0, 2.0];
        assert_eq!(trial.timing_spread(), None); // one timed step after the first
        trial.step_times = vec![9.0, 2.0, 4.0];
        assert_eq!(trial.timing_spread(), Some(2.0 / 3.0));
    }
}
