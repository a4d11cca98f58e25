//! Fuzzes the nifti reader: any input must give an image or an error, never a panic or an oversized allocation
//! (libFuzzer's -rss_limit_mb and -malloc_limit_mb catch the latter).
#![no_main]

#[path = "common.rs"]
mod common;
use common::scratch;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The same bytes as a plain and as a gzipped single file, and as the header of a .hdr/.img pair.
    let _ = vesalius_io::load(&scratch("x.nii", data));
    let _ = vesalius_io::load(&scratch("x.nii.gz", data));
    let _ = vesalius_io::load(&scratch("y.hdr", data));
});
