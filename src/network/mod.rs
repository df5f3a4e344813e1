//! The model: a fully connected ReLU network. Layers of (weights out x in, bias out), ReLU between
//! layers, one linear scalar output, optionally preceded by a linear projection z = P x (r x d,
//! no bias, no ReLU) in the compact form a learner returns. Teachers, candidates and learned
//! models are all this type, so one code path evaluates everything. The file format is in
//! `format`, the errors in `error`.

mod error;
mod format;

pub use error::NetworkError;
pub use format::{FORMAT, FORMAT_VERSION};

use crate::linalg::{axpy, dot, dot_wide, each_dot_wide};
use rayon::prelude::*;

/// Rows per block in the batched forward passes (one rayon task per block).
const FORWARD_BLOCK_ROWS: usize = 256;

/// One affine layer: `out = weights * in + bias`. Weights are row-major `outputs x inputs`.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    /// Row-major `outputs x inputs`.
    pub weights: Vec<f64>,
    pub bias: Vec<f64>,
}

impl Layer {
    /// A layer from row-major weights; checks the sizes.
    pub fn new(
        inputs: usize,
        outputs: usize,
        weights: Vec<f64>,
        bias: Vec<f64>,
    ) -> Result<Self, NetworkError> {
        if weights.len() != inputs * outputs || bias.len() != outputs {
            return Err(NetworkError::Shape(format!(
                "layer {outputs}x{inputs} needs {} weights and {outputs} biases, got {} and {}",
                inputs * outputs,
                weights.len(),
                bias.len()
            )));
        }
        Ok(Layer {
            inputs,
            outputs,
            weights,
            bias,
        })
    }

    /// Row `o` of the weight matrix.
    pub fn row(&self, o: usize) -> &[f64] {
        &self.weights[o * self.inputs..(o + 1) * self.inputs]
    }
}

/// A ReLU network on R^d with a scalar output: ReLU after every layer but the last, optionally
/// preceded by a linear projection z = P x.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// d, the length of x.
    pub input_dim: usize,
    /// `r x d` rows P applied to x first (no bias, no ReLU): the compact form of a network
    /// that depends on x only through z = P x. `layers[0]` then takes r inputs. `None`: the
    /// layers act on x directly.
    pub projection: Option<Vec<Vec<f64>>>,
    pub layers: Vec<Layer>,
    /// Orthonormal rows (r x d, row-major) spanning the relevant subspace, once a learner found it.
    pub subspace: Option<Vec<Vec<f64>>>,
}

impl Network {
    /// Builds a network and checks that the layers chain from `input_dim` to one output.
    pub fn new(input_dim: usize, layers: Vec<Layer>) -> Result<Self, NetworkError> {
        let net = Network {
            input_dim,
            projection: None,
            layers,
            subspace: None,
        };
        net.validate()?;
        Ok(net)
    }

    /// The compact network x -> `small`(P x) with P the `r x d` `projection` rows (r =
    /// `small.input_dim`); `subspace` is set to an orthonormal basis of the projection's rows.
    pub fn with_projection(
        small: &Network,
        projection: &[Vec<f64>],
    ) -> Result<Network, NetworkError> {
        if small.projection.is_some() {
            return Err(NetworkError::Shape(
                "with_projection: the small network already has a projection".into(),
            ));
        }
        let d = projection.first().map_or(0, Vec::len);
        if projection.len() != small.input_dim || d == 0 {
            return Err(NetworkError::Shape(format!(
                "with_projection: the network takes {} inputs but the projection has {} rows of length {d}; pass one row of length d >= 1 per network input",
                small.input_dim,
                projection.len()
            )));
        }
        let flat: Vec<f64> = projection.iter().flatten().copied().collect();
        let net = Network {
            input_dim: d,
            projection: Some(projection.to_vec()),
            layers: small.layers.clone(),
            subspace: Some(row_space_basis(&flat, projection.len(), d, 1e-9)),
        };
        net.validate()?;
        Ok(net)
    }

    /// Width of the input to `layers[0]`: the projection's rows when there is one, else d.
    pub fn layer_input_dim(&self) -> usize {
        self.projection.as_ref().map_or(self.input_dim, Vec::len)
    }

    /// z = P x for one sample (x itself without a projection).
    fn project_one(&self, x: &[f64]) -> Vec<f64> {
        match &self.projection {
            Some(rows) => rows.iter().map(|p| dot_wide(p, x)).collect(),
            None => x.to_vec(),
        }
    }

    /// Checks the chain of shapes.
    pub fn validate(&self) -> Result<(), NetworkError> {
        if self.layers.is_empty() {
            return Err(NetworkError::Shape(
                "a network needs at least one layer".into(),
            ));
        }
        if let Some(rows) = &self.projection {
            if rows.is_empty() || rows.iter().any(|r| r.len() != self.input_dim) {
                return Err(NetworkError::Shape(format!(
                    "the projection needs at least one row, each of input_dim = {} entries",
                    self.input_dim
                )));
            }
        }
        let mut width = self.layer_input_dim();
        for (i, l) in self.layers.iter().enumerate() {
            if l.inputs != width {
                return Err(NetworkError::Shape(format!(
                    "layer {i} takes {} inputs but the previous layer gives {width}",
                    l.inputs
                )));
            }
            if l.weights.len() != l.inputs * l.outputs || l.bias.len() != l.outputs {
                return Err(NetworkError::Shape(format!(
                    "layer {i}: weight or bias size does not match {}x{}",
                    l.outputs, l.inputs
                )));
            }
            width = l.outputs;
        }
        if width != 1 {
            return Err(NetworkError::Shape(format!(
                "the last layer must have one output, it has {width}"
            )));
        }
        if let Some(rows) = &self.subspace {
            if rows.iter().any(|r| r.len() != self.input_dim) {
                return Err(NetworkError::Shape(
                    "subspace rows must have input_dim entries".into(),
                ));
            }
        }
        Ok(())
    }

    /// Hidden widths (all layers but the last).
    pub fn hidden_widths(&self) -> Vec<usize> {
        self.layers[..self.layers.len() - 1]
            .iter()
            .map(|l| l.outputs)
            .collect()
    }

    /// Output for one sample, in f64 (the reference twin used by tests).
    pub fn forward_one_f64(&self, x: &[f64]) -> f64 {
        let mut cur: Vec<f64> = self.project_one(x);
        let last = self.layers.len() - 1;
        for (li, l) in self.layers.iter().enumerate() {
            let mut next = l.bias.clone();
            for (o, v) in next.iter_mut().enumerate() {
                *v += dot(l.row(o), &cur);
                if li < last {
                    *v = v.max(0.0);
                }
            }
            cur = next;
        }
        cur[0]
    }
}

/// Orthonormal rows spanning the row space of a `rows x cols` row-major matrix: the right
/// singular vectors whose singular value exceeds `rel_tol` times the largest one, in order of
/// decreasing singular value. Empty for the zero matrix.
pub fn row_space_basis(matrix: &[f64], rows: usize, cols: usize, rel_tol: f64) -> Vec<Vec<f64>> {
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    let m = nalgebra::DMatrix::from_row_slice(rows, cols, matrix);
    let svd = m.svd(false, true);
    let v_t = match svd.v_t {
        Some(v_t) => v_t,
        None => return Vec::new(),
    };
    let sigma = &svd.singular_values;
    let largest = sigma.iter().cloned().fold(0.0f64, f64::max);
    if largest <= 0.0 || !largest.is_finite() {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..sigma.len())
        .filter(|&i| sigma[i] > rel_tol * largest)
        .collect();
    order.sort_by(|&i, &j| sigma[j].total_cmp(&sigma[i]));
    order
        .into_iter()
        .map(|i| v_t.row(i).iter().cloned().collect())
        .collect()
}

impl Network {
    /// Outputs of one block of rows (row-major `x`, `rows x input_dim`) in f64, written to `out`.
    /// Activations are kept row-major per layer; every dot product runs over contiguous memory.
    fn forward_block(&self, x: &[f64], out: &mut [f64]) {
        let rows = out.len();
        let last = self.layers.len() - 1;
        let mut cur: Vec<f64> = match &self.projection {
            Some(p) => {
                let mut z = vec![0.0; rows * p.len()];
                for (row, dst) in x
                    .chunks_exact(self.input_dim)
                    .zip(z.chunks_exact_mut(p.len()))
                {
                    each_dot_wide(p.len(), |o| &p[o], row, |o, v| dst[o] = v);
                }
                z
            }
            None => x.to_vec(),
        };
        let mut width = self.layer_input_dim();
        for (li, layer) in self.layers.iter().enumerate() {
            let mut next = vec![0.0f64; rows * layer.outputs];
            for (act, dst) in cur
                .chunks_exact(width)
                .zip(next.chunks_exact_mut(layer.outputs))
            {
                each_dot_wide(layer.outputs, |o| layer.row(o), act, |o, v| dst[o] = v);
                for (v, b) in dst.iter_mut().zip(&layer.bias) {
                    let pre = b + *v;
                    *v = if li < last { pre.max(0.0) } else { pre };
                }
            }
            cur = next;
            width = layer.outputs;
        }
        out.copy_from_slice(&cur);
    }

    /// Outputs for `rows` samples (row-major `x`, `rows x input_dim`), f32 in and out.
    ///
    /// Arithmetic is f64 throughout: each block of rows is widened to f64 once, run through the
    /// f64 weights, and only the outputs are rounded to f32. So the result equals
    /// [`Network::forward_f64`] on the widened inputs up to one f32 rounding (relative 6e-8),
    /// even when a teacher's output is a cancelling sum of many units. Blocks of 256 rows run in
    /// parallel on rayon when there is more than one block.
    ///
    /// # Panics
    /// If `x.len() != rows * input_dim` (a caller bug, not a data error).
    pub fn forward_f32(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let d = self.input_dim;
        assert_eq!(
            x.len(),
            rows * d,
            "forward_f32: x has {} values, expected rows ({rows}) x input_dim ({d})",
            x.len()
        );
        let mut out = vec![0f32; rows];
        let run = |(xb, ob): (&[f32], &mut [f32])| {
            let wide: Vec<f64> = xb.iter().map(|&v| v as f64).collect();
            let mut res = vec![0f64; ob.len()];
            self.forward_block(&wide, &mut res);
            for (o, r) in ob.iter_mut().zip(res) {
                *o = r as f32;
            }
        };
        if d == 0 {
            // No inputs: every row gives the same constant output.
            let y = self.forward_one_f64(&[]) as f32;
            out.iter_mut().for_each(|o| *o = y);
        } else if rows > FORWARD_BLOCK_ROWS {
            x.par_chunks(FORWARD_BLOCK_ROWS * d)
                .zip(out.par_chunks_mut(FORWARD_BLOCK_ROWS))
                .for_each(run);
        } else if rows > 0 {
            run((x, &mut out));
        }
        out
    }

    /// Outputs for `rows` samples (row-major `x`, `rows x input_dim`) in f64: the twin of
    /// [`Network::forward_f32`], same blocking and parallelism.
    ///
    /// # Panics
    /// If `x.len() != rows * input_dim`.
    pub fn forward_f64(&self, x: &[f64], rows: usize) -> Vec<f64> {
        let d = self.input_dim;
        assert_eq!(
            x.len(),
            rows * d,
            "forward_f64: x has {} values, expected rows ({rows}) x input_dim ({d})",
            x.len()
        );
        let mut out = vec![0f64; rows];
        if d == 0 {
            let y = self.forward_one_f64(&[]);
            out.iter_mut().for_each(|o| *o = y);
        } else if rows > FORWARD_BLOCK_ROWS {
            x.par_chunks(FORWARD_BLOCK_ROWS * d)
                .zip(out.par_chunks_mut(FORWARD_BLOCK_ROWS))
                .for_each(|(xb, ob)| self.forward_block(xb, ob));
        } else if rows > 0 {
            self.forward_block(x, &mut out);
        }
        out
    }

    /// Gradient of the output with respect to x at one point (length `input_dim`), by
    /// back-propagation through the active units. A unit whose pre-activation is exactly 0 counts
    /// as inactive (ReLU'(0) = 0).
    ///
    /// # Panics
    /// If `x.len() != input_dim`.
    pub fn gradient(&self, x: &[f64]) -> Vec<f64> {
        let mut grad = Vec::new();
        self.output_and_gradient(x, &mut Vec::new(), &mut grad);
        grad
    }

    /// Output at one point, with the gradient with respect to x written into `grad`: the
    /// allocation-free form of [`Network::gradient`] for passes over many samples. `scratch`
    /// keeps every hidden layer's activations between calls.
    ///
    /// # Panics
    /// If `x.len() != input_dim`.
    pub fn output_and_gradient(
        &self,
        x: &[f64],
        scratch: &mut Vec<Vec<f64>>,
        grad: &mut Vec<f64>,
    ) -> f64 {
        assert_eq!(
            x.len(),
            self.input_dim,
            "gradient: x has {} values, expected input_dim = {}",
            x.len(),
            self.input_dim
        );
        let z;
        let x = match &self.projection {
            Some(_) => {
                z = self.project_one(x);
                &z[..]
            }
            None => x,
        };
        let last = self.layers.len() - 1;
        scratch.resize(last, Vec::new());
        // Forward pass; a unit is active when its activation is > 0.
        for li in 0..last {
            let (done, rest) = scratch.split_at_mut(li);
            let input = if li == 0 { x } else { &done[li - 1] };
            let layer = &self.layers[li];
            let out = &mut rest[0];
            out.clear();
            out.extend(
                (0..layer.outputs)
                    .map(|o| (layer.bias[o] + dot_wide(layer.row(o), input)).max(0.0)),
            );
        }
        let top = &self.layers[last];
        let input = if last == 0 { x } else { &scratch[last - 1] };
        let output = top.bias[0] + dot_wide(top.row(0), input);
        // Backward pass: grad holds d(output)/d(input of layer li).
        grad.clear();
        grad.extend_from_slice(top.row(0));
        let mut below = Vec::new();
        for li in (0..last).rev() {
            let layer = &self.layers[li];
            below.clear();
            below.resize(layer.inputs, 0.0);
            for (o, (&go, &a)) in grad.iter().zip(&scratch[li]).enumerate() {
                if a > 0.0 && go != 0.0 {
                    for (b, &w) in below.iter_mut().zip(layer.row(o)) {
                        *b += go * w;
                    }
                }
            }
            std::mem::swap(grad, &mut below);
        }
        if let Some(p) = &self.projection {
            // d(output)/dx = P^T d(output)/dz.
            below.clear();
            below.resize(self.input_dim, 0.0);
            for (&g, row) in grad.iter().zip(p) {
                axpy(&mut below, g, row);
            }
            std::mem::swap(grad, &mut below);
        }
        output
    }

    /// Orthonormal rows spanning the row space of the first layer's weights (the relevant
    /// subspace U = rowspan W_1 of the network): right singular vectors of W_1 whose singular
    /// value exceeds 1e-9 times the largest, by decreasing singular value.
    pub fn first_layer_span(&self) -> Vec<Vec<f64>> {
        let first = self.dense_first_layer();
        row_space_basis(&first.weights, first.outputs, first.inputs, 1e-9)
    }

    /// The first layer acting on x: `layers[0]`, or W1 P with a projection.
    fn dense_first_layer(&self) -> Layer {
        let first = &self.layers[0];
        let Some(p) = &self.projection else {
            return first.clone();
        };
        let d = self.input_dim;
        let mut w = vec![0.0f64; first.outputs * d];
        for (o, dst) in w.chunks_exact_mut(d).enumerate() {
            for (&c, row) in first.row(o).iter().zip(p) {
                axpy(dst, c, row);
            }
        }
        Layer {
            inputs: d,
            outputs: first.outputs,
            weights: w,
            bias: first.bias.clone(),
        }
    }

    /// The same function with the projection folded into the first layer (W1 P): the dense
    /// form, for consumers that take plain layer stacks. Unchanged without a projection.
    pub fn dense(&self) -> Network {
        let mut layers = self.layers.clone();
        layers[0] = self.dense_first_layer();
        Network {
            input_dim: self.input_dim,
            projection: None,
            layers,
            subspace: self.subspace.clone(),
        }
    }

    /// For this network on r = `basis.len()` inputs, the equivalent network on x in R^d:
    /// `lifted(x) = self(B x)` with `B` the `r x d` basis rows, i.e. first layer `W_1 B`, later
    /// layers unchanged, and `subspace` set to the basis. The basis rows should be orthonormal
    /// (only their count and lengths are checked).
    pub fn lift(&self, basis: &[Vec<f64>]) -> Result<Network, NetworkError> {
        if self.projection.is_some() {
            return Err(NetworkError::Shape(
                "lift: the network already has a projection; lift its small network instead".into(),
            ));
        }
        let r = basis.len();
        if r != self.input_dim {
            return Err(NetworkError::Shape(format!(
                "lift: the network takes {} inputs but the basis has {r} rows; pass one basis row per network input",
                self.input_dim
            )));
        }
        let d = basis.first().map_or(0, Vec::len);
        if d == 0 {
            return Err(NetworkError::Shape(
                "lift: the basis rows are empty; pass r rows of length d >= 1".into(),
            ));
        }
        if let Some((i, row)) = basis.iter().enumerate().find(|(_, b)| b.len() != d) {
            return Err(NetworkError::Shape(format!(
                "lift: basis row {i} has {} entries but row 0 has {d}; all rows must have length d",
                row.len()
            )));
        }
        let lifted = Network {
            input_dim: d,
            projection: Some(basis.to_vec()),
            layers: self.layers.clone(),
            subspace: Some(basis.to_vec()),
        }
        .dense();
        lifted.validate()?;
        Ok(lifted)
    }

    /// Whether every weight, bias and subspace entry is finite.
    pub fn is_finite(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.weights.iter().chain(&l.bias).all(|v| v.is_finite()))
            && self
                .subspace
                .iter()
                .chain(&self.projection)
                .flatten()
                .flatten()
                .all(|v| v.is_finite())
    }
}

/// For unit tests: a network through the widths `dims` (inputs first, then each layer's
/// outputs), every weight and bias uniform on [-1, 1) from `rng`.
#[cfg(test)]
pub(crate) fn random_network(rng: &mut impl rand::RngExt, dims: &[usize]) -> Network {
    let layers = dims
        .windows(2)
        .map(|io| {
            let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            Layer::new(io[0], io[1], draw(io[0] * io[1]), draw(io[1])).unwrap()
        })
        .collect();
    Network::new(dims[0], layers).unwrap()
}

/// For unit tests of the factorised model: a two-hidden-layer network on r = 2 inputs (its
/// first layer wider than its input, so stored transposed) and a non-orthonormal 2 x 3 basis.
#[cfg(test)]
pub(crate) fn two_layer_example() -> (Network, Vec<Vec<f64>>) {
    let net = Network::new(
        2,
        vec![
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
