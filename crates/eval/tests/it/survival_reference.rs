#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! Survival metrics against scikit-survival and lifelines on GBSG2 (`fixtures/survival/survival_reference.py`).
use std::path::Path;

use vesalius_eval::survival::{
    CensoringDistribution, KaplanMeier, brier_scores, cumulative_dynamic_auc, harrell_c, integrated_brier, uno_c,
};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/survival"))
}

struct Gbsg2 {
    time: Vec<f64>,
    event: Vec<bool>,
    risk: Vec<f64>,
}

/// GBSG2 with the reference script's fixed risk formula: round(0.05 pnodes + 0.01 tsize − 0.001 progrec, 1).
fn gbsg2() -> Gbsg2 {
    let mut r = csv::Reader::from_path(fixtures().join("gbsg2.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |name: &str| h.iter().position(|c| c == name).unwrap();
    let (t, c, pn, ts, pr) = (col("time"), col("cens"), col("pnodes"), col("tsize"), col("progrec"));
    let mut g = Gbsg2 { time: vec![], event: vec![], risk: vec![] };
    for row in r.records() {
        let row = row.unwrap();
        let v = |i: usize| row[i].parse::<f64>().unwrap();
        g.time.push(v(t));
        g.event.push(v(c) == 1.0);
        g.risk.push((10.0 * (0.05 * v(pn) + 0.01 * v(ts) - 0.001 * v(pr))).round_ties_even() / 10.0);
    }
    g
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("survival_reference.json")).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn kaplan_meier_equals_lifelines() {
    let (g, r) = (gbsg2(), reference());
    let km = KaplanMeier::fit(&g.time, &g.event);
    for (t, s) in floats(&r["gbsg2_km_times"]).iter().zip(floats(&r["gbsg2_km"])) {
        assert!((km.at(*t) - s).abs() < 1e-12, "S({t}) = {} vs {s}", km.at(*t));
    }
}

#[test]
fn concordance_brier_and_auc_equal_scikit_survival() {
    let (g, r) = (gbsg2(), reference());
    let h = harrell_c(&g.time, &g.event, &g.risk).unwrap();
    let e = &r["harrell"];
    assert!((h.c - e["c"].as_f64().unwrap()).abs() < 1e-12, "{h:?}");
    let counts = [h.concordant, h.discordant, h.tied_risk, h.tied_time];
    let expected = ["concordant", "discordant", "tied_risk", "tied_time"].map(|k| e[k].as_u64().unwrap() as usize);
    assert_eq!(counts, expected);

    let cens = CensoringDistribution::fit(&g.time, &g.event);
    let uno = uno_c(&g.time, &g.event, &g.risk, &cens, r["uno_tau"].as_f64().unwrap()).unwrap();
    assert!((uno.c - r["uno"].as_f64().unwrap()).abs() < 1e-10, "Uno's C {} vs {}", uno.c, r["uno"]);

    let times = floats(&r["eval_times"]);
    let surv: Vec<Vec<f64>> = g.risk.iter().map(|x| times.iter().map(|t| (-(t / 2000.0) * (x - 0.5).exp()).exp()).collect()).collect();
    let b = brier_scores(&g.time, &g.event, &surv, &times, &cens).unwrap();
    for (a, e) in b.iter().zip(floats(&r["brier"])) {
        assert!((a - e).abs() < 1e-10, "Brier {a} vs {e}");
    }
    let ibs = integrated_brier(&g.time, &g.event, &surv, &times, &cens).unwrap();
    assert!((ibs - r["integrated_brier"].as_f64().unwrap()).abs() < 1e-10);

    let (auc, mean) = cumulative_dynamic_auc(&g.time, &g.event, &g.risk, &times, &cens).unwrap();
    for (a, e) in auc.iter().zip(floats(&r["td_auc"])) {
        assert!((a - e).abs() < 1e-10, "AUC {a} vs {e}");
    }
    assert!((mean - r["td_auc_mean"].as_f64().unwrap()).abs() < 1e-10, "mean AUC {mean}");

    // Higher risk means an earlier event: reversing the scores mirrors the index.
    let reversed: Vec<f64> = g.risk.iter().map(|x| -x).collect();
    let hr = harrell_c(&g.time, &g.event, &reversed).unwrap();
    assert!((hr.c - (1.0 - h.c)).abs() < 1e-12);
}
