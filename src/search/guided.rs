//! The guided search: sizes chosen from the measured peaks, exact like the doubling search.
//!
//! It starts at batch size 1, jumps to the largest size that one measurement says is safe,
//! then tries where the line through the measured peaks meets the capacity (aiming short
//! when that is far beyond them), verifies the answer with the size after it, and falls
//! back to binary search when predictions miss. [`Guide`] holds where it stands; its
//! transitions are the paragraphs of [`toward_threshold`]'s description.

use super::line::{self, to_size, TRUSTED_REACH};
use super::{bisect, found, probe_error, Bounds, Found, Measured, SearchError};

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
        let from = Bracket {
            good: bounds.start,
            bad: None,
            cap: bounds.max_batch,
            bytes_per_sample_hint: bounds.bytes_per_sample_hint,
        };
        toward_threshold(
            from,
            Boundary::Run,
            capacity,
            &mut probe,
            |t: &T| t.fits(),
            &mut trials,
        )
    } else {
        bisect(0, bounds.start, &mut probe, |t: &T| t.fits(), &mut trials)
    };
    found(result, trials)
}

/// The share of the way from the largest measured size to a far prediction that the
/// search aims at: a size that should fit with room to spare, measured close enough to the
/// answer for the next line to predict it exactly.
const SHORT_OF_PREDICTION: f64 = 0.75;

/// Predictions that may miss before the rest of the search is plain binary search.
const MAX_MISSES: u32 = 3;

/// Why the guided search chose a size: it decides what the size's failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aim {
    /// The line's prediction, close enough to the measured sizes to be exact.
    Predicted,
    /// Short of a far prediction, or the largest size one measurement says is safe: it
    /// should fit with room to spare, so a failure no measured peak explains is retried
    /// once before it is believed.
    WithRoom,
    /// The size after the one the line says is the answer: its failure ends the search.
    Next,
    /// Binary search (after a miss), or doubling while no failure is known.
    Bracket,
}

/// How the next size is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// From the line through the measured peaks.
    Predict,
    /// One binary-search step inside the bracket: the last size aimed at failed.
    StepAfterMiss,
    /// Binary search to the end: predictions missed [`MAX_MISSES`] times.
    BinarySearch,
}

/// What the search does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// The bracket is closed: this is the answer.
    Answer(usize),
    /// The size after the answer failed although the line says it fits: try it once more.
    RetryBoundary(usize),
    /// Binary search between these two sizes to the end.
    BinarySearch { good: usize, bad: usize },
    /// Try this size.
    Try(usize, Aim),
}

/// Where the guided search stands: the bracket `(good, bad)` around the answer, how the
/// next size is chosen, and whether its one retry of a surprising failure is spent.
#[derive(Debug, Clone)]
struct Guide {
    /// The largest size known to pass.
    good: usize,
    /// The smallest size known to fail (`None`: none yet).
    bad: Option<usize>,
    /// The largest size that may be tried.
    cap: usize,
    /// Predictions that missed so far.
    misses: u32,
    /// True when the last size aimed at failed (and was not the size after an answer).
    after_miss: bool,
    /// True once a surprising failure has been tried again.
    retried: bool,
    /// Whether the size after the answer is run or left to the line.
    boundary: Boundary,
    /// Bytes per sample estimated elsewhere (see [`Bracket::bytes_per_sample_hint`]).
    hint: Option<u64>,
}

/// How the guided search settles the size after its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// It is run and must fail: the answer is exact.
    Run,
    /// A size that passed and that the line says is the last to pass is the answer; the
    /// size after it is predicted to fail, not run. The answer is verified but may be one
    /// short of the exact one, a safe error for the recommended size.
    Predicted,
}

/// Where a guided search starts: the largest size known to pass, the smallest known to
/// fail (`None`: none yet), and the largest size it may try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bracket {
    /// The largest size known to pass.
    pub good: usize,
    /// The smallest size known to fail.
    pub bad: Option<usize>,
    /// The largest size that may be tried.
    pub cap: usize,
    /// An estimate of the bytes each sample adds, from elsewhere (another sequence length's
    /// line, on the high side): with one measured size, the search jumps where a line of
    /// that slope through it meets the threshold, instead of where peaks proportional to
    /// the batch size would (which a large fixed part makes short).
    pub bytes_per_sample_hint: Option<u64>,
}

impl Guide {
    fn new(from: Bracket, boundary: Boundary) -> Self {
        let Bracket {
            good,
            bad,
            cap,
            bytes_per_sample_hint,
        } = from;
        Self {
            good,
            bad,
            cap,
            hint: bytes_per_sample_hint.filter(|&h| h > 0),
            misses: 0,
            after_miss: false,
            retried: false,
            boundary,
        }
    }

    /// One past the largest size that may still be the answer.
    fn upper(&self) -> usize {
        self.bad.unwrap_or(self.cap.saturating_add(1))
    }

    fn mode(&self) -> Mode {
        if self.misses >= MAX_MISSES {
            Mode::BinarySearch
        } else if self.after_miss {
            Mode::StepAfterMiss
        } else {
            Mode::Predict
        }
    }

    /// The next move, from the bracket and the measured trials.
    fn next_move<T: Measured>(
        &self,
        trials: &[T],
        is_good: &dyn Fn(&T) -> bool,
        threshold: u64,
    ) -> Move {
        let (good, upper) = (self.good, self.upper());
        if upper <= good + 1 {
            // The answer's boundary failed although the measured line says it fits: a
            // transient failure is worth one more trial before it decides the answer.
            let suspicious = self.bad == Some(good + 1)
                && trials
                    .iter()
                    .rev()
                    .find(|t| t.batch_size() == good + 1)
                    .is_some_and(|t| t.ran())
                && line::predict_at(trials, is_good, threshold).is_some_and(|p| p > good);
            return if suspicious && !self.retried {
                Move::RetryBoundary(good + 1)
            } else {
                Move::Answer(good)
            };
        }
        match (self.mode(), self.bad) {
            (Mode::BinarySearch, Some(bad)) => Move::BinarySearch { good, bad },
            (Mode::StepAfterMiss, _) => self
                .interpolated_step(trials, is_good, threshold)
                .unwrap_or_else(|| self.bracket_step()),
            (Mode::BinarySearch, _) => self.bracket_step(),
            (Mode::Predict, _) => self.predicted_step(trials, is_good, threshold),
        }
    }

    /// One step inside the bracket: its midpoint, or doubling while no failure is known.
    fn bracket_step(&self) -> Move {
        let candidate = match self.bad {
            Some(bad) => self.good + (bad - self.good) / 2,
            None => self
                .good
                .saturating_mul(2)
                .clamp(self.good + 1, self.upper() - 1),
        };
        Move::Try(candidate, Aim::Bracket)
    }

    /// After a miss: where the line between a passing size and the failed one (whose
    /// boundaries before its stop were measured) meets the threshold, when it lies inside
    /// the bracket. An interpolation, not an extrapolation: it is trusted like a prediction.
    fn interpolated_step<T: Measured>(
        &self,
        trials: &[T],
        is_good: &dyn Fn(&T) -> bool,
        threshold: u64,
    ) -> Option<Move> {
        let fit = line::fit(trials, is_good, threshold)?;
        let inside = fit.predicted > self.good && fit.predicted < self.upper();
        (inside && fit.line.to.0 >= self.upper())
            .then_some(Move::Try(fit.predicted, Aim::Predicted))
    }

    /// The size the measurements point to, and why, strictly inside the bracket.
    fn predicted_step<T: Measured>(
        &self,
        trials: &[T],
        is_good: &dyn Fn(&T) -> bool,
        threshold: u64,
    ) -> Move {
        let inside = |b: usize| b.clamp(self.good + 1, self.upper() - 1);
        let Some(fit) = line::fit(trials, is_good, threshold) else {
            // One measured size: the largest size it says is safe, if it has a peak.
            return match line::measured_points(trials, is_good).as_slice() {
                [point] if point.1 > 0 => {
                    let jump = match self.hint {
                        Some(per_sample) => {
                            point.0 as f64 + (threshold as f64 - point.1 as f64) / per_sample as f64
                        }
                        None => proportional(*point, threshold),
                    };
                    Move::Try(inside(to_size(jump)), Aim::WithRoom)
                }
                _ => self.bracket_step(),
            };
        };
        let predicted = fit.predicted;
        if predicted == self.good && self.boundary == Boundary::Predicted {
            return Move::Answer(self.good);
        }
        if predicted <= self.good {
            return Move::Try(self.good + 1, Aim::Next);
        }
        if self.bad.is_some_and(|bad| predicted > bad) {
            // A size the line says fits has failed: the line is wrong up here.
            return self.bracket_step();
        }
        if fit.line.reach(predicted) <= TRUSTED_REACH {
            return Move::Try(inside(predicted), Aim::Predicted);
        }
        let short = fit.line.to.0 as f64 + SHORT_OF_PREDICTION * (predicted - fit.line.to.0) as f64;
        Move::Try(inside(to_size(short)), Aim::WithRoom)
    }

    /// A size aimed at ran (or was refused): move the bracket and count a miss.
    fn record(&mut self, candidate: usize, aim: Aim, passed: bool) {
        if passed {
            self.good = candidate;
            self.after_miss = false;
            if aim == Aim::Next {
                // The line said the size before was the answer: it undershot.
                self.misses += 1;
            }
        } else {
            self.bad = Some(candidate);
            self.after_miss = aim != Aim::Next;
            if matches!(aim, Aim::Predicted | Aim::WithRoom) {
                self.misses += 1;
            }
        }
    }

    /// The answer's boundary passed when tried again: the search goes on above it.
    fn boundary_passed(&mut self) {
        self.good += 1;
        self.bad = None;
    }
}

/// The largest size above `from.good` (which passed `is_good`) and below `from.bad` (which
/// did not; `None`: none known, up to `from.cap`) whose trial passes, guided by the measured
/// peaks meeting `threshold` bytes. With [`Boundary::Predicted`] the size after the answer
/// is left to the line (the recommended size's search: one trial instead of two).
///
/// With one measured size it tries the largest size that one says is safe (peaks
/// proportional to the batch size, which overestimates them since part of the memory is
/// fixed): far enough for the line through the two to be accurate. With two or more, it
/// tries where a line through two measured sizes meets the threshold (see [`line::fit`]),
/// aiming short when that is far beyond them. A size that fits is refitted; when the line
/// says it is the answer, the size after it is tried, and it failing ends the search. A
/// prediction that fails is followed by the line through the failed size's measured
/// boundaries where that lands inside the bracket, else by one binary-search step; after
/// three misses the rest is binary search. A failure the measurements say cannot happen (a
/// size aimed at with room to spare that failed with no peak past the threshold, or the
/// answer's boundary while the line says it fits) is tried once more, so that a transient
/// failure (a flaky size) does not decide the answer.
pub fn toward_threshold<T, E, P, G>(
    from: Bracket,
    boundary: Boundary,
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
    let mut guide = Guide::new(from, boundary);
    let mut run = |size: usize, trials: &mut Vec<T>| {
        let trial = probe(size).map_err(|e| (size, e))?;
        let passed = is_good(&trial);
        // A failure no measurement explains: it ran, and its peak (if any) is not past the
        // threshold. A trial measured past it failed for memory, and again would.
        let unexplained = !passed && trial.ran() && trial.peak().is_none_or(|p| p <= threshold);
        trials.push(trial);
        Ok((passed, unexplained))
    };
    loop {
        match guide.next_move(trials, &is_good, threshold) {
            Move::Answer(answer) => return Ok(answer),
            Move::BinarySearch { good, bad } => {
                return bisect(good, bad, probe, is_good, trials);
            }
            Move::RetryBoundary(size) => {
                guide.retried = true;
                if !run(size, trials)?.0 {
                    return Ok(guide.good);
                }
                guide.boundary_passed();
            }
            Move::Try(candidate, aim) => {
                let (mut passed, unexplained) = run(candidate, trials)?;
                if unexplained && aim == Aim::WithRoom && !guide.retried {
                    guide.retried = true;
                    passed = run(candidate, trials)?.0;
                }
                guide.record(candidate, aim, passed);
            }
        }
    }
}

/// The batch size at which peaks proportional to the batch size, through `point`, reach
/// `threshold`: a size that fits when the fixed part of the memory is not negative.
fn proportional(point: (usize, u64), threshold: u64) -> f64 {
    point.0 as f64 * threshold as f64 / point.1.max(1) as f64
}

#[cfg(test)]
mod tests;
