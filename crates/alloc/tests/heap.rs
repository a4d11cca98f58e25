//! The settings' effect, seen in a thread's own page faults (`/proc/thread-self/stat`): a step that holds 128 MiB in
//! buffers of 8 MiB and then frees them all gives the memory back to the kernel under glibc's defaults (the free top
//! passes the trim threshold, emptied heaps of the thread's arena are unmapped) and faults it in again at the next
//! step; on a thread started after the settings are taken the next step finds it still mapped. One test in this
//! binary, so the change is seen before and after within it.

use std::hint::black_box;

const BUFFER: usize = 8 << 20;
const HELD: usize = 16;

/// The calling thread's minor page faults so far.
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat is readable");
    // The command name (field 2) is in parentheses and may hold spaces; minflt is the 10th field, the 8th after it.
    let after_name = &stat[stat.rfind(')').expect("a stat line has the command in parentheses") + 1..];
    after_name.split_whitespace().nth(7).and_then(|f| f.parse().ok()).expect("minflt is a number")
}

/// Page faults over `steps` steps, each holding `HELD` buffers of 8 MiB (written whole), then freeing them all.
fn steps(steps: usize) -> u64 {
    let before = minor_faults();
    for step in 0..steps {
        let held: Vec<Vec<u8>> = (0..HELD).map(|i| black_box(vec![(step + i) as u8 | 1; BUFFER])).collect();
        assert!(held.iter().enumerate().all(|(i, b)| b[BUFFER - 1] == (step + i) as u8 | 1));
    }
    minor_faults() - before
}

#[test]
fn freed_buffers_stay_faulted_in_once_the_settings_are_taken() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(!vesalius_alloc::keep_freed_memory_in_heap());
        return;
    }
    // One step lets glibc's moving thresholds settle on these sizes; three more are measured.
    let _ = steps(1);
    let with_defaults = steps(3);
    assert!(vesalius_alloc::keep_freed_memory_in_heap());
    // A thread started now is put on the main arena; its first step grows the heap, three more are measured.
    let kept = std::thread::spawn(|| {
        let _ = steps(1);
        steps(3)
    })
    .join()
    .expect("the thread ran");
    let per_buffer_4k = (BUFFER / 4096) as u64;
    // Under the defaults every step faults its buffers in again: at least one fault per 2 MiB page (with
    // transparent huge pages), one per 4 KiB page without them.
    assert!(with_defaults >= (3 * HELD * (BUFFER >> 21)) as u64, "defaults: {with_defaults} faults");
    assert!(kept * 8 < with_defaults, "kept: {kept} faults against {with_defaults} under the defaults");
    assert!(kept < per_buffer_4k / 16, "kept: {kept} faults over three steps of {HELD} buffers");
}
