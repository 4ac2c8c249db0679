//! Answers a user can trust on every path (one test per point of the issue that asked for
//! them): the default CPU budget measured, not predicted; a cache that sees every setting and can be refreshed; nothing lost to a bad output path; flags that do
//! not apply refused; what `check` says.

mod common;

use common::{
    above_held, held, maxbatch_caching_in as maxbatch, succeeded as json, with_room, MIB,
};
use serde_json::Value;

const TINY: &[&str] = &[
    "--model",
    "transformer-tiny",
    "--device",
    "cpu",
    "--seq-len",
    "32",
];

fn trial_at(report: &Value, batch_size: u64) -> Option<&Value> {
    report["trials"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|t| t["batch_size"] == batch_size)
}

/// The default budget on a small machine (injected: 200 MiB available) gives the same
/// maximum as `--memory` equal to that budget, and the size after it ran and was measured
/// out of memory, in both runs: no prediction decides the answer.
#[test]
fn the_default_cpu_budget_is_measured_like_an_explicit_one() {
    // A machine with about 155 MiB for the step's tensors once the budget, 80% of what is
    // available plus what the process holds, is taken (the default budget's rule).
    let held = held(TINY).bytes;
    let available = ((155 * MIB + held / 5) as f64 / 0.8) as u64;
    let available = available.to_string();
    let default = json(
        maxbatch("default")
            .env("MAXBATCH_TEST_AVAILABLE_BYTES", &available)
            .args(TINY)
            .args(["--json", "--no-cache"]),
    );
    assert_eq!(default["device"]["capacity_source"], "mem_available");
    let budget = default["device"]["capacity_bytes"].as_u64().unwrap();
    let explicit = json(
        maxbatch("explicit")
            .env("MAXBATCH_TEST_AVAILABLE_BYTES", &available)
            .args(TINY)
            .args(["--json", "--no-cache", "--memory", &format!("{budget}B")]),
    );
    assert_eq!(explicit["device"]["capacity_bytes"], budget);
    for report in [&default, &explicit] {
        let max = report["max_batch_size"].as_u64().unwrap();
        assert_eq!(max, default["max_batch_size"].as_u64().unwrap(), "{report}");
        let next = trial_at(report, max + 1).expect("the size after the maximum was tried");
        assert_eq!(next["outcome"], "oom", "{next}");
        assert_eq!(
            next["predicted"], false,
            "max + 1 was refused by prediction: {next}"
        );
        assert!(next["peak_bytes"].as_u64().unwrap() > budget, "{next}");
        assert_eq!(report["unmeasured_boundary"], Value::Null);
    }
}

/// Where the machine, not the budget, bounds the search, the guard's prediction decides;
/// the headline, the JSON and the plot say so.
#[test]
fn a_maximum_bounded_by_prediction_says_so() {
    // A machine whose guard (95% of what is available and held) leaves about 55 MiB for
    // the step's tensors, under a budget of 2 GiB above what the model holds.
    let held = held(TINY).bytes;
    let available = (((55 * MIB + held) as f64 / 0.95) as u64).to_string();
    let memory = above_held(TINY, 2 << 30);
    let plot = std::env::temp_dir().join(format!("maxbatch-trust-{}.svg", std::process::id()));
    let output = maxbatch("predicted")
        .env("MAXBATCH_TEST_AVAILABLE_BYTES", &available)
        .args(TINY)
        .args(["--memory", &memory, "--no-cache", "--plot"])
        .arg(&plot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("PREDICTED, not measured"), "{stdout}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("not run: predicted"), "no marker in the plot");
    std::fs::remove_file(&plot).ok();

    let report = json(
        maxbatch("predicted-json")
            .env("MAXBATCH_TEST_AVAILABLE_BYTES", &available)
            .args(TINY)
            .args(["--memory", &memory, "--no-cache", "--json"]),
    );
    let boundary = report["unmeasured_boundary"].as_u64().expect("a boundary");
    assert_eq!(trial_at(&report, boundary).unwrap()["predicted"], true);
}

/// The dataset size and epochs only change the schedule: a second run with other epochs is
/// answered from the cache, says so, and has the schedule of its own epochs. `--no-cache`
/// measures again and replaces the entry.
#[test]
fn the_cache_recomputes_the_schedule_and_no_cache_refreshes_it() {
    let memory = above_held(TINY, 43 * MIB);
    let run = |extra: &[&str]| {
        json(
            maxbatch("schedule")
                .args(TINY)
                .args(["--memory", &memory, "--json", "--dataset-size", "1000"])
                .args(extra),
        )
    };
    let first = run(&["--epochs", "3"]);
    assert_eq!(first["from_cache"], false);
    let second = run(&["--epochs", "5"]);
    assert_eq!(
        second["from_cache"], true,
        "another epoch count measured again"
    );
    assert_eq!(second["trials"], first["trials"]);
    let steps = |r: &Value| r["schedule"][0]["total_steps"].as_u64().unwrap();
    assert_eq!(steps(&second) * 3, steps(&first) * 5);
    assert_eq!(second["dataset"]["epochs"], 5);

    let refreshed = run(&["--epochs", "3", "--no-cache"]);
    assert_eq!(refreshed["from_cache"], false);
    let third = run(&["--epochs", "3"]);
    assert_eq!(third["from_cache"], true);
    // The entry now holds the refreshed trials, not the first run's (their timings differ).
    assert_eq!(third["trials"], refreshed["trials"]);
    assert_ne!(third["trials"], first["trials"]);
}

/// An output path that cannot be written fails before the first trial, not after minutes
/// of them.
#[test]
fn an_unwritable_plot_fails_before_any_trial() {
    let output = maxbatch("plot")
        .args(with_room(TINY, 43 * MIB))
        .args(["--no-cache", "--plot", "/nonexistent-dir/x.svg"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot write the plot"), "{stderr}");
    assert!(!stderr.lines().any(|l| l.starts_with("trial")), "{stderr}");
}

/// A flag that does not apply to the model, or a size whose unit is ambiguous, is refused
/// with exit 2 before any trial.
#[test]
fn flags_that_do_not_apply_and_ambiguous_units_are_refused() {
    for (args, needle) in [
        (
            &["--model", "mlp", "--device", "cpu", "--seq-len", "0"][..],
            "--seq-len does not apply to mlp",
        ),
        (
            &[
                "--model",
                "transformer-tiny",
                "--device",
                "cpu",
                "--image-size",
                "16",
            ][..],
            "--image-size does not apply",
        ),
        (
            &["--model", "cnn", "--device", "cpu", "--seq-len", "16"][..],
            "--seq-len does not apply to cnn",
        ),
        (
            &["--model", "mlp", "--device", "cpu", "--memory", "4Gb"][..],
            "powers of 1024",
        ),
    ] {
        let output = maxbatch("flags").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.lines().any(|l| l.starts_with("trial")), "{stderr}");
    }
}

/// `check` says how much of the capacity the size used, and warnings in a log file carry no
/// colour codes.
#[cfg(not(feature = "cuda"))]
#[test]
fn check_prints_the_share_of_the_budget_and_logs_have_no_colour_codes() {
    // Room for a few samples above what the model holds (on the CPU it falls back to).
    let budget = held(TINY).bytes + 43 * MIB;
    let output = maxbatch("check")
        .arg("check")
        .args([
            "--model",
            "transformer-tiny",
            "--seq-len",
            "32",
            "--device",
            "cuda:0",
        ])
        .args(["--memory", &common::bytes_flag(budget), "--batch-size", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("fits on cpu: peak"), "{stdout}");
    let share = format!("% of the budget {}", maxbatch::format::bytes(budget));
    assert!(stdout.contains(&share), "{stdout}");
    assert!(stderr.contains("WARN"), "the CPU fallback warns: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
}

/// In this process, in child processes (`--isolate`) and in a fresh `check`, a size fits or
/// not alike: the search's maximum fits when checked and the size after it does not, and the
/// isolated search finds the same maximum, on every family.
#[test]
fn the_search_check_and_isolated_trials_agree_on_every_family() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let llama = format!("{fixtures}/tiny-llama.json");
    // Each with room for a few samples above what it holds here.
    let families: [(&[&str], u64); 3] = [
        (&["--model", "mlp", "--device", "cpu"], 92 * MIB),
        (
            &["--model", "cnn", "--image-size", "8", "--device", "cpu"],
            349 * MIB,
        ),
        (
            &["--config", &llama, "--seq-len", "16", "--device", "cpu"],
            60 * MIB,
        ),
    ];
    for (model, room) in families {
        let family = with_room(model, room);
        let search = |extra: &[&str]| {
            json(
                maxbatch("agree")
                    .args(&family)
                    .args(["--no-cache", "--json"])
                    .args(extra),
            )
        };
        let report = search(&[]);
        let max = report["max_batch_size"].as_u64().unwrap();
        for (size, fits) in [(max, true), (max + 1, false)] {
            let output = maxbatch("agree")
                .arg("check")
                .args(&family)
                .args(["--no-cache", "--batch-size"])
                .arg(size.to_string())
                .output()
                .unwrap();
            let expected = if fits { 0 } else { 1 };
            assert_eq!(
                output.status.code(),
                Some(expected),
                "{family:?} check {size}: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        assert_eq!(search(&["--isolate"])["max_batch_size"], max, "{family:?}");
    }
}

/// The test knob that stands in for another machine (`MAXBATCH_TEST_WORKSPACE_OFFSET`): the
/// process holds that much more, or less, before every trial, and every peak moves with it,
/// byte for byte, so a budget derived from what was measured means the same everywhere.
#[test]
fn the_workspace_offset_moves_what_every_trial_finds_held() {
    let measure = |offset: Option<&str>| {
        let mut cmd = maxbatch("offset");
        match offset {
            Some(offset) => cmd.env("MAXBATCH_TEST_WORKSPACE_OFFSET", offset),
            None => cmd.env_remove("MAXBATCH_TEST_WORKSPACE_OFFSET"),
        };
        // 1 GiB: far more than batch size 2 of this model needs on any machine; what is
        // compared is what the trials count, not whether they fit.
        let report = json(cmd.args(TINY).args([
            "--memory",
            "1GiB",
            "--max-batch",
            "2",
            "--json",
            "--no-cache",
        ]));
        let baseline = report["device"]["baseline_bytes"].as_u64().unwrap();
        let peaks: Vec<u64> = report["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["peak_bytes"].as_u64().unwrap())
            .collect();
        (baseline, peaks)
    };
    // The same trial in two processes differs by a few bytes of lazily created state.
    let close = |a: u64, b: u64| a.abs_diff(b) < 4096;
    let (baseline, peaks) = measure(None);
    let (more, more_peaks) = measure(Some("+8MiB"));
    assert!(close(more, baseline + 8 * MIB), "{baseline} then {more}");
    for (with, without) in more_peaks.iter().zip(&peaks) {
        assert!(
            close(*with, without + 8 * MIB),
            "{peaks:?} then {more_peaks:?}"
        );
    }
    // Less: at most what the thread pool's workspaces hold on this machine.
    let (less, less_peaks) = measure(Some("-1MiB"));
    let removed = baseline.saturating_sub(less);
    assert!(
        removed > MIB / 2 && removed < MIB + 4096,
        "{baseline} then {less}"
    );
    for (with, without) in less_peaks.iter().zip(&peaks) {
        assert!(
            close(with + removed, *without),
            "{peaks:?} then {less_peaks:?}"
        );
    }
}
