//! Every built-in model trains: a gradient reaches every variable, and the parameter count
//! the registry states (from the shape alone) is the count of the variables built.

use candle_core::Device;
use maxbatch::models::{self, ModelOptions, PRESETS};
use maxbatch::{OptimizerKind, TrainStep, Workload};

/// Short sequences keep the transformers quick; the variables are the same at any length.
fn options(name: &str) -> ModelOptions {
    ModelOptions {
        seq_len: name.starts_with("transformer").then_some(8),
    }
}

#[test]
fn every_variable_of_every_model_gets_a_nonzero_gradient() {
    for (name, _) in PRESETS {
        let workload =
            Workload::new(name, &options(name), OptimizerKind::AdamW, &Device::Cpu).unwrap();
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
    for (name, _) in PRESETS {
        let info = models::info(name, &options(name)).unwrap();
        let workload =
            Workload::new(name, &options(name), OptimizerKind::Sgd, &Device::Cpu).unwrap();
        assert_eq!(info.parameters, workload.parameter_count(), "{name}");
    }
}

#[test]
fn an_adamw_step_moves_every_weight() {
    let name = "transformer-tiny";
    let mut workload =
        Workload::new(name, &options(name), OptimizerKind::AdamW, &Device::Cpu).unwrap();
    let before: Vec<Vec<f32>> = snapshot(&workload);
    workload.step(4).unwrap();
    let after: Vec<Vec<f32>> = snapshot(&workload);
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
    let err = models::info("resnet-9000", &ModelOptions::default()).unwrap_err();
    let text = err.to_string();
    for (name, _) in PRESETS {
        assert!(text.contains(name), "{text}");
    }
}
