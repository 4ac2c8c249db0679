//! The GPU check's hidden subcommands (scripts/gpu-check.sh): the pool self-test and the
//! element probe. Both need a CUDA build and a GPU.

use std::process::ExitCode;

use anyhow::Result;
use maxbatch::device::{self, DeviceRequest};

/// Allocates 1 GiB through candle and checks the pool counts it and gives it back.
pub fn pool_self_test(request: DeviceRequest) -> Result<ExitCode> {
    let device = device::resolve(request, false)?;
    pool_self_test_on(&device.device)
}

#[cfg(feature = "cuda")]
fn pool_self_test_on(device: &candle_core::Device) -> Result<ExitCode> {
    let test = maxbatch::memory::cuda::pool_self_test(device)?;
    println!("{}", serde_json::to_string(&test)?);
    Ok(if test.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(not(feature = "cuda"))]
fn pool_self_test_on(_device: &candle_core::Device) -> Result<ExitCode> {
    anyhow::bail!("the pool self-test needs a build with `--features cuda` and a GPU")
}

/// Times candle's element-wise kernels on one tensor of `elements` (see
/// `maxbatch::memory::cuda::element_probe`).
pub fn element_probe(request: DeviceRequest, elements: usize) -> Result<ExitCode> {
    let device = device::resolve(request, false)?;
    element_probe_on(&device.device, elements)
}

#[cfg(feature = "cuda")]
fn element_probe_on(device: &candle_core::Device, elements: usize) -> Result<ExitCode> {
    let probe = maxbatch::memory::cuda::element_probe(device, elements)?;
    let mut json = serde_json::to_value(probe)?;
    json["exact"] = probe.exact().into();
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "cuda"))]
fn element_probe_on(_device: &candle_core::Device, _elements: usize) -> Result<ExitCode> {
    anyhow::bail!("the element probe needs a build with `--features cuda` and a GPU")
}
