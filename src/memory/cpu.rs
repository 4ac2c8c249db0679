//! The CPU meter: a counting global allocator and a memory budget.
//!
//! On the CPU an allocation failure aborts the process, so a trial cannot be allowed to
//! run out of real memory. Instead the CPU has a **budget** (the `--memory` flag, or the
//! machine's available memory at start): a trial whose heap peak exceeds it is out of
//! memory. The peak is counted by [`CountingAllocator`], not read from the resident set
//! size, because glibc keeps freed pages and RSS overstates small trials.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Capacity, CapacitySource, MemoryMeter};
use crate::error::Error;

static CURRENT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// A global allocator that counts the heap bytes in use and their peak.
///
/// A binary that measures CPU trials installs it:
/// ```
/// #[global_allocator]
/// static ALLOCATOR: maxbatch::CountingAllocator = maxbatch::CountingAllocator;
/// ```
/// It forwards to the system allocator; the count costs two relaxed atomic operations
/// per allocation.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

impl CountingAllocator {
    /// Heap bytes in use now (0 if this is not the global allocator).
    pub fn current_bytes() -> u64 {
        CURRENT.load(Ordering::Relaxed)
    }

    /// The most heap bytes in use since the last [`reset_peak`](Self::reset_peak).
    pub fn peak_bytes() -> u64 {
        PEAK.load(Ordering::Relaxed)
    }

    /// Starts a new peak window at the bytes in use now.
    pub fn reset_peak() {
        PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// True when this allocator is the process's global allocator.
    pub fn is_installed() -> bool {
        let probe = std::hint::black_box(vec![1u8; 4096]);
        let installed = Self::current_bytes() >= probe.len() as u64;
        drop(probe);
        installed
    }
}

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes as u64, Ordering::Relaxed);
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the
// counters are only bookkeeping and never affect the returned memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_ptr = System.realloc(ptr, layout, new_size);
        if !new_ptr.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        new_ptr
    }
}

/// The share of the machine's available memory that is the CPU's default budget, and the
/// most a trial may be predicted to need before it is refused without running.
pub const AVAILABLE_SHARE: f64 = 0.8;

/// Measures CPU trials against a budget with [`CountingAllocator`].
#[derive(Debug, Clone)]
pub struct CpuMeter {
    capacity: Capacity,
    machine_limit: Option<u64>,
}

impl CpuMeter {
    /// A meter whose capacity is `budget` bytes (the `--memory` flag).
    ///
    /// Fails when [`CountingAllocator`] is not the global allocator.
    pub fn with_budget(budget: u64) -> Result<Self, Error> {
        ensure_installed()?;
        Ok(Self {
            capacity: Capacity {
                bytes: budget,
                source: CapacitySource::Flag,
                is_budget: true,
            },
            machine_limit: machine_limit().ok(),
        })
    }

    /// A meter whose capacity is [`AVAILABLE_SHARE`] of the machine's available memory
    /// now: a trial is only stopped at a phase boundary, so the rest is headroom for a trial
    /// that crosses the budget in the middle of a phase, which would otherwise exhaust the
    /// machine and abort the process.
    ///
    /// Fails when [`CountingAllocator`] is not the global allocator, or when the available
    /// memory cannot be read (give a budget with [`CpuMeter::with_budget`] then).
    pub fn from_available_memory() -> Result<Self, Error> {
        ensure_installed()?;
        let limit = machine_limit()?;
        Ok(Self {
            capacity: Capacity {
                bytes: (limit as f64 * AVAILABLE_SHARE) as u64,
                source: CapacitySource::MemAvailable,
                is_budget: true,
            },
            machine_limit: Some(limit),
        })
    }

    /// The most heap this process can reach without exhausting the machine: the memory
    /// available at start plus what the process already holds.
    pub fn machine_limit(&self) -> Option<u64> {
        self.machine_limit
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
        self.machine_limit
    }
}

fn ensure_installed() -> Result<(), Error> {
    if CountingAllocator::is_installed() {
        Ok(())
    } else {
        Err(Error::AllocatorNotInstalled)
    }
}

fn machine_limit() -> Result<u64, Error> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| Error::MemInfo(format!("/proc/meminfo: {e}")))?;
    let available = mem_available(&meminfo)
        .ok_or_else(|| Error::MemInfo("/proc/meminfo has no MemAvailable line".into()))?;
    Ok(available + CountingAllocator::current_bytes())
}

/// The `MemAvailable` figure of a /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available_in_kibibytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(mem_available(text), Some(23_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn the_test_binary_counts_its_allocations() {
        assert!(CountingAllocator::is_installed());
        let mut meter = CpuMeter::with_budget(1 << 30).unwrap();
        meter.reset_peak().unwrap();
        let before = meter.peak_bytes().unwrap();
        let block = std::hint::black_box(vec![7u8; 64 << 20]);
        drop(block);
        let peak = meter.peak_bytes().unwrap();
        // Other tests allocate concurrently, so the peak is at least the block, not exactly.
        assert!(peak >= before + (64 << 20), "peak {peak}, before {before}");
    }
}
