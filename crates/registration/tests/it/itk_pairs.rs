//! The ITK example slices with known transforms: a translation of (13, 17) pixels, a rotation of 10° about the
//! image centre, and the translation again across modalities (T1 against proton density, by mutual information).
//! Each recovered mapping must be within a fraction of a pixel, on average over the fixed image, of the true one.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::{Path, PathBuf};

use vesalius_data::Image;
use vesalius_io::load;
use vesalius_registration::{AffineOptions, Method, RegisterOptions, Registration, Similarity, register};

use crate::B;

fn itk(name: &str) -> Image {
    let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/itk").join(name);
    load(&p).unwrap()
}

/// Mean distance (pixels) between the recovered moving position of every fixed pixel and `truth(x, y)`.
fn mean_error(r: &Registration, fixed: &Image, truth: impl Fn(f64, f64) -> (f64, f64)) -> f64 {
    let (w, h) = (fixed.shape()[0], fixed.shape()[1]);
    let mut total = 0.0;
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (tx, ty) = truth(x as f64, y as f64);
            let (rx, ry) = (r.moving_voxel[2][i] as f64, r.moving_voxel[1][i] as f64);
            total += ((rx - tx).powi(2) + (ry - ty).powi(2)).sqrt();
        }
    }
    total / (w * h) as f64
}

fn rigid(similarity: Similarity) -> RegisterOptions {
    RegisterOptions {
        method: Method::Affine,
        similarity,
        affine: AffineOptions { affine_steps: 0, ..AffineOptions::default() },
        ..RegisterOptions::default()
    }
}

#[test]
fn translation_13_17_is_recovered() {
    let fixed = itk("BrainProtonDensitySliceBorder20.png");
    let moving = itk("BrainProtonDensitySliceShifted13x17y.png");
    let r = register::<B>(&fixed, &moving, &rigid(Similarity::Mse), &Default::default());
    let e = mean_error(&r, &fixed, |x, y| (x + 13.0, y + 17.0));
    println!("shift: mean error {e:.3} px, world {:?}", r.world);
    assert!(e < 0.05, "{e}");
}

#[test]
fn rotation_10_degrees_is_recovered() {
    let fixed = itk("BrainProtonDensitySliceBorder20.png");
    let moving = itk("BrainProtonDensitySliceRotated10.png");
    let r = register::<B>(&fixed, &moving, &rigid(Similarity::Mse), &Default::default());
    let (c, s) = (10f64.to_radians().cos(), 10f64.to_radians().sin());
    let e_plus = mean_error(&r, &fixed, |x, y| (c * (x - 110.0) - s * (y - 128.0) + 110.0, s * (x - 110.0) + c * (y - 128.0) + 128.0));
    let e_minus = mean_error(&r, &fixed, |x, y| (c * (x - 110.0) + s * (y - 128.0) + 110.0, -s * (x - 110.0) + c * (y - 128.0) + 128.0));
    println!("rotation: mean error {e_plus:.3} (+10°) {e_minus:.3} (−10°) px, world {:?}", r.world);
    assert!(e_plus < 0.25, "{e_plus}");
    // Every voxel through automatic differentiation (the path before sampling) finds the same rotation.
    let mut every_voxel = rigid(Similarity::Mse);
    every_voxel.affine.samples = 0;
    let full = register::<B>(&fixed, &moving, &every_voxel, &Default::default());
    let e_full = mean_error(&full, &fixed, |x, y| (c * (x - 110.0) - s * (y - 128.0) + 110.0, s * (x - 110.0) + c * (y - 128.0) + 128.0));
    println!("rotation, every voxel by autodiff: {e_full:.3} px");
    assert!(e_full < 0.5, "{e_full}");
    // Both paths report, and neither kept its start.
    let reports = [&full, &r].map(|x| x.affine_report.as_ref().map(|a| a.kept_start));
    assert_eq!(reports, [Some(false), Some(false)]);
}

#[test]
fn translation_across_modalities_by_mutual_information() {
    let fixed = itk("BrainT1SliceBorder20.png");
    let moving = itk("BrainProtonDensitySliceShifted13x17y.png");
    let r = register::<B>(&fixed, &moving, &rigid(Similarity::Mi { bins: 32 }), &Default::default());
    let e = mean_error(&r, &fixed, |x, y| (x + 13.0, y + 17.0));
    println!("T1 vs PD: mean error {e:.3} px, world {:?}", r.world);
    assert!(e < 0.1, "{e}");
}

/// The every-voxel affine optimiser is guarded as the sampled one is: a result no better than its start by the
/// similarity is replaced by the start, and the report says so.
#[test]
fn the_every_voxel_affine_optimiser_never_ends_worse_than_its_start() {
    use vesalius_registration::affine::{AffineParams, register_affine_reported};
    let fixed = itk("BrainProtonDensitySliceBorder20.png");
    let moving = itk("BrainProtonDensitySliceShifted13x17y.png");
    let opts = AffineOptions { similarity: Similarity::Mse, affine_steps: 0, init_centre_of_mass: false, ..AffineOptions::default() };
    let (r, report) = register_affine_reported::<B>(&fixed, &moving, &opts, &Default::default());
    assert!(!report.kept_start && report.loss_end < 0.1 * report.loss_start, "{report:?}");
    assert_eq!(report.start, "world");
    assert!(!report.iterations.is_empty() && report.iterations.iter().all(|(l, _)| l.starts_with("rigid@")), "{report:?}");
    assert!(r.params != AffineParams::IDENTITY);
    // Steps of 10⁴ (degrees and millimetres) throw the slice away: the guard returns the start.
    let wild = AffineOptions { learning_rate: 1e4, ..opts };
    let (r, report) = register_affine_reported::<B>(&fixed, &moving, &wild, &Default::default());
    assert!(report.kept_start, "{report:?}");
    assert_eq!(r.params, AffineParams::IDENTITY);
}
