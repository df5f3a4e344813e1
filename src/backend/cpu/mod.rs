//! CPU backend: all cores.

mod evaluate;
mod fit;
pub mod moments;
pub mod project;
pub mod trainer;

use crate::backend::{Backend, CandidateBatch, CandidateStats, ProjectedSamples};
use crate::data::SampleSource;
use crate::error::Result;
use crate::moments::{BinSpec, FilteredMoments, FitMoments, SampleWeight};
use crate::network::Network;

/// The CPU implementation of [`Backend`].
#[derive(Clone, Debug, Default)]
pub struct CpuBackend {}

impl CpuBackend {
    /// Uses rayon's global pool (all cores unless RAYON_NUM_THREADS says otherwise).
    pub fn new() -> Self {
        CpuBackend {}
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn description(&self) -> String {
        format!("CPU, {} threads", rayon::current_num_threads())
    }

    fn moments(
        &self,
        source: &dyn SampleSource,
        spec: &BinSpec,
        weight: SampleWeight,
        progress: &indicatif::ProgressBar,
    ) -> Result<FilteredMoments> {
        moments::moments(source, spec, weight, progress)
    }

    fn fit_moments(
        &self,
        source: &dyn SampleSource,
        basis: &[Vec<f64>],
        fit: &Network,
        progress: &indicatif::ProgressBar,
    ) -> Result<FitMoments> {
        fit::fit_moments(source, basis, fit, progress)
    }

    fn evaluate_candidates(
        &self,
        samples: &ProjectedSamples,
        batch: &CandidateBatch,
    ) -> Result<CandidateStats> {
        evaluate::evaluate_candidates(samples, batch)
    }

    fn predict(&self, network: &Network, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        crate::backend::check_predict_input(network, x, rows)?;
        Ok(trainer::predict_compact(network, x).unwrap_or_else(|| network.forward_f32(x, rows)))
    }
}
