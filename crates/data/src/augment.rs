//! Seeded 2D augmentation of channel-planar square images for classification: flips, small rotations, intensity
//! jitter — a short recipe form of a [`crate::transforms`] pipeline, which performs it.
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::transforms::{Pipeline, Subject, Transform};
use crate::{IDENTITY, Image};

/// Random 2D augmentation. Each field is a probability or a range; zero disables that part.
///
/// The same generator state gives the same output on every machine (ChaCha8 draws, then plain `f32` arithmetic).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment2d {
    /// Probability of mirroring left–right.
    pub flip_horizontal: f64,
    /// Probability of mirroring top–bottom.
    pub flip_vertical: f64,
    /// Rotation drawn uniformly in `[-rotate_degrees, rotate_degrees]` about the centre (bilinear, 0 outside the
    /// image).
    pub rotate_degrees: f64,
    /// Contrast factor drawn in `[1 - s, 1 + s]`, applied around the image mean.
    pub intensity_scale: f64,
    /// Brightness offset drawn in `[-s, s]`.
    pub intensity_shift: f64,
}

impl Default for Augment2d {
    fn default() -> Self {
        Self { flip_horizontal: 0.5, flip_vertical: 0.0, rotate_degrees: 10.0, intensity_scale: 0.1, intensity_shift: 0.05 }
    }
}

impl Augment2d {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self { flip_horizontal: 0.0, flip_vertical: 0.0, rotate_degrees: 0.0, intensity_scale: 0.0, intensity_shift: 0.0 }
    }

    /// The same augmentation as a pipeline of [`crate::transforms`] (the project's one augmentation system):
    /// flips along x and y, a rotation about the centre (bilinear, 0 outside), contrast about the mean, a shift.
    pub fn pipeline(&self) -> Pipeline {
        let mut transforms = Vec::new();
        if self.flip_horizontal > 0.0 {
            transforms.push(Transform::RandFlip { prob: self.flip_horizontal.min(1.0), axes: vec![0] });
        }
        if self.flip_vertical > 0.0 {
            transforms.push(Transform::RandFlip { prob: self.flip_vertical.min(1.0), axes: vec![1] });
        }
        if self.rotate_degrees > 0.0 {
            transforms.push(Transform::RandAffine {
                prob: 1.0,
                rotate: vec![self.rotate_degrees],
                scale: 0.0,
                shear: 0.0,
                translate: vec![],
            });
        }
        if self.intensity_scale > 0.0 {
            transforms.push(Transform::RandContrast { prob: 1.0, factor: [1.0 - self.intensity_scale, 1.0 + self.intensity_scale] });
        }
        if self.intensity_shift > 0.0 {
            transforms.push(Transform::RandScaleShift {
                prob: 1.0,
                scale: [1.0, 1.0],
                shift: [-self.intensity_shift, self.intensity_shift],
            });
        }
        Pipeline { transforms }
    }

    /// Augments `pixels` (`[channels, size, size]`, rows of `size` pixels) in place with [`Augment2d::pipeline`],
    /// seeded by one draw from `rng`. The same geometric transform and intensity change apply to every channel.
    pub fn apply(&self, pixels: &mut [f32], channels: usize, size: usize, rng: &mut impl Rng) {
        debug_assert_eq!(pixels.len(), channels * size * size);
        let seed: u64 = rng.random();
        let pipeline = self.pipeline();
        if pipeline.transforms.is_empty() {
            return;
        }
        // Rows of pixels are the image's second axis: x (columns) varies fastest, as an `Image` stores it.
        let out = Image::new(pixels.to_vec(), vec![size, size], channels, IDENTITY, "float32")
            .and_then(|image| pipeline.apply_seeded(Subject { image, label: None }, seed));
        match out {
            Ok(s) if s.image.data().len() == pixels.len() => pixels.copy_from_slice(s.image.data()),
            // The pipeline keeps the grid; an error here would be a bug of the transforms, not of the data.
            other => debug_assert!(false, "2D augmentation failed: {:?}", other.err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(size: usize) -> Vec<f32> {
        (0..size * size).map(|v| v as f32).collect()
    }

    #[test]
    fn certain_flips_mirror_rows_and_columns() {
        let mut p = ramp(5);
        let h = Augment2d { flip_horizontal: 1.0, ..Augment2d::none() };
        h.apply(&mut p, 1, 5, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(&p[..5], &[4.0, 3.0, 2.0, 1.0, 0.0]);
        let mut q = ramp(5);
        let v = Augment2d { flip_vertical: 1.0, ..Augment2d::none() };
        v.apply(&mut q, 1, 5, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(&q[..5], &[20.0, 21.0, 22.0, 23.0, 24.0]);
    }

    #[test]
    fn rotation_keeps_the_centre_and_contrast_keeps_the_mean() {
        let size = 9;
        let mut p = ramp(size);
        Augment2d { rotate_degrees: 30.0, ..Augment2d::none() }.apply(&mut p, 1, size, &mut ChaCha8Rng::seed_from_u64(3));
        assert!((p[4 * size + 4] - 40.0).abs() < 1e-3, "centre {}", p[4 * size + 4]);
        assert_ne!(p, ramp(size));
        let mut c = ramp(size);
        Augment2d { intensity_scale: 0.5, ..Augment2d::none() }.apply(&mut c, 1, size, &mut ChaCha8Rng::seed_from_u64(3));
        let mean = c.iter().sum::<f32>() / c.len() as f32;
        assert!((mean - 40.0).abs() < 1e-3 && c != ramp(size), "{mean}");
    }

    #[test]
    fn same_seed_same_augmentation_and_channels_move_together() {
        let aug = Augment2d { flip_vertical: 0.5, ..Augment2d::default() };
        let mut a: Vec<f32> = ramp(8).into_iter().chain(ramp(8)).collect();
        let mut b = a.clone();
        aug.apply(&mut a, 2, 8, &mut ChaCha8Rng::seed_from_u64(4));
        aug.apply(&mut b, 2, 8, &mut ChaCha8Rng::seed_from_u64(4));
        assert_eq!(a, b);
        assert_eq!(a[..64], a[64..]);
        let mut c: Vec<f32> = ramp(8).into_iter().chain(ramp(8)).collect();
        aug.apply(&mut c, 2, 8, &mut ChaCha8Rng::seed_from_u64(5));
        assert_ne!(a, c);
    }

    #[test]
    fn none_changes_nothing() {
        let mut p = ramp(7);
        Augment2d::none().apply(&mut p, 1, 7, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(p, ramp(7));
    }
}
