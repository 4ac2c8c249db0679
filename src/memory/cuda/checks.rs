//! The GPU check's self-tests (scripts/gpu-check.sh's hidden subcommands): the pool sees
//! what candle allocates, and candle's element-wise kernels at and past 2³¹ elements.

use candle_core::Device;

use super::CudaMeter;
use crate::error::Error;
use crate::memory::MemoryMeter;

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
    if !meter.has_pool() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
