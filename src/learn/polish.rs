//! Polish (after the search): refine every weight of the lifted network jointly, the first layer
//! in the full d-dimensional input, by mini-batch Adam with a small step on the training split.
//! The subspace from second moments is a few hundredths of a radian off, which dominates the
//! error of steep teachers; this moves the first layer out of the estimated subspace. The epoch
//! with the best validation MSE is kept, and only if it beats the starting network.

use crate::network::Network;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

/// Settings of the polish.
#[derive(Clone, Debug, PartialEq)]
pub struct PolishConfig {
    /// Passes over the training split.
    pub epochs: usize,
    /// Adam step size.
    pub learning_rate: f64,
    /// Samples per Adam step.
    pub batch_size: usize,
    /// Adam runs on at most this many training rows and picks its epoch on at most this many
    /// validation rows (the first ones); `before` and `after` are on all validation rows.
    pub max_rows: usize,
    /// Seed of the sample order.
    pub seed: u64,
}

impl Default for PolishConfig {
    fn default() -> Self {
        PolishConfig {
            epochs: 30,
            learning_rate: 1e-3,
            batch_size: 256,
            max_rows: 100_000,
            seed: 0,
        }
    }
}

/// Samples in d dimensions held in memory (f32, row-major).
pub struct DenseSamples<'a> {
    pub dim: usize,
    pub x: &'a [f32],
    pub y: &'a [f32],
}

/// The first `rows` rows of dense samples.
fn head<'a>(s: &DenseSamples<'a>, rows: usize) -> DenseSamples<'a> {
    let n = s.y.len().min(rows);
    DenseSamples {
        dim: s.dim,
        x: &s.x[..n * s.dim],
        y: &s.y[..n],
    }
}

/// Outcome of a polish.
#[derive(Clone, Debug)]
pub struct PolishResult {
    /// The better of the start and the best epoch, by validation MSE.
    pub network: Network,
    /// Validation MSE of the start.
    pub before: f64,
    /// Validation MSE of the best epoch (may be worse than `before`; then it is not kept).
    pub after: f64,
    /// True when the polished network replaced the start.
    pub kept: bool,
    /// Epochs run.
    pub epochs: usize,
}

fn flatten(net: &Network) -> Vec<f64> {
    net.layers
        .iter()
        .flat_map(|l| l.weights.iter().chain(&l.bias).copied())
        .collect()
}

fn unflatten(net: &mut Network, p: &[f64]) {
    let mut at = 0;
    for l in &mut net.layers {
        let nw = l.weights.len();
        l.weights.copy_from_slice(&p[at..at + nw]);
        at += nw;
        let nb = l.bias.len();
        l.bias.copy_from_slice(&p[at..at + nb]);
        at += nb;
    }
}

/// Mean squared error over dense samples (f64, parallel, deterministic).
pub fn dense_mse(net: &Network, s: &DenseSamples) -> f64 {
    crate::search::mse_on_rows(net, s.dim, s.x, s.y)
}

/// Adds the gradient of (F(x) - y)^2 with respect to the flattened parameters into `grad`.
fn accumulate_gradient(net: &Network, x: &[f64], y: f64, grad: &mut [f64]) {
    let last = net.layers.len() - 1;
    // Forward, keeping every layer's input and pre-activation.
    let mut inputs: Vec<Vec<f64>> = Vec::with_capacity(net.layers.len());
    let mut pres: Vec<Vec<f64>> = Vec::with_capacity(net.layers.len());
    let mut cur = x.to_vec();
    for (li, l) in net.layers.iter().enumerate() {
        let pre: Vec<f64> = (0..l.outputs)
            .map(|o| l.bias[o] + l.row(o).iter().zip(&cur).map(|(a, b)| a * b).sum::<f64>())
            .collect();
        let next = if li < last {
            pre.iter().map(|v| v.max(0.0)).collect()
        } else {
            pre.clone()
        };
        inputs.push(std::mem::replace(&mut cur, next));
        pres.push(pre);
    }
    // Backward.
    let offsets: Vec<usize> = net
        .layers
        .iter()
        .scan(0, |at, l| {
            let o = *at;
            *at += l.weights.len() + l.bias.len();
            Some(o)
        })
        .collect();
    let mut delta = vec![2.0 * (cur[0] - y)];
    for li in (0..=last).rev() {
        let l = &net.layers[li];
        let off = offsets[li];
        let input = &inputs[li];
        for (o, &d) in delta.iter().enumerate() {
            if d == 0.0 {
                continue;
            }
            let g = &mut grad[off + o * l.inputs..off + (o + 1) * l.inputs];
            for (gi, &a) in g.iter_mut().zip(input) {
                *gi += d * a;
            }
            grad[off + l.weights.len() + o] += d;
        }
        if li > 0 {
            let prev_pre = &pres[li - 1];
            delta = (0..l.inputs)
                .map(|i| {
                    if prev_pre[i] <= 0.0 {
                        return 0.0;
                    }
                    delta
                        .iter()
                        .enumerate()
                        .map(|(o, &d)| d * l.weights[o * l.inputs + i])
                        .sum()
                })
                .collect();
        }
    }
}

/// Polishes `start` on `train`, scoring each epoch on `val`; see the module docs.
pub fn polish(
    start: &Network,
    train: &DenseSamples,
    val: &DenseSamples,
    config: &PolishConfig,
) -> PolishResult {
    let before = dense_mse(start, val);
    let cap = config.max_rows.max(1);
    let train = &head(train, cap);
    let val_full = val;
    let val = &head(val, cap);
    let mut net = start.clone();
    let mut p = flatten(&net);
    let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let mut t = 0i32;
    let mut order: Vec<usize> = (0..train.y.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut best = (f64::INFINITY, p.clone());
    let batch = config.batch_size.max(1);
    for _ in 0..config.epochs {
        order.shuffle(&mut rng);
        for idx in order.chunks(batch) {
            // Eight fixed parts of the mini-batch, summed in order (deterministic).
            let part = idx.len().div_ceil(8).max(1);
            let parts: Vec<Vec<f64>> = idx
                .par_chunks(part)
                .map(|ids| {
                    let mut g = vec![0.0; p.len()];
                    for &i in ids {
                        let x: Vec<f64> = train.x[i * train.dim..(i + 1) * train.dim]
                            .iter()
                            .map(|&v| v as f64)
                            .collect();
                        accumulate_gradient(&net, &x, train.y[i] as f64, &mut g);
                    }
                    g
                })
                .collect();
            let mut grad = vec![0.0; p.len()];
            for g in &parts {
                grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
            t += 1;
            let scale = 1.0 / idx.len() as f64;
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            for k in 0..p.len() {
                let g = grad[k] * scale;
                m[k] = b1 * m[k] + (1.0 - b1) * g;
                v[k] = b2 * v[k] + (1.0 - b2) * g * g;
                p[k] -= config.learning_rate * (m[k] / c1) / ((v[k] / c2).sqrt() + eps);
            }
            unflatten(&mut net, &p);
        }
        let mse = dense_mse(&net, val);
        if mse < best.0 {
            best = (mse, p.clone());
        }
    }
    let after = if config.epochs == 0 {
        before
    } else if val.y.len() == val_full.y.len() {
        best.0
    } else {
        let mut n = start.clone();
        unflatten(&mut n, &best.1);
        dense_mse(&n, val_full)
    };
    let kept = after < before;
    let mut network = start.clone();
    if kept {
        unflatten(&mut network, &best.1);
    }
    PolishResult {
        network,
        before,
        after,
        kept,
        epochs: config.epochs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Layer;

    #[test]
    fn parameter_gradient_matches_finite_differences() {
        let net = Network::new(
            3,
            vec![
                Layer::new(3, 2, vec![0.5, -0.2, 0.3, -0.4, 0.8, 0.1], vec![0.1, 0.2]).unwrap(),
                Layer::new(2, 2, vec![1.0, -0.5, 0.3, 0.7], vec![0.05, -0.1]).unwrap(),
                Layer::new(2, 1, vec![1.2, -0.9], vec![0.3]).unwrap(),
            ],
        )
        .unwrap();
        let x = [0.7, -0.3, 1.1];
        let y = 0.4;
        let p = flatten(&net);
        let mut grad = vec![0.0; p.len()];
        accumulate_gradient(&net, &x, y, &mut grad);
        let loss = |q: &[f64]| {
            let mut n = net.clone();
            unflatten(&mut n, q);
            (n.forward_one_f64(&x) - y).powi(2)
        };
        for k in 0..p.len() {
            let h = 1e-6;
            let (mut up, mut down) = (p.clone(), p.clone());
            up[k] += h;
            down[k] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!(
                (numeric - grad[k]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "parameter {k}: analytic {} numeric {numeric}",
                grad[k]
            );
        }
    }
}
