//! Built-in architectures, one file each, and the registry of named presets.
//!
//! Every model is trainable end to end: its forward pass uses only differentiable candle
//! ops (never the fast `softmax_last_dim` or `layer_norm` kernels, which have no backward
//! and would hide both gradients and memory; see DESIGN.md). Inputs are synthetic batches
//! of the worst-case shape.

pub mod mlp;
pub mod transformer;

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use crate::error::Error;

/// One synthetic batch: inputs and the targets of the loss.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids or features.
    pub inputs: Tensor,
    /// Class or next-token ids.
    pub targets: Tensor,
}

/// A built-in model: synthetic batches and a differentiable loss.
pub trait Model {
    /// A random batch of `batch_size` samples of the model's input shape.
    fn batch(&self, batch_size: usize, device: &Device) -> Result<Batch>;

    /// The scalar training loss of `batch` (cross-entropy).
    fn loss(&self, batch: &Batch) -> Result<Tensor>;
}

/// Choices that change a built-in model's input shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Tokens per sample for the transformers (default: the preset's context length).
    pub seq_len: Option<usize>,
}

/// What the report says about a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    /// The preset's name, e.g. "transformer-small".
    pub name: String,
    /// Trainable parameters.
    pub parameters: u64,
    /// One sample's input shape, e.g. "512 tokens".
    pub input: String,
    /// A one-line description of the architecture.
    pub summary: String,
}

/// A named architecture with a fixed shape.
#[derive(Debug, Clone, Copy)]
pub enum Preset {
    /// A multi-layer perceptron on flat features.
    Mlp(mlp::MlpConfig),
    /// A decoder-only GPT-style transformer.
    Transformer(transformer::GptConfig),
}

/// The built-in presets, in the order `maxbatch models` lists them.
pub const PRESETS: &[(&str, Preset)] = &[
    ("mlp", Preset::Mlp(mlp::MlpConfig::DEFAULT)),
    (
        "transformer-tiny",
        Preset::Transformer(transformer::GptConfig::TINY),
    ),
    (
        "transformer-small",
        Preset::Transformer(transformer::GptConfig::SMALL),
    ),
];

/// The preset called `name`.
pub fn preset(name: &str) -> std::result::Result<Preset, Error> {
    PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
            known: PRESETS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// What the report says about preset `name` with `options`; allocates nothing.
pub fn info(name: &str, options: &ModelOptions) -> std::result::Result<ModelInfo, Error> {
    let preset = preset(name)?;
    let (parameters, input, summary) = match preset {
        Preset::Mlp(c) => (c.parameter_count(), c.input(), c.summary()),
        Preset::Transformer(c) => {
            let seq_len = c.seq_len(options)?;
            (
                c.parameter_count(),
                format!("{seq_len} tokens"),
                c.summary(),
            )
        }
    };
    Ok(ModelInfo {
        name: name.to_string(),
        parameters,
        input,
        summary,
    })
}

/// Builds preset `name` with random weights from `vb`.
pub fn build(
    name: &str,
    options: &ModelOptions,
    vb: VarBuilder,
) -> std::result::Result<Box<dyn Model>, Error> {
    Ok(match preset(name)? {
        Preset::Mlp(c) => Box::new(mlp::Mlp::new(c, vb)?),
        Preset::Transformer(c) => {
            let seq_len = c.seq_len(options)?;
            Box::new(transformer::Gpt::new(c, seq_len, vb)?)
        }
    })
}

/// Random class ids in `0..classes` of the given shape.
pub(crate) fn random_ids(
    classes: usize,
    shape: impl Into<candle_core::Shape>,
    device: &Device,
) -> Result<Tensor> {
    // Uniform in [0, classes) then truncated: every id is a valid class.
    let ids = Tensor::rand(0f32, classes as f32, shape, device)?;
    ids.clamp(0f32, (classes - 1) as f32)?
        .to_dtype(candle_core::DType::U32)
}
