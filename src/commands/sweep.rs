//! A sequence-length sweep (`--seq-len 128,256,512`): one search per length on one device,
//! the model built once, each length's first jump steered by the lengths measured before it.

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Result;
use maxbatch::sweep::{MeasuredLength, Sweep, SweepEntry};
use maxbatch::Workload;

use crate::progress::Progress;
use crate::resolve::Search;
use crate::session::{cached, open_devices, Session};
use crate::signals::stop_on_signals;

/// Runs the sweep.
pub fn run(job: &Search) -> Result<ExitCode> {
    let stop = stop_on_signals();
    let device = open_devices(&job.trials)?.remove(0);
    let mut built: Option<(Workload, u64)> = None;
    let mut measured: Vec<MeasuredLength> = Vec::new();
    let mut entries = Vec::new();
    for &seq_len in &job.trials.model.sweep {
        let model = job.trials.model.at_seq_len(seq_len);
        let mut session = Session::new(&job.trials, &model, device.clone())?;
        let mut settings = session.settings_for_device(&job.settings)?;
        settings.bytes_per_sample_hint = maxbatch::sweep::bytes_per_sample_hint(&measured, seq_len);
        if let Some(hint) = settings.bytes_per_sample_hint {
            tracing::info!(
                "{seq_len} tokens: first jump steered by about {} per sample",
                maxbatch::format::bytes(hint)
            );
        }
        let finder = session
            .finder()
            .settings(settings)
            .stop_when(stop.flag.clone());
        let key = finder.cached("search", session.meter.as_ref());
        let report = cached(&finder, key, || {
            let (mut workload, held) = match built.take() {
                Some((mut workload, held)) => {
                    workload.set_seq_len(seq_len)?;
                    (workload, held)
                }
                None => session.build()?,
            };
            let report = finder.clone().model_holds(held).find_with(
                &mut workload,
                session.meter.as_mut(),
                &mut Progress::new(job.trials.json),
            );
            built = Some((workload, held));
            Ok(report?)
        })
        .map_err(|e| session.explain(e))?;
        if let Some(model) = &report.memory_model {
            measured.push(MeasuredLength {
                seq_len,
                bytes_per_sample: model.bytes_per_sample,
            });
        }
        let interrupted = report.interrupted;
        entries.push(SweepEntry::new(seq_len, report));
        if interrupted {
            break;
        }
    }
    let sweep = Sweep { sweep: entries };
    if job.trials.json {
        let answer = crate::output::answer::SweepAnswer::of(&sweep);
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("\n{}", crate::output::tables::sweep(&sweep));
    }
    if sweep.sweep.iter().any(|e| e.report.interrupted) {
        return Ok(ExitCode::from(stop.exit_code.load(Ordering::SeqCst)));
    }
    Ok(ExitCode::SUCCESS)
}
