//! Shapes, parameter counts (against torchvision and the reference workloads) and one optimiser step per network.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use vesalius_nets::{Arch, ClassifierConfig, ConfigError};

#[cfg(not(any(feature = "test-cuda", feature = "test-wgpu")))]
type B = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type B = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type B = burn::backend::Wgpu;
type AB = Autodiff<B>;

fn params(arch: Arch, c: usize, k: usize, s: usize) -> usize {
    let _guard = crate::take_turn();
    ClassifierConfig::new(arch, c, k, s).init::<B>(&Default::default()).expect("valid config").param_count()
}

#[test]
fn reference_workload_parameter_counts() {
    // ../shared/bench/WORKLOADS.md, workloads a and b.
    assert_eq!(params(Arch::LeNet5, 1, 9, 28), 61_621);
    assert_eq!(params(Arch::ResNet18, 3, 9, 28), 11_173_449);
}

#[test]
fn torchvision_parameter_counts_at_224() {
    // torchvision.models.*(num_classes=1000) parameter counts (GoogLeNet with aux_logits=False).
    assert_eq!(params(Arch::ResNet18, 3, 1000, 224), 11_689_512);
    assert_eq!(params(Arch::ResNet34, 3, 1000, 224), 21_797_672);
    assert_eq!(params(Arch::ResNet50, 3, 1000, 224), 25_557_032);
    assert_eq!(params(Arch::AlexNet, 3, 1000, 224), 61_100_840);
    assert_eq!(params(Arch::GoogLeNet, 3, 1000, 224), 6_624_904);
    assert_eq!(params(Arch::Vgg11, 3, 1000, 224), 132_863_336);
    assert_eq!(params(Arch::Vgg16, 3, 1000, 224), 138_357_544);
}

#[test]
fn invalid_configurations_are_rejected() {
    let d = Default::default();
    assert_eq!(ClassifierConfig::new(Arch::LeNet5, 1, 2, 8).init::<B>(&d).err(), Some(ConfigError::InputSize(8)));
    assert_eq!(ClassifierConfig::new(Arch::LeNet5, 0, 2, 28).init::<B>(&d).err(), Some(ConfigError::Zero("in_channels")));
    assert_eq!(ClassifierConfig::new(Arch::ResNet18, 1, 0, 28).init::<B>(&d).err(), Some(ConfigError::Zero("classes")));
}

#[test]
fn arch_names_in_recipes() {
    let a: Arch = serde_json::from_str("\"resnet18\"").expect("known name");
    assert_eq!(a, Arch::ResNet18);
    assert_eq!(serde_json::to_string(&Arch::GoogLeNet).expect("serialise"), "\"googlenet\"");
}

/// Output shape, and one SGD step on a fixed batch lowers the training loss (same dropout masks both times).
fn check_step(arch: Arch, channels: usize, size: usize, lr: f64) {
    let _guard = crate::take_turn();
    let device = Default::default();
    let classes = 3;
    let batch = 4;
    AB::seed(&device, 7);
    let mut net = ClassifierConfig::new(arch, channels, classes, size).init::<AB>(&device).expect("valid config");
    let x = Tensor::<AB, 4>::random([batch, channels, size, size], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<AB, 1, Int>::from_data(TensorData::from([0i64, 1, 2, 1]), &device);
    let loss_of = |net: &vesalius_nets::Classifier<AB>| {
        AB::seed(&device, 11);
        let logits = net.forward(x.clone());
        assert_eq!(logits.dims(), [batch, classes], "{arch:?} output shape");
        burn::nn::loss::CrossEntropyLossConfig::new().init(&device).forward(logits, y.clone())
    };
    // The first random draw after seeding differs from later ones on some backends: warm up once.
    let _ = loss_of(&net);
    let loss = loss_of(&net);
    let before: f32 = loss.clone().into_scalar();
    let grads = GradientsParams::from_grads(loss.backward(), &net);
    let mut optim = SgdConfig::new().init();
    net = optim.step(lr, net, grads);
    let after: f32 = loss_of(&net).into_scalar();
    assert!(after < before, "{arch:?} at {size}: loss {before} -> {after}");
    // Inference on the inner backend has the same shape.
    let inner = net.valid();
    let xi = Tensor::<B, 4>::zeros([2, channels, size, size], &device);
    assert_eq!(inner.forward(xi).dims(), [2, classes]);
}

#[test]
fn mlp_step() {
    check_step(Arch::Mlp, 1, 28, 0.05);
}

#[test]
fn lenet5_step() {
    check_step(Arch::LeNet5, 1, 28, 0.05);
    check_step(Arch::LeNet5, 3, 64, 0.05);
}

#[test]
fn alexnet_step() {
    check_step(Arch::AlexNet, 1, 28, 1e-3);
    check_step(Arch::AlexNet, 3, 64, 1e-3);
}

#[test]
fn vgg11_step() {
    check_step(Arch::Vgg11, 1, 32, 1e-3);
}

#[test]
fn vgg16_step() {
    check_step(Arch::Vgg16, 3, 28, 1e-3);
}

#[test]
fn googlenet_step() {
    check_step(Arch::GoogLeNet, 1, 28, 0.01);
    check_step(Arch::GoogLeNet, 3, 64, 0.01);
}

#[test]
fn resnet18_step() {
    check_step(Arch::ResNet18, 3, 28, 0.01);
    check_step(Arch::ResNet18, 1, 64, 0.01);
}

#[test]
fn resnet34_step() {
    check_step(Arch::ResNet34, 1, 28, 0.01);
}

#[test]
fn resnet50_step() {
    check_step(Arch::ResNet50, 1, 32, 0.001);
}

#[test]
fn sae_step() {
    check_step(Arch::Sae, 1, 28, 0.05);
}
