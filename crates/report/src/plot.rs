//! Line charts and scatter plots as inline SVG (plotters' SVG backend): learning curves, ROC curves with confidence
//! bands, calibration and FROC curves, predicted against observed values.
use plotters::prelude::*;

/// One curve, optionally with a band (x, low, high) drawn under it.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// A shaded band.
    pub band: Vec<(f64, f64, f64)>,
    /// Drawn dashed and grey (a reference line).
    pub reference: bool,
    /// Drawn as unconnected dots (a scatter plot).
    pub markers: bool,
}

/// A chart's frame.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// x range.
    pub x: (f64, f64),
    /// y range.
    pub y: (f64, f64),
    /// Logarithmic x axis.
    pub log_x: bool,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// The SVG text of a chart of `series`.
pub fn line_chart(chart: &Chart, series: &[Series]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (540, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut b = ChartBuilder::on(&root);
        b.caption(&chart.title, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(56);
        let style = |i: usize, s: &Series| -> ShapeStyle {
            if s.reference { RGBColor(150, 150, 150).stroke_width(1) } else { PALETTE[i % PALETTE.len()].stroke_width(2) }
        };
        macro_rules! draw {
            ($ctx:expr) => {{
                let mut ctx = $ctx;
                ctx.configure_mesh()
                    .x_desc(chart.x_label.as_str())
                    .y_desc(chart.y_label.as_str())
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()
                    .map_err(|e| e.to_string())?;
                for (i, s) in series.iter().enumerate() {
                    if !s.band.is_empty() {
                        let colour = PALETTE[i % PALETTE.len()].mix(0.18);
                        let mut poly: Vec<(f64, f64)> = s.band.iter().map(|&(x, lo, _)| (x, lo)).collect();
                        poly.extend(s.band.iter().rev().map(|&(x, _, hi)| (x, hi)));
                        ctx.draw_series(std::iter::once(Polygon::new(poly, colour.filled()))).map_err(|e| e.to_string())?;
                    }
                    let st = style(i, s);
                    let drawn = if s.markers {
                        let dot = PALETTE[i % PALETTE.len()].mix(0.6).filled();
                        ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 2, dot))).map_err(|e| e.to_string())?
                    } else {
                        ctx.draw_series(LineSeries::new(s.points.iter().copied(), st)).map_err(|e| e.to_string())?
                    };
                    if s.name.is_empty() {
                    } else if s.markers {
                        let dot = PALETTE[i % PALETTE.len()].filled();
                        drawn.label(s.name.clone()).legend(move |(x, y)| Circle::new((x + 9, y), 3, dot));
                    } else {
                        drawn.label(s.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], st));
                    }
                }
                if series.iter().any(|s| !s.name.is_empty()) {
                    ctx.configure_series_labels()
                        .background_style(WHITE.mix(0.85))
                        .border_style(RGBColor(200, 200, 200))
                        .position(SeriesLabelPosition::LowerRight)
                        .draw()
                        .map_err(|e| e.to_string())?;
                }
            }};
        }
        if chart.log_x {
            draw!(b.build_cartesian_2d((chart.x.0..chart.x.1).log_scale(), chart.y.0..chart.y.1).map_err(|e| e.to_string())?);
        } else {
            draw!(b.build_cartesian_2d(chart.x.0..chart.x.1, chart.y.0..chart.y.1).map_err(|e| e.to_string())?);
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The ROC curve of scores against 0/1 truth: (false-positive rate, true-positive rate) at every distinct threshold,
/// from (0, 0) to (1, 1).
pub fn roc_points(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let p = positive.iter().filter(|&&v| v).count() as f64;
    let n = positive.len() as f64 - p;
    let mut out = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for (k, &i) in idx.iter().enumerate() {
        if positive[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if k + 1 == idx.len() || scores[idx[k + 1]] != scores[i] {
            out.push((if n > 0.0 { fp / n } else { 0.0 }, if p > 0.0 { tp / p } else { 0.0 }));
        }
    }
    out
}

/// The true-positive rate of a ROC curve at false-positive rate `f` (the highest reached at or below it).
pub fn tpr_at(curve: &[(f64, f64)], f: f64) -> f64 {
    curve.iter().filter(|(x, _)| *x <= f + 1e-12).map(|&(_, y)| y).fold(0.0, f64::max)
}

/// Reliability: for `bins` equal-width bins of predicted probability, (mean prediction, observed frequency, count).
pub fn calibration(scores: &[f64], positive: &[bool], bins: usize) -> Vec<(f64, f64, usize)> {
    let mut sum = vec![(0.0, 0.0, 0usize); bins];
    for (&s, &y) in scores.iter().zip(positive) {
        let b = ((s * bins as f64) as usize).min(bins - 1);
        sum[b].0 += s;
        sum[b].1 += f64::from(u8::from(y));
        sum[b].2 += 1;
    }
    sum.into_iter().filter(|b| b.2 > 0).map(|(s, y, n)| (s / n as f64, y / n as f64, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_of_a_perfect_and_a_useless_score() {
        let perfect = roc_points(&[0.9, 0.8, 0.2, 0.1], &[true, true, false, false]);
        assert_eq!(perfect, vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]);
        assert_eq!(tpr_at(&perfect, 0.0), 1.0);
        let tied = roc_points(&[0.5; 4], &[true, false, true, false]);
        assert_eq!(tied, vec![(0.0, 0.0), (1.0, 1.0)]);
    }

    #[test]
    fn calibration_bins_average_predictions_and_outcomes() {
        let c = calibration(&[0.05, 0.15, 0.95, 0.91], &[false, true, true, true], 10);
        assert_eq!(c, vec![(0.05, 0.0, 1), (0.15, 1.0, 1), (0.9299999999999999, 1.0, 2)]);
    }

    #[test]
    fn a_chart_is_an_svg_with_its_title_and_legend() {
        let chart = Chart {
            title: "ROC".into(),
            x_label: "1 − specificity".into(),
            y_label: "sensitivity".into(),
            x: (0.0, 1.0),
            y: (0.0, 1.0),
            log_x: false,
        };
        let s = Series {
            name: "model".into(),
            points: vec![(0.0, 0.0), (0.2, 0.8), (1.0, 1.0)],
            band: vec![(0.0, 0.0, 0.0), (0.5, 0.7, 0.95), (1.0, 1.0, 1.0)],
            ..Default::default()
        };
        let svg = line_chart(&chart, std::slice::from_ref(&s)).unwrap_or_default();
        assert!(svg.starts_with("<svg") && svg.contains("ROC") && svg.contains("model") && svg.contains("<polygon"), "{svg}");
        assert!(svg.lines().any(|l| l.starts_with("<polyline") && l.contains("stroke=\"#1F77B4\"")), "the curve is a line");
        // a scatter: one dot per point, no connecting line
        let dots = Series { markers: true, band: Vec::new(), ..s };
        let svg = line_chart(&chart, &[dots]).unwrap_or_default();
        let line_of_the_series = svg.lines().any(|l| l.starts_with("<polyline") && l.contains("stroke=\"#1F77B4\""));
        assert!(svg.matches("<circle").count() >= 3 && !line_of_the_series, "{svg}");
    }
}
