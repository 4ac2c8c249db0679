//! The search for the largest batch size that fits: pure arithmetic over a probe.
//!
//! The strategy is the card's: start at `start`, double while the trial fits, stop at
//! the first out-of-memory or at the cap, then binary-search between the last size that
//! fit and the first that did not. The probe is any `FnMut(usize) -> Result<T, E>`; the
//! search never sees candle or a device, so it is tested with synthetic oracles.
//!
//! Every size the search returns was tried: the cap is tried before it is returned, and
//! the maximum is always the last size seen to fit.

/// What the search needs to know of a trial: did it fit?
pub trait Fits {
    /// True when the batch size ran without running out of memory.
    fn fits(&self) -> bool;
}

impl Fits for bool {
    fn fits(&self) -> bool {
        *self
    }
}

/// The bounds of one search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The first batch size tried (at least 1).
    pub start: usize,
    /// The largest batch size ever tried (at least `start`); it is tried before it is
    /// returned.
    pub max_batch: usize,
}

/// A finished search: every trial in the order run, and the largest size that fit.
#[derive(Debug, Clone)]
pub struct Found<T> {
    /// The trials, in the order they ran.
    pub trials: Vec<T>,
    /// The largest batch size whose trial fit.
    pub max_batch_size: usize,
}

/// Why a search ended without an answer.
#[derive(Debug)]
pub enum SearchError<T, E> {
    /// `start` is 0 or the cap is below it: nothing can be tried.
    InvalidBounds(Bounds),
    /// Batch size 1 was tried and did not fit. `trials` holds every trial run.
    NothingFits {
        /// The trials run, the failing batch-1 trial last.
        trials: Vec<T>,
    },
    /// The probe failed with something other than out-of-memory; the search stops.
    Probe {
        /// The batch size whose trial failed.
        batch_size: usize,
        /// The probe's error.
        error: E,
        /// The trials completed before the failure.
        trials: Vec<T>,
    },
}

/// Doubling then binary search, as described in the module docs.
///
/// With a monotone probe (every size below the true maximum fits, every size above does
/// not) the answer is the exact maximum, capped at `bounds.max_batch`.
pub fn doubling<T, E, P>(bounds: Bounds, mut probe: P) -> Result<Found<T>, SearchError<T, E>>
where
    T: Fits,
    P: FnMut(usize) -> Result<T, E>,
{
    if bounds.start == 0 || bounds.max_batch < bounds.start {
        return Err(SearchError::InvalidBounds(bounds));
    }
    let mut trials = Vec::new();
    let mut run = |batch_size: usize, trials: &mut Vec<T>| -> Result<bool, (usize, E)> {
        let trial = probe(batch_size).map_err(|error| (batch_size, error))?;
        let fits = trial.fits();
        trials.push(trial);
        Ok(fits)
    };

    // Invariant: `last_fit` fit (0: none yet), `first_oom` did not (None: none yet).
    let mut last_fit = 0;
    let mut first_oom = None;
    let mut batch_size = bounds.start;
    loop {
        match run(batch_size, &mut trials) {
            Ok(true) => last_fit = batch_size,
            Ok(false) => {
                first_oom = Some(batch_size);
                break;
            }
            Err((batch_size, error)) => return Err(probe_error(batch_size, error, trials)),
        }
        if batch_size == bounds.max_batch {
            break;
        }
        batch_size = batch_size.saturating_mul(2).min(bounds.max_batch);
    }

    if let Some(mut high) = first_oom {
        while high - last_fit > 1 {
            let mid = last_fit + (high - last_fit) / 2;
            match run(mid, &mut trials) {
                Ok(true) => last_fit = mid,
                Ok(false) => high = mid,
                Err((batch_size, error)) => return Err(probe_error(batch_size, error, trials)),
            }
        }
    }
    if last_fit == 0 {
        return Err(SearchError::NothingFits { trials });
    }
    Ok(Found {
        trials,
        max_batch_size: last_fit,
    })
}

fn probe_error<T, E>(batch_size: usize, error: E, trials: Vec<T>) -> SearchError<T, E> {
    SearchError::Probe {
        batch_size,
        error,
        trials,
    }
}

/// The largest power of two that is at most `n` (`n` ≥ 1).
pub fn largest_power_of_two_at_most(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// The largest size among `(batch_size, peak_bytes)` fits whose peak leaves `margin`
/// (a fraction of `capacity`, 0 ≤ margin < 1) free.
pub fn recommended(fits: &[(usize, u64)], capacity: u64, margin: f64) -> Option<usize> {
    let allowed = capacity as f64 * (1.0 - margin);
    fits.iter()
        .filter(|(_, peak)| *peak as f64 <= allowed)
        .map(|(batch_size, _)| *batch_size)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oracle(true_max: usize) -> impl FnMut(usize) -> Result<bool, String> {
        move |b| Ok(b <= true_max)
    }

    fn bounds(start: usize, max_batch: usize) -> Bounds {
        Bounds { start, max_batch }
    }

    fn tried<E>(found: &Result<Found<(usize, bool)>, E>) -> Vec<usize> {
        match found {
            Ok(f) => f.trials.iter().map(|t| t.0).collect(),
            Err(_) => vec![],
        }
    }

    impl Fits for (usize, bool) {
        fn fits(&self) -> bool {
            self.1
        }
    }

    fn recorded(true_max: usize) -> impl FnMut(usize) -> Result<(usize, bool), String> {
        move |b| Ok((b, b <= true_max))
    }

    #[test]
    fn agrees_with_brute_force_for_every_true_max_from_start_1() {
        for true_max in 1..=4096 {
            let found = doubling(bounds(1, 65536), oracle(true_max)).unwrap();
            let brute = (1..=65536).take_while(|&b| b <= true_max).last().unwrap();
            assert_eq!(found.max_batch_size, brute, "true max {true_max}");
        }
    }

    #[test]
    fn agrees_with_brute_force_from_other_starts() {
        for start in [2, 3, 5, 8, 100, 1000] {
            for true_max in 1..=2048 {
                let found = doubling(bounds(start, 65536), oracle(true_max)).unwrap();
                assert_eq!(found.max_batch_size, true_max, "start {start}");
            }
        }
    }

    #[test]
    fn every_reported_max_was_tried_and_fit() {
        for start in [1, 3, 7] {
            for true_max in 1..=600 {
                let found = doubling(bounds(start, 4096), recorded(true_max));
                let max = found.as_ref().unwrap().max_batch_size;
                assert!(tried(&found).contains(&max));
                assert!(found.unwrap().trials.iter().any(|t| t.0 == max && t.1));
            }
        }
    }

    #[test]
    fn never_tries_a_size_twice_or_beyond_the_cap() {
        for true_max in 1..=600 {
            let found = doubling(bounds(1, 500), recorded(true_max));
            let mut sizes = tried(&found);
            assert!(sizes.iter().all(|&b| b <= 500));
            let n = sizes.len();
            sizes.sort_unstable();
            sizes.dedup();
            assert_eq!(sizes.len(), n, "true max {true_max}");
        }
    }

    #[test]
    fn the_cap_is_tried_and_returned_when_everything_fits() {
        let found = doubling(bounds(1, 100), recorded(1_000_000));
        assert_eq!(tried(&found), vec![1, 2, 4, 8, 16, 32, 64, 100]);
        assert_eq!(found.unwrap().max_batch_size, 100);

        let found = doubling(bounds(1, 64), recorded(1_000_000));
        assert_eq!(tried(&found), vec![1, 2, 4, 8, 16, 32, 64]);
    }

    #[test]
    fn the_cap_failing_is_searched_below() {
        let found = doubling(bounds(1, 100), oracle(70)).unwrap();
        assert_eq!(found.max_batch_size, 70);
    }

    #[test]
    fn batch_one_failing_is_nothing_fits() {
        match doubling(bounds(1, 64), recorded(0)) {
            Err(SearchError::NothingFits { trials }) => assert_eq!(trials, vec![(1, false)]),
            other => panic!("expected NothingFits, got {other:?}"),
        }
    }

    #[test]
    fn a_larger_start_failing_searches_down_to_one() {
        match doubling(bounds(8, 64), recorded(0)) {
            Err(SearchError::NothingFits { trials }) => {
                let sizes: Vec<usize> = trials.iter().map(|t| t.0).collect();
                assert_eq!(sizes, vec![8, 4, 2, 1]);
            }
            other => panic!("expected NothingFits, got {other:?}"),
        }
        let found = doubling(bounds(8, 64), oracle(5)).unwrap();
        assert_eq!(found.max_batch_size, 5);
    }

    #[test]
    fn a_probe_error_aborts_and_is_never_out_of_memory() {
        let mut calls = Vec::new();
        let result = doubling(bounds(1, 4096), |b| {
            calls.push(b);
            if b == 16 {
                Err("driver exploded".to_string())
            } else {
                Ok(b <= 1000)
            }
        });
        match result {
            Err(SearchError::Probe {
                batch_size,
                error,
                trials,
            }) => {
                assert_eq!(batch_size, 16);
                assert_eq!(error, "driver exploded");
                assert_eq!(trials, vec![true; 4]);
            }
            other => panic!("expected a probe error, got {other:?}"),
        }
        assert_eq!(calls, vec![1, 2, 4, 8, 16]);
    }

    #[test]
    fn a_probe_error_during_binary_search_aborts() {
        let result = doubling(bounds(1, 4096), |b| {
            if b == 384 {
                Err("boom")
            } else {
                Ok(b <= 300)
            }
        });
        assert!(matches!(
            result,
            Err(SearchError::Probe {
                batch_size: 384,
                ..
            })
        ));
    }

    #[test]
    fn true_max_300_takes_ten_doubling_trials_and_at_most_eight_more() {
        let found = doubling(bounds(1, 65536), recorded(300));
        let sizes = tried(&found);
        assert_eq!(&sizes[..10], &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
        assert!(sizes.len() - 10 <= 8, "{sizes:?}");
        assert_eq!(found.unwrap().max_batch_size, 300);
    }

    #[test]
    fn invalid_bounds_are_refused_without_a_trial() {
        let mut called = false;
        let result = doubling(bounds(0, 10), |_| {
            called = true;
            Ok::<_, ()>(true)
        });
        assert!(matches!(result, Err(SearchError::InvalidBounds(_))));
        let result = doubling(bounds(20, 10), |_| {
            called = true;
            Ok::<_, ()>(true)
        });
        assert!(matches!(result, Err(SearchError::InvalidBounds(_))));
        assert!(!called);
    }

    #[test]
    fn largest_power_of_two_matches_a_loop() {
        for n in 1..=5000usize {
            let mut p = 1;
            while p * 2 <= n {
                p *= 2;
            }
            assert_eq!(largest_power_of_two_at_most(n), p, "n = {n}");
        }
        assert_eq!(
            largest_power_of_two_at_most(usize::MAX),
            1 << (usize::BITS - 1)
        );
    }

    #[test]
    fn recommended_is_the_largest_fit_under_the_margin() {
        let fits = [(1, 40), (2, 60), (4, 90), (3, 96)];
        assert_eq!(recommended(&fits, 100, 0.05), Some(4));
        assert_eq!(recommended(&fits, 100, 0.2), Some(2));
        assert_eq!(recommended(&fits, 100, 0.0), Some(4));
        assert_eq!(recommended(&fits, 95, 0.0), Some(4));
        assert_eq!(recommended(&fits, 89, 0.0), Some(2));
        assert_eq!(recommended(&fits, 100, 0.7), None);
        assert_eq!(recommended(&[], 100, 0.05), None);
    }
}
