//! The command line as typed: clap's types, nothing resolved. Flag groups that several
//! commands take are declared once and flattened where they are used; `resolve.rs` turns
//! what was typed into the values the commands run with.

mod parse;

use std::path::PathBuf;

use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use maxbatch::device::DeviceRequest;
use maxbatch::plan::Memory;
use maxbatch::search::Strategy;
use maxbatch::settings::DEFAULT_MARGIN;
use maxbatch::OptimizerKind;

use parse::{parse_bytes, parse_devices, parse_dtype, parse_half_dtype, parse_memories};

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
    pub search: SearchArgs,

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
    /// Predict a step's peak memory (training, or --mode eval or generate) from the model's
    /// shapes alone, with no trial: each phase's peak, and the largest batch size for
    /// --memory or --plan-for targets. Every figure is a prediction.
    Estimate(EstimateArgs),
    /// Internal (--isolate): run one trial and print it as JSON; exit 0 whatever its
    /// outcome.
    #[command(hide = true)]
    Trial(CheckArgs),
    /// Acceptance check on a GPU (scripts/gpu-check.sh): allocate 1 GiB through candle and
    /// check that the memory pool counts it and gives it back; JSON on stdout, exit 1 if not.
    #[command(hide = true)]
    PoolSelfTest(GpuArgs),
    /// Acceptance check on a GPU (scripts/gpu-check.sh): time candle's element-wise kernels
    /// on one tensor of --elements u32s (at and past 2^31) and check every element was
    /// written; JSON on stdout.
    #[command(hide = true)]
    ElementProbe(ElementProbeArgs),
}

/// Flags of the GPU checks' hidden subcommands.
#[derive(Debug, Args)]
pub struct GpuArgs {
    /// The CUDA device, e.g. cuda:0.
    #[arg(long, short, default_value = "cuda:0", value_parser = parse_devices, value_name = "DEVICE")]
    pub device: Devices,
}

/// Flags of `maxbatch element-probe`.
#[derive(Debug, Args)]
pub struct ElementProbeArgs {
    /// The device.
    #[command(flatten)]
    pub gpu: GpuArgs,
    /// Elements of the tensor (it needs 8 bytes each on the device).
    #[arg(long, value_name = "N")]
    pub elements: usize,
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
    pub config: Option<PathBuf>,
}

/// The model: a built-in preset or a Hugging Face config; exactly one is required.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ModelArgs {
    /// The built-in model (see `maxbatch models`).
    #[arg(long, short, value_name = "NAME")]
    pub model: Option<String>,

    /// A Hugging Face config.json (model_type llama, mistral, qwen2 or gpt2), e.g. a 7B or
    /// 70B model's: only its shapes are read (a search builds it with random weights).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// What one training step is: its input's shape, its precision, its optimizer, and what it
/// trains.
#[derive(Debug, Clone, Args)]
pub struct StepArgs {
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

    /// What a trial runs: train (forward, loss, backward, optimizer update); eval (the
    /// forward pass and the loss with no autograd graph, as a validation loop runs it);
    /// generate (prefill --prompt-len tokens, then --new-tokens decode steps with a KV cache;
    /// the batch is the sequences generated together; decoders only); train+eval (the
    /// training search, then the largest evaluation batch while the training state is held
    /// at the recommended training size).
    #[arg(long, value_enum, default_value = "train", value_name = "MODE")]
    pub mode: ModeArg,

    /// Tokens of each prompt (--mode generate).
    #[arg(long, value_name = "TOKENS")]
    pub prompt_len: Option<usize>,

    /// Decode steps after the prompt, one token each (--mode generate).
    #[arg(long, value_name = "TOKENS")]
    pub new_tokens: Option<usize>,

    /// With --mode eval: evaluate while a training loop's state is held (the trained
    /// weights, the optimizer's state, and what a training step at batch size B left).
    #[arg(long, value_name = "B")]
    pub beside_training: Option<usize>,
}

/// `--mode`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// A full training step.
    Train,
    /// An evaluation pass (forward and loss, no autograd graph).
    Eval,
    /// Prefill and decode with a KV cache.
    Generate,
    /// The training search, then the evaluation batch beside it.
    #[value(name = "train+eval")]
    TrainEval,
}

/// Where trials run and what they are measured against.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N, auto (CUDA device 0 when there is one, else the CPU), or a
    /// list of CUDA devices (cuda:0,cuda:1): each is searched, and the minimum is what a
    /// data-parallel run with one replica per GPU can use.
    #[arg(long, short, default_value = "auto", value_parser = parse_devices, value_name = "DEVICE")]
    pub device: Devices,

    /// Refuse to fall back to the CPU when the CUDA device asked for cannot be used (exit 2).
    #[arg(long)]
    pub no_fallback: bool,

    /// The memory budget, e.g. 512MiB, 4GiB, 4 GiB, 4G (= 4×10^9 bytes), 4GB; a bare number
    /// is bytes. On the CPU a budget maxbatch enforces (a trial may pass it by one phase
    /// before it is stopped); on CUDA a cap below the device's free memory. [default: about
    /// 80% of the memory available (machine or container)]
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub memory: Option<u64>,

    /// Full training steps (forward, loss, backward, optimizer update) per trial. [default:
    /// 1 on the CPU, where a second step peaks where the first did; 2 on CUDA, where memory
    /// pools and library workspaces may grow in the second step]
    #[arg(long, value_name = "N")]
    pub steps_per_trial: Option<usize>,

    /// For scripts/gpu-check.sh only: let CUDA trials pass the 2^31 elements candle's
    /// kernels can loop over, to measure what happens there (steps slow down, or never end).
    #[arg(long, hide = true)]
    pub ignore_element_cap: bool,

    /// Testing aid (builds with the `test-hooks` feature only): a trial at this batch size
    /// or above aborts its process.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, value_name = "B")]
    pub debug_abort_from: Option<usize>,
}

/// The model, the step, the device, and the output: what the search and `check` share.
#[derive(Debug, Clone, Args)]
pub struct TrialArgs {
    /// The model to train.
    #[command(flatten)]
    pub model: ModelArgs,

    /// The training step.
    #[command(flatten)]
    pub step: StepArgs,

    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,

    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Measure again instead of answering from the result cache ($MAXBATCH_CACHE, or the
    /// user's cache folder: ~/.cache/maxbatch on Linux); the new answer replaces the cached one.
    #[arg(long)]
    pub no_cache: bool,
}

/// Flags of `maxbatch check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The batch size to check.
    #[arg(long, short = 'b', value_name = "B")]
    pub batch_size: usize,

    /// Check a training and an evaluation batch size together: the training step at
    /// --batch-size, then an evaluation pass of this size while the training state is
    /// held; exit 0 only if both fit.
    #[arg(long, value_name = "B")]
    pub eval_batch_size: Option<usize>,

    /// Make the check a verification run: N consecutive training steps, each step's peak
    /// reported; exit 1 if any step crosses the capacity. [default: the steps per trial]
    #[arg(long, value_name = "N", conflicts_with = "steps_per_trial")]
    pub verify_steps: Option<usize>,

    /// The model, device and training flags.
    #[command(flatten)]
    pub trial: TrialArgs,
}

/// Flags of `maxbatch estimate`.
#[derive(Debug, Args)]
pub struct EstimateArgs {
    /// The model (not cnn, whose convolutions the estimate does not count).
    #[command(flatten)]
    pub model: ModelArgs,

    /// The training step.
    #[command(flatten)]
    pub step: StepArgs,

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
    #[arg(long, value_name = "TARGETS", value_parser = parse_memories)]
    pub plan_for: Option<Memories>,

    /// Fraction of the capacity the recommended size leaves free.
    #[arg(long, default_value_t = DEFAULT_MARGIN, value_name = "FRACTION")]
    pub margin: f64,

    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of the search.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The model, device and training flags.
    #[command(flatten)]
    pub trial: TrialArgs,

    /// The first batch size tried.
    #[arg(long, default_value_t = 1, value_name = "B")]
    pub start: usize,

    /// The largest batch size tried; it is run before it is reported. [default: the
    /// dataset size if given, else 65536]
    #[arg(long, value_name = "B")]
    pub max_batch: Option<usize>,

    /// Fraction of the capacity the recommended size leaves free.
    #[arg(long, default_value_t = DEFAULT_MARGIN, value_name = "FRACTION")]
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

    /// How sizes are chosen: seeded (start where the estimate from shapes meets the
    /// capacity, then the next size; the guided search where there is no estimate or it
    /// misses), guided (fit the measured peaks, jump to the predicted maximum, verify it and
    /// the next size) or doubling (double, then binary search).
    #[arg(long, default_value = "seeded", value_name = "STRATEGY")]
    pub strategy: Strategy,

    /// The global batch you want: maxbatch works out micro-batch × gradient-accumulation
    /// steps × --world-size to reach it.
    #[arg(long, value_name = "G")]
    pub target_batch: Option<u64>,

    /// Data-parallel replicas for the gradient accumulation.
    #[arg(long, default_value_t = 1, value_name = "W")]
    pub world_size: u64,

    /// The micro-batch of the gradient accumulation. [default: the largest power of two ≤
    /// the recommended size]
    #[arg(long, value_name = "B")]
    pub micro_batch: Option<usize>,

    /// Predict the sizes for other memory: a comma-separated list of capacities (24GiB,80GB)
    /// or GPUs (l4, a10g, rtx-4090, a100-40gb, a100-80gb, h100-80gb, h200). Predictions
    /// from the measured lines, labelled as such; nothing runs on them.
    #[arg(long, value_name = "TARGETS", value_parser = parse_memories)]
    pub plan_for: Option<Memories>,

    /// After the search, run N consecutive training steps at the recommended size and
    /// report every step's peak: a step that crosses the capacity fails the run (exit 1)
    /// and names the next smaller size that passed. [default: no verification run]
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
    pub plot: Option<PathBuf>,

    /// Run each trial in a child process: a trial that aborts or is killed counts as out
    /// of memory instead of ending the search.
    #[arg(long)]
    pub isolate: bool,
}

/// The memory of `--plan-for`: capacities and named GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memories(pub Vec<Memory>);

/// The devices of `--device`: one, or a list of CUDA devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices(pub Vec<DeviceRequest>);

#[cfg(test)]
mod tests;
