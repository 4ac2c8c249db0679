//! A sequence-length sweep (`--seq-len 128,256,512`): one search per length, each length's
//! first trial steered by the lengths measured before it, and the table people size
//! token-budget batching by (tokens per batch = batch size × length).
//!
//! Pure arithmetic: the searches themselves run as any other.

use serde::{Deserialize, Serialize};

use crate::report::Report;

/// One length's answer and its full report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepEntry {
    /// Tokens per sample.
    pub seq_len: usize,
    /// The largest batch size that fit at this length.
    pub max_batch_size: usize,
    /// The largest power of two at most the maximum.
    pub largest_power_of_two: usize,
    /// The recommended size (`None` when no size leaves the margin free).
    pub recommended_batch_size: Option<usize>,
    /// Tokens in one batch at the maximum: `max_batch_size × seq_len`.
    pub tokens_per_batch: u64,
    /// The length's whole report.
    pub report: Report,
}

impl SweepEntry {
    /// The entry of the search at `seq_len` that gave `report`.
    pub fn new(seq_len: usize, report: Report) -> Self {
        Self {
            seq_len,
            max_batch_size: report.max_batch_size,
            largest_power_of_two: report.largest_power_of_two,
            recommended_batch_size: report.recommended_batch_size,
            tokens_per_batch: report.max_batch_size as u64 * seq_len as u64,
            report,
        }
    }
}

/// The whole sweep, as `--json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    /// One entry per length, in the order searched.
    pub sweep: Vec<SweepEntry>,
}

/// Below the size where a measured length's line, with its bytes per sample grown for the
/// new length, meets the capacity: room for what the growth bound cannot know (the batch's
/// fixed part at a new length).
const STEER_SHARE: f64 = 0.9;

/// A length already searched and the line fitted there: peak ≈ fixed + per sample × batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredLength {
    /// Tokens per sample.
    pub seq_len: usize,
    /// The line's bytes at batch size 0.
    pub fixed_bytes: u64,
    /// The line's bytes per sample.
    pub bytes_per_sample: u64,
}

/// The first batch size to try at `seq_len`, from the line fitted at a `measured` length,
/// against `capacity` bytes: a size that fits with room to spare, so that the search skips
/// batch size 1 and the first jump. Per sample, a decoder's activations grow with the
/// length and its attention scores with the length's square: going longer, the bytes per
/// sample are scaled by the square of the ratio (an upper bound); going shorter, by the
/// ratio itself (they shrink at least that much). 1 when the line says nothing (no bytes
/// per sample) or nothing fits.
pub fn steered_start(measured: &MeasuredLength, seq_len: usize, capacity: u64) -> usize {
    if measured.bytes_per_sample == 0 {
        return 1;
    }
    let ratio = seq_len as f64 / measured.seq_len.max(1) as f64;
    let growth = if ratio >= 1.0 { ratio * ratio } else { ratio };
    let per_sample = measured.bytes_per_sample as f64 * growth;
    let room = capacity as f64 - measured.fixed_bytes as f64;
    let start = (room / per_sample * STEER_SHARE).floor();
    if start.is_finite() && start >= 1.0 {
        start as usize
    } else {
        1
    }
}

/// Of the lengths measured so far (with their lines), the one nearest `seq_len`, whose line
/// steers its first trial.
pub fn nearest(measured: &[MeasuredLength], seq_len: usize) -> Option<&MeasuredLength> {
    measured.iter().min_by_key(|m| m.seq_len.abs_diff(seq_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq_len: usize, fixed: u64, per_sample: u64) -> MeasuredLength {
        MeasuredLength {
            seq_len,
            fixed_bytes: fixed,
            bytes_per_sample: per_sample,
        }
    }

    /// Bytes per sample of a decoder at `len` tokens: a linear part and attention's square.
    fn decoder(len: usize, linear: f64, square: f64) -> f64 {
        linear * len as f64 + square * (len * len) as f64
    }

    #[test]
    fn the_steered_start_fits_whatever_the_mix_of_linear_and_square_growth() {
        let capacity = 4u64 << 30;
        let fixed = 1u64 << 30;
        let lengths = [64, 128, 256, 512, 1024, 2048];
        for (linear, square) in [(1e5, 0.0), (1e5, 50.0), (1e3, 400.0), (0.0, 300.0)] {
            for &from in &lengths {
                let measured = line(from, fixed, decoder(from, linear, square) as u64);
                for &to in &lengths {
                    let start = steered_start(&measured, to, capacity);
                    let per_sample = decoder(to, linear, square);
                    let max = ((capacity - fixed) as f64 / per_sample).floor() as usize;
                    assert!(
                        start <= max.max(1),
                        "{from}→{to} ({linear}, {square}): start {start} > max {max}"
                    );
                    // It saves trials: at least half the way when only the linear part grows.
                    if square == 0.0 && to <= from {
                        assert!(start * 2 >= max, "{from}→{to}: {start} of {max}");
                    }
                }
            }
        }
    }

    #[test]
    fn nothing_fits_or_an_empty_line_start_at_one() {
        let capacity = 1u64 << 30;
        assert_eq!(
            steered_start(&line(128, 2 << 30, 1 << 20), 256, capacity),
            1
        );
        assert_eq!(steered_start(&line(128, 0, 0), 256, capacity), 1);
        // 1 GiB free, 1 MiB per sample at 128 tokens, 4 MiB at most at 256: 0.9 × 256.
        assert_eq!(steered_start(&line(128, 0, 1 << 20), 256, capacity), 230);
    }

    #[test]
    fn the_nearest_measured_length_steers() {
        let measured = vec![line(128, 0, 1), line(512, 0, 2)];
        assert_eq!(nearest(&measured, 256).map(|m| m.seq_len), Some(128));
        assert_eq!(nearest(&measured, 400).map(|m| m.seq_len), Some(512));
        assert!(nearest(&[], 400).is_none());
    }
}
