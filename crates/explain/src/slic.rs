//! SLIC superpixels and supervoxels (Achanta et al. 2012).
use crate::Input;

/// Segments of about `n_segments` compact regions of similar intensity, 2D or 3D: seeds on a regular grid of step
/// `S = (N / n_segments)^(1/d)`, ten rounds of k-means in (intensity, position) within `2S` of each centre with
/// distance `√(Δi² + (Δp / S)² · m²)` — intensities are the channel mean after scaling each channel to [0, 1], and
/// `m` is `compactness` — then pieces smaller than a quarter of the mean size joined to a neighbour. Labels are
/// 0, 1, … in raster order of their first position.
pub fn slic(x: &Input, n_segments: usize, compactness: f32) -> Vec<u32> {
    let n = x.positions();
    let d = x.shape.len();
    let mut inten = vec![0f32; n];
    for c in 0..x.channels {
        let ch = &x.data[c * n..(c + 1) * n];
        let (lo, hi) = ch.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        for (i, v) in ch.iter().enumerate() {
            inten[i] += (v - lo) / span / x.channels as f32;
        }
    }
    let coords = |mut i: usize| -> Vec<usize> {
        let mut c = vec![0; d];
        for a in (0..d).rev() {
            c[a] = i % x.shape[a];
            i /= x.shape[a];
        }
        c
    };
    let step = ((n as f32 / n_segments.max(1) as f32).powf(1.0 / d as f32)).max(1.0);
    // seeds at the centres of a regular grid
    let per_axis: Vec<usize> = x.shape.iter().map(|&s| ((s as f32 / step).round() as usize).max(1)).collect();
    let mut centres: Vec<(Vec<f32>, f32)> = Vec::new();
    let total: usize = per_axis.iter().product();
    for k in 0..total {
        let mut rem = k;
        let mut pos = vec![0f32; d];
        for a in (0..d).rev() {
            let j = rem % per_axis[a];
            rem /= per_axis[a];
            pos[a] = (j as f32 + 0.5) * x.shape[a] as f32 / per_axis[a] as f32 - 0.5;
        }
        let lin = pos.iter().enumerate().fold(0, |acc, (a, &p)| acc * x.shape[a] + (p.round() as usize).min(x.shape[a] - 1));
        centres.push((pos, inten[lin]));
    }
    let mut label = vec![0u32; n];
    let m2 = compactness * compactness / (step * step);
    for _ in 0..10 {
        let mut best = vec![f32::INFINITY; n];
        for (k, (pos, ci)) in centres.iter().enumerate() {
            let lo: Vec<usize> = (0..d).map(|a| (pos[a] - 2.0 * step).floor().max(0.0) as usize).collect();
            let hi: Vec<usize> = (0..d).map(|a| ((pos[a] + 2.0 * step).ceil() as usize).min(x.shape[a] - 1)).collect();
            let ext: Vec<usize> = (0..d).map(|a| hi[a] - lo[a] + 1).collect();
            let count: usize = ext.iter().product();
            for j in 0..count {
                let mut rem = j;
                let mut lin = 0;
                let mut ds = 0.0;
                let mut idx = vec![0usize; d];
                for a in (0..d).rev() {
                    idx[a] = lo[a] + rem % ext[a];
                    rem /= ext[a];
                }
                for a in 0..d {
                    lin = lin * x.shape[a] + idx[a];
                    ds += (idx[a] as f32 - pos[a]).powi(2);
                }
                let dist = (inten[lin] - ci).powi(2) + ds * m2;
                if dist < best[lin] {
                    best[lin] = dist;
                    label[lin] = k as u32;
                }
            }
        }
        let mut sum = vec![(vec![0f32; d], 0f32, 0f32); centres.len()];
        for i in 0..n {
            let s = &mut sum[label[i] as usize];
            for (a, c) in coords(i).into_iter().enumerate() {
                s.0[a] += c as f32;
            }
            s.1 += inten[i];
            s.2 += 1.0;
        }
        for (c, s) in centres.iter_mut().zip(&sum) {
            if s.2 > 0.0 {
                *c = (s.0.iter().map(|v| v / s.2).collect(), s.1 / s.2);
            }
        }
    }
    connect(&x.shape, &label, (n / centres.len().max(1) / 4).max(1))
}

/// Splits every label into its face-connected pieces, joins pieces smaller than `min_size` to the segment of a
/// neighbouring position, and numbers the segments 0, 1, … in raster order.
fn connect(shape: &[usize], label: &[u32], min_size: usize) -> Vec<u32> {
    let n = label.len();
    let d = shape.len();
    let strides: Vec<usize> = (0..d).map(|a| shape[a + 1..].iter().product()).collect();
    let neighbours = |i: usize| -> Vec<usize> {
        let mut out = Vec::with_capacity(2 * d);
        for a in 0..d {
            let c = (i / strides[a]) % shape[a];
            if c > 0 {
                out.push(i - strides[a]);
            }
            if c + 1 < shape[a] {
                out.push(i + strides[a]);
            }
        }
        out
    };
    let mut out = vec![u32::MAX; n];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for s in 0..n {
        if out[s] != u32::MAX {
            continue;
        }
        let mut members = vec![s];
        out[s] = next;
        stack.push(s);
        let mut adjacent = None;
        while let Some(i) = stack.pop() {
            for j in neighbours(i) {
                if out[j] == u32::MAX && label[j] == label[s] {
                    out[j] = next;
                    members.push(j);
                    stack.push(j);
                } else if out[j] != u32::MAX && out[j] != next {
                    adjacent = Some(out[j]);
                }
            }
        }
        match adjacent {
            Some(a) if members.len() < min_size => members.iter().for_each(|&i| out[i] = a),
            _ => next += 1,
        }
    }
    // consecutive numbers in raster order
    let mut map = std::collections::HashMap::new();
    out.iter()
        .map(|&l| {
            let k = map.len() as u32;
            *map.entry(l).or_insert(k)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_halves_of_different_intensity_are_not_mixed() {
        // 24 × 24: left half 0, right half 1; no segment may straddle the edge
        let w = 24;
        let data: Vec<f32> = (0..w * w).map(|i| if i % w < w / 2 { 0.0 } else { 1.0 }).collect();
        let x = Input::new(data.clone(), 1, vec![w, w]).unwrap_or_else(|e| panic!("{e}"));
        let seg = slic(&x, 16, 0.1);
        let k = *seg.iter().max().unwrap_or(&0) as usize + 1;
        assert!((8..=32).contains(&k), "{k} segments");
        for s in 0..k as u32 {
            let vals: Vec<f32> = (0..w * w).filter(|&i| seg[i] == s).map(|i| data[i]).collect();
            assert!(vals.iter().all(|&v| v == vals[0]), "segment {s} mixes the halves");
        }
    }

    #[test]
    fn supervoxels_are_connected_and_numbered_from_zero() {
        let (d, h, w) = (8, 12, 12);
        let data: Vec<f32> = (0..d * h * w).map(|i| ((i * 7919) % 13) as f32 / 13.0).collect();
        let x = Input::new(data, 1, vec![d, h, w]).unwrap_or_else(|e| panic!("{e}"));
        let seg = slic(&x, 20, 0.5);
        assert_eq!(seg[0], 0);
        let k = *seg.iter().max().unwrap_or(&0) as usize + 1;
        // every label is one face-connected piece
        for s in 0..k as u32 {
            let relabelled = connect(&x.shape, &seg.iter().map(|&l| u32::from(l == s)).collect::<Vec<_>>(), 1);
            let pieces: std::collections::BTreeSet<u32> = (0..seg.len()).filter(|&i| seg[i] == s).map(|i| relabelled[i]).collect();
            assert_eq!(pieces.len(), 1, "segment {s} is in {} pieces", pieces.len());
        }
    }
}
