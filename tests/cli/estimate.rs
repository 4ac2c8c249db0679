//! `maxbatch estimate`: predictions from shapes, labelled, against the searched maximum.

use crate::common::{json_of, maxbatch};
use crate::helpers::{fails_cleanly, fixture, search};

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
