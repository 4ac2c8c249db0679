//! The hidden `trial` subcommand: one trial for an `--isolate` parent, printed as JSON with
//! the capacity it was measured against; exit 0 whatever its outcome (2 on an error).

use std::process::ExitCode;

use anyhow::Result;
use maxbatch::isolate::ChildTrial;
use maxbatch::{device, Silent};

use crate::resolve::Check;
use crate::session::Session;

/// Runs the trial.
pub fn run(job: &Check) -> Result<ExitCode> {
    if job
        .trials
        .abort_from
        .is_some_and(|from| job.batch_size >= from)
    {
        // The tests' stand-in for a real allocation failure: print "memory allocation of
        // N bytes failed" and abort.
        std::alloc::handle_alloc_error(std::alloc::Layout::new::<[u8; 4096]>());
    }
    let device = device::resolve(job.trials.devices[0], false)?;
    let mut session = Session::new(&job.trials, &job.trials.model, device)?;
    let finder = session
        .uncached_finder()
        .settings(session.settings_for_device(&job.trials.settings())?);
    let trial = session.check(&finder, job.batch_size, &mut Silent)?;
    let child = ChildTrial {
        trial,
        capacity: session.meter.capacity(),
        overhead_bytes: session.meter.outside_bytes()?,
        meter: session.meter.describe().to_string(),
    };
    println!("{}", serde_json::to_string(&child)?);
    Ok(ExitCode::SUCCESS)
}
