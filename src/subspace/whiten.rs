//! The whitening map estimated by a pass of its own (filtered PCA estimates it from its first
//! pass instead): mu and Sigma from the moments kernel with one bin, on rows centred by the
//! mean of a pilot block so that the f32 sums do not cancel when |mu| >> the spread.

use crate::backend::Backend;
use crate::data::whiten::{CenteredSource, Whitening};
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::moments::BinSpec;

/// Rows of the pilot whose mean centres the estimating pass.
const PILOT_ROWS: usize = 100_000;

/// Estimates mu and Sigma from `source` (one pass, K = 1) and builds the map.
pub fn estimate_whitening(backend: &dyn Backend, source: &dyn SampleSource) -> Result<Whitening> {
    let d = source.dim();
    let n = source.len();
    if n < 2 || d == 0 {
        return Err(Error::invalid(format!(
            "whitening: needs at least 2 rows of positive dimension (got {n} of d = {d})"
        )));
    }
    let pilot_mean = pilot_mean(source, PILOT_ROWS)?;
    let centred = CenteredSource::new(source, &pilot_mean);
    let bar = crate::progress::bar(n, "whitening");
    let m = backend.moments(
        &centred,
        &BinSpec::single(d),
        crate::moments::SampleWeight::Unit,
        &bar,
    )?;
    bar.finish_and_clear();
    let total = m.total_count() as f64;
    let shift: Vec<f64> = m.sum_x[..d].iter().map(|s| s / total).collect();
    let mut sigma = m.second_moment(0..1) / total;
    for i in 0..d {
        for j in 0..d {
            sigma[(i, j)] -= shift[i] * shift[j];
        }
    }
    let mean: Vec<f64> = pilot_mean
        .iter()
        .zip(&shift)
        .map(|(&p, s)| p as f64 + s)
        .collect();
    Ok(Whitening::from_moments(mean, sigma, n))
}

/// Mean of the first `rows` rows, in f32 (the centring the estimating pass subtracts).
fn pilot_mean(source: &dyn SampleSource, rows: usize) -> Result<Vec<f32>> {
    let d = source.dim();
    let mut sum = vec![0.0f64; d];
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let want = (rows as u64).min(source.len());
    let mut at = 0u64;
    while at < want {
        let n = source.read(at, (want - at).min(1 << 16) as usize, &mut x, &mut y)?;
        if n == 0 {
            return Err(Error::invalid(format!(
                "{} returned no rows at row {at}",
                source.describe()
            )));
        }
        for row in x.chunks_exact(d) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v as f64;
            }
        }
        at += n as u64;
    }
    Ok(sum
        .iter()
        .map(|s| (s / want.max(1) as f64) as f32)
        .collect())
}
