//! Metrics against values computed by hand and by scikit-learn's definitions.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use vesalius_eval::classification::{Targets, evaluate, point_metrics, roc_auc};

#[test]
fn auc_with_ties_matches_mann_whitney() {
    // sklearn.metrics.roc_auc_score([0,0,1,1], [0.1,0.4,0.35,0.8]) == 0.75
    assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
    // A tie between a positive and a negative counts one half: pairs (p,n) = 4, wins 3.5.
    assert_eq!(roc_auc(&[0.2, 0.5, 0.5, 0.9], &[false, false, true, true]), Some(0.875));
    assert_eq!(roc_auc(&[0.2, 0.5], &[true, true]), None);
}

#[test]
fn binary_metrics_by_hand() {
    // probabilities of class 1 as two columns; truth 1,1,1,0,0,0,0,0 (3 positives, 5 negatives)
    let p1 = [0.9f32, 0.7, 0.3, 0.6, 0.2, 0.1, 0.4, 0.05];
    let scores: Vec<Vec<f32>> = p1.iter().map(|&p| vec![1.0 - p, p]).collect();
    let t = Targets::Single(vec![1, 1, 1, 0, 0, 0, 0, 0]);
    let m = point_metrics(&scores, &t).unwrap();
    // predicted: 1,1,0,1,0,0,0,0 → tp 2, fn 1, fp 1, tn 4
    assert_eq!(m.accuracy, Some(6.0 / 8.0));
    assert_eq!(m.sensitivity, Some(2.0 / 3.0));
    assert_eq!(m.specificity, Some(4.0 / 5.0));
    assert_eq!(m.f1, Some(4.0 / 6.0));
    assert_eq!(m.balanced_accuracy, Some((2.0 / 3.0 + 0.8) / 2.0));
    // positives 0.9, 0.7, 0.3 vs negatives 0.6, 0.2, 0.1, 0.4, 0.05: wins 5 + 5 + 3 = 13 of 15.
    assert_eq!(m.auc, Some(13.0 / 15.0));
    // A single probability column gives the same answers.
    let single: Vec<Vec<f32>> = p1.iter().map(|&p| vec![p]).collect();
    assert_eq!(point_metrics(&single, &t).unwrap(), m);
}

#[test]
fn multiclass_macro_metrics_and_confusion() {
    let scores =
        vec![vec![0.8, 0.1, 0.1], vec![0.1, 0.8, 0.1], vec![0.1, 0.1, 0.8], vec![0.6, 0.3, 0.1], vec![0.2, 0.2, 0.6], vec![0.3, 0.6, 0.1]];
    let t = Targets::Single(vec![0, 1, 2, 1, 2, 1]);
    let r = evaluate(&scores, &t, 100, 3).unwrap();
    assert_eq!(r.task, "multiclass");
    assert_eq!(r.confusion, Some(vec![vec![1, 0, 0], vec![1, 2, 0], vec![0, 0, 2]]));
    assert!((r.metrics["accuracy"].value - 5.0 / 6.0).abs() < 1e-12);
    // recalls 1, 2/3, 1 → balanced accuracy 8/9
    assert!((r.metrics["balanced_accuracy"].value - 8.0 / 9.0).abs() < 1e-12);
    // F1 per class: 2/3, 4/5, 1 → macro 0.8222…
    assert!((r.metrics["f1"].value - (2.0 / 3.0 + 0.8 + 1.0) / 3.0).abs() < 1e-12);
    for (name, e) in &r.metrics {
        assert!(e.ci_low <= e.value + 1e-12 && e.value <= e.ci_high + 1e-12 || e.resamples == 0, "{name}: {e:?}");
    }
}

#[test]
fn multilabel_follows_medmnist() {
    let scores = vec![vec![0.9, 0.2], vec![0.4, 0.7], vec![0.6, 0.1], vec![0.1, 0.8]];
    let t = Targets::Multi(vec![vec![1, 0], vec![0, 1], vec![0, 0], vec![0, 1]]);
    let m = point_metrics(&scores, &t).unwrap();
    // label 0: predictions 1,0,1,0 vs 1,0,0,0 → 3/4; label 1: 0,1,0,1 vs 0,1,0,1 → 4/4.
    assert_eq!(m.accuracy, Some((0.75 + 1.0) / 2.0));
    assert_eq!(m.auc, Some(1.0));
}

#[test]
fn bad_shapes_are_errors() {
    assert!(point_metrics(&[], &Targets::Single(vec![])).is_err());
    assert!(point_metrics(&[vec![0.5, 0.5]], &Targets::Single(vec![0, 1])).is_err());
    assert!(point_metrics(&[vec![0.5, 0.5]], &Targets::Single(vec![4])).is_err());
}

#[test]
fn report_serialises_with_intervals() {
    let scores: Vec<Vec<f32>> = (0..50).map(|i| vec![(i as f32) / 50.0]).collect();
    let t = Targets::Single((0..50).map(|i| usize::from(i >= 25)).collect());
    let r = evaluate(&scores, &t, 500, 0).unwrap();
    assert_eq!(r.metrics["auc"].value, 1.0);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["task"], "binary");
    assert!(json["metrics"]["accuracy"]["ci_low"].as_f64().unwrap() > 0.8);
}
