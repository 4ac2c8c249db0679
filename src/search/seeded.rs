//! The seeded search: the guided search started where the estimate from shapes says the
//! answer is, so that an estimate that is right costs the two trials an exact answer needs
//! (the maximum fits, the size after it does not).
//!
//! Each size it tries is where the [`StepModel`], calibrated by the measured trial nearest
//! the threshold, meets the threshold; when the model says the largest size known to pass
//! is the answer, the size after it is tried, and it failing ends the search. A model that
//! misses twice, or fails in a way that measures nothing it can be scaled to, hands over to
//! the guided search ([`toward_threshold`]) with every trial measured so far, or, when
//! nothing passed yet, to the guided search from batch size 1 below the smallest size that
//! failed: a wrong estimate costs the trials it wasted before the guided search goes on as
//! it would have without it.

use super::guided::{toward_threshold, Boundary, Bracket};
use super::model::StepModel;
use super::{found, Bounds, Found, Measured, SearchError};

/// Why a trial runs: what its failure has to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To measure: a failing trial runs on a little past the capacity, so that its peaks
    /// say by how much it failed.
    Measure,
    /// To confirm that the size after an answer does not fit: it may stop the moment its
    /// peak passes the capacity, which is all its outcome needs.
    Confirm,
}

/// Predictions of the model that may miss before the guided search takes over.
const MAX_MISSES: u32 = 2;

/// The seeded search for the largest size that fits under `threshold`, from nothing known,
/// up to `bounds.max_batch`; `bounds.start` is not used (the model says where to start).
/// With a monotone probe the answer is exact, as the guided search's is.
pub fn seeded<T, E, P>(
    bounds: Bounds,
    threshold: u64,
    model: &StepModel,
    mut probe: P,
) -> Result<Found<T>, SearchError<T, E>>
where
    T: Measured,
    P: FnMut(usize, Purpose) -> Result<T, E>,
{
    if bounds.start == 0 || bounds.max_batch < bounds.start {
        return Err(SearchError::InvalidBounds(bounds));
    }
    let mut trials = Vec::new();
    let from = Bracket {
        good: 0,
        bad: None,
        cap: bounds.max_batch,
        bytes_per_sample_hint: bounds.bytes_per_sample_hint,
    };
    let result = seeded_toward(
        from,
        Boundary::Run,
        threshold,
        model,
        &mut probe,
        |t: &T| t.fits(),
        &mut trials,
    );
    found(result, trials)
}

/// The largest size above `from.good` (0: none known) and below `from.bad` whose trial
/// passes `is_good`, seeded by `model` against `threshold` (see the module's notes). With
/// [`Boundary::Predicted`] a size that passed and that the model calibrated by it calls the
/// last to pass is the answer without its next size run (the recommended size's search).
/// Returns 0 when no size passes.
pub fn seeded_toward<T, E, P, G>(
    from: Bracket,
    boundary: Boundary,
    threshold: u64,
    model: &StepModel,
    probe: &mut P,
    is_good: G,
    trials: &mut Vec<T>,
) -> Result<usize, (usize, E)>
where
    T: Measured,
    P: FnMut(usize, Purpose) -> Result<T, E>,
    G: Fn(&T) -> bool,
{
    let (mut good, mut bad) = (from.good, from.bad);
    let (mut misses, mut retried) = (0, false);
    let mut run = |size: usize, purpose: Purpose, trials: &mut Vec<T>| {
        let trial = probe(size, purpose).map_err(|e| (size, e))?;
        let passed = is_good(&trial);
        // A failure no measurement explains: it ran, and its peak (if any) is not past the
        // threshold. Worth one more trial before it decides anything.
        let unexplained = !passed && trial.ran() && trial.peak().is_none_or(|p| p <= threshold);
        trials.push(trial);
        Ok((passed, unexplained))
    };
    loop {
        let upper = bad.unwrap_or(from.cap.saturating_add(1));
        if upper <= good + 1 || misses >= MAX_MISSES {
            break;
        }
        let (calibrated, calibration) = model.nearest_calibration(trials, threshold);
        if calibration.is_none() && !trials.is_empty() {
            // Trials ran and none measured anything the model can be scaled to (a failure
            // with only a lower bound): another guess would be the same guess.
            break;
        }
        let predicted = calibrated.max_for(threshold).unwrap_or(from.cap);
        if boundary == Boundary::Predicted && good > 0 && predicted == good {
            return Ok(good);
        }
        let (size, purpose) = if predicted <= good {
            (good + 1, Purpose::Confirm)
        } else {
            (predicted.min(upper - 1).max(1), Purpose::Measure)
        };
        let (mut passed, unexplained) = run(size, purpose, trials)?;
        if unexplained && !retried {
            retried = true;
            passed = run(size, purpose, trials)?.0;
        }
        if passed {
            good = size;
            misses += u32::from(purpose == Purpose::Confirm);
        } else {
            bad = Some(size);
            let measured_nothing = trials
                .last()
                .is_none_or(|t| model.calibrated_by(t).is_none());
            misses = match purpose {
                // A prediction failed with nothing measured to correct the model by: the
                // next one would come from the same calibration, which just missed.
                Purpose::Measure if measured_nothing => MAX_MISSES,
                Purpose::Measure => misses + 1,
                Purpose::Confirm => misses,
            };
        }
    }
    let upper = bad.unwrap_or(from.cap.saturating_add(1));
    if upper <= good + 1 {
        return Ok(good);
    }
    // The model missed twice: the guided search goes on from what was measured.
    let mut measure = |b: usize| probe(b, Purpose::Measure);
    if good == 0 {
        let trial = measure(1).map_err(|e| (1, e))?;
        let passed = is_good(&trial);
        trials.push(trial);
        if !passed {
            return Ok(0);
        }
        good = 1;
    }
    // The sizes that failed so far bound the search as its cap does: a failure the guided
    // search did not predict itself is not a sign that its own line is wrong.
    let cap = bad.map_or(from.cap, |bad| bad - 1);
    toward_threshold(
        Bracket {
            good,
            bad: None,
            cap,
            bytes_per_sample_hint: from.bytes_per_sample_hint,
        },
        boundary,
        threshold,
        &mut measure,
        is_good,
        trials,
    )
}

#[cfg(test)]
mod tests;
