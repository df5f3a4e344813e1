//! The counter-based sample stream on the device against its CPU twin (src/data/philox.rs), on
//! whatever adapter is present (lavapipe in CI): the Philox words and the inputs bit for bit,
//! the labels within the f32 forward pass's rounding, and passes over a teacher's samples that
//! generate x on the device instead of uploading it.

mod common;

use relu_fpt::backend::gpu::{generate_on_device, philox_words_on_device, GpuBackend};
use relu_fpt::backend::Backend;
use relu_fpt::data::philox::{counter_of, key_of, philox4x32_10};
use relu_fpt::data::{GaussianSource, GroupColumn, SampleRange, SampleSource, Synthetic};
use relu_fpt::moments::{reference_fit_moments, reference_moments, BinSpec, SampleWeight};
use relu_fpt::network::{Layer, Network};
use relu_fpt::teacher::{build, TeacherKind, TeacherSpec};

fn teacher(kind: TeacherKind, d: usize, seed: u64) -> Network {
    let mut spec = TeacherSpec::new(kind, d);
    spec.seed = seed;
    build(&spec).expect("teacher").network
}

fn hidden() -> indicatif::ProgressBar {
    indicatif::ProgressBar::hidden()
}

/// A backend of its own, so its traffic counters see only this test's passes.
fn own_gpu() -> GpuBackend {
    GpuBackend::new(true).expect("GPU tests need an adapter")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn philox_words_on_the_device_equal_the_twin() {
    let ctx = common::gpu().context();
    // Random123's first known answer: counter 0, key 0.
    let kat = philox_words_on_device(ctx, 0, 0, 1, 0, 0).unwrap();
    assert_eq!(kat, [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    // Rows across the 2^32 boundary (the counter's carry), other groups, streams and keys.
    for (seed, first, group, stream) in [
        (0x0123_4567_89ab_cdefu64, (1u64 << 32) - 700, 3u32, 0u32),
        (7, 123_456_789, 0, 1),
        (u64::MAX, 0, 255, 0),
    ] {
        let got = philox_words_on_device(ctx, seed, first, 1_500, group, stream).unwrap();
        for (i, w) in got.chunks_exact(4).enumerate() {
            let want = philox4x32_10(counter_of(first + i as u64, group, stream), key_of(seed));
            assert_eq!(
                w,
                want,
                "seed {seed:#x} row {} group {group}",
                first + i as u64
            );
        }
    }
}

/// Largest |y_device - y_host| / (1 + |y_host|) over the rows: the device sums each label's
/// network in f32, the host in f64.
fn label_gap(device: &[f32], host: &[f32]) -> f64 {
    device
        .iter()
        .zip(host)
        .map(|(&a, &b)| (a as f64 - b as f64).abs() / (1.0 + (b as f64).abs()))
        .fold(0.0, f64::max)
}

/// Bound on [`label_gap`]: measured at most 1.9e-6 over the cases below on lavapipe (parity
/// d = 16; 5e-7 to 7e-7 for the others, residual fits and noise included), a factor of 5 above
/// that for other shapes and adapters (f32 sums of up to 16 products per unit).
const LABEL_TOLERANCE: f64 = 1e-5;

#[test]
fn teacher_rows_on_the_device_equal_the_host_rows() {
    let ctx = common::gpu().context();
    for (kind, d, noise) in [
        (TeacherKind::Random, 37, 0.3),
        (TeacherKind::Parity, 16, 0.0),
        (TeacherKind::DeepParity, 9, 0.1),
    ] {
        let source = GaussianSource::new(teacher(kind, d, 3), 12_000, 41, noise).unwrap();
        // Not aligned to anything: a start inside a row group, past 4096, odd length.
        let (start, rows) = (4_093u64, 2_501usize);
        let (xd, yd) = generate_on_device(ctx, &source, start, rows)
            .unwrap()
            .expect("a teacher source is generated on the device");
        let (mut xh, mut yh) = (Vec::new(), Vec::new());
        source.read(start, rows, &mut xh, &mut yh).unwrap();
        assert_eq!(
            bits(&xd),
            bits(&xh),
            "{kind} d = {d}: x differs from the twin"
        );
        let gap = label_gap(&yd, &yh);
        eprintln!("{kind} d = {d}: label gap {gap:.2e}");
        assert!(gap <= LABEL_TOLERANCE, "{kind}: label gap {gap:.3e}");
    }
}

#[test]
fn every_view_of_a_teacher_is_generated_as_the_host_builds_it() {
    let ctx = common::gpu().context();
    let d = 21;
    let recipe = Synthetic {
        teacher: teacher(TeacherKind::Random, d, 8),
        seed: 99,
        noise_sd: 0.2,
        first_row: (1 << 32) - 1_000,
        rows: 5_000,
        centre: Some((0..d).map(|i| 0.03 * i as f32 - 0.2).collect()),
        residual: Some(teacher(TeacherKind::Random, d, 12)),
        groups: Some(GroupColumn {
            seed: 0xfeed,
            groups: 7,
            first_row: 17,
        }),
    };
    let (xd, yd) = generate_on_device(ctx, &recipe, 300, 2_000)
        .unwrap()
        .expect("generated");
    let (mut xh, mut yh) = (Vec::new(), Vec::new());
    recipe.read(300, 2_000, &mut xh, &mut yh).unwrap();
    assert_eq!(xd.len(), 2_000 * (d + 1));
    assert_eq!(bits(&xd), bits(&xh), "x (centred, group column) differs");
    let gap = label_gap(&yd, &yh);
    eprintln!("view label gap {gap:.2e}");
    assert!(gap <= LABEL_TOLERANCE, "label gap {gap:.3e}");
    let groups: std::collections::BTreeSet<u32> =
        xd.chunks_exact(d + 1).map(|r| r[d] as u32).collect();
    assert_eq!(groups.len(), 7, "every group appears");
}

/// A spec on two coordinate axes with no label edges: bins depend on x alone, which the two
/// backends share bit for bit (labels agree only to f32 rounding).
fn axis_spec(d: usize) -> BinSpec {
    let mut basis = vec![0.0; 2 * d];
    basis[0] = 1.0;
    basis[d + 3] = 1.0;
    let s = BinSpec {
        dim: d,
        basis,
        axis_edges: vec![vec![-0.5, 0.4], vec![0.1, 0.7]],
        y_edges: vec![vec![]; 9],
    };
    s.validate().expect("valid spec");
    s
}

#[test]
fn passes_over_a_teacher_generate_x_on_the_device() {
    let gpu = own_gpu();
    gpu.set_resident_budget(0);
    let d = 24;
    let n = 30_001u64;
    let source = GaussianSource::new(teacher(TeacherKind::Random, d, 4), n, 6, 0.1).unwrap();
    // The training split of `learn`: a row range of the source.
    let train = SampleRange::new(&source, 1_000, 24_000).unwrap();
    for (spec, w) in [
        (BinSpec::single(d), SampleWeight::Unit),
        (axis_spec(d), SampleWeight::Label),
    ] {
        let got = gpu.moments(&train, &spec, w, &hidden()).unwrap();
        let want = reference_moments(&train, &spec, w).unwrap();
        assert_eq!(got.count, want.count, "bins agree");
        let diff = got.relative_difference(&want);
        assert!(
            diff < 1e-5,
            "K = {}: relative difference {diff:.3e}",
            spec.bins()
        );
    }
    let basis = vec![(0..d)
        .map(|i| if i == 2 { 1.0 } else { 0.0 })
        .collect::<Vec<f64>>()];
    let fit = Network::new(
        1,
        vec![
            Layer::new(1, 3, vec![1.0, -0.7, 0.4], vec![0.1, 0.0, -0.2]).unwrap(),
            Layer::new(3, 1, vec![0.5, 1.0, -0.3], vec![0.05]).unwrap(),
        ],
    )
    .unwrap();
    let got = gpu.fit_moments(&train, &basis, &fit, &hidden()).unwrap();
    let want = reference_fit_moments(&train, &basis, &fit).unwrap();
    let rel = |a: &[f64], b: &[f64]| {
        let num: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
        (num / b.iter().map(|q| q * q).sum::<f64>()).sqrt()
    };
    assert!(rel(&got.cross, &want.cross) < 1e-5 && rel(&got.gram, &want.gram) < 1e-5);
    let (uploaded, generated) = gpu.resident().traffic();
    assert_eq!(uploaded, 0, "no x was uploaded");
    assert_eq!(generated, 3 * 24_000, "three passes generated every row");
}

#[test]
fn a_generated_source_becomes_resident() {
    let gpu = own_gpu();
    gpu.set_resident_budget(64 << 20);
    let d = 10;
    let source = GaussianSource::new(teacher(TeacherKind::Fan, d, 1), 9_000, 2, 0.0).unwrap();
    let spec = BinSpec::single(d);
    let first = gpu
        .moments(&source, &spec, SampleWeight::Unit, &hidden())
        .unwrap();
    let second = gpu
        .moments(&source, &spec, SampleWeight::Unit, &hidden())
        .unwrap();
    assert_eq!(gpu.resident().traffic(), (0, 9_000), "generated once");
    assert_eq!(gpu.resident().counters(), (1, 1), "then read from the copy");
    assert_eq!(first.sum_xx, second.sum_xx);
}
