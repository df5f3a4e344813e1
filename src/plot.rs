//! Small SVG charts written by hand (no plotting dependency): a spectrum chart of filtered-PCA
//! scores against the acceptance bar, and a scatter of predictions against labels.

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 400.0;
const MARGIN: f64 = 56.0;

/// One group of bars (e.g. one round's top scores) with a horizontal threshold line.
pub struct BarGroup {
    pub label: String,
    pub values: Vec<f64>,
    pub threshold: f64,
}

/// Bars per group on a log-free linear axis, each group with its dashed threshold line.
pub fn bar_chart(title: &str, y_label: &str, groups: &[BarGroup]) -> String {
    let ymax = groups
        .iter()
        .flat_map(|g| g.values.iter().copied().chain([g.threshold]))
        .fold(0.0f64, f64::max)
        .max(1e-12)
        * 1.1;
    let mut svg = header(title);
    axes(&mut svg, y_label, "", 0.0, ymax);
    let slots: usize = groups
        .iter()
        .map(|g| g.values.len() + 1)
        .sum::<usize>()
        .max(1);
    let slot_w = (W - 2.0 * MARGIN) / slots as f64;
    let mut slot = 0.5;
    for (gi, g) in groups.iter().enumerate() {
        let x0 = MARGIN + slot * slot_w;
        for (i, v) in g.values.iter().enumerate() {
            let x = x0 + i as f64 * slot_w;
            let h = v / ymax * (H - 2.0 * MARGIN);
            let accepted = *v >= g.threshold;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
                H - MARGIN - h,
                slot_w * 0.8,
                if accepted {
                    PALETTE[gi % PALETTE.len()]
                } else {
                    "#bbbbbb"
                }
            );
        }
        let ty = H - MARGIN - g.threshold / ymax * (H - 2.0 * MARGIN);
        let x1 = x0 + g.values.len() as f64 * slot_w;
        let _ = writeln!(
            svg,
            r#"<line x1="{x0:.1}" y1="{ty:.1}" x2="{x1:.1}" y2="{ty:.1}" stroke="black" stroke-dasharray="4 3"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            H - MARGIN + 16.0,
            escape(&g.label)
        );
        slot += g.values.len() as f64 + 1.0;
    }
    svg.push_str("</svg>\n");
    svg
}

/// Scatter of (x, y) points with the diagonal y = x, e.g. predictions against labels.
pub fn scatter(title: &str, x_label: &str, y_label: &str, points: &[(f64, f64)]) -> String {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(a, b) in points {
        lo = lo.min(a).min(b);
        hi = hi.max(a).max(b);
    }
    if !lo.is_finite() || hi <= lo {
        lo = -1.0;
        hi = 1.0;
    }
    let span = hi - lo;
    let map = |v: f64, pixels: f64| (v - lo) / span * pixels;
    let mut svg = header(title);
    axes(&mut svg, y_label, x_label, lo, hi);
    let plot = W - 2.0 * MARGIN;
    let plot_h = H - 2.0 * MARGIN;
    let _ = writeln!(
        svg,
        r##"<line x1="{MARGIN}" y1="{:.1}" x2="{:.1}" y2="{MARGIN}" stroke="#999" stroke-dasharray="4 3"/>"##,
        H - MARGIN,
        W - MARGIN
    );
    for &(a, b) in points {
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="#1f77b4" fill-opacity="0.4"/>"##,
            MARGIN + map(a, plot),
            H - MARGIN - map(b, plot_h)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

const PALETTE: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        W / 2.0,
        escape(title)
    )
}

fn axes(svg: &mut String, y_label: &str, x_label: &str, lo: f64, hi: f64) {
    let _ = writeln!(
        svg,
        r#"<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{:.1}" stroke="black"/>
<line x1="{MARGIN}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>
<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{hi:.3}</text>
<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{lo:.3}</text>
<text x="16" y="{:.1}" font-size="12" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>
<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        H - MARGIN,
        H - MARGIN,
        W - MARGIN,
        H - MARGIN,
        MARGIN - 4.0,
        MARGIN + 4.0,
        MARGIN - 4.0,
        H - MARGIN,
        H / 2.0,
        H / 2.0,
        escape(y_label),
        W / 2.0,
        H - 12.0,
        escape(x_label)
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_above_threshold_are_coloured_and_below_are_grey() {
        let svg = bar_chart(
            "scores",
            "|lambda| / null edge",
            &[BarGroup {
                label: "round 1".into(),
                values: vec![5.0, 0.5],
                threshold: 4.0,
            }],
        );
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains(PALETTE[0]));
        assert!(svg.contains("#bbbbbb"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn scatter_has_one_circle_per_point_and_escapes_labels() {
        let svg = scatter(
            "a < b",
            "y",
            "prediction",
            &[(0.0, 0.1), (1.0, 0.9), (2.0, 2.2)],
        );
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("a &lt; b"));
    }
}
