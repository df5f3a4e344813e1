//! Moments stage: the binned, filtered second-moment statistic that filtered PCA, its baselines
//! and every later round need (docs/algorithm.md, "Filtered PCA").
//!
//! A sample falls in one bin, found from its projection z = B^T x onto the current basis (a cell
//! of an equal-mass grid, per axis) and then from its label (y-bins per cell). Per bin we sum
//! count, weight, w x, w x x^T (upper triangle), y and y^2. Any filter that is a union of bins is
//! then a sum of bins, computed on the host.

use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::linalg::dot;
/// Packed statistics unpacked (its home is `linalg`).
pub use crate::linalg::unpack_upper;
use crate::network::Network;

/// Per-sample weight w_i.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleWeight {
    /// w = 1: filtered moments, SIR, SAVE.
    Unit,
    /// w = y: pHd, the correlational (CSQ) moment E[y x x^T].
    Label,
    /// w = y^2: y^2-PCA.
    LabelSquared,
}

impl SampleWeight {
    /// The weight of a sample with label `y`.
    pub fn of(self, y: f64) -> f64 {
        match self {
            SampleWeight::Unit => 1.0,
            SampleWeight::Label => y,
            SampleWeight::LabelSquared => y * y,
        }
    }
}

/// How samples are assigned to bins: `bin = cell * y_bins + y_bin`.
///
/// Edges use the rule "index = number of edges strictly below the value", so bin j holds
/// values in (e_{j-1}, e_j]. An atom at y = 0 becomes its own bin with edges (-tiny, 0].
#[derive(Clone, Debug, PartialEq)]
pub struct BinSpec {
    /// Input dimension d.
    pub dim: usize,
    /// r rows of length d, row-major (z = B x); r = 0 means a single cell. Filtered PCA passes
    /// orthonormal rows of its working frame; any finite, non-zero rows are accepted.
    pub basis: Vec<f64>,
    /// Edges per z axis (the same count on every axis): cells per axis = edges + 1.
    pub axis_edges: Vec<Vec<f64>>,
    /// Per cell, sorted y edges (the same count in every cell): y-bins per cell = edges + 1.
    pub y_edges: Vec<Vec<f64>>,
}

impl BinSpec {
    /// One bin for everything: plain (unfiltered) moments.
    pub fn single(dim: usize) -> Self {
        BinSpec {
            dim,
            basis: Vec::new(),
            axis_edges: Vec::new(),
            y_edges: vec![Vec::new()],
        }
    }

    /// Label bins only (round 1: no basis yet).
    pub fn label_bins(dim: usize, y_edges: Vec<f64>) -> Self {
        BinSpec {
            dim,
            basis: Vec::new(),
            axis_edges: Vec::new(),
            y_edges: vec![y_edges],
        }
    }

    /// Number of basis rows r.
    pub fn rank(&self) -> usize {
        self.basis.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Cells per z axis.
    pub fn cells_per_axis(&self) -> usize {
        self.axis_edges.first().map_or(1, |e| e.len() + 1)
    }

    /// Number of cells (cells_per_axis^r).
    pub fn cells(&self) -> usize {
        self.cells_per_axis().pow(self.rank() as u32)
    }

    /// y-bins per cell.
    pub fn y_bins(&self) -> usize {
        self.y_edges.first().map_or(1, |e| e.len() + 1)
    }

    /// Total number of bins K.
    pub fn bins(&self) -> usize {
        self.cells() * self.y_bins()
    }

    /// Checks the spec: sizes agree, edges sorted, basis rows finite and non-zero, K > 0.
    pub fn validate(&self) -> Result<()> {
        let r = self.rank();
        if self.dim == 0 {
            return Err(Error::invalid("bin spec: dimension d must be positive"));
        }
        if self.basis.len() != r * self.dim {
            return Err(Error::invalid(format!(
                "bin spec: basis has {} values, not a multiple of d = {}",
                self.basis.len(),
                self.dim
            )));
        }
        // Any rank: the cell count cells_per_axis^r is the caller's budget to keep. Rows need
        // not be orthonormal (filtered PCA bins on rows of a whitened frame, and a group axis
        // on an extra column); each must be finite and non-zero so that z is a projection.
        for i in 0..r {
            let row = &self.basis[i * self.dim..(i + 1) * self.dim];
            let norm: f64 = row.iter().map(|v| v * v).sum();
            if !norm.is_finite() || norm == 0.0 {
                return Err(Error::invalid(format!(
                    "bin spec: basis row {i} is zero or not finite; pass finite, non-zero rows"
                )));
            }
        }
        if r > 0 && self.axis_edges.len() != r {
            return Err(Error::invalid(format!(
                "bin spec: {} axis edge lists for a basis of rank {r}",
                self.axis_edges.len()
            )));
        }
        if r == 0 && !self.axis_edges.is_empty() {
            return Err(Error::invalid("bin spec: axis edges given without a basis"));
        }
        let per_axis = self.cells_per_axis() - 1;
        if self
            .axis_edges
            .iter()
            .any(|e| e.len() != per_axis || !is_sorted(e))
        {
            return Err(Error::invalid(
                "bin spec: every axis needs the same number of sorted edges",
            ));
        }
        if self.y_edges.len() != self.cells() {
            return Err(Error::invalid(format!(
                "bin spec: {} y-edge lists for {} cells",
                self.y_edges.len(),
                self.cells()
            )));
        }
        let per_cell = self.y_bins() - 1;
        if self
            .y_edges
            .iter()
            .any(|e| e.len() != per_cell || !is_sorted(e))
        {
            return Err(Error::invalid(
                "bin spec: every cell needs the same number of sorted y edges",
            ));
        }
        if self.bins() == 0 {
            return Err(Error::invalid("bin spec: K = 0 bins"));
        }
        Ok(())
    }

    /// Checks the spec and that it fits the samples: what every backend does before a pass.
    pub fn check_request(&self, source: &dyn SampleSource) -> Result<()> {
        self.validate()?;
        if source.dim() != self.dim {
            return Err(Error::invalid(format!(
                "samples have d = {} but the bin spec has d = {}",
                source.dim(),
                self.dim
            )));
        }
        Ok(())
    }

    /// Bin of one sample (f64 reference rule; kernels must agree with it).
    pub fn bin_of(&self, x: &[f64], y: f64) -> usize {
        let r = self.rank();
        let per_axis = self.cells_per_axis();
        let mut cell = 0usize;
        for j in 0..r {
            let row = &self.basis[j * self.dim..(j + 1) * self.dim];
            let z: f64 = row.iter().zip(x).map(|(a, b)| a * b).sum();
            cell = cell * per_axis + count_below(&self.axis_edges[j], z);
        }
        cell * self.y_bins() + count_below(&self.y_edges[cell], y)
    }
}

/// Number of edges strictly below `v`.
pub fn count_below(edges: &[f64], v: f64) -> usize {
    edges.iter().filter(|&&e| e < v).count()
}

fn is_sorted(e: &[f64]) -> bool {
    e.windows(2).all(|w| w[0] <= w[1]) && e.iter().all(|v| v.is_finite())
}

/// Per-bin sums over a stream of samples. Everything in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct FilteredMoments {
    /// Input dimension d.
    pub dim: usize,
    /// Number of bins K.
    pub bins: usize,
    /// n_b: samples per bin.
    pub count: Vec<u64>,
    /// Sum of weights per bin.
    pub weight_sum: Vec<f64>,
    /// s_b = sum of w x, K x d row-major.
    pub sum_x: Vec<f64>,
    /// S_b = sum of w x x^T, K x d(d+1)/2, each bin's upper triangle packed row by row
    /// ((0,0),(0,1)..(0,d-1),(1,1)..).
    pub sum_xx: Vec<f64>,
    /// Sum of y per bin (unweighted).
    pub sum_y: Vec<f64>,
    /// Sum of y^2 per bin (unweighted).
    pub sum_y2: Vec<f64>,
}

impl FilteredMoments {
    /// Bytes of one bin's accumulators for `dim` inputs (its triangle, its sums of x, and the
    /// count, weight and label sums).
    pub fn bin_bytes(dim: usize) -> usize {
        8 * (dim * (dim + 1) / 2 + dim + 4)
    }

    /// All-zero accumulators.
    pub fn zeros(dim: usize, bins: usize) -> Self {
        let tri = dim * (dim + 1) / 2;
        FilteredMoments {
            dim,
            bins,
            count: vec![0; bins],
            weight_sum: vec![0.0; bins],
            sum_x: written_zeros(bins * dim),
            sum_xx: written_zeros(bins * tri),
            sum_y: vec![0.0; bins],
            sum_y2: vec![0.0; bins],
        }
    }

    /// Length of one packed upper triangle.
    pub fn tri_len(&self) -> usize {
        self.dim * (self.dim + 1) / 2
    }

    /// Adds another set of sums (same shape) into this one.
    pub fn merge(&mut self, other: &FilteredMoments) {
        assert_eq!((self.dim, self.bins), (other.dim, other.bins));
        for (a, b) in self.count.iter_mut().zip(&other.count) {
            *a += b;
        }
        add(&mut self.weight_sum, &other.weight_sum);
        add(&mut self.sum_x, &other.sum_x);
        add(&mut self.sum_xx, &other.sum_xx);
        add(&mut self.sum_y, &other.sum_y);
        add(&mut self.sum_y2, &other.sum_y2);
    }

    /// Total samples.
    pub fn total_count(&self) -> u64 {
        self.count.iter().sum()
    }

    /// The sums over every bin, bin by bin: (sum_b S_b packed, sum_b s_b).
    pub fn totals(&self) -> (Vec<f64>, Vec<f64>) {
        let (tri, side) = (self.tri_len(), self.dim);
        let mut xx = vec![0.0; tri];
        let mut x = vec![0.0; side];
        for b in 0..self.bins {
            xx.iter_mut()
                .zip(&self.sum_xx[b * tri..(b + 1) * tri])
                .for_each(|(a, v)| *a += v);
            x.iter_mut()
                .zip(&self.sum_x[b * side..(b + 1) * side])
                .for_each(|(a, v)| *a += v);
        }
        (xx, x)
    }

    /// Sum of S_b over the given bins, unpacked to a full symmetric d x d matrix.
    pub fn second_moment<I: IntoIterator<Item = usize>>(&self, bins: I) -> nalgebra::DMatrix<f64> {
        let d = self.dim;
        let tri = self.tri_len();
        let mut packed = vec![0.0; tri];
        for b in bins {
            add(&mut packed, &self.sum_xx[b * tri..(b + 1) * tri]);
        }
        unpack_upper(&packed, d)
    }

    /// Sum of s_b over the given bins.
    pub fn first_moment<I: IntoIterator<Item = usize>>(&self, bins: I) -> nalgebra::DVector<f64> {
        let d = self.dim;
        let mut s = nalgebra::DVector::zeros(d);
        for b in bins {
            for i in 0..d {
                s[i] += self.sum_x[b * d + i];
            }
        }
        s
    }

    /// Largest relative Frobenius difference between the x-sums of two results (tests).
    pub fn relative_difference(&self, other: &FilteredMoments) -> f64 {
        rel(&self.sum_xx, &other.sum_xx)
            .max(rel(&self.sum_x, &other.sum_x))
            .max(rel(&self.weight_sum, &other.weight_sum))
            .max(rel(&self.sum_y, &other.sum_y))
            .max(rel(&self.sum_y2, &other.sum_y2))
    }
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
    let den: f64 = b.iter().map(|q| q * q).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn add(a: &mut [f64], b: &[f64]) {
    for (p, q) in a.iter_mut().zip(b) {
        *p += q;
    }
}

/// The f64 CPU twin: a plain, obviously correct loop. Tests hold both backends to it.
pub fn reference_moments(
    source: &dyn SampleSource,
    spec: &BinSpec,
    weight: SampleWeight,
) -> Result<FilteredMoments> {
    spec.check_request(source)?;
    let d = spec.dim;
    let tri = d * (d + 1) / 2;
    let mut m = FilteredMoments::zeros(d, spec.bins());
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let chunk = 8192;
    let mut start = 0u64;
    let mut xd = vec![0.0f64; d];
    while start < source.len() {
        let rows = source.read(start, chunk, &mut xs, &mut ys)?;
        for i in 0..rows {
            for (t, v) in xd.iter_mut().zip(&xs[i * d..(i + 1) * d]) {
                *t = *v as f64;
            }
            let y = ys[i] as f64;
            let b = spec.bin_of(&xd, y);
            let w = weight.of(y);
            m.count[b] += 1;
            m.weight_sum[b] += w;
            m.sum_y[b] += y;
            m.sum_y2[b] += y * y;
            let sx = &mut m.sum_x[b * d..(b + 1) * d];
            for (s, v) in sx.iter_mut().zip(&xd) {
                *s += w * v;
            }
            let sxx = &mut m.sum_xx[b * tri..(b + 1) * tri];
            let mut k = 0;
            for (a, xa) in xd.iter().enumerate() {
                let wa = w * xa;
                for xc in &xd[a..] {
                    sxx[k] += wa * xc;
                    k += 1;
                }
            }
        }
        start += rows as u64;
        if rows == 0 {
            break;
        }
    }
    Ok(m)
}

/// Sums for one Gauss-Newton step of a basis B (r orthonormal rows) given a fit h on
/// z = B x, over a whole source: with residual e = y - h(z) and g = grad h(z),
/// `cross` = sum e x g^T (d x r, row-major), `gram` = sum g g^T (r x r), `sse` = sum e^2.
#[derive(Clone, Debug, PartialEq)]
pub struct FitMoments {
    /// Input dimension d.
    pub dim: usize,
    /// Basis rank r.
    pub rank: usize,
    /// Samples summed.
    pub rows: u64,
    /// Sum of squared residuals.
    pub sse: f64,
    /// d x r, row-major.
    pub cross: Vec<f64>,
    /// r x r, row-major.
    pub gram: Vec<f64>,
}

impl FitMoments {
    /// All-zero sums.
    pub fn zeros(dim: usize, rank: usize) -> Self {
        FitMoments {
            dim,
            rank,
            rows: 0,
            sse: 0.0,
            cross: vec![0.0; dim * rank],
            gram: vec![0.0; rank * rank],
        }
    }

    /// Adds another set of sums (same shape).
    pub fn merge(&mut self, other: &FitMoments) {
        self.rows += other.rows;
        self.sse += other.sse;
        add(&mut self.cross, &other.cross);
        add(&mut self.gram, &other.gram);
    }

    /// Adds one sample (x in f64, label y); `scratch` holds buffers between calls.
    pub fn add_sample(
        &mut self,
        basis: &[Vec<f64>],
        fit: &Network,
        x: &[f64],
        y: f64,
        scratch: &mut FitScratch,
    ) {
        scratch.z.clear();
        scratch.z.extend(basis.iter().map(|b| dot(b, x)));
        let e = y - fit.output_and_gradient(&scratch.z, &mut scratch.hidden, &mut scratch.grad);
        let g = &mut scratch.grad;
        let r = self.rank;
        self.rows += 1;
        self.sse += e * e;
        for (a, ga) in g.iter().enumerate() {
            for (c, gb) in self.gram[a * r..(a + 1) * r].iter_mut().zip(g.iter()) {
                *c += ga * gb;
            }
        }
        g.iter_mut().for_each(|v| *v *= e);
        for (cross, &xi) in self.cross.chunks_exact_mut(r).zip(x) {
            for (c, egj) in cross.iter_mut().zip(g.iter()) {
                *c += xi * egj;
            }
        }
    }
}

/// Buffers of [`FitMoments::add_sample`].
#[derive(Default)]
pub struct FitScratch {
    z: Vec<f64>,
    hidden: Vec<Vec<f64>>,
    grad: Vec<f64>,
}

/// The f64 twin of [`FitMoments`]: a plain per-sample loop. Tests hold both backends to it.
pub fn reference_fit_moments(
    source: &dyn SampleSource,
    basis: &[Vec<f64>],
    fit: &Network,
) -> Result<FitMoments> {
    check_fit_request(source, basis, fit)?;
    let d = source.dim();
    let mut total = FitMoments::zeros(d, basis.len());
    let mut scratch = FitScratch::default();
    let mut xd = vec![0.0; d];
    crate::data::for_each_chunk(source, 8192, |_, xs, ys| {
        for (row, &y) in xs.chunks_exact(d).zip(ys) {
            xd.iter_mut().zip(row).for_each(|(a, &b)| *a = b as f64);
            total.add_sample(basis, fit, &xd, y as f64, &mut scratch);
        }
        Ok(())
    })?;
    Ok(total)
}

/// Checks that a basis and a fit match the samples: what every backend does before the pass.
pub fn check_fit_request(
    source: &dyn SampleSource,
    basis: &[Vec<f64>],
    fit: &Network,
) -> Result<()> {
    let d = source.dim();
    let r = basis.len();
    // A fit with its own projection would read past its first layer in the kernels, which take
    // the fit's first layer to have r inputs.
    if r == 0
        || basis.iter().any(|b| b.len() != d)
        || fit.input_dim != r
        || fit.projection.is_some()
    {
        return Err(Error::invalid(format!(
            "fit moments: need at least one basis row of length d = {d} and a fit on their coordinates \
             without a projection of its own (got {r} rows of lengths {:?}, a fit on {} inputs)",
            basis.iter().map(Vec::len).collect::<Vec<_>>(),
            fit.input_dim
        )));
    }
    Ok(())
}

/// Zeros written now, page by page. `vec![0.0; n]` leaves a large buffer on the shared zero
/// page, so the first add into each page takes a copy-on-write fault and a TLB shootdown on
/// every core: 38% of a pass's samples at d = 256, K = 1008 on this VM (where a shootdown is
/// an inter-processor interrupt); writing first makes each page's one fault a plain one.
fn written_zeros(n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0.0);
    v
}
