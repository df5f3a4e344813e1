//! Host linear algebra of the filtered-PCA rounds: the few leading eigenpairs of a symmetric
//! operator (Lanczos with full reorthogonalisation), a packed symmetric matrix-vector product,
//! and the spectral edges of the null matrices (free-probability R-transforms).
//!
//! Only the few eigenpairs of largest |lambda| of each filter's d x d matrix are needed, so a
//! Krylov method replaces the full eigendecomposition (O(d^3) per filter, plus two dense d x d
//! products): about 30-60 matrix-vector products of O(d^2) each.

use crate::linalg::{axpy, dot_wide};
use nalgebra::{DMatrix, SymmetricEigen};

/// Largest |lambda| first.
pub type Eigenpairs = Vec<(f64, Vec<f64>)>;

/// Dimensions up to this are solved densely (a full eigendecomposition of the n x n matrix
/// assembled from n products is cheaper than Lanczos bookkeeping there, and exact).
const DENSE_UP_TO: usize = 48;
/// Most Lanczos steps (Krylov dimension), whatever n.
const MAX_STEPS: usize = 400;
/// A Ritz pair counts as converged when its residual ||A v - theta v|| (the Lanczos bound
/// |beta_j s_j|) is below this fraction of the largest |Ritz value|. The Ritz value's own
/// error is then at most residual^2 / gap: far below the noise level of a filter's matrix.
const RESIDUAL_TOL: f64 = 1e-4;

/// Deterministic pseudo-random start vector (splitmix64), so equal inputs give equal results.
fn start_vector(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect();
    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    v.iter_mut().for_each(|a| *a /= norm);
    v
}

/// The eigenpairs of largest |lambda| of the symmetric operator `apply` (out = A v) on R^n:
/// at least `want` of them (fewer only when n is smaller), sorted by decreasing |lambda|, with
/// unit eigenvectors. Every returned pair has converged to the tolerance above.
pub fn top_eigenpairs(
    n: usize,
    want: usize,
    mut apply: impl FnMut(&[f64], &mut [f64]),
    seed: u64,
) -> Eigenpairs {
    let want = want.min(n);
    if n == 0 || want == 0 {
        return Vec::new();
    }
    if n <= DENSE_UP_TO {
        return dense_top(n, want, &mut apply);
    }
    let max_steps = n.min(MAX_STEPS);
    let mut q: Vec<Vec<f64>> = vec![start_vector(n, seed)];
    let (mut alpha, mut beta) = (Vec::<f64>::new(), Vec::<f64>::new());
    let mut w = vec![0.0; n];
    let mut check_at = (want + 20).min(max_steps);
    loop {
        let j = alpha.len();
        apply(&q[j], &mut w);
        let a = dot_wide(&q[j], &w);
        alpha.push(a);
        // Full reorthogonalisation, twice (classical Gram-Schmidt is then as good as modified):
        // the Krylov basis stays orthonormal to rounding, so no ghost copies of converged pairs.
        for _ in 0..2 {
            for qi in &q {
                let c = dot_wide(qi, &w);
                axpy(&mut w, -c, qi);
            }
        }
        let b = dot_wide(&w, &w).sqrt();
        let steps = alpha.len();
        let scale = alpha
            .iter()
            .chain(&beta)
            .fold(0.0f64, |m, v| m.max(v.abs()));
        let exhausted = b <= 1e-12 * scale.max(f64::MIN_POSITIVE) || steps >= max_steps;
        if steps >= check_at || exhausted {
            let (pairs, converged) = ritz(&q, &alpha, &beta, b, want);
            if converged || exhausted {
                return pairs;
            }
            check_at = (steps + 10).min(max_steps);
        }
        beta.push(b);
        w.iter_mut().for_each(|v| *v /= b);
        q.push(std::mem::replace(&mut w, vec![0.0; n]));
    }
}

/// Ritz pairs of the Lanczos tridiagonal (the `want` largest by |theta|), and whether they
/// have all converged. `last_beta` is the norm of the residual after the last step.
fn ritz(
    q: &[Vec<f64>],
    alpha: &[f64],
    beta: &[f64],
    last_beta: f64,
    want: usize,
) -> (Eigenpairs, bool) {
    let m = alpha.len();
    let mut t = DMatrix::zeros(m, m);
    for i in 0..m {
        t[(i, i)] = alpha[i];
        if i + 1 < m {
            t[(i, i + 1)] = beta[i];
            t[(i + 1, i)] = beta[i];
        }
    }
    let e = SymmetricEigen::new(t);
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| e.eigenvalues[b].abs().total_cmp(&e.eigenvalues[a].abs()));
    let largest = e.eigenvalues[order[0]].abs().max(f64::MIN_POSITIVE);
    let n = q[0].len();
    let mut converged = true;
    let mut pairs = Vec::with_capacity(want);
    for &i in order.iter().take(want) {
        let s = e.eigenvectors.column(i);
        if (last_beta * s[m - 1]).abs() > RESIDUAL_TOL * largest {
            converged = false;
        }
        let mut v = vec![0.0; n];
        for (k, qk) in q.iter().take(m).enumerate() {
            axpy(&mut v, s[k], qk);
        }
        let norm = dot_wide(&v, &v).sqrt();
        v.iter_mut().for_each(|a| *a /= norm);
        pairs.push((e.eigenvalues[i], v));
    }
    (pairs, converged)
}

fn dense_top(n: usize, want: usize, apply: &mut impl FnMut(&[f64], &mut [f64])) -> Eigenpairs {
    let mut m = DMatrix::zeros(n, n);
    let mut unit = vec![0.0; n];
    let mut col = vec![0.0; n];
    for j in 0..n {
        unit[j] = 1.0;
        apply(&unit, &mut col);
        unit[j] = 0.0;
        for i in 0..n {
            m[(i, j)] = col[i];
        }
    }
    let sym = (&m + m.transpose()) * 0.5;
    let e = SymmetricEigen::new(sym);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| e.eigenvalues[b].abs().total_cmp(&e.eigenvalues[a].abs()));
    order
        .into_iter()
        .take(want)
        .map(|i| {
            (
                e.eigenvalues[i],
                e.eigenvectors.column(i).iter().copied().collect(),
            )
        })
        .collect()
}

/// out = S v for the leading `n x n` block of a symmetric matrix whose upper triangle (of side
/// `side >= n`) is packed row by row ((0,0), (0,1) .. (0,side-1), (1,1) ..), as the moment
/// accumulators store it. Each packed row is read once for a dot product and an axpy. The same
/// code is compiled twice, for AVX2 (chosen at run time) and portable: Rust never fuses or
/// reorders float operations, so both give the same bits.
pub fn packed_symmetric_matvec(packed: &[f64], side: usize, n: usize, v: &[f64], out: &mut [f64]) {
    assert!(side >= n && v.len() >= n && out.len() >= n && packed.len() >= side * (side + 1) / 2);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { packed_matvec_avx2(packed, side, n, v, out) };
        return;
    }
    packed_matvec_body(packed, side, n, v, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn packed_matvec_avx2(packed: &[f64], side: usize, n: usize, v: &[f64], out: &mut [f64]) {
    packed_matvec_body(packed, side, n, v, out);
}

#[inline(always)]
fn packed_matvec_body(packed: &[f64], side: usize, n: usize, v: &[f64], out: &mut [f64]) {
    out[..n].iter_mut().for_each(|o| *o = 0.0);
    let mut start = 0;
    for i in 0..n {
        let len = n - i - 1;
        let row = &packed[start + 1..start + 1 + len];
        let vi = v[i];
        let (vs, os) = (&v[i + 1..n], &mut out[i + 1..n]);
        // Eight partial sums for the dot product (vectorised), the axpy in the same sweep.
        let mut acc = [0.0f64; 8];
        let chunks = len / 8 * 8;
        for ((r, x), o) in row[..chunks]
            .chunks_exact(8)
            .zip(vs[..chunks].chunks_exact(8))
            .zip(os[..chunks].chunks_exact_mut(8))
        {
            for k in 0..8 {
                acc[k] += r[k] * x[k];
                o[k] += r[k] * vi;
            }
        }
        let mut tail = 0.0;
        for k in chunks..len {
            tail += row[k] * vs[k];
            os[k] += row[k] * vi;
        }
        let dot = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        out[i] += packed[start] * vi + dot + tail;
        start += side - i;
    }
}

/// Largest |eigenvalue| the null model predicts for X = a W1/n1 - b W2/n2 - (a - b) I on
/// R^dim, W1, W2 independent Wishart(dim, n_i, I): the edge of its limiting spectrum (free
/// difference of two Marchenko-Pastur laws, ratios g_i = dim / n_i). Its R-transform is
/// R(w) = a / (1 - a g1 w) - b / (1 + b g2 w) - (a - b); with K(w) = R(w) + 1/w the upper edge
/// is min K on (0, 1 / (a g1)) and the lower edge max K on (-1 / (b g2), 0). b = 0 gives the
/// Marchenko-Pastur edge 2 sqrt(g) + g of W/n - I.
pub fn null_edge(a: f64, n1: f64, b: f64, n2: f64, dim: f64) -> f64 {
    let g1 = if n1 > 0.0 { dim / n1 } else { 0.0 };
    let g2 = if n2 > 0.0 { dim / n2 } else { 0.0 };
    let k = |w: f64| a / (1.0 - a * g1 * w) - b / (1.0 + b * g2 * w) - (a - b) + 1.0 / w;
    let upper_pole = if a * g1 > 0.0 {
        1.0 / (a * g1)
    } else {
        f64::INFINITY
    };
    let lower_pole = if b * g2 > 0.0 {
        1.0 / (b * g2)
    } else {
        f64::INFINITY
    };
    let upper = extremum(k, upper_pole);
    // min of -K(-u) on (0, pole) is minus the lower edge.
    let lower = extremum(|u| -k(-u), lower_pole);
    upper.abs().max(lower.abs())
}

/// min of f on (0, pole) (pole may be infinite), where f -> +inf at both ends: a log-spaced
/// scan, then golden-section refinement around the best point.
fn extremum(f: impl Fn(f64) -> f64, pole: f64) -> f64 {
    let hi = if pole.is_finite() { pole } else { 1e12 };
    let lo = hi * 1e-12;
    let steps = 400;
    let at = |i: usize| lo * (hi / lo).powf(i as f64 / steps as f64);
    let mut best = (f64::INFINITY, 0usize);
    for i in 1..steps {
        let v = f(at(i));
        if v < best.0 {
            best = (v, i);
        }
    }
    let (mut l, mut r) = (at(best.1 - 1), at(best.1 + 1));
    let phi = 0.5 * (5f64.sqrt() - 1.0);
    for _ in 0..100 {
        let m1 = r - phi * (r - l);
        let m2 = l + phi * (r - l);
        if f(m1) < f(m2) {
            r = m2;
        } else {
            l = m1;
        }
    }
    f(0.5 * (l + r)).min(best.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marchenko_pastur_edge() {
        for g in [0.01f64, 0.05, 0.2] {
            let want = 2.0 * g.sqrt() + g;
            let got = null_edge(1.0, 1.0 / g, 0.0, 0.0, 1.0);
            assert!(
                (got - want).abs() < 1e-9 * want.max(1.0),
                "{g}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn packed_matvec_matches_dense() {
        let side = 7;
        let n = 6;
        let mut packed = Vec::new();
        let mut dense = DMatrix::zeros(side, side);
        let mut v = 0.3;
        for i in 0..side {
            for j in i..side {
                v = (v * 7.31 + 0.17) % 1.9 - 0.95;
                packed.push(v);
                dense[(i, j)] = v;
                dense[(j, i)] = v;
            }
        }
        let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.7).sin()).collect();
        let mut out = vec![0.0; n];
        packed_symmetric_matvec(&packed, side, n, &x, &mut out);
        for i in 0..n {
            let want: f64 = (0..n).map(|j| dense[(i, j)] * x[j]).sum();
            assert!((out[i] - want).abs() < 1e-12);
        }
    }
}
