//! What the binary's tests share: the binary with a result cache of its own, and budgets
//! derived from what the process holds on the machine the tests run on.
//!
//! What a process holds before any trial differs from machine to machine: candle's CPU
//! matrix products give every thread an L2-sized workspace (6 MiB on one 2-core machine, 3
//! on another, far more with many cores). So no test gives a budget as a bare figure: it
//! measures what a model holds here ([`held`]) and sets the budget that far above it
//! ([`above_held`]). Everything above what is held is the step's own tensors, whose bytes
//! are the same on every machine. CI runs these tests again with the process holding more
//! and less (`MAXBATCH_TEST_WORKSPACE_OFFSET`, see docs/design.md).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use assert_cmd::Command;
use serde_json::Value;

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// The binary, with a result cache of its own so that no command answers from another's.
pub fn maxbatch() -> Command {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::SeqCst);
    maxbatch_caching_in(&format!("run-{run}"))
}

/// The binary with the result cache `cache` names (every command given the same name shares
/// it, within this test binary).
pub fn maxbatch_caching_in(cache: &str) -> Command {
    let dir = std::env::temp_dir().join(format!("maxbatch-test-{}-{cache}", std::process::id()));
    let mut cmd = Command::cargo_bin("maxbatch").unwrap();
    cmd.env_remove("RUST_LOG").env("MAXBATCH_CACHE", dir);
    cmd
}

/// What `cmd` prints as JSON, after it succeeded (or a panic with its stderr).
pub fn succeeded(cmd: &mut Command) -> Value {
    let output = cmd.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    json_of(&output)
}

/// stdout as JSON, or a panic that shows both streams.
pub fn json_of(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// What a model holds on this machine, measured.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    /// The bytes every trial counts as held before it: the weights, the optimizer state
    /// and this machine's matrix-multiply workspaces (the report's `baseline_bytes`).
    pub bytes: u64,
    /// The peak of a trial at batch size 1.
    pub batch_one: u64,
}

/// What the model `args` describe (model, device and training flags, no `--memory`)
/// holds on this machine, and its peak at batch size 1: measured once per test binary by a
/// search capped at batch size 1 under a budget no test model comes near.
pub fn held(args: &[&str]) -> Held {
    static MEASURED: OnceLock<Mutex<HashMap<Vec<String>, Held>>> = OnceLock::new();
    let key: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let measured = MEASURED.get_or_init(Default::default);
    if let Some(held) = measured.lock().unwrap().get(&key) {
        return *held;
    }
    let output = maxbatch()
        .args(args)
        .args([
            "--memory",
            "4GiB",
            "--max-batch",
            "1",
            "--json",
            "--no-cache",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report = json_of(&output);
    let held = Held {
        bytes: report["device"]["baseline_bytes"].as_u64().unwrap(),
        batch_one: report["trials"][0]["peak_bytes"].as_u64().unwrap(),
    };
    // Two tests may measure at once; the first figure stored is everyone's, so that one
    // test's two calls give the same budget (the figures differ by a few bytes run to run).
    *measured.lock().unwrap().entry(key).or_insert(held)
}

/// A `--memory` value `room` bytes above what the model `args` describe holds here: the
/// budget a test means when it says "this much for the step's tensors".
pub fn above_held(args: &[&str], room: u64) -> String {
    bytes_flag(held(args).bytes + room)
}

/// `bytes` as a `--memory` value.
pub fn bytes_flag(bytes: u64) -> String {
    format!("{bytes}B")
}

/// `args` followed by `--memory` `room` bytes above what they hold.
pub fn with_room(args: &[&str], room: u64) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--memory".to_string(), above_held(args, room)]);
    all
}
