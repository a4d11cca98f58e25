#![allow(clippy::unwrap_used)] // test helpers fail loudly
//! SSIM and PSNR against scikit-image's values on the same inputs (`fixtures/enhancement/ssim_reference.py`).
use std::path::Path;

use vesalius_enhancement::metrics::{psnr, ssim};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn noisy(reference: &[f32]) -> Vec<f32> {
    reference.iter().enumerate().map(|(i, &v)| v + ((i as i64 * 7919) % 41 - 20) as f32).collect()
}

#[test]
fn ssim_and_psnr_equal_scikit_image_in_2d_and_3d() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("enhancement/ssim_reference.json")).unwrap()).unwrap();
    let value = |k: &str| expected[k].as_f64().unwrap();

    let slice = vesalius_io::load(fixtures().join("itk/BrainProtonDensitySlice.png")).unwrap();
    let est = noisy(slice.data());
    let s2 = ssim(&est, slice.data(), slice.shape(), 255.0);
    assert!((s2 - value("ssim_2d")).abs() < 1e-4, "SSIM 2D {s2} vs scikit-image {}", value("ssim_2d"));
    let p2 = psnr(&est, slice.data(), 255.0);
    assert!((p2 - value("psnr_2d")).abs() < 1e-4, "PSNR 2D {p2} vs {}", value("psnr_2d"));

    let (w, h, d) = (19usize, 17usize, 14usize);
    let reference: Vec<f32> =
        (0..w * h * d).map(|i| ((i % w).pow(2) + 3 * ((i / w) % h) + 5 * (i / (w * h)).pow(2)) as f32 % 97.0).collect();
    let est = noisy(&reference);
    let s3 = ssim(&est, &reference, &[w, h, d], 96.0);
    assert!((s3 - value("ssim_3d")).abs() < 1e-4, "SSIM 3D {s3} vs scikit-image {}", value("ssim_3d"));
    let p3 = psnr(&est, &reference, 96.0);
    assert!((p3 - value("psnr_3d")).abs() < 1e-4, "PSNR 3D {p3} vs {}", value("psnr_3d"));
}
