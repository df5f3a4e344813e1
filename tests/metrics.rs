//! Subspace metrics (principal angles, precision, recall, gradient energy missed) and the trace
//! identities that follow from Stein's identity (docs/algorithm.md, "Filtered PCA"), checked through the backend's moments.

mod common;

use relu_fpt::backend::Backend;
use relu_fpt::data::{GaussianSource, SampleRange, SampleSource};
use relu_fpt::metrics::{gradient_energy_missed, precision, principal_angles, recall};
use relu_fpt::moments::{BinSpec, SampleWeight};
use relu_fpt::teacher::{self, TeacherKind, TeacherSpec};

fn unit(d: usize, i: usize) -> Vec<f64> {
    let mut v = vec![0.0; d];
    v[i] = 1.0;
    v
}

#[test]
fn principal_angles_of_a_rotated_plane() {
    let t: f64 = 0.3;
    let a = vec![unit(4, 0), unit(4, 1)];
    let b = vec![vec![t.cos(), 0.0, t.sin(), 0.0], unit(4, 1)];
    let angles = principal_angles(&a, &b);
    assert_eq!(angles.len(), 2);
    assert!(angles[0].abs() < 1e-7);
    assert!((angles[1] - t).abs() < 1e-12);
    assert!((precision(&b, &a) - t.sin()).abs() < 1e-12);
    assert!((recall(&b, &a) - t.sin()).abs() < 1e-12);
    assert!(principal_angles(&a, &[]).is_empty());
}

#[test]
fn precision_sees_spurious_and_recall_missed_directions() {
    let truth = vec![unit(5, 0), unit(5, 1)];
    let superset = vec![unit(5, 0), unit(5, 1), unit(5, 3)];
    assert!((precision(&superset, &truth) - 1.0).abs() < 1e-12);
    assert!(recall(&superset, &truth).abs() < 1e-12);
    let subset = vec![unit(5, 1)];
    assert!(precision(&subset, &truth).abs() < 1e-12);
    assert!((recall(&subset, &truth) - 1.0).abs() < 1e-12);
    assert_eq!(precision(&[], &truth), 0.0);
    assert!((recall(&[], &truth) - 1.0).abs() < 1e-12);
}

#[test]
fn gradient_energy_missed_by_full_half_and_empty_bases() {
    let mut spec = TeacherSpec::new(TeacherKind::Fan, 12);
    spec.seed = 4;
    let t = teacher::build(&spec).unwrap();
    let full = gradient_energy_missed(&t.network, &t.basis, 4000, 1);
    assert!(full < 1e-9, "full basis misses {full}");
    assert!((gradient_energy_missed(&t.network, &[], 4000, 1) - 1.0).abs() < 1e-12);
    // The fan's gradient law is invariant under rotation by pi/m in its plane, so either
    // axis carries half the energy up to Monte Carlo error (4000 samples: about 0.01).
    let half = gradient_energy_missed(&t.network, &t.basis[..1], 4000, 1);
    assert!((half - 0.5).abs() < 0.05, "one plane axis misses {half}");
    let again = gradient_energy_missed(&t.network, &t.basis[..1], 4000, 1);
    assert_eq!(half, again);
}

/// Per block b of the data, D_b = identity's left side minus its right side; returns the mean
/// of D_b and its standard error over the blocks.
fn mean_and_error(d: &[f64]) -> (f64, f64) {
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// The trace identities of docs/algorithm.md ("Filtered PCA"): tr(S_{|y|>tau}/N - P(|y|>tau) I)
/// = tau p_|y|(tau) and tr(sum y^2 x x^T / N - mean(y^2) I) = 2 mean(y^2), for a bias-free
/// teacher (Stein's identity and homogeneity).
/// Monte Carlo error comes from the spread over 8 disjoint blocks; the check allows 4
/// standard errors.
#[test]
fn trace_identities_hold_within_monte_carlo_error() {
    let d = 16;
    let mut spec = TeacherSpec::new(TeacherKind::Fan, d);
    spec.seed = 7;
    let t = teacher::build(&spec).unwrap();
    let blocks = 8u64;
    let rows = 25_000u64;
    let source = GaussianSource::new(t.network.clone(), blocks * rows, 3, 0.0).unwrap();
    let backend = common::cpu() as &dyn Backend;
    let bar = indicatif::ProgressBar::hidden();
    // tau = 0.8 quantile of |y| on the first block; h = histogram half-width.
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    source.read(0, rows as usize, &mut xs, &mut ys).unwrap();
    let mut abs: Vec<f64> = ys.iter().map(|&v| (v as f64).abs()).collect();
    abs.sort_by(|a, b| a.total_cmp(b));
    let tau = abs[(0.8 * abs.len() as f64) as usize];
    let h = 0.1 * tau;
    let edges = vec![-tau - h, -tau, -tau + h, tau - h, tau, tau + h];
    let (mut tail_diff, mut square_diff, mut predicted) = (Vec::new(), Vec::new(), Vec::new());
    for b in 0..blocks {
        let block = SampleRange::new(&source, b * rows, rows).unwrap();
        let m = backend
            .moments(
                &block,
                &BinSpec::label_bins(d, edges.clone()),
                SampleWeight::Unit,
                &bar,
            )
            .unwrap();
        let n = m.total_count() as f64;
        let tail = [0usize, 1, 5, 6];
        let n_tail: u64 = tail.iter().map(|&i| m.count[i]).sum();
        let trace = m.second_moment(tail).trace() / n - n_tail as f64 / n * d as f64;
        let near: u64 = [1usize, 2, 4, 5].iter().map(|&i| m.count[i]).sum();
        let density = near as f64 / (2.0 * h * n);
        tail_diff.push(trace - tau * density);
        predicted.push(tau * density);

        let w = backend
            .moments(
                &block,
                &BinSpec::single(d),
                SampleWeight::LabelSquared,
                &bar,
            )
            .unwrap();
        let mean_y2 = w.sum_y2[0] / n;
        let trace2 = w.second_moment([0]).trace() / n - mean_y2 * d as f64;
        square_diff.push(trace2 - 2.0 * mean_y2);
    }
    let (tail_mean, tail_se) = mean_and_error(&tail_diff);
    let (sq_mean, sq_se) = mean_and_error(&square_diff);
    eprintln!("tau {tau:.3}: tail identity diff {tail_mean:.4} +- {tail_se:.4}; y^2 identity diff {sq_mean:.4} +- {sq_se:.4}");
    assert!(
        tail_mean.abs() < 4.0 * tail_se,
        "tail identity off by {tail_mean} (se {tail_se})"
    );
    assert!(
        sq_mean.abs() < 4.0 * sq_se,
        "y^2 identity off by {sq_mean} (se {sq_se})"
    );
    // The signal itself is well above the error: the identity is not trivially 0 = 0.
    let predicted = predicted.iter().sum::<f64>() / blocks as f64;
    assert!(predicted > 10.0 * tail_se, "tau p(tau) = {predicted}");
}
