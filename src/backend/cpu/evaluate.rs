//! Batched candidate evaluation on the CPU: candidates in parallel (rayon), each a forward pass
//! over all samples with f64 activations and f64 sums. Any width and depth is accepted here.

use crate::backend::{
    check_evaluation_inputs, tri_len, CandidateBatch, CandidateStats, ProjectedSamples,
};
use crate::error::Result;
use rayon::prelude::*;

/// One candidate's sums: SSE, packed Phi^T Phi, Phi^T y.
struct Sums {
    sse: f64,
    gram: Vec<f64>,
    feature_y: Vec<f64>,
}

pub(crate) fn evaluate_candidates(
    samples: &ProjectedSamples,
    batch: &CandidateBatch,
) -> Result<CandidateStats> {
    check_evaluation_inputs(samples, batch)?;
    let f = batch.feature_dim();
    let per = batch.params_per_candidate();
    let sums: Vec<Sums> = batch
        .params
        .par_chunks(per)
        .map(|p| evaluate_one(samples, batch, p))
        .collect();
    let mut stats = CandidateStats {
        feature_dim: f,
        sse: Vec::with_capacity(sums.len()),
        gram: Vec::with_capacity(sums.len() * tri_len(f)),
        feature_y: Vec::with_capacity(sums.len() * f),
    };
    for s in sums {
        stats.sse.push(s.sse);
        stats.gram.extend_from_slice(&s.gram);
        stats.feature_y.extend_from_slice(&s.feature_y);
    }
    Ok(stats)
}

fn evaluate_one(samples: &ProjectedSamples, batch: &CandidateBatch, params: &[f32]) -> Sums {
    let p: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let f = batch.feature_dim();
    let widest = batch
        .hidden
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(batch.inputs);
    let mut cur = vec![0.0f64; widest + 1];
    let mut next = vec![0.0f64; widest + 1];
    let mut sums = Sums {
        sse: 0.0,
        gram: vec![0.0; tri_len(f)],
        feature_y: vec![0.0; f],
    };
    let r = samples.rank;
    for (zrow, &y) in samples.z.chunks_exact(r).zip(&samples.y) {
        for (c, &v) in cur.iter_mut().zip(zrow) {
            *c = v as f64;
        }
        let mut width = r;
        let mut at = 0;
        for &h in &batch.hidden {
            let (w, rest) = p[at..].split_at(h * width);
            for o in 0..h {
                let s: f64 = w[o * width..(o + 1) * width]
                    .iter()
                    .zip(&cur[..width])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    + rest[o];
                next[o] = s.max(0.0);
            }
            std::mem::swap(&mut cur, &mut next);
            at += h * width + h;
            width = h;
        }
        cur[width] = 1.0;
        let phi = &cur[..f];
        // The output layer's weights and bias line up with phi = (h, 1).
        let out: f64 = p[at..at + f].iter().zip(phi).map(|(a, b)| a * b).sum();
        let y = y as f64;
        sums.sse += (out - y) * (out - y);
        let mut k = 0;
        for i in 0..f {
            sums.feature_y[i] += phi[i] * y;
            for j in i..f {
                sums.gram[k] += phi[i] * phi[j];
                k += 1;
            }
        }
    }
    sums
}
