//! Filtered PCA rounds: the bins of a round (cells of z = B x, label quantiles and tails), the
//! scoring of every filter against the null edge, and the merge of accepted directions.

use super::report::{RoundReport, SubspaceReport};
use super::{
    complement_projector, normal_quantile, quantile_sorted, read_pilot, sorted_by_magnitude,
    symmetric_eigen, Method, Pilot, SubspaceConfig,
};
use crate::backend::Backend;
use crate::data::SampleSource;
use crate::error::Result;
use crate::moments::{BinSpec, FilteredMoments, SampleWeight};
use nalgebra::{DMatrix, DVector};
use rayon::prelude::*;

/// One filter: a union of bins (global bin indices).
struct Filter {
    bins: Vec<usize>,
}

/// Edge list of one cell and the filters it defines (bin indices local to the cell).
struct CellEdges {
    edges: Vec<f64>,
    /// Local bin sets.
    filters: Vec<Vec<usize>>,
}

/// Edge below which a value counts as "below the atom": (-ATOM_WIDTH, 0] is the atom bin.
const ATOM_WIDTH: f64 = 1e-30;

/// Builds a cell's y edges from its sorted labels: quantile edges (signed prefix / suffix
/// filters), med +- tail quantiles of |y - med| (tail filters), and the atom edges.
fn cell_edges(sorted_y: &[f64], quantiles: &[f64], tails: &[f64], atom: bool) -> CellEdges {
    let mut edges: Vec<f64> = Vec::new();
    let mut signed_edges: Vec<f64> = Vec::new();
    let mut tail_pairs: Vec<(f64, f64)> = Vec::new();
    if sorted_y.is_empty() {
        // No pilot samples in this cell: placeholder edges (every filter is empty or whole).
        edges.resize(
            quantiles.len() + 2 * tails.len() + if atom { 2 } else { 0 },
            0.0,
        );
        return CellEdges {
            edges,
            filters: Vec::new(),
        };
    }
    for &q in quantiles {
        signed_edges.push(quantile_sorted(sorted_y, q));
    }
    let med = quantile_sorted(sorted_y, 0.5);
    let mut dev: Vec<f64> = sorted_y.iter().map(|v| (v - med).abs()).collect();
    dev.sort_by(|a, b| a.total_cmp(b));
    for &q in tails {
        let a = quantile_sorted(&dev, q);
        tail_pairs.push((med - a, med + a));
    }
    edges.extend(&signed_edges);
    for &(lo, hi) in &tail_pairs {
        edges.push(lo);
        edges.push(hi);
    }
    if atom {
        signed_edges.push(-ATOM_WIDTH);
        signed_edges.push(0.0);
        edges.push(-ATOM_WIDTH);
        edges.push(0.0);
    }
    edges.sort_by(|a, b| a.total_cmp(b));
    let bins = edges.len() + 1;
    // Bin j holds (e_{j-1}, e_j]; "y <= e" = bins 0..=idx(e), "y > e" = bins idx(e)+1.. .
    let idx = |e: f64| edges.iter().rposition(|&v| v == e).unwrap_or(0);
    let mut filters = Vec::new();
    for &e in &signed_edges {
        let i = idx(e);
        filters.push((0..=i).collect());
        filters.push((i + 1..bins).collect());
    }
    for &(lo, hi) in &tail_pairs {
        let (i, j) = (idx(lo), idx(hi));
        filters.push((0..=i).chain(j + 1..bins).collect());
    }
    CellEdges { edges, filters }
}

/// The bins of one round and the filters over them.
struct RoundBins {
    spec: BinSpec,
    filters: Vec<Filter>,
    cell_axes: usize,
}

/// Chooses how many of the most recent directions to condition on: as many as `max_cell_axes`
/// allows while each cell still expects 2 * min filter size samples and the accumulators stay
/// under 1 GiB.
fn cell_axes(r: usize, n: u64, d: usize, y_bins: usize, c: &SubspaceConfig) -> usize {
    let tri = (d * (d + 1) / 2) as f64;
    let min_filter = (c.min_filter_factor * d as f64).max(1.0);
    let mut a = r.min(c.max_cell_axes);
    while a > 0 {
        let cells = (c.cells_per_axis as f64).powi(a as i32);
        let bytes = cells * y_bins as f64 * tri * 8.0;
        if n as f64 / cells >= 2.0 * min_filter && bytes <= (1u64 << 30) as f64 {
            break;
        }
        a -= 1;
    }
    a
}

fn round_bins(
    pilot: &Pilot,
    d: usize,
    basis: &[Vec<f64>],
    n: u64,
    c: &SubspaceConfig,
) -> RoundBins {
    let atom = {
        let zeros = pilot.y.iter().filter(|&&v| v == 0.0).count();
        zeros as f64 >= 0.01 * pilot.y.len() as f64
    };
    let (quantiles, tails) = if basis.is_empty() {
        (&c.round1_quantiles, &c.round1_tails)
    } else {
        (&c.cell_quantiles, &c.cell_tails)
    };
    let y_bins = quantiles.len() + 2 * tails.len() + if atom { 2 } else { 0 } + 1;
    let a = cell_axes(basis.len(), n, d, y_bins, c);
    let axes: Vec<&Vec<f64>> = basis[basis.len() - a..].iter().collect();
    let b = c.cells_per_axis;
    let axis_edge: Vec<f64> = (1..b)
        .map(|j| normal_quantile(j as f64 / b as f64))
        .collect();
    let cells = b.pow(a as u32);
    let mut spec = BinSpec {
        dim: d,
        basis: axes.iter().flat_map(|r| r.iter().copied()).collect(),
        axis_edges: vec![axis_edge; a],
        y_edges: vec![Vec::new(); cells],
    };
    // Pilot labels per cell (the cell rule of BinSpec::bin_of with one y-bin).
    let mut per_cell: Vec<Vec<f64>> = vec![Vec::new(); cells];
    {
        let probe = BinSpec {
            y_edges: vec![Vec::new(); cells],
            ..spec.clone()
        };
        for (i, &y) in pilot.y.iter().enumerate() {
            let cell = probe.bin_of(&pilot.x[i * d..(i + 1) * d], 0.0);
            per_cell[cell].push(y);
        }
    }
    let mut filters = Vec::new();
    for (cell, ys) in per_cell.iter_mut().enumerate() {
        ys.sort_by(|p, q| p.total_cmp(q));
        let ce = cell_edges(ys, quantiles, tails, atom);
        let base = cell * y_bins;
        for f in ce.filters {
            filters.push(Filter {
                bins: f.into_iter().map(|j| base + j).collect(),
            });
        }
        spec.y_edges[cell] = ce.edges;
    }
    RoundBins {
        spec,
        filters,
        cell_axes: a,
    }
}

/// One filter's result: its top score, largest |eigenvalues|, null edge, accepted
/// (score, unit direction) pairs.
struct FilterScore {
    top: f64,
    eigenvalues: Vec<f64>,
    edge: f64,
    accepted: Vec<(f64, DVector<f64>)>,
}

/// What scoring the filters of one pass gives.
struct Scan {
    /// Aggregate A = sum score^2 v v^T over accepted candidates.
    aggregate: DMatrix<f64>,
    accepted_candidates: usize,
    best_score: f64,
    best_eigenvalues: Vec<f64>,
    best_edge: f64,
    filters: usize,
}

fn scan_filters(
    moments: &FilteredMoments,
    filters: &[Filter],
    basis: &[Vec<f64>],
    c: &SubspaceConfig,
) -> Scan {
    let d = moments.dim;
    let d_perp = (d - basis.len()) as f64;
    let total = moments.total_count() as f64;
    let all = 0..moments.bins;
    let sigma = moments.second_moment(all.clone()) / total;
    let mu = moments.first_moment(all) / total;
    let p = complement_projector(d, basis);
    let min_n = (c.min_filter_factor * d as f64).max(1.0);
    let usable: Vec<&Filter> = filters
        .iter()
        .filter(|f| {
            let n: u64 = f.bins.iter().map(|&b| moments.count[b]).sum();
            n as f64 >= min_n && (n as f64) < total
        })
        .collect();
    // Two tests (matrix, mean) per filter; the union-bound term of the null edge.
    let tests = (2 * usable.len()).max(1) as f64;
    let extra = (2.0 * tests.ln()).sqrt();
    let mut scan = Scan {
        aggregate: DMatrix::zeros(d, d),
        accepted_candidates: 0,
        best_score: 0.0,
        best_eigenvalues: Vec::new(),
        best_edge: f64::NAN,
        filters: usable.len(),
    };
    // Filters are scored in parallel (eigendecompositions dominate the host time); the
    // results are combined in filter order, so the outcome does not depend on thread count.
    let scored: Vec<FilterScore> = usable
        .par_iter()
        .map(|f| {
            let n: f64 = f.bins.iter().map(|&b| moments.count[b]).sum::<u64>() as f64;
            let s = moments.second_moment(f.bins.iter().copied()) / n - &sigma;
            let m_bar = &p * (moments.first_moment(f.bins.iter().copied()) / n - &mu);
            let mat = &p * s * &p;
            let root_gamma = (d_perp.sqrt() + extra) / n.sqrt();
            let nu2 = 2.0 * root_gamma + root_gamma * root_gamma;
            let nu1 = root_gamma;
            let pairs = sorted_by_magnitude(&symmetric_eigen(mat));
            let mut accepted: Vec<(f64, DVector<f64>)> = pairs
                .iter()
                .map(|(l, v)| (l.abs() / nu2, v.clone()))
                .take_while(|(score, _)| *score >= c.acceptance)
                .collect();
            let mean_norm = m_bar.norm();
            let score = mean_norm / nu1;
            if score >= c.acceptance && mean_norm > 0.0 {
                accepted.push((score, &m_bar / mean_norm));
            }
            FilterScore {
                top: pairs.first().map_or(0.0, |p| p.0.abs() / nu2),
                eigenvalues: pairs.iter().take(8).map(|p| p.0.abs()).collect(),
                edge: nu2,
                accepted,
            }
        })
        .collect();
    for f in scored {
        if f.top > scan.best_score || scan.best_eigenvalues.is_empty() {
            scan.best_score = f.top;
            scan.best_eigenvalues = f.eigenvalues;
            scan.best_edge = f.edge;
        }
        for (score, v) in &f.accepted {
            scan.aggregate += v * v.transpose() * (score * score);
            scan.accepted_candidates += 1;
        }
    }
    scan
}

/// New directions from the aggregate: eigenvectors with eigenvalue >= merge_fraction * max,
/// at most `room`, orthonormalised against `basis`; with their scores sqrt(eigenvalue).
fn merge(
    aggregate: DMatrix<f64>,
    basis: &[Vec<f64>],
    room: usize,
    c: &SubspaceConfig,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let pairs = sorted_by_magnitude(&symmetric_eigen(aggregate));
    let top = pairs.first().map_or(0.0, |p| p.0);
    let mut out: Vec<Vec<f64>> = Vec::new();
    let mut scores = Vec::new();
    if top <= 0.0 {
        return (out, scores);
    }
    for (l, v) in pairs {
        if out.len() >= room || l < c.merge_fraction * top {
            break;
        }
        let mut w: Vec<f64> = v.iter().copied().collect();
        for b in basis.iter().chain(&out) {
            let dot: f64 = b.iter().zip(&w).map(|(p, q)| p * q).sum();
            for (wi, bi) in w.iter_mut().zip(b) {
                *wi -= dot * bi;
            }
        }
        let norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        // Section 5.2: drop a direction that is mostly inside what we already have.
        if norm < 0.5 {
            continue;
        }
        out.push(w.iter().map(|v| v / norm).collect());
        scores.push(l.sqrt());
    }
    (out, scores)
}

pub(super) fn filtered_pca(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    c: &SubspaceConfig,
) -> Result<SubspaceReport> {
    let d = source.dim();
    let n = source.len();
    let max_dim = c.dim.unwrap_or(c.max_dim).min(c.max_dim).min(d);
    let pilot = read_pilot(source, c.pilot_rows)?;
    let mut basis: Vec<Vec<f64>> = Vec::new();
    let mut rounds = Vec::new();
    let mut samples_used = pilot.y.len() as u64;
    while basis.len() < max_dim {
        let round = rounds.len() + 1;
        let started = std::time::Instant::now();
        let bins = round_bins(&pilot, d, &basis, n, c);
        let bar = crate::progress::bar(n, &format!("round {round}"));
        let moments = backend.moments(source, &bins.spec, SampleWeight::Unit, &bar)?;
        bar.finish_and_clear();
        samples_used += n;
        let scan = scan_filters(&moments, &bins.filters, &basis, c);
        let (new, scores) = merge(scan.aggregate, &basis, max_dim - basis.len(), c);
        rounds.push(RoundReport {
            accepted: new.len(),
            scores,
            top_eigenvalues: scan.best_eigenvalues,
            null_edge: scan.best_edge,
            filters: scan.filters,
            cell_axes: bins.cell_axes,
            candidates: scan.accepted_candidates,
            seconds: started.elapsed().as_secs_f64(),
        });
        if new.is_empty() {
            break;
        }
        basis.extend(new);
    }
    let mut refine = Vec::new();
    if !basis.is_empty() {
        refine = super::refine::gauss_newton(backend, source, &pilot, &mut basis, c)?;
        samples_used += refine.len() as u64 * n;
    }
    Ok(SubspaceReport {
        input_dim: d,
        basis,
        rounds,
        refine,
        samples_used,
        method: Method::Filtered,
    })
}
