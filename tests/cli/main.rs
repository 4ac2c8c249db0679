//! The binary end to end on the CPU with the tiny models and budgets derived from what the
//! process holds on the machine the tests run on (see tests/common/mod.rs): one test binary,
//! a file per feature.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod beyond;
mod cache;
mod estimate;
mod input;
mod modes;
mod search;
mod signals;
