//! Fuzzes the MetaImage reader: any `.mha` (header and data in one file) or `.mhd` header must give an image or an
//! error, never a panic, a read outside the header's folder or an oversized allocation.
#![no_main]

#[path = "common.rs"]
mod common;
use common::scratch;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vesalius_io::load(scratch("x.mha", data));
    let _ = vesalius_io::load(scratch("x.mhd", data));
});
