//! The second half of the algorithm (docs/algorithm.md, "Fitting on the subspace"): fit a
//! network on the projected samples z = B^T x.
//!
//! - [`enumerate_and_test`] (the paper's final step): candidates of the given architecture whose first-layer
//!   rows are unit directions on the sphere S^(r-1), the output layer solved by ridge least
//!   squares from the normal equations the backend returns, every candidate scored by its MSE on
//!   the held-out samples. Two candidate generators ([`Generator`]):
//!   - `Greedy` (the default) builds the first layer unit by unit. Each step scores units
//!     (direction, bias) added to the units chosen so far: directions the residual's moments
//!     point at (its correlation with z, the eigenvectors of its Hessian moment and of the
//!     second moments of z filtered by its tails, all cheap in r dimensions) and directions
//!     from a net of the sphere, biases on a grid. Then backfitting sweeps re-choose one unit
//!     at a time among perturbations of it and fresh directions for its partial residual,
//!     shrinking the perturbations as the sweeps stop improving. Deeper layers are set by
//!     least squares: a layer's first two units carry +-(the previous fit's output), so the deep
//!     candidate starts from the shallow fit, and the rest are chosen greedily; then the whole
//!     network is refined by joint perturbation.
//!   - `Product`: the product net (directions x grid of deeper weights and biases) enumerated
//!     whole when it fits the coarse budget, else sampled at random, then coarse-to-fine
//!     refinement by random joint perturbation of the best candidates.
//!   - `Sweep` (`--method paper`): the product net with every hidden unit's weights on a net
//!     of the sphere, searched one unit at a time at halving resolutions (module `sweep`).
//! - [`sphere_net_fit`]: ReLU features on a sphere net (with a few thresholds)
//!   plus linear features, ridge; a convex, fast final fit.
//! - [`search`] runs both and keeps whichever validates better.

pub mod bench;
mod evaluate_ref;
mod sweep;

pub use sweep::COARSE_POINTS;

pub use evaluate_ref::reference_evaluate;
// The sphere-net fit and the direction nets live below the stages that use them (filtered
// PCA's refine steps, the search, the deep-net gate); here for the search's callers.
use crate::linalg::dot;
pub use crate::linalg::ridge_solve;
pub use crate::sphere::{
    covering_radius, label_variance, network_from_params, sphere_net, sphere_net_fit,
    sphere_net_fit_streamed, SphereNetConfig, SphereNetCost, SphereNetFit, StreamedSphereNetFit,
};
use crate::sphere::{norm, random_unit};

use crate::backend::{tri_len, Backend, CandidateBatch, ProjectedSamples};
use crate::error::{Error, Result};
use crate::network::Network;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

/// How enumerate-and-test generates candidates (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generator {
    /// Unit by unit, directions from the residual's moments and a sphere net, then backfitting.
    Greedy,
    /// The paper's product net, sampled (or enumerated whole), then joint refinement.
    Product,
    /// The paper's product net (every hidden unit on a net of the sphere), searched one unit
    /// at a time at halving resolutions (see the module `sweep`).
    Sweep,
}

impl Generator {
    /// "greedy" or "product".
    pub fn name(self) -> &'static str {
        match self {
            Generator::Greedy => "greedy",
            Generator::Product => "product",
            Generator::Sweep => "sweep",
        }
    }
}

/// Settings of enumerate-and-test.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchConfig {
    /// Hidden widths of the candidates (the teacher's architecture when known). At least one.
    pub hidden: Vec<usize>,
    /// Candidate generator.
    pub generator: Generator,
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
    /// Fraction of the budget given to the coarse pass (product) or to adding units one by one
    /// (greedy) when refining.
    pub coarse_fraction: f64,
    /// Candidates per backend call.
    pub batch_size: usize,
    /// Candidates are scored on at most this many training and validation rows (the first
    /// ones): the cost is budget x rows, and the ranking needs far fewer rows than the fit.
    pub max_rows: usize,
    /// Training rows (the first ones) the greedy generator reads for the residual's moments and
    /// the dictionary's Gram matrix.
    pub hint_rows: usize,
    /// Most sphere-net directions in the greedy generator's dictionary for backward
    /// elimination (0: no backward start); the label's moment directions are added to them.
    pub dictionary_directions: usize,
    /// Biases of the dictionary's units relu(<u, z> + b).
    pub dictionary_biases: Vec<f64>,
    /// Extra first-layer directions (length r each, normalised here) the greedy generator tries
    /// with every bias in each step, e.g. filter eigenvectors known from an earlier stage.
    pub directions: Vec<Vec<f64>>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Sweep generator: random members of the net scored for the start.
    pub sweep_starts: usize,
    /// Sweep generator: most sweeps over the units per resolution.
    pub sweep_max: usize,
    /// Sweep generator: finer resolutions (delta halved each) after the coarse net.
    pub sweep_levels: usize,
    /// Sweep generator: points of the finer net tried near each unit per sweep.
    pub sweep_local: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            hidden: vec![4],
            generator: Generator::Greedy,
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
            hint_rows: 20_000,
            dictionary_directions: 48,
            dictionary_biases: vec![-1.5, -0.75, 0.0, 0.75, 1.5],
            directions: Vec::new(),
            seed: 0,
            sweep_starts: 256,
            sweep_max: 6,
            sweep_levels: 6,
            sweep_local: 64,
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
    /// log10 of the size of the full net |N| at these delta_s and eta ((3/delta_s)^(k(r-1)) (2B/eta)^P).
    pub full_net_log10: f64,
    /// True when the coarse pass enumerated the whole net instead of sampling it.
    pub exhaustive: bool,
    /// Number of first-layer directions in the sphere net (0: directions drawn uniformly at
    /// random, when the net would be too large to build).
    pub sphere_points: usize,
    /// The generator that produced the candidates.
    pub generator: Generator,
    /// Best validation MSE after each step: for the product generator the coarse pass and each
    /// refinement round; for the greedy one each added unit, each backfitting sweep, each
    /// deeper layer and each joint refinement round.
    pub history: Vec<f64>,
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

/// Scores candidates through the backend in batches and counts them.
struct Scorer<'a> {
    backend: &'a dyn Backend,
    train: &'a ProjectedSamples,
    val: &'a ProjectedSamples,
    ridge: f64,
    batch_size: usize,
    evaluated: usize,
}

impl Scorer<'_> {
    /// (validation MSE, full params) of every candidate of architecture `hidden` whose hidden
    /// parameters are `prefixes`.
    fn score(&mut self, hidden: &[usize], prefixes: &[Vec<f32>]) -> Result<Vec<(f64, Vec<f32>)>> {
        let layout = Layout::new(self.train.rank, hidden);
        let mut out = Vec::with_capacity(prefixes.len());
        for block in prefixes.chunks(self.batch_size) {
            out.extend(score(
                self.backend,
                self.train,
                self.val,
                &layout,
                block,
                self.ridge,
            )?);
            self.evaluated += block.len();
        }
        Ok(out)
    }

    /// The best of `prefixes` (None when empty).
    fn best(&mut self, hidden: &[usize], prefixes: &[Vec<f32>]) -> Result<Option<(f64, Vec<f32>)>> {
        Ok(self
            .score(hidden, prefixes)?
            .into_iter()
            .min_by(|a, b| a.0.total_cmp(&b.0)))
    }
}

/// Enumerate-and-test; see the module docs for the two generators.
pub fn enumerate_and_test(
    backend: &dyn Backend,
    train: &ProjectedSamples,
    val: &ProjectedSamples,
    config: &SearchConfig,
) -> Result<EnumerateResult> {
    check_search_inputs(train, val, &config.hidden)?;
    let (train, val) = (&train.head(config.max_rows), &val.head(config.max_rows));
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
    if let Some(d) = config.directions.iter().find(|d| d.len() != r) {
        return Err(Error::invalid(format!(
            "search: extra directions must have length r = {r} (got {})",
            d.len()
        )));
    }
    let layout = Layout::new(r, &config.hidden);
    let weight_grid = grid(config.weight_bound, config.grid_step);
    let bias_grid = grid(config.bias_bound, config.grid_step);
    let (gw, gb) = layout.grid_params();
    let k1 = config.hidden[0];
    // log10 of the paper's net size with (3/delta)^(r-1) directions, whatever is built.
    let net_points_log10 = (r as f64 - 1.0) * (3.0 / config.sphere_delta).log10() + 2f64.log10();
    let full_net_log10 = if config.generator == Generator::Sweep {
        // Every unit on a net of the sphere of its input width (plus the bias coordinate).
        let bias = usize::from(config.bias_bound > 0.0) as f64;
        let mut width = r;
        let mut total = 0.0;
        for &h in &config.hidden {
            let points =
                (width as f64 + bias - 1.0) * (3.0 / config.sphere_delta).log10() + 2f64.log10();
            total += h as f64 * points;
            width = h;
        }
        total
    } else {
        k1 as f64 * net_points_log10
            + gw as f64 * (weight_grid.len() as f64).log10()
            + gb as f64 * (bias_grid.len() as f64).log10()
    };
    let mut scorer = Scorer {
        backend,
        train,
        val,
        ridge: config.ridge,
        batch_size: config.batch_size,
        evaluated: 0,
    };
    let (found, exhaustive, sphere_points, history) = match config.generator {
        Generator::Product => product_search(&mut scorer, &layout, config)?,
        Generator::Greedy => greedy_search(&mut scorer, config)?,
        Generator::Sweep => sweep::sweep_search(&mut scorer, &layout, config)?,
    };
    let (validation_mse, best) = found;
    let network = network_from_params(r, &config.hidden, &best)?;
    let train_mse = mse_of(&network, train);
    Ok(EnumerateResult {
        network,
        validation_mse,
        train_mse,
        candidates_evaluated: scorer.evaluated,
        full_net_log10,
        exhaustive,
        sphere_points,
        generator: config.generator,
        history,
    })
}

/// What a generator returns: (validation MSE, params) of the best candidate, whether the net
/// was enumerated whole, the sphere-net size and the history.
type Found = ((f64, Vec<f32>), bool, usize, Vec<f64>);

/// Largest sphere net built for drawing directions; beyond it (r >= 4 at the default delta)
/// directions are drawn uniformly, which covers the sphere no worse at any affordable budget.
const MAX_NET_POINTS: usize = 4096;

/// The first-layer directions candidates draw from: a built net of S^(r-1) when it is small,
/// else uniform random unit vectors.
struct Directions {
    net: Vec<Vec<f64>>,
    rank: usize,
}

impl Directions {
    fn new(rank: usize, delta: f64, seed: u64) -> Self {
        // About (3/delta)^(r-1) points are needed; build only what is affordable.
        let need = (3.0 / delta).powi(rank as i32 - 1) * 2.0;
        let net = if rank <= 2 || need <= MAX_NET_POINTS as f64 {
            sphere_net(rank, delta, MAX_NET_POINTS, seed)
        } else {
            Vec::new()
        };
        Directions { net, rank }
    }

    fn draw(&self, rng: &mut rand::rngs::StdRng) -> Vec<f64> {
        if self.net.is_empty() {
            random_unit(self.rank, rng)
        } else {
            self.net[rng.random_range(0..self.net.len())].clone()
        }
    }
}

/// The product generator: the paper's net, coarse pass then joint perturbation.
fn product_search(scorer: &mut Scorer, layout: &Layout, config: &SearchConfig) -> Result<Found> {
    let r = layout.rank;
    let dirs = sphere_net(r, config.sphere_delta, MAX_NET_POINTS, config.seed);
    let weight_grid = grid(config.weight_bound, config.grid_step);
    let bias_grid = grid(config.bias_bound, config.grid_step);
    let (gw, gb) = layout.grid_params();
    let k1 = config.hidden[0];
    let built_log10 = k1 as f64 * (dirs.len() as f64).log10()
        + gw as f64 * (weight_grid.len() as f64).log10()
        + gb as f64 * (bias_grid.len() as f64).log10();
    let coarse_budget = if config.refine_rounds == 0 {
        config.budget
    } else {
        ((config.budget as f64 * config.coarse_fraction) as usize).max(1)
    };
    let exhaustive = built_log10 <= (coarse_budget as f64).log10();
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
    let mut pool = scorer.score(&config.hidden, &coarse)?;
    keep_best(&mut pool, config.refine_top);
    let mut history = vec![pool[0].0];
    joint_refine(
        scorer,
        layout,
        config,
        config.budget,
        0.5,
        &mut pool,
        &mut history,
        &mut rng,
    )?;
    Ok((pool.swap_remove(0), exhaustive, dirs.len(), history))
}

fn keep_best(pool: &mut Vec<(f64, Vec<f32>)>, top: usize) {
    pool.sort_by(|a, b| a.0.total_cmp(&b.0));
    pool.truncate(top.max(1));
}

/// Coarse-to-fine refinement of whole candidates: perturb the pool's best with shrinking
/// steps until `until` candidates have been evaluated in all. The pool stays sorted.
#[allow(clippy::too_many_arguments)]
fn joint_refine(
    scorer: &mut Scorer,
    layout: &Layout,
    config: &SearchConfig,
    until: usize,
    start_scale: f64,
    pool: &mut Vec<(f64, Vec<f32>)>,
    history: &mut Vec<f64>,
    rng: &mut rand::rngs::StdRng,
) -> Result<()> {
    let remaining = until.saturating_sub(scorer.evaluated);
    let per_round = remaining / config.refine_rounds.max(1);
    // Steps start at `start_scale` times the coarse resolution and halve whenever a round fails
    // to improve the best candidate by 1% (and after every round beyond the halfway mark).
    let mut scale = start_scale;
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
                perturb(parent, layout, angle, step, rng)
            })
            .collect();
        pool.extend(scorer.score(&layout.hidden, &cands)?);
        keep_best(pool, config.refine_top);
        history.push(pool[0].0);
        if pool[0].0 > 0.99 * before || 2 * round > config.refine_rounds {
            scale *= 0.5;
        }
    }
    Ok(())
}

/// One first-layer unit relu(<dir, z> + bias), dir a unit vector.
#[derive(Clone, Debug)]
struct Unit {
    dir: Vec<f64>,
    bias: f64,
}

/// Hidden parameters of a one-hidden-layer candidate: the rows, then the biases.
fn shallow_prefix(units: &[Unit]) -> Vec<f32> {
    let mut p: Vec<f32> = units
        .iter()
        .flat_map(|u| u.dir.iter().map(|&v| v as f32))
        .collect();
    p.extend(units.iter().map(|u| u.bias as f32));
    p
}

/// Unit directions worth trying for a residual e on projected samples (z ~ N(0, I)): by
/// Stein's identity E[e z] = E[grad e] and E[e (z z^T - I)] = E[Hess e], and a ReLU unit's
/// Hessian is concentrated on its own direction; the second moments of z on e's upper and lower
/// tails (filtered PCA on the residual, docs/algorithm.md) see directions whose low moments
/// vanish.
/// Each direction is returned with its negative.
fn residual_directions(z: &[f32], e: &[f64], rank: usize) -> Vec<Vec<f64>> {
    let n = e.len();
    if n < 2 * rank + 2 {
        return Vec::new();
    }
    let r = rank;
    let mut g = vec![0.0f64; r];
    let mut hess = nalgebra::DMatrix::<f64>::zeros(r, r);
    let mut sorted: Vec<f64> = e.to_vec();
    sorted.sort_by(f64::total_cmp);
    let lo = sorted[n / 10];
    let hi = sorted[n - 1 - n / 10];
    let mut tails = [
        (nalgebra::DMatrix::<f64>::zeros(r, r), 0usize),
        (nalgebra::DMatrix::<f64>::zeros(r, r), 0usize),
    ];
    for (zr, &ev) in z.chunks_exact(r).zip(e) {
        let zv = nalgebra::DVector::from_iterator(r, zr.iter().map(|&v| v as f64));
        let outer = &zv * zv.transpose();
        for (gi, zi) in g.iter_mut().zip(zv.iter()) {
            *gi += ev * zi;
        }
        hess += &outer * ev;
        if ev >= hi {
            tails[0].0 += &outer;
            tails[0].1 += 1;
        } else if ev <= lo {
            tails[1].0 += &outer;
            tails[1].1 += 1;
        }
    }
    let mut dirs: Vec<Vec<f64>> = Vec::new();
    let mut push = |v: Vec<f64>| {
        let nv = norm(&v);
        if nv > 1e-12 && nv.is_finite() {
            let u: Vec<f64> = v.iter().map(|x| x / nv).collect();
            // Skip near-duplicates of directions already listed.
            if dirs.iter().all(|d| dot(d, &u).abs() < 0.999) {
                dirs.push(u.iter().map(|x| -x).collect());
                dirs.push(u);
            }
        }
    };
    push(g.clone());
    let identity = nalgebra::DMatrix::<f64>::identity(r, r);
    let mean_e = e.iter().sum::<f64>() / n as f64;
    let hess = hess / n as f64 - &identity * mean_e;
    let top = r.min(3);
    for m in std::iter::once(hess).chain(
        tails
            .into_iter()
            .filter(|t| t.1 > r)
            .map(|(m, c)| m / c as f64 - &identity),
    ) {
        let eig = nalgebra::SymmetricEigen::new(m);
        let mut order: Vec<usize> = (0..r).collect();
        order.sort_by(|&a, &b| {
            eig.eigenvalues[b]
                .abs()
                .total_cmp(&eig.eigenvalues[a].abs())
        });
        for &i in order.iter().take(top) {
            push(eig.eigenvectors.column(i).iter().copied().collect());
        }
    }
    dirs
}

/// Backward elimination over a dictionary of units: one pass forms the Gram matrix of the
/// features relu(<u, z> + b) (and the constant) on the first `rows` training rows; then, with
/// (G_A + rho I)^-1 refactored as the active set A shrinks, the units whose removal raises the
/// ridge least-squares error least (a_i^2 / (G_A + rho I)^-1_ii) are dropped, a fifth of the
/// surplus at a time, until `keep` remain. Unlike adding units one by one, this finds targets
/// no single unit correlates with (the fan), as long as the dictionary covers their units.
fn backward_select(
    train: &ProjectedSamples,
    dictionary: &[Unit],
    keep: usize,
    rows: usize,
    ridge: f64,
) -> Option<Vec<Unit>> {
    use rayon::prelude::*;
    let r = train.rank;
    let n = train.len().min(rows);
    let f = dictionary.len() + 1;
    if dictionary.len() <= keep || n < f {
        return None;
    }
    let block = n.div_ceil(64).max(1);
    let partials: Vec<(Vec<f64>, Vec<f64>)> = train.z[..n * r]
        .par_chunks(r * block)
        .zip(train.y[..n].par_chunks(block))
        .map(|(zb, yb)| {
            let mut g = vec![0.0f64; f * f];
            let mut fy = vec![0.0f64; f];
            let mut phi = vec![0.0f64; f];
            let mut zf = vec![0.0f64; r];
            for (zr, &y) in zb.chunks_exact(r).zip(yb) {
                zf.iter_mut().zip(zr).for_each(|(a, &b)| *a = b as f64);
                for (p, u) in phi.iter_mut().zip(dictionary) {
                    *p = (dot(&u.dir, &zf) + u.bias).max(0.0);
                }
                phi[f - 1] = 1.0;
                for i in 0..f {
                    let pi = phi[i];
                    if pi == 0.0 {
                        continue;
                    }
                    fy[i] += pi * y as f64;
                    for (gij, pj) in g[i * f + i..(i + 1) * f].iter_mut().zip(&phi[i..]) {
                        *gij += pi * pj;
                    }
                }
            }
            (g, fy)
        })
        .collect();
    let mut gram = nalgebra::DMatrix::<f64>::zeros(f, f);
    let mut fy = nalgebra::DVector::<f64>::zeros(f);
    for (g, v) in &partials {
        for i in 0..f {
            fy[i] += v[i];
            for j in i..f {
                gram[(i, j)] += g[i * f + j];
            }
        }
    }
    for i in 0..f {
        for j in 0..i {
            gram[(i, j)] = gram[(j, i)];
        }
    }
    let rho = ridge * (0..f).map(|i| gram[(i, i)]).sum::<f64>() / f as f64 + 1e-12;
    // Active units (the constant, index f - 1, always stays).
    let mut active: Vec<usize> = (0..f - 1).collect();
    while active.len() > keep {
        let idx: Vec<usize> = active.iter().copied().chain([f - 1]).collect();
        let m = idx.len();
        let mut h = nalgebra::DMatrix::<f64>::from_fn(m, m, |i, j| gram[(idx[i], idx[j])]);
        for i in 0..m {
            h[(i, i)] += rho;
        }
        let inv = nalgebra::linalg::Cholesky::new(h)?.inverse();
        let b = nalgebra::DVector::<f64>::from_fn(m, |i, _| fy[idx[i]]);
        let a = &inv * b;
        let mut cost: Vec<(f64, usize)> = (0..m - 1)
            .map(|i| (a[i] * a[i] / inv[(i, i)].max(1e-300), i))
            .collect();
        cost.sort_by(|x, y| x.0.total_cmp(&y.0));
        let drop = ((active.len() - keep) / 5).max(1);
        let mut gone: Vec<usize> = cost[..drop].iter().map(|c| c.1).collect();
        gone.sort_unstable();
        for &i in gone.iter().rev() {
            active.remove(i);
        }
    }
    Some(active.iter().map(|&i| dictionary[i].clone()).collect())
}

/// Candidates for one unit from a Levenberg-Marquardt step on its inner weights: the partial
/// residual e (the first rows of `train`) is fitted by a relu(<u, z> + b) + c, linearised in
/// (u, b, a, c) around the unit and its output weight `a`; the step is taken at lengths 1,
/// 1/2 and 1/4 (the output layer is solved again when the candidates are scored). Empty when
/// the unit is inactive or carries no weight.
fn gauss_newton_steps(train: &ProjectedSamples, e: &[f64], unit: &Unit, a: f64) -> Vec<Unit> {
    let r = train.rank;
    let p = r + 3;
    let mut jtj = nalgebra::DMatrix::<f64>::zeros(p, p);
    let mut jtr = nalgebra::DVector::<f64>::zeros(p);
    let mut zf = vec![0.0f64; r];
    let mut jac = vec![0.0f64; p];
    let mut active = 0usize;
    let c = {
        // The constant that goes with the current unit: the mean of what it leaves.
        let mut sum = 0.0;
        for (zr, &ev) in train.z.chunks_exact(r).zip(e) {
            zf.iter_mut().zip(zr).for_each(|(x, &v)| *x = v as f64);
            sum += ev - a * (dot(&unit.dir, &zf) + unit.bias).max(0.0);
        }
        sum / e.len().max(1) as f64
    };
    for (zr, &ev) in train.z.chunks_exact(r).zip(e) {
        zf.iter_mut().zip(zr).for_each(|(x, &v)| *x = v as f64);
        let s = dot(&unit.dir, &zf) + unit.bias;
        let on = s > 0.0;
        active += usize::from(on);
        for (j, &zv) in jac.iter_mut().zip(&zf) {
            *j = if on { a * zv } else { 0.0 };
        }
        jac[r] = if on { a } else { 0.0 };
        jac[r + 1] = s.max(0.0);
        jac[r + 2] = 1.0;
        let resid = ev - a * s.max(0.0) - c;
        for i in 0..p {
            if jac[i] == 0.0 {
                continue;
            }
            jtr[i] += jac[i] * resid;
            for j in i..p {
                jtj[(i, j)] += jac[i] * jac[j];
            }
        }
    }
    if a.abs() < 1e-12 || active < p {
        return Vec::new();
    }
    for i in 0..p {
        for j in 0..i {
            jtj[(i, j)] = jtj[(j, i)];
        }
    }
    // Marquardt damping; the radial direction (u, b) -> (t u, t b) is a symmetry up to the
    // output weight, so the matrix is singular without it.
    for i in 0..p {
        jtj[(i, i)] *= 1.0 + 1e-3;
        jtj[(i, i)] += 1e-12;
    }
    let Some(chol) = nalgebra::linalg::Cholesky::new(jtj) else {
        return Vec::new();
    };
    let delta = chol.solve(&jtr);
    if delta.iter().any(|v| !v.is_finite()) {
        return Vec::new();
    }
    [1.0, 0.5, 0.25]
        .iter()
        .filter_map(|&t| {
            let u: Vec<f64> = unit
                .dir
                .iter()
                .zip(delta.iter())
                .map(|(v, d)| v + t * d)
                .collect();
            let n = norm(&u);
            (n > 1e-9).then(|| Unit {
                dir: u.iter().map(|v| v / n).collect(),
                bias: (unit.bias + t * delta[r]) / n,
            })
        })
        .collect()
}

/// Residuals y - f(z) of a network on the first `rows` samples, with `add` back in: the partial
/// residual of backfitting (the part a re-chosen unit should explain).
fn residuals(
    samples: &ProjectedSamples,
    rows: usize,
    network: Option<&Network>,
    add: Option<(&Unit, f64)>,
) -> Vec<f64> {
    let n = samples.len().min(rows);
    let r = samples.rank;
    let mean = samples.y[..n].iter().map(|&v| v as f64).sum::<f64>() / n.max(1) as f64;
    let mut zf = vec![0.0f64; r];
    samples.z[..n * r]
        .chunks_exact(r)
        .zip(&samples.y[..n])
        .map(|(zr, &y)| {
            zf.iter_mut().zip(zr).for_each(|(a, &b)| *a = b as f64);
            let pred = network.map_or(mean, |net| net.forward_one_f64(&zf));
            let back = add.map_or(0.0, |(u, w)| w * (dot(&u.dir, &zf) + u.bias).max(0.0));
            y as f64 - pred + back
        })
        .collect()
}

/// The greedy generator: units one by one, backfitting sweeps, then deeper layers by least
/// squares and joint refinement (see the module docs).
fn greedy_search(scorer: &mut Scorer, config: &SearchConfig) -> Result<Found> {
    let mut g = Greedy::new(scorer.train, config);
    let k1 = config.hidden[0];
    let deep = config.hidden.len() > 1;
    let shallow_budget = if deep {
        (config.budget as f64 * 0.6) as usize
    } else {
        config.budget
    };
    let forward_budget = if config.refine_rounds == 0 {
        shallow_budget
    } else {
        (shallow_budget as f64 * config.coarse_fraction) as usize
    };
    let mut best = g.forward(scorer, (forward_budget / k1).max(1))?;
    if config.dictionary_directions > 0 {
        g.backward_start(scorer, &mut best)?;
    }
    let sweeps = config.refine_rounds;
    if sweeps > 0 {
        let per_unit = shallow_budget.saturating_sub(scorer.evaluated) / (sweeps * k1);
        g.backfit(scorer, &mut best, per_unit)?;
    }
    let points = g.directions.net.len();
    if !deep {
        return Ok(((best.mse, best.params), false, points, g.history));
    }
    let (mse, params) = g.deeper_layers(scorer, best.mse, best.params)?;
    let layout = Layout::new(g.r, &config.hidden);
    let mut pool = vec![(mse, params)];
    joint_refine(
        scorer,
        &layout,
        config,
        config.budget,
        0.25,
        &mut pool,
        &mut g.history,
        &mut g.rng,
    )?;
    Ok((pool.swap_remove(0), false, points, g.history))
}

/// A one-hidden-layer network of the greedy generator: its validation error, its parameters
/// and its units.
struct Shallow {
    mse: f64,
    params: Vec<f32>,
    units: Vec<Unit>,
}

/// What the greedy generator's phases share: the samples, the settings, the random stream
/// (drawn in the phases' order, so the result depends on the seed alone), the directions it
/// draws from and the best error after each step.
struct Greedy<'a> {
    train: &'a ProjectedSamples,
    config: &'a SearchConfig,
    r: usize,
    rng: rand::rngs::StdRng,
    directions: Directions,
    /// The configured directions and their mirror images.
    extra: Vec<Vec<f64>>,
    /// Biases while adding units: the coarse grid (twice the refinement spacing).
    coarse_biases: Vec<f64>,
    history: Vec<f64>,
}

impl<'a> Greedy<'a> {
    fn new(train: &'a ProjectedSamples, config: &'a SearchConfig) -> Self {
        let extra = config
            .directions
            .iter()
            .filter(|d| norm(d) > 1e-12)
            .flat_map(|d| {
                let n = norm(d);
                let u: Vec<f64> = d.iter().map(|v| v / n).collect();
                [u.iter().map(|v| -v).collect(), u]
            })
            .collect();
        Greedy {
            train,
            config,
            r: train.rank,
            rng: rand::rngs::StdRng::seed_from_u64(config.seed),
            directions: Directions::new(train.rank, config.sphere_delta, config.seed),
            extra,
            coarse_biases: grid(config.bias_bound, 2.0 * config.grid_step),
            history: Vec::new(),
        }
    }

    /// Candidate units for a residual: its moment directions and the extra ones with every
    /// coarse bias, then draws from the net with random biases; `count` in all (hints first,
    /// sampled when they alone exceed it).
    fn candidates(&mut self, e: &[f64], count: usize) -> Vec<Unit> {
        let r = self.r;
        let mut hints = residual_directions(&self.train.z[..e.len() * r], e, r);
        hints.extend(self.extra.iter().cloned());
        let mut units: Vec<Unit> = hints
            .iter()
            .flat_map(|d| {
                self.coarse_biases.iter().map(|&b| Unit {
                    dir: d.clone(),
                    bias: b,
                })
            })
            .collect();
        if units.len() > count {
            // Fisher-Yates prefix: a uniform sample of `count` hint units.
            for i in 0..count {
                let j = self.rng.random_range(i..units.len());
                units.swap(i, j);
            }
            units.truncate(count);
        }
        while units.len() < count {
            units.push(Unit {
                dir: self.directions.draw(&mut self.rng),
                bias: self.coarse_biases[self.rng.random_range(0..self.coarse_biases.len())],
            });
        }
        units
    }

    /// Forward, a beam of `BEAM` partial networks: each step extends every member by the units
    /// that validate best with it and keeps the best `BEAM` extensions (a single best-first
    /// path often commits early to a unit's mirror image, relu(-s) in place of relu(s)).
    fn forward(&mut self, scorer: &mut Scorer, per_step: usize) -> Result<Shallow> {
        const BEAM: usize = 3;
        let (r, k1) = (self.r, self.config.hidden[0]);
        let mut beam: Vec<(f64, Vec<f32>, Vec<Unit>)> =
            vec![(f64::INFINITY, Vec::new(), Vec::new())];
        for j in 1..=k1 {
            let mut next: Vec<(f64, Vec<f32>, Vec<Unit>)> = Vec::new();
            let share = (per_step / beam.len()).max(1);
            for (_, params, units) in &beam {
                let net = if j > 1 {
                    Some(network_from_params(r, &[j - 1], params)?)
                } else {
                    None
                };
                let e = residuals(self.train, self.config.hint_rows, net.as_ref(), None);
                let cands = self.candidates(&e, share);
                let prefixes: Vec<Vec<f32>> = cands
                    .iter()
                    .map(|u| {
                        let mut all = units.clone();
                        all.push(u.clone());
                        shallow_prefix(&all)
                    })
                    .collect();
                for ((mse, params), u) in scorer.score(&[j], &prefixes)?.into_iter().zip(cands) {
                    let mut all = units.clone();
                    all.push(u);
                    next.push((mse, params, all));
                }
            }
            next.sort_by(|x, y| x.0.total_cmp(&y.0));
            // Distinct members only: equal errors are (almost always) the same network.
            next.dedup_by(|x, y| x.0 == y.0);
            next.truncate(BEAM);
            self.history.push(next[0].0);
            beam = next;
        }
        let (mse, params, units) = beam.swap_remove(0);
        Ok(Shallow { mse, params, units })
    }

    /// The backward start: k1 units out of a dictionary (the sphere net and the label's moment
    /// directions, times a few biases); kept when it validates better than `best`.
    fn backward_start(&mut self, scorer: &mut Scorer, best: &mut Shallow) -> Result<()> {
        let (r, config, train) = (self.r, self.config, self.train);
        let k1 = config.hidden[0];
        let e = residuals(train, config.hint_rows, None, None);
        let mut dirs = residual_directions(&train.z[..e.len() * r], &e, r);
        dirs.extend(self.extra.iter().cloned());
        dirs.extend(sphere_net(
            r,
            config.sphere_delta,
            config.dictionary_directions.max(2),
            config.seed,
        ));
        let dictionary: Vec<Unit> = dirs
            .iter()
            .flat_map(|d| {
                config.dictionary_biases.iter().map(|&b| Unit {
                    dir: d.clone(),
                    bias: b,
                })
            })
            .collect();
        if let Some(chosen) =
            backward_select(train, &dictionary, k1, config.hint_rows, config.ridge)
        {
            let scored = scorer.score(&[k1], &[shallow_prefix(&chosen)])?;
            let (mse, params) = scored.into_iter().next().expect("one candidate");
            if mse < best.mse {
                *best = Shallow {
                    mse,
                    params,
                    units: chosen,
                };
            }
            self.history.push(best.mse);
        }
        Ok(())
    }

    /// Backfitting: re-choose one unit at a time among perturbations of it (at three scales)
    /// and fresh units for its partial residual, `per_unit` candidates each; shrink when a
    /// sweep gains under 1%.
    fn backfit(&mut self, scorer: &mut Scorer, best: &mut Shallow, per_unit: usize) -> Result<()> {
        let (r, config) = (self.r, self.config);
        let k1 = config.hidden[0];
        let mut angle = config.sphere_delta * 0.5;
        let mut step = config.grid_step;
        for _ in 0..config.refine_rounds {
            if per_unit == 0 {
                break;
            }
            let before = best.mse;
            for i in 0..k1 {
                let net = network_from_params(r, &[k1], &best.params)?;
                let out_w = best.params[k1 * (r + 1) + i] as f64;
                let e = residuals(
                    self.train,
                    config.hint_rows,
                    Some(&net),
                    Some((&best.units[i], out_w)),
                );
                // Least-squares steps for the unit's inner weights first, then fresh units for
                // the partial residual, then perturbations.
                let mut cands = gauss_newton_steps(self.train, &e, &best.units[i], out_w);
                cands.truncate(per_unit / 2);
                let fresh = per_unit / 4;
                if fresh > 0 {
                    cands.extend(self.candidates(&e, fresh));
                }
                let fresh = cands.len();
                for c in 0..per_unit.saturating_sub(fresh) {
                    let s = [1.0, 0.25, 0.0625][c % 3];
                    let mut dir: Vec<f64> = best.units[i]
                        .dir
                        .iter()
                        .map(|&v| {
                            v + s * angle / (r as f64).sqrt()
                                * self.rng.sample::<f64, _>(StandardNormal)
                        })
                        .collect();
                    let n = norm(&dir).max(1e-12);
                    dir.iter_mut().for_each(|v| *v /= n);
                    let bias =
                        best.units[i].bias + s * step * self.rng.sample::<f64, _>(StandardNormal);
                    cands.push(Unit { dir, bias });
                }
                let prefixes: Vec<Vec<f32>> = cands
                    .iter()
                    .map(|u| {
                        let mut all = best.units.clone();
                        all[i] = u.clone();
                        shallow_prefix(&all)
                    })
                    .collect();
                if let Some((mse, params)) = scorer.best(&[k1], &prefixes)? {
                    if mse < best.mse {
                        let at = prefixes
                            .iter()
                            .position(|p| p[..] == params[..p.len()])
                            .expect("the best candidate is one of those scored");
                        best.units[i] = cands[at].clone();
                        best.mse = mse;
                        best.params = params;
                    }
                }
            }
            self.history.push(best.mse);
            if best.mse > 0.99 * before {
                angle *= 0.5;
                step *= 0.5;
            }
        }
        Ok(())
    }

    /// Deeper layers on the one-hidden-layer network (`best_mse`, `best_params`): layer l's
    /// first units carry +-(the fit so far), by least squares exactly representable
    /// (relu(f) - relu(-f) = f; one unit: relu(f + M) - M with M past the range of -f), the
    /// rest chosen greedily among perturbed copies. Returns the deep network's error and
    /// parameters (joint refinement follows).
    fn deeper_layers(
        &mut self,
        scorer: &mut Scorer,
        mut best_mse: f64,
        mut best_params: Vec<f32>,
    ) -> Result<(f64, Vec<f32>)> {
        let (r, config, train) = (self.r, self.config, self.train);
        let sd_y = label_variance(&train.y[..train.len().min(config.hint_rows)])
            .sqrt()
            .max(1e-12);
        let extra_budget = (config.budget as f64 * 0.75) as usize;
        let mut hidden = vec![config.hidden[0]];
        for l in 1..config.hidden.len() {
            let width = config.hidden[l];
            let prev = hidden[l - 1];
            let base_len = Layout::new(r, &hidden).prefix;
            let out_w: Vec<f64> = best_params[base_len..base_len + prev]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let out_b = best_params[base_len + prev] as f64;
            let mut rows: Vec<(Vec<f64>, f64)> = if width == 1 {
                vec![(out_w.clone(), out_b + 4.0 * sd_y)]
            } else {
                vec![
                    (out_w.clone(), out_b),
                    (out_w.iter().map(|v| -v).collect(), -out_b),
                ]
            };
            hidden.push(width);
            let scale = norm(&out_w).max(1e-6);
            let layer_prefix = |rows: &[(Vec<f64>, f64)], pad: usize| -> Vec<f32> {
                let mut p = best_params[..base_len].to_vec();
                for (w, _) in rows {
                    p.extend(w.iter().map(|&v| v as f32));
                }
                p.extend(std::iter::repeat_n(0.0f32, pad * prev));
                p.extend(rows.iter().map(|(_, b)| *b as f32));
                p.extend(std::iter::repeat_n(0.0f32, pad));
                p
            };
            let steps = width.saturating_sub(rows.len());
            let per_extra = if steps == 0 {
                0
            } else {
                (extra_budget.saturating_sub(scorer.evaluated)
                    / (steps * (config.hidden.len() - l)))
                    .max(1)
            };
            for _ in 0..steps {
                let rng = &mut self.rng;
                let cands: Vec<(Vec<f64>, f64)> = (0..per_extra)
                    .map(|c| {
                        let sign = if c % 2 == 0 { 1.0 } else { -1.0 };
                        let tau = [0.5, 1.0, 2.0][c % 3];
                        let xi = random_unit(prev, rng);
                        let w: Vec<f64> = out_w
                            .iter()
                            .zip(&xi)
                            .map(|(a, x)| sign * a + tau * scale * x)
                            .collect();
                        let b = sign * out_b
                            + sd_y * config.bias_bound * (2.0 * rng.random::<f64>() - 1.0);
                        (w, b)
                    })
                    .collect();
                let pad = width - rows.len() - 1;
                let prefixes: Vec<Vec<f32>> = cands
                    .iter()
                    .map(|c| {
                        let mut all = rows.clone();
                        all.push(c.clone());
                        layer_prefix(&all, pad)
                    })
                    .collect();
                let (_, params) = scorer
                    .best(&hidden, &prefixes)?
                    .expect("at least one candidate");
                let at = prefixes
                    .iter()
                    .position(|p| p[..] == params[..p.len()])
                    .expect("the best candidate is one of those scored");
                rows.push(cands[at].clone());
            }
            let scored = scorer.score(&hidden, &[layer_prefix(&rows, 0)])?;
            let (mse, params) = scored.into_iter().next().expect("one candidate");
            best_mse = mse;
            best_params = params;
            self.history.push(best_mse);
        }
        Ok((best_mse, best_params))
    }
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

/// Which final fit [`search`] kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// Enumerate-and-test.
    Enumerate,
    /// Sphere-net features plus ridge.
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
