//! The tables beside a report: plans for other memory, what-if changes, a sequence-length
//! sweep, several devices.

use std::fmt::Write as _;

use maxbatch::format::bytes;
use maxbatch::plan::Plan;
use maxbatch::sweep::Sweep;
use maxbatch::Report;
use maxbatch::StepMode;

use super::answer::{DevicesAnswer, SearchAnswer, WhatIf};
use super::{report, schedule, size_or_none};

/// A search's answer: its report, then its plans and what-if rows.
pub fn answer(answer: &SearchAnswer) -> String {
    let mut out = report::render(&answer.report);
    if !answer.plans.is_empty() {
        out.push('\n');
        out.push_str(&plans(&answer.plans));
    }
    if !answer.what_if.is_empty() {
        out.push('\n');
        out.push_str(&what_if(&answer.what_if, Some(&answer.report)));
    }
    if let Some(evaluation) = &answer.evaluation {
        let (train, eval) = (&answer.report.sizes, &evaluation.report.sizes);
        out.push_str("\nthe evaluation batch beside this training run:\n\n");
        out.push_str(&self::answer(evaluation));
        let recommended = |r: Option<usize>| r.map_or("none".to_string(), |b| b.to_string());
        let _ = writeln!(
            out,
            "\ntogether: train at batch size {}, evaluate at up to {} (recommended {}), \
             measured with that training state held",
            train.recommended.unwrap_or(train.max),
            eval.max,
            recommended(eval.recommended)
        );
    }
    out
}

/// The `--plan-for` table: every figure a prediction, from the estimate calibrated by the
/// trials or from the lines through them.
pub fn plans(plans: &[Plan]) -> String {
    let basis = match plans.iter().find_map(|p| p.calibrated_by) {
        Some(b) => format!("from the estimate from shapes, scaled to the trial at batch size {b}"),
        None => "from the lines through the trials".to_string(),
    };
    let mut out = format!("plans for other memory (PREDICTED {basis}; none of these sizes ran):\n");
    // The range of a plan's maximum, where the trials' spread puts it; a plan capped below
    // it (candle's CUDA element cap) shows the cap alone: its caveat says so.
    let maxima: Vec<String> = plans
        .iter()
        .map(|p| {
            let max = p.sizes.unwrap_or_default().max;
            match p.range {
                Some([low, high]) if low != high && low <= max => format!("{max} ({low}–{high})"),
                _ => max.to_string(),
            }
        })
        .collect();
    let width = maxima
        .iter()
        .map(|m| m.chars().count())
        .max()
        .unwrap_or(0)
        .max(16);
    let _ = writeln!(
        out,
        "{:<14}{:>11}{:>11}  {:>width$}  {:>12}  {:>11}  {:>12}",
        "target", "memory", "usable", "max", "power of two", "recommended", "peak at max"
    );
    for (p, max) in plans.iter().zip(&maxima) {
        let sizes = p.sizes.unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<14}{:>11}{:>11}  {max:>width$}  {:>12}  {:>11}  {:>12}",
            p.target,
            bytes(p.capacity_bytes),
            bytes(p.usable_bytes),
            sizes.power_of_two,
            sizes.recommended.unwrap_or(0),
            p.peak_bytes.map_or_else(|| "-".to_string(), bytes)
        );
    }
    for p in plans {
        for a in &p.assumptions {
            let how = if a.measured {
                "measured on this GPU"
            } else {
                "assumed: not measured here"
            };
            let _ = writeln!(
                out,
                "  {}: {} taken off for the {} ({how})",
                p.target,
                bytes(a.bytes),
                a.what
            );
        }
    }
    for caveat in caveats(plans) {
        let _ = writeln!(out, "  {caveat}");
    }
    out
}

/// Every plan's caveats, each once.
pub fn caveats(plans: &[Plan]) -> Vec<&str> {
    let mut caveats: Vec<&str> = Vec::new();
    for p in plans {
        for caveat in p.caveat.iter().flat_map(|c| c.split("; ")) {
            if !caveats.contains(&caveat) {
                caveats.push(caveat);
            }
        }
    }
    caveats
}

/// The `--what-if` table: each change's sizes, measured by a search of its own, after
/// `baseline`'s (`None`: batch size 1 did not fit as asked).
pub fn what_if(rows: &[WhatIf], baseline: Option<&Report>) -> String {
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
                r.sizes.max,
                r.sizes.power_of_two,
                size_or_none(r.sizes.recommended),
                peak,
                r.trials.len()
            );
        }
        None => {
            let _ = writeln!(out, "{:<18}  does not fit at batch size 1", "as asked");
        }
    }
    for row in rows {
        match (&row.error, row.sizes) {
            (None, Some(sizes)) => {
                let _ = writeln!(
                    out,
                    "{:<18}  {:>9}  {:>12}  {:>11}  {:>11}  {:>6}",
                    row.change,
                    sizes.max,
                    sizes.power_of_two,
                    size_or_none(sizes.recommended),
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

/// Each device's answer, then what a data-parallel run with one replica per device can use.
pub fn devices(all: &DevicesAnswer) -> String {
    let mut out = String::new();
    for device in &all.devices {
        let _ = writeln!(out, "=== {} ===", device.report.device.name);
        out.push_str(&answer(device));
        out.push('\n');
    }
    let dp = &all.parallel;
    let _ = writeln!(
        out,
        "=== data parallel: {} replicas, one per device (the minimum over devices) ===",
        dp.world_size
    );
    let _ = writeln!(out, "{:<26}{:>6}", "max batch size", dp.sizes.max);
    let _ = writeln!(
        out,
        "{:<26}{:>6}",
        "largest power of two", dp.sizes.power_of_two
    );
    let recommended = size_or_none(dp.sizes.recommended);
    let _ = writeln!(out, "{:<26}{recommended:>6}", "recommended");
    if !dp.schedule.is_empty() {
        let _ = writeln!(
            out,
            "\nschedule at the global batch (per-device size × {}):",
            dp.world_size
        );
        let mode = all
            .devices
            .first()
            .map_or(StepMode::Train, |d| d.report.settings.mode);
        schedule::rows(&mut out, &dp.schedule, mode);
    }
    out
}

/// A sequence-length sweep: each length's report, then the table by length with tokens per
/// batch (batch size × length) at the maximum.
pub fn sweep(sweep: &Sweep) -> String {
    let mut out = String::new();
    for e in &sweep.sweep {
        let _ = writeln!(out, "=== {} tokens per sample ===", e.seq_len);
        out.push_str(&report::render(&e.report));
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
            e.sizes.max,
            e.sizes.power_of_two,
            size_or_none(e.sizes.recommended),
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

#[cfg(test)]
mod tests {
    use super::*;
    use maxbatch::report::fixtures::fixture;

    #[test]
    fn several_devices_show_each_and_the_minimum() {
        let reports = [fixture("cuda:0", 6, Some(5)), fixture("cuda:1", 9, Some(8))];
        let all = DevicesAnswer {
            parallel: maxbatch::report::DataParallel::new(&reports),
            devices: reports.into_iter().map(SearchAnswer::of).collect(),
        };
        let several = devices(&all);
        assert!(several.contains("=== cuda:1 ==="), "{several}");
        assert!(several.contains("data parallel: 2 replicas"), "{several}");
    }
}
