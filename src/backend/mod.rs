//! Compute backends. One [`Backend`] trait with a CPU and a GPU (wgpu) implementation; every
//! pass over the data goes through it, and tests are written once against the trait.

mod candidates;
pub mod cpu;
pub mod gpu;
pub mod mpi;

pub use candidates::{
    check_evaluation_inputs, tri_len, CandidateBatch, CandidateStats, ProjectedSamples,
};

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
