//! The fused trilinear sampler on the cubecl backends: burn-cuda (without operation fusion) with the `cuda`
//! feature and burn-wgpu with `wgpu`, plain or under autodiff.
//!
//! [`crate::ops::sample_linear`] runs there as burn-cubecl's `TrilinearSampling` kernels (`vendor/burn-cubecl`):
//! one launch forward, one per gradient backward (the image's by atomic additions), registered with burn's autodiff
//! as a single operation of two parents, image and coordinates — in place of the composition's some 270 tensor
//! operations forward (31–35 per corner for eight corners), each a launch, and the intermediates autodiff keeps. The backend is recognised by its type, as in [`crate::fused`].

use core::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor};
use burn_cubecl::kernel::grid_sample::TrilinearSampling;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};

use crate::ops::Padding;
use crate::typed::{primitive, register_parents, tensor};

/// The cubecl backend of runtime `R` whose tensors the kernels take (f32 floats, i32 integers).
type Cube<R, BT> = CubeBackend<R, f32, i32, BT>;

/// Whether `B` is one of the backends with the fused sampler.
pub(crate) fn available<B: Backend>() -> bool {
    #[cfg(feature = "cuda")]
    if is::<B, burn_cubecl::cubecl::cuda::CudaRuntime, u8>() {
        return true;
    }
    #[cfg(feature = "wgpu")]
    if is::<B, burn_cubecl::cubecl::wgpu::WgpuRuntime, u32>() {
        return true;
    }
    false
}

fn is<B: Backend, R: CubeRuntime, BT: BoolElement>() -> bool {
    let backend = TypeId::of::<B>();
    backend == TypeId::of::<Cube<R, BT>>() || backend == TypeId::of::<Autodiff<Cube<R, BT>>>()
}

/// The fused sampling, or `None` where the backend or the tensors' types do not have it.
pub(crate) fn sample_linear<B: Backend>(image: &Tensor<B, 5>, coords: &Tensor<B, 5>, pad: Padding) -> Option<Tensor<B, 5>> {
    if image.dtype() != DType::F32 || coords.dtype() != DType::F32 {
        return None;
    }
    #[cfg(feature = "cuda")]
    if let Some(out) = sample_on::<B, burn_cubecl::cubecl::cuda::CudaRuntime, u8>(image, coords, pad) {
        return Some(out);
    }
    #[cfg(feature = "wgpu")]
    if let Some(out) = sample_on::<B, burn_cubecl::cubecl::wgpu::WgpuRuntime, u32>(image, coords, pad) {
        return Some(out);
    }
    None
}

fn sample_on<B: Backend, R: CubeRuntime, BT: BoolElement>(
    image: &Tensor<B, 5>,
    coords: &Tensor<B, 5>,
    pad: Padding,
) -> Option<Tensor<B, 5>> {
    let border = pad == Padding::Border;
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Cube<R, BT>>() {
        let image: CubeTensor<R> = primitive(image.clone())?;
        let coords: CubeTensor<R> = primitive(coords.clone())?;
        let sampling = TrilinearSampling::new(&image, &coords, border)?;
        tensor::<B, 5, _>(sampling.forward(image, coords))
    } else if backend == TypeId::of::<Autodiff<Cube<R, BT>>>() {
        let image: FloatTensor<Autodiff<Cube<R, BT>>> = primitive(image.clone())?;
        let coords: FloatTensor<Autodiff<Cube<R, BT>>> = primitive(coords.clone())?;
        let sampling = TrilinearSampling::new(&image.primitive, &coords.primitive, border)?;
        // Made contiguous once, as on the CPU: the forward pass reads them, and the backward pass keeps them.
        let (image_data, coords_data) = (into_contiguous(image.primitive), into_contiguous(coords.primitive));
        let out = sampling.forward(image_data.clone(), coords_data.clone());
        let prepared = <SampleBackward as Backward<Cube<R, BT>, 2>>::prepare::<NoCheckpointing>(
            SampleBackward,
            [image.node.clone(), coords.node.clone()],
        );
        let result = match prepared.compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((sampling, image_data, coords_data), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        tensor::<B, 5, _>(result)
    } else {
        None
    }
}

/// The backward step of the fused sampling: both gradients from the kernels.
#[derive(Debug)]
struct SampleBackward;

impl<R: CubeRuntime, BT: BoolElement> Backward<Cube<R, BT>, 2> for SampleBackward {
    type State = (TrilinearSampling, CubeTensor<R>, CubeTensor<R>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (sampling, image, coords) = ops.state;
        let grad = grads.consume::<Cube<R, BT>>(&ops.node);
        let parents = ops.parents.map(|node| node.map(|n| n.id));
        let (image_grad, coords_grad) = sampling.backward(image, coords, grad, parents[0].is_some(), parents[1].is_some());
        register_parents::<Cube<R, BT>>(grads, parents, [image_grad, coords_grad]);
    }
}
