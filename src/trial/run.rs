//! Running one trial: open a peak window, run each step with its phase boundaries (stopping
//! at the first that is over the capacity), then read what the device kept and classify.

use std::time::Instant;

use super::{samples_per_second, HeldPart, Outcome, PhasePeak, PhaseTime, Trial, BACKWARD_PART};
use crate::memory::stop::StopAt;
use crate::memory::MemoryMeter;
use crate::search::Purpose;
use crate::workload::{Phase, TrainStep};

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
    run_for(step, batch_size, steps, meter, Purpose::Measure)
}

/// [`run`] for a `purpose`: a trial that measures runs its backward pass on to
/// [`FAR_PAST`](crate::memory::stop::FAR_PAST) beyond the capacity before a stop point ends
/// it, so that its peaks say by how much it failed; one that confirms a size does not fit
/// stops at the first stop point past the capacity.
pub fn run_for(
    step: &mut dyn TrainStep,
    batch_size: usize,
    steps: usize,
    meter: &mut dyn MemoryMeter,
    purpose: Purpose,
) -> candle_core::Result<Trial> {
    let baseline = meter.current_bytes()?;
    let mut window = Window::open(meter, steps)?;
    let past = match purpose {
        Purpose::Measure => crate::memory::stop::FAR_PAST,
        Purpose::Confirm => 0.0,
    };
    // The stop points compare the counted peak, drift included, with this.
    let limit = window.capacity as f64 * (1.0 + past);
    let stops = StopPoints::arm(
        meter,
        StopAt {
            peak_bytes: (limit as u64).saturating_add(window.drift),
            // A step without a backward pass has nothing after its forward pass to measure.
            in_forward: purpose == Purpose::Confirm || !step.has_backward(),
        },
    );
    let meter = &mut *stops.meter;
    for index in 0..steps {
        if !window.step(step, batch_size, index, meter)? {
            break;
        }
    }
    window.close(batch_size, steps, baseline, meter)
}

/// A trial's peak window: what it measured so far, and how it ended.
struct Window {
    capacity: u64,
    /// What the process held above the trial's count when it started (see
    /// [`MemoryMeter::drift_bytes`]): taken off every peak.
    drift: u64,
    phase_peaks: Vec<PhasePeak>,
    step_peaks: Vec<u64>,
    step_times: Vec<f64>,
    /// The phase boundaries' times of the step running, then of the last complete one.
    phase_seconds: Vec<PhaseTime>,
    completed: usize,
    over_capacity: Option<Phase>,
    /// The pass a stop point stopped the trial inside, if one did.
    stopped_inside: Option<Phase>,
    device_oom: Option<String>,
}

impl Window {
    /// Opens the window: its bookkeeping is allocated before the peak is reset, so that its
    /// own bytes do not make a later step's peak differ from the first one's.
    fn open(meter: &mut dyn MemoryMeter, steps: usize) -> candle_core::Result<Self> {
        let window = Self {
            capacity: meter.capacity().bytes,
            drift: meter.drift_bytes()?,
            phase_peaks: Vec::with_capacity(3),
            step_peaks: Vec::with_capacity(steps),
            step_times: Vec::with_capacity(steps),
            phase_seconds: Vec::with_capacity(5),
            completed: 0,
            over_capacity: None,
            stopped_inside: None,
            device_oom: None,
        };
        meter.reset_peak()?;
        Ok(window)
    }

    /// Runs step `index`, its boundaries measured (the first step's kept); `false` when the
    /// trial is over (out of memory), an error for any other failure.
    fn step(
        &mut self,
        step: &mut dyn TrainStep,
        batch_size: usize,
        index: usize,
        meter: &mut dyn MemoryMeter,
    ) -> candle_core::Result<bool> {
        if index > 0 {
            meter.reset_peak()?;
        } else {
            meter.record_parts(true);
        }
        self.phase_seconds.clear();
        let started = Instant::now();
        // The last boundary this step reached.
        let mut reached = None;
        let result = {
            let (drift, capacity) = (self.drift, self.capacity);
            let (phase_peaks, over_capacity) = (&mut self.phase_peaks, &mut self.over_capacity);
            let phase_seconds = &mut self.phase_seconds;
            let reached = &mut reached;
            let mut boundary = |phase: Phase| {
                *reached = Some(phase);
                phase_seconds.push(PhaseTime {
                    phase,
                    seconds: started.elapsed().as_secs_f64(),
                });
                let peak_bytes = meter.peak_bytes()?.saturating_sub(drift);
                if index == 0 {
                    phase_peaks.push(PhasePeak { phase, peak_bytes });
                }
                if peak_bytes > capacity {
                    *over_capacity = Some(phase);
                    candle_core::bail!("over the memory capacity after the {phase} phase");
                }
                Ok(())
            };
            caught(|| step.step_with_boundaries(batch_size, &mut boundary))
        };
        self.step_peaks
            .push(meter.peak_bytes()?.saturating_sub(self.drift));
        meter.record_parts(false); // the first step's marks only
        match result {
            Ok(()) => {
                self.completed += 1;
                self.step_times.push(started.elapsed().as_secs_f64());
                Ok(true)
            }
            Err(_) if self.over_capacity.is_some() => Ok(false),
            Err(error) if crate::memory::stop::is_over_budget(&error) => {
                // Measured: a stop point saw the peak past the capacity, inside the forward
                // pass while its boundary was not reached yet.
                let inside = match reached {
                    None => step.first_phase(),
                    Some(Phase::Prefill) => Phase::Decode,
                    Some(_) => Phase::Backward,
                };
                self.over_capacity = Some(Phase::Forward);
                self.stopped_inside = Some(inside);
                Ok(false)
            }
            Err(error) => match meter.out_of_memory(&error) {
                Some(status) => {
                    let error = crate::format::candle_error(&error);
                    self.device_oom = Some(format!("{status}: {error}"));
                    Ok(false)
                }
                None => Err(match meter.failure_hint(&error) {
                    Some(hint) => error.context(hint),
                    None => error,
                }),
            },
        }
    }

    /// After every step (what this allocates must not be in any step's peak window): where
    /// the first step held its bytes, what the device reserved and kept, and the trial.
    fn close(
        mut self,
        batch_size: usize,
        steps: usize,
        baseline: u64,
        meter: &mut dyn MemoryMeter,
    ) -> candle_core::Result<Trial> {
        let backward = self
            .phase_peaks
            .iter()
            .find(|p| p.phase == Phase::Backward)
            .map(|p| p.peak_bytes + self.drift);
        let held = held_by_part(&meter.recorded_parts(), backward);
        let peak = self.step_peaks.iter().copied().max().unwrap_or(0);
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
        if self.over_capacity.is_none() && self.device_oom.is_none() && peak > self.capacity {
            self.over_capacity = Some(Phase::Update);
        }
        let fits = self.over_capacity.is_none() && self.device_oom.is_none();
        let detail = self.detail(steps);
        let step_seconds = timed_seconds(&self.step_times);
        Ok(Trial {
            peak_bytes: Some(peak),
            held_by_part: held,
            step_seconds,
            samples_per_second: step_seconds
                .filter(|_| fits)
                .and_then(|s| samples_per_second(batch_size, s)),
            steps: self.completed,
            stopped_after: self.over_capacity.filter(|_| self.completed < steps),
            peak_is_approximate: !meter.peak_is_exact(),
            reserved_bytes,
            leaked_bytes,
            detail,
            phase_peaks: self.phase_peaks,
            step_peaks: self.step_peaks,
            step_times: self.step_times,
            phase_seconds: if fits { self.phase_seconds } else { Vec::new() },
            ..Trial::new(batch_size, if fits { Outcome::Fits } else { Outcome::Oom })
        })
    }

    /// How the trial ended, in words, when it is not a plain fit.
    fn detail(&self, steps: usize) -> Option<String> {
        let step = self.completed + 1;
        match (self.over_capacity, &self.device_oom) {
            (Some(_), _) if self.stopped_inside.is_some() => Some(format!(
                "stopped inside the {} of step {step}: over capacity",
                match self.stopped_inside {
                    Some(Phase::Forward) => "forward pass",
                    Some(Phase::Prefill) => "prefill",
                    Some(Phase::Decode) => "decode steps",
                    _ => "backward pass",
                }
            )),
            (Some(phase), _) if self.completed < steps => Some(format!(
                "stopped after the {phase} phase of step {step}: over capacity"
            )),
            (Some(_), _) => Some("over capacity".to_string()),
            (None, Some(error)) => Some(format!("device out of memory: {error}")),
            (None, None) => None,
        }
    }
}

/// Runs a step; a panic in it is a bug in the step, never an out-of-memory: an error.
fn caught(step: impl FnOnce() -> candle_core::Result<()>) -> candle_core::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Err(candle_core::Error::Msg(format!(
            "the training step panicked: {message}"
        )))
    })
}

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

/// Seconds per step from each step's: the mean after the first, or the only one.
fn timed_seconds(step_times: &[f64]) -> Option<f64> {
    match step_times {
        [] => None,
        [only] => Some(*only),
        [_, rest @ ..] => Some(rest.iter().sum::<f64>() / rest.len() as f64),
    }
}

/// The meter with its stop points armed for one trial; disarmed when dropped, however the
/// trial ends.
struct StopPoints<'a> {
    meter: &'a mut dyn MemoryMeter,
}

impl<'a> StopPoints<'a> {
    fn arm(meter: &'a mut dyn MemoryMeter, at: StopAt) -> Self {
        meter.arm_stop_points(Some(at));
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
    }

    #[test]
    fn a_panicking_step_is_an_error_with_its_message() {
        let error = caught(|| panic!("shape mismatch in the head")).unwrap_err();
        assert!(error.to_string().contains("shape mismatch in the head"));
    }
}
