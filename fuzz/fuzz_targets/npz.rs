//! Fuzzes the npz reader and the whole MedMNIST load path (three splits, label checks, class list): any input must
//! give samples or an error, never a panic or an oversized allocation (libFuzzer's -rss_limit_mb and
//! -malloc_limit_mb catch the latter).
#![no_main]

#[path = "common.rs"]
mod common;
use common::scratch;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = scratch("x.npz", data);
    for split in ["train", "val", "test"] {
        let _ = vesalius_io::npz::read_medmnist(&path, split);
    }
    let _ = vesalius_data::source::load(&vesalius_data::source::SourceConfig::Medmnist { path }, 0, 0);
});
