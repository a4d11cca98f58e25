//! Planning from the fingerprint, the way nnU-Net does it: target spacing, 2D or 3D, U-Net depth and widths, a
//! patch and batch size that fit a memory budget, and normalisation by modality. Every value can be overridden.
use crate::fingerprint::Fingerprint;
use serde::{Deserialize, Serialize};
use vesalius_data::transforms::{NormMask, Pipeline, Transform};
use vesalius_nets::{NormKind, UNetConfig};

/// Intensity normalisation of one channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum Normalisation {
    /// CT: clip to the dataset's foreground 0.5–99.5 percentiles, then z-score with the foreground mean and std.
    Ct {
        /// Lower clip (HU).
        lower: f64,
        /// Upper clip (HU).
        upper: f64,
        /// Foreground mean.
        mean: f64,
        /// Foreground standard deviation.
        std: f64,
    },
    /// Per-image z-score (MR and everything else); `nonzero` restricts the statistics to non-zero voxels.
    ZScore {
        /// Statistics inside the non-zero region only.
        #[serde(default)]
        nonzero: bool,
    },
    /// Values used as they are.
    None,
}

/// Plan values a recipe may set; anything left out is planned.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanOverrides {
    /// Voxel size in mm to resample to.
    pub target_spacing: Option<Vec<f64>>,
    /// Patch size in voxels (image axis order).
    pub patch: Option<Vec<usize>>,
    /// Patches per batch.
    pub batch: Option<usize>,
    /// U-Net channels per level.
    pub features: Option<Vec<usize>>,
    /// Normalisation layers.
    pub norm: Option<NormKind>,
    /// Residual encoder and decoder blocks.
    pub residual: Option<bool>,
    /// Deep supervision: losses on every decoder level but the coarsest, weighted 1, ½, ¼, … from the finest.
    pub deep_supervision: Option<bool>,
    /// Biases in the 3×3 convolutions (MONAI's `BasicUNet` has them).
    pub conv_bias: Option<bool>,
    /// Negative slope of leaky ReLUs (0: ReLU; MONAI's `BasicUNet` uses 0.1).
    pub negative_slope: Option<f64>,
    /// Dropout after every decoder block (in training; at inference only for Monte-Carlo dropout uncertainty).
    pub dropout: Option<f64>,
    /// Memory budget for one training step, in MiB.
    pub memory_mib: Option<f64>,
    /// Per-channel intensity normalisation.
    pub normalisation: Option<Vec<Normalisation>>,
}

/// A complete training and inference configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plans {
    /// 2 for 2D images, 3 for volumes.
    pub dims: usize,
    /// Input channels.
    pub channels: usize,
    /// Output classes, background included (highest label + 1).
    pub classes: usize,
    /// Voxel size everything is resampled to.
    pub target_spacing: Vec<f64>,
    /// Median shape after resampling.
    pub median_shape: Vec<usize>,
    /// Patch size in voxels.
    pub patch: Vec<usize>,
    /// Patches per batch.
    pub batch: usize,
    /// U-Net channels per level.
    pub features: Vec<usize>,
    /// Normalisation layers.
    pub norm: NormKind,
    /// Residual blocks.
    pub residual: bool,
    /// Deep supervision during training.
    #[serde(default)]
    pub deep_supervision: bool,
    /// Biases in the 3×3 convolutions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conv_bias: bool,
    /// Negative slope of the leaky ReLUs (0: ReLU).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub negative_slope: f64,
    /// Decoder dropout probability (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropout: f64,
    /// Per-channel intensity normalisation.
    pub normalisation: Vec<Normalisation>,
    /// The memory budget planned for, MiB.
    pub memory_mib: f64,
    /// Estimated memory of one training step at the planned patch and batch, MiB.
    pub estimated_mib: f64,
}

/// The default memory budget of a training step, MiB.
pub const DEFAULT_MEMORY_MIB: f64 = 2048.0;

/// Estimated peak memory of one U-Net training step in MiB: activations kept for the backward pass (per level two
/// convolutions, two normalisations and two activations on the encoder side, the same plus the concatenation on
/// the decoder side), their gradients, and four copies of the parameters (weights, gradients, two Adam moments).
pub fn estimate_mib(patch: &[usize], batch: usize, features: &[usize], channels: usize, classes: usize) -> f64 {
    let dims = patch.len();
    let voxels: f64 = patch.iter().map(|&p| p as f64).product();
    let mut floats = 0.0;
    let mut params = 0.0;
    let k = if dims == 3 { 27.0 } else { 9.0 };
    let mut cin = channels as f64;
    for (level, &f) in features.iter().enumerate() {
        let v = voxels / (1u64 << (dims * level)) as f64;
        let f = f as f64;
        let decoder = if level + 1 < features.len() { 7.0 } else { 0.0 };
        floats += (6.0 + decoder) * f * v;
        params += k * (cin * f + f * f) * if level + 1 < features.len() { 2.0 } else { 1.0 };
        cin = f;
    }
    floats += 2.0 * classes as f64 * voxels + channels as f64 * voxels;
    let bytes = 4.0 * (2.0 * floats * batch as f64 + 4.0 * params);
    bytes / (1024.0 * 1024.0)
}

/// Plans a configuration for `fp` within `overrides.memory_mib` (default [`DEFAULT_MEMORY_MIB`]).
pub fn plan(fp: &Fingerprint, overrides: &PlanOverrides) -> Plans {
    let dims = fp.cases.first().map_or(3, |c| c.shape.len()).clamp(2, 3);
    let channels = fp.channel_names.len();
    let classes = fp.labels.keys().max().map_or(2, |&m| m as usize + 1).max(2);
    let memory_mib = overrides.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);

    // Target spacing: the median; for strongly anisotropic data the coarse axis takes its 10th percentile.
    let target_spacing = overrides.target_spacing.clone().unwrap_or_else(|| {
        let mut t = fp.median_spacing();
        if let (Some(max_a), Some(min)) = (
            (0..t.len()).max_by(|&a, &b| t[a].total_cmp(&t[b])),
            t.iter().copied().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v)))),
        ) && t[max_a] > 3.0 * min
        {
            t[max_a] = fp.spacing_percentile(10.0)[max_a].max(min);
        }
        t
    });
    let extent = fp.median_extent_mm();
    let median_shape: Vec<usize> = extent.iter().zip(&target_spacing).map(|(e, s)| ((e / s).round() as usize).max(1)).collect();

    let features_fixed = overrides.features.clone();
    let levels_for = |patch: &[usize]| -> usize {
        // Pool while every axis stays at least 4 voxels at the bottom, up to 5 levels.
        let min_axis = *patch.iter().min().unwrap_or(&4);
        ((min_axis as f64 / 4.0).log2().floor() as usize + 1).clamp(2, 5)
    };
    let features_for =
        |levels: usize| -> Vec<usize> { features_fixed.clone().unwrap_or_else(|| (0..levels).map(|l| (16usize << l).min(320)).collect()) };
    let mut patch = overrides.patch.clone().unwrap_or_else(|| {
        let mut p: Vec<usize> = median_shape.iter().map(|&s| s.min(if dims == 3 { 128 } else { 512 })).collect();
        let align = |p: &mut Vec<usize>| {
            let levels = levels_for(p);
            let m = 1usize << (levels - 1);
            for v in p.iter_mut() {
                *v = (v.div_ceil(m) * m).max(m);
            }
        };
        align(&mut p);
        // Shrink the largest axis (in mm) until one sample fits half the budget.
        loop {
            let f = features_for(levels_for(&p));
            if estimate_mib(&p, 2, &f, channels, classes) <= memory_mib || p.iter().all(|&v| v <= 8) {
                break;
            }
            let a =
                (0..p.len()).max_by(|&a, &b| (p[a] as f64 * target_spacing[a]).total_cmp(&(p[b] as f64 * target_spacing[b]))).unwrap_or(0);
            let m = 1usize << (levels_for(&p) - 1);
            p[a] = p[a].saturating_sub(m).max(8);
            align(&mut p);
        }
        p
    });
    if dims == 2 && patch.len() == 2 {
        patch.truncate(2);
    }
    let features = features_for(levels_for(&patch));
    let per_sample = estimate_mib(&patch, 1, &features, channels, classes);
    let batch = overrides.batch.unwrap_or_else(|| ((memory_mib / per_sample).floor() as usize).clamp(2, if dims == 3 { 4 } else { 32 }));
    let normalisation = overrides.normalisation.clone().unwrap_or_else(|| {
        fp.channel_names
            .iter()
            .zip(&fp.foreground)
            .map(|(name, st)| {
                if name.eq_ignore_ascii_case("ct") {
                    Normalisation::Ct { lower: st.percentile_00_5, upper: st.percentile_99_5, mean: st.mean, std: st.std.max(1e-8) }
                } else {
                    Normalisation::ZScore { nonzero: false }
                }
            })
            .collect()
    });
    Plans {
        dims,
        channels,
        classes,
        target_spacing,
        median_shape,
        estimated_mib: estimate_mib(&patch, batch, &features, channels, classes),
        patch,
        batch,
        features,
        norm: overrides.norm.unwrap_or(NormKind::Instance),
        residual: overrides.residual.unwrap_or(false),
        deep_supervision: overrides.deep_supervision.unwrap_or(false),
        conv_bias: overrides.conv_bias.unwrap_or(false),
        negative_slope: overrides.negative_slope.unwrap_or(0.0),
        dropout: overrides.dropout.unwrap_or(0.0),
        normalisation,
        memory_mib,
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Plans {
    /// The network.
    pub fn unet(&self) -> UNetConfig {
        UNetConfig::new(self.dims, self.channels, self.classes, self.features.clone())
            .with_norm(self.norm)
            .with_residual(self.residual)
            .with_deep_supervision(self.deep_supervision)
            .with_conv_bias(self.conv_bias)
            .with_negative_slope(self.negative_slope)
            .with_dropout(self.dropout)
    }

    /// Preprocessing: volumes reoriented to RAS (so differently stored scans look alike to the network),
    /// resampling to the target spacing, then the channels' normalisation. CT statistics are per dataset.
    pub fn preprocess(&self) -> Pipeline {
        let mut t = Vec::new();
        if self.dims == 3 {
            t.push(Transform::Reorient { codes: "RAS".into() });
        }
        t.push(Transform::Resample { spacing: self.target_spacing.clone() });
        // The transforms act on all channels; with one scheme for every channel (the usual case) it is exact.
        match self.normalisation.first() {
            Some(Normalisation::Ct { lower, upper, mean, std }) => {
                t.push(Transform::Clip { min: *lower as f32, max: *upper as f32 });
                t.push(Transform::Normalize { mean: *mean, std: *std });
            }
            Some(Normalisation::ZScore { nonzero }) => {
                t.push(Transform::ZScore { mask: if *nonzero { NormMask::Nonzero } else { NormMask::All } })
            }
            Some(Normalisation::None) | None => {}
        }
        Pipeline { transforms: t }
    }
}
