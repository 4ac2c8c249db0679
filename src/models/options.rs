//! [`ModelOptions`]: the choices that change a built-in model's input, precision and what it
//! trains, checked in one place, [`ModelOptions::validate`].

use candle_core::DType;

use super::lora::LoraOptions;
use super::mode::StepMode;
use super::{Architecture, ModelSpec};
use crate::error::{Error, Setting};

/// Choices that change a built-in model's input shape or precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// Tokens per sample for the transformers (default: the model's context length).
    pub seq_len: Option<usize>,
    /// Image side in pixels for `cnn` (default 32).
    pub image_size: Option<usize>,
    /// The dtype of weights, activations and optimizer state (default f32).
    pub dtype: DType,
    /// Mixed precision: the half dtype the forward and backward passes compute in, while
    /// weights, gradients and optimizer state stay in `dtype` (f32).
    pub amp: Option<DType>,
    /// LoRA fine-tuning: only adapters are trained.
    pub lora: Option<LoraOptions>,
    /// What a trial's step is: training (the default), evaluation, or generation.
    pub mode: StepMode,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            seq_len: None,
            image_size: None,
            dtype: DType::F32,
            amp: None,
            lora: None,
            mode: StepMode::Train,
        }
    }
}

impl ModelOptions {
    /// The dtype the forward and backward passes compute in.
    pub fn compute_dtype(&self) -> DType {
        self.amp.unwrap_or(self.dtype)
    }
}

impl ModelOptions {
    /// Refuses what `spec` cannot take: an input option its architecture does not have (a
    /// sequence length for the MLP or the ResNet, an image size for a transformer: it would
    /// change nothing, and the caller would believe it had), a sequence length or image size
    /// out of range, mixed precision that is not half precision over f32 weights, and LoRA
    /// where there are no adapters or its targets name no layer. Called by the command line
    /// and the library alike before anything is built.
    pub fn validate(&self, spec: &ModelSpec) -> Result<(), Error> {
        let (takes_tokens, takes_images) = match &spec.architecture {
            Architecture::Mlp(_) => (false, false),
            Architecture::Gpt(_) | Architecture::Llama(..) => (true, false),
            Architecture::ResNet(_) => (false, true),
        };
        let takes = match (takes_tokens, takes_images) {
            (true, _) => "its input is set by $SeqLen",
            (_, true) => "its input is set by $ImageSize",
            _ => "its input is fixed by the architecture",
        };
        let refuse = |setting: Setting, value: usize| {
            Err(Error::setting(
                setting,
                value,
                format!(
                    "${setting:?} does not apply to {} ({takes}); drop it",
                    spec.name
                ),
            ))
        };
        if let (Some(n), false) = (self.seq_len, takes_tokens) {
            return refuse(Setting::SeqLen, n);
        }
        if let (Some(n), false) = (self.image_size, takes_images) {
            return refuse(Setting::ImageSize, n);
        }
        spec.seq_len(self)?;
        if takes_images {
            image_size(self)?;
        }
        self.check_precision()?;
        self.check_mode(spec)?;
        spec.adapters(self).map(|_| ())
    }

    /// Refuses a generation for a model that does not generate (the MLP, the ResNet), with a
    /// sequence length (the prompt and the new tokens set it), with no prompt or no new
    /// token, or longer than learned positions reach; and an evaluation beside training at
    /// batch size 0.
    pub(crate) fn check_mode(&self, spec: &ModelSpec) -> Result<(), Error> {
        match self.mode {
            StepMode::Train => Ok(()),
            StepMode::Eval {
                beside_training: Some(0),
            } => Err(Error::setting(
                Setting::BatchSize,
                0,
                "the training batch size an evaluation runs beside must be at least 1",
            )),
            StepMode::Eval { .. } => Ok(()),
            StepMode::Generate {
                prompt_len,
                new_tokens,
            } => {
                let context = match &spec.architecture {
                    Architecture::Gpt(c) => Some(c.context),
                    Architecture::Llama(..) => None,
                    Architecture::Mlp(_) | Architecture::ResNet(_) => {
                        return Err(Error::setting(
                            Setting::Mode,
                            "generate",
                            format!(
                                "{} is not a decoder and generates nothing; $Mode generate \
                                 takes a transformer or a Llama-family or GPT-2 config (use \
                                 $Mode eval for its evaluation batch)",
                                spec.name
                            ),
                        ))
                    }
                };
                if let Some(n) = self.seq_len {
                    return Err(Error::setting(
                        Setting::SeqLen,
                        n,
                        "a generation's length is $PromptLen + $NewTokens; drop $SeqLen",
                    ));
                }
                if prompt_len == 0 {
                    return Err(Error::setting(
                        Setting::PromptLen,
                        0,
                        "$PromptLen must be at least 1 token",
                    ));
                }
                if new_tokens == 0 {
                    return Err(Error::setting(
                        Setting::NewTokens,
                        0,
                        "$NewTokens must be at least 1 (a prompt alone is $Mode eval's forward \
                         pass)",
                    ));
                }
                match context {
                    Some(context) if prompt_len + new_tokens > context => Err(Error::setting(
                        Setting::NewTokens,
                        new_tokens,
                        format!(
                            "$PromptLen {prompt_len} + $NewTokens {new_tokens} is longer than \
                             this model's context of {context} tokens (learned positions); \
                             keep the sum at most {context}"
                        ),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Refuses mixed precision in f32 and mixed precision over weights not kept in f32.
    pub(crate) fn check_precision(&self) -> Result<(), Error> {
        match self.amp {
            Some(DType::F32) => Err(Error::setting(
                Setting::Amp,
                "f32",
                "$Amp takes the half dtype the passes compute in: bf16 or f16",
            )),
            Some(_) if self.dtype != DType::F32 => Err(Error::setting(
                Setting::Amp,
                self.amp.map_or("", |d| d.as_str()),
                format!(
                    "$Amp keeps f32 master weights; drop $Dtype {} (or drop $Amp to train \
                     everything in {})",
                    self.dtype.as_str(),
                    self.dtype.as_str()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The trials' sequence length: the one asked for, or `default`; never above `limit` when
/// the positions are learned (`strict`).
pub(crate) fn bounded_seq_len(
    requested: Option<usize>,
    default: usize,
    limit: usize,
    strict: bool,
) -> Result<usize, Error> {
    match requested {
        None => Ok(default),
        Some(0) => Err(Error::setting(
            Setting::SeqLen,
            0,
            "$SeqLen must be at least 1",
        )),
        Some(n) if strict && n > limit => Err(Error::setting(
            Setting::SeqLen,
            n,
            format!(
                "$SeqLen {n} is longer than this model's context of {limit} tokens (learned \
                 positions); use at most {limit}"
            ),
        )),
        Some(n) => Ok(n),
    }
}

/// The ResNet's image side: the one asked for (at least 8), or 32.
pub(crate) fn image_size(options: &ModelOptions) -> Result<usize, Error> {
    match options.image_size {
        None => Ok(32),
        Some(s) if s >= 8 => Ok(s),
        Some(s) => Err(Error::setting(
            Setting::ImageSize,
            s,
            format!(
                "$ImageSize {s} is too small: the ResNet halves it three times; use at least 8"
            ),
        )),
    }
}
