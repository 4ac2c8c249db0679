//! The schedule as text: epochs, steps and their time at each reported size.

use std::fmt::Write as _;

use maxbatch::report::ScheduleRow;
use maxbatch::Report;

/// The schedule's header: the dataset, and how the step times were taken.
pub fn header(out: &mut String, r: &Report) {
    if let Some(d) = &r.dataset {
        let last = if d.drop_last {
            "last partial batch dropped"
        } else {
            "last partial batch kept"
        };
        let _ = writeln!(
            out,
            "schedule: {} samples × {} epoch{} ({last})",
            d.size,
            d.epochs,
            if d.epochs == 1 { "" } else { "s" }
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

/// The schedule's rows: steps per epoch and in total, and their time, at each size.
pub fn rows(out: &mut String, rows: &[ScheduleRow]) {
    let _ = writeln!(
        out,
        "{:<26}{:>6}  {:>12}  {:>12}  {:>12}  {:>12}",
        "", "batch", "steps/epoch", "total steps", "epoch time", "total time"
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
