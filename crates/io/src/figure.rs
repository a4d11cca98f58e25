//! Figures for run folders: 2D panels (grey images, heat and diverging maps, label overlays) composed side by side
//! into one RGB picture, written as PNG by the tasks' evaluations so that reports can show them.
use crate::{IDENTITY, Image, Result};

/// How a panel's values become colours.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Colour {
    /// Grey between `lo` and `hi`.
    Grey {
        /// Black.
        lo: f32,
        /// White.
        hi: f32,
    },
    /// Black → red → yellow → white from 0 to `max`.
    Heat {
        /// White.
        max: f32,
    },
    /// Blue below `centre`, white at it, red above, saturating at `centre ± span`.
    Diverging {
        /// White.
        centre: f32,
        /// Distance to full colour.
        span: f32,
    },
}

/// One panel: `w × h` values, row-major with the first row at the top.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Values.
    pub data: Vec<f32>,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Colour map.
    pub colour: Colour,
}

/// The 1st and 99th percentiles of values (finite ones), for a grey range.
pub fn robust_range(values: &[f32]) -> (f32, f32) {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_by(f32::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (q(0.01), q(0.99));
    if hi > lo { (lo, hi) } else { (lo, lo + 1.0) }
}

fn rgb(colour: Colour, v: f32) -> [f32; 3] {
    if !v.is_finite() {
        return [255.0, 0.0, 255.0];
    }
    match colour {
        Colour::Grey { lo, hi } => {
            let g = ((v - lo) / (hi - lo).max(1e-12)).clamp(0.0, 1.0) * 255.0;
            [g, g, g]
        }
        Colour::Heat { max } => {
            let t = (v / max.max(1e-12)).clamp(0.0, 1.0) * 3.0;
            [(t.min(1.0)) * 255.0, (t - 1.0).clamp(0.0, 1.0) * 255.0, (t - 2.0).clamp(0.0, 1.0) * 255.0]
        }
        Colour::Diverging { centre, span } => {
            let t = ((v - centre) / span.max(1e-12)).clamp(-1.0, 1.0);
            if t >= 0.0 { [255.0, 255.0 * (1.0 - t), 255.0 * (1.0 - t)] } else { [255.0 * (1.0 + t), 255.0 * (1.0 + t), 255.0] }
        }
    }
}

/// Panels side by side, `gap` white pixels apart, as an RGB image (`uint8` values) ready for
/// [`save_2d`](crate::save_2d).
pub fn compose(panels: &[Panel], gap: usize) -> Result<Image> {
    let width = panels.iter().map(|p| p.w).sum::<usize>() + gap * panels.len().saturating_sub(1);
    let height = panels.iter().map(|p| p.h).max().unwrap_or(1).max(1);
    let n = width.max(1) * height;
    let mut out = vec![255f32; 3 * n];
    let mut left = 0;
    for p in panels {
        for y in 0..p.h {
            for x in 0..p.w {
                let c = rgb(p.colour, p.data[y * p.w + x]);
                for k in 0..3 {
                    out[k * n + (left + x) + width * y] = c[k].round();
                }
            }
        }
        left += p.w + gap;
    }
    Image::new(out, vec![width.max(1), height], 3, IDENTITY, "uint8")
}

/// A checkerboard of two equally sized panels' values in `tiles × tiles` squares.
pub fn checkerboard(a: &[f32], b: &[f32], w: usize, h: usize, tiles: usize) -> Vec<f32> {
    let (tw, th) = ((w / tiles.max(1)).max(1), (h / tiles.max(1)).max(1));
    (0..w * h).map(|i| if ((i % w) / tw + (i / w) / th).is_multiple_of(2) { a[i] } else { b[i] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_are_placed_side_by_side_in_their_colours() {
        let grey = Panel { data: vec![0.0, 1.0, 2.0, 3.0], w: 2, h: 2, colour: Colour::Grey { lo: 0.0, hi: 3.0 } };
        let heat = Panel { data: vec![1.0], w: 1, h: 1, colour: Colour::Heat { max: 1.0 } };
        let img = compose(&[grey, heat], 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(img.shape(), &[4, 2]);
        let n = 8;
        let px = |x: usize, y: usize| [0, 1, 2].map(|k| img.data()[k * n + x + 4 * y]);
        assert_eq!(px(0, 0), [0.0; 3]);
        assert_eq!(px(1, 1), [255.0; 3]);
        assert_eq!(px(2, 0), [255.0; 3], "the gap is white");
        assert_eq!(px(3, 0), [255.0; 3], "heat at its maximum is white");
        assert_eq!(px(3, 1), [255.0; 3], "below a shorter panel is white");
        assert_eq!(checkerboard(&[1.0; 4], &[2.0; 4], 2, 2, 2), vec![1.0, 2.0, 2.0, 1.0]);
    }
}
