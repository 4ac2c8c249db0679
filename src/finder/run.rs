//! The finder at work: the cache's key and answer, what a trial counts as held, the VarMap
//! restored around the search, and the search itself with the trials after it.

use std::sync::Arc;

use super::{Finder, TrialCallback};
use crate::cache::{Cache, CacheKey, CacheUse, Cacheable};
use crate::error::Error;
use crate::finish::{self, Finished, Searched};
use crate::memory::{CapacitySource, MemoryMeter};
use crate::models::ModelInfo;
use crate::report::{DeviceInfo, Report, Seeding};
use crate::runner::{self, InProcessTrials, Observer, TrialRunner, TrialSource};
use crate::search::{self, SearchError, Strategy};
use crate::settings::SearchSettings;
use crate::trial::Trial;
use crate::workload::{OptimizerKind, TrainStep};

impl Finder {
    /// The cache and the key of a `kind` answer ("search", or "check N") measured by
    /// `meter`, when this finder caches: the one place a key is made.
    pub fn cached(&self, kind: &str, meter: &dyn MemoryMeter) -> Option<(Cache, CacheKey)> {
        let (cache, model_key, _) = self.cache.as_ref()?;
        let model = self.model_info();
        let capacity = meter.capacity();
        // The dataset only changes the schedule arithmetic, recomputed on a hit; the cap it
        // implies does change the trials.
        let settings = SearchSettings {
            max_batch: Some(self.settings.max_batch_or_default()),
            dataset_size: None,
            epochs: 1,
            drop_last: false,
            ..self.settings.clone()
        };
        let key = CacheKey {
            kind: kind.to_string(),
            model: model_key.clone(),
            dtype: model.dtype,
            input: model.input,
            device: self.device.name.clone(),
            memory_bytes: meter.total_bytes().unwrap_or(capacity.bytes),
            capacity_bytes: (capacity.source != CapacitySource::Device).then_some(capacity.bytes),
            settings,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Some((cache.clone(), key))
    }

    /// The answer for `cached` (from [`cached`](Self::cached)) from the cache, fitted to
    /// this finder's settings (a report's schedule is recomputed for its dataset), or
    /// `run`'s, stored for next time; `true` when it came from the cache.
    pub fn answer_or_run<T: Cacheable, E>(
        &self,
        cached: Option<(Cache, CacheKey)>,
        run: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, bool), E> {
        let mode = self.cache.as_ref().map_or(CacheUse::Answer, |c| c.2);
        let (value, hit) =
            crate::cache::answer_or_run(cached.as_ref().map(|(c, k)| (c, k)), mode, run)?;
        Ok(if hit {
            (value.answered_from_cache(&self.settings), true)
        } else {
            (value, false)
        })
    }

    /// What a trial counts as held before it: the model's bytes and the meter's own (see
    /// [`model_holds`](Self::model_holds)), or `None` for everything held.
    pub(super) fn counted_held(&self, meter: &dyn MemoryMeter) -> Option<u64> {
        let model = self.model_holds.or_else(|| {
            self.varmap.as_ref()?;
            let weights = self.model_info().weight_bytes()?;
            let copies = self
                .settings
                .optimizer
                .unwrap_or(OptimizerKind::AdamW)
                .state_copies();
            Some(weights * (1 + copies))
        })?;
        Some(model + meter.own_bytes())
    }

    /// What the report says about the model: as given, else from the VarMap, else words
    /// for a step maxbatch knows nothing about.
    pub(super) fn model_info(&self) -> ModelInfo {
        if let Some(info) = &self.model {
            return info.clone();
        }
        match &self.varmap {
            Some(varmap) => {
                let vars = varmap.all_vars();
                ModelInfo {
                    name: "your model".into(),
                    parameters: vars.iter().map(|v| v.elem_count() as u64).sum(),
                    trainable_parameters: Some(vars.iter().map(|v| v.elem_count() as u64).sum()),
                    input: "your batches".into(),
                    summary: format!("{} variables from a VarMap", vars.len()),
                    dtype: vars
                        .first()
                        .map(|v| v.dtype().as_str().to_string())
                        .unwrap_or_default(),
                    ..ModelInfo::default()
                }
            }
            None => ModelInfo {
                name: "your model".into(),
                parameters: 0,
                input: "your batches".into(),
                summary: "your training step".into(),
                dtype: String::new(),
                ..ModelInfo::default()
            },
        }
    }

    /// The observer of a library call: the `on_trial` callback, or nothing.
    pub(super) fn observer(&self) -> CallbackObserver {
        CallbackObserver(self.on_trial.clone())
    }

    /// Runs `search` with the VarMap's variables copied to host memory first and restored
    /// after, whatever `search` returns.
    pub(super) fn restoring<T>(
        &self,
        search: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        let Some(varmap) = &self.varmap else {
            return search();
        };
        let saved = varmap
            .all_vars()
            .into_iter()
            .map(|var| {
                // `copy` makes a buffer of its own where the variable already is on the CPU.
                let host = var
                    .as_tensor()
                    .to_device(&candle_core::Device::Cpu)?
                    .copy()?;
                Ok((var, host))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let result = search();
        for (var, host) in saved {
            var.set(&host.to_device(var.device())?)?;
        }
        result
    }

    /// Runs the search with `step` measured by `meter` in this process, and reports it.
    pub fn find_with(
        &self,
        step: &mut dyn TrainStep,
        meter: &mut dyn MemoryMeter,
        observer: &mut dyn Observer,
    ) -> Result<Report, Error> {
        self.settings.validate()?;
        let overhead_bytes = runner::warm_up(step, meter)?;
        // Read after the warm-up: on CUDA it takes memory outside the pool.
        let capacity = meter.capacity();
        let counted_held = self.counted_held(meter);
        let baseline = meter.mark_reference(counted_held)?;
        if baseline > capacity.bytes {
            return Err(Error::ModelExceedsCapacity {
                held: baseline,
                workspace: meter.own_bytes(),
                capacity: capacity.bytes,
            });
        }
        let device = DeviceInfo {
            baseline_bytes: Some(baseline),
            baseline_is_whole_heap: capacity.is_budget && counted_held.is_none(),
            overhead_bytes,
            ..DeviceInfo::of(&self.device, meter)
        };
        let mut source = InProcessTrials {
            step,
            meter,
            steps: self.settings.steps_per_trial,
        };
        self.search(&mut source, device, observer)
    }

    /// Runs one trial at `batch_size` (the pre-flight check) in this process.
    pub fn check_with(
        &self,
        step: &mut dyn TrainStep,
        meter: &mut dyn MemoryMeter,
        batch_size: usize,
        observer: &mut dyn Observer,
    ) -> Result<Trial, Error> {
        self.settings.validate_check(batch_size)?;
        runner::warm_up(step, meter)?;
        let held = self.counted_held(meter);
        meter.mark_reference(held)?;
        let prior = match (&self.estimate, held) {
            (Some(estimate), Some(held)) => Some(estimate.step_model(held)),
            _ => None,
        };
        let mut source = InProcessTrials {
            step,
            meter,
            steps: self.settings.steps_per_trial,
        };
        TrialRunner::new(&mut source, observer, None)
            .with_prior(prior)
            .run(batch_size)
            .map_err(|e| Error::trial(batch_size, e))
    }

    /// Runs the search with trials from `source` (in this process or in child processes)
    /// against the capacity in `device`, and reports the result. A search stopped by the
    /// stop flag returns its partial report with `interrupted: true`.
    pub fn search(
        &self,
        source: &mut dyn TrialSource,
        device: DeviceInfo,
        observer: &mut dyn Observer,
    ) -> Result<Report, Error> {
        let bounds = self.settings.validate()?;
        let settings = SearchSettings {
            max_batch: Some(bounds.max_batch),
            ..self.settings.clone()
        };
        let capacity = device.capacity_bytes;
        let runner = TrialRunner::new(source, observer, self.stop.clone());
        // Aiming past what the machine lets a trial take would only be refused.
        let aim = runner.machine_limit().map_or(capacity, |l| l.min(capacity));
        let seeding = self.seeding(&settings, &device, aim);
        let prior = match (&seeding, &self.estimate, device.baseline_bytes) {
            (Some(seeding), _, _) => Some(seeding.model.clone()),
            (None, Some(estimate), Some(held)) => Some(estimate.step_model(held)),
            _ => None,
        };
        let mut runner = runner.with_prior(prior);
        if let Some(seeding) = &seeding {
            // The first trial's pages, touched before it is timed.
            runner.prepare(seeding.model.peak_at(seeding.seed));
        }
        let found = match (settings.strategy, &seeding) {
            (Strategy::Doubling, _) => search::doubling(bounds, |b| runner.run(b)),
            (Strategy::Seeded, Some(seeding)) => {
                search::seeded(bounds, aim, &seeding.model, |b, purpose| {
                    runner.run_for(b, purpose)
                })
            }
            (Strategy::Seeded | Strategy::Guided, _) => {
                search::guided(bounds, aim, |b| runner.run(b))
            }
        };
        let model = self.model_info();
        let partial = |runner: &TrialRunner, trials: Vec<Trial>| {
            runner.interrupted().then(|| {
                let sizes = finish::partial_sizes(&trials, capacity, settings.margin);
                finish::report(
                    model.clone(),
                    device.clone(),
                    settings.clone(),
                    trials,
                    sizes,
                    true,
                )
            })
        };
        let (mut trials, max) = match found {
            Ok(found) => (found.trials, found.max_batch_size),
            Err(SearchError::Probe {
                batch_size,
                error,
                trials,
            }) => return partial(&runner, trials).ok_or_else(|| Error::trial(batch_size, error)),
            Err(SearchError::NothingFits { trials }) => {
                // A size refused as predicted past the machine needs what was predicted.
                let needs = trials.last().and_then(|t| {
                    t.peak_bytes
                        .or_else(|| t.predicted.then(|| runner.predicted_peak(t.batch_size))?)
                });
                return Err(Error::NothingFits {
                    needs,
                    capacity,
                    hint: "give it more memory, or make one sample lighter (shorter inputs, \
                           a lower-precision dtype, an optimizer with less state)"
                        .into(),
                    at_warm_up: false,
                });
            }
            Err(SearchError::InvalidBounds(b)) => {
                return Err(Error::setting(
                    crate::error::Setting::Start,
                    b.start,
                    format!("no batch size between $Start and $MaxBatch: {b:?}"),
                ))
            }
        };
        let seeding = seeding.map(|seeding| Seeding {
            first_trial: trials
                .first()
                .and_then(|t| seeding.model.calibrated_by(t))
                .map(|(_, calibration)| calibration),
            ..seeding
        });
        let searched = Searched {
            max,
            max_is_cap: max == bounds.max_batch,
            seeding,
        };
        let finished: Result<Finished, Error> =
            finish::finishing_trials(&mut runner, &settings, capacity, searched, &mut trials);
        match finished {
            Ok(finished) => Ok(finish::report(
                model, device, settings, trials, finished, false,
            )),
            Err(error) => partial(&runner, trials).ok_or(error),
        }
    }
}

impl Finder {
    /// The seeding of a seeded search against `aim` on `device`: the estimate, given what
    /// the process was measured to hold there. `None` without an estimate, without that
    /// measurement (the trials of `--isolate` run in children), or for another strategy.
    fn seeding(&self, settings: &SearchSettings, device: &DeviceInfo, aim: u64) -> Option<Seeding> {
        if settings.strategy != Strategy::Seeded {
            return None;
        }
        let model = self.estimate.as_ref()?.step_model(device.baseline_bytes?);
        let seed = model
            .max_for(aim)
            .unwrap_or(settings.max_batch_or_default())
            .clamp(1, settings.max_batch_or_default());
        Some(Seeding {
            model,
            seed,
            first_trial: None,
            recommended_corrections: None,
        })
    }
}

/// Calls a library caller's `on_trial` callback after each trial.
pub(super) struct CallbackObserver(Option<Arc<TrialCallback>>);

impl Observer for CallbackObserver {
    fn trial_finished(&mut self, trial: &Trial) {
        if let Some(callback) = &self.0 {
            callback(trial);
        }
    }
}

impl Cacheable for Report {
    fn complete(&self) -> bool {
        !self.interrupted
    }

    fn answered_from_cache(self, settings: &SearchSettings) -> Self {
        finish::rescheduled(self, settings)
    }
}

impl Cacheable for Trial {}
