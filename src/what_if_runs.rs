//! Runs `--what-if`'s searches: each change is this very command with that change made,
//! run as a child `maxbatch` process, so that each row is exactly what the user gets by
//! running it (a search in this process would find the heap the first search left behind:
//! on transformer-tiny at 40 MiB that moved an answer by one).

use std::ffi::OsString;
use std::process::Command;

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

/// Searches with each change in a child process, one at a time; a change that does not fit
/// or cannot run here gets the child's error as its row.
pub fn run(changes: &[Change], json: bool) -> Result<Vec<WhatIf>> {
    let program = std::env::current_exe().context("cannot find this program to run --what-if")?;
    let parent: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut rows = Vec::new();
    for &change in changes {
        if !json {
            eprintln!("what if {change}: searching…");
        }
        let output = Command::new(&program)
            .args(child_args(&parent, change))
            .output()
            .with_context(|| format!("cannot run {} for --what-if", program.display()))?;
        rows.push(row(change, &output));
    }
    Ok(rows)
}

/// The row of `change` from its child's output: the report's sizes, or its error.
fn row(change: Change, output: &std::process::Output) -> WhatIf {
    match serde_json::from_slice::<maxbatch::Report>(&output.stdout) {
        Ok(report) if output.status.success() && !report.interrupted => {
            WhatIf::measured(change, &report)
        }
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let error = stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or("the search did not finish");
            WhatIf::failed(change, error)
        }
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
