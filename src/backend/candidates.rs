//! What candidate evaluation reads and returns: samples projected onto the subspace, a batch of
//! small candidate networks, their per-candidate sums, and the input checks both evaluation
//! backends share.

use crate::error::{Error, Result};

/// Samples projected onto the recovered subspace, z = B^T x, kept in memory (N x r).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProjectedSamples {
    /// Subspace dimension r.
    pub rank: usize,
    /// N x r, row-major.
    pub z: Vec<f32>,
    /// N labels.
    pub y: Vec<f32>,
}

impl ProjectedSamples {
    /// Number of samples N.
    pub fn len(&self) -> usize {
        self.y.len()
    }
    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    /// The first `rows` rows (at least one).
    pub fn head(&self, rows: usize) -> ProjectedSamples {
        let n = self.len().min(rows.max(1));
        ProjectedSamples {
            rank: self.rank,
            z: self.z[..n * self.rank].to_vec(),
            y: self.y[..n].to_vec(),
        }
    }
}

/// C candidate networks sharing one architecture: `inputs` (= r) inputs, ReLU hidden layers of
/// the given widths, one linear output. Parameters of each candidate are packed layer by layer,
/// weights row-major (out x in) then biases, hidden layers first, then the output weights
/// (last hidden width) and the output bias.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateBatch {
    pub inputs: usize,
    pub hidden: Vec<usize>,
    /// count x params_per_candidate().
    pub params: Vec<f32>,
}

impl CandidateBatch {
    /// Parameters per candidate.
    pub fn params_per_candidate(&self) -> usize {
        let mut n = 0;
        let mut width = self.inputs;
        for &h in &self.hidden {
            n += h * width + h;
            width = h;
        }
        n + width + 1
    }

    /// Number of candidates C.
    pub fn count(&self) -> usize {
        self.params.len() / self.params_per_candidate()
    }

    /// Length of the feature vector of the last hidden layer plus the constant 1.
    pub fn feature_dim(&self) -> usize {
        self.hidden.last().copied().unwrap_or(self.inputs) + 1
    }
}

/// What batched evaluation returns per candidate: the sum of squared errors of the full output,
/// and the normal equations of the last layer's least squares over the features
/// phi = (last hidden activations, 1).
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateStats {
    /// Feature dimension f (last hidden width + 1).
    pub feature_dim: usize,
    /// C sums of squared errors.
    pub sse: Vec<f64>,
    /// C packed upper triangles (f(f+1)/2 each, row by row) of Phi^T Phi.
    pub gram: Vec<f64>,
    /// C x f values of Phi^T y.
    pub feature_y: Vec<f64>,
}

/// Checks that samples and candidates fit together: the rank matches the candidates' inputs,
/// every array has the size its shape implies, and no width is zero.
pub fn check_evaluation_inputs(samples: &ProjectedSamples, batch: &CandidateBatch) -> Result<()> {
    if samples.rank == 0 {
        return Err(Error::invalid("projected samples: rank must be at least 1"));
    }
    if samples.z.len() != samples.len() * samples.rank {
        return Err(Error::invalid(format!(
            "projected samples: z has {} values, expected N x r = {} x {}",
            samples.z.len(),
            samples.len(),
            samples.rank
        )));
    }
    if batch.inputs != samples.rank {
        return Err(Error::invalid(format!(
            "candidates take {} inputs but the samples have rank {}",
            batch.inputs, samples.rank
        )));
    }
    if batch.hidden.contains(&0) {
        return Err(Error::invalid("candidate hidden widths must be at least 1"));
    }
    let per = batch.params_per_candidate();
    if !batch.params.len().is_multiple_of(per) {
        return Err(Error::invalid(format!(
            "candidate params: {} values is not a multiple of {per} per candidate",
            batch.params.len()
        )));
    }
    Ok(())
}

/// Length of the packed upper triangle of an f x f matrix.
pub fn tri_len(f: usize) -> usize {
    f * (f + 1) / 2
}
