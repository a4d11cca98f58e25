//! Geometric operations that keep every voxel at its world coordinate: flips, axis permutations, reorientation
//! to axis codes (nibabel's `as_closest_canonical` for `"RAS"`), cropping and padding, and resampling to a new
//! spacing (nearest for labels, linear or cubic B-spline for images).
//!
//! Each returns a new [`Image`] whose affine is updated so that `new.world(i') == old.world(i)` for the voxel
//! `i` that `i'` came from.
use crate::image::Affine;
use crate::{DataError, Image, Result};

/// Interpolation for [`resample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interp {
    /// Nearest neighbour: for label maps.
    Nearest,
    /// Linear (bi-/tri-linear).
    Linear,
    /// Cubic B-spline with prefiltering (scipy's `order=3`, mirror boundary).
    BSpline,
}

/// Strides of a shape, first axis fastest.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in 1..shape.len() {
        s[i] = s[i - 1] * shape[i - 1];
    }
    s
}

/// Calls `f(new_linear_index, new_index)` for every voxel of `shape`.
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for lin in 0..n {
        f(lin, &idx);
        for (a, x) in idx.iter_mut().enumerate() {
            *x += 1;
            if *x < shape[a] {
                break;
            }
            *x = 0;
        }
    }
}

/// `A · M` for a 4×4 `M`.
pub fn compose(a: &Affine, m: &Affine) -> Affine {
    let mut out = [[0.0; 4]; 4];
    for r in 0..4 {
        for c in 0..4 {
            out[r][c] = (0..4).map(|k| a[r][k] * m[k][c]).sum();
        }
    }
    out
}

/// Rebuilds an image from a new shape and a map from new index to old index, copying every channel.
pub fn remap(
    img: &Image,
    shape: Vec<usize>,
    index_map: &Affine,
    old_of_new: impl Fn(&[usize]) -> Option<Vec<usize>>,
    fill: f32,
) -> Result<Image> {
    let old_strides = strides(img.shape());
    let n_new: usize = shape.iter().product();
    let n_old = img.voxels();
    let mut data = vec![fill; n_new * img.channels()];
    for_each_index(&shape, |lin, idx| {
        if let Some(old) = old_of_new(idx) {
            let o: usize = old.iter().zip(&old_strides).map(|(i, s)| i * s).sum();
            for c in 0..img.channels() {
                data[c * n_new + lin] = img.data()[c * n_old + o];
            }
        }
    });
    Image::new(data, shape, img.channels(), compose(img.affine(), index_map), img.dtype())
}

/// The image extended along voxel axis `axis` by `before` and `after` voxels mirrored across its faces (symmetric
/// reflection, repeated when the extension is longer than the image); the affine keeps every voxel's world position.
///
/// ```
/// use vesalius_io::{Image, IDENTITY};
/// let img = Image::new(vec![1.0, 2.0, 3.0], vec![3, 1], 1, IDENTITY, "float32").unwrap();
/// let out = vesalius_io::geometry::pad_reflect(&img, 0, 4, 2).unwrap();
/// assert_eq!(out.data(), &[3.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 3.0, 2.0]);
/// assert_eq!(out.affine()[0][3], -4.0); // voxel 4 is the old voxel 0
/// ```
pub fn pad_reflect(img: &Image, axis: usize, before: usize, after: usize) -> Result<Image> {
    let nd = img.ndim();
    if axis >= nd {
        return Err(DataError::Invalid(format!("axis {axis} of a {nd}D image")));
    }
    let n = img.shape()[axis] as i64;
    let mut shape = img.shape().to_vec();
    shape[axis] += before + after;
    let mut m = identity();
    m[axis][3] = -(before as f64);
    remap(
        img,
        shape,
        &m,
        |idx| {
            let mut o = idx.to_vec();
            let i = (idx[axis] as i64 - before as i64).rem_euclid(2 * n);
            o[axis] = if i < n { i } else { 2 * n - 1 - i } as usize;
            Some(o)
        },
        0.0,
    )
}

/// Mirrors the image along voxel axis `axis`.
pub fn flip(img: &Image, axis: usize) -> Result<Image> {
    let shape = img.shape().to_vec();
    if axis >= shape.len() {
        return Err(DataError::Invalid(format!("axis {axis} out of range for {} axes", shape.len())));
    }
    let n = shape[axis];
    // old index = (n - 1) - new index along `axis`.
    let mut m = identity();
    m[axis][axis] = -1.0;
    m[axis][3] = (n - 1) as f64;
    remap(
        img,
        shape.clone(),
        &m,
        |idx| {
            let mut o = idx.to_vec();
            o[axis] = n - 1 - idx[axis];
            Some(o)
        },
        0.0,
    )
}

/// The 2D slice `index` of a 3D image across voxel axis `axis` (the other two axes kept in order), with the affine
/// that places it where it lies in the volume.
pub fn slice(img: &Image, axis: usize, index: usize) -> Result<Image> {
    let shape = img.shape().to_vec();
    if shape.len() != 3 {
        return Err(DataError::Invalid(format!("a slice needs a 3D image, not {}D", shape.len())));
    }
    if axis > 2 {
        return Err(DataError::Invalid(format!("axis {axis} out of range for 3 axes")));
    }
    if index >= shape[axis] {
        return Err(DataError::Invalid(format!("slice {index} is outside 0..{} along axis {axis}", shape[axis])));
    }
    let kept: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
    // Old voxel coordinates from new ones: kept axes in order, the sliced axis fixed at `index`.
    let mut m = [[0.0; 4]; 4];
    m[kept[0]][0] = 1.0;
    m[kept[1]][1] = 1.0;
    // The sliced axis stays the image's third direction, so the affine keeps its determinant.
    m[axis][2] = 1.0;
    m[axis][3] = index as f64;
    m[3][3] = 1.0;
    remap(
        img,
        vec![shape[kept[0]], shape[kept[1]]],
        &m,
        |idx| {
            let mut o = vec![0; 3];
            o[kept[0]] = idx[0];
            o[kept[1]] = idx[1];
            o[axis] = index;
            Some(o)
        },
        0.0,
    )
}

/// The 4×4 identity.
pub fn identity() -> Affine {
    crate::image::IDENTITY
}

/// Reorders the voxel axes: new axis `k` is old axis `order[k]`.
pub fn permute(img: &Image, order: &[usize]) -> Result<Image> {
    let nd = img.ndim();
    let mut seen = vec![false; nd];
    if order.len() != nd || order.iter().any(|&a| a >= nd || std::mem::replace(&mut seen[a], true)) {
        return Err(DataError::Invalid(format!("{order:?} is not a permutation of {nd} axes")));
    }
    let shape: Vec<usize> = order.iter().map(|&a| img.shape()[a]).collect();
    // old index[order[k]] = new index[k]: the map's column k is the unit vector of old axis order[k].
    let mut m = [[0.0; 4]; 4];
    for (k, &a) in order.iter().enumerate() {
        m[a][k] = 1.0;
    }
    for k in nd..3 {
        m[k][k] = 1.0;
    }
    m[3][3] = 1.0;
    remap(
        img,
        shape,
        &m,
        |idx| {
            let mut o = vec![0; nd];
            for (k, &a) in order.iter().enumerate() {
                o[a] = idx[k];
            }
            Some(o)
        },
        0.0,
    )
}

/// Reorients to the axis codes `target` (e.g. `"RAS"`, `"LPS"`; `"RA"` for 2D) by permuting and flipping axes,
/// with no resampling, as nibabel's `as_closest_canonical` does for `"RAS"`.
pub fn reorient(img: &Image, target: &str) -> Result<Image> {
    let codes = crate::image::orientation_codes(img.affine());
    let nd = img.ndim();
    let target: Vec<char> = target.chars().map(|c| c.to_ascii_uppercase()).collect();
    let world_axis = |c: char| match c {
        'R' | 'L' => Some(0),
        'A' | 'P' => Some(1),
        'S' | 'I' => Some(2),
        _ => None,
    };
    if target.len() != nd || target.iter().any(|&c| world_axis(c).is_none()) {
        return Err(DataError::Invalid(format!("'{}' is not an orientation for {nd} axes", target.iter().collect::<String>())));
    }
    let mut order = Vec::with_capacity(nd);
    for &t in &target {
        let w = world_axis(t);
        let a = (0..nd)
            .find(|&a| world_axis(codes[a]) == w)
            .ok_or_else(|| DataError::Invalid(format!("the image has no axis along {t} (its axes are {})", img.orientation())))?;
        order.push(a);
    }
    let mut out = permute(img, &order)?;
    for (k, &t) in target.iter().enumerate() {
        if codes[order[k]] != t {
            out = flip(&out, k)?;
        }
    }
    Ok(out)
}

/// The region of `shape` voxels starting at voxel `start` (negative or past the end pads with `fill`).
pub fn crop_or_pad(img: &Image, start: &[i64], shape: &[usize], fill: f32) -> Result<Image> {
    let nd = img.ndim();
    if start.len() != nd || shape.len() != nd || shape.contains(&0) {
        return Err(DataError::Invalid(format!("crop/pad needs {nd} starts and {nd} positive sizes")));
    }
    let old = img.shape().to_vec();
    let mut m = identity();
    for a in 0..nd {
        m[a][3] = start[a] as f64;
    }
    remap(
        img,
        shape.to_vec(),
        &m,
        |idx| {
            let mut o = Vec::with_capacity(nd);
            for a in 0..nd {
                let v = idx[a] as i64 + start[a];
                if v < 0 || v >= old[a] as i64 {
                    return None;
                }
                o.push(v as usize);
            }
            Some(o)
        },
        fill,
    )
}

/// Cubic B-spline basis value at distance `x`.
fn bspline3(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        (4.0 - 6.0 * x * x + 3.0 * x * x * x) / 6.0
    } else if x < 2.0 {
        let t = 2.0 - x;
        t * t * t / 6.0
    } else {
        0.0
    }
}

/// In-place cubic B-spline prefilter of one line (mirror boundary), as scipy's `spline_filter1d`.
fn prefilter_line(c: &mut [f64]) {
    let n = c.len();
    if n < 2 {
        return;
    }
    let z = 3f64.sqrt() - 2.0;
    let lambda = (1.0 - z) * (1.0 - 1.0 / z);
    for v in c.iter_mut() {
        *v *= lambda;
    }
    // Causal initialisation for a mirror-symmetric extension, exact (Unser 1999).
    let zn1 = z.powi(n as i32 - 1);
    let mut sum = c[0] + zn1 * c[n - 1];
    for (k, &v) in c.iter().enumerate().take(n - 1).skip(1) {
        sum += (z.powi(k as i32) + z.powi(2 * (n as i32 - 1) - k as i32)) * v;
    }
    c[0] = sum / (1.0 - zn1 * zn1);
    for k in 1..n {
        c[k] += z * c[k - 1];
    }
    c[n - 1] = (z / (z * z - 1.0)) * (z * c[n - 2] + c[n - 1]);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
}

fn mirror(i: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let mut i = i.rem_euclid(period);
    if i >= n as i64 {
        i = period - i;
    }
    i as usize
}

/// Resamples to voxel sizes `spacing` (one per spatial axis). The first voxel keeps its centre; the new shape
/// covers the old extent (`round(old_shape · old_spacing / spacing)`, at least 1).
pub fn resample(img: &Image, spacing: &[f64], interp: Interp) -> Result<Image> {
    let nd = img.ndim();
    if spacing.len() != nd || spacing.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
        return Err(DataError::Invalid(format!("resampling needs {nd} positive spacings, got {spacing:?}")));
    }
    let old_spacing = img.spacing();
    let old = img.shape().to_vec();
    let scale: Vec<f64> = (0..nd).map(|a| spacing[a] / old_spacing[a]).collect();
    let shape: Vec<usize> = (0..nd).map(|a| ((old[a] as f64 / scale[a]).round() as usize).max(1)).collect();
    let mut m = identity();
    for a in 0..nd {
        m[a][a] = scale[a];
    }
    let n_new: usize = shape.iter().product();
    let n_old = img.voxels();
    let st = strides(&old);
    let mut data = vec![0f32; n_new * img.channels()];
    for c in 0..img.channels() {
        let src = &img.data()[c * n_old..(c + 1) * n_old];
        let coeffs: Option<Vec<f64>> = (interp == Interp::BSpline).then(|| {
            let mut v: Vec<f64> = src.iter().map(|&x| x as f64).collect();
            for a in 0..nd {
                let mut line = vec![0.0; old[a]];
                for_each_index(&old, |lin, idx| {
                    if idx[a] == 0 {
                        for (k, l) in line.iter_mut().enumerate() {
                            *l = v[lin + k * st[a]];
                        }
                        prefilter_line(&mut line);
                        for (k, l) in line.iter().enumerate() {
                            v[lin + k * st[a]] = *l;
                        }
                    }
                });
            }
            v
        });
        let dst = &mut data[c * n_new..(c + 1) * n_new];
        let edge = Sampler::new(img, Outside::Edge);
        let point = |pos: &[f64]| {
            let mut p = [0f64; 3];
            p[..nd].copy_from_slice(pos);
            p
        };
        for_each_index(&shape, |lin, idx| {
            let pos: Vec<f64> = (0..nd).map(|a| idx[a] as f64 * scale[a]).collect();
            dst[lin] = match interp {
                Interp::Nearest => edge.nearest(src, &point(&pos)),
                Interp::Linear => edge.linear(src, &point(&pos)),
                Interp::BSpline => {
                    let coeffs = coeffs.as_ref().expect("prefiltered");
                    let mut acc = 0.0;
                    let base: Vec<i64> = pos.iter().map(|p| p.floor() as i64 - 1).collect();
                    let taps = 4usize.pow(nd as u32);
                    for t in 0..taps {
                        let mut w = 1.0;
                        let mut o = 0;
                        let mut rem = t;
                        for a in 0..nd {
                            let k = base[a] + (rem % 4) as i64;
                            rem /= 4;
                            w *= bspline3(pos[a] - k as f64);
                            o += mirror(k, old[a]) * st[a];
                        }
                        acc += w * coeffs[o];
                    }
                    acc as f32
                }
            };
        });
    }
    Image::new(data, shape, img.channels(), compose(img.affine(), &m), img.dtype())
}

/// What a [`Sampler`] returns outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outside {
    /// 0 beyond the image (the border is held within half a voxel for linear sampling): for moving content within
    /// a grid and for resampling onto another grid.
    Zero,
    /// The nearest border value: for changing the spacing of a whole image.
    Edge,
}

/// Point sampling of one channel of an image, in voxel coordinates: the one nearest-neighbour and multi-linear
/// sampler of the project (geometry, transforms, augmentation and harmonisation all sample through it).
pub struct Sampler {
    shape: [usize; 3],
    strides: [usize; 3],
    nd: usize,
    outside: Outside,
}

impl Sampler {
    /// A sampler of `img`'s grid.
    pub fn new(img: &Image, outside: Outside) -> Self {
        let mut shape = [1usize; 3];
        shape[..img.ndim()].copy_from_slice(img.shape());
        Self { shape, strides: [1, shape[0], shape[0] * shape[1]], nd: img.ndim(), outside }
    }

    /// Nearest voxel (half-way rounds up).
    pub fn nearest(&self, src: &[f32], p: &[f64; 3]) -> f32 {
        let mut o = 0;
        for a in 0..self.nd {
            let mut i = (p[a] + 0.5).floor();
            if i < 0.0 || i >= self.shape[a] as f64 {
                match self.outside {
                    Outside::Zero => return 0.0,
                    Outside::Edge => i = i.clamp(0.0, (self.shape[a] - 1) as f64),
                }
            }
            o += i as usize * self.strides[a];
        }
        src[o]
    }

    /// Multi-linear.
    pub fn linear(&self, src: &[f32], p: &[f64; 3]) -> f32 {
        let mut i0 = [0usize; 3];
        let mut t = [0f64; 3];
        for a in 0..self.nd {
            let n = self.shape[a] as f64;
            if self.outside == Outside::Zero && (p[a] < -0.5 || p[a] > n - 0.5) {
                return 0.0;
            }
            let q = p[a].clamp(0.0, n - 1.0);
            let f = q.floor().min(n - 1.0);
            i0[a] = f as usize;
            t[a] = q - f;
        }
        let mut acc = 0f64;
        for corner in 0..(1usize << self.nd) {
            let mut w = 1.0;
            let mut o = 0;
            for a in 0..self.nd {
                let hi = corner >> a & 1 == 1;
                let i = if hi { (i0[a] + 1).min(self.shape[a] - 1) } else { i0[a] };
                w *= if hi { t[a] } else { 1.0 - t[a] };
                o += i * self.strides[a];
            }
            if w != 0.0 {
                acc += w * src[o] as f64;
            }
        }
        acc as f32
    }
}

/// Samples `img` on a grid of `shape` where output voxel `p` reads input position `m · p`; linear (images,
/// edge values held at the border) or nearest (labels); positions outside the image give 0.
pub fn resample_to_grid(img: &Image, shape: &[usize], m: &Affine, nearest: bool, affine: Affine) -> Result<Image> {
    let nd = img.ndim();
    let n_new: usize = shape.iter().product();
    let mut data = vec![0f32; n_new * img.channels()];
    let sampler = Sampler::new(img, Outside::Zero);
    for c in 0..img.channels() {
        let src = img.channel(c);
        let dst = &mut data[c * n_new..(c + 1) * n_new];
        for_each_index(shape, |lin, idx| {
            let mut p = [0f64; 3];
            for (r, pr) in p.iter_mut().enumerate().take(nd) {
                *pr = (0..nd).map(|k| m[r][k] * idx[k] as f64).sum::<f64>() + m[r][3];
            }
            dst[lin] = if nearest { sampler.nearest(src, &p) } else { sampler.linear(src, &p) };
        });
    }
    Image::new(data, shape.to_vec(), img.channels(), affine, img.dtype())
}

/// Resamples `img` onto another grid (`shape`, `affine`): each output voxel takes the value at its world position,
/// linear for images or nearest for labels, 0 outside.
pub fn resample_onto(img: &Image, shape: &[usize], affine: &Affine, nearest: bool) -> Result<Image> {
    if shape.len() != img.ndim() {
        return Err(DataError::Invalid(format!("target grid has {} axes, the image {}", shape.len(), img.ndim())));
    }
    let a = img.affine();
    let m3 = [[a[0][0], a[0][1], a[0][2]], [a[1][0], a[1][1], a[1][2]], [a[2][0], a[2][1], a[2][2]]];
    let inv = mat3_inv(&m3).ok_or_else(|| DataError::Invalid("the image's affine is singular".into()))?;
    let mut ainv = identity();
    for r in 0..3 {
        for c in 0..3 {
            ainv[r][c] = inv[r][c];
        }
        ainv[r][3] = -(0..3).map(|k| inv[r][k] * a[k][3]).sum::<f64>();
    }
    resample_to_grid(img, shape, &compose(&ainv, affine), nearest, *affine)
}

/// The cubic B-spline kernel `β³(u)`: `2/3 − |u|² + |u|³/2` for `|u| < 1`, `(2 − |u|)³/6` for `|u| < 2`, else 0.
pub fn cubic_bspline(u: f64) -> f64 {
    let a = u.abs();
    if a < 1.0 {
        2.0 / 3.0 - a * a + a * a * a / 2.0
    } else if a < 2.0 {
        (2.0 - a).powi(3) / 6.0
    } else {
        0.0
    }
}

/// Inverse of a 3×3 matrix (`None` when singular).
pub fn mat3_inv(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-12 {
        return None;
    }
    let mut o = [[0.0; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
            let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
            o[r][c] = (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) / det;
        }
    }
    Some(o)
}

/// `mask` with its enclosed holes filled: background components (6-connected) that touch no border of the grid
/// (along the third axis only when it has more than one slice, so a 2D mask fills holes in its plane).
pub fn fill_holes(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let (id, sizes) = connected_components(shape, |v| !mask[v]);
    let [nx, ny, nz] = shape;
    let mut open = vec![false; sizes.len()];
    for (v, &c) in id.iter().enumerate() {
        let (x, y, z) = (v % nx, v / nx % ny, v / (nx * ny));
        if c != u32::MAX && (x == 0 || x + 1 == nx || y == 0 || y + 1 == ny || ((z == 0 || z + 1 == nz) && nz > 1)) {
            open[c as usize] = true;
        }
    }
    mask.iter().zip(&id).map(|(&m, &c)| m || (c != u32::MAX && !open[c as usize])).collect()
}

/// Connected components (6-connectivity) of the voxels where `inside` holds: a component id per voxel
/// (`u32::MAX` outside) and each component's size.
pub fn connected_components(shape: [usize; 3], inside: impl Fn(usize) -> bool) -> (Vec<u32>, Vec<usize>) {
    let n = shape.iter().product();
    let mut id = vec![u32::MAX; n];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    let [nx, ny, nz] = shape;
    for start in 0..n {
        if id[start] != u32::MAX || !inside(start) {
            continue;
        }
        let c = sizes.len() as u32;
        id[start] = c;
        stack.push(start);
        let mut size = 0;
        while let Some(v) = stack.pop() {
            size += 1;
            let (x, y, z) = (v % nx, v / nx % ny, v / (nx * ny));
            let mut visit = |u: usize| {
                if id[u] == u32::MAX && inside(u) {
                    id[u] = c;
                    stack.push(u);
                }
            };
            if x > 0 {
                visit(v - 1)
            }
            if x + 1 < nx {
                visit(v + 1)
            }
            if y > 0 {
                visit(v - nx)
            }
            if y + 1 < ny {
                visit(v + nx)
            }
            if z > 0 {
                visit(v - nx * ny)
            }
            if z + 1 < nz {
                visit(v + nx * ny)
            }
        }
        sizes.push(size);
    }
    (id, sizes)
}

/// Euclidean distance (mm) from every voxel to the nearest `true` voxel, by the separable exact transform of
/// Felzenszwalb and Huttenlocher with anisotropic spacing.
pub fn distance_map(features: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut d: Vec<f64> = features.iter().map(|&f| if f { 0.0 } else { f64::INFINITY }).collect();
    let strides = [1, shape[0], shape[0] * shape[1]];
    for axis in 0..3 {
        let len = shape[axis];
        if len < 2 {
            continue;
        }
        let (s, h) = (strides[axis], spacing[axis]);
        let mut line = vec![0.0; len];
        let others: Vec<usize> = (0..d.len()).filter(|&i| (i / s) % len == 0).collect();
        for start in others {
            for (t, v) in line.iter_mut().enumerate() {
                *v = d[start + t * s];
            }
            let out = envelope(&line, h);
            for (t, v) in out.into_iter().enumerate() {
                d[start + t * s] = v;
            }
        }
    }
    d.into_iter().map(f64::sqrt).collect()
}

/// One-dimensional squared distance transform of sampled function `f` with sample spacing `h`.
fn envelope(f: &[f64], h: f64) -> Vec<f64> {
    let n = f.len();
    let finite: Vec<usize> = (0..n).filter(|&q| f[q].is_finite()).collect();
    if finite.is_empty() {
        return vec![f64::INFINITY; n];
    }
    let pos = |q: usize| q as f64 * h;
    let mut v: Vec<usize> = Vec::with_capacity(n);
    let mut z: Vec<f64> = Vec::with_capacity(n + 1);
    for &q in &finite {
        loop {
            match v.last() {
                None => {
                    v.push(q);
                    z.clear();
                    z.push(f64::NEG_INFINITY);
                    break;
                }
                Some(&p) => {
                    let s = ((f[q] + pos(q).powi(2)) - (f[p] + pos(p).powi(2))) / (2.0 * (pos(q) - pos(p)));
                    if s <= *z.last().unwrap_or(&f64::NEG_INFINITY) {
                        v.pop();
                        z.pop();
                        if v.is_empty() {
                            continue;
                        }
                    } else {
                        v.push(q);
                        z.push(s);
                        break;
                    }
                }
            }
        }
    }
    z.push(f64::INFINITY);
    let mut out = vec![0.0; n];
    let mut k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < pos(q) {
            k += 1;
        }
        *o = (pos(q) - pos(v[k])).powi(2) + f[v[k]];
    }
    out
}
