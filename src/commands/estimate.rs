//! `maxbatch estimate`: the library's [`Estimate`] for the model, each memory's plan, printed
//! as a table or JSON. Nothing is built or run; every figure printed is labelled as predicted.

use std::process::ExitCode;

use anyhow::Result;
use maxbatch::estimate::{Estimate, PhaseEstimate};
use maxbatch::plan::Plan;
use serde::Serialize;

use crate::resolve;

/// What `maxbatch estimate --json` prints.
#[derive(Serialize)]
struct EstimateOutput<'a> {
    /// Always true: nothing here was measured.
    predicted: bool,
    estimate: &'a Estimate,
    /// The batch size `phases` are for.
    batch_size: usize,
    phases: &'a [PhaseEstimate],
    plans: Vec<serde_json::Value>,
}

/// Runs `maxbatch estimate`.
pub fn run(job: &resolve::Estimate) -> Result<ExitCode> {
    let (spec, options) = (&job.model.spec, &job.model.options);
    let estimate = Estimate::new(spec, options, job.optimizer)?;
    let cuda_cap = spec.cuda_batch_cap(options)?;
    let plans: Vec<Plan> = job
        .memory
        .iter()
        .map(|memory| Plan::from_estimate(&estimate, memory, job.margin, cuda_cap))
        .collect();
    let batch_size = job
        .batch_size
        .or_else(|| plans.first().and_then(|p| p.sizes).map(|s| s.max))
        .unwrap_or(1)
        .max(1);
    let phases = estimate.phases(batch_size);
    if job.json {
        let output = EstimateOutput {
            predicted: true,
            estimate: &estimate,
            batch_size,
            phases: &phases,
            plans: plans
                .iter()
                .map(|p| serde_json::to_value(p.nested()))
                .collect::<Result<_, _>>()?,
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print!(
            "{}",
            crate::output::estimate::render(
                &estimate,
                (batch_size, job.batch_size.is_some()),
                &phases,
                &plans
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}
