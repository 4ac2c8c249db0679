//! Every line maxbatch fits through measured peaks, and the policies that choose them: the
//! guided search's prediction ([`fit`]), which the report's memory model shows too, and the
//! conservative extrapolation that keeps CPU trials from exhausting the machine
//! ([`conservative_peak`]). Pure arithmetic, no candle.

use super::Measured;

/// A straight line through two measured `(batch_size, peak_bytes)` points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    /// The smaller batch size's point.
    pub from: (usize, u64),
    /// The larger batch size's point.
    pub to: (usize, u64),
    /// Bytes per sample between them.
    pub slope: f64,
}

impl Line {
    /// The line through the largest point and the largest one at most half its batch size
    /// (or the smallest), so that it spans enough of the curve for noise not to tilt it.
    /// `None` without two distinct batch sizes.
    pub fn spanning(points: Vec<(usize, u64)>) -> Option<Line> {
        let points = by_size(points);
        let &to = points.last()?;
        let &from = points
            .iter()
            .rev()
            .find(|(b, _)| 2 * b <= to.0)
            .or_else(|| points.first().filter(|(b, _)| *b < to.0))?;
        Some(Line::between(from, to))
    }

    /// The line through the two largest points (the local slope at the top). `None`
    /// without two distinct batch sizes.
    pub fn through_largest(points: Vec<(usize, u64)>) -> Option<Line> {
        let [.., from, to] = by_size(points)[..] else {
            return None;
        };
        Some(Line::between(from, to))
    }

    /// The line through the largest point and the largest one at most nine tenths of its
    /// batch size: the local slope at the top of the measurements, over a span wide enough
    /// to show it (two neighbouring sizes, such as the answer and the size after it, do not).
    /// `None` without such a pair.
    pub fn near_top(points: Vec<(usize, u64)>) -> Option<Line> {
        let points = by_size(points);
        let &to = points.last()?;
        let &from = points.iter().rev().find(|(b, _)| 10 * b <= 9 * to.0)?;
        Some(Line::between(from, to))
    }

    /// The line through two points of different batch sizes, `from` the smaller.
    fn between(from: (usize, u64), to: (usize, u64)) -> Line {
        let slope = (to.1 as f64 - from.1 as f64) / (to.0 - from.0) as f64;
        Line { from, to, slope }
    }

    /// The line's bytes at batch size 0.
    pub fn fixed(&self) -> f64 {
        self.to.1 as f64 - self.slope * self.to.0 as f64
    }

    /// The line's bytes at `batch_size`.
    pub fn at(&self, batch_size: usize) -> f64 {
        self.fixed() + self.slope * batch_size as f64
    }
}

/// `points` in batch-size order, one per batch size.
pub(crate) fn by_size(mut points: Vec<(usize, u64)>) -> Vec<(usize, u64)> {
    points.sort_unstable();
    points.dedup_by_key(|p| p.0);
    points
}

/// How far a prediction may reach beyond the measured sizes and still be trusted: the
/// distance from the line's smaller size to the prediction, in multiples of the distance
/// between the line's two sizes. Noise in the two peaks grows by this factor at the
/// prediction; beyond it the guided search aims short of the prediction.
pub(crate) const TRUSTED_REACH: f64 = 4.0;

/// Which measurements a fitted line runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Through {
    /// The trials' overall peaks.
    Peaks,
    /// The peaks at the `k`-th phase boundary of the trials' first step.
    Phase(usize),
}

/// The line a prediction is made with, and where it meets the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// The line.
    pub line: Line,
    /// What it was fitted through.
    pub through: Through,
    /// The largest batch size at which the line stays at or under the threshold.
    pub predicted: usize,
}

/// The line through the measured sizes that passed `is_good` that predicts where the peak
/// meets `threshold`, and that prediction. The line runs through the two largest sizes when
/// the prediction is within their reach (so it follows a bend or a step below them), else
/// through the largest and the largest at most half of it (so noise in two close peaks does
/// not tilt a long extrapolation). Where trials report the peak at each phase boundary, each
/// boundary gets such a line too and the earliest prediction wins: the peak is the largest
/// of the phases' peaks, and a phase that grows faster (the backward pass) overtakes one
/// that sets the peak at small sizes (the optimizer's transient). `None` without two such
/// sizes or with lines that do not rise. A boundary's line runs through every trial that
/// measured that boundary, those that failed included (their boundaries before the stop are
/// exact measurements); the overall line only through those that passed.
pub fn fit<T: Measured>(trials: &[T], is_good: &dyn Fn(&T) -> bool, threshold: u64) -> Option<Fit> {
    point_sets(trials, is_good)
        .into_iter()
        .filter_map(|(through, points)| fit_points(points, threshold, through))
        .min_by_key(|fit| fit.predicted)
}

/// The points each line is drawn through: the overall peaks of the sizes that passed
/// `is_good`, then each phase boundary's peaks. A boundary's peak is measured whatever the
/// outcome (a trial stopped over the capacity after its backward pass measured its forward
/// and backward boundaries, points near the answer), so those come from every trial that ran.
fn point_sets<T: Measured>(
    trials: &[T],
    is_good: &dyn Fn(&T) -> bool,
) -> Vec<(Through, Vec<(usize, u64)>)> {
    let phases = trials
        .iter()
        .map(|t| t.phase_peaks().len())
        .max()
        .unwrap_or(0);
    let mut sets = vec![(Through::Peaks, measured_points(trials, is_good))];
    sets.extend((0..phases).map(|k| {
        let points = points_of(trials, &|t: &T| t.ran(), |t| {
            t.phase_peaks().get(k).copied()
        });
        (Through::Phase(k), points)
    }));
    sets
}

/// `line` with where it meets `threshold`, if it rises.
fn rising(line: Line, through: Through, threshold: u64) -> Option<Fit> {
    (line.slope > 0.0).then(|| Fit {
        line,
        through,
        predicted: line.meets(threshold),
    })
}

/// Where [`fit`]'s line meets `threshold`.
pub fn predict_at<T: Measured>(
    trials: &[T],
    is_good: &dyn Fn(&T) -> bool,
    threshold: u64,
) -> Option<usize> {
    fit(trials, is_good, threshold).map(|fit| fit.predicted)
}

/// `(batch_size, peak)` of every trial that passed `is_good` and has a peak.
pub(crate) fn measured_points<T: Measured>(
    trials: &[T],
    is_good: &dyn Fn(&T) -> bool,
) -> Vec<(usize, u64)> {
    points_of(trials, is_good, |t| t.peak())
}

/// `(batch_size, bytes)` of every trial that passed `is_good` and has `bytes`, one per size.
fn points_of<T: Measured>(
    trials: &[T],
    is_good: &dyn Fn(&T) -> bool,
    bytes: impl Fn(&T) -> Option<u64>,
) -> Vec<(usize, u64)> {
    let points = trials
        .iter()
        .filter(|t| is_good(t))
        .filter_map(|t| Some((t.batch_size(), bytes(t)?)))
        .collect();
    by_size(points)
}

/// A line through `points` and where it meets `threshold`, as [`fit`] chooses it.
fn fit_points(points: Vec<(usize, u64)>, threshold: u64, through: Through) -> Option<Fit> {
    let rising = |line: Line| rising(line, through, threshold);
    let top = Line::through_largest(points.clone()).and_then(rising);
    if let Some(fit) = top {
        if fit.line.reach(fit.predicted) <= TRUSTED_REACH {
            return top;
        }
    }
    Line::spanning(points).and_then(rising)
}

impl Line {
    /// How far `batch_size` lies beyond the line's smaller size, in multiples of the
    /// distance between its two sizes: the factor by which noise in their peaks grows there.
    pub fn reach(&self, batch_size: usize) -> f64 {
        batch_size.saturating_sub(self.from.0) as f64 / (self.to.0 - self.from.0) as f64
    }

    /// The largest batch size at which the line stays at or under `threshold` (the line
    /// must rise).
    pub fn meets(&self, threshold: u64) -> usize {
        to_size(self.to.0 as f64 + (threshold as f64 - self.to.1 as f64) / self.slope)
    }
}

/// A batch size from a real number: rounded down, never negative, never absurd.
pub(crate) fn to_size(x: f64) -> usize {
    x.floor().max(0.0).min(usize::MAX as f64 / 2.0) as usize
}

/// A conservative extrapolation of the peak at `batch_size` from `(batch_size, peak_bytes)`
/// measurements: the CPU guard's, which refuses sizes that would exhaust the machine before
/// they run. It errs high: the line goes through the largest measured size with the steeper
/// of two slopes, the one between the two largest sizes (the memory curve bends upwards
/// where the optimizer step's transient overtakes the backward pass, see docs/design.md) and
/// the one spanning the measurements. Slopes between small sizes are not used: a fixed cost
/// that appears between batch 1 and 2 (6 MiB of matrix-multiply buffers on the MLP) would
/// pass for a slope and refuse sizes that fit by a factor of forty.
///
/// With one measurement the peak is taken as proportional to the batch size (the fixed
/// part scales too, so this overestimates). Below the largest measured size the answer is
/// the peak of the nearest measured size at or above it. `None` without measurements.
pub fn conservative_peak(measured: &[(usize, u64)], batch_size: usize) -> Option<u64> {
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

/// How a line is drawn through measured points: [`Line::through_largest`],
/// [`Line::spanning`] or [`Line::near_top`].
pub type LineRule = fn(Vec<(usize, u64)>) -> Option<Line>;

/// The line drawn by `rule` through each phase boundary's measured peaks and through the
/// overall peaks that meets `threshold` earliest, and where. The plans of `--plan-for`
/// draw it both ways: far beyond the measurements the two differ by what curvature between
/// the measured sizes can do there. `None` without two measured sizes.
pub fn earliest_line<T: Measured>(
    trials: &[T],
    is_good: &dyn Fn(&T) -> bool,
    threshold: u64,
    rule: LineRule,
) -> Option<Fit> {
    point_sets(trials, is_good)
        .into_iter()
        .filter_map(|(through, points)| rising(rule(points)?, through, threshold))
        .min_by_key(|fit| fit.predicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_measured_predicts_nothing() {
        assert_eq!(conservative_peak(&[], 4), None);
    }

    #[test]
    fn one_point_scales_proportionally() {
        assert_eq!(conservative_peak(&[(2, 100)], 8), Some(400));
    }

    #[test]
    fn a_straight_line_is_extended_exactly() {
        let line = |b: usize| 1000 + 300 * b as u64;
        let measured: Vec<_> = [1, 2, 4, 8].iter().map(|&b| (b, line(b))).collect();
        for b in 9..100 {
            assert_eq!(conservative_peak(&measured, b), Some(line(b)));
        }
    }

    #[test]
    fn a_bending_curve_uses_the_steepest_slope() {
        // The backward line then a steeper optimizer line, as on transformer-small.
        let measured = [(1, 1000), (2, 1100), (4, 1700)];
        assert_eq!(conservative_peak(&measured, 6), Some(1700 + 2 * 300));
    }

    #[test]
    fn a_fixed_cost_between_small_sizes_is_not_a_slope() {
        // The MLP on the CPU: batch 2 adds 6 MiB of buffers, then 70 KiB per sample.
        let mib = 1u64 << 20;
        let mut measured = vec![(1, 100 * mib)];
        for b in [2usize, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            measured.push((b, 106 * mib + 70 * 1024 * b as u64));
        }
        let at_8192 = conservative_peak(&measured, 8192).unwrap();
        let truth = 106 * mib + 70 * 1024 * 8192;
        assert!(at_8192 >= truth && at_8192 < truth + mib, "{at_8192}");
    }

    #[test]
    fn never_below_the_measurement_it_extends() {
        let measured = [(1, 5000), (2, 4000)];
        assert_eq!(conservative_peak(&measured, 3), Some(4000));
    }

    #[test]
    fn inside_the_measured_range_takes_the_next_measurement_up() {
        let measured = [(2, 200), (8, 800)];
        assert_eq!(conservative_peak(&measured, 1), Some(200));
        assert_eq!(conservative_peak(&measured, 5), Some(800));
        assert_eq!(conservative_peak(&measured, 8), Some(800));
    }
}
