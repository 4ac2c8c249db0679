//! Pieces the built-in models share: synthetic batches, the f32 loss, the output head,
//! the causal mask.

use candle_core::{DType, Device, Result, Tensor};

use super::{lora, Batch};

/// Random class ids in `0..classes` of the given shape.
pub(crate) fn random_ids(
    classes: usize,
    shape: impl Into<candle_core::Shape>,
    device: &Device,
) -> Result<Tensor> {
    // Uniform in [0, classes) then truncated: every id is a valid class.
    let ids = Tensor::rand(0f32, classes as f32, shape, device)?;
    ids.clamp(0f32, (classes - 1) as f32)?.to_dtype(DType::U32)
}

/// A batch of `batch_size` sequences of `seq_len` random token ids, and random next-token
/// targets.
pub(crate) fn token_batch(
    vocab: usize,
    batch_size: usize,
    seq_len: usize,
    device: &Device,
) -> Result<Batch> {
    let shape = (batch_size, seq_len);
    Ok(Batch {
        inputs: random_ids(vocab, shape, device)?,
        targets: random_ids(vocab, shape, device)?,
    })
}

/// Cross-entropy of `logits` `[..., classes]` against `targets` `[...]`, computed in f32
/// whatever the model's dtype (as mixed-precision training computes its loss).
pub(crate) fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let classes = logits.dim(candle_core::D::Minus1)?;
    let logits = logits.reshape(((), classes))?.to_dtype(DType::F32)?;
    candle_nn::loss::cross_entropy(&logits, &targets.flatten_all()?)
}

/// The logits `xs Wᵀ` of an output head whose weight `[vocab, hidden]` is trained (candle's
/// `broadcast_matmul`, which folds the batch into one 2-D matmul as candle-nn's `Linear`
/// does), or frozen under LoRA (see [`lora::matmul_frozen_t`]).
pub(crate) fn head_logits(xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if weight.track_op() {
        xs.broadcast_matmul(&weight.t()?)
    } else {
        lora::matmul_frozen_t(xs, weight)
    }
}

/// `[T, T]` (f32): 0 where a token may attend (itself and earlier), −∞ elsewhere.
pub(crate) fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    causal_mask_after(t, 0, device)
}

/// `[T, offset + T]` (f32) for `t` tokens after `offset` cached ones: 0 where the token at
/// position `offset + i` may attend (itself and earlier), −∞ elsewhere.
pub(crate) fn causal_mask_after(t: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let len = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..len).map(move |j| {
                if j <= offset + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, len), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_lets_each_token_see_itself_and_the_past() {
        let mask = causal_mask(3, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(
            mask,
            vec![
                vec![0.0, inf, inf],
                vec![0.0, 0.0, inf],
                vec![0.0, 0.0, 0.0]
            ]
        );
    }
}
