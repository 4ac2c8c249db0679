//! The outer values a command assembles once, after the library built its reports: a
//! search's report with the plans and what-if rows the command line adds, several devices'
//! answers with what a data-parallel run can use. Each serialises flat, keeping the JSON
//! keys of a report and beside them `plans` and `what_if`.

use maxbatch::plan::Plan;
use maxbatch::report::DataParallel;
use maxbatch::sizes::Sizes;
use maxbatch::sweep::Sweep;
use maxbatch::Report;
use serde::{Deserialize, Serialize};

/// One search's answer: its report, the plans for other memory, the what-if rows.
#[derive(Debug, Clone, Serialize)]
pub struct SearchAnswer {
    /// The report, as the library built it.
    #[serde(flatten)]
    pub report: Report,
    /// `--plan-for`: predicted sizes for other memory, none of them run.
    pub plans: Vec<Plan>,
    /// `--what-if`: each change's sizes, measured by a search of its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what_if: Vec<WhatIf>,
    /// `--mode train+eval`: the evaluation search run beside this training search, with
    /// the training state of its recommended size held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Box<SearchAnswer>>,
}

impl SearchAnswer {
    /// A report with nothing added.
    pub fn of(report: Report) -> Self {
        Self {
            report,
            plans: Vec::new(),
            what_if: Vec::new(),
            evaluation: None,
        }
    }
}

/// A sequence-length sweep's answer: each length's entry with its report as a search's
/// answer (a sweep adds no plans and no what-if rows).
#[derive(Debug, Clone, Serialize)]
pub struct SweepAnswer {
    /// One entry per length, in the order searched.
    pub sweep: Vec<SweepEntryAnswer>,
}

/// One length of a sweep (see [`maxbatch::sweep::SweepEntry`]).
#[derive(Debug, Clone, Serialize)]
pub struct SweepEntryAnswer {
    /// Tokens per sample.
    pub seq_len: usize,
    /// The sizes at this length.
    #[serde(flatten, with = "maxbatch::sizes::measured_keys")]
    pub sizes: Sizes,
    /// Tokens in one batch at the maximum.
    pub tokens_per_batch: u64,
    /// The length's answer.
    pub report: SearchAnswer,
}

impl SweepAnswer {
    /// The answer of `sweep`.
    pub fn of(sweep: &Sweep) -> Self {
        Self {
            sweep: sweep
                .sweep
                .iter()
                .map(|e| SweepEntryAnswer {
                    seq_len: e.seq_len,
                    sizes: e.sizes,
                    tokens_per_batch: e.tokens_per_batch,
                    report: SearchAnswer::of(e.report.clone()),
                })
                .collect(),
        }
    }
}

/// Several devices' answers, one search each, and what a data-parallel run with one
/// replica per device can use.
#[derive(Debug, Clone, Serialize)]
pub struct DevicesAnswer {
    /// Each device's answer.
    pub devices: Vec<SearchAnswer>,
    /// The minimum of each size over the devices and the schedule at the global batch.
    #[serde(flatten)]
    pub parallel: DataParallel,
}

/// What one what-if change gave: measured by a search of its own, or why it could not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhatIf {
    /// The flags of the change, e.g. "--optimizer sgd".
    pub change: String,
    /// The change's sizes (`None`: its search gave none; JSON: the three keys, `null`).
    #[serde(flatten, with = "maxbatch::sizes::maybe_measured_keys")]
    pub sizes: Option<Sizes>,
    /// The peak at the maximum, in bytes.
    pub peak_bytes: Option<u64>,
    /// Trials the search ran.
    pub trials: usize,
    /// True: every figure was measured by a real search (a change never gets a predicted
    /// figure here).
    pub measured: bool,
    /// Why the change gave no size: batch size 1 does not fit, or it cannot run here.
    pub error: Option<String>,
}

impl WhatIf {
    /// The row of `change` from the report of its search.
    pub fn measured(change: String, report: &Report) -> Self {
        Self {
            change,
            sizes: Some(report.sizes),
            peak_bytes: report.peak_at_max(),
            trials: report.trials.len(),
            measured: true,
            error: None,
        }
    }

    /// The row of `change` whose search gave no size, and why.
    pub fn failed(change: String, error: &str) -> Self {
        Self {
            change,
            sizes: None,
            peak_bytes: None,
            trials: 0,
            measured: true,
            error: Some(error.to_string()),
        }
    }
}
