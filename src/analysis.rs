//! What the measurements say beyond the sizes: the memory model (fixed bytes, bytes per
//! sample, a breakdown, and how well the line predicted the final size) and throughput
//! (samples per second, time per epoch). Pure arithmetic over a finished [`Report`].

use serde::{Deserialize, Serialize};

use crate::probe::{Outcome, Trial};
use crate::report::Report;

/// peak(b) ≈ fixed + per_sample × b, fitted from the measurements, with a breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryModel {
    /// Bytes at batch size 0 on the fitted line (weights, optimizer state, workspaces).
    pub fixed_bytes: u64,
    /// Bytes each sample adds (activations and their gradients).
    pub bytes_per_sample: u64,
    /// The two batch sizes the line runs through.
    pub fitted_from: [usize; 2],
    /// The line's peak at the maximum, from sizes below it.
    pub predicted_peak_bytes: u64,
    /// The measured peak at the maximum.
    pub measured_peak_bytes: u64,
    /// (predicted − measured) / measured.
    pub relative_error: f64,
    /// The weights (from the parameter count and dtype), when known.
    pub weights_bytes: Option<u64>,
    /// The gradients: as many bytes as the weights, when known.
    pub gradients_bytes: Option<u64>,
    /// The optimizer's state (AdamW: two moments per weight), when known.
    pub optimizer_bytes: Option<u64>,
}

/// The memory model of `report`: a line through the two largest fitting sizes below the
/// maximum that are at least a factor of two apart (or the two largest), checked against
/// the maximum's own measurement. `None` with fewer than three sizes measured.
pub fn memory_model(report: &Report) -> Option<MemoryModel> {
    let max = report.max_batch_size;
    let points: Vec<(usize, u64)> = fits(&report.trials).filter(|(b, _)| *b < max).collect();
    let line = crate::search::Line::spanning(points)?;
    let measured = fits(&report.trials).find(|(b, _)| *b == max)?.1;
    let (slope, fixed, predicted) = (line.slope, line.fixed(), line.at(max));
    let weights = weight_bytes(report);
    let copies = report.settings.optimizer.map(|o| o.state_copies());
    Some(MemoryModel {
        fixed_bytes: fixed.max(0.0) as u64,
        bytes_per_sample: slope.max(0.0) as u64,
        fitted_from: [line.from.0, line.to.0],
        predicted_peak_bytes: predicted.max(0.0) as u64,
        measured_peak_bytes: measured,
        relative_error: (predicted - measured as f64) / measured as f64,
        weights_bytes: weights,
        gradients_bytes: weights,
        optimizer_bytes: weights.zip(copies).map(|(w, c)| w * c),
    })
}

fn weight_bytes(report: &Report) -> Option<u64> {
    let size = match report.model.dtype.as_str() {
        "f32" => 4,
        "bf16" | "f16" => 2,
        "f64" => 8,
        _ => return None,
    };
    (report.model.parameters > 0).then(|| report.model.parameters * size)
}

fn fits(trials: &[Trial]) -> impl Iterator<Item = (usize, u64)> + '_ {
    trials
        .iter()
        .filter(|t| t.outcome == Outcome::Fits)
        .filter_map(|t| Some((t.batch_size, t.peak_bytes?)))
}

/// Samples per second of a trial that fit.
pub fn samples_per_second(trial: &Trial) -> Option<f64> {
    let seconds = trial.step_seconds.filter(|s| *s > 0.0)?;
    (trial.outcome == Outcome::Fits).then(|| trial.batch_size as f64 / seconds)
}

/// Seconds per step at `batch_size`, from the last trial that fit there.
pub fn seconds_per_step(trials: &[Trial], batch_size: usize) -> Option<f64> {
    crate::probe::fitting_trial(trials, batch_size).and_then(|t| t.step_seconds)
}

/// A note when a smaller size that fit trains more samples per second than the maximum
/// (the card's compute, not its memory, is then the limit).
pub fn throughput_note(report: &Report) -> Option<String> {
    let at_max = report
        .trials
        .iter()
        .rev()
        .find(|t| t.batch_size == report.max_batch_size)
        .and_then(samples_per_second)?;
    let (best, rate) = report
        .trials
        .iter()
        .filter(|t| t.batch_size < report.max_batch_size)
        .filter_map(|t| Some((t.batch_size, samples_per_second(t)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    (rate > at_max * 1.05).then(|| {
        format!(
            "batch size {best} trained {} samples/s, more than the maximum's {}: \
             beyond it, larger batches only save steps, not time",
            crate::format::rate(rate),
            crate::format::rate(at_max)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::fixture;

    #[test]
    fn the_model_recovers_a_straight_line_and_predicts_the_maximum() {
        // The fixture's peaks are 100 MiB per sample from 0: fixed 0, slope 100 MiB.
        let report = fixture("cuda:0", 6, Some(5));
        let model = memory_model(&report).unwrap();
        assert_eq!(model.bytes_per_sample, 100 << 20);
        assert_eq!(model.fixed_bytes, 0);
        assert_eq!(model.fitted_from, [2, 5]);
        assert_eq!(model.predicted_peak_bytes, model.measured_peak_bytes);
        assert_eq!(model.relative_error, 0.0);
        // 168,192 f32 parameters, AdamW's two moments.
        assert_eq!(model.weights_bytes, Some(672_768));
        assert_eq!(model.optimizer_bytes, Some(2 * 672_768));
    }

    #[test]
    fn a_faster_smaller_size_is_noted() {
        let mut report = fixture("cuda:0", 6, Some(5));
        assert_eq!(throughput_note(&report), None); // 0.5 s a step at every size
        report.trials[5].step_seconds = Some(10.0); // the maximum, 6, slows down
        let note = throughput_note(&report).unwrap();
        assert!(
            note.starts_with("batch size 5 trained 10.0 samples/s"),
            "{note}"
        );
    }
}
