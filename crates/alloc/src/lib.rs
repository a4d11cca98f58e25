//! Memory reuse between the steps of a computation: the system allocator's settings for programs that allocate and
//! free the same large buffers over and over.
//!
//! A training step, an inference pass or a registration iteration allocates whole-tensor buffers (activations,
//! their gradients, im2col tiles, sampled volumes), frees them, and allocates them again at the next step. Under
//! glibc's defaults much of that memory goes back to the kernel between steps and is mapped, faulted in page by
//! page and zeroed by the kernel again at the next: an allocation above the mapping threshold (128 KiB at first,
//! raised on the fly to the size of each mapped buffer freed) is mapped on its own and unmapped when freed; a heap
//! whose free top passes the trim threshold gives it back; and each thread that allocates gets an arena of its own,
//! whose heaps hold at most 64 MiB each and are given back whole when they empty, so a step that holds more than that
//! on a worker thread faults it all in again next time. [`keep_freed_memory_in_heap`] turns off the mapping of
//! single allocations (every buffer, however large, is carved from the heap), fixes the trim threshold at 2 GiB, and
//! puts every thread on the one main arena (which grows as one heap), so that freed memory stays mapped, split and
//! coalesced for buffers of any size, and the next step's buffers are already faulted in. Peak resident memory
//! moves little for the networks' steps (it fell for VoxelMorph, whose volumes passed the largest mapping threshold
//! glibc allows, 32 MiB); the heap keeps what the program held at its peak plus what fragmentation leaves between
//! buffers, which costs the registration of 1 mm volumes about a tenth more (`docs/PERFORMANCE.md` has the
//! measurements).
//!
//! Invariant: nothing here changes what memory a program may use or the alignment it asks for; only where glibc
//! takes large buffers from (the heap, not a mapping of their own) and when it returns freed memory to the kernel.
//! On other C libraries the call does nothing.
//!
//! # Example
//! ```
//! // First thing in `main`, before any thread is started.
//! let taken = vesalius_alloc::keep_freed_memory_in_heap();
//! assert_eq!(taken, cfg!(all(target_os = "linux", target_env = "gnu")));
//! let buffer = vec![0.0f32; 6 << 20];
//! assert!(buffer.iter().all(|&x| x == 0.0));
//! ```

/// The trim threshold set: 2 GiB − 1 (the largest an `int` holds), so a heap's free top is in practice kept.
pub const TRIM_THRESHOLD_BYTES: usize = i32::MAX as usize;

/// Asks glibc's allocator to keep freed memory in its heap instead of returning it to the kernel (see the [crate]
/// documentation): no allocation is mapped on its own (`M_MMAP_MAX` 0), the trim threshold is
/// [`TRIM_THRESHOLD_BYTES`], and there is one arena. Call it first thing in `main`, before any thread is started: a
/// thread that has already allocated keeps the arena it has. Returns whether all three settings were taken; on other
/// C libraries it does nothing and returns `false`.
pub fn keep_freed_memory_in_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        const M_ARENA_MAX: i32 = -8;
        #[allow(unsafe_code)]
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` is glibc's tuning call (it takes the allocator's lock); each parameter takes an `int`, and
        // each value is in glibc's accepted range (a count of 0 mappings, a byte count that fits an `int`, one arena).
        #[allow(unsafe_code)]
        let taken = unsafe { [mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES as i32), mallopt(M_MMAP_MAX, 0), mallopt(M_ARENA_MAX, 1)] };
        taken == [1, 1, 1]
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
