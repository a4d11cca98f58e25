//! Segmentation end to end on a synthetic MSD-layout dataset with known answers: bright spheres on noise.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::Path;
use vesalius_explain::Method;
use vesalius_io::nifti::{self, NiftiType};
use vesalius_io::{self as io, Image};
use vesalius_segmentation::RunDir;
use vesalius_segmentation::evaluate::{EvalSet, evaluate};
use vesalius_segmentation::explain::explain_image;
use vesalius_segmentation::infer::{Predictor, output_paths, write};
use vesalius_segmentation::recipe::{RefineSection, SegRecipe};
use vesalius_segmentation::refine;
use vesalius_segmentation::train::{train, train_with};
use vesalius_train::RunOptions;

/// burn's random generator is process-wide: tests that train take turns, so each sees only its own draws.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(not(feature = "test-cuda"))]
type P = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type P = burn::backend::Cuda;
type B = burn::backend::Autodiff<P>;

/// A 20×18×16 volume at 1.5 × 1.5 × 2 mm with a sphere of radius 4–6 voxels at a case-dependent place.
fn case(i: usize) -> (Image, Image) {
    let shape = [20usize, 18, 16];
    let c = [8.0 + (i % 3) as f64 * 2.0, 8.0 + (i % 2) as f64, 7.0 + (i % 4) as f64 * 0.5];
    let r = 4.0 + (i % 3) as f64;
    let (mut img, mut lab) = (Vec::new(), Vec::new());
    for z in 0..shape[2] {
        for y in 0..shape[1] {
            for x in 0..shape[0] {
                let d = ((x as f64 - c[0]).powi(2) + (y as f64 - c[1]).powi(2) + (z as f64 - c[2]).powi(2)).sqrt();
                let inside = d < r;
                let noise = (((x * 31 + y * 17 + z * 7 + i * 13) % 19) as f32 - 9.0) * 3.0;
                img.push(if inside { 200.0 } else { 100.0 } + noise);
                lab.push(inside as u8 as f32);
            }
        }
    }
    let mut a = vesalius_data::IDENTITY;
    a[0][0] = -1.5;
    a[1][1] = 1.5;
    a[2][2] = 2.0;
    a[0][3] = 14.0 + i as f64;
    (Image::new(img, shape.to_vec(), 1, a, "int16").unwrap(), Image::new(lab, shape.to_vec(), 1, a, "uint8").unwrap())
}

fn dataset(root: &Path, n: usize) {
    for d in ["imagesTr", "labelsTr", "imagesTs", "labelsTs"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..n {
        let (img, lab) = case(i);
        nifti::save(&root.join(format!("imagesTr/sph_{i:03}_0000.nii.gz")), &img, NiftiType::I16).unwrap();
        nifti::save(&root.join(format!("labelsTr/sph_{i:03}.nii.gz")), &lab, NiftiType::U8).unwrap();
    }
    // Labelled test cases: two ordinary ones, and one whose label map is empty although its image shows a sphere
    // (a structure the reference lacks: the surface distance is undefined).
    for (k, i) in [(900, n + 7), (901, n + 8)] {
        let (img, lab) = case(i);
        nifti::save(&root.join(format!("imagesTs/sph_{k}_0000.nii.gz")), &img, NiftiType::I16).unwrap();
        nifti::save(&root.join(format!("labelsTs/sph_{k}.nii.gz")), &lab, NiftiType::U8).unwrap();
    }
    let (img, lab) = case(n + 9);
    let empty = Image::new(vec![0.0; lab.voxels()], lab.shape().to_vec(), 1, *lab.affine(), "uint8").unwrap();
    nifti::save(&root.join("imagesTs/sph_902_0000.nii.gz"), &img, NiftiType::I16).unwrap();
    nifti::save(&root.join("labelsTs/sph_902.nii.gz"), &empty, NiftiType::U8).unwrap();
    std::fs::write(
        root.join("dataset.json"),
        format!(r#"{{"channel_names": {{"0": "MRI"}}, "labels": {{"background": 0, "sphere": 1}}, "numTraining": {n}, "file_ending": ".nii.gz"}}"#),
    )
    .unwrap();
}

fn recipe(root: &Path, epochs: usize) -> SegRecipe {
    SegRecipe::from_toml(
        &format!(
            r#"
task = "segmentation"
[data]
dataset = "{}"
folds = 3
[plan]
features = [8, 16]
patch = [16, 16, 16]
batch = 2
[train]
epochs = {epochs}
iterations = 12
lr = 0.01
threads = 2
[augment]
transforms = [{{ type = "rand_flip", prob = 0.5, axes = [0, 1, 2] }}]
"#,
            root.display()
        ),
        Path::new("."),
    )
    .unwrap()
}

#[test]
fn plan_train_resume_predict_evaluate() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("Dataset001_Spheres");
    dataset(&data, 6);
    let run = RunDir::new(dir.path().join("run"));
    let device = Default::default();

    // Stopped after epoch 2 of 4 and resumed: it runs epochs 3 and 4 only, and ends with the same model file and
    // log (up to wall times) as the same recipe run without a stop.
    let stop = RunOptions { quiet: true, stop_after: Some(2), ..Default::default() };
    let first = train_with::<B>(&recipe(&data, 4), &run, &device, &stop, |_| {}).unwrap();
    assert_eq!((first.state.epochs_done, first.complete), (2, false));
    assert!(first.resumed_after.is_none());
    let mut seen = Vec::new();
    let partial = train::<B>(&recipe(&data, 4), &run, &device, |l| seen.push(l.epoch)).unwrap();
    assert_eq!(partial.resumed_after, Some(2));
    assert_eq!(seen, vec![3, 4]);
    assert_eq!(partial.state.epochs_done, 4);
    let whole = RunDir::new(dir.path().join("whole"));
    train::<B>(&recipe(&data, 4), &whole, &device, |_| {}).unwrap();
    assert_eq!(std::fs::read(run.file("model.mpk")).unwrap(), std::fs::read(whole.file("model.mpk")).unwrap());
    assert_eq!(log_without_times(&run), log_without_times(&whole));
    // The poly schedule depends on the number of epochs: more epochs in the same folder are refused, saying why.
    let longer = train::<B>(&recipe(&data, 6), &run, &device, |_| {}).unwrap_err().to_string();
    assert!(longer.contains("train.epochs") && longer.contains("schedule"), "{longer}");
    // Another recipe in the same folder is refused, naming the differing key.
    let mut other = recipe(&data, 4);
    other.train.foreground_share = 0.9;
    let e = train::<B>(&other, &run, &device, |_| {}).unwrap_err().to_string();
    assert!(e.contains("another recipe") && e.contains("train.foreground_share"), "{e}");
    let fresh = run;
    let info: serde_json::Value = fresh.read_json("run.json").unwrap();
    assert_eq!((info["task"].as_str(), info["labels"]["1"].as_str()), (Some("segmentation"), Some("sphere")));
    for f in
        ["recipe.toml", "run.json", "splits.json", "fingerprint.json", "plans.json", "model.mpk", "log.jsonl", "checkpoints/state.json"]
    {
        assert!(fresh.file(f).is_file(), "{f}");
    }
    let plans = &partial.plans;
    assert_eq!((plans.dims, plans.classes, plans.channels), (3, 2, 1));
    assert_eq!(plans.target_spacing, vec![1.5, 1.5, 2.0]);
    let log = std::fs::read_to_string(fresh.file("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 4);
    let best = partial.state.best_score.unwrap();
    assert!(best > 0.8, "validation Dice {best}");

    // Prediction of an unseen case, in its own grid and affine.
    let predictor = Predictor::<P>::load(&fresh, &device).unwrap();
    let input = data.join("imagesTs/sph_900_0000.nii.gz");
    let image = predictor.read_case(&input).unwrap();
    let seg = predictor.predict(&image, true, true).unwrap();
    let (lp, pp) = output_paths(&input, dir.path());
    assert!(lp.ends_with("sph_900.nii.gz"));
    write(&seg, &lp, &pp).unwrap();
    let written = io::load(&lp).unwrap();
    assert_eq!(written.shape(), image.shape());
    assert_eq!(written.affine(), image.affine());
    let (_, truth) = case(6 + 7);
    let overlap = vesalius_eval::segmentation::dice(written.data(), truth.data(), 1.0);
    assert!(overlap > 0.8, "test Dice {overlap}");
    let probs = io::load(&pp).unwrap();
    assert_eq!(probs.channels(), 2);
    let sum: f32 = (0..2).map(|c| probs.channel(c)[500]).sum();
    assert!((sum - 1.0).abs() < 1e-3, "{sum}");

    // Explanations of the segmented sphere, and of a randomly initialised network for the same region.
    let ad = Predictor::<B>::load(&fresh, &device).unwrap();
    let random = vesalius_segmentation::explain::random_model::<B>(&predictor.plans, 2018, &device);
    let (_, truth_img) = case(6 + 7);
    let shape = [20usize, 18, 16];
    let grown: Vec<bool> = (0..truth_img.voxels())
        .map(|i| {
            let (x, y, z) = ((i % shape[0]) as i64, ((i / shape[0]) % shape[1]) as i64, (i / (shape[0] * shape[1])) as i64);
            (-2..=2).any(|dz| {
                (-2..=2).any(|dy| {
                    (-2..=2).any(|dx| {
                        let (a, b, c) = (x + dx, y + dy, z + dz);
                        (0..shape[0] as i64).contains(&a)
                            && (0..shape[1] as i64).contains(&b)
                            && (0..shape[2] as i64).contains(&c)
                            && truth_img.data()[(a + shape[0] as i64 * (b + shape[1] as i64 * c)) as usize] > 0.0
                    })
                })
            })
        })
        .collect();
    let opts = vesalius_segmentation::explain::SegExplainOptions { samples: Some(60), ..Default::default() };
    // the grown sphere is a third of the volume (0.33): the masses below are twice that or more
    let share = grown.iter().filter(|&&g| g).count() as f64 / grown.len() as f64;
    assert!(share < 0.34, "{share}");
    // least mass on the sphere per method (measured at the commit that wrote this test: saliency 0.789, SmoothGrad
    // 0.760, Grad-CAM 1.000, occlusion 0.797, LIME 0.672); rank correlations with random weights measured at most 0.29
    for (method, least) in
        [(Method::Saliency, 0.7), (Method::SmoothGrad, 0.7), (Method::GradCam, 0.95), (Method::Occlusion, 0.7), (Method::Lime, 0.6)]
    {
        let e = explain_image(ad.model(), &ad.plans, &ad.recipe, &image, None, method, &opts, &device).unwrap();
        let map = e.map.as_ref().unwrap();
        assert_eq!((map.shape(), map.affine()), (image.shape(), image.affine()));
        assert!(e.probability > 0.5 && e.roi_voxels > 50, "{method:?}: {} over {}", e.probability, e.roi_voxels);
        let mass = vesalius_explain::mass_inside(map.data(), &grown);
        let r = explain_image(&random, &ad.plans, &ad.recipe, &image, Some(&truth_img), method, &opts, &device).unwrap();
        // within the explained patch (both maps are zero outside it)
        let (a, b): (Vec<f32>, Vec<f32>) =
            map.data().iter().zip(r.map.as_ref().unwrap().data()).filter(|(a, b)| a.abs() + b.abs() > 0.0).map(|(a, b)| (*a, *b)).unzip();
        let rho = vesalius_explain::spearman(&a, &b);
        assert!(mass >= least, "{method:?}: mass on the sphere {mass:.3}");
        assert!(rho < 0.4, "{method:?}: rank correlation with random weights {rho:.3}");
    }
    let err = explain_image(
        ad.model(),
        &ad.plans,
        &ad.recipe,
        &image,
        None,
        Method::Saliency,
        &vesalius_segmentation::explain::SegExplainOptions { class: Some(2), ..Default::default() },
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("class 2 does not exist"), "{err}");

    // Evaluation on the validation fold (asked for), with confidence intervals.
    let metrics = evaluate::<P>(&fresh, &device, false, EvalSet::Validation).unwrap();
    assert_eq!((metrics.set.as_str(), metrics.cases.len()), ("validation", 2));
    let dice = &metrics.mean["sphere"]["dice"];
    assert!(dice.value > 0.8 && dice.ci_low <= dice.value && dice.value <= dice.ci_high, "{dice:?}");
    let hd = &metrics.mean["sphere"]["hd95_mm"];
    assert!(hd.value < 4.0, "{hd:?}");
    assert_eq!(metrics.missing_surface["sphere"], 0);
    assert!(fresh.file("metrics-val.json").is_file());
    // a tri-planar overlay per case: the prediction filled, the reference outlined, in square pixels of 32 mm / 256
    // (the largest extent, 16 slices of 2 mm, over 256 pixels): 30, 30 and 27 mm wide planes and two 4-pixel gaps
    for case in &metrics.cases {
        let fig = io::load(fresh.file(&format!("figures/validation-{}.png", case.id))).unwrap();
        assert_eq!((fig.channels(), fig.shape()[0], fig.shape()[1]), (3, 240 + 240 + 216 + 2 * 4, 256));
    }
    // The test set (imagesTs/ with labelsTs/), never seen in training or selection. The missed sphere counts at the
    // image diagonal in the surface-distance means instead of being dropped.
    let test = evaluate::<P>(&fresh, &device, false, EvalSet::Test).unwrap();
    assert_eq!((test.set.as_str(), test.cases.len(), test.bootstrap_unit.as_str()), ("test", 3, "patients"));
    let missed = test.cases.iter().find(|c| c.id == "sph_902").unwrap();
    assert!(missed.classes["sphere"].hd95.is_none() && missed.classes["sphere"].dice == 0.0, "{missed:?}");
    assert_eq!(test.missing_surface["sphere"], 1);
    let diagonal = vesalius_segmentation::evaluate::diagonal_mm([20, 18, 16], [1.5, 1.5, 2.0]);
    let found: Vec<f64> = test.cases.iter().filter_map(|c| c.classes["sphere"].hd95).collect();
    assert_eq!(found.len(), 2);
    let expected = (found.iter().sum::<f64>() + diagonal) / 3.0;
    assert!((test.mean["sphere"]["hd95_mm"].value - expected).abs() < 1e-9, "{:?} vs {expected}", test.mean["sphere"]["hd95_mm"]);
    let on_disk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fresh.file("metrics.json")).unwrap()).unwrap();
    assert_eq!(on_disk["set"], "test");
    assert!(on_disk.get("refinement").is_none());

    // A CRF-as-RNN refinement stage added to the finished run: only the stage trains (no U-Net epoch reruns);
    // stopped after its first epoch and resumed, it ends with the same CRF file as a run without a stop.
    let mut refined = recipe(&data, 4);
    refined.refine = Some(RefineSection { epochs: 2, steps: 4, ..Default::default() });
    let stop_first = RunOptions { quiet: true, stop_after: Some(1), ..Default::default() };
    let mut seen = Vec::new();
    let o = train_with::<B>(&refined, &fresh, &device, &stop_first, |l| seen.push(l.epoch)).unwrap();
    assert_eq!((seen.as_slice(), o.complete), (&[1][..], false));
    seen.clear();
    let o = train::<B>(&refined, &fresh, &device, |l| seen.push(l.epoch)).unwrap();
    assert_eq!((seen.as_slice(), o.complete, o.refinement.unwrap().epochs_done), (&[2][..], true, 2));
    train::<B>(&refined, &whole, &device, |_| {}).unwrap();
    let stage = refine::stage(&fresh);
    assert_eq!(std::fs::read(stage.best_model()).unwrap(), std::fs::read(refine::stage(&whole).best_model()).unwrap());
    // The stage's baseline is the U-Net's own validation Dice: the best score of its training.
    let baseline: refine::Baseline = stage.read_json("baseline.json").unwrap();
    assert!((baseline.mean_dice - best).abs() < 1e-9, "{} vs {best}", baseline.mean_dice);
    // Evaluation scores the refined segmentations and, from the same pass, the U-Net's own: those equal the
    // scores of the run before the stage existed, and the reported change is refined − unrefined.
    let after = evaluate::<P>(&fresh, &device, false, EvalSet::Test).unwrap();
    let effect = after.refinement.as_ref().unwrap();
    for c in &test.cases {
        assert_eq!(effect.unrefined_cases[&c.id]["sphere"], c.classes["sphere"].dice, "{}", c.id);
    }
    let direct = after.mean["sphere"]["dice"].value - test.mean["sphere"]["dice"].value;
    assert!((effect.dice_change["sphere"].value - direct).abs() < 1e-9, "{:?} vs {direct}", effect.dice_change);
    assert!(after.mean["sphere"]["dice"].value > 0.6, "{:?}", after.mean["sphere"]["dice"]);
    // Prediction through the refinement: probabilities still sum to one.
    let seg = Predictor::<P>::load(&fresh, &device).unwrap().predict(&image, true, false).unwrap();
    let probs = seg.probabilities.unwrap();
    let sum: f32 = (0..2).map(|c| probs.channel(c)[500]).sum();
    assert!((sum - 1.0).abs() < 1e-3, "{sum}");
    // A refined run whose stage has not trained cannot predict, and says why.
    let untrained = RunDir::new(dir.path().join("untrained"));
    std::fs::create_dir_all(untrained.root()).unwrap();
    for f in ["recipe.toml", "plans.json", "model.mpk"] {
        std::fs::copy(fresh.file(f), untrained.file(f)).unwrap();
    }
    let e = Predictor::<P>::load(&untrained, &device).err().unwrap().to_string();
    assert!(e.contains("[refine]") && e.contains("refine"), "{e}");
}

#[test]
fn postprocessing_keeps_the_largest_component_and_fills_holes() {
    use vesalius_segmentation::infer::postprocess;
    // 9×9×5: a 5×5×3 cube with a hollow centre, and a lone voxel elsewhere.
    let shape = [9usize, 9, 5];
    let at = |x: usize, y: usize, z: usize| x + 9 * (y + 9 * z);
    let mut labels = vec![0u16; 9 * 9 * 5];
    for z in 1..4 {
        for y in 2..7 {
            for x in 2..7 {
                labels[at(x, y, z)] = 1;
            }
        }
    }
    labels[at(4, 4, 2)] = 0; // the hole
    labels[at(0, 8, 4)] = 1; // the stray voxel
    let mut both = labels.clone();
    postprocess(&mut both, shape, 2, true, true);
    assert_eq!(both[at(0, 8, 4)], 0);
    assert_eq!(both[at(4, 4, 2)], 1);
    assert_eq!(both.iter().filter(|&&v| v == 1).count(), 75);
    let mut none = labels.clone();
    postprocess(&mut none, shape, 2, false, false);
    assert_eq!(none, labels);
}

#[test]
fn recipe_paths_become_absolute() {
    let r = SegRecipe::from_toml("task = \"segmentation\"\n[data]\ndataset = \"../data/Set\"\n", Path::new("recipes")).unwrap();
    let p = r.data.dataset.unwrap();
    assert!(p.is_absolute(), "{}", p.display());
    assert!(p.ends_with("recipes/../data/Set"));
}

#[test]
fn bad_recipes_and_runs_are_reported() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let err = SegRecipe::from_toml("task = \"segmentation\"\n[data]\n", dir.path()).unwrap_err().to_string();
    assert!(err.contains("exactly one"), "{err}");
    let err = SegRecipe::from_toml("task = \"segmentation\"\n[data]\ndataset = \"x\"\n[train]\nepochs = 0\n", dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("epochs"), "{err}");
    let err = SegRecipe::from_toml("task = \"segmentation\"\n[data]\ndataset = \"x\"\n[plan]\npatchsize = 3\n", dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("patchsize"), "{err}");
    let err = Predictor::<P>::load(&RunDir::new(dir.path()), &Default::default()).err().unwrap().to_string();
    assert!(err.contains("recipe.toml"), "{err}");
    // Plans the network cannot run and labels the dataset does not declare are input errors, not panics.
    let data = dir.path().join("Dataset004_Spheres");
    dataset(&data, 3);
    let device = Default::default();
    let mut one_level = recipe(&data, 1);
    one_level.plan.features = Some(vec![8]);
    let err = train::<B>(&one_level, &RunDir::new(dir.path().join("a")), &device, |_| {}).unwrap_err().to_string();
    assert!(err.contains("two levels"), "{err}");
    let mut odd = recipe(&data, 1);
    odd.plan.patch = Some(vec![15, 16, 16]);
    let err = train::<B>(&odd, &RunDir::new(dir.path().join("b")), &device, |_| {}).unwrap_err().to_string();
    assert!(err.contains("divisible by 2"), "{err}");
    let mut turned = recipe(&data, 1);
    turned.plan.patch = Some(vec![16, 16, 8]);
    turned.augment =
        vesalius_data::transforms::Pipeline::from_toml("[[transforms]]\ntype = \"rand_rot90\"\nprob = 1.0\naxes = [0, 2]\n").unwrap();
    let err = train::<B>(&turned, &RunDir::new(dir.path().join("c")), &device, |_| {}).unwrap_err().to_string();
    assert!(err.contains("changed a patch"), "{err}");
    let json = std::fs::read_to_string(data.join("dataset.json")).unwrap().replace(r#", "sphere": 1"#, "");
    std::fs::write(data.join("dataset.json"), json).unwrap();
    let err = train::<B>(&recipe(&data, 1), &RunDir::new(dir.path().join("d")), &device, |_| {}).unwrap_err().to_string();
    assert!(err.contains("label value 1") && err.contains("sph_"), "{err}");
}

#[test]
fn deep_supervision_trains_on_every_decoder_level() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("Dataset002_Spheres");
    dataset(&data, 6);
    let mut r = recipe(&data, 3);
    r.plan.features = Some(vec![4, 8, 16]);
    r.plan.deep_supervision = Some(true);
    let run = RunDir::new(dir.path().join("run"));
    let out = train::<B>(&r, &run, &Default::default(), |_| {}).unwrap();
    assert!(out.plans.deep_supervision);
    let log = std::fs::read_to_string(run.log()).unwrap();
    assert!(log.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().is_some_and(f64::is_finite)));
    assert!(out.state.best_score.unwrap() > 0.5, "{:?}", out.state.best_score);
    // The saved model carries its auxiliary heads and predicts like any other.
    let predictor = Predictor::<P>::load(&run, &Default::default()).unwrap();
    let (img, _) = case(3);
    assert_eq!(predictor.predict(&img, false, false).unwrap().labels.shape(), img.shape());
}

#[test]
fn a_two_dimensional_png_dataset_plans_a_2d_unet() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Dataset003_Disks");
    for d in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..6usize {
        let (cx, cy, r) = (12.0 + i as f64 * 1.5, 14.0 + (i % 3) as f64 * 2.0, 5.0 + (i % 2) as f64 * 2.0);
        let img = image::GrayImage::from_fn(32, 32, |x, y| {
            let inside = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() < r;
            image::Luma([if inside { 180 } else { 60 } + ((x * 7 + y * 3 + i as u32) % 11) as u8])
        });
        let lab =
            image::GrayImage::from_fn(32, 32, |x, y| image::Luma([(((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() < r) as u8]));
        img.save(root.join(format!("imagesTr/disk_{i:03}_0000.png"))).unwrap();
        lab.save(root.join(format!("labelsTr/disk_{i:03}.png"))).unwrap();
    }
    std::fs::write(
        root.join("dataset.json"),
        r#"{"channel_names": {"0": "photo"}, "labels": {"background": 0, "disk": 1}, "numTraining": 6, "file_ending": ".png"}"#,
    )
    .unwrap();
    let r = SegRecipe::from_toml(
        &format!(
            "task = \"segmentation\"\n[data]\ndataset = \"{}\"\nfolds = 3\n[plan]\nfeatures = [8, 16]\nbatch = 4\n[train]\nepochs = 4\niterations = 10\nlr = 0.01\n[augment]\ntransforms = []\n",
            root.display()
        ),
        Path::new("."),
    )
    .unwrap();
    let run = RunDir::new(dir.path().join("run"));
    let out = train::<B>(&r, &run, &Default::default(), |_| {}).unwrap();
    assert_eq!(out.plans.dims, 2);
    assert_eq!(out.plans.patch, vec![32, 32]);
    assert!(out.state.best_score.unwrap() > 0.7, "{:?}", out.state.best_score);
}

fn log_without_times(run: &RunDir) -> Vec<vesalius_train::EpochRecord> {
    run.read_log().unwrap().into_iter().map(vesalius_train::EpochRecord::timeless).collect()
}

#[test]
fn unlabelled_images_are_segmented_and_pictured_without_a_test_set() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("Dataset");
    dataset(&data, 6);
    for d in ["imagesTs", "labelsTs"] {
        std::fs::remove_dir_all(data.join(d)).unwrap();
    }
    // Another sphere, radius 6 voxels of 1.5 × 1.5 × 2 mm: 905 voxels, 4.07 ml.
    let (img, _) = case(20);
    let other = dir.path().join("other.nii.gz");
    nifti::save(&other, &img, NiftiType::I16).unwrap();
    let device = Default::default();

    // A [prepare] step that cannot apply names the case.
    let mut bad = recipe(&data, 1);
    bad.prepare = vesalius_data::transforms::Pipeline::from_toml("[[transforms]]\ntype = \"head_layers\"\nfirst = 1\n").unwrap();
    let err = train::<B>(&bad, &RunDir::new(dir.path().join("bad")), &device, |_| {}).unwrap_err().to_string();
    assert!(err.contains("case 'sph_0") && err.contains("not below first = 1"), "{err}");

    let run = RunDir::new(dir.path().join("plain"));
    train::<B>(&recipe(&data, 8), &run, &device, |_| {}).unwrap();
    let err = evaluate::<P>(&run, &device, false, EvalSet::Test).unwrap_err().to_string();
    assert!(err.contains("no labelled test cases"), "{err}");

    let mut with_images = recipe(&data, 8);
    with_images.data.unlabelled = vec![vesalius_segmentation::recipe::ImageEntry { id: None, image: vec![other] }];
    let run = RunDir::new(dir.path().join("pictures"));
    train::<B>(&with_images, &run, &device, |_| {}).unwrap();
    let m = evaluate::<P>(&run, &device, false, EvalSet::Test).unwrap();
    assert!(m.cases.is_empty() && m.mean.is_empty());
    assert_eq!(m.unlabelled.len(), 1);
    let u = &m.unlabelled[0];
    assert_eq!((u.id.as_str(), u.spacing.as_slice()), ("other", [1.5, 1.5, 2.0].as_slice()));
    let ml = u.volume_ml["sphere"];
    eprintln!("unlabelled sphere: {ml:.2} ml of 4.07");
    assert!((ml - 4.07).abs() < 1.0, "{ml} ml");
    let picture = io::load(run.file("figures/unlabelled-other.png")).unwrap();
    assert_eq!(picture.channels(), 3);
    let on_disk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.file("metrics.json")).unwrap()).unwrap();
    assert_eq!(on_disk["unlabelled"][0]["id"], "other");
}
