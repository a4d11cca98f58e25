//! Prediction: a degraded image in, the enhanced image out — on the input's grid for denoising and
//! reconstruction, on the finer grid whose blocks are the input's voxels for super-resolution (thick-slice and
//! down-sampling models), where the input is first interpolated by cubic B-splines and the network refines it.
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use vesalius_io::{Affine, Image};
use vesalius_train::RunDir;

use crate::EnhanceError;
use crate::data::{PlaneAxes, dims3, extract_plane, insert_plane};
use crate::evaluate::{load_best, read_run};
use crate::model::{EnhanceNet, enhance_plane};
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
    info: EnhanceInfo,
    device: B::Device,
}

impl<B: Backend> Enhancer<B> {
    /// Loads a run's best model.
    pub fn load(run: &RunDir, device: &B::Device) -> Result<Self, EnhanceError> {
        let (_, info) = read_run(run)?;
        let net = load_best::<B>(run, &info, device)?;
        Ok(Self { net, info: info.details, device: device.clone() })
    }

    /// What the run was trained for.
    pub fn info(&self) -> &EnhanceInfo {
        &self.info
    }

    /// The enhanced image (float32).
    pub fn enhance(&self, img: &Image) -> Result<Image, EnhanceError> {
        if img.channels() != 1 {
            return Err(EnhanceError::Input(format!("enhancement takes one-channel images (this one has {})", img.channels())));
        }
        let grid_change = crate::data::coarsening(&self.info.degradation);
        let input = match crate::data::bspline_fine(&self.info.degradation, img) {
            None => img.clone(),
            Some((data, shape)) => Image::new(data, shape, 1, fine_grid(img, &grid_change).1, "float32")?,
        };
        let shape = dims3(input.shape());
        let axes = PlaneAxes::new(self.info.plane[0], self.info.plane[1])?;
        let intensity = crate::data::Intensity::of(&self.info.intensity, input.data());
        let normalised = intensity.normalise(input.data());
        let mut out = vec![0.0f32; normalised.len()];
        for k in 0..shape[axes.across] {
            let (w, h, plane) = extract_plane(&normalised, shape, axes, k);
            let enhanced = enhance_plane(&self.net, &self.info.model, &plane, w, h, &self.device);
            insert_plane(&mut out, shape, axes, k, &intensity.restore(&enhanced));
        }
        Ok(Image::new(out, input.shape().to_vec(), 1, *input.affine(), "float32")?)
    }
}

/// `OUTDIR/<input stem>_enhanced.nii.gz`.
pub fn output_path(input: &Path, out_dir: &Path) -> PathBuf {
    let name = input.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
    let stem = [".nii.gz", ".nii", ".dcm", ".mha", ".mhd", ".png", ".tif", ".tiff", ".jpg", ".jpeg"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(&name)
        .to_string();
    out_dir.join(format!("{stem}_enhanced.nii.gz"))
}
