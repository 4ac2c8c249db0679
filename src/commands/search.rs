//! The search (no subcommand): one search per device, then what the command line adds to
//! its answer (the sizes another device chose run on this one, plans for other memory, the
//! what-if rows), assembled once and printed; the plot after the report.

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Result;
use maxbatch::device::{self, DeviceKind};
use maxbatch::isolate::ChildProcessTrials;
use maxbatch::plan::Plan;
use maxbatch::report::{DataParallel, DeviceInfo};
use maxbatch::{Error, Observer, Outcome, Report, StepMode};

use crate::child::TrialChild;
use crate::output::answer::{DevicesAnswer, SearchAnswer};
use crate::output::tables;
use crate::progress::Progress;
use crate::resolve::Search;
use crate::session::{cached, open_devices, Session};
use crate::signals::{stop_on_signals, StopSignals};

/// Runs the search on every device asked for.
pub fn run(job: &Search) -> Result<ExitCode> {
    let stop = stop_on_signals();
    let mut reports = match search_devices(job, &stop) {
        Ok(reports) => reports,
        Err(error) if job.what_if && does_not_fit(&error) => {
            // The table of what would fit instead of only "does not fit".
            let rows = super::what_if::rows(job)?;
            print!("{}", tables::what_if(&rows, None));
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    let interrupted = reports.iter().any(|r| r.interrupted);
    if reports.len() > 1 && !interrupted {
        reports = verified_on_every_device(job, reports)?;
    }
    let what_if = if job.what_if && !interrupted {
        super::what_if::rows(job)?
    } else {
        Vec::new()
    };
    let mut answers: Vec<SearchAnswer> = reports
        .into_iter()
        .map(|report| SearchAnswer {
            plans: plans(job, &report),
            report,
            what_if: Vec::new(),
            evaluation: None,
        })
        .collect();
    if let (true, false, Some(first)) = (job.eval_after, interrupted, answers.first_mut()) {
        let evaluation = evaluation_beside(job, &first.report, &stop)?;
        first.evaluation = Some(Box::new(SearchAnswer {
            plans: plans(job, &evaluation),
            report: evaluation,
            what_if: Vec::new(),
            evaluation: None,
        }));
    }
    if let Some(first) = answers.first_mut() {
        first.what_if = what_if;
    }
    if let Some(partial) = answers.iter().find(|a| a.report.interrupted) {
        // What the stopped search verified, alone.
        print(job, std::slice::from_ref(partial))?;
        eprintln!(
            "interrupted after {} trials; the largest size verified to fit is {}",
            partial.report.trials.len(),
            partial.report.sizes.max
        );
        return Ok(ExitCode::from(stop.exit_code.load(Ordering::SeqCst)));
    }
    print(job, &answers)?;
    // After the report is printed: a failure here loses nothing measured.
    if let Some(path) = &job.plot {
        plot(path, &answers)?;
    }
    let failed = answers
        .iter()
        .filter_map(|a| a.report.verification.as_ref())
        .find(|v| !v.passed);
    if let Some(v) = failed {
        eprintln!(
            "the verification run failed: step {} of {} at batch size {} crossed the capacity",
            v.steps_completed + 1,
            v.steps_requested,
            v.batch_size
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The answers as JSON or text: one device's, or several with what a data-parallel run can
/// use.
fn print(job: &Search, answers: &[SearchAnswer]) -> Result<()> {
    let json = job.trials.json;
    match answers {
        [one] if json => println!("{}", serde_json::to_string_pretty(one)?),
        [one] => print!("\n{}", tables::answer(one)),
        several => {
            let reports: Vec<Report> = several.iter().map(|a| a.report.clone()).collect();
            let all = DevicesAnswer {
                parallel: DataParallel::new(&reports),
                devices: several.to_vec(),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("\n{}", tables::devices(&all));
            }
        }
    }
    Ok(())
}

/// Each answer's chart: the path itself for one, `NAME.i.svg` for several.
fn plot(path: &std::path::Path, answers: &[SearchAnswer]) -> Result<()> {
    for (i, answer) in answers.iter().enumerate() {
        let file = if answers.len() == 1 {
            path.to_path_buf()
        } else {
            path.with_extension(format!("{i}.svg"))
        };
        let svg = crate::output::plot::render(&answer.report, &answer.plans)
            .map_err(anyhow::Error::msg)?;
        std::fs::write(&file, svg)
            .map_err(|e| anyhow::anyhow!("cannot write the plot to {}: {e}", file.display()))?;
        eprintln!("plot written to {}", file.display());
    }
    Ok(())
}

/// `--plan-for`'s plans: from the estimate the search was seeded with, calibrated by its
/// trials, else from its measured lines; a GPU's stop at the model's element cap.
fn plans(job: &Search, report: &Report) -> Vec<Plan> {
    let model = &job.trials.model;
    let cuda_cap = model.spec.cuda_batch_cap(&model.options).ok().flatten();
    job.plan_for
        .iter()
        .filter_map(|memory| Plan::for_report(report, memory, cuda_cap))
        .collect()
}

/// `--mode train+eval`'s second search: the largest evaluation batch while the training
/// state of the first search's recommended size is held (the workload runs one training
/// step at that size before its trials; see docs/design.md, "Beyond training").
fn evaluation_beside(job: &Search, training: &Report, stop: &StopSignals) -> Result<Report> {
    // The size the user will train at: the recommended one, or the maximum when no size
    // that ran leaves the margin free.
    let train_batch = training.sizes.recommended.unwrap_or(training.sizes.max);
    let mode = StepMode::Eval {
        beside_training: Some(train_batch),
    };
    let mut evaluation = job.clone();
    evaluation.trials.model.options.mode = mode;
    evaluation.settings.mode = mode;
    evaluation.settings.accumulation = None;
    evaluation.settings.verify_steps = 0;
    evaluation.eval_after = false;
    eprintln!("the evaluation batch beside training at batch size {train_batch}:");
    search_devices(&evaluation, stop)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the evaluation search ran on no device"))
}

/// The search on each device asked for, one report each, until one is interrupted.
fn search_devices(job: &Search, stop: &StopSignals) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    // Several devices are only searched when each opened as asked (no CPU fallback), so the
    // i-th report is the i-th request's.
    for device in open_devices(&job.trials)? {
        let mut session = Session::new(&job.trials, &job.trials.model, device)?;
        let report = if job.isolate {
            isolated(job, &mut session, stop)
        } else {
            in_process(job, &mut session, stop)
        }
        .map_err(|e| session.explain(e))?;
        let interrupted = report.interrupted;
        reports.push(report);
        if interrupted {
            break;
        }
    }
    Ok(reports)
}

/// The search with the model built in this process.
fn in_process(job: &Search, session: &mut Session, stop: &StopSignals) -> Result<Report> {
    let finder = session
        .finder()
        .settings(session.settings_for_device(&job.settings)?)
        .stop_when(stop.flag.clone());
    let key = finder.cached("search", session.meter.as_ref());
    cached(&finder, key, || {
        let mut progress = Progress::new(job.trials.json);
        let (mut workload, built) = session.build()?;
        Ok(finder.clone().model_holds(built).find_with(
            &mut workload,
            session.meter.as_mut(),
            &mut progress,
        )?)
    })
}

/// The search with each trial in a child process (`--isolate`).
fn isolated(job: &Search, session: &mut Session, stop: &StopSignals) -> Result<Report> {
    let settings = session.settings_for_device(&job.settings)?;
    let finder = session
        .finder()
        .settings(settings.clone())
        .stop_when(stop.flag.clone());
    let key = finder.cached("search", session.meter.as_ref());
    // A CPU budget is the parent's, so that every child agrees; on CUDA each child reads
    // the device itself after its warm-up step, within the user's cap.
    let memory = match session.device.kind {
        DeviceKind::Cpu => Some(session.meter.capacity().bytes),
        DeviceKind::Cuda => job.trials.memory,
    };
    let process = TrialChild::new(
        std::env::current_exe()?,
        &job.trials,
        &session.device.name,
        memory,
    );
    let mut children = ChildProcessTrials::new(Box::new(process), session.meter.hard_limit());
    let mut device = DeviceInfo::of(&session.device, session.meter.as_ref());
    // The parent lets go of the device before the children run: a CUDA context of its own
    // would hold memory that each child's measurement then lacks.
    session.release_device();
    cached(&finder, key, || {
        let mut progress = Progress::new(job.trials.json);
        // The first child measures the capacity after its warm-up step, as the in-process
        // search does; its trial is the search's first.
        progress.trial_started(settings.start);
        let measured = children
            .calibrate(settings.start)
            .map_err(|e| Error::trial(settings.start, e))?;
        device.capacity_bytes = measured.capacity.bytes;
        device.capacity_source = measured.capacity.source;
        device.capacity_is_budget = measured.capacity.is_budget;
        device.overhead_bytes = measured.overhead_bytes;
        device.meter = measured.meter;
        Ok(finder.search(&mut children, device, &mut progress)?)
    })
}

/// True when `error` says the model does not fit at all: batch size 1 ran out of memory, or
/// the weights and optimizer state alone are over the capacity.
fn does_not_fit(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<Error>(),
        Some(Error::NothingFits { .. } | Error::ModelExceedsCapacity { .. })
    )
}

/// The reports again, each with the data-parallel sizes (the minimum over the devices) that
/// its own search skipped run on its device, so that every size reported for the replicas
/// ran on every device.
fn verified_on_every_device(job: &Search, reports: Vec<Report>) -> Result<Vec<Report>> {
    let missing = DataParallel::new(&reports).unverified(&reports);
    let mut extended = Vec::with_capacity(reports.len());
    for (i, report) in reports.into_iter().enumerate() {
        let mut more = Vec::new();
        for &(_, size) in missing.iter().filter(|(device, _)| *device == i) {
            let device = device::resolve(job.trials.devices[i], false)?;
            let mut session = Session::new(&job.trials, &job.trials.model, device)?;
            let settings = session.settings_for_device(&job.trials.settings())?;
            let finder = session.uncached_finder().settings(settings);
            let trial = session.check(&finder, size, &mut Progress::new(job.trials.json))?;
            if trial.outcome != Outcome::Fits {
                tracing::warn!(
                    "batch size {size} fit on another device but not on {}; the data-parallel \
                     sizes are not safe for every replica",
                    session.device.name
                );
            }
            more.push(trial);
        }
        extended.push(if more.is_empty() {
            report
        } else {
            maxbatch::finish::extended(report, more)
        });
    }
    Ok(extended)
}
