//! Fuzzes CSV manifests: the classification manifest (`path,label[,patient_id][,split]`) and the segmentation
//! manifest (`image,label,patient_id`); any content must give samples or an error, never a panic or an
//! allocation sized from a label value.
#![no_main]

#[path = "common.rs"]
mod common;
use common::scratch;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Paths stay inside the scratch folder: an absolute path would make the loader read the machine's own folders
    // (a series-folder walk is bounded by MAX_SCAN_FILES and regular files, tested in crates/io/tests/it/dicom.rs).
    if data.contains(&b'/') || data.contains(&b'\\') {
        return;
    }
    let path = scratch("manifest.csv", data);
    for multi_label in [false, true] {
        let _ = vesalius_data::source::load(&vesalius_data::source::SourceConfig::Csv { path: path.clone(), multi_label }, 1, 8);
    }
    let _ = vesalius_data::msd::read_manifest(&path);
});
