//! Trilinear sampling of `[n, c, d, h, w]` volumes at voxel coordinates, with its backward pass: the spatial
//! transformer of registration networks as one kernel forward and one per gradient backward, instead of the
//! composition of tensor operations (floor, weights, eight gathers, masks and sums) that a backend-generic
//! implementation launches and keeps for autodiff. The arithmetic follows that composition (the same clamp, floor
//! and weight products in f32), as the CPU backend's `burn_flex::ops::trilinear` does.

use burn_backend::{DType, Shape, TensorMetadata};
use cubecl::{calculate_cube_count_elemwise, features::AtomicUsage, ir::FloatKind, prelude::*};

use crate::{
    CubeRuntime,
    kernel::{
        conv::{
            CASFloatAtomicAdd, FloatAtomicAdd, FloatAtomicAddFamily, IntrinsicFloatAtomicAddFamily,
            ProxyType,
        },
        into_contiguous,
        utils::address_type,
    },
    ops::{
        numeric::{empty_device_dtype, zeros_client},
        reshape,
    },
    tensor::CubeTensor,
};

/// One sample coordinate `v` along an axis of `len` voxels: after the padding's clamp, its floor, its fraction, and
/// whether it passes gradient (zero where `border` clamped it).
#[cube]
fn axis_point<F: Float>(v: F, len: usize, #[comptime] border: bool) -> (F, F, F) {
    let mut v = v;
    let mut pass = F::new(1.0);
    if comptime!(border) {
        let hi = F::cast_from(len - 1);
        if v > hi {
            v = hi;
            pass = F::new(0.0);
        }
        if v < F::new(0.0) {
            v = F::new(0.0);
            pass = F::new(0.0);
        }
    }
    let floor = v.floor();
    (floor, v - floor, pass)
}

/// Whether corner coordinate `x` lies in `[0, len − 1]`. (A depth-1 volume has only its plane's corner along depth:
/// the kernels skip the upper one there, as the composed form does, whatever the depth coordinate.)
#[cube]
fn inside<F: Float>(x: F, len: usize) -> bool {
    x >= F::new(0.0) && x <= F::cast_from(len - 1)
}

/// The weight of a corner along one axis: the fraction on the upper corner (`upper` = 1), one minus it on the lower.
#[cube]
fn axis_weight<F: Float>(frac: F, upper: F) -> F {
    upper * frac + (F::new(1.0) - upper) * (-frac + F::new(1.0))
}

/// One thread per (batch, point): every channel of the output at that point.
#[cube(launch, address_type = "dynamic")]
fn trilinear_forward_kernel<F: Float>(
    image: &Tensor<F>,      // [n, c, d, h, w]
    coords: &Tensor<F>,     // [n, 3, m]
    output: &mut Tensor<F>, // [n, c, m]
    #[comptime] border: bool,
    #[define(F)] _dtype: StorageType,
) {
    let m = coords.shape(2);
    if ABSOLUTE_POS >= coords.shape(0) * m {
        terminate!();
    }
    let b = ABSOLUTE_POS / m;
    let p = ABSOLUTE_POS % m;
    let (d, h, w) = (image.shape(2), image.shape(3), image.shape(4));
    let at = b * coords.stride(0) + p * coords.stride(2);
    let (fz, tz, _) = axis_point::<F>(coords[at], d, border);
    let (fy, ty, _) = axis_point::<F>(coords[at + coords.stride(1)], h, border);
    let (fx, tx, _) = axis_point::<F>(coords[at + 2 * coords.stride(1)], w, border);
    for ch in 0..image.shape(1) {
        let base = b * image.stride(0) + ch * image.stride(1);
        let mut acc = F::new(0.0);
        #[unroll]
        for dz in 0..2u32 {
            let uz = F::cast_from(dz);
            let z = fz + uz;
            let wz = axis_weight::<F>(tz, uz);
            #[unroll]
            for dy in 0..2u32 {
                let uy = F::cast_from(dy);
                let y = fy + uy;
                let wy = axis_weight::<F>(ty, uy);
                #[unroll]
                for dx in 0..2u32 {
                    let ux = F::cast_from(dx);
                    let x = fx + ux;
                    let wx = axis_weight::<F>(tx, ux);
                    if (dz == 0 || d > 1)
                        && inside::<F>(z, d)
                        && inside::<F>(y, h)
                        && inside::<F>(x, w)
                    {
                        let at = base
                            + usize::cast_from(z) * image.stride(2)
                            + usize::cast_from(y) * image.stride(3)
                            + usize::cast_from(x) * image.stride(4);
                        acc += image[at] * (wz * wy * wx);
                    }
                }
            }
        }
        output[b * output.stride(0) + ch * output.stride(1) + p * output.stride(2)] = acc;
    }
}

/// One thread per (batch, point): `∂L/∂out` at that point, weighted, added to the image gradient at the eight
/// corners of every channel.
#[cube(launch, address_type = "dynamic")]
fn trilinear_image_grad_kernel<F: Float, FP: Float, FAdd: FloatAtomicAddFamily>(
    coords: &Tensor<F>,                                   // [n, 3, m]
    grad: &Tensor<F>,                                     // [n, c, m]
    image_grad: &mut Tensor<Atomic<ProxyType<FAdd, FP>>>, // [n, c, d, h, w]
    #[comptime] border: bool,
    #[define(F, FP)] _dtype: [StorageType; 2],
) {
    let m = coords.shape(2);
    if ABSOLUTE_POS >= coords.shape(0) * m {
        terminate!();
    }
    let b = ABSOLUTE_POS / m;
    let p = ABSOLUTE_POS % m;
    let (d, h, w) = (image_grad.shape(2), image_grad.shape(3), image_grad.shape(4));
    let at = b * coords.stride(0) + p * coords.stride(2);
    let (fz, tz, _) = axis_point::<F>(coords[at], d, border);
    let (fy, ty, _) = axis_point::<F>(coords[at + coords.stride(1)], h, border);
    let (fx, tx, _) = axis_point::<F>(coords[at + 2 * coords.stride(1)], w, border);
    for ch in 0..image_grad.shape(1) {
        let go = grad[b * grad.stride(0) + ch * grad.stride(1) + p * grad.stride(2)];
        let base = b * image_grad.stride(0) + ch * image_grad.stride(1);
        #[unroll]
        for dz in 0..2u32 {
            let uz = F::cast_from(dz);
            let z = fz + uz;
            let wz = axis_weight::<F>(tz, uz);
            #[unroll]
            for dy in 0..2u32 {
                let uy = F::cast_from(dy);
                let y = fy + uy;
                let wy = axis_weight::<F>(ty, uy);
                #[unroll]
                for dx in 0..2u32 {
                    let ux = F::cast_from(dx);
                    let x = fx + ux;
                    let wx = axis_weight::<F>(tx, ux);
                    if (dz == 0 || d > 1)
                        && inside::<F>(z, d)
                        && inside::<F>(y, h)
                        && inside::<F>(x, w)
                    {
                        let at = base
                            + usize::cast_from(z) * image_grad.stride(2)
                            + usize::cast_from(y) * image_grad.stride(3)
                            + usize::cast_from(x) * image_grad.stride(4);
                        FAdd::Op::<FP>::float_atomic_add::<F>(
                            &mut image_grad[at],
                            wz * wy * wx * go,
                        );
                    }
                }
            }
        }
    }
}

/// One thread per (batch, point): `∂L/∂coords = Σ_ch ∂L/∂out · Σ_corners image · ∂weight/∂coordinate`, zero along
/// axes whose coordinate `border` clamped.
#[cube(launch, address_type = "dynamic")]
fn trilinear_coords_grad_kernel<F: Float>(
    image: &Tensor<F>,           // [n, c, d, h, w]
    coords: &Tensor<F>,          // [n, 3, m]
    grad: &Tensor<F>,            // [n, c, m]
    coords_grad: &mut Tensor<F>, // [n, 3, m]
    #[comptime] border: bool,
    #[define(F)] _dtype: StorageType,
) {
    let m = coords.shape(2);
    if ABSOLUTE_POS >= coords.shape(0) * m {
        terminate!();
    }
    let b = ABSOLUTE_POS / m;
    let p = ABSOLUTE_POS % m;
    let (d, h, w) = (image.shape(2), image.shape(3), image.shape(4));
    let at = b * coords.stride(0) + p * coords.stride(2);
    let (fz, tz, pz) = axis_point::<F>(coords[at], d, border);
    let (fy, ty, py) = axis_point::<F>(coords[at + coords.stride(1)], h, border);
    let (fx, tx, px) = axis_point::<F>(coords[at + 2 * coords.stride(1)], w, border);
    let mut gz = F::new(0.0);
    let mut gy = F::new(0.0);
    let mut gx = F::new(0.0);
    for ch in 0..image.shape(1) {
        let go = grad[b * grad.stride(0) + ch * grad.stride(1) + p * grad.stride(2)];
        let base = b * image.stride(0) + ch * image.stride(1);
        #[unroll]
        for dz in 0..2u32 {
            let uz = F::cast_from(dz);
            let z = fz + uz;
            let wz = axis_weight::<F>(tz, uz);
            let sz = F::new(2.0) * uz - F::new(1.0);
            #[unroll]
            for dy in 0..2u32 {
                let uy = F::cast_from(dy);
                let y = fy + uy;
                let wy = axis_weight::<F>(ty, uy);
                let sy = F::new(2.0) * uy - F::new(1.0);
                #[unroll]
                for dx in 0..2u32 {
                    let ux = F::cast_from(dx);
                    let x = fx + ux;
                    let wx = axis_weight::<F>(tx, ux);
                    let sx = F::new(2.0) * ux - F::new(1.0);
                    if (dz == 0 || d > 1)
                        && inside::<F>(z, d)
                        && inside::<F>(y, h)
                        && inside::<F>(x, w)
                    {
                        let at = base
                            + usize::cast_from(z) * image.stride(2)
                            + usize::cast_from(y) * image.stride(3)
                            + usize::cast_from(x) * image.stride(4);
                        let v = image[at] * go;
                        gz += v * (pz * sz * wy * wx);
                        gy += v * (py * wz * sy * wx);
                        gx += v * (px * wz * wy * sx);
                    }
                }
            }
        }
    }
    let out = b * coords_grad.stride(0) + p * coords_grad.stride(2);
    coords_grad[out] = gz;
    coords_grad[out + coords_grad.stride(1)] = gy;
    coords_grad[out + 2 * coords_grad.stride(1)] = gx;
}

/// One trilinear sampling: `image` `[n, c, d, h, w]` read at `coords` `[n, 3, m…]` (channels depth, height, width,
/// in voxels), giving `[n, c, m…]`; corners outside the volume contribute zero, or with `border` the coordinates are
/// clamped to the volume first (the clamped ones passing no gradient).
#[derive(Clone, Debug)]
pub struct TrilinearSampling {
    n: usize,
    c: usize,
    size: [usize; 3],
    points: usize,
    out_shape: Vec<usize>,
    border: bool,
}

impl TrilinearSampling {
    /// The sampling of `image` at `coords`, or `None` unless both are f32, `image` has five dimensions and a
    /// non-empty volume and channels, and `coords` is `[n, 3, …]` with the image's batch size and some points.
    pub fn new<R: CubeRuntime>(
        image: &CubeTensor<R>,
        coords: &CubeTensor<R>,
        border: bool,
    ) -> Option<Self> {
        let dims = image.shape();
        let cdims = coords.shape();
        if image.dtype != DType::F32
            || coords.dtype != DType::F32
            || dims.num_dims() != 5
            || cdims.num_dims() < 3
        {
            return None;
        }
        if cdims[0] != dims[0] || cdims[1] != 3 || (0..5).any(|k| dims[k] == 0) {
            return None;
        }
        let points: usize = (2..cdims.num_dims()).map(|k| cdims[k]).product();
        if points == 0 {
            return None;
        }
        let mut out_shape = vec![dims[0], dims[1]];
        out_shape.extend((2..cdims.num_dims()).map(|k| cdims[k]));
        Some(Self {
            n: dims[0],
            c: dims[1],
            size: [dims[2], dims[3], dims[4]],
            points,
            out_shape,
            border,
        })
    }

    /// The output's shape, `[n, c, m…]`.
    pub fn out_shape(&self) -> Shape {
        Shape::from(self.out_shape.clone())
    }

    fn flat<R: CubeRuntime>(&self, tensor: CubeTensor<R>, channels: usize) -> CubeTensor<R> {
        reshape(into_contiguous(tensor), Shape::new([self.n, channels, self.points]))
    }

    fn launch_size<R: CubeRuntime>(&self, client: &ComputeClient<R>) -> (CubeCount, CubeDim) {
        let threads = self.n * self.points;
        let cube_dim = CubeDim::new(client, threads);
        (calculate_cube_count_elemwise(client, threads, cube_dim), cube_dim)
    }

    /// The sampled values.
    pub fn forward<R: CubeRuntime>(
        &self,
        image: CubeTensor<R>,
        coords: CubeTensor<R>,
    ) -> CubeTensor<R> {
        let image = into_contiguous(image);
        let coords = self.flat(coords, 3);
        let client = image.client.clone();
        let output = empty_device_dtype(
            client.clone(),
            image.device.clone(),
            Shape::new([self.n, self.c, self.points]),
            DType::F32,
        );
        let (cube_count, cube_dim) = self.launch_size(&client);
        trilinear_forward_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            address_type!(image, coords, output),
            image.into_tensor_arg(),
            coords.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            self.border,
            DType::F32.into(),
        );
        reshape(output, self.out_shape())
    }

    /// The gradients of a loss with respect to the image (when `image_grad`) and the coordinates (`[n, 3, m…]`,
    /// when `coords_grad`), given its gradient `grad` with respect to the output. The image gradient is summed by
    /// atomic additions, so its float sums' order varies between runs.
    pub fn backward<R: CubeRuntime>(
        &self,
        image: CubeTensor<R>,
        coords: CubeTensor<R>,
        grad: CubeTensor<R>,
        image_grad: bool,
        coords_grad: bool,
    ) -> (Option<CubeTensor<R>>, Option<CubeTensor<R>>) {
        let coords = self.flat(coords, 3);
        let grad = self.flat(grad, self.c);
        let client = coords.client.clone();
        let device = coords.device.clone();
        let (cube_count, cube_dim) = self.launch_size(&client);
        let coords_out = coords_grad.then(|| {
            let image = into_contiguous(image);
            let out = empty_device_dtype(
                client.clone(),
                device.clone(),
                Shape::new([self.n, 3, self.points]),
                DType::F32,
            );
            trilinear_coords_grad_kernel::launch(
                &client,
                cube_count.clone(),
                cube_dim,
                address_type!(image, coords, grad, out),
                image.into_tensor_arg(),
                coords.clone().into_tensor_arg(),
                grad.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                self.border,
                DType::F32.into(),
            );
            let mut shape = self.out_shape.clone();
            shape[1] = 3;
            reshape(out, Shape::from(shape))
        });
        let image_out = image_grad.then(|| {
            let shape = Shape::new([self.n, self.c, self.size[0], self.size[1], self.size[2]]);
            let out = zeros_client(client.clone(), device.clone(), shape, DType::F32);
            let intrinsic = client
                .properties()
                .atomic_type_usage(Type::new(StorageType::Atomic(FloatKind::F32.into())))
                .contains(AtomicUsage::Add);
            let launch = match intrinsic {
                true => trilinear_image_grad_kernel::launch::<IntrinsicFloatAtomicAddFamily, R>,
                false => trilinear_image_grad_kernel::launch::<CASFloatAtomicAdd, R>,
            };
            let dtypes: [StorageType; 2] = [DType::F32.into(), DType::F32.into()];
            launch(
                &client,
                cube_count.clone(),
                cube_dim,
                address_type!(coords, grad, out),
                coords.into_tensor_arg(),
                grad.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                self.border,
                dtypes,
            );
            out
        });
        (image_out, coords_out)
    }
}
