//! Evaluation of a run's best model on its test (or validation) cases, beside the baselines on the same cases:
//! the degraded input itself and a Gaussian filter whose σ is chosen on the validation cases. Every metric is
//! taken after clipping to the evaluation window (PSNR's data range is its width), per case, with 95 %
//! bootstrap intervals over patients; the paired PSNR gains of the network over each baseline get their own
//! intervals. Written to `metrics.json` (test) or `metrics-val.json` (validation).
use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use vesalius_eval::EvalSet;
use vesalius_eval::bootstrap::{Clusters, Estimate, cluster_percentile_ci};
use vesalius_train::RunDir;

use crate::EnhanceError;
use crate::baselines::{NLM_GRID, SIGMA_GRID, choose_sigma, gaussian_in_plane, noise_sigma, non_local_means};
use crate::data::{self, EvalCase, Prepared};
use crate::degrade::Degradation;
use crate::metrics::{Quality, clip, psnr, quality};
use crate::model::{EnhanceNet, build, enhance_plane, reconstruct_plane, reconstruct_series};
use crate::recipe::{EnhanceRecipe, ModelSection};
use crate::train::{EnhanceInfo, RunInfo};

/// Bootstrap resamples by default.
pub const DEFAULT_BOOTSTRAP: usize = 1000;

/// The metrics of one case for each method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseScores {
    /// Case identifier (`image[:plane]#realisation`).
    pub id: String,
    /// Patient.
    pub patient: String,
    /// Method name → its metrics on this case.
    pub methods: BTreeMap<String, Quality>,
}

/// Means over cases with intervals over patients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodSummary {
    /// PSNR, dB.
    pub psnr: Estimate,
    /// SSIM.
    pub ssim: Estimate,
    /// RMSE (image units).
    pub rmse: Estimate,
    /// MAE (image units).
    pub mae: Estimate,
    /// NMSE.
    pub nmse: Estimate,
}

/// `metrics.json` of an enhancement run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnhanceMetrics {
    /// `test` or `validation`.
    pub set: String,
    /// The epoch of the scored model.
    pub best_epoch: Option<usize>,
    /// The degradation of the inputs (`None`: image-to-image translation).
    pub degradation: Option<Degradation>,
    /// Evaluation window; PSNR's data range is its width.
    pub window: [f32; 2],
    /// σ (pixels) of the Gaussian-filter baseline (denoising models), chosen on the validation cases.
    pub gaussian_sigma: Option<f64>,
    /// Strength of the non-local-means baseline (denoising models) as a multiple of each case's estimated noise σ,
    /// chosen on the validation cases.
    pub nlm_factor: Option<f64>,
    /// What the intervals resample (`patients`, `cases`, or `cases of one patient`).
    pub bootstrap_unit: String,
    /// Clusters resampled.
    pub clusters: usize,
    /// What `input` is: the degraded image the network sees.
    pub input: String,
    /// Method → summary: `input`, `gaussian` and `nlm` (a Gaussian filter and non-local means of the input,
    /// denoising models), `linear` (linear
    /// interpolation of the coarse image, super-resolution), `linear-fit` (the least-squares affine intensity map
    /// fitted on the training planes, translation), `network`, and `unadapted` (the network before its adaptation to
    /// each image, recipes with `[adapt]`).
    pub methods: BTreeMap<String, MethodSummary>,
    /// Mean paired PSNR gain of the network over each other method, dB (`network_over_input`, …).
    pub psnr_gain: BTreeMap<String, Estimate>,
    /// Mean PSNR and SSIM of each method for each patient (with few patients the pooled interval says little).
    pub by_patient: BTreeMap<String, BTreeMap<String, [f64; 2]>>,
    /// The self-supervised adaptation of `network` to each image (`unadapted` is the network before it).
    #[serde(default)]
    pub adapt: Option<crate::recipe::AdaptSection>,
    /// Every case.
    pub cases: Vec<CaseScores>,
}

/// What the network's input is for a degradation model.
pub fn input_description(model: Option<&Degradation>) -> String {
    let Some(model) = model else {
        return "the registered image of the other contrast (scaled to the target's range)".into();
    };
    match model {
        Degradation::LowDoseCt { .. } => "the low-dose reconstruction".into(),
        Degradation::ThickSlice { .. } | Degradation::Downsample { .. } => {
            "cubic B-spline interpolation of the coarse image onto the fine grid".into()
        }
        Degradation::Kspace { .. } => "the zero-filled reconstruction (magnitude)".into(),
        Degradation::Gaussian { .. } | Degradation::Rician { .. } => "the noisy image".into(),
    }
}

/// The Gaussian baseline's σ: the best mean validation PSNR over [`SIGMA_GRID`].
pub fn gaussian_sigma(val: &[EvalCase], data: &Prepared, window: [f32; 2]) -> f64 {
    let range = (window[1] - window[0]) as f64;
    choose_sigma(&SIGMA_GRID, |sigma| {
        val.iter()
            .map(|c| {
                let f = data.metric_units(c, &gaussian_in_plane(&c.degraded, &[c.w, c.h], sigma));
                let (est, _) = c.crop(&f);
                let (reference, _) = c.crop(&data.metric_units(c, &c.clean));
                psnr(&clip(&est, window[0], window[1]), &clip(&reference, window[0], window[1]), range)
            })
            .sum::<f64>()
            / val.len().max(1) as f64
    })
}

/// The network's output on a case (normalised): the CRNN reconstructs from the case's measured k-space lines, the
/// other networks enhance the degraded plane.
pub fn network_on_case<B: Backend>(net: &EnhanceNet<B>, spec: &ModelSection, c: &EvalCase, device: &B::Device) -> Vec<f32> {
    match (net, &c.lines) {
        (EnhanceNet::Crnn(_), Some(lines)) => {
            let clean: Vec<f32> = c.clean.iter().map(|v| v / c.scale).collect();
            let (k0, x0) = crate::kspace::measure(&clean, c.w, c.h, lines);
            reconstruct_plane(net, &x0, &k0, lines, c.w, c.h, spec.flips, device).into_iter().map(|v| v * c.scale).collect()
        }
        _ => enhance_plane(net, spec, &c.degraded, c.w, c.h, device),
    }
}

/// The network's outputs on cases, computing each dynamic series once for all its frames (the frames of a series
/// are consecutive cases).
#[derive(Default)]
pub struct NetworkOutputs {
    last: Option<(usize, Vec<Vec<f32>>)>,
}

impl NetworkOutputs {
    /// The network's output on `c` (as [`network_on_case`]; a frame of a series from the whole series).
    pub fn of<B: Backend>(&mut self, net: &EnhanceNet<B>, spec: &ModelSection, c: &EvalCase, device: &B::Device) -> Vec<f32> {
        let Some(series) = &c.series else {
            return network_on_case(net, spec, c, device);
        };
        if self.last.as_ref().is_none_or(|(key, _)| *key != series.key) {
            let (mut x0, mut k0) = (Vec::new(), Vec::new());
            for (frame, lines) in series.clean.iter().zip(series.lines.iter()) {
                let frame: Vec<f32> = frame.iter().map(|v| v / c.scale).collect();
                let (k, x) = crate::kspace::measure(&frame, c.w, c.h, lines);
                k0.push(k);
                x0.push(x);
            }
            let frames = reconstruct_series(net, &x0, &k0, &series.lines, c.w, c.h, device);
            let frames = frames.into_iter().map(|f| f.into_iter().map(|v| v * c.scale).collect()).collect();
            self.last = Some((series.key, frames));
        }
        self.last.as_ref().and_then(|(_, frames)| frames.get(series.frame).cloned()).unwrap_or_default()
    }
}

/// Least-squares `target ≈ a·input + b` over every training plane (first realisation), normalised units.
pub fn linear_fit(data: &Prepared) -> (f32, f32) {
    let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for p in &data.train {
        for (x, y) in p.degraded[0].iter().zip(&p.clean) {
            let (x, y) = (*x as f64, *y as f64);
            n += 1.0;
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
    }
    let var = sxx - sx * sx / n;
    let a = if var > 0.0 { (sxy - sx * sy / n) / var } else { 1.0 };
    (a as f32, ((sy - a * sx) / n) as f32)
}

/// Patch and search radii of the non-local-means baseline (7×7 patches in a 15×15 window).
pub const NLM_PATCH: usize = 3;
/// See [`NLM_PATCH`].
pub const NLM_SEARCH: usize = 7;

/// The non-local-means baseline on a case's degraded plane, with strength `factor ×` its estimated noise σ.
pub fn nlm_plane(c: &EvalCase, factor: f64) -> Vec<f32> {
    let sigma = noise_sigma(&c.degraded, c.w, c.h);
    non_local_means(&c.degraded, c.w, c.h, NLM_PATCH, NLM_SEARCH, factor * sigma)
}

/// The non-local-means strength (a multiple of the estimated noise σ) with the best mean validation PSNR.
pub fn nlm_factor(val: &[EvalCase], data: &Prepared, window: [f32; 2]) -> f64 {
    let range = (window[1] - window[0]) as f64;
    choose_sigma(&NLM_GRID, |factor| {
        val.iter()
            .map(|c| {
                let (est, _) = c.crop(&data.metric_units(c, &nlm_plane(c, factor)));
                let (reference, _) = c.crop(&data.metric_units(c, &c.clean));
                psnr(&clip(&est, window[0], window[1]), &clip(&reference, window[0], window[1]), range)
            })
            .sum::<f64>()
            / val.len().max(1) as f64
    })
}

/// Loads the best model of a run.
pub fn load_best<B: Backend>(run: &RunDir, info: &EnhanceInfo, device: &B::Device) -> Result<EnhanceNet<B>, EnhanceError> {
    Ok(vesalius_train::engine::load_module(build::<B>(&info.model, device), &run.best_model(), device)?)
}

/// Reads a run's recipe and information.
pub fn read_run(run: &RunDir) -> Result<(EnhanceRecipe, RunInfo), EnhanceError> {
    let text = std::fs::read_to_string(run.recipe()).map_err(|e| EnhanceError::Input(format!("{}: {e}", run.recipe().display())))?;
    let recipe =
        EnhanceRecipe::from_toml(&text, run.root()).map_err(|e| EnhanceError::Input(format!("{}: {e}", run.recipe().display())))?;
    let info: RunInfo = run.read_info().map_err(|e| EnhanceError::Input(format!("{}: {e}", run.info_file().display())))?;
    Ok((recipe, info))
}

/// Cases of an evaluation that get a figure (`figures/<set>-<case>.png`).
pub const MAX_FIGURES: usize = 12;

/// Input, network output and reference side by side in the reference's grey range (1st–99th percentile), then
/// |output − reference| as a heat map; superior (the last row) at the top.
fn write_figure(
    run: &RunDir,
    name: &str,
    input: &[f32],
    output: &[f32],
    reference: &[f32],
    w: usize,
    h: usize,
) -> Result<(), EnhanceError> {
    use vesalius_io::figure::{Colour, Panel, compose, robust_range};
    let flip = |v: &[f32]| -> Vec<f32> { (0..h).rev().flat_map(|y| v[y * w..(y + 1) * w].to_vec()).collect() };
    let (lo, hi) = robust_range(reference);
    let grey = Colour::Grey { lo, hi };
    let diff: Vec<f32> = output.iter().zip(reference).map(|(a, b)| (a - b).abs()).collect();
    let panels = [
        Panel { data: flip(input), w, h, colour: grey },
        Panel { data: flip(output), w, h, colour: grey },
        Panel { data: flip(reference), w, h, colour: grey },
        Panel { data: flip(&diff), w, h, colour: Colour::Heat { max: (hi - lo) * 0.25 } },
    ];
    let path = run.file(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EnhanceError::Internal(format!("{}: {e}", dir.display())))?;
    }
    vesalius_io::save_2d(&path, &compose(&panels, 4)?)?;
    Ok(())
}

/// Evaluates a run's best model on `set` and writes `set.file()` in the run folder.
pub fn evaluate<B: Backend>(run: &RunDir, device: &B::Device, set: EvalSet) -> Result<EnhanceMetrics, EnhanceError> {
    let (recipe, info) = read_run(run)?;
    let data = data::prepare(&recipe)?;
    evaluate_prepared::<B>(run, &recipe, &info, &data, set, device)
}

fn summary(cases: &[CaseScores], method: &str, clusters: &Clusters, resamples: usize, seed: u64) -> MethodSummary {
    let pick = |f: fn(&Quality) -> f64| -> Estimate {
        let values: Vec<f64> = cases.iter().map(|c| f(&c.methods[method])).collect();
        mean_ci(&values, clusters, resamples, seed)
    };
    MethodSummary { psnr: pick(|q| q.psnr), ssim: pick(|q| q.ssim), rmse: pick(|q| q.rmse), mae: pick(|q| q.mae), nmse: pick(|q| q.nmse) }
}

/// The mean of the finite values with its interval over `clusters`.
fn mean_ci(values: &[f64], clusters: &Clusters, resamples: usize, seed: u64) -> Estimate {
    let mean = |idx: &mut dyn Iterator<Item = usize>| {
        let (s, n) = idx.filter(|&i| values[i].is_finite()).fold((0.0, 0usize), |(s, n), i| (s + values[i], n + 1));
        (n > 0).then(|| s / n as f64)
    };
    let value = mean(&mut (0..values.len())).unwrap_or(f64::NAN);
    cluster_percentile_ci(clusters, resamples, 0.95, seed, value, |idx| mean(&mut idx.iter().copied()))
}

/// Evaluates with data already prepared (as training does at its end).
pub fn evaluate_prepared<B: Backend>(
    run: &RunDir,
    recipe: &EnhanceRecipe,
    info: &EnhanceInfo,
    data: &Prepared,
    set: EvalSet,
    device: &B::Device,
) -> Result<EnhanceMetrics, EnhanceError> {
    let state = vesalius_train::engine::read_state(run)?;
    let window = info.window;
    let denoising =
        matches!(info.degradation, Some(Degradation::LowDoseCt { .. } | Degradation::Gaussian { .. } | Degradation::Rician { .. }));
    let sigma = denoising.then(|| gaussian_sigma(&data.val, data, window));
    let nlm = denoising.then(|| nlm_factor(&data.val, data, window));
    // Translation: the best affine intensity map from input to target on the training planes.
    let fit = info.degradation.is_none().then(|| linear_fit(data));
    let cases = match set {
        EvalSet::Test => &data.test,
        EvalSet::Validation => &data.val,
    };
    if cases.is_empty() {
        return Err(EnhanceError::Input(format!("the run has no {} cases", set.name())));
    }
    // With [adapt] the model is loaded once, trainable, and its inference copy taken from it.
    let (net, mut adapted) = match (&info.adapt, &info.degradation) {
        (Some(section), Some(model @ (Degradation::ThickSlice { .. } | Degradation::Kspace { .. }))) => {
            use burn::module::AutodiffModule;
            let base = load_best::<burn::backend::Autodiff<B>>(run, info, device)?;
            let axes = data::PlaneAxes::new(info.plane[0], info.plane[1])?;
            let thick = match *model {
                Degradation::ThickSlice { factor, axis } => Some((axis, factor)),
                _ => None,
            };
            let net = base.valid();
            (net, Some(crate::adapt::AdaptedOutputs::new(base, section.clone(), info.model.clone(), axes, thick)))
        }
        (Some(_), _) => return Err(EnhanceError::Input("[adapt] needs a thick-slice or k-space degradation".into())),
        _ => (load_best::<B>(run, info, device)?, None),
    };
    let bar = vesalius_train::progress::bar(cases.len() as u64, "evaluation", false);
    let mut scores = Vec::with_capacity(cases.len());
    let mut outputs = NetworkOutputs::default();
    for c in cases {
        let (reference, shape) = c.crop(&data.metric_units(c, &c.clean));
        let score = |plane: &[f32]| quality(&c.crop(&data.metric_units(c, plane)).0, &reference, &shape, window);
        let mut methods = BTreeMap::new();
        methods.insert("input".to_string(), score(&c.degraded));
        if let Some(sigma) = sigma {
            methods.insert("gaussian".to_string(), score(&gaussian_in_plane(&c.degraded, &[c.w, c.h], sigma)));
        }
        if let Some(factor) = nlm {
            methods.insert("nlm".to_string(), score(&nlm_plane(c, factor)));
        }
        if let Some((a, b)) = fit {
            methods.insert("linear-fit".to_string(), score(&c.degraded.iter().map(|v| a * v + b).collect::<Vec<_>>()));
        }
        for (name, plane) in &c.baselines {
            methods.insert(name.clone(), score(plane));
        }
        let mut output = outputs.of(&net, &info.model, c, device);
        if let Some(adapted) = adapted.as_mut() {
            methods.insert("unadapted".to_string(), score(&output));
            if let Some(own) = adapted.of(c, device)? {
                output = own;
            }
        }
        methods.insert("network".to_string(), score(&output));
        if scores.len() < MAX_FIGURES {
            write_figure(run, &format!("figures/{}-{}.png", set.name(), c.id), &c.degraded, &output, &c.clean, c.w, c.h)?;
        }
        scores.push(CaseScores { id: c.id.clone(), patient: c.patient.clone(), methods });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ids: Vec<Option<&str>> = scores.iter().map(|c| Some(c.patient.as_str())).collect();
    let clusters = Clusters::from_ids(&ids);
    let resamples = recipe.eval.bootstrap.unwrap_or(DEFAULT_BOOTSTRAP);
    let names: Vec<String> = scores[0].methods.keys().cloned().collect();
    let methods: BTreeMap<String, MethodSummary> =
        names.iter().map(|m| (m.clone(), summary(&scores, m, &clusters, resamples, recipe.seed))).collect();
    let gain = |base: &str| {
        let d: Vec<f64> = scores.iter().map(|c| c.methods["network"].psnr - c.methods[base].psnr).collect();
        mean_ci(&d, &clusters, resamples, recipe.seed)
    };
    let psnr_gain = names.iter().filter(|n| *n != "network").map(|n| (format!("network_over_{n}"), gain(n))).collect();
    let mut by_patient: BTreeMap<String, BTreeMap<String, [f64; 2]>> = BTreeMap::new();
    for patient in scores.iter().map(|c| c.patient.clone()).collect::<std::collections::BTreeSet<_>>() {
        let mine: Vec<&CaseScores> = scores.iter().filter(|c| c.patient == patient).collect();
        let means = names
            .iter()
            .map(|m| {
                let mean = |f: fn(&Quality) -> f64| {
                    let v: Vec<f64> = mine.iter().map(|c| f(&c.methods[m])).filter(|x| x.is_finite()).collect();
                    v.iter().sum::<f64>() / v.len().max(1) as f64
                };
                (m.clone(), [mean(|q| q.psnr), mean(|q| q.ssim)])
            })
            .collect();
        by_patient.insert(patient, means);
    }
    let m = EnhanceMetrics {
        set: set.name().into(),
        input: input_description(info.degradation.as_ref()),
        by_patient,
        best_epoch: state.and_then(|s| s.best_epoch),
        degradation: info.degradation.clone(),
        window,
        gaussian_sigma: sigma,
        nlm_factor: nlm,
        bootstrap_unit: clusters.unit().into(),
        clusters: clusters.len(),
        methods,
        psnr_gain,
        adapt: info.adapt.clone(),
        cases: scores,
    };
    vesalius_train::run::write_json(&run.file(set.file()), &m).map_err(|e| EnhanceError::Internal(e.to_string()))?;
    Ok(m)
}
