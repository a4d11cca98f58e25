//! The MNI152 template (at 4 mm) against itself warped by a random smooth field with known values, and its tissue
//! labels warped alike: deformable registration must recover the field, raise the labels' Dice and not fold.
use std::path::Path;

use burn::tensor::{Distribution, Tensor};
use vesalius_data::geometry::{resample, Interp};
use vesalius_data::io::load;
use vesalius_data::Image;
use vesalius_nets::ops::{resize_linear, warp, warp_nearest, Padding};
use vesalius_registration::evaluate::{dice, jacobian_determinants, jacobian_stats};
use vesalius_registration::{affine, register, DeformableOptions, Method, RegisterOptions, Similarity};

#[cfg(not(feature = "test-cuda"))]
type P = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type P = burn::backend::Cuda;
type B = burn::backend::Autodiff<P>;

fn fixture(name: &str) -> Image {
    load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mni152").join(name)).unwrap()
}

#[test]
fn a_known_smooth_field_is_recovered() {
    let device = Default::default();
    let t1 = resample(&fixture("mni152_t1.nii.gz"), &[4.0, 4.0, 4.0], Interp::Linear).unwrap();
    let labels = resample(&fixture("mni152_tissue_labels.nii.gz"), &[4.0, 4.0, 4.0], Interp::Nearest).unwrap();
    let [d, h, w] = vesalius_registration::Grid::of(&t1).size;
    // A smooth field: random displacements of up to ±2.5 voxels on a 4×4×4 lattice, trilinearly interpolated.
    <P as burn::tensor::backend::Backend>::seed(&device, 3);
    let coarse = Tensor::<P, 5>::random([1, 3, 4, 4, 4], Distribution::Uniform(-2.5, 2.5), &device);
    let truth = resize_linear(coarse, [d, h, w]);
    let template = affine::to_tensor::<P>(&t1, &device);
    // fixed(p) = template(p + v(p)): registering the template to it must find v.
    let fixed = affine::from_tensor(warp(template, truth.clone(), Padding::Border), &t1);
    let lab = affine::to_tensor::<P>(&labels, &device);
    let fixed_labels = affine::from_tensor(warp_nearest(lab, truth.clone()), &labels);

    let options = RegisterOptions {
        method: Method::Deformable,
        similarity: Similarity::Mse,
        deformable: DeformableOptions { levels: vec![2, 1], steps: 150, smoothness: 0.5, learning_rate: 0.3, ..DeformableOptions::default() },
        ..RegisterOptions::default()
    };
    let r = register::<B>(&fixed, &t1, &options, &device);
    let n = d * h * w;
    let v = truth.into_data().to_vec::<f32>().unwrap();
    let brain: Vec<usize> = (0..n).filter(|&i| fixed_labels.data()[i] > 0.0).collect();
    let err = |u: &[Vec<f32>; 3]| {
        brain.iter().map(|&i| (0..3).map(|c| (u[c][i] - v[c * n + i]).powi(2)).sum::<f32>().sqrt() as f64).sum::<f64>() / brain.len() as f64
    };
    let zero = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
    let (before, after) = (err(&zero), err(&r.field_voxels));
    let moved = r.warp_labels::<P>(&labels, &fixed, &device);
    let dice_mean = |a: &Image| (1..=2).map(|l| dice(a.data(), fixed_labels.data(), l as f32)).sum::<f64>() / 2.0;
    let (dice_before, dice_after) = (dice_mean(&labels), dice_mean(&moved));
    let jac = jacobian_stats(&jacobian_determinants(&r.field_voxels, [d, h, w]));
    println!(
        "field error {before:.3} → {after:.3} voxels; tissue Dice {dice_before:.3} → {dice_after:.3}; folding {:.3} %, |J| {:.3}..{:.3}",
        jac.folding_percent, jac.min, jac.max
    );
    assert!(after < 0.5 * before, "field error {before} → {after}");
    assert!(dice_after > dice_before + 0.05, "Dice {dice_before} → {dice_after}");
    assert!(jac.folding_percent < 0.5, "{}", jac.folding_percent);
}
