//! A small real training program that asks maxbatch for its batch size first.
//!
//! It builds its own candle model (an MLP classifier) and data (20,000 samples whose
//! labels come from a hidden linear "teacher"), hands its training step to
//! `Finder::find`, takes the recommended batch size, and trains 300 steps with it,
//! printing the loss as it falls.
//!
//!     cargo run --release --example preflight

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use maxbatch::Finder;

#[global_allocator]
static ALLOCATOR: maxbatch::CountingAllocator = maxbatch::CountingAllocator::new();

const SAMPLES: usize = 20_000;
const FEATURES: usize = 32;
const CLASSES: usize = 4;

struct Classifier {
    layers: Vec<Linear>,
}

impl Classifier {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let widths = [FEATURES, 256, 256, CLASSES];
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], vb.pp(format!("layer{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs)?;
            if i + 1 < self.layers.len() {
                xs = xs.relu()?;
            }
        }
        Ok(xs)
    }
}

/// Samples `[offset, offset + batch_size)` of the dataset, wrapping around.
fn batch(
    data: &(Tensor, Tensor),
    offset: usize,
    batch_size: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let indices: Vec<u32> = (0..batch_size)
        .map(|i| ((offset + i) % SAMPLES) as u32)
        .collect();
    let indices = Tensor::from_vec(indices, batch_size, data.0.device())?;
    Ok((
        data.0.index_select(&indices, 0)?,
        data.1.index_select(&indices, 0)?,
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    let features = Tensor::randn(0f32, 1.0, (SAMPLES, FEATURES), &device)?;
    let teacher = Tensor::randn(0f32, 1.0, (FEATURES, CLASSES), &device)?;
    let labels = features
        .matmul(&teacher)?
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?;
    let data = (features, labels);

    let varmap = VarMap::new();
    let model = Classifier::new(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let mut optimizer = AdamW::new(varmap.all_vars(), ParamsAdamW::default())?;
    let mut offset = 0;
    let mut train_step = |batch_size: usize| -> candle_core::Result<f32> {
        let (xs, ys) = batch(&data, offset, batch_size)?;
        offset = (offset + batch_size) % SAMPLES;
        let loss = candle_nn::loss::cross_entropy(&model.forward(&xs)?, &ys)?;
        optimizer.backward_step(&loss)?;
        loss.to_scalar::<f32>()
    };

    // The pre-flight check: the largest batch this step trains at within 64 MiB.
    let report = Finder::on(&device)
        .budget(64 << 20)
        .dataset_size(SAMPLES as u64)
        .find(&mut |b| train_step(b).map(|_| ()))?;
    let batch_size = report
        .sizes
        .recommended
        .ok_or("no batch size leaves the 5% margin free")?;
    println!(
        "maxbatch: max {} (ran {} trials), recommended {batch_size}",
        report.sizes.max,
        report.trials.len()
    );

    for step in 0..=300 {
        let loss = train_step(batch_size)?;
        if step % 50 == 0 {
            println!("step {step:>3}  batch {batch_size}  loss {loss:.4}");
        }
    }
    Ok(())
}
