//! The CUDA meter: peak memory from the device's memory pool high-water marks.
//!
//! candle allocates every CUDA tensor with `cuMemAllocAsync` from the device's current
//! memory pool (no caching allocator of its own), so the pool's attributes are the exact
//! account of what a training step holds: `CU_MEMPOOL_ATTR_USED_MEM_HIGH` is the peak of
//! bytes in use since it was last set to 0, `RESERVED_MEM_HIGH` the peak the pool took from
//! the device. Both are read after a stream synchronisation. A device without memory pools
//! falls back to sampling `cuMemGetInfo` at each phase boundary: an approximate peak, counted
//! with the capacity from one reference (see [`SampledUse`]).
//!
//! Out of memory on CUDA is an error, not an abort, so a trial can really run out; this
//! module also recognises that error ([`is_cuda_out_of_memory`]) among all others.

use std::ffi::c_void;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaStream, DriverError};
use candle_core::cuda_backend::CudaError;
use candle_core::Device;

mod checks;
mod status;

pub use checks::{element_probe, pool_self_test, ElementProbe, PoolSelfTest};
pub use status::{failure_hint, is_cuda_out_of_memory, out_of_memory_status};

use super::sampled::SampledUse;
use super::{Capacity, CapacitySource, MemoryMeter};
use crate::error::Error;

/// Measures CUDA trials with the device's memory pool.
pub struct CudaMeter {
    stream: Arc<CudaStream>,
    pool: Option<sys::CUmemoryPool>,
    capacity: Capacity,
    budget: Option<u64>,
    total_bytes: u64,
    /// Without a pool: the reference in-use bytes are counted from.
    sampled: Option<SampledUse>,
    sampled_peak: u64,
    /// The pool's release threshold before the meter raised it, restored on drop.
    release_threshold: Option<u64>,
}

impl std::fmt::Debug for CudaMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaMeter")
            .field("ordinal", &self.stream.context().ordinal())
            .field("pool", &self.pool.is_some())
            .field("capacity", &self.capacity)
            .field("total_bytes", &self.total_bytes)
            .finish()
    }
}

fn driver(error: DriverError) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(CudaError::Cuda(error)))
}

impl CudaMeter {
    /// True when the device has a memory pool (the peaks are counted, not sampled).
    pub fn has_pool(&self) -> bool {
        self.pool.is_some()
    }

    /// A meter for `device` (a CUDA device). The capacity is what this process can use:
    /// the device's free memory plus what its pool already holds, or `budget` when that
    /// is smaller.
    pub fn new(device: &Device, budget: Option<u64>) -> Result<Self, Error> {
        let Device::Cuda(cuda) = device else {
            return Err(Error::setting(
                crate::error::Setting::Device,
                "cpu",
                "the CUDA meter needs a CUDA device",
            ));
        };
        let stream = cuda.cuda_stream();
        let context = stream.context().clone();
        context.bind_to_thread().map_err(driver)?;
        stream.synchronize().map_err(driver)?;
        let (free, total) = context.mem_get_info().map_err(driver)?;
        let pool = if context.has_async_alloc() {
            // SAFETY: the device handle is the context's own and stays valid while the
            // context (held by `stream`) lives.
            unsafe { result::device::get_mem_pool(context.cu_device()) }.ok()
        } else {
            None
        };
        let mut meter = Self {
            stream,
            pool,
            capacity: Capacity {
                bytes: 0,
                source: CapacitySource::Device,
                is_budget: false,
            },
            budget,
            total_bytes: total as u64,
            sampled: pool.is_none().then_some(SampledUse {
                reference: (total - free) as u64,
            }),
            sampled_peak: 0,
            release_threshold: None,
        };
        meter.capacity = meter.available(free as u64)?;
        // With a release threshold of 0 (the default) every synchronisation, three a step,
        // hands the pool's reservations back to the driver and the next step maps them
        // again: trials would time slower than training runs. The threshold is raised while
        // the meter lives; `recover` trims the pool after each trial, and the used high-water
        // mark stays the measure.
        if let Some(pool) = meter.pool {
            let previous = meter
                .pool_attribute(PoolFigure::ReleaseThreshold)?
                .unwrap_or(0);
            meter.set_pool_attribute(pool, PoolFigure::ReleaseThreshold, u64::MAX)?;
            meter.release_threshold = Some(previous);
        }
        Ok(meter)
    }

    /// The capacity with `free` bytes free on the device: those plus what the pool holds
    /// (this process's own tensors), or without a pool the device's total above the
    /// reference; the budget when that is smaller.
    fn available(&self, free: u64) -> candle_core::Result<Capacity> {
        let available = match self.sampled {
            Some(sampled) => sampled.capacity(self.total_bytes, None),
            None => {
                free + self
                    .pool_attribute(PoolFigure::ReservedCurrent)?
                    .unwrap_or(0)
            }
        };
        Ok(match self.budget {
            Some(b) if b < available => Capacity {
                bytes: b,
                source: CapacitySource::Flag,
                is_budget: true,
            },
            _ => Capacity {
                bytes: available,
                source: CapacitySource::Device,
                is_budget: false,
            },
        })
    }

    fn device_used(&self) -> candle_core::Result<u64> {
        let (free, total) = self.stream.context().mem_get_info().map_err(driver)?;
        Ok(total.saturating_sub(free) as u64)
    }

    /// Without a pool: the bytes in use above the reference.
    fn sampled_now(&self, sampled: SampledUse) -> candle_core::Result<u64> {
        Ok(sampled.counted(self.device_used()?))
    }

    fn pool_attribute(&self, figure: PoolFigure) -> candle_core::Result<Option<u64>> {
        let Some(pool) = self.pool else {
            return Ok(None);
        };
        let mut value: u64 = 0;
        // SAFETY: the pool is the device's current pool; these attributes are cuuint64_t.
        unsafe {
            result::mem_pool::get_attribute(
                pool,
                figure.attribute(),
                (&mut value as *mut u64).cast::<c_void>(),
            )
        }
        .map_err(driver)?;
        Ok(Some(value))
    }

    fn reset_high_marks(&self, pool: sys::CUmemoryPool) -> candle_core::Result<()> {
        for figure in [PoolFigure::UsedHigh, PoolFigure::ReservedHigh] {
            // The high marks may only be set to 0.
            self.set_pool_attribute(pool, figure, 0)?;
        }
        Ok(())
    }

    fn set_pool_attribute(
        &self,
        pool: sys::CUmemoryPool,
        figure: PoolFigure,
        value: u64,
    ) -> candle_core::Result<()> {
        let mut value = value;
        // SAFETY: as in `pool_attribute`; every attribute set here is a cuuint64_t.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                figure.attribute(),
                (&mut value as *mut u64).cast::<c_void>(),
            )
        }
        .map_err(driver)
    }
}

impl Drop for CudaMeter {
    fn drop(&mut self) {
        if let (Some(pool), Some(previous)) = (self.pool, self.release_threshold) {
            if let Err(error) =
                self.set_pool_attribute(pool, PoolFigure::ReleaseThreshold, previous)
            {
                tracing::warn!("could not restore the memory pool's release threshold: {error}");
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum PoolFigure {
    UsedCurrent,
    UsedHigh,
    ReservedCurrent,
    ReservedHigh,
    ReleaseThreshold,
}

impl PoolFigure {
    fn attribute(self) -> sys::CUmemPool_attribute {
        use sys::CUmemPool_attribute as A;
        match self {
            PoolFigure::UsedCurrent => A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            PoolFigure::UsedHigh => A::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            PoolFigure::ReservedCurrent => A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
            PoolFigure::ReservedHigh => A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
            PoolFigure::ReleaseThreshold => A::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
        }
    }
}

impl MemoryMeter for CudaMeter {
    fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn reset_peak(&mut self) -> candle_core::Result<()> {
        self.stream.synchronize().map_err(driver)?;
        match (self.pool, self.sampled) {
            (Some(pool), _) => self.reset_high_marks(pool),
            (None, Some(sampled)) => {
                self.sampled_peak = self.sampled_now(sampled)?;
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    fn peak_bytes(&mut self) -> candle_core::Result<u64> {
        self.stream.synchronize().map_err(driver)?;
        match (self.pool_attribute(PoolFigure::UsedHigh)?, self.sampled) {
            (Some(peak), _) => Ok(peak),
            (None, Some(sampled)) => {
                self.sampled_peak = self.sampled_peak.max(self.sampled_now(sampled)?);
                Ok(self.sampled_peak)
            }
            (None, None) => Ok(0),
        }
    }

    fn current_bytes(&mut self) -> candle_core::Result<u64> {
        self.stream.synchronize().map_err(driver)?;
        match (self.pool_attribute(PoolFigure::UsedCurrent)?, self.sampled) {
            (Some(used), _) => Ok(used),
            (None, Some(sampled)) => self.sampled_now(sampled),
            (None, None) => Ok(0),
        }
    }

    fn reserved_peak_bytes(&mut self) -> candle_core::Result<Option<u64>> {
        self.stream.synchronize().map_err(driver)?;
        self.pool_attribute(PoolFigure::ReservedHigh)
    }

    fn peak_is_exact(&self) -> bool {
        self.pool.is_some()
    }

    fn recover(&mut self, baseline: u64) -> candle_core::Result<Option<u64>> {
        self.stream.synchronize().map_err(driver)?;
        if let Some(pool) = self.pool {
            // SAFETY: the device's current pool; trimming frees only unused reservations.
            unsafe { result::mem_pool::trim_to(pool, 0) }.map_err(driver)?;
        }
        let now = self.current_bytes()?;
        Ok(Some(now.saturating_sub(baseline)))
    }

    fn needs_warmup(&self) -> bool {
        true
    }

    fn after_warmup(&mut self) -> candle_core::Result<()> {
        // The context's growth, lazily loaded kernels and cuBLAS's workspace now hold memory
        // outside the pool: what is free now, not at start, is what trials can have.
        self.stream.synchronize().map_err(driver)?;
        let (free, _) = self.stream.context().mem_get_info().map_err(driver)?;
        self.capacity = self.available(free as u64)?;
        Ok(())
    }

    fn outside_bytes(&mut self) -> candle_core::Result<Option<u64>> {
        self.stream.synchronize().map_err(driver)?;
        if let Some(sampled) = self.sampled {
            return Ok(Some(sampled.outside()));
        }
        let reserved = self
            .pool_attribute(PoolFigure::ReservedCurrent)?
            .unwrap_or(0);
        Ok(Some(self.device_used()?.saturating_sub(reserved)))
    }

    fn describe(&self) -> &'static str {
        if self.pool.is_some() {
            "the CUDA memory pool's high-water marks (every tensor candle allocates)"
        } else {
            "cuMemGetInfo sampled at each phase boundary (this device has no memory pool): \
             approximate, and counts whatever else starts using the device"
        }
    }

    fn total_bytes(&self) -> Option<u64> {
        Some(self.total_bytes)
    }

    fn out_of_memory(&self, error: &candle_core::Error) -> Option<&'static str> {
        out_of_memory_status(error)
    }

    fn failure_hint(&self, error: &candle_core::Error) -> Option<String> {
        failure_hint(error)
    }
}
