//! Annotation and detection files: LUNA16 CSV, MONAI-style box JSON, scan lists.
//!
//! * **LUNA16 CSV** — `seriesuid,coordX,coordY,coordZ,diameter_mm` for annotations and
//!   `seriesuid,coordX,coordY,coordZ,probability` for detections (a file may carry both columns). Coordinates are
//!   world millimetres; LUNA16's files are LPS (ITK's frame), and [`Frame::Ras`] reads or writes RAS files.
//! * **Box JSON** (MONAI's detection data lists) — sections (`"training"`, `"validation"`, `"test"`, …) of entries
//!   `{"image": ..., "box": [[...], ...], "label": [...]}` with boxes as centre and size (`cccwhd`, MONAI's LUNA16
//!   mode; `ccwh` in 2D) or as corners (`xyzxyz`, `xyxy`) in world millimetres. The writer states the mode and the
//!   frame in the file (`"box_mode"`, `"frame"`); the reader takes them from there, defaulting to `cccwhd` and LPS.
//! * **Scan lists** — a CSV whose `seriesuid` column (or first column) names every scan of an evaluation, so scans
//!   without nodules and without marks still count in false positives per scan.
//!
//! ```
//! use vesalius_detection::annotations::{read_luna_csv, write_luna_csv, Detection};
//! use vesalius_detection::geometry::Frame;
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("det.csv");
//! let d = vec![Detection::mark("1.2.3", [-100.5, 20.25, -300.0], 6.0, 0.93)];
//! write_luna_csv(&path, &d, Frame::Lps).unwrap();
//! let text = std::fs::read_to_string(&path).unwrap();
//! assert!(text.starts_with("seriesuid,coordX,coordY,coordZ,diameter_mm,probability\n1.2.3,-100.5,20.25,-300,6,0.93\n"));
//! assert_eq!(read_luna_csv(&path, Frame::Lps).unwrap(), d);
//! // The same file read as RAS flips x and y.
//! assert_eq!(read_luna_csv(&path, Frame::Ras).unwrap()[0].centre, [100.5, -20.25, -300.0]);
//! ```
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vesalius_eval::detection::{Aabb, Finding, Mark};

use crate::DetectError;
use crate::geometry::Frame;

/// A finding or a detection: a centre and a size in world LPS millimetres, with a box and a probability when known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The scan or image it belongs to (LUNA16's `seriesuid`).
    pub scan: String,
    /// Centre, world LPS millimetres.
    pub centre: [f64; 3],
    /// Diameter in millimetres (negative: unknown).
    pub diameter_mm: f64,
    /// The box, world LPS millimetres, when the source has one.
    pub bbox: Option<Aabb>,
    /// The detector's probability (absent for reference findings).
    pub probability: Option<f64>,
}

impl Detection {
    /// A reference finding.
    pub fn finding(scan: &str, centre: [f64; 3], diameter_mm: f64) -> Self {
        Self { scan: scan.to_string(), centre, diameter_mm, bbox: None, probability: None }
    }

    /// A detection with a probability.
    pub fn mark(scan: &str, centre: [f64; 3], diameter_mm: f64, probability: f64) -> Self {
        Self { scan: scan.to_string(), centre, diameter_mm, bbox: None, probability: Some(probability) }
    }

    /// A finding from a box: the box centre (in 2D, on the box's plane `lo[2]`), and the mean extent as diameter.
    pub fn from_box(scan: &str, bbox: Aabb, probability: Option<f64>, ndim: usize) -> Self {
        let ext: Vec<f64> = (0..ndim).map(|a| bbox.hi[a] - bbox.lo[a]).collect();
        let diameter_mm = ext.iter().sum::<f64>() / ndim as f64;
        let mut centre = bbox.centre();
        if ndim == 2 {
            centre[2] = bbox.lo[2];
        }
        Self { scan: scan.to_string(), centre, diameter_mm, bbox: Some(bbox), probability }
    }

    /// As a reference finding of the evaluator.
    pub fn to_finding(&self) -> Finding {
        Finding::new(&self.scan, self.centre, self.diameter_mm)
    }

    /// As a mark of the evaluator (probability 1 when absent).
    pub fn to_mark(&self) -> Mark {
        Mark::new(&self.scan, self.centre, self.probability.unwrap_or(1.0))
    }
}

fn input(path: &Path, msg: impl std::fmt::Display) -> DetectError {
    DetectError::Input(format!("{}: {msg}", path.display()))
}

/// Reads a LUNA16-style CSV (annotations or detections). Needs `seriesuid`, `coordX`, `coordY`, `coordZ`; reads
/// `diameter_mm` and `probability` when present (diameter -1 when absent). `frame` is the file's frame.
pub fn read_luna_csv(path: &Path, frame: Frame) -> Result<Vec<Detection>, DetectError> {
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(|e| input(path, e))?;
    let header = rdr.headers().map_err(|e| input(path, e))?.clone();
    let col = |name: &str| header.iter().position(|h| h == name);
    let need =
        |name: &str| col(name).ok_or_else(|| input(path, format!("no column '{name}' (LUNA16 columns: seriesuid,coordX,coordY,coordZ)")));
    let (uid, x, y, z) = (need("seriesuid")?, need("coordX")?, need("coordY")?, need("coordZ")?);
    let (diam, prob) = (col("diameter_mm"), col("probability"));
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| input(path, format!("line {line}: {e}")))?;
        let num = |c: usize, name: &str| -> Result<f64, DetectError> {
            let text = rec.get(c).unwrap_or("");
            let v: f64 = text.parse().map_err(|_| input(path, format!("line {line}: {name} '{text}' is not a number")))?;
            if v.is_finite() { Ok(v) } else { Err(input(path, format!("line {line}: {name} '{text}' is not finite"))) }
        };
        let scan = rec.get(uid).unwrap_or("").to_string();
        if scan.is_empty() {
            return Err(input(path, format!("line {line}: empty seriesuid")));
        }
        let centre = frame.to_lps([num(x, "coordX")?, num(y, "coordY")?, num(z, "coordZ")?]);
        let diameter_mm = match diam {
            Some(c) => num(c, "diameter_mm")?,
            None => -1.0,
        };
        let probability = match prob {
            Some(c) => Some(num(c, "probability")?),
            None => None,
        };
        out.push(Detection { scan, centre, diameter_mm, bbox: None, probability });
    }
    Ok(out)
}

/// LUNA16 CSV text (with `diameter_mm`, and `probability` when any detection has one) in `frame`.
pub fn luna_csv(detections: &[Detection], frame: Frame) -> String {
    csv_text(detections, frame, detections.iter().any(|d| d.probability.is_some()))
}

/// LUNA16 detection CSV text: always with the `probability` column, even for no marks.
pub fn luna_marks_csv(marks: &[Detection], frame: Frame) -> String {
    csv_text(marks, frame, true)
}

fn csv_text(detections: &[Detection], frame: Frame, with_prob: bool) -> String {
    let mut text = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm");
    if with_prob {
        text.push_str(",probability");
    }
    text.push('\n');
    for d in detections {
        let c = frame.from_lps(d.centre);
        text.push_str(&format!("{},{},{},{},{}", csv_field(&d.scan), c[0], c[1], c[2], d.diameter_mm));
        if with_prob {
            text.push_str(&format!(",{}", d.probability.unwrap_or(1.0)));
        }
        text.push('\n');
    }
    text
}

/// Writes [`luna_csv`] to `path`, atomically.
pub fn write_luna_csv(path: &Path, detections: &[Detection], frame: Frame) -> Result<(), DetectError> {
    vesalius_io::write_atomic(path, luna_csv(detections, frame).as_bytes()).map_err(|e| DetectError::Internal(e.to_string()))
}

/// Writes [`luna_marks_csv`] to `path`, atomically.
pub fn write_luna_marks_csv(path: &Path, marks: &[Detection], frame: Frame) -> Result<(), DetectError> {
    vesalius_io::write_atomic(path, luna_marks_csv(marks, frame).as_bytes()).map_err(|e| DetectError::Internal(e.to_string()))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Reads a scan list: the `seriesuid` column of a CSV with a header, or else its first column.
pub fn read_scans(path: &Path) -> Result<Vec<String>, DetectError> {
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(|e| input(path, e))?;
    let header = rdr.headers().map_err(|e| input(path, e))?.clone();
    let col = header.iter().position(|h| h == "seriesuid");
    let mut out = Vec::new();
    if col.is_none() {
        // No header: the first row is a scan too.
        if let Some(first) = header.get(0).filter(|s| !s.is_empty()) {
            out.push(first.to_string());
        }
    }
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| input(path, format!("line {}: {e}", i + 2)))?;
        let v = rec.get(col.unwrap_or(0)).unwrap_or("");
        if !v.is_empty() {
            out.push(v.to_string());
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = out.iter().find(|s| !seen.insert(s.as_str())) {
        return Err(input(path, format!("scan '{dup}' is listed twice")));
    }
    if out.is_empty() {
        return Err(input(path, "lists no scans"));
    }
    Ok(out)
}

/// How a JSON box lists its numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxMode {
    /// Centre then size: `cccwhd` (3D) or `ccwh` (2D).
    CentreSize,
    /// Low corner then high corner: `xyzxyz` (3D) or `xyxy` (2D).
    Corners,
}

impl BoxMode {
    /// Parses MONAI's mode names.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cccwhd" | "ccwh" => Some(BoxMode::CentreSize),
            "xyzxyz" | "xyxy" => Some(BoxMode::Corners),
            _ => None,
        }
    }
}

/// One entry of a box JSON file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct BoxEntry {
    image: String,
    #[serde(rename = "box")]
    boxes: Vec<Vec<f64>>,
    #[serde(default)]
    label: Vec<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    score: Vec<f64>,
}

/// Reads the boxes of every section of a MONAI-style box JSON file: `section → detections` (the image string is
/// the scan id).
pub fn read_box_json(path: &Path) -> Result<BTreeMap<String, Vec<Detection>>, DetectError> {
    let text = std::fs::read_to_string(path).map_err(|e| input(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| input(path, format!("not JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| input(path, "the top level is not an object"))?;
    let mode_name = obj.get("box_mode").and_then(|v| v.as_str()).unwrap_or("cccwhd");
    let mode =
        BoxMode::parse(mode_name).ok_or_else(|| input(path, format!("unknown box_mode '{mode_name}' (cccwhd, ccwh, xyzxyz, xyxy)")))?;
    let frame_name = obj.get("frame").and_then(|v| v.as_str()).unwrap_or("LPS");
    let frame = Frame::parse(frame_name).ok_or_else(|| input(path, format!("unknown frame '{frame_name}' (LPS or RAS)")))?;
    let mut out = BTreeMap::new();
    for (section, entries) in obj {
        let Some(list) = entries.as_array() else { continue };
        let mut dets = Vec::new();
        for (i, e) in list.iter().enumerate() {
            let entry: BoxEntry = serde_json::from_value(e.clone()).map_err(|err| input(path, format!("{section}[{i}]: {err}")))?;
            if !entry.score.is_empty() && entry.score.len() != entry.boxes.len() {
                return Err(input(path, format!("{section}[{i}]: {} scores for {} boxes", entry.score.len(), entry.boxes.len())));
            }
            for (k, b) in entry.boxes.iter().enumerate() {
                let ndim = match b.len() {
                    6 => 3,
                    4 => 2,
                    n => return Err(input(path, format!("{section}[{i}] box {k}: {n} numbers (4 in 2D, 6 in 3D)"))),
                };
                if b.iter().any(|v| !v.is_finite()) {
                    return Err(input(path, format!("{section}[{i}] box {k}: a value is not finite")));
                }
                let (mut lo, mut hi) = ([0.0, 0.0, 0.0], [0.0, 0.0, 1.0]);
                for a in 0..ndim {
                    let (l, h) = match mode {
                        BoxMode::CentreSize => (b[a] - b[ndim + a] / 2.0, b[a] + b[ndim + a] / 2.0),
                        BoxMode::Corners => (b[a], b[ndim + a]),
                    };
                    if h < l {
                        return Err(input(path, format!("{section}[{i}] box {k}: negative extent along axis {a}")));
                    }
                    lo[a] = l;
                    hi[a] = h;
                }
                let (lo, hi) = if ndim == 3 { (frame.to_lps(lo), frame.to_lps(hi)) } else { (lo, hi) };
                let bbox = Aabb::new(lo, hi);
                dets.push(Detection::from_box(&entry.image, bbox, entry.score.get(k).copied(), ndim));
            }
        }
        out.insert(section.clone(), dets);
    }
    Ok(out)
}

/// Writes sections of detections with boxes as a MONAI-style box JSON file (`cccwhd`/`ccwh` in `frame`, 2D boxes
/// when `ndim` is 2), atomically. Detections without a box get the cube (square) of their diameter.
pub fn write_box_json(path: &Path, sections: &BTreeMap<String, Vec<Detection>>, ndim: usize, frame: Frame) -> Result<(), DetectError> {
    let mut root = serde_json::Map::new();
    root.insert("box_mode".into(), (if ndim == 2 { "ccwh" } else { "cccwhd" }).into());
    root.insert("frame".into(), (if frame == Frame::Lps { "LPS" } else { "RAS" }).into());
    for (section, dets) in sections {
        let mut by_image: BTreeMap<&str, BoxEntry> = BTreeMap::new();
        for d in dets {
            let bbox = d.bbox.unwrap_or_else(|| {
                let r = d.diameter_mm.max(0.0) / 2.0;
                Aabb::new([0, 1, 2].map(|a| d.centre[a] - r), [0, 1, 2].map(|a| d.centre[a] + r))
            });
            let (lo, hi) = if ndim == 3 { (frame.from_lps(bbox.lo), frame.from_lps(bbox.hi)) } else { (bbox.lo, bbox.hi) };
            let b = Aabb::new(lo, hi);
            let c = b.centre();
            let mut v: Vec<f64> = c[..ndim].to_vec();
            v.extend((0..ndim).map(|a| b.hi[a] - b.lo[a]));
            let e = by_image.entry(d.scan.as_str()).or_insert_with(|| BoxEntry {
                image: d.scan.clone(),
                boxes: vec![],
                label: vec![],
                score: vec![],
            });
            e.boxes.push(v);
            e.label.push(0);
            if let Some(p) = d.probability {
                e.score.push(p);
            }
        }
        let list: Vec<serde_json::Value> = by_image.into_values().map(|e| serde_json::to_value(e).unwrap_or_default()).collect();
        root.insert(section.clone(), serde_json::Value::Array(list));
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(root)).map_err(|e| DetectError::Internal(e.to_string()))?;
    vesalius_io::write_atomic(path, text.as_bytes()).map_err(|e| DetectError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rows_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "seriesuid,coordX,coordY,coordZ,diameter_mm\ns1,1,2,3,4\ns1,1,x,3,4\n").unwrap();
        let e = read_luna_csv(&p, Frame::Lps).unwrap_err().to_string();
        assert!(e.contains("a.csv") && e.contains("line 3") && e.contains("coordY 'x'"), "{e}");
        std::fs::write(&p, "uid,coordX\ns1,1\n").unwrap();
        let e = read_luna_csv(&p, Frame::Lps).unwrap_err().to_string();
        assert!(e.contains("no column 'seriesuid'"), "{e}");
        std::fs::write(&p, "seriesuid,coordX,coordY,coordZ\ns1,1,2,inf\n").unwrap();
        assert!(read_luna_csv(&p, Frame::Lps).unwrap_err().to_string().contains("not finite"));
    }

    #[test]
    fn box_json_round_trip_in_both_frames() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boxes.json");
        let b = Aabb::new([-10.0, 20.0, -5.0], [-4.0, 26.0, 1.0]);
        let d = Detection::from_box("scan1", b, Some(0.5), 3);
        assert_eq!(d.centre, [-7.0, 23.0, -2.0]);
        assert_eq!(d.diameter_mm, 6.0);
        let sections = BTreeMap::from([("validation".to_string(), vec![d.clone()])]);
        for frame in [Frame::Lps, Frame::Ras] {
            write_box_json(&p, &sections, 3, frame).unwrap();
            let back = read_box_json(&p).unwrap();
            assert_eq!(back["validation"], vec![d.clone()]);
        }
        // The RAS file holds the negated centre.
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["validation"][0]["box"][0], serde_json::json!([7.0, -23.0, -2.0, 6.0, 6.0, 6.0]));
        // Corner mode and 2D boxes.
        std::fs::write(&p, r#"{"box_mode": "xyxy", "test": [{"image": "img.png", "box": [[1, 2, 5, 10]], "label": [0]}]}"#).unwrap();
        let d = &read_box_json(&p).unwrap()["test"][0];
        assert_eq!((d.centre, d.diameter_mm), ([3.0, 6.0, 0.0], 6.0));
        std::fs::write(&p, r#"{"test": [{"image": "i", "box": [[1, 2, 3]]}]}"#).unwrap();
        assert!(read_box_json(&p).unwrap_err().to_string().contains("3 numbers"));
    }

    #[test]
    fn scan_lists_with_or_without_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(&p, "seriesuid\na\nb\n").unwrap();
        assert_eq!(read_scans(&p).unwrap(), vec!["a", "b"]);
        std::fs::write(&p, "a\nb\n").unwrap();
        assert_eq!(read_scans(&p).unwrap(), vec!["a", "b"]);
        std::fs::write(&p, "seriesuid\na\na\n").unwrap();
        assert!(read_scans(&p).unwrap_err().to_string().contains("twice"));
    }
}
