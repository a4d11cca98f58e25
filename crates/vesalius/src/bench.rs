//! The reference training workloads of the PyTorch comparison, timed with the same protocol: one untimed step,
//! two warm-up steps, then `max(7, min(50, ⌊3 s / fastest warm-up⌋))` timed steps; the median is reported.
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use serde::Serialize;
use vesalius_nets::loss::{grad_l2, mse, soft_dice, voxel_cross_entropy};
use vesalius_nets::{
    Arch, ClassifierConfig, CnnLstmConfig, ConvAutoencoderConfig, CrnnConfig, MlpConfig, NormKind, RedCnnConfig, UNetConfig,
    VoxelMorphConfig,
};

use crate::backend::BackendKind;
use crate::{CliError, with_backend};

/// Names of the workloads this command runs (`../shared/bench/WORKLOADS.md`).
pub const WORKLOADS: [&str; 10] = [
    "a_lenet5_train",
    "b_resnet18_train",
    "c_unet2d_train",
    "c_unet2d_infer",
    "d_unet3d_train",
    "d_unet3d_infer96",
    "e_convae_train",
    "f_cnnlstm_train",
    "g_voxelmorph_train",
    "g_voxelmorph_infer",
];

/// The enhancement and prediction tasks' networks, with their PyTorch twins in `xtask/torch_bench.py` (the project's
/// copy of the reference harness): RED-CNN with its defaults (96 maps, 5 × 5) denoising 16 patches of 64², MSE, Adam
/// 1e-4; the CRNN with its defaults (32 maps, 3 units, 5 iterations, data consistency) reconstructing 2 complex
/// 128² images from every fourth line, MSE; DeepSurv's network (20 inputs, hidden 256 and 128, dropout 0.2) on 1,024
/// rows with the Cox partial likelihood.
pub const TASK_WORKLOADS: [&str; 4] = ["h_redcnn_train", "i_crnn_train", "j_deepsurv_train", "k_centre3d_train"];

/// Data-pipeline workloads (the data issue's): sliding-window inference of a 256³ volume with the 3D U-Net of
/// workload d, and patches per second through the loader from `.nii.gz` volumes, decoded every time or cached.
pub const PIPELINE_WORKLOADS: [&str; 3] = ["sliding_window_256", "loader_nifti_96_cold", "loader_nifti_96_cached"];

/// Retrieval workloads: 10⁵ (and 10⁶) embeddings of 84 values (LeNet-5's penultimate layer) around 1,000 centres;
/// a step is 100 queries for their 10 nearest, exhaustively or through the HNSW graph (built once, its build time
/// and its recall@10 against exhaustive search reported).
pub const RETRIEVAL_WORKLOADS: [&str; 4] = ["retrieval_exact_100k", "retrieval_hnsw_100k", "retrieval_exact_1m", "retrieval_hnsw_1m"];

/// Registration workloads (`docs/REGISTRATION.md`): the MNI152 T1 at 1 mm against itself moved by a known affine
/// (rotations 6°, −5°, 8°; shifts 7, −6, 9 mm; scales 1.05, 0.97, 1.03), registered back by `register`'s affine stage
/// with its defaults (Mattes mutual information on sampled points); a step is one whole registration, and the mean
/// error inside the brain mask is reported.
///
/// `register_bspline_1mm`: the MNI152 T1 at 1 mm against itself warped by a known smooth random field (displacements
/// uniform in ±8 mm on a 4 × 4 × 4 lattice, trilinearly interpolated), registered back by `register`'s affine +
/// cubic B-spline stages (control points every 5 voxels, bending energy); the mean field error inside the brain is
/// reported. `register_bspline_sampled_1mm`: the same pair registered with the command line's defaults, the B-spline
/// optimised on 20,000 sampled points an iteration with Mattes mutual information
/// ([`DeformableOptions::sampled_bspline`](vesalius_registration::DeformableOptions::sampled_bspline)).
/// `register_dense_1mm`: the same pair registered as `register --deformation dense` does, the affine stage then a
/// dense field on every voxel (local normalised cross-correlation in 9-voxel windows, diffusion), differentiated
/// through the spatial transformer. Registration workloads time one untimed and three timed runs.
pub const REGISTRATION_WORKLOADS: [&str; 4] =
    ["register_affine_1mm", "register_bspline_1mm", "register_bspline_sampled_1mm", "register_dense_1mm"];

/// The deformable stage of a known-field pair workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PairStage {
    /// A B-spline on every voxel, MSE.
    BSpline,
    /// The command line's default: a B-spline on sampled points, mutual information.
    SampledBSpline,
    /// `--deformation dense`: a dense field, local correlation.
    Dense,
}

/// One JSON line of output.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    /// Workload name.
    pub workload: String,
    /// Batch size divided by the median step time.
    pub samples_per_s: f64,
    /// Median step time in seconds.
    pub median_s: f64,
    /// Fastest timed step.
    pub min_s: f64,
    /// Slowest timed step.
    pub max_s: f64,
    /// Timed steps.
    pub steps: usize,
    /// Peak resident memory of the process in MiB.
    pub peak_rss_mib: f64,
    /// Backend name.
    pub backend: String,
    /// CPU backend: the instruction set its kernels ran with (`avx512`, `avx2` or `baseline`: the widest the CPU
    /// has within `VESALIUS_CPU_ISA`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_isa: Option<String>,
    /// Retrieval: share of the exhaustive search's 10 nearest found by the approximate search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall_at_10: Option<f64>,
    /// Retrieval: seconds to build the index (the HNSW graph, or the stored vectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_s: Option<f64>,
    /// Registration: mean distance (mm) between the found and the true transform over the brain mask's voxels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_mm: Option<f64>,
    /// Minor page faults of the process per timed step (warm-up excluded): memory the step had to have mapped and
    /// zeroed afresh instead of reusing. Absent where `/proc/self/stat` cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults_per_step: Option<f64>,
    /// CUDA backend: GPU memory the process holds after the timed steps, in MiB, as `nvidia-smi` lists it (the
    /// CUDA context, the allocator's pools and the live tensors; the pools keep what the steps reserved). Absent
    /// on the CPU backends and where `nvidia-smi` does not list the process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_process_mib: Option<f64>,
    /// Seconds of the first, untimed step: what a process pays once before its steady state — allocation and, on
    /// the CUDA backend, compiling every kernel and autotune's timing of the candidates for each new shape (cached
    /// between runs). Absent for workloads whose warm-up is not one step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_step_s: Option<f64>,
}

/// The timing of a workload: the median, fastest and slowest timed step (seconds), the number of timed steps, and
/// the process's minor page faults per timed step (`None` where `/proc/self/stat` cannot be read).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Median step time in seconds.
    pub median_s: f64,
    /// Fastest timed step.
    pub min_s: f64,
    /// Slowest timed step.
    pub max_s: f64,
    /// Timed steps.
    pub steps: usize,
    /// Minor page faults per timed step.
    pub minor_faults_per_step: Option<f64>,
    /// Seconds of the first, untimed step, where the warm-up is one step.
    pub first_step_s: Option<f64>,
}

impl Timing {
    /// The timing of `times` (seconds, at least one), with the faults counted from `faults_before` to now and the
    /// untimed first step's seconds where there was one.
    fn of(mut times: Vec<f64>, faults_before: Option<u64>, first_step_s: Option<f64>) -> Timing {
        let steps = times.len();
        let minor_faults_per_step = match (faults_before, minor_faults()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / steps as f64),
            _ => None,
        };
        times.sort_by(f64::total_cmp);
        let median = if steps % 2 == 1 { times[steps / 2] } else { (times[steps / 2 - 1] + times[steps / 2]) / 2.0 };
        Timing { median_s: median, min_s: times[0], max_s: times[steps - 1], steps, minor_faults_per_step, first_step_s }
    }
}

/// Minor page faults of this process so far (all its threads), `None` where `/proc/self/stat` cannot be read.
pub fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; minflt is the 10th field, the 8th after it.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(7)?.parse().ok()
}

/// Clustered vectors for the retrieval workloads: `n` items and `queries` queries of 84 values around 1,000 centres.
fn retrieval_vectors(n: usize, queries: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut state = 0x5eed_u64;
    let mut uniform = move || {
        state = vesalius_io::mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..1000).map(|_| (0..84).map(|_| 4.0 * uniform()).collect()).collect();
    let mut draw = |i: usize| -> Vec<f32> { centres[i % 1000].iter().map(|c| c + 1.5 * uniform()).collect() };
    let items = (0..n).map(&mut draw).collect();
    let q = (0..queries).map(|i| draw(i * 7 + 3)).collect();
    (items, q)
}

/// A retrieval workload: builds the index of `n` vectors, times steps of 100 queries.
fn retrieval_workload(n: usize, approximate: bool, backend: &str, name: &str) -> Result<BenchResult, CliError> {
    use vesalius_retrieval::{Index, Metric, recall};
    let (items, queries) = retrieval_vectors(n, 100);
    let t = Instant::now();
    let ids = (0..n).map(|i| i.to_string()).collect();
    let mut index = Index::new(ids, vec![None; n], vec![None; n], items, Metric::Cosine, "bench")?;
    if approximate {
        index.build_approximate(200, 100, 0);
    }
    let build_s = t.elapsed().as_secs_f64();
    let timing = time_steps(|| {
        for q in &queries {
            let hits = if approximate { index.search_approximate(q, 10) } else { index.search_exact(q, 10) };
            std::hint::black_box(hits);
        }
    });
    Ok(BenchResult {
        recall_at_10: approximate.then(|| recall(&index, &queries, 10)),
        build_s: Some(build_s),
        ..result(name, backend, queries.len() as f64, timing)
    })
}

/// The registration workload: see [`REGISTRATION_WORKLOADS`].
fn register_affine_workload<AB: AutodiffBackend>(device: &AB::Device, backend: &str, name: &str) -> Result<BenchResult, CliError> {
    use vesalius_registration::sampled::Volume;
    use vesalius_registration::{AffineParams, Grid, Method, RegisterOptions, Similarity};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mni152");
    let fixed = vesalius_io::load(dir.join("mni152_t1.nii.gz"))?;
    let mask = vesalius_io::load(dir.join("mni152_brain_mask.nii.gz"))?;
    let grid = Grid::of(&fixed);
    let truth = AffineParams { angles: [6.0, -5.0, 8.0], translation: [7.0, -6.0, 9.0], log_scale: [4.88, -3.05, 2.96], shear: [0.0; 3] }
        .matrix(grid.centre());
    // moving(y) = fixed(T⁻¹ y): registration must find T (fixed world → moving world).
    let source = Volume::of(&fixed);
    let back = vesalius_registration::mat_mul(&source.from_world, &vesalius_registration::mat_inv(&truth));
    let [d, h, w] = grid.size;
    let mut data = vec![0f32; d * h * w];
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let p = [z as f64, y as f64, x as f64];
                let world = [0, 1, 2]
                    .map(|r| grid.to_world[r][0] * p[0] + grid.to_world[r][1] * p[1] + grid.to_world[r][2] * p[2] + grid.to_world[r][3]);
                let v = [0, 1, 2].map(|r| back[r][0] * world[0] + back[r][1] * world[1] + back[r][2] * world[2] + back[r][3]);
                data[(z * h + y) * w + x] = source.sample(v).map_or(0.0, |(value, _)| value as f32);
            }
        }
    }
    let moving = vesalius_data::Image::new(data, fixed.shape().to_vec(), 1, *fixed.affine(), "float32")
        .map_err(|e| CliError::Internal(e.to_string()))?;
    let options = RegisterOptions {
        method: Method::Affine,
        similarity: Similarity::Mse,
        affine_similarity: Some(Similarity::Mi { bins: 32 }),
        ..RegisterOptions::default()
    };
    let mut found = vesalius_registration::affine::identity();
    let timing = time_runs(3, || {
        found = vesalius_registration::register::<AB>(&fixed, &moving, &options, device).world;
    });
    let (mut total, mut n) = (0.0, 0usize);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                if mask.data()[(z * h + y) * w + x] < 0.5 {
                    continue;
                }
                let p = [z as f64, y as f64, x as f64];
                let world = [0, 1, 2]
                    .map(|r| grid.to_world[r][0] * p[0] + grid.to_world[r][1] * p[1] + grid.to_world[r][2] * p[2] + grid.to_world[r][3]);
                let at = |m: &vesalius_registration::Mat4| {
                    [0, 1, 2].map(|r| m[r][0] * world[0] + m[r][1] * world[1] + m[r][2] * world[2] + m[r][3])
                };
                let (a, b) = (at(&found), at(&truth));
                total += ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt();
                n += 1;
            }
        }
    }
    Ok(registration_result(name, backend, timing, total / n.max(1) as f64))
}

/// The line of a workload that handles `per_step` samples a step.
fn result(name: &str, backend: &str, per_step: f64, timing: Timing) -> BenchResult {
    BenchResult {
        workload: name.to_string(),
        samples_per_s: per_step / timing.median_s,
        median_s: timing.median_s,
        min_s: timing.min_s,
        max_s: timing.max_s,
        steps: timing.steps,
        peak_rss_mib: peak_rss_mib(),
        backend: backend.to_string(),
        cpu_isa: cpu_isa(backend),
        recall_at_10: None,
        build_s: None,
        error_mm: None,
        minor_faults_per_step: timing.minor_faults_per_step,
        gpu_process_mib: if backend == "cuda" { gpu_process_mib() } else { None },
        first_step_s: timing.first_step_s,
    }
}

/// The instruction set of the CPU backend's kernels, for `backend` "flex".
fn cpu_isa(backend: &str) -> Option<String> {
    #[cfg(feature = "flex")]
    if backend == "flex" {
        return Some(crate::backend::cpu_isa().to_string());
    }
    let _ = backend;
    None
}

/// The line of a registration workload: one pair per run, with its error in millimetres.
fn registration_result(name: &str, backend: &str, timing: Timing, error_mm: f64) -> BenchResult {
    BenchResult { error_mm: Some(error_mm), ..result(name, backend, 1.0, timing) }
}

/// Seconds one call of `f` takes.
fn seconds(f: &mut impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Times one untimed and then `n` timed calls of `run`.
fn time_runs(n: usize, mut run: impl FnMut()) -> Timing {
    let first_step_s = seconds(&mut run);
    let before = minor_faults();
    let times: Vec<f64> = (0..n.max(1)).map(|_| seconds(&mut run)).collect();
    Timing::of(times, before, Some(first_step_s))
}

/// The deformable registration workloads (B-spline, sampled B-spline, dense): see [`REGISTRATION_WORKLOADS`].
fn register_pair_workload<AB: AutodiffBackend>(
    device: &AB::Device,
    backend: &str,
    name: &str,
    stage: PairStage,
) -> Result<BenchResult, CliError> {
    use vesalius_registration::sampled::Volume;
    use vesalius_registration::{DeformableOptions, Deformation, Grid, Method, RegisterOptions, Regulariser, Similarity};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mni152");
    let template = vesalius_io::load(dir.join("mni152_t1.nii.gz"))?;
    let mask = vesalius_io::load(dir.join("mni152_brain_mask.nii.gz"))?;
    let grid = Grid::of(&template);
    let [d, h, w] = grid.size;
    // A smooth field v in voxels (d, h, w) from a 4 × 4 × 4 lattice of uniform ±8 voxel displacements.
    let mut state = 0x5eed_u64;
    let mut uniform = move || {
        state = vesalius_io::mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let lattice: Vec<f64> = (0..3 * 64).map(|_| 16.0 * uniform() - 8.0).collect();
    let field_at = |c: usize, p: [usize; 3]| -> f64 {
        let t = [0, 1, 2].map(|a| p[a] as f64 / ([d, h, w][a].max(2) - 1) as f64 * 3.0);
        let b = t.map(|v| (v.floor() as usize).min(2));
        let f = [0, 1, 2].map(|a| t[a] - b[a] as f64);
        let mut acc = 0.0;
        for corner in 0..8 {
            let o = [corner >> 2 & 1, corner >> 1 & 1, corner & 1];
            let weight: f64 = (0..3).map(|a| if o[a] == 1 { f[a] } else { 1.0 - f[a] }).product();
            acc += weight * lattice[c * 64 + ((b[0] + o[0]) * 4 + b[1] + o[1]) * 4 + b[2] + o[2]];
        }
        acc
    };
    // fixed(p) = template(p + v(p)): the registration maps fixed voxel p to p + v(p).
    let source = Volume::of(&template);
    let mut data = vec![0f32; d * h * w];
    let mut truth = vec![[0f64; 3]; d * h * w];
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let i = (z * h + y) * w + x;
                let v = [0, 1, 2].map(|c| field_at(c, [z, y, x]));
                truth[i] = v;
                let q = [z as f64 + v[0], y as f64 + v[1], x as f64 + v[2]].map(|c| c.max(0.0));
                let q = [q[0].min((d - 1) as f64), q[1].min((h - 1) as f64), q[2].min((w - 1) as f64)];
                data[i] = source.sample(q).map_or(0.0, |(value, _)| value as f32);
            }
        }
    }
    let fixed = vesalius_data::Image::new(data, template.shape().to_vec(), 1, *template.affine(), "float32")
        .map_err(|e| CliError::Internal(e.to_string()))?;
    let defaults = RegisterOptions::default();
    let options = match stage {
        PairStage::SampledBSpline => {
            let mi = Similarity::Mi { bins: 32 };
            RegisterOptions {
                method: Method::AffineDeformable,
                similarity: mi,
                deformable: DeformableOptions::sampled_bspline(),
                ..defaults
            }
        }
        PairStage::Dense => {
            let ncc = Similarity::Ncc { window: 9 };
            RegisterOptions {
                method: Method::AffineDeformable,
                similarity: ncc,
                affine_similarity: Some(Similarity::Mi { bins: 32 }),
                deformable: DeformableOptions {
                    deformation: Deformation::Dense,
                    regulariser: Regulariser::Diffusion,
                    smoothness: ncc.default_smoothness(),
                    ..defaults.deformable.clone()
                },
                ..defaults
            }
        }
        PairStage::BSpline => RegisterOptions {
            method: Method::AffineDeformable,
            similarity: Similarity::Mse,
            affine_similarity: Some(Similarity::Mi { bins: 32 }),
            deformable: DeformableOptions {
                deformation: Deformation::BSpline { spacing: 5 },
                regulariser: Regulariser::Bending,
                ..defaults.deformable.clone()
            },
            ..defaults
        },
    };
    let mut mapped: [Vec<f32>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let timing = time_runs(3, || {
        mapped = vesalius_registration::register::<AB>(&fixed, &template, &options, device).moving_voxel;
    });
    let (mut total, mut n) = (0.0, 0usize);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let i = (z * h + y) * w + x;
                if mask.data()[i] < 0.5 {
                    continue;
                }
                let found = [mapped[0][i] as f64 - z as f64, mapped[1][i] as f64 - y as f64, mapped[2][i] as f64 - x as f64];
                // Voxels are 1 mm: the voxel error is the error in millimetres.
                total += (0..3).map(|a| (found[a] - truth[i][a]).powi(2)).sum::<f64>().sqrt();
                n += 1;
            }
        }
    }
    Ok(registration_result(name, backend, timing, total / n.max(1) as f64))
}

/// GPU memory this process holds on all GPUs, in MiB, from `nvidia-smi`; `None` where it cannot be run or does not
/// list the process (for example inside a PID namespace it cannot see).
pub fn gpu_process_mib() -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    process_mib(&String::from_utf8_lossy(&out.stdout), std::process::id())
}

/// The sum of the `used_memory` column over the lines of `pid` in `nvidia-smi`'s `pid,used_memory` CSV (one line per
/// process and GPU); `None` when no line is the process's or a value does not parse.
fn process_mib(csv: &str, pid: u32) -> Option<f64> {
    let mut total = None;
    for line in csv.lines() {
        let mut fields = line.split(',').map(str::trim);
        let (Some(p), Some(mib)) = (fields.next(), fields.next()) else { continue };
        if p.parse::<u32>().ok() != Some(pid) {
            continue;
        }
        total = Some(total.unwrap_or(0.0) + mib.parse::<f64>().ok()?);
    }
    total
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Times `step` with the reference protocol; returns timing. The timed steps' page faults are
/// recorded for the workload's line.
pub fn time_steps(mut step: impl FnMut()) -> Timing {
    let first_step_s = seconds(&mut step);
    let mut fastest = f64::INFINITY;
    for _ in 0..2 {
        fastest = fastest.min(seconds(&mut step));
    }
    let n = ((3.0 / fastest).floor() as usize).clamp(7, 50);
    let before = minor_faults();
    let times: Vec<f64> = (0..n).map(|_| seconds(&mut step)).collect();
    Timing::of(times, before, Some(first_step_s))
}

fn classifier_workload<AB: AutodiffBackend>(arch: Arch, channels: usize, device: &AB::Device) -> Timing {
    let batch = 128;
    AB::seed(device, 0);
    let x = Tensor::<AB, 4>::random([batch, channels, 28, 28], Distribution::Normal(0.0, 1.0), device);
    let y: Vec<i64> = (0..batch as i64).map(|i| (i * 7 + 3) % 9).collect();
    let y = Tensor::<AB, 1, Int>::from_data(TensorData::new(y, [batch]), device);
    let mut model = Some(ClassifierConfig::new(arch, channels, 9, 28).init::<AB>(device).expect("reference configuration"));
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init::<AB, vesalius_nets::Classifier<AB>>();
    let step = || {
        let m = model.take().expect("model present between steps");
        let loss = burn::nn::loss::CrossEntropyLossConfig::new().init(device).forward(m.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let m = optim.step(1e-3, m, grads);
        // Reading one value waits for every queued kernel on asynchronous backends.
        let _ = m.valid();
        model = Some(m);
    };
    time_steps(step)
}

/// Times Adam training steps of `model` on the loss `loss(model)`.
fn train_workload<AB: AutodiffBackend, M: AutodiffModule<AB>>(model: M, lr: f64, loss: impl Fn(&M) -> Tensor<AB, 1>) -> Timing {
    let mut model = Some(model);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init::<AB, M>();
    let step = || {
        let m = model.take().expect("model present between steps");
        let grads = GradientsParams::from_grads(loss(&m).backward(), &m);
        let m = optim.step(lr, m, grads);
        let _ = m.valid();
        model = Some(m);
    };
    time_steps(step)
}

/// Times inference (no autodiff, evaluation mode); reading the output sum waits for asynchronous backends.
fn infer_workload<B: Backend, const D: usize>(run: impl Fn() -> Tensor<B, D>) -> Timing {
    time_steps(|| {
        let _ = run().sum().into_scalar();
    })
}

fn labels<B: Backend>(shape: [usize; 4], device: &B::Device) -> Tensor<B, 4, Int> {
    Tensor::<B, 4>::random(shape, Distribution::Uniform(0.0, 2.0), device).int()
}

fn run_one<AB: AutodiffBackend>(name: &str, device: &AB::Device, backend: &str) -> Result<BenchResult, CliError> {
    type Inner<AB> = <AB as AutodiffBackend>::InnerBackend;
    AB::seed(device, 0);
    let normal = Distribution::Normal(0.0, 1.0);
    let (batch, timing) = match name {
        "a_lenet5_train" => (128, classifier_workload::<AB>(Arch::LeNet5, 1, device)),
        "b_resnet18_train" => (128, classifier_workload::<AB>(Arch::ResNet18, 3, device)),
        "c_unet2d_train" => {
            let x = Tensor::<AB, 5>::random([8, 1, 1, 128, 128], normal, device);
            let y = labels::<AB>([8, 1, 128, 128], device);
            let model = UNetConfig::reference_2d(1, 2).init::<AB>(device);
            (
                8,
                train_workload(model, 1e-3, |m| {
                    let logits = m.forward(x.clone());
                    soft_dice(logits.clone(), y.clone()) + voxel_cross_entropy(logits, y.clone())
                }),
            )
        }
        "c_unet2d_infer" => {
            let x = Tensor::<Inner<AB>, 5>::random([8, 1, 1, 128, 128], normal, device);
            let model = UNetConfig::reference_2d(1, 2).init::<AB>(device).valid();
            (8, infer_workload(|| model.forward(x.clone())))
        }
        "d_unet3d_train" => {
            let x = Tensor::<AB, 5>::random([2, 1, 64, 64, 64], normal, device);
            let y = labels::<AB>([2, 64, 64, 64], device);
            let model = UNetConfig::reference_3d(1, 2).init::<AB>(device);
            (2, train_workload(model, 1e-3, |m| soft_dice(m.forward(x.clone()), y.clone())))
        }
        "d_unet3d_infer96" => {
            let x = Tensor::<Inner<AB>, 5>::random([1, 1, 96, 96, 96], normal, device);
            let model = UNetConfig::reference_3d(1, 2).init::<AB>(device).valid();
            (1, infer_workload(|| model.forward(x.clone())))
        }
        "e_convae_train" => {
            let clean = Tensor::<AB, 4>::random([64, 1, 64, 64], Distribution::Default, device);
            let noisy = clean.clone() + Tensor::<AB, 4>::random([64, 1, 64, 64], normal, device) * 0.1;
            let model = ConvAutoencoderConfig::reference().init::<AB>(device);
            (64, train_workload(model, 1e-3, |m| mse(m.forward(noisy.clone()), clean.clone())))
        }
        "f_cnnlstm_train" => {
            let x = Tensor::<AB, 5>::random([32, 10, 1, 32, 32], normal, device);
            let y: Vec<i64> = (0..32).map(|i| (i * 7 + 3) % 9).collect();
            let y = Tensor::<AB, 1, Int>::from_data(TensorData::new(y, [32]), device);
            let model = CnnLstmConfig::reference().init::<AB>(device);
            let ce = burn::nn::loss::CrossEntropyLossConfig::new().init(device);
            (32, train_workload(model, 1e-3, |m| ce.forward(m.forward(x.clone()), y.clone())))
        }
        "g_voxelmorph_train" => {
            let moving = Tensor::<AB, 5>::random([1, 1, 64, 64, 64], Distribution::Default, device);
            let fixed = Tensor::<AB, 5>::random([1, 1, 64, 64, 64], Distribution::Default, device);
            let model = VoxelMorphConfig::reference().init::<AB>(device);
            (
                1,
                train_workload(model, 1e-4, |m| {
                    let (warped, flow) = m.forward(moving.clone(), fixed.clone());
                    mse(warped, fixed.clone()) + grad_l2(flow) * 0.01
                }),
            )
        }
        "g_voxelmorph_infer" => {
            let moving = Tensor::<Inner<AB>, 5>::random([1, 1, 64, 64, 64], Distribution::Default, device);
            let fixed = Tensor::<Inner<AB>, 5>::random([1, 1, 64, 64, 64], Distribution::Default, device);
            let model = VoxelMorphConfig::reference().init::<AB>(device).valid();
            (1, infer_workload(|| model.forward(moving.clone(), fixed.clone()).0))
        }
        "h_redcnn_train" => {
            let clean = Tensor::<AB, 4>::random([16, 1, 64, 64], Distribution::Default, device);
            let noisy = clean.clone() + Tensor::<AB, 4>::random([16, 1, 64, 64], normal, device) * 0.1;
            let model = RedCnnConfig::new().init::<AB>(device);
            (16, train_workload(model, 1e-4, |m| mse(m.forward(noisy.clone()), clean.clone())))
        }
        "i_crnn_train" => {
            let (b, n) = (2, 128);
            let target = Tensor::<AB, 4>::random([b, 2, n, n], Distribution::Default, device);
            let rows: Vec<f32> = (0..b * n * n).map(|i| if (i / n) % n % 4 == 0 { 1.0 } else { 0.0 }).collect();
            let mask = Tensor::<AB, 4>::from_data(TensorData::new(rows, [b, 1, n, n]), device);
            let slice = |t: Tensor<AB, 4>, c: usize| t.slice([0..b, c..c + 1, 0..n, 0..n]);
            let (kr, ki) = vesalius_nets::dft2(slice(target.clone(), 0), slice(target.clone(), 1), false);
            let (kr, ki) = (kr * mask.clone(), ki * mask.clone());
            let (xr, xi) = vesalius_nets::dft2(kr.clone(), ki.clone(), true);
            let (k0, x0) = (Tensor::cat(vec![kr, ki], 1), Tensor::cat(vec![xr, xi], 1));
            let model = CrnnConfig::new().init::<AB>(device);
            (b, train_workload(model, 1e-3, |m| mse(m.forward(x0.clone(), k0.clone(), mask.clone()), target.clone())))
        }
        "j_deepsurv_train" => {
            let rows = 1024;
            let x = Tensor::<AB, 4>::random([rows, 20, 1, 1], normal, device);
            let events: Vec<f32> = (0..rows).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
            let n_events = events.iter().sum::<f32>() as f64;
            let events = Tensor::<AB, 1>::from_data(TensorData::new(events, [rows]), device);
            let group_end = Tensor::<AB, 1, Int>::from_data(TensorData::new((0..rows as i64).collect::<Vec<_>>(), [rows]), device);
            let model = MlpConfig::new(20, 1).init::<AB>(device);
            (
                rows,
                train_workload(model, 1e-3, |m| {
                    let eta = m.forward(x.clone()).reshape([rows]);
                    vesalius_prediction::deepsurv::cox_loss(eta, group_end.clone(), events.clone(), n_events)
                }),
            )
        }
        "k_centre3d_train" => {
            // The centre-point detector of recipes/nodules-3d.toml: a 3D U-Net [16, 32, 64] with instance norm, batch 4
            // of 32³ patches, CenterNet's focal loss on a heatmap whose peaks are exactly 1 plus the L1 size term.
            let (b, side) = (4, 32);
            let voxels = b * side * side * side;
            let heat: Vec<f32> = (0..voxels).map(|i| (-((i % 97) as f32) / 8.0).exp()).collect();
            let mask: Vec<f32> = heat.iter().map(|&h| if h >= 0.9999 { 1.0 } else { 0.0 }).collect();
            let t = |v: Vec<f32>| Tensor::<AB, 5>::from_data(TensorData::new(v, [b, 1, side, side, side]), device);
            let (heat, size, mask) = (t(heat), t(vec![1.0; voxels]), t(mask));
            let x = Tensor::<AB, 5>::random([b, 1, side, side, side], normal, device);
            let model = UNetConfig::new(3, 1, 2, vec![16, 32, 64]).with_norm(NormKind::Instance).init::<AB>(device);
            (
                b,
                train_workload(model, 1e-3, |m| {
                    vesalius_detection::model::centre_loss(m.forward(x.clone()), heat.clone(), size.clone(), mask.clone())
                }),
            )
        }
        "sliding_window_256" => (1, sliding_window_256::<Inner<AB>>(device)?),
        "loader_nifti_96_cold" => (LOADER_BATCH, loader_workload(false)?),
        "loader_nifti_96_cached" => (LOADER_BATCH, loader_workload(true)?),
        "retrieval_exact_100k" => return retrieval_workload(100_000, false, backend, name),
        "retrieval_hnsw_100k" => return retrieval_workload(100_000, true, backend, name),
        "retrieval_exact_1m" => return retrieval_workload(1_000_000, false, backend, name),
        "retrieval_hnsw_1m" => return retrieval_workload(1_000_000, true, backend, name),
        "register_affine_1mm" => return register_affine_workload::<AB>(device, backend, name),
        "register_bspline_1mm" => return register_pair_workload::<AB>(device, backend, name, PairStage::BSpline),
        "register_bspline_sampled_1mm" => return register_pair_workload::<AB>(device, backend, name, PairStage::SampledBSpline),
        "register_dense_1mm" => return register_pair_workload::<AB>(device, backend, name, PairStage::Dense),
        other => return Err(CliError::Usage(format!("unknown workload '{other}' (known: {})", known()))),
    };
    Ok(result(name, backend, batch as f64, timing))
}

/// `vesalius bench`: each workload in a fresh process (as the reference harness does) unless `in_process`.
pub fn run(backend: BackendKind, only: &[String], in_process: bool) -> Result<(), CliError> {
    let names: Vec<String> = if only.is_empty() {
        WORKLOADS.iter().chain(&TASK_WORKLOADS).chain(&PIPELINE_WORKLOADS).map(|s| s.to_string()).collect()
    } else {
        only.to_vec()
    };
    for n in &names {
        if ![&WORKLOADS[..], &TASK_WORKLOADS, &PIPELINE_WORKLOADS, &RETRIEVAL_WORKLOADS, &REGISTRATION_WORKLOADS]
            .iter()
            .any(|w| w.contains(&n.as_str()))
        {
            return Err(CliError::Usage(format!("unknown workload '{n}' (known: {})", known())));
        }
    }
    if !in_process {
        let exe = std::env::current_exe().map_err(|e| CliError::Internal(e.to_string()))?;
        for n in &names {
            let status = std::process::Command::new(&exe)
                .args(["--backend", &backend.to_string(), "bench", "--in-process", "--only", n])
                .status()
                .map_err(|e| CliError::Internal(format!("cannot start {}: {e}", exe.display())))?;
            if !status.success() {
                return Err(CliError::Internal(format!("workload {n} failed ({status})")));
            }
        }
        return Ok(());
    }
    for n in &names {
        let result = with_backend!(backend, |B, AB, device| run_one::<AB>(n, &device, &backend.to_string()))?;
        println!("{}", serde_json::to_string(&result).map_err(|e| CliError::Internal(e.to_string()))?);
    }
    Ok(())
}

fn known() -> String {
    WORKLOADS
        .iter()
        .chain(&TASK_WORKLOADS)
        .chain(&PIPELINE_WORKLOADS)
        .chain(&RETRIEVAL_WORKLOADS)
        .chain(&REGISTRATION_WORKLOADS)
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// A smooth head-like phantom: an ellipsoid of tissue with a brighter core, on a dark background.
fn phantom(shape: [usize; 3], seed: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(shape.iter().product());
    for z in 0..shape[2] {
        for y in 0..shape[1] {
            for x in 0..shape[0] {
                let r = |i: usize, n: usize| (i as f64 - n as f64 / 2.0) / (n as f64 * 0.4);
                let d = r(x, shape[0]).powi(2) + r(y, shape[1]).powi(2) + r(z, shape[2]).powi(2);
                let texture = ((x * 7 + y * 13 + z * 5 + seed * 31) % 23) as f64;
                v.push(if d < 1.0 { (600.0 + 400.0 * (1.0 - d) + texture) as f32 } else { texture as f32 });
            }
        }
    }
    v
}

/// Sliding-window inference of a 256³ volume: windows of 96³, overlap 0.5, Gaussian weights, batch 1, with the 3D
/// U-Net of workload d and a softmax; labels kept, no per-class maps. One run is timed (125 windows).
fn sliding_window_256<B: Backend>(device: &B::Device) -> Result<Timing, CliError> {
    use vesalius_train::sliding::SlidingWindow;
    let shape = [256usize, 256, 256];
    let image = vesalius_data::Image::new(phantom(shape, 0), shape.to_vec(), 1, vesalius_data::IDENTITY, "float32")
        .map_err(|e| CliError::Internal(e.to_string()))?;
    let model = UNetConfig::reference_3d(1, 2).init::<B>(device);
    let sw = SlidingWindow { roi: vec![96, 96, 96], overlap: 0.5, batch: 1, ..SlidingWindow::default() };
    let run = || sw.run::<B>(&image, device, |x| burn::tensor::activation::softmax(model.forward(x), 1));
    let before = minor_faults();
    let t = Instant::now();
    let out = run().map_err(|e| CliError::Internal(e.to_string()))?;
    let s = t.elapsed().as_secs_f64();
    if out.labels.len() != 256 * 256 * 256 || out.windows != 125 {
        return Err(CliError::Internal(format!("sliding window covered {} windows", out.windows)));
    }
    Ok(Timing::of(vec![s], before, None))
}

/// Patches per loader call in the loader workloads.
const LOADER_BATCH: usize = 4;

/// Random 96³ patches with augmentation (flips, small affine, noise, contrast) from four 192×192×160 `int16`
/// `.nii.gz` volumes, on two worker threads; `cached`: through the disk cache (filled before timing), else
/// decoded from gzip for every patch.
fn loader_workload(cached: bool) -> Result<Timing, CliError> {
    use vesalius_data::cache::DiskCache;
    use vesalius_data::loader::{Cases, LoaderConfig, PatchLoader};
    use vesalius_data::msd::Case;
    use vesalius_data::patch::{PatchSampler, Sampling};
    use vesalius_data::transforms::{Pipeline, Transform};
    let internal = |e: vesalius_data::DataError| CliError::Internal(e.to_string());
    let dir = std::env::temp_dir().join(format!("vesalius-bench-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| CliError::Internal(e.to_string()))?;
    let shape = [192usize, 192, 160];
    let mut cases = Vec::new();
    for i in 0..4 {
        let img = vesalius_data::Image::new(phantom(shape, i), shape.to_vec(), 1, vesalius_data::IDENTITY, "int16").map_err(internal)?;
        let lab: Vec<f32> = img.data().iter().map(|&v| (v > 800.0) as u8 as f32).collect();
        let lab = vesalius_data::Image::new(lab, shape.to_vec(), 1, vesalius_data::IDENTITY, "uint8").map_err(internal)?;
        let (ip, lp) = (dir.join(format!("img{i}.nii.gz")), dir.join(format!("lab{i}.nii.gz")));
        vesalius_io::nifti::save(&ip, &img, vesalius_io::nifti::NiftiType::I16).map_err(internal)?;
        vesalius_io::nifti::save(&lp, &lab, vesalius_io::nifti::NiftiType::U8).map_err(internal)?;
        cases.push(Case { id: format!("c{i}"), patient: format!("p{i}"), images: vec![ip], label: Some(lp), stratum: None });
    }
    let preprocess = Pipeline { transforms: vec![Transform::ZScore { mask: Default::default() }] };
    let augment = Pipeline {
        transforms: vec![
            Transform::RandFlip { prob: 0.5, axes: vec![0, 1, 2] },
            Transform::RandAffine { prob: 0.2, rotate: vec![15.0], scale: 0.1, shear: 0.0, translate: vec![] },
            Transform::RandGaussianNoise { prob: 0.15, std: [0.0, 0.1] },
            Transform::RandScaleShift { prob: 0.15, scale: [0.75, 1.25], shift: [0.0, 0.0] },
        ],
    };
    let disk = DiskCache::new(dir.join("cache")).map_err(internal)?;
    let source = if cached {
        Cases::Cached { cases: &cases, preprocess: &preprocess, disk: &disk, memory: None }
    } else {
        Cases::Files { cases: &cases, preprocess: &preprocess }
    };
    if cached {
        for i in 0..cases.len() {
            source.volume(i).map_err(internal)?;
        }
    }
    let config = LoaderConfig {
        sampler: PatchSampler { patch: vec![96, 96, 96], sampling: Sampling::LabelBalanced { foreground: 1.0 / 3.0 } },
        augment,
        batch: LOADER_BATCH,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        seed: 0,
    };
    let loader = PatchLoader::new(&source, config);
    let mut epoch = 0u64;
    let mut failure = None;
    let timing = time_steps(|| {
        epoch += 1;
        if let Err(e) = loader.run(epoch, LOADER_BATCH, |_, p| {
            std::hint::black_box(p);
            Ok(())
        }) {
            failure = Some(e);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    match failure {
        Some(e) => Err(internal(e)),
        None => Ok(timing),
    }
}

#[cfg(test)]
mod tests {
    use super::{process_mib, time_steps};

    #[test]
    fn the_first_step_is_reported_apart_from_the_timed_ones() {
        // A first call that pays a one-off cost (as kernel compilation and tuning do) and cheap calls after it.
        let mut calls = 0;
        let timing = time_steps(|| {
            calls += 1;
            if calls == 1 {
                std::thread::sleep(std::time::Duration::from_millis(60));
            }
        });
        assert!(timing.first_step_s.is_some_and(|s| s >= 0.06), "{:?}", timing.first_step_s);
        assert!(timing.max_s < 0.06, "the first call was timed: {}", timing.max_s);
        // One first call, two calls that set the count, then the timed ones.
        assert_eq!(calls, 3 + timing.steps);
    }

    #[test]
    fn gpu_memory_is_summed_over_the_process_lines() {
        let csv = "4242, 1536\n17, 900\n4242, 512\n";
        assert_eq!(process_mib(csv, 4242), Some(2048.0));
        assert_eq!(process_mib(csv, 17), Some(900.0));
        assert_eq!(process_mib(csv, 5), None);
        assert_eq!(process_mib("", 5), None);
        // A value nvidia-smi could not read ("[N/A]") is no figure rather than a wrong one.
        assert_eq!(process_mib("4242, [N/A]\n", 4242), None);
    }
}
