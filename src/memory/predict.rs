//! Conservative extrapolation of peak memory from measured trials: pure arithmetic.
//!
//! Used on the CPU to refuse sizes that would exhaust the machine before they run. It
//! errs high: the line goes through the largest measured size with the steeper of two
//! slopes, the one between the two largest sizes (the memory curve bends upwards where the
//! optimizer step's transient overtakes the backward pass, see DESIGN.md) and the one
//! spanning the measurements. Slopes between small sizes are not used: a fixed cost that
//! appears between batch 1 and 2 (6 MiB of matrix-multiply buffers on the MLP) would pass
//! for a slope and refuse sizes that fit by a factor of forty.

use crate::search::{by_size, Line};

/// Predicts the peak bytes at `batch_size` from `(batch_size, peak_bytes)` measurements.
///
/// With one measurement the peak is taken as proportional to the batch size (the fixed
/// part scales too, so this overestimates). Below the largest measured size the answer is
/// the peak of the nearest measured size at or above it. `None` without measurements.
pub fn predicted_peak(measured: &[(usize, u64)], batch_size: usize) -> Option<u64> {
    let points = by_size(measured.iter().copied().filter(|p| p.0 > 0).collect());
    let &(last_batch, last_peak) = points.last()?;
    if batch_size <= last_batch {
        return points
            .iter()
            .find(|(b, _)| *b >= batch_size)
            .map(|(_, peak)| *peak);
    }
    let slope = match (
        Line::through_largest(points.clone()),
        Line::spanning(points),
    ) {
        (Some(top), Some(spanning)) => top.slope.max(spanning.slope).max(0.0),
        _ => last_peak as f64 / last_batch as f64,
    };
    let extra = slope * (batch_size - last_batch) as f64;
    Some((last_peak as f64 + extra).min(u64::MAX as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_measured_predicts_nothing() {
        assert_eq!(predicted_peak(&[], 4), None);
    }

    #[test]
    fn one_point_scales_proportionally() {
        assert_eq!(predicted_peak(&[(2, 100)], 8), Some(400));
    }

    #[test]
    fn a_straight_line_is_extended_exactly() {
        let line = |b: usize| 1000 + 300 * b as u64;
        let measured: Vec<_> = [1, 2, 4, 8].iter().map(|&b| (b, line(b))).collect();
        for b in 9..100 {
            assert_eq!(predicted_peak(&measured, b), Some(line(b)));
        }
    }

    #[test]
    fn a_bending_curve_uses_the_steepest_slope() {
        // The backward line then a steeper optimizer line, as on transformer-small.
        let measured = [(1, 1000), (2, 1100), (4, 1700)];
        assert_eq!(predicted_peak(&measured, 6), Some(1700 + 2 * 300));
    }

    #[test]
    fn a_fixed_cost_between_small_sizes_is_not_a_slope() {
        // The MLP on the CPU: batch 2 adds 6 MiB of buffers, then 70 KiB per sample.
        let mib = 1u64 << 20;
        let mut measured = vec![(1, 100 * mib)];
        for b in [2usize, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            measured.push((b, 106 * mib + 70 * 1024 * b as u64));
        }
        let at_8192 = predicted_peak(&measured, 8192).unwrap();
        let truth = 106 * mib + 70 * 1024 * 8192;
        assert!(at_8192 >= truth && at_8192 < truth + mib, "{at_8192}");
    }

    #[test]
    fn never_below_the_measurement_it_extends() {
        let measured = [(1, 5000), (2, 4000)];
        assert_eq!(predicted_peak(&measured, 3), Some(4000));
    }

    #[test]
    fn inside_the_measured_range_takes_the_next_measurement_up() {
        let measured = [(2, 200), (8, 800)];
        assert_eq!(predicted_peak(&measured, 1), Some(200));
        assert_eq!(predicted_peak(&measured, 5), Some(800));
        assert_eq!(predicted_peak(&measured, 8), Some(800));
    }
}
