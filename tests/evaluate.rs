//! Batched candidate evaluation: the CPU backend and the GPU kernel (lavapipe in CI) against the
//! f64 reference, for several ranks, architectures and candidate counts, with N not a multiple
//! of any chunk length.

mod common;

use rand::{RngExt, SeedableRng};
use relu_fpt::backend::{Backend, CandidateBatch, CandidateStats, ProjectedSamples};
use relu_fpt::search::reference_evaluate;

fn samples(n: usize, rank: usize, seed: u64) -> ProjectedSamples {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let z: Vec<f32> = (0..n * rank)
        .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    let y: Vec<f32> = (0..n)
        .map(|i| z[i * rank].max(0.0) - 0.5 * z[i * rank + rank - 1] + 0.1)
        .collect();
    ProjectedSamples { rank, z, y }
}

fn batch(rank: usize, hidden: &[usize], count: usize, seed: u64) -> CandidateBatch {
    let mut b = CandidateBatch {
        inputs: rank,
        hidden: hidden.to_vec(),
        params: Vec::new(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let total = b.params_per_candidate() * count;
    b.params = (0..total).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    b
}

/// Largest relative difference, each entry against the scale of its kind of statistic.
fn assert_close(got: &CandidateStats, want: &CandidateStats, tol: f64, what: &str) {
    assert_eq!(got.feature_dim, want.feature_dim, "{what}: feature dim");
    assert_eq!(got.sse.len(), want.sse.len(), "{what}: candidate count");
    assert_eq!(got.gram.len(), want.gram.len(), "{what}: gram length");
    assert_eq!(
        got.feature_y.len(),
        want.feature_y.len(),
        "{what}: Phi^T y length"
    );
    for (name, g, w) in [
        ("sse", &got.sse, &want.sse),
        ("gram", &got.gram, &want.gram),
        ("feature_y", &got.feature_y, &want.feature_y),
    ] {
        let scale = w.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (a - b).abs() <= tol * scale,
                "{what}: {name}[{i}] = {a}, reference {b} (scale {scale})"
            );
        }
    }
}

const CASES: &[(usize, &[usize], usize, usize)] = &[
    // (rank, hidden widths, candidates, samples)
    (1, &[3], 5, 301),
    (2, &[], 3, 257),
    (3, &[4, 3], 70, 413),
    (4, &[16], 33, 1001),
    (8, &[5, 6, 2], 9, 777),
    // Ranks past 8: the rank is a runtime size.
    (12, &[6], 4, 301),
    (16, &[], 3, 517),
    (16, &[16, 4], 5, 403),
    (21, &[9, 9, 9, 9, 9, 9, 9, 9, 9, 3], 2, 97),
];

#[test]
fn cpu_matches_reference() {
    for (i, &(rank, hidden, count, n)) in CASES.iter().enumerate() {
        let s = samples(n, rank, i as u64);
        let b = batch(rank, hidden, count, 100 + i as u64);
        let want = reference_evaluate(&s, &b).unwrap();
        let got = common::cpu().evaluate_candidates(&s, &b).unwrap();
        assert_close(&got, &want, 1e-12, &format!("cpu case {i}"));
    }
}

#[test]
fn gpu_matches_reference() {
    for (i, &(rank, hidden, count, n)) in CASES.iter().enumerate() {
        let s = samples(n, rank, i as u64);
        let b = batch(rank, hidden, count, 100 + i as u64);
        let want = reference_evaluate(&s, &b).unwrap();
        let got = common::gpu().evaluate_candidates(&s, &b).unwrap();
        assert_close(&got, &want, 2e-5, &format!("gpu case {i}"));
    }
}

#[test]
fn gpu_handles_wide_layers_within_the_loop_budget() {
    // Width 64 makes per-sample work large, so the software adapter must shorten chunks.
    let s = samples(333, 2, 7);
    let b = batch(2, &[64, 8], 3, 8);
    let want = reference_evaluate(&s, &b).unwrap();
    let got = common::gpu().evaluate_candidates(&s, &b).unwrap();
    assert_close(&got, &want, 2e-5, "gpu wide");
}

#[test]
fn bad_inputs_are_errors() {
    let s = samples(10, 3, 1);
    let wrong_rank = batch(2, &[3], 2, 1);
    let mut ragged = batch(3, &[3], 2, 1);
    ragged.params.pop();
    // A last layer of 200 units: 20,503 statistics per candidate, past what the kernel holds.
    let too_wide = batch(3, &[200], 1, 1);
    for backend in common::backends() {
        assert!(backend.evaluate_candidates(&s, &wrong_rank).is_err());
        assert!(backend.evaluate_candidates(&s, &ragged).is_err());
    }
    let e = common::gpu()
        .evaluate_candidates(&s, &too_wide)
        .unwrap_err();
    assert!(
        matches!(
            e,
            relu_fpt::Error::Gpu(relu_fpt::backend::gpu::GpuError::TooLarge(_))
        ),
        "{e}"
    );
    assert!(common::cpu().evaluate_candidates(&s, &too_wide).is_ok());
}

#[test]
fn gpu_streams_candidates_and_sample_blocks() {
    use relu_fpt::backend::gpu::{evaluate_candidates_with, EvaluateKernelParams};
    let ctx = common::gpu().context();
    // Tiles of 4 samples, chunks of 16, 3 chunks and 7 candidates per dispatch, workgroups of
    // 8 invocations (4 statistics each of the 28): N = 203 ends in a ragged tile and chunk.
    let params = EvaluateKernelParams {
        workgroup_size: 8,
        samples_per_tile: 4,
        chunk_len: 16,
        max_chunks_per_dispatch: 3,
        max_candidates_per_dispatch: 7,
        ..EvaluateKernelParams::for_context(ctx)
    };
    let s = samples(203, 3, 11);
    let b = batch(3, &[5], 20, 12);
    let want = reference_evaluate(&s, &b).unwrap();
    let got = evaluate_candidates_with(ctx, &s, &b, &params).unwrap();
    assert_close(&got, &want, 2e-5, "gpu streamed");
    // A last hidden layer of 13: 120 statistics, 15 per invocation of 8: all but one of the
    // kernel's 16 register slots hold statistics.
    let b = batch(3, &[13], 4, 13);
    let want = reference_evaluate(&s, &b).unwrap();
    let got = evaluate_candidates_with(ctx, &s, &b, &params).unwrap();
    assert_close(&got, &want, 2e-5, "gpu, 15 register slots");
    // A chunk that is not a whole number of tiles is refused.
    let ragged = EvaluateKernelParams {
        chunk_len: 18,
        ..params
    };
    assert!(evaluate_candidates_with(ctx, &s, &b, &ragged).is_err());
}
