//! GPU backend: WGSL kernels in `shaders/`, one launcher module per kernel.

mod context;
mod evaluate;

pub use context::GpuContext;
pub use evaluate::{evaluate_candidates_with, EvaluateKernelParams};

use crate::backend::{Backend, CandidateBatch, CandidateStats, ProjectedSamples};
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::moments::{BinSpec, FilteredMoments, SampleWeight};

/// Errors from adapter selection and kernels.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable adapter.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
}

/// The wgpu implementation of [`Backend`].
pub struct GpuBackend {
    ctx: GpuContext,
}

impl GpuBackend {
    /// Opens a device; `allow_software` accepts lavapipe (CI), `false` wants real hardware.
    pub fn new(allow_software: bool) -> Result<Self> {
        Ok(GpuBackend {
            ctx: GpuContext::new(allow_software)?,
        })
    }

    /// The open device.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }
}

impl Backend for GpuBackend {
    fn kind(&self) -> &'static str {
        "gpu"
    }

    fn description(&self) -> String {
        self.ctx.describe()
    }

    fn moments(
        &self,
        _source: &dyn SampleSource,
        _spec: &BinSpec,
        _weight: SampleWeight,
        _progress: &indicatif::ProgressBar,
    ) -> Result<FilteredMoments> {
        Err(Error::invalid("GPU moments: being written"))
    }

    fn evaluate_candidates(
        &self,
        samples: &ProjectedSamples,
        batch: &CandidateBatch,
    ) -> Result<CandidateStats> {
        evaluate::evaluate_candidates(&self.ctx, samples, batch)
    }
}
