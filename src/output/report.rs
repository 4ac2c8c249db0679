//! One search's report as text: the model and device, the trials, the three sizes, then the
//! memory model, the schedule and the verification run.

use std::fmt::Write as _;

use maxbatch::device::DeviceKind;
use maxbatch::format::{bytes, parameters};
use maxbatch::memory::CapacitySource;
use maxbatch::report::text::{trial_line, TRIALS_HEADER};
use maxbatch::trial::Trial;
use maxbatch::{Report, StepMode};

use super::{memory, schedule, size_or_none, verification};

/// The report as the command line prints it.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    header(&mut out, report);
    out.push('\n');
    out.push_str(&trials_table(&report.trials, report.settings.mode));
    seeding(&mut out, report);
    out.push('\n');
    results(&mut out, report);
    if report.memory_model.is_some()
        || report.throughput_note.is_some()
        || report.accumulation.is_some()
    {
        out.push('\n');
        memory::render(&mut out, report);
    }
    if !report.schedule.is_empty() {
        out.push('\n');
        schedule::header(&mut out, report);
        schedule::rows(&mut out, &report.schedule, report.settings.mode);
    }
    if let Some(v) = &report.verification {
        out.push('\n');
        out.push_str(&verification::render(v, report.device.capacity_bytes));
    }
    out
}

/// Where the search started and why: the estimate's seed, and how far the first trial's
/// measured peak was from the estimate's prediction there.
fn seeding(out: &mut String, r: &Report) {
    let Some(seeding) = &r.seeding else {
        return;
    };
    // The table also lists the finishing trials (the power of two, the recommended size).
    let trials = match (r.search_trials, r.trials.len()) {
        (1, 1) => "1 trial".to_string(),
        (n, total) if total > n => format!("{n} of the {total} trials above"),
        (n, _) => format!("{n} trials"),
    };
    let _ = writeln!(
        out,
        "seeded: the estimate from shapes meets the capacity at {} (a prediction); the search \
         took {trials}",
        seeding.seed
    );
    if let Some(first) = &seeding.first_trial {
        let _ = writeln!(
            out,
            "        at {} the estimate predicted {}, the trial measured {}{} ({:+.1}%)",
            first.batch_size,
            bytes(first.predicted_peak_bytes),
            if first.complete { "" } else { "≥ " },
            bytes(first.measured_peak_bytes),
            -100.0 * first.relative_error(),
        );
    }
}

/// One line per trial with a header, as in the report; a generation's rate is sequences a
/// second (a whole generation is its step).
pub fn trials_table(trials: &[Trial], mode: StepMode) -> String {
    let header = match mode {
        StepMode::Generate { .. } => TRIALS_HEADER.replace("samples/s", "   seqs/s"),
        _ => TRIALS_HEADER.to_string(),
    };
    let mut out = format!("{header}\n");
    for t in trials {
        let _ = writeln!(out, "{}", trial_line(t).trim_end());
    }
    out
}

/// Where a capacity figure came from, as a phrase: "the --memory flag".
pub fn capacity_source(source: CapacitySource) -> &'static str {
    match source {
        CapacitySource::Flag => "the --memory flag",
        CapacitySource::MemAvailable => "about 80% of the machine's available memory at start",
        CapacitySource::Cgroup => {
            "about 80% of what the container's memory limit (cgroup) left at start"
        }
        CapacitySource::Device => {
            "the device's free memory after the warm-up step, with what the pool holds"
        }
    }
}

/// The model and device lines.
fn header(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "model:    {} ({})",
        r.model.name,
        about_model(r).join(", ")
    );
    if !r.settings.mode.trains() {
        let _ = writeln!(out, "step:     {}", r.settings.mode);
    }
    let d = &r.device;
    let kind = if d.capacity_is_budget {
        "budget"
    } else {
        "capacity"
    };
    let _ = writeln!(
        out,
        "device:   {}, {kind} {} from {}",
        d.name,
        bytes(d.capacity_bytes),
        capacity_source(d.capacity_source)
    );
    let mut more = Vec::new();
    if let Some(reason) = &d.fallback {
        more.push(format!(
            "on the CPU, NOT the CUDA device asked for: {reason}"
        ));
    }
    if d.capacity_is_budget {
        more.push("a budget maxbatch enforces on the heap it counts, not a hardware limit".into());
    }
    if let Some(total) = d.total_bytes {
        more.push(format!("device total {}", bytes(total)));
    }
    if let Some(baseline) = d.baseline_bytes {
        let what = if d.baseline_is_whole_heap {
            "everything the process held when the search started: the model, its optimizer \
             state, your data"
        } else {
            match r.settings.mode {
                StepMode::Train => "weights, optimizer state, workspaces",
                StepMode::Eval {
                    beside_training: Some(_),
                } => "weights, optimizer state, what the training step left, workspaces",
                _ => "weights, workspaces",
            }
        };
        more.push(format!(
            "{} counted as held before every trial ({what})",
            bytes(baseline)
        ));
    }
    if let Some(overhead) = d.overhead_bytes {
        more.push(format!(
            "{} held outside the pool after the warm-up step (CUDA context, kernels, other \
             processes; cuBLAS's workspace where the pool does not hold it)",
            bytes(overhead)
        ));
    }
    if d.kind != DeviceKind::Cpu && !d.meter.is_empty() {
        more.push(format!("measured by {}", d.meter));
    }
    for line in more {
        let _ = writeln!(out, "          {line}");
    }
}

/// What the header says of the model: only what is known (a caller's own step may come
/// with nothing but its name).
fn about_model(r: &Report) -> Vec<String> {
    let m = &r.model;
    let optimizer = r
        .settings
        .optimizer
        .map(|o| format!(", {o}"))
        .unwrap_or_default();
    let mut about = Vec::new();
    if m.parameters > 0 {
        about.push(match (m.trainable_parameters, &m.adapters) {
            (Some(trained), Some(adapters)) if trained != m.parameters => format!(
                "{} parameters, {} trained: {adapters}",
                parameters(m.parameters),
                parameters(trained)
            ),
            _ => format!("{} parameters", parameters(m.parameters)),
        });
    }
    about.push(format!("{} per {}", m.input, r.settings.mode.sample_noun()));
    if let Some(compute) = &m.compute_dtype {
        about.push(format!(
            "mixed precision: {} weights, {compute} compute{optimizer}",
            m.dtype
        ));
    } else if !m.dtype.is_empty() {
        about.push(format!("{}{optimizer}", m.dtype));
    } else if !optimizer.is_empty() {
        about.push(optimizer.trim_start_matches(", ").to_string());
    }
    about.push(match r.settings.steps_per_trial {
        1 => "1 step per trial".to_string(),
        n => format!("{n} steps per trial"),
    });
    about
}

/// The three sizes, each with its peak's share of the capacity.
fn results(out: &mut String, r: &Report) {
    if r.interrupted {
        let _ = writeln!(
            out,
            "interrupted: the search stopped early; these are the sizes verified so far"
        );
    }
    if r.from_cache {
        let _ = writeln!(
            out,
            "from the result cache: measured by an earlier run with the same model, device and \
             settings (--no-cache measures again)"
        );
    }
    let capacity = r.device.capacity_bytes;
    let share = |batch: usize| {
        r.fitting_trial(batch)
            .and_then(|t| t.peak_bytes)
            .map(|p| {
                format!(
                    "peak {}, {:.1}% of capacity",
                    bytes(p),
                    100.0 * p as f64 / capacity as f64
                )
            })
            .unwrap_or_default()
    };
    let sizes = r.sizes;
    let _ = writeln!(
        out,
        "{:<26}{:>6}  {}{}",
        "max batch size",
        sizes.max,
        share(sizes.max),
        cap_note(r)
    );
    if let Some(b) = r.unmeasured_boundary {
        let _ = writeln!(
            out,
            "{:<32}PREDICTED, not measured: batch size {b} was not run (its predicted peak \
             passes the machine's memory), so the true maximum may be larger",
            ""
        );
    }
    let _ = writeln!(
        out,
        "{:<26}{:>6}  {}",
        "largest power of two",
        sizes.power_of_two,
        share(sizes.power_of_two)
    );
    let margin = format!("recommended ({:.0}% margin)", r.settings.margin * 100.0);
    let recommended = match sizes.recommended {
        Some(b) => share(b),
        None => "no size that ran leaves that margin free".to_string(),
    };
    let _ = writeln!(
        out,
        "{margin:<26}{:>6}  {recommended}",
        size_or_none(sizes.recommended)
    );
}

/// Why the maximum is where it is when a cap, not memory, put it there.
fn cap_note(r: &Report) -> String {
    if r.max_is_cap && r.settings.capped_by_elements() {
        format!(
            " (the cap: batch size {} would make a tensor of more than 2^31 elements, which \
             candle's CUDA kernels cannot loop over; memory did not bound it)",
            r.sizes.max + 1
        )
    } else if r.max_is_cap {
        format!(
            " (the cap, {}: larger sizes not tried; it is --max-batch or the dataset size)",
            r.settings.max_batch.unwrap_or(r.sizes.max)
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxbatch::report::fixtures::fixture;

    #[test]
    fn the_text_report_names_every_figure() {
        let mut report = fixture("cuda:0", 6, Some(5));
        report.trials[2].leaked_bytes = Some(3 << 20);
        report.trials[3].reserved_bytes = Some(600 << 20);
        let text = render(&report);
        for needle in [
            "transformer-tiny (168.2K parameters, 64 tokens per sample, f32, adamw, 2 steps per trial)",
            "cuda:0, capacity 1.0 GiB from the device's free memory after the warm-up step",
            "device total 2.0 GiB",
            "500.0 MiB held outside the pool after the warm-up step",
            "measured by the CUDA memory pool's high-water marks",
            "LEAKED 3.0 MiB after the trial",
            "pool reserved 600.0 MiB",
            "max batch size                 6",
            "largest power of two           4",
            "recommended (5% margin)        5",
        ] {
            assert!(text.contains(needle), "no {needle:?} in\n{text}");
        }
        assert!(!text.contains("not a hardware limit"), "{text}");
    }

    #[test]
    fn a_maximum_bounded_by_the_cuda_element_cap_says_so() {
        let mut report = fixture("cuda:0", 6, Some(5));
        report.max_is_cap = true;
        report.settings = report.settings.with_element_cap(6);
        let text = render(&report);
        assert!(
            text.contains("batch size 7 would make a tensor of more than 2^31 elements"),
            "{text}"
        );
        assert!(text.contains("memory did not bound it"), "{text}");
        // The --max-batch cap is named as such.
        report.settings.element_cap = None;
        let text = render(&report);
        assert!(
            text.contains("it is --max-batch or the dataset size"),
            "{text}"
        );
    }
}
