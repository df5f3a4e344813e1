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
//! sixteen units, 36x for 64). Units of earlier layers change every feature and are scored
//! through the backend ([`crate::backend::Backend::evaluate_candidates`]). The pick is scored
//! through the backend at the end, so its reported error is the same statistic the other
//! generators report.

use super::{random_unit, sphere_net, Found, Layout, Scorer, SearchConfig};
use crate::backend::ProjectedSamples;
use crate::error::Result;
use nalgebra::{DMatrix, DVectorView};
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
    /// n x w inputs of the last hidden layer, row by row.
    inputs: Vec<f64>,
    /// The same, column by column (the layout matrix products take).
    by_column: DMatrix<f64>,
    y: Vec<f64>,
    n: usize,
}

impl Rows {
    /// The last hidden layer's inputs: z, or z through the earlier layers of `units`.
    fn new(samples: &ProjectedSamples, shape: &Shape, units: &Units) -> Self {
        let n = samples.len();
        let r = samples.rank;
        let mut cur: Vec<f64> = samples.z.iter().map(|&v| v as f64).collect();
        let mut width = r;
        for layer in units.iter().take(shape.hidden.len() - 1) {
            cur = activations(&cur, n, width, layer, shape.bias);
            width = layer.len();
        }
        Rows {
            by_column: DMatrix::from_vec(n, width, transposed(&cur, n, width)),
            inputs: cur,
            y: samples.y.iter().map(|&v| v as f64).collect(),
            n,
        }
    }
}

/// relu(u . a (+ bias)) of every unit of a layer on n rows of width w.
fn activations(a: &[f64], n: usize, w: usize, layer: &[Vec<f64>], bias: bool) -> Vec<f64> {
    let h = layer.len();
    let mut out = vec![0.0; n * h];
    out.par_chunks_mut(h * 256)
        .zip(a.par_chunks(w * 256))
        .for_each(|(o, rows)| {
            for (orow, arow) in o.chunks_exact_mut(h).zip(rows.chunks_exact(w)) {
                for (v, u) in orow.iter_mut().zip(layer) {
                    *v = unit_value(u, arow, w, bias);
                }
            }
        });
    out
}

#[inline]
fn unit_value(u: &[f64], a: &[f64], w: usize, bias: bool) -> f64 {
    let mut t = if bias { u[w] } else { 0.0 };
    for (p, q) in u[..w].iter().zip(a) {
        t += p * q;
    }
    t.max(0.0)
}

/// The fixed part of one unit's sweep on one split: the other units' features with the
/// constant, their Gram matrix and their products with y.
struct Fixed {
    /// The features, h x n: a column per row.
    phi_t: DMatrix<f64>,
    gram: DMatrix<f64>,
    phi_y: nalgebra::DVector<f64>,
    yy: f64,
}

impl Fixed {
    fn new(rows: &Rows, w: usize, layer: &[Vec<f64>], skip: usize, bias: bool) -> Self {
        let h = layer.len();
        let others: Vec<Vec<f64>> = layer
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != skip)
            .map(|(_, u)| u.clone())
            .collect();
        // The other units' features and the constant: rows of h - 1 features become rows of h.
        let phi = if h == 1 {
            vec![1.0; rows.n]
        } else {
            let features = activations(&rows.inputs, rows.n, w, &others, bias);
            let mut with_const = Vec::with_capacity(rows.n * h);
            for row in features.chunks_exact(h - 1) {
                with_const.extend_from_slice(row);
                with_const.push(1.0);
            }
            with_const
        };
        // Rows of h values: the columns of an h x n matrix. Matrix products (matrixmultiply,
        // through nalgebra) instead of loops over rows: the Gram loop was a third of the
        // enumerate stage at h = 64.
        let by_column = DMatrix::from_vec(rows.n, h, transposed(&phi, rows.n, h));
        let phi_t = DMatrix::from_vec(h, rows.n, phi);
        let gram = &phi_t * by_column;
        let phi_y = &phi_t * DVectorView::from_slice(&rows.y, rows.n);
        Fixed {
            phi_t,
            gram,
            phi_y,
            yy: rows.y.iter().map(|v| v * v).sum(),
        }
    }

    /// Phi_o^T phi, phi^T phi and phi^T y for each candidate unit of a block, as two matrix
    /// products (the block's features on every row, then Phi_o^T with them): a pass per
    /// candidate ran at about 1.5 GFLOP/s, and on parity k = 6 (64 units) the paper method's
    /// enumerate-and-test took two minutes of a `learn` run.
    fn products(
        &self,
        rows: &Rows,
        w: usize,
        block: &[Vec<f64>],
        bias: bool,
    ) -> Vec<(Vec<f64>, f64, f64)> {
        // The block's features on every row.
        let units = DMatrix::from_fn(w, block.len(), |k, j| block[j][k]);
        let mut phi = &rows.by_column * units;
        for (mut col, u) in phi.column_iter_mut().zip(block) {
            let b = if bias { u[w] } else { 0.0 };
            col.apply(|t| *t = (*t + b).max(0.0));
        }
        let g = &self.phi_t * &phi;
        let y = DVectorView::from_slice(&rows.y, rows.n);
        (0..block.len())
            .map(|j| {
                let col = phi.column(j);
                (
                    g.column(j).iter().copied().collect(),
                    col.dot(&col),
                    col.dot(&y),
                )
            })
            .collect()
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

/// Candidates scored together in [`Fixed::products`].
const CANDIDATE_BLOCK: usize = 32;

/// Validation MSE of every candidate for unit `skip` of the last hidden layer, the output
/// layer solved by ridge on the training rows (see the module docs).
#[allow(clippy::too_many_arguments)]
fn score_last_layer(
    train: &Rows,
    val: &Rows,
    w: usize,
    layer: &[Vec<f64>],
    skip: usize,
    candidates: &[Vec<f64>],
    bias: bool,
    ridge: f64,
) -> Vec<f64> {
    let ft = Fixed::new(train, w, layer, skip, bias);
    let fv = Fixed::new(val, w, layer, skip, bias);
    let h = ft.gram.nrows();
    let rho = ridge * (0..h).map(|i| ft.gram[(i, i)]).sum::<f64>() / (h + 1) as f64 + 1e-12;
    let mut g_oo = ft.gram.clone();
    for i in 0..h {
        g_oo[(i, i)] += rho;
    }
    let Some(chol) = nalgebra::linalg::Cholesky::new(g_oo) else {
        return vec![f64::INFINITY; candidates.len()];
    };
    let a_star = chol.solve(&ft.phi_y);
    let nv = val.n.max(1) as f64;
    let products: Vec<_> = candidates
        .par_chunks(CANDIDATE_BLOCK)
        .flat_map_iter(|block| {
            let train = ft.products(train, w, block, bias);
            let val = fv.products(val, w, block, bias);
            train.into_iter().zip(val)
        })
        .collect();
    products
        .into_par_iter()
        .map(|((g, cc, cy), (gv, ccv, cyv))| {
            let g = nalgebra::DVector::from_vec(g);
            let b = chol.solve(&g);
            let schur = cc + rho - g.dot(&b);
            let a_c = if schur > 1e-12 * (cc + rho) {
                (cy - b.dot(&ft.phi_y)) / schur
            } else {
                0.0
            };
            let a_o = &a_star - &b * a_c;
            let gv = nalgebra::DVector::from_vec(gv);
            let sse = fv.yy - 2.0 * (a_o.dot(&fv.phi_y) + a_c * cyv)
                + a_o.dot(&(&fv.gram * &a_o))
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
    let mut last_inputs: Option<(Rows, Rows)> = None;
    if exhaustive || total_units == 0 {
        return Ok((best, exhaustive, nets[0].len(), history));
    }

    // 2. and 3. Sweeps at the coarse resolution, then at finer ones.
    let mut delta = config.sphere_delta;
    for level in 0..=config.sweep_levels {
        let before = best.0;
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
                        let (tr, va) = last_inputs.get_or_insert_with(|| {
                            (
                                Rows::new(scorer.train, &shape, &units),
                                Rows::new(scorer.val, &shape, &units),
                            )
                        });
                        scorer.evaluated += points.len();
                        score_last_layer(
                            tr,
                            va,
                            shape.inputs[l],
                            &units[l],
                            j,
                            &points,
                            bias,
                            config.ridge,
                        )
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
                    if k > 0 && s < scores[0] {
                        units[l][j] = points[k].clone();
                        best.0 = s;
                        changed = true;
                        if l + 1 < shape.hidden.len() {
                            // The last layer's inputs moved.
                            last_inputs = None;
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
