//! [`ModelSpec`]: a model to build (a preset or a Hugging Face config), what it holds and
//! takes, and how large its tensors grow with the batch size.

use std::path::Path;

use candle_nn::VarBuilder;

use super::lora::Adapters;
use super::options::{bounded_seq_len, image_size};
use super::{hf_config, llama, mlp, resnet, transformer, Architecture, Model, ModelInfo};
use super::{ModelOptions, StepMode, PRESETS};
use crate::error::{Error, Setting};

/// The most elements one tensor may have on CUDA: 2³¹. candle's element-wise CUDA kernels
/// (unary, binary, affine, cast, ternary, indexing, and the `sum` reduction) loop
/// `for (unsigned int i = …; i < numel; i += blockDim.x * gridDim.x)` over a grid of ⌈n/1024⌉
/// blocks of 1024 threads, so the stride is about n: past 2³¹ elements `i + stride` wraps
/// in 32 bits and elements are processed again (slower, and wrong where the op is not
/// idempotent), and near 2³² the stride itself wraps to 0 and the loop never ends. Up to
/// 2³¹, `i + stride` stays below 2³². The search, `check` and the plans never pass it.
pub const CUDA_MAX_ELEMENTS: u64 = 1 << 31;

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
        options.validate(self)?;
        let (mut input, summary) = match &self.architecture {
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
        if let StepMode::Generate {
            prompt_len,
            new_tokens,
        } = options.mode
        {
            input = format!("{prompt_len}-token prompt + {new_tokens} new tokens");
        }
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
            // Evaluation and generation on their own train nothing.
            trainable_parameters: Some(if options.mode.keeps_training_state() {
                trained
            } else {
                0
            }),
            input,
            summary,
            dtype: options.dtype.as_str().to_string(),
            compute_dtype: options.amp.map(|d| d.as_str().to_string()),
            kv_cache_bytes_per_token: options
                .mode
                .cached_tokens()
                .and_then(|_| self.kv_cache_bytes_per_token(options)),
            kv_cache_tokens: options.mode.cached_tokens(),
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

    /// A decoder's KV cache bytes per token of one sequence, in the dtype the passes compute
    /// in: 2 (keys and values) × layers × key/value heads × head width × bytes (`None`: not
    /// a decoder). Arithmetic from the shapes.
    pub fn kv_cache_bytes_per_token(&self, options: &ModelOptions) -> Option<u64> {
        let (layers, kv_heads, head_dim) = self.cache_shape()?;
        let bytes = options.compute_dtype().size_in_bytes();
        Some(2 * (layers * kv_heads * head_dim * bytes) as u64)
    }

    /// A decoder's KV cache per layer: layers, key/value heads, head width (`None`: not a
    /// decoder).
    pub fn cache_shape(&self) -> Option<(usize, usize, usize)> {
        match &self.architecture {
            Architecture::Gpt(c) => Some(c.cache_shape()),
            Architecture::Llama(c, _) => Some(c.cache_shape()),
            Architecture::Mlp(_) | Architecture::ResNet(_) => None,
        }
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
            Architecture::Mlp(_) | Architecture::ResNet(_) => Err(Error::setting(
                Setting::LoraRank,
                lora.rank,
                format!(
                    "$LoraRank applies to the transformers and Llama-family configs; {} trains \
                     every weight: drop $LoraRank",
                    self.name
                ),
            )),
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
        if let StepMode::Generate {
            prompt_len,
            new_tokens,
        } = options.mode
        {
            // The prefill's [P, ·] tensors and scores, one layer's cache, the last logits.
            let (ffn, heads, vocab) = match &self.architecture {
                Architecture::Gpt(c) => (c.ffn, c.heads, c.vocab),
                Architecture::Llama(c, _) => (c.intermediate, c.heads, c.vocab),
                Architecture::Mlp(_) | Architecture::ResNet(_) => (0, 0, 0),
            };
            let (_, kv_heads, head_dim) = self.cache_shape().unwrap_or_default();
            let cache = (kv_heads * head_dim * (prompt_len + new_tokens)) as u64;
            return Ok(tokens_times(prompt_len, &[ffn], heads)
                .max(cache)
                .max(vocab as u64));
        }
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
        options.check_precision()?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
