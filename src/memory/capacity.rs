//! [`Capacity`]: the memory a trial may use, and where that figure came from.

use serde::{Deserialize, Serialize};

/// Where a capacity figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacitySource {
    /// A budget given (the command line's `--memory`, the library's `Finder::budget`): a
    /// budget, not hardware.
    Flag,
    /// A share of the machine's available memory (`MemAvailable` in /proc/meminfo) at start.
    MemAvailable,
    /// A share of what the process's memory cgroup (a container's limit) allowed at start.
    Cgroup,
    /// The device's free memory after the warm-up step, plus what this process's memory
    /// pool holds.
    Device,
}

/// The memory a trial may use, and where that figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Bytes a trial's peak may reach and still fit.
    pub bytes: u64,
    /// Where `bytes` came from.
    pub source: CapacitySource,
    /// True when the capacity is a budget that maxbatch enforces (the CPU), not a limit
    /// that the hardware enforces.
    pub is_budget: bool,
}
