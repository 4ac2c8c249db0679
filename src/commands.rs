//! What each command does: builds the device, meter and workload the flags describe,
//! calls the library, and prints the answer. The only place that prints results.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use maxbatch::cache::{Cache, CacheKey, Cacheable};
use maxbatch::device::{self, DeviceRequest, ResolvedDevice};
use maxbatch::format::{bytes, parameters};
use maxbatch::isolate::ChildProcessTrials;
use maxbatch::models::{self, ModelSource, ModelSpec, PRESETS};
use maxbatch::report::{json, text, DeviceInfo};
use maxbatch::{Error, Finder, MemoryMeter, OptimizerKind, Outcome, Silent, Trial, Workload};

use crate::cli::{CheckArgs, Cli, Command, FindArgs, ModelsArgs, TargetArgs};
use crate::progress::Progress;

/// Runs the command line; the exit code of success and of "does not fit".
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Models(args)) => list_models(&args),
        Some(Command::Check(args)) => check(&args),
        Some(Command::Trial(args)) => trial(&args),
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
    let stop = stop_on_ctrl_c();
    let mut reports = Vec::new();
    for device in open_devices(&args.target)? {
        let mut setup = Setup::new(&args.target, device)?;
        let finder = setup
            .finder(args.target.cache())
            .settings(settings.clone())
            .stop_when(stop.clone());
        let key = finder.cached("search", setup.meter.as_ref());
        let report = cached(key, || {
            let mut progress = Progress::new(args.target.json);
            if args.isolate {
                let mut children = ChildProcessTrials::new(
                    std::env::current_exe()?,
                    args.target
                        .child_args(&setup.device.name, setup.meter.capacity().bytes),
                    setup.meter.hard_limit(),
                );
                let device = DeviceInfo::of(&setup.device, setup.meter.as_ref());
                return Ok(finder.search(&mut children, device, &mut progress)?);
            }
            let mut workload = setup.build()?;
            Ok(finder.find_with(&mut workload, setup.meter.as_mut(), &mut progress)?)
        })?;
        let interrupted = report.interrupted;
        reports.push(report);
        if interrupted {
            break;
        }
    }
    if let Some(partial) = reports.iter().find(|r| r.interrupted) {
        return interrupted(partial, args.target.json);
    }
    if let Some(path) = &args.plot {
        for (i, report) in reports.iter().enumerate() {
            let file = if reports.len() == 1 {
                path.clone()
            } else {
                path.with_extension(format!("{i}.svg"))
            };
            let svg = maxbatch::report::plot::render(report).map_err(anyhow::Error::msg)?;
            std::fs::write(&file, svg)
                .map_err(|e| anyhow::anyhow!("cannot write the plot to {}: {e}", file.display()))?;
            eprintln!("plot written to {}", file.display());
        }
    }
    match reports.as_slice() {
        [one] if args.target.json => println!("{}", json::render(one)),
        [one] => print!("\n{}", text::render(one)),
        several if args.target.json => println!("{}", json::render_devices(several)),
        several => print!("\n{}", text::render_devices(several)),
    }
    Ok(ExitCode::SUCCESS)
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
        std::process::abort();
    }
    let settings = args.target.check_settings();
    settings.validate_check(args.batch_size)?;
    let device = device::resolve(args.target.device.0[0], false)?;
    let mut setup = Setup::new(&args.target, device)?;
    let mut workload = setup.build()?;
    let trial = setup.finder(None).settings(settings).check_with(
        &mut workload,
        setup.meter.as_mut(),
        args.batch_size,
        &mut Silent,
    )?;
    println!("{}", serde_json::to_string(&trial)?);
    Ok(ExitCode::SUCCESS)
}

/// A flag set by the first Ctrl-C (the search then stops after the running trial); a
/// second Ctrl-C quits at once.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    let installed = ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("stopping after the running trial (Ctrl-C again to quit now)");
    });
    if let Err(error) = installed {
        tracing::warn!("Ctrl-C will quit without a report: {error}");
    }
    flag
}

/// Prints what an interrupted search measured and exits 130, as a shell does for SIGINT.
fn interrupted(partial: &maxbatch::Report, json: bool) -> Result<ExitCode> {
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
    Ok(ExitCode::from(130))
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
        let trial: Trial = cached(key, || {
            let mut workload = setup.build()?;
            let mut progress = Progress::new(args.target.json);
            Ok(finder.check_with(
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
            println!(
                "batch size {} {} on {}: {} of {}",
                args.batch_size,
                if fits { "fits" } else { "does not fit" },
                setup.device.name,
                if capacity.is_budget {
                    "budget"
                } else {
                    "capacity"
                },
                bytes(capacity.bytes)
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

    /// A finder on this device for this model, caching in `cache` (none: no cache) under
    /// the model's full shape.
    fn finder(&self, cache: Option<Cache>) -> Finder {
        let finder = Finder::on_resolved(self.device.clone()).model(self.model.clone());
        match cache {
            Some(cache) => finder.cache_in(cache, format!("{:?}", self.spec.architecture)),
            None => finder,
        }
    }

    /// Builds the model with random weights, after checking that its weights and
    /// optimizer state fit: building ones that cannot would abort the process on the CPU.
    fn build(&self) -> Result<Workload> {
        let weight_bytes = self.model.weight_bytes().unwrap_or(0);
        let needs = weight_bytes * (1 + self.optimizer.state_copies());
        let capacity = self.meter.capacity().bytes;
        if needs > capacity {
            return Err(Error::ModelExceedsCapacity {
                held: needs,
                capacity,
            }
            .into());
        }
        tracing::info!(model = %self.model.name, device = %self.device.name, "building the model");
        Ok(Workload::new(
            &self.spec,
            &self.options,
            self.optimizer,
            &self.device.device,
        )?)
    }
}

/// The answer for a cache key (from [`Finder::cached`]) from the cache, saying so on
/// stderr, or `run`'s, then stored.
fn cached<T: Cacheable>(
    cached: Option<(Cache, CacheKey)>,
    run: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let (value, hit) = maxbatch::cache::answer_or_run(cached.as_ref().map(|(c, k)| (c, k)), run)?;
    if let (true, Some((cache, key))) = (hit, &cached) {
        eprintln!(
            "cached result ({}); --no-cache measures again",
            cache.path(key).display()
        );
    }
    Ok(value)
}
