//! What was typed, resolved once into the values the commands run with: the model's spec
//! (its `config.json` read once), its options, the search's settings, the devices asked for,
//! the cache's use, the output. Everything is checked here, before anything is built, by the
//! library's own checks (`SearchSettings::validate`, `ModelOptions::validate`) and the
//! combinations only the command line has. Nothing after this reads clap's types.

use std::path::PathBuf;

use anyhow::{bail, Result};
use maxbatch::cache::CacheUse;
use maxbatch::device::DeviceRequest;
use maxbatch::error::{Error, Setting};
use maxbatch::models::lora::LoraOptions;
use maxbatch::models::{ModelInfo, ModelOptions, ModelSource, ModelSpec, StepMode};
use maxbatch::plan::Memory;
use maxbatch::settings::{AccumulationGoal, SearchSettings};
use maxbatch::OptimizerKind;

use crate::cli::{
    CheckArgs, Cli, Command, EstimateArgs, ModeArg, ModelArgs, ModelsArgs, SearchArgs, StepArgs,
    TrialArgs,
};

/// A command, resolved.
pub enum Job {
    /// The search (or a sweep, with several lengths).
    Search(Search),
    /// `check`.
    Check(Check),
    /// The hidden `trial` subcommand, one trial for an `--isolate` parent.
    Trial(Check),
    /// `estimate`.
    Estimate(Estimate),
    /// `models`.
    Models(Models),
    /// The GPU check's pool self-test on a device.
    PoolSelfTest(DeviceRequest),
    /// The GPU check's element probe: a device and a tensor's elements.
    ElementProbe(DeviceRequest, usize),
}

/// The model: where it came from, its shape, and the options it trains with.
#[derive(Debug, Clone)]
pub struct Model {
    /// `--model` or `--config`.
    pub source: ModelSource,
    /// Its shape, loaded once.
    pub spec: ModelSpec,
    /// Its input, precision and training mode (the first length of a sweep).
    pub options: ModelOptions,
    /// A sweep's lengths (two or more), or none.
    pub sweep: Vec<usize>,
}

impl Model {
    /// This model at `seq_len` tokens a sample.
    pub fn at_seq_len(&self, seq_len: usize) -> Model {
        Model {
            options: ModelOptions {
                seq_len: Some(seq_len),
                ..self.options.clone()
            },
            sweep: Vec::new(),
            ..self.clone()
        }
    }

    /// What the report says about it.
    pub fn info(&self) -> Result<ModelInfo, Error> {
        self.spec.info(&self.options)
    }
}

/// How trials run: the model and its optimizer, the devices, the memory, the output.
#[derive(Debug, Clone)]
pub struct Trials {
    /// The model.
    pub model: Model,
    /// Its optimizer.
    pub optimizer: OptimizerKind,
    /// The devices asked for (one, or a list of CUDA devices).
    pub devices: Vec<DeviceRequest>,
    /// False with `--no-fallback`.
    pub allow_fallback: bool,
    /// `--memory`.
    pub memory: Option<u64>,
    /// `--steps-per-trial`, when given (else the device's default).
    pub steps_per_trial: Option<usize>,
    /// The GPU check's `--ignore-element-cap`.
    pub ignore_element_cap: bool,
    /// The tests' `--debug-abort-from` (always `None` outside test builds).
    pub abort_from: Option<usize>,
    /// JSON on stdout.
    pub json: bool,
    /// How the result cache is used.
    pub cache: CacheUse,
    /// `--no-cache` as typed (a child is given it; a verification run refreshes the cache
    /// without it).
    pub no_cache: bool,
}

/// The search: its trials and settings, and what is added to its answer.
#[derive(Clone)]
pub struct Search {
    /// How trials run.
    pub trials: Trials,
    /// The search's settings, validated (steps per trial: the flag's, or the library's
    /// default until the device's replaces it).
    pub settings: SearchSettings,
    /// `--plan-for`.
    pub plan_for: Vec<Memory>,
    /// `--what-if`.
    pub what_if: bool,
    /// `--plot`, checked writable.
    pub plot: Option<PathBuf>,
    /// `--isolate`.
    pub isolate: bool,
    /// `--mode train+eval`: after the training search, the evaluation batch beside it.
    pub eval_after: bool,
}

/// `check` (and the hidden `trial`): one size.
pub struct Check {
    /// How the trial runs.
    pub trials: Trials,
    /// The size.
    pub batch_size: usize,
    /// `--verify-steps`: the trial is that many consecutive steps.
    pub verify_steps: Option<usize>,
    /// `--eval-batch-size`: an evaluation of this size beside the training step.
    pub eval_batch_size: Option<usize>,
}

/// `estimate`.
pub struct Estimate {
    /// The model.
    pub model: Model,
    /// Its optimizer.
    pub optimizer: OptimizerKind,
    /// What to predict for: `--memory`, then `--plan-for`'s; every named GPU by default.
    pub memory: Vec<Memory>,
    /// `--batch-size`, for the per-phase table.
    pub batch_size: Option<usize>,
    /// The margin the recommended size leaves free.
    pub margin: f64,
    /// JSON on stdout.
    pub json: bool,
}

/// `models`.
pub struct Models {
    /// `--config`'s model, or the presets.
    pub config: Option<ModelSpec>,
    /// JSON on stdout.
    pub json: bool,
}

/// Resolves the command line.
pub fn resolve(cli: Cli) -> Result<Job> {
    Ok(match cli.command {
        None => Job::Search(search(cli.search)?),
        Some(Command::Check(args)) => Job::Check(check(args)?),
        Some(Command::Trial(args)) => Job::Trial(check(args)?),
        Some(Command::Estimate(args)) => Job::Estimate(estimate(args)?),
        Some(Command::Models(args)) => Job::Models(models(args)?),
        Some(Command::PoolSelfTest(args)) => Job::PoolSelfTest(args.device.0[0]),
        Some(Command::ElementProbe(args)) => Job::ElementProbe(args.gpu.device.0[0], args.elements),
    })
}

fn models(args: ModelsArgs) -> Result<Models> {
    let config = args
        .config
        .map(|path| ModelSpec::load(&ModelSource::Config(path)))
        .transpose()?;
    Ok(Models {
        config,
        json: args.json,
    })
}

/// The model of `model` trained as `step` says; every length of a sweep checked.
fn model(model: &ModelArgs, step: &StepArgs) -> Result<Model> {
    let source = match (&model.config, &model.model) {
        (Some(path), _) => ModelSource::Config(path.clone()),
        (None, name) => ModelSource::Preset(name.clone().unwrap_or_default()),
    };
    let spec = ModelSpec::load(&source)?;
    let mode = mode(step)?;
    let options = ModelOptions {
        seq_len: step.seq_len.first().copied(),
        image_size: step.image_size,
        dtype: step.dtype,
        amp: step.amp,
        lora: (step.lora_rank > 0).then(|| LoraOptions {
            rank: step.lora_rank,
            alpha: step.lora_alpha,
            targets: step.lora_targets.clone(),
        }),
        mode,
    };
    let resolved = Model {
        source,
        spec,
        options,
        sweep: if step.seq_len.len() > 1 {
            step.seq_len.clone()
        } else {
            Vec::new()
        },
    };
    // A length past a learned context is refused before the first length runs.
    for &seq_len in &resolved.sweep {
        resolved.at_seq_len(seq_len).info()?;
    }
    resolved.info()?;
    Ok(resolved)
}

/// The step `--mode` and its flags describe (`train+eval` is a training step; the search
/// adds the evaluation after it).
fn mode(step: &StepArgs) -> Result<StepMode> {
    let generates = step.mode == ModeArg::Generate;
    if !generates {
        if let Some(n) = step.prompt_len {
            return Err(Error::setting(
                Setting::PromptLen,
                n,
                "$PromptLen is a generation's; add $Mode generate or drop it",
            )
            .into());
        }
        if let Some(n) = step.new_tokens {
            return Err(Error::setting(
                Setting::NewTokens,
                n,
                "$NewTokens is a generation's; add $Mode generate or drop it",
            )
            .into());
        }
    }
    if let (Some(b), false) = (step.beside_training, step.mode == ModeArg::Eval) {
        return Err(Error::setting(
            Setting::Mode,
            b,
            "--beside-training sets the training batch an evaluation runs beside; it takes \
             $Mode eval (or use $Mode train+eval, which finds the training batch first)",
        )
        .into());
    }
    Ok(match step.mode {
        ModeArg::Train | ModeArg::TrainEval => StepMode::Train,
        ModeArg::Eval => StepMode::Eval {
            beside_training: step.beside_training,
        },
        ModeArg::Generate => match (step.prompt_len, step.new_tokens) {
            (Some(prompt_len), Some(new_tokens)) => StepMode::Generate {
                prompt_len,
                new_tokens,
            },
            _ => {
                return Err(Error::setting(
                    Setting::Mode,
                    "generate",
                    "$Mode generate needs $PromptLen and $NewTokens (e.g. $PromptLen 512 \
                     $NewTokens 128)",
                )
                .into())
            }
        },
    })
}

/// How the trials `args` describe run; the cache is refreshed when `must_run` (a
/// verification run, whose point is to run in this environment now).
fn trials(args: &TrialArgs, must_run: bool) -> Result<Trials> {
    maxbatch::settings::check_budget(args.device.memory)?;
    #[cfg(feature = "test-hooks")]
    let abort_from = args.device.debug_abort_from;
    #[cfg(not(feature = "test-hooks"))]
    let abort_from = None;
    Ok(Trials {
        model: model(&args.model, &args.step)?,
        optimizer: args.step.optimizer,
        devices: args.device.device.0.clone(),
        allow_fallback: !args.device.no_fallback,
        memory: args.device.memory,
        steps_per_trial: args.device.steps_per_trial,
        ignore_element_cap: args.device.ignore_element_cap,
        abort_from,
        json: args.json,
        cache: if args.no_cache || must_run {
            CacheUse::Refresh
        } else {
            CacheUse::Answer
        },
        no_cache: args.no_cache,
    })
}

impl Trials {
    /// The settings every trial runs with: the steps per trial (`--steps-per-trial`, or the
    /// library's default until the device's replaces it) and the optimizer.
    pub fn settings(&self) -> SearchSettings {
        SearchSettings {
            steps_per_trial: self
                .steps_per_trial
                .unwrap_or(SearchSettings::default().steps_per_trial),
            optimizer: self
                .model
                .options
                .mode
                .keeps_training_state()
                .then_some(self.optimizer),
            mode: self.model.options.mode,
            ..SearchSettings::default()
        }
    }
}

fn search(args: SearchArgs) -> Result<Search> {
    let trials = trials(&args.trial, args.verify_steps.is_some())?;
    let settings = SearchSettings {
        strategy: args.strategy,
        start: args.start,
        max_batch: args.max_batch,
        margin: args.margin,
        dataset_size: args.dataset_size,
        epochs: args.epochs,
        drop_last: args.drop_last,
        accumulation: args.target_batch.map(|target_batch| AccumulationGoal {
            target_batch,
            world_size: args.world_size,
            micro_batch: args.micro_batch,
        }),
        verify_steps: args.verify_steps.unwrap_or(0),
        ..trials.settings()
    };
    settings.validate()?;
    let search = Search {
        plan_for: args.plan_for.map(|m| m.0).unwrap_or_default(),
        what_if: args.what_if,
        plot: args.plot,
        isolate: args.isolate,
        eval_after: args.trial.step.mode == ModeArg::TrainEval,
        settings,
        trials,
    };
    if search.eval_after {
        if !search.trials.model.sweep.is_empty() || search.trials.devices.len() > 1 {
            bail!(
                "--mode train+eval searches one model on one device; give one --seq-len and \
                 one --device"
            );
        }
        if search.what_if {
            bail!("--what-if changes the training search; run it without --mode train+eval");
        }
    }
    if !search.trials.model.sweep.is_empty() {
        refuse_in_a_sweep(&search)?;
    } else if search.what_if && search.trials.devices.len() > 1 {
        bail!("--what-if searches one device; give one --device");
    }
    if let Some(path) = &search.plot {
        writable(path)?; // an unwritable output fails before the first trial
    }
    Ok(search)
}

/// What a sequence-length sweep does not combine with.
fn refuse_in_a_sweep(search: &Search) -> Result<()> {
    let refuse = |what: &str, why: &str| -> Result<()> {
        bail!("{what} does not combine with a --seq-len sweep ({why}); run it at one length")
    };
    if search.trials.devices.len() > 1 {
        return refuse("a list of devices", "one device per sweep");
    }
    if search.isolate {
        return refuse("--isolate", "the sweep reuses one model in this process");
    }
    if search.settings.verify_steps > 0 {
        return refuse(
            "--verify-steps",
            "a verification run is for the size you will train at",
        );
    }
    if search.plot.is_some() || !search.plan_for.is_empty() {
        return refuse("--plot and --plan-for", "they draw one report");
    }
    if search.what_if {
        return refuse(
            "--what-if",
            "its half length is one more length of the sweep",
        );
    }
    Ok(())
}

fn check(args: CheckArgs) -> Result<Check> {
    let trials = trials(&args.trial, args.verify_steps.is_some())?;
    if !trials.model.sweep.is_empty() {
        bail!(
            "a list of --seq-len lengths is a sweep, which only the search runs; give one \
             length here"
        );
    }
    trials.settings().validate_check(args.batch_size)?;
    if args.verify_steps == Some(0) {
        return Err(Error::setting(
            Setting::VerifySteps,
            0,
            "$VerifySteps must be at least 1 step",
        )
        .into());
    }
    if args.eval_batch_size == Some(0) {
        return Err(Error::setting(
            Setting::EvalBatchSize,
            0,
            "$EvalBatchSize must be at least 1",
        )
        .into());
    }
    if let Some(eval) = args.eval_batch_size {
        if !trials.model.options.mode.trains() || args.trial.step.mode == ModeArg::TrainEval {
            return Err(Error::setting(
                Setting::EvalBatchSize,
                eval,
                "$EvalBatchSize checks an evaluation beside a training step; drop $Mode (the \
                 training step at $BatchSize is the default)",
            )
            .into());
        }
        trials.settings().validate_check(eval)?;
        if args.verify_steps.is_some() {
            bail!("--verify-steps verifies one size; drop --eval-batch-size or --verify-steps");
        }
    } else if args.trial.step.mode == ModeArg::TrainEval {
        bail!(
            "check --mode train+eval needs the evaluation batch size too: give \
             --eval-batch-size"
        );
    }
    Ok(Check {
        trials,
        batch_size: args.batch_size,
        verify_steps: args.verify_steps,
        eval_batch_size: args.eval_batch_size,
    })
}

fn estimate(args: EstimateArgs) -> Result<Estimate> {
    maxbatch::settings::check_margin(args.margin)?;
    if args.batch_size == Some(0) {
        return Err(Error::setting(Setting::BatchSize, 0, "$BatchSize must be at least 1").into());
    }
    let model = model(&args.model, &args.step)?;
    if !model.sweep.is_empty() {
        bail!("the estimate takes one --seq-len length; give one");
    }
    if args.step.mode == ModeArg::TrainEval {
        bail!(
            "the estimate predicts one step: give --mode train (the default), or --mode eval \
             --beside-training B for the evaluation beside a training batch of B"
        );
    }
    let mut memory: Vec<Memory> = args
        .memory
        .map(|bytes| Memory::capacity("--memory", bytes))
        .into_iter()
        .collect();
    match args.plan_for {
        Some(more) => memory.extend(more.0),
        None if memory.is_empty() => memory = Memory::every_gpu(),
        None => {}
    }
    Ok(Estimate {
        model,
        optimizer: args.step.optimizer,
        memory,
        batch_size: args.batch_size,
        margin: args.margin,
        json: args.json,
    })
}

/// Fails when `path` cannot be written, leaving no file behind that was not there.
fn writable(path: &std::path::Path) -> Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write the plot to {}: {e}; choose another --plot path",
                path.display()
            )
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
