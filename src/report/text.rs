//! The report as a human table: the trials, the result block and the schedule.

use std::fmt::Write as _;

use super::{DataParallel, Report, ScheduleRow};
use crate::format::{bytes, parameters};
use crate::plan::Plan;
use crate::soak::Verification;
use crate::trial::{Outcome, Trial};

/// The trials table, the result block and the schedule, as printed by the CLI.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    header(&mut out, report);
    out.push('\n');
    out.push_str(&trials_table(&report.trials));
    out.push('\n');
    results(&mut out, report);
    if report.memory_model.is_some()
        || report.throughput_note.is_some()
        || report.accumulation.is_some()
    {
        out.push('\n');
        analysis(&mut out, report);
    }
    if !report.schedule.is_empty() {
        out.push('\n');
        schedule(&mut out, report);
        schedule_rows(&mut out, &report.schedule);
    }
    if let Some(v) = &report.verification {
        out.push('\n');
        out.push_str(&verification(v, report.device.capacity_bytes));
    }
    if !report.plans.is_empty() {
        out.push('\n');
        out.push_str(&plans(&report.plans));
    }
    if !report.what_if.is_empty() {
        out.push('\n');
        out.push_str(&what_if_table(&report.what_if, Some(report)));
    }
    out
}

/// The `--plan-for` table: every figure a prediction from the measured lines.
fn plans(plans: &[Plan]) -> String {
    let mut out = String::from("plans for other memory (PREDICTED from the lines through the trials; none of these sizes ran):\n");
    let _ = writeln!(
        out,
        "{:<14}{:>11}{:>11}  {:>16}  {:>12}  {:>11}  {:>12}",
        "target", "memory", "usable", "max", "power of two", "recommended", "peak at max"
    );
    for p in plans {
        let [low, high] = p.predicted_range;
        let max = if low == high {
            format!("{}", p.predicted_max)
        } else {
            format!("{} ({low}–{high})", p.predicted_max)
        };
        let _ = writeln!(
            out,
            "{:<14}{:>11}{:>11}  {max:>16}  {:>12}  {:>11}  {:>12}",
            p.target,
            bytes(p.capacity_bytes),
            bytes(p.usable_bytes),
            p.predicted_power_of_two,
            p.predicted_recommended,
            bytes(p.predicted_peak_bytes)
        );
    }
    for p in plans {
        for a in &p.assumptions {
            let _ = writeln!(
                out,
                "  {}: {} taken off for the {}",
                p.target,
                bytes(a.bytes),
                a.what
            );
        }
    }
    let mut caveats: Vec<&str> = Vec::new();
    for p in plans {
        for caveat in p.caveat.iter().flat_map(|c| c.split("; ")) {
            if !caveats.contains(&caveat) {
                caveats.push(caveat);
            }
        }
    }
    for caveat in caveats {
        let _ = writeln!(out, "  {caveat}");
    }
    out
}

/// Where the bytes per sample arise, phase by phase, and which phase set the peak at the
/// smallest size and at the maximum (why small sizes can sit above the line).
fn phase_breakdown(out: &mut String, m: &crate::analysis::MemoryModel) {
    let mut parts = Vec::new();
    let mut before = 0u64;
    for p in &m.phases {
        let added = p.bytes_per_sample.saturating_sub(before);
        parts.push(format!("{} {}", p.phase, bytes(added)));
        before = before.max(p.bytes_per_sample);
    }
    if !parts.is_empty() {
        let _ = writeln!(
            out,
            "              per sample, by the phase that adds it (measured): {}",
            parts.join(", ")
        );
    }
    if !m.parts.is_empty() {
        let held: Vec<String> = m
            .parts
            .iter()
            .map(|p| {
                let sign = if p.bytes_per_sample < 0 { "-" } else { "" };
                format!(
                    "{} {sign}{}",
                    p.part,
                    bytes(p.bytes_per_sample.unsigned_abs())
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "              per sample, by where it is held (measured between batch sizes {} and {}): {}",
            m.fitted_from[0],
            m.fitted_from[1],
            held.join(", ")
        );
    }
    if let (Some((size, small)), Some(at_max)) = (m.smallest_set_by, m.max_set_by) {
        if small != at_max {
            let fixed = m
                .phases
                .iter()
                .find(|p| p.phase == small)
                .map(|p| {
                    format!(
                        " (about {} that does not grow with the batch)",
                        bytes(p.fixed_bytes)
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "              the {small} phase set the peak at batch size {size}{fixed}, the {at_max} phase at the maximum: small sizes sit above a line through large ones"
            );
        }
    }
}

/// The soak run's lines: its step peaks, and loudly, a step that crossed the capacity.
pub fn verification(v: &Verification, capacity: u64) -> String {
    let lower = if v.passed { "" } else { "≥ " };
    let peaks = match (v.first_peak_bytes, v.last_peak_bytes, v.max_peak_bytes) {
        (Some(first), _, _) if v.steps_completed == 0 => {
            format!("the first step peaked at {lower}{}", bytes(first))
        }
        (Some(first), Some(last), Some(max)) => format!(
            "first step {}, last {lower}{}, largest {lower}{} ({:+} bytes from the first to the last)",
            bytes(first),
            bytes(last),
            bytes(max),
            last as i64 - first as i64
        ),
        _ => "no step measured".to_string(),
    };
    let mut out = format!(
        "verification: {} of {} consecutive steps at batch size {}: {peaks}\n",
        v.steps_completed, v.steps_requested, v.batch_size
    );
    if v.passed {
        let _ = writeln!(
            out,
            "              every step stayed within the capacity {}",
            bytes(capacity)
        );
    } else {
        let instead = match v.fallback_batch_size {
            Some(b) => format!(
                "batch size {b} passed its trial: train at {b}, or soak it with check -b {b} --verify-steps {}",
                v.steps_requested
            ),
            None => "no smaller size is known to pass: try a smaller --batch-size, or search with --verify-steps".to_string(),
        };
        let _ = writeln!(
            out,
            "              FAILED: step {} crossed the capacity {} ({}); {instead}",
            v.steps_completed + 1,
            bytes(capacity),
            v.detail.as_deref().unwrap_or("over capacity")
        );
    }
    out
}

/// Each device's report, then what a data-parallel run with one replica per device can
/// use.
pub fn render_devices(reports: &[Report]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(out, "=== {} ===", r.device.name);
        out.push_str(&render(r));
        out.push('\n');
    }
    let dp = DataParallel::new(reports);
    let _ = writeln!(
        out,
        "=== data parallel: {} replicas, one per device (the minimum over devices) ===",
        dp.world_size
    );
    let _ = writeln!(out, "{:<26}{:>6}", "max batch size", dp.max_batch_size);
    let _ = writeln!(
        out,
        "{:<26}{:>6}",
        "largest power of two", dp.largest_power_of_two
    );
    let recommended = size_or_none(dp.recommended_batch_size);
    let _ = writeln!(out, "{:<26}{recommended:>6}", "recommended");
    if !dp.schedule.is_empty() {
        let _ = writeln!(
            out,
            "\nschedule at the global batch (per-device size × {}):",
            dp.world_size
        );
        schedule_rows(&mut out, &dp.schedule);
    }
    out
}

/// A batch size, or "none" where there is none (no size leaves the margin free).
fn size_or_none(size: Option<usize>) -> String {
    size.map_or_else(|| "none".to_string(), |b| b.to_string())
}

/// The `--what-if` table: each change's sizes, measured by a search of its own, after
/// `baseline`'s (`None`: batch size 1 did not fit as asked).
pub fn what_if_table(rows: &[crate::what_if::WhatIf], baseline: Option<&Report>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "what if (each change alone, measured by a search of its own):\n\
         {:<18}  {:>9}  {:>12}  {:>11}  {:>11}  {:>6}",
        "change", "max batch", "power of two", "recommended", "peak at max", "trials"
    );
    match baseline {
        Some(r) => {
            let peak = r.peak_at_max().map_or_else(|| "-".to_string(), bytes);
            let _ = writeln!(
                out,
                "{:<18}  {:>9}  {:>12}  {:>11}  {:>11}  {:>6}",
                "as asked",
                r.max_batch_size,
                r.largest_power_of_two,
                size_or_none(r.recommended_batch_size),
                peak,
                r.trials.len()
            );
        }
        None => {
            let _ = writeln!(out, "{:<18}  does not fit at batch size 1", "as asked");
        }
    }
    for row in rows {
        match (&row.error, row.max_batch_size) {
            (None, Some(max)) => {
                let _ = writeln!(
                    out,
                    "{:<18}  {:>9}  {:>12}  {:>11}  {:>11}  {:>6}",
                    row.change,
                    max,
                    size_or_none(row.largest_power_of_two),
                    size_or_none(row.recommended_batch_size),
                    row.peak_bytes.map_or_else(|| "-".to_string(), bytes),
                    row.trials
                );
            }
            (error, _) => {
                let why = error.as_deref().unwrap_or("no size");
                let _ = writeln!(out, "{:<18}  {why}", row.change);
            }
        }
    }
    out
}

/// A sequence-length sweep: each length's report, then the table by length with tokens per
/// batch (batch size × length) at the maximum.
pub fn render_sweep(sweep: &crate::sweep::Sweep) -> String {
    let mut out = String::new();
    for e in &sweep.sweep {
        let _ = writeln!(out, "=== {} tokens per sample ===", e.seq_len);
        out.push_str(&render(&e.report));
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "=== sequence-length sweep: every size below was run ===\n\
         {:>7}  {:>9}  {:>12}  {:>11}  {:>16}  {:>11}  {:>10}  {:>6}",
        "tokens",
        "max batch",
        "power of two",
        "recommended",
        "tokens per batch",
        "peak at max",
        "per sample",
        "trials"
    );
    for e in &sweep.sweep {
        let r = &e.report;
        let peak = r.peak_at_max().map_or_else(|| "-".to_string(), bytes);
        let per_sample = r
            .memory_model
            .as_ref()
            .map_or_else(|| "-".to_string(), |m| bytes(m.bytes_per_sample));
        let _ = writeln!(
            out,
            "{:>7}  {:>9}  {:>12}  {:>11}  {:>16}  {:>11}  {:>10}  {:>6}",
            e.seq_len,
            e.max_batch_size,
            e.largest_power_of_two,
            size_or_none(e.recommended_batch_size),
            e.tokens_per_batch,
            peak,
            per_sample,
            r.trials.len()
        );
    }
    let _ = writeln!(
        out,
        "tokens per batch = max batch × tokens per sample: the budget a token-bucketing \
         batcher can fill at that length"
    );
    out
}

fn header(out: &mut String, r: &Report) {
    let m = &r.model;
    let optimizer = r
        .settings
        .optimizer
        .map(|o| format!(", {o}"))
        .unwrap_or_default();
    // A caller's own step may come with nothing known but its name: say only what is.
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
    about.push(format!("{} per sample", m.input));
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
    let _ = writeln!(out, "model:    {} ({})", m.name, about.join(", "));
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
        d.capacity_source.describe()
    );
    if let Some(reason) = &d.fallback {
        let _ = writeln!(
            out,
            "          on the CPU, NOT the CUDA device asked for: {reason}"
        );
    }
    if d.capacity_is_budget {
        let _ = writeln!(
            out,
            "          a budget maxbatch enforces on the heap it counts, not a hardware limit"
        );
    }
    if let Some(total) = d.total_bytes {
        let _ = writeln!(out, "          device total {}", bytes(total));
    }
    if let Some(baseline) = d.baseline_bytes {
        let what = if d.baseline_is_whole_heap {
            "everything the process held when the search started: the model, its optimizer \
             state, your data"
        } else {
            "weights, optimizer state, workspaces"
        };
        let _ = writeln!(
            out,
            "          {} counted as held before every trial ({what})",
            bytes(baseline)
        );
    }
    if let Some(overhead) = d.overhead_bytes {
        let _ = writeln!(
            out,
            "          {} held outside the pool after the warm-up step (CUDA context, kernels, other processes; cuBLAS's workspace where the pool does not hold it)",
            bytes(overhead)
        );
    }
    if d.kind != crate::device::DeviceKind::Cpu && !d.meter.is_empty() {
        let _ = writeln!(out, "          measured by {}", d.meter);
    }
}

/// One line per trial with a header, as in the report.
pub fn trials_table(trials: &[Trial]) -> String {
    let mut out = format!(
        "{:>6}  {:<13}  {:>12}  {:>8}  {:>9}  note\n",
        "batch", "outcome", "peak memory", "s/step", "samples/s"
    );
    for t in trials {
        let _ = writeln!(out, "{}", trial_line(t).trim_end());
    }
    out
}

/// One trial as a table row (also the CLI's progress line).
pub fn trial_line(t: &Trial) -> String {
    let outcome = match t.outcome {
        Outcome::Fits => "fits",
        Outcome::Oom => "out of memory",
    };
    let peak = match (t.peak_bytes, t.stopped_after) {
        (None, _) => "-".to_string(),
        (Some(p), Some(_)) => format!("≥ {}", bytes(p)),
        (Some(p), None) => bytes(p),
    };
    let seconds = t
        .step_seconds
        .map_or_else(|| "-".to_string(), |s| format!("{s:.3}"));
    let mut notes: Vec<String> = t.detail.iter().cloned().collect();
    if let Some(spread) = t.timing_spread() {
        notes.push(format!(
            "step times after the first varied by {:.0}%",
            spread * 100.0
        ));
    }
    if t.peak_is_approximate {
        notes.push("peak sampled, approximate".into());
    }
    if let Some(reserved) = t.reserved_bytes {
        notes.push(format!("pool reserved {}", bytes(reserved)));
    }
    if let Some(leaked) = t.leaked_bytes.filter(|&l| l > 0) {
        notes.push(format!("LEAKED {} after the trial", bytes(leaked)));
    }
    let rate = t
        .samples_per_second
        .map_or_else(|| "-".to_string(), crate::format::rate);
    format!(
        "{:>6}  {outcome:<13}  {peak:>12}  {seconds:>8}  {rate:>9}  {}",
        t.batch_size,
        notes.join("; ")
    )
}

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
    let cap_note = if r.max_is_cap && r.settings.capped_by_elements() {
        format!(
            " (the cap: batch size {} would make a tensor of more than 2^31 elements, which \
             candle's CUDA kernels cannot loop over; memory did not bound it)",
            r.max_batch_size + 1
        )
    } else if r.max_is_cap {
        format!(
            " (the cap, {}: larger sizes not tried; it is --max-batch or the dataset size)",
            r.settings.max_batch.unwrap_or(r.max_batch_size)
        )
    } else {
        String::new()
    };
    let margin = format!("recommended ({:.0}% margin)", r.settings.margin * 100.0);
    let _ = writeln!(
        out,
        "{:<26}{:>6}  {}{cap_note}",
        "max batch size",
        r.max_batch_size,
        share(r.max_batch_size)
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
        r.largest_power_of_two,
        share(r.largest_power_of_two)
    );
    match r.recommended_batch_size {
        Some(b) => {
            let _ = writeln!(out, "{margin:<26}{b:>6}  {}", share(b));
        }
        None => {
            let _ = writeln!(
                out,
                "{margin:<26}{:>6}  no size that ran leaves that margin free",
                "none"
            );
        }
    }
}

fn analysis(out: &mut String, r: &Report) {
    if let Some(m) = &r.memory_model {
        let _ = writeln!(
            out,
            "memory model: peak ≈ {} + {} per sample (the search's line through batch sizes {} and {}{})",
            bytes(m.fixed_bytes),
            bytes(m.bytes_per_sample),
            m.fitted_from[0],
            m.fitted_from[1],
            m.fitted_through
                .map(|phase| format!(", peaks after the {phase} phase"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "              predicted {} at the maximum, measured {} ({:+.1}%)",
            bytes(m.predicted_peak_bytes),
            bytes(m.measured_peak_bytes),
            100.0 * m.relative_error
        );
        if let (Some(w), Some(g), Some(o)) = (m.weights_bytes, m.gradients_bytes, m.optimizer_bytes)
        {
            let _ = writeln!(
                out,
                "              from the parameter count (arithmetic, not measured): weights {}, gradients {}, optimizer state {}",
                bytes(w),
                bytes(g),
                bytes(o),
            );
        }
        phase_breakdown(out, m);
    }
    if let Some(note) = &r.throughput_note {
        let _ = writeln!(out, "throughput:   {note}");
    }
    if let Some(p) = &r.accumulation {
        let steps = p
            .optimizer_steps_per_epoch
            .map(|s| format!(", {s} optimizer steps per epoch"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "accumulation: micro-batch {} × {} accumulation steps × {} replica{} = global batch {} (target {}){steps}",
            p.micro_batch,
            p.accumulation_steps,
            p.world_size,
            if p.world_size == 1 { "" } else { "s" },
            p.global_batch,
            p.target_batch
        );
    }
}

fn schedule(out: &mut String, r: &Report) {
    if let Some(d) = &r.dataset {
        let last = if d.drop_last {
            "last partial batch dropped"
        } else {
            "last partial batch kept"
        };
        let _ = writeln!(
            out,
            "schedule: {} samples × {} epoch{} ({last})",
            d.size,
            d.epochs,
            if d.epochs == 1 { "" } else { "s" }
        );
        if r.settings.steps_per_trial == 1 {
            let _ = writeln!(
                out,
                "          times from one step a size; one step's time varies by up to {:.0}% \
                 between runs (more --steps-per-trial time more steps)",
                crate::analysis::ONE_STEP_NOISE * 100.0
            );
        }
    }
}

fn schedule_rows(out: &mut String, rows: &[ScheduleRow]) {
    let _ = writeln!(
        out,
        "{:<26}{:>6}  {:>12}  {:>12}  {:>12}  {:>12}",
        "", "batch", "steps/epoch", "total steps", "epoch time", "total time"
    );
    for row in rows {
        let label = match row.label.as_str() {
            "largest_power_of_two" => "largest power of two",
            "accumulation" => "accumulation plan*",
            other => other,
        };
        let epoch = row.epoch_seconds.map_or_else(|| "-".to_string(), duration);
        let total = row.total_seconds.map_or_else(|| "-".to_string(), duration);
        let _ = writeln!(
            out,
            "{label:<26}{:>6}  {:>12}  {:>12}  {epoch:>12}  {total:>12}",
            row.batch_size, row.steps_per_epoch, row.total_steps
        );
    }
    if rows.iter().any(|r| r.label == "accumulation") {
        let _ = writeln!(
            out,
            "* the global batch's optimizer steps; times are the micro-batch's measured step \
             × accumulation steps on one replica, assuming the replicas scale perfectly"
        );
    }
}

/// Seconds as "3h 12m", "4m 05s" or "12.3s".
fn duration(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    match whole {
        0..=59 => format!("{seconds:.1}s"),
        60..=3599 => format!("{}m {:02}s", whole / 60, whole % 60),
        _ => format!("{}h {:02}m", whole / 3600, (whole % 3600) / 60),
    }
}
