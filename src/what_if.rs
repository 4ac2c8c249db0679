//! `--what-if`: the changes a user could make to train a larger batch (or to fit at all),
//! each measured by a search of its own: the optimizer, the precision, the sequence length,
//! LoRA. Which changes apply comes from the model and the flags as asked; running them is
//! the binary's (each is a whole search, answered from the result cache when it can be).

use std::fmt;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::models::{Architecture, ModelOptions, ModelSpec};
use crate::report::Report;
use crate::workload::OptimizerKind;

/// The rank `--what-if` tries LoRA at (PEFT's examples' usual rank).
pub const WHAT_IF_LORA_RANK: usize = 8;

/// One change to the training setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Another optimizer (SGD keeps no state).
    Optimizer(OptimizerKind),
    /// Mixed precision in this half dtype.
    Amp(DType),
    /// Everything in this dtype.
    Dtype(DType),
    /// This many tokens per sample.
    SeqLen(usize),
    /// LoRA adapters of this rank on the family's default targets.
    Lora(usize),
}

impl fmt::Display for Change {
    /// The flags that make the change, e.g. `--optimizer sgd`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Optimizer(o) => write!(f, "--optimizer {o}"),
            Change::Amp(d) => write!(f, "--amp {}", d.as_str()),
            Change::Dtype(d) => write!(f, "--dtype {}", d.as_str()),
            Change::SeqLen(n) => write!(f, "--seq-len {n}"),
            Change::Lora(r) => write!(f, "--lora-rank {r}"),
        }
    }
}

/// The changes that apply to `spec` trained with `options` and `optimizer`, one at a time:
/// SGD instead of AdamW, bf16 mixed precision and all-bf16 instead of f32, half the
/// sequence length (transformers), LoRA (transformers and Llama-family configs, when every
/// weight is trained). `seq_len` is the length the model trains at as asked.
pub fn changes(
    spec: &ModelSpec,
    options: &ModelOptions,
    optimizer: OptimizerKind,
    seq_len: Option<usize>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    if optimizer != OptimizerKind::Sgd {
        changes.push(Change::Optimizer(OptimizerKind::Sgd));
    }
    if options.dtype == DType::F32 && options.amp.is_none() {
        changes.push(Change::Amp(DType::BF16));
        changes.push(Change::Dtype(DType::BF16));
    }
    let decoder = matches!(
        spec.architecture,
        Architecture::Gpt(_) | Architecture::Llama(..)
    );
    if let Some(len) = seq_len.filter(|&n| decoder && n >= 2) {
        changes.push(Change::SeqLen(len / 2));
    }
    if decoder && options.lora.is_none() {
        changes.push(Change::Lora(WHAT_IF_LORA_RANK));
    }
    changes
}

/// What one change gave: measured by a search of its own, or why it could not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhatIf {
    /// The flags of the change, e.g. "--optimizer sgd".
    pub change: String,
    /// The largest batch size that fit (`None`: the search did not finish).
    pub max_batch_size: Option<usize>,
    /// The largest power of two at most the maximum.
    pub largest_power_of_two: Option<usize>,
    /// The recommended size.
    pub recommended_batch_size: Option<usize>,
    /// The peak at the maximum, in bytes.
    pub peak_bytes: Option<u64>,
    /// Trials the search ran (0 when answered from the cache's earlier run, which ran them).
    pub trials: usize,
    /// True: every figure was measured by a real search. (A change never gets a predicted
    /// figure here.)
    pub measured: bool,
    /// Why the change gave no size: batch size 1 does not fit, or it cannot run on this
    /// device.
    pub error: Option<String>,
}

impl WhatIf {
    /// The row of `change` from the report of its search.
    pub fn measured(change: Change, report: &Report) -> Self {
        Self {
            change: change.to_string(),
            max_batch_size: Some(report.max_batch_size),
            largest_power_of_two: Some(report.largest_power_of_two),
            recommended_batch_size: report.recommended_batch_size,
            peak_bytes: report.peak_at_max(),
            trials: report.trials.len(),
            measured: true,
            error: None,
        }
    }

    /// The row of `change` whose search gave no size, and why.
    pub fn failed(change: Change, error: &str) -> Self {
        Self {
            change: change.to_string(),
            max_batch_size: None,
            largest_power_of_two: None,
            recommended_batch_size: None,
            peak_bytes: None,
            trials: 0,
            measured: true,
            error: Some(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(
        spec: &str,
        options: &ModelOptions,
        optimizer: OptimizerKind,
        seq: Option<usize>,
    ) -> Vec<String> {
        let spec = ModelSpec::preset(spec).unwrap();
        changes(&spec, options, optimizer, seq)
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn each_family_gets_the_changes_that_apply_to_it() {
        let f32 = ModelOptions::default();
        assert_eq!(
            flags("transformer-small", &f32, OptimizerKind::AdamW, Some(512)),
            [
                "--optimizer sgd",
                "--amp bf16",
                "--dtype bf16",
                "--seq-len 256",
                "--lora-rank 8"
            ]
        );
        assert_eq!(
            flags("mlp", &f32, OptimizerKind::AdamW, None),
            ["--optimizer sgd", "--amp bf16", "--dtype bf16"]
        );
        let amp = ModelOptions {
            amp: Some(DType::BF16),
            ..f32
        };
        assert_eq!(
            flags("transformer-tiny", &amp, OptimizerKind::Sgd, Some(1)),
            ["--lora-rank 8"]
        );
    }
}
