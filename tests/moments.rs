//! Backend-generic tests of the binned filtered moments: every case is written once against
//! `&dyn Backend` and instantiated for the CPU (`cpu_*`) and the GPU (`gpu_*`) backends. Both are
//! held to `reference_moments`, the f64 twin.

mod common;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use relu_fpt::backend::Backend;
use relu_fpt::data::MemorySource;
use relu_fpt::moments::{reference_moments, BinSpec, SampleWeight};

/// Relative tolerance against the f64 reference (f32 runs of <= 4096 rows, f64 across runs).
const TOLERANCE: f64 = 1e-5;

/// Samples must keep this far from every z and y edge (see `nudge_off_edges`).
const EDGE_MARGIN: f64 = 1e-4;

fn normal_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n * d)
        .map(|_| {
            let z: f64 = rng.sample(StandardNormal);
            z as f32
        })
        .collect()
}

/// Orthonormal r x d basis (row-major) from Gram-Schmidt on seeded normals, in f64.
fn orthonormal_basis(r: usize, d: usize, seed: u64) -> Vec<f64> {
    let raw: Vec<f64> = normal_rows(r, d, seed).iter().map(|&v| v as f64).collect();
    let mut basis: Vec<f64> = Vec::with_capacity(r * d);
    for i in 0..r {
        let mut v = raw[i * d..(i + 1) * d].to_vec();
        for _ in 0..2 {
            for j in 0..i {
                let u = &basis[j * d..(j + 1) * d];
                let p: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= p * b);
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        basis.extend(v.iter().map(|a| a / norm));
    }
    basis
}

fn project(basis: &[f64], d: usize, row: &[f32]) -> Vec<f64> {
    basis
        .chunks_exact(d)
        .map(|b| b.iter().zip(row).map(|(a, v)| a * *v as f64).sum())
        .collect()
}

fn near_any(edges: &[f64], v: f64) -> bool {
    edges.iter().any(|e| (v - e).abs() < EDGE_MARGIN)
}

/// A backend may compute z = B^T x in f32 and the label comparison after an f32 round trip, so
/// a sample within ~1e-6 of an edge can land in a neighbouring bin and the test would measure
/// that (legitimate) disagreement rather than the sums. So every sample whose z or y lies
/// within EDGE_MARGIN of an edge is redrawn until it is clear of all edges.
fn nudge_off_edges(source: &mut MemorySource, spec: &BinSpec, seed: u64) {
    let d = source.dim;
    let r = spec.rank();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    for i in 0..source.y.len() {
        for _attempt in 0..1000 {
            let row = &source.x[i * d..(i + 1) * d];
            let z = project(&spec.basis, d, row);
            let z_bad = (0..r).any(|j| near_any(&spec.axis_edges[j], z[j]));
            let y = source.y[i] as f64;
            let y_bad = spec.y_edges.iter().any(|e| near_any(e, y));
            if !z_bad && !y_bad {
                break;
            }
            if z_bad {
                for v in &mut source.x[i * d..(i + 1) * d] {
                    let e: f64 = rng.sample(StandardNormal);
                    *v = e as f32;
                }
            }
            let e: f64 = rng.sample(StandardNormal);
            source.y[i] = label(&source.x[i * d..(i + 1) * d]) + 0.01 * e as f32;
        }
    }
}

fn label(row: &[f32]) -> f32 {
    let g = |j: usize| row.get(j).copied().unwrap_or(0.0);
    (g(0) - 0.5 * g(1)).max(0.0) + 0.3 * g(row.len() - 1)
}

fn source(n: usize, d: usize, seed: u64) -> MemorySource {
    let x = normal_rows(n, d, seed);
    let y = x.chunks_exact(d).map(label).collect();
    MemorySource { dim: d, x, y }
}

/// A spec with rank r, `per_axis` cells per axis and `y_bins` bins per cell. The y edges are
/// shifted per cell, and the last cell's edges are pushed beyond every label so that some bins
/// stay empty.
fn spec(d: usize, r: usize, per_axis: usize, y_bins: usize, seed: u64) -> BinSpec {
    let basis = orthonormal_basis(r, d, seed);
    let axis: Vec<f64> = (1..per_axis)
        .map(|j| -1.0 + 2.0 * j as f64 / per_axis as f64)
        .collect();
    let cells = if r == 0 { 1 } else { per_axis.pow(r as u32) };
    let y_edges = (0..cells)
        .map(|c| {
            let shift = if c + 1 == cells && cells > 1 {
                100.0
            } else {
                0.05 * c as f64
            };
            (1..y_bins)
                .map(|j| shift - 0.5 + 1.5 * j as f64 / y_bins as f64)
                .collect()
        })
        .collect();
    BinSpec {
        dim: d,
        basis,
        axis_edges: if r == 0 { Vec::new() } else { vec![axis; r] },
        y_edges,
    }
}

/// One agreement case: backend vs reference_moments.
fn check_agreement(
    backend: &dyn Backend,
    n: usize,
    d: usize,
    spec: BinSpec,
    weight: SampleWeight,
    seed: u64,
) -> Vec<u64> {
    let mut data = source(n, d, seed);
    nudge_off_edges(&mut data, &spec, seed + 1);
    let want = reference_moments(&data, &spec, weight).expect("reference");
    let progress = indicatif::ProgressBar::hidden();
    let got = backend
        .moments(&data, &spec, weight, &progress)
        .expect("backend moments");
    assert_eq!((got.dim, got.bins), (d, spec.bins()));
    assert_eq!(got.count, want.count, "bin counts differ");
    let rel = got.relative_difference(&want);
    assert!(
        rel <= TOLERANCE,
        "{}: d = {d}, n = {n}, K = {}, {weight:?}: relative difference {rel:e}",
        backend.kind(),
        spec.bins()
    );
    assert_eq!(progress.position(), n as u64, "progress counts every row");
    got.count
}

fn unit_weights_across_dimensions(backend: &dyn Backend) {
    // n d^2 stays <= ~1e8 per case (GPU tests run on a software rasteriser).
    for (d, n) in [
        (1, 9001),
        (3, 9001),
        (17, 10007),
        (64, 5003),
        (129, 3001),
        (300, 1031),
    ] {
        let counts = check_agreement(
            backend,
            n,
            d,
            BinSpec::single(d),
            SampleWeight::Unit,
            d as u64,
        );
        assert_eq!(counts, vec![n as u64]);
    }
}

fn many_bins_with_empty_ones(backend: &dyn Backend) {
    // K = 64: rank 3, 2 cells per axis, 8 y-bins; the last cell's y-bins but the first are empty.
    let s = spec(20, 3, 2, 8, 7);
    assert_eq!(s.bins(), 64);
    let counts = check_agreement(backend, 12289, 20, s, SampleWeight::Unit, 11);
    let empty = counts.iter().filter(|&&c| c == 0).count();
    assert!((7..32).contains(&empty), "{empty} empty bins of 64");
}

fn seven_label_bins(backend: &dyn Backend) {
    // K = 7, r = 0: label bins only; runs longer than 4096 rows per bin.
    let s = spec(33, 0, 1, 7, 3);
    assert_eq!(s.bins(), 7);
    let counts = check_agreement(backend, 20011, 33, s, SampleWeight::Label, 5);
    assert!(
        counts.iter().any(|&c| c > 4096),
        "a bin longer than one f32 run"
    );
}

fn rank_one_label_squared(backend: &dyn Backend) {
    // r = 1, 3 cells, 2 y-bins: K = 6.
    let s = spec(45, 1, 3, 2, 13);
    check_agreement(backend, 7777, 45, s, SampleWeight::LabelSquared, 17);
}

fn rank_three_label_weights(backend: &dyn Backend) {
    // r = 3, 2 cells per axis, 1 y-bin (the last cell's y list is empty): K = 8.
    let s = spec(64, 3, 2, 1, 19);
    check_agreement(backend, 6001, 64, s, SampleWeight::Label, 23);
}

fn empty_source(backend: &dyn Backend) {
    let data = MemorySource {
        dim: 5,
        x: Vec::new(),
        y: Vec::new(),
    };
    let spec = spec(5, 1, 2, 2, 1);
    let m = backend
        .moments(
            &data,
            &spec,
            SampleWeight::Unit,
            &indicatif::ProgressBar::hidden(),
        )
        .expect("no rows is a valid (empty) pass");
    assert_eq!(m.total_count(), 0);
    assert!(m.sum_xx.iter().all(|v| *v == 0.0));
}

fn bad_requests_are_errors(backend: &dyn Backend) {
    let data = source(100, 8, 1);
    let pb = indicatif::ProgressBar::hidden();
    // K = 0: with no y-edge list at all there are no bins (cells and y-bins are otherwise >= 1).
    let mut zero_bins = spec(8, 1, 2, 2, 1);
    zero_bins.y_edges.clear();
    zero_bins.axis_edges = vec![Vec::new()];
    zero_bins.basis = orthonormal_basis(1, 8, 1);
    assert!(backend
        .moments(&data, &zero_bins, SampleWeight::Unit, &pb)
        .is_err());
    // Basis rows not orthonormal.
    let mut skew = spec(8, 2, 2, 1, 1);
    skew.basis[0] += 0.5;
    assert!(backend
        .moments(&data, &skew, SampleWeight::Unit, &pb)
        .is_err());
    // d mismatch between the samples and the spec.
    let wrong_d = BinSpec::single(9);
    let err = backend
        .moments(&data, &wrong_d, SampleWeight::Unit, &pb)
        .expect_err("d mismatch must be an error");
    assert!(err.to_string().contains("d = 8"), "{err}");
}

/// Instantiates each case for both backends: `case => cpu_name, gpu_name`.
macro_rules! for_backends {
    ($($case:ident => $cpu:ident, $gpu:ident;)*) => {
        $(
            #[test]
            fn $cpu() {
                $case(common::cpu());
            }
            #[test]
            fn $gpu() {
                $case(common::gpu());
            }
        )*
    };
}

for_backends! {
    unit_weights_across_dimensions => cpu_unit_weights_across_dimensions, gpu_unit_weights_across_dimensions;
    many_bins_with_empty_ones => cpu_many_bins_with_empty_ones, gpu_many_bins_with_empty_ones;
    seven_label_bins => cpu_seven_label_bins, gpu_seven_label_bins;
    rank_one_label_squared => cpu_rank_one_label_squared, gpu_rank_one_label_squared;
    rank_three_label_weights => cpu_rank_three_label_weights, gpu_rank_three_label_weights;
    empty_source => cpu_empty_source, gpu_empty_source;
    bad_requests_are_errors => cpu_bad_requests_are_errors, gpu_bad_requests_are_errors;
}

/// A network on `r` inputs with biases: `hidden` ReLU widths, seeded normal weights.
fn small_network(r: usize, hidden: &[usize], seed: u64) -> relu_fpt::network::Network {
    use relu_fpt::network::{Layer, Network};
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut layers = Vec::new();
    let mut inputs = r;
    for &outputs in hidden.iter().chain(&[1]) {
        let mut draw = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| rng.sample::<f64, _>(StandardNormal) / (inputs as f64).sqrt())
                .collect()
        };
        let weights = draw(inputs * outputs);
        let bias = draw(outputs);
        layers.push(Layer::new(inputs, outputs, weights, bias).unwrap());
        inputs = outputs;
    }
    Network::new(r, layers).unwrap()
}

/// The Gauss-Newton sums of each backend against the f64 twin, for one- and two-hidden-layer
/// fits, several ranks, and N not a multiple of any block.
fn check_fit_moments(backend: &dyn Backend, tolerance: f64) {
    use relu_fpt::moments::reference_fit_moments;
    let (n, d) = (5_003, 37);
    let x = normal_rows(n, d, 21);
    let y: Vec<f32> = normal_rows(n, 1, 22);
    let source = MemorySource { dim: d, x, y };
    for (r, hidden) in [(1, vec![5]), (3, vec![40]), (8, vec![6, 7])] {
        let flat = orthonormal_basis(r, d, 23 + r as u64);
        let basis: Vec<Vec<f64>> = flat.chunks_exact(d).map(|b| b.to_vec()).collect();
        let fit = small_network(r, &hidden, 24);
        let bar = indicatif::ProgressBar::hidden();
        let got = backend.fit_moments(&source, &basis, &fit, &bar).unwrap();
        let want = reference_fit_moments(&source, &basis, &fit).unwrap();
        assert_eq!(got.rows, n as u64);
        let rel = |a: &[f64], b: &[f64]| {
            let num: f64 = a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum();
            (num / b.iter().map(|q| q * q).sum::<f64>()).sqrt()
        };
        assert!(rel(&got.cross, &want.cross) < tolerance, "r = {r}: cross");
        assert!(rel(&got.gram, &want.gram) < tolerance, "r = {r}: gram");
        assert!(rel(&[got.sse], &[want.sse]) < tolerance, "r = {r}: sse");
    }
    // A fit on the wrong number of inputs is a typed error, not a panic.
    let basis = vec![vec![1.0 / (d as f64).sqrt(); d]];
    let fit = small_network(2, &[3], 25);
    let bar = indicatif::ProgressBar::hidden();
    assert!(backend.fit_moments(&source, &basis, &fit, &bar).is_err());
}

#[test]
fn cpu_fit_moments_match_the_f64_twin() {
    check_fit_moments(common::cpu(), 1e-12);
}
