//! End-to-end training runs on small data: learning a task with a known answer, resuming, the MedMNIST recipe.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use vesalius_cadx::recipe::Recipe;
use vesalius_cadx::train::{TrainOptions, train};
use vesalius_io::npz::write_npz;

#[cfg(not(feature = "test-cuda"))]
type AB = burn::backend::Autodiff<burn::backend::Flex>;
#[cfg(feature = "test-cuda")]
type AB = burn::backend::Autodiff<burn::backend::Cuda>;

/// The backend's random generator is process-wide; runs in parallel threads would interleave their draws.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn quiet() -> TrainOptions {
    TrainOptions { quiet: true, ..Default::default() }
}

/// A MedMNIST-layout archive where class 1 images hold a bright 6×6 square at a random place and class 0 images
/// hold only noise (multi-label: label 0 = square in the top half, label 1 = square in the bottom half).
fn squares_npz(path: &Path, n: [usize; 3], channels: usize, multi: bool) {
    let mut state = 12345u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let size = 28;
    let mut arrays = Vec::new();
    for (split, &count) in ["train", "val", "test"].iter().zip(&n) {
        let mut pixels = Vec::with_capacity(count * size * size * channels);
        let mut labels: Vec<u8> = Vec::new();
        for i in 0..count {
            let mut img: Vec<u8> = (0..size * size).map(|_| (next() % 60) as u8).collect();
            let (top, bottom) = if multi { (i % 2 == 1, (i / 2) % 2 == 1) } else { (i % 2 == 1, false) };
            for (on, rows) in [(top, 0..11), (bottom, 14..25)] {
                if on {
                    let y0 = rows.start + (next() % (rows.end - rows.start) as u64) as usize;
                    let x0 = (next() % 22) as usize;
                    for y in y0..y0 + 6 {
                        for x in x0..x0 + 6 {
                            img[y.min(size - 1) * size + x] = 230;
                        }
                    }
                }
            }
            for p in img {
                for _ in 0..channels {
                    pixels.push(p);
                }
            }
            if multi {
                labels.extend((top as i64).to_le_bytes());
                labels.extend((bottom as i64).to_le_bytes());
            } else {
                labels.extend((top as i64).to_le_bytes());
            }
        }
        let mut shape = vec![count, size, size];
        if channels == 3 {
            shape.push(3);
        }
        arrays.push((format!("{split}_images"), shape, "|u1", pixels));
        arrays.push((format!("{split}_labels"), vec![count, if multi { 2 } else { 1 }], "<i8", labels));
    }
    let refs: Vec<(&str, Vec<usize>, &str, Vec<u8>)> = arrays.iter().map(|(a, b, c, d)| (a.as_str(), b.clone(), *c, d.clone())).collect();
    write_npz(path, &refs).unwrap();
}

fn recipe(data: &str, arch: &str, epochs: usize, extra: &str) -> Recipe {
    let optimizer = if extra.contains("optimizer") { "" } else { "optimizer = { kind = \"adam\", lr = 0.002 }" };
    Recipe::from_toml(&format!(
        r#"
        name = "test"
        seed = 3
        {data}
        [model]
        arch = "{arch}"
        [train]
        epochs = {epochs}
        batch_size = 32
        {optimizer}
        {extra}
        [eval]
        bootstrap = 200
        "#
    ))
    .unwrap()
}

#[test]
fn learns_a_binary_task_with_a_known_answer() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("squares.npz");
    squares_npz(&npz, [400, 100, 200], 1, false);
    let r = recipe(&format!("[data]\nkind = \"medmnist\"\npath = {:?}", npz), "lenet5", 6, "class_weights = \"balanced\"");
    let out = train::<AB>(&r, &dir.path().join("run"), &Default::default(), &quiet()).unwrap();
    assert!(out.complete);
    assert_eq!(out.test.task, "binary");
    assert!(out.test.metrics["auc"].value > 0.95, "{:?}", out.test.metrics);
    assert!(out.test.metrics["accuracy"].value > 0.85, "{:?}", out.test.metrics);
    let ci = &out.test.metrics["accuracy"];
    assert!(ci.ci_low <= ci.value && ci.value <= ci.ci_high && ci.resamples == 200, "{ci:?}");
    for f in ["recipe.toml", "run.json", "model.mpk", "log.jsonl", "metrics.json", "checkpoints/state.json"] {
        assert!(dir.path().join("run").join(f).is_file(), "{f} missing");
    }
    let log = std::fs::read_to_string(dir.path().join("run/log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6);
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(first["train_loss"].as_f64().unwrap() > 0.0 && first["val"]["auc"].is_f64());
}

#[test]
fn learns_a_multilabel_task_with_sgd_and_multistep() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("chest.npz");
    squares_npz(&npz, [400, 100, 200], 1, true);
    let r = recipe(
        &format!("[data]\nkind = \"medmnist\"\npath = {:?}", npz),
        "lenet5",
        8,
        "optimizer = { kind = \"sgd\", lr = 0.05, momentum = 0.9 }\nschedule = { kind = \"multistep\", milestones = [6] }",
    );
    let out = train::<AB>(&r, &dir.path().join("run"), &Default::default(), &quiet()).unwrap();
    assert_eq!(out.test.task, "multilabel");
    assert!(out.test.metrics["auc"].value > 0.9, "{:?}", out.test.metrics);
    assert!(out.test.confusion.is_none());
}

fn log_without_times(run: &Path) -> Vec<vesalius_train::EpochRecord> {
    vesalius_train::RunDir::new(run).read_log().unwrap().into_iter().map(vesalius_train::EpochRecord::timeless).collect()
}

#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let fx = root().join("fixtures/mni152");
    let data = format!(
        "[data]\nkind = \"volume-patches\"\nimage = {:?}\nlabels = {:?}\nmask = {:?}\nclasses = [\"out\", \"other\", \"gm\", \"wm\"]\npatch = 28\nper_class = 60\nslabs = {{ train = [40, 60], val = [88, 92], test = [120, 124] }}",
        fx.join("mni152_t1.nii.gz"),
        fx.join("mni152_tissue_labels.nii.gz"),
        fx.join("mni152_brain_mask.nii.gz")
    );
    let r = recipe(&data, "lenet5", 3, "augment = { rotate_degrees = 10.0 }\nschedule = { kind = \"cosine\" }");
    let whole = dir.path().join("whole");
    let a = train::<AB>(&r, &whole, &Default::default(), &quiet()).unwrap();
    let parts = dir.path().join("parts");
    let stopped =
        train::<AB>(&r, &parts, &Default::default(), &TrainOptions { quiet: true, stop_after: Some(1), ..Default::default() }).unwrap();
    assert!(!stopped.complete);
    assert_eq!(stopped.epochs, 1);
    assert!(!parts.join("metrics.json").exists(), "an unfinished run has no final metrics");
    let b = train::<AB>(&r, &parts, &Default::default(), &quiet()).unwrap();
    assert_eq!(b.epochs, 3);
    assert_eq!(log_without_times(&whole), log_without_times(&parts));
    assert_eq!(a.test, b.test);
    assert_eq!(std::fs::read(whole.join("metrics.json")).unwrap(), std::fs::read(parts.join("metrics.json")).unwrap());
    // Identical weights are identical files (parameter ids derive from parameter paths).
    assert_eq!(std::fs::read(whole.join("model.mpk")).unwrap(), std::fs::read(parts.join("model.mpk")).unwrap());
    // Only the last epoch's checkpoint set and the best one are kept, with the state that names them.
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(parts.join("checkpoints/state.json")).unwrap()).unwrap();
    let mut expected = vec!["state.json".to_string(), "epoch-0003".to_string(), state["best_checkpoint"].as_str().unwrap().to_string()];
    expected.sort();
    expected.dedup();
    let mut ckpts: Vec<String> =
        std::fs::read_dir(parts.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    ckpts.sort();
    assert_eq!(ckpts, expected);

    // A different recipe is refused in an existing run directory, naming the key.
    let other = Recipe { seed: 4, ..r.clone() };
    let e = train::<AB>(&other, &parts, &Default::default(), &quiet()).unwrap_err().to_string();
    assert!(e.contains("another recipe") && e.contains("seed"), "{e}");
    // The cosine schedule depends on the number of epochs: more epochs are refused, saying why.
    let mut longer = r;
    longer.train.epochs = 5;
    let e = train::<AB>(&longer, &parts, &Default::default(), &quiet()).unwrap_err().to_string();
    assert!(e.contains("train.epochs") && e.contains("schedule"), "{e}");
}

#[test]
fn shipped_medmnist_recipe_runs_on_a_file_in_the_medmnist_layout() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("pathmnist.npz");
    squares_npz(&npz, [48, 16, 16], 3, false);
    let shipped = Recipe::from_file(&root().join("recipes/medmnist-resnet18.toml")).unwrap();
    // The MedMNIST v2 protocol as shipped.
    assert_eq!(shipped.model.arch, vesalius_nets::Arch::ResNet18);
    assert_eq!((shipped.train.epochs, shipped.train.batch_size), (100, 128));
    assert_eq!(shipped.train.schedule, vesalius_cadx::recipe::Schedule::MultiStep { milestones: vec![50, 75], gamma: 0.1 });
    assert_eq!(shipped.train.select, vesalius_cadx::recipe::Selection::Auc);
    // Same pipeline, reduced: the test's archive and one epoch of small batches.
    let mut r = shipped.clone();
    r.data = vesalius_data::source::SourceConfig::Medmnist { path: npz };
    r.train.epochs = 1;
    r.train.batch_size = 16;
    r.eval.bootstrap = 50;
    let out = train::<AB>(&r, &dir.path().join("run"), &Default::default(), &quiet()).unwrap();
    assert_eq!(out.split_sizes["train"], 48);
    assert_eq!(out.test.n, 16);
    assert!(out.test.metrics["auc"].value.is_finite());
}

#[test]
fn early_stopping_ends_a_run_that_stops_improving() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("flat.npz");
    squares_npz(&npz, [64, 32, 32], 1, false);
    // A learning rate too small to change any prediction: validation accuracy never improves after epoch 1.
    let r = recipe(
        &format!("[data]\nkind = \"medmnist\"\npath = {:?}", npz),
        "lenet5",
        10,
        "optimizer = { kind = \"sgd\", lr = 1e-12 }\nselect = \"accuracy\"\nearly_stopping_patience = 2",
    );
    let out = train::<AB>(&r, &dir.path().join("run"), &Default::default(), &quiet()).unwrap();
    assert!(out.complete);
    assert_eq!((out.epochs, out.best_epoch), (3, 1));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/checkpoints/state.json")).unwrap()).unwrap();
    assert_eq!(state["stopped_early"], true);
}

#[test]
fn a_diverging_run_stops_with_its_epoch_and_resumes_with_a_smaller_learning_rate() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("squares.npz");
    squares_npz(&npz, [96, 32, 32], 1, false);
    let with_lr = |lr: &str| {
        recipe(
            &format!("[data]\nkind = \"medmnist\"\npath = {:?}", npz),
            "lenet5",
            3,
            &format!("optimizer = {{ kind = \"sgd\", lr = {lr} }}"),
        )
    };
    let run = dir.path().join("run");
    let stop = TrainOptions { quiet: true, stop_after: Some(1), ..Default::default() };
    train::<AB>(&with_lr("0.01"), &run, &Default::default(), &stop).unwrap();
    // A learning rate of 1e30 makes the loss overflow during epoch 2: the run stops and names the epoch and step.
    let e = train::<AB>(&with_lr("1e30"), &run, &Default::default(), &quiet()).unwrap_err().to_string();
    assert!(e.contains("diverged at epoch 2, step") && e.contains("checkpoint after epoch 1 is kept"), "{e}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/state.json")).unwrap()).unwrap();
    assert_eq!(state["epochs_done"], 1);
    assert_eq!(std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().count(), 1);
    // The learning rate may change when resuming: the run continues from epoch 1 and finishes.
    let out = train::<AB>(&with_lr("0.005"), &run, &Default::default(), &quiet()).unwrap();
    assert!(out.complete);
    assert_eq!(out.epochs, 3);
    assert_eq!(std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().count(), 3);
}

#[test]
fn sae_is_pretrained_greedily_then_trained_and_resumes_to_the_same_result() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("squares.npz");
    squares_npz(&npz, [300, 100, 200], 1, false);
    let text = format!(
        "name = \"sae\"\nseed = 5\n[data]\nkind = \"medmnist\"\npath = {npz:?}\n[model]\narch = \"sae\"\npretrain = {{ epochs = 4, fine_tune_epochs = 2, batch = 32, corruption = 0.2 }}\n[train]\nepochs = 4\nbatch_size = 32\noptimizer = {{ kind = \"adam\", lr = 0.001 }}\n[eval]\nbootstrap = 200\n"
    );
    let r = Recipe::from_toml(&text).unwrap();
    let whole = dir.path().join("whole");
    let a = train::<AB>(&r, &whole, &Default::default(), &quiet()).unwrap();
    assert!(a.test.metrics["auc"].value > 0.95, "{:?}", a.test.metrics);
    // The layer-wise losses are logged: 4 epochs of each of the two layers, then 2 of fine-tuning.
    let log = std::fs::read_to_string(whole.join("pretrain/log.jsonl")).unwrap();
    let stages: Vec<String> =
        log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["stage"].as_str().unwrap().to_string()).collect();
    assert_eq!(stages, ["layer-1"; 4].into_iter().chain(["layer-2"; 4]).chain(["fine-tune"; 2]).collect::<Vec<_>>());
    let losses: Vec<f64> = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect();
    assert!(losses[3] < losses[0] && losses[7] < losses[4], "{losses:?}");
    // Interrupted after one supervised epoch, the run reads the pre-trained encoder back and ends the same.
    let parts = dir.path().join("parts");
    train::<AB>(&r, &parts, &Default::default(), &TrainOptions { quiet: true, stop_after: Some(1), ..Default::default() }).unwrap();
    let b = train::<AB>(&r, &parts, &Default::default(), &quiet()).unwrap();
    assert_eq!(a.test, b.test);
    assert_eq!(std::fs::read(whole.join("model.mpk")).unwrap(), std::fs::read(parts.join("model.mpk")).unwrap());
    // Pre-training settings belong to `sae` only.
    let e = Recipe::from_toml(&text.replace("arch = \"sae\"", "arch = \"mlp\"")).unwrap_err();
    assert!(e.contains("model.pretrain"), "{e}");
}
