//! `maxbatch estimate`: a training step's peak memory at any batch size from the model's
//! shapes alone, with no trial. Every figure here is a prediction.
//!
//! The estimate counts what candle holds in each phase of the step the trials run (see
//! docs/design.md, "The estimate from shapes"):
//!
//! - held before the step: the weights and the optimizer's state;
//! - the forward pass: every tensor the autograd graph keeps for the backward pass, counted
//!   layer by layer ([`families`]);
//! - the backward pass: the forward pass's tensors (the loss keeps the graph alive), plus the
//!   largest of several moments, each the gradients computed by then and the temporaries alive
//!   at that moment (the loss's gradient, a weight's gradient, a block's attention or
//!   feed-forward gradients, the embeddings' at the end);
//! - the update: all of the above that outlives the pass (the gradients, and what candle's
//!   gradient store keeps for tensors that are not variables), plus the optimizer step's
//!   transient on the largest variable.
//!
//! Each term is a line in the batch size, so the largest batch size for a capacity is
//! arithmetic too. The counts are checked against the CPU meter's measured peaks by
//! `tests/estimate.rs`.

pub mod families;
mod inference;
mod lora;

pub use inference::{Inference, InferencePhase};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::models::{ModelOptions, ModelSpec};
use crate::search::{allowed_peak, largest_power_of_two_at_most, ModelLine, StepModel};
use crate::sizes::Sizes;
use crate::workload::{OptimizerKind, Phase};

/// Bytes that grow by a fixed amount per sample: `fixed + per_sample × batch size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    /// What the bytes are, in words.
    pub what: String,
    /// Bytes that do not depend on the batch size.
    pub fixed: u64,
    /// Bytes each sample adds.
    pub per_sample: u64,
}

impl Term {
    /// A term named `what`.
    pub fn new(what: impl Into<String>, fixed: u64, per_sample: u64) -> Self {
        Self {
            what: what.into(),
            fixed,
            per_sample,
        }
    }

    /// Its bytes at `batch_size`.
    pub fn at(&self, batch_size: usize) -> u64 {
        self.fixed
            .saturating_add(self.per_sample.saturating_mul(batch_size as u64))
    }
}

/// The estimated peak of one phase at one batch size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseEstimate {
    /// The phase.
    pub phase: Phase,
    /// Its estimated peak bytes.
    pub peak_bytes: u64,
    /// The moment that sets it, in words.
    pub set_by: String,
}

/// What a training step of a model holds, from its shapes (see the module's notes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The model's name.
    pub model: String,
    /// One sample's input, e.g. "128 tokens".
    pub input: String,
    /// The dtype of weights, activations and optimizer state.
    pub dtype: String,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// What is trained when not every weight is, e.g. "LoRA rank 8 (alpha 16) on
    /// attn.c_attn".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<String>,
    /// The weights' bytes.
    pub weights_bytes: u64,
    /// The gradients' bytes (one per trained weight).
    pub gradients_bytes: u64,
    /// The optimizer's state (AdamW: two moments per trained weight; SGD: none).
    pub optimizer_bytes: u64,
    /// What the forward pass keeps for the backward pass.
    pub activations: Term,
    /// The moments of the backward pass, each what it holds above the activations; the
    /// largest at a batch size is the backward pass's peak.
    pub backward: Vec<Term>,
    /// What the update holds above the activations: the gradients, what the gradient store
    /// keeps besides them, and the optimizer step's transient.
    pub update: Vec<Term>,
    /// An evaluation's or a generation's step instead of a training step's (the training
    /// terms above are then empty): what it holds throughout, and each phase's moments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<Inference>,
}

impl Estimate {
    /// The estimate for `spec` with `options` and `optimizer`; refuses what it cannot count
    /// (the ResNet, mixed precision, LoRA).
    pub fn new(
        spec: &ModelSpec,
        options: &ModelOptions,
        optimizer: OptimizerKind,
    ) -> Result<Self, Error> {
        if !options.mode.trains() {
            return inference::estimate(spec, options, optimizer);
        }
        families::estimate(spec, options, optimizer)
    }

    /// Held before the step: weights and optimizer state.
    pub fn held_bytes(&self) -> u64 {
        self.weights_bytes + self.optimizer_bytes
    }

    /// The estimated peak of each phase at `batch_size`, in order: forward, backward,
    /// update for training; forward for an evaluation; prefill, decode for a generation.
    pub fn phases(&self, batch_size: usize) -> Vec<PhaseEstimate> {
        if let Some(inference) = &self.inference {
            return inference.phases(self.held_bytes(), batch_size);
        }
        let forward = self.held_bytes() + self.activations.at(batch_size);
        let (moment, extra) = self
            .backward
            .iter()
            .map(|t| (t.what.as_str(), t.at(batch_size)))
            .max_by_key(|&(_, bytes)| bytes)
            .unwrap_or(("the activations", 0));
        let update: u64 = self.update.iter().map(|t| t.at(batch_size)).sum();
        vec![
            PhaseEstimate {
                phase: Phase::Forward,
                peak_bytes: forward,
                set_by: "the activations the forward pass keeps".into(),
            },
            PhaseEstimate {
                phase: Phase::Backward,
                peak_bytes: forward + extra,
                set_by: moment.to_string(),
            },
            PhaseEstimate {
                phase: Phase::Update,
                peak_bytes: forward + update,
                set_by: "the gradients and the optimizer's transient".into(),
            },
        ]
    }

    /// The estimated peak at `batch_size` and the phase that sets it.
    pub fn peak(&self, batch_size: usize) -> PhaseEstimate {
        let mut phases = self.phases(batch_size).into_iter();
        let first = phases.next().unwrap_or(PhaseEstimate {
            phase: Phase::Forward,
            peak_bytes: self.held_bytes(),
            set_by: "the weights".into(),
        });
        phases.fold(first, |best, p| {
            if p.peak_bytes > best.peak_bytes {
                p
            } else {
                best
            }
        })
    }

    /// Every line the peak is the largest of: the forward pass, each moment of the backward
    /// pass, and the update, each as held + activations + its own bytes.
    fn lines(&self) -> Vec<Term> {
        if let Some(inference) = &self.inference {
            return inference.lines(self.held_bytes());
        }
        let base = Term::new(
            "forward",
            self.held_bytes() + self.activations.fixed,
            self.activations.per_sample,
        );
        let mut lines = vec![base.clone()];
        for t in &self.backward {
            lines.push(Term::new(
                t.what.clone(),
                base.fixed + t.fixed,
                base.per_sample + t.per_sample,
            ));
        }
        let (fixed, per) = self
            .update
            .iter()
            .fold((0, 0), |(f, p), t| (f + t.fixed, p + t.per_sample));
        lines.push(Term::new(
            "update",
            base.fixed + fixed,
            base.per_sample + per,
        ));
        lines
    }

    /// The estimate as the model the seeded search and the plans use, in the bytes a trial
    /// measures: each phase's lines with `held` (what the process was measured to hold
    /// before a step: the weights, the optimizer's state, and what the estimate does not
    /// count, such as matrix-multiply workspaces) in place of the estimate's own held
    /// bytes.
    pub fn step_model(&self, held: u64) -> StepModel {
        if let Some(inference) = &self.inference {
            return inference.step_model(self.held_bytes(), held);
        }
        let offset = held as f64 - self.held_bytes() as f64;
        let forward = ModelLine {
            fixed: (self.held_bytes() + self.activations.fixed) as f64 + offset,
            per_sample: self.activations.per_sample as f64,
        };
        let above = |fixed: u64, per_sample: u64| ModelLine {
            fixed: forward.fixed + fixed as f64,
            per_sample: forward.per_sample + per_sample as f64,
        };
        // A backward pass without moments holds the forward pass's tensors.
        let mut backward: Vec<ModelLine> = self
            .backward
            .iter()
            .map(|t| above(t.fixed, t.per_sample))
            .collect();
        if backward.is_empty() {
            backward.push(forward);
        }
        let (fixed, per_sample) = self
            .update
            .iter()
            .fold((0, 0), |(f, p), t| (f + t.fixed, p + t.per_sample));
        StepModel {
            held,
            phases: vec![vec![forward], backward, vec![above(fixed, per_sample)]],
        }
    }

    /// The largest batch size whose estimated peak is at most `capacity` (0: not even one
    /// sample); `None` when no line grows with the batch size (no bound).
    pub fn max_batch(&self, capacity: u64) -> Option<usize> {
        self.lines()
            .iter()
            .filter_map(|line| {
                if line.fixed > capacity {
                    return Some(0);
                }
                (line.per_sample > 0).then(|| (capacity - line.fixed) / line.per_sample)
            })
            .min()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// The predicted sizes for `capacity` (what the step may use) with `margin` of it left
    /// free; `None` when no line grows with the batch size (no bound).
    pub fn sizes_for(&self, capacity: u64, margin: f64) -> Option<Sizes> {
        let max = self.max_batch(capacity)?;
        let recommended = self.max_batch(allowed_peak(capacity, margin))?.min(max);
        Some(Sizes {
            max,
            power_of_two: largest_power_of_two_at_most(max),
            recommended: (recommended > 0).then_some(recommended),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate() -> Estimate {
        Estimate {
            model: "m".into(),
            input: "x".into(),
            dtype: "f32".into(),
            optimizer: OptimizerKind::AdamW,
            adapters: None,
            weights_bytes: 100,
            gradients_bytes: 100,
            optimizer_bytes: 200,
            activations: Term::new("a", 10, 10),
            backward: vec![Term::new("early", 500, 0), Term::new("late", 0, 40)],
            update: vec![Term::new("g", 100, 0), Term::new("t", 300, 0)],
            inference: None,
        }
    }

    #[test]
    fn each_phase_is_the_largest_of_its_moments() {
        let e = estimate();
        // Held 300, activations 10 + 10 b.
        let at = |b| e.phases(b).iter().map(|p| p.peak_bytes).collect::<Vec<_>>();
        assert_eq!(at(1), [320, 820, 720]);
        assert_eq!(e.phases(1)[1].set_by, "early");
        // At 20 samples the per-sample moment passes the early one: 310 + 200 + 800.
        assert_eq!(at(20), [510, 1310, 910]);
        assert_eq!(e.phases(20)[1].set_by, "late");
        assert_eq!(e.peak(20).phase, Phase::Backward);
    }

    #[test]
    fn the_step_model_is_the_estimate_with_what_was_measured_held() {
        let e = estimate();
        let model = e.step_model(e.held_bytes() + 50);
        for b in [1, 5, 20, 100] {
            let phases = e.phases(b);
            for (k, phase) in phases.iter().enumerate() {
                assert_eq!(
                    model.phase_at(k, b),
                    (phase.peak_bytes + 50) as f64,
                    "{b} {k}"
                );
            }
            assert_eq!(model.peak_at(b), e.peak(b).peak_bytes + 50);
        }
        for capacity in [400, 900, 5000] {
            assert_eq!(model.max_for(capacity + 50), e.max_batch(capacity));
        }
    }

    #[test]
    fn the_max_is_the_largest_size_under_every_line() {
        let e = estimate();
        for capacity in [0, 319, 320, 819, 820, 1000, 1310, 5000, 1 << 20] {
            let max = e.max_batch(capacity).unwrap();
            let fits = |b: usize| b >= 1 && e.peak(b).peak_bytes <= capacity;
            // Exhaustively: max fits (or is 0), max + 1 does not.
            assert!(max == 0 || fits(max), "{capacity}: {max}");
            assert!(!fits(max + 1), "{capacity}: {max}");
        }
        let sizes = e.sizes_for(5000, 0.1).unwrap();
        assert_eq!(sizes.max, e.max_batch(5000).unwrap());
        let recommended = sizes.recommended.unwrap();
        assert!(recommended <= sizes.max);
        assert!(e.peak(recommended).peak_bytes <= 4500);
        assert!(sizes.power_of_two.is_power_of_two());
    }
}
