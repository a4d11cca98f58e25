//! Fuzzes the dicom reader: any input must give an image or an error, never a panic or an oversized allocation
//! (libFuzzer's -rss_limit_mb and -malloc_limit_mb catch the latter).
#![no_main]

#[path = "common.rs"]
mod common;
use common::scratch;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vesalius_io::dicom::load_file(&scratch("x.dcm", data));
});
