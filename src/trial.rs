//! One trial: reset the meter, run a few full training steps at one batch size, time
//! them, read the peak, and classify the outcome. Never prints.
//!
//! A trial is out of memory the moment its peak exceeds the capacity, as a real
//! allocation failure would be; it stops at the next phase boundary (after the forward
//! pass, after the backward pass, after the update) instead of finishing its steps.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::memory::MemoryMeter;
use crate::search::{Fits, Through};
use crate::workload::{Phase, TrainStep};

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

/// Each part's bytes from the marks of one step (`marks[0]` is the start), and the backward
/// pass's peak above the last mark when `backward_peak` (in the marks' terms) is known.
fn held_by_part(marks: &[(&'static str, u64)], backward_peak: Option<u64>) -> Vec<HeldPart> {
    let mut parts: Vec<HeldPart> = marks
        .windows(2)
        .map(|w| HeldPart {
            part: w[1].0.to_string(),
            bytes: w[1].1.saturating_sub(w[0].1),
        })
        .collect();
    if let (Some(&(_, forward_end)), Some(peak), false) =
        (marks.last(), backward_peak, parts.is_empty())
    {
        parts.push(HeldPart {
            part: BACKWARD_PART.to_string(),
            bytes: peak.saturating_sub(forward_end),
        });
    }
    parts
}

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

/// Samples trained per second at `batch_size` with `step_seconds` a step (`None` for a
/// step that took no measurable time).
pub fn samples_per_second(batch_size: usize, step_seconds: f64) -> Option<f64> {
    (step_seconds > 0.0).then(|| batch_size as f64 / step_seconds)
}

/// Seconds per step from each step's: the mean after the first, or the only one.
fn timed_seconds(step_times: &[f64]) -> Option<f64> {
    match step_times {
        [] => None,
        [only] => Some(*only),
        [_, rest @ ..] => Some(rest.iter().sum::<f64>() / rest.len() as f64),
    }
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

    /// An out-of-memory trial with nothing measured (not run, or its process killed),
    /// and why.
    pub fn unmeasured_oom(batch_size: usize, detail: String) -> Self {
        Trial {
            batch_size,
            outcome: Outcome::Oom,
            peak_bytes: None,
            phase_peaks: Vec::new(),
            step_peaks: Vec::new(),
            held_by_part: Vec::new(),
            step_seconds: None,
            step_times: Vec::new(),
            samples_per_second: None,
            steps: 0,
            stopped_after: None,
            predicted: false,
            peak_is_approximate: false,
            reserved_bytes: None,
            leaked_bytes: None,
            detail: Some(detail),
        }
    }
}

/// Runs `steps` training steps at `batch_size` and measures them against the meter's
/// capacity.
///
/// Out of memory (over the capacity, or the device's own out-of-memory error) is an
/// `Ok` trial with [`Outcome::Oom`]; any other failure is an `Err`.
pub fn run(
    step: &mut dyn TrainStep,
    batch_size: usize,
    steps: usize,
    meter: &mut dyn MemoryMeter,
) -> candle_core::Result<Trial> {
    let capacity = meter.capacity().bytes;
    let baseline = meter.current_bytes()?;
    // What earlier trials' bookkeeping holds is not this trial's (see MemoryMeter::drift_bytes).
    let drift = meter.drift_bytes()?;
    // Allocated before the peak window opens, so that the bookkeeping's own bytes do not
    // make a later step's peak differ from the first one's.
    let mut phase_peaks = Vec::with_capacity(3);
    let mut step_peaks = Vec::with_capacity(steps);
    let mut step_times = Vec::with_capacity(steps);
    meter.reset_peak()?;
    // The stop points compare the counted peak, drift included, with this.
    let far_past = capacity as f64 * (1.0 + crate::memory::stop::FAR_PAST);
    let stops = StopPoints::arm(meter, (far_past as u64).saturating_add(drift));
    let meter = &mut *stops.meter;
    let mut completed = 0;
    let mut over_capacity: Option<Phase> = None;
    let mut inside_backward = false;
    let mut device_oom: Option<String> = None;
    for step_index in 0..steps {
        if step_index > 0 {
            meter.reset_peak()?;
        } else {
            meter.record_parts(true);
        }
        let mut boundary = |phase: Phase| {
            let peak_bytes = meter.peak_bytes()?.saturating_sub(drift);
            if step_index == 0 {
                phase_peaks.push(PhasePeak { phase, peak_bytes });
            }
            if peak_bytes > capacity {
                over_capacity = Some(phase);
                candle_core::bail!("over the memory capacity after the {phase} phase");
            }
            Ok(())
        };
        let started = Instant::now();
        // A panicking step is a bug in the step, never an out-of-memory: it becomes an error.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            step.step_with_boundaries(batch_size, &mut boundary)
        }))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            Err(candle_core::Error::Msg(format!(
                "the training step panicked: {message}"
            )))
        });
        step_peaks.push(meter.peak_bytes()?.saturating_sub(drift));
        meter.record_parts(false); // the first step's marks only
        match result {
            Ok(()) => {
                completed += 1;
                step_times.push(started.elapsed().as_secs_f64());
            }
            Err(_) if over_capacity.is_some() => break,
            Err(error) if crate::memory::stop::is_over_budget(&error) => {
                // Measured: a stop point saw the peak past the capacity.
                over_capacity = Some(Phase::Forward);
                inside_backward = true;
                break;
            }
            Err(error) => match meter.out_of_memory(&error) {
                Some(status) => {
                    device_oom = Some(format!("{status}: {}", crate::format::candle_error(&error)));
                    break;
                }
                None => {
                    return Err(match meter.failure_hint(&error) {
                        Some(hint) => error.context(hint),
                        None => error,
                    })
                }
            },
        }
    }
    // After every step: what this allocates must not be in any step's peak window.
    let backward = phase_peaks
        .iter()
        .find(|p| p.phase == Phase::Backward)
        .map(|p| p.peak_bytes + drift);
    let held = held_by_part(&meter.recorded_parts(), backward);
    let peak = step_peaks.iter().copied().max().unwrap_or(0);
    let reserved_bytes = meter.reserved_peak_bytes()?;
    let leaked_bytes = meter.recover(baseline)?;
    if let Some(leaked) = leaked_bytes.filter(|&l| l > 0) {
        tracing::warn!(
            batch_size,
            "{} still in use after the trial at batch size {batch_size}; later trials may \
             be measured against less memory than the device has",
            crate::format::bytes(leaked)
        );
    }
    if over_capacity.is_none() && device_oom.is_none() && peak > capacity {
        over_capacity = Some(Phase::Update);
    }
    let fits = over_capacity.is_none() && device_oom.is_none();
    let detail = match (over_capacity, device_oom) {
        (Some(_), _) if inside_backward => Some(format!(
            "stopped inside the backward pass of step {}: over capacity",
            completed + 1
        )),
        (Some(phase), _) if completed < steps => Some(format!(
            "stopped after the {phase} phase of step {}: over capacity",
            completed + 1
        )),
        (Some(_), _) => Some("over capacity".to_string()),
        (None, Some(error)) => Some(format!("device out of memory: {error}")),
        (None, None) => None,
    };
    let step_seconds = timed_seconds(&step_times);
    Ok(Trial {
        batch_size,
        outcome: if fits { Outcome::Fits } else { Outcome::Oom },
        peak_bytes: Some(peak),
        phase_peaks,
        step_peaks,
        held_by_part: held,
        step_seconds,
        step_times,
        samples_per_second: step_seconds
            .filter(|_| fits)
            .and_then(|s| samples_per_second(batch_size, s)),
        steps: completed,
        stopped_after: over_capacity.filter(|_| completed < steps),
        predicted: false,
        peak_is_approximate: !meter.peak_is_exact(),
        reserved_bytes,
        leaked_bytes,
        detail,
    })
}

/// The meter with its stop points armed for one trial; disarmed when dropped, however the
/// trial ends.
struct StopPoints<'a> {
    meter: &'a mut dyn MemoryMeter,
}

impl<'a> StopPoints<'a> {
    fn arm(meter: &'a mut dyn MemoryMeter, peak_bytes: u64) -> Self {
        meter.arm_stop_points(Some(peak_bytes));
        Self { meter }
    }
}

impl Drop for StopPoints<'_> {
    fn drop(&mut self) {
        self.meter.arm_stop_points(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_step_is_timed_only_when_it_is_the_only_one() {
        assert_eq!(timed_seconds(&[]), None);
        assert_eq!(timed_seconds(&[3.0]), Some(3.0));
        assert_eq!(timed_seconds(&[9.0, 2.0, 4.0]), Some(3.0));
        let mut trial = Trial::unmeasured_oom(2, String::new());
        trial.step_times = vec![9.0, 2.0];
        assert_eq!(trial.timing_spread(), None); // one timed step after the first
        trial.step_times = vec![9.0, 2.0, 4.0];
        assert_eq!(trial.timing_spread(), Some(2.0 / 3.0));
    }
}
