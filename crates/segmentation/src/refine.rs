//! The refinement stage (`[refine]`): a CRF-as-RNN ([`vesalius_nets::CrfRnn`]) trained on the frozen U-Net's
//! log-probabilities with the recipe's loss, on the same label-balanced augmented patches, in `RUN/refine/` (a
//! stage of the run: its own checkpoints, log and best model, resumable). The best epoch is chosen by the
//! validation cases' mean Dice after refinement; `RUN/refine/baseline.json` holds the U-Net's own validation Dice
//! it is compared with. At inference the CRF refines the sliding window's class probabilities of the whole image
//! (on the plan grid, before post-processing), so no window border limits it.
use crate::network::{SegNet, SegNetwork};
use crate::plan::Plans;
use crate::recipe::{RefineSection, SegRecipe};
use crate::train::{batch_tensors, objective, sliding_predict};
use crate::{RunDir, SegError};
use burn::optim::Optimizer;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use std::collections::BTreeMap;
use vesalius_data::Image;
use vesalius_data::loader::PatchLoader;
use vesalius_data::transforms::Subject;
use vesalius_eval::segmentation::dice_of;
use vesalius_nets::CrfRnn;
use vesalius_train::engine::part;
use vesalius_train::recipe::ResumeRules;
use vesalius_train::{Stepper, Task, Validation};

/// The stage's folder in a run.
pub fn stage(run: &RunDir) -> RunDir {
    run.stage("refine")
}

/// What the refinement stage may change when resumed: its learning rate and its number of epochs (the rate is
/// constant), and the U-Net's learning rate (which no longer matters).
pub fn resume_rules() -> ResumeRules {
    ResumeRules { free: vec!["train.lr".into(), "refine.lr".into()], length: vec!["refine.epochs".into()], schedule_depends: false }
}

/// `RUN/refine/baseline.json`: the U-Net's validation Dice without refinement.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    /// Always `"validation"`.
    pub set: String,
    /// Dice per foreground label value.
    pub dice: BTreeMap<u16, f64>,
    /// Mean over the foreground labels.
    pub mean_dice: f64,
}

/// A preprocessed image and class probabilities (`[class][voxel]`, image order) refined into labels and new
/// probabilities by the CRF.
pub fn refine_probabilities<B: Backend>(
    crf: &CrfRnn<B>,
    image: &Image,
    probabilities: &[f32],
    classes: usize,
    device: &B::Device,
) -> Result<(Vec<u16>, Vec<f32>), SegError> {
    let mut shape = [1usize; 3];
    shape[..image.ndim()].copy_from_slice(image.shape());
    let [w, h, d] = shape;
    let voxels = w * h * d;
    if probabilities.len() != classes * voxels {
        return Err(SegError::Internal(format!("{} probabilities for {classes} classes × {voxels} voxels", probabilities.len())));
    }
    let x = Tensor::<B, 5>::from_data(TensorData::new(image.data().to_vec(), [1, image.channels(), d, h, w]), device);
    let unary: Vec<f32> = probabilities.iter().map(|p| p.max(1e-6).ln()).collect();
    let unary = Tensor::<B, 5>::from_data(TensorData::new(unary, [1, classes, d, h, w]), device);
    let refined = softmax(crf.forward(unary, x), 1);
    let labels: Vec<i64> =
        refined.clone().argmax(1).into_data().convert::<i64>().to_vec().map_err(|e| SegError::Internal(format!("{e:?}")))?;
    let probs: Vec<f32> = refined.into_data().convert::<f32>().to_vec().map_err(|e| SegError::Internal(format!("{e:?}")))?;
    Ok((labels.into_iter().map(|l| l as u16).collect(), probs))
}

/// Mean Dice per foreground class of label maps against their references.
fn dice_per_class(cases: &[(&Subject, &[u16])], fg_classes: &[u16]) -> Result<Vec<f64>, SegError> {
    let mut per_class = vec![0.0; fg_classes.len()];
    for (s, pred) in cases {
        let reference = s.label.as_ref().ok_or_else(|| SegError::Internal("validation case without labels".into()))?;
        for (k, &c) in fg_classes.iter().enumerate() {
            per_class[k] +=
                dice_of(pred.iter().map(|&p| p == c), reference.data().iter().map(|&r| r.round() as u16 == c)) / cases.len() as f64;
        }
    }
    Ok(per_class)
}

/// The refinement stage for the training engine.
pub(crate) struct RefineTask<'a, B: Backend> {
    pub recipe: &'a SegRecipe,
    pub section: &'a RefineSection,
    pub plans: &'a Plans,
    pub unet: SegNet<B>,
    pub loader: PatchLoader<'a>,
    /// Validation cases (preprocessed) with the U-Net's probabilities.
    pub val: Vec<(Subject, Vec<f32>)>,
    pub fg_classes: Vec<u16>,
}

impl<'a, B: Backend> RefineTask<'a, B> {
    /// Computes the U-Net's validation probabilities once, and writes `baseline.json` in `stage`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        recipe: &'a SegRecipe,
        section: &'a RefineSection,
        plans: &'a Plans,
        unet: SegNet<B>,
        loader: PatchLoader<'a>,
        val_cases: Vec<Subject>,
        stage: &RunDir,
        device: &B::Device,
    ) -> Result<Self, SegError> {
        let fg_classes: Vec<u16> = (1..plans.classes as u16).collect();
        let mut val = Vec::with_capacity(val_cases.len());
        let mut labels = Vec::with_capacity(val_cases.len());
        for s in val_cases {
            let pred = sliding_predict(&unet, &s.image, plans, recipe, true, device)?;
            let p = pred.probabilities.ok_or_else(|| SegError::Internal("sliding window returned no probabilities".into()))?;
            labels.push(pred.labels);
            val.push((s, p));
        }
        let pairs: Vec<(&Subject, &[u16])> = val.iter().zip(&labels).map(|((s, _), l)| (s, l.as_slice())).collect();
        let per_class = dice_per_class(&pairs, &fg_classes)?;
        let baseline = Baseline {
            set: "validation".into(),
            dice: fg_classes.iter().copied().zip(per_class.iter().copied()).collect(),
            mean_dice: per_class.iter().sum::<f64>() / per_class.len().max(1) as f64,
        };
        stage.write_json("baseline.json", &baseline)?;
        Ok(Self { recipe, section, plans, unet, loader, val, fg_classes })
    }
}

impl<AB: AutodiffBackend> Task<AB> for RefineTask<'_, AB::InnerBackend> {
    type Model = CrfRnn<AB>;
    type Error = SegError;

    fn init_model(&mut self, device: &AB::Device) -> Result<CrfRnn<AB>, SegError> {
        Ok(self.section.crf(self.plans.classes).init::<AB>(device))
    }

    fn epochs(&self) -> usize {
        self.section.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.section.steps
    }

    fn lr(&self, _epoch: usize) -> f64 {
        self.section.lr
    }

    fn train_epoch<O: Optimizer<CrfRnn<AB>, AB>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, AB, CrfRnn<AB>, O>,
    ) -> Result<(), SegError> {
        let (recipe, plans, unet) = (self.recipe, self.plans, &self.unet);
        let device = stepper.device().clone();
        let mut batch: Vec<Subject> = Vec::with_capacity(plans.batch);
        let mut failed: Option<SegError> = None;
        // A stream of patches apart from the U-Net stage's epochs.
        let stream = (1 << 20) + epoch as u64 + 1;
        let result = self.loader.run(stream, self.section.steps * plans.batch, |_, patch| {
            batch.push(patch);
            if batch.len() == plans.batch {
                let step = (|| -> Result<(), SegError> {
                    let (x, y) = batch_tensors::<AB::InnerBackend>(&batch, &device)?;
                    batch.clear();
                    let n = x.dims()[0];
                    let unary: Tensor<AB, 5> = Tensor::from_inner(log_softmax(unet.logits(x.clone()), 1));
                    let (x, y): (Tensor<AB, 5>, Tensor<AB, 4, Int>) = (Tensor::from_inner(x), Tensor::from_inner(y));
                    stepper.step_split(n, 1.0, |m: &CrfRnn<AB>, range, device| {
                        let logits = m.forward(part(&unary, &range, device), part(&x, &range, device));
                        Ok::<_, SegError>(objective(recipe, logits, part(&y, &range, device)))
                    })?;
                    Ok(())
                })();
                if let Err(e) = step {
                    failed = Some(e);
                    return Err(vesalius_data::DataError::Invalid("refinement step failed".into()));
                }
            }
            Ok(())
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(result?)
    }

    fn validate(&mut self, model: &CrfRnn<AB::InnerBackend>, _epoch: usize, device: &AB::Device) -> Result<Option<Validation>, SegError> {
        let mut labels = Vec::with_capacity(self.val.len());
        for (s, p) in &self.val {
            labels.push(refine_probabilities(model, &s.image, p, self.plans.classes, device)?.0);
        }
        let pairs: Vec<(&Subject, &[u16])> = self.val.iter().zip(&labels).map(|((s, _), l)| (s, l.as_slice())).collect();
        let per_class = dice_per_class(&pairs, &self.fg_classes)?;
        let mean = per_class.iter().sum::<f64>() / per_class.len().max(1) as f64;
        let mut v = Validation::new();
        for (k, &c) in self.fg_classes.iter().enumerate() {
            v = v.metric(&format!("dice_{c}"), per_class[k]);
        }
        Ok(Some(v.metric("mean_dice", mean).score(mean)))
    }
}
