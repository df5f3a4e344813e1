//! [`FitMoments`] on all CPU cores: rows in fixed blocks (so the sums do not depend on thread
//! timing), weights stored input-major so the small network's layers and the d x r cross
//! products run as axpys over long, contiguous rows.
//!
//! For r <= [`crate::linalg::LANES`] the dot products with r results (z = B x, and the gradient
//! with respect to z pulled through the first layer) are summed as `dot` sums them, each from
//! -0.0 with its terms in order, but all r side by side in registers instead of one long chain
//! after another (`linalg::dots_in_lanes`: the same additions, so the same bits, without
//! waiting on each add's latency). An AVX2 copy of the block sums is chosen at run time (no
//! FMA: the same bits again).

use crate::data::{for_each_chunk, SampleSource};
use crate::error::Result;
use crate::linalg::{axpy, dot, dots_in_lanes, lanes_of};
use crate::moments::{check_fit_request, FitMoments};
use crate::network::Network;
use rayon::prelude::*;

/// Rows per block: each block's partial sums are added in block order.
const BLOCK_ROWS: usize = 512;

/// One layer with its weights transposed: `weights_t[i * outputs + o]` = W[o][i].
struct LayerT {
    inputs: usize,
    outputs: usize,
    weights_t: Vec<f64>,
    /// `weights_t` as [`lanes_of`] lays it out (entry (o, i) is W[o][i]), when the layer has
    /// at most LANES inputs: the gradient's way down through it.
    lanes: Option<Vec<f64>>,
    bias: Vec<f64>,
}

fn transposed(fit: &Network) -> Vec<LayerT> {
    fit.layers
        .iter()
        .map(|l| {
            let mut weights_t = vec![0.0; l.inputs * l.outputs];
            for o in 0..l.outputs {
                for i in 0..l.inputs {
                    weights_t[i * l.outputs + o] = l.weights[o * l.inputs + i];
                }
            }
            LayerT {
                inputs: l.inputs,
                outputs: l.outputs,
                lanes: lanes_of(&weights_t, l.inputs, l.outputs),
                weights_t,
                bias: l.bias.clone(),
            }
        })
        .collect()
}

/// Per-block sums, with the cross products kept r x d (sum e g x^T) for long axpys.
struct Partial {
    rows: u64,
    sse: f64,
    cross_t: Vec<f64>,
    gram: Vec<f64>,
}

/// Work buffers of one block.
struct Scratch {
    x: Vec<f64>,
    z: Vec<f64>,
    acts: Vec<Vec<f64>>,
    grad: Vec<f64>,
    below: Vec<f64>,
}

/// Output h(z), and the gradient with respect to z in `s.grad`.
fn value_and_gradient(layers: &[LayerT], s: &mut Scratch) -> f64 {
    let last = layers.len() - 1;
    for (li, l) in layers[..last].iter().enumerate() {
        let (done, rest) = s.acts.split_at_mut(li);
        let input = if li == 0 { &s.z } else { &done[li - 1] };
        let out = &mut rest[0];
        out.clear();
        out.extend_from_slice(&l.bias);
        for (i, &v) in input.iter().enumerate() {
            if v != 0.0 {
                axpy(out, v, &l.weights_t[i * l.outputs..(i + 1) * l.outputs]);
            }
        }
        out.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    let top = &layers[last];
    let input = if last == 0 { &s.z } else { &s.acts[last - 1] };
    // The output layer has one unit: its transposed weights are its row.
    let value = top.bias[0] + dot(&top.weights_t, input);
    s.grad.clear();
    s.grad.extend_from_slice(&top.weights_t);
    for li in (0..last).rev() {
        let l = &layers[li];
        // Mask the incoming gradient by the units' activity, then pull it through W.
        s.grad.iter_mut().zip(&s.acts[li]).for_each(|(g, &a)| {
            if a <= 0.0 {
                *g = 0.0
            }
        });
        s.below.clear();
        match &l.lanes {
            Some(t) => {
                s.below.resize(l.inputs, 0.0);
                dots_in_lanes(&s.grad, t, &mut s.below);
            }
            None => s.below.extend(
                (0..l.inputs)
                    .map(|i| dot(&s.grad, &l.weights_t[i * l.outputs..(i + 1) * l.outputs])),
            ),
        }
        std::mem::swap(&mut s.grad, &mut s.below);
    }
    value
}

/// What every block of a pass reads: d, B (and B as [`lanes_of`] lays it out, when r is at
/// most LANES), the fit's layers, and whether to run the AVX2 copy of the block sums.
struct Pass<'a> {
    d: usize,
    basis: &'a [Vec<f64>],
    basis_lanes: Option<Vec<f64>>,
    layers: Vec<LayerT>,
    avx2: bool,
}

impl Pass<'_> {
    /// [`Pass::block_sums_body`], in its AVX2 copy when `avx2`.
    fn block_sums(&self, xs: &[f32], ys: &[f32]) -> Partial {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected at run time.
            return unsafe { self.block_sums_avx2(xs, ys) };
        }
        self.block_sums_body(xs, ys)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn block_sums_avx2(&self, xs: &[f32], ys: &[f32]) -> Partial {
        self.block_sums_body(xs, ys)
    }

    /// The sums of one block of rows.
    #[inline(always)]
    fn block_sums_body(&self, xs: &[f32], ys: &[f32]) -> Partial {
        let (d, basis, layers) = (self.d, self.basis, &self.layers);
        let r = basis.len();
        let mut p = Partial {
            rows: 0,
            sse: 0.0,
            cross_t: vec![0.0; r * d],
            gram: vec![0.0; r * r],
        };
        let mut s = Scratch {
            x: vec![0.0; d],
            z: vec![0.0; r],
            acts: layers[..layers.len() - 1]
                .iter()
                .map(|l| Vec::with_capacity(l.outputs))
                .collect(),
            grad: Vec::new(),
            below: Vec::new(),
        };
        for (row, &y) in xs.chunks_exact(d).zip(ys) {
            s.x.iter_mut().zip(row).for_each(|(a, &b)| *a = b as f64);
            match &self.basis_lanes {
                Some(t) => dots_in_lanes(&s.x, t, &mut s.z),
                None => {
                    for (zj, b) in s.z.iter_mut().zip(basis) {
                        *zj = dot(b, &s.x);
                    }
                }
            }
            let e = y as f64 - value_and_gradient(layers, &mut s);
            p.rows += 1;
            p.sse += e * e;
            for (a, &ga) in s.grad.iter().enumerate() {
                axpy(&mut p.gram[a * r..(a + 1) * r], ga, &s.grad);
                axpy(&mut p.cross_t[a * d..(a + 1) * d], e * ga, &s.x);
            }
        }
        p
    }
}

pub(crate) fn fit_moments(
    source: &dyn SampleSource,
    basis: &[Vec<f64>],
    fit: &Network,
    progress: &indicatif::ProgressBar,
) -> Result<FitMoments> {
    check_fit_request(source, basis, fit)?;
    let d = source.dim();
    let r = basis.len();
    let pass = Pass {
        d,
        basis,
        basis_lanes: lanes_of(&basis.concat(), r, d),
        layers: transposed(fit),
        avx2: super::trainer::avx2_available(),
    };
    let mut total = FitMoments::zeros(d, r);
    for_each_chunk(source, 1 << 16, |_, xs, ys| {
        let parts: Vec<Partial> = xs
            .par_chunks(BLOCK_ROWS * d)
            .zip(ys.par_chunks(BLOCK_ROWS))
            .map(|(xb, yb)| pass.block_sums(xb, yb))
            .collect();
        for p in parts {
            total.rows += p.rows;
            total.sse += p.sse;
            for (c, v) in total.gram.iter_mut().zip(&p.gram) {
                *c += v;
            }
            for j in 0..r {
                for i in 0..d {
                    total.cross[i * r + j] += p.cross_t[j * d + i];
                }
            }
        }
        progress.inc(ys.len() as u64);
        Ok(())
    })?;
    Ok(total)
}
