//! Learned-registration runs: a VoxelMorph network trained from a recipe on the MNI152 template against itself
//! warped by random smooth fields (known truth), resumed, evaluated; an atlas + subjects run with the affine
//! network, whose untrained prediction must map images between different grids by world position.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::{Path, PathBuf};

use vesalius_data::Image;
use vesalius_data::transforms::resample_onto;
use vesalius_eval::EvalSet;
use vesalius_registration::evaluate::evaluate;
use vesalius_registration::infer::LearnedRegistrar;
use vesalius_registration::recipe::RegRecipe;
use vesalius_registration::train::{PairSource, train};
use vesalius_train::RunDir;

use crate::{B, P};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mni152")
}

fn synthetic_recipe(steps: usize, smoothness: f64) -> RegRecipe {
    let text = format!(
        r#"
task = "registration"
[data]
spacing = [6.0, 6.0, 6.0]
shape = [32, 40, 32]
synthetic = {{ image = "mni152_t1.nii.gz", labels = "mni152_tissue_labels.nii.gz", amplitude_mm = 12.0, control_points = 4 }}
[model]
encoder = [8, 16, 16]
decoder = [16, 16, 16, 8]
[train]
steps = {steps}
learning_rate = 2e-3
smoothness = {smoothness}
validation = 3
test = 3
val_every = 40
seed = 5
"#
    );
    RegRecipe::from_toml(&text, &fixtures()).unwrap()
}

#[test]
fn a_synthetic_run_trains_resumes_and_improves_alignment() {
    let _turn = crate::take_turn();
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    let mut logs = Vec::new();
    let first = train::<B>(&synthetic_recipe(80, 0.01), &run, &device, |_, l| logs.push(l.clone())).unwrap();
    assert_eq!(first.state.steps_done, 80);
    assert_eq!(first.resumed_after, None);
    assert_eq!(logs.iter().map(|l| l.steps).collect::<Vec<_>>(), [40, 80]);
    // The same run asked for more steps continues where it stopped.
    logs.clear();
    let second = train::<B>(&synthetic_recipe(160, 0.01), &run, &device, |_, l| logs.push(l.clone())).unwrap();
    assert_eq!(second.resumed_after, Some((0, 80)));
    assert_eq!(logs.iter().map(|l| l.steps).collect::<Vec<_>>(), [120, 160]);
    assert_eq!(std::fs::read_to_string(run.file("log.jsonl")).unwrap().lines().count(), 4);
    // The learning rate is constant, so 80 steps then 160 is the same run as 160 at once: the same model file.
    let whole = RunDir::new(dir.path().join("whole"));
    train::<B>(&synthetic_recipe(160, 0.01), &whole, &device, |_, _| {}).unwrap();
    assert_eq!(std::fs::read(run.best_model()).unwrap(), std::fs::read(whole.best_model()).unwrap());
    // Another recipe in the same folder is refused.
    let err = train::<B>(&synthetic_recipe(200, 0.5), &run, &device, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("another recipe"), "{err}");

    // Scored on the test pairs (fields drawn apart from the training and validation ones) by default.
    let scored = evaluate::<B>(&run, &device, None, EvalSet::Test).unwrap();
    assert_eq!(scored.set, "test");
    let val = evaluate::<B>(&run, &device, None, EvalSet::Validation).unwrap();
    assert_eq!((val.set.as_str(), val.learned.pairs.len()), ("validation", 3));
    assert!(run.file("metrics-val.json").is_file());
    // one figure per pair: seven panels of the middle slice (fixed, moving, warped, checkerboard, two differences,
    // Jacobian)
    let figures = std::fs::read_dir(run.file("figures")).unwrap().count();
    assert_eq!(figures, 6, "three test and three validation pairs");
    let names = |m: &vesalius_registration::evaluate::MethodMetrics| m.pairs.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert!(names(&val.learned).iter().all(|n| !names(&scored.learned).contains(n)), "test and validation pairs differ");
    let m = scored.learned;
    let mean = |name: &str| m.mean_of(name).unwrap();
    println!(
        "Dice {:.3} → {:.3}; field error {:.2} → {:.2} mm; MSE {:.5} → {:.5}; folding {:.3} %; {:.3} s per pair",
        mean("dice_before"),
        mean("dice_after"),
        mean("field_error_before_mm"),
        mean("field_error_after_mm"),
        mean("mse_before"),
        mean("mse_after"),
        mean("folding_percent"),
        mean("seconds_per_pair")
    );
    assert_eq!(m.pairs.len(), 3);
    // 160 steps: intensities align (here MSE to a third; other initial weights gave two thirds) and tissue Dice
    // rises, while the recovered field is still a fraction of the true one (printed; docs/REGISTRATION.md has
    // longer runs).
    assert!(mean("dice_after") > mean("dice_before"));
    assert!(mean("mse_after") < 0.8 * mean("mse_before"));
    assert!(mean("folding_percent") < 0.5);
    assert!(run.file("metrics.json").is_file());

    // Registering a validation pair given as images on the common grid reproduces the evaluation's warp.
    let recipe = synthetic_recipe(160, 0.01);
    let source = PairSource::open(&recipe).unwrap();
    let pair = &source.validation::<P>(&device)[0];
    let t1 = vesalius_io::load(fixtures().join("mni152_t1.nii.gz")).unwrap();
    let grid = vesalius_registration::train::common_grid(&recipe, &t1);
    let on_grid = |v: &Vec<f32>| Image::new(v.clone(), recipe.data.shape.to_vec(), 1, grid, "float32").unwrap();
    let registrar = LearnedRegistrar::<P>::load(&run, &device).unwrap();
    let r = registrar.register(&on_grid(&pair.fixed), &on_grid(&pair.moving), &device).unwrap();
    let mse = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64;
    let (before, after) = (mse(&pair.moving, &pair.fixed), mse(r.warped.data(), &pair.fixed));
    assert!(after < 0.8 * before, "MSE {before} → {after}");
    assert_eq!(r.warped.shape(), &recipe.data.shape[..]);
}

#[test]
fn an_untrained_network_maps_by_world_position_between_different_grids() {
    let _turn = crate::take_turn();
    // With the flow head at ~0, registration is the identity in world space: the moving image is resampled on the
    // fixed grid by world position, whatever the two grids (here 3 mm RAS against 4 mm with a flipped axis).
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let t1 = vesalius_io::load(fixtures().join("mni152_t1.nii.gz")).unwrap();
    let moving = vesalius_io::geometry::resample(&t1, &[3.0, 3.0, 3.0], vesalius_io::geometry::Interp::Linear).unwrap();
    let fixed_grid = vesalius_io::geometry::resample(&t1, &[4.0, 4.0, 4.0], vesalius_io::geometry::Interp::Linear).unwrap();
    let fixed = vesalius_io::geometry::flip(&fixed_grid, 0).unwrap();
    let subjects: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("s{i}.nii.gz"));
            vesalius_io::nifti::save(&p, &moving, vesalius_io::nifti::NiftiType::F32).unwrap();
            p
        })
        .collect();
    let atlas = dir.path().join("atlas.nii.gz");
    vesalius_io::nifti::save(&atlas, &fixed, vesalius_io::nifti::NiftiType::F32).unwrap();
    let text = format!(
        "task = \"registration\"\n[data]\nspacing = [5.0, 5.0, 5.0]\nshape = [40, 48, 40]\natlas = {atlas:?}\nsubjects = {subjects:?}\n\
         [model]\nencoder = [4, 4, 4]\ndecoder = [4, 4, 4]\naffine = true\naffine_encoder = [4, 4, 4]\n\
         [train]\nsteps = 1\naffine_steps = 1\nlearning_rate = 1e-9\nvalidation = 1\n"
    );
    let recipe = RegRecipe::from_toml(&text, dir.path()).unwrap();
    let run = RunDir::new(dir.path().join("run"));
    train::<B>(&recipe, &run, &device, |_, _| {}).unwrap();
    let registrar = LearnedRegistrar::<P>::load(&run, &device).unwrap();
    let r = registrar.register(&fixed, &moving, &device).unwrap();
    assert_eq!(r.warped.shape(), fixed.shape());
    assert_eq!(r.warped.affine(), fixed.affine());
    let expected = resample_onto(&moving, fixed.shape(), fixed.affine(), false).unwrap();
    let range = t1.data().iter().copied().fold(0.0f32, f32::max);
    let worst = r.warped.data().iter().zip(expected.data()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 0.01 * range, "largest difference {worst} of {range}");
    let shift = r.displacement_mm.data().iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    assert!(shift < 0.05, "largest displacement {shift} mm");
}

#[test]
fn pairs_from_a_csv_with_labels_and_their_errors() {
    let _turn = crate::take_turn();
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let t1 = vesalius_io::geometry::resample(
        &vesalius_io::load(fixtures().join("mni152_t1.nii.gz")).unwrap(),
        &[8.0, 8.0, 8.0],
        vesalius_io::geometry::Interp::Linear,
    )
    .unwrap();
    let labels = vesalius_io::geometry::resample(
        &vesalius_io::load(fixtures().join("mni152_tissue_labels.nii.gz")).unwrap(),
        &[8.0, 8.0, 8.0],
        vesalius_io::geometry::Interp::Nearest,
    )
    .unwrap();
    let save = |name: &str, img: &Image| vesalius_io::nifti::save(&dir.path().join(name), img, vesalius_io::nifti::NiftiType::F32).unwrap();
    save("a.nii.gz", &t1);
    save("b.nii.gz", &vesalius_io::geometry::flip(&t1, 0).unwrap());
    save("la.nii.gz", &labels);
    save("lb.nii.gz", &vesalius_io::geometry::flip(&labels, 0).unwrap());
    let csv = dir.path().join("pairs.csv");
    std::fs::write(
        &csv,
        "moving,fixed,moving_labels,fixed_labels\na.nii.gz,b.nii.gz,la.nii.gz,lb.nii.gz\nb.nii.gz,a.nii.gz,lb.nii.gz,la.nii.gz\n",
    )
    .unwrap();
    let recipe = |extra: &str| {
        RegRecipe::from_toml(
            &format!(
                "task = \"registration\"\n[data]\nspacing = [8.0, 8.0, 8.0]\nshape = [24, 32, 24]\npairs = \"pairs.csv\"\n\
                 [model]\nencoder = [4, 4, 4]\ndecoder = [4, 4, 4]\n[train]\nsteps = 2\nval_every = 1\nvalidation = 1\nlabel_weight = 1.0\n{extra}"
            ),
            dir.path(),
        )
        .unwrap()
    };
    let run = RunDir::new(dir.path().join("run"));
    let mut logs = Vec::new();
    train::<B>(&recipe(""), &run, &device, |_, l| logs.push(l.clone())).unwrap();
    // Label-supervised validation: a Dice for each record; the run lists the label values it saw.
    assert_eq!(logs.len(), 2);
    assert!(logs.iter().all(|l| l.val.get("dice").copied().flatten().is_some_and(|d| d > 0.0 && d <= 1.0)), "{logs:?}");
    let info: serde_json::Value = run.read_json("run.json").unwrap();
    assert_eq!(info["label_values"], serde_json::json!([0, 1, 2]));
    assert_eq!(info["task"], "registration");

    let error = |csv_text: &str, extra: &str| {
        std::fs::write(&csv, csv_text).unwrap();
        let other = RunDir::new(dir.path().join(format!("bad{}", csv_text.len())));
        train::<B>(&recipe(extra), &other, &device, |_, _| {}).unwrap_err().to_string()
    };
    assert!(error("moving,target\na.nii.gz,b.nii.gz\n", "").contains("needs the columns moving and fixed"));
    let e = error("moving,fixed,moving_labels,fixed_labels\na.nii.gz,b.nii.gz,la.nii.gz,lb.nii.gz\n", "");
    assert!(e.contains("1 pairs: at least 2 needed"), "{e}");
    let e = error("moving,fixed\na.nii.gz,b.nii.gz\nb.nii.gz,a.nii.gz\n", "");
    assert!(e.contains("label_weight needs label maps"), "{e}");
    let e = error(
        "moving,fixed,moving_labels,fixed_labels\na.nii.gz,b.nii.gz,la.nii.gz,lb.nii.gz\nb.nii.gz,missing.nii.gz,lb.nii.gz,la.nii.gz\n",
        "",
    );
    assert!(e.contains("missing.nii.gz"), "{e}");
    save("small.nii.gz", &vesalius_io::geometry::resample(&labels, &[16.0, 16.0, 16.0], vesalius_io::geometry::Interp::Nearest).unwrap());
    let e = error(
        "moving,fixed,moving_labels,fixed_labels\na.nii.gz,b.nii.gz,small.nii.gz,lb.nii.gz\nb.nii.gz,a.nii.gz,lb.nii.gz,la.nii.gz\n",
        "",
    );
    assert!(e.contains("small.nii.gz: the label map's grid differs"), "{e}");
}
