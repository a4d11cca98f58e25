//! Degradation models: the seeded, reproducible corruptions that make training pairs and test inputs
//! (`vesalius degrade` runs the same code).
//!
//! * [`Degradation::LowDoseCt`] — quarter-dose CT as the AAPM/Mayo data were made: HU → linear attenuation
//!   `μ = μ_water·(1 + HU/1000)` with `μ_water =` [`MU_WATER`] mm⁻¹ (about 70 keV), a parallel-beam sinogram of
//!   each axial slice ([`radon`]), Poisson counts at `dose × photons` incident photons per ray
//!   (`photons` = [`FULL_DOSE_PHOTONS`] by default), the log-transformed noisy projections minus the noise-free
//!   ones filtered-back-projected ([`fbp`], Ram-Lak filter) and added to the image. The input is taken as the
//!   full-dose reference: its own noise is kept and the inserted noise equals that of a scan at
//!   `dose × photons` photons per ray, so the inserted noise variance scales as `1/dose`.
//! * [`Degradation::ThickSlice`] — each output voxel the mean of `factor` consecutive slices along `axis`, on
//!   the grid whose `factor`-blocks are those slices (the affine scales that axis by `factor` and moves the
//!   origin to the first block's centre); [`Degradation::Downsample`] does the same on the in-plane axes.
//! * [`Degradation::Kspace`] — Cartesian under-sampling: phase-encoding lines (along the second axis) kept with a
//!   fully sampled centre of `centre × h` lines and the rest drawn at random so that about `h / acceleration`
//!   lines are kept (fastMRI's random mask); the output is the zero-filled magnitude image and the mask.
//! * [`Degradation::Gaussian`] and [`Degradation::Rician`] — additive Gaussian noise and MR magnitude noise
//!   `|x + n₁ + i·n₂|`.
//!
//! ```
//! use vesalius_enhancement::degrade::Degradation;
//! use vesalius_io::{Image, IDENTITY};
//! let img = Image::new((0..64).map(|v| v as f32).collect(), vec![4, 4, 4], 1, IDENTITY, "float32").unwrap();
//! let thick = Degradation::ThickSlice { factor: 2, axis: 2 }.apply(&img, 0).unwrap().image;
//! assert_eq!(thick.shape(), &[4, 4, 2]);
//! assert_eq!(thick.get(&[0, 0, 0]), 8.0);                // mean of slices 0 and 1 at (0, 0)
//! assert_eq!(thick.affine()[2][2], 2.0);                 // the slice spacing doubles
//! assert_eq!(thick.affine()[2][3], 0.5);                 // the first voxel sits between the two slices
//! let noisy = Degradation::Gaussian { sigma: 1.0 }.apply(&img, 7).unwrap().image;
//! assert_eq!(noisy, Degradation::Gaussian { sigma: 1.0 }.apply(&img, 7).unwrap().image); // seeded
//! ```
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};
use rustfft::num_complex::Complex32;
use serde::{Deserialize, Serialize};
use vesalius_io::{Affine, Image};

use crate::EnhanceError;
use crate::fft::{circular_convolve, fft2, ifft2, spectrum};

/// Linear attenuation of water, mm⁻¹ (about 70 keV).
pub const MU_WATER: f64 = 0.0192;
/// Incident photons per ray of the full-dose scan the low-dose model scales.
pub const FULL_DOSE_PHOTONS: f64 = 1.0e5;
/// Most projection angles the low-dose model uses by default.
pub const MAX_DEFAULT_ANGLES: usize = 720;

/// A degradation model and its parameters (`model = "…"` in recipes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Degradation {
    /// Low-dose CT of a CT image in HU.
    LowDoseCt {
        /// Fraction of the full dose (0.25: quarter dose).
        dose: f64,
        /// Full-dose incident photons per ray.
        #[serde(default = "default_photons")]
        photons: f64,
        /// Projection angles over 180° (default: π/2 × detector bins, at most [`MAX_DEFAULT_ANGLES`]).
        #[serde(default)]
        angles: Option<usize>,
    },
    /// Thick slices: the mean of `factor` consecutive slices along `axis`.
    ThickSlice {
        /// Slices per output slice.
        factor: usize,
        /// Voxel axis.
        axis: usize,
    },
    /// In-plane block averaging by `factor` along the first two axes.
    Downsample {
        /// Pixels per output pixel along each in-plane axis.
        factor: usize,
    },
    /// Cartesian k-space under-sampling, zero-filled reconstruction.
    Kspace {
        /// Acceleration `R`: about `h / R` phase-encoding lines are kept.
        acceleration: f64,
        /// Fully sampled centre fraction of the lines.
        centre: f64,
    },
    /// Additive Gaussian noise of standard deviation `sigma` (image units).
    Gaussian {
        /// Standard deviation.
        sigma: f64,
    },
    /// Rician (MR magnitude) noise: Gaussian noise of `sigma` on the real and imaginary parts.
    Rician {
        /// Standard deviation of each part.
        sigma: f64,
    },
}

fn default_photons() -> f64 {
    FULL_DOSE_PHOTONS
}

/// A degraded image, with the sampling mask for k-space models.
#[derive(Clone, Debug, PartialEq)]
pub struct Degraded {
    /// The degraded image (on the input's grid, or the coarser grid of thick-slice and downsample models).
    pub image: Image,
    /// The k-space sampling mask (1 on kept phase-encoding lines), on the input's grid.
    pub mask: Option<Image>,
    /// The zero-filled complex image (two channels: real, imaginary) of k-space models — what reconstruction
    /// networks take.
    pub complex: Option<Image>,
}

fn bad(msg: impl Into<String>) -> EnhanceError {
    EnhanceError::Input(msg.into())
}

impl Degradation {
    /// The model's name as recipes and the command line spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Degradation::LowDoseCt { .. } => "low-dose-ct",
            Degradation::ThickSlice { .. } => "thick-slice",
            Degradation::Downsample { .. } => "downsample",
            Degradation::Kspace { .. } => "kspace",
            Degradation::Gaussian { .. } => "gaussian",
            Degradation::Rician { .. } => "rician",
        }
    }

    /// Whether the degraded image lies on the input's grid (false for thick-slice and downsample).
    pub fn same_grid(&self) -> bool {
        !matches!(self, Degradation::ThickSlice { .. } | Degradation::Downsample { .. })
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), EnhanceError> {
        match *self {
            Degradation::LowDoseCt { dose, photons, angles } => {
                if !(dose > 0.0 && dose <= 1.0) {
                    return Err(bad(format!("low-dose-ct: dose must lie in (0, 1], not {dose}")));
                }
                if !(1.0..=1e12).contains(&photons) {
                    return Err(bad(format!("low-dose-ct: photons must lie in [1, 1e12], not {photons}")));
                }
                if angles.is_some_and(|a| !(2..=10_000).contains(&a)) {
                    return Err(bad("low-dose-ct: angles must lie in 2..=10000"));
                }
            }
            Degradation::ThickSlice { factor, axis } => {
                if !(2..=64).contains(&factor) || axis > 2 {
                    return Err(bad(format!("thick-slice: factor must lie in 2..=64 and axis in 0..=2 (got {factor}, {axis})")));
                }
            }
            Degradation::Downsample { factor } => {
                if !(2..=64).contains(&factor) {
                    return Err(bad(format!("downsample: factor must lie in 2..=64, not {factor}")));
                }
            }
            Degradation::Kspace { acceleration, centre } => {
                if !((1.0..=64.0).contains(&acceleration) && centre > 0.0 && centre <= 1.0) {
                    return Err(bad(format!(
                        "kspace: acceleration must lie in [1, 64] and centre in (0, 1] (got {acceleration}, {centre})"
                    )));
                }
            }
            Degradation::Gaussian { sigma } | Degradation::Rician { sigma } => {
                if !(sigma >= 0.0 && sigma.is_finite()) {
                    return Err(bad(format!("{}: sigma must be finite and ≥ 0, not {sigma}", self.name())));
                }
            }
        }
        Ok(())
    }

    /// Degrades `img` (one channel) with the random stream of `seed`. The k-space model also takes dynamic
    /// series (frames as channels): each frame gets its own line mask, drawn in frame order from the stream; the
    /// magnitude and mask then have a channel per frame and the complex image the frames' real parts followed by
    /// their imaginary parts.
    pub fn apply(&self, img: &Image, seed: u64) -> Result<Degraded, EnhanceError> {
        self.validate()?;
        if let Degradation::Kspace { .. } = self
            && img.channels() > 1
        {
            return self.apply_frames(img, seed);
        }
        if img.channels() != 1 {
            return Err(bad(format!("{}: images of one channel only (this one has {})", self.name(), img.channels())));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match *self {
            Degradation::LowDoseCt { dose, photons, angles } => {
                let [w, h, d] = dims3(img);
                let sp = img.spacing();
                let (sx, sy) = (sp[0], sp.get(1).copied().unwrap_or(sp[0]));
                if (sx - sy).abs() > 0.01 * sx.max(sy) {
                    return Err(bad(format!("low-dose-ct: in-plane pixels must be square (spacing {sx:.4} × {sy:.4} mm)")));
                }
                let spacing = 0.5 * (sx + sy);
                let geometry = ParallelBeam::new(w, h, angles);
                let mut out = img.data().to_vec();
                for k in 0..d {
                    let slice = &img.data()[k * w * h..(k + 1) * w * h];
                    let mu: Vec<f32> =
                        slice.iter().map(|&hu| ((MU_WATER * spacing) * (1.0 + hu as f64 / 1000.0)).max(0.0) as f32).collect();
                    let sino = radon(&mu, &geometry);
                    let i0 = dose * photons;
                    let noise: Vec<f32> = sino
                        .iter()
                        .map(|&p| {
                            let lambda = i0 * (-(p as f64)).exp();
                            let counts =
                                if lambda > 0.0 { Poisson::new(lambda).map(|dist| dist.sample(&mut rng)).unwrap_or(lambda) } else { 0.0 };
                            ((i0 / counts.max(1.0)).ln() - p as f64) as f32
                        })
                        .collect();
                    let dmu = fbp(&noise, &geometry);
                    for (o, dm) in out[k * w * h..(k + 1) * w * h].iter_mut().zip(dmu) {
                        *o += (1000.0 * dm as f64 / (MU_WATER * spacing)) as f32;
                    }
                }
                Ok(Degraded { image: Image::new(out, img.shape().to_vec(), 1, *img.affine(), "float32")?, mask: None, complex: None })
            }
            Degradation::ThickSlice { factor, axis } => {
                if axis >= img.ndim() {
                    return Err(bad(format!("thick-slice: axis {axis} does not exist in a {}-axis image", img.ndim())));
                }
                Ok(Degraded { image: block_mean(img, &[(axis, factor)])?, mask: None, complex: None })
            }
            Degradation::Downsample { factor } => {
                if img.ndim() < 2 {
                    return Err(bad("downsample: the image needs two in-plane axes"));
                }
                Ok(Degraded { image: block_mean(img, &[(0, factor), (1, factor)])?, mask: None, complex: None })
            }
            Degradation::Kspace { acceleration, centre } => {
                let [w, h, d] = dims3(img);
                let lines = line_mask(h, acceleration, centre, &mut rng);
                let mut out = Vec::with_capacity(img.voxels());
                let (mut re, mut im) = (Vec::with_capacity(img.voxels()), Vec::with_capacity(img.voxels()));
                for k in 0..d {
                    let mut buf: Vec<Complex32> = img.data()[k * w * h..(k + 1) * w * h].iter().map(|&v| Complex32::new(v, 0.0)).collect();
                    fft2(&mut buf, w, h);
                    for y in 0..h {
                        if !lines[y] {
                            buf[w * y..w * (y + 1)].iter_mut().for_each(|v| *v = Complex32::new(0.0, 0.0));
                        }
                    }
                    ifft2(&mut buf, w, h);
                    out.extend(buf.iter().map(|v| v.norm()));
                    re.extend(buf.iter().map(|v| v.re));
                    im.extend(buf.iter().map(|v| v.im));
                }
                re.extend(im);
                let mask: Vec<f32> =
                    (0..d).flat_map(|_| (0..h).flat_map(|y| std::iter::repeat_n(if lines[y] { 1.0 } else { 0.0 }, w))).collect();
                Ok(Degraded {
                    image: Image::new(out, img.shape().to_vec(), 1, *img.affine(), "float32")?,
                    mask: Some(Image::new(mask, img.shape().to_vec(), 1, *img.affine(), "uint8")?),
                    complex: Some(Image::new(re, img.shape().to_vec(), 2, *img.affine(), "float32")?),
                })
            }
            Degradation::Gaussian { sigma } | Degradation::Rician { sigma } => {
                let normal = Normal::new(0.0, sigma).map_err(|e| bad(format!("{}: {e}", self.name())))?;
                let rician = matches!(self, Degradation::Rician { .. });
                let out: Vec<f32> = img
                    .data()
                    .iter()
                    .map(|&v| {
                        let a = v as f64 + normal.sample(&mut rng);
                        (if rician { a.hypot(normal.sample(&mut rng)) } else { a }) as f32
                    })
                    .collect();
                Ok(Degraded { image: Image::new(out, img.shape().to_vec(), 1, *img.affine(), "float32")?, mask: None, complex: None })
            }
        }
    }
}

/// `[w, h, d]` of a 1D to 3D image (missing axes of length 1).
fn dims3(img: &Image) -> [usize; 3] {
    let s = img.shape();
    [s[0], s.get(1).copied().unwrap_or(1), s.get(2).copied().unwrap_or(1)]
}

/// Means over blocks of `factor` voxels along the given axes, on the grid whose blocks are those voxels.
pub fn block_mean(img: &Image, axes: &[(usize, usize)]) -> Result<Image, EnhanceError> {
    let shape = img.shape().to_vec();
    let mut factors = vec![1usize; shape.len()];
    for &(axis, f) in axes {
        factors[axis] = f;
    }
    let out_shape: Vec<usize> = shape.iter().zip(&factors).map(|(n, f)| n / f).collect();
    if out_shape.contains(&0) {
        return Err(bad(format!("the image ({shape:?}) is smaller than one block ({factors:?})")));
    }
    let n_out: usize = out_shape.iter().product();
    let mut out = vec![0.0f64; n_out];
    let out_strides: Vec<usize> = (0..out_shape.len()).map(|a| out_shape[..a].iter().product()).collect();
    let data = img.data();
    vesalius_io::geometry::for_each_index(&shape, |i, idx| {
        let mut o = 0usize;
        for a in 0..idx.len() {
            let q = idx[a] / factors[a];
            if q >= out_shape[a] {
                return;
            }
            o += q * out_strides[a];
        }
        out[o] += data[i] as f64;
    });
    let per_block: f64 = factors.iter().product::<usize>() as f64;
    let values: Vec<f32> = out.iter().map(|v| (v / per_block) as f32).collect();
    let a = img.affine();
    let mut affine: Affine = *a;
    for (axis, &f) in factors.iter().enumerate() {
        if f > 1 {
            let shift = (f as f64 - 1.0) / 2.0;
            for r in 0..3 {
                affine[r][3] += a[r][axis] * shift;
                affine[r][axis] = a[r][axis] * f as f64;
            }
        }
    }
    Ok(Image::new(values, out_shape, 1, affine, "float32")?)
}

/// Which of `h` phase-encoding lines a random Cartesian mask keeps: the `round(centre·h)` lowest frequencies,
/// and each other line with the probability that makes the expected total `h / acceleration`.
pub fn line_mask(h: usize, acceleration: f64, centre: f64, rng: &mut ChaCha8Rng) -> Vec<bool> {
    use rand::Rng;
    let mut keep = crate::kspace::centre_lines(h, centre);
    let n_centre = keep.iter().filter(|&&k| k).count();
    let rest = h - n_centre;
    if rest > 0 {
        let p = ((h as f64 / acceleration - n_centre as f64) / rest as f64).clamp(0.0, 1.0);
        for y in 0..h {
            if !keep[y] && rng.random::<f64>() < p {
                keep[y] = true;
            }
        }
    }
    keep
}

impl Degradation {
    /// The k-space model over the frames of a series (see [`Degradation::apply`]).
    fn apply_frames(&self, img: &Image, seed: u64) -> Result<Degraded, EnhanceError> {
        let (shape, affine, frames) = (img.shape().to_vec(), *img.affine(), img.channels());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut image, mut mask, mut re, mut im) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for c in 0..frames {
            let frame = Image::new(img.channel(c).to_vec(), shape.clone(), 1, affine, "float32")?;
            let one = self.apply(&frame, rand::Rng::random(&mut rng))?;
            image.extend_from_slice(one.image.data());
            mask.extend_from_slice(one.mask.as_ref().map(Image::data).unwrap_or_default());
            if let Some(z) = &one.complex {
                re.extend_from_slice(z.channel(0));
                im.extend_from_slice(z.channel(1));
            }
        }
        re.extend(im);
        Ok(Degraded {
            image: Image::new(image, shape.clone(), frames, affine, "float32")?,
            mask: Some(Image::new(mask, shape.clone(), frames, affine, "uint8")?),
            complex: Some(Image::new(re, shape, 2 * frames, affine, "float32")?),
        })
    }
}

/// The geometry of a parallel-beam scan of a `w × h` slice: `angles` views over 180° and detector bins one pixel
/// wide, centred on the slice's centre.
#[derive(Clone, Debug, PartialEq)]
pub struct ParallelBeam {
    /// Slice width (first axis).
    pub w: usize,
    /// Slice height.
    pub h: usize,
    /// View angles, radians, in `[0, π)`.
    pub angles: Vec<f64>,
    /// Detector bins per view (odd, covering the slice's diagonal).
    pub bins: usize,
}

impl ParallelBeam {
    /// The geometry of a `w × h` slice with `angles` views (default: `⌈π/2 · bins⌉`, at most
    /// [`MAX_DEFAULT_ANGLES`]).
    pub fn new(w: usize, h: usize, angles: Option<usize>) -> Self {
        let diag = ((w * w + h * h) as f64).sqrt().ceil() as usize + 2;
        let bins = diag | 1;
        let n = angles.unwrap_or(((std::f64::consts::FRAC_PI_2 * bins as f64).ceil() as usize).min(MAX_DEFAULT_ANGLES));
        let angles = (0..n).map(|i| std::f64::consts::PI * i as f64 / n as f64).collect();
        Self { w, h, angles, bins }
    }
}

fn bilinear(img: &[f32], w: usize, h: usize, x: f64, y: f64) -> f32 {
    if x <= -1.0 || y <= -1.0 || x >= w as f64 || y >= h as f64 {
        return 0.0;
    }
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let at = |xi: i64, yi: i64| if xi < 0 || yi < 0 || xi >= w as i64 || yi >= h as i64 { 0.0 } else { img[xi as usize + w * yi as usize] };
    (1.0 - fy) * ((1.0 - fx) * at(x0, y0) + fx * at(x0 + 1, y0)) + fy * ((1.0 - fx) * at(x0, y0 + 1) + fx * at(x0 + 1, y0 + 1))
}

/// The parallel-beam sinogram (`angles × bins`, bins fastest) of a `w × h` slice: line integrals in pixel units
/// (the values times the path length in pixels), sampled every half pixel with bilinear interpolation.
pub fn radon(slice: &[f32], g: &ParallelBeam) -> Vec<f32> {
    let (cx, cy) = ((g.w as f64 - 1.0) / 2.0, (g.h as f64 - 1.0) / 2.0);
    let half = (g.bins / 2) as f64;
    let steps = 2 * g.bins;
    let mut sino = vec![0.0f32; g.angles.len() * g.bins];
    for (a, &theta) in g.angles.iter().enumerate() {
        let (c, s) = (theta.cos(), theta.sin());
        for b in 0..g.bins {
            let t = b as f64 - half;
            let mut acc = 0.0f32;
            for k in 0..steps {
                let u = (k as f64 + 0.5) * 0.5 - half;
                acc += bilinear(slice, g.w, g.h, cx + t * c - u * s, cy + t * s + u * c);
            }
            sino[a * g.bins + b] = acc * 0.5;
        }
    }
    sino
}

/// Filtered back-projection of a sinogram of [`radon`]'s layout with the Ram-Lak filter (the band-limited ramp
/// of Kak and Slaney, applied by zero-padded FFT convolution).
pub fn fbp(sino: &[f32], g: &ParallelBeam) -> Vec<f32> {
    let n = (2 * g.bins).next_power_of_two();
    let kernel: Vec<f32> = (0..n)
        .map(|i| {
            let k = if i <= n / 2 { i as i64 } else { i as i64 - n as i64 };
            if k == 0 {
                0.25
            } else if k % 2 == 0 {
                0.0
            } else {
                (-1.0 / (std::f64::consts::PI * std::f64::consts::PI * (k * k) as f64)) as f32
            }
        })
        .collect();
    let ks = spectrum(&kernel);
    let (cx, cy) = ((g.w as f64 - 1.0) / 2.0, (g.h as f64 - 1.0) / 2.0);
    let half = (g.bins / 2) as f64;
    let mut out = vec![0.0f32; g.w * g.h];
    let mut padded = vec![0.0f32; n];
    for (a, &theta) in g.angles.iter().enumerate() {
        padded.iter_mut().for_each(|v| *v = 0.0);
        padded[..g.bins].copy_from_slice(&sino[a * g.bins..(a + 1) * g.bins]);
        let q = circular_convolve(&padded, &ks);
        let (c, s) = (theta.cos(), theta.sin());
        for y in 0..g.h {
            for x in 0..g.w {
                let t = (x as f64 - cx) * c + (y as f64 - cy) * s + half;
                let t0 = t.floor();
                let f = (t - t0) as f32;
                let i = t0 as usize;
                if t0 >= 0.0 && i + 1 < g.bins {
                    out[x + g.w * y] += (1.0 - f) * q[i] + f * q[i + 1];
                }
            }
        }
    }
    let scale = (std::f64::consts::PI / g.angles.len() as f64) as f32;
    out.iter_mut().for_each(|v| *v *= scale);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesalius_io::IDENTITY;

    /// A water disk (0 HU, radius `r` pixels) in air (−1000 HU) on a `n × n` grid of 1 mm pixels.
    fn water(n: usize, r: f64) -> Image {
        let c = (n as f64 - 1.0) / 2.0;
        let data = (0..n * n)
            .map(|i| {
                let (x, y) = ((i % n) as f64 - c, (i / n) as f64 - c);
                if x.hypot(y) <= r { 0.0 } else { -1000.0 }
            })
            .collect();
        Image::new(data, vec![n, n], 1, IDENTITY, "int16").unwrap()
    }

    fn centre_variance(img: &Image, n: usize, r: usize) -> f64 {
        let c = n / 2;
        let vals: Vec<f64> =
            (c - r..c + r).flat_map(|y| (c - r..c + r).map(move |x| (x, y))).map(|(x, y)| img.get(&[x, y]) as f64).collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (vals.len() - 1) as f64
    }

    #[test]
    fn noise_free_round_trip_of_a_smooth_object() {
        // A Gaussian blob: FBP(radon(x)) returns it to 1.5 % of its peak everywhere.
        let n = 64;
        let c = (n as f64 - 1.0) / 2.0;
        let x: Vec<f32> = (0..n * n)
            .map(|i| {
                let (u, v) = ((i % n) as f64 - c, (i / n) as f64 - c);
                (-(u * u + v * v) / (2.0 * 8.0f64.powi(2))).exp() as f32
            })
            .collect();
        let g = ParallelBeam::new(n, n, None);
        let back = fbp(&radon(&x, &g), &g);
        let worst = back.iter().zip(&x).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 0.015, "largest round-trip error {worst}");
    }

    #[test]
    fn low_dose_noise_variance_scales_as_one_over_dose() {
        let n = 96;
        let img = water(n, 40.0);
        let var = |dose: f64, seed: u64| {
            let d = Degradation::LowDoseCt { dose, photons: 1e5, angles: Some(180) }.apply(&img, seed).unwrap().image;
            centre_variance(&d, n, 16)
        };
        let (v1, v4) = ((var(0.5, 1) + var(0.5, 2)) / 2.0, (var(0.125, 3) + var(0.125, 4)) / 2.0);
        let ratio = v4 / v1;
        assert!((ratio - 4.0).abs() < 0.6, "variance at 1/8 dose over 1/2 dose: {ratio} (expected 4)");
        // The water stays water: the mean HU of the centre changes by noise only.
        let d = Degradation::LowDoseCt { dose: 0.25, photons: 1e5, angles: Some(180) }.apply(&img, 5).unwrap().image;
        let mean: f64 = (40..56).flat_map(|y| (40..56).map(move |x| (x, y))).map(|(x, y)| d.get(&[x, y]) as f64).sum::<f64>() / 256.0;
        assert!(mean.abs() < 10.0, "mean HU of water {mean}");
    }

    #[test]
    fn kspace_keeps_the_centre_and_about_one_line_in_r() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let keep = line_mask(256, 4.0, 0.08, &mut rng);
        let n = keep.iter().filter(|&&k| k).count();
        assert!((50..=78).contains(&n), "{n} lines kept of 256 at R = 4");
        assert!(keep[0] && keep[1] && keep[255] && keep[9] && keep[247] && keep[246]); // frequencies 0, ±1 … ±9, −10
        // Fully sampled: the zero-filled image is the image.
        let img = water(16, 5.0);
        let full = Degradation::Kspace { acceleration: 1.0, centre: 1.0 }.apply(&img, 0).unwrap();
        assert!(full.image.data().iter().zip(img.data()).all(|(a, b)| (a - b.abs()).abs() < 1e-2));
        assert!(full.mask.unwrap().data().iter().all(|&m| m == 1.0));
    }

    #[test]
    fn rician_noise_biases_the_background_upwards() {
        let img = Image::new(vec![0.0; 4096], vec![64, 64], 1, IDENTITY, "float32").unwrap();
        let r = Degradation::Rician { sigma: 2.0 }.apply(&img, 1).unwrap().image;
        let mean = r.data().iter().map(|&v| v as f64).sum::<f64>() / 4096.0;
        // The Rayleigh mean σ·√(π/2) = 2.507.
        assert!((mean - 2.507).abs() < 0.1, "{mean}");
        let bad = Degradation::Gaussian { sigma: -1.0 }.apply(&img, 0).unwrap_err().to_string();
        assert!(bad.contains("sigma"), "{bad}");
    }
}
