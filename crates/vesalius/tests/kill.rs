//! A segmentation run killed with SIGKILL at random moments and restarted each time ends with the same model file
//! and log as the same run never interrupted.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn vesalius() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vesalius"))
}

/// Six 32×32 PNG images of bright disks with their masks, in nnU-Net's raw layout, and a small recipe on them.
fn dataset(root: &Path) -> std::path::PathBuf {
    for d in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..6usize {
        let (cx, cy, r) = (12.0 + i as f64 * 1.5, 14.0 + (i % 3) as f64 * 2.0, 5.0 + (i % 2) as f64 * 2.0);
        let inside = |x: u32, y: u32| ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() < r;
        let img = image::GrayImage::from_fn(32, 32, |x, y| {
            image::Luma([if inside(x, y) { 180 } else { 60 } + ((x * 7 + y * 3 + i as u32) % 11) as u8])
        });
        let lab = image::GrayImage::from_fn(32, 32, |x, y| image::Luma([inside(x, y) as u8]));
        img.save(root.join(format!("imagesTr/disk_{i:03}_0000.png"))).unwrap();
        lab.save(root.join(format!("labelsTr/disk_{i:03}.png"))).unwrap();
    }
    std::fs::write(
        root.join("dataset.json"),
        r#"{"channel_names": {"0": "photo"}, "labels": {"background": 0, "disk": 1}, "numTraining": 6, "file_ending": ".png"}"#,
    )
    .unwrap();
    let recipe = root.join("seg.toml");
    std::fs::write(
        &recipe,
        format!(
            "task = \"segmentation\"\n[data]\ndataset = \"{}\"\nfolds = 3\n[plan]\nfeatures = [4, 8]\nbatch = 2\n[train]\nepochs = 8\niterations = 40\nlr = 0.01\n[augment]\ntransforms = [{{ type = \"rand_flip\", prob = 0.5, axes = [0] }}]\n",
            root.display()
        ),
    )
    .unwrap();
    recipe
}

fn log_without_times(run: &Path) -> Vec<vesalius_train::EpochRecord> {
    vesalius_train::RunDir::new(run).read_log().unwrap().into_iter().map(vesalius_train::EpochRecord::timeless).collect()
}

/// A small deterministic generator for the kill delays (the test is the same on every run).
fn delays(n: usize, max_ms: u64) -> Vec<u64> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % max_ms.max(1)
        })
        .collect()
}

#[test]
fn a_segmentation_run_killed_at_random_moments_ends_like_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dataset(&dir.path().join("Dataset004_Disks"));
    let whole = dir.path().join("whole");
    let started = Instant::now();
    let out = vesalius().args(["train", recipe.to_str().unwrap(), "--out", whole.to_str().unwrap(), "--quiet"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let full = started.elapsed();

    let killed = dir.path().join("killed");
    let (mut kills, mut mid_run) = (0, 0);
    for delay in delays(40, full.as_millis() as u64 / 4) {
        let mut child = vesalius().args(["train", recipe.to_str().unwrap(), "--out", killed.to_str().unwrap(), "--quiet"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // Whatever the moment, the state names a complete set and the log holds at least its lines.
        if let Ok(text) = std::fs::read_to_string(killed.join("checkpoints/state.json")) {
            let state: serde_json::Value = serde_json::from_str(&text).unwrap();
            let set = killed.join("checkpoints").join(state["checkpoint"].as_str().unwrap());
            for f in ["model.mpk", "optim.mpk", "state.json"] {
                assert!(set.join(f).is_file(), "{}", set.join(f).display());
            }
            let done = state["epochs_done"].as_u64().unwrap();
            // The log holds at least the bytes the state names (a kill may leave part of a further line).
            let log_len = std::fs::metadata(killed.join("log.jsonl")).unwrap().len();
            assert!(log_len >= state["log_len"].as_u64().unwrap(), "log {log_len} bytes, state {state}");
            mid_run += (done > 0 && done < 8) as usize;
        }
    }
    let out = vesalius().args(["train", recipe.to_str().unwrap(), "--out", killed.to_str().unwrap(), "--quiet"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("uninterrupted run {full:?}; {kills} kills, {mid_run} of them after a checkpoint and before the end");
    assert!(kills >= 3 && mid_run >= 1, "{kills} kills, {mid_run} in the middle of training");
    assert_eq!(std::fs::read(killed.join("model.mpk")).unwrap(), std::fs::read(whole.join("model.mpk")).unwrap());
    assert_eq!(log_without_times(&killed), log_without_times(&whole));
    assert_eq!(log_without_times(&whole).len(), 8);
}
