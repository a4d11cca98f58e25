//! Moving tensors between a generic backend `B` and the concrete backend a fused kernel was written for: the
//! check is by type, as a specialisation would be (the caller has compared `TypeId`s, or gets `None`); and handing a
//! fused operation's gradients to its parents.

use core::any::Any;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::grads::Gradients;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

/// Moves `value` into type `U` when `T` and `U` are the same type; gives it back otherwise.
pub(crate) fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    let taken = (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>().and_then(Option::take);
    match (taken, slot) {
        (Some(u), _) => Ok(u),
        (None, Some(t)) => Err(t),
        (None, None) => unreachable!("the value is either moved out or kept"),
    }
}

/// The float primitive of `x` as type `U`, when `U` is `B`'s float primitive.
pub(crate) fn primitive<B: Backend, const D: usize, U: 'static>(x: Tensor<B, D>) -> Option<U> {
    cast::<FloatTensor<B>, U>(x.into_primitive().tensor()).ok()
}

/// A tensor of backend `B` holding `x`, when `T` is `B`'s float primitive.
pub(crate) fn tensor<B: Backend, const D: usize, T: 'static>(x: T) -> Option<Tensor<B, D>> {
    cast::<T, FloatTensor<B>>(x).ok().map(|p| Tensor::from_primitive(TensorPrimitive::Float(p)))
}

/// Registers each gradient of a two-parent operation with its parent, where the parent is tracked (`Some`) and the
/// gradient was computed.
pub(crate) fn register_parents<BK: Backend>(grads: &mut Gradients, parents: [Option<NodeId>; 2], values: [Option<FloatTensor<BK>>; 2]) {
    for (node, value) in parents.into_iter().zip(values) {
        if let (Some(node), Some(value)) = (node, value) {
            grads.register::<BK>(node, value);
        }
    }
}
