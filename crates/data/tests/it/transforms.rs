//! Transforms with known answers: quarter turns, flips, world coordinates kept, intensity maps by their
//! definitions, random transforms reproducible by seed, harmonisation that only degrades.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use vesalius_data::harmonise::{Quality, SliceThickness, degrade, estimate_noise};
use vesalius_data::transforms::{self, AffineParams, NormMask, Pipeline, Subject, Transform, rng};
use vesalius_data::{IDENTITY, Image};

fn img2(w: usize, h: usize, f: impl Fn(usize, usize) -> f32) -> Image {
    let data = (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).map(|(x, y)| f(x, y)).collect();
    Image::new(data, vec![w, h], 1, IDENTITY, "float32").unwrap()
}

fn img3(shape: [usize; 3], spacing: [f64; 3], f: impl Fn(usize, usize, usize) -> f32) -> Image {
    let mut data = Vec::new();
    for z in 0..shape[2] {
        for y in 0..shape[1] {
            for x in 0..shape[0] {
                data.push(f(x, y, z));
            }
        }
    }
    let mut a = IDENTITY;
    for i in 0..3 {
        a[i][i] = spacing[i];
        a[i][3] = 10.0 * (i as f64 + 1.0);
    }
    Image::new(data, shape.to_vec(), 1, a, "float32").unwrap()
}

fn apply(t: Transform, s: Subject, seed: u64) -> Subject {
    t.apply(s, &mut rng(seed)).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn rotation_by_90_degrees_equals_rot90() {
    let img = img2(7, 7, |x, y| (x * 7 + y * y) as f32);
    let turned = transforms::rot90(&img, 1, [0, 1]).unwrap();
    let rotated = apply(Transform::Affine(AffineParams { rotate: vec![90.0], ..Default::default() }), Subject::new(img.clone()), 0);
    assert!(max_abs_diff(turned.data(), rotated.image.data()) < 1e-4, "{:?}\n{:?}", turned.data(), rotated.image.data());
    // numpy's rot90: new[i, j] = old[j, n − 1 − i] in (first, second) axis order.
    assert_eq!(turned.get(&[2, 5]), img.get(&[5, 7 - 1 - 2]));
    // In 3D, about the third axis, likewise for every slice.
    let v = img3([5, 5, 3], [1.0; 3], |x, y, z| (x + 5 * y + 25 * z) as f32);
    let t3 = transforms::rot90(&v, 1, [0, 1]).unwrap();
    let r3 = apply(Transform::Affine(AffineParams { rotate: vec![0.0, 0.0, 90.0], ..Default::default() }), Subject::new(v), 0);
    assert!(max_abs_diff(t3.data(), r3.image.data()) < 1e-4);
}

#[test]
fn flips_and_turns_compose_to_identity_and_keep_world_coordinates() {
    let v = img3([4, 5, 3], [0.8, 1.2, 2.5], |x, y, z| (x * 100 + y * 10 + z) as f32);
    let twice = apply(Transform::Flip { axes: vec![1, 1] }, Subject::new(v.clone()), 0);
    assert_eq!(twice.image, v);
    let four = (0..4).fold(v.clone(), |acc, _| transforms::rot90(&acc, 1, [0, 2]).unwrap());
    assert_eq!(four.data(), v.data());
    for (i, j) in four.affine().iter().flatten().zip(v.affine().iter().flatten()) {
        assert!((i - j).abs() < 1e-12);
    }
    // Every voxel keeps its world position: find each value's voxel before and after.
    let check = |out: &Image| {
        for z in 0..out.shape()[2] {
            for y in 0..out.shape()[1] {
                for x in 0..out.shape()[0] {
                    let val = out.get(&[x, y, z]) as usize;
                    let (ox, oy, oz) = (val / 100, val / 10 % 10, val % 10);
                    let a = out.world([x as f64, y as f64, z as f64]);
                    let b = v.world([ox as f64, oy as f64, oz as f64]);
                    for k in 0..3 {
                        assert!((a[k] - b[k]).abs() < 1e-9, "{a:?} vs {b:?}");
                    }
                }
            }
        }
    };
    check(&apply(Transform::Flip { axes: vec![0, 2] }, Subject::new(v.clone()), 0).image);
    check(&transforms::rot90(&v, 1, [0, 1]).unwrap());
    check(&transforms::rot90(&v, 3, [1, 2]).unwrap());
    let cropped = apply(Transform::CropPad { shape: vec![2, 3, 3] }, Subject::new(v.clone()), 0).image;
    assert_eq!(cropped.shape(), &[2, 3, 3]);
    check(&cropped);
}

#[test]
fn resize_and_resample_keep_the_field_of_view() {
    let v = img3([4, 6, 2], [1.0, 1.0, 3.0], |x, _, _| x as f32);
    let r = apply(Transform::Resize { shape: vec![8, 3, 2] }, Subject::new(v.clone()), 0).image;
    assert_eq!(r.shape(), &[8, 3, 2]);
    assert_eq!(r.spacing(), vec![0.5, 2.0, 3.0]);
    // The new grid's first voxel centre lies a quarter of an old voxel before the old one's (align_corners=False).
    let w = r.world([0.0, 0.0, 0.0]);
    assert!((w[0] - (v.world([-0.25, 0.0, 0.0])[0])).abs() < 1e-12);
    // A linear ramp stays a ramp inside: value = world x − origin.
    assert!((r.get(&[3, 0, 0]) - 1.25).abs() < 1e-6);
    let s = apply(Transform::Resample { spacing: vec![2.0, 2.0, 3.0] }, Subject::new(v), 0).image;
    assert_eq!(s.shape(), &[2, 3, 2]);
    assert_eq!(s.get(&[1, 0, 0]), 2.0);
}

#[test]
fn affine_translation_and_identity() {
    let v = img3([8, 6, 4], [2.0, 1.0, 1.0], |x, y, z| (x + 10 * y + 100 * z) as f32);
    let id = apply(Transform::Affine(AffineParams::default()), Subject::new(v.clone()), 0);
    assert_eq!(id.image.data(), v.data());
    // 4 mm along axis 0 with 2 mm voxels is two voxels.
    let moved =
        apply(Transform::Affine(AffineParams { translate: vec![4.0, 0.0, 0.0], ..Default::default() }), Subject::new(v.clone()), 0).image;
    assert_eq!(moved.get(&[5, 3, 2]), v.get(&[3, 3, 2]));
    assert_eq!(moved.get(&[0, 3, 2]), 0.0); // uncovered: zero
    assert_eq!(moved.affine(), v.affine()); // the grid stays, the content moves
}

#[test]
fn labels_follow_the_image_through_random_spatial_transforms() {
    let label = img3([24, 24, 12], [1.0; 3], |x, y, z| {
        let d = (x as f64 - 11.5).powi(2) + (y as f64 - 11.5).powi(2) + ((z as f64 - 5.5) * 1.5).powi(2);
        (d < 50.0) as u8 as f32
    });
    let image =
        Image::new(label.data().iter().map(|v| v * 100.0).collect(), label.shape().to_vec(), 1, *label.affine(), "float32").unwrap();
    let s = Subject::with_label(image, label).unwrap();
    let pipeline = Pipeline {
        transforms: vec![
            Transform::RandAffine { prob: 1.0, rotate: vec![30.0], scale: 0.2, shear: 0.1, translate: vec![3.0] },
            Transform::RandElastic { prob: 1.0, spacing: 6.0, magnitude: 1.5 },
            Transform::RandFlip { prob: 0.5, axes: vec![0, 1, 2] },
            Transform::RandRot90 { prob: 1.0, axes: [0, 1] },
        ],
    };
    for seed in 0..4 {
        let out = pipeline.apply_seeded(s.clone(), seed).unwrap();
        let (img, lab) = (out.image, out.label.unwrap());
        assert!(lab.data().iter().all(|&v| v == 0.0 || v == 1.0), "nearest keeps label values");
        // Away from the boundary (where linear and nearest interpolation may differ by one voxel) they agree.
        let wrong = img.data().iter().zip(lab.data()).filter(|(i, l)| (**i > 90.0 && **l == 0.0) || (**i < 10.0 && **l == 1.0)).count();
        assert!(wrong * 200 < img.voxels(), "seed {seed}: {wrong}");
        assert!(lab.data().iter().sum::<f32>() > 100.0);
    }
}

#[test]
fn random_transforms_are_reproducible_by_seed() {
    let v = img3([10, 9, 8], [1.0; 3], |x, y, z| ((x * 7 + y * 3 + z) % 11) as f32);
    let pipeline = Pipeline::from_toml(
        r#"
        [[transforms]]
        type = "rand_affine"
        prob = 1.0
        rotate = [15.0]
        scale = 0.1
        [[transforms]]
        type = "rand_elastic"
        prob = 1.0
        spacing = 4.0
        magnitude = 1.0
        [[transforms]]
        type = "rand_gaussian_noise"
        prob = 1.0
        std = [0.0, 0.5]
        [[transforms]]
        type = "rand_bias_field"
        prob = 1.0
        coeff = 0.2
        [[transforms]]
        type = "rand_gamma"
        prob = 1.0
        gamma = [0.7, 1.5]
        [[transforms]]
        type = "rand_scale_shift"
        prob = 1.0
        scale = [0.9, 1.1]
        shift = [-0.1, 0.1]
        [[transforms]]
        type = "rand_gaussian_blur"
        prob = 1.0
        sigma = [0.5, 1.0]
        [[transforms]]
        type = "rand_crop"
        shape = [8, 8, 8]
        "#,
    )
    .unwrap();
    let a = pipeline.apply_seeded(Subject::new(v.clone()), 42).unwrap();
    let b = pipeline.apply_seeded(Subject::new(v.clone()), 42).unwrap();
    let c = pipeline.apply_seeded(Subject::new(v), 43).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.image.data(), c.image.data());
    assert_eq!(a.image.shape(), &[8, 8, 8]);
    // The first draws of the generator are fixed by the seed on every machine.
    let mut r = rng(42);
    let first: Vec<f64> = (0..3).map(|_| transforms::normal(&mut r)).collect();
    let mut r2 = rng(42);
    assert_eq!(first, (0..3).map(|_| transforms::normal(&mut r2)).collect::<Vec<_>>());
}

#[test]
fn intensity_transforms_by_their_definitions() {
    let ramp = img2(101, 1, |x, _| x as f32);
    let s = |t: Transform, img: &Image| apply(t, Subject::new(img.clone()), 0).image;
    let z = s(Transform::ZScore { mask: NormMask::All }, &ramp);
    let mean: f64 = z.data().iter().map(|&v| v as f64).sum::<f64>() / 101.0;
    let var: f64 = z.data().iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 101.0;
    assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    let masked = s(Transform::ZScore { mask: NormMask::Nonzero }, &ramp);
    assert_eq!(masked.data()[0], 0.0);
    assert!((masked.data()[1] - ((1.0 - 50.5) / 28.866_07) as f32).abs() < 1e-4);
    let clipped = s(Transform::ClipPercentiles { lower: 1.0, upper: 99.0 }, &ramp);
    assert_eq!((clipped.data()[0], clipped.data()[100]), (1.0, 99.0));
    assert_eq!(transforms::percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
    let hu = img2(3, 1, |x, _| [-160.0, 40.0, 240.0][x]);
    assert_eq!(s(Transform::Window { level: 40.0, width: 400.0 }, &hu).data(), &[0.0, 0.5, 1.0]);
    let mm = s(Transform::MinMax { min: -1.0, max: 1.0 }, &ramp);
    assert_eq!((mm.data()[0], mm.data()[50], mm.data()[100]), (-1.0, 0.0, 1.0));
    let g = s(Transform::Gamma { gamma: 2.0 }, &ramp);
    assert!((g.data()[50] - 25.0).abs() < 1e-4); // (50/100)² · 100
    let sc = s(Transform::ScaleShift { scale: 2.0, shift: -1.0 }, &ramp);
    assert_eq!(sc.data()[3], 5.0);
    // Blur: a constant stays constant; a delta becomes the normalised kernel.
    let flat = img2(9, 9, |_, _| 3.0);
    assert!(s(Transform::GaussianBlur { sigma: vec![1.5] }, &flat).data().iter().all(|v| (v - 3.0).abs() < 1e-5));
    let delta = img2(31, 1, |x, _| (x == 15) as u8 as f32);
    let b = s(Transform::GaussianBlur { sigma: vec![2.0, 0.0] }, &delta);
    let k = transforms::gaussian_kernel(2.0);
    assert!((b.data().iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert!((b.data()[15] as f64 - k[k.len() / 2]).abs() < 1e-6);
    assert!((k[k.len() / 2] - 1.0 / (2.0 * std::f64::consts::PI).sqrt() / 2.0).abs() < 1e-3);
}

#[test]
fn bias_field_is_smooth_and_multiplicative() {
    let flat = img3([16, 16, 8], [1.0; 3], |_, _, _| 10.0);
    let out = apply(Transform::RandBiasField { prob: 1.0, degree: 3, coeff: 0.1 }, Subject::new(flat.clone()), 3).image;
    assert!(out.data().iter().all(|&v| v > 0.0));
    assert!(out.data().iter().any(|&v| (v - 10.0).abs() > 0.1));
    // Neighbouring voxels differ little: a smooth field.
    let jump = out.data().chunks(16).flat_map(|row| row.windows(2).map(|w| (w[1] / w[0] - 1.0).abs())).fold(0.0, f32::max);
    assert!(jump < 0.15, "{jump}");
    let none = apply(Transform::RandBiasField { prob: 1.0, degree: 3, coeff: 0.0 }, Subject::new(flat.clone()), 3).image;
    assert_eq!(none.data(), flat.data());
}

#[test]
fn crop_to_foreground_and_pipelines_from_toml() {
    let label = img2(10, 8, |x, y| ((3..6).contains(&x) && (2..4).contains(&y)) as u8 as f32);
    let s = Subject::with_label(img2(10, 8, |x, y| (x + y) as f32), label).unwrap();
    let c = apply(Transform::CropForeground { margin: 1 }, s, 0);
    assert_eq!(c.image.shape(), &[5, 4]);
    assert_eq!(c.image.get(&[1, 1]), 5.0); // voxel (3, 2)
    assert_eq!(c.image.world([0.0, 0.0, 0.0]), [2.0, 1.0, 0.0]); // identity grid: the new origin is old voxel (2, 1)
    let bad = Pipeline::from_toml("[[transforms]]\ntype = \"rand_flip\"\nprob = 0.5\naxes = [0]\nbogus = 1\n");
    assert!(bad.unwrap_err().to_string().contains("bogus"));
    let unknown = Pipeline::from_toml("[[transforms]]\ntype = \"sharpen\"\n");
    assert!(unknown.unwrap_err().to_string().contains("sharpen"));
    // Round trip through TOML.
    let p = Pipeline {
        transforms: vec![
            Transform::ClipPercentiles { lower: 0.5, upper: 99.5 },
            Transform::Degrade(Quality { spacing: vec![2.0, 2.0], noise_std: 0.1, ..Default::default() }),
            Transform::Rot90 { k: 1, axes: [0, 1] },
        ],
    };
    let text = toml::to_string(&p).unwrap();
    assert_eq!(Pipeline::from_toml(&text).unwrap(), p);
}

#[test]
fn harmonisation_degrades_only() {
    // A fine checkerboard at 1 mm disappears at 2 mm resolution; the grid stays.
    let checker = img3([32, 32, 4], [1.0; 3], |x, y, _| if (x + y) % 2 == 0 { 1.0 } else { 0.0 });
    let q = Quality { spacing: vec![2.0, 2.0, 1.0], ..Default::default() };
    let low = degrade(&checker, &q, &mut rng(0)).unwrap();
    assert_eq!(low.shape(), checker.shape());
    assert_eq!(low.affine(), checker.affine());
    let contrast = |img: &Image| img.data().iter().map(|v| (v - 0.5).abs()).sum::<f32>() / img.voxels() as f32;
    assert!(contrast(&low) < 0.1 * contrast(&checker), "{}", contrast(&low));
    // A finer target leaves the image as it is.
    let finer = Quality { spacing: vec![0.5, 0.5, 0.5], ..Default::default() };
    assert_eq!(degrade(&checker, &finer, &mut rng(0)).unwrap(), checker);
    // Thick slices average neighbouring slices; a thickness below the spacing does nothing.
    let slices = img3([4, 4, 9], [1.0, 1.0, 1.0], |_, _, z| (z == 4) as u8 as f32);
    let thick =
        degrade(&slices, &Quality { slice_thickness: Some(SliceThickness { axis: 2, mm: 3.0 }), ..Default::default() }, &mut rng(0))
            .unwrap();
    assert!((thick.get(&[1, 1, 4]) - 1.0 / 3.0).abs() < 1e-6 && (thick.get(&[1, 1, 3]) - 1.0 / 3.0).abs() < 1e-6);
    // Noise: measured, topped up to the target, never removed.
    let flat = img3([64, 64, 2], [1.0; 3], |_, _, _| 50.0);
    let noisy = degrade(&flat, &Quality { noise_std: 4.0, ..Default::default() }, &mut rng(1)).unwrap();
    assert!((estimate_noise(&noisy) - 4.0).abs() < 0.3, "{}", estimate_noise(&noisy));
    let less = degrade(&noisy, &Quality { noise_std: 2.0, ..Default::default() }, &mut rng(2)).unwrap();
    assert_eq!(less, noisy);
    // The common target of several sites is the worst of each aspect.
    let lowest = Quality::lowest(&[Quality::measure(&flat), Quality::measure(&noisy), q]);
    assert_eq!(lowest.spacing, vec![2.0, 2.0, 1.0]);
    assert!((lowest.noise_std - estimate_noise(&noisy)).abs() < 1e-12);
}

#[test]
fn synthesis_from_labels_draws_one_gaussian_per_generation_class_and_keeps_the_labels() {
    // Three label values; the background's intensities have two levels, which `split = 2` separates.
    let image = img2(30, 20, |x, _| {
        if x < 10 {
            0.1
        } else if x < 20 {
            0.9
        } else {
            0.5
        }
    });
    let label = img2(30, 20, |x, y| {
        if x < 20 {
            0.0
        } else if y < 10 {
            1.0
        } else {
            2.0
        }
    });
    let subject = Subject::with_label(image, label.clone()).unwrap();
    let t = Transform::SynthesiseFromLabels { prob: 1.0, mean: [0.0, 1.0], std: [0.0, 0.0], split: 2, keep: vec![] };
    let a = apply(t.clone(), subject.clone(), 3);
    assert_eq!(a.label.as_ref().unwrap(), &label);
    // σ = 0: each generation class is one constant, and the classes are 0 (x < 10), 0' (10 ≤ x < 20), 1, 2.
    let at = |x: usize, y: usize| a.image.get(&[x, y]);
    assert!((0..10).all(|x| at(x, 5) == at(0, 0)) && (10..20).all(|x| at(x, 15) == at(10, 0)));
    let distinct: std::collections::BTreeSet<u32> = [at(0, 0), at(10, 0), at(25, 5), at(25, 15)].iter().map(|v| v.to_bits()).collect();
    assert_eq!(distinct.len(), 4, "four generation classes, four intensities");
    // The synthetic image keeps the mean and standard deviation the image had.
    let stats = |img: &Image| {
        let v: Vec<f64> = img.data().iter().map(|&x| x as f64).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
    };
    let ((m0, s0), (m1, s1)) = (stats(&subject.image), stats(&a.image));
    assert!((m0 - m1).abs() < 1e-5 && (s0 - s1).abs() < 1e-5, "({m0}, {s0}) vs ({m1}, {s1})");
    // Seeded: the same seed, the same image; another seed, another image.
    assert_eq!(apply(t.clone(), subject.clone(), 3).image, a.image);
    assert_ne!(apply(t, subject.clone(), 4).image, a.image);
    // With σ > 0 each class scatters around its mean.
    // With σ > 0 each class scatters around its own mean (one class here: the scatter is all there is).
    let b =
        apply(Transform::SynthesiseFromLabels { prob: 1.0, mean: [0.5, 0.5], std: [0.1, 0.1], split: 1, keep: vec![] }, subject.clone(), 1);
    let background: Vec<f64> = (0..20).flat_map(|x| (0..20).map(move |y| (x, y))).map(|(x, y)| b.image.get(&[x, y]) as f64).collect();
    let m = background.iter().sum::<f64>() / background.len() as f64;
    let sd = (background.iter().map(|v| (v - m).powi(2)).sum::<f64>() / background.len() as f64).sqrt();
    assert!(sd > 0.5 * s0, "a noisy class: sd {sd}");
    let e = Transform::SynthesiseFromLabels { prob: 1.0, mean: [0.0, 1.0], std: [0.0, 0.1], split: 1, keep: vec![] }
        .apply(Subject::new(img2(4, 4, |_, _| 0.0)), &mut rng(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("label map"), "{e}");
    let e = Transform::SynthesiseFromLabels { prob: 1.0, mean: [0.0, 1.0], std: [0.0, 0.1], split: 1_000_000, keep: vec![] }
        .apply(subject, &mut rng(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("split must lie in 1..=64"), "{e}");
}

#[test]
fn synthesis_reads_from_recipes() {
    let p = Pipeline::from_toml("[[transforms]]\ntype = \"synthesise_from_labels\"\nprob = 0.8\nsplit = 3\n").unwrap();
    assert_eq!(p.transforms[0], Transform::SynthesiseFromLabels { prob: 0.8, mean: [0.0, 1.0], std: [0.0, 0.1], split: 3, keep: vec![] });
}

#[test]
fn head_layers_and_background_from_read_from_recipes_and_undo_generation_labels() {
    let p = Pipeline::from_toml(
        "[[transforms]]\ntype = \"head_layers\"\nbone = 5.0\nfirst = 3\n[[transforms]]\ntype = \"background_from\"\nlabel = 3\n",
    )
    .unwrap();
    let head = vesalius_data::head::HeadLayers { bone: 5.0, first: 3, ..Default::default() };
    assert_eq!(p.transforms, vec![Transform::HeadLayers(head.clone()), Transform::BackgroundFrom { label: 3 }]);
    // A two-class organ (a ball of class 1 around a core of class 2): layers are added, then undone.
    let ball = |x: usize, y: usize, z: usize| {
        let r = ((x as f64 - 9.5).powi(2) + (y as f64 - 9.5).powi(2) + (z as f64 - 9.5).powi(2)).sqrt();
        if r < 3.0 {
            2.0
        } else if r < 7.0 {
            1.0
        } else {
            0.0
        }
    };
    let label = img3([20, 20, 20], [2.0, 2.0, 2.0], ball);
    let s = Subject::with_label(label.clone(), label).unwrap();
    let layered = apply(p.transforms[0].clone(), s, 0);
    let values: std::collections::BTreeSet<i64> = layered.label.as_ref().unwrap().data().iter().map(|&v| v as i64).collect();
    assert!(values.contains(&1) && values.contains(&2) && values.contains(&4) && values.contains(&5), "{values:?}");
    let undone = apply(p.transforms[1].clone(), layered.clone(), 0);
    let lab = undone.label.unwrap();
    assert!(lab.data().iter().all(|&v| v <= 2.0));
    // Task labels are untouched: the organ's voxels keep their classes where they moved to.
    let same = lab.data().iter().zip(layered.label.unwrap().data()).filter(|(a, b)| **b < 3.0 && a != b).count();
    assert_eq!(same, 0);
    assert_eq!(lab.data().iter().filter(|&&v| v == 2.0).count(), label_count(&img3([20, 20, 20], [2.0, 2.0, 2.0], ball), 2.0));
}

fn label_count(img: &Image, v: f32) -> usize {
    img.data().iter().filter(|&&x| x == v).count()
}

#[test]
fn synthesis_can_keep_the_organ_and_draw_its_surroundings_on_the_organ_range() {
    // Organ (label 1) with intensities 100..=199 in the middle of a 40 × 40 image; background (label 0) at zero.
    let label = img2(40, 40, |x, y| if (10..30).contains(&x) && (10..30).contains(&y) { 1.0 } else { 0.0 });
    let image = img2(40, 40, |x, y| if (10..30).contains(&x) && (10..30).contains(&y) { 100.0 + ((x * 20 + y) % 100) as f32 } else { 0.0 });
    let subject = Subject::with_label(image.clone(), label).unwrap();
    let t = Transform::SynthesiseFromLabels { prob: 1.0, mean: [0.25, 0.25], std: [0.0, 0.0], split: 1, keep: vec![1] };
    let out = apply(t, subject, 5);
    for y in 0..40 {
        for x in 0..40 {
            let inside = (10..30).contains(&x) && (10..30).contains(&y);
            if inside {
                assert_eq!(out.image.get(&[x, y]), image.get(&[x, y]), "kept at ({x}, {y})");
            } else {
                // A quarter of the way up the organ's 1st–99th percentile range (101..198).
                assert!((out.image.get(&[x, y]) - (101.0 + 0.25 * 97.0)).abs() < 1e-3, "{}", out.image.get(&[x, y]));
            }
        }
    }
}
