#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! 3D detection end to end at reduced size: the nodules recipe's data (template slabs, other subjects with inserted
//! lesions, real tumour masks) and a Retina U-Net on 3D boxes.
use std::path::Path;

use vesalius_detection::recipe::DetRecipe;
use vesalius_train::RunDir;
use vesalius_train::engine::RunOptions;

/// burn's random generator is process-wide: tests that train take turns, so each sees only its own draws.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(not(feature = "test-cuda"))]
type AB = burn::backend::Autodiff<burn::backend::Flex>;
#[cfg(feature = "test-cuda")]
type AB = burn::backend::Autodiff<burn::backend::Cuda>;

fn reduced(arch: &str) -> DetRecipe {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes/nodules-3d.toml"));
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("spacing = [2.0, 2.0, 2.0]", "spacing = [4.0, 4.0, 4.0]")
        .replace("val_band = { axis = 2, start = 36, end = 52 }", "val_band = { axis = 2, start = 18, end = 26 }")
        .replace("test_band = { axis = 2, start = 52, end = 68 }", "test_band = { axis = 2, start = 26, end = 34 }")
        .replace("arch = \"centre\"", &format!("arch = \"{arch}\""))
        .replace("channels = [16, 32, 64]", "channels = [8, 16, 32]")
        .replace("eval_count = 40", "eval_count = 6")
        .replace("count = 16 }", "count = 6 }")
        .replace("count = 8 }", "count = 6 }")
        .replace("diameter_mm = [6.0, 24.0]", "diameter_mm = [12.0, 24.0]")
        .replace("epochs = 30", "epochs = 1")
        .replace("iterations = 24", "iterations = 2")
        .replace("patch = [32, 32, 32]", "patch = [16, 16, 16]");
    DetRecipe::from_toml(&text, &path.parent().unwrap().canonicalize().unwrap()).unwrap()
}

#[test]
fn nodule_recipe_data_and_3d_detectors_run_end_to_end() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    for arch in ["centre", "retina"] {
        let recipe = reduced(arch);
        let data = vesalius_detection::data::prepare(&recipe).unwrap();
        // The template trains; its validation slab, then the test slab and five other volumes.
        assert_eq!((data.train.len(), data.val.len(), data.test.len()), (1, 1, 6));
        let ids: Vec<&str> = data.test.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids[0], "mni152:test");
        // Real tumours keep their own findings (brain1 has two components), inserted lesions are 6 per subject.
        let count = |id: &str| data.test.iter().find(|s| s.id == id).unwrap().findings.len();
        assert_eq!((count("pyradiomics_brain1"), count("pyradiomics_brain2"), count("pyradiomics_breast1")), (2, 1, 1));
        assert_eq!((count("itk_t1"), count("nibabel_anatomical")), (6, 6));
        // Every test finding lies inside its scan.
        for s in &data.test {
            for f in &s.findings {
                let v = s.geometry.to_voxel(f.centre);
                assert!((0..3).all(|a| v[a] > -1.0 && v[a] < s.shape[a] as f64), "{} {:?}", s.id, v);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let out = vesalius_detection::train::train::<AB>(
            &recipe,
            &run,
            &Default::default(),
            &RunOptions { quiet: true, ..Default::default() },
            |_| {},
        )
        .unwrap();
        let m = out.test.unwrap();
        assert_eq!(m.operating_point.per_scan.len(), 6);
        assert_eq!(m.froc.n_nodules, data.test.iter().map(|s| s.findings.len()).sum::<usize>());
        if arch == "retina" {
            let ap = m.average_precision.unwrap();
            assert!(ap.contains_key("0.1") && ap.contains_key("0.5"));
            assert!(ap.values().all(|v| (0.0..=1.0).contains(v)));
        }
        // Marks are world points inside their scans.
        let marks =
            vesalius_detection::annotations::read_luna_csv(&run.file("detections-test.csv"), vesalius_detection::geometry::Frame::Lps)
                .unwrap();
        for mk in &marks {
            let s = data.test.iter().find(|s| s.id == mk.scan).unwrap();
            let v = s.geometry.to_voxel(mk.centre);
            assert!((0..3).all(|a| v[a] > -1.0 && v[a] < s.shape[a] as f64 + 1.0), "{} {:?}", s.id, v);
        }
    }
}
