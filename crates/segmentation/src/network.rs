//! The segmentation network of a run: the planned U-Net, or with `[sae]` a stacked auto-encoder's encoder over the
//! patch around each voxel ([`PatchSae`]), pre-trained greedily on patches of the training cases. Training is
//! generic over [`SegNetwork`]; a trained run's network is a [`SegNet`].
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vesalius_data::transforms::Subject;
use vesalius_nets::{Autoencoder, PatchSae, PatchSaeConfig, UNet};

use crate::SegError;
use crate::plan::Plans;
use crate::recipe::{SaeSection, SegRecipe};

/// What training, validation, inference and explanation need of a segmentation network.
pub trait SegNetwork<B: Backend> {
    /// Logits `[n, classes, d, h, w]` of images `[n, c, d, h, w]`.
    fn logits(&self, x: Tensor<B, 5>) -> Tensor<B, 5>;
    /// The logits and the deep-supervision heads' (coarsest first; none where the network has no such heads).
    fn logits_all(&self, x: Tensor<B, 5>) -> (Tensor<B, 5>, Vec<Tensor<B, 5>>);
    /// The features Grad-CAM explains.
    fn features(&self, x: Tensor<B, 5>) -> Tensor<B, 5>;
    /// Logits from [`SegNetwork::features`].
    fn head(&self, features: Tensor<B, 5>) -> Tensor<B, 5>;
}

impl<B: Backend> SegNetwork<B> for UNet<B> {
    fn logits(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward(x)
    }
    fn logits_all(&self, x: Tensor<B, 5>) -> (Tensor<B, 5>, Vec<Tensor<B, 5>>) {
        self.forward_all(x)
    }
    fn features(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.decoder_features(x)
    }
    fn head(&self, features: Tensor<B, 5>) -> Tensor<B, 5> {
        self.head_logits(features)
    }
}

impl<B: Backend> SegNetwork<B> for PatchSae<B> {
    fn logits(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward(x)
    }
    fn logits_all(&self, x: Tensor<B, 5>) -> (Tensor<B, 5>, Vec<Tensor<B, 5>>) {
        (self.forward(x), Vec::new())
    }
    fn features(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        PatchSae::features(self, x)
    }
    fn head(&self, features: Tensor<B, 5>) -> Tensor<B, 5> {
        self.head_logits(features)
    }
}

/// A trained run's network: the planned U-Net, or the `[sae]` network. Each keeps its own weight-file format.
#[derive(Clone, Debug)]
pub enum SegNet<B: Backend> {
    /// The planned U-Net.
    UNet(UNet<B>),
    /// A stacked auto-encoder's encoder over patches, with a linear head.
    Sae(PatchSae<B>),
}

/// The shape of the `[sae]` network of a plan.
pub fn sae_config(sae: &SaeSection, plans: &Plans) -> PatchSaeConfig {
    let depth = if plans.dims == 2 { 1 } else { sae.patch };
    PatchSaeConfig::new(plans.channels, plans.classes, [depth, sae.patch, sae.patch], sae.hidden.clone())
}

impl<B: Backend> SegNet<B> {
    /// The randomly initialised network of `recipe` and `plans`.
    pub fn init(recipe: &SegRecipe, plans: &Plans, device: &B::Device) -> Result<Self, SegError> {
        match &recipe.sae {
            None => Ok(Self::UNet(plans.unet().init(device))),
            Some(sae) => {
                let config = sae_config(sae, plans);
                config.check().map_err(SegError::Input)?;
                Ok(Self::Sae(config.init(device)))
            }
        }
    }

    /// The network of `recipe` and `plans` with the weights of `path`.
    pub fn load(recipe: &SegRecipe, plans: &Plans, path: &std::path::Path, device: &B::Device) -> Result<Self, SegError> {
        Ok(match Self::init(recipe, plans, device)? {
            Self::UNet(n) => Self::UNet(vesalius_train::engine::load_module(n, path, device)?),
            Self::Sae(n) => Self::Sae(vesalius_train::engine::load_module(n, path, device)?),
        })
    }
}

impl<B: Backend> SegNet<B> {
    /// Whether the network has dropout (Monte-Carlo dropout needs it; only a U-Net planned with dropout has).
    pub fn has_dropout(&self) -> bool {
        matches!(self, Self::UNet(n) if n.has_dropout())
    }

    /// Logits with dropout active (one Monte-Carlo pass); the plain logits for a network without dropout.
    pub fn forward_mc(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::UNet(n) => n.forward_mc(x),
            Self::Sae(n) => n.forward(x),
        }
    }
}

impl<AB: AutodiffBackend> SegNet<AB> {
    /// The network without gradient tracking.
    pub fn valid(&self) -> SegNet<AB::InnerBackend> {
        match self {
            Self::UNet(n) => SegNet::UNet(n.valid()),
            Self::Sae(n) => SegNet::Sae(n.valid()),
        }
    }
}

impl<B: Backend> SegNetwork<B> for SegNet<B> {
    fn logits(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::UNet(n) => n.logits(x),
            Self::Sae(n) => n.logits(x),
        }
    }
    fn logits_all(&self, x: Tensor<B, 5>) -> (Tensor<B, 5>, Vec<Tensor<B, 5>>) {
        match self {
            Self::UNet(n) => n.logits_all(x),
            Self::Sae(n) => n.logits_all(x),
        }
    }
    fn features(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::UNet(n) => SegNetwork::features(n, x),
            Self::Sae(n) => SegNetwork::features(n, x),
        }
    }
    fn head(&self, features: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::UNet(n) => n.head(features),
            Self::Sae(n) => n.head(features),
        }
    }
}

/// The most patch values pre-training holds in memory (256 MiB of `f32`).
pub const MAX_PATCH_VALUES: usize = 64 << 20;

/// `samples` patches (rows of `c × k_d × k × k` values: channel, then depth, row, column) centred on voxels drawn
/// from the training subjects, as many for each class below `classes` as the labels allow, seeded; zero outside
/// the image.
pub fn patch_rows(subjects: &[Subject], config: &PatchSaeConfig, samples: usize, classes: usize, seed: u64) -> Result<Vec<f32>, SegError> {
    let values = samples.saturating_mul(config.patch_inputs());
    if values > MAX_PATCH_VALUES {
        return Err(SegError::Input(format!("[sae] samples × patch values = {values}, above {MAX_PATCH_VALUES}: lower samples or patch")));
    }
    // Every labelled voxel by class: (subject, linear index).
    let mut by_class: Vec<Vec<(usize, usize)>> = vec![Vec::new(); classes];
    for (s, subject) in subjects.iter().enumerate() {
        let Some(label) = &subject.label else { continue };
        for (i, &v) in label.data().iter().enumerate() {
            let k = v.round();
            if k >= 0.0 && (k as usize) < classes {
                by_class[k as usize].push((s, i));
            }
        }
    }
    let present: Vec<&Vec<(usize, usize)>> = by_class.iter().filter(|v| !v.is_empty()).collect();
    if present.is_empty() {
        return Err(SegError::Input("[sae] pre-training needs labelled training voxels".into()));
    }
    let [kd, kh, kw] = config.patch;
    let (rd, rh, rw) = ((kd / 2) as i64, (kh / 2) as i64, (kw / 2) as i64);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::with_capacity(samples * config.patch_inputs());
    for n in 0..samples {
        let pool = present[n % present.len()];
        let (s, i) = pool[rng.random_range(0..pool.len())];
        let image = &subjects[s].image;
        if image.channels() != config.channels {
            return Err(SegError::Input(format!("a training case has {} channel(s), the plan {}", image.channels(), config.channels)));
        }
        let mut shape = [1usize; 3];
        shape[..image.ndim().min(3)].copy_from_slice(&image.shape()[..image.ndim().min(3)]);
        let [w, h, d] = shape;
        let (x, y, z) = ((i % w) as i64, ((i / w) % h) as i64, (i / (w * h)) as i64);
        for c in 0..config.channels {
            let data = image.channel(c);
            for dz in -rd..=rd {
                for dy in -rh..=rh {
                    for dx in -rw..=rw {
                        let (px, py, pz) = (x + dx, y + dy, z + dz);
                        let inside = (0..w as i64).contains(&px) && (0..h as i64).contains(&py) && (0..d as i64).contains(&pz);
                        rows.push(if inside { data[(pz as usize * h + py as usize) * w + px as usize] } else { 0.0 });
                    }
                }
            }
        }
    }
    Ok(rows)
}

/// The `[sae]` network with its encoder pre-trained greedily on patches of `subjects` (kept in `RUN/pretrain/`, so a
/// resumed run reuses it).
pub fn pretrained_sae<AB: AutodiffBackend>(
    run: &crate::RunDir,
    sae: &SaeSection,
    plans: &Plans,
    subjects: impl FnOnce() -> Result<Vec<Subject>, SegError>,
    seed: u64,
    quiet: bool,
    device: &AB::Device,
) -> Result<Autoencoder<AB>, SegError> {
    let config = sae_config(sae, plans);
    config.check().map_err(SegError::Input)?;
    let dim = config.patch_inputs();
    let rows = || -> Result<Vec<f32>, vesalius_train::TrainError> {
        let subjects = subjects().map_err(|e| vesalius_train::TrainError::Input(e.to_string()))?;
        patch_rows(&subjects, &config, sae.samples, plans.classes, seed).map_err(|e| vesalius_train::TrainError::Input(e.to_string()))
    };
    Ok(vesalius_train::greedy::train_stacked_in_run::<AB>(run, rows, dim, &sae.greedy(seed), device, quiet)?)
}
