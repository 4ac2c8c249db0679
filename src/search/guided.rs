//! The guided search.

use super::{bisect, probe_error, Bounds, Found, Line, Measured, SearchError};

/// The guided search: two measured sizes, then a jump to where the line through the
/// measured peaks meets `capacity`, as described on [`Strategy::Guided`]. With a monotone
/// probe its answer is the doubling search's exact maximum.
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

/// The largest size above `good` (which passed `is_good`) and below `bad` (which did not;
/// `None`: none known, up to `cap`) whose trial passes, guided by the line through the
/// measured peaks meeting `threshold` bytes.
///
/// A predicted size is tried with the size after it: one passing and the next failing is
/// the exact answer. A prediction that misses counts: after one that overshoots, the next
/// size is the geometric midpoint of the bracket (a measurement far from the small sizes,
/// whose fixed costs bend the line); after three misses the rest is binary search (after
/// doubling to a failing size if none is known yet). When the size after the answer failed
/// although the line says it fits, it is tried once more: a transient failure (a flaky
/// size) must not decide the answer.
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
    let mut overshot = false;
    let mut retried = false;
    loop {
        let upper = bad.unwrap_or(cap.saturating_add(1));
        if upper <= good + 1 {
            // The answer's boundary failed although the measured line says it fits: a
            // transient failure is worth one more trial before it decides the answer.
            let suspicious = bad == Some(good + 1)
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
        let prediction = if misses >= 3 || overshot {
            None
        } else {
            predict_at(trials, &is_good, threshold)
        };
        let candidate = match (prediction, bad) {
            (Some(b), _) => b.clamp(good + 1, upper - 1),
            (None, None) => good.saturating_mul(2).clamp(good + 1, upper - 1),
            (None, Some(bad)) if overshot && good > 0 => {
                let geometric = ((good as f64) * (bad as f64)).sqrt() as usize;
                geometric.clamp(good + 1, bad - 1)
            }
            (None, Some(bad)) => good + (bad - good) / 2,
        };
        overshot = false;
        let trial = probe(candidate).map_err(|e| (candidate, e))?;
        let passed = is_good(&trial);
        trials.push(trial);
        if !passed {
            bad = Some(candidate);
            if prediction.is_some() {
                misses += 1;
                overshot = true;
            }
            continue;
        }
        good = candidate;
        let next = candidate + 1;
        if prediction.is_none() || next >= upper {
            continue;
        }
        let trial = probe(next).map_err(|e| (next, e))?;
        let passed = is_good(&trial);
        trials.push(trial);
        if passed {
            good = next;
            misses += 1;
        } else {
            bad = Some(next);
        }
    }
}

/// Where the line through two measured sizes that passed `is_good` meets `threshold`: the
/// largest batch size predicted to stay at or under it. The line runs through the largest
/// such size and the largest one at most half of it (or the smallest), so that it spans
/// enough of the curve for noise not to tilt it. `None` without two such sizes or with a
/// line that does not rise.
pub fn predict_at<T: Measured>(
    trials: &[T],
    is_good: &dyn Fn(&T) -> bool,
    threshold: u64,
) -> Option<usize> {
    let points: Vec<(usize, u64)> = trials
        .iter()
        .filter(|t| is_good(t))
        .filter_map(|t| Some((t.batch_size(), t.peak()?)))
        .collect();
    let line = Line::spanning(points)?;
    let (b2, p2, slope) = (line.to.0, line.to.1, line.slope);
    if slope <= 0.0 {
        return None;
    }
    let predicted = b2 as f64 + (threshold as f64 - p2 as f64) / slope;
    Some(predicted.floor().max(0.0).min(usize::MAX as f64 / 2.0) as usize)
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
        let mut total = 0;
        let mut cases = 0;
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
                    assert!(found.trials.len() <= 4, "{} trials", found.trials.len());
                    total += found.trials.len();
                    cases += 1;
                }
            }
        }
        assert!(total as f64 / cases as f64 <= 4.0);
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
