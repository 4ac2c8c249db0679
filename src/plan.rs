//! Plans for memory the user does not have: the sizes predicted for other capacities or
//! named GPUs, from a search's measured lines or from the estimate from shapes. One [`Plan`]
//! type and one rule for what a named GPU holds outside any batch ([`overhead`]). Every
//! figure in a plan is a prediction, labelled as one wherever it is shown; nothing in a plan
//! ran.

use serde::{Deserialize, Serialize, Serializer};

use crate::device::DeviceKind;
use crate::estimate::Estimate;
use crate::report::Report;
use crate::search::{self, Line, StepModel};
use crate::settings::SearchSettings;
use crate::sizes::Sizes;
use crate::trial::Trial;
use crate::workload::Phase;

/// GPUs a plan can name, with their published memory.
pub const KNOWN_GPUS: &[(&str, u64)] = &[
    ("l4", 24 << 30),
    ("a10g", 24 << 30),
    ("rtx-4090", 24 << 30),
    ("a100-40gb", 40 << 30),
    ("a100-80gb", 80 << 30),
    ("h100-80gb", 80 << 30),
    ("h200", 141 << 30),
];

/// What a GPU holds outside the memory a batch can use, assumed when nothing was measured
/// on a GPU: the CUDA context and loaded kernels (a few hundred MiB on current drivers) and
/// cuBLAS's workspace. A search on a GPU replaces it with the meter's measured overhead.
pub const ASSUMED_CUDA_OVERHEAD: u64 = 512 << 20;

/// Memory to plan for: a named GPU, or a capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// The GPU's name, or the capacity as given.
    pub name: String,
    /// Its bytes.
    pub bytes: u64,
    /// True for a named GPU: what the GPU holds outside any batch comes off first.
    pub named_gpu: bool,
}

impl Memory {
    /// A named GPU from [`KNOWN_GPUS`].
    pub fn gpu(&(name, bytes): &(&str, u64)) -> Self {
        Self {
            name: name.to_string(),
            bytes,
            named_gpu: true,
        }
    }

    /// Every GPU of [`KNOWN_GPUS`].
    pub fn every_gpu() -> Vec<Self> {
        KNOWN_GPUS.iter().map(Self::gpu).collect()
    }

    /// A capacity of `bytes`, named as given.
    pub fn capacity(name: impl Into<String>, bytes: u64) -> Self {
        Self {
            name: name.into(),
            bytes,
            named_gpu: false,
        }
    }

    /// A GPU's name ([`KNOWN_GPUS`], any case) or a size (`24GiB`, `80GB`).
    pub fn parse(item: &str) -> Result<Self, String> {
        let item = item.trim();
        if let Some(gpu) = KNOWN_GPUS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(item))
        {
            return Ok(Self::gpu(gpu));
        }
        crate::format::parse_bytes(item)
            .map(|bytes| Self::capacity(item, bytes))
            .map_err(|e| {
                let names: Vec<&str> = KNOWN_GPUS.iter().map(|(n, _)| *n).collect();
                format!(
                    "{item:?} is neither a GPU ({}) nor a size: {e}",
                    names.join(", ")
                )
            })
    }

    /// A comma-separated list of [`Memory::parse`]'s items.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(Self::parse)
            .collect()
    }
}

/// A term of a plan that is not measured on the memory planned for: what it is, its bytes,
/// and whether it was measured (on the GPU a search ran on) or assumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assumption {
    /// What the term is.
    pub what: String,
    /// Its bytes.
    pub bytes: u64,
    /// True when measured (on the GPU a search ran on), false when assumed.
    pub measured: bool,
}

/// What `memory` holds outside any batch: nothing for a capacity; for a named GPU the CUDA
/// overhead `measured` on a GPU when a search ran on one, else [`ASSUMED_CUDA_OVERHEAD`].
/// The one rule every plan follows.
pub fn overhead(memory: &Memory, measured: Option<u64>) -> Vec<Assumption> {
    if !memory.named_gpu {
        return Vec::new();
    }
    vec![match measured {
        Some(bytes) => Assumption {
            what: "CUDA context, kernels and library workspaces".into(),
            bytes,
            measured: true,
        },
        None => Assumption {
            what: "CUDA context, kernels and cuBLAS workspace".into(),
            bytes: ASSUMED_CUDA_OVERHEAD,
            measured: false,
        },
    }]
}

/// What a named GPU's plan from a search on the CPU assumes.
const CPU_FOR_GPU: &str = "measured on the CPU: assumes the GPU's kernels hold what the CPU's \
                           did (cuDNN and cuBLAS choose other algorithms and workspaces) and \
                           ignores the pool's 2 MiB granularity";

/// How far the estimate may be from a measured peak before a plan says so: the estimate's
/// error on the validation set (docs/guide.md).
const ESTIMATE_AGREES: f64 = 0.02;

/// Why a named GPU's predicted maximum stops at `cap` (`ModelSpec::cuda_batch_cap`).
pub fn cuda_cap_caveat(cap: usize) -> String {
    format!(
        "capped at {cap}: beyond it a tensor passes the 2^31 elements candle's CUDA kernels \
         can loop over, though memory would allow more"
    )
}

/// The predicted sizes for one memory. Nothing here ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The memory's name: a GPU's, or the capacity as given.
    pub target: String,
    /// Its bytes.
    pub capacity_bytes: u64,
    /// Taken off the capacity before any batch (see [`overhead`]).
    pub assumptions: Vec<Assumption>,
    /// What the batch may use: the capacity less the assumptions.
    pub usable_bytes: u64,
    /// The predicted sizes (`None`: nothing bounds the batch size; `max` 0: not even batch
    /// size 1 fits).
    pub sizes: Option<Sizes>,
    /// The predicted peak at the predicted maximum.
    pub peak_bytes: Option<u64>,
    /// From measured lines: the maxima the local line near the largest size (which the
    /// prediction follows) and the line spanning the measurements give.
    pub range: Option<[usize; 2]>,
    /// From measured lines: the phase boundary whose line decides it (`None`: the overall
    /// peaks, or a plan from the estimate).
    pub fitted_through: Option<Phase>,
    /// From a seeded search: the batch size of the trial the estimate was calibrated by.
    pub calibrated_by: Option<usize>,
    /// What differs between the measurement and the memory planned for that the plan does
    /// not model.
    pub caveat: Option<String>,
}

impl Plan {
    /// The plan for `memory` from a search's measured `trials` on `device_kind` (whose CUDA
    /// overhead, when it is a GPU, was `overhead_bytes`), with `settings.margin` left free;
    /// a named GPU's plan stops at `cuda_cap`. `None` without two measured sizes.
    pub fn from_lines(
        trials: &[Trial],
        settings: &SearchSettings,
        device: (DeviceKind, Option<u64>),
        memory: &Memory,
        cuda_cap: Option<usize>,
    ) -> Option<Plan> {
        let (on_gpu, assumptions, usable) = on_memory(memory, device);
        let fits = |t: &Trial| t.outcome == crate::trial::Outcome::Fits;
        let spanning = search::earliest_line(trials, &fits, usable, Line::spanning)?;
        // The local slope at the top of the measurements extends best: below it the peak can
        // be set by another phase, or by buffers that only small sizes allocate.
        let top = search::earliest_line(trials, &fits, usable, Line::near_top).unwrap_or(spanning);
        let cap = cuda_cap.filter(|&cap| memory.named_gpu && cap < top.predicted);
        let max = cap.unwrap_or(top.predicted);
        let allowed = search::allowed_peak(usable, settings.margin);
        let mut caveats: Vec<String> = cap.map(cuda_cap_caveat).into_iter().collect();
        if memory.named_gpu && !on_gpu {
            caveats.push(CPU_FOR_GPU.to_string());
        }
        Some(Plan {
            target: memory.name.clone(),
            capacity_bytes: memory.bytes,
            assumptions,
            usable_bytes: usable,
            sizes: Some(Sizes {
                max,
                power_of_two: search::largest_power_of_two_at_most(max),
                recommended: Some(top.line.meets(allowed).min(max)).filter(|&r| r > 0),
            }),
            peak_bytes: Some(top.line.at(max).max(0.0) as u64),
            range: Some([
                top.predicted.min(spanning.predicted),
                top.predicted.max(spanning.predicted),
            ]),
            fitted_through: crate::trial::phase_of(trials, top.through),
            calibrated_by: None,
            caveat: (!caveats.is_empty()).then(|| caveats.join("; ")),
        })
    }

    /// The plan for `memory` from `report`: from the estimate its search was seeded with,
    /// calibrated by its trials ([`from_model`](Self::from_model)), else from its measured
    /// lines ([`from_lines`](Self::from_lines)).
    pub fn for_report(report: &Report, memory: &Memory, cuda_cap: Option<usize>) -> Option<Plan> {
        let device = (report.device.kind, report.device.overhead_bytes);
        let (trials, settings) = (&report.trials, &report.settings);
        report
            .seeding
            .as_ref()
            .and_then(|s| Plan::from_model(&s.model, trials, settings, device, memory, cuda_cap))
            .or_else(|| Plan::from_lines(trials, settings, device, memory, cuda_cap))
    }

    /// The plan for `memory` from the estimate a search was seeded with (`model`),
    /// calibrated by the search's `trials`: scaled phase by phase to the complete trial
    /// nearest the memory's capacity (see [`StepModel::calibrated_by`]). The range spans
    /// what the estimate gives calibrated by each complete trial at least half the largest
    /// one's size, scaled or shifted to it (a miscounted term per sample, or a fixed one):
    /// where they agree the range is narrow, where the trials and the estimate disagree it
    /// widens, and the caveat says by how much the estimate was off. `None` without a
    /// complete trial.
    pub fn from_model(
        model: &StepModel,
        trials: &[Trial],
        settings: &SearchSettings,
        device: (DeviceKind, Option<u64>),
        memory: &Memory,
        cuda_cap: Option<usize>,
    ) -> Option<Plan> {
        let (on_gpu, assumptions, usable) = on_memory(memory, device);
        let (calibrated, calibration) = model.nearest_calibration(trials, usable);
        let calibration = calibration.filter(|c| c.complete)?;
        let predicted = calibrated.max_for(usable);
        let largest = trials
            .iter()
            .filter(|t| search::Measured::peak_is_complete(*t))
            .map(|t| t.batch_size)
            .max()?;
        let near_top = trials
            .iter()
            .filter(|t| search::Measured::peak_is_complete(*t) && 2 * t.batch_size >= largest);
        let maxima: Vec<usize> = near_top
            .flat_map(|t| {
                let scaled = model.calibrated_by(t).map(|(m, _)| m);
                [scaled, model.shifted_by(t)]
            })
            .flatten()
            .filter_map(|m| m.max_for(usable))
            .chain(predicted)
            .collect();
        let range = maxima
            .iter()
            .min()
            .zip(maxima.iter().max())
            .map(|(&lo, &hi)| [lo, hi]);
        let cap = cuda_cap.filter(|&cap| memory.named_gpu && predicted.is_some_and(|p| cap < p));
        let allowed = search::allowed_peak(usable, settings.margin);
        let mut caveats: Vec<String> = cap.map(cuda_cap_caveat).into_iter().collect();
        let off = calibration.relative_error();
        if off.abs() > ESTIMATE_AGREES {
            caveats.push(format!(
                "the estimate from shapes was {:.1}% {} the peak measured at batch size {}; \
                 the plan scales it to the measurement",
                100.0 * off.abs(),
                if off > 0.0 { "above" } else { "below" },
                calibration.batch_size
            ));
        }
        if memory.named_gpu && !on_gpu {
            caveats.push(CPU_FOR_GPU.to_string());
        }
        let sizes = predicted.map(|p| {
            let max = cap.unwrap_or(p);
            Sizes {
                max,
                power_of_two: search::largest_power_of_two_at_most(max),
                recommended: calibrated
                    .max_for(allowed)
                    .map(|r| r.min(max))
                    .filter(|&r| r > 0),
            }
        });
        Some(Plan {
            target: memory.name.clone(),
            capacity_bytes: memory.bytes,
            assumptions,
            usable_bytes: usable,
            peak_bytes: sizes
                .filter(|s| s.max > 0)
                .map(|s| calibrated.peak_at(s.max)),
            sizes,
            range,
            fitted_through: None,
            calibrated_by: Some(calibration.batch_size),
            caveat: (!caveats.is_empty()).then(|| caveats.join("; ")),
        })
    }

    /// The plan for `memory` from the estimate from shapes, with `margin` left free; a named
    /// GPU's plan takes the assumed CUDA overhead off first and stops at `cuda_cap`.
    pub fn from_estimate(
        estimate: &Estimate,
        memory: &Memory,
        margin: f64,
        cuda_cap: Option<usize>,
    ) -> Plan {
        let assumptions = overhead(memory, None);
        let usable = usable(memory, &assumptions);
        let mut sizes = estimate.sizes_for(usable, margin);
        let mut caveats = Vec::new();
        let cap = cuda_cap.filter(|_| memory.named_gpu);
        if let (Some(s), Some(cap)) = (sizes.as_mut(), cap) {
            if s.max > cap {
                caveats.push(cuda_cap_caveat(cap));
                *s = Sizes {
                    max: cap,
                    power_of_two: search::largest_power_of_two_at_most(cap),
                    recommended: s.recommended.map(|r| r.min(cap)),
                };
            }
        }
        if memory.named_gpu {
            caveats.push(
                "counts candle's tensors, not the pool's 2 MiB granularity or workspaces cuBLAS \
                 and cuDNN keep beyond the assumed overhead"
                    .into(),
            );
        }
        Plan {
            target: memory.name.clone(),
            capacity_bytes: memory.bytes,
            assumptions,
            usable_bytes: usable,
            peak_bytes: sizes
                .filter(|s| s.max > 0)
                .map(|s| estimate.peak(s.max).peak_bytes),
            sizes,
            range: None,
            fitted_through: None,
            calibrated_by: None,
            caveat: (!caveats.is_empty()).then(|| caveats.join("; ")),
        }
    }

    /// The estimate's JSON spelling of this plan: its sizes under `sizes`, `null` when
    /// nothing bounds the batch size (`maxbatch estimate --json`).
    pub fn nested(&self) -> impl Serialize + '_ {
        NestedPlan {
            target: &self.target,
            capacity_bytes: self.capacity_bytes,
            assumptions: &self.assumptions,
            usable_bytes: self.usable_bytes,
            sizes: self.sizes.map(|sizes| NestedSizes {
                sizes,
                predicted_peak_bytes: self.peak_bytes,
            }),
            caveat: &self.caveat,
        }
    }
}

/// For a plan of `memory` from a search on `(device_kind, overhead_bytes)`: whether the
/// search ran on a GPU, what comes off the memory first ([`overhead`]), and what is left.
fn on_memory(
    memory: &Memory,
    (device_kind, overhead_bytes): (DeviceKind, Option<u64>),
) -> (bool, Vec<Assumption>, u64) {
    let on_gpu = device_kind == DeviceKind::Cuda;
    let assumptions = overhead(memory, overhead_bytes.filter(|_| on_gpu));
    let usable = usable(memory, &assumptions);
    (on_gpu, assumptions, usable)
}

/// The capacity less what the assumptions take.
fn usable(memory: &Memory, assumptions: &[Assumption]) -> u64 {
    memory
        .bytes
        .saturating_sub(assumptions.iter().map(|a| a.bytes).sum())
}

/// A search's plans (`--plan-for`) keep their sizes flat beside the rest.
impl Serialize for Plan {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            target: &'a str,
            capacity_bytes: u64,
            assumptions: &'a [Assumption],
            usable_bytes: u64,
            #[serde(flatten, with = "crate::sizes::predicted_keys")]
            sizes: Sizes,
            predicted_range: Option<[usize; 2]>,
            predicted_peak_bytes: Option<u64>,
            fitted_through: Option<Phase>,
            #[serde(skip_serializing_if = "Option::is_none")]
            calibrated_by: Option<usize>,
            caveat: &'a Option<String>,
        }
        Flat {
            target: &self.target,
            capacity_bytes: self.capacity_bytes,
            assumptions: &self.assumptions,
            usable_bytes: self.usable_bytes,
            sizes: self.sizes.unwrap_or_default(),
            predicted_range: self.range,
            predicted_peak_bytes: self.peak_bytes,
            fitted_through: self.fitted_through,
            calibrated_by: self.calibrated_by,
            caveat: &self.caveat,
        }
        .serialize(serializer)
    }
}

#[derive(Serialize)]
struct NestedPlan<'a> {
    target: &'a str,
    capacity_bytes: u64,
    assumptions: &'a [Assumption],
    usable_bytes: u64,
    sizes: Option<NestedSizes>,
    caveat: &'a Option<String>,
}

#[derive(Serialize)]
struct NestedSizes {
    #[serde(flatten, with = "crate::sizes::predicted_keys")]
    sizes: Sizes,
    predicted_peak_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_a_gpu_name_or_a_size_and_anything_else_is_refused() {
        let all = Memory::parse_list("h100-80gb, 24GiB,L4").unwrap();
        assert_eq!(all[0].bytes, 80 << 30);
        assert!(all[0].named_gpu);
        assert_eq!(all[1].bytes, 24 << 30);
        assert!(!all[1].named_gpu);
        assert_eq!(all[2].name, "l4");
        let error = Memory::parse("h100").unwrap_err();
        assert!(error.contains("h100-80gb"), "{error}");
    }

    /// A search's trials at 100 MiB a sample above 1 GiB, exactly.
    fn trials() -> Vec<Trial> {
        let mut report = crate::report::tests::fixture("cpu", 6, Some(5));
        for t in report.trials.iter_mut() {
            t.peak_bytes = t
                .peak_bytes
                .map(|_| (1 << 30) + t.batch_size as u64 * (100 << 20));
            t.phase_peaks.clear();
        }
        report.trials
    }

    #[test]
    fn a_plan_extends_the_measured_line_and_labels_the_cuda_overhead() {
        let settings = SearchSettings::default();
        let plan = |memory: &str, cap| {
            let memory = Memory::parse(memory).unwrap();
            Plan::from_lines(&trials(), &settings, (DeviceKind::Cpu, None), &memory, cap).unwrap()
        };
        let four = plan("4GiB", None);
        let sizes = four.sizes.unwrap();
        assert_eq!(sizes.max, 30); // (4096 − 1024) / 100
        assert_eq!(four.range, Some([30, 30]));
        assert_eq!(sizes.power_of_two, 16);
        assert!(four.assumptions.is_empty() && four.caveat.is_none());
        // A named GPU planned from a CPU measurement: the assumed overhead comes off first.
        let gpu = plan("a100-40gb", None);
        assert_eq!(gpu.assumptions[0].bytes, ASSUMED_CUDA_OVERHEAD);
        assert!(!gpu.assumptions[0].measured);
        assert_eq!(gpu.usable_bytes, (40 << 30) - ASSUMED_CUDA_OVERHEAD);
        assert_eq!(gpu.sizes.unwrap().max, (40 * 1024 - 512 - 1024) / 100);
        assert!(gpu.caveat.is_some());
        // Where candle's CUDA kernels cannot index the tensors, a GPU's plan stops, and says
        // why; a capacity's does not.
        assert_eq!(plan("4GiB", Some(100)).sizes.unwrap().max, 30);
        let capped = plan("a100-40gb", Some(100));
        assert_eq!(capped.sizes.unwrap().max, 100);
        assert!(capped
            .caveat
            .as_deref()
            .unwrap()
            .starts_with("capped at 100"));
    }

    #[test]
    fn a_search_plan_is_flat_and_an_estimate_plan_nests_its_sizes() {
        let memory = Memory::parse("4GiB").unwrap();
        let settings = SearchSettings::default();
        let plan =
            Plan::from_lines(&trials(), &settings, (DeviceKind::Cpu, None), &memory, None).unwrap();
        let flat = serde_json::to_value(&plan).unwrap();
        for key in [
            "target",
            "capacity_bytes",
            "assumptions",
            "usable_bytes",
            "predicted_max",
            "predicted_range",
            "predicted_power_of_two",
            "predicted_recommended",
            "predicted_peak_bytes",
            "fitted_through",
            "caveat",
        ] {
            assert!(flat.get(key).is_some(), "no {key} in {flat}");
        }
        let nested = serde_json::to_value(plan.nested()).unwrap();
        assert_eq!(nested["sizes"]["predicted_max"], 30);
        assert!(nested.get("predicted_max").is_none());
    }
}
