//! Llama-family decoders (`model_type` "llama", "mistral", "qwen2" in a Hugging Face
//! `config.json`): RMSNorm, rotary position embeddings, a SwiGLU MLP, grouped-query
//! attention, optional q/k/v biases (qwen2), optionally tied embeddings.
//!
//! Shapes: token ids `[B, T]` → hidden `[B, T, hidden]` → logits `[B, T, vocab]`; the loss
//! is next-token cross-entropy against random ids. Every op is differentiable: the fast
//! `rope` and `rms_norm` kernels have no backward and are not used (docs/design.md).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::frozen;
use super::generation::{cached_mask, Decoder, LayerCache};
use super::lora::{AdaptedLinear, Adapters, LinearShape};
use super::{causal_mask, cross_entropy, head_logits, token_batch, Batch, Model};
use crate::memory::parts::mark;

/// The shape of a Llama-family decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaConfig {
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention; equal to `heads` for plain multi-head).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Hidden width of the SwiGLU MLP.
    pub intermediate: usize,
    /// Longest sequence.
    pub max_positions: usize,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// True when the output head shares the token embedding.
    pub tie_embeddings: bool,
    /// True when the q, k and v projections have biases (qwen2).
    pub qkv_bias: bool,
}

impl LlamaConfig {
    /// A generation's KV cache per layer: layers, key/value heads (the grouped ones), head
    /// width.
    pub fn cache_shape(&self) -> (usize, usize, usize) {
        (self.layers, self.kv_heads, self.head_dim)
    }

    /// Trainable parameters, from the shape alone.
    pub fn parameter_count(&self) -> u64 {
        let [v, h, q, kv, i] = [
            self.vocab,
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        ]
        .map(|n| n as u64);
        let bias = |n: u64| if self.qkv_bias { n } else { 0 };
        let attention = (h * q + bias(q)) + 2 * (h * kv + bias(kv)) + q * h;
        let mlp = 3 * h * i;
        let layer = attention + mlp + 2 * h;
        let head = if self.tie_embeddings { 0 } else { v * h };
        v * h + self.layers as u64 * layer + h + head
    }

    /// One layer's linear layers, by their Hugging Face names (`--lora-targets` picks from
    /// them): the attention's q, k, v and o projections, then the MLP's gate, up and down.
    pub fn linears(&self) -> [LinearShape; 7] {
        let (h, q, kv, i) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        );
        [
            ("self_attn.q_proj", h, q),
            ("self_attn.k_proj", h, kv),
            ("self_attn.v_proj", h, kv),
            ("self_attn.o_proj", q, h),
            ("mlp.gate_proj", h, i),
            ("mlp.up_proj", h, i),
            ("mlp.down_proj", i, h),
        ]
    }

    /// PEFT's default LoRA targets for Llama-family models: the query and value
    /// projections.
    pub const LORA_DEFAULT: &'static [&'static str] = &["q_proj", "v_proj"];

    /// One line on the architecture.
    pub fn summary(&self, family: &str) -> String {
        format!(
            "{family} decoder, {} layers, hidden {}, {} heads ({} key-value), MLP {}, vocab {}{}",
            self.layers,
            self.hidden,
            self.heads,
            self.kv_heads,
            self.intermediate,
            self.vocab,
            if self.tie_embeddings { ", tied" } else { "" }
        )
    }
}

/// RMSNorm through the differentiable `rms_norm_slow`.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            eps: eps as f32,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        frozen::rms_norm(xs, &self.weight, self.eps)
    }
}

/// The rotary tables for `t` positions: `cos` and `sin` of shape `[T, head_dim / 2]`.
pub fn rotary_tables(
    t: usize,
    head_dim: usize,
    theta: f64,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inverse: Vec<f32> = (0..head_dim / 2)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
        .collect();
    let inverse = Tensor::from_vec(inverse, (1, head_dim / 2), device)?;
    let positions = Tensor::arange(0u32, t as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((t, 1))?;
    let angles = positions.broadcast_mul(&inverse)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}

/// Rotary position embedding of `xs` `[B, H, T, D]` in the "rotate half" layout of
/// Hugging Face's Llama: the pair `(x[i], x[i + D/2])` turns by angle position × θ^(−2i/D).
/// Built from differentiable ops only.
pub fn apply_rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = xs.dim(D::Minus1)?;
    let first = xs.narrow(D::Minus1, 0, d / 2)?;
    let second = xs.narrow(D::Minus1, d / 2, d / 2)?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
    xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Repeats each of the `kv_heads` key/value heads of `xs` `[B, KV, T, D]` `groups` times,
/// giving `[B, KV × groups, T, D]`: query head h reads key/value head h / groups.
pub fn repeat_kv(xs: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(xs.clone());
    }
    let (b, kv, t, d) = xs.dims4()?;
    xs.unsqueeze(2)?
        .broadcast_as((b, kv, groups, t, d))?
        .contiguous()?
        .reshape((b, kv * groups, t, d))
}

#[derive(Debug)]
struct Layer {
    input_norm: RmsNorm,
    q: AdaptedLinear,
    k: AdaptedLinear,
    v: AdaptedLinear,
    o: AdaptedLinear,
    post_norm: RmsNorm,
    gate: AdaptedLinear,
    up: AdaptedLinear,
    down: AdaptedLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Layer {
    fn new(c: &LlamaConfig, adapters: &Adapters, vb: VarBuilder) -> Result<Self> {
        let [q, k, v, o, gate, up, down] = c.linears();
        Ok(Self {
            input_norm: RmsNorm::new(c.hidden, c.rms_norm_eps, vb.pp("input_layernorm"))?,
            q: adapters.linear(q, c.qkv_bias, &vb)?,
            k: adapters.linear(k, c.qkv_bias, &vb)?,
            v: adapters.linear(v, c.qkv_bias, &vb)?,
            o: adapters.linear(o, false, &vb)?,
            post_norm: RmsNorm::new(c.hidden, c.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            gate: adapters.linear(gate, false, &vb)?,
            up: adapters.linear(up, false, &vb)?,
            down: adapters.linear(down, false, &vb)?,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        })
    }

    /// The layer on `xs` at the positions of `rotary`, attending with `mask` (`None`: to
    /// everything) to the tokens of `xs` and, when there is a cache, every token before them.
    fn forward(
        &self,
        xs: &Tensor,
        rotary: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let xs = (xs + self.attention(&self.input_norm.forward(xs)?, rotary, mask, cache)?)?;
        let normed = self.post_norm.forward(&xs)?;
        let gated =
            (candle_nn::ops::silu(&self.gate.forward(&normed)?)? * self.up.forward(&normed)?)?;
        xs + self.down.forward(&gated)?
    }

    fn attention(
        &self,
        xs: &Tensor,
        rotary: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let heads = |proj: &AdaptedLinear, n: usize| -> Result<Tensor> {
            proj.forward(xs)?
                .reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (cos, sin) = rotary;
        let q = apply_rotary(&heads(&self.q, self.heads)?, cos, sin)?;
        let k = apply_rotary(&heads(&self.k, self.kv_heads)?, cos, sin)?;
        let v = heads(&self.v, self.kv_heads)?;
        // The cache keeps the key/value heads, not their grouped copies (as servers do).
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let groups = self.heads / self.kv_heads;
        let (k, v) = (repeat_kv(&k, groups)?, repeat_kv(&v, groups)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // One binding: a shadowed product would stay alive to the end of the function,
        // which an untracked pass (evaluation, generation) would pay for.
        let scores = match mask {
            Some(mask) => (q * scale)?.matmul(&k.t()?)?.broadcast_add(mask)?,
            None => (q * scale)?.matmul(&k.t()?)?,
        };
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let ys =
            weights
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, t, self.heads * self.head_dim))?;
        self.o.forward(&ys)
    }
}

/// A Llama-family decoder with random weights.
#[derive(Debug)]
pub struct Llama {
    config: LlamaConfig,
    seq_len: usize,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
}

impl Llama {
    /// Builds the model under `vb` with Hugging Face's variable names and `adapters`;
    /// trials use `seq_len` tokens per sample.
    pub fn new(
        config: LlamaConfig,
        seq_len: usize,
        adapters: &Adapters,
        vb: VarBuilder,
    ) -> Result<Self> {
        if config.kv_heads == 0 || config.heads % config.kv_heads != 0 || config.head_dim % 2 != 0 {
            candle_core::bail!(
                "{} heads cannot share {} key-value heads of width {}",
                config.heads,
                config.kv_heads,
                config.head_dim
            );
        }
        let model = vb.pp("model");
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let embed = model.pp("embed_tokens").get_with_hints(
            (config.vocab, config.hidden),
            "weight",
            init,
        )?;
        let layers = (0..config.layers)
            .map(|i| Layer::new(&config, adapters, model.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_embeddings {
            None
        } else {
            let weight =
                vb.pp("lm_head")
                    .get_with_hints((config.vocab, config.hidden), "weight", init)?;
            Some(Linear::new(weight, None))
        };
        Ok(Self {
            config,
            seq_len,
            embed: Embedding::new(embed, config.hidden),
            layers,
            norm: RmsNorm::new(config.hidden, config.rms_norm_eps, model.pp("norm"))?,
            lm_head,
        })
    }
}

impl Model for Llama {
    fn batch(&self, batch_size: usize, device: &Device) -> Result<Batch> {
        token_batch(self.config.vocab, batch_size, self.seq_len, device)
    }

    fn loss(&self, batch: &Batch) -> Result<Tensor> {
        let (_, t) = batch.inputs.dims2()?;
        let device = batch.inputs.device();
        let mut xs = self.embed.forward(&batch.inputs)?;
        let dtype = xs.dtype();
        let rotary = rotary_tables(
            t,
            self.config.head_dim,
            self.config.rope_theta,
            dtype,
            device,
        )?;
        let mask = causal_mask(t, device)?.to_dtype(dtype)?;
        mark("embeddings");
        for layer in &self.layers {
            xs = layer.forward(&xs, &rotary, Some(&mask), None)?;
        }
        mark("blocks");
        let xs = self.norm.forward(&xs)?;
        let logits = match &self.lm_head {
            Some(head) => head_logits(&xs, head.weight())?,
            None => head_logits(&xs, self.embed.embeddings())?,
        };
        let loss = cross_entropy(&logits, &batch.targets)?;
        mark("logits and loss");
        Ok(loss)
    }

    fn decoder(&self) -> Option<&dyn Decoder> {
        Some(self)
    }
}

impl Decoder for Llama {
    fn vocab(&self) -> usize {
        self.config.vocab
    }

    fn dtype(&self) -> candle_core::DType {
        self.embed.embeddings().dtype()
    }

    fn cache_shape(&self) -> (usize, usize, usize) {
        self.config.cache_shape()
    }

    fn forward_cached(&self, tokens: &Tensor, caches: &mut [LayerCache]) -> Result<Tensor> {
        let (_, t) = tokens.dims2()?;
        let device = tokens.device();
        let offset = caches.first().map_or(0, LayerCache::cached);
        let mut xs = self.embed.forward(tokens)?;
        let dtype = xs.dtype();
        let (cos, sin) = rotary_tables(
            offset + t,
            self.config.head_dim,
            self.config.rope_theta,
            dtype,
            device,
        )?;
        let rotary = (cos.narrow(0, offset, t)?, sin.narrow(0, offset, t)?);
        let mask = match cached_mask(t, offset, device)? {
            Some(mask) => Some(mask.to_dtype(dtype)?),
            None => None,
        };
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            xs = layer.forward(&xs, &rotary, mask.as_ref(), Some(cache))?;
        }
        let last = self.norm.forward(&xs.narrow(1, t - 1, 1)?)?;
        let logits = match &self.lm_head {
            Some(head) => head_logits(&last, head.weight())?,
            None => head_logits(&last, self.embed.embeddings())?,
        };
        logits.squeeze(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotation by a plain loop, pair (i, i + D/2) at a time.
    fn reference_rotary(x: &[f32], t: usize, d: usize, theta: f64) -> Vec<f32> {
        let mut out = x.to_vec();
        for pos in 0..t {
            for i in 0..d / 2 {
                let angle = pos as f64 / theta.powf(2.0 * i as f64 / d as f64);
                let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                let (a, b) = (x[pos * d + i], x[pos * d + i + d / 2]);
                out[pos * d + i] = a * c - b * s;
                out[pos * d + i + d / 2] = b * c + a * s;
            }
        }
        out
    }

    #[test]
    fn rotary_matches_a_plain_rotation_and_candles_kernel() {
        let (t, d, theta) = (5, 8, 10_000.0);
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..t * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let xs = Tensor::from_vec(values.clone(), (1, 1, t, d), &dev).unwrap();
        let (cos, sin) = rotary_tables(t, d, theta, DType::F32, &dev).unwrap();
        let ours: Vec<f32> = apply_rotary(&xs, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected = reference_rotary(&values, t, d, theta);
        for (a, b) in ours.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{ours:?}\n{expected:?}");
        }
        // candle's fast kernel (inference only, no backward) computes the same rotation.
        let kernel: Vec<f32> = candle_nn::rotary_emb::rope(&xs, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in ours.iter().zip(&kernel) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn grouped_query_heads_read_their_shared_key_value_head() {
        let (b, kv, t, d, groups) = (2, 3, 4, 2, 2);
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..b * kv * t * d).map(|i| i as f32).collect();
        let xs = Tensor::from_vec(values.clone(), (b, kv, t, d), &dev).unwrap();
        let repeated = repeat_kv(&xs, groups).unwrap();
        assert_eq!(repeated.dims(), &[b, kv * groups, t, d]);
        let flat: Vec<f32> = repeated.flatten_all().unwrap().to_vec1().unwrap();
        for bi in 0..b {
            for h in 0..kv * groups {
                for ti in 0..t {
                    for di in 0..d {
                        let ours = flat[((bi * kv * groups + h) * t + ti) * d + di];
                        let reference = values[((bi * kv + h / groups) * t + ti) * d + di];
                        assert_eq!(ours, reference, "batch {bi} head {h}");
                    }
                }
            }
        }
    }
}
