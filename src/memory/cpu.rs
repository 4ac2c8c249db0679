//! The CPU meter: a memory budget, measured with the counting allocator.
//!
//! On the CPU an allocation failure aborts the process, so a trial cannot be allowed to
//! run out of real memory. Instead the CPU has a **budget** (the one given, or the
//! machine's available memory at start): a trial whose heap peak exceeds it is out of
//! memory. The peak is counted by [`CountingAllocator`], not read from the resident set
//! size, because glibc keeps freed pages and RSS overstates small trials.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::available::{machine_limit, MachineLimit};
use super::counting::CountingAllocator;
use super::{Capacity, CapacitySource, MemoryMeter};
use crate::error::Error;

/// The bytes of the matrix-multiply workspaces the meters made the process hold.
static WORKSPACES: AtomicU64 = AtomicU64::new(0);

/// True once [`keep_freed_memory`] told glibc to keep freed memory.
static FREED_MEMORY_KEPT: AtomicBool = AtomicBool::new(false);

/// Asks glibc to keep freed memory for reuse instead of handing every large block back to
/// the kernel: trials allocate and free the same large activations step after step, and
/// without this each one is a fresh `mmap` whose pages fault in again (a third of a CPU
/// search's time was system time). The heap is counted by the allocator, so the figures do
/// not change; the resident size stays at the peak. Call it before any trial (the binary
/// does, first thing); [`CpuMeter`] then also touches the memory the search's first trial
/// is predicted to use before timing it (see [`MemoryMeter::prepare`]). Does nothing
/// outside Linux with glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc malloc's tuning.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
        FREED_MEMORY_KEPT.store(true, Ordering::SeqCst);
    }
}

/// The share of the memory available at start that is the CPU's default budget: the rest is
/// headroom for a trial that crosses the budget in the middle of a phase (it is only stopped
/// at the phase's end).
pub const AVAILABLE_SHARE: f64 = 0.8;

/// The share of the memory available at start beyond which a trial is not started: the guard
/// against aborting the process. Well above [`AVAILABLE_SHARE`], so that the sizes around the
/// default budget's answer (the maximum and the size after it) run and are measured; the guard
/// only stops sizes whose pessimistic prediction is far past the budget.
pub const GUARD_SHARE: f64 = 0.95;
/// Measures CPU trials against a budget with [`CountingAllocator`].
#[derive(Debug, Clone)]
pub struct CpuMeter {
    capacity: Capacity,
    machine_limit: Option<MachineLimit>,
    reference: Option<u64>,
    own_bytes: u64,
}

impl CpuMeter {
    /// A meter whose capacity is `budget` bytes (the `--memory` flag).
    ///
    /// Fails when [`CountingAllocator`] is not the global allocator.
    pub fn with_budget(budget: u64) -> Result<Self, Error> {
        ensure_installed()?;
        let own_bytes = reserve_matmul_workspace();
        Ok(Self {
            capacity: Capacity {
                bytes: budget,
                source: CapacitySource::Flag,
                is_budget: true,
            },
            machine_limit: machine_limit().ok(),
            reference: None,
            own_bytes,
        })
    }

    /// A meter whose capacity is [`AVAILABLE_SHARE`] of the memory available now (rounded
    /// down to five significant bits, at most 6% less, so that the same machine gives the
    /// same budget from run to run and a repeated run is answered from the cache): the
    /// machine's `MemAvailable`, or what the process's cgroup (a container's, a Kubernetes
    /// pod's, a Slurm job's memory limit) still allows, whichever is smaller.
    ///
    /// Fails when [`CountingAllocator`] is not the global allocator, or when the available
    /// memory cannot be read (give a budget with [`CpuMeter::with_budget`] then).
    pub fn from_available_memory() -> Result<Self, Error> {
        ensure_installed()?;
        let own_bytes = reserve_matmul_workspace();
        let limit = machine_limit()?;
        Ok(Self {
            capacity: Capacity {
                bytes: coarse((limit.bytes as f64 * AVAILABLE_SHARE) as u64),
                source: limit.source,
                is_budget: true,
            },
            machine_limit: Some(limit),
            reference: None,
            own_bytes,
        })
    }

    /// The bytes of the matrix-multiply workspaces every CPU meter made the process hold
    /// (each trial counts them as held).
    pub fn workspace_bytes() -> u64 {
        WORKSPACES.load(Ordering::Relaxed)
    }

    /// The most heap this process can reach without exhausting the machine or its container.
    pub fn machine_limit(&self) -> Option<u64> {
        self.machine_limit.map(|l| l.bytes)
    }
}

impl MemoryMeter for CpuMeter {
    fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn reset_peak(&mut self) -> candle_core::Result<()> {
        CountingAllocator::reset_peak();
        Ok(())
    }

    fn peak_bytes(&mut self) -> candle_core::Result<u64> {
        Ok(CountingAllocator::peak_bytes())
    }

    fn current_bytes(&mut self) -> candle_core::Result<u64> {
        Ok(CountingAllocator::current_bytes())
    }

    fn hard_limit(&self) -> Option<u64> {
        self.machine_limit()
    }

    fn describe(&self) -> &'static str {
        "the heap bytes maxbatch's counting allocator saw (the global allocator)"
    }

    fn mark_reference(&mut self, held: Option<u64>) -> candle_core::Result<u64> {
        let held = held.unwrap_or_else(CountingAllocator::current_bytes);
        self.reference = Some(held);
        Ok(held)
    }

    fn own_bytes(&self) -> u64 {
        self.own_bytes
    }

    fn arm_stop_points(&mut self, at: Option<super::stop::StopAt>) {
        super::stop::arm(at);
    }

    fn prepare(&mut self, peak_bytes: u64) {
        if !FREED_MEMORY_KEPT.load(Ordering::SeqCst) {
            return;
        }
        let ceiling = self.hard_limit().unwrap_or(u64::MAX);
        let more = peak_bytes
            .min(ceiling)
            .saturating_sub(CountingAllocator::current_bytes());
        if let Ok(more) = usize::try_from(more) {
            // Written, not only allocated: fresh pages from the kernel read as zeros
            // without being mapped until they are written.
            let mut touched: Vec<u8> = Vec::new();
            if touched.try_reserve_exact(more).is_ok() {
                touched.resize(more, 1);
            }
        }
    }

    fn record_parts(&mut self, on: bool) {
        if on {
            super::parts::record();
        } else {
            super::parts::pause();
        }
    }

    fn recorded_parts(&mut self) -> Vec<(&'static str, u64)> {
        super::parts::take()
    }

    fn drift_bytes(&mut self) -> candle_core::Result<u64> {
        Ok(self
            .reference
            .map_or(0, |r| CountingAllocator::current_bytes().saturating_sub(r)))
    }
}

/// Makes the process hold the matrix-multiply workspaces it keeps for the rest of its life,
/// and returns their bytes. candle's CPU matrix products (the gemm crate) give each thread
/// that runs one a buffer the size of the L2 cache, and never free it. Which threads had run
/// one depended on the trials before, and on which worker happened to pick up a task, so a
/// trial measured in a search differed from the same trial in a fresh process (`check`,
/// `--isolate`) by a buffer or two (2 MiB each here). Held from the start by this thread and
/// every worker of the thread pool, they are in every mode's baseline alike (see
/// docs/design.md).
fn reserve_matmul_workspace() -> u64 {
    let before = CountingAllocator::current_bytes();
    // A product of two rows runs on the calling thread, whichever it is.
    let small_product = || {
        use candle_core::{DType, Device, Tensor};
        let product = Tensor::ones((2, 512), DType::F32, &Device::Cpu)
            .and_then(|a| a.matmul(&Tensor::ones((512, 512), DType::F32, &Device::Cpu)?));
        if let Err(error) = product {
            tracing::debug!("could not reserve the matrix-multiply workspace: {error}");
        }
    };
    small_product();
    let pool_before = CountingAllocator::current_bytes();
    rayon::broadcast(|_| small_product());
    let after = CountingAllocator::current_bytes();
    let grown = after.saturating_sub(before);
    #[cfg(feature = "test-hooks")]
    let grown = test_offset::apply(grown, after.saturating_sub(pool_before));
    #[cfg(not(feature = "test-hooks"))]
    let _ = pool_before;
    WORKSPACES.fetch_add(grown, Ordering::Relaxed) + grown
}

/// A testing aid (builds with the `test-hooks` feature only, which only the tests turn on):
/// `MAXBATCH_TEST_WORKSPACE_OFFSET=+8MiB` (or `-2MiB`) makes the process hold that many
/// bytes more (or fewer) than its matrix-multiply workspaces, as a machine with larger (or
/// smaller) caches or more (or fewer) threads would. A test that hard-codes a figure of
/// the machine it was written on fails under an offset; one that derives its budgets from
/// what it measured passes (see docs/design.md, "Tests on any machine").
#[cfg(feature = "test-hooks")]
mod test_offset {
    use std::sync::atomic::Ordering;
    use std::sync::Once;

    use super::super::counting::CURRENT;

    /// The environment variable that sets the offset.
    const VARIABLE: &str = "MAXBATCH_TEST_WORKSPACE_OFFSET";

    /// The offset asked for, in bytes: `+N`, `-N` or `N` with a unit `--memory` accepts.
    fn requested() -> Option<i64> {
        let text = std::env::var(VARIABLE).ok()?;
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let (sign, size) = match text.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, text.strip_prefix('+').unwrap_or(text)),
        };
        match crate::format::parse_bytes(size) {
            Ok(bytes) => Some(sign * i64::try_from(bytes).unwrap_or(i64::MAX)),
            Err(error) => panic!("{VARIABLE}={text}: {error}"),
        }
    }

    /// Applies the offset once per process, to the first reservation: `grown` bytes of
    /// workspaces, `pool` of them held by the thread pool's workers for the process's whole
    /// life. Returns the workspace bytes the process now counts as held. A negative offset
    /// takes bytes off the counted heap, at most the pool's (so the count never falls
    /// below what is really held).
    pub(super) fn apply(grown: u64, pool: u64) -> u64 {
        static ONCE: Once = Once::new();
        let mut counted = grown;
        ONCE.call_once(|| match requested() {
            Some(offset) if offset > 0 => {
                let block = vec![0u8; offset as usize].into_boxed_slice();
                std::mem::forget(std::hint::black_box(block));
                counted = grown + offset as u64;
            }
            Some(offset) if offset < 0 => {
                let removed = offset.unsigned_abs().min(pool);
                if removed < offset.unsigned_abs() {
                    tracing::info!(
                        "{VARIABLE}: only {removed} bytes of workspaces to take off this machine"
                    );
                }
                CURRENT.fetch_sub(removed, Ordering::Relaxed);
                counted = grown - removed;
            }
            _ => {}
        });
        counted
    }
}

/// `bytes` rounded down to its five most significant bits.
fn coarse(bytes: u64) -> u64 {
    let shift = (63 - bytes.max(1).leading_zeros()).saturating_sub(4);
    (bytes >> shift) << shift
}

fn ensure_installed() -> Result<(), Error> {
    if CountingAllocator::is_installed() {
        Ok(())
    } else {
        Err(Error::AllocatorNotInstalled)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_default_budget_is_stable_within_a_few_percent() {
        for bytes in [
            1u64,
            17,
            1000,
            5_995_077_290,
            7 << 30,
            (7 << 30) + 12345,
            u64::MAX,
        ] {
            let c = coarse(bytes);
            assert!(
                c <= bytes && c as f64 >= bytes as f64 * (1.0 - 1.0 / 16.0),
                "{bytes}: {c}"
            );
        }
        // MemAvailable moving by a few MiB does not move the budget.
        assert_eq!(coarse(5_995_077_290), coarse(5_995_077_290 - (8 << 20)));
    }
    #[test]
    fn the_test_binary_counts_its_allocations() {
        assert!(CountingAllocator::is_installed());
        let mut meter = CpuMeter::with_budget(1 << 30).unwrap();
        meter.reset_peak().unwrap();
        let block = std::hint::black_box(vec![7u8; 64 << 20]);
        drop(block);
        let peak = meter.peak_bytes().unwrap();
        let after = meter.current_bytes().unwrap();
        // Other tests allocate and free concurrently, so neither figure is exact; but the
        // window's peak stands about 64 MiB above the heap once the block is gone.
        assert!(
            peak >= after + (60 << 20),
            "peak {peak}, after the block {after}"
        );
    }
}
