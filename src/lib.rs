//! maxbatch finds the largest training batch size that fits a candle model in a device's
//! memory, by running real training steps, and turns it into a training schedule.
//!
//! # Brief overview
//! - [`TrainStep`]: one full training step at a batch size; any
//!   `FnMut(usize) -> candle_core::Result<()>` is one. [`Workload`] is the built-in one.
//! - [`MemoryMeter`]: a device's capacity and peak memory; [`CpuMeter`] counts the heap
//!   through [`CountingAllocator`] against a budget.
//! - [`Finder`]: runs the search (guided by the measured peaks by default, or doubling then
//!   binary search) and returns a [`Report`]: the trials, the maximum, the largest power of
//!   two, the recommended size, the schedule. `Finder::on(&device).find(&mut step)` is the
//!   whole library call; [`SearchSettings`] is every setting as plain data.
//! - [`estimate::Estimate`]: a built-in model's or a config's peak per phase and largest batch
//!   size predicted from its shapes alone, with no trial (`maxbatch estimate`).
//!
//! How the modules fit together, and the measurement rules they keep, is in the
//! repository's `docs/design.md`.
//!
//! # Example
//! ```no_run
//! use maxbatch::{device, CpuMeter, Finder, Silent, Workload, OptimizerKind};
//! use maxbatch::models::{ModelOptions, ModelSpec};
//!
//! #[global_allocator]
//! static ALLOCATOR: maxbatch::CountingAllocator = maxbatch::CountingAllocator::new();
//!
//! # fn main() -> Result<(), maxbatch::Error> {
//! let device = device::resolve(device::DeviceRequest::Cpu, true)?;
//! let options = ModelOptions { seq_len: Some(128), ..ModelOptions::default() };
//! let spec = ModelSpec::preset("transformer-tiny")?;
//! let mut workload = Workload::new(&spec, &options, OptimizerKind::AdamW, &device.device)?;
//! let mut meter = CpuMeter::with_budget(512 << 20)?;
//! let report = Finder::on_resolved(device)
//!     .model(spec.info(&options)?)
//!     .optimizer(OptimizerKind::AdamW)
//!     .dataset_size(50_000)
//!     .epochs(3)
//!     .find_with(&mut workload, &mut meter, &mut Silent)?;
//! println!("max {} recommended {:?}", report.sizes.max, report.sizes.recommended);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod analysis;
pub mod cache;
pub mod device;
pub mod error;
pub mod estimate;
pub mod finder;
pub mod finish;
pub mod format;
pub mod isolate;
pub mod memory;
pub mod models;
pub mod plan;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod search;
pub mod settings;
pub mod sizes;
pub mod sweep;
pub mod trial;
pub mod verification;
pub mod workload;

pub use error::Error;
pub use finder::Finder;
pub use memory::counting::CountingAllocator;
pub use memory::cpu::CpuMeter;
pub use memory::MemoryMeter;
pub use models::StepMode;
pub use report::Report;
pub use runner::{Observer, Silent};
pub use settings::SearchSettings;
pub use trial::{Outcome, Trial};
pub use workload::{
    evaluation, phased, Boundaries, Evaluation, OptimizerKind, Phase, Phased, TrainStep, Workload,
};

/// The README's Rust examples, compiled by `cargo test` so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: CountingAllocator = CountingAllocator::new();
