//! Readers against real files (values computed once with nibabel 5 / Pillow: `nib.load(f).get_fdata()`,
//! `.affine`, `np.array(Image.open(f).convert("RGB"))`) and against synthetic files with known content.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::io::Write;
use std::path::{Path, PathBuf};

use vesalius_io::{DataError, Image};
use vesalius_io::{Format, load};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(rel)
}

fn sum(img: &Image) -> f64 {
    img.data().iter().map(|&v| v as f64).sum()
}

#[test]
fn mni152_t1_matches_nibabel() {
    let img = load(fixture("mni152/mni152_t1.nii.gz")).unwrap();
    assert_eq!(img.shape(), &[197, 233, 189]);
    assert_eq!(img.channels(), 1);
    assert_eq!(img.dtype(), "uint8");
    assert_eq!(img.affine(), &[[1., 0., 0., -98.], [0., 1., 0., -134.], [0., 0., 1., -72.], [0., 0., 0., 1.]]);
    assert_eq!(img.orientation(), "RAS");
    assert_eq!(img.spacing(), vec![1.0, 1.0, 1.0]);
    assert_eq!(sum(&img), 333_468_829.0);
    assert_eq!(img.get(&[100, 120, 90]), 217.0);
    assert_eq!(img.get(&[50, 60, 70]), 156.0);
}

#[test]
fn mni152_masks_match_nibabel() {
    let mask = load(fixture("mni152/mni152_brain_mask.nii.gz")).unwrap();
    assert_eq!(sum(&mask), 1_783_505.0);
    let tissue = load(fixture("mni152/mni152_tissue_labels.nii.gz")).unwrap();
    assert_eq!(sum(&tissue), 2_343_607.0);
    assert_eq!(tissue.get(&[100, 120, 90]), 2.0);
}

#[test]
fn itk_palette_png_reads_as_grey() {
    let img = load(fixture("itk/BrainProtonDensitySlice.png")).unwrap();
    assert_eq!(img.shape(), &[181, 217]);
    assert_eq!(img.channels(), 1);
    assert_eq!(img.dtype(), "uint8");
    assert_eq!(sum(&img), 4_860_107.0);
    // Pillow row 100, column 50.
    assert_eq!(img.get(&[50, 100]), 173.0);
    assert_eq!(img.orientation(), "LP");
}

#[test]
fn synthetic_2d_formats_keep_values() {
    let dir = tempfile::tempdir().unwrap();
    let g16: Vec<u16> = (0..12).map(|v| v * 5000).collect();
    let p16 = dir.path().join("a.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 3, g16.clone()).unwrap().save(&p16).unwrap();
    let img = load(&p16).unwrap();
    assert_eq!((img.dtype(), img.channels()), ("uint16", 1));
    assert_eq!(img.get(&[3, 2]), 55000.0);

    let rgb: Vec<u8> = (0..4 * 3 * 3).map(|v| v as u8).collect();
    for name in ["b.png", "b.tiff"] {
        let p = dir.path().join(name);
        image::RgbImage::from_raw(4, 3, rgb.clone()).unwrap().save(&p).unwrap();
        let img = load(&p).unwrap();
        assert_eq!((img.channels(), img.shape()), (3, &[4usize, 3][..]), "{name}");
        // pixel (x=1, y=2) = index 9 → bytes 27, 28, 29
        assert_eq!([img.get_c(&[1, 2], 0), img.get_c(&[1, 2], 1), img.get_c(&[1, 2], 2)], [27.0, 28.0, 29.0]);
    }
    let tif16 = dir.path().join("c.tif");
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 3, g16).unwrap().save(&tif16).unwrap();
    assert_eq!(load(&tif16).unwrap().get(&[1, 0]), 5000.0);

    let flat = image::GrayImage::from_pixel(16, 16, image::Luma([128u8]));
    let jpg = dir.path().join("d.jpg");
    flat.save(&jpg).unwrap();
    let img = load(&jpg).unwrap();
    assert!(img.data().iter().all(|&v| (v - 128.0).abs() <= 1.0));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

fn message(e: DataError) -> String {
    e.to_string()
}

/// A minimal NIfTI-1 header (348 bytes + 4 extension bytes) for `dims` of uint8.
fn nifti_header(dims: &[u16], vox_offset: f32) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    h[40..42].copy_from_slice(&(dims.len() as u16).to_le_bytes());
    for (i, d) in dims.iter().enumerate() {
        h[42 + 2 * i..44 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&2i16.to_le_bytes()); // uint8
    h[72..74].copy_from_slice(&8i16.to_le_bytes());
    for i in 0..4 {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&1f32.to_le_bytes());
    }
    h[108..112].copy_from_slice(&vox_offset.to_le_bytes());
    h[344..348].copy_from_slice(b"n+1\0");
    h
}

#[test]
fn hostile_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.nii", b"");
    assert!(message(load(&empty).unwrap_err()).contains("empty.nii: empty file"));

    let random = write(dir.path(), "random.nii", &[7u8; 400]);
    assert!(message(load(&random).unwrap_err()).contains("random.nii: not a NIfTI file"));

    // A header promising 30000³ voxels in a 352-byte file: refused before any allocation.
    let huge = write(dir.path(), "huge.nii", &nifti_header(&[30000, 30000, 30000], 352.0));
    let m = message(load(&huge).unwrap_err());
    assert!(m.contains("huge.nii") && m.contains("file holds 352 bytes"), "{m}");

    let zero = write(dir.path(), "zero.nii", &nifti_header(&[4, 0, 4], 352.0));
    assert!(message(load(&zero).unwrap_err()).contains("invalid dimensions"));

    let negative = write(dir.path(), "negative.nii", &nifti_header(&[4, (-3i16) as u16, 4], 352.0));
    let m = message(load(&negative).unwrap_err());
    assert!(m.contains("negative.nii") && m.contains("invalid dimensions"), "{m}");

    let mut past = nifti_header(&[2, 2, 2], 1e9);
    past.extend_from_slice(&[0u8; 8]);
    let m = message(load(write(dir.path(), "past.nii", &past)).unwrap_err());
    assert!(m.contains("past.nii") && m.contains("at offset 1000000000") && m.contains("file holds 360 bytes"), "{m}");

    let mut sizeof = nifti_header(&[2, 2, 2], 352.0);
    sizeof[0..4].copy_from_slice(&300i32.to_le_bytes());
    sizeof.extend_from_slice(&[0u8; 8]);
    let m = message(load(write(dir.path(), "sizeof.nii", &sizeof)).unwrap_err());
    assert!(m.contains("sizeof.nii") && m.contains("not a NIfTI file"), "{m}");

    // A pair's header with no image file next to it.
    let mut pair = nifti_header(&[2, 2, 2], 0.0);
    pair.truncate(348);
    pair[344..348].copy_from_slice(b"ni1\0");
    let m = message(load(write(dir.path(), "alone.hdr", &pair)).unwrap_err());
    assert!(m.contains("alone.hdr: header without its .img data file"), "{m}");

    let mut truncated = nifti_header(&[4, 4, 4], 352.0);
    truncated.extend_from_slice(&[1u8; 10]);
    assert!(load(write(dir.path(), "short.nii", &truncated)).is_err());

    // A valid small file reads.
    let mut ok = nifti_header(&[2, 3, 4], 352.0);
    ok.extend((0..24u8).collect::<Vec<_>>());
    let img = load(write(dir.path(), "ok.nii", &ok)).unwrap();
    assert_eq!(img.shape(), &[2, 3, 4]);
    assert_eq!(img.get(&[1, 2, 3]), 23.0);
    // No sform or qform: nibabel's fallback, x flipped, origin at the grid centre.
    assert_eq!(img.affine()[0], [-1.0, 0.0, 0.0, 0.5]);
    assert_eq!(img.affine()[1], [0.0, 1.0, 0.0, -1.0]);

    // A gzip stream cut short.
    let gz = std::fs::read(fixture("mni152/mni152_brain_mask.nii.gz")).unwrap();
    let cut = write(dir.path(), "cut.nii.gz", &gz[..gz.len() / 2]);
    assert!(message(load(&cut).unwrap_err()).contains("cut.nii.gz"));

    let bad_png = write(dir.path(), "bad.png", b"\x89PNG\r\n\x1a\nnot really");
    assert!(message(load(&bad_png).unwrap_err()).contains("bad.png: cannot decode image"));
    assert!(message(load(dir.path().join("missing.png")).unwrap_err()).contains("missing.png"));
    assert!(message(load(dir.path().join("x.xyz")).unwrap_err()).contains("x.xyz: no such file or folder"));
    // 78 bytes declaring 4104 × 67078 RGB pixels (a fuzzing finding): refused without allocating them.
    let huge = fixture("fuzz/png_huge_dimensions.png");
    let e = message(load(&huge).unwrap_err());
    assert!(e.contains("png_huge_dimensions.png") && e.contains("cannot decode image"), "{e}");
    let xyz = write(dir.path(), "x.xyz", b"data");
    assert!(message(load(&xyz).unwrap_err()).contains("unknown image format"));
    assert_eq!(Format::from_path(Path::new("A.NII.GZ")), Some(Format::NiftiGz));
}

#[test]
fn multipage_tiff_is_a_stack() {
    use tiff::encoder::{TiffEncoder, colortype};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stack.tif");
    {
        let f = std::fs::File::create(&p).unwrap();
        let mut enc = TiffEncoder::new(f).unwrap();
        for z in 0..3u16 {
            let page: Vec<u16> = (0..20u16).map(|i| i + 100 * z).collect();
            enc.write_image::<colortype::Gray16>(5, 4, &page).unwrap();
        }
    }
    let img = load(&p).unwrap();
    assert_eq!(img.shape(), &[5, 4, 3]);
    assert_eq!(img.dtype(), "uint16");
    assert_eq!(img.get(&[1, 2, 2]), (2 * 5 + 1) as f32 + 200.0);
    // A one-page TIFF stays 2D.
    let one = dir.path().join("one.tif");
    image::GrayImage::from_pixel(3, 2, image::Luma([9u8])).save(&one).unwrap();
    assert_eq!(load(&one).unwrap().shape(), &[3, 2]);
}
