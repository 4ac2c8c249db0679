//! `cnn`: ResNet-18 for small images, CIFAR-style (one 3×3 stem convolution, no
//! max-pool), with BatchNorm, as in the widely used CIFAR-10 ResNet-18 (11,173,962
//! parameters for 10 classes).
//!
//! Shapes: images `[B, 3, S, S]` → four stages of two basic blocks (64, 128, 256, 512
//! channels; stride 2 from the second stage) → global average pool → `[B, classes]` logits,
//! cross-entropy against random labels. BatchNorm runs in training mode (batch statistics);
//! its running averages, a few KiB that no gradient touches, are not kept.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{conv2d_no_bias, linear, Conv2d, Conv2dConfig, Linear, VarBuilder};

use super::{cross_entropy, random_ids, Batch, Model};
use crate::memory::parts::mark;
use crate::memory::stop::stop_point;

/// The shape of a CIFAR-style ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Basic blocks per stage.
    pub blocks: [usize; 4],
    /// Output classes.
    pub classes: usize,
    /// Input image side in pixels (square, 3 channels).
    pub image_size: usize,
}

const WIDTHS: [usize; 4] = [64, 128, 256, 512];

impl ResNetConfig {
    /// `cnn`: ResNet-18 (2, 2, 2, 2 blocks), 10 classes, 32×32 images.
    pub const RESNET18: ResNetConfig = ResNetConfig {
        blocks: [2, 2, 2, 2],
        classes: 10,
        image_size: 32,
    };

    /// Trainable parameters, from the shape alone.
    pub fn parameter_count(&self) -> u64 {
        let conv = |cin: usize, cout: usize, k: usize| (cin * cout * k * k) as u64;
        let bn = |c: usize| 2 * c as u64;
        let mut total = conv(3, 64, 3) + bn(64);
        let mut cin = 64;
        for (stage, &width) in WIDTHS.iter().enumerate() {
            for block in 0..self.blocks[stage] {
                total += conv(cin, width, 3) + bn(width) + conv(width, width, 3) + bn(width);
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                if stride != 1 || cin != width {
                    total += conv(cin, width, 1) + bn(width);
                }
                cin = width;
            }
        }
        total + (512 * self.classes + self.classes) as u64
    }

    /// One line on the architecture.
    pub fn summary(&self) -> String {
        let depth = 2 + 2 * self.blocks.iter().sum::<usize>();
        format!(
            "ResNet-{depth} (CIFAR stem), BatchNorm, {} classes",
            self.classes
        )
    }
}

/// BatchNorm in training mode, from differentiable ops.
#[derive(Debug)]
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
}

impl BatchNorm {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let channels = xs.dim(1)?;
        let mean = xs.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
        let centered = xs.broadcast_sub(&mean)?;
        let variance = centered
            .sqr()?
            .mean_keepdim(0)?
            .mean_keepdim(2)?
            .mean_keepdim(3)?;
        let normed = centered.broadcast_div(&(variance + 1e-5)?.sqrt()?)?;
        let shape = (1, channels, 1, 1);
        normed
            .broadcast_mul(&stop_point(&self.weight)?.reshape(shape)?)?
            .broadcast_add(&self.bias.reshape(shape)?)
    }
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let config = Conv2dConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    conv2d_no_bias(cin, cout, k, config, vb)
}

#[derive(Debug)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some((
                conv(cin, cout, 1, stride, vb.pp("downsample.0"))?,
                BatchNorm::new(cout, vb.pp("downsample.1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv(cin, cout, 3, stride, vb.pp("conv1"))?,
            bn1: BatchNorm::new(cout, vb.pp("bn1"))?,
            conv2: conv(cout, cout, 3, 1, vb.pp("conv2"))?,
            bn2: BatchNorm::new(cout, vb.pp("bn2"))?,
            shortcut,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = self.bn1.forward(&self.conv1.forward(xs)?)?.relu()?;
        let ys = self.bn2.forward(&self.conv2.forward(&ys)?)?;
        let skip = match &self.shortcut {
            Some((conv, bn)) => bn.forward(&conv.forward(xs)?)?,
            None => xs.clone(),
        };
        (ys + skip)?.relu()
    }
}

/// A CIFAR-style ResNet with random weights.
#[derive(Debug)]
pub struct ResNet {
    config: ResNetConfig,
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<BasicBlock>,
    head: Linear,
}

impl ResNet {
    /// Builds the model under `vb` with torchvision's variable names.
    pub fn new(config: ResNetConfig, vb: VarBuilder) -> Result<Self> {
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (stage, &width) in WIDTHS.iter().enumerate() {
            for block in 0..config.blocks[stage] {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let name = format!("layer{}.{block}", stage + 1);
                blocks.push(BasicBlock::new(cin, width, stride, vb.pp(name))?);
                cin = width;
            }
        }
        Ok(Self {
            config,
            stem: conv(3, 64, 3, 1, vb.pp("conv1"))?,
            stem_bn: BatchNorm::new(64, vb.pp("bn1"))?,
            blocks,
            head: linear(512, config.classes, vb.pp("fc"))?,
        })
    }
}

impl Model for ResNet {
    fn batch(&self, batch_size: usize, device: &Device) -> Result<Batch> {
        let s = self.config.image_size;
        let dtype = self.head.weight().dtype();
        Ok(Batch {
            inputs: Tensor::randn(0f32, 1.0, (batch_size, 3, s, s), device)?.to_dtype(dtype)?,
            targets: random_ids(self.config.classes, batch_size, device)?,
        })
    }

    fn loss(&self, batch: &Batch) -> Result<Tensor> {
        let mut xs = self
            .stem_bn
            .forward(&self.stem.forward(&batch.inputs)?)?
            .relu()?;
        for block in &self.blocks {
            xs = block.forward(&xs)?;
        }
        mark("convolutions");
        let pooled = xs.mean(3)?.mean(2)?; // global average pool: [B, 512]
        let loss = cross_entropy(&self.head.forward(&pooled)?, &batch.targets)?;
        mark("logits and loss");
        Ok(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_has_the_published_cifar_parameter_count() {
        // kuangliu/pytorch-cifar ResNet18: 11,173,962 parameters.
        assert_eq!(ResNetConfig::RESNET18.parameter_count(), 11_173_962);
    }
}
