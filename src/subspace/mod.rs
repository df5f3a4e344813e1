//! Subspace stage: filtered PCA (docs/algorithm.md, "Filtered PCA" to "Refine steps") and the
//! classical baselines pHd, SIR and SAVE ("Classical baselines"), all computed from the per-bin accumulators of one
//! [`Backend::moments`] pass per round.
//!
//! Filtered PCA works in a whitened frame x~ = W (x - mu) (`whiten`, on by default; W = I when
//! the sample covariance is I within its sampling error): the passes read the raw rows centred
//! on mu, and every statistic is carried into the frame on the host (W S W^T), so whitening
//! costs d subtractions per row, not a d x q product. Round t, current basis B (r orthonormal
//! rows of the frame), P = I - B^T B:
//! 1. A pilot sample (the first `pilot_rows` rows) fixes the bins: a pseudo-random group
//!    (`cells_per_axis` of them) from the row index only, equal-mass cells of z = B x~ on up to
//!    `max_cell_axes` directions chosen among all found ones (the leading direction of each
//!    accepted block, or the directions a fit uses most), and per cell y edges at quantiles
//!    plus both tails of |y - median| (an atom at y = 0, when the pilot has one, is its own bin
//!    (-tiny, 0]).
//! 2. One streaming pass computes every bin at once.
//! 3. On the host every filter T is a prefix or suffix of a cell's y-bins, or a |y - med| tail.
//!    Its statistics M_T = P W (S_T / n_T - S / N) W^T P and m_T = P W (s_T / n_T - s / N) are
//!    scored against the edge their Gaussian null predicts (`eigen::null_edge`), and so are
//!    the null contrasts between T's groups (group k against groups 0..k): those have the same
//!    noise as M_T but mean 0 whatever the signal, because the groups are random. The bar is
//!    `null_margin` times the largest null score over every filter and contrast of the round
//!    (`null_margin_mean` for the means), so it adapts to heavy tails, anisotropy and label
//!    noise without retuning. Only the few leading eigenpairs are computed (Lanczos).
//! 4. Accepted directions are merged through A = sum score^2 v v^T; new directions are A's
//!    eigenvectors with eigenvalue >= merge_fraction * max (at most max_dim - r of them),
//!    orthonormalised against B.
//!
//! The rounds stop when nothing clears the bar or r reaches `max_dim`. Then `refine_steps`
//! Gauss-Newton steps sharpen the basis, and residual rounds look for what it still misses:
//! a fit h on the pilot's z = B x, filtered PCA of (x off span B, e = y - h(B x)) with the same
//! null, the basis grown by what clears it and refined again, until nothing does. The teacher
//! is never read: the dimension is found by the method.
//!
//! Files: `filtered` (the rounds: bins, filter scoring, merge), `eigen` (Lanczos, null edges),
//! `sources` (the views the passes read), `refine` (the Gauss-Newton steps and the pilot fit),
//! `baselines` (pHd, SIR, SAVE), `report` (what a run returns, JSON and summary); this file
//! holds the configuration, the entry point and the helpers they share.

mod baselines;
pub mod eigen;
mod filtered;
mod paper;
mod refine;
mod report;
mod sources;
mod whiten;

pub use report::{
    MeansOnly, NoStructure, RefineEstimate, RefineStep, Refinement, RoundKind, RoundReport,
    SubspaceReport,
};
pub use whiten::estimate_whitening;

use crate::backend::Backend;
use crate::data::whiten::Whitening;
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::network::Network;
use crate::sphere::SphereNetConfig;
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Which subspace estimator to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Method {
    /// Iterative filtered PCA with conditioning (finds the dimension itself).
    Filtered,
    /// The paper's filtered PCA as written: label rounds only, each conditioned on the cells
    /// of every direction found before it; no whitening, Gauss-Newton steps or residual
    /// rounds. `refine_steps` counts refine sweeps of the paper's own round instead.
    Paper,
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
            Method::Paper => "paper",
            Method::Phd => "phd",
            Method::Sir => "sir",
            Method::Save => "save",
        }
    }

    /// Filtered PCA in either form: finds the dimension itself (the baselines need it given).
    pub fn finds_dimension(self) -> bool {
        matches!(self, Method::Filtered | Method::Paper)
    }
}

/// Settings of [`find_subspace`].
#[derive(Clone, Debug, PartialEq)]
pub struct SubspaceConfig {
    /// Estimator (default `Filtered`).
    pub method: Method,
    /// Upper bound on the dimension filtered PCA may find (default 32; a user bound, not a
    /// limit of the method).
    pub max_dim: usize,
    /// Baselines: the number of directions to return (required for pHd, SIR, SAVE).
    /// Filtered PCA: a tighter upper bound than `max_dim` when given.
    pub dim: Option<usize>,
    /// Seed of the random groups of the null (and of the Lanczos start vectors): equal inputs
    /// and seed give equal results.
    pub seed: u64,
    /// Filtered PCA whitens the inputs (estimates mu and Sigma in one more pass and works on
    /// Sigma^(-1/2) (x - mu)); default true. The baselines read the raw x.
    pub whiten: bool,
    /// A direction is accepted when its eigenvalue score clears this multiple of the round's
    /// null maximum (the largest score of any null contrast of any filter); default 1.25.
    /// Under independence of x and y the real statistics and the contrasts are draws of the
    /// same law (to leading order), so without a margin the real maximum would exceed the null
    /// maximum about half the time; the margin covers the spread of the ratio of the two
    /// maxima, which shrinks like d^(-2/3) (Tracy-Widom). Measured on labels independent of x
    /// (scripts/false_positives.py, 20 seeds each): the worst ratio was 1.02 at d = 16, 1.12
    /// at d = 32 with heavy-tailed x and y, 1.06 at d = 64 (Gaussian, anisotropic or t5 x);
    /// 1.25 stands above all of them, while a direction at 2-3x the Gaussian null edge (which
    /// the old fixed multiple of 3 on a union-bound-corrected edge refused) clears it. This is
    /// the margin up to d = 32: with whitening, in a round where no score clears it, its
    /// excess over 1 shrinks like 1 / sqrt(d) above (`filtered::eigen_margin`: 1.125 at
    /// d = 128).
    pub null_margin: f64,
    /// The same for the filtered means |m_T| (default 1.25, raised to 1 + 2 / sqrt(d) at small
    /// d, where the norm of a noise vector spreads more; see `filtered::mean_margin`).
    pub null_margin_mean: f64,
    /// Null contrasts per filter, at most `cells_per_axis - 1` (default 2): more contrasts
    /// give a larger sample of the null maximum at one eigen-solve each.
    pub null_replicates: usize,
    /// Equal-mass cells per conditioning axis, and random groups of the null (default 3).
    pub cells_per_axis: usize,
    /// At most this many conditioning axes per round (default 3): cells grow as
    /// cells_per_axis^axes, and each needs enough samples; the axes are chosen among all found
    /// directions.
    pub max_cell_axes: usize,
    /// Rows of the pilot sample that fixes the bin edges (default 100 000).
    pub pilot_rows: usize,
    /// A filter is scored only when it holds at least min_filter_factor * d samples
    /// (default 20, a constant chosen here: a filter of 20 d rows has a Gaussian null edge of
    /// 2 sqrt(1/20) + 1/20 = 0.5; smaller filters add mostly noise to a round).
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
    /// Most Gauss-Newton steps on the basis after the rounds and after each residual round
    /// that grows it (default 3; 0 turns them off). Each fits h on the pilot's z = B x and
    /// makes one pass for the step; a step that does not lower the residual is undone and ends
    /// them, one that lowers it by less than 1% ends them too, and a step whose Gauss-Newton
    /// model promises less than 0.5% is taken and ends them (without the pass that would only
    /// measure it). Measured (d = 128, N = 1e6, largest angle
    /// after 0/1/2/3/5 steps): parity k = 4 0.078/0.042/0.025/0.019/0.018 rad, deep parity
    /// k = 3 0.051/0.012/0.0055/0.0050/0.0050. Re-estimating each direction by filtered PCA
    /// conditioned on the others, tried first, reached only 0.028 on
    /// parity. With [`Method::Paper`], that re-estimation is what runs: at most this many
    /// refine sweeps (see `paper::paper_pca`).
    pub refine_steps: usize,
    /// Rounds with filters on y (default 1): the first finds the strong directions; more
    /// condition on cells of the found ones before the refine steps have sharpened them (see
    /// `filtered_pca`).
    pub label_rounds: usize,
    /// Most residual rounds after the refine steps (default 8; 0 turns them off, and so do
    /// `refine_steps = 0`): each fits h
    /// on the pilot, runs a round on e = y - h(B x) conditioned on the directions h uses most,
    /// and when something clears the null grows the basis and refines it again. A round that
    /// finds nothing ends them (one pass).
    pub residual_rounds: usize,
    /// The fit h of those steps. Its accuracy sets their noise floor: with 24/48/96/192
    /// directions the parity angle after 3 steps was 0.023/0.019/0.012/0.0035 rad, at 0.1/0.4/
    /// 1.3/4.5 s per fit.
    pub fit_config: SphereNetConfig,
}

impl Default for SubspaceConfig {
    fn default() -> Self {
        SubspaceConfig {
            method: Method::Filtered,
            max_dim: 32,
            dim: None,
            seed: 0,
            whiten: true,
            null_margin: 1.25,
            null_margin_mean: 1.25,
            null_replicates: 2,
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
            label_rounds: 1,
            residual_rounds: 8,
            fit_config: SphereNetConfig {
                max_directions: 48,
                ..SphereNetConfig::default()
            },
        }
    }
}

/// Finds the relevant subspace of the samples with the configured method. Filtered PCA
/// whitens first when `config.whiten` (estimating mu and Sigma on `source`).
pub fn find_subspace(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    config: &SubspaceConfig,
) -> Result<SubspaceReport> {
    validate(source, config)?;
    match config.method {
        Method::Filtered => filtered_pca(backend, source, config, None),
        Method::Paper => paper::paper_pca(backend, source, config),
        Method::Phd | Method::Sir | Method::Save => baselines::baseline(backend, source, config),
    }
}

/// Filtered PCA in the frame of a given whitening (estimated elsewhere, e.g. on a training
/// split); `config.whiten` is not consulted.
pub fn find_subspace_whitened(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    config: &SubspaceConfig,
    whitening: &Whitening,
) -> Result<SubspaceReport> {
    validate(source, config)?;
    if config.method != Method::Filtered {
        return Err(Error::invalid(
            "subspace: a whitened frame is only used by filtered PCA",
        ));
    }
    if whitening.input_dim != source.dim() {
        return Err(Error::invalid(format!(
            "subspace: the whitening is for d = {} but the samples have d = {}",
            whitening.input_dim,
            source.dim()
        )));
    }
    filtered_pca(backend, source, config, Some(whitening))
}

fn validate(source: &dyn SampleSource, c: &SubspaceConfig) -> Result<()> {
    let d = source.dim();
    if d == 0 || source.is_empty() {
        return Err(Error::invalid(format!(
            "subspace: need samples with d >= 1 (got {} rows, d = {d})",
            source.len()
        )));
    }
    // The d x d moments must fit before any pass allocates them.
    crate::safety::check_subspace_memory(d, &source.describe())?;
    if c.max_dim == 0 {
        return Err(Error::invalid(
            "subspace: max_dim must be at least 1, got 0",
        ));
    }
    if let Some(k) = c.dim {
        if k == 0 || k > d {
            return Err(Error::invalid(format!(
                "subspace: dim must be in 1..={d} (the input dimension), got {k}"
            )));
        }
    }
    if !c.method.finds_dimension() && c.dim.is_none() {
        return Err(Error::invalid(format!(
            "subspace: the {} baseline needs the dimension (dim / --dim); only filtered PCA finds it",
            c.method.name()
        )));
    }
    let margins = [c.null_margin, c.null_margin_mean];
    if margins.iter().any(|m| !(m.is_finite() && *m >= 1.0)) {
        return Err(Error::invalid(format!(
            "subspace: null margins must be >= 1 (a bar below the null maximum accepts noise), got {} and {}",
            c.null_margin, c.null_margin_mean
        )));
    }
    if !(2..=8).contains(&c.cells_per_axis) {
        return Err(Error::invalid(format!(
            "subspace: cells_per_axis must be in 2..=8, got {}",
            c.cells_per_axis
        )));
    }
    if c.label_rounds == 0 {
        return Err(Error::invalid("subspace: label_rounds must be at least 1"));
    }
    if c.null_replicates == 0 {
        return Err(Error::invalid(
            "subspace: null_replicates must be at least 1",
        ));
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

/// The working frame of filtered PCA: raw rows are centred on the whitening mean, and vectors
/// of the frame (length q) map to rows on the centred raw x (length d) by W^T.
pub(super) struct Frame<'a> {
    pub(super) whitening: &'a Whitening,
    /// Raw input dimension.
    pub(super) d: usize,
    /// Frame dimension (d minus the dropped directions).
    pub(super) q: usize,
}

impl<'a> Frame<'a> {
    pub(super) fn new(whitening: &'a Whitening) -> Self {
        Frame {
            whitening,
            d: whitening.input_dim,
            q: whitening.output_dim(),
        }
    }

    /// The centre the passes subtract (None when it is 0).
    pub(super) fn centre(&self) -> Option<&[f64]> {
        let m = &self.whitening.mean;
        m.iter().any(|&v| v != 0.0).then_some(m.as_slice())
    }

    /// W^T v: the raw row that reads the frame coordinate v.
    pub(super) fn raw(&self, v: &[f64]) -> Vec<f64> {
        self.whitening.apply_transpose(v)
    }

    /// W u for u in R^d.
    pub(super) fn to_frame(&self, u: &[f64]) -> Vec<f64> {
        self.whitening.apply(u)
    }

    /// The raw rows of a frame basis.
    pub(super) fn raw_rows(&self, basis: &[Vec<f64>]) -> Vec<Vec<f64>> {
        self.whitening.raw_rows(basis)
    }

    /// (I - B^T B) v.
    pub(super) fn project_out(&self, basis: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
        let mut w = v.to_vec();
        for b in basis {
            let c = crate::linalg::dot_wide(b, &w);
            crate::linalg::axpy(&mut w, -c, b);
        }
        w
    }
}

fn filtered_pca(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    c: &SubspaceConfig,
    given: Option<&Whitening>,
) -> Result<SubspaceReport> {
    let d = source.dim();
    let n = source.len();
    let mut pilot = read_pilot(source, c.pilot_rows)?;
    if let Some(none) = NoStructure::if_constant(&pilot.y, n, d) {
        return Err(Error::NoStructure(Box::new(none)));
    }
    // Whitening estimated from the first round's own pass (its totals are the plain moments):
    // the pass reads rows centred on the pilot's mean, so its f32 sums do not cancel when
    // |mu| >> the spread, and the round is scored in the frame that comes out.
    let estimate = given.is_none() && c.whiten;
    let mut whitening = match given {
        Some(w) => w.clone(),
        None if estimate => {
            let rows = pilot.y.len().max(1) as f64;
            let mut mean = vec![0.0; d];
            for x in pilot.x.chunks_exact(d) {
                crate::linalg::axpy(&mut mean, 1.0 / rows, x);
            }
            // Rounded to f32 as the passes subtract it.
            let mean = mean.iter().map(|&v| v as f32 as f64).collect();
            Whitening {
                mean,
                ..Whitening::identity(d)
            }
        }
        None => Whitening::identity(d),
    };
    recentre_pilot(&mut pilot, d, &whitening.mean, None);
    let mut basis: Vec<Vec<f64>> = Vec::new();
    let mut blocks: Vec<std::ops::Range<usize>> = Vec::new();
    let mut rounds = Vec::new();
    let mut refine = Vec::new();
    let mut samples_used = pilot.y.len() as u64 + given.map_or(0, |w| w.rows);
    let mut max_dim = c.dim.unwrap_or(c.max_dim).min(c.max_dim).min(d);
    // Label rounds: filters on y (one by default: later rounds condition on the cells of
    // z = B x, and before the refine steps B is a few hundredths of a radian off, enough for
    // the filters' pull on the true directions to leak into the complement as spurious
    // directions; the residual rounds condition after the refine steps instead).
    while basis.len() < max_dim && rounds.len() < c.label_rounds {
        let a = filtered::axes_budget(basis.len(), n, d, basis.is_empty(), c);
        let axes = filtered::choose_axes(&basis, &blocks, None, a);
        let first = rounds.is_empty() && estimate;
        let out = filtered::round(
            backend,
            source,
            &pilot,
            &Frame::new(&whitening),
            &basis,
            &axes,
            None,
            RoundKind::Label,
            max_dim - basis.len(),
            rounds.len() + 1,
            first,
            c,
        )?;
        if let Some(w) = out.whitening {
            recentre_pilot(&mut pilot, d, &w.mean, Some(&whitening.mean));
            whitening = w;
            max_dim = max_dim.min(whitening.output_dim());
        }
        samples_used += n;
        rounds.push(out.report);
        if out.directions.is_empty() {
            break;
        }
        let start = basis.len();
        basis.extend(out.directions);
        blocks.push(start..basis.len());
    }
    let frame = Frame::new(&whitening);
    let mut fit_of_basis = None;
    if !basis.is_empty() && c.refine_steps > 0 {
        let (steps, fit) = refine::gauss_newton(backend, source, &pilot, &frame, &mut basis, c)?;
        samples_used += steps.len() as u64 * n;
        refine.extend(steps);
        fit_of_basis = fit;
    }
    // Residual rounds: filters on e = y - h(B x), conditioned on what h uses most.
    // Without the refine steps the residual carries the basis's own error as structure in the
    // complement (e ~ grad f . (U - B) x), which the rounds would take for new directions.
    let residual_rounds = if c.refine_steps > 0 {
        c.residual_rounds
    } else {
        0
    };
    for _ in 0..residual_rounds {
        if basis.is_empty() || basis.len() >= max_dim {
            break;
        }
        let z = refine::pilot_z(&pilot, &frame, &basis);
        let fit = match fit_of_basis.take() {
            Some(fit) => fit,
            None => refine::fit_on_z(&pilot, &z, basis.len(), &c.fit_config)?,
        };
        let relevance = refine::relevant_directions(&z, &frame, &basis, &fit);
        let model = Network::with_projection(&fit, &frame.raw_rows(&basis))?;
        let a = filtered::axes_budget(basis.len(), n, d, false, c);
        let axes = filtered::choose_axes(&basis, &blocks, Some(&relevance), a);
        let out = filtered::round(
            backend,
            source,
            &pilot,
            &frame,
            &basis,
            &axes,
            Some(&model),
            RoundKind::Residual,
            max_dim - basis.len(),
            rounds.len() + 1,
            false,
            c,
        )?;
        samples_used += n;
        rounds.push(out.report);
        if out.directions.is_empty() {
            break;
        }
        let start = basis.len();
        basis.extend(out.directions);
        blocks.push(start..basis.len());
        if c.refine_steps > 0 {
            let (steps, fit) =
                refine::gauss_newton(backend, source, &pilot, &frame, &mut basis, c)?;
            samples_used += steps.len() as u64 * n;
            refine.extend(steps);
            fit_of_basis = fit;
        }
    }
    let raw_basis = if whitening.map.is_none() {
        basis.clone()
    } else {
        whitening.raw_span(&basis)
    };
    Ok(SubspaceReport {
        input_dim: d,
        basis: raw_basis,
        frame_basis: basis,
        whitening: (whitening.rows > 0).then(|| whitening.clone()),
        rounds,
        refine,
        samples_used,
        rows: n,
        null_margin: c.null_margin,
        min_filter_rows: filtered::min_filter_rows(c, d),
        method: Method::Filtered,
        stopped: None,
    })
}

/// Moves the pilot's rows (raw x minus `from`, or raw x) to raw x minus `to`, rounding the
/// centre to f32 as the passes do.
fn recentre_pilot(pilot: &mut Pilot, d: usize, to: &[f64], from: Option<&[f64]>) {
    let shift: Vec<f64> = match from {
        Some(f) => to.iter().zip(f).map(|(t, f)| t - f).collect(),
        None => to.to_vec(),
    };
    if shift.iter().all(|&v| v == 0.0) {
        return;
    }
    for x in pilot.x.chunks_exact_mut(d) {
        for (v, s) in x.iter_mut().zip(&shift) {
            *v -= s;
        }
    }
}

/// Equal-mass cell edges per axis: for each axis's values, the `b - 1` inner quantiles
/// j / b (j = 1 .. b - 1) of those values.
pub(super) fn equal_mass_edges(z: &[Vec<f64>], b: usize) -> Vec<Vec<f64>> {
    z.iter()
        .map(|zs| {
            let mut s = zs.clone();
            s.sort_by(|p, q| p.total_cmp(q));
            (1..b)
                .map(|j| quantile_sorted(&s, j as f64 / b as f64))
                .collect()
        })
        .collect()
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
        x: Vec::new(),
        y: Vec::with_capacity(want),
    };
    // A typed error, not an abort, when the pilot's f64 copy does not fit.
    crate::safety::reserve(
        &mut pilot.x,
        want.saturating_mul(d),
        &format!("{}: the {want} pilot rows of d = {d}", source.describe()),
        "reduce the dimension first",
    )?;
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
