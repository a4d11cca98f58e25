//! MetaImage files against SimpleITK's reading of them (fixtures/metaimage_reference.json, made by
//! fixtures/metaimage_reference.py): size, channels, value statistics, and the world position of probe voxels.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::{Path, PathBuf};

use serde_json::Value;
use vesalius_io::load;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

#[test]
fn metaimage_fixtures_match_simpleitk() {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("metaimage_reference.json")).unwrap()).unwrap();
    let entries = reference.as_object().unwrap();
    assert_eq!(entries.len(), 6);
    for (name, want) in entries {
        let img = load(fixtures().join("metaimage").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let size: Vec<usize> = want["size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(img.shape(), &size[..], "{name}");
        assert_eq!(img.channels() as u64, want["channels"].as_u64().unwrap(), "{name}");
        let sum: f64 = img.data().iter().map(|&v| v as f64).sum();
        let sum_sq: f64 = img.data().iter().map(|&v| (v as f64).powi(2)).sum();
        let (ws, wq) = (want["sum"].as_f64().unwrap(), want["sum_sq"].as_f64().unwrap());
        assert!((sum - ws).abs() <= 1e-6 * ws.abs().max(1.0), "{name}: sum {sum} vs {ws}");
        assert!((sum_sq - wq).abs() <= 1e-6 * wq.abs().max(1.0), "{name}: sum of squares");
        for probe in want["probes"].as_array().unwrap() {
            let idx: Vec<f64> = probe["index"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let lps: Vec<f64> = probe["lps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let mut i3 = [0.0; 3];
            i3[..idx.len()].copy_from_slice(&idx);
            let w = img.world(i3);
            let ras = [-lps[0], -lps[1], lps.get(2).copied().unwrap_or(0.0)];
            for a in 0..3 {
                assert!((w[a] - ras[a]).abs() < 1e-5, "{name}: index {idx:?}: world {w:?} vs RAS {ras:?}");
            }
        }
    }
}

#[test]
fn damaged_metaimages_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("metaimage/BrainProtonDensitySliceBorder20.mhd");
    let header = std::fs::read_to_string(&src).unwrap();
    // Missing raw file.
    let p = dir.path().join("lost.mhd");
    std::fs::write(&p, &header).unwrap();
    let e = load(&p).unwrap_err().to_string();
    assert!(e.contains("BrainProtonDensitySliceBorder20.raw"), "{e}");
    // A size the raw file cannot hold.
    std::fs::copy(fixtures().join("metaimage/BrainProtonDensitySliceBorder20.raw"), dir.path().join("BrainProtonDensitySliceBorder20.raw"))
        .unwrap();
    let p = dir.path().join("big.mhd");
    std::fs::write(&p, header.replace("DimSize = 221 257", "DimSize = 100000 100000")).unwrap();
    let e = load(&p).unwrap_err().to_string();
    assert!(e.contains("the file holds 56797"), "{e}");
    let p = dir.path().join("type.mhd");
    std::fs::write(&p, header.replace("MET_UCHAR", "MET_FANCY")).unwrap();
    assert!(load(&p).unwrap_err().to_string().contains("unsupported ElementType"));
    // A data file outside the header's folder (absolute, or up with '..') is refused before it is opened, even
    // when it exists.
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    let raw = dir.path().join("BrainProtonDensitySliceBorder20.raw");
    for target in [raw.display().to_string(), "../BrainProtonDensitySliceBorder20.raw".to_string()] {
        let p = inner.join("escape.mhd");
        std::fs::write(&p, header.replace("ElementDataFile = BrainProtonDensitySliceBorder20.raw", &format!("ElementDataFile = {target}")))
            .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("escape.mhd") && e.contains("must name a file in the header's folder"), "{e}");
    }
    let p = dir.path().join("garbage.mha");
    std::fs::write(&p, [0u8, 159, 146, 150, 1, 2, 3]).unwrap();
    assert!(load(&p).unwrap_err().to_string().contains("garbage.mha"));
}
