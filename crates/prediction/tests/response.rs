#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! Treatment response end to end: a network trained on lesions inserted into the MNI152 template, shrunk or grown by
//! a known warp, predicts the change of the three real pyradiomics tumours it never saw.
use std::path::Path;

use vesalius_explain::Method;
use vesalius_nets::explain::Settings;
use vesalius_prediction::response::{self, ResponseRecipe};

#[cfg(not(feature = "test-cuda"))]
type B = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type B = burn::backend::Cuda;
type AB = burn::backend::Autodiff<B>;

/// burn's random generator is process-wide: tests that train networks take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn recipes() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes"))
}

fn small() -> ResponseRecipe {
    let text = std::fs::read_to_string(recipes().join("tumour-response.toml"))
        .unwrap()
        .replace("lesions = 60", "lesions = 24")
        .replace("epochs = 20", "epochs = 6")
        .replace("pairs = 256", "pairs = 128")
        .replace("pairs_per_slice = 10", "pairs_per_slice = 4")
        .replace("bootstrap = 1000", "bootstrap = 100");
    ResponseRecipe::from_toml(&text, recipes()).unwrap()
}

#[test]
fn a_network_trained_on_inserted_lesions_ranks_the_change_of_real_tumours() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let recipe = small();
    let dir = tempfile::tempdir().unwrap();
    let mut epochs = 0;
    let m = response::train::<AB>(&recipe, dir.path(), &Default::default(), |_| epochs += 1).unwrap();
    assert_eq!(epochs, 6);
    // brain1 7 slices, brain2 3, breast1 1 with ≥ 20 mm² of tumour; 4 pairs each, changes spread over the range
    assert_eq!((m.slices, m.pairs, m.responders), (11, 44, 11));
    let s = &m.change.metrics["spearman"];
    assert!(s.value > 0.35 && s.ci_low < s.value && s.value < s.ci_high, "{s:?}"); // 0.59 measured
    assert!(m.responder_auc.value > 0.65, "{:?}", m.responder_auc); // 0.79 measured
    let written = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
    response::evaluate::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("metrics.json")).unwrap(), written);
    // a scan pair from files: one prediction per tumour slice
    let fx = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/nifti/pyradiomics"));
    let (img, mask) = (fx.join("brain1_image.nii.gz"), fx.join("brain1_label.nii.gz"));
    let rows = response::predict::<B>(dir.path(), &img, &img, &mask, &Default::default()).unwrap();
    assert_eq!(rows.len(), 7);
    assert!(rows.iter().all(|(s, v)| s.contains("brain1") && v.is_finite()));
    // explanations look at the tumour: on the two smaller tumours, occlusion and saliency put more of their mass within
    // two equivalent radii of the centre than that disc's share of the crop
    for method in [Method::Occlusion, Method::Saliency] {
        let mut shares = Vec::new();
        for case in ["brain2", "breast1"] {
            let (im, m) = (fx.join(format!("{case}_image.nii.gz")), fx.join(format!("{case}_label.nii.gz")));
            let predicted = response::predict::<B>(dir.path(), &im, &im, &m, &Default::default()).unwrap();
            let found = response::explain::<AB>(dir.path(), &im, &im, &m, method, &Settings::default(), &Default::default()).unwrap();
            assert_eq!(found.len(), predicted.len());
            for (e, (slice, p)) in found.iter().zip(&predicted) {
                assert!(
                    e.slice == *slice && (e.predicted_log_ratio - p).abs() < 1e-5,
                    "{} {} vs {slice} {p}",
                    e.slice,
                    e.predicted_log_ratio
                );
                let s = e.side;
                let r = (e.mask.iter().filter(|&&m| m).count() as f64 / std::f64::consts::PI).sqrt();
                let c = (s as f64 - 1.0) / 2.0;
                let disc: Vec<bool> = (0..s * s).map(|i| ((i % s) as f64 - c).hypot((i / s) as f64 - c) <= 2.0 * r).collect();
                let area = disc.iter().filter(|&&d| d).count() as f64 / (s * s) as f64;
                let abs: Vec<f32> = e.map.iter().map(|v| v.abs()).collect();
                shares.push(vesalius_explain::mass_inside(&abs, &disc) / area);
            }
        }
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        eprintln!("{method:?}: mass inside the disc / its area {mean:.2} ({shares:.2?})");
        assert!(mean > 1.5, "{method:?}: {shares:?}");
    }
    let other = fx.join("breast1_image.nii.gz");
    let e = response::predict::<B>(dir.path(), &img, &other, &mask, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("share their grid"), "{e}");
}

#[test]
fn recipes_without_a_test_tumour_or_training_data_are_refused() {
    let base = Path::new("/data");
    let parse = |s: &str| ResponseRecipe::from_toml(s, base).unwrap_err().to_string();
    let case = |split: &str| format!("[[data.cases]]\nimage = \"a.nii.gz\"\nmask = \"m.nii.gz\"\nsplit = \"{split}\"\n");
    assert!(parse(&format!("task = \"response\"\n[data]\n{}[model]\narch = \"lenet5\"\n", case("train"))).contains("test case"));
    assert!(
        parse(&format!("task = \"response\"\n[data]\n{}[model]\narch = \"lenet5\"\n", case("test"))).contains("training and validation")
    );
    let ok = format!(
        "task = \"response\"\n[data]\nlog_ratio = [0.5, -0.5]\n{}{}{}[model]\narch = \"lenet5\"\n",
        case("test"),
        case("train"),
        case("val")
    );
    assert!(parse(&ok).contains("log_ratio"));
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("task = \"response\"\n[data]\n{}{}{}[model]\narch = \"lenet5\"\n", case("test"), case("train"), case("val"));
    let r = ResponseRecipe::from_toml(&missing, dir.path()).unwrap();
    let e = response::train::<AB>(&r, &dir.path().join("run"), &Default::default(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("a.nii.gz"), "{e}");
}

#[test]
fn the_stacked_auto_encoder_backbone_is_pre_trained_greedily_in_the_run() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let text = std::fs::read_to_string(recipes().join("tumour-response.toml"))
        .unwrap()
        .replace("arch = \"lenet5\"", "arch = \"sae\"\npretrain_pairs = 32\npretrain_epochs = 1")
        .replace("lesions = 60", "lesions = 8")
        .replace("epochs = 20", "epochs = 1")
        .replace("pairs = 256", "pairs = 32")
        .replace("pairs_per_slice = 10", "pairs_per_slice = 1")
        .replace("bootstrap = 1000", "bootstrap = 20");
    let recipe = ResponseRecipe::from_toml(&text, recipes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = response::train::<AB>(&recipe, dir.path(), &Default::default(), |_| {}).unwrap();
    assert_eq!(m.pairs, 11);
    assert!(m.change.metrics["mae"].value.is_finite());
    let log = std::fs::read_to_string(dir.path().join("pretrain/log.jsonl")).unwrap();
    assert!(dir.path().join("pretrain/autoencoder.mpk").is_file() && log.lines().count() >= 3, "{log}"); // two layers, then fine-tuning
}
