//! What each command does: builds the device, meter and workload the flags describe,
//! calls the library, and prints the answer. The only place that prints results.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use anyhow::Result;
use maxbatch::cache::{Cache, CacheKey, CacheUse, Cacheable};
use maxbatch::device::{self, DeviceKind, DeviceRequest, ResolvedDevice};
use maxbatch::format::{bytes, parameters};
use maxbatch::isolate::ChildProcessTrials;
use maxbatch::models::{self, ModelSource, ModelSpec, PRESETS};
use maxbatch::report::{json, text, DeviceInfo};
use maxbatch::{
    Error, Finder, MemoryMeter, OptimizerKind, Outcome, SearchSettings, Silent, Trial, Workload,
};

use crate::cli::{CheckArgs, Cli, Command, FindArgs, ModelsArgs, PoolSelfTestArgs, TargetArgs};
use crate::progress::Progress;

/// Runs the command line; the exit code of success and of "does not fit".
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Models(args)) => list_models(&args),
        Some(Command::Check(args)) => check(&args),
        Some(Command::Trial(args)) => trial(&args),
        Some(Command::PoolSelfTest(args)) => pool_self_test(&args),
        None => find(&cli.find),
    }
}

fn list_models(args: &ModelsArgs) -> Result<ExitCode> {
    let defaults = models::ModelOptions::default();
    if let Some(path) = &args.config {
        let info = ModelSpec::load(&ModelSource::Config(path.clone()))?.info(&defaults)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&info)?);
        } else {
            println!(
                "{}: {} parameters ({}), {}",
                info.name,
                parameters(info.parameters),
                info.parameters,
                info.summary
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let infos = PRESETS
        .iter()
        .map(|(name, _)| ModelSpec::preset(name)?.info(&defaults))
        .collect::<Result<Vec<_>, Error>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
    } else {
        println!(
            "{:<20}{:>12}  {:<16}  architecture",
            "model", "parameters", "input"
        );
        for m in &infos {
            println!(
                "{:<20}{:>12}  {:<16}  {}",
                m.name,
                parameters(m.parameters),
                m.input,
                m.summary
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn find(args: &FindArgs) -> Result<ExitCode> {
    let settings = args.settings();
    settings.validate()?; // bad settings fail before the model is built
    if let Some(path) = &args.plot {
        writable(path)?; // and an unwritable output before the first trial
    }
    let stop = stop_on_signals();
    let mut reports = Vec::new();
    // Several devices are only searched when each opened as asked (no CPU fallback), so the
    // i-th report is the i-th request's.
    let requests = args.target.device.0.clone();
    for device in open_devices(&args.target)? {
        let mut setup = Setup::new(&args.target, device)?;
        let settings = setup.settings_for_device(&settings)?;
        let finder = setup
            .finder(args.target.cache())
            .settings(settings.clone())
            .stop_when(stop.flag.clone());
        let key = finder.cached("search", setup.meter.as_ref());
        let report = if args.isolate {
            let device = DeviceInfo::of(&setup.device, setup.meter.as_ref());
            let mut children = ChildProcessTrials::new(
                std::env::current_exe()?,
                args.target
                    .child_args(&setup.device.name, setup.meter.capacity().bytes),
                setup.meter.hard_limit(),
            );
            // The parent lets go of the device before the children run: a CUDA context of
            // its own would hold memory that each child's measurement then lacks.
            drop(finder);
            setup.release_device();
            let finder = setup
                .finder(args.target.cache())
                .settings(settings)
                .stop_when(stop.flag.clone());
            cached(&finder, key, || {
                let mut progress = Progress::new(args.target.json);
                Ok(finder.search(&mut children, device, &mut progress)?)
            })?
        } else {
            cached(&finder, key, || {
                let mut progress = Progress::new(args.target.json);
                let (mut workload, built) = setup.build()?;
                Ok(finder.clone().model_holds(built).find_with(
                    &mut workload,
                    setup.meter.as_mut(),
                    &mut progress,
                )?)
            })?
        };
        let interrupted = report.interrupted;
        reports.push(report);
        if interrupted {
            break;
        }
    }
    if reports.len() > 1 && !reports.iter().any(|r| r.interrupted) {
        verify_on_every_device(args, &requests, &mut reports)?;
    }
    if let Some(partial) = reports.iter().find(|r| r.interrupted) {
        return interrupted(
            partial,
            args.target.json,
            stop.exit_code.load(Ordering::SeqCst),
        );
    }
    match reports.as_slice() {
        [one] if args.target.json => println!("{}", json::render(one)),
        [one] => print!("\n{}", text::render(one)),
        several if args.target.json => println!("{}", json::render_devices(several)),
        several => print!("\n{}", text::render_devices(several)),
    }
    // After the report is printed: a failure here loses nothing measured.
    if let Some(path) = &args.plot {
        for (i, report) in reports.iter().enumerate() {
            let file = plot_file(path, i, reports.len());
            let svg = maxbatch::report::plot::render(report).map_err(anyhow::Error::msg)?;
            std::fs::write(&file, svg)
                .map_err(|e| anyhow::anyhow!("cannot write the plot to {}: {e}", file.display()))?;
            eprintln!("plot written to {}", file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs, on each device, the data-parallel sizes (the minimum over the devices) that its
/// own search skipped, so that every size reported for the replicas ran on every device.
fn verify_on_every_device(
    args: &FindArgs,
    requests: &[DeviceRequest],
    reports: &mut [maxbatch::Report],
) -> Result<()> {
    for (i, size) in maxbatch::report::unverified_on_devices(reports) {
        let device = device::resolve(requests[i], false)?;
        let mut setup = Setup::new(&args.target, device)?;
        let (mut workload, built) = setup.build()?;
        let trial = setup
            .finder(None)
            .settings(args.target.check_settings())
            .model_holds(built)
            .check_with(
                &mut workload,
                setup.meter.as_mut(),
                size,
                &mut Progress::new(args.target.json),
            )?;
        if trial.outcome != Outcome::Fits {
            tracing::warn!(
                "batch size {size} fit on another device but not on {}; the data-parallel \
                 sizes are not safe for every replica",
                setup.device.name
            );
        }
        reports[i].trials.push(trial);
    }
    Ok(())
}

/// The SVG file of report `i` of `count`: the path itself for one report, `NAME.i.svg` for
/// several.
fn plot_file(path: &std::path::Path, i: usize, count: usize) -> std::path::PathBuf {
    if count == 1 {
        path.to_path_buf()
    } else {
        path.with_extension(format!("{i}.svg"))
    }
}

/// Fails when `path` cannot be written, leaving no file behind that was not there.
fn writable(path: &std::path::Path) -> Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write the plot to {}: {e}; choose another --plot path",
                path.display()
            )
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// One trial for an `--isolate` parent: the trial as JSON on stdout, exit 0 whatever its
/// outcome (2 on an error, as everywhere).
fn trial(args: &CheckArgs) -> Result<ExitCode> {
    #[cfg(feature = "test-hooks")]
    if args
        .target
        .debug_abort_from
        .is_some_and(|from| args.batch_size >= from)
    {
        // What a real allocation failure does: print "memory allocation of N bytes failed"
        // and abort.
        std::alloc::handle_alloc_error(std::alloc::Layout::new::<[u8; 4096]>());
    }
    let settings = args.target.check_settings();
    settings.validate_check(args.batch_size)?;
    let device = device::resolve(args.target.device.0[0], false)?;
    let mut setup = Setup::new(&args.target, device)?;
    let (mut workload, built) = setup.build()?;
    let trial = setup
        .finder(None)
        .settings(settings)
        .model_holds(built)
        .check_with(
            &mut workload,
            setup.meter.as_mut(),
            args.batch_size,
            &mut Silent,
        )?;
    println!("{}", serde_json::to_string(&trial)?);
    Ok(ExitCode::SUCCESS)
}

/// How a stop request reached the process: the first SIGINT (Ctrl-C) or SIGTERM (how
/// batch schedulers stop a job) sets `flag`, and the search stops after the running trial;
/// `exit_code` is then 130 or 143, as a shell reports those signals. A second one quits at
/// once.
struct StopSignals {
    flag: Arc<AtomicBool>,
    exit_code: Arc<AtomicU8>,
}

fn stop_on_signals() -> StopSignals {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = StopSignals {
        flag: Arc::new(AtomicBool::new(false)),
        exit_code: Arc::new(AtomicU8::new(130)),
    };
    let (flag, exit_code) = (stop.flag.clone(), stop.exit_code.clone());
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for signal in signals.forever() {
                    let code = if signal == SIGTERM { 143 } else { 130 };
                    if flag.swap(true, Ordering::SeqCst) {
                        std::process::exit(code.into());
                    }
                    exit_code.store(code, Ordering::SeqCst);
                    eprintln!(
                        "stopping after the running trial (send {} again to quit now)",
                        if signal == SIGTERM {
                            "SIGTERM"
                        } else {
                            "Ctrl-C"
                        }
                    );
                }
            });
        }
        Err(error) => tracing::warn!("Ctrl-C and SIGTERM will quit without a report: {error}"),
    }
    stop
}

/// Prints what an interrupted search measured and exits `code` (130 after SIGINT, 143 after
/// SIGTERM), as a shell reports the signal.
fn interrupted(partial: &maxbatch::Report, json: bool, code: u8) -> Result<ExitCode> {
    if json {
        println!("{}", json::render(partial));
    } else {
        print!("\n{}", text::render(partial));
    }
    eprintln!(
        "interrupted after {} trials; the largest size verified to fit is {}",
        partial.trials.len(),
        partial.max_batch_size
    );
    Ok(ExitCode::from(code))
}

fn check(args: &CheckArgs) -> Result<ExitCode> {
    let settings = args.target.check_settings();
    settings.validate_check(args.batch_size)?; // bad settings fail before the model is built
    let mut all_fit = true;
    let mut trials: Vec<(String, Trial)> = Vec::new();
    for device in open_devices(&args.target)? {
        let mut setup = Setup::new(&args.target, device)?;
        let finder = setup.finder(args.target.cache()).settings(settings.clone());
        let kind = format!("check {}", args.batch_size);
        let key = finder.cached(&kind, setup.meter.as_ref());
        let trial: Trial = cached(&finder, key, || {
            let (mut workload, built) = setup.build()?;
            let mut progress = Progress::new(args.target.json);
            Ok(finder.clone().model_holds(built).check_with(
                &mut workload,
                setup.meter.as_mut(),
                args.batch_size,
                &mut progress,
            )?)
        })?;
        let fits = trial.outcome == Outcome::Fits;
        all_fit &= fits;
        if !args.target.json {
            let capacity = setup.meter.capacity();
            let kind = if capacity.is_budget {
                "budget"
            } else {
                "capacity"
            };
            let peak = match trial.peak_bytes {
                Some(p) if fits => format!(
                    "peak {}, {:.0}% of the {kind} {}",
                    bytes(p),
                    100.0 * p as f64 / capacity.bytes as f64,
                    bytes(capacity.bytes)
                ),
                Some(p) => format!(
                    "peak ≥ {} against the {kind} {}",
                    bytes(p),
                    bytes(capacity.bytes)
                ),
                None => format!("{kind} {}", bytes(capacity.bytes)),
            };
            println!(
                "batch size {} {} on {}: {peak}",
                args.batch_size,
                if fits { "fits" } else { "does not fit" },
                setup.device.name,
            );
        }
        trials.push((setup.device.name.clone(), trial));
    }
    if args.target.json {
        match trials.as_slice() {
            [(_, one)] => println!("{}", serde_json::to_string_pretty(one)?),
            several => {
                let by_device: serde_json::Map<String, serde_json::Value> = several
                    .iter()
                    .map(|(name, t)| Ok((name.clone(), serde_json::to_value(t)?)))
                    .collect::<Result<_, serde_json::Error>>()?;
                println!("{}", serde_json::to_string_pretty(&by_device)?);
            }
        }
    }
    Ok(if all_fit {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Opens the devices of `--device`. When a CUDA device cannot be used and falling back is
/// allowed, the whole run moves to the CPU once, with one warning.
fn open_devices(target: &TargetArgs) -> Result<Vec<ResolvedDevice>> {
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
struct Setup {
    spec: ModelSpec,
    options: models::ModelOptions,
    model: models::ModelInfo,
    device: ResolvedDevice,
    meter: Box<dyn MemoryMeter>,
    optimizer: OptimizerKind,
}

impl Setup {
    fn new(target: &TargetArgs, device: ResolvedDevice) -> Result<Self> {
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
        })
    }

    /// `settings` for this device: on CUDA the largest batch size is capped where a tensor
    /// would pass the elements candle's CUDA kernels can index.
    fn settings_for_device(&self, settings: &SearchSettings) -> Result<SearchSettings> {
        if self.device.kind != DeviceKind::Cuda {
            return Ok(settings.clone());
        }
        let capped = self
            .spec
            .cuda_batch_cap(&self.options)?
            .and_then(|cap| settings.capped_at(cap));
        Ok(match capped {
            Some(capped) => {
                tracing::warn!(
                    "{}: batch sizes above {} make a tensor of more than 2^32 elements, which \
                     candle's CUDA kernels cannot index; the search stops there",
                    self.device.name,
                    capped.max_batch_or_default()
                );
                capped
            }
            None => settings.clone(),
        })
    }

    /// Gives up the device (its CUDA context and memory pool) after its capacity was read:
    /// the meter keeps only the figures, and the model cannot be built here any more.
    fn release_device(&mut self) {
        self.meter = Box::new(ReadMeter::of(self.meter.as_ref()));
        self.device.device = candle_core::Device::Cpu;
    }

    /// A finder on this device for this model, caching in `cache` (none: no cache) under
    /// the model's full shape.
    fn finder(&self, cache: Option<(Cache, CacheUse)>) -> Finder {
        let finder = Finder::on_resolved(self.device.clone()).model(self.model.clone());
        match cache {
            Some((cache, mode)) => {
                finder.cache_in(cache, format!("{:?}", self.spec.architecture), mode)
            }
            None => finder,
        }
    }

    /// Builds the model with random weights, after checking that its weights and
    /// optimizer state fit: building ones that cannot would abort the process on the CPU.
    /// Returns the workload and the bytes building it added (the weights and the optimizer
    /// state, as the meter counts them).
    fn build(&mut self) -> Result<(Workload, u64)> {
        let weight_bytes = self.model.weight_bytes().unwrap_or(0);
        let needs = weight_bytes * (1 + self.optimizer.state_copies());
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

/// The GPU acceptance script's pool self-test (see `maxbatch::memory::cuda::pool_self_test`).
fn pool_self_test(args: &PoolSelfTestArgs) -> Result<ExitCode> {
    let device = device::resolve(args.device.0[0], false)?;
    pool_self_test_on(&device.device)
}

#[cfg(feature = "cuda")]
fn pool_self_test_on(device: &candle_core::Device) -> Result<ExitCode> {
    let test = maxbatch::memory::cuda::pool_self_test(device)?;
    println!("{}", serde_json::to_string(&test)?);
    Ok(if test.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(not(feature = "cuda"))]
fn pool_self_test_on(_device: &candle_core::Device) -> Result<ExitCode> {
    anyhow::bail!("the pool self-test needs a build with `--features cuda` and a GPU")
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
fn cached<T: Cacheable>(
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
