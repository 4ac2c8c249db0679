//! Beyond training: `--mode eval`, `--mode generate`, `--mode train+eval` and `check
//! --eval-batch-size`, each exact (the maximum fits, the size after it does not, `check`
//! agrees), under budgets derived from what each model holds here.

use serde_json::Value;

use crate::common::{held, json_of, maxbatch, with_room, MIB};
use crate::helpers::{fails_cleanly, fixture};

/// The search `args` (with `--memory`) describe, as JSON.
fn searched(args: &[String]) -> Value {
    let output = maxbatch()
        .args(args)
        .args(["--json", "--no-cache"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
    json_of(&output)
}

/// `check`'s exit code for `args` (with `--memory`) at `batch_size`.
fn check_code(args: &[String], batch_size: u64, extra: &[&str]) -> i32 {
    let output = maxbatch()
        .arg("check")
        .args(args)
        .args(["--batch-size", &batch_size.to_string(), "--no-cache"])
        .args(extra)
        .output()
        .unwrap();
    output.status.code().unwrap_or(-1)
}

/// The `phase` of each entry of a JSON list (a trial's phase times, an estimate's phases).
fn phase_names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect()
}

/// The search's maximum, after checking it is exact: the maximum ran and fit, the size
/// after it ran and did not, every size reported ran, and `check` agrees on both.
fn exact_max(args: &[String], report: &Value) -> u64 {
    let max = report["max_batch_size"].as_u64().unwrap();
    let trials = report["trials"].as_array().unwrap();
    let outcome = |b: u64| {
        trials
            .iter()
            .find(|t| t["batch_size"].as_u64() == Some(b))
            .map(|t| t["outcome"].as_str().unwrap().to_string())
    };
    assert_eq!(outcome(max).as_deref(), Some("fits"), "{args:?}");
    assert_eq!(outcome(max + 1).as_deref(), Some("oom"), "{args:?}");
    for key in ["largest_power_of_two", "recommended_batch_size"] {
        if let Some(b) = report[key].as_u64() {
            assert_eq!(outcome(b).as_deref(), Some("fits"), "{key}");
        }
    }
    assert_eq!(check_code(args, max, &[]), 0, "{args:?} at {max}");
    assert_eq!(check_code(args, max + 1, &[]), 1, "{args:?} at {}", max + 1);
    max
}

#[test]
fn evaluation_is_exact_on_every_family_and_a_held_out_config() {
    let llama = fixture("held-out-llama.json");
    let gpt2 = fixture("held-out-gpt2.json");
    let cases: Vec<(Vec<&str>, u64)> = vec![
        (vec!["--model", "mlp"], 8 * MIB),
        (vec!["--model", "transformer-tiny"], 16 * MIB),
        (vec!["--model", "cnn", "--image-size", "8"], 16 * MIB),
        (vec!["--config", &gpt2, "--seq-len", "32"], 24 * MIB),
        (vec!["--config", &llama, "--seq-len", "32"], 24 * MIB),
    ];
    for (model, room) in cases {
        let model: Vec<&str> = [&model[..], &["--device", "cpu", "--mode", "eval"]].concat();
        let args = with_room(&model, room);
        let report = searched(&args);
        assert_eq!(
            report["settings"]["mode"],
            serde_json::json!({"eval": {"beside_training": null}})
        );
        assert_eq!(report["model"]["trainable_parameters"], 0, "{model:?}");
        // No optimizer is built, and nothing is kept for a backward pass: the only phase is
        // the forward pass.
        assert!(report["settings"]["optimizer"].is_null(), "{model:?}");
        let max = exact_max(&args, &report);
        let phases = report["trials"][0]["phase_peaks"].as_array().unwrap();
        assert_eq!(phases.len(), 1, "{phases:?}");
        assert_eq!(phases[0]["phase"], "forward");
        // The same budget trains far fewer samples: the graph a training step keeps.
        let train: Vec<&str> = model[..model.len() - 2].to_vec();
        let training = check_code(&with_room(&train, room), max, &[]);
        assert_eq!(
            training, 1,
            "{model:?}: training at the evaluation maximum {max}"
        );
    }
}

#[test]
fn generation_is_exact_and_its_kv_cache_is_the_arithmetic() {
    let llama = fixture("held-out-llama.json");
    let cases: Vec<(Vec<&str>, u64)> = vec![
        (vec!["--model", "transformer-tiny"], 12 * MIB),
        (vec!["--config", &llama], 24 * MIB),
    ];
    for (model, room) in cases {
        let model: Vec<&str> = [
            &model[..],
            &[
                "--device",
                "cpu",
                "--mode",
                "generate",
                "--prompt-len",
                "24",
                "--new-tokens",
                "8",
            ],
        ]
        .concat();
        let args = with_room(&model, room);
        let report = searched(&args);
        let max = exact_max(&args, &report);
        // The cache's bytes per sequence a CPU trial counted (its part of the memory model,
        // between two sizes that fit) against the arithmetic from the config.
        let per_token = report["model"]["kv_cache_bytes_per_token"]
            .as_u64()
            .unwrap();
        assert_eq!(report["model"]["kv_cache_tokens"], 32);
        let parts = report["memory_model"]["parts"].as_array().unwrap();
        let measured = parts
            .iter()
            .find(|p| p["part"] == "kv cache")
            .and_then(|p| p["bytes_per_sample"].as_i64())
            .unwrap() as f64;
        let arithmetic = (per_token * 32) as f64;
        assert!(
            (measured / arithmetic - 1.0).abs() < 0.01,
            "{model:?}: measured {measured} against {arithmetic}"
        );
        // The report's generation figures: the same cache, and both rates measured.
        let generation = &report["generation"];
        assert_eq!(
            generation["kv_cache_bytes_per_sequence"].as_u64(),
            Some(per_token * 32)
        );
        assert_eq!(
            generation["kv_cache_measured_bytes_per_sequence"].as_f64(),
            Some(measured)
        );
        assert_eq!(generation["batch_size"].as_u64(), Some(max));
        for rate in ["prefill_tokens_per_second", "decode_tokens_per_second"] {
            assert!(
                generation[rate].as_f64().is_some_and(|r| r > 0.0),
                "{generation}"
            );
        }
        // Both phases are measured and timed at the maximum.
        let at_max = report["trials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["batch_size"].as_u64() == Some(max))
            .unwrap();
        assert_eq!(phase_names(&at_max["phase_seconds"]), ["prefill", "decode"]);
        // The estimate's KV cache is the same arithmetic, and it seeded the search: its
        // maximum is a size the search ran first.
        let mut estimate: Vec<&str> = model.clone();
        estimate.retain(|a| *a != "cpu" && *a != "--device");
        let output = maxbatch()
            .arg("estimate")
            .args(&estimate)
            .args(["--memory", &args[args.len() - 1], "--json"])
            .output()
            .unwrap();
        let predicted = json_of(&output);
        assert_eq!(predicted["predicted"], true);
        let held = &predicted["estimate"]["inference"]["held"][0];
        assert_eq!(held["per_sample"].as_u64(), Some(per_token * 32), "{held}");
        assert_eq!(phase_names(&predicted["phases"]), ["prefill", "decode"]);
        assert!(report["seeding"].is_object(), "{}", report["seeding"]);
    }
}

#[test]
fn the_evaluation_beside_training_is_never_larger_than_alone_and_here_smaller() {
    // transformer-tiny's AdamW moments (1.3 MB) are about two evaluation samples (0.8 MB
    // each at 64 tokens): held beside the evaluation, they cost it samples.
    let model = ["--model", "transformer-tiny", "--device", "cpu"];
    let args = with_room(&model, 20 * MIB);
    let both = searched(&[&args[..], &["--mode".into(), "train+eval".into()]].concat());
    let train = both["recommended_batch_size"].as_u64().unwrap();
    let evaluation = &both["evaluation"];
    assert_eq!(
        evaluation["settings"]["mode"]["eval"]["beside_training"].as_u64(),
        Some(train)
    );
    let beside = evaluation["max_batch_size"].as_u64().unwrap();
    let alone = searched(&[&args[..], &["--mode".into(), "eval".into()]].concat());
    let alone_max = alone["max_batch_size"].as_u64().unwrap();
    assert!(beside < alone_max, "beside {beside}, alone {alone_max}");
    // What is held differs by the optimizer's state: the weights are shared, not copied.
    let held_beside = evaluation["device"]["baseline_bytes"].as_u64().unwrap();
    let held_alone = alone["device"]["baseline_bytes"].as_u64().unwrap();
    let moments = 2 * 4 * both["model"]["parameters"].as_u64().unwrap();
    let extra = held_beside - held_alone;
    assert!(
        extra >= moments && extra < moments + MIB,
        "held {held_beside} beside against {held_alone} alone; moments {moments}"
    );
    // The pair check agrees: the beside maximum fits with the training step, the one after
    // it does not, nor does the maximum found alone.
    let pair = |eval: u64| check_code(&args, train, &["--eval-batch-size", &eval.to_string()]);
    assert_eq!(pair(beside), 0);
    assert_eq!(pair(beside + 1), 1);
    assert_eq!(pair(alone_max), 1);
}

#[test]
fn the_modes_refuse_what_they_cannot_run() {
    let tiny = ["--model", "transformer-tiny", "--device", "cpu"];
    let refuse = |extra: &[&str], needle: &str| {
        fails_cleanly(&[&tiny[..], extra].concat(), needle);
    };
    refuse(
        &["--mode", "generate"],
        "needs --prompt-len and --new-tokens",
    );
    refuse(&["--prompt-len", "8"], "add --mode generate");
    refuse(
        &[
            "--mode",
            "generate",
            "--prompt-len",
            "60",
            "--new-tokens",
            "5",
        ],
        "context of 64 tokens",
    );
    refuse(
        &[
            "--mode",
            "generate",
            "--prompt-len",
            "8",
            "--new-tokens",
            "4",
            "--seq-len",
            "8",
        ],
        "drop --seq-len",
    );
    refuse(&["--beside-training", "4"], "takes --mode eval");
    refuse(
        &["--mode", "train+eval", "--seq-len", "16,32"],
        "one --seq-len",
    );
    fails_cleanly(
        &[
            "--model",
            "mlp",
            "--device",
            "cpu",
            "--mode",
            "generate",
            "--prompt-len",
            "4",
            "--new-tokens",
            "4",
        ],
        "not a decoder",
    );
    fails_cleanly(
        &[
            "estimate",
            "--model",
            "transformer-tiny",
            "--mode",
            "eval",
            "--lora-rank",
            "8",
        ],
        "does not count --lora-rank",
    );
    fails_cleanly(
        &["estimate", "--model", "cnn", "--mode", "eval"],
        "does not count cnn's convolutions",
    );
    // A training batch that does not fit is refused before any evaluation trial, measured.
    let beside = with_room(&tiny, 8 * MIB);
    let beside: Vec<&str> = beside.iter().map(String::as_str).collect();
    fails_cleanly(
        &[
            &beside[..],
            &["--mode", "eval", "--beside-training", "1000"],
        ]
        .concat(),
        "the training step at batch size 1000 does not fit",
    );
    // A prompt whose attention the estimate puts far past this machine is not run: one
    // tensor of it would abort the process before a stop point could end the trial.
    let llama = fixture("tiny-llama.json");
    fails_cleanly(
        &[
            "--config",
            &llama,
            "--device",
            "cpu",
            "--memory",
            "64MiB",
            "--mode",
            "generate",
            "--prompt-len",
            "100000",
            "--new-tokens",
            "8",
            "--no-cache",
        ],
        "does not fit even at batch size 1: needs at least",
    );
    fails_cleanly(
        &[
            "check",
            "--model",
            "transformer-tiny",
            "--device",
            "cpu",
            "-b",
            "1",
            "--eval-batch-size",
            "0",
        ],
        "--eval-batch-size must be at least 1",
    );
    fails_cleanly(
        &[
            "estimate",
            "--model",
            "transformer-tiny",
            "--mode",
            "train+eval",
        ],
        "the estimate predicts one step",
    );
    // An evaluation's schedule counts batches per pass over the data, not training steps.
    let output = maxbatch()
        .args(&beside)
        .args(["--mode", "eval", "--dataset-size", "1000", "--no-cache"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("1000 samples evaluated × 1 pass"), "{text}");
    assert!(
        text.contains("batches/pass") && !text.contains("steps/epoch"),
        "{text}"
    );
    // What held() measures under each mode: nothing trained means less held.
    let train = held(&tiny);
    let eval = held(&[&tiny[..], &["--mode", "eval"]].concat());
    assert!(eval.bytes < train.bytes, "{eval:?} {train:?}");
}
