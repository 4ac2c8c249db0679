//! A frozen (untracked) norm scale, norm shift or bias, applied so that candle's backward
//! pass keeps nothing for it.
//!
//! candle's backward pass computes a gradient for every input of a tracked op and keeps the
//! ones no variable consumes until the pass ends. `xs.broadcast_mul(&weight)` with a frozen
//! `weight` is such an op: the weight's broadcast over the batch gets a gradient of the
//! output's shape (with its product, zeros and sum: four tensors) that nothing frees, so a
//! LoRA step held, per sample, four of a norm's outputs for every frozen norm (SmolLM2-135M
//! at 128 tokens: 67.5 MiB per sample, more than the adapters saved at large batch sizes).
//! [`scale`] and [`shift`] are one custom op whose backward pass gives `xs` its gradient
//! and the frozen tensor none, as PyTorch does for a tensor that does not require one; the
//! op is also a stop point ([`crate::memory::stop`]), since a frozen norm's stop point is
//! never reached (see docs/design.md, "Training modes").

use candle_core::backend::BackendStorage;
use candle_core::op::{Add, Mul};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, D};

use crate::memory::stop::{check, stop_point};

/// LayerNorm over the last dimension: candle-nn's `layer_norm_slow` (with a stop point on
/// the scale) for a trained scale, the same arithmetic with [`scale`] and [`shift`] for a
/// frozen one.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    if weight.track_op() {
        return candle_nn::ops::layer_norm_slow(xs, &stop_point(weight)?, bias, eps);
    }
    let (x, dtype, width) = internal(xs)?;
    let x = x.broadcast_sub(&(x.sum_keepdim(D::Minus1)? / width)?)?;
    let normed = normalise(&x, width, eps)?.to_dtype(dtype)?;
    shift(&scale(&normed, weight)?, bias)
}

/// RMSNorm over the last dimension: candle-nn's `rms_norm_slow` (with a stop point on the
/// scale) for a trained scale, the same arithmetic with [`scale`] for a frozen one.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    if weight.track_op() {
        return candle_nn::ops::rms_norm_slow(xs, &stop_point(weight)?, eps);
    }
    let (x, dtype, width) = internal(xs)?;
    scale(&normalise(&x, width, eps)?.to_dtype(dtype)?, weight)
}

/// `xs` in the dtype candle-nn's slow norms compute in (f32 for a half dtype), its dtype and
/// its last dimension's size.
fn internal(xs: &Tensor) -> Result<(Tensor, DType, f64)> {
    let dtype = xs.dtype();
    let compute = match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    Ok((xs.to_dtype(compute)?, dtype, xs.dim(D::Minus1)? as f64))
}

/// `x / sqrt(mean(x²) + eps)` over the last dimension.
fn normalise(x: &Tensor, width: f64, eps: f32) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? / width)?;
    x.broadcast_div(&(norm + eps as f64)?.sqrt()?)
}

/// `xs × weight` over the last dimension; for a frozen `weight`, with no gradient for it.
pub fn scale(xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    match weight.track_op() {
        true => xs.broadcast_mul(weight),
        false => xs.apply_op1(Frozen::new(weight, Kind::Scale)?),
    }
}

/// `xs + bias` over the last dimension; for a frozen `bias`, with no gradient for it.
pub fn shift(xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
    match bias.track_op() {
        true => xs.broadcast_add(bias),
        false => xs.apply_op1(Frozen::new(bias, Kind::Shift)?),
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Scale,
    Shift,
}

/// The op behind [`scale`] and [`shift`]: the frozen 1-D tensor is held by the op, not an
/// input of it, so the backward pass has no input to give a gradient to but `xs`.
struct Frozen {
    weight: Tensor,
    kind: Kind,
}

impl Frozen {
    fn new(weight: &Tensor, kind: Kind) -> Result<Self> {
        weight.dims1()?;
        Ok(Self {
            weight: weight.clone(),
            kind,
        })
    }

    /// The forward step on one backend's storages.
    fn apply<S: BackendStorage>(
        &self,
        xs: &S,
        layout: &Layout,
        weight: &S,
        weight_layout: &Layout,
    ) -> Result<(S, Shape)> {
        check(true)?;
        let broadcast = weight_layout.broadcast_as(layout.shape())?;
        let out = match self.kind {
            Kind::Scale => xs.binary_impl::<Mul>(weight, layout, &broadcast)?,
            Kind::Shift => xs.binary_impl::<Add>(weight, layout, &broadcast)?,
        };
        Ok((out, layout.shape().clone()))
    }
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Scale => "frozen-scale",
            Kind::Shift => "frozen-shift",
        }
    }

    fn cpu_fwd(&self, xs: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (storage, weight_layout) = self.weight.storage_and_layout();
        match &*storage {
            Storage::Cpu(weight) => self.apply(xs, layout, weight, weight_layout),
            _ => candle_core::bail!("a frozen weight on another device than its input"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (storage, weight_layout) = self.weight.storage_and_layout();
        match &*storage {
            Storage::Cuda(weight) => self.apply(xs, layout, weight, weight_layout),
            _ => candle_core::bail!("a frozen weight on another device than its input"),
        }
    }

    fn bwd(&self, _xs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        check(false)?;
        Ok(Some(match self.kind {
            Kind::Scale => grad.broadcast_mul(&self.weight)?,
            Kind::Shift => grad.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The frozen ops compute what candle-nn's norms and plain broadcasts compute, forward
    /// and backward (the input's gradient), and leave no gradient for the frozen tensors.
    #[test]
    fn frozen_norms_match_candles_and_give_the_weights_no_gradient() {
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..2 * 3 * 8)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let xs = Var::from_vec(values, (2, 3, 8), &dev).unwrap();
        let weight = Tensor::arange(1f32, 9., &dev).unwrap();
        let bias = (Tensor::arange(0f32, 8., &dev).unwrap() * 0.5).unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            diff.to_scalar::<f32>().unwrap() < 1e-5
        };
        let pairs = [
            (
                layer_norm(&xs, &weight, &bias, 1e-5).unwrap(),
                candle_nn::ops::layer_norm_slow(&xs, &weight, &bias, 1e-5).unwrap(),
            ),
            (
                rms_norm(&xs, &weight, 1e-5).unwrap(),
                candle_nn::ops::rms_norm_slow(&xs, &weight, 1e-5).unwrap(),
            ),
            (
                shift(&scale(&xs, &weight).unwrap(), &bias).unwrap(),
                xs.broadcast_mul(&weight)
                    .unwrap()
                    .broadcast_add(&bias)
                    .unwrap(),
            ),
        ];
        for (frozen, plain) in pairs {
            assert!(close(&frozen, &plain));
            // Weight the outputs so that the gradients differ from a plain sum's.
            let w = Tensor::arange(0f32, 48., &dev)
                .unwrap()
                .reshape((2, 3, 8))
                .unwrap();
            let grads = (frozen * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let reference = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(close(grads.get(&xs).unwrap(), reference.get(&xs).unwrap()));
            // Nothing is kept for the frozen tensors: the plain broadcasts leave a gradient
            // for each broadcast weight that the frozen ops do not.
            assert!(grads.get(&weight).is_none() && grads.get(&bias).is_none());
            assert!(
                grads.get_ids().count() < reference.get_ids().count(),
                "{} gradients kept against {}",
                grads.get_ids().count(),
                reference.get_ids().count()
            );
        }
    }
}
