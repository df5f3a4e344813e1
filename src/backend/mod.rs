//! Compute backends. One [`Backend`] trait with a CPU and a GPU (wgpu) implementation; every
//! pass over the data goes through it, and tests are written once against the trait.

pub mod cpu;
pub mod gpu;

use crate::data::SampleSource;
use crate::error::Result;
use crate::moments::{BinSpec, FilteredMoments, FitMoments, SampleWeight};
use crate::network::Network;

/// Which device computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// A hardware GPU when there is one, otherwise the CPU (with a one-line notice).
    Auto,
    /// All CPU cores.
    Cpu,
    /// A GPU adapter, software adapters (lavapipe) included.
    Gpu,
}

/// Samples projected onto the recovered subspace, z = B^T x, kept in memory (N x r, r <= 8).
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

/// A device that computes the statistics of a pass over the data.
pub trait Backend: Send + Sync {
    /// "cpu" or "gpu".
    fn kind(&self) -> &'static str;
    /// Human description: CPU model and threads, or the adapter name and driver.
    fn description(&self) -> String;
    /// Binned, filtered first and second moments over the whole source.
    fn moments(
        &self,
        source: &dyn SampleSource,
        spec: &BinSpec,
        weight: SampleWeight,
        progress: &indicatif::ProgressBar,
    ) -> Result<FilteredMoments>;
    /// Per-candidate SSE and last-layer normal equations over projected samples.
    fn evaluate_candidates(
        &self,
        samples: &ProjectedSamples,
        batch: &CandidateBatch,
    ) -> Result<CandidateStats>;
    /// Sums for one Gauss-Newton step of the basis given a fit h on z = B x ([`FitMoments`]).
    fn fit_moments(
        &self,
        source: &dyn SampleSource,
        basis: &[Vec<f64>],
        fit: &Network,
        progress: &indicatif::ProgressBar,
    ) -> Result<FitMoments>;
    /// Outputs of `network` on `rows` samples (x row-major, rows x input_dim). The default is
    /// the CPU forward pass (all cores); a device backend overrides it.
    fn predict(&self, network: &Network, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        check_predict_input(network, x, rows)?;
        Ok(network.forward_f32(x, rows))
    }
}

/// Typed error (not a panic) for an input block of the wrong size.
pub fn check_predict_input(network: &Network, x: &[f32], rows: usize) -> Result<()> {
    if x.len() != rows * network.input_dim {
        return Err(crate::Error::invalid(format!(
            "predict: {} input values for {rows} rows of d = {}",
            x.len(),
            network.input_dim
        )));
    }
    Ok(())
}

/// Opens the backend the user asked for. `Auto` takes a hardware GPU when there is one and
/// otherwise the CPU, saying so in one line on stderr; `Gpu` also accepts a software adapter
/// (lavapipe), which is what CI tests.
pub fn select(choice: BackendChoice) -> Result<Box<dyn Backend>> {
    match choice {
        BackendChoice::Cpu => Ok(Box::new(cpu::CpuBackend::new())),
        BackendChoice::Gpu => Ok(Box::new(gpu::GpuBackend::new(true)?)),
        BackendChoice::Auto => match gpu::GpuBackend::new(false) {
            Ok(g) => Ok(Box::new(g)),
            Err(e) => {
                eprintln!(
                    "note: using the CPU backend ({e}); pass --backend gpu to use a software adapter"
                );
                Ok(Box::new(cpu::CpuBackend::new()))
            }
        },
    }
}
