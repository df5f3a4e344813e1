//! `--method paper`: filtered PCA as Chen, Klivans and Meka describe it (docs/algorithm.md,
//! "The paper's algorithm"). Label rounds only: round 1 filters on y alone, and every later
//! round filters on y within the cells of z = B x on **every** direction found so far, until a
//! round finds nothing. None of the default method's additions run: no whitening (the paper's
//! inputs are N(0, I_d)), no Gauss-Newton refine steps, no residual rounds. What is kept from
//! the default method is what the paper leaves open (its constants were not available to us,
//! see the docs): the label quantiles and tails, the calibrated null and its margin, the merge.
//! One addition, made of the paper's own step, runs after the rounds unless `refine_steps` is
//! 0: refine sweeps, each finding every direction again by a round conditioned on the others
//! (see [`paper_pca`]). Each refine round offers, beside its filters' direction, the cell SIR
//! of its bin means ([`cell_sir`]), and before the sweeps the directions are turned within
//! their span so that the cell SIR sees each ([`align_in_span`]); both are additions too. A
//! round reads the bin means alone ([`BinMeans::read`]) where its cell SIR leads by a wide
//! margin: the first sweep reads them first and ends a round there when the cell SIR is far
//! ahead of the direction's estimate ([`SIR_AHEAD`]), later sweeps where the direction's
//! filters lost by a wide margin ([`FILTERS_BEHIND`]).
//!
//! **Cells.** An equal-mass grid with b cells per axis on all r found directions (edges at the
//! pilot's quantiles j / b of each coordinate, Phi^-1(j / b) for Gaussian z) has b^r cells,
//! exponentially many in r, most of them too small to hold a filter once r grows. Only the
//! occupied cells are accumulated: a cell gets bins of its own when the pilot predicts at least
//! 2 x `min_filter_rows` rows in it over the whole pass (a filter needs `min_filter_rows`, and
//! a cell's filters split it) and holds at least [`MIN_PILOT_CELL`] pilot rows (its label
//! edges are the pilot's quantiles). Every other row goes to one pooled cell, itself a set of
//! z, so its filters are as valid as any other's. b is the largest value from
//! `cells_per_axis` down to 2 whose own cells hold at least half of the pilot's rows. When not
//! even one sign cell (b = 2) can have its own bins, conditioning on all r directions is
//! unaffordable at this N and the rounds stop, saying so.
//!
//! **Memory bound.** The pass accumulates G x (C + 1) x Y bins of (d + 1)(d + 2) / 2 + d + 4
//! f64 each (G = `cells_per_axis` random groups for the null, C own cells, Y label bins per
//! cell). Since every own cell expects 2 x min_filter_factor x d rows, C <= N / (2 x 20 d);
//! and C is cut further (the least populous cells pooled) so that the accumulators stay within
//! 1 GiB: bytes <= min(1 GiB, G Y (N / (40 d) + 1) (d + 2)^2 / 2 x 8), whatever r is. The CPU
//! pass reads x in blocks at most as large as the accumulators (see the CPU moments module).
//!
//! The cell of a row is computed on the host, in the view that also tags the row with its
//! group ([`CellView`]); both are folded into one extra column that the backend's moments pass
//! bins on, so the pass runs on any backend (the GPU included, reading the rows from the host).

use super::filtered::{self, cell_edges, Filter, RoundBins, RoundOutcome};
use super::report::{MeansOnly, NoStructure, RefineEstimate, RoundKind, SubspaceReport};
use super::sources::group_of;
use super::{equal_mass_edges, read_pilot, Frame, Method, Pilot, SubspaceConfig};
use crate::backend::Backend;
use crate::data::whiten::Whitening;
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::moments::{count_below, BinSpec, SampleWeight};
use rayon::prelude::*;
use std::collections::HashMap;

/// Pilot rows a cell needs for its own bins: its label edges are the quantiles of those rows.
pub const MIN_PILOT_CELL: usize = 50;
/// The round's accumulators may take at most this many bytes (as the default method's rounds).
pub const ACCUMULATOR_BUDGET: u64 = 1 << 30;
/// A grid is used when its own cells hold at least this fraction of the pilot's rows.
const MIN_COVERAGE: f64 = 0.5;
/// A filters' direction of score s (the root-sum-square of its filter scores in multiples of
/// their null edges) is predicted to lie SCORE_ANGLE / s rad from the direction it estimates.
/// Chosen here from measurements: on parity k = 4 at d = 128 from 8e5 rows, round 1's scores
/// 20.2-21.6 went with angles 0.065-0.084 (seeds 2, 3) and refine rounds' 19-46 with
/// 0.073-0.031, score x angle 1.4-1.7 throughout.
const SCORE_ANGLE: f64 = 1.5;
/// A refine round's cell SIR is used only when it lies within SIR_AGREEMENT x the root-sum-
/// square of its predicted angle and the direction's own from the direction as it is. Two
/// unbiased estimates in d' dimensions lie about that root-sum-square apart (their errors are
/// spread over d' directions, so the angle between them varies by about 1 / sqrt(2 d') of it);
/// a cell SIR further off carries the leak of the other directions' errors that its predicted
/// angle leaves out, and taking it feeds that leak into the next rounds' cells. Deep parity
/// k = 3 at d = 64 from 3.2e5 rows without the check: on two seeds of six the sweeps drifted
/// further with every round (one basis ending 0.61 rad off the span); with it the drift stops
/// where the cell SIR leaves the direction (gradient energy missed 7.8e-3 and 8.4e-3 against
/// 1.1e-1 and 1.7e-2, and 1.6e-3 and 1.1e-3 with the filters' estimate alone). Checked
/// against the filters' estimate instead, the cell SIR was set aside at d = 512, where the
/// filters' estimate was the one drifting (parity k = 4 from 4.1e6 rows: test MSE/Var 0.19
/// against 4.6e-3).
const SIR_AGREEMENT: f64 = 1.5;
/// A refine round reads the bin means alone (a pass of N d instead of N d^2 / 2, for the cell
/// SIR) when, in the direction's round of the sweep before, its filters' predicted angle was
/// at least this many times the kept estimate's: they would need this many times the score to
/// win. Chosen here: on parity k = 4 from 1e6 rows the filters of every refine round lost to
/// the cell SIR, predicting 2.0-3.2x its angle at d = 128 and 5-7x at d = 512; where they
/// come within 1.5x the rounds keep them (the composite teacher at d = 16 from 4e4 rows: two
/// of its three directions in the second sweep).
const FILTERS_BEHIND: f64 = 1.5;
/// The first sweep reads each direction's bin means first, and a round whose cell SIR (passing
/// the null margin and the agreement check) predicts at most 1 / SIR_AHEAD of the angle of the
/// direction's estimate from the round that found it ends there; otherwise a pass of second
/// moments follows. The filters of that pass would have needed SIR_AHEAD times the score of the
/// round that found the direction to win. Chosen here: in 80 first-sweep rounds (parity
/// k = 2, 4, 6, composite, fan, random [4, 4], deep parity k = 3; d 16-128; two seeds each) the
/// filters scored at most 1.44x that round's (parity k = 4 at d = 64) and never won; the cell
/// SIR predicted 0.26-0.49 of the angle on parity k >= 4 and random [4, 4], 0.44-0.57 on deep
/// parity and 0.56-0.78 on the composite (whose rounds keep their second moments).
const SIR_AHEAD: f64 = 2.0;

/// The cells of one conditioned round: the grid, its own cells (by key) and the pooled rest.
struct Cells {
    /// Cells per axis b.
    per_axis: usize,
    /// Axis rows (length d) and their b - 1 edges each.
    axes: Vec<Vec<f64>>,
    edges: Vec<Vec<f64>>,
    /// Key (mixed radix b over the axes) -> own cell index 0..own.
    index: HashMap<u128, u32>,
    /// Own cells; the pooled cell is index `own`.
    own: usize,
    /// Fraction of the pilot's rows in own cells.
    coverage: f64,
}

impl Cells {
    /// Total cells, the pooled one included.
    fn count(&self) -> usize {
        self.own + 1
    }

    fn key(&self, x: impl Fn(usize) -> f64, d: usize) -> u128 {
        let mut key = 0u128;
        for (axis, edges) in self.axes.iter().zip(&self.edges) {
            let mut z = 0.0;
            for (i, a) in axis.iter().enumerate().take(d) {
                z += a * x(i);
            }
            key = key * self.per_axis as u128 + count_below(edges, z) as u128;
        }
        key
    }

    /// The projections of f32 rows (rows x d) on the axes, into `z` (rows x axes), in f64.
    fn project(&self, rows: &[f32], d: usize, z: &mut Vec<f64>) {
        use crate::backend::cpu::{project::project_block, trainer::avx2_available};
        z.resize(rows.len() / d * self.axes.len(), 0.0);
        project_block(avx2_available(), &self.axes.concat(), d, rows, z);
    }

    /// The key of a row whose projections on the axes are `z`.
    fn key_of(&self, z: &[f64]) -> u128 {
        (z.iter().zip(&self.edges)).fold(0u128, |key, (&v, edges)| {
            key * self.per_axis as u128 + count_below(edges, v) as u128
        })
    }

    fn cell_of(&self, key: u128) -> usize {
        self.index.get(&key).map_or(self.own, |&c| c as usize)
    }
}

/// Bytes of one bin's accumulators for d inputs plus the tag column.
fn bin_bytes(d: usize) -> u64 {
    let side = (d + 1) as u64;
    (side * (side + 1) / 2 + side + 3) * 8
}

/// Label bins per cell of a conditioned round (atom bins assumed, as the budget must hold
/// whatever the pilot shows).
fn label_bins(c: &SubspaceConfig) -> usize {
    c.cell_quantiles.len() + 2 * c.cell_tails.len() + 3
}

/// z = B x of every pilot row on each row of `basis`: one column per row.
fn pilot_projections(pilot: &Pilot, d: usize, basis: &[Vec<f64>]) -> Vec<Vec<f64>> {
    basis
        .iter()
        .map(|row| {
            (pilot.x.chunks_exact(d))
                .map(|x| crate::linalg::dot_wide(row, x))
                .collect()
        })
        .collect()
}

/// The grid of a conditioned round on every row of `basis`, or None when no cell can have bins
/// of its own (see the module docs).
fn choose_cells(
    pilot: &Pilot,
    d: usize,
    n: u64,
    basis: &[Vec<f64>],
    c: &SubspaceConfig,
) -> Option<Cells> {
    let rows = pilot.y.len();
    let r = basis.len();
    if rows == 0 || r == 0 {
        return None;
    }
    let need_rows = 2.0 * filtered::min_filter_rows(c, d) as f64;
    let scale = n as f64 / rows as f64;
    let per_cell_bytes = c.cells_per_axis as u64 * label_bins(c) as u64 * bin_bytes(d);
    // Own cells the budget allows next to the pooled one.
    let budget_cells = (ACCUMULATOR_BUDGET / per_cell_bytes.max(1)).saturating_sub(1) as usize;
    let z = pilot_projections(pilot, d, basis);
    let mut fallback = None;
    for b in (2..=c.cells_per_axis).rev() {
        // Keys must fit 128 bits: b^r < 2^127.
        if (r as f64) * (b as f64).log2() > 126.0 {
            continue;
        }
        let edges = equal_mass_edges(&z, b);
        let mut counts: HashMap<u128, usize> = HashMap::new();
        for i in 0..rows {
            let mut key = 0u128;
            for (zs, e) in z.iter().zip(&edges) {
                key = key * b as u128 + count_below(e, zs[i]) as u128;
            }
            *counts.entry(key).or_default() += 1;
        }
        let mut own: Vec<(u128, usize)> = counts
            .into_iter()
            .filter(|&(_, k)| k >= MIN_PILOT_CELL && k as f64 * scale >= need_rows)
            .collect();
        // Most populous first (ties by key, so the choice does not depend on hashing).
        own.sort_by(|p, q| q.1.cmp(&p.1).then(p.0.cmp(&q.0)));
        own.truncate(budget_cells);
        own.sort_by_key(|p| p.0);
        let covered: usize = own.iter().map(|p| p.1).sum();
        let cells = Cells {
            per_axis: b,
            axes: basis.to_vec(),
            edges,
            index: own
                .iter()
                .enumerate()
                .map(|(i, p)| (p.0, i as u32))
                .collect(),
            own: own.len(),
            coverage: covered as f64 / rows as f64,
        };
        if cells.coverage >= MIN_COVERAGE {
            return Some(cells);
        }
        if b == 2 && cells.own > 0 {
            fallback = Some(cells);
        }
    }
    fallback
}

/// The samples with one extra column: group g (from the row index) and cell c (from z = B x)
/// folded into g x cells + c, the single axis the round's bins split on.
struct CellView<'a> {
    inner: &'a dyn SampleSource,
    cells: &'a Cells,
    groups: usize,
    seed: u64,
}

impl SampleSource for CellView<'_> {
    fn dim(&self) -> usize {
        self.inner.dim() + 1
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let d = self.inner.dim();
        let w = d + 1;
        let total = self.cells.count();
        let r = self.cells.axes.len();
        let mut z = Vec::new();
        let n = match self.inner.in_memory(start, rows) {
            // Rows in memory are copied once, straight to their widened places.
            Some((xs, ys)) => {
                let n = ys.len();
                self.cells.project(xs, d, &mut z);
                x.clear();
                x.resize(n * w, 0.0);
                for (to, from) in x.chunks_exact_mut(w).zip(xs.chunks_exact(d)) {
                    to[..d].copy_from_slice(from);
                }
                y.clear();
                y.extend_from_slice(ys);
                n
            }
            None => {
                let n = self.inner.read(start, rows, x, y)?;
                self.cells.project(&x[..n * d], d, &mut z);
                x.resize(n * w, 0.0);
                // Widen each row by one column in place, last row first.
                for i in (0..n).rev() {
                    x.copy_within(i * d..(i + 1) * d, i * w);
                }
                n
            }
        };
        for i in 0..n {
            let cell = self
                .cells
                .cell_of(self.cells.key_of(&z[i * r..(i + 1) * r]));
            let g = group_of(self.seed, start + i as u64, self.groups);
            x[i * w + d] = (g * total + cell) as f32;
        }
        Ok(n)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The bins of a conditioned round on `cells`.
fn cell_bins(pilot: &Pilot, d: usize, cells: &Cells, c: &SubspaceConfig) -> RoundBins {
    let labels = &pilot.y;
    let atom = labels.iter().filter(|&&v| v == 0.0).count() as f64 >= 0.01 * labels.len() as f64;
    let total = cells.count();
    let mut per_cell: Vec<Vec<f64>> = vec![Vec::new(); total];
    for (x, &y) in pilot.x.chunks_exact(d).zip(labels) {
        per_cell[cells.cell_of(cells.key(|j| x[j], d))].push(y);
    }
    let mut filters = Vec::new();
    let mut y_edges = Vec::with_capacity(total);
    for (cell, ys) in per_cell.iter_mut().enumerate() {
        ys.sort_by(|p, q| p.total_cmp(q));
        let ce = cell_edges(ys, &c.cell_quantiles, &c.cell_tails, atom);
        filters.extend(ce.filters.into_iter().map(|bins| Filter { cell, bins }));
        y_edges.push(ce.edges);
    }
    let y_bins = y_edges[0].len() + 1;
    let groups = c.cells_per_axis;
    let mut basis = vec![0.0; d + 1];
    basis[d] = 1.0;
    let mut spec_y_edges = Vec::with_capacity(groups * total);
    for _ in 0..groups {
        spec_y_edges.extend(y_edges.iter().cloned());
    }
    RoundBins {
        spec: BinSpec {
            dim: d + 1,
            basis,
            axis_edges: vec![(1..groups * total).map(|v| v as f64 - 0.5).collect()],
            y_edges: spec_y_edges,
        },
        filters,
        cells: total,
        y_bins,
        groups,
        cell_axes: cells.axes.len(),
        cells_per_axis: cells.per_axis,
        coverage: cells.coverage,
    }
}

/// Label bins of the alignment's objective: the pilot's label deciles.
const ALIGN_LABEL_BINS: usize = 10;
/// Pilot rows the alignment's objective wants per (cell, label bin) on average.
const ALIGN_ROWS_PER_BIN: usize = 10;
/// Angles tried per pair of directions: a grid over [-pi/4, pi/4] (a quarter turn only
/// permutes and flips the pair, which leaves the objective unchanged).
const ALIGN_ANGLES: usize = 17;
/// Most Jacobi sweeps over the pairs.
const ALIGN_SWEEPS: usize = 3;

/// The alignment's objective for coordinates `t` (r columns over the pilot's rows): the sum
/// over coordinates j of sum_b p_b (E[t_j | b] - E[t_j | c(b)])^2, where the cells c are the
/// equal-mass grid (`per_axis` cells per axis) on the other r - 1 coordinates and the bins b
/// split each cell by the label deciles `y_bin`: how much of each coordinate the labels reveal
/// once the others' cells are fixed, the signal a refine round's cell SIR sees.
/// `edges[j]` are column j's equal-mass edges ([`column_edges`]).
fn alignment_objective(t: &[&[f64]], edges: &[&[f64]], y_bin: &[usize], per_axis: usize) -> f64 {
    let (r, n) = (t.len(), y_bin.len());
    // Each row's key over all r axes (mixed radix, axis 0 most significant); a coordinate's
    // cell is the key with its own digit taken out.
    let mut key = vec![0usize; n];
    for (ts, e) in t.iter().zip(edges) {
        for (k, &v) in key.iter_mut().zip(ts.iter()) {
            *k = *k * per_axis + count_below(e, v);
        }
    }
    let cells = per_axis.pow(r as u32 - 1);
    let mut count = vec![0.0; cells * ALIGN_LABEL_BINS];
    let mut sum = vec![0.0; cells * ALIGN_LABEL_BINS];
    let mut total = 0.0;
    for (j, tj) in t.iter().enumerate() {
        let low = per_axis.pow((r - 1 - j) as u32);
        count.iter_mut().for_each(|v| *v = 0.0);
        sum.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..n {
            let cell = key[i] / (low * per_axis) * low + key[i] % low;
            let b = cell * ALIGN_LABEL_BINS + y_bin[i];
            count[b] += 1.0;
            sum[b] += tj[i];
        }
        for c in 0..cells {
            let bins = c * ALIGN_LABEL_BINS..(c + 1) * ALIGN_LABEL_BINS;
            let n_c: f64 = count[bins.clone()].iter().sum();
            if n_c == 0.0 {
                continue;
            }
            let mean_c = sum[bins.clone()].iter().sum::<f64>() / n_c;
            for b in bins.filter(|&b| count[b] > 0.0) {
                total += count[b] / n as f64 * (sum[b] / count[b] - mean_c).powi(2);
            }
        }
    }
    total
}

/// The per_axis - 1 equal-mass edges of a column (its order statistics at j n / per_axis).
fn column_edges(column: &[f64], per_axis: usize) -> Vec<f64> {
    let mut v = column.to_vec();
    let n = v.len();
    (1..per_axis)
        .map(|j| {
            let k = (j * n / per_axis).min(n - 1);
            *v.select_nth_unstable_by(k, |p, q| p.total_cmp(q)).1
        })
        .collect()
}

/// (u, v) turned by angle a in their plane: (c u - s v, s u + c v).
fn plane_turn(u: &[f64], v: &[f64], a: f64) -> (Vec<f64>, Vec<f64>) {
    let (c, s) = (a.cos(), a.sin());
    let first = u.iter().zip(v).map(|(p, q)| c * p - s * q).collect();
    let second = u.iter().zip(v).map(|(p, q)| s * p + c * q).collect();
    (first, second)
}

/// Turns the found directions within their span so that each is most visible to a cell SIR
/// conditioned on the others: the largest [`alignment_objective`] on the pilot, by Jacobi
/// sweeps of plane rotations over a grid of angles. Returns the turned basis and the
/// objective before and after. Round 1 fixes the span but not the directions within it: where
/// the filtered matrices are isotropic on the span (parity), its directions are an arbitrary
/// rotation, and the cells of a refine round on such mixtures leave the label nearly
/// symmetric in the refined direction. There the cell SIR's signal is small and the others'
/// errors leak into it (parity k = 4, d = 128, 8e5 rows, the others 0.07 rad off the span:
/// 0.10-0.17 rad after a cell SIR on a random rotation of the span, 0.029-0.035 on the
/// turned one). The grid has as many cells per axis as the rounds' (at most) while the pilot
/// fills each (cell, label bin) with ALIGN_ROWS_PER_BIN rows on average; when not even sign
/// cells can (r > 10 from the 1e5-row pilot), the basis is returned as it is.
fn align_in_span(
    pilot: &Pilot,
    d: usize,
    basis: &[Vec<f64>],
    cells_per_axis: usize,
) -> (Vec<Vec<f64>>, f64, f64) {
    let r = basis.len();
    let n = pilot.y.len();
    let fits = |b: usize| {
        (b as f64).powi(r as i32 - 1) * (ALIGN_LABEL_BINS * ALIGN_ROWS_PER_BIN) as f64 <= n as f64
    };
    let Some(per_axis) = (2..=cells_per_axis).rev().find(|&b| fits(b)) else {
        return (basis.to_vec(), 0.0, 0.0);
    };
    if r < 2 {
        return (basis.to_vec(), 0.0, 0.0);
    }
    let mut t = pilot_projections(pilot, d, basis);
    let y_edges = equal_mass_edges(std::slice::from_ref(&pilot.y), ALIGN_LABEL_BINS).remove(0);
    let y_bin: Vec<usize> = pilot.y.iter().map(|&v| count_below(&y_edges, v)).collect();
    fn columns(t: &[Vec<f64>]) -> Vec<&[f64]> {
        t.iter().map(Vec::as_slice).collect()
    }
    // Rows of the rotation taking the basis to the turned directions.
    let mut rot: Vec<Vec<f64>> = (0..r)
        .map(|i| (0..r).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    let turn = |rows: &mut [Vec<f64>], i: usize, j: usize, a: f64| {
        (rows[i], rows[j]) = plane_turn(&rows[i], &rows[j], a);
    };
    let mut edges: Vec<Vec<f64>> = t.iter().map(|c| column_edges(c, per_axis)).collect();
    let start = alignment_objective(&columns(&t), &columns(&edges), &y_bin, per_axis);
    let mut best = start;
    for _ in 0..ALIGN_SWEEPS {
        let mut turned = false;
        for i in 0..r {
            for j in i + 1..r {
                // The angles' objectives in parallel, chosen in angle order: the same choice
                // whatever the thread count.
                let trials: Vec<(f64, f64)> = (0..ALIGN_ANGLES)
                    .into_par_iter()
                    .map(|m| {
                        let a = std::f64::consts::FRAC_PI_4
                            * (2.0 * m as f64 / (ALIGN_ANGLES - 1) as f64 - 1.0);
                        if a == 0.0 {
                            return (f64::NEG_INFINITY, a);
                        }
                        // Only the pair's two columns change.
                        let (ti, tj) = plane_turn(&t[i], &t[j], a);
                        let (ei, ej) = (column_edges(&ti, per_axis), column_edges(&tj, per_axis));
                        let (mut cols, mut cut) = (columns(&t), columns(&edges));
                        (cols[i], cols[j], cut[i], cut[j]) = (&ti, &tj, &ei, &ej);
                        (alignment_objective(&cols, &cut, &y_bin, per_axis), a)
                    })
                    .collect();
                let mut choice = (best, 0.0);
                for (value, a) in trials {
                    if value > choice.0 {
                        choice = (value, a);
                    }
                }
                if choice.1 != 0.0 {
                    turn(&mut t, i, j, choice.1);
                    edges[i] = column_edges(&t[i], per_axis);
                    edges[j] = column_edges(&t[j], per_axis);
                    turn(&mut rot, i, j, choice.1);
                    best = choice.0;
                    turned = true;
                }
            }
        }
        if !turned {
            break;
        }
    }
    let turned = rot
        .iter()
        .map(|w| {
            let mut v = vec![0.0; basis[0].len()];
            for (wk, b) in w.iter().zip(basis) {
                crate::linalg::axpy(&mut v, *wk, b);
            }
            v
        })
        .collect();
    (turned, start, best)
}

/// Cell-conditioned sliced inverse regression over a conditioned round's bins: the leading
/// eigenpair of M = sum_b p_b (m_b - m_c(b)) (m_b - m_c(b))^T on the complement of `basis`,
/// where b runs over the (cell, label bin) pairs pooled across the random groups, m_b is the
/// bin's mean of x and m_c(b) its cell's. Centring each bin on its own cell takes out what the
/// cells themselves shift: a basis row off by theta leaks into m_b only through how its
/// coordinate varies across the label bins of one cell, not through the cell's mean.
struct CellSir {
    direction: Vec<f64>,
    /// Leading eigenvalue over the null edge sigma^2 (sqrt(d') + sqrt(m))^2 / N, the upper
    /// edge of the Marchenko-Pastur law that M follows when x's complement is independent of
    /// (cell, label) with variance sigma^2 (m: the bins' degrees of freedom, bins minus cells).
    score: f64,
    /// The predicted angle to the direction it estimates (radians); see [`cell_sir`].
    angle: f64,
}

/// What the cell SIR reads from a conditioned round's pass: per (cell, label bin) the count and
/// the sum of x (the null groups pooled), and the totals its noise level needs. A full pass
/// gives them with its second moments ([`BinMeans::of_moments`]); a refine round that needs
/// nothing else reads them alone, in a pass of N d instead of N d^2 / 2 ([`BinMeans::read`]).
struct BinMeans {
    /// Label bins per cell; bin (c, j) is `c * y_bins + j`.
    y_bins: usize,
    count: Vec<u64>,
    /// Sums of x per bin, row-major (bins x d).
    sum: Vec<f64>,
    /// Sum of x over every row.
    sum_x: Vec<f64>,
    /// Sum of |x|^2 over every row.
    square: f64,
    /// Per basis row u, the sum of (u . x)^2 over every row.
    on_basis: Vec<f64>,
}

impl BinMeans {
    fn total(&self) -> u64 {
        self.count.iter().sum()
    }

    /// The groups of a full pass's bins pooled.
    fn of_moments(
        moments: &crate::moments::FilteredMoments,
        bins: &RoundBins,
        frame: &Frame,
        basis: &[Vec<f64>],
    ) -> BinMeans {
        let (side, d) = (moments.dim, frame.d);
        let (cells, y_bins) = (bins.cells, bins.y_bins);
        let mut count = vec![0u64; cells * y_bins];
        let mut sum = vec![0.0; cells * y_bins * d];
        for g in 0..bins.groups {
            for b in 0..cells * y_bins {
                let src = g * cells * y_bins + b;
                count[b] += moments.count[src];
                let row = &moments.sum_x[src * side..src * side + d];
                sum[b * d..(b + 1) * d]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(a, v)| *a += v);
            }
        }
        // The paper method's frame is the identity, so the raw second moments are the frame's.
        let (xx, x) = moments.totals();
        let mut square = 0.0;
        let mut k = 0;
        for i in 0..d {
            square += xx[k];
            k += side - i;
        }
        let mut t = vec![0.0; d];
        let on_basis = (frame.raw_rows(basis).iter())
            .map(|u| {
                super::eigen::packed_symmetric_matvec(&xx, side, d, u, &mut t);
                crate::linalg::dot_wide(u, &t)
            })
            .collect();
        BinMeans {
            y_bins,
            count,
            sum,
            sum_x: x[..d].to_vec(),
            square,
            on_basis,
        }
    }

    /// One pass over `source` for the bins of `cells` (label edges per cell: `y_edges`; the
    /// basis is the cells' axes), on the host through [`Backend::row_sums`] (so its sums are added across
    /// MPI ranks). Rows are summed in blocks of fixed size, added in order: the result does not
    /// depend on the thread count.
    fn read(
        backend: &dyn Backend,
        source: &dyn SampleSource,
        cells: &Cells,
        y_edges: &[Vec<f64>],
    ) -> Result<BinMeans> {
        const BLOCK_ROWS: usize = 8192;
        let d = source.dim();
        let y_bins = y_edges[0].len() + 1;
        let bins = cells.count() * y_bins;
        // count | sums per bin | sum of |x|^2 | sums of (u . x)^2 (the sum of x is the bins')
        let (at_sum, at_square, at_basis) = (bins, bins * (d + 1), bins * (d + 1) + 1);
        let r = cells.axes.len();
        let len = at_basis + r;
        let avx2 = crate::backend::cpu::trainer::avx2_available();
        let block = |x: &[f32], y: &[f32]| {
            let mut acc = vec![0.0; len];
            let mut z = Vec::new();
            cells.project(x, d, &mut z);
            for (i, (row, &label)) in x.chunks_exact(d).zip(y).enumerate() {
                let zr = &z[i * r..(i + 1) * r];
                let cell = cells.cell_of(cells.key_of(zr));
                let b = cell * y_bins + count_below(&y_edges[cell], label as f64);
                acc[b] += 1.0;
                acc[at_square] += add_widened(avx2, &mut acc[at_sum + b * d..][..d], row);
                for (s, zj) in acc[at_basis..].iter_mut().zip(zr) {
                    *s += zj * zj;
                }
            }
            acc
        };
        let sums = backend.row_sums(source, len, &mut |rows: &dyn SampleSource| {
            let mut acc = vec![0.0; len];
            crate::data::for_each_chunk(rows, 8 * BLOCK_ROWS, |_, x, y| {
                let parts: Vec<Vec<f64>> =
                    (x.par_chunks(BLOCK_ROWS * d).zip(y.par_chunks(BLOCK_ROWS)))
                        .map(|(xb, yb)| block(xb, yb))
                        .collect();
                for p in parts {
                    acc.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
                }
                Ok(())
            })?;
            Ok(acc)
        })?;
        let sum = sums[at_sum..at_square].to_vec();
        let mut sum_x = vec![0.0; d];
        for bin in sum.chunks_exact(d) {
            sum_x.iter_mut().zip(bin).for_each(|(a, v)| *a += v);
        }
        Ok(BinMeans {
            y_bins,
            count: sums[..bins].iter().map(|&v| v as u64).collect(),
            sum,
            sum_x,
            square: sums[at_square],
            on_basis: sums[at_basis..].to_vec(),
        })
    }
}

/// sum += row (widened to f64); returns |row|^2. Eight lanes, so that the AVX2 copy (chosen by
/// `avx2`) runs two four-wide vectors: the bin-means pass spent most of its time here and in
/// the dot products, one f64 at a time.
fn add_widened(avx2: bool, sum: &mut [f64], row: &[f32]) -> f64 {
    #[inline(always)]
    fn body(sum: &mut [f64], row: &[f32]) -> f64 {
        let mut square = [0.0f64; 8];
        let mut sc = sum.chunks_exact_mut(8);
        let mut rc = row.chunks_exact(8);
        for (s, v) in (&mut sc).zip(&mut rc) {
            for l in 0..8 {
                let v = v[l] as f64;
                s[l] += v;
                square[l] += v * v;
            }
        }
        for (l, (s, &v)) in sc
            .into_remainder()
            .iter_mut()
            .zip(rc.remainder())
            .enumerate()
        {
            let v = v as f64;
            *s += v;
            square[l] += v * v;
        }
        ((square[0] + square[4]) + (square[1] + square[5]))
            + ((square[2] + square[6]) + (square[3] + square[7]))
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn body_avx2(sum: &mut [f64], row: &[f32]) -> f64 {
        body(sum, row)
    }
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { body_avx2(sum, row) };
    }
    let _ = avx2;
    body(sum, row)
}

/// See [`CellSir`]. None when no bin has rows or the complement is empty.
fn cell_sir(means: &BinMeans, frame: &Frame, basis: &[Vec<f64>]) -> Option<CellSir> {
    let (d, q) = (frame.d, frame.q);
    let d_perp = q.checked_sub(basis.len()).filter(|&v| v > 0)? as f64;
    let total = means.total() as f64;
    if total == 0.0 {
        return None;
    }
    let (y_bins, count, sum) = (means.y_bins, &means.count, &means.sum);
    let cells = count.len() / y_bins;
    // Rows of A: sqrt(p_b) (m_b - m_c) in the frame, off the basis; M = A^T A.
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut dof = 0usize;
    for c in 0..cells {
        let bins_c = c * y_bins..(c + 1) * y_bins;
        let n_c: u64 = count[bins_c.clone()].iter().sum();
        if n_c == 0 {
            continue;
        }
        let mut m_c = vec![0.0; d];
        for b in bins_c.clone() {
            crate::linalg::axpy(&mut m_c, 1.0, &sum[b * d..(b + 1) * d]);
        }
        m_c.iter_mut().for_each(|v| *v /= n_c as f64);
        let occupied = bins_c.clone().filter(|&b| count[b] > 0).count();
        dof += occupied.saturating_sub(1);
        for b in bins_c.filter(|&b| count[b] > 0) {
            let n_b = count[b] as f64;
            let dm: Vec<f64> = (sum[b * d..(b + 1) * d].iter().zip(&m_c))
                .map(|(s, m)| s / n_b - m)
                .collect();
            let mut v = frame.project_out(basis, &frame.to_frame(&dm));
            let w = (n_b / total).sqrt();
            v.iter_mut().for_each(|a| *a *= w);
            rows.push(v);
        }
    }
    if rows.is_empty() || dof == 0 {
        return None;
    }
    // sigma^2: the mean variance of x on the complement.
    let mut trace = means.square;
    for v in &means.on_basis {
        trace -= v;
    }
    let mean = frame.project_out(basis, &frame.to_frame(&means.sum_x));
    let sigma2 = (trace / total - mean.iter().map(|v| (v / total).powi(2)).sum::<f64>()) / d_perp;
    let pairs = super::eigen::top_eigenpairs(
        q,
        1,
        |v: &[f64], out: &mut [f64]| {
            out.iter_mut().for_each(|o| *o = 0.0);
            for r in &rows {
                let c = crate::linalg::dot_wide(r, v);
                crate::linalg::axpy(out, c, r);
            }
        },
        0x5151,
    );
    let (lambda, direction) = pairs.into_iter().next()?;
    let m = dof as f64;
    let edge = sigma2 * (d_perp.sqrt() + m.sqrt()).powi(2) / total;
    // First-order perturbation of the leading eigenvector: the noise of the bin means moves it
    // by sigma^2 d' / (N lambda) in sin^2, plus the noise's own second-order term; the signal
    // lambda is the eigenvalue less what the noise adds along it (m + d') sigma^2 / N.
    let signal = lambda - sigma2 * (m + d_perp) / total;
    let angle = if signal > 0.0 {
        let first = sigma2 * d_perp / (total * signal);
        let second = (sigma2 / (total * signal)).powi(2) * d_perp * m;
        (first + second).sqrt()
    } else {
        f64::INFINITY
    };
    Some(CellSir {
        direction,
        score: lambda / edge,
        angle,
    })
}

/// The cell SIR's angle to the direction it refines over the root-sum-square of their
/// predicted angles (`reference`: the direction's predicted angle and the direction).
fn sir_disagreement(sir: &CellSir, reference: &(f64, Vec<f64>)) -> f64 {
    let apart = crate::linalg::dot(&sir.direction, &reference.1)
        .abs()
        .min(1.0)
        .acos();
    apart / reference.0.hypot(sir.angle)
}

/// Seed of a round's random groups (as the default method's rounds).
fn group_seed(c: &SubspaceConfig, index: usize) -> u64 {
    c.seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The paper's step: a label round conditioned on (and orthogonal to) `basis`: on y alone
/// when `basis` is empty, otherwise within the cells of z = B x on every row of `basis`. None
/// when no cell of a sign grid can have bins of its own (see [`choose_cells`]). With
/// `means_only` (a refine round, and why), the pass reads the bin means alone, for the cell
/// SIR: the round has no filters then.
// The pass's inputs (samples, pilot, frame, basis) and the round's bookkeeping, as `round`'s.
#[allow(clippy::too_many_arguments)]
fn paper_step(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    pilot: &Pilot,
    frame: &Frame,
    basis: &[Vec<f64>],
    kind: RoundKind,
    means_only: Option<MeansOnly>,
    room: usize,
    index: usize,
    c: &SubspaceConfig,
) -> Result<Option<(RoundOutcome, Option<CellSir>)>> {
    if basis.is_empty() {
        let out = filtered::round(
            backend,
            source,
            pilot,
            frame,
            basis,
            &[],
            None,
            kind,
            room,
            index,
            false,
            c,
        )?;
        return Ok(Some((out, None)));
    }
    let (d, n) = (source.dim(), source.len());
    let Some(cells) = choose_cells(pilot, d, n, basis, c) else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let bins = cell_bins(pilot, d, &cells, c);
    if let Some(why) = means_only {
        let y_edges = &bins.spec.y_edges[..bins.cells];
        let means = BinMeans::read(backend, source, &cells, y_edges)?;
        let pass_seconds = started.elapsed().as_secs_f64();
        let host = std::time::Instant::now();
        let sir = cell_sir(&means, frame, basis);
        let report = filtered::means_only_report(
            why,
            &bins,
            (d * 8 * means.count.len()) as u64,
            started,
            pass_seconds,
            host,
        );
        filtered::announce_round(&report, index, n);
        let out = RoundOutcome {
            report,
            directions: Vec::new(),
            whitening: None,
        };
        return Ok(Some((out, sir)));
    }
    let view = CellView {
        inner: source,
        cells: &cells,
        groups: bins.groups,
        seed: group_seed(c, index),
    };
    let bar = crate::progress::bar(n, &format!("round {index}"));
    let moments = backend.moments(&view, &bins.spec, SampleWeight::Unit, &bar)?;
    bar.finish_and_clear();
    let sir = (kind == RoundKind::Refine)
        .then(|| {
            cell_sir(
                &BinMeans::of_moments(&moments, &bins, frame, basis),
                frame,
                basis,
            )
        })
        .flatten();
    let out = filtered::conclude(
        &moments, &bins, frame, basis, kind, room, index, false, n, started, c,
    );
    Ok(Some((out, sir)))
}

/// Filtered PCA as the paper describes it; see the module docs.
pub(super) fn paper_pca(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    c: &SubspaceConfig,
) -> Result<SubspaceReport> {
    let d = source.dim();
    let n = source.len();
    let pilot = read_pilot(source, c.pilot_rows)?;
    if let Some(none) = NoStructure::if_constant(&pilot.y, n, d) {
        return Err(Error::NoStructure(Box::new(none)));
    }
    let whitening = Whitening::identity(d);
    let frame = Frame::new(&whitening);
    let max_dim = c.dim.unwrap_or(c.max_dim).min(c.max_dim).min(d);
    let mut basis: Vec<Vec<f64>> = Vec::new();
    // The score of each direction in the round that found it (the root-sum-square of the
    // filter scores along it, in multiples of their null edges: a signal-to-noise ratio).
    let mut scores: Vec<f64> = Vec::new();
    let mut rounds = Vec::new();
    let mut samples_used = pilot.y.len() as u64;
    let mut stopped;
    loop {
        let index = rounds.len() + 1;
        if basis.len() >= max_dim {
            stopped = format!("the dimension reached its bound {max_dim}");
            break;
        }
        let room = max_dim - basis.len();
        let step = paper_step(
            backend,
            source,
            &pilot,
            &frame,
            &basis,
            RoundKind::Label,
            None,
            room,
            index,
            c,
        )?;
        let Some((out, _)) = step else {
            stopped = format!(
                "round {index} not run: conditioning on all {} directions leaves no cell of a sign grid (2^{} cells) with the {} rows a cell needs (2 x {} per filter) among the {n}",
                basis.len(),
                basis.len(),
                2 * filtered::min_filter_rows(c, d),
                filtered::min_filter_rows(c, d)
            );
            break;
        };
        samples_used += n;
        let found = out.directions.len();
        scores.extend(&out.report.scores);
        rounds.push(out.report);
        if found == 0 {
            stopped = format!("round {index} found no direction above the calibrated null");
            break;
        }
        basis.extend(out.directions);
    }
    // Refine sweeps: each found direction is found again by the paper's step with the others
    // as its basis (cells on them, the search orthogonal to them). Round 1 sees every direction
    // at once through label filters alone, where parity's signal is weak; conditioned on the
    // other directions' cells, the labels see one direction with the others' dependence held
    // nearly fixed. Each refine round offers two estimates of the direction, its filters'
    // merged direction (the paper's statistic) and the cell SIR of its bin means (an
    // addition, [`cell_sir`]), and the direction becomes the one with the smallest predicted
    // angle, when that is below the predicted angle of the direction it had from the round
    // that found it (not an earlier refine round's: those were conditioned on worse
    // estimates of the others). A filters' direction predicts SCORE_ANGLE / score. Where round
    // 1 already sees a direction strongly, conditioning only thins the filters' rows and the
    // rule keeps it (the composite teacher's fan plane at d = 128 from 1e6 rows: round 1 scores
    // 58, a refine round's filters 44; replacing it took the test error from 0.0085 to 0.015).
    // Before the sweeps the directions are turned within their span for the cell SIR
    // ([`align_in_span`]). Parity k = 4 at d = 128 from 1e6 rows: test error 0.044-0.049 with
    // the rounds alone, 0.011-0.023 with the filters' estimates alone, 5.0e-3-6.7e-3 with
    // both and the turn, each at its basis floor (docs/measurements/
    // 2026-12-06-paper-cell-sir.json). A sweep's later directions use the earlier ones' new
    // values. A sweep that moves no direction by more than SETTLED rad ends them: sin^2 of
    // that is 1e-4, below what the enumerate-and-test resolves. So does one that moves none by
    // more than the smallest angle the sweep predicted for its estimates: the moves are then
    // within the estimates' own noise. Parity k = 4 from 1e6 rows (seeds 1-3 at d = 128, seed 1
    // at 512), third sweeps moved 0.003-0.013 rad against predicted 0.024-0.055, and a cap of
    // 2 sweeps left the validation error within 2% of 3's (0.0051 / 0.0053 / 0.0069 against
    // 0.0051 / 0.0052 / 0.0068 at d = 128, 0.0207 against 0.0205 at 512) for 27-32% less
    // time.
    const SETTLED: f64 = 0.01;
    let mut sweeps = 0;
    let mut moved = f64::INFINITY;
    let mut noise = 0.0;
    let mut aligned = None;
    if c.refine_steps > 0 && basis.len() >= 2 {
        let (turned, before, after) = align_in_span(&pilot, d, &basis, c.cells_per_axis);
        if after > before {
            basis = turned;
            aligned = Some((before, after));
            // A turn mixes the directions' errors: each now carries their root mean square.
            let mean_square = (scores.iter())
                .map(|s| (SCORE_ANGLE / s).powi(2))
                .sum::<f64>()
                / scores.len() as f64;
            scores
                .iter_mut()
                .for_each(|s| *s = SCORE_ANGLE / mean_square.sqrt());
        }
    }
    // Per direction, its filters' predicted angle over the kept estimate's in its last round
    // with filters, or as the first sweep predicted it (see SIR_AHEAD), and which of the two.
    let mut behind: Vec<Option<(f64, MeansOnly)>> = vec![None; basis.len()];
    while sweeps < c.refine_steps && !basis.is_empty() && moved > SETTLED.max(noise) {
        sweeps += 1;
        moved = 0.0;
        noise = f64::INFINITY;
        for i in 0..basis.len() {
            let others: Vec<Vec<f64>> = (basis.iter().enumerate())
                .filter(|&(j, _)| j != i)
                .map(|(_, b)| b.clone())
                .collect();
            let before = SCORE_ANGLE / scores[i];
            // The direction as it is: what the cell SIR is checked against.
            let reference = (before, basis[i].clone());
            let means_only = if sweeps == 1 {
                Some(MeansOnly::SirFirst)
            } else {
                behind[i].and_then(|(ratio, why)| (ratio >= FILTERS_BEHIND).then_some(why))
            };
            let step = |means_only, index| {
                paper_step(
                    backend,
                    source,
                    &pilot,
                    &frame,
                    &others,
                    RoundKind::Refine,
                    means_only,
                    1,
                    index,
                    c,
                )
            };
            let Some((mut out, mut sir)) = step(means_only, rounds.len() + 1)? else {
                continue;
            };
            samples_used += n;
            if means_only == Some(MeansOnly::SirFirst) {
                let settles = sir.as_ref().is_some_and(|s| {
                    s.score >= c.null_margin
                        && s.angle * SIR_AHEAD <= before
                        && sir_disagreement(s, &reference) <= SIR_AGREEMENT
                });
                if settles {
                    out.report.refinement.bin_means = Some(MeansOnly::SirAhead);
                } else {
                    out.report.refinement.sir_score = sir.as_ref().map(|s| s.score);
                    out.report.refinement.sir_angle = sir.as_ref().map(|s| s.angle);
                    rounds.push(out.report);
                    let Some(full) = step(None, rounds.len() + 1)? else {
                        continue;
                    };
                    samples_used += n;
                    (out, sir) = full;
                }
            }
            let mut best = (before, RefineEstimate::Kept, None);
            let mut filters = f64::INFINITY;
            if let (Some(v), Some(&score)) = (out.directions.pop(), out.report.scores.first()) {
                filters = SCORE_ANGLE / score;
                if filters < best.0 {
                    best = (filters, RefineEstimate::Filters, Some(v));
                }
            }
            out.report.refinement.sir_score = sir.as_ref().map(|s| s.score);
            out.report.refinement.sir_angle = sir.as_ref().map(|s| s.angle);
            if let Some(sir) = sir.filter(|s| s.score >= c.null_margin && s.angle < best.0) {
                let disagreement = sir_disagreement(&sir, &reference);
                out.report.refinement.sir_disagreement = Some(disagreement);
                if disagreement <= SIR_AGREEMENT {
                    best = (sir.angle, RefineEstimate::CellSir, Some(sir.direction));
                }
            }
            let (predicted, by, direction) = best;
            match out.report.refinement.bin_means {
                None => behind[i] = Some((filters / predicted, MeansOnly::FiltersBehind)),
                Some(MeansOnly::SirAhead) => {
                    behind[i] = Some((before / predicted, MeansOnly::SirAhead))
                }
                _ => {}
            }
            noise = f64::min(noise, predicted);
            let angle = direction.map_or(0.0, |v| {
                let angle = crate::linalg::dot(&basis[i], &v).abs().min(1.0).acos();
                basis[i] = v;
                angle
            });
            out.report.refinement.moved = Some(angle);
            out.report.refinement.refined_by = Some(by);
            out.report.refinement.predicted_angle = Some((predicted, before));
            moved = moved.max(angle);
            rounds.push(out.report);
        }
    }
    if let Some((before, after)) = aligned {
        stopped.push_str(&format!(
            "; then the directions turned within their span for the cell SIR (objective {before:.3} -> {after:.3})"
        ));
    }
    if sweeps > 0 {
        stopped.push_str(&format!(
            "; then {sweeps} refine sweep{} over the {} directions",
            if sweeps == 1 { "" } else { "s" },
            basis.len()
        ));
        if sweeps < c.refine_steps && moved > SETTLED {
            stopped.push_str(&format!(
                " (the last moved none by more than its smallest predicted angle, {noise:.4} rad)"
            ));
        }
    }
    Ok(SubspaceReport {
        input_dim: d,
        frame_basis: basis.clone(),
        basis,
        whitening: None,
        rounds,
        refine: Vec::new(),
        samples_used,
        rows: n,
        null_margin: c.null_margin,
        min_filter_rows: filtered::min_filter_rows(c, d),
        method: Method::Paper,
        stopped: Some(stopped),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pilot(rows: usize, d: usize, seed: u64) -> Pilot {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
        let x: Vec<f64> = (0..rows * d)
            .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal) as f32 as f64)
            .collect();
        let y = x.chunks_exact(d).map(|r| r[0].max(0.0) - r[1]).collect();
        Pilot { x, y }
    }

    fn axes(r: usize, d: usize) -> Vec<Vec<f64>> {
        (0..r)
            .map(|i| (0..d).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
            .collect()
    }

    /// Every own cell expects 2 x min filter rows; the grid coarsens, then pools, as r grows,
    /// and the accumulators stay within the stated bound.
    #[test]
    fn cells_are_affordable_and_pooled_beyond() {
        let d = 8;
        let p = pilot(20_000, d, 3);
        let c = SubspaceConfig::default();
        let need = 2 * filtered::min_filter_rows(&c, d);
        let n = 200_000u64;
        // r = 2: 3 x 3 cells of 1/9 each, all affordable.
        let two = choose_cells(&p, d, n, &axes(2, d), &c).unwrap();
        assert_eq!((two.per_axis, two.own), (3, 9));
        assert!(two.coverage > 0.999);
        // r = 6: 3^6 = 729 cells of 274 rows are not; 2^6 = 64 sign cells of 3125 are.
        let six = choose_cells(&p, d, n, &axes(6, d), &c).unwrap();
        assert_eq!((six.per_axis, six.own), (2, 64));
        // r = 8 at N = 40 000: 256 sign cells expect 156 rows each, below the 2 x 160 = 320
        // a cell needs, so none has bins of its own.
        assert!(choose_cells(&p, d, 40_000, &axes(8, d), &c).is_none());
        for cells in [&two, &six] {
            assert!(cells.index.values().all(|&i| (i as usize) < cells.own));
            let bins = cell_bins(&p, d, cells, &c);
            let bytes = bins.spec.bins() as u64 * bin_bytes(d);
            assert!(bytes <= ACCUMULATOR_BUDGET);
            assert_eq!(bins.spec.bins(), bins.groups * bins.cells * bins.y_bins);
            bins.spec.validate().unwrap();
            assert!(n as f64 / cells.own as f64 >= need as f64 * 0.9);
        }
    }

    /// y = x_0 x_1 is odd in each axis but even in each of (x_0 +- x_1) / sqrt 2: from the
    /// diagonal basis, the alignment turns the pair back onto the axes (the grid has the
    /// eighth turn), raising its objective, and keeps the basis orthonormal within its span.
    #[test]
    fn alignment_turns_a_diagonal_basis_onto_the_axes() {
        let d = 4;
        let mut p = pilot(20_000, d, 5);
        p.y = p.x.chunks_exact(d).map(|r| r[0] * r[1]).collect();
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let basis = vec![vec![h, h, 0.0, 0.0], vec![h, -h, 0.0, 0.0]];
        let (turned, before, after) = align_in_span(&p, d, &basis, 3);
        assert!(after > 2.0 * before, "objective {before} -> {after}");
        for (i, v) in turned.iter().enumerate() {
            let on_axis = v[0].abs().max(v[1].abs());
            assert!(on_axis > 0.999, "direction {i}: {v:?}");
            assert!(v[2] == 0.0 && v[3] == 0.0);
            for (j, w) in turned.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((crate::linalg::dot(v, w) - want).abs() < 1e-12);
            }
        }
        // Nothing to turn with one direction; a pilot too small for sign cells on r - 1 = 4
        // axes (2^4 x 10 label bins x 10 rows = 1600) leaves the basis as it is.
        assert_eq!(align_in_span(&p, d, &basis[..1], 3).0, basis[..1].to_vec());
        let small = pilot(1500, 6, 2);
        assert_eq!(align_in_span(&small, 6, &axes(5, 6), 3).0, axes(5, 6));
    }

    /// The cell SIR of a refine round on e_1 finds e_0 where y is odd in x_0 within the cells
    /// of x_1 (y = x_0 sign(x_1)), to within a few times its predicted angle, which is small;
    /// where y is even in x_0 (y = |x_0| + x_1) it has nothing to see: a score below the
    /// margin, while the round's filters (second moments) still find e_0. Measured (d = 16,
    /// 6e4 rows): score 470, predicted 0.020 rad, actual 0.017; even: score 0.79, the filters'
    /// direction 0.025 rad off. A pass of the bin means alone gives the same cell SIR.
    #[test]
    fn cell_sir_sees_odd_dependence_and_predicts_its_angle() {
        let (d, n) = (16, 60_000);
        let x: Vec<f32> = pilot(n, d, 3).x.iter().map(|&v| v as f32).collect();
        let c = SubspaceConfig {
            method: Method::Paper,
            ..SubspaceConfig::default()
        };
        let whitening = Whitening::identity(d);
        let frame = Frame::new(&whitening);
        let cpu = crate::backend::cpu::CpuBackend::new();
        let step = |label: fn(&[f32]) -> f32, means_only: Option<MeansOnly>| {
            let y: Vec<f32> = x.chunks_exact(d).map(label).collect();
            let src = crate::data::SliceSource::new(d, &x, &y).unwrap();
            let p = read_pilot(&src, c.pilot_rows).unwrap();
            let step = paper_step(
                &cpu,
                &src,
                &p,
                &frame,
                &axes(2, d)[1..],
                RoundKind::Refine,
                means_only,
                1,
                2,
                &c,
            );
            let (out, sir) = step.unwrap().unwrap();
            assert_eq!(out.report.refinement.bin_means, means_only);
            (out.directions, sir.unwrap())
        };
        let found = |label: fn(&[f32]) -> f32| {
            let (directions, sir) = step(label, None);
            // The pass of bin means alone gives the same cell SIR and no filters (its noise
            // level differs in the 8th digit: the full pass sums x x^T in f32 runs).
            let (none, alone) = step(label, Some(MeansOnly::FiltersBehind));
            assert!(none.is_empty());
            let agree = crate::linalg::dot(&sir.direction, &alone.direction).abs();
            assert!(1.0 - agree < 1e-12, "{agree}");
            for (a, b) in [(sir.score, alone.score), (sir.angle, alone.angle)] {
                assert!((a - b).abs() <= 1e-6 * a.abs(), "{a} {b}");
            }
            (directions, sir)
        };
        let off_axis = |v: &[f64]| {
            (v[0].abs() / crate::linalg::dot(v, v).sqrt())
                .min(1.0)
                .acos()
        };
        let (_, odd) = found(|r| r[0] * r[1].signum());
        let angle = off_axis(&odd.direction);
        assert!(
            odd.score > 10.0 && odd.angle < 0.05,
            "score {}, predicted {}",
            odd.score,
            odd.angle
        );
        assert!(
            angle < 3.0 * odd.angle,
            "angle {angle}, predicted {}",
            odd.angle
        );
        let (filters, even) = found(|r| r[0].abs() + r[1]);
        assert!(even.score < c.null_margin, "score {}", even.score);
        assert!(
            filters.len() == 1 && off_axis(&filters[0]) < 0.1,
            "{filters:?}"
        );
    }

    /// The view's extra column is g x cells + c with the pilot's own cell rule.
    #[test]
    fn view_tags_rows_with_group_and_cell() {
        let d = 5;
        let p = pilot(4000, d, 9);
        let c = SubspaceConfig {
            min_filter_factor: 1.0,
            ..SubspaceConfig::default()
        };
        let cells = choose_cells(&p, d, 4000, &axes(2, d), &c).unwrap();
        let x32: Vec<f32> = p.x.iter().map(|&v| v as f32).collect();
        let y32: Vec<f32> = p.y.iter().map(|&v| v as f32).collect();
        let src = crate::data::SliceSource::new(d, &x32, &y32).unwrap();
        let view = CellView {
            inner: &src,
            cells: &cells,
            groups: 3,
            seed: 11,
        };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let got = view.read(100, 50, &mut x, &mut y).unwrap();
        assert_eq!(got, 50);
        for i in 0..50 {
            let row = &p.x[(100 + i) * d..(101 + i) * d];
            let want_cell = cells.cell_of(cells.key(|j| row[j], d));
            let g = group_of(11, 100 + i as u64, 3);
            assert_eq!(x[i * (d + 1) + d], (g * cells.count() + want_cell) as f32);
            assert_eq!(
                &x[i * (d + 1)..i * (d + 1) + d],
                &x32[(100 + i) * d..(101 + i) * d]
            );
        }
        // A source that must be read (not in memory) gives the same rows and tags.
        struct Streamed<'a>(&'a dyn SampleSource);
        impl SampleSource for Streamed<'_> {
            fn dim(&self) -> usize {
                self.0.dim()
            }
            fn len(&self) -> u64 {
                self.0.len()
            }
            fn read(&self, s: u64, r: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
                self.0.read(s, r, x, y)
            }
            fn describe(&self) -> String {
                self.0.describe()
            }
        }
        let streamed = Streamed(&src);
        let view = CellView {
            inner: &streamed,
            ..view
        };
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        assert_eq!(view.read(100, 50, &mut xs, &mut ys).unwrap(), 50);
        assert_eq!((xs, ys), (x, y));
    }
}
