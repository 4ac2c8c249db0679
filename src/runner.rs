//! Running trials one after another: where a trial runs ([`TrialSource`]: this process or
//! a child process), the guard that refuses a CPU trial predicted to exhaust the machine,
//! the stop flag (Ctrl-C), the observer that shows progress, and the warm-up step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::Error;
use crate::memory::MemoryMeter;
use crate::search::{conservative_peak, Purpose, StepModel};
use crate::trial::{self, Outcome, Trial};
use crate::workload::TrainStep;

/// Hooks called around each trial, for progress display. Every method defaults to
/// doing nothing.
pub trait Observer {
    /// A trial at `batch_size` is about to run.
    fn trial_started(&mut self, _batch_size: usize) {}
    /// A trial has finished (or was predicted out of memory without running).
    fn trial_finished(&mut self, _trial: &Trial) {}
    /// The verification run (`steps` consecutive steps at `batch_size`) is about to run;
    /// by default it is shown as a trial.
    fn verification_started(&mut self, batch_size: usize, _steps: usize) {
        self.trial_started(batch_size);
    }
    /// The verification run has finished; by default it is shown as a trial.
    fn verification_finished(&mut self, trial: &Trial) {
        self.trial_finished(trial);
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {}

/// Where a trial at one batch size runs: in this process ([`InProcessTrials`]) or in a
/// child process (`isolate::ChildProcessTrials`, for `--isolate`).
pub trait TrialSource {
    /// Runs the trial at `batch_size` for `purpose` (a trial that confirms a failure may
    /// stop as soon as it is certain). Out of memory is an `Ok` trial; any other failure is
    /// an `Err` that stops the search.
    fn trial(&mut self, batch_size: usize, purpose: Purpose) -> candle_core::Result<Trial>;

    /// Runs `steps` consecutive steps at `batch_size` as one trial (the verification run),
    /// whatever the steps per trial.
    fn verify(&mut self, batch_size: usize, steps: usize) -> candle_core::Result<Trial>;

    /// Bytes beyond which a trial must not even be started (see
    /// [`MemoryMeter::hard_limit`]).
    fn hard_limit(&self) -> Option<u64>;

    /// Makes ready the memory a trial that peaks at `peak_bytes` will use (see
    /// [`MemoryMeter::prepare`]; default: nothing).
    fn prepare(&mut self, _peak_bytes: u64) {}
}

/// Trials of a training step in this process, measured by a meter.
pub struct InProcessTrials<'a> {
    /// The training step.
    pub step: &'a mut dyn TrainStep,
    /// The device's meter.
    pub meter: &'a mut dyn MemoryMeter,
    /// Full training steps per trial.
    pub steps: usize,
}

impl TrialSource for InProcessTrials<'_> {
    fn trial(&mut self, batch_size: usize, purpose: Purpose) -> candle_core::Result<Trial> {
        trial::run_for(self.step, batch_size, self.steps, self.meter, purpose)
    }

    fn verify(&mut self, batch_size: usize, steps: usize) -> candle_core::Result<Trial> {
        trial::run(self.step, batch_size, steps, self.meter)
    }

    fn hard_limit(&self) -> Option<u64> {
        self.meter.hard_limit()
    }

    fn prepare(&mut self, peak_bytes: u64) {
        self.meter.prepare(peak_bytes);
    }
}

/// Runs trials from a [`TrialSource`] one after another: remembers the measured fits for
/// the guard's predictions, refuses a size predicted past the machine's limit, tells the
/// observer, and starts no trial once the stop flag is set.
pub struct TrialRunner<'a> {
    source: &'a mut dyn TrialSource,
    observer: &'a mut dyn Observer,
    measured: Vec<(usize, u64)>,
    /// The estimate's prediction of a size's peak, for the guard before anything fit.
    prior: Option<StepModel>,
    stop: Option<Arc<AtomicBool>>,
    interrupted: bool,
}

impl<'a> TrialRunner<'a> {
    /// A runner of `source`'s trials that stops starting them once `stop` is set.
    pub fn new(
        source: &'a mut dyn TrialSource,
        observer: &'a mut dyn Observer,
        stop: Option<Arc<AtomicBool>>,
    ) -> Self {
        Self {
            source,
            observer,
            measured: Vec::new(),
            prior: None,
            stop,
            interrupted: false,
        }
    }

    /// Guards with `model`'s predictions too, before any size fit: a size the estimate
    /// puts past the machine's limit is not run (one tensor of a 100,000-token prompt's
    /// attention would abort the process before any stop point could end the trial).
    pub fn with_prior(mut self, model: Option<StepModel>) -> Self {
        self.prior = model;
        self
    }

    /// The peak the guard predicts at `batch_size`: a conservative line through the sizes
    /// that fit, else the estimate's.
    pub fn predicted_peak(&self, batch_size: usize) -> Option<u64> {
        conservative_peak(&self.measured, batch_size)
            .or_else(|| self.prior.as_ref().map(|m| m.peak_at(batch_size)))
    }

    /// Makes ready the memory a trial that peaks at `peak_bytes` will use (see
    /// [`MemoryMeter::prepare`]).
    pub fn prepare(&mut self, peak_bytes: u64) {
        self.source.prepare(peak_bytes);
    }

    /// True once a trial was refused because the stop flag was set.
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// The most a trial may be predicted to take before it is refused, where the device
    /// has a hard limit (the CPU machine's memory): well above the default budget, so that
    /// the sizes that decide the answer run and are measured (see docs/design.md).
    pub fn machine_limit(&self) -> Option<u64> {
        let machine = self.source.hard_limit()?;
        Some((machine as f64 * crate::memory::cpu::GUARD_SHARE) as u64)
    }

    /// Runs the trial at `batch_size` to measure it, or refuses it: the stop flag is set
    /// (an error), or its predicted peak is past the machine's limit (an out-of-memory
    /// trial marked `predicted`).
    pub fn run(&mut self, batch_size: usize) -> candle_core::Result<Trial> {
        self.run_for(batch_size, Purpose::Measure)
    }

    /// [`run`](Self::run) for `purpose`.
    pub fn run_for(&mut self, batch_size: usize, purpose: Purpose) -> candle_core::Result<Trial> {
        self.unless_stopped("the trial", batch_size)?;
        if let Some(limit) = self.machine_limit() {
            if let Some(predicted) = self.predicted_peak(batch_size) {
                if predicted > limit {
                    let trial = Trial::predicted_oom(batch_size, predicted, limit);
                    tracing::info!(
                        batch_size,
                        predicted,
                        limit,
                        "not run: predicted over the machine's memory"
                    );
                    self.observer.trial_finished(&trial);
                    return Ok(trial);
                }
            }
        }
        self.observer.trial_started(batch_size);
        let trial = self.source.trial(batch_size, purpose)?;
        if let (Outcome::Fits, Some(peak)) = (trial.outcome, trial.peak_bytes) {
            self.measured.push((batch_size, peak));
        }
        tracing::debug!(?trial, "trial finished");
        self.observer.trial_finished(&trial);
        Ok(trial)
    }

    /// An error, and the runner marked interrupted, once the stop flag is set: `what` at
    /// `batch_size` is then not started.
    fn unless_stopped(&mut self, what: &str, batch_size: usize) -> candle_core::Result<()> {
        if self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            self.interrupted = true;
            candle_core::bail!("interrupted before {what} at batch size {batch_size}");
        }
        Ok(())
    }

    /// Runs `steps` consecutive steps at `batch_size` (the verification run), unless the
    /// stop flag is set.
    pub fn verify(&mut self, batch_size: usize, steps: usize) -> candle_core::Result<Trial> {
        self.unless_stopped("the verification run", batch_size)?;
        self.observer.verification_started(batch_size, steps);
        let trial = self.source.verify(batch_size, steps)?;
        self.observer.verification_finished(&trial);
        Ok(trial)
    }

    /// Whether `batch_size` fits: from a trial there that fit, else by running it (and
    /// adding it to `trials`).
    pub fn fits_or_run(
        &mut self,
        batch_size: usize,
        trials: &mut Vec<Trial>,
    ) -> Result<bool, Error> {
        if trial::fitting_trial(trials, batch_size).is_some() {
            return Ok(true);
        }
        let trial = self
            .run(batch_size)
            .map_err(|e| Error::trial(batch_size, e))?;
        let fits = trial.outcome == Outcome::Fits;
        trials.push(trial);
        Ok(fits)
    }
}

/// Runs one step at batch size 1 when the meter asks for it, so that loading kernels and
/// library workspaces does not inflate the first trial; returns the bytes then held outside
/// the meter's count (the device's fixed overhead).
pub fn warm_up(
    step: &mut dyn TrainStep,
    meter: &mut dyn MemoryMeter,
) -> Result<Option<u64>, Error> {
    if !meter.needs_warmup() {
        return Ok(None);
    }
    let baseline = meter.current_bytes()?;
    tracing::info!("warm-up step at batch size 1");
    match step.step(1) {
        Ok(()) => {}
        Err(error) if meter.out_of_memory(&error).is_some() => {
            return Err(Error::NothingFits {
                needs: None,
                capacity: meter.capacity().bytes,
                hint: "the warm-up step at batch size 1 ran out of memory; free the device or \
                       choose a smaller model"
                    .into(),
                at_warm_up: true,
            })
        }
        Err(error) => return Err(Error::trial(1, error)),
    }
    meter.recover(baseline)?;
    meter.after_warmup()?;
    Ok(meter.outside_bytes()?)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::memory::{Capacity, CapacitySource};

    /// A device whose warm-up takes memory outside the meter's count (a CUDA context, a
    /// library workspace): its capacity shrinks when it is read after the warm-up step.
    struct Shrinking {
        capacity: u64,
        events: Rc<RefCell<Vec<&'static str>>>,
    }

    impl MemoryMeter for Shrinking {
        fn capacity(&self) -> Capacity {
            Capacity {
                bytes: self.capacity,
                source: CapacitySource::Device,
                is_budget: false,
            }
        }
        fn reset_peak(&mut self) -> candle_core::Result<()> {
            Ok(())
        }
        fn peak_bytes(&mut self) -> candle_core::Result<u64> {
            Ok(0)
        }
        fn current_bytes(&mut self) -> candle_core::Result<u64> {
            Ok(0)
        }
        fn needs_warmup(&self) -> bool {
            true
        }
        fn after_warmup(&mut self) -> candle_core::Result<()> {
            self.events.borrow_mut().push("capacity read");
            self.capacity -= 300;
            Ok(())
        }
    }

    #[test]
    fn the_capacity_is_read_again_after_the_warm_up_step() {
        let events = Rc::new(RefCell::new(Vec::new()));
        let mut meter = Shrinking {
            capacity: 1000,
            events: events.clone(),
        };
        let mut step = |_: usize| -> candle_core::Result<()> {
            events.borrow_mut().push("warm-up step");
            Ok(())
        };
        warm_up(&mut step, &mut meter).unwrap();
        assert_eq!(*events.borrow(), ["warm-up step", "capacity read"]);
        assert_eq!(meter.capacity().bytes, 700);
    }
}
