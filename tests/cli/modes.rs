//! Training modes and questions beyond one search: a sequence-length sweep, mixed
//! precision and LoRA, `--what-if`.

use crate::common::{above_held, bytes_flag, held, json_of, maxbatch, MIB};
use crate::helpers::{search, tiny, tiny_budget};

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
