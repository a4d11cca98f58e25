//! Vesalius against pyradiomics 3.0.1 on pyradiomics' own test cases (values computed once by
//! fixtures/radiomics/pyradiomics/make_pyradiomics_reference.py and committed).
//!
//! Definitions that differ are compared after the documented conversion: pyradiomics' kurtosis is not the excess
//! kurtosis (+3), its principal-axis lengths use the covariance normalised by N (× √((N − 1)/N)), its maximum
//! diameters are measured between the centres of border voxels, not between mesh vertices (not compared), its
//! fixed-width bins start at multiples of the width (`BinOrigin::Zero`), and its marching-cubes lookup table
//! triangulates some polygons differently (mesh volume and area within 0.6 %; breast1 identical).
#![allow(clippy::unwrap_used)]
use std::path::PathBuf;
use vesalius_radiomics::{BinOrigin, Settings, extract};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/radiomics/pyradiomics")
}

/// pyradiomics name → (Vesalius name, conversion).
fn mapping() -> Vec<(&'static str, &'static str, Conv)> {
    use Conv::*;
    let mut m = vec![
        ("firstorder_10Percentile", "stat_p10", Same),
        ("firstorder_90Percentile", "stat_p90", Same),
        ("firstorder_Energy", "stat_energy", Same),
        ("firstorder_Entropy", "ih_entropy", Same),
        ("firstorder_InterquartileRange", "stat_iqr", Same),
        ("firstorder_Kurtosis", "stat_kurt", Plus3),
        ("firstorder_Maximum", "stat_max", Same),
        ("firstorder_MeanAbsoluteDeviation", "stat_mad", Same),
        ("firstorder_Mean", "stat_mean", Same),
        ("firstorder_Median", "stat_median", Same),
        ("firstorder_Minimum", "stat_min", Same),
        ("firstorder_Range", "stat_range", Same),
        ("firstorder_RobustMeanAbsoluteDeviation", "stat_rmad", Same),
        ("firstorder_RootMeanSquared", "stat_rms", Same),
        ("firstorder_Skewness", "stat_skew", Same),
        ("firstorder_Uniformity", "ih_uniformity", Same),
        ("firstorder_Variance", "stat_var", Same),
        ("shape_Elongation", "morph_pca_elongation", Same),
        ("shape_Flatness", "morph_pca_flatness", Same),
        ("shape_LeastAxisLength", "morph_pca_least", Biased),
        ("shape_MajorAxisLength", "morph_pca_major", Biased),
        ("shape_MinorAxisLength", "morph_pca_minor", Biased),
        ("shape_MeshVolume", "morph_vol", Mesh),
        ("shape_SurfaceArea", "morph_area", Mesh),
        ("shape_SurfaceVolumeRatio", "morph_av", Mesh),
        ("shape_Sphericity", "morph_sphericity", Mesh),
        ("shape_VoxelVolume", "morph_approx_vol", Same),
        ("shape2D_Elongation", "morph_pca_elongation", Same),
        ("shape2D_MajorAxisLength", "morph_pca_major", Biased),
        ("shape2D_MinorAxisLength", "morph_pca_minor", Biased),
        ("shape2D_MeshSurface", "morph_area", Same),
        ("shape2D_PixelSurface", "morph_approx_area", Same),
        ("shape2D_Perimeter", "morph_perimeter", Same),
        ("shape2D_PerimeterSurfaceRatio", "morph_pa", Same),
        ("shape2D_Sphericity", "morph_sphericity", Same),
        ("shape2D_SphericalDisproportion", "morph_sph_dispr", Same),
    ];
    for (p, v) in [
        ("Autocorrelation", "auto_corr"),
        ("ClusterProminence", "clust_prom"),
        ("ClusterShade", "clust_shade"),
        ("ClusterTendency", "clust_tend"),
        ("Contrast", "contrast"),
        ("Correlation", "corr"),
        ("DifferenceAverage", "diff_avg"),
        ("DifferenceEntropy", "diff_entr"),
        ("DifferenceVariance", "diff_var"),
        ("Id", "inv_diff"),
        ("Idm", "inv_diff_mom"),
        ("Idmn", "inv_diff_mom_norm"),
        ("Idn", "inv_diff_norm"),
        ("Imc1", "info_corr_1"),
        ("Imc2", "info_corr_2"),
        ("InverseVariance", "inv_var"),
        ("JointAverage", "joint_avg"),
        ("JointEnergy", "energy"),
        ("JointEntropy", "joint_entr"),
        ("MaximumProbability", "joint_max"),
        ("SumAverage", "sum_avg"),
        ("SumEntropy", "sum_entr"),
        ("SumSquares", "joint_var"),
    ] {
        m.push((leak(format!("glcm_{p}")), leak(format!("cm_{v}")), Same));
    }
    for (p, v) in [
        ("GrayLevelNonUniformity", "glnu"),
        ("GrayLevelNonUniformityNormalized", "glnu_norm"),
        ("GrayLevelVariance", "gl_var"),
        ("HighGrayLevelRunEmphasis", "hgre"),
        ("LongRunEmphasis", "lre"),
        ("LongRunHighGrayLevelEmphasis", "lrhge"),
        ("LongRunLowGrayLevelEmphasis", "lrlge"),
        ("LowGrayLevelRunEmphasis", "lgre"),
        ("RunEntropy", "rl_entr"),
        ("RunLengthNonUniformity", "rlnu"),
        ("RunLengthNonUniformityNormalized", "rlnu_norm"),
        ("RunPercentage", "r_perc"),
        ("RunVariance", "rl_var"),
        ("ShortRunEmphasis", "sre"),
        ("ShortRunHighGrayLevelEmphasis", "srhge"),
        ("ShortRunLowGrayLevelEmphasis", "srlge"),
    ] {
        m.push((leak(format!("glrlm_{p}")), leak(format!("rlm_{v}")), Same));
    }
    for (p, v) in [
        ("GrayLevelNonUniformity", "glnu"),
        ("GrayLevelNonUniformityNormalized", "glnu_norm"),
        ("GrayLevelVariance", "gl_var"),
        ("HighGrayLevelZoneEmphasis", "hgze"),
        ("LargeAreaEmphasis", "lze"),
        ("LargeAreaHighGrayLevelEmphasis", "lzhge"),
        ("LargeAreaLowGrayLevelEmphasis", "lzlge"),
        ("LowGrayLevelZoneEmphasis", "lgze"),
        ("SizeZoneNonUniformity", "zsnu"),
        ("SizeZoneNonUniformityNormalized", "zsnu_norm"),
        ("SmallAreaEmphasis", "sze"),
        ("SmallAreaHighGrayLevelEmphasis", "szhge"),
        ("SmallAreaLowGrayLevelEmphasis", "szlge"),
        ("ZoneEntropy", "zs_entr"),
        ("ZonePercentage", "z_perc"),
        ("ZoneVariance", "zs_var"),
    ] {
        m.push((leak(format!("glszm_{p}")), leak(format!("szm_{v}")), Same));
    }
    for (p, v) in [
        ("DependenceEntropy", "dc_entr"),
        ("DependenceNonUniformity", "dcnu"),
        ("DependenceNonUniformityNormalized", "dcnu_norm"),
        ("DependenceVariance", "dc_var"),
        ("GrayLevelNonUniformity", "glnu"),
        ("GrayLevelVariance", "gl_var"),
        ("HighGrayLevelEmphasis", "hgce"),
        ("LargeDependenceEmphasis", "hde"),
        ("LargeDependenceHighGrayLevelEmphasis", "hdhge"),
        ("LargeDependenceLowGrayLevelEmphasis", "hdlge"),
        ("LowGrayLevelEmphasis", "lgce"),
        ("SmallDependenceEmphasis", "lde"),
        ("SmallDependenceHighGrayLevelEmphasis", "ldhge"),
        ("SmallDependenceLowGrayLevelEmphasis", "ldlge"),
    ] {
        m.push((leak(format!("gldm_{p}")), leak(format!("ngl_{v}")), Same));
    }
    for p in ["Busyness", "Coarseness", "Complexity", "Contrast", "Strength"] {
        m.push((leak(format!("ngtdm_{p}")), leak(format!("ngt_{}", p.to_lowercase())), Same));
    }
    m
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[derive(Clone, Copy)]
enum Conv {
    Same,
    /// pyradiomics' kurtosis is m4/m2²; IBSI's is that minus 3.
    Plus3,
    /// pyradiomics' axis lengths use the covariance over N, IBSI's over N − 1.
    Biased,
    /// Mesh volume and area and what derives from them: the triangulation of non-planar polygons and ambiguous
    /// faces differs from pyradiomics' lookup table (measured: at most 0.53 %, on brain2's area).
    Mesh,
}

#[test]
fn pyradiomics_cases_match() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("pyradiomics_reference.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in ["brain1", "brain2", "breast1", "breast1_bincount16", "brain1_slice"] {
        let c = &reference[case];
        let image = vesalius_io::load(root().join(c["image"].as_str().unwrap())).unwrap();
        let mask = vesalius_io::load(root().join(c["mask"].as_str().unwrap())).unwrap();
        let settings = match c["settings"]["binCount"].as_u64() {
            Some(n) => Settings { bin_count: Some(n as usize), ..Settings::default() },
            None => Settings { bin_width: Some(25.0), bin_origin: BinOrigin::Zero, ..Settings::default() },
        };
        let ours = extract(&image, &mask, 1.0, &settings).unwrap();
        let n = mask.data().iter().filter(|&&v| v == 1.0).count() as f64;
        for (py, name, conv) in mapping() {
            let Some(want) = c["features"][py].as_f64() else { continue };
            let want = match conv {
                Conv::Same | Conv::Mesh => want,
                Conv::Plus3 => want - 3.0,
                Conv::Biased => want * (n / (n - 1.0)).sqrt(),
            };
            let got = ours.get(name);
            compared += 1;
            let tol = if matches!(conv, Conv::Mesh) { 6e-3 * want.abs() } else { 1e-6 * want.abs().max(1.0) };
            match got {
                Some(g) if (g - want).abs() <= tol => {}
                _ => failures.push(format!("{case} {py} ({name}): ours {got:?}, pyradiomics {want}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {compared} differ:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(compared, 503);
}
