//! Weights made with PyTorch, torchvision and MONAI (`fixtures/transfer/make_reference.py`) load into the networks
//! and give PyTorch's outputs; torchvision's full-size names and shapes are covered; two `.pth` files shipped in
//! PyPI packages read as PyTorch reads them; exports round-trip.
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use vesalius_nets::transfer::{
    LoadReport, Naming, TransferError, WeightFile, detect_naming, external_parameters, load_weights, to_safetensors,
};
use vesalius_nets::{AlexNetConfig, GoogLeNetConfig, NormKind, ResNetConfig, ResNetDepth, UNet, UNetConfig, VggConfig, VggDepth};

type B = burn::backend::Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/transfer").join(name)
}

fn expected() -> WeightFile {
    WeightFile::open(&fixture("expected.safetensors")).expect("expected outputs")
}

fn tensor<const D: usize>(file: &WeightFile, name: &str) -> Tensor<B, D> {
    let shape = file.shape(name).expect(name);
    Tensor::from_data(TensorData::new(file.values(name).expect(name), shape), &Default::default())
}

fn max_abs_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

fn resnet(depth: ResNetDepth, width: usize, classes: usize) -> vesalius_nets::ResNet<B> {
    ResNetConfig::new(depth, 3, classes).with_input_size(64).with_width(width).init(&Default::default())
}

fn basic_unet(dims: usize, f: usize) -> UNetConfig {
    UNetConfig::new(dims, 1, 3, vec![f, f, 2 * f, 4 * f, 8 * f]).with_norm(NormKind::Instance).with_conv_bias(true).with_negative_slope(0.1)
}

#[test]
fn torchvision_resnets_give_pytorch_outputs() {
    let _turn = crate::take_turn();
    let want = expected();
    for (name, depth, width, params) in [("resnet18_w4", ResNetDepth::ResNet18, 4, 122), ("resnet50_w2", ResNetDepth::ResNet50, 2, 320)] {
        let file = WeightFile::open(&fixture(&format!("{name}.pth"))).expect("pth");
        assert_eq!(file.len(), params, "{name}: torchvision's state-dict size");
        let net = resnet(depth, width, 5);
        let layout = net.layout();
        assert_eq!(detect_naming::<B, _>(&net, &layout, &file, &[]).0, Naming::Torchvision);
        let (net, report) = load_weights(net, &layout, &file, Naming::Torchvision, &[]).expect(name);
        let counters = report.unused.iter().filter(|n| n.ends_with("num_batches_tracked")).count();
        assert_eq!(report.unused.len(), counters, "{name}: only the batch counters are unused: {:?}", report.unused);
        assert_eq!(report.loaded + counters, params);
        let y = net.forward(tensor(&want, &format!("{name}.input")));
        let diff = max_abs_diff(y, tensor(&want, &format!("{name}.output")));
        assert!(diff <= 1e-5, "{name}: max |Δ| {diff}");
    }
}

#[test]
fn monai_basic_unets_give_pytorch_outputs() {
    let _turn = crate::take_turn();
    let want = expected();
    for (name, file, dims, f) in [("basicunet_2d", "basicunet_2d.pth", 2, 4), ("basicunet_3d", "basicunet_3d.safetensors", 3, 2)] {
        let file = WeightFile::open(&fixture(file)).expect("weights");
        let net: UNet<B> = basic_unet(dims, f).init(&Default::default());
        let layout = net.layout();
        assert_eq!(detect_naming::<B, _>(&net, &layout, &file, &[]).0, Naming::Monai);
        let (net, report) = load_weights(net, &layout, &file, Naming::Monai, &[]).expect(name);
        assert!(report.unused.is_empty() && report.kept.is_empty(), "{name}: {report:?}");
        assert_eq!(report.loaded, file.len());
        let (input, output) = (format!("{name}.input"), format!("{name}.output"));
        let diff = if dims == 2 {
            max_abs_diff(net.forward_2d(tensor::<4>(&want, &input)), tensor::<4>(&want, &output))
        } else {
            max_abs_diff(net.forward(tensor::<5>(&want, &input)), tensor::<5>(&want, &output))
        };
        assert!(diff <= 1e-5, "{name}: max |Δ| {diff}");
    }
}

#[test]
fn torchvision_full_size_names_and_shapes_are_covered() {
    let _turn = crate::take_turn();
    let text = std::fs::read_to_string(fixture("torchvision_keys.json")).expect("keys");
    let keys: serde_json::Value = serde_json::from_str(&text).expect("json");
    let device = Default::default();
    let check = |name: &str, ours: Vec<(String, Vec<usize>)>| {
        let mut theirs: Vec<(String, Vec<usize>)> = keys[name]
            .as_array()
            .expect(name)
            .iter()
            .map(|kv| {
                let shape = kv[1].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
                (kv[0].as_str().expect("name").to_string(), shape)
            })
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .collect();
        let mut ours = ours;
        theirs.sort();
        ours.sort();
        assert!(theirs.len() > 10, "{name}");
        assert_eq!(ours, theirs, "{name}");
    };
    let (c, k) = (3, 1000);
    let net = AlexNetConfig::new(c, k).init::<B>(&device);
    check("alexnet", external_parameters::<B, _>(&net, &net.layout(), Naming::Torchvision).expect("alexnet"));
    drop(net);
    for (name, depth, bn) in [
        ("vgg11", VggDepth::Vgg11, false),
        ("vgg11_bn", VggDepth::Vgg11, true),
        ("vgg16", VggDepth::Vgg16, false),
        ("vgg16_bn", VggDepth::Vgg16, true),
    ] {
        let net = VggConfig::new(depth, c, k).with_batch_norm(bn).init::<B>(&device);
        check(name, external_parameters::<B, _>(&net, &net.layout(), Naming::Torchvision).expect(name));
    }
    let net = GoogLeNetConfig::new(c, k).init::<B>(&device);
    check("googlenet", external_parameters::<B, _>(&net, &net.layout(), Naming::Torchvision).expect("googlenet"));
    for (name, depth) in [("resnet18", ResNetDepth::ResNet18), ("resnet34", ResNetDepth::ResNet34), ("resnet50", ResNetDepth::ResNet50)] {
        let net = ResNetConfig::new(depth, c, k).init::<B>(&device);
        check(name, external_parameters::<B, _>(&net, &net.layout(), Naming::Torchvision).expect(name));
    }
}

#[test]
fn third_party_pth_files_read_as_pytorch_reads_them() {
    let _turn = crate::take_turn();
    let text = std::fs::read_to_string(fixture("third_party.json")).expect("reference");
    let reference: serde_json::Value = serde_json::from_str(&text).expect("json");
    for file_name in ["lpips_alex.pth", "facenet_pnet.pt"] {
        let file = WeightFile::open(&fixture(file_name)).expect(file_name);
        let want = reference[file_name].as_object().expect(file_name);
        assert_eq!(file.len(), want.len(), "{file_name}");
        for (name, w) in want {
            let shape: Vec<usize> = w["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
            assert_eq!(file.shape(name), Some(shape), "{file_name}: {name}");
            let values = file.values(name).expect(name);
            let sum: f64 = values.iter().map(|&v| v as f64).sum();
            let want_sum = w["sum"].as_f64().expect("sum");
            assert!((sum - want_sum).abs() <= 1e-5 * want_sum.abs().max(1.0), "{file_name}: {name}: sum {sum} vs {want_sum}");
            for (i, first) in w["first"].as_array().expect("first").iter().enumerate() {
                assert_eq!(values[i], first.as_f64().expect("value") as f32, "{file_name}: {name}[{i}]");
            }
        }
    }
}

#[test]
fn partial_loading_keeps_a_new_head_and_shape_errors_name_the_layer() {
    let _turn = crate::take_turn();
    let file = WeightFile::open(&fixture("resnet18_w4.pth")).expect("pth");
    // Seven classes instead of five: the head keeps its own weights, the backbone is PyTorch's.
    let net = resnet(ResNetDepth::ResNet18, 4, 7);
    let layout = net.layout();
    let err = load_weights(net, &layout, &file, Naming::Torchvision, &[]).expect_err("the head's shape differs");
    match &err {
        TransferError::Shape { name, layer, found, expected, .. } => {
            assert_eq!((name.as_str(), layer.as_str()), ("fc.weight", "fc.weight"));
            assert_eq!((found.clone(), expected.clone()), (vec![5, 32], vec![7, 32]));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("resnet18_w4.pth"), "{err}");
    let (net, report) =
        load_weights(resnet(ResNetDepth::ResNet18, 4, 7), &layout, &file, Naming::Torchvision, &["fc".to_string()]).expect("partial");
    assert_eq!(report.kept, vec!["fc.weight".to_string(), "fc.bias".to_string()]);
    assert!(report.unused.contains(&"fc.weight".to_string()));
    let (full, _) = load_weights(resnet(ResNetDepth::ResNet18, 4, 5), &layout, &file, Naming::Torchvision, &[]).expect("full");
    let x = tensor::<4>(&expected(), "resnet18_w4.input");
    assert_eq!(max_abs_diff(net.features(x.clone()), full.features(x)), 0.0);

    // A wider network: the first mismatch is the stem.
    let wide = resnet(ResNetDepth::ResNet18, 8, 5);
    let err = load_weights(wide, &layout, &file, Naming::Torchvision, &[]).expect_err("widths differ");
    assert!(matches!(&err, TransferError::Shape { name, layer, .. } if name == "conv1.weight" && layer == "stem.conv.weight"), "{err}");
    // A name that is no layer.
    let err = load_weights(resnet(ResNetDepth::ResNet18, 4, 7), &layout, &file, Naming::Torchvision, &["head".to_string()])
        .expect_err("no layer");
    assert!(matches!(err, TransferError::UnknownLayer(..)), "{err}");
    // A U-Net file in a ResNet: the first parameter is missing.
    let unet = WeightFile::open(&fixture("basicunet_2d.pth")).expect("pth");
    let err = load_weights(resnet(ResNetDepth::ResNet18, 4, 5), &layout, &unet, Naming::Torchvision, &[]).expect_err("missing");
    assert!(matches!(&err, TransferError::Missing { name, .. } if name == "conv1.weight"), "{err}");
}

#[test]
fn a_unet_without_biases_refuses_monai_weights() {
    let _turn = crate::take_turn();
    let file = WeightFile::open(&fixture("basicunet_2d.pth")).expect("pth");
    let net: UNet<B> = basic_unet(2, 4).with_conv_bias(false).init(&Default::default());
    let layout = net.layout();
    let err = load_weights(net, &layout, &file, Naming::Monai, &[]).expect_err("biases left over");
    assert!(err.to_string().contains(".conv.bias"), "{err}");
    let residual: UNet<B> = basic_unet(2, 4).with_residual(true).init(&Default::default());
    let layout = residual.layout();
    let err = load_weights(residual, &layout, &file, Naming::Monai, &[]).expect_err("no residual BasicUNet");
    assert!(matches!(err, TransferError::Naming(_)), "{err}");
}

#[test]
fn unreadable_files_are_named() {
    let _turn = crate::take_turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("broken.pth");
    std::fs::write(&bad, b"not a pickle").expect("write");
    let err = WeightFile::open(&bad).expect_err("garbage");
    assert!(err.to_string().contains("broken.pth"), "{err}");
    let bad = dir.path().join("broken.safetensors");
    std::fs::write(&bad, [255u8; 16]).expect("write");
    let err = WeightFile::open(&bad).expect_err("garbage");
    assert!(err.to_string().contains("broken.safetensors"), "{err}");
    assert!(WeightFile::open(&dir.path().join("absent.pth")).is_err());
    // A header claiming more data than the file holds is refused before anything is allocated for it.
    let hostile = WeightFile::open(&fixture("hostile_shape.pth")).expect("the header parses");
    assert_eq!(hostile.shape("conv1.weight"), Some(vec![1 << 28, 3, 7, 7]));
    let err = hostile.values("conv1.weight").expect_err("too large");
    assert!(err.to_string().contains("more data than the file"), "{err}");
    let net = resnet(ResNetDepth::ResNet18, 4, 5);
    let layout = net.layout();
    let err = load_weights(net, &layout, &hostile, Naming::Torchvision, &[]).expect_err("shape differs");
    assert!(matches!(err, TransferError::Shape { .. }), "{err}");
}

fn same_tensors(a: &WeightFile, b: &WeightFile) {
    assert_eq!(a.tensors(), b.tensors());
    for (name, _) in a.tensors() {
        assert_eq!(a.values(&name).expect("a"), b.values(&name).expect("b"), "{name}");
    }
}

#[test]
fn exports_round_trip_under_pytorch_names() {
    let _turn = crate::take_turn();
    let file = WeightFile::open(&fixture("resnet18_w4.pth")).expect("pth");
    let net = resnet(ResNetDepth::ResNet18, 4, 5);
    let layout = net.layout();
    let (net, _): (_, LoadReport) = load_weights(net, &layout, &file, Naming::Torchvision, &[]).expect("load");
    let bytes = to_safetensors(&net, &layout, Naming::Torchvision).expect("export");
    let exported = WeightFile::from_safetensors_bytes("resnet.safetensors", bytes).expect("read back");
    // Every tensor of torchvision's state dict, batch counters (zero) included, with PyTorch's values and layouts.
    assert_eq!(exported.tensors(), file.tensors());
    for (name, _) in file.tensors().into_iter().filter(|(n, _)| !n.ends_with("num_batches_tracked")) {
        assert_eq!(exported.values(&name).expect("exported"), file.values(&name).expect("file"), "{name}");
    }
    let unet_file = WeightFile::open(&fixture("basicunet_3d.safetensors")).expect("safetensors");
    let unet: UNet<B> = basic_unet(3, 2).init(&Default::default());
    let layout = unet.layout();
    let (unet, _) = load_weights(unet, &layout, &unet_file, Naming::Monai, &[]).expect("load");
    let bytes = to_safetensors(&unet, &layout, Naming::Monai).expect("export");
    same_tensors(&WeightFile::from_safetensors_bytes("unet.safetensors", bytes).expect("read back"), &unet_file);
    // Vesalius names round-trip too.
    let bytes = to_safetensors(&unet, &layout, Naming::Vesalius).expect("export");
    let own = WeightFile::from_safetensors_bytes("own.safetensors", bytes).expect("read back");
    let fresh: UNet<B> = basic_unet(3, 2).init(&Default::default());
    assert_eq!(detect_naming::<B, _>(&fresh, &layout, &own, &[]).0, Naming::Vesalius);
    let (fresh, _) = load_weights(fresh, &layout, &own, Naming::Vesalius, &[]).expect("own names");
    let x = tensor::<5>(&expected(), "basicunet_3d.input");
    assert_eq!(max_abs_diff(fresh.forward(x.clone()), unet.forward(x)), 0.0);
}

#[test]
fn a_grey_network_takes_a_colour_networks_first_convolution_summed() {
    let _turn = crate::take_turn();
    let file = WeightFile::open(&fixture("resnet18_w4.pth")).expect("pth");
    let colour = resnet(ResNetDepth::ResNet18, 4, 5);
    let layout = colour.layout();
    let (colour, _) = load_weights(colour, &layout, &file, Naming::Torchvision, &[]).expect("colour");
    let grey = ResNetConfig::new(ResNetDepth::ResNet18, 1, 5).with_input_size(64).with_width(4).init::<B>(&Default::default());
    let (grey, report) = load_weights(grey, &layout, &file, Naming::Torchvision, &[]).expect("grey");
    assert_eq!(report.adapted, vec!["stem.conv.weight: 1 input channels from the file's 3".to_string()]);
    // A grey image is the colour network's input with three equal channels.
    let x = tensor::<4>(&expected(), "resnet18_w4.input").narrow(1, 0, 1);
    let diff = max_abs_diff(grey.forward(x.clone()), colour.forward(Tensor::cat(vec![x.clone(), x.clone(), x], 1)));
    assert!(diff <= 1e-4, "max |Δ| {diff}");
    // Summed for one channel; repeated and scaled by 3 / 2 for two.
    let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    assert_eq!(vesalius_nets::transfer::adapt_input_channels(&values, &[2, 3, 1, 1], 1), vec![6.0, 15.0]);
    assert_eq!(vesalius_nets::transfer::adapt_input_channels(&values, &[1, 3, 1, 2], 2), vec![1.5, 3.0, 4.5, 6.0]);
}
