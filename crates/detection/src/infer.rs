//! Detection with a trained centre-point network: sliding-window inference over the whole scan (bounded memory,
//! Gaussian-weighted overlapping windows), heatmap peaks as marks, suppression of marks inside a stronger mark's
//! radius, and LUNA16's cap on marks per scan. Marks are in world LPS millimetres.
//!
//! ```
//! use vesalius_detection::infer::peaks;
//! // Two peaks on a 5×3 map; the plateau at 0.6 gives one mark, not two.
//! let p = [0.1, 0.9, 0.1, 0.6, 0.6, 0.1, 0.2, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0f32];
//! let found = peaks(&p, [5, 3, 1], 0.3);
//! assert_eq!(found, vec![(1, 0.9), (3, 0.6)]);
//! ```
use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use vesalius_io::Image;
use vesalius_train::sliding::SlidingWindow;

use crate::DetectError;
use crate::annotations::Detection;
use crate::data::Scan;
use crate::model::Detector;
use vesalius_nets::UNet;

/// Settings of [`detect`].
#[derive(Clone, Debug, PartialEq)]
pub struct DetectOptions {
    /// Window size (the training patch).
    pub roi: Vec<usize>,
    /// Peaks below this probability are not marks.
    pub min_probability: f64,
    /// Marks kept per scan, the most probable first (0: all).
    pub max_marks: usize,
    /// Smallest diameter (mm) of the suppression test: a mark inside half of the larger of this and a stronger
    /// mark's predicted diameter is a duplicate (the training findings' smallest diameter).
    pub min_diameter_mm: f64,
    /// For the scanned auto-encoder classifier: patch side, stride, and the diameter given to its marks.
    pub scanning: Option<Scanning>,
}

/// How the auto-encoder classifier is scanned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scanning {
    /// Patch side, pixels.
    pub patch: usize,
    /// Stride, pixels.
    pub stride: usize,
    /// Diameter of every mark (the training findings' median), millimetres.
    pub diameter_mm: f64,
}

/// Local maxima of `prob` (3×3 or 3×3×3 neighbourhood) at or above `min`: `(voxel, probability)` in voxel order. On a
/// plateau only the first voxel (in voxel order) counts.
pub fn peaks(prob: &[f32], shape: [usize; 3], min: f64) -> Vec<(usize, f32)> {
    let [nx, ny, nz] = shape;
    let mut out = Vec::new();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let lin = x + nx * (y + ny * z);
                let v = prob[lin];
                if (v as f64) < min {
                    continue;
                }
                let mut best = true;
                'n: for dz in -1i64..=1 {
                    for dy in -1i64..=1 {
                        for dx in -1i64..=1 {
                            if dx == 0 && dy == 0 && dz == 0 {
                                continue;
                            }
                            let (qx, qy, qz) = (x as i64 + dx, y as i64 + dy, z as i64 + dz);
                            if qx < 0 || qy < 0 || qz < 0 || qx >= nx as i64 || qy >= ny as i64 || qz >= nz as i64 {
                                continue;
                            }
                            let q = qx as usize + nx * (qy as usize + ny * qz as usize);
                            let u = prob[q];
                            // Strictly greater neighbours win; equal ones win when earlier in voxel order.
                            if u > v || (u == v && q < lin) {
                                best = false;
                                break 'n;
                            }
                        }
                    }
                }
                if best {
                    out.push((lin, v));
                }
            }
        }
    }
    out
}

/// Keeps marks (most probable first) whose centre is outside the radius of every kept mark of the same scan (its
/// diameter, at least `min_diameter_mm`), then the first `max` (0: all).
pub fn suppress(mut marks: Vec<Detection>, max: usize, min_diameter_mm: f64) -> Vec<Detection> {
    marks.sort_by(|a, b| b.probability.unwrap_or(0.0).total_cmp(&a.probability.unwrap_or(0.0)));
    let mut kept: Vec<Detection> = Vec::new();
    for m in marks {
        let inside = kept.iter().any(|k| {
            let r = k.diameter_mm.max(min_diameter_mm).max(0.0) / 2.0;
            k.scan == m.scan && (0..3).map(|a| (k.centre[a] - m.centre[a]).powi(2)).sum::<f64>() < r * r
        });
        if !inside {
            kept.push(m);
        }
        if max > 0 && kept.len() == max {
            break;
        }
    }
    kept
}

/// The heatmap probability and the log-diameter of every voxel of `scan` by sliding-window inference with a
/// centre-point or frame-recurrent network.
pub fn maps<B: Backend>(net: &Detector<B>, scan: &Scan, roi: &[usize], device: &B::Device) -> Result<(Vec<f32>, Vec<f32>), DetectError> {
    let nd = scan.ndim;
    // Pad up to the window where the scan is smaller.
    let padded: [usize; 3] = std::array::from_fn(|a| if a < nd { scan.shape[a].max(roi[a]) } else { 1 });
    let img = padded_image(scan, padded)?;
    let [sx, sy, sz] = scan.shape;
    let sw = SlidingWindow { roi: roi.to_vec(), overlap: 0.5, batch: 4, sigma_scale: 0.125, flip_tta: false, probabilities: true };
    let pred = sw
        .run::<B>(&img, device, |x: Tensor<B, 5>| {
            let out = match net {
                Detector::Centre(unet) => unet.forward(x),
                Detector::Crnn(frames) => frames.forward(x),
                Detector::Sae(_) | Detector::Retina(_) => x,
            };
            let [n, _, d, h, w] = out.dims();
            let heat = sigmoid(out.clone().slice([0..n, 0..1, 0..d, 0..h, 0..w]) + crate::model::PRIOR_LOGIT);
            let size = out.slice([0..n, 1..2, 0..d, 0..h, 0..w]);
            Tensor::cat(vec![heat, size], 1)
        })
        .map_err(|e| DetectError::Internal(e.to_string()))?;
    let all = pred.probabilities.ok_or_else(|| DetectError::Internal("sliding window returned no maps".into()))?;
    let np = img.voxels();
    let mut prob = Vec::with_capacity(scan.data.len());
    let mut size = Vec::with_capacity(scan.data.len());
    for z in 0..sz {
        for y in 0..sy {
            let src = padded[0] * (y + padded[1] * z);
            prob.extend_from_slice(&all[src..src + sx]);
            size.extend_from_slice(&all[np + src..np + src + sx]);
        }
    }
    Ok((prob, size))
}

/// The marks of `net` on `scan` in world LPS millimetres, suppressed and capped: heatmap peaks with the predicted
/// diameter for the centre-point network, peaks of the scanning grid for the auto-encoder classifier.
pub fn detect<B: Backend>(
    net: &Detector<B>,
    scan: &Scan,
    options: &DetectOptions,
    device: &B::Device,
) -> Result<Vec<Detection>, DetectError> {
    match net {
        Detector::Centre(_) | Detector::Crnn(_) => {
            let (prob, size) = maps(net, scan, &options.roi, device)?;
            Ok(marks_from_maps(scan, &prob, &size, options))
        }
        Detector::Retina(unet) => retina_detect(unet, scan, options, device),
        Detector::Sae(sae) => {
            let sc = options.scanning.ok_or_else(|| DetectError::Internal("scanning settings missing".into()))?;
            if scan.ndim != 2 {
                return Err(DetectError::Input(format!("{}: the auto-encoder detector scans 2D images", scan.id)));
            }
            Ok(crate::sae::detect(sae, scan, &sc, options, device))
        }
    }
}

/// Marks from a scan's heatmap and log-diameter maps.
pub fn marks_from_maps(scan: &Scan, prob: &[f32], size: &[f32], options: &DetectOptions) -> Vec<Detection> {
    let [nx, ny, _] = scan.shape;
    let marks = peaks(prob, scan.shape, options.min_probability)
        .into_iter()
        .map(|(lin, p)| {
            let idx = [(lin % nx) as f64, (lin / nx % ny) as f64, (lin / (nx * ny)) as f64];
            let centre = scan.geometry.to_world(idx);
            let d = (size[lin].clamp(-3.0, 8.0) as f64).exp();
            Detection::mark(&scan.id, centre, d, p as f64)
        })
        .collect();
    suppress(marks, options.max_marks, options.min_diameter_mm)
}

/// A scan made from a new image for prediction: normalised as the recipe says, with no findings. The id is the file
/// name without its image extension.
pub fn scan_of_file(path: &std::path::Path, recipe: &crate::recipe::DetRecipe) -> Result<Scan, DetectError> {
    let img = vesalius_io::load(path).map_err(|e| DetectError::Input(format!("{}: {e}", path.display())))?;
    let channels = match (&recipe.dynamic, recipe.model.arch) {
        (Some(d), crate::recipe::Arch::Crnn) => d.frames,
        _ => 1,
    };
    if img.channels() != channels || img.ndim() != recipe.dims() {
        return Err(DetectError::Input(format!(
            "{}: the detector takes {}D images with {channels} channel(s) (this one: {} channel(s), {}D)",
            path.display(),
            recipe.dims(),
            img.channels(),
            img.ndim()
        )));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let id = [".nii.gz", ".nii", ".mha", ".mhd", ".png", ".tif", ".tiff", ".jpg", ".dcm"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(&name)
        .to_string();
    let s = img.shape();
    Ok(Scan {
        id,
        data: crate::data::normalise(&recipe.data.intensity, img.data()),
        channels: img.channels(),
        shape: [s[0], s[1], s.get(2).copied().unwrap_or(1)],
        ndim: img.ndim(),
        geometry: crate::geometry::Geometry::of(&img)?,
        findings: Vec::new(),
    })
}

/// The scan as an image zero-padded (after its end along each axis) to `padded`, every channel.
fn padded_image(scan: &Scan, padded: [usize; 3]) -> Result<Image, DetectError> {
    let np_: usize = padded.iter().product();
    let mut data = vec![0f32; np_ * scan.channels];
    let [sx, sy, sz] = scan.shape;
    let n = scan.voxels();
    for c in 0..scan.channels {
        for z in 0..sz {
            for y in 0..sy {
                let dst = c * np_ + padded[0] * (y + padded[1] * z);
                let src = c * n + sx * (y + sy * z);
                data[dst..dst + sx].copy_from_slice(&scan.data[src..src + sx]);
            }
        }
    }
    Ok(Image::new(data, padded[..scan.ndim].to_vec(), scan.channels, *scan.geometry.affine(), "float32")?)
}

/// The box marks of a Retina U-Net on a scan, window by window as nnDetection does: the scan is padded so windows
/// (half-overlapping) start on multiples of every stride, each window's heads are decoded to boxes in scan voxels
/// and kept where centred in the window's middle half, and only the best candidates are kept between windows, so memory is one window's outputs and a bounded list of
/// boxes whatever the scan's size; then the 1000 best, non-maximum suppression at IoU 0.3 (which also merges the
/// same box seen by overlapping windows), the cap.
pub fn retina_detect<B: Backend>(
    net: &UNet<B>,
    scan: &Scan,
    options: &DetectOptions,
    device: &B::Device,
) -> Result<Vec<Detection>, DetectError> {
    let nd = scan.ndim;
    let roi = &options.roi;
    let strides = crate::model::retina_strides(net.levels());
    let padded: [usize; 3] =
        std::array::from_fn(|a| if a < nd { scan.shape[a].max(roi[a]).next_multiple_of((roi[a] / 2).max(1)) } else { 1 });
    let np_: usize = padded.iter().product();
    let img = padded_image(scan, padded)?;
    let win: [usize; 3] = std::array::from_fn(|a| if a < nd { roi[a] } else { 1 });
    let starts = vesalius_data::patch::grid_starts(&padded[..nd], &roi[..nd], 0.5).map_err(|e| DetectError::Internal(e.to_string()))?;
    let channels = scan.channels;
    let mut candidates: Vec<(f64, vesalius_eval::detection::Aabb)> = Vec::new();
    let keep_best = |c: &mut Vec<(f64, vesalius_eval::detection::Aabb)>| {
        c.sort_by(|a, b| b.0.total_cmp(&a.0));
        c.truncate(1000);
    };
    for st in starts {
        let start: [usize; 3] = std::array::from_fn(|a| if a < nd { st[a] } else { 0 });
        let mut v = Vec::with_capacity(win.iter().product::<usize>() * channels);
        for c in 0..channels {
            for z in 0..win[2] {
                for y in 0..win[1] {
                    let row = c * np_ + start[0] + padded[0] * ((y + start[1]) + padded[1] * (z + start[2]));
                    v.extend_from_slice(&img.data()[row..row + win[0]]);
                }
            }
        }
        let x = Tensor::<B, 5>::from_data(burn::tensor::TensorData::new(v, [1, channels, win[2], win[1], win[0]]), device);
        let (last, aux) = net.forward_all(x);
        for (out, &s) in aux.into_iter().chain(std::iter::once(last)).zip(&strides) {
            let [_, _, d, h, w] = out.dims();
            let values: Vec<f32> = out.into_data().convert::<f32>().to_vec().unwrap_or_default();
            let level = crate::retina::Level { stride: s, grid: [w, h, d] };
            for dec in crate::retina::decode(&values, &level, nd, options.min_probability) {
                let shift = |p: [f64; 3]| std::array::from_fn(|a| p[a] + start[a] as f64);
                let bbox = vesalius_eval::detection::Aabb { lo: shift(dec.bbox.lo), hi: shift(dec.bbox.hi) };
                let c = bbox.centre();
                // Each window keeps the boxes centred in its middle half (to the border where it touches one): with
                // half-overlapping windows the middle halves tile the scan, and no box is judged at a window's edge.
                let middle = (0..nd).all(|a| {
                    let (lo, hi) = (start[a] as f64 + win[a] as f64 / 4.0, start[a] as f64 + 3.0 * win[a] as f64 / 4.0);
                    let lo = if start[a] == 0 { f64::NEG_INFINITY } else { lo - 0.5 };
                    let hi = if start[a] + win[a] >= padded[a] { f64::INFINITY } else { hi - 0.5 };
                    c[a] >= lo && c[a] < hi
                });
                if middle && (0..nd).all(|a| c[a] >= -0.5 && c[a] < scan.shape[a] as f64 - 0.5) {
                    candidates.push((dec.score, bbox));
                }
            }
        }
        if candidates.len() > 4000 {
            keep_best(&mut candidates);
        }
    }
    keep_best(&mut candidates);
    let found: Vec<Detection> = candidates
        .into_iter()
        .map(|(score, b)| {
            let lo: [f64; 3] = std::array::from_fn(|a| if a < nd { b.lo[a] + 0.5 } else { 0.0 });
            let hi: [f64; 3] = std::array::from_fn(|a| if a < nd { b.hi[a] - 0.5 } else { 0.0 });
            Detection::from_box(&scan.id, scan.geometry.voxel_box_to_world(lo, hi), Some(score), nd)
        })
        .collect();
    let mut kept = crate::nms::nms_boxes(found, 0.3);
    if options.max_marks > 0 {
        kept.truncate(options.max_marks);
    }
    Ok(kept)
}
