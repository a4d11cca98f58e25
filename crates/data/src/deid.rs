//! De-identification of DICOM files by the Basic Application Level Confidentiality Profile of DICOM PS3.15
//! Annex E: attributes that identify the patient, the people and places involved, and the dates are removed (X),
//! emptied (Z) or replaced by a dummy (D); UIDs are replaced (U) by new ones, consistently within one run so that
//! studies, series and references still hold together; private attributes are removed unless kept on request.
//! The result records `PatientIdentityRemoved = YES` and the method used.
//!
//! Nothing from a removed attribute is ever printed: reports count actions, they do not show values.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject, Tag};
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::VR;
use serde::Serialize;

use crate::batch::mix;
use crate::{DataError, Result};

/// What happens to an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Remove it.
    Remove,
    /// Keep it with an empty value.
    Empty,
    /// Replace its value by a dummy of its VR.
    Dummy,
    /// Replace the UID by one derived consistently within the run.
    Uid,
}

/// The profile's actions for the attributes handled here (group, element, action). Where the profile allows a
/// choice (X/Z/D…), the strictest that keeps the file valid is taken.
pub const PROFILE: &[(u16, u16, Action)] = {
    use Action::*;
    &[
        (0x0008, 0x0014, Uid),    // Instance Creator UID
        (0x0008, 0x0018, Uid),    // SOP Instance UID
        (0x0008, 0x0020, Empty),  // Study Date
        (0x0008, 0x0021, Remove), // Series Date
        (0x0008, 0x0022, Remove), // Acquisition Date
        (0x0008, 0x0023, Empty),  // Content Date
        (0x0008, 0x002A, Remove), // Acquisition DateTime
        (0x0008, 0x0030, Empty),  // Study Time
        (0x0008, 0x0031, Remove), // Series Time
        (0x0008, 0x0032, Remove), // Acquisition Time
        (0x0008, 0x0033, Empty),  // Content Time
        (0x0008, 0x0050, Empty),  // Accession Number
        (0x0008, 0x0058, Uid),    // Failed SOP Instance UID List
        (0x0008, 0x0080, Remove), // Institution Name
        (0x0008, 0x0081, Remove), // Institution Address
        (0x0008, 0x0082, Remove), // Institution Code Sequence
        (0x0008, 0x0090, Empty),  // Referring Physician's Name
        (0x0008, 0x0092, Remove), // Referring Physician's Address
        (0x0008, 0x0094, Remove), // Referring Physician's Telephone Numbers
        (0x0008, 0x0096, Remove), // Referring Physician Identification Sequence
        (0x0008, 0x1010, Remove), // Station Name
        (0x0008, 0x1030, Remove), // Study Description
        (0x0008, 0x103E, Remove), // Series Description
        (0x0008, 0x1040, Remove), // Institutional Department Name
        (0x0008, 0x1048, Remove), // Physician(s) of Record
        (0x0008, 0x1049, Remove), // Physician(s) of Record Identification Sequence
        (0x0008, 0x1050, Remove), // Performing Physicians' Name
        (0x0008, 0x1052, Remove), // Performing Physician Identification Sequence
        (0x0008, 0x1060, Remove), // Name of Physician(s) Reading Study
        (0x0008, 0x1062, Remove), // Physician(s) Reading Study Identification Sequence
        (0x0008, 0x1070, Remove), // Operators' Name
        (0x0008, 0x1072, Remove), // Operator Identification Sequence
        (0x0008, 0x1080, Remove), // Admitting Diagnoses Description
        (0x0008, 0x1155, Uid),    // Referenced SOP Instance UID
        (0x0008, 0x2111, Remove), // Derivation Description
        (0x0008, 0x3010, Uid),    // Irradiation Event UID
        (0x0010, 0x0010, Empty),  // Patient's Name
        (0x0010, 0x0020, Empty),  // Patient ID
        (0x0010, 0x0021, Remove), // Issuer of Patient ID
        (0x0010, 0x0030, Empty),  // Patient's Birth Date
        (0x0010, 0x0032, Remove), // Patient's Birth Time
        (0x0010, 0x0040, Empty),  // Patient's Sex
        (0x0010, 0x0050, Remove), // Patient's Insurance Plan Code Sequence
        (0x0010, 0x1000, Remove), // Other Patient IDs
        (0x0010, 0x1001, Remove), // Other Patient Names
        (0x0010, 0x1002, Remove), // Other Patient IDs Sequence
        (0x0010, 0x1005, Remove), // Patient's Birth Name
        (0x0010, 0x1010, Remove), // Patient's Age
        (0x0010, 0x1020, Remove), // Patient's Size
        (0x0010, 0x1030, Remove), // Patient's Weight
        (0x0010, 0x1040, Remove), // Patient's Address
        (0x0010, 0x1060, Remove), // Patient's Mother's Birth Name
        (0x0010, 0x1090, Remove), // Medical Record Locator
        (0x0010, 0x2154, Remove), // Patient's Telephone Numbers
        (0x0010, 0x2160, Remove), // Ethnic Group
        (0x0010, 0x2180, Remove), // Occupation
        (0x0010, 0x21B0, Remove), // Additional Patient History
        (0x0010, 0x21F0, Remove), // Patient's Religious Preference
        (0x0010, 0x4000, Remove), // Patient Comments
        (0x0018, 0x1000, Remove), // Device Serial Number
        (0x0018, 0x1002, Uid),    // Device UID
        (0x0018, 0x1030, Remove), // Protocol Name
        (0x0020, 0x000D, Uid),    // Study Instance UID
        (0x0020, 0x000E, Uid),    // Series Instance UID
        (0x0020, 0x0010, Empty),  // Study ID
        (0x0020, 0x0052, Uid),    // Frame of Reference UID
        (0x0020, 0x0200, Uid),    // Synchronization Frame of Reference UID
        (0x0020, 0x4000, Remove), // Image Comments
        (0x0020, 0x9161, Uid),    // Concatenation UID
        (0x0028, 0x1199, Uid),    // Palette Color Lookup Table UID
        (0x0028, 0x1214, Uid),    // Large Palette Color Lookup Table UID
        (0x0032, 0x1032, Remove), // Requesting Physician
        (0x0032, 0x1060, Remove), // Requested Procedure Description
        (0x0032, 0x4000, Remove), // Study Comments
        (0x0038, 0x0010, Remove), // Admission ID
        (0x0038, 0x0300, Remove), // Current Patient Location
        (0x0038, 0x0400, Remove), // Patient's Institution Residence
        (0x0040, 0x0244, Remove), // Performed Procedure Step Start Date
        (0x0040, 0x0245, Remove), // Performed Procedure Step Start Time
        (0x0040, 0x0253, Remove), // Performed Procedure Step ID
        (0x0040, 0x0254, Remove), // Performed Procedure Step Description
        (0x0040, 0xA124, Uid),    // UID
        (0x0088, 0x0140, Uid),    // Storage Media File-set UID
        (0x3006, 0x0024, Uid),    // Referenced Frame of Reference UID
        (0x3006, 0x00C2, Uid),    // Related Frame of Reference UID
    ]
};

/// Counts of what a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeidReport {
    /// Files written.
    pub files: usize,
    /// Files that were not DICOM and were skipped.
    pub skipped: usize,
    /// Attributes removed (including private ones).
    pub removed: usize,
    /// Attributes emptied or replaced by a dummy.
    pub replaced: usize,
    /// UIDs remapped (distinct originals).
    pub uids: usize,
}

/// One de-identification run: the same original UID always maps to the same new UID within it.
pub struct Deidentifier {
    keep_private: bool,
    salt: u64,
    uids: HashMap<String, String>,
    report: DeidReport,
}


impl Deidentifier {
    /// A run with a fresh random salt (so new UIDs cannot be recomputed from the old ones).
    pub fn new(keep_private: bool) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let salt = mix(nanos ^ mix(std::process::id() as u64) ^ mix(&nanos as *const u64 as u64));
        Self { keep_private, salt, uids: HashMap::new(), report: DeidReport::default() }
    }

    /// The new UID for `old` (a `2.25.` UID from a salted 128-bit hash).
    pub fn map_uid(&mut self, old: &str) -> String {
        let old = old.trim_end_matches('\0').trim().to_string();
        if let Some(new) = self.uids.get(&old) {
            return new.clone();
        }
        let mut h1 = self.salt;
        let mut h2 = mix(self.salt ^ 0xA5A5);
        for b in old.bytes() {
            h1 = mix(h1 ^ b as u64);
            h2 = mix(h2.rotate_left(7) ^ b as u64);
        }
        let new = format!("2.25.{}", ((h1 as u128) << 64 | h2 as u128) >> 1);
        self.uids.insert(old, new.clone());
        self.report.uids = self.uids.len();
        new
    }

    /// Applies the profile to a data set and, recursively, to the items of its sequences.
    pub fn apply(&mut self, obj: &mut InMemDicomObject) {
        if !self.keep_private {
            let before = obj.iter().count();
            obj.retain(|e| e.header().tag.group() % 2 == 0);
            self.report.removed += before - obj.iter().count();
        }
        for &(group, element, action) in PROFILE {
            let tag = Tag(group, element);
            let Some(elem) = obj.element_opt(tag).ok().flatten() else { continue };
            let vr = elem.header().vr;
            match action {
                Action::Remove => {
                    obj.remove_element(tag);
                    self.report.removed += 1;
                }
                Action::Empty => {
                    obj.put(InMemElement::new(tag, vr, PrimitiveValue::Empty));
                    self.report.replaced += 1;
                }
                Action::Dummy => {
                    let dummy = match vr {
                        VR::DA => "19000101",
                        VR::TM => "000000",
                        VR::PN => "ANONYMOUS",
                        _ => "ANONYMIZED",
                    };
                    obj.put(InMemElement::new(tag, vr, PrimitiveValue::from(dummy)));
                    self.report.replaced += 1;
                }
                Action::Uid => {
                    let values: Vec<String> = elem.to_multi_str().map(|v| v.to_vec()).unwrap_or_default();
                    let mapped: Vec<String> = values.iter().map(|u| self.map_uid(u)).collect();
                    obj.put(InMemElement::new(tag, VR::UI, PrimitiveValue::Strs(mapped.into())));
                }
            }
        }
        let sequences: Vec<Tag> = obj.iter().filter(|e| e.header().vr == VR::SQ).map(|e| e.header().tag).collect();
        for tag in sequences {
            obj.update_value(tag, |v: &mut Value<InMemDicomObject, _>| {
                if let Some(items) = v.items_mut() {
                    for item in items.iter_mut() {
                        self.apply(item);
                    }
                }
            });
        }
    }

    /// De-identifies one file into `output` (written atomically).
    pub fn file(&mut self, input: &Path, output: &Path) -> Result<()> {
        let mut obj: DefaultDicomObject = crate::dicom::open_tolerant(input)?;
        self.apply(&mut obj);
        obj.put(InMemElement::new(Tag(0x0012, 0x0062), VR::CS, PrimitiveValue::from("YES")));
        obj.put(InMemElement::new(
            Tag(0x0012, 0x0063),
            VR::LO,
            PrimitiveValue::from("DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile"),
        ));
        let sop = obj.element_opt(Tag(0x0008, 0x0018)).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.to_string());
        if let Some(sop) = sop {
            obj.update_meta(|m| m.media_storage_sop_instance_uid = sop);
        }
        let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let tmp = dir.join(format!(".{}.tmp{}", output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), std::process::id()));
        obj.write_to_file(&tmp).map_err(|e| DataError::format(output, format!("cannot write: {e}")))?;
        std::fs::rename(&tmp, output).map_err(|e| DataError::io(output, e))?;
        self.report.files += 1;
        Ok(())
    }

    /// De-identifies a file, or every DICOM file under a folder into the same relative paths under `output`;
    /// other files are skipped.
    pub fn run(&mut self, input: &Path, output: &Path) -> Result<DeidReport> {
        if input.is_dir() {
            let mut stack: Vec<PathBuf> = vec![input.to_path_buf()];
            while let Some(d) = stack.pop() {
                let mut entries: Vec<PathBuf> =
                    std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
                entries.sort();
                for p in entries {
                    if p.is_dir() {
                        stack.push(p);
                    } else if crate::dicom::read_header(&p).is_ok() {
                        let rel = p.strip_prefix(input).unwrap_or(&p);
                        self.file(&p, &output.join(rel))?;
                    } else {
                        self.report.skipped += 1;
                    }
                }
            }
        } else {
            self.file(input, output)?;
        }
        Ok(self.report.clone())
    }
}
