//! The estimate of an evaluation's and a generation's step (see docs/design.md, "Beyond
//! training"): nothing is tracked, so candle keeps no op's inputs and a tensor lives as long
//! as the Rust value that holds it. The peak is then the largest of a few *moments*, each
//! what is alive at one instant of the forward pass: the block's input and the values its
//! code still binds, and the temporaries of the expression being evaluated. A generation
//! adds its KV cache, held from before the prefill to the end: that part is arithmetic from
//! the config (2 × layers × key/value heads × head width × tokens × the dtype's bytes); the
//! moments are counted from candle's kernels and the models' code, and checked against the
//! CPU meter by `tests/estimate.rs`.
//!
//! Notation as in [`super::families`]: `s` the compute dtype's bytes; per sample (or
//! sequence), T tokens, C the hidden width, F or I the feed-forward width, H heads, V the
//! vocabulary.

use serde::{Deserialize, Serialize};

use super::families::F32;
use super::{Estimate, PhaseEstimate, Term};
use crate::error::{Error, Setting};
use crate::models::llama::LlamaConfig;
use crate::models::mlp::MlpConfig;
use crate::models::transformer::GptConfig;
use crate::models::{Architecture, ModelOptions, ModelSpec, StepMode};
use crate::search::{ModelLine, StepModel};
use crate::workload::{OptimizerKind, Phase};

/// What an evaluation's or a generation's step holds throughout besides the weights, and
/// each phase's moments above that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inference {
    /// The step.
    pub mode: StepMode,
    /// Held from the step's start to its end besides the weights: a generation's KV cache
    /// (arithmetic from the config), the casts of the weights under `--amp`, the inputs.
    pub held: Vec<Term>,
    /// The phases in order (forward; or prefill, decode), each the largest of its moments.
    pub phases: Vec<InferencePhase>,
}

/// One phase's moments: what is alive at each instant that may set its peak, above
/// [`Inference::held`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferencePhase {
    /// The phase.
    pub phase: Phase,
    /// Its moments.
    pub moments: Vec<Term>,
}

impl Inference {
    fn held_at(&self, batch_size: usize) -> u64 {
        self.held.iter().map(|t| t.at(batch_size)).sum()
    }

    fn held_line(&self) -> (u64, u64) {
        self.held
            .iter()
            .fold((0, 0), |(f, p), t| (f + t.fixed, p + t.per_sample))
    }

    /// Each phase's estimated peak at `batch_size` above `weights` (what is held before).
    pub(super) fn phases(&self, weights: u64, batch_size: usize) -> Vec<PhaseEstimate> {
        let held = weights + self.held_at(batch_size);
        self.phases
            .iter()
            .map(|p| {
                let (set_by, bytes) = p
                    .moments
                    .iter()
                    .map(|m| (m.what.as_str(), m.at(batch_size)))
                    .max_by_key(|&(_, bytes)| bytes)
                    .unwrap_or(("what is held", 0));
                PhaseEstimate {
                    phase: p.phase,
                    peak_bytes: held + bytes,
                    set_by: set_by.to_string(),
                }
            })
            .collect()
    }

    /// Every line the peak is the largest of.
    pub(super) fn lines(&self, weights: u64) -> Vec<Term> {
        let (fixed, per_sample) = self.held_line();
        self.phases
            .iter()
            .flat_map(|p| &p.moments)
            .map(|m| {
                Term::new(
                    m.what.clone(),
                    weights + fixed + m.fixed,
                    per_sample + m.per_sample,
                )
            })
            .collect()
    }

    /// The phases' lines for the seeded search, with `measured` held in place of the
    /// estimate's `weights`.
    pub(super) fn step_model(&self, weights: u64, measured: u64) -> StepModel {
        let (fixed, per_sample) = self.held_line();
        let offset = measured as f64 - weights as f64;
        StepModel {
            held: measured,
            phases: self
                .phases
                .iter()
                .map(|p| {
                    p.moments
                        .iter()
                        .map(|m| ModelLine {
                            fixed: (weights + fixed + m.fixed) as f64 + offset,
                            per_sample: (per_sample + m.per_sample) as f64,
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

/// The estimate of `options.mode`'s step (evaluation or generation) for `spec`.
pub(super) fn estimate(
    spec: &ModelSpec,
    options: &ModelOptions,
    optimizer: OptimizerKind,
) -> Result<Estimate, Error> {
    let info = spec.info(options)?;
    if options.lora.is_some() {
        return Err(Error::setting(
            Setting::LoraRank,
            "LoRA",
            "the estimate of an evaluation or a generation does not count $LoraRank's \
             adapters yet; a search or `maxbatch check` measures it",
        ));
    }
    let s = options.compute_dtype().size_in_bytes() as u64;
    let kept = options.dtype.size_in_bytes() as u64;
    let mut held = Vec::new();
    if kept != s {
        // Mixed precision: the step builds the model again from casts of every weight,
        // held to its end.
        held.push(Term::new("the weights' casts", info.parameters * s, 0));
    }
    // A generation's cache, from the config (`ModelSpec::kv_cache_bytes_per_token`).
    let kv_per_token = spec.kv_cache_bytes_per_token(options).unwrap_or(0);
    let (mut more, phases) = match (&spec.architecture, options.mode) {
        (Architecture::Mlp(c), StepMode::Eval { .. }) => (Vec::new(), mlp(c, s)),
        (Architecture::Gpt(c), mode) => {
            let shape = Decoder::gpt(c);
            let t = c.seq_len(options)? as u64;
            decoder(&shape, mode, (t, s, kv_per_token), |t| gpt_block(c, t, s))
        }
        (Architecture::Llama(c, _), mode) => {
            let shape = Decoder::llama(c);
            let t = spec.seq_len(options)?.unwrap_or(0) as u64;
            decoder(&shape, mode, (t, s, kv_per_token), |t| llama_block(c, t, s))
        }
        _ => return Err(super::families::uncounted_convolutions(spec)),
    };
    held.append(&mut more);
    Ok(Estimate {
        model: info.name,
        input: info.input,
        dtype: super::families::dtype_words(&info.dtype, options),
        optimizer,
        adapters: None,
        weights_bytes: info.parameters * kept,
        gradients_bytes: 0,
        // Beside training the optimizer's state is held too (what the training step leaves
        // besides it is nothing on the CPU; on CUDA the pool's blocks, which a search
        // measures as held).
        optimizer_bytes: match options.mode {
            StepMode::Eval {
                beside_training: Some(_),
            } => optimizer.state_copies() * info.parameters * kept,
            _ => 0,
        },
        activations: Term::new("activations", 0, 0),
        backward: Vec::new(),
        update: Vec::new(),
        inference: Some(Inference {
            mode: options.mode,
            held,
            phases,
        }),
    })
}

/// Bytes per element of the widest moment inside a frozen LayerNorm (`models::frozen`),
/// its input included: in f32 the input, centred, normalised, scaled, shifted; in a half
/// dtype the input, its f32 copy, centred (f32), and the cast back, scaled and shifted.
fn layer_norm_moment(s: u64) -> u64 {
    if s == F32 {
        5 * F32
    } else {
        (4 * s + 2 * F32).max(2 * s + 3 * F32)
    }
}

/// The same for a frozen RMSNorm: in f32 the input, normalised, scaled; in a half dtype the
/// input, its f32 copy, normalised (f32) and its cast back.
fn rms_norm_moment(s: u64) -> u64 {
    if s == F32 {
        3 * F32
    } else {
        2 * s + 2 * F32
    }
}

/// Per token: the logits in `s`, their f32 copy in a half dtype, and log-softmax's centred
/// and exponentiated (or result) f32 tensors.
fn loss_moment(vocab: u64, s: u64) -> u64 {
    let copy = if s == F32 { 0 } else { vocab * F32 };
    vocab * s + copy + 2 * vocab * F32
}

/// The MLP's evaluation: at each layer its input, product and biased sum; the loss.
fn mlp(c: &MlpConfig, s: u64) -> Vec<InferencePhase> {
    let mut widths = vec![c.inputs as u64];
    widths.extend(std::iter::repeat_n(c.width as u64, c.hidden));
    widths.push(c.classes as u64);
    // The batch's inputs stay alive all step (and the target id).
    let inputs = widths[0] * s + 4;
    let mut moments: Vec<Term> = (0..widths.len() - 1)
        .map(|l| {
            let input = if l == 0 { 0 } else { widths[l] * s };
            Term::new(
                format!("layer {l}"),
                0,
                inputs + input + 2 * widths[l + 1] * s,
            )
        })
        .collect();
    moments.push(Term::new(
        "the loss",
        0,
        inputs + loss_moment(c.classes as u64, s),
    ));
    vec![InferencePhase {
        phase: Phase::Forward,
        moments,
    }]
}

/// A decoder's shape as the cache and the head see it.
struct Decoder {
    layers: u64,
    width: u64,
    vocab: u64,
    heads: u64,
    query_width: u64,
    kv_width: u64,
}

impl Decoder {
    fn gpt(c: &GptConfig) -> Self {
        let (layers, kv_heads, head_dim) = c.cache_shape();
        Self {
            layers: layers as u64,
            width: c.width as u64,
            vocab: c.vocab as u64,
            heads: c.heads as u64,
            query_width: c.width as u64,
            kv_width: (kv_heads * head_dim) as u64,
        }
    }

    fn llama(c: &LlamaConfig) -> Self {
        let (layers, kv_heads, head_dim) = c.cache_shape();
        Self {
            layers: layers as u64,
            width: c.hidden as u64,
            vocab: c.vocab as u64,
            heads: c.heads as u64,
            query_width: (c.heads * c.head_dim) as u64,
            kv_width: (kv_heads * head_dim) as u64,
        }
    }
}

/// A block's moments at `t` tokens (per sample, and what does not grow with the batch),
/// given the block's input alive beside them.
struct Block {
    moments: Vec<Term>,
    /// Per-call tensors that do not grow with the batch (the mask, the rotary tables).
    fixed: u64,
}

impl Block {
    /// The moments with the per-call tensors and `inputs` (bytes a sample, alive all step)
    /// added to each.
    fn with_inputs(self, inputs: u64) -> Vec<Term> {
        let fixed = self.fixed;
        self.moments
            .into_iter()
            .map(|m| Term::new(m.what, m.fixed + fixed, m.per_sample + inputs))
            .collect()
    }
}

/// A decoder's evaluation (forward pass and loss at `t` tokens) or generation (prefill and
/// decode, its cache `kv_per_token` bytes a token), from its block's moments, in `s`-byte
/// elements.
fn decoder(
    d: &Decoder,
    mode: StepMode,
    (t, s, kv_per_token): (u64, u64, u64),
    block: impl Fn(u64) -> Block,
) -> (Vec<Term>, Vec<InferencePhase>) {
    let (c, v) = (d.width, d.vocab);
    match mode {
        StepMode::Generate {
            prompt_len,
            new_tokens,
        } => {
            let (p, n) = (prompt_len as u64, new_tokens as u64);
            let cached = p + n;
            let cache = Term::new(
                format!(
                    "the KV cache: 2 × {} layers × {} key/value width × {cached} tokens × {s} B \
                     (arithmetic from the config)",
                    d.layers, d.kv_width
                ),
                0,
                kv_per_token * cached,
            );
            // The prompt's ids; the prefill ends at the last position's logits.
            let prompt = 4 * p;
            let mut prefill = block(p).with_inputs(prompt);
            prefill.push(Term::new(
                "the last position's logits",
                0,
                prompt + 2 * c * s + v * s,
            ));
            // A decode step at the full cache: one token through a block that reads every
            // cached position.
            let decode = decode_block(d, cached, s);
            (
                vec![cache],
                vec![
                    InferencePhase {
                        phase: Phase::Prefill,
                        moments: prefill,
                    },
                    InferencePhase {
                        phase: Phase::Decode,
                        moments: decode,
                    },
                ],
            )
        }
        _ => {
            let ids = 8 * t; // the inputs' and the targets' ids
            let mut moments = block(t).with_inputs(ids);
            moments.push(Term::new(
                "the loss",
                0,
                ids + 2 * t * c * s + t * loss_moment(v, s),
            ));
            (
                Vec::new(),
                vec![InferencePhase {
                    phase: Phase::Forward,
                    moments,
                }],
            )
        }
    }
}

/// A decode step's moments at `cached` positions: the token's own tensors are small; what
/// grows with the cache is attention's reads of it: grouped query heads copy the cached keys
/// and values once per group (`repeat_kv`'s contiguous copies, `[H, cached, head width]`
/// each), and the scores are `[H, 1, cached]` (4 alive in the softmax).
fn decode_block(d: &Decoder, cached: u64, s: u64) -> Vec<Term> {
    let grouped = match d.query_width {
        q if q != d.kv_width => 2 * q * cached * s,
        _ => 0,
    };
    vec![Term::new(
        "a decode step at the full cache",
        0,
        8 * d.width * s + d.vocab * s + grouped + 4 * d.heads * cached * s + 8,
    )]
}

/// A GPT block's moments at `t` tokens, with its input alive: LayerNorm; attention at its
/// softmax (8 [T, C]: the input, the norm's output, the fused projection's three, q, k, v;
/// and 4 score-sized: the masked scores, centred, exponentiated, normalised); attention at
/// its output projection (11 [T, C] and the scores and weights); the feed-forward network
/// (5 [T, C]: the input, the residual, the norm's output, the down projection and its sum;
/// 2 [T, F]: up and GELU).
fn gpt_block(c: &GptConfig, t: u64, s: u64) -> Block {
    let [w, h, f] = [c.width, c.heads, c.ffn].map(|n| n as u64);
    let (tc, tf, hs) = (t * w * s, t * f * s, h * t * t * s);
    Block {
        moments: vec![
            Term::new("a LayerNorm", 0, tc + t * w * layer_norm_moment(s)),
            Term::new("attention's softmax", 0, 8 * tc + 4 * hs),
            Term::new("attention's output", 0, 11 * tc + 2 * hs),
            Term::new("the feed-forward network", 0, 5 * tc + 2 * tf),
        ],
        // The causal mask in the compute dtype.
        fixed: t * t * s,
    }
}

/// A Llama layer's moments at `t` tokens, with its input alive: RMSNorm; the rotary
/// embedding of q (5 query-width tensors); attention at its softmax (the key/value heads and
/// their grouped copies, 4 score-sized); the gated MLP (4 [T, I]: gate, SiLU, up, product).
fn llama_block(c: &LlamaConfig, t: u64, s: u64) -> Block {
    let [w, h, kv, d, i] =
        [c.hidden, c.heads, c.kv_heads, c.head_dim, c.intermediate].map(|n| n as u64);
    let (tc, ti, hs) = (t * w * s, t * i * s, h * t * t * s);
    let (tq, tk) = (t * h * d * s, t * kv * d * s);
    let grouped = if h == kv { 0 } else { 2 * tq };
    Block {
        moments: vec![
            Term::new("an RMSNorm", 0, tc + t * w * rms_norm_moment(s)),
            Term::new("the rotary embedding", 0, 2 * tc + 5 * tq),
            Term::new("attention's softmax", 0, 2 * tc + 2 * tk + grouped + 4 * hs),
            Term::new("the gated MLP", 0, 3 * tc + 4 * ti),
        ],
        // The causal mask and the rotary tables.
        fixed: t * t * s + 3 * t * d * s,
    }
}
