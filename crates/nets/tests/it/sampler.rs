//! The fused trilinear sampler (the CPU backend's, or burn-cubecl's kernels on burn-cuda and burn-wgpu) against the
//! composition of tensor operations that every backend differentiates: values and both gradients, with coordinates
//! inside, outside and exactly on the volume's edges.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use vesalius_nets::ops::{Padding, has_fused_kernels, has_fused_sampler, sample_linear_composed, sample_linear_fused};

use crate::{B, Lcg, P};

/// An image `[n, c, d, h, w]` of normal-ish values and coordinates `[n, 3, out]` spread from 1.5 voxels before
/// the volume to 1.5 past it, a fifth of them rounded to whole voxels (edges included).
fn case(n: usize, c: usize, size: [usize; 3], out: [usize; 3], seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Lcg(seed);
    let voxels: usize = size.iter().product();
    let points: usize = out.iter().product();
    let image = (0..n * c * voxels).map(|_| rng.next() * 4.0 - 2.0).collect();
    let mut coords = Vec::with_capacity(n * 3 * points);
    for _ in 0..n {
        for len in size {
            for _ in 0..points {
                let v = rng.next() * (len as f32 + 2.0) - 1.5;
                coords.push(if rng.next() < 0.2 { v.round() } else { v });
            }
        }
    }
    let upstream = (0..n * c * points).map(|_| rng.next() * 2.0 - 1.0).collect();
    (image, coords, upstream)
}

/// The fused sampler, which must run on every backend these tests use.
fn by_kernel<BB: Backend>(image: Tensor<BB, 5>, coords: Tensor<BB, 5>, padding: Padding) -> Tensor<BB, 5> {
    sample_linear_fused(&image, &coords, padding).expect("the fused sampler runs on this backend")
}

fn tensor<BB: Backend>(v: &[f32], shape: [usize; 5]) -> Tensor<BB, 5> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn values<BB: Backend>(t: Tensor<BB, 5>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Values and gradients (image, coordinates) of `Σ sample(image, coords) · upstream`, by one sampler.
fn run(
    sample: fn(Tensor<B, 5>, Tensor<B, 5>, Padding) -> Tensor<B, 5>,
    shapes: ([usize; 5], [usize; 5], [usize; 5]),
    data: &(Vec<f32>, Vec<f32>, Vec<f32>),
    padding: Padding,
    image_grad: bool,
) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
    let (ishape, cshape, oshape) = shapes;
    let image = tensor::<B>(&data.0, ishape);
    let image = if image_grad { image.require_grad() } else { image };
    let coords = tensor::<B>(&data.1, cshape).require_grad();
    let out = sample(image.clone(), coords.clone(), padding);
    let grads = (out.clone() * tensor::<B>(&data.2, oshape)).sum().backward();
    (values(out), image.grad(&grads).map(|g| g.into_data().to_vec::<f32>().unwrap()), values(coords.grad(&grads).unwrap()))
}

#[test]
fn the_fused_sampler_matches_the_composed_operations() {
    // The normalisations are fused on the CPU backend only; the sampler on every backend these tests run on (flex,
    // and burn-cuda / burn-wgpu without operation fusion).
    assert_eq!(has_fused_kernels::<P>(), cfg!(not(any(feature = "test-cuda", feature = "test-wgpu"))));
    assert_eq!(has_fused_kernels::<B>(), cfg!(not(any(feature = "test-cuda", feature = "test-wgpu"))));
    assert!(has_fused_sampler::<P>() && has_fused_sampler::<B>());
    // (batch, channels, image size, output size, in-plane): a volume, a multi-channel batch (as field composition), a
    // plane sampled in-plane (depth coordinates 0, as a 2D warp gives), and one sampled off its plane (depth
    // coordinates from −1.5 to 1.5: only the plane's own corner counts, as the composed form has it).
    let cases = [
        (1, 1, [5, 6, 7], [4, 5, 6], false),
        (2, 3, [4, 5, 6], [3, 4, 5], false),
        (1, 2, [1, 7, 8], [1, 6, 6], true),
        (2, 1, [1, 5, 6], [2, 4, 4], false),
        (1, 1, [12, 20, 24], [12, 20, 24], false),
    ];
    let mut largest = 0.0f32;
    for (k, &(n, c, size, out, in_plane)) in cases.iter().enumerate() {
        let ishape = [n, c, size[0], size[1], size[2]];
        let cshape = [n, 3, out[0], out[1], out[2]];
        let oshape = [n, c, out[0], out[1], out[2]];
        let mut data = case(n, c, size, out, 17 + k as u64);
        if in_plane {
            let points: usize = out.iter().product();
            for b in 0..n {
                data.1[b * 3 * points..(b * 3 + 1) * points].fill(0.0);
            }
        }
        for padding in [Padding::Zeros, Padding::Border] {
            // Forward on the plain backend.
            let fused = values(by_kernel::<P>(tensor(&data.0, ishape), tensor(&data.1, cshape), padding));
            let composed = values(sample_linear_composed::<P>(tensor(&data.0, ishape), tensor(&data.1, cshape), padding));
            let d = max_diff(&fused, &composed);
            assert!(d < 1e-5, "case {k} {padding:?}: values differ by {d}");
            assert!(fused.iter().any(|v| v.abs() > 0.1), "case {k}: nothing sampled");
            // Forward and backward under autodiff, with and without the image's gradient.
            for image_grad in [true, false] {
                let shapes = (ishape, cshape, oshape);
                let (fv, fi, fc) = run(by_kernel::<B>, shapes, &data, padding, image_grad);
                let (cv, ci, cc) = run(sample_linear_composed::<B>, shapes, &data, padding, image_grad);
                assert!(max_diff(&fv, &cv) < 1e-5, "case {k} {padding:?}: autodiff values");
                assert_eq!(fi.is_some(), image_grad);
                assert_eq!(ci.is_some(), image_grad);
                if let (Some(fi), Some(ci)) = (fi, ci) {
                    let d = max_diff(&fi, &ci);
                    assert!(d < 1e-5, "case {k} {padding:?}: image gradients differ by {d}");
                    assert!(fi.iter().any(|v| v.abs() > 0.01));
                }
                let d = max_diff(&fc, &cc);
                largest = largest.max(d);
                assert!(d < 1e-4, "case {k} {padding:?}: coordinate gradients differ by {d}");
                assert!(fc.iter().any(|v| v.abs() > 0.01));
            }
        }
    }
    println!("largest difference of the coordinate gradients: {largest:e}");
}

#[test]
fn the_fused_sampler_declines_what_is_not_a_sampling() {
    let image = tensor::<P>(&[1.0; 2 * 3 * 4 * 5], [2, 1, 3, 4, 5]);
    let coords = |shape: [usize; 5]| tensor::<P>(&vec![0.5; shape.iter().product()], shape);
    // Two coordinate channels, another batch size: not a trilinear sampling of this image.
    for shape in [[2, 2, 2, 2, 2], [1, 3, 2, 2, 2]] {
        assert!(sample_linear_fused(&image, &coords(shape), Padding::Zeros).is_none(), "{shape:?}");
    }
    let out = sample_linear_fused(&image, &coords([2, 3, 2, 2, 2]), Padding::Zeros).expect("a sampling");
    assert_eq!(out.dims(), [2, 1, 2, 2, 2]);
    assert!(values(out).iter().all(|v| (v - 1.0).abs() < 1e-6), "a constant image samples to itself");
}
