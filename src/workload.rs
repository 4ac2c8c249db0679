//! What a trial runs: the [`TrainStep`] trait (the user's training step), the built-in
//! [`Workload`] (a model, its optimizer and synthetic batches), and the optimizer choice.

use std::fmt;
use std::str::FromStr;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW, VarBuilder, VarMap, SGD};

use crate::models::params::{ParamStore, Trains};
use serde::{Deserialize, Serialize};

use crate::models::{Model, ModelOptions, ModelSpec, StepMode};

/// A point inside one training step where a trial may be stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The forward pass and the loss are computed.
    Forward,
    /// The gradients are computed.
    Backward,
    /// The optimizer has updated the weights: the step is done.
    Update,
    /// A generation's prompt is prefilled: its KV cache holds the prompt's tokens.
    Prefill,
    /// A generation's decode steps are done: its KV cache is full.
    Decode,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Update => "update",
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        })
    }
}

/// One full training step at a given batch size: forward, loss, backward, optimizer
/// update. maxbatch calls it repeatedly with different batch sizes.
///
/// Any `FnMut(usize) -> candle_core::Result<()>` is a `TrainStep`.
pub trait TrainStep {
    /// Runs one training step on a batch of `batch_size` samples.
    fn step(&mut self, batch_size: usize) -> Result<()>;

    /// Runs one step, calling `boundary` after the forward pass and after the backward
    /// pass. When `boundary` returns an error the step must stop and return it: that is how
    /// a trial over its memory budget stops early. An override need not report the update:
    /// the trial reads the peak when the step returns. The default runs
    /// [`step`](Self::step) and calls `boundary` after the update only. A closure reports
    /// its boundaries through [`phased`].
    fn step_with_boundaries(
        &mut self,
        batch_size: usize,
        boundary: &mut dyn FnMut(Phase) -> Result<()>,
    ) -> Result<()> {
        self.step(batch_size)?;
        boundary(Phase::Update)
    }

    /// False for a step without a backward pass (an evaluation, a generation): a trial's
    /// stop points then stop its forward pass once its peak is past the capacity, since
    /// there is nothing after it worth measuring.
    fn has_backward(&self) -> bool {
        true
    }

    /// The phase a step is in before its first boundary: the forward pass (a generation's
    /// prefill), for a trial stopped there to say where.
    fn first_phase(&self) -> Phase {
        Phase::Forward
    }
}

/// An evaluation step written as a closure (a forward pass and the loss, no backward
/// pass): a trial of it stops at the first stop point past the capacity. Give the
/// [`Finder`](crate::Finder) `StepMode::EVAL` too, so that its report and cache say so.
pub fn evaluation<F: FnMut(usize) -> Result<()>>(step: F) -> Evaluation<F> {
    Evaluation(step)
}

/// A closure's evaluation step (see [`evaluation`]).
pub struct Evaluation<F>(F);

impl<F: FnMut(usize) -> Result<()>> TrainStep for Evaluation<F> {
    fn step(&mut self, batch_size: usize) -> Result<()> {
        (self.0)(batch_size)
    }

    fn step_with_boundaries(
        &mut self,
        batch_size: usize,
        boundary: &mut dyn FnMut(Phase) -> Result<()>,
    ) -> Result<()> {
        (self.0)(batch_size)?;
        boundary(Phase::Forward)
    }

    fn has_backward(&self) -> bool {
        false
    }
}

impl<F: FnMut(usize) -> Result<()>> TrainStep for F {
    fn step(&mut self, batch_size: usize) -> Result<()> {
        self(batch_size)
    }
}

/// The handle a [`phased`] training step reports its phase boundaries through.
pub struct Boundaries<'a> {
    report: Option<&'a mut dyn FnMut(Phase) -> Result<()>>,
}

impl Boundaries<'_> {
    /// Call once the loss is computed; return its error at once (`?`): the trial is then
    /// over its budget and stops before the backward pass.
    pub fn after_forward(&mut self) -> Result<()> {
        self.report(Phase::Forward)
    }

    /// Call once the gradients are computed; return its error at once (`?`): the trial is
    /// then over its budget and stops before the optimizer's update.
    pub fn after_backward(&mut self) -> Result<()> {
        self.report(Phase::Backward)
    }

    fn report(&mut self, phase: Phase) -> Result<()> {
        match &mut self.report {
            Some(report) => report(phase),
            None => Ok(()),
        }
    }
}

/// A training step written as a closure that reports its phase boundaries, so that an
/// over-budget trial stops after the forward or the backward pass instead of running the
/// whole step:
/// ```
/// # use candle_core::Result;
/// # fn forward(b: usize) -> Result<()> { Ok(()) }
/// # fn backward() -> Result<()> { Ok(()) }
/// # fn update() -> Result<()> { Ok(()) }
/// let mut step = maxbatch::phased(|batch_size, phases| {
///     forward(batch_size)?;
///     phases.after_forward()?;
///     backward()?;
///     phases.after_backward()?;
///     update()
/// });
/// ```
pub fn phased<F>(step: F) -> Phased<F>
where
    F: FnMut(usize, &mut Boundaries<'_>) -> Result<()>,
{
    Phased(step)
}

/// A closure that reports its phase boundaries (see [`phased`]).
pub struct Phased<F>(F);

impl<F> TrainStep for Phased<F>
where
    F: FnMut(usize, &mut Boundaries<'_>) -> Result<()>,
{
    fn step(&mut self, batch_size: usize) -> Result<()> {
        (self.0)(batch_size, &mut Boundaries { report: None })
    }

    fn step_with_boundaries(
        &mut self,
        batch_size: usize,
        boundary: &mut dyn FnMut(Phase) -> Result<()>,
    ) -> Result<()> {
        (self.0)(
            batch_size,
            &mut Boundaries {
                report: Some(&mut *boundary),
            },
        )?;
        boundary(Phase::Update)
    }
}

/// The optimizer a built-in workload trains with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW with candle's default parameters: two moments per variable.
    #[default]
    AdamW,
    /// Plain SGD (no momentum): no optimizer state.
    Sgd,
}

impl OptimizerKind {
    /// Copies of the weights the optimizer keeps: AdamW's two moments, SGD's none.
    pub fn state_copies(self) -> u64 {
        match self {
            OptimizerKind::AdamW => 2,
            OptimizerKind::Sgd => 0,
        }
    }
}

impl FromStr for OptimizerKind {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "adamw" => Ok(OptimizerKind::AdamW),
            "sgd" => Ok(OptimizerKind::Sgd),
            _ => Err(format!("unknown optimizer {text:?}; use adamw or sgd")),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Sgd => "sgd",
        })
    }
}

enum Optimizer {
    AdamW(AdamW),
    Sgd(SGD),
}

impl Optimizer {
    fn new(kind: OptimizerKind, varmap: &VarMap) -> Result<Self> {
        let vars = varmap.all_vars();
        Ok(match kind {
            OptimizerKind::AdamW => Optimizer::AdamW(AdamW::new(vars, ParamsAdamW::default())?),
            OptimizerKind::Sgd => Optimizer::Sgd(SGD::new(vars, 1e-3)?),
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        match self {
            Optimizer::AdamW(o) => o.step(grads),
            Optimizer::Sgd(o) => o.step(grads),
        }
    }
}

/// A built-in model with its optimizer, trained (or evaluated, or generating) on
/// synthetic batches, as `options.mode` says.
pub struct Workload {
    /// The model the trials run, built once; `None` under mixed precision, where each step
    /// builds it again from the f32 variables (see [`Workload::loss`]).
    model: Option<Box<dyn Model>>,
    spec: ModelSpec,
    options: ModelOptions,
    /// What the trials' model is built from (the detached view of the training store for
    /// an evaluation beside training).
    store: ParamStore,
    /// The optimizer and its state: for training, and an evaluation beside it.
    optimizer: Option<Optimizer>,
    device: Device,
}

impl Workload {
    /// Builds `spec` on `device` with random weights kept in `options.dtype` (frozen
    /// under LoRA except the adapters), and the optimizer's state for the trained ones.
    /// An evaluation or a generation on its own trains nothing and keeps no optimizer; an
    /// evaluation beside training keeps both, and runs one training step at its training
    /// batch size here, so that what the trials count as held is what a training loop
    /// holds between its steps.
    pub fn new(
        spec: &ModelSpec,
        options: &ModelOptions,
        optimizer: OptimizerKind,
        device: &Device,
    ) -> std::result::Result<Self, crate::Error> {
        let trains = match (options.mode.keeps_training_state(), options.lora.is_some()) {
            (false, _) => Trains::Nothing,
            (true, true) => Trains::Adapters,
            (true, false) => Trains::All,
        };
        let store = ParamStore::new(options.dtype, trains);
        let model = spec.build(options, Self::builder(&store, options, device))?;
        let optimizer = match options.mode.keeps_training_state() {
            true => Some(Optimizer::new(optimizer, store.trainable())?),
            false => None,
        };
        let mut workload = Self {
            model: options.amp.is_none().then_some(model),
            spec: spec.clone(),
            options: options.clone(),
            store,
            optimizer,
            device: device.clone(),
        };
        if let StepMode::Eval {
            beside_training: Some(train_batch),
        } = options.mode
        {
            // Built as training, stepped once, then turned to evaluate.
            workload.options.mode = StepMode::Train;
            workload.train_once(train_batch)?;
            return workload.evaluating_beside_training(train_batch);
        }
        Ok(workload)
    }

    /// This training workload, after the training steps it ran, turned to evaluate while
    /// its training state is held (`StepMode::Eval { beside_training: Some(train_batch) }`):
    /// the model built again from the detached view of its variables (the same storage,
    /// untracked), the optimizer and its state kept. Run a training step at `train_batch`
    /// first (a `check` at that size does, measured against the capacity); [`new`](Self::new)
    /// with that mode runs one itself, unmeasured.
    pub fn evaluating_beside_training(
        mut self,
        train_batch: usize,
    ) -> std::result::Result<Self, crate::Error> {
        if self.options.mode != StepMode::Train {
            return Err(crate::Error::setting(
                crate::error::Setting::Mode,
                "eval",
                "only a training workload can evaluate beside its training state",
            ));
        }
        self.options.mode = StepMode::Eval {
            beside_training: Some(train_batch),
        };
        self.store = self.store.detached();
        if self.model.is_some() {
            let vb = Self::builder(&self.store, &self.options, &self.device);
            self.model = Some(self.spec.build(&self.options, vb)?);
        }
        Ok(self)
    }

    /// One training step at `batch_size`, the loop's `backward_step`: what an evaluation
    /// beside training runs before its trials.
    fn train_once(&mut self, batch_size: usize) -> Result<()> {
        self.train_step(batch_size, &mut |_| Ok(()))
    }

    fn train_step(
        &mut self,
        batch_size: usize,
        boundary: &mut dyn FnMut(Phase) -> Result<()>,
    ) -> Result<()> {
        // The loop candle users write, `opt.backward_step(&loss)?`: the loss, and with it the
        // graph and the activations it holds, stays alive through the optimizer's update
        // (see docs/design.md). A loop that drops the graph before the update peaks lower.
        let loss = self.loss(batch_size)?;
        boundary(Phase::Forward)?;
        let grads = loss.backward()?;
        boundary(Phase::Backward)?;
        match &mut self.optimizer {
            Some(optimizer) => optimizer.step(&grads)?,
            None => candle_core::bail!("an evaluation or generation workload has no optimizer"),
        }
        drop(grads);
        boundary(Phase::Update)?;
        drop(loss);
        Ok(())
    }

    /// The model the trials run: built once, or under mixed precision built again now
    /// from casts of the f32 variables (see [`Workload::loss`]).
    fn with_model<T>(&self, run: impl FnOnce(&dyn Model) -> Result<T>) -> Result<T> {
        match &self.model {
            Some(model) => run(model.as_ref()),
            None => {
                let vb = Self::builder(&self.store, &self.options, &self.device);
                let rebuilt = self
                    .spec
                    .build(&self.options, vb)
                    .map_err(crate::Error::into_candle)?;
                crate::memory::parts::mark("weight casts");
                run(rebuilt.as_ref())
            }
        }
    }

    fn builder<'a>(store: &ParamStore, options: &ModelOptions, device: &Device) -> VarBuilder<'a> {
        VarBuilder::from_backend(
            Box::new(store.clone()),
            options.compute_dtype(),
            device.clone(),
        )
    }

    /// Trains on `seq_len` tokens per sample from now on, with the same weights and
    /// optimizer state: a sequence-length sweep builds the model once.
    pub fn set_seq_len(&mut self, seq_len: usize) -> std::result::Result<(), crate::Error> {
        let options = ModelOptions {
            seq_len: Some(seq_len),
            ..self.options.clone()
        };
        if self.model.is_some() {
            let vb = Self::builder(&self.store, &options, &self.device);
            self.model = Some(self.spec.build(&options, vb)?);
        }
        self.options = options;
        Ok(())
    }

    /// The model's trained variables.
    pub fn varmap(&self) -> &VarMap {
        self.store.trainable()
    }

    /// The weights that are not trained (LoRA's base weights) and their names, sorted.
    pub fn frozen(&self) -> Vec<(String, Tensor)> {
        self.store.frozen()
    }

    /// The number of trained parameters.
    pub fn parameter_count(&self) -> u64 {
        self.varmap()
            .all_vars()
            .iter()
            .map(|v| v.elem_count() as u64)
            .sum()
    }

    /// The loss of one synthetic batch (forward pass only). Under mixed precision the
    /// model is built again first, from casts of the f32 variables to the half dtype: the
    /// casts are part of the graph, so the backward pass turns their gradients into f32
    /// ones, and they stay alive until it is done, as PyTorch's autocast keeps them.
    pub fn loss(&self, batch_size: usize) -> Result<Tensor> {
        self.with_model(|model| {
            let batch = model.batch(batch_size, &self.device)?;
            crate::memory::parts::mark("inputs");
            model.loss(&batch)
        })
    }
}

impl TrainStep for Workload {
    fn step(&mut self, batch_size: usize) -> Result<()> {
        self.step_with_boundaries(batch_size, &mut |_| Ok(()))
    }

    fn step_with_boundaries(
        &mut self,
        batch_size: usize,
        boundary: &mut dyn FnMut(Phase) -> Result<()>,
    ) -> Result<()> {
        match self.options.mode {
            StepMode::Train => self.train_step(batch_size, boundary),
            StepMode::Eval { .. } => {
                // An evaluation loop reads each batch's loss; nothing is tracked, so every
                // activation was freed as soon as the next layer no longer needed it.
                let loss = self.loss(batch_size)?;
                loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
                boundary(Phase::Forward)?;
                drop(loss);
                Ok(())
            }
            StepMode::Generate {
                prompt_len,
                new_tokens,
            } => {
                self.with_model(|model| match model.decoder() {
                    Some(decoder) => crate::models::generation::generate(
                        decoder,
                        batch_size,
                        prompt_len,
                        new_tokens,
                        &self.device,
                        &mut || boundary(Phase::Prefill),
                    ),
                    None => candle_core::bail!(
                        "only the decoders (transformers, Llama-family and GPT-2 configs) generate"
                    ),
                })?;
                boundary(Phase::Decode)
            }
        }
    }

    fn has_backward(&self) -> bool {
        self.options.mode.trains()
    }

    fn first_phase(&self) -> Phase {
        match self.options.mode {
            StepMode::Generate { .. } => Phase::Prefill,
            _ => Phase::Forward,
        }
    }
}
