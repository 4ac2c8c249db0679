//! The [`Report`]: every figure of one search as a plain serde value (its JSON is the
//! report's JSON), built once by `finish::report`, never changed after. How it was measured
//! is not its business; how it is shown is the command line's (and [`text::trial_line`],
//! a trial as one line of progress).

pub mod text;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceKind, ResolvedDevice};
use crate::memory::{CapacitySource, MemoryMeter};
use crate::models::ModelInfo;
pub use crate::schedule::{Dataset, ScheduleRow};
use crate::search::{Calibration, StepModel};
use crate::settings::SearchSettings;
use crate::sizes::Sizes;
use crate::trial::Trial;

/// The device a search ran on and the capacity it measured against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// "cpu" or "cuda".
    pub kind: DeviceKind,
    /// e.g. "cpu", "cuda:0".
    pub name: String,
    /// Bytes a trial's peak may reach and still fit.
    pub capacity_bytes: u64,
    /// Where the capacity came from.
    pub capacity_source: CapacitySource,
    /// True when the capacity is a budget maxbatch enforces (CPU), not the hardware's.
    pub capacity_is_budget: bool,
    /// Bytes every trial counts as held before it: the model, its optimizer state and the
    /// CPU's matrix-multiply workspaces (or, for a library call without
    /// `Finder::model_holds`, everything the process held); `None` when the trials ran in
    /// child processes.
    pub baseline_bytes: Option<u64>,
    /// True when `baseline_bytes` is everything the process held when the search started
    /// (a library call on the CPU that named no model bytes: its data counts too).
    #[serde(default)]
    pub baseline_is_whole_heap: bool,
    /// The device's total memory (CUDA; `None` on the CPU).
    pub total_bytes: Option<u64>,
    /// Bytes the device holds outside the measured allocator after the warm-up step:
    /// driver context, cuBLAS workspace, kernels, other processes (CUDA; `None` on the CPU).
    pub overhead_bytes: Option<u64>,
    /// Why the CPU was used instead of the CUDA device asked for.
    pub fallback: Option<String>,
    /// How the peaks were measured, in words: the counting allocator, the CUDA memory
    /// pool's high-water marks, or samples of the device's memory in use (approximate).
    #[serde(default)]
    pub meter: String,
}

impl DeviceInfo {
    /// The device block for `device` measured by `meter`, before anything is measured:
    /// no baseline, no overhead.
    pub fn of(device: &ResolvedDevice, meter: &dyn MemoryMeter) -> Self {
        let capacity = meter.capacity();
        Self {
            kind: device.kind,
            name: device.name.clone(),
            capacity_bytes: capacity.bytes,
            capacity_source: capacity.source,
            capacity_is_budget: capacity.is_budget,
            baseline_bytes: None,
            baseline_is_whole_heap: false,
            total_bytes: meter.total_bytes(),
            overhead_bytes: None,
            fallback: device.fallback.clone(),
            meter: meter.describe().to_string(),
        }
    }
}

/// Everything one search found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The model trained.
    pub model: ModelInfo,
    /// The device and its capacity.
    pub device: DeviceInfo,
    /// How the search ran (`max_batch` is the cap it ran under).
    pub settings: SearchSettings,
    /// Every trial, in the order run.
    pub trials: Vec<Trial>,
    /// The largest batch size that fit, the largest power of two at most it, and the
    /// largest whose peak leaves `settings.margin` of the capacity free: each of them ran
    /// and fit (JSON: `max_batch_size`, `largest_power_of_two`, `recommended_batch_size`).
    #[serde(flatten, with = "crate::sizes::measured_keys")]
    pub sizes: Sizes,
    /// True when the maximum is the cap (`settings.max_batch`): larger sizes were not
    /// tried.
    pub max_is_cap: bool,
    /// The smallest size above the maximum that was tried, when it was refused by the
    /// machine guard's prediction instead of run: a prediction, not a measurement, then
    /// bounds the maximum, which may be larger.
    #[serde(default)]
    pub unmeasured_boundary: Option<usize>,
    /// The dataset the schedule is for (`None`: no `--dataset-size`).
    pub dataset: Option<Dataset>,
    /// The schedule at the reported sizes (empty without a dataset).
    pub schedule: Vec<ScheduleRow>,
    /// True when the search was stopped early: the sizes are those verified so far.
    #[serde(default)]
    pub interrupted: bool,
    /// True when this report was answered from the result cache, not measured by this run.
    #[serde(default)]
    pub from_cache: bool,
    /// peak ≈ fixed + per sample × batch size, and how well it predicted the maximum.
    #[serde(default)]
    pub memory_model: Option<crate::analysis::MemoryModel>,
    /// Set when a smaller size trained more samples per second than the maximum.
    #[serde(default)]
    pub throughput_note: Option<String>,
    /// A generation's KV cache and prefill and decode throughput (`--mode generate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<crate::analysis::Generation>,
    /// The gradient accumulation that reaches the goal asked for, if one was.
    #[serde(default)]
    pub accumulation: Option<crate::schedule::Accumulation>,
    /// The verification run (consecutive steps at the recommended size), when one was
    /// asked for.
    #[serde(default)]
    pub verification: Option<crate::verification::Verification>,
    /// The trials the search for the maximum ran (the first ones in `trials`); the rest
    /// are the finishing trials (power of two, recommended size, micro-batch).
    #[serde(default)]
    pub search_trials: usize,
    /// How the estimate from shapes seeded the search, when it did.
    #[serde(default)]
    pub seeding: Option<Seeding>,
}

/// How the estimate from shapes seeded a search (see docs/design.md, "The seeded search").
/// Every figure but the measured ones is a prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seeding {
    /// The estimate as the search used it, in the bytes a trial measures: what the
    /// process held before the first step (measured), then each phase's lines.
    pub model: StepModel,
    /// Where the estimate met the capacity: the first size the search ran.
    pub seed: usize,
    /// The first trial's measured peak against the estimate's prediction there (`None`
    /// when it measured nothing to compare: stopped early with no boundary measured).
    pub first_trial: Option<Calibration>,
    /// Trials the recommended size took beyond the first one the calibrated model chose
    /// (0: the model was right; `None`: no recommended size was searched for).
    pub recommended_corrections: Option<usize>,
}

impl Report {
    /// The trial that ran at `batch_size` and fit, if any.
    pub fn fitting_trial(&self, batch_size: usize) -> Option<&Trial> {
        crate::trial::fitting_trial(&self.trials, batch_size)
    }

    /// The measured peak at the maximum, if it ran.
    pub fn peak_at_max(&self) -> Option<u64> {
        self.fitting_trial(self.sizes.max)?.peak_bytes
    }
}

/// What a data-parallel run with one replica per device can use, from one search per
/// device: the minimum of each size over the devices, and the schedule at the global batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataParallel {
    /// Replicas: one per device.
    pub world_size: usize,
    /// The smallest of each size over the devices: what every replica fits (JSON: the
    /// report's three keys).
    #[serde(flatten, with = "crate::sizes::measured_keys")]
    pub sizes: Sizes,
    /// The schedule at the global batch (per-device size × world size).
    pub schedule: Vec<ScheduleRow>,
}

impl DataParallel {
    /// Combines the reports of one search per device (at least one).
    pub fn new(devices: &[Report]) -> Self {
        let sizes = Sizes::minimum(devices.iter().map(|r| r.sizes)).unwrap_or_default();
        let world_size = devices.len();
        let schedule = devices
            .first()
            .and_then(|r| r.dataset.as_ref())
            .map(|d| {
                crate::schedule::rows(
                    d,
                    &[
                        ("max", Some(sizes.max), None),
                        ("largest_power_of_two", Some(sizes.power_of_two), None),
                        ("recommended", sizes.recommended, None),
                    ],
                    world_size,
                )
            })
            .unwrap_or_default();
        Self {
            world_size,
            sizes,
            schedule,
        }
    }

    /// The sizes a data-parallel run uses that did not run on some device: `(device index,
    /// batch size)`, to be run there before they are reported as fitting on every device.
    pub fn unverified(&self, devices: &[Report]) -> Vec<(usize, usize)> {
        let sizes = [
            Some(self.sizes.max),
            Some(self.sizes.power_of_two),
            self.sizes.recommended,
        ];
        let mut missing = Vec::new();
        for (i, report) in devices.iter().enumerate() {
            for size in sizes.into_iter().flatten().filter(|&b| b > 0) {
                if report.fitting_trial(size).is_none() && !missing.contains(&(i, size)) {
                    missing.push((i, size));
                }
            }
        }
        missing
    }
}

/// Fixed reports for tests (the library's, and the binary's, built with the `test-hooks`
/// feature that only the tests turn on).
#[cfg(any(test, feature = "test-hooks"))]
#[doc(hidden)]
pub mod fixtures {
    use super::*;
    use crate::trial::Outcome;
    use crate::workload::OptimizerKind;

    /// A trial at `batch_size` that fit (or not) with `peak` bytes.
    pub fn trial(batch_size: usize, fits: bool, peak: u64) -> Trial {
        let outcome = if fits { Outcome::Fits } else { Outcome::Oom };
        Trial {
            peak_bytes: Some(peak),
            step_seconds: fits.then_some(0.5),
            samples_per_second: fits.then_some(batch_size as f64 / 0.5),
            steps: if fits { 2 } else { 0 },
            ..Trial::new(batch_size, outcome)
        }
    }

    /// A fixed report on a CUDA device named `name`: sizes 1 to `max` fit at 100 MiB a
    /// sample, `max + 1` does not; its recommended size is `recommended`.
    pub fn fixture(name: &str, max: usize, recommended: Option<usize>) -> Report {
        Report {
            model: ModelInfo {
                name: "transformer-tiny".into(),
                parameters: 168_192,
                input: "64 tokens".into(),
                summary: "GPT".into(),
                dtype: "f32".into(),
                ..ModelInfo::default()
            },
            device: DeviceInfo {
                kind: DeviceKind::Cuda,
                name: name.into(),
                capacity_bytes: 1 << 30,
                capacity_source: CapacitySource::Device,
                capacity_is_budget: false,
                baseline_bytes: Some(1 << 20),
                baseline_is_whole_heap: false,
                total_bytes: Some(2 << 30),
                overhead_bytes: Some(500 << 20),
                fallback: None,
                meter: "the CUDA memory pool's high-water marks".into(),
            },
            settings: SearchSettings {
                optimizer: Some(OptimizerKind::AdamW),
                max_batch: Some(1000),
                dataset_size: Some(1000),
                epochs: 2,
                ..SearchSettings::default()
            },
            trials: (1..=max)
                .map(|b| trial(b, true, b as u64 * (100 << 20)))
                .chain([trial(max + 1, false, 2 << 30)])
                .collect(),
            sizes: Sizes {
                max,
                power_of_two: crate::search::largest_power_of_two_at_most(max),
                recommended,
            },
            max_is_cap: false,
            unmeasured_boundary: None,
            dataset: Some(Dataset {
                size: 1000,
                epochs: 2,
                drop_last: false,
            }),
            schedule: vec![],
            interrupted: false,
            from_cache: false,
            memory_model: None,
            throughput_note: None,
            generation: None,
            accumulation: None,
            verification: None,
            search_trials: max + 1,
            seeding: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use fixtures::fixture;
    #[test]
    fn data_parallel_takes_the_minimum_and_the_global_batch() {
        let reports = [fixture("cuda:0", 9, Some(8)), fixture("cuda:1", 6, Some(5))];
        let dp = DataParallel::new(&reports);
        assert_eq!(dp.world_size, 2);
        assert_eq!(
            dp.sizes,
            Sizes {
                max: 6,
                power_of_two: 4,
                recommended: Some(5)
            }
        );
        let max_row = &dp.schedule[0];
        // Global batch 12: ceil(1000 / 12) = 84 steps per epoch, 2 epochs.
        assert_eq!(
            (
                max_row.batch_size,
                max_row.steps_per_epoch,
                max_row.total_steps
            ),
            (12, 84, 168)
        );

        let reports = [fixture("cuda:0", 9, None), fixture("cuda:1", 6, Some(5))];
        assert_eq!(DataParallel::new(&reports).sizes.recommended, None);
    }

    #[test]
    fn sizes_a_device_skipped_are_run_there_before_they_are_reported() {
        // cuda:1's minimum (6) ran on cuda:0 in the fixture (every size up to its max did).
        let reports = [fixture("cuda:0", 9, Some(8)), fixture("cuda:1", 6, Some(5))];
        let unverified = |reports: &[Report]| DataParallel::new(reports).unverified(reports);
        assert_eq!(unverified(&reports), []);
        // A search that skipped sizes (the guided search does): cuda:0 only ran 1, 4, 9, 10.
        let mut sparse = fixture("cuda:0", 9, Some(8));
        sparse
            .trials
            .retain(|t| [1, 4, 9, 10].contains(&t.batch_size));
        let reports = [sparse, fixture("cuda:1", 6, Some(5))];
        assert_eq!(unverified(&reports), [(0, 6), (0, 5)]);
    }

    #[test]
    fn the_json_report_keeps_its_documented_keys() {
        let value = serde_json::to_value(fixture("cuda:0", 6, Some(5))).unwrap();
        for pointer in [
            "/model/name",
            "/model/parameters",
            "/device/kind",
            "/device/capacity_bytes",
            "/trials/0/batch_size",
            "/trials/0/outcome",
            "/trials/0/peak_bytes",
            "/trials/0/step_seconds",
            "/trials/0/reserved_bytes",
            "/trials/0/leaked_bytes",
            "/max_batch_size",
            "/largest_power_of_two",
            "/recommended_batch_size",
            "/schedule",
        ] {
            assert!(value.pointer(pointer).is_some(), "no {pointer} in {value}");
        }
        assert_eq!(value["device"]["kind"], "cuda");
        assert_eq!(value["trials"][6]["outcome"], "oom");
    }

    // The analysis of a fixed report (analysis.rs is pure; its fixture lives here).
    #[test]
    fn the_model_recovers_a_straight_line_and_predicts_the_maximum() {
        // The fixture's peaks are 100 MiB per sample from 0: fixed 0, slope 100 MiB.
        let report = fixture("cuda:0", 6, Some(5));
        let model = crate::analysis::memory_model(
            &report.trials,
            report.sizes.max,
            report.device.capacity_bytes,
            &report.model,
            report.settings.optimizer,
        )
        .unwrap();
        assert_eq!(model.bytes_per_sample, 100 << 20);
        assert_eq!(model.fixed_bytes, 0);
        assert_eq!(model.fitted_from, [2, 5]);
        assert_eq!(model.predicted_peak_bytes, model.measured_peak_bytes);
        assert_eq!(model.relative_error, 0.0);
        // 168,192 f32 parameters, AdamW's two moments.
        assert_eq!(model.weights_bytes, Some(672_768));
        assert_eq!(model.optimizer_bytes, Some(2 * 672_768));
    }

    #[test]
    fn a_faster_smaller_size_is_noted_only_when_reported_and_beyond_the_noise() {
        use crate::analysis::{throughput_note, ONE_STEP_NOISE};
        let mut report = fixture("cuda:0", 6, Some(5));
        let reported = [4, 5];
        // Two steps a trial: the second is timed.
        for t in report.trials.iter_mut() {
            t.step_times = vec![1.0, 0.5];
        }
        // 0.5 s a step at every size: the maximum trains the most samples per second.
        assert_eq!(throughput_note(&report.trials, 6, &reported), None);
        // The maximum slows down, within one step's noise: nothing to say.
        report.trials[5].step_seconds = Some(0.5 * 6.0 / 5.0 * (1.0 + ONE_STEP_NOISE * 0.9));
        assert_eq!(throughput_note(&report.trials, 6, &reported), None);
        // Beyond it: the faster reported size is named, with the figures.
        report.trials[5].step_seconds = Some(10.0);
        let note = throughput_note(&report.trials, 6, &reported).unwrap();
        assert!(
            note.starts_with(
                "batch size 5 trained 10.0 samples/s, 1567% more than the maximum's 0.600"
            ),
            "{note}"
        );
        // A size the report does not give is never named.
        assert_eq!(
            throughput_note(&report.trials, 6, &[4]).map(|n| n.contains("size 4")),
            Some(true)
        );
        assert_eq!(throughput_note(&report.trials, 6, &[]), None);
        // One step a trial: its time includes first touches, so nothing is said.
        let mut one_step = report.clone();
        for t in one_step.trials.iter_mut() {
            t.step_times.truncate(1);
        }
        assert_eq!(throughput_note(&one_step.trials, 6, &reported), None);
        // Steps timed after the first bring their own, smaller, spread.
        report.trials[5].step_seconds = Some(0.5 * 6.0 / 5.0 * 1.1);
        assert_eq!(throughput_note(&report.trials, 6, &reported), None);
        for t in report.trials.iter_mut() {
            let s = t.step_seconds.unwrap_or(0.5);
            t.step_times = vec![2.0 * s, s, s, s];
        }
        let note = throughput_note(&report.trials, 6, &reported).unwrap();
        assert!(
            note.contains("beyond the 0% its step time varies"),
            "{note}"
        );
    }
}
