//! The fused trilinear sampler on the default CPU backend.
//!
//! [`crate::ops::sample_linear`] is a composition of tensor operations that every backend differentiates. On
//! burn-flex, plain or under autodiff, it runs instead as one kernel forward and one backward
//! (`burn_flex::ops::trilinear`), registered with burn's autodiff as a single operation of two parents (image and
//! coordinates). The backend is recognised by its type, as a specialisation would; every other backend keeps the
//! composition.

use core::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::ops::trilinear::{TrilinearPadding, TrilinearSampling};
use burn_flex::{Flex, FlexTensor};

use crate::ops::Padding;

type Ad = Autodiff<Flex, NoCheckpointing>;

/// Moves `value` into type `U` when `T` and `U` are the same type; gives it back otherwise.
fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    let taken = (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>().and_then(Option::take);
    match (taken, slot) {
        (Some(u), _) => Ok(u),
        (None, Some(t)) => Err(t),
        (None, None) => unreachable!("the value is either moved out or kept"),
    }
}

fn primitive<B: Backend, U: 'static>(x: Tensor<B, 5>) -> Option<U> {
    cast::<FloatTensor<B>, U>(x.into_primitive().tensor()).ok()
}

fn tensor<B: Backend, T: 'static>(x: T) -> Option<Tensor<B, 5>> {
    cast::<T, FloatTensor<B>>(x).ok().map(|p| Tensor::from_primitive(TensorPrimitive::Float(p)))
}

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
        tensor::<B, _>(sampling.forward(&image, &coords))
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
        tensor::<B, _>(result)
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
        let [image_node, coords_node] = ops.parents;
        let (image_grad, coords_grad) = sampling.backward(&image, &coords, &grad, image_node.is_some(), coords_node.is_some());
        if let (Some(node), Some(g)) = (image_node, image_grad) {
            grads.register::<Flex>(node.id, g);
        }
        if let (Some(node), Some(g)) = (coords_node, coords_grad) {
            grads.register::<Flex>(node.id, g);
        }
    }
}
