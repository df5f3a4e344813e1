//! CPU backend: all cores.

mod evaluate;
mod fit;
pub mod moments;
pub mod peak;
pub mod project;
pub mod syrk;
pub mod trainer;

use crate::backend::{
    Adam, Backend, CandidateBatch, CandidateStats, Device, FactoredShape, NormalEquations,
    ProjectedSamples, SphereFeatures,
};
use crate::data::SampleSource;
use crate::error::Result;
use crate::moments::{BinSpec, FilteredMoments, FitMoments, SampleWeight};
use crate::network::Network;

/// The CPU implementation of [`Backend`].
#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    moment_kernel: syrk::MomentKernel,
}

impl CpuBackend {
    /// Uses rayon's global pool (all cores unless RAYON_NUM_THREADS says otherwise).
    pub fn new() -> Self {
        CpuBackend::default()
    }

    /// The same backend with its moments on a chosen micro-kernel (benchmarks, comparisons).
    pub fn with_moment_kernel(kernel: syrk::MomentKernel) -> Self {
        CpuBackend {
            moment_kernel: kernel,
        }
    }

    /// The instruction set the moments run on (an error when the chosen one is unavailable).
    pub fn moment_isa(&self) -> Result<syrk::Isa> {
        self.moment_kernel.resolve()
    }
}

impl Backend for CpuBackend {
    fn trains_on_host(&self) -> bool {
        true
    }

    fn kind(&self) -> Device {
        Device::Cpu
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
        moments::moments_with_kernel(source, spec, weight, self.moment_kernel, progress)
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

    fn project(&self, basis: &[f64], x: &[f32], rows: usize) -> Result<Vec<f32>> {
        crate::backend::check_projection(basis, x, rows)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        Ok(project::project(basis, x.len() / rows, x))
    }

    fn train_window(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        batch_size: usize,
        params: &mut [f64],
        adam: &mut Adam,
    ) -> Result<()> {
        trainer::train_window(shape, train_basis, x, y, batch_size, params, adam)
    }

    fn gradient_sum(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        params: &[f64],
    ) -> Result<Vec<f64>> {
        trainer::gradient_sum(shape, train_basis, x, y, params)
    }

    fn feature_normal_equations(
        &self,
        source: &dyn SampleSource,
        features: &SphereFeatures,
        progress: &indicatif::ProgressBar,
    ) -> Result<NormalEquations> {
        trainer::feature_normal_equations(source, features, progress)
    }
}
