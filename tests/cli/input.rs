//! What the command line takes and refuses: models and configs, bad input as one clear
//! line, a budget below batch size 1, a CUDA request without CUDA.

#[cfg(not(feature = "cuda"))]
use crate::common::above_held;
use crate::common::{bytes_flag, held, json_of, maxbatch, with_room, MIB};
use crate::helpers::{fails_cleanly, fixture};

#[test]
fn models_lists_every_preset_with_its_parameters() {
    let output = maxbatch().args(["models", "--json"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let list = json_of(&output);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "mlp",
            "transformer-tiny",
            "transformer-small",
            "transformer-base",
            "transformer-large",
            "cnn"
        ]
    );
    assert_eq!(list[2]["parameters"], 35_561_472);
    assert_eq!(list[3]["parameters"], 124_439_808);

    let text = maxbatch().arg("models").output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("transformer-small") && text.contains("35.6M"),
        "{text}"
    );
}

#[test]
fn a_model_it_does_not_know_is_one_clear_line_and_exit_2() {
    fails_cleanly(
        &["--model", "gpt-17", "--device", "cpu"],
        "known models: mlp, transformer-tiny, transformer-small, transformer-base",
    );
    // A Hugging Face model's name or config file is pointed to --config.
    for (name, needle) in [
        ("smollm2-135m", "give its config.json as --config"),
        ("HuggingFaceTB/SmolLM2-135M", "download its config.json"),
        ("x.json", "give it as --config x.json"),
    ] {
        fails_cleanly(&["--model", name, "--device", "cpu"], needle);
    }
    // The estimate's uncounted combination is named, with what measures it.
    fails_cleanly(
        &[
            "estimate",
            "--model",
            "transformer-tiny",
            "--lora-rank",
            "8",
            "--amp",
            "bf16",
        ],
        "not under --amp yet; a search or `maxbatch check` measures it",
    );
}

#[test]
fn a_bad_value_is_one_clear_line_and_exit_2() {
    fails_cleanly(
        &[
            "check",
            "--model",
            "mlp",
            "--device",
            "cpu",
            "--batch-size",
            "0",
        ],
        "--batch-size must be at least 1",
    );
    fails_cleanly(&["--model", "mlp", "--memory", "lots"], "is not a size");
    // 1 KiB is less than any model and any machine's workspaces hold.
    fails_cleanly(
        &["--model", "mlp", "--device", "cpu", "--memory", "1KiB"],
        "raise --memory",
    );
    fails_cleanly(
        &["--model", "mlp", "--device", "cpu", "--dataset-size", "0"],
        "--dataset-size must be at least 1",
    );
    fails_cleanly(&["--model", "mlp", "--device", "tpu:0"], "invalid device");
    fails_cleanly(
        &[
            "--model",
            "transformer-tiny",
            "--device",
            "cpu",
            "--seq-len",
            "65",
        ],
        "context of 64 tokens",
    );
    fails_cleanly(
        &["--model", "mlp", "--device", "cpu", "--margin", "1.5"],
        "--margin",
    );
}

#[test]
fn flags_that_do_not_combine_are_one_clear_line_and_exit_2() {
    fails_cleanly(
        &["--model", "mlp", "--device", "cpu", "--lora-rank", "4"],
        "drop --lora-rank",
    );
    fails_cleanly(
        &[
            "--model", "mlp", "--device", "cpu", "--amp", "bf16", "--dtype", "f16",
        ],
        "--amp keeps f32 master weights",
    );
    let tiny = ["--model", "transformer-tiny", "--device", "cpu"];
    fails_cleanly(
        &[&tiny[..], &["--lora-rank", "4", "--lora-targets", "q_proj"]].concat(),
        "its blocks have attn.c_attn",
    );
    fails_cleanly(
        &[
            &["check"][..],
            &tiny,
            &["--seq-len", "16,32", "--batch-size", "2"],
        ]
        .concat(),
        "a list of --seq-len lengths is a sweep",
    );
    fails_cleanly(
        &[&tiny[..], &["--seq-len", "16,32", "--verify-steps", "3"]].concat(),
        "does not combine with a --seq-len sweep",
    );
    // A length past the learned context is refused before the first length runs.
    fails_cleanly(
        &[&tiny[..], &["--seq-len", "16,128"]].concat(),
        "context of 64 tokens",
    );
}

#[test]
fn a_budget_below_batch_one_says_what_it_needs() {
    // Above what the model holds (its weights, optimizer state and this machine's
    // matrix-multiply workspaces), halfway to batch size 1's peak.
    let model = ["--model", "transformer-tiny", "--device", "cpu"];
    let tiny = held(&model);
    let memory = bytes_flag(tiny.bytes + (tiny.batch_one - tiny.bytes) / 2);
    fails_cleanly(
        &[&model[..], &["--memory", &memory]].concat(),
        "does not fit even at batch size 1: needs at least",
    );
    // The hint names the flags that apply to the model: --seq-len for a transformer, not
    // for the MLP.
    let hint = |model: &[&str]| {
        let held = held(model);
        let memory = bytes_flag(held.bytes + (held.batch_one - held.bytes) / 2);
        let output = maxbatch()
            .args(model)
            .args(["--memory", &memory])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let tiny_hint = hint(&model);
    assert!(tiny_hint.contains("shorten --seq-len"), "{tiny_hint}");
    let mlp_hint = hint(&["--model", "mlp", "--device", "cpu"]);
    assert!(
        mlp_hint.contains("train with --optimizer sgd"),
        "{mlp_hint}"
    );
    assert!(!mlp_hint.contains("--seq-len"), "{mlp_hint}");
    assert!(!mlp_hint.contains("--lora-rank"), "{mlp_hint}");
}

/// transformer-tiny at 8 tokens on the CPU, where a CUDA request falls back to.
#[cfg(not(feature = "cuda"))]
const TINY_AT_8: &[&str] = &[
    "--model",
    "transformer-tiny",
    "--device",
    "cpu",
    "--seq-len",
    "8",
];

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cuda_request_falls_back_with_one_warning_unless_refused() {
    // Room for many more than the two samples the search is capped at.
    let memory = above_held(TINY_AT_8, 59 * MIB);
    let output = maxbatch()
        .args(["--model", "transformer-tiny", "--device", "cuda:0"])
        .args(["--memory", &memory])
        .args(["--seq-len", "8", "--max-batch", "2", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("running on the CPU"), "{stderr}");
    let r = json_of(&output);
    assert_eq!(r["device"]["kind"], "cpu");
    assert!(r["device"]["fallback"]
        .as_str()
        .unwrap()
        .contains("--features cuda"));

    fails_cleanly(
        &["--model", "mlp", "--device", "cuda:0", "--no-fallback"],
        "drop --no-fallback",
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_list_of_cuda_devices_falls_back_to_one_cpu_search() {
    let output = maxbatch()
        .args(["--model", "transformer-tiny", "--device", "cuda:0,cuda:1"])
        .args([
            "--memory",
            &above_held(TINY_AT_8, 59 * MIB),
            "--seq-len",
            "8",
            "--max-batch",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.lines().filter(|l| l.contains("WARN")).count(),
        1,
        "{stderr}"
    );
    let r = json_of(&output);
    assert_eq!(
        r["device"]["kind"], "cpu",
        "one CPU report, not a list: {r}"
    );
    assert_eq!(r["max_batch_size"], 2);
    fails_cleanly(
        &["--model", "mlp", "--device", "cuda:0,cuda:0"],
        "a device is named twice",
    );
}

#[test]
fn models_counts_a_config_without_allocating_it() {
    // A 7B model answers at once: its weights would not even fit this machine's memory.
    let output = maxbatch()
        .args([
            "models",
            "--json",
            "--config",
            &fixture("mistral-7b-v0.1.json"),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let info = json_of(&output);
    assert_eq!(info["parameters"], 7_241_732_096u64);
    assert_eq!(info["name"], "mistral-7b-v0.1");
}

#[test]
fn broken_configs_are_one_line_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("maxbatch-configs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let unknown = write("bert.json", r#"{"model_type": "bert", "hidden_size": 768}"#);
    let missing = write(
        "partial.json",
        r#"{"model_type": "llama", "hidden_size": 64}"#,
    );
    fails_cleanly(
        &["models", "--config", &unknown],
        "bert.json: has model_type \"bert\"",
    );
    fails_cleanly(
        &["models", "--config", &missing],
        "partial.json: has no \"num_attention_heads\"",
    );
    fails_cleanly(
        &["--config", &fixture("not-json.json"), "--device", "cpu"],
        "not-json.json: is not JSON",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_config_too_large_for_the_budget_is_refused_before_it_is_built() {
    // Arithmetic, the same on every machine: 6.7B parameters with AdamW's two moments in
    // f32 are 81 GB, ten times the budget, refused before anything is built or measured.
    fails_cleanly(
        &[
            "--config",
            &fixture("llama-2-7b.json"),
            "--device",
            "cpu",
            "--memory",
            "8GiB",
        ],
        "the model alone (its weights, and the optimizer's state when it trains) needs",
    );
}

#[test]
fn a_config_model_searches_on_the_cpu() {
    let llama = fixture("tiny-llama.json");
    let model = [
        "--config",
        &llama,
        "--device",
        "cpu",
        "--seq-len",
        "32",
        "--dtype",
        "bf16",
    ];
    let output = maxbatch()
        .args(with_room(&model, 90 * MIB))
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let r = json_of(&output);
    assert_eq!(r["model"]["name"], "tiny-llama");
    assert_eq!(r["model"]["dtype"], "bf16");
    assert!(r["max_batch_size"].as_u64().unwrap() >= 1);
}
