#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! Longitudinal survival on the real pbc2 visits: a recurrent network over each patient's visits against a Cox model
//! on the first visit at landmark times; missing values carried forward; no visit after a prediction point used.
use std::path::Path;

use vesalius_prediction::longitudinal::{self, Patient};
use vesalius_prediction::recipe::SurvivalRecipe;
use vesalius_prediction::table::read_csv;

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

#[test]
fn pbc2_rnn_scores_landmarks_beside_the_first_visit_cox_model() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let text = std::fs::read_to_string(recipes().join("pbc2-rnn.toml"))
        .unwrap()
        .replace("epochs = 40", "epochs = 12")
        .replace("bootstrap = 1000", "bootstrap = 200");
    let recipe = SurvivalRecipe::from_toml(&text, recipes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut epochs = 0;
    let m = longitudinal::train::<AB>(&recipe, dir.path(), &Default::default(), |_| epochs += 1).unwrap();
    assert_eq!(epochs, 12);
    assert_eq!((m.patients, m.visits), (94, 635)); // ⌈0.3 · 312⌉ patients and their visits
    let at_risk: Vec<usize> = m.landmarks.iter().map(|l| l.patients).collect();
    assert_eq!(at_risk, vec![94, 83, 66, 52]);
    for l in &m.landmarks {
        for e in [&l.c_index_rnn, &l.c_index_cox_first_visit] {
            assert!(e.ci_low < e.value && e.value < e.ci_high && e.value > 0.6, "landmark {}: {e:?}", l.landmark);
        }
        assert!((l.difference.value - (l.c_index_rnn.value - l.c_index_cox_first_visit.value)).abs() < 1e-12);
    }
    // The first-visit Cox model ranks the patients well from the start; the network, reading later visits, keeps up.
    assert!(m.landmarks[0].c_index_cox_first_visit.value > 0.78, "{:?}", m.landmarks[0]);
    let later: f64 = m.landmarks[1..].iter().map(|l| l.difference.value).sum::<f64>() / 3.0;
    assert!(later > -0.02, "mean difference after enrolment {later}");
    // Re-evaluation reproduces the metrics; prediction gives one row per patient.
    let written = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
    longitudinal::evaluate::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("metrics.json")).unwrap(), written);
    let csv = longitudinal::predict::<B>(dir.path(), &recipe.data.path, &Default::default()).unwrap();
    assert_eq!(csv.lines().count(), 313);
    assert!(csv.starts_with("id,visits,last_visit,risk,cox_first_visit_risk\n"));
}

#[test]
fn a_prediction_point_reads_no_later_visit() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let text = std::fs::read_to_string(recipes().join("pbc2-rnn.toml")).unwrap().replace("epochs = 40", "epochs = 1");
    let recipe = SurvivalRecipe::from_toml(&text, recipes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    longitudinal::train::<AB>(&recipe, dir.path(), &Default::default(), |_| {}).unwrap();
    let (recipe, model) = longitudinal::read_run(dir.path()).unwrap();
    let net = longitudinal::load_net::<B>(dir.path(), &recipe, &model, &Default::default()).unwrap();
    let mut raw = read_csv(&recipe.data.path).unwrap();
    let (patients, _) = longitudinal::read_visits(&recipe, &mut raw, true).unwrap();
    let p = patients.iter().find(|p| p.rows.len() >= 6).unwrap();
    let cut = Patient { rows: p.rows[..3].to_vec(), visit_times: p.visit_times[..3].to_vec(), ..p.clone() };
    let mut edited = raw.clone();
    for &r in &p.rows[3..] {
        // later visits changed beyond recognition
        edited.rows[r].iter_mut().skip(12).take(8).for_each(|c| *c = "999".into()); // serBilir … histologic
    }
    let full = model.risks(&net, &raw, &[(p, 3), (p, p.rows.len())], &Default::default()).unwrap();
    let truncated = model.risks(&net, &edited, &[(&cut, 3)], &Default::default()).unwrap();
    assert!((full[0] - truncated[0]).abs() < 1e-5, "{full:?} {truncated:?}");
    assert!((full[0] - full[1]).abs() > 1e-6, "later visits do change the risk at the last visit");
}

#[test]
fn visits_are_grouped_carried_forward_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("v.csv");
    std::fs::write(&table, "id,t,e,vt,x\na,5,1,2,NA\na,5,1,0,1.5\na,5,1,4,NA\nb,3,0,0,NA\nb,3,0,1,2.0\n").unwrap();
    let recipe = |extra: &str| {
        SurvivalRecipe::from_toml(
            &format!("task = \"survival\"\n[data]\nkind = \"table\"\npath = \"v.csv\"\ntime = \"t\"\nevent = \"e\"\nid = \"id\"\nvisit_time = \"vt\"\n{extra}[model]\narch = \"rnn\"\n"),
            dir.path(),
        )
        .unwrap()
    };
    let mut raw = read_csv(&table).unwrap();
    let (patients, features) = longitudinal::read_visits(&recipe("missing = \"locf\"\n"), &mut raw, true).unwrap();
    assert_eq!(features, vec!["x"]);
    assert_eq!(patients[0].visit_times, vec![0.0, 2.0, 4.0]);
    let x: Vec<&str> = patients[0].rows.iter().map(|&r| raw.rows[r][4].as_str()).collect();
    assert_eq!(x, vec!["1.5", "1.5", "1.5"], "carried forward in visit order");
    assert_eq!(raw.rows[patients[1].rows[0]][4], "NA", "nothing to carry at a first visit: left for the training median");
    std::fs::write(&table, "id,t,e,vt,x\na,5,1,0,1\na,6,1,2,1\n").unwrap();
    let e = longitudinal::read_visits(&recipe(""), &mut read_csv(&table).unwrap(), true).unwrap_err().to_string();
    assert!(e.contains("row 3") && e.contains("patient a"), "{e}");
    std::fs::write(&table, "id,t,e,vt,x\na,5,1,0,1\na,5,1,7,1\n").unwrap();
    let e = longitudinal::read_visits(&recipe(""), &mut read_csv(&table).unwrap(), true).unwrap_err().to_string();
    assert!(e.contains("row 3") && e.contains("visit after"), "{e}");
    let bad = SurvivalRecipe::from_toml(
        "task = \"survival\"\n[data]\nkind = \"table\"\npath = \"v.csv\"\ntime = \"t\"\nevent = \"e\"\nvisit_time = \"vt\"\n[model]\narch = \"cox\"\n",
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("visit_time") && bad.contains("rnn"), "{bad}");
}
