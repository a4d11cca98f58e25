//! `vesalius explain`: explanation maps of a classification run's decisions, as NIfTI maps and PNG overlays.
use std::path::{Path, PathBuf};

use vesalius_cadx::explain::{ExplainOptions, Explanation, Method, explain};
use vesalius_io::Image;

use crate::CliError;
use crate::backend::BackendKind;
use crate::with_backend;

/// An RGB overlay of `map` on the image's first channel: grey image, warm colours (red → yellow) where the map is
/// positive, blue where it is negative, each scaled by the largest absolute value.
pub fn overlay(img: &Image, map: &[f32]) -> Result<Image, CliError> {
    let n = img.voxels();
    let grey = img.channel(0);
    let (lo, hi) = grey.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let top = map.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let mut rgb = vec![0f32; 3 * n];
    for p in 0..n {
        let g = (grey[p] - lo) / span * 255.0;
        let v = map[p] / top;
        let (a, colour) = if v >= 0.0 { (v, [255.0, 255.0 * v, 0.0]) } else { (-v, [0.0, 96.0, 255.0]) };
        let a = 0.6 * a;
        for c in 0..3 {
            rgb[c * n + p] = ((1.0 - a) * g + a * colour[c]).round().clamp(0.0, 255.0);
        }
    }
    Image::new(rgb, img.shape().to_vec(), 3, *img.affine(), "uint8").map_err(|e| CliError::Internal(e.to_string()))
}

fn stem(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    for ext in [".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff"] {
        if let Some(s) = name.strip_suffix(ext) {
            return s.to_string();
        }
    }
    name
}

/// Runs the command for every image.
pub fn run(backend: BackendKind, run: &Path, images: &[PathBuf], method: &str, opts: &ExplainOptions, out: &Path) -> Result<(), CliError> {
    let method: Method = method.parse().map_err(CliError::Usage)?;
    if !vesalius_cadx::run::RunDir::new(run).file("run.json").is_file() || vesalius_cadx::tabular::is_run(run) {
        return Err(CliError::Usage(format!("{}: not an image classification run (explain needs one)", run.display())));
    }
    std::fs::create_dir_all(out).map_err(|e| CliError::Internal(format!("{}: {e}", out.display())))?;
    for image in images {
        let (e, img): (Explanation, Image) =
            with_backend!(backend, |B, AB, device| explain::<AB>(run, image, method, opts, &device).map_err(CliError::from))?;
        let name =
            format!("{}_{}", stem(image), serde_json::to_value(method).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default());
        let map =
            Image::new(e.map.clone(), img.shape().to_vec(), 1, *img.affine(), "float32").map_err(|e| CliError::Internal(e.to_string()))?;
        let nii = out.join(format!("{name}.nii.gz"));
        vesalius_io::nifti::save(&nii, &map, vesalius_io::nifti::NiftiType::F32)?;
        let png = out.join(format!("{name}.png"));
        vesalius_io::save_2d(&png, &overlay(&img, &e.map)?)?;
        let mut json = serde_json::to_value(&e).map_err(|e| CliError::Internal(e.to_string()))?;
        json["image"] = serde_json::Value::String(image.display().to_string());
        json["map"] = serde_json::Value::String(nii.display().to_string());
        json["overlay"] = serde_json::Value::String(png.display().to_string());
        println!("{json}");
    }
    Ok(())
}

/// `vesalius embed`: one CSV row of network features per image.
pub fn embed(backend: BackendKind, run: &Path, images: &[PathBuf], output: Option<&Path>) -> Result<(), CliError> {
    use vesalius_cadx::run::ClassificationRun;
    let dir = vesalius_cadx::run::RunDir::new(run);
    if !dir.file("run.json").is_file() || vesalius_cadx::tabular::is_run(run) {
        return Err(CliError::Usage(format!("{}: not an image classification run (embed needs one)", run.display())));
    }
    let info = dir.read_classifier_info()?;
    let files: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
    let rows = with_backend!(backend, |B, AB, device| {
        let model = dir.load_best::<B>(&info, &device)?;
        vesalius_cadx::infer::embed_files::<B>(&model, &info, &files, &device).map_err(CliError::from)
    })?;
    let k = rows.first().map_or(0, Vec::len);
    let mut text = String::from("path");
    for j in 0..k {
        text.push_str(&format!(",f{j}"));
    }
    text.push('\n');
    for (path, r) in images.iter().zip(&rows) {
        let p = path.display().to_string();
        text.push_str(&if p.contains([',', '"']) { format!("\"{}\"", p.replace('"', "\"\"")) } else { p });
        for v in r {
            text.push_str(&format!(",{v}"));
        }
        text.push('\n');
    }
    match output {
        Some(path) => vesalius_io::write_atomic(path, text.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?,
        None => print!("{text}"),
    }
    Ok(())
}

/// One axial slice (third axis) of channel 0 of a volume, as a 2D image.
fn axial(img: &Image, z: usize) -> Result<Image, CliError> {
    let (w, h) = (img.shape()[0], img.shape()[1]);
    let data = img.channel(0)[z * w * h..(z + 1) * w * h].to_vec();
    Image::new(data, vec![w, h], 1, *img.affine(), "float32").map_err(|e| CliError::Internal(e.to_string()))
}

/// `vesalius explain` for a segmentation run: the map on the image's grid, and an overlay of the axial slice where
/// the map is largest.
pub fn run_segmentation(
    backend: BackendKind,
    run: &Path,
    images: &[PathBuf],
    method: &str,
    opts: &ExplainOptions,
    mask: Option<&Path>,
    out: &Path,
) -> Result<(), CliError> {
    use vesalius_segmentation::explain::{SegExplainOptions, explain as seg_explain};
    let method: Method = method.parse().map_err(CliError::Usage)?;
    let sopts = SegExplainOptions { class: opts.class, samples: opts.samples, segments: opts.segments, seed: opts.seed };
    std::fs::create_dir_all(out).map_err(|e| CliError::Internal(format!("{}: {e}", out.display())))?;
    let dir = vesalius_segmentation::RunDir::new(run);
    for image in images {
        let (e, img) =
            with_backend!(backend, |B, AB, device| seg_explain::<AB>(&dir, image, mask, method, &sopts, &device).map_err(CliError::from))?;
        let map = e.map.clone().ok_or_else(|| CliError::Internal("no map".into()))?;
        let name =
            format!("{}_{}", stem(image), serde_json::to_value(method).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default());
        let nii = out.join(format!("{name}.nii.gz"));
        vesalius_io::nifti::save(&nii, &map, vesalius_io::nifti::NiftiType::F32)?;
        let png = out.join(format!("{name}.png"));
        let slices = map.shape().get(2).copied().unwrap_or(1);
        let plane = map.shape()[0] * map.shape().get(1).copied().unwrap_or(1);
        let z = (0..slices)
            .max_by(|&a, &b| {
                let s = |k: usize| map.data()[k * plane..(k + 1) * plane].iter().map(|v| v.abs()).sum::<f32>();
                s(a).total_cmp(&s(b))
            })
            .unwrap_or(0);
        let overlay_img =
            if img.ndim() == 3 { overlay(&axial(&img, z)?, &map.data()[z * plane..(z + 1) * plane])? } else { overlay(&img, map.data())? };
        vesalius_io::save_2d(&png, &overlay_img)?;
        let mut json = serde_json::to_value(&e).map_err(|e| CliError::Internal(e.to_string()))?;
        json["image"] = serde_json::Value::String(image.display().to_string());
        json["map"] = serde_json::Value::String(nii.display().to_string());
        json["overlay"] = serde_json::Value::String(png.display().to_string());
        json["overlay_slice"] = serde_json::Value::from(z);
        println!("{json}");
    }
    Ok(())
}

/// `vesalius explain` for a treatment-response run: `BEFORE AFTER --mask TUMOUR`; the maps of every tumour slice as one
/// NIfTI volume on the before scan's grid, and for each slice a PNG of the before crop, the after crop and the map
/// (red: towards growth, blue: towards shrinkage) and a JSON line.
pub fn run_response(
    backend: BackendKind,
    run: &Path,
    images: &[PathBuf],
    method: &str,
    opts: &ExplainOptions,
    mask: Option<&Path>,
    out: &Path,
) -> Result<(), CliError> {
    use vesalius_io::figure::{Colour, Panel, compose, robust_range};
    let method: Method = method.parse().map_err(CliError::Usage)?;
    let ([before, after], Some(mask)) = (images, mask) else {
        return Err(CliError::Usage("a response run explains the scan before and the scan after (two inputs) with --mask TUMOUR".into()));
    };
    if opts.class.is_some() {
        return Err(CliError::Usage("--class does not apply to response runs: the predicted change is explained".into()));
    }
    let settings = vesalius_nets::explain::Settings {
        layer: opts.layer,
        samples: opts.samples,
        patch: opts.patch,
        stride: opts.stride,
        segments: opts.segments,
        seed: opts.seed,
    };
    let found = with_backend!(backend, |B, AB, device| vesalius_prediction::response::explain::<AB>(
        run, before, after, mask, method, &settings, &device
    )
    .map_err(CliError::from))?;
    std::fs::create_dir_all(out).map_err(|e| CliError::Internal(format!("{}: {e}", out.display())))?;
    let tag = serde_json::to_value(method).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    // every slice's map on the before scan's grid
    let scan = vesalius_io::load(before)?;
    let (nx, ny) = (scan.shape()[0], scan.shape().get(1).copied().unwrap_or(1));
    let mut volume = vec![0f32; scan.voxels()];
    for e in &found {
        let z = e.crop.centre[2] as usize;
        if let Some(plane) = volume.get_mut(z * nx * ny..(z + 1) * nx * ny) {
            e.crop.paste(&e.map, plane, nx, ny);
        }
    }
    let nii = out.join(format!("{}_{tag}.nii.gz", stem(before)));
    let map = Image::new(volume, scan.shape().to_vec(), 1, *scan.affine(), "float32").map_err(|e| CliError::Internal(e.to_string()))?;
    vesalius_io::nifti::save(&nii, &map, vesalius_io::nifti::NiftiType::F32)?;
    for e in found {
        let s = e.side;
        let grey = |v: &[f32]| {
            let (lo, hi) = robust_range(v);
            Panel { data: v.to_vec(), w: s, h: s, colour: Colour::Grey { lo, hi } }
        };
        let span = e.map.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let panels =
            [grey(&e.before), grey(&e.after), Panel { data: e.map.clone(), w: s, h: s, colour: Colour::Diverging { centre: 0.0, span } }];
        let slice = e.slice.rsplit(':').next().unwrap_or("0").to_string();
        let png = out.join(format!("{}_slice{slice}_{tag}.png", stem(before)));
        vesalius_io::save_2d(&png, &compose(&panels, 4)?)?;
        let mut json = serde_json::to_value(&e).map_err(|e| CliError::Internal(e.to_string()))?;
        json["method"] = serde_json::Value::String(tag.clone());
        json["figure"] = serde_json::Value::String(png.display().to_string());
        json["map"] = serde_json::Value::String(nii.display().to_string());
        println!("{json}");
    }
    Ok(())
}
