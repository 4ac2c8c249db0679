//! Hugging Face `config.json` files: the architecture's shapes, for a model built with
//! random weights (nothing is downloaded, no weights are read).
//!
//! `model_type` "llama", "mistral" and "qwen2" give a [`LlamaConfig`]; "gpt2" a
//! [`GptConfig`]. A missing required field, an unknown `model_type` or a file that is not
//! JSON is an error naming the file and the problem.

use std::path::Path;

use serde_json::Value;

use super::llama::LlamaConfig;
use super::transformer::GptConfig;
use super::{Architecture, ModelSpec};
use crate::error::Error;

/// The model `path` describes.
pub fn load(path: &Path) -> Result<ModelSpec, Error> {
    let fail = |problem: String| Error::Config {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| fail(format!("is not JSON: {e}")))?;
    let architecture = parse(&json).map_err(fail)?;
    Ok(ModelSpec {
        name: model_name(path),
        architecture,
    })
}

/// The name a config file gives its model: the folder's name for a `config.json` (as
/// Hugging Face lays out a model), else the file's stem.
fn model_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("config");
    match path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|s| s.to_str())
    {
        Some(folder) if stem == "config" => folder.to_string(),
        _ => stem.to_string(),
    }
}

/// The architecture a parsed `config.json` describes.
pub fn parse(json: &Value) -> Result<Architecture, String> {
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or("has no \"model_type\" (expected llama, mistral, qwen2 or gpt2)")?;
    let fields = Fields(json);
    match model_type {
        "llama" | "mistral" | "qwen2" => {
            let hidden = fields.required("hidden_size")?;
            let heads = fields.required("num_attention_heads")?;
            if heads == 0 || hidden % heads != 0 && fields.optional("head_dim")?.is_none() {
                return Err(format!(
                    "hidden_size {hidden} is not a multiple of num_attention_heads {heads}; give head_dim"
                ));
            }
            let default_positions = if model_type == "llama" { 2048 } else { 32_768 };
            let config = LlamaConfig {
                vocab: fields.required("vocab_size")?,
                hidden,
                layers: fields.required("num_hidden_layers")?,
                heads,
                kv_heads: fields.optional("num_key_value_heads")?.unwrap_or(heads),
                head_dim: fields.optional("head_dim")?.unwrap_or(hidden / heads),
                intermediate: fields.required("intermediate_size")?,
                max_positions: fields
                    .optional("max_position_embeddings")?
                    .unwrap_or(default_positions),
                rope_theta: fields.float("rope_theta")?.unwrap_or(10_000.0),
                rms_norm_eps: fields.float("rms_norm_eps")?.unwrap_or(1e-6),
                tie_embeddings: fields.flag("tie_word_embeddings")?.unwrap_or(false),
                qkv_bias: model_type == "qwen2"
                    || fields.flag("attention_bias")?.unwrap_or(false),
            };
            if config.kv_heads == 0 || config.heads % config.kv_heads != 0 {
                return Err(format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    config.heads, config.kv_heads
                ));
            }
            Ok(Architecture::Llama(config, model_type.to_string()))
        }
        "gpt2" => {
            let width = fields.required("n_embd")?;
            let heads = fields.required("n_head")?;
            if heads == 0 || width % heads != 0 {
                return Err(format!("n_embd {width} is not a multiple of n_head {heads}"));
            }
            let context = match fields.optional("n_positions")? {
                Some(n) => n,
                None => fields.required("n_ctx")?,
            };
            Ok(Architecture::Gpt(GptConfig {
                vocab: fields.required("vocab_size")?,
                context,
                width,
                layers: fields.required("n_layer")?,
                heads,
                ffn: fields.optional("n_inner")?.unwrap_or(4 * width),
            }))
        }
        other => Err(format!(
            "has model_type {other:?}, which maxbatch cannot build; use llama, mistral, qwen2 or gpt2"
        )),
    }
}

struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn optional(&self, name: &str) -> Result<Option<usize>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("has {name} = {v}, not a whole number")),
        }
    }

    fn required(&self, name: &str) -> Result<usize, String> {
        self.optional(name)?
            .ok_or_else(|| format!("has no {name:?}, which this model_type needs"))
    }

    fn float(&self, name: &str) -> Result<Option<f64>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("has {name} = {v}, not a number")),
        }
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| format!("has {name} = {v}, not true or false")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_fields_and_unknown_types_are_named() {
        let err = parse(&json!({"model_type": "llama", "hidden_size": 8})).unwrap_err();
        assert!(err.contains("num_attention_heads"), "{err}");
        let err = parse(&json!({"model_type": "bert"})).unwrap_err();
        assert!(err.contains("\"bert\""), "{err}");
        let err = parse(&json!({"hidden_size": 8})).unwrap_err();
        assert!(err.contains("model_type"), "{err}");
        let err = parse(&json!({"model_type": "gpt2", "n_embd": "wide"})).unwrap_err();
        assert!(err.contains("n_embd"), "{err}");
    }

    #[test]
    fn defaults_follow_hugging_face() {
        let arch = parse(&json!({
            "model_type": "qwen2", "vocab_size": 100, "hidden_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 32
        }))
        .unwrap();
        let Architecture::Llama(c, family) = arch else {
            panic!("not a llama-family model")
        };
        assert_eq!(family, "qwen2");
        assert_eq!((c.kv_heads, c.head_dim), (4, 4));
        assert!(c.qkv_bias && !c.tie_embeddings);
        assert_eq!(c.rope_theta, 10_000.0);
    }

    #[test]
    fn the_name_is_the_folder_of_a_config_json() {
        assert_eq!(
            model_name(Path::new("models/SmolLM2-135M/config.json")),
            "SmolLM2-135M"
        );
        assert_eq!(
            model_name(Path::new("fixtures/qwen2-0.5b.json")),
            "qwen2-0.5b"
        );
    }
}
