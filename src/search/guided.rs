//! The guided search: sizes chosen from the measured peaks, exact like the doubling search.

use super::{bisect, by_size, probe_error, Bounds, Found, Line, Measured, SearchError};

/// The guided search: `bounds.start`, then the sizes [`toward_threshold`] chooses from the
/// measured peaks against `capacity` (see [`Strategy::Guided`](super::Strategy::Guided)).
/// With a monotone probe its answer is the doubling search's exact maximum.
pub fn guided<T, E, P>(
    bounds: Bounds,
    capacity: u64,
    mut probe: P,
) -> Result<Found<T>, SearchError<T, E>>
where
    T: Measured,
    P: FnMut(usize) -> Result<T, E>,
{
    if bounds.start == 0 || bounds.max_batch < bounds.start {
        return Err(SearchError::InvalidBounds(bounds));
    }
    let mut trials = Vec::new();
    let first = match probe(bounds.start) {
        Ok(trial) => trial,
        Err(error) => return Err(probe_error(bounds.start, error, trials)),
    };
    let fits = first.fits();
    trials.push(first);
    let result = if fits {
        toward_threshold(
            bounds.start,
            None,
            bounds.max_batch,
            capacity,
            &mut probe,
            |t: &T| t.fits(),
            &mut trials,
        )
    } else {
        bisect(0, bounds.start, &mut probe, |t: &T| t.fits(), &mut trials)
    };
    match result {
        Ok(0) => Err(SearchError::NothingFits { trials }),
        Ok(max_batch_size) => Ok(Found {
            trials,
            max_batch_size,
        }),
        Err((batch_size, error)) => Err(probe_error(batch_size, error, trials)),
    }
}

/// How far a prediction may reach beyond the measured sizes and still be tried as it is:
/// the distance from the line's smaller size to the prediction, in multiples of the
/// distance between the line's two sizes. Noise in the two peaks grows by this factor at
/// the prediction; beyond it the search aims short (see [`SHORT_OF_PREDICTION`]).
const TRUSTED_REACH: f64 = 4.0;

/// The share of the way from the largest measured size to a far prediction that the
/// search aims at: a size that should fit with room to spare, measured close enough to the
/// answer for the next line to predict it exactly.
const SHORT_OF_PREDICTION: f64 = 0.75;

/// Why the guided search chose a size: it decides what the size's failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aim {
    /// The line's prediction, close enough to the measured sizes to be exact.
    Predicted,
    /// Short of a far prediction, or the largest size one measurement says is safe: it
    /// should fit with room to spare, so a failure is retried once before it is believed.
    WithRoom,
    /// The size after the one the line says is the answer: its failure ends the search.
    Next,
    /// Binary search (after a miss), or doubling while no failure is known.
    Bracket,
}

/// The largest size above `good` (which passed `is_good`) and below `bad` (which did not;
/// `None`: none known, up to `cap`) whose trial passes, guided by the measured peaks
/// meeting `threshold` bytes.
///
/// With one measured size it tries the largest size that one says is safe (peaks
/// proportional to the batch size, which overestimates them since part of the memory is
/// fixed): far enough for the line through the two to be accurate. With two or more, it
/// tries where a line through two measured sizes meets the threshold (see [`predict_at`]),
/// aiming short when that is far beyond them. A size that fits is refitted; when the line
/// says it is the answer, the size after it is tried, and it failing ends the search. A
/// prediction that fails is followed by one binary-search step; after three misses the rest
/// is binary search. A failure the measurements say cannot happen (a size aimed at with
/// room to spare, or the answer's boundary while the line says it fits) is tried once more,
/// so that a transient failure (a flaky size) does not decide the answer.
pub fn toward_threshold<T, E, P, G>(
    mut good: usize,
    mut bad: Option<usize>,
    cap: usize,
    threshold: u64,
    probe: &mut P,
    is_good: G,
    trials: &mut Vec<T>,
) -> Result<usize, (usize, E)>
where
    T: Measured,
    P: FnMut(usize) -> Result<T, E>,
    G: Fn(&T) -> bool,
{
    let mut misses = 0;
    let mut missed = false;
    let mut retried = false;
    loop {
        let upper = bad.unwrap_or(cap.saturating_add(1));
        if upper <= good + 1 {
            // The answer's boundary failed although the measured line says it fits: a
            // transient failure is worth one more trial before it decides the answer.
            let suspicious = bad == Some(good + 1)
                && trials
                    .iter()
                    .rev()
                    .find(|t| t.batch_size() == good + 1)
                    .is_some_and(|t| t.ran())
                && predict_at(trials, &is_good, threshold).is_some_and(|p| p > good);
            if retried || !suspicious {
                return Ok(good);
            }
            retried = true;
            let trial = probe(good + 1).map_err(|e| (good + 1, e))?;
            let passed = is_good(&trial);
            trials.push(trial);
            if !passed {
                return Ok(good);
            }
            good += 1;
            bad = None;
            continue;
        }
        if misses >= 3 {
            if let Some(bad) = bad {
                return bisect(good, bad, probe, is_good, trials);
            }
        }
        let (candidate, aim) = if missed || misses >= 3 {
            bracket_step(good, bad, upper)
        } else {
            next_size(trials, &is_good, threshold, good, bad, upper)
        };
        let trial = probe(candidate).map_err(|e| (candidate, e))?;
        let mut passed = is_good(&trial);
        let ran = trial.ran();
        trials.push(trial);
        if !passed && ran && aim == Aim::WithRoom && !retried {
            retried = true;
            let trial = probe(candidate).map_err(|e| (candidate, e))?;
            passed = is_good(&trial);
            trials.push(trial);
        }
        if passed {
            good = candidate;
            missed = false;
            if aim == Aim::Next {
                // The line said the size before was the answer: it undershot.
                misses += 1;
            }
        } else {
            bad = Some(candidate);
            missed = aim != Aim::Next;
            if matches!(aim, Aim::Predicted | Aim::WithRoom) {
                misses += 1;
            }
        }
    }
}

/// One step inside the bracket: its midpoint, or doubling while no failure is known.
fn bracket_step(good: usize, bad: Option<usize>, upper: usize) -> (usize, Aim) {
    let candidate = match bad {
        Some(bad) => good + (bad - good) / 2,
        None => good.saturating_mul(2).clamp(good + 1, upper - 1),
    };
    (candidate, Aim::Bracket)
}

/// The size the measurements point to, and why, strictly inside `(good, upper)`.
fn next_size<T: Measured>(
    trials: &[T],
    is_good: &dyn Fn(&T) -> bool,
    threshold: u64,
    good: usize,
    bad: Option<usize>,
    upper: usize,
) -> (usize, Aim) {
    let inside = |b: usize| b.clamp(good + 1, upper - 1);
    let Some((line, predicted)) = model_line(trials, is_good, threshold) else {
        // One measured size: the largest size it says is safe, if it has a peak.
        return match measured_points(trials, is_good).as_slice() {
            [point] if point.1 > 0 => (
                inside(to_size(proportional(*point, threshold))),
                Aim::WithRoom,
            ),
            _ => bracket_step(good, bad, upper),
        };
    };
    if predicted <= good {
        return (good + 1, Aim::Next);
    }
    if bad.is_some_and(|bad| predicted > bad) {
        // A size the line says fits has failed: the line is wrong up here.
        return bracket_step(good, bad, upper);
    }
    if reach(&line, predicted) <= TRUSTED_REACH {
        return (inside(predicted), Aim::Predicted);
    }
    let short = line.to.0 as f64 + SHORT_OF_PREDICTION * (predicted - line.to.0) as f64;
    (inside(to_size(short)), Aim::WithRoom)
}

/// The batch size at which peaks proportional to the batch size, through `point`, reach
/// `threshold`: a size that fits when the fixed part of the memory is not negative.
fn proportional(point: (usize, u64), threshold: u64) -> f64 {
    point.0 as f64 * threshold as f64 / point.1.max(1) as f64
}

/// `(batch_size, peak)` of every trial that passed `is_good` and has a peak.
fn measured_points<T: Measured>(trials: &[T], is_good: &dyn Fn(&T) -> bool) -> Vec<(usize, u64)> {
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

/// The line the search predicts with, as [`predict_at`] describes it, and where it meets
/// `threshold`.
fn model_line<T: Measured>(
    trials: &[T],
    is_good: &dyn Fn(&T) -> bool,
    threshold: u64,
) -> Option<(Line, usize)> {
    let phases = trials
        .iter()
        .filter(|t| is_good(t))
        .map(|t| t.phase_peaks().len())
        .max()
        .unwrap_or(0);
    let phase_lines = (0..phases).filter_map(|k| {
        let points = points_of(trials, is_good, |t| t.phase_peaks().get(k).copied());
        line_through(points, threshold)
    });
    let overall = line_through(measured_points(trials, is_good), threshold);
    overall
        .into_iter()
        .chain(phase_lines)
        .min_by_key(|(_, predicted)| *predicted)
}

/// A line through `points` and where it meets `threshold`: through the two largest when
/// that is within their reach, else the spanning line. `None` without two points or with a
/// line that does not rise.
fn line_through(points: Vec<(usize, u64)>, threshold: u64) -> Option<(Line, usize)> {
    let rising = |line: Line| (line.slope > 0.0).then(|| (line, line_meets(&line, threshold)));
    let top = Line::through_largest(points.clone()).and_then(rising);
    if let Some((line, predicted)) = top {
        if reach(&line, predicted) <= TRUSTED_REACH {
            return top;
        }
    }
    Line::spanning(points).and_then(rising)
}

/// How far `predicted` lies beyond the line's smaller size, in multiples of the distance
/// between its two sizes: the factor by which noise in their peaks grows at the prediction.
fn reach(line: &Line, predicted: usize) -> f64 {
    predicted.saturating_sub(line.from.0) as f64 / (line.to.0 - line.from.0) as f64
}

/// The largest batch size at which `line` stays at or under `threshold`.
fn line_meets(line: &Line, threshold: u64) -> usize {
    to_size(line.to.0 as f64 + (threshold as f64 - line.to.1 as f64) / line.slope)
}

fn to_size(x: f64) -> usize {
    x.floor().max(0.0).min(usize::MAX as f64 / 2.0) as usize
}

/// Where the search's line through the measured sizes that passed `is_good` meets
/// `threshold`: the largest batch size predicted to stay at or under it. The line runs
/// through the two largest sizes when the prediction is within their reach (so it follows
/// a bend or a step below them), else through the largest and the largest at most half of
/// it (so noise in two close peaks does not tilt a long extrapolation). Where trials report
/// the peak at each phase boundary, each boundary gets such a line too and the earliest
/// prediction wins: the peak is the largest of the phases' peaks, and a phase that grows
/// faster (the backward pass) overtakes one that sets the peak at small sizes (the
/// optimizer's transient). `None` without two such sizes or with a line that does not rise.
pub fn predict_at<T: Measured>(
    trials: &[T],
    is_good: &dyn Fn(&T) -> bool,
    threshold: u64,
) -> Option<usize> {
    model_line(trials, is_good, threshold).map(|(_, predicted)| predicted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{doubling, Fits};

    fn bounds(start: usize, max_batch: usize) -> Bounds {
        Bounds { start, max_batch }
    }

    /// A synthetic trial with a peak from a memory curve.
    #[derive(Debug, Clone, PartialEq)]
    struct Sim {
        b: usize,
        fits: bool,
        peak: Option<u64>,
        ran: bool,
        phases: Vec<u64>,
    }

    impl Fits for Sim {
        fn fits(&self) -> bool {
            self.fits
        }
    }

    impl Measured for Sim {
        fn batch_size(&self) -> usize {
            self.b
        }
        fn peak(&self) -> Option<u64> {
            self.peak
        }
        fn ran(&self) -> bool {
            self.ran
        }
        fn phase_peaks(&self) -> Vec<u64> {
            self.phases.clone()
        }
    }

    /// A probe over `curve` against `capacity`: fits when the peak is at most it.
    fn simulated(
        curve: impl Fn(usize) -> u64,
        capacity: u64,
    ) -> impl FnMut(usize) -> Result<Sim, String> {
        move |b| {
            let peak = curve(b);
            Ok(Sim {
                b,
                fits: peak <= capacity,
                peak: Some(peak),
                ran: true,
                phases: Vec::new(),
            })
        }
    }

    fn true_max(curve: &dyn Fn(usize) -> u64, capacity: u64, cap: usize) -> usize {
        (1..=cap)
            .take_while(|&b| curve(b) <= capacity)
            .last()
            .unwrap_or(0)
    }

    #[test]
    fn guided_is_exact_and_quick_on_straight_lines() {
        // At most 5 trials: batch 1, the size it says is safe, short of a far prediction,
        // the answer and the size after it; 4 when the prediction is within reach.
        let (mut total, mut cases) = (0, 0);
        for fixed in [100u64, 5_000, 40_000] {
            for per_sample in [1u64, 7, 64, 1_000] {
                for capacity in (fixed + per_sample..fixed + 5_000 * per_sample).step_by(997) {
                    let curve = |b: usize| fixed + per_sample * b as u64;
                    let found =
                        guided(bounds(1, 65536), capacity, simulated(curve, capacity)).unwrap();
                    assert_eq!(
                        found.max_batch_size,
                        true_max(&curve, capacity, 65536),
                        "fixed {fixed} slope {per_sample} capacity {capacity}"
                    );
                    let sizes: Vec<usize> = found.trials.iter().map(|t| t.b).collect();
                    assert!(sizes.len() <= 5, "{sizes:?}");
                    let safe = capacity / curve(1);
                    let within_reach = (safe > 1)
                        && (found.max_batch_size - 1) as f64 / (safe - 1) as f64 <= TRUSTED_REACH;
                    if within_reach {
                        assert!(sizes.len() <= 4, "{sizes:?}");
                    }
                    total += sizes.len();
                    cases += 1;
                }
            }
        }
        let mean = total as f64 / cases as f64;
        assert!((3.0..=5.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn guided_aims_short_of_a_far_prediction_then_hits_the_answer() {
        // Fixed memory worth 50 samples: batch 1 says little, the safe size is far below.
        let curve = |b: usize| 2_000_000 + 40_000 * b as u64;
        for true_max in [300usize, 1_000, 5_000] {
            let capacity = curve(true_max) + 20_000;
            let found = guided(bounds(1, 65536), capacity, simulated(curve, capacity)).unwrap();
            let sizes: Vec<usize> = found.trials.iter().map(|t| t.b).collect();
            let safe = (capacity / curve(1)) as usize;
            assert_eq!(&sizes[..2], &[1, safe], "{sizes:?}");
            assert!(sizes[2] > safe && sizes[2] < true_max, "{sizes:?}");
            assert_eq!(&sizes[3..], &[true_max, true_max + 1], "{sizes:?}");
        }
    }

    #[test]
    fn guided_is_exact_when_batch_one_sits_above_the_line() {
        // As on the CPU: batch 1 costs more than the line through larger sizes says, so
        // the first line is too flat and its prediction overshoots.
        let curve = |b: usize| 8_100 + 2_200 * b as u64 + if b == 1 { 1_800 } else { 0 };
        let mut total = 0;
        for capacity in (12_200..2_000_000).step_by(1_013) {
            let found = guided(bounds(1, 65536), capacity, simulated(curve, capacity)).unwrap();
            assert_eq!(found.max_batch_size, true_max(&curve, capacity, 65536));
            assert!(found.trials.len() <= 8, "{:?}", found.trials);
            total += found.trials.len();
        }
        let mean = total as f64 / (12_200..2_000_000).step_by(1_013).count() as f64;
        assert!(mean <= 5.1, "mean {mean}");
    }

    #[test]
    fn guided_tries_a_failure_with_room_to_spare_once_more() {
        let curve = |b: usize| 2_000_000 + 40_000 * b as u64;
        let capacity = curve(1_000) + 20_000;
        // The size aimed short of the prediction fails once (a flaky size): retried, it
        // fits, and the search goes on as if it had not failed.
        let mut probe = simulated(curve, capacity);
        let mut flaked = false;
        let found = guided(bounds(1, 65536), capacity, |b| {
            let mut t = probe(b)?;
            if !flaked && b > 20 {
                flaked = true;
                t.fits = false;
                t.peak = None;
            }
            Ok::<_, String>(t)
        })
        .unwrap();
        let sizes: Vec<(usize, bool)> = found.trials.iter().map(|t| (t.b, t.fits)).collect();
        assert_eq!(sizes[2].0, sizes[3].0, "{sizes:?}");
        assert_eq!((sizes[2].1, sizes[3].1), (false, true), "{sizes:?}");
        assert_eq!(found.max_batch_size, 1_000);
        assert_eq!(sizes.len(), 6, "{sizes:?}");
    }

    #[test]
    fn guided_does_not_retry_a_size_that_was_refused_without_running() {
        // Sizes past 700 are refused (as a CPU trial predicted past the machine is): the
        // surprising failure of a size aimed at with room is not tried again.
        let curve = |b: usize| 2_000_000 + 40_000 * b as u64;
        let capacity = curve(1_000) + 20_000;
        let mut probe = simulated(curve, capacity);
        let found = guided(bounds(1, 65536), capacity, |b| {
            let t = probe(b)?;
            Ok::<_, String>(if b > 700 {
                Sim {
                    fits: false,
                    peak: None,
                    ran: false,
                    ..t
                }
            } else {
                t
            })
        })
        .unwrap();
        assert_eq!(found.max_batch_size, 700);
        let mut sizes: Vec<usize> = found.trials.iter().map(|t| t.b).collect();
        let n = sizes.len();
        sizes.sort_unstable();
        sizes.dedup();
        assert_eq!(sizes.len(), n, "{:?}", found.trials);
    }

    #[test]
    fn guided_follows_the_phase_that_overtakes_the_peak() {
        // The MLP's shape: the update's transient (nearly flat) sets the peak at small
        // sizes, the backward pass (70 per sample) from about 1,000 on. A line through the
        // overall peaks of small sizes is far too flat; the backward boundary's is not.
        let backward = |b: usize| 49_000 + 70 * b as u64;
        let update = |b: usize| 106_000 + 13 * b as u64;
        let overall = move |b: usize| backward(b).max(update(b));
        let run = |capacity: u64, with_phases: bool| {
            let found = guided(bounds(1, 1 << 20), capacity, |b| {
                let peak = overall(b);
                Ok::<_, String>(Sim {
                    b,
                    fits: peak <= capacity,
                    peak: Some(peak),
                    ran: true,
                    phases: if with_phases {
                        vec![backward(b), peak]
                    } else {
                        Vec::new()
                    },
                })
            })
            .unwrap();
            assert_eq!(found.max_batch_size, true_max(&overall, capacity, 1 << 20));
            found.trials.len()
        };
        let (mut with, mut without) = (0, 0);
        for capacity in (200_000..1_000_000).step_by(10_007) {
            with += run(capacity, true);
            without += run(capacity, false);
        }
        // Measured: 5.0 trials on average with them, 10.0 without.
        assert!(
            3 * with <= 2 * without,
            "{with} trials with phase peaks, {without} without"
        );
    }

    #[test]
    fn guided_falls_back_on_a_bending_curve_and_stays_exact() {
        // Two lines with a crossover (the optimizer's transient overtakes the backward pass).
        let curve = |b: usize| (412 + 1241 * b as u64).max(1423 + 851 * b as u64) * 1000;
        for capacity_mib in 2_000..20_000u64 {
            let capacity = capacity_mib * 1000;
            if curve(1) > capacity {
                continue;
            }
            let found = guided(bounds(1, 4096), capacity, simulated(curve, capacity)).unwrap();
            assert_eq!(found.max_batch_size, true_max(&curve, capacity, 4096));
        }
        // Steeper after a step: fits of 1 and 2 underestimate the slope.
        let curve = |b: usize| {
            if b < 50 {
                1000 + 10 * b as u64
            } else {
                1000 + 40 * b as u64
            }
        };
        for capacity in 1_100..60_000 {
            let found = guided(bounds(1, 4096), capacity, simulated(curve, capacity)).unwrap();
            assert_eq!(
                found.max_batch_size,
                true_max(&curve, capacity, 4096),
                "{capacity}"
            );
        }
    }

    #[test]
    fn guided_overshooting_predictions_fall_back_to_binary_search() {
        // Super-linear memory: every line through two points predicts too far.
        let curve = |b: usize| 1000 + (b as u64).pow(2);
        for capacity in [1_500u64, 10_000, 1_000_000, 50_000_000] {
            let found = guided(bounds(1, 65536), capacity, simulated(curve, capacity)).unwrap();
            assert_eq!(found.max_batch_size, true_max(&curve, capacity, 65536));
            assert!(found.trials.len() <= 40, "{}", found.trials.len());
        }
    }

    #[test]
    fn guided_survives_noise_and_trials_without_a_peak() {
        // Noisy peaks (±3% of the slope), and out-of-memory trials that report no peak.
        let noise = |b: usize| ((b * 7919) % 61) as u64;
        let curve = move |b: usize| 10_000 + 1_000 * b as u64 + noise(b);
        for capacity in (12_000..900_000).step_by(4_999) {
            let mut probe = simulated(curve, capacity);
            let found = guided(bounds(1, 65536), capacity, |b| {
                probe(b).map(|t| Sim {
                    peak: t.fits.then_some(t.peak.unwrap_or(0)),
                    ..t
                })
            })
            .unwrap();
            assert_eq!(
                found.max_batch_size,
                true_max(&curve, capacity, 65536),
                "{capacity}"
            );
        }
    }

    #[test]
    fn guided_retries_a_boundary_that_failed_against_the_line() {
        let curve = |b: usize| 10_000 + 1_000 * b as u64;
        for true_max in [4usize, 9, 37, 300, 4_999] {
            let capacity = curve(true_max) + 500;
            let mut flaked = false;
            let mut probe = simulated(curve, capacity);
            let found = guided(bounds(1, 65536), capacity, |b| {
                let mut t = probe(b)?;
                if !flaked && t.fits && b > true_max / 2 {
                    flaked = true;
                    t.fits = false;
                    t.peak = None;
                }
                Ok::<_, String>(t)
            })
            .unwrap();
            assert_eq!(found.max_batch_size, true_max, "{:?}", found.trials);
        }
    }

    #[test]
    fn guided_handles_the_cap_nothing_fitting_and_errors() {
        let line = |b: usize| 100 + b as u64;
        let found = guided(bounds(1, 50), 1_000_000, simulated(line, 1_000_000)).unwrap();
        assert_eq!(found.max_batch_size, 50);
        let nothing = guided(bounds(4, 50), 50, simulated(line, 50));
        assert!(matches!(nothing, Err(SearchError::NothingFits { .. })));
        let failing = guided(bounds(1, 4096), 10_000, |b| {
            if b > 2 {
                Err("boom")
            } else {
                Ok(Sim {
                    b,
                    fits: true,
                    peak: Some(100 * b as u64),
                    ran: true,
                    phases: Vec::new(),
                })
            }
        });
        assert!(matches!(
            failing,
            Err(SearchError::Probe { error: "boom", .. })
        ));
    }

    #[test]
    fn guided_agrees_with_doubling_from_other_starts() {
        let curve = |b: usize| 5_000 + 300 * b as u64;
        for start in [1, 3, 8, 100] {
            for capacity in (6_000..200_000).step_by(3_001) {
                let g = guided(bounds(start, 4096), capacity, simulated(curve, capacity));
                let d = doubling(bounds(start, 4096), simulated(curve, capacity));
                match (g, d) {
                    (Ok(g), Ok(d)) => assert_eq!(g.max_batch_size, d.max_batch_size),
                    (
                        Err(SearchError::NothingFits { .. }),
                        Err(SearchError::NothingFits { .. }),
                    ) => {}
                    (g, d) => panic!("start {start} capacity {capacity}: {g:?} vs {d:?}"),
                }
            }
        }
    }
}
