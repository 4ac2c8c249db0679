//! After the search: the trials that make every reported size one that ran (the largest
//! power of two, the recommended size, the accumulation's micro-batch), the sizes of a
//! search that was stopped early, and the [`Report`] they all go into.

use crate::analysis;
use crate::error::{Error, Setting};
use crate::models::ModelInfo;
use crate::report::{DeviceInfo, Report, Seeding};
use crate::runner::TrialRunner;
use crate::schedule::{self, Accumulation, ScheduleRow};
use crate::search::{self, StepModel, Strategy};
use crate::settings::SearchSettings;
use crate::sizes::Sizes;
use crate::trial::{self, Outcome, Trial};
use crate::verification::Verification;

/// What the search and the trials after it established: the sizes a report gives (each
/// ran and fit), the accumulation that reaches the goal, the verification run.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The largest size that fit, the largest power of two at most it, the recommended.
    pub sizes: Sizes,
    /// True when the maximum is the cap: larger sizes were not tried.
    pub max_is_cap: bool,
    /// The gradient accumulation that reaches the goal, when one was asked for.
    pub accumulation: Option<Accumulation>,
    /// The verification run at the recommended size (else the maximum), when one was asked
    /// for.
    pub verification: Option<Verification>,
    /// The trials the search for the maximum ran.
    pub search_trials: usize,
    /// How the estimate seeded the search, when it did.
    pub seeding: Option<Seeding>,
}

/// What the search found: its answer, whether that is the cap, and how the estimate seeded
/// it (when it did).
#[derive(Debug, Clone)]
pub struct Searched {
    /// The largest size that fit.
    pub max: usize,
    /// True when the maximum is the cap.
    pub max_is_cap: bool,
    /// The seeding, its `recommended_corrections` still to count.
    pub seeding: Option<Seeding>,
}

/// Runs what the search may have skipped after it found `searched.max`: the largest power
/// of two, the recommended size (chosen by the seeding's model calibrated by the trials,
/// when there is one), the micro-batch. The trials run are added to `trials`.
pub fn finishing_trials(
    runner: &mut TrialRunner,
    settings: &SearchSettings,
    capacity: u64,
    searched: Searched,
    trials: &mut Vec<Trial>,
) -> Result<Finished, Error> {
    let Searched {
        max,
        max_is_cap,
        mut seeding,
    } = searched;
    let search_trials = trials.len();
    let power_of_two = largest_power_of_two(runner, max, trials)?;
    let model = seeding.as_ref().map(|s| &s.model);
    let (recommended, corrections) = recommended(runner, capacity, settings, model, trials)?;
    if let Some(seeding) = seeding.as_mut() {
        seeding.recommended_corrections = corrections;
    }
    let accumulation = match settings.accumulation {
        Some(goal) => {
            let micro = goal.micro_batch.unwrap_or_else(|| {
                search::largest_power_of_two_at_most(recommended.unwrap_or(max))
            });
            if micro > 0 && !runner.fits_or_run(micro, trials)? {
                return Err(Error::setting(
                    Setting::MicroBatch,
                    micro,
                    format!("$MicroBatch {micro} does not fit; choose a smaller one"),
                ));
            }
            Some(schedule::accumulation(
                goal.target_batch,
                goal.world_size,
                micro as u64,
                settings.dataset().as_ref(),
            ))
        }
        None => None,
    };
    let verification = match settings.verify_steps {
        0 => None,
        steps => {
            let size = recommended.unwrap_or(max);
            let run = runner
                .verify(size, steps)
                .map_err(|e| Error::trial(size, e))?;
            Some(Verification::from_trial(&run, steps, trials))
        }
    };
    Ok(Finished {
        sizes: Sizes {
            max,
            power_of_two,
            recommended,
        },
        max_is_cap,
        accumulation,
        verification,
        search_trials,
        seeding,
    })
}

/// The largest power of two ≤ `max` that ran and fit, running it when the search did not
/// (a start that is not a power of two skips them).
fn largest_power_of_two(
    runner: &mut TrialRunner,
    max: usize,
    trials: &mut Vec<Trial>,
) -> Result<usize, Error> {
    let mut candidate = search::largest_power_of_two_at_most(max);
    loop {
        if runner.fits_or_run(candidate, trials)? {
            return Ok(candidate);
        }
        if candidate == 1 {
            // Batch size `max` fit but 1 did not: the memory curve is not monotone.
            return Err(Error::setting(
                Setting::StepsPerTrial,
                max,
                format!(
                    "batch size {max} fit but batch size 1 did not; the measurements are \
                     inconsistent, rerun with more $StepsPerTrial"
                ),
            ));
        }
        candidate /= 2;
    }
}

/// The largest size whose peak leaves the margin of `capacity` free, searched between the
/// last size known within the margin and the first one known beyond it (the search's own
/// trials bracket it). With the seeding's model, the size the model calibrated by the
/// trials says meets the margin is run, and the size after it is left to the model; the
/// guided search does the same with its line. Either way one trial when the prediction is
/// right, and short of the exact answer only where it is off, which is the safe side for a
/// recommendation. The doubling search runs the size after its answer. Returns the size
/// and, with a model, the trials it took beyond the first (its corrections).
fn recommended(
    runner: &mut TrialRunner,
    capacity: u64,
    settings: &SearchSettings,
    model: Option<&StepModel>,
    trials: &mut Vec<Trial>,
) -> Result<(Option<usize>, Option<usize>), Error> {
    let allowed = search::allowed_peak(capacity, settings.margin);
    let within =
        |t: &Trial| t.outcome == Outcome::Fits && t.peak_bytes.is_some_and(|p| p <= allowed);
    let ran: Vec<(usize, bool)> = trials.iter().map(|t| (t.batch_size, within(t))).collect();
    let (good, bad) = search::margin_bracket(&ran);
    let bracket = search::Bracket {
        good,
        bad: Some(bad),
        cap: bad,
        bytes_per_sample_hint: None,
    };
    let before = trials.len();
    let found = match (settings.strategy, model) {
        (Strategy::Doubling, _) => {
            search::bisect(good, bad, &mut |b| runner.run(b), within, trials)
        }
        (Strategy::Seeded, Some(model)) => search::seeded_toward(
            bracket,
            search::Boundary::Predicted,
            allowed,
            model,
            &mut |b, purpose| runner.run_for(b, purpose),
            within,
            trials,
        ),
        (Strategy::Seeded | Strategy::Guided, _) => search::toward_threshold(
            bracket,
            search::Boundary::Predicted,
            allowed,
            &mut |b| runner.run(b),
            within,
            trials,
        ),
    }
    .map_err(|(batch_size, error)| Error::trial(batch_size, error))?;
    let corrections = model.map(|_| (trials.len() - before).saturating_sub(1));
    Ok(((found > 0).then_some(found), corrections))
}

/// The sizes of a search stopped early, from the trials that ran: the largest that fit,
/// the largest power of two that fit, the largest that left the margin free (0 or `None`
/// where none did).
pub fn partial_sizes(trials: &[Trial], capacity: u64, margin: f64) -> Finished {
    let largest = |keep: &dyn Fn(&Trial) -> bool| {
        trials
            .iter()
            .filter(|t| t.outcome == Outcome::Fits && keep(t))
            .map(|t| t.batch_size)
            .max()
    };
    let allowed = search::allowed_peak(capacity, margin);
    Finished {
        sizes: Sizes {
            max: largest(&|_| true).unwrap_or(0),
            power_of_two: largest(&|t| t.batch_size.is_power_of_two()).unwrap_or(0),
            recommended: largest(&|t| t.peak_bytes.is_some_and(|p| p <= allowed)),
        },
        max_is_cap: false,
        accumulation: None,
        verification: None,
        search_trials: trials.len(),
        seeding: None,
    }
}

/// The report of a search: its trials, the sizes, and what follows from them (the
/// schedule, the memory model, the throughput note). `interrupted` marks a search stopped
/// early, whose sizes are those verified so far.
pub fn report(
    model: ModelInfo,
    device: DeviceInfo,
    settings: SearchSettings,
    trials: Vec<Trial>,
    finished: Finished,
    interrupted: bool,
) -> Report {
    let capacity = device.capacity_bytes;
    let dataset = settings.dataset();
    let sizes = finished.sizes;
    let schedule = match &dataset {
        Some(d) if sizes.max > 0 => schedule_rows(d, &finished, &trials),
        _ => Vec::new(),
    };
    let (memory_model, throughput_note) = if interrupted {
        (None, None)
    } else {
        (
            analysis::memory_model(&trials, sizes.max, capacity, &model, settings.optimizer),
            analysis::throughput_note(
                &trials,
                sizes.max,
                &[sizes.power_of_two, sizes.recommended.unwrap_or(0)],
            ),
        )
    };
    let generation = analysis::generation(
        settings.mode,
        &model,
        &trials,
        sizes.max,
        memory_model.as_ref(),
    );
    let unmeasured_boundary = unmeasured_boundary(&trials, sizes.max);
    Report {
        model,
        device,
        settings,
        unmeasured_boundary,
        trials,
        sizes,
        max_is_cap: finished.max_is_cap,
        dataset,
        schedule,
        interrupted,
        from_cache: false,
        memory_model,
        throughput_note,
        generation,
        accumulation: finished.accumulation,
        verification: finished.verification,
        search_trials: finished.search_trials,
        seeding: finished.seeding,
    }
}

/// What `report` established, to build a report from again.
fn finished_of(report: &Report) -> Finished {
    Finished {
        sizes: report.sizes,
        max_is_cap: report.max_is_cap,
        accumulation: report.accumulation,
        verification: report.verification.clone(),
        search_trials: report.search_trials,
        seeding: report.seeding.clone(),
    }
}

/// `report` built again with `more` trials after its own (sizes another device's search
/// chose, run on this one before they are reported as fitting on every device).
pub fn extended(report: Report, more: Vec<Trial>) -> Report {
    let finished = finished_of(&report);
    let mut trials = report.trials;
    trials.extend(more);
    Report {
        from_cache: report.from_cache,
        ..self::report(
            report.model,
            report.device,
            report.settings,
            trials,
            finished,
            report.interrupted,
        )
    }
}

/// A cached report fitted to `settings`: the dataset, schedule and accumulation are
/// recomputed for its dataset size, epochs and drop-last (the trials do not depend on them),
/// and the report says it came from the cache.
pub fn rescheduled(cached: Report, settings: &SearchSettings) -> Report {
    let finished = Finished {
        accumulation: cached.accumulation.map(|a| {
            schedule::accumulation(
                a.target_batch,
                a.world_size,
                a.micro_batch,
                settings.dataset().as_ref(),
            )
        }),
        ..finished_of(&cached)
    };
    let settings = SearchSettings {
        max_batch: cached.settings.max_batch,
        ..settings.clone()
    };
    Report {
        from_cache: true,
        ..report(
            cached.model,
            cached.device,
            settings,
            cached.trials,
            finished,
            cached.interrupted,
        )
    }
}

/// The smallest size above `max` that was tried, when no trial there ran (the guard refused
/// it by prediction).
fn unmeasured_boundary(trials: &[Trial], max: usize) -> Option<usize> {
    let above = trials
        .iter()
        .map(|t| t.batch_size)
        .filter(|&b| b > max)
        .min()?;
    let at = |b: usize| trials.iter().filter(move |t| t.batch_size == b);
    at(above).all(|t| t.predicted).then_some(above)
}

/// The schedule at the reported sizes, timed by the trials that ran there.
fn schedule_rows(
    dataset: &schedule::Dataset,
    finished: &Finished,
    trials: &[Trial],
) -> Vec<ScheduleRow> {
    let sizes = &finished.sizes;
    let timed = |b: usize| trial::fitting_trial(trials, b).and_then(|t| t.step_seconds);
    let power_of_two = sizes.power_of_two.max(1);
    let mut rows = schedule::rows(
        dataset,
        &[
            ("max", Some(sizes.max), timed(sizes.max)),
            (
                "largest_power_of_two",
                Some(power_of_two),
                timed(power_of_two),
            ),
            (
                "recommended",
                sizes.recommended,
                sizes.recommended.and_then(timed),
            ),
        ],
        1,
    );
    rows.extend(
        finished
            .accumulation
            .as_ref()
            .and_then(|a| accumulation_row(a, timed(a.micro_batch as usize))),
    );
    rows
}

/// The accumulation's row: optimizer steps per epoch and in total at the global batch,
/// timed as accumulation steps × the micro-batch's measured seconds per step on one replica,
/// which assumes the replicas run in parallel with perfect scaling. `None` without a dataset.
fn accumulation_row(a: &Accumulation, micro_seconds: Option<f64>) -> Option<ScheduleRow> {
    let steps_per_epoch = a.optimizer_steps_per_epoch?;
    let total_steps = a.total_optimizer_steps?;
    let seconds_per_step = micro_seconds.map(|s| s * a.accumulation_steps as f64);
    Some(ScheduleRow {
        label: "accumulation".to_string(),
        batch_size: a.global_batch,
        steps_per_epoch,
        total_steps,
        seconds_per_step,
        epoch_seconds: seconds_per_step.map(|s| s * steps_per_epoch as f64),
        total_seconds: seconds_per_step.map(|s| s * total_steps as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accumulation_plan_gets_its_own_schedule_row() {
        // 50,000 samples, 3 epochs; micro-batch 32 × 2 accumulation steps × 4 replicas = 256.
        let dataset = schedule::Dataset {
            size: 50_000,
            epochs: 3,
            drop_last: false,
        };
        let plan = schedule::accumulation(256, 4, 32, Some(&dataset));
        let row = accumulation_row(&plan, Some(0.5)).unwrap();
        assert_eq!(row.batch_size, 256);
        assert_eq!(row.steps_per_epoch, 196); // ceil(50,000 / 256)
        assert_eq!(row.total_steps, 588);
        // Two micro-steps of 0.5 s per optimizer step on each replica, in parallel.
        assert_eq!(row.seconds_per_step, Some(1.0));
        assert_eq!(row.epoch_seconds, Some(196.0));
        assert_eq!(row.total_seconds, Some(588.0));
        let untimed = accumulation_row(&plan, None).unwrap();
        assert_eq!(untimed.epoch_seconds, None);
        let no_dataset = schedule::accumulation(256, 4, 32, None);
        assert_eq!(accumulation_row(&no_dataset, Some(0.5)), None);
    }
}
