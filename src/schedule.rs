//! Epoch and step arithmetic: pure, no candle.
//!
//! An epoch is one pass over the `N` samples of the dataset; a step is one optimizer update
//! on one batch. `steps_per_epoch = ceil(N / B)`, or `floor(N / B)` when the last partial
//! batch is dropped. 10,000 samples at batch size 100 are 100 steps per epoch.

use serde::{Deserialize, Serialize};

/// How the last, partial batch of an epoch is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LastBatch {
    /// The partial batch is a step of its own (ceil).
    #[default]
    Keep,
    /// The partial batch is dropped (floor).
    Drop,
}

/// Steps in one epoch of `dataset_size` samples at `batch_size` (≥ 1).
pub fn steps_per_epoch(dataset_size: u64, batch_size: u64, last: LastBatch) -> u64 {
    match last {
        LastBatch::Keep => dataset_size.div_ceil(batch_size),
        LastBatch::Drop => dataset_size / batch_size,
    }
}

/// The schedule at one batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Samples in one step.
    pub batch_size: u64,
    /// Steps in one epoch.
    pub steps_per_epoch: u64,
    /// Steps over all epochs.
    pub total_steps: u64,
}

/// The schedule for `epochs` passes over `dataset_size` samples at `batch_size` (≥ 1).
pub fn schedule(dataset_size: u64, batch_size: u64, epochs: u64, last: LastBatch) -> Schedule {
    let steps_per_epoch = steps_per_epoch(dataset_size, batch_size, last);
    Schedule {
        batch_size,
        steps_per_epoch,
        total_steps: steps_per_epoch.saturating_mul(epochs),
    }
}

/// The dataset a schedule is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// Training samples.
    pub size: u64,
    /// Passes over the samples.
    pub epochs: u64,
    /// True when the last partial batch of each epoch is dropped.
    pub drop_last: bool,
}

impl Dataset {
    /// How this dataset's last partial batch is treated.
    pub fn last_batch(&self) -> LastBatch {
        if self.drop_last {
            LastBatch::Drop
        } else {
            LastBatch::Keep
        }
    }

    /// The schedule at `batch_size` (≥ 1) over this dataset.
    pub fn schedule(&self, batch_size: u64) -> Schedule {
        schedule(self.size, batch_size, self.epochs, self.last_batch())
    }
}

/// The schedule at one reported size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRow {
    /// "max", "largest_power_of_two" or "recommended".
    pub label: String,
    /// Samples per step.
    pub batch_size: u64,
    /// Steps in one epoch.
    pub steps_per_epoch: u64,
    /// Steps over all epochs.
    pub total_steps: u64,
    /// Measured seconds per step at this size.
    #[serde(default)]
    pub seconds_per_step: Option<f64>,
    /// Estimated seconds per epoch: steps per epoch × seconds per step.
    #[serde(default)]
    pub epoch_seconds: Option<f64>,
    /// Estimated seconds for all epochs: total steps × seconds per step.
    #[serde(default)]
    pub total_seconds: Option<f64>,
}

/// The schedule rows for the reported sizes: `(label, batch size, seconds per step)` for
/// each size there is (a `None` size has no row), each batch size multiplied by
/// `replicas` (1 on one device; the world size for a data-parallel run's global batch).
pub fn rows(
    dataset: &Dataset,
    sizes: &[(&str, Option<usize>, Option<f64>)],
    replicas: usize,
) -> Vec<ScheduleRow> {
    sizes
        .iter()
        .filter_map(|&(label, batch_size, seconds_per_step)| {
            let global = batch_size?.saturating_mul(replicas) as u64;
            let s = dataset.schedule(global);
            Some(ScheduleRow {
                label: label.to_string(),
                batch_size: s.batch_size,
                steps_per_epoch: s.steps_per_epoch,
                total_steps: s.total_steps,
                seconds_per_step,
                epoch_seconds: seconds_per_step.map(|t| t * s.steps_per_epoch as f64),
                total_seconds: seconds_per_step.map(|t| t * s.total_steps as f64),
            })
        })
        .collect()
}

/// A gradient-accumulation plan: micro-batches of `micro_batch` on each of `world_size`
/// replicas, `accumulation_steps` of them per optimizer step, so that the global batch
/// `micro_batch × accumulation_steps × world_size` reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accumulation {
    /// The global batch asked for.
    pub target_batch: u64,
    /// Data-parallel replicas.
    pub world_size: u64,
    /// Samples per forward/backward pass on one replica.
    pub micro_batch: u64,
    /// Micro-batches per optimizer step.
    pub accumulation_steps: u64,
    /// Samples per optimizer step: micro × accumulation × world (≥ the target).
    pub global_batch: u64,
    /// Optimizer steps per epoch: ⌈N / global batch⌉ (None without a dataset size).
    pub optimizer_steps_per_epoch: Option<u64>,
    /// Optimizer steps over all epochs.
    pub total_optimizer_steps: Option<u64>,
}

/// The plan reaching `target_batch` with micro-batches of `micro_batch` on `world_size`
/// replicas (all ≥ 1): the fewest accumulation steps whose global batch is at least the
/// target.
pub fn accumulation(
    target_batch: u64,
    world_size: u64,
    micro_batch: u64,
    dataset: Option<&Dataset>,
) -> Accumulation {
    let per_step = micro_batch * world_size;
    let accumulation_steps = target_batch.div_ceil(per_step).max(1);
    let global_batch = per_step * accumulation_steps;
    let optimizer_steps_per_epoch = dataset.map(|d| d.size.div_ceil(global_batch));
    Accumulation {
        target_batch,
        world_size,
        micro_batch,
        accumulation_steps,
        global_batch,
        optimizer_steps_per_epoch,
        total_optimizer_steps: dataset
            .zip(optimizer_steps_per_epoch)
            .map(|(d, steps)| steps.saturating_mul(d.epochs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primers_examples() {
        assert_eq!(steps_per_epoch(10_000, 100, LastBatch::Keep), 100);
        assert_eq!(steps_per_epoch(1_000, 100, LastBatch::Keep), 10);
    }

    #[test]
    fn a_partial_batch_is_a_step_unless_dropped() {
        assert_eq!(steps_per_epoch(50_000, 3, LastBatch::Keep), 16_667);
        assert_eq!(steps_per_epoch(50_000, 3, LastBatch::Drop), 16_666);
        assert_eq!(steps_per_epoch(10, 64, LastBatch::Keep), 1);
        assert_eq!(steps_per_epoch(10, 64, LastBatch::Drop), 0);
    }

    #[test]
    fn matches_counting_batches_one_by_one() {
        for n in 0..300u64 {
            for b in 1..40u64 {
                let (mut full, mut partial, mut left) = (0, 0, n);
                while left > 0 {
                    if left >= b {
                        full += 1;
                        left -= b;
                    } else {
                        partial += 1;
                        left = 0;
                    }
                }
                assert_eq!(steps_per_epoch(n, b, LastBatch::Keep), full + partial);
                assert_eq!(steps_per_epoch(n, b, LastBatch::Drop), full);
            }
        }
    }

    #[test]
    fn accumulation_reaches_the_target_with_the_fewest_steps() {
        let plan = accumulation(
            512,
            1,
            32,
            Some(&Dataset {
                size: 50_000,
                epochs: 3,
                drop_last: false,
            }),
        );
        assert_eq!((plan.accumulation_steps, plan.global_batch), (16, 512));
        assert_eq!(plan.optimizer_steps_per_epoch, Some(98));
        assert_eq!(plan.total_optimizer_steps, Some(294));
        let plan = accumulation(500, 4, 24, None);
        assert_eq!((plan.accumulation_steps, plan.global_batch), (6, 576));
        assert_eq!(plan.optimizer_steps_per_epoch, None);
        for target in 1..300u64 {
            for world in 1..5u64 {
                for micro in 1..20u64 {
                    let p = accumulation(target, world, micro, None);
                    assert!(p.global_batch >= target);
                    assert!(
                        p.accumulation_steps == 1
                            || (p.accumulation_steps - 1) * micro * world < target
                    );
                }
            }
        }
    }

    #[test]
    fn total_steps_multiply_by_epochs() {
        let s = schedule(50_000, 2, 3, LastBatch::Keep);
        assert_eq!(
            s,
            Schedule {
                batch_size: 2,
                steps_per_epoch: 25_000,
                total_steps: 75_000
            }
        );
        assert_eq!(
            schedule(u64::MAX, 1, 3, LastBatch::Keep).total_steps,
            u64::MAX
        );
    }
}
