//! z = B x on all cores: each row's r dot products in f64 (x widened from f32), eight lanes per
//! dot product so that AVX2 code (chosen at run time) runs four-wide FMA-free f64 vectors. A
//! row's result does not depend on which rows share its block or on the thread count.

use super::trainer::avx2_available;
use rayon::prelude::*;

/// Rows per parallel task.
const BLOCK_ROWS: usize = 256;

/// Dot product of an f64 row with an f32 row, in eight f64 lanes summed pairwise at the end.
#[inline(always)]
fn dot_lanes(b: &[f64], x: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0.0f64; LANES];
    let mut bc = b.chunks_exact(LANES);
    let mut xc = x.chunks_exact(LANES);
    for (bb, v) in (&mut bc).zip(&mut xc) {
        for l in 0..LANES {
            lanes[l] += bb[l] * v[l] as f64;
        }
    }
    for (l, (bb, v)) in bc.remainder().iter().zip(xc.remainder()).enumerate() {
        lanes[l] += bb * *v as f64;
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
}

#[inline(always)]
fn block_body(basis: &[f64], d: usize, x: &[f32], out: &mut [f64]) {
    let r = basis.len() / d;
    for (row, z) in x.chunks_exact(d).zip(out.chunks_exact_mut(r)) {
        for (zj, b) in z.iter_mut().zip(basis.chunks_exact(d)) {
            *zj = dot_lanes(b, row);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(basis: &[f64], d: usize, x: &[f32], out: &mut [f64]) {
    block_body(basis, d, x, out)
}

/// z = B x for the rows of one block, f64 out (`out`: rows x r).
pub(crate) fn project_block(avx2: bool, basis: &[f64], d: usize, x: &[f32], out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { block_avx2(basis, d, x, out) };
    }
    let _ = avx2;
    block_body(basis, d, x, out)
}

/// z = B x for every row of `x` (rows x d) with B the r x d rows of `basis`, in f64, on all
/// cores.
pub fn project_f64(basis: &[f64], d: usize, x: &[f32]) -> Vec<f64> {
    let r = basis.len() / d.max(1);
    let rows = x.len() / d.max(1);
    let mut out = vec![0.0f64; rows * r];
    if r == 0 || rows == 0 {
        return out;
    }
    let avx2 = avx2_available();
    x.par_chunks(BLOCK_ROWS * d)
        .zip(out.par_chunks_mut(BLOCK_ROWS * r))
        .for_each(|(xb, ob)| project_block(avx2, basis, d, xb, ob));
    out
}

/// [`project_f64`] rounded to f32.
pub fn project(basis: &[f64], d: usize, x: &[f32]) -> Vec<f32> {
    let r = basis.len() / d.max(1);
    let rows = x.len() / d.max(1);
    let mut out = vec![0.0f32; rows * r];
    if r == 0 || rows == 0 {
        return out;
    }
    let avx2 = avx2_available();
    x.par_chunks(BLOCK_ROWS * d)
        .zip(out.par_chunks_mut(BLOCK_ROWS * r))
        .for_each_init(
            || vec![0.0f64; BLOCK_ROWS * r],
            |wide, (xb, ob)| {
                let w = &mut wide[..ob.len()];
                project_block(avx2, basis, d, xb, w);
                ob.iter_mut()
                    .zip(w.iter())
                    .for_each(|(o, &v)| *o = v as f32);
            },
        );
    out
}
