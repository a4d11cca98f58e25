//! Every convolutional classifier split at each of its layers gives the same logits as the whole network (the
//! split Grad-CAM uses). In its own test binary: it draws from burn's process-wide generator.
#![allow(clippy::unwrap_used)]
use burn::tensor::{Distribution, Tensor};
use vesalius_nets::{Arch, ClassifierConfig};

#[cfg(not(any(feature = "test-cuda", feature = "test-wgpu")))]
type B = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type B = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type B = burn::backend::Wgpu;

#[test]
fn every_cam_layer_splits_the_forward_pass_exactly() {
    let _turn = crate::take_turn();
    let device = Default::default();
    for arch in [Arch::LeNet5, Arch::AlexNet, Arch::Vgg11, Arch::GoogLeNet, Arch::ResNet18] {
        let model = ClassifierConfig::new(arch, 2, 3, 32).init::<B>(&device).unwrap();
        let x = Tensor::<B, 4>::random([2, 2, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let full: Vec<f32> = model.forward(x.clone()).into_data().to_vec().unwrap();
        assert!(model.cam_layers() >= 2, "{arch:?}");
        for l in 0..model.cam_layers() {
            let a = model.forward_to(x.clone(), l).unwrap();
            let split: Vec<f32> = model.forward_from(a, l).unwrap().into_data().to_vec().unwrap();
            for (p, q) in full.iter().zip(&split) {
                assert!((p - q).abs() <= 1e-4 * p.abs().max(1.0), "{arch:?} layer {l}: {p} vs {q}");
            }
        }
    }
    let mlp = ClassifierConfig::new(Arch::Mlp, 1, 2, 28).init::<B>(&device).unwrap();
    assert_eq!(mlp.cam_layers(), 0);
    assert!(mlp.forward_to(Tensor::zeros([1, 1, 28, 28], &device), 0).is_none());
}
