//! The CPU moments on each micro-kernel (AVX-512, AVX2/FMA, portable) held to the f64 twin
//! `reference_moments` on awkward shapes, and the same bits whatever the thread count.
//! (tests/moments.rs runs the backend-generic cases on the default kernel.)

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use relu_fpt::backend::cpu::moments::{moments_with_kernel, Isa, MomentKernel, RUN_ROWS};
use relu_fpt::data::MemorySource;
use relu_fpt::moments::{reference_moments, BinSpec, FilteredMoments, SampleWeight};

/// Relative tolerance against the f64 reference: f32 sums over runs of at most RUN_ROWS rows
/// (error ~ sqrt(run) x 6e-8 ~ 4e-6 worst case, ~1e-7 typical), f64 across runs.
const TOLERANCE: f64 = 1e-5;

fn source(n: usize, d: usize, seed: u64) -> MemorySource {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * d)
        .map(|_| {
            let z: f64 = rng.sample(StandardNormal);
            z as f32
        })
        .collect();
    let y = x
        .chunks_exact(d)
        .map(|r| (r[0] - 0.5 * r[d / 2]).max(0.0) + 0.3 * r[d - 1])
        .collect();
    MemorySource { dim: d, x, y }
}

/// Cells on the first two coordinate axes (z = x_0, x_1 exactly, whatever the summation order,
/// so every backend bins exactly as the reference), `y_bins` label bins per cell; the last
/// cell's label edges lie above every label, so its upper bins stay empty.
fn axis_spec(d: usize, per_axis: usize, y_bins: usize) -> BinSpec {
    let mut basis = vec![0.0; 2 * d];
    basis[0] = 1.0;
    basis[d + 1] = 1.0;
    let axis: Vec<f64> = (1..per_axis)
        .map(|j| -1.0 + 2.0 * j as f64 / per_axis as f64)
        .collect();
    let cells = per_axis * per_axis;
    let y_edges = (0..cells)
        .map(|c| {
            let shift = if c + 1 == cells { 100.0 } else { 0.0 };
            (1..y_bins)
                .map(|j| shift - 0.3 + j as f64 / y_bins as f64)
                .collect()
        })
        .collect();
    BinSpec {
        dim: d,
        basis,
        axis_edges: vec![axis; 2],
        y_edges,
    }
}

fn run(
    kernel: MomentKernel,
    data: &MemorySource,
    spec: &BinSpec,
    weight: SampleWeight,
) -> FilteredMoments {
    let progress = indicatif::ProgressBar::hidden();
    let m = moments_with_kernel(data, spec, weight, kernel, &progress).expect("moments");
    assert_eq!(
        progress.position(),
        data.y.len() as u64,
        "progress counts rows"
    );
    m
}

fn check(
    kernel: MomentKernel,
    n: usize,
    d: usize,
    spec: BinSpec,
    weight: SampleWeight,
) -> Vec<u64> {
    let data = source(n, d, (n * 31 + d) as u64);
    let want = reference_moments(&data, &spec, weight).expect("reference");
    let got = run(kernel, &data, &spec, weight);
    assert_eq!((got.dim, got.bins), (d, spec.bins()));
    assert_eq!(got.count, want.count, "{kernel:?}: bin counts differ");
    let rel = got.relative_difference(&want);
    assert!(
        rel <= TOLERANCE,
        "{kernel:?}: n = {n}, d = {d}, K = {}, {weight:?}: relative difference {rel:e}",
        spec.bins()
    );
    got.count
}

/// Every shape on one kernel: d not a multiple of any tile (and below one tile), K = 1 and
/// K > 1 with empty bins, rows not a multiple of the run length, unit and label weights.
fn all_shapes(kernel: MomentKernel) {
    let runs = 2 * RUN_ROWS + 123;
    for d in [1, 7, 33, 130] {
        check(kernel, runs, d, BinSpec::single(d), SampleWeight::Unit);
    }
    check(kernel, 5003, 45, BinSpec::single(45), SampleWeight::Label);
    // K = 3 x 3 cells x 4 label bins = 36, three of them empty.
    let counts = check(kernel, runs, 37, axis_spec(37, 3, 4), SampleWeight::Label);
    assert_eq!(counts.iter().filter(|&&c| c == 0).count(), 3, "{counts:?}");
    assert!(counts.iter().any(|&c| c > 0));
    // K = 2 label bins on a wide d: few bins, so each bin's output rows are split into groups;
    // one bin longer than a run.
    let spec = BinSpec::label_bins(70, vec![0.2]);
    let counts = check(kernel, runs, 70, spec, SampleWeight::LabelSquared);
    assert!(counts.iter().any(|&c| c as usize > RUN_ROWS), "{counts:?}");
}

/// Runs `all_shapes` when the CPU has the kernel; says so when it does not.
fn on_kernel(kernel: MomentKernel, isa: Isa) {
    if !isa.available() {
        println!("skipped: this CPU lacks {} (kernel {kernel:?})", isa.name());
        return;
    }
    assert_eq!(kernel.resolve().expect("available"), isa);
    all_shapes(kernel);
}

#[test]
fn avx512_kernel_matches_reference() {
    on_kernel(MomentKernel::Avx512, Isa::Avx512);
}

#[test]
fn avx2_kernel_matches_reference() {
    on_kernel(MomentKernel::Avx2, Isa::Avx2);
}

#[test]
fn portable_kernel_matches_reference() {
    on_kernel(MomentKernel::Portable, Isa::Portable);
}

/// Same bits with 1, 2 and 3 threads: K = 1 over several partitions, and K = 2 where the
/// split of each bin's output rows follows the thread count.
#[test]
fn same_bits_whatever_the_thread_count() {
    let d = 70;
    let data = source(9 * RUN_ROWS / 2 + 7, d, 5);
    let specs = [BinSpec::single(d), BinSpec::label_bins(d, vec![0.2])];
    let kernel = MomentKernel::Auto;
    for spec in &specs {
        let with = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool")
                .install(|| run(kernel, &data, spec, SampleWeight::Label))
        };
        let one = with(1);
        assert_eq!(one, with(2), "K = {}: 1 vs 2 threads", spec.bins());
        assert_eq!(one, with(3), "K = {}: 1 vs 3 threads", spec.bins());
    }
}

/// RELU_FPT_CPU_KERNEL picks the kernel behind `Auto`; a wrong value is a clear error. (The
/// only test in this binary that reads the variable: the others name their kernel.)
#[test]
fn kernel_from_the_environment() {
    let data = source(1000, 19, 3);
    let spec = BinSpec::single(19);
    let pb = indicatif::ProgressBar::hidden();
    std::env::set_var("RELU_FPT_CPU_KERNEL", "bogus");
    let err = moments_with_kernel(&data, &spec, SampleWeight::Unit, MomentKernel::Auto, &pb)
        .expect_err("a bogus kernel name is an error");
    assert!(
        err.to_string().contains("RELU_FPT_CPU_KERNEL=bogus") && err.to_string().contains("avx2"),
        "{err}"
    );
    std::env::set_var("RELU_FPT_CPU_KERNEL", "Portable");
    let from_env = run(MomentKernel::Auto, &data, &spec, SampleWeight::Unit);
    std::env::remove_var("RELU_FPT_CPU_KERNEL");
    let portable = run(MomentKernel::Portable, &data, &spec, SampleWeight::Unit);
    assert_eq!(
        from_env, portable,
        "the variable selects the portable kernel"
    );
    assert_eq!(MomentKernel::Auto.resolve().expect("best"), Isa::best());
}

/// A dense rank-2 basis (two orthogonal +-1/sqrt(d) rows, so z sums every coordinate) and rows
/// moved onto its cell edges up to f32 rounding: the vectorised z (and the |x| that sets its
/// tolerance band) must give exactly the reference's bins on every kernel.
#[test]
fn rows_near_dense_basis_edges_fall_in_the_reference_bins() {
    let d = 64;
    let s = 1.0 / (d as f64).sqrt();
    let mut basis = vec![0.0; 2 * d];
    for j in 0..d {
        basis[j] = if j % 2 == 0 { s } else { -s };
        basis[d + j] = if (j / 2) % 2 == 0 { s } else { -s };
    }
    let edges = vec![-0.5, 0.0, 0.5];
    let spec = BinSpec {
        dim: d,
        basis: basis.clone(),
        axis_edges: vec![edges.clone(); 2],
        y_edges: vec![vec![0.1]; 16],
    };
    let mut data = source(3000, d, 7);
    for (i, row) in data.x.chunks_exact_mut(d).enumerate() {
        // Two rows in three onto an edge of the first axis, one in three of both.
        for axis in 0..(i % 3).min(2) {
            let b = &basis[axis * d..(axis + 1) * d];
            let e = edges[i % edges.len()];
            let z: f64 = b.iter().zip(row.iter()).map(|(a, &v)| a * v as f64).sum();
            for (v, a) in row.iter_mut().zip(b) {
                *v = (*v as f64 - (z - e) * a) as f32;
            }
        }
    }
    let want = reference_moments(&data, &spec, SampleWeight::Unit).expect("reference");
    for (kernel, isa) in [
        (MomentKernel::Avx512, Isa::Avx512),
        (MomentKernel::Avx2, Isa::Avx2),
        (MomentKernel::Portable, Isa::Portable),
    ] {
        if !isa.available() {
            println!("skipped: this CPU lacks {}", isa.name());
            continue;
        }
        let got = run(kernel, &data, &spec, SampleWeight::Unit);
        assert_eq!(got.count, want.count, "{kernel:?}: bin counts differ");
        let rel = got.relative_difference(&want);
        assert!(rel <= TOLERANCE, "{kernel:?}: relative difference {rel:e}");
    }
}
