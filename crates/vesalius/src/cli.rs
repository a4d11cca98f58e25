//! Command-line arguments and dispatch.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::backend::{BackendKind, default_backend};
use crate::{CliError, commands};

/// Deep learning for medical imaging.
#[derive(Debug, Parser)]
#[command(name = "vesalius", version, about, long_about = None)]
pub struct Cli {
    /// Compute backend (default: the fastest CPU backend compiled in).
    #[arg(long, global = true)]
    pub backend: Option<BackendKind>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train from a recipe into a run directory (resumes an interrupted run in the same directory). The recipe is a
    /// classification recipe, a segmentation recipe (`task = "segmentation"`), a learned-registration recipe
    /// (`task = "registration"`), or a Medical Segmentation Decathlon / nnU-Net dataset folder (segmentation with
    /// every default).
    Train {
        /// The recipe (TOML) or dataset folder.
        recipe: PathBuf,
        /// Run directory (default: runs/<recipe name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress display.
        #[arg(long)]
        quiet: bool,
        /// Segmentation: number of epochs instead of the recipe's (nnU-Net's short-trainer variants).
        /// Registration: number of training steps of the deformable network.
        #[arg(long)]
        epochs: Option<usize>,
        /// Segmentation: batches per epoch instead of the recipe's.
        #[arg(long)]
        iterations: Option<usize>,
        /// Stop after this many epochs (the run resumes from there when trained again); any task trained on the
        /// engine.
        #[arg(long)]
        max_epochs: Option<usize>,
        /// Data-parallel training: every batch split across this many devices, their gradients summed before each
        /// step (the backend's devices of the training device's kind, or replicas of it where there are fewer).
        #[arg(long, default_value_t = 1)]
        devices: usize,
    },
    /// Hyper-parameter search over a recipe: trials drawn from a search space (any recipe key: uniform,
    /// log-uniform, integer, choice), trained as ordinary runs in the study folder, shared out by a scheduler or
    /// stopped early by learning-curve extrapolation. Writes `trials.csv`, `best.toml` and `summary.json`; the
    /// same command resumes a killed study.
    Tune {
        /// The recipe (any task trained on the engine).
        recipe: PathBuf,
        /// The search space (TOML: one `[params."key"]` table per recipe key).
        #[arg(long)]
        space: PathBuf,
        /// The study folder.
        #[arg(short, long)]
        out: PathBuf,
        /// The study's settings.
        #[command(flatten)]
        options: crate::tune::TuneArgs,
    },
    /// Evaluate a run's best model; prints and writes the metrics. Classification: on one of its splits;
    /// segmentation: on its validation cases, in their own grids (`metrics.json`); registration: on its
    /// validation pairs (Dice before and after, HD95, folding, field error for synthetic pairs, time per pair);
    /// detection: FROC and CPM on its test images. Without a run, `--truth` and `--detections` score any CAD
    /// system's LUNA16 CSV files as the LUNA16 evaluation does and print the result as JSON.
    Evaluate {
        /// The run directory.
        #[arg(long, required_unless_present = "truth", conflicts_with = "truth")]
        run: Option<PathBuf>,
        /// Detection files: reference nodules (LUNA16 CSV `seriesuid,coordX,coordY,coordZ,diameter_mm`).
        #[arg(long, requires = "detections")]
        truth: Option<PathBuf>,
        /// Detection files: the system's marks (LUNA16 CSV `seriesuid,coordX,coordY,coordZ,probability`).
        #[arg(long, requires = "truth")]
        detections: Option<PathBuf>,
        /// Detection files: findings whose marks are neither true nor false positives (LUNA16's
        /// annotations_excluded.csv; diameter -1 reads as 10 mm).
        #[arg(long, requires = "truth")]
        exclude: Option<PathBuf>,
        /// Detection files: every scan of the evaluation (`seriesuid` column), so scans without nodules or marks
        /// count in false positives per scan. Default: the scans named in the other files.
        #[arg(long, requires = "truth")]
        scans: Option<PathBuf>,
        /// Detection files: write the FROC curve here (CSV `fps_per_scan,sensitivity,threshold`).
        #[arg(long, requires = "truth")]
        froc: Option<PathBuf>,
        /// Detection files: marks kept per scan, the most probable first (LUNA16: 100; 0 keeps all).
        #[arg(long, default_value_t = 100, requires = "truth")]
        max_marks: usize,
        /// Detection files: the coordinate frame of the CSV files, LPS (LUNA16, ITK, DICOM) or RAS.
        #[arg(long, default_value = "LPS", requires = "truth")]
        frame: String,
        /// Split to evaluate: test (written to metrics.json), val or train (metrics-<split>.json).
        #[arg(long, default_value = "test")]
        split: String,
        /// Segmentation: flip test-time augmentation.
        #[arg(long)]
        tta: bool,
        /// Registration: also register the validation pairs by optimisation with this method (affine, deformable,
        /// affine+deformable) and the run's similarity, for comparison.
        #[arg(long)]
        optimisation: Option<String>,
    },
    /// Predict with a run's best model. Classification: class probabilities as CSV. Segmentation: one label map
    /// per input (NIfTI, in the input's grid and affine) in the output folder.
    Predict {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Image files (PNG, JPEG, TIFF, NIfTI; `CASE_0000.nii.gz` brings its other channels along).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Classification: write the CSV here instead of standard output. Segmentation: output folder.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Segmentation: also write per-class probability maps (`<name>_probabilities.nii.gz`).
        #[arg(long)]
        probabilities: bool,
        /// Segmentation: flip test-time augmentation.
        #[arg(long)]
        tta: bool,
        /// Enhancement runs that reconstruct k-space (CRNN): the sampling mask of the inputs, which are zero-filled
        /// complex images (`vesalius degrade --model kspace` writes both).
        #[arg(long)]
        mask: Option<PathBuf>,
    },
    /// Degrade an image with a seeded model, as enhancement recipes make their inputs: low-dose-ct (--dose),
    /// thick-slice (--factor, --axis), downsample (--factor), kspace (--acceleration, --centre; the mask is written
    /// beside the output as NAME_mask), gaussian or rician (--sigma).
    Degrade {
        /// The clean image (a CT in HU for low-dose-ct).
        input: PathBuf,
        /// The degraded output (.nii, .nii.gz, .png, .tif).
        output: PathBuf,
        /// Degradation model.
        #[arg(long)]
        model: String,
        /// Seed of the random draws (the same seed gives the same output).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// low-dose-ct: fraction of the full dose (0.25: quarter dose).
        #[arg(long)]
        dose: Option<f64>,
        /// low-dose-ct: full-dose incident photons per ray (default 1e5).
        #[arg(long)]
        photons: Option<f64>,
        /// low-dose-ct: projection angles over 180° (default: π/2 × detector bins, at most 720).
        #[arg(long)]
        angles: Option<usize>,
        /// thick-slice and downsample: voxels per output voxel.
        #[arg(long)]
        factor: Option<usize>,
        /// thick-slice: voxel axis (default 2).
        #[arg(long)]
        axis: Option<usize>,
        /// kspace: acceleration R.
        #[arg(long)]
        acceleration: Option<f64>,
        /// kspace: fully sampled centre fraction (default 0.08).
        #[arg(long)]
        centre: Option<f64>,
        /// gaussian and rician: noise standard deviation (image units).
        #[arg(long)]
        sigma: Option<f64>,
    },
    /// Explain a classification run's decision for images: saliency, SmoothGrad, Grad-CAM, occlusion or LIME. Writes
    /// `OUT/<image>_<method>.nii.gz` (the map on the image's grid), `OUT/<image>_<method>.png` (an overlay: warm where
    /// the map supports the class, blue where LIME's weights oppose it) and prints one JSON line per image.
    Explain {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Images (as the run was trained on: PNG, JPEG, TIFF, 2D NIfTI).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// saliency, smoothgrad, gradcam, occlusion or lime.
        #[arg(long)]
        method: String,
        /// The class explained (index; default: the predicted class).
        #[arg(long)]
        class: Option<usize>,
        /// Grad-CAM: the layer (0 = the first convolutional layer; default: the last).
        #[arg(long)]
        layer: Option<usize>,
        /// SmoothGrad copies (default 25) or LIME samples (default 1000).
        #[arg(long)]
        samples: Option<usize>,
        /// Occlusion: patch side in network pixels (default: an eighth of the input).
        #[arg(long)]
        patch: Option<usize>,
        /// Occlusion: stride in network pixels (default: half the patch).
        #[arg(long)]
        stride: Option<usize>,
        /// LIME: number of superpixels (default 50).
        #[arg(long)]
        segments: Option<usize>,
        /// Seed of SmoothGrad's noise and LIME's samples.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Segmentation runs: the region whose class probability is explained (a mask on the image's grid;
        /// default: where the run segments the class).
        #[arg(long)]
        mask: Option<PathBuf>,
        /// Output folder.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Embeddings of images by a classification run's network (its penultimate layer: the fully connected features
    /// of LeNet-5, AlexNet and VGG, the pooled last maps of ResNet and GoogLeNet, a stacked auto-encoder's code) as a
    /// CSV feature table (`path,f0,f1,…`) for classic models.
    Embed {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// The CSV file to write (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write a self-contained HTML report of a run: test metrics with intervals, learning curves, ROC with
    /// confidence bands, calibration, FROC, confusion matrices, sortable per-case tables and the run's images.
    Report {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// The HTML file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Radiomics: IBSI features (first-order, shape, GLCM, GLRLM, GLSZM, NGLDM/GLDM, NGTDM) of each label of each
    /// mask, one CSV row per image and label (columns `image,mask,label`, then the features).
    Radiomics {
        /// Image and mask files, in pairs: IMAGE MASK [IMAGE MASK …]. A DICOM folder may stand for an image.
        #[arg(required = true, num_args = 2.., value_name = "IMAGE MASK")]
        files: Vec<PathBuf>,
        /// Only this label (default: every non-zero label of each mask).
        #[arg(long)]
        label: Option<f32>,
        /// Settings file (TOML: bin_width, bin_count, bin_origin = "roi-minimum" | "zero", resample = [mm, …],
        /// resegment = [lo, hi], families = ["stat", "ih", "morph", "cm", "rlm", "szm", "ngl", "ngt"]).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Fixed bin width (overrides the settings file; default 25).
        #[arg(long, conflicts_with = "bin_count")]
        bin_width: Option<f64>,
        /// Fixed bin number (overrides the settings file).
        #[arg(long)]
        bin_count: Option<usize>,
        /// The CSV file to write (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write a classification recipe's samples (a MedMNIST archive, a volume's patches, any source) as 8-bit PNG files
    /// `OUT/<split>/<nnnnn>.png` with `OUT/manifest.csv` (`path,label,patient_id,split,source_id`), the splits those
    /// the recipe's run uses.
    Samples {
        /// The classification recipe.
        recipe: PathBuf,
        /// Splits to write, comma-separated (train, val, test; default: all).
        #[arg(long, value_delimiter = ',')]
        split: Vec<String>,
        /// The output folder.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Convert an image between formats (NIfTI, MetaImage, PNG, TIFF in; NIfTI, PNG, TIFF out), keeping its
    /// geometry and stored type.
    Convert {
        /// The input image.
        input: PathBuf,
        /// The output file; its extension picks the format (.nii, .nii.gz, .hdr for a .hdr/.img pair, .png,
        /// .tif).
        output: PathBuf,
        /// Write NIfTI-2 (64-bit dimensions, double-precision geometry) instead of NIfTI-1.
        #[arg(long)]
        nifti2: bool,
        /// The SeriesInstanceUID to convert when a DICOM folder holds several series.
        #[arg(long)]
        series: Option<String>,
        /// Write one 2D slice of a volume, `AXIS:INDEX` over voxel axes 0, 1, 2 (`2:90`: axial slice 90 of an
        /// RAS-stored volume), placed where it lies in the volume.
        #[arg(long)]
        slice: Option<String>,
    },
    /// De-identify DICOM files (a file, or a folder into a mirrored folder) by the PS3.15 Annex E basic profile;
    /// prints counts only, never identifiers.
    Deid {
        /// A DICOM file or folder.
        input: PathBuf,
        /// The output file or folder.
        output: PathBuf,
        /// Keep private (odd-group) attributes; by default they are removed.
        #[arg(long)]
        keep_private: bool,
    },
    /// Print format, shape, data type, spacing, affine and orientation of an image as JSON.
    Info {
        /// The image file, or a DICOM folder (several series are listed unless one is chosen).
        path: PathBuf,
        /// The SeriesInstanceUID to describe when a DICOM folder holds several series.
        #[arg(long)]
        series: Option<String>,
    },
    /// Register a moving image to a fixed one (affine and/or deformable optimisation, or a trained run's networks
    /// with --run) and write the moving image resampled on the fixed grid; optionally the displacement field
    /// (NIfTI, mm) and warped label maps.
    Register {
        /// The fixed image (its grid and affine are the outputs').
        #[arg(long)]
        fixed: PathBuf,
        /// The moving image.
        #[arg(long)]
        moving: PathBuf,
        /// The warped moving image (.nii, .nii.gz, .png, .tif).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Write the displacement field here: a NIfTI image on the fixed grid with three channels, the world (RAS+)
        /// displacement in millimetres.
        #[arg(long)]
        field: Option<PathBuf>,
        /// A label map on the moving image's grid to carry along (nearest neighbour).
        #[arg(long, requires = "labels_out")]
        labels: Option<PathBuf>,
        /// Where to write the warped label map.
        #[arg(long, requires = "labels")]
        labels_out: Option<PathBuf>,
        /// The fixed image's label map: with --labels, Dice, IoU, HD95 and ASSD per label before and after
        /// registration go to --metrics.
        #[arg(long, requires_all = ["labels", "metrics"])]
        fixed_labels: Option<PathBuf>,
        /// Where to write the evaluation (JSON): Jacobian statistics, label metrics with --fixed-labels, target
        /// registration error with --landmarks.
        #[arg(long)]
        metrics: Option<PathBuf>,
        /// Landmark pairs (CSV: fixed_x, fixed_y, fixed_z, moving_x, moving_y, moving_z in world mm): target
        /// registration error before and after.
        #[arg(long)]
        landmarks: Option<PathBuf>,
        /// affine, deformable or affine+deformable.
        #[arg(long, default_value = "affine+deformable")]
        method: String,
        /// auto (Mattes mutual information for the affine stage and the B-spline; local normalised
        /// cross-correlation in 9-voxel windows for a dense field or a B-spline on every voxel: all tolerate
        /// contrast differences between subjects and scanners), mse, ncc (the affine stage and sampled B-splines:
        /// correlation of the sampled points; dense fields: local, 9-voxel windows) or mi (mutual information, for
        /// different modalities).
        #[arg(long, default_value = "auto")]
        similarity: String,
        /// Deformable stage: a cubic B-spline on control points, or a dense field (one vector a voxel).
        #[arg(long, default_value = "bspline", value_parser = ["dense", "bspline"])]
        deformation: String,
        /// B-spline control-point spacing, voxels of the fixed image.
        #[arg(long, default_value_t = 5)]
        control_spacing: usize,
        /// Points drawn at random per iteration by the affine and B-spline stages (similarity and gradient on them,
        /// as elastix and ANTs do; at most 10,000,000); 0 uses every voxel through automatic differentiation. Dense fields use every
        /// voxel.
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
        /// Deformable stage's regulariser: diffusion (first derivatives) or bending (second derivatives); by
        /// default bending for a B-spline and diffusion for a dense field.
        #[arg(long)]
        regulariser: Option<String>,
        /// Weight of the deformable stage's regulariser; by default 100 for a sampled B-spline, otherwise 50 for
        /// local correlation (auto, ncc) and 1 for mse and mi (docs/REGISTRATION.md).
        #[arg(long)]
        smoothness: Option<f64>,
        /// A learned-registration run directory: register with its trained networks instead of optimising.
        #[arg(long, conflicts_with_all = ["method", "similarity", "deformation", "control_spacing", "samples", "regulariser", "smoothness"])]
        run: Option<PathBuf>,
    },
    /// Index images for content-based retrieval: each image's embedding by a classification run's network (its
    /// penultimate layer, or a stacked auto-encoder's code), or with --pixels its input pixels. Writes the index folder (`meta.json`, `vectors.f32`, and `hnsw.mpk` with --approximate).
    Index {
        /// What to index and how.
        #[command(flatten)]
        args: crate::retrieval::IndexArgs,
        /// The index folder.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Search an index with query images (embedded as the index's images were): the `k` nearest items with their
    /// distances as CSV (`query,rank,id,distance,label`); or with --evaluate, every labelled item of the index queries
    /// the others (leaving out its own patient) and precision@k and mAP@k are printed and written.
    Search {
        /// The index folder.
        #[arg(long)]
        index: PathBuf,
        /// Query images.
        queries: Vec<PathBuf>,
        /// Neighbours per query.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Search through the HNSW graph instead of exhaustively.
        #[arg(long)]
        approximate: bool,
        /// Score the index's labelled items against each other instead of searching queries.
        #[arg(long, conflicts_with = "queries")]
        evaluate: bool,
        /// Write the CSV here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write a classification or segmentation run's best network to a safetensors file: under torchvision's names
    /// (ResNet, VGG, AlexNet, GoogLeNet; the default for them), MONAI's `BasicUNet` names, or Vesalius's own (the
    /// default otherwise), with PyTorch's tensor layouts, for PyTorch or for another recipe's `[model] init`.
    Export {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// vesalius, torchvision or monai.
        #[arg(long)]
        naming: Option<String>,
        /// The safetensors file.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Semi-automatic labelling of segmentation and classification data: `suggest` ranks unlabelled images by the
    /// run's uncertainty and pre-labels the most uncertain for correction (label maps for ITK-SNAP or 3D Slicer, or a
    /// `path,label` CSV); `accept` adds the corrected labels to the recipe, whose training then starts from the run's
    /// network.
    Label {
        /// suggest or accept.
        #[command(subcommand)]
        action: LabelAction,
    },
    /// Run the reference training workloads and print one JSON line each.
    Bench {
        /// Comma-separated workload names (default: all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Run the workloads in this process instead of one fresh process each.
        #[arg(long, hide = true)]
        in_process: bool,
    },
}

/// The two steps of `vesalius label`.
#[derive(Debug, Subcommand)]
pub enum LabelAction {
    /// Rank the pool's images (those the run has not trained on) by uncertainty: `OUT/suggestions.csv`
    /// (`rank,image,score`, most uncertain first) and the run's segmentation of the first `n` as `OUT/<name>.nii.gz`,
    /// or, for a classification run, their predicted classes in `OUT/labels.csv` (`path,label`).
    Suggest {
        /// The segmentation or classification run.
        #[arg(long)]
        run: PathBuf,
        /// Folder of unlabelled images (NIfTI, MetaImage, PNG, TIFF).
        #[arg(long)]
        pool: PathBuf,
        /// Images to pre-label.
        #[arg(short, default_value_t = 5)]
        n: usize,
        /// entropy, tta (variance over mirrorings), mc-dropout (variance over dropout samples; a segmentation run
        /// needs `[plan] dropout`, a classifier dropout layers: alexnet, vgg, googlenet, mlp) or random.
        #[arg(long, default_value = "entropy")]
        method: String,
        /// Monte-Carlo dropout samples.
        #[arg(long, default_value_t = 8)]
        samples: usize,
        /// Seed of the dropout masks and of the random order.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output folder.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Add corrected label maps (named `<image name>.nii.gz`, as `suggest` wrote them) and their pool images to the
    /// recipe's cases, or, for a classification run, the rows of the corrected `labels.csv` to the recipe's manifest
    /// (written beside the new recipe as `<name>.manifest.csv`, the new images in the training split); the new recipe
    /// starts from the run's network (exported beside it as `<name>.init.safetensors`).
    Accept {
        /// The recipe the run was trained with (it must list its `cases`, or read a manifest).
        #[arg(long)]
        recipe: PathBuf,
        /// The run whose network the next training starts from.
        #[arg(long)]
        run: PathBuf,
        /// The folder of the images (required for segmentation; for classification every labelled image must lie in it).
        #[arg(long)]
        pool: Option<PathBuf>,
        /// The folder of corrected label maps, or the corrected `labels.csv` of a classification run.
        #[arg(long)]
        labels: PathBuf,
        /// The new recipe.
        #[arg(short, long)]
        out: PathBuf,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    crate::backend::check_cpu_isa(std::env::var_os("VESALIUS_CPU_ISA").as_deref())?;
    let backend = cli.backend.unwrap_or_else(default_backend);
    match cli.command {
        Command::Tune { recipe, space, out, options } => {
            let started = std::time::Instant::now();
            let summary = crate::tune::tune(cli.backend.map(|b| format!("{b:?}").to_lowercase()), &recipe, &space, &out, &options)?;
            print!("{}", crate::tune::format_summary(&summary, started.elapsed().as_secs_f64()));
            println!("study folder: {}", out.display());
            Ok(())
        }
        Command::Export { run, naming, out } => {
            let naming = match naming.as_deref() {
                None => None,
                Some(n) => Some(
                    serde_json::from_value::<vesalius_nets::transfer::Naming>(serde_json::Value::String(n.to_string()))
                        .map_err(|_| CliError::Usage(format!("--naming {n}: expected vesalius, torchvision or monai")))?,
                ),
            };
            let done = crate::export::export(backend, &run, naming, &out)?;
            println!("wrote {} tensors under {:?} names to {}", done.tensors, done.naming, out.display());
            Ok(())
        }
        Command::Label { action: LabelAction::Suggest { run, pool, n, method, samples, seed, out } } => {
            let method: vesalius_segmentation::label::Method = method.parse().map_err(CliError::Usage)?;
            if n == 0 {
                return Err(CliError::Usage("-n must be at least 1".into()));
            }
            let request = crate::label::Request { run: &run, pool: &pool, n, method, samples, seed, out: &out };
            let done = crate::label::suggest(backend, &request)?;
            for (i, r) in done.ranked.iter().take(n).enumerate() {
                println!("{:>3}  {:.6}  {}", i + 1, r.score, r.path.display());
            }
            println!("{} images ranked; pre-labels of the first {} in {}", done.ranked.len(), n.min(done.ranked.len()), out.display());
            Ok(())
        }
        Command::Label { action: LabelAction::Accept { recipe, run, pool, labels, out } } => {
            let added = crate::label::accept(backend, &recipe, &run, pool.as_deref(), &labels, &out)?;
            println!(
                "added {added} labelled cases; train the new recipe (it starts from the run's network): vesalius train {}",
                out.display()
            );
            Ok(())
        }
        Command::Index { args, out } => {
            let index = crate::retrieval::index(backend, &args, &out)?;
            let labelled = index.meta.labels.iter().filter(|l| l.is_some()).count();
            println!(
                "indexed {} items ({} labelled), {} values each{}",
                index.len(),
                labelled,
                index.meta.dim,
                if index.is_approximate() { ", with an HNSW graph" } else { "" }
            );
            println!("index folder: {}", out.display());
            Ok(())
        }
        Command::Search { index, queries, k, approximate, evaluate, output } => {
            if k == 0 {
                return Err(CliError::Usage("-k must be at least 1".into()));
            }
            if evaluate {
                let m = crate::retrieval::evaluate_index(&index, k, approximate)?;
                println!("{}", serde_json::to_string_pretty(&m).map_err(|e| CliError::Internal(e.to_string()))?);
                return Ok(());
            }
            if queries.is_empty() {
                return Err(CliError::Usage("give query images, or --evaluate".into()));
            }
            let csv = crate::retrieval::search(backend, &index, &queries, k, approximate)?;
            match output {
                Some(p) => vesalius_io::write_atomic(&p, csv.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?,
                None => print!("{csv}"),
            }
            Ok(())
        }
        Command::Train { recipe, out, quiet, epochs, iterations, max_epochs, devices } => {
            if max_epochs == Some(0) {
                return Err(CliError::Usage("--max-epochs must be at least 1".into()));
            }
            if devices == 0 || devices > vesalius_train::engine::MAX_DEVICES {
                return Err(CliError::Usage(format!("--devices must be between 1 and {}", vesalius_train::engine::MAX_DEVICES)));
            }
            vesalius_train::engine::set_epoch_limit(max_epochs);
            vesalius_train::engine::set_devices(devices);
            if crate::tabular::is_table_recipe(&recipe) {
                if epochs.is_some() || iterations.is_some() {
                    return Err(CliError::Usage("--epochs and --iterations do not apply to table recipes; set them in [model]".into()));
                }
                return crate::tabular::train(backend, &recipe, out);
            }
            if commands::recipe_task(&recipe).as_deref() == Some("volume-classification") {
                if epochs.is_some() || iterations.is_some() {
                    return Err(CliError::Usage(
                        "--epochs and --iterations do not apply to volume-classification recipes; set them in [train]".into(),
                    ));
                }
                return crate::volumes::train(backend, &recipe, out, quiet);
            }
            if commands::recipe_task(&recipe).as_deref() == Some("response") {
                if epochs.is_some() || iterations.is_some() {
                    return Err(CliError::Usage("--epochs and --iterations do not apply to response recipes; set them in [train]".into()));
                }
                return crate::response::train(backend, &recipe, out, quiet);
            }
            if commands::recipe_task(&recipe).as_deref() == Some("regression") {
                if epochs.is_some() || iterations.is_some() {
                    return Err(CliError::Usage(
                        "--epochs and --iterations do not apply to regression recipes; set steps in [model]".into(),
                    ));
                }
                return crate::regression::train(backend, &recipe, out);
            }
            if commands::recipe_task(&recipe).as_deref() == Some("survival") {
                if epochs.is_some() || iterations.is_some() {
                    return Err(CliError::Usage("--epochs and --iterations do not apply to survival models".into()));
                }
                crate::survival::train(backend, &recipe, out, quiet)
            } else if commands::recipe_task(&recipe).as_deref() == Some("stain-normalisation") {
                if epochs.is_some() || iterations.is_some() {
                    return Err(CliError::Usage("--epochs and --iterations do not apply to stain normalisation".into()));
                }
                crate::enhance::stain(backend, &recipe, out)
            } else if commands::recipe_task(&recipe).as_deref() == Some("detection") {
                if epochs.is_some() || iterations.is_some() {
                    return Err(CliError::Usage(
                        "--epochs and --iterations apply to segmentation and registration; set them in the recipe".into(),
                    ));
                }
                crate::detect::train(backend, &recipe, out, quiet)
            } else if commands::recipe_task(&recipe).as_deref() == Some("enhancement") {
                if epochs.is_some() || iterations.is_some() {
                    return Err(CliError::Usage(
                        "--epochs and --iterations apply to segmentation and registration; set them in the recipe".into(),
                    ));
                }
                crate::enhance::train(backend, &recipe, out, quiet)
            } else if commands::recipe_task(&recipe).as_deref() == Some("registration") {
                if iterations.is_some() {
                    return Err(CliError::Usage("--iterations applies to segmentation; registration counts steps (--epochs)".into()));
                }
                commands::train_registration(backend, &recipe, out, quiet, epochs)
            } else if let Some(mut seg) = commands::segmentation_recipe(&recipe)? {
                if let Some(e) = epochs {
                    seg.train.epochs = e;
                }
                if let Some(i) = iterations {
                    seg.train.iterations = i;
                }
                seg.validate()?;
                commands::train_segmentation(backend, &recipe, seg, out, quiet)
            } else if epochs.is_some() || iterations.is_some() {
                Err(CliError::Usage("--epochs and --iterations apply to segmentation; set them in a classification recipe".into()))
            } else {
                commands::train(backend, &recipe, out, quiet)
            }
        }
        Command::Evaluate { run, truth, detections, exclude, scans, froc, max_marks, frame, split, tta, optimisation } => {
            let Some(run) = run else {
                let files = crate::detect::EvalFiles { truth, detections, exclude, scans, froc, max_marks, frame };
                return crate::detect::evaluate_files(&files);
            };
            if vesalius_cadx::tabular::is_run(&run) && !tta && optimisation.is_none() {
                crate::tabular::evaluate(&run, &split)
            } else if vesalius_prediction::train::is_run(&run) && !tta && optimisation.is_none() {
                crate::survival::evaluate(backend, &run, &split)
            } else if vesalius_cadx::volumes::is_run(&run) && !tta && optimisation.is_none() {
                crate::volumes::evaluate(backend, &run, &split)
            } else if vesalius_prediction::response::is_run(&run) && !tta && optimisation.is_none() {
                crate::response::evaluate(backend, &run, &split)
            } else if vesalius_prediction::regression::is_run(&run) && !tta && optimisation.is_none() {
                crate::regression::evaluate(backend, &run, &split)
            } else if vesalius_detection::train::is_run(&run) && !tta && optimisation.is_none() {
                crate::detect::evaluate(backend, &run, &split)
            } else if vesalius_enhancement::train::is_run(&run) && !tta && optimisation.is_none() {
                crate::enhance::evaluate(backend, &run, &split)
            } else if vesalius_registration::train::is_run(&run) {
                commands::evaluate_registration(backend, &run, optimisation.as_deref(), &split)
            } else if optimisation.is_some() {
                Err(CliError::Usage("--optimisation applies to registration runs".into()))
            } else if commands::is_segmentation_run(&run) {
                commands::evaluate_segmentation(backend, &run, tta, &split)
            } else {
                commands::evaluate(backend, &run, &split)
            }
        }
        Command::Predict { run, inputs, output, probabilities, tta, mask } => {
            if vesalius_cadx::tabular::is_run(&run) {
                if probabilities || tta || mask.is_some() {
                    return Err(CliError::Usage("--probabilities, --tta and --mask do not apply to table runs".into()));
                }
                crate::tabular::predict(backend, &run, &inputs, output.as_deref())
            } else if vesalius_prediction::train::is_run(&run) {
                if probabilities || tta || mask.is_some() {
                    return Err(CliError::Usage("--probabilities, --tta and --mask do not apply to survival runs".into()));
                }
                crate::survival::predict(backend, &run, &inputs, output.as_deref())
            } else if vesalius_prediction::response::is_run(&run) {
                if probabilities || tta {
                    return Err(CliError::Usage("--probabilities and --tta do not apply to response runs".into()));
                }
                crate::response::predict(backend, &run, &inputs, mask.as_deref(), output.as_deref())
            } else if vesalius_prediction::regression::is_run(&run) {
                if probabilities || tta || mask.is_some() {
                    return Err(CliError::Usage("--probabilities, --tta and --mask do not apply to regression runs".into()));
                }
                crate::regression::predict(backend, &run, &inputs, output.as_deref())
            } else if vesalius_detection::train::is_run(&run) {
                if probabilities || tta || mask.is_some() {
                    return Err(CliError::Usage("--probabilities, --tta and --mask do not apply to detection runs".into()));
                }
                crate::detect::predict(backend, &run, &inputs, output.as_deref())
            } else if vesalius_enhancement::train::is_run(&run) {
                if probabilities || tta {
                    return Err(CliError::Usage("--probabilities and --tta apply to segmentation runs".into()));
                }
                let out = output.ok_or_else(|| CliError::Usage("enhancement prediction needs an output folder (-o OUT)".into()))?;
                crate::enhance::predict(backend, &run, &inputs, &out, mask.as_deref())
            } else if mask.is_some() {
                Err(CliError::Usage("--mask applies to enhancement runs that reconstruct k-space".into()))
            } else if commands::is_segmentation_run(&run) {
                let out = output.ok_or_else(|| CliError::Usage("segmentation prediction needs an output folder (-o OUT)".into()))?;
                commands::predict_segmentation(backend, &run, &inputs, &out, probabilities, tta)
            } else {
                commands::predict(backend, &run, &inputs, output.as_deref())
            }
        }
        Command::Degrade { input, output, model, seed, dose, photons, angles, factor, axis, acceleration, centre, sigma } => {
            let args = crate::enhance::DegradeArgs { model, dose, photons, angles, factor, axis, acceleration, centre, sigma };
            crate::enhance::degrade(&input, &output, &args, seed)
        }
        Command::Explain { run, images, method, class, layer, samples, patch, stride, segments, seed, mask, output } => {
            let opts = vesalius_cadx::explain::ExplainOptions { class, layer, samples, patch, stride, segments, seed };
            if vesalius_prediction::response::is_run(&run) {
                crate::explain::run_response(backend, &run, &images, &method, &opts, mask.as_deref(), &output)
            } else if commands::is_segmentation_run(&run) {
                if layer.is_some() || patch.is_some() || stride.is_some() {
                    return Err(CliError::Usage("--layer, --patch and --stride apply to classification runs".into()));
                }
                crate::explain::run_segmentation(backend, &run, &images, &method, &opts, mask.as_deref(), &output)
            } else if mask.is_some() {
                Err(CliError::Usage("--mask applies to segmentation and response runs".into()))
            } else {
                crate::explain::run(backend, &run, &images, &method, &opts, &output)
            }
        }
        Command::Embed { run, images, output } => crate::explain::embed(backend, &run, &images, output.as_deref()),
        Command::Report { run, output } => {
            let html = vesalius_report::build(&run).map_err(|e| match e {
                vesalius_report::ReportError::Input(m) => CliError::Usage(m),
                other => CliError::Internal(other.to_string()),
            })?;
            vesalius_io::write_atomic(&output, html.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?;
            println!("{} ({} bytes)", output.display(), html.len());
            Ok(())
        }
        Command::Radiomics { files, label, config, bin_width, bin_count, output } => {
            crate::radiomics::run(&files, label, config.as_deref(), bin_width, bin_count, output.as_deref())
        }
        Command::Samples { recipe, split, out } => {
            let splits = split
                .iter()
                .map(|s| {
                    vesalius_data::source::Split::parse(s)
                        .ok_or_else(|| CliError::Usage(format!("--split {s}: expected train, val or test")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let done = crate::samples::samples(&recipe, &splits, &out)?;
            let counts: Vec<String> = done.per_split.iter().map(|(s, n)| format!("{n} {}", s.name())).collect();
            println!("wrote {} images ({}) and manifest.csv to {}", done.images, counts.join(", "), out.display());
            Ok(())
        }
        Command::Convert { input, output, nifti2, series, slice } => {
            let slice = match slice.as_deref() {
                None => None,
                Some(text) => {
                    let parsed =
                        text.split_once(':').and_then(|(a, i)| Some((a.trim().parse::<usize>().ok()?, i.trim().parse::<usize>().ok()?)));
                    Some(parsed.ok_or_else(|| CliError::Usage(format!("--slice {text}: expected AXIS:INDEX, e.g. 2:90")))?)
                }
            };
            commands::convert(&input, &output, nifti2, series.as_deref(), slice)
        }
        Command::Deid { input, output, keep_private } => {
            let report = vesalius_io::deid::Deidentifier::new(keep_private)?.run(&input, &output)?;
            println!("{}", serde_json::to_string(&report).map_err(|e| CliError::Internal(e.to_string()))?);
            Ok(())
        }
        Command::Info { path, series } => {
            let json = commands::info_json(&path, series.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&json).map_err(|e| CliError::Internal(e.to_string()))?);
            Ok(())
        }
        Command::Register {
            fixed,
            moving,
            output,
            field,
            labels,
            labels_out,
            fixed_labels,
            metrics,
            landmarks,
            method,
            similarity,
            deformation,
            control_spacing,
            samples,
            regulariser,
            smoothness,
            run,
        } => {
            let args = commands::RegisterArgs {
                fixed,
                moving,
                output,
                field,
                labels,
                labels_out,
                fixed_labels,
                metrics,
                landmarks,
                method,
                similarity,
                deformation,
                control_spacing,
                samples,
                regulariser,
                smoothness,
                run,
            };
            commands::register(backend, &args)
        }
        Command::Bench { only, in_process } => crate::bench::run(backend, &only, in_process),
    }
}
