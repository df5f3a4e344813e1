//! What a subspace run returns: per-round and per-refine-step reports, JSON and summary, and
//! the typed "no structure" outcome.

use super::Method;
use crate::data::whiten::Whitening;

/// What a round's filters were applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundKind {
    /// Filters on the labels y (the rounds before the refine steps; baselines).
    Label,
    /// Filters on the residual e = y - h(B x) of a fit on the basis found so far.
    Residual,
    /// `--method paper`'s refine sweeps: a label round on one found direction, conditioned on
    /// (and orthogonal to) the others, whose filters' direction or cell SIR may replace it.
    Refine,
}

impl RoundKind {
    /// "label", "residual" or "refine".
    pub fn name(self) -> &'static str {
        match self {
            RoundKind::Label => "label",
            RoundKind::Residual => "residual",
            RoundKind::Refine => "refine",
        }
    }
}

/// What one round found.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundReport {
    /// Labels or residuals.
    pub kind: RoundKind,
    /// Directions added this round.
    pub accepted: usize,
    /// Score of each added direction: sqrt of its eigenvalue of the aggregate A, i.e. the
    /// root-sum-square of the filter scores along it (each in multiples of its filter's null
    /// edge). Baselines: |lambda| / null_edge.
    pub scores: Vec<f64>,
    /// Largest |eigenvalues| (up to 8) of the best-scoring filter's matrix (baselines: of the
    /// method's matrix).
    pub top_eigenvalues: Vec<f64>,
    /// Gaussian null edge of that matrix (scores are |lambda| / this).
    pub null_edge: f64,
    /// Largest eigenvalue score of any filter.
    pub best_score: f64,
    /// Largest filtered-mean score of any filter.
    pub best_mean_score: f64,
    /// Largest score of any null contrast (eigenvalues; NaN for baselines).
    pub null_max: f64,
    /// Largest score of any null contrast (means).
    pub null_max_mean: f64,
    /// The bar: null_margin x null_max (eigenvalues).
    pub threshold: f64,
    /// The bar for means.
    pub threshold_mean: f64,
    /// Filters scored this round (0 for baselines).
    pub filters: usize,
    /// Directions conditioned on (cell axes) this round.
    pub cell_axes: usize,
    /// Cells of z = B x the round's filters were split by (1: unconditioned); with
    /// `--method paper`, the occupied cells of a grid on every found direction plus one cell
    /// pooling the rest (see `paper`).
    pub cells: usize,
    /// Cells per conditioning axis of that grid (1 when unconditioned).
    pub cells_per_axis: usize,
    /// Fraction of the pilot's rows that lie in cells of their own (1 unless some were pooled).
    pub cell_coverage: f64,
    /// Bins of the pass (groups x cells x label bins): the cost of conditioning.
    pub bins: usize,
    /// Bytes of the pass's f64 accumulators (one set; the CPU backend keeps one per thread).
    pub accumulator_bytes: u64,
    /// (filter, direction) candidates that cleared the bar and entered the aggregate.
    pub candidates: usize,
    /// Wall seconds of the round: the pass over the data and the host's scoring.
    pub seconds: f64,
    /// Of which the pass.
    pub pass_seconds: f64,
    /// Of which the host's scoring and merge (eigen-solves of every filter and contrast).
    pub host_seconds: f64,
    /// What a refine round did with its direction (empty for other rounds).
    pub refinement: Refinement,
}

/// What a refine round ([`RoundKind::Refine`], `--method paper`'s sweeps) did with its
/// direction; the default (all empty) for every other round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Refinement {
    /// The angle in radians between the direction it refined and the one that replaced it; 0
    /// when the direction was kept.
    pub moved: Option<f64>,
    /// Which estimate the direction is now.
    pub refined_by: Option<RefineEstimate>,
    /// The predicted angle (radians) of the estimate kept, and of the one the direction had
    /// before (from the score of the round that found it).
    pub predicted_angle: Option<(f64, f64)>,
    /// The cell SIR's leading eigenvalue over its null edge (None when it had no bins to use).
    pub sir_score: Option<f64>,
    /// When its cell SIR was a candidate: its angle to the direction as it was over the
    /// root-sum-square of their predicted angles (above 1.5 it is set aside).
    pub sir_disagreement: Option<f64>,
    /// The cell SIR's predicted angle (radians), when it had bins to use.
    pub sir_angle: Option<f64>,
    /// Its pass read the bin means alone, for the cell SIR (no filters, so no scores), and why.
    pub bin_means: Option<MeansOnly>,
}

/// Why a refine round's pass read the bin means alone (a pass of N d instead of N d^2 / 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeansOnly {
    /// The filters of the direction's last round with filters predicted at least 1.5x the
    /// angle of the estimate kept.
    FiltersBehind,
    /// First sweep: the cell SIR, read first, predicted at most half the angle of the
    /// direction's estimate from the round that found it; the filters would have needed twice
    /// that round's score to win, and later sweeps read the bin means alone too.
    SirAhead,
    /// First sweep: the cell SIR, read first, did not settle the round; a pass of second
    /// moments (the filters and the cell SIR again) followed as the next round.
    SirFirst,
}

impl MeansOnly {
    /// "filters_behind", "sir_ahead" or "sir_first".
    pub fn name(self) -> &'static str {
        match self {
            MeansOnly::FiltersBehind => "filters_behind",
            MeansOnly::SirAhead => "sir_ahead",
            MeansOnly::SirFirst => "sir_first",
        }
    }

    /// Why, in words, for the summary.
    fn why(self) -> &'static str {
        match self {
            MeansOnly::FiltersBehind => {
                "the filters lost this direction's round of the sweep before by a wide margin"
            }
            MeansOnly::SirAhead => {
                "in the first sweep, read first, its cell SIR predicted at most half the angle of the direction's estimate from the round that found it: the filters would need twice that round's score to win"
            }
            MeansOnly::SirFirst => {
                "read first in the first sweep; its cell SIR did not settle the round, so the next one reads second moments"
            }
        }
    }
}

/// The estimates a refine round chooses among, by the smallest predicted angle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefineEstimate {
    /// The direction it had (the label rounds', or the alignment's mixture of them).
    Kept,
    /// The merged direction of the round's filtered second moments (the paper's statistic).
    Filters,
    /// The cell-conditioned SIR of the round's bin means (an addition).
    CellSir,
}

impl RefineEstimate {
    /// "kept", "filters" or "cell_sir".
    pub fn name(self) -> &'static str {
        match self {
            RefineEstimate::Kept => "kept",
            RefineEstimate::Filters => "filters",
            RefineEstimate::CellSir => "cell_sir",
        }
    }
}

impl RoundReport {
    /// How close the round came to accepting: the larger of best / bar over the eigenvalue and
    /// mean statistics (>= 1 means something cleared).
    pub fn best_ratio(&self) -> f64 {
        let r = |s: f64, b: f64| if b > 0.0 { s / b } else { 0.0 };
        r(self.best_score, self.threshold).max(r(self.best_mean_score, self.threshold_mean))
    }
}

/// One Gauss-Newton step on the basis.
#[derive(Clone, Debug, PartialEq)]
pub struct RefineStep {
    /// Mean squared residual y - h(B x), over all samples, of the basis the step started
    /// from. When it is not below the previous step's, the previous update is undone and the
    /// steps end; the last step's update is kept without a further pass.
    pub residual_mse: f64,
    /// The share of that residual's sum of squares the step's update promised to remove
    /// (Gauss-Newton's linear model); None when the step computed none (its residual ended
    /// the steps). Below 0.5% the update is kept and the steps end.
    pub promised_gain: Option<f64>,
    /// Wall seconds: the fit and the pass.
    pub seconds: f64,
}

/// The result of [`super::find_subspace`].
#[derive(Clone, Debug, PartialEq)]
pub struct SubspaceReport {
    /// Input dimension d.
    pub input_dim: usize,
    /// r orthonormal rows of length d spanning the found subspace of the raw inputs.
    pub basis: Vec<Vec<f64>>,
    /// The same subspace as r orthonormal rows of the whitened frame (length q): z = B W
    /// (x - mu) with the whitening below. Equal to `basis` without whitening.
    pub frame_basis: Vec<Vec<f64>>,
    /// The whitening the rounds worked in (None when off, and for the baselines).
    pub whitening: Option<Whitening>,
    /// One entry per round (baselines: one), residual rounds after the label rounds.
    pub rounds: Vec<RoundReport>,
    /// The Gauss-Newton steps (filtered PCA only), in order, over all refine phases.
    pub refine: Vec<RefineStep>,
    /// Samples read over all passes (rows x passes, plus the pilot).
    pub samples_used: u64,
    /// Rows of the source.
    pub rows: u64,
    /// The null margin given (`--null-margin`); the eigenvalues' bar uses less above d = 32
    /// with whitening (see `SubspaceConfig::null_margin`).
    pub null_margin: f64,
    /// Rows a filter must hold to be scored (min_filter_factor x d; 0 for the baselines).
    pub min_filter_rows: u64,
    /// The estimator that produced it.
    pub method: Method,
    /// Why the rounds ended (`--method paper`; None for the others).
    pub stopped: Option<String>,
}

/// No direction cleared the null: what the rounds saw and how many samples would likely do.
#[derive(Clone, Debug, PartialEq)]
pub struct NoStructure {
    /// Rows the search ran on.
    pub rows: u64,
    /// Input dimension.
    pub input_dim: usize,
    /// The best score of the first round (eigenvalue or mean statistic, whichever came closer
    /// to its bar), in multiples of its Gaussian null edge.
    pub best_score: f64,
    /// The bar it had to clear.
    pub threshold: f64,
    /// The largest null-contrast score behind the bar.
    pub null_max: f64,
    /// Filters the first round scored: 0 when every label filter held fewer than
    /// `min_filter_rows` rows, so nothing was tested at all.
    pub filters: usize,
    /// Rows a filter must hold to be scored.
    pub min_filter_rows: u64,
    /// Scores of a fixed signal grow like sqrt(N): N (threshold / best)^2 when the best score
    /// stands above the null maximum; with no filter scored, 4 x `min_filter_rows` (enough
    /// for several label filters); None when the best score does not rise above the null (no
    /// sign of signal at all), and also when it stands less than halfway from the null
    /// maximum to the bar: labels independent of x reach up to 1.12 x the null maximum
    /// (measured, see `SubspaceConfig::null_margin`), so such a score backs no estimate.
    pub suggested_rows: Option<u64>,
    /// Set when every label of the first `label_rows` rows is this value: constant labels
    /// carry no information about x, and no round was run.
    pub constant_label: Option<f64>,
    /// Rows whose labels were looked at for `constant_label` (the pilot).
    pub label_rows: u64,
}

impl NoStructure {
    /// The outcome for labels that are all `value` on the first `label_rows` of `rows` rows.
    pub fn constant(rows: u64, input_dim: usize, label_rows: u64, value: f64) -> Self {
        NoStructure {
            rows,
            input_dim,
            best_score: f64::NAN,
            threshold: f64::NAN,
            null_max: f64::NAN,
            filters: 0,
            min_filter_rows: 0,
            suggested_rows: None,
            constant_label: Some(value),
            label_rows,
        }
    }

    /// [`NoStructure::constant`] when the labels `y` (the first rows of `rows`) are all equal.
    pub fn if_constant(y: &[f64], rows: u64, input_dim: usize) -> Option<Self> {
        let first = *y.first()?;
        y.iter()
            .all(|&v| v == first)
            .then(|| Self::constant(rows, input_dim, y.len() as u64, first))
    }
}

impl std::fmt::Display for NoStructure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(v) = self.constant_label {
            let which = if self.label_rows >= self.rows {
                format!("all {} labels are {v}", self.rows)
            } else {
                format!(
                    "the first {} labels (of {} rows) are all {v}; if y varies further on, shuffle the rows (the first rows fix the label filters)",
                    self.label_rows, self.rows
                )
            };
            return write!(
                f,
                "no structure to find: constant labels: {which}; labels that do not vary carry no information about x, so there is no subspace or network to learn: check that the y file holds the labels you meant"
            );
        }
        if self.filters == 0 {
            return write!(
                f,
                "no structure found: too few rows per filter: {} rows (d = {}) left no label \
                 filter with the {} rows it needs to be scored, so nothing was tested; \
                 give at least {} rows",
                self.rows,
                self.input_dim,
                self.min_filter_rows,
                self.suggested_rows.unwrap_or(4 * self.min_filter_rows)
            );
        }
        write!(
            f,
            "no structure found: no direction cleared the calibrated null on {} rows (d = {}); \
             the best filter scored {:.3} against a threshold of {:.3} (the null maximum {:.3} \
             x the margin); ",
            self.rows, self.input_dim, self.best_score, self.threshold, self.null_max
        )?;
        match self.suggested_rows {
            Some(n) => write!(
                f,
                "scores grow like sqrt(N), so about {n} rows would likely clear it"
            ),
            None => write!(
                f,
                "it stayed within the null's own spread ({:.3} of the null maximum; labels \
                 independent of x reach about 1.12), so nothing indicates that the labels \
                 depend on x at all, and no row count can be estimated from it",
                self.best_score / self.null_max
            ),
        }
    }
}

fn json_f64(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::Value::from(v)
    } else {
        serde_json::Value::Null
    }
}

fn json_list(v: &[f64]) -> serde_json::Value {
    serde_json::Value::Array(v.iter().map(|&x| json_f64(x)).collect())
}

impl SubspaceReport {
    /// Subspace dimension r.
    pub fn dim(&self) -> usize {
        self.basis.len()
    }

    /// The typed outcome when filtered PCA found nothing (None otherwise).
    pub fn no_structure(&self) -> Option<NoStructure> {
        if self.dim() > 0 || !self.method.finds_dimension() {
            return None;
        }
        let first = self.rounds.first()?;
        let use_mean = first.best_mean_score / first.threshold_mean.max(f64::MIN_POSITIVE)
            > first.best_score / first.threshold.max(f64::MIN_POSITIVE);
        let (best, bar, null) = if use_mean {
            (
                first.best_mean_score,
                first.threshold_mean,
                first.null_max_mean,
            )
        } else {
            (first.best_score, first.threshold, first.null_max)
        };
        let suggested_rows = if first.filters == 0 {
            Some(4 * self.min_filter_rows)
        } else {
            // Backed by the null's measured spread only when the best score stands at least
            // halfway from the null maximum to the bar.
            (best > 0.5 * (null + bar) && best > 0.0)
                .then(|| (self.rows as f64 * (bar / best).powi(2)).ceil() as u64)
        };
        Some(NoStructure {
            rows: self.rows,
            input_dim: self.input_dim,
            best_score: best,
            threshold: bar,
            null_max: null,
            filters: first.filters,
            min_filter_rows: self.min_filter_rows,
            suggested_rows,
            constant_label: None,
            label_rows: 0,
        })
    }

    /// `{"format": "relu-fpt/subspace", "version": 2, "input_dim": d, "basis": [[..]],
    /// "whitening": null | {..}, "rounds": [{"kind": "label" | "residual" | "refine", "accepted": n,
    /// "scores": [..], "top_eigenvalues": [..], "null_edge": v, "best_score": s,
    /// "threshold": t, "null_max": m, "cell_axes": a, "bins": K, "seconds": s, ..}],
    /// "refine": [{"residual_mse": e, "promised_gain": g, "seconds": s}], "samples_used": N, "method": ".."}`.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// [`SubspaceReport::to_json`] as a value.
    pub fn to_value(&self) -> serde_json::Value {
        let rounds: Vec<serde_json::Value> = self
            .rounds
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kind": r.kind.name(),
                    "accepted": r.accepted,
                    "scores": json_list(&r.scores),
                    "top_eigenvalues": json_list(&r.top_eigenvalues),
                    "null_edge": json_f64(r.null_edge),
                    "best_score": json_f64(r.best_score),
                    "best_mean_score": json_f64(r.best_mean_score),
                    "null_max": json_f64(r.null_max),
                    "null_max_mean": json_f64(r.null_max_mean),
                    "threshold": json_f64(r.threshold),
                    "threshold_mean": json_f64(r.threshold_mean),
                    "filters": r.filters,
                    "cell_axes": r.cell_axes,
                    "cells": r.cells,
                    "cells_per_axis": r.cells_per_axis,
                    "cell_coverage": json_f64(r.cell_coverage),
                    "bins": r.bins,
                    "accumulator_bytes": r.accumulator_bytes,
                    "candidates": r.candidates,
                    "seconds": json_f64(r.seconds),
                    "pass_seconds": json_f64(r.pass_seconds),
                    "host_seconds": json_f64(r.host_seconds),
                    "moved": r.refinement.moved.map(json_f64),
                    "refined_by": r.refinement.refined_by.map(RefineEstimate::name),
                    "predicted_angle": r.refinement.predicted_angle.map(|p| json_f64(p.0)),
                    "predicted_angle_before": r.refinement.predicted_angle.map(|p| json_f64(p.1)),
                    "sir_score": r.refinement.sir_score.map(json_f64),
                    "sir_disagreement": r.refinement.sir_disagreement.map(json_f64),
                    "sir_angle": r.refinement.sir_angle.map(json_f64),
                    "bin_means_only": r.refinement.bin_means.is_some(),
                    "bin_means_reason": r.refinement.bin_means.map(MeansOnly::name),
                })
            })
            .collect();
        let refine: Vec<serde_json::Value> = self
            .refine
            .iter()
            .map(|s| {
                serde_json::json!({
                    "residual_mse": json_f64(s.residual_mse),
                    "promised_gain": s.promised_gain.map(json_f64),
                    "seconds": json_f64(s.seconds),
                })
            })
            .collect();
        serde_json::json!({
            "format": "relu-fpt/subspace",
            "version": 2,
            "input_dim": self.input_dim,
            "basis": self.basis.iter().map(|r| json_list(r)).collect::<Vec<_>>(),
            "whitening": self.whitening.as_ref().map(Whitening::to_json),
            "rounds": rounds,
            "refine": refine,
            "samples_used": self.samples_used,
            "method": self.method.name(),
            "stopped": self.stopped,
        })
    }

    /// Human summary: directions per round and their scores against the bar.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {}-dim subspace of R^{} from {} sample reads\n",
            self.method.name(),
            self.dim(),
            self.input_dim,
            self.samples_used
        );
        if let Some(w) = &self.whitening {
            s += &format!("  {}\n", w.summary());
        }
        for (i, r) in self.rounds.iter().enumerate() {
            let scores: Vec<String> = r.scores.iter().map(|v| format!("{v:.1}")).collect();
            let eig: Vec<String> = r
                .top_eigenvalues
                .iter()
                .take(4)
                .map(|v| format!("{v:.3}"))
                .collect();
            if !self.method.finds_dimension() {
                s.push_str(&format!(
                    "  round {}: {} direction(s), scores [{}] (x null edge), |eig| [{}] vs null edge {:.3}\n",
                    i + 1,
                    r.accepted,
                    scores.join(", "),
                    eig.join(", "),
                    r.null_edge
                ));
                continue;
            }
            if let Some(why) = r.refinement.bin_means {
                s.push_str(&format!(
                    "  round {} (refine): bin means only, for the cell SIR ({}); {} cells ({} per axis on {} directions), {} bins, {:.1} s\n",
                    i + 1,
                    why.why(),
                    r.cells,
                    r.cells_per_axis,
                    r.cell_axes,
                    r.bins,
                    r.seconds
                ));
            } else {
                s.push_str(&format!(
                "  round {} ({}): +{} direction(s), scores [{}]; best filter {:.2} (|eig| [{}], null edge {:.3}) and mean {:.2} vs bar {:.2} / {:.2} (null max {:.2} / {:.2}); {} filters ({} candidates), {} cell axes, {} bins, {:.1} s ({:.1} s host)\n",
                i + 1,
                r.kind.name(),
                r.accepted,
                scores.join(", "),
                r.best_score,
                eig.join(", "),
                r.null_edge,
                r.best_mean_score,
                r.threshold,
                r.threshold_mean,
                r.null_max,
                r.null_max_mean,
                r.filters,
                r.candidates,
                r.cell_axes,
                r.bins,
                r.seconds,
                r.host_seconds
            ));
                if r.cells > 1 {
                    s.push_str(&format!(
                    "    conditioned on {} cells ({} per axis on {} directions{}), {:.0}% of the pilot's rows in cells of their own, {} of accumulators\n",
                    r.cells,
                    r.cells_per_axis,
                    r.cell_axes,
                    if self.method == Method::Paper {
                        ", the occupied ones and one pooling the rest"
                    } else {
                        ""
                    },
                    100.0 * r.cell_coverage,
                    crate::safety::bytes(r.accumulator_bytes as u128)
                ));
                }
            }
            let rf = &r.refinement;
            if let (Some(by), Some((now, before))) = (rf.refined_by, rf.predicted_angle) {
                let mut sir = rf
                    .sir_score
                    .map_or(String::new(), |v| format!("; cell SIR score {v:.1}"));
                if let Some(v) = rf
                    .sir_disagreement
                    .filter(|_| by != RefineEstimate::CellSir)
                {
                    sir.push_str(&format!(
                        ", set aside: {v:.2} x the predicted angles away from the direction"
                    ));
                }
                s.push_str(&match by {
                    RefineEstimate::Kept => format!(
                        "    kept the direction: predicted angle {before:.4} rad, no estimate of this round below it{sir}\n"
                    ),
                    _ => format!(
                        "    refined direction moved {:.4} rad to the {} estimate: predicted angle {now:.4} rad against {before:.4}{sir}\n",
                        rf.moved.unwrap_or(0.0),
                        if by == RefineEstimate::CellSir { "cell SIR" } else { "filters'" },
                    ),
                });
            } else if let (Some(MeansOnly::SirFirst), Some(angle)) = (rf.bin_means, rf.sir_angle) {
                s.push_str(&format!(
                    "    cell SIR predicted angle {angle:.4} rad, score {:.1}\n",
                    rf.sir_score.unwrap_or(f64::NAN)
                ));
            }
        }
        if self.method == Method::Paper {
            let sweeps = self.rounds.iter().any(|r| r.kind == RoundKind::Refine);
            s.push_str(&format!(
                "  the paper's algorithm: label rounds, each after the first conditioned on cells of every direction found before it{}; not run: whitening, Gauss-Newton refine steps, residual rounds (additions of --method filtered)\n",
                if sweeps {
                    ", then refine sweeps (an addition made of its own round: each direction found again conditioned on the others, by its filters or by a cell SIR of its bin means, after turning the directions within their span; --refine-steps 0 turns them off)"
                } else {
                    ""
                }
            ));
            if let Some(why) = &self.stopped {
                s.push_str(&format!("  stopped: {why}\n"));
            }
        }
        if !self.refine.is_empty() {
            let steps: Vec<String> = self
                .refine
                .iter()
                .map(|r| match r.promised_gain {
                    Some(g) => format!(
                        "{:.4} ({:.1} s, promised {:.2}%)",
                        r.residual_mse,
                        r.seconds,
                        100.0 * g
                    ),
                    None => format!("{:.4} ({:.1} s)", r.residual_mse, r.seconds),
                })
                .collect();
            s.push_str(&format!(
                "  refine: residual MSE per Gauss-Newton step {}\n",
                steps.join(", ")
            ));
        }
        if let Some(ns) = self.no_structure() {
            s.push_str(&format!("  {ns}\n"));
        }
        s
    }
}
