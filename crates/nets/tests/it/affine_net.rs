//! The affine-regression network: identity at start, and a known translation recovered by training.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Tensor, TensorData};
use vesalius_nets::loss::mse;
use vesalius_nets::{AffineNet, AffineNetConfig};

use crate::B;

/// A Gaussian blob of width 2.5 voxels centred at `c` (depth, height, width) on a 16³ grid.
fn blob(c: [f64; 3]) -> Tensor<B, 5> {
    let mut v = Vec::with_capacity(16 * 16 * 16);
    for d in 0..16 {
        for h in 0..16 {
            for w in 0..16 {
                let r2 = (d as f64 - c[0]).powi(2) + (h as f64 - c[1]).powi(2) + (w as f64 - c[2]).powi(2);
                v.push((-r2 / (2.0 * 2.5 * 2.5)).exp() as f32);
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 1, 16, 16, 16]), &Default::default())
}

#[test]
fn starts_at_the_identity_and_learns_a_translation() {
    let _turn = crate::take_turn();
    let device = Default::default();
    let net: AffineNet<B> = AffineNetConfig::new(vec![8, 8]).init(&device);
    let fixed = blob([7.5, 7.5, 7.5]);
    let shift = [1.5f64, -2.0, 1.0];
    let moving = blob([7.5 + shift[0], 7.5 + shift[1], 7.5 + shift[2]]);
    let (warped, affine) = net.register(moving.clone(), fixed.clone());
    let a: Vec<f32> = affine.into_data().to_vec().unwrap();
    let identity = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    for (x, y) in a.iter().zip(identity) {
        assert!((x - y).abs() < 1e-5, "{a:?}");
    }
    let diff: f32 = (warped - moving.clone()).abs().max().into_scalar();
    assert!(diff < 1e-4, "{diff}");

    // Overfit the pair: warped(p) = moving(A·p + b) matches fixed when b = shift and A = I.
    let mut net = Some(net);
    let mut optim = AdamConfig::new().init::<B, AffineNet<B>>();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..200 {
        let m = net.take().unwrap();
        let (warped, _) = m.register(moving.clone(), fixed.clone());
        let loss = mse(warped, fixed.clone());
        last = loss.clone().into_scalar();
        first.get_or_insert(last);
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        net = Some(optim.step(5e-3, m, grads));
    }
    assert!(last < 0.05 * first.unwrap(), "loss {} → {last}", first.unwrap());
    let affine: Vec<f32> = net.unwrap().valid().forward(moving.inner(), fixed.inner()).into_data().to_vec().unwrap();
    for r in 0..3 {
        assert!((affine[r * 4 + 3] as f64 - shift[r]).abs() < 0.3, "translation {affine:?} vs {shift:?}");
        for c in 0..3 {
            let want = if r == c { 1.0 } else { 0.0 };
            assert!((affine[r * 4 + c] - want).abs() < 0.1, "linear part {affine:?}");
        }
    }
}
