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

/// [`dot_wide`] of each of `W` rows with `b`, in one sweep over `b`: each result has the same
/// bits as its own `dot_wide` (the same four accumulators, summed in the same order), but the
/// `W` run side by side, so the core is not idle waiting on one accumulator's adds. Drawing a
/// built-in teacher's samples spent two thirds of its time in the network's forward pass, one
/// `dot_wide` at a time: parity k = 6 at d = 128, 4.1e6 rows, 6.95 s before, 4.3 s with this.
pub fn dot_wide_rows<const W: usize>(rows: [&[f64]; W], b: &[f64]) -> [f64; W] {
    assert!(rows.iter().all(|r| r.len() == b.len()));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above) and every row is as long as b.
        return unsafe { dot_wide_rows_avx(rows, b) };
    }
    rows.map(|r| dot_wide(r, b))
}

/// `put(o, dot_wide(row(o), b))` for o in 0..count, eight rows at a time through
/// [`dot_wide_rows`], then four, then one (the same bits as one `dot_wide` each).
#[inline(always)]
pub fn each_dot_wide<'a>(
    count: usize,
    row: impl Fn(usize) -> &'a [f64],
    b: &[f64],
    mut put: impl FnMut(usize, f64),
) {
    #[inline(always)]
    fn groups<'a, const W: usize>(
        range: std::ops::Range<usize>,
        row: &impl Fn(usize) -> &'a [f64],
        b: &[f64],
        put: &mut impl FnMut(usize, f64),
    ) {
        for o in range.step_by(W) {
            let dots = dot_wide_rows(std::array::from_fn::<_, W, _>(|k| row(o + k)), b);
            for (k, v) in dots.into_iter().enumerate() {
                put(o + k, v);
            }
        }
    }
    let (eights, fours) = (count / 8 * 8, count / 4 * 4);
    groups::<8>(0..eights, &row, b, &mut put);
    groups::<4>(eights..fours, &row, b, &mut put);
    groups::<1>(fours..count, &row, b, &mut put);
}

/// [`dot_wide_rows`] with one 4-lane register per row: lane j is `dot_wide`'s acc[j], with the
/// same multiplies and adds (no fused multiply-add), so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_wide_rows_avx<const W: usize>(rows: [&[f64]; W], b: &[f64]) -> [f64; W] {
    use std::arch::x86_64::*;
    let n4 = b.len() - b.len() % 4;
    let mut acc = [_mm256_setzero_pd(); W];
    let mut i = 0;
    while i < n4 {
        let q = _mm256_loadu_pd(b.as_ptr().add(i));
        for (a, row) in acc.iter_mut().zip(&rows) {
            *a = _mm256_add_pd(*a, _mm256_mul_pd(_mm256_loadu_pd(row.as_ptr().add(i)), q));
        }
        i += 4;
    }
    let mut out = [0.0f64; W];
    for ((o, a), row) in out.iter_mut().zip(&acc).zip(&rows) {
        let mut lanes = [0.0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), *a);
        let mut tail = 0.0;
        for (p, q) in row[n4..].iter().zip(&b[n4..]) {
            tail += p * q;
        }
        *o = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail;
    }
    out
}

/// Results of the side-by-side dot products of [`dots_in_lanes`]: up to this many.
pub const LANES: usize = 16;

/// `rows` (count x n, row-major) transposed and padded to [`LANES`] columns: entry (i, j) is
/// rows[j][i], zero for j >= count. None when count > LANES.
pub fn lanes_of(rows: &[f64], count: usize, n: usize) -> Option<Vec<f64>> {
    (count <= LANES).then(|| {
        let mut t = vec![0.0; n * LANES];
        for (j, row) in rows.chunks_exact(n).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                t[i * LANES + j] = v;
            }
        }
        t
    })
}

/// out[j] = dot(a, column j of `t`) for j < out.len(), `t` n x LANES as [`lanes_of`] makes it:
/// each sum from -0.0 (as `dot`'s) with its terms in order, so the same bits as `dot`, but all
/// side by side in registers instead of one chain of dependent adds after another. Always
/// inlined, so that callers compiled for wider vectors vectorise it for those.
#[inline(always)]
pub fn dots_in_lanes(a: &[f64], t: &[f64], out: &mut [f64]) {
    let mut acc = [-0.0f64; LANES];
    for (&ai, ti) in a.iter().zip(t.chunks_exact(LANES)) {
        for j in 0..LANES {
            acc[j] += ti[j] * ai;
        }
    }
    out.copy_from_slice(&acc[..out.len()]);
}

/// `dot(row, x)` for every row and every `d`-long x of `xs`, x-major (each x's dots in row
/// order), with the bits of `dot`: through [`dots_in_lanes`] for up to [`LANES`] rows. One
/// `dot` at a time waits on its own adds: z = B x on the subspace stage's pilot (1e5 rows,
/// d = 256, 8 rows) took 0.27 s a call that way, a fifth of the stage on the random [16, 8]
/// network.
pub fn dot_rows(rows: &[Vec<f64>], xs: &[f64], d: usize) -> Vec<f64> {
    assert!(d > 0 && xs.len().is_multiple_of(d) && rows.iter().all(|r| r.len() == d));
    let r = rows.len();
    let mut out = vec![0.0; xs.len() / d * r];
    let Some(t) = lanes_of(&rows.concat(), r, d).filter(|_| r > 0) else {
        for (x, o) in xs.chunks_exact(d).zip(out.chunks_exact_mut(r.max(1))) {
            o.iter_mut().zip(rows).for_each(|(o, b)| *o = dot(b, x));
        }
        return out;
    };
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        unsafe { dot_rows_avx(&t, xs, d, r, &mut out) };
        return out;
    }
    dot_rows_body(&t, xs, d, r, &mut out);
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_rows_avx(t: &[f64], xs: &[f64], d: usize, r: usize, out: &mut [f64]) {
    dot_rows_body(t, xs, d, r, out)
}

#[inline(always)]
fn dot_rows_body(t: &[f64], xs: &[f64], d: usize, r: usize, out: &mut [f64]) {
    for (x, o) in xs.chunks_exact(d).zip(out.chunks_exact_mut(r)) {
        dots_in_lanes(x, t, o);
    }
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

#[cfg(test)]
mod tests {
    use super::{dot, dot_rows, dot_wide, dots_in_lanes, each_dot_wide, lanes_of, LANES};
    use rand::{RngExt, SeedableRng};

    /// The side-by-side dot products have the bits of `dot`, one result at a time, for every
    /// count of results up to LANES (zeros among the terms included).
    #[test]
    fn dots_in_lanes_give_the_bits_of_dot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let n = 37;
        for count in 1..=LANES {
            let rows: Vec<f64> = (0..count * n)
                .map(|k| {
                    if k % 7 == 0 {
                        0.0
                    } else {
                        rng.random_range(-1.0..1.0)
                    }
                })
                .collect();
            let a: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let t = lanes_of(&rows, count, n).expect("count <= LANES");
            let mut got = vec![0.0; count];
            dots_in_lanes(&a, &t, &mut got);
            for (j, g) in got.iter().enumerate() {
                let want = dot(&rows[j * n..(j + 1) * n], &a);
                assert_eq!(g.to_bits(), want.to_bits(), "count {count}, result {j}");
            }
        }
        assert!(lanes_of(&vec![0.0; (LANES + 1) * n], LANES + 1, n).is_none());
    }

    #[test]
    fn dot_rows_has_the_bits_of_dot() {
        // Row counts up to LANES and beyond it (plain `dot`), x counts from none up,
        // values of mixed sign and scale so that the order of the additions shows in the last
        // bits, and a positive row times an x of -0.0 (a sum of -0.0 products keeps its sign only
        // when it starts from -0.0, as `sum` does).
        for (d, r) in [(1, 1), (5, 3), (13, 8), (7, 15), (19, 17)] {
            let mut rows: Vec<Vec<f64>> = (0..r)
                .map(|j| {
                    (0..d)
                        .map(|i| {
                            ((i * 7 + j * 13) % 11) as f64 * 1.3e-3_f64.powi((i % 3) as i32) - 0.4
                        })
                        .collect()
                })
                .collect();
            rows.push((0..d).map(|i| 1.0 + i as f64).collect());
            for n in 0..7 {
                let mut xs: Vec<f64> = (0..n * d).map(|i| (i as f64 * 0.77).sin() * 1e3).collect();
                if n > 1 {
                    xs[d..2 * d].fill(-0.0);
                }
                let got = dot_rows(&rows, &xs, d);
                let want: Vec<u64> = xs
                    .chunks_exact(d)
                    .flat_map(|x| rows.iter().map(move |b| dot(b, x).to_bits()))
                    .collect();
                let got: Vec<u64> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "d {d}, {r} rows, {n} x");
            }
        }
    }

    #[test]
    fn dot_wide_rows_has_the_bits_of_dot_wide() {
        // Lengths with every tail, values of mixed sign and scale so that the order of the
        // additions shows in the last bits; counts of rows through the groups of 8 and 4.
        for len in 0..19 {
            let row = |r: usize| -> Vec<f64> {
                (0..len)
                    .map(|i| ((i * 7 + r * 13) % 11) as f64 * 1.3e-3_f64.powi((i % 3) as i32) - 0.4)
                    .collect()
            };
            let b: Vec<f64> = (0..len).map(|i| (i as f64 * 0.77).sin() * 1e3).collect();
            let rows: Vec<Vec<f64>> = (0..15).map(row).collect();
            for count in 0..rows.len() {
                let mut got = vec![f64::NAN; count];
                each_dot_wide(count, |o| &rows[o], &b, |o, v| got[o] = v);
                for (r, got) in rows.iter().zip(got) {
                    assert_eq!(got.to_bits(), dot_wide(r, &b).to_bits(), "length {len}");
                }
            }
        }
    }
}
