//! Subspace quality metrics: principal angles, precision (spurious directions), recall (missed
//! directions) and the relevance-weighted miss
//! E||P_perp grad F||^2 / E||grad F||^2.
//!
//! Subspaces are given as orthonormal rows of length d (r x d), as the subspace stage returns
//! them. Rows of different lengths are a caller bug and panic with a message.

use crate::network::Network;
use nalgebra::DMatrix;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

fn row_length(rows: &[Vec<f64>]) -> Option<usize> {
    rows.first().map(|r| r.len())
}

fn check_same_length(a: &[Vec<f64>], b: &[Vec<f64>]) {
    let d = row_length(a).or(row_length(b)).unwrap_or(0);
    assert!(
        a.iter().chain(b).all(|r| r.len() == d),
        "metrics: every basis row must have the same length d"
    );
}

/// Cross-Gram matrix A B^T (ra x rb).
fn cross_gram(a: &[Vec<f64>], b: &[Vec<f64>]) -> DMatrix<f64> {
    DMatrix::from_fn(a.len(), b.len(), |i, j| {
        a[i].iter().zip(&b[j]).map(|(p, q)| p * q).sum()
    })
}

/// Principal angles (radians, ascending) between span(a) and span(b), both given as
/// orthonormal rows: theta_i = acos sigma_i(A B^T). Returns min(ra, rb) angles; empty when
/// either basis is empty.
///
/// # Panics
/// If rows differ in length.
pub fn principal_angles(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<f64> {
    check_same_length(a, b);
    if a.is_empty() || b.is_empty() {
        return Vec::new();
    }
    let sv = cross_gram(a, b).singular_values();
    let mut angles: Vec<f64> = sv.iter().map(|s| s.clamp(-1.0, 1.0).acos()).collect();
    angles.sort_by(|x, y| x.total_cmp(y));
    angles
}

/// Spectral norm of the rows of `rows` after removing their components in span(`onto`):
/// ||(I - O^T O) R^T||_2 for orthonormal rows O. 0 when `rows` is empty.
fn residual_norm(rows: &[Vec<f64>], onto: &[Vec<f64>]) -> f64 {
    check_same_length(rows, onto);
    if rows.is_empty() {
        return 0.0;
    }
    let residuals: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let mut v = r.clone();
            for o in onto {
                let c: f64 = o.iter().zip(r).map(|(p, q)| p * q).sum();
                for (vi, oi) in v.iter_mut().zip(o) {
                    *vi -= c * oi;
                }
            }
            v
        })
        .collect();
    let gram = cross_gram(&residuals, &residuals);
    let top = gram
        .symmetric_eigenvalues()
        .iter()
        .fold(0.0f64, |m, &l| m.max(l));
    top.max(0.0).sqrt()
}

/// Precision error ||(I - Q Q^T) B_hat||_2: how far the estimated directions stick out of the
/// true subspace (spurious directions). `estimate` = B_hat rows, `truth` = Q rows, both
/// orthonormal. 0 is perfect; 1 means some estimated direction is orthogonal to the truth.
pub fn precision(estimate: &[Vec<f64>], truth: &[Vec<f64>]) -> f64 {
    residual_norm(estimate, truth)
}

/// Recall error ||(I - B_hat B_hat^T) Q||_2: how much of the true subspace the estimate
/// misses. 0 is perfect; 1 means some true direction is missed entirely.
pub fn recall(estimate: &[Vec<f64>], truth: &[Vec<f64>]) -> f64 {
    residual_norm(truth, estimate)
}

/// Relevance-weighted miss E||P_perp grad F(x)||^2 / E||grad F(x)||^2 over `samples` draws
/// x ~ N(0, I_d) (Xoshiro256PlusPlus seeded with `seed`), where P_perp projects off span(basis)
/// (orthonormal rows). The fraction of the teacher's gradient energy the basis misses: 0 when
/// the basis contains the teacher's relevant subspace. Returns 0 for a network whose gradient
/// vanishes on every sample (nothing to miss).
///
/// # Panics
/// If a basis row's length differs from the network's input dimension.
pub fn gradient_energy_missed(
    teacher: &Network,
    basis: &[Vec<f64>],
    samples: usize,
    seed: u64,
) -> f64 {
    let d = teacher.input_dim;
    assert!(
        basis.iter().all(|b| b.len() == d),
        "gradient_energy_missed: basis rows must have length d = {d}"
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut x = vec![0.0f64; d];
    let (mut total, mut missed) = (0.0f64, 0.0f64);
    for _ in 0..samples {
        for v in x.iter_mut() {
            *v = rng.sample(StandardNormal);
        }
        let g = teacher.gradient(&x);
        let energy: f64 = g.iter().map(|v| v * v).sum();
        let inside: f64 = basis
            .iter()
            .map(|b| {
                let c: f64 = b.iter().zip(&g).map(|(p, q)| p * q).sum();
                c * c
            })
            .sum();
        total += energy;
        missed += (energy - inside).max(0.0);
    }
    if total > 0.0 {
        missed / total
    } else {
        0.0
    }
}

/// How a recovered basis compares with a known teacher's first-layer span (reported, never
/// used by the method).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TeacherComparison {
    pub true_dim: usize,
    pub found_dim: usize,
    /// Principal angles (radians) between the basis and the span.
    pub principal_angles: Vec<f64>,
    /// The largest principal angle; a right angle when a direction is missed.
    pub largest_angle: f64,
    /// [`gradient_energy_missed`] over 1e5 Gaussian rows.
    pub gradient_energy_missed: f64,
}

impl TeacherComparison {
    /// `basis` (orthonormal rows) against `teacher`, the energy from rows drawn with `seed`.
    pub fn new(teacher: &Network, basis: &[Vec<f64>], seed: u64) -> Self {
        let truth = teacher.first_layer_span();
        let angles = principal_angles(basis, &truth);
        // Missed directions count as right angles: compare the larger of the two dimensions.
        let largest = if basis.len() < truth.len() || angles.is_empty() {
            std::f64::consts::FRAC_PI_2
        } else {
            angles.iter().copied().fold(0.0, f64::max)
        };
        TeacherComparison {
            true_dim: truth.len(),
            found_dim: basis.len(),
            largest_angle: largest,
            gradient_energy_missed: gradient_energy_missed(teacher, basis, 100_000, seed),
            principal_angles: angles,
        }
    }

    /// One line: the dimensions, the largest angle and the energy missed.
    pub fn line(&self) -> String {
        format!(
            "against the teacher: dimension {} found / {} true, largest principal angle {:.4} rad, gradient energy missed {:.2e}",
            self.found_dim, self.true_dim, self.largest_angle, self.gradient_energy_missed
        )
    }
}
