//! One device's session: the device opened, its meter, a finder for the resolved model and
//! settings, building the model, and the result cache's answer.

use anyhow::Result;
use maxbatch::cache::{Cache, CacheKey, Cacheable};
use maxbatch::device::{self, DeviceKind, DeviceRequest, ResolvedDevice};
use maxbatch::estimate::Estimate;
use maxbatch::models::{ModelInfo, ModelOptions, StepMode};
use maxbatch::{Error, Finder, MemoryMeter, Outcome, SearchSettings, Silent, Workload};

use crate::resolve::{Model, Trials};

/// Opens the devices asked for. When a CUDA device cannot be used and falling back is
/// allowed, the whole run moves to the CPU once, with one warning.
pub fn open_devices(trials: &Trials) -> Result<Vec<ResolvedDevice>> {
    let mut devices = Vec::new();
    for &request in &trials.devices {
        let device = device::resolve(request, trials.allow_fallback)?;
        if let Some(reason) = &device.fallback {
            if request != DeviceRequest::Auto {
                tracing::warn!("--device {request}: {reason}; running on the CPU");
            } else {
                tracing::info!("--device auto: {reason}; running on the CPU");
            }
            return Ok(vec![device]);
        }
        devices.push(device);
    }
    Ok(devices)
}

/// Steps per trial of a built-in model when `--steps-per-trial` is not given: one on the
/// CPU, where the counting meter sees the second step peak exactly where the first did (the
/// optimizer's state exists before the first step; tests/family_trials.rs checks every
/// family), two on CUDA, where the pool and the libraries' workspaces may grow in the second
/// step (see docs/design.md).
pub fn default_steps_per_trial(kind: DeviceKind) -> usize {
    match kind {
        DeviceKind::Cpu => 1,
        DeviceKind::Cuda => 2,
    }
}

/// The model, device and meter of one search or check, before the model is built.
pub struct Session<'a> {
    trials: &'a Trials,
    model: &'a Model,
    info: ModelInfo,
    /// The device.
    pub device: ResolvedDevice,
    /// Its meter.
    pub meter: Box<dyn MemoryMeter>,
}

impl<'a> Session<'a> {
    /// A session of `trials` (with its `model`, which a sweep varies) on `device`.
    pub fn new(trials: &'a Trials, model: &'a Model, device: ResolvedDevice) -> Result<Self> {
        let meter = maxbatch::memory::meter_for(&device.device, trials.memory)?;
        Ok(Self {
            trials,
            model,
            info: model.info()?,
            device,
            meter,
        })
    }

    /// `settings` for this device: the steps per trial (`--steps-per-trial`, else the
    /// device's default), and on CUDA the element cap (the most samples whose tensors
    /// candle's CUDA kernels can loop over).
    pub fn settings_for_device(&self, settings: &SearchSettings) -> Result<SearchSettings> {
        let settings = SearchSettings {
            steps_per_trial: self
                .trials
                .steps_per_trial
                .unwrap_or_else(|| default_steps_per_trial(self.device.kind)),
            ..settings.clone()
        };
        if self.device.kind != DeviceKind::Cuda || self.trials.ignore_element_cap {
            return Ok(settings);
        }
        let Some(cap) = self.model.spec.cuda_batch_cap(&self.model.options)? else {
            return Ok(settings);
        };
        let capped = settings.with_element_cap(cap);
        if capped.capped_by_elements() {
            tracing::info!(
                "{}: batch sizes above {cap} make a tensor of more than 2^31 elements, which \
                 candle's CUDA kernels cannot loop over; the search stops there",
                self.device.name
            );
        }
        Ok(capped)
    }

    /// Gives up the device (its CUDA context and memory pool) after its capacity was read:
    /// the meter keeps only the figures, and the model cannot be built here any more.
    pub fn release_device(&mut self) {
        self.meter = Box::new(ReadMeter::of(self.meter.as_ref()));
        self.device.device = candle_core::Device::Cpu;
    }

    /// A finder on this device for this model that does not cache (a child's trial, a
    /// size another device's search chose), with the model's estimate from shapes where
    /// the estimate counts it (it seeds a search).
    pub fn uncached_finder(&self) -> Finder {
        let finder = Finder::on_resolved(self.device.clone()).model(self.info.clone());
        match Estimate::new(&self.model.spec, &self.model.options, self.trials.optimizer) {
            Ok(estimate) => finder.estimate(estimate),
            Err(why) => {
                tracing::info!(
                    "no estimate to seed the search: {}",
                    why.describe(&crate::explain::flag)
                );
                finder
            }
        }
    }

    /// A finder on this device for this model, caching as the trials say under the
    /// model's full shape.
    pub fn finder(&self) -> Finder {
        let finder = self.uncached_finder();
        match Cache::default_location() {
            // The options (dtype, mixed precision, adapters) change the trials as much as
            // the shape does.
            Some(cache) => {
                let key = format!(
                    "{:?} {:?}",
                    self.model.spec.architecture, self.model.options
                );
                finder.cache_in(cache, key, self.trials.cache)
            }
            None => finder,
        }
    }

    /// Builds the model and runs one trial of it at `batch_size` with `finder`'s settings:
    /// the pre-flight check, an `--isolate` child's trial, a data-parallel size a device
    /// skipped. The trial counts the bytes building the model added as held.
    pub fn check(
        &mut self,
        finder: &Finder,
        batch_size: usize,
        observer: &mut dyn maxbatch::Observer,
    ) -> Result<maxbatch::Trial> {
        let (mut workload, built) = self.build()?;
        Ok(finder.clone().model_holds(built).check_with(
            &mut workload,
            self.meter.as_mut(),
            batch_size,
            observer,
        )?)
    }

    /// Builds the model with random weights, after checking that its weights and
    /// optimizer state fit: building ones that cannot would abort the process on the CPU.
    /// Returns the workload and the bytes building it added (the weights and the optimizer
    /// state, as the meter counts them).
    pub fn build(&mut self) -> Result<(Workload, u64)> {
        // The weights, and the optimizer's state for the trained ones (all, or LoRA's
        // adapters), in the dtype the weights are kept in.
        let weight_bytes = self.info.weight_bytes().unwrap_or(0);
        let trained_bytes = self.info.trained_bytes().unwrap_or(0);
        let needs = weight_bytes + trained_bytes * self.trials.optimizer.state_copies();
        let capacity = self.meter.capacity().bytes;
        if needs > capacity {
            return Err(Error::ModelExceedsCapacity {
                held: needs,
                workspace: 0,
                capacity,
            }
            .into());
        }
        tracing::info!(model = %self.info.name, device = %self.device.name, "building the model");
        let before = self.meter.current_bytes()?;
        let beside = match self.model.options.mode {
            StepMode::Eval {
                beside_training: Some(b),
            } => Some(b),
            _ => None,
        };
        // Beside training: built as training, its training step run as a trial (measured
        // against the capacity: one that does not fit is an error, not a process past its
        // memory), then turned to evaluate with that state held.
        let options = ModelOptions {
            mode: if beside.is_some() {
                StepMode::Train
            } else {
                self.model.options.mode
            },
            ..self.model.options.clone()
        };
        let mut workload = Workload::new(
            &self.model.spec,
            &options,
            self.trials.optimizer,
            &self.device.device,
        )?;
        if let Some(train_batch) = beside {
            let built = self.meter.current_bytes()?.saturating_sub(before);
            let trial = Finder::on_resolved(self.device.clone())
                .model_holds(built)
                .check_with(&mut workload, self.meter.as_mut(), train_batch, &mut Silent)?;
            if trial.outcome != Outcome::Fits {
                anyhow::bail!(
                    "the training step at batch size {train_batch} does not fit ({}), so no \
                     evaluation can run beside it; give --beside-training a size that fits \
                     (or use --mode train+eval, which finds it)",
                    trial.detail.as_deref().unwrap_or("over the capacity")
                );
            }
            workload = workload.evaluating_beside_training(train_batch)?;
        }
        let built = self.meter.current_bytes()?.saturating_sub(before);
        Ok((workload, built))
    }

    /// `error`, with a hint that names only the flags that apply to this model when it is
    /// that batch size 1 does not fit.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        crate::explain::nothing_fits(error, self.model, self.trials.optimizer, self.device.kind)
    }
}

/// A device's figures, read before it was given up: what a search in child processes needs
/// of the parent's meter.
struct ReadMeter {
    capacity: maxbatch::memory::Capacity,
    total: Option<u64>,
    hard_limit: Option<u64>,
}

impl ReadMeter {
    fn of(meter: &dyn MemoryMeter) -> Self {
        Self {
            capacity: meter.capacity(),
            total: meter.total_bytes(),
            hard_limit: meter.hard_limit(),
        }
    }

    fn released<T>() -> candle_core::Result<T> {
        candle_core::bail!("the device was given up to the child processes")
    }
}

impl MemoryMeter for ReadMeter {
    fn capacity(&self) -> maxbatch::memory::Capacity {
        self.capacity
    }
    fn reset_peak(&mut self) -> candle_core::Result<()> {
        Self::released()
    }
    fn peak_bytes(&mut self) -> candle_core::Result<u64> {
        Self::released()
    }
    fn current_bytes(&mut self) -> candle_core::Result<u64> {
        Self::released()
    }
    fn hard_limit(&self) -> Option<u64> {
        self.hard_limit
    }
    fn total_bytes(&self) -> Option<u64> {
        self.total
    }
}

/// The answer for a cache key (from [`Finder::cached`]) from the cache, saying so on
/// stderr, or `run`'s, then stored.
pub fn cached<T: Cacheable>(
    finder: &Finder,
    cached: Option<(Cache, CacheKey)>,
    run: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let path = cached.as_ref().map(|(cache, key)| cache.path(key));
    let (value, hit) = finder.answer_or_run(cached, run)?;
    if let (true, Some(path)) = (hit, path) {
        eprintln!(
            "cached result ({}); --no-cache measures again",
            path.display()
        );
    }
    Ok(value)
}
