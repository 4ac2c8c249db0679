//! One model of a training step's memory: the estimate from shapes, as lines in the batch
//! size per phase boundary, calibrated by the trials that ran. The seeded search starts
//! where it meets the capacity, the finishing trials aim where the calibrated model says,
//! and the plans for other memory extend it. Pure arithmetic, no candle.
//!
//! A phase's peak is the largest of its lines (the backward pass's moments, for instance);
//! the step's peak at a boundary is the largest of the phases up to it, as a trial measures
//! it. Calibration scales what each phase holds above what is held before any step (the
//! weights, the optimizer's state, the workspaces: measured, not predicted) by the ratio of
//! a measured peak to the predicted one at that size, so that the model passes through the
//! measurement and keeps the estimate's shape (which phase overtakes which, and where).

use serde::{Deserialize, Serialize};

use super::line::to_size;
use super::Measured;

/// Bytes that grow by a fixed amount per sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelLine {
    /// Bytes at batch size 0.
    pub fixed: f64,
    /// Bytes each sample adds.
    pub per_sample: f64,
}

impl ModelLine {
    /// Its bytes at `batch_size`.
    pub fn at(&self, batch_size: usize) -> f64 {
        self.fixed + self.per_sample * batch_size as f64
    }

    /// The largest batch size at which it stays at or under `threshold`; `None` when it
    /// never passes it.
    fn meets(&self, threshold: f64) -> Option<usize> {
        if self.fixed > threshold {
            Some(0)
        } else if self.per_sample > 0.0 {
            // A hair of tolerance: a prediction that lands on the threshold exactly must not
            // lose a sample to rounding.
            Some(to_size((threshold - self.fixed) / self.per_sample + 1e-9))
        } else {
            None
        }
    }
}

/// A training step's predicted peak at each phase boundary, in the bytes a trial measures
/// (what is held before the step included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepModel {
    /// What is held before any step, measured: calibration leaves it as it is.
    pub held: u64,
    /// Each phase's lines, in the step's order (forward, backward, update); a phase's own
    /// peak is the largest of its lines.
    pub phases: Vec<Vec<ModelLine>>,
}

/// How a calibrated model came to be: the trial it was scaled to, and by how much.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The batch size of the trial whose measured peaks the model was scaled to.
    pub batch_size: usize,
    /// The model's peak there before calibration.
    pub predicted_peak_bytes: u64,
    /// The measured peak there (a lower bound when not `complete`).
    pub measured_peak_bytes: u64,
    /// True when the trial measured its whole step (it fit, or failed only at the update).
    pub complete: bool,
    /// Each phase's scale (measured over predicted bytes above what is held).
    pub ratios: Vec<f64>,
}

impl Calibration {
    /// (predicted − measured) / measured at the calibrating trial.
    pub fn relative_error(&self) -> f64 {
        (self.predicted_peak_bytes as f64 - self.measured_peak_bytes as f64)
            / self.measured_peak_bytes.max(1) as f64
    }
}

/// Peaks closer than this share of them are the same peak: a phase whose measured peak so
/// far rose by less did not set it.
const SAME_PEAK: f64 = 1e-4;

impl StepModel {
    /// Phase `k`'s own predicted peak at `batch_size`.
    pub fn phase_at(&self, k: usize, batch_size: usize) -> f64 {
        self.phases[k]
            .iter()
            .map(|line| line.at(batch_size))
            .fold(self.held as f64, f64::max)
    }

    /// The predicted peak of the step at `batch_size`.
    pub fn peak_at(&self, batch_size: usize) -> u64 {
        (0..self.phases.len())
            .map(|k| self.phase_at(k, batch_size))
            .fold(self.held as f64, f64::max)
            .round() as u64
    }

    /// The largest batch size whose predicted peak is at most `threshold` (0: not even one
    /// sample); `None` when no line grows with the batch size.
    pub fn max_for(&self, threshold: u64) -> Option<usize> {
        if self.held > threshold {
            return Some(0);
        }
        self.phases
            .iter()
            .flatten()
            .filter_map(|line| line.meets(threshold as f64))
            .min()
    }

    /// The model scaled, phase by phase, to pass through `trial`'s measured peaks (see the
    /// module's notes). A trial stopped early calibrates the phases whose boundaries it
    /// measured, and the rest at least as much and enough to reach the peak it measured
    /// (a lower bound). `None` when it measured nothing that can: no boundary and only a
    /// lower bound, or nothing predicted above what is held.
    pub fn calibrated_by<T: Measured>(&self, trial: &T) -> Option<(StepModel, Calibration)> {
        let measured = trial.peak()?;
        let b = trial.batch_size();
        let held = self.held as f64;
        let above = |k: usize| self.phase_at(k, b) - held;
        let ratio_of = |peak: u64, k: usize| (peak as f64 - held) / above(k);
        let n = self.phases.len();
        let boundaries = trial.phase_peaks();
        let complete = trial.peak_is_complete();
        let ratios: Vec<f64> = if !boundaries.is_empty() && boundaries.len() <= n {
            // Each boundary's peak so far: the phase set it when it rose there, else the
            // phase stayed under it, which bounds its scale from above.
            let mut ratios: Vec<f64> = Vec::with_capacity(n);
            for (k, &peak) in boundaries.iter().enumerate() {
                let rose = k == 0 || peak as f64 > boundaries[k - 1] as f64 * (1.0 + SAME_PEAK);
                let ratio = ratio_of(peak, k);
                ratios.push(match ratios.last() {
                    Some(&before) if !rose => before.min(ratio),
                    _ => ratio,
                });
            }
            if ratios.len() < n {
                // Stopped before these boundaries: they held at least the peak measured.
                let known = ratios.iter().copied().fold(0.0, f64::max);
                let largest = (ratios.len()..n).max_by(|&i, &j| above(i).total_cmp(&above(j)))?;
                let reach = ratio_of(measured, largest);
                ratios.resize(n, known.max(reach));
            }
            ratios
        } else if complete {
            let k = (0..n).max_by(|&i, &j| above(i).total_cmp(&above(j)))?;
            vec![ratio_of(measured, k); n]
        } else {
            return None;
        };
        if ratios.iter().any(|r| !r.is_finite() || *r <= 0.0) {
            return None;
        }
        let scaled = StepModel {
            held: self.held,
            phases: self
                .phases
                .iter()
                .zip(&ratios)
                .map(|(lines, &r)| {
                    lines
                        .iter()
                        .map(|line| ModelLine {
                            fixed: held + (line.fixed - held) * r,
                            per_sample: line.per_sample * r,
                        })
                        .collect()
                })
                .collect(),
        };
        let calibration = Calibration {
            batch_size: b,
            predicted_peak_bytes: self.peak_at(b),
            measured_peak_bytes: measured,
            complete,
            ratios,
        };
        Some((scaled, calibration))
    }

    /// The model moved, phase by phase, to pass through `trial`'s measured peaks by adding
    /// bytes instead of scaling them: the other way a miscount can go (a term the estimate
    /// misses or counts twice that does not grow with the batch size). Plans span the two.
    /// `None` unless the trial measured its whole step.
    pub fn shifted_by<T: Measured>(&self, trial: &T) -> Option<StepModel> {
        if !trial.peak_is_complete() {
            return None;
        }
        let b = trial.batch_size();
        let n = self.phases.len();
        let boundaries = trial.phase_peaks();
        let shifts: Vec<f64> = if boundaries.len() == n && n > 0 {
            let mut shifts: Vec<f64> = Vec::with_capacity(n);
            for (k, &peak) in boundaries.iter().enumerate() {
                let rose = k == 0 || peak as f64 > boundaries[k - 1] as f64 * (1.0 + SAME_PEAK);
                let shift = peak as f64 - self.phase_at(k, b);
                shifts.push(match shifts.last() {
                    Some(&before) if !rose => before.min(shift),
                    _ => shift,
                });
            }
            shifts
        } else {
            vec![trial.peak()? as f64 - self.peak_at(b) as f64; n]
        };
        Some(StepModel {
            held: self.held,
            phases: self
                .phases
                .iter()
                .zip(&shifts)
                .map(|(lines, &d)| {
                    lines
                        .iter()
                        .map(|line| ModelLine {
                            fixed: line.fixed + d,
                            per_sample: line.per_sample,
                        })
                        .collect()
                })
                .collect(),
        })
    }

    /// The model calibrated by the trial among `trials` that says most about where the
    /// peak meets `threshold`: a complete measurement before a partial one, then the peak
    /// nearest the threshold. The model as it is when none can calibrate it.
    pub fn nearest_calibration<T: Measured>(
        &self,
        trials: &[T],
        threshold: u64,
    ) -> (StepModel, Option<Calibration>) {
        let rank = |t: &T| {
            let distance = t.peak().map_or(u64::MAX, |p| p.abs_diff(threshold));
            (!t.peak_is_complete(), distance)
        };
        trials
            .iter()
            .filter_map(|t| Some((rank(t), self.calibrated_by(t)?)))
            .min_by_key(|(rank, _)| *rank)
            .map_or_else(
                || (self.clone(), None),
                |(_, (model, calibration))| (model, Some(calibration)),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held 1000; forward 1000 + 10 b; backward the larger of 1500 + 10 b and 1000 + 30 b;
    /// update 1400 + 20 b.
    fn model() -> StepModel {
        let line = |fixed: f64, per_sample: f64| ModelLine { fixed, per_sample };
        StepModel {
            held: 1000,
            phases: vec![
                vec![line(1000.0, 10.0)],
                vec![line(1500.0, 10.0), line(1000.0, 30.0)],
                vec![line(1400.0, 20.0)],
            ],
        }
    }

    struct Point {
        b: usize,
        peak: u64,
        phases: Vec<u64>,
        complete: bool,
    }

    impl crate::search::Fits for Point {
        fn fits(&self) -> bool {
            true
        }
    }

    impl Measured for Point {
        fn batch_size(&self) -> usize {
            self.b
        }
        fn peak(&self) -> Option<u64> {
            Some(self.peak)
        }
        fn phase_peaks(&self) -> Vec<u64> {
            self.phases.clone()
        }
        fn peak_is_complete(&self) -> bool {
            self.complete
        }
    }

    /// A trial of the model `m` at `b`: its boundaries as a trial measures them (the peak so
    /// far).
    fn measured(m: &StepModel, b: usize) -> Point {
        let mut so_far = m.held as f64;
        let phases: Vec<u64> = (0..m.phases.len())
            .map(|k| {
                so_far = so_far.max(m.phase_at(k, b));
                so_far.round() as u64
            })
            .collect();
        Point {
            b,
            peak: m.peak_at(b),
            phases,
            complete: true,
        }
    }

    #[test]
    fn the_max_is_the_largest_size_under_every_line() {
        let m = model();
        for threshold in [0, 999, 1000, 1499, 1500, 1510, 2000, 2600, 10_000, 1 << 30] {
            let max = m.max_for(threshold).unwrap();
            let fits = |b: usize| m.peak_at(b) <= threshold;
            assert!(max == 0 || fits(max), "{threshold}: {max}");
            assert!(!fits(max + 1), "{threshold}: {max}");
        }
        let flat = StepModel {
            held: 10,
            phases: vec![vec![ModelLine {
                fixed: 20.0,
                per_sample: 0.0,
            }]],
        };
        assert_eq!(flat.max_for(100), None);
        assert_eq!(flat.max_for(5), Some(0));
    }

    #[test]
    fn a_model_scaled_by_its_own_measurement_is_itself() {
        let m = model();
        for b in [1, 7, 25, 26, 40, 300] {
            let (calibrated, c) = m.calibrated_by(&measured(&m, b)).unwrap();
            for k in 0..3 {
                for size in [1, 10, 100, 1000] {
                    let (x, y) = (calibrated.phase_at(k, size), m.phase_at(k, size));
                    // A phase under another's peak keeps its scale only as an upper bound.
                    assert!(x <= y + 1e-6, "b {b}, phase {k}, size {size}: {x} vs {y}");
                }
            }
            assert_eq!(calibrated.peak_at(b), m.peak_at(b));
            assert!(c.relative_error().abs() < 1e-9);
        }
    }

    #[test]
    fn each_phase_is_scaled_by_its_own_error() {
        // The truth: the estimate counted the backward pass 20% short and the update 10% long.
        let estimate = model();
        let mut truth = model();
        for line in &mut truth.phases[1] {
            line.fixed = 1000.0 + (line.fixed - 1000.0) * 1.2;
            line.per_sample *= 1.2;
        }
        truth.phases[2][0] = ModelLine {
            fixed: 1000.0 + 400.0 / 1.1,
            per_sample: 20.0 / 1.1,
        };
        // At 40 samples the backward pass sets the peak (2440 against 2164), and the update's
        // peak is hidden under it: only an upper bound on its scale is known.
        let (calibrated, c) = estimate.calibrated_by(&measured(&truth, 40)).unwrap();
        assert!((c.ratios[0] - 1.0).abs() < 1e-9);
        assert!((c.ratios[1] - 1.2).abs() < 1e-9, "{:?}", c.ratios);
        assert!(c.ratios[2] <= 1.2);
        for threshold in [2500, 5000, 50_000, 1 << 24] {
            assert_eq!(
                calibrated.max_for(threshold),
                truth.max_for(threshold),
                "{threshold}"
            );
        }
    }

    #[test]
    fn without_boundaries_one_ratio_scales_every_phase() {
        let m = model();
        let point = Point {
            b: 100,
            peak: 1000 + 2 * (m.peak_at(100) - 1000),
            phases: Vec::new(),
            complete: true,
        };
        let (calibrated, c) = m.calibrated_by(&point).unwrap();
        assert_eq!(c.ratios, vec![2.0; 3]);
        assert_eq!(calibrated.peak_at(100), point.peak);
        assert_eq!(calibrated.peak_at(200), 1000 + 2 * (m.peak_at(200) - 1000));
    }

    #[test]
    fn a_stopped_trial_calibrates_what_it_measured() {
        let m = model();
        // Stopped inside the backward pass at 50 samples: the forward boundary measured
        // 1.5 times the prediction above what is held; the peak, a lower bound, more.
        let stopped = Point {
            b: 50,
            peak: 3000,
            phases: vec![1000 + 750],
            complete: false,
        };
        let (calibrated, c) = m.calibrated_by(&stopped).unwrap();
        assert!((c.ratios[0] - 1.5).abs() < 1e-9, "{:?}", c.ratios);
        assert!(c.ratios[1..].iter().all(|&r| r >= 1.5));
        assert!(calibrated.peak_at(50) >= 3000);
        // A lower bound alone says nothing.
        let bare = Point {
            phases: Vec::new(),
            ..stopped
        };
        assert!(m.calibrated_by(&bare).is_none());
    }

    #[test]
    fn a_shift_passes_through_the_measurement_and_keeps_the_slopes() {
        let m = model();
        let mut point = measured(&m, 40);
        for p in &mut point.phases {
            *p += 300;
        }
        point.peak += 300;
        let shifted = m.shifted_by(&point).unwrap();
        assert_eq!(shifted.peak_at(40), point.peak);
        assert_eq!(shifted.peak_at(400), m.peak_at(400) + 300);
        point.complete = false;
        assert!(m.shifted_by(&point).is_none());
    }

    #[test]
    fn a_complete_measurement_wins_then_the_nearest() {
        let m = model();
        let mut far = measured(&m, 2);
        far.peak = 1000 + 2 * (far.peak - 1000);
        far.phases.clear();
        let near = measured(&m, 40);
        let mut partial = measured(&m, 41);
        partial.complete = false;
        partial.phases.truncate(1);
        let (_, c) = m.nearest_calibration(&[far, near, partial], m.peak_at(41));
        assert_eq!(c.unwrap().batch_size, 40);
        let (same, none) = m.nearest_calibration::<Point>(&[], 5000);
        assert_eq!((same, none), (m, None));
    }
}
