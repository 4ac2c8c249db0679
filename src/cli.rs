//! The command line: clap types, and the checks that turn them into library settings.

use std::ffi::OsString;

use clap::{Args, Parser, Subcommand};

use candle_core::DType;
use maxbatch::cache::{Cache, CacheUse};
use maxbatch::device::DeviceRequest;
use maxbatch::format::parse_bytes;
use maxbatch::models::lora::LoraOptions;
use maxbatch::models::{parse_dtype, parse_half_dtype, ModelOptions, ModelSource};
use maxbatch::search::Strategy;
use maxbatch::settings::AccumulationTarget;
use maxbatch::{OptimizerKind, SearchSettings};

/// Find the largest training batch size that fits a model in a device's memory, by
/// running real training steps, and the schedule it gives.
#[derive(Debug, Parser)]
#[command(
    name = "maxbatch",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  maxbatch --model transformer-small --device cpu --memory 4GiB --dataset-size 50000 --epochs 3\n  maxbatch check --model mlp --memory 1GiB --batch-size 256\n  maxbatch estimate --config config.json --seq-len 512 --dtype bf16 --plan-for h100-80gb\n  maxbatch models"
)]
pub struct Cli {
    /// Subcommands; without one, maxbatch searches for the largest batch size.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The search's flags (used without a subcommand).
    #[command(flatten)]
    pub find: FindArgs,

    /// More log output on stderr: -v info, -vv debug (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// What maxbatch can do besides the search.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the built-in models with their parameter counts and input shapes.
    Models(ModelsArgs),
    /// Pre-flight check: run one trial at --batch-size; exit 0 if it fits, 1 if not, 2 on
    /// error.
    Check(CheckArgs),
    /// Predict a training step's peak memory from the model's shapes alone, with no trial:
    /// each phase's peak, and the largest batch size for --memory or --plan-for targets.
    /// Every figure is a prediction.
    Estimate(EstimateArgs),
    /// Internal (--isolate): run one trial and print it as JSON; exit 0 whatever its
    /// outcome.
    #[command(hide = true)]
    Trial(CheckArgs),
    /// Acceptance check on a GPU (scripts/gpu-check.sh): allocate 1 GiB through candle and
    /// check that the memory pool counts it and gives it back; JSON on stdout, exit 1 if not.
    #[command(hide = true)]
    PoolSelfTest(PoolSelfTestArgs),
    /// Acceptance check on a GPU (scripts/gpu-check.sh): time candle's element-wise kernels
    /// on one tensor of --elements u32s (at and past 2^31) and check every element was
    /// written; JSON on stdout.
    #[command(hide = true)]
    ElementProbe(ElementProbeArgs),
}

/// Flags of `maxbatch element-probe`.
#[derive(Debug, Args)]
pub struct ElementProbeArgs {
    /// The CUDA device, e.g. cuda:0.
    #[arg(long, short, default_value = "cuda:0", value_parser = parse_devices, value_name = "DEVICE")]
    pub device: Devices,
    /// Elements of the tensor (it needs 8 bytes each on the device).
    #[arg(long, value_name = "N")]
    pub elements: usize,
}

/// Flags of `maxbatch pool-self-test`.
#[derive(Debug, Args)]
pub struct PoolSelfTestArgs {
    /// The CUDA device, e.g. cuda:0.
    #[arg(long, short, default_value = "cuda:0", value_parser = parse_devices, value_name = "DEVICE")]
    pub device: Devices,
}

/// Flags of `maxbatch models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Describe the architecture of this Hugging Face config.json instead (its parameter
    /// count from the shapes alone; nothing is allocated).
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
}

/// Flags of `maxbatch check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The batch size to check.
    #[arg(long, short = 'b', value_name = "B")]
    pub batch_size: usize,

    /// Make the check a soak test: N consecutive training steps, each step's peak
    /// reported; exit 1 if any step crosses the capacity. [default: the steps per trial]
    #[arg(long, value_name = "N", conflicts_with = "steps_per_trial")]
    pub verify_steps: Option<usize>,

    /// The model, device and training flags.
    #[command(flatten)]
    pub target: TargetArgs,
}

/// The model: a built-in preset or a Hugging Face config (shared by the search, `check` and
/// `estimate`); exactly one is required.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ModelArgs {
    /// The built-in model (see `maxbatch models`).
    #[arg(long, short, value_name = "NAME")]
    pub model: Option<String>,

    /// A Hugging Face config.json (model_type llama, mistral, qwen2 or gpt2), e.g. a 7B or
    /// 70B model's: only its shapes are read (a search builds it with random weights).
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
}

impl ModelArgs {
    /// Where the model comes from: --model or --config (clap enforces exactly one).
    pub fn source(&self) -> ModelSource {
        match (&self.config, &self.model) {
            (Some(path), _) => ModelSource::Config(path.clone()),
            (None, name) => ModelSource::Preset(name.clone().unwrap_or_default()),
        }
    }
}

/// Flags of `maxbatch estimate`.
#[derive(Debug, Args)]
pub struct EstimateArgs {
    /// The model (not cnn, whose convolutions the estimate does not count).
    #[command(flatten)]
    pub model: ModelArgs,

    /// Tokens per sample. [default: the model's context length; at most 2048 for a
    /// --config]
    #[arg(long, value_name = "TOKENS")]
    pub seq_len: Option<usize>,

    /// Weights, activations and optimizer state in f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype, value_name = "DTYPE")]
    pub dtype: DType,

    /// The optimizer: adamw or sgd.
    #[arg(long, default_value = "adamw", value_name = "NAME")]
    pub optimizer: OptimizerKind,

    /// Show each phase's predicted peak at this batch size. [default: the predicted
    /// maximum for the first capacity]
    #[arg(long, short = 'b', value_name = "B")]
    pub batch_size: Option<usize>,

    /// A capacity to predict the largest batch size for, e.g. 24GiB.
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub memory: Option<u64>,

    /// Capacities (24GiB,80GB) or GPUs (l4, a10g, rtx-4090, a100-40gb, a100-80gb,
    /// h100-80gb, h200) to predict for. [default: every GPU named here, when --memory is
    /// not given]
    #[arg(long, value_name = "TARGETS", value_parser = parse_targets)]
    pub plan_for: Option<PlanTargets>,

    /// Fraction of the capacity the recommended size leaves free.
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    pub margin: f64,

    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// The search's training-mode flags, which the estimate does not count: taken only to
    /// say so (and that a search measures them) instead of clap's "unexpected argument".
    #[command(flatten)]
    pub uncounted: UncountedModes,
}

/// `--amp`, `--lora-rank`, `--lora-alpha` and `--lora-targets` given to `estimate`.
#[derive(Debug, Args)]
pub struct UncountedModes {
    /// Not counted by the estimate: a search measures mixed precision.
    #[arg(long, hide = true, value_name = "DTYPE")]
    pub amp: Option<String>,
    /// Not counted by the estimate: a search measures LoRA.
    #[arg(long, hide = true, value_name = "RANK")]
    pub lora_rank: Option<String>,
    /// Not counted by the estimate: a search measures LoRA.
    #[arg(long, hide = true, value_name = "ALPHA")]
    pub lora_alpha: Option<String>,
    /// Not counted by the estimate: a search measures LoRA.
    #[arg(long, hide = true, value_name = "NAMES")]
    pub lora_targets: Option<String>,
}

impl UncountedModes {
    /// The first such flag given, as it was typed.
    pub fn given(&self) -> Option<String> {
        [
            ("--amp", &self.amp),
            ("--lora-rank", &self.lora_rank),
            ("--lora-alpha", &self.lora_alpha),
            ("--lora-targets", &self.lora_targets),
        ]
        .into_iter()
        .find_map(|(flag, value)| value.as_ref().map(|v| format!("{flag} {v}")))
    }
}

impl EstimateArgs {
    /// The model's options: the sequence length and the dtype.
    pub fn model_options(&self) -> ModelOptions {
        ModelOptions {
            seq_len: self.seq_len,
            dtype: self.dtype,
            ..ModelOptions::default()
        }
    }

    /// The targets to predict for: --memory, then --plan-for's; every named GPU when
    /// neither is given.
    pub fn targets(&self) -> Vec<maxbatch::plan::Target> {
        let mut targets: Vec<maxbatch::plan::Target> = self
            .memory
            .map(|bytes| maxbatch::plan::Target {
                name: "--memory".to_string(),
                bytes,
                is_gpu: false,
            })
            .into_iter()
            .collect();
        match &self.plan_for {
            Some(PlanTargets(more)) => targets.extend(more.iter().cloned()),
            None if targets.is_empty() => targets.extend(
                maxbatch::plan::KNOWN_GPUS
                    .iter()
                    .map(maxbatch::plan::Target::gpu),
            ),
            None => {}
        }
        targets
    }
}

/// Flags of the search.
#[derive(Debug, Args)]
pub struct FindArgs {
    /// The model, device and training flags.
    #[command(flatten)]
    pub target: TargetArgs,

    /// The first batch size tried.
    #[arg(long, default_value_t = 1, value_name = "B")]
    pub start: usize,

    /// The largest batch size tried; it is run before it is reported. [default: the
    /// dataset size if given, else 65536]
    #[arg(long, value_name = "B")]
    pub max_batch: Option<usize>,

    /// Fraction of the capacity the recommended size leaves free.
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    pub margin: f64,

    /// Training samples, for the schedule (steps per epoch, total steps).
    #[arg(long, value_name = "N")]
    pub dataset_size: Option<u64>,

    /// Passes over the dataset, for the schedule.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub epochs: u64,

    /// Drop each epoch's last partial batch (steps per epoch rounds down, not up).
    #[arg(long)]
    pub drop_last: bool,

    /// How sizes are chosen: guided (fit the measured peaks, jump to the predicted
    /// maximum, verify it and the next size) or doubling (double, then binary search).
    #[arg(long, default_value = "guided", value_name = "STRATEGY")]
    pub strategy: Strategy,

    /// The global batch you want: maxbatch plans micro-batch × gradient-accumulation steps ×
    /// --world-size to reach it.
    #[arg(long, value_name = "G")]
    pub target_batch: Option<u64>,

    /// Data-parallel replicas for the accumulation plan.
    #[arg(long, default_value_t = 1, value_name = "W")]
    pub world_size: u64,

    /// The micro-batch of the accumulation plan. [default: the largest power of two ≤ the
    /// recommended size]
    #[arg(long, value_name = "B")]
    pub micro_batch: Option<usize>,

    /// Predict the sizes for other memory: a comma-separated list of capacities (24GiB,80GB)
    /// or GPUs (l4, a10g, rtx-4090, a100-40gb, a100-80gb, h100-80gb, h200). Predictions
    /// from the measured lines, labelled as such; nothing runs on them.
    #[arg(long, value_name = "TARGETS", value_parser = parse_targets)]
    pub plan_for: Option<PlanTargets>,

    /// After the search, run N consecutive training steps at the recommended size and
    /// report every step's peak: a step that crosses the capacity fails the run (exit 1)
    /// and names the next smaller size that passed. [default: no soak run]
    #[arg(long, value_name = "N")]
    pub verify_steps: Option<usize>,

    /// After the search, search again with each change that could fit a larger batch, one
    /// at a time (--optimizer sgd, --amp bf16, --dtype bf16, half the --seq-len, --lora-rank
    /// 8, as they apply), and show the maximum each gives: every figure measured by a real
    /// search. When batch size 1 does not fit, the table shows which change makes it fit.
    #[arg(long)]
    pub what_if: bool,

    /// Also write an SVG chart of the trials: peak memory against batch size, the fitted
    /// line, the capacity and margin, and samples per second.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,

    /// Run each trial in a child process: a trial that aborts or is killed counts as out
    /// of memory instead of ending the search.
    #[arg(long)]
    pub isolate: bool,
}

/// The model, the device and how a trial trains: shared by the search and `check`.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The model to train.
    #[command(flatten)]
    pub model: ModelArgs,

    /// Weights, activations and optimizer state in f32, bf16 or f16 (all in that dtype:
    /// not mixed precision with f32 master weights, which is --amp; the loss is computed in
    /// f32).
    #[arg(long, default_value = "f32", value_parser = parse_dtype, value_name = "DTYPE")]
    pub dtype: DType,

    /// Mixed precision: weights, gradients and optimizer state stay f32 (master weights);
    /// the forward and backward passes compute in bf16 or f16 (weights cast each step,
    /// activations in the half dtype), the loss in f32, like PyTorch's autocast.
    #[arg(long, value_parser = parse_half_dtype, value_name = "DTYPE")]
    pub amp: Option<DType>,

    /// LoRA fine-tuning: adapters of this rank beside the targeted linear layers are the
    /// only trained weights; every other weight is frozen (no gradient, no optimizer
    /// state). Transformers and Llama-family configs. [default: 0, train every weight]
    #[arg(
        long,
        default_value_t = 0,
        hide_default_value = true,
        value_name = "RANK"
    )]
    pub lora_rank: usize,

    /// LoRA's alpha: the adapters' output is scaled by alpha / rank.
    #[arg(
        long,
        default_value_t = 16,
        value_name = "ALPHA",
        requires = "lora_rank"
    )]
    pub lora_alpha: u32,

    /// The linear layers that get adapters, comma-separated, by their Hugging Face names
    /// (q_proj, v_proj, ..., or c_attn, mlp.c_proj for GPT-2) or all-linear. [default:
    /// PEFT's: q_proj,v_proj for Llama-family models, c_attn for GPT-2]
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAMES",
        requires = "lora_rank"
    )]
    pub lora_targets: Vec<String>,

    /// cpu, cuda, cuda:N, auto (CUDA device 0 when there is one, else the CPU), or a
    /// list of CUDA devices (cuda:0,cuda:1): each is searched, and the minimum is what a
    /// data-parallel run with one replica per GPU can use.
    #[arg(long, short, default_value = "auto", value_parser = parse_devices, value_name = "DEVICE")]
    pub device: Devices,

    /// Refuse to fall back to the CPU when the CUDA device asked for cannot be used (exit 2).
    #[arg(long)]
    pub no_fallback: bool,

    /// The memory budget, e.g. 512MiB, 4GiB, 4G (= 4×10^9 bytes), 4GB; a bare number is bytes.
    /// On the CPU a budget maxbatch enforces (a trial may pass it by one phase before it is
    /// stopped); on CUDA a cap below the device's free memory. [default: about 80% of the
    /// memory available (machine or container)]
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub memory: Option<u64>,

    /// The optimizer: adamw (two moments per weight) or sgd (no state).
    #[arg(long, default_value = "adamw", value_name = "NAME")]
    pub optimizer: OptimizerKind,

    /// Tokens per sample for transformers: the worst-case (padded) length your training
    /// meets, since batches are padded to their longest sequence. A comma-separated list
    /// (128,256,512) sweeps: one search per length, with tokens per batch for each.
    /// [default: the model's context length; at most 2048 for a --config]
    #[arg(long, value_delimiter = ',', value_name = "TOKENS")]
    pub seq_len: Vec<usize>,

    /// Image side in pixels for `cnn`: the largest images your training meets. [default: 32]
    #[arg(long, value_name = "PIXELS")]
    pub image_size: Option<usize>,

    /// Full training steps (forward, loss, backward, optimizer update) per trial. [default:
    /// 1 on the CPU, where a second step peaks where the first did; 2 on CUDA, where memory
    /// pools and library workspaces may grow in the second step]
    #[arg(long, value_name = "N")]
    pub steps_per_trial: Option<usize>,

    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// For scripts/gpu-check.sh only: let CUDA trials pass the 2^31 elements candle's
    /// kernels can loop over, to measure what happens there (steps slow down, or never end).
    #[arg(long, hide = true)]
    pub ignore_element_cap: bool,

    /// Measure again instead of answering from the result cache ($MAXBATCH_CACHE, or the
    /// user's cache folder: ~/.cache/maxbatch on Linux); the new answer replaces the cached one.
    #[arg(long)]
    pub no_cache: bool,

    /// Testing aid (builds with the `test-hooks` feature only): a trial at this batch size
    /// or above aborts its process.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, value_name = "B")]
    pub debug_abort_from: Option<usize>,
}

/// The devices of `--plan-for`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTargets(pub Vec<maxbatch::plan::Target>);

fn parse_targets(text: &str) -> Result<PlanTargets, String> {
    maxbatch::plan::parse_targets(text).map(PlanTargets)
}

/// The devices of `--device`: one, or a list of CUDA devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices(pub Vec<DeviceRequest>);

fn parse_devices(text: &str) -> Result<Devices, String> {
    maxbatch::device::parse_list(text)
        .map(Devices)
        .map_err(|e| e.to_string())
}

impl TargetArgs {
    /// Where the model comes from: --model or --config (clap enforces exactly one).
    pub fn model_source(&self) -> ModelSource {
        self.model.source()
    }

    /// The arguments of a `trial` child process measuring what these flags describe on
    /// `device`, against `memory` bytes when given (the parent's CPU budget, or a CUDA cap:
    /// without one the child reads the device after its warm-up step).
    pub fn child_args(&self, device: &str, memory: Option<u64>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["trial".into()];
        let mut flag = |name: &str, value: String| {
            args.push(name.into());
            args.push(value.into());
        };
        match (&self.model.config, &self.model.model) {
            (Some(path), _) => flag("--config", path.display().to_string()),
            (None, Some(name)) => flag("--model", name.clone()),
            (None, None) => {}
        }
        flag("--device", device.to_string());
        if let Some(memory) = memory {
            flag("--memory", memory.to_string());
        }
        flag("--optimizer", self.optimizer.to_string());
        flag("--dtype", self.dtype.as_str().to_string());
        if let Some(amp) = self.amp {
            flag("--amp", amp.as_str().to_string());
        }
        if self.lora_rank > 0 {
            flag("--lora-rank", self.lora_rank.to_string());
            flag("--lora-alpha", self.lora_alpha.to_string());
            if !self.lora_targets.is_empty() {
                flag("--lora-targets", self.lora_targets.join(","));
            }
        }
        if let Some(n) = self.steps_per_trial {
            flag("--steps-per-trial", n.to_string());
        }
        if !self.seq_len.is_empty() {
            let lengths: Vec<String> = self.seq_len.iter().map(|n| n.to_string()).collect();
            flag("--seq-len", lengths.join(","));
        }
        if let Some(n) = self.image_size {
            flag("--image-size", n.to_string());
        }
        #[cfg(feature = "test-hooks")]
        if let Some(n) = self.debug_abort_from {
            flag("--debug-abort-from", n.to_string());
        }
        args.extend(["--no-fallback".into(), "--no-cache".into(), "--json".into()]);
        args
    }

    /// The result cache and how to use it: answer from it, or with --no-cache, or when
    /// `must_run` (a soak run, whose point is to run in this environment now), measure again
    /// and replace its entry.
    pub fn cache_unless(&self, must_run: bool) -> Option<(Cache, CacheUse)> {
        let mode = if self.no_cache || must_run {
            CacheUse::Refresh
        } else {
            CacheUse::Answer
        };
        Cache::default_location().map(|cache| (cache, mode))
    }

    /// The lengths of a sequence-length sweep: `--seq-len` with two or more lengths.
    pub fn sweep_lengths(&self) -> Option<&[usize]> {
        (self.seq_len.len() > 1).then_some(self.seq_len.as_slice())
    }

    /// These flags at one length of a sweep.
    pub fn at_seq_len(&self, seq_len: usize) -> TargetArgs {
        TargetArgs {
            seq_len: vec![seq_len],
            ..self.clone()
        }
    }

    /// The input-shape, precision and training-mode options of the model (the first
    /// length of a sweep: see [`sweep_lengths`](Self::sweep_lengths)).
    pub fn model_options(&self) -> ModelOptions {
        ModelOptions {
            seq_len: self.seq_len.first().copied(),
            image_size: self.image_size,
            dtype: self.dtype,
            amp: self.amp,
            lora: (self.lora_rank > 0).then(|| LoraOptions {
                rank: self.lora_rank,
                alpha: self.lora_alpha,
                targets: self.lora_targets.clone(),
            }),
        }
    }
}

impl FindArgs {
    /// The search's settings these flags describe (checked by
    /// [`SearchSettings::validate`], not here).
    pub fn settings(&self) -> SearchSettings {
        SearchSettings {
            strategy: self.strategy,
            start: self.start,
            max_batch: self.max_batch,
            steps_per_trial: self.target.steps_per_trial(),
            margin: self.margin,
            optimizer: Some(self.target.optimizer),
            dataset_size: self.dataset_size,
            epochs: self.epochs,
            drop_last: self.drop_last,
            accumulation: self.target_batch.map(|target_batch| AccumulationTarget {
                target_batch,
                world_size: self.world_size,
                micro_batch: self.micro_batch,
            }),
            verify_steps: self.verify_steps.unwrap_or(0),
            ..SearchSettings::default()
        }
    }
}

impl TargetArgs {
    /// `--steps-per-trial`, to validate; where it is not given, the device's default
    /// replaces this later (`Setup::settings_for_device`).
    fn steps_per_trial(&self) -> usize {
        self.steps_per_trial
            .unwrap_or(SearchSettings::default().steps_per_trial)
    }

    /// The settings of a pre-flight check (or a child's trial) these flags describe.
    pub fn check_settings(&self) -> SearchSettings {
        SearchSettings {
            steps_per_trial: self.steps_per_trial(),
            optimizer: Some(self.optimizer),
            ..SearchSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag of every command, with the command's name.
    fn every_flag(command: &clap::Command) -> Vec<(String, clap::Arg)> {
        let mut flags: Vec<(String, clap::Arg)> = command
            .get_arguments()
            .map(|a| (command.get_name().to_string(), a.clone()))
            .collect();
        for sub in command.get_subcommands() {
            flags.extend(every_flag(sub));
        }
        flags
    }

    #[test]
    fn help_states_each_default_once() {
        // A default written in a flag's help and also shown by clap reads
        // "[default: 0, train every weight] [default: 0]".
        for (command, arg) in every_flag(&Cli::command()) {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let shown = !arg.get_default_values().is_empty() && !arg.is_hide_default_value_set();
            assert!(
                !(shown && help.contains("[default:")),
                "{command} --{}: the default is written in its help and shown by clap",
                arg.get_id()
            );
        }
    }

    #[test]
    fn the_search_needs_no_subcommand() {
        let cli = Cli::try_parse_from([
            "maxbatch",
            "--model",
            "mlp",
            "--memory",
            "4GiB",
            "--dataset-size",
            "100",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.find.target.memory, Some(4 << 30));
        assert_eq!(cli.find.target.device, Devices(vec![DeviceRequest::Auto]));
        assert_eq!(cli.find.dataset_size, Some(100));
    }

    #[test]
    fn subcommands_need_no_model_at_top_level() {
        let cli = Cli::try_parse_from(["maxbatch", "models", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Models(ModelsArgs { json: true, .. }))
        ));
        let cli = Cli::try_parse_from(["maxbatch", "check", "--model", "mlp", "--batch-size", "8"])
            .unwrap();
        assert!(matches!(cli.command, Some(Command::Check(c)) if c.batch_size == 8));
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            vec!["maxbatch"],
            vec!["maxbatch", "--model", "mlp", "--memory", "lots"],
            vec!["maxbatch", "--model", "mlp", "--device", "tpu:0"],
            vec!["maxbatch", "--model", "mlp", "--device", "cuda:0,cpu"],
            vec!["maxbatch", "--model", "mlp", "--optimizer", "lion"],
            vec!["maxbatch", "check", "--batch-size", "4"],
            vec!["maxbatch", "--model", "mlp", "--config", "c.json"],
            vec!["maxbatch", "--model", "mlp", "--dtype", "int4"],
            vec!["maxbatch", "--model", "mlp", "--amp", "f32"],
            vec!["maxbatch", "--model", "mlp", "--lora-alpha", "8"],
        ] {
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn a_child_gets_the_same_model_and_the_parents_capacity() {
        let cli = Cli::try_parse_from([
            "maxbatch",
            "--model",
            "mlp",
            "--seq-len",
            "7",
            "--dtype",
            "bf16",
            "--isolate",
        ])
        .unwrap();
        let args = cli.find.target.child_args("cpu", Some(12345));
        let mut child = vec![std::ffi::OsString::from("maxbatch")];
        child.extend(args);
        child.extend(["--batch-size".into(), "3".into()]);
        let parsed = Cli::try_parse_from(child).unwrap();
        let Some(Command::Trial(trial)) = parsed.command else {
            panic!("not a trial command")
        };
        assert_eq!(trial.batch_size, 3);
        assert_eq!(trial.target.memory, Some(12345));
        assert_eq!(trial.target.model.model.as_deref(), Some("mlp"));
        assert_eq!(trial.target.seq_len, [7]);
        assert_eq!(trial.target.dtype, DType::BF16);
        assert!(trial.target.no_fallback && trial.target.no_cache && trial.target.json);
    }

    #[test]
    fn a_child_trains_in_the_parents_mode() {
        let cli = Cli::try_parse_from([
            "maxbatch",
            "--model",
            "transformer-tiny",
            "--amp",
            "f16",
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--lora-targets",
            "c_attn,mlp.c_fc",
        ])
        .unwrap();
        let mut child = vec![std::ffi::OsString::from("maxbatch")];
        child.extend(cli.find.target.child_args("cpu", Some(1 << 30)));
        assert!(!cli
            .find
            .target
            .child_args("cuda:0", None)
            .contains(&"--memory".into()));
        child.extend(["--batch-size".into(), "3".into()]);
        let Some(Command::Trial(trial)) = Cli::try_parse_from(child).unwrap().command else {
            panic!("not a trial command")
        };
        assert_eq!(
            trial.target.model_options(),
            cli.find.target.model_options()
        );
        let lora = trial.target.model_options().lora.unwrap();
        assert_eq!((lora.rank, lora.alpha), (4, 8));
        assert_eq!(lora.targets, ["c_attn", "mlp.c_fc"]);
        assert_eq!(trial.target.amp, Some(DType::F16));
    }

    #[test]
    fn finder_settings_follow_the_flags() {
        let cli = Cli::try_parse_from([
            "maxbatch",
            "--model",
            "mlp",
            "--dataset-size",
            "1000",
            "--start",
            "4",
        ])
        .unwrap();
        let bounds = cli.find.settings().validate().unwrap();
        assert_eq!((bounds.start, bounds.max_batch), (4, 1000));
    }
}
