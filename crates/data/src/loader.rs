//! Multi-threaded patch loading: worker threads read preprocessed cases (decoded each time, or from the disk or
//! memory cache), cut patches (uniform or label-balanced), augment them and hand them over in a fixed order.
//!
//! Patch `i` of epoch `e` depends only on `(seed, e, i)`: its case, position and augmentation are drawn from a
//! generator seeded by those three numbers, so results do not depend on the number of threads or their timing.
//!
//! ```
//! use vesalius_data::loader::{Cases, LoaderConfig, PatchLoader};
//! use vesalius_data::patch::{PatchSampler, Sampling};
//! use vesalius_data::transforms::{Pipeline, Subject};
//! use vesalius_data::{Image, IDENTITY};
//! let subject = Subject::new(Image::new((0..400).map(|v| v as f32).collect(), vec![20, 20], 1, IDENTITY, "float32").unwrap());
//! let cases = Cases::in_memory(vec![subject]);
//! let config = LoaderConfig {
//!     sampler: PatchSampler { patch: vec![8, 8], sampling: Sampling::Uniform },
//!     augment: Pipeline::default(), batch: 2, threads: 2, seed: 5,
//! };
//! let loader = PatchLoader::new(&cases, config);
//! let mut seen = Vec::new();
//! loader.run(0, 6, |i, patch| { seen.push((i, patch.image.data()[0])); Ok(()) }).unwrap();
//! assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]); // in order
//! let mut again = Vec::new();
//! PatchLoader::new(&cases, loader.config().clone()).run(0, 6, |i, p| { again.push((i, p.image.data()[0])); Ok(()) }).unwrap();
//! assert_eq!(seen, again); // same seed, same patches
//! ```
use crate::cache::{DiskCache, MemoryCache, Volume};
use crate::msd::Case;
use crate::patch::PatchSampler;
use crate::transforms::{Pipeline, Subject};
use crate::{DataError, Image, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use vesalius_io as io;

/// Loads a case's image channels (one file per channel, or one multi-channel file) and its label map, checks that
/// they share a grid, and applies `preprocess` (with a generator seeded by 0, so it is deterministic).
pub fn load_case(case: &Case, preprocess: &Pipeline) -> Result<Subject> {
    let mut images: Vec<Image> = Vec::with_capacity(case.images.len());
    for p in &case.images {
        images.push(io::load(p)?);
    }
    let first = images.first().ok_or_else(|| DataError::Invalid(format!("case '{}' has no image", case.id)))?;
    let shape = first.shape().to_vec();
    let affine = *first.affine();
    let dtype = first.dtype().to_string();
    let mut data = Vec::with_capacity(images.iter().map(|i| i.data().len()).sum());
    let mut channels = 0;
    for (img, p) in images.iter().zip(&case.images) {
        if img.shape() != shape.as_slice() {
            return Err(DataError::format(p, format!("shape {:?} differs from the case's first channel {:?}", img.shape(), shape)));
        }
        data.extend_from_slice(img.data());
        channels += img.channels();
    }
    let image = Image::new(data, shape.clone(), channels, affine, &dtype)?;
    let subject = match &case.label {
        Some(lp) => {
            let label = io::load(lp)?;
            if label.shape() != shape.as_slice() || label.channels() != 1 {
                return Err(DataError::format(
                    lp,
                    format!("label grid {:?}×{} does not match the image {:?}", label.shape(), label.channels(), shape),
                ));
            }
            Subject::with_label(image, label)?
        }
        None => Subject::new(image),
    };
    preprocess.apply_seeded(subject, 0)
}

/// Where the loader gets its cases.
pub enum Cases<'a> {
    /// Already in memory.
    Memory(Vec<Arc<Volume>>),
    /// Decoded from their files for every patch (no cache).
    Files {
        /// The cases.
        cases: &'a [Case],
        /// Preprocessing applied after decoding.
        preprocess: &'a Pipeline,
    },
    /// Preprocessed once into the disk cache, then memory-mapped; optionally kept in a RAM cache too.
    Cached {
        /// The cases.
        cases: &'a [Case],
        /// Preprocessing applied before caching; part of the key.
        preprocess: &'a Pipeline,
        /// The disk cache.
        disk: &'a DiskCache,
        /// An optional RAM cache of mapped or decoded volumes.
        memory: Option<&'a MemoryCache>,
    },
}

impl Cases<'_> {
    /// Cases held in memory.
    pub fn in_memory(subjects: Vec<Subject>) -> Cases<'static> {
        Cases::Memory(subjects.into_iter().map(|s| Arc::new(Volume::in_memory(s))).collect())
    }

    /// Number of cases.
    pub fn len(&self) -> usize {
        match self {
            Cases::Memory(v) => v.len(),
            Cases::Files { cases, .. } | Cases::Cached { cases, .. } => cases.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Case `i`, preprocessed.
    pub fn volume(&self, i: usize) -> Result<Arc<Volume>> {
        match self {
            Cases::Memory(v) => Ok(v[i].clone()),
            Cases::Files { cases, preprocess } => Ok(Arc::new(Volume::in_memory(load_case(&cases[i], preprocess)?))),
            Cases::Cached { cases, preprocess, disk, memory } => {
                let case = &cases[i];
                let mut inputs: Vec<&std::path::Path> = case.images.iter().map(|p| p.as_path()).collect();
                if let Some(l) = &case.label {
                    inputs.push(l);
                }
                let key = disk.key(&inputs, preprocess)?;
                let load = || disk.get_or_insert(&key, || load_case(case, preprocess));
                match memory {
                    Some(m) => m.get_or_insert(&key, load),
                    None => Ok(Arc::new(load()?)),
                }
            }
        }
    }
}

/// Settings of a [`PatchLoader`].
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Patch size and placement.
    pub sampler: PatchSampler,
    /// Augmentation applied to each patch.
    pub augment: Pipeline,
    /// Batch size (for the label-balanced share, which holds per batch).
    pub batch: usize,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Seed of every draw.
    pub seed: u64,
}

/// Produces augmented patches from cases with worker threads.
pub struct PatchLoader<'a> {
    cases: &'a Cases<'a>,
    config: LoaderConfig,
}

impl<'a> PatchLoader<'a> {
    /// A loader over `cases`.
    pub fn new(cases: &'a Cases<'a>, config: LoaderConfig) -> Self {
        Self { cases, config }
    }

    /// Its settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Patch `index` of `epoch`, computed on the calling thread.
    pub fn patch(&self, epoch: u64, index: usize) -> Result<Subject> {
        let c = &self.config;
        let mut rng = ChaCha8Rng::seed_from_u64(
            c.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (index as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9),
        );
        if self.cases.is_empty() {
            return Err(DataError::Invalid("no cases to sample patches from".into()));
        }
        let case = rng.random_range(0..self.cases.len());
        let volume = self.cases.volume(case)?;
        let fg = c.sampler.force_foreground(index % c.batch.max(1), c.batch.max(1));
        let start = c.sampler.start(volume.shape(), volume.locations(), fg, &mut rng)?;
        let patch = volume.patch(&start, &c.sampler.patch)?;
        c.augment.apply(patch, &mut rng)
    }

    /// Produces patches `0..count` of `epoch` on the worker threads and gives them to `consume` in index order on
    /// the calling thread; at most `2 × threads` patches wait at any time. The first error stops the run.
    pub fn run(&self, epoch: u64, count: usize, mut consume: impl FnMut(usize, Subject) -> Result<()>) -> Result<()> {
        let threads = self.config.threads.max(1);
        let next = AtomicUsize::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<(usize, Result<Subject>)>(2 * threads);
            for _ in 0..threads {
                let tx = tx.clone();
                let (next, stop) = (&next, &stop);
                scope.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if tx.send((i, self.patch(epoch, i))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut pending: BTreeMap<usize, Result<Subject>> = BTreeMap::new();
            let mut want = 0;
            let mut result = Ok(());
            for (i, r) in rx.iter() {
                pending.insert(i, r);
                while let Some(r) = pending.remove(&want) {
                    if result.is_ok() {
                        result = r.and_then(|s| consume(want, s));
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    want += 1;
                }
            }
            result
        })
    }
}
