//! Built-in architectures, one file each, the registry of named presets, and Hugging Face
//! `config.json` files ([`hf_config`]).
//!
//! Every model is trainable end to end: its forward pass uses only differentiable candle
//! ops (never the fast `softmax_last_dim`, `layer_norm`, `rms_norm` or `rope` kernels,
//! which have no backward and would hide both gradients and memory; see docs/design.md). Inputs
//! are synthetic batches of the worst-case shape.

pub mod frozen;
pub mod generation;
pub mod hf_config;
mod info;
mod layers;
pub mod llama;
pub mod lora;
pub mod mlp;
mod mode;
mod options;
pub mod params;
pub mod resnet;
mod spec;
pub mod transformer;

use candle_core::{Device, Result, Tensor};

pub use info::ModelInfo;
pub(crate) use layers::{causal_mask, cross_entropy, head_logits, random_ids, token_batch};
pub use mode::StepMode;
pub(crate) use options::bounded_seq_len;
pub use options::ModelOptions;
pub use spec::{ModelSource, ModelSpec, CUDA_MAX_ELEMENTS};

/// One synthetic batch: inputs and the targets of the loss.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, features or images.
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

    /// The model as a decoder that can generate with a KV cache (see [`generation`]): the
    /// transformers and the Llama family; `None` for the others.
    fn decoder(&self) -> Option<&dyn generation::Decoder> {
        None
    }
}

/// An architecture with a fixed shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    /// A multi-layer perceptron on flat features.
    Mlp(mlp::MlpConfig),
    /// A GPT-2-style decoder (learned positions, LayerNorm, GELU).
    Gpt(transformer::GptConfig),
    /// A Llama-family decoder; the string names the family ("llama", "mistral", "qwen2").
    Llama(llama::LlamaConfig, String),
    /// A CIFAR-style ResNet.
    ResNet(resnet::ResNetConfig),
}

/// The built-in presets, in the order `maxbatch models` lists them.
pub const PRESETS: &[(&str, Architecture)] = &[
    ("mlp", Architecture::Mlp(mlp::MlpConfig::DEFAULT)),
    (
        "transformer-tiny",
        Architecture::Gpt(transformer::GptConfig::TINY),
    ),
    (
        "transformer-small",
        Architecture::Gpt(transformer::GptConfig::SMALL),
    ),
    (
        "transformer-base",
        Architecture::Gpt(transformer::GptConfig::GPT2_SMALL),
    ),
    (
        "transformer-large",
        Architecture::Gpt(transformer::GptConfig::GPT2_MEDIUM),
    ),
    ("cnn", Architecture::ResNet(resnet::ResNetConfig::RESNET18)),
];
