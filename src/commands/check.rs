//! `maxbatch check`: the pre-flight check, one trial at one batch size on each device (or,
//! with `--verify-steps`, a verification run); exit 0 when it fits everywhere, 1 when not.

use std::process::ExitCode;

use anyhow::Result;
use maxbatch::format::bytes;
use maxbatch::memory::Capacity;
use maxbatch::settings::DEFAULT_MARGIN;
use maxbatch::verification::Verification;
use maxbatch::{Outcome, Trial};

use crate::progress::Progress;
use crate::resolve::Check;
use crate::session::{cached, open_devices, Session};

/// Runs the check on every device asked for.
pub fn run(job: &Check) -> Result<ExitCode> {
    let mut trials: Vec<(String, Trial)> = Vec::new();
    for device in open_devices(&job.trials)? {
        let mut session = Session::new(&job.trials, &job.trials.model, device)?;
        let mut settings = session.settings_for_device(&job.trials.settings())?;
        if let Some(steps) = job.verify_steps {
            settings.steps_per_trial = steps;
        }
        let finder = session.finder().settings(settings);
        let key = finder.cached(&format!("check {}", job.batch_size), session.meter.as_ref());
        let trial: Trial = cached(&finder, key, || {
            session.check(&finder, job.batch_size, &mut Progress::new(job.trials.json))
        })?;
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

/// One device's verdict as text, and its verification run's lines when there was one.
fn text(job: &Check, trial: &Trial, session: &Session) -> String {
    let capacity = session.meter.capacity();
    let fits = trial.outcome == Outcome::Fits;
    let mut out = format!(
        "batch size {} {} on {}: {}\n",
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
        None => format!("{kind} {}", bytes(capacity.bytes)),
    }
}
