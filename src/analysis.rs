//! What the measurements say beyond the sizes: the memory model (the search's line, a
//! breakdown from the parameter count, and how well the line predicted the maximum) and
//! throughput (which size trains the most samples per second). Pure arithmetic over the
//! trials.

use serde::{Deserialize, Serialize};

use crate::models::ModelInfo;
use crate::search::{Fits, Through};
use crate::trial::{self, Trial};
use crate::workload::{OptimizerKind, Phase};

/// peak(b) ≈ fixed + per_sample × b: the line the guided search predicts with, fitted
/// through the sizes below the maximum, with a breakdown of the fixed part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryModel {
    /// Bytes at batch size 0 on the fitted line (weights, optimizer state, workspaces).
    pub fixed_bytes: u64,
    /// Bytes each sample adds: the line's whole slope (activations, their gradients and
    /// whatever else grows with the batch).
    pub bytes_per_sample: u64,
    /// The two batch sizes the line runs through.
    pub fitted_from: [usize; 2],
    /// The phase boundary whose peaks the line runs through (`None`: the trials' overall
    /// peaks): the search fits one line per boundary and predicts with the earliest.
    #[serde(default)]
    pub fitted_through: Option<Phase>,
    /// The line's peak at the maximum, from sizes below it.
    pub predicted_peak_bytes: u64,
    /// The measured peak at the maximum.
    pub measured_peak_bytes: u64,
    /// (predicted − measured) / measured.
    pub relative_error: f64,
    /// The weights: parameter count × dtype size (arithmetic), when known.
    pub weights_bytes: Option<u64>,
    /// The gradients: as many bytes as the weights (arithmetic), when known.
    pub gradients_bytes: Option<u64>,
    /// The optimizer's state (AdamW: two moments per weight; arithmetic), when known.
    pub optimizer_bytes: Option<u64>,
}

/// The memory model of a search that found `max` against `capacity`: the line
/// [`search::fit`](crate::search::fit) chooses through the sizes that fit below the
/// maximum, checked against the maximum's own measurement. `None` without two sizes below
/// the maximum or a measured peak at it.
pub fn memory_model(
    trials: &[Trial],
    max: usize,
    capacity: u64,
    model: &ModelInfo,
    optimizer: Option<OptimizerKind>,
) -> Option<MemoryModel> {
    let below: Vec<Trial> = trials
        .iter()
        .filter(|t| t.fits() && t.batch_size < max)
        .cloned()
        .collect();
    let fit = crate::search::fit(&below, &|t: &Trial| t.fits(), capacity)?;
    let measured = trial::fitting_trial(trials, max)?.peak_bytes?;
    let line = fit.line;
    let (slope, fixed, predicted) = (line.slope, line.fixed(), line.at(max));
    let fitted_through = match fit.through {
        Through::Peaks => None,
        Through::Phase(k) => below
            .iter()
            .find_map(|t| t.phase_peaks.get(k).map(|p| p.phase)),
    };
    let weights = model.weight_bytes();
    let copies = optimizer.map(|o| o.state_copies());
    Some(MemoryModel {
        fixed_bytes: fixed.max(0.0) as u64,
        bytes_per_sample: slope.max(0.0) as u64,
        fitted_from: [line.from.0, line.to.0],
        fitted_through,
        predicted_peak_bytes: predicted.max(0.0) as u64,
        measured_peak_bytes: measured,
        relative_error: (predicted - measured as f64) / measured as f64,
        weights_bytes: weights,
        gradients_bytes: weights,
        optimizer_bytes: weights.zip(copies).map(|(w, c)| w * c),
    })
}

/// How much one step's time varies ((slowest − fastest) / mean) when nothing else tells: a
/// trial of one step has no spread of its own. Measured: one step of transformer-small at
/// batch sizes 1 to 3 ranged over 28–34% of its mean across five runs of the README's
/// command on a 2-core machine (docs/design.md).
pub const ONE_STEP_NOISE: f64 = 0.35;

/// Samples per second of a trial that fit, and how much its step time varied (its own
/// spread where it timed at least two steps after the first, else [`ONE_STEP_NOISE`]).
/// `None` for a trial of one step: its time includes touching memory for the first time,
/// which the search's largest trials pay and the sizes run after them do not, so a note
/// from it would only repeat the order the trials ran in.
fn rate(t: &Trial) -> Option<(f64, f64)> {
    if t.step_times.len() < 2 {
        return None;
    }
    let rate = t
        .step_seconds
        .filter(|_| t.fits())
        .and_then(|s| trial::samples_per_second(t.batch_size, s))?;
    Some((rate, t.timing_spread().unwrap_or(ONE_STEP_NOISE)))
}

/// A note when a reported size below the maximum `max` (the largest power of two, the
/// recommended size: `reported`) trained more samples per second than the maximum by more
/// than either's step time varies: an epoch then takes less time at that size, and the
/// maximum saves only optimizer steps. Sizes the report does not give are not compared,
/// and a difference within the noise says nothing.
pub fn throughput_note(trials: &[Trial], max: usize, reported: &[usize]) -> Option<String> {
    let (at_max, max_noise) = trial::fitting_trial(trials, max).and_then(rate)?;
    let (size, best, noise) = reported
        .iter()
        .filter(|&&b| b < max)
        .filter_map(|&b| {
            let (rate, noise) = trial::fitting_trial(trials, b).and_then(rate)?;
            Some((b, rate, noise.max(max_noise)))
        })
        .filter(|&(_, rate, noise)| rate > at_max * (1.0 + noise))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    Some(format!(
        "batch size {size} trained {} samples/s, {:.0}% more than the maximum's {}, beyond \
         the {:.0}% its step time varies: an epoch takes less time at {size}; the maximum \
         saves only optimizer steps",
        crate::format::rate(best),
        (best / at_max - 1.0) * 100.0,
        crate::format::rate(at_max),
        noise * 100.0
    ))
}
