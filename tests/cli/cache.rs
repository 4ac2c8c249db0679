//! The result cache: a repeated search answers from it, a corrupt file is rewritten, a
//! cache path that is a file is named as such.

use crate::common::{bytes_flag, json_of, maxbatch, MIB};
use crate::helpers::{tiny, tiny_budget, TINY_MODEL};

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
    let files: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        stderr.contains("cached result"),
        "no cached answer; the cache holds {files:?}: {stderr}"
    );
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
