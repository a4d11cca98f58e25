#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! The Cox model against lifelines and scikit-survival on the Rossi recidivism data
//! (`fixtures/survival/survival_reference.py`).
use std::path::Path;

use vesalius_prediction::cox::{CoxConfig, Ties, fit};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/survival"))
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("survival_reference.json")).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Rossi's features (in the reference's order), weeks and arrests.
fn rossi(features: &[String]) -> (Vec<Vec<f64>>, Vec<f64>, Vec<bool>) {
    let mut r = csv::Reader::from_path(fixtures().join("rossi.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |name: &str| h.iter().position(|c| c == name).unwrap();
    let cols: Vec<usize> = features.iter().map(|f| col(f)).collect();
    let (w, a) = (col("week"), col("arrest"));
    let (mut x, mut t, mut e) = (vec![], vec![], vec![]);
    for row in r.records() {
        let row = row.unwrap();
        x.push(cols.iter().map(|&c| row[c].parse::<f64>().unwrap()).collect());
        t.push(row[w].parse::<f64>().unwrap());
        e.push(&row[a] == "1");
    }
    (x, t, e)
}

#[test]
fn cox_coefficients_and_survival_equal_lifelines_and_scikit_survival() {
    let r = reference();
    let features: Vec<String> = r["rossi_features"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let (x, t, e) = rossi(&features);
    for (ties, l2, key, tol) in [
        (Ties::Efron, 0.0, "rossi_efron", 1e-6),
        (Ties::Breslow, 0.0, "rossi_breslow", 1e-5),
        (Ties::Breslow, 10.0, "rossi_ridge10_breslow", 1e-5),
    ] {
        let m = fit(&x, &t, &e, &CoxConfig { ties, l2 }).unwrap();
        for (name, (a, b)) in features.iter().zip(m.coefficients.iter().zip(floats(&r[key]))) {
            assert!((a - b).abs() < tol, "{key} {name}: {a} vs {b}");
        }
        if key == "rossi_efron" {
            assert!((m.log_likelihood - r["rossi_efron_loglik"].as_f64().unwrap()).abs() < 1e-6);
            let times = floats(&r["rossi_survival_times"]);
            for (i, expected) in r["rossi_survival_first3"].as_array().unwrap().iter().enumerate() {
                for (t, s) in times.iter().zip(floats(expected)) {
                    let got = m.survival(&x[i], *t);
                    assert!((got - s).abs() < 1e-6, "S({t} | subject {i}) = {got} vs {s}");
                }
            }
        }
    }
}

#[test]
fn collinear_columns_need_and_get_a_penalty() {
    let (x, t, e) = rossi(&["fin".into(), "age".into()]);
    let doubled: Vec<Vec<f64>> = x.iter().map(|r| vec![r[0], r[1], 2.0 * r[1]]).collect();
    let err = fit(&doubled, &t, &e, &CoxConfig::default()).unwrap_err().to_string();
    assert!(err.contains("L2 penalty"), "{err}");
    let m = fit(&doubled, &t, &e, &CoxConfig { ties: Ties::Efron, l2: 1.0 }).unwrap();
    assert!(m.coefficients.iter().all(|c| c.is_finite()));
}
