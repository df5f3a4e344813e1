//! The `Sweep` generator: the paper's product net, searched one unit at a time.
//!
//! By homogeneity every hidden unit's incoming weights (with its bias as one more coordinate
//! when `bias_bound > 0`) can be taken on the unit sphere, the scale moving to the next layer;
//! the output layer is solved by ridge least squares for every candidate. So a candidate is one
//! point of a net of the sphere per hidden unit, of every layer: the product net of the paper's
//! enumerate-and-test, (3 / delta)^(units (r - 1)) points and more, far beyond enumeration
//! whole for any teacher of interest (10^77 for parity k = 4's sixteen units at delta = 0.3).
//! Every candidate tested is a member of that net (at the current resolution) and the pick is
//! the one that validates best, as in the paper; what is ours is the order of the tests:
//!
//! 1. **Start**: `sweep_starts` random members of the net (or the whole net when it is no
//!    larger), the best kept.
//! 2. **Sweeps**: for each unit in turn, every point of the coarse net (at most
//!    [`COARSE_POINTS`] per unit) is tried with the other units fixed, and the best kept; sweeps
//!    repeat until one changes nothing (at most `sweep_max`).
//! 3. **Finer levels**: delta halves, and the sweeps try `sweep_local` points of the finer net
//!    near each unit's current point (the unit's vector turned by Gaussian steps of the new
//!    delta), up to `sweep_levels` times, ending early when a level lowers the validation
//!    error by less than 1%.
//!
//! The candidate budget caps the whole search. No gradient is taken anywhere.
//!
//! **Scoring.** A unit of the last hidden layer changes one feature of the output layer's least
//! squares, so its candidates are scored on the host by a rank-one update: with the other
//! units' features Phi_o fixed, each candidate costs one pass for Phi_o^T phi, phi^T phi and
//! phi^T y (training and validation rows) and O(f^2) for the solve and the validation error,
//! where the backend's batched evaluation costs f^2 / 2 per row (12x fewer operations for
//! sixteen units, 36x for 64). The current units' features, Gram matrix and products with y
//! are kept and updated when a unit changes, and in the level-0 sweeps so are the coarse net's
//! products with them: a net point then costs O(f) to gather and O(f^2) to score, with no
//! pass over the rows. At the finer levels a candidate lies within a few tenths of its unit,
//! and its products are the unit's plus a linear term plus corrections on the few rows it moves
//! to the other side of its hyperplane ([`LastLayer::near_products`]): on parity k = 6 (64
//! units) the enumerate stage took 8.6 s instead of 13.0. Units of earlier layers change every
//! feature and are scored
//! through the backend ([`crate::backend::Backend::evaluate_candidates`]). The pick is scored
//! through the backend at the end, so its reported error is the same statistic the other
//! generators report.

use super::{random_unit, sphere_net, Found, Layout, Scorer, SearchConfig};
use crate::backend::ProjectedSamples;
use crate::error::Result;
use nalgebra::{DMatrix, DVector, DVectorView};
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Most points of the coarse net tried per unit and sweep (the whole net at delta = 0.3 for
/// r <= 4 bias-free units, 442 points on S^3; beyond, the farthest-point net of this size).
pub const COARSE_POINTS: usize = 512;
/// A finer level must lower the best validation error by this fraction to be followed by
/// another.
const LEVEL_GAIN: f64 = 0.01;

/// The units of a candidate: per hidden layer, per unit, a unit vector of the layer's input
/// width (plus the bias coordinate when biases are on).
type Units = Vec<Vec<Vec<f64>>>;

struct Shape {
    hidden: Vec<usize>,
    /// Input width of each layer.
    inputs: Vec<usize>,
    bias: bool,
}

impl Shape {
    fn new(rank: usize, hidden: &[usize], bias: bool) -> Self {
        let mut inputs = vec![rank];
        inputs.extend(hidden.iter().take(hidden.len().saturating_sub(1)));
        Shape {
            hidden: hidden.to_vec(),
            inputs,
            bias,
        }
    }

    /// Length of a unit's vector in layer l.
    fn dim(&self, l: usize) -> usize {
        self.inputs[l] + usize::from(self.bias)
    }

    /// The hidden parameters (the candidate's prefix) of `units`.
    fn prefix(&self, units: &Units, len: usize) -> Vec<f32> {
        let mut p = Vec::with_capacity(len);
        for (l, layer) in units.iter().enumerate() {
            let w = self.inputs[l];
            for u in layer {
                p.extend(u[..w].iter().map(|&v| v as f32));
            }
            for u in layer {
                p.push(if self.bias { u[w] as f32 } else { 0.0 });
            }
        }
        p
    }
}

/// Unit vectors near `u`: `u` turned by a Gaussian step of size `delta` and renormalised.
fn near(u: &[f64], delta: f64, count: usize, rng: &mut rand::rngs::StdRng) -> Vec<Vec<f64>> {
    let scale = delta / (u.len() as f64).sqrt();
    (0..count)
        .map(|_| {
            let v: Vec<f64> = u
                .iter()
                .map(|&a| a + scale * rng.sample::<f64, _>(StandardNormal))
                .collect();
            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            v.into_iter().map(|a| a / n).collect()
        })
        .collect()
}

/// Samples in f64 with the inputs of the last hidden layer under the current earlier units.
struct Rows {
    /// n x w inputs of the last hidden layer.
    by_column: DMatrix<f64>,
    y: Vec<f64>,
    n: usize,
}

impl Rows {
    /// The last hidden layer's inputs: z, or z through the earlier layers of `units`.
    fn new(samples: &ProjectedSamples, shape: &Shape, units: &Units) -> Self {
        let n = samples.len();
        let r = samples.rank;
        let z: Vec<f64> = samples.z.iter().map(|&v| v as f64).collect();
        let mut by_column = DMatrix::from_vec(n, r, transposed(&z, n, r));
        for (l, layer) in units.iter().take(shape.hidden.len() - 1).enumerate() {
            by_column = relu_layer(&by_column, shape.inputs[l], layer, shape.bias);
        }
        Rows {
            by_column,
            y: samples.y.iter().map(|&v| v as f64).collect(),
            n,
        }
    }

    fn y(&self) -> DVectorView<'_, f64> {
        DVectorView::from_slice(&self.y, self.n)
    }
}

/// A candidate's Phi_o^T phi, phi^T phi and phi^T y.
type Products = (Vec<f64>, f64, f64);

/// u . a (+ bias) of each of `units` on every row a of the n x w `inputs`: n x units.len().
fn pre_activations(
    inputs: &DMatrix<f64>,
    w: usize,
    units: &[Vec<f64>],
    bias: bool,
) -> DMatrix<f64> {
    let u = DMatrix::from_fn(w, units.len(), |k, j| units[j][k]);
    let mut pre = inputs * u;
    if bias {
        for (mut col, u) in pre.column_iter_mut().zip(units) {
            col.add_scalar_mut(u[w]);
        }
    }
    pre
}

/// relu(u . a (+ bias)) of each of `units` on every row a of the n x w `inputs`:
/// n x units.len().
fn relu_layer(inputs: &DMatrix<f64>, w: usize, units: &[Vec<f64>], bias: bool) -> DMatrix<f64> {
    let mut phi = pre_activations(inputs, w, units, bias);
    phi.apply(|t| *t = t.max(0.0));
    phi
}

/// [`relu_layer`] of the last hidden layer's inputs.
fn features(rows: &Rows, w: usize, units: &[Vec<f64>], bias: bool) -> DMatrix<f64> {
    relu_layer(&rows.by_column, w, units, bias)
}

/// The last hidden layer on one split: its inputs, its current units' features (and the
/// constant) with their Gram matrix and products with y, and, during the level-0 sweeps, the
/// coarse net's products with them. Built when the layer's inputs change and updated a unit
/// at a time: rebuilding the features and Gram for every unit visited was half the cost of a
/// finer level's unit on parity k = 6 (64 units).
struct LastLayer {
    rows: Rows,
    /// (h + 1) x n: a row per unit, then the constant.
    phi_t: DMatrix<f64>,
    gram: DMatrix<f64>,
    phi_y: DVector<f64>,
    yy: f64,
    net: Option<NetProducts>,
}

impl LastLayer {
    fn new(rows: Rows, w: usize, layer: &[Vec<f64>], bias: bool) -> Self {
        let h = layer.len();
        let phi_t = features(&rows, w, layer, bias)
            .insert_column(h, 1.0)
            .transpose();
        let gram = &phi_t * phi_t.transpose();
        let phi_y = &phi_t * rows.y();
        let yy = rows.y.iter().map(|v| v * v).sum();
        LastLayer {
            rows,
            phi_t,
            gram,
            phi_y,
            yy,
            net: None,
        }
    }

    /// Unit `k` is now `u`.
    fn set_unit(&mut self, w: usize, k: usize, u: &[f64], bias: bool) {
        let f = features(&self.rows, w, std::slice::from_ref(&u.to_vec()), bias);
        self.phi_t.set_row(k, &f.transpose().row(0));
        let g = &self.phi_t * &f;
        self.gram.set_row(k, &g.transpose().row(0));
        self.gram.set_column(k, &g.column(0));
        self.phi_y[k] = f.column(0).dot(&self.rows.y());
        if let Some(net) = &mut self.net {
            net.cross.set_row(k, &f.tr_mul(&net.phi).row(0));
        }
    }

    /// The Gram matrix and products with y of the other units and the constant (Phi_o).
    fn others(&self, skip: usize) -> (DMatrix<f64>, DVector<f64>) {
        (
            self.gram.clone().remove_row(skip).remove_column(skip),
            self.phi_y.clone().remove_row(skip),
        )
    }

    /// The products of unit `skip` as it is.
    fn own(&self, skip: usize) -> Products {
        (
            dropping(self.gram.column(skip).iter(), skip),
            self.gram[(skip, skip)],
            self.phi_y[skip],
        )
    }

    /// The products of each candidate of a block for unit `skip`, as two matrix products (the
    /// block's features on every row, then every unit's features with them): a pass per
    /// candidate ran at about 1.5 GFLOP/s, and on parity k = 6 (64 units) the paper method's
    /// enumerate-and-test took two minutes of a `learn` run.
    fn products(&self, w: usize, skip: usize, block: &[Vec<f64>], bias: bool) -> Vec<Products> {
        let phi = features(&self.rows, w, block, bias);
        let g = &self.phi_t * &phi;
        let y = self.rows.y();
        (0..block.len())
            .map(|j| {
                let col = phi.column(j);
                (
                    dropping(g.column(j).iter(), skip),
                    col.dot(&col),
                    col.dot(&y),
                )
            })
            .collect()
    }

    /// What [`LastLayer::near_products`] needs of a unit whose vector is `u`, for candidates
    /// at most `reach` from it.
    fn pivot(&self, w: usize, u: &[f64], bias: bool, reach: f64) -> Pivot {
        #[cfg(target_arch = "x86_64")]
        if crate::backend::cpu::trainer::avx2_available() {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.pivot_avx2(w, u, bias, reach) };
        }
        self.pivot_body(w, u, bias, reach)
    }

    /// [`LastLayer::pivot`] compiled for AVX2 (no FMA: the same bits).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn pivot_avx2(&self, w: usize, u: &[f64], bias: bool, reach: f64) -> Pivot {
        self.pivot_body(w, u, bias, reach)
    }

    #[inline(always)]
    fn pivot_body(&self, w: usize, u: &[f64], bias: bool, reach: f64) -> Pivot {
        let wb = w + usize::from(bias);
        let z = self.rows.by_column.as_slice();
        let n = self.rows.n;
        let pre = pre_activations(
            &self.rows.by_column,
            w,
            std::slice::from_ref(&u.to_vec()),
            bias,
        );
        let (h1, phi_t) = (self.phi_t.nrows(), self.phi_t.as_slice());
        let mut active = vec![0.0; h1 * wb];
        let mut second = vec![0.0; wb * wb];
        let mut with_y = vec![0.0; wb];
        let mut a = vec![1.0; wb];
        let mut near: Vec<(f64, u32)> = Vec::new();
        // A loop over the rows on slices rather than a product with a masked copy of the
        // inputs: the product packed all of Phi for an output of (h + 1) x (w + 1).
        for (i, (&s, &y)) in pre.iter().zip(&self.rows.y).enumerate() {
            for (k, ak) in a.iter_mut().take(w).enumerate() {
                *ak = z[k * n + i];
            }
            if s > 0.0 {
                let phi = &phi_t[i * h1..(i + 1) * h1];
                for (column, &ak) in active.chunks_exact_mut(h1).zip(&a) {
                    for (m, &f) in column.iter_mut().zip(phi) {
                        *m += ak * f;
                    }
                }
                for (column, &ak) in second.chunks_exact_mut(wb).zip(&a) {
                    for (m, &al) in column.iter_mut().zip(&a) {
                        *m += ak * al;
                    }
                }
                for (m, &ak) in with_y.iter_mut().zip(&a) {
                    *m += ak * y;
                }
            }
            // The rows a candidate within `reach` may move to the other side of:
            // |u . a| <= reach |a|, by their margin |u . a| / |a|.
            let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt();
            let margin = s.abs() / norm.max(1e-300);
            if margin <= reach {
                near.push((margin, i as u32));
            }
        }
        near.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let input = |i: usize| (0..wb).map(move |k| if k < w { z[k * n + i] } else { 1.0 });
        Pivot {
            u: u.to_vec(),
            active: DMatrix::from_vec(h1, wb, active),
            second: DMatrix::from_vec(wb, wb, second),
            with_y: DVector::from_vec(with_y),
            margin: near.iter().map(|r| r.0).collect(),
            row: near.iter().map(|r| r.1).collect(),
            input: near.iter().flat_map(|r| input(r.1 as usize)).collect(),
            pre: near.iter().map(|r| pre[r.1 as usize]).collect(),
        }
    }

    /// [`LastLayer::products`] of candidates near a unit (its [`Pivot`]), from the difference
    /// to it. With a = (z, 1) the unit's input (the 1 when biases are on), the unit u and a
    /// candidate v, relu(v . a) = v . a on the rows where both are active, and the rows where
    /// one is (u . a and v . a of opposite signs) have |u . a| <= |v - u| |a|. So with sums over
    /// u's active rows A = sum Phi_row a^T, S = sum a a^T and r = sum a y,
    /// Phi^T phi_v = Phi^T phi_u + A (v - u) + sum over the rows that change side of
    /// |v . a| Phi_row, phi_v^T phi_v = v^T S v and phi_v^T y = r . v, each +- (v . a)^2 and
    /// (v . a) y on those rows. Only the rows of margin |u . a| / |a| below |v - u| are looked
    /// at, a fraction of about |v - u| of them (a finer level's candidate is within 0.15 of
    /// its unit), and the rows that change side cost h + 1 each: the full products cost h + 1
    /// on every row.
    fn near_products(&self, skip: usize, pivot: &Pivot, block: &[Vec<f64>]) -> Vec<Products> {
        #[cfg(target_arch = "x86_64")]
        if crate::backend::cpu::trainer::avx2_available() {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.near_products_avx2(skip, pivot, block) };
        }
        self.near_products_body(skip, pivot, block)
    }

    /// [`LastLayer::near_products`] compiled for AVX2 (no FMA: the same bits).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn near_products_avx2(
        &self,
        skip: usize,
        pivot: &Pivot,
        block: &[Vec<f64>],
    ) -> Vec<Products> {
        self.near_products_body(skip, pivot, block)
    }

    #[inline(always)]
    fn near_products_body(&self, skip: usize, pivot: &Pivot, block: &[Vec<f64>]) -> Vec<Products> {
        let own = self.gram.column(skip);
        let wb = pivot.u.len();
        block
            .iter()
            .map(|v| {
                let vv = DVectorView::from_slice(v, wb);
                let step = vv - DVectorView::from_slice(&pivot.u, wb);
                let mut cross = own + &pivot.active * &step;
                let mut square = vv.dot(&(&pivot.second * vv));
                let mut with_y = vv.dot(&pivot.with_y);
                let reach = step.norm() * (1.0 + 1e-12);
                let end = pivot.margin.partition_point(|&m| m <= reach);
                for (p, a) in pivot.input.chunks_exact(wb).take(end).enumerate() {
                    let t: f64 = a.iter().zip(v).map(|(x, w)| x * w).sum();
                    if (t > 0.0) != (pivot.pre[p] > 0.0) {
                        let i = pivot.row[p] as usize;
                        cross.axpy(t.abs(), &self.phi_t.column(i), 1.0);
                        let sign = if t > 0.0 { 1.0 } else { -1.0 };
                        square += sign * t * t;
                        with_y += sign * t * self.rows.y[i];
                    }
                }
                (dropping(cross.iter(), skip), square, with_y)
            })
            .collect()
    }

    /// Computes the coarse net's products unless they are kept already.
    fn keep_net(&mut self, w: usize, net: &[Vec<f64>], bias: bool) {
        if self.net.is_none() {
            self.net = Some(NetProducts::new(&self.rows, &self.phi_t, w, net, bias));
        }
    }
}

/// The largest distance from `u` to any of `points` (a hair more, for rounding).
fn reach(u: &[f64], points: &[Vec<f64>]) -> f64 {
    let far = (points.iter())
        .map(|v| v.iter().zip(u).map(|(a, b)| (a - b) * (a - b)).sum::<f64>())
        .fold(0.0, f64::max);
    far.sqrt() * (1.0 + 1e-9)
}

/// A unit of the last hidden layer as [`LastLayer::near_products`] starts from: its vector
/// u, the sums over its active rows of Phi_row a^T ((h + 1) x (w or w + 1)), a a^T and a y,
/// and the rows within reach of its hyperplane (margin |u . a| / |a| at most the reach, in
/// increasing order) with their inputs a (row after row) and u . a.
struct Pivot {
    u: Vec<f64>,
    active: DMatrix<f64>,
    second: DMatrix<f64>,
    with_y: DVector<f64>,
    margin: Vec<f64>,
    row: Vec<u32>,
    input: Vec<f64>,
    pre: Vec<f64>,
}

/// The values but the one at `skip`.
fn dropping<'a>(values: impl Iterator<Item = &'a f64>, skip: usize) -> Vec<f64> {
    (values.enumerate())
        .filter(|&(i, _)| i != skip)
        .map(|(_, v)| *v)
        .collect()
}

/// The coarse net's features on one split and their products with the current units'
/// features and the constant: all a level-0 sweep over the last hidden layer needs, updated a
/// row at a time when a unit changes. A unit's net points then cost O(h) to gather instead of
/// two products over the rows each (parity k = 6: 64 units of 512 points per sweep).
struct NetProducts {
    /// n x P: the net points' features.
    phi: DMatrix<f64>,
    /// (h + 1) x P: each current unit's features (then the constant) against each point's.
    cross: DMatrix<f64>,
    /// Each point's phi^T phi and phi^T y.
    square: Vec<f64>,
    with_y: Vec<f64>,
}

impl NetProducts {
    fn new(rows: &Rows, phi_t: &DMatrix<f64>, w: usize, net: &[Vec<f64>], bias: bool) -> Self {
        let phi = features(rows, w, net, bias);
        let y = rows.y();
        NetProducts {
            square: phi.column_iter().map(|c| c.dot(&c)).collect(),
            with_y: phi.column_iter().map(|c| c.dot(&y)).collect(),
            cross: phi_t * &phi,
            phi,
        }
    }

    /// Net point p's products as a candidate for unit `skip`.
    fn products(&self, skip: usize, p: usize) -> Products {
        (
            dropping(self.cross.column(p).iter(), skip),
            self.square[p],
            self.with_y[p],
        )
    }
}

/// The n x h row-major `a` column by column, a block of rows at a time (nalgebra's transpose
/// walks the whole output with a stride of n and spent a quarter of the enumerate stage at
/// h = 64 in cache misses).
fn transposed(a: &[f64], n: usize, h: usize) -> Vec<f64> {
    const BLOCK: usize = 256;
    let mut out = vec![0.0; n * h];
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        for k in 0..h {
            for (o, row) in out[k * n + start..k * n + end]
                .iter_mut()
                .zip(a[start * h..end * h].chunks_exact(h))
            {
                *o = row[k];
            }
        }
    }
    out
}

/// Candidates scored together in [`LastLayer::products`].
const CANDIDATE_BLOCK: usize = 32;

/// What the candidates after the first (the unit as it is) are, which sets how their products
/// are found.
#[derive(Clone, Copy, PartialEq)]
enum Candidates {
    /// The coarse net's points in order: their products are kept ([`NetProducts`]).
    OnNet,
    /// Points near the unit: from the difference to it ([`LastLayer::near_products`]).
    Near,
    /// Anywhere: two matrix products over the rows ([`LastLayer::products`]).
    Anywhere,
}

/// Validation MSE of every candidate for unit `skip` of the last hidden layer, the output
/// layer solved by ridge on the training rows (see the module docs). The first candidate is
/// the unit as it is.
fn score_last_layer(
    (train, val): (&LastLayer, &LastLayer),
    w: usize,
    skip: usize,
    candidates: &[Vec<f64>],
    bias: bool,
    ridge: f64,
    kind: Candidates,
) -> Vec<f64> {
    let (gram, phi_y) = train.others(skip);
    let (gram_v, phi_y_v) = val.others(skip);
    let h = gram.nrows();
    let rho = ridge * (0..h).map(|i| gram[(i, i)]).sum::<f64>() / (h + 1) as f64 + 1e-12;
    let mut g_oo = gram;
    for i in 0..h {
        g_oo[(i, i)] += rho;
    }
    let Some(chol) = nalgebra::linalg::Cholesky::new(g_oo) else {
        return vec![f64::INFINITY; candidates.len()];
    };
    let a_star = chol.solve(&phi_y);
    let nv = val.rows.n.max(1) as f64;
    let rest = &candidates[1..];
    let mut products = vec![(train.own(skip), val.own(skip))];
    match (&train.net, &val.net, kind) {
        (Some(nt), Some(nv), Candidates::OnNet) => {
            products.extend((0..rest.len()).map(|p| (nt.products(skip, p), nv.products(skip, p))))
        }
        (_, _, Candidates::Near) => {
            let (u, reach) = (&candidates[0], reach(&candidates[0], rest));
            let (pt, pv) = rayon::join(
                || train.pivot(w, u, bias, reach),
                || val.pivot(w, u, bias, reach),
            );
            products.par_extend(rest.par_chunks(CANDIDATE_BLOCK).flat_map_iter(|block| {
                let t = train.near_products(skip, &pt, block);
                let v = val.near_products(skip, &pv, block);
                t.into_iter().zip(v)
            }))
        }
        _ => products.par_extend(rest.par_chunks(CANDIDATE_BLOCK).flat_map_iter(|block| {
            let t = train.products(w, skip, block, bias);
            let v = val.products(w, skip, block, bias);
            t.into_iter().zip(v)
        })),
    }
    products
        .into_par_iter()
        .map(|((g, cc, cy), (gv, ccv, cyv))| {
            let g = DVector::from_vec(g);
            let b = chol.solve(&g);
            let schur = cc + rho - g.dot(&b);
            let a_c = if schur > 1e-12 * (cc + rho) {
                (cy - b.dot(&phi_y)) / schur
            } else {
                0.0
            };
            let a_o = &a_star - &b * a_c;
            let gv = DVector::from_vec(gv);
            let sse = val.yy - 2.0 * (a_o.dot(&phi_y_v) + a_c * cyv)
                + a_o.dot(&(&gram_v * &a_o))
                + 2.0 * a_c * a_o.dot(&gv)
                + a_c * a_c * ccv;
            let mse = sse.max(0.0) / nv;
            if mse.is_finite() {
                mse
            } else {
                f64::INFINITY
            }
        })
        .collect()
}

/// See the module docs. Returns the best (validation MSE, params), whether the start pass
/// enumerated the whole net, the coarse net's size for the first layer and the history (best
/// validation MSE after the start and after every sweep).
pub(super) fn sweep_search(
    scorer: &mut Scorer,
    layout: &Layout,
    config: &SearchConfig,
) -> Result<Found> {
    let bias = config.bias_bound > 0.0;
    let shape = Shape::new(layout.rank, &config.hidden, bias);
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0x5eed_5ee9);
    // One coarse net per distinct unit length.
    let nets: Vec<Vec<Vec<f64>>> = (0..shape.hidden.len())
        .map(|l| {
            sphere_net(
                shape.dim(l),
                config.sphere_delta,
                COARSE_POINTS,
                config.seed,
            )
        })
        .collect();
    let draw = |l: usize, rng: &mut rand::rngs::StdRng| -> Vec<f64> {
        if nets[l].is_empty() {
            random_unit(shape.dim(l), rng)
        } else {
            nets[l][rng.random_range(0..nets[l].len())].clone()
        }
    };
    let total_units: usize = shape.hidden.iter().sum();
    let net_log10: f64 = (0..shape.hidden.len())
        .map(|l| shape.hidden[l] as f64 * (nets[l].len().max(1) as f64).log10())
        .sum();
    let exhaustive = net_log10 <= (config.sweep_starts.max(1) as f64).log10() + 1e-9;

    // 1. Start.
    let starts = if exhaustive {
        every_start(&shape, &nets)
    } else {
        (0..config.sweep_starts.max(1))
            .map(|_| {
                shape
                    .hidden
                    .iter()
                    .enumerate()
                    .map(|(l, &h)| (0..h).map(|_| draw(l, &mut rng)).collect())
                    .collect()
            })
            .collect()
    };
    let prefixes: Vec<Vec<f32>> = starts
        .iter()
        .map(|u| shape.prefix(u, layout.prefix))
        .collect();
    let scored = scorer.score(&config.hidden, &prefixes)?;
    let (i, _) = scored
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
        .expect("at least one start");
    let mut units = starts[i].clone();
    let mut best = scored[i].clone();
    let mut history = vec![best.0];
    let mut last: Option<(LastLayer, LastLayer)> = None;
    if exhaustive || total_units == 0 {
        return Ok((best, exhaustive, nets[0].len(), history));
    }

    // 2. and 3. Sweeps at the coarse resolution, then at finer ones.
    let mut delta = config.sphere_delta;
    for level in 0..=config.sweep_levels {
        let before = best.0;
        if let (true, Some((t, v))) = (level > 0, &mut last) {
            // Finer levels try points off the coarse net.
            (t.net, v.net) = (None, None);
        }
        for _ in 0..config.sweep_max.max(1) {
            let mut changed = false;
            for l in 0..shape.hidden.len() {
                for j in 0..shape.hidden[l] {
                    if scorer.evaluated >= config.budget {
                        let best = rescore(scorer, &shape, layout, config, &units)?;
                        return Ok((best, false, nets[0].len(), history));
                    }
                    let points = if level == 0 {
                        if nets[l].is_empty() {
                            (0..COARSE_POINTS)
                                .map(|_| random_unit(shape.dim(l), &mut rng))
                                .collect()
                        } else {
                            nets[l].clone()
                        }
                    } else {
                        near(&units[l][j], delta, config.sweep_local.max(1), &mut rng)
                    };
                    let room = config.budget - scorer.evaluated;
                    // The current point first: a change must beat it on the same scale.
                    let mut points = points;
                    points.truncate(room.saturating_sub(1));
                    points.insert(0, units[l][j].clone());
                    let scores: Vec<f64> = if l + 1 == shape.hidden.len() {
                        let w = shape.inputs[l];
                        let (tr, va) = last.get_or_insert_with(|| {
                            let layer = |samples| {
                                let rows = Rows::new(samples, &shape, &units);
                                LastLayer::new(rows, w, &units[l], bias)
                            };
                            (layer(scorer.train), layer(scorer.val))
                        });
                        let kind = if level > 0 {
                            Candidates::Near
                        } else if nets[l].is_empty() {
                            Candidates::Anywhere
                        } else {
                            tr.keep_net(w, &nets[l], bias);
                            va.keep_net(w, &nets[l], bias);
                            Candidates::OnNet
                        };
                        scorer.evaluated += points.len();
                        score_last_layer((tr, va), w, j, &points, bias, config.ridge, kind)
                    } else {
                        let prefixes: Vec<Vec<f32>> = points
                            .iter()
                            .map(|p| {
                                let mut u = units.clone();
                                u[l][j] = p.clone();
                                shape.prefix(&u, layout.prefix)
                            })
                            .collect();
                        scorer
                            .score(&config.hidden, &prefixes)?
                            .into_iter()
                            .map(|s| s.0)
                            .collect()
                    };
                    let (k, &s) = scores
                        .iter()
                        .enumerate()
                        .min_by(|a, b| a.1.total_cmp(b.1))
                        .expect("the current point at least");
                    // The current point is also on the coarse net, scored there by other sums:
                    // a copy of it is no change.
                    if k > 0 && s < scores[0] && points[k] != points[0] {
                        units[l][j] = points[k].clone();
                        best.0 = s;
                        changed = true;
                        if l + 1 < shape.hidden.len() {
                            // The last layer's inputs moved.
                            last = None;
                        } else if let Some((t, v)) = &mut last {
                            t.set_unit(shape.inputs[l], j, &units[l][j], bias);
                            v.set_unit(shape.inputs[l], j, &units[l][j], bias);
                        }
                    } else {
                        best.0 = best.0.min(scores[0]);
                    }
                }
            }
            history.push(best.0);
            if !changed {
                break;
            }
        }
        if level > 0 && best.0 > (1.0 - LEVEL_GAIN) * before {
            break;
        }
        delta *= 0.5;
    }
    let best = rescore(scorer, &shape, layout, config, &units)?;
    Ok((best, false, nets[0].len(), history))
}

/// Every network of the coarse nets: each unit of layer l takes every point of `nets[l]`.
fn every_start(shape: &Shape, nets: &[Vec<Vec<f64>>]) -> Vec<Units> {
    let mut all: Vec<Units> = vec![Vec::new()];
    for (l, &h) in shape.hidden.iter().enumerate() {
        for _ in 0..h {
            let mut next = Vec::with_capacity(all.len() * nets[l].len());
            for partial in &all {
                for p in &nets[l] {
                    let mut u = partial.clone();
                    if u.len() <= l {
                        u.push(Vec::new());
                    }
                    u[l].push(p.clone());
                    next.push(u);
                }
            }
            all = next;
        }
    }
    all
}

/// The pick scored through the backend, as every generator's pick is.
fn rescore(
    scorer: &mut Scorer,
    shape: &Shape,
    layout: &Layout,
    config: &SearchConfig,
    units: &Units,
) -> Result<(f64, Vec<f32>)> {
    let prefix = shape.prefix(units, layout.prefix);
    let mut scored = scorer.score(&config.hidden, &[prefix])?;
    Ok(scored.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// relu(u . a (+ bias)) by a loop: the twin of [`relu_layer`] on one row.
    fn unit_value(u: &[f64], a: &[f64], w: usize, bias: bool) -> f64 {
        let mut t = if bias { u[w] } else { 0.0 };
        for (p, q) in u[..w].iter().zip(a) {
            t += p * q;
        }
        t.max(0.0)
    }

    /// n rows of r standard normal coordinates, each labelled by `label`.
    fn gaussian_samples(
        n: usize,
        r: usize,
        rng: &mut rand::rngs::StdRng,
        label: impl Fn(&[f32]) -> f32,
    ) -> ProjectedSamples {
        let z: Vec<f32> = (0..n * r)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let y = z.chunks(r).map(label).collect();
        ProjectedSamples { rank: r, z, y }
    }

    /// a and b agree to 1e-9 of the larger (or absolutely, near 0).
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    /// Products of candidates near a unit, from the difference to it, are those of the two
    /// matrix products over the rows (checked against the rows' sums below), with and without
    /// biases, near and far (where most rows change side).
    #[test]
    fn products_near_a_unit_are_the_full_products() {
        let (n, r, h) = (400, 3, 5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let samples = gaussian_samples(n, r, &mut rng, |x| (x[0] * x[2]).abs() - x[1]);
        for bias in [false, true] {
            let shape = Shape::new(r, &[h], bias);
            let dim = shape.dim(0);
            let layer: Vec<Vec<f64>> = (0..h).map(|_| random_unit(dim, &mut rng)).collect();
            let rows = Rows::new(&samples, &shape, &vec![layer.clone()]);
            let kept = LastLayer::new(rows, r, &layer, bias);
            for skip in [0, h - 1] {
                for delta in [0.05, 0.3, 2.0] {
                    let block = near(&layer[skip], delta, 9, &mut rng);
                    let pivot = kept.pivot(r, &layer[skip], bias, reach(&layer[skip], &block));
                    let full = kept.products(r, skip, &block, bias);
                    let fast = kept.near_products(skip, &pivot, &block);
                    for (a, b) in full.iter().zip(&fast) {
                        assert!(
                            a.0.iter().zip(&b.0).all(|(p, q)| close(*p, *q)),
                            "{a:?} {b:?}"
                        );
                        assert!(close(a.1, b.1) && close(a.2, b.2), "{a:?} {b:?}");
                    }
                }
            }
        }
    }

    /// The kept products (the current units', the net's, a block's) are the sums over the
    /// rows, before and after a unit changes: the twin the sweeps rely on.
    #[test]
    fn kept_products_are_the_sums_over_the_rows() {
        let (n, r, h) = (300, 3, 4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let samples = gaussian_samples(n, r, &mut rng, |x| (x[0] * x[1]).abs());
        let shape = Shape::new(r, &[h], false);
        let mut layer: Vec<Vec<f64>> = (0..h).map(|_| random_unit(r, &mut rng)).collect();
        let net: Vec<Vec<f64>> = (0..20).map(|_| random_unit(r, &mut rng)).collect();
        let rows = Rows::new(&samples, &shape, &vec![layer.clone()]);
        let mut kept = LastLayer::new(rows, r, &layer, false);
        kept.keep_net(r, &net, false);
        // The twin: a feature column by a loop over the rows (the constant for None).
        let column = |u: Option<&Vec<f64>>| -> Vec<f64> {
            (samples.z.chunks(r))
                .map(|x| {
                    u.map_or(1.0, |u| {
                        unit_value(
                            u,
                            &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                            r,
                            false,
                        )
                    })
                })
                .collect()
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        let y: Vec<f64> = samples.y.iter().map(|&v| v as f64).collect();
        let same = |got: &Products, u: &Vec<f64>, others: &[Option<&Vec<f64>>]| {
            let c = column(Some(u));
            let g: Vec<f64> = others.iter().map(|o| dot(&column(*o), &c)).collect();
            assert_eq!(got.0.len(), g.len());
            assert!(
                got.0.iter().zip(&g).all(|(a, b)| close(*a, *b)),
                "{:?} {g:?}",
                got.0
            );
            assert!(close(got.1, dot(&c, &c)) && close(got.2, dot(&c, &y)));
        };
        for round in 0..2 {
            if round == 1 {
                layer[2] = net[5].clone();
                kept.set_unit(r, 2, &layer[2], false);
            }
            for skip in 0..h {
                let mut others: Vec<Option<&Vec<f64>>> = (layer.iter().enumerate())
                    .filter(|&(k, _)| k != skip)
                    .map(|(_, u)| Some(u))
                    .collect();
                others.push(None);
                let (gram, phi_y) = kept.others(skip);
                for (a, p) in others.iter().enumerate() {
                    assert!(close(phi_y[a], dot(&column(*p), &y)));
                    for (b, q) in others.iter().enumerate() {
                        assert!(close(gram[(a, b)], dot(&column(*p), &column(*q))));
                    }
                }
                same(&kept.own(skip), &layer[skip], &others);
                let block = kept.products(r, skip, &net[..7], false);
                for (p, got) in block.iter().enumerate() {
                    same(got, &net[p], &others);
                }
                let cached = kept.net.as_ref().expect("built above");
                for (p, u) in net.iter().enumerate() {
                    same(&cached.products(skip, p), u, &others);
                }
            }
        }
    }
}
