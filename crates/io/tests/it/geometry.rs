//! Geometry operations keep every voxel at its world coordinate (a seeded property test over random affines,
//! shapes and operations), and known answers for each operation.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vesalius_io::geometry::{Interp, crop_or_pad, flip, permute, reorient, resample, slice};
use vesalius_io::nifti::{NiftiType, save};
use vesalius_io::{self as io, Affine, Image};

fn random_affine(rng: &mut ChaCha8Rng) -> Affine {
    // A random rotation (from a random unit quaternion), random voxel sizes, sometimes a reflection.
    let q: [f64; 4] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
    let n = q.iter().map(|v| v * v).sum::<f64>().sqrt();
    let [a, b, c, d] = q.map(|v| v / n);
    let r = [
        [a * a + b * b - c * c - d * d, 2. * (b * c - a * d), 2. * (b * d + a * c)],
        [2. * (b * c + a * d), a * a - b * b + c * c - d * d, 2. * (c * d - a * b)],
        [2. * (b * d - a * c), 2. * (c * d + a * b), a * a - b * b - c * c + d * d],
    ];
    let z: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.5..3.0));
    let flip = if rng.random_bool(0.3) { -1.0 } else { 1.0 };
    let mut m = [[0.0; 4]; 4];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * z[j] * if j == 2 { flip } else { 1.0 };
        }
        m[i][3] = rng.random_range(-100.0..100.0);
    }
    m[3][3] = 1.0;
    m
}

fn random_image(rng: &mut ChaCha8Rng) -> Image {
    let shape: Vec<usize> = (0..3).map(|_| rng.random_range(2..7)).collect();
    let n: usize = shape.iter().product();
    let data = (0..2 * n).map(|i| i as f32).collect();
    Image::new(data, shape, 2, random_affine(rng), "float32").unwrap()
}

/// For every voxel of `new`, the voxel of `old` at the same world position holds the same values.
fn world_preserved(old: &Image, new: &Image) {
    let inv = invert(old.affine());
    let n_new = new.voxels();
    let n_old = old.voxels();
    let s = new.shape().to_vec();
    for k in 0..s[2] {
        for j in 0..s[1] {
            for i in 0..s[0] {
                let w = new.world([i as f64, j as f64, k as f64]);
                let o: Vec<f64> = (0..3).map(|r| (0..3).map(|c| inv[r][c] * w[c]).sum::<f64>() + inv[r][3]).collect();
                let oi: Vec<usize> = o.iter().map(|v| v.round() as usize).collect();
                for (a, v) in o.iter().enumerate() {
                    assert!((v - v.round()).abs() < 1e-6, "non-integer source index {o:?}");
                    assert!(oi[a] < old.shape()[a]);
                }
                let lin_new = i + s[0] * (j + s[1] * k);
                let lin_old = oi[0] + old.shape()[0] * (oi[1] + old.shape()[1] * oi[2]);
                for c in 0..2 {
                    assert_eq!(new.data()[c * n_new + lin_new], old.data()[c * n_old + lin_old]);
                }
            }
        }
    }
}

fn invert(a: &Affine) -> Affine {
    // Inverse of [R t; 0 1] for general 3×3 R (cofactors).
    let m = |r: usize, c: usize| a[r][c];
    let det = m(0, 0) * (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) - m(0, 1) * (m(1, 0) * m(2, 2) - m(1, 2) * m(2, 0))
        + m(0, 2) * (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0));
    let mut inv = [[0.0; 4]; 4];
    for r in 0..3 {
        for c in 0..3 {
            let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
            let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
            inv[r][c] = (m(r1, c1) * m(r2, c2) - m(r1, c2) * m(r2, c1)) / det;
        }
    }
    for r in 0..3 {
        inv[r][3] = -(0..3).map(|c| inv[r][c] * a[c][3]).sum::<f64>();
    }
    inv[3][3] = 1.0;
    inv
}

#[test]
fn every_operation_keeps_world_coordinates() {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    for case in 0..200 {
        let img = random_image(&mut rng);
        let out = match case % 4 {
            0 => flip(&img, rng.random_range(0..3)).unwrap(),
            1 => {
                let mut order = vec![0, 1, 2];
                for i in (1..3).rev() {
                    order.swap(i, rng.random_range(0..=i));
                }
                permute(&img, &order).unwrap()
            }
            2 => reorient(&img, ["RAS", "LPS", "SAL", "IPR"][rng.random_range(0..4)]).unwrap(),
            _ => {
                // A crop fully inside the image (padding has no source voxel to compare with).
                let start: Vec<i64> = img.shape().iter().map(|&d| rng.random_range(0..d as i64)).collect();
                let size: Vec<usize> = img.shape().iter().zip(&start).map(|(&d, &s)| rng.random_range(1..=d - s as usize)).collect();
                crop_or_pad(&img, &start, &size, 0.0).unwrap()
            }
        };
        world_preserved(&img, &out);
    }
}

#[test]
fn reorient_to_ras_gives_ras() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..50 {
        let img = random_image(&mut rng);
        let ras = reorient(&img, "RAS").unwrap();
        assert_eq!(ras.orientation(), "RAS");
        // Diagonal-dominant: each axis's largest world component is positive.
        for a in 0..3 {
            assert!(ras.affine()[a][a] > 0.0);
        }
        assert_eq!(reorient(&ras, "LPI").unwrap().orientation(), "LPI");
    }
}

#[test]
fn flip_twice_and_inverse_permutation_are_identity() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let img = random_image(&mut rng);
    assert_eq!(flip(&flip(&img, 1).unwrap(), 1).unwrap(), img);
    let p = permute(&img, &[2, 0, 1]).unwrap();
    let back = permute(&p, &[1, 2, 0]).unwrap();
    assert_eq!(back.data(), img.data());
    for r in 0..4 {
        for c in 0..4 {
            assert!((back.affine()[r][c] - img.affine()[r][c]).abs() < 1e-12);
        }
    }
}

#[test]
fn padding_fills_and_shifts_the_origin() {
    let img = Image::new((1..=8).map(|v| v as f32).collect(), vec![2, 2, 2], 1, vesalius_io::IDENTITY, "uint8").unwrap();
    let padded = crop_or_pad(&img, &[-1, -1, -1], &[4, 4, 4], -5.0).unwrap();
    assert_eq!(padded.origin(), [-1.0, -1.0, -1.0]);
    assert_eq!(padded.get(&[0, 0, 0]), -5.0);
    assert_eq!(padded.get(&[1, 1, 1]), 1.0);
    assert_eq!(padded.get(&[2, 2, 2]), 8.0);
}

#[test]
fn resampling_known_answers() {
    // A linear ramp along x with 2 mm voxels, resampled to 1 mm: linear interpolation is exact inside.
    let shape = vec![5, 3, 2];
    let data: Vec<f32> = (0..30).map(|i| (i % 5) as f32 * 10.0).collect();
    let mut a = vesalius_io::IDENTITY;
    a[0][0] = 2.0;
    let img = Image::new(data, shape, 1, a, "float32").unwrap();
    let up = resample(&img, &[1.0, 1.0, 1.0], Interp::Linear).unwrap();
    assert_eq!(up.shape(), &[10, 3, 2]);
    assert_eq!(up.spacing(), vec![1.0, 1.0, 1.0]);
    assert_eq!(up.origin(), img.origin());
    for i in 0..9 {
        assert!((up.get(&[i, 1, 1]) - 5.0 * i as f32).abs() < 1e-4, "{i}: {}", up.get(&[i, 1, 1]));
    }
    // Cubic B-spline equals scipy.ndimage.map_coordinates(order=3, mode="mirror") at the same positions:
    // values computed with scipy 1.16 for the ramp 0, 10, …, 40 sampled at 0, 0.5, …, 4.5.
    let scipy = [0.0, 3.392857, 10.0, 15.535714, 20.0, 24.464286, 30.0, 36.607143, 40.0, 36.607143];
    let bs = resample(&img, &[1.0, 1.0, 1.0], Interp::BSpline).unwrap();
    for (i, want) in scipy.iter().enumerate() {
        assert!((bs.get(&[i, 1, 1]) - want).abs() < 1e-3, "{i}: {} vs {want}", bs.get(&[i, 1, 1]));
    }
    // Nearest keeps label values.
    let labels = Image::new((0..30).map(|i| (i % 3) as f32).collect(), vec![5, 3, 2], 1, a, "uint8").unwrap();
    let nn = resample(&labels, &[0.7, 1.3, 0.5], Interp::Nearest).unwrap();
    assert!(nn.data().iter().all(|v| [0.0, 1.0, 2.0].contains(v)));
    // Down-sampling by 2 with linear interpolation picks every other sample exactly.
    let down = resample(&up, &[2.0, 1.0, 1.0], Interp::Linear).unwrap();
    assert_eq!(down.shape(), &[5, 3, 2]);
    assert!(down.data().iter().zip(img.data()).all(|(a, b)| (a - b).abs() < 1e-4));
}

#[test]
fn written_nifti_reads_back_with_data_affine_and_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    use vesalius_io::nifti::{
        NiftiVersion::{V1, V2},
        save_version,
    };
    for (name, dtype, version) in [
        ("a.nii", NiftiType::F32, V1),
        ("b.nii.gz", NiftiType::I16, V1),
        ("c.nii", NiftiType::U8, V1),
        ("d.nii.gz", NiftiType::F64, V1),
        ("e.hdr", NiftiType::I32, V1),
        ("f.nii", NiftiType::F32, V2),
        ("g.nii.gz", NiftiType::U16, V2),
        ("h.hdr", NiftiType::F64, V2),
    ] {
        let img = random_image(&mut rng);
        let path = dir.path().join(name);
        save_version(&path, &img, dtype, version).unwrap();
        if name.ends_with(".hdr") {
            assert!(path.with_extension("img").is_file(), "{name}: the pair's data file");
        }
        let back = io::load(&path).unwrap();
        assert_eq!(back.shape(), img.shape(), "{name}");
        assert_eq!(back.channels(), 2);
        assert_eq!(back.dtype(), dtype.name());
        assert_eq!(back.data(), img.data(), "{name}");
        for r in 0..4 {
            for c in 0..4 {
                assert!((back.affine()[r][c] - img.affine()[r][c]).abs() < 1e-4, "{name}");
            }
        }
        let h = vesalius_io::nifti::read_header(&path).unwrap();
        assert_eq!((h.qform_code, h.sform_code), (2, 2));
        assert_eq!(h.version, if version == V1 { 1 } else { 2 }, "{name}");
        // The qform (quaternion + voxel sizes + qfac) encodes the same rigid-plus-scale affine.
        let q = vesalius_io::nifti::NiftiHeader { sform_code: 0, ..h };
        let qa = q.affine();
        for r in 0..3 {
            for c in 0..4 {
                assert!((qa[r][c] - img.affine()[r][c]).abs() < 1e-4, "{name}: qform [{r}][{c}] {} vs {}", qa[r][c], img.affine()[r][c]);
            }
        }
    }
    // The nifti crate reads what we write.
    let img = random_image(&mut rng);
    let p = dir.path().join("e.nii");
    save(&p, &img, NiftiType::F32).unwrap();
    let obj = nifti::ReaderOptions::new().read_file(&p).unwrap();
    let arr = nifti::IntoNdArray::into_ndarray::<f32>(nifti::NiftiObject::into_volume(obj)).unwrap();
    assert_eq!(arr.t().iter().copied().collect::<Vec<_>>(), img.data());
}

#[test]
fn a_slice_holds_its_voxels_where_they_lie_in_the_volume() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let img = random_image(&mut rng);
    let apply = |m: &Affine, p: [f64; 3]| -> [f64; 3] { std::array::from_fn(|r| (0..3).map(|c| m[r][c] * p[c]).sum::<f64>() + m[r][3]) };
    for axis in 0..3 {
        let index = img.shape()[axis] - 1;
        let s = slice(&img, axis, index).unwrap();
        let kept: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
        assert_eq!(s.shape(), &[img.shape()[kept[0]], img.shape()[kept[1]]]);
        assert_eq!(s.channels(), 2);
        for i in 0..s.shape()[0] {
            for j in 0..s.shape()[1] {
                let mut old = [0usize; 3];
                old[kept[0]] = i;
                old[kept[1]] = j;
                old[axis] = index;
                assert_eq!(s.get(&[i, j]), img.get(&old));
                let (a, b) = (apply(s.affine(), [i as f64, j as f64, 0.0]), apply(img.affine(), old.map(|v| v as f64)));
                assert!((0..3).all(|k| (a[k] - b[k]).abs() < 1e-9), "{a:?} vs {b:?}");
            }
        }
        // The affine stays invertible (the sliced axis is its third direction).
        let det = |m: &Affine| {
            m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        };
        assert!((det(s.affine()).abs() - det(img.affine()).abs()).abs() < 1e-9);
    }
    assert!(slice(&img, 3, 0).is_err());
    assert!(slice(&img, 0, img.shape()[0]).is_err());
    assert!(slice(&s2d(), 0, 0).is_err());
}

fn s2d() -> Image {
    Image::new(vec![0.0; 4], vec![2, 2], 1, vesalius_io::IDENTITY, "uint8").unwrap()
}
