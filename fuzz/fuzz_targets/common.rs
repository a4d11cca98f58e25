//! What the fuzz targets share.
use std::path::PathBuf;

/// Writes the input to a per-process scratch file (in /dev/shm when it exists) and returns its path: the readers
/// under test take paths, as the command line does.
#[allow(dead_code)]
pub fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let path = dir.join(format!("vesalius-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&path, data).expect("scratch file");
    path
}

/// A per-process scratch folder (created empty if missing).
#[allow(dead_code)]
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let path = dir.join(format!("vesalius-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&path).expect("scratch folder");
    path
}
