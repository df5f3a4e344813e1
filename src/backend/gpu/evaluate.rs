//! Batched candidate evaluation kernel launcher (being written).

use super::GpuContext;
use crate::backend::{CandidateBatch, CandidateStats, ProjectedSamples};
use crate::error::{Error, Result};

pub(crate) fn evaluate_candidates(
    _ctx: &GpuContext,
    _samples: &ProjectedSamples,
    _batch: &CandidateBatch,
) -> Result<CandidateStats> {
    Err(Error::invalid("GPU candidate evaluation: being written"))
}
