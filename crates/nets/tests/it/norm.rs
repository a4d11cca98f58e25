//! Batch and instance normalisation through `ops::batch_norm` / `ops::instance_norm` (fused kernels on the CPU
//! backend) against burn's own modules (compositions of tensor operations): outputs, the gradients of the input,
//! γ and β, the running statistics after a training step, and eval mode.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use burn::module::{AutodiffModule, Param};
use burn::nn::{BatchNorm, BatchNormConfig, InstanceNorm, InstanceNormConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use vesalius_nets::ops::{batch_norm, batch_norm_relu, has_fused_kernels, instance_norm, instance_norm_relu};

use crate::{B, Lcg, P};

fn tensor<BB: Backend, const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<BB, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn values<BB: Backend, const D: usize>(t: Tensor<BB, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Largest difference relative to the largest magnitude of `want` (at least 1).
fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
}

fn batch_norm_module(c: usize, gamma: &[f32], beta: &[f32], stats: (&[f32], &[f32])) -> BatchNorm<B> {
    let mut bn: BatchNorm<B> = BatchNormConfig::new(c).with_momentum(0.3).init(&Default::default());
    bn.gamma = Param::from_tensor(tensor(gamma, [c]));
    bn.beta = Param::from_tensor(tensor(beta, [c]));
    bn.running_mean.update(tensor(stats.0, [c]));
    bn.running_var.update(tensor(stats.1, [c]));
    bn
}

/// Output and gradients (input, γ, β) of `Σ norm(x) · upstream`.
type Outcome = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn train_step<const D: usize>(
    norm: impl Fn(Tensor<B, D>) -> Tensor<B, D>,
    gamma: &Param<Tensor<B, 1>>,
    beta: &Param<Tensor<B, 1>>,
    x: &[f32],
    upstream: &[f32],
    shape: [usize; D],
) -> Outcome {
    let input = tensor::<B, D>(x, shape).require_grad();
    let y = norm(input.clone());
    let grads = (y.clone() * tensor::<B, D>(upstream, shape)).sum().backward();
    (values(y), values(input.grad(&grads).unwrap()), values(gamma.val().grad(&grads).unwrap()), values(beta.val().grad(&grads).unwrap()))
}

fn check_batch_norm<const D: usize>(shape: [usize; D], offset: f32, seed: u64) {
    check_batch_norm_with(shape, offset, seed, false);
    check_batch_norm_with(shape, offset, seed, true);
}

/// The fused normalisation (followed by its fused ReLU when `with_relu`) against burn's module (and burn's ReLU).
fn check_batch_norm_with<const D: usize>(shape: [usize; D], offset: f32, seed: u64, with_relu: bool) {
    let c = shape[1];
    let n: usize = shape.iter().product();
    let mut rng = Lcg(seed);
    // Activations away from zero mean, as after a convolution, and a non-uniform upstream gradient.
    let x = rng.vec(n, offset - 3.0, offset + 3.0);
    let upstream = rng.vec(n, -1.0, 1.0);
    let (gamma, beta) = (rng.vec(c, 0.5, 1.5), rng.vec(c, -0.5, 0.5));
    let (rm, rv) = (rng.vec(c, -1.0, 1.0), rng.vec(c, 0.5, 2.0));
    let fused = batch_norm_module(c, &gamma, &beta, (&rm, &rv));
    let reference = batch_norm_module(c, &gamma, &beta, (&rm, &rv));

    let fused_fn = |t| if with_relu { batch_norm_relu(&fused, t) } else { batch_norm(&fused, t) };
    let reference_fn = |t| if with_relu { relu(reference.forward(t)) } else { reference.forward(t) };
    let got = train_step(fused_fn, &fused.gamma, &fused.beta, &x, &upstream, shape);
    let want = train_step(reference_fn, &reference.gamma, &reference.beta, &x, &upstream, shape);
    if with_relu {
        // The ReLU did cut: some outputs are zero and some positive.
        assert!(got.0.contains(&0.0) && got.0.iter().any(|v| *v > 0.0));
    }
    for (what, g, w) in
        [("output", &got.0, &want.0), ("input grad", &got.1, &want.1), ("gamma grad", &got.2, &want.2), ("beta grad", &got.3, &want.3)]
    {
        let d = rel_diff(g, w);
        assert!(d < 2e-5, "batch norm {shape:?} {what}: relative difference {d}");
    }
    // The running statistics moved by the same update.
    for (g, w) in [
        (fused.running_mean.value_sync(), reference.running_mean.value_sync()),
        (fused.running_var.value_sync(), reference.running_var.value_sync()),
    ] {
        let (g, w) = (values(g), values(w));
        assert!(rel_diff(&g, &w) < 1e-5, "running statistics {g:?} vs {w:?}");
        assert!(rel_diff(&g, &rm) > 1e-3 || rel_diff(&g, &rv) > 1e-3, "running statistics updated");
    }
    // Eval mode (the module on the inner backend): the running statistics folded into one scale and shift.
    let (fused, reference) = (fused.valid(), reference.valid());
    let (input, twin) = (tensor::<P, D>(&x, shape), tensor::<P, D>(&x, shape));
    let got = values(if with_relu { batch_norm_relu(&fused, input) } else { batch_norm(&fused, input) });
    let want = values(if with_relu { relu(reference.forward(twin)) } else { reference.forward(twin) });
    assert!(rel_diff(&got, &want) < 2e-6, "eval batch norm {shape:?}: {}", rel_diff(&got, &want));
}

fn instance_norm_module(c: usize, affine: bool, gamma: &[f32], beta: &[f32]) -> InstanceNorm<B> {
    let mut norm: InstanceNorm<B> = InstanceNormConfig::new(c).with_affine(affine).init(&Default::default());
    if affine {
        norm.gamma = Some(Param::from_tensor(tensor(gamma, [c])));
        norm.beta = Some(Param::from_tensor(tensor(beta, [c])));
    }
    norm
}

fn check_instance_norm<const D: usize>(shape: [usize; D], affine: bool, seed: u64) {
    let c = shape[1];
    let n: usize = shape.iter().product();
    let mut rng = Lcg(seed);
    let x = rng.vec(n, 1.0, 5.0);
    let upstream = rng.vec(n, -1.0, 1.0);
    let (gamma, beta) = (rng.vec(c, 0.5, 1.5), rng.vec(c, -0.5, 0.5));
    let fused = instance_norm_module(c, affine, &gamma, &beta);
    let reference = instance_norm_module(c, affine, &gamma, &beta);
    let run = |norm: &InstanceNorm<B>, f: &dyn Fn(Tensor<B, D>) -> Tensor<B, D>| {
        let input = tensor::<B, D>(&x, shape).require_grad();
        let y = f(input.clone());
        let grads = (y.clone() * tensor::<B, D>(&upstream, shape)).sum().backward();
        let param = |p: &Option<Param<Tensor<B, 1>>>| p.as_ref().map(|p| values(p.val().grad(&grads).unwrap()));
        (values(y), values(input.grad(&grads).unwrap()), param(&norm.gamma), param(&norm.beta))
    };
    let got = run(&fused, &|t| instance_norm(&fused, t));
    let want = run(&reference, &|t| reference.forward(t));
    let got_relu = run(&fused, &|t| instance_norm_relu(&fused, t));
    let want_relu = run(&reference, &|t| relu(reference.forward(t)));
    assert!(rel_diff(&got_relu.0, &want_relu.0) < 2e-5 && rel_diff(&got_relu.1, &want_relu.1) < 2e-5, "instance norm + ReLU");
    assert!(rel_diff(&got.0, &want.0) < 2e-5, "instance norm output {}", rel_diff(&got.0, &want.0));
    assert!(rel_diff(&got.1, &want.1) < 2e-5, "instance norm input grad {}", rel_diff(&got.1, &want.1));
    assert_eq!(got.2.is_some(), affine);
    if let (Some(g), Some(w), Some(gb), Some(wb)) = (&got.2, &want.2, &got.3, &want.3) {
        assert!(rel_diff(g, w) < 2e-5 && rel_diff(gb, wb) < 2e-5, "instance norm parameter grads");
    }
    // Without autodiff: the same values.
    let (fused, reference) = (fused.valid(), reference.valid());
    let got = values(instance_norm(&fused, tensor::<P, D>(&x, shape)));
    let want = values(reference.forward(tensor::<P, D>(&x, shape)));
    assert!(rel_diff(&got, &want) < 2e-5, "instance norm without autodiff {}", rel_diff(&got, &want));
}

#[test]
fn fused_batch_norm_matches_burns_module() {
    assert_eq!(has_fused_kernels::<P>(), cfg!(not(any(feature = "test-cuda", feature = "test-wgpu"))));
    assert_eq!(has_fused_kernels::<B>(), cfg!(not(any(feature = "test-cuda", feature = "test-wgpu"))));
    // Features ([n, c]), 2D maps, 3D volumes; a large one takes the parallel passes.
    check_batch_norm([6, 5], 0.0, 1);
    check_batch_norm([3, 4, 7, 6], 10.0, 2);
    check_batch_norm([2, 3, 4, 5, 6], -4.0, 3);
    check_batch_norm([4, 8, 32, 40], 2.0, 4);
}

#[test]
fn fused_instance_norm_matches_burns_module() {
    check_instance_norm([2, 3, 4, 5, 6], true, 5);
    check_instance_norm([3, 2, 9, 7], false, 6);
    check_instance_norm([2, 4, 16, 16, 16], true, 7);
}
