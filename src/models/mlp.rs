//! `mlp`: a multi-layer perceptron on flat features with ReLU, for quick trials.
//!
//! Shapes: input `[B, inputs]` → `hidden` layers of `width` → `[B, classes]` logits,
//! cross-entropy loss against random class ids.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::{cross_entropy, random_ids, Batch, Model};
use crate::memory::parts::mark;
use crate::memory::stop::stop_point;

/// The shape of an MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpConfig {
    /// Features per sample.
    pub inputs: usize,
    /// Width of each hidden layer.
    pub width: usize,
    /// Number of hidden layers.
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
}

impl MlpConfig {
    /// The `mlp` preset: 784 features (a flattened 28×28 image), 3 hidden layers of 1024,
    /// 10 classes.
    pub const DEFAULT: MlpConfig = MlpConfig {
        inputs: 784,
        width: 1024,
        hidden: 3,
        classes: 10,
    };

    /// Trainable parameters (weights and biases of every layer), from the shape alone.
    pub fn parameter_count(&self) -> u64 {
        let widths = self.widths();
        widths.windows(2).map(|w| (w[0] * w[1] + w[1]) as u64).sum()
    }

    /// One sample's input, in words.
    pub fn input(&self) -> String {
        format!("{} features", self.inputs)
    }

    /// One line on the architecture.
    pub fn summary(&self) -> String {
        format!(
            "MLP {}→{}×{}→{}, ReLU",
            self.inputs, self.width, self.hidden, self.classes
        )
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths = vec![self.inputs];
        widths.extend(std::iter::repeat_n(self.width, self.hidden));
        widths.push(self.classes);
        widths
    }
}

/// An MLP with random weights.
#[derive(Debug)]
pub struct Mlp {
    config: MlpConfig,
    layers: Vec<Linear>,
}

impl Mlp {
    /// Builds the layers under `vb` ("layer0", "layer1", …).
    pub fn new(config: MlpConfig, vb: VarBuilder) -> Result<Self> {
        let widths = config.widths();
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], vb.pp(format!("layer{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, layers })
    }
}

impl Model for Mlp {
    fn batch(&self, batch_size: usize, device: &Device) -> Result<Batch> {
        Ok(Batch {
            inputs: Tensor::randn(0f32, 1.0, (batch_size, self.config.inputs), device)?
                .to_dtype(self.layers[0].weight().dtype())?,
            targets: random_ids(self.config.classes, batch_size, device)?,
        })
    }

    fn loss(&self, batch: &Batch) -> Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut xs = batch.inputs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            // The bias goes through a stop point (a weight would be a large copy).
            let bias = layer.bias().map(stop_point).transpose()?;
            xs = Linear::new(layer.weight().clone(), bias).forward(&xs)?;
            if i < last {
                xs = xs.relu()?;
            }
            if i + 1 == last {
                mark("hidden layers");
            }
        }
        let loss = cross_entropy(&xs, &batch.targets)?;
        mark("logits and loss");
        Ok(loss)
    }
}
