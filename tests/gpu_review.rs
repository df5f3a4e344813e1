//! One test per finding of the GPU kernel review (docs/gpu-review.md) that a software adapter
//! can show: two devices in one process, and f32 sums past their range.

mod common;

use relu_fpt::backend::gpu::{generate_on_device, GpuBackend, GpuError};
use relu_fpt::backend::{Backend, CandidateBatch, ProjectedSamples};
use relu_fpt::data::{GaussianSource, MemorySource};
use relu_fpt::moments::{BinSpec, SampleWeight};
use relu_fpt::network::{Layer, Network};
use relu_fpt::search::reference_evaluate;
use relu_fpt::teacher::{build, TeacherKind, TeacherSpec};
use relu_fpt::Error;

fn hidden() -> indicatif::ProgressBar {
    indicatif::ProgressBar::hidden()
}

/// Deterministic values in [-1, 1).
fn wave(i: usize, k: f64) -> f32 {
    ((i as f64 * k).sin() * 0.999) as f32
}

fn case() -> (ProjectedSamples, CandidateBatch) {
    let (n, rank) = (3_001, 2);
    let z: Vec<f32> = (0..n * rank).map(|i| 2.0 * wave(i, 0.7)).collect();
    let y: Vec<f32> = (0..n)
        .map(|i| z[2 * i].max(0.0) - 0.3 * z[2 * i + 1])
        .collect();
    let mut batch = CandidateBatch {
        inputs: rank,
        hidden: vec![3],
        params: Vec::new(),
    };
    let per = batch.params_per_candidate();
    batch.params = (0..per * 5).map(|i| wave(i, 1.3)).collect();
    (ProjectedSamples { rank, z, y }, batch)
}

/// Launchers used to keep compiled pipelines in process-wide tables keyed by `wgpu::Device`,
/// whose equality compares an index that repeats across instances: the second device opened
/// in a process got the first one's pipelines (a panic on lavapipe, undefined on hardware).
/// Each device now holds its own. Two backends, used in turn, both give the reference's
/// numbers.
#[test]
fn two_devices_in_one_process_keep_their_own_pipelines() {
    let a = GpuBackend::new(true).expect("adapter");
    let b = GpuBackend::new(true).expect("adapter");
    let (samples, batch) = case();
    let want = reference_evaluate(&samples, &batch).expect("reference");
    let mut spec = TeacherSpec::new(TeacherKind::Random, 9);
    spec.seed = 2;
    let teacher = build(&spec).unwrap().network;
    let source = GaussianSource::new(teacher, 5_000, 3, 0.0).unwrap();
    for gpu in [&a, &b, &a, &b] {
        let got = gpu.evaluate_candidates(&samples, &batch).expect("evaluate");
        for (g, w) in got.sse.iter().zip(&want.sse) {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "sse {g} vs {w}");
        }
        let (x, _) = generate_on_device(gpu.context(), &source, 100, 50)
            .expect("generate")
            .expect("a teacher source");
        assert_eq!(x.len(), 50 * 9);
    }
}

fn overflow(e: Error) -> String {
    match e {
        Error::Gpu(GpuError::Overflow(m)) => m,
        other => panic!("want an overflow error, got {other}"),
    }
}

/// The device sums in f32 (largest 3.4e38); labels of 1e20 weighted by y^2 overflowed to inf
/// and the pass returned infinite moments without a word (so did the CPU backend, whose
/// micro-kernel multiplies in f32). Every readback of device sums is now checked: a non-finite
/// sum is a typed error naming the fix (and the CPU pass says the same).
#[test]
fn sums_past_the_f32_range_are_a_typed_error() {
    let gpu = common::gpu();
    let (n, d) = (2_000, 3);
    let x: Vec<f32> = (0..n * d).map(|i| wave(i, 0.37)).collect();
    let y: Vec<f32> = (0..n).map(|i| 1e20 * (1.0 + wave(i, 0.11))).collect();
    let src = MemorySource { dim: d, x, y };
    let spec = BinSpec::single(d);
    let e = gpu
        .moments(&src, &spec, SampleWeight::LabelSquared, &hidden())
        .expect_err("f32 overflow");
    let msg = overflow(e);
    assert!(msg.contains("--backend cpu"), "{msg}");
    let cpu = common::cpu().moments(&src, &spec, SampleWeight::LabelSquared, &hidden());
    assert!(
        matches!(&cpu, Err(Error::InvalidRequest(m)) if m.contains("rescale")),
        "the CPU backend says so too: {:?}",
        cpu.map(|m| m.sum_xx[0])
    );
    // The same labels with weight 1 stay in range.
    gpu.moments(&src, &spec, SampleWeight::Unit, &hidden())
        .expect("unit weights are fine");
    // Fit moments: the residual's square (1e40) overflows too.
    let fit = Network::new(1, vec![Layer::new(1, 1, vec![1.0], vec![0.0]).unwrap()]).unwrap();
    let basis = vec![vec![1.0, 0.0, 0.0]];
    let e = gpu
        .fit_moments(&src, &basis, &fit, &hidden())
        .expect_err("f32 overflow");
    overflow(e);
}
