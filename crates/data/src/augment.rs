//! Seeded 2D augmentation of channel-planar square images: flips, small rotations, intensity jitter.
use rand::Rng;
use serde::{Deserialize, Serialize};

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
    /// Rotation drawn uniformly in `[-rotate_degrees, rotate_degrees]` about the centre (bilinear, edge values
    /// repeated outside the image).
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

    /// Augments `pixels` (`[channels, size, size]`) in place, drawing from `rng`. The same geometric transform and
    /// intensity change apply to every channel.
    pub fn apply(&self, pixels: &mut [f32], channels: usize, size: usize, rng: &mut impl Rng) {
        debug_assert_eq!(pixels.len(), channels * size * size);
        let flip_h = self.flip_horizontal > 0.0 && rng.random_bool(self.flip_horizontal.min(1.0));
        let flip_v = self.flip_vertical > 0.0 && rng.random_bool(self.flip_vertical.min(1.0));
        let angle = if self.rotate_degrees > 0.0 { rng.random_range(-self.rotate_degrees..=self.rotate_degrees).to_radians() } else { 0.0 };
        let scale =
            if self.intensity_scale > 0.0 { rng.random_range(1.0 - self.intensity_scale..=1.0 + self.intensity_scale) as f32 } else { 1.0 };
        let shift = if self.intensity_shift > 0.0 { rng.random_range(-self.intensity_shift..=self.intensity_shift) as f32 } else { 0.0 };
        for plane in pixels.chunks_exact_mut(size * size) {
            if flip_h {
                flip_horizontal(plane, size);
            }
            if flip_v {
                flip_vertical(plane, size);
            }
            if angle != 0.0 {
                rotate(plane, size, angle);
            }
            if scale != 1.0 || shift != 0.0 {
                let mean = plane.iter().sum::<f32>() / plane.len() as f32;
                for v in plane.iter_mut() {
                    *v = (*v - mean) * scale + mean + shift;
                }
            }
        }
    }
}

/// Mirrors a square plane left–right.
pub fn flip_horizontal(plane: &mut [f32], size: usize) {
    for row in plane.chunks_exact_mut(size) {
        row.reverse();
    }
}

/// Mirrors a square plane top–bottom.
pub fn flip_vertical(plane: &mut [f32], size: usize) {
    for y in 0..size / 2 {
        let (a, b) = plane.split_at_mut((size - 1 - y) * size);
        a[y * size..(y + 1) * size].swap_with_slice(&mut b[..size]);
    }
}

/// Rotates a square plane by `angle` radians (counter-clockwise on screen, y down) about its centre, bilinear,
/// repeating edge values outside.
pub fn rotate(plane: &mut [f32], size: usize, angle: f64) {
    let src = plane.to_vec();
    let c = (size as f64 - 1.0) / 2.0;
    let (sin, cos) = angle.sin_cos();
    let last = (size - 1) as f64;
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f64 - c, y as f64 - c);
            // Inverse map: output (x, y) samples input at R(-angle)·(x, y).
            let sx = (cos * dx - sin * dy + c).clamp(0.0, last);
            let sy = (sin * dx + cos * dy + c).clamp(0.0, last);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
            let (tx, ty) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
            let v = (1.0 - ty) * ((1.0 - tx) * src[y0 * size + x0] + tx * src[y0 * size + x1])
                + ty * ((1.0 - tx) * src[y1 * size + x0] + tx * src[y1 * size + x1]);
            plane[y * size + x] = v;
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
    fn flips_twice_are_identity() {
        let mut p = ramp(5);
        flip_horizontal(&mut p, 5);
        assert_eq!(p[0], 4.0);
        flip_horizontal(&mut p, 5);
        flip_vertical(&mut p, 5);
        assert_eq!(p[0], 20.0);
        flip_vertical(&mut p, 5);
        assert_eq!(p, ramp(5));
    }

    #[test]
    fn rotation_by_90_degrees_equals_transpose_and_flip() {
        let size = 6;
        let mut p = ramp(size);
        rotate(&mut p, size, std::f64::consts::FRAC_PI_2);
        // Output (x, y) samples input (size-1-y, x) for +90°.
        for y in 0..size {
            for x in 0..size {
                let expect = (x * size + (size - 1 - y)) as f32;
                assert!((p[y * size + x] - expect).abs() < 1e-3, "({x},{y}): {} vs {expect}", p[y * size + x]);
            }
        }
        let mut q = ramp(size);
        rotate(&mut q, size, 0.0);
        assert_eq!(q, ramp(size));
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
