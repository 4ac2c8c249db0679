//! Child trials with shell scripts for children: killed, crashed, hung, calibrated.

use super::*;
use crate::trial::Outcome;

/// A child that is a shell script: `sh -c SCRIPT trial --batch-size B [--memory M]
/// [--steps N]` (the script sees the batch size as $2).
struct Shell(String);

impl TrialProcess for Shell {
    fn command(&self, request: ChildRequest) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", &self.0, "trial", "--batch-size"]);
        command.arg(request.batch_size.to_string());
        if let Some(bytes) = request.capacity {
            command.args(["--memory", &bytes.to_string()]);
        }
        if let Some(steps) = request.steps {
            command.args(["--steps", &steps.to_string()]);
        }
        command
    }
}

fn shell(script: &str) -> ChildProcessTrials {
    ChildProcessTrials::new(Box::new(Shell(script.to_string())), None)
}

#[test]
fn a_child_killed_for_memory_is_out_of_memory() {
    let trial = shell("echo 'memory allocation of 4096 bytes failed' >&2; kill -ABRT $$")
        .trial(8, Purpose::Measure)
        .unwrap();
    assert_eq!((trial.batch_size, trial.outcome), (8, Outcome::Oom));
    assert!(trial.detail.unwrap().contains("signal 6 (SIGABRT"));
    let trial = shell("kill -KILL $$").trial(8, Purpose::Measure).unwrap();
    assert_eq!(trial.outcome, Outcome::Oom);
    assert!(trial.detail.unwrap().contains("signal 9"));
}

#[test]
fn a_child_that_crashes_stops_the_search_naming_the_signal() {
    for (script, name) in [
        ("kill -SEGV $$", "SIGSEGV"),
        ("kill -BUS $$", "SIGBUS"),
        ("kill -ILL $$", "SIGILL"),
        // A panic that aborts (panic = "abort") prints its message, not an allocation failure.
        (
            "echo 'thread main panicked at src/x.rs' >&2; kill -ABRT $$",
            "SIGABRT",
        ),
    ] {
        let err = shell(script)
            .trial(8, Purpose::Measure)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name) && err.contains("not out of memory"),
            "{script}: {err}"
        );
    }
}

#[test]
fn a_child_that_fails_stops_the_search_with_its_message() {
    let err = shell("echo 'error: shape mismatch' >&2; exit 2")
        .trial(4, Purpose::Measure)
        .unwrap_err();
    assert!(err.to_string().contains("shape mismatch"), "{err}");
    let err = shell("echo not json")
        .trial(4, Purpose::Measure)
        .unwrap_err();
    assert!(err.to_string().contains("printed no trial"), "{err}");
}

fn fitting(batch_size: usize) -> Trial {
    Trial {
        peak_bytes: Some(1234),
        phase_peaks: vec![crate::trial::PhasePeak {
            phase: crate::Phase::Backward,
            peak_bytes: 1200,
        }],
        step_peaks: vec![1234, 1230],
        step_seconds: Some(0.5),
        step_times: vec![0.7, 0.5],
        samples_per_second: Some(8.0),
        steps: 2,
        ..Trial::new(batch_size, Outcome::Fits)
    }
}

/// What a child prints for `trial` against `capacity` bytes.
fn printed(trial: Trial, capacity: u64) -> String {
    serde_json::to_string(&ChildTrial {
        trial,
        capacity: Capacity {
            bytes: capacity,
            source: crate::memory::CapacitySource::Device,
            is_budget: false,
        },
        overhead_bytes: Some(500),
        meter: "a pool".into(),
    })
    .unwrap()
}

#[test]
fn a_childs_trial_comes_back_whole() {
    let json = printed(fitting(4), 1 << 30);
    let got = shell(&format!("echo '{json}'"))
        .trial(4, Purpose::Measure)
        .unwrap();
    assert_eq!(got, fitting(4));
}

#[test]
fn the_first_child_measures_the_capacity_every_later_child_is_given() {
    // The script prints its own arguments' --memory as the capacity it measured when
    // it was given one, else 7000 (what it "read after its warm-up step").
    let dir = std::env::temp_dir().join(format!("maxbatch-calibrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runs = dir.join("runs");
    let _ = std::fs::remove_file(&runs);
    let script = format!(
        "echo run >> {runs}; memory=7000; prev=''; for a in \"$@\"; do \
         [ \"$prev\" = --memory ] && memory=$a; prev=$a; done; \
         echo \"$memory\" > {dir}/memory; echo '{json}'",
        runs = runs.display(),
        dir = dir.display(),
        json = printed(fitting(1), 7000)
    );
    let mut children = shell(&script);
    let device = children.calibrate(1).unwrap();
    assert_eq!(device.capacity.bytes, 7000);
    assert_eq!(device.overhead_bytes, Some(500));
    // The search's first trial is the calibration's: no second child.
    assert_eq!(children.trial(1, Purpose::Measure).unwrap(), fitting(1));
    let count = || std::fs::read_to_string(&runs).unwrap().lines().count();
    assert_eq!(count(), 1);
    // Later children are given the measured capacity.
    children.trial(1, Purpose::Measure).unwrap();
    assert_eq!(count(), 2);
    let given = std::fs::read_to_string(dir.join("memory")).unwrap();
    assert_eq!(given.trim(), "7000");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_hung_child_is_stopped_and_is_an_error_naming_its_size() {
    let json = printed(fitting(2), 1 << 30);
    // Each child sleeps as long as its batch size says, in tenths of a second.
    let script = format!("sleep \"0.$(( $2 ))\"; echo '{json}'");
    let mut children = shell(&script).timeout_floor(Duration::from_millis(150));
    // The first child has only the floor; 0.1 s fits in it.
    children.trial(1, Purpose::Measure).unwrap();
    // Then ten times the slowest so far plus the floor: about 1.15 s, which 0.8 s fits.
    children.trial(8, Purpose::Measure).unwrap();
    // A child that never ends is stopped once the slowest (0.8 s) times ten and the
    // floor have passed.
    let mut hung = shell("sleep 30").timeout_floor(Duration::from_millis(150));
    let started = Instant::now();
    let error = hung.trial(5, Purpose::Measure).unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
    assert!(
        error.contains("batch size 5") && error.contains("not counted as out of memory"),
        "{error}"
    );
}
