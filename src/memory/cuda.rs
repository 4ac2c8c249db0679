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

/// What the pool self-test saw: the pool's bytes in use before a 1 GiB tensor was made, with
/// it, and after it was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolSelfTest {
    /// Bytes the tensor took.
    pub tensor_bytes: u64,
    /// The pool's used bytes before.
    pub before: u64,
    /// With the tensor alive.
    pub with_tensor: u64,
    /// After it was dropped.
    pub after_drop: u64,
}

impl PoolSelfTest {
    /// True when the pool counted the tensor (used rose by at least its bytes) and gave it
    /// back (used fell to where it was).
    pub fn passed(&self) -> bool {
        self.with_tensor >= self.before + self.tensor_bytes && self.after_drop <= self.before
    }
}

/// Allocates a 1 GiB tensor through candle on `device` and reads the pool around it: the
/// acceptance check that the meter sees what candle allocates.
pub fn pool_self_test(device: &Device) -> Result<PoolSelfTest, Error> {
    let mut meter = CudaMeter::new(device, None)?;
    if meter.pool.is_none() {
        return Err(Error::setting(
            crate::error::Setting::Device,
            "cuda",
            "this device has no memory pool: peaks are sampled, not counted",
        ));
    }
    let before = meter.current_bytes()?;
    let elements = 1usize << 28; // 1 GiB of f32
    let tensor = candle_core::Tensor::zeros(elements, candle_core::DType::F32, device)?;
    let with_tensor = meter.current_bytes()?;
    drop(tensor);
    let after_drop = meter.current_bytes()?;
    Ok(PoolSelfTest {
        tensor_bytes: (elements * 4) as u64,
        before,
        with_tensor,
        after_drop,
    })
}

/// What the element probe measured (see [`element_probe`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ElementProbe {
    /// Elements of each tensor.
    pub elements: u64,
    /// Seconds to fill a `u32` tensor with ones (candle's `fill` kernel).
    pub fill_seconds: f64,
    /// Seconds for `x · 1 + 1` on it (candle's `affine` kernel), out of place.
    pub affine_seconds: f64,
    /// The sum of the result (with `size_t` indices, which do not wrap): `2 × elements` when
    /// every element was written.
    pub sum: u64,
}

impl ElementProbe {
    /// True when every element was written once with the right value.
    pub fn exact(&self) -> bool {
        self.sum == 2 * self.elements
    }
}

/// Times candle's element-wise kernels on one tensor of `elements` `u32`s on `device`: the
/// GPU check runs it at 2³¹ elements and past it, where the kernels' 32-bit loop index wraps
/// and elements are processed again (slower), to measure what `CUDA_MAX_ELEMENTS` guards
/// against. Needs `8 × elements` bytes of device memory.
pub fn element_probe(device: &Device, elements: usize) -> Result<ElementProbe, Error> {
    use candle_core::{DType, Tensor};
    let timed =
        |f: &dyn Fn() -> candle_core::Result<Tensor>| -> candle_core::Result<(Tensor, f64)> {
            device.synchronize()?;
            let started = std::time::Instant::now();
            let tensor = f()?;
            device.synchronize()?;
            Ok((tensor, started.elapsed().as_secs_f64()))
        };
    let (ones, fill_seconds) = timed(&|| Tensor::ones(elements, DType::U32, device))?;
    let (twos, affine_seconds) = timed(&|| ones.affine(1.0, 1.0))?;
    drop(ones);
    // Summed in pieces of 2³⁰, whose sums fit a u32 and whose kernels do not wrap.
    let mut sum = 0u64;
    let mut start = 0;
    while start < elements {
        let len = (1usize << 30).min(elements - start);
        sum += u64::from(twos.narrow(0, start, len)?.sum_all()?.to_scalar::<u32>()?);
        start += len;
    }
    Ok(ElementProbe {
        elements: elements as u64,
        fill_seconds,
        affine_seconds,
        sum,
    })
}

/// The status that makes `error` CUDA running out of memory, named, or `None` for any other
/// error: the driver's `CUDA_ERROR_OUT_OF_MEMORY` (also while loading a kernel module
/// lazily, which needs device memory too), cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED` or cuRAND's
/// `CURAND_STATUS_ALLOCATION_FAILED`, however deep candle's wrappers and boxed sources hold
/// it (see [`errors`](super::errors)). A typed check: a message that merely says "out of
/// memory" is not one.
///
/// cuBLAS's `EXECUTION_FAILED` and `INTERNAL_ERROR` are not counted: they also come from
/// kernels that fail for other reasons, and counting a bug as a memory limit would report a
/// maximum smaller than the truth with nothing to say why. PyTorch Lightning's and
/// Accelerate's finders draw the same line. They stop the search, named, with the hint of
/// [`failure_hint`].
pub fn out_of_memory_status(error: &candle_core::Error) -> Option<&'static str> {
    super::errors::find_in(error, status_of)
}

/// True when `error` is CUDA running out of memory (see [`out_of_memory_status`]).
pub fn is_cuda_out_of_memory(error: &candle_core::Error) -> bool {
    out_of_memory_status(error).is_some()
}

fn status_of(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use candle_core::cuda_backend::cudarc::{cublas, curand};
    if let Some(cuda) = error.downcast_ref::<CudaError>() {
        return match cuda {
            CudaError::Cuda(d) => driver_status(d),
            CudaError::Load { cuda, .. } => {
                driver_status(cuda).map(|_| "CUDA_ERROR_OUT_OF_MEMORY (loading a kernel module)")
            }
            CudaError::Cublas(c) => cublas_status(c),
            CudaError::Curand(r) => curand_status(r),
            _ => None,
        };
    }
    error
        .downcast_ref::<DriverError>()
        .and_then(driver_status)
        .or_else(|| {
            error
                .downcast_ref::<cublas::result::CublasError>()
                .and_then(cublas_status)
        })
        .or_else(|| {
            error
                .downcast_ref::<curand::result::CurandError>()
                .and_then(curand_status)
        })
}

fn driver_status(error: &DriverError) -> Option<&'static str> {
    (error.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY).then_some("CUDA_ERROR_OUT_OF_MEMORY")
}

fn cublas_status(
    error: &candle_core::cuda_backend::cudarc::cublas::result::CublasError,
) -> Option<&'static str> {
    use candle_core::cuda_backend::cudarc::cublas::sys::cublasStatus_t as S;
    (error.0 == S::CUBLAS_STATUS_ALLOC_FAILED).then_some("CUBLAS_STATUS_ALLOC_FAILED")
}

fn curand_status(
    error: &candle_core::cuda_backend::cudarc::curand::result::CurandError,
) -> Option<&'static str> {
    use candle_core::cuda_backend::cudarc::curand::sys::curandStatus_t as S;
    (error.0 == S::CURAND_STATUS_ALLOCATION_FAILED).then_some("CURAND_STATUS_ALLOCATION_FAILED")
}

/// What to do about a cuBLAS failure that is not counted as out of memory
/// (`CUBLAS_STATUS_EXECUTION_FAILED`, `CUBLAS_STATUS_INTERNAL_ERROR`), naming it; `None`
/// for any other error.
pub fn failure_hint(error: &candle_core::Error) -> Option<String> {
    use candle_core::cuda_backend::cudarc::cublas;
    use cublas::sys::cublasStatus_t as S;
    let status = super::errors::find_in(error, |e| {
        let cublas = e
            .downcast_ref::<CudaError>()
            .and_then(|c| match c {
                CudaError::Cublas(c) => Some(c),
                _ => None,
            })
            .or_else(|| e.downcast_ref::<cublas::result::CublasError>())?;
        match cublas.0 {
            S::CUBLAS_STATUS_EXECUTION_FAILED => Some("CUBLAS_STATUS_EXECUTION_FAILED"),
            S::CUBLAS_STATUS_INTERNAL_ERROR => Some("CUBLAS_STATUS_INTERNAL_ERROR"),
            _ => None,
        }
    })?;
    Some(format!(
        "cuBLAS returned {status}, which is not counted as out of memory (kernels fail this \
         way for other reasons too); if it happens only at sizes near the capacity it is \
         likely cuBLAS failing to get memory for a workspace or a kernel: search again below \
         this size ($MaxBatch) or with a lower $Memory"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::cuda_backend::cudarc::{cublas, curand};

    fn wrap(error: CudaError) -> candle_core::Error {
        candle_core::Error::Cuda(Box::new(error))
    }

    fn driver_oom() -> candle_core::Error {
        wrap(CudaError::Cuda(DriverError(
            sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        )))
    }

    fn cublas(status: cublas::sys::cublasStatus_t) -> candle_core::Error {
        wrap(CudaError::Cublas(cublas::result::CublasError(status)))
    }

    #[test]
    fn out_of_memory_is_recognised_in_every_wrapper() {
        assert!(is_cuda_out_of_memory(&driver_oom()));
        assert!(is_cuda_out_of_memory(&driver_oom().bt()));
        assert!(is_cuda_out_of_memory(&driver_oom().context("in matmul")));
        assert!(is_cuda_out_of_memory(
            &driver_oom().context("in matmul").bt()
        ));
        assert!(is_cuda_out_of_memory(&driver_oom().with_path("model.bin")));
        assert!(is_cuda_out_of_memory(&candle_core::Error::Cuda(Box::new(
            DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)
        ))));
        // `Context::context` on a result: WrappedContext, around a candle error or a raw one.
        use candle_core::Context;
        let around: candle_core::Result<()> = Err(driver_oom()).context("casting the weights");
        assert!(is_cuda_out_of_memory(&around.unwrap_err()));
        let raw: candle_core::Result<()> =
            Err(DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)).context("allocating");
        assert!(is_cuda_out_of_memory(&raw.unwrap_err()));
        // maxbatch's own errors come back typed (the --amp rebuild of workload.rs).
        let rebuilt = crate::Error::Candle(driver_oom()).into_candle();
        assert!(is_cuda_out_of_memory(&rebuilt));
    }

    #[test]
    fn each_out_of_memory_status_is_named() {
        let load = wrap(CudaError::Load {
            cuda: DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY),
            module_name: "unary".into(),
        });
        let curand = wrap(CudaError::Curand(curand::result::CurandError(
            curand::sys::curandStatus_t::CURAND_STATUS_ALLOCATION_FAILED,
        )));
        for (error, status) in [
            (driver_oom(), "CUDA_ERROR_OUT_OF_MEMORY"),
            (load, "CUDA_ERROR_OUT_OF_MEMORY (loading a kernel module)"),
            (
                cublas(cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED),
                "CUBLAS_STATUS_ALLOC_FAILED",
            ),
            (curand, "CURAND_STATUS_ALLOCATION_FAILED"),
        ] {
            assert_eq!(
                out_of_memory_status(&error.context("in a step")),
                Some(status)
            );
        }
    }

    #[test]
    fn cublas_failures_near_the_limit_are_errors_that_say_so() {
        use cublas::sys::cublasStatus_t as S;
        for (status, name) in [
            (
                S::CUBLAS_STATUS_EXECUTION_FAILED,
                "CUBLAS_STATUS_EXECUTION_FAILED",
            ),
            (
                S::CUBLAS_STATUS_INTERNAL_ERROR,
                "CUBLAS_STATUS_INTERNAL_ERROR",
            ),
        ] {
            let error = cublas(status).context("in matmul");
            assert_eq!(out_of_memory_status(&error), None, "{name}");
            let hint = failure_hint(&error).unwrap();
            assert!(
                hint.contains(name) && hint.contains("not counted"),
                "{hint}"
            );
        }
        assert_eq!(failure_hint(&driver_oom()), None);
        assert_eq!(
            failure_hint(&cublas(S::CUBLAS_STATUS_ALLOC_FAILED)),
            None,
            "out of memory needs no hint"
        );
    }

    #[test]
    fn the_pool_self_test_passes_only_when_the_pool_counts_and_frees() {
        let test = |with_tensor, after_drop| PoolSelfTest {
            tensor_bytes: 1 << 30,
            before: 100,
            with_tensor,
            after_drop,
        };
        assert!(test(100 + (1 << 30), 100).passed());
        assert!(
            !test(100 + (1 << 29), 100).passed(),
            "a tensor the pool did not see"
        );
        assert!(
            !test(100 + (1 << 30), 100 + (1 << 30)).passed(),
            "a tensor never freed"
        );
    }

    #[test]
    fn other_errors_are_not_out_of_memory() {
        let others = [
            wrap(CudaError::Cuda(DriverError(
                sys::CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
            ))),
            wrap(CudaError::Cublas(cublas::result::CublasError(
                cublas::sys::cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED,
            ))),
            wrap(CudaError::InternalError("out of memory, says the message")),
            candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into()),
            candle_core::Error::Msg("out of memory".into()).bt(),
        ];
        for error in &others {
            assert!(!is_cuda_out_of_memory(error), "{error}");
        }
    }
}
