//! Built-in architectures, one file each, the registry of named presets, and Hugging Face
//! `config.json` files ([`hf_config`]).
//!
//! Every model is trainable end to end: its forward pass uses only differentiable candle
//! ops (never the fast `softmax_last_dim`, `layer_norm`, `rms_norm` or `rope` kernels,
//! which have no backward and would hide both gradients and memory; see docs/design.md). Inputs
//! are synthetic batches of the worst-case shape.

pub mod hf_config;
pub mod llama;
pub mod lora;
pub mod mlp;
pub mod params;
pub mod resnet;
pub mod transformer;

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use lora::{Adapters, LoraOptions};

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
}

/// Choices that change a built-in model's input shape or precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// Tokens per sample for the transformers (default: the model's context length).
    pub seq_len: Option<usize>,
    /// Image side in pixels for `cnn` (default 32).
    pub image_size: Option<usize>,
    /// The dtype of weights, activations and optimizer state (default f32).
    pub dtype: DType,
    /// Mixed precision (`--amp`): the half dtype the forward and backward passes compute
    /// in, while weights, gradients and optimizer state stay in `dtype` (f32).
    pub amp: Option<DType>,
    /// LoRA fine-tuning (`--lora-rank`): only adapters are trained.
    pub lora: Option<LoraOptions>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            seq_len: None,
            image_size: None,
            dtype: DType::F32,
            amp: None,
            lora: None,
        }
    }
}

impl ModelOptions {
    /// The dtype the forward and backward passes compute in.
    pub fn compute_dtype(&self) -> DType {
        self.amp.unwrap_or(self.dtype)
    }
}

/// What the report says about a model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The preset's name, e.g. "transformer-small", or the config file's.
    pub name: String,
    /// All parameters, trained or frozen.
    pub parameters: u64,
    /// The parameters the optimizer trains: all of them, or only the LoRA adapters'
    /// (`None`: not known, e.g. a caller's own step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_parameters: Option<u64>,
    /// One sample's input shape, e.g. "512 tokens".
    pub input: String,
    /// A one-line description of the architecture.
    pub summary: String,
    /// The dtype of weights, activations and optimizer state, e.g. "f32" (candle's name).
    pub dtype: String,
    /// Under mixed precision (`--amp`), the dtype the passes compute in, e.g. "bf16".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_dtype: Option<String>,
    /// What is trained when not every weight is, e.g. "LoRA rank 8 (alpha 16) on
    /// attn.c_attn".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<String>,
}

impl ModelInfo {
    /// The weights' bytes: the parameter count times the dtype's size (`None` when the
    /// parameters or the dtype are unknown). Arithmetic, not a measurement.
    pub fn weight_bytes(&self) -> Option<u64> {
        let dtype = self.dtype.parse::<DType>().ok()?;
        (self.parameters > 0).then(|| self.parameters * dtype.size_in_bytes() as u64)
    }

    /// The trained weights' bytes (all of them, or LoRA's adapters), in the dtype the
    /// weights are kept in: what their gradients take, and each copy of optimizer state.
    /// Arithmetic, not a measurement.
    pub fn trained_bytes(&self) -> Option<u64> {
        let dtype = self.dtype.parse::<DType>().ok()?;
        let trained = self.trainable_parameters.unwrap_or(self.parameters);
        (self.parameters > 0).then(|| trained * dtype.size_in_bytes() as u64)
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

/// The most elements one tensor may have on CUDA: 2³¹. candle's element-wise CUDA kernels
/// (unary, binary, affine, cast, ternary, indexing, and the `sum` reduction) loop
/// `for (unsigned int i = …; i < numel; i += blockDim.x * gridDim.x)` over a grid of ⌈n/1024⌉
/// blocks of 1024 threads, so the stride is about n: past 2³¹ elements `i + stride` wraps
/// in 32 bits and elements are processed again (slower, and wrong where the op is not
/// idempotent), and near 2³² the stride itself wraps to 0 and the loop never ends. Up to
/// 2³¹, `i + stride` stays below 2³². The search, `check` and the plans never pass it.
pub const CUDA_MAX_ELEMENTS: u64 = 1 << 31;

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

/// Where a model comes from: a preset's name or a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A built-in preset.
    Preset(String),
    /// A `config.json` describing the architecture (shapes only; no weights are read).
    Config(std::path::PathBuf),
}

/// A model to build: its name for reports and its architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The preset's name, or the config's model name.
    pub name: String,
    /// The shape.
    pub architecture: Architecture,
}

impl ModelSpec {
    /// The spec of a preset or a config file.
    pub fn load(source: &ModelSource) -> std::result::Result<Self, Error> {
        match source {
            ModelSource::Preset(name) => Self::preset(name),
            ModelSource::Config(path) => hf_config::load(Path::new(path)),
        }
    }

    /// The preset called `name`.
    pub fn preset(name: &str) -> std::result::Result<Self, Error> {
        PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, a)| ModelSpec {
                name: n.to_string(),
                architecture: a.clone(),
            })
            .ok_or_else(|| Error::UnknownModel {
                name: name.to_string(),
                known: PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Trainable parameters, from the shapes alone (nothing is allocated).
    pub fn parameter_count(&self) -> u64 {
        match &self.architecture {
            Architecture::Mlp(c) => c.parameter_count(),
            Architecture::Gpt(c) => c.parameter_count(),
            Architecture::Llama(c, _) => c.parameter_count(),
            Architecture::ResNet(c) => c.parameter_count(),
        }
    }

    /// What the report says about this model with `options`; allocates nothing.
    pub fn info(&self, options: &ModelOptions) -> std::result::Result<ModelInfo, Error> {
        self.check_options(options)?;
        let (input, summary) = match &self.architecture {
            Architecture::Mlp(c) => (c.input(), c.summary()),
            Architecture::Gpt(c) => (format!("{} tokens", c.seq_len(options)?), c.summary()),
            Architecture::Llama(c, family) => (
                format!("{} tokens", llama_seq_len(c, options)?),
                c.summary(family),
            ),
            Architecture::ResNet(c) => {
                let s = image_size(options)?;
                (format!("3×{s}×{s} image"), c.summary())
            }
        };
        let adapters = self.adapters(options)?;
        let trained = self.trainable_parameter_count(&adapters);
        let adapter_parameters = if adapters.adapted().is_empty() {
            0
        } else {
            trained
        };
        Ok(ModelInfo {
            name: self.name.clone(),
            // PEFT's "all params": the base weights and the adapters.
            parameters: self.parameter_count() + adapter_parameters,
            trainable_parameters: Some(trained),
            input,
            summary,
            dtype: options.dtype.as_str().to_string(),
            compute_dtype: options.amp.map(|d| d.as_str().to_string()),
            adapters: options.lora.as_ref().map(|lora| {
                format!(
                    "LoRA rank {} (alpha {}) on {}",
                    lora.rank,
                    lora.alpha,
                    adapters.adapted().join(", ")
                )
            }),
        })
    }

    /// The adapters `options.lora` asks for (none without it); refuses LoRA on the MLP and
    /// the ResNet, whose layers have no adapter here.
    pub fn adapters(&self, options: &ModelOptions) -> std::result::Result<Adapters, Error> {
        let Some(lora) = &options.lora else {
            return Ok(Adapters::none());
        };
        match &self.architecture {
            Architecture::Gpt(c) => {
                Adapters::resolve(lora, &c.linears(), transformer::GptConfig::LORA_DEFAULT)
            }
            Architecture::Llama(c, _) => {
                Adapters::resolve(lora, &c.linears(), llama::LlamaConfig::LORA_DEFAULT)
            }
            Architecture::Mlp(_) | Architecture::ResNet(_) => Err(Error::InvalidSetting(format!(
                "--lora-rank applies to the transformers and Llama-family configs; {} trains \
                 every weight: drop --lora-rank",
                self.name
            ))),
        }
    }

    /// The parameters the optimizer trains with `adapters`: the adapters' when there are
    /// any, else every parameter. From the shapes alone.
    pub fn trainable_parameter_count(&self, adapters: &Adapters) -> u64 {
        let (per_block, blocks) = match &self.architecture {
            Architecture::Gpt(c) => (adapters.parameters_per_block(&c.linears()), c.layers),
            Architecture::Llama(c, _) => (adapters.parameters_per_block(&c.linears()), c.layers),
            Architecture::Mlp(_) | Architecture::ResNet(_) => (0, 0),
        };
        if adapters.adapted().is_empty() {
            self.parameter_count()
        } else {
            per_block * blocks as u64
        }
    }

    /// Refuses an input option this architecture does not have (`--seq-len` on the MLP or
    /// the ResNet, `--image-size` on a transformer): it would change nothing, and the user
    /// would believe it had.
    fn check_options(&self, options: &ModelOptions) -> std::result::Result<(), Error> {
        let (takes_tokens, takes_images) = match &self.architecture {
            Architecture::Mlp(_) => (false, false),
            Architecture::Gpt(_) | Architecture::Llama(..) => (true, false),
            Architecture::ResNet(_) => (false, true),
        };
        let takes = match (takes_tokens, takes_images) {
            (true, _) => "its input is set by --seq-len",
            (_, true) => "its input is set by --image-size",
            _ => "its input is fixed by the architecture",
        };
        let refuse = |flag: &str| {
            Err(Error::InvalidSetting(format!(
                "{flag} does not apply to {} ({takes}); drop it",
                self.name
            )))
        };
        if options.seq_len.is_some() && !takes_tokens {
            return refuse("--seq-len");
        }
        if options.image_size.is_some() && !takes_images {
            return refuse("--image-size");
        }
        check_precision(options)
    }

    /// The tokens per sample of a transformer with `options` (`None`: not a transformer).
    pub fn seq_len(&self, options: &ModelOptions) -> std::result::Result<Option<usize>, Error> {
        Ok(match &self.architecture {
            Architecture::Gpt(c) => Some(c.seq_len(options)?),
            Architecture::Llama(c, _) => Some(llama_seq_len(c, options)?),
            Architecture::Mlp(_) | Architecture::ResNet(_) => None,
        })
    }

    /// The elements of the largest tensor one sample adds to a training step with
    /// `options`: the logits (tokens × vocabulary), the attention scores (heads × tokens²) or
    /// the MLP's hidden layer for a transformer; the convolutions' unfolded inputs (64
    /// channels × 9 × the image's pixels, in the first stage) for the ResNet. Arithmetic from
    /// the shapes; see [`CUDA_MAX_ELEMENTS`].
    pub fn elements_per_sample(&self, options: &ModelOptions) -> std::result::Result<u64, Error> {
        let tokens_times = |seq: usize, widths: &[usize], heads: usize| {
            let seq = seq as u64;
            let widest = widths.iter().map(|&w| seq * w as u64).max().unwrap_or(0);
            widest.max(heads as u64 * seq * seq)
        };
        Ok(match &self.architecture {
            Architecture::Mlp(c) => [c.inputs, c.width, c.classes]
                .into_iter()
                .max()
                .unwrap_or(0) as u64,
            Architecture::Gpt(c) => tokens_times(c.seq_len(options)?, &[c.vocab, c.ffn], c.heads),
            Architecture::Llama(c, _) => tokens_times(
                llama_seq_len(c, options)?,
                &[c.vocab, c.intermediate],
                c.heads,
            ),
            Architecture::ResNet(_) => {
                let side = image_size(options)? as u64;
                64 * 9 * side * side
            }
        })
    }

    /// The largest batch size whose tensors candle's CUDA kernels can index (see
    /// [`CUDA_MAX_ELEMENTS`]), or `None` when no batch size below `usize::MAX` reaches it.
    pub fn cuda_batch_cap(
        &self,
        options: &ModelOptions,
    ) -> std::result::Result<Option<usize>, Error> {
        let per_sample = self.elements_per_sample(options)?.max(1);
        Ok(usize::try_from(CUDA_MAX_ELEMENTS / per_sample).ok())
    }

    /// Builds the model with random weights from `vb` (whose dtype is the one the passes
    /// compute in), with the adapters `options` asks for.
    pub fn build(
        &self,
        options: &ModelOptions,
        vb: VarBuilder,
    ) -> std::result::Result<Box<dyn Model>, Error> {
        check_precision(options)?;
        let adapters = self.adapters(options)?;
        Ok(match &self.architecture {
            Architecture::Mlp(c) => Box::new(mlp::Mlp::new(*c, vb)?),
            Architecture::Gpt(c) => Box::new(transformer::Gpt::new(
                *c,
                c.seq_len(options)?,
                &adapters,
                vb,
            )?),
            Architecture::Llama(c, _) => Box::new(llama::Llama::new(
                *c,
                llama_seq_len(c, options)?,
                &adapters,
                vb,
            )?),
            Architecture::ResNet(c) => {
                let config = resnet::ResNetConfig {
                    image_size: image_size(options)?,
                    ..*c
                };
                Box::new(resnet::ResNet::new(config, vb)?)
            }
        })
    }
}

/// Refuses `--amp f32` and `--amp` with weights not in f32.
fn check_precision(options: &ModelOptions) -> std::result::Result<(), Error> {
    match options.amp {
        Some(DType::F32) => Err(Error::InvalidSetting(
            "--amp takes the half dtype the passes compute in: bf16 or f16".into(),
        )),
        Some(_) if options.dtype != DType::F32 => Err(Error::InvalidSetting(format!(
            "--amp keeps f32 master weights; drop --dtype {} (or drop --amp to train \
                 everything in {})",
            options.dtype.as_str(),
            options.dtype.as_str()
        ))),
        _ => Ok(()),
    }
}

fn llama_seq_len(
    c: &llama::LlamaConfig,
    options: &ModelOptions,
) -> std::result::Result<usize, Error> {
    bounded_seq_len(
        options.seq_len,
        c.max_positions.min(2048),
        c.max_positions,
        false,
    )
}

/// The trials' sequence length: `--seq-len`, or `default`; never above `limit` when the
/// positions are learned (`strict`).
pub(crate) fn bounded_seq_len(
    requested: Option<usize>,
    default: usize,
    limit: usize,
    strict: bool,
) -> std::result::Result<usize, Error> {
    match requested {
        None => Ok(default),
        Some(0) => Err(Error::InvalidSetting(
            "--seq-len must be at least 1".to_string(),
        )),
        Some(n) if strict && n > limit => Err(Error::InvalidSetting(format!(
            "--seq-len {n} is longer than this model's context of {limit} tokens \
             (learned positions); use at most {limit}"
        ))),
        Some(n) => Ok(n),
    }
}

fn image_size(options: &ModelOptions) -> std::result::Result<usize, Error> {
    match options.image_size {
        None => Ok(32),
        Some(s) if s >= 8 => Ok(s),
        Some(s) => Err(Error::InvalidSetting(format!(
            "--image-size {s} is too small: the ResNet halves it three times; use at least 8"
        ))),
    }
}

/// Parses `--dtype` with candle's names, keeping the dtypes a model trains in: f32, bf16
/// or f16.
pub fn parse_dtype(text: &str) -> std::result::Result<DType, String> {
    match text.to_ascii_lowercase().parse::<DType>() {
        Ok(dtype @ (DType::F32 | DType::BF16 | DType::F16)) => Ok(dtype),
        _ => Err(format!("unknown dtype {text:?}; use f32, bf16 or f16")),
    }
}

/// Parses `--amp`: the half dtype mixed precision computes in, bf16 or f16.
pub fn parse_half_dtype(text: &str) -> std::result::Result<DType, String> {
    match parse_dtype(text) {
        Ok(dtype @ (DType::BF16 | DType::F16)) => Ok(dtype),
        _ => Err(format!(
            "--amp {text:?}: mixed precision computes in bf16 or f16"
        )),
    }
}

/// Random class ids in `0..classes` of the given shape.
pub(crate) fn random_ids(
    classes: usize,
    shape: impl Into<candle_core::Shape>,
    device: &Device,
) -> Result<Tensor> {
    // Uniform in [0, classes) then truncated: every id is a valid class.
    let ids = Tensor::rand(0f32, classes as f32, shape, device)?;
    ids.clamp(0f32, (classes - 1) as f32)?.to_dtype(DType::U32)
}

/// A batch of `batch_size` sequences of `seq_len` random token ids, and random next-token
/// targets.
pub(crate) fn token_batch(
    vocab: usize,
    batch_size: usize,
    seq_len: usize,
    device: &Device,
) -> Result<Batch> {
    let shape = (batch_size, seq_len);
    Ok(Batch {
        inputs: random_ids(vocab, shape, device)?,
        targets: random_ids(vocab, shape, device)?,
    })
}

/// Cross-entropy of `logits` `[..., classes]` against `targets` `[...]`, computed in f32
/// whatever the model's dtype (as mixed-precision training computes its loss).
pub(crate) fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let classes = logits.dim(candle_core::D::Minus1)?;
    let logits = logits.reshape(((), classes))?.to_dtype(DType::F32)?;
    candle_nn::loss::cross_entropy(&logits, &targets.flatten_all()?)
}

/// The logits `xs Wᵀ` of an output head whose weight `[vocab, hidden]` is trained (candle's
/// `broadcast_matmul`, which folds the batch into one 2-D matmul as candle-nn's `Linear`
/// does), or frozen under LoRA (see [`lora::matmul_frozen_t`]).
pub(crate) fn head_logits(xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if weight.track_op() {
        xs.broadcast_matmul(&weight.t()?)
    } else {
        lora::matmul_frozen_t(xs, weight)
    }
}

/// `[T, T]` (f32): 0 where a token may attend (itself and earlier), −∞ elsewhere.
pub(crate) fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_lets_each_token_see_itself_and_the_past() {
        let mask = causal_mask(3, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(
            mask,
            vec![
                vec![0.0, inf, inf],
                vec![0.0, 0.0, inf],
                vec![0.0, 0.0, 0.0]
            ]
        );
    }

    #[test]
    fn the_cuda_cap_keeps_the_largest_tensor_indexable() {
        let options = ModelOptions::default();
        for (name, _) in PRESETS {
            let spec = ModelSpec::preset(name).unwrap();
            let per_sample = spec.elements_per_sample(&options).unwrap();
            let cap = spec.cuda_batch_cap(&options).unwrap().unwrap() as u64;
            assert!(cap * per_sample <= CUDA_MAX_ELEMENTS, "{name}");
            assert!((cap + 1) * per_sample > CUDA_MAX_ELEMENTS, "{name}");
        }
        // transformer-small at 512 tokens: the logits, 512 × 32,000 per sample, 131 samples
        // to 2^31.
        let small = ModelSpec::preset("transformer-small").unwrap();
        assert_eq!(small.elements_per_sample(&options).unwrap(), 512 * 32_000);
        assert_eq!(small.cuda_batch_cap(&options).unwrap(), Some(131));
        // The MLP's widest layer is 1,024 wide: 2^21 samples.
        let mlp = ModelSpec::preset("mlp").unwrap();
        assert_eq!(mlp.cuda_batch_cap(&options).unwrap(), Some(1 << 21));
    }

    #[test]
    fn dtypes_parse_and_print() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            assert_eq!(parse_dtype(dtype.as_str()), Ok(dtype));
        }
        assert!(parse_dtype("int8").is_err());
    }
}
