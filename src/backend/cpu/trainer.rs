//! The trainer's passes on all CPU cores: minibatch forward and backward of the factorised model
//! x -> z = B x -> small network (gradient sums for the host's Adam), and the normal equations
//! of the sphere-net features.
//!
//! Determinism: a minibatch is cut into [`PARTS`] fixed parts whose gradients are summed in
//! order, and the normal equations are summed over fixed row blocks in order, so the results do
//! not depend on the thread count. The arithmetic is f64 throughout (x widened from f32); AVX2
//! copies of the loops are chosen at run time (same operations in the same order, no FMA, so
//! the same bits as the baseline copies).

use super::project::{project_block, project_f64};
use crate::backend::trainer::{Adam, FactoredShape, NormalEquations, SphereFeatures};
use crate::data::{for_each_chunk, SampleSource};
use crate::error::{Error, Result};
use crate::linalg::{axpy, each_dot_wide};
use crate::network::Network;
use rayon::prelude::*;
use std::borrow::Cow;

/// Parts of a minibatch: summed in order, so the gradient does not depend on the thread count.
pub(crate) const PARTS: usize = 8;

pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Outputs from which a layer fed by a ReLU is stored transposed (see [`Factored::new`]).
const WIDE_RELU_FED: usize = 128;

/// Where one layer lives in the CPU's parameter vector and in the canonical one.
#[derive(Clone, Copy, Debug)]
struct Slot {
    inputs: usize,
    outputs: usize,
    /// Offset of the weights in the CPU layout; the bias, if any, follows them.
    at: usize,
    /// Offset of the weights in the canonical layout ([`FactoredShape`]).
    canonical: usize,
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

/// The factorised model in the CPU's layout. With `with_basis` the first slot is B and the
/// inputs are x; without, the inputs are z = B x (computed once per window) and B is fixed.
#[derive(Clone, Debug)]
pub(crate) struct Factored {
    slots: Vec<Slot>,
    /// Length of the CPU parameter vector.
    params: usize,
    canonical_params: usize,
    widest: usize,
    /// Whether B is trained (the first slot); otherwise the inputs are z.
    with_basis: bool,
    /// Run the AVX2 copies of the loops.
    pub(crate) avx2: bool,
}

/// Work buffers of one part of a minibatch (or one scoring block), reused across steps.
pub(crate) struct Scratch {
    /// Input rows in f64 (x, or z when the basis is fixed).
    pub(crate) x: Vec<f64>,
    /// Labels of the rows.
    pub(crate) y: Vec<f64>,
    /// Each layer's output (after its ReLU).
    acts: Vec<Vec<f64>>,
    delta: Vec<f64>,
    prev: Vec<f64>,
    /// Indices of a row's active inputs to a layer, or of the nonzero terms of a sum.
    active: Vec<usize>,
    /// Gradient of the summed squared error, in the CPU layout.
    pub(crate) grad: Vec<f64>,
}

impl Factored {
    pub(crate) fn new(shape: &FactoredShape, with_basis: bool) -> Factored {
        let mut slots = Vec::with_capacity(shape.widths.len());
        let mut at = 0;
        let layers = shape.layers();
        let last = layers.len() - 1;
        let basis = with_basis.then_some((shape.input_dim, shape.rank(), 0, false, false));
        let small = layers
            .iter()
            .enumerate()
            .map(|(i, &(inputs, outputs, canonical))| (inputs, outputs, canonical, true, i < last));
        for (inputs, outputs, canonical, bias, relu) in basis.into_iter().chain(small) {
            let fed_by_relu = slots.last().is_some_and(|s: &Slot| s.relu);
            let s = Slot {
                inputs,
                outputs,
                at,
                canonical,
                bias,
                relu,
                // A layer fed by a ReLU skips its inactive inputs only when transposed (in
                // the forward pass, the weight gradient and the input deltas): the deepen
                // stage's [300, 300] network trained 28% faster so; the deep net's [32, 32]
                // one was slower (the rows' dot products cost little at that width).
                transposed: outputs > inputs || (fed_by_relu && outputs >= WIDE_RELU_FED),
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
            canonical_params: shape.params(),
            widest,
            with_basis,
            avx2: avx2_available(),
        }
    }

    /// Width of an input row: d with the basis, r without.
    pub(crate) fn input_width(&self) -> usize {
        self.slots[0].inputs
    }

    /// Length of the CPU parameter vector.
    pub(crate) fn params(&self) -> usize {
        self.params
    }

    /// Canonical parameters into the CPU layout.
    pub(crate) fn load(&self, canonical: &[f64], p: &mut [f64]) {
        for s in &self.slots {
            let (src, dst) = (&canonical[s.canonical..], &mut p[s.at..]);
            if s.transposed {
                for o in 0..s.outputs {
                    for i in 0..s.inputs {
                        dst[i * s.outputs + o] = src[o * s.inputs + i];
                    }
                }
            } else {
                dst[..s.weights()].copy_from_slice(&src[..s.weights()]);
            }
            let w = s.weights();
            dst[w..s.len()].copy_from_slice(&src[w..s.len()]);
        }
    }

    /// A gradient in the CPU layout into the canonical one (entries of a fixed B are zero).
    pub(crate) fn store(&self, p: &[f64], canonical: &mut [f64]) {
        debug_assert_eq!(canonical.len(), self.canonical_params);
        if !self.with_basis {
            // B is fixed: its entries come before the first layer's.
            canonical[..self.slots[0].canonical].fill(0.0);
        }
        for s in &self.slots {
            let (src, dst) = (&p[s.at..], &mut canonical[s.canonical..]);
            if s.transposed {
                for o in 0..s.outputs {
                    for i in 0..s.inputs {
                        dst[o * s.inputs + i] = src[i * s.outputs + o];
                    }
                }
            } else {
                dst[..s.weights()].copy_from_slice(&src[..s.weights()]);
            }
            let w = s.weights();
            dst[w..s.len()].copy_from_slice(&src[w..s.len()]);
        }
    }

    pub(crate) fn scratch(&self, rows: usize) -> Scratch {
        Scratch {
            x: vec![0.0; rows * self.input_width()],
            y: vec![0.0; rows],
            acts: self
                .slots
                .iter()
                .map(|s| vec![0.0; rows * s.outputs])
                .collect(),
            delta: vec![0.0; rows * self.widest],
            prev: vec![0.0; rows * self.widest],
            active: Vec::with_capacity(self.widest),
            grad: vec![0.0; self.params],
        }
    }

    /// Work buffers for forward passes only (no deltas, no gradient).
    pub(crate) fn scratch_forward(&self, rows: usize) -> Scratch {
        Scratch {
            x: vec![0.0; rows * self.input_width()],
            y: Vec::new(),
            acts: self
                .slots
                .iter()
                .map(|s| vec![0.0; rows * s.outputs])
                .collect(),
            delta: Vec::new(),
            prev: Vec::new(),
            active: Vec::new(),
            grad: Vec::new(),
        }
    }

    /// Outputs of the first `rows` rows of `s.x`, left in the last entry of `s.acts`.
    #[inline(always)]
    fn forward(&self, p: &[f64], rows: usize, s: &mut Scratch) {
        self.forward_from(0, p, rows, s)
    }

    /// [`Factored::forward`] from slot `first` on, the earlier slots' outputs already in
    /// `s.acts`.
    #[inline(always)]
    fn forward_from(&self, first: usize, p: &[f64], rows: usize, s: &mut Scratch) {
        let Scratch {
            x,
            acts,
            active: live,
            ..
        } = s;
        for (l, slot) in self.slots.iter().enumerate().skip(first) {
            let (before, rest) = acts.split_at_mut(l);
            let input: &[f64] = if l == 0 { x } else { &before[l - 1] };
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
                    add_scaled(out, false, ni, |k| (a[k], &w[k * no..(k + 1) * no]), live);
                } else {
                    each_dot_wide(no, |o| &w[o * ni..(o + 1) * ni], a, |o, v| out[o] += v);
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
            active,
            grad,
            ..
        } = s;
        for (l, slot) in self.slots.iter().enumerate().rev() {
            let input: &[f64] = if l == 0 { x } else { &acts[l - 1] };
            let (ni, no) = (slot.inputs, slot.outputs);
            let w = &p[slot.at..slot.at + slot.weights()];
            let (gw, gb) = grad[slot.at..slot.at + slot.len()].split_at_mut(slot.weights());
            // The gradient sums take ROW_BLOCK rows at a time, so that each stretch of a sum
            // is loaded and stored once per block rather than once per row; within a stretch
            // the rows are still added one after another, in order (the same bits).
            let rows_in = input[..rows * ni].chunks(ROW_BLOCK * ni);
            let blocks = rows_in.zip(delta[..rows * no].chunks(ROW_BLOCK * no));
            for (b, (a, dl)) in blocks.enumerate() {
                let block = dl.len() / no;
                // The first block sets the sums (no fill of the gradient beforehand).
                let zero = b == 0;
                if slot.transposed {
                    for (k, g) in gw.chunks_exact_mut(no).enumerate() {
                        let term = |j: usize| (a[j * ni + k], &dl[j * no..(j + 1) * no]);
                        add_scaled(g, zero, block, term, active);
                    }
                } else {
                    for (o, g) in gw.chunks_exact_mut(ni).enumerate() {
                        let term = |j: usize| (dl[j * no + o], &a[j * ni..(j + 1) * ni]);
                        add_scaled(g, zero, block, term, active);
                    }
                }
                if slot.bias {
                    add_scaled(
                        gb,
                        zero,
                        block,
                        |j| (1.0, &dl[j * no..(j + 1) * no]),
                        active,
                    );
                }
            }
            if l > 0 {
                // ReLU'(0) = 0: an input that is exactly 0 after its ReLU passes no gradient.
                let masked = self.slots[l - 1].relu;
                let rows_in = input.chunks_exact(ni).take(rows);
                for ((a, dl), pv) in rows_in
                    .zip(delta.chunks_exact(no))
                    .zip(prev.chunks_exact_mut(ni))
                {
                    if slot.transposed && masked {
                        // Only the active inputs pass a gradient: their dot products alone.
                        active.clear();
                        active.extend((0..ni).filter(|&k| a[k] > 0.0));
                        pv.fill(0.0);
                        let row = |i: usize| &w[active[i] * no..(active[i] + 1) * no];
                        each_dot_wide(active.len(), row, dl, |i, v| pv[active[i]] = v);
                    } else if slot.transposed {
                        each_dot_wide(ni, |k| &w[k * no..(k + 1) * no], dl, |k, v| pv[k] = v);
                    } else {
                        add_scaled(pv, true, no, |o| (dl[o], &w[o * ni..(o + 1) * ni]), active);
                    }
                    if masked {
                        // A select, not a conditional store (a masked store is slow on AMD).
                        for (v, &ak) in pv.iter_mut().zip(a) {
                            *v = if ak > 0.0 { *v } else { 0.0 };
                        }
                    }
                }
            }
            // The deltas of this layer's inputs (rows x ni) are the next layer down's.
            std::mem::swap(delta, prev);
        }
    }

    /// Sets `s.grad` to the gradient of the summed squared error over the first `rows` rows of
    /// `s.x` and `s.y`.
    pub(crate) fn gradient(&self, p: &[f64], rows: usize, s: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected at run time.
            return unsafe { self.gradient_avx2(p, rows, s) };
        }
        self.gradient_body(p, rows, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn gradient_avx2(&self, p: &[f64], rows: usize, s: &mut Scratch) {
        self.gradient_body(p, rows, s)
    }

    #[inline(always)]
    fn gradient_body(&self, p: &[f64], rows: usize, s: &mut Scratch) {
        self.forward(p, rows, s);
        let out = &s.acts[self.slots.len() - 1];
        for ((dl, &f), &y) in s.delta.iter_mut().zip(out).zip(&s.y).take(rows) {
            *dl = 2.0 * (f - y);
        }
        if rows == 0 {
            // Otherwise the backward pass's first row block sets every entry.
            s.grad.fill(0.0);
        }
        self.backward(p, rows, s);
    }

    /// Summed squared error over the first `rows` rows of `s.x` and `s.y`.
    pub(crate) fn sse(&self, p: &[f64], rows: usize, s: &mut Scratch) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected at run time.
            return unsafe { self.sse_avx2(p, rows, s) };
        }
        self.sse_body(p, rows, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sse_avx2(&self, p: &[f64], rows: usize, s: &mut Scratch) -> f64 {
        self.sse_body(p, rows, s)
    }

    /// Outputs of the rows of `x` (at most the scratch's rows), into `out`.
    pub(crate) fn outputs(&self, p: &[f64], x: &[f32], s: &mut Scratch, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected at run time.
            return unsafe { self.outputs_avx2(p, x, s, out) };
        }
        self.outputs_body(p, x, s, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn outputs_avx2(&self, p: &[f64], x: &[f32], s: &mut Scratch, out: &mut [f32]) {
        self.outputs_body(p, x, s, out)
    }

    #[inline(always)]
    fn outputs_body(&self, p: &[f64], x: &[f32], s: &mut Scratch, out: &mut [f32]) {
        let b = self.slots[0];
        if self.with_basis && !b.transposed {
            // z = B x straight from the f32 rows (eight-lane f64 dot products), then the rest.
            let z = &mut s.acts[0][..out.len() * b.outputs];
            project_block(self.avx2, &p[b.at..b.at + b.weights()], b.inputs, x, z);
            self.forward_from(1, p, out.len(), s);
        } else {
            s.x.iter_mut().zip(x).for_each(|(a, &b)| *a = b as f64);
            self.forward(p, out.len(), s);
        }
        let last = &s.acts[self.slots.len() - 1];
        out.iter_mut().zip(last).for_each(|(o, &v)| *o = v as f32);
    }

    #[inline(always)]
    fn sse_body(&self, p: &[f64], rows: usize, s: &mut Scratch) -> f64 {
        self.forward(p, rows, s);
        s.acts[self.slots.len() - 1]
            .iter()
            .zip(&s.y)
            .take(rows)
            .map(|(&f, &y)| (f - y).powi(2))
            .sum::<f64>()
    }
}

/// Rows whose gradient terms are added in one sweep over a sum (see [`Factored::backward`]).
const ROW_BLOCK: usize = 8;

/// g += sum over j < terms of a_j v_j, where term(j) = (a_j, v_j). Each element gets its terms
/// in order of j, exactly as `terms` axpys one after another would (no FMA), but a stretch of
/// g stays in registers across the terms: 32 lanes at a time (eight independent AVX2
/// accumulators, enough to hide the add's latency), then 8, 4 and one. A term with a_j = 0 (an
/// inactive ReLU) adds nothing: from [`LIVE_TERMS`] terms on, the nonzero ones are listed once
/// in `live` (a work buffer) and only those added; fewer are all added, zeros included, which
/// costs less than a branch on a half-random activity pattern (the deep net's [32, 32] network
/// trained 16% faster without it). With `zero`, g's old values are not read: g becomes the
/// sum, with the bits of filling it with 0.0 first (the fills were 7% of that network's time).
#[inline(always)]
fn add_scaled<'a>(
    g: &mut [f64],
    zero: bool,
    terms: usize,
    term: impl Fn(usize) -> (f64, &'a [f64]),
    live: &mut Vec<usize>,
) {
    let live = (terms >= LIVE_TERMS).then(|| {
        live.clear();
        live.extend((0..terms).filter(|&j| term(j).0 != 0.0));
        &live[..]
    });
    let n = g.len();
    let (wide, eights, fours) = (n - n % 32, n - n % 8, n - n % 4);
    add_scaled_lanes::<32>(&mut g[..wide], zero, 0, terms, live, &term);
    add_scaled_lanes::<8>(&mut g[wide..eights], zero, wide, terms, live, &term);
    add_scaled_lanes::<4>(&mut g[eights..fours], zero, eights, terms, live, &term);
    add_scaled_lanes::<1>(&mut g[fours..], zero, fours, terms, live, &term);
}

/// Terms from which [`add_scaled`] lists the nonzero ones first: a wide layer's inputs (the
/// deepen stage's 300), not the gradient sums' blocks of [`ROW_BLOCK`] rows nor the deep net's
/// 32 inputs (listing those made its stage slower).
const LIVE_TERMS: usize = 128;

/// [`add_scaled`] over `g` (a multiple of W long), which starts at `offset` in the terms; the
/// nonzero terms are `live` where listed, otherwise tested one by one.
#[inline(always)]
fn add_scaled_lanes<'a, const W: usize>(
    g: &mut [f64],
    zero: bool,
    offset: usize,
    terms: usize,
    live: Option<&[usize]>,
    term: &impl Fn(usize) -> (f64, &'a [f64]),
) {
    for (c, stretch) in g.chunks_exact_mut(W).enumerate() {
        let at = offset + c * W;
        let mut t = [0.0f64; W];
        if !zero {
            t.copy_from_slice(stretch);
        }
        match live {
            Some(live) => {
                for &j in live {
                    let (a, v) = term(j);
                    let v = &v[at..at + W];
                    for i in 0..W {
                        t[i] += a * v[i];
                    }
                }
            }
            None => {
                for j in 0..terms {
                    let (a, v) = term(j);
                    let v = &v[at..at + W];
                    for i in 0..W {
                        t[i] += a * v[i];
                    }
                }
            }
        }
        stretch.copy_from_slice(&t);
    }
}

/// Rows per block of [`predict_compact`]: one forward pass over a block at a time.
const PREDICT_ROWS: usize = 32;

/// Outputs of a compact network (projection P, then a small network) for the rows of `x`, in
/// the trainer's forward pass (f64, AVX2 when present; wide layers as axpys); only the outputs
/// are rounded to f32. Each thread takes one contiguous share of the rows with one set of work
/// buffers. `None` when the network has no projection.
pub fn predict_compact(network: &Network, x: &[f32]) -> Option<Vec<f32>> {
    let projection = network.projection.as_ref()?;
    let d = network.input_dim;
    let small = Network {
        input_dim: projection.len(),
        projection: None,
        layers: network.layers.clone(),
        subspace: None,
    };
    let shape = FactoredShape::of(&small, d).ok()?;
    let canonical = shape.pack(&small, projection).ok()?;
    let model = Factored::new(&shape, true);
    let mut p = vec![0.0; model.params()];
    model.load(&canonical, &mut p);
    let rows = x.len() / d;
    let mut out = vec![0.0f32; rows];
    let share = rows
        .div_ceil(rayon::current_num_threads().max(1))
        .div_ceil(PREDICT_ROWS)
        .max(1)
        * PREDICT_ROWS;
    x.par_chunks(share * d)
        .zip(out.par_chunks_mut(share))
        .for_each(|(xs, os)| {
            let mut s = model.scratch_forward(PREDICT_ROWS);
            for (xb, ob) in xs.chunks(PREDICT_ROWS * d).zip(os.chunks_mut(PREDICT_ROWS)) {
                model.outputs(&p, xb, &mut s, ob);
            }
        });
    Some(out)
}

/// Checks a window against a shape.
pub(crate) fn check_window(
    shape: &FactoredShape,
    x: &[f32],
    y: &[f32],
    batch_size: usize,
    params: &[f64],
) -> Result<()> {
    let d = shape.input_dim;
    if d == 0
        || x.len() != y.len() * d
        || batch_size == 0
        || params.len() != shape.params()
        || shape.widths.len() < 2
        || shape.widths.contains(&0)
        || shape.widths.last() != Some(&1)
    {
        return Err(Error::invalid(format!(
            "train window: {} x values and {} labels for d = {d}, batch {batch_size}, {} parameters for widths {:?} (need {})",
            x.len(),
            y.len(),
            params.len(),
            shape.widths,
            shape.params()
        )));
    }
    Ok(())
}

/// One window's model and buffers, reused minibatch after minibatch.
struct WindowGradient<'a> {
    model: Factored,
    d: usize,
    /// With B fixed the inputs are z = B x, computed once for the window (or held by the
    /// caller, and borrowed).
    z: Option<Cow<'a, [f64]>>,
    p: Vec<f64>,
    parts: Vec<Scratch>,
    sum: Vec<f64>,
}

impl<'a> WindowGradient<'a> {
    fn new(
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        rows: usize,
        params: &[f64],
    ) -> Self {
        let d = shape.input_dim;
        let z = (!train_basis).then(|| project_f64(&params[..shape.basis_len()], d, x));
        Self::with_z(shape, z.map(Cow::Owned), rows)
    }

    /// With `z`, the window's z = B x (B fixed); without, B is trained on x.
    fn with_z(shape: &FactoredShape, z: Option<Cow<'a, [f64]>>, rows: usize) -> Self {
        let model = Factored::new(shape, z.is_none());
        let part_rows = rows.div_ceil(PARTS).max(1);
        WindowGradient {
            p: vec![0.0; model.params()],
            parts: (0..PARTS).map(|_| model.scratch(part_rows)).collect(),
            sum: vec![0.0; model.params()],
            model,
            d: shape.input_dim,
            z,
        }
    }

    /// An Adam step per minibatch of `batch_size` rows of the window, in order.
    fn steps(
        &mut self,
        x: &[f32],
        y: &[f32],
        batch_size: usize,
        params: &mut [f64],
        adam: &mut Adam,
    ) {
        let mut grad = vec![0.0; params.len()];
        let rows = y.len();
        // On one of the pool's threads: each minibatch's parts are then shared out from
        // there, where from this thread every minibatch would be handed to the pool and
        // waited for (two context switches a minibatch).
        rayon::scope(|_| {
            for start in (0..rows).step_by(batch_size) {
                let len = batch_size.min(rows - start);
                self.minibatch(x, y, start, len, params, &mut grad);
                adam.step(&grad, len, params);
            }
        });
    }

    /// The gradient sum over rows `start .. start + len` of the window into `grad` (the
    /// [`FactoredShape`] layout); PARTS parts summed in order, so the same bits on any thread
    /// count.
    fn minibatch(
        &mut self,
        x: &[f32],
        y: &[f32],
        start: usize,
        len: usize,
        params: &[f64],
        grad: &mut [f64],
    ) {
        let (model, d, z) = (&self.model, self.d, &self.z);
        let w = model.input_width();
        model.load(params, &mut self.p);
        let p = &self.p;
        let part = len.div_ceil(PARTS);
        let used = len.div_ceil(part);
        self.parts[..used]
            .par_iter_mut()
            .enumerate()
            .for_each(|(k, s)| {
                let a = start + k * part;
                let n = part.min(start + len - a);
                match z {
                    Some(z) => s.x[..n * w].copy_from_slice(&z[a * w..(a + n) * w]),
                    None => s.x[..n * w]
                        .iter_mut()
                        .zip(&x[a * d..(a + n) * d])
                        .for_each(|(t, &v)| *t = v as f64),
                }
                s.y[..n]
                    .iter_mut()
                    .zip(&y[a..a + n])
                    .for_each(|(t, &v)| *t = v as f64);
                model.gradient(p, n, s);
            });
        self.sum.copy_from_slice(&self.parts[0].grad);
        for s in &self.parts[1..used] {
            self.sum.iter_mut().zip(&s.grad).for_each(|(a, b)| *a += b);
        }
        model.store(&self.sum, grad);
    }
}

/// [`crate::backend::Backend::train_window`] on the CPU.
pub fn train_window(
    shape: &FactoredShape,
    train_basis: bool,
    x: &[f32],
    y: &[f32],
    batch_size: usize,
    params: &mut [f64],
    adam: &mut Adam,
) -> Result<()> {
    check_window(shape, x, y, batch_size, params)?;
    WindowGradient::new(shape, train_basis, x, batch_size, params)
        .steps(x, y, batch_size, params, adam);
    Ok(())
}

/// [`train_window`] with B fixed, on rows whose z = B x (f64, as [`train_window`] computes it
/// from x) the caller holds: the same steps, so the same bits.
pub fn train_window_on_z(
    shape: &FactoredShape,
    z: &[f64],
    y: &[f32],
    batch_size: usize,
    params: &mut [f64],
    adam: &mut Adam,
) -> Result<()> {
    let r = shape.rank();
    if z.len() != y.len() * r {
        return Err(Error::invalid(format!(
            "train window: {} z values for {} rows of rank {r}",
            z.len(),
            y.len()
        )));
    }
    check_window(shape, &[], &[], batch_size, params)?;
    WindowGradient::with_z(shape, Some(Cow::Borrowed(z)), batch_size).steps(
        &[],
        y,
        batch_size,
        params,
        adam,
    );
    Ok(())
}

/// [`crate::backend::Backend::gradient_sum`] on the CPU: one minibatch of [`train_window`].
pub fn gradient_sum(
    shape: &FactoredShape,
    train_basis: bool,
    x: &[f32],
    y: &[f32],
    params: &[f64],
) -> Result<Vec<f64>> {
    let mut grad = vec![0.0; shape.params()];
    if y.is_empty() {
        check_window(shape, x, y, 1, params)?;
        return Ok(grad);
    }
    check_window(shape, x, y, y.len(), params)?;
    let mut window = WindowGradient::new(shape, train_basis, x, y.len(), params);
    window.minibatch(x, y, 0, y.len(), params, &mut grad);
    Ok(grad)
}

/// Gradient of the summed squared error of the factorised model over every row of `x` and `y`
/// (one minibatch, one thread), in the [`FactoredShape`] layout, f64 throughout; B's entries
/// are zero unless `train_basis`. The twin device gradients are tested against.
pub fn window_gradient(
    shape: &FactoredShape,
    train_basis: bool,
    x: &[f32],
    y: &[f32],
    params: &[f64],
) -> Result<Vec<f64>> {
    check_window(shape, x, y, y.len().max(1), params)?;
    let d = shape.input_dim;
    let model = Factored::new(shape, train_basis);
    let rows = y.len();
    let mut s = model.scratch(rows);
    if train_basis {
        s.x.iter_mut().zip(x).for_each(|(t, &v)| *t = v as f64);
    } else {
        s.x.copy_from_slice(&project_f64(&params[..shape.basis_len()], d, x));
    }
    s.y.iter_mut().zip(y).for_each(|(t, &v)| *t = v as f64);
    let mut p = vec![0.0; model.params()];
    model.load(params, &mut p);
    model.gradient(&p, rows, &mut s);
    let mut grad = vec![0.0; shape.params()];
    model.store(&s.grad, &mut grad);
    Ok(grad)
}

/// Rows per block of the normal equations: partial sums of fixed blocks are added in order.
const NORMAL_BLOCK_ROWS: usize = 4096;
/// Rows whose features are computed together before their outer products are added.
const FEATURE_ROWS: usize = 64;

/// Adds phi phi^T (upper triangle, packed) for each row of `phi` (rows x f), skipping zeros.
#[inline(always)]
fn add_outer_body(phi: &[f64], f: usize, gram: &mut [f64]) {
    for row in phi.chunks_exact(f) {
        let mut at = 0;
        for i in 0..f {
            let a = row[i];
            if a != 0.0 {
                axpy(&mut gram[at..at + f - i], a, &row[i..]);
            }
            at += f - i;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_outer_avx2(phi: &[f64], f: usize, gram: &mut [f64]) {
    add_outer_body(phi, f, gram)
}

/// [`add_outer_body`], in its AVX2 copy when `avx2` (AVX2 detected by the caller).
pub(crate) fn add_outer(avx2: bool, phi: &[f64], f: usize, gram: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { add_outer_avx2(phi, f, gram) };
    }
    let _ = avx2;
    add_outer_body(phi, f, gram)
}

/// The normal equations of one block of rows.
fn normal_block(features: &SphereFeatures, avx2: bool, x: &[f32], y: &[f32]) -> NormalEquations {
    let d = features.basis.len() / features.rank;
    let (r, f) = (features.rank, features.len());
    let mut sums = NormalEquations::zeros(f);
    let mut z = vec![0.0f64; FEATURE_ROWS * r];
    let mut phi = vec![0.0f64; FEATURE_ROWS * f];
    let mut one = Vec::with_capacity(f);
    for (xb, yb) in x.chunks(FEATURE_ROWS * d).zip(y.chunks(FEATURE_ROWS)) {
        let n = yb.len();
        project_block(avx2, &features.basis, d, xb, &mut z[..n * r]);
        for ((zr, dst), &label) in z.chunks_exact(r).zip(phi.chunks_exact_mut(f)).zip(yb) {
            features.of_z(zr, &mut one);
            dst.copy_from_slice(&one);
            axpy(&mut sums.rhs, label as f64, &one);
        }
        add_outer(avx2, &phi[..n * f], f, &mut sums.gram);
    }
    sums.rows = y.len() as u64;
    sums
}

/// [`crate::backend::Backend::feature_normal_equations`] on the CPU.
pub fn feature_normal_equations(
    source: &dyn SampleSource,
    features: &SphereFeatures,
    progress: &indicatif::ProgressBar,
) -> Result<NormalEquations> {
    let d = source.dim();
    if features.rank == 0
        || features.basis.len() != features.rank * d
        || !features.directions.len().is_multiple_of(features.rank)
    {
        return Err(Error::invalid(format!(
            "sphere-net normal equations: a basis of {} values and directions of {} values for r = {} and d = {d}",
            features.basis.len(),
            features.directions.len(),
            features.rank
        )));
    }
    let avx2 = avx2_available();
    let mut total = NormalEquations::zeros(features.len());
    for_each_chunk(source, 16 * NORMAL_BLOCK_ROWS, |_, x, y| {
        let parts: Vec<NormalEquations> = x
            .par_chunks(NORMAL_BLOCK_ROWS * d)
            .zip(y.par_chunks(NORMAL_BLOCK_ROWS))
            .map(|(xb, yb)| normal_block(features, avx2, xb, yb))
            .collect();
        parts.iter().for_each(|p| total.add(p));
        progress.inc(y.len() as u64);
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    use crate::network::two_layer_example as example;

    fn loaded(model: &Factored, x: &[f32], y: &[f32]) -> Scratch {
        let mut s = model.scratch(y.len());
        s.x.iter_mut().zip(x).for_each(|(a, &b)| *a = b as f64);
        s.y.iter_mut().zip(y).for_each(|(a, &b)| *a = b as f64);
        s
    }

    /// A network r -> h1 -> h2 -> 1 (`widths` = [r, h1, h2]), a basis of r rows on d inputs
    /// and `rows` samples, all uniform on [-1, 1) from `seed`.
    fn random_case(
        seed: u64,
        d: usize,
        widths: [usize; 3],
        rows: usize,
    ) -> (Network, Vec<Vec<f64>>, Vec<f32>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let [r, h1, h2] = widths;
        let net = crate::network::random_network(&mut rng, &[r, h1, h2, 1]);
        let mut draw =
            |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let basis = (0..r).map(|_| draw(d)).collect();
        let x = draw(d * rows).iter().map(|&v| v as f32).collect();
        let y = draw(rows).iter().map(|&v| v as f32).collect();
        (net, basis, x, y)
    }

    #[test]
    fn layouts_round_trip() {
        let (net, basis) = example();
        let shape = FactoredShape::of(&net, 3).unwrap();
        let canonical = shape.pack(&net, &basis).unwrap();
        assert_eq!(canonical.len(), shape.params());
        assert_eq!(
            shape.unpack(&canonical).unwrap(),
            (basis.clone(), net.clone())
        );
        for with_basis in [true, false] {
            let model = Factored::new(&shape, with_basis);
            assert!(model.slots[usize::from(with_basis)].transposed);
            let mut p = vec![0.0; model.params()];
            model.load(&canonical, &mut p);
            let mut back = vec![1.0; shape.params()];
            model.store(&p, &mut back);
            let skip = if with_basis { 0 } else { shape.basis_len() };
            assert!(back[..skip].iter().all(|&v| v == 0.0));
            assert_eq!(back[skip..], canonical[skip..]);
        }
    }

    /// A window of z = B x handed over gives the bits of the same window of x with B fixed.
    #[test]
    fn a_window_on_z_gives_the_bits_of_a_window_on_x() {
        let (net, basis) = example();
        let shape = FactoredShape::of(&net, 3).unwrap();
        let start = shape.pack(&net, &basis).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let rows = 300;
        let x: Vec<f32> = (0..rows * 3).map(|_| rng.random_range(-2.0..2.0)).collect();
        let y: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        let z = project_f64(&start[..shape.basis_len()], 3, &x);
        let (mut on_x, mut on_z) = (start.clone(), start.clone());
        let mut adam_x = Adam::new(start.len(), 1e-2, 10);
        let mut adam_z = Adam::new(start.len(), 1e-2, 10);
        train_window(&shape, false, &x, &y, 64, &mut on_x, &mut adam_x).unwrap();
        train_window_on_z(&shape, &z, &y, 64, &mut on_z, &mut adam_z).unwrap();
        assert_ne!(on_x, start);
        assert_eq!(on_x, on_z);
        assert!(train_window_on_z(&shape, &z[1..], &y, 64, &mut on_z, &mut adam_z).is_err());
    }

    #[test]
    fn factorised_gradient_matches_finite_differences() {
        let (net, basis) = example();
        let shape = FactoredShape::of(&net, 3).unwrap();
        let model = Factored::new(&shape, true);
        let canonical = shape.pack(&net, &basis).unwrap();
        let mut p = vec![0.0; model.params()];
        model.load(&canonical, &mut p);
        // Every unit is active on some row; on the second row the first hidden layer is off.
        let x = [0.7f32, -0.3, 1.1, -0.4, 0.9, 0.2, 1.5, -0.6, -0.8];
        let y = [0.4f32, -0.2, 0.1];
        let mut s = loaded(&model, &x, &y);
        model.forward(&p, 3, &mut s);
        for (l, slot) in model.slots.iter().enumerate().filter(|(_, s)| s.relu) {
            for o in 0..slot.outputs {
                let active = (0..3).any(|i| s.acts[l][i * slot.outputs + o] > 0.0);
                assert!(active, "layer {l} unit {o} never active");
            }
        }
        model.gradient(&p, 3, &mut s);
        let mut grad = vec![0.0; shape.params()];
        model.store(&s.grad, &mut grad);
        // Summed squared error of the lifted network, an independent evaluation path.
        let loss = |q: &[f64]| {
            let n = shape.compact(q).unwrap();
            (0..3)
                .map(|i| {
                    let row: Vec<f64> = x[i * 3..(i + 1) * 3].iter().map(|&v| v as f64).collect();
                    (n.forward_one_f64(&row) - y[i] as f64).powi(2)
                })
                .sum::<f64>()
        };
        for k in 0..canonical.len() {
            let h = 1e-6;
            let (mut up, mut down) = (canonical.clone(), canonical.clone());
            up[k] += h;
            down[k] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!(
                (numeric - grad[k]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "parameter {k}: analytic {} numeric {numeric}",
                grad[k]
            );
        }
        assert!(grad.iter().all(|g| g.abs() > 1e-9), "{grad:?}");
    }

    #[test]
    fn add_scaled_gives_the_bits_of_axpys_in_order() {
        // 77 = 2 x 32 + 8 + 4 + 1: every lane width; some coefficients zero; few terms (tested
        // in place) and many (listed first).
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut draw =
            |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let n = 77;
        for terms in [9, LIVE_TERMS + 5] {
            let vs: Vec<Vec<f64>> = (0..terms).map(|_| draw(n)).collect();
            let mut coefs = draw(terms);
            coefs[2] = 0.0;
            coefs[7] = 0.0;
            let start = draw(n);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            // From g, and (`zero`) from a g filled with zeros, whatever g held.
            for (zero, from) in [(false, start.clone()), (true, vec![0.0; n])] {
                let mut want = from;
                for (&a, v) in coefs.iter().zip(&vs) {
                    if a != 0.0 {
                        axpy(&mut want, a, v);
                    }
                }
                let mut got = start.clone();
                let term = |j: usize| (coefs[j], &vs[j][..]);
                add_scaled(&mut got, zero, terms, term, &mut Vec::new());
                assert_ne!(got, start);
                assert_eq!(bits(&got), bits(&want));
            }
        }
    }

    /// A layer fed by a ReLU is stored transposed, skipping inactive inputs; its gradient is the
    /// rows layout's up to the order of the sums.
    #[test]
    fn a_relu_fed_layer_gives_the_rows_layouts_gradient() {
        let (d, h) = (9, WIDE_RELU_FED + 3);
        let (net, basis, x, y) = random_case(8, d, [3, h, h], 40);
        let shape = FactoredShape::of(&net, d).unwrap();
        let canonical = shape.pack(&net, &basis).unwrap();
        let skipping = Factored::new(&shape, true);
        assert!(skipping.slots[2].transposed && !skipping.slots[3].transposed);
        let mut rows = skipping.clone();
        rows.slots[2].transposed = false;
        let gradient = |model: &Factored| {
            let mut p = vec![0.0; model.params()];
            model.load(&canonical, &mut p);
            let mut s = loaded(model, &x, &y);
            model.gradient(&p, 40, &mut s);
            let mut g = vec![0.0; shape.params()];
            model.store(&s.grad, &mut g);
            (g, s.acts[2].clone())
        };
        let ((a, acts), (b, _)) = (gradient(&skipping), gradient(&rows));
        // Some of the middle layer's inputs are inactive, so something was skipped.
        assert!(acts.contains(&0.0) && acts.iter().any(|&v| v > 0.0));
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= 1e-12 * scale, "{u} against {v}");
        }
    }

    #[test]
    fn avx2_and_baseline_loops_give_the_same_bits() {
        // Odd sizes, so that vector loops have remainders; the middle layer is fed by a ReLU
        // and wide enough to be stored transposed.
        let (d, r) = (41, 3);
        let (net, basis, x, y) = random_case(3, d, [r, 37, WIDE_RELU_FED + 3], 50);
        let shape = FactoredShape::of(&net, d).unwrap();
        let fast = Factored::new(&shape, true);
        let slow = Factored {
            avx2: false,
            ..fast.clone()
        };
        let mut p = vec![0.0; fast.params()];
        fast.load(&shape.pack(&net, &basis).unwrap(), &mut p);
        let (mut a, mut b) = (loaded(&fast, &x, &y), loaded(&slow, &x, &y));
        fast.gradient(&p, 50, &mut a);
        slow.gradient(&p, 50, &mut b);
        assert!(a.grad.iter().any(|&g| g != 0.0));
        assert_eq!(a.grad, b.grad);
        assert_eq!(
            fast.sse(&p, 50, &mut a).to_bits(),
            slow.sse(&p, 50, &mut b).to_bits()
        );
        // The projection kernel's two copies agree too.
        let flat: Vec<f64> = basis.iter().flatten().copied().collect();
        let (mut z1, mut z2) = (vec![0.0; 50 * r], vec![0.0; 50 * r]);
        project_block(avx2_available(), &flat, d, &x, &mut z1);
        project_block(false, &flat, d, &x, &mut z2);
        assert_eq!(z1, z2);
    }
}
