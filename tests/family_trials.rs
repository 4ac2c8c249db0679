//! One CPU trial at batch size 1 per model family, under a budget, through the finder's
//! pre-flight check. Its own test binary: the CPU meter counts the whole process's heap,
//! so nothing else may allocate while it measures.

use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use maxbatch::memory::stop::FAR_PAST;
use maxbatch::models::{ModelOptions, ModelSource, ModelSpec};
use maxbatch::trial::BACKWARD_PART;
use maxbatch::{
    CountingAllocator, CpuMeter, Finder, OptimizerKind, Outcome, Phase, Silent, Workload,
};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::new();

#[test]
fn one_trial_per_family_fits_a_budget_and_is_measured() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let specs = [
        ModelSpec::preset("mlp").unwrap(),
        ModelSpec::preset("transformer-tiny").unwrap(),
        ModelSpec::preset("cnn").unwrap(),
        ModelSpec::load(&ModelSource::Config(fixtures.join("tiny-qwen2.json"))).unwrap(),
        ModelSpec::load(&ModelSource::Config(fixtures.join("tiny-llama.json"))).unwrap(),
        ModelSpec::load(&ModelSource::Config(fixtures.join("tiny-gpt2.json"))).unwrap(),
    ];
    let options = ModelOptions {
        seq_len: Some(16),
        image_size: Some(16),
        dtype: DType::F32,
        ..ModelOptions::default()
    };
    // The first meter makes the process hold the matrix-multiply workspaces: they are then
    // part of what every trial finds held, as they are of what `held` reads below.
    CpuMeter::with_budget(1).unwrap();
    for spec in specs {
        let mut workload =
            Workload::new(&spec, &options, OptimizerKind::AdamW, &Device::Cpu).unwrap();
        let held = CountingAllocator::current_bytes();
        let peak = fits_and_is_measured(&spec.name, &mut workload, held);
        rises_as_backward_step_does(&spec.name, &mut workload, peak - held);
        is_out_of_memory_below_its_peak(&spec.name, &mut workload, held, peak);
        stops_inside_the_backward_pass(&spec.name, &mut workload, held);
    }
}

/// Batch size 1 fits a budget far above what the model holds, and its two steps, phases and
/// parts are measured consistently. Returns the peak.
fn fits_and_is_measured(name: &str, workload: &mut Workload, held: u64) -> u64 {
    // The weights and AdamW's moments are held already; AdamW's step needs a transient
    // of 14 times the largest variable on top (docs/design.md).
    let budget = held + (1 << 30);
    let mut meter = CpuMeter::with_budget(budget).unwrap();
    let trial = Finder::on(&Device::Cpu)
        .check_with(workload, &mut meter, 1, &mut Silent)
        .unwrap();
    assert_eq!(trial.outcome, Outcome::Fits, "{name}: {trial:?}");
    let peak = trial.peak_bytes.unwrap();
    assert!(
        peak > held && peak <= budget,
        "{name}: peak {peak}, held {held}"
    );
    assert_eq!(trial.steps, 2);
    // The second step peaks exactly where the first did: the optimizer's state exists
    // before the first step and a step leaves nothing behind, which is why a CPU trial
    // of a built-in model is one step (docs/design.md).
    assert_eq!(
        trial.step_peaks,
        [peak, peak],
        "{name}: the steps peaked differently"
    );
    // The first step's peak at each boundary, in order, rising to at most the peak.
    let phases: Vec<Phase> = trial.phase_peaks.iter().map(|p| p.phase).collect();
    assert_eq!(phases, [Phase::Forward, Phase::Backward, Phase::Update]);
    let at: Vec<u64> = trial.phase_peaks.iter().map(|p| p.peak_bytes).collect();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]) && at[0] > held && at[2] <= peak,
        "{name}: {at:?}, peak {peak}"
    );
    // Where the first step held its bytes: the parts of the forward pass in order, then
    // the backward pass; together no more than the forward boundary's peak.
    let names: Vec<&str> = trial.held_by_part.iter().map(|p| p.part.as_str()).collect();
    assert_eq!(names.first(), Some(&"inputs"), "{name}: {names:?}");
    assert_eq!(names.last(), Some(&BACKWARD_PART), "{name}");
    assert!(names.contains(&"logits and loss"), "{name}: {names:?}");
    let forward: u64 = trial.held_by_part[..names.len() - 1]
        .iter()
        .map(|p| p.bytes)
        .sum();
    assert!(
        forward > 0 && held + forward <= at[0],
        "{name}: the parts hold {forward} above {held}; the forward peak is {}",
        at[0]
    );
    peak
}

/// The trial measures the loop candle users write, `opt.backward_step(&loss)`: the graph
/// alive through the update. The same step written that way by hand rises as far above
/// what it holds before it as the trial did.
fn rises_as_backward_step_does(name: &str, workload: &mut Workload, trial_rise: u64) {
    let mut optimizer = AdamW::new(workload.varmap().all_vars(), ParamsAdamW::default()).unwrap();
    let loss = workload.loss(1).unwrap();
    drop(loss); // one forward pass first, as the trial's first step had the batch's buffers
    let before = CountingAllocator::current_bytes();
    CountingAllocator::reset_peak();
    let loss = workload.loss(1).unwrap();
    optimizer.backward_step(&loss).unwrap();
    drop(loss);
    let hand_rise = CountingAllocator::peak_bytes() - before;
    let gap = trial_rise.abs_diff(hand_rise) as f64 / hand_rise as f64;
    assert!(
        gap < 0.02,
        "{name}: the trial rose {trial_rise} bytes, backward_step {hand_rise}"
    );
}

/// The same step under a budget below its measured peak is out of memory.
fn is_out_of_memory_below_its_peak(name: &str, workload: &mut Workload, held: u64, peak: u64) {
    let mut tight = CpuMeter::with_budget(held + (peak - held) / 2).unwrap();
    let trial = Finder::on(&Device::Cpu)
        .check_with(workload, &mut tight, 1, &mut Silent)
        .unwrap();
    assert_eq!(trial.outcome, Outcome::Oom, "{name}: {trial:?}");
}

/// A budget the forward pass stays under and the backward pass passes by far more than
/// FAR_PAST: the trial stops at a stop point inside the backward pass, its peak measured
/// past the budget, instead of finishing the pass. From batch size 16 on, doubled until the
/// activations outweigh what the process holds on this machine enough for the backward pass
/// to rise that far.
fn stops_inside_the_backward_pass(name: &str, workload: &mut Workload, held: u64) {
    let rises_far = |(forward, backward): (u64, u64)| {
        let budget = forward + (backward - forward) / 8;
        backward as f64 > budget as f64 * (1.0 + FAR_PAST) * 1.02
    };
    let mut boundaries = |batch: usize| {
        let mut roomy = CpuMeter::with_budget(held + (4 << 30)).unwrap();
        let trial = Finder::on(&Device::Cpu)
            .check_with(workload, &mut roomy, batch, &mut Silent)
            .unwrap();
        (
            trial.phase_peaks[0].peak_bytes,
            trial.phase_peaks[1].peak_bytes,
        )
    };
    let mut batch = 16;
    let (mut forward, mut backward) = boundaries(batch);
    while !rises_far((forward, backward)) && batch < 1024 {
        batch *= 2;
        (forward, backward) = boundaries(batch);
    }
    assert!(
        rises_far((forward, backward)),
        "{name}: the backward pass rises too little to test: {forward} then {backward}"
    );
    let budget = forward + (backward - forward) / 8;
    let mut meter = CpuMeter::with_budget(budget).unwrap();
    let trial = Finder::on(&Device::Cpu)
        .check_with(workload, &mut meter, batch, &mut Silent)
        .unwrap();
    assert_eq!(trial.outcome, Outcome::Oom, "{name}: {trial:?}");
    assert!(trial.peak_bytes.unwrap() > budget, "{name}: {trial:?}");
    assert_eq!(
        trial.detail.as_deref(),
        Some("stopped inside the backward pass of step 1: over capacity"),
        "{name}: {trial:?}"
    );
}
