//! Classification of volumes (`task = "volume-classification"`): a CNN + RNN that reads a volume as a sequence of
//! axial slices (a 2D CNN per slice reduced to its channels' maxima, a bidirectional LSTM across the slices) beside a
//! 3D CNN (global maximum over the volume), trained and tested on
//! the same cases.
//!
//! The cases are cubes cut from a real host volume: centres drawn in the host's region (e.g. its brain mask), the
//! cube averaged down to `voxel_mm`, and half of them given one inserted lesion ([`vesalius_data::lesions`]: an
//! ellipsoid of drawn size and contrast with partial volume and the host's noise) — the class to find is "a lesion
//! is present". The training, validation and test cubes come from separate slabs of the host along its third axis,
//! so no test cube overlaps a training cube. Each network is trained on the engine in its own folder of the run
//! (`RUN/crnn`, `RUN/cnn3d`), the epoch with the best validation AUC kept; both are scored on the same test cubes
//! (`metrics.json`: a classification report per network, with bootstrap intervals over cubes).
//!
//! ```
//! use vesalius_cadx::volumes::VolumeRecipe;
//! let r = VolumeRecipe::from_toml(r#"
//!     task = "volume-classification"
//!     [data]
//!     host = "mni152_t1.nii.gz"
//!     [model]
//!     arch = ["crnn", "cnn3d"]
//! "#, std::path::Path::new("/data")).unwrap();
//! assert_eq!(r.data.side, 24);
//! assert_eq!(r.model.arch.len(), 2);
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vesalius_data::lesions::{LesionSpec, insert_lesions};
use vesalius_eval::classification::{ClassificationReport, Targets, evaluate as classification_report};
use vesalius_io::Image;
use vesalius_nets::{Cnn3d, Cnn3dConfig, CnnLstm, CnnLstmConfig};
use vesalius_train::engine::{self, RunOptions};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::{EpochRecord, RunDir, Stepper, Task, Validation};

use crate::CadxError;

/// The networks compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeArch {
    /// A 2D CNN per axial slice and a bidirectional LSTM across the slices.
    Crnn,
    /// A 3D CNN.
    Cnn3d,
}

impl VolumeArch {
    /// The recipe's name.
    pub fn name(self) -> &'static str {
        match self {
            VolumeArch::Crnn => "crnn",
            VolumeArch::Cnn3d => "cnn3d",
        }
    }
}

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeData {
    /// The host volume.
    pub host: PathBuf,
    /// Where cube centres may lie (> 0.5; default: above the host's median).
    #[serde(default)]
    pub region: Option<PathBuf>,
    /// Side of a cube, voxels of `voxel_mm`.
    #[serde(default = "default_side")]
    pub side: usize,
    /// Voxel size of the cubes, millimetres (an integer multiple of the host's, which is averaged down).
    #[serde(default = "default_voxel")]
    pub voxel_mm: f64,
    /// Cubes per set: training, validation, test (half of each with a lesion).
    #[serde(default = "default_counts")]
    pub cases: [usize; 3],
    /// Slabs of the region along the third axis, as fractions of its extent: training, validation, test.
    #[serde(default = "default_slabs")]
    pub slabs: [[f64; 2]; 3],
    /// Lesion diameter range, millimetres.
    #[serde(default = "default_diameter")]
    pub diameter_mm: [f64; 2],
    /// Lesion contrast range, local standard deviations above the host.
    #[serde(default = "default_contrast")]
    pub contrast: [f64; 2],
}

fn default_side() -> usize {
    24
}
fn default_voxel() -> f64 {
    2.0
}
fn default_counts() -> [usize; 3] {
    [256, 64, 128]
}
fn default_slabs() -> [[f64; 2]; 3] {
    [[0.0, 0.55], [0.6, 0.75], [0.8, 1.0]]
}
fn default_diameter() -> [f64; 2] {
    [6.0, 12.0]
}
fn default_contrast() -> [f64; 2] {
    [1.0, 3.0]
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeModels {
    /// The networks to train and compare.
    pub arch: Vec<VolumeArch>,
    /// Convolution channels per block (both networks).
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    /// LSTM hidden size of the CNN + RNN.
    #[serde(default = "default_hidden")]
    pub hidden: usize,
}

fn default_channels() -> Vec<usize> {
    vec![8, 16]
}
fn default_hidden() -> usize {
    32
}

/// `[train]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeTrain {
    /// Epochs.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Cubes per step.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Adam learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
}

fn default_epochs() -> usize {
    10
}
fn default_batch() -> usize {
    16
}
fn default_lr() -> f64 {
    1e-3
}

impl Default for VolumeTrain {
    fn default() -> Self {
        Self { epochs: default_epochs(), batch: default_batch(), lr: default_lr() }
    }
}

/// A volume-classification recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecipe {
    /// Always `"volume-classification"`.
    pub task: String,
    /// Seed of the cubes, the lesions, the networks and the bootstrap.
    #[serde(default)]
    pub seed: u64,
    /// Data.
    pub data: VolumeData,
    /// Networks.
    pub model: VolumeModels,
    /// Training.
    #[serde(default)]
    pub train: VolumeTrain,
    /// Bootstrap resamples of the test metrics.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
}

fn default_bootstrap() -> usize {
    1000
}

impl VolumeRecipe {
    /// Parses a recipe; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, CadxError> {
        let mut r: VolumeRecipe = toml::from_str(text).map_err(|e| CadxError::Input(format!("invalid recipe: {e}")))?;
        if r.data.host.is_relative() {
            r.data.host = base.join(&r.data.host);
        }
        if let Some(p) = &mut r.data.region
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        r.validate()?;
        Ok(r)
    }

    /// Reads a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, CadxError> {
        let text = std::fs::read_to_string(path).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))?;
        let base = vesalius_io::folder_of(path);
        Self::from_toml(&text, &base).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), CadxError> {
        let bad = |m: &str| Err(CadxError::Input(m.to_string()));
        let d = &self.data;
        if self.task != "volume-classification" {
            return bad("task must be \"volume-classification\"");
        }
        if !((8..=64).contains(&d.side) && d.voxel_mm > 0.0 && d.voxel_mm.is_finite()) {
            return bad("data.side must lie in 8..=64 and voxel_mm be positive");
        }
        if d.cases.iter().any(|&n| !(2..=10_000).contains(&n)) {
            return bad("data.cases: 2 to 10000 cubes per set");
        }
        if d.slabs.iter().any(|s| !(0.0 <= s[0] && s[0] < s[1] && s[1] <= 1.0))
            || d.slabs[0][1] > d.slabs[1][0]
            || d.slabs[1][1] > d.slabs[2][0]
        {
            return bad("data.slabs: increasing, non-overlapping fractions in [0, 1] for training, validation and test");
        }
        if !(d.diameter_mm[0] > 0.0 && d.diameter_mm[0] <= d.diameter_mm[1] && d.contrast[0] <= d.contrast[1]) {
            return bad("data.diameter_mm must be positive and increasing, data.contrast increasing");
        }
        let m = &self.model;
        if m.arch.is_empty() || m.channels.is_empty() || m.channels.iter().any(|&c| c == 0 || c > 256) || m.hidden == 0 || m.hidden > 1024 {
            return bad("model: at least one arch, channels in 1..=256, hidden in 1..=1024");
        }
        if d.side >> m.channels.len() == 0 {
            return bad("model.channels: too many pooling blocks for data.side");
        }
        let t = &self.train;
        if t.epochs == 0 || t.batch == 0 || t.batch > 1024 || !(t.lr > 0.0 && t.lr.is_finite()) || self.bootstrap == 0 {
            return bad("train: epochs ≥ 1, batch in 1..=1024, lr > 0; bootstrap ≥ 1");
        }
        Ok(())
    }
}

/// Cubes and their labels (1: a lesion inside), standardised, `side³` values each with the first axis fastest.
#[derive(Clone, Debug, PartialEq)]
pub struct Cubes {
    /// Values per cube.
    pub data: Vec<Vec<f32>>,
    /// Labels.
    pub label: Vec<usize>,
}

fn load(path: &Path) -> Result<Image, CadxError> {
    vesalius_io::load(path).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))
}

/// The training, validation and test cubes of a recipe.
pub fn cubes(recipe: &VolumeRecipe) -> Result<[Cubes; 3], CadxError> {
    let mut sets = cube_sets(recipe, &[0, 1, 2])?.into_iter();
    match (sets.next(), sets.next(), sets.next()) {
        (Some(a), Some(b), Some(c)) => Ok([a, b, c]),
        _ => Err(CadxError::Internal("three sets of cubes".into())),
    }
}

/// The cubes of the sets `wanted` (0 training, 1 validation, 2 test), in that order; each set is drawn with its own
/// seed, so a set is the same whichever others are drawn with it.
pub fn cube_sets(recipe: &VolumeRecipe, wanted: &[usize]) -> Result<Vec<Cubes>, CadxError> {
    let d = &recipe.data;
    let host = load(&d.host)?;
    if host.ndim() != 3 {
        return Err(CadxError::Input(format!("{}: a 3D host volume is needed", d.host.display())));
    }
    let sh = host.shape().to_vec();
    let sp = host.spacing();
    let factor: Vec<usize> = sp.iter().map(|s| (d.voxel_mm / s).round().max(1.0) as usize).collect();
    let extent: Vec<usize> = factor.iter().map(|f| f * d.side).collect();
    if (0..3).any(|a| extent[a] > sh[a]) {
        return Err(CadxError::Input(format!(
            "{}: a cube of {} mm does not fit in the host {sh:?}",
            d.host.display(),
            d.side as f64 * d.voxel_mm
        )));
    }
    let region: Vec<bool> = match &d.region {
        Some(p) => {
            let r = load(p)?;
            if r.shape() != host.shape() {
                return Err(CadxError::Input(format!("{}: the region must share the host's grid", p.display())));
            }
            r.channel(0).iter().map(|&v| v > 0.5).collect()
        }
        None => {
            let mut v = host.channel(0).to_vec();
            v.sort_by(f32::total_cmp);
            let median = v[v.len() / 2];
            host.channel(0).iter().map(|&x| x > median).collect()
        }
    };
    let (nx, ny) = (sh[0], sh[1]);
    // centres where the whole cube fits, within the region
    let fits = |i: usize| {
        let v = [i % nx, (i / nx) % ny, i / (nx * ny)];
        (0..3).all(|a| v[a] >= extent[a] / 2 && v[a] + extent[a] - extent[a] / 2 <= sh[a])
    };
    let candidates: Vec<usize> = (0..region.len()).filter(|&i| region[i] && fits(i)).collect();
    if candidates.is_empty() {
        return Err(CadxError::Input(format!("{}: no place for a cube inside the region", d.host.display())));
    }
    let zs: Vec<usize> = candidates.iter().map(|&i| i / (nx * ny)).collect();
    let (zmin, zmax) = (zs.iter().copied().min().unwrap_or(0) as f64, zs.iter().copied().max().unwrap_or(0) as f64);
    let mut out: Vec<Cubes> = Vec::with_capacity(3);
    for (set, slab) in d.slabs.iter().enumerate().filter(|(k, _)| wanted.contains(k)) {
        let (lo, hi) = (zmin + slab[0] * (zmax - zmin), zmin + slab[1] * (zmax - zmin));
        let pool: Vec<usize> =
            candidates.iter().zip(&zs).filter(|(_, z)| (**z as f64) >= lo && (**z as f64) <= hi).map(|(i, _)| *i).collect();
        if pool.is_empty() {
            return Err(CadxError::Input(format!("{}: the region has no room for cubes in slab {slab:?}", d.host.display())));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(vesalius_io::mix(recipe.seed ^ (0xc0be ^ set as u64)));
        let mut cubes = Cubes { data: Vec::new(), label: Vec::new() };
        for k in 0..d.cases[set] {
            let c = pool[rng.random_range(0..pool.len())];
            let v = [c % nx, (c / nx) % ny, c / (nx * ny)];
            let start: Vec<i64> = (0..3).map(|a| (v[a] - extent[a] / 2) as i64).collect();
            let crop = vesalius_io::geometry::crop_or_pad(&host, &start, &extent, 0.0).map_err(|e| CadxError::Internal(e.to_string()))?;
            let label = k % 2;
            let crop = if label == 1 {
                let spec = LesionSpec { count: 1, diameter_mm: d.diameter_mm, contrast: d.contrast, elongation: 1.5 };
                insert_lesions(&crop, None, &spec, rng.random()).map_err(|e| CadxError::Input(format!("{}: {e}", d.host.display())))?.0
            } else {
                crop
            };
            cubes.data.push(downsample(crop.channel(0), &extent, &factor, d.side));
            cubes.label.push(label);
        }
        out.push(cubes);
    }
    Ok(out)
}

/// Block averages of a volume (first axis fastest) by integer factors, then standardised.
fn downsample(v: &[f32], shape: &[usize], factor: &[usize], side: usize) -> Vec<f32> {
    let mut out = vec![0f32; side * side * side];
    let norm = (factor[0] * factor[1] * factor[2]) as f32;
    for z in 0..shape[2] {
        for y in 0..shape[1] {
            for x in 0..shape[0] {
                let o = x / factor[0] + side * (y / factor[1] + side * (z / factor[2]));
                out[o] += v[x + shape[0] * (y + shape[1] * z)] / norm;
            }
        }
    }
    let n = out.len() as f32;
    let mean = out.iter().sum::<f32>() / n;
    let sd = (out.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt().max(1e-6);
    out.iter_mut().for_each(|x| *x = (*x - mean) / sd);
    out
}

/// Either network.
#[derive(Module, Debug)]
pub enum VolumeNet<B: Backend> {
    /// CNN + bidirectional LSTM over axial slices.
    Crnn(CnnLstm<B>),
    /// 3D CNN.
    Cnn3d(Cnn3d<B>),
}

impl<B: Backend> VolumeNet<B> {
    /// A network of `arch` for cubes of `side`.
    pub fn new(arch: VolumeArch, m: &VolumeModels, side: usize, device: &B::Device) -> Self {
        match arch {
            VolumeArch::Crnn => VolumeNet::Crnn(
                CnnLstmConfig::new(1, side, m.channels.clone(), m.hidden, 2).with_bidirectional(true).with_global_pool(true).init(device),
            ),
            VolumeArch::Cnn3d => {
                let mut ch = m.channels.clone();
                ch.push(*m.channels.last().unwrap_or(&16));
                VolumeNet::Cnn3d(Cnn3dConfig::new(1, ch, 2).init(device))
            }
        }
    }

    /// Logits `[n, 2]` of cubes (`side³`, first axis fastest: x, then y, then the slice axis z).
    pub fn forward(&self, cubes: &[&Vec<f32>], side: usize, device: &B::Device) -> Tensor<B, 2> {
        let flat: Vec<f32> = cubes.iter().flat_map(|c| c.iter().copied()).collect();
        let n = cubes.len();
        match self {
            // slices along z become the sequence: [n, z, 1, y, x]
            VolumeNet::Crnn(m) => m.forward(Tensor::from_data(TensorData::new(flat, [n, side, 1, side, side]), device)),
            VolumeNet::Cnn3d(m) => m.forward(Tensor::from_data(TensorData::new(flat, [n, 1, side, side, side]), device)),
        }
    }
}

/// Probabilities of the lesion class.
fn probabilities<B: Backend>(net: &VolumeNet<B>, cubes: &Cubes, side: usize, device: &B::Device) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(cubes.data.len());
    for chunk in cubes.data.chunks(32) {
        let refs: Vec<&Vec<f32>> = chunk.iter().collect();
        let p = softmax(net.forward(&refs, side, device), 1);
        let v: Vec<f32> = p.into_data().convert::<f32>().to_vec().unwrap_or_default();
        out.extend(v.chunks(2).map(<[f32]>::to_vec));
    }
    out
}

struct VolumeTask<'a> {
    recipe: &'a VolumeRecipe,
    arch: VolumeArch,
    train: &'a Cubes,
    val: &'a Cubes,
}

impl<B: AutodiffBackend> Task<B> for VolumeTask<'_> {
    type Model = VolumeNet<B>;
    type Error = CadxError;

    fn init_model(&mut self, device: &B::Device) -> Result<VolumeNet<B>, CadxError> {
        Ok(VolumeNet::new(self.arch, &self.recipe.model, self.recipe.data.side, device))
    }

    fn epochs(&self) -> usize {
        self.recipe.train.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.train.data.len().div_ceil(self.recipe.train.batch)
    }

    fn lr(&self, _epoch: usize) -> f64 {
        self.recipe.train.lr
    }

    fn train_epoch<O: Optimizer<VolumeNet<B>, B>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, B, VolumeNet<B>, O>,
    ) -> Result<(), CadxError> {
        let device = stepper.device().clone();
        let side = self.recipe.data.side;
        let mut order: Vec<usize> = (0..self.train.data.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(vesalius_io::mix(self.recipe.seed ^ ((epoch as u64) << 24)));
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        for chunk in order.chunks(self.recipe.train.batch) {
            let refs: Vec<&Vec<f32>> = chunk.iter().map(|&i| &self.train.data[i]).collect();
            let y = Tensor::<B, 1, Int>::from_data(
                TensorData::new(chunk.iter().map(|&i| self.train.label[i] as i64).collect::<Vec<_>>(), [chunk.len()]),
                &device,
            );
            stepper.step_split(refs.len(), 1.0, |model: &VolumeNet<B>, range, device| {
                let logits = model.forward(&refs[range.clone()], side, device);
                Ok::<_, CadxError>(loss_fn.forward(logits, engine::part(&y, &range, device)))
            })?;
        }
        Ok(())
    }

    fn validate(&mut self, model: &VolumeNet<B::InnerBackend>, _epoch: usize, device: &B::Device) -> Result<Option<Validation>, CadxError> {
        let p = probabilities(model, self.val, self.recipe.data.side, device);
        let scores: Vec<f32> = p.iter().map(|r| r[1]).collect();
        let positive: Vec<bool> = self.val.label.iter().map(|&l| l == 1).collect();
        let auc = vesalius_eval::classification::roc_auc(&scores, &positive);
        Ok(Some(Validation::new().maybe("auc", auc).maybe_score(auc)))
    }
}

/// `metrics.json` of a volume-classification run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeMetrics {
    /// The set scored (`test`).
    pub set: String,
    /// Test cubes.
    pub n: usize,
    /// Classes (`no lesion`, `lesion`).
    pub classes: Vec<String>,
    /// What the intervals resample (`cubes`).
    pub bootstrap_unit: String,
    /// One report per network.
    pub models: BTreeMap<String, ClassificationReport>,
}

/// Whether `run` holds a volume-classification run.
pub fn is_run(run: &Path) -> bool {
    vesalius_train::run::recipe_task(run).as_deref() == Some("volume-classification")
}

fn resume_rules() -> ResumeRules {
    ResumeRules { free: vec!["train.lr".into()], length: vec!["train.epochs".into()], schedule_depends: false }
}

/// Trains every network of the recipe into `run` (one engine folder each) and scores them on the same test cubes.
pub fn train<AB: AutodiffBackend>(
    recipe: &VolumeRecipe,
    run: &Path,
    device: &AB::Device,
    mut on_epoch: impl FnMut(VolumeArch, &EpochRecord),
) -> Result<VolumeMetrics, CadxError> {
    train_dyn::<AB>(recipe, run, device, &mut on_epoch)
}

/// [`train`] behind one callback type: generated once per backend.
pub(crate) fn train_dyn<AB: AutodiffBackend>(
    recipe: &VolumeRecipe,
    run: &Path,
    device: &AB::Device,
    on_epoch: &mut dyn FnMut(VolumeArch, &EpochRecord),
) -> Result<VolumeMetrics, CadxError> {
    recipe.validate()?;
    let text = toml::to_string(recipe).map_err(|e| CadxError::Internal(e.to_string()))?;
    std::fs::create_dir_all(run).map_err(|e| CadxError::Internal(format!("{}: {e}", run.display())))?;
    let recipe_path = run.join("recipe.toml");
    if let Ok(existing) = std::fs::read_to_string(&recipe_path)
        && existing != text
    {
        return Err(CadxError::Input(format!("{} holds a run of another recipe: use another --out", run.display())));
    }
    vesalius_io::write_atomic(&recipe_path, text.as_bytes()).map_err(|e| CadxError::Internal(e.to_string()))?;
    let mut sets = cube_sets(recipe, &[0, 1])?.into_iter();
    let (Some(tr), Some(va)) = (sets.next(), sets.next()) else {
        return Err(CadxError::Internal("training and validation cubes".into()));
    };
    for &arch in &recipe.model.arch {
        let dir = RunDir::new(run.join(arch.name()));
        engine::prepare(&dir, &text, &resume_rules())?;
        let mut task = VolumeTask { recipe, arch, train: &tr, val: &va };
        let config = RunOptions { quiet: true, ..Default::default() }.config(recipe.seed ^ arch as u64, None);
        engine::train(&dir, &mut task, AdamConfig::new().init::<AB, VolumeNet<AB>>(), &config, device, |r| on_epoch(arch, r))?;
    }
    evaluate::<AB::InnerBackend>(run, device)
}

/// Scores a run's networks on its test cubes and writes `metrics.json`.
pub fn evaluate<B: Backend>(run: &Path, device: &B::Device) -> Result<VolumeMetrics, CadxError> {
    let path = run.join("recipe.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))?;
    let recipe = VolumeRecipe::from_toml(&text, run)?;
    let te = cube_sets(&recipe, &[2])?.into_iter().next().ok_or_else(|| CadxError::Internal("test cubes".into()))?;
    let mut models = BTreeMap::new();
    for &arch in &recipe.model.arch {
        let dir = RunDir::new(run.join(arch.name()));
        let net = engine::load_module(VolumeNet::<B>::new(arch, &recipe.model, recipe.data.side, device), &dir.best_model(), device)?;
        let p = probabilities(&net, &te, recipe.data.side, device);
        let report = classification_report(&p, &Targets::Single(te.label.clone()), recipe.bootstrap, recipe.seed)
            .map_err(|e| CadxError::Internal(e.to_string()))?;
        models.insert(arch.name().to_string(), report);
    }
    let m = VolumeMetrics {
        set: "test".into(),
        n: te.label.len(),
        classes: vec!["no lesion".into(), "lesion".into()],
        bootstrap_unit: "cubes".into(),
        models,
    };
    let json = serde_json::to_vec_pretty(&m).map_err(|e| CadxError::Internal(e.to_string()))?;
    vesalius_io::write_atomic(&run.join("metrics.json"), &json).map_err(|e| CadxError::Internal(e.to_string()))?;
    Ok(m)
}
