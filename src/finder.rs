//! The finder: runs the search with real trials and turns the result into a [`Report`].
//!
//! ```text
//! search::doubling(bounds, |b| probe::trial(step, b, meter)) ─► trials, max
//!   ─► largest power of two (run if the search skipped it)
//!   ─► recommended (bisect between the sizes known within and beyond the margin)
//!   ─► schedule ─► Report
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::device::ResolvedDevice;
use crate::error::Error;
use crate::memory::predict::predicted_peak;
use crate::memory::MemoryMeter;
use crate::models::ModelInfo;
use crate::probe::{self, Outcome, Trial};
use crate::report::{Dataset, DeviceInfo, Report, ScheduleRow, Settings};
use crate::schedule::{self, schedule, LastBatch};
use crate::search::{self, Bounds, SearchError, Strategy};
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

/// Runs one trial at a batch size: in this process ([`InProcess`]) or in a child process
/// (`--isolate`).
pub trait Trials {
    /// Runs the trial at `batch_size`. Out of memory is an `Ok` trial; any other failure
    /// is an `Err` that stops the search.
    fn trial(&mut self, batch_size: usize) -> candle_core::Result<Trial>;

    /// Bytes beyond which a trial must not even be started (see
    /// [`MemoryMeter::hard_limit`]).
    fn hard_limit(&self) -> Option<u64>;
}

/// Trials of a training step in this process, measured by a meter.
pub struct InProcess<'a> {
    /// The training step.
    pub step: &'a mut dyn TrainStep,
    /// The device's meter.
    pub meter: &'a mut dyn MemoryMeter,
    /// Full training steps per trial.
    pub steps: usize,
}

impl Trials for InProcess<'_> {
    fn trial(&mut self, batch_size: usize) -> candle_core::Result<Trial> {
        probe::trial(self.step, batch_size, self.steps, self.meter)
    }

    fn hard_limit(&self) -> Option<u64> {
        self.meter.hard_limit()
    }
}

/// The search's settings, built with setters; each states its default.
#[derive(Debug, Clone)]
pub struct Finder {
    start: usize,
    max_batch: Option<usize>,
    steps_per_trial: usize,
    margin: f64,
    dataset: Option<Dataset>,
    epochs: u64,
    last_batch: LastBatch,
    optimizer: Option<OptimizerKind>,
    strategy: Strategy,
    accumulation: Option<(u64, u64, Option<usize>)>,
    stop: Option<Arc<AtomicBool>>,
    device: Option<candle_core::Device>,
    budget: Option<u64>,
    model: Option<ModelInfo>,
    cache: Option<(String, crate::cache::Cache)>,
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
            strategy: Strategy::Guided,
            accumulation: None,
            stop: None,
            device: None,
            budget: None,
            model: None,
            cache: None,
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

    /// A finder for trials on `device`, for [`find`](Self::find) and
    /// [`check`](Self::check): the CPU is measured by the counting allocator (which the
    /// program must install as its global allocator), a CUDA device by its memory pool.
    pub fn on(device: &candle_core::Device) -> Self {
        Self {
            device: Some(device.clone()),
            ..Self::default()
        }
    }

    /// A memory budget in bytes (default: 80% of the CPU's available memory, or the CUDA
    /// device's free memory). On the CPU a budget is what keeps an oversized trial from
    /// aborting the process.
    pub fn budget(&mut self, bytes: u64) -> &mut Self {
        self.budget = Some(bytes);
        self
    }

    /// What the report says about the model (default: "custom", 0 parameters).
    pub fn model(&mut self, info: ModelInfo) -> &mut Self {
        self.model = Some(info);
        self
    }

    /// Caches answers under `key` (which names your model and its input shape: change it
    /// when they change) in the user's cache folder or `$MAXBATCH_CACHE`, together with the
    /// device, its memory, the settings and maxbatch's version, so that asking again costs
    /// nothing (default: no cache).
    pub fn cache_key(&mut self, key: impl Into<String>) -> &mut Self {
        self.cache = crate::cache::Cache::default_location().map(|c| (key.into(), c));
        self
    }

    /// Finds the largest batch size `step` can train at on the finder's device.
    ///
    /// `step` runs one full training step (forward, loss, backward, optimizer update) at
    /// the batch size it is given; any `FnMut(usize) -> candle_core::Result<()>` will do.
    ///
    /// ```no_run
    /// use candle_core::Device;
    /// use maxbatch::Finder;
    ///
    /// #[global_allocator]
    /// static ALLOCATOR: maxbatch::CountingAllocator = maxbatch::CountingAllocator;
    ///
    /// # fn train_step(b: usize) -> candle_core::Result<()> { Ok(()) }
    /// let report = Finder::on(&Device::Cpu)
    ///     .budget(2 << 30)
    ///     .dataset_size(60_000)
    ///     .find(&mut |b| train_step(b))?;
    /// println!("train at {:?}", report.recommended_batch_size);
    /// # Ok::<(), maxbatch::Error>(())
    /// ```
    pub fn find<S: TrainStep>(&self, step: &mut S) -> Result<Report, Error> {
        let (device, mut meter) = self.device_and_meter()?;
        let key = self.library_cache_key("search".into(), &device, meter.as_ref());
        let model = self.model_info();
        crate::cache::answer_or_run(self.cache_and(key.as_ref()), || {
            self.find_with(step, meter.as_mut(), model, &device, &mut Silent)
        })
        .map(|(report, _)| report)
    }

    /// Runs one trial of `step` at `batch_size` on the finder's device: the pre-flight
    /// check. The trial's outcome says whether it fits.
    pub fn check<S: TrainStep>(&self, step: &mut S, batch_size: usize) -> Result<Trial, Error> {
        let (device, mut meter) = self.device_and_meter()?;
        let key = self.library_cache_key(format!("check {batch_size}"), &device, meter.as_ref());
        crate::cache::answer_or_run(self.cache_and(key.as_ref()), || {
            self.check_with(step, meter.as_mut(), batch_size, &mut Silent)
        })
        .map(|(trial, _)| trial)
    }

    fn library_cache_key(
        &self,
        kind: String,
        device: &ResolvedDevice,
        meter: &dyn MemoryMeter,
    ) -> Option<crate::cache::CacheKey> {
        let (key, _) = self.cache.as_ref()?;
        Some(crate::cache::CacheKey {
            kind,
            model: key.clone(),
            dtype: String::new(),
            input: String::new(),
            optimizer: String::new(),
            device: device.name.clone(),
            memory_bytes: meter.total_bytes().unwrap_or(meter.capacity().bytes),
            settings: self.settings_key(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    fn cache_and<'a>(
        &'a self,
        key: Option<&'a crate::cache::CacheKey>,
    ) -> Option<(&'a crate::cache::Cache, &'a crate::cache::CacheKey)> {
        Some((&self.cache.as_ref()?.1, key?))
    }

    fn device_and_meter(&self) -> Result<(ResolvedDevice, Box<dyn MemoryMeter>), Error> {
        let device = self.device.as_ref().ok_or_else(|| {
            Error::InvalidSetting(
                "this finder has no device: make it with Finder::on(&device)".into(),
            )
        })?;
        Ok((
            ResolvedDevice::from_device(device),
            crate::memory::meter_for(device, self.budget)?,
        ))
    }

    fn model_info(&self) -> ModelInfo {
        self.model.clone().unwrap_or_else(|| ModelInfo {
            name: "custom".into(),
            parameters: 0,
            input: "your batches".into(),
            summary: "the caller's training step".into(),
            dtype: String::new(),
        })
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

    /// How sizes are chosen (default: guided by the measured peaks).
    pub fn strategy(&mut self, strategy: Strategy) -> &mut Self {
        self.strategy = strategy;
        self
    }

    /// Plans gradient accumulation to reach a global batch of `target_batch` on
    /// `world_size` data-parallel replicas, with micro-batches of `micro_batch` (default:
    /// the largest power of two ≤ the recommended size; it is run if the search did not).
    pub fn accumulate(
        &mut self,
        target_batch: u64,
        world_size: u64,
        micro_batch: Option<usize>,
    ) -> &mut Self {
        self.accumulation = Some((target_batch, world_size, micro_batch));
        self
    }

    /// A flag that, once set (by a Ctrl-C handler, say), stops the search after the trial
    /// that is running; `find` then returns [`Error::Interrupted`] with what was measured.
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) -> &mut Self {
        self.stop = Some(flag);
        self
    }

    /// The settings that decide a search's answer, as text for a cache key.
    pub fn settings_key(&self) -> String {
        format!(
            "{} start {} max {:?} steps {} margin {} dataset {:?} last {:?}",
            self.strategy,
            self.start,
            self.bounds().map(|b| b.max_batch).ok(),
            self.steps_per_trial,
            self.margin,
            self.dataset,
            self.last_batch
        )
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
        if let Some((target, world, micro)) = self.accumulation {
            if target == 0 || world == 0 || micro == Some(0) {
                return invalid(
                    "--target-batch, --world-size and --micro-batch must be at least 1".into(),
                );
            }
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
    pub fn find_with(
        &self,
        step: &mut dyn TrainStep,
        meter: &mut dyn MemoryMeter,
        model: ModelInfo,
        device: &ResolvedDevice,
        observer: &mut dyn Observer,
    ) -> Result<Report, Error> {
        self.bounds()?;
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
            baseline_bytes: Some(baseline),
            fallback: device.fallback.clone(),
        };
        let mut trials = InProcess {
            step,
            meter,
            steps: self.steps_per_trial,
        };
        self.search(&mut trials, model, device, observer)
    }

    /// Runs the search with `trials` (in this process or in child processes) against the
    /// capacity in `device`, and reports the result.
    pub fn search(
        &self,
        trials: &mut dyn Trials,
        model: ModelInfo,
        device: DeviceInfo,
        observer: &mut dyn Observer,
    ) -> Result<Report, Error> {
        let bounds = self.bounds()?;
        let capacity = device.capacity_bytes;
        let mut runner = Runner {
            trials,
            observer,
            measured: Vec::new(),
            stop: self.stop.clone(),
            interrupted: false,
        };
        let mut report = Report {
            model,
            device,
            settings: Settings {
                optimizer: self.optimizer,
                steps_per_trial: self.steps_per_trial,
                margin: self.margin,
                strategy: self.strategy,
                start: bounds.start,
                max_batch: bounds.max_batch,
            },
            trials: Vec::new(),
            max_batch_size: 0,
            max_is_cap: false,
            largest_power_of_two: 0,
            recommended_batch_size: None,
            dataset: self.dataset.clone(),
            schedule: Vec::new(),
            interrupted: false,
            memory_model: None,
            throughput_note: None,
            accumulation: None,
        };
        let interrupted = |runner: &Runner, report: &mut Report, trials: Vec<Trial>| {
            runner.interrupted.then(|| {
                report.trials = trials;
                self.summarize_partial(report);
                Error::Interrupted(Box::new(report.clone()))
            })
        };

        let found = match self.strategy {
            Strategy::Doubling => search::doubling(bounds, |b| runner.run(b)),
            Strategy::Guided => {
                // Aiming past what the machine lets a trial take would only be refused.
                let aim = runner.machine_limit().map_or(capacity, |l| l.min(capacity));
                search::guided(bounds, aim, |b| runner.run(b))
            }
        };
        let found = match found {
            Ok(found) => found,
            Err(SearchError::Probe {
                batch_size,
                error,
                trials,
            }) => {
                return Err(interrupted(&runner, &mut report, trials)
                    .unwrap_or_else(|| error.at(batch_size)))
            }
            Err(SearchError::NothingFits { trials }) => {
                return Err(Error::NothingFits {
                    needs: trials.last().and_then(|t| t.peak_bytes),
                    capacity,
                    hint: "raise --memory, shorten --seq-len, or train with --optimizer sgd",
                })
            }
            Err(SearchError::InvalidBounds(b)) => {
                return Err(Error::InvalidSetting(format!("invalid bounds {b:?}")))
            }
        };
        let mut trials = found.trials;
        let max = found.max_batch_size;
        // The sizes the search itself may not have run, run now.
        let finish = (|| {
            let power_of_two = runner.largest_power_of_two(max, &mut trials)?;
            let recommended =
                runner.recommended(capacity, self.margin, self.strategy, &mut trials)?;
            let plan = match self.accumulation {
                Some((target, world, micro)) => {
                    let micro = micro.unwrap_or_else(|| {
                        search::largest_power_of_two_at_most(recommended.unwrap_or(max))
                    });
                    runner.ensure_fits(micro, &mut trials)?;
                    let dataset = self.dataset.as_ref().map(|d| (d.size, d.epochs));
                    Some(schedule::accumulation(target, world, micro as u64, dataset))
                }
                None => None,
            };
            Ok::<_, Error>((power_of_two, recommended, plan))
        })();
        let (power_of_two, recommended, plan) = match finish {
            Ok(sizes) => sizes,
            Err(error) => return Err(interrupted(&runner, &mut report, trials).unwrap_or(error)),
        };

        report.schedule = self.schedule_rows(max, power_of_two, recommended, &trials);
        report.accumulation = plan;
        report.trials = trials;
        report.max_batch_size = max;
        report.max_is_cap = max == bounds.max_batch;
        report.largest_power_of_two = power_of_two;
        report.recommended_batch_size = recommended;
        report.memory_model = crate::analysis::memory_model(&report);
        report.throughput_note = crate::analysis::throughput_note(&report);
        Ok(report)
    }

    /// Fills an interrupted report's sizes from the trials that ran: the largest that fit,
    /// the largest power of two that fit, the largest that left the margin free (0 or
    /// `None` where none did).
    fn summarize_partial(&self, report: &mut Report) {
        let fits: Vec<&Trial> = report
            .trials
            .iter()
            .filter(|t| t.outcome == Outcome::Fits)
            .collect();
        let largest = |keep: &dyn Fn(&Trial) -> bool| {
            fits.iter().filter(|t| keep(t)).map(|t| t.batch_size).max()
        };
        let allowed = search::allowed_peak(report.device.capacity_bytes, self.margin);
        report.max_batch_size = largest(&|_| true).unwrap_or(0);
        report.largest_power_of_two = largest(&|t| t.batch_size.is_power_of_two()).unwrap_or(0);
        report.recommended_batch_size = largest(&|t| t.peak_bytes.is_some_and(|p| p <= allowed));
        report.max_is_cap = false;
        report.interrupted = true;
        if report.max_batch_size > 0 {
            report.schedule = self.schedule_rows(
                report.max_batch_size,
                report.largest_power_of_two.max(1),
                report.recommended_batch_size,
                &report.trials,
            );
        }
    }

    /// Checks the settings of a pre-flight check at `batch_size`, before anything is built.
    pub fn check_settings(&self, batch_size: usize) -> Result<(), Error> {
        if batch_size == 0 {
            return Err(Error::InvalidSetting(
                "--batch-size must be at least 1".into(),
            ));
        }
        self.bounds().map(|_| ())
    }

    /// Runs one trial at `batch_size` (the pre-flight check).
    pub fn check_with(
        &self,
        step: &mut dyn TrainStep,
        meter: &mut dyn MemoryMeter,
        batch_size: usize,
        observer: &mut dyn Observer,
    ) -> Result<Trial, Error> {
        self.check_settings(batch_size)?;
        warm_up(step, meter)?;
        let mut trials = InProcess {
            step,
            meter,
            steps: self.steps_per_trial,
        };
        let mut runner = Runner {
            trials: &mut trials,
            observer,
            measured: Vec::new(),
            stop: None,
            interrupted: false,
        };
        runner.run(batch_size).map_err(|e| e.at(batch_size))
    }

    fn schedule_rows(
        &self,
        max: usize,
        power_of_two: usize,
        recommended: Option<usize>,
        trials: &[Trial],
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
                let b = b?;
                let s = schedule(d.size, b as u64, d.epochs, self.last_batch);
                let seconds_per_step = crate::analysis::seconds_per_step(trials, b);
                Some(ScheduleRow {
                    label: label.to_string(),
                    batch_size: s.batch_size,
                    steps_per_epoch: s.steps_per_epoch,
                    total_steps: s.total_steps,
                    seconds_per_step,
                    epoch_seconds: seconds_per_step.map(|t| t * s.steps_per_epoch as f64),
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

/// Runs trials one after another, remembering the measured fits for predictions, and
/// refusing to start one once the stop flag is set.
struct Runner<'a> {
    trials: &'a mut dyn Trials,
    observer: &'a mut dyn Observer,
    measured: Vec<(usize, u64)>,
    stop: Option<Arc<AtomicBool>>,
    interrupted: bool,
}

impl Runner<'_> {
    /// The most a trial may be predicted to take before it is refused, where the device
    /// has a hard limit (the CPU machine's memory).
    fn machine_limit(&self) -> Option<u64> {
        // Extrapolations err by a tenth or two where the curve bends: keep headroom.
        let machine = self.trials.hard_limit()?;
        Some((machine as f64 * crate::memory::cpu::AVAILABLE_SHARE) as u64)
    }

    fn run(&mut self, batch_size: usize) -> candle_core::Result<Trial> {
        if self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            self.interrupted = true;
            candle_core::bail!("interrupted before the trial at batch size {batch_size}");
        }
        if let Some(limit) = self.machine_limit() {
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
        let trial = self.trials.trial(batch_size)?;
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
        strategy: Strategy,
        trials: &mut Vec<Trial>,
    ) -> Result<Option<usize>, Error> {
        let allowed = search::allowed_peak(capacity, margin);
        let within =
            |t: &Trial| t.outcome == Outcome::Fits && t.peak_bytes.is_some_and(|p| p <= allowed);
        let ran: Vec<(usize, bool)> = trials.iter().map(|t| (t.batch_size, within(t))).collect();
        let (good, bad) = search::margin_bracket(&ran);
        let mut probe = |b: usize| self.run(b);
        let found = match strategy {
            Strategy::Doubling => search::bisect(good, bad, &mut probe, within, trials),
            Strategy::Guided => {
                search::toward_threshold(good, Some(bad), bad, allowed, &mut probe, within, trials)
            }
        }
        .map_err(|(batch_size, error)| error.at(batch_size))?;
        Ok((found > 0).then_some(found))
    }

    /// Whether `batch_size` fits: from a trial there that fit, else by running it.
    fn fits_or_run(&mut self, batch_size: usize, trials: &mut Vec<Trial>) -> Result<bool, Error> {
        if probe::fitting_trial(trials, batch_size).is_some() {
            return Ok(true);
        }
        let trial = self.run(batch_size).map_err(|e| e.at(batch_size))?;
        let fits = trial.outcome == Outcome::Fits;
        trials.push(trial);
        Ok(fits)
    }

    /// Runs `batch_size` unless a trial there already fit; it must fit.
    fn ensure_fits(&mut self, batch_size: usize, trials: &mut Vec<Trial>) -> Result<(), Error> {
        if batch_size == 0 || self.fits_or_run(batch_size, trials)? {
            Ok(())
        } else {
            Err(Error::InvalidSetting(format!(
                "the micro-batch {batch_size} does not fit; choose a smaller --micro-batch"
            )))
        }
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
            if self.fits_or_run(candidate, trials)? {
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
