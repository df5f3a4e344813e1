//! Whitening: the map x -> W (x - mu), W = Lambda^(-1/2) V^T over the kept eigen-directions of
//! the sample covariance Sigma = V Lambda V^T, so that the learner sees mean 0 and covariance I
//! whatever the mean and covariance of the raw inputs.
//!
//! One pass estimates mu and Sigma (the moments kernel with one bin, on rows centred by the
//! mean of a pilot block so that the f32 sums do not cancel when |mu| >> the spread; the pass
//! is the subspace stage's, see `subspace::estimate_whitening` and filtered PCA's first pass),
//! and [`Whitening::from_moments`] builds the map. Then:
//! - directions whose variance is below [`CONDITION_LIMIT`] of the largest (constant or
//!   duplicated columns, or a covariance too badly conditioned for the f32 sums to resolve) are
//!   dropped, and said so: the whitened input has q <= d coordinates and is never NaN;
//! - when Sigma and mu agree with I and 0 within a few times their sampling error, the map is
//!   the identity ([`Whitening::is_identity`]): whitening by a noisy estimate of I would only add
//!   that noise, and the passes stay on the raw rows at no extra cost.
//!
//! Filtered PCA never applies W to the rows: its statistics transform exactly as
//! W S W^T on the host, so a pass costs d subtractions per row for the centring and nothing
//! for W (applying W would cost d q per row, as much as the moment pass itself).
//! [`WhitenedSource`] applies the full map for consumers that need the whitened rows (the
//! projection and polish in `learn`), and [`Whitening::fold`] turns a model on whitened inputs
//! into the same function of the raw x.

use super::SampleSource;
use crate::error::{Error, Result};
use crate::network::{row_space_basis, Network};
use nalgebra::{DMatrix, SymmetricEigen};
use rayon::prelude::*;

/// A direction is dropped when its variance is below this fraction of the largest: the f32 run
/// sums of the moment pass carry relative errors of a few 1e-6 of each entry, so variances
/// below 1e-5 of the largest are not resolved (and whitening would scale them up over 300x).
pub const CONDITION_LIMIT: f64 = 1e-5;
/// Sigma and mu count as I and 0 when every |eigenvalue - 1| is within this many Marchenko-
/// Pastur edges 2 sqrt(d/N) + d/N, and ||mu||^2 within this many squared of its d/N.
pub const IDENTITY_TOLERANCE: f64 = 4.0;

/// The whitening map of a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Whitening {
    /// d, the raw input dimension.
    pub input_dim: usize,
    /// mu (length d); zeros for the identity.
    pub mean: Vec<f64>,
    /// W as q rows of length d; `None` when W = I (q = d).
    pub map: Option<Vec<Vec<f64>>>,
    /// Eigen-directions of Sigma dropped as null or badly conditioned.
    pub dropped: usize,
    /// Smallest and largest eigenvalue of the estimated Sigma (NaN when not estimated).
    pub eigenvalue_range: (f64, f64),
    /// ||Sigma - I||_2 and its Marchenko-Pastur sampling edge (NaN when not estimated).
    pub distance_from_identity: (f64, f64),
    /// Rows the estimate used (0 when not estimated).
    pub rows: u64,
}

impl Whitening {
    /// The identity map (no whitening).
    pub fn identity(d: usize) -> Self {
        Whitening {
            input_dim: d,
            mean: vec![0.0; d],
            map: None,
            dropped: 0,
            eigenvalue_range: (f64::NAN, f64::NAN),
            distance_from_identity: (f64::NAN, f64::NAN),
            rows: 0,
        }
    }

    /// The map for a given mean and covariance estimated from `rows` samples.
    pub fn from_moments(mean: Vec<f64>, sigma: DMatrix<f64>, rows: u64) -> Self {
        let d = mean.len();
        let sym = (&sigma + sigma.transpose()) * 0.5;
        let e = SymmetricEigen::new(sym);
        let values: Vec<f64> = e.eigenvalues.iter().copied().collect();
        let largest = values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let smallest = values.iter().copied().fold(f64::INFINITY, f64::min);
        let gamma = d as f64 / rows.max(1) as f64;
        let edge = 2.0 * gamma.sqrt() + gamma;
        let distance = values
            .iter()
            .map(|v| (v - 1.0).abs())
            .fold(0.0f64, f64::max);
        let mean_sq: f64 = mean.iter().map(|v| v * v).sum();
        let mut w = Whitening {
            input_dim: d,
            mean,
            map: None,
            dropped: 0,
            eigenvalue_range: (smallest, largest),
            distance_from_identity: (distance, edge),
            rows,
        };
        let near_identity = distance <= IDENTITY_TOLERANCE * edge;
        if near_identity && mean_sq <= IDENTITY_TOLERANCE.powi(2) * gamma {
            w.mean.iter_mut().for_each(|v| *v = 0.0);
            return w;
        }
        if near_identity {
            // Only the mean is off: centre, with W = I.
            return w;
        }
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        let mut rows_out = Vec::new();
        for i in order {
            let v = values[i];
            if !(v.is_finite() && largest > 0.0 && v > CONDITION_LIMIT * largest) {
                w.dropped += 1;
                continue;
            }
            let s = 1.0 / v.sqrt();
            rows_out.push(e.eigenvectors.column(i).iter().map(|a| a * s).collect());
        }
        w.map = Some(rows_out);
        w
    }

    /// q, the whitened dimension.
    pub fn output_dim(&self) -> usize {
        self.map.as_ref().map_or(self.input_dim, Vec::len)
    }

    /// W = I and mu = 0: the raw rows are used as they are.
    pub fn is_identity(&self) -> bool {
        self.map.is_none() && self.mean.iter().all(|&v| v == 0.0)
    }

    /// W v for v in R^d.
    pub fn apply(&self, v: &[f64]) -> Vec<f64> {
        match &self.map {
            Some(rows) => rows.iter().map(|r| crate::linalg::dot(r, v)).collect(),
            None => v.to_vec(),
        }
    }

    /// W^T u for u in R^q.
    pub fn apply_transpose(&self, u: &[f64]) -> Vec<f64> {
        match &self.map {
            Some(rows) => {
                let mut out = vec![0.0; self.input_dim];
                for (r, &c) in rows.iter().zip(u) {
                    crate::linalg::axpy(&mut out, c, r);
                }
                out
            }
            None => u.to_vec(),
        }
    }

    /// Rows on the raw x that give the same z as `basis` (rows in the whitened frame) gives on
    /// the whitened x, up to the shift by mu: z = (B W) (x - mu).
    pub fn raw_rows(&self, basis: &[Vec<f64>]) -> Vec<Vec<f64>> {
        basis.iter().map(|b| self.apply_transpose(b)).collect()
    }

    /// Orthonormal rows spanning the raw-input subspace that `basis` (whitened frame) reads.
    pub fn raw_span(&self, basis: &[Vec<f64>]) -> Vec<Vec<f64>> {
        if basis.is_empty() {
            return Vec::new();
        }
        let rows = self.raw_rows(basis);
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        row_space_basis(&flat, rows.len(), self.input_dim, 1e-12)
    }

    /// The model on raw x equal to `model` on the whitened x: a projection P (r x q) becomes
    /// P W (r x d) and the shift -P W mu goes into the first layer's bias; without a
    /// projection the first layer's weights W1 become W1 W in the same way.
    pub fn fold(&self, model: &Network) -> Result<Network> {
        let q = self.output_dim();
        if model.input_dim != q {
            return Err(Error::invalid(format!(
                "whitening: the model takes {} inputs but the whitened data has {q}",
                model.input_dim
            )));
        }
        let (rows, small) = match &model.projection {
            Some(p) => {
                let mut small = model.clone();
                small.projection = None;
                small.subspace = None;
                small.input_dim = p.len();
                (self.raw_rows(p), small)
            }
            None => {
                // Dense model: its first layer's rows are the projection, then the identity.
                let first = &model.layers[0];
                let rows: Vec<Vec<f64>> =
                    (0..first.outputs).map(|o| first.row(o).to_vec()).collect();
                let mut small = model.clone();
                small.subspace = None;
                let h = first.outputs;
                small.input_dim = h;
                small.layers[0].inputs = h;
                small.layers[0].weights = (0..h * h)
                    .map(|k| f64::from(u8::from(k / h == k % h)))
                    .collect();
                (self.raw_rows(&rows), small)
            }
        };
        let shift: Vec<f64> = rows
            .iter()
            .map(|r| crate::linalg::dot(r, &self.mean))
            .collect();
        let mut folded = Network::with_projection(&small, &rows)?;
        let first = &mut folded.layers[0];
        for o in 0..first.outputs {
            let c: f64 = first.row(o).iter().zip(&shift).map(|(w, s)| w * s).sum();
            first.bias[o] -= c;
        }
        folded.validate()?;
        Ok(folded)
    }

    /// One line for humans.
    pub fn summary(&self) -> String {
        let (dist, edge) = self.distance_from_identity;
        if self.rows == 0 {
            return "whitening: off".to_string();
        }
        if self.is_identity() {
            return format!(
                "whitening: identity (||Sigma - I|| = {dist:.3}, within {IDENTITY_TOLERANCE} x its sampling edge {edge:.3}; mean ~ 0)"
            );
        }
        let (lo, hi) = self.eigenvalue_range;
        let mut s = if self.map.is_none() {
            format!("whitening: centred only (||Sigma - I|| = {dist:.3} <= {IDENTITY_TOLERANCE} x {edge:.3})")
        } else {
            format!(
                "whitening: Sigma^(-1/2) (x - mu) with eigenvalues of Sigma in [{lo:.3e}, {hi:.3e}]"
            )
        };
        if self.dropped > 0 {
            s += &format!(
                "; dropped {} direction(s) with variance below {CONDITION_LIMIT:e} of the largest (constant or collinear inputs), {} kept",
                self.dropped,
                self.output_dim()
            );
        }
        s
    }

    /// The summary as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let num = |v: f64| {
            if v.is_finite() {
                serde_json::Value::from(v)
            } else {
                serde_json::Value::Null
            }
        };
        serde_json::json!({
            "applied": self.rows > 0,
            "identity": self.is_identity(),
            "centred": self.mean.iter().any(|&v| v != 0.0),
            "output_dim": self.output_dim(),
            "dropped": self.dropped,
            "eigenvalue_min": num(self.eigenvalue_range.0),
            "eigenvalue_max": num(self.eigenvalue_range.1),
            "distance_from_identity": num(self.distance_from_identity.0),
            "sampling_edge": num(self.distance_from_identity.1),
        })
    }
}

/// x - c for a fixed centre c (f32), labels unchanged.
pub struct CenteredSource<'a> {
    inner: &'a dyn SampleSource,
    centre: Vec<f32>,
}

impl<'a> CenteredSource<'a> {
    /// Rows of `inner` minus `centre`.
    pub fn new(inner: &'a dyn SampleSource, centre: &[f32]) -> Self {
        CenteredSource {
            inner,
            centre: centre.to_vec(),
        }
    }
}

impl SampleSource for CenteredSource<'_> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let n = self.inner.read(start, rows, x, y)?;
        for row in x.chunks_exact_mut(self.centre.len()) {
            for (v, c) in row.iter_mut().zip(&self.centre) {
                *v -= c;
            }
        }
        Ok(n)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn synthetic(&self) -> Option<super::Synthetic> {
        let mut s = self.inner.synthetic().filter(|s| s.is_plain())?;
        s.centre = Some(self.centre.clone());
        Some(s)
    }
}

/// The whitened rows W (x - mu) (q columns), labels unchanged. Costs d q per row: for
/// consumers that need the rows themselves.
pub struct WhitenedSource<'a> {
    inner: &'a dyn SampleSource,
    whitening: &'a Whitening,
    /// W in f32, q x d row-major.
    map: Vec<f32>,
    mean: Vec<f32>,
}

impl<'a> WhitenedSource<'a> {
    /// `inner` seen through `whitening` (whose input dimension must match).
    pub fn new(inner: &'a dyn SampleSource, whitening: &'a Whitening) -> Result<Self> {
        if inner.dim() != whitening.input_dim {
            return Err(Error::invalid(format!(
                "whitening: built for d = {} but {} has d = {}",
                whitening.input_dim,
                inner.describe(),
                inner.dim()
            )));
        }
        let map = match &whitening.map {
            Some(rows) => rows.iter().flatten().map(|&v| v as f32).collect(),
            None => Vec::new(),
        };
        Ok(WhitenedSource {
            inner,
            whitening,
            map,
            mean: whitening.mean.iter().map(|&v| v as f32).collect(),
        })
    }
}

impl SampleSource for WhitenedSource<'_> {
    fn dim(&self) -> usize {
        self.whitening.output_dim()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let mut raw = Vec::new();
        let n = self.inner.read(start, rows, &mut raw, y)?;
        let d = self.whitening.input_dim;
        for row in raw.chunks_exact_mut(d) {
            for (v, m) in row.iter_mut().zip(&self.mean) {
                *v -= m;
            }
        }
        if self.map.is_empty() {
            *x = raw;
            return Ok(n);
        }
        let q = self.dim();
        x.clear();
        x.resize(n * q, 0.0);
        // Rows in parallel; each output is a dot product of contiguous f32 rows.
        x.par_chunks_mut(q * 64)
            .zip(raw.par_chunks(d * 64))
            .for_each(|(out, inp)| {
                for (o_row, i_row) in out.chunks_exact_mut(q).zip(inp.chunks_exact(d)) {
                    for (o, w) in o_row.iter_mut().zip(self.map.chunks_exact(d)) {
                        *o = dot_f32(w, i_row);
                    }
                }
            });
        Ok(n)
    }
    fn describe(&self) -> String {
        format!("{} (whitened)", self.inner.describe())
    }
    /// The inner source's key and every bit of the f32 mean and map the reads apply, so a
    /// device backend keeps the whitened rows resident between passes (validation scoring each
    /// epoch) and two whitenings of one source never share a copy.
    fn identity(&self) -> Option<String> {
        use std::fmt::Write;
        let inner = self.inner.identity()?;
        let mut key =
            String::with_capacity(inner.len() + 9 * (self.mean.len() + self.map.len()) + 40);
        let _ = write!(key, "whitened [{inner}] q {} mean ", self.dim());
        self.mean.iter().for_each(|v| {
            let _ = write!(key, "{:08x}", v.to_bits());
        });
        key.push_str(" map ");
        self.map.iter().for_each(|v| {
            let _ = write!(key, "{:08x}", v.to_bits());
        });
        Some(key)
    }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(p, q)| p * q)
        .sum();
    for (p, q) in ca.zip(cb) {
        for k in 0..8 {
            s[k] += p[k] * q[k];
        }
    }
    s.iter().sum::<f32>() + tail
}
