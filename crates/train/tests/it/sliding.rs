//! The sliding-window inferer against whole-image evaluation of models with a known answer.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use burn::tensor::Tensor;
use vesalius_io::{IDENTITY, Image};
use vesalius_train::sliding::SlidingWindow;

use crate::P as B;

fn volume(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Image {
    let mut data = Vec::new();
    for z in 0..shape[2] {
        for y in 0..shape[1] {
            for x in 0..shape[0] {
                data.push(f(x, y, z));
            }
        }
    }
    Image::new(data, shape.to_vec(), 1, IDENTITY, "float32").unwrap()
}

/// A point-wise two-class model: translation-equivariant at any window size.
fn pointwise(x: Tensor<B, 5>) -> Tensor<B, 5> {
    Tensor::cat(vec![x.clone().mul_scalar(-1.5).add_scalar(0.25), x.mul_scalar(2.0)], 1)
}

#[test]
fn sliding_window_equals_the_whole_image_for_an_equivariant_model() {
    let device = Default::default();
    for (shape, roi) in [([37usize, 29, 23], [16usize, 12, 8]), ([20, 20, 1], [7, 9, 1]), ([9, 8, 5], [16, 16, 16])] {
        let img = volume(shape, |x, y, z| ((x * 13 + y * 7 + z * 3) % 17) as f32 / 8.0 - 1.0);
        let whole = pointwise(Tensor::<B, 1>::from_floats(img.data(), &device).reshape([1, 1, shape[2], shape[1], shape[0]]));
        let whole: Vec<f32> = whole.into_data().to_vec().unwrap();
        for (batch, tta, sigma) in [(1, false, 0.125), (3, false, 0.0), (2, true, 0.125)] {
            let sw = SlidingWindow { roi: roi.to_vec(), overlap: 0.5, batch, sigma_scale: sigma, flip_tta: tta, probabilities: true };
            let out = sw.run::<B>(&img, &device, pointwise).unwrap();
            let p = out.probabilities.unwrap();
            let diff = p.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-5, "{shape:?} {roi:?} batch {batch}: {diff}");
            let n = img.voxels();
            for i in 0..n {
                assert_eq!(out.labels[i], (whole[n + i] > whole[i]) as u16);
            }
        }
    }
    // A convolution with zero padding: equal when one window covers the image.
    let conv = |x: Tensor<B, 5>| {
        let [n, c, d, h, w] = x.dims();
        let padded =
            Tensor::<B, 5>::zeros([n, c, d, h + 2, w + 2], &x.device()).slice_assign([0..n, 0..c, 0..d, 1..h + 1, 1..w + 1], x.clone());
        let left = padded.clone().slice([0..n, 0..c, 0..d, 1..h + 1, 0..w]);
        let right = padded.slice([0..n, 0..c, 0..d, 1..h + 1, 2..w + 2]);
        Tensor::cat(vec![left - right, x], 1)
    };
    let img = volume([12, 10, 1], |x, y, _| (x * y) as f32);
    let sw = SlidingWindow { roi: vec![12, 10, 1], probabilities: true, ..SlidingWindow::default() };
    let a = sw.run::<B>(&img, &device, conv).unwrap().probabilities.unwrap();
    let whole: Vec<f32> = conv(Tensor::<B, 1>::from_floats(img.data(), &device).reshape([1, 1, 1, 10, 12])).into_data().to_vec().unwrap();
    assert!(a.iter().zip(&whole).all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1.0)));
    // Errors are reported, not panics.
    let wrong = |x: Tensor<B, 5>| x.slice([0..1, 0..1, 0..1, 0..2, 0..2]);
    assert!(sw.run::<B>(&img, &device, wrong).is_err());
}

#[test]
fn sliding_window_labels_without_probability_maps() {
    let device = Default::default();
    let img = volume([40, 30, 50], |x, _, z| if (x + z) % 9 < 4 { 1.0 } else { -1.0 });
    let sw = SlidingWindow { roi: vec![16, 16, 16], overlap: 0.5, batch: 2, ..SlidingWindow::default() };
    let out = sw.run::<B>(&img, &device, pointwise).unwrap();
    assert!(out.probabilities.is_none());
    assert_eq!(out.classes, 2);
    let expected: Vec<u16> = img.data().iter().map(|&v| (v > 0.0) as u16).collect();
    assert_eq!(out.labels, expected);
    assert_eq!(out.windows, 4 * 3 * 6); // starts 0,8,16,24 | 0,8,14 | 0,8,16,24,32,34
}
