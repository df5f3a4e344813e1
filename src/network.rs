//! The model: a fully connected ReLU network. Layers of (weights out x in, bias out), ReLU between
//! layers, one linear scalar output. Teachers, candidates and learned models are all this type,
//! so one code path evaluates everything.

/// Errors about network files and shapes.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The layer shapes do not chain (or the last layer is not scalar).
    #[error("network shape: {0}")]
    Shape(String),
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

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| p * q).sum()
}
