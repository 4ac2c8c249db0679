//! A trial as one line of text: a row of the report's trials table, and the progress line
//! the command line and `Finder::progress_to_stderr` print as each trial finishes.

use crate::format::bytes;
use crate::trial::{Outcome, Trial};

/// The header of the trials table whose rows are [`trial_line`]s.
pub const TRIALS_HEADER: &str = " batch  outcome         peak memory    s/step  samples/s  note";

/// One trial as a table row: batch size, outcome, peak (a lower bound, "≥", when the trial
/// was stopped early), seconds a step, samples a second, and what else is worth knowing.
pub fn trial_line(t: &Trial) -> String {
    let outcome = match t.outcome {
        Outcome::Fits => "fits",
        Outcome::Oom => "out of memory",
    };
    let peak = match (t.peak_bytes, t.stopped_after) {
        (None, _) => "-".to_string(),
        (Some(p), Some(_)) => format!("≥ {}", bytes(p)),
        (Some(p), None) => bytes(p),
    };
    let seconds = t
        .step_seconds
        .map_or_else(|| "-".to_string(), |s| format!("{s:.3}"));
    let mut notes: Vec<String> = t.detail.iter().cloned().collect();
    if let Some(spread) = t.timing_spread() {
        notes.push(format!(
            "step times after the first varied by {:.0}%",
            spread * 100.0
        ));
    }
    if t.peak_is_approximate {
        notes.push("peak sampled, approximate".into());
    }
    if let Some(reserved) = t.reserved_bytes {
        notes.push(format!("pool reserved {}", bytes(reserved)));
    }
    if let Some(leaked) = t.leaked_bytes.filter(|&l| l > 0) {
        notes.push(format!("LEAKED {} after the trial", bytes(leaked)));
    }
    let rate = t
        .samples_per_second
        .map_or_else(|| "-".to_string(), crate::format::rate);
    format!(
        "{:>6}  {outcome:<13}  {peak:>12}  {seconds:>8}  {rate:>9}  {}",
        t.batch_size,
        notes.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_each_column_of_a_line() {
        let line = trial_line(&crate::report::fixtures::trial(12, true, 3 << 30));
        assert!(line.starts_with("    12  fits"), "{line}");
        assert_eq!(TRIALS_HEADER.find("outcome"), line.find("fits"));
        let stopped = Trial {
            stopped_after: Some(crate::Phase::Forward),
            ..crate::report::fixtures::trial(13, false, 4 << 30)
        };
        assert!(trial_line(&stopped).contains("≥ 4.0 GiB"));
    }
}
