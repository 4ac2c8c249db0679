//! The finder: runs the search with real trials and turns the result into a [`Report`].
//!
//! ```text
//! search::doubling(bounds, |b| probe::trial(step, b, meter)) ─► trials, max
//!   ─► largest power of two (run if the search skipped it)
//!   ─► recommended (bisect between the sizes known within and beyond the margin)
//!   ─► schedule ─► Report
//! ```

use crate::device::ResolvedDevice;
use crate::error::Error;
use crate::memory::predict::predicted_peak;
use crate::memory::MemoryMeter;
use crate::models::ModelInfo;
use crate::probe::{self, Outcome, Trial};
use crate::report::{Dataset, DeviceInfo, Report, ScheduleRow, Settings};
use crate::schedule::{schedule, LastBatch};
use crate::search::{self, Bounds, SearchError};
use crate::workload::{OptimizerKind, TrainStep};

/// Hooks called around each trial, for progress display. Every method defaults to
/// doing nothing.
pub trait Observer {
    /// A trial at `batch_size` is about to run.
    fn trial_started(&mut self, _batch_size: usize) {}
    /// A trial has finished (or was predicted out of memory without running).
    fn trial_finished(&mut self, _trial: &Trial) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {}

/// The search's settings, built with setters; each states its default.
#[derive(Debug, Clone, PartialEq)]
pub struct Finder {
    start: usize,
    max_batch: Option<usize>,
    steps_per_trial: usize,
    margin: f64,
    dataset: Option<Dataset>,
    epochs: u64,
    last_batch: LastBatch,
    optimizer: Option<OptimizerKind>,
}

impl Default for Finder {
    fn default() -> Self {
        Self {
            start: 1,
            max_batch: None,
            steps_per_trial: 2,
            margin: 0.05,
            dataset: None,
            epochs: 1,
            last_batch: LastBatch::Keep,
            optimizer: None,
        }
    }
}

/// The largest batch size tried when neither a cap nor a dataset size is given.
pub const DEFAULT_MAX_BATCH: usize = 65_536;

impl Finder {
    /// A finder with the defaults: start 1, 2 steps per trial, 5% margin, no dataset.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first batch size tried (default 1).
    pub fn start(&mut self, start: usize) -> &mut Self {
        self.start = start;
        self
    }

    /// The largest batch size tried; it is tried before it is returned (default: the
    /// dataset size if given, else 65,536).
    pub fn max_batch(&mut self, max_batch: usize) -> &mut Self {
        self.max_batch = Some(max_batch);
        self
    }

    /// Full training steps per trial (default 2).
    pub fn steps_per_trial(&mut self, steps: usize) -> &mut Self {
        self.steps_per_trial = steps;
        self
    }

    /// The fraction of the capacity the recommended size leaves free (default 0.05).
    pub fn margin(&mut self, margin: f64) -> &mut Self {
        self.margin = margin;
        self
    }

    /// The number of training samples, for the schedule (default: none, no schedule).
    pub fn dataset_size(&mut self, samples: u64) -> &mut Self {
        let drop_last = self.last_batch == LastBatch::Drop;
        self.dataset = Some(Dataset {
            size: samples,
            epochs: self.epochs,
            drop_last,
        });
        self
    }

    /// Passes over the dataset, for the schedule (default 1).
    pub fn epochs(&mut self, epochs: u64) -> &mut Self {
        self.epochs = epochs;
        if let Some(d) = &mut self.dataset {
            d.epochs = epochs;
        }
        self
    }

    /// Whether each epoch's last partial batch is dropped (default: kept).
    pub fn drop_last(&mut self, drop_last: bool) -> &mut Self {
        self.last_batch = if drop_last {
            LastBatch::Drop
        } else {
            LastBatch::Keep
        };
        if let Some(d) = &mut self.dataset {
            d.drop_last = drop_last;
        }
        self
    }

    /// The optimizer named in the report, for built-in workloads (default: none).
    pub fn optimizer(&mut self, optimizer: OptimizerKind) -> &mut Self {
        self.optimizer = Some(optimizer);
        self
    }

    /// The batch size bounds of the search, after checking every setting.
    pub fn bounds(&self) -> Result<Bounds, Error> {
        let invalid = |m: String| Err(Error::InvalidSetting(m));
        if self.start == 0 {
            return invalid("--start must be at least 1".into());
        }
        if self.steps_per_trial == 0 {
            return invalid("--steps-per-trial must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.margin) {
            return invalid(format!(
                "--margin {} is not a fraction in [0, 1); e.g. 0.05 leaves 5% free",
                self.margin
            ));
        }
        if let Some(d) = &self.dataset {
            if d.size == 0 {
                return invalid("--dataset-size must be at least 1 sample".into());
            }
            if d.epochs == 0 {
                return invalid("--epochs must be at least 1".into());
            }
        }
        let max_batch = self.max_batch.unwrap_or_else(|| {
            self.dataset.as_ref().map_or(DEFAULT_MAX_BATCH, |d| {
                usize::try_from(d.size).unwrap_or(usize::MAX)
            })
        });
        if max_batch < self.start {
            return invalid(format!(
                "--start {} is above the largest batch size {max_batch} \
                 (--max-batch, or the dataset size)",
                self.start
            ));
        }
        Ok(Bounds {
            start: self.start,
            max_batch,
        })
    }

    /// Runs the search with `step` measured by `meter` and reports the result.
    ///
    /// `model` and `device` name what is measured, for the report.
    pub fn find(
        &self,
        step: &mut dyn TrainStep,
        meter: &mut dyn MemoryMeter,
        model: ModelInfo,
        device: &ResolvedDevice,
        observer: &mut dyn Observer,
    ) -> Result<Report, Error> {
        let bounds = self.bounds()?;
        let capacity = meter.capacity();
        let baseline = meter.current_bytes()?;
        if baseline > capacity.bytes {
            return Err(Error::ModelExceedsCapacity {
                held: baseline,
                capacity: capacity.bytes,
            });
        }
        let overhead_bytes = warm_up(step, meter)?;
        let device = DeviceInfo {
            total_bytes: meter.total_bytes(),
            overhead_bytes,
            kind: device.kind,
            name: device.name.clone(),
            capacity_bytes: capacity.bytes,
            capacity_source: capacity.source,
            capacity_is_budget: capacity.is_budget,
            baseline_bytes: baseline,
            fallback: device.fallback.clone(),
        };

        let mut runner = Runner {
            step,
            meter,
            observer,
            steps: self.steps_per_trial,
            measured: Vec::new(),
        };
        let found = search::doubling(bounds, |b| runner.run(b)).map_err(|e| match e {
            SearchError::InvalidBounds(b) => Error::InvalidSetting(format!("invalid bounds {b:?}")),
            SearchError::NothingFits { trials } => Error::NothingFits {
                needs: trials.last().and_then(|t| t.peak_bytes),
                capacity: capacity.bytes,
                hint: "raise --memory, shorten --seq-len, or train with --optimizer sgd",
            },
            SearchError::Probe {
                batch_size, error, ..
            } => error.at(batch_size),
        })?;
        let mut trials = found.trials;
        let max = found.max_batch_size;

        let power_of_two = runner.largest_power_of_two(max, &mut trials)?;
        let recommended = runner.recommended(capacity.bytes, self.margin, &mut trials)?;

        let schedule = self.schedule_rows(max, power_of_two, recommended);
        Ok(Report {
            model,
            device,
            settings: Settings {
                optimizer: self.optimizer,
                steps_per_trial: self.steps_per_trial,
                margin: self.margin,
                start: bounds.start,
                max_batch: bounds.max_batch,
            },
            trials,
            max_batch_size: max,
            max_is_cap: max == bounds.max_batch,
            largest_power_of_two: power_of_two,
            recommended_batch_size: recommended,
            dataset: self.dataset.clone(),
            schedule,
        })
    }

    /// Runs one trial at `batch_size` (the pre-flight check).
    pub fn check(
        &self,
        step: &mut dyn TrainStep,
        meter: &mut dyn MemoryMeter,
        batch_size: usize,
        observer: &mut dyn Observer,
    ) -> Result<Trial, Error> {
        if batch_size == 0 {
            return Err(Error::InvalidSetting(
                "--batch-size must be at least 1".into(),
            ));
        }
        self.bounds()?;
        warm_up(step, meter)?;
        let mut runner = Runner {
            step,
            meter,
            observer,
            steps: self.steps_per_trial,
            measured: Vec::new(),
        };
        runner.run(batch_size).map_err(|e| e.at(batch_size))
    }

    fn schedule_rows(
        &self,
        max: usize,
        power_of_two: usize,
        recommended: Option<usize>,
    ) -> Vec<ScheduleRow> {
        let Some(d) = &self.dataset else {
            return Vec::new();
        };
        let sizes = [
            ("max", Some(max)),
            ("largest_power_of_two", Some(power_of_two)),
            ("recommended", recommended),
        ];
        sizes
            .into_iter()
            .filter_map(|(label, b)| {
                let s = schedule(d.size, b? as u64, d.epochs, self.last_batch);
                Some(ScheduleRow {
                    label,
                    batch_size: s.batch_size,
                    steps_per_epoch: s.steps_per_epoch,
                    total_steps: s.total_steps,
                })
            })
            .collect()
    }
}

/// Runs one step at batch size 1 when the meter asks for it, so that loading kernels and
/// library workspaces does not inflate the first trial; returns the bytes then held outside
/// the meter's count (the device's fixed overhead).
fn warm_up(step: &mut dyn TrainStep, meter: &mut dyn MemoryMeter) -> Result<Option<u64>, Error> {
    if !meter.needs_warmup() {
        return Ok(None);
    }
    let baseline = meter.current_bytes()?;
    tracing::info!("warm-up step at batch size 1");
    match step.step(1) {
        Ok(()) => {}
        Err(error) if meter.is_out_of_memory(&error) => {
            return Err(Error::NothingFits {
                needs: None,
                capacity: meter.capacity().bytes,
                hint: "the warm-up step at batch size 1 ran out of memory; free the device or \
                       choose a smaller model",
            })
        }
        Err(error) => return Err(error.at(1)),
    }
    meter.recover(baseline)?;
    Ok(meter.outside_bytes()?)
}

/// A trial failure tagged with its batch size.
trait AtBatch {
    fn at(self, batch_size: usize) -> Error;
}

impl AtBatch for candle_core::Error {
    fn at(self, batch_size: usize) -> Error {
        Error::Trial {
            batch_size,
            error: self,
        }
    }
}

/// Runs trials one after another, remembering the measured fits for predictions.
struct Runner<'a> {
    step: &'a mut dyn TrainStep,
    meter: &'a mut dyn MemoryMeter,
    observer: &'a mut dyn Observer,
    steps: usize,
    measured: Vec<(usize, u64)>,
}

impl Runner<'_> {
    fn run(&mut self, batch_size: usize) -> candle_core::Result<Trial> {
        if let Some(limit) = self.meter.hard_limit() {
            if let Some(predicted) = predicted_peak(&self.measured, batch_size) {
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
        let trial = probe::trial(self.step, batch_size, self.steps, self.meter)?;
        if let (Outcome::Fits, Some(peak)) = (trial.outcome, trial.peak_bytes) {
            self.measured.push((batch_size, peak));
        }
        tracing::debug!(?trial, "trial finished");
        self.observer.trial_finished(&trial);
        Ok(trial)
    }

    /// The largest size whose peak leaves `margin` of `capacity` free, found exactly by
    /// running the sizes between the last one known within the margin and the first one
    /// known beyond it (usually none or a few: the search's own trials bracket it).
    fn recommended(
        &mut self,
        capacity: u64,
        margin: f64,
        trials: &mut Vec<Trial>,
    ) -> Result<Option<usize>, Error> {
        let allowed = search::allowed_peak(capacity, margin);
        let within =
            |t: &Trial| t.outcome == Outcome::Fits && t.peak_bytes.is_some_and(|p| p <= allowed);
        let ran: Vec<(usize, bool)> = trials.iter().map(|t| (t.batch_size, within(t))).collect();
        let (good, bad) = search::margin_bracket(&ran);
        let mut probe = |b: usize| self.run(b);
        let found = search::bisect(good, bad, &mut probe, within, trials)
            .map_err(|(batch_size, error)| error.at(batch_size))?;
        Ok((found > 0).then_some(found))
    }

    /// The largest power of two ≤ `max` that ran and fit, running it when the search did
    /// not (a start that is not a power of two skips them).
    fn largest_power_of_two(
        &mut self,
        max: usize,
        trials: &mut Vec<Trial>,
    ) -> Result<usize, Error> {
        let mut candidate = search::largest_power_of_two_at_most(max);
        loop {
            let ran = |b: usize, trials: &[Trial]| {
                trials
                    .iter()
                    .any(|t| t.batch_size == b && t.outcome == Outcome::Fits)
            };
            if ran(candidate, trials) {
                return Ok(candidate);
            }
            let trial = self.run(candidate).map_err(|e| e.at(candidate))?;
            let fits = trial.outcome == Outcome::Fits;
            trials.push(trial);
            if fits {
                return Ok(candidate);
            }
            if candidate == 1 {
                // Batch size `max` fit but 1 did not: the memory curve is not monotone.
                return Err(Error::InvalidSetting(format!(
                    "batch size {max} fit but batch size 1 did not; the measurements are \
                     inconsistent, rerun with more --steps-per-trial"
                )));
            }
            candidate /= 2;
        }
    }
}
