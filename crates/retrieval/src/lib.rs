//! Content-based image retrieval: an [`Index`] of image embeddings (any vectors: a network's penultimate layer or
//! an auto-encoder's bottleneck, a radiomics vector, raw pixels), searched exactly or through a hierarchical
//! navigable small-world graph (HNSW, Malkov and Yashunin 2018, from `instant-distance`), and scored on labelled
//! items by precision@k and mean average precision@k ([`evaluate`]).
//!
//! Distances: `euclidean` is ‖q − x‖; `cosine` is 1 − cos(q, x) (vectors are normalised to unit length when the
//! index is built, so both searches rank by Euclidean distance). An index folder holds `meta.json` (ids, labels,
//! groups, dimension, metric, the embedding's source), `vectors.f32` (little-endian, one row per item) and, when
//! built, `hnsw.mpk` (the graph); every file is written atomically, and sizes are checked against each other before
//! anything is allocated when reading.
//!
//! ```
//! use vesalius_retrieval::{Index, Metric};
//! let vectors = vec![vec![1.0, 0.0], vec![0.9, 0.1], vec![0.0, 1.0]];
//! let ids = vec!["a".to_string(), "b".to_string(), "c".to_string()];
//! let index = Index::new(ids, vec![None; 3], vec![None; 3], vectors, Metric::Cosine, "example").unwrap();
//! let hits = index.search_exact(&[1.0, 0.05], 2);
//! assert_eq!((hits[0].item, hits[1].item), (0, 1));
//! assert!(hits[0].distance < 0.01);
//! ```
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Errors of the retrieval crate.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    /// Bad input: vectors, an index folder, a parameter.
    #[error("{0}")]
    Input(String),
    /// A failure of the program itself (a failed write).
    #[error("{0}")]
    Internal(String),
}

type Result<T> = std::result::Result<T, RetrievalError>;

/// How distances are measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `1 − cos(q, x)`.
    #[default]
    Cosine,
    /// `‖q − x‖`.
    Euclidean,
}

/// A stored vector, as the HNSW graph sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Vector(pub Vec<f32>);

impl instant_distance::Point for Vector {
    fn distance(&self, other: &Self) -> f32 {
        squared(&self.0, &other.0).sqrt()
    }
}

fn squared(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// `meta.json` of an index folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Item ids (file paths, or sample ids), one per row of `vectors.f32`.
    pub ids: Vec<String>,
    /// Item labels, when known.
    pub labels: Vec<Option<String>>,
    /// Item groups (patients), when known: an item's neighbours from its own group are left out of evaluation.
    pub groups: Vec<Option<String>>,
    /// Vector length.
    pub dim: usize,
    /// Distance.
    pub metric: Metric,
    /// What made the vectors (for embedding queries the same way).
    pub source: String,
    /// HNSW construction breadth, when the graph is built.
    pub ef_construction: Option<usize>,
    /// HNSW search breadth, when the graph is built.
    #[serde(default)]
    pub ef_search: Option<usize>,
}

/// A search result: the item's row and its distance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Row of the item.
    pub item: usize,
    /// Distance to the query.
    pub distance: f32,
}

/// An index of vectors.
pub struct Index {
    /// Ids, labels, groups and settings.
    pub meta: Meta,
    /// Rows (unit length for cosine).
    vectors: Vec<f32>,
    /// The approximate search graph, when built.
    hnsw: Option<instant_distance::HnswMap<Vector, u32>>,
}

/// Largest index (items) read or built.
pub const MAX_ITEMS: usize = 50_000_000;
/// Largest vector length.
pub const MAX_DIM: usize = 65_536;

impl Index {
    /// An exact index of `vectors` (all of one length, finite), with ids, labels and groups per item.
    pub fn new(
        ids: Vec<String>,
        labels: Vec<Option<String>>,
        groups: Vec<Option<String>>,
        vectors: Vec<Vec<f32>>,
        metric: Metric,
        source: &str,
    ) -> Result<Self> {
        let n = vectors.len();
        let dim = vectors.first().map_or(0, Vec::len);
        if n == 0 || dim == 0 || dim > MAX_DIM || n > MAX_ITEMS {
            return Err(RetrievalError::Input(format!(
                "an index needs 1 to {MAX_ITEMS} vectors of length 1 to {MAX_DIM} ({n} × {dim} given)"
            )));
        }
        if ids.len() != n || labels.len() != n || groups.len() != n {
            return Err(RetrievalError::Input(format!(
                "{n} vectors but {} ids, {} labels, {} groups",
                ids.len(),
                labels.len(),
                groups.len()
            )));
        }
        if let Some(i) = vectors.iter().position(|v| v.len() != dim || v.iter().any(|x| !x.is_finite())) {
            return Err(RetrievalError::Input(format!(
                "vector of '{}' has another length than {dim} or a value that is not finite",
                ids[i]
            )));
        }
        let mut flat = Vec::with_capacity(n * dim);
        for v in &vectors {
            flat.extend(prepare(v, metric));
        }
        Ok(Self {
            meta: Meta { ids, labels, groups, dim, metric, source: source.to_string(), ef_construction: None, ef_search: None },
            vectors: flat,
            hnsw: None,
        })
    }

    /// Items.
    pub fn len(&self) -> usize {
        self.meta.ids.len()
    }

    /// Whether the index is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.meta.ids.is_empty()
    }

    /// Row `i` as stored.
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.meta.dim..(i + 1) * self.meta.dim]
    }

    /// Whether the approximate graph is built.
    pub fn is_approximate(&self) -> bool {
        self.hnsw.is_some()
    }

    /// Builds the HNSW graph with construction breadth `ef_construction` and search breadth `ef_search` (each at
    /// least 10), seeded.
    pub fn build_approximate(&mut self, ef_construction: usize, ef_search: usize, seed: u64) {
        let points: Vec<Vector> = (0..self.len()).map(|i| Vector(self.vector(i).to_vec())).collect();
        let values: Vec<u32> = (0..self.len() as u32).collect();
        let (c, s) = (ef_construction.max(10), ef_search.max(10));
        let map = instant_distance::Builder::default().ef_construction(c).ef_search(s).seed(seed).build(points, values);
        self.hnsw = Some(map);
        self.meta.ef_construction = Some(c);
        self.meta.ef_search = Some(s);
    }

    /// The `k` nearest items by exhaustive search, nearest first (ties by row).
    pub fn search_exact(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let q = prepare(query, self.meta.metric);
        let mut all: Vec<(f32, usize)> = (0..self.len()).map(|i| (squared(&q, self.vector(i)), i)).collect();
        let k = k.min(all.len());
        if k == 0 {
            return Vec::new();
        }
        all.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.truncate(k);
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.into_iter().map(|(d2, i)| Hit { item: i, distance: self.distance(d2) }).collect()
    }

    /// The `k` nearest items through the HNSW graph (at most its search breadth); exact search when no graph is built.
    pub fn search_approximate(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let Some(map) = &self.hnsw else { return self.search_exact(query, k) };
        let q = Vector(prepare(query, self.meta.metric));
        let mut search = instant_distance::Search::default();
        map.search(&q, &mut search)
            .take(k)
            .map(|item| Hit { item: *item.value as usize, distance: self.distance(item.distance * item.distance) })
            .collect()
    }

    /// The metric's distance from a squared Euclidean distance between stored rows.
    fn distance(&self, d2: f32) -> f32 {
        match self.meta.metric {
            Metric::Euclidean => d2.sqrt(),
            // ‖a − b‖² = 2 − 2 cos for unit vectors.
            Metric::Cosine => (d2 / 2.0).clamp(0.0, 2.0),
        }
    }

    /// Writes the index folder.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| RetrievalError::Internal(format!("{}: {e}", dir.display())))?;
        let write = |name: &str, bytes: &[u8]| {
            vesalius_io::write_atomic(&dir.join(name), bytes).map_err(|e| RetrievalError::Internal(e.to_string()))
        };
        let bytes: Vec<u8> = self.vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
        write("vectors.f32", &bytes)?;
        match &self.hnsw {
            Some(map) => write("hnsw.mpk", &rmp_serde::to_vec(map).map_err(|e| RetrievalError::Internal(format!("hnsw.mpk: {e}")))?)?,
            None => {
                let _ = std::fs::remove_file(dir.join("hnsw.mpk"));
            }
        }
        // Written last: a folder is an index once meta.json names its contents.
        write("meta.json", &serde_json::to_vec_pretty(&self.meta).map_err(|e| RetrievalError::Internal(e.to_string()))?)
    }

    /// Reads an index folder; every size is checked before the vectors are read.
    pub fn load(dir: &Path) -> Result<Self> {
        let bad = |what: String| RetrievalError::Input(format!("{}: {what}", dir.display()));
        let meta_path = dir.join("meta.json");
        let text = std::fs::read(&meta_path).map_err(|e| bad(format!("meta.json: {e} (is this an index folder?)")))?;
        let meta: Meta = serde_json::from_slice(&text).map_err(|e| bad(format!("meta.json: {e}")))?;
        let n = meta.ids.len();
        if meta.dim == 0 || meta.dim > MAX_DIM || n == 0 || n > MAX_ITEMS || meta.labels.len() != n || meta.groups.len() != n {
            return Err(bad(format!(
                "meta.json: {n} ids with {} labels and {} groups, dimension {}",
                meta.labels.len(),
                meta.groups.len(),
                meta.dim
            )));
        }
        let vec_path = dir.join("vectors.f32");
        let size = std::fs::metadata(&vec_path).map_err(|e| bad(format!("vectors.f32: {e}")))?.len();
        let expected = (n as u64) * (meta.dim as u64) * 4;
        if size != expected {
            return Err(bad(format!("vectors.f32 holds {size} bytes; meta.json's {n} × {} vectors need {expected}", meta.dim)));
        }
        let bytes = std::fs::read(&vec_path).map_err(|e| bad(format!("vectors.f32: {e}")))?;
        let vectors: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if vectors.iter().any(|v| !v.is_finite()) {
            return Err(bad("vectors.f32 holds a value that is not finite".into()));
        }
        let hnsw_path = dir.join("hnsw.mpk");
        let hnsw = match (meta.ef_construction, hnsw_path.is_file()) {
            (Some(_), true) => {
                let bytes = std::fs::read(&hnsw_path).map_err(|e| bad(format!("hnsw.mpk: {e}")))?;
                let map: instant_distance::HnswMap<Vector, u32> =
                    rmp_serde::from_slice(&bytes).map_err(|e| bad(format!("hnsw.mpk: {e}")))?;
                if map.values.len() != n || map.values.iter().any(|&v| v as usize >= n) {
                    return Err(bad(format!("hnsw.mpk indexes {} items, meta.json {n}", map.values.len())));
                }
                Some(map)
            }
            (Some(_), false) => return Err(bad("meta.json names an HNSW graph but hnsw.mpk is missing".into())),
            (None, _) => None,
        };
        Ok(Self { meta, vectors, hnsw })
    }
}

/// A vector as stored: unit length for cosine (the zero vector stays zero).
fn prepare(v: &[f32], metric: Metric) -> Vec<f32> {
    match metric {
        Metric::Euclidean => v.to_vec(),
        Metric::Cosine => {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 { v.iter().map(|x| x / norm).collect() } else { v.to_vec() }
        }
    }
}

/// Recall of the approximate search against exact search: the share of each query's exact `k` nearest found by the
/// approximate search's `k`, averaged over the queries.
pub fn recall(index: &Index, queries: &[Vec<f32>], k: usize) -> f64 {
    if queries.is_empty() {
        return f64::NAN;
    }
    let total: f64 = queries
        .iter()
        .map(|q| {
            let exact: std::collections::BTreeSet<usize> = index.search_exact(q, k).iter().map(|h| h.item).collect();
            let found = index.search_approximate(q, k).iter().filter(|h| exact.contains(&h.item)).count();
            found as f64 / exact.len().max(1) as f64
        })
        .sum();
    total / queries.len() as f64
}

/// Retrieval quality of an index on its own labelled items, each item querying all the others (leave one out;
/// items of the query's own group are skipped when groups are known, so that a patient's other images do not count).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    /// Neighbours scored per query.
    pub k: usize,
    /// Queries (labelled items with at least one relevant item among the candidates).
    pub queries: usize,
    /// Whether the approximate search was scored.
    pub approximate: bool,
    /// Share of the `k` neighbours with the query's label, with a 95 % bootstrap interval over queries (groups when
    /// known).
    pub precision_at_k: vesalius_eval::bootstrap::Estimate,
    /// Mean average precision at `k`: per query, the mean of precision@i over the ranks `i ≤ k` that hold a relevant
    /// item, divided by `min(k, relevant items)`.
    pub map_at_k: vesalius_eval::bootstrap::Estimate,
    /// Precision@k of a search that returns random items: each label's share among the candidates, averaged over
    /// queries.
    pub chance_precision: f64,
    /// Whether neighbours from the query's own group were left out (false when the labelled items do not span two
    /// groups, as for patches of one subject).
    pub groups_left_out: bool,
}

/// Average precision at `k` of a ranked list of relevance flags, with `relevant` relevant items in all.
pub fn average_precision(ranked: &[bool], relevant: usize, k: usize) -> f64 {
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (i, &r) in ranked.iter().take(k).enumerate() {
        if r {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    if relevant == 0 { 0.0 } else { sum / relevant.min(k) as f64 }
}

/// Scores the index's labelled items as queries (see [`RetrievalMetrics`]).
pub fn evaluate(index: &Index, k: usize, approximate: bool, resamples: usize, seed: u64) -> Result<RetrievalMetrics> {
    let m = &index.meta;
    if k == 0 {
        return Err(RetrievalError::Input("k must be at least 1".into()));
    }
    let labelled: Vec<usize> = (0..index.len()).filter(|&i| m.labels[i].is_some()).collect();
    if labelled.len() < 2 {
        return Err(RetrievalError::Input("evaluation needs at least two labelled items in the index".into()));
    }
    let distinct: std::collections::BTreeSet<&String> = labelled.iter().filter_map(|&i| m.groups[i].as_ref()).collect();
    let use_groups = distinct.len() >= 2;
    let mut precision = Vec::new();
    let mut ap = Vec::new();
    let mut chance = Vec::new();
    let mut ids: Vec<Option<String>> = Vec::new();
    for &q in &labelled {
        let candidate = |i: usize| i != q && (!use_groups || m.groups[q].is_none() || m.groups[i] != m.groups[q]);
        let n_candidates = (0..index.len()).filter(|&i| candidate(i)).count();
        let relevant = (0..index.len()).filter(|&i| candidate(i) && m.labels[i] == m.labels[q]).count();
        if relevant == 0 {
            continue;
        }
        // Enough neighbours that k candidates remain after the query and its group are skipped.
        let skipped = index.len() - n_candidates;
        let wanted = (k + skipped).min(index.len());
        let hits =
            if approximate { index.search_approximate(index.vector(q), wanted) } else { index.search_exact(index.vector(q), wanted) };
        let ranked: Vec<bool> = hits.iter().filter(|h| candidate(h.item)).take(k).map(|h| m.labels[h.item] == m.labels[q]).collect();
        precision.push(ranked.iter().filter(|&&r| r).count() as f64 / k as f64);
        ap.push(average_precision(&ranked, relevant, k));
        chance.push(relevant as f64 / n_candidates.max(1) as f64);
        ids.push(if use_groups { m.groups[q].clone() } else { None }.or_else(|| Some(m.ids[q].clone())));
    }
    if precision.is_empty() {
        return Err(RetrievalError::Input("no labelled item has another item of its label to find".into()));
    }
    let clusters = vesalius_eval::bootstrap::Clusters::from_ids(&ids);
    let mean = |v: &[f64], idx: &[usize]| idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len().max(1) as f64;
    let all: Vec<usize> = (0..precision.len()).collect();
    let ci = |v: &[f64], salt: u64| {
        vesalius_eval::bootstrap::cluster_percentile_ci(&clusters, resamples, 0.95, seed ^ salt, mean(v, &all), |idx| Some(mean(v, idx)))
    };
    Ok(RetrievalMetrics {
        k,
        queries: precision.len(),
        approximate,
        precision_at_k: ci(&precision, 1),
        map_at_k: ci(&ap, 2),
        chance_precision: mean(&chance, &all),
        groups_left_out: use_groups,
    })
}
