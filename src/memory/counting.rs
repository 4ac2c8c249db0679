//! The counting allocator: a global allocator that counts the heap bytes in use and their
//! peak, around any other. The CPU meter measures trials with it; the stop points and the
//! part marks read it. It depends on nothing else in the crate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) static CURRENT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// A global allocator that counts the heap bytes in use and their peak, around any other
/// global allocator (the system's by default).
///
/// A binary that measures CPU trials installs it:
/// ```
/// #[global_allocator]
/// static ALLOCATOR: maxbatch::CountingAllocator = maxbatch::CountingAllocator::new();
/// ```
/// or, around another allocator (mimalloc, jemalloc):
/// ```
/// # use std::alloc::System as MiMalloc;
/// #[global_allocator]
/// static ALLOCATOR: maxbatch::CountingAllocator<MiMalloc> =
///     maxbatch::CountingAllocator::wrapping(MiMalloc);
/// ```
/// The count costs two relaxed atomic operations per allocation.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator<A = System> {
    inner: A,
}

impl<A> CountingAllocator<A> {
    /// Counts the allocations of `inner`, which does the allocating.
    pub const fn wrapping(inner: A) -> Self {
        Self { inner }
    }
}

impl CountingAllocator<System> {
    /// Counts the system allocator's allocations.
    pub const fn new() -> Self {
        Self { inner: System }
    }

    /// Heap bytes in use now (0 if no counting allocator is the global allocator).
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

    /// True when a counting allocator is the process's global allocator.
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

// SAFETY: every call forwards to the wrapped allocator with the caller's arguments
// unchanged; the counters are only bookkeeping and never affect the returned memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = self.inner.alloc(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = self.inner.alloc_zeroed(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.inner.dealloc(ptr, layout);
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_ptr = self.inner.realloc(ptr, layout, new_size);
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
