//! De-identification of DICOM files by the Basic Application Level Confidentiality Profile of DICOM PS3.15
//! Annex E: attributes that identify the patient, the people and places involved, and the dates are removed (X),
//! emptied (Z) or replaced by a dummy (D); UIDs are replaced (U) by new ones, consistently within one run so that
//! studies, series and references still hold together; private attributes are removed unless kept on request.
//! The result records `PatientIdentityRemoved = YES` and the method used.
//!
//! Nothing from a removed attribute is ever printed: reports count actions, they do not show values.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dicom_core::VR;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject, Tag};
use serde::Serialize;

use crate::mix;
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
        (0x0008, 0x0015, Remove), // Instance Coercion DateTime
        (0x0008, 0x0024, Remove), // Overlay Date
        (0x0008, 0x0025, Remove), // Curve Date
        (0x0008, 0x0034, Remove), // Overlay Time
        (0x0008, 0x0035, Remove), // Curve Time
        (0x0008, 0x0201, Remove), // Timezone Offset From UTC
        (0x0008, 0x1084, Remove), // Admitting Diagnoses Code Sequence
        (0x0008, 0x1111, Remove), // Referenced Performed Procedure Step Sequence
        (0x0008, 0x1120, Remove), // Referenced Patient Sequence
        (0x0008, 0x1195, Uid),    // Transaction UID
        (0x0008, 0x4000, Remove), // Identifying Comments
        (0x0008, 0x9123, Uid),    // Creator-Version UID
        (0x0010, 0x0101, Remove), // Patient's Primary Language Code Sequence
        (0x0010, 0x0102, Remove), // Patient's Primary Language Modifier Code Sequence
        (0x0010, 0x1050, Remove), // Insurance Plan Identification
        (0x0010, 0x1080, Remove), // Military Rank
        (0x0010, 0x1081, Remove), // Branch of Service
        (0x0010, 0x1100, Remove), // Referenced Patient Photo Sequence
        (0x0010, 0x2000, Remove), // Medical Alerts
        (0x0010, 0x2110, Remove), // Allergies
        (0x0010, 0x2150, Remove), // Country of Residence
        (0x0010, 0x2152, Remove), // Region of Residence
        (0x0010, 0x2297, Remove), // Responsible Person
        (0x0010, 0x2299, Remove), // Responsible Organization
        (0x0010, 0x21A0, Remove), // Smoking Status
        (0x0010, 0x21C0, Remove), // Pregnancy Status
        (0x0010, 0x21D0, Remove), // Last Menstrual Date
        (0x0012, 0x0010, Dummy),  // Clinical Trial Sponsor Name
        (0x0012, 0x0020, Dummy),  // Clinical Trial Protocol ID
        (0x0012, 0x0021, Empty),  // Clinical Trial Protocol Name
        (0x0012, 0x0030, Empty),  // Clinical Trial Site ID
        (0x0012, 0x0031, Empty),  // Clinical Trial Site Name
        (0x0012, 0x0040, Dummy),  // Clinical Trial Subject ID
        (0x0012, 0x0042, Dummy),  // Clinical Trial Subject Reading ID
        (0x0012, 0x0050, Empty),  // Clinical Trial Time Point ID
        (0x0012, 0x0051, Empty),  // Clinical Trial Time Point Description
        (0x0012, 0x0060, Empty),  // Clinical Trial Coordinating Center Name
        (0x0018, 0x1004, Remove), // Plate ID
        (0x0018, 0x1005, Remove), // Generator ID
        (0x0018, 0x1007, Remove), // Cassette ID
        (0x0018, 0x1008, Remove), // Gantry ID
        (0x0018, 0x1400, Remove), // Acquisition Device Processing Description
        (0x0018, 0x4000, Remove), // Acquisition Comments
        (0x0018, 0x700A, Remove), // Detector ID
        (0x0018, 0x9424, Remove), // Acquisition Protocol Description
        (0x0018, 0xA003, Remove), // Contribution Description
        (0x0020, 0x3401, Remove), // Modifying Device ID
        (0x0020, 0x3404, Remove), // Modifying Device Manufacturer
        (0x0020, 0x3406, Remove), // Modified Image Description
        (0x0020, 0x9158, Remove), // Frame Comments
        (0x0032, 0x0012, Remove), // Study ID Issuer
        (0x0032, 0x1020, Remove), // Scheduled Study Location
        (0x0032, 0x1021, Remove), // Scheduled Study Location AE Title
        (0x0032, 0x1030, Remove), // Reason for Study
        (0x0032, 0x1033, Remove), // Requesting Service
        (0x0038, 0x0004, Remove), // Referenced Patient Alias Sequence
        (0x0038, 0x0011, Remove), // Issuer of Admission ID
        (0x0038, 0x0060, Remove), // Service Episode ID
        (0x0038, 0x0061, Remove), // Issuer of Service Episode ID
        (0x0038, 0x0062, Remove), // Service Episode Description
        (0x0038, 0x0500, Remove), // Patient State
        (0x0040, 0x0001, Remove), // Scheduled Station AE Title
        (0x0040, 0x0006, Remove), // Scheduled Performing Physician's Name
        (0x0040, 0x0007, Remove), // Scheduled Procedure Step Description
        (0x0040, 0x000B, Remove), // Scheduled Performing Physician Identification Sequence
        (0x0040, 0x0010, Remove), // Scheduled Station Name
        (0x0040, 0x0011, Remove), // Scheduled Procedure Step Location
        (0x0040, 0x0012, Remove), // Pre-Medication
        (0x0040, 0x0241, Remove), // Performed Station AE Title
        (0x0040, 0x0242, Remove), // Performed Station Name
        (0x0040, 0x0243, Remove), // Performed Location
        (0x0040, 0x0275, Remove), // Request Attributes Sequence
        (0x0040, 0x0280, Remove), // Comments on the Performed Procedure Step
        (0x0040, 0x0555, Remove), // Acquisition Context Sequence
        (0x0040, 0x1001, Remove), // Requested Procedure ID
        (0x0040, 0x1004, Remove), // Patient Transport Arrangements
        (0x0040, 0x1005, Remove), // Requested Procedure Location
        (0x0040, 0x1010, Remove), // Names of Intended Recipients of Results
        (0x0040, 0x1011, Remove), // Intended Recipients of Results Identification Sequence
        (0x0040, 0x1102, Remove), // Person's Address
        (0x0040, 0x1103, Remove), // Person's Telephone Numbers
        (0x0040, 0x1400, Remove), // Requested Procedure Comments
        (0x0040, 0x2001, Remove), // Reason for the Imaging Service Request
        (0x0040, 0x2008, Remove), // Order Entered By
        (0x0040, 0x2009, Remove), // Order Enterer's Location
        (0x0040, 0x2010, Remove), // Order Callback Phone Number
        (0x0040, 0x2016, Empty),  // Placer Order Number / Imaging Service Request
        (0x0040, 0x2017, Empty),  // Filler Order Number / Imaging Service Request
        (0x0040, 0x2400, Remove), // Imaging Service Request Comments
        (0x0040, 0x3001, Remove), // Confidentiality Constraint on Patient Data Description
        (0x0040, 0xA027, Remove), // Verifying Organization
        (0x0040, 0xA073, Dummy),  // Verifying Observer Sequence (its items are cleaned in turn)
        (0x0040, 0xA075, Dummy),  // Verifying Observer Name
        (0x0040, 0xA078, Remove), // Author Observer Sequence
        (0x0040, 0xA07A, Remove), // Participant Sequence
        (0x0040, 0xA07C, Remove), // Custodial Organization Sequence
        (0x0040, 0xA088, Empty),  // Verifying Observer Identification Code Sequence
        (0x0040, 0xA123, Dummy),  // Person Name
        (0x0040, 0xA730, Remove), // Content Sequence
        (0x0070, 0x0084, Empty),  // Content Creator's Name
        (0x0070, 0x0086, Remove), // Content Creator's Identification Code Sequence
        (0x0088, 0x0200, Remove), // Icon Image Sequence
        (0x0088, 0x0904, Remove), // Topic Title
        (0x0088, 0x0906, Remove), // Topic Subject
        (0x0088, 0x0910, Remove), // Topic Author
        (0x0088, 0x0912, Remove), // Topic Keywords
        (0x0400, 0x0100, Remove), // Digital Signature UID
        (0x0400, 0x0402, Remove), // Referenced Digital Signature Sequence
        (0x0400, 0x0403, Remove), // Referenced SOP Instance MAC Sequence
        (0x0400, 0x0404, Remove), // MAC
        (0x0400, 0x0550, Remove), // Modified Attributes Sequence
        (0x0400, 0x0561, Remove), // Original Attributes Sequence
        (0x3006, 0x0002, Dummy),  // Structure Set Label
        (0x3006, 0x0004, Remove), // Structure Set Name
        (0x3006, 0x0006, Remove), // Structure Set Description
        (0x3006, 0x0008, Empty),  // Structure Set Date
        (0x3006, 0x0009, Empty),  // Structure Set Time
        (0x3006, 0x0026, Empty),  // ROI Name
        (0x3006, 0x0028, Remove), // ROI Description
        (0x3006, 0x0038, Remove), // ROI Generation Description
        (0x3006, 0x0085, Remove), // ROI Observation Label
        (0x3006, 0x00A6, Empty),  // ROI Interpreter
        (0x300A, 0x0002, Dummy),  // RT Plan Label
        (0x300A, 0x0003, Remove), // RT Plan Name
        (0x300A, 0x0004, Remove), // RT Plan Description
        (0x300A, 0x0006, Remove), // RT Plan Date
        (0x300A, 0x0007, Remove), // RT Plan Time
        (0x300A, 0x000E, Remove), // Prescription Description
        (0x300A, 0x0016, Remove), // Dose Reference Description
        (0x300E, 0x0008, Remove), // Reviewer Name
        (0x4000, 0x0010, Remove), // Arbitrary
        (0x4000, 0x4000, Remove), // Text Comments
        (0x4008, 0x0114, Remove), // Physician Approving Interpretation
        (0x4008, 0x0119, Remove), // Distribution Name
        (0x4008, 0x011A, Remove), // Distribution Address
        (0x4008, 0x0202, Remove), // Interpretation ID Issuer
        (0x4008, 0x0300, Remove), // Impressions
        (0x4008, 0x4000, Remove), // Results Comments
        (0xFFFA, 0xFFFA, Remove), // Digital Signatures Sequence
        (0xFFFC, 0xFFFC, Remove), // Data Set Trailing Padding
    ]
};

/// Attributes whose UID values name classes, syntaxes or coding schemes, not instances: never remapped.
const CLASS_UIDS: &[(u16, u16)] = &[
    (0x0008, 0x0016), // SOP Class UID
    (0x0008, 0x001A), // Related General SOP Class UID
    (0x0008, 0x001B), // Original Specialized SOP Class UID
    (0x0008, 0x0062), // SOP Classes in Study
    (0x0008, 0x010C), // Coding Scheme UID
    (0x0008, 0x010D), // Context Group Extension Creator UID
    (0x0008, 0x0118), // Mapping Resource UID
    (0x0008, 0x1150), // Referenced SOP Class UID
    (0x0004, 0x1510), // Referenced SOP Class UID in File
    (0x0004, 0x1512), // Referenced Transfer Syntax UID in File
    (0x0400, 0x0010), // MAC Calculation Transfer Syntax UID
];

/// What happens to an attribute the table does not name, by its kind — the rows of PS3.15 Table E.1-1 beyond the
/// table above fall into these classes: person names, dates and times, free text, instance UIDs, overlay data
/// and comments, and curves.
pub fn generic_action(tag: Tag, vr: VR, value: &str) -> Option<Action> {
    let (g, e) = (tag.group(), tag.element());
    if (0x5000..=0x50FF).contains(&g) || ((0x6000..=0x60FF).contains(&g) && (e == 0x3000 || e == 0x4000)) {
        return Some(Action::Remove);
    }
    match vr {
        VR::PN | VR::DA | VR::DT | VR::TM | VR::LT | VR::ST | VR::UT => Some(Action::Remove),
        VR::UI if !CLASS_UIDS.contains(&(g, e)) && !value.trim_end_matches('\0').trim().starts_with("1.2.840.10008.") => Some(Action::Uid),
        _ => None,
    }
}

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
    /// A run with a fresh salt from the operating system's random source (so new UIDs cannot be recomputed from
    /// the old ones, nor from the time the run started).
    pub fn new(keep_private: bool) -> Result<Self> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| DataError::Invalid(format!("the operating system's random source failed: {e}")))?;
        Ok(Self::with_salt(keep_private, u64::from_le_bytes(bytes)))
    }

    /// A run with a given salt: the same salt maps the same UIDs to the same new UIDs (for tests and for
    /// de-identifying a study in several sittings with a salt kept secret).
    pub fn with_salt(keep_private: bool, salt: u64) -> Self {
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

    /// Replaces every UID value of `tag` by its mapped UID.
    fn remap_uids(&mut self, obj: &mut InMemDicomObject, tag: Tag) {
        let values: Vec<String> = obj.element(tag).ok().and_then(|e| e.to_multi_str().ok()).map(|v| v.to_vec()).unwrap_or_default();
        let mapped: Vec<String> = values.iter().map(|u| self.map_uid(u)).collect();
        obj.put(InMemElement::new(tag, VR::UI, PrimitiveValue::Strs(mapped.into())));
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
                Action::Empty if vr == VR::SQ => {
                    obj.put(InMemElement::new(tag, VR::SQ, dicom_core::value::DataSetSequence::<InMemDicomObject>::empty()));
                    self.report.replaced += 1;
                }
                Action::Empty => {
                    obj.put(InMemElement::new(tag, vr, PrimitiveValue::Empty));
                    self.report.replaced += 1;
                }
                // A sequence keeps its items, which are de-identified in turn below.
                Action::Dummy if vr == VR::SQ => {}
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
                Action::Uid => self.remap_uids(obj, tag),
            }
        }
        let named: std::collections::HashSet<(u16, u16)> = PROFILE.iter().map(|&(g, e, _)| (g, e)).collect();
        let generic: Vec<(Tag, Action)> = obj
            .iter()
            .filter(|e| !named.contains(&(e.header().tag.group(), e.header().tag.element())))
            .filter_map(|e| {
                let value = if e.header().vr == VR::UI { e.to_str().map(|s| s.into_owned()).unwrap_or_default() } else { String::new() };
                generic_action(e.header().tag, e.header().vr, &value).map(|a| (e.header().tag, a))
            })
            .collect();
        for (tag, action) in generic {
            match action {
                Action::Uid => self.remap_uids(obj, tag),
                _ => {
                    obj.remove_element(tag);
                    self.report.removed += 1;
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
        let mut bytes = Vec::new();
        obj.write_all(&mut bytes).map_err(|e| DataError::write(output, std::io::Error::other(e.to_string())))?;
        crate::formats::write_atomic(output, &bytes)?;
        self.report.files += 1;
        Ok(())
    }

    /// De-identifies a file, or every DICOM file under a folder into the same relative paths under `output`;
    /// other files are skipped.
    pub fn run(&mut self, input: &Path, output: &Path) -> Result<DeidReport> {
        let inside = |a: &Path, b: &Path| resolved(a).zip(resolved(b)).is_some_and(|(a, b)| a.starts_with(b));
        if input.is_dir() && inside(output, input) {
            return Err(DataError::format(
                output,
                format!("the output folder lies inside the input folder {}; choose an output outside it", input.display()),
            ));
        }
        if !input.is_dir() && resolved(output).is_some() && resolved(output) == resolved(input) {
            return Err(DataError::format(output, "the output is the input file; choose another output"));
        }
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

/// `path` made absolute with symbolic links resolved, for a path that may not exist yet: its nearest existing
/// ancestor canonicalised, the rest appended.
fn resolved(path: &Path) -> Option<PathBuf> {
    let mut absolute = PathBuf::new();
    for c in std::path::absolute(path).ok()?.components() {
        match c {
            std::path::Component::ParentDir => {
                absolute.pop();
            }
            std::path::Component::CurDir => {}
            other => absolute.push(other),
        }
    }
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Some(out);
        }
        rest.push(existing.file_name()?.to_os_string());
        existing = existing.parent()?;
    }
}
