//! Weights from and for PyTorch: reading `.pt`/`.pth` files (zip or legacy pickle) and safetensors files, mapping
//! torchvision's and MONAI's parameter names onto this crate's networks, checking every shape, loading a whole
//! network or part of it, and exporting a network to safetensors under those names so that PyTorch loads it.
//!
//! A network describes its structure as a [`Layout`] ([`Classifier::layout`](crate::Classifier::layout),
//! [`UNet::layout`](crate::UNet::layout)); a [`Naming`] says whose parameter names a file uses. Loading goes through
//! the network's own parameters in order: each is translated to the file's name, looked up, its shape checked
//! (the first missing tensor or mismatched shape is the error, naming both names), converted (PyTorch stores a
//! linear layer's weight as `[out, in]`, burn as `[in, out]`; normalisation scale and shift are `weight` and `bias`
//! in PyTorch) and set. Layers named in `skip` keep their own weights (a new classification head, say).
//!
//! ```
//! use burn::module::Module;
//! use burn::tensor::{Distribution, Tensor};
//! use vesalius_nets::transfer::{Naming, WeightFile, load_weights, to_safetensors};
//! use vesalius_nets::{ResNetConfig, ResNetDepth};
//! type B = burn::backend::Flex;
//!
//! let device = Default::default();
//! let config = ResNetConfig::new(ResNetDepth::ResNet18, 3, 4).with_input_size(64).with_width(4);
//! let a = config.init::<B>(&device);
//! let layout = a.layout();
//! // Exported under torchvision's names (`conv1.weight`, `layer1.0.bn1.running_mean`, `fc.weight`, …) …
//! let bytes = to_safetensors(&a, &layout, Naming::Torchvision).unwrap();
//! let file = WeightFile::from_safetensors_bytes("resnet.safetensors", bytes).unwrap();
//! assert!(file.shape("layer4.1.conv2.weight").is_some());
//! // … and loaded back into a network with other random weights: the same outputs.
//! let (b, report) = load_weights(config.init::<B>(&device), &layout, &file, Naming::Torchvision, &[]).unwrap();
//! assert_eq!(report.loaded, 122 - 20); // torchvision's 122 names less the 20 `num_batches_tracked` counters
//! let x = Tensor::<B, 4>::random([1, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
//! let diff = (a.forward(x.clone()) - b.forward(x)).abs().max().into_scalar();
//! assert_eq!(diff, 0.0);
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use burn_store::pytorch::PytorchReader;
use burn_store::{ModuleSnapshot, ModuleStore, SafetensorsStore, TensorSnapshot};
use serde::{Deserialize, Serialize};

/// Whose parameter names a weight file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    /// This crate's own module paths (`blocks.3.c1.conv.weight`); files keep PyTorch's tensor layouts under every
    /// naming (a linear weight is `[out, in]`).
    Vesalius,
    /// torchvision's `state_dict` names for AlexNet, VGG (with or without batch norm), GoogLeNet and ResNet.
    Torchvision,
    /// MONAI's `BasicUNet` names (`conv_0.conv_0.conv.weight`, `down_1.convs…`, `upcat_4.upsample.deconv…`).
    Monai,
}

impl Naming {
    /// Every naming, in the order [`detect_naming`] tries them.
    pub const ALL: [Naming; 3] = [Naming::Vesalius, Naming::Torchvision, Naming::Monai];
}

/// The structure of a network, as far as parameter names depend on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A ResNet with these blocks per stage.
    ResNet {
        /// Blocks in each of the four stages.
        layers: [usize; 4],
    },
    /// A VGG with these convolutions per block.
    Vgg {
        /// Convolutions in each of the five blocks.
        blocks: Vec<usize>,
        /// Batch normalisation after each convolution.
        batch_norm: bool,
    },
    /// AlexNet.
    AlexNet,
    /// GoogLeNet (Inception v1) without auxiliary heads.
    GoogLeNet,
    /// A U-Net with this many levels.
    UNet {
        /// Levels (the length of its channel list).
        levels: usize,
        /// Residual blocks (with projection shortcuts, which MONAI's `BasicUNet` lacks).
        residual: bool,
        /// Auxiliary deep-supervision heads (which MONAI's `BasicUNet` lacks).
        deep_supervision: bool,
    },
    /// A network with no foreign naming (only [`Naming::Vesalius`] applies).
    Own(&'static str),
}

/// Why weights cannot be read, mapped or loaded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TransferError {
    /// The file cannot be read as a weight file.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The naming does not apply to the network.
    #[error("{0}")]
    Naming(String),
    /// A parameter of the network has no tensor in the file.
    #[error("{}: no tensor `{name}` for layer `{layer}` ({naming:?} names; the file holds {count} tensors, the first being {first})", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// The name looked for.
        name: String,
        /// The network's parameter.
        layer: String,
        /// The naming used.
        naming: Naming,
        /// Tensors in the file.
        count: usize,
        /// The file's first few names.
        first: String,
    },
    /// A tensor's shape differs from the parameter's.
    #[error("{}: `{name}` has shape {found:?} but layer `{layer}` needs {expected:?}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The file's name of the tensor.
        name: String,
        /// The network's parameter.
        layer: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the parameter needs (in the file's convention).
        expected: Vec<usize>,
    },
    /// A name in `skip` matches no layer.
    #[error("no layer is named `{0}` (layers: {1})")]
    UnknownLayer(String, String),
}

/// The tensors of a weight file, by name.
pub struct WeightFile {
    path: PathBuf,
    tensors: BTreeMap<String, TensorSnapshot>,
    /// Bytes of the file: no tensor's data can be larger, whatever its header claims.
    size: u64,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

/// Keys under which training scripts commonly nest a state dict.
const WRAPPERS: [&str; 6] = ["state_dict", "model_state_dict", "model", "network_weights", "net", "module"];

impl WeightFile {
    /// Reads a safetensors file (`.safetensors`) or a PyTorch file (anything else: `.pt`, `.pth`, `.bin`, `.ckpt`,
    /// in the zip or the legacy pickle format). A state dict nested under one of the usual keys (`state_dict`,
    /// `model`, `network_weights`, …) or saved from `DataParallel` (`module.` prefixes) is unwrapped.
    pub fn open(path: &Path) -> Result<Self, TransferError> {
        let fail = |message: String| TransferError::File { path: path.to_path_buf(), message };
        if !path.is_file() {
            return Err(fail("no such file".into()));
        }
        let safetensors = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let tensors: BTreeMap<String, TensorSnapshot> = if safetensors {
            let mut store = SafetensorsStore::from_file(path);
            store.get_all_snapshots().map_err(|e| fail(format!("not a readable safetensors file: {e}")))?.clone()
        } else {
            let reader = PytorchReader::new(path).map_err(|e| fail(format!("not a readable PyTorch file: {e}")))?;
            reader.into_tensors().into_iter().collect()
        };
        let size = std::fs::metadata(path).map(|m| m.len()).map_err(|e| fail(e.to_string()))?;
        Self::from_tensors(path, tensors, size)
    }

    /// Reads safetensors bytes (`name` stands for the file in messages).
    pub fn from_safetensors_bytes(name: &str, bytes: Vec<u8>) -> Result<Self, TransferError> {
        let path = PathBuf::from(name);
        let size = bytes.len() as u64;
        let mut store = SafetensorsStore::from_bytes(Some(bytes));
        let tensors = store
            .get_all_snapshots()
            .map_err(|e| TransferError::File { path: path.clone(), message: format!("not readable safetensors: {e}") })?
            .clone();
        Self::from_tensors(&path, tensors, size)
    }

    fn from_tensors(path: &Path, mut tensors: BTreeMap<String, TensorSnapshot>, size: u64) -> Result<Self, TransferError> {
        if tensors.is_empty() {
            return Err(TransferError::File { path: path.to_path_buf(), message: "the file holds no tensors".into() });
        }
        // Unwrap one level of nesting at a time while every name shares a wrapper prefix.
        loop {
            let first = tensors.keys().next().and_then(|k| k.split('.').next()).unwrap_or_default().to_string();
            if !WRAPPERS.contains(&first.as_str()) {
                break;
            }
            let prefix = format!("{first}.");
            if !tensors.keys().all(|k| k.starts_with(&prefix)) {
                break;
            }
            tensors = tensors.into_iter().map(|(k, v)| (k[prefix.len()..].to_string(), v)).collect();
        }
        Ok(Self { path: path.to_path_buf(), tensors, size })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names and shapes of every tensor, in name order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.tensors.iter().map(|(k, v)| (k.clone(), v.shape.to_vec())).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensors (never true for an opened file).
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.to_vec())
    }

    /// Tensor `name` as `f32` values in row-major order (any float or integer type is converted).
    pub fn values(&self, name: &str) -> Result<Vec<f32>, TransferError> {
        let data = self.data(name)?;
        data.convert_dtype(DType::F32).to_vec::<f32>().map_err(|e| self.fail(format!("`{name}`: {e:?}")))
    }

    fn data(&self, name: &str) -> Result<TensorData, TransferError> {
        let snapshot = self.tensors.get(name).ok_or_else(|| self.fail(format!("no tensor `{name}`")))?;
        let bytes = snapshot.shape.iter().try_fold(snapshot.dtype.size() as u64, |a, &d| a.checked_mul(d as u64));
        if bytes.is_none_or(|b| b > self.size) {
            return Err(self.fail(format!(
                "`{name}` claims shape {:?}, more data than the file's {} bytes",
                snapshot.shape.to_vec(),
                self.size
            )));
        }
        snapshot.to_data().map_err(|e| self.fail(format!("`{name}` cannot be read: {e:?}")))
    }

    fn fail(&self, message: String) -> TransferError {
        TransferError::File { path: self.path.clone(), message }
    }
}

/// What [`load_weights`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Parameters set from the file.
    pub loaded: usize,
    /// The network's parameters left as they were (the layers in `skip`).
    pub kept: Vec<String>,
    /// The file's tensors no parameter used (auxiliary heads, `num_batches_tracked` counters, skipped layers).
    pub unused: Vec<String>,
    /// Parameters converted on the way: the first convolution's weights for another number of input channels.
    pub adapted: Vec<String>,
}

/// A first convolution's weights `[out, c_file, k…]` for `channels` input channels, as timm's `adapt_input_conv`
/// does: summed over the file's channels for one channel (a grey image seen as equal R, G and B gives the same
/// response); otherwise the file's channels repeated cyclically and scaled by `c_file / channels`.
/// A shape of fewer than two axes, or values that do not fill it, is returned unchanged.
pub fn adapt_input_channels(values: &[f32], shape: &[usize], channels: usize) -> Vec<f32> {
    let [out, c_file, ..] = *shape else { return values.to_vec() };
    if values.len() != shape.iter().product::<usize>() || c_file == 0 {
        return values.to_vec();
    }
    let k: usize = shape[2..].iter().product();
    let mut adapted = vec![0f32; out * channels * k];
    for o in 0..out {
        for c in 0..channels {
            for i in 0..k {
                adapted[(o * channels + c) * k + i] = if channels == 1 {
                    (0..c_file).map(|cf| values[(o * c_file + cf) * k + i]).sum()
                } else {
                    values[(o * c_file + c % c_file) * k + i] * c_file as f32 / channels as f32
                };
            }
        }
    }
    adapted
}

/// The network's parameter paths (module paths without enum variants, as [`to_safetensors`] writes them under
/// [`Naming::Vesalius`]) with their shapes, in the network's order.
pub fn parameter_names<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    module.collect(None, None, true).iter().map(|s| (s.full_path(), s.shape.to_vec())).collect()
}

/// The network's parameter paths (as [`parameter_names`]) with their parameter ids, in the network's order.
pub fn parameter_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, burn::module::ParamId)> {
    module.collect(None, None, true).iter().map(|s| (s.full_path(), s.tensor_id.unwrap_or_default())).collect()
}

/// The layer groups of a network, in order: a parameter path's first component, or its first two when the second
/// is an index (`stem`, `blocks.0`, …, `blocks.7`, `fc` for a ResNet; `enc.0`, …, `head` for a U-Net). Freezing
/// "the first N groups" counts these.
pub fn layer_groups<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for (path, _) in parameter_names(module) {
        let parts: Vec<&str> = path.split('.').collect();
        let group = match parts.as_slice() {
            [a, b, _, ..] if b.parse::<usize>().is_ok() => format!("{a}.{b}"),
            [a, ..] => a.to_string(),
            [] => continue,
        };
        if groups.last() != Some(&group) {
            groups.push(group);
        }
    }
    groups
}

/// The network's parameters under `naming`'s names, with their shapes as files hold them (linear weights
/// `[out, in]`, PyTorch's layout, under every naming), in the network's order.
pub fn external_parameters<B: Backend, M: Module<B>>(
    module: &M,
    layout: &Layout,
    naming: Naming,
) -> Result<Vec<(String, Vec<usize>)>, TransferError> {
    module.collect(None, None, true).iter().map(|s| Ok((external_name(layout, naming, &s.full_path())?, file_shape(s)))).collect()
}

/// Whether `path` lies in layer `layer`: equal to it or below it at a `.` boundary.
pub fn in_layer(path: &str, layer: &str) -> bool {
    path == layer || (path.starts_with(layer) && path.as_bytes().get(layer.len()) == Some(&b'.'))
}

/// Checks that every name in `layers` is a layer (a prefix of some parameter path at a `.` boundary).
pub fn check_layers(paths: &[String], layers: &[String]) -> Result<(), TransferError> {
    for layer in layers {
        if !paths.iter().any(|p| in_layer(p, layer)) {
            let mut tops: Vec<&str> = paths.iter().filter_map(|p| p.split('.').next()).collect();
            tops.dedup();
            return Err(TransferError::UnknownLayer(layer.clone(), tops.join(", ")));
        }
    }
    Ok(())
}

/// Whether a parameter is stored transposed under PyTorch namings (burn keeps a linear weight as `[in, out]`).
fn is_linear_weight(s: &TensorSnapshot) -> bool {
    s.module_type().as_deref() == Some("Struct:Linear") && s.shape.len() == 2 && s.full_path().ends_with(".weight")
}

/// A row-major `rows × cols` matrix transposed (`cols × rows`).
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = values[r * cols + c];
        }
    }
    t
}

/// A snapshot of `data` at the place of the network's parameter `s`.
fn with_data(s: &TensorSnapshot, data: TensorData) -> TensorSnapshot {
    TensorSnapshot::from_data(
        data,
        s.path_stack.clone().unwrap_or_default(),
        s.container_stack.clone().unwrap_or_default(),
        s.tensor_id.unwrap_or_default(),
    )
}

/// Shape in PyTorch's convention (a linear weight transposed).
fn file_shape(s: &TensorSnapshot) -> Vec<usize> {
    let mut shape = s.shape.to_vec();
    if is_linear_weight(s) {
        shape.reverse();
    }
    shape
}

/// Loads the weights of `file` (names in `naming`) into `module` (structure `layout`), except the layers in
/// `skip`, which keep their weights. Every other parameter must be in the file with its shape.
pub fn load_weights<B: Backend, M: Module<B>>(
    mut module: M,
    layout: &Layout,
    file: &WeightFile,
    naming: Naming,
    skip: &[String],
) -> Result<(M, LoadReport), TransferError> {
    let ours = module.collect(None, None, true);
    let paths: Vec<String> = ours.iter().map(|s| s.full_path()).collect();
    check_layers(&paths, skip)?;
    let mut report = LoadReport::default();
    let mut used = std::collections::BTreeSet::new();
    let mut snapshots = Vec::new();
    for (s, path) in ours.iter().zip(&paths) {
        if skip.iter().any(|l| in_layer(path, l)) {
            report.kept.push(path.clone());
            continue;
        }
        let name = external_name(layout, naming, path)?;
        let Some(theirs) = file.tensors.get(&name) else {
            let first: Vec<&str> = file.tensors.keys().take(3).map(String::as_str).collect();
            return Err(TransferError::Missing {
                path: file.path.clone(),
                name,
                layer: path.clone(),
                naming,
                count: file.len(),
                first: first.join(", "),
            });
        };
        let expected = file_shape(s);
        let found = theirs.shape.to_vec();
        // The first convolution may take other input channels than the file's (grey images, an ImageNet network):
        // its weights are adapted as timm adapts them.
        let first_conv = ours.iter().position(|o| o.shape.len() >= 3).is_some_and(|i| ours[i].full_path() == *path);
        if first_conv
            && found.len() == expected.len()
            && found.len() >= 3
            && found[0] == expected[0]
            && found[2..] == expected[2..]
            && found[1] != expected[1]
        {
            let values = file.values(&name)?;
            let data = TensorData::new(adapt_input_channels(&values, &found, expected[1]), expected.clone()).convert_dtype(s.dtype);
            report.adapted.push(format!("{path}: {} input channels from the file's {}", expected[1], found[1]));
            used.insert(name);
            snapshots.push(with_data(s, data));
            continue;
        }
        if found != expected {
            return Err(TransferError::Shape {
                path: file.path.clone(),
                name,
                layer: path.clone(),
                found: theirs.shape.to_vec(),
                expected,
            });
        }
        let mut data = file.data(&name)?.convert_dtype(s.dtype);
        if is_linear_weight(s) {
            let values = data.clone().convert_dtype(DType::F32).to_vec::<f32>().map_err(|e| file.fail(format!("`{name}`: {e:?}")))?;
            let (rows, cols) = (expected[0], expected[1]);
            data = TensorData::new(transpose(&values, rows, cols), [cols, rows]).convert_dtype(s.dtype);
        }
        used.insert(name);
        snapshots.push(with_data(s, data));
    }
    report.loaded = snapshots.len();
    let result = module.apply(snapshots, None, None, true);
    if !result.errors.is_empty() || result.applied.len() != report.loaded {
        return Err(file.fail(format!("the weights could not all be set: {result}")));
    }
    report.unused = file.tensors.keys().filter(|k| !used.contains(*k)).cloned().collect();
    // A tensor of a layer whose other tensors were loaded means the layers differ (a bias the network lacks, say).
    let parent = |n: &str| n.rsplit_once('.').map(|(a, _)| a.to_string()).unwrap_or_default();
    let loaded_layers: std::collections::BTreeSet<String> = used.iter().map(|n| parent(n)).collect();
    if let Some(extra) = report.unused.iter().find(|n| !n.ends_with(".num_batches_tracked") && loaded_layers.contains(&parent(n))) {
        return Err(file.fail(format!(
            "`{extra}` belongs to a layer that was loaded but has no such parameter in the network (a bias or normalisation the network's configuration leaves out)"
        )));
    }
    Ok((module, report))
}

/// The naming under which `file` covers the most of the network's parameters (outside `skip`), with the number
/// covered; ties go to the earlier of [`Naming::ALL`].
pub fn detect_naming<B: Backend, M: Module<B>>(module: &M, layout: &Layout, file: &WeightFile, skip: &[String]) -> (Naming, usize) {
    let paths: Vec<String> = parameter_names(module).into_iter().map(|(p, _)| p).filter(|p| !skip.iter().any(|l| in_layer(p, l))).collect();
    let mut best = (Naming::Vesalius, 0);
    for naming in Naming::ALL {
        let covered = paths.iter().filter(|p| external_name(layout, naming, p).is_ok_and(|n| file.tensors.contains_key(&n))).count();
        if covered > best.1 {
            best = (naming, covered);
        }
    }
    best
}

/// The network's weights as a safetensors file under `naming`'s names (linear weights as `[out, in]`, normalisation
/// scale and shift as `weight` and `bias`, a zero `num_batches_tracked` beside each batch norm under PyTorch
/// namings), so that `model.load_state_dict(safetensors.torch.load_file(path))` loads it into the matching PyTorch
/// model.
pub fn to_safetensors<B: Backend, M: Module<B>>(module: &M, layout: &Layout, naming: Naming) -> Result<Vec<u8>, TransferError> {
    let mut tensors: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = Vec::new();
    let mut norms = std::collections::BTreeSet::new();
    for s in module.collect(None, None, true) {
        let path = s.full_path();
        let name = external_name(layout, naming, &path)?;
        let data = s.to_data().map_err(|e| TransferError::Naming(format!("`{path}` cannot be read: {e:?}")))?;
        let mut values = data.convert_dtype(DType::F32).to_vec::<f32>().map_err(|e| TransferError::Naming(format!("`{path}`: {e:?}")))?;
        let shape = file_shape(&s);
        if is_linear_weight(&s) {
            // Stored `[in, out]` = `[cols, rows]`; written `[rows, cols]`.
            values = transpose(&values, shape[1], shape[0]);
        }
        if naming != Naming::Vesalius
            && s.module_type().as_deref() == Some("Struct:BatchNorm")
            && let Some(prefix) = name.strip_suffix(".running_mean")
        {
            norms.insert(format!("{prefix}.num_batches_tracked"));
        }
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, shape, safetensors::Dtype::F32, bytes));
    }
    for name in norms {
        tensors.push((name, Vec::new(), safetensors::Dtype::I64, 0i64.to_le_bytes().to_vec()));
    }
    let mut views = Vec::with_capacity(tensors.len());
    for (name, shape, dtype, bytes) in &tensors {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| TransferError::Naming(format!("`{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| TransferError::Naming(format!("cannot serialise: {e}")))
}

/// torchvision's and MONAI's name for a normalisation parameter.
fn norm_param(p: &str) -> &str {
    match p {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

/// The name `naming` gives the parameter at `path` of a network with structure `layout`.
pub fn external_name(layout: &Layout, naming: Naming, path: &str) -> Result<String, TransferError> {
    let unsupported = || TransferError::Naming(format!("{naming:?} names do not cover `{path}` of this {layout:?} network"));
    let parts: Vec<&str> = path.split('.').collect();
    let index = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok()).ok_or_else(unsupported);
    match (naming, layout) {
        (Naming::Vesalius, _) => Ok(path.to_string()),
        (Naming::Torchvision, Layout::ResNet { layers }) => {
            // stem.{conv,bn}.P | blocks.K.{c1,c2,c3,down}.{conv,bn}.P | fc.P
            match parts.as_slice() {
                ["stem", "conv", p] => Ok(format!("conv1.{p}")),
                ["stem", "bn", p] => Ok(format!("bn1.{}", norm_param(p))),
                ["fc", p] => Ok(format!("fc.{p}")),
                ["blocks", _, unit, kind, p] => {
                    let mut k = index(1)?;
                    let mut stage = 0;
                    while stage < 4 && k >= layers[stage] {
                        k -= layers[stage];
                        stage += 1;
                    }
                    if stage == 4 {
                        return Err(unsupported());
                    }
                    let prefix = format!("layer{}.{k}", stage + 1);
                    match (*unit, *kind) {
                        ("down", "conv") => Ok(format!("{prefix}.downsample.0.{p}")),
                        ("down", "bn") => Ok(format!("{prefix}.downsample.1.{}", norm_param(p))),
                        (c, "conv") if c.starts_with('c') => Ok(format!("{prefix}.conv{}.{p}", &c[1..])),
                        (c, "bn") if c.starts_with('c') => Ok(format!("{prefix}.bn{}.{}", &c[1..], norm_param(p))),
                        _ => Err(unsupported()),
                    }
                }
                _ => Err(unsupported()),
            }
        }
        (Naming::Torchvision, Layout::Vgg { blocks, batch_norm }) => {
            // torchvision's `features` counts every module: conv, [bn,] ReLU per convolution, a max-pool per block.
            let per_conv = if *batch_norm { 3 } else { 2 };
            let feature_index = |conv: usize| -> Option<usize> {
                let mut t = 0;
                let mut seen = 0;
                for &n in blocks {
                    for _ in 0..n {
                        if seen == conv {
                            return Some(t);
                        }
                        t += per_conv;
                        seen += 1;
                    }
                    t += 1;
                }
                None
            };
            match parts.as_slice() {
                ["convs", _, p] => Ok(format!("features.{}.{p}", feature_index(index(1)?).ok_or_else(unsupported)?)),
                ["norms", _, p] => Ok(format!("features.{}.{}", feature_index(index(1)?).ok_or_else(unsupported)? + 1, norm_param(p))),
                ["fc1", p] => Ok(format!("classifier.0.{p}")),
                ["fc2", p] => Ok(format!("classifier.3.{p}")),
                ["fc3", p] => Ok(format!("classifier.6.{p}")),
                _ => Err(unsupported()),
            }
        }
        (Naming::Torchvision, Layout::AlexNet) => match parts.as_slice() {
            ["convs", _, p] => Ok(format!("features.{}.{p}", [0, 3, 6, 8, 10].get(index(1)?).ok_or_else(unsupported)?)),
            ["fc1", p] => Ok(format!("classifier.1.{p}")),
            ["fc2", p] => Ok(format!("classifier.4.{p}")),
            ["fc3", p] => Ok(format!("classifier.6.{p}")),
            _ => Err(unsupported()),
        },
        (Naming::Torchvision, Layout::GoogLeNet) => match parts.as_slice() {
            [stem @ ("conv1" | "conv2" | "conv3"), "conv", p] => Ok(format!("{stem}.conv.{p}")),
            [stem @ ("conv1" | "conv2" | "conv3"), "bn", p] => Ok(format!("{stem}.bn.{}", norm_param(p))),
            ["fc", p] => Ok(format!("fc.{p}")),
            [stage @ ("stage3" | "stage4" | "stage5"), _, branch, kind, p] => {
                let letter = (b'a' + u8::try_from(index(1)?).map_err(|_| unsupported())?) as char;
                let branch = match *branch {
                    "b1" => "branch1",
                    "b2a" => "branch2.0",
                    "b2b" => "branch2.1",
                    "b3a" => "branch3.0",
                    "b3b" => "branch3.1",
                    "b4" => "branch4.1",
                    _ => return Err(unsupported()),
                };
                let p = if *kind == "bn" { norm_param(p) } else { p };
                Ok(format!("inception{}{letter}.{branch}.{kind}.{p}", &stage[5..]))
            }
            _ => Err(unsupported()),
        },
        (Naming::Monai, Layout::UNet { levels, residual, deep_supervision }) => {
            if *levels != 5 || *residual || *deep_supervision {
                return Err(TransferError::Naming(format!(
                    "MONAI's BasicUNet has 5 levels, plain blocks and one head; this U-Net has {levels} levels{}{}",
                    if *residual { ", residual blocks" } else { "" },
                    if *deep_supervision { ", deep supervision" } else { "" }
                )));
            }
            // DoubleConv: conv1/norm1 → conv_0.{conv, adn.N}; conv2/norm2 → conv_1.{conv, adn.N}.
            let two_conv = |prefix: String, rest: &[&str]| -> Result<String, TransferError> {
                match rest {
                    ["conv1", p] => Ok(format!("{prefix}.conv_0.conv.{p}")),
                    ["norm1", p] => Ok(format!("{prefix}.conv_0.adn.N.{}", norm_param(p))),
                    ["conv2", p] => Ok(format!("{prefix}.conv_1.conv.{p}")),
                    ["norm2", p] => Ok(format!("{prefix}.conv_1.adn.N.{}", norm_param(p))),
                    _ => Err(unsupported()),
                }
            };
            match parts.as_slice() {
                ["enc", _, rest @ ..] => match index(1)? {
                    0 => two_conv("conv_0".into(), rest),
                    k => two_conv(format!("down_{k}.convs"), rest),
                },
                ["up", _, p] => Ok(format!("upcat_{}.upsample.deconv.{p}", 4usize.checked_sub(index(1)?).ok_or_else(unsupported)?)),
                ["dec", _, rest @ ..] => two_conv(format!("upcat_{}.convs", 4usize.checked_sub(index(1)?).ok_or_else(unsupported)?), rest),
                ["head", p] => Ok(format!("final_conv.{p}")),
                _ => Err(unsupported()),
            }
        }
        _ => Err(TransferError::Naming(format!("{naming:?} names are not defined for this network ({layout:?})"))),
    }
}
