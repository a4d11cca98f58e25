//! Fuzzes the npz reader: any input must give an image or an error, never a panic or an oversized allocation
//! (libFuzzer's -rss_limit_mb and -malloc_limit_mb catch the latter).
#![no_main]

use std::path::PathBuf;

/// Writes the input to a per-process scratch file (in /dev/shm when it exists) and returns its path.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let path = dir.join(format!("vesalius-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&path, data).expect("scratch file");
    path
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = scratch("x.npz", data);
    for split in ["train", "val", "test"] {
        let _ = vesalius_data::npz::read_medmnist(&path, split);
    }
});
