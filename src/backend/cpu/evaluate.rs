//! Batched candidate evaluation on the CPU: groups of `LANES` candidates in parallel (rayon),
//! each group one forward pass over all samples with f64 activations and f64 sums. Any width
//! and depth is accepted here.
//!
//! Why groups: the per-sample work of one small candidate (a few dot products and a packed
//! Gram update of f(f+1)/2 terms) is too short to keep the core busy, and summing over samples
//! cannot be vectorised without reordering the sums. Side by side, `LANES` candidates do the
//! same operations on different weights, so each step is an element-wise operation on
//! `[f64; LANES]` arrays, which the compiler vectorises; every candidate's sums are still taken
//! sample by sample in order, so results do not depend on the grouping or the thread count.

// The lane loops index several arrays in step; a plain index is what vectorises.
#![allow(clippy::needless_range_loop)]

use crate::backend::{
    check_evaluation_inputs, tri_len, CandidateBatch, CandidateStats, ProjectedSamples,
};
use crate::error::Result;
use rayon::prelude::*;

/// Candidates evaluated side by side in one pass.
const LANES: usize = 4;
type Lanes = [f64; LANES];

/// One group's sums: SSE, packed Phi^T Phi, Phi^T y, each per lane.
struct Sums {
    sse: Lanes,
    gram: Vec<Lanes>,
    feature_y: Vec<Lanes>,
}

pub(crate) fn evaluate_candidates(
    samples: &ProjectedSamples,
    batch: &CandidateBatch,
) -> Result<CandidateStats> {
    check_evaluation_inputs(samples, batch)?;
    let f = batch.feature_dim();
    let per = batch.params_per_candidate();
    let count = batch.count();
    let tri = tri_len(f);
    let avx2 = super::trainer::avx2_available();
    let groups: Vec<Sums> = batch
        .params
        .par_chunks(per * LANES)
        .map(|p| evaluate_group(samples, batch, p, avx2))
        .collect();
    let mut stats = CandidateStats {
        feature_dim: f,
        sse: Vec::with_capacity(count),
        gram: Vec::with_capacity(count * tri),
        feature_y: Vec::with_capacity(count * f),
    };
    for (g, s) in groups.iter().enumerate() {
        let lanes = (count - g * LANES).min(LANES);
        for l in 0..lanes {
            stats.sse.push(s.sse[l]);
            stats.gram.extend(s.gram.iter().map(|v| v[l]));
            stats.feature_y.extend(s.feature_y.iter().map(|v| v[l]));
        }
    }
    Ok(stats)
}

/// Evaluates up to `LANES` candidates (`params` holds whole candidates; missing lanes repeat
/// the last one and are dropped by the caller). With `avx2` the same loops are compiled for
/// AVX2 (four f64 lanes a step instead of two; no FMA, so the same bits).
fn evaluate_group(
    samples: &ProjectedSamples,
    batch: &CandidateBatch,
    params: &[f32],
    avx2: bool,
) -> Sums {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the CPU has AVX2 (checked by the caller).
        return unsafe { group_avx2(samples, batch, params) };
    }
    let _ = avx2;
    group_body(samples, batch, params)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn group_avx2(samples: &ProjectedSamples, batch: &CandidateBatch, params: &[f32]) -> Sums {
    group_body(samples, batch, params)
}

#[inline(always)]
fn group_body(samples: &ProjectedSamples, batch: &CandidateBatch, params: &[f32]) -> Sums {
    let per = batch.params_per_candidate();
    let present = params.len() / per;
    // Parameters transposed: p[k][lane].
    let p: Vec<Lanes> = (0..per)
        .map(|k| std::array::from_fn(|l| params[l.min(present - 1) * per + k] as f64))
        .collect();
    let f = batch.feature_dim();
    let r = samples.rank;
    let widest = batch.hidden.iter().copied().max().unwrap_or(0).max(r);
    let mut cur: Vec<Lanes> = vec![[0.0; LANES]; widest + 1];
    let mut next: Vec<Lanes> = vec![[0.0; LANES]; widest + 1];
    let mut sums = Sums {
        sse: [0.0; LANES],
        gram: vec![[0.0; LANES]; tri_len(f)],
        feature_y: vec![[0.0; LANES]; f],
    };
    for (zrow, &y) in samples.z.chunks_exact(r).zip(&samples.y) {
        for (c, &v) in cur.iter_mut().zip(zrow) {
            *c = [v as f64; LANES];
        }
        let mut width = r;
        let mut at = 0;
        for &h in &batch.hidden {
            let (w, rest) = p[at..].split_at(h * width);
            for o in 0..h {
                let mut s = [0.0; LANES];
                for (wi, ci) in w[o * width..(o + 1) * width].iter().zip(&cur[..width]) {
                    for l in 0..LANES {
                        s[l] += wi[l] * ci[l];
                    }
                }
                for l in 0..LANES {
                    next[o][l] = (s[l] + rest[o][l]).max(0.0);
                }
            }
            std::mem::swap(&mut cur, &mut next);
            at += h * width + h;
            width = h;
        }
        cur[width] = [1.0; LANES];
        let phi = &cur[..f];
        // The output layer's weights and bias line up with phi = (h, 1).
        let mut out = [0.0; LANES];
        for (a, b) in p[at..at + f].iter().zip(phi) {
            for l in 0..LANES {
                out[l] += a[l] * b[l];
            }
        }
        let y = y as f64;
        for l in 0..LANES {
            let e = out[l] - y;
            sums.sse[l] += e * e;
        }
        let mut k = 0;
        for i in 0..f {
            let pi = phi[i];
            let fy = &mut sums.feature_y[i];
            for l in 0..LANES {
                fy[l] += pi[l] * y;
            }
            for pj in &phi[i..] {
                let g = &mut sums.gram[k];
                for l in 0..LANES {
                    g[l] += pi[l] * pj[l];
                }
                k += 1;
            }
        }
    }
    sums
}
