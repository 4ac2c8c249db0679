//! Every built-in model and every config.json family trains: a gradient reaches every
//! variable, stated parameter counts (from shapes alone) are the counts of the variables
//! built and the published counts, and one CPU trial runs per family.

use std::path::PathBuf;

use candle_core::{DType, Device};
use maxbatch::models::llama::LlamaConfig;
use maxbatch::models::{Architecture, ModelOptions, ModelSource, ModelSpec, PRESETS};
use maxbatch::{CountingAllocator, OptimizerKind, TrainStep, Workload};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::new();

/// Short inputs keep every model quick; the variables are the same at any length.
fn small_inputs() -> ModelOptions {
    ModelOptions {
        seq_len: Some(8),
        image_size: Some(8),
        dtype: DType::F32,
        ..ModelOptions::default()
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A 2-layer instance of a Llama-family shape.
fn small_llama(family: &str, qkv_bias: bool, tie: bool) -> ModelSpec {
    ModelSpec {
        name: format!("small-{family}"),
        architecture: Architecture::Llama(
            LlamaConfig {
                vocab: 300,
                hidden: 48,
                layers: 2,
                heads: 6,
                kv_heads: 2,
                head_dim: 8,
                intermediate: 96,
                max_positions: 64,
                rope_theta: 10_000.0,
                rms_norm_eps: 1e-6,
                tie_embeddings: tie,
                qkv_bias,
            },
            family.into(),
        ),
    }
}

/// Every preset (at small inputs), plus a small instance of each config family.
fn every_family() -> Vec<ModelSpec> {
    let mut specs: Vec<ModelSpec> = PRESETS
        .iter()
        .filter(|(name, _)| *name != "transformer-large") // the same code as -base, 3× the size
        .map(|(name, _)| ModelSpec::preset(name).unwrap())
        .collect();
    specs.push(small_llama("llama", false, true));
    specs.push(small_llama("mistral", false, false));
    specs.push(small_llama("qwen2", true, false));
    for file in ["tiny-qwen2.json", "tiny-llama.json", "tiny-gpt2.json"] {
        specs.push(ModelSpec::load(&ModelSource::Config(fixture(file))).unwrap());
    }
    specs
}

#[test]
fn every_variable_of_every_family_gets_a_nonzero_gradient() {
    for spec in every_family() {
        let name = &spec.name;
        let workload =
            Workload::new(&spec, &small_inputs(), OptimizerKind::AdamW, &Device::Cpu).unwrap();
        let loss = workload.loss(2).unwrap();
        let grads = loss.backward().unwrap();
        let data = workload.varmap().data().lock().unwrap();
        assert!(!data.is_empty(), "{name} has no variables");
        for (var_name, var) in data.iter() {
            let grad = grads
                .get(var)
                .unwrap_or_else(|| panic!("{name}: no gradient for {var_name}"));
            assert_eq!(grad.dims(), var.dims(), "{name}: {var_name}");
            let magnitude = grad
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                magnitude.is_finite() && magnitude > 0.0,
                "{name}: gradient of {var_name} is {magnitude}"
            );
        }
    }
}

#[test]
fn stated_parameter_counts_match_the_variables_built() {
    for spec in every_family() {
        let workload =
            Workload::new(&spec, &small_inputs(), OptimizerKind::Sgd, &Device::Cpu).unwrap();
        assert_eq!(
            spec.parameter_count(),
            workload.parameter_count(),
            "{}",
            spec.name
        );
    }
}

#[test]
fn presets_and_fixtures_have_the_published_parameter_counts() {
    let presets = [
        ("transformer-small", 35_561_472),
        ("transformer-base", 124_439_808),  // GPT-2 small
        ("transformer-large", 354_823_168), // GPT-2 medium
        ("cnn", 11_173_962),                // CIFAR ResNet-18
        ("mlp", 2_913_290),
    ];
    for (name, count) in presets {
        assert_eq!(
            ModelSpec::preset(name).unwrap().parameter_count(),
            count,
            "{name}"
        );
    }
    let fixtures = [
        ("smollm2-135m.json", 134_515_008),
        ("qwen2-0.5b.json", 494_032_768),
        ("mistral-7b-v0.1.json", 7_241_732_096),
        ("llama-2-7b.json", 6_738_415_616),
        ("gpt2.json", 124_439_808),
    ];
    for (file, count) in fixtures {
        let spec = ModelSpec::load(&ModelSource::Config(fixture(file))).unwrap();
        assert_eq!(spec.parameter_count(), count, "{file}");
    }
}

#[test]
fn the_largest_preset_builds_with_its_stated_count() {
    let spec = ModelSpec::preset("transformer-large").unwrap();
    let workload = Workload::new(&spec, &small_inputs(), OptimizerKind::Sgd, &Device::Cpu).unwrap();
    assert_eq!(workload.parameter_count(), 354_823_168);
}

#[test]
fn bf16_and_f16_train_on_the_cpu_except_bf16_convolutions() {
    for dtype in [DType::BF16, DType::F16] {
        // The large presets run the same code as the small ones, only slower in half
        // precision on the CPU.
        let small = every_family()
            .into_iter()
            .filter(|s| !matches!(s.name.as_str(), "transformer-small" | "transformer-base"));
        for spec in small {
            let options = ModelOptions {
                dtype,
                ..small_inputs()
            };
            let mut workload =
                Workload::new(&spec, &options, OptimizerKind::AdamW, &Device::Cpu).unwrap();
            let result = workload.step(2);
            if spec.name == "cnn" && dtype == DType::BF16 {
                // candle's CPU convolution has no bf16 matmul: an error, not a panic.
                let err = result.expect_err("cnn in bf16 on the CPU");
                assert!(err.to_string().contains("unsupported dtype"), "{err}");
                continue;
            }
            result.unwrap_or_else(|e| panic!("{} in {dtype:?}: {e}", spec.name));
            let data = workload.varmap().data().lock().unwrap();
            assert!(data.values().all(|v| v.dtype() == dtype), "{}", spec.name);
        }
    }
}

#[test]
fn an_adamw_step_moves_every_weight() {
    let spec = ModelSpec::preset("transformer-tiny").unwrap();
    let mut workload =
        Workload::new(&spec, &small_inputs(), OptimizerKind::AdamW, &Device::Cpu).unwrap();
    let before = snapshot(&workload);
    workload.step(4).unwrap();
    let after = snapshot(&workload);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert_eq!(
        moved,
        before.len(),
        "every variable should move after an AdamW step"
    );
}

fn snapshot(workload: &Workload) -> Vec<Vec<f32>> {
    let data = workload.varmap().data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|n| data[n].flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn unknown_models_name_the_known_ones() {
    let err = ModelSpec::preset("resnet-9000").unwrap_err();
    let text = err.to_string();
    for (name, _) in PRESETS {
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn broken_config_files_name_the_file_and_the_problem() {
    let cases = [
        ("not-json.json", "is not JSON"),
        ("missing.json", "cannot be read"),
    ];
    for (file, problem) in cases {
        let err = ModelSpec::load(&ModelSource::Config(fixture(file))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(file) && text.contains(problem), "{text}");
    }
}
