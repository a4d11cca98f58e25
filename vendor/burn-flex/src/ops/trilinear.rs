//! Trilinear sampling of `[n, c, d, h, w]` volumes at voxel coordinates, with its backward pass.
//!
//! The composition of tensor operations that a backend-generic spatial transformer uses (floor, weights, eight
//! gathers, masks and sums, each a pass over the whole output and each kept by autodiff) is here one pass over the
//! output points forward and one per gradient backward. The arithmetic follows that composition step by step (the
//! same clamp, floor and weight products in f32), so that both give the same values and gradients.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_std::Shape;

#[cfg(feature = "rayon")]
use rayon::prelude::*;

use crate::FlexTensor;

/// Points handled by one task of the thread pool.
const CHUNK: usize = 4096;

macro_rules! chunks_mut {
    ($slice:expr, $len:expr) => {{
        #[cfg(feature = "rayon")]
        {
            $slice.par_chunks_mut($len)
        }
        #[cfg(not(feature = "rayon"))]
        {
            $slice.chunks_mut($len)
        }
    }};
}

/// Treatment of sample positions outside the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrilinearPadding {
    /// Corners outside the volume contribute zero (`padding_mode="zeros"`).
    Zeros,
    /// Coordinates are clamped to the volume first (`padding_mode="border"`); the clamped ones get no gradient.
    Border,
}

/// One trilinear sampling: `image` `[n, c, d, h, w]` read at `coords` `[n, 3, m…]` (channels depth, height, width,
/// in voxels), giving `[n, c, m…]`.
#[derive(Clone, Debug)]
pub struct TrilinearSampling {
    n: usize,
    c: usize,
    size: [usize; 3],
    points: usize,
    out_shape: Vec<usize>,
    padding: TrilinearPadding,
}

/// The corners of one point: flat voxel index, weight, and the weight's derivative along each axis (zero on axes
/// whose coordinate was clamped).
struct Corners {
    count: usize,
    index: [usize; 8],
    weight: [f32; 8],
    slope: [[f32; 3]; 8],
}

impl TrilinearSampling {
    /// The sampling of `image` at `coords`, or `None` unless both are f32, `image` has five dimensions and
    /// `coords` `[n, 3, …]` with the image's batch size.
    pub fn new(image: &FlexTensor, coords: &FlexTensor, padding: TrilinearPadding) -> Option<Self> {
        let dims = image.layout().shape();
        let cdims = coords.layout().shape();
        if image.dtype() != DType::F32 || coords.dtype() != DType::F32 || dims.num_dims() != 5 || cdims.num_dims() < 3 {
            return None;
        }
        if cdims[0] != dims[0] || cdims[1] != 3 || (2..5).any(|k| dims[k] == 0) {
            return None;
        }
        let points = (2..cdims.num_dims()).map(|k| cdims[k]).product();
        let mut out_shape = vec![dims[0], dims[1]];
        out_shape.extend((2..cdims.num_dims()).map(|k| cdims[k]));
        Some(Self { n: dims[0], c: dims[1], size: [dims[2], dims[3], dims[4]], points, out_shape, padding })
    }

    fn corners(&self, coords: &[f32], b: usize, p: usize) -> Corners {
        let m = self.points;
        let mut v = [coords[(b * 3) * m + p], coords[(b * 3 + 1) * m + p], coords[(b * 3 + 2) * m + p]];
        let mut pass = [1.0f32; 3];
        if self.padding == TrilinearPadding::Border {
            for k in 0..3 {
                let hi = (self.size[k] - 1) as f32;
                if v[k] > hi {
                    v[k] = hi;
                    pass[k] = 0.0;
                }
                if v[k] < 0.0 {
                    v[k] = 0.0;
                    pass[k] = 0.0;
                }
            }
        }
        let floor = [v[0].floor(), v[1].floor(), v[2].floor()];
        let t = [v[0] - floor[0], v[1] - floor[1], v[2] - floor[2]];
        let [d, h, w] = self.size;
        let mut out = Corners { count: 0, index: [0; 8], weight: [0.0; 8], slope: [[0.0; 3]; 8] };
        let inside = |x: f32, len: usize| x >= 0.0 && x <= (len - 1) as f32;
        for dz in 0..if d == 1 { 1 } else { 2 } {
            let z = floor[0] + dz as f32;
            if !inside(z, d) {
                continue;
            }
            let (wz, sz) = if dz == 1 { (t[0], 1.0) } else { (-t[0] + 1.0, -1.0) };
            for dy in 0..2 {
                let y = floor[1] + dy as f32;
                if !inside(y, h) {
                    continue;
                }
                let (wy, sy) = if dy == 1 { (t[1], 1.0) } else { (-t[1] + 1.0, -1.0) };
                for dx in 0..2 {
                    let x = floor[2] + dx as f32;
                    if !inside(x, w) {
                        continue;
                    }
                    let (wx, sx) = if dx == 1 { (t[2], 1.0) } else { (-t[2] + 1.0, -1.0) };
                    let k = out.count;
                    out.index[k] = (z as usize * h + y as usize) * w + x as usize;
                    out.weight[k] = wz * wy * wx;
                    out.slope[k] = [pass[0] * sz * wy * wx, pass[1] * wz * sy * wx, pass[2] * wz * wy * sx];
                    out.count += 1;
                }
            }
        }
        out
    }

    /// The output's shape, `[n, c, m…]`.
    pub fn out_shape(&self) -> Shape {
        Shape::from(self.out_shape.clone())
    }

    /// The sampled values.
    pub fn forward(&self, image: &FlexTensor, coords: &FlexTensor) -> FlexTensor {
        let image = image.to_contiguous();
        let coords = coords.to_contiguous();
        let (img, crd): (&[f32], &[f32]) = (image.storage(), coords.storage());
        let (m, c) = (self.points, self.c);
        let voxels = self.size.iter().product::<usize>();
        let mut out = vec![0.0f32; self.n * c * m];
        if m > 0 {
            chunks_mut!(out, m).enumerate().for_each(|(row, out_row)| {
                let (b, src) = (row / c, &img[row * voxels..(row + 1) * voxels]);
                chunks_mut!(out_row, CHUNK).enumerate().for_each(|(chunk, dst)| {
                    for (i, o) in dst.iter_mut().enumerate() {
                        let corners = self.corners(crd, b, chunk * CHUNK + i);
                        let mut acc = 0.0f32;
                        for k in 0..corners.count {
                            acc += src[corners.index[k]] * corners.weight[k];
                        }
                        *o = acc;
                    }
                });
            });
        }
        FlexTensor::from_data(burn_backend::TensorData::new(out, self.out_shape()))
    }

    /// The gradients of a loss with respect to the image (when `image_grad`) and the coordinates (`[n, 3, m…]`,
    /// when `coords_grad`), given its gradient `grad` with respect to the output.
    pub fn backward(
        &self,
        image: &FlexTensor,
        coords: &FlexTensor,
        grad: &FlexTensor,
        image_grad: bool,
        coords_grad: bool,
    ) -> (Option<FlexTensor>, Option<FlexTensor>) {
        let image = image.to_contiguous();
        let coords = coords.to_contiguous();
        let grad = grad.to_contiguous();
        let (img, crd, g): (&[f32], &[f32], &[f32]) = (image.storage(), coords.storage(), grad.storage());
        let image_grad = image_grad.then(|| self.image_grad(crd, g));
        let coords_grad = coords_grad.then(|| self.coords_grad(img, crd, g));
        (image_grad, coords_grad)
    }

    /// `∂L/∂image[b, ch, v] = Σ_p weight(p, v) · ∂L/∂out[b, ch, p]`: each (batch, channel) row scattered by one
    /// task, so that the sums' order does not depend on the thread count.
    fn image_grad(&self, crd: &[f32], g: &[f32]) -> FlexTensor {
        let (m, c) = (self.points, self.c);
        let voxels = self.size.iter().product::<usize>();
        let mut out = vec![0.0f32; self.n * c * voxels];
        chunks_mut!(out, voxels).enumerate().for_each(|(row, dst)| {
            let b = row / c;
            for p in 0..m {
                let go = g[row * m + p];
                let corners = self.corners(crd, b, p);
                for k in 0..corners.count {
                    dst[corners.index[k]] += corners.weight[k] * go;
                }
            }
        });
        let mut shape = vec![self.n, c];
        shape.extend(self.size);
        FlexTensor::from_data(burn_backend::TensorData::new(out, Shape::from(shape)))
    }

    /// `∂L/∂coords[b, a, p] = Σ_ch ∂L/∂out[b, ch, p] · Σ_corners image · ∂weight/∂a`.
    fn coords_grad(&self, img: &[f32], crd: &[f32], g: &[f32]) -> FlexTensor {
        let (m, c) = (self.points, self.c);
        let voxels = self.size.iter().product::<usize>();
        let mut out = vec![0.0f32; self.n * 3 * m];
        if m > 0 {
            chunks_mut!(out, 3 * m).enumerate().for_each(|(b, block)| {
                let (gz, rest) = block.split_at_mut(m);
                let (gy, gx) = rest.split_at_mut(m);
                chunks_mut!(gz, CHUNK).zip(chunks_mut!(gy, CHUNK)).zip(chunks_mut!(gx, CHUNK)).enumerate().for_each(
                    |(chunk, ((gz, gy), gx))| {
                        for i in 0..gz.len() {
                            let p = chunk * CHUNK + i;
                            let corners = self.corners(crd, b, p);
                            let mut acc = [0.0f32; 3];
                            for ch in 0..c {
                                let row = b * c + ch;
                                let (src, go) = (&img[row * voxels..(row + 1) * voxels], g[row * m + p]);
                                for k in 0..corners.count {
                                    let v = src[corners.index[k]] * go;
                                    for a in 0..3 {
                                        acc[a] += v * corners.slope[k][a];
                                    }
                                }
                            }
                            (gz[i], gy[i], gx[i]) = (acc[0], acc[1], acc[2]);
                        }
                    },
                );
            });
        }
        let mut shape = self.out_shape.clone();
        shape[1] = 3;
        FlexTensor::from_data(burn_backend::TensorData::new(out, Shape::from(shape)))
    }
}
