//! Stopping a CPU trial inside its backward pass, once its peak is far past the budget.
//!
//! candle's backward pass is one call, so a trial could only be stopped at its phase
//! boundaries: a size far past the budget ran its whole forward and backward pass first.
//! The built-in models route one small weight of each block (a norm's scale, a bias)
//! through a [`stop_point`], an identity whose gradient step asks whether the trial's peak
//! has passed the limit armed for this thread ([`arm`]: the budget plus [`FAR_PAST`]); when
//! it has, the backward pass returns an error ([`is_over_budget`]) and the trial is out of
//! memory, measured (see docs/design.md). A trial that only confirms that a size fails is
//! armed at the budget itself, and its forward pass asks too (the op's forward step).
//! A frozen norm (LoRA) has no stop point on its untracked scale, which the backward pass
//! never reaches; its frozen scale and shift ask instead ([`check`], `models::frozen`).

use std::cell::Cell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::counting::CountingAllocator;

/// How far past its budget (as a fraction of it) a trial's peak must be for a stop point to
/// end its backward pass. A trial just past the budget finishes the pass: its backward
/// boundary's peak is then measured, a point beside the answer that makes the next
/// prediction exact (on the MLP at 384 and 768 MiB, a trial fewer). One far past it has
/// nothing to teach that is worth the time.
pub const FAR_PAST: f64 = 0.10;

thread_local! {
    /// The heap peak past which this thread's backward pass stops (`None`: never).
    static LIMIT: Cell<Option<u64>> = const { Cell::new(None) };
    /// True when the forward pass stops at its stop points too.
    static IN_FORWARD: Cell<bool> = const { Cell::new(false) };
}

/// Where a trial's stop points stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopAt {
    /// The heap peak past which the step stops at its next stop point.
    pub peak_bytes: u64,
    /// True when the forward pass stops too (a trial that only confirms a failure: it has
    /// nothing to measure once past the limit); else only the backward pass does (the
    /// forward boundary's peak is a measurement worth finishing the pass for).
    pub in_forward: bool,
}

/// Makes this thread's passes stop at the next stop point once the counting allocator's
/// peak exceeds `at`'s; `None` disarms it.
pub fn arm(at: Option<StopAt>) {
    LIMIT.with(|limit| limit.set(at.map(|a| a.peak_bytes)));
    IN_FORWARD.with(|f| f.set(at.is_some_and(|a| a.in_forward)));
}

/// True when the armed limit is set and the counted peak has passed it.
fn past_limit() -> bool {
    LIMIT
        .with(|limit| limit.get())
        .is_some_and(|limit| CountingAllocator::peak_bytes() > limit)
}

/// The message of a pass stopped at a stop point. candle keeps a wrapped error only as
/// text, so the text is how the trial recognises it.
const OVER_BUDGET: &str = "maxbatch stop point: the peak passed the budget";

/// True when `error` is a backward pass stopped by a stop point.
pub fn is_over_budget(error: &candle_core::Error) -> bool {
    error.to_string().contains(OVER_BUDGET)
}

/// A stop point's check, for [`stop_point`] and for an op that is one without being it (a
/// frozen weight's scale or shift, see `models::frozen`): an error once the armed limit is
/// passed, in the backward pass (`forward` false) or, when armed for it, in the forward pass.
pub fn check(forward: bool) -> Result<()> {
    if (!forward || IN_FORWARD.with(|f| f.get())) && past_limit() {
        return Err(candle_core::Error::Msg(OVER_BUDGET.to_string()));
    }
    Ok(())
}

/// `weight`, through a point where a trial's backward pass may stop: the value and the
/// gradient are unchanged; the forward pass copies `weight` (use a small one: a norm's
/// scale, a bias).
pub fn stop_point(weight: &Tensor) -> Result<Tensor> {
    weight.apply_op1(StopPoint)
}

/// The identity op behind [`stop_point`].
struct StopPoint;

impl StopPoint {
    fn whole_weight(layout: &Layout) -> Result<()> {
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            candle_core::bail!("a stop point takes a whole contiguous tensor (a weight)");
        }
        Ok(())
    }
}

impl CustomOp1 for StopPoint {
    fn name(&self) -> &'static str {
        "stop-point"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        Self::whole_weight(layout)?;
        check(true)?;
        Ok((storage.try_clone(layout)?, layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Self::whole_weight(layout)?;
        Ok((storage.try_clone(layout)?, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        check(false)?;
        Ok(Some(grad_res.clone()))
    }
}
