//! `vesalius index` and `vesalius search`: content-based image retrieval with a classification run's network
//! (its penultimate layer, or a stacked auto-encoder's code) or the run's input pixels as the embedding
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
    let source = Source { run: run_abs, pixels: args.pixels };
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
    let vectors = embed_pixels(backend, &source, &rows)?;
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
