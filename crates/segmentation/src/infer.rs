//! Inference with a trained run: preprocess like training, sliding window over the whole image (optionally with
//! flip test-time augmentation), then back to the input's own grid and affine — labels by nearest neighbour,
//! per-class probabilities linearly.
use crate::network::SegNet;
use crate::plan::Plans;
use crate::recipe::SegRecipe;
use crate::train::sliding_predict;
use crate::{RunDir, SegError};
use burn::tensor::backend::Backend;
use std::path::{Path, PathBuf};
use vesalius_data::transforms::{Subject, resample_onto};
use vesalius_io::nifti::{self, NiftiType};
use vesalius_io::{self as io, Image};
use vesalius_nets::CrfRnn;

/// A loaded run: its recipe, plan, best model and, when the recipe has `[refine]`, the refinement stage's best
/// CRF.
pub struct Predictor<B: Backend> {
    /// The recipe the run was trained with.
    pub recipe: SegRecipe,
    /// The plan.
    pub plans: Plans,
    pub(crate) model: SegNet<B>,
    refine: Option<CrfRnn<B>>,
    pub(crate) device: B::Device,
}

/// The result for one image, in the image's grid.
pub struct Segmentation {
    /// Class per voxel.
    pub labels: Image,
    /// Per-class probabilities (channels = classes), when asked for.
    pub probabilities: Option<Image>,
}

impl<B: Backend> Predictor<B> {
    /// Loads `run` (`recipe.toml`, `plans.json`, `model.mpk`).
    pub fn load(run: &RunDir, device: &B::Device) -> Result<Self, SegError> {
        let recipe_path = run.file("recipe.toml");
        let text = std::fs::read_to_string(&recipe_path)
            .map_err(|e| SegError::Input(format!("{}: {e} (is this a segmentation run?)", recipe_path.display())))?;
        let recipe = SegRecipe::from_toml(&text, run.root()).map_err(|e| SegError::Input(format!("{}: {e}", recipe_path.display())))?;
        let plans: Plans = run.read_json("plans.json")?;
        crate::train::check_plan(&plans).map_err(|e| SegError::Input(format!("{}: {e}", run.file("plans.json").display())))?;
        let model = SegNet::load(&recipe, &plans, &run.file("model.mpk"), device)?;
        let refine = match &recipe.refine {
            Some(section) => {
                let path = crate::refine::stage(run).best_model();
                if !path.is_file() {
                    return Err(SegError::Input(format!(
                        "{}: the run's recipe has a [refine] stage that has not trained yet (run `vesalius train` on the run again to train it)",
                        path.display()
                    )));
                }
                Some(vesalius_train::engine::load_module(section.crf(plans.classes).init::<B>(device), &path, device)?)
            }
            None => None,
        };
        Ok(Self { recipe, plans, model, refine, device: device.clone() })
    }

    /// Whether predictions pass through a refinement stage.
    pub fn refines(&self) -> bool {
        self.refine.is_some()
    }

    /// The loaded network.
    pub fn model(&self) -> &SegNet<B> {
        &self.model
    }

    /// Segments `image` (all channels in one image), optionally with flip test-time augmentation; refined when the
    /// run has a refinement stage.
    pub fn predict(&self, image: &Image, probabilities: bool, flip_tta: bool) -> Result<Segmentation, SegError> {
        Ok(self.predict_both(image, probabilities, flip_tta, false)?.0)
    }

    /// Segments `image` and, when the run refines and `unrefined` is asked for, also returns the U-Net's own
    /// segmentation from the same sliding-window pass (to measure what the refinement changes).
    pub fn predict_both(
        &self,
        image: &Image,
        probabilities: bool,
        flip_tta: bool,
        unrefined: bool,
    ) -> Result<(Segmentation, Option<Segmentation>), SegError> {
        if image.channels() != self.plans.channels {
            return Err(SegError::Input(format!("the model takes {} channel(s), the image has {}", self.plans.channels, image.channels())));
        }
        if image.ndim() != self.plans.dims {
            return Err(SegError::Input(format!("the model is {}D, the image {}D", self.plans.dims, image.ndim())));
        }
        let pre = self.plans.preprocess().apply_seeded(Subject::new(image.clone()), 0)?.image;
        let mut recipe = self.recipe.clone();
        recipe.infer.flip_tta = flip_tta;
        let pred = sliding_predict(&self.model, &pre, &self.plans, &recipe, probabilities || self.refine.is_some(), &self.device)?;
        let classes = pred.classes;
        let Some(crf) = &self.refine else {
            return Ok((self.finish(&pre, image, pred.labels, pred.probabilities.filter(|_| probabilities), classes)?, None));
        };
        let p = pred.probabilities.ok_or_else(|| SegError::Internal("sliding window returned no probabilities".into()))?;
        let (labels, refined) = crate::refine::refine_probabilities(crf, &pre, &p, classes, &self.device)?;
        let plain = if unrefined { Some(self.finish(&pre, image, pred.labels, probabilities.then(|| p.clone()), classes)?) } else { None };
        Ok((self.finish(&pre, image, labels, probabilities.then_some(refined), classes)?, plain))
    }

    /// Post-processes labels (and probabilities) of the plan grid and brings them back to the image's grid.
    fn finish(
        &self,
        pre: &Image,
        image: &Image,
        mut labels: Vec<u16>,
        probabilities: Option<Vec<f32>>,
        classes: usize,
    ) -> Result<Segmentation, SegError> {
        let mut shape = [1usize; 3];
        shape[..pre.ndim()].copy_from_slice(pre.shape());
        postprocess(&mut labels, shape, classes, self.recipe.infer.largest_component, self.recipe.infer.fill_holes);
        let dtype = if self.plans.classes <= 256 { "uint8" } else { "uint16" };
        let on_plan = Image::new(labels.iter().map(|&v| v as f32).collect(), pre.shape().to_vec(), 1, *pre.affine(), dtype)?;
        let labels = resample_onto(&on_plan, image.shape(), image.affine(), true)?;
        let probabilities = match probabilities {
            Some(p) => {
                let img = Image::new(p, pre.shape().to_vec(), classes, *pre.affine(), "float32")?;
                Some(resample_onto(&img, image.shape(), image.affine(), false)?)
            }
            None => None,
        };
        Ok(Segmentation { labels, probabilities })
    }

    /// Reads the image(s) of one case: `path`, plus its sibling channel files when the model takes several
    /// channels and `path` ends in `_0000.nii.gz` (nnU-Net naming).
    pub fn read_case(&self, path: &Path) -> Result<Image, SegError> {
        let mut files = vec![path.to_path_buf()];
        let name = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        if self.plans.channels > 1
            && let Some(at) = name.find("_0000.")
        {
            for c in 1..self.plans.channels {
                files.push(path.with_file_name(format!("{}_{c:04}{}", &name[..at], &name[at + 5..])));
            }
        }
        let case = vesalius_data::msd::Case { id: name, patient: String::new(), images: files, label: None, stratum: None };
        Ok(vesalius_data::loader::load_case(&case, &Default::default())?.image)
    }
}

/// Post-processing of a label map on a `shape` grid (nnU-Net's "keep the largest component", and hole filling).
pub fn postprocess(labels: &mut [u16], shape: [usize; 3], classes: usize, largest: bool, fill: bool) {
    if largest {
        for k in 1..classes as u16 {
            let (id, sizes) = vesalius_io::geometry::connected_components(shape, |v| labels[v] == k);
            if let Some(keep) = (0..sizes.len()).max_by_key(|&c| sizes[c]) {
                for (l, &c) in labels.iter_mut().zip(&id) {
                    if c != u32::MAX && c as usize != keep {
                        *l = 0;
                    }
                }
            }
        }
    }
    if fill && classes == 2 {
        let filled = vesalius_io::geometry::fill_holes(&labels.iter().map(|&l| l != 0).collect::<Vec<_>>(), shape);
        for (l, f) in labels.iter_mut().zip(filled) {
            if f {
                *l = 1;
            }
        }
    }
}

/// The output file names for an input: `OUT/<name>.nii.gz` and `OUT/<name>_probabilities.nii.gz`, where `<name>`
/// is the input's file name without its extension and without an nnU-Net channel suffix.
pub fn output_paths(input: &Path, out: &Path) -> (PathBuf, PathBuf) {
    let stem = stem(input);
    (out.join(format!("{stem}.nii.gz")), out.join(format!("{stem}_probabilities.nii.gz")))
}

/// An image's name without its extension (`.nii.gz`, `.nii`, `.mha`, `.mhd`, `.dcm`, `.png`, `.tif`, `.tiff`) and
/// without an nnU-Net channel suffix (`_0000`): the name of its label map (`case` for a path without a file name).
pub fn stem(path: &Path) -> String {
    let name = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_else(|| "case".into());
    let stem = ["nii.gz", "nii", "mha", "mhd", "dcm", "png", "tif", "tiff"]
        .iter()
        .find_map(|e| name.strip_suffix(&format!(".{e}")))
        .unwrap_or(&name)
        .to_string();
    stem.strip_suffix("_0000").unwrap_or(&stem).to_string()
}

/// Writes a segmentation next to its name (labels as `uint8`/`uint16`, probabilities as `float32`).
pub fn write(seg: &Segmentation, labels_path: &Path, probabilities_path: &Path) -> Result<(), SegError> {
    let dtype = if seg.labels.dtype() == "uint16" { NiftiType::U16 } else { NiftiType::U8 };
    nifti::save(labels_path, &seg.labels, dtype)?;
    if let Some(p) = &seg.probabilities {
        nifti::save(probabilities_path, p, NiftiType::F32)?;
    }
    Ok(())
}

/// Loads any supported image (for callers outside this crate).
pub fn read_image(path: &Path) -> Result<Image, SegError> {
    Ok(io::load(path)?)
}
