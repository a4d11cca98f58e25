//! Segmentation datasets on disk: the Medical Segmentation Decathlon / nnU-Net raw layout (`imagesTr/`,
//! `labelsTr/`, `imagesTs/`, `dataset.json`) read as-is, in both the nnU-Net v2 form (`channel_names`, `labels` as
//! name → value, `file_ending`, one file per channel `CASE_0000.nii.gz`) and the older MSD form (`modality`,
//! `labels` as value → name, `training`/`test` lists, channels as the fourth dimension of one file); and a CSV
//! manifest (`image[;image…],label,patient_id[,stratum]`).
//!
//! ```
//! use std::fs;
//! let root = tempfile::tempdir().unwrap();
//! for d in ["imagesTr", "labelsTr"] { fs::create_dir(root.path().join(d)).unwrap(); }
//! for f in ["imagesTr/case_001_0000.nii.gz", "labelsTr/case_001.nii.gz"] { fs::write(root.path().join(f), b"").unwrap(); }
//! fs::write(root.path().join("dataset.json"), r#"{"channel_names": {"0": "T1"},
//!     "labels": {"background": 0, "brain": 1}, "numTraining": 1, "file_ending": ".nii.gz"}"#).unwrap();
//! let ds = vesalius_data::msd::open(root.path()).unwrap();
//! assert_eq!(ds.channels, vec!["T1".to_string()]);
//! assert_eq!(ds.training[0].id, "case_001");
//! assert_eq!(ds.label_names[&1], "brain");
//! ```
use crate::{DataError, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One case: its image file(s) and label map.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// Case identifier (file name without channel suffix and ending).
    pub id: String,
    /// Patient the case belongs to (the case id when unknown).
    pub patient: String,
    /// One file per channel (nnU-Net v2), or one multi-channel file (MSD).
    pub images: Vec<PathBuf>,
    /// The label map, for training cases.
    pub label: Option<PathBuf>,
    /// Stratum for stratified splits (manifests only).
    pub stratum: Option<String>,
}

/// A segmentation dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct SegDataset {
    /// Dataset folder.
    pub root: PathBuf,
    /// Name, when `dataset.json` gives one.
    pub name: Option<String>,
    /// Channel names in channel order (`"CT"`, `"T1"`, …); nnU-Net picks normalisation from them.
    pub channels: Vec<String>,
    /// Label value → name (0 is background).
    pub label_names: BTreeMap<u32, String>,
    /// File ending of images and labels (`.nii.gz`, `.nii`, …).
    pub file_ending: String,
    /// Cases with labels.
    pub training: Vec<Case>,
    /// Test cases (`imagesTs/`), with their label maps where `labelsTs/` holds them.
    pub test: Vec<Case>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> DataError {
    DataError::format(path, msg.to_string())
}

/// Channel names from `channel_names` (v2) or `modality` (MSD), ordered by their integer keys.
fn channel_names(json: &Value, path: &Path) -> Result<Vec<String>> {
    let obj = json
        .get("channel_names")
        .or_else(|| json.get("modality"))
        .and_then(Value::as_object)
        .ok_or_else(|| bad(path, "needs `channel_names` (or `modality`)"))?;
    let mut v: Vec<(usize, String)> = Vec::new();
    for (k, name) in obj {
        let i: usize = k.parse().map_err(|_| bad(path, format!("channel key '{k}' is not an integer")))?;
        v.push((i, name.as_str().unwrap_or_default().to_string()));
    }
    v.sort();
    if v.iter().enumerate().any(|(i, (k, _))| *k != i) || v.is_empty() {
        return Err(bad(path, "channel keys must be 0, 1, 2, …"));
    }
    Ok(v.into_iter().map(|(_, n)| n).collect())
}

/// Labels as value → name from either form.
fn label_names(json: &Value, path: &Path) -> Result<BTreeMap<u32, String>> {
    let obj = json.get("labels").and_then(Value::as_object).ok_or_else(|| bad(path, "needs `labels`"))?;
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let (value, name) = match (k.parse::<u32>(), v) {
            (Ok(value), Value::String(name)) => (value, name.clone()),
            (_, Value::Number(n)) => {
                (n.as_u64().ok_or_else(|| bad(path, format!("label '{k}' needs a non-negative integer")))? as u32, k.clone())
            }
            (_, Value::Array(_)) => {
                return Err(bad(path, format!("label '{k}' is a region (list of labels); region-based training is not supported")));
            }
            _ => return Err(bad(path, format!("label entry '{k}' is neither value → name nor name → value"))),
        };
        if out.insert(value, name).is_some() {
            return Err(bad(path, format!("label value {value} appears twice")));
        }
    }
    if !out.contains_key(&0) {
        return Err(bad(path, "labels must include background (0)"));
    }
    Ok(out)
}

fn must_exist(p: PathBuf, json: &Path) -> Result<PathBuf> {
    if p.is_file() { Ok(p) } else { Err(bad(json, format!("lists {} which does not exist", p.display()))) }
}

/// Sorted files of `dir` ending with `ending` (hidden files skipped); empty when the folder is absent.
fn files_ending(dir: &Path, ending: &str) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') && name.ends_with(ending) {
            v.push(name[..name.len() - ending.len()].to_string());
        }
    }
    v.sort();
    Ok(v)
}

/// Opens a dataset folder holding `dataset.json`.
pub fn open(root: &Path) -> Result<SegDataset> {
    let json_path = root.join("dataset.json");
    let json = read_json(&json_path)?;
    let channels = channel_names(&json, &json_path)?;
    let label_names = label_names(&json, &json_path)?;
    let name = json.get("name").and_then(Value::as_str).map(str::to_string);
    let case = |id: String, images: Vec<PathBuf>, label: Option<PathBuf>| Case { patient: id.clone(), id, images, label, stratum: None };

    if let Some(list) = json.get("training").and_then(Value::as_array) {
        // MSD form: explicit lists, channels inside each file.
        let strip = |p: &str| p.trim_start_matches("./").to_string();
        let mut training = Vec::new();
        for item in list {
            let (Some(img), Some(lab)) = (item.get("image").and_then(Value::as_str), item.get("label").and_then(Value::as_str)) else {
                return Err(bad(&json_path, "every `training` entry needs `image` and `label`"));
            };
            let img = must_exist(root.join(strip(img)), &json_path)?;
            let lab = must_exist(root.join(strip(lab)), &json_path)?;
            let id = img.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
            let id = id.trim_end_matches(".gz").trim_end_matches(".nii").to_string();
            training.push(case(id, vec![img], Some(lab)));
        }
        let mut test = Vec::new();
        for item in json.get("test").and_then(Value::as_array).into_iter().flatten() {
            let p = item
                .as_str()
                .or_else(|| item.get("image").and_then(Value::as_str))
                .ok_or_else(|| bad(&json_path, "a `test` entry is not a path"))?;
            let img = root.join(strip(p));
            if img.is_file() {
                let name = img.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
                let label = root.join("labelsTs").join(&name);
                test.push(case(
                    name.trim_end_matches(".gz").trim_end_matches(".nii").to_string(),
                    vec![img],
                    label.is_file().then_some(label),
                ));
            }
        }
        return Ok(SegDataset { root: root.to_path_buf(), name, channels, label_names, file_ending: ".nii.gz".into(), training, test });
    }

    let file_ending = json.get("file_ending").and_then(Value::as_str).unwrap_or(".nii.gz").to_string();
    let channel_files = |dir: &Path, id: &str| -> Result<Vec<PathBuf>> {
        (0..channels.len()).map(|c| must_exist(dir.join(format!("{id}_{c:04}{file_ending}")), &json_path)).collect()
    };
    let mut training = Vec::new();
    for id in files_ending(&root.join("labelsTr"), &file_ending)? {
        let images = channel_files(&root.join("imagesTr"), &id)?;
        training.push(case(id.clone(), images, Some(root.join("labelsTr").join(format!("{id}{file_ending}")))));
    }
    if training.is_empty() {
        return Err(bad(&json_path, format!("no label maps ending in '{file_ending}' in labelsTr/")));
    }
    if let Some(n) = json.get("numTraining").and_then(Value::as_u64)
        && n as usize != training.len()
    {
        return Err(bad(&json_path, format!("numTraining is {n} but labelsTr/ holds {} cases", training.len())));
    }
    let mut test_ids: Vec<String> = files_ending(&root.join("imagesTs"), &file_ending)?
        .into_iter()
        .filter_map(|f| f.rsplit_once('_').map(|(id, _)| id.to_string()))
        .collect();
    test_ids.dedup();
    // Test cases carry their label map when `labelsTs/` holds one (a labelled, held-out test set).
    let test = test_ids
        .into_iter()
        .map(|id| {
            let label = root.join("labelsTs").join(format!("{id}{file_ending}"));
            Ok(case(id.clone(), channel_files(&root.join("imagesTs"), &id)?, label.is_file().then_some(label)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SegDataset { root: root.to_path_buf(), name, channels, label_names, file_ending, training, test })
}

/// Reads a CSV manifest with a header: `image` (paths joined by `;` for several channels), `label`, `patient_id`,
/// optional `case_id` and `stratum`. Paths are relative to the manifest's folder.
pub fn read_manifest(path: &Path) -> Result<Vec<Case>> {
    let mut rdr = csv::Reader::from_path(path).map_err(|e| bad(path, e))?;
    let headers = rdr.headers().map_err(|e| bad(path, e))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let image = col("image").ok_or_else(|| bad(path, "needs an `image` column"))?;
    let patient = col("patient_id").ok_or_else(|| bad(path, "needs a `patient_id` column"))?;
    let (label, case_id, stratum) = (col("label"), col("case_id"), col("stratum"));
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (row, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| bad(path, e))?;
        let get = |i: Option<usize>| i.and_then(|i| rec.get(i)).map(str::trim).filter(|s| !s.is_empty());
        let images: Vec<PathBuf> = get(Some(image))
            .ok_or_else(|| bad(path, format!("row {} has no image", row + 2)))?
            .split(';')
            .map(|p| base.join(p.trim()))
            .collect();
        for p in &images {
            if !p.is_file() {
                return Err(bad(path, format!("row {}: {} does not exist", row + 2, p.display())));
            }
        }
        let patient = get(Some(patient)).ok_or_else(|| bad(path, format!("row {} has no patient_id", row + 2)))?.to_string();
        let id = get(case_id).map(str::to_string).unwrap_or_else(|| format!("{patient}_{row}"));
        out.push(Case { id, patient, images, label: get(label).map(|l| base.join(l)), stratum: get(stratum).map(str::to_string) });
    }
    if out.is_empty() {
        return Err(bad(path, "no rows"));
    }
    Ok(out)
}
