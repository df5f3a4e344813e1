//! The second half of the algorithm (ALGORITHM.md section 3): fit a network on the projected
//! samples z = B^T x.
//!
//! - [`enumerate_and_test`] (section 3.1): first-layer rows on a delta-net of the unit sphere,
//!   deeper weights and all hidden biases on a grid, the output layer by ridge least squares
//!   from the normal equations the backend returns, every candidate scored by its MSE on the
//!   held-out samples; then coarse-to-fine refinement around the best candidates.
//! - [`sphere_net_fit`] (section 3.2(a)): ReLU features on a sphere net (with a few thresholds)
//!   plus linear features, ridge; a convex, fast final fit.
//! - [`search`] runs both and keeps whichever validates better.

mod evaluate_ref;
mod sphere;

pub use evaluate_ref::reference_evaluate;
pub use sphere::{
    sphere_net_fit, sphere_net_fit_streamed, SphereNetConfig, SphereNetFit, StreamedSphereNetFit,
};

use crate::backend::{tri_len, Backend, CandidateBatch, ProjectedSamples};
use crate::error::{Error, Result};
use crate::network::{Layer, Network};
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

/// Settings of enumerate-and-test.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchConfig {
    /// Hidden widths of the candidates (the teacher's architecture when known). At least one.
    pub hidden: Vec<usize>,
    /// Most candidates evaluated, enumeration and refinement together.
    pub budget: usize,
    /// Covering radius delta_s of the net of first-layer directions on S^(r-1).
    pub sphere_delta: f64,
    /// Grid spacing eta of deeper weights and of all hidden biases.
    pub grid_step: f64,
    /// Deeper weights range over [-weight_bound, weight_bound].
    pub weight_bound: f64,
    /// Hidden biases range over [-bias_bound, bias_bound] (0 makes candidates bias-free).
    pub bias_bound: f64,
    /// Ridge rho relative to the mean diagonal of Phi^T Phi.
    pub ridge: f64,
    /// Refinement rounds after the coarse pass (each halves the perturbation scale).
    pub refine_rounds: usize,
    /// Candidates refined around in each round.
    pub refine_top: usize,
    /// Fraction of the budget given to the coarse pass when refining.
    pub coarse_fraction: f64,
    /// Candidates per backend call.
    pub batch_size: usize,
    /// Candidates are scored on at most this many training and validation rows (the first
    /// ones): the cost is budget x rows, and the ranking needs far fewer rows than the fit.
    pub max_rows: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            hidden: vec![4],
            budget: 4096,
            sphere_delta: 0.3,
            grid_step: 0.25,
            weight_bound: 2.0,
            bias_bound: 2.0,
            ridge: 1e-6,
            refine_rounds: 10,
            refine_top: 8,
            coarse_fraction: 0.3,
            batch_size: 2048,
            max_rows: 50_000,
            seed: 0,
        }
    }
}

/// What enumerate-and-test found.
#[derive(Clone, Debug)]
pub struct EnumerateResult {
    /// Best network on the r projected inputs.
    pub network: Network,
    /// Its MSE on the validation samples.
    pub validation_mse: f64,
    /// Its MSE on the training samples.
    pub train_mse: f64,
    /// Candidates evaluated (<= budget).
    pub candidates_evaluated: usize,
    /// log10 of the size of the full net |N| at these delta_s and eta (section 3.1 formula).
    pub full_net_log10: f64,
    /// True when the coarse pass enumerated the whole net instead of sampling it.
    pub exhaustive: bool,
    /// Number of first-layer directions in the sphere net.
    pub sphere_points: usize,
    /// Best validation MSE after the coarse pass and after each refinement round.
    pub history: Vec<f64>,
}

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

fn norm(u: &[f64]) -> f64 {
    u.iter().map(|v| v * v).sum::<f64>().sqrt()
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Values -bound, -bound + step, ..., bound (0 included when bound/step is whole).
fn grid(bound: f64, step: f64) -> Vec<f64> {
    if bound <= 0.0 || step <= 0.0 {
        return vec![0.0];
    }
    let m = (bound / step).floor() as i64;
    (-m..=m).map(|i| i as f64 * step).collect()
}

/// Where the parameters of a candidate sit: which entries are first-layer rows, which are grid
/// values, where the output layer starts.
struct Layout {
    rank: usize,
    hidden: Vec<usize>,
    /// Parameters before the output layer.
    prefix: usize,
    per: usize,
}

impl Layout {
    fn new(rank: usize, hidden: &[usize]) -> Self {
        let b = CandidateBatch {
            inputs: rank,
            hidden: hidden.to_vec(),
            params: Vec::new(),
        };
        let per = b.params_per_candidate();
        let f = b.feature_dim();
        Layout {
            rank,
            hidden: hidden.to_vec(),
            prefix: per - f,
            per,
        }
    }

    /// Number of enumerated grid parameters: deeper weights and all hidden biases.
    fn grid_params(&self) -> (usize, usize) {
        let mut weights = 0;
        let mut biases = 0;
        let mut width = self.rank;
        for (l, &h) in self.hidden.iter().enumerate() {
            if l > 0 {
                weights += h * width;
            }
            biases += h;
            width = h;
        }
        (weights, biases)
    }
}

/// Ridge solution of (G + rho I) a = g from a packed upper triangle; None if not positive definite.
pub fn ridge_solve(packed: &[f64], rhs: &[f64], ridge: f64) -> Option<Vec<f64>> {
    let f = rhs.len();
    let mut g = nalgebra::DMatrix::<f64>::zeros(f, f);
    let mut k = 0;
    for i in 0..f {
        for j in i..f {
            g[(i, j)] = packed[k];
            g[(j, i)] = packed[k];
            k += 1;
        }
    }
    let scale = (0..f).map(|i| g[(i, i)]).sum::<f64>() / f.max(1) as f64;
    let rho = ridge * scale.max(1e-300) + 1e-12;
    for i in 0..f {
        g[(i, i)] += rho;
    }
    let chol = nalgebra::linalg::Cholesky::new(g)?;
    let a = chol.solve(&nalgebra::DVector::from_column_slice(rhs));
    a.iter()
        .all(|v| v.is_finite())
        .then(|| a.iter().copied().collect())
}

/// Fits each candidate's output layer by ridge on `train` and scores it on `val`. `prefixes`
/// holds the hidden-layer parameters of each candidate; returns (validation MSE, full params).
fn score(
    backend: &dyn Backend,
    train: &ProjectedSamples,
    val: &ProjectedSamples,
    layout: &Layout,
    prefixes: &[Vec<f32>],
    ridge: f64,
) -> Result<Vec<(f64, Vec<f32>)>> {
    let f = layout.per - layout.prefix;
    let mut batch = CandidateBatch {
        inputs: layout.rank,
        hidden: layout.hidden.clone(),
        params: Vec::with_capacity(prefixes.len() * layout.per),
    };
    for p in prefixes {
        batch.params.extend_from_slice(p);
        batch.params.extend(std::iter::repeat_n(0.0, f));
    }
    let stats = backend.evaluate_candidates(train, &batch)?;
    let tri = tri_len(f);
    for c in 0..prefixes.len() {
        let out = ridge_solve(
            &stats.gram[c * tri..(c + 1) * tri],
            &stats.feature_y[c * f..(c + 1) * f],
            ridge,
        )
        .unwrap_or_else(|| vec![0.0; f]);
        for (dst, v) in batch.params[c * layout.per + layout.prefix..(c + 1) * layout.per]
            .iter_mut()
            .zip(out)
        {
            *dst = v as f32;
        }
    }
    let val_stats = backend.evaluate_candidates(val, &batch)?;
    let n = val.len().max(1) as f64;
    Ok(val_stats
        .sse
        .iter()
        .zip(batch.params.chunks_exact(layout.per))
        .map(|(&sse, p)| {
            let mse = sse / n;
            (
                if mse.is_finite() { mse } else { f64::INFINITY },
                p.to_vec(),
            )
        })
        .collect())
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

/// Checks train/validation samples against a search configuration.
fn check_search_inputs(
    train: &ProjectedSamples,
    val: &ProjectedSamples,
    hidden: &[usize],
) -> Result<()> {
    if train.rank == 0 || train.rank != val.rank {
        return Err(Error::invalid(format!(
            "search: train rank {} and validation rank {} must be equal and positive",
            train.rank, val.rank
        )));
    }
    if train.is_empty() || val.is_empty() {
        return Err(Error::invalid(
            "search: training and validation samples must be non-empty",
        ));
    }
    if hidden.is_empty() || hidden.contains(&0) {
        return Err(Error::invalid(
            "search: at least one hidden layer, every width at least 1",
        ));
    }
    Ok(())
}

/// Enumerate-and-test (section 3.1) with coarse-to-fine refinement; see the module docs.
pub fn enumerate_and_test(
    backend: &dyn Backend,
    train: &ProjectedSamples,
    val: &ProjectedSamples,
    config: &SearchConfig,
) -> Result<EnumerateResult> {
    check_search_inputs(train, val, &config.hidden)?;
    let (train, val) = (&head(train, config.max_rows), &head(val, config.max_rows));
    if config.budget == 0 || config.batch_size == 0 {
        return Err(Error::invalid(
            "search: budget and batch_size must be positive",
        ));
    }
    if !(config.sphere_delta > 0.0 && config.grid_step > 0.0) {
        return Err(Error::invalid(
            "search: sphere_delta and grid_step must be positive",
        ));
    }
    let r = train.rank;
    let layout = Layout::new(r, &config.hidden);
    let dirs = sphere_net(r, config.sphere_delta, 4096, config.seed);
    let weight_grid = grid(config.weight_bound, config.grid_step);
    let bias_grid = grid(config.bias_bound, config.grid_step);
    let (gw, gb) = layout.grid_params();
    let k1 = config.hidden[0];
    let full_net_log10 = k1 as f64 * (dirs.len() as f64).log10()
        + gw as f64 * (weight_grid.len() as f64).log10()
        + gb as f64 * (bias_grid.len() as f64).log10();

    let coarse_budget = if config.refine_rounds == 0 {
        config.budget
    } else {
        ((config.budget as f64 * config.coarse_fraction) as usize).max(1)
    };
    let exhaustive = full_net_log10 <= (coarse_budget as f64).log10();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);

    // The coarse pass: one "digit" per enumerated choice (a direction index per first-layer
    // row, a grid index per other parameter).
    let mut radix: Vec<usize> = Vec::new();
    for (l, &h) in config.hidden.iter().enumerate() {
        let w_in = if l == 0 { r } else { config.hidden[l - 1] };
        for _ in 0..h {
            radix.push(if l == 0 {
                dirs.len()
            } else {
                weight_grid.len()
            });
            if l > 0 {
                radix.extend(std::iter::repeat_n(weight_grid.len(), w_in - 1));
            }
        }
        radix.extend(std::iter::repeat_n(bias_grid.len(), h));
    }
    let build = |digits: &[usize]| -> Vec<f32> {
        let mut p = Vec::with_capacity(layout.prefix);
        let mut d = 0;
        for (l, &h) in config.hidden.iter().enumerate() {
            let w_in = if l == 0 { r } else { config.hidden[l - 1] };
            for _ in 0..h {
                if l == 0 {
                    p.extend(dirs[digits[d]].iter().map(|&v| v as f32));
                    d += 1;
                } else {
                    for _ in 0..w_in {
                        p.push(weight_grid[digits[d]] as f32);
                        d += 1;
                    }
                }
            }
            for _ in 0..h {
                p.push(bias_grid[digits[d]] as f32);
                d += 1;
            }
        }
        p
    };
    let coarse: Vec<Vec<f32>> = if exhaustive {
        let total = radix.iter().product::<usize>();
        (0..total)
            .map(|mut idx| {
                let digits: Vec<usize> = radix
                    .iter()
                    .map(|&m| {
                        let v = idx % m;
                        idx /= m;
                        v
                    })
                    .collect();
                build(&digits)
            })
            .collect()
    } else {
        (0..coarse_budget)
            .map(|_| {
                let digits: Vec<usize> = radix.iter().map(|&m| rng.random_range(0..m)).collect();
                build(&digits)
            })
            .collect()
    };

    let mut evaluated = 0;
    let mut pool: Vec<(f64, Vec<f32>)> = Vec::new();
    let run = |cands: Vec<Vec<f32>>,
               pool: &mut Vec<(f64, Vec<f32>)>,
               evaluated: &mut usize|
     -> Result<()> {
        for block in cands.chunks(config.batch_size) {
            pool.extend(score(backend, train, val, &layout, block, config.ridge)?);
            *evaluated += block.len();
        }
        pool.sort_by(|a, b| a.0.total_cmp(&b.0));
        pool.truncate(config.refine_top.max(1));
        Ok(())
    };
    run(coarse, &mut pool, &mut evaluated)?;
    let mut history = vec![pool[0].0];

    // Refinement: perturb the best candidates with shrinking steps; first-layer rows stay unit.
    let remaining = config.budget.saturating_sub(evaluated);
    let per_round = remaining / config.refine_rounds.max(1);
    // Steps start at half the coarse resolution and halve whenever a round fails to improve
    // the best candidate by 1% (and after every round beyond the halfway mark).
    let mut scale = 0.5;
    for round in 1..=config.refine_rounds {
        if per_round == 0 {
            break;
        }
        let angle = config.sphere_delta * scale;
        let step = config.grid_step * scale;
        let before = pool[0].0;
        let parents: Vec<Vec<f32>> = pool.iter().map(|(_, p)| p.clone()).collect();
        let cands: Vec<Vec<f32>> = (0..per_round)
            .map(|i| {
                let parent = &parents[i % parents.len()];
                perturb(parent, &layout, angle, step, &mut rng)
            })
            .collect();
        run(cands, &mut pool, &mut evaluated)?;
        history.push(pool[0].0);
        if pool[0].0 > 0.99 * before || 2 * round > config.refine_rounds {
            scale *= 0.5;
        }
    }

    let (validation_mse, best) = pool.swap_remove(0);
    let network = network_from_params(r, &config.hidden, &best)?;
    let train_mse = mse_of(&network, train);
    Ok(EnumerateResult {
        network,
        validation_mse,
        train_mse,
        candidates_evaluated: evaluated,
        full_net_log10,
        exhaustive,
        sphere_points: dirs.len(),
        history,
    })
}

/// A neighbour of `parent`: each first-layer row turned by about `angle` (and renormalised),
/// every other hidden parameter moved by a Gaussian step of size `step`.
fn perturb(
    parent: &[f32],
    layout: &Layout,
    angle: f64,
    step: f64,
    rng: &mut rand::rngs::StdRng,
) -> Vec<f32> {
    let mut p = parent[..layout.prefix].to_vec();
    let r = layout.rank;
    let k1 = layout.hidden[0];
    for o in 0..k1 {
        let row = &mut p[o * r..(o + 1) * r];
        let mut u: Vec<f64> = row
            .iter()
            .map(|&v| v as f64 + angle / (r as f64).sqrt() * rng.sample::<f64, _>(StandardNormal))
            .collect();
        let n = norm(&u).max(1e-12);
        u.iter_mut().for_each(|v| *v /= n);
        for (dst, v) in row.iter_mut().zip(u) {
            *dst = v as f32;
        }
    }
    for v in p[k1 * r..].iter_mut() {
        *v += (step * rng.sample::<f64, _>(StandardNormal)) as f32;
    }
    p
}

/// The first `rows` rows (at least one) of projected samples.
pub fn head(samples: &ProjectedSamples, rows: usize) -> ProjectedSamples {
    let n = samples.len().min(rows.max(1));
    ProjectedSamples {
        rank: samples.rank,
        z: samples.z[..n * samples.rank].to_vec(),
        y: samples.y[..n].to_vec(),
    }
}

/// Mean squared error of a network on projected samples (f64).
pub fn mse_of(network: &Network, samples: &ProjectedSamples) -> f64 {
    mse_on_rows(network, samples.rank, &samples.z, &samples.y)
}

/// Mean squared error of a network on row-major f32 inputs (`dim` per row) and labels, in f64.
/// Rows are cut into 64 fixed blocks summed in order, so the result does not depend on thread
/// timing.
pub fn mse_on_rows(network: &Network, dim: usize, x: &[f32], y: &[f32]) -> f64 {
    use rayon::prelude::*;
    let block = y.len().div_ceil(64).max(1);
    let partial: Vec<f64> = x
        .par_chunks(dim * block)
        .zip(y.par_chunks(block))
        .map(|(xb, yb)| {
            let mut row64 = vec![0.0f64; dim];
            xb.chunks_exact(dim)
                .zip(yb)
                .map(|(row, &label)| {
                    for (a, &b) in row64.iter_mut().zip(row) {
                        *a = b as f64;
                    }
                    (network.forward_one_f64(&row64) - label as f64).powi(2)
                })
                .sum::<f64>()
        })
        .collect();
    partial.iter().sum::<f64>() / y.len().max(1) as f64
}

/// Variance of the labels.
pub fn label_variance(y: &[f32]) -> f64 {
    let n = y.len().max(1) as f64;
    let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n;
    y.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n
}

/// Which final fit [`search`] kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// Enumerate-and-test (section 3.1).
    Enumerate,
    /// Sphere-net features plus ridge (section 3.2(a)).
    SphereNet,
}

impl Chosen {
    /// "enumerate" or "sphere-net".
    pub fn name(self) -> &'static str {
        match self {
            Chosen::Enumerate => "enumerate",
            Chosen::SphereNet => "sphere-net",
        }
    }
}

/// Result of [`search`]: both fits' validation errors and the one kept.
#[derive(Clone, Debug)]
pub struct SearchReport {
    /// The kept network on the r projected inputs.
    pub network: Network,
    /// Which fit was kept.
    pub chosen: Chosen,
    /// Validation MSE of the kept network.
    pub validation_mse: f64,
    /// Enumerate-and-test details.
    pub enumerate: EnumerateResult,
    /// Validation MSE of the sphere-net fit (None when it was disabled).
    pub sphere_validation_mse: Option<f64>,
}

/// Runs enumerate-and-test and (when `sphere` is given) the sphere-net fit, and keeps whichever
/// has the lower validation MSE.
pub fn search(
    backend: &dyn Backend,
    train: &ProjectedSamples,
    val: &ProjectedSamples,
    config: &SearchConfig,
    sphere: Option<&SphereNetConfig>,
) -> Result<SearchReport> {
    let enumerate = enumerate_and_test(backend, train, val, config)?;
    let sphere_fit = match sphere {
        Some(s) => Some(sphere_net_fit(train, val, s)?),
        None => None,
    };
    let (network, chosen, validation_mse) = match &sphere_fit {
        Some(s) if s.validation_mse < enumerate.validation_mse => {
            (s.network.clone(), Chosen::SphereNet, s.validation_mse)
        }
        _ => (
            enumerate.network.clone(),
            Chosen::Enumerate,
            enumerate.validation_mse,
        ),
    };
    Ok(SearchReport {
        network,
        chosen,
        validation_mse,
        sphere_validation_mse: sphere_fit.map(|s| s.validation_mse),
        enumerate,
    })
}
