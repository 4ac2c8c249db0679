//! What each command does: builds the device, meter and workload the flags describe,
//! calls the library, and prints the answer. The only place that prints results.

use std::process::ExitCode;

use anyhow::Result;
use maxbatch::device::{self, DeviceKind, ResolvedDevice};
use maxbatch::format::{bytes, parameters};
use maxbatch::models::{self, PRESETS};
use maxbatch::report::{json, text};
use maxbatch::{CpuMeter, Error, Finder, MemoryMeter, Outcome, Workload};

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
    let infos = PRESETS
        .iter()
        .map(|(name, _)| models::info(name, &defaults))
        .collect::<Result<Vec<_>, Error>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
    } else {
        println!(
            "{:<20}{:>12}  {:<14}  architecture",
            "model", "parameters", "input"
        );
        for m in &infos {
            println!(
                "{:<20}{:>12}  {:<14}  {}",
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
    let mut setup = Setup::new(&args.target)?;
    let mut progress = Progress::new(args.target.json);
    let report = finder.find(
        &mut setup.workload,
        setup.meter.as_mut(),
        setup.model,
        &setup.device,
        &mut progress,
    )?;
    drop(progress);
    if args.target.json {
        println!("{}", json::render(&report));
    } else {
        println!();
        print!("{}", text::render(&report));
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
    let mut setup = Setup::new(&args.target)?;
    let mut progress = Progress::new(args.target.json);
    let trial = finder.check(
        &mut setup.workload,
        setup.meter.as_mut(),
        args.batch_size,
        &mut progress,
    )?;
    drop(progress);
    let fits = trial.outcome == Outcome::Fits;
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&trial)?);
    } else {
        let capacity = setup.meter.capacity();
        println!(
            "batch size {} {} {} {} of {}",
            args.batch_size,
            if fits { "fits" } else { "does not fit" },
            if fits { "within" } else { "in" },
            if capacity.is_budget {
                "the budget"
            } else {
                "the capacity"
            },
            bytes(capacity.bytes)
        );
    }
    Ok(if fits {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The device, meter, workload and model description the flags ask for.
struct Setup {
    device: ResolvedDevice,
    meter: Box<dyn MemoryMeter>,
    workload: Workload,
    model: models::ModelInfo,
}

impl Setup {
    fn new(target: &TargetArgs) -> Result<Self> {
        let name = target.model_name();
        let options = target.model_options();
        let model = models::info(name, &options)?; // unknown names fail before the device opens
        if target.steps_per_trial == 0 {
            return Err(
                Error::InvalidSetting("--steps-per-trial must be at least 1".into()).into(),
            );
        }
        let device = device::resolve(target.device, !target.no_fallback)?;
        if let Some(reason) = &device.fallback {
            tracing::warn!("--device {}: {reason}; running on the CPU", target.device);
        }
        let meter = meter_for(&device, target.memory)?;
        tracing::info!(model = name, device = %device.name, "building the model");
        let workload = Workload::new(name, &options, target.optimizer, &device.device)?;
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
                Some(0) => {
                    return Err(
                        Error::InvalidSetting("--memory must be more than 0 bytes".into()).into(),
                    )
                }
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
        DeviceKind::Cuda => Err(Error::CudaUnavailable {
            reason: "CUDA trials are not implemented in this build yet".into(),
        }
        .into()),
    }
}
