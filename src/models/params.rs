//! Where a built-in model's tensors live: [`ParamStore`], the `VarBuilder` backend of every
//! built-in workload.
//!
//! It decides, by name, which tensors are trained (candle `Var`s in a `VarMap`, which the
//! optimizer holds state for) and which are frozen (plain tensors: no gradient, no optimizer
//! state), and in which dtype each is kept and handed out:
//!
//! - plain training: every tensor is a variable, kept and computed in `--dtype`;
//! - mixed precision (`--amp`): variables are kept in f32 (the master weights) and handed
//!   out cast to the half dtype, so the cast copies are graph nodes that the backward pass
//!   turns into f32 gradients, and that the trial's peak counts;
//! - LoRA (`--lora-rank`): only the adapters (names ending in `lora_A`/`lora_B`) are
//!   variables; every other weight is frozen.
//! - evaluation and generation on their own (`--mode eval`, `--mode generate`): nothing is
//!   a variable, so nothing the model computes is tracked;
//! - evaluation beside training: the training store's [`detached`](ParamStore::detached)
//!   view hands out its variables as plain tensors sharing their storage (no copy).
//!
//! See docs/design.md, "Training modes".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarMap};

/// The tensors of one built-in model (see the module's docs).
#[derive(Clone)]
pub struct ParamStore {
    trainable: VarMap,
    frozen: Arc<Mutex<HashMap<String, Tensor>>>,
    storage: DType,
    trains: Trains,
    detached: bool,
}

/// Which of a model's tensors a [`ParamStore`] makes trained variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trains {
    /// Every tensor (plain training, mixed precision).
    All,
    /// LoRA's adapters only.
    Adapters,
    /// None (evaluation and generation on their own).
    Nothing,
}

impl ParamStore {
    /// A store keeping every tensor in `storage`, training what `trains` says.
    pub fn new(storage: DType, trains: Trains) -> Self {
        Self {
            trainable: VarMap::new(),
            frozen: Arc::default(),
            storage,
            trains,
            detached: false,
        }
    }

    /// The same tensors, with the trained variables handed out detached: plain tensors on
    /// the same storage, which nothing the model computes from them tracks (an evaluation
    /// beside training builds its model from this view).
    pub fn detached(&self) -> Self {
        Self {
            detached: true,
            ..self.clone()
        }
    }

    /// The trained variables (what the optimizer updates).
    pub fn trainable(&self) -> &VarMap {
        &self.trainable
    }

    /// The frozen tensors and their names, sorted by name.
    pub fn frozen(&self) -> Vec<(String, Tensor)> {
        let mut frozen: Vec<(String, Tensor)> = self
            .frozen_map()
            .iter()
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        frozen.sort_by(|a, b| a.0.cmp(&b.0));
        frozen
    }

    fn frozen_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tensor>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is intact.
        self.frozen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_trained(&self, name: &str) -> bool {
        match self.trains {
            Trains::All => true,
            Trains::Adapters => super::lora::is_adapter(name),
            Trains::Nothing => false,
        }
    }

    fn stored(&self, shape: Shape, name: &str, init: Init, device: &Device) -> Result<Tensor> {
        if self.is_trained(name) {
            let tensor = self
                .trainable
                .get(shape, name, init, self.storage, device)?;
            return Ok(if self.detached {
                tensor.detach()
            } else {
                tensor
            });
        }
        let mut frozen = self.frozen_map();
        if let Some(tensor) = frozen.get(name) {
            if tensor.shape() != &shape {
                candle_core::bail!(
                    "shape mismatch on {name}: {shape:?} <> {:?}",
                    tensor.shape()
                )
            }
            return Ok(tensor.clone());
        }
        let tensor = init.var(shape, self.storage, device)?.as_detached_tensor();
        frozen.insert(name.to_string(), tensor.clone());
        Ok(tensor)
    }
}

impl SimpleBackend for ParamStore {
    /// The tensor called `name`, created on first use, in `dtype`: a cast of the stored
    /// tensor when the model computes in another dtype than it is kept in (`--amp`).
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        self.stored(shape, name, init, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("{name}: a built-in model's tensors need a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.trainable
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
            || self.frozen_map().contains_key(name)
    }
}
