//! The model: a fully connected ReLU network. Layers of (weights out x in, bias out), ReLU between
//! layers, one linear scalar output. Teachers, candidates and learned models are all this type,
//! so one code path evaluates everything.
//!
//! # File format (version 1)
//!
//! A network is stored as one JSON object:
//!
//! ```json
//! {
//!   "format": "relu-fpt/network",
//!   "version": 1,
//!   "input_dim": 3,
//!   "layers": [
//!     { "weights": [[1.0, 0.0, -2.0], [0.5, 0.5, 0.5]], "bias": [0.0, 0.1] },
//!     { "weights": [[1.0, -1.0]], "bias": [0.0] }
//!   ],
//!   "subspace": null
//! }
//! ```
//!
//! - `format` is always the string `"relu-fpt/network"`; `version` is the integer `1`.
//! - `input_dim` (d >= 1) is the length of x.
//! - `layers[i].weights` holds `outputs x inputs` nested rows; `layers[0]` takes `input_dim`
//!   inputs, every later layer takes the previous layer's outputs, and the last layer has exactly
//!   one output. `layers[i].bias` has one entry per output. ReLU follows every layer but the last.
//! - `subspace` is `null` or `r x d` rows: an orthonormal basis of the relevant subspace that a
//!   learner found (metadata only; the first layer already includes it).
//! - Every number is finite. Numbers are written in shortest round-trip form, so
//!   `from_json(to_json(n)) == n` bit for bit.

use rayon::prelude::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `format` string of a network file.
pub const FORMAT: &str = "relu-fpt/network";
/// The file format version this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// Rows per block in the batched forward passes (one rayon task per block).
const FORWARD_BLOCK_ROWS: usize = 256;

/// Errors about network files and shapes. File errors name the file (`origin`), the JSON field
/// (e.g. `layers[1].weights[3]`) and what to change.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The layer shapes do not chain (or the last layer is not scalar).
    #[error("network shape: {0}")]
    Shape(String),
    /// The file could not be read.
    #[error("{}: cannot read the network file: {source}; check the path and its permissions", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file (or its temporary twin) could not be written or renamed into place.
    #[error("{}: cannot write the network file: {source}; check that the directory exists and is writable", path.display())]
    Unwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not JSON.
    #[error("{origin}: not valid JSON at line {line}, column {column}: {message}; a network file is one JSON object as written by Network::save")]
    NotJson {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The `format` field is missing or is not `"relu-fpt/network"`.
    #[error("{origin}: field \"format\" is {found}, expected \"relu-fpt/network\"; this file is not a relu-fpt network (add \"format\": \"relu-fpt/network\" if it is one)")]
    WrongFormat { origin: String, found: String },
    /// The `version` field is missing or not a version this build reads.
    #[error("{origin}: field \"version\" is {found}, this build reads version 1 only; write the file with a matching relu-fpt or set \"version\": 1 if it follows the version-1 schema")]
    UnsupportedVersion { origin: String, found: String },
    /// A field is missing or has the wrong JSON type.
    #[error("{origin}: field {field}: {problem}")]
    BadField {
        origin: String,
        field: String,
        problem: String,
    },
    /// Rows of one matrix have different lengths.
    #[error("{origin}: field {field} has {found} entries but row 0 of the same matrix has {expected}; every row of a matrix must have the same length")]
    Ragged {
        origin: String,
        field: String,
        expected: usize,
        found: usize,
    },
    /// Layer sizes do not chain (weights columns vs the previous width, bias vs weights rows).
    #[error("{origin}: field {field}: {detail}")]
    ShapeMismatch {
        origin: String,
        field: String,
        detail: String,
    },
    /// The last layer does not have exactly one output.
    #[error("{origin}: the last layer ({field}) has {outputs} outputs; the network output is a scalar, so the last layer must have exactly one weight row and one bias")]
    NotScalar {
        origin: String,
        field: String,
        outputs: usize,
    },
    /// A number is NaN or infinite (written as `null`, or as a string such as "NaN").
    #[error("{origin}: field {field} is not a finite number ({found}); network parameters must be finite numbers (NaN and infinities are written as null)")]
    NonFinite {
        origin: String,
        field: String,
        found: String,
    },
    /// A subspace row does not have `input_dim` entries.
    #[error("{origin}: field {field} has {found} entries but input_dim is {expected}; every subspace row is a vector in R^input_dim")]
    SubspaceRow {
        origin: String,
        field: String,
        expected: usize,
        found: usize,
    },
}

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

/// A ReLU network on R^d with a scalar output: ReLU after every layer but the last.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub input_dim: usize,
    pub layers: Vec<Layer>,
    /// Orthonormal rows (r x d, row-major) spanning the relevant subspace, once a learner found it.
    pub subspace: Option<Vec<Vec<f64>>>,
}

impl Network {
    /// Builds a network and checks that the layers chain from `input_dim` to one output.
    pub fn new(input_dim: usize, layers: Vec<Layer>) -> Result<Self, NetworkError> {
        let net = Network {
            input_dim,
            layers,
            subspace: None,
        };
        net.validate()?;
        Ok(net)
    }

    /// Checks the chain of shapes.
    pub fn validate(&self) -> Result<(), NetworkError> {
        if self.layers.is_empty() {
            return Err(NetworkError::Shape(
                "a network needs at least one layer".into(),
            ));
        }
        let mut width = self.input_dim;
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
        let mut cur: Vec<f64> = x.to_vec();
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

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| p * q).sum()
}

/// y += a x. Always inlined, so that callers compiled for wider vectors vectorise it for those.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    y.iter_mut().zip(x).for_each(|(u, &v)| *u += a * v);
}

/// Dot product with four independent accumulators, so the compiler can vectorise it. Always
/// inlined, so that callers compiled for wider vectors vectorise it for those.
#[inline(always)]
pub(crate) fn dot_wide(a: &[f64], b: &[f64]) -> f64 {
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
        let mut cur: Vec<f64> = x.to_vec();
        let mut width = self.input_dim;
        for (li, layer) in self.layers.iter().enumerate() {
            let mut next = vec![0.0f64; rows * layer.outputs];
            for (act, dst) in cur
                .chunks_exact(width)
                .zip(next.chunks_exact_mut(layer.outputs))
            {
                for (o, v) in dst.iter_mut().enumerate() {
                    let pre = layer.bias[o] + dot_wide(layer.row(o), act);
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
        output
    }

    /// Orthonormal rows spanning the row space of the first layer's weights (the relevant
    /// subspace U = rowspan W_1 of the network): right singular vectors of W_1 whose singular
    /// value exceeds 1e-9 times the largest, by decreasing singular value.
    pub fn first_layer_span(&self) -> Vec<Vec<f64>> {
        let first = &self.layers[0];
        row_space_basis(&first.weights, first.outputs, first.inputs, 1e-9)
    }

    /// For this network on r = `basis.len()` inputs, the equivalent network on x in R^d:
    /// `lifted(x) = self(B x)` with `B` the `r x d` basis rows, i.e. first layer `W_1 B`, later
    /// layers unchanged, and `subspace` set to the basis. The basis rows should be orthonormal
    /// (only their count and lengths are checked).
    pub fn lift(&self, basis: &[Vec<f64>]) -> Result<Network, NetworkError> {
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
        let first = &self.layers[0];
        let mut w = vec![0.0f64; first.outputs * d];
        for (o, dst) in w.chunks_exact_mut(d).enumerate() {
            for (&c, b) in first.row(o).iter().zip(basis) {
                for (t, &v) in dst.iter_mut().zip(b) {
                    *t += c * v;
                }
            }
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        layers.push(Layer::new(d, first.outputs, w, first.bias.clone())?);
        layers.extend(self.layers[1..].iter().cloned());
        let mut lifted = Network::new(d, layers)?;
        lifted.subspace = Some(basis.to_vec());
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
                .flatten()
                .flatten()
                .all(|v| v.is_finite())
    }

    /// The network as pretty JSON in the version-1 schema (see the module docs): one matrix row
    /// per line, numbers in shortest round-trip form. Non-finite numbers are written as `null`
    /// (which [`Network::from_json`] rejects; [`Network::save`] refuses them up front).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        s.push_str("{\n");
        s.push_str(&format!("  \"format\": \"{FORMAT}\",\n"));
        s.push_str(&format!("  \"version\": {FORMAT_VERSION},\n"));
        s.push_str(&format!("  \"input_dim\": {},\n", self.input_dim));
        s.push_str("  \"layers\": [\n");
        for (li, layer) in self.layers.iter().enumerate() {
            s.push_str("    {\n      \"weights\": [\n");
            for o in 0..layer.outputs {
                s.push_str("        ");
                push_vector(&mut s, layer.row(o));
                s.push_str(if o + 1 < layer.outputs { ",\n" } else { "\n" });
            }
            s.push_str("      ],\n      \"bias\": ");
            push_vector(&mut s, &layer.bias);
            s.push_str("\n    }");
            s.push_str(if li + 1 < self.layers.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        s.push_str("  ],\n");
        match &self.subspace {
            None => s.push_str("  \"subspace\": null\n"),
            Some(rows) => {
                s.push_str("  \"subspace\": [\n");
                for (i, row) in rows.iter().enumerate() {
                    s.push_str("    ");
                    push_vector(&mut s, row);
                    s.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
                }
                s.push_str("  ]\n");
            }
        }
        s.push_str("}\n");
        s
    }

    /// Parses a version-1 network file. `origin` (usually the file name) prefixes every error.
    pub fn from_json(text: &str, origin: &str) -> Result<Network, NetworkError> {
        let value: Value = serde_json::from_str(text).map_err(|e| NetworkError::NotJson {
            origin: origin.to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let p = Parser { origin };
        let obj = value.as_object().ok_or_else(|| {
            p.bad(
                "(top level)",
                format!(
                    "is {}, expected an object {{\"format\": \"{FORMAT}\", \"version\": 1, ...}}",
                    describe(&value)
                ),
            )
        })?;
        match obj.get("format") {
            Some(Value::String(f)) if f == FORMAT => {}
            other => {
                return Err(NetworkError::WrongFormat {
                    origin: origin.to_string(),
                    found: other.map_or("missing".to_string(), short),
                })
            }
        }
        match obj.get("version") {
            Some(v) if v.as_u64() == Some(FORMAT_VERSION) => {}
            other => {
                return Err(NetworkError::UnsupportedVersion {
                    origin: origin.to_string(),
                    found: other.map_or("missing".to_string(), short),
                })
            }
        }
        let input_dim = match obj.get("input_dim") {
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => n as usize,
                _ => {
                    return Err(p.bad(
                        "input_dim",
                        format!(
                            "is {}, expected an integer >= 1 (the length of x)",
                            short(v)
                        ),
                    ))
                }
            },
            None => {
                return Err(p.bad(
                    "input_dim",
                    "is missing; add \"input_dim\": d (the length of x)",
                ))
            }
        };
        let layer_values = match obj.get("layers") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(v) => {
                return Err(p.bad(
                    "layers",
                    format!(
                    "is {}, expected a non-empty array of {{\"weights\": [[..]], \"bias\": [..]}}",
                    short(v)
                ),
                ))
            }
            None => {
                return Err(p.bad(
                    "layers",
                    "is missing; add \"layers\": [{\"weights\": [[..]], \"bias\": [..]}, ..]",
                ))
            }
        };
        let mut layers = Vec::with_capacity(layer_values.len());
        let mut width = input_dim;
        for (li, lv) in layer_values.iter().enumerate() {
            let field = format!("layers[{li}]");
            let lobj = lv.as_object().ok_or_else(|| {
                p.bad(
                    &field,
                    format!(
                        "is {}, expected an object {{\"weights\": [[..]], \"bias\": [..]}}",
                        describe(lv)
                    ),
                )
            })?;
            let wfield = format!("{field}.weights");
            let wv = lobj.get("weights").ok_or_else(|| {
                p.bad(
                    &wfield,
                    "is missing; add the weights as nested rows (outputs x inputs)",
                )
            })?;
            let (outputs, cols, weights) = p.matrix(wv, &wfield)?;
            if outputs == 0 {
                return Err(p.bad(&wfield, "has no rows; a layer needs at least one output"));
            }
            if cols != width {
                let from = if li == 0 {
                    format!("input_dim is {width}")
                } else {
                    format!("layers[{}] has {width} outputs", li - 1)
                };
                return Err(NetworkError::ShapeMismatch {
                    origin: origin.to_string(),
                    field: wfield,
                    detail: format!(
                        "rows have {cols} entries but {from}; each weight row needs one entry per input of the layer"
                    ),
                });
            }
            let bfield = format!("{field}.bias");
            let bv = lobj.get("bias").ok_or_else(|| {
                p.bad(&bfield, format!("is missing; add one bias per output ({outputs} numbers, zeros for a bias-free layer)"))
            })?;
            let bias = p.vector(bv, &bfield)?;
            if bias.len() != outputs {
                return Err(NetworkError::ShapeMismatch {
                    origin: origin.to_string(),
                    field: bfield,
                    detail: format!(
                        "has {} entries but {wfield} has {outputs} rows; give one bias per output",
                        bias.len()
                    ),
                });
            }
            layers.push(Layer {
                inputs: cols,
                outputs,
                weights,
                bias,
            });
            width = outputs;
        }
        if width != 1 {
            return Err(NetworkError::NotScalar {
                origin: origin.to_string(),
                field: format!("layers[{}]", layers.len() - 1),
                outputs: width,
            });
        }
        let subspace = match obj.get("subspace") {
            None | Some(Value::Null) => None,
            Some(sv) => {
                let rows = sv.as_array().ok_or_else(|| {
                    p.bad(
                        "subspace",
                        format!("is {}, expected null or an array of rows", describe(sv)),
                    )
                })?;
                let mut out = Vec::with_capacity(rows.len());
                for (i, rv) in rows.iter().enumerate() {
                    let field = format!("subspace[{i}]");
                    let row = p.vector(rv, &field)?;
                    if row.len() != input_dim {
                        return Err(NetworkError::SubspaceRow {
                            origin: origin.to_string(),
                            field,
                            expected: input_dim,
                            found: row.len(),
                        });
                    }
                    out.push(row);
                }
                Some(out)
            }
        };
        let net = Network {
            input_dim,
            layers,
            subspace,
        };
        net.validate()?;
        Ok(net)
    }

    /// Writes the network as JSON ([`Network::to_json`]) to `path`: first to a temporary file in
    /// the same directory, then renamed over `path`, so a reader never sees a half-written file.
    /// Refuses networks with non-finite numbers or broken shapes.
    pub fn save(&self, path: &Path) -> Result<(), NetworkError> {
        self.validate()?;
        let origin = path.display().to_string();
        if !self.is_finite() {
            return Err(NetworkError::NonFinite {
                origin,
                field: first_non_finite(self),
                found: "NaN or infinity in memory".into(),
            });
        }
        let text = self.to_json();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "network.json".into());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            NetworkError::Unwritable {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Reads a network file written by [`Network::save`] (or by hand in the same schema).
    pub fn load(path: &Path) -> Result<Network, NetworkError> {
        let text = std::fs::read_to_string(path).map_err(|source| NetworkError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Network::from_json(&text, &path.display().to_string())
    }
}

/// Appends `[a, b, ..]` with numbers in shortest round-trip form (non-finite as `null`).
fn push_vector(s: &mut String, v: &[f64]) {
    s.push('[');
    for (i, &x) in v.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        match serde_json::Number::from_f64(x) {
            Some(n) => s.push_str(&n.to_string()),
            None => s.push_str("null"),
        }
    }
    s.push(']');
}

/// The JSON field name of the first non-finite parameter, for error messages.
fn first_non_finite(net: &Network) -> String {
    for (li, l) in net.layers.iter().enumerate() {
        for o in 0..l.outputs {
            if let Some(j) = l.row(o).iter().position(|v| !v.is_finite()) {
                return format!("layers[{li}].weights[{o}][{j}]");
            }
        }
        if let Some(o) = l.bias.iter().position(|v| !v.is_finite()) {
            return format!("layers[{li}].bias[{o}]");
        }
    }
    for (i, row) in net.subspace.iter().flatten().enumerate() {
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return format!("subspace[{i}][{j}]");
        }
    }
    "(none)".into()
}

/// The JSON type of a value, for error messages.
fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value as short JSON text (long values cut), for error messages.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// Field readers that name the file and field in their errors.
struct Parser<'a> {
    origin: &'a str,
}

impl Parser<'_> {
    fn bad(&self, field: &str, problem: impl Into<String>) -> NetworkError {
        NetworkError::BadField {
            origin: self.origin.to_string(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    fn number(&self, v: &Value, field: &str) -> Result<f64, NetworkError> {
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(x) if x.is_finite() => Ok(x),
                _ => Err(NetworkError::NonFinite {
                    origin: self.origin.to_string(),
                    field: field.to_string(),
                    found: n.to_string(),
                }),
            },
            Value::Null => Err(NetworkError::NonFinite {
                origin: self.origin.to_string(),
                field: field.to_string(),
                found: "null".into(),
            }),
            Value::String(s)
                if matches!(
                    s.trim().to_ascii_lowercase().trim_start_matches(['+', '-']),
                    "nan" | "inf" | "infinity"
                ) =>
            {
                Err(NetworkError::NonFinite {
                    origin: self.origin.to_string(),
                    field: field.to_string(),
                    found: format!("\"{s}\""),
                })
            }
            other => Err(self.bad(field, format!("is {}, expected a number", describe(other)))),
        }
    }

    fn vector(&self, v: &Value, field: &str) -> Result<Vec<f64>, NetworkError> {
        let items = v.as_array().ok_or_else(|| {
            self.bad(
                field,
                format!("is {}, expected an array of numbers", describe(v)),
            )
        })?;
        items
            .iter()
            .enumerate()
            .map(|(i, x)| self.number(x, &format!("{field}[{i}]")))
            .collect()
    }

    /// A matrix of nested rows: (rows, columns, row-major values). Rows must have equal lengths.
    fn matrix(&self, v: &Value, field: &str) -> Result<(usize, usize, Vec<f64>), NetworkError> {
        let rows = v.as_array().ok_or_else(|| {
            self.bad(
                field,
                format!(
                    "is {}, expected an array of rows (arrays of numbers)",
                    describe(v)
                ),
            )
        })?;
        let mut flat = Vec::new();
        let mut cols = 0;
        for (i, rv) in rows.iter().enumerate() {
            let rfield = format!("{field}[{i}]");
            let row = self.vector(rv, &rfield)?;
            if i == 0 {
                cols = row.len();
            } else if row.len() != cols {
                return Err(NetworkError::Ragged {
                    origin: self.origin.to_string(),
                    field: rfield,
                    expected: cols,
                    found: row.len(),
                });
            }
            flat.extend(row);
        }
        Ok((rows.len(), cols, flat))
    }
}
