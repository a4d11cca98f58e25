#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! Survival recipes end to end on real tables: fitting, the test evaluation, re-evaluation, prediction, bad input.
use std::path::Path;

use vesalius_prediction::recipe::SurvivalRecipe;

fn recipes() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes"))
}

#[test]
fn gbsg2_cox_fits_scores_reevaluates_and_predicts() {
    let recipe = SurvivalRecipe::from_file(&recipes().join("gbsg2-cox.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (model, m) = vesalius_prediction::train::train(&recipe, dir.path()).unwrap();
    assert_eq!(model.features.len(), 9); // six numeric columns, horTh and menostat one dummy each, tgrade two
    assert_eq!((m.set.as_str(), m.patients, m.bootstrap_unit.as_str()), ("test", 206, "patients")); // ⌈0.3 · 686⌉, one row each
    for e in [&m.c_index, &m.uno_c, &m.td_auc_mean] {
        assert!(e.ci_low < e.value && e.value < e.ci_high && e.value > 0.6, "{e:?}");
    }
    assert!(m.integrated_brier.value < 0.25, "{:?}", m.integrated_brier);
    // More positive nodes, higher risk: the known direction of the strongest GBSG2 predictor.
    let pnodes = model.features.iter().position(|f| f == "pnodes").unwrap();
    assert!(model.cox.coefficients[pnodes] > 0.0);

    // Re-evaluation gives the same file; prediction follows the risk.
    let written = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
    vesalius_prediction::evaluate::evaluate(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("metrics.json")).unwrap(), written);
    let (rows, times) = vesalius_prediction::infer::predict(dir.path(), &recipe.data.path).unwrap();
    assert_eq!((rows.len(), times, rows[0].2.len()), (686, vec![365.0, 730.0, 1095.0, 1460.0], 4));
    let (low, high) =
        rows.iter().fold((&rows[0], &rows[0]), |(lo, hi), r| (if r.1 < lo.1 { r } else { lo }, if r.1 > hi.1 { r } else { hi }));
    assert!(low.2.iter().zip(&high.2).all(|(a, b)| a > b), "the lowest risk survives longer at every time");
    assert!(rows.iter().all(|r| r.2.windows(2).all(|w| w[1] <= w[0])), "survival curves never rise");

    // Another recipe in the same folder is refused.
    let other = SurvivalRecipe { seed: 1, ..recipe.clone() };
    let e = vesalius_prediction::train::train(&other, dir.path()).unwrap_err().to_string();
    assert!(e.contains("another recipe"), "{e}");
}

#[test]
fn bad_tables_name_the_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let recipe = |path: &Path| {
        SurvivalRecipe::from_toml(
            &format!(
                "task = \"survival\"\n[data]\nkind = \"table\"\npath = {path:?}\ntime = \"t\"\nevent = \"e\"\n[model]\narch = \"cox\"\n"
            ),
            dir.path(),
        )
        .unwrap()
    };
    let missing = write("missing.csv", "t,e,age\n5,1,50\n6,0,\n7,1,40\n");
    let e = vesalius_prediction::train::train(&recipe(&missing), &dir.path().join("r1")).unwrap_err().to_string();
    assert!(e.contains("row 3") && e.contains("\"age\""), "{e}");
    let events = write("events.csv", "t,e,age\n5,1,50\n6,2,45\n7,1,40\n");
    let e = vesalius_prediction::train::train(&recipe(&events), &dir.path().join("r2")).unwrap_err().to_string();
    assert!(e.contains("row 3") && e.contains("1 (event) or 0 (censored)"), "{e}");
    let no_column = write("cols.csv", "time,e,age\n5,1,50\n");
    let e = vesalius_prediction::train::train(&recipe(&no_column), &dir.path().join("r3")).unwrap_err().to_string();
    assert!(e.contains("no column \"t\""), "{e}");
}
