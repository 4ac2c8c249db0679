//! What the measurements say beyond the sizes: the memory model (the search's line, a
//! breakdown from the parameter count, and how well the line predicted the maximum) and
//! throughput (which size trains the most samples per second). Pure arithmetic over the
//! trials.

use serde::{Deserialize, Serialize};

use crate::models::generation::KV_CACHE_PART;
use crate::models::{ModelInfo, StepMode};
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
    /// The gradients: as many bytes as the trained weights (arithmetic), when known.
    pub gradients_bytes: Option<u64>,
    /// The optimizer's state (AdamW: two moments per weight; arithmetic), when known.
    pub optimizer_bytes: Option<u64>,
    /// A line per phase boundary through the peaks so far when that phase ended, over every
    /// size that fit: where the bytes per sample arise (empty for a step without
    /// boundaries).
    #[serde(default)]
    pub phases: Vec<PhaseLine>,
    /// The phase that set the peak at the smallest size that fit, and that size.
    #[serde(default)]
    pub smallest_set_by: Option<(usize, Phase)>,
    /// The phase that set the peak at the maximum.
    #[serde(default)]
    pub max_set_by: Option<Phase>,
    /// Bytes per sample by where they are held (the parts of the forward pass, then the
    /// backward pass), between the two sizes the line runs through; empty where the trials
    /// do not record parts (CUDA, a caller's own step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartBytes>,
}

/// What one part of a step holds per sample (see [`Trial::held_by_part`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartBytes {
    /// "inputs", "embeddings", "blocks", "logits and loss", "backward pass", ….
    pub part: String,
    /// Bytes each sample adds to it (negative: it shrinks, e.g. a buffer reused).
    pub bytes_per_sample: i64,
}

/// Each part's bytes per sample between the trials at `sizes` (both fit and recorded the
/// same parts), in the order the step went through them.
fn part_bytes(trials: &[Trial], [from, to]: [usize; 2]) -> Vec<PartBytes> {
    let parts = |b: usize| trial::fitting_trial(trials, b).map(|t| &t.held_by_part);
    let (Some(small), Some(large)) = (parts(from), parts(to)) else {
        return Vec::new();
    };
    let same = small.len() == large.len() && small.iter().zip(large).all(|(a, b)| a.part == b.part);
    if !same || to <= from {
        return Vec::new();
    }
    small
        .iter()
        .zip(large)
        .map(|(a, b)| PartBytes {
            part: a.part.clone(),
            bytes_per_sample: (b.bytes as i64 - a.bytes as i64) / (to - from) as i64,
        })
        .collect()
}

/// The peak so far when one phase of a step ended: ≈ fixed + per sample × batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseLine {
    /// The phase that had just ended.
    pub phase: Phase,
    /// Bytes at batch size 0 on the line.
    pub fixed_bytes: u64,
    /// Bytes each sample adds by the end of this phase (cumulative: the backward pass's
    /// line includes what the forward pass keeps).
    pub bytes_per_sample: u64,
}

/// The lines through each phase boundary's peaks over the trials that fit.
fn phase_lines(trials: &[Trial]) -> Vec<PhaseLine> {
    let fitted: Vec<&Trial> = trials.iter().filter(|t| t.fits()).collect();
    let phases = fitted
        .iter()
        .map(|t| t.phase_peaks.len())
        .max()
        .unwrap_or(0);
    (0..phases)
        .filter_map(|k| {
            let points: Vec<(usize, u64)> = fitted
                .iter()
                .filter_map(|t| Some((t.batch_size, t.phase_peaks.get(k)?.peak_bytes)))
                .collect();
            let phase = trial::phase_of(trials, Through::Phase(k))?;
            let line = crate::search::Line::spanning(points)?;
            Some(PhaseLine {
                phase,
                fixed_bytes: line.fixed().max(0.0) as u64,
                bytes_per_sample: line.slope.max(0.0) as u64,
            })
        })
        .collect()
}

/// The phase whose boundary first reached the trial's peak: the one that set it.
fn set_by(t: &Trial) -> Option<Phase> {
    let peak = t.phase_peaks.last()?.peak_bytes;
    t.phase_peaks
        .iter()
        .find(|p| p.peak_bytes == peak)
        .map(|p| p.phase)
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
    let fitted_through = trial::phase_of(&below, fit.through);
    // Gradients and optimizer state exist for the trained parameters only (all of them,
    // or LoRA's adapters), in the weights' dtype.
    let weights = model.weight_bytes();
    let trained = model.trained_bytes();
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
        gradients_bytes: trained,
        optimizer_bytes: trained.zip(copies).map(|(w, c)| w * c),
        phases: phase_lines(trials),
        smallest_set_by: trials
            .iter()
            .filter(|t| t.fits())
            .min_by_key(|t| t.batch_size)
            .and_then(|t| Some((t.batch_size, set_by(t)?))),
        max_set_by: trial::fitting_trial(trials, max).and_then(set_by),
        parts: part_bytes(trials, [line.from.0, line.to.0]),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trial::{Outcome, PhasePeak};

    /// A trial whose boundaries peak as the MLP's do: the update's flat transient first, the
    /// backward pass (70 a sample) overtaking it from batch size 1,000.
    fn mlp_like(b: usize) -> Trial {
        let (forward, backward, update) = (
            40_000 + 40 * b as u64,
            49_000 + 70 * b as u64,
            119_000 + 10 * b as u64,
        );
        let boundaries = [
            (Phase::Forward, forward),
            (Phase::Backward, backward.max(forward)),
            (Phase::Update, update.max(backward)),
        ];
        Trial {
            peak_bytes: Some(update.max(backward)),
            phase_peaks: boundaries
                .iter()
                .map(|&(phase, peak_bytes)| PhasePeak { phase, peak_bytes })
                .collect(),
            steps: 1,
            ..Trial::new(b, Outcome::Fits)
        }
    }

    #[test]
    fn the_phases_say_where_the_bytes_per_sample_arise_and_who_set_the_peak() {
        let trials: Vec<Trial> = [1, 7, 2000, 2500, 3000].into_iter().map(mlp_like).collect();
        let lines = phase_lines(&trials);
        let slopes: Vec<(Phase, u64)> = lines
            .iter()
            .map(|l| (l.phase, l.bytes_per_sample))
            .collect();
        assert_eq!(slopes[..2], [(Phase::Forward, 40), (Phase::Backward, 70)]);
        // The update adds nothing a sample: its boundary's line (through the bend, where the
        // backward pass takes over the peak) rises no faster than the backward pass's.
        assert_eq!(slopes[2].0, Phase::Update);
        assert!(slopes[2].1 <= 70, "{slopes:?}");
        assert_eq!(set_by(&trials[0]), Some(Phase::Update));
        assert_eq!(set_by(&trials[4]), Some(Phase::Backward));
    }
}

/// A generation's figures: its KV cache (the arithmetic from the config, and the bytes a CPU
/// trial counted between the memory model's two sizes) and the prefill and decode
/// throughput of the trial at the maximum, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The KV cache's bytes per sequence: arithmetic from the config.
    pub kv_cache_bytes_per_sequence: u64,
    /// The same bytes as a CPU trial counted them (`None` on CUDA, or without two sizes).
    #[serde(default)]
    pub kv_cache_measured_bytes_per_sequence: Option<u64>,
    /// The batch size the throughput was measured at: the maximum.
    pub batch_size: usize,
    /// Prompt tokens prefilled per second, all sequences together.
    #[serde(default)]
    pub prefill_tokens_per_second: Option<f64>,
    /// Tokens decoded per second, all sequences together.
    #[serde(default)]
    pub decode_tokens_per_second: Option<f64>,
}

/// A generation's figures (`None` for any other mode, or when the maximum did not run).
pub fn generation(
    mode: StepMode,
    model: &ModelInfo,
    trials: &[Trial],
    max: usize,
    memory_model: Option<&MemoryModel>,
) -> Option<Generation> {
    let StepMode::Generate {
        prompt_len,
        new_tokens,
    } = mode
    else {
        return None;
    };
    let at_max = trial::fitting_trial(trials, max)?;
    let rate = |phase: Phase, tokens: usize| {
        at_max
            .phase_duration(phase)
            .filter(|&s| s > 0.0)
            .map(|s| (max * tokens) as f64 / s)
    };
    Some(Generation {
        kv_cache_bytes_per_sequence: model.kv_cache_bytes_per_token?
            * (prompt_len + new_tokens) as u64,
        kv_cache_measured_bytes_per_sequence: memory_model.and_then(|m| {
            let part = m.parts.iter().find(|p| p.part == KV_CACHE_PART)?;
            u64::try_from(part.bytes_per_sample).ok()
        }),
        batch_size: max,
        prefill_tokens_per_second: rate(Phase::Prefill, prompt_len),
        decode_tokens_per_second: rate(Phase::Decode, new_tokens),
    })
}
