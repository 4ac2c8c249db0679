use super::*;

fn oracle(true_max: usize) -> impl FnMut(usize) -> Result<bool, String> {
    move |b| Ok(b <= true_max)
}

fn bounds(start: usize, max_batch: usize) -> Bounds {
    Bounds {
        start,
        max_batch,
        bytes_per_sample_hint: None,
    }
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
fn bisect_finds_the_largest_good_size_between_the_bounds() {
    for good in 0..40 {
        for bad in good + 1..60 {
            for threshold in good..bad {
                let mut trials = Vec::new();
                let mut probe = |b: usize| Ok::<_, ()>((b, b <= threshold));
                let found = bisect(good, bad, &mut probe, |t| t.1, &mut trials).unwrap();
                assert_eq!(found, threshold, "({good}, {bad}) threshold {threshold}");
                assert!(trials.iter().all(|t| t.0 > good && t.0 < bad));
                let bound = usize::BITS - (bad - good - 1).leading_zeros();
                assert!(trials.len() as u32 <= bound, "{} trials", trials.len());
            }
        }
    }
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
fn the_margin_bracket_spans_the_last_size_within_and_the_first_beyond() {
    let ran = [
        (1, true),
        (2, true),
        (4, true),
        (8, false),
        (6, true),
        (7, false),
    ];
    assert_eq!(margin_bracket(&ran), (6, 7));
    let ran = [
        (1, true),
        (2, true),
        (4, false),
        (3, false),
        (64, false),
        (32, false),
    ];
    assert_eq!(margin_bracket(&ran), (2, 3));
    assert_eq!(margin_bracket(&[(1, false)]), (0, 1));
    assert_eq!(margin_bracket(&[(5, true)]), (5, 6));
    assert_eq!(margin_bracket(&[]), (0, 1));
}

#[test]
fn the_margin_bracket_and_bisect_find_the_exact_size_within_the_margin() {
    // peak(b) = 1000 + 37·b against capacity 10,000: the largest size that leaves 5% free.
    let peak = |b: usize| 1000 + 37 * b as u64;
    let allowed = allowed_peak(10_000, 0.05);
    let brute = (1..1000).filter(|&b| peak(b) <= allowed).max().unwrap();
    for true_max in [brute, brute + 1, brute + 20, 243] {
        let fits = |b: usize| b <= true_max;
        let found = doubling(bounds(1, 4096), |b| Ok::<_, ()>((b, fits(b)))).unwrap();
        let ran: Vec<(usize, bool)> = found
            .trials
            .iter()
            .map(|t| (t.0, t.1 && peak(t.0) <= allowed))
            .collect();
        let (good, bad) = margin_bracket(&ran);
        let mut extra = Vec::new();
        let mut probe = |b: usize| Ok::<_, ()>((b, fits(b)));
        let within = |t: &(usize, bool)| t.1 && peak(t.0) <= allowed;
        let recommended = bisect(good, bad, &mut probe, within, &mut extra).unwrap();
        assert_eq!(recommended, brute.min(true_max), "true max {true_max}");
    }
}

#[test]
fn allowed_peak_leaves_the_fraction_free() {
    assert_eq!(allowed_peak(1000, 0.05), 950);
    assert_eq!(allowed_peak(1000, 0.0), 1000);
    assert_eq!(allowed_peak(4 << 30, 0.5), 2 << 30);
}
