//! The documentation shows what this build prints.
//!
//! Every ```` ```text ```` block in README.md and docs/*.md whose first line is
//! `$ maxbatch ARGS` is an output block: the rest is what `maxbatch ARGS --no-cache` prints
//! (stdout, then the `error:` line a failing command prints on stderr). The ignored test
//! below runs each command with this build and compares: numbers may differ (they are
//! measured, and the machine moves them), but every line must say the same words in the same
//! order, so a block that a change of output left stale fails loudly.
//! `scripts/doc-outputs.sh` runs it (CI does); `scripts/doc-outputs.sh --write` rewrites the
//! blocks from this build.

mod common;

use std::path::{Path, PathBuf};

/// One output block: where it is, the command, and the lines shown.
struct Block {
    file: PathBuf,
    /// The line index (0-based) of the `$ maxbatch` line.
    command_line: usize,
    args: Vec<String>,
    shown: Vec<String>,
}

/// The files whose output blocks are checked.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The output blocks of `file`.
fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let command = lines.get(i + 1).and_then(|l| l.strip_prefix("$ maxbatch "));
        if let (true, Some(command)) = (lines[i] == "```text", command) {
            let end = (i + 2..lines.len())
                .find(|&j| lines[j] == "```")
                .unwrap_or_else(|| panic!("{}:{}: an unclosed block", file.display(), i + 1));
            found.push(Block {
                file: file.to_path_buf(),
                command_line: i + 1,
                args: command.split_whitespace().map(str::to_string).collect(),
                shown: lines[i + 2..end].iter().map(|l| l.to_string()).collect(),
            });
            i = end;
        }
        i += 1;
    }
    found
}

/// What `maxbatch args` prints (measured afresh: `--no-cache` for the commands that run
/// trials), as the documentation shows it: stdout, then stderr's `error:` lines (the
/// progress lines on stderr are left out).
fn printed(args: &[String]) -> Vec<String> {
    let measures = !matches!(
        args.first().map(String::as_str),
        Some("estimate" | "models")
    );
    let mut command = common::maxbatch();
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("MAXBATCH_TEST_WORKSPACE_OFFSET")
        .args(args);
    if measures {
        command.arg("--no-cache");
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut lines: Vec<String> = stdout.lines().map(|l| l.trim_end().to_string()).collect();
    while lines.first().is_some_and(|l| l.is_empty()) {
        lines.remove(0);
    }
    lines.extend(
        stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .map(str::to_string),
    );
    lines
}

/// A line's words: every number (with its separators and decimals) becomes `#`, and runs of
/// spaces one space, so that measured figures and the column widths they take may differ.
fn shape(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let digit = |i: usize| chars.get(i).is_some_and(|c| c.is_ascii_digit());
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if digit(i) {
            // A decimal point or a thousands separator continues a number when a digit
            // follows it; a full stop or a comma after a number does not.
            while digit(i + 1) || (matches!(chars.get(i + 1), Some('.' | ',')) && digit(i + 2)) {
                i += 1;
            }
            out.push('#');
        } else if chars[i] == ' ' {
            while chars.get(i + 1) == Some(&' ') {
                i += 1;
            }
            out.push(' ');
        } else {
            out.push(chars[i]);
        }
        i += 1;
    }
    out.trim().to_string()
}

#[test]
fn shapes_keep_the_words_and_drop_the_figures() {
    assert_eq!(
        shape("max batch size       3  peak 3.8 GiB, 96.2% of capacity"),
        shape("max batch size      12  peak 13.75 GiB, 9.0% of capacity")
    );
    assert_ne!(shape("1 fits"), shape("1 out of memory"));
    assert_eq!(shape("50,000 samples, 3 epochs."), "# samples, # epochs.");
}

#[test]
#[ignore = "runs every documented command (a few minutes); CI runs it through scripts/doc-outputs.sh"]
fn every_output_block_is_what_this_build_prints() {
    let write = std::env::var_os("MAXBATCH_WRITE_DOCS").is_some();
    let mut stale = Vec::new();
    for file in documents() {
        let found = blocks(&file);
        if found.is_empty() {
            continue;
        }
        let mut lines: Vec<String> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        // From the last block up, so that rewriting one keeps the others' line numbers.
        for block in found.iter().rev() {
            let now = printed(&block.args);
            let differs = block.shown.len() != now.len()
                || block
                    .shown
                    .iter()
                    .zip(&now)
                    .any(|(a, b)| shape(a) != shape(b));
            if write {
                let body = block.command_line + 1..block.command_line + 1 + block.shown.len();
                lines.splice(body, now);
            } else if differs {
                stale.push(format!(
                    "{}:{}: `maxbatch {}` now prints:\n{}\n\nthe block shows:\n{}",
                    block.file.display(),
                    block.command_line + 1,
                    block.args.join(" "),
                    now.join("\n"),
                    block.shown.join("\n")
                ));
            }
        }
        if write {
            std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        }
    }
    assert!(
        stale.is_empty(),
        "stale output blocks (scripts/doc-outputs.sh --write regenerates them):\n\n{}",
        stale.join("\n\n")
    );
}

/// The library section's `Cargo.toml` lines name the candle this crate is built with: the
/// caller's `Device` and `Tensor` must be the same crate's.
#[test]
fn the_readme_names_the_candle_version_maxbatch_builds_with() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for krate in ["candle-core", "candle-nn"] {
        let line = manifest
            .lines()
            .find(|l| l.starts_with(&format!("{krate} = ")))
            .unwrap();
        assert!(
            readme.contains(line),
            "README's Cargo.toml lines lack `{line}`"
        );
    }
}
