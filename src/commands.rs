//! What each command does: builds the device, meter and workload the flags describe,
//! calls the library, and prints the answer. The only place that prints results.

use std::process::ExitCode;

use anyhow::Result;
use maxbatch::device::{self, DeviceKind, DeviceRequest, ResolvedDevice};
use maxbatch::format::{bytes, parameters};
use maxbatch::models::{self, ModelSource, ModelSpec, PRESETS};
use maxbatch::report::{json, text};
use maxbatch::{CpuMeter, Error, Finder, MemoryMeter, Outcome, Trial, Workload};

use crate::cli::{CheckArgs, Cli, Command, FindArgs, ModelsArgs, TargetArgs};
use crate::progress::Progress;

/// Runs the command line; the exit code of success and of "does not fit".
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Models(args)) => list_models(&args),
        Some(Command::Check(args)) => check(&args),
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
    let finder = args.finder();
    finder.bounds()?; // bad settings fail before the model is built
    let mut reports = Vec::new();
    for device in open_devices(&args.target)? {
        let mut setup = Setup::new(&args.target, device)?;
        let mut progress = Progress::new(args.target.json);
        let report = finder.find(
            &mut setup.workload,
            setup.meter.as_mut(),
            setup.model,
            &setup.device,
            &mut progress,
        )?;
        drop(progress);
        reports.push(report);
    }
    match reports.as_slice() {
        [one] if args.target.json => println!("{}", json::render(one)),
        [one] => print!("\n{}", text::render(one)),
        several if args.target.json => println!("{}", json::render_devices(several)),
        several => print!("\n{}", text::render_devices(several)),
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: &CheckArgs) -> Result<ExitCode> {
    let mut finder = Finder::new();
    finder
        .steps_per_trial(args.target.steps_per_trial)
        .optimizer(args.target.optimizer);
    if args.batch_size == 0 {
        return Err(Error::InvalidSetting("--batch-size must be at least 1".into()).into());
    }
    let mut all_fit = true;
    let mut trials: Vec<(String, Trial)> = Vec::new();
    for device in open_devices(&args.target)? {
        let mut setup = Setup::new(&args.target, device)?;
        let mut progress = Progress::new(args.target.json);
        let trial = finder.check(
            &mut setup.workload,
            setup.meter.as_mut(),
            args.batch_size,
            &mut progress,
        )?;
        drop(progress);
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

/// The device, meter, workload and model description the flags ask for.
struct Setup {
    device: ResolvedDevice,
    meter: Box<dyn MemoryMeter>,
    workload: Workload,
    model: models::ModelInfo,
}

impl Setup {
    fn new(target: &TargetArgs, device: ResolvedDevice) -> Result<Self> {
        let spec = ModelSpec::load(&target.model_source())?;
        let options = target.model_options();
        let model = spec.info(&options)?;
        if target.steps_per_trial == 0 {
            return Err(
                Error::InvalidSetting("--steps-per-trial must be at least 1".into()).into(),
            );
        }
        if target.memory == Some(0) {
            return Err(Error::InvalidSetting("--memory must be more than 0 bytes".into()).into());
        }
        let meter = meter_for(&device, target.memory)?;
        // Building weights that cannot fit would abort the process on the CPU: refuse first.
        let weight_bytes = model.parameters * options.dtype.size_in_bytes() as u64;
        let needs = weight_bytes * (1 + target.optimizer.state_copies());
        let capacity = meter.capacity().bytes;
        if needs > capacity {
            return Err(Error::ModelExceedsCapacity {
                held: needs,
                capacity,
            }
            .into());
        }
        tracing::info!(model = %model.name, device = %device.name, "building the model");
        let workload = Workload::new(&spec, &options, target.optimizer, &device.device)?;
        Ok(Self {
            device,
            meter,
            workload,
            model,
        })
    }
}

fn meter_for(device: &ResolvedDevice, memory: Option<u64>) -> Result<Box<dyn MemoryMeter>> {
    match device.kind {
        DeviceKind::Cpu => {
            let meter = match memory {
                Some(budget) => CpuMeter::with_budget(budget)?,
                None => CpuMeter::from_available_memory()?,
            };
            if let (Some(budget), Some(limit)) = (memory, meter.machine_limit()) {
                if budget > limit {
                    tracing::warn!(
                        "--memory {} is more than this machine can give ({}); sizes predicted \
                         beyond that are reported out of memory without running",
                        bytes(budget),
                        bytes(limit)
                    );
                }
            }
            Ok(Box::new(meter))
        }
        DeviceKind::Cuda => cuda_meter(device, memory),
    }
}

#[cfg(feature = "cuda")]
fn cuda_meter(device: &ResolvedDevice, memory: Option<u64>) -> Result<Box<dyn MemoryMeter>> {
    Ok(Box::new(maxbatch::memory::cuda::CudaMeter::new(
        &device.device,
        memory,
    )?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_meter(device: &ResolvedDevice, _memory: Option<u64>) -> Result<Box<dyn MemoryMeter>> {
    // `device::resolve` only opens CUDA devices in a CUDA build.
    Err(Error::CudaUnavailable {
        reason: format!("{} needs a build with `--features cuda`", device.name),
    }
    .into())
}
