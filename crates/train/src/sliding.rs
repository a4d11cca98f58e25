//! Sliding-window inference over a whole 2D or 3D image with overlapping windows, Gaussian importance weighting,
//! batched windows, optional flip test-time augmentation and bounded memory.
//!
//! Windows are visited slab by slab along the last spatial axis. Per-class sums and weights are kept only for
//! the slab of planes that a window can still reach (one window deep); a plane that no later window touches is
//! finished at once (divided by its weights, arg-maxed) and its buffer reused. Peak memory is therefore the input,
//! the label output, one window-deep slab of per-class sums and one batch of windows — not a full-size float
//! volume per class. Full per-class maps are kept only when asked for ([`SlidingWindow::probabilities`]).
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//! use vesalius_train::sliding::SlidingWindow;
//! use vesalius_data::{Image, IDENTITY};
//!
//! let values: Vec<f32> = (0..20 * 12).map(|v| (v % 7) as f32 - 3.0).collect();
//! let image = Image::new(values.clone(), vec![20, 12], 1, IDENTITY, "float32").unwrap();
//! // A point-wise two-class model: class 1 wins where the value is positive.
//! let model = |x: Tensor<Flex, 5>| Tensor::cat(vec![x.clone().neg(), x], 1);
//! let sw = SlidingWindow { roi: vec![8, 8], ..SlidingWindow::default() };
//! let out = sw.run::<Flex>(&image, &Default::default(), model).unwrap();
//! let expected: Vec<u16> = values.iter().map(|&v| (v > 0.0) as u16).collect();
//! assert_eq!(out.labels, expected);
//! ```
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vesalius_data::patch::grid_starts;
use vesalius_io::{DataError, Image, Result};

/// Settings of sliding-window inference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlidingWindow {
    /// Window size per spatial axis (image order: first axis fastest).
    pub roi: Vec<usize>,
    /// Overlap between neighbouring windows, 0 ≤ overlap < 1.
    pub overlap: f64,
    /// Windows per model call.
    pub batch: usize,
    /// Gaussian importance: standard deviation as a fraction of the window (MONAI and nnU-Net use 1/8);
    /// 0 weighs every voxel of a window alike.
    pub sigma_scale: f64,
    /// Average the model's outputs over all mirrorings of the spatial axes (test-time augmentation).
    pub flip_tta: bool,
    /// Keep the full per-class maps (memory: classes × voxels × 4 bytes).
    pub probabilities: bool,
}

impl Default for SlidingWindow {
    fn default() -> Self {
        Self { roi: vec![96, 96, 96], overlap: 0.5, batch: 1, sigma_scale: 0.125, flip_tta: false, probabilities: false }
    }
}

/// The result of [`SlidingWindow::run`].
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Number of output channels of the model.
    pub classes: usize,
    /// Arg-max class per voxel (image order).
    pub labels: Vec<u16>,
    /// Weighted mean of the model's outputs, `[class][voxel]`, when asked for.
    pub probabilities: Option<Vec<f32>>,
    /// Windows evaluated (each flip counted once).
    pub windows: usize,
}

/// Per-axis Gaussian importance weights of a window (product form), normalised to a maximum of 1.
pub fn importance(roi: [usize; 3], sigma_scale: f64) -> Vec<f32> {
    let axis = |n: usize| -> Vec<f64> {
        if sigma_scale <= 0.0 || n <= 1 {
            return vec![1.0; n];
        }
        let s = sigma_scale * n as f64;
        let c = (n as f64 - 1.0) / 2.0;
        (0..n).map(|i| (-((i as f64 - c).powi(2)) / (2.0 * s * s)).exp()).collect()
    };
    let (wx, wy, wz) = (axis(roi[0]), axis(roi[1]), axis(roi[2]));
    let mut w = Vec::with_capacity(roi.iter().product());
    for z in &wz {
        for y in &wy {
            for x in &wx {
                w.push((x * y * z).max(1e-6) as f32);
            }
        }
    }
    w
}

impl SlidingWindow {
    /// Runs `model` over `image`. The model receives `[batch, channels, D, H, W]` tensors (`W` the image's first
    /// axis, `D` its third, 1 in 2D) and must return `[batch, classes, D, H, W]` on the same window.
    pub fn run<B: Backend>(
        &self,
        image: &Image,
        device: &B::Device,
        mut model: impl FnMut(Tensor<B, 5>) -> Tensor<B, 5>,
    ) -> Result<Prediction> {
        let nd = image.ndim();
        if self.roi.len() != nd || self.roi.contains(&0) || self.batch == 0 {
            return Err(DataError::Invalid(format!("sliding window needs {nd} positive window sizes and a batch ≥ 1, got {:?}", self.roi)));
        }
        let mut shape = [1usize; 3];
        shape[..nd].copy_from_slice(image.shape());
        let mut roi = [1usize; 3];
        roi[..nd].copy_from_slice(&self.roi);
        let [nx, ny, nz] = shape;
        let [rx, ry, rz] = roi;
        let plane = nx * ny;
        let voxels = plane * nz;
        let channels = image.channels();
        let weights = importance(roi, self.sigma_scale);

        let mut starts = grid_starts(&shape, &roi, self.overlap)?;
        starts.sort_by_key(|s| (s[2], s[1], s[0]));
        let flips: Vec<[bool; 3]> = if self.flip_tta {
            (0..8u8).map(|m| [m & 1 != 0, m & 2 != 0, m & 4 != 0]).filter(|f| (0..3).all(|a| !f[a] || roi[a] > 1)).collect()
        } else {
            vec![[false; 3]]
        };

        // The slab: planes z .. z + rz live in ring slots z % rz.
        let mut classes = 0usize;
        let mut sums: Vec<f32> = Vec::new();
        let mut wsum = vec![0f32; rz * plane];
        let mut labels = vec![0u16; voxels];
        let mut probabilities: Option<Vec<f32>> = None;
        let mut finished = 0usize; // planes below this are done
        let mut windows = 0usize;

        let mut finish_planes = |upto: usize,
                                 classes: usize,
                                 sums: &mut Vec<f32>,
                                 wsum: &mut Vec<f32>,
                                 probabilities: &mut Option<Vec<f32>>,
                                 finished: &mut usize| {
            while *finished < upto.min(nz) {
                let z = *finished;
                let slot = z % rz;
                for i in 0..plane {
                    let w = wsum[slot * plane + i];
                    let mut best = 0usize;
                    let mut best_v = f32::NEG_INFINITY;
                    for k in 0..classes {
                        let at = (k * rz + slot) * plane + i;
                        let v = if w > 0.0 { sums[at] / w } else { 0.0 };
                        sums[at] = 0.0;
                        if v > best_v {
                            best_v = v;
                            best = k;
                        }
                        if let Some(p) = probabilities.as_mut() {
                            p[k * voxels + z * plane + i] = v;
                        }
                    }
                    labels[z * plane + i] = best as u16;
                    wsum[slot * plane + i] = 0.0;
                }
                *finished += 1;
            }
        };

        let mut i = 0;
        while i < starts.len() {
            let z0 = starts[i][2];
            finish_planes(z0, classes, &mut sums, &mut wsum, &mut probabilities, &mut finished);
            let mut j = i;
            while j < starts.len() && starts[j][2] == z0 {
                j += 1;
            }
            for chunk in starts[i..j].chunks(self.batch) {
                let n = chunk.len();
                let window_len = rx * ry * rz;
                let mut buf = vec![0f32; n * channels * window_len];
                for (b, s) in chunk.iter().enumerate() {
                    for c in 0..channels {
                        let src = image.channel(c);
                        let dst = &mut buf[(b * channels + c) * window_len..(b * channels + c + 1) * window_len];
                        for dz in 0..rz.min(nz - s[2]) {
                            for dy in 0..ry.min(ny - s[1]) {
                                let from = (s[2] + dz) * plane + (s[1] + dy) * nx + s[0];
                                let len = rx.min(nx - s[0]);
                                let to = (dz * ry + dy) * rx;
                                dst[to..to + len].copy_from_slice(&src[from..from + len]);
                            }
                        }
                    }
                }
                let input = Tensor::<B, 5>::from_data(TensorData::new(buf, [n, channels, rz, ry, rx]), device);
                let mut total: Option<Tensor<B, 5>> = None;
                for f in &flips {
                    let dims: Vec<usize> = (0..3).filter(|&a| f[a]).map(|a| 4 - a).collect();
                    let x = dims.iter().fold(input.clone(), |t, &d| t.flip([d as isize]));
                    let mut y = model(x);
                    for &d in &dims {
                        y = y.flip([d as isize]);
                    }
                    total = Some(match total {
                        Some(t) => t + y,
                        None => y,
                    });
                    windows += n;
                }
                let out = total.expect("at least one flip") / flips.len() as f32;
                let dims = out.dims();
                if dims[0] != n || dims[2] != rz || dims[3] != ry || dims[4] != rx {
                    return Err(DataError::Invalid(format!(
                        "the model returned {dims:?} for windows of [{n}, {channels}, {rz}, {ry}, {rx}]"
                    )));
                }
                if classes == 0 {
                    classes = dims[1];
                    if classes == 0 || classes > u16::MAX as usize {
                        return Err(DataError::Invalid(format!("the model returned {classes} classes")));
                    }
                    sums = vec![0f32; classes * rz * plane];
                    if self.probabilities {
                        probabilities = Some(vec![0f32; classes * voxels]);
                    }
                } else if dims[1] != classes {
                    return Err(DataError::Invalid("the model's class count changed between windows".into()));
                }
                let values = out.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| DataError::Invalid(format!("{e:?}")))?;
                for (b, s) in chunk.iter().enumerate() {
                    for dz in 0..rz.min(nz - s[2]) {
                        let slot = (s[2] + dz) % rz;
                        for dy in 0..ry.min(ny - s[1]) {
                            for dx in 0..rx.min(nx - s[0]) {
                                let wi = (dz * ry + dy) * rx + dx;
                                let w = weights[wi];
                                let at = (s[1] + dy) * nx + s[0] + dx;
                                wsum[slot * plane + at] += w;
                                for k in 0..classes {
                                    sums[(k * rz + slot) * plane + at] += w * values[((b * classes + k) * rz * ry * rx) + wi];
                                }
                            }
                        }
                    }
                }
            }
            i = j;
        }
        finish_planes(nz, classes, &mut sums, &mut wsum, &mut probabilities, &mut finished);
        Ok(Prediction { classes, labels, probabilities, windows })
    }
}
