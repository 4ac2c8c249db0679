//! The library's error type. Each message says what to do next. It depends on nothing in
//! the crate but [`format`](crate::format), so every module can return it.

use crate::format::{bytes, candle_error};

/// Everything that can stop maxbatch short of an answer. Its `Debug` form is its message
/// too, so that a `main` returning `Result<_, Box<dyn Error>>` prints what to do next.
#[derive(thiserror::Error)]
pub enum Error {
    /// The CPU meter needs the counting allocator as the global allocator.
    #[error(
        "maxbatch's counting allocator is not installed, so CPU memory cannot be measured; \
         add `#[global_allocator] static ALLOCATOR: maxbatch::CountingAllocator = maxbatch::CountingAllocator::new();` \
         to your binary (or `CountingAllocator::wrapping(YourAllocator)` around another one)"
    )]
    AllocatorNotInstalled,

    /// The machine's available memory could not be read.
    #[error("cannot read the machine's available memory ({0}); give a budget instead, e.g. --memory 4GiB")]
    MemInfo(String),

    /// Even batch size 1 ran out of memory.
    #[error(
        "does not fit even at batch size 1: needs {}, capacity {}; {hint}",
        needs.map_or_else(|| "more".to_string(), |n| format!("at least {}", bytes(n))),
        bytes(*capacity)
    )]
    NothingFits {
        /// The peak measured at batch size 1 (a lower bound when the trial stopped early).
        needs: Option<u64>,
        /// The capacity it was measured against.
        capacity: u64,
        /// What to try instead.
        hint: String,
        /// True when the warm-up step ran out of memory (CUDA), not a trial.
        at_warm_up: bool,
    },

    /// The model and optimizer state alone are over the capacity.
    #[error(
        "the model alone (weights and optimizer state{}) needs {}, more than the capacity {}; \
         raise --memory, or choose a smaller model, --dtype bf16 or --optimizer sgd",
        if *workspace > 0 { format!(", with {} of matrix-multiply workspaces", bytes(*workspace)) } else { String::new() },
        bytes(*held), bytes(*capacity)
    )]
    ModelExceedsCapacity {
        /// Bytes held before any trial.
        held: u64,
        /// Of them, the CPU's matrix-multiply workspaces (0 when not counted).
        workspace: u64,
        /// The capacity.
        capacity: u64,
    },

    /// A trial failed with something other than out-of-memory.
    #[error(
        "the trial at batch size {batch_size} failed (not out of memory): {}{}",
        candle_error(error),
        dtype_hint(error)
    )]
    Trial {
        /// The batch size being tried.
        batch_size: usize,
        /// candle's error.
        error: candle_core::Error,
    },

    /// No built-in model has that name.
    #[error(
        "unknown model {name:?}; known models: {known} (see `maxbatch models`); {}",
        config_hint(name)
    )]
    UnknownModel {
        /// The name given.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },

    /// A `config.json` could not be turned into a model.
    #[error("{}: {problem}", path.display())]
    Config {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// The device string did not parse.
    #[error("invalid device {0}")]
    InvalidDevice(String),

    /// CUDA was asked for, cannot be had, and falling back to the CPU was refused.
    #[error("{reason}; drop --no-fallback to run on the CPU instead")]
    CudaUnavailable {
        /// Why CUDA cannot be used.
        reason: String,
    },

    /// A setting is out of range.
    #[error("{0}")]
    InvalidSetting(String),

    /// candle failed outside a trial (building the model, say).
    #[error("{}", candle_error(.0))]
    Candle(#[from] candle_core::Error),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl Error {
    /// A trial at `batch_size` that failed with `error` (not out of memory).
    pub fn trial(batch_size: usize, error: candle_core::Error) -> Self {
        Error::Trial { batch_size, error }
    }

    /// This error as a candle error, for a training step (which returns candle's): a
    /// candle error comes back as it was, typed, so that a meter still recognises its
    /// device's out-of-memory inside it (`candle_core::Error::wrap` would keep only its
    /// text); any other becomes its message.
    pub fn into_candle(self) -> candle_core::Error {
        match self {
            Error::Candle(error) => error,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

/// What to do with a model name that is not a preset: a Hugging Face model (a repository
/// name like `HuggingFaceTB/SmolLM2-135M`, or its `config.json`) is given by its config.
fn config_hint(name: &str) -> String {
    if name.ends_with(".json") {
        format!("{name} looks like a config file: give it with --config {name}")
    } else if name.contains('/') {
        format!(
            "{name} looks like a Hugging Face model: download its config.json and give it \
             with --config PATH (only the shapes are read)"
        )
    } else {
        "for a Hugging Face model, give its config.json with --config PATH".to_string()
    }
}

/// A next step for errors that come from the dtype rather than the model.
fn dtype_hint(error: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match error {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            dtype_hint(inner)
        }
        E::UnsupportedDTypeForOp(dtype, op) => format!(
            "; this device cannot train {op} in {}: use --dtype f32 and no --amp",
            dtype.as_str()
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_model_points_to_a_config() {
        let message = |name: &str| {
            Error::UnknownModel {
                name: name.into(),
                known: "mlp".into(),
            }
            .to_string()
        };
        assert!(message("x.json").contains("give it with --config x.json"));
        assert!(message("HuggingFaceTB/SmolLM2-135M").contains("download its config.json"));
        assert!(message("smollm2-135m").contains("give its config.json with --config PATH"));
    }

    #[test]
    fn a_candle_error_comes_back_typed() {
        #[derive(Debug, thiserror::Error)]
        #[error("out of memory, typed")]
        struct Typed;
        let error = Error::Candle(candle_core::Error::Cuda(Box::new(Typed))).into_candle();
        assert!(
            crate::memory::errors::find_in(&error, |e| e.downcast_ref::<Typed>().map(|_| ()))
                .is_some()
        );
        let other = Error::InvalidDevice("tpu".into()).into_candle();
        assert_eq!(other.to_string(), "invalid device tpu");
    }

    #[test]
    fn the_debug_form_carries_the_fix() {
        // `fn main() -> Result<(), Box<dyn std::error::Error>>` prints the Debug form.
        let debug = format!("{:?}", Error::AllocatorNotInstalled);
        assert!(debug.contains("#[global_allocator]"), "{debug}");
        assert_eq!(debug, Error::AllocatorNotInstalled.to_string());
    }
}
