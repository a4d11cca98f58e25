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
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, Rescale};
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
    /// Position (LPS, mm) of each frame of a multi-frame file, in file order, when the file gives them:
    /// enhanced objects' per-frame PlanePositionSequence, or RT Dose's GridFrameOffsetVector.
    pub frame_positions: Option<Vec<[f64; 3]>>,
    /// RT Dose's DoseGridScaling (stored value × scaling = dose in Gy).
    pub dose_scaling: Option<f64>,
}

fn text(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Option<String> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().trim_end_matches('\0').to_string())
}

/// Numbers of an attribute. Decimal strings are parsed from their text, so that a DS element stored under VR UN
/// (raw bytes) still reads as numbers rather than as character codes.
fn floats(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Option<Vec<f64>> {
    let e = obj.element_opt(tag).ok().flatten()?;
    if e.vr() == dicom_core::VR::UN {
        let text = String::from_utf8_lossy(&e.to_bytes().ok()?).trim_end_matches(['\0', ' ']).to_string();
        return text.split('\\').map(|v| v.trim().parse::<f64>().ok()).collect();
    }
    e.to_multi_float64().ok()
}

fn int(obj: &InMemDicomObject, tag: dicom_object::Tag) -> Option<i64> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<i64>().ok())
}

/// Items of a sequence attribute (empty when absent or not a sequence).
fn items(obj: &InMemDicomObject, tag: dicom_object::Tag) -> &[InMemDicomObject] {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.items()).unwrap_or(&[])
}

/// `tag` inside the first item of `sequence` inside `group` (a functional group item).
fn in_group(group: Option<&InMemDicomObject>, sequence: dicom_object::Tag, tag: dicom_object::Tag) -> Option<Vec<f64>> {
    group.and_then(|g| items(g, sequence).first()).and_then(|item| floats(item, tag))
}

fn measures(group: Option<&InMemDicomObject>) -> Option<&InMemDicomObject> {
    group.and_then(|g| items(g, tags::PIXEL_MEASURES_SEQUENCE).first())
}

fn finite(v: Option<Vec<f64>>, n: usize) -> Option<Vec<f64>> {
    v.filter(|v| v.len() >= n && v.iter().all(|x| x.is_finite()))
}

/// Frame positions of a multi-frame object: per-frame PlanePositionSequence (enhanced CT/MR/PET, SEG), or
/// ImagePositionPatient plus GridFrameOffsetVector along the normal (RT Dose). `None` unless every frame has one.
fn frame_positions(obj: &InMemDicomObject, frames: usize, orientation: Option<[f64; 6]>) -> Option<Vec<[f64; 3]>> {
    if frames < 2 {
        return None;
    }
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if per_frame.len() == frames {
        let positions: Option<Vec<[f64; 3]>> = per_frame
            .iter()
            .map(|f| finite(in_group(Some(f), tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT), 3).map(|v| [v[0], v[1], v[2]]))
            .collect();
        if positions.is_some() {
            return positions;
        }
    }
    let offsets = finite(floats(obj, tags::GRID_FRAME_OFFSET_VECTOR), frames)?;
    let origin = finite(floats(obj, tags::IMAGE_POSITION_PATIENT), 3)?;
    let o = orientation?;
    let n = cross([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    Some(offsets[..frames].iter().map(|t| [0, 1, 2].map(|a| origin[a] + t * n[a])).collect())
}

/// Name of a transfer syntax UID.
pub fn transfer_syntax_name(uid: &str) -> String {
    let uid = uid.trim_end_matches('\0').trim();
    TransferSyntaxRegistry.get(uid).map_or_else(|| uid.to_string(), |ts| format!("{} ({uid})", ts.name()))
}

/// Walks the element headers of a DICOM file and checks that every declared value length fits in the bytes
/// left, so that no parser is asked to reserve memory for data the file cannot hold. Handles the explicit-VR
/// little-endian meta group, then the data set in implicit or explicit VR, little or big endian, stepping into
/// sequences and items and over encapsulated fragments. Returns where parsing should stop: the end of the Pixel
/// Data element (what follows it is never read), else the end of the file.
pub fn check_lengths(path: &Path, bytes: &[u8]) -> Result<usize> {
    let err = |at: usize, msg: String| DataError::format(path, format!("{msg} (at byte {at})"));
    let mut pos = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" { 132 } else { 0 };
    let mut explicit = true;
    let mut big = false;
    let mut in_meta = pos == 132;
    let mut fragments = false;
    let mut deflated = false;
    let u16_at = |b: &[u8], i: usize, big: bool| -> Option<u16> {
        let v = [*b.get(i)?, *b.get(i + 1)?];
        Some(if big { u16::from_be_bytes(v) } else { u16::from_le_bytes(v) })
    };
    let u32_at = |b: &[u8], i: usize, big: bool| -> Option<u32> {
        let v = [*b.get(i)?, *b.get(i + 1)?, *b.get(i + 2)?, *b.get(i + 3)?];
        Some(if big { u32::from_be_bytes(v) } else { u32::from_le_bytes(v) })
    };
    // Open sequences (true) and items (false), with their end offsets when their lengths are defined.
    let mut open: Vec<(bool, Option<usize>)> = Vec::new();
    while pos + 8 <= bytes.len() {
        while let Some(&(_, Some(end))) = open.last() {
            if pos < end {
                break;
            }
            if pos > end {
                return Err(err(pos, "an element runs past the end of its sequence or item".into()));
            }
            open.pop();
        }
        let le_group = u16_at(bytes, pos, false).unwrap_or(0);
        if in_meta && le_group != 0x0002 {
            in_meta = false;
        }
        if deflated && !in_meta {
            return Err(err(pos, "a deflated data set must be inflated before its lengths are walked".into()));
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
                b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST",
                b"TM", b"UI", b"UL", b"US",
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
        // A value of a fixed-size VR must hold whole values: a parser given 2 bytes of SL would lose its place.
        let vr_code: Option<[u8; 2]> = if group == 0xFFFE {
            None
        } else if explicit || in_meta {
            Some([bytes[pos + 4], bytes[pos + 5]])
        } else {
            use dicom_core::dictionary::DataDictionary;
            dicom_dictionary_std::StandardDataDictionary
                .by_tag(dicom_object::Tag(group, element))
                .map(|e| e.vr.relaxed().to_string().as_bytes().try_into().unwrap_or([0, 0]))
        };
        if let (Some(vr), true) = (vr_code, len != u32::MAX) {
            let size = match &vr {
                b"US" | b"SS" | b"OW" => 2,
                b"UL" | b"SL" | b"FL" | b"AT" | b"OL" | b"OF" => 4,
                b"FD" | b"SV" | b"UV" | b"OD" | b"OV" => 8,
                _ => 1,
            };
            if !(len as usize).is_multiple_of(size) {
                return Err(err(
                    pos,
                    format!(
                        "element ({group:04X},{element:04X}) of VR {} has {len} bytes, not a whole number of {size}-byte values",
                        String::from_utf8_lossy(&vr)
                    ),
                ));
            }
        }
        // Implicit VR: the dictionary says which elements are sequences, as it tells the parser.
        let is_sq = group != 0xFFFE && vr_code.as_ref() == Some(b"SQ");
        let in_sequence = matches!(open.last(), Some((true, _)));
        if in_sequence && !(group == 0xFFFE && (element == 0xE000 || element == 0xE0DD)) {
            return Err(err(pos, format!("sequence holds element ({group:04X},{element:04X}) where an item belongs")));
        }
        if !fragments && group == 0xFFFE && (element == 0xE0DD || element == 0xE00D) {
            // A delimiter closes the innermost container of undefined length: a sequence (E0DD) or an item (E00D).
            let closes_sequence = element == 0xE0DD;
            match open.last() {
                Some(&(kind, None)) if kind == closes_sequence => {
                    open.pop();
                }
                _ => return Err(err(pos, format!("delimiter (FFFE,{element:04X}) closes nothing open"))),
            }
            pos = value_at;
            continue;
        }
        let parent_end = open.iter().rev().find_map(|&(_, end)| end).unwrap_or(bytes.len());
        if len == u32::MAX {
            // Undefined length: a sequence (SQ, UN, or any element in implicit VR but the pixel data), an item,
            // or encapsulated pixel data; walk into its content. Nothing else may have one.
            let pixel_data = (group, element) == (0x7FE0, 0x0010);
            let explicit_here = (explicit || in_meta) && group != 0xFFFE;
            let sequence = is_sq || (explicit_here && &bytes[pos + 4..pos + 6] == b"UN") || (!explicit_here && !pixel_data);
            if pixel_data {
                fragments = true;
            } else if group != 0xFFFE && !sequence {
                return Err(err(
                    pos,
                    format!(
                        "element ({group:04X},{element:04X}) has an undefined length but is neither a sequence nor encapsulated pixel data"
                    ),
                ));
            } else if !fragments {
                open.push((group != 0xFFFE, None));
            }
            pos = value_at;
            continue;
        }
        let len = len as usize;
        if len > bytes.len().saturating_sub(value_at) {
            return Err(err(
                pos,
                format!(
                    "element ({group:04X},{element:04X}) declares {len} bytes but only {} remain in the file",
                    bytes.len().saturating_sub(value_at)
                ),
            ));
        }
        if !fragments && value_at + len > parent_end {
            return Err(err(pos, format!("element ({group:04X},{element:04X}) runs past the end of its sequence or item")));
        }
        if in_meta && (group, element) == (0x0002, 0x0010) {
            let ts = String::from_utf8_lossy(&bytes[value_at..value_at + len]).trim_end_matches(['\0', ' ']).to_string();
            explicit = ts != "1.2.840.10008.1.2";
            big = ts == "1.2.840.10008.1.2.2";
            deflated = ts == "1.2.840.10008.1.2.1.99";
        }
        if (group, element) == (0xFFFE, 0xE0DD) && fragments {
            // End of encapsulated pixel data: what follows is not read.
            return Ok(value_at + len);
        }
        if (group, element) == (0x7FE0, 0x0010) {
            // Bytes after the pixel data are never read (some files carry unreadable trailing bytes).
            return Ok(value_at + len);
        }
        // Step into defined-length sequences and items (their content is elements); skip other values.
        let item = group == 0xFFFE && element == 0xE000 && !fragments;
        if is_sq || item {
            open.push((is_sq, Some(value_at + len)));
            pos = value_at;
        } else {
            pos = value_at + len;
        }
    }
    Ok(bytes.len())
}

/// Reads the header of a DICOM file (everything before the pixel data).
pub fn read_header(path: &Path) -> Result<SliceHeader> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return Err(DataError::format(path, "is a directory (use it as a series folder)"));
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let obj = parse(path, &bytes, Some(tags::PIXEL_DATA))?;
    // A deflated data set holds more than the file: sizes are checked against the inflated bytes.
    let len = inflate_dataset(path, &bytes)?.map_or(meta.len(), |v| v.len() as u64);
    header_of(&obj, path, len)
}

/// For a file in Deflated Explicit VR Little Endian: the same file with its data set inflated (bounded by
/// [`crate::formats::MAX_DEFLATE_RATIO`]) and its transfer syntax renamed Explicit VR Little Endian (padded to the
/// same length, so that the meta group's length still holds), so that the length walk and the parser see the
/// same bytes. `None` for every other file.
fn inflate_dataset(path: &Path, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    const DEFLATED: &[u8] = b"1.2.840.10008.1.2.1.99";
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Ok(None);
    }
    // The meta group: explicit VR little endian elements of group 0002.
    let mut pos = 132;
    let mut ts_at = None;
    while pos + 8 <= bytes.len() && bytes[pos..pos + 2] == [0x02, 0x00] {
        let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let vr = &bytes[pos + 4..pos + 6];
        let (len, header) = if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR") {
            let Some(b) = bytes.get(pos + 8..pos + 12) else { return Ok(None) };
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        } else {
            (u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]]) as usize, 8)
        };
        if element == 0x0010 {
            ts_at = Some((pos + header, len));
        }
        pos = pos.saturating_add(header).saturating_add(len);
    }
    let Some((at, len)) = ts_at else { return Ok(None) };
    let value = bytes.get(at..at + len).unwrap_or(&[]);
    if value.iter().rposition(|&c| c != 0 && c != b' ').map(|e| &value[..=e]) != Some(DEFLATED) || pos > bytes.len() {
        return Ok(None);
    }
    let limit = (bytes.len() - pos) as u64 * crate::formats::MAX_DEFLATE_RATIO;
    let mut inflated = Vec::new();
    let mut reader = std::io::Read::take(flate2::read::DeflateDecoder::new(&bytes[pos..]), limit + 1);
    std::io::Read::read_to_end(&mut reader, &mut inflated)
        .map_err(|e| DataError::format(path, format!("corrupt deflated data set: {e}")))?;
    if inflated.len() as u64 > limit {
        return Err(DataError::format(path, "deflated data set expands beyond the allowed ratio"));
    }
    let mut out = bytes[..pos].to_vec();
    let explicit = b"1.2.840.10008.1.2.1";
    out[at..at + len].fill(0);
    out[at..at + explicit.len()].copy_from_slice(explicit);
    out.extend_from_slice(&inflated);
    Ok(Some(out))
}

/// Parses the checked bytes of a DICOM file, up to the end of its Pixel Data element (or to `until`, excluded).
/// A decoder panic on corrupt input becomes an error.
fn parse(path: &Path, bytes: &[u8], until: Option<dicom_object::Tag>) -> Result<DefaultDicomObject> {
    let inflated = inflate_dataset(path, bytes)?;
    let bytes = inflated.as_deref().unwrap_or(bytes);
    let end = check_lengths(path, bytes)?;
    let preamble = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" { ReadPreamble::Always } else { ReadPreamble::Never };
    let options = OpenFileOptions::new().read_preamble(preamble);
    let options = match until {
        Some(tag) => options.read_until(tag),
        None => options,
    };
    guarded(|| options.from_reader(&bytes[..end]))
        .map_err(|m| DataError::format(path, format!("corrupt DICOM data ({m})")))?
        .map_err(|e| DataError::format(path, format!("not a readable DICOM file: {e}")))
}

fn header_of(file: &DefaultDicomObject, path: &Path, file_len: u64) -> Result<SliceHeader> {
    let obj: &InMemDicomObject = file;
    let Some(rows) = int(obj, tags::ROWS) else {
        let class = text(obj, tags::SOP_CLASS_UID).map(|uid| format!(" (SOP class {uid})")).unwrap_or_default();
        return Err(DataError::format(path, format!("no pixel data: not an image object{class}")));
    };
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
    if ![1, 8, 16, 32, 64].contains(&bits) || (bits == 1 && samples != 1) {
        return Err(bad("BitsAllocated", bits));
    }
    let ts = file.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let encapsulated = TransferSyntaxRegistry.get(&ts).is_some_and(|t| t.is_encapsulated_pixel_data());
    let need = (rows as u64 * cols as u64 * frames as u64 * samples as u64 * bits as u64).div_ceil(8);
    if !encapsulated && need > file_len {
        return Err(DataError::format(
            path,
            format!("header declares {rows}×{cols}×{frames} pixels ({need} bytes) but the file holds {file_len} bytes"),
        ));
    }
    // Enhanced objects keep geometry in functional groups: shared ones first, else the first frame's.
    let shared = items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first();
    let first_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).first();
    let grouped = |sequence, tag| in_group(shared, sequence, tag).or_else(|| in_group(first_frame, sequence, tag));
    let orientation = finite(floats(obj, tags::IMAGE_ORIENTATION_PATIENT), 6)
        .or_else(|| finite(grouped(tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT), 6))
        .map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]);
    let slice_spacing =
        |o: Option<&InMemDicomObject>| floats(o?, tags::SPACING_BETWEEN_SLICES).or_else(|| floats(o?, tags::SLICE_THICKNESS));
    let frame_positions = frame_positions(obj, frames as usize, orientation);
    let position = finite(floats(obj, tags::IMAGE_POSITION_PATIENT), 3)
        .map(|v| [v[0], v[1], v[2]])
        .or_else(|| frame_positions.as_ref().and_then(|p| p.first().copied()));
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
        position,
        orientation,
        spacing: finite(floats(obj, tags::PIXEL_SPACING), 2)
            .or_else(|| finite(grouped(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING), 2))
            .map(|v| [v[0], v[1]])
            .filter(|s| s[0] > 0.0 && s[1] > 0.0),
        slice_spacing: slice_spacing(Some(obj))
            .or_else(|| slice_spacing(measures(shared)))
            .or_else(|| slice_spacing(measures(first_frame)))
            .and_then(|v| v.first().copied())
            .filter(|s| *s > 0.0 && s.is_finite()),
        frame_positions,
        dose_scaling: floats(obj, tags::DOSE_GRID_SCALING).and_then(|v| v.first().copied()).filter(|s| s.is_finite() && *s > 0.0),
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
        p.downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "decoder panic".into())
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
    if h.bits == 32 && h.transfer_syntax == RLE_LOSSLESS {
        let values = rle32_pixels(path, h)?;
        return planar(values, h);
    }
    let obj = open_tolerant(path)?;
    if h.transfer_syntax == RLE_LOSSLESS {
        check_rle(&obj, h).map_err(|m| DataError::format(path, format!("corrupt pixel data: {m}")))?;
    }
    check_encapsulated(&obj, h).map_err(|m| DataError::format(path, format!("corrupt pixel data: {m}")))?;
    let decoded = guarded(|| obj.decode_pixel_data())
        .map_err(|m| {
            DataError::format(path, format!("corrupt pixel data: the {} decoder failed ({m})", transfer_syntax_name(&h.transfer_syntax)))
        })?
        .map_err(|e| {
            let msg = e.to_string();
            if msg.to_ascii_lowercase().contains("unsupported") {
                DataError::format(path, format!("unsupported transfer syntax {}", transfer_syntax_name(&h.transfer_syntax)))
            } else {
                DataError::format(path, format!("cannot decode pixel data: {msg}"))
            }
        })?;
    let values: Vec<f32> = if h.bits == 1 || h.bits == 32 {
        // dicom-pixeldata converts 8- and 16-bit samples only; bit-packed (SEG) and 32-bit (RT Dose) samples
        // are read here, with the same modality rescale.
        let rescale: Vec<Rescale> = match h.dose_scaling {
            Some(scaling) => vec![Rescale::new(scaling, 0.0)],
            None => decoded.rescale().map(<[Rescale]>::to_vec).unwrap_or_default(),
        };
        let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
        raw_samples(decoded.data(), h, signed, &rescale).map_err(|m| DataError::format(path, m))?
    } else {
        let lut = match h.dose_scaling {
            Some(scaling) => ModalityLutOption::Override(Rescale::new(scaling, 0.0)),
            None => ModalityLutOption::Default,
        };
        guarded(|| decoded.to_vec_with_options(&ConvertOptions::new().with_modality_lut(lut)))
            .map_err(|m| DataError::format(path, format!("corrupt pixel data ({m})")))?
            .map_err(|e| DataError::format(path, format!("cannot convert pixel data: {e}")))?
    };
    planar(values, h)
}

/// Pixel-interleaved samples made planar (channels slowest), after a length check.
fn planar(values: Vec<f32>, h: &SliceHeader) -> Result<Vec<f32>> {
    let path = &h.path;
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

/// Samples of 1-bit (already expanded to 0/255 bytes by dicom-pixeldata) or 32-bit little-endian pixel data,
/// rescaled (one rescale for all frames, or one per frame).
fn raw_samples(bytes: &[u8], h: &SliceHeader, signed: bool, rescale: &[Rescale]) -> std::result::Result<Vec<f32>, String> {
    let n = h.rows as usize * h.cols as usize * h.frames as usize * h.samples as usize;
    let stored: Vec<f64> = if h.bits == 1 {
        bytes.iter().take(n).map(|&b| f64::from(b != 0)).collect()
    } else {
        bytes
            .chunks_exact(4)
            .take(n)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if signed { f64::from(i32::from_le_bytes(b)) } else { f64::from(u32::from_le_bytes(b)) }
            })
            .collect()
    };
    if stored.len() != n {
        return Err(format!("pixel data holds {} samples, the header declares {n}", stored.len()));
    }
    let identity = [Rescale::new(1.0, 0.0)];
    let rescale = if rescale.is_empty() { &identity[..] } else { rescale };
    let per_frame = n / h.frames.max(1) as usize;
    Ok(stored.iter().enumerate().map(|(i, &v)| rescale.get(i / per_frame).unwrap_or(&rescale[0]).apply(v) as f32).collect())
}

/// RLE Lossless (PS3.5 Annex G) for the sample sizes dicom-rs leaves out (32-bit): one fragment per frame, each a
/// 64-byte header (segment count, then offsets) and PackBits segments, one per byte plane, most significant first.
/// Returns little-endian, pixel-interleaved samples.
pub fn rle_decode(
    fragments: &[Vec<u8>],
    rows: usize,
    cols: usize,
    samples: usize,
    bytes_per_sample: usize,
) -> std::result::Result<Vec<u8>, String> {
    let pixels = rows * cols;
    let segments = samples * bytes_per_sample;
    let mut out = Vec::with_capacity(fragments.len() * pixels * segments);
    for (f, frag) in fragments.iter().enumerate() {
        let word = |k: usize| frag.get(4 * k..4 * k + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let count = word(0).ok_or_else(|| format!("RLE frame {f}: header shorter than 64 bytes"))?;
        if count != segments || count > 15 {
            return Err(format!("RLE frame {f}: {count} segments, expected {segments}"));
        }
        let base = out.len();
        out.resize(base + pixels * segments, 0);
        for seg in 0..count {
            let start = word(1 + seg).ok_or("RLE header cut")?;
            let end = if seg + 1 < count { word(2 + seg).ok_or("RLE header cut")? } else { frag.len() };
            let data = frag.get(start..end.max(start)).ok_or_else(|| format!("RLE frame {f}: segment {seg} lies outside the fragment"))?;
            let (sample, plane) = (seg / bytes_per_sample, seg % bytes_per_sample);
            let byte = bytes_per_sample - 1 - plane;
            let mut i = 0;
            let mut px = 0;
            let mut put = |px: &mut usize, v: u8| {
                if *px < pixels {
                    out[base + (*px * samples + sample) * bytes_per_sample + byte] = v;
                }
                *px += 1;
            };
            while i < data.len() && px < pixels {
                let n = data[i] as i8;
                i += 1;
                if n >= 0 {
                    let lit = data.get(i..i + n as usize + 1).ok_or_else(|| format!("RLE frame {f}: literal run past the segment"))?;
                    lit.iter().for_each(|&v| put(&mut px, v));
                    i += n as usize + 1;
                } else if n != -128 {
                    let v = *data.get(i).ok_or_else(|| format!("RLE frame {f}: repeat run past the segment"))?;
                    (0..(1 - n as isize) as usize).for_each(|_| put(&mut px, v));
                    i += 1;
                }
            }
            if px < pixels {
                return Err(format!("RLE frame {f}: segment {seg} decodes to {px} of {pixels} pixels"));
            }
        }
    }
    Ok(out)
}

/// RLE Lossless transfer syntax UID.
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Checks the RLE segment tables before a decoder trusts them: one fragment per frame, each at least the 64-byte
/// header, declaring exactly one segment per sample byte (at most 15), at increasing offsets inside the fragment.
fn check_rle(obj: &DefaultDicomObject, h: &SliceHeader) -> std::result::Result<(), String> {
    let element = obj.element(tags::PIXEL_DATA).map_err(|_| "no pixel data".to_string())?;
    let fragments = element.fragments().ok_or("RLE pixel data is not encapsulated")?;
    if fragments.len() != h.frames as usize {
        return Err(format!("{} RLE fragments for {} frames", fragments.len(), h.frames));
    }
    let segments = h.samples as usize * (h.bits as usize).div_ceil(8);
    for (f, frag) in fragments.iter().enumerate() {
        let word = |k: usize| frag.get(4 * k..4 * k + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let count =
            word(0).filter(|_| frag.len() >= 64).ok_or_else(|| format!("RLE frame {f}: fragment shorter than its 64-byte header"))?;
        if count != segments {
            return Err(format!("RLE frame {f}: {count} segments, expected {segments}"));
        }
        let mut last = 63;
        for k in 1..=count {
            let offset = word(k).unwrap_or(0);
            if offset <= last || offset >= frag.len() {
                return Err(format!("RLE frame {f}: segment {} offset {offset} is not inside the fragment", k - 1));
            }
            last = offset;
        }
    }
    Ok(())
}

/// Decoded pixel data may exceed its compressed size by this factor, or reach [`MIN_DECODED_BOUND`] bytes,
/// whichever is larger; beyond that a file is refused before decoding.
pub const MAX_DECODE_RATIO: u64 = 1024;

/// Decoded size always allowed, in bytes (64 MiB).
pub const MIN_DECODED_BOUND: u64 = 64 << 20;

/// Checks compressed pixel data before a decoder sizes its buffers from it: the decoded size the header declares
/// is bounded by the compressed size (see [`MAX_DECODE_RATIO`]), and the image size inside each JPEG or JPEG 2000
/// stream must equal the header's Rows × Columns.
fn check_encapsulated(obj: &DefaultDicomObject, h: &SliceHeader) -> std::result::Result<(), String> {
    let Ok(element) = obj.element(tags::PIXEL_DATA) else { return Ok(()) };
    let Some(fragments) = element.fragments() else { return Ok(()) };
    let compressed: u64 = fragments.iter().map(|f| f.len() as u64).sum();
    let decoded = h.rows as u64 * h.cols as u64 * h.frames as u64 * h.samples as u64 * (h.bits as u64).div_ceil(8);
    if decoded > MIN_DECODED_BOUND.max(compressed.saturating_mul(MAX_DECODE_RATIO)) {
        return Err(format!("{decoded} decoded bytes declared for {compressed} compressed bytes"));
    }
    let (rows, cols) = (h.rows as u64, h.cols as u64);
    for (i, frag) in fragments.iter().enumerate() {
        let dims = if frag.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
            // JPEG 2000 codestream: SOC then SIZ (Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, …).
            let word = |at: usize| frag.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64);
            match (word(8), word(12), word(16), word(20)) {
                (Some(x), Some(y), Some(xo), Some(yo)) => Some((x.saturating_sub(xo), y.saturating_sub(yo))),
                _ => return Err(format!("fragment {i}: JPEG 2000 header cut short")),
            }
        } else if frag.starts_with(&[0xFF, 0xD8]) {
            jpeg_frame_size(frag)
        } else {
            None
        };
        if let Some((x, y)) = dims
            && (x, y) != (cols, rows)
        {
            return Err(format!("fragment {i}: the compressed stream is {x}×{y}, the header says {cols}×{rows}"));
        }
    }
    Ok(())
}

/// Width and height from the first start-of-frame marker of a JPEG stream.
fn jpeg_frame_size(b: &[u8]) -> Option<(u64, u64)> {
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let marker = b[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let y = u16::from_be_bytes([*b.get(i + 5)?, *b.get(i + 6)?]) as u64;
            let x = u16::from_be_bytes([*b.get(i + 7)?, *b.get(i + 8)?]) as u64;
            return Some((x, y));
        }
        if marker == 0xDA {
            return None;
        }
        i += 2 + len;
    }
    None
}

/// Pixel data of a 32-bit RLE file, decoded by [`rle_decode`] and rescaled.
fn rle32_pixels(path: &Path, h: &SliceHeader) -> Result<Vec<f32>> {
    let obj = open_tolerant(path)?;
    let element = obj.element(tags::PIXEL_DATA).map_err(|_| DataError::format(path, "no pixel data"))?;
    let fragments = element.fragments().ok_or_else(|| DataError::format(path, "RLE pixel data is not encapsulated"))?;
    if fragments.len() != h.frames as usize {
        return Err(DataError::format(path, format!("RLE pixel data has {} fragments for {} frames", fragments.len(), h.frames)));
    }
    let bytes = rle_decode(fragments, h.rows as usize, h.cols as usize, h.samples as usize, 4)
        .map_err(|m| DataError::format(path, format!("corrupt pixel data: {m}")))?;
    let signed = int(&obj, tags::PIXEL_REPRESENTATION) == Some(1);
    let slope = floats(&obj, tags::RESCALE_SLOPE).and_then(|v| v.first().copied()).unwrap_or(1.0);
    let intercept = floats(&obj, tags::RESCALE_INTERCEPT).and_then(|v| v.first().copied()).unwrap_or(0.0);
    let rescale = [Rescale::new(h.dose_scaling.unwrap_or(slope), if h.dose_scaling.is_some() { 0.0 } else { intercept })];
    raw_samples(&bytes, h, signed, &rescale).map_err(|m| DataError::format(path, m))
}

/// Opens a whole DICOM file, after [`check_lengths`]. Nothing after the Pixel Data element is read: some files
/// carry bytes there that no parser can read (pydicom ignores them too).
pub fn open_tolerant(path: &Path) -> Result<DefaultDicomObject> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse(path, &bytes, None)
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

/// Slices (or frames) ordered along the slice normal `n`, with the affine's third column and what was noticed.
struct Stack {
    /// Indices of the input positions, sorted along the normal.
    order: Vec<usize>,
    /// Position of the first slice in that order.
    origin: [f64; 3],
    /// Step between consecutive slices: (last − first) / (n − 1).
    step: [f64; 3],
    /// Median gap along the normal, mm.
    median: f64,
    warnings: Vec<String>,
}

fn order_stack(positions: &[[f64; 3]], n: [f64; 3]) -> Stack {
    let mut order: Vec<usize> = (0..positions.len()).collect();
    let proj = |i: usize| dot(positions[i], n);
    order.sort_by(|&a, &b| proj(a).total_cmp(&proj(b)));
    let gaps: Vec<f64> = order.windows(2).map(|w| proj(w[1]) - proj(w[0])).collect();
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let mut warnings = Vec::new();
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
    let last = order.len().saturating_sub(1);
    let p0 = positions[order[0]];
    let pn = positions[order[last]];
    let step = [0, 1, 2].map(|a| if last == 0 { 0.0 } else { (pn[a] - p0[a]) / last as f64 });
    Stack { order, origin: p0, step, median, warnings }
}

/// Reads one DICOM file. Several frames stack along the third axis: ordered along the slice normal by their own
/// positions when the file gives them (enhanced multi-frame objects, RT Dose), else in file order spaced by
/// SpacingBetweenSlices or SliceThickness. Uneven or missing frames are reported by [`load_file_report`].
pub fn load_file(path: &Path) -> Result<Image> {
    load_file_report(path).map(|(img, _)| img)
}

/// [`load_file`], with the warnings about frame spacing.
pub fn load_file_report(path: &Path) -> Result<(Image, Vec<String>)> {
    let h = read_header(path)?;
    let mut data = pixels(path, &h)?;
    let (i, j, n, o) = in_plane(&h);
    let (origin, step, warnings) = match &h.frame_positions {
        Some(positions) => {
            let stack = order_stack(positions, n);
            let plane = h.rows as usize * h.cols as usize;
            let frames = h.frames as usize;
            if stack.order.iter().enumerate().any(|(z, &f)| z != f) {
                let mut sorted = vec![0f32; data.len()];
                for c in 0..h.samples as usize {
                    for (z, &f) in stack.order.iter().enumerate() {
                        let (to, from) = ((c * frames + z) * plane, (c * frames + f) * plane);
                        sorted[to..to + plane].copy_from_slice(&data[from..from + plane]);
                    }
                }
                data = sorted;
            }
            (stack.origin, stack.step, stack.warnings)
        }
        None => (o, n.map(|v| v * h.slice_spacing.unwrap_or(1.0)), Vec::new()),
    };
    let affine = affine_lps(origin, i, j, step);
    let shape =
        if h.frames > 1 { vec![h.cols as usize, h.rows as usize, h.frames as usize] } else { vec![h.cols as usize, h.rows as usize] };
    let dtype = stored_dtype(h.bits);
    let img = Image::new(data, shape, h.samples as usize, affine, dtype).map_err(|e| DataError::format(path, e.to_string()))?;
    Ok((img, warnings))
}

/// Name of the stored sample type, by BitsAllocated.
fn stored_dtype(bits: u16) -> &'static str {
    match bits {
        0..=8 => "uint8",
        16 => "int16",
        32 => "int32",
        _ => "float64",
    }
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

/// The most files a series folder may hold (sub-folders included): pointing at the wrong folder (`/`, a home
/// folder) is an error, not a scan of the whole disk.
pub const MAX_SCAN_FILES: usize = 100_000;

/// Whether `path` may be a DICOM file: the `DICM` code after the 128-byte preamble, or a `.dcm` extension (for
/// files without the preamble). Only 132 bytes are read.
fn looks_like_dicom(path: &Path) -> bool {
    use std::io::Read;
    let by_name = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm"));
    let mut head = [0u8; 132];
    let by_code = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[128..] == b"DICM";
    by_name || by_code
}

/// Headers of every DICOM file under `dir` (recursively, not following symbolic links to folders), grouped by
/// series; files that are not DICOM are skipped after reading at most 132 bytes of them.
pub fn scan(dir: &Path) -> Result<BTreeMap<String, Vec<SliceHeader>>> {
    let mut stack = vec![dir.to_path_buf()];
    let mut series: BTreeMap<String, Vec<SliceHeader>> = BTreeMap::new();
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))?;
        let mut paths: Vec<(PathBuf, std::fs::FileType)> =
            entries.filter_map(|e| e.ok().and_then(|e| Some((e.path(), e.file_type().ok()?)))).collect();
        paths.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, kind) in paths {
            if kind.is_dir() {
                stack.push(p);
                continue;
            }
            // Regular files only (a link is followed to a file, never to a folder): a FIFO or a device would block.
            if !(kind.is_file() || kind.is_symlink() && std::fs::metadata(&p).is_ok_and(|m| m.is_file())) {
                continue;
            }
            seen += 1;
            if seen > MAX_SCAN_FILES {
                return Err(DataError::format(
                    dir,
                    format!("holds more than {MAX_SCAN_FILES} files; point at the folder of one study or series"),
                ));
            }
            if looks_like_dicom(&p)
                && let Ok(h) = read_header(&p)
            {
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
    let slices = all.remove(&uid).ok_or_else(|| DataError::format(dir, format!("no series with UID {uid}")))?;
    let first = slices[0].clone();
    for s in &slices {
        if (s.rows, s.cols, s.samples) != (first.rows, first.cols, first.samples) {
            return Err(DataError::format(&s.path, "slice size differs from the rest of the series"));
        }
    }
    if slices.len() == 1 {
        let (img, warnings) = load_file_report(&first.path)?;
        let report = SeriesReport {
            uid,
            modality: first.modality,
            slices: first.frames as usize,
            slice_spacing: first.slice_spacing.unwrap_or(1.0),
            warnings,
        };
        return Ok((img, report));
    }
    let (i, j, n, _) = in_plane(&first);
    if slices.iter().any(|s| s.position.is_none()) {
        return Err(DataError::format(dir, "a slice has no ImagePositionPatient: cannot order the series"));
    }
    let positions: Vec<[f64; 3]> = slices.iter().map(|s| s.position.unwrap_or([0.0; 3])).collect();
    let stack = order_stack(&positions, n);
    let slices: Vec<SliceHeader> = stack.order.iter().map(|&k| slices[k].clone()).collect();
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
    let affine = affine_lps(stack.origin, i, j, stack.step);
    let img = Image::new(data, vec![first.cols as usize, first.rows as usize, nz], channels, affine, stored_dtype(first.bits))
        .map_err(|e| DataError::format(dir, e.to_string()))?;
    Ok((img, SeriesReport { uid, modality: first.modality, slices: nz, slice_spacing: stack.median, warnings: stack.warnings }))
}
