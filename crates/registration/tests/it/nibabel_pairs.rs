//! nibabel's anatomical image against its moved copies: nibabel's test suite made them by giving the anatomical
//! data the affine `E · A` with `E = from_matvec(euler2mat(0.1, 0.2, 0.3), [3, 4, 5])`, then resampling with SPM
//! (to a 4 mm RAS grid, and to the 3-slice functional grid). Registration must find the world transform `E`.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::Path;

use vesalius_io::load;
use vesalius_registration::{AffineOptions, Grid, Method, RegisterOptions, Similarity, register};

use crate::B;

const E: [[f64; 4]; 3] = [
    [0.975170327202, -0.097843395007, 0.198669330795, 3.0],
    [0.153791997989, 0.944702485995, -0.289629477626, 4.0],
    [-0.159345079308, 0.312991825785, 0.936293363584, 5.0],
];

/// Mean distance (mm) between `world · x` and `E · x` over the fixed voxels brighter than the mean.
fn error_mm(moving: &str, levels: Vec<usize>) -> f64 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/nifti/nibabel");
    let fixed = load(dir.join("anatomical.nii")).unwrap();
    let moving = load(dir.join(moving)).unwrap();
    let options = RegisterOptions {
        method: Method::Affine,
        similarity: Similarity::Mse,
        affine_similarity: Some(Similarity::Mi { bins: 32 }),
        affine: AffineOptions { levels, rigid_steps: 200, affine_steps: 0, ..AffineOptions::default() },
        ..RegisterOptions::default()
    };
    let r = register::<B>(&fixed, &moving, &options, &Default::default());
    let g = Grid::of(&fixed);
    let [d, h, w] = g.size;
    let mean = fixed.data().iter().map(|&v| v as f64).sum::<f64>() / fixed.voxels() as f64;
    let (mut total, mut n) = (0.0, 0);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                if (fixed.data()[(z * h + y) * w + x] as f64) < mean {
                    continue;
                }
                let p = [0, 1, 2]
                    .map(|r| g.to_world[r][0] * z as f64 + g.to_world[r][1] * y as f64 + g.to_world[r][2] * x as f64 + g.to_world[r][3]);
                let apply = |m: &[[f64; 4]]| [0, 1, 2].map(|r| m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3]);
                let (a, b) = (apply(&r.world[..3]), apply(&E));
                total += ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt();
                n += 1;
            }
        }
    }
    println!("{}: world {:?}", n, r.world);
    total / n as f64
}

#[test]
fn rotation_and_translation_found_on_the_4mm_grid() {
    let e = error_mm("reoriented_anat_moved.nii", vec![2, 1]);
    println!("reoriented: {e:.3} mm");
    assert!(e < 0.25, "{e}");
}

#[test]
fn rotation_and_translation_found_from_three_thick_slices() {
    let e = error_mm("resampled_anat_moved.nii", vec![1]);
    println!("resampled: {e:.3} mm");
    assert!(e < 0.5, "{e}");
}
