//! Child `maxbatch` processes: a trial in a process of its own (`--isolate`), a search with
//! one change (`--what-if`). Their flags are built one way, from the resolved values, never
//! by editing this process's own arguments.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use maxbatch::isolate::{ChildRequest, TrialProcess};
use maxbatch::models::{ModelSource, StepMode};

use crate::resolve::{Search, Trials};

/// Flags being built.
#[derive(Default)]
struct Flags(Vec<OsString>);

impl Flags {
    fn flag(&mut self, name: &str) {
        self.0.push(name.into());
    }

    fn value(&mut self, name: &str, value: impl ToString) {
        self.0.push(name.into());
        self.0.push(value.to_string().into());
    }

    /// The model and its step: `--model` or `--config`, the dtype, mixed precision, LoRA,
    /// the optimizer, the input.
    fn model(&mut self, trials: &Trials) {
        let model = &trials.model;
        match &model.source {
            ModelSource::Preset(name) => self.value("--model", name),
            ModelSource::Config(path) => self.value("--config", path.display()),
        }
        let options = &model.options;
        self.value("--dtype", options.dtype.as_str());
        if let Some(amp) = options.amp {
            self.value("--amp", amp.as_str());
        }
        if let Some(lora) = &options.lora {
            self.value("--lora-rank", lora.rank);
            self.value("--lora-alpha", lora.alpha);
            if !lora.targets.is_empty() {
                self.value("--lora-targets", lora.targets.join(","));
            }
        }
        self.value("--optimizer", trials.optimizer);
        if let Some(n) = options.seq_len {
            self.value("--seq-len", n);
        }
        if let Some(n) = options.image_size {
            self.value("--image-size", n);
        }
        match options.mode {
            StepMode::Train => {}
            StepMode::Eval { beside_training } => {
                self.value("--mode", "eval");
                if let Some(b) = beside_training {
                    self.value("--beside-training", b);
                }
            }
            StepMode::Generate {
                prompt_len,
                new_tokens,
            } => {
                self.value("--mode", "generate");
                self.value("--prompt-len", prompt_len);
                self.value("--new-tokens", new_tokens);
            }
        }
    }

    /// How the trials run: `device`, the fallback, `memory`, `steps` per trial, and the
    /// testing aids.
    fn device(&mut self, trials: &Trials, device: &str, memory: Option<u64>, steps: Option<usize>) {
        self.value("--device", device);
        if !trials.allow_fallback {
            self.flag("--no-fallback");
        }
        if let Some(bytes) = memory {
            self.value("--memory", bytes);
        }
        if let Some(n) = steps {
            self.value("--steps-per-trial", n);
        }
        if trials.ignore_element_cap {
            self.flag("--ignore-element-cap");
        }
        if let Some(from) = trials.abort_from {
            self.value("--debug-abort-from", from);
        }
    }
}

/// A trial of `trials` on one device in a child process: the hidden `trial` subcommand,
/// which prints the trial with the capacity it measured against.
pub struct TrialChild {
    program: PathBuf,
    trials: Trials,
    device: String,
    memory: Option<u64>,
}

impl TrialChild {
    /// Children of `program` running `trials` on `device`, against `memory` bytes until the
    /// first child has measured the capacity (the CPU's budget; on CUDA the user's cap, or
    /// none: the child reads the device).
    pub fn new(program: PathBuf, trials: &Trials, device: &str, memory: Option<u64>) -> Self {
        Self {
            program,
            trials: trials.clone(),
            device: device.to_string(),
            memory,
        }
    }

    /// The child's arguments for `request`.
    fn args(&self, request: ChildRequest) -> Vec<OsString> {
        let mut flags = Flags::default();
        flags.flag("trial");
        flags.model(&self.trials);
        let steps = request.steps.or(self.trials.steps_per_trial);
        let memory = request.capacity.or(self.memory);
        flags.device(&self.trials, &self.device, memory, steps);
        flags.flag("--no-fallback");
        flags.flag("--no-cache");
        flags.flag("--json");
        flags.value("--batch-size", request.batch_size);
        flags.0
    }
}

impl TrialProcess for TrialChild {
    fn command(&self, request: ChildRequest) -> Command {
        let mut command = Command::new(&self.program);
        command.args(self.args(request));
        command
    }
}

/// The arguments of a child that runs `search` (a what-if change made to it) with JSON on
/// stdout: the model, the device, the settings that decide the trials; not what only the
/// parent does (the plot, the plans, the what-if table, the verification run).
pub fn search_args(search: &Search) -> Vec<OsString> {
    let mut flags = Flags::default();
    let trials = &search.trials;
    flags.model(trials);
    let devices: Vec<String> = trials.devices.iter().map(|d| d.to_string()).collect();
    flags.device(
        trials,
        &devices.join(","),
        trials.memory,
        trials.steps_per_trial,
    );
    let s = &search.settings;
    flags.value("--strategy", s.strategy);
    flags.value("--start", s.start);
    if let Some(max) = s.max_batch {
        flags.value("--max-batch", max);
    }
    flags.value("--margin", s.margin);
    if let Some(n) = s.dataset_size {
        flags.value("--dataset-size", n);
    }
    flags.value("--epochs", s.epochs);
    if s.drop_last {
        flags.flag("--drop-last");
    }
    if let Some(goal) = s.accumulation {
        flags.value("--target-batch", goal.target_batch);
        flags.value("--world-size", goal.world_size);
        if let Some(micro) = goal.micro_batch {
            flags.value("--micro-batch", micro);
        }
    }
    if search.isolate {
        flags.flag("--isolate");
    }
    if trials.no_cache {
        flags.flag("--no-cache");
    }
    flags.flag("--json");
    flags.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as Sub};
    use crate::resolve::{resolve, Job};
    use clap::Parser;

    fn search(args: &[&str]) -> Search {
        let cli = Cli::try_parse_from([&["maxbatch"][..], args].concat()).unwrap();
        match resolve(cli).unwrap() {
            Job::Search(search) => search,
            _ => panic!("not a search"),
        }
    }

    #[test]
    fn a_trial_child_gets_the_same_model_and_the_capacity_it_is_given() {
        let parent = search(&[
            "--model",
            "transformer-tiny",
            "--seq-len",
            "7",
            "--amp",
            "f16",
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--lora-targets",
            "c_attn,mlp.c_fc",
            "--isolate",
        ]);
        let child = TrialChild::new(PathBuf::from("maxbatch"), &parent.trials, "cpu", Some(99));
        let request = ChildRequest {
            batch_size: 3,
            steps: None,
            capacity: Some(12345),
        };
        let mut argv = vec![OsString::from("maxbatch")];
        argv.extend(child.args(request));
        let Some(Sub::Trial(trial)) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not a trial command")
        };
        assert_eq!(trial.batch_size, 3);
        assert_eq!(trial.trial.device.memory, Some(12345));
        assert_eq!(trial.trial.model.model.as_deref(), Some("transformer-tiny"));
        assert_eq!(trial.trial.step.seq_len, [7]);
        assert_eq!(trial.trial.step.amp, Some(candle_core::DType::F16));
        assert_eq!(
            (trial.trial.step.lora_rank, trial.trial.step.lora_alpha),
            (4, 8)
        );
        assert_eq!(trial.trial.step.lora_targets, ["c_attn", "mlp.c_fc"]);
        assert!(trial.trial.device.no_fallback && trial.trial.no_cache && trial.trial.json);
        // Before the capacity is measured: the memory the parent gave, or none.
        let first = ChildRequest {
            capacity: None,
            ..request
        };
        assert!(child.args(first).contains(&OsString::from("99")));
        let cuda = TrialChild::new(PathBuf::from("maxbatch"), &parent.trials, "cuda:0", None);
        assert!(!cuda.args(first).contains(&OsString::from("--memory")));
    }

    #[test]
    fn a_search_child_gets_the_settings_but_not_what_only_the_parent_does() {
        let parent = search(&[
            "--model",
            "transformer-tiny",
            "--memory",
            "40MiB",
            "--what-if",
            "--plot",
            "/tmp/maxbatch-child-test.svg",
            "--plan-for",
            "l4",
            "--verify-steps",
            "3",
            "--dataset-size",
            "1000",
            "--target-batch",
            "64",
        ]);
        let argv: Vec<String> = search_args(&parent)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for only_the_parent in ["--what-if", "--plot", "--plan-for", "--verify-steps"] {
            assert!(!argv.iter().any(|a| a == only_the_parent), "{argv:?}");
        }
        let again = search(&argv.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(again.trials.memory, Some(40 << 20));
        assert_eq!(again.settings.dataset_size, Some(1000));
        assert_eq!(again.settings.accumulation, parent.settings.accumulation);
        assert_eq!(again.trials.model.options, parent.trials.model.options);
    }
}
