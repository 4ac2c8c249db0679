//! Memory measurement: one [`MemoryMeter`] trait, a file per device.
//!
//! A meter knows the capacity trials are measured against and the peak bytes in use since
//! its last reset. Devices differ only here: the search and the probe see a meter.

pub mod available;
mod capacity;
pub mod counting;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod errors;
pub mod parts;
pub mod sampled;
pub mod stop;

pub use capacity::{Capacity, CapacitySource};

use crate::error::Error;

/// Measures peak memory on one device.
///
/// `reset_peak` then a trial then `peak_bytes` gives the trial's peak. Implementations
/// must count every byte the training step holds on the device.
pub trait MemoryMeter {
    /// The capacity trials are measured against.
    fn capacity(&self) -> Capacity;

    /// Starts a new peak window at the bytes in use now.
    fn reset_peak(&mut self) -> candle_core::Result<()>;

    /// The most bytes in use since the last [`reset_peak`](Self::reset_peak).
    fn peak_bytes(&mut self) -> candle_core::Result<u64>;

    /// Bytes in use now.
    fn current_bytes(&mut self) -> candle_core::Result<u64>;

    /// The most memory the machine can give, when running past it would not fail cleanly
    /// (on the CPU an allocation failure aborts the process): a trial predicted to need
    /// more than [`cpu::GUARD_SHARE`] of it is not started. `None` where the device
    /// reports out-of-memory as an error.
    fn hard_limit(&self) -> Option<u64> {
        None
    }

    /// The device's out-of-memory status that `error` carries, named (e.g.
    /// `CUDA_ERROR_OUT_OF_MEMORY`), or `None` when `error` is any other failure. A typed
    /// check, never a message match alone.
    fn out_of_memory(&self, _error: &candle_core::Error) -> Option<&'static str> {
        None
    }

    /// What to do about `error`, a failure that is not out of memory but may come from a
    /// device short of memory (cuBLAS's `EXECUTION_FAILED`), naming it; `None` elsewhere.
    fn failure_hint(&self, _error: &candle_core::Error) -> Option<String> {
        None
    }

    /// The most bytes the device's allocator reserved since the last reset, where it
    /// reserves more than it hands out (a CUDA memory pool). `None` elsewhere.
    fn reserved_peak_bytes(&mut self) -> candle_core::Result<Option<u64>> {
        Ok(None)
    }

    /// False when the peak is sampled rather than counted, so it may miss a short spike.
    fn peak_is_exact(&self) -> bool {
        true
    }

    /// How this meter measures, in words, for the report (e.g. "the CUDA memory pool's
    /// high-water marks").
    fn describe(&self) -> &'static str {
        "the heap bytes a counting allocator saw"
    }

    /// After a trial: gives back what the device's allocator can release and returns the
    /// bytes still in use above `baseline` (the bytes in use before the trial), which a
    /// clean recovery leaves at 0. `None` where the meter cannot tell.
    fn recover(&mut self, _baseline: u64) -> candle_core::Result<Option<u64>> {
        Ok(None)
    }

    /// True when the first step on the device loads code and workspaces that would inflate
    /// the first trial, so one warm-up step should run before the search.
    fn needs_warmup(&self) -> bool {
        false
    }

    /// Arms the built-in models' stop points (see [`stop`]) to stop this thread's backward
    /// pass (and its forward pass, where `at` says so) once the counted peak passes `at`'s;
    /// `None` disarms them. Only a meter that counts the heap (the CPU's) arms them;
    /// elsewhere this does nothing.
    fn arm_stop_points(&mut self, _at: Option<stop::StopAt>) {}

    /// Makes ready the memory a trial that peaks at `peak_bytes` will use, before any trial
    /// is timed (default: nothing). The CPU meter touches the heap up to there once, where
    /// the allocator keeps freed memory for reuse ([`cpu::keep_freed_memory`]), so that the
    /// first trial's step time does not include the kernel handing the process fresh pages.
    fn prepare(&mut self, _peak_bytes: u64) {}

    /// Starts (`true`) or pauses (`false`) recording the built-in models' part marks on
    /// this thread (see [`parts`]): only a meter that counts the heap (the CPU's) records
    /// them. Recording allocates nothing.
    fn record_parts(&mut self, _on: bool) {}

    /// Stops recording and returns the marks of the last recording: "start", then each
    /// part of the forward pass with the bytes in use when it was done.
    fn recorded_parts(&mut self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// After the warm-up step: re-reads the capacity where the warm-up took memory the
    /// meter does not count (a CUDA context's growth, kernels, library workspaces).
    fn after_warmup(&mut self) -> candle_core::Result<()> {
        Ok(())
    }

    /// Bytes the device holds outside what the meter counts (driver context, library
    /// workspaces, kernels, other processes). `None` where unknown.
    fn outside_bytes(&mut self) -> candle_core::Result<Option<u64>> {
        Ok(None)
    }

    /// The device's total memory, where it has one of its own.
    fn total_bytes(&self) -> Option<u64> {
        None
    }

    /// Sets what every trial counts as held before it: `held` bytes, or everything in use
    /// now (`None`); returns that figure. Called once, before the first trial.
    fn mark_reference(&mut self, held: Option<u64>) -> candle_core::Result<u64> {
        match held {
            Some(bytes) => Ok(bytes),
            None => self.current_bytes(),
        }
    }

    /// Bytes the meter itself made the process hold (the CPU's matrix-multiply
    /// workspaces), which every trial counts. 0 elsewhere.
    fn own_bytes(&self) -> u64 {
        0
    }

    /// Bytes in use now beyond what trials count as held (see
    /// [`mark_reference`](Self::mark_reference)): what else the process holds, and what the
    /// search's own bookkeeping added since. A trial's peak is counted without them, so that
    /// it does not depend on the process or the trials before it. 0 where the meter counts
    /// only the device's memory.
    fn drift_bytes(&mut self) -> candle_core::Result<u64> {
        Ok(0)
    }
}

/// The meter for `device`: the CPU's counting allocator against `budget` (default: the
/// machine's available memory), or the CUDA memory pool (capped at `budget` when given).
pub fn meter_for(
    device: &candle_core::Device,
    budget: Option<u64>,
) -> Result<Box<dyn MemoryMeter>, Error> {
    if device.is_cuda() {
        return cuda_meter(device, budget);
    }
    let meter = match budget {
        Some(bytes) => cpu::CpuMeter::with_budget(bytes)?,
        None => cpu::CpuMeter::from_available_memory()?,
    };
    if let (Some(budget), Some(limit)) = (budget, meter.machine_limit()) {
        if budget > limit {
            tracing::warn!(
                "the memory budget {} is more than this machine can give ({}); sizes \
                 predicted beyond that are reported out of memory without running",
                crate::format::bytes(budget),
                crate::format::bytes(limit)
            );
        }
    }
    Ok(Box::new(meter))
}

#[cfg(feature = "cuda")]
fn cuda_meter(
    device: &candle_core::Device,
    budget: Option<u64>,
) -> Result<Box<dyn MemoryMeter>, Error> {
    Ok(Box::new(cuda::CudaMeter::new(device, budget)?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_meter(
    _device: &candle_core::Device,
    _budget: Option<u64>,
) -> Result<Box<dyn MemoryMeter>, Error> {
    Err(Error::CudaUnavailable {
        reason: "measuring a CUDA device needs a build with `--features cuda`".into(),
    })
}
