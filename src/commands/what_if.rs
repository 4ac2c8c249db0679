//! `--what-if`: the changes a user could make to train a larger batch (or to fit at all),
//! each measured by a search of its own: the optimizer, the precision, the sequence length,
//! LoRA. Each is this very search with that change made to its resolved value, run as a
//! child `maxbatch`, so that each row is exactly what the user gets by running it (a search
//! in this process would find the heap the first search left behind: on transformer-tiny
//! at 40 MiB that moved an answer by one).

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use candle_core::DType;
use maxbatch::models::lora::LoraOptions;
use maxbatch::models::Architecture;
use maxbatch::{OptimizerKind, Report};

use crate::output::answer::WhatIf;
use crate::resolve::Search;

/// The rank `--what-if` tries LoRA at (PEFT's examples' usual rank).
pub const WHAT_IF_LORA_RANK: usize = 8;

/// One change to the training setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Another optimizer (SGD keeps no state).
    Optimizer(OptimizerKind),
    /// Mixed precision in this half dtype.
    Amp(DType),
    /// Everything in this dtype.
    Dtype(DType),
    /// This many tokens per sample.
    SeqLen(usize),
    /// LoRA adapters of this rank on the family's default targets.
    Lora(usize),
}

impl fmt::Display for Change {
    /// The flags that make the change, e.g. `--optimizer sgd`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Optimizer(o) => write!(f, "--optimizer {o}"),
            Change::Amp(d) => write!(f, "--amp {}", d.as_str()),
            Change::Dtype(d) => write!(f, "--dtype {}", d.as_str()),
            Change::SeqLen(n) => write!(f, "--seq-len {n}"),
            Change::Lora(r) => write!(f, "--lora-rank {r}"),
        }
    }
}

impl Change {
    /// `search` with this change made.
    fn applied_to(self, search: &Search) -> Search {
        let mut changed = search.clone();
        let trials = &mut changed.trials;
        let options = &mut trials.model.options;
        match self {
            Change::Optimizer(o) => {
                trials.optimizer = o;
                changed.settings.optimizer = Some(o);
            }
            Change::Amp(d) => options.amp = Some(d),
            Change::Dtype(d) => options.dtype = d,
            Change::SeqLen(n) => options.seq_len = Some(n),
            Change::Lora(rank) => {
                options.lora = Some(LoraOptions {
                    rank,
                    alpha: 16,
                    targets: Vec::new(),
                })
            }
        }
        changed
    }
}

/// The changes that apply to the search as asked, one at a time: SGD instead of AdamW,
/// bf16 mixed precision and all-bf16 instead of f32, half the sequence length
/// (transformers), LoRA (transformers and Llama-family configs, when every weight is
/// trained).
pub fn changes(search: &Search) -> Vec<Change> {
    let model = &search.trials.model;
    let options = &model.options;
    let mut changes = Vec::new();
    // The optimizer and LoRA change what training holds; an evaluation or a generation on
    // its own keeps no optimizer state and trains nothing, and a generation's length is its
    // prompt and new tokens.
    let mode = options.mode;
    if search.trials.optimizer != OptimizerKind::Sgd && mode.keeps_training_state() {
        changes.push(Change::Optimizer(OptimizerKind::Sgd));
    }
    if options.dtype == DType::F32 && options.amp.is_none() {
        changes.push(Change::Amp(DType::BF16));
        changes.push(Change::Dtype(DType::BF16));
    }
    let decoder = matches!(
        model.spec.architecture,
        Architecture::Gpt(_) | Architecture::Llama(..)
    );
    let seq_len = model.spec.seq_len(options).ok().flatten();
    let generates = mode.cached_tokens().is_some();
    if let Some(len) = seq_len.filter(|&n| decoder && n >= 2 && !generates) {
        changes.push(Change::SeqLen(len / 2));
    }
    if decoder && options.lora.is_none() && mode.trains() {
        changes.push(Change::Lora(WHAT_IF_LORA_RANK));
    }
    changes
}

/// Searches with each change in a child process, one at a time, showing each child's
/// trials on stderr as they finish; a change that does not fit or cannot run here gets the
/// child's error as its row.
pub fn rows(search: &Search) -> Result<Vec<WhatIf>> {
    let program = std::env::current_exe().context("cannot find this program to run --what-if")?;
    let changes = changes(search);
    let list: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    eprintln!(
        "what if: {} more searches, one per change ({}), each as long as a search of its own",
        changes.len(),
        list.join(", ")
    );
    let mut rows = Vec::new();
    for (i, &change) in changes.iter().enumerate() {
        eprintln!("what if {change} ({} of {}):", i + 1, changes.len());
        let mut command = Command::new(&program);
        command.args(crate::child::search_args(&change.applied_to(search)));
        rows.push(row(command, change)?);
    }
    Ok(rows)
}

/// The search `command` runs: its progress lines passed on to stderr as they come,
/// indented, and `change`'s row.
fn row(mut command: Command, change: Change) -> Result<WhatIf> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run a --what-if search")?;
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
    Ok(match serde_json::from_slice::<Report>(&stdout) {
        Ok(report) if status.success() && !report.interrupted => {
            WhatIf::measured(change.to_string(), &report)
        }
        _ => WhatIf::failed(
            change.to_string(),
            error.as_deref().unwrap_or("the search did not finish"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::resolve::{resolve, Job};
    use clap::Parser;

    fn changes_of(args: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from([&["maxbatch"][..], args].concat()).unwrap();
        let Job::Search(search) = resolve(cli).unwrap() else {
            panic!("not a search")
        };
        changes(&search).iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn each_family_gets_the_changes_that_apply_to_it() {
        assert_eq!(
            changes_of(&["--model", "transformer-small"]),
            [
                "--optimizer sgd",
                "--amp bf16",
                "--dtype bf16",
                "--seq-len 256",
                "--lora-rank 8"
            ]
        );
        assert_eq!(
            changes_of(&["--model", "mlp"]),
            ["--optimizer sgd", "--amp bf16", "--dtype bf16"]
        );
        assert_eq!(
            changes_of(&[
                "--model",
                "transformer-tiny",
                "--amp",
                "bf16",
                "--optimizer",
                "sgd",
                "--seq-len",
                "1"
            ]),
            ["--lora-rank 8"]
        );
        // Nothing is trained in an evaluation or a generation on its own.
        assert_eq!(
            changes_of(&["--model", "transformer-tiny", "--mode", "eval"]),
            ["--amp bf16", "--dtype bf16", "--seq-len 32"]
        );
        assert_eq!(
            changes_of(&[
                "--model",
                "transformer-tiny",
                "--mode",
                "generate",
                "--prompt-len",
                "8",
                "--new-tokens",
                "8"
            ]),
            ["--amp bf16", "--dtype bf16"]
        );
    }

    #[test]
    fn a_change_is_made_to_the_resolved_search() {
        let cli = Cli::try_parse_from(["maxbatch", "--model", "transformer-tiny"]).unwrap();
        let Job::Search(search) = resolve(cli).unwrap() else {
            panic!("not a search")
        };
        let sgd = Change::Optimizer(OptimizerKind::Sgd).applied_to(&search);
        assert_eq!(sgd.trials.optimizer, OptimizerKind::Sgd);
        let half = Change::SeqLen(32).applied_to(&search);
        assert_eq!(half.trials.model.options.seq_len, Some(32));
        let lora = Change::Lora(8).applied_to(&search);
        assert_eq!(lora.trials.model.options.lora.unwrap().rank, 8);
    }
}
