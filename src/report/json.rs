//! The report as one JSON object (`--json`). Scripts rely on its keys; see README.

use super::{DataParallel, Report};

/// The report as pretty-printed JSON.
pub fn render(report: &Report) -> String {
    // A Report holds only strings, numbers, booleans and options: serializing cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Several devices' reports and their data-parallel minimum, as pretty-printed JSON.
pub fn render_devices(reports: &[Report]) -> String {
    serde_json::to_string_pretty(&DataParallel::new(reports))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
