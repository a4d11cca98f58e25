//! Prediction: a degraded image in, the enhanced image out — on the input's grid for denoising and
//! reconstruction, on the finer grid whose blocks are the input's voxels for super-resolution (thick-slice and
//! down-sampling models), where the input is first interpolated by cubic B-splines and the network refines it.
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use vesalius_io::{Affine, Image};
use vesalius_train::RunDir;

use crate::EnhanceError;
use crate::adapt::{Views, enhance_planes};
use crate::data::{PlaneAxes, dims3, insert_plane};
use crate::degrade::Degradation;
use crate::evaluate::{load_best, read_run};
use crate::model::{EnhanceNet, reconstruct_plane, reconstruct_series};
use crate::train::EnhanceInfo;

/// The fine grid (shape, affine) whose `factor`-blocks along `axes` are the voxels of a coarse image — the
/// inverse of [`crate::degrade::block_mean`]'s grid change.
pub fn fine_grid(coarse: &Image, axes: &[(usize, usize)]) -> (Vec<usize>, Affine) {
    let mut shape = coarse.shape().to_vec();
    let a = coarse.affine();
    let mut affine = *a;
    for &(axis, f) in axes {
        if axis >= shape.len() {
            continue;
        }
        shape[axis] *= f;
        let shift = (f as f64 - 1.0) / 2.0;
        for r in 0..3 {
            let col = a[r][axis] / f as f64;
            affine[r][axis] = col;
            affine[r][3] -= col * shift;
        }
    }
    (shape, affine)
}

/// A loaded run, ready to enhance images.
pub struct Enhancer<B: Backend> {
    net: EnhanceNet<B>,
    /// The trainable copy that adapts to each image (runs with `[adapt]`).
    base: Option<EnhanceNet<burn::backend::Autodiff<B>>>,
    info: EnhanceInfo,
    device: B::Device,
}

impl<B: Backend> Enhancer<B> {
    /// Loads a run's best model (once, as a trainable copy too when the run adapts to each image).
    pub fn load(run: &RunDir, device: &B::Device) -> Result<Self, EnhanceError> {
        use burn::module::AutodiffModule;
        let (_, info) = read_run(run)?;
        let (net, base) = match info.details.adapt {
            Some(_) => {
                let base = load_best::<burn::backend::Autodiff<B>>(run, &info, device)?;
                (base.valid(), Some(base))
            }
            None => (load_best::<B>(run, &info, device)?, None),
        };
        Ok(Self { net, base, info: info.details, device: device.clone() })
    }

    /// What the run was trained for.
    pub fn info(&self) -> &EnhanceInfo {
        &self.info
    }

    /// The enhanced image (float32). A CRNN run reconstructs from k-space: see [`Enhancer::reconstruct`]. A run
    /// with `[adapt]` first fine-tunes a copy of its network on the image's own pairs
    /// ([`crate::adapt`]).
    pub fn enhance(&self, img: &Image) -> Result<Image, EnhanceError> {
        if matches!(self.net, EnhanceNet::Crnn(_)) {
            return Err(EnhanceError::Input(
                "this run reconstructs k-space data: give the zero-filled complex image (NAME_complex.nii.gz) and its mask (--mask)".into(),
            ));
        }
        if img.channels() != 1 {
            return Err(EnhanceError::Input(format!("enhancement takes one-channel images (this one has {})", img.channels())));
        }
        let fine = self.info.degradation.as_ref().and_then(|model| {
            crate::data::bspline_fine(model, img).map(|(data, shape)| (data, shape, fine_grid(img, &crate::data::coarsening(model)).1))
        });
        let input = match fine {
            None => img.clone(),
            Some((data, shape, affine)) => Image::new(data, shape, 1, affine, "float32")?,
        };
        let shape = dims3(input.shape());
        let axes = PlaneAxes::new(self.info.plane[0], self.info.plane[1])?;
        let intensity = crate::data::Intensity::of(&self.info.intensity, input.data());
        let normalised = intensity.normalise(input.data());
        let adapted;
        let (net, views, thick) = match (&self.info.adapt, &self.base, &self.info.degradation) {
            (Some(section), Some(base), Some(Degradation::ThickSlice { factor, axis })) => {
                let coarse = intensity.normalise(img.data());
                let pairs = crate::adapt::own_pairs(&coarse, dims3(img.shape()), *axis, *factor, section.patch);
                adapted = crate::adapt::adapt(base.clone(), &pairs, section, &self.device)?;
                (&adapted, section.views(), *axis)
            }
            _ => (&self.net, Views::default(), axes.v),
        };
        let planes = 0..shape[axes.across];
        let enhanced = enhance_planes(net, &self.info.model, &normalised, shape, axes, thick, views, planes, &self.device);
        let mut out = vec![0.0f32; normalised.len()];
        for (k, plane) in enhanced.iter().enumerate() {
            insert_plane(&mut out, shape, axes, k, &intensity.restore(plane));
        }
        Ok(Image::new(out, input.shape().to_vec(), 1, *input.affine(), "float32")?)
    }
}

impl<B: Backend> Enhancer<B> {
    /// Reconstructs under-sampled Cartesian MR with a CRNN run: `complex` is the zero-filled complex image (two
    /// channels, real and imaginary, as `vesalius degrade --model kspace` writes `NAME_complex.nii.gz`) and `mask`
    /// the sampling mask (1 on measured phase-encoding lines, along the second axis). Returns the magnitude.
    ///
    /// A dynamic series of `t` frames has `2t` channels (the frames' real parts, then their imaginary parts) and a
    /// mask of `t` channels, one per frame; each plane's frames are reconstructed together and the result has a
    /// channel per frame.
    pub fn reconstruct(&self, complex: &Image, mask: &Image) -> Result<Image, EnhanceError> {
        if !matches!(self.net, EnhanceNet::Crnn(_)) {
            return Err(EnhanceError::Input("a k-space mask applies to reconstruction (CRNN) runs only".into()));
        }
        let frames = mask.channels();
        if complex.channels() != 2 * frames {
            return Err(EnhanceError::Input(format!(
                "reconstruction takes a complex image of two channels per mask frame (real parts, then imaginary parts): the mask has {frames} frame(s), the image {} channel(s)",
                complex.channels()
            )));
        }
        if dims3(mask.shape()) != dims3(complex.shape()) {
            return Err(EnhanceError::Input(format!("the mask's shape {:?} differs from the image's {:?}", mask.shape(), complex.shape())));
        }
        let [w, h, d] = dims3(complex.shape());
        let n = w * h * d;
        let re = |t: usize| complex.channel(t);
        let im = |t: usize| complex.channel(frames + t);
        // Every mask holds the fully sampled centre the network trained with (its scale is taken there).
        if let Some(Degradation::Kspace { centre, .. }) = &self.info.degradation {
            let needed = crate::kspace::centre_lines(h, *centre);
            for t in 0..frames {
                for k in 0..d {
                    if needed.iter().enumerate().any(|(y, &c)| c && mask.channel(t)[k * w * h + w * y] <= 0.5) {
                        return Err(EnhanceError::Input(format!(
                            "the mask of plane {k} (frame {t}) lacks some of the {} fully sampled centre lines this run was trained with (centre = {centre} of {h} lines)",
                            needed.iter().filter(|&&c| c).count()
                        )));
                    }
                }
            }
        }
        // The network's scale, from the measurements as in training: with per-image intensities the magnitude of
        // the fully sampled centre lines ([`crate::kspace::calibration_scale`]), else the recipe's fixed range.
        let network_scale = match (&self.info.intensity, &self.info.degradation) {
            (crate::recipe::IntensitySpec::Scheme(_), Some(Degradation::Kspace { centre, .. })) => {
                let planes = (0..frames).flat_map(|t| {
                    (0..d).map(move |k| {
                        let plane = k * w * h..(k + 1) * w * h;
                        re(t)[plane.clone()].iter().zip(&im(t)[plane]).map(|(a, b)| rustfft::num_complex::Complex32::new(*a, *b)).collect()
                    })
                });
                crate::kspace::calibration_scale(planes, w, h, *centre)
            }
            (spec, _) => {
                let range = crate::data::Intensity::of(spec, &[]);
                range.high - range.low
            }
        };
        let scale = 1.0 / network_scale;
        // Every plane's zero-filled image and measurements, once, `[frame][plane]`: the measured k-space is the
        // transform of the zero-filled image.
        let (mut x0s, mut measured) = (vec![Vec::with_capacity(d); frames], vec![Vec::with_capacity(d); frames]);
        for t in 0..frames {
            for k in 0..d {
                let plane = k * w * h..(k + 1) * w * h;
                let lines: Vec<bool> = (0..h).map(|y| mask.channel(t)[k * w * h + w * y] > 0.5).collect();
                let x0: Vec<f32> = re(t)[plane.clone()].iter().chain(&im(t)[plane]).map(|v| v * scale).collect();
                let mut kc: Vec<rustfft::num_complex::Complex32> =
                    (0..w * h).map(|i| rustfft::num_complex::Complex32::new(x0[i], x0[w * h + i])).collect();
                crate::fft::fft2(&mut kc, w, h);
                measured[t].push(crate::data::Measured { k0: crate::kspace::pack(&kc), lines });
                x0s[t].push(x0);
            }
        }
        // With [adapt], a copy of the network first learns from the image's own measured lines.
        let adapted = match (&self.info.adapt, &self.base) {
            (Some(section), Some(base)) => {
                if frames != 1 {
                    return Err(EnhanceError::Input(format!("this run adapts to single frames; the mask has {frames}")));
                }
                Some(crate::adapt::adapt_kspace(base.clone(), &measured[0], [w, h], section, &self.device)?)
            }
            _ => None,
        };
        let net = adapted.as_ref().unwrap_or(&self.net);
        let mut out = vec![0.0f32; n * frames];
        for k in 0..d {
            let ys = if frames == 1 {
                let m = &measured[0][k];
                vec![reconstruct_plane(net, &x0s[0][k], &m.k0, &m.lines, w, h, self.info.model.flips, &self.device)]
            } else {
                let x0: Vec<Vec<f32>> = x0s.iter().map(|f| f[k].clone()).collect();
                let k0: Vec<Vec<f32>> = measured.iter().map(|f| f[k].k0.clone()).collect();
                let lines: Vec<Vec<bool>> = measured.iter().map(|f| f[k].lines.clone()).collect();
                reconstruct_series(net, &x0, &k0, &lines, w, h, &self.device)
            };
            for (t, y) in ys.iter().enumerate() {
                for (o, v) in out[t * n + k * w * h..t * n + (k + 1) * w * h].iter_mut().zip(y) {
                    *o = v * network_scale;
                }
            }
        }
        Ok(Image::new(out, complex.shape().to_vec(), frames, *complex.affine(), "float32")?)
    }
}

/// Whether an input file is a 2D picture format (PNG, JPEG, TIFF), whose enhanced image is written as PNG.
pub fn is_picture(input: &Path) -> bool {
    use vesalius_io::Format;
    matches!(Format::from_path(input), Some(Format::Png | Format::Jpeg | Format::Tiff))
}

/// `OUTDIR/<input stem>_enhanced.png` for pictures (PNG, JPEG, TIFF), `OUTDIR/<input stem>_enhanced.nii.gz` for
/// everything else.
pub fn output_path(input: &Path, out_dir: &Path) -> PathBuf {
    let name = input.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
    let stem = [".nii.gz", ".nii", ".dcm", ".mha", ".mhd", ".png", ".tif", ".tiff", ".jpg", ".jpeg"]
        .iter()
        .find_map(|ext| name.to_lowercase().ends_with(ext).then(|| name[..name.len() - ext.len()].to_string()))
        .unwrap_or(name);
    out_dir.join(format!("{stem}_enhanced.{}", if is_picture(input) { "png" } else { "nii.gz" }))
}

/// An enhanced picture in its input's stored type: values rounded and clipped to 0–255 (`uint8` inputs) or
/// 0–65535 (others), for writing as PNG.
pub fn as_picture(enhanced: &Image, input_dtype: &str) -> Result<Image, EnhanceError> {
    let (max, dtype) = if input_dtype == "uint8" { (255.0, "uint8") } else { (65535.0, "uint16") };
    let data = enhanced.data().iter().map(|v| v.round().clamp(0.0, max)).collect();
    Ok(Image::new(data, enhanced.shape().to_vec(), enhanced.channels(), *enhanced.affine(), dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_come_back_as_pictures_of_their_type() {
        let out = Path::new("/o");
        assert_eq!(output_path(Path::new("a/slice.PNG"), out), Path::new("/o/slice_enhanced.png"));
        assert_eq!(output_path(Path::new("a/ct.nii.gz"), out), Path::new("/o/ct_enhanced.nii.gz"));
        assert_eq!(output_path(Path::new("a/series"), out), Path::new("/o/series_enhanced.nii.gz"));
        let img = Image::new(vec![-3.2, 12.6, 300.0, 7.0], vec![2, 2], 1, vesalius_io::IDENTITY, "float32").unwrap();
        let p = as_picture(&img, "uint8").unwrap();
        assert_eq!((p.data(), p.dtype()), (&[0.0, 13.0, 255.0, 7.0][..], "uint8"));
    }
}
