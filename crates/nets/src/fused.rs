//! The fused kernels of the default CPU backend: the trilinear sampler, batch / instance normalisation and 3D max
//! pooling.
//!
//! [`crate::ops::sample_linear`] is a composition of tensor operations that every backend differentiates. On
//! burn-flex, plain or under autodiff, it runs instead as one kernel forward and one backward
//! (`burn_flex::ops::trilinear`), registered with burn's autodiff as a single operation of two parents (image and
//! coordinates). [`crate::ops::batch_norm`] and [`crate::ops::instance_norm`] likewise run burn's normalisation
//! modules as `burn_flex::ops::norm` passes, one operation of three parents (input, γ, β) whose backward keeps
//! only the input and the per-group statistics. [`crate::ops::pool3d`]'s max pooling runs as burn-flex's 3D
//! pooling kernel (`burn_flex::ops::pool`), one operation whose backward keeps the window maxima's indices and the
//! input's shape, not the input. The backend is recognised by its type, as a specialisation
//! would; every other backend keeps the composition.

use core::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::{BatchNorm, InstanceNorm};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::ops::norm::{ChannelNorm, NormGroups, scale_shift_channels};
use burn_flex::ops::pool::{max_pool3d_backward_f32_of_shape, max_pool3d_with_indices_f32};
use burn_flex::ops::trilinear::{TrilinearPadding, TrilinearSampling};
use burn_flex::{Flex, FlexTensor};

use crate::ops::Padding;
use crate::typed::{primitive, register_parents, tensor};

type Ad = Autodiff<Flex, NoCheckpointing>;

fn padding(p: Padding) -> TrilinearPadding {
    match p {
        Padding::Zeros => TrilinearPadding::Zeros,
        Padding::Border => TrilinearPadding::Border,
    }
}

/// Whether `B` is one of the backends with the fused kernel.
pub(crate) fn available<B: Backend>() -> bool {
    let backend = TypeId::of::<B>();
    backend == TypeId::of::<Flex>() || backend == TypeId::of::<Ad>()
}

/// The fused sampling, or `None` where the backend or the tensors' types do not have it.
pub(crate) fn sample_linear<B: Backend>(image: &Tensor<B, 5>, coords: &Tensor<B, 5>, pad: Padding) -> Option<Tensor<B, 5>> {
    if image.dtype() != DType::F32 || coords.dtype() != DType::F32 {
        return None;
    }
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        let image: FlexTensor = primitive(image.clone())?;
        let coords: FlexTensor = primitive(coords.clone())?;
        let sampling = TrilinearSampling::new(&image, &coords, padding(pad))?;
        tensor::<B, 5, _>(sampling.forward(&image, &coords))
    } else if backend == TypeId::of::<Ad>() {
        let image: FloatTensor<Ad> = primitive(image.clone())?;
        let coords: FloatTensor<Ad> = primitive(coords.clone())?;
        let sampling = TrilinearSampling::new(&image.primitive, &coords.primitive, padding(pad))?;
        // Made contiguous once: the forward pass reads them, and the backward pass keeps them.
        let (image_data, coords_data) = (image.primitive.to_contiguous(), coords.primitive.to_contiguous());
        let out = sampling.forward(&image_data, &coords_data);
        let result = match SampleBackward.prepare::<NoCheckpointing>([image.node.clone(), coords.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((sampling, image_data, coords_data), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        tensor::<B, 5, _>(result)
    } else {
        None
    }
}

/// The backward step of the fused sampling: both gradients from the kernel.
#[derive(Debug)]
struct SampleBackward;

impl Backward<Flex, 2> for SampleBackward {
    type State = (TrilinearSampling, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (sampling, image, coords) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        let parents = ops.parents.map(|node| node.map(|n| n.id));
        let (image_grad, coords_grad) = sampling.backward(&image, &coords, &grad, parents[0].is_some(), parents[1].is_some());
        register_parents::<Flex>(grads, parents, [image_grad, coords_grad]);
    }
}

/// Batch normalisation by `bn`, followed by a ReLU when `relu`: with the batch's statistics under autodiff
/// (updating the running ones as burn's module does), with the running statistics folded into one scale and shift
/// otherwise; `None` where the backend or the type has no fused kernel.
pub(crate) fn batch_norm<B: Backend, const D: usize>(bn: &BatchNorm<B>, x: &Tensor<B, D>, relu: bool) -> Option<Tensor<B, D>> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let device = x.device();
    let backend = TypeId::of::<B>();
    if !B::ad_enabled(&device) {
        if backend != TypeId::of::<Flex>() {
            return None;
        }
        let values = |t: Tensor<B, 1>| t.into_data().to_vec::<f32>().ok();
        let (gamma, beta) = (values(bn.gamma.val())?, values(bn.beta.val())?);
        let (mean, var) = (values(bn.running_mean.value())?, values(bn.running_var.value())?);
        let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| (*g as f64 / (*v as f64 + bn.epsilon).sqrt()) as f32).collect();
        let shift: Vec<f32> = beta.iter().zip(&mean).zip(&scale).map(|((b, m), a)| b - m * a).collect();
        let input: FlexTensor = primitive(x.clone())?;
        return tensor::<B, D, _>(scale_shift_channels(&input, &scale, &shift, relu)?);
    }
    if backend != TypeId::of::<Ad>() {
        return None;
    }
    let input: FloatTensor<Ad> = primitive(x.clone())?;
    let gamma: FloatTensor<Ad> = primitive(bn.gamma.val())?;
    let beta: FloatTensor<Ad> = primitive(bn.beta.val())?;
    let norm = with_relu(ChannelNorm::new(&input.primitive, NormGroups::Channel, bn.epsilon)?, relu);
    let data = input.primitive.to_contiguous();
    let (mean, var) = norm.statistics(&data);
    let inv_std = norm.inv_std(&var);
    let running = |state: Tensor<B, 1>, batch: &[f32]| {
        let batch = Tensor::<B, 1>::from_data(TensorData::new(batch.to_vec(), [batch.len()]), &device);
        state.to_device(&device).mul_scalar(1.0 - bn.momentum).add(batch.mul_scalar(bn.momentum)).detach()
    };
    bn.running_mean.update(running(bn.running_mean.value_sync(), &mean));
    bn.running_var.update(running(bn.running_var.value_sync(), &var));
    let out = norm.forward(&data, &mean, &inv_std, Some(&gamma.primitive), Some(&beta.primitive));
    let state = NormState { norm, input: data, mean, inv_std, gamma: Some(gamma.primitive), beta: Some(beta.primitive) };
    let result = match NormBackward.prepare::<NoCheckpointing>([input.node, gamma.node, beta.node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    tensor::<B, D, _>(result)
}

/// Instance normalisation by `norm` (the same with and without autodiff), followed by a ReLU when `relu`; `None`
/// where the backend or the type has no fused kernel.
pub(crate) fn instance_norm<B: Backend, const D: usize>(norm: &InstanceNorm<B>, x: &Tensor<B, D>, relu: bool) -> Option<Tensor<B, D>> {
    if x.dtype() != DType::F32 || D < 3 || norm.affine != (norm.gamma.is_some() && norm.beta.is_some()) {
        return None;
    }
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        let input: FlexTensor = primitive(x.clone())?;
        let gamma: Option<FlexTensor> = match &norm.gamma {
            Some(g) if norm.affine => Some(primitive(g.val())?),
            _ => None,
        };
        let beta: Option<FlexTensor> = match &norm.beta {
            Some(b) if norm.affine => Some(primitive(b.val())?),
            _ => None,
        };
        let kernel = with_relu(ChannelNorm::new(&input, NormGroups::SampleChannel, norm.epsilon)?, relu);
        let data = input.to_contiguous();
        let (mean, var) = kernel.statistics(&data);
        let inv_std = kernel.inv_std(&var);
        return tensor::<B, D, _>(kernel.forward(&data, &mean, &inv_std, gamma.as_ref(), beta.as_ref()));
    }
    if backend != TypeId::of::<Ad>() {
        return None;
    }
    let input: FloatTensor<Ad> = primitive(x.clone())?;
    let kernel = with_relu(ChannelNorm::new(&input.primitive, NormGroups::SampleChannel, norm.epsilon)?, relu);
    let data = input.primitive.to_contiguous();
    let (mean, var) = kernel.statistics(&data);
    let inv_std = kernel.inv_std(&var);
    let result = match (&norm.gamma, &norm.beta) {
        (Some(g), Some(b)) if norm.affine => {
            let gamma: FloatTensor<Ad> = primitive(g.val())?;
            let beta: FloatTensor<Ad> = primitive(b.val())?;
            let out = kernel.forward(&data, &mean, &inv_std, Some(&gamma.primitive), Some(&beta.primitive));
            let state = NormState { norm: kernel, input: data, mean, inv_std, gamma: Some(gamma.primitive), beta: Some(beta.primitive) };
            match NormBackward.prepare::<NoCheckpointing>([input.node, gamma.node, beta.node]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish(state, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
        _ => {
            let out = kernel.forward(&data, &mean, &inv_std, None, None);
            let state = NormState { norm: kernel, input: data, mean, inv_std, gamma: None, beta: None };
            match NormBackward.prepare::<NoCheckpointing>([input.node]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish(state, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
    };
    tensor::<B, D, _>(result)
}

/// The normalisation with a ReLU fused in when `relu`.
fn with_relu(norm: ChannelNorm, relu: bool) -> ChannelNorm {
    if relu { norm.with_relu() } else { norm }
}

/// What the normalisation's backward step keeps: the input (shared with the tensor the forward pass read) and the
/// per-group statistics; γ and β when affine (β for the ReLU's mask).
#[derive(Clone, Debug)]
struct NormState {
    norm: ChannelNorm,
    input: FlexTensor,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Option<FlexTensor>,
    beta: Option<FlexTensor>,
}

/// The backward step of a fused normalisation: parents input, and γ and β when there are three.
#[derive(Debug)]
struct NormBackward;

impl<const N: usize> Backward<Flex, N> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let state = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        let affine = N == 3;
        let (dx, params) =
            state.norm.backward(&state.input, &grad, &state.mean, &state.inv_std, state.gamma.as_ref(), state.beta.as_ref(), affine);
        let mut parents = ops.parents.into_iter();
        if let Some(node) = parents.next().flatten() {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some((dgamma, dbeta)) = params {
            if let Some(node) = parents.next().flatten() {
                grads.register::<Flex>(node.id, dgamma);
            }
            if let Some(node) = parents.next().flatten() {
                grads.register::<Flex>(node.id, dbeta);
            }
        }
    }
}

/// Max pooling by windows equal to their strides (no padding, trailing voxels dropped) as burn-flex's 3D kernel,
/// which keeps the first maximum of each window in scan order; `None` where the backend or the type has no fused
/// kernel, or the result would be empty.
pub(crate) fn max_pool3d<B: Backend>(x: &Tensor<B, 5>, window: [usize; 3]) -> Option<Tensor<B, 5>> {
    let [n, c, d, h, w] = x.dims();
    if x.dtype() != DType::F32 || n * c * (d / window[0]) * (h / window[1]) * (w / window[2]) == 0 {
        return None;
    }
    let pool = |t: FlexTensor| max_pool3d_with_indices_f32(t, window, window, [0; 3], [1; 3], false);
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        let input: FlexTensor = primitive(x.clone())?;
        return tensor::<B, 5, _>(pool(input).0);
    }
    if backend != TypeId::of::<Ad>() {
        return None;
    }
    let input: FloatTensor<Ad> = primitive(x.clone())?;
    let shape = input.primitive.layout().shape().to_vec();
    let (out, indices) = pool(input.primitive);
    let result = match PoolBackward.prepare::<NoCheckpointing>([input.node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((shape, indices), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    tensor::<B, 5, _>(result)
}

/// The backward step of the fused max pooling: each window's gradient to the input voxel of its index.
#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// The input's shape and the indices of the window maxima.
    type State = (Vec<usize>, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (shape, indices) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = ops.parents.into_iter().next().flatten() {
            grads.register::<Flex>(node.id, max_pool3d_backward_f32_of_shape(&shape, grad, indices));
        }
    }
}
