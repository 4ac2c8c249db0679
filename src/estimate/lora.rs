//! The counts under LoRA (`--lora-rank`): every base weight is a plain tensor, so candle's
//! graph starts at the first adapter and the backward pass stops there; no frozen weight
//! gets a gradient (`models::lora::matmul_frozen_t`, `models::frozen`), but every other
//! tensor that is not a variable and meets a tracked one keeps its gradient until the pass
//! ends (docs/design.md, "The estimate from shapes"). Counted from the full-training counts
//! of [`super::families`]:
//!
//! - the forward pass keeps what full training keeps, less the untracked prefix (the
//!   embeddings and the first block up to its first adapter) and the norms' stop-point
//!   copies, plus each adapter's `x Aᵀ`, its product with the scaled `Bᵀ` and the sum with
//!   the frozen output;
//! - the gradient store keeps, per block, the mask's gradient and the rotation's products'
//!   (as in full training), and for an adapter whose input is untracked, its input's
//!   gradient chain and the frozen output's gradient;
//! - the backward pass's moments are full training's without the weights' gradients, plus
//!   the adapters' own.
//!
//! `s` is the dtype's bytes, `t` the tokens, `r` the rank; per-sample counts.

use super::families::{
    gpt_activations, layer_norm_bytes, llama_activations, rms_norm_bytes, Counted, LlamaSizes, F32,
};
use super::Term;
use crate::models::llama::LlamaConfig;
use crate::models::lora::{Adapters, LinearShape};
use crate::models::transformer::GptConfig;

/// The adapters' own forward tensors in one block for the adapted layers among `linears`:
/// per sample `x Aᵀ` [T, r], its product with the scaled `Bᵀ` and the sum with the frozen
/// output, each [T, out]; fixed, the scaled `Bᵀ` [r, out].
fn adapter_activations(adapters: &Adapters, linears: &[LinearShape], t: u64, s: u64) -> Term {
    let r = adapters.rank() as u64;
    let (fixed, per_sample) = adapted(adapters, linears)
        .map(|&(_, _, out)| (r * out as u64 * s, (r + 2 * out as u64) * t * s))
        .fold((0, 0), |(f, p), (df, dp)| (f + df, p + dp));
    Term::new("the adapters' tensors", fixed, per_sample)
}

/// The adapted layers among `linears`.
fn adapted<'a>(
    adapters: &'a Adapters,
    linears: &'a [LinearShape],
) -> impl Iterator<Item = &'a LinearShape> + 'a {
    linears
        .iter()
        .filter(|(name, ..)| adapters.adapted().contains(name))
}

/// The largest adapter variable's elements (`A` [r, in] or `B` [out, r]).
fn largest_adapter(adapters: &Adapters, linears: &[LinearShape]) -> u64 {
    let r = adapters.rank() as u64;
    adapted(adapters, linears)
        .map(|&(_, i, o)| r * i.max(o) as u64)
        .max()
        .unwrap_or(0)
}

/// What an adapter whose input is not tracked leaves in the gradient store per sample: its
/// input's gradient (the product, the zeros and the sum, [T, in] each), the gradient of
/// `x Aᵀ` it keeps, and the frozen output's gradient [T, out].
fn untracked_input_left(adapters: &Adapters, (_, inputs, out): LinearShape, t: u64, s: u64) -> u64 {
    let r = adapters.rank() as u64;
    (3 * inputs as u64 + r + out as u64) * t * s
}

/// A GPT model under LoRA.
pub(super) fn gpt(c: &GptConfig, t: u64, s: u64, adapters: &Adapters) -> Counted {
    let [v, w, l, h, f] = [c.vocab, c.width, c.layers, c.heads, c.ffn].map(|n| n as u64);
    let linears = c.linears(); // c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, in order
    let first = linears
        .iter()
        .position(|(name, ..)| adapters.adapted().contains(name))
        .unwrap_or(0);
    let scores = h * t * t;
    let norm = t * w * layer_norm_bytes(s) + 6 * t * F32; // a LayerNorm with its columns
    let core = 6 * t * w * s + 5 * scores * s + 2 * h * t * s; // q, k, v to the attention's output

    // The untracked prefix: the token embeddings always; block 0 up to its first adapter,
    // less the tensors a tracked op still keeps (the adapter's input, the residual).
    let mut prefix = t * w * s;
    prefix += match first {
        0 => norm - t * w * s + 3 * t * w * s,
        1 => norm + 6 * t * w * s + core - t * w * s + t * w * s,
        _ => {
            let attention = norm + 6 * t * w * s + core + 2 * t * w * s + t * w * s;
            if first == 2 {
                attention + norm - t * w * s + t * f * s
            } else {
                attention + norm + 2 * t * f * s + t * w * s
            }
        }
    };
    let full = gpt_activations(c, t, s);
    let own = adapter_activations(adapters, &linears, t, s);
    let activations = Term::new(
        "activations",
        // The positions' embeddings are freed; a frozen norm has no stop point's copy.
        full.fixed - t * w * s - (2 * l + 1) * w * s + l * own.fixed,
        full.per_sample - prefix + l * own.per_sample,
    );

    // The gradient store, per sample: a tracked block keeps the mask's gradient (the frozen
    // norms and biases, through `models::frozen`, keep nothing).
    let block_left = scores * s;
    let first_left = untracked_input_left(adapters, linears[first], t, s)
        + if first == 0 { scores * s } else { 0 };
    let feed_forward = (21 * t * f + t * w) * s;
    let attention = (11 * scores + 5 * t * w) * s;
    Backward {
        noun: "block",
        t,
        s,
        vocab: v,
        width: w,
        store: Store {
            block: block_left,
            first: first_left,
            blocks: l,
        },
    }
    .counted(
        activations,
        adapters,
        &linears,
        [
            ("feed-forward", feed_forward, first <= 2),
            ("attention", attention, first == 0),
        ],
    )
}

/// A Llama-style model under LoRA.
pub(super) fn llama(c: &LlamaConfig, t: u64, s: u64, adapters: &Adapters) -> Counted {
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
    let linears = c.linears(); // q, k, v, o, gate, up, down, in order
    let is = |n: usize| adapters.adapted().contains(&linears[n].0);
    // Which part of the first layer the graph starts in: its attention's projections, its
    // output projection, the MLP's gate or up projection, or its down projection.
    let group = [0, 0, 0, 1, 2, 2, 3];
    let first = (0..7).find(|&n| is(n)).map_or(0, |n| group[n]);
    let scores = h * t * t;
    let grouped = h > kv;
    let norm = t * w * rms_norm_bytes(s) + 4 * t * F32; // an RMSNorm with its columns
                                                        // In half-tensors of [T, q] or [T, k] (see `llama_activations`): q's chain to its scaled
                                                        // copy, k's to its rotation, v's projection and copy.
    let (q_chain, k_chain, v_chain) = (15 + 2 * bias, 13 + 2 * bias, 4 + 2 * bias);
    let softmax = 5 * scores * s + 2 * h * t * s;

    // The untracked prefix of the first layer, per sample, and the rotary tables' copies
    // (two per rotated chain) that are untracked with it.
    let (mut prefix, mut tables) = (0, 0);
    let (q_in, k_in, v_in) = (is(0), is(1), is(2));
    let scored = q_in || k_in; // the scores are tracked
    if first == 0 {
        prefix += norm - t * w * s; // its output is the adapters' input
        if !q_in {
            // Freed but for the scaled copy the scores keep.
            prefix += (q_chain - if scored { 2 } else { 0 }) * t * q * s / 2;
            tables += 2;
        }
        if !k_in {
            let kept = if scored && !grouped { 2 } else { 0 };
            prefix += (k_chain - kept) * t * k * s / 2;
            tables += 2;
        }
        if !v_in {
            let kept = if grouped { 0 } else { 2 };
            prefix += (v_chain - kept) * t * k * s / 2;
        }
        if !scored {
            // Only the normalised weights, which the tracked product with v keeps.
            prefix += softmax - scores * s;
            if grouped {
                prefix += t * q * s; // k repeated
            }
        }
    } else {
        let attention = norm
            + (q_chain * q + (k_chain + v_chain) * k) * t * s / 2
            + if grouped { 2 * t * q * s } else { 0 }
            + softmax
            + 2 * t * q * s;
        tables += 4;
        prefix += match first {
            1 => attention - t * q * s, // the attention's output copy is o's input
            _ => {
                let through = attention + t * w * s + t * w * s; // o, and the embeddings
                if first == 2 {
                    through + norm - t * w * s + if is(4) { 0 } else { t * i * s }
                } else {
                    through + norm + 3 * t * i * s
                }
            }
        };
    }
    let full = llama_activations(c, t, s);
    let own = adapter_activations(adapters, &linears, t, s);
    let activations = Term::new(
        "activations",
        // A frozen norm has no stop point's copy.
        full.fixed - tables * t * hd * s - (2 * l + 1) * w * s + l * own.fixed,
        full.per_sample - prefix + l * own.per_sample,
    );

    // The gradient store, per sample: a tracked layer keeps the mask's gradient and the
    // rotation's four products' (four tensors each; the frozen norms and biases, through
    // `models::frozen`, keep nothing).
    let layer_left = (scores + 8 * t * (q + k)) * s;
    let untracked: u64 = match first {
        0 => [0, 1, 2]
            .into_iter()
            .filter(|&n| is(n))
            .map(|n| untracked_input_left(adapters, linears[n], t, s))
            .sum(),
        1 => untracked_input_left(adapters, linears[3], t, s),
        2 => [4, 5]
            .into_iter()
            .filter(|&n| is(n))
            .map(|n| untracked_input_left(adapters, linears[n], t, s))
            .sum(),
        _ => untracked_input_left(adapters, linears[6], t, s),
    };
    let first_left = untracked
        + match first {
            0 => {
                let rotated = if q_in { 8 * t * q } else { 0 } + if k_in { 8 * t * k } else { 0 };
                (if scored { scores } else { 0 } + rotated) * s
            }
            // The gated product keeps four [T, I] for its untracked operand.
            2 if is(4) != is(5) => 4 * t * i * s,
            _ => 0,
        };
    let mlp = (14 * t * i + 2 * t * w) * s;
    let attention = (11 * scores + 3 * t * w) * s;
    Backward {
        noun: "layer",
        t,
        s,
        vocab: v,
        width: w,
        store: Store {
            block: layer_left,
            first: first_left,
            blocks: l,
        },
    }
    .counted(
        activations,
        adapters,
        &linears,
        [
            ("MLP", mlp, first <= 2),
            ("attention", attention, first == 0 && scored),
        ],
    )
}

/// What the gradient store keeps per sample: after each tracked block but the first
/// (`block`), and after the first (`first`); the final norm, frozen, keeps nothing.
#[derive(Clone, Copy)]
struct Store {
    block: u64,
    first: u64,
    blocks: u64,
}

impl Store {
    /// Before the backward pass reaches block `b` (0 or 1).
    fn before(&self, b: u64) -> u64 {
        self.blocks.saturating_sub(b + 1) * self.block
    }

    /// At the end of the pass.
    fn left(&self) -> u64 {
        self.before(0) + self.first
    }
}

/// What the backward pass's moments under LoRA are made of: a family's word for a block,
/// the tokens, the dtype's bytes, the vocabulary, the width and the gradient store.
struct Backward {
    noun: &'static str,
    t: u64,
    s: u64,
    vocab: u64,
    width: u64,
    store: Store,
}

impl Backward {
    /// A family's counts under LoRA: `activations`, the backward moments of
    /// [`terms`](Self::terms), what the gradient store keeps at the end, and the largest
    /// adapter.
    fn counted(
        &self,
        activations: Term,
        adapters: &Adapters,
        linears: &[LinearShape],
        moments: [(&str, u64, bool); 2],
    ) -> Counted {
        Counted {
            activations,
            backward: self.terms(adapters, linears, moments),
            left_per_sample: self.store.left(),
            largest_variable: largest_adapter(adapters, linears),
        }
    }

    /// The moments: the loss's gradient, the frozen head's input gradient, each of a block's
    /// `(what, bytes per sample, tracked in the first block)` moments in the first block where
    /// it is tracked (the second, with less kept by then, where the first's is not), an
    /// adapter's weight gradient, and the end of the pass. Each carries the adapters'
    /// gradients computed by then.
    fn terms(
        &self,
        adapters: &Adapters,
        linears: &[LinearShape],
        moments: [(&str, u64, bool); 2],
    ) -> Vec<Term> {
        let Self { t, s, store, .. } = *self;
        let layers = store.blocks;
        let r = adapters.rank() as u64;
        let per_block = adapters.parameters_per_block(linears) * s;
        let all = layers * per_block;
        let mut terms = vec![
            Term::new("the loss's gradient", 0, 7 * t * self.vocab * F32),
            Term::new(
                "the output head's input gradient",
                0,
                t * (self.vocab + self.width) * s,
            ),
        ];
        for (what, bytes, tracked_in_first) in moments {
            if tracked_in_first {
                terms.push(Term::new(
                    format!("the first {}'s {what} gradients", self.noun),
                    layers.saturating_sub(1) * per_block,
                    bytes + store.before(0),
                ));
            } else if layers >= 2 {
                terms.push(Term::new(
                    format!("the second {}'s {what} gradients", self.noun),
                    layers.saturating_sub(2) * per_block,
                    bytes + store.before(1),
                ));
            }
        }
        // The widest adapter's `A` gradient: per sample, the gradient of its batch-broadcast
        // [in, r] with its zeros and sum, and its input's and `x Aᵀ`'s gradients; then the
        // product, the zeros and the sum of the variable's size with the transposed view's
        // zeros and sum (5 copies, as for a weight in full training).
        let inputs = adapted(adapters, linears)
            .map(|&(_, i, _)| i as u64)
            .max()
            .unwrap_or(0);
        terms.push(Term::new(
            "an adapter's weight gradient",
            all + 5 * largest_adapter(adapters, linears) * s,
            (3 * inputs * r + t * (inputs + r)) * s + store.left(),
        ));
        terms.push(Term::new("the adapters' gradients", all, store.left()));
        terms
    }
}
