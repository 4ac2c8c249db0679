//! What the CLI tests share: transformer-tiny under a budget derived from what it holds
//! here, the search and `check` it runs, a clean failure, a fixture's path.

use crate::common::{held, json_of, maxbatch, with_room, MIB};
use serde_json::Value;

/// transformer-tiny at 32 tokens on the CPU, without a budget.
pub const TINY_MODEL: &[&str] = &[
    "--model",
    "transformer-tiny",
    "--device",
    "cpu",
    "--seq-len",
    "32",
];

/// The room the tiny searches have above what the model holds: about 30 samples, well clear
/// of batch size 1 and of the 65,536 cap.
pub const TINY_ROOM: u64 = 155 * MIB;

/// transformer-tiny at 32 tokens under a budget of [`TINY_ROOM`] above what it holds here.
pub fn tiny() -> Vec<String> {
    with_room(TINY_MODEL, TINY_ROOM)
}

/// The budget [`tiny`] gives, in bytes.
pub fn tiny_budget() -> u64 {
    held(TINY_MODEL).bytes + TINY_ROOM
}

pub fn search(extra: &[&str]) -> Value {
    let output = maxbatch()
        .args(tiny())
        .args(["--json"])
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    json_of(&output)
}

pub fn check(batch_size: usize) -> i32 {
    let output = maxbatch()
        .arg("check")
        .args(tiny())
        .args(["--batch-size", &batch_size.to_string()])
        .output()
        .unwrap();
    output.status.code().unwrap_or(-1)
}

/// `check` at `batch_size` as a soak test of `steps` steps.
pub fn check_soak(batch_size: &str, steps: usize) -> std::process::Output {
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

/// Runs the binary, expects exit code 2 and a single clear error line naming `needle`.
pub fn fails_cleanly(args: &[&str], needle: &str) {
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

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}
