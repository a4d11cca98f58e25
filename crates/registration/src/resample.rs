//! Trilinear resampling of whole volumes at millions of points, on all cores, without building tensors: what
//! [`crate::finish`] and the learned registrar do at the fixed image's full resolution. The arithmetic is that of
//! [`vesalius_nets::ops::sample_linear`] (same corners, weights and padding rules, in `f32`), which stays the
//! differentiable version for optimisation.
//!
//! ```
//! use vesalius_nets::ops::Padding;
//! use vesalius_registration::resample::trilinear;
//! // A 1 × 2 × 2 image sampled at its centre and outside it.
//! let image = [0.0f32, 1.0, 2.0, 3.0];
//! let coords = [vec![0.0, 0.0], vec![0.5, 0.0], vec![0.5, -1.0]];
//! assert_eq!(trilinear(&image, [1, 2, 2], &coords, Padding::Zeros), vec![1.5, 0.0]);
//! assert_eq!(trilinear(&image, [1, 2, 2], &coords, Padding::Border), vec![1.5, 0.0]);
//! ```
use vesalius_nets::ops::Padding;

/// Samples `image` (`d·h·w` values, `w` fastest) at the voxel coordinates `coords` (`[depth, height, width]`, one
/// value per point each) by trilinear interpolation. `Padding::Zeros`: corners outside the image contribute
/// nothing; `Padding::Border`: coordinates are clamped into the image first. A depth-1 image is sampled in its plane.
pub fn trilinear(image: &[f32], size: [usize; 3], coords: &[Vec<f32>; 3], padding: Padding) -> Vec<f32> {
    let n = coords[0].len();
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(n / 65_536).max(1);
    let per = n.div_ceil(threads).max(1);
    let mut out = vec![0f32; n];
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (k, o) in chunk.iter_mut().enumerate() {
                    let i = t * per + k;
                    *o = sample(image, size, [coords[0][i], coords[1][i], coords[2][i]], padding);
                }
            });
        }
    });
    out
}

fn sample(image: &[f32], size: [usize; 3], p: [f32; 3], padding: Padding) -> f32 {
    let [d, h, w] = size;
    let mut base = [0i64; 3];
    let mut frac = [0f32; 3];
    for a in 0..3 {
        let v = if padding == Padding::Border { p[a].clamp(0.0, (size[a] - 1) as f32) } else { p[a] };
        let f = v.floor();
        base[a] = f as i64;
        frac[a] = v - f;
    }
    let ok = |v: i64, len: usize| v >= 0 && v < len as i64;
    let mut acc = 0f32;
    for dz in 0..2i64 {
        if d == 1 && dz == 1 {
            continue;
        }
        let wz = if dz == 1 { frac[0] } else { 1.0 - frac[0] };
        let z = base[0] + dz;
        if !ok(z, d) {
            continue;
        }
        for dy in 0..2i64 {
            let wy = if dy == 1 { frac[1] } else { 1.0 - frac[1] };
            let y = base[1] + dy;
            if !ok(y, h) {
                continue;
            }
            let row = (z as usize * h + y as usize) * w;
            for dx in 0..2i64 {
                let x = base[2] + dx;
                if !ok(x, w) {
                    continue;
                }
                let wx = if dx == 1 { frac[2] } else { 1.0 - frac[2] };
                acc += wz * wy * wx * image[row + x as usize];
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};
    use vesalius_nets::ops::sample_linear;

    use super::*;

    type B = burn::backend::Flex;

    #[test]
    fn equals_the_differentiable_sampler_inside_outside_and_at_the_border() {
        let size = [5, 6, 7];
        let n = size.iter().product::<usize>();
        let image: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let m = 400;
        let coords: [Vec<f32>; 3] =
            [0, 1, 2].map(|a| (0..m).map(|i| ((i * (7 + 3 * a)) % 97) as f32 / 97.0 * (size[a] as f32 + 2.0) - 1.0).collect());
        let device = Default::default();
        let t = Tensor::<B, 5>::from_data(TensorData::new(image.clone(), [1, 1, 5, 6, 7]), &device);
        let c = Tensor::<B, 5>::from_data(TensorData::new(coords.concat(), [1, 3, 1, 1, m]), &device);
        for padding in [Padding::Zeros, Padding::Border] {
            let reference: Vec<f32> = sample_linear(t.clone(), c.clone(), padding).into_data().to_vec().unwrap();
            let ours = trilinear(&image, size, &coords, padding);
            let worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{padding:?}: {worst}");
        }
    }
}
