//! Small dense helpers in f64 that every stage uses: dot products, y += a x, packed symmetric
//! matrices and the ridge solve of packed normal equations. One home, below data, moments, subspace and search.

/// Dot product, summed in order.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| p * q).sum()
}

/// y += a x. Always inlined, so that callers compiled for wider vectors vectorise it for those.
#[inline(always)]
pub fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    y.iter_mut().zip(x).for_each(|(u, &v)| *u += a * v);
}

/// Dot product with four independent accumulators, so the compiler can vectorise it. Always
/// inlined, so that callers compiled for wider vectors vectorise it for those.
#[inline(always)]
pub fn dot_wide(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (a4, a_rest) = a.split_at(a.len() - a.len() % 4);
    let (b4, b_rest) = b.split_at(a4.len());
    for (p, q) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
        acc[0] += p[0] * q[0];
        acc[1] += p[1] * q[1];
        acc[2] += p[2] * q[2];
        acc[3] += p[3] * q[3];
    }
    let mut tail = 0.0;
    for (p, q) in a_rest.iter().zip(b_rest) {
        tail += p * q;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Unpacks a row-by-row upper triangle into a full symmetric matrix.
pub fn unpack_upper(packed: &[f64], d: usize) -> nalgebra::DMatrix<f64> {
    let mut m = nalgebra::DMatrix::zeros(d, d);
    let mut k = 0;
    for i in 0..d {
        for j in i..d {
            m[(i, j)] = packed[k];
            m[(j, i)] = packed[k];
            k += 1;
        }
    }
    m
}

/// Ridge solution of (G + rho I) a = g from a packed upper triangle; None if not positive definite.
pub fn ridge_solve(packed: &[f64], rhs: &[f64], ridge: f64) -> Option<Vec<f64>> {
    let f = rhs.len();
    let mut g = unpack_upper(packed, f);
    let scale = (0..f).map(|i| g[(i, i)]).sum::<f64>() / f.max(1) as f64;
    let rho = ridge * scale.max(1e-300) + 1e-12;
    for i in 0..f {
        g[(i, i)] += rho;
    }
    let chol = nalgebra::linalg::Cholesky::new(g)?;
    let a = chol.solve(&nalgebra::DVector::from_column_slice(rhs));
    a.iter()
        .all(|v| v.is_finite())
        .then(|| a.iter().copied().collect())
}
