//! The verification run as text: the first, last and largest step peak, and, loudly, the
//! step that crossed the capacity with the size to train at instead.

use std::fmt::Write as _;

use maxbatch::format::bytes;
use maxbatch::verification::Verification;

/// The verification run's lines: its step peaks, and loudly, a step that crossed the
/// capacity.
pub fn render(v: &Verification, capacity: u64) -> String {
    let lower = if v.passed { "" } else { "≥ " };
    let peaks = match (v.first_peak_bytes, v.last_peak_bytes, v.max_peak_bytes) {
        (Some(first), _, _) if v.steps_completed == 0 => {
            format!("the first step peaked at {lower}{}", bytes(first))
        }
        (Some(first), Some(last), Some(max)) => format!(
            "first step {}, last {lower}{}, largest {lower}{} ({:+} bytes from the first to the last)",
            bytes(first),
            bytes(last),
            bytes(max),
            last as i64 - first as i64
        ),
        _ => "no step measured".to_string(),
    };
    let mut out = format!(
        "verification: {} of {} consecutive steps at batch size {}: {peaks}\n",
        v.steps_completed, v.steps_requested, v.batch_size
    );
    if v.passed {
        let _ = writeln!(
            out,
            "              every step stayed within the capacity {}",
            bytes(capacity)
        );
    } else {
        let instead = match v.fallback_batch_size {
            Some(b) => format!(
                "batch size {b} passed its trial: train at {b}, or verify it with check -b {b} --verify-steps {}",
                v.steps_requested
            ),
            None => "no smaller size is known to pass: try a smaller --batch-size, or search with --verify-steps".to_string(),
        };
        let _ = writeln!(
            out,
            "              FAILED: step {} crossed the capacity {} ({}); {instead}",
            v.steps_completed + 1,
            bytes(capacity),
            v.detail.as_deref().unwrap_or("over capacity")
        );
    }
    out
}
