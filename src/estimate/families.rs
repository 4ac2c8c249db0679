//! The counts behind an [`Estimate`], one function per architecture: the tensors candle's
//! autograd graph keeps in the forward pass, the moments of the backward pass, and what the
//! gradient store keeps past it. Each count names the tensors it adds up; docs/design.md
//! ("The estimate from shapes") says how they were found and checked.
//!
//! Notation: `s` is the dtype's bytes, `b` a sample; T tokens, C the hidden width, F or I
//! the feed-forward width, H heads, L blocks, V the vocabulary. The loss is computed in f32
//! (4 bytes) whatever the dtype.

use super::{Estimate, Term};
use crate::error::{Error, Setting};
use crate::models::llama::LlamaConfig;
use crate::models::mlp::MlpConfig;
use crate::models::transformer::GptConfig;
use crate::models::{Architecture, ModelOptions, ModelSpec};
use crate::workload::OptimizerKind;

pub(super) const F32: u64 = 4;

/// The counts of one architecture: what the forward pass keeps, the backward pass's
/// moments, what the gradient store keeps past the pass (per sample), and the largest
/// trained variable's elements.
pub(super) struct Counted {
    pub(super) activations: Term,
    pub(super) backward: Vec<Term>,
    pub(super) left_per_sample: u64,
    pub(super) largest_variable: u64,
}

pub(super) fn estimate(
    spec: &ModelSpec,
    options: &ModelOptions,
    optimizer: OptimizerKind,
) -> Result<Estimate, Error> {
    let adapters = spec.adapters(options)?;
    let lora = !adapters.adapted().is_empty();
    if lora && options.amp.is_some() {
        return Err(Error::setting(
            Setting::LoraRank,
            adapters.rank(),
            "the estimate counts $LoraRank in one dtype, not under --amp yet; a search or \
             `maxbatch check` measures it",
        ));
    }
    let info = spec.info(options)?;
    // The passes compute in `s`; the variables, their gradients and the optimizer's state
    // are kept in `kept` (the same but under mixed precision: f32 master weights).
    let s = options.compute_dtype().size_in_bytes() as u64;
    let kept = options.dtype.size_in_bytes() as u64;
    // What is trained: every weight, or under LoRA only the adapters (the other weights are
    // held, frozen, with no gradient and no optimizer state).
    let trained = info.trainable_parameters.unwrap_or(info.parameters);
    let gradients = trained * s;
    let seq = spec.seq_len(options)?.unwrap_or(0) as u64;
    let mut counted = match &spec.architecture {
        Architecture::Mlp(c) => mlp(c, s, gradients),
        Architecture::Gpt(c) if lora => super::lora::gpt(c, seq, s, &adapters),
        Architecture::Gpt(c) => gpt(c, seq, s, gradients),
        Architecture::Llama(c, _) if lora => super::lora::llama(c, seq, s, &adapters),
        Architecture::Llama(c, _) => llama(c, seq, s, gradients),
        Architecture::ResNet(_) => return Err(uncounted_convolutions(spec)),
    };
    if kept != s {
        // Mixed precision: each step casts every variable to the compute dtype, and the graph
        // keeps the casts until the step ends (docs/design.md, "Training modes"). The
        // backward pass's gradients reach the variables through the casts, in `kept`.
        counted.activations.fixed += info.parameters * s;
        for term in &mut counted.backward {
            term.fixed += gradients_kept_above(term, gradients, kept, s);
        }
    }
    let gradients = trained * kept;
    let transient_copies = match optimizer {
        // candle-nn's AdamW keeps 14 variable-sized tensors alive while it updates one
        // variable (its expressions are tracked, so their operands live as long as the
        // result); SGD keeps 2.
        OptimizerKind::AdamW => 14,
        OptimizerKind::Sgd => 2,
    };
    Ok(Estimate {
        model: info.name,
        input: info.input,
        dtype: dtype_words(&info.dtype, options),
        optimizer,
        adapters: info.adapters,
        weights_bytes: info.parameters * kept,
        gradients_bytes: gradients,
        optimizer_bytes: optimizer.state_copies() * gradients,
        activations: counted.activations,
        backward: counted.backward,
        update: vec![
            Term::new("the gradients", gradients, 0),
            Term::new(
                "the gradient store's other tensors",
                0,
                counted.left_per_sample,
            ),
            Term::new(
                format!("{optimizer}'s transient on the largest variable"),
                transient_copies * counted.largest_variable * kept,
                0,
            ),
        ],
        inference: None,
    })
}

/// The estimate's dtype in words: the dtype, or under `--amp` the kept and computed ones.
pub(super) fn dtype_words(dtype: &str, options: &ModelOptions) -> String {
    match options.amp {
        Some(amp) => format!("{dtype} weights, {} passes (--amp)", amp.as_str()),
        None => dtype.to_string(),
    }
}

/// The estimate's refusal of a model with convolutions (the ResNet): candle's CPU
/// convolutions allocate unfolded buffers no count here models.
pub(super) fn uncounted_convolutions(spec: &ModelSpec) -> Error {
    Error::setting(
        Setting::Model,
        &spec.name,
        format!(
            "maxbatch estimate does not count {}'s convolutions (candle's convolution buffers \
             are not modelled); run a search or `maxbatch check`, which measure",
            spec.name
        ),
    )
}

/// What a backward moment's gradients computed so far hold more in `kept` bytes than the
/// count in `s` bytes gave them: the moment's fixed part counts them, at most all of
/// `gradients` (in `s`), so their share of it grows by `kept / s`.
fn gradients_kept_above(term: &Term, gradients: u64, kept: u64, s: u64) -> u64 {
    term.fixed.min(gradients) * kept.saturating_sub(s) / s
}

/// Bytes per element of a normalised tensor: candle-nn's differentiable LayerNorm keeps 5
/// tensors of its input's shape (centred, squared, normalised, scaled, shifted), computing
/// in f32; in a half dtype it also keeps the f32 copy and the cast back.
pub(super) fn layer_norm_bytes(s: u64) -> u64 {
    if s == F32 {
        5 * F32
    } else {
        4 * F32 + 3 * s
    }
}

/// The same for RMSNorm: squared, normalised, scaled (and the casts in a half dtype).
pub(super) fn rms_norm_bytes(s: u64) -> u64 {
    if s == F32 {
        3 * F32
    } else {
        3 * F32 + 2 * s
    }
}

/// What the loss keeps per token: the logits, their f32 copy in a half dtype, and
/// log-softmax's three f32 tensors of the vocabulary's width (centred, exponentiated, the
/// result) and four f32 columns (max, sum, log, the gathered target).
pub(super) fn loss_bytes(vocab: u64, s: u64) -> u64 {
    let copy = if s == F32 { 0 } else { vocab * F32 };
    vocab * s + copy + 3 * vocab * F32 + 4 * F32
}

fn mlp(c: &MlpConfig, s: u64, gradients: u64) -> Counted {
    let mut widths = vec![c.inputs as u64];
    widths.extend(std::iter::repeat_n(c.width as u64, c.hidden));
    widths.push(c.classes as u64);
    let layers = widths.len() - 1;
    let weight = |l: usize| widths[l] * widths[l + 1] * s;
    let bias = |l: usize| widths[l + 1] * s;
    // Gradients computed once the backward pass has gone back past layer `l`.
    let after = |l: usize| -> u64 { (l + 1..layers).map(|j| weight(j) + bias(j)).sum() };
    let classes = c.classes as u64;
    // Per sample: the input and its target id; each hidden layer's product, biased sum and
    // ReLU; the last layer's product; its biased sum (the logits) and the loss.
    let hidden: u64 = (0..layers - 1).map(|l| 3 * widths[l + 1] * s).sum();
    let per_sample = widths[0] * s + 4 + hidden + classes * s + loss_bytes(classes, s);
    // The bias copies of the stop points.
    let fixed: u64 = (0..layers).map(bias).sum();
    let mut backward = vec![Term::new("the loss's gradient", 0, 7 * classes * F32)];
    for l in 0..layers {
        // A weight's gradient: computed from a tracked input, the product, the zeros it is
        // added to and the sum stay alive together with the transposed view's zeros and sum
        // (5 weight-sized tensors); from the raw input, 3.
        let copies = if l == 0 { 3 } else { 5 };
        backward.push(Term::new(
            format!("layer {l}'s weight gradient"),
            after(l) + bias(l) + copies * weight(l),
            (widths[l + 1] + 3 * widths[l]) * s,
        ));
        if l + 1 < layers {
            // ReLU's gradient: 8 tensors of the layer's width and the u8 mask.
            backward.push(Term::new(
                format!("layer {l}'s ReLU gradient"),
                after(l),
                8 * widths[l + 1] * s + widths[l + 1],
            ));
        }
    }
    debug_assert!(after(0) + weight(0) + bias(0) == gradients);
    Counted {
        activations: Term::new("activations", fixed, per_sample),
        backward,
        // The input's gradient (a leaf's, never freed) keeps its product's operands alive.
        left_per_sample: (3 * widths[0] + widths[1]) * s,
        largest_variable: (0..layers)
            .map(|l| widths[l] * widths[l + 1])
            .max()
            .unwrap_or(0),
    }
}

/// The moments a decoder's backward pass shares at its two ends, whatever its blocks: the
/// loss's gradient (7 f32 [T, V] tensors), the output head's weight gradient (5 copies of the
/// [V, C] head with the logits' gradient and 3 of its input's), and at the end the token
/// embedding's, which `index_add` writes as a new [V, C] while the old one is alive. `left` is
/// what the gradient store keeps per sample by the end.
fn decoder_ends(t: u64, v: u64, w: u64, s: u64, gradients: u64, left: u64) -> [Term; 3] {
    [
        Term::new("the loss's gradient", 0, 7 * t * v * F32),
        Term::new(
            "the output head's weight gradient",
            5 * v * w * s,
            t * (v + 3 * w) * s,
        ),
        Term::new(
            "the embeddings' gradients",
            gradients + v * w * s,
            3 * t * w * s + left,
        ),
    ]
}

/// One GPT block's activations per sample: 18 [T, C] outside the norms (the fused projection
/// and its bias sum, q, k and v copies, q scaled, the attention's output and its copy, the
/// projection and its sum, the residual, the FFN's down projection and its sum, the
/// residual), two LayerNorms, 3 [T, F] (up, its sum, GELU), 5 score-sized tensors (scores,
/// masked, centred, exponentiated, normalised), and the columns of the norms and softmax.
pub(super) fn gpt_block_bytes(c: &GptConfig, t: u64, s: u64) -> u64 {
    let [w, h, f] = [c.width, c.heads, c.ffn].map(|n| n as u64);
    18 * t * w * s
        + 2 * t * w * layer_norm_bytes(s)
        + 3 * t * f * s
        + 5 * h * t * t * s
        + 12 * t * F32
        + 2 * h * t * s
}

/// A GPT step's activations: the fixed part and the part per sample.
pub(super) fn gpt_activations(c: &GptConfig, t: u64, s: u64) -> Term {
    let [v, w, l] = [c.vocab, c.width, c.layers].map(|n| n as u64);
    let per_sample = 2 * t * F32 // ids and targets
        + 2 * t * w * s // token embeddings and their sum with the positions
        + l * gpt_block_bytes(c, t, s)
        + t * w * layer_norm_bytes(s) + 6 * t * F32 // the final LayerNorm
        + t * loss_bytes(v, s);
    // The positions' embeddings, the mask, and the stop points' copies of the norm weights.
    let fixed = t * w * s + t * t * s + 4 * t + (2 * l + 1) * w * s;
    Term::new("activations", fixed, per_sample)
}

fn gpt(c: &GptConfig, t: u64, s: u64, gradients: u64) -> Counted {
    let [v, ctx, w, l, h, f] =
        [c.vocab, c.context, c.width, c.layers, c.heads, c.ffn].map(|n| n as u64);
    let scores = h * t * t; // one block's attention scores per sample

    // The parameters of block 0 in the order its backward pass reaches them.
    let norm = 2 * w * s;
    let qkv = (3 * w * w + 3 * w) * s;
    let proj = (w * w + w) * s;
    let up = (w * f + f) * s;
    let down_weight = f * w * s;
    let positions = ctx * w * s;
    // Gradients not yet computed when the backward pass reaches block 0's …
    let before = |pending: u64| gradients.saturating_sub(positions + pending);
    let left = |blocks: u64| blocks * scores * s; // the masks' gradients, one per block passed
    let mut backward = decoder_ends(t, v, w, s, gradients, left(l)).to_vec();
    backward.extend([
        Term::new(
            "the first block's feed-forward gradients",
            before(norm + qkv + proj + norm + up),
            (21 * t * f + t * w) * s + left(l.saturating_sub(1)),
        ),
        Term::new(
            "the first block's attention gradients",
            before(norm + qkv),
            (11 * scores + 5 * t * w) * s + left(l.saturating_sub(1)),
        ),
        Term::new(
            "the first block's down-projection weight gradient",
            before(norm + qkv + proj + norm + up + down_weight) + 5 * down_weight,
            (t * w + 3 * t * f) * s + left(l.saturating_sub(1)),
        ),
        Term::new(
            "the first block's up-projection weight gradient",
            before(norm + qkv + proj + norm + w * f * s) + 5 * w * f * s,
            (t * f + 3 * t * w) * s + left(l.saturating_sub(1)),
        ),
        Term::new(
            "the first block's fused-projection weight gradient",
            before(norm + 3 * w * w * s) + 15 * w * w * s,
            6 * t * w * s + left(l),
        ),
    ]);
    Counted {
        activations: gpt_activations(c, t, s),
        backward,
        left_per_sample: left(l),
        largest_variable: [v * w, ctx * w, w * f, 3 * w * w]
            .into_iter()
            .max()
            .unwrap_or(0),
    }
}

fn llama(c: &LlamaConfig, t: u64, s: u64, gradients: u64) -> Counted {
    let (backward, left_per_sample) = llama_backward(c, t, s, gradients);
    let LlamaSizes { v, w, q, i, .. } = LlamaSizes::of(c);
    Counted {
        activations: llama_activations(c, t, s),
        backward,
        left_per_sample,
        largest_variable: [v * w, w * i, w * q].into_iter().max().unwrap_or(0),
    }
}

/// A Llama config's sizes as factors of byte counts: the vocabulary, width, layers, heads,
/// key/value heads, head width and feed-forward width; the query and key/value widths; 1
/// with q/k/v biases.
pub(super) struct LlamaSizes {
    pub(super) v: u64,
    pub(super) w: u64,
    pub(super) l: u64,
    pub(super) h: u64,
    pub(super) kv: u64,
    pub(super) hd: u64,
    pub(super) i: u64,
    pub(super) q: u64,
    pub(super) k: u64,
    pub(super) bias: u64,
}

impl LlamaSizes {
    pub(super) fn of(c: &LlamaConfig) -> Self {
        let [v, w, l, h, kv, hd, i] = [
            c.vocab,
            c.hidden,
            c.layers,
            c.heads,
            c.kv_heads,
            c.head_dim,
            c.intermediate,
        ]
        .map(|n| n as u64);
        Self {
            v,
            w,
            l,
            h,
            kv,
            hd,
            i,
            q: h * hd,
            k: kv * hd,
            bias: u64::from(c.qkv_bias),
        }
    }
}

/// A Llama-style step's activations: the fixed part and the part per sample.
pub(super) fn llama_activations(c: &LlamaConfig, t: u64, s: u64) -> Term {
    let LlamaSizes {
        v,
        w,
        l,
        h,
        kv,
        hd,
        i,
        q,
        k,
        bias,
    } = LlamaSizes::of(c);
    let scores = h * t * t;
    let grouped = if h > kv { 2 * t * q * s } else { 0 };
    // Per sample, one layer, in half-tensors (q's rotation keeps half a tensor, the negated
    // half): two RMSNorms; 4 [T, C] (o, the two residuals, down); q projected, copied,
    // rotated (negated half, concatenation, two products, sum) and scaled: 7.5; k the
    // same unscaled: 6.5; v projected and copied: 2 (each +1 with qkv biases); k and v
    // repeated for grouped heads; the attention's output and its copy; 5 score-sized
    // tensors; 4 [T, I] (gate, SiLU, up, product); the norms' and softmax's columns.
    let half_tensors = (15 + 2 * bias) * t * q + (13 + 2 * bias) * t * k + (4 + 2 * bias) * t * k;
    let layer = 2 * t * w * rms_norm_bytes(s)
        + 4 * t * w * s
        + half_tensors * s / 2
        + grouped
        + 2 * t * q * s
        + 5 * scores * s
        + 4 * t * i * s
        + 8 * t * F32
        + 2 * h * t * s;
    let per_sample = 2 * t * F32
        + t * w * s
        + l * layer
        + t * w * rms_norm_bytes(s)
        + 4 * t * F32
        + t * loss_bytes(v, s);
    // The rotary tables (cos and sin, and each layer's concatenations of them), the mask,
    // the stop points' copies of the norm weights.
    let fixed = t * hd * s + t * t * s + l * (4 * t * hd + 2 * w) * s + w * s;

    Term::new("activations", fixed, per_sample)
}

/// A Llama-style step's backward terms, and what its gradient store keeps per sample.
fn llama_backward(c: &LlamaConfig, t: u64, s: u64, gradients: u64) -> (Vec<Term>, u64) {
    let LlamaSizes {
        v,
        w,
        l,
        h,
        i,
        q,
        k,
        bias,
        ..
    } = LlamaSizes::of(c);
    let scores = h * t * t;
    let embed = if c.tie_embeddings { 0 } else { v * w * s };
    let norm = w * s;
    let (q_proj, k_proj) = ((w * q + bias * q) * s, (w * k + bias * k) * s);
    let attention = q_proj + 2 * k_proj + q * w * s;
    let (gate_or_up, down) = (w * i * s, i * w * s);
    let before = |pending: u64| gradients.saturating_sub(embed + pending);
    // What the gradient store keeps per layer passed: the mask's gradient, and for each of
    // the rotation's four products by the tables, the product's gradient, its operand's,
    // the zeros and the sum (a tracked expression keeps its operands).
    let per_layer_left = scores * s + 8 * t * (q + k) * s;
    let left = |layers: u64| layers * per_layer_left;
    let mut backward = decoder_ends(t, v, w, s, gradients, left(l)).to_vec();
    backward.extend([
        Term::new(
            "the first layer's MLP gradients",
            before(norm + attention + norm + 2 * gate_or_up),
            (14 * t * i + 2 * t * w) * s + left(l.saturating_sub(1)),
        ),
        Term::new(
            "the first layer's attention gradients",
            before(norm + q_proj + 2 * k_proj),
            (11 * scores + 3 * t * w) * s + left(l.saturating_sub(1)),
        ),
        Term::new(
            "the first layer's down-projection weight gradient",
            before(norm + attention + norm + 2 * gate_or_up + down) + 5 * down,
            (t * w + 3 * t * i) * s + left(l.saturating_sub(1)),
        ),
        Term::new(
            "the first layer's gate or up weight gradient",
            before(norm + attention + norm + 2 * gate_or_up) + 6 * gate_or_up,
            (t * i + 3 * t * w) * s + left(l.saturating_sub(1)),
        ),
        Term::new(
            "the first layer's query weight gradient",
            before(norm + q_proj) + 5 * q_proj,
            (t * q + 3 * t * w) * s + left(l),
        ),
    ]);
    (backward, left(l))
}
