//! Ctrl-C and SIGTERM stop a search after the running trial, with the sizes so far.

use crate::common::with_room;
use crate::helpers::TINY_MODEL;

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
    let trials = 2;
    // Room for hundreds of samples: the report is far from done after two trials (the
    // seeded search's two, before the power of two and the recommended size).
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
