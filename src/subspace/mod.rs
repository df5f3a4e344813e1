//! Subspace stage: filtered PCA (ALGORITHM.md sections 2.3, 5.3-5.4, 5.7) and the classical
//! baselines pHd, SIR and SAVE (section 2.6), all computed from the per-bin accumulators of one
//! [`Backend::moments`] pass per round.
//!
//! Filtered PCA, round t with current basis B (r orthonormal rows, P = I - B^T B):
//! 1. A pilot sample (the first `pilot_rows` rows) fixes the bins: equal-mass cells of z = B x
//!    on the most recent `a <= max_cell_axes` directions (edges Phi^{-1}(j / cells_per_axis)),
//!    and per cell y edges at quantiles plus both tails of |y - median| (an atom at y = 0, when
//!    the pilot has one, is its own bin (-tiny, 0]).
//! 2. One streaming pass computes every bin at once.
//! 3. On the host every filter is a prefix or suffix of a cell's y-bins, or a |y - med| tail
//!    (union of both ends). Per filter T with n_T samples:
//!    M_T = P (S_T / n_T - Sigma_hat) P, m_T = P (s_T / n_T - mu_hat).
//!    With gamma' = ((sqrt(d_perp) + sqrt(2 ln F)) / sqrt(n_T))^2, F = number of tests scanned
//!    (two per filter: matrix and mean), the null edges are nu2 = 2 sqrt(gamma') + gamma' for
//!    eigenvalues of M_T and nu1 = sqrt(gamma') for ||m_T||. This is the Marchenko-Pastur edge
//!    with the Gaussian-concentration union bound over F tests: ||W/n - I|| <= 2(sqrt(g) +
//!    t/sqrt n) + (sqrt(g) + t/sqrt n)^2 with probability >= 1 - 2 exp(-t^2/2), and
//!    t = sqrt(2 ln F) makes the bound hold for all F tests at once up to a constant.
//!    Eigenpairs with |lambda| >= c nu2 and means with ||m|| >= c nu1 are accepted, score =
//!    |lambda| / nu2 (or ||m|| / nu1).
//! 4. Accepted directions are merged through A = sum score^2 v v^T; new directions are A's
//!    eigenvectors with eigenvalue >= merge_fraction * max (at most max_dim - r of them),
//!    orthonormalised against B.
//!
//! The method stops when nothing clears the bar or r reaches `max_dim`. The teacher is never
//! read: the dimension is found by the method.
//!
//! Files: `filtered` (the rounds: bins, filter scoring, merge), `refine` (the Gauss-Newton
//! steps), `baselines` (pHd, SIR, SAVE), `report` (what a run returns, JSON and summary); this
//! file holds the configuration, the entry point and the helpers they share.

mod baselines;
mod filtered;
mod refine;
mod report;

pub use report::{RefineStep, RoundReport, SubspaceReport};

use crate::backend::Backend;
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::search::SphereNetConfig;
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Which subspace estimator to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Method {
    /// Iterative filtered PCA with conditioning (finds the dimension itself).
    Filtered,
    /// Principal Hessian directions E[(y - mean y)(x x^T - I)] (a correlational baseline).
    Phd,
    /// Sliced inverse regression: covariance of slice means.
    Sir,
    /// Sliced average variance estimation: sum_s p_s (Cov(x | s) - I)^2.
    Save,
}

impl Method {
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Filtered => "filtered",
            Method::Phd => "phd",
            Method::Sir => "sir",
            Method::Save => "save",
        }
    }
}

/// Settings of [`find_subspace`].
#[derive(Clone, Debug, PartialEq)]
pub struct SubspaceConfig {
    /// Estimator (default `Filtered`).
    pub method: Method,
    /// Upper bound on the dimension found by filtered PCA (default 8, the most the bins and
    /// evaluation kernels take).
    pub max_dim: usize,
    /// Baselines: the number of directions to return (required for pHd, SIR, SAVE).
    /// Filtered PCA: a tighter upper bound than `max_dim` when given.
    pub dim: Option<usize>,
    /// Reserved for randomised variants; the current methods are deterministic functions of
    /// the samples, so equal inputs give equal results whatever the seed.
    pub seed: u64,
    /// Acceptance multiple c of the union-bound-corrected null edge (default 3). Measured:
    /// section 2.3's c = 4 on top of the correction (about c = 5.6 on the plain edge at d = 48
    /// with 60 tests) found 1 of 4 parity (k = 4, d = 48) directions at N = 2e5, its best
    /// filter scoring 4.1, 3.9, 3.8, 3.7; c = 3 found all 4 (largest angle 0.097 rad) and still
    /// accepts nothing on shuffled labels (tests/subspace.rs).
    pub acceptance: f64,
    /// Equal-mass cells per conditioning axis (default 3).
    pub cells_per_axis: usize,
    /// At most this many of the most recent directions are conditioned on (default 3): cells
    /// grow as cells_per_axis^axes, and each needs enough samples.
    pub max_cell_axes: usize,
    /// Rows of the pilot sample that fixes the bin edges (default 100 000).
    pub pilot_rows: usize,
    /// A filter is scored only when it holds at least min_filter_factor * d samples
    /// (default 20, section 2.3).
    pub min_filter_factor: f64,
    /// Keep an eigenvector of the aggregate A when its eigenvalue is at least this fraction of
    /// A's largest (default 0.1). Measured: 0.01 let the leakage of a strong direction's
    /// noise through as a spurious direction (angle 1.31 rad, random [4, 4] teacher with
    /// biases, d = 32, N = 2e5); weaker true directions cut at 0.1 are found by later rounds.
    pub merge_fraction: f64,
    /// Round 1 y quantiles (signed filters y <= tau and y > tau).
    pub round1_quantiles: Vec<f64>,
    /// Tail quantiles q of |y - median| (filters |y - med| > q-quantile), round 1.
    pub round1_tails: Vec<f64>,
    /// Within-cell y quantiles of later rounds.
    pub cell_quantiles: Vec<f64>,
    /// Within-cell tail quantiles of |y - cell median| in later rounds.
    pub cell_tails: Vec<f64>,
    /// Slices of SIR and SAVE (equal-mass on the pilot; default 10).
    pub slices: usize,
    /// Gauss-Newton steps on the basis after the rounds (default 3; 0 turns them off). Each
    /// fits h on the pilot's z = B x and makes one pass for the step; a step that does not
    /// lower the residual is undone and ends them. Measured (d = 128, N = 1e6, largest angle
    /// after 0/1/2/3/5 steps): parity k = 4 0.078/0.042/0.025/0.019/0.018 rad, deep parity
    /// k = 3 0.051/0.012/0.0055/0.0050/0.0050. Re-estimating each direction by filtered PCA
    /// conditioned on the others (ALGORITHM.md 5.7), tried first, reached only 0.028 on
    /// parity.
    pub refine_steps: usize,
    /// The fit h of those steps. Its accuracy sets their noise floor: with 24/48/96/192
    /// directions the parity angle after 3 steps was 0.023/0.019/0.012/0.0035 rad, at 0.1/0.4/
    /// 1.3/4.5 s per fit.
    pub fit_config: SphereNetConfig,
}

impl Default for SubspaceConfig {
    fn default() -> Self {
        SubspaceConfig {
            method: Method::Filtered,
            max_dim: 8,
            dim: None,
            seed: 0,
            acceptance: 3.0,
            cells_per_axis: 3,
            max_cell_axes: 3,
            pilot_rows: 100_000,
            min_filter_factor: 20.0,
            merge_fraction: 0.1,
            round1_quantiles: vec![0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
            round1_tails: vec![0.5, 0.8, 0.9, 0.95],
            cell_quantiles: vec![0.1, 0.25, 0.5, 0.75, 0.9],
            cell_tails: vec![0.8, 0.9],
            slices: 10,
            refine_steps: 3,
            fit_config: SphereNetConfig {
                max_directions: 48,
                ..SphereNetConfig::default()
            },
        }
    }
}

/// Finds the relevant subspace of the samples with the configured method.
pub fn find_subspace(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    config: &SubspaceConfig,
) -> Result<SubspaceReport> {
    validate(source, config)?;
    match config.method {
        Method::Filtered => filtered::filtered_pca(backend, source, config),
        Method::Phd | Method::Sir | Method::Save => baselines::baseline(backend, source, config),
    }
}

fn validate(source: &dyn SampleSource, c: &SubspaceConfig) -> Result<()> {
    let d = source.dim();
    if d == 0 || source.is_empty() {
        return Err(Error::invalid(format!(
            "subspace: need samples with d >= 1 (got {} rows, d = {d})",
            source.len()
        )));
    }
    if c.max_dim == 0 || c.max_dim > 8 {
        return Err(Error::invalid(format!(
            "subspace: max_dim must be in 1..=8, got {}",
            c.max_dim
        )));
    }
    if let Some(k) = c.dim {
        if k == 0 || k > d.min(8) {
            return Err(Error::invalid(format!(
                "subspace: dim must be in 1..={}, got {k}",
                d.min(8)
            )));
        }
    }
    if c.method != Method::Filtered && c.dim.is_none() {
        return Err(Error::invalid(format!(
            "subspace: the {} baseline needs the dimension (dim / --dim); only filtered PCA finds it",
            c.method.name()
        )));
    }
    if !(c.acceptance.is_finite() && c.acceptance > 0.0) {
        return Err(Error::invalid(format!(
            "subspace: acceptance must be > 0, got {}",
            c.acceptance
        )));
    }
    if !(2..=8).contains(&c.cells_per_axis) {
        return Err(Error::invalid(format!(
            "subspace: cells_per_axis must be in 2..=8, got {}",
            c.cells_per_axis
        )));
    }
    if c.max_cell_axes > 8 {
        return Err(Error::invalid("subspace: max_cell_axes must be <= 8"));
    }
    if c.pilot_rows == 0 || c.slices < 2 {
        return Err(Error::invalid(
            "subspace: pilot_rows must be >= 1 and slices >= 2",
        ));
    }
    let merge_ok = c.merge_fraction > 0.0 && c.merge_fraction <= 1.0;
    let min_ok = c.min_filter_factor.is_finite() && c.min_filter_factor >= 0.0;
    if !merge_ok || !min_ok {
        return Err(Error::invalid(
            "subspace: merge_fraction must be in (0, 1] and min_filter_factor >= 0",
        ));
    }
    let quantiles = c
        .round1_quantiles
        .iter()
        .chain(&c.round1_tails)
        .chain(&c.cell_quantiles)
        .chain(&c.cell_tails);
    for &q in quantiles {
        if !(q > 0.0 && q < 1.0) {
            return Err(Error::invalid(format!(
                "subspace: quantiles must lie in (0, 1), got {q}"
            )));
        }
    }
    Ok(())
}

/// Inverse standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549671035506205,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let low = 0.02425;
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

/// Quantile of sorted data (linear interpolation). `sorted` must be non-empty.
pub(super) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let t = pos - lo as f64;
    sorted[lo] * (1.0 - t) + sorted[hi] * t
}

/// The first `rows` samples in f64.
pub(super) struct Pilot {
    pub(super) x: Vec<f64>,
    pub(super) y: Vec<f64>,
}

pub(super) fn read_pilot(source: &dyn SampleSource, rows: usize) -> Result<Pilot> {
    let d = source.dim();
    let want = (rows as u64).min(source.len()) as usize;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let mut pilot = Pilot {
        x: Vec::with_capacity(want * d),
        y: Vec::with_capacity(want),
    };
    while pilot.y.len() < want {
        let n = source.read(
            pilot.y.len() as u64,
            (want - pilot.y.len()).min(1 << 16),
            &mut xs,
            &mut ys,
        )?;
        if n == 0 {
            return Err(Error::invalid(format!(
                "{} returned no rows at row {} of {}",
                source.describe(),
                pilot.y.len(),
                source.len()
            )));
        }
        pilot.x.extend(xs.iter().map(|&v| v as f64));
        pilot.y.extend(ys.iter().map(|&v| v as f64));
    }
    Ok(pilot)
}

/// P = I - B^T B.
pub(super) fn complement_projector(d: usize, basis: &[Vec<f64>]) -> DMatrix<f64> {
    let mut p = DMatrix::identity(d, d);
    for b in basis {
        for i in 0..d {
            for j in 0..d {
                p[(i, j)] -= b[i] * b[j];
            }
        }
    }
    p
}

pub(super) fn symmetric_eigen(m: DMatrix<f64>) -> SymmetricEigen<f64, nalgebra::Dyn> {
    let sym = (&m + m.transpose()) * 0.5;
    SymmetricEigen::new(sym)
}

/// Eigenpairs sorted by decreasing |lambda|.
pub(super) fn sorted_by_magnitude(
    e: &SymmetricEigen<f64, nalgebra::Dyn>,
) -> Vec<(f64, DVector<f64>)> {
    let mut pairs: Vec<(f64, DVector<f64>)> = e
        .eigenvalues
        .iter()
        .enumerate()
        .map(|(i, &l)| (l, e.eigenvectors.column(i).into_owned()))
        .collect();
    pairs.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
    pairs
}

/// Gram-Schmidt (twice), dropping rows that vanish.
pub(super) fn orthonormalise(rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::new();
    for r in rows {
        let mut w = r.clone();
        for _ in 0..2 {
            for b in &out {
                let dot: f64 = b.iter().zip(&w).map(|(p, q)| p * q).sum();
                for (wi, bi) in w.iter_mut().zip(b) {
                    *wi -= dot * bi;
                }
            }
        }
        let norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 1e-6 {
            out.push(w.iter().map(|v| v / norm).collect());
        }
    }
    out
}
