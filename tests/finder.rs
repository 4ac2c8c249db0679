//! The library call: a caller's own training step, measured by the CPU meter or by a
//! synthetic meter, through `Finder`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{mpsc, Mutex, OnceLock};

use candle_core::Device;
use maxbatch::device::{resolve, DeviceRequest, ResolvedDevice};
use maxbatch::memory::{Capacity, CapacitySource};
use maxbatch::models::ModelInfo;
use maxbatch::{
    CountingAllocator, CpuMeter, Error, Finder, MemoryMeter, Outcome, Phase, Silent, TrainStep,
};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator::new();

/// Runs `body` on the one thread every test that measures the process heap runs on, one
/// at a time. Not merely one at a time: a test thread that ran a matrix product (or made a
/// meter reserve its workspace) frees that 2 MiB buffer when it exits, after its test has
/// finished, and the next test's heap figures then moved under it (a budget computed 2 MiB
/// too high once made a search answer 42 instead of 40).
fn on_heap_thread<R: Send + 'static>(body: impl FnOnce() -> R + Send + 'static) -> R {
    type Job = Box<dyn FnOnce() + Send>;
    static JOBS: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        std::thread::spawn(move || receiver.into_iter().for_each(|job| job()));
        Mutex::new(sender)
    });
    let (done, result) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        let _ = done.send(outcome);
    });
    jobs.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .expect("the heap thread runs as long as the tests");
    match result.recv().expect("the heap thread answers every job") {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

const MIB: usize = 1 << 20;

/// The heap held once this thread and the thread pool hold their matrix-multiply
/// workspaces, which a CPU meter reserves (and every trial then finds held).
fn held_with_workspaces() -> u64 {
    CpuMeter::with_budget(1).unwrap();
    CountingAllocator::current_bytes()
}

fn cpu() -> ResolvedDevice {
    resolve(DeviceRequest::Cpu, false).unwrap()
}

fn model() -> ModelInfo {
    ModelInfo {
        name: "custom".into(),
        parameters: 0,
        input: "bytes".into(),
        summary: "a step that allocates 1 MiB per sample".into(),
        dtype: "u8".into(),
        ..ModelInfo::default()
    }
}

/// A training step's activations: 1 MiB per sample, allocated and freed.
fn allocate_per_sample(batch_size: usize) -> candle_core::Result<()> {
    let activations = std::hint::black_box(vec![1u8; batch_size * MIB]);
    drop(activations);
    Ok(())
}

#[test]
fn a_callers_closure_finds_the_exact_maximum_under_a_cpu_budget() {
    on_heap_thread(|| {
        let mut step = |batch_size: usize| allocate_per_sample(batch_size);
        let budget = held_with_workspaces() + 100 * MIB as u64 + MIB as u64 / 2;
        let mut meter = CpuMeter::with_budget(budget).unwrap();
        let report = Finder::on_resolved(cpu())
            .model(model())
            .dataset_size(10_000)
            .find_with(&mut step, &mut meter, &mut Silent)
            .unwrap();
        assert_eq!(report.sizes.max, 100);
        assert_eq!(report.sizes.power_of_two, 64);
        // The recommended size is exact too: it ran within 95% of the budget, and the size
        // above it, left to the line (each sample adds exactly 1 MiB here), is not.
        let allowed = budget as f64 * 0.95;
        let recommended = report.sizes.recommended.unwrap();
        let trial = report
            .trials
            .iter()
            .find(|t| t.batch_size == recommended && t.outcome == Outcome::Fits)
            .unwrap();
        let peak = trial.peak_bytes.unwrap() as f64;
        assert!(peak <= allowed, "{:?}", report.trials);
        assert!(peak + MIB as f64 > allowed, "{:?}", report.trials);
        assert!((90..=95).contains(&recommended), "{recommended}");
        assert_eq!(report.schedule[0].steps_per_epoch, 100);
    });
}

#[test]
fn a_soak_run_catches_memory_that_grows_from_step_to_step() {
    on_heap_thread(|| {
        // 1 MiB per sample, and from the `grow_from`-th call on, 2 MiB more kept after every
        // step: the growth a long run meets and a trial of one or two steps does not.
        let soak = |grow_from: usize| {
            let mut calls = 0;
            let mut kept: Vec<Vec<u8>> = Vec::new();
            let mut step = move |batch_size: usize| -> candle_core::Result<()> {
                calls += 1;
                allocate_per_sample(batch_size)?;
                if calls >= grow_from {
                    kept.push(std::hint::black_box(vec![1u8; 2 * MIB]));
                }
                Ok(())
            };
            let budget = held_with_workspaces() + 100 * MIB as u64 + MIB as u64 / 2;
            let mut meter = CpuMeter::with_budget(budget).unwrap();
            Finder::on_resolved(cpu())
                .model(model())
                .verify_steps(30)
                .find_with(&mut step, &mut meter, &mut Silent)
                .unwrap()
        };
        // No growth: 30 steps at the recommended size, every one peaking where the first did.
        let report = soak(usize::MAX);
        let v = report.verification.unwrap();
        assert!(v.passed, "{v:?}");
        assert_eq!(v.batch_size, report.sizes.recommended.unwrap());
        assert_eq!((v.steps_completed, v.step_peaks.len()), (30, 30));
        assert_eq!(v.growth_bytes(), Some(0), "{v:?}");
        // Growth from the soak's third step on (the search's trials made `searched` calls): the
        // soak fails at the step that crosses, with every peak so far, and names a smaller size
        // that passed.
        let searched: usize = report
            .trials
            .iter()
            .map(|t| t.steps + usize::from(t.outcome == Outcome::Oom))
            .sum();
        let report = soak(searched + 3);
        let recommended = report.sizes.recommended.unwrap();
        let v = report.verification.unwrap();
        assert!(!v.passed, "{v:?}");
        assert!(v.steps_completed < 30, "{v:?}");
        assert_eq!(v.step_peaks.len(), v.steps_completed + 1);
        assert!(v.growth_bytes().unwrap() >= 2 * MIB as i64, "{v:?}");
        let fallback = v.fallback_batch_size.unwrap();
        assert!(fallback < recommended);
        assert!(report
            .trials
            .iter()
            .any(|t| t.batch_size == fallback && t.outcome == Outcome::Fits));
    });
}

#[test]
fn an_over_budget_trial_stops_after_the_phase_that_crossed_it() {
    on_heap_thread(|| {
        struct Phased {
            updates: Rc<Cell<usize>>,
        }
        impl TrainStep for Phased {
            fn step(&mut self, batch_size: usize) -> candle_core::Result<()> {
                self.step_with_boundaries(batch_size, &mut |_| Ok(()))
            }
            fn step_with_boundaries(
                &mut self,
                batch_size: usize,
                boundary: &mut dyn FnMut(Phase) -> candle_core::Result<()>,
            ) -> candle_core::Result<()> {
                let activations = std::hint::black_box(vec![1u8; batch_size * MIB]);
                boundary(Phase::Forward)?;
                drop(activations);
                boundary(Phase::Backward)?;
                self.updates.set(self.updates.get() + 1);
                boundary(Phase::Update)
            }
        }

        let updates = Rc::new(Cell::new(0));
        let mut step = Phased {
            updates: updates.clone(),
        };
        let budget = held_with_workspaces() + 10 * MIB as u64;
        let mut meter = CpuMeter::with_budget(budget).unwrap();
        let trial = Finder::on_resolved(cpu())
            .model(model())
            .steps_per_trial(3)
            .check_with(&mut step, &mut meter, 64, &mut Silent)
            .unwrap();
        assert_eq!(trial.outcome, Outcome::Oom);
        assert_eq!(trial.stopped_after, Some(Phase::Forward));
        assert_eq!(trial.steps, 0);
        assert_eq!(
            updates.get(),
            0,
            "the update ran after the budget was crossed"
        );
        assert!(trial.peak_bytes.unwrap() > budget);

        let trial = Finder::on_resolved(cpu())
            .model(model())
            .steps_per_trial(3)
            .check_with(&mut step, &mut meter, 2, &mut Silent)
            .unwrap();
        assert_eq!((trial.outcome, trial.steps), (Outcome::Fits, 3));
        assert_eq!(updates.get(), 3);
    });
}

#[test]
fn an_error_that_is_not_out_of_memory_stops_the_search() {
    on_heap_thread(|| {
        let mut step = |batch_size: usize| -> candle_core::Result<()> {
            if batch_size == 8 {
                candle_core::bail!("shape mismatch in my model")
            }
            Ok(())
        };
        let mut meter = CpuMeter::with_budget(u64::MAX).unwrap();
        let err = Finder::on_resolved(cpu())
            .model(model())
            .strategy(maxbatch::search::Strategy::Doubling)
            .find_with(&mut step, &mut meter, &mut Silent)
            .unwrap_err();
        match &err {
            Error::Trial { batch_size, .. } => assert_eq!(*batch_size, 8),
            other => panic!("expected a trial error, got {other}"),
        }
        assert!(
            err.to_string().contains("shape mismatch in my model"),
            "{err}"
        );
        assert!(err.to_string().contains("not out of memory"), "{err}");
    });
}

/// A synthetic device: peak = fixed + per_sample × batch size, set by the step itself,
/// with a hard limit beyond which trials must not start.
struct LineMeter {
    peak: Rc<Cell<u64>>,
    capacity: u64,
    hard_limit: Option<u64>,
    total: Option<u64>,
    source: CapacitySource,
}

impl MemoryMeter for LineMeter {
    fn capacity(&self) -> Capacity {
        Capacity {
            bytes: self.capacity,
            source: self.source,
            is_budget: self.source != CapacitySource::Device,
        }
    }
    fn reset_peak(&mut self) -> candle_core::Result<()> {
        self.peak.set(0);
        Ok(())
    }
    fn peak_bytes(&mut self) -> candle_core::Result<u64> {
        Ok(self.peak.get())
    }
    fn current_bytes(&mut self) -> candle_core::Result<u64> {
        Ok(0)
    }
    fn hard_limit(&self) -> Option<u64> {
        self.hard_limit
    }
    fn total_bytes(&self) -> Option<u64> {
        self.total
    }
}

#[test]
fn sizes_predicted_past_the_machine_are_not_run() {
    let peak = Rc::new(Cell::new(0));
    let ran = Rc::new(Cell::new(Vec::new()));
    let (peak_in_step, ran_in_step) = (peak.clone(), ran.clone());
    let mut step = move |batch_size: usize| -> candle_core::Result<()> {
        peak_in_step.set(1000 + 100 * batch_size as u64);
        let mut sizes = ran_in_step.take();
        sizes.push(batch_size);
        ran_in_step.set(sizes);
        Ok(())
    };
    // The budget allows batch 40 (5,000 bytes); the guard's share of the machine's 4,375
    // bytes only 4,156 (batch 31).
    let mut meter = LineMeter {
        peak,
        capacity: 5_000,
        hard_limit: Some(4_375),
        total: None,
        source: CapacitySource::Flag,
    };
    let report = Finder::on_resolved(cpu())
        .model(model())
        .find_with(&mut step, &mut meter, &mut Silent)
        .unwrap();
    let guard = (4_375.0 * maxbatch::memory::cpu::GUARD_SHARE) as u64;
    let guarded_max = ((guard - 1000) / 100) as usize;
    assert_eq!(guarded_max, 31);
    assert_eq!(report.sizes.max, guarded_max);
    let predicted: Vec<usize> = report
        .trials
        .iter()
        .filter(|t| t.predicted)
        .map(|t| t.batch_size)
        .collect();
    assert!(!predicted.is_empty());
    let ran = ran.take();
    for b in &predicted {
        assert!(
            *b > guarded_max && !ran.contains(b),
            "{b} was predicted yet ran"
        );
    }
    assert!(
        ran.iter().all(|&b| 1000 + 100 * b as u64 <= guard),
        "{ran:?}"
    );
    assert!(report
        .trials
        .iter()
        .filter(|t| t.predicted)
        .all(|t| t.outcome == Outcome::Oom && t.peak_bytes.is_none()));
    // The size after the maximum was refused, not run: the report says so.
    assert_eq!(report.unmeasured_boundary, Some(guarded_max + 1));
}

#[test]
fn the_power_of_two_is_run_when_the_search_skipped_it() {
    on_heap_thread(|| {
        let mut step = |_: usize| -> candle_core::Result<()> { Ok(()) };
        let mut meter = CpuMeter::with_budget(u64::MAX).unwrap();
        let report = Finder::on_resolved(cpu())
            .model(model())
            .strategy(maxbatch::search::Strategy::Doubling)
            .start(3)
            .max_batch(40)
            .find_with(&mut step, &mut meter, &mut Silent)
            .unwrap();
        assert_eq!(report.sizes.max, 40);
        assert_eq!(report.sizes.power_of_two, 32);
        assert_eq!(
            report
                .trials
                .iter()
                .map(|t| t.batch_size)
                .collect::<Vec<_>>(),
            vec![3, 6, 12, 24, 40, 32]
        );
    });
}

#[test]
fn a_panicking_step_is_an_error_not_out_of_memory() {
    on_heap_thread(|| {
        let mut step = |batch_size: usize| -> candle_core::Result<()> {
            if batch_size >= 4 {
                panic!("index out of bounds in my data loader");
            }
            Ok(())
        };
        let err = Finder::on(&candle_core::Device::Cpu)
            .budget(u64::MAX)
            .strategy(maxbatch::search::Strategy::Doubling)
            .find(&mut step)
            .unwrap_err();
        match &err {
            Error::Trial { batch_size, .. } => assert_eq!(*batch_size, 4),
            other => panic!("expected a trial error, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("panicked: index out of bounds in my data loader"),
            "{text}"
        );
        assert!(text.contains("not out of memory"), "{text}");
    });
}

#[test]
fn the_device_level_call_takes_a_closure_and_reports_like_the_cli() {
    on_heap_thread(|| {
        let mut step = |batch_size: usize| allocate_per_sample(batch_size);
        let budget = held_with_workspaces() + 40 * MIB as u64 + MIB as u64 / 2;
        let report = Finder::on(&candle_core::Device::Cpu)
            .budget(budget)
            .dataset_size(1_000)
            .epochs(2)
            .find(&mut step)
            .unwrap();
        assert_eq!(report.sizes.max, 40);
        assert_eq!(report.device.kind, maxbatch::device::DeviceKind::Cpu);
        assert_eq!(report.model.name, "your model");
        assert_eq!(report.schedule[0].total_steps, 2 * 25);
        let trial = Finder::on(&candle_core::Device::Cpu)
            .budget(budget)
            .check(&mut step, 41)
            .unwrap();
        assert_eq!(trial.outcome, Outcome::Oom);
    });
}

#[test]
fn a_cache_key_makes_the_second_call_free() {
    on_heap_thread(|| {
        let dir = std::env::temp_dir().join(format!("maxbatch-lib-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::env::set_var("MAXBATCH_CACHE", &dir);
        let calls = Cell::new(0);
        let mut step = |batch_size: usize| -> candle_core::Result<()> {
            calls.set(calls.get() + 1);
            allocate_per_sample(batch_size)
        };
        let budget = held_with_workspaces() + 20 * MIB as u64 + MIB as u64 / 2;
        let finder = || {
            Finder::on(&candle_core::Device::Cpu)
                .budget(budget)
                .cache_key("one MiB per sample, v1")
        };
        let first = finder().find(&mut step).unwrap();
        let ran = calls.get();
        assert!(ran > 0);
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(files, 1, "one answer stored in {}", dir.display());
        let second = finder().find(&mut step).unwrap();
        assert_eq!(calls.get(), ran, "the second call ran trials");
        assert!(!first.from_cache && second.from_cache);
        assert_eq!(
            first,
            maxbatch::Report {
                from_cache: false,
                ..second.clone()
            }
        );
        assert_eq!(second.sizes.max, 20);
        std::env::remove_var("MAXBATCH_CACHE");
        std::fs::remove_dir_all(&dir).ok();
    });
}

#[test]
fn the_cache_key_sees_a_cuda_memory_cap_and_leaves_the_dataset_out() {
    // A device with its own memory (16 GiB) under a --memory cap: the cap decides the answer.
    let meter = |capacity: u64, source| LineMeter {
        peak: Rc::new(Cell::new(0)),
        capacity,
        hard_limit: None,
        total: Some(16 << 30),
        source,
    };
    let dir = std::env::temp_dir().join("maxbatch-key-test");
    let finder = Finder::on(&candle_core::Device::Cpu).cache_in(
        maxbatch::cache::Cache::at(&dir),
        "my model",
        maxbatch::cache::CacheUse::Answer,
    );
    let key = |f: &Finder, m: &LineMeter| f.cached("search", m).unwrap().1;
    let capped = key(&finder, &meter(8 << 30, CapacitySource::Flag));
    let other_cap = key(&finder, &meter(4 << 30, CapacitySource::Flag));
    let uncapped = key(&finder, &meter(15 << 30, CapacitySource::Device));
    assert_ne!(capped, other_cap);
    assert_ne!(capped, uncapped);
    // The free memory at start varies from run to run; the device's total does not.
    assert_eq!(
        uncapped,
        key(&finder, &meter(14 << 30, CapacitySource::Device))
    );
    // Epochs only change the schedule: the same key. A plan for accumulation is another one.
    let epochs = finder.clone().epochs(5);
    assert_eq!(capped, key(&epochs, &meter(8 << 30, CapacitySource::Flag)));
    let accumulate = finder.clone().accumulate(256, 4, None);
    assert_ne!(
        capped,
        key(&accumulate, &meter(8 << 30, CapacitySource::Flag))
    );
}

/// A candle user's model: a VarMap, two linear layers, AdamW, `backward_step`.
struct Regression {
    varmap: candle_nn::VarMap,
    first: candle_nn::Linear,
    second: candle_nn::Linear,
}

impl Regression {
    fn new() -> Self {
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(
            &varmap,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        );
        let first = candle_nn::linear(64, 256, vb.pp("first")).unwrap();
        let second = candle_nn::linear(256, 1, vb.pp("second")).unwrap();
        Self {
            varmap,
            first,
            second,
        }
    }

    fn loss(&self, inputs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        use candle_core::Module;
        let hidden = self.first.forward(inputs)?.relu()?;
        let out = self.second.forward(&hidden)?;
        out.sqr()?.mean_all()
    }
}

#[test]
fn a_varmap_model_is_described_counted_alone_and_left_as_it_was() {
    use candle_nn::Optimizer;
    on_heap_thread(|| {
        let model = Regression::new();
        let data = candle_core::Tensor::ones((4096, 64), candle_core::DType::F32, &Device::Cpu)
            .unwrap()
            .affine(0.01, 0.5)
            .unwrap(); // 1 MiB of "dataset", held by the program, not the model
        let evaluate = || model.loss(&data).unwrap().to_scalar::<f32>().unwrap();
        let before = evaluate();
        let mut optimizer = candle_nn::AdamW::new(
            model.varmap.all_vars(),
            candle_nn::ParamsAdamW {
                lr: 0.05,
                ..Default::default()
            },
        )
        .unwrap();
        let forwards = Cell::new(0);
        let updates = Cell::new(0);
        let mut step = maxbatch::phased(|batch_size, phases| {
            let batch = data.narrow(0, 0, batch_size.min(4096))?;
            let loss = model.loss(&batch)?;
            forwards.set(forwards.get() + 1);
            phases.after_forward()?;
            optimizer.backward_step(&loss)?;
            updates.set(updates.get() + 1);
            Ok(())
        });
        let trials = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = trials.clone();
        // What a trial counts as held: the weights, AdamW's moments, the workspaces.
        CpuMeter::with_budget(1).unwrap();
        let weights_and_state = 16_897 * 4 * 3;
        let budget = weights_and_state + CpuMeter::workspace_bytes() + 4 * MIB as u64;
        let report = Finder::on(&Device::Cpu)
            .budget(budget)
            .varmap(&model.varmap)
            .max_batch(4096)
            .on_trial(move |_| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .find(&mut step)
            .unwrap();
        // Described from the VarMap: 64·256 + 256 + 256 + 1 parameters, in f32.
        assert_eq!(report.model.parameters, 16_897);
        assert_eq!(report.model.dtype, "f32");
        // The weights, AdamW's moments and the workspaces are what a trial counts as held, not
        // the dataset or anything else the program holds.
        assert_eq!(
            report.device.baseline_bytes,
            Some(weights_and_state + CpuMeter::workspace_bytes())
        );
        // Every trial reached the callback.
        assert_eq!(
            trials.load(std::sync::atomic::Ordering::SeqCst),
            report.trials.len()
        );
        // The trials trained the weights; the search put them back.
        assert!(updates.get() > 0);
        assert_eq!(evaluate(), before, "the search left the weights changed");

        // A size whose forward pass alone passes the budget stops there: no backward, no update.
        let (forwards_then, updates_then) = (forwards.get(), updates.get());
        let trial = Finder::on(&Device::Cpu)
            .budget(budget)
            .varmap(&model.varmap)
            .check(&mut step, 4096)
            .unwrap();
        assert_eq!(trial.stopped_after, Some(Phase::Forward), "{trial:?}");
        assert_eq!(forwards.get(), forwards_then + 1);
        assert_eq!(
            updates.get(),
            updates_then,
            "the update ran after the budget was crossed"
        );
        assert_eq!(evaluate(), before);
    });
}

#[test]
fn an_evaluation_closure_is_searched_exactly_and_reported_as_one() {
    on_heap_thread(|| {
        use maxbatch::{evaluation, StepMode};
        // A forward pass that holds 1 MiB per sample at its peak, and a training step over
        // the same samples that keeps three times as much for its backward pass.
        let budget = held_with_workspaces() + 60 * MIB as u64 + MIB as u64 / 2;
        let mut meter = CpuMeter::with_budget(budget).unwrap();
        let report = Finder::on_resolved(cpu())
            .model(model())
            .mode(StepMode::EVAL)
            .find_with(
                &mut evaluation(allocate_per_sample),
                &mut meter,
                &mut Silent,
            )
            .unwrap();
        assert_eq!(report.sizes.max, 60);
        assert_eq!(report.settings.mode, StepMode::EVAL);
        let ran = |b: usize, outcome: Outcome| {
            report
                .trials
                .iter()
                .any(|t| t.batch_size == b && t.outcome == outcome)
        };
        assert!(
            ran(60, Outcome::Fits) && ran(61, Outcome::Oom),
            "{:?}",
            report.trials
        );
        // Its one boundary is the forward pass, and the report says it was an evaluation.
        assert!(report
            .trials
            .iter()
            .filter(|t| t.outcome == Outcome::Fits)
            .all(|t| {
                t.phase_peaks.iter().map(|p| p.phase).collect::<Vec<_>>() == [Phase::Forward]
            }));
        let text = serde_json::to_value(&report).unwrap();
        assert_eq!(
            text["settings"]["mode"]["eval"]["beside_training"],
            serde_json::Value::Null
        );
        // The same budget trains a third as many.
        let mut meter = CpuMeter::with_budget(budget).unwrap();
        let training = Finder::on_resolved(cpu())
            .model(model())
            .find_with(
                &mut |b: usize| allocate_per_sample(3 * b),
                &mut meter,
                &mut Silent,
            )
            .unwrap();
        assert_eq!(training.sizes.max, 20);
        assert_eq!(training.settings.mode, StepMode::Train);
    });
}
