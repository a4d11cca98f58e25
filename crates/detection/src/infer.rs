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

/// Nearest-neighbour up-sampling of `[n, c, d, h, w]` by `s` along the spatial axes (`d` too in 3D).
fn upsample<B: Backend>(x: Tensor<B, 5>, s: usize, nd: usize) -> Tensor<B, 5> {
    if s == 1 {
        return x;
    }
    let [n, c, d, h, w] = x.dims();
    let sd = if nd == 3 { s } else { 1 };
    x.reshape([n, c, d, 1, h, 1, w, 1]).repeat_dim(3, sd).repeat_dim(5, s).repeat_dim(7, s).reshape([n, c, d * sd, h * s, w * s])
}

/// The box marks of a Retina U-Net on a scan: every level's heads by sliding windows (the scan padded so windows
/// and cells align), anchors decoded to boxes, the 1000 best kept, non-maximum suppression at IoU 0.3, the cap.
pub fn retina_detect<B: Backend>(
    net: &UNet<B>,
    scan: &Scan,
    options: &DetectOptions,
    device: &B::Device,
) -> Result<Vec<Detection>, DetectError> {
    let nd = scan.ndim;
    let roi = &options.roi;
    let strides = crate::model::retina_strides(net.levels());
    let per = crate::retina::head_channels(nd);
    // Pad to the window and to a multiple of half a window, so every window starts on a multiple of every stride.
    let padded: [usize; 3] =
        std::array::from_fn(|a| if a < nd { scan.shape[a].max(roi[a]).next_multiple_of((roi[a] / 2).max(1)) } else { 1 });
    let np_: usize = padded.iter().product();
    let img = padded_image(scan, padded)?;
    let sw = SlidingWindow { roi: roi.clone(), overlap: 0.5, batch: 2, sigma_scale: 0.0, flip_tta: false, probabilities: true };
    let pred = sw
        .run::<B>(&img, device, |x: Tensor<B, 5>| {
            let (last, aux) = net.forward_all(x);
            let mut outs: Vec<Tensor<B, 5>> = aux.into_iter().zip(&strides).map(|(a, &s)| upsample(a, s, nd)).collect();
            outs.push(last);
            Tensor::cat(outs, 1)
        })
        .map_err(|e| DetectError::Internal(e.to_string()))?;
    let all = pred.probabilities.ok_or_else(|| DetectError::Internal("sliding window returned no maps".into()))?;
    let mut found = Vec::new();
    for (l, &s) in strides.iter().enumerate() {
        let grid: [usize; 3] = std::array::from_fn(|a| if a < nd { padded[a] / s } else { 1 });
        let cells: usize = grid.iter().product();
        let mut out = vec![0f32; per * cells];
        for ch in 0..per {
            let base = (l * per + ch) * np_;
            for z in 0..grid[2] {
                for y in 0..grid[1] {
                    for x in 0..grid[0] {
                        let (vx, vy, vz) = (x * s, y * s, if nd == 3 { z * s } else { 0 });
                        out[ch * cells + x + grid[0] * (y + grid[1] * z)] = all[base + vx + padded[0] * (vy + padded[1] * vz)];
                    }
                }
            }
        }
        let level = crate::retina::Level { stride: s, grid };
        for d in crate::retina::decode(&out, &level, nd, options.min_probability) {
            let c = d.bbox.centre();
            if (0..nd).any(|a| c[a] < -0.5 || c[a] >= scan.shape[a] as f64 - 0.5) {
                continue;
            }
            let lo: [f64; 3] = std::array::from_fn(|a| if a < nd { d.bbox.lo[a] + 0.5 } else { 0.0 });
            let hi: [f64; 3] = std::array::from_fn(|a| if a < nd { d.bbox.hi[a] - 0.5 } else { 0.0 });
            let world = scan.geometry.voxel_box_to_world(lo, hi);
            found.push(Detection::from_box(&scan.id, world, Some(d.score), nd));
        }
    }
    // RetinaNet's pre-suppression cut: the 1000 best anchors.
    found.sort_by(|a, b| b.probability.unwrap_or(0.0).total_cmp(&a.probability.unwrap_or(0.0)));
    found.truncate(1000);
    let mut kept = crate::nms::nms_boxes(found, 0.3);
    if options.max_marks > 0 {
        kept.truncate(options.max_marks);
    }
    Ok(kept)
}
