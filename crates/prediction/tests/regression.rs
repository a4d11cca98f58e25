#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! Regression recipes end to end on real tables: continuous (ACTG 175 CD4 response, checked against scikit-learn on
//! the same split), quantile and ordinal (LIDC malignancy levels) targets, re-evaluation, prediction, bad input.
use std::path::Path;

use vesalius_prediction::regression::{self, RegressionRecipe};

#[cfg(not(feature = "test-cuda"))]
type B = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type B = burn::backend::Cuda;
type AB = burn::backend::Autodiff<B>;

/// burn's random generator is process-wide: tests that train networks take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn recipe(name: &str, edit: impl Fn(String) -> String) -> RegressionRecipe {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes"));
    let text = edit(std::fs::read_to_string(dir.join(name)).unwrap());
    RegressionRecipe::from_toml(&text, dir).unwrap()
}

fn csv_column(path: &Path, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let c = lines.next().unwrap().split(',').position(|h| h == name).unwrap();
    lines.map(|l| l.split(',').nth(c).unwrap().to_string()).collect()
}

#[test]
fn actg175_ridge_and_knn_equal_scikit_learn_on_the_same_split() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let r = recipe("actg175-cd4.toml", |t| t.replace("loss = \"huber\"", "loss = \"mse\"").replace("steps = 500", "steps = 50"));
    let dir = tempfile::tempdir().unwrap();
    let m = regression::train::<AB>(&r, dir.path(), &Default::default()).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("../../../fixtures/regression/actg175_sklearn_reference.json")).unwrap();
    let rows: Vec<u64> = csv_column(&dir.path().join("predictions-test.csv"), "row").iter().map(|v| v.parse().unwrap()).collect();
    let ref_rows: Vec<u64> = reference["test_rows"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(rows, ref_rows, "the split the reference was computed on");
    for (model, tol) in [("linear", 1e-4), ("knn", 1e-4)] {
        let ours: Vec<f64> = csv_column(&dir.path().join("predictions-test.csv"), model).iter().map(|v| v.parse().unwrap()).collect();
        let theirs = reference[model]["predictions"].as_array().unwrap();
        for (a, b) in ours.iter().zip(theirs) {
            assert!((a - b.as_f64().unwrap()).abs() < tol, "{model}: {a} vs {b}");
        }
    }
    // SVR (smartcore's solver vs libsvm) and the forest (different trees) agree in their scores, not exactly.
    let mae = |k: &str| m.models[k].metrics["mae"].value;
    let r2 = |k: &str| m.models[k].metrics["r2"].value;
    assert!((mae("svr") - reference["svr"]["mae"].as_f64().unwrap()).abs() < 0.1, "{}", mae("svr"));
    assert!((r2("random-forest") - reference["random-forest"]["r2"].as_f64().unwrap()).abs() < 0.03, "{}", r2("random-forest"));
    // smartcore's linear-kernel SVR stops short of libsvm's solution: MAE 89.4 against 83.6, R² 0.349 against 0.376
    assert!((mae("svr-linear") - reference["svr-linear"]["mae"].as_f64().unwrap()).abs() < 6.5, "{}", mae("svr-linear"));
    assert!((r2("svr-linear") - reference["svr-linear"]["r2"].as_f64().unwrap()).abs() < 0.03, "{}", r2("svr-linear"));
    assert!((r2("linear") - 0.3751).abs() < 1e-3 && (mae("knn") - 98.5597).abs() < 1e-3);
    assert_eq!((m.n_patients, m.n_rows, m.bootstrap_unit.as_str()), (428, 428, "patients")); // ⌈0.2 · 2139⌉
    for (k, rep) in &m.models {
        let e = &rep.metrics["r2"];
        assert!(e.ci_low < e.value && e.value < e.ci_high && e.value > 0.15, "{k}: {e:?}");
    }
}

#[test]
fn huber_networks_reevaluate_exactly_and_predict_new_tables() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let r = recipe("actg175-cd4.toml", |t| {
        t.replace("arch = [\"linear\", \"svr\", \"svr-linear\", \"knn\", \"random-forest\", \"mlp\"]", "arch = [\"linear\", \"mlp\"]")
    });
    let dir = tempfile::tempdir().unwrap();
    let m = regression::train::<AB>(&r, dir.path(), &Default::default()).unwrap();
    for k in ["linear", "mlp"] {
        assert!(m.models[k].metrics["r2"].value > 0.3, "{k}: {:?}", m.models[k].metrics);
    }
    assert!(dir.path().join("net-linear.mpk").is_file() && dir.path().join("net-mlp.mpk").is_file());
    let written = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
    regression::evaluate::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("metrics.json")).unwrap(), written);
    let table = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/survival/ACTG175.csv"));
    let csv = regression::predict::<B>(dir.path(), table, &Default::default()).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 2139);
    // The test rows' predictions equal those of the evaluation.
    let test_pred = csv_column(&dir.path().join("predictions-test.csv"), "mlp");
    let test_rows = csv_column(&dir.path().join("predictions-test.csv"), "row");
    let line = csv.lines().find(|l| l.starts_with(&format!("{},mlp,", test_rows[0]))).unwrap();
    assert_eq!(line.split(',').nth(2).unwrap(), test_pred[0]);
}

#[test]
fn quantile_networks_cover_their_nominal_interval() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let r = recipe("actg175-cd4.toml", |t| {
        t.replace("arch = [\"linear\", \"svr\", \"svr-linear\", \"knn\", \"random-forest\", \"mlp\"]", "arch = \"mlp\"")
            .replace("loss = \"huber\"", "loss = \"quantile\"\nquantiles = [0.1, 0.5, 0.9]")
    });
    let dir = tempfile::tempdir().unwrap();
    let m = regression::train::<AB>(&r, dir.path(), &Default::default()).unwrap();
    let metrics = &m.models["mlp"].metrics;
    let cover = metrics["coverage@0.1-0.9"].value;
    assert!((0.7..=0.9).contains(&cover), "80 % interval covers {cover}");
    assert!(metrics["pinball@0.1"].value < metrics["pinball@0.5"].value, "{metrics:?}");
    let lo: Vec<f64> = csv_column(&dir.path().join("predictions-test.csv"), "mlp:q0.1").iter().map(|v| v.parse().unwrap()).collect();
    let mid: Vec<f64> = csv_column(&dir.path().join("predictions-test.csv"), "mlp").iter().map(|v| v.parse().unwrap()).collect();
    let hi: Vec<f64> = csv_column(&dir.path().join("predictions-test.csv"), "mlp:q0.9").iter().map(|v| v.parse().unwrap()).collect();
    assert!(lo.iter().zip(&mid).zip(&hi).all(|((a, b), c)| a <= b && b <= c), "quantiles do not cross");
}

#[test]
fn ordinal_levels_are_predicted_by_cumulative_links() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let r = recipe("lidc-malignancy-levels.toml", |t| t.replace("trees = 200", "trees = 40"));
    let dir = tempfile::tempdir().unwrap();
    let m = regression::train::<AB>(&r, dir.path(), &Default::default()).unwrap();
    assert_eq!(m.bootstrap_unit, "patients");
    assert!(m.n_rows > m.n_patients, "nodules of one patient stay together");
    for (k, rep) in &m.models {
        let kappa = rep.metrics["quadratic_kappa"].value;
        assert!(kappa > 0.6, "{k}: κ {kappa}");
    }
    let table = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/lidc/malignancy_levels.csv"));
    let csv = regression::predict::<B>(dir.path(), table, &Default::default()).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(header, ["row", "model", "prediction", "p(1)", "p(2)", "p(3)", "p(4)", "p(5)"]);
    for line in csv.lines().skip(1).filter(|l| l.contains(",mlp,") || l.contains(",linear,")) {
        let cells: Vec<&str> = line.split(',').collect();
        let p: Vec<f64> = cells[3..].iter().map(|v| v.parse().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{line}");
        assert!(["1", "2", "3", "4", "5"].contains(&cells[2]));
    }
}

#[test]
fn bad_recipes_and_tables_are_named() {
    let base = Path::new("/data");
    let parse = |body: &str| RegressionRecipe::from_toml(&format!("task = \"regression\"\n{body}"), base).unwrap_err().to_string();
    let data = "[data]\nkind = \"table\"\npath = \"t.csv\"\ntarget = \"y\"\n";
    assert!(parse(&format!("{data}[model]\narch = \"mlp\"\nloss = \"quantile\"\nquantiles = [0.9, 0.1]")).contains("quantiles"));
    assert!(parse(&format!("{data}[model]\narch = [\"knn\", \"knn\"]")).contains("each once"));
    assert!(parse(&format!("{data}target_type = \"ordinal\"\n[model]\narch = \"mlp\"\nloss = \"huber\"")).contains("ordinal"));
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t.csv");
    std::fs::write(&table, "id,x,y\n1,0.5,1\n2,0.7,x\n3,0.1,2\n").unwrap();
    let r = RegressionRecipe::from_toml(&format!("task = \"regression\"\n{data}[model]\narch = \"linear\""), dir.path()).unwrap();
    let e = regression::train::<AB>(&r, &dir.path().join("run"), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("t.csv") && e.contains("row 3") && e.contains("\"y\""), "{e}");
    let r = RegressionRecipe::from_toml(
        &format!("task = \"regression\"\n{data}target_type = \"ordinal\"\nlevels = [\"1\", \"2\"]\n[model]\narch = \"linear\""),
        dir.path(),
    )
    .unwrap();
    let e = regression::train::<AB>(&r, &dir.path().join("run"), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("\"x\" is not one of the levels"), "{e}");
}
