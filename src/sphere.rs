//! Sphere nets and the sphere-net fit (docs/algorithm.md, "Fitting on the subspace"), below
//! the stages that use them: filtered PCA's refine steps (a fit h on z), the search (its
//! candidates' directions and its convex final fit) and the deep-net gate.
//!
//! The fit: features relu(<u_j, z> - t) for directions u_j on a net of S^(r-1) and thresholds
//! t, the linear features z and a constant, then ridge regression with the ridge picked on
//! validation. The result is exactly a one-hidden-layer ReLU network
//! (z_i = relu(z_i) - relu(-z_i)).

use crate::backend::{Backend, ProjectedSamples, SphereFeatures};
use crate::data::{SampleRange, SampleSource};
use crate::error::{Error, Result};
use crate::linalg::ridge_solve;
use crate::network::{Layer, Network};
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Unit vectors covering S^(r-1) to within about `delta`: evenly spaced for r <= 2, greedy
/// farthest-apart random points for r >= 3 (at most `cap`). Antipodal pairs always included.
pub fn sphere_net(rank: usize, delta: f64, cap: usize, seed: u64) -> Vec<Vec<f64>> {
    match rank {
        0 => Vec::new(),
        1 => vec![vec![1.0], vec![-1.0]],
        2 => {
            let m = ((2.0 * std::f64::consts::PI / delta.max(1e-3)).ceil() as usize)
                .max(4)
                .min(cap.max(4));
            let m = m + (m % 2); // even, so antipodes are present
            (0..m)
                .map(|j| {
                    let t = 2.0 * std::f64::consts::PI * j as f64 / m as f64;
                    vec![t.cos(), t.sin()]
                })
                .collect()
        }
        _ => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_5feb);
            let mut pts: Vec<Vec<f64>> = Vec::new();
            // Coordinate directions first: axis-aligned teachers are common.
            for i in 0..rank {
                for s in [1.0, -1.0] {
                    let mut e = vec![0.0; rank];
                    e[i] = s;
                    pts.push(e);
                }
            }
            let mut misses = 0;
            while pts.len() + 1 < cap && misses < 2000 {
                let mut u: Vec<f64> = (0..rank).map(|_| rng.sample(StandardNormal)).collect();
                let n = norm(&u);
                if n < 1e-9 {
                    continue;
                }
                u.iter_mut().for_each(|v| *v /= n);
                let far = pts.iter().all(|p| dist(p, &u) > delta);
                let neg: Vec<f64> = u.iter().map(|v| -v).collect();
                if far {
                    pts.push(u);
                    pts.push(neg);
                    misses = 0;
                } else {
                    misses += 1;
                }
            }
            pts
        }
    }
}

/// Estimated covering radius of unit vectors `dirs` on S^(r-1): the largest distance from 1024
/// seeded random unit vectors to their nearest member (a lower bound that is tight in low r).
pub fn covering_radius(dirs: &[Vec<f64>], rank: usize, seed: u64) -> f64 {
    if dirs.is_empty() || rank == 0 {
        return f64::INFINITY;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xc07e_0001);
    (0..1024)
        .map(|_| {
            let u = random_unit(rank, &mut rng);
            dirs.iter()
                .map(|d| dist(d, &u))
                .fold(f64::INFINITY, f64::min)
        })
        .fold(0.0, f64::max)
}

/// Euclidean length.
pub(crate) fn norm(u: &[f64]) -> f64 {
    u.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Euclidean distance.
pub(crate) fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// A uniformly random unit vector in R^rank.
pub(crate) fn random_unit(rank: usize, rng: &mut rand::rngs::StdRng) -> Vec<f64> {
    loop {
        let u: Vec<f64> = (0..rank).map(|_| rng.sample(StandardNormal)).collect();
        let n = norm(&u);
        if n > 1e-9 {
            return u.into_iter().map(|v| v / n).collect();
        }
    }
}

/// Builds a [`Network`] on `rank` inputs from packed candidate parameters.
pub fn network_from_params(rank: usize, hidden: &[usize], params: &[f32]) -> Result<Network> {
    let mut layers = Vec::new();
    let mut at = 0;
    let mut width = rank;
    let p: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    for &h in hidden {
        let need = h * width + h;
        if at + need > p.len() {
            return Err(Error::invalid(
                "candidate params shorter than the architecture",
            ));
        }
        layers.push(Layer::new(
            width,
            h,
            p[at..at + h * width].to_vec(),
            p[at + h * width..at + need].to_vec(),
        )?);
        at += need;
        width = h;
    }
    if at + width + 1 != p.len() {
        return Err(Error::invalid(
            "candidate params do not match the architecture",
        ));
    }
    layers.push(Layer::new(
        width,
        1,
        p[at..at + width].to_vec(),
        vec![p[at + width]],
    )?);
    Ok(Network::new(rank, layers)?)
}

/// Variance of the labels.
pub fn label_variance(y: &[f32]) -> f64 {
    let n = y.len().max(1) as f64;
    let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n;
    y.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n
}

/// Settings of the sphere-net fit.
#[derive(Clone, Debug, PartialEq)]
pub struct SphereNetConfig {
    /// Covering radius of the direction net.
    pub delta: f64,
    /// Most directions (antipodal pairs included).
    pub max_directions: usize,
    /// Thresholds t of the features relu(<u, z> - t); {0} alone fits bias-free targets.
    pub thresholds: Vec<f64>,
    /// Ridge values tried (relative to the mean Gram diagonal); the best on validation is kept.
    pub ridges: Vec<f64>,
    /// The normal equations use at most this many training rows (the first ones); the
    /// default, `usize::MAX`, leaves the choice to `pair_budget`.
    pub max_rows: usize,
    /// The streamed fit reads every training row while rows x f (f + 1) / 2 (the products
    /// its normal equations add up, f features) stays within this budget, and otherwise the
    /// first budget / (f (f + 1) / 2) rows, never fewer than `MIN_BUDGET_ROWS`.
    pub pair_budget: u64,
    /// Seed of the direction net (r >= 3).
    pub seed: u64,
}

impl Default for SphereNetConfig {
    fn default() -> Self {
        SphereNetConfig {
            delta: 0.35,
            max_directions: 96,
            thresholds: vec![-1.0, 0.0, 1.0],
            ridges: vec![1e-8, 1e-6, 1e-4, 1e-2],
            max_rows: usize::MAX,
            // Measured at d = 128, N = 1e6 (parity, r = 4, 293 features): the normal equations
            // on all 8e5 training rows gave validation MSE 0.3283 against 0.3291 from 1e5 rows
            // at 3.4x the stage time, and the descent and polish (which read every row) end
            // the same either way; on the label-noise teacher (r = 2, 57 features) all 4e5
            // rows gave 0.2626 against 0.2627 from 1e5 and a final 1.22e-3 against 1.24e-3.
            // So every row when that is cheap (r <= 2: 3e6 rows), about 1.2e5 when not.
            pair_budget: 5_000_000_000,
            seed: 0,
        }
    }
}

/// The fewest rows the streamed fit's normal equations read when its pair budget cuts them.
pub const MIN_BUDGET_ROWS: u64 = 100_000;

/// What the sphere-net fit costs and covers in r dimensions (see [`SphereNetConfig::cost`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SphereNetCost {
    /// Directions in the net (at most `max_directions`: about (3/delta)^(r-1) are needed, so
    /// the cap binds from r = 4 at the default delta).
    pub directions: usize,
    /// Features (directions x thresholds + r linear + 1); the normal equations cost
    /// rows x features^2 / 2 multiply-adds.
    pub features: usize,
    /// Estimated covering radius of the directions: the largest distance from 1024 random unit
    /// vectors to their nearest direction (about delta when the cap does not bind; towards
    /// sqrt(2) in high r, where no affordable net covers the sphere).
    pub covering_radius: f64,
}

impl SphereNetConfig {
    /// The net's size, feature count and covering radius in `rank` dimensions.
    pub fn cost(&self, rank: usize) -> SphereNetCost {
        let dirs = sphere_net(rank, self.delta, self.max_directions.max(2), self.seed);
        SphereNetCost {
            directions: dirs.len(),
            features: dirs.len() * self.thresholds.len() + rank + 1,
            covering_radius: covering_radius(&dirs, rank, self.seed),
        }
    }
}

/// The sphere-net fit.
#[derive(Clone, Debug)]
pub struct SphereNetFit {
    /// One hidden layer on the r projected inputs.
    pub network: Network,
    /// MSE on the validation samples.
    pub validation_mse: f64,
    /// Features used (ReLU features + r linear + 1).
    pub features: usize,
    /// Relative ridge kept.
    pub ridge: f64,
}

/// The fitted ridge solution `a` (relu features, then r linear, then the constant) as a
/// one-hidden-layer network on z: ReLU units, then +-e_i units carrying the linear part.
fn network_of(dirs: &[Vec<f64>], t: &[f64], r: usize, a: &[f64]) -> Result<Network> {
    let f = a.len();
    let relu_units = dirs.len() * t.len();
    let width = relu_units + 2 * r;
    let mut params: Vec<f32> = Vec::with_capacity(width * (r + 2) + 1);
    for u in dirs {
        for _ in t {
            params.extend(u.iter().map(|&v| v as f32));
        }
    }
    for i in 0..r {
        for s in [1.0f32, -1.0] {
            params.extend((0..r).map(|j| if j == i { s } else { 0.0 }));
        }
    }
    for _ in dirs {
        params.extend(t.iter().map(|&th| -th as f32));
    }
    params.extend(std::iter::repeat_n(0.0f32, 2 * r));
    params.extend(a[..relu_units].iter().map(|&v| v as f32));
    for i in 0..r {
        params.push(a[relu_units + i] as f32);
        params.push(-a[relu_units + i] as f32);
    }
    params.push(a[f - 1] as f32);
    network_from_params(r, &[width], &params)
}

fn features(dirs: &[Vec<f64>], thresholds: &[f64], z: &[f32], out: &mut Vec<f64>) {
    out.clear();
    for u in dirs {
        let s: f64 = u.iter().zip(z).map(|(a, &b)| a * b as f64).sum();
        for &t in thresholds {
            out.push((s - t).max(0.0));
        }
    }
    out.extend(z.iter().map(|&v| v as f64));
    out.push(1.0);
}

/// One block's normal equations for [`sphere_net_fit`]: the upper triangle of sum phi phi^T,
/// packed row by row (the streamed fit's [`add_outer`], AVX2 where present: the same bits),
/// and sum phi y, over the rows of `z` (r each) and `y` in order, skipping a row's zero
/// features.
///
/// [`add_outer`]: crate::backend::cpu::trainer::add_outer
fn normal_block(
    avx2: bool,
    dirs: &[Vec<f64>],
    t: &[f64],
    r: usize,
    z: &[f32],
    y: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let f = dirs.len() * t.len() + r + 1;
    let mut g = vec![0.0f64; f * (f + 1) / 2];
    let mut fy = vec![0.0f64; f];
    let mut phi = Vec::with_capacity(f);
    for (zr, &y) in z.chunks_exact(r).zip(y) {
        features(dirs, t, zr, &mut phi);
        for (s, &p) in fy.iter_mut().zip(&phi) {
            if p != 0.0 {
                *s += p * y as f64;
            }
        }
        crate::backend::cpu::trainer::add_outer(avx2, &phi, f, &mut g);
    }
    (g, fy)
}

/// Fits sphere-net features by ridge on `train`, keeping the ridge that validates best.
pub fn sphere_net_fit(
    train: &ProjectedSamples,
    val: &ProjectedSamples,
    config: &SphereNetConfig,
) -> Result<SphereNetFit> {
    let r = train.rank;
    if r == 0 || r != val.rank || train.is_empty() || val.is_empty() {
        return Err(Error::invalid(
            "sphere-net fit: non-empty train and validation samples of one positive rank",
        ));
    }
    if config.thresholds.is_empty() || config.ridges.is_empty() || config.delta <= 0.0 {
        return Err(Error::invalid(
            "sphere-net fit: needs thresholds, ridges and a positive delta",
        ));
    }
    let train = &train.head(config.max_rows);
    let dirs = sphere_net(r, config.delta, config.max_directions.max(2), config.seed);
    let t = &config.thresholds;
    let f = dirs.len() * t.len() + r + 1;
    // Normal equations in f64, blocks of samples in parallel.
    // Fixed blocks summed in order afterwards: the same seed gives the same bits whatever the
    // thread timing (rayon's own reduce tree is not fixed).
    let block_rows = train.len().div_ceil(64).max(1);
    let avx2 = crate::backend::cpu::trainer::avx2_available();
    let partials: Vec<(Vec<f64>, Vec<f64>)> = train
        .z
        .par_chunks(r * block_rows)
        .zip(train.y.par_chunks(block_rows))
        .map(|(zb, yb)| normal_block(avx2, &dirs, t, r, zb, yb))
        .collect();
    let (mut packed, mut fy) = (vec![0.0; f * (f + 1) / 2], vec![0.0; f]);
    for (g2, fy2) in &partials {
        packed.iter_mut().zip(g2).for_each(|(a, b)| *a += b);
        fy.iter_mut().zip(fy2).for_each(|(a, b)| *a += b);
    }
    // Rows of f features one after another (one allocation, not one a row).
    let mut val_phi = Vec::with_capacity(val.len() * f);
    let mut p = Vec::with_capacity(f);
    for zr in val.z.chunks_exact(r) {
        features(&dirs, t, zr, &mut p);
        val_phi.extend_from_slice(&p);
    }
    let mut best: Option<(f64, f64, Vec<f64>)> = None;
    for &ridge in &config.ridges {
        let Some(a) = ridge_solve(&packed, &fy, ridge) else {
            continue;
        };
        let sse: f64 = val_phi
            .chunks_exact(f)
            .zip(&val.y)
            .map(|(p, &y)| {
                let pred: f64 = p.iter().zip(&a).map(|(x, w)| x * w).sum();
                (pred - y as f64).powi(2)
            })
            .sum();
        let mse = sse / val.len() as f64;
        if mse.is_finite() && best.as_ref().is_none_or(|b| mse < b.0) {
            best = Some((mse, ridge, a));
        }
    }
    let Some((validation_mse, ridge, a)) = best else {
        return Err(Error::invalid(format!(
            "sphere-net fit: no ridge gave a solution (label variance {})",
            label_variance(&train.y)
        )));
    };
    let network = network_of(&dirs, t, r, &a)?;
    Ok(SphereNetFit {
        network,
        validation_mse,
        features: f,
        ridge,
    })
}

/// What the streamed sphere-net fit read.
#[derive(Clone, Debug)]
pub struct StreamedSphereNetFit {
    pub fit: SphereNetFit,
    /// Training rows in the normal equations.
    pub rows: u64,
}

/// The sphere-net fit on z = B x with B the `basis` rows, streamed: the normal equations come
/// from one backend pass over the rows of `train` (the first ones, as many as
/// `config.max_rows` and `config.pair_budget` allow), and each ridge's network is scored on
/// every row of `val` (streamed; the best is kept). Nothing holds z for all rows.
pub fn sphere_net_fit_streamed(
    backend: &dyn Backend,
    train: &dyn SampleSource,
    val: &dyn SampleSource,
    basis: &[Vec<f64>],
    config: &SphereNetConfig,
    progress: &indicatif::ProgressBar,
) -> Result<StreamedSphereNetFit> {
    let r = basis.len();
    let d = train.dim();
    if r == 0 || basis.iter().any(|b| b.len() != d) || val.dim() != d {
        return Err(Error::invalid(format!(
            "sphere-net fit: a basis of {r} rows of length d = {d} (train d = {d}, validation d = {})",
            val.dim()
        )));
    }
    if train.is_empty() || val.is_empty() {
        return Err(Error::invalid(
            "sphere-net fit: non-empty train and validation samples",
        ));
    }
    if config.thresholds.is_empty() || config.ridges.is_empty() || config.delta <= 0.0 {
        return Err(Error::invalid(
            "sphere-net fit: needs thresholds, ridges and a positive delta",
        ));
    }
    let dirs = sphere_net(r, config.delta, config.max_directions.max(2), config.seed);
    let t = &config.thresholds;
    let features = SphereFeatures {
        basis: basis.iter().flatten().copied().collect(),
        rank: r,
        directions: dirs.iter().flatten().copied().collect(),
        thresholds: t.clone(),
    };
    let pairs = (features.len() * (features.len() + 1) / 2) as u64;
    let affordable = (config.pair_budget / pairs.max(1)).max(MIN_BUDGET_ROWS);
    let rows = train
        .len()
        .min(config.max_rows.max(1) as u64)
        .min(affordable);
    let head = SampleRange::new(train, 0, rows)?;
    let sums = backend.feature_normal_equations(&head, &features, progress)?;
    let mut fits = Vec::new();
    for &ridge in &config.ridges {
        if let Some(a) = ridge_solve(&sums.gram, &sums.rhs, ridge) {
            let small = network_of(&dirs, t, r, &a)?;
            let compact = Network::with_projection(&small, basis)?;
            fits.push((ridge, small, compact));
        }
    }
    let nets: Vec<&Network> = fits.iter().map(|f| &f.2).collect();
    let sse = backend.sse(&nets, val)?;
    let best = fits
        .into_iter()
        .zip(sse)
        .map(|(f, e)| (e / val.len() as f64, f))
        .filter(|(mse, _)| mse.is_finite())
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let Some((validation_mse, (ridge, network, _))) = best else {
        return Err(Error::invalid(format!(
            "sphere-net fit: no ridge gave a solution on {rows} rows"
        )));
    };
    Ok(StreamedSphereNetFit {
        fit: SphereNetFit {
            network,
            validation_mse,
            features: features.len(),
            ridge,
        },
        rows: sums.rows,
    })
}
