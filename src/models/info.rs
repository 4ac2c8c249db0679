//! [`ModelInfo`]: what a report says about a model.

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// What the report says about a model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The preset's name, e.g. "transformer-small", or the config file's.
    pub name: String,
    /// All parameters, trained or frozen.
    pub parameters: u64,
    /// The parameters the optimizer trains: all of them, or only the LoRA adapters'
    /// (`None`: not known, e.g. a caller's own step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_parameters: Option<u64>,
    /// One sample's input shape, e.g. "512 tokens".
    pub input: String,
    /// A one-line description of the architecture.
    pub summary: String,
    /// The dtype of weights, activations and optimizer state, e.g. "f32" (candle's name).
    pub dtype: String,
    /// Under mixed precision (`--amp`), the dtype the passes compute in, e.g. "bf16".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_dtype: Option<String>,
    /// What is trained when not every weight is, e.g. "LoRA rank 8 (alpha 16) on
    /// attn.c_attn".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<String>,
    /// A generation's KV cache bytes per token of one sequence: 2 (keys and values) ×
    /// layers × key/value heads × head width × the dtype's bytes. Arithmetic from the
    /// config, not a measurement (`None`: not a generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_bytes_per_token: Option<u64>,
    /// The tokens a generation's KV cache holds per sequence: prompt and new tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_tokens: Option<usize>,
}

impl ModelInfo {
    /// The weights' bytes: the parameter count times the dtype's size (`None` when the
    /// parameters or the dtype are unknown). Arithmetic, not a measurement.
    pub fn weight_bytes(&self) -> Option<u64> {
        let dtype = self.dtype.parse::<DType>().ok()?;
        (self.parameters > 0).then(|| self.parameters * dtype.size_in_bytes() as u64)
    }

    /// The trained weights' bytes (all of them, or LoRA's adapters), in the dtype the
    /// weights are kept in: what their gradients take, and each copy of optimizer state.
    /// Arithmetic, not a measurement.
    pub fn trained_bytes(&self) -> Option<u64> {
        let dtype = self.dtype.parse::<DType>().ok()?;
        let trained = self.trainable_parameters.unwrap_or(self.parameters);
        (self.parameters > 0).then(|| trained * dtype.size_in_bytes() as u64)
    }
}
