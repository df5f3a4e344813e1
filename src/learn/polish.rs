//! Polish (after the search): refine every weight jointly by mini-batch Adam with a small step on
//! the training split, in factorised form x -> z = B x -> the small network on z. B (r x d) is a
//! free parameter, not kept orthonormal: the lifted first layer W1 B is a rank-r layer in the
//! full input, and moving B moves the subspace. The subspace from second moments is a few
//! hundredths of a radian off, which dominates the error of steep teachers; this repairs it at
//! O(r d) per sample instead of O(h d) for the h x d lifted first layer. The epoch with the best
//! validation MSE is kept, and only if it beats the starting network.

use crate::error::{Error, Result};
use crate::network::{axpy, dot_wide, Layer, Network};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

/// Settings of the polish.
#[derive(Clone, Debug, PartialEq)]
pub struct PolishConfig {
    /// Passes over the training split.
    pub epochs: usize,
    /// Adam step size at the start; it decays linearly to zero over the epochs.
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
            // On four d = 128 teachers: 4x this diverged on parity, 2x was a little better but
            // near that edge, 0.6x ended 1.0x to 1.8x worse.
            learning_rate: 5e-3,
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
    /// The better of the start and the best epoch by validation MSE, in compact form on the
    /// d-dim input (projection B, then the small network). `subspace` is the span of B.
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

/// Mean squared error of a network on the d-dim input over dense samples (f64, parallel,
/// deterministic).
pub fn dense_mse(net: &Network, s: &DenseSamples) -> f64 {
    crate::search::mse_on_rows(net, s.dim, s.x, s.y)
}

/// Rows per part of a mini-batch: eight fixed parts summed in order, so the gradient does not
/// depend on the thread count.
const PARTS: usize = 8;
/// Rows per block when scoring.
const SCORE_BLOCK: usize = 256;

/// Where one layer of the factorised network lives in the parameter vector. Layer 0 is B
/// (linear, no bias); the others are the small network's layers.
#[derive(Clone, Copy, Debug)]
struct Slot {
    inputs: usize,
    outputs: usize,
    /// Offset of the weights; the bias, if any, follows them.
    at: usize,
    bias: bool,
    relu: bool,
    /// Weights stored transposed (inputs x outputs) and applied as axpys over the outputs, which
    /// vectorises for a wide layer fed by few inputs (the first hidden layer on r inputs) and
    /// lets inactive ReLU inputs be skipped. Otherwise rows (outputs x inputs) and dot products.
    transposed: bool,
}

impl Slot {
    fn weights(&self) -> usize {
        self.inputs * self.outputs
    }
    fn len(&self) -> usize {
        self.weights() + if self.bias { self.outputs } else { 0 }
    }
}

/// Shapes of x -> B x -> small network, with all parameters in one flat vector.
#[derive(Clone, Debug)]
struct Factored {
    slots: Vec<Slot>,
    params: usize,
    widest: usize,
    /// Run the AVX2 copies of the loops: the same operations in the same order (no FMA), so the
    /// same bits as the baseline copies, with twice the vector width.
    avx2: bool,
}

fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Work buffers of one part of a mini-batch (or one scoring block), reused across steps.
struct Scratch {
    /// Input rows widened to f64.
    x: Vec<f64>,
    /// Each layer's output (after its ReLU).
    acts: Vec<Vec<f64>>,
    delta: Vec<f64>,
    prev: Vec<f64>,
    /// Gradient of the summed squared error, in the parameter layout.
    grad: Vec<f64>,
}

impl Factored {
    fn new(small: &Network, d: usize) -> Factored {
        let mut slots = Vec::with_capacity(small.layers.len() + 1);
        let mut at = 0;
        let last = small.layers.len() - 1;
        let shapes = std::iter::once((d, small.input_dim, false, false)).chain(
            small
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| (l.inputs, l.outputs, true, i < last)),
        );
        for (inputs, outputs, bias, relu) in shapes {
            let s = Slot {
                inputs,
                outputs,
                at,
                bias,
                relu,
                transposed: outputs > inputs,
            };
            at += s.len();
            slots.push(s);
        }
        let widest = slots
            .iter()
            .map(|s| s.inputs.max(s.outputs))
            .max()
            .unwrap_or(1);
        Factored {
            slots,
            params: at,
            widest,
            avx2: avx2_available(),
        }
    }

    fn d(&self) -> usize {
        self.slots[0].inputs
    }

    /// Parameters of B (rows) and the small network, in this layout.
    fn pack(&self, small: &Network, basis: &[Vec<f64>]) -> Vec<f64> {
        let mut p = vec![0.0; self.params];
        let b: Vec<f64> = basis.iter().flatten().copied().collect();
        let weights = std::iter::once((&b[..], &[][..]))
            .chain(small.layers.iter().map(|l| (&l.weights[..], &l.bias[..])));
        for (s, (w, bias)) in self.slots.iter().zip(weights) {
            let dst = &mut p[s.at..s.at + s.len()];
            for o in 0..s.outputs {
                for i in 0..s.inputs {
                    let k = if s.transposed {
                        i * s.outputs + o
                    } else {
                        o * s.inputs + i
                    };
                    dst[k] = w[o * s.inputs + i];
                }
            }
            dst[s.weights()..].copy_from_slice(bias);
        }
        p
    }

    /// The B rows and the small network of a parameter vector.
    fn unpack(&self, p: &[f64]) -> Result<(Vec<Vec<f64>>, Network)> {
        let mut mats = self.slots.iter().map(|s| {
            let src = &p[s.at..s.at + s.len()];
            let mut w = vec![0.0; s.weights()];
            for o in 0..s.outputs {
                for i in 0..s.inputs {
                    w[o * s.inputs + i] = if s.transposed {
                        src[i * s.outputs + o]
                    } else {
                        src[o * s.inputs + i]
                    };
                }
            }
            (s, w, src[s.weights()..].to_vec())
        });
        let (b_slot, b, _) = mats.next().expect("B is always slot 0");
        let basis = b.chunks_exact(b_slot.inputs).map(<[f64]>::to_vec).collect();
        let layers = mats
            .map(|(s, w, bias)| Layer::new(s.inputs, s.outputs, w, bias))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((basis, Network::new(b_slot.outputs, layers)?))
    }

    /// The compact network on the d-dim input: projection B, then the small network;
    /// `subspace` is the span of B.
    fn compact(&self, p: &[f64]) -> Result<Network> {
        let (basis, small) = self.unpack(p)?;
        Ok(Network::with_projection(&small, &basis)?)
    }

    fn scratch(&self, rows: usize) -> Scratch {
        Scratch {
            x: vec![0.0; rows * self.d()],
            acts: self
                .slots
                .iter()
                .map(|s| vec![0.0; rows * s.outputs])
                .collect(),
            delta: vec![0.0; rows * self.widest],
            prev: vec![0.0; rows * self.widest],
            grad: vec![0.0; self.params],
        }
    }

    /// Outputs of the first `rows` rows of `s.x`, left in the last entry of `s.acts`.
    #[inline(always)]
    fn forward(&self, p: &[f64], rows: usize, s: &mut Scratch) {
        for (l, slot) in self.slots.iter().enumerate() {
            let (before, rest) = s.acts.split_at_mut(l);
            let input: &[f64] = if l == 0 { &s.x } else { &before[l - 1] };
            let (ni, no) = (slot.inputs, slot.outputs);
            let w = &p[slot.at..slot.at + slot.weights()];
            let bias = &p[slot.at + slot.weights()..slot.at + slot.len()];
            let rows_in = input.chunks_exact(ni).take(rows);
            for (a, out) in rows_in.zip(rest[0].chunks_exact_mut(no)) {
                if slot.bias {
                    out.copy_from_slice(bias);
                } else {
                    out.fill(0.0);
                }
                if slot.transposed {
                    for (&ak, wk) in a.iter().zip(w.chunks_exact(no)) {
                        if ak != 0.0 {
                            axpy(out, ak, wk);
                        }
                    }
                } else {
                    for (v, wo) in out.iter_mut().zip(w.chunks_exact(ni)) {
                        *v += dot_wide(wo, a);
                    }
                }
                if slot.relu {
                    out.iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
        }
    }

    /// Adds to `s.grad` the gradient of the summed squared error over the first `rows` rows,
    /// after [`Factored::forward`], with `s.delta` holding 2 (F(x) - y) per row.
    #[inline(always)]
    fn backward(&self, p: &[f64], rows: usize, s: &mut Scratch) {
        let Scratch {
            x,
            acts,
            delta,
            prev,
            grad,
        } = s;
        for (l, slot) in self.slots.iter().enumerate().rev() {
            let input: &[f64] = if l == 0 { x } else { &acts[l - 1] };
            let (ni, no) = (slot.inputs, slot.outputs);
            let w = &p[slot.at..slot.at + slot.weights()];
            let (gw, gb) = grad[slot.at..slot.at + slot.len()].split_at_mut(slot.weights());
            // ReLU'(0) = 0: an input that is exactly 0 after its ReLU passes no gradient.
            let masked = l > 0 && self.slots[l - 1].relu;
            let rows_in = input.chunks_exact(ni).take(rows);
            for ((a, dl), pv) in rows_in
                .zip(delta.chunks_exact(no))
                .zip(prev.chunks_exact_mut(ni))
            {
                if slot.transposed {
                    for (&ak, g) in a.iter().zip(gw.chunks_exact_mut(no)) {
                        if ak != 0.0 {
                            axpy(g, ak, dl);
                        }
                    }
                } else {
                    for (&dv, g) in dl.iter().zip(gw.chunks_exact_mut(ni)) {
                        if dv != 0.0 {
                            axpy(g, dv, a);
                        }
                    }
                }
                axpy(gb, 1.0, dl);
                if l == 0 {
                    continue;
                }
                if slot.transposed {
                    for (v, wk) in pv.iter_mut().zip(w.chunks_exact(no)) {
                        *v = dot_wide(wk, dl);
                    }
                } else {
                    pv.fill(0.0);
                    for (&dv, wo) in dl.iter().zip(w.chunks_exact(ni)) {
                        if dv != 0.0 {
                            axpy(pv, dv, wo);
                        }
                    }
                }
                if masked {
                    for (v, &ak) in pv.iter_mut().zip(a) {
                        if ak <= 0.0 {
                            *v = 0.0;
                        }
                    }
                }
            }
            // The deltas of this layer's inputs (rows x ni) are the next layer down's.
            std::mem::swap(delta, prev);
        }
    }

    /// Sets `s.grad` to the gradient of the summed squared error over the rows `ids` of `data`.
    fn gradient(&self, p: &[f64], data: &DenseSamples, ids: &[usize], s: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected at run time.
            return unsafe { self.gradient_avx2(p, data, ids, s) };
        }
        self.gradient_body(p, data, ids, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn gradient_avx2(&self, p: &[f64], data: &DenseSamples, ids: &[usize], s: &mut Scratch) {
        self.gradient_body(p, data, ids, s)
    }

    #[inline(always)]
    fn gradient_body(&self, p: &[f64], data: &DenseSamples, ids: &[usize], s: &mut Scratch) {
        let d = self.d();
        for (dst, &i) in s.x.chunks_exact_mut(d).zip(ids) {
            for (a, &b) in dst.iter_mut().zip(&data.x[i * d..(i + 1) * d]) {
                *a = b as f64;
            }
        }
        self.forward(p, ids.len(), s);
        let out = &s.acts[self.slots.len() - 1];
        for ((dl, &f), &i) in s.delta.iter_mut().zip(out).zip(ids) {
            *dl = 2.0 * (f - data.y[i] as f64);
        }
        s.grad.fill(0.0);
        self.backward(p, ids.len(), s);
    }

    /// Mean squared error over `data` (f64; fixed blocks summed in order, so deterministic).
    fn mse(&self, p: &[f64], data: &DenseSamples) -> f64 {
        let d = self.d();
        let partial: Vec<f64> = data
            .x
            .par_chunks(SCORE_BLOCK * d)
            .zip(data.y.par_chunks(SCORE_BLOCK))
            .map_init(
                || self.scratch(SCORE_BLOCK),
                |s, (xb, yb)| self.block_sse(p, xb, yb, s),
            )
            .collect();
        partial.iter().sum::<f64>() / data.y.len().max(1) as f64
    }

    /// Summed squared error over one block of rows.
    fn block_sse(&self, p: &[f64], x: &[f32], y: &[f32], s: &mut Scratch) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected at run time.
            return unsafe { self.block_sse_avx2(p, x, y, s) };
        }
        self.block_sse_body(p, x, y, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn block_sse_avx2(&self, p: &[f64], x: &[f32], y: &[f32], s: &mut Scratch) -> f64 {
        self.block_sse_body(p, x, y, s)
    }

    #[inline(always)]
    fn block_sse_body(&self, p: &[f64], x: &[f32], y: &[f32], s: &mut Scratch) -> f64 {
        for (a, &b) in s.x.iter_mut().zip(x) {
            *a = b as f64;
        }
        self.forward(p, y.len(), s);
        s.acts[self.slots.len() - 1]
            .iter()
            .zip(y)
            .map(|(&f, &y)| (f - y as f64).powi(2))
            .sum::<f64>()
    }
}

fn check_samples(what: &str, s: &DenseSamples, d: usize) -> Result<()> {
    if s.dim != d || s.x.len() != s.y.len() * d || s.y.is_empty() {
        return Err(Error::invalid(format!(
            "polish: {what} samples need at least one row of dimension {d} (got dimension {}, {} values for {} labels)",
            s.dim,
            s.x.len(),
            s.y.len()
        )));
    }
    Ok(())
}

/// Polishes `start`, a network on z = B x with B the `basis` rows (r x d, r = `start.input_dim`),
/// on `train`, scoring each epoch on `val`; see the module docs. Any network on the d-dim input
/// can be polished with the d x d identity as its basis (at O(d^2) per sample).
pub fn polish(
    start: &Network,
    basis: &[Vec<f64>],
    train: &DenseSamples,
    val: &DenseSamples,
    config: &PolishConfig,
) -> Result<PolishResult> {
    let d = basis.first().map_or(0, Vec::len);
    if basis.len() != start.input_dim || d == 0 || basis.iter().any(|b| b.len() != d) {
        return Err(Error::invalid(format!(
            "polish: the network takes {} inputs, so the basis needs that many rows of one positive length",
            start.input_dim
        )));
    }
    check_samples("training", train, d)?;
    check_samples("validation", val, d)?;
    let model = Factored::new(start, d);
    let start_p = model.pack(start, basis);
    let before = model.mse(&start_p, val);
    let cap = config.max_rows.max(1);
    let train = &head(train, cap);
    let val_full = val;
    let val = &head(val, cap);

    let mut p = start_p.clone();
    let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    let mut grad = vec![0.0; p.len()];
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    // b1^t and b2^t for Adam's bias correction.
    let (mut b1t, mut b2t) = (1.0f64, 1.0f64);
    let batch = config.batch_size.max(1);
    // The step decays linearly to zero: on four d = 128 teachers this (from 5e-3) ended 1.7x to
    // 200x below a constant 1e-3 step in the same epochs; constant 3e-3 was worse than 1e-3.
    let steps = (config.epochs * train.y.len().div_ceil(batch)) as f64;
    let mut t = 0.0f64;
    let mut order: Vec<usize> = (0..train.y.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut best = (f64::INFINITY, p.clone());
    let mut parts: Vec<Scratch> = (0..PARTS)
        .map(|_| model.scratch(batch.div_ceil(PARTS)))
        .collect();
    for _ in 0..config.epochs {
        order.shuffle(&mut rng);
        for idx in order.chunks(batch) {
            let part = idx.len().div_ceil(PARTS);
            idx.par_chunks(part)
                .zip(parts.par_iter_mut())
                .for_each(|(ids, s)| model.gradient(&p, train, ids, s));
            let used = idx.len().div_ceil(part);
            grad.copy_from_slice(&parts[0].grad);
            for s in &parts[1..used] {
                grad.iter_mut().zip(&s.grad).for_each(|(a, b)| *a += b);
            }
            let lr = config.learning_rate * (1.0 - t / steps);
            t += 1.0;
            b1t *= b1;
            b2t *= b2;
            let scale = 1.0 / idx.len() as f64;
            let (c1, c2) = (1.0 - b1t, 1.0 - b2t);
            for k in 0..p.len() {
                let g = grad[k] * scale;
                m[k] = b1 * m[k] + (1.0 - b1) * g;
                v[k] = b2 * v[k] + (1.0 - b2) * g * g;
                p[k] -= lr * (m[k] / c1) / ((v[k] / c2).sqrt() + eps);
            }
        }
        let mse = model.mse(&p, val);
        if mse < best.0 {
            best = (mse, p.clone());
        }
    }
    let after = if config.epochs == 0 {
        before
    } else if val.y.len() == val_full.y.len() {
        best.0
    } else {
        model.mse(&best.1, val_full)
    };
    let kept = after < before;
    let network = if kept {
        model.compact(&best.1)?
    } else {
        Network::with_projection(start, basis)?
    };
    Ok(PolishResult {
        network,
        before,
        after,
        kept,
        epochs: config.epochs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-hidden-layer network on r = 2 inputs and a non-orthonormal 2 x 3 basis.
    fn example() -> (Network, Vec<Vec<f64>>) {
        let net = Network::new(
            2,
            vec![
                // Wider than its input, so stored transposed; the others are stored as rows.
                Layer::new(
                    2,
                    3,
                    vec![0.5, -0.2, 0.3, -0.4, 0.8, 0.1],
                    vec![0.1, 0.2, -0.05],
                )
                .unwrap(),
                Layer::new(3, 2, vec![1.0, -0.5, 0.3, 0.7, 0.2, -0.6], vec![0.05, -0.1]).unwrap(),
                Layer::new(2, 1, vec![1.2, -0.9], vec![0.3]).unwrap(),
            ],
        )
        .unwrap();
        let basis = vec![vec![0.9, 0.1, -0.3], vec![-0.2, 0.7, 0.4]];
        (net, basis)
    }

    #[test]
    fn layout_round_trips_and_lifts() {
        let (net, basis) = example();
        let model = Factored::new(&net, 3);
        assert!(model.slots[1].transposed && !model.slots[0].transposed);
        let p = model.pack(&net, &basis);
        let (b, small) = model.unpack(&p).unwrap();
        assert_eq!((b, small), (basis.clone(), net.clone()));
        let lifted = model.compact(&p).unwrap();
        let x = [0.3, -1.2, 0.8];
        let reference = net.lift(&basis).unwrap().forward_one_f64(&x);
        assert!((lifted.forward_one_f64(&x) - reference).abs() < 1e-12);
    }

    #[test]
    fn factorised_gradient_matches_finite_differences() {
        let (net, basis) = example();
        let model = Factored::new(&net, 3);
        let p = model.pack(&net, &basis);
        // Every unit is active on some row; on the second row the first hidden layer is off.
        let x = [0.7f32, -0.3, 1.1, -0.4, 0.9, 0.2, 1.5, -0.6, -0.8];
        let y = [0.4f32, -0.2, 0.1];
        let data = DenseSamples {
            dim: 3,
            x: &x,
            y: &y,
        };
        // Every unit must be active on some row, or its gradient would be a trivial zero.
        let mut s = model.scratch(3);
        s.x.iter_mut().zip(&x).for_each(|(a, &b)| *a = b as f64);
        model.forward(&p, 3, &mut s);
        for (l, slot) in model.slots.iter().enumerate().filter(|(_, s)| s.relu) {
            for o in 0..slot.outputs {
                let active = (0..3).any(|i| s.acts[l][i * slot.outputs + o] > 0.0);
                assert!(active, "layer {l} unit {o} never active");
            }
        }
        model.gradient(&p, &data, &[0, 1, 2], &mut s);
        // Summed squared error of the lifted network, an independent evaluation path.
        let loss = |q: &[f64]| {
            let n = model.compact(q).unwrap();
            (0..3)
                .map(|i| {
                    let row: Vec<f64> = x[i * 3..(i + 1) * 3].iter().map(|&v| v as f64).collect();
                    (n.forward_one_f64(&row) - y[i] as f64).powi(2)
                })
                .sum::<f64>()
        };
        for k in 0..p.len() {
            let h = 1e-6;
            let (mut up, mut down) = (p.clone(), p.clone());
            up[k] += h;
            down[k] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!(
                (numeric - s.grad[k]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "parameter {k}: analytic {} numeric {numeric}",
                s.grad[k]
            );
        }
        assert!(s.grad.iter().all(|g| g.abs() > 1e-9), "{:?}", s.grad);
    }

    #[test]
    fn factorised_mse_equals_the_lifted_network_mse() {
        let (net, basis) = example();
        let model = Factored::new(&net, 3);
        let p = model.pack(&net, &basis);
        let x: Vec<f32> = (0..3 * 700)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let y: Vec<f32> = (0..700).map(|i| (i % 7) as f32 * 0.1).collect();
        let data = DenseSamples {
            dim: 3,
            x: &x,
            y: &y,
        };
        let reference = dense_mse(&net.lift(&basis).unwrap(), &data);
        assert!((model.mse(&p, &data) - reference).abs() < 1e-12 * reference);
    }

    #[test]
    fn avx2_and_baseline_loops_give_the_same_bits() {
        use rand::RngExt;
        // Odd sizes, so that vector loops have remainders.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut draw =
            |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (d, r, h) = (41, 3, 37);
        let net = Network::new(
            r,
            vec![
                Layer::new(r, h, draw(r * h), draw(h)).unwrap(),
                Layer::new(h, 5, draw(h * 5), draw(5)).unwrap(),
                Layer::new(5, 1, draw(5), draw(1)).unwrap(),
            ],
        )
        .unwrap();
        let basis: Vec<Vec<f64>> = (0..r).map(|_| draw(d)).collect();
        let x: Vec<f32> = draw(d * 50).iter().map(|&v| v as f32).collect();
        let y: Vec<f32> = draw(50).iter().map(|&v| v as f32).collect();
        let data = DenseSamples {
            dim: d,
            x: &x,
            y: &y,
        };
        let fast = Factored::new(&net, d);
        let slow = Factored {
            avx2: false,
            ..fast.clone()
        };
        let p = fast.pack(&net, &basis);
        let ids: Vec<usize> = (0..50).rev().collect();
        let (mut a, mut b) = (fast.scratch(50), slow.scratch(50));
        fast.gradient(&p, &data, &ids, &mut a);
        slow.gradient(&p, &data, &ids, &mut b);
        assert!(a.grad.iter().any(|&g| g != 0.0));
        assert_eq!(a.grad, b.grad);
        assert_eq!(fast.mse(&p, &data).to_bits(), slow.mse(&p, &data).to_bits());
    }

    #[test]
    fn polish_gives_the_same_bits_on_any_thread_count() {
        use rand::RngExt;
        let (net, basis) = example();
        // Labels from a tilted basis, so that the polish has something to move.
        let truth = net
            .lift(&[vec![0.9, 0.2, -0.3], vec![-0.2, 0.7, 0.5]])
            .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let x: Vec<f32> = (0..3 * 700).map(|_| rng.random_range(-2.0..2.0)).collect();
        let y: Vec<f32> = x
            .chunks_exact(3)
            .map(|r| truth.forward_one_f64(&[r[0] as f64, r[1] as f64, r[2] as f64]) as f32)
            .collect();
        let train = DenseSamples {
            dim: 3,
            x: &x[..3 * 500],
            y: &y[..500],
        };
        let val = DenseSamples {
            dim: 3,
            x: &x[3 * 500..],
            y: &y[500..],
        };
        // Batches of 40 split into uneven parts, a short last batch, and capped validation.
        let cfg = PolishConfig {
            epochs: 3,
            batch_size: 40,
            max_rows: 150,
            ..PolishConfig::default()
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| polish(&net, &basis, &train, &val, &cfg).unwrap())
        };
        let (one, three) = (run(1), run(3));
        assert!(one.kept && one.after < one.before, "{one:?}");
        assert_eq!(one.network, three.network);
        assert_eq!(one.after.to_bits(), three.after.to_bits());
    }

    #[test]
    fn bad_polish_requests_are_errors() {
        let (net, basis) = example();
        let x = [0.0f32; 6];
        let y = [0.0f32; 2];
        let ok = DenseSamples {
            dim: 3,
            x: &x,
            y: &y,
        };
        let cfg = PolishConfig::default();
        assert!(polish(&net, &basis[..1], &ok, &ok, &cfg).is_err());
        let wrong_dim = DenseSamples {
            dim: 2,
            x: &x[..4],
            y: &y,
        };
        assert!(polish(&net, &basis, &wrong_dim, &ok, &cfg).is_err());
        let empty = DenseSamples {
            dim: 3,
            x: &[],
            y: &[],
        };
        assert!(polish(&net, &basis, &ok, &empty, &cfg).is_err());
    }
}
