//! Runs `--what-if`'s searches: each change is this very command with that change made,
//! run as a child `maxbatch` process, so that each row is exactly what the user gets by
//! running it (a search in this process would find the heap the first search left behind:
//! on transformer-tiny at 40 MiB that moved an answer by one).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use maxbatch::what_if::{Change, WhatIf};

/// Flags this command's children must not inherit: what only the parent does (the table
/// itself, plots, plans, a soak run) and the JSON switch, which every child gets. `true`
/// when the flag takes a value.
const PARENT_ONLY: &[(&str, bool)] = &[
    ("--what-if", false),
    ("--json", false),
    ("--plot", true),
    ("--plan-for", true),
    ("--verify-steps", true),
];

/// The flags `change` sets, which replace the parent's.
fn change_flags(change: Change) -> Vec<String> {
    change
        .to_string()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The arguments of the child that searches with `change`: `parent` (this process's
/// arguments, without the program) without the flags the child must not have or that the
/// change sets, then the change's flags and `--json`.
pub fn child_args(parent: &[OsString], change: Change) -> Vec<OsString> {
    let flags = change_flags(change);
    let replaced = flags[0].clone();
    let mut args = Vec::new();
    let mut tokens = parent.iter();
    while let Some(token) = tokens.next() {
        let text = token.to_string_lossy();
        let (name, inline_value) = match text.split_once('=') {
            Some((name, _)) => (name, true),
            None => (text.as_ref(), false),
        };
        let takes_value = if name == replaced {
            Some(true)
        } else {
            PARENT_ONLY
                .iter()
                .find(|(flag, _)| *flag == name)
                .map(|&(_, value)| value)
        };
        match takes_value {
            None => args.push(token.clone()),
            Some(true) if !inline_value => {
                tokens.next();
            }
            Some(_) => {}
        }
    }
    args.extend(flags.into_iter().map(OsString::from));
    args.push("--json".into());
    args
}

/// Searches with each change in a child process, one at a time, showing each child's
/// trials on stderr as they finish; a change that does not fit or cannot run here gets the
/// child's error as its row.
pub fn run(changes: &[Change]) -> Result<Vec<WhatIf>> {
    let program = std::env::current_exe().context("cannot find this program to run --what-if")?;
    let parent: Vec<OsString> = std::env::args_os().skip(1).collect();
    let list: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    eprintln!(
        "what if: {} more searches, one per change ({}), each as long as a search of its own",
        changes.len(),
        list.join(", ")
    );
    let mut rows = Vec::new();
    for (i, &change) in changes.iter().enumerate() {
        eprintln!("what if {change} ({} of {}):", i + 1, changes.len());
        rows.push(search(&program, &parent, change)?);
    }
    Ok(rows)
}

/// The search with `change` in a child process: its progress lines passed on to stderr as
/// they come, indented, and its row.
fn search(program: &std::path::Path, parent: &[OsString], change: Change) -> Result<WhatIf> {
    let mut child = Command::new(program)
        .args(child_args(parent, change))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {} for --what-if", program.display()))?;
    // Read on another thread: a report larger than the pipe would otherwise block the child
    // before it closes stderr.
    let mut stdout = child.stdout.take().context("the child's stdout")?;
    let report = std::thread::spawn(move || {
        let mut text = Vec::new();
        stdout.read_to_end(&mut text).map(|_| text)
    });
    let mut error = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("the child's stderr")?;
            match line.strip_prefix("error: ") {
                Some(message) => error = Some(message.to_string()),
                None => eprintln!("  {line}"),
            }
        }
    }
    let status = child.wait().context("waiting for a --what-if search")?;
    let stdout = report
        .join()
        .map_err(|_| anyhow::anyhow!("reading a --what-if search's report failed"))?
        .context("the child's report")?;
    Ok(row(change, status.success(), &stdout, error))
}

/// The row of `change` from its child's report (`stdout`), or its error.
fn row(change: Change, success: bool, stdout: &[u8], error: Option<String>) -> WhatIf {
    match serde_json::from_slice::<maxbatch::Report>(stdout) {
        Ok(report) if success && !report.interrupted => WhatIf::measured(change, &report),
        _ => WhatIf::failed(
            change,
            error.as_deref().unwrap_or("the search did not finish"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxbatch::OptimizerKind;

    fn args(text: &str) -> Vec<OsString> {
        text.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn a_child_gets_the_parents_flags_with_the_change_made() {
        let parent = args(
            "--model transformer-tiny --optimizer adamw --what-if --plot p.svg \
             --plan-for=l4 --memory 40MiB --json --verify-steps 3 --seq-len=64",
        );
        assert_eq!(
            child_args(&parent, Change::Optimizer(OptimizerKind::Sgd)),
            args("--model transformer-tiny --memory 40MiB --seq-len=64 --optimizer sgd --json")
        );
        assert_eq!(
            child_args(&parent, Change::SeqLen(32)),
            args("--model transformer-tiny --optimizer adamw --memory 40MiB --seq-len 32 --json")
        );
    }
}
