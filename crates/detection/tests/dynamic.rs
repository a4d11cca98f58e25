#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! CNN + RNN over the frames of a dynamic series against the centre-point CNN on the time-mean image, at reduced
//! size (5 short epochs, one validation scan, no hard-negative mining): lesions that wash in are the findings,
//! lesions that wash out look the same on average.
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

fn run(arch: &str) -> vesalius_detection::evaluate::DetMetrics {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes/dynamic-2d.toml"));
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("arch = \"crnn\"", &format!("arch = \"{arch}\""))
        .replace("epochs = 30", "epochs = 5")
        .replace("iterations = 16", "iterations = 8")
        .replace("hard_negative_fraction = 0.25", "hard_negative_fraction = 0.0")
        .replace("    { id = \"itk_pd_shifted_b\", image = \"../fixtures/itk/BrainProtonDensitySliceShifted13x17y.png\" },\n", "");
    assert!(!text.contains("itk_pd_shifted_b") && !text.contains("hard_negative_fraction = 0.25"), "the reductions apply");
    let recipe = DetRecipe::from_toml(&text, &path.parent().unwrap().canonicalize().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = vesalius_detection::train::train::<AB>(
        &recipe,
        &RunDir::new(dir.path()),
        &Default::default(),
        &RunOptions { quiet: true, ..Default::default() },
        |_| {},
    )
    .unwrap();
    out.test.unwrap()
}

#[test]
fn frames_through_a_gru_beat_the_time_mean_image() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let crnn = run("crnn");
    let cnn = run("centre");
    // The same test scans and findings for both.
    assert_eq!(crnn.scans, cnn.scans);
    assert_eq!(crnn.froc.n_nodules, cnn.froc.n_nodules);
    eprintln!(
        "CRNN CPM {} F1 {}; CNN CPM {} F1 {}",
        crnn.froc.cpm, crnn.operating_point.f1.value, cnn.froc.cpm, cnn.operating_point.f1.value
    );
    // Measured at this size: CPM 0.543 (CRNN) against 0.124 (CNN).
    assert!(crnn.froc.cpm > cnn.froc.cpm + 0.25, "CRNN {} vs CNN {}", crnn.froc.cpm, cnn.froc.cpm);
}
