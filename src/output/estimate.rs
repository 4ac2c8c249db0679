//! `maxbatch estimate` as text. Every figure is a prediction, and says so.

use maxbatch::estimate::{Estimate, PhaseEstimate};
use maxbatch::format::bytes;
use maxbatch::plan::Plan;

/// The estimate as text: the model's terms, each phase's predicted peak at `batch_size`
/// (`asked`: given with `--batch-size`, else the first memory's maximum), and the predicted
/// sizes for each memory, every figure labelled as predicted.
pub fn render(
    estimate: &Estimate,
    (batch_size, asked): (usize, bool),
    phases: &[PhaseEstimate],
    plans: &[Plan],
) -> String {
    let mut out = terms(estimate);
    // With several memories, say which one's maximum the phases are shown at.
    let whose = match plans {
        [first, _, ..] if !asked => format!(" (the largest for {})", first.target),
        _ => String::new(),
    };
    out += &format!("predicted peak of each phase at batch size {batch_size}{whose}:\n");
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
        out += &size_row(plan, estimate, &mut notes);
    }
    notes.extend(notes_after(batch_size, phases, plans, &notes));
    for note in notes {
        out += &format!("  {note}\n");
    }
    out
}

/// The model, then what it holds: weights, gradients, optimizer state, activations (for an
/// evaluation or a generation: the weights, what the step holds throughout, which part is
/// arithmetic and which counted).
fn terms(estimate: &Estimate) -> String {
    if let Some(inference) = &estimate.inference {
        let mut out = format!(
            "{}: {}, {}, {}. PREDICTED from the shapes alone: nothing ran.\n\n  weights           {}\n",
            estimate.model,
            estimate.input,
            estimate.dtype,
            inference.mode,
            bytes(estimate.weights_bytes)
        );
        if estimate.optimizer_bytes > 0 {
            out += &format!(
                "  optimizer state   {} ({}'s, held beside training)\n",
                bytes(estimate.optimizer_bytes),
                estimate.optimizer
            );
        }
        let noun = inference.mode.sample_noun();
        for held in &inference.held {
            out += &format!(
                "  held              {}{} per {noun}: {}\n",
                if held.fixed > 0 {
                    format!("{} + ", bytes(held.fixed))
                } else {
                    String::new()
                },
                bytes(held.per_sample),
                held.what
            );
        }
        out += "  each phase's peak: the largest of its moments, counted from candle's kernels \
                (what is alive at one instant)\n\n";
        return out;
    }
    let a = &estimate.activations;
    format!(
        "{}: {}, {}, {}{}. PREDICTED from the shapes alone: nothing ran.\n\n  \
         weights           {}\n  gradients         {}\n  optimizer state   {}\n  \
         activations       {} + {} per sample (what the forward pass keeps)\n\n",
        estimate.model,
        estimate.input,
        estimate.dtype,
        estimate.optimizer,
        estimate
            .adapters
            .as_ref()
            .map_or(String::new(), |a| format!(", {a}")),
        bytes(estimate.weights_bytes),
        bytes(estimate.gradients_bytes),
        bytes(estimate.optimizer_bytes),
        bytes(a.fixed),
        bytes(a.per_sample)
    )
}

/// One memory's row of predicted sizes; a memory where batch size 1 does not fit gets a
/// note saying by how much.
fn size_row(plan: &Plan, estimate: &Estimate, notes: &mut Vec<String>) -> String {
    let none = || "none".to_string();
    let (max, pow2, rec, peak) = match plan.sizes {
        Some(s) if s.max > 0 => (
            s.max.to_string(),
            s.power_of_two.to_string(),
            s.recommended.map_or_else(none, |r| r.to_string()),
            plan.peak_bytes.map_or("-".into(), bytes),
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
    format!(
        "  {:<14}{:>11}{:>11}{:>10}{:>10}{:>10}{:>13}\n",
        plan.target,
        bytes(plan.capacity_bytes),
        bytes(plan.usable_bytes),
        max,
        pow2,
        rec,
        peak
    )
}

/// The notes under the table, each once (none repeating one in `before`): a batch size past
/// the first memory, what a capacity counts, the assumptions and the caveats, and where the
/// estimate was checked.
fn notes_after(
    batch_size: usize,
    phases: &[PhaseEstimate],
    plans: &[Plan],
    before: &[String],
) -> Vec<String> {
    let mut notes: Vec<String> = Vec::new();
    let mut add = |note: String| {
        if !notes.contains(&note) && !before.contains(&note) {
            notes.push(note);
        }
    };
    if let Some(first) = plans.first().filter(|p| p.sizes.is_some_and(|s| s.max > 0)) {
        let peak = phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
        if peak > first.usable_bytes {
            add(format!(
                "batch size {batch_size}: its predicted peak, {}, is above {}'s {} usable",
                bytes(peak),
                first.target,
                bytes(first.usable_bytes)
            ));
        }
    }
    if plans.iter().any(|p| p.assumptions.is_empty()) {
        add(
            "--memory and plain capacities are what the step's tensors may use: a CPU \
             search's budget also counts the process's own heap (a few MiB of matrix-multiply \
             workspaces), so a search under the same budget may find a few samples fewer"
                .into(),
        );
    }
    for plan in plans {
        for a in &plan.assumptions {
            add(format!(
                "assumed: {} takes {} of each GPU",
                a.what,
                bytes(a.bytes)
            ));
        }
        for caveat in plan.caveat.iter().flat_map(|c| c.split("; ")) {
            add(if caveat.starts_with("capped") {
                format!("{}: {caveat}", plan.target)
            } else {
                caveat.to_string()
            });
        }
    }
    add(
        "checked against measured CPU peaks: see docs/guide.md, \"The estimate from shapes\"; \
         run a search or `maxbatch check` to measure"
            .into(),
    );
    notes
}
