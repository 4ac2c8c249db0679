//! `maxbatch estimate`: the library's [`Estimate`] for the flags, printed as a table or
//! JSON. Nothing is built or run; every figure printed is labelled as predicted.

use std::process::ExitCode;

use anyhow::{bail, Result};
use maxbatch::estimate::{Estimate, EstimatedPlan, PhaseEstimate};
use maxbatch::format::bytes;
use maxbatch::models::ModelSpec;
use serde::Serialize;

use crate::cli::EstimateArgs;

/// What `maxbatch estimate --json` prints.
#[derive(Serialize)]
struct EstimateOutput<'a> {
    /// Always true: nothing here was measured.
    predicted: bool,
    estimate: &'a Estimate,
    /// The batch size `phases` are for.
    batch_size: usize,
    phases: &'a [PhaseEstimate],
    plans: &'a [EstimatedPlan],
}

/// Runs `maxbatch estimate`.
pub fn estimate(args: &EstimateArgs) -> Result<ExitCode> {
    if let Some(flag) = args.uncounted.given() {
        bail!(
            "the estimate does not count {flag} yet (only full training in one dtype); a \
             search measures it: run maxbatch with the same model and {flag}, or `maxbatch \
             check ... {flag} --batch-size B` for one size"
        );
    }
    maxbatch::settings::check_margin(args.margin)?;
    if args.batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    let spec = ModelSpec::load(&args.model.source())?;
    let options = args.model_options();
    let estimate = Estimate::new(&spec, &options, args.optimizer)?;
    let cuda_cap = spec.cuda_batch_cap(&options)?;
    let plans: Vec<EstimatedPlan> = args
        .targets()
        .iter()
        .map(|t| estimate.plan(t, args.margin, cuda_cap))
        .collect();
    let batch_size = args
        .batch_size
        .or_else(|| plans.first().and_then(|p| p.sizes).map(|s| s.predicted_max))
        .unwrap_or(1)
        .max(1);
    let phases = estimate.phases(batch_size);
    if args.json {
        let output = EstimateOutput {
            predicted: true,
            estimate: &estimate,
            batch_size,
            phases: &phases,
            plans: &plans,
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print!("{}", text(&estimate, batch_size, &phases, &plans));
    }
    Ok(ExitCode::SUCCESS)
}

fn text(
    estimate: &Estimate,
    batch_size: usize,
    phases: &[PhaseEstimate],
    plans: &[EstimatedPlan],
) -> String {
    let mut out = format!(
        "{}: {}, {}, {}. PREDICTED from the shapes alone: nothing ran.\n\n",
        estimate.model, estimate.input, estimate.dtype, estimate.optimizer
    );
    let a = &estimate.activations;
    out += &format!(
        "  weights           {}\n  gradients         {}\n  optimizer state   {}\n  \
         activations       {} + {} per sample (what the forward pass keeps)\n\n",
        bytes(estimate.weights_bytes),
        bytes(estimate.gradients_bytes),
        bytes(estimate.optimizer_bytes),
        bytes(a.fixed),
        bytes(a.per_sample)
    );
    out += &format!("predicted peak of each phase at batch size {batch_size}:\n");
    for p in phases {
        out += &format!(
            "  {:<9} {:>11}   {}\n",
            p.phase.to_string(),
            bytes(p.peak_bytes),
            p.set_by
        );
    }
    out += "\npredicted sizes (no trial ran):\n";
    out += &format!(
        "  {:<14}{:>11}{:>11}{:>10}{:>10}{:>10}{:>13}\n",
        "target", "capacity", "usable", "max", "2^n", "rec", "peak at max"
    );
    let mut notes: Vec<String> = Vec::new();
    for plan in plans {
        let none = || "none".to_string();
        let (max, pow2, rec, peak) = match plan.sizes {
            Some(s) if s.predicted_max > 0 => (
                s.predicted_max.to_string(),
                s.predicted_power_of_two.to_string(),
                Some(s.predicted_recommended)
                    .filter(|&r| r > 0)
                    .map_or_else(none, |r| r.to_string()),
                s.predicted_peak_bytes.map_or("-".into(), bytes),
            ),
            Some(_) => {
                notes.push(format!(
                    "{}: batch size 1 does not fit: its predicted peak is {}, above the {} usable",
                    plan.target,
                    bytes(estimate.peak(1).peak_bytes),
                    bytes(plan.usable_bytes)
                ));
                (none(), "-".into(), "-".into(), "-".into())
            }
            None => ("no bound".into(), "-".into(), "-".into(), "-".into()),
        };
        out += &format!(
            "  {:<14}{:>11}{:>11}{:>10}{:>10}{:>10}{:>13}\n",
            plan.target,
            bytes(plan.capacity_bytes),
            bytes(plan.usable_bytes),
            max,
            pow2,
            rec,
            peak
        );
    }
    if let Some(first) = plans
        .first()
        .filter(|p| p.sizes.is_some_and(|s| s.predicted_max > 0))
    {
        let peak = phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
        if peak > first.usable_bytes {
            notes.push(format!(
                "batch size {batch_size}: its predicted peak, {}, is above {}'s {} usable",
                bytes(peak),
                first.target,
                bytes(first.usable_bytes)
            ));
        }
    }
    if plans.iter().any(|p| p.assumptions.is_empty()) {
        notes.push(
            "--memory and plain capacities are what the step's tensors may use: a CPU search's \
             budget also counts the process's own heap (a few MiB of matrix-multiply \
             workspaces), so a search under the same budget may find a few samples fewer"
                .into(),
        );
    }
    for plan in plans {
        for a in &plan.assumptions {
            let note = format!("assumed: {} takes {} of each GPU", a.what, bytes(a.bytes));
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        for caveat in plan.caveat.iter().flat_map(|c| c.split("; ")) {
            let note = if caveat.starts_with("capped") {
                format!("{}: {caveat}", plan.target)
            } else {
                caveat.to_string()
            };
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    notes.push(
        "checked against measured CPU peaks: see the README's table of the estimate's error; \
         run a search or `maxbatch check` to measure"
            .into(),
    );
    for note in notes {
        out += &format!("  {note}\n");
    }
    out
}
