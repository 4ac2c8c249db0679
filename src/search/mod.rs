//! The search for the largest batch size that fits: pure arithmetic over a probe.
//!
//! Three strategies. The seeded search (the default, in [`seeded`]) starts where the
//! estimate from shapes ([`model`]) meets the capacity and corrects it by the measured
//! peaks. The guided search ([`guided`]) fits the measured peaks with a line, jumps to
//! where it meets the capacity and verifies the answer with the size after it; the seeded
//! search hands over to it when the estimate misses. The doubling search ([`doubling`], here) starts at `start`, doubles while the
//! trial fits, stops at the first out-of-memory or at the cap, then binary-searches between
//! the last size that fit and the first that did not. The probe is any
//! `FnMut(usize) -> Result<T, E>` (the finder's closure that runs one trial); the search
//! never sees candle or a device, so it is tested with synthetic oracles. Every line fitted
//! through measured peaks, here and elsewhere, comes from [`line`].
//!
//! Every size the search returns was tried: the cap is tried before it is returned, and
//! the maximum is always the last size seen to fit.

mod guided;
pub mod line;
pub mod model;
mod seeded;

pub use guided::{guided, toward_threshold, Boundary, Bracket};
pub use line::{conservative_peak, earliest_line, fit, predict_at, Fit, Line, LineRule, Through};
pub use model::{Calibration, ModelLine, StepModel};
pub use seeded::{seeded, seeded_toward, Purpose};

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

/// What the guided search needs besides the outcome: the trial's measured peak.
pub trait Measured: Fits {
    /// The batch size tried.
    fn batch_size(&self) -> usize;
    /// Peak bytes measured (a lower bound for a trial stopped early), if any.
    fn peak(&self) -> Option<u64>;
    /// False when the size was refused without running (running it again gives the same
    /// answer, so a surprising failure is not worth retrying).
    fn ran(&self) -> bool {
        true
    }
    /// The peak so far at each phase boundary of a step, in order, where the trial
    /// reports them (empty otherwise): each is fitted with its own line.
    fn phase_peaks(&self) -> Vec<u64> {
        Vec::new()
    }
    /// True when [`peak`](Measured::peak) is the step's whole peak, not a lower bound (a
    /// trial that stopped early measured only how far it got): a fit always is.
    fn peak_is_complete(&self) -> bool {
        self.fits()
    }
}

/// How the search chooses the sizes it tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Start where the estimate from shapes meets the capacity, then the size after it;
    /// where they disagree, correct the estimate by the measured peaks, and after two
    /// misses go on as the guided search ([`seeded`]). Without an estimate (a step whose
    /// shapes are unknown), the guided search.
    #[default]
    Seeded,
    /// Fit the measured peaks with a line and try where it meets the capacity, then the
    /// size after it; aim short of a prediction far beyond the measured sizes; binary-search
    /// inside the bracket after a prediction misses.
    Guided,
    /// Double until out of memory, then binary search (the search most finders use).
    Doubling,
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "seeded" => Ok(Strategy::Seeded),
            "guided" => Ok(Strategy::Guided),
            "doubling" => Ok(Strategy::Doubling),
            _ => Err(format!(
                "unknown strategy {text:?}; use seeded, guided or doubling"
            )),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Seeded => "seeded",
            Strategy::Guided => "guided",
            Strategy::Doubling => "doubling",
        })
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
    /// The guided search's estimate of the bytes per sample, if any (see
    /// [`Bracket::bytes_per_sample_hint`](guided::Bracket)).
    pub bytes_per_sample_hint: Option<u64>,
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
    let fits = |t: &T| t.fits();

    // Invariant: `last_fit` fit (0: none yet), `first_oom` did not (None: none yet).
    let mut last_fit = 0;
    let mut first_oom = None;
    let mut batch_size = bounds.start;
    loop {
        let trial = match probe(batch_size) {
            Ok(trial) => trial,
            Err(error) => return Err(probe_error(batch_size, error, trials)),
        };
        let fit = trial.fits();
        trials.push(trial);
        if !fit {
            first_oom = Some(batch_size);
            break;
        }
        last_fit = batch_size;
        if batch_size == bounds.max_batch {
            break;
        }
        batch_size = batch_size.saturating_mul(2).min(bounds.max_batch);
    }

    if let Some(oom) = first_oom {
        last_fit = match bisect(last_fit, oom, &mut probe, fits, &mut trials) {
            Ok(found) => found,
            Err((batch_size, error)) => return Err(probe_error(batch_size, error, trials)),
        };
    }
    if last_fit == 0 {
        return Err(SearchError::NothingFits { trials });
    }
    Ok(Found {
        trials,
        max_batch_size: last_fit,
    })
}

/// Binary search strictly between `good` (a size known to pass, 0 for none) and `bad` (a
/// size known to fail) for the largest size whose trial passes `is_good`. Each trial run is
/// pushed to `trials`; a probe error stops the search with its batch size.
///
/// With a monotone probe the answer is exact after ⌈log2(bad − good)⌉ trials.
pub fn bisect<T, E, P, G>(
    mut good: usize,
    mut bad: usize,
    probe: &mut P,
    is_good: G,
    trials: &mut Vec<T>,
) -> Result<usize, (usize, E)>
where
    P: FnMut(usize) -> Result<T, E>,
    G: Fn(&T) -> bool,
{
    while bad > good + 1 {
        let mid = good + (bad - good) / 2;
        let trial = probe(mid).map_err(|error| (mid, error))?;
        if is_good(&trial) {
            good = mid;
        } else {
            bad = mid;
        }
        trials.push(trial);
    }
    Ok(good)
}

/// A search's outcome from its answer (0: nothing fits) or the probe's error, with its
/// trials.
fn found<T, E>(
    result: Result<usize, (usize, E)>,
    trials: Vec<T>,
) -> Result<Found<T>, SearchError<T, E>> {
    match result {
        Ok(0) => Err(SearchError::NothingFits { trials }),
        Ok(max_batch_size) => Ok(Found {
            trials,
            max_batch_size,
        }),
        Err((batch_size, error)) => Err(probe_error(batch_size, error, trials)),
    }
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

/// Peak bytes that leave `margin` (a fraction, 0 ≤ margin < 1) of `capacity` free.
pub fn allowed_peak(capacity: u64, margin: f64) -> u64 {
    (capacity as f64 * (1.0 - margin)).floor() as u64
}

/// The bracket in which to [`bisect`] for the largest size that leaves a margin free.
///
/// `ran` holds `(batch_size, within)` for every trial run, `within` being "fit with a peak
/// at most the allowed bytes". Returns `(good, bad)`: the largest size within (0: none)
/// and the smallest size above it that was not (`good + 1` when none was, so that there is
/// nothing left to search).
pub fn margin_bracket(ran: &[(usize, bool)]) -> (usize, usize) {
    let good = ran
        .iter()
        .filter(|(_, within)| *within)
        .map(|(b, _)| *b)
        .max()
        .unwrap_or(0);
    let bad = ran
        .iter()
        .filter(|(b, within)| !*within && *b > good)
        .map(|(b, _)| *b)
        .min()
        .unwrap_or(good + 1);
    (good, bad)
}

#[cfg(test)]
mod tests;
