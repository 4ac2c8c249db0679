//! The verification run: N consecutive training steps at the chosen size after the search,
//! with the peak of every step, to catch what a trial of one or two steps cannot see:
//! memory that grows from step to step (allocator growth, fragmentation, a leak), the most
//! common way a size found by a batch-size finder fails hours into a run. Here is what it
//! measured; `finish` runs it.

use serde::{Deserialize, Serialize};

use crate::trial::{Outcome, Trial};

/// N steps at one size, and what their peaks did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The size verified (the recommended size, else the maximum).
    pub batch_size: usize,
    /// Steps asked for.
    pub steps_requested: usize,
    /// Steps completed within the capacity.
    pub steps_completed: usize,
    /// The first step's peak bytes.
    pub first_peak_bytes: Option<u64>,
    /// The last step's peak bytes (a lower bound when that step crossed the capacity).
    pub last_peak_bytes: Option<u64>,
    /// The largest step's peak bytes.
    pub max_peak_bytes: Option<u64>,
    /// True when every step ran within the capacity.
    pub passed: bool,
    /// When a step crossed the capacity: the largest smaller size that passed its trial,
    /// the size to train at instead.
    pub fallback_batch_size: Option<usize>,
    /// Every step's peak bytes, in order.
    pub step_peaks: Vec<u64>,
    /// What happened, in words, when it is not a pass.
    pub detail: Option<String>,
}

impl Verification {
    /// What the verification trial `run` of `steps_requested` steps measured, with the
    /// largest size below it that fit among `trials` as the fallback.
    pub fn from_trial(run: &Trial, steps_requested: usize, trials: &[Trial]) -> Self {
        let passed = run.outcome == Outcome::Fits && run.steps == steps_requested;
        let fallback_batch_size = (!passed)
            .then(|| {
                trials
                    .iter()
                    .filter(|t| t.outcome == Outcome::Fits && t.batch_size < run.batch_size)
                    .map(|t| t.batch_size)
                    .max()
            })
            .flatten();
        Verification {
            batch_size: run.batch_size,
            steps_requested,
            steps_completed: run.steps,
            first_peak_bytes: run.step_peaks.first().copied(),
            last_peak_bytes: run.step_peaks.last().copied(),
            max_peak_bytes: run.step_peaks.iter().copied().max(),
            passed,
            fallback_batch_size,
            step_peaks: run.step_peaks.clone(),
            detail: run.detail.clone(),
        }
    }

    /// Bytes the last step peaked above the first (negative: below).
    pub fn growth_bytes(&self) -> Option<i64> {
        Some(self.last_peak_bytes? as i64 - self.first_peak_bytes? as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(batch_size: usize) -> Trial {
        Trial {
            steps: 1,
            ..Trial::new(batch_size, Outcome::Fits)
        }
    }

    #[test]
    fn a_step_that_crossed_fails_the_verification_and_names_the_next_smaller_size() {
        let trials = [fit(1), fit(6), fit(9), fit(12)];
        let mut run = Trial::unmeasured_oom(9, "stopped after the backward phase of step 4".into());
        run.steps = 3;
        run.step_peaks = vec![100, 104, 108, 112];
        let v = Verification::from_trial(&run, 200, &trials);
        assert!(!v.passed);
        assert_eq!(v.steps_completed, 3);
        assert_eq!(v.fallback_batch_size, Some(6));
        assert_eq!(
            (v.first_peak_bytes, v.last_peak_bytes, v.max_peak_bytes),
            (Some(100), Some(112), Some(112))
        );
        assert_eq!(v.growth_bytes(), Some(12));

        let mut run = fit(9);
        run.steps = 200;
        run.step_peaks = vec![100; 200];
        let v = Verification::from_trial(&run, 200, &trials);
        assert!(v.passed);
        assert_eq!(v.fallback_batch_size, None);
        assert_eq!(v.growth_bytes(), Some(0));
    }
}
