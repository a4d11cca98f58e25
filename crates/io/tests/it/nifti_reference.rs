//! Every NIfTI file in fixtures/ against nibabel's reading of it (fixtures/nifti_reference.json, made by
//! fixtures/nifti_reference.py): shape, affine to 1e-5, voxel statistics, probe voxels; files nibabel refuses are
//! refused here too, with an error that names them.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::{Path, PathBuf};

use serde_json::Value;
use vesalius_io::load;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn every_fixture_matches_nibabel() {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("nifti_reference.json")).unwrap()).unwrap();
    let entries = reference.as_object().unwrap();
    assert!(entries.len() >= 28, "reference covers {} files", entries.len());
    for (rel, want) in entries {
        let path = fixtures().join(rel);
        let got = load(&path);
        if let Some(kind) = want.get("error") {
            let e = got.err().unwrap_or_else(|| panic!("{rel}: nibabel refuses it ({kind}), we read it"));
            assert!(e.to_string().contains(path.file_name().unwrap().to_str().unwrap()), "{rel}: {e}");
            continue;
        }
        let img = got.unwrap_or_else(|e| panic!("{rel}: {e}"));
        let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(img.shape(), &shape[..shape.len().min(3)], "{rel}: spatial shape");
        assert_eq!(img.channels(), shape.iter().skip(3).product::<usize>(), "{rel}: channels");
        let dtype = want["dtype"].as_str().unwrap().trim_start_matches(['<', '>', '|']);
        let expected_dtype = match dtype {
            "i2" => "int16",
            "f4" => "float32",
            other => other,
        };
        assert_eq!(img.dtype(), expected_dtype, "{rel}: dtype");
        for (r, row) in want["affine"].as_array().unwrap().iter().enumerate() {
            for (c, v) in row.as_array().unwrap().iter().enumerate() {
                let v = v.as_f64().unwrap();
                assert!((img.affine()[r][c] - v).abs() < 1e-5, "{rel}: affine[{r}][{c}] {} vs {v}", img.affine()[r][c]);
            }
        }
        let finite: Vec<f64> = img.data().iter().filter(|v| v.is_finite()).map(|&v| v as f64).collect();
        let nan = img.data().iter().filter(|v| v.is_nan()).count();
        assert_eq!(nan as u64, want["nan"].as_u64().unwrap(), "{rel}: NaN count");
        let sum: f64 = finite.iter().sum();
        let sum_sq: f64 = finite.iter().map(|v| v * v).sum();
        assert!(close(sum, want["sum"].as_f64().unwrap(), 1e-6), "{rel}: sum {sum} vs {}", want["sum"]);
        assert!(close(sum_sq, want["sum_sq"].as_f64().unwrap(), 1e-6), "{rel}: sum of squares");
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(close(min, want["min"].as_f64().unwrap(), 1e-6) && close(max, want["max"].as_f64().unwrap(), 1e-6), "{rel}: range");
        for probe in want["probes"].as_array().unwrap() {
            let i = probe[0].as_u64().unwrap() as usize;
            let v = img.data()[i];
            match probe[1].as_f64() {
                Some(w) => assert!(close(v as f64, w, 1e-6), "{rel}: voxel {i}: {v} vs {w}"),
                None => assert!(!v.is_finite(), "{rel}: voxel {i} should be NaN"),
            }
        }
    }
}

#[test]
fn nifti1_files_agree_with_the_nifti_crate() {
    for rel in
        ["nifti/nibabel/anatomical.nii", "nifti/nibabel/standard.nii.gz", "nifti/dipy/aniso_vox.nii.gz", "nifti/nibabel/functional.nii"]
    {
        let path = fixtures().join(rel);
        let ours = load(&path).unwrap();
        let theirs = nifti::ReaderOptions::new().read_file(&path).unwrap();
        let arr = nifti::IntoNdArray::into_ndarray::<f32>(nifti::NiftiObject::into_volume(theirs)).unwrap();
        let theirs: Vec<f32> = arr.t().iter().copied().collect();
        assert_eq!(ours.data().len(), theirs.len(), "{rel}");
        let worst = ours.data().iter().zip(&theirs).map(|(a, b)| ((a - b) / b.abs().max(1.0)).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "{rel}: largest relative difference {worst}");
    }
}
