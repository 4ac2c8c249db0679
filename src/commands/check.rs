//! `maxbatch check`: the pre-flight check, one trial at one batch size on each device (or,
//! with `--verify-steps`, a verification run); exit 0 when it fits everywhere, 1 when not.

use std::process::ExitCode;

use anyhow::Result;
use maxbatch::format::bytes;
use maxbatch::memory::Capacity;
use maxbatch::settings::DEFAULT_MARGIN;
use maxbatch::verification::Verification;
use maxbatch::{Outcome, Trial};

use maxbatch::device::ResolvedDevice;
use maxbatch::StepMode;

use crate::progress::Progress;
use crate::resolve::{Check, Trials};
use crate::session::{cached, open_devices, Session};

/// Runs the check on every device asked for.
pub fn run(job: &Check) -> Result<ExitCode> {
    if let Some(eval) = job.eval_batch_size {
        return pair(job, eval);
    }
    let mut trials: Vec<(String, Trial)> = Vec::new();
    for device in open_devices(&job.trials)? {
        let (trial, session) = one(job, &job.trials, job.batch_size, device)?;
        if !job.trials.json {
            print!("{}", text(job, &trial, &session));
        }
        trials.push((session.device.name.clone(), trial));
    }
    if job.trials.json {
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
    Ok(if trials.iter().all(|(_, t)| t.outcome == Outcome::Fits) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One trial of `trials` at `batch_size` on `device` (from the cache when it has it).
fn one<'a>(
    job: &Check,
    trials: &'a Trials,
    batch_size: usize,
    device: ResolvedDevice,
) -> Result<(Trial, Session<'a>)> {
    let mut session = Session::new(trials, &trials.model, device)?;
    let mut settings = session.settings_for_device(&trials.settings())?;
    if let Some(steps) = job.verify_steps {
        settings.steps_per_trial = steps;
    }
    let finder = session.finder().settings(settings);
    let key = finder.cached(&format!("check {batch_size}"), session.meter.as_ref());
    let trial: Trial = cached(&finder, key, || {
        session.check(&finder, batch_size, &mut Progress::new(trials.json))
    })?;
    Ok((trial, session))
}

/// `--eval-batch-size`: on each device the training step at `--batch-size`, then (when it
/// fits) the evaluation pass at `eval` with that training state held; exit 0 when both fit
/// everywhere.
fn pair(job: &Check, eval: usize) -> Result<ExitCode> {
    let mut beside = job.trials.clone();
    beside.model.options.mode = StepMode::Eval {
        beside_training: Some(job.batch_size),
    };
    let mut all_fit = true;
    let mut by_device = serde_json::Map::new();
    for device in open_devices(&job.trials)? {
        let (training, session) = one(job, &job.trials, job.batch_size, device.clone())?;
        let name = session.device.name.clone();
        let evaluation = if training.outcome == Outcome::Fits {
            Some(one(job, &beside, eval, device)?)
        } else {
            None
        };
        if !job.trials.json {
            print!("{}", text(job, &training, &session));
            match &evaluation {
                Some((trial, session)) => println!(
                    "evaluation batch size {eval} {} beside it on {name}: {}",
                    if trial.outcome == Outcome::Fits {
                        "fits"
                    } else {
                        "does not fit"
                    },
                    peak(trial, session.meter.capacity())
                ),
                None => println!(
                    "evaluation batch size {eval} not checked: the training step it runs \
                     beside does not fit"
                ),
            }
        }
        let evaluation = evaluation.map(|(trial, _)| trial);
        all_fit &= training.outcome == Outcome::Fits
            && evaluation
                .as_ref()
                .is_some_and(|t| t.outcome == Outcome::Fits);
        by_device.insert(
            name,
            serde_json::json!({ "training": training, "evaluation": evaluation }),
        );
    }
    if job.trials.json {
        let value = match by_device.len() {
            1 => by_device
                .into_iter()
                .next()
                .map(|(_, v)| v)
                .unwrap_or_default(),
            _ => serde_json::Value::Object(by_device),
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(if all_fit {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One device's verdict as text, and its verification run's lines when there was one.
fn text(job: &Check, trial: &Trial, session: &Session) -> String {
    let capacity = session.meter.capacity();
    let fits = trial.outcome == Outcome::Fits;
    let what = match job.trials.model.options.mode {
        StepMode::Train => "batch size",
        StepMode::Eval { .. } => "evaluation batch size",
        StepMode::Generate { .. } => "generation batch size (sequences)",
    };
    let mut out = format!(
        "{what} {} {} on {}: {}\n",
        job.batch_size,
        if fits { "fits" } else { "does not fit" },
        session.device.name,
        peak(trial, capacity)
    );
    if let Some(steps) = job.verify_steps {
        let run = Verification::from_trial(trial, steps, &[]);
        out.push_str(&crate::output::verification::render(&run, capacity.bytes));
    }
    out
}

/// The trial's peak against the capacity, in words.
fn peak(trial: &Trial, capacity: Capacity) -> String {
    let kind = if capacity.is_budget {
        "budget"
    } else {
        "capacity"
    };
    match trial.peak_bytes {
        Some(p) if trial.outcome == Outcome::Fits => {
            let share = p as f64 / capacity.bytes as f64;
            // A size this close fits, but a search would not recommend it.
            let tight = if share > 1.0 - DEFAULT_MARGIN {
                format!(
                    "; inside the {:.0}% margin a search's recommended size leaves free",
                    100.0 * DEFAULT_MARGIN
                )
            } else {
                String::new()
            };
            format!(
                "peak {}, {:.1}% of the {kind} {}{tight}",
                bytes(p),
                100.0 * share,
                bytes(capacity.bytes)
            )
        }
        Some(p) => format!(
            "peak ≥ {} against the {kind} {}",
            bytes(p),
            bytes(capacity.bytes)
        ),
        None => match &trial.detail {
            Some(detail) => format!("{kind} {}; {detail}", bytes(capacity.bytes)),
            None => format!("{kind} {}", bytes(capacity.bytes)),
        },
    }
}
