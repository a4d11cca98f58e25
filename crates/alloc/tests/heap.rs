//! The settings' effect, seen in a thread's own page faults (`/proc/thread-self/stat`): a step that holds 128 MiB in
//! buffers of 8 MiB and then frees them all gives the memory back to the kernel under glibc's defaults (the free top
//! passes the trim threshold, emptied heaps of the thread's arena are unmapped) and faults it in again at the next
//! step, and buffers of 40 MiB (above the largest mapping threshold glibc allows) are mapped and unmapped each time;
//! on a thread started after the settings are taken the next step finds both still mapped. One test in this binary,
//! so the change is seen before and after within it.

use std::hint::black_box;

const BUFFER: usize = 8 << 20;
const HELD: usize = 16;
const LARGE: usize = 40 << 20;
const LARGE_HELD: usize = 2;

/// The calling thread's minor page faults so far.
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat is readable");
    // The command name (field 2) is in parentheses and may hold spaces; minflt is the 10th field, the 8th after it.
    let after_name = &stat[stat.rfind(')').expect("a stat line has the command in parentheses") + 1..];
    after_name.split_whitespace().nth(7).and_then(|f| f.parse().ok()).expect("minflt is a number")
}

/// Page faults over `steps` steps, each holding `held` buffers of `size` bytes (written whole), then freeing them all.
fn steps(steps: usize, size: usize, held: usize) -> u64 {
    let before = minor_faults();
    for step in 0..steps {
        let buffers: Vec<Vec<u8>> = (0..held).map(|i| black_box(vec![(step + i) as u8 | 1; size])).collect();
        assert!(buffers.iter().enumerate().all(|(i, b)| b[size - 1] == (step + i) as u8 | 1));
    }
    minor_faults() - before
}

/// Faults over three steps of each kind, after one step that lets the allocator settle on the sizes. The large
/// buffers come first, while the heap has no free space that could serve them without asking the kernel.
fn measured() -> (u64, u64) {
    let _ = steps(1, LARGE, LARGE_HELD);
    let large = steps(3, LARGE, LARGE_HELD);
    let _ = steps(1, BUFFER, HELD);
    (steps(3, BUFFER, HELD), large)
}

#[test]
fn freed_buffers_stay_faulted_in_once_the_settings_are_taken() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(!vesalius_alloc::keep_freed_memory_in_heap());
        return;
    }
    let (many, large) = measured();
    assert!(vesalius_alloc::keep_freed_memory_in_heap());
    // A thread started now is put on the main arena.
    let (many_kept, large_kept) = std::thread::spawn(measured).join().expect("the thread ran");
    // Under the defaults every step faults its buffers in again: at least one fault per 2 MiB page (with transparent
    // huge pages), one per 4 KiB page without them.
    assert!(many >= (3 * HELD * (BUFFER >> 21)) as u64, "defaults, 8 MiB buffers: {many} faults");
    assert!(large >= (3 * LARGE_HELD * (LARGE >> 21)) as u64, "defaults, 40 MiB buffers: {large} faults");
    for (kept, before, what) in [(many_kept, many, "8 MiB"), (large_kept, large, "40 MiB")] {
        assert!(kept * 8 < before, "{what} buffers: {kept} faults against {before} under the defaults");
        assert!(kept < (BUFFER / 4096 / 16) as u64, "{what} buffers: {kept} faults over three steps");
    }
}
