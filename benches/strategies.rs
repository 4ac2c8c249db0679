//! Search strategies side by side: ours (guided, seeded by an estimate, doubling) against faithful
//! re-implementations of PyTorch Lightning's batch-size finder (`power` and `binsearch`
//! modes: init 2, 3 steps a trial, 5% margin on binsearch's answer, max 8192) and Hugging
//! Face Accelerate's `find_executable_batch_size` (start 128, ×0.9 after each failure).
//!
//! Every strategy runs against the same probes: synthetic memory curves (linear with noise,
//! a bend, a step, a flaky size; see [`KINDS`]) for true maxima from 3 to 5000, with modelled step
//! times, and real CPU models (transformer-tiny, mlp) under several budgets, timed for real.
//! Per case and in total it prints trials, training steps, time, the time ratio to guided,
//! and whether each answer was exact and was executed. The seeded search is then given
//! estimates 10% and 30% off, and whole reports (search and finishing trials, through
//! `Finder`) are counted with and without the estimate.
//!
//!     cargo bench --bench strategies
//!
//! Steps are counted as started: a trial that fits runs all its steps, one that runs out of
//! memory fails in its first. A modelled step at batch size b takes 20 ms + 1 ms × b; a
//! failing one half that.

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::Instant;

use candle_core::Device;
use maxbatch::estimate::Estimate;
use maxbatch::models::{ModelOptions, ModelSpec};
use maxbatch::search::{self, Bounds, Fits, Measured, ModelLine, Purpose, StepModel};
use maxbatch::{trial, CountingAllocator, CpuMeter, Finder, OptimizerKind, Silent, Workload};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::new();

/// One trial as every strategy sees it.
#[derive(Debug, Clone)]
struct Tried {
    batch_size: usize,
    fits: bool,
    peak: Option<u64>,
    phase_peaks: Vec<u64>,
    complete: bool,
}

impl Fits for Tried {
    fn fits(&self) -> bool {
        self.fits
    }
}

impl Measured for Tried {
    fn batch_size(&self) -> usize {
        self.batch_size
    }
    fn peak(&self) -> Option<u64> {
        self.peak
    }
    fn phase_peaks(&self) -> Vec<u64> {
        self.phase_peaks.clone()
    }
    fn peak_is_complete(&self) -> bool {
        self.complete
    }
}

/// A probe that counts what it is asked: trials, steps started, seconds.
struct Ledger<'a> {
    run: Box<dyn FnMut(usize, usize, Purpose) -> (Tried, f64) + 'a>,
    trials: usize,
    steps: usize,
    seconds: f64,
    fitted: HashSet<usize>,
    sizes: Vec<(usize, bool)>,
}

impl<'a> Ledger<'a> {
    fn new(run: impl FnMut(usize, usize, Purpose) -> (Tried, f64) + 'a) -> Self {
        Self {
            run: Box::new(run),
            trials: 0,
            steps: 0,
            seconds: 0.0,
            fitted: HashSet::new(),
            sizes: Vec::new(),
        }
    }

    fn trial(&mut self, batch_size: usize, steps: usize) -> Tried {
        self.trial_for(batch_size, steps, Purpose::Measure)
    }

    fn trial_for(&mut self, batch_size: usize, steps: usize, purpose: Purpose) -> Tried {
        let (tried, seconds) = (self.run)(batch_size, steps, purpose);
        self.trials += 1;
        self.steps += if tried.fits { steps } else { 1 };
        self.seconds += seconds;
        if tried.fits {
            self.fitted.insert(batch_size);
        }
        self.sizes.push((batch_size, tried.fits));
        tried
    }
}

/// What one strategy answered.
#[derive(Debug, Clone, Copy)]
struct Answer {
    size: usize,
    trials: usize,
    steps: usize,
    seconds: f64,
    executed: bool,
    /// On the real models: the answer fit and the size after it did not, run again (not
    /// counted) in the process the strategy left behind. At a boundary a few KiB wide, what
    /// the process holds after one strategy's trials differs from after another's, so a
    /// strategy is exact when its own process agrees, not when its answer matches another's.
    verified: Option<bool>,
}

const STRATEGIES: [&str; 6] = [
    "guided",
    "seeded",
    "doubling",
    "lightning-binsearch",
    "lightning-power",
    "accelerate",
];

/// Runs strategy `name` (the seeded search with `estimate`) against `ledger`'s probe.
fn run_strategy(
    name: &str,
    ledger: &mut Ledger,
    capacity: u64,
    cap: usize,
    estimate: &StepModel,
) -> Answer {
    let size = match name {
        "guided" | "doubling" | "seeded" => {
            let bounds = Bounds {
                start: 1,
                max_batch: cap,
                bytes_per_sample_hint: None,
            };
            let cell = RefCell::new(&mut *ledger);
            let probe = |b: usize| Ok::<_, ()>(cell.borrow_mut().trial(b, 2));
            let found = match name {
                "guided" => search::guided(bounds, capacity, probe),
                "doubling" => search::doubling(bounds, probe),
                _ => search::seeded(bounds, capacity, estimate, |b, purpose| {
                    Ok::<_, ()>(cell.borrow_mut().trial_for(b, 2, purpose))
                }),
            };
            found.map(|f| f.max_batch_size).unwrap_or(0)
        }
        "lightning-binsearch" => lightning(ledger, true),
        "lightning-power" => lightning(ledger, false),
        "accelerate" => accelerate(ledger),
        _ => unreachable!(),
    };
    if std::env::var_os("BENCH_TRACE").is_some() {
        let sizes: Vec<String> = ledger
            .sizes
            .iter()
            .map(|(b, fits)| format!("{b}{}", if *fits { "" } else { "✗" }))
            .collect();
        eprintln!("{name}: {}", sizes.join(" "));
    }
    Answer {
        size,
        trials: ledger.trials,
        steps: ledger.steps,
        seconds: ledger.seconds,
        executed: ledger.fitted.contains(&size),
        verified: None,
    }
}

/// Lightning's `scale_batch_size` (tuner/batch_size_scaling.py): init 2, 3 steps a trial,
/// at most 25 trials, max 8192; binsearch returns its answer × (1 − 0.05).
fn lightning(ledger: &mut Ledger, binsearch: bool) -> usize {
    const STEPS: usize = 3;
    const MAX_TRIALS: usize = 25;
    const MAX_VAL: usize = 8192;
    let mut size = 2;
    if !binsearch {
        let mut last_ok = 0;
        for _ in 0..MAX_TRIALS {
            if !ledger.trial(size, STEPS).fits {
                break;
            }
            last_ok = size;
            if size * 2 > MAX_VAL {
                break;
            }
            size *= 2;
        }
        return last_ok;
    }
    let (mut low, mut high) = (1, None::<usize>);
    let mut count = 0;
    loop {
        let fits = ledger.trial(size, STEPS).fits;
        count += 1;
        if fits {
            low = size;
            if count >= MAX_TRIALS {
                break;
            }
            match high {
                Some(h) if h - low <= 1 => break,
                Some(h) => size = (h + low) / 2,
                None if size * 2 > MAX_VAL => break,
                None => size *= 2,
            }
        } else {
            high = Some(size);
            size = (size + low) / 2;
            if size <= low || count >= MAX_TRIALS {
                break;
            }
        }
    }
    ((low as f64) * (1.0 - 0.05)) as usize
}

/// Accelerate's `find_executable_batch_size`: start at 128, and after each failure retry
/// at ×0.9 until the training function runs.
fn accelerate(ledger: &mut Ledger) -> usize {
    let mut size: usize = 128;
    while size > 0 {
        if ledger.trial(size, 1).fits {
            return size;
        }
        size = (size as f64 * 0.9) as usize;
    }
    0
}

fn modelled_seconds(batch_size: usize, steps: usize, fits: bool) -> f64 {
    let step = 0.020 + 0.001 * batch_size as f64;
    if fits {
        step * steps as f64
    } else {
        step / 2.0
    }
}

/// The synthetic curves: peak = fixed + slope × batch with a noise of up to 2% of a sample;
/// "bend": the slope triples from half the maximum on (a second term overtaking the first,
/// placed where it hurts most); "step": a jump of 20 samples' worth from 60% of the maximum
/// on (an allocator or kernel switching to a larger workspace); "flaky": the linear curve
/// with the first trial in (max / 2, max] failing once.
const KINDS: [&str; 4] = ["linear+noise", "bend", "step", "flaky"];

/// A synthetic memory curve whose true maximum is `true_max` under the returned capacity,
/// and the estimate a model of its shapes would give: the line for "linear+noise" and
/// "flaky", both lines for "bend" (a second term overtaking the first is structure the
/// estimate counts), the line without the jump for "step" (an allocator or a kernel
/// switching workspaces is not in the shapes). What is held is the curve's fixed part.
fn curve(kind: &str, true_max: usize) -> (Box<dyn Fn(usize) -> u64>, u64, StepModel) {
    let fixed = 2_000_000_000u64;
    let slope = 40_000_000u64;
    let noise = move |b: usize| ((b as u64 * 7919) % 97) * slope / 5000; // < 2% of a sample
    let knee = (true_max / 2).max(1) as u64;
    let jump_at = (true_max * 3 / 5) as u64;
    let peak: Box<dyn Fn(usize) -> u64> = match kind {
        "bend" => Box::new(move |b| {
            let b = b as u64;
            if b <= knee {
                fixed + slope * b
            } else {
                fixed + slope * knee + 3 * slope * (b - knee)
            }
        }),
        "step" => Box::new(move |b| {
            let jump = if b as u64 > jump_at { 20 * slope } else { 0 };
            fixed + slope * b as u64 + noise(b) + jump
        }),
        _ => Box::new(move |b| fixed + slope * b as u64 + noise(b)),
    };
    let capacity = peak(true_max) + slope / 2;
    let line = |fixed: f64, per_sample: f64| ModelLine { fixed, per_sample };
    let mut lines = vec![line(fixed as f64, slope as f64)];
    if kind == "bend" {
        let (f, s, k) = (fixed as f64, slope as f64, knee as f64);
        lines.push(line(f - 2.0 * s * k, 3.0 * s));
    }
    let estimate = StepModel {
        held: fixed,
        phases: vec![lines],
    };
    (peak, capacity, estimate)
}

/// `estimate` with what each sample adds miscounted by `error` (0.1: 10% too much).
fn off_by(estimate: &StepModel, error: f64) -> StepModel {
    let held = estimate.held as f64;
    let lines = |lines: &Vec<ModelLine>| {
        lines
            .iter()
            .map(|l| ModelLine {
                fixed: held + (l.fixed - held) * (1.0 + error),
                per_sample: l.per_sample * (1.0 + error),
            })
            .collect()
    };
    StepModel {
        held: estimate.held,
        phases: estimate.phases.iter().map(lines).collect(),
    }
}

/// Every strategy on one synthetic case, the seeded search with `estimate_error`.
fn synthetic_case(kind: &str, true_max: usize, estimate_error: f64) -> Vec<Answer> {
    let (peak, capacity, estimate) = curve(kind, true_max);
    let estimate = off_by(&estimate, estimate_error);
    STRATEGIES
        .iter()
        .map(|name| {
            // The flaky size: the first trial in (true max / 2, true max] fails once, with
            // nothing measured (a transient failure, not memory).
            let mut flaked = kind != "flaky";
            let mut ledger = Ledger::new(|b, steps, purpose| {
                let p = peak(b);
                let mut fits = p <= capacity;
                let mut measured = Some(p);
                if !flaked && fits && b > true_max / 2 && true_max >= 4 {
                    flaked = true;
                    fits = false;
                    measured = None;
                }
                // A trial past the capacity stops at a stop point: its peak, a lower bound,
                // is 10% past the capacity when it measures, the capacity when it confirms.
                let stop = match purpose {
                    Purpose::Measure => capacity + capacity / 10,
                    Purpose::Confirm => capacity + 1,
                };
                let tried = Tried {
                    batch_size: b,
                    fits,
                    peak: measured.map(|p| if fits { p } else { p.min(stop) }),
                    phase_peaks: Vec::new(),
                    complete: fits,
                };
                (tried, modelled_seconds(b, steps, fits))
            });
            run_strategy(name, &mut ledger, capacity, 8192, &estimate)
        })
        .collect()
}

/// The options of `preset` in the real cases: 32 tokens for a transformer.
fn real_options(preset: &str) -> ModelOptions {
    ModelOptions {
        seq_len: preset.starts_with("transformer").then_some(32),
        ..ModelOptions::default()
    }
}

fn real_case(preset: &str, budget_mib: u64) -> (usize, Vec<Answer>) {
    let spec = ModelSpec::preset(preset).expect("preset");
    let options = real_options(preset);
    let build =
        || Workload::new(&spec, &options, OptimizerKind::AdamW, &Device::Cpu).expect("workload");
    let estimate = Estimate::new(&spec, &options, OptimizerKind::AdamW).expect("estimate");
    // One absolute capacity for every strategy: the model held, plus the budget.
    let capacity = {
        let _held = build();
        CountingAllocator::current_bytes() + (budget_mib << 20)
    };
    let answers: Vec<Answer> = STRATEGIES
        .iter()
        .map(|name| {
            let mut workload = build();
            let mut meter = CpuMeter::with_budget(capacity).expect("meter");
            let model = estimate.step_model(CountingAllocator::current_bytes());
            let mut ledger = Ledger::new(|b, steps, purpose| {
                let started = Instant::now();
                let trial =
                    trial::run_for(&mut workload, b, steps, &mut meter, purpose).expect("trial");
                let tried = Tried {
                    batch_size: b,
                    fits: trial.outcome == maxbatch::Outcome::Fits,
                    peak: trial.peak_bytes,
                    phase_peaks: Measured::phase_peaks(&trial),
                    complete: Measured::peak_is_complete(&trial),
                };
                (tried, started.elapsed().as_secs_f64())
            });
            let mut answer = run_strategy(name, &mut ledger, capacity, 8192, &model);
            let fits = |ledger: &mut Ledger, b: usize| (ledger.run)(b, 2, Purpose::Measure).0.fits;
            answer.verified = Some(
                answer.size > 0
                    && fits(&mut ledger, answer.size)
                    && (answer.size == 8192 || !fits(&mut ledger, answer.size + 1)),
            );
            answer
        })
        .collect();
    (answers[2].size, answers) // doubling's, to print: each strategy is verified on its own
}

/// One whole report through `Finder`, as the command line runs it (`--memory` the whole
/// heap's budget), seeded by the estimate or not: the search's trials, the report's, the
/// maximum and the wall time.
fn whole_report(preset: &str, budget_mib: u64, seeded: bool) -> Option<(usize, usize, usize, f64)> {
    let spec = ModelSpec::preset(preset).expect("preset");
    let options = real_options(preset);
    let mut workload =
        Workload::new(&spec, &options, OptimizerKind::AdamW, &Device::Cpu).expect("workload");
    let mut meter = CpuMeter::with_budget(budget_mib << 20).ok()?;
    let mut finder = Finder::on(&Device::Cpu);
    if seeded {
        finder = finder.estimate(Estimate::new(&spec, &options, OptimizerKind::AdamW).ok()?);
    }
    let started = Instant::now();
    let report = finder
        .find_with(&mut workload, &mut meter, &mut Silent)
        .ok()?;
    Some((
        report.search_trials,
        report.trials.len(),
        report.sizes.max,
        started.elapsed().as_secs_f64(),
    ))
}

fn print_case(label: &str, true_max: usize, answers: &[Answer], totals: &mut [Total]) {
    let guided = answers[0].seconds.max(1e-9);
    let mut row = format!("{label:<22}{true_max:>6}");
    for (answer, total) in answers.iter().zip(totals.iter_mut()) {
        let exact = answer.verified.unwrap_or(answer.size == true_max);
        row.push_str(&format!(
            " | {:>5}{}{} {:>2}t {:>3}s {:>5.2}x",
            answer.size,
            if exact { "=" } else { "≠" },
            if answer.executed { " " } else { "!" },
            answer.trials,
            answer.steps,
            answer.seconds / guided
        ));
        total.add(answer, exact);
    }
    println!("{row}");
}

#[derive(Default)]
struct Total {
    cases: usize,
    exact: usize,
    executed: usize,
    trials: usize,
    steps: usize,
    seconds: f64,
}

impl Total {
    fn add(&mut self, a: &Answer, exact: bool) {
        self.cases += 1;
        self.exact += usize::from(exact);
        self.executed += usize::from(a.executed);
        self.trials += a.trials;
        self.steps += a.steps;
        self.seconds += a.seconds;
    }
}

fn print_totals(title: &str, totals: &[Total]) {
    println!("\n{title}");
    println!("| strategy | exact | executed | mean trials | steps | time (s) | time / guided |");
    println!("|---|---|---|---|---|---|---|");
    let guided = totals[0].seconds.max(1e-9);
    for (name, t) in STRATEGIES.iter().zip(totals) {
        println!(
            "| {name} | {}/{} | {}/{} | {:.1} | {} | {:.2} | {:.2} |",
            t.exact,
            t.cases,
            t.executed,
            t.cases,
            t.trials as f64 / t.cases as f64,
            t.steps,
            t.seconds,
            t.seconds / guided
        );
    }
}

fn header() {
    let mut row = format!("{:<22}{:>6}", "case", "max");
    for name in STRATEGIES {
        row.push_str(&format!(" | {name:<21}"));
    }
    println!("{row}");
    println!("(answer, = exact / ≠ not, ! never executed; trials t; steps s; time / guided's)");
}

fn main() {
    let maxima = [3, 5, 10, 37, 100, 300, 1000, 2500, 5000];
    let mut synthetic: Vec<Total> = STRATEGIES.iter().map(|_| Total::default()).collect();
    println!("Synthetic memory curves, modelled step times");
    header();
    let mut by_kind = Vec::new();
    for kind in KINDS {
        let mut totals: Vec<Total> = STRATEGIES.iter().map(|_| Total::default()).collect();
        for &m in &maxima {
            let answers = synthetic_case(kind, m, 0.0);
            print_case(kind, m, &answers, &mut synthetic);
            for (answer, total) in answers.iter().zip(&mut totals) {
                total.add(answer, answer.size == m);
            }
        }
        by_kind.push((kind, totals));
    }
    let title = format!("Synthetic totals ({} cases)", KINDS.len() * maxima.len());
    print_totals(&title, &synthetic);
    println!("\nMean trials by curve");
    println!("| curve | {} |", STRATEGIES.join(" | "));
    println!("|---|{}", "---|".repeat(STRATEGIES.len()));
    for (kind, totals) in &by_kind {
        let means: Vec<String> = totals
            .iter()
            .map(|t| format!("{:.1}", t.trials as f64 / t.cases as f64))
            .collect();
        println!("| {kind} | {} |", means.join(" | "));
    }
    wrong_estimates(&maxima);

    let mut real: Vec<Total> = STRATEGIES.iter().map(|_| Total::default()).collect();
    println!(
        "\nReal CPU models: transformer-tiny (seq 32) and mlp, AdamW, budgets above their \
         weights; wall time"
    );
    header();
    let budgets = [96u64, 192, 384, 768];
    for preset in ["transformer-tiny", "mlp"] {
        for budget in budgets {
            let (true_max, answers) = real_case(preset, budget);
            let label = format!("{} {budget} MiB", preset.trim_start_matches("transformer-"));
            print_case(&label, true_max, &answers, &mut real);
        }
    }
    print_totals(
        &format!("Real CPU totals ({} cases)", 2 * budgets.len()),
        &real,
    );
    whole_reports(&budgets);
}

/// The seeded search given estimates that count each sample's bytes 30% and 10% short
/// and long, against the guided search, on every synthetic case.
fn wrong_estimates(maxima: &[usize]) {
    const ERRORS: [f64; 5] = [0.0, -0.3, -0.1, 0.1, 0.3];
    println!("\nThe seeded search with a wrong estimate (synthetic curves; each sample's bytes miscounted)");
    println!("| curve | guided | exact estimate | −30% | −10% | +10% | +30% | exact | most trials above guided |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let seeded = STRATEGIES.iter().position(|s| *s == "seeded").unwrap_or(1);
    for kind in KINDS {
        let mut trials = [0usize; ERRORS.len()];
        let (mut guided, mut exact, mut cases, mut worst) = (0, 0, 0, i64::MIN);
        for &m in maxima {
            for (i, &error) in ERRORS.iter().enumerate() {
                let answers = synthetic_case(kind, m, error);
                let ours = &answers[seeded];
                trials[i] += ours.trials;
                exact += usize::from(ours.size == m);
                cases += 1;
                worst = worst.max(ours.trials as i64 - answers[0].trials as i64);
                if i == 0 {
                    guided += answers[0].trials;
                }
            }
        }
        let mean = |t: usize| format!("{:.1}", t as f64 / maxima.len() as f64);
        let means: Vec<String> = trials.iter().map(|&t| mean(t)).collect();
        println!(
            "| {kind} | {} | {} | {exact}/{cases} | {worst:+} |",
            mean(guided),
            means.join(" | ")
        );
    }
}

/// Whole reports (search and finishing trials) through `Finder` with `--memory`-style
/// budgets, seeded by the estimate and not.
fn whole_reports(budgets: &[u64]) {
    println!("\nWhole reports through Finder, the budget the whole heap's (as --memory): trials of the search / of the report, wall time");
    println!("| case | max | guided | seeded | time seeded / guided |");
    println!("|---|---|---|---|---|");
    let (mut sums, mut cases) = ([0usize; 4], 0);
    for preset in ["mlp", "transformer-tiny"] {
        for &budget in budgets {
            let guided = whole_report(preset, budget, false);
            let seeded = whole_report(preset, budget, true);
            let (Some(g), Some(s)) = (guided, seeded) else {
                println!("| {preset} {budget} MiB | does not run | | | |");
                continue;
            };
            assert_eq!(g.2, s.2, "{preset} {budget} MiB: the maxima differ");
            println!(
                "| {preset} {budget} MiB | {} | {} / {} | {} / {} | {:.2} |",
                g.2,
                g.0,
                g.1,
                s.0,
                s.1,
                s.3 / g.3
            );
            for (sum, x) in sums.iter_mut().zip([g.0, g.1, s.0, s.1]) {
                *sum += x;
            }
            cases += 1;
        }
    }
    let mean = |x: usize| x as f64 / cases.max(1) as f64;
    println!(
        "| mean of {cases} | | {:.1} / {:.1} | {:.1} / {:.1} | |",
        mean(sums[0]),
        mean(sums[1]),
        mean(sums[2]),
        mean(sums[3])
    );
}
