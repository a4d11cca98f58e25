//! Semi-automatic labelling: ranking unlabelled images by the trained model's uncertainty, so that an annotator
//! corrects the most informative pre-labels first (the strategies of MONAI Label's active learning), and taking the
//! corrected label maps back into a recipe whose training starts from the previous model.
//!
//! The scores and the order are the engine's ([`vesalius_train::label`]), shared with classification. Uncertainty is
//! measured on the plan grid (after resampling and normalisation), voxel by voxel, then averaged
//! over the image:
//! * [`Method::Entropy`]: the entropy of the class probabilities, divided by `ln(classes)` (0 certain, 1 uniform);
//! * [`Method::Tta`]: the variance of the class probabilities over test-time mirrorings (every patch mirrored along
//!   each combination of its axes, predicted, mirrored back), averaged over classes;
//! * [`Method::McDropout`]: the same variance over forward passes with the decoder's dropout active (Gal and
//!   Ghahramani 2016); the network must have been trained with `[plan] dropout > 0`;
//! * [`Method::Random`]: a seeded random order, the baseline every strategy is measured against.
//!
//! ```
//! use vesalius_segmentation::label::{Method, entropy_score};
//! // A map whose first voxel is certain and whose second is a coin toss scores one half.
//! assert!((entropy_score(&[1.0, 0.5, 0.0, 0.5], 2) - 0.5).abs() < 1e-6);
//! assert_eq!("tta".parse::<Method>().unwrap(), Method::Tta);
//! ```
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use vesalius_data::Image;
use vesalius_data::transforms::Subject;
use vesalius_train::sliding::SlidingWindow;

use crate::SegError;
use crate::infer::Predictor;
pub use crate::infer::stem;
use crate::network::SegNetwork;
pub use vesalius_train::label::{Method, Ranked, entropy_score, random_score, rank, variance_score};

/// The mirrorings of test-time augmentation: every non-empty combination of the spatial axes of a `dims`-D
/// patch tensor `[n, c, d, h, w]` (2D networks mirror height and width only), with the identity first.
fn mirrorings(dims: usize) -> Vec<Vec<usize>> {
    let axes: Vec<usize> = if dims == 2 { vec![3, 4] } else { vec![2, 3, 4] };
    let mut out = vec![Vec::new()];
    for mask in 1..(1usize << axes.len()) {
        out.push(axes.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, &a)| a).collect());
    }
    out
}

/// `x` mirrored along each of `axes`.
fn mirror<B: Backend>(x: Tensor<B, 5>, axes: &[usize]) -> Tensor<B, 5> {
    axes.iter().fold(x, |x, &a| x.flip([a as isize]))
}

impl<B: Backend> Predictor<B> {
    /// The image preprocessed as the run's plan says (the grid uncertainty is measured on).
    fn preprocessed(&self, image: &Image) -> Result<Image, SegError> {
        if image.channels() != self.plans.channels || image.ndim() != self.plans.dims {
            return Err(SegError::Input(format!(
                "the model takes {}D images with {} channel(s); this image is {}D with {}",
                self.plans.dims,
                self.plans.channels,
                image.ndim(),
                image.channels()
            )));
        }
        Ok(self.plans.preprocess().apply_seeded(Subject::new(image.clone()), 0)?.image)
    }

    fn window(&self) -> SlidingWindow {
        SlidingWindow {
            roi: self.plans.patch.clone(),
            overlap: self.recipe.infer.overlap,
            batch: self.recipe.infer.batch,
            sigma_scale: 0.125,
            flip_tta: false,
            probabilities: true,
        }
    }

    /// Class probabilities `[class][voxel]` of the preprocessed image with `forward` as the network.
    fn probabilities(&self, pre: &Image, forward: impl Fn(Tensor<B, 5>) -> Tensor<B, 5>) -> Result<(Vec<f32>, usize), SegError> {
        let p = self.window().run::<B>(pre, &self.device, |x| softmax(forward(x), 1))?;
        let classes = p.classes;
        let probs = p.probabilities.ok_or_else(|| SegError::Internal("the sliding window returned no probabilities".into()))?;
        Ok((probs, classes))
    }

    /// The uncertainty of `image` under `method` (higher: less certain). `samples` passes for Monte-Carlo
    /// dropout; `seed` seeds the dropout masks and the random baseline (`name` identifies the image for it).
    pub fn uncertainty(&self, image: &Image, name: &str, method: Method, samples: usize, seed: u64) -> Result<f64, SegError> {
        if method == Method::Random {
            return Ok(random_score(seed, name));
        }
        let pre = self.preprocessed(image)?;
        match method {
            Method::Entropy => {
                let (p, classes) = self.probabilities(&pre, |x| self.model.logits(x))?;
                Ok(entropy_score(&p, classes))
            }
            Method::Tta => {
                let mut all = Vec::new();
                for axes in mirrorings(self.plans.dims) {
                    let (p, _) = self.probabilities(&pre, |x| {
                        let y = self.model.logits(mirror(x, &axes));
                        mirror(y, &axes)
                    })?;
                    all.push(p);
                }
                Ok(variance_score(&all))
            }
            Method::McDropout => {
                if !self.model.has_dropout() {
                    return Err(SegError::Input(
                        "mc-dropout needs a network trained with dropout ([plan] dropout > 0); this run has none".into(),
                    ));
                }
                let mut all = Vec::new();
                for t in 0..samples.max(2) {
                    B::seed(&self.device, seed.wrapping_add(t as u64));
                    let (p, _) = self.probabilities(&pre, |x| self.model.forward_mc(x))?;
                    all.push(p);
                }
                Ok(variance_score(&all))
            }
            Method::Random => Ok(random_score(seed, name)),
        }
    }
}

/// The recipe with the corrected `(image, label map)` pairs added to its `cases` and its training started from
/// `init` (the previous run's network, exported). Each label map must lie on its image's grid and hold only the
/// recipe's label values; an image already among the recipe's cases or test cases is refused.
pub fn accept(recipe: &crate::recipe::SegRecipe, pairs: &[(PathBuf, PathBuf)], init: &Path) -> Result<crate::recipe::SegRecipe, SegError> {
    let mut out = recipe.clone();
    if out.data.cases.is_empty() {
        return Err(SegError::Input(
            "label accept adds to a recipe's `cases` list; this recipe reads a dataset folder or a manifest".into(),
        ));
    }
    let values: Vec<u32> = recipe.data.labels.values().copied().collect();
    let same = |a: &Path, b: &Path| a == b || (a.canonicalize().ok().is_some() && a.canonicalize().ok() == b.canonicalize().ok());
    for (image_path, label_path) in pairs {
        let known =
            recipe.data.cases.iter().chain(&recipe.data.test).chain(&out.data.cases).any(|c| c.image.iter().any(|i| same(i, image_path)));
        if known {
            return Err(SegError::Input(format!("{}: already in the recipe's cases", image_path.display())));
        }
        let image = vesalius_io::load(image_path)?;
        let label = vesalius_io::load(label_path)?;
        if label.shape() != image.shape() || label.channels() != 1 {
            return Err(SegError::Input(format!(
                "{}: a label map of shape {:?} ({} channels) for an image of shape {:?}",
                label_path.display(),
                label.shape(),
                label.channels(),
                image.shape()
            )));
        }
        if let Some(bad) = label.data().iter().find(|v| !(v.fract() == 0.0 && **v >= 0.0 && values.contains(&(**v as u32)))) {
            return Err(SegError::Input(format!("{}: value {bad} is not one of the recipe's labels {values:?}", label_path.display())));
        }
        out.data.cases.push(crate::recipe::CaseEntry {
            id: Some(stem(image_path)),
            image: vec![image_path.clone()],
            label: label_path.clone(),
        });
    }
    out.model.init = Some(init.to_path_buf());
    out.model.init_naming = Some(vesalius_nets::transfer::Naming::Vesalius);
    Ok(out)
}
