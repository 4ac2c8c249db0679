//! The search end to end: its sizes agree with `check`, its JSON and text, its strategies,
//! its accumulation, memory model and plot, its verification run, isolated trials.

use crate::common::{json_of, maxbatch, MIB};
use crate::helpers::{check, check_soak, search, tiny, tiny_budget};
use serde_json::Value;

#[test]
fn the_search_agrees_with_the_preflight_check() {
    let report = search(&["--dataset-size", "10000", "--epochs", "3"]);
    let max = report["max_batch_size"].as_u64().unwrap() as usize;
    assert!(max > 1, "{report}");
    assert_eq!(check(max), 0, "check at the max {max} should fit");
    assert_eq!(check(max + 1), 1, "check at {} should not fit", max + 1);
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

#[test]
fn every_strategy_reports_the_same_sizes_and_each_runs_fewer_trials_than_the_next() {
    let seeded = search(&[]);
    let guided = search(&["--strategy", "guided"]);
    let doubling = search(&["--strategy", "doubling"]);
    for key in [
        "max_batch_size",
        "largest_power_of_two",
        "recommended_batch_size",
    ] {
        assert_eq!(seeded[key], guided[key], "{key}");
        assert_eq!(guided[key], doubling[key], "{key}");
    }
    let trials = |r: &Value| r["search_trials"].as_u64().unwrap();
    assert!(
        trials(&seeded) < trials(&guided) && trials(&guided) < trials(&doubling),
        "{} vs {} vs {}",
        trials(&seeded),
        trials(&guided),
        trials(&doubling)
    );
    assert_eq!(seeded["settings"]["strategy"], "seeded");
    assert_eq!(guided["settings"]["strategy"], "guided");
    assert!(guided["seeding"].is_null() && doubling["seeding"].is_null());
}

/// The default search of a built-in model starts where the estimate from shapes meets the
/// capacity: with an estimate as close as this one, the answer is exact in two or three
/// trials, the maximum and the size after it among them.
#[test]
fn a_built_in_model_is_seeded_by_its_estimate_and_the_answer_is_exact() {
    for model in [
        tiny(),
        crate::common::with_room(&["--model", "mlp", "--device", "cpu"], 200 * MIB),
        // LoRA: the estimate counts the frozen weights and the adapters (docs/design.md).
        tiny()
            .into_iter()
            .chain(["--lora-rank", "8", "--lora-targets", "all-linear"].map(String::from))
            .collect(),
    ] {
        let output = maxbatch()
            .args(&model)
            .args(["--json", "--no-cache"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let r = json_of(&output);
        let max = r["max_batch_size"].as_u64().unwrap();
        let seeding = &r["seeding"];
        let trials = r["trials"].as_array().unwrap();
        let searched = r["search_trials"].as_u64().unwrap() as usize;
        assert_eq!(trials[0]["batch_size"], seeding["seed"], "{r}");
        assert!((2..=3).contains(&searched), "{searched} search trials: {r}");
        let ran = |b: u64, outcome: &str| {
            trials[..searched]
                .iter()
                .any(|t| t["batch_size"] == b && t["outcome"] == outcome)
        };
        assert!(ran(max, "fits") && ran(max + 1, "oom"), "{r}");
        // The first trial's measured peak against the estimate's prediction there.
        let first = &seeding["first_trial"];
        let (predicted, measured) = (
            first["predicted_peak_bytes"].as_f64().unwrap(),
            first["measured_peak_bytes"].as_f64().unwrap(),
        );
        assert!(
            (predicted - measured).abs() < 0.02 * measured,
            "{predicted} vs {measured}"
        );
        // The whole report: the search, the power of two and the recommended size, which
        // the model calibrated by the trials places right or one off.
        let corrections = seeding["recommended_corrections"].as_u64().unwrap() as usize;
        assert!(corrections <= 1, "{r}");
        assert!(trials.len() <= searched + 2 + corrections, "{r}");
    }
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
