//! GPU kernels against their f64 CPU twins, on whatever adapter is present (lavapipe in CI).
//! lavapipe is slow: every case keeps n * d^2 around 1e8 or less.

mod common;

use common::{CountingSource, Rng};

use relu_fpt::backend::gpu::{
    smoke_kernel, smoke_test, smoke_twin, FitKernelParams, GpuError, MomentKernelParams,
};
use relu_fpt::backend::Backend;
use relu_fpt::data::MemorySource;
use relu_fpt::moments::{
    reference_fit_moments, reference_moments, BinSpec, FilteredMoments, FitMoments, SampleWeight,
};
use relu_fpt::network::{Layer, Network};
use relu_fpt::Error;

/// r orthonormal rows of length d (Gram-Schmidt on Gaussian rows).
fn orthonormal_rows(rng: &mut Rng, r: usize, d: usize) -> Vec<f64> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    while rows.len() < r {
        let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        for q in &rows {
            let dot: f64 = q.iter().zip(&v).map(|(a, b)| a * b).sum();
            for (vi, qi) in v.iter_mut().zip(q) {
                *vi -= dot * qi;
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-3 {
            rows.push(v.iter().map(|a| a / norm).collect());
        }
    }
    rows.concat()
}

/// A spec with `r` basis rows, `axis` edges per axis and `y_edges` per cell. The y edges of
/// every cell are the given ones plus a cell-dependent shift, and two of them sit far above
/// any label, so some bins stay empty.
fn spec(rng: &mut Rng, d: usize, r: usize, axis: &[f64], y_edges: &[f64]) -> BinSpec {
    let basis = orthonormal_rows(rng, r, d);
    let axis_edges = vec![axis.to_vec(); r];
    let cells = if r == 0 {
        1
    } else {
        (axis.len() + 1).pow(r as u32)
    };
    let y_edges = (0..cells)
        .map(|c| y_edges.iter().map(|e| e + 0.01 * c as f64).collect())
        .collect();
    let s = BinSpec {
        dim: d,
        basis,
        axis_edges,
        y_edges,
    };
    s.validate().expect("test spec is valid");
    s
}

/// N Gaussian samples with a nonlinear label. Bins must agree with the twin's exactly, samples
/// near an edge included (`samples_on_edges_fall_in_the_same_bins_on_every_backend` puts them
/// on the edges on purpose).
fn samples(rng: &mut Rng, spec: &BinSpec, n: usize) -> MemorySource {
    let d = spec.dim;
    let (mut x, mut y) = (Vec::with_capacity(n * d), Vec::with_capacity(n));
    for _ in 0..n {
        let start = x.len();
        x.extend((0..d).map(|_| rng.normal() as f32));
        let row = &x[start..];
        let label = (row[0] as f64 + 0.5 * row[d - 1] as f64 * row[d / 2] as f64).abs() - 0.6
            + 0.3 * rng.normal();
        y.push(label as f32);
    }
    MemorySource { dim: d, x, y }
}

fn hidden() -> indicatif::ProgressBar {
    indicatif::ProgressBar::hidden()
}

fn check(src: &MemorySource, spec: &BinSpec, weight: SampleWeight, got: &FilteredMoments) {
    let want = reference_moments(src, spec, weight).expect("twin runs");
    assert_eq!(got.count, want.count, "per-bin counts differ");
    let diff = got.relative_difference(&want);
    assert!(
        diff < 1e-5,
        "relative difference {diff:.3e} (d = {}, K = {})",
        spec.dim,
        spec.bins()
    );
}

fn run_case(
    seed: u64,
    d: usize,
    n: usize,
    r: usize,
    axis: &[f64],
    y_edges: &[f64],
    w: SampleWeight,
) {
    let mut rng = Rng(seed);
    let spec = spec(&mut rng, d, r, axis, y_edges);
    let src = samples(&mut rng, &spec, n);
    let bar = indicatif::ProgressBar::hidden();
    let got = common::gpu()
        .moments(&src, &spec, w, &bar)
        .expect("GPU moments");
    assert_eq!(bar.position(), n as u64, "progress counts rows");
    check(&src, &spec, w, &got);
}

#[test]
fn smoke_matches_twin() {
    let err = smoke_test(common::gpu().context()).expect("smoke kernel runs");
    assert!(err < 1e-5, "smoke max abs error {err:.3e}");
    let x = [0.0f32, 1.0, -2.5, 1e3];
    let got = smoke_kernel(common::gpu().context(), 2.0, 1.0, &x).expect("runs");
    let want = smoke_twin(2.0, 1.0, &x);
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-3, "{g} vs {w}");
    }
}

const Y7: [f64; 6] = [-0.4, -0.1, 0.2, 0.5, 50.0, 60.0];

#[test]
fn moments_d1_label_bins_unit() {
    // K = 7 (r = 0), two empty top bins.
    run_case(1, 1, 10_007, 0, &[], &Y7, SampleWeight::Unit);
}

#[test]
fn moments_d3_r1_k64_label_weight() {
    // 4 cells x 16 y-bins = 64, edges beyond the labels leave bins empty.
    let y15: Vec<f64> = (0..15).map(|i| -0.8 + 0.2 * i as f64).collect();
    run_case(
        2,
        3,
        20_011,
        1,
        &[-0.7, 0.0, 0.7],
        &y15,
        SampleWeight::Label,
    );
}

#[test]
fn moments_d17_r3_k64_label_squared() {
    // 4^3 = 64 cells, one y-bin each.
    run_case(
        3,
        17,
        9_001,
        3,
        &[-0.7, 0.0, 0.7],
        &[],
        SampleWeight::LabelSquared,
    );
}

#[test]
fn moments_d64_single_bin_fast_path() {
    run_case(4, 64, 8_193, 0, &[], &[], SampleWeight::Unit);
}

#[test]
fn moments_d129_r1_label_weight() {
    run_case(
        5,
        129,
        3_001,
        1,
        &[0.3],
        &[-0.2, 0.4, 70.0],
        SampleWeight::Label,
    );
}

#[test]
fn moments_d300_r3_unit() {
    run_case(6, 300, 1_201, 3, &[0.1], &[], SampleWeight::Unit);
}

#[test]
fn moments_small_batches_and_groups() {
    // Forces many batches, pieces and dispatch groups on a small problem.
    let mut rng = Rng(7);
    let spec = spec(&mut rng, 5, 1, &[-0.3, 0.4], &Y7);
    let src = samples(&mut rng, &spec, 12_345);
    // Bins sorted on the device and on the host; 309 batches of 40 rows carry the device's
    // per-piece label sums past the 256 batches it keeps before the host adds them up.
    for (device_binning, max_batch_rows) in [(true, 4_001), (false, 4_001), (true, 40)] {
        let params = MomentKernelParams {
            workgroup_side: 8,
            per_invocation: 4,
            slab: 8,
            chunk: 512,
            max_pieces_per_group: 3,
            max_batch_rows,
            device_binning,
        };
        let got = common::gpu()
            .moments_with(&src, &spec, SampleWeight::LabelSquared, &params, &hidden())
            .expect("GPU moments");
        check(&src, &spec, SampleWeight::LabelSquared, &got);
    }
}

/// Discrete data: most rows exactly on an axis edge. The device bins such rows as computed and
/// lists them for the host's f64 recheck; past the list's 4,096 rows the pass bins on the host
/// instead. Either way every bin is the reference's.
#[test]
fn rows_on_an_edge_beyond_the_near_edge_list_fall_back_to_the_host() {
    let mut rng = Rng(31);
    let d = 8;
    for (n, on_edge) in [(3_000, 2_000), (7_000, 6_000)] {
        let mut x = Vec::with_capacity(n * d);
        for i in 0..n {
            for j in 0..d {
                let v = rng.normal() as f32;
                x.push(if j == 0 && i < on_edge { 0.25 } else { v });
            }
        }
        let y = (0..n).map(|i| x[i * d + 1] + 0.1 * x[i * d]).collect();
        let src = MemorySource { dim: d, x, y };
        let mut basis = vec![0.0; d];
        basis[0] = 1.0;
        let spec = BinSpec {
            dim: d,
            basis,
            axis_edges: vec![vec![0.25]],
            y_edges: vec![vec![0.0]; 2],
        };
        spec.validate().expect("valid spec");
        let got = common::gpu()
            .moments(&src, &spec, SampleWeight::Label, &hidden())
            .expect("GPU moments");
        check(&src, &spec, SampleWeight::Label, &got);
    }
}

#[test]
fn loop_budget_canary() {
    // One bin of 70,001 samples: a kernel looping over a workgroup's samples naively would run
    // past lavapipe's 65,535 iterations per invocation and silently truncate.
    run_case(8, 4, 70_001, 0, &[], &[], SampleWeight::Label);
}

#[test]
fn streamed_data_beyond_one_binding() {
    // 1.09M x 31 f32 = 135 MB of x, more than lavapipe's 128 MiB binding, so the data is
    // streamed in batches. d = 31 (augmented 32 = one tile) keeps the device work affordable.
    let mut rng = Rng(9);
    let spec = BinSpec::single(31);
    let src = samples(&mut rng, &spec, 1_090_001);
    assert!(src.x.len() * 4 > 128 << 20);
    let got = common::gpu()
        .moments(&src, &spec, SampleWeight::Unit, &hidden())
        .expect("GPU moments");
    check(&src, &spec, SampleWeight::Unit, &got);
}

#[test]
fn bad_requests_give_typed_errors() {
    let gpu = common::gpu();
    let src = MemorySource {
        dim: 3,
        x: vec![0.5; 30],
        y: vec![1.0; 10],
    };
    // Dimension mismatch between samples and spec.
    let e = gpu
        .moments(&src, &BinSpec::single(4), SampleWeight::Unit, &hidden())
        .unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    // Unsorted y edges.
    let bad = BinSpec::label_bins(3, vec![1.0, 0.0]);
    let e = gpu
        .moments(&src, &bad, SampleWeight::Unit, &hidden())
        .unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    // d far beyond what one binding holds.
    let big = MemorySource {
        dim: 40_000,
        x: vec![0.0; 40_000],
        y: vec![0.0],
    };
    let e = gpu
        .moments(
            &big,
            &BinSpec::single(40_000),
            SampleWeight::Unit,
            &hidden(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Gpu(GpuError::TooLarge(_))), "{e}");
    // Kernel parameters out of range.
    let params = MomentKernelParams {
        chunk: 100_000,
        ..Default::default()
    };
    let e = gpu
        .moments_with(
            &src,
            &BinSpec::single(3),
            SampleWeight::Unit,
            &params,
            &hidden(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Gpu(GpuError::Kernel(_))), "{e}");
}

#[test]
fn resident_samples_are_not_read_again() {
    // Its own backend: the residency setting must not leak into tests sharing common::gpu().
    let gpu = own_gpu();
    let mut rng = Rng(10);
    let spec = spec(&mut rng, 6, 1, &[0.2], &Y7);
    let src = CountingSource::new(samples(&mut rng, &spec, 5_003), "counting a");
    gpu.set_resident_budget(64 << 20);
    let first = gpu
        .moments(&src, &spec, SampleWeight::Label, &hidden())
        .expect("first pass");
    let after_first = src.reads();
    assert!(after_first > 0);
    let second = gpu
        .moments(&src, &spec, SampleWeight::Label, &hidden())
        .expect("second pass");
    assert_eq!(src.reads(), after_first, "the resident copy is used");
    check(&src.inner, &spec, SampleWeight::Label, &first);
    check(&src.inner, &spec, SampleWeight::Label, &second);
    // The fit-moments pass reads the same copy.
    let basis = vec![orthonormal_rows(&mut rng, 1, 6)];
    let fit = network(&mut rng, 1, &[4]);
    let got = gpu
        .fit_moments(&src, &basis, &fit, &hidden())
        .expect("fit moments");
    assert_eq!(
        src.reads(),
        after_first,
        "fit moments reads the resident copy"
    );
    check_fit(&src.inner, &basis, &fit, &got);
    // Batches smaller than the copy's: streamed in 6 batches, and kept in that form.
    let params = MomentKernelParams {
        max_batch_rows: 1_000,
        ..MomentKernelParams::for_dim(6)
    };
    let before = src.reads();
    for _ in 0..2 {
        let got = gpu
            .moments_with(&src, &spec, SampleWeight::Unit, &params, &hidden())
            .expect("batched pass");
        check(&src.inner, &spec, SampleWeight::Unit, &got);
    }
    assert_eq!(
        src.reads(),
        before + 6,
        "6 batches read once, then resident"
    );
    gpu.set_resident_budget(0);
    gpu.moments(&src, &spec, SampleWeight::Label, &hidden())
        .expect("third pass");
    assert!(
        src.reads() > before + 6,
        "residency off reads the source again"
    );
}

#[test]
fn two_sources_of_one_shape_keep_their_own_copies() {
    // Same N, d and description, different rows: a cache keyed by shape or description would
    // hand the second source the first one's data. Both stay resident (the budget holds both).
    let gpu = own_gpu();
    gpu.set_resident_budget(64 << 20);
    let mut rng = Rng(26);
    let spec = spec(&mut rng, 5, 1, &[0.0], &[-0.1, 0.4]);
    let a = CountingSource::new(samples(&mut rng, &spec, 3_001), "same shape a");
    let b = CountingSource::new(samples(&mut rng, &spec, 3_001), "same shape b");
    assert_ne!(a.inner, b.inner);
    for round in 0..3 {
        for src in [&a, &b] {
            let got = gpu
                .moments(src, &spec, SampleWeight::Unit, &hidden())
                .expect("moments");
            check(&src.inner, &spec, SampleWeight::Unit, &got);
            assert_eq!(src.reads(), 1, "round {round}: each source read once");
        }
    }
    let (hits, builds) = gpu.resident().counters();
    assert_eq!((hits, builds), (4, 2));
    // Two in-memory sources of one shape name nothing: never kept, always right.
    let (c, d) = (
        samples(&mut rng, &spec, 2_000),
        samples(&mut rng, &spec, 2_000),
    );
    for src in [&c, &d, &c] {
        let got = gpu
            .moments(src, &spec, SampleWeight::Unit, &hidden())
            .expect("moments");
        check(src, &spec, SampleWeight::Unit, &got);
    }
    assert_eq!(gpu.resident().counters(), (4, 2));
}

/// A source whose reads fail.
struct FailingSource;

impl relu_fpt::data::SampleSource for FailingSource {
    fn dim(&self) -> usize {
        2
    }
    fn len(&self) -> u64 {
        100
    }
    fn read(
        &self,
        _: u64,
        _: usize,
        _: &mut Vec<f32>,
        _: &mut Vec<f32>,
    ) -> relu_fpt::Result<usize> {
        Err(Error::invalid("disk on fire"))
    }
    fn describe(&self) -> String {
        "failing test source".into()
    }
}

#[test]
fn read_errors_are_passed_on() {
    let e = common::gpu()
        .moments(
            &FailingSource,
            &BinSpec::single(2),
            SampleWeight::Unit,
            &hidden(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("disk on fire"), "{e}");
}

#[test]
fn empty_source_gives_zero_moments() {
    let src = MemorySource {
        dim: 4,
        x: Vec::new(),
        y: Vec::new(),
    };
    let spec = BinSpec::label_bins(4, vec![0.0, 1.0]);
    let got = common::gpu()
        .moments(&src, &spec, SampleWeight::Unit, &hidden())
        .expect("empty pass");
    assert_eq!(got, FilteredMoments::zeros(4, 3));
}

/// A ReLU network on r inputs with the given hidden widths, weights scaled by 1 / sqrt(fan-in).
fn network(rng: &mut Rng, r: usize, hidden: &[usize]) -> Network {
    let mut layers = Vec::new();
    let mut width = r;
    for &out in hidden.iter().chain(&[1]) {
        let scale = 1.0 / (width as f64).sqrt();
        let weights = (0..out * width).map(|_| scale * rng.normal()).collect();
        let bias = (0..out).map(|_| 0.3 * rng.normal()).collect();
        layers.push(Layer::new(width, out, weights, bias).expect("layer"));
        width = out;
    }
    Network::new(r, layers).expect("network")
}

/// Gaussian x with labels that depend on directions outside a random basis, the basis, and a
/// random fit on it.
fn fit_case(
    seed: u64,
    n: usize,
    d: usize,
    r: usize,
    hidden: &[usize],
) -> (MemorySource, Vec<Vec<f64>>, Network) {
    let mut rng = Rng(seed);
    let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
    let y = x
        .chunks_exact(d)
        .map(|row| (row[0] - 0.5 * row[1]).max(0.0) + 0.3 * row[d - 1])
        .collect();
    let basis = orthonormal_rows(&mut rng, r, d)
        .chunks_exact(d)
        .map(|b| b.to_vec())
        .collect();
    let fit = network(&mut rng, r, hidden);
    (MemorySource { dim: d, x, y }, basis, fit)
}

/// GPU fit moments against the CPU pass (src/moments.rs, f64 per sample): relative Frobenius
/// difference of cross, gram and sse within 1e-5 (tests/moments.rs `FIT_TOLERANCE` says why).
fn check_fit(src: &MemorySource, basis: &[Vec<f64>], fit: &Network, got: &FitMoments) {
    let want = reference_fit_moments(src, basis, fit).expect("f64 twin runs");
    assert_eq!(got.rows, want.rows);
    let rel = |a: &[f64], b: &[f64]| {
        let num: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
        (num / b.iter().map(|q| q * q).sum::<f64>()).sqrt()
    };
    let errs = [
        rel(&got.cross, &want.cross),
        rel(&got.gram, &want.gram),
        rel(&[got.sse], &[want.sse]),
    ];
    assert!(
        errs.iter().all(|e| *e < 1e-5),
        "relative errors (cross, gram, sse) {errs:?}"
    );
}

#[test]
fn fit_moments_stream_batches_and_short_chunks() {
    // Tunables that force many batches (2,999 rows), chunks (192 samples) and blocks (64, two
    // samples per invocation) with ragged ends; then the hardware defaults, whose loops fit
    // lavapipe's real budget at this size (~2,000 iterations: the rank loops unroll). Each for a
    // one-hidden-layer fit and a three-hidden-layer one (the deep backward loop runs twice).
    let streaming = FitKernelParams {
        workgroup_size: 32,
        block: 64,
        chunk: 192,
        max_batch_rows: 2_999,
        loop_budget: Some(30_000),
    };
    let hardware = FitKernelParams {
        workgroup_size: 64,
        block: 128,
        chunk: 1024,
        max_batch_rows: 1 << 20,
        loop_budget: None,
    };
    for params in [streaming, hardware] {
        for (seed, widths) in [(11, vec![48]), (12, vec![16, 8, 8])] {
            let (src, basis, fit) = fit_case(seed, 10_001, 23, 4, &widths);
            let bar = hidden();
            let got = common::gpu()
                .fit_moments_with(&src, &basis, &fit, &params, &bar)
                .expect("GPU fit moments");
            assert_eq!(bar.position(), 10_001, "progress counts rows");
            check_fit(&src, &basis, &fit, &got);
        }
    }
}

#[test]
fn fit_moments_limits_give_typed_errors() {
    let gpu = common::gpu();
    let (src, basis, fit) = fit_case(13, 100, 61, 8, &[200]);
    let defaults = FitKernelParams::for_context(gpu.context());
    // A fit on fewer inputs than the basis has rows.
    let (src9, basis9, _) = fit_case(14, 10, 12, 9, &[5]);
    let e = gpu
        .fit_moments(&src9, &basis9, &fit, &hidden())
        .unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("a fit on 8 inputs"), "{e}");
    // Tunables out of range: a block that is not a multiple of the workgroup size.
    let bad = FitKernelParams {
        block: defaults.workgroup_size + 1,
        ..defaults
    };
    let e = gpu
        .fit_moments_with(&src, &basis, &fit, &bad, &hidden())
        .unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    // A block whose z, g and e do not fit the workgroup memory (16,384 x 17 x 4 bytes).
    let huge = FitKernelParams {
        block: 16_384,
        chunk: 16_384,
        ..defaults
    };
    let e = gpu
        .fit_moments_with(&src, &basis, &fit, &huge, &hidden())
        .unwrap_err();
    assert!(matches!(e, Error::Gpu(GpuError::TooLarge(_))), "{e}");
    // One block over the loop budget (as lavapipe's would be at large d).
    let tight = FitKernelParams {
        loop_budget: Some(1_000),
        ..defaults
    };
    let e = gpu
        .fit_moments_with(&src, &basis, &fit, &tight, &hidden())
        .unwrap_err();
    assert!(matches!(e, Error::Gpu(GpuError::TooLarge(_))), "{e}");
    assert!(e.to_string().contains("loop iterations"), "{e}");
}

#[test]
fn fit_moments_read_errors_are_passed_on() {
    let mut rng = Rng(15);
    let basis = vec![orthonormal_rows(&mut rng, 1, 2)];
    let fit = network(&mut rng, 1, &[3]);
    let e = common::gpu()
        .fit_moments(&FailingSource, &basis, &fit, &hidden())
        .unwrap_err();
    assert!(e.to_string().contains("disk on fire"), "{e}");
}

#[test]
fn fit_moments_loop_budget_canary() {
    // A 1,200-unit hidden layer: a 4,096-sample chunk loops ~80,000 times per invocation, past
    // lavapipe's silent 65,535 cap (measured: uncapped, sse came out 31 % low). The launcher
    // must shorten the chunk on software adapters.
    let (src, basis, fit) = fit_case(16, 8_192, 61, 8, &[1200]);
    let got = common::gpu()
        .fit_moments(&src, &basis, &fit, &hidden())
        .expect("GPU fit moments");
    check_fit(&src, &basis, &fit, &got);
}

#[test]
fn fit_moments_any_rank() {
    // Ranks past one register group of 8 columns (12: a ragged second group; 16: two whole
    // groups; 20 with a deep fit: three groups), against the f64 twin.
    for (seed, r, widths) in [(17, 12, vec![24]), (18, 16, vec![10]), (19, 20, vec![6, 5])] {
        let (src, basis, fit) = fit_case(seed, 3_001, 40, r, &widths);
        let got = common::gpu()
            .fit_moments(&src, &basis, &fit, &hidden())
            .expect("GPU fit moments");
        check_fit(&src, &basis, &fit, &got);
    }
    // The defaults for a rank shrink the block to the adapter's workgroup memory.
    let ctx = common::gpu().context();
    let room = ctx.limits.max_compute_workgroup_storage_size as u64;
    let p = FitKernelParams::for_rank(ctx, 200);
    assert!(p.block as u64 * (2 * 200 + 1) * 4 <= room, "{p:?}");
}

/// A backend of its own (wait bounds and device state must not leak into other tests).
fn own_gpu() -> relu_fpt::backend::gpu::GpuBackend {
    relu_fpt::backend::gpu::GpuBackend::new(true).expect("adapter")
}

/// A forward pass of about 3e8 flops in one dispatch (about a second on lavapipe): the wait that
/// follows its submission is the first one. (lavapipe runs submissions in order and a second
/// submission can block until the first is done, so the heavy work must be the last one.)
fn heavy_predict_case() -> (Network, Vec<f32>, usize) {
    let mut rng = Rng(20);
    let net = network(&mut rng, 256, &[192, 192]);
    let rows = 2_000;
    let x: Vec<f32> = (0..rows * 256).map(|_| rng.normal() as f32).collect();
    (net, x, rows)
}

#[test]
fn a_wait_past_its_bound_is_a_typed_timeout() {
    let gpu = own_gpu();
    let policy = relu_fpt::backend::gpu::WaitPolicy {
        fixed_seconds: Some(1e-6),
        ..gpu.context().wait_policy()
    };
    gpu.set_wait_policy(policy);
    let (net, x, rows) = heavy_predict_case();
    let e = gpu.predict(&net, &x, rows).unwrap_err();
    assert!(matches!(e, Error::Gpu(GpuError::Timeout(_))), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("did not finish") && msg.contains(relu_fpt::backend::gpu::WAIT_SECONDS_ENV),
        "{msg}"
    );
    // The default bound is generous: a pass completes (after the work left behind above).
    let mut policy = gpu.context().wait_policy();
    policy.fixed_seconds = None;
    gpu.set_wait_policy(policy);
    let mut rng = Rng(27);
    let spec = BinSpec::single(16);
    let src = samples(&mut rng, &spec, 5_000);
    let got = gpu
        .moments(&src, &spec, SampleWeight::Unit, &hidden())
        .expect("a generous bound lets the pass finish");
    check(&src, &spec, SampleWeight::Unit, &got);
}

#[test]
fn cli_timeout_exits_1_with_one_line_and_no_output() {
    let (net, x, rows) = heavy_predict_case();
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model.json");
    let x_path = dir.path().join("x.npy");
    let out_path = dir.path().join("pred.npy");
    net.save(&model).expect("model written");
    relu_fpt::data::write_npy_f32(&x_path, &[rows, 256], &x).expect("x written");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
        .arg("predict")
        .arg("--model")
        .arg(&model)
        .arg("--x")
        .arg(&x_path)
        .arg("--out")
        .arg(&out_path)
        .args(["--backend", "gpu"])
        .env(relu_fpt::backend::gpu::WAIT_SECONDS_ENV, "0.000001")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("GPU timed out"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), 2, "only the inputs remain: {left:?}");
}

#[test]
fn a_lost_device_is_a_typed_error() {
    let gpu = own_gpu();
    gpu.context().device.destroy();
    let mut rng = Rng(21);
    let spec = BinSpec::single(8);
    let src = samples(&mut rng, &spec, 1_000);
    let e = gpu
        .moments(&src, &spec, SampleWeight::Unit, &hidden())
        .unwrap_err();
    assert!(matches!(e, Error::Gpu(GpuError::DeviceLost(_))), "{e}");
}

#[test]
fn dispatches_split_under_a_small_work_limit() {
    // A work limit of 1e5 flops per dispatch forces one piece per moments group, one chunk
    // per fit batch, the smallest evaluation and forward dispatches; the sums must not change.
    let gpu = own_gpu();
    let policy = relu_fpt::backend::gpu::WaitPolicy {
        max_dispatch_flops: 1e5,
        ..gpu.context().wait_policy()
    };
    gpu.set_wait_policy(policy);
    let mut rng = Rng(22);
    let spec = spec(&mut rng, 9, 1, &[0.1], &[-0.2, 0.3]);
    let src = samples(&mut rng, &spec, 6_007);
    let params = MomentKernelParams {
        chunk: 512,
        ..MomentKernelParams::for_dim(9)
    };
    let got = gpu
        .moments_with(&src, &spec, SampleWeight::Label, &params, &hidden())
        .expect("moments");
    check(&src, &spec, SampleWeight::Label, &got);
    let (src, basis, fit) = fit_case(23, 2_001, 11, 3, &[7]);
    let got = gpu
        .fit_moments(&src, &basis, &fit, &hidden())
        .expect("fit moments");
    check_fit(&src, &basis, &fit, &got);
    let x: Vec<f32> = (0..300 * 11).map(|_| rng.normal() as f32).collect();
    let net = network(&mut rng, 11, &[6, 4]);
    let pred = gpu.predict(&net, &x, 300).expect("predict");
    let want = net.forward_f64(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), 300);
    for (p, w) in pred.iter().zip(&want) {
        assert!((*p as f64 - w).abs() < 1e-4 * (1.0 + w.abs()), "{p} vs {w}");
    }
}

/// f32 samples on and near the edges of a spec, so that z in f32 (device) and in f64 (host)
/// straddle an edge unless the binning arithmetic agrees: for every axis edge, rows moved onto
/// it (x + (e - z) b, rounded to f32, so z lies within ~1e-7 of e) and one row whose f64 z is
/// then taken as an extra edge exactly; labels equal to y edges, and y edges between f32
/// values (0.1) with labels at the f32 nearest to them.
fn edge_case(seed: u64, d: usize) -> (MemorySource, BinSpec) {
    let mut rng = Rng(seed);
    let basis = orthonormal_rows(&mut rng, 2, d);
    let z_of = |x: &[f32], j: usize| -> f64 {
        basis[j * d..(j + 1) * d]
            .iter()
            .zip(x)
            .map(|(a, &b)| a * b as f64)
            .sum()
    };
    let mut axis: Vec<Vec<f64>> = vec![vec![-0.5, 0.25], vec![-0.25, 0.5]];
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let labels = [0.1f32, -0.3, 0.7, 0.1, 1.0 / 3.0];
    for i in 0..4_000 {
        let j = i % 2;
        let e = axis[j][(i / 2) % 2];
        let mut row: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        let xr: Vec<f32> = row.iter().map(|&v| v as f32).collect();
        let shift = e - z_of(&xr, j);
        for (v, b) in row.iter_mut().zip(&basis[j * d..(j + 1) * d]) {
            *v += shift * b;
        }
        x.extend(row.iter().map(|&v| v as f32));
        y.push(labels[i % labels.len()]);
    }
    // Exactly on an edge in the host's arithmetic: the f64 z of the first row of each axis.
    for (j, edges) in axis.iter_mut().enumerate() {
        let z = z_of(&x[j * d..(j + 1) * d], j);
        edges.push(z);
        edges.sort_by(f64::total_cmp);
    }
    let y_edges = vec![-0.3, 0.1, 1.0 / 3.0];
    let cells = 4 * 4; // 3 edges a axis, 2 axes
    let spec = BinSpec {
        dim: d,
        basis,
        axis_edges: axis,
        y_edges: vec![y_edges; cells],
    };
    spec.validate().expect("valid spec");
    (MemorySource { dim: d, x, y }, spec)
}

#[test]
fn samples_on_edges_fall_in_the_same_bins_on_every_backend() {
    for (seed, d) in [(24, 7), (25, 200)] {
        let (src, spec) = edge_case(seed, d);
        let want = reference_moments(&src, &spec, SampleWeight::Unit).expect("twin");
        for backend in common::backends() {
            let got = backend
                .moments(&src, &spec, SampleWeight::Unit, &hidden())
                .expect("moments");
            assert_eq!(got.count, want.count, "{} backend, d = {d}", backend.kind());
            assert!(got.relative_difference(&want) < 1e-5, "{}", backend.kind());
        }
        // Resident data (the rows to re-check are then read back from the device).
        let gpu = own_gpu();
        gpu.set_resident_budget(64 << 20);
        for _ in 0..2 {
            let got = gpu
                .moments(&src, &spec, SampleWeight::Unit, &hidden())
                .expect("moments");
            assert_eq!(got.count, want.count, "resident, d = {d}");
        }
    }
}
