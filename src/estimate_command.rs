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
    if !(0.0..1.0).contains(&args.margin) {
        bail!(
            "--margin {} is not a fraction in [0, 1); e.g. 0.05 leaves 5% free",
            args.margin
        );
    }
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
        "  {:<18}{:>11}{:>11}{:>9}{:>7}{:>8}{:>13}\n",
        "target", "capacity", "usable", "max", "2^n", "rec", "peak at max"
    );
    for plan in plans {
        let (max, pow2, rec, peak) = match plan.sizes {
            Some(s) => (
                s.predicted_max.to_string(),
                s.predicted_power_of_two.to_string(),
                s.predicted_recommended.to_string(),
                s.predicted_peak_bytes.map_or("-".into(), bytes),
            ),
            None => ("no bound".into(), "-".into(), "-".into(), "-".into()),
        };
        out += &format!(
            "  {:<18}{:>11}{:>11}{:>9}{:>7}{:>8}{:>13}\n",
            plan.target,
            bytes(plan.capacity_bytes),
            bytes(plan.usable_bytes),
            max,
            pow2,
            rec,
            peak
        );
    }
    let mut notes: Vec<String> = Vec::new();
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
