#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! Volume classification with the recurrent family: a CNN + bidirectional LSTM over axial slices and a 3D CNN find
//! lesions inserted into cubes of the real MNI152 brain, tested on a slab of the brain neither was trained on.
use std::path::Path;

use vesalius_cadx::volumes::{self, VolumeRecipe};

type B = burn::backend::Flex;
type AB = burn::backend::Autodiff<B>;

fn recipe(edit: impl Fn(String) -> String) -> VolumeRecipe {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes"));
    VolumeRecipe::from_toml(&edit(std::fs::read_to_string(dir.join("lesion-volumes.toml")).unwrap()), dir).unwrap()
}

#[test]
fn cubes_are_balanced_standardised_and_reproducible() {
    let r = recipe(|t| t.replace("cases = [1024, 128, 256]", "cases = [8, 4, 6]"));
    let [tr, va, te] = volumes::cubes(&r).unwrap();
    assert_eq!((tr.data.len(), va.data.len(), te.data.len()), (8, 4, 6));
    assert_eq!(te.label, vec![0, 1, 0, 1, 0, 1]);
    for c in tr.data.iter().chain(&te.data) {
        assert_eq!(c.len(), 24 * 24 * 24);
        let mean = c.iter().sum::<f32>() / c.len() as f32;
        assert!(mean.abs() < 1e-3);
    }
    assert_eq!(volumes::cubes(&r).unwrap()[2], te);
    let bad = r.data.clone();
    let mut r2 = r.clone();
    r2.data = vesalius_cadx::volumes::VolumeData { side: 200, ..bad };
    assert!(r2.validate().is_err());
}

#[test]
fn the_slice_sequence_network_and_the_3d_network_find_lesions_in_an_unseen_slab() {
    // brighter lesions than the recipe's, so that a few epochs on few cubes suffice
    let r = recipe(|t| {
        t.replace("cases = [1024, 128, 256]", "cases = [512, 64, 128]")
            .replace("contrast = [3.0, 5.0]", "contrast = [4.0, 6.0]")
            .replace("diameter_mm = [8.0, 14.0]", "diameter_mm = [10.0, 16.0]")
            .replace("epochs = 20", "epochs = 12")
            .replace("lr = 1e-3", "lr = 2e-3")
            .replace("bootstrap = 1000", "bootstrap = 200")
    });
    let dir = tempfile::tempdir().unwrap();
    let mut epochs = 0;
    let m = volumes::train::<AB>(&r, dir.path(), &Default::default(), |_, _| epochs += 1).unwrap();
    assert_eq!(epochs, 24);
    assert_eq!(m.n, 128);
    for (k, rep) in &m.models {
        let auc = &rep.metrics["auc"];
        eprintln!("{k}: AUC {:.3} [{:.3}, {:.3}]", auc.value, auc.ci_low, auc.ci_high);
        assert!(auc.value > 0.9 && auc.ci_low < auc.value, "{k}: {auc:?}"); // 0.999 (3D CNN) and 0.980 (CNN + RNN) measured
    }
    let written = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
    volumes::evaluate::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("metrics.json")).unwrap(), written);
    assert!(dir.path().join("crnn/checkpoints/state.json").is_file() && dir.path().join("cnn3d/checkpoints/state.json").is_file());
}
