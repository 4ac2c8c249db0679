//! Which CUDA errors are the device running out of memory, by their typed status, however
//! deep candle wraps them; and what to say of a cuBLAS failure that is not counted as one.

use candle_core::cuda_backend::cudarc::driver::{sys, DriverError};
use candle_core::cuda_backend::CudaError;

/// The status that makes `error` CUDA running out of memory, named, or `None` for any other
/// error: the driver's `CUDA_ERROR_OUT_OF_MEMORY` (also while loading a kernel module
/// lazily, which needs device memory too), cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED` or cuRAND's
/// `CURAND_STATUS_ALLOCATION_FAILED`, however deep candle's wrappers and boxed sources hold
/// it (see [`errors`](crate::memory::errors)). A typed check: a message that merely says "out of
/// memory" is not one.
///
/// cuBLAS's `EXECUTION_FAILED` and `INTERNAL_ERROR` are not counted: they also come from
/// kernels that fail for other reasons, and counting a bug as a memory limit would report a
/// maximum smaller than the truth with nothing to say why. PyTorch Lightning's and
/// Accelerate's finders draw the same line. They stop the search, named, with the hint of
/// [`failure_hint`].
pub fn out_of_memory_status(error: &candle_core::Error) -> Option<&'static str> {
    crate::memory::errors::find_in(error, status_of)
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
    let status = crate::memory::errors::find_in(error, |e| {
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
