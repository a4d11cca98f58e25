//! Volumetric operations burn does not provide, written with tensor operations that every backend has and whose
//! gradients burn's autodiff derives: 3D max and average pooling, nearest and (tri)linear up-sampling, and the
//! spatial transformer (warping by a dense displacement field) in 2D and 3D.
//!
//! Tensors are `[batch, channels, depth, height, width]`; 2D images travel as depth-1 volumes, so that every
//! network of this crate is written once for both.
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Max pooling with a cubic window equal to its stride (`k`×`k`×`k`, stride `k`, no padding), as
/// `torch.nn.MaxPool3d(k)`: trailing voxels that do not fill a window are dropped. Where several voxels share the
/// maximum the gradient goes to the first of them in (depth, height, width) order, as in PyTorch.
pub fn max_pool3d<B: Backend>(x: Tensor<B, 5>, k: usize) -> Tensor<B, 5> {
    pool3d(x, [k, k, k], true)
}

/// Average pooling with a cubic window equal to its stride, as `torch.nn.AvgPool3d(k)`.
pub fn avg_pool3d<B: Backend>(x: Tensor<B, 5>, k: usize) -> Tensor<B, 5> {
    pool3d(x, [k, k, k], false)
}

/// Pooling by windows equal to their strides along (depth, height, width); a factor of 1 leaves an axis as it is
/// (2D images use `[1, k, k]`). Trailing voxels that do not fill a window are dropped. Max pooling runs as
/// burn-flex's 3D pooling kernel on the default CPU backend (the `flex` feature, `Flex` and `Autodiff<Flex>`), as
/// two passes of the backend's own 2D pooling elsewhere (in the planes, then along the depth); average pooling
/// runs as the latter everywhere. Where several voxels of a window share its maximum, the gradient goes to the
/// first of them in (depth, height, width) order, as in PyTorch.
pub fn pool3d<B: Backend>(x: Tensor<B, 5>, window: [usize; 3], max: bool) -> Tensor<B, 5> {
    #[cfg(feature = "flex")]
    if max && let Some(y) = crate::fused::max_pool3d(&x, window.map(|k| k.max(1))) {
        return y;
    }
    pool3d_by_planes(x, window, max)
}

/// [`pool3d`] as the backend's own 2D pooling, twice: in the planes (height and width, the planes folded into the
/// batch), then along the depth of the in-plane result (its rows of `height · width` columns pooled by `k`×1
/// windows). A window's maximum is the maximum of its planes' maxima, and its first maximum in (depth, height,
/// width) order is the first one of the first plane that holds the maximum, so the result and the gradient are
/// those of one 3D window.
fn pool3d_by_planes<B: Backend>(x: Tensor<B, 5>, window: [usize; 3], max: bool) -> Tensor<B, 5> {
    let [n, c, d, h, w] = x.dims();
    let [kd, kh, kw] = window.map(|k| k.max(1));
    let (od, oh, ow) = (d / kd, h / kh, w / kw);
    if n * c * od * oh * ow == 0 {
        // No whole window: an empty result of the pooled shape.
        return Tensor::zeros([n, c, od, oh, ow], &x.device());
    }
    let pool2d = |t: Tensor<B, 4>, k: [usize; 2]| {
        if max {
            burn::tensor::module::max_pool2d(t, k, k, [0, 0], [1, 1], false)
        } else {
            burn::tensor::module::avg_pool2d(t, k, k, [0, 0], true, false)
        }
    };
    let x = if kh > 1 || kw > 1 { pool2d(x.reshape([n * c * d, 1, h, w]), [kh, kw]).reshape([n, c, d, oh, ow]) } else { x };
    if kd == 1 {
        return x;
    }
    pool2d(x.reshape([n * c, 1, d, oh * ow]), [kd, 1]).reshape([n, c, od, oh, ow])
}

/// Nearest-neighbour up-sampling by integer factors along (depth, height, width), as
/// `torch.nn.Upsample(scale_factor=f, mode="nearest")`.
pub fn upsample_nearest<B: Backend>(x: Tensor<B, 5>, factor: [usize; 3]) -> Tensor<B, 5> {
    let [n, c, d, h, w] = x.dims();
    let [fd, fh, fw] = factor.map(|f| f.max(1));
    let x: Tensor<B, 8> = x.reshape([n, c, d, 1, h, 1, w, 1]);
    x.expand([n, c, d, fd, h, fh, w, fw]).reshape([n, c, d * fd, h * fh, w * fw])
}

/// Linear interpolation along one spatial axis (2, 3 or 4) to `out` samples, with PyTorch's
/// `align_corners=False` convention (half-pixel centres, edge samples clamped).
pub fn resize_linear_axis<B: Backend>(x: Tensor<B, 5>, axis: usize, out: usize) -> Tensor<B, 5> {
    let len = x.dims()[axis];
    if len == out {
        return x;
    }
    let device = x.device();
    let scale = len as f64 / out as f64;
    let mut lo = Vec::with_capacity(out);
    let mut hi = Vec::with_capacity(out);
    let mut frac = Vec::with_capacity(out);
    for i in 0..out {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(len - 1);
        let i1 = (i0 + 1).min(len - 1);
        lo.push(i0 as i64);
        hi.push(i1 as i64);
        frac.push((src - i0 as f64) as f32);
    }
    let lo = Tensor::<B, 1, Int>::from_data(lo.as_slice(), &device);
    let hi = Tensor::<B, 1, Int>::from_data(hi.as_slice(), &device);
    let mut shape = [1usize; 5];
    shape[axis] = out;
    let t = Tensor::<B, 1>::from_data(frac.as_slice(), &device).reshape(shape);
    let a = x.clone().select(axis, lo);
    let b = x.select(axis, hi);
    a.clone() + (b - a) * t
}

/// Trilinear (or, for depth-1 volumes, bilinear) resizing to `size`, as
/// `F.interpolate(mode="trilinear", align_corners=False)`: separable linear interpolation along each axis.
pub fn resize_linear<B: Backend>(x: Tensor<B, 5>, size: [usize; 3]) -> Tensor<B, 5> {
    let x = resize_linear_axis(x, 2, size[0]);
    let x = resize_linear_axis(x, 3, size[1]);
    resize_linear_axis(x, 4, size[2])
}

/// Padding of samples that fall outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Outside is zero (`padding_mode="zeros"`).
    Zeros,
    /// Outside takes the nearest edge value (`padding_mode="border"`).
    Border,
}

/// The identity grid: `[1, 3, d, h, w]` holding each voxel's own (depth, height, width) index.
pub fn identity_grid<B: Backend>(size: [usize; 3], device: &B::Device) -> Tensor<B, 5> {
    let [d, h, w] = size;
    let axis = |len: usize, shape: [usize; 5]| {
        let v: Vec<f32> = (0..len).map(|i| i as f32).collect();
        Tensor::<B, 1>::from_data(v.as_slice(), device).reshape(shape).expand([1, 1, d, h, w])
    };
    Tensor::cat(vec![axis(d, [1, 1, d, 1, 1]), axis(h, [1, 1, 1, h, 1]), axis(w, [1, 1, 1, 1, w])], 1)
}

/// Samples `image` (`[n, c, d, h, w]`) at voxel coordinates `coords` (`[n, 3, d', h', w']`, channels ordered
/// depth, height, width) by trilinear interpolation — `F.grid_sample(mode="bilinear", align_corners=True)` after
/// normalising the coordinates. Gradients flow to the image and to the coordinates. Depth-1 images with zero
/// depth coordinates sample bilinearly in their plane.
///
/// On the default CPU backend (burn-flex), and on burn-cuda and burn-wgpu without operation fusion (features
/// `cuda`, `wgpu`), with or without autodiff and for f32 tensors, this runs as one fused kernel forward and one
/// per gradient backward ([`has_fused_sampler`]); elsewhere as [`sample_linear_composed`]. Both give the same
/// values and gradients up to the order of float sums.
pub fn sample_linear<B: Backend>(image: Tensor<B, 5>, coords: Tensor<B, 5>, padding: Padding) -> Tensor<B, 5> {
    match sample_linear_fused(&image, &coords, padding) {
        Some(out) => out,
        None => sample_linear_composed(image, coords, padding),
    }
}

/// [`sample_linear`] by its fused kernels, or `None` where backend `B` has none ([`has_fused_sampler`]), the tensors
/// are not f32, or the shapes are not a sampling's (coordinates `[n, 3, …]` with the image's batch size; the GPU
/// kernels also decline empty tensors, which launch nothing).
pub fn sample_linear_fused<B: Backend>(image: &Tensor<B, 5>, coords: &Tensor<B, 5>, padding: Padding) -> Option<Tensor<B, 5>> {
    #[cfg(feature = "flex")]
    if let Some(out) = crate::fused::sample_linear(image, coords, padding) {
        return Some(out);
    }
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if let Some(out) = crate::fused_cube::sample_linear(image, coords, padding) {
        return Some(out);
    }
    #[cfg(not(any(feature = "flex", feature = "cuda", feature = "wgpu")))]
    let _ = (image, coords, padding);
    None
}

/// Whether [`sample_linear`] runs as fused kernels on backend `B`: burn-flex, and burn-cuda / burn-wgpu without
/// operation fusion where this crate is built with `cuda` / `wgpu`, each with or without autodiff (f32 tensors).
pub fn has_fused_sampler<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    if crate::fused::available::<B>() {
        return true;
    }
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if crate::fused_cube::available::<B>() {
        return true;
    }
    false
}

/// Whether [`sample_linear`], [`batch_norm`] and [`instance_norm`] all run as fused kernels on backend `B` (burn-flex,
/// with or without autodiff, for f32 tensors; the sampler alone: [`has_fused_sampler`]).
pub fn has_fused_kernels<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    return crate::fused::available::<B>();
    #[cfg(not(feature = "flex"))]
    false
}

/// Batch normalisation of `x` (`[n, c, …]`) by `bn`, the same as `bn.forward(x)`: under autodiff with the
/// batch's statistics (biased variance), updating the module's running statistics; otherwise with the running
/// statistics. On the default CPU backend and f32 tensors it runs as fused passes (one operation for autodiff,
/// whose backward keeps only the input and the per-channel statistics); elsewhere as burn's module.
pub fn batch_norm<B: Backend, const D: usize>(bn: &burn::nn::BatchNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    batch_norm_then(bn, x, false)
}

/// `relu(batch_norm(bn, x))`, on the default CPU backend with the ReLU fused into the normalisation's passes (its
/// backward recomputes the mask from the input, so nothing more is kept).
pub fn batch_norm_relu<B: Backend, const D: usize>(bn: &burn::nn::BatchNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    batch_norm_then(bn, x, true)
}

/// Instance normalisation of `x` (`[n, c, …]`, rank ≥ 3) by `norm`, the same as `norm.forward(x)`; fused on the
/// default CPU backend as [`batch_norm`] is.
pub fn instance_norm<B: Backend, const D: usize>(norm: &burn::nn::InstanceNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    instance_norm_then(norm, x, false)
}

/// `relu(instance_norm(norm, x))`, fused on the default CPU backend as [`batch_norm_relu`] is.
pub fn instance_norm_relu<B: Backend, const D: usize>(norm: &burn::nn::InstanceNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    instance_norm_then(norm, x, true)
}

/// Batch normalisation, followed by a ReLU when `relu`: the fused kernel where the backend has it, burn's module
/// (and `relu`) elsewhere.
fn batch_norm_then<B: Backend, const D: usize>(bn: &burn::nn::BatchNorm<B>, x: Tensor<B, D>, relu: bool) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if let Some(out) = crate::fused::batch_norm(bn, &x, relu) {
        return out;
    }
    relu_if(bn.forward(x), relu)
}

/// Instance normalisation, followed by a ReLU when `relu`, as [`batch_norm_then`].
fn instance_norm_then<B: Backend, const D: usize>(norm: &burn::nn::InstanceNorm<B>, x: Tensor<B, D>, relu: bool) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if let Some(out) = crate::fused::instance_norm(norm, &x, relu) {
        return out;
    }
    relu_if(norm.forward(x), relu)
}

fn relu_if<B: Backend, const D: usize>(x: Tensor<B, D>, relu: bool) -> Tensor<B, D> {
    if relu { burn::tensor::activation::relu(x) } else { x }
}

/// [`sample_linear`] as a composition of tensor operations (floor, weights, eight gathers, masks), which burn's
/// autodiff differentiates on every backend; the reference the fused kernel is tested against.
pub fn sample_linear_composed<B: Backend>(image: Tensor<B, 5>, coords: Tensor<B, 5>, padding: Padding) -> Tensor<B, 5> {
    let [n, c, d, h, w] = image.dims();
    let [_, _, od, oh, ow] = coords.dims();
    let m = od * oh * ow;
    let flat = image.reshape([n, c, d * h * w]);
    let axis = |k: usize| coords.clone().narrow(1, k, 1).reshape([n, 1, m]);
    let (z, y, x) = (axis(0), axis(1), axis(2));
    let corners = |v: Tensor<B, 3>, len: usize| {
        let v = if padding == Padding::Border { v.clamp(0.0, (len - 1) as f64) } else { v };
        let f = v.clone().floor();
        let t = v - f.clone();
        (f, t)
    };
    let (z0, tz) = corners(z, d);
    let (y0, ty) = corners(y, h);
    let (x0, tx) = corners(x, w);
    let mut out: Option<Tensor<B, 3>> = None;
    for (dz, dy, dx) in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)] {
        if d == 1 && dz == 1 {
            continue;
        }
        let weight = |t: Tensor<B, 3>, one: bool| if one { t } else { t.neg() + 1.0 };
        let wgt = weight(tz.clone(), dz == 1) * weight(ty.clone(), dy == 1) * weight(tx.clone(), dx == 1);
        let zi = z0.clone() + dz as f64;
        let yi = y0.clone() + dy as f64;
        let xi = x0.clone() + dx as f64;
        let inside =
            |v: &Tensor<B, 3>, len: usize| v.clone().greater_equal_elem(0.0).bool_and(v.clone().lower_equal_elem((len - 1) as f64));
        let valid = inside(&zi, d).bool_and(inside(&yi, h)).bool_and(inside(&xi, w));
        let wgt = wgt.mask_fill(valid.bool_not(), 0.0);
        let index =
            zi.clamp(0.0, (d - 1) as f64) * (h * w) as f64 + yi.clamp(0.0, (h - 1) as f64) * w as f64 + xi.clamp(0.0, (w - 1) as f64);
        let index = index.detach().int().expand([n, c, m]);
        let values = flat.clone().gather(2, index) * wgt;
        out = Some(match out {
            Some(acc) => acc + values,
            None => values,
        });
    }
    out.expect("at least one corner").reshape([n, c, od, oh, ow])
}

/// Warps `moving` by a dense displacement field `flow` (`[n, 3, d, h, w]`, in voxels, channels depth, height,
/// width): `warped(p) = moving(p + flow(p))`, trilinear, as VoxelMorph's spatial transformer.
pub fn warp<B: Backend>(moving: Tensor<B, 5>, flow: Tensor<B, 5>, padding: Padding) -> Tensor<B, 5> {
    let [_, _, d, h, w] = flow.dims();
    let grid = identity_grid::<B>([d, h, w], &flow.device());
    sample_linear(moving, grid + flow, padding)
}

/// Samples `image` (`[n, c, d, h, w]`) at the voxel coordinates `coords` (`[n, 3, d', h', w']`) by nearest
/// neighbour, without gradient, so that label values are kept; 0 outside the image.
pub fn sample_nearest<B: Backend>(image: Tensor<B, 5>, coords: Tensor<B, 5>) -> Tensor<B, 5> {
    let [n, c, d, h, w] = image.dims();
    let [_, _, od, oh, ow] = coords.dims();
    let m = od * oh * ow;
    let rounded = coords.detach().round();
    let raw = |k: usize| rounded.clone().narrow(1, k, 1).reshape([n, 1, m]);
    let inside = |k: usize, len: usize| raw(k).greater_equal_elem(0.0).bool_and(raw(k).lower_equal_elem((len - 1) as f64));
    let valid = inside(0, d).bool_and(inside(1, h)).bool_and(inside(2, w));
    let clamped = |k: usize, len: usize| raw(k).clamp(0.0, (len - 1) as f64);
    let index = clamped(0, d) * (h * w) as f64 + clamped(1, h) * w as f64 + clamped(2, w);
    let values = image.detach().reshape([n, c, d * h * w]).gather(2, index.int().expand([n, c, m]));
    values.mask_fill(valid.bool_not().expand([n, c, m]), 0.0).reshape([n, c, od, oh, ow])
}

/// Warps a label map by nearest-neighbour lookup (no gradient), so that label values are kept.
pub fn warp_nearest<B: Backend>(labels: Tensor<B, 5>, flow: Tensor<B, 5>) -> Tensor<B, 5> {
    let [_, _, d, h, w] = flow.dims();
    sample_nearest(labels, identity_grid::<B>([d, h, w], &flow.device()) + flow)
}

/// Composes two displacement fields: `(a ∘ b)(p) = b(p) + a(p + b(p))`, the field of warping by `b` then `a`.
pub fn compose<B: Backend>(a: Tensor<B, 5>, b: Tensor<B, 5>) -> Tensor<B, 5> {
    b.clone() + warp(a, b, Padding::Border)
}

/// Integrates a stationary velocity field by scaling and squaring (`steps` squarings of `v / 2^steps`), giving a
/// diffeomorphic displacement field.
pub fn integrate_velocity<B: Backend>(velocity: Tensor<B, 5>, steps: usize) -> Tensor<B, 5> {
    let mut flow = velocity / (1u64 << steps) as f64;
    for _ in 0..steps {
        flow = compose(flow.clone(), flow);
    }
    flow
}

/// Warps `moving` by a 4×4 affine matrix acting on voxel coordinates (depth, height, width, 1) of the output grid:
/// `warped(p) = moving(A · p)`.
pub fn warp_affine<B: Backend>(moving: Tensor<B, 5>, matrix: [[f64; 4]; 3], size: [usize; 3], padding: Padding) -> Tensor<B, 5> {
    let device = moving.device();
    let n = moving.dims()[0];
    let grid = identity_grid::<B>(size, &device);
    let axis = |k: usize| grid.clone().narrow(1, k, 1);
    let mapped: Vec<Tensor<B, 5>> =
        (0..3).map(|r| axis(0) * matrix[r][0] + axis(1) * matrix[r][1] + axis(2) * matrix[r][2] + matrix[r][3]).collect();
    let coords = Tensor::cat(mapped, 1).expand([n, 3, size[0], size[1], size[2]]);
    sample_linear(moving, coords, padding)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::tensor::TensorData;
    type B = Autodiff<burn::backend::Flex>;

    /// The composition of 2D poolings other backends run gives the fused kernel's values and gradients, ties
    /// (plateaus of zeros, as after a ReLU) and uneven sizes included.
    #[test]
    fn max_pooling_by_planes_matches_the_fused_kernel() {
        let shape = [2, 3, 7, 6, 5];
        let len: usize = shape.iter().product();
        let v: Vec<f32> = (0..len).map(|i| (((i * 7919) % len) as f32 - (len / 3) as f32).max(0.0)).collect();
        let values = |t: Tensor<B, 5>| t.into_data().to_vec::<f32>().unwrap_or_default();
        for window in [[2, 2, 2], [3, 2, 2], [2, 1, 1], [1, 2, 3]] {
            let run = |fused: bool| {
                let x = Tensor::<B, 5>::from_data(TensorData::new(v.clone(), shape), &Default::default()).require_grad();
                let y = if fused { pool3d(x.clone(), window, true) } else { pool3d_by_planes(x.clone(), window, true) };
                let count = y.dims().iter().product::<usize>();
                let weights = (0..count).map(|i| 1.0 + (i % 7) as f32).collect::<Vec<f32>>();
                let weights = Tensor::<B, 5>::from_data(TensorData::new(weights, y.dims()), &Default::default());
                let grads = (y.clone() * weights).sum().backward();
                let grad = x.grad(&grads).map(|g| g.into_data().to_vec::<f32>().unwrap_or_default());
                (values(y), grad)
            };
            let (fused, by_planes) = (run(true), run(false));
            assert!(!fused.0.is_empty() && fused.1.as_ref().is_some_and(|g| g.len() == len), "{window:?}");
            assert_eq!(fused, by_planes, "{window:?}");
        }
    }
}
