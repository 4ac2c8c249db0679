//! The front door: [`Finder`] holds the device, the [`SearchSettings`] and what the report
//! says about the model, runs the search with real trials and returns a [`Report`].
//!
//! ```text
//! Finder::on(&device).settings…          the device cannot be forgotten
//!   .find(step)                           meter for the device, answer from the cache or:
//!   .find_with(step, meter, observer)     warm-up, then
//!   .search(trial source, device, observer)
//!       TrialRunner ─► search::seeded | guided | doubling ─► max
//!       finish::finishing_trials          power of two, recommended, micro-batch
//!       finish::report                    schedule, memory model ─► Report
//! ```
//! A search stopped by the stop flag (Ctrl-C) is a result: a [`Report`] with
//! `interrupted: true` and the sizes verified so far.

mod run;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_nn::VarMap;

use crate::cache::{Cache, CacheUse};
use crate::device::ResolvedDevice;
use crate::error::Error;
use crate::estimate::Estimate;
use crate::models::ModelInfo;
use crate::models::StepMode;
use crate::report::Report;
use crate::search::Strategy;
use crate::settings::{AccumulationGoal, SearchSettings};
use crate::trial::Trial;
use crate::workload::{OptimizerKind, TrainStep};

/// A search for the largest batch size on one device, built by value:
/// `Finder::on(&device)`, then setters, then [`find`](Self::find) or
/// [`check`](Self::check). Each setter states its default.
///
/// There is no finder without a device:
/// ```compile_fail
/// let finder = maxbatch::Finder::new();
/// ```
#[derive(Clone)]
pub struct Finder {
    device: ResolvedDevice,
    settings: SearchSettings,
    budget: Option<u64>,
    model: Option<ModelInfo>,
    cache: Option<(Cache, String, CacheUse)>,
    stop: Option<Arc<AtomicBool>>,
    model_holds: Option<u64>,
    varmap: Option<VarMap>,
    on_trial: Option<Arc<TrialCallback>>,
    estimate: Option<Estimate>,
}

/// What [`Finder::on_trial`] calls after each trial.
pub type TrialCallback = dyn Fn(&Trial) + Send + Sync;

impl std::fmt::Debug for Finder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finder")
            .field("device", &self.device.name)
            .field("settings", &self.settings)
            .field("budget", &self.budget)
            .field("model", &self.model)
            .field("cache", &self.cache.as_ref().map(|c| &c.1))
            .field("model_holds", &self.model_holds)
            .field("varmap", &self.varmap.as_ref().map(|v| v.all_vars().len()))
            .finish_non_exhaustive()
    }
}

impl Finder {
    /// A finder for trials on `device`: the CPU is measured by the counting allocator
    /// (which the program must install as its global allocator), a CUDA device by its
    /// memory pool.
    pub fn on(device: &candle_core::Device) -> Self {
        Self::on_resolved(ResolvedDevice::from_device(device))
    }

    /// A finder for a device the command line resolved (it may carry why the CPU stands in
    /// for a CUDA device that could not be used).
    pub fn on_resolved(device: ResolvedDevice) -> Self {
        Self {
            device,
            settings: SearchSettings::default(),
            budget: None,
            model: None,
            cache: None,
            stop: None,
            model_holds: None,
            varmap: None,
            on_trial: None,
            estimate: None,
        }
    }

    /// All the search's settings at once (default: [`SearchSettings::default`]).
    pub fn settings(mut self, settings: SearchSettings) -> Self {
        self.settings = settings;
        self
    }

    /// A memory budget in bytes (default: 80% of the CPU's available memory, or the CUDA
    /// device's free memory). On the CPU a budget is what keeps an oversized trial from
    /// aborting the process.
    pub fn budget(mut self, bytes: u64) -> Self {
        self.budget = Some(bytes);
        self
    }

    /// The step's estimate from shapes (default: none). With one, the guided search is
    /// seeded: it starts where the estimate meets the capacity (after what the process was
    /// measured to hold), the trials calibrate it, and the recommended size is chosen from
    /// it; the report keeps it (`seeding`) for plans. Without one it starts at
    /// [`start`](Self::start). The answer is exact either way.
    pub fn estimate(mut self, estimate: Estimate) -> Self {
        self.estimate = Some(estimate);
        self
    }

    /// What the step is (default: [`StepMode::Train`]): give `StepMode::EVAL` for an
    /// evaluation step (see [`evaluation`](crate::evaluation)) so that its report and cache
    /// entry say so. The search is the same for every mode.
    pub fn mode(mut self, mode: StepMode) -> Self {
        self.settings.mode = mode;
        self
    }

    /// What the report says about the model (default: from the VarMap when one is given,
    /// else "your model", parameters unknown).
    pub fn model(mut self, info: ModelInfo) -> Self {
        self.model = Some(info);
        self
    }

    /// Caches answers under `key` (which names your model and its input shape: change it
    /// when they change) in the user's cache folder or `$MAXBATCH_CACHE`, together with the
    /// model's description, the device, its memory, the settings and maxbatch's version, so
    /// that asking again costs nothing (default: no cache).
    pub fn cache_key(self, key: impl Into<String>) -> Self {
        match Cache::default_location() {
            Some(cache) => self.cache_in(cache, key, CacheUse::Answer),
            None => self,
        }
    }

    /// Caches answers under `key` in `cache` (see [`cache_key`](Self::cache_key)), used
    /// as `mode` says: answering from it, or measuring again and replacing the entry.
    pub fn cache_in(mut self, cache: Cache, key: impl Into<String>, mode: CacheUse) -> Self {
        self.cache = Some((cache, key.into(), mode));
        self
    }

    /// The first batch size tried (default 1).
    pub fn start(mut self, start: usize) -> Self {
        self.settings.start = start;
        self
    }

    /// The largest batch size tried; it is tried before it is returned (default: the
    /// dataset size if given, else 65,536).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.settings.max_batch = Some(max_batch);
        self
    }

    /// Full training steps per trial (default 2).
    pub fn steps_per_trial(mut self, steps: usize) -> Self {
        self.settings.steps_per_trial = steps;
        self
    }

    /// Consecutive steps of a verification run at the recommended size after the search
    /// (default 0: none); the report's `verification` says whether every step stayed within
    /// the capacity.
    pub fn verify_steps(mut self, steps: usize) -> Self {
        self.settings.verify_steps = steps;
        self
    }

    /// The fraction of the capacity the recommended size leaves free (default 0.05).
    pub fn margin(mut self, margin: f64) -> Self {
        self.settings.margin = margin;
        self
    }

    /// The number of training samples, for the schedule (default: none, no schedule).
    pub fn dataset_size(mut self, samples: u64) -> Self {
        self.settings.dataset_size = Some(samples);
        self
    }

    /// Passes over the dataset, for the schedule (default 1).
    pub fn epochs(mut self, epochs: u64) -> Self {
        self.settings.epochs = epochs;
        self
    }

    /// Whether each epoch's last partial batch is dropped (default: kept).
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.settings.drop_last = drop_last;
        self
    }

    /// The optimizer named in the report, for built-in workloads (default: none).
    pub fn optimizer(mut self, optimizer: OptimizerKind) -> Self {
        self.settings.optimizer = Some(optimizer);
        self
    }

    /// How sizes are chosen (default: guided by the measured peaks).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.settings.strategy = strategy;
        self
    }

    /// Plans gradient accumulation to reach a global batch of `target_batch` on
    /// `world_size` data-parallel replicas, with micro-batches of `micro_batch` (default:
    /// the largest power of two ≤ the recommended size; it is run if the search did not).
    pub fn accumulate(
        mut self,
        target_batch: u64,
        world_size: u64,
        micro_batch: Option<usize>,
    ) -> Self {
        self.settings.accumulation = Some(AccumulationGoal {
            target_batch,
            world_size,
            micro_batch,
        });
        self
    }

    /// A flag that, once set (by a Ctrl-C handler, say), stops the search after the trial
    /// that is running; the report then has `interrupted: true` and the sizes verified so
    /// far.
    pub fn stop_when(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// The bytes the model and its optimizer hold (default: everything the process holds
    /// when the search starts). CPU trials are then measured as these bytes plus what the
    /// trial adds, so that what else the process holds (your dataset, the search's own
    /// bookkeeping) is not counted against the budget, and a trial measures the same in any
    /// process (see docs/design.md).
    pub fn model_holds(mut self, bytes: u64) -> Self {
        self.model_holds = Some(bytes);
        self
    }

    /// The model is `varmap`'s variables (default: none known). The report describes it
    /// (parameter count, dtype; the weights, gradients and optimizer state when
    /// [`optimizer`](Self::optimizer) names the optimizer), CPU trials count its weights and
    /// optimizer state as held (AdamW's two moments unless `optimizer` says otherwise; see
    /// [`model_holds`](Self::model_holds)) and nothing else the program holds, and
    /// [`find`](Self::find) and [`check`](Self::check) leave its variables as they found
    /// them: they are copied to host memory before the trials (which train them) and
    /// restored after. The optimizer's own state lives in your optimizer and is not
    /// restored: make a new optimizer after the search.
    pub fn varmap(mut self, varmap: &VarMap) -> Self {
        self.varmap = Some(varmap.clone());
        self
    }

    /// Calls `callback` after each trial (and each size refused without running), for your
    /// own logger (default: nothing).
    pub fn on_trial(mut self, callback: impl Fn(&Trial) + Send + Sync + 'static) -> Self {
        self.on_trial = Some(Arc::new(callback));
        self
    }

    /// Prints a line per trial on stderr, as the command line does (default: silent).
    pub fn progress_to_stderr(self) -> Self {
        let count = std::sync::atomic::AtomicUsize::new(0);
        self.on_trial(move |trial| {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            eprintln!("trial {n:>2}: {}", crate::report::text::trial_line(trial));
        })
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
    /// static ALLOCATOR: maxbatch::CountingAllocator = maxbatch::CountingAllocator::new();
    ///
    /// # fn train_step(b: usize) -> candle_core::Result<()> { Ok(()) }
    /// let report = Finder::on(&Device::Cpu)
    ///     .budget(2 << 30)
    ///     .dataset_size(60_000)
    ///     .find(&mut |b| train_step(b))?;
    /// println!("train at {:?}", report.sizes.recommended);
    /// # Ok::<(), maxbatch::Error>(())
    /// ```
    pub fn find<S: TrainStep>(&self, step: &mut S) -> Result<Report, Error> {
        self.settings.validate()?;
        crate::settings::check_budget(self.budget)?;
        let mut meter = crate::memory::meter_for(&self.device.device, self.budget)?;
        let cached = self.cached("search", meter.as_ref());
        self.answer_or_run(cached, || {
            self.restoring(|| self.find_with(step, meter.as_mut(), &mut self.observer()))
        })
        .map(|(report, _)| report)
    }

    /// Runs one trial of `step` at `batch_size` on the finder's device: the pre-flight
    /// check. The trial's outcome says whether it fits.
    pub fn check<S: TrainStep>(&self, step: &mut S, batch_size: usize) -> Result<Trial, Error> {
        self.settings.validate_check(batch_size)?;
        crate::settings::check_budget(self.budget)?;
        let mut meter = crate::memory::meter_for(&self.device.device, self.budget)?;
        let cached = self.cached(&format!("check {batch_size}"), meter.as_ref());
        self.answer_or_run(cached, || {
            self.restoring(|| {
                self.check_with(step, meter.as_mut(), batch_size, &mut self.observer())
            })
        })
        .map(|(trial, _)| trial)
    }
}
