//! The obviously-correct f64 reference of batched candidate evaluation that tests compare both
//! backends against.

use crate::backend::{
    check_evaluation_inputs, tri_len, CandidateBatch, CandidateStats, ProjectedSamples,
};
use crate::error::Result;

/// The f64 reference of batched evaluation: for every candidate and sample, a plain forward pass
/// built from nested weight matrices, then the sums. Slow and simple on purpose (tests only).
pub fn reference_evaluate(
    samples: &ProjectedSamples,
    batch: &CandidateBatch,
) -> Result<CandidateStats> {
    check_evaluation_inputs(samples, batch)?;
    let f = batch.feature_dim();
    let per = batch.params_per_candidate();
    let count = batch.count();
    let mut stats = CandidateStats {
        feature_dim: f,
        sse: vec![0.0; count],
        gram: vec![0.0; count * tri_len(f)],
        feature_y: vec![0.0; count * f],
    };
    for c in 0..count {
        let p: Vec<f64> = batch.params[c * per..(c + 1) * per]
            .iter()
            .map(|&v| v as f64)
            .collect();
        // Unpack into (weights[out][in], bias[out]) per hidden layer.
        let mut layers: Vec<(Vec<Vec<f64>>, Vec<f64>)> = Vec::new();
        let mut at = 0;
        let mut width = batch.inputs;
        for &h in &batch.hidden {
            let w: Vec<Vec<f64>> = (0..h)
                .map(|o| p[at + o * width..at + (o + 1) * width].to_vec())
                .collect();
            at += h * width;
            let b = p[at..at + h].to_vec();
            at += h;
            layers.push((w, b));
            width = h;
        }
        let out_w = p[at..at + width].to_vec();
        let out_b = p[at + width];
        for n in 0..samples.len() {
            let mut a: Vec<f64> = samples.z[n * samples.rank..(n + 1) * samples.rank]
                .iter()
                .map(|&v| v as f64)
                .collect();
            for (w, b) in &layers {
                a = w
                    .iter()
                    .zip(b)
                    .map(|(row, bo)| {
                        let s: f64 = row.iter().zip(&a).map(|(x, y)| x * y).sum::<f64>() + bo;
                        s.max(0.0)
                    })
                    .collect();
            }
            let y = samples.y[n] as f64;
            let out: f64 = out_w.iter().zip(&a).map(|(x, y)| x * y).sum::<f64>() + out_b;
            stats.sse[c] += (out - y) * (out - y);
            a.push(1.0);
            let mut k = c * tri_len(f);
            for i in 0..f {
                stats.feature_y[c * f + i] += a[i] * y;
                for j in i..f {
                    stats.gram[k] += a[i] * a[j];
                    k += 1;
                }
            }
        }
    }
    Ok(stats)
}
