//! `vesalius index` and `vesalius search`: content-based image retrieval with a classification run's network
//! (its penultimate layer, or a stacked auto-encoder's code), radiomics features of the inputs, or the run's input
//! pixels as the embedding
//! ([`vesalius_retrieval`]).
use std::path::{Path, PathBuf};

use burn::data::dataset::Dataset;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vesalius_cadx::run::{ClassificationRun, RunDir};
use vesalius_data::source::{Label, Split};
use vesalius_retrieval::{Index, Metric, RetrievalError, evaluate};

use crate::backend::BackendKind;
use crate::{CliError, with_backend};

impl From<RetrievalError> for CliError {
    fn from(e: RetrievalError) -> Self {
        match e {
            RetrievalError::Input(m) => CliError::Usage(m),
            RetrievalError::Internal(m) => CliError::Internal(m),
        }
    }
}

/// What made an index's vectors, kept in its `meta.json` so queries are embedded the same way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The classification run (absolute path).
    pub run: PathBuf,
    /// Raw input pixels (the run's channels and size) instead of the network's embedding.
    pub pixels: bool,
    /// Radiomics features of the whole input (IBSI intensity, histogram and texture families, 32 fixed bins),
    /// standardised by the indexed items' means and standard deviations (kept here for the queries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radiomics: Option<Standardisation>,
}

/// Per-feature means and standard deviations of an index's radiomics vectors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardisation {
    /// Feature names, in vector order.
    pub names: Vec<String>,
    /// Means.
    pub mean: Vec<f64>,
    /// Standard deviations (1 where a feature is constant).
    pub std: Vec<f64>,
}

/// Radiomics settings of the retrieval embedding: every family but shape (the whole square patch is the region),
/// 32 fixed bins.
fn radiomics_settings() -> vesalius_radiomics::Settings {
    vesalius_radiomics::Settings {
        bin_count: Some(32),
        families: ["stat", "ih", "cm", "rlm", "szm", "ngl", "ngt"].map(String::from).to_vec(),
        ..Default::default()
    }
}

/// Raw radiomics features of pixel rows `[c·s·s]` (channels averaged), the whole image as the region.
fn radiomics_rows(rows: &[Vec<f32>], channels: usize, size: usize) -> Result<(Vec<String>, Vec<Vec<f64>>), CliError> {
    let settings = radiomics_settings();
    let n = size * size;
    let mask = vesalius_io::Image::new(vec![1.0; n], vec![size, size], 1, vesalius_io::IDENTITY, "uint8")
        .map_err(|e| CliError::Internal(e.to_string()))?;
    let mut names = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let grey: Vec<f32> = (0..n).map(|i| (0..channels).map(|c| row[c * n + i]).sum::<f32>() / channels as f32).collect();
        let image = vesalius_io::Image::new(grey, vec![size, size], 1, vesalius_io::IDENTITY, "float32")
            .map_err(|e| CliError::Internal(e.to_string()))?;
        let f = vesalius_radiomics::extract(&image, &mask, 1.0, &settings).map_err(|e| CliError::Internal(format!("radiomics: {e}")))?;
        if names.is_empty() {
            names = f.0.iter().map(|(k, _)| k.clone()).collect();
        }
        out.push(f.0.iter().map(|(_, v)| *v).collect());
    }
    Ok((names, out))
}

/// Standardised vectors (non-finite values, e.g. a texture feature of a flat patch, become 0).
fn standardise(raw: &[Vec<f64>], z: &Standardisation) -> Vec<Vec<f32>> {
    raw.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, v)| {
                    let x = (v - z.mean[i]) / z.std[i];
                    if x.is_finite() { x as f32 } else { 0.0 }
                })
                .collect()
        })
        .collect()
}

/// The standardisation of the indexed items' features.
fn fit_standardisation(names: Vec<String>, raw: &[Vec<f64>]) -> Standardisation {
    let d = names.len();
    let mut mean = vec![0.0; d];
    let mut std = vec![0.0; d];
    for i in 0..d {
        let vals: Vec<f64> = raw.iter().map(|r| r[i]).filter(|v| v.is_finite()).collect();
        let n = vals.len().max(1) as f64;
        mean[i] = vals.iter().sum::<f64>() / n;
        let var = vals.iter().map(|v| (v - mean[i]).powi(2)).sum::<f64>() / n;
        std[i] = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
    }
    Standardisation { names, mean, std }
}

/// Settings of `vesalius index`.
#[derive(Clone, Debug, clap::Args)]
pub struct IndexArgs {
    /// The classification run whose network embeds the images.
    #[arg(long)]
    pub run: PathBuf,
    /// Image files to index.
    pub images: Vec<PathBuf>,
    /// Index the run's own samples of this split (train, val or test) with their labels and patients instead.
    #[arg(long, conflicts_with = "images")]
    pub split: Option<String>,
    /// Embed by the input pixels (resized as the run's inputs) instead of the network: the raw-pixel baseline.
    #[arg(long)]
    pub pixels: bool,
    /// Embed by radiomics features of the input (intensity, histogram and texture families, standardised over the
    /// index) instead of the network.
    #[arg(long, conflicts_with = "pixels")]
    pub radiomics: bool,
    /// Distance: cosine or euclidean.
    #[arg(long, default_value = "cosine")]
    pub metric: String,
    /// Also build an HNSW graph for approximate search of large collections.
    #[arg(long)]
    pub approximate: bool,
    /// HNSW construction breadth.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// HNSW search breadth (the most neighbours an approximate search returns).
    #[arg(long, default_value_t = 100)]
    pub ef_search: usize,
}

fn classification_run(run: &Path) -> Result<RunDir, CliError> {
    let dir = RunDir::new(run);
    if !dir.file("run.json").is_file() || vesalius_cadx::tabular::is_run(run) {
        return Err(CliError::Usage(format!("{}: not an image classification run (retrieval embeds with one)", run.display())));
    }
    Ok(dir)
}

/// Vectors of pixel rows `[n][c·s·s]`: the rows themselves, or the run's embedding of them.
fn embed_pixels(backend: BackendKind, source: &Source, rows: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, CliError> {
    if source.pixels {
        return Ok(rows.to_vec());
    }
    if let Some(z) = &source.radiomics {
        let info = classification_run(&source.run)?.read_classifier_info()?;
        let (names, raw) = radiomics_rows(rows, info.model.in_channels, info.model.input_size)?;
        if !raw.is_empty() && names != z.names {
            return Err(CliError::Internal("the queries' radiomics features differ from the index's".into()));
        }
        return Ok(standardise(&raw, z));
    }
    let dir = classification_run(&source.run)?;
    let info = dir.read_classifier_info()?;
    let (c, s) = (info.model.in_channels, info.model.input_size);
    with_backend!(backend, |B, AB, device| {
        let model = dir.load_best::<B>(&info, &device)?;
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(64) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let x = Tensor::<B, 4>::from_data(TensorData::new(flat, [chunk.len(), c, s, s]), &device);
            out.extend(vesalius_cadx::infer::embed_batch(&model, x)?);
        }
        Ok::<_, CliError>(out)
    })
}

/// Pixel rows of image files, converted and resized as the run's training did.
fn file_pixels(run: &Path, files: &[PathBuf]) -> Result<Vec<Vec<f32>>, CliError> {
    let info = classification_run(run)?.read_classifier_info()?;
    files
        .iter()
        .map(|f| Ok(vesalius_data::source::prepare_2d(&vesalius_io::load(f)?, info.model.in_channels, info.model.input_size, f)?))
        .collect()
}

/// `vesalius index`.
pub fn index(backend: BackendKind, args: &IndexArgs, out: &Path) -> Result<Index, CliError> {
    let metric = match args.metric.as_str() {
        "cosine" => Metric::Cosine,
        "euclidean" => Metric::Euclidean,
        other => return Err(CliError::Usage(format!("unknown --metric '{other}' (cosine, euclidean)"))),
    };
    let run_abs = std::path::absolute(&args.run).unwrap_or_else(|_| args.run.clone());
    let mut source = Source { run: run_abs, pixels: args.pixels, radiomics: None };
    let dir = classification_run(&args.run)?;
    let info = dir.read_classifier_info()?;
    let (ids, labels, groups, rows) = match &args.split {
        Some(name) => {
            let split = Split::parse(name).ok_or_else(|| CliError::Usage(format!("unknown split '{name}' (train, val or test)")))?;
            let recipe = vesalius_cadx::recipe::Recipe::from_file(&dir.recipe())?;
            let data = vesalius_cadx::train::prepare_data(&recipe)?;
            let set = match split {
                Split::Train => &data.train,
                Split::Val => &data.val,
                Split::Test => &data.test,
            };
            let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..set.len() {
                let item = set.get(i).ok_or_else(|| CliError::Internal(format!("sample {i} of the {name} split")))?;
                out.0.push(set.id(i).to_string());
                out.1.push(match &item.label {
                    Label::Class(k) => info.classes.get(*k).cloned(),
                    Label::Multi(_) => None,
                });
                out.2.push(set.patients()[i].clone());
                out.3.push(item.pixels.to_f32());
            }
            out
        }
        None => {
            if args.images.is_empty() {
                return Err(CliError::Usage("give images to index, or --split to index the run's own samples".into()));
            }
            let ids = args.images.iter().map(|p| p.display().to_string()).collect();
            (ids, vec![None; args.images.len()], vec![None; args.images.len()], file_pixels(&args.run, &args.images)?)
        }
    };
    let vectors = if args.radiomics {
        let (names, raw) = radiomics_rows(&rows, info.model.in_channels, info.model.input_size)?;
        let z = fit_standardisation(names, &raw);
        let vectors = standardise(&raw, &z);
        source.radiomics = Some(z);
        vectors
    } else {
        embed_pixels(backend, &source, &rows)?
    };
    let text = serde_json::to_string(&source).map_err(|e| CliError::Internal(e.to_string()))?;
    let mut index = Index::new(ids, labels, groups, vectors, metric, &text)?;
    if args.approximate {
        index.build_approximate(args.ef_construction, args.ef_search, 0);
    }
    index.save(out)?;
    Ok(index)
}

/// `vesalius search`: the `k` nearest items of each query image, as CSV `query,rank,id,distance,label`.
pub fn search(backend: BackendKind, index_dir: &Path, queries: &[PathBuf], k: usize, approximate: bool) -> Result<String, CliError> {
    let index = Index::load(index_dir)?;
    if approximate && !index.is_approximate() {
        return Err(CliError::Usage(format!(
            "{}: the index has no HNSW graph (build it with vesalius index --approximate)",
            index_dir.display()
        )));
    }
    let source: Source = serde_json::from_str(&index.meta.source)
        .map_err(|e| CliError::Usage(format!("{}: meta.json's source: {e}", index_dir.display())))?;
    let vectors = embed_pixels(backend, &source, &file_pixels(&source.run, queries)?)?;
    if let Some(v) = vectors.iter().find(|v| v.len() != index.meta.dim) {
        return Err(CliError::Usage(format!("queries embed to {} values, the index holds {}", v.len(), index.meta.dim)));
    }
    let quote = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    let mut csv = String::from("query,rank,id,distance,label\n");
    for (q, v) in queries.iter().zip(&vectors) {
        let hits = if approximate { index.search_approximate(v, k) } else { index.search_exact(v, k) };
        for (rank, h) in hits.iter().enumerate() {
            let label = index.meta.labels[h.item].clone().unwrap_or_default();
            csv.push_str(&format!(
                "{},{},{},{:.6},{}\n",
                quote(&q.display().to_string()),
                rank + 1,
                quote(&index.meta.ids[h.item]),
                h.distance,
                quote(&label)
            ));
        }
    }
    Ok(csv)
}

/// `vesalius search --evaluate`: every labelled item of the index queries the others; precision@k and mAP@k
/// with intervals, written to `INDEX/metrics.json` (`metrics-approximate.json` for the HNSW search).
pub fn evaluate_index(index_dir: &Path, k: usize, approximate: bool) -> Result<vesalius_retrieval::RetrievalMetrics, CliError> {
    let index = Index::load(index_dir)?;
    if approximate && !index.is_approximate() {
        return Err(CliError::Usage(format!(
            "{}: the index has no HNSW graph (build it with vesalius index --approximate)",
            index_dir.display()
        )));
    }
    let m = evaluate(&index, k, approximate, 1000, 0)?;
    let name = if approximate { "metrics-approximate.json" } else { "metrics.json" };
    vesalius_train::run::write_json(&index_dir.join(name), &m).map_err(|e| CliError::Internal(e.to_string()))?;
    Ok(m)
}
