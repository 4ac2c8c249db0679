//! Generation with a KV cache, as a server batches sequences: the decoders' shared loop
//! ([`generate`]), the cache ([`LayerCache`]) and the mask of a cached step.
//!
//! The cache of every layer is allocated whole before the prefill, `[B, kv_heads,
//! prompt + new tokens, head_dim]` for the keys and again for the values (as vLLM and
//! candle-nn's `KvCache` reserve a sequence's cache up front), and marked as the part `kv
//! cache`, so a CPU trial measures its bytes apart from everything else. See
//! docs/design.md, "Beyond training".

use candle_core::{DType, Device, Result, Tensor, D};

use super::random_ids;
use crate::memory::parts::mark;

/// The part a generation's KV cache is marked as: a CPU trial counts its bytes apart.
pub const KV_CACHE_PART: &str = "kv cache";

/// One layer's keys and values for every sequence of a batch, allocated for the whole
/// generation, filled as it goes.
pub struct LayerCache {
    keys: Tensor,
    values: Tensor,
    len: usize,
}

impl LayerCache {
    /// An empty cache for `batch` sequences of up to `tokens` tokens of `kv_heads` heads of
    /// width `head_dim`.
    pub fn new(
        batch: usize,
        kv_heads: usize,
        tokens: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (batch, kv_heads, tokens, head_dim);
        Ok(Self {
            keys: Tensor::zeros(shape, dtype, device)?,
            values: Tensor::zeros(shape, dtype, device)?,
            len: 0,
        })
    }

    /// Tokens cached so far: the position of the next one.
    pub fn cached(&self) -> usize {
        self.len
    }

    /// Writes the new tokens' keys and values `[B, kv_heads, t, head_dim]` after the ones
    /// cached, and returns every cached token's (views of the cache, not copies).
    pub fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = keys.dim(2)?;
        let room = self.keys.dim(2)?;
        if self.len + t > room {
            candle_core::bail!(
                "the KV cache holds {room} tokens; {} do not fit",
                self.len + t
            );
        }
        self.keys.slice_set(keys, 2, self.len)?;
        self.values.slice_set(values, 2, self.len)?;
        self.len += t;
        Ok((
            self.keys.narrow(2, 0, self.len)?,
            self.values.narrow(2, 0, self.len)?,
        ))
    }
}

/// `[t, offset + t]` (f32): 0 where the token at position `offset + i` may attend (itself
/// and earlier), −∞ elsewhere; `None` for one token, which attends everything cached.
pub(crate) fn cached_mask(t: usize, offset: usize, device: &Device) -> Result<Option<Tensor>> {
    match t {
        1 => Ok(None),
        _ => super::layers::causal_mask_after(t, offset, device).map(Some),
    }
}

/// A decoder that can run a step on a KV cache.
pub trait Decoder {
    /// The vocabulary's size.
    fn vocab(&self) -> usize;

    /// The dtype the passes compute in (and the cache is kept in).
    fn dtype(&self) -> DType;

    /// Layers, key/value heads and head width: the cache's shape.
    fn cache_shape(&self) -> (usize, usize, usize);

    /// The logits `[B, vocab]` of the last of `tokens` `[B, t]`, which sit at positions
    /// `caches[_].cached()..+t`, after writing their keys and values to `caches`.
    fn forward_cached(&self, tokens: &Tensor, caches: &mut [LayerCache]) -> Result<Tensor>;
}

/// Generates for `batch` sequences: a random `prompt_len`-token prompt each, prefilled in
/// one pass (`after_prefill` is called then: the trial's prefill boundary), then
/// `new_tokens` greedy decode steps of one token each. The caches are sized for `prompt_len
/// + new_tokens` tokens in the model's dtype.
pub fn generate(
    model: &dyn Decoder,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    device: &Device,
    after_prefill: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let (layers, kv_heads, head_dim) = model.cache_shape();
    let dtype = model.dtype();
    let prompt = random_ids(model.vocab(), (batch, prompt_len), device)?;
    mark("inputs");
    let mut caches = (0..layers)
        .map(|_| {
            LayerCache::new(
                batch,
                kv_heads,
                prompt_len + new_tokens,
                head_dim,
                dtype,
                device,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    mark(KV_CACHE_PART);
    let logits = model.forward_cached(&prompt, &mut caches)?;
    drop(prompt);
    let mut next = logits.argmax(D::Minus1)?.unsqueeze(1)?;
    drop(logits);
    after_prefill()?;
    for _ in 0..new_tokens {
        let logits = model.forward_cached(&next, &mut caches)?;
        next = logits.argmax(D::Minus1)?.unsqueeze(1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_step_sees_its_past_and_itself() {
        let mask = cached_mask(2, 3, &Device::Cpu)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(
            mask,
            vec![vec![0.0, 0.0, 0.0, 0.0, inf], vec![0.0; 5]],
            "positions 3 and 4 after 3 cached tokens"
        );
        assert!(cached_mask(1, 9, &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn the_cache_returns_everything_written_and_refuses_more_than_it_holds() {
        let dev = Device::Cpu;
        let mut cache = LayerCache::new(1, 1, 3, 2, DType::F32, &dev).unwrap();
        let first = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &dev).unwrap();
        let (k, _) = cache.append(&first, &first).unwrap();
        assert_eq!(k.dims(), &[1, 1, 2, 2]);
        let next = Tensor::new(&[[[[5f32, 6.]]]], &dev).unwrap();
        let (k, v) = cache.append(&next, &(&next * 2.0).unwrap()).unwrap();
        let keys: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(keys, [1., 2., 3., 4., 5., 6.]);
        let values: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(values[4..], [10., 12.]);
        assert_eq!(cache.cached(), 3);
        assert!(cache.append(&next, &next).is_err());
    }
}
