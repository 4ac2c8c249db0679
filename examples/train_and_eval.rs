//! A training loop that evaluates as it goes, as a candle user writes it, asking maxbatch
//! for both of its batch sizes: the training batch first, then the largest evaluation batch
//! while the training state is held (the weights, AdamW's moments after a step), measured
//! with an evaluation closure (`maxbatch::evaluation`, `StepMode::EVAL`). The evaluation
//! model reads the same weights detached, so it keeps no autograd graph. Then it trains at
//! the recommended size and prints the training and evaluation losses.
//!
//!     cargo run --release --example train_and_eval

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use maxbatch::{evaluation, phased, Finder, OptimizerKind, StepMode};

#[global_allocator]
static ALLOCATOR: maxbatch::CountingAllocator = maxbatch::CountingAllocator::new();

const FEATURES: usize = 256;
const CLASSES: usize = 10;
const BUDGET: u64 = 96 << 20;

/// A classifier: 256 → 1024 → 1024 → 10.
struct Classifier {
    layers: Vec<Linear>,
}

impl Classifier {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let widths = [FEATURES, 1024, 1024, CLASSES];
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], vb.pp(format!("layer{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }

    fn loss(&self, xs: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
        let mut out = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            out = layer.forward(&out)?;
            if i + 1 < self.layers.len() {
                out = out.relu()?;
            }
        }
        candle_nn::loss::cross_entropy(&out, labels)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    // Fresh samples labelled by a hidden linear teacher: the task the loop learns.
    let teacher = Tensor::randn(0f32, 1.0, (FEATURES, CLASSES), &device)?;
    let batch = |size: usize| -> candle_core::Result<(Tensor, Tensor)> {
        let xs = Tensor::randn(0f32, 1.0, (size, FEATURES), &device)?;
        let labels = xs.matmul(&teacher)?.argmax(1)?;
        Ok((xs, labels))
    };

    let varmap = VarMap::new();
    let model = Classifier::new(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    // The evaluation model: the same weights, detached (no copy), so nothing it computes is
    // tracked and each activation is freed once the next layer no longer needs it.
    let detached: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| "the VarMap's lock is poisoned")?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_detached_tensor()))
        .collect();
    let eval_model = Classifier::new(VarBuilder::from_tensors(detached, DType::F32, &device))?;
    let params = ParamsAdamW::default();

    // 1. The training batch.
    let mut optimizer = AdamW::new(varmap.all_vars(), params.clone())?;
    let training = Finder::on(&device)
        .budget(BUDGET)
        .varmap(&varmap)
        .optimizer(OptimizerKind::AdamW)
        .find(&mut phased(|batch_size, phases| {
            let (x, y) = batch(batch_size)?;
            let loss = model.loss(&x, &y)?;
            phases.after_forward()?;
            optimizer.backward_step(&loss)
        }))?;
    let train_batch = training.sizes.recommended.unwrap_or(training.sizes.max);

    // 2. The evaluation batch, with the training loop's state held: a fresh optimizer that
    // has taken one step at the training size, as it has between two steps of the loop.
    let mut optimizer = AdamW::new(varmap.all_vars(), params)?;
    let (x, y) = batch(train_batch)?;
    optimizer.backward_step(&model.loss(&x, &y)?)?;
    let evaluating = Finder::on(&device)
        .budget(BUDGET)
        .mode(StepMode::Eval {
            beside_training: Some(train_batch),
        })
        .find(&mut evaluation(|batch_size| {
            let (x, y) = batch(batch_size)?;
            eval_model.loss(&x, &y)?.to_scalar::<f32>().map(|_| ())
        }))?;
    let eval_batch = evaluating.sizes.recommended.unwrap_or(evaluating.sizes.max);
    println!(
        "maxbatch: train at {train_batch} (max {}), evaluate at {eval_batch} (max {}) within {} MiB",
        training.sizes.max,
        evaluating.sizes.max,
        BUDGET >> 20
    );

    // 3. The loop, at both sizes.
    for step in 0..=60 {
        let (x, y) = batch(train_batch)?;
        let loss = model.loss(&x, &y)?;
        optimizer.backward_step(&loss)?;
        if step % 20 == 0 {
            let (x, y) = batch(eval_batch)?;
            println!(
                "step {step:>3}  train loss {:.4} (batch {train_batch})  eval loss {:.4} (batch {eval_batch})",
                loss.to_scalar::<f32>()?,
                eval_model.loss(&x, &y)?.to_scalar::<f32>()?
            );
        }
    }
    Ok(())
}
