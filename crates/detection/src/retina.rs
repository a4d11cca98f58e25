//! The anchor-based box detector: RetinaNet's anchors, focal loss and box regression on the feature pyramid of a
//! U-Net decoder (Retina U-Net, Jaeger et al. 2018, nnDetection's architecture), in 2D and 3D.
//!
//! Every decoder level of stride `s` (1, 2, 4, …) carries three anchors per location, squares or cubes of side
//! `4·s·2^(k/3)` voxels (k = 0, 1, 2) centred on the location. An anchor whose IoU with a reference box is at least
//! 0.5 is positive (the box of highest IoU), below 0.4 negative, in between ignored; each box's best anchor is
//! positive too. The loss is the sigmoid focal loss (α = 0.25, γ = 2) over positive and negative anchors plus a
//! smooth-L1 loss of the box deltas `((c − c_a)/s_a, ln(s/s_a))` at positive anchors, both divided by the number of
//! positives. The class logit carries the fixed prior of [`crate::model::PRIOR_LOGIT`] (RetinaNet's bias
//! initialisation at 0.01). Each head has `3 · (1 + 2·dims)` channels: per anchor a class logit, the centre deltas and the
//! log-size deltas, axes in image order.
//!
//! ```
//! use vesalius_detection::retina::{anchor_sides, match_anchors, Level};
//! use vesalius_eval::detection::Aabb;
//! // One 2D level of stride 4 on a 16×16 patch: 4×4 locations, three anchors each.
//! let level = Level { stride: 4, grid: [4, 4, 1] };
//! assert_eq!(anchor_sides(4), [16.0, 16.0 * 2f64.powf(1.0 / 3.0), 16.0 * 2f64.powf(2.0 / 3.0)]);
//! // Location (1, 1) covers voxels 4-7 along each axis: its first anchor is the square of side 16 around 5.5.
//! let boxes = [Aabb::new([-2.5, -2.5, 0.0], [13.5, 13.5, 1.0])];
//! let m = match_anchors(&level, 2, &boxes);
//! // That anchor covers the box exactly: positive, zero deltas.
//! let i = m.index(0, [1, 1, 0]);
//! assert_eq!(m.class[i], 1.0);
//! assert!(m.deltas[i].iter().all(|d| d.abs() < 1e-9));
//! ```
use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::backend::Backend;
use vesalius_eval::detection::Aabb;

/// Anchors per location.
pub const ANCHORS: usize = 3;

/// One pyramid level of a patch: its stride and grid (`[nx, ny, nz]`, `nz = 1` in 2D).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// Voxels per location along each axis.
    pub stride: usize,
    /// Locations along each axis.
    pub grid: [usize; 3],
}

/// The anchor sides (voxels) of a level of stride `stride`.
pub fn anchor_sides(stride: usize) -> [f64; 3] {
    std::array::from_fn(|k| 4.0 * stride as f64 * 2f64.powf(k as f64 / 3.0))
}

/// The anchor `k` at location `cell` of a level, as a box in voxel coordinates of the patch (the edges of voxel
/// `v` are `v − 0.5` and `v + 0.5`, so a location covers voxels `s·i … s·i + s − 1`).
pub fn anchor_box(level: &Level, nd: usize, k: usize, cell: [usize; 3]) -> Aabb {
    let side = anchor_sides(level.stride)[k];
    let s = level.stride as f64;
    let c: [f64; 3] = std::array::from_fn(|a| if a < nd { cell[a] as f64 * s + (s - 1.0) / 2.0 } else { 0.0 });
    let half: [f64; 3] = std::array::from_fn(|a| if a < nd { side / 2.0 } else { 0.5 });
    Aabb::new(std::array::from_fn(|a| c[a] - half[a]), std::array::from_fn(|a| c[a] + half[a]))
}

/// Targets of one level: per anchor (index [`Matches::index`]) the class target, the loss weight (0: ignored),
/// and the box deltas of positives.
#[derive(Clone, Debug, PartialEq)]
pub struct Matches {
    /// 1 for positive anchors.
    pub class: Vec<f32>,
    /// 1 for positive and negative anchors, 0 for ignored ones.
    pub weight: Vec<f32>,
    /// `(c − c_a)/s_a` then `ln(s/s_a)` per axis (first `dims` of each used).
    pub deltas: Vec<[f64; 6]>,
    grid: [usize; 3],
}

impl Matches {
    /// The index of anchor `k` at `cell`.
    pub fn index(&self, k: usize, cell: [usize; 3]) -> usize {
        k * self.grid.iter().product::<usize>() + cell[0] + self.grid[0] * (cell[1] + self.grid[1] * cell[2])
    }
}

fn box_iou(a: &Aabb, b: &Aabb, nd: usize) -> f64 {
    // In 2D only the first two axes count.
    let inter: f64 = (0..nd).map(|k| (a.hi[k].min(b.hi[k]) - a.lo[k].max(b.lo[k])).max(0.0)).product();
    let va: f64 = (0..nd).map(|k| a.hi[k] - a.lo[k]).product();
    let vb: f64 = (0..nd).map(|k| b.hi[k] - b.lo[k]).product();
    let union = va + vb - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Matches the anchors of a level with reference boxes (voxel coordinates of the patch).
pub fn match_anchors(level: &Level, nd: usize, boxes: &[Aabb]) -> Matches {
    let per = level.grid.iter().product::<usize>();
    let n = ANCHORS * per;
    let mut best = vec![(0.0f64, usize::MAX); n];
    let mut box_best = vec![(0.0f64, usize::MAX); boxes.len()];
    let mut anchors = Vec::with_capacity(n);
    for k in 0..ANCHORS {
        for z in 0..level.grid[2] {
            for y in 0..level.grid[1] {
                for x in 0..level.grid[0] {
                    let a = anchor_box(level, nd, k, [x, y, z]);
                    let i = anchors.len();
                    for (b, gt) in boxes.iter().enumerate() {
                        let iou = box_iou(&a, gt, nd);
                        if iou > best[i].0 {
                            best[i] = (iou, b);
                        }
                        if iou > box_best[b].0 {
                            box_best[b] = (iou, i);
                        }
                    }
                    anchors.push(a);
                }
            }
        }
    }
    let mut m = Matches { class: vec![0.0; n], weight: vec![1.0; n], deltas: vec![[0.0; 6]; n], grid: level.grid };
    let assign = |i: usize, b: usize, m: &mut Matches| {
        m.class[i] = 1.0;
        m.weight[i] = 1.0;
        let (a, g) = (&anchors[i], &boxes[b]);
        for ax in 0..nd {
            let (sa, sg) = (a.hi[ax] - a.lo[ax], (g.hi[ax] - g.lo[ax]).max(1e-3));
            let (ca, cg) = (0.5 * (a.lo[ax] + a.hi[ax]), 0.5 * (g.lo[ax] + g.hi[ax]));
            m.deltas[i][ax] = (cg - ca) / sa;
            m.deltas[i][3 + ax] = (sg / sa).ln();
        }
    };
    for i in 0..n {
        let (iou, b) = best[i];
        if iou >= 0.5 {
            assign(i, b, &mut m);
        } else if iou >= 0.4 {
            m.weight[i] = 0.0;
        }
    }
    for (b, &(iou, i)) in box_best.iter().enumerate() {
        if iou > 0.0 && i != usize::MAX {
            assign(i, b, &mut m);
        }
    }
    m
}

/// Channels of a head for `nd` dimensions.
pub fn head_channels(nd: usize) -> usize {
    ANCHORS * (1 + 2 * nd)
}

/// The focal and box loss of one level's head output `[n, head_channels, d, h, w]` against the matches of each
/// patch of the batch; returns `(sum of losses, positives)` so levels and patches share one normaliser.
pub fn level_loss<B: Backend>(out: Tensor<B, 5>, matches: &[Matches], nd: usize) -> (Tensor<B, 1>, f64) {
    let [n, _, d, h, w] = out.dims();
    let device = out.device();
    let per = 1 + 2 * nd;
    let cells = d * h * w;
    // Rearrange to [n, anchors, per, cells].
    let x = out.reshape([n, ANCHORS, per, cells]);
    let logit = x.clone().slice([0..n, 0..ANCHORS, 0..1, 0..cells]).reshape([n, ANCHORS, cells]) + crate::model::PRIOR_LOGIT;
    let deltas = x.slice([0..n, 0..ANCHORS, 1..per, 0..cells]);
    let mut cls = Vec::with_capacity(n * ANCHORS * cells);
    let mut wgt = Vec::with_capacity(n * ANCHORS * cells);
    let mut tgt = Vec::with_capacity(n * ANCHORS * 2 * nd * cells);
    let mut pos_mask = Vec::with_capacity(n * ANCHORS * cells);
    for m in matches {
        cls.extend_from_slice(&m.class);
        wgt.extend_from_slice(&m.weight);
        pos_mask.extend_from_slice(&m.class);
        for k in 0..ANCHORS {
            for j in 0..2 * nd {
                let slot = if j < nd { j } else { 3 + j - nd };
                for c in 0..cells {
                    tgt.push(m.deltas[k * cells + c][slot] as f32);
                }
            }
        }
    }
    let positives: f64 = cls.iter().map(|&v| v as f64).sum();
    let t3 = |v: Vec<f32>| Tensor::<B, 3>::from_data(burn::tensor::TensorData::new(v, [n, ANCHORS, cells]), &device);
    let (y, wt, pm) = (t3(cls), t3(wgt), t3(pos_mask));
    // Sigmoid focal loss, α = 0.25, γ = 2.
    let p = sigmoid(logit.clone());
    let log_p = log_sigmoid(logit.clone());
    let log_q = log_sigmoid(logit.neg());
    let pos_term = log_p * (p.clone().neg() + 1.0).powi_scalar(2) * y.clone() * 0.25;
    let neg_term = log_q * p.powi_scalar(2) * (y.neg() + 1.0) * 0.75;
    let focal = ((pos_term + neg_term) * wt).sum().neg();
    // Smooth L1 (β = 1/9, as RetinaNet) on positives.
    let target = Tensor::<B, 4>::from_data(burn::tensor::TensorData::new(tgt, [n, ANCHORS, 2 * nd, cells]), &device);
    let diff = (deltas - target).abs();
    let beta = 1.0 / 9.0;
    let small = diff.clone().lower_elem(beta).float();
    let sl1 = small.clone() * diff.clone().powi_scalar(2) * (0.5 / beta) + (small.neg() + 1.0) * (diff - 0.5 * beta);
    let pm4 = pm.reshape([n, ANCHORS, 1, cells]);
    let boxl = (sl1 * pm4).sum();
    (focal + boxl, positives)
}

/// A decoded anchor: its score and its box in patch (or scan) voxel coordinates.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Sigmoid of the class logit.
    pub score: f64,
    /// The regressed box.
    pub bbox: Aabb,
}

/// Decodes one level's outputs for a scan: `out` holds `head_channels(nd)` values per cell (`[channel][cell]`),
/// cells of the level grid. Anchors scoring at least `min_score` are returned.
pub fn decode(out: &[f32], level: &Level, nd: usize, min_score: f64) -> Vec<Decoded> {
    let per = 1 + 2 * nd;
    let cells: usize = level.grid.iter().product();
    let mut found = Vec::new();
    for k in 0..ANCHORS {
        for z in 0..level.grid[2] {
            for y in 0..level.grid[1] {
                for x in 0..level.grid[0] {
                    let c = x + level.grid[0] * (y + level.grid[1] * z);
                    let logit = out[(k * per) * cells + c] as f64 + crate::model::PRIOR_LOGIT;
                    let score = 1.0 / (1.0 + (-logit).exp());
                    if score < min_score {
                        continue;
                    }
                    let a = anchor_box(level, nd, k, [x, y, z]);
                    let mut lo = a.lo;
                    let mut hi = a.hi;
                    for ax in 0..nd {
                        let sa = a.hi[ax] - a.lo[ax];
                        let ca = 0.5 * (a.lo[ax] + a.hi[ax]);
                        let dc = out[(k * per + 1 + ax) * cells + c] as f64;
                        let ds = (out[(k * per + 1 + nd + ax) * cells + c] as f64).clamp(-4.0, 4.0);
                        let cc = ca + dc * sa;
                        let ss = sa * ds.exp();
                        lo[ax] = cc - ss / 2.0;
                        hi[ax] = cc + ss / 2.0;
                    }
                    found.push(Decoded { score, bbox: Aabb { lo, hi } });
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_the_matched_deltas_gives_back_the_boxes_in_2d_and_3d() {
        for nd in [2, 3] {
            let level = Level { stride: 2, grid: if nd == 3 { [8, 8, 8] } else { [8, 8, 1] } };
            let z = |v: f64| if nd == 3 { v } else { -0.5 };
            let zh = |v: f64| if nd == 3 { v } else { 0.5 };
            let boxes = [Aabb::new([2.2, 3.1, z(1.0)], [11.0, 9.5, zh(8.7)]), Aabb::new([9.0, 1.0, z(6.0)], [14.5, 6.0, zh(12.0)])];
            let m = match_anchors(&level, nd, &boxes);
            let cells: usize = level.grid.iter().product();
            let per = 1 + 2 * nd;
            // A perfect head: +∞-like logits at positives, the matched deltas.
            let mut out = vec![-20.0f32; ANCHORS * per * cells];
            for k in 0..ANCHORS {
                for c in 0..cells {
                    let i = k * cells + c;
                    if m.class[i] == 1.0 {
                        out[(k * per) * cells + c] = 20.0;
                        for a in 0..nd {
                            out[(k * per + 1 + a) * cells + c] = m.deltas[i][a] as f32;
                            out[(k * per + 1 + nd + a) * cells + c] = m.deltas[i][3 + a] as f32;
                        }
                    }
                }
            }
            let found = decode(&out, &level, nd, 0.5);
            assert!(!found.is_empty());
            for d in &found {
                let best = boxes.iter().map(|b| box_iou(&d.bbox, b, nd)).fold(0.0, f64::max);
                assert!(best > 0.999, "{nd}D: decoded box {:?} matches no reference (IoU {best})", d.bbox);
            }
            // Every box has at least one positive anchor.
            for b in &boxes {
                assert!(found.iter().any(|d| box_iou(&d.bbox, b, nd) > 0.999));
            }
        }
    }
}
