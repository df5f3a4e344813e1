//! Samples: sources that hand out fixed-size chunks of (x, y) by row range, never the whole data
//! set at once. Row-major f32: x is `rows x dim`, y is `rows`.

use crate::error::Result;

/// A re-readable stream of samples. Passes over the data ask for row ranges, so a source is
/// read as many times as the algorithm needs (one pass per round) with bounded memory.
pub trait SampleSource: Send + Sync {
    /// Input dimension d.
    fn dim(&self) -> usize;
    /// Total number of rows N.
    fn len(&self) -> u64;
    /// True when the source has no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads rows `start .. start + rows` (clamped to `len`) into `x` (rows x dim, row-major)
    /// and `y` (rows). Both vectors are cleared first. Returns the number of rows read.
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize>;
    /// One line for humans: where the samples come from.
    fn describe(&self) -> String;
}

/// Errors about sample files (filled in by the data module).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Placeholder until the npy reader lands.
    #[error("{0}")]
    Other(String),
}

/// Samples held in memory (tests, small experiments).
#[derive(Clone, Debug, PartialEq)]
pub struct MemorySource {
    pub dim: usize,
    /// rows x dim, row-major.
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

impl SampleSource for MemorySource {
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> u64 {
        self.y.len() as u64
    }
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let start = (start as usize).min(self.y.len());
        let end = (start + rows).min(self.y.len());
        x.clear();
        y.clear();
        x.extend_from_slice(&self.x[start * self.dim..end * self.dim]);
        y.extend_from_slice(&self.y[start..end]);
        Ok(end - start)
    }
    fn describe(&self) -> String {
        format!("{} samples in memory, d = {}", self.y.len(), self.dim)
    }
}
