//! [`StepMode`]: what one trial's step is — a training step, an evaluation pass, or a
//! generation with a KV cache — and the words a report uses for it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a trial runs at one batch size. The search, the meters and the report are the same
/// for every mode; only the step differs (see docs/design.md, "Beyond training").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepMode {
    /// A full training step: forward, loss, backward, optimizer update.
    #[default]
    Train,
    /// An evaluation pass: the forward pass and the loss, with no autograd graph (the
    /// weights are plain tensors, so each activation is freed once the next layer no longer
    /// needs it).
    Eval {
        /// When set, the evaluation runs while a training loop's state is held: the weights
        /// as trained variables, the optimizer's state, and what a training step at this
        /// batch size left behind (it runs once before the trials).
        beside_training: Option<usize>,
    },
    /// Generation, as a server batches sequences: the prompt is prefilled, then
    /// `new_tokens` decode steps each add one token per sequence to a KV cache sized for
    /// `prompt_len + new_tokens` tokens. The batch size is the number of sequences.
    Generate {
        /// Tokens of each sequence's prompt.
        prompt_len: usize,
        /// Decode steps after the prefill (one token each).
        new_tokens: usize,
    },
}

impl StepMode {
    /// An evaluation pass on its own.
    pub const EVAL: StepMode = StepMode::Eval {
        beside_training: None,
    };

    /// True for a training step (the only mode with a backward pass and an optimizer).
    pub fn trains(self) -> bool {
        self == StepMode::Train
    }

    /// True when the trained weights are variables: training, and an evaluation beside it.
    pub fn keeps_training_state(self) -> bool {
        matches!(
            self,
            StepMode::Train
                | StepMode::Eval {
                    beside_training: Some(_)
                }
        )
    }

    /// The tokens a generation's KV cache holds per sequence (`None`: not a generation).
    pub fn cached_tokens(self) -> Option<usize> {
        match self {
            StepMode::Generate {
                prompt_len,
                new_tokens,
            } => Some(prompt_len + new_tokens),
            _ => None,
        }
    }

    /// What a report calls one of the batch: a sample, or a sequence generated with others.
    pub fn sample_noun(self) -> &'static str {
        match self {
            StepMode::Generate { .. } => "sequence",
            _ => "sample",
        }
    }
}

impl fmt::Display for StepMode {
    /// The step in words, as a report's header gives it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepMode::Train => f.write_str("training (forward, loss, backward, optimizer update)"),
            StepMode::Eval {
                beside_training: None,
            } => f.write_str("evaluation (forward pass and loss, no autograd graph)"),
            StepMode::Eval {
                beside_training: Some(b),
            } => write!(
                f,
                "evaluation (forward pass and loss, no autograd graph) while the training \
                 state is held: the trained weights, the optimizer's state, and what a \
                 training step at batch size {b} left"
            ),
            StepMode::Generate {
                prompt_len,
                new_tokens,
            } => write!(
                f,
                "generation: a {prompt_len}-token prompt prefilled, then {new_tokens} decode \
                 steps with a KV cache of {} tokens per sequence",
                prompt_len + new_tokens
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_training_and_evaluation_beside_it_keep_the_training_state() {
        assert!(StepMode::Train.keeps_training_state());
        assert!(!StepMode::EVAL.keeps_training_state());
        let beside = StepMode::Eval {
            beside_training: Some(8),
        };
        assert!(beside.keeps_training_state() && !beside.trains());
        let generate = StepMode::Generate {
            prompt_len: 16,
            new_tokens: 4,
        };
        assert_eq!(generate.cached_tokens(), Some(20));
        assert!(!generate.keeps_training_state());
    }

    #[test]
    fn modes_round_trip_through_json() {
        for mode in [
            StepMode::Train,
            StepMode::EVAL,
            StepMode::Eval {
                beside_training: Some(3),
            },
            StepMode::Generate {
                prompt_len: 7,
                new_tokens: 2,
            },
        ] {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(serde_json::from_str::<StepMode>(&json).unwrap(), mode);
        }
        assert_eq!(
            serde_json::to_string(&StepMode::Train).unwrap(),
            "\"train\""
        );
    }
}
