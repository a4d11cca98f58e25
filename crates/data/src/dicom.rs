//! DICOM through dicom-rs: single files (one or several frames) and series folders assembled into one volume.
//!
//! A series is the set of files sharing a SeriesInstanceUID. Its slices are sorted along the slice normal
//! (`row cosine × column cosine`) by ImagePositionPatient — never by file name or InstanceNumber — and the affine
//! is built from ImageOrientationPatient, PixelSpacing and the slice positions, converted from DICOM's LPS to RAS+.
//! Missing slices and uneven spacing are reported. RescaleSlope/RescaleIntercept are applied. Pixel data sizes
//! declared by the header are checked against the file before anything is decoded.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde::Serialize;

use crate::image::Affine;
use crate::{DataError, Image, Result};

/// What one file's header says about its pixels and geometry.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceHeader {
    /// The file.
    pub path: PathBuf,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// Modality (CT, MR, …).
    pub modality: String,
    /// SeriesDescription.
    pub description: String,
    /// Rows, columns, frames, samples per pixel, bits allocated.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// NumberOfFrames (1 when absent).
    pub frames: u32,
    /// SamplesPerPixel.
    pub samples: u16,
    /// BitsAllocated.
    pub bits: u16,
    /// ImagePositionPatient (LPS, mm).
    pub position: Option<[f64; 3]>,
    /// ImageOrientationPatient: row cosine then column cosine.
    pub orientation: Option<[f64; 6]>,
    /// PixelSpacing: between rows, between columns.
    pub spacing: Option<[f64; 2]>,
    /// SpacingBetweenSlices, else SliceThickness.
    pub slice_spacing: Option<f64>,
    /// Transfer syntax UID.
    pub transfer_syntax: String,
}

fn text(obj: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<String> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().trim_end_matches('\0').to_string())
}

fn floats(obj: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_multi_float64().ok())
}

fn int(obj: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<i64> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<i64>().ok())
}

/// Name of a transfer syntax UID.
pub fn transfer_syntax_name(uid: &str) -> String {
    let uid = uid.trim_end_matches('\0').trim();
    TransferSyntaxRegistry.get(uid).map_or_else(|| uid.to_string(), |ts| format!("{} ({uid})", ts.name()))
}

/// Walks the element headers of a DICOM file and checks that every declared value length fits in the bytes
/// left, so that no parser is asked to reserve memory for data the file cannot hold. Handles the explicit-VR
/// little-endian meta group, then the data set in implicit or explicit VR, little or big endian, stepping into
/// sequences and items and over encapsulated fragments.
pub fn check_lengths(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |at: usize, msg: String| DataError::format(path, format!("{msg} (at byte {at})"));
    let mut pos = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" { 132 } else { 0 };
    let mut explicit = true;
    let mut big = false;
    let mut in_meta = pos == 132;
    let mut fragments = false;
    let u16_at = |b: &[u8], i: usize, big: bool| -> Option<u16> {
        let v = [*b.get(i)?, *b.get(i + 1)?];
        Some(if big { u16::from_be_bytes(v) } else { u16::from_le_bytes(v) })
    };
    let u32_at = |b: &[u8], i: usize, big: bool| -> Option<u32> {
        let v = [*b.get(i)?, *b.get(i + 1)?, *b.get(i + 2)?, *b.get(i + 3)?];
        Some(if big { u32::from_be_bytes(v) } else { u32::from_le_bytes(v) })
    };
    while pos + 8 <= bytes.len() {
        let le_group = u16_at(bytes, pos, false).unwrap_or(0);
        if in_meta && le_group != 0x0002 {
            in_meta = false;
        }
        let bo = big && !in_meta;
        let group = u16_at(bytes, pos, bo).unwrap_or(0);
        let element = u16_at(bytes, pos + 2, bo).unwrap_or(0);
        let (len, header) = if group == 0xFFFE {
            (u32_at(bytes, pos + 4, bo).unwrap_or(0), 8)
        } else if explicit || in_meta {
            let vr = [bytes[pos + 4], bytes[pos + 5]];
            // VRs with a 2-byte length; every other VR, unknown ones included (as parsers treat them), has a
            // 4-byte length after 2 reserved bytes.
            let short = [
                b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS",
                b"ST", b"TM", b"UI", b"UL", b"US",
            ];
            if short.contains(&&vr) {
                (u16_at(bytes, pos + 6, bo).unwrap_or(0) as u32, 8)
            } else {
                (u32_at(bytes, pos + 8, bo).ok_or_else(|| err(pos, "truncated element header".into()))?, 12)
            }
        } else {
            (u32_at(bytes, pos + 4, bo).unwrap_or(0), 8)
        };
        let value_at = pos + header;
        let is_sq = (explicit || in_meta) && group != 0xFFFE && &bytes[pos + 4..pos + 6] == b"SQ";
        if len == u32::MAX {
            // Undefined length: a sequence, an item, or encapsulated pixel data; walk into its content.
            if !is_sq && group != 0xFFFE {
                fragments = true;
            }
            pos = value_at;
            continue;
        }
        let len = len as usize;
        if len > bytes.len().saturating_sub(value_at) {
            return Err(err(
                pos,
                format!("element ({group:04X},{element:04X}) declares {len} bytes but only {} remain in the file", bytes.len().saturating_sub(value_at)),
            ));
        }
        if in_meta && (group, element) == (0x0002, 0x0010) {
            let ts = String::from_utf8_lossy(&bytes[value_at..value_at + len]).trim_end_matches(['\0', ' ']).to_string();
            explicit = ts != "1.2.840.10008.1.2";
            big = ts == "1.2.840.10008.1.2.2";
        }
        if (group, element) == (0xFFFE, 0xE0DD) && fragments {
            // End of encapsulated pixel data: what follows is not read.
            break;
        }
        if (group, element) == (0x7FE0, 0x0010) {
            // Bytes after the pixel data are never read (some files carry unreadable trailing bytes).
            break;
        }
        // Step into defined-length sequences and items (their content is elements); skip other values.
        let step_into = is_sq || (group == 0xFFFE && element == 0xE000 && !fragments);
        pos = if step_into { value_at } else { value_at + len };
    }
    Ok(())
}

/// Reads the header of a DICOM file (everything before the pixel data).
pub fn read_header(path: &Path) -> Result<SliceHeader> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return Err(DataError::format(path, "is a directory (use it as a series folder)"));
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    check_lengths(path, &bytes)?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| DataError::format(path, format!("not a readable DICOM file: {e}")))?;
    header_of(&obj, path, meta.len())
}

fn header_of(obj: &DefaultDicomObject, path: &Path, file_len: u64) -> Result<SliceHeader> {
    let rows = int(obj, tags::ROWS).unwrap_or(0);
    let cols = int(obj, tags::COLUMNS).unwrap_or(0);
    let frames = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let samples = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits = int(obj, tags::BITS_ALLOCATED).unwrap_or(16);
    let bad = |what: &str, v: i64| DataError::format(path, format!("invalid {what} {v}"));
    if !(1..=65535).contains(&rows) {
        return Err(bad("Rows", rows));
    }
    if !(1..=65535).contains(&cols) {
        return Err(bad("Columns", cols));
    }
    if !(1..=100_000).contains(&frames) {
        return Err(bad("NumberOfFrames", frames));
    }
    if ![1, 3].contains(&samples) {
        return Err(bad("SamplesPerPixel", samples));
    }
    if ![1, 8, 16, 32, 64].contains(&bits) {
        return Err(bad("BitsAllocated", bits));
    }
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let encapsulated = TransferSyntaxRegistry.get(&ts).is_some_and(|t| t.is_encapsulated_pixel_data());
    let need = rows as u64 * cols as u64 * frames as u64 * samples as u64 * bits.max(8) as u64 / 8;
    if !encapsulated && need > file_len {
        return Err(DataError::format(
            path,
            format!("header declares {rows}×{cols}×{frames} pixels ({need} bytes) but the file holds {file_len} bytes"),
        ));
    }
    let arr = |v: Option<Vec<f64>>, n: usize| v.filter(|v| v.len() >= n && v.iter().all(|x| x.is_finite()));
    Ok(SliceHeader {
        path: path.to_path_buf(),
        series_uid: text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        modality: text(obj, tags::MODALITY).unwrap_or_default(),
        description: text(obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        rows: rows as u32,
        cols: cols as u32,
        frames: frames as u32,
        samples: samples as u16,
        bits: bits as u16,
        position: arr(floats(obj, tags::IMAGE_POSITION_PATIENT), 3).map(|v| [v[0], v[1], v[2]]),
        orientation: arr(floats(obj, tags::IMAGE_ORIENTATION_PATIENT), 6).map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]),
        spacing: arr(floats(obj, tags::PIXEL_SPACING), 2).map(|v| [v[0], v[1]]).filter(|s| s[0] > 0.0 && s[1] > 0.0),
        slice_spacing: floats(obj, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| floats(obj, tags::SLICE_THICKNESS))
            .and_then(|v| v.first().copied())
            .filter(|s| *s > 0.0 && s.is_finite()),
        transfer_syntax: ts,
    })
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it (a decoder's bug on corrupt input) into an error message. The panic is
/// not reported by the process's panic hook while it is caught here.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    result.map_err(|p| {
        p.downcast_ref::<&str>().map(|s| (*s).to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "decoder panic".into())
    })
}

/// Decoded pixel values of a file, frames last, with the modality rescale applied; RGB becomes planar.
fn pixels(path: &Path, h: &SliceHeader) -> Result<Vec<f32>> {
    if let Some(ts) = TransferSyntaxRegistry.get(&h.transfer_syntax) {
        if !ts.can_decode_all() {
            return Err(DataError::format(path, format!("unsupported transfer syntax {}", transfer_syntax_name(&h.transfer_syntax))));
        }
    } else {
        return Err(DataError::format(path, format!("unsupported transfer syntax {}", transfer_syntax_name(&h.transfer_syntax))));
    }
    let obj = open_tolerant(path)?;
    let decoded = guarded(|| obj.decode_pixel_data())
        .map_err(|m| DataError::format(path, format!("corrupt pixel data: the {} decoder failed ({m})", transfer_syntax_name(&h.transfer_syntax))))?
        .map_err(|e| {
        let msg = e.to_string();
        if msg.to_ascii_lowercase().contains("unsupported") {
            DataError::format(path, format!("unsupported transfer syntax {}", transfer_syntax_name(&h.transfer_syntax)))
        } else {
            DataError::format(path, format!("cannot decode pixel data: {msg}"))
        }
    })?;
    let values: Vec<f32> = guarded(|| decoded.to_vec_with_options(&ConvertOptions::new().with_modality_lut(ModalityLutOption::Default)))
        .map_err(|m| DataError::format(path, format!("corrupt pixel data ({m})")))?
        .map_err(|e| DataError::format(path, format!("cannot convert pixel data: {e}")))?;
    let plane = h.rows as usize * h.cols as usize;
    let n = plane * h.frames as usize;
    if values.len() != n * h.samples as usize {
        return Err(DataError::format(path, format!("decoded {} values, expected {}", values.len(), n * h.samples as usize)));
    }
    if h.samples == 1 {
        return Ok(values);
    }
    let mut planar = vec![0f32; values.len()];
    for (i, px) in values.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planar[c * n + i] = px[c];
        }
    }
    Ok(planar)
}

/// Opens a whole DICOM file. Some files carry bytes after their last element that no parser can read (pydicom
/// ignores them); when the full parse fails, the file is parsed again up to the end of its Pixel Data element,
/// located by its header and a length that fits in the file.
pub fn open_tolerant(path: &Path) -> Result<DefaultDicomObject> {
    let first = guarded(|| dicom_object::open_file(path)).map_err(|m| DataError::format(path, format!("corrupt DICOM data ({m})")))?;
    let err = match first {
        Ok(obj) => return Ok(obj),
        Err(e) => e,
    };
    let fail = || DataError::format(path, format!("not a readable DICOM file: {err}"));
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let end = (0..bytes.len().saturating_sub(8)).filter(|&i| bytes[i..i + 4] == [0xE0, 0x7F, 0x10, 0x00]).find_map(|i| {
        let explicit = matches!(&bytes[i + 4..i + 6], b"OW" | b"OB") && bytes[i + 6..i + 8] == [0, 0];
        let (len_at, data_at) = if explicit { (i + 8, i + 12) } else { (i + 4, i + 8) };
        let len = u32::from_le_bytes(bytes.get(len_at..len_at + 4)?.try_into().ok()?) as usize;
        (len != u32::MAX as usize && data_at + len < bytes.len()).then_some(data_at + len)
    });
    let end = end.ok_or_else(fail)?;
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("vesalius-dicom-{}-{n}.dcm", std::process::id()));
    std::fs::write(&tmp, &bytes[..end]).map_err(|e| DataError::io(&tmp, e))?;
    let second = guarded(|| dicom_object::open_file(&tmp));
    let _ = std::fs::remove_file(&tmp);
    match second {
        Ok(Ok(obj)) => Ok(obj),
        _ => Err(fail()),
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// RAS+ affine from LPS origin and axis vectors (each already scaled by its spacing).
fn affine_lps(origin: [f64; 3], i: [f64; 3], j: [f64; 3], k: [f64; 3]) -> Affine {
    let mut a = [[0.0; 4]; 4];
    for r in 0..3 {
        let sign = if r < 2 { -1.0 } else { 1.0 };
        a[r][0] = sign * i[r];
        a[r][1] = sign * j[r];
        a[r][2] = sign * k[r];
        a[r][3] = sign * origin[r];
    }
    a[3][3] = 1.0;
    a
}

fn in_plane(h: &SliceHeader) -> ([f64; 3], [f64; 3], [f64; 3], [f64; 3]) {
    let o = h.orientation.unwrap_or([1., 0., 0., 0., 1., 0.]);
    let (r, c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let [drow, dcol] = h.spacing.unwrap_or([1.0, 1.0]);
    let i = r.map(|v| v * dcol);
    let j = c.map(|v| v * drow);
    (i, j, cross(r, c), h.position.unwrap_or([0.0; 3]))
}

/// Reads one DICOM file; several frames stack along the third axis (spaced by SpacingBetweenSlices or
/// SliceThickness along the slice normal).
pub fn load_file(path: &Path) -> Result<Image> {
    let h = read_header(path)?;
    let data = pixels(path, &h)?;
    let (i, j, n, o) = in_plane(&h);
    let ds = h.slice_spacing.unwrap_or(1.0);
    let affine = affine_lps(o, i, j, n.map(|v| v * ds));
    let shape = if h.frames > 1 { vec![h.cols as usize, h.rows as usize, h.frames as usize] } else { vec![h.cols as usize, h.rows as usize] };
    Image::new(data, shape, h.samples as usize, affine, &format!("dicom{}", h.bits))
        .map(|img| img.with_dtype(if h.bits <= 8 { "uint8" } else { "int16" }))
        .map_err(|e| DataError::format(path, e.to_string()))
}

/// One series found in a folder.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesSummary {
    /// SeriesInstanceUID.
    pub uid: String,
    /// Modality.
    pub modality: String,
    /// SeriesDescription.
    pub description: String,
    /// Number of files.
    pub files: usize,
}

/// A series assembled into a volume, with what was noticed on the way.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesReport {
    /// SeriesInstanceUID.
    pub uid: String,
    /// Modality.
    pub modality: String,
    /// Slices in the volume.
    pub slices: usize,
    /// Median distance between consecutive slices along the normal, mm.
    pub slice_spacing: f64,
    /// Problems: missing slices, uneven spacing, duplicated positions.
    pub warnings: Vec<String>,
}

/// Headers of every DICOM file under `dir` (recursively), grouped by series; files that are not DICOM are
/// skipped.
pub fn scan(dir: &Path) -> Result<BTreeMap<String, Vec<SliceHeader>>> {
    let mut stack = vec![dir.to_path_buf()];
    let mut series: BTreeMap<String, Vec<SliceHeader>> = BTreeMap::new();
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(h) = read_header(&p) {
                series.entry(h.series_uid.clone()).or_default().push(h);
            }
        }
    }
    Ok(series)
}

/// The series in `dir`.
pub fn list_series(dir: &Path) -> Result<Vec<SeriesSummary>> {
    Ok(scan(dir)?
        .into_iter()
        .map(|(uid, files)| SeriesSummary {
            modality: files[0].modality.clone(),
            description: files[0].description.clone(),
            files: files.len(),
            uid,
        })
        .collect())
}

/// Assembles the series `uid` of `dir` (or its only series) into one volume.
pub fn load_series(dir: &Path, uid: Option<&str>) -> Result<(Image, SeriesReport)> {
    let mut all = scan(dir)?;
    if all.is_empty() {
        return Err(DataError::format(dir, "no DICOM files found in this folder"));
    }
    let uid = match uid {
        Some(u) => u.to_string(),
        None if all.len() == 1 => all.keys().next().cloned().unwrap_or_default(),
        None => {
            let list: Vec<String> = all.iter().map(|(u, f)| format!("{u} ({} files)", f.len())).collect();
            return Err(DataError::format(dir, format!("{} series found; choose one by UID: {}", all.len(), list.join(", "))));
        }
    };
    let mut slices = all.remove(&uid).ok_or_else(|| DataError::format(dir, format!("no series with UID {uid}")))?;
    let first = slices[0].clone();
    for s in &slices {
        if (s.rows, s.cols, s.samples) != (first.rows, first.cols, first.samples) {
            return Err(DataError::format(&s.path, "slice size differs from the rest of the series"));
        }
    }
    if slices.len() == 1 {
        let img = load_file(&first.path)?;
        let report = SeriesReport { uid, modality: first.modality, slices: first.frames as usize, slice_spacing: first.slice_spacing.unwrap_or(1.0), warnings: vec![] };
        return Ok((img, report));
    }
    let (i, j, n, _) = in_plane(&first);
    let mut warnings = Vec::new();
    if slices.iter().any(|s| s.position.is_none()) {
        return Err(DataError::format(dir, "a slice has no ImagePositionPatient: cannot order the series"));
    }
    let proj = |s: &SliceHeader| dot(s.position.unwrap_or([0.0; 3]), n);
    slices.sort_by(|a, b| proj(a).total_cmp(&proj(b)));
    let gaps: Vec<f64> = slices.windows(2).map(|w| proj(&w[1]) - proj(&w[0])).collect();
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if gaps.iter().any(|g| g.abs() < 1e-4) {
        warnings.push("two slices share a position".to_string());
    }
    if median > 0.0 {
        let missing: usize = gaps.iter().map(|g| ((g / median).round() as usize).saturating_sub(1)).sum();
        if missing > 0 {
            warnings.push(format!("{missing} slice(s) missing (gaps larger than the median spacing {median:.3} mm)"));
        }
        let uneven = gaps.iter().map(|g| (g - median).abs()).fold(0.0, f64::max);
        if uneven > 0.01 * median.max(1e-3) && missing == 0 {
            warnings.push(format!("uneven slice spacing: up to {uneven:.3} mm from the median {median:.3} mm"));
        }
    }
    let last = slices.len() - 1;
    let p0 = slices[0].position.unwrap_or([0.0; 3]);
    let pn = slices[last].position.unwrap_or([0.0; 3]);
    let k = [0, 1, 2].map(|a| (pn[a] - p0[a]) / last as f64);
    let plane = first.rows as usize * first.cols as usize;
    let channels = first.samples as usize;
    let nz = slices.len();
    let mut data = vec![0f32; plane * nz * channels];
    for (z, s) in slices.iter().enumerate() {
        let px = pixels(&s.path, s)?;
        if px.len() != plane * channels {
            return Err(DataError::format(&s.path, "multi-frame files cannot be mixed into a series of slices"));
        }
        for c in 0..channels {
            data[(c * nz + z) * plane..(c * nz + z + 1) * plane].copy_from_slice(&px[c * plane..(c + 1) * plane]);
        }
    }
    let img = Image::new(data, vec![first.cols as usize, first.rows as usize, nz], channels, affine_lps(p0, i, j, k), if first.bits <= 8 { "uint8" } else { "int16" })
        .map_err(|e| DataError::format(dir, e.to_string()))?;
    Ok((img, SeriesReport { uid, modality: first.modality, slices: nz, slice_spacing: median, warnings }))
}
