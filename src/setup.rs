//! What the flags ask for, before anything is measured: the devices, the model's shape, the
//! meter and a finder for them; building the model; the result cache's answer.

use anyhow::Result;
use maxbatch::cache::{Cache, CacheKey, CacheUse, Cacheable};
use maxbatch::device::{self, DeviceKind, DeviceRequest, ResolvedDevice};
use maxbatch::models::{self, ModelSpec};
use maxbatch::{Error, Finder, MemoryMeter, OptimizerKind, SearchSettings, Workload};

use crate::cli::TargetArgs;

/// Opens the devices of `--device`. When a CUDA device cannot be used and falling back is
/// allowed, the whole run moves to the CPU once, with one warning.
pub fn open_devices(target: &TargetArgs) -> Result<Vec<ResolvedDevice>> {
    let requests = &target.device.0;
    let mut devices = Vec::new();
    for &request in requests {
        let device = device::resolve(request, !target.no_fallback)?;
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

/// The model, device and meter the flags ask for, before the model is built.
pub struct Setup {
    spec: ModelSpec,
    options: models::ModelOptions,
    model: models::ModelInfo,
    /// The device.
    pub device: ResolvedDevice,
    /// Its meter.
    pub meter: Box<dyn MemoryMeter>,
    optimizer: OptimizerKind,
    /// `--steps-per-trial`, when given.
    steps_per_trial: Option<usize>,
    /// The GPU check's `--ignore-element-cap`.
    ignore_element_cap: bool,
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

impl Setup {
    pub fn new(target: &TargetArgs, device: ResolvedDevice) -> Result<Self> {
        if target.sweep_lengths().is_some() {
            anyhow::bail!(
                "a list of --seq-len lengths is a sweep, which only the search runs; give one \
                 length here"
            );
        }
        let spec = ModelSpec::load(&target.model_source())?;
        let options = target.model_options();
        let model = spec.info(&options)?;
        let meter = maxbatch::memory::meter_for(&device.device, target.memory)?;
        Ok(Self {
            spec,
            options,
            model,
            device,
            meter,
            optimizer: target.optimizer,
            steps_per_trial: target.steps_per_trial,
            ignore_element_cap: target.ignore_element_cap,
        })
    }

    /// `settings` for this device: the steps per trial (`--steps-per-trial`, else the
    /// device's default), and on CUDA the largest batch size capped where a tensor would
    /// pass the elements candle's CUDA kernels can index.
    pub fn settings_for_device(&self, settings: &SearchSettings) -> Result<SearchSettings> {
        let settings = &SearchSettings {
            steps_per_trial: self
                .steps_per_trial
                .unwrap_or_else(|| default_steps_per_trial(self.device.kind)),
            ..settings.clone()
        };
        if self.device.kind != DeviceKind::Cuda || self.ignore_element_cap {
            return Ok(settings.clone());
        }
        let Some(cap) = self.spec.cuda_batch_cap(&self.options)? else {
            return Ok(settings.clone());
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

    /// `error`, with a hint that names only the flags that apply to this model when it is
    /// that batch size 1 does not fit.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        match error.downcast::<Error>() {
            Ok(Error::NothingFits {
                needs,
                capacity,
                at_warm_up: false,
                ..
            }) => Error::NothingFits {
                needs,
                capacity,
                hint: self.lighter_step(),
                at_warm_up: false,
            }
            .into(),
            Ok(other) => other.into(),
            Err(error) => error,
        }
    }

    /// The flags that would make this model's step need less memory, in words.
    fn lighter_step(&self) -> String {
        use models::Architecture;
        let mut ways = vec!["raise --memory".to_string()];
        let transformer = matches!(
            self.spec.architecture,
            Architecture::Gpt(_) | Architecture::Llama(..)
        );
        let resnet = matches!(self.spec.architecture, Architecture::ResNet(_));
        if transformer {
            ways.push("shorten --seq-len".into());
        }
        if resnet {
            ways.push("use a smaller --image-size".into());
        }
        if self.optimizer == OptimizerKind::AdamW {
            ways.push("train with --optimizer sgd".into());
        }
        // The CPU cannot train convolutions in bf16.
        let half = self.options.dtype == candle_core::DType::F32 && self.options.amp.is_none();
        if half && !(resnet && self.device.kind == DeviceKind::Cpu) {
            ways.push("--dtype bf16".into());
        }
        if transformer && self.options.lora.is_none() {
            ways.push("fine-tune with --lora-rank 8".into());
        }
        let last = ways.pop().unwrap_or_default();
        let ways = if ways.is_empty() {
            last
        } else {
            format!("{}, or {last}", ways.join(", "))
        };
        format!("{ways} (--what-if measures each)")
    }

    /// Gives up the device (its CUDA context and memory pool) after its capacity was read:
    /// the meter keeps only the figures, and the model cannot be built here any more.
    pub fn release_device(&mut self) {
        self.meter = Box::new(ReadMeter::of(self.meter.as_ref()));
        self.device.device = candle_core::Device::Cpu;
    }

    /// A finder on this device for this model, caching in `cache` (none: no cache) under
    /// the model's full shape.
    pub fn finder(&self, cache: Option<(Cache, CacheUse)>) -> Finder {
        let finder = Finder::on_resolved(self.device.clone()).model(self.model.clone());
        match cache {
            Some((cache, mode)) => {
                // The options (dtype, mixed precision, adapters) change the trials as much
                // as the shape does.
                let key = format!("{:?} {:?}", self.spec.architecture, self.options);
                finder.cache_in(cache, key, mode)
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
        let weight_bytes = self.model.weight_bytes().unwrap_or(0);
        let trained_bytes = self.model.trained_bytes().unwrap_or(0);
        let needs = weight_bytes + trained_bytes * self.optimizer.state_copies();
        let capacity = self.meter.capacity().bytes;
        if needs > capacity {
            return Err(Error::ModelExceedsCapacity {
                held: needs,
                workspace: 0,
                capacity,
            }
            .into());
        }
        tracing::info!(model = %self.model.name, device = %self.device.name, "building the model");
        let before = self.meter.current_bytes()?;
        let workload = Workload::new(
            &self.spec,
            &self.options,
            self.optimizer,
            &self.device.device,
        )?;
        let built = self.meter.current_bytes()?.saturating_sub(before);
        Ok((workload, built))
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
