//! Non-maximum suppression in 2D and 3D, within each scan: by box overlap, or by centre distance for point
//! detections.
//!
//! ```
//! use vesalius_detection::{annotations::Detection, nms::nms_points};
//! let d = vec![
//!     Detection::mark("s", [0.0, 0.0, 0.0], 6.0, 0.9),
//!     Detection::mark("s", [2.0, 0.0, 0.0], 6.0, 0.8), // within 3 mm of a better one: suppressed
//!     Detection::mark("s", [9.0, 0.0, 0.0], 6.0, 0.7),
//!     Detection::mark("t", [2.0, 0.0, 0.0], 6.0, 0.1), // another scan: kept
//! ];
//! let kept = nms_points(d, 3.0);
//! assert_eq!(kept.iter().map(|d| d.probability.unwrap()).collect::<Vec<_>>(), [0.9, 0.7, 0.1]);
//! ```
use crate::annotations::Detection;

fn by_probability(mut dets: Vec<Detection>) -> Vec<Detection> {
    // Stable: equal probabilities keep their order.
    dets.sort_by(|a, b| b.probability.unwrap_or(0.0).total_cmp(&a.probability.unwrap_or(0.0)));
    dets
}

/// Keeps, most probable first, each detection whose centre is at least `min_distance_mm` from every kept
/// detection of its scan.
pub fn nms_points(dets: Vec<Detection>, min_distance_mm: f64) -> Vec<Detection> {
    let r2 = min_distance_mm * min_distance_mm;
    let mut kept: Vec<Detection> = Vec::new();
    for d in by_probability(dets) {
        let close = kept.iter().any(|k| k.scan == d.scan && (0..3).map(|a| (k.centre[a] - d.centre[a]).powi(2)).sum::<f64>() < r2);
        if !close {
            kept.push(d);
        }
    }
    kept
}

/// Keeps, most probable first, each detection whose box overlaps no kept box of its scan at IoU ≥ `iou_threshold`.
/// A detection without a box is treated as the cube of its diameter.
pub fn nms_boxes(dets: Vec<Detection>, iou_threshold: f64) -> Vec<Detection> {
    let boxed = |d: &Detection| {
        d.bbox.unwrap_or_else(|| {
            let r = d.diameter_mm.max(0.0) / 2.0;
            vesalius_eval::detection::Aabb::new(d.centre.map(|c| c - r), d.centre.map(|c| c + r))
        })
    };
    let mut kept: Vec<Detection> = Vec::new();
    for d in by_probability(dets) {
        let b = boxed(&d);
        if !kept.iter().any(|k| k.scan == d.scan && boxed(k).iou(&b) >= iou_threshold) {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesalius_eval::detection::Aabb;

    #[test]
    fn boxes_in_2d_and_3d() {
        let b2 = |x: f64, p: f64| Detection::from_box("s", Aabb::new_2d(x, 0.0, x + 10.0, 10.0), Some(p), 2);
        // IoU of a 10-box shifted by 2: 80/120 = 0.667; shifted by 6: 40/160 = 0.25.
        let kept = nms_boxes(vec![b2(0.0, 0.5), b2(2.0, 0.9), b2(6.0, 0.4)], 0.5);
        assert_eq!(kept.iter().map(|d| d.probability.unwrap()).collect::<Vec<_>>(), [0.9, 0.4]);
        let b3 = |z: f64, p: f64| Detection::from_box("s", Aabb::new([0.0, 0.0, z], [4.0, 4.0, z + 4.0]), Some(p), 3);
        let kept = nms_boxes(vec![b3(0.0, 0.9), b3(1.0, 0.8), b3(3.0, 0.7)], 0.5);
        // Shift 1 of 4: IoU 3/5 (suppressed); shift 3: 1/7 (kept).
        assert_eq!(kept.len(), 2);
    }
}
