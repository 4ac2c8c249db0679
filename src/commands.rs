//! What each command does: builds the device, meter and workload the flags describe,
//! calls the library, and prints the answer. The only place that prints results.

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Result;
use maxbatch::device::{self, DeviceKind, DeviceRequest};
use maxbatch::format::{bytes, parameters};
use maxbatch::isolate::ChildProcessTrials;
use maxbatch::models::{self, ModelSource, ModelSpec, PRESETS};
use maxbatch::report::{json, text, DeviceInfo};
use maxbatch::sweep::MeasuredLength;
use maxbatch::{Error, Observer, Outcome, Silent, Trial};

use crate::cli::{
    CheckArgs, Cli, Command, ElementProbeArgs, FindArgs, ModelsArgs, PoolSelfTestArgs,
};
use crate::progress::Progress;
use crate::setup::{cached, open_devices, Setup};
use crate::signals::{stop_on_signals, StopSignals};

/// Runs the command line; the exit code of success and of "does not fit".
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Models(args)) => list_models(&args),
        Some(Command::Check(args)) => check(&args),
        Some(Command::Estimate(args)) => crate::estimate_command::estimate(&args),
        Some(Command::Trial(args)) => trial(&args),
        Some(Command::PoolSelfTest(args)) => pool_self_test(&args),
        Some(Command::ElementProbe(args)) => element_probe(&args),
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
    if let Some(lengths) = args.target.sweep_lengths() {
        return sweep(args, lengths);
    }
    if let Some(path) = &args.plot {
        writable(path)?; // and an unwritable output before the first trial
    }
    if args.what_if && args.target.device.0.len() > 1 {
        anyhow::bail!("--what-if searches one device; give one --device");
    }
    let stop = stop_on_signals();
    let mut reports = match search_devices(args, &settings, &stop) {
        Ok(reports) => reports,
        Err(error) if args.what_if && does_not_fit(&error) => {
            // The table of what would fit instead of only "does not fit".
            let rows = what_if_rows(args)?;
            print!("{}", text::what_if_table(&rows, None));
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    if reports.len() > 1 && !reports.iter().any(|r| r.interrupted) {
        verify_on_every_device(args, &args.target.device.0, &mut reports)?;
    }
    if let Some(targets) = &args.plan_for {
        let cuda_cap = maxbatch::models::ModelSpec::load(&args.target.model_source())?
            .cuda_batch_cap(&args.target.model_options())?;
        for report in reports.iter_mut() {
            report.plans = maxbatch::plan::plans(report, &targets.0, cuda_cap);
        }
    }
    if args.what_if && !reports.iter().any(|r| r.interrupted) {
        let rows = what_if_rows(args)?;
        if let Some(report) = reports.first_mut() {
            report.what_if = rows;
        }
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
    let failed = reports
        .iter()
        .filter_map(|r| r.verification.as_ref())
        .find(|v| !v.passed);
    if let Some(v) = failed {
        eprintln!(
            "the soak run failed: step {} of {} at batch size {} crossed the capacity",
            v.steps_completed + 1,
            v.steps_requested,
            v.batch_size
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The search on each device `--device` names, one report each, until one is interrupted.
fn search_devices(
    args: &FindArgs,
    settings: &maxbatch::SearchSettings,
    stop: &StopSignals,
) -> Result<Vec<maxbatch::Report>> {
    let mut reports = Vec::new();
    // Several devices are only searched when each opened as asked (no CPU fallback), so the
    // i-th report is the i-th request's.
    for device in open_devices(&args.target)? {
        let mut setup = Setup::new(&args.target, device)?;
        let settings = setup.settings_for_device(settings)?;
        let finder = setup
            .finder(args.target.cache_unless(args.verify_steps.is_some()))
            .settings(settings.clone())
            .stop_when(stop.flag.clone());
        let key = finder.cached("search", setup.meter.as_ref());
        let report = if args.isolate {
            // A CPU budget is the parent's, so that every child agrees; on CUDA each child
            // reads the device itself after its warm-up step, within the user's cap.
            let memory = match setup.device.kind {
                DeviceKind::Cpu => Some(setup.meter.capacity().bytes),
                DeviceKind::Cuda => args.target.memory,
            };
            let mut children = ChildProcessTrials::new(
                std::env::current_exe()?,
                args.target.child_args(&setup.device.name, memory),
                setup.meter.hard_limit(),
            );
            let mut device = DeviceInfo::of(&setup.device, setup.meter.as_ref());
            // The parent lets go of the device before the children run: a CUDA context of
            // its own would hold memory that each child's measurement then lacks.
            drop(finder);
            setup.release_device();
            let finder = setup
                .finder(args.target.cache_unless(args.verify_steps.is_some()))
                .settings(settings.clone())
                .stop_when(stop.flag.clone());
            cached(&finder, key, || {
                let mut progress = Progress::new(args.target.json);
                // The first child measures the capacity after its warm-up step, as the
                // in-process search does; its trial is the search's first.
                progress.trial_started(settings.start);
                let measured = children
                    .calibrate(settings.start)
                    .map_err(|e| Error::trial(settings.start, e))?;
                device.capacity_bytes = measured.capacity.bytes;
                device.capacity_source = measured.capacity.source;
                device.capacity_is_budget = measured.capacity.is_budget;
                device.overhead_bytes = measured.overhead_bytes;
                device.meter = measured.meter;
                Ok(finder.search(&mut children, device.clone(), &mut progress)?)
            })
            .map_err(|e| setup.explain(e))?
        } else {
            cached(&finder, key, || {
                let mut progress = Progress::new(args.target.json);
                let (mut workload, built) = setup.build()?;
                Ok(finder.clone().model_holds(built).find_with(
                    &mut workload,
                    setup.meter.as_mut(),
                    &mut progress,
                )?)
            })
            .map_err(|e| setup.explain(e))?
        };
        let interrupted = report.interrupted;
        reports.push(report);
        if interrupted {
            break;
        }
    }
    Ok(reports)
}

/// True when `error` says the model does not fit at all: batch size 1 ran out of memory, or
/// the weights and optimizer state alone are over the capacity.
fn does_not_fit(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<Error>(),
        Some(Error::NothingFits { .. } | Error::ModelExceedsCapacity { .. })
    )
}

/// `--what-if`: a search of each change that applies, one at a time, each in a child
/// process (see what_if_runs.rs).
fn what_if_rows(args: &FindArgs) -> Result<Vec<maxbatch::what_if::WhatIf>> {
    let spec = ModelSpec::load(&args.target.model_source())?;
    let options = args.target.model_options();
    let seq_len = spec.seq_len(&options)?;
    let changes = maxbatch::what_if::changes(&spec, &options, args.target.optimizer, seq_len);
    crate::what_if_runs::run(&changes)
}

/// A sequence-length sweep: one search per length on one device, the model built once, each
/// length's first jump steered by the lengths measured before it.
fn sweep(args: &FindArgs, lengths: &[usize]) -> Result<ExitCode> {
    let refuse = |flag: &str, why: &str| -> Result<ExitCode> {
        anyhow::bail!(
            "{flag} does not combine with a --seq-len sweep ({why}); run it at one length"
        )
    };
    if args.target.device.0.len() > 1 {
        return refuse("a list of devices", "one device per sweep");
    }
    if args.isolate {
        return refuse("--isolate", "the sweep reuses one model in this process");
    }
    if args.verify_steps.is_some() {
        return refuse(
            "--verify-steps",
            "a soak run is for the size you will train at",
        );
    }
    if args.plot.is_some() || args.plan_for.is_some() {
        return refuse("--plot and --plan-for", "they draw one report");
    }
    if args.what_if {
        return refuse(
            "--what-if",
            "its half length is one more length of the sweep",
        );
    }
    // Every length is checked (against a learned context, say) before the first one runs.
    let spec = ModelSpec::load(&args.target.model_source())?;
    for &seq_len in lengths {
        spec.info(&args.target.at_seq_len(seq_len).model_options())?;
    }
    let settings = args.settings();
    let stop = stop_on_signals();
    let device = open_devices(&args.target)?.remove(0);
    let mut built: Option<(maxbatch::Workload, u64)> = None;
    let mut measured: Vec<MeasuredLength> = Vec::new();
    let mut entries = Vec::new();
    for &seq_len in lengths {
        let target = args.target.at_seq_len(seq_len);
        let mut setup = Setup::new(&target, device.clone())?;
        let mut settings = setup.settings_for_device(&settings)?;
        settings.bytes_per_sample_hint = maxbatch::sweep::bytes_per_sample_hint(&measured, seq_len);
        if let Some(hint) = settings.bytes_per_sample_hint {
            tracing::info!(
                "{seq_len} tokens: first jump steered by about {} per sample",
                maxbatch::format::bytes(hint)
            );
        }
        let finder = setup
            .finder(target.cache_unless(false))
            .settings(settings)
            .stop_when(stop.flag.clone());
        let key = finder.cached("search", setup.meter.as_ref());
        let report = cached(&finder, key, || {
            let (mut workload, held) = match built.take() {
                Some((mut workload, held)) => {
                    workload.set_seq_len(seq_len)?;
                    (workload, held)
                }
                None => setup.build()?,
            };
            let report = finder.clone().model_holds(held).find_with(
                &mut workload,
                setup.meter.as_mut(),
                &mut Progress::new(args.target.json),
            );
            built = Some((workload, held));
            Ok(report?)
        })
        .map_err(|e| setup.explain(e))?;
        if let Some(model) = &report.memory_model {
            measured.push(MeasuredLength {
                seq_len,
                bytes_per_sample: model.bytes_per_sample,
            });
        }
        let interrupted = report.interrupted;
        entries.push(maxbatch::sweep::SweepEntry::new(seq_len, report));
        if interrupted {
            break;
        }
    }
    let sweep = maxbatch::sweep::Sweep { sweep: entries };
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&sweep)?);
    } else {
        print!("\n{}", text::render_sweep(&sweep));
    }
    if sweep.sweep.iter().any(|e| e.report.interrupted) {
        return Ok(ExitCode::from(stop.exit_code.load(Ordering::SeqCst)));
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
        let settings = setup.settings_for_device(&args.target.check_settings())?;
        let finder = setup.finder(None).settings(settings);
        let trial = setup.check(&finder, size, &mut Progress::new(args.target.json))?;
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
    let finder = setup
        .finder(None)
        .settings(setup.settings_for_device(&settings)?);
    let trial = setup.check(&finder, args.batch_size, &mut Silent)?;
    let child = maxbatch::isolate::ChildTrial {
        trial,
        capacity: setup.meter.capacity(),
        overhead_bytes: setup.meter.outside_bytes()?,
        meter: setup.meter.describe().to_string(),
    };
    println!("{}", serde_json::to_string(&child)?);
    Ok(ExitCode::SUCCESS)
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
    if args.verify_steps == Some(0) {
        anyhow::bail!("--verify-steps must be at least 1 step");
    }
    let mut all_fit = true;
    let mut trials: Vec<(String, Trial)> = Vec::new();
    for device in open_devices(&args.target)? {
        let mut setup = Setup::new(&args.target, device)?;
        let mut settings = setup.settings_for_device(&settings)?;
        if let Some(steps) = args.verify_steps {
            settings.steps_per_trial = steps;
        }
        let cache = args.target.cache_unless(args.verify_steps.is_some());
        let finder = setup.finder(cache).settings(settings);
        let kind = format!("check {}", args.batch_size);
        let key = finder.cached(&kind, setup.meter.as_ref());
        let trial: Trial = cached(&finder, key, || {
            setup.check(
                &finder,
                args.batch_size,
                &mut Progress::new(args.target.json),
            )
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
            if let Some(steps) = args.verify_steps {
                let soak = maxbatch::soak::Verification::from_trial(&trial, steps, &[]);
                print!("{}", text::verification(&soak, capacity.bytes));
            }
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

/// The GPU acceptance script's element probe (see `maxbatch::memory::cuda::element_probe`).
fn element_probe(args: &ElementProbeArgs) -> Result<ExitCode> {
    let device = device::resolve(args.device.0[0], false)?;
    element_probe_on(&device.device, args.elements)
}

#[cfg(feature = "cuda")]
fn element_probe_on(device: &candle_core::Device, elements: usize) -> Result<ExitCode> {
    let probe = maxbatch::memory::cuda::element_probe(device, elements)?;
    let mut json = serde_json::to_value(probe)?;
    json["exact"] = probe.exact().into();
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "cuda"))]
fn element_probe_on(_device: &candle_core::Device, _elements: usize) -> Result<ExitCode> {
    anyhow::bail!("the element probe needs a build with `--features cuda` and a GPU")
}
