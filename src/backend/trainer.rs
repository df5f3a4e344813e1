//! What the trainer passes read and return, shared by every backend: the factorised model
//! x -> z = B x -> small ReLU network as one flat parameter vector, the host's Adam, and the
//! normal equations of the sphere-net features.
//!
//! The parameter layout is the one a kernel reads: B first (r x d, row-major, no bias), then for
//! each layer of the small network its weights (outputs x inputs, row-major) and its bias. The
//! host keeps the parameters and Adam's moments in f64; a device may compute in f32 and return
//! its sums widened to f64.

use crate::error::{Error, Result};
use crate::network::{Layer, Network};

/// Shapes of x (d) -> z = B x (r) -> hidden ReLU layers -> one linear output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactoredShape {
    /// d, the length of x.
    pub input_dim: usize,
    /// r, then the widths of the small network's layers; the last is 1.
    pub widths: Vec<usize>,
}

impl FactoredShape {
    /// The shape of x -> `small`(B x) for x of length `input_dim` (`small` acts on z, so it has
    /// no projection of its own).
    pub fn of(small: &Network, input_dim: usize) -> Result<FactoredShape> {
        if small.projection.is_some() || input_dim == 0 {
            return Err(Error::invalid(
                "trainer: the small network acts on z = B x (no projection of its own) and d >= 1",
            ));
        }
        let mut widths = vec![small.input_dim];
        widths.extend(small.layers.iter().map(|l| l.outputs));
        Ok(FactoredShape { input_dim, widths })
    }

    /// r, the number of basis rows.
    pub fn rank(&self) -> usize {
        self.widths[0]
    }

    /// Length of B in the parameter vector (r d).
    pub fn basis_len(&self) -> usize {
        self.rank() * self.input_dim
    }

    /// (inputs, outputs, offset of the weights) of each small-network layer; its bias follows
    /// its weights.
    pub fn layers(&self) -> Vec<(usize, usize, usize)> {
        let mut at = self.basis_len();
        self.widths
            .windows(2)
            .map(|w| {
                let l = (w[0], w[1], at);
                at += w[0] * w[1] + w[1];
                l
            })
            .collect()
    }

    /// Length of the parameter vector.
    pub fn params(&self) -> usize {
        self.basis_len()
            + self
                .widths
                .windows(2)
                .map(|w| w[0] * w[1] + w[1])
                .sum::<usize>()
    }

    /// The parameter vector of B (`basis`, r rows of length d) and `small`.
    pub fn pack(&self, small: &Network, basis: &[Vec<f64>]) -> Result<Vec<f64>> {
        if FactoredShape::of(small, self.input_dim)? != *self
            || basis.len() != self.rank()
            || basis.iter().any(|b| b.len() != self.input_dim)
        {
            return Err(Error::invalid(format!(
                "trainer: the basis ({} rows) and the network do not match the shape {:?} on d = {}",
                basis.len(),
                self.widths,
                self.input_dim
            )));
        }
        let mut p = Vec::with_capacity(self.params());
        basis.iter().for_each(|b| p.extend_from_slice(b));
        for l in &small.layers {
            p.extend_from_slice(&l.weights);
            p.extend_from_slice(&l.bias);
        }
        Ok(p)
    }

    /// B's rows and the small network of a parameter vector.
    pub fn unpack(&self, p: &[f64]) -> Result<(Vec<Vec<f64>>, Network)> {
        if p.len() != self.params() {
            return Err(Error::invalid(format!(
                "trainer: {} parameters for a shape that has {}",
                p.len(),
                self.params()
            )));
        }
        let basis = p[..self.basis_len()]
            .chunks_exact(self.input_dim)
            .map(<[f64]>::to_vec)
            .collect();
        let layers = self
            .layers()
            .into_iter()
            .map(|(i, o, at)| {
                Layer::new(
                    i,
                    o,
                    p[at..at + i * o].to_vec(),
                    p[at + i * o..at + i * o + o].to_vec(),
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((basis, Network::new(self.rank(), layers)?))
    }

    /// The compact network on x: projection B, then the small network.
    pub fn compact(&self, p: &[f64]) -> Result<Network> {
        let (basis, small) = self.unpack(p)?;
        Ok(Network::with_projection(&small, &basis)?)
    }
}

/// Adam on the host, with a step size that decays linearly to zero over `total_steps`;
/// [`Adam::decay_over`] shortens the decay from the present step (a trainer that must end by a
/// deadline).
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    /// b1^t and b2^t for the bias correction.
    b1t: f64,
    b2t: f64,
    /// The step size at `decay_start`.
    learning_rate: f64,
    /// The step at which the present linear decay began.
    decay_start: f64,
    /// The step at which the step size reaches zero.
    total_steps: f64,
    steps: f64,
}

const B1: f64 = 0.9;
const B2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Adam {
    /// Adam for `params` parameters, starting at `learning_rate` and reaching zero after
    /// `total_steps` steps.
    pub fn new(params: usize, learning_rate: f64, total_steps: usize) -> Adam {
        Adam {
            m: vec![0.0; params],
            v: vec![0.0; params],
            b1t: 1.0,
            b2t: 1.0,
            learning_rate,
            decay_start: 0.0,
            total_steps: total_steps.max(1) as f64,
            steps: 0.0,
        }
    }

    /// From the next step on, the step size falls linearly from its present value to zero
    /// over `steps` steps (at least one).
    pub fn decay_over(&mut self, steps: usize) {
        self.learning_rate = self.current_rate();
        self.decay_start = self.steps;
        self.total_steps = self.steps + steps.max(1) as f64;
    }

    /// The step size the next step takes.
    pub fn current_rate(&self) -> f64 {
        let span = self.total_steps - self.decay_start;
        self.learning_rate * (1.0 - (self.steps - self.decay_start) / span).max(0.0)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps as usize
    }

    /// Advances the step count and returns this step's scalars: the step size and the bias
    /// corrections 1 - b1^t and 1 - b2^t (what a device running the step needs).
    pub fn next_step(&mut self) -> AdamStep {
        let lr = self.current_rate();
        self.steps += 1.0;
        self.b1t *= B1;
        self.b2t *= B2;
        AdamStep {
            learning_rate: lr,
            c1: 1.0 - self.b1t,
            c2: 1.0 - self.b2t,
        }
    }

    /// The first and second moment estimates, for a device that runs the steps and hands them
    /// back.
    pub fn moments_mut(&mut self) -> (&mut [f64], &mut [f64]) {
        (&mut self.m, &mut self.v)
    }

    /// One step from the gradient of the summed squared error over `rows` rows (the mean is
    /// taken here).
    pub fn step(&mut self, grad_sum: &[f64], rows: usize, params: &mut [f64]) {
        let AdamStep {
            learning_rate: lr,
            c1,
            c2,
        } = self.next_step();
        let scale = 1.0 / rows.max(1) as f64;
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grad_sum)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            let g = g * scale;
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + EPS);
        }
    }
}

/// The scalars of one Adam step ([`Adam::next_step`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Step size (decayed).
    pub learning_rate: f64,
    /// 1 - b1^t.
    pub c1: f64,
    /// 1 - b2^t.
    pub c2: f64,
}

/// The sphere-net features of z = B x: relu(<u_j, z> - t_k) for each direction u_j (r values)
/// and threshold t_k (directions outer, thresholds inner), then z itself, then the constant 1.
#[derive(Clone, Debug, PartialEq)]
pub struct SphereFeatures {
    /// B, r x d row-major.
    pub basis: Vec<f64>,
    /// r.
    pub rank: usize,
    /// Directions u_j, m x r row-major.
    pub directions: Vec<f64>,
    pub thresholds: Vec<f64>,
}

impl SphereFeatures {
    /// Number of features: m t + r + 1.
    pub fn len(&self) -> usize {
        self.directions.len() / self.rank.max(1) * self.thresholds.len() + self.rank + 1
    }

    /// True when there are no features (never: the constant is always there).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The features of one projected row z (length r), appended to `out` after clearing it.
    pub fn of_z(&self, z: &[f64], out: &mut Vec<f64>) {
        out.clear();
        for u in self.directions.chunks_exact(self.rank) {
            let s: f64 = u.iter().zip(z).map(|(a, b)| a * b).sum();
            out.extend(self.thresholds.iter().map(|&t| (s - t).max(0.0)));
        }
        out.extend_from_slice(z);
        out.push(1.0);
    }
}

/// Sums of a ridge regression on features phi over rows: G = sum phi phi^T (upper triangle,
/// packed row by row), b = sum phi y.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalEquations {
    /// Number of features f.
    pub features: usize,
    /// Rows summed.
    pub rows: u64,
    /// f (f + 1) / 2 values: G[0][0..f], G[1][1..f], ...
    pub gram: Vec<f64>,
    /// f values.
    pub rhs: Vec<f64>,
}

impl NormalEquations {
    /// Zero sums for f features.
    pub fn zeros(features: usize) -> NormalEquations {
        NormalEquations {
            features,
            rows: 0,
            gram: vec![0.0; features * (features + 1) / 2],
            rhs: vec![0.0; features],
        }
    }

    /// Adds another set of sums of the same size.
    pub fn add(&mut self, other: &NormalEquations) {
        self.rows += other.rows;
        self.gram
            .iter_mut()
            .zip(&other.gram)
            .for_each(|(a, b)| *a += b);
        self.rhs
            .iter_mut()
            .zip(&other.rhs)
            .for_each(|(a, b)| *a += b);
    }
}

/// The passes a backend runs, for the stage report: which device computed each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Binned filtered moments (filtered PCA's rounds).
    Moments,
    /// Gauss-Newton sums of the refine steps.
    FitMoments,
    /// Candidate evaluation of enumerate-and-test.
    Evaluate,
    /// Network outputs (predict, validation scoring).
    Predict,
    /// z = B x.
    Project,
    /// The trainer's minibatch forward and backward passes.
    TrainWindow,
    /// Normal equations of the sphere-net features.
    FeatureNormalEquations,
}
