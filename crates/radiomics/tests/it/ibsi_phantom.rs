//! The IBSI 1 digital phantom against the reference manual's published values.
#![allow(clippy::unwrap_used)]
use std::path::PathBuf;
use vesalius_radiomics::{Settings, extract};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/radiomics/ibsi")
}

/// Features IBSI defines that are not computed (intensity-volume histogram, local intensity, GLDZM, convex-hull
/// and enclosing-ellipsoid densities, Moran's I, Geary's C) are absent from the reference file; every feature in
/// it must be present and within tolerance.
#[test]
fn digital_phantom_matches_the_ibsi_reference_values() {
    let image = vesalius_io::load(fixtures().join("phantom.nii.gz")).unwrap();
    let mask = vesalius_io::load(fixtures().join("mask.nii.gz")).unwrap();
    // the manual computes the phantom without discretisation: a bin width of 1 from the minimum (1) keeps it
    let f = extract(&image, &mask, 1.0, &Settings { bin_width: Some(1.0), ..Settings::default() }).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("ibsi_reference.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, r) in reference.as_object().unwrap() {
        let (want, tol) = (r["value"].as_f64().unwrap(), r["tolerance"].as_f64().unwrap());
        match f.get(name) {
            Some(got) if (got - want).abs() <= tol + 1e-9 => checked += 1,
            got => failures.push(format!("{name}: got {got:?}, IBSI {want} ± {tol}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), reference.as_object().unwrap().len(), failures.join("\n"));
    assert_eq!(checked, 139);
}

/// The mesh itself, tighter than IBSI's tolerance: the phantom's volume and area as pyradiomics' marching cubes
/// gives them (556.333 mm³, 388.071 mm²).
#[test]
fn phantom_mesh_matches_the_marching_cubes_surface_exactly() {
    let image = vesalius_io::load(fixtures().join("phantom.nii.gz")).unwrap();
    let mask = vesalius_io::load(fixtures().join("mask.nii.gz")).unwrap();
    let f = extract(&image, &mask, 1.0, &Settings { families: vec!["morph".into()], ..Settings::default() }).unwrap();
    assert!((f.get("morph_vol").unwrap() - 556.333_333_333).abs() < 1e-6);
    assert!((f.get("morph_area").unwrap() - 388.070_629_881).abs() < 1e-6);
    assert!(f.get("stat_mean").is_none(), "only the requested family is computed");
}
