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

pub(super) use crate::data::group_of;

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
    fn synthetic(&self) -> Option<crate::data::Synthetic> {
        let mut s = self.inner.synthetic().filter(|s| s.is_plain())?;
        s.centre = self.centre.clone();
        s.residual = self.residual.clone();
        if self.groups > 0 {
            s.groups = Some(crate::data::GroupColumn {
                seed: self.seed,
                groups: self.groups,
                first_row: 0,
            });
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::whiten::CenteredSource;
    use crate::data::{GaussianSource, SampleRange};
    use crate::teacher::{build, TeacherKind, TeacherSpec};

    /// A view's recipe ([`SampleSource::synthetic`]) builds exactly the rows its `read` gives,
    /// so a device that generates from the recipe sees the host's data.
    #[test]
    fn views_and_their_recipes_give_the_same_rows() {
        let mut spec = TeacherSpec::new(TeacherKind::Random, 13);
        spec.seed = 5;
        let t = build(&spec).unwrap();
        let source = GaussianSource::new(t.network.clone(), 9000, 21, 0.25).unwrap();
        let train = SampleRange::new(&source, 1234, 6000).unwrap();
        let centre: Vec<f64> = (0..13).map(|i| 0.01 * i as f64 - 0.05).collect();
        let mut fit_spec = TeacherSpec::new(TeacherKind::Random, 13);
        fit_spec.seed = 9;
        let fit = build(&fit_spec).unwrap().network;
        let round = RoundSource::new(&train, Some(&centre))
            .with_groups(5, 77)
            .with_residual(fit);
        let centre32: Vec<f32> = centre.iter().map(|&v| v as f32).collect();
        let centred = CenteredSource::new(&train, &centre32);
        let plain = RoundSource::new(&train, None);
        for view in [&round as &dyn SampleSource, &centred, &plain, &train] {
            let recipe = view
                .synthetic()
                .expect("a view of a teacher's samples has a recipe");
            assert_eq!(recipe.dim(), view.dim());
            assert_eq!(recipe.len(), view.len());
            for (start, rows) in [(0u64, 700usize), (4093, 1500), (5990, 100)] {
                let (mut xa, mut ya, mut xb, mut yb) = (vec![], vec![], vec![], vec![]);
                let na = view.read(start, rows, &mut xa, &mut ya).unwrap();
                let nb = recipe.read(start, rows, &mut xb, &mut yb).unwrap();
                assert_eq!(na, nb);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&xa), bits(&xb), "{} x", view.describe());
                assert_eq!(bits(&ya), bits(&yb), "{} y", view.describe());
            }
        }
        // A view of a view that the recipe cannot express has none (rows are read instead).
        let twice = RoundSource::new(&round, Some(&centre));
        assert!(twice.synthetic().is_none());
    }
}
