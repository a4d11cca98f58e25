//! Dataset sources: MedMNIST archives made in the MedMNIST layout, CSV manifests, class folders, volume patches.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vesalius_data::source::{Label, Pixels, SourceConfig, Split, VolumePatchesConfig, load};
use vesalius_io::npz::{read_medmnist, write_npz};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(rel)
}

/// A MedMNIST-layout archive: `n` images per split of `size`² pixels, `channels` 1 or 3, `labels` per image.
fn medmnist(path: &Path, n: usize, size: usize, channels: usize, labels: usize) {
    let mut arrays = Vec::new();
    for split in ["train", "val", "test"] {
        let mut shape = vec![n, size, size];
        if channels == 3 {
            shape.push(3);
        }
        let pixels: Vec<u8> = (0..n * size * size * channels).map(|i| (i % 251) as u8).collect();
        let lab: Vec<u8> = (0..n * labels).flat_map(|i| ((i % 3) as i64).min(if labels > 1 { 1 } else { 2 }).to_le_bytes()).collect();
        arrays.push((format!("{split}_images"), shape, "|u1", pixels));
        arrays.push((format!("{split}_labels"), vec![n, labels], "<i8", lab));
    }
    let refs: Vec<(&str, Vec<usize>, &str, Vec<u8>)> = arrays.iter().map(|(a, b, c, d)| (a.as_str(), b.clone(), *c, d.clone())).collect();
    write_npz(path, &refs).unwrap();
}

#[test]
fn medmnist_grey_rgb_and_multilabel() {
    let dir = tempfile::tempdir().unwrap();
    let grey = dir.path().join("pneumoniamnist.npz");
    medmnist(&grey, 5, 28, 1, 1);
    let s = load(&SourceConfig::Medmnist { path: grey.clone() }, 1, 0).unwrap();
    assert_eq!((s.samples.len(), s.channels, s.size, s.multi_label), (15, 1, 28, false));
    assert_eq!(s.classes, vec!["0", "1", "2"]);
    assert_eq!(s.of_split(Split::Val).count(), 5);
    assert_eq!(s.samples[1].label, Label::Class(1));
    assert_eq!(s.samples[0].pixels, Pixels::U8((0..784).map(|i| (i % 251) as u8).collect()));

    let rgb = dir.path().join("pathmnist.npz");
    medmnist(&rgb, 2, 64, 3, 1);
    let part = read_medmnist(&rgb, "train").unwrap();
    assert_eq!((part.channels, part.size, part.n), (3, 64, 2));
    // HWC in the file → CHW: channel 1 of pixel 0 is byte 1 of the file, channel 0 of pixel 1 is byte 3.
    assert_eq!(part.images[64 * 64], 1);
    assert_eq!(part.images[1], 3);

    let chest = dir.path().join("chestmnist.npz");
    medmnist(&chest, 4, 28, 1, 14);
    let s = load(&SourceConfig::Medmnist { path: chest }, 1, 0).unwrap();
    assert!(s.multi_label);
    assert_eq!(s.classes.len(), 14);
    assert!(matches!(&s.samples[0].label, Label::Multi(f) if f.len() == 14));
}

#[test]
fn malformed_npz_is_an_error_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    // The header claims 10⁹ images of 28² bytes but the entry holds 4 bytes.
    let lying = dir.path().join("lying.npz");
    write_npz(&lying, &[("train_images", vec![1_000_000_000, 28, 28], "|u1", vec![0u8; 4])]).unwrap();
    let e = read_medmnist(&lying, "train").unwrap_err().to_string();
    assert!(e.contains("lying.npz") && e.contains("train_images") && e.contains("needs"), "{e}");
    let missing = dir.path().join("missing.npz");
    write_npz(&missing, &[("train_images", vec![1, 28, 28], "|u1", vec![0u8; 784])]).unwrap();
    assert!(read_medmnist(&missing, "train").unwrap_err().to_string().contains("no array 'train_labels'"));
    // Label values are checked before they size anything: a class index of 10¹² is an error, not 10¹² classes.
    let huge = dir.path().join("huge.npz");
    let label = 1_000_000_000_000i64.to_le_bytes().to_vec();
    write_npz(&huge, &[("train_images", vec![1, 28, 28], "|u1", vec![0u8; 784]), ("train_labels", vec![1, 1], "<i8", label)]).unwrap();
    let e = read_medmnist(&huge, "train").unwrap_err().to_string();
    assert!(e.contains("huge.npz") && e.contains("train_labels[0] is 1000000000000"), "{e}");
    let flags = dir.path().join("flags.npz");
    write_npz(&flags, &[("train_images", vec![1, 28, 28], "|u1", vec![0u8; 784]), ("train_labels", vec![1, 2], "|u1", vec![1, 7])])
        .unwrap();
    let e = read_medmnist(&flags, "train").unwrap_err().to_string();
    assert!(e.contains("train_labels[0] is 7, expected a 0/1 flag"), "{e}");
    // A manifest naming more distinct labels than any task has is refused before any image is read.
    let csv = dir.path().join("many.csv");
    let rows: String = (0..1001).map(|i| format!("img{i}.png,class{i}\n")).collect();
    std::fs::write(&csv, format!("path,label\n{rows}")).unwrap();
    let e = vesalius_data::source::load(&vesalius_data::source::SourceConfig::Csv { path: csv, multi_label: true }, 1, 28)
        .unwrap_err()
        .to_string();
    assert!(e.contains("many.csv") && e.contains("1001 distinct labels"), "{e}");
    let notzip = dir.path().join("notzip.npz");
    std::fs::write(&notzip, b"PK\x03\x04garbage").unwrap();
    assert!(read_medmnist(&notzip, "train").unwrap_err().to_string().contains("notzip.npz"));
}

#[test]
fn csv_manifest_with_patients_and_folder_of_classes() {
    let dir = tempfile::tempdir().unwrap();
    for (i, class) in ["benign", "malignant", "benign", "malignant"].iter().enumerate() {
        std::fs::create_dir_all(dir.path().join("imgs").join(class)).unwrap();
        let img = image::GrayImage::from_pixel(10 + i as u32, 8, image::Luma([(i * 60) as u8]));
        img.save(dir.path().join("imgs").join(class).join(format!("{i}.png"))).unwrap();
    }
    let csv = "path,label,patient_id,split\nimgs/benign/0.png,benign,p1,\nimgs/malignant/1.png,malignant,p1,\nimgs/benign/2.png,benign,p2,test\nimgs/malignant/3.png,malignant,p3,\n";
    std::fs::write(dir.path().join("m.csv"), csv).unwrap();
    let s = load(&SourceConfig::Csv { path: dir.path().join("m.csv"), multi_label: false }, 3, 16).unwrap();
    assert_eq!(s.classes, vec!["benign", "malignant"]);
    assert_eq!(s.samples[1].label, Label::Class(1));
    assert_eq!(s.samples[2].split, Some(Split::Test));
    assert_eq!(s.samples[0].patient.as_deref(), Some("p1"));
    // Grey replicated to 3 channels, resized to 16², scaled to [0, 1]: image 3 is 180/255 everywhere.
    assert_eq!(s.samples[3].pixels.len(), 3 * 16 * 16);
    assert!(s.samples[3].pixels.to_f32().iter().all(|&v| (v - 180.0 / 255.0).abs() < 1e-6));

    let f = load(&SourceConfig::Folder { path: dir.path().join("imgs") }, 1, 8).unwrap();
    assert_eq!(f.samples.len(), 4);
    assert_eq!(f.samples.iter().filter(|s| s.label == Label::Class(1)).count(), 2);

    std::fs::write(dir.path().join("bad.csv"), "file,label\nx.png,a\n").unwrap();
    let e = load(&SourceConfig::Csv { path: dir.path().join("bad.csv"), multi_label: false }, 1, 8).unwrap_err().to_string();
    assert!(e.contains("bad.csv") && e.contains("'path'"), "{e}");
    std::fs::write(dir.path().join("gone.csv"), "path,label\nnothere.png,a\n").unwrap();
    let e = load(&SourceConfig::Csv { path: dir.path().join("gone.csv"), multi_label: false }, 1, 8).unwrap_err().to_string();
    assert!(e.contains("nothere.png"), "{e}");
}

fn patches(slabs: BTreeMap<Split, [usize; 2]>, per_class: usize) -> VolumePatchesConfig {
    VolumePatchesConfig {
        image: fixture("mni152/mni152_t1.nii.gz"),
        labels: fixture("mni152/mni152_tissue_labels.nii.gz"),
        mask: Some(fixture("mni152/mni152_brain_mask.nii.gz")),
        classes: ["outside brain", "other brain", "grey matter", "white matter"].map(String::from).to_vec(),
        patch: 28,
        slabs,
        per_class,
        eval_per_class: None,
        seed: 1,
    }
}

#[test]
fn volume_patches_from_disjoint_slabs() {
    let slabs = BTreeMap::from([(Split::Train, [40, 60]), (Split::Val, [88, 92]), (Split::Test, [120, 124])]);
    let cfg = patches(slabs, 30);
    let s = load(&SourceConfig::VolumePatches(cfg.clone()), 1, 0).unwrap();
    assert_eq!(s.of_split(Split::Train).count(), 4 * 30);
    assert_eq!(s.of_split(Split::Test).count(), 4 * 10);
    // Every patch's class is its centre voxel's class, and its slice lies in its split's slab.
    let t1 = vesalius_io::load(&cfg.image).unwrap();
    let tissue = vesalius_io::load(&cfg.labels).unwrap();
    let mask = vesalius_io::load(cfg.mask.as_ref().unwrap()).unwrap();
    for smp in &s.samples {
        let xyz: Vec<usize> = smp.id.split('_').map(|p| p[1..].parse().unwrap()).collect();
        let (x, y, z) = (xyz[0], xyz[1], xyz[2]);
        let [z0, z1] = cfg.slabs[&smp.split.unwrap()];
        assert!(z0 <= z && z < z1);
        let class = if mask.get(&[x, y, z]) == 0.0 { 0 } else { 1 + tissue.get(&[x, y, z]) as usize };
        assert_eq!(smp.label, Label::Class(class));
        let centre = smp.pixels.to_f32()[14 * 28 + 14];
        assert!((centre - t1.get(&[x, y, z]) / 255.0).abs() < 1e-6);
    }
    // Reproducible by seed.
    assert_eq!(load(&SourceConfig::VolumePatches(cfg.clone()), 1, 0).unwrap(), s);
    // A small training set evaluated on more patches.
    let small = VolumePatchesConfig { per_class: 3, eval_per_class: Some(25), ..cfg };
    let s = load(&SourceConfig::VolumePatches(small), 1, 0).unwrap();
    assert_eq!((s.of_split(Split::Train).count(), s.of_split(Split::Val).count(), s.of_split(Split::Test).count()), (12, 100, 100));

    let close = BTreeMap::from([(Split::Train, [40, 60]), (Split::Test, [70, 80])]);
    let e = load(&SourceConfig::VolumePatches(patches(close, 5)), 1, 0).unwrap_err().to_string();
    assert!(e.contains("at least the patch size"), "{e}");
}

#[test]
fn twelve_bit_images_in_sixteen_bit_files_span_the_unit_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cr12.png");
    // A 12-bit radiograph stored as 16-bit PNG: values 0..=4095.
    let pixels: Vec<u16> = (0..64u32).map(|i| (i * 4095 / 63) as u16).collect();
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(8, 8, pixels).unwrap().save(&path).unwrap();
    let img = vesalius_io::load(&path).unwrap();
    assert_eq!(img.dtype(), "uint16");
    let v = vesalius_data::source::prepare_2d(&img, 1, 8, &path).unwrap();
    let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(lo.abs() < 1e-6 && (hi - 1.0).abs() < 1e-6, "[{lo}, {hi}]");
    assert_eq!(vesalius_data::source::stored_range_u16(4095.0), 4095.0);
    assert_eq!(vesalius_data::source::stored_range_u16(1500.0), 4095.0);
    assert_eq!(vesalius_data::source::stored_range_u16(60000.0), 65535.0);
    assert_eq!(vesalius_data::source::stored_range_u16(200.0), 255.0);
}

#[test]
fn a_manifest_row_naming_a_folder_is_scanned_without_blocking_or_reading_everything() {
    // The CSV fuzz target's finding: a row `/` made the loader read every file under it in full as a DICOM
    // series. The same row pointing at a folder with a named pipe and a large non-DICOM file ends in an error.
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("not-a-series");
    std::fs::create_dir(&folder).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(folder.join("pipe")).status().unwrap().success());
    std::fs::write(folder.join("big.bin"), vec![1u8; 4 << 20]).unwrap();
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, format!("path,label\n{},a\nb.png,b\n", folder.display())).unwrap();
    let e = vesalius_data::source::load(&vesalius_data::source::SourceConfig::Csv { path: csv, multi_label: false }, 1, 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not-a-series") && e.contains("no DICOM files"), "{e}");
}
