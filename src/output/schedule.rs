//! The schedule as text: epochs, steps and their time at each reported size.

use std::fmt::Write as _;

use maxbatch::report::ScheduleRow;
use maxbatch::{Report, StepMode};

/// The schedule's words for a mode: a training step and epoch, or an evaluation's or a
/// generation's batch and pass over the data.
struct Words {
    samples: &'static str,
    epoch: &'static str,
    step: &'static str,
}

fn words(mode: StepMode) -> Words {
    match mode {
        StepMode::Train => Words {
            samples: "samples",
            epoch: "epoch",
            step: "steps",
        },
        StepMode::Eval { .. } => Words {
            samples: "samples evaluated",
            epoch: "pass",
            step: "batches",
        },
        StepMode::Generate { .. } => Words {
            samples: "sequences generated",
            epoch: "pass",
            step: "batches",
        },
    }
}

/// The schedule's header: the dataset, and how the step times were taken.
pub fn header(out: &mut String, r: &Report) {
    if let Some(d) = &r.dataset {
        let last = if d.drop_last {
            "last partial batch dropped"
        } else {
            "last partial batch kept"
        };
        let w = words(r.settings.mode);
        let _ = writeln!(
            out,
            "schedule: {} {} × {} {}{} ({last})",
            d.size,
            w.samples,
            d.epochs,
            w.epoch,
            match (d.epochs, w.epoch) {
                (1, _) => "",
                (_, "pass") => "es",
                _ => "s",
            }
        );
        if r.settings.steps_per_trial == 1 {
            let _ = writeln!(
                out,
                "          times from one step a size; one step's time varies by up to {:.0}% \
                 between runs (more --steps-per-trial time more steps)",
                maxbatch::analysis::ONE_STEP_NOISE * 100.0
            );
        }
    }
}

/// The schedule's rows: steps per epoch and in total, and their time, at each size (for an
/// evaluation or a generation: batches per pass over the data).
pub fn rows(out: &mut String, rows: &[ScheduleRow], mode: StepMode) {
    let w = words(mode);
    let _ = writeln!(
        out,
        "{:<26}{:>6}  {:>12}  {:>12}  {:>12}  {:>12}",
        "",
        "batch",
        format!("{}/{}", w.step, w.epoch),
        format!("total {}", w.step),
        format!("{} time", w.epoch),
        "total time"
    );
    for row in rows {
        let label = match row.label.as_str() {
            "largest_power_of_two" => "largest power of two",
            "accumulation" => "accumulation*",
            other => other,
        };
        let epoch = row.epoch_seconds.map_or_else(|| "-".to_string(), duration);
        let total = row.total_seconds.map_or_else(|| "-".to_string(), duration);
        let _ = writeln!(
            out,
            "{label:<26}{:>6}  {:>12}  {:>12}  {epoch:>12}  {total:>12}",
            row.batch_size, row.steps_per_epoch, row.total_steps
        );
    }
    if rows.iter().any(|r| r.label == "accumulation") {
        let _ = writeln!(
            out,
            "* the global batch's optimizer steps; times are the micro-batch's measured step \
             × accumulation steps on one replica, assuming the replicas scale perfectly"
        );
    }
}

/// Seconds as "3h 12m", "4m 05s" or "12.3s".
fn duration(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    match whole {
        0..=59 => format!("{seconds:.1}s"),
        60..=3599 => format!("{}m {:02}s", whole / 60, whole % 60),
        _ => format!("{}h {:02}m", whole / 3600, (whole % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_the_largest_units() {
        assert_eq!(duration(12.34), "12.3s");
        assert_eq!(duration(245.0), "4m 05s");
        assert_eq!(duration(11_520.0), "3h 12m");
    }
}
