//! Transfer learning for every task: starting a run from weights trained elsewhere (PyTorch `.pt`/`.pth`,
//! safetensors, a Vesalius export), freezing layers, per-layer learning rates and gradual unfreezing.
//!
//! A task's `[model]` table carries the keys of [`TransferSpec`]; the task loads the weights when it builds its
//! model ([`initialise`]) and hands the engine a [`LayerPlan`] ([`crate::Task::layer_plan`]), which the engine
//! applies at every step: frozen layers get no update, the others are updated with the epoch's learning rate
//! times their `lr_scale`. Frozen layers' batch-norm statistics still follow the data, as in PyTorch unless a
//! layer is put in evaluation mode.
//!
//! ```
//! use vesalius_train::transfer::{Freeze, LayerPlan};
//! let groups: Vec<String> = ["stem", "blocks.0", "blocks.1", "blocks.2", "fc"].iter().map(|s| s.to_string()).collect();
//! // Freeze the backbone, then give one group back to training every 2 epochs, the one nearest the head first.
//! let plan = LayerPlan::new(&groups, &Freeze::Groups(4), Some(2), &Default::default()).unwrap();
//! assert_eq!(plan.frozen(0), vec!["stem", "blocks.0", "blocks.1", "blocks.2"]);
//! assert_eq!(plan.frozen(2), vec!["stem", "blocks.0", "blocks.1"]);
//! assert_eq!(plan.frozen(8), Vec::<&str>::new());
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use vesalius_nets::transfer::{Layout, LoadReport, Naming, TransferError, WeightFile, detect_naming, in_layer, layer_groups, load_weights};

use crate::TrainError;

/// Which layers start frozen: none, the named layers, or the first `N` layer groups
/// ([`vesalius_nets::transfer::layer_groups`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Freeze {
    /// Nothing frozen.
    #[default]
    None,
    /// The first `N` layer groups.
    Groups(usize),
    /// These layers (a name covers everything below it: `blocks` freezes every block).
    Layers(Vec<String>),
}

impl Freeze {
    /// Whether nothing is frozen.
    pub fn is_none(&self) -> bool {
        *self == Freeze::None
    }
}

/// The transfer-learning keys of a `[model]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferSpec {
    /// Weight file to start from (`.pt`, `.pth`, `.safetensors`), relative to the recipe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Whose names the file uses; found from the file when absent (the naming that covers most parameters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_naming: Option<Naming>,
    /// Layers that keep their random initialisation. When absent, the classification head is left out if (and
    /// only if) its shape differs from the file's (another number of classes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_skip: Option<Vec<String>>,
    /// Layers frozen at the start.
    #[serde(skip_serializing_if = "Freeze::is_none")]
    pub freeze: Freeze,
    /// Gradual unfreezing: every this many epochs the frozen layer group nearest the output trains again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfreeze_every: Option<usize>,
    /// Learning-rate multipliers by layer (`{ stem = 0.1, blocks = 0.1 }`); the most specific name applies; other
    /// layers train at the recipe's rate.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lr_scale: BTreeMap<String, f64>,
}

impl TransferSpec {
    /// Whether every key has its default (nothing to write in a recipe).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the spec changes anything.
    pub fn is_active(&self) -> bool {
        self.init.is_some() || self.freeze != Freeze::None || !self.lr_scale.is_empty()
    }

    /// Checks the values that need no network: positive scales and period (the weight file is read when the
    /// model is built, so a recipe can name a file that an earlier run will export).
    pub fn validate(&self) -> Result<(), String> {
        if self.unfreeze_every == Some(0) {
            return Err("model.unfreeze_every must be at least 1".into());
        }
        if self.unfreeze_every.is_some() && self.freeze == Freeze::None {
            return Err("model.unfreeze_every needs model.freeze".into());
        }
        for (layer, scale) in &self.lr_scale {
            if !(scale.is_finite() && *scale >= 0.0) {
                return Err(format!("model.lr_scale.{layer} must be a finite number ≥ 0, not {scale}"));
            }
        }
        Ok(())
    }
}

/// The frozen layers and learning-rate scales of a run, resolved against its network.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    frozen: Vec<String>,
    unfreeze_every: Option<usize>,
    lr_scale: BTreeMap<String, f64>,
}

impl LayerPlan {
    /// Resolves `freeze` against the network's layer groups `groups` (in order).
    pub fn new(
        groups: &[String],
        freeze: &Freeze,
        unfreeze_every: Option<usize>,
        lr_scale: &BTreeMap<String, f64>,
    ) -> Result<Self, String> {
        let known = |layer: &str| groups.iter().any(|g| in_layer(g, layer) || in_layer(layer, g));
        let frozen = match freeze {
            Freeze::None => Vec::new(),
            Freeze::Groups(n) => {
                if *n >= groups.len() {
                    return Err(format!("model.freeze = {n} would freeze all {} layer groups ({})", groups.len(), groups.join(", ")));
                }
                groups[..*n].to_vec()
            }
            Freeze::Layers(layers) => {
                if let Some(bad) = layers.iter().find(|l| !known(l)) {
                    return Err(format!("model.freeze: no layer `{bad}` (layer groups: {})", groups.join(", ")));
                }
                // In network order, so that gradual unfreezing starts from the output side.
                let mut ordered: Vec<String> = Vec::new();
                for g in groups {
                    for l in layers {
                        if (in_layer(g, l) || in_layer(l, g)) && !ordered.contains(l) {
                            ordered.push(l.clone());
                        }
                    }
                }
                ordered
            }
        };
        if let Some(bad) = lr_scale.keys().find(|l| !known(l)) {
            return Err(format!("model.lr_scale: no layer `{bad}` (layer groups: {})", groups.join(", ")));
        }
        Ok(Self { frozen, unfreeze_every, lr_scale: lr_scale.clone() })
    }

    /// Layers frozen during epoch `epoch` (0-based).
    pub fn frozen(&self, epoch: usize) -> Vec<&str> {
        let released = self.unfreeze_every.map_or(0, |k| epoch / k);
        let keep = self.frozen.len().saturating_sub(released);
        self.frozen[..keep].iter().map(String::as_str).collect()
    }

    /// The learning-rate factor of parameter `path` in epoch `epoch`: 0 when frozen, else the scale of the most
    /// specific `lr_scale` layer containing it, else 1.
    pub fn factor(&self, path: &str, epoch: usize) -> f64 {
        if self.frozen(epoch).iter().any(|l| in_layer(path, l)) {
            return 0.0;
        }
        self.lr_scale.iter().filter(|(l, _)| in_layer(path, l)).max_by_key(|(l, _)| l.len()).map_or(1.0, |(_, s)| *s)
    }

    /// The parameters of `module` grouped by learning-rate factor for epoch `epoch`, frozen ones left out; `None`
    /// when every parameter trains at factor 1 (the engine then takes its plain step).
    pub fn groups<B: Backend, M: Module<B>>(&self, module: &M, epoch: usize) -> Option<Vec<(f64, Vec<ParamId>)>> {
        let mut by_factor: Vec<(f64, Vec<ParamId>)> = Vec::new();
        let mut plain = true;
        for (path, id) in vesalius_nets::transfer::parameter_ids(module) {
            let f = self.factor(&path, epoch);
            if f != 1.0 {
                plain = false;
            }
            if f == 0.0 {
                continue;
            }
            match by_factor.iter_mut().find(|(g, _)| *g == f) {
                Some((_, ids)) => ids.push(id),
                None => by_factor.push((f, vec![id])),
            }
        }
        (!plain).then_some(by_factor)
    }
}

/// What [`initialise`] loaded, written to the run folder as `init.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitRecord {
    /// The weight file.
    pub file: PathBuf,
    /// The naming used.
    pub naming: Naming,
    /// Parameters set from the file.
    pub loaded: usize,
    /// Parameters that kept their initialisation.
    pub kept: Vec<String>,
    /// The file's tensors nothing used.
    pub unused: Vec<String>,
    /// Parameters converted on the way (a first convolution for other input channels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapted: Vec<String>,
}

/// Loads `spec.init` (resolved against `base`) into `model` (structure `layout`, classification head `head`, ""
/// when none). Returns the model unchanged and `None` without `init`.
pub fn initialise<B: Backend, M: Module<B>>(
    model: M,
    layout: &Layout,
    head: &str,
    spec: &TransferSpec,
    base: &Path,
) -> Result<(M, Option<InitRecord>), TrainError> {
    let Some(init) = &spec.init else { return Ok((model, None)) };
    let path = base.join(init);
    let input = |e: TransferError| TrainError::Input(format!("model.init: {e}"));
    let file = WeightFile::open(&path).map_err(input)?;
    let explicit = spec.init_skip.clone();
    let skip = explicit.clone().unwrap_or_default();
    let naming = match spec.init_naming {
        Some(n) => n,
        None => {
            let with_head = if head.is_empty() { skip.clone() } else { vec![head.to_string()] };
            let (n, covered) = detect_naming::<B, _>(&model, layout, &file, &with_head);
            if covered == 0 {
                return Err(TrainError::Input(format!(
                    "model.init: {}: no tensor matches the network's parameters under Vesalius, torchvision or MONAI names; set model.init_naming to see the first missing name",
                    path.display()
                )));
            }
            n
        }
    };
    // Without an explicit skip list, a head whose shape differs (other classes) keeps its initialisation.
    let (model, report): (M, LoadReport) = match load_weights(model.clone(), layout, &file, naming, &skip) {
        Ok(done) => done,
        Err(TransferError::Shape { layer, .. }) if explicit.is_none() && !head.is_empty() && in_layer(&layer, head) => {
            load_weights(model, layout, &file, naming, &[head.to_string()]).map_err(input)?
        }
        Err(e) => return Err(input(e)),
    };
    Ok((
        model,
        Some(InitRecord { file: path, naming, loaded: report.loaded, kept: report.kept, unused: report.unused, adapted: report.adapted }),
    ))
}

/// The layer plan of `spec` for `model`, `None` when nothing is frozen or scaled.
pub fn layer_plan<B: Backend, M: Module<B>>(model: &M, spec: &TransferSpec) -> Result<Option<LayerPlan>, TrainError> {
    if spec.freeze == Freeze::None && spec.lr_scale.is_empty() {
        return Ok(None);
    }
    LayerPlan::new(&layer_groups(model), &spec.freeze, spec.unfreeze_every, &spec.lr_scale).map(Some).map_err(TrainError::Input)
}
