//! Fuzzes the 2D readers (PNG, TIFF, JPEG through `image` and `tiff`) and their preparation for a classifier:
//! any input must give an image or an error, never a panic or an oversized allocation.
#![no_main]

#[path = "common.rs"]
mod common;
use common::scratch;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for name in ["x.png", "x.tif", "x.jpg"] {
        let path = scratch(name, data);
        if let Ok(img) = vesalius_io::load(&path) {
            let _ = vesalius_data::source::prepare_2d(&img, 1, 28, &path);
        }
    }
});
