//! Stopping a search from outside: the first Ctrl-C or SIGTERM stops it after the running
//! trial (the report so far is printed), a second quits at once.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// How a stop request reached the process: the first SIGINT (Ctrl-C) or SIGTERM (how
/// batch schedulers stop a job) sets `flag`, and the search stops after the running trial;
/// `exit_code` is then 130 or 143, as a shell reports those signals. A second one quits at
/// once.
pub struct StopSignals {
    /// Set by the first signal: the search stops after the running trial.
    pub flag: Arc<AtomicBool>,
    /// 130 after SIGINT, 143 after SIGTERM.
    pub exit_code: Arc<AtomicU8>,
}

/// Installs the handlers (a thread that waits for the signals).
pub fn stop_on_signals() -> StopSignals {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = StopSignals {
        flag: Arc::new(AtomicBool::new(false)),
        exit_code: Arc::new(AtomicU8::new(130)),
    };
    let (flag, exit_code) = (stop.flag.clone(), stop.exit_code.clone());
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for signal in signals.forever() {
                    let code = if signal == SIGTERM { 143 } else { 130 };
                    if flag.swap(true, Ordering::SeqCst) {
                        std::process::exit(code.into());
                    }
                    exit_code.store(code, Ordering::SeqCst);
                    eprintln!(
                        "stopping after the running trial (send {} again to quit now)",
                        if signal == SIGTERM {
                            "SIGTERM"
                        } else {
                            "Ctrl-C"
                        }
                    );
                }
            });
        }
        Err(error) => tracing::warn!("Ctrl-C and SIGTERM will quit without a report: {error}"),
    }
    stop
}
