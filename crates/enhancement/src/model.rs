//! The enhancement networks as one burn module, and whole-plane inference.
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use vesalius_nets::{ConvAutoencoder, ConvAutoencoderConfig, Crnn, CrnnConfig, NormKind, RedCnn, RedCnnConfig, UNet, UNetConfig};

use crate::filters::reflect;
use crate::recipe::{Arch, ModelSection};

/// Any enhancement network: `[n, 1, h, w]` in, the enhanced `[n, 1, h, w]` out (intensities normalised).
#[derive(Module, Debug)]
pub enum EnhanceNet<B: Backend> {
    /// RED-CNN.
    RedCnn(RedCnn<B>),
    /// A 2D U-Net (batch norm) whose output is added to its input (residual learning).
    Unet(UNet<B>),
    /// The CRNN with k-space data consistency.
    Crnn(Crnn<B>),
    /// A convolutional auto-encoder.
    ConvAe(ConvAutoencoder<B>),
}

/// Builds the network of `spec`.
pub fn build<B: Backend>(spec: &ModelSection, device: &B::Device) -> EnhanceNet<B> {
    match spec.arch {
        Arch::RedCnn => EnhanceNet::RedCnn(RedCnnConfig::new().with_features(spec.features).with_kernel(spec.kernel).init(device)),
        // Batch norm (running statistics at inference): instance norm would see 48-pixel patches in training and
        // whole planes at inference, with different statistics.
        Arch::Unet => EnhanceNet::Unet(UNetConfig::new(2, 1, 1, spec.channels.clone()).with_norm(NormKind::Batch).init(device)),
        Arch::ConvAe => EnhanceNet::ConvAe(ConvAutoencoderConfig::new(1, spec.channels.clone()).init(device)),
        Arch::Crnn => EnhanceNet::Crnn(
            CrnnConfig::new()
                .with_features(spec.features)
                .with_iterations(spec.iterations)
                .with_layers(spec.layers)
                .with_temporal(spec.temporal)
                .init(device),
        ),
    }
}

/// What plane sizes the network of `spec` takes: a multiple of the first value, at least the second.
pub fn size_rule(spec: &ModelSection) -> (usize, usize) {
    match spec.arch {
        Arch::RedCnn => (1, 5 * (spec.kernel - 1) + 4),
        Arch::Unet => {
            let m = 1 << (spec.channels.len() - 1);
            (m, m)
        }
        Arch::Crnn => (1, 1),
        Arch::ConvAe => {
            let m = 1 << spec.channels.len();
            (m, m)
        }
    }
}

impl<B: Backend> EnhanceNet<B> {
    /// The enhanced images `[n, 1, h, w]`; for the CRNN, the reconstructed complex images `[n, 2, h, w]` of
    /// zero-filled complex images with their measured k-space `(k0, mask)`.
    pub fn forward(&self, x: Tensor<B, 4>, kspace: Option<(Tensor<B, 4>, Tensor<B, 4>)>) -> Tensor<B, 4> {
        match (self, kspace) {
            (EnhanceNet::RedCnn(net), _) => net.forward(x),
            (EnhanceNet::ConvAe(net), _) => net.forward(x),
            (EnhanceNet::Unet(net), _) => x.clone() + net.forward_2d(x),
            (EnhanceNet::Crnn(net), Some((k0, mask))) => net.forward(x, k0, mask),
            // Without measurements there is nothing to keep consistent with: every line counts as unmeasured.
            (EnhanceNet::Crnn(net), None) => {
                let [n, _, h, w] = x.dims();
                let device = x.device();
                net.forward(x, Tensor::zeros([n, 2, h, w], &device), Tensor::zeros([n, 1, h, w], &device))
            }
        }
    }
}

/// A packed complex `w × h` plane (`[re…, im…]`) mirrored along its first axis (`fx`) and/or its second (`fy`).
/// Its own inverse.
fn mirror(packed: &[f32], w: usize, h: usize, fx: bool, fy: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; packed.len()];
    for (c, plane) in packed.chunks(w * h).enumerate() {
        for y in 0..h {
            let sy = if fy { h - 1 - y } else { y };
            for x in 0..w {
                let sx = if fx { w - 1 - x } else { x };
                out[c * w * h + y * w + x] = plane[sy * w + sx];
            }
        }
    }
    out
}

/// Reconstructs one plane with the CRNN from its zero-filled complex image and measured k-space (both packed
/// `[re…, im…]`) and its measured lines; returns the magnitude.
///
/// With `mirrored` (`[model] flips`), the mean over the plane's four mirror images (as measured, mirrored along
/// either axis, and along both), as nnU-Net mirrors at inference. Each view is the same measurement of the mirrored
/// object: mirroring the second (phase-encoding) axis maps measured line `k` to line `(h − k) mod h`, so every view
/// is reconstructed with its own lines and k-space, mirrored back, and the complex images averaged — a mean of
/// data-consistent images, itself consistent with the measured lines. Four times the inference, in one batch.
#[allow(clippy::too_many_arguments)] // one plane: its images, k-space, lines and size, and whether to mirror
pub fn reconstruct_plane<B: Backend>(
    net: &EnhanceNet<B>,
    x0: &[f32],
    k0: &[f32],
    lines: &[bool],
    w: usize,
    h: usize,
    mirrored: bool,
    device: &B::Device,
) -> Vec<f32> {
    use rustfft::num_complex::Complex32;
    const ALL: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];
    let views = if mirrored { &ALL[..] } else { &ALL[..1] };
    let n = w * h;
    let (mut xs, mut ks, mut masks) = (Vec::with_capacity(8 * n), Vec::with_capacity(8 * n), Vec::with_capacity(4 * n));
    for &(fx, fy) in views {
        let view_lines: Vec<bool> = (0..h).map(|k| if fy { lines[(h - k) % h] } else { lines[k] }).collect();
        let x = mirror(x0, w, h, fx, fy);
        let k = if (fx, fy) == (false, false) {
            k0.to_vec()
        } else {
            let mut kc: Vec<Complex32> = (0..n).map(|i| Complex32::new(x[i], x[n + i])).collect();
            crate::fft::fft2(&mut kc, w, h);
            for (y, measured) in view_lines.iter().enumerate() {
                if !measured {
                    kc[y * w..(y + 1) * w].iter_mut().for_each(|v| *v = Complex32::new(0.0, 0.0));
                }
            }
            crate::kspace::pack(&kc)
        };
        xs.extend(x);
        ks.extend(k);
        masks.extend(crate::kspace::mask_plane(w, &view_lines));
    }
    let t = |v: Vec<f32>, c: usize| Tensor::<B, 4>::from_data(TensorData::new(v, [views.len(), c, h, w]), device);
    let y = net.forward(t(xs, 2), Some((t(ks, 2), t(masks, 1))));
    let y = y.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    let mut mean = vec![0.0f32; 2 * n];
    for ((fx, fy), view) in views.iter().zip(y.chunks(2 * n)) {
        for (m, v) in mean.iter_mut().zip(mirror(view, w, h, *fx, *fy)) {
            *m += v / views.len() as f32;
        }
    }
    crate::kspace::magnitude(&mean)
}

/// Reconstructs the `t` frames of one plane of a dynamic series together with the CRNN from their zero-filled
/// complex images and measured k-space (each frame packed `[re…, im…]`) and each frame's measured lines; returns
/// each frame's magnitude.
#[allow(clippy::too_many_arguments)] // one plane's series: images, k-space, lines, and its size
pub fn reconstruct_series<B: Backend>(
    net: &EnhanceNet<B>,
    x0: &[Vec<f32>],
    k0: &[Vec<f32>],
    lines: &[Vec<bool>],
    w: usize,
    h: usize,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let t = x0.len();
    let EnhanceNet::Crnn(crnn) = net else {
        return Vec::new();
    };
    let t5 = |v: Vec<f32>, c: usize| Tensor::<B, 5>::from_data(TensorData::new(v, [1, t, c, h, w]), device);
    let mask: Vec<f32> = lines.iter().flat_map(|l| crate::kspace::mask_plane(w, l)).collect();
    let y = crnn.forward_frames(t5(x0.concat(), 2), t5(k0.concat(), 2), t5(mask, 1));
    let y = y.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    y.chunks(2 * w * h).map(crate::kspace::magnitude).collect()
}

/// Enhances one normalised `w × h` plane whole: padded by reflection to a size the network takes, then cropped.
pub fn enhance_plane<B: Backend>(
    net: &EnhanceNet<B>,
    spec: &ModelSection,
    plane: &[f32],
    w: usize,
    h: usize,
    device: &B::Device,
) -> Vec<f32> {
    let (multiple, least) = size_rule(spec);
    let fit = |n: usize| n.max(least).div_ceil(multiple) * multiple;
    let (pw, ph) = (fit(w), fit(h));
    let (ox, oy) = ((pw - w) / 2, (ph - h) / 2);
    let mut padded = Vec::with_capacity(pw * ph);
    for y in 0..ph {
        let sy = reflect(y as i64 - oy as i64, h);
        for x in 0..pw {
            padded.push(plane[reflect(x as i64 - ox as i64, w) + w * sy]);
        }
    }
    let x = Tensor::<B, 4>::from_data(TensorData::new(padded, [1, 1, ph, pw]), device);
    let y: Vec<f32> = net.forward(x, None).into_data().convert::<f32>().into_vec().unwrap_or_default();
    let mut out = Vec::with_capacity(w * h);
    for yy in 0..h {
        let row = (yy + oy) * pw + ox;
        out.extend_from_slice(&y[row..row + w]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::Flex;

    #[test]
    fn whole_planes_of_any_size_keep_their_size() {
        let _rng = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let device = Default::default();
        for arch in [Arch::RedCnn, Arch::Unet, Arch::ConvAe] {
            let spec = ModelSection { arch, features: 4, channels: vec![4, 8, 16], ..Default::default() };
            let net = build::<B>(&spec, &device);
            let plane: Vec<f32> = (0..33 * 19).map(|i| (i % 7) as f32 / 7.0).collect();
            let out = enhance_plane(&net, &spec, &plane, 33, 19, &device);
            assert_eq!(out.len(), 33 * 19, "{arch:?}");
            if arch == Arch::RedCnn {
                assert_eq!(out, plane, "an untrained RED-CNN is the identity");
            }
        }
    }

    #[test]
    fn mirrored_reconstruction_is_the_same_for_a_mirrored_measurement() {
        let _rng = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let device = Default::default();
        <B as Backend>::seed(&device, 3);
        let spec = ModelSection { arch: Arch::Crnn, features: 4, iterations: 2, layers: 1, flips: true, ..Default::default() };
        let net = build::<B>(&spec, &device);
        let (w, h) = (12, 10);
        let plane: Vec<f32> = (0..w * h).map(|i| (((i * 37) % 23) as f32 / 23.0) * (1.0 + (i / w) as f32 / h as f32)).collect();
        let recon = |p: &[f32], lines: &[bool]| {
            let (k0, x0) = crate::kspace::measure(p, w, h, lines);
            reconstruct_plane(&net, &x0, &k0, lines, w, h, spec.flips, &device)
        };
        // Fully sampled, every view puts the measurement back: the plane itself.
        let full = recon(&plane, &[true; 10]);
        assert!(full.iter().zip(&plane).all(|(a, b)| (a - b).abs() < 1e-4), "{full:?}");
        // Under-sampled, the mean over the four views does not depend on which view was measured: the object
        // mirrored along the phase-encoding axis is measured on lines (h − k) mod h.
        let lines: Vec<bool> = (0..h).map(|k| [0, 1, 3, 6, 9].contains(&k)).collect();
        let out = recon(&plane, &lines);
        let (k0, x0) = crate::kspace::measure(&plane, w, h, &lines);
        let single = reconstruct_plane(&net, &x0, &k0, &lines, w, h, false, &device);
        assert!(out.iter().zip(&single).any(|(a, b)| (a - b).abs() > 1e-3), "the views change the result");
        for (fx, fy) in [(true, false), (false, true), (true, true)] {
            let mirrored_plane = mirror(&plane, w, h, fx, fy);
            let mirrored_lines: Vec<bool> = (0..h).map(|k| if fy { lines[(h - k) % h] } else { lines[k] }).collect();
            let back = mirror(&recon(&mirrored_plane, &mirrored_lines), w, h, fx, fy);
            let worst = back.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "mirrored ({fx}, {fy}): differs by {worst}");
        }
    }
}
