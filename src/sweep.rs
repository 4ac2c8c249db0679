//! A sequence-length sweep (`--seq-len 128,256,512`): one search per length, each length's
//! first trial steered by the lengths measured before it, and the table people size
//! token-budget batching by (tokens per batch = batch size × length).
//!
//! Pure arithmetic: the searches themselves run as any other.

use serde::{Deserialize, Serialize};

use crate::report::Report;
use crate::sizes::Sizes;

/// One length's answer and its full report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepEntry {
    /// Tokens per sample.
    pub seq_len: usize,
    /// The sizes at this length (JSON: `max_batch_size`, `largest_power_of_two`,
    /// `recommended_batch_size`).
    #[serde(flatten, with = "crate::sizes::measured_keys")]
    pub sizes: Sizes,
    /// Tokens in one batch at the maximum: `sizes.max × seq_len`.
    pub tokens_per_batch: u64,
    /// The length's whole report.
    pub report: Report,
}

impl SweepEntry {
    /// The entry of the search at `seq_len` that gave `report`.
    pub fn new(seq_len: usize, report: Report) -> Self {
        Self {
            seq_len,
            sizes: report.sizes,
            tokens_per_batch: report.sizes.max as u64 * seq_len as u64,
            report,
        }
    }
}

/// The whole sweep (its JSON is `{"sweep": [entry, …]}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    /// One entry per length, in the order searched.
    pub sweep: Vec<SweepEntry>,
}

/// A length already searched and the slope of the line fitted there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredLength {
    /// Tokens per sample.
    pub seq_len: usize,
    /// The line's bytes per sample.
    pub bytes_per_sample: u64,
}

/// How much above the estimate from the measured lengths a hint is: room for a curve that
/// is not exactly linear plus square in the length.
const HINT_ROOM: f64 = 1.05;

/// An estimate, on the high side, of the bytes each sample adds at `seq_len`, from the
/// lengths measured so far: the guided search's first jump at that length goes where it
/// meets the capacity, so that a sweep's later lengths skip the short jump a search from
/// scratch makes. Per sample, a decoder's bytes grow with the length (activations) and its
/// square (attention scores), `a·L + b·L²` with `a, b ≥ 0`. From the nearest measured length
/// alone, scaling by the length ratio squared bounds the growth going longer, and by the
/// ratio itself going shorter; with two measured lengths the curve through them is used,
/// kept within those bounds. `None` before any length is measured.
pub fn bytes_per_sample_hint(measured: &[MeasuredLength], seq_len: usize) -> Option<u64> {
    let nearest = nearest(measured, seq_len).filter(|m| m.bytes_per_sample > 0)?;
    let ratio = seq_len as f64 / nearest.seq_len.max(1) as f64;
    let per_sample = nearest.bytes_per_sample as f64;
    let (linear, square) = (per_sample * ratio, per_sample * ratio * ratio);
    let (low, high) = (linear.min(square), linear.max(square));
    let curve = measured
        .iter()
        .filter(|m| m.seq_len != nearest.seq_len && m.bytes_per_sample > 0)
        .min_by_key(|m| m.seq_len.abs_diff(seq_len))
        .and_then(|other| through(nearest, other))
        .map(|(a, b)| a * seq_len as f64 + b * (seq_len * seq_len) as f64);
    let estimate = curve.map_or(high, |c| c.clamp(low, high));
    Some((estimate * HINT_ROOM).ceil() as u64)
}

/// The curve `a·L + b·L²` through two measured lengths' bytes per sample.
fn through(p: &MeasuredLength, q: &MeasuredLength) -> Option<(f64, f64)> {
    let (l1, l2) = (p.seq_len as f64, q.seq_len as f64);
    let (y1, y2) = (p.bytes_per_sample as f64, q.bytes_per_sample as f64);
    let det = l1 * l2 * l2 - l2 * l1 * l1;
    if det == 0.0 {
        return None;
    }
    let a = (y1 * l2 * l2 - y2 * l1 * l1) / det;
    let b = (l1 * y2 - l2 * y1) / det;
    Some((a, b))
}

/// Of the lengths measured so far, the one nearest `seq_len`.
pub fn nearest(measured: &[MeasuredLength], seq_len: usize) -> Option<&MeasuredLength> {
    measured.iter().min_by_key(|m| m.seq_len.abs_diff(seq_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq_len: usize, per_sample: u64) -> MeasuredLength {
        MeasuredLength {
            seq_len,
            bytes_per_sample: per_sample,
        }
    }

    /// Bytes per sample of a decoder at `len` tokens: a linear part and attention's square.
    fn decoder(len: usize, linear: f64, square: f64) -> f64 {
        linear * len as f64 + square * (len * len) as f64
    }

    #[test]
    fn the_hint_is_never_below_the_true_bytes_per_sample_of_a_decoder() {
        let lengths = [64, 128, 256, 512, 1024, 2048];
        for (linear, square) in [(1e5, 0.0), (1e5, 50.0), (1e3, 400.0), (0.0, 300.0)] {
            let at = |len: usize| line(len, decoder(len, linear, square) as u64);
            for (i, &to) in lengths.iter().enumerate() {
                let truth = decoder(to, linear, square);
                for &from in lengths.iter().filter(|&&l| l != to) {
                    let one = bytes_per_sample_hint(&[at(from)], to).unwrap() as f64;
                    assert!(
                        one >= truth,
                        "{from}→{to} ({linear}, {square}): {one} < {truth}"
                    );
                }
                // Two lengths before it: the curve through them, with 5% room.
                if i >= 2 {
                    let two = [at(lengths[i - 2]), at(lengths[i - 1])];
                    let hint = bytes_per_sample_hint(&two, to).unwrap() as f64;
                    assert!(
                        hint >= truth && hint <= truth * 1.06,
                        "{to}: {hint} vs {truth}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_measured_length_no_hint() {
        assert_eq!(bytes_per_sample_hint(&[], 256), None);
        assert_eq!(bytes_per_sample_hint(&[line(128, 0)], 256), None);
        // 1 MiB per sample at 128 tokens: at most 4 MiB at 256, at least 0.5 MiB at 64.
        let one = [line(128, 1 << 20)];
        assert_eq!(
            bytes_per_sample_hint(&one, 256),
            Some(((4u64 << 20) as f64 * 1.05).ceil() as u64)
        );
        assert_eq!(
            bytes_per_sample_hint(&one, 64),
            Some(((1u64 << 19) as f64 * 1.05).ceil() as u64)
        );
    }

    #[test]
    fn the_nearest_measured_length_steers() {
        let measured = vec![line(128, 1), line(512, 2)];
        assert_eq!(nearest(&measured, 256).map(|m| m.seq_len), Some(128));
        assert_eq!(nearest(&measured, 400).map(|m| m.seq_len), Some(512));
        assert!(nearest(&[], 400).is_none());
    }
}
