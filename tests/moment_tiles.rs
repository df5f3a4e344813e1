//! The SYRK tile of the GPU moments kernel (workgroup side, outputs per invocation, samples per
//! slab) is a tunable for hardware sweeps; every setting must give the f64 twin's moments.
//! Dimensions that are not multiples of 4 or of the tile, several tiles per side, and K > 1.

mod common;

use relu_fpt::backend::gpu::MomentKernelParams;
use relu_fpt::data::MemorySource;
use relu_fpt::moments::{reference_moments, BinSpec, SampleWeight};

/// Deterministic values in [-1, 1).
fn wave(i: usize, k: f64) -> f32 {
    ((i as f64 * k).sin() * 0.999) as f32
}

fn source(n: usize, d: usize) -> MemorySource {
    let x: Vec<f32> = (0..n * d).map(|i| 1.7 * wave(i, 0.6180339)).collect();
    let y = (0..n)
        .map(|i| x[i * d].abs() - 0.5 * x[i * d + d - 1] + 0.2 * wave(i, 0.37))
        .collect();
    MemorySource { dim: d, x, y }
}

/// Two axes (x0, x1), 2 cells each, 3 label bins per cell: K = 12.
fn binned(d: usize) -> BinSpec {
    let mut basis = vec![0.0; 2 * d];
    basis[0] = 1.0;
    basis[d + 1] = 1.0;
    let s = BinSpec {
        dim: d,
        basis,
        axis_edges: vec![vec![0.05], vec![-0.1]],
        y_edges: vec![vec![-0.2, 0.4]; 4],
    };
    s.validate().expect("valid spec");
    s
}

#[test]
fn every_tile_setting_matches_the_twin() {
    let gpu = common::gpu();
    for (d, n) in [(37, 2_003), (130, 1_501)] {
        let src = source(n, d);
        for spec in [BinSpec::single(d), binned(d)] {
            for (wg, tm, bk) in [
                (8, 4, 8),
                (16, 4, 16),
                (16, 4, 8),
                (4, 8, 8),
                (8, 8, 4),
                (16, 8, 8),
                (16, 8, 16),
            ] {
                let params = MomentKernelParams {
                    workgroup_side: wg,
                    per_invocation: tm,
                    slab: bk,
                    chunk: 512,
                    ..MomentKernelParams::for_dim(d)
                };
                let got = gpu
                    .moments_with(
                        &src,
                        &spec,
                        SampleWeight::Label,
                        &params,
                        &indicatif::ProgressBar::hidden(),
                    )
                    .expect("GPU moments");
                let want = reference_moments(&src, &spec, SampleWeight::Label).expect("twin");
                assert_eq!(got.count, want.count);
                let diff = got.relative_difference(&want);
                assert!(
                    diff < 1e-5,
                    "d = {d}, K = {}, tile ({wg}, {tm}, {bk}): relative difference {diff:.3e}",
                    spec.bins()
                );
            }
        }
    }
}

#[test]
fn bad_tile_settings_are_typed_errors() {
    let src = source(100, 8);
    let spec = BinSpec::single(8);
    let bad = MomentKernelParams {
        per_invocation: 6,
        ..MomentKernelParams::for_dim(8)
    };
    let e = common::gpu()
        .moments_with(
            &src,
            &spec,
            SampleWeight::Unit,
            &bad,
            &indicatif::ProgressBar::hidden(),
        )
        .expect_err("TM = 6 is refused");
    assert!(e.to_string().contains("per_invocation"), "{e}");
}
