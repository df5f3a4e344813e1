//! The views of the samples that the filtered-PCA passes read: rows centred on the whitening
//! mean, labels replaced by the residual of a fit (residual rounds), and an extra column that
//! tags each row with a random group (the calibrated null).
//!
//! The group tag is a pseudo-random function of the row index only, so it is independent of x
//! and y; the bins of a round split every (cell, label-bin) by group through one more cell axis
//! that reads that column. The real statistic of a filter sums its bins over all groups, the
//! null contrasts compare the groups (see `filtered`).

use crate::data::SampleSource;
use crate::error::Result;
use crate::network::Network;

/// The group of a row: splitmix64 of (seed, row index), reduced mod `groups`.
pub(super) fn group_of(seed: u64, row: u64, groups: usize) -> usize {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(row)
        .wrapping_add(0x632b_e59b_d9b4_e019);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % groups as u64) as usize
}

/// `inner` seen as: x - centre, label y or y - h(A (x - centre)), and (when `groups > 0`) one
/// extra column holding the row's group 0..groups as a float.
pub(super) struct RoundSource<'a> {
    inner: &'a dyn SampleSource,
    centre: Option<Vec<f32>>,
    groups: usize,
    seed: u64,
    /// x -> h(A x) on the centred rows: the fit whose residual is the label.
    residual: Option<Network>,
}

impl<'a> RoundSource<'a> {
    pub(super) fn new(inner: &'a dyn SampleSource, centre: Option<&[f64]>) -> Self {
        RoundSource {
            inner,
            centre: centre.map(|c| c.iter().map(|&v| v as f32).collect()),
            groups: 0,
            seed: 0,
            residual: None,
        }
    }

    /// Adds the group column.
    pub(super) fn with_groups(mut self, groups: usize, seed: u64) -> Self {
        self.groups = groups;
        self.seed = seed;
        self
    }

    /// Replaces the labels by y - model(x) (the model reads the centred rows).
    pub(super) fn with_residual(mut self, model: Network) -> Self {
        self.residual = Some(model);
        self
    }
}

impl SampleSource for RoundSource<'_> {
    fn dim(&self) -> usize {
        self.inner.dim() + usize::from(self.groups > 0)
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let n = self.inner.read(start, rows, x, y)?;
        let d = self.inner.dim();
        if let Some(c) = &self.centre {
            for row in x.chunks_exact_mut(d) {
                for (v, m) in row.iter_mut().zip(c) {
                    *v -= m;
                }
            }
        }
        if let Some(model) = &self.residual {
            let fitted = model.forward_f32(x, n);
            for (v, f) in y.iter_mut().zip(fitted) {
                *v -= f;
            }
        }
        if self.groups > 0 {
            // Widen each row by one column in place, last row first.
            let w = d + 1;
            x.resize(n * w, 0.0);
            for i in (0..n).rev() {
                x.copy_within(i * d..(i + 1) * d, i * w);
                x[i * w + d] = group_of(self.seed, start + i as u64, self.groups) as f32;
            }
        }
        Ok(n)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
