//! The classical baselines pHd, SIR and SAVE, from the same accumulators as filtered PCA.

use super::report::{NoStructure, Refinement, RoundKind, RoundReport, SubspaceReport};
use super::{
    orthonormalise, quantile_sorted, read_pilot, sorted_by_magnitude, symmetric_eigen, Method,
    SubspaceConfig,
};
use crate::backend::Backend;
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::moments::{BinSpec, FilteredMoments, SampleWeight};
use nalgebra::DMatrix;

pub(super) fn baseline(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    c: &SubspaceConfig,
) -> Result<SubspaceReport> {
    let d = source.dim();
    let n = source.len();
    let k = c.dim.unwrap_or(1).min(d);
    let started = std::time::Instant::now();
    // Constant labels make pHd's matrix zero and leave SIR's and SAVE's slices empty: their
    // top eigenvectors would be arbitrary axes, so there is nothing to return.
    let pilot = read_pilot(source, c.pilot_rows)?;
    if let Some(none) = NoStructure::if_constant(&pilot.y, n, d) {
        return Err(Error::NoStructure(Box::new(none)));
    }
    let bar = crate::progress::bar(n, "round 1");
    let (matrix, pilot_rows) = match c.method {
        Method::Phd => {
            let m = backend.moments(source, &BinSpec::single(d), SampleWeight::Label, &bar)?;
            let unit = backend.moments(source, &BinSpec::single(d), SampleWeight::Unit, &bar)?;
            let total = m.total_count() as f64;
            let mean_y = m.sum_y[0] / total;
            let sigma = unit.second_moment(0..1) / total;
            // E[(y - mean y) x x^T] = E[y x x^T] - mean(y) Sigma_hat.
            (m.second_moment(0..1) / total - sigma * mean_y, n)
        }
        _ => {
            let mut ys = pilot.y.clone();
            ys.sort_by(|a, b| a.total_cmp(b));
            let edges: Vec<f64> = (1..c.slices)
                .map(|s| quantile_sorted(&ys, s as f64 / c.slices as f64))
                .collect();
            let m = backend.moments(
                source,
                &BinSpec::label_bins(d, edges),
                SampleWeight::Unit,
                &bar,
            )?;
            (slice_matrix(&m, c.method), pilot.y.len() as u64)
        }
    };
    bar.finish_and_clear();
    let passes = if c.method == Method::Phd { 2 } else { 1 };
    let gamma = d as f64 / n as f64;
    let null_edge = 2.0 * gamma.sqrt() + gamma;
    let pairs = sorted_by_magnitude(&symmetric_eigen(matrix));
    let basis = orthonormalise(
        &pairs
            .iter()
            .take(k)
            .map(|(_, v)| v.iter().copied().collect())
            .collect::<Vec<_>>(),
    );
    let scores = pairs
        .iter()
        .take(k)
        .map(|p| p.0.abs() / null_edge)
        .collect();
    let basis: Vec<Vec<f64>> = basis;
    let seconds = started.elapsed().as_secs_f64();
    crate::progress::stage_done(&format!("subspace {}", c.method.name()), || {
        vec![
            format!("{k} directions"),
            format!("{} rows", crate::progress::count(n)),
            crate::progress::seconds(seconds),
        ]
    });
    Ok(SubspaceReport {
        input_dim: d,
        frame_basis: basis.clone(),
        basis,
        whitening: None,
        rounds: vec![RoundReport {
            kind: RoundKind::Label,
            accepted: k,
            scores,
            top_eigenvalues: pairs.iter().take(8).map(|p| p.0.abs()).collect(),
            null_edge,
            best_score: pairs.first().map_or(0.0, |p| p.0.abs() / null_edge),
            best_mean_score: f64::NAN,
            null_max: f64::NAN,
            null_max_mean: f64::NAN,
            threshold: f64::NAN,
            threshold_mean: f64::NAN,
            filters: 0,
            cell_axes: 0,
            cells: 1,
            cells_per_axis: 1,
            cell_coverage: 1.0,
            bins: 0,
            accumulator_bytes: 0,
            candidates: 0,
            seconds,
            pass_seconds: f64::NAN,
            host_seconds: f64::NAN,
            refinement: Refinement::default(),
        }],
        refine: Vec::new(),
        samples_used: n * passes
            + if c.method == Method::Phd {
                0
            } else {
                pilot_rows
            },
        rows: n,
        null_margin: f64::NAN,
        min_filter_rows: 0,
        method: c.method,
        stopped: None,
    })
}

/// SIR: sum_s p_s m_s m_s^T; SAVE: sum_s p_s (Cov(x | s) - Sigma_hat)^2 (slices = bins).
fn slice_matrix(m: &FilteredMoments, method: Method) -> DMatrix<f64> {
    let d = m.dim;
    let total = m.total_count() as f64;
    let sigma = m.second_moment(0..m.bins) / total;
    let mu = m.first_moment(0..m.bins) / total;
    let mut out = DMatrix::zeros(d, d);
    for s in 0..m.bins {
        let ns = m.count[s] as f64;
        if ns < 2.0 {
            continue;
        }
        let p = ns / total;
        let raw_mean = m.first_moment(s..s + 1) / ns;
        let mean = &raw_mean - &mu;
        if method == Method::Sir {
            out += &mean * mean.transpose() * p;
        } else {
            let cov = m.second_moment(s..s + 1) / ns - &raw_mean * raw_mean.transpose() - &sigma
                + &mu * mu.transpose();
            out += &cov * &cov * p;
        }
    }
    out
}
