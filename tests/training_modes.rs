//! The training modes change how a step is built, and these tests check what each must
//! hold: mixed precision keeps f32 variables with f32 gradients and holds the half-dtype
//! casts until the backward pass; LoRA trains only its adapters (a gradient for each, none
//! for a frozen weight, optimizer state for adapters only). Memory is read from the
//! counting allocator, so the tests take one lock: no other test allocates meanwhile.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use maxbatch::models::lora::{is_adapter, LoraOptions};
use maxbatch::models::{ModelOptions, ModelSource, ModelSpec};
use maxbatch::{CountingAllocator, OptimizerKind, TrainStep, Workload};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::new();

static HEAP: Mutex<()> = Mutex::new(());

fn heap() -> std::sync::MutexGuard<'static, ()> {
    HEAP.lock().unwrap_or_else(|e| e.into_inner())
}

fn options() -> ModelOptions {
    ModelOptions {
        seq_len: Some(8),
        image_size: Some(8),
        ..ModelOptions::default()
    }
}

fn lora(rank: usize, targets: &[&str]) -> ModelOptions {
    ModelOptions {
        lora: Some(LoraOptions {
            rank,
            alpha: 16,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }),
        ..options()
    }
}

/// The families LoRA applies to: a GPT preset, a GPT-2 config and two Llama-family ones.
fn decoders() -> Vec<ModelSpec> {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut specs = vec![ModelSpec::preset("transformer-tiny").unwrap()];
    for file in ["tiny-qwen2.json", "tiny-llama.json", "tiny-gpt2.json"] {
        specs.push(ModelSpec::load(&ModelSource::Config(fixtures.join(file))).unwrap());
    }
    specs
}

fn magnitude(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn mixed_precision_trains_f32_variables_through_half_casts() {
    let _heap = heap();
    let specs = decoders()
        .into_iter()
        .chain(["mlp", "cnn"].map(|n| ModelSpec::preset(n).unwrap()));
    for spec in specs {
        let name = &spec.name;
        for half in [DType::BF16, DType::F16] {
            let amp = ModelOptions {
                amp: Some(half),
                ..options()
            };
            let mut workload =
                Workload::new(&spec, &amp, OptimizerKind::AdamW, &Device::Cpu).unwrap();
            let result = workload.step(2);
            if name == "cnn" && half == DType::BF16 {
                // candle's CPU convolution has no bf16 matmul: the same error as --dtype bf16.
                let err = result.expect_err("cnn in bf16 on the CPU");
                assert!(err.to_string().contains("unsupported dtype"), "{err}");
                continue;
            }
            result.unwrap_or_else(|e| panic!("{name} with --amp {half:?}: {e}"));
            let loss = workload.loss(2).unwrap();
            assert_eq!(loss.dtype(), DType::F32, "{name}: the loss is f32");
            let grads = loss.backward().unwrap();
            let data = workload.varmap().data().lock().unwrap();
            for (var_name, var) in data.iter() {
                assert_eq!(
                    var.dtype(),
                    DType::F32,
                    "{name}: {var_name} is a master weight"
                );
                let grad = grads
                    .get(var)
                    .unwrap_or_else(|| panic!("{name}: no gradient for {var_name}"));
                assert_eq!(grad.dtype(), DType::F32, "{name}: {var_name}");
                assert_eq!(grad.dims(), var.dims(), "{name}: {var_name}");
                let m = magnitude(grad);
                // f16's range overflows in the ResNet's normalisations at random weights,
                // as it does without --amp (candle has no loss scaling): the gradient is
                // there, its values are not meaningful, the memory is.
                if !(name == "cnn" && half == DType::F16) {
                    assert!(m.is_finite() && m > 0.0, "{name}: {var_name} gradient {m}");
                }
            }
        }
    }
}

#[test]
fn mixed_precision_holds_the_half_casts_of_every_weight_until_the_backward_pass() {
    let _heap = heap();
    let spec = ModelSpec::preset("mlp").unwrap();
    let loss_bytes = |options: &ModelOptions| {
        let workload = Workload::new(&spec, options, OptimizerKind::Sgd, &Device::Cpu).unwrap();
        let before = CountingAllocator::current_bytes();
        let loss = workload.loss(1).unwrap();
        let held = CountingAllocator::current_bytes() - before;
        drop(loss);
        held
    };
    let f32_bytes = loss_bytes(&options());
    let amp_bytes = loss_bytes(&ModelOptions {
        amp: Some(DType::BF16),
        ..options()
    });
    // The 2.9M weights' bf16 copies, which the graph keeps for the backward pass, are
    // 5.8 MB; beside them, the activations are half the size they are in f32.
    let casts = spec.parameter_count() * 2;
    let message = format!(
        "the forward pass held {amp_bytes} bytes under --amp, {f32_bytes} in f32; the casts \
         alone are {casts}"
    );
    assert!(amp_bytes >= casts, "{message}");
    assert!(amp_bytes - casts < f32_bytes, "{message}");
    assert!(amp_bytes - casts > f32_bytes / 4, "{message}");
}

#[test]
fn lora_trains_only_its_adapters() {
    let _heap = heap();
    for spec in decoders() {
        let name = &spec.name;
        for targets in [&[][..], &["all-linear"][..]] {
            let options = lora(4, targets);
            let mut workload =
                Workload::new(&spec, &options, OptimizerKind::AdamW, &Device::Cpu).unwrap();
            let adapters = spec.adapters(&options).unwrap();
            assert_eq!(
                workload.parameter_count(),
                spec.trainable_parameter_count(&adapters),
                "{name} {targets:?}"
            );
            let frozen: u64 = workload
                .frozen()
                .iter()
                .map(|(_, t)| t.elem_count() as u64)
                .sum();
            assert_eq!(
                frozen,
                spec.parameter_count(),
                "{name}: every base weight is frozen"
            );
            let info = spec
                .info(&ModelOptions {
                    image_size: None,
                    ..options.clone()
                })
                .unwrap();
            assert_eq!(
                info.parameters,
                frozen + workload.parameter_count(),
                "{name}"
            );
            assert_eq!(info.trainable_parameters, Some(workload.parameter_count()));
            // B starts at zero, so A's first gradient is zero: one update first.
            workload.step(2).unwrap();
            let grads = workload.loss(2).unwrap().backward().unwrap();
            let data = workload.varmap().data().lock().unwrap();
            let per_layer = adapters.adapted().len() * 2;
            assert_eq!(data.len() % per_layer, 0, "{name}");
            for (var_name, var) in data.iter() {
                assert!(is_adapter(var_name), "{name}: {var_name} is trained");
                let grad = grads
                    .get(var)
                    .unwrap_or_else(|| panic!("{name}: {var_name}"));
                let m = magnitude(grad);
                assert!(m.is_finite() && m > 0.0, "{name}: {var_name} gradient {m}");
            }
            for (frozen_name, tensor) in workload.frozen() {
                assert!(
                    grads.get(&tensor).is_none(),
                    "{name}: frozen {frozen_name} got a gradient"
                );
            }
        }
    }
}

#[test]
fn lora_keeps_optimizer_state_for_the_adapters_only() {
    let _heap = heap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let spec = ModelSpec::load(&ModelSource::Config(fixtures.join("tiny-llama.json"))).unwrap();
    let options = lora(8, &["all-linear"]);
    let built = |optimizer| {
        let before = CountingAllocator::current_bytes();
        let workload = Workload::new(&spec, &options, optimizer, &Device::Cpu).unwrap();
        (CountingAllocator::current_bytes() - before, workload)
    };
    // One build first: what the process allocates once, lazily (a worker thread's
    // workspace, about 1 MiB), must not land in one of the two measured builds.
    drop(built(OptimizerKind::AdamW));
    let (sgd, sgd_workload) = built(OptimizerKind::Sgd);
    let (adamw, _) = built(OptimizerKind::AdamW);
    // AdamW's two moments, f32, for each trained parameter (give or take its own small
    // bookkeeping); nothing for the frozen weights, whose moments would be 8 bytes each.
    let adapters = sgd_workload.parameter_count();
    let frozen = spec.parameter_count() - adapters;
    let moments = adapters * 2 * 4;
    assert!(frozen * 8 > 64 * 1024, "the fixture is too small to tell");
    assert!(
        adamw - sgd >= moments && adamw - sgd < moments + 16 * 1024,
        "AdamW added {} bytes; the adapters' moments are {moments}",
        adamw - sgd
    );
}

#[test]
fn in_bf16_the_blocks_halve_but_the_f32_loss_over_the_vocabulary_does_not() {
    let _heap = heap();
    // Where the bytes per sample go, measured between batch sizes 2 and 4: the question
    // docs/design.md answers ("--dtype bf16 barely shrinks the bytes per sample").
    let spec = ModelSpec::preset("transformer-tiny").unwrap();
    let per_sample = |dtype: DType| {
        let options = ModelOptions {
            dtype,
            seq_len: Some(16),
            ..ModelOptions::default()
        };
        let mut workload =
            Workload::new(&spec, &options, OptimizerKind::Sgd, &Device::Cpu).unwrap();
        let mut meter = maxbatch::CpuMeter::with_budget(1 << 40).unwrap();
        let mut at = |b| {
            let trial = maxbatch::trial::run(&mut workload, b, 1, &mut meter).unwrap();
            trial
                .held_by_part
                .into_iter()
                .map(|p| (p.part, p.bytes as f64))
                .collect::<std::collections::HashMap<_, _>>()
        };
        let (two, four) = (at(2), at(4));
        move |part: &str| (four[part] - two[part]) / 2.0
    };
    let (f32, bf16) = (per_sample(DType::F32), per_sample(DType::BF16));
    // The blocks shrink, though not to half: candle's differentiable layer norm computes
    // in f32 for half inputs and keeps those copies for the backward pass (measured: 0.63).
    let blocks = bf16("blocks") / f32("blocks");
    assert!((0.45..0.7).contains(&blocks), "blocks: bf16/f32 = {blocks}");
    // The logits and the loss do not shrink at all: the bf16 logits are cast to f32 for the
    // loss, so bf16 holds both copies (measured: 1.12 times f32's bytes per sample).
    let loss = bf16("logits and loss") / f32("logits and loss");
    assert!(loss >= 1.0, "logits and loss: bf16/f32 = {loss}");
}
