//! Fuzzes the nifti reader: any input must give an image or an error, never a panic or an oversized allocation
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
    // The same bytes as a plain and as a gzipped single file, and as the header of a .hdr/.img pair.
    let _ = vesalius_data::io::load(&scratch("x.nii", data));
    let _ = vesalius_data::io::load(&scratch("x.nii.gz", data));
    let _ = vesalius_data::io::load(&scratch("y.hdr", data));
});
