//! Preprocessed-case cache: decoded, resampled, normalised arrays on disk, memory-mapped when read, keyed by the
//! input files' content and the preprocessing settings; and an optional in-memory cache with a RAM budget.
//!
//! A cache entry is `<key>.vxc`: the magic `VXCACHE1`, a little-endian `u64` header length, a JSON header
//! (shape, channels, affine, dtype, whether a label follows, sampled foreground locations), zero padding to a
//! multiple of 8 bytes, then the image (`f32`, channel-planar, first axis fastest) and the label (`u8` class per
//! voxel). Entries are written atomically (temp file + rename), so a reader never sees half an entry, and a
//! changed input file or setting gives another key, so stale data is never served.
//!
//! ```
//! use vesalius_data::cache::{DiskCache, Volume};
//! use vesalius_data::transforms::Subject;
//! use vesalius_data::{Image, IDENTITY};
//! let dir = tempfile::tempdir().unwrap();
//! let input = dir.path().join("case.bin");
//! std::fs::write(&input, b"raw bytes of the source").unwrap();
//! let cache = DiskCache::new(dir.path().join("cache")).unwrap();
//! let key = cache.key(&[&input], &"z-score, 1 mm").unwrap();
//! let make = || Ok(Subject::new(Image::new(vec![1.0, 2.0, 3.0, 4.0], vec![2, 2], 1, IDENTITY, "float32")?));
//! let first = cache.get_or_insert(&key, make).unwrap();   // computed, then written
//! let second = cache.get_or_insert(&key, || unreachable!()).unwrap(); // read from disk
//! assert_eq!(second.patch(&[0, 0], &[2, 2]).unwrap().image.data(), &[1.0, 2.0, 3.0, 4.0]);
//! assert_eq!(first.shape(), second.shape());
//! ```
#![allow(unsafe_code)]
use crate::transforms::Subject;
use crate::{DataError, Image, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vesalius_io as io;
use vesalius_io::Affine;
use vesalius_io::geometry;

const MAGIC: &[u8; 8] = b"VXCACHE1";

/// Voxel indices (linear, first axis fastest) of each foreground class: at most
/// [`MAX_LOCATIONS_PER_CLASS`] per class, evenly spread, for label-balanced patch sampling without reading the
/// label map.
pub type ClassLocations = BTreeMap<u32, Vec<u64>>;

/// Locations kept per class.
pub const MAX_LOCATIONS_PER_CLASS: usize = 10_000;

/// Foreground locations of a label map (class value > 0).
pub fn class_locations(labels: &[f32]) -> ClassLocations {
    let mut all: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (i, &v) in labels.iter().enumerate() {
        let c = v.round();
        if c > 0.0 {
            all.entry(c as u32).or_default().push(i as u64);
        }
    }
    all.into_iter()
        .map(|(c, v)| {
            if v.len() <= MAX_LOCATIONS_PER_CLASS {
                (c, v)
            } else {
                let step = v.len() as f64 / MAX_LOCATIONS_PER_CLASS as f64;
                (c, (0..MAX_LOCATIONS_PER_CLASS).map(|k| v[(k as f64 * step) as usize]).collect())
            }
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Header {
    shape: Vec<usize>,
    channels: usize,
    affine: Affine,
    dtype: String,
    label: bool,
    #[serde(default)]
    label_dtype: String,
    locations: ClassLocations,
}

/// A preprocessed case, in memory or memory-mapped from the disk cache.
#[derive(Debug)]
pub enum Volume {
    /// Held in memory.
    Memory {
        /// The case.
        subject: Subject,
        /// Its foreground locations.
        locations: ClassLocations,
    },
    /// Memory-mapped cache entry; only the voxels of a requested patch are read.
    Mapped {
        /// The mapping of the whole entry.
        map: memmap2::Mmap,
        /// Byte offset of the image values.
        data_offset: usize,
        /// Spatial shape.
        shape: Vec<usize>,
        /// Image channels.
        channels: usize,
        /// Voxel-to-world matrix.
        affine: Affine,
        /// Stored type of the source.
        dtype: String,
        /// Whether a label map follows the image.
        label: bool,
        /// Stored type of the label's source.
        label_dtype: String,
        /// Foreground locations.
        locations: ClassLocations,
    },
}

impl Volume {
    /// A volume held in memory.
    pub fn in_memory(subject: Subject) -> Self {
        let locations = subject.label.as_ref().map(|l| class_locations(l.data())).unwrap_or_default();
        Volume::Memory { subject, locations }
    }

    /// The volume with sampled locations for the classes below `classes` only (label values at or above it are
    /// generation labels, not targets).
    pub fn targets_below(mut self, classes: u32) -> Self {
        match &mut self {
            Volume::Memory { locations, .. } | Volume::Mapped { locations, .. } => locations.retain(|&c, _| c < classes),
        }
        self
    }

    /// Spatial shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Volume::Memory { subject, .. } => subject.image.shape(),
            Volume::Mapped { shape, .. } => shape,
        }
    }

    /// Foreground locations per class.
    pub fn locations(&self) -> &ClassLocations {
        match self {
            Volume::Memory { locations, .. } | Volume::Mapped { locations, .. } => locations,
        }
    }

    /// Bytes held in memory (0 for mapped volumes, whose pages belong to the page cache).
    pub fn resident_bytes(&self) -> usize {
        match self {
            Volume::Memory { subject, .. } => 4 * (subject.image.data().len() + subject.label.as_ref().map_or(0, |l| l.data().len())),
            Volume::Mapped { .. } => 0,
        }
    }

    /// The region of `size` voxels at `start` (zeros outside), image and label.
    pub fn patch(&self, start: &[i64], size: &[usize]) -> Result<Subject> {
        match self {
            Volume::Memory { subject, .. } => crate::patch::extract(subject, start, size),
            Volume::Mapped { map, data_offset, shape, channels, affine, dtype, label, label_dtype, .. } => {
                let nd = shape.len();
                if start.len() != nd || size.len() != nd || size.contains(&0) {
                    return Err(DataError::Invalid(format!("patch {start:?}+{size:?} does not fit {nd} axes")));
                }
                let n: usize = shape.iter().product();
                let m: usize = size.iter().product();
                let mut img = vec![0f32; m * channels];
                let mut lab = if *label { vec![0f32; m] } else { Vec::new() };
                let bytes = &map[..];
                let mut full = [1usize; 3];
                full[..nd].copy_from_slice(shape);
                let mut sz = [1usize; 3];
                sz[..nd].copy_from_slice(size);
                let mut st = [0i64; 3];
                st[..nd].copy_from_slice(start);
                for z in 0..sz[2] {
                    let zz = st[2] + z as i64;
                    if zz < 0 || zz >= full[2] as i64 {
                        continue;
                    }
                    for y in 0..sz[1] {
                        let yy = st[1] + y as i64;
                        if yy < 0 || yy >= full[1] as i64 {
                            continue;
                        }
                        let x0 = st[0].max(0);
                        let x1 = (st[0] + sz[0] as i64).min(full[0] as i64);
                        if x0 >= x1 {
                            continue;
                        }
                        let src_row = (zz as usize * full[1] + yy as usize) * full[0];
                        let dst_row = (z * sz[1] + y) * sz[0];
                        for x in x0..x1 {
                            let s = src_row + x as usize;
                            let d = dst_row + (x - st[0]) as usize;
                            for c in 0..*channels {
                                let at = data_offset + 4 * (c * n + s);
                                img[c * m + d] = f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                            }
                            if *label {
                                lab[d] = bytes[data_offset + 4 * n * channels + s] as f32;
                            }
                        }
                    }
                }
                let mut index = geometry::identity();
                for a in 0..nd {
                    index[a][3] = start[a] as f64;
                }
                let aff = geometry::compose(affine, &index);
                let image = Image::new(img, size.to_vec(), *channels, aff, dtype)?;
                let label = if *label { Some(Image::new(lab, size.to_vec(), 1, aff, label_dtype)?) } else { None };
                Ok(Subject { image, label })
            }
        }
    }

    /// The whole case.
    pub fn subject(&self) -> Result<Subject> {
        match self {
            Volume::Memory { subject, .. } => Ok(subject.clone()),
            Volume::Mapped { shape, .. } => self.patch(&vec![0; shape.len()], shape),
        }
    }
}

/// 128-bit FNV-1a (two 64-bit lanes with different offsets), stable across machines and builds.
#[derive(Clone)]
struct Fnv([u64; 2]);

impl Fnv {
    fn new() -> Self {
        Fnv([0xcbf2_9ce4_8422_2325, 0x6c62_272e_07bb_0142])
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            for h in &mut self.0 {
                *h ^= b as u64;
                *h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.0[0], self.0[1])
    }
}

/// The on-disk cache.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    /// Content hashes of files already hashed in this process, by (path, length, modification time).
    hashes: Mutex<HashMap<(PathBuf, u64, Option<std::time::SystemTime>), String>>,
}

impl DiskCache {
    /// A cache in `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        Ok(Self { dir, hashes: Mutex::new(HashMap::new()) })
    }

    /// The folder of the cache.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_hash(&self, path: &Path) -> Result<String> {
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        let id = (path.to_path_buf(), meta.len(), meta.modified().ok());
        if let Some(h) = self.hashes.lock().expect("hash memo").get(&id) {
            return Ok(h.clone());
        }
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let mut h = Fnv::new();
        h.update(&bytes);
        let hex = h.hex();
        self.hashes.lock().expect("hash memo").insert(id, hex.clone());
        Ok(hex)
    }

    /// The key of the preprocessed form of `inputs` under `settings`: a hash of every input file's bytes and of
    /// the settings' JSON form.
    pub fn key(&self, inputs: &[&Path], settings: &impl Serialize) -> Result<String> {
        let mut h = Fnv::new();
        for p in inputs {
            h.update(self.file_hash(p)?.as_bytes());
        }
        h.update(serde_json::to_string(settings).map_err(|e| DataError::Invalid(e.to_string()))?.as_bytes());
        Ok(h.hex())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.vxc"))
    }

    /// The entry for `key`, memory-mapped; `make` computes and stores it when absent (or unreadable).
    pub fn get_or_insert(&self, key: &str, make: impl FnOnce() -> Result<Subject>) -> Result<Volume> {
        let path = self.path(key);
        if path.is_file()
            && let Ok(v) = open_entry(&path)
        {
            return Ok(v);
        }
        let subject = make()?;
        write_entry(&path, &subject)?;
        open_entry(&path)
    }
}

fn write_entry(path: &Path, s: &Subject) -> Result<()> {
    let label = s.label.as_ref();
    if let Some(l) = label
        && let Some(v) = l.data().iter().find(|v| !(0.0..=255.0).contains(*v) || v.fract() != 0.0)
    {
        return Err(DataError::Invalid(format!("label value {v} is not a class 0–255")));
    }
    let header = Header {
        shape: s.image.shape().to_vec(),
        channels: s.image.channels(),
        affine: *s.image.affine(),
        dtype: s.image.dtype().to_string(),
        label: label.is_some(),
        label_dtype: label.map(|l| l.dtype().to_string()).unwrap_or_default(),
        locations: label.map(|l| class_locations(l.data())).unwrap_or_default(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| DataError::Invalid(e.to_string()))?;
    let mut bytes = Vec::with_capacity(16 + json.len() + 8 + 4 * s.image.data().len() + s.image.voxels());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    while bytes.len() % 8 != 0 {
        bytes.push(0);
    }
    for v in s.image.data() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(l) = label {
        bytes.extend(l.data().iter().map(|&v| v as u8));
    }
    io::write_atomic(path, &bytes)
}

fn open_entry(path: &Path) -> Result<Volume> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: entries are written once by rename and never modified in place; a concurrent truncation by another
    // program is the only way the mapping could change under us, and the sizes below are checked first.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
    if map.len() < 16 || &map[..8] != MAGIC {
        return Err(DataError::format(path, "not a cache entry"));
    }
    let len = u64::from_le_bytes(map[8..16].try_into().expect("8 bytes")) as usize;
    if len > map.len() - 16 {
        return Err(DataError::format(path, "header longer than the file"));
    }
    let header: Header = serde_json::from_slice(&map[16..16 + len]).map_err(|e| DataError::format(path, e.to_string()))?;
    let data_offset = (16 + len).div_ceil(8) * 8;
    let n = header.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| DataError::format(path, "shape overflows"))?;
    let need = n
        .checked_mul(header.channels)
        .and_then(|v| v.checked_mul(4))
        .and_then(|v| v.checked_add(if header.label { n } else { 0 }))
        .and_then(|v| v.checked_add(data_offset))
        .ok_or_else(|| DataError::format(path, "sizes overflow"))?;
    if need != map.len() || header.shape.is_empty() || header.shape.len() > 3 {
        return Err(DataError::format(path, format!("holds {} bytes, its header needs {need}", map.len())));
    }
    Ok(Volume::Mapped {
        map,
        data_offset,
        shape: header.shape,
        channels: header.channels,
        affine: header.affine,
        dtype: header.dtype,
        label: header.label,
        label_dtype: header.label_dtype,
        locations: header.locations,
    })
}

/// An in-memory cache of volumes with a budget in bytes; the least recently used volumes are dropped first.
#[derive(Debug)]
pub struct MemoryCache {
    budget: usize,
    inner: Mutex<(HashMap<String, Arc<Volume>>, VecDeque<String>, usize)>,
}

impl MemoryCache {
    /// A cache holding at most `budget` bytes of volumes.
    pub fn new(budget: usize) -> Self {
        Self { budget, inner: Mutex::new((HashMap::new(), VecDeque::new(), 0)) }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.inner.lock().expect("cache lock").2
    }

    /// The volume for `key`, computed by `make` when absent and kept while it fits the budget.
    pub fn get_or_insert(&self, key: &str, make: impl FnOnce() -> Result<Volume>) -> Result<Arc<Volume>> {
        {
            let mut g = self.inner.lock().expect("cache lock");
            if let Some(v) = g.0.get(key).cloned() {
                g.1.retain(|k| k != key);
                g.1.push_back(key.to_string());
                return Ok(v);
            }
        }
        let v = Arc::new(make()?);
        let size = v.resident_bytes();
        if size <= self.budget {
            let mut g = self.inner.lock().expect("cache lock");
            while g.2 + size > self.budget {
                let Some(old) = g.1.pop_front() else { break };
                if let Some(o) = g.0.remove(&old) {
                    g.2 -= o.resident_bytes();
                }
            }
            if g.0.insert(key.to_string(), v.clone()).is_none() {
                g.2 += size;
                g.1.push_back(key.to_string());
            }
        }
        Ok(v)
    }
}
