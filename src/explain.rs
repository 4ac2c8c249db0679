//! The library's errors as the command line says them: every setting an error names
//! becomes its flag, and a model that does not fit even at batch size 1 is told which flags
//! would lighten its step.

use maxbatch::device::DeviceKind;
use maxbatch::error::Setting;
use maxbatch::models::Architecture;
use maxbatch::{Error, OptimizerKind};

use crate::resolve::Model;

/// The flag that sets `setting`.
pub fn flag(setting: Setting) -> String {
    match setting {
        Setting::Model => "--model",
        Setting::Config => "--config",
        Setting::Device => "--device",
        Setting::NoFallback => "--no-fallback",
        Setting::Memory => "--memory",
        Setting::Dtype => "--dtype",
        Setting::Amp => "--amp",
        Setting::Optimizer => "--optimizer",
        Setting::SeqLen => "--seq-len",
        Setting::ImageSize => "--image-size",
        Setting::LoraRank => "--lora-rank",
        Setting::LoraAlpha => "--lora-alpha",
        Setting::LoraTargets => "--lora-targets",
        Setting::Start => "--start",
        Setting::MaxBatch => "--max-batch",
        Setting::StepsPerTrial => "--steps-per-trial",
        Setting::Margin => "--margin",
        Setting::DatasetSize => "--dataset-size",
        Setting::Epochs => "--epochs",
        Setting::TargetBatch => "--target-batch",
        Setting::WorldSize => "--world-size",
        Setting::MicroBatch => "--micro-batch",
        Setting::BatchSize => "--batch-size",
        Setting::VerifySteps => "--verify-steps",
        Setting::PlanFor => "--plan-for",
        Setting::Mode => "--mode",
        Setting::PromptLen => "--prompt-len",
        Setting::NewTokens => "--new-tokens",
        Setting::EvalBatchSize => "--eval-batch-size",
    }
    .to_string()
}

/// The message of `error` and its causes, one after another, each setting named by its
/// flag.
pub fn message(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|cause| match cause.downcast_ref::<Error>() {
            Some(error) => error.describe(&flag),
            None => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// `error`, with a hint that names only the flags that apply to `model` (trained with
/// `optimizer` on a `device`) when it is that batch size 1 does not fit.
pub fn nothing_fits(
    error: anyhow::Error,
    model: &Model,
    optimizer: OptimizerKind,
    device: DeviceKind,
) -> anyhow::Error {
    match error.downcast::<Error>() {
        Ok(Error::NothingFits {
            needs,
            capacity,
            at_warm_up: false,
            ..
        }) => Error::NothingFits {
            needs,
            capacity,
            hint: lighter_step(model, optimizer, device),
            at_warm_up: false,
        }
        .into(),
        Ok(other) => other.into(),
        Err(error) => error,
    }
}

/// The flags that would make `model`'s step need less memory, in words.
fn lighter_step(model: &Model, optimizer: OptimizerKind, device: DeviceKind) -> String {
    let mut ways = vec!["raise --memory".to_string()];
    let transformer = matches!(
        model.spec.architecture,
        Architecture::Gpt(_) | Architecture::Llama(..)
    );
    let resnet = matches!(model.spec.architecture, Architecture::ResNet(_));
    let mode = model.options.mode;
    if transformer && mode.cached_tokens().is_some() {
        ways.push("shorten --prompt-len or --new-tokens".into());
    } else if transformer {
        ways.push("shorten --seq-len".into());
    }
    if resnet {
        ways.push("use a smaller --image-size".into());
    }
    if optimizer == OptimizerKind::AdamW && mode.keeps_training_state() {
        ways.push("train with --optimizer sgd".into());
    }
    // The CPU cannot train convolutions in bf16.
    let options = &model.options;
    let half = options.dtype == candle_core::DType::F32 && options.amp.is_none();
    if half && !(resnet && device == DeviceKind::Cpu) {
        ways.push("--dtype bf16".into());
    }
    if transformer && options.lora.is_none() && mode.trains() {
        ways.push("fine-tune with --lora-rank 8".into());
    }
    let last = ways.pop().unwrap_or_default();
    let ways = if ways.is_empty() {
        last
    } else {
        format!("{}, or {last}", ways.join(", "))
    };
    format!("{ways} (--what-if measures each)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_its_own_flag() {
        let flags: std::collections::HashSet<String> =
            Setting::ALL.iter().map(|&s| flag(s)).collect();
        assert_eq!(flags.len(), Setting::ALL.len());
        let error = Error::setting(Setting::Margin, 1.5, "$Margin 1.5 is not a fraction");
        assert_eq!(
            message(&anyhow::Error::from(error)),
            "--margin 1.5 is not a fraction"
        );
    }
}
