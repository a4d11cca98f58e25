//! Classic models and the MLP on a real feature table: LIDC-IDRI nodule malignancy from the radiologists' ratings
//! (fixtures/lidc/malignancy.csv), against scikit-learn on the same split.
#![allow(clippy::unwrap_used)]
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use vesalius_cadx::tabular::{TableRecipe, predict, train};

#[cfg(not(feature = "test-cuda"))]
type AB = burn::backend::Autodiff<burn::backend::Flex>;
#[cfg(feature = "test-cuda")]
type AB = burn::backend::Autodiff<burn::backend::Cuda>;
type B = <AB as burn::tensor::backend::AutodiffBackend>::InnerBackend;

/// The backend's random generator is process-wide: the MLP's initialisation must not interleave with another run.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn recipe() -> TableRecipe {
    let path = root().join("recipes/lidc-malignancy.toml");
    let mut r = TableRecipe::from_file(&path).unwrap();
    r.eval.bootstrap = 200;
    r
}

#[test]
fn lidc_malignancy_every_model_on_one_patient_split() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let m = train::<AB>(&recipe(), dir.path(), &device).unwrap();
    assert_eq!(m.set, "test");
    assert_eq!((m.n_patients, m.n_rows), (127, 246));
    // measured test AUCs (docs/RADIOMICS.md): logistic 0.962, svm-linear 0.960, svm-rbf 0.975, knn 0.976,
    // random forest 0.959, MLP 0.965
    let floor = BTreeMap::from([
        ("logistic", 0.955),
        ("svm-linear", 0.955),
        ("svm-rbf", 0.97),
        ("knn", 0.97),
        ("random-forest", 0.95),
        ("mlp", 0.955),
    ]);
    for (name, r) in &m.models {
        let auc = &r.metrics["auc"];
        assert!(auc.value >= floor[name.as_str()], "{name}: AUC {}", auc.value);
        assert!(auc.ci_low < auc.value && auc.value < auc.ci_high, "{name}: {auc:?}");
        assert_eq!(r.bootstrap_unit, "patients");
    }
    // scikit-learn on the same rows (fixtures/lidc/sklearn_malignancy_reference.py) within 0.01
    let sk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("fixtures/lidc/sklearn_malignancy_reference.json")).unwrap()).unwrap();
    for (name, auc) in sk["auc"].as_object().unwrap() {
        let ours = m.models[name].metrics["auc"].value;
        assert!((ours - auc.as_f64().unwrap()).abs() <= 0.01, "{name}: ours {ours}, scikit-learn {auc}");
    }

    // no patient in two splits; the split sizes scikit-learn was given
    let splits = std::fs::read_to_string(dir.path().join("splits.csv")).unwrap();
    let mut of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in splits.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        of.entry(f[1].into()).or_default().insert(f[2].into());
        *counts.entry(f[2].into()).or_default() += 1;
    }
    assert!(of.values().all(|s| s.len() == 1));
    assert_eq!(counts["train"], sk["n_train"].as_u64().unwrap() as usize);

    // the stored models (the MLP's weights included) give back the test probabilities
    let pred = predict::<B>(dir.path(), &root().join("fixtures/lidc/malignancy.csv"), &device).unwrap();
    let stored = std::fs::read_to_string(dir.path().join("predictions-test.csv")).unwrap();
    let header: Vec<&str> = stored.lines().next().unwrap().split(',').collect();
    let mut by: BTreeMap<(String, String), f64> = BTreeMap::new();
    for line in pred.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        by.insert((f[0].into(), f[1].into()), f[3].parse().unwrap());
    }
    let mut checked = 0;
    for line in stored.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        for (k, col) in header.iter().enumerate().skip(3) {
            let model = col.split(':').next().unwrap();
            let want: f64 = f[k].parse().unwrap();
            assert!((by[&(f[0].to_string(), model.to_string())] - want).abs() < 2e-6, "row {} {model}", f[0]);
            checked += 1;
        }
    }
    assert_eq!(checked, 246 * 6);
}

#[test]
fn bad_tables_and_recipes_are_refused_by_name() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    let rows: String = (0..60).map(|i| format!("{i},{},{}\n", i as f64 * 0.1, ["a", "b", "c"][i % 3])).collect();
    std::fs::write(&csv, format!("id,x,grade\n{rows}")).unwrap();
    let text = |label: &str, arch: &str| {
        format!(
            "[data]\ntable = \"t.csv\"\nlabel = \"{label}\"\npatient = \"id\"\n[split]\nval = 0.34\ntest = 0.34\n[model]\narch = \"{arch}\"\n"
        )
    };
    let err = |t: String| {
        let r = TableRecipe::from_toml(&t, dir.path()).and_then(|r| train::<AB>(&r, &dir.path().join("run"), &Default::default()));
        r.unwrap_err().to_string()
    };
    assert!(err(text("class", "logistic")).contains("no column \"class\""));
    assert!(err(text("grade", "svm-rbf")).contains("two classes"));
    assert!(err(text("grade", "xgboost")).contains("unknown model \"xgboost\" (known: logistic, svm-linear"));
    std::fs::write(&csv, format!("id,x,grade\n{rows}61,,b\n")).unwrap();
    let e = err(text("grade", "knn"));
    assert!(e.contains("t.csv") && e.contains("row 62"), "{e}");
}
