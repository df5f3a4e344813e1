//! Backend-generic tests of the binned filtered moments and of the fit moments: every case is
//! written once against `&dyn Backend` and instantiated for the CPU (`cpu_*`) and the GPU
//! (`gpu_*`) backends. Both are held to f64 twins: `reference_moments` and `reference_fit_moments`.

mod common;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use relu_fpt::backend::Backend;
use relu_fpt::data::MemorySource;
use relu_fpt::moments::{
    reference_fit_moments, reference_moments, BinSpec, FitMoments, SampleWeight,
};
use relu_fpt::network::{Layer, Network};
use relu_fpt::Error;

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
    // A basis row that is zero (rows need not be orthonormal, but must project).
    let mut zero_row = spec(8, 2, 2, 1, 1);
    zero_row.basis[..8].iter_mut().for_each(|v| *v = 0.0);
    assert!(backend
        .moments(&data, &zero_row, SampleWeight::Unit, &pb)
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

// Fit moments (the pass of a Gauss-Newton step on the basis), held to `reference_fit_moments`.

/// Relative tolerance of the fit moments against the f64 reference. The GPU works in f32:
/// z = B x over d <= 100 terms and the network pass each carry ~1e-7..1e-6 relative error per
/// sample, and a unit whose f32 pre-activation lands on the other side of 0 changes that
/// sample's gradient (rare: ~1e-7 per unit and sample). Sums are f32 over blocks of <= 128
/// samples and chunks of <= 4096, then f64 (WGPU-NOTES 3: ~1e-7). Measured: <= 3e-7.
const FIT_TOLERANCE: f64 = 1e-5;

/// A ReLU network on r inputs with the given hidden widths and random weights and biases
/// (scaled by 1 / sqrt(fan-in), so that activations stay O(1)).
fn random_network(r: usize, hidden: &[usize], seed: u64) -> Network {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut layers = Vec::new();
    let mut width = r;
    for &out in hidden.iter().chain(&[1]) {
        let scale = 1.0 / (width as f64).sqrt();
        let weights = (0..out * width)
            .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
            .collect();
        let bias = (0..out)
            .map(|_| 0.3 * rng.sample::<f64, _>(StandardNormal))
            .collect();
        layers.push(Layer::new(width, out, weights, bias).expect("layer"));
        width = out;
    }
    Network::new(r, layers).expect("network")
}

fn basis_rows(r: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    orthonormal_basis(r, d, seed)
        .chunks_exact(d)
        .map(|row| row.to_vec())
        .collect()
}

/// One agreement case: the backend's fit moments vs `reference_fit_moments`. Labels depend on x_0, x_1
/// and x_{d-1}, mostly outside the random basis, so `cross` carries a signal rather than noise.
fn check_fit(backend: &dyn Backend, n: usize, d: usize, r: usize, hidden: &[usize], seed: u64) {
    let data = source(n, d, seed);
    let basis = basis_rows(r, d, seed + 1);
    let fit = random_network(r, hidden, seed + 2);
    let want = reference_fit_moments(&data, &basis, &fit).expect("reference");
    let progress = indicatif::ProgressBar::hidden();
    let started = std::time::Instant::now();
    let got = backend
        .fit_moments(&data, &basis, &fit, &progress)
        .expect("backend fit moments");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!((got.dim, got.rank, got.rows), (d, r, n as u64));
    let errs = [
        rel(&got.cross, &want.cross),
        rel(&got.gram, &want.gram),
        rel(&[got.sse], &[want.sse]),
    ];
    eprintln!(
        "{} fit moments n = {n}, d = {d}, r = {r}, hidden {hidden:?}: {seconds:.3} s, relative \
         errors cross {:.1e}, gram {:.1e}, sse {:.1e}",
        backend.kind(),
        errs[0],
        errs[1],
        errs[2]
    );
    assert!(
        errs.iter().all(|e| *e <= FIT_TOLERANCE),
        "{}: relative errors (cross, gram, sse) {errs:?}",
        backend.kind()
    );
    assert_eq!(progress.position(), n as u64, "progress counts every row");
}

/// Relative Frobenius difference |a - b| / |b|.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
    let den: f64 = b.iter().map(|q| q * q).sum();
    (num / den).sqrt()
}

fn fit_rank_one_one_hidden_layer(backend: &dyn Backend) {
    check_fit(backend, 10_007, 37, 1, &[32], 31);
}

fn fit_rank_three_two_hidden_layers(backend: &dyn Backend) {
    check_fit(backend, 9_001, 45, 3, &[20, 12], 37);
}

fn fit_rank_eight_wide_hidden_layer(backend: &dyn Backend) {
    // The practical shape: one hidden layer of 200 units. N spans many chunks.
    check_fit(backend, 20_011, 61, 8, &[200], 41);
}

fn fit_rank_eight_two_hidden_layers(backend: &dyn Backend) {
    check_fit(backend, 5_003, 29, 8, &[24, 16], 43);
}

fn fit_rank_twelve(backend: &dyn Backend) {
    // Past the GPU kernel's rank 8 the GPU backend sums with the CPU pass (under MPI, each
    // rank its own rows): the backend's own answer either way.
    check_fit(backend, 3_001, 40, 12, &[16], 53);
}

fn fit_linear_network(backend: &dyn Backend) {
    // No hidden layer: h(z) = w z + b, g = w.
    check_fit(backend, 3_001, 10, 2, &[], 47);
}

fn fit_empty_source(backend: &dyn Backend) {
    let data = MemorySource {
        dim: 6,
        x: Vec::new(),
        y: Vec::new(),
    };
    let got = backend
        .fit_moments(
            &data,
            &basis_rows(2, 6, 1),
            &random_network(2, &[4], 2),
            &indicatif::ProgressBar::hidden(),
        )
        .expect("no rows is a valid (empty) pass");
    assert_eq!(got, FitMoments::zeros(6, 2));
}

fn fit_mismatched_basis_and_network(backend: &dyn Backend) {
    let data = source(50, 8, 1);
    let pb = indicatif::ProgressBar::hidden();
    let basis = basis_rows(3, 8, 2);
    // A fit on 2 inputs for a basis of rank 3.
    let e = backend
        .fit_moments(&data, &basis, &random_network(2, &[5], 3), &pb)
        .expect_err("rank mismatch must be an error");
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("a fit on 2 inputs"), "{e}");
    // Basis rows of length 9 for samples of d = 8.
    let long = basis_rows(3, 9, 2);
    let e = backend
        .fit_moments(&data, &long, &random_network(3, &[5], 3), &pb)
        .expect_err("row length mismatch must be an error");
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    // No basis at all.
    let e = backend
        .fit_moments(&data, &[], &random_network(1, &[5], 3), &pb)
        .expect_err("an empty basis must be an error");
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
}

for_backends! {
    fit_rank_one_one_hidden_layer => cpu_fit_rank_one_one_hidden_layer, gpu_fit_rank_one_one_hidden_layer;
    fit_rank_three_two_hidden_layers => cpu_fit_rank_three_two_hidden_layers, gpu_fit_rank_three_two_hidden_layers;
    fit_rank_eight_wide_hidden_layer => cpu_fit_rank_eight_wide_hidden_layer, gpu_fit_rank_eight_wide_hidden_layer;
    fit_rank_eight_two_hidden_layers => cpu_fit_rank_eight_two_hidden_layers, gpu_fit_rank_eight_two_hidden_layers;
    fit_rank_twelve => cpu_fit_rank_twelve, gpu_fit_rank_twelve;
    fit_linear_network => cpu_fit_linear_network, gpu_fit_linear_network;
    fit_empty_source => cpu_fit_empty_source, gpu_fit_empty_source;
    fit_mismatched_basis_and_network => cpu_fit_mismatched_basis_and_network, gpu_fit_mismatched_basis_and_network;
}

/// The probes behind `relu-fpt bench kernel` and `bench peak`'s read bandwidth give positive
/// figures, and the kernel bench refuses a block longer than a run.
#[test]
fn kernel_and_bandwidth_probes() {
    use relu_fpt::backend::cpu::moments::{Isa, RUN_ROWS};
    let isa = Isa::best();
    let r = relu_fpt::bench::bench_kernel(isa, 40, 64, 4096, 1).expect("bench kernel");
    assert_eq!((r.d, r.rows, r.kernel.as_str()), (40, 64, isa.name()));
    assert!(r.passes_rows * r.threads as u64 >= 4096, "{r:?}");
    assert!(r.gflops.is_finite() && r.gflops > 0.0, "{r:?}");
    assert!(relu_fpt::bench::bench_kernel(isa, 40, RUN_ROWS + 1, 4096, 1).is_err());
    let gb = relu_fpt::backend::cpu::peak::read_bandwidth(8 << 20, 1);
    assert!(gb.is_finite() && gb > 0.0, "{gb}");
}
