#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! Survival recipes end to end on real tables: fitting, the test evaluation, re-evaluation, prediction, bad input;
//! survival and regression from a manifest of images with a known answer.
use std::path::Path;

use vesalius_prediction::recipe::SurvivalRecipe;

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
fn gbsg2_cox_fits_scores_reevaluates_and_predicts() {
    let recipe = SurvivalRecipe::from_file(&recipes().join("gbsg2-cox.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (model, m) = vesalius_prediction::train::train::<AB>(&recipe, dir.path(), &Default::default(), |_| {}).unwrap();
    assert_eq!(model.features.len(), 9); // six numeric columns, horTh and menostat one dummy each, tgrade two
    assert_eq!((m.set.as_str(), m.patients, m.bootstrap_unit.as_str()), ("test", 206, "patients")); // ⌈0.3 · 686⌉, one row each
    for e in [&m.c_index, &m.uno_c, &m.td_auc_mean] {
        assert!(e.ci_low < e.value && e.value < e.ci_high && e.value > 0.6, "{e:?}");
    }
    assert!(m.integrated_brier.value < 0.25, "{:?}", m.integrated_brier);
    // Calibrated on unseen patients: in each fifth by prediction, the Kaplan–Meier survival at the middle time lies
    // within 0.08 of the mean prediction (0.05 measured), and the fifths are ordered.
    assert_eq!((m.calibration_time, m.calibration.len()), (1095.0, 5));
    for b in &m.calibration {
        assert!((b.predicted - b.observed).abs() < 0.08, "{:?}", m.calibration);
    }
    assert!(m.calibration.windows(2).all(|w| w[1].predicted >= w[0].predicted));
    // More positive nodes, higher risk: the known direction of the strongest GBSG2 predictor.
    let pnodes = model.features.iter().position(|f| f == "pnodes").unwrap();
    assert!(model.cox.as_ref().unwrap().coefficients[pnodes] > 0.0);

    // Re-evaluation gives the same file; prediction follows the risk.
    let written = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
    vesalius_prediction::evaluate::evaluate::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("metrics.json")).unwrap(), written);
    let (rows, times) = vesalius_prediction::infer::predict::<B>(dir.path(), &recipe.data.path, &Default::default()).unwrap();
    assert_eq!((rows.len(), times, rows[0].2.len()), (686, vec![365.0, 730.0, 1095.0, 1460.0], 4));
    let (low, high) =
        rows.iter().fold((&rows[0], &rows[0]), |(lo, hi), r| (if r.1 < lo.1 { r } else { lo }, if r.1 > hi.1 { r } else { hi }));
    assert!(low.2.iter().zip(&high.2).all(|(a, b)| a > b), "the lowest risk survives longer at every time");
    assert!(rows.iter().all(|r| r.2.windows(2).all(|w| w[1] <= w[0])), "survival curves never rise");

    // Another recipe in the same folder is refused.
    let other = SurvivalRecipe { seed: 1, ..recipe.clone() };
    let e = vesalius_prediction::train::train::<AB>(&other, dir.path(), &Default::default(), |_| {}).unwrap_err().to_string();
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
    let e = vesalius_prediction::train::train::<AB>(&recipe(&missing), &dir.path().join("r1"), &Default::default(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 3") && e.contains("\"age\""), "{e}");
    let events = write("events.csv", "t,e,age\n5,1,50\n6,2,45\n7,1,40\n");
    let e = vesalius_prediction::train::train::<AB>(&recipe(&events), &dir.path().join("r2"), &Default::default(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 3") && e.contains("1 (event) or 0 (censored)"), "{e}");
    let no_column = write("cols.csv", "time,e,age\n5,1,50\n");
    let e = vesalius_prediction::train::train::<AB>(&recipe(&no_column), &dir.path().join("r3"), &Default::default(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("no column \"t\""), "{e}");
}

#[test]
fn deepsurv_trains_on_the_engine_and_predicts_with_its_network() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let text = std::fs::read_to_string(recipes().join("metabric-deepsurv.toml")).unwrap().replace("epochs = 50", "epochs = 4");
    let recipe = SurvivalRecipe::from_toml(&text, recipes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut epochs = 0;
    let (model, m) = vesalius_prediction::train::train::<AB>(&recipe, dir.path(), &Default::default(), |_| epochs += 1).unwrap();
    assert_eq!(epochs, 4);
    assert!(model.cox.is_none() && !model.baseline_times.is_empty());
    assert!(dir.path().join("model.mpk").is_file() && dir.path().join("checkpoints/state.json").is_file());
    assert!(m.c_index.value > 0.6, "{:?}", m.c_index);
    let (rows, _) = vesalius_prediction::infer::predict::<B>(dir.path(), &recipe.data.path, &Default::default()).unwrap();
    assert_eq!(rows.len(), 1904);
    // The run resumes only with its own recipe.
    let other = SurvivalRecipe::from_toml(&text.replace("dropout = 0.1", "dropout = 0.3"), recipes()).unwrap();
    let e = vesalius_prediction::train::train::<AB>(&other, dir.path(), &Default::default(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("model.dropout"), "{e}");
}

#[test]
fn logistic_hazard_gives_survival_curves_from_its_intervals() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let text = std::fs::read_to_string(recipes().join("metabric-logistic-hazard.toml")).unwrap().replace("epochs = 50", "epochs = 15");
    let recipe = SurvivalRecipe::from_toml(&text, recipes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (model, m) = vesalius_prediction::train::train::<AB>(&recipe, dir.path(), &Default::default(), |_| {}).unwrap();
    assert_eq!(model.cuts.len(), 20);
    assert!(model.cuts.windows(2).all(|w| w[1] > w[0]));
    assert!(m.c_index.value > 0.55, "{:?}", m.c_index);
    let (rows, times) = vesalius_prediction::infer::predict::<B>(dir.path(), &recipe.data.path, &Default::default()).unwrap();
    assert_eq!(times, vec![60.0, 120.0, 180.0]);
    assert!(rows.iter().all(|r| r.2.windows(2).all(|w| w[1] <= w[0]) && r.2.iter().all(|s| (0.0..=1.0).contains(s))));
}

#[test]
fn support_cox_matches_the_published_proportional_hazards_figure() {
    // DeepSurv's paper reports CPH 0.583 on its own split of this file; the recipe's split gives 0.5785.
    let mut recipe = SurvivalRecipe::from_file(&recipes().join("support-cox.toml")).unwrap();
    recipe.eval.bootstrap = Some(50);
    let dir = tempfile::tempdir().unwrap();
    let (model, m) = vesalius_prediction::train::train::<AB>(&recipe, dir.path(), &Default::default(), |_| {}).unwrap();
    assert_eq!((model.features.len(), m.patients, m.events), (14, 1775, 1205));
    assert!((m.c_index.value - 0.5785).abs() < 5e-4, "{:?}", m.c_index);
    assert!((m.c_index.value - 0.583).abs() < 0.01);
}

/// A manifest of 40×40 PNG images of discs (radius 3–12 pixels, noisy background) whose hazard grows with the
/// radius: `T ~ Exp(0.1 · e^{β·z})`, `z` the standardised radius, β = 1.2, censored uniformly on [0, 30]. The
/// manifest also holds the radius and its size class (small < 6 ≤ medium < 9 ≤ large). Returns the manifest and each
/// patient's true log-risk.
fn disc_manifest(dir: &Path, n: usize) -> (std::path::PathBuf, std::collections::BTreeMap<String, f64>) {
    let mut state = 0x5eed_u64;
    let mut uniform = || {
        state = vesalius_io::mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut csv = String::from("patient,image,months,died,radius,size_class\n");
    let mut truth = std::collections::BTreeMap::new();
    for k in 0..n {
        let r = 3.0 + 9.0 * uniform();
        let side = 40usize;
        let px: Vec<f32> = (0..side * side)
            .map(|i| {
                let (x, y) = ((i % side) as f64 - 19.5, (i / side) as f64 - 19.5);
                let disc = if (x * x + y * y).sqrt() <= r { 150.0 } else { 60.0 };
                (disc + 40.0 * (uniform() - 0.5)) as f32
            })
            .collect();
        let img = vesalius_io::Image::new(px, vec![side, side], 1, vesalius_io::IDENTITY, "uint8").unwrap();
        vesalius_io::save_2d(&dir.join(format!("img/p{k:03}.png")), &img).unwrap();
        let risk = 1.2 * (r - 7.5) / 2.6;
        let t = -(1.0 - uniform()).ln() / (0.1 * risk.exp());
        let c = 30.0 * uniform();
        let class = if r < 6.0 {
            "small"
        } else if r < 9.0 {
            "medium"
        } else {
            "large"
        };
        csv.push_str(&format!("p{k:03},img/p{k:03}.png,{:.4},{},{r:.3},{class}\n", t.min(c), u8::from(t <= c)));
        truth.insert(format!("p{k:03}"), risk);
    }
    let manifest = dir.join("manifest.csv");
    std::fs::write(&manifest, csv).unwrap();
    (manifest, truth)
}

#[test]
fn image_survival_learns_the_risk_from_the_pixels() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (manifest, truth) = disc_manifest(dir.path(), 240);
    let text = |backbone: &str, epochs: usize| {
        format!(
            r#"task = "survival"
seed = 3
[data]
kind = "images"
path = "{}"
image = "image"
time = "months"
event = "died"
id = "patient"
test_share = 0.3
[model]
arch = "deepsurv"
backbone = "{backbone}"
size = 32
batch = 64
epochs = {epochs}
steps = 6
lr = 0.002
"#,
            manifest.display()
        )
    };
    let recipe = SurvivalRecipe::from_toml(&text("lenet5", 15), dir.path()).unwrap();
    let run = dir.path().join("run");
    let (model, m) = vesalius_prediction::train::train::<AB>(&recipe, &run, &Default::default(), |_| {}).unwrap();
    assert_eq!((m.set.as_str(), m.patients), ("test", 72));
    assert!(model.features.is_empty() && run.join("model.mpk").is_file());
    // The network ranks the unseen patients as well as their true risk does (measured: C 0.708 [0.628, 0.787], the
    // true log-risk 0.705).
    let scored = std::fs::read_to_string(run.join("predictions-test.csv")).unwrap();
    let (mut time, mut event, mut oracle) = (Vec::new(), Vec::new(), Vec::new());
    for line in scored.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        time.push(f[1].parse::<f64>().unwrap());
        event.push(f[2] == "1");
        oracle.push(truth[f[0]]);
    }
    let best = vesalius_eval::survival::harrell_c(&time, &event, &oracle).unwrap().c;
    assert!(m.c_index.value > 0.68 && m.c_index.value > best - 0.03, "C {:?}, true risk {best}", m.c_index);
    // Prediction on the manifest reads the same images: the test patients' risks are the evaluation's.
    let (rows, times) = vesalius_prediction::infer::predict::<B>(&run, &manifest, &Default::default()).unwrap();
    assert_eq!((rows.len(), times.len()), (240, m.times.len()));
    for line in scored.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let row = rows.iter().find(|r| r.0 == f[0]).unwrap();
        assert!((row.1 - f[3].parse::<f64>().unwrap()).abs() < 1e-5, "{line} vs {row:?}");
    }
    // The stacked auto-encoder's encoder as the backbone: pre-trained on the training images, then trained.
    let sae = SurvivalRecipe::from_toml(&text("sae", 3), dir.path()).unwrap();
    let sae_run = dir.path().join("sae");
    let (_, ms) = vesalius_prediction::train::train::<AB>(&sae, &sae_run, &Default::default(), |_| {}).unwrap();
    assert!(sae_run.join("pretrain/autoencoder.mpk").is_file());
    assert!(ms.c_index.value.is_finite());

    // A manifest row naming a missing image is reported with the manifest, its row and the file.
    std::fs::write(&manifest, std::fs::read_to_string(&manifest).unwrap().replace("img/p007.png", "img/gone.png")).unwrap();
    let e = vesalius_prediction::train::train::<AB>(&recipe, &dir.path().join("bad"), &Default::default(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("manifest.csv") && e.contains("row 9") && e.contains("gone.png"), "{e}");
    // Image settings on a table recipe, or a missing backbone, are refused.
    let table = text("lenet5", 1).replace("kind = \"images\"", "kind = \"table\"");
    assert!(SurvivalRecipe::from_toml(&table, dir.path()).unwrap_err().to_string().contains("data.image"));
    let bare = text("lenet5", 1).replace("backbone = \"lenet5\"\n", "");
    assert!(SurvivalRecipe::from_toml(&bare, dir.path()).unwrap_err().to_string().contains("backbone"));
}

#[test]
fn image_regression_reads_the_radius_and_the_size_class() {
    use vesalius_prediction::regression::{RegressionRecipe, train};
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (manifest, _) = disc_manifest(dir.path(), 240);
    let text = |target: &str, extra: &str| {
        format!(
            r#"task = "regression"
seed = 1
[data]
kind = "images"
path = "{}"
image = "image"
target = "{target}"
id = "patient"
{extra}
[model]
arch = ["cnn", "knn"]
backbone = "lenet5"
size = 32
batch = 32
epochs = 25
lr = 0.003
alpha = 10.0
"#,
            manifest.display()
        )
    };
    // The radius (3–12 pixels) from the pixels: the CNN beside k-NN on the raw pixels.
    let recipe = RegressionRecipe::from_toml(&text("radius", ""), dir.path()).unwrap();
    let run = dir.path().join("radius");
    let m = train::<AB>(&recipe, &run, &Default::default()).unwrap();
    let r2 = |name: &str| m.models[name].metrics["r2"].value;
    // Measured: R² 0.993 for the CNN and 0.996 for k-NN (centred discs: neighbours in pixel space share the radius).
    assert!(r2("cnn") > 0.95 && r2("knn") > 0.95, "{:?}", m.models);
    assert!(run.join("net-cnn.mpk").is_file());
    // The CNN trained on the engine, in the run's cnn/ stage (checkpoints, log, best epoch).
    assert!(run.join("cnn/checkpoints/state.json").is_file() && run.join("cnn/log.jsonl").is_file());
    // Re-evaluation from the files reproduces metrics.json; prediction reads the manifest's images.
    let written = std::fs::read_to_string(run.join("metrics.json")).unwrap();
    vesalius_prediction::regression::evaluate::<B>(&run, &Default::default()).unwrap();
    assert_eq!(std::fs::read_to_string(run.join("metrics.json")).unwrap(), written);
    let csv = vesalius_prediction::regression::predict::<B>(&run, &manifest, &Default::default()).unwrap();
    assert_eq!(csv.lines().filter(|l| l.contains(",cnn,")).count(), 240);
    // The size class as an ordinal target (cumulative-link thresholds on the CNN's output).
    let ordinal = RegressionRecipe::from_toml(
        &text("size_class", "target_type = \"ordinal\"\nlevels = [\"small\", \"medium\", \"large\"]")
            .replace("[\"cnn\", \"knn\"]", "[\"cnn\"]"),
        dir.path(),
    )
    .unwrap();
    let mo = train::<AB>(&ordinal, &dir.path().join("class"), &Default::default()).unwrap();
    let kappa = mo.models["cnn"].metrics["quadratic_kappa"].value;
    // Measured: quadratic κ 0.912.
    assert!(kappa > 0.85, "{:?}", mo.models["cnn"]);
    // A cnn without a backbone, or on a table, is refused.
    let bare = text("radius", "").replace("backbone = \"lenet5\"\n", "");
    assert!(RegressionRecipe::from_toml(&bare, dir.path()).unwrap_err().to_string().contains("backbone"));
}
