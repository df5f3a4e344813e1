//! Batched candidate evaluation on the CPU (being written).

use crate::backend::{CandidateBatch, CandidateStats, ProjectedSamples};
use crate::error::{Error, Result};

pub(crate) fn evaluate_candidates(
    _samples: &ProjectedSamples,
    _batch: &CandidateBatch,
) -> Result<CandidateStats> {
    Err(Error::invalid("CPU candidate evaluation: being written"))
}
