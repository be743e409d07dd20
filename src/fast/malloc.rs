//! glibc `malloc` settings for a process that runs libtorch on the CPU.
//!
//! libtorch's CPU allocator is plain `posix_memalign`/`free`. With glibc's defaults every buffer
//! above the (dynamic, at most 32 MB) mmap threshold is a fresh `mmap` that is unmapped again on
//! `free`, and buffers allocated on libtorch's worker threads go to per-thread arenas that glibc
//! shrinks with `MADV_DONTNEED`. Either way the next buffer of that size faults in and zeroes
//! every page again: BEiT-B + UPerNet at 640 allocates ~12 GB per crop that way (measured with
//! `perf stat -e page-faults`: ~3M faults per crop; a third of the run was system time).
//! PyTorch's own CPU performance guide answers this with jemalloc or tcmalloc through
//! `LD_PRELOAD`; the same effect is had from glibc itself by keeping freed memory for reuse:
//!
//! * `M_ARENA_MAX = 1`: one arena for all threads, so a buffer freed by one thread is reused by
//!   the next allocation of any thread;
//! * `M_MMAP_MAX = 0`: large buffers come from that arena's heap, not from their own mappings;
//! * `M_TRIM_THRESHOLD = 2 GiB`: freed memory at the top of the heap is kept, not given back.
//!
//! Measured (BEiT-B + UPerNet, 640, fp32, 2 threads, one process): 14.0 s → 7.7 s per crop,
//! page faults ~3M → ~25k per crop in steady state (warm-up 0 vs 2: 812k vs 862k faults for the
//! whole run), peak RSS 3.5 GB before and after (with the Winograd block buffers reused).
//! The reference backend does not need it (it allocates far less per crop, and one arena
//! serialises its rayon threads' allocations), so this is for processes that run libtorch.

/// Applies the settings above to this process. Call it early in `main`, before any thread
/// exists: glibc fixes its arena limit when the first thread arena is created. Returns whether
/// glibc accepted all three (always false off glibc, where nothing is changed).
pub fn keep_freed_memory_for_reuse() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
        // exists (documented requirement of this function) and has no memory-safety preconditions.
        unsafe {
            let a = libc::mallopt(libc::M_ARENA_MAX, 1);
            let m = libc::mallopt(libc::M_MMAP_MAX, 0);
            let t = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            a == 1 && m == 1 && t == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
