//! Learning-based registration on synthetic pairs with known fields: the MNI152 template (4 mm, a 32³ block)
//! against itself warped by random smooth fields drawn anew at each step. After 100 steps the training loss must
//! have fallen and, for pairs it never saw, the warped image must be much closer to the fixed one. (The field error
//! against the truth is printed: after so short a training it is not yet lower than no registration's — the
//! network matches intensities first, which flat regions leave undetermined.)
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use vesalius_io::geometry::{Interp, resample};
use vesalius_io::load;
use vesalius_nets::VoxelMorphConfig;
use vesalius_nets::ops::{Padding, resize_linear, warp};
use vesalius_registration::learn::{LearnOptions, Pair, predict, train};
use vesalius_registration::{Similarity, affine};

use crate::{B, P};

#[test]
fn a_small_voxelmorph_learns_to_register_unseen_pairs() {
    let _turn = crate::take_turn();
    let device = Default::default();
    let t1 = load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mni152/mni152_t1.nii.gz")).unwrap();
    let t1 = resample(&t1, &[4.0, 4.0, 4.0], Interp::Linear).unwrap();
    let full = affine::to_tensor::<P>(&t1, &device);
    let [_, _, d, h, w] = full.dims();
    // A 32³ block around the centre, intensities to [0, 1].
    let block = full.slice([0..1, 0..1, (d - 32) / 2..(d + 32) / 2, (h - 32) / 2..(h + 32) / 2, (w - 32) / 2..(w + 32) / 2]);
    let block = block.clone() / block.max().into_scalar();
    let field = |seed: u64| {
        P::seed(&device, seed);
        resize_linear(Tensor::<P, 5>::random([1, 3, 3, 3, 3], Distribution::Uniform(-2.0, 2.0), &device), [32, 32, 32])
    };
    let pair_for = |seed: u64| {
        let v = field(seed);
        (warp(block.clone(), v.clone(), Padding::Border), v)
    };
    let config = VoxelMorphConfig::new(vec![8, 16, 16], vec![16, 16, 16, 8]);
    let opts = LearnOptions { similarity: Similarity::Mse, smoothness: 0.01, learning_rate: 2e-3, ..LearnOptions::default() };
    let mut losses = Vec::new();
    // The backend's generator is process-wide: seed it so that the network's initial weights are fixed.
    P::seed(&device, 7);
    let net = train::<B>(
        &config,
        100,
        &opts,
        &device,
        |step| {
            let (fixed, _) = pair_for(1000 + step as u64);
            Pair { moving: Tensor::from_inner(block.clone()), fixed: Tensor::from_inner(fixed), moving_labels: None, fixed_labels: None }
        },
        |_, loss| losses.push(loss),
    );
    let early: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let late: f64 = losses[90..].iter().sum::<f64>() / 10.0;
    // Pairs it never saw: field error and image error against no registration.
    let (mut err_before, mut err_after, mut mse_before, mut mse_after) = (0.0, 0.0, 0.0, 0.0);
    for seed in [1, 2, 3] {
        let (fixed, truth) = pair_for(seed);
        let u = predict(&net, block.clone(), fixed.clone());
        let norm = |t: Tensor<P, 5>| t.powi_scalar(2).sum_dim(1).sqrt().mean().into_scalar() as f64;
        err_before += norm(truth.clone()) / 3.0;
        err_after += norm(u.clone() - truth) / 3.0;
        let mse = |a: Tensor<P, 5>| (a - fixed.clone()).powi_scalar(2).mean().into_scalar() as f64;
        mse_before += mse(block.clone()) / 3.0;
        mse_after += mse(warp(block.clone(), u, Padding::Border)) / 3.0;
    }
    println!(
        "loss {early:.5} → {late:.5}; unseen pairs: field error {err_before:.3} → {err_after:.3} voxels, MSE {mse_before:.5} → {mse_after:.5}"
    );
    assert!(late < 0.75 * early, "loss {early} → {late}");
    assert!(mse_after < 0.6 * mse_before, "MSE {mse_before} → {mse_after}");
}
