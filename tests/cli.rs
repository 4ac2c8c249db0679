//! The binary end to end on the CPU with the tiny models and budgets derived from what the
//! process holds on the machine the tests run on (see tests/common/mod.rs).

mod common;

use common::{above_held, bytes_flag, held, json_of, maxbatch, with_room, MIB};
use serde_json::Value;

/// transformer-tiny at 32 tokens on the CPU, without a budget.
const TINY_MODEL: &[&str] = &[
    "--model",
    "transformer-tiny",
    "--device",
    "cpu",
    "--seq-len",
    "32",
];

/// The room the tiny searches have above what the model holds: about 30 samples, well clear
/// of batch size 1 and of the 65,536 cap.
const TINY_ROOM: u64 = 155 * MIB;

/// transformer-tiny at 32 tokens under a budget of [`TINY_ROOM`] above what it holds here.
fn tiny() -> Vec<String> {
    with_room(TINY_MODEL, TINY_ROOM)
}

/// The budget [`tiny`] gives, in bytes.
fn tiny_budget() -> u64 {
    held(TINY_MODEL).bytes + TINY_ROOM
}

fn search(extra: &[&str]) -> Value {
    let output = maxbatch()
        .args(tiny())
        .args(["--json"])
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    json_of(&output)
}

fn check(batch_size: usize) -> i32 {
    let output = maxbatch()
        .arg("check")
        .args(tiny())
        .args(["--batch-size", &batch_size.to_string()])
        .output()
        .unwrap();
    output.status.code().unwrap_or(-1)
}

/// `check` at `batch_size` as a soak test of `steps` steps.
fn check_soak(batch_size: &str, steps: usize) -> std::process::Output {
    maxbatch()
        .arg("check")
        .args(tiny())
        .args([
            "--batch-size",
            batch_size,
            "--verify-steps",
            &steps.to_string(),
        ])
        .output()
        .unwrap()
}

#[test]
fn the_search_agrees_with_the_preflight_check() {
    let report = search(&["--dataset-size", "10000", "--epochs", "3"]);
    let max = report["max_batch_size"].as_u64().unwrap() as usize;
    assert!(max > 1, "{report}");
    assert_eq!(check(max), 0, "check at the max {max} should fit");
    assert_eq!(check(max + 1), 1, "check at {} should not fit", max + 1);
}

#[test]
fn a_soak_run_runs_every_step_at_the_recommended_size_and_check_soaks_too() {
    let report = search(&["--verify-steps", "20"]);
    let v = &report["verification"];
    assert_eq!(v["passed"], true, "{v}");
    assert_eq!(v["steps_completed"], 20, "{v}");
    assert_eq!(
        v["batch_size"], report["recommended_batch_size"],
        "{report}"
    );
    assert_eq!(v["step_peaks"].as_array().unwrap().len(), 20);
    assert_eq!(report["settings"]["verify_steps"], 20);
    // The pre-flight check as a soak test: every step's peak, exit 0 when all fit.
    let max = report["max_batch_size"].as_u64().unwrap().to_string();
    let output = check_soak(&max, 5);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("verification: 5 of 5 consecutive steps"),
        "{text}"
    );
    // A size past the capacity fails the soak: exit 1.
    let over = (report["max_batch_size"].as_u64().unwrap() + 1).to_string();
    let output = check_soak(&over, 5);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("FAILED: step 1"));
}

#[test]
fn the_json_report_has_the_documented_keys_and_consistent_figures() {
    let r = search(&["--dataset-size", "10000", "--epochs", "3"]);
    assert_eq!(r["model"]["name"], "transformer-tiny");
    assert!(r["model"]["parameters"].as_u64().unwrap() > 100_000);
    assert_eq!(r["device"]["kind"], "cpu");
    assert_eq!(r["device"]["capacity_bytes"], tiny_budget());
    let max = r["max_batch_size"].as_u64().unwrap();
    let pow2 = r["largest_power_of_two"].as_u64().unwrap();
    let recommended = r["recommended_batch_size"].as_u64().unwrap();
    assert!(pow2.is_power_of_two() && pow2 <= max && pow2 * 2 > max);
    assert!(recommended <= max);

    let trials = r["trials"].as_array().unwrap();
    for t in trials {
        for key in ["batch_size", "outcome", "peak_bytes", "step_seconds"] {
            assert!(t.get(key).is_some(), "trial lacks {key}: {t}");
        }
        assert!(t["outcome"] == "fits" || t["outcome"] == "oom", "{t}");
    }
    // Every reported size ran and fit; the max + 1 ran and did not.
    let ran = |b: u64, outcome: &str| {
        trials
            .iter()
            .any(|t| t["batch_size"] == b && t["outcome"] == outcome)
    };
    for b in [max, pow2, recommended] {
        assert!(ran(b, "fits"), "{b} was reported but not run: {r}");
    }
    assert!(ran(max + 1, "oom"), "{r}");
    // The recommended size leaves the 5% margin free.
    let capacity = r["device"]["capacity_bytes"].as_f64().unwrap();
    let peak_of = |b: u64| {
        trials
            .iter()
            .find(|t| t["batch_size"] == b && t["outcome"] == "fits")
            .unwrap()["peak_bytes"]
            .as_f64()
            .unwrap()
    };
    assert!(peak_of(recommended) <= 0.95 * capacity);

    let schedule = r["schedule"].as_array().unwrap();
    assert_eq!(schedule.len(), 3);
    for row in schedule {
        let b = row["batch_size"].as_u64().unwrap();
        let per_epoch = row["steps_per_epoch"].as_u64().unwrap();
        assert_eq!(per_epoch, 10_000u64.div_ceil(b));
        assert_eq!(row["total_steps"].as_u64().unwrap(), 3 * per_epoch);
    }
}

#[test]
fn drop_last_rounds_steps_down() {
    let r = search(&["--dataset-size", "1000", "--drop-last", "--max-batch", "3"]);
    assert_eq!(r["max_batch_size"], 3);
    assert_eq!(r["schedule"][0]["steps_per_epoch"], 333);
}

#[test]
fn the_cap_is_run_and_reported() {
    let r = search(&["--max-batch", "5", "--strategy", "doubling"]);
    assert_eq!(r["max_batch_size"], 5);
    assert_eq!(r["max_is_cap"], true);
    let sizes: Vec<u64> = r["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["batch_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![1, 2, 4, 5]);
}

#[test]
fn the_text_report_shows_trials_results_and_schedule() {
    let output = maxbatch()
        .args(tiny())
        .args(["--dataset-size", "50000", "--epochs", "3"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let budget = format!(
        "budget {} from the --memory flag",
        maxbatch::format::bytes(tiny_budget())
    );
    for needle in [
        budget.as_str(),
        "not a hardware limit",
        "out of memory",
        "max batch size",
        "largest power of two",
        "recommended (5% margin)",
        "steps/epoch",
        "50000 samples × 3 epochs",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in\n{stdout}");
    }
    // One progress line per trial on stderr.
    let stderr = String::from_utf8(output.stderr).unwrap();
    let trials = stdout
        .lines()
        .filter(|l| l.contains("fits") || l.contains("out of memory"))
        .count();
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("trial")).count(),
        trials,
        "{stderr}"
    );
}

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
fn check_prints_the_trial_as_json() {
    let output = maxbatch()
        .arg("check")
        .args(tiny())
        .args(["--batch-size", "2", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let trial = json_of(&output);
    assert_eq!(trial["batch_size"], 2);
    assert_eq!(trial["outcome"], "fits");
    assert!(trial["peak_bytes"].as_u64().unwrap() > 0);
}

/// Runs the binary, expects exit code 2 and a single clear error line naming `needle`.
fn fails_cleanly(args: &[&str], needle: &str) {
    let output = maxbatch().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: no {needle:?} in {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(!stderr.contains("backtrace"), "{args:?}: {stderr}");
    let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(lines <= 2, "{args:?}: more than one message:\n{stderr}");
    assert!(output.stdout.is_empty(), "{args:?}");
}

#[test]
fn bad_input_is_one_clear_line_and_exit_2() {
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
    // The estimate's uncounted training modes are named, with what measures them.
    for flag in ["--amp", "--lora-rank"] {
        let value = if flag == "--amp" { "bf16" } else { "8" };
        fails_cleanly(
            &["estimate", "--model", "transformer-tiny", flag, value],
            &format!("not {flag} yet; a search or `maxbatch check` measures it"),
        );
    }
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
fn a_sweep_searches_each_length_exactly_and_reports_tokens_per_batch() {
    let model = ["--model", "transformer-tiny", "--device", "cpu"];
    // The budget of the 32-token searches, given to both lengths.
    let memory = bytes_flag(tiny_budget());
    let base = [&model[..], &["--memory", &memory]].concat();
    let output = maxbatch()
        .args(&base)
        .args(["--seq-len", "16,32", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let sweep = json_of(&output);
    let entries = sweep["sweep"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for (entry, len) in entries.iter().zip([16u64, 32]) {
        let max = entry["max_batch_size"].as_u64().unwrap();
        assert_eq!(entry["seq_len"], len);
        assert_eq!(entry["tokens_per_batch"].as_u64(), Some(max * len));
        let report = &entry["report"];
        assert_eq!(report["max_batch_size"].as_u64(), Some(max));
        assert_eq!(report["model"]["input"], format!("{len} tokens"));
        assert_eq!(
            entry["largest_power_of_two"],
            report["largest_power_of_two"]
        );
        assert_eq!(
            entry["recommended_batch_size"],
            report["recommended_batch_size"]
        );
        // The same exact answer as a search at that length alone, in no more trials; the
        // second length's first jump, steered by the first length's line, reaches at least
        // as far as the alone search's.
        let alone = maxbatch()
            .args(&base)
            .args(["--seq-len", &len.to_string(), "--json"])
            .output()
            .unwrap();
        let alone = json_of(&alone);
        assert_eq!(alone["max_batch_size"].as_u64(), Some(max), "{len}");
        let (trials, alone_trials) = (
            report["trials"].as_array().unwrap(),
            alone["trials"].as_array().unwrap(),
        );
        assert!(trials.len() <= alone_trials.len(), "{len}: {trials:?}");
        assert!(trials[1]["batch_size"].as_u64() >= alone_trials[1]["batch_size"].as_u64());
    }
}

#[test]
fn mixed_precision_and_lora_say_what_they_train_in_text_and_json() {
    let amp = search(&["--amp", "bf16"]);
    assert_eq!(amp["model"]["dtype"], "f32");
    assert_eq!(amp["model"]["compute_dtype"], "bf16");
    let lora = search(&["--lora-rank", "4"]);
    let (total, trained) = (
        lora["model"]["parameters"].as_u64().unwrap(),
        lora["model"]["trainable_parameters"].as_u64().unwrap(),
    );
    // transformer-tiny: 2 blocks, c_attn 64 → 192 at rank 4.
    assert_eq!(trained, 2 * 4 * (64 + 192));
    assert_eq!(total, 168_192 + trained);
    let plain = search(&[]);
    assert_eq!(
        plain["model"]["trainable_parameters"],
        plain["model"]["parameters"]
    );
    let output = maxbatch()
        .args(tiny())
        .args(["--amp", "bf16", "--lora-rank", "4"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("2.0K trained: LoRA rank 4 (alpha 16) on attn.c_attn"),
        "{text}"
    );
    assert!(
        text.contains("mixed precision: f32 weights, bf16 compute"),
        "{text}"
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

#[test]
fn a_cache_path_that_is_a_file_is_named_as_not_a_folder() {
    let output = maxbatch()
        .env("MAXBATCH_CACHE", "/dev/null")
        .arg("check")
        .args(tiny())
        .args(["--batch-size", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the cache folder /dev/null is not a folder"),
        "{stderr}"
    );
    assert!(!stderr.contains("os error"), "{stderr}");
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

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
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
        "the model alone (weights and optimizer state) needs",
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

#[test]
fn a_repeated_search_answers_from_the_cache_and_survives_a_corrupt_file() {
    let cache = std::env::temp_dir().join(format!("maxbatch-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let run = |extra: &[&str]| {
        let output = maxbatch()
            .env("MAXBATCH_CACHE", &cache)
            .args(tiny())
            .args(["--max-batch", "8", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        (
            json_of(&output),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (first, stderr) = run(&[]);
    assert!(!stderr.contains("cached result"), "{stderr}");
    let (mut second, stderr) = run(&[]);
    assert!(stderr.contains("cached result"), "{stderr}");
    assert!(
        !stderr.contains("trial "),
        "a cached answer runs no trial: {stderr}"
    );
    // The same report, saying where it came from.
    assert_eq!(
        (&first["from_cache"], &second["from_cache"]),
        (&false.into(), &true.into())
    );
    second["from_cache"] = false.into();
    assert_eq!(first, second);
    let (_, stderr) = run(&["--no-cache"]);
    assert!(
        !stderr.contains("cached result") && stderr.contains("trial "),
        "{stderr}"
    );

    // A different budget is a different question.
    let output = maxbatch()
        .env("MAXBATCH_CACHE", &cache)
        .args(TINY_MODEL)
        .args(["--memory", &bytes_flag(tiny_budget() - 10 * MIB)])
        .args(["--max-batch", "8", "--json"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&output.stderr).contains("cached result"));

    for file in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(file.unwrap().path(), "{ corrupt").unwrap();
    }
    let (third, stderr) = run(&[]);
    assert!(
        stderr.contains("ignoring the corrupt cache file"),
        "{stderr}"
    );
    assert_eq!(third["max_batch_size"], first["max_batch_size"]);
    let (_, stderr) = run(&[]);
    assert!(
        stderr.contains("cached result"),
        "rewritten after the corrupt one: {stderr}"
    );
    std::fs::remove_dir_all(&cache).ok();
}

/// Starts a search with `args` (no cache), waits until `trials` trials have started, sends
/// `signal` (as `kill -SIGNAL`), and returns the exit code, stdout, and what stderr printed
/// after the signal.
fn interrupt_after(args: &[String], trials: usize, signal: &str) -> (Option<i32>, String, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("maxbatch"))
        .args(args)
        .arg("--no-cache")
        .env(
            "MAXBATCH_CACHE",
            std::env::temp_dir().join(format!("maxbatch-cli-signals-{}", std::process::id())),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut started = 0;
    while started < trials {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "ended before {trials} trials"
        );
        started += usize::from(line.starts_with("trial"));
    }
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    (output.status.code(), stdout, rest)
}

#[test]
fn ctrl_c_stops_after_the_running_trial_with_the_sizes_so_far() {
    let trials = 4;
    // Room for hundreds of samples: the search is far from done after four trials.
    let args = with_room(&["--model", "transformer-tiny", "--device", "cpu"], 2 << 30);
    let (code, stdout, rest) = interrupt_after(&args, trials, "INT");
    assert_eq!(code, Some(130), "{rest}");
    assert!(
        stdout.contains("interrupted: the search stopped early"),
        "{stdout}"
    );
    assert!(rest.contains("interrupted after"), "{rest}");
    // The report holds every trial that ran, and nothing after the interrupt.
    let ran = trials + rest.lines().filter(|l| l.starts_with("trial")).count();
    let rows = stdout
        .lines()
        .filter(|l| l.contains("  fits  ") || l.contains("out of memory"))
        .count();
    assert_eq!(rows, ran, "{stdout}\n{rest}");
    assert!(ran < 12, "the search ran on after Ctrl-C: {rest}");
}

/// SIGTERM, as a batch scheduler sends it, stops the search after the running trial, prints
/// what it verified, and exits 143.
#[test]
fn sigterm_stops_after_the_running_trial_and_exits_143() {
    let mut args = with_room(TINY_MODEL, 2 << 30);
    args.extend(["--strategy".to_string(), "doubling".to_string()]);
    let (code, stdout, rest) = interrupt_after(&args, 3, "TERM");
    assert_eq!(code, Some(143), "{rest}");
    assert!(
        stdout.contains("interrupted: the search stopped early"),
        "{stdout}"
    );
    assert!(stdout.contains("max batch size"), "{stdout}");
}

#[test]
fn isolated_trials_survive_an_aborting_trial_and_agree_with_in_process_ones() {
    let isolated = search(&[
        "--isolate",
        "--debug-abort-from",
        "8",
        "--max-batch",
        "64",
        "--strategy",
        "doubling",
    ]);
    let sizes: Vec<(u64, &str)> = isolated["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["batch_size"].as_u64().unwrap(),
                t["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        [
            (1, "fits"),
            (2, "fits"),
            (4, "fits"),
            (8, "oom"),
            (6, "fits"),
            (7, "fits")
        ]
    );
    let aborted = &isolated["trials"][3];
    assert!(
        aborted["detail"].as_str().unwrap().contains("SIGABRT"),
        "{aborted}"
    );
    assert_eq!(isolated["max_batch_size"], 7);

    // Without the abort, children measure what the process itself measures.
    let isolated = search(&["--isolate", "--max-batch", "64"]);
    let in_process = search(&["--max-batch", "64"]);
    assert_eq!(isolated["max_batch_size"], in_process["max_batch_size"]);
}

#[test]
fn guided_and_doubling_report_the_same_sizes_and_guided_runs_fewer_trials() {
    let guided = search(&["--strategy", "guided"]);
    let doubling = search(&["--strategy", "doubling"]);
    for key in [
        "max_batch_size",
        "largest_power_of_two",
        "recommended_batch_size",
    ] {
        assert_eq!(guided[key], doubling[key], "{key}");
    }
    let trials = |r: &Value| r["trials"].as_array().unwrap().len();
    assert!(
        trials(&guided) < trials(&doubling),
        "{} vs {}",
        trials(&guided),
        trials(&doubling)
    );
    assert_eq!(guided["settings"]["strategy"], "guided");
}

#[test]
fn accumulation_plan_memory_model_throughput_and_plot() {
    let plot = std::env::temp_dir().join(format!("maxbatch-plot-{}.svg", std::process::id()));
    let plot_arg = plot.to_string_lossy().into_owned();
    let r = search(&[
        "--dataset-size",
        "50000",
        "--target-batch",
        "512",
        "--world-size",
        "2",
        "--plot",
        &plot_arg,
    ]);
    let plan = &r["accumulation"];
    let micro = plan["micro_batch"].as_u64().unwrap();
    assert!(micro.is_power_of_two() && micro <= r["recommended_batch_size"].as_u64().unwrap());
    let global = plan["global_batch"].as_u64().unwrap();
    assert_eq!(
        global,
        micro * plan["accumulation_steps"].as_u64().unwrap() * 2
    );
    assert!(global >= 512 && global - micro * 2 < 512, "{plan}");
    assert_eq!(
        plan["optimizer_steps_per_epoch"],
        50_000u64.div_ceil(global)
    );
    let trials = r["trials"].as_array().unwrap();
    assert!(
        trials
            .iter()
            .any(|t| t["batch_size"] == micro && t["outcome"] == "fits"),
        "the micro-batch ran"
    );

    let model = &r["memory_model"];
    assert!(model["bytes_per_sample"].as_u64().unwrap() > 0);
    assert!(
        model["relative_error"].as_f64().unwrap().abs() < 0.1,
        "{model}"
    );
    for t in trials.iter().filter(|t| t["outcome"] == "fits") {
        let expected = t["batch_size"].as_f64().unwrap() / t["step_seconds"].as_f64().unwrap();
        assert!((t["samples_per_second"].as_f64().unwrap() - expected).abs() < 1e-6 * expected);
    }
    assert!(r["schedule"][0]["epoch_seconds"].as_f64().unwrap() > 0.0);
    // The plan has its own schedule row: the global batch's optimizer steps.
    let row = &r["schedule"][3];
    assert_eq!(row["label"], "accumulation");
    assert_eq!(row["batch_size"], global);
    assert_eq!(row["steps_per_epoch"], plan["optimizer_steps_per_epoch"]);
    assert!(row["epoch_seconds"].as_f64().unwrap() > 0.0, "{row}");

    let svg = std::fs::read_to_string(&plot).unwrap();
    // A 160 MiB budget is drawn in MiB, and the maximum is marked.
    assert!(svg.starts_with("<svg") && svg.contains("peak memory (MiB)"));
    assert!(
        svg.contains(&format!("max {}", r["max_batch_size"])),
        "{svg}"
    );
    std::fs::remove_file(&plot).ok();
}

#[test]
fn what_if_measures_each_change_and_answers_a_model_that_does_not_fit() {
    let base = [
        "--model",
        "transformer-tiny",
        "--device",
        "cpu",
        "--seq-len",
        "16",
    ];
    // Room for every change to fit a few samples (batch size 1 needs under 5 MiB above
    // what the model holds).
    let memory = above_held(&base, 35 * MIB);
    let output = maxbatch()
        .args(base)
        .args(["--memory", &memory, "--what-if", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report = json_of(&output);
    let rows = report["what_if"].as_array().unwrap();
    let changes: Vec<&str> = rows.iter().map(|r| r["change"].as_str().unwrap()).collect();
    assert_eq!(
        changes,
        [
            "--optimizer sgd",
            "--amp bf16",
            "--dtype bf16",
            "--seq-len 8",
            "--lora-rank 8"
        ]
    );
    assert!(rows
        .iter()
        .all(|r| r["measured"] == true && r["error"].is_null()));
    // Each row is the exact answer of a search with that change.
    let sgd = maxbatch()
        .args(base)
        .args(["--memory", &memory, "--optimizer", "sgd", "--json"])
        .output()
        .unwrap();
    assert_eq!(json_of(&sgd)["max_batch_size"], rows[0]["max_batch_size"]);

    // Between batch size 1's peak with SGD and with AdamW (whose moments and update
    // transient SGD does not have): batch size 1 does not fit as asked, but does with SGD.
    let sgd = held(&[&base[..], &["--optimizer", "sgd"]].concat()).batch_one;
    let adamw = held(&base).batch_one;
    assert!(sgd < adamw, "SGD peaked at {sgd}, AdamW at {adamw}");
    let output = maxbatch()
        .args(base)
        .args(["--memory", &bytes_flag((sgd + adamw) / 2), "--what-if"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("as asked            does not fit at batch size 1"),
        "{stdout}"
    );
    let sgd_row = stdout
        .lines()
        .find(|l| l.starts_with("--optimizer sgd"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let max: usize = sgd_row.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(max >= 1, "{sgd_row}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not fit even at batch size 1"));
    // Up front, how many searches follow; then each child's trials as they run.
    assert!(
        stderr.contains("what if: 5 more searches, one per change"),
        "{stderr}"
    );
    assert!(
        stderr.contains("what if --optimizer sgd (1 of 5):"),
        "{stderr}"
    );
    assert!(stderr.contains("\n  trial  1:"), "{stderr}");
}

#[test]
fn the_estimate_predicts_the_searched_maximum_and_labels_every_figure() {
    // The search measures transformer-tiny under 160 MiB; its budget also counts the
    // process's own heap (the matrix-multiply workspaces), which the estimate, counting the
    // step's tensors, leaves to the caller: given the budget less that heap, its predicted
    // maximum is the measured one to within a sample.
    let report = search(&[]);
    let device = &report["device"];
    let model = &report["memory_model"];
    let process = device["baseline_bytes"].as_u64().unwrap()
        - model["weights_bytes"].as_u64().unwrap()
        - model["optimizer_bytes"].as_u64().unwrap();
    let for_step = device["capacity_bytes"].as_u64().unwrap() - process;
    let output = maxbatch()
        .args(["estimate", "--model", "transformer-tiny", "--seq-len", "32"])
        .args(["--memory", &for_step.to_string(), "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let estimate = json_of(&output);
    assert_eq!(estimate["predicted"], true);
    let sizes = &estimate["plans"][0]["sizes"];
    let (predicted, measured) = (
        sizes["predicted_max"].as_i64().unwrap(),
        report["max_batch_size"].as_i64().unwrap(),
    );
    assert!(
        (predicted - measured).abs() <= 1,
        "predicted {predicted}, measured {measured}"
    );
    let phases: Vec<&str> = estimate["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["forward", "backward", "update"]);
    assert_eq!(estimate["batch_size"].as_i64(), Some(predicted));

    // A 7B config, no --memory: every named GPU, each with its assumed CUDA overhead; text
    // says PREDICTED.
    let output = maxbatch()
        .args(["estimate", "--config", &fixture("llama-2-7b.json")])
        .args(["--seq-len", "512", "--dtype", "bf16"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(text.contains("PREDICTED from the shapes alone"), "{text}");
    for gpu in ["l4", "a100-80gb", "h100-80gb", "h200"] {
        assert!(text.contains(gpu), "{gpu}: {text}");
    }
    assert!(text.contains("assumed: CUDA context"), "{text}");
}

#[test]
fn the_estimate_table_keeps_large_sizes_apart_and_says_when_nothing_fits() {
    // Predictions from the shapes alone, the same on every machine: nothing is measured.
    let args = ["estimate", "--model", "mlp", "--plan-for", "h200,64MiB"];
    let json = json_of(&maxbatch().args(args).arg("--json").output().unwrap());
    let output = maxbatch().args(args).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    // Seven-digit sizes on the H200: each column its own word, as in the JSON.
    let sizes = &json["plans"][0]["sizes"];
    assert!(
        sizes["predicted_max"].as_u64().unwrap() >= 1_000_000,
        "{sizes}"
    );
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.trim_start().starts_with("h200"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[5], sizes["predicted_max"].to_string(), "{text}");
    assert_eq!(
        row[6],
        sizes["predicted_power_of_two"].to_string(),
        "{text}"
    );
    assert_eq!(row[7], sizes["predicted_recommended"].to_string(), "{text}");
    // 64 MiB holds less than the weights and AdamW's transient: no size, and why.
    assert_eq!(json["plans"][1]["sizes"]["predicted_max"], 0);
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("64MiB "))
        .unwrap();
    assert!(row.contains("none"), "{row}");
    assert!(
        text.contains("64MiB: batch size 1 does not fit: its predicted peak is"),
        "{text}"
    );
}

#[test]
fn the_estimate_refuses_what_it_does_not_count() {
    // Refused before anything is counted: the budget does not matter.
    fails_cleanly(
        &["estimate", "--model", "cnn", "--memory", "1GiB"],
        "convolutions",
    );
    fails_cleanly(
        &["estimate", "--model", "mlp", "--seq-len", "16"],
        "--seq-len does not apply to mlp",
    );
    fails_cleanly(
        &["estimate", "--model", "mlp", "--margin", "1.5"],
        "--margin",
    );
}
