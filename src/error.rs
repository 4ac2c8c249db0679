//! The library's error type. Each message says what to do next, naming the settings to
//! change as typed [`Setting`]s: the library prints them in plain words ("the margin"), the
//! command line by their flags (`--margin`), through [`Error::describe`]. It depends on nothing
//! in the crate but [`format`](crate::format), so every module can return it.

use crate::format::{bytes, candle_error};

/// A setting of a search, a model or a device: what an error asks the caller to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    /// The model: a built-in preset's name.
    Model,
    /// The model: a Hugging Face `config.json`.
    Config,
    /// The device the trials run on.
    Device,
    /// Refusing the CPU when the CUDA device asked for cannot be used.
    NoFallback,
    /// The memory budget (a CUDA cap).
    Memory,
    /// The dtype weights, activations and optimizer state are kept in.
    Dtype,
    /// Mixed precision's compute dtype.
    Amp,
    /// The optimizer.
    Optimizer,
    /// Tokens per sample.
    SeqLen,
    /// The image side.
    ImageSize,
    /// LoRA's rank.
    LoraRank,
    /// LoRA's alpha.
    LoraAlpha,
    /// The linear layers LoRA adapts.
    LoraTargets,
    /// The first batch size tried.
    Start,
    /// The largest batch size tried.
    MaxBatch,
    /// Full training steps per trial.
    StepsPerTrial,
    /// The fraction of the capacity the recommended size leaves free.
    Margin,
    /// Training samples.
    DatasetSize,
    /// Passes over the dataset.
    Epochs,
    /// The global batch of an accumulation goal.
    TargetBatch,
    /// Data-parallel replicas.
    WorldSize,
    /// The micro-batch of an accumulation goal.
    MicroBatch,
    /// The batch size of a pre-flight check.
    BatchSize,
    /// Steps of the verification run.
    VerifySteps,
    /// Capacities or GPUs to plan for.
    PlanFor,
    /// What a trial's step is: training, evaluation or generation.
    Mode,
    /// A generation's prompt tokens.
    PromptLen,
    /// A generation's decode steps.
    NewTokens,
    /// The evaluation batch size checked beside a training one.
    EvalBatchSize,
}

impl Setting {
    /// Every setting, for parsing templates.
    pub const ALL: [Setting; 29] = [
        Setting::Model,
        Setting::Config,
        Setting::Device,
        Setting::NoFallback,
        Setting::Memory,
        Setting::Dtype,
        Setting::Amp,
        Setting::Optimizer,
        Setting::SeqLen,
        Setting::ImageSize,
        Setting::LoraRank,
        Setting::LoraAlpha,
        Setting::LoraTargets,
        Setting::Start,
        Setting::MaxBatch,
        Setting::StepsPerTrial,
        Setting::Margin,
        Setting::DatasetSize,
        Setting::Epochs,
        Setting::TargetBatch,
        Setting::WorldSize,
        Setting::MicroBatch,
        Setting::BatchSize,
        Setting::VerifySteps,
        Setting::PlanFor,
        Setting::Mode,
        Setting::PromptLen,
        Setting::NewTokens,
        Setting::EvalBatchSize,
    ];

    /// Its name in plain words, as the library's messages say it.
    pub fn plain(self) -> &'static str {
        match self {
            Setting::Model => "the model",
            Setting::Config => "a config.json",
            Setting::Device => "the device",
            Setting::NoFallback => "the refusal to fall back to the CPU",
            Setting::Memory => "the memory budget",
            Setting::Dtype => "the dtype",
            Setting::Amp => "mixed precision",
            Setting::Optimizer => "the optimizer",
            Setting::SeqLen => "the sequence length",
            Setting::ImageSize => "the image size",
            Setting::LoraRank => "the LoRA rank",
            Setting::LoraAlpha => "LoRA's alpha",
            Setting::LoraTargets => "the LoRA targets",
            Setting::Start => "the first batch size",
            Setting::MaxBatch => "the largest batch size",
            Setting::StepsPerTrial => "the steps per trial",
            Setting::Margin => "the margin",
            Setting::DatasetSize => "the dataset size",
            Setting::Epochs => "the epochs",
            Setting::TargetBatch => "the target batch",
            Setting::WorldSize => "the world size",
            Setting::MicroBatch => "the micro-batch",
            Setting::BatchSize => "the batch size",
            Setting::VerifySteps => "the verification steps",
            Setting::PlanFor => "the plan's targets",
            Setting::Mode => "the mode",
            Setting::PromptLen => "the prompt length",
            Setting::NewTokens => "the new tokens",
            Setting::EvalBatchSize => "the evaluation batch size",
        }
    }

    /// The name a template refers to it by: `$Margin`.
    fn id(self) -> String {
        format!("{self:?}")
    }
}

/// Renders a message template: every `$Id` naming a [`Setting`] (`$Margin`, `$SeqLen`)
/// becomes `name(setting)`; everything else is kept.
pub fn render(template: &str, name: &dyn Fn(Setting) -> String) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let ident_len = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        match Setting::ALL.iter().find(|s| s.id() == after[..ident_len]) {
            Some(&setting) => {
                out.push_str(&name(setting));
                rest = &after[ident_len..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A setting out of range, or a combination of settings that does not go together: which
/// setting, its value, and the message (a template naming settings as `$Id`, see
/// [`render`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The setting to change.
    pub setting: Setting,
    /// Its value, as given.
    pub value: String,
    /// What is wrong and what is allowed, naming settings as `$Id`.
    pub message: String,
}

impl SettingError {
    /// `setting` at `value` is refused for `message` (a template, see [`render`]).
    pub fn new(setting: Setting, value: impl ToString, message: impl Into<String>) -> Self {
        Self {
            setting,
            value: value.to_string(),
            message: message.into(),
        }
    }
}

/// Everything that can stop maxbatch short of an answer. Its `Debug` form is its message
/// too, so that a `main` returning `Result<_, Box<dyn Error>>` prints what to do next.
pub enum Error {
    /// The CPU meter needs the counting allocator as the global allocator.
    AllocatorNotInstalled,

    /// The machine's available memory could not be read.
    MemInfo(String),

    /// Even batch size 1 ran out of memory.
    NothingFits {
        /// The peak measured at batch size 1 (a lower bound when the trial stopped early).
        needs: Option<u64>,
        /// The capacity it was measured against.
        capacity: u64,
        /// What to try instead (a template, see [`render`]).
        hint: String,
        /// True when the warm-up step ran out of memory (CUDA), not a trial.
        at_warm_up: bool,
    },

    /// The model and optimizer state alone are over the capacity.
    ModelExceedsCapacity {
        /// Bytes held before any trial.
        held: u64,
        /// Of them, the CPU's matrix-multiply workspaces (0 when not counted).
        workspace: u64,
        /// The capacity.
        capacity: u64,
    },

    /// A trial failed with something other than out-of-memory.
    Trial {
        /// The batch size being tried.
        batch_size: usize,
        /// candle's error.
        error: candle_core::Error,
    },

    /// No built-in model has that name.
    UnknownModel {
        /// The name given.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },

    /// A `config.json` could not be turned into a model.
    Config {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// The device string did not parse.
    InvalidDevice(String),

    /// CUDA was asked for, cannot be had, and falling back to the CPU was refused.
    CudaUnavailable {
        /// Why CUDA cannot be used.
        reason: String,
    },

    /// A setting is out of range, or does not go with another.
    Setting(SettingError),

    /// candle failed outside a trial (building the model, say).
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for Error {
    fn from(error: candle_core::Error) -> Self {
        Error::Candle(error)
    }
}

impl From<SettingError> for Error {
    fn from(error: SettingError) -> Self {
        Error::Setting(error)
    }
}

impl Error {
    /// A trial at `batch_size` that failed with `error` (not out of memory).
    pub fn trial(batch_size: usize, error: candle_core::Error) -> Self {
        Error::Trial { batch_size, error }
    }

    /// `setting` at `value` refused for `message` (a template, see [`render`]).
    pub fn setting(setting: Setting, value: impl ToString, message: impl Into<String>) -> Self {
        Error::Setting(SettingError::new(setting, value, message))
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

    /// The message, with every setting it names called `name(setting)`: plain words in
    /// the library's `Display`, flags on the command line.
    pub fn describe(&self, name: &dyn Fn(Setting) -> String) -> String {
        let template = match self {
            Error::AllocatorNotInstalled => {
                "maxbatch's counting allocator is not installed, so CPU memory cannot be \
                 measured; add `#[global_allocator] static ALLOCATOR: \
                 maxbatch::CountingAllocator = maxbatch::CountingAllocator::new();` to your \
                 binary (or `CountingAllocator::wrapping(YourAllocator)` around another one)"
                    .to_string()
            }
            Error::MemInfo(why) => format!(
                "cannot read the machine's available memory ({why}); give $Memory instead, \
                 e.g. 4GiB"
            ),
            Error::NothingFits {
                needs,
                capacity,
                hint,
                ..
            } => format!(
                "does not fit even at batch size 1: needs {}, capacity {}; {hint}",
                needs.map_or_else(|| "more".to_string(), |n| format!("at least {}", bytes(n))),
                bytes(*capacity)
            ),
            Error::ModelExceedsCapacity {
                held,
                workspace,
                capacity,
            } => format!(
                "the model alone (its weights, and the optimizer's state when it trains{}) \
                 needs {}, more than the capacity {}; raise $Memory, or choose a smaller \
                 model or $Dtype bf16 (when training, $Optimizer sgd)",
                if *workspace > 0 {
                    format!(", with {} of matrix-multiply workspaces", bytes(*workspace))
                } else {
                    String::new()
                },
                bytes(*held),
                bytes(*capacity)
            ),
            Error::Trial { batch_size, error } => format!(
                "the trial at batch size {batch_size} failed (not out of memory): {}{}",
                candle_error(error),
                dtype_hint(error)
            ),
            Error::UnknownModel { name, known } => format!(
                "unknown model {name:?}; known models: {known} (see `maxbatch models`); {}",
                config_hint(name)
            ),
            Error::Config { path, problem } => format!("{}: {problem}", path.display()),
            Error::InvalidDevice(what) => format!("invalid device {what}"),
            Error::CudaUnavailable { reason } => {
                format!("{reason}; drop $NoFallback to run on the CPU instead")
            }
            Error::Setting(error) => error.message.clone(),
            Error::Candle(error) => candle_error(error),
        };
        render(&template, name)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(&|s| s.plain().to_string()))
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// No `source`: the message already says what the candle error inside it says (printing the
/// chain would say it twice).
impl std::error::Error for Error {}

/// What to do with a model name that is not a preset: a Hugging Face model (a repository
/// name like `HuggingFaceTB/SmolLM2-135M`, or its `config.json`) is given by its config.
fn config_hint(name: &str) -> String {
    if name.ends_with(".json") {
        format!("{name} looks like a config file: give it as $Config {name}")
    } else if name.contains('/') {
        format!(
            "{name} looks like a Hugging Face model: download its config.json and give it \
             as $Config (only the shapes are read)"
        )
    } else {
        "for a Hugging Face model, give its config.json as $Config".to_string()
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
            "; this device cannot train {op} in {}: use $Dtype f32 and no $Amp",
            dtype.as_str()
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(setting: Setting) -> String {
        format!("--{}", format!("{setting:?}").to_ascii_lowercase())
    }

    #[test]
    fn templates_name_settings_in_plain_words_or_as_flags() {
        let error = Error::setting(Setting::Margin, 1.5, "$Margin 1.5 is not a fraction");
        assert_eq!(error.to_string(), "the margin 1.5 is not a fraction");
        assert_eq!(error.describe(&flag), "--margin 1.5 is not a fraction");
        // `$` before anything that is not a setting stays as it was.
        assert_eq!(render("$5 and $Nothing", &flag), "$5 and $Nothing");
        assert_eq!(render("raise $Memory.", &flag), "raise --memory.");
    }

    #[test]
    fn an_unknown_model_points_to_a_config() {
        let message = |name: &str| {
            Error::UnknownModel {
                name: name.into(),
                known: "mlp".into(),
            }
            .describe(&flag)
        };
        assert!(message("x.json").contains("give it as --config x.json"));
        assert!(message("HuggingFaceTB/SmolLM2-135M").contains("download its config.json"));
        assert!(message("smollm2-135m").contains("give its config.json as --config"));
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
