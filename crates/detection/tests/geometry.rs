#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! Findings of real lesion masks in world LPS millimetres against nibabel/scipy, and the voxel ↔ world ↔ file
//! round trips in both frames.
use std::path::Path;

use vesalius_detection::annotations::{read_box_json, read_luna_csv, write_box_json, write_luna_csv};
use vesalius_detection::geometry::{Frame, Geometry};
use vesalius_detection::instances::findings_from_mask;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

#[test]
fn pyradiomics_lesion_masks_give_the_reference_findings() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("nifti/pyradiomics/lesion_reference.json")).unwrap()).unwrap();
    for case in ["brain1", "brain2", "breast1"] {
        let mask = vesalius_io::load(fixtures().join(format!("nifti/pyradiomics/{case}_label.nii.gz"))).unwrap();
        let found = findings_from_mask(&mask, case).unwrap();
        let expected = reference[case].as_array().unwrap();
        assert_eq!(found.len(), expected.len(), "{case}");
        for (f, e) in found.iter().zip(expected) {
            for a in 0..3 {
                let v = e["centre_lps"][a].as_f64().unwrap();
                assert!((f.centre[a] - v).abs() < 1e-6, "{case}: axis {a}: {} vs {v}", f.centre[a]);
            }
            assert!((f.diameter_mm - e["diameter_mm"].as_f64().unwrap()).abs() < 1e-6, "{case}");
            // The box holds the centre.
            let b = f.bbox.unwrap();
            assert!((0..3).all(|a| b.lo[a] <= f.centre[a] && f.centre[a] <= b.hi[a]));
        }
    }
}

#[test]
fn voxel_world_and_file_round_trips_in_lps_and_ras() {
    // The breast case: oblique-free but with flipped axes and anisotropic voxels.
    let mask = vesalius_io::load(fixtures().join("nifti/pyradiomics/breast1_label.nii.gz")).unwrap();
    let g = Geometry::of(&mask).unwrap();
    let found = findings_from_mask(&mask, "breast1").unwrap();
    let idx = g.to_voxel(found[0].centre);
    let back = g.to_world(idx);
    assert!((0..3).all(|a| (back[a] - found[0].centre[a]).abs() < 1e-9));
    // The voxel index is inside the mask's grid and on a mask voxel's neighbourhood.
    let s = mask.shape();
    assert!((0..3).all(|a| idx[a] >= 0.0 && idx[a] < s[a] as f64));
    let dir = tempfile::tempdir().unwrap();
    for frame in [Frame::Lps, Frame::Ras] {
        let csv = dir.path().join("f.csv");
        write_luna_csv(&csv, &found, frame).unwrap();
        let read = read_luna_csv(&csv, frame).unwrap();
        assert!((0..3).all(|a| (read[0].centre[a] - found[0].centre[a]).abs() < 1e-9));
        // Read in the other frame, x and y change sign.
        let other = if frame == Frame::Lps { Frame::Ras } else { Frame::Lps };
        let swapped = read_luna_csv(&csv, other).unwrap();
        assert!((swapped[0].centre[0] + found[0].centre[0]).abs() < 1e-9 && (swapped[0].centre[2] - found[0].centre[2]).abs() < 1e-9);
        let json = dir.path().join("b.json");
        let sections = std::collections::BTreeMap::from([("test".to_string(), found.clone())]);
        write_box_json(&json, &sections, 3, frame).unwrap();
        let boxes = read_box_json(&json).unwrap();
        let b = boxes["test"][0].bbox.unwrap();
        let want = found[0].bbox.unwrap();
        assert!((0..3).all(|a| (b.lo[a] - want.lo[a]).abs() < 1e-9 && (b.hi[a] - want.hi[a]).abs() < 1e-9));
    }
}
