//! Fuzzes the reading of an MSD / nnU-Net `dataset.json`: any content must give a data set or an error.
#![no_main]

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_dir("dataset");
    std::fs::write(dir.join("dataset.json"), data).expect("scratch file");
    let _ = vesalius_data::msd::open(&dir);
});
