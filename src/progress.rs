//! Progress on stderr while trials run: one line per finished trial, and a spinner for
//! the running one when stderr is a terminal and the output is not JSON.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use maxbatch::report::text::trial_line;
use maxbatch::{Observer, Trial};

/// Shows each trial as it runs and finishes.
pub struct Progress {
    spinner: Option<ProgressBar>,
    trials: usize,
}

impl Progress {
    /// A spinner on a terminal unless `json`; plain lines otherwise.
    pub fn new(json: bool) -> Self {
        let spinner = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { spinner, trials: 0 }
    }

    fn line(&self, text: &str) {
        match &self.spinner {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Observer for Progress {
    fn trial_started(&mut self, batch_size: usize) {
        if let Some(bar) = &self.spinner {
            bar.set_message(format!(
                "trial {}: batch size {batch_size}",
                self.trials + 1
            ));
        }
    }

    fn trial_finished(&mut self, trial: &Trial) {
        self.trials += 1;
        self.line(&format!(
            "trial {:>2}: {}",
            self.trials,
            trial_line(trial).trim_end()
        ));
    }

    fn verification_started(&mut self, batch_size: usize, steps: usize) {
        if let Some(bar) = &self.spinner {
            bar.set_message(format!(
                "verification: {steps} steps at batch size {batch_size}"
            ));
        }
    }

    fn verification_finished(&mut self, trial: &Trial) {
        self.line(&format!(
            "verification ({} steps): {}",
            trial.steps,
            trial_line(trial).trim_end()
        ));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.spinner {
            bar.finish_and_clear();
        }
    }
}
