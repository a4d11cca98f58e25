//! The de-identification profile on a data set built with every kind of attribute it must handle.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use dicom_core::VR;
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_object::mem::InMemElement;
use dicom_object::{InMemDicomObject, Tag};
use vesalius_io::deid::Deidentifier;

fn put(obj: &mut InMemDicomObject, g: u16, e: u16, vr: VR, v: &str) {
    obj.put(InMemElement::new(Tag(g, e), vr, PrimitiveValue::from(v)));
}

fn text(obj: &InMemDicomObject, g: u16, e: u16) -> Option<String> {
    obj.element_opt(Tag(g, e)).ok().flatten().map(|e| e.to_str().map(|s| s.trim_end_matches('\0').to_string()).unwrap_or_default())
}

#[test]
fn table_rows_and_generic_classes_are_applied_recursively() {
    let mut obj = InMemDicomObject::new_empty();
    put(&mut obj, 0x0010, 0x0010, VR::PN, "Doe^Jane"); // Patient's Name: Z
    put(&mut obj, 0x0010, 0x2000, VR::LO, "penicillin"); // Medical Alerts: X
    put(&mut obj, 0x0012, 0x0040, VR::LO, "SUBJ-0042"); // Clinical Trial Subject ID: D
    put(&mut obj, 0x0008, 0x009C, VR::PN, "Smith^John"); // Consulting Physician's Name: a person name
    put(&mut obj, 0x0008, 0x0012, VR::DA, "20240102"); // Instance Creation Date: a date
    put(&mut obj, 0x0040, 0x0310, VR::ST, "dose note"); // Comments on Radiation Dose: free text
    put(&mut obj, 0x0008, 0x0016, VR::UI, "1.2.840.10008.5.1.4.1.1.2"); // SOP Class UID: kept
    put(&mut obj, 0x0020, 0x000D, VR::UI, "1.2.3.4.5"); // Study Instance UID: U
    put(&mut obj, 0x0040, 0xA171, VR::UI, "1.2.3.4.5"); // Observation UID: an instance UID, same value
    put(&mut obj, 0x0018, 0x0050, VR::DS, "1.5"); // Slice Thickness: kept
    obj.put(InMemElement::new(Tag(0x6000, 0x3000), VR::OW, PrimitiveValue::from(vec![0u8; 8]))); // Overlay Data
    put(&mut obj, 0x5000, 0x2500, VR::LO, "curve"); // Curve Label
    let mut observer = InMemDicomObject::new_empty();
    put(&mut observer, 0x0040, 0xA075, VR::PN, "Observer^Olga"); // Verifying Observer Name: D
    put(&mut observer, 0x0040, 0xA030, VR::DT, "20240102101010"); // Verification DateTime
    obj.put(InMemElement::new(Tag(0x0040, 0xA073), VR::SQ, DataSetSequence::from(vec![observer])));
    let mut code = InMemDicomObject::new_empty();
    put(&mut code, 0x0008, 0x0100, VR::SH, "123");
    obj.put(InMemElement::new(Tag(0x0040, 0xA088), VR::SQ, DataSetSequence::from(vec![code]))); // Z: emptied

    let mut d = Deidentifier::new(false).unwrap();
    d.apply(&mut obj);
    assert_eq!(text(&obj, 0x0010, 0x0010).as_deref(), Some(""));
    assert_eq!(text(&obj, 0x0010, 0x2000), None);
    assert_eq!(text(&obj, 0x0012, 0x0040).as_deref(), Some("ANONYMIZED"));
    for (g, e) in [(0x0008, 0x009C), (0x0008, 0x0012), (0x0040, 0x0310), (0x6000, 0x3000), (0x5000, 0x2500)] {
        assert!(obj.element_opt(Tag(g, e)).unwrap().is_none(), "({g:04X},{e:04X}) kept");
    }
    assert_eq!(text(&obj, 0x0008, 0x0016).as_deref(), Some("1.2.840.10008.5.1.4.1.1.2"));
    let study = text(&obj, 0x0020, 0x000D).unwrap();
    assert!(study.starts_with("2.25.") && study != "1.2.3.4.5");
    assert_eq!(text(&obj, 0x0040, 0xA171), Some(study), "one original UID maps to one new UID");
    assert_eq!(text(&obj, 0x0018, 0x0050).as_deref(), Some("1.5"));
    let seq = obj.element(Tag(0x0040, 0xA073)).unwrap().items().unwrap().to_vec();
    assert_eq!(seq.len(), 1);
    assert_eq!(text(&seq[0], 0x0040, 0xA075).as_deref(), Some("ANONYMOUS"));
    assert!(seq[0].element_opt(Tag(0x0040, 0xA030)).unwrap().is_none());
    assert_eq!(obj.element(Tag(0x0040, 0xA088)).unwrap().items().unwrap().len(), 0);
}

#[test]
fn uid_salts_come_from_the_random_source_and_a_given_salt_repeats() {
    let map = |d: &mut Deidentifier| d.map_uid("1.2.826.0.1.3680043.2.1125.1");
    let (a, b) = (map(&mut Deidentifier::new(false).unwrap()), map(&mut Deidentifier::new(false).unwrap()));
    assert_ne!(a, b, "two runs share a salt");
    assert_eq!(map(&mut Deidentifier::with_salt(false, 42)), map(&mut Deidentifier::with_salt(false, 42)));
    assert_ne!(map(&mut Deidentifier::with_salt(false, 42)), map(&mut Deidentifier::with_salt(false, 43)));
}

#[test]
fn an_output_inside_the_input_folder_or_equal_to_the_input_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("series");
    std::fs::create_dir(&input).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/dicom/single/CT_small.dcm");
    std::fs::copy(&src, input.join("a.dcm")).unwrap();
    for out in [input.join("deid"), input.join("./x/../deid2")] {
        let e = Deidentifier::new(false).unwrap().run(&input, &out).unwrap_err().to_string();
        assert!(e.contains("lies inside the input folder"), "{e}");
        assert!(!out.exists());
    }
    let e = Deidentifier::new(false).unwrap().run(&input.join("a.dcm"), &input.join("a.dcm")).unwrap_err().to_string();
    assert!(e.contains("the output is the input file"), "{e}");
    // Beside the input it works, and the written file reads back.
    let report = Deidentifier::new(false).unwrap().run(&input, &dir.path().join("out")).unwrap();
    assert_eq!(report.files, 1);
    assert!(vesalius_io::load(dir.path().join("out/a.dcm")).is_ok());
}
