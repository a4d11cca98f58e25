//! Registration between two real subjects, measured: the MNI152 2009a template and ITK's KmeansTest T1, with the
//! Dice of their brain masks and of grey and white matter (the template's tissue map against the ITK volume's
//! k-means classes 5 and 6) at the world start and after registration, the Jacobian statistics and the time.
//!
//! ```text
//! cargo run --example between_subjects -p vesalius-registration -- fixed=itk sim=ncc smooth=50
//! ```
//!
//! Keys (all optional): `fixed` (`mni` or `itk`), `method` (`affine`, `deformable`, `affine+deformable`), `sim`
//! (`mse`, `ncc`, `mi`), `smooth`, `reg` (`diffusion`, `bending`), `def` (`dense` or a B-spline control spacing),
//! `lr`, `steps`, `maxvox`, `levels` (comma-separated factors), `win` (local correlation's window), `samples` (points per iteration of a sampled B-spline; 0 uses every voxel), `floor` (their foreground threshold), `res` (the template resampled to this spacing, mm). `SAVE=dir` writes the warped image
//! and label maps there. docs/REGISTRATION.md quotes its output.
#![allow(clippy::unwrap_used)] // a measurement script: bad fixtures or keys fail loudly
use std::path::Path;

use vesalius_data::Image;
use vesalius_io::load;
use vesalius_registration::{
    DeformableOptions, Deformation, Method, RegisterOptions, Regulariser, Similarity, affine, labels_at, register, voxel_map,
};

type B = burn::backend::Autodiff<burn::backend::Flex>;
type I = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;

fn fixture(p: &str) -> Image {
    load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(p)).unwrap()
}

/// Dice of label `l` in two label maps on one grid (`None`: any non-zero label), by the eval crate's Dice.
fn label_dice(a: &Image, b: &Image, l: Option<f32>) -> f64 {
    let is = |v: f32| l.map_or(v > 0.5, |l| v == l);
    vesalius_eval::segmentation::dice_of(a.data().iter().map(|&v| is(v)), b.data().iter().map(|&v| is(v)))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str, d: &str| -> String {
        args.iter().find_map(|a| a.strip_prefix(&format!("{k}=")).map(str::to_string)).unwrap_or_else(|| d.to_string())
    };
    let mni =
        (fixture("mni152/mni152_t1.nii.gz"), fixture("mni152/mni152_brain_mask.nii.gz"), fixture("mni152/mni152_tissue_labels.nii.gz"));
    let res: f64 = get("res", "1").parse().unwrap();
    let mni = if res == 1.0 {
        mni
    } else {
        use vesalius_io::geometry::{Interp, resample};
        let sp = [res; 3];
        (
            resample(&mni.0, &sp, Interp::Linear).unwrap(),
            resample(&mni.1, &sp, Interp::Nearest).unwrap(),
            resample(&mni.2, &sp, Interp::Nearest).unwrap(),
        )
    };
    // The ITK volume's k-means grey- and white-matter classes, numbered as the MNI tissue map (1, 2).
    let itk_tissue = fixture("nifti/itk-examples/KmeansTest_T1_tissue_labels.nii.gz");
    let itk = (
        fixture("nifti/itk-examples/KmeansTest_T1UCharRaw.nii.gz"),
        fixture("nifti/itk-examples/KmeansTest_T1_brain_mask.nii.gz"),
        itk_tissue,
    );
    let (fixed, moving) = if get("fixed", "mni") == "mni" { (&mni, &itk) } else { (&itk, &mni) };
    let method = Method::parse(&get("method", "affine+deformable")).unwrap();
    let similarity = match Similarity::parse(&get("sim", "mse")).unwrap() {
        Similarity::Ncc { .. } => Similarity::Ncc { window: get("win", "9").parse().unwrap() },
        other => other,
    };
    let deformation = match get("def", "dense").as_str() {
        "dense" => Deformation::Dense,
        s => Deformation::BSpline { spacing: s.parse().unwrap() },
    };
    let options = RegisterOptions {
        method,
        similarity,
        affine_similarity: Some(Similarity::Mi { bins: 32 }),
        deformable: DeformableOptions {
            smoothness: get("smooth", "1").parse().unwrap(),
            regulariser: Regulariser::parse(&get("reg", "diffusion")).unwrap(),
            deformation,
            learning_rate: get("lr", "0.2").parse().unwrap(),
            steps: get("steps", "100").parse().unwrap(),
            max_voxels: get("maxvox", "2000000").parse().unwrap(),
            levels: get("levels", "4,2,1").split(',').map(|l| l.parse().unwrap()).collect(),
            samples: get("samples", "0").parse().unwrap(),
            foreground: get("floor", "0.05").parse().unwrap(),
            ..DeformableOptions::default()
        },
        ..RegisterOptions::default()
    };
    let device = Default::default();
    let t = std::time::Instant::now();
    let r = register::<B>(&fixed.0, &moving.0, &options, &device);
    let secs = t.elapsed().as_secs_f64();
    let world = voxel_map(&fixed.0, &moving.0, &affine::identity());
    let before_mask = labels_at::<I>(&moving.1, &fixed.0, &world, &device);
    let before_t = labels_at::<I>(&moving.2, &fixed.0, &world, &device);
    let mask = r.warp_labels::<I>(&moving.1, &fixed.0, &device);
    let tissue = r.warp_labels::<I>(&moving.2, &fixed.0, &device);
    let jac = vesalius_registration::metrics::jacobian_stats(&vesalius_registration::metrics::jacobian_determinants(
        &r.field_voxels,
        vesalius_registration::Grid::of(&fixed.0).size,
    ));
    let vol = |m: &Image| m.data().iter().filter(|v| **v > 0.5).count();
    println!("volumes: fixed mask {}, warped mask {}", vol(&fixed.1), vol(&mask));
    if let Some(report) = &r.deformable_report {
        println!("deformable: {report:?}");
    }
    if let Ok(dir) = std::env::var("SAVE") {
        let dir = Path::new(&dir);
        vesalius_io::nifti::save(&dir.join("warped.nii.gz"), &r.warped, vesalius_io::nifti::NiftiType::F32).unwrap();
        vesalius_io::nifti::save(&dir.join("mask.nii.gz"), &mask, vesalius_io::nifti::NiftiType::F32).unwrap();
        vesalius_io::nifti::save(&dir.join("tissue.nii.gz"), &tissue, vesalius_io::nifti::NiftiType::F32).unwrap();
    }
    println!(
        "{args:?}: world brain {:.4} gm {:.4} wm {:.4} | result brain {:.4} gm {:.4} wm {:.4} gm+wm {:.4} | {jac:?} | {secs:.1} s",
        label_dice(&before_mask, &fixed.1, Some(1.0)),
        label_dice(&before_t, &fixed.2, Some(1.0)),
        label_dice(&before_t, &fixed.2, Some(2.0)),
        label_dice(&mask, &fixed.1, Some(1.0)),
        label_dice(&tissue, &fixed.2, Some(1.0)),
        label_dice(&tissue, &fixed.2, Some(2.0)),
        label_dice(&tissue, &fixed.2, None),
    );
}
