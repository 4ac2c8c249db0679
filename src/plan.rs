//! Plans for memory the user does not have (`--plan-for`): the sizes the measured lines
//! predict for other capacities or named GPUs. Every figure here is a prediction, labelled
//! as one in the text, the JSON and the plot; nothing in a plan ran.

use serde::{Deserialize, Serialize};

use crate::device::DeviceKind;
use crate::report::Report;
use crate::search::{self, Line};
use crate::trial::Trial;

/// GPUs a plan can name, with their published memory (`maxbatch --plan-for h100-80gb`).
pub const KNOWN_GPUS: &[(&str, u64)] = &[
    ("l4", 24 << 30),
    ("a10g", 24 << 30),
    ("rtx-4090", 24 << 30),
    ("a100-40gb", 40 << 30),
    ("a100-80gb", 80 << 30),
    ("h100-80gb", 80 << 30),
    ("h200", 141 << 30),
];

/// What a GPU holds outside the memory a batch can use, assumed when the measurement ran
/// on the CPU: the CUDA context and loaded kernels (a few hundred MiB on current drivers)
/// and cuBLAS's workspace. A measurement on a GPU replaces it with the CUDA meter's measured
/// overhead (`device.overhead_bytes`).
pub const ASSUMED_CUDA_OVERHEAD: u64 = 512 << 20;

/// A device to plan for: a named GPU, or a capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The GPU's name, or the capacity as given.
    pub name: String,
    /// Its memory in bytes.
    pub bytes: u64,
    /// True for a named GPU: its CUDA overhead is part of the plan.
    pub is_gpu: bool,
}

impl Target {
    /// A named GPU from [`KNOWN_GPUS`]: its CUDA overhead is part of the plan.
    pub fn gpu(&(name, bytes): &(&str, u64)) -> Self {
        Self {
            name: name.to_string(),
            bytes,
            is_gpu: true,
        }
    }
}

/// Why a named GPU's predicted maximum stops at `cap` (`ModelSpec::cuda_batch_cap`).
pub fn cuda_cap_caveat(cap: usize) -> String {
    format!(
        "capped at {cap}: beyond it a tensor passes the 2^31 elements candle's CUDA kernels \
         can loop over, though memory would allow more"
    )
}

/// Parses `--plan-for`: a comma-separated list of GPU names ([`KNOWN_GPUS`]) and capacities
/// (`24GiB`, `80GB`).
pub fn parse_targets(text: &str) -> Result<Vec<Target>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let known = KNOWN_GPUS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(item));
            match known {
                Some(gpu) => Ok(Target::gpu(gpu)),
                None => crate::format::parse_bytes(item)
                    .map(|bytes| Target {
                        name: item.to_string(),
                        bytes,
                        is_gpu: false,
                    })
                    .map_err(|e| {
                        let names: Vec<&str> = KNOWN_GPUS.iter().map(|(n, _)| *n).collect();
                        format!(
                            "--plan-for {item:?} is neither a GPU ({}) nor a size: {e}",
                            names.join(", ")
                        )
                    }),
            }
        })
        .collect()
}

/// A term of a plan that is not measured on the target: what it is, its bytes, and whether
/// it was measured (on the device the search ran on) or assumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assumption {
    /// What the term is.
    pub what: String,
    /// Its bytes.
    pub bytes: u64,
    /// True when measured (on the device the search ran on), false when assumed.
    pub measured: bool,
}

/// The predicted sizes for one target. Nothing here ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The target's name, or the capacity as given.
    pub target: String,
    /// The target's memory.
    pub capacity_bytes: u64,
    /// Taken off the capacity before any batch: the CUDA overhead of a named GPU.
    pub assumptions: Vec<Assumption>,
    /// What the batch may use: the capacity less the assumptions.
    pub usable_bytes: u64,
    /// Predicted largest batch size (0: not even batch size 1).
    pub predicted_max: usize,
    /// The range the two lines through the measurements give: the local one near the
    /// largest size, which the prediction follows, and the one spanning the measurements
    /// (see [`search::earliest_line`]).
    pub predicted_range: [usize; 2],
    /// The largest power of two ≤ the predicted maximum.
    pub predicted_power_of_two: usize,
    /// Predicted largest size that leaves the margin free.
    pub predicted_recommended: usize,
    /// The line's peak at the predicted maximum.
    pub predicted_peak_bytes: u64,
    /// The phase boundary whose line decides it (`None`: the overall peaks).
    pub fitted_through: Option<crate::workload::Phase>,
    /// What differs between the measurement and the target that the plan does not model.
    pub caveat: Option<String>,
}

/// The plans for `targets` from `report`'s measurements; a target the lines cannot
/// predict for (fewer than two measured sizes) is left out. `cuda_cap` is the largest batch
/// size candle's CUDA kernels can index for this model (`ModelSpec::cuda_batch_cap`): a
/// named GPU's plan stops there.
pub fn plans(report: &Report, targets: &[Target], cuda_cap: Option<usize>) -> Vec<Plan> {
    targets
        .iter()
        .filter_map(|t| plan(report, t, cuda_cap.filter(|_| t.is_gpu)))
        .collect()
}

fn plan(report: &Report, target: &Target, cuda_cap: Option<usize>) -> Option<Plan> {
    let measured_on_gpu = report.device.kind == DeviceKind::Cuda;
    let mut assumptions = Vec::new();
    if target.is_gpu {
        assumptions.push(
            match report.device.overhead_bytes.filter(|_| measured_on_gpu) {
                Some(bytes) => Assumption {
                    what: "CUDA context, kernels and library workspaces (measured on this GPU)"
                        .into(),
                    bytes,
                    measured: true,
                },
                None => Assumption {
                    what: "CUDA context, kernels and cuBLAS workspace (assumed: not measured here)"
                        .into(),
                    bytes: ASSUMED_CUDA_OVERHEAD,
                    measured: false,
                },
            },
        );
    }
    let usable = target
        .bytes
        .saturating_sub(assumptions.iter().map(|a| a.bytes).sum());
    let fits = |t: &Trial| t.outcome == crate::trial::Outcome::Fits;
    let spanning = search::earliest_line(&report.trials, &fits, usable, Line::spanning)?;
    // The local slope at the top of the measurements extends best: below it the peak can be
    // set by another phase, or by buffers that only small sizes allocate.
    let top =
        search::earliest_line(&report.trials, &fits, usable, Line::near_top).unwrap_or(spanning);
    let chosen = top;
    let (line, mut predicted) = (chosen.line, chosen.predicted);
    let capped = cuda_cap.filter(|&cap| cap < predicted);
    if let Some(cap) = capped {
        predicted = cap;
    }
    let allowed = search::allowed_peak(usable, report.settings.margin);
    let fitted_through = crate::trial::phase_of(&report.trials, chosen.through);
    let mut caveats = Vec::new();
    if let Some(cap) = capped {
        caveats.push(cuda_cap_caveat(cap));
    }
    if target.is_gpu && !measured_on_gpu {
        caveats.push(
            "measured on the CPU: assumes the GPU's kernels hold what the CPU's did (cuDNN and \
             cuBLAS choose other algorithms and workspaces) and ignores the pool's 2 MiB \
             granularity"
                .to_string(),
        );
    }
    let caveat = (!caveats.is_empty()).then(|| caveats.join("; "));
    Some(Plan {
        target: target.name.clone(),
        capacity_bytes: target.bytes,
        assumptions,
        usable_bytes: usable,
        predicted_max: predicted,
        predicted_range: [
            top.predicted.min(spanning.predicted),
            top.predicted.max(spanning.predicted),
        ],
        predicted_power_of_two: search::largest_power_of_two_at_most(predicted),
        predicted_recommended: line.meets(allowed).min(predicted),
        predicted_peak_bytes: line.at(predicted).max(0.0) as u64,
        fitted_through,
        caveat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_gpu_names_or_sizes_and_anything_else_is_refused() {
        let targets = parse_targets("h100-80gb, 24GiB,L4").unwrap();
        assert_eq!(targets[0].bytes, 80 << 30);
        assert!(targets[0].is_gpu);
        assert_eq!(targets[1].bytes, 24 << 30);
        assert!(!targets[1].is_gpu);
        assert_eq!(targets[2].name, "l4");
        let error = parse_targets("h100").unwrap_err();
        assert!(error.contains("h100-80gb"), "{error}");
    }

    #[test]
    fn a_plan_extends_the_measured_line_and_labels_the_cuda_overhead() {
        // 100 MiB a sample above 1 GiB, exactly: the plan for 4 GiB is exact.
        let mut report = crate::report::tests::fixture("cpu", 6, Some(5));
        report.device.kind = DeviceKind::Cpu;
        for t in report.trials.iter_mut() {
            t.peak_bytes = t
                .peak_bytes
                .map(|_| (1 << 30) + t.batch_size as u64 * (100 << 20));
            t.phase_peaks.clear();
        }
        let targets = parse_targets("4GiB,a100-40gb").unwrap();
        let plans = plans(&report, &targets, None);
        assert_eq!(plans[0].predicted_max, 30); // (4096 − 1024) / 100
        assert_eq!(plans[0].predicted_range, [30, 30]);
        assert_eq!(plans[0].predicted_power_of_two, 16);
        assert!(plans[0].assumptions.is_empty() && plans[0].caveat.is_none());
        // A named GPU planned from a CPU measurement: the assumed overhead comes off first.
        let gpu = &plans[1];
        assert_eq!(gpu.assumptions[0].bytes, ASSUMED_CUDA_OVERHEAD);
        assert!(!gpu.assumptions[0].measured);
        assert_eq!(gpu.usable_bytes, (40 << 30) - ASSUMED_CUDA_OVERHEAD);
        assert_eq!(gpu.predicted_max, (40 * 1024 - 512 - 1024) / 100);
        assert!(gpu.caveat.is_some());
        // Where candle's CUDA kernels cannot index the tensors, a GPU's plan stops, and says
        // why; a capacity's does not.
        let capped = super::plans(&report, &targets, Some(100));
        assert_eq!(capped[0].predicted_max, 30);
        assert_eq!(capped[1].predicted_max, 100);
        assert!(capped[1]
            .caveat
            .as_deref()
            .unwrap()
            .starts_with("capped at 100"));
    }
}
