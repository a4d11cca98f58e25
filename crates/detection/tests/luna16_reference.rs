//! The LUNA16 evaluator against the committed reference of a port of `noduleCADEvaluationLUNA16.py`, on real
//! LIDC-IDRI radiologist marks (fixtures/lidc, made by fixtures/lidc/make_froc_reference.py).
#![allow(clippy::unwrap_used)]
use std::path::PathBuf;

use serde_json::Value;
use vesalius_detection::annotations::{read_luna_csv, read_scans};
use vesalius_detection::geometry::Frame;
use vesalius_eval::detection::{Finding, FrocOptions, Mark, froc};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/lidc").join(name)
}

fn findings(name: &str) -> Vec<Finding> {
    read_luna_csv(&fixture(name), Frame::Lps).unwrap().iter().map(|d| d.to_finding()).collect()
}

fn marks(name: &str) -> Vec<Mark> {
    read_luna_csv(&fixture(name), Frame::Lps).unwrap().iter().map(|d| d.to_mark()).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6
}

#[test]
fn froc_and_cpm_match_the_reference_on_lidc_readers() {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixture("froc_reference.json")).unwrap()).unwrap();
    let scans = read_scans(&fixture("scans.csv")).unwrap();
    let truth = findings("truth.csv");
    let excluded = findings("excluded.csv");
    let reader = marks("reader.csv");
    let readers = marks("readers.csv");
    let cases: [(&str, &[Mark], bool, usize); 5] = [
        ("reader_excluded_cap100", &reader, true, 100),
        ("reader_no_exclusion_cap100", &reader, false, 100),
        ("reader_no_exclusion_cap2", &reader, false, 2),
        ("readers_excluded_cap100", &readers, true, 100),
        ("readers_excluded_cap3", &readers, true, 3),
    ];
    for (name, m, with_excluded, cap) in cases {
        let r = &reference[name];
        let ex: &[Finding] = if with_excluded { &excluded } else { &[] };
        let c = froc(&scans, &truth, ex, m, &FrocOptions { max_marks: cap }).unwrap();
        assert_eq!(c.n_scans as u64, r["n_scans"].as_u64().unwrap(), "{name}");
        assert_eq!(c.n_nodules as u64, r["n_nodules"].as_u64().unwrap(), "{name}");
        assert_eq!(c.n_candidates as u64, r["n_candidates"].as_u64().unwrap(), "{name}");
        assert_eq!(c.n_detected as u64, r["n_detected"].as_u64().unwrap(), "{name}");
        let fps: Vec<f64> = r["fps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let sens: Vec<f64> = r["sens"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(c.fps.len(), fps.len(), "{name}: curve points");
        for k in 0..fps.len() {
            assert!(close(c.fps[k], fps[k]) && close(c.sensitivity[k], sens[k]), "{name} point {k}");
        }
        for (k, t) in r["thresholds"].as_array().unwrap().iter().enumerate() {
            match t.as_f64() {
                Some(v) => assert!(close(c.thresholds[k], v), "{name} threshold {k}"),
                None => assert_eq!(c.thresholds[k], f64::INFINITY),
            }
        }
        for (rate, s) in c.sensitivities() {
            let key = if rate.fract() == 0.0 { format!("{}", rate as i64) } else { format!("{rate}") };
            assert!(close(s, r["sensitivities"][&key].as_f64().unwrap()), "{name} at {key}");
        }
        assert!(close(c.cpm(), r["cpm"].as_f64().unwrap()), "{name}: cpm {} vs {}", c.cpm(), r["cpm"]);
    }
}

#[test]
fn bootstrap_over_scans_brackets_the_cpm() {
    let scans = read_scans(&fixture("scans.csv")).unwrap();
    let c = froc(&scans, &findings("truth.csv"), &[], &marks("reader.csv"), &FrocOptions::default()).unwrap();
    let (cpm, per_rate) = c.bootstrap(200, 0.95, 3);
    assert!((cpm.value - 0.78764).abs() < 1e-4, "{}", cpm.value);
    assert!(cpm.ci_low < cpm.value && cpm.value < cpm.ci_high, "{cpm:?}");
    // Over 200 scans the interval is a few points wide, not degenerate and not the whole range.
    assert!(cpm.ci_high - cpm.ci_low > 0.02 && cpm.ci_high - cpm.ci_low < 0.2, "{cpm:?}");
    assert_eq!(per_rate[6].value, 1.0);
    assert_eq!(cpm.resamples, 200);
}
