//! Small SVG charts written by hand (no plotting dependency): the filtered-PCA scores of each
//! round against its acceptance bar (`subspace --plot`), and predictions and residuals against
//! labels (`eval --plot`). Every panel has ticks with labels on both axes, axis titles and a
//! legend that names each colour and line.

use std::fmt::Write;

/// Size of one panel, and its margins (left for the y tick labels, bottom for the x ones).
const W: f64 = 640.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

const ACCEPTED: &str = "#1f77b4";
const REJECTED: &str = "#bbbbbb";
const POINTS: &str = "#1f77b4";
const RESIDUALS: &str = "#d62728";

/// One group of bars (e.g. one round's top scores) with a horizontal threshold line.
pub struct BarGroup {
    pub label: String,
    pub values: Vec<f64>,
    pub threshold: f64,
}

/// An axis: its range, whether it is logarithmic (base 10), and its title.
#[derive(Clone, Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    title: String,
}

impl Axis {
    fn linear(lo: f64, hi: f64, title: &str) -> Self {
        let (lo, hi) = if hi > lo && lo.is_finite() && hi.is_finite() {
            (lo, hi)
        } else {
            (lo.min(0.0) - 1.0, hi.max(0.0) + 1.0)
        };
        Axis {
            lo,
            hi,
            log: false,
            title: title.to_string(),
        }
    }

    fn log(lo: f64, hi: f64, title: &str) -> Self {
        let lo = 10f64.powf(lo.max(1e-300).log10().floor());
        let hi = 10f64.powf(hi.max(lo * 10.0).log10().ceil());
        Axis {
            lo,
            hi,
            log: true,
            title: title.to_string(),
        }
    }

    /// Position of `v` as a fraction 0..1 of the axis.
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.max(self.lo * 1e-3).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    /// Tick values: 1-2-5 steps giving 4 to 10 ticks (linear), or 1, 2, 5 per decade (log,
    /// only the powers of ten when the axis spans many decades).
    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (
                self.lo.log10().round() as i32,
                self.hi.log10().round() as i32,
            );
            let mantissas: &[f64] = if b - a > 4 { &[1.0] } else { &[1.0, 2.0, 5.0] };
            let mut t = Vec::new();
            for e in a..=b {
                for &m in mantissas {
                    let v = m * 10f64.powi(e);
                    if v >= self.lo * (1.0 - 1e-9) && v <= self.hi * (1.0 + 1e-9) {
                        t.push(v);
                    }
                }
            }
            return t;
        }
        let span = self.hi - self.lo;
        let raw = span / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| span / s <= 10.0)
            .unwrap_or(10.0 * mag);
        let first = (self.lo / step).ceil() as i64;
        let last = (self.hi / step).floor() as i64;
        (first..=last).map(|i| i as f64 * step).collect()
    }
}

/// A tick label: short, without trailing zeros.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.0e}");
        return s.replace("e0", "").replace("e-0", "e-");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// One panel at horizontal offset `x0` of the document.
struct Panel {
    x0: f64,
    x: Axis,
    y: Axis,
}

impl Panel {
    fn px(&self, v: f64) -> f64 {
        self.x0 + LEFT + self.x.frac(v) * (W - LEFT - RIGHT)
    }
    fn py(&self, v: f64) -> f64 {
        H - BOTTOM - self.y.frac(v) * (H - TOP - BOTTOM)
    }

    /// The dashed reference line from `a` to `b` (data coordinates).
    fn reference_line(&self, svg: &mut String, a: (f64, f64), b: (f64, f64)) {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333" stroke-dasharray="5 3"/>"##,
            self.px(a.0),
            self.py(a.1),
            self.px(b.0),
            self.py(b.1)
        );
    }

    /// One small translucent dot per sample (data coordinates).
    fn samples(&self, svg: &mut String, points: &[(f64, f64)], colour: &str) {
        for &(a, b) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{colour}" fill-opacity="0.4"/>"#,
                self.px(a),
                self.py(b)
            );
        }
    }

    /// Frame, grid, ticks with labels on both axes, axis titles and the panel title.
    fn axes(&self, svg: &mut String, title: &str, x_ticks: Option<&[(f64, String)]>) {
        let (l, r) = (self.x0 + LEFT, self.x0 + W - RIGHT);
        let (t, b) = (TOP, H - BOTTOM);
        let _ = writeln!(
            svg,
            r##"<rect x="{l:.1}" y="{t:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"##,
            r - l,
            b - t
        );
        for v in self.y.ticks() {
            let y = self.py(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{l:.1}" y1="{y:.1}" x2="{r:.1}" y2="{y:.1}" stroke="#e8e8e8"/><line x1="{:.1}" y1="{y:.1}" x2="{l:.1}" y2="{y:.1}" stroke="black"/><text class="ytick" x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                l - 5.0,
                l - 8.0,
                y + 4.0,
                tick_label(v)
            );
        }
        let xt: Vec<(f64, String)> = match x_ticks {
            Some(t) => t.to_vec(),
            None => self
                .x
                .ticks()
                .into_iter()
                .map(|v| (v, tick_label(v)))
                .collect(),
        };
        for (v, label) in &xt {
            let x = self.px(*v);
            if x_ticks.is_none() {
                let _ = writeln!(
                    svg,
                    r##"<line x1="{x:.1}" y1="{t:.1}" x2="{x:.1}" y2="{b:.1}" stroke="#e8e8e8"/>"##
                );
            }
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{b:.1}" x2="{x:.1}" y2="{:.1}" stroke="black"/><text class="xtick" x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                b + 5.0,
                b + 18.0,
                escape(label)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>
<text x="{:.1}" y="{:.1}" font-size="12" transform="rotate(-90 {:.1} {:.1})" text-anchor="middle">{}</text>
<text x="{:.1}" y="24" font-size="14" text-anchor="middle">{}</text>"##,
            (l + r) / 2.0,
            H - 16.0,
            escape(&self.x.title),
            self.x0 + 18.0,
            (t + b) / 2.0,
            self.x0 + 18.0,
            (t + b) / 2.0,
            escape(&self.y.title),
            (l + r) / 2.0,
            escape(title)
        );
    }

    /// A legend box in the panel's top-left corner (or top-right with `right`): each entry a
    /// swatch (a filled square, a dashed, dotted or solid line, or a dot) and its text.
    fn legend(&self, svg: &mut String, entries: &[(Swatch, &str, &str)], right: bool) {
        let width = 14.0
            + entries
                .iter()
                .map(|e| e.2.chars().count() as f64 * 6.2)
                .fold(0.0, f64::max)
            + 30.0;
        let x = if right {
            self.x0 + W - RIGHT - width - 8.0
        } else {
            self.x0 + LEFT + 8.0
        };
        let y = TOP + 8.0;
        let _ = writeln!(
            svg,
            r##"<g class="legend"><rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{:.1}" fill="white" fill-opacity="0.9" stroke="#888"/>"##,
            entries.len() as f64 * 17.0 + 8.0
        );
        for (i, (swatch, colour, text)) in entries.iter().enumerate() {
            let cy = y + 14.0 + i as f64 * 17.0;
            let sx = x + 8.0;
            let mark = match swatch {
                Swatch::Box => format!(
                    r##"<rect x="{sx:.1}" y="{:.1}" width="12" height="10" fill="{colour}"/>"##,
                    cy - 7.0
                ),
                Swatch::Dot => format!(
                    r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"##,
                    sx + 10.0,
                    cy - 2.0
                ),
                Swatch::Line(dash) => format!(
                    r##"<line x1="{sx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="1.5"{}/>"##,
                    cy - 2.0,
                    sx + 20.0,
                    cy - 2.0,
                    if dash.is_empty() {
                        String::new()
                    } else {
                        format!(r#" stroke-dasharray="{dash}""#)
                    }
                ),
            };
            let _ = writeln!(
                svg,
                r##"{mark}<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
                sx + 26.0,
                cy + 2.0,
                escape(text)
            );
        }
        svg.push_str("</g>\n");
    }
}

/// What a legend entry shows.
enum Swatch {
    Box,
    Dot,
    /// A line with this SVG dash pattern ("" for solid).
    Line(&'static str),
}

fn document(width: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{H}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    )
}

/// Each group's bars (the strongest filter's |eigenvalue| / null edge, one bar per eigenvalue)
/// on a logarithmic axis, coloured when they clear their group's bar, grey when not; a dashed
/// line per group at its bar and a dotted line at 1, the Gaussian null edge.
pub fn bar_chart(title: &str, y_label: &str, groups: &[BarGroup]) -> String {
    let positive = groups
        .iter()
        .flat_map(|g| g.values.iter().copied().chain([g.threshold]))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = positive.fold((1.0f64, 1.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let slots: usize = groups
        .iter()
        .map(|g| g.values.len().max(1) + 1)
        .sum::<usize>()
        .max(1);
    let panel = Panel {
        x0: 0.0,
        x: Axis::linear(
            0.0,
            slots as f64,
            "round (bars: the strongest filter's eigenvalues, largest first)",
        ),
        y: Axis::log(lo * 0.8, hi * 1.25, y_label),
    };
    let mut svg = document(W);
    // Group centres carry the x ticks.
    let mut ticks = Vec::new();
    let mut slot = 0.5;
    for g in groups {
        let n = g.values.len().max(1) as f64;
        ticks.push((slot + n / 2.0 - 0.5 + 0.4, g.label.clone()));
        slot += n + 1.0;
    }
    panel.axes(&mut svg, title, Some(&ticks));
    let base = panel.py(panel.y.lo);
    let mut slot = 0.5;
    for g in groups {
        for (i, v) in g.values.iter().enumerate() {
            let x = panel.px(slot + i as f64);
            let top = panel.py(v.max(panel.y.lo));
            let accepted = *v >= g.threshold;
            let _ = writeln!(
                svg,
                r#"<rect class="bar" x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                panel.px(0.8) - panel.px(0.0),
                (base - top).max(0.0),
                if accepted { ACCEPTED } else { REJECTED }
            );
        }
        let n = g.values.len().max(1) as f64;
        if g.threshold.is_finite() && g.threshold > 0.0 {
            let ty = panel.py(g.threshold);
            let _ = writeln!(
                svg,
                r#"<line x1="{:.1}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="black" stroke-width="1.5" stroke-dasharray="6 3"/>"#,
                panel.px(slot - 0.2),
                panel.px(slot + n)
            );
        }
        slot += n + 1.0;
    }
    let one = panel.py(1.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{:.1}" y1="{one:.1}" x2="{:.1}" y2="{one:.1}" stroke="#555" stroke-dasharray="1 3"/>"##,
        panel.px(0.0),
        panel.px(slots as f64)
    );
    panel.legend(
        &mut svg,
        &[
            (Swatch::Box, ACCEPTED, "cleared the round's bar (accepted)"),
            (Swatch::Box, REJECTED, "below the bar"),
            (
                Swatch::Line("6 3"),
                "black",
                "bar: margin x the round's null maximum",
            ),
            (Swatch::Line("1 3"), "#555", "Gaussian null edge (score 1)"),
        ],
        true,
    );
    svg.push_str("</svg>\n");
    svg
}

/// Scatter of (x, y) points with the diagonal y = x, e.g. predictions against labels.
pub fn scatter(title: &str, x_label: &str, y_label: &str, points: &[(f64, f64)]) -> String {
    let mut svg = document(W);
    scatter_panel(&mut svg, 0.0, title, x_label, y_label, points);
    svg.push_str("</svg>\n");
    svg
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo.is_finite() && hi > lo {
        let pad = 0.04 * (hi - lo);
        (lo - pad, hi + pad)
    } else if lo.is_finite() {
        (lo - 1.0, lo + 1.0)
    } else {
        (-1.0, 1.0)
    }
}

fn scatter_panel(
    svg: &mut String,
    x0: f64,
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
) {
    let (lo, hi) = range(points.iter().flat_map(|&(a, b)| [a, b]));
    let panel = Panel {
        x0,
        x: Axis::linear(lo, hi, x_label),
        y: Axis::linear(lo, hi, y_label),
    };
    panel.axes(svg, title, None);
    panel.reference_line(svg, (lo, lo), (hi, hi));
    panel.samples(svg, points, POINTS);
    let text = format!("samples ({})", points.len());
    panel.legend(
        svg,
        &[
            (Swatch::Dot, POINTS, text.as_str()),
            (Swatch::Line("5 3"), "#333", "y = x (a perfect model)"),
        ],
        false,
    );
}

/// `eval --plot`: two panels of (label, prediction) points. Left, predictions against labels
/// with the diagonal; right, the residual (prediction - label) against the label on its own
/// scale, symmetric about 0, where a good model's errors are visible (on the left they collapse
/// onto the diagonal). The right panel's title gives the residuals' RMS and largest |value|.
pub fn prediction_panels(points: &[(f64, f64)]) -> String {
    let mut svg = document(2.0 * W);
    scatter_panel(
        &mut svg,
        0.0,
        "predictions against labels",
        "label y",
        "prediction",
        points,
    );
    let residuals: Vec<(f64, f64)> = points.iter().map(|&(y, p)| (y, p - y)).collect();
    let worst = residuals
        .iter()
        .map(|r| r.1.abs())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let rms =
        (residuals.iter().map(|r| r.1 * r.1).sum::<f64>() / residuals.len().max(1) as f64).sqrt();
    let half = if worst > 0.0 { worst * 1.1 } else { 1.0 };
    let (lo, hi) = range(points.iter().map(|p| p.0));
    let panel = Panel {
        x0: W,
        x: Axis::linear(lo, hi, "label y"),
        y: Axis::linear(-half, half, "residual (prediction - label)"),
    };
    panel.axes(
        &mut svg,
        &format!(
            "residuals: RMS {}, largest {}",
            tick_label_precise(rms),
            tick_label_precise(worst)
        ),
        None,
    );
    panel.reference_line(&mut svg, (lo, 0.0), (hi, 0.0));
    panel.samples(&mut svg, &residuals, RESIDUALS);
    let text = format!("residual of each sample ({})", residuals.len());
    panel.legend(
        &mut svg,
        &[
            (Swatch::Dot, RESIDUALS, text.as_str()),
            (Swatch::Line("5 3"), "#333", "zero residual"),
        ],
        false,
    );
    svg.push_str("</svg>\n");
    svg
}

/// Three significant digits.
fn tick_label_precise(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if (1e-3..1e4).contains(&v.abs()) {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(svg: &str, class: &str) -> usize {
        svg.matches(&format!("class=\"{class}\"")).count()
    }

    #[test]
    fn bars_have_ticks_on_both_axes_and_a_legend() {
        let svg = bar_chart(
            "scores",
            "|lambda| / null edge",
            &[
                BarGroup {
                    label: "round 1".into(),
                    values: vec![25.0, 0.5],
                    threshold: 1.4,
                },
                BarGroup {
                    label: "round 2".into(),
                    values: vec![1.1, 0.9],
                    threshold: 1.3,
                },
            ],
        );
        assert_eq!(count(&svg, "bar"), 4);
        assert!(svg.contains(ACCEPTED) && svg.contains(REJECTED));
        // One x tick per round, and y ticks over the decades 0.1 to 100.
        assert_eq!(count(&svg, "xtick"), 2);
        assert!(svg.contains(">round 2</text>"));
        assert!(count(&svg, "ytick") >= 4, "{}", count(&svg, "ytick"));
        for t in [">0.1<", ">1<", ">10<"] {
            assert!(svg.contains(t), "tick {t}");
        }
        assert_eq!(count(&svg, "legend"), 1);
        assert!(svg.contains("null maximum") && svg.contains("Gaussian null edge"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn scatter_has_one_circle_per_point_ticks_and_escapes_labels() {
        let svg = scatter(
            "a < b",
            "y",
            "prediction",
            &[(0.0, 0.1), (1.0, 0.9), (2.0, 2.2)],
        );
        assert_eq!(
            svg.matches("<circle").count(),
            3 + 1,
            "points and the legend's dot"
        );
        assert!(svg.contains("a &lt; b"));
        assert!(count(&svg, "xtick") >= 4 && count(&svg, "ytick") >= 4);
    }

    #[test]
    fn prediction_panels_show_residuals_on_their_own_scale() {
        // A near-perfect model: predictions within 1e-3 of labels spread over [-3, 3].
        let points: Vec<(f64, f64)> = (0..200)
            .map(|i| {
                let y = -3.0 + 6.0 * i as f64 / 199.0;
                (y, y + 1e-3 * ((i % 7) as f64 - 3.0) / 3.0)
            })
            .collect();
        let svg = prediction_panels(&points);
        assert_eq!(count(&svg, "legend"), 2);
        assert!(svg.contains("residual (prediction - label)"));
        // The residual axis is scaled to the residuals (ticks in thousandths), not the labels.
        assert!(svg.contains(">0.001<"), "residual ticks");
        assert!(count(&svg, "xtick") >= 8 && count(&svg, "ytick") >= 8);
        assert!(svg.contains("RMS"));
    }

    #[test]
    fn ticks_are_round_numbers_within_the_axis() {
        let a = Axis::linear(-0.37, 2.9, "");
        let t = a.ticks();
        assert!(t.len() >= 4 && t.len() <= 11, "{t:?}");
        assert!(t.iter().all(|&v| (-0.37..=2.9).contains(&v)));
        assert_eq!(tick_label(0.5), "0.5");
        let l = Axis::log(0.3, 40.0, "");
        assert_eq!((l.lo, l.hi), (0.1, 100.0));
        assert!(l.ticks().contains(&1.0) && l.ticks().contains(&50.0));
        assert_eq!(tick_label(1e-6), "1e-6");
    }
}
