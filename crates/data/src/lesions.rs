//! Lesion insertion: ellipsoids (ellipses in 2D) with partial volume at their edges, their intensity set from the
//! host tissue around them and their noise from the host's noise, placed at random in an allowed region — a
//! generator of detection training and test data with a known answer.
//!
//! A lesion of equivalent diameter `d` and elongation `e` has semi-axes `r·e^(2/3), r·e^(-1/3), r·e^(-1/3)`
//! (`r = d/2`; the same volume as the sphere of diameter `d`) along a random orientation. Its mean intensity is
//! `μ + c·σ`, where `μ` and `σ` are the mean and standard deviation of the allowed host voxels within `2r` of the
//! centre and `c` is drawn from the contrast range; inside it, Gaussian noise of the host's noise level (Immerkær's
//! estimate) is added. Each voxel takes `(1 − f)·host + f·lesion`, where `f` is the share of 4³ (4² in 2D) sub-voxel
//! points inside the ellipsoid: edges have partial volume as scanned lesions do. Lesions do not overlap, keep their
//! whole extent inside the image and have their centre in the region.
//!
//! ```
//! use vesalius_data::lesions::{insert_lesions, LesionSpec};
//! use vesalius_data::{Image, IDENTITY};
//! let host = Image::new(vec![100.0; 64 * 64 * 32], vec![64, 64, 32], 1, IDENTITY, "float32").unwrap();
//! let spec = LesionSpec { count: 3, diameter_mm: [8.0, 12.0], contrast: [50.0, 50.0], elongation: 1.0 };
//! let region = vec![true; host.voxels()];
//! let (out, lesions) = insert_lesions(&host, Some(&region), &spec, 7).unwrap();
//! assert_eq!(lesions.len(), 3);
//! assert!(lesions.iter().all(|l| (8.0..=12.0).contains(&l.diameter_mm)));
//! // A flat host has σ = 0 and no noise, so each lesion is the host's mean: the image is unchanged.
//! assert!(out.data().iter().all(|&v| (v - 100.0).abs() < 1e-3));
//! ```
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{DataError, Image, Result};

/// What to insert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LesionSpec {
    /// Number of lesions.
    pub count: usize,
    /// Equivalent-sphere diameter range, millimetres.
    pub diameter_mm: [f64; 2],
    /// Contrast range in units of the host's local standard deviation.
    pub contrast: [f64; 2],
    /// Largest ratio of longest to shortest axis (1: spheres).
    pub elongation: f64,
}

/// One inserted lesion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lesion {
    /// Centre, voxel index (fractional).
    pub centre: [f64; 3],
    /// Equivalent-sphere (circle in 2D) diameter, millimetres.
    pub diameter_mm: f64,
    /// Semi-axes, millimetres.
    pub semi_axes_mm: [f64; 3],
    /// Mean intensity given to the lesion.
    pub intensity: f64,
    /// The host's local mean and standard deviation it was set from.
    pub host: [f64; 2],
}

/// Inserts `spec.count` lesions into channel 0 of `img` where `region` (one flag per voxel; default: voxels above the
/// image's median) allows their centre. Errors when the region is the wrong size or cannot take them.
pub fn insert_lesions(img: &Image, region: Option<&[bool]>, spec: &LesionSpec, seed: u64) -> Result<(Image, Vec<Lesion>)> {
    let (out, lesions, _) = insert_lesions_with_fractions(img, region, spec, seed)?;
    Ok((out, lesions))
}

/// Where each lesion lies: its voxels with the share of each inside it (partial volume), in voxel order.
pub type Fractions = Vec<(usize, f32)>;

/// [`insert_lesions`], also returning each lesion's [`Fractions`].
pub fn insert_lesions_with_fractions(
    img: &Image,
    region: Option<&[bool]>,
    spec: &LesionSpec,
    seed: u64,
) -> Result<(Image, Vec<Lesion>, Vec<Fractions>)> {
    let nd = img.ndim();
    if nd < 2 {
        return Err(DataError::Invalid("lesions go into 2D or 3D images".into()));
    }
    let n = img.voxels();
    if region.is_some_and(|r| r.len() != n) {
        return Err(DataError::Invalid(format!("the lesion region has {} voxels, the image {n}", region.map_or(0, <[bool]>::len))));
    }
    let finite = spec.diameter_mm.iter().chain(&spec.contrast).all(|v| v.is_finite()) && spec.elongation.is_finite();
    if !(finite
        && spec.diameter_mm[0] > 0.0
        && spec.diameter_mm[0] <= spec.diameter_mm[1]
        && spec.contrast[0] <= spec.contrast[1]
        && spec.elongation >= 1.0)
    {
        return Err(DataError::Invalid("lesions need finite 0 < diameter low ≤ high, contrast low ≤ high and elongation ≥ 1".into()));
    }
    let s = img.shape();
    let shape = [s[0], s[1], if nd == 3 { s[2] } else { 1 }];
    let sp = img.spacing();
    let spacing = [sp[0], sp[1], if nd == 3 { sp[2] } else { 1.0 }];
    let mut data = img.data().to_vec();
    let host = &img.data()[..n];
    let median = {
        let mut v: Vec<f32> = host.to_vec();
        let k = v.len() / 2;
        *v.select_nth_unstable_by(k, f32::total_cmp).1
    };
    let allowed = |v: usize| region.map_or(host[v] > median, |r| r[v]);
    let candidates: Vec<usize> = (0..n).filter(|&v| allowed(v)).collect();
    if candidates.is_empty() {
        return Err(DataError::Invalid("the lesion region is empty".into()));
    }
    let noise = crate::harmonise::estimate_noise(img);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut lesions: Vec<Lesion> = Vec::new();
    let mut fractions: Vec<Fractions> = Vec::new();
    let mut tries = 0;
    while lesions.len() < spec.count {
        tries += 1;
        if tries > 200 * spec.count.max(1) {
            return Err(DataError::Invalid(format!("only {} of {} lesions fit in the region", lesions.len(), spec.count)));
        }
        let d = rng.random_range(spec.diameter_mm[0]..=spec.diameter_mm[1]);
        let e = if spec.elongation > 1.0 { rng.random_range(1.0..=spec.elongation) } else { 1.0 };
        let r = d / 2.0;
        let semi = if nd == 3 {
            [r * e.powf(2.0 / 3.0), r * e.powf(-1.0 / 3.0), r * e.powf(-1.0 / 3.0)]
        } else {
            [r * e.sqrt(), r / e.sqrt(), 0.0]
        };
        let rot = rotation(&mut rng, nd);
        let v = candidates[rng.random_range(0..candidates.len())];
        let c = [v % shape[0], v / shape[0] % shape[1], v / (shape[0] * shape[1])].map(|x| x as f64);
        let reach = semi[0];
        // The whole lesion inside the image, and clear of the others.
        let inside = (0..nd).all(|a| c[a] - reach / spacing[a] >= 0.0 && c[a] + reach / spacing[a] <= (shape[a] - 1) as f64);
        let clear = lesions.iter().all(|l| {
            let dist2: f64 = (0..nd).map(|a| ((l.centre[a] - c[a]) * spacing[a]).powi(2)).sum();
            dist2.sqrt() > l.semi_axes_mm[0] + reach + 1.0
        });
        if !inside || !clear {
            continue;
        }
        // Host statistics within 2r.
        let (lo, hi) = bounds(c, 2.0 * r, spacing, shape, nd);
        let (mut sum, mut sum2, mut cnt) = (0.0f64, 0.0f64, 0usize);
        for_box(lo, hi, shape, |idx, lin| {
            let dist2: f64 = (0..nd).map(|a| ((idx[a] as f64 - c[a]) * spacing[a]).powi(2)).sum();
            if dist2 <= 4.0 * r * r && allowed(lin) {
                let x = host[lin] as f64;
                sum += x;
                sum2 += x * x;
                cnt += 1;
            }
        });
        if cnt == 0 {
            continue;
        }
        let mu = sum / cnt as f64;
        let sd = (sum2 / cnt as f64 - mu * mu).max(0.0).sqrt();
        let contrast = rng.random_range(spec.contrast[0]..=spec.contrast[1]);
        let intensity = mu + contrast * sd;
        // Partial-volume fill.
        let (lo, hi) = bounds(c, reach + 1.0 * spacing.iter().take(nd).cloned().fold(0.0, f64::max), spacing, shape, nd);
        let sub = 4usize;
        let subs: Vec<f64> = (0..sub).map(|k| (k as f64 + 0.5) / sub as f64 - 0.5).collect();
        let per = if nd == 3 { sub * sub * sub } else { sub * sub };
        let mut mine: Fractions = Vec::new();
        for_box(lo, hi, shape, |idx, lin| {
            let mut inside = 0usize;
            for (kz, dz) in subs.iter().enumerate() {
                if nd == 2 && kz > 0 {
                    break;
                }
                for dy in &subs {
                    for dx in &subs {
                        let off = [dx, dy, if nd == 3 { dz } else { &0.0 }];
                        let p: [f64; 3] = std::array::from_fn(|a| (idx[a] as f64 + off[a] - c[a]) * spacing[a]);
                        // Coordinates along the lesion's axes.
                        let mut q = 0.0;
                        for (k, axis) in rot.iter().enumerate().take(nd) {
                            let t = axis[0] * p[0] + axis[1] * p[1] + axis[2] * p[2];
                            q += (t / semi[k]).powi(2);
                        }
                        if q <= 1.0 {
                            inside += 1;
                        }
                    }
                }
            }
            if inside > 0 {
                let f = inside as f64 / per as f64;
                mine.push((lin, f as f32));
                let z: f64 = StandardNormal.sample(&mut rng);
                let lesion_value = intensity + noise * z;
                data[lin] = ((1.0 - f) * data[lin] as f64 + f * lesion_value) as f32;
            }
        });
        lesions.push(Lesion { centre: c, diameter_mm: d, semi_axes_mm: semi, intensity, host: [mu, sd] });
        fractions.push(mine);
    }
    Ok((Image::new(data, img.shape().to_vec(), img.channels(), *img.affine(), "float32")?, lesions, fractions))
}

/// A dynamic series of `frames` frames (one channel per frame) made from `img`: `spec.count` lesions whose
/// intensity rises linearly over the series (wash-in, the findings) and `distractors` lesions placed the same way
/// whose intensity falls (wash-out), each to the contrast [`insert_lesions`] would give it; every frame has fresh
/// noise at the host's noise level. The mean over frames of the two kinds is the same, so only the time course
/// tells them apart. Returns the series, the wash-in lesions and the wash-out ones.
pub fn dynamic_series(
    img: &Image,
    region: Option<&[bool]>,
    spec: &LesionSpec,
    distractors: usize,
    frames: usize,
    seed: u64,
) -> Result<(Image, Vec<Lesion>, Vec<Lesion>)> {
    if !(2..=64).contains(&frames) {
        return Err(DataError::Invalid(format!("a dynamic series has 2 to 64 frames, not {frames}")));
    }
    let all = LesionSpec { count: spec.count + distractors, ..spec.clone() };
    let (_, lesions, fractions) = insert_lesions_with_fractions(img, region, &all, seed)?;
    let n = img.voxels();
    let host = &img.data()[..n];
    let noise = crate::harmonise::estimate_noise(img);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xd1a_0000_0000);
    let mut data = Vec::with_capacity(n * frames);
    for t in 0..frames {
        let rise = t as f64 / (frames - 1) as f64;
        let mut frame: Vec<f32> = host
            .iter()
            .map(|&h| {
                let z: f64 = StandardNormal.sample(&mut rng);
                (h as f64 + noise * z) as f32
            })
            .collect();
        for (k, (l, fr)) in lesions.iter().zip(&fractions).enumerate() {
            let amplitude = l.intensity - l.host[0];
            let course = if k < spec.count { rise } else { 1.0 - rise };
            for &(v, f) in fr {
                frame[v] += (f as f64 * amplitude * course) as f32;
            }
        }
        data.extend(frame);
    }
    let mut lesions = lesions;
    let wash_out = lesions.split_off(spec.count);
    Ok((Image::new(data, img.shape().to_vec(), frames, *img.affine(), "float32")?, lesions, wash_out))
}

/// A random orthonormal frame: rows are the lesion's axes (a uniform random rotation from a normalised
/// quaternion in 3D, a random angle in the plane in 2D).
fn rotation(rng: &mut ChaCha8Rng, nd: usize) -> [[f64; 3]; 3] {
    if nd == 2 {
        let t: f64 = rng.random_range(0.0..std::f64::consts::PI);
        return [[t.cos(), t.sin(), 0.0], [-t.sin(), t.cos(), 0.0], [0.0, 0.0, 1.0]];
    }
    let mut q: [f64; 4] = std::array::from_fn(|_| StandardNormal.sample(rng));
    let norm = q.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    q.iter_mut().for_each(|v| *v /= norm);
    let [w, x, y, z] = q;
    [
        [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
        [2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)],
        [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)],
    ]
}

fn bounds(c: [f64; 3], reach_mm: f64, spacing: [f64; 3], shape: [usize; 3], nd: usize) -> ([usize; 3], [usize; 3]) {
    let mut lo = [0usize; 3];
    let mut hi = [0usize; 3];
    for a in 0..nd {
        let r = reach_mm / spacing[a];
        lo[a] = (c[a] - r).floor().max(0.0) as usize;
        hi[a] = ((c[a] + r).ceil() as usize).min(shape[a] - 1);
    }
    (lo, hi)
}

fn for_box(lo: [usize; 3], hi: [usize; 3], shape: [usize; 3], mut f: impl FnMut([usize; 3], usize)) {
    for z in lo[2]..=hi[2] {
        for y in lo[1]..=hi[1] {
            for x in lo[0]..=hi[0] {
                f([x, y, z], x + shape[0] * (y + shape[1] * z));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy_host(seed: u64) -> Image {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = 48 * 48 * 24;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                100.0 + 10.0 * z as f32
            })
            .collect();
        let a = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        Image::new(v, vec![48, 48, 24], 1, a, "float32").unwrap()
    }

    #[test]
    fn lesions_have_the_drawn_size_contrast_and_host_noise() {
        let host = noisy_host(1);
        let spec = LesionSpec { count: 4, diameter_mm: [10.0, 14.0], contrast: [3.0, 3.0], elongation: 1.0 };
        let region = vec![true; host.voxels()];
        let (out, lesions) = insert_lesions(&host, Some(&region), &spec, 5).unwrap();
        assert_eq!(lesions.len(), 4);
        for l in &lesions {
            assert!((10.0..=14.0).contains(&l.diameter_mm));
            // The host's local σ is its noise, about 10; the lesion sits 3σ above the local mean.
            assert!((l.host[1] - 10.0).abs() < 1.5, "{:?}", l.host);
            assert!((l.intensity - l.host[0] - 3.0 * l.host[1]).abs() < 1e-9);
            // Voxels well inside: mean near the lesion intensity, spread near the host noise.
            let r_in = l.diameter_mm / 2.0 - 2.0;
            let mut vals = Vec::new();
            for z in 0..24 {
                for y in 0..48 {
                    for x in 0..48 {
                        let d2 =
                            (x as f64 - l.centre[0]).powi(2) + (y as f64 - l.centre[1]).powi(2) + ((z as f64 - l.centre[2]) * 2.0).powi(2);
                        if d2 < r_in * r_in {
                            vals.push(out.data()[x + 48 * (y + 48 * z)] as f64);
                        }
                    }
                }
            }
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let sd = (vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
            assert!((m - l.intensity).abs() < 3.0, "mean {m} vs {}", l.intensity);
            assert!((sd - 10.0).abs() < 3.0, "sd {sd}");
        }
        // Non-overlapping.
        for i in 0..4 {
            for j in 0..i {
                let d: f64 = (0..3)
                    .map(|a| ((lesions[i].centre[a] - lesions[j].centre[a]) * if a == 2 { 2.0 } else { 1.0 }).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(d > (lesions[i].diameter_mm + lesions[j].diameter_mm) / 2.0);
            }
        }
        // Seeded.
        assert_eq!(insert_lesions(&host, Some(&region), &spec, 5).unwrap().1, lesions);
    }

    #[test]
    fn dynamic_series_tells_the_kinds_apart_only_over_time() {
        let n = 64 * 64;
        let v: Vec<f32> = (0..n).map(|i| 100.0 + (i % 64) as f32 * 0.5).collect();
        let host = Image::new(v, vec![64, 64], 1, crate::IDENTITY, "float32").unwrap();
        let spec = LesionSpec { count: 2, diameter_mm: [9.0, 9.0], contrast: [3.0, 3.0], elongation: 1.0 };
        let (series, wash_in, wash_out) = dynamic_series(&host, None, &spec, 2, 5, 11).unwrap();
        assert_eq!((series.channels(), wash_in.len(), wash_out.len()), (5, 2, 2));
        let at = |l: &Lesion, t: usize| series.channel(t)[l.centre[0] as usize + 64 * l.centre[1] as usize] as f64;
        for l in &wash_in {
            let amp = l.intensity - l.host[0];
            // First frame at the host, last at full contrast (the ramp host has no noise).
            assert!((at(l, 0) - host.data()[l.centre[0] as usize + 64 * l.centre[1] as usize] as f64).abs() < 1e-3);
            assert!((at(l, 4) - at(l, 0) - amp).abs() < 1e-3, "{} {}", at(l, 4) - at(l, 0), amp);
        }
        for l in &wash_out {
            assert!(at(l, 0) > at(l, 4));
        }
        // The mean over frames of either kind is half its amplitude above the host.
        for l in wash_in.iter().chain(&wash_out) {
            let mean = (0..5).map(|t| at(l, t)).sum::<f64>() / 5.0;
            let host_v = host.data()[l.centre[0] as usize + 64 * l.centre[1] as usize] as f64;
            assert!((mean - host_v - 0.5 * (l.intensity - l.host[0])).abs() < 1e-3);
        }
    }

    #[test]
    fn partial_volume_at_the_edge_and_regions_respected() {
        // A noise-free ramp: the Immerkær noise is 0, so the lesion is flat at its drawn intensity and its rim mixes
        // lesion and host.
        let n = 40 * 40;
        let v: Vec<f32> = (0..n).map(|i| (i % 40) as f32).collect();
        let host = Image::new(v, vec![40, 40], 1, crate::IDENTITY, "float32").unwrap();
        let region: Vec<bool> = (0..n).map(|i| i % 40 < 20).collect();
        let spec = LesionSpec { count: 1, diameter_mm: [11.0, 11.0], contrast: [5.0, 5.0], elongation: 1.0 };
        let (out, l) = insert_lesions(&host, Some(&region), &spec, 3).unwrap();
        let l = &l[0];
        assert!(l.centre[0] < 20.0);
        let (mut interior, mut rim) = (0, 0);
        for i in 0..n {
            let (x, y) = ((i % 40) as f64, (i / 40) as f64);
            let d = ((x - l.centre[0]).powi(2) + (y - l.centre[1]).powi(2)).sqrt();
            let (o, h) = (out.data()[i] as f64, host.data()[i] as f64);
            if d < 5.5 - 1.0 {
                assert!((o - l.intensity).abs() < 1e-3, "interior {o} vs {}", l.intensity);
                interior += 1;
            } else if d > 5.5 + 1.0 {
                assert_eq!(o, h);
            } else if (o - h).abs() > 1e-3 && (o - l.intensity).abs() > 1e-3 {
                rim += 1;
            }
        }
        assert!(interior > 40 && rim > 10, "{interior} {rim}");
        assert!(insert_lesions(&host, Some(&region[..10]), &spec, 3).is_err());
        let reversed = LesionSpec { contrast: [2.0, 1.0], ..spec.clone() };
        assert!(insert_lesions(&host, Some(&region), &reversed, 3).unwrap_err().to_string().contains("contrast"));
        let big = LesionSpec { count: 1, diameter_mm: [60.0, 60.0], contrast: [1.0, 1.0], elongation: 1.0 };
        assert!(insert_lesions(&host, Some(&region), &big, 3).unwrap_err().to_string().contains("fit"));
    }
}
