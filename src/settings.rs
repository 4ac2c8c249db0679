//! The settings of one search, as plain data: everything the search and its report depend
//! on besides the model and the device. Validated once, in [`SearchSettings::validate`];
//! serialised into the report and into the result cache's key.

use serde::{Deserialize, Serialize};

use crate::models::StepMode;

use crate::error::{Error, Setting};
use crate::schedule::Dataset;
use crate::search::{Bounds, Strategy};
use crate::workload::OptimizerKind;

/// The largest batch size tried when neither a cap nor a dataset size is given.
pub const DEFAULT_MAX_BATCH: usize = 65_536;

/// A gradient-accumulation goal: reach `target_batch` samples per optimizer step
/// on `world_size` replicas, with micro-batches of `micro_batch` (default: the largest power
/// of two ≤ the recommended size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccumulationGoal {
    /// The global batch wanted.
    pub target_batch: u64,
    /// Data-parallel replicas.
    pub world_size: u64,
    /// The micro-batch, or `None` for the default.
    pub micro_batch: Option<usize>,
}

/// How one search runs and what its report covers. [`Default`] gives the documented
/// defaults: guided, start 1, 2 steps per trial, 5% margin, no dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSettings {
    /// How sizes are chosen.
    pub strategy: Strategy,
    /// The first batch size tried.
    pub start: usize,
    /// The largest batch size tried (`None`: the dataset size, else [`DEFAULT_MAX_BATCH`]).
    pub max_batch: Option<usize>,
    /// Full training steps per trial.
    pub steps_per_trial: usize,
    /// The fraction of the capacity the recommended size leaves free.
    pub margin: f64,
    /// The optimizer of a built-in workload, for the report (`None` for a caller's step).
    pub optimizer: Option<OptimizerKind>,
    /// Training samples, for the schedule (`None`: no schedule).
    pub dataset_size: Option<u64>,
    /// Passes over the dataset.
    pub epochs: u64,
    /// True when each epoch's last partial batch is dropped.
    pub drop_last: bool,
    /// The gradient-accumulation goal asked for.
    pub accumulation: Option<AccumulationGoal>,
    /// Consecutive steps of the verification run at the recommended size after the search
    /// (0: none).
    #[serde(default)]
    pub verify_steps: usize,
    /// An estimate of the bytes each sample adds, from elsewhere (a sequence-length
    /// sweep's other lengths): the guided search's first jump from one measured size goes
    /// where it meets the capacity (see `search::Bracket`). `None`: no estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sample_hint: Option<u64>,
    /// The largest batch size whose tensors the device's kernels can loop over (CUDA: 2³¹
    /// elements, see `models::CUDA_MAX_ELEMENTS`), when it is below the other caps: the
    /// search stops there and `check` refuses a size past it. `None`: no such limit binds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element_cap: Option<usize>,
    /// What the step is: training (the default), evaluation or generation; the report and
    /// the cache say it, and the search is the same for each.
    #[serde(default)]
    pub mode: StepMode,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Seeded,
            start: 1,
            max_batch: None,
            steps_per_trial: 2,
            margin: DEFAULT_MARGIN,
            optimizer: None,
            dataset_size: None,
            epochs: 1,
            drop_last: false,
            accumulation: None,
            verify_steps: 0,
            bytes_per_sample_hint: None,
            element_cap: None,
            mode: StepMode::Train,
        }
    }
}

impl SearchSettings {
    /// The dataset the schedule is for, when a dataset size was given.
    pub fn dataset(&self) -> Option<Dataset> {
        self.dataset_size.map(|size| Dataset {
            size,
            epochs: self.epochs,
            drop_last: self.drop_last,
        })
    }

    /// The largest batch size the search may try: the cap, else the dataset size, else
    /// [`DEFAULT_MAX_BATCH`].
    pub fn max_batch_or_default(&self) -> usize {
        self.max_batch.unwrap_or_else(|| {
            self.dataset_size.map_or(DEFAULT_MAX_BATCH, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            })
        })
    }

    /// Checks every setting and returns the search's batch-size bounds. The only place
    /// settings are checked: the CLI calls it before building anything.
    pub fn validate(&self) -> Result<Bounds, Error> {
        let at_least_one = |setting: Setting, value: u64, unit: &str| {
            if value == 0 {
                Err(Error::setting(
                    setting,
                    value,
                    format!("${setting:?} must be at least 1{unit}"),
                ))
            } else {
                Ok(())
            }
        };
        at_least_one(Setting::Start, self.start as u64, "")?;
        at_least_one(Setting::StepsPerTrial, self.steps_per_trial as u64, "")?;
        check_margin(self.margin)?;
        if let Some(goal) = self.accumulation {
            if goal.target_batch == 0 || goal.world_size == 0 || goal.micro_batch == Some(0) {
                return Err(Error::setting(
                    Setting::TargetBatch,
                    goal.target_batch,
                    "$TargetBatch, $WorldSize and $MicroBatch must be at least 1",
                ));
            }
        }
        if let Some(samples) = self.dataset_size {
            at_least_one(Setting::DatasetSize, samples, " sample")?;
        }
        at_least_one(Setting::Epochs, self.epochs, "")?;
        let max_batch = self.max_batch_or_default();
        if max_batch < self.start {
            return Err(Error::setting(
                Setting::Start,
                self.start,
                format!(
                    "$Start {} is above the largest batch size {max_batch} ($MaxBatch, or \
                     $DatasetSize)",
                    self.start
                ),
            ));
        }
        Ok(Bounds {
            start: self.start,
            max_batch,
            bytes_per_sample_hint: self.bytes_per_sample_hint,
        })
    }

    /// These settings on a device whose kernels can loop over tensors of at most `cap`
    /// samples (see [`element_cap`](Self::element_cap)): the largest batch size is lowered to
    /// `cap` where it was above it, and `check` refuses sizes past it.
    pub fn with_element_cap(&self, cap: usize) -> SearchSettings {
        SearchSettings {
            max_batch: Some(cap.min(self.max_batch_or_default())),
            element_cap: Some(cap),
            ..self.clone()
        }
    }

    /// True when the device's element cap is what bounds the search (the largest batch
    /// size it may try).
    pub fn capped_by_elements(&self) -> bool {
        self.element_cap
            .is_some_and(|cap| cap == self.max_batch_or_default())
    }

    /// Checks the settings of a pre-flight check at `batch_size`.
    pub fn validate_check(&self, batch_size: usize) -> Result<(), Error> {
        if batch_size == 0 {
            return Err(Error::setting(
                Setting::BatchSize,
                0,
                "$BatchSize must be at least 1",
            ));
        }
        if let Some(cap) = self.element_cap.filter(|&cap| batch_size > cap) {
            return Err(Error::setting(
                Setting::BatchSize,
                batch_size,
                format!(
                    "$BatchSize {batch_size} makes a tensor of more than 2^31 elements, which \
                     candle's CUDA kernels cannot loop over (past it they compute some \
                     elements twice or never finish); at most {cap} for this model and input \
                     on CUDA"
                ),
            ));
        }
        self.validate().map(|_| ())
    }
}

/// The fraction of the capacity the recommended size leaves free by default.
pub const DEFAULT_MARGIN: f64 = 0.05;

/// Refuses a margin that is not a fraction in [0, 1) (the search's and the estimate's).
pub fn check_margin(margin: f64) -> Result<(), Error> {
    if (0.0..1.0).contains(&margin) {
        Ok(())
    } else {
        Err(Error::setting(
            Setting::Margin,
            margin,
            format!("$Margin {margin} is not a fraction in [0, 1); e.g. 0.05 leaves 5% free"),
        ))
    }
}

/// Refuses a memory budget of 0 bytes (a caller's `Finder::budget`, the CLI's `--memory`).
pub fn check_budget(budget: Option<u64>) -> Result<(), Error> {
    match budget {
        Some(0) => Err(Error::setting(
            Setting::Memory,
            0,
            "$Memory must be more than 0 bytes",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bounded_by_the_default_cap() {
        let bounds = SearchSettings::default().validate().unwrap();
        assert_eq!((bounds.start, bounds.max_batch), (1, DEFAULT_MAX_BATCH));
    }

    #[test]
    fn the_dataset_size_caps_the_search_unless_a_cap_is_given() {
        let mut settings = SearchSettings {
            dataset_size: Some(1000),
            start: 4,
            ..SearchSettings::default()
        };
        let bounds = settings.validate().unwrap();
        assert_eq!((bounds.start, bounds.max_batch), (4, 1000));
        settings.max_batch = Some(64);
        assert_eq!(settings.validate().unwrap().max_batch, 64);
    }

    #[test]
    fn every_bad_setting_is_refused_naming_the_setting_to_change() {
        let base = SearchSettings::default;
        let cases = [
            (SearchSettings { start: 0, ..base() }, Setting::Start),
            (
                SearchSettings {
                    steps_per_trial: 0,
                    ..base()
                },
                Setting::StepsPerTrial,
            ),
            (
                SearchSettings {
                    margin: 1.0,
                    ..base()
                },
                Setting::Margin,
            ),
            (
                SearchSettings {
                    margin: -0.1,
                    ..base()
                },
                Setting::Margin,
            ),
            (
                SearchSettings {
                    dataset_size: Some(0),
                    ..base()
                },
                Setting::DatasetSize,
            ),
            (
                SearchSettings {
                    epochs: 0,
                    ..base()
                },
                Setting::Epochs,
            ),
            (
                SearchSettings {
                    start: 10,
                    max_batch: Some(5),
                    ..base()
                },
                Setting::Start,
            ),
            (
                SearchSettings {
                    accumulation: Some(AccumulationGoal {
                        target_batch: 64,
                        world_size: 0,
                        micro_batch: None,
                    }),
                    ..base()
                },
                Setting::WorldSize,
            ),
        ];
        // The message names the setting to change (the command line as its flag).
        for (settings, setting) in cases {
            let err = settings.validate().unwrap_err();
            let named = err.describe(&|s| format!("<{s:?}>"));
            assert!(
                named.contains(&format!("<{setting:?}>")),
                "{settings:?}: {named}"
            );
        }
        assert!(base().validate_check(0).is_err());
        assert!(base().validate_check(1).is_ok());
    }

    #[test]
    fn a_device_cap_lowers_the_largest_size_only_when_it_binds() {
        let settings = SearchSettings {
            dataset_size: Some(1000),
            ..SearchSettings::default()
        };
        let capped = settings.with_element_cap(262);
        assert_eq!(capped.validate().unwrap().max_batch, 262);
        assert!(capped.capped_by_elements());
        // A pre-flight check past the device's limit is refused before anything runs.
        assert!(capped.validate_check(262).is_ok());
        let err = capped.validate_check(263).unwrap_err().to_string();
        assert!(
            err.contains("2^31 elements") && err.contains("at most 262"),
            "{err}"
        );
        assert_eq!(
            capped.dataset_size,
            Some(1000),
            "the schedule keeps its dataset"
        );
        // A cap above the search's own keeps the search's, and still bounds a check.
        let loose = settings.with_element_cap(5000);
        assert_eq!(loose.validate().unwrap().max_batch, 1000);
        assert!(!loose.capped_by_elements());
        assert!(loose.validate_check(5000).is_ok() && loose.validate_check(5001).is_err());
    }

    #[test]
    fn the_dataset_is_derived_from_one_copy_of_each_setting() {
        let settings = SearchSettings {
            dataset_size: Some(50_000),
            epochs: 3,
            drop_last: true,
            ..SearchSettings::default()
        };
        assert_eq!(
            settings.dataset(),
            Some(Dataset {
                size: 50_000,
                epochs: 3,
                drop_last: true
            })
        );
        assert_eq!(SearchSettings::default().dataset(), None);
    }
}
