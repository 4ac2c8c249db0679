//! What each command does, one file each: it takes its resolved value, calls the library,
//! assembles what it prints once, and prints it. The only place that prints results.

mod check;
mod estimate;
mod gpu;
mod models;
mod search;
mod sweep;
mod trial;
mod what_if;

use std::process::ExitCode;

use anyhow::Result;

use crate::resolve::Job;

/// Runs a resolved command; the exit code of success and of "does not fit".
pub fn run(job: Job) -> Result<ExitCode> {
    match job {
        Job::Search(search) if !search.trials.model.sweep.is_empty() => sweep::run(&search),
        Job::Search(search) => search::run(&search),
        Job::Check(check) => check::run(&check),
        Job::Trial(check) => trial::run(&check),
        Job::Estimate(estimate) => estimate::run(&estimate),
        Job::Models(models) => models::run(&models),
        Job::PoolSelfTest(device) => gpu::pool_self_test(device),
        Job::ElementProbe(device, elements) => gpu::element_probe(device, elements),
    }
}
