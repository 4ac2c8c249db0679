//! A training program as a candle user writes it (a model in a `VarMap`, AdamW,
//! `opt.backward_step(&loss)`, its own dataset in memory, mimalloc as the allocator) that asks
//! maxbatch for its batch size first, in one `Finder` chain: the model read from its VarMap,
//! an over-budget trial stopped after its forward pass, the weights left as they were. Then
//! it trains at the recommended size and prints the loss falling.
//!
//!     cargo run --release --example finetune

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use maxbatch::{phased, Finder, OptimizerKind};
use mimalloc::MiMalloc;

// maxbatch counts the heap around whichever allocator the program uses.
#[global_allocator]
static ALLOCATOR: maxbatch::CountingAllocator<MiMalloc> =
    maxbatch::CountingAllocator::wrapping(MiMalloc);

const SAMPLES: usize = 8_192;
const FEATURES: usize = 64;

/// A regression MLP: 64 → 512 → 512 → 1.
struct Model {
    layers: Vec<Linear>,
}

impl Model {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let widths = [FEATURES, 512, 512, 1];
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], vb.pp(format!("layer{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }

    fn loss(&self, xs: &Tensor, ys: &Tensor) -> candle_core::Result<Tensor> {
        let mut out = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            out = layer.forward(&out)?;
            if i + 1 < self.layers.len() {
                out = out.relu()?;
            }
        }
        candle_nn::loss::mse(&out, ys)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    // The dataset, in memory: targets from a hidden linear teacher.
    let xs = Tensor::randn(0f32, 1.0, (SAMPLES, FEATURES), &device)?;
    let teacher = Tensor::randn(0f32, 0.2, (FEATURES, 1), &device)?;
    let ys = xs.matmul(&teacher)?;
    let batch = |offset: usize, size: usize| -> candle_core::Result<(Tensor, Tensor)> {
        let start = offset % (SAMPLES - size.min(SAMPLES) + 1);
        let size = size.min(SAMPLES);
        Ok((xs.narrow(0, start, size)?, ys.narrow(0, start, size)?))
    };

    let varmap = VarMap::new();
    let model = Model::new(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let params = ParamsAdamW {
        lr: 1e-3,
        ..Default::default()
    };
    let evaluate = || -> candle_core::Result<f32> { model.loss(&xs, &ys)?.to_scalar::<f32>() };
    let before = evaluate()?;

    let mut optimizer = AdamW::new(varmap.all_vars(), params.clone())?;
    let report = Finder::on(&device)
        .budget(48 << 20) // the CPU budget for the model and each trial
        .varmap(&varmap)
        .optimizer(OptimizerKind::AdamW)
        .dataset_size(SAMPLES as u64)
        .epochs(10)
        .progress_to_stderr()
        .find(&mut phased(|batch_size, phases| {
            let (x, y) = batch(0, batch_size)?;
            let loss = model.loss(&x, &y)?;
            phases.after_forward()?; // an over-budget trial stops here
            optimizer.backward_step(&loss)
        }))?;
    let batch_size = report
        .sizes
        .recommended
        .ok_or("no batch size leaves the 5% margin free")?;
    println!(
        "maxbatch: {} ({} parameters), max {} in {} trials, recommended {batch_size}",
        report.model.name,
        report.model.parameters,
        report.sizes.max,
        report.trials.len()
    );
    // The trials trained the weights; maxbatch put them back.
    println!(
        "evaluation loss before the search {before:.6}, after {:.6}",
        evaluate()?
    );

    // The optimizer's moments saw the trials: start training with a fresh one.
    let mut optimizer = AdamW::new(varmap.all_vars(), params)?;
    for step in 0..=200 {
        let (x, y) = batch(step * batch_size, batch_size)?;
        let loss = model.loss(&x, &y)?;
        optimizer.backward_step(&loss)?;
        if step % 40 == 0 {
            println!(
                "step {step:>3}  batch {batch_size}  loss {:.5}",
                loss.to_scalar::<f32>()?
            );
        }
    }
    Ok(())
}
