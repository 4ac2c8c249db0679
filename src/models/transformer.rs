//! `transformer-*`: a decoder-only, GPT-style language model.
//!
//! Learned token and position embeddings, `layers` pre-LayerNorm blocks of causal
//! multi-head self-attention and a GELU feed-forward network (biases everywhere), a final
//! LayerNorm and an output head tied to the token embedding. Shapes: token ids `[B, T]` →
//! logits `[B, T, vocab]`; the loss is next-token cross-entropy against random ids.
//!
//! Only differentiable ops: `layer_norm_slow`, `ops::softmax`, plain matmuls.

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

use super::frozen;
use super::generation::{cached_mask, Decoder, LayerCache};
use super::lora::{AdaptedLinear, Adapters, LinearShape};
use super::{
    bounded_seq_len, causal_mask, cross_entropy, head_logits, token_batch, Batch, Model,
    ModelOptions,
};
use crate::error::Error;
use crate::memory::parts::mark;

/// The shape of a GPT-style transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptConfig {
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Longest sequence (learned positions).
    pub context: usize,
    /// Hidden width.
    pub width: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads (`width` must be a multiple).
    pub heads: usize,
    /// Hidden width of the feed-forward network.
    pub ffn: usize,
}

impl GptConfig {
    /// `transformer-tiny`, for tests: 2 layers, width 64, 4 heads, FFN 256, vocab 1,000,
    /// context 64.
    pub const TINY: GptConfig = GptConfig {
        vocab: 1000,
        context: 64,
        width: 64,
        layers: 2,
        heads: 4,
        ffn: 256,
    };

    /// `transformer-small`: 6 layers, width 512, 8 heads, FFN 2048, vocab 32,000,
    /// context 512 (35.6M parameters).
    pub const SMALL: GptConfig = GptConfig {
        vocab: 32_000,
        context: 512,
        width: 512,
        layers: 6,
        heads: 8,
        ffn: 2048,
    };

    /// `transformer-base`: GPT-2 small's exact shape: 12 layers, width 768, 12 heads, FFN
    /// 3072, vocab 50,257, context 1024 (124,439,808 parameters).
    pub const GPT2_SMALL: GptConfig = GptConfig {
        vocab: 50_257,
        context: 1024,
        width: 768,
        layers: 12,
        heads: 12,
        ffn: 3072,
    };

    /// `transformer-large`: GPT-2 medium's exact shape: 24 layers, width 1024, 16 heads,
    /// FFN 4096, vocab 50,257, context 1024 (354,823,168 parameters).
    pub const GPT2_MEDIUM: GptConfig = GptConfig {
        vocab: 50_257,
        context: 1024,
        width: 1024,
        layers: 24,
        heads: 16,
        ffn: 4096,
    };

    /// Trainable parameters, from the shape alone.
    pub fn parameter_count(&self) -> u64 {
        let (c, f) = (self.width as u64, self.ffn as u64);
        let layer_norm = 2 * c;
        let attention = (c * 3 * c + 3 * c) + (c * c + c);
        let feed_forward = (c * f + f) + (f * c + c);
        let block = 2 * layer_norm + attention + feed_forward;
        let embeddings = (self.vocab as u64 + self.context as u64) * c;
        embeddings + self.layers as u64 * block + layer_norm
    }

    /// One block's linear layers, by their GPT-2 names (`--lora-targets` picks from them).
    pub fn linears(&self) -> [LinearShape; 4] {
        let (c, f) = (self.width, self.ffn);
        [
            ("attn.c_attn", c, 3 * c),
            ("attn.c_proj", c, c),
            ("mlp.c_fc", c, f),
            ("mlp.c_proj", f, c),
        ]
    }

    /// PEFT's default LoRA targets for GPT-2: the fused query-key-value projection.
    pub const LORA_DEFAULT: &'static [&'static str] = &["c_attn"];

    /// A generation's KV cache per layer: layers, key/value heads (every head's), head
    /// width.
    pub fn cache_shape(&self) -> (usize, usize, usize) {
        (self.layers, self.heads, self.width / self.heads.max(1))
    }

    /// The sequence length of the trials: `--seq-len`, or the context length.
    pub fn seq_len(&self, options: &ModelOptions) -> std::result::Result<usize, Error> {
        bounded_seq_len(options.seq_len, self.context, self.context, true)
    }

    /// One line on the architecture.
    pub fn summary(&self) -> String {
        format!(
            "GPT decoder, {} layers, width {}, {} heads, FFN {}, vocab {}, context {}",
            self.layers, self.width, self.heads, self.ffn, self.vocab, self.context
        )
    }
}

/// LayerNorm with a weight and a bias, through the differentiable `layer_norm_slow`.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(size: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        frozen::layer_norm(xs, &self.weight, &self.bias, 1e-5)
    }
}

#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    qkv: AdaptedLinear,
    proj: AdaptedLinear,
    norm2: LayerNorm,
    up: AdaptedLinear,
    down: AdaptedLinear,
    heads: usize,
}

impl Block {
    fn new(c: &GptConfig, adapters: &Adapters, vb: VarBuilder) -> Result<Self> {
        let [qkv, proj, up, down] = c.linears();
        Ok(Self {
            norm1: LayerNorm::new(c.width, vb.pp("ln_1"))?,
            qkv: adapters.linear(qkv, true, &vb)?,
            proj: adapters.linear(proj, true, &vb)?,
            norm2: LayerNorm::new(c.width, vb.pp("ln_2"))?,
            up: adapters.linear(up, true, &vb)?,
            down: adapters.linear(down, true, &vb)?,
            heads: c.heads,
        })
    }

    /// The block on `xs`, attending with `mask` (`None`: to everything) to the tokens of
    /// `xs` and, when there is a cache, every token cached before them.
    fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let xs = (xs + self.attention(&self.norm1.forward(xs)?, mask, cache)?)?;
        let ffn = self
            .down
            .forward(&self.up.forward(&self.norm2.forward(&xs)?)?.gelu()?)?;
        xs + ffn
    }

    fn attention(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (b, t, c) = xs.dims3()?;
        let head = c / self.heads;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((b, t, 3, self.heads, head))?
            .permute((2, 0, 3, 1, 4))?; // [3, B, H, T, head]
        let q = (qkv.get(0)?.contiguous()? * (1.0 / (head as f64).sqrt()))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        // One binding: a shadowed product would stay alive to the end of the function,
        // which an untracked pass (evaluation, generation) would pay for.
        let scores = match mask {
            Some(mask) => q.matmul(&k.t()?)?.broadcast_add(mask)?,
            None => q.matmul(&k.t()?)?,
        };
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let ys = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        self.proj.forward(&ys)
    }
}

/// A GPT-style transformer with random weights.
#[derive(Debug)]
pub struct Gpt {
    config: GptConfig,
    seq_len: usize,
    tokens: Embedding,
    positions: Embedding,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl Gpt {
    /// Builds the model under `vb` with GPT-2's variable names and `adapters`; trials use
    /// `seq_len` tokens per sample.
    pub fn new(
        config: GptConfig,
        seq_len: usize,
        adapters: &Adapters,
        vb: VarBuilder,
    ) -> Result<Self> {
        if config.heads == 0 || config.width % config.heads != 0 {
            candle_core::bail!(
                "width {} is not a multiple of {} heads",
                config.width,
                config.heads
            );
        }
        let blocks = (0..config.layers)
            .map(|i| Block::new(&config, adapters, vb.pp(format!("h.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            seq_len,
            tokens: gpt2_embedding(config.vocab, config.width, vb.pp("wte"))?,
            positions: gpt2_embedding(config.context, config.width, vb.pp("wpe"))?,
            blocks,
            norm: LayerNorm::new(config.width, vb.pp("ln_f"))?,
        })
    }
}

/// An embedding initialised as GPT-2's, N(0, 0.02). candle's default N(0, 1) makes the
/// tied head's logits so large that the softmax gradient fills with subnormal floats,
/// which slows CPU matmuls about 40-fold (measured: 26 s against 0.6 s for the head's
/// backward at batch 1) and would misreport seconds per step.
fn gpt2_embedding(rows: usize, width: usize, vb: VarBuilder) -> Result<Embedding> {
    let init = candle_nn::Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    };
    let weight = vb.get_with_hints((rows, width), "weight", init)?;
    Ok(Embedding::new(weight, width))
}

impl Model for Gpt {
    fn batch(&self, batch_size: usize, device: &Device) -> Result<Batch> {
        token_batch(self.config.vocab, batch_size, self.seq_len, device)
    }

    fn loss(&self, batch: &Batch) -> Result<Tensor> {
        let (_, t) = batch.inputs.dims2()?;
        let device = batch.inputs.device();
        let positions = Tensor::arange(0u32, t as u32, device)?;
        let mut xs = self
            .tokens
            .forward(&batch.inputs)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        let mask = causal_mask(t, device)?.to_dtype(xs.dtype())?;
        mark("embeddings");
        for block in &self.blocks {
            xs = block.forward(&xs, Some(&mask), None)?;
        }
        mark("blocks");
        let xs = self.norm.forward(&xs)?;
        let logits = head_logits(&xs, self.tokens.embeddings())?; // tied head
        let loss = cross_entropy(&logits, &batch.targets)?;
        mark("logits and loss");
        Ok(loss)
    }

    fn decoder(&self) -> Option<&dyn Decoder> {
        Some(self)
    }
}

impl Decoder for Gpt {
    fn vocab(&self) -> usize {
        self.config.vocab
    }

    fn dtype(&self) -> candle_core::DType {
        self.tokens.embeddings().dtype()
    }

    fn cache_shape(&self) -> (usize, usize, usize) {
        self.config.cache_shape()
    }

    fn forward_cached(&self, tokens: &Tensor, caches: &mut [LayerCache]) -> Result<Tensor> {
        let (_, t) = tokens.dims2()?;
        let device = tokens.device();
        let offset = caches.first().map_or(0, LayerCache::cached);
        let positions = Tensor::arange(offset as u32, (offset + t) as u32, device)?;
        let mut xs = self
            .tokens
            .forward(tokens)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        let mask = match cached_mask(t, offset, device)? {
            Some(mask) => Some(mask.to_dtype(xs.dtype())?),
            None => None,
        };
        for (block, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            xs = block.forward(&xs, mask.as_ref(), Some(cache))?;
        }
        let last = self.norm.forward(&xs.narrow(1, t - 1, 1)?)?;
        head_logits(&last, self.tokens.embeddings())?.squeeze(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformer_small_has_35_6_million_parameters() {
        // Embeddings 32,000×512 + 512×512, 6 blocks of 3,152,384, final LayerNorm 1,024.
        assert_eq!(GptConfig::SMALL.parameter_count(), 35_561_472);
    }

    #[test]
    fn gpt2_presets_have_the_published_parameter_counts() {
        // Hugging Face's gpt2 and gpt2-medium: 124,439,808 and 354,823,168 parameters.
        assert_eq!(GptConfig::GPT2_SMALL.parameter_count(), 124_439_808);
        assert_eq!(GptConfig::GPT2_MEDIUM.parameter_count(), 354_823_168);
    }

    #[test]
    fn seq_len_is_bounded_by_the_context() {
        let c = GptConfig::TINY;
        assert_eq!(c.seq_len(&ModelOptions::default()).unwrap(), 64);
        let at = |n| ModelOptions {
            seq_len: Some(n),
            ..ModelOptions::default()
        };
        assert_eq!(c.seq_len(&at(16)).unwrap(), 16);
        assert!(c.seq_len(&at(65)).is_err());
        assert!(c.seq_len(&at(0)).is_err());
    }
}
