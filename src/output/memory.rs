//! The report's memory model as text: the line the search predicted with, how close it came,
//! the weights, gradients and optimizer state, and where the bytes per sample go; then the
//! throughput note and the gradient accumulation.

use std::fmt::Write as _;

use maxbatch::analysis::MemoryModel;
use maxbatch::format::bytes;
use maxbatch::{Report, StepMode};

/// The memory model, the throughput note and the gradient accumulation.
pub fn render(out: &mut String, r: &Report) {
    if let Some(m) = &r.memory_model {
        let noun = r.settings.mode.sample_noun();
        let _ = writeln!(
            out,
            "memory model: peak ≈ {} + {} per {noun} (the search's line through batch sizes {} and {}{})",
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
        let trains = r.settings.mode.trains();
        if let (Some(w), Some(g), Some(o), true) = (
            m.weights_bytes,
            m.gradients_bytes,
            m.optimizer_bytes,
            trains,
        ) {
            let _ = writeln!(
                out,
                "              from the parameter count (arithmetic, not measured): weights {}, gradients {}, optimizer state {}",
                bytes(w),
                bytes(g),
                bytes(o),
            );
        }
        phase_breakdown(out, m, trains, noun);
    }
    generation(out, r);
    if let Some(note) = &r.throughput_note {
        let _ = writeln!(out, "throughput:   {note}");
    }
    if let Some(a) = &r.accumulation {
        let steps = a
            .optimizer_steps_per_epoch
            .map(|s| format!(", {s} optimizer steps per epoch"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "accumulation: micro-batch {} × {} accumulation steps × {} replica{} = global batch {} (target {}){steps}",
            a.micro_batch,
            a.accumulation_steps,
            a.world_size,
            if a.world_size == 1 { "" } else { "s" },
            a.global_batch,
            a.target_batch
        );
    }
}

/// Where the bytes per sample arise, phase by phase, and which phase set the peak at the
/// smallest size and at the maximum (why small sizes can sit above the line).
/// A generation's KV cache (the arithmetic, and the bytes a CPU trial counted) and its
/// prefill and decode throughput at the largest size that fit.
fn generation(out: &mut String, r: &Report) {
    let (
        Some(g),
        Some(per_token),
        StepMode::Generate {
            prompt_len,
            new_tokens,
        },
    ) = (
        &r.generation,
        r.model.kv_cache_bytes_per_token,
        r.settings.mode,
    )
    else {
        return;
    };
    let measured = match (&r.memory_model, g.kv_cache_measured_bytes_per_sequence) {
        (Some(m), Some(bytes_counted)) => format!(
            "; measured {} per sequence (the cache's counted bytes between batch sizes {} and {})",
            bytes(bytes_counted),
            m.fitted_from[0],
            m.fitted_from[1]
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "kv cache:     {} per sequence ({} per token × {} tokens; arithmetic from the config){measured}",
        bytes(g.kv_cache_bytes_per_sequence),
        bytes(per_token),
        prompt_len + new_tokens,
    );
    if let (Some(prefill), Some(decode)) = (g.prefill_tokens_per_second, g.decode_tokens_per_second)
    {
        let _ = writeln!(
            out,
            "generation:   at batch size {}: prefill {prefill:.0} tokens/s, decode {decode:.0} tokens/s (measured: the trial's last step)",
            g.batch_size
        );
    }
}

fn phase_breakdown(out: &mut String, m: &MemoryModel, trains: bool, noun: &str) {
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
            "              per {noun}, by the phase that adds it (measured): {}",
            parts.join(", ")
        );
    }
    // Without a graph nothing is held for a backward pass: what a part leaves alive is not
    // where the peak's bytes are (a generation's cache is given on its own line).
    if !m.parts.is_empty() && trains {
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
