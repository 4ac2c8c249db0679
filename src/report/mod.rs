//! The [`Report`]: every figure of one search as a plain serde value, and one function per
//! output format ([`text`], [`json`]). How it was measured is not its business.

pub mod json;
pub mod text;

use serde::Serialize;

use crate::device::DeviceKind;
use crate::memory::CapacitySource;
use crate::models::ModelInfo;
use crate::probe::Trial;
use crate::workload::OptimizerKind;

/// The device a search ran on and the capacity it measured against.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Bytes held before the first trial (weights, optimizer state, runtime).
    pub baseline_bytes: u64,
    /// Why the CPU was used instead of the CUDA device asked for.
    pub fallback: Option<String>,
}

/// How the search was run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// The optimizer of a built-in workload (`None` for a caller's own step).
    pub optimizer: Option<OptimizerKind>,
    /// Full training steps per trial.
    pub steps_per_trial: usize,
    /// Fraction of the capacity the recommended size leaves free.
    pub margin: f64,
    /// The first batch size tried.
    pub start: usize,
    /// The largest batch size that could be tried.
    pub max_batch: usize,
}

/// The schedule at one reported size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleRow {
    /// "max", "largest_power_of_two" or "recommended".
    pub label: &'static str,
    /// Samples per step.
    pub batch_size: u64,
    /// Steps in one epoch.
    pub steps_per_epoch: u64,
    /// Steps over all epochs.
    pub total_steps: u64,
}

/// The dataset the schedule is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dataset {
    /// Training samples.
    pub size: u64,
    /// Passes over the samples.
    pub epochs: u64,
    /// True when the last partial batch of each epoch is dropped.
    pub drop_last: bool,
}

/// Everything one search found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The model trained.
    pub model: ModelInfo,
    /// The device and its capacity.
    pub device: DeviceInfo,
    /// How the search ran.
    pub settings: Settings,
    /// Every trial, in the order run.
    pub trials: Vec<Trial>,
    /// The largest batch size that fit.
    pub max_batch_size: usize,
    /// True when `max_batch_size` is the cap (`settings.max_batch`): larger sizes were
    /// not tried.
    pub max_is_cap: bool,
    /// The largest power of two ≤ `max_batch_size` (it was run).
    pub largest_power_of_two: usize,
    /// The largest run size whose peak leaves `settings.margin` of the capacity free
    /// (`None` when no size does).
    pub recommended_batch_size: Option<usize>,
    /// The dataset the schedule is for (`None`: no `--dataset-size`).
    pub dataset: Option<Dataset>,
    /// The schedule at the reported sizes (empty without a dataset).
    pub schedule: Vec<ScheduleRow>,
}

impl Report {
    /// The trial that ran at `batch_size` and fit, if any.
    pub fn fitting_trial(&self, batch_size: usize) -> Option<&Trial> {
        self.trials
            .iter()
            .rev()
            .find(|t| t.batch_size == batch_size && t.outcome == crate::probe::Outcome::Fits)
    }
}
