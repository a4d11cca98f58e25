#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! The enhancement task end to end on the real CT slice of `fixtures/`, and its metrics against scikit-image.
use std::path::Path;

use vesalius_enhancement::metrics::{psnr, ssim};
use vesalius_enhancement::recipe::EnhanceRecipe;
use vesalius_train::RunDir;
use vesalius_train::engine::RunOptions;

/// burn's random generator is process-wide: tests that train take turns, so each sees only its own draws.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(not(feature = "test-cuda"))]
type B = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type B = burn::backend::Cuda;
type AB = burn::backend::Autodiff<B>;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn noisy(reference: &[f32]) -> Vec<f32> {
    reference.iter().enumerate().map(|(i, &v)| v + ((i as i64 * 7919) % 41 - 20) as f32).collect()
}

/// Trains `recipe` into `run` without progress output.
fn train_quietly(recipe: &EnhanceRecipe, run: &RunDir, device: &burn::tensor::Device<AB>) -> vesalius_enhancement::train::TrainOutcome {
    vesalius_enhancement::train::train::<AB>(recipe, run, device, &RunOptions { quiet: true, ..Default::default() }, |_| {}).unwrap()
}

/// A reduced CRNN recipe for ×4 under-sampled k-space: `data` is the body of its `[data]` table, `temporal` whether
/// the frames of a series are reconstructed together.
fn crnn_recipe(seed: u64, data: &str, temporal: bool, epochs: usize) -> String {
    format!(
        r#"
        task = "enhancement"
        seed = {seed}
        [data]
        {data}
        train_realisations = 1
        eval_realisations = 1
        [degrade]
        model = "kspace"
        acceleration = 4.0
        centre = 0.08
        [model]
        arch = "crnn"
        features = 8
        iterations = 3
        layers = 2
        temporal = {temporal}
        [train]
        epochs = {epochs}
        iterations = 8
        batch = 2
        lr = 2e-3
    "#
    )
}

#[test]
fn ssim_and_psnr_equal_scikit_image_in_2d_and_3d() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("enhancement/ssim_reference.json")).unwrap()).unwrap();
    let value = |k: &str| expected[k].as_f64().unwrap();

    let slice = vesalius_io::load(fixtures().join("itk/BrainProtonDensitySlice.png")).unwrap();
    let est = noisy(slice.data());
    let s2 = ssim(&est, slice.data(), slice.shape(), 255.0);
    assert!((s2 - value("ssim_2d")).abs() < 1e-4, "SSIM 2D {s2} vs scikit-image {}", value("ssim_2d"));
    let p2 = psnr(&est, slice.data(), 255.0);
    assert!((p2 - value("psnr_2d")).abs() < 1e-4, "PSNR 2D {p2} vs {}", value("psnr_2d"));

    let (w, h, d) = (19usize, 17usize, 14usize);
    let reference: Vec<f32> =
        (0..w * h * d).map(|i| ((i % w).pow(2) + 3 * ((i / w) % h) + 5 * (i / (w * h)).pow(2)) as f32 % 97.0).collect();
    let est = noisy(&reference);
    let s3 = ssim(&est, &reference, &[w, h, d], 96.0);
    assert!((s3 - value("ssim_3d")).abs() < 1e-4, "SSIM 3D {s3} vs scikit-image {}", value("ssim_3d"));
    let p3 = psnr(&est, &reference, 96.0);
    assert!((p3 - value("psnr_3d")).abs() < 1e-4, "PSNR 3D {p3} vs {}", value("psnr_3d"));
}

/// A small denoising recipe on CT_small: Gaussian noise of 150 HU, test rows 0–23, validation rows 104–127.
fn small_recipe(extra: &str) -> EnhanceRecipe {
    let text = format!(
        r#"
        task = "enhancement"
        seed = 3
        [data]
        images = [{{ id = "ct", image = "dicom/single/CT_small.dcm" }}]
        intensity = [-1024.0, 3072.0]
        test_band = {{ axis = 1, start = 0, end = 24 }}
        val_band = {{ axis = 1, start = 104, end = 128 }}
        train_realisations = 4
        eval_realisations = 2
        [degrade]
        model = "gaussian"
        sigma = 150.0
        [model]
        features = 8
        [train]
        epochs = 10
        iterations = 20
        batch = 4
        patch = 32
        lr = 1e-3
        {extra}
        "#
    );
    EnhanceRecipe::from_toml(&text, fixtures()).unwrap()
}

#[test]
fn red_cnn_learns_to_denoise_a_real_ct_and_beats_the_noisy_input_on_held_out_rows() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let recipe = small_recipe("");
    let device = Default::default();
    let outcome = train_quietly(&recipe, &run, &device);
    assert!(outcome.complete);
    assert_eq!(outcome.sizes, [1, 2, 2]); // one plane; 2 realisations of the validation and the test band
    assert_eq!(std::fs::read_to_string(run.log()).unwrap().lines().count(), 10);
    let m = outcome.test.unwrap();
    assert_eq!(m.set, "test");
    assert_eq!(m.bootstrap_unit, "cases of one patient");
    let psnr = |method: &str| m.methods[method].psnr.value;
    // 150 HU noise in a 4096 HU window: 20·log10(4096 / 150) = 28.7 dB before anything is done, a little more
    // after clipping (air at −1000 HU loses the noise below −1024).
    assert!((28.7..29.3).contains(&psnr("input")), "input PSNR {}", psnr("input"));
    assert!(psnr("network") > psnr("input") + 3.0, "network {} vs input {}", psnr("network"), psnr("input"));
    assert!(m.gaussian_sigma.unwrap() > 0.0);
    assert!(m.psnr_gain["network_over_input"].ci_low > 0.0);
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.metrics()).unwrap()).unwrap();
    assert_eq!(written["cases"].as_array().unwrap().len(), 2);
    // one figure per test case: input, output, reference and their difference side by side
    let figures: Vec<_> = std::fs::read_dir(run.file("figures")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(figures.iter().filter(|f| f.starts_with("test-") && f.ends_with(".png")).count(), 2, "{figures:?}");
    let fig = vesalius_io::load(run.file("figures").join(&figures[0])).unwrap();
    assert_eq!(fig.channels(), 3);

    // Prediction keeps the input's grid and improves it.
    let clean = vesalius_enhancement::data::load_image(&fixtures().join("dicom/single/CT_small.dcm")).unwrap();
    let noisy = recipe.degrade.as_ref().unwrap().apply(&clean, 99).unwrap().image;
    let enhancer = vesalius_enhancement::infer::Enhancer::<B>::load(&run, &device).unwrap();
    let out = enhancer.enhance(&noisy).unwrap();
    assert_eq!((out.shape(), out.affine()), (clean.shape(), clean.affine()));
    let window = |x: &[f32]| vesalius_enhancement::metrics::clip(x, -1024.0, 3072.0);
    let before = psnr_of(&window(noisy.data()), &window(clean.data()));
    let after = psnr_of(&window(out.data()), &window(clean.data()));
    assert!(after > before + 3.0, "whole-slice PSNR {before} → {after}");
}

fn psnr_of(x: &[f32], y: &[f32]) -> f64 {
    psnr(x, y, 4096.0)
}

#[test]
fn recipes_with_overlapping_bands_or_missing_test_data_are_refused() {
    let text = std::fs::read_to_string(fixtures().join("../recipes/ct-denoising.toml")).unwrap();
    let overlapping = text.replace("start = 104, end = 128", "start = 10, end = 30");
    let e = EnhanceRecipe::from_toml(&overlapping, fixtures()).unwrap_err().to_string();
    assert!(e.contains("overlap"), "{e}");
    let no_test = text.replace("test_band = { axis = 1, start = 0, end = 24 }", "");
    let e = EnhanceRecipe::from_toml(&no_test, fixtures()).unwrap_err().to_string();
    assert!(e.contains("no test data"), "{e}");
    assert!(EnhanceRecipe::from_toml(&text, fixtures()).is_ok());
}

#[test]
fn through_plane_super_resolution_predicts_on_the_fine_grid_and_reports_the_interpolations() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let text = r#"
        task = "enhancement"
        seed = 1
        [data]
        images = [{ id = "t1", image = "nifti/itk-examples/KmeansTest_T1UCharRaw.nii.gz" }]
        intensity = "percentile"
        orientation = "RAS"
        plane = [0, 2]
        val_band = { axis = 1, start = 40, end = 44 }
        test_band = { axis = 1, start = 20, end = 24 }
        train_realisations = 1
        eval_realisations = 1
        [degrade]
        model = "thick-slice"
        factor = 4
        axis = 2
        [model]
        features = 4
        [train]
        epochs = 2
        iterations = 3
        batch = 2
        patch = 32
        lr = 1e-3
    "#;
    let recipe = EnhanceRecipe::from_toml(text, fixtures()).unwrap();
    assert_eq!(recipe.eval_window(), [0.0, 1.0]);
    let dir = tempfile::tempdir().unwrap();
    let (run, device) = (RunDir::new(dir.path()), Default::default());
    let outcome = train_quietly(&recipe, &run, &device);
    let m = outcome.test.unwrap();
    assert!(m.input.contains("B-spline"), "{}", m.input);
    assert_eq!(m.methods.keys().collect::<Vec<_>>(), ["input", "linear", "network"]);
    assert!(m.gaussian_sigma.is_none());
    // Cubic B-splines beat linear interpolation through thick slices of a real brain.
    assert!(m.psnr_gain["network_over_linear"].value.is_finite());
    assert!(m.methods["input"].psnr.value > m.methods["linear"].psnr.value, "{:?}", m.methods);

    // A thick image is enhanced on the grid whose 4-blocks are its slices.
    let t1 = vesalius_enhancement::data::load_recipe_image(&recipe, &recipe.data.images[0].image).unwrap();
    let thick = recipe.degrade.as_ref().unwrap().apply(&t1, 0).unwrap().image;
    let enhancer = vesalius_enhancement::infer::Enhancer::<B>::load(&run, &device).unwrap();
    let fine = enhancer.enhance(&thick).unwrap();
    assert_eq!(fine.shape(), &[thick.shape()[0], thick.shape()[1], 4 * thick.shape()[2]]);
    for (a, b) in fine.affine().iter().flatten().zip(t1.affine().iter().flatten()) {
        assert!((a - b).abs() < 1e-9, "the fine grid is the original grid: {:?} vs {:?}", fine.affine(), t1.affine());
    }
}

/// `[adapt]`: before enhancing a thick image it did not train on, a copy of the network is fine-tuned on the image's
/// own fine axes, thickened by the same model. Evaluation reports the network before adaptation beside it; prediction
/// adapts too.
#[test]
fn adaptation_to_the_thick_image_itself_is_scored_beside_the_unadapted_network() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let text = r#"
        task = "enhancement"
        seed = 1
        [data]
        images = [{ id = "mni152", image = "mni152/mni152_t1.nii.gz" }]
        test = [{ id = "itk_t1", image = "nifti/itk-examples/KmeansTest_T1UCharRaw.nii.gz" }]
        intensity = "percentile"
        orientation = "RAS"
        plane = [0, 2]
        val_band = { axis = 1, start = 150, end = 152 }
        train_realisations = 1
        eval_realisations = 1
        [degrade]
        model = "thick-slice"
        factor = 4
        axis = 2
        [model]
        features = 8
        kernel = 3
        [train]
        epochs = 1
        iterations = 2
        batch = 2
        patch = 32
        lr = 1e-3
        [adapt]
        steps = 250
        lr = 1e-3
        batch = 4
        patch = 32
    "#;
    let recipe = EnhanceRecipe::from_toml(text, fixtures()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (run, device) = (RunDir::new(dir.path()), Default::default());
    let outcome = train_quietly(&recipe, &run, &device);
    let m = outcome.test.unwrap();
    assert_eq!(m.methods.keys().collect::<Vec<_>>(), ["input", "linear", "network", "unadapted"]);
    assert_eq!(m.adapt.as_ref().map(|a| a.steps), Some(250));
    let psnr = |method: &str| m.methods[method].psnr.value;
    // Two training steps on the template leave the network near its start; adapting to the other subject's own
    // pairs makes it beat the cubic B-spline input it refines (measured: 25.21 dB adapted, 25.07 cubic B-spline,
    // 25.08 unadapted).
    assert!(psnr("network") > psnr("input") + 0.1, "adapted {} vs cubic B-spline {}", psnr("network"), psnr("input"));
    assert!(psnr("network") > psnr("unadapted") + 0.1, "adapted {} vs unadapted {}", psnr("network"), psnr("unadapted"));

    // Prediction adapts to the image it is given, seeded: twice the same result, on the fine grid.
    let t1 = vesalius_enhancement::data::load_recipe_image(&recipe, &recipe.data.test[0].image).unwrap();
    let thick = recipe.degrade.as_ref().unwrap().apply(&t1, 0).unwrap().image;
    let enhancer = vesalius_enhancement::infer::Enhancer::<B>::load(&run, &device).unwrap();
    let fine = enhancer.enhance(&thick).unwrap();
    assert_eq!(fine.shape(), t1.shape());
    assert_eq!(fine, enhancer.enhance(&thick).unwrap());

    // Adaptation's patches must suit the network as training's do; [adapt] needs a thick-slice model.
    let (head, tail) = text.rsplit_once("patch = 32").unwrap(); // [adapt]'s
    let small = format!("{head}patch = 9{tail}");
    let err = EnhanceRecipe::from_toml(&small, fixtures()).unwrap_err().to_string();
    assert!(err.contains("adapt.patch = 9"), "{err}");
    let err = EnhanceRecipe::from_toml(&text.replace("steps = 250", "steps = 0"), fixtures()).unwrap_err().to_string();
    assert!(err.contains("adapt: steps"), "{err}");
    let denoising =
        text.replace("model = \"thick-slice\"\n        factor = 4\n        axis = 2", "model = \"gaussian\"\n        sigma = 0.1");
    let err = EnhanceRecipe::from_toml(&denoising, fixtures()).unwrap_err().to_string();
    assert!(err.contains("thick-slice"), "{err}");
}

/// `data.spacing` resamples every image before it is degraded: the template's 1 mm grid becomes the other subject's
/// 2 × 3 × 2 mm (in RAS), whose own image is left as it is.
#[test]
fn recipes_resample_their_images_to_the_stated_spacing() {
    // The shipped super-resolution recipe resamples to that subject's voxel sizes.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes/mr-superres.toml")).unwrap();
    let recipe = EnhanceRecipe::from_toml(&text, &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes")).unwrap();
    let template = vesalius_enhancement::data::load_recipe_image(&recipe, &recipe.data.images[0].image).unwrap();
    assert_eq!((template.shape(), template.spacing()), (&[99usize, 78, 95][..], vec![2.0, 3.0, 2.0]));
    let other = vesalius_enhancement::data::load_recipe_image(&recipe, &recipe.data.test[0].image).unwrap();
    let mut plain = recipe.clone();
    plain.data.spacing = None;
    assert_eq!(other, vesalius_enhancement::data::load_recipe_image(&plain, &recipe.data.test[0].image).unwrap());
    let data = vesalius_enhancement::data::prepare(&recipe).unwrap();
    assert_eq!(data.train.len(), 78 - 6, "coronal planes outside the two 3-plane bands");
    assert_eq!((data.train[0].w, data.train[0].h), (99, 95));
    let bad = text.replace("spacing = [2.0, 3.0, 2.0]", "spacing = [2.0, -1.0, 2.0]");
    let e = EnhanceRecipe::from_toml(&bad, Path::new(".")).unwrap_err().to_string();
    assert!(e.contains("data.spacing"), "{e}");
}

#[test]
fn crnn_reconstructs_four_fold_undersampled_mr_better_than_zero_filling() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let data = r#"images = [{ id = "t1", image = "nifti/itk-examples/KmeansTest_T1UCharRaw.nii.gz" }]
        intensity = "percentile"
        orientation = "RAS"
        val_band = { axis = 2, start = 60, end = 63 }
        test_band = { axis = 2, start = 40, end = 43 }"#;
    let text = &crnn_recipe(2, data, false, 6);
    let recipe = EnhanceRecipe::from_toml(text, fixtures()).unwrap();
    // The CRNN's plane augmentations are checked, and only a single-frame CRNN takes them.
    let with = |extra: &str| EnhanceRecipe::from_toml(&text.replace("lr = 2e-3", &format!("lr = 2e-3\n{extra}")), fixtures());
    assert!(with("gamma = [0.5, 1.5]\nnoise = 0.05").is_ok());
    for (extra, needle) in [
        ("gamma = [1.5, 0.5]", "train.gamma"),
        ("noise = -0.1", "train.noise"),
        ("noise = 1e9", "train.noise"),
        ("schedule = { kind = \"cosine\", min_lr = 1.0 }", "train.schedule"),
    ] {
        let e = with(extra).unwrap_err().to_string();
        assert!(e.contains(needle), "{extra}: {e}");
    }
    // A schedule over the epochs ties them: a run with one cannot be resumed with another number of epochs.
    let cosine = with("schedule = { kind = \"cosine\" }").unwrap();
    assert_eq!(cosine.train.schedule, vesalius_train::recipe::Schedule::Cosine { min_lr: 0.0 });
    assert!(vesalius_enhancement::train::resume_rules(&cosine).schedule_depends);
    assert!(!vesalius_enhancement::train::resume_rules(&recipe).schedule_depends);
    let temporal = crnn_recipe(2, data, true, 6).replace("lr = 2e-3", "lr = 2e-3\nnoise = 0.05");
    let e = EnhanceRecipe::from_toml(&temporal, fixtures()).unwrap_err().to_string();
    assert!(e.contains("single-frame CRNN"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let (run, device) = (RunDir::new(dir.path()), Default::default());
    let outcome = train_quietly(&recipe, &run, &device);
    let m = outcome.test.unwrap();
    assert_eq!(m.methods.keys().collect::<Vec<_>>(), ["input", "network"]);
    let (zero_filled, network) = (m.methods["input"].psnr.value, m.methods["network"].psnr.value);
    eprintln!("zero-filled {zero_filled:.2} dB, network {network:.2} dB");
    assert!(network > zero_filled + 1.0, "zero-filled {zero_filled} dB, CRNN {network} dB");

    // Prediction from the zero-filled complex image and its mask, as `vesalius degrade --model kspace` writes them.
    let t1 = vesalius_enhancement::data::load_recipe_image(&recipe, &recipe.data.images[0].image).unwrap();
    let d = recipe.degrade.as_ref().unwrap().apply(&t1, 5).unwrap();
    let enhancer = vesalius_enhancement::infer::Enhancer::<B>::load(&run, &device).unwrap();
    let out = enhancer.reconstruct(d.complex.as_ref().unwrap(), d.mask.as_ref().unwrap()).unwrap();
    assert_eq!(out.shape(), t1.shape());
    let e = enhancer.enhance(&d.image).unwrap_err().to_string();
    assert!(e.contains("--mask"), "{e}");
    // Prediction scales its input as training and evaluation did, from what the measurements hold (the image
    // reconstructed from the fully sampled centre lines), never from the reference it does not have: the same
    // measured lines give the plane that evaluation scored.
    use vesalius_enhancement::data::{PlaneAxes, dims3, extract_plane};
    let prepared = vesalius_enhancement::data::prepare(&recipe).unwrap();
    // More mask draws for the test cases alone: validation is unchanged and the first draw is the same.
    let more = |n: &str| {
        EnhanceRecipe::from_toml(
            &text.replace("eval_realisations = 1", &format!("eval_realisations = 1\ntest_realisations = {n}")),
            fixtures(),
        )
    };
    let three = vesalius_enhancement::data::prepare(&more("3").unwrap()).unwrap();
    assert_eq!((three.val.len(), three.test.len()), (prepared.val.len(), 3 * prepared.test.len()));
    assert_eq!(three.test[0].lines, prepared.test[0].lines);
    assert_ne!(three.test[0].lines, three.test[prepared.test.len()].lines);
    assert!(more("0").unwrap_err().to_string().contains("test_realisations"));
    let case = &prepared.test[1];
    let k: usize = case.id.split([':', '#']).nth(1).unwrap().parse().unwrap();
    let lines = case.lines.clone().unwrap();
    let (shape, axes) = (dims3(t1.shape()), PlaneAxes { u: 0, v: 1, across: 2 });
    let (mut re, mut im, mut lines_image) = (Vec::new(), Vec::new(), Vec::new());
    for plane in 0..shape[2] {
        let (w, h, p) = extract_plane(t1.data(), shape, axes, plane);
        let x0 = vesalius_enhancement::kspace::measure(&p, w, h, &lines).1;
        re.extend_from_slice(&x0[..w * h]);
        im.extend_from_slice(&x0[w * h..]);
        lines_image.extend(vesalius_enhancement::kspace::mask_plane(w, &lines));
    }
    let complex = vesalius_io::Image::new([re, im].concat(), t1.shape().to_vec(), 2, *t1.affine(), "float32").unwrap();
    let mask = vesalius_io::Image::new(lines_image, t1.shape().to_vec(), 1, *t1.affine(), "float32").unwrap();
    let predicted = case.intensity.normalise(&extract_plane(enhancer.reconstruct(&complex, &mask).unwrap().data(), shape, axes, k).2);
    let (_, info) = vesalius_enhancement::evaluate::read_run(&run).unwrap();
    let net = vesalius_enhancement::evaluate::load_best::<B>(&run, &info.details, &device).unwrap();
    let scored = vesalius_enhancement::evaluate::network_on_case(&net, &recipe.model, case, &device);
    let worst = predicted.iter().zip(&scored).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "plane {k}: prediction and evaluation differ by up to {worst}");
    // A mask without the fully sampled centre the run trained with is refused.
    let mut no_centre = mask.data().to_vec();
    no_centre[..shape[0]].fill(0.0); // the first plane's zero-frequency line
    let no_centre = vesalius_io::Image::new(no_centre, t1.shape().to_vec(), 1, *t1.affine(), "float32").unwrap();
    let e = enhancer.reconstruct(&complex, &no_centre).unwrap_err().to_string();
    assert!(e.contains("fully sampled centre"), "{e}");
    // The CRNN needs k-space data.
    let e = EnhanceRecipe::from_toml(
        &text.replace("model = \"kspace\"\n        acceleration = 4.0\n        centre = 0.08", "model = \"gaussian\"\n        sigma = 1.0"),
        fixtures(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("kspace"), "{e}");
}

/// `[adapt]` for reconstruction: before reconstructing a subject it did not train on, a copy of the CRNN learns from
/// that subject's own measured lines (held-out lines scored in k-space), beside the network before adaptation.
#[test]
fn a_crnn_trains_on_images_whose_planes_differ_in_size() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // 24 axial planes of 58 × 58 (dipy's 4 mm b0 volume) and one of 181 × 217 (BrainWeb's T1 slice) train together,
    // each placed in a 181 × 217 plane; BrainWeb's proton-density slice is the test image.
    let data = r#"images = [{ id = "b0", image = "nifti/dipy/aniso_vox.nii.gz" }, { id = "t1", image = "itk/BrainT1Slice.png" }]
        intensity = "percentile"
        val = [{ id = "b0-10", image = "nifti/dipy/S0_10slices.nii.gz" }]
        test = [{ id = "pd", image = "itk/BrainProtonDensitySlice.png" }]"#;
    let recipe = EnhanceRecipe::from_toml(&crnn_recipe(6, data, false, 3), fixtures()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (run, device) = (RunDir::new(dir.path()), Default::default());
    let outcome = train_quietly(&recipe, &run, &device);
    assert_eq!(outcome.sizes[0], 24 + 1);
    let m = outcome.test.unwrap();
    let (zero_filled, network) = (m.methods["input"].psnr.value, m.methods["network"].psnr.value);
    eprintln!("zero-filled {zero_filled:.2} dB, network {network:.2} dB");
    assert!(network > zero_filled + 1.0, "zero-filled {zero_filled} dB, CRNN {network} dB");
    // The shipped reconstruction recipe trains so, on the template and real scans of other sizes.
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let shipped = EnhanceRecipe::from_toml(&std::fs::read_to_string(recipes.join("mr-recon.toml")).unwrap(), &recipes).unwrap();
    assert_eq!((shipped.data.images.len(), shipped.data.val.len(), shipped.data.test.len()), (3, 0, 1));
}

#[test]
fn adaptation_to_the_measured_lines_themselves_is_scored_beside_the_unadapted_crnn() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // Trained on one subject (ITK's T1), tested on another (the MNI152 template), both at 4 mm to keep it short.
    let data = r#"images = [{ id = "t1", image = "nifti/itk-examples/KmeansTest_T1UCharRaw.nii.gz" }]
        test = [{ id = "mni152", image = "mni152/mni152_t1.nii.gz" }]
        intensity = "percentile"
        orientation = "RAS"
        spacing = [4.0, 4.0, 4.0]
        val_band = { axis = 2, start = 20, end = 22 }"#;
    let adapt = "\n        [adapt]\n        steps = 120\n        lr = 3e-4\n        batch = 2\n";
    // Planes of 64 × 46 at 4 mm: the default 48-pixel patch check does not fit them.
    let text = crnn_recipe(4, data, false, 4).replace("lr = 2e-3", "lr = 2e-3\n        patch = 32") + adapt;
    let recipe = EnhanceRecipe::from_toml(&text, fixtures()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (run, device) = (RunDir::new(dir.path()), Default::default());
    let m = train_quietly(&recipe, &run, &device).test.unwrap();
    assert_eq!(m.methods.keys().collect::<Vec<_>>(), ["input", "network", "unadapted"]);
    assert_eq!(m.adapt.as_ref().map(|a| (a.steps, a.holdout, a.validation)), Some((120, 0.4, 0.2)));
    let psnr = |method: &str| m.methods[method].psnr.value;
    // Four short epochs on one subject leave the CRNN far from done; the other subject's own lines improve it
    // (measured: 25.37 dB adapted, 24.82 unadapted, 22.37 zero-filled).
    eprintln!("adapted {:.2} dB, unadapted {:.2} dB, zero-filled {:.2} dB", psnr("network"), psnr("unadapted"), psnr("input"));
    assert!(psnr("network") > psnr("unadapted") + 0.35, "adapted {} vs unadapted {}", psnr("network"), psnr("unadapted"));
    assert!(psnr("network") > psnr("input") + 2.0, "adapted {} vs zero-filled {}", psnr("network"), psnr("input"));

    // Prediction adapts to the measurements it is given, seeded: twice the same result.
    let mni = vesalius_enhancement::data::load_recipe_image(&recipe, &recipe.data.test[0].image).unwrap();
    let d = recipe.degrade.as_ref().unwrap().apply(&mni, 5).unwrap();
    let enhancer = vesalius_enhancement::infer::Enhancer::<B>::load(&run, &device).unwrap();
    let (complex, mask) = (d.complex.as_ref().unwrap(), d.mask.as_ref().unwrap());
    let out = enhancer.reconstruct(complex, mask).unwrap();
    assert_eq!(out.shape(), mni.shape());
    assert_eq!(out, enhancer.reconstruct(complex, mask).unwrap());

    // A temporal CRNN, or a share of held-out lines outside (0, 1), is refused.
    let e = EnhanceRecipe::from_toml(&text.replace("temporal = false", "temporal = true"), fixtures()).unwrap_err().to_string();
    assert!(e.contains("[adapt] reconstructs single frames"), "{e}");
    let e = EnhanceRecipe::from_toml(&format!("{text}        holdout = 1.0\n"), fixtures()).unwrap_err().to_string();
    assert!(e.contains("holdout"), "{e}");
}

/// A real dynamic series (nibabel's example4d: EPI, 2 frames): each frame under-sampled ×4 with its own mask and
/// the frames reconstructed together by the temporal CRNN.
#[test]
fn the_temporal_crnn_reconstructs_a_real_fmri_series_better_than_zero_filling() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let data = r#"images = [{ id = "epi", image = "nifti/nibabel/example4d.nii.gz" }]
        intensity = "percentile"
        val_band = { axis = 2, start = 4, end = 6 }
        test_band = { axis = 2, start = 14, end = 16 }"#;
    let text = &crnn_recipe(1, data, true, 5);
    let recipe = EnhanceRecipe::from_toml(text, fixtures()).unwrap();
    let data = vesalius_enhancement::data::prepare(&recipe).unwrap();
    assert_eq!(data.train.len(), 20, "24 slices less two held-out pairs");
    assert!(data.train.iter().all(|p| p.frames.len() == 2));
    // Every test slice is scored frame by frame, each frame with its own mask.
    assert_eq!(data.test.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["epi:14/t0#0", "epi:14/t1#0", "epi:15/t0#0", "epi:15/t1#0"]);
    assert_ne!(data.test[0].lines, data.test[1].lines);
    let dir = tempfile::tempdir().unwrap();
    let (run, device) = (RunDir::new(dir.path()), Default::default());
    let outcome = train_quietly(&recipe, &run, &device);
    let m = outcome.test.unwrap();
    let (zero_filled, network) = (m.methods["input"].psnr.value, m.methods["network"].psnr.value);
    eprintln!("zero-filled {zero_filled:.2} dB, network {network:.2} dB");
    assert!(network > zero_filled + 2.0, "zero-filled {zero_filled} dB, temporal CRNN {network} dB");

    // Prediction from a degraded series, as `vesalius degrade --model kspace` writes it: 2 frames, 4 channels.
    let series = vesalius_io::load(fixtures().join("nifti/nibabel/example4d.nii.gz")).unwrap();
    let d = recipe.degrade.as_ref().unwrap().apply(&series, 3).unwrap();
    let (complex, mask) = (d.complex.unwrap(), d.mask.unwrap());
    assert_eq!((complex.channels(), mask.channels(), d.image.channels()), (4, 2, 2));
    assert_ne!(mask.channel(0), mask.channel(1), "each frame has its own mask");
    let enhancer = vesalius_enhancement::infer::Enhancer::<B>::load(&run, &device).unwrap();
    let out = enhancer.reconstruct(&complex, &mask).unwrap();
    assert_eq!((out.shape(), out.channels()), (series.shape(), 2));
    let slice = 128 * 96 * 15..128 * 96 * 16;
    for t in 0..2 {
        let (truth, zf, rec) = (&series.channel(t)[slice.clone()], &d.image.channel(t)[slice.clone()], &out.channel(t)[slice.clone()]);
        let range = truth.iter().cloned().fold(0.0f32, f32::max) as f64;
        let (pr, pz) = (psnr(rec, truth, range), psnr(zf, truth, range));
        assert!(pr > pz + 1.0, "frame {t} of slice 15: {pr} vs zero-filled {pz} dB");
    }
    // A mask whose frames do not match the image's channels is refused.
    let e = enhancer.reconstruct(
        &complex,
        &vesalius_io::Image::new(mask.channel(0).to_vec(), mask.shape().to_vec(), 1, *mask.affine(), "uint8").unwrap(),
    );
    assert!(e.unwrap_err().to_string().contains("two channels per mask frame"));
    // Temporal recurrence is for k-space CRNNs only.
    let e = EnhanceRecipe::from_toml(&text.replace("arch = \"crnn\"", "arch = \"red-cnn\""), fixtures()).unwrap_err().to_string();
    assert!(e.contains("model.temporal"), "{e}");
}

#[test]
fn translation_trains_on_a_registered_pair_and_is_scored_against_an_affine_intensity_map() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let text = std::fs::read_to_string(fixtures().join("../recipes/t1-to-pd.toml")).unwrap();
    let small = text.replace("epochs = 30", "epochs = 2").replace("iterations = 20", "iterations = 2").replace("batch = 8", "batch = 2");
    let recipe = EnhanceRecipe::from_toml(&small, &fixtures().join("../recipes")).unwrap();
    assert!(recipe.degrade.is_none());
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let outcome = train_quietly(&recipe, &run, &Default::default());
    let m = outcome.test.unwrap();
    assert_eq!(m.methods.keys().collect::<Vec<_>>(), ["input", "linear-fit", "network"]);
    assert!(m.input.contains("other contrast"));
    // Every method is scored on the held-out rows in the same window.
    assert!(m.methods.values().all(|q| q.rmse.value.is_finite() && q.psnr.value.is_finite()));

    // A pair and a degradation at once, or an image without its input, are refused.
    let both = text.replace("[model]", "[degrade]\nmodel = \"gaussian\"\nsigma = 1.0\n[model]");
    let e = EnhanceRecipe::from_toml(&both, &fixtures().join("../recipes")).unwrap_err().to_string();
    assert!(e.contains("choose one"), "{e}");
    let unpaired = text.replace(", input = \"../fixtures/itk/BrainT1Slice.png\"", "");
    let e = EnhanceRecipe::from_toml(&unpaired, &fixtures().join("../recipes")).unwrap_err().to_string();
    assert!(e.contains("has no `input`"), "{e}");
}

#[test]
fn macenko_stain_vectors_equal_the_numpy_reference_and_every_method_runs_on_real_he() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    use vesalius_enhancement::stain::{colour_distance, macenko_stains};
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("histology/macenko_reference.json")).unwrap()).unwrap();
    for (file, tolerance) in [("cmu1_crop.png", 1e-3), ("stardist_histo.jpg", 1e-2)] {
        // (JPEG decoders differ by a grey level here and there: a looser tolerance for the JPEG.)
        let img = vesalius_io::load(fixtures().join("histology").join(file)).unwrap();
        let (he, conc) = macenko_stains(&img).unwrap();
        for (k, name) in ["haematoxylin", "eosin"].iter().enumerate() {
            let r: Vec<f64> = expected[file][name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let cos: f64 = he[k].iter().zip(&r).map(|(a, b)| a * b).sum();
            assert!(1.0 - cos < tolerance, "{file} {name}: {:?} vs {r:?}", he[k]);
            let mut c: Vec<f64> = conc.iter().map(|x| x[k]).collect();
            c.sort_by(f64::total_cmp);
            let c99 = c[(0.99 * (c.len() - 1) as f64).round() as usize];
            let r99 = expected[file]["c99"][k].as_f64().unwrap();
            assert!((c99 / r99 - 1.0).abs() < 10.0 * tolerance, "{file} {name} 99th percentile {c99} vs {r99}");
        }
    }
    // The recipe: every method writes its image, and Reinhard and the auto-encoder bring the colours closer.
    let dir = tempfile::tempdir().unwrap();
    let recipe = vesalius_enhancement::stain::StainRecipe::from_file(&fixtures().join("../recipes/stain-normalisation.toml")).unwrap();
    let report = vesalius_enhancement::stain::run::<AB>(&recipe, dir.path(), &Default::default()).unwrap();
    let d = &report.sources["cmu1_crop.png"];
    for m in ["reinhard", "macenko", "sae"] {
        assert!(dir.path().join(format!("cmu1_crop_{m}.png")).is_file(), "{m}");
    }
    assert!(d["reinhard"].mean < 0.05 && d["reinhard"].std < 0.05, "{d:?}"); // Reinhard matches the moments
    assert!(d["sae"].wasserstein < 0.5 * d["none"].wasserstein, "{d:?}");
    let target = vesalius_io::load(fixtures().join("histology/stardist_histo.jpg")).unwrap();
    assert_eq!(colour_distance(&target, &target).unwrap().wasserstein, 0.0);
}
