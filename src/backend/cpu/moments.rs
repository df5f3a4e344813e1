//! CPU binned filtered moments (ALGORITHM.md 5.1, 5.2).
//!
//! The rows are split into contiguous partitions, one per rayon thread (fewer when the f64
//! accumulators would not fit in memory), so the f64 summation order depends only on N and the
//! thread count: same data and thread count, same bits. Each partition reads chunks of
//! [`CHUNK_ROWS`] rows (about 1 MiB of x when K = 1) and for each chunk
//! 1. finds every row's bin by [`BinSpec::bin_of`]'s rule with z = B^T x computed in **f64**
//!    (eight-lane sums), so bins agree with [`crate::moments::reference_moments`] except for a z
//!    within ~1e-15 relative of an edge;
//! 2. gathers the rows by bin (counting sort; skipped when K = 1);
//! 3. per bin segment, in runs of at most [`RUN_ROWS`] rows, forms the upper triangle of
//!    X^T diag(w) X in f32 with a register-blocked kernel (6 x 16 tiles, AVX2/FMA when the CPU
//!    has it, a portable loop otherwise) and adds it into the partition's f64 accumulators.
//!
//! Counts, weight sums, y and y^2 sums are accumulated per row in f64; w x sums in f32 per run.
//! Partitions are merged in order at the end.

use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::moments::{count_below, BinSpec, FilteredMoments, SampleWeight};
use rayon::prelude::*;

/// Rows read per chunk when rows are sorted by bin (K > 1): long bin segments.
pub const CHUNK_ROWS: usize = 16384;
/// Bytes of x per chunk when K = 1: the copy out of the source stays in cache for the kernel.
const SINGLE_BIN_CHUNK_BYTES: usize = 1 << 20;

/// Rows per chunk for dimension d and K bins.
fn chunk_rows(d: usize, bins: usize) -> usize {
    if bins == 1 {
        (SINGLE_BIN_CHUNK_BYTES / (4 * d)).clamp(KC, CHUNK_ROWS) / KC * KC
    } else {
        CHUNK_ROWS
    }
}
/// Longest run summed in f32 before it is added into f64 (ALGORITHM.md 5.2).
pub const RUN_ROWS: usize = 4096;
/// Rows packed at once for the inner kernel (packed panels stay in L1/L2).
const KC: usize = 256;
/// Kernel tile: MR rows of the weighted factor by NR columns.
const MR: usize = 6;
const NR: usize = 16;
/// Budget for the per-partition f64 accumulators together.
const ACCUMULATOR_BUDGET_BYTES: usize = 2 << 30;

/// Binned, filtered moments over the whole source on all cores.
pub fn moments(
    source: &dyn SampleSource,
    spec: &BinSpec,
    weight: SampleWeight,
    progress: &indicatif::ProgressBar,
) -> Result<FilteredMoments> {
    spec.check_request(source)?;
    let d = spec.dim;
    let bins = spec.bins();
    let n = source.len();
    let chunk = chunk_rows(d, bins);
    let chunks = n.div_ceil(chunk as u64);
    let acc_bytes = 8 * bins * (d * (d + 1) / 2 + d + 3) + 8 * bins;
    let by_memory = (ACCUMULATOR_BUDGET_BYTES / acc_bytes.max(1)).max(1) as u64;
    let parts = (rayon::current_num_threads() as u64)
        .min(chunks)
        .min(by_memory)
        .max(1);
    let partials: Vec<Result<FilteredMoments>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let first = p * chunks / parts;
            let last = (p + 1) * chunks / parts;
            let mut worker = Worker::new(spec, weight);
            for c in first..last {
                let start = c * chunk as u64;
                let rows = source.read(start, chunk, &mut worker.x, &mut worker.y)?;
                let want = (n - start).min(chunk as u64) as usize;
                if rows != want || worker.x.len() != rows * d || worker.y.len() != rows {
                    return Err(Error::invalid(format!(
                        "{} returned {rows} rows at row {start}, expected {want}",
                        source.describe()
                    )));
                }
                worker.chunk(spec, weight);
                progress.inc(rows as u64);
            }
            Ok(worker.acc)
        })
        .collect();
    let mut total = FilteredMoments::zeros(d, bins);
    for part in partials {
        total.merge(&part?);
    }
    Ok(total)
}

/// One partition's buffers and f64 accumulators.
struct Worker {
    d: usize,
    acc: FilteredMoments,
    x: Vec<f32>,
    y: Vec<f32>,
    bin: Vec<u32>,
    w: Vec<f32>,
    sorted_x: Vec<f32>,
    sorted_w: Vec<f32>,
    offsets: Vec<usize>,
    kernel: SyrkWorkspace,
    run_sum_x: Vec<f32>,
}

impl Worker {
    fn new(spec: &BinSpec, _weight: SampleWeight) -> Self {
        let d = spec.dim;
        let bins = spec.bins();
        Worker {
            d,
            acc: FilteredMoments::zeros(d, bins),
            x: Vec::new(),
            y: Vec::new(),
            bin: Vec::new(),
            w: Vec::new(),
            sorted_x: Vec::new(),
            sorted_w: Vec::new(),
            offsets: vec![0; bins + 1],
            kernel: SyrkWorkspace::new(d),
            run_sum_x: vec![0.0; d],
        }
    }

    fn chunk(&mut self, spec: &BinSpec, weight: SampleWeight) {
        let d = self.d;
        let rows = self.y.len();
        let bins = self.acc.bins;
        self.bin.clear();
        self.w.clear();
        for i in 0..rows {
            let y = self.y[i] as f64;
            let b = if bins == 1 {
                0
            } else {
                bin_of_row(spec, self.kernel.use_fma, &self.x[i * d..(i + 1) * d], y)
            };
            let w = weight.of(y);
            self.acc.count[b] += 1;
            self.acc.weight_sum[b] += w;
            self.acc.sum_y[b] += y;
            self.acc.sum_y2[b] += y * y;
            self.bin.push(b as u32);
            self.w.push(w as f32);
        }
        if bins == 1 {
            let (x, w) = (std::mem::take(&mut self.x), std::mem::take(&mut self.w));
            self.segment(0, &x, &w);
            (self.x, self.w) = (x, w);
            return;
        }
        // Counting sort of the rows by bin.
        self.offsets.iter_mut().for_each(|o| *o = 0);
        for &b in &self.bin {
            self.offsets[b as usize + 1] += 1;
        }
        for b in 0..bins {
            self.offsets[b + 1] += self.offsets[b];
        }
        self.sorted_x.resize(rows * d, 0.0);
        self.sorted_w.resize(rows, 0.0);
        let mut next = self.offsets.clone();
        for i in 0..rows {
            let b = self.bin[i] as usize;
            let j = next[b];
            next[b] += 1;
            self.sorted_x[j * d..(j + 1) * d].copy_from_slice(&self.x[i * d..(i + 1) * d]);
            self.sorted_w[j] = self.w[i];
        }
        let (sx, sw) = (
            std::mem::take(&mut self.sorted_x),
            std::mem::take(&mut self.sorted_w),
        );
        for b in 0..bins {
            let (s, e) = (self.offsets[b], self.offsets[b + 1]);
            if e > s {
                self.segment(b, &sx[s * d..e * d], &sw[s..e]);
            }
        }
        (self.sorted_x, self.sorted_w) = (sx, sw);
    }

    /// Adds the rows of one bin (any length) into bin `b`'s accumulators, RUN_ROWS at a time.
    fn segment(&mut self, b: usize, x: &[f32], w: &[f32]) {
        let d = self.d;
        let tri = d * (d + 1) / 2;
        for (xr, wr) in x.chunks(RUN_ROWS * d).zip(w.chunks(RUN_ROWS)) {
            self.kernel.syrk_upper(xr, wr);
            self.kernel
                .add_upper_into(&mut self.acc.sum_xx[b * tri..(b + 1) * tri]);
            self.run_sum_x.iter_mut().for_each(|s| *s = 0.0);
            for (row, &wi) in xr.chunks_exact(d).zip(wr) {
                for (s, v) in self.run_sum_x.iter_mut().zip(row) {
                    *s += wi * v;
                }
            }
            for (a, s) in self.acc.sum_x[b * d..(b + 1) * d]
                .iter_mut()
                .zip(&self.run_sum_x)
            {
                *a += *s as f64;
            }
        }
    }
}

/// The bin of one f32 row: [`BinSpec::bin_of`]'s rule with z = B^T x in f64, summed in eight
/// interleaved lanes (vectorised, with AVX2 when present: a sequential f64 sum is latency-bound
/// and cost more than the SYRK at K = 64). The order differs from bin_of's by at most
/// (d + 1) 2^-53 sum |b x| <= (d + 1) 2^-53 |x|; a z within twice that of an edge is summed
/// again in bin_of's order, so the bin is exactly bin_of's (and the GPU's).
fn bin_of_row(spec: &BinSpec, use_avx2: bool, x: &[f32], y: f64) -> usize {
    let d = spec.dim;
    let per_axis = spec.cells_per_axis();
    let mut cell = 0usize;
    let mut band = None;
    for (j, edges) in spec.axis_edges.iter().enumerate() {
        let row = &spec.basis[j * d..(j + 1) * d];
        let mut z = dot_f64(use_avx2, row, x);
        let band = *band.get_or_insert_with(|| {
            let norm = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            (d as f64 + 2.0) * f64::EPSILON * norm + f64::MIN_POSITIVE
        });
        if edges.iter().any(|&e| (z - e).abs() <= band) {
            z = row.iter().zip(x).map(|(a, &b)| a * b as f64).sum();
        }
        cell = cell * per_axis + count_below(edges, z);
    }
    cell * spec.y_bins() + count_below(&spec.y_edges[cell], y)
}

fn dot_f64(use_avx2: bool, b: &[f64], x: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2 {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { dot_f64_avx2(b, x) };
    }
    let _ = use_avx2;
    dot_f64_lanes(b, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f64_avx2(b: &[f64], x: &[f32]) -> f64 {
    dot_f64_lanes(b, x)
}

#[inline(always)]
fn dot_f64_lanes(b: &[f64], x: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0.0f64; LANES];
    let mut bc = b.chunks_exact(LANES);
    let mut xc = x.chunks_exact(LANES);
    for (bb, v) in (&mut bc).zip(&mut xc) {
        for l in 0..LANES {
            lanes[l] += bb[l] * v[l] as f64;
        }
    }
    for (l, (bb, v)) in bc.remainder().iter().zip(xc.remainder()).enumerate() {
        lanes[l] += bb * *v as f64;
    }
    lanes.iter().sum()
}

/// Buffers of the f32 weighted SYRK: packed panels and the f32 result tile.
pub struct SyrkWorkspace {
    d: usize,
    /// d rounded up to MR (rows of the tile).
    da: usize,
    /// d rounded up to NR (columns of the tile).
    db: usize,
    /// (da / MR) panels of KC x MR weighted values.
    apack: Vec<f32>,
    /// (db / NR) panels of KC x NR values.
    bpack: Vec<f32>,
    /// da x db result, row-major; only blocks touching the upper triangle are written.
    c: Vec<f32>,
    use_fma: bool,
}

impl SyrkWorkspace {
    /// Workspace for dimension d.
    pub fn new(d: usize) -> Self {
        let da = d.div_ceil(MR) * MR;
        let db = d.div_ceil(NR) * NR;
        SyrkWorkspace {
            d,
            da,
            db,
            apack: vec![0.0; KC * da],
            bpack: vec![0.0; KC * db],
            c: vec![0.0; da * db],
            use_fma: fma_available(),
        }
    }

    /// c = upper triangle of x^T diag(w) x (x: m x d row-major), in f32.
    pub fn syrk_upper(&mut self, x: &[f32], w: &[f32]) {
        let d = self.d;
        self.c.iter_mut().for_each(|v| *v = 0.0);
        for (xk, wk) in x.chunks(KC * d).zip(w.chunks(KC)) {
            let kc = wk.len();
            self.pack(xk, wk, kc);
            for ib in 0..self.da / MR {
                let row0 = ib * MR;
                // First column block that reaches the diagonal of these rows.
                for jb in row0 / NR..self.db / NR {
                    let ap = &self.apack[ib * KC * MR..ib * KC * MR + kc * MR];
                    let bp = &self.bpack[jb * KC * NR..jb * KC * NR + kc * NR];
                    let c0 = row0 * self.db + jb * NR;
                    micro_kernel(self.use_fma, ap, bp, kc, &mut self.c[c0..], self.db);
                }
            }
        }
    }

    fn pack(&mut self, x: &[f32], w: &[f32], kc: usize) {
        let d = self.d;
        for ib in 0..self.da / MR {
            let panel = &mut self.apack[ib * KC * MR..(ib + 1) * KC * MR];
            let c0 = ib * MR;
            let width = MR.min(d - c0);
            for (i, (row, &wi)) in x.chunks_exact(d).zip(w).enumerate() {
                let dst = &mut panel[i * MR..(i + 1) * MR];
                for (t, v) in dst[..width].iter_mut().zip(&row[c0..c0 + width]) {
                    *t = wi * v;
                }
                dst[width..].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        for jb in 0..self.db / NR {
            let panel = &mut self.bpack[jb * KC * NR..(jb + 1) * KC * NR];
            let c0 = jb * NR;
            let width = NR.min(d - c0);
            for (i, row) in x.chunks_exact(d).enumerate() {
                let dst = &mut panel[i * NR..(i + 1) * NR];
                dst[..width].copy_from_slice(&row[c0..c0 + width]);
                dst[width..].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        debug_assert!(kc <= KC);
    }

    /// Adds the f32 upper triangle into a packed f64 upper triangle (row by row).
    pub fn add_upper_into(&self, packed: &mut [f64]) {
        let d = self.d;
        let mut k = 0;
        for a in 0..d {
            let row = &self.c[a * self.db + a..a * self.db + d];
            for (p, v) in packed[k..k + d - a].iter_mut().zip(row) {
                *p += *v as f64;
            }
            k += d - a;
        }
    }
}

fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// c[MR x NR] (row stride ldc) += sum over kc rows of a_i^T b_i.
#[inline]
fn micro_kernel(use_fma: bool, ap: &[f32], bp: &[f32], kc: usize, c: &mut [f32], ldc: usize) {
    assert!(ap.len() >= kc * MR && bp.len() >= kc * NR && c.len() >= (MR - 1) * ldc + NR);
    #[cfg(target_arch = "x86_64")]
    if use_fma {
        // SAFETY: AVX2 and FMA were detected at run time; the bounds are asserted above.
        unsafe { micro_kernel_fma(ap, bp, kc, c, ldc) };
        return;
    }
    let _ = use_fma;
    micro_kernel_portable(ap, bp, kc, c, ldc);
}

fn micro_kernel_portable(ap: &[f32], bp: &[f32], kc: usize, c: &mut [f32], ldc: usize) {
    let mut acc = [[0.0f32; NR]; MR];
    for i in 0..kc {
        let b: &[f32; NR] = bp[i * NR..(i + 1) * NR].try_into().expect("NR values");
        let a: &[f32; MR] = ap[i * MR..(i + 1) * MR].try_into().expect("MR values");
        for r in 0..MR {
            for l in 0..NR {
                acc[r][l] += a[r] * b[l];
            }
        }
    }
    for r in 0..MR {
        for l in 0..NR {
            c[r * ldc + l] += acc[r][l];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_kernel_fma(ap: &[f32], bp: &[f32], kc: usize, c: &mut [f32], ldc: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (a, b) = (ap.as_ptr(), bp.as_ptr());
    for i in 0..kc {
        let b0 = _mm256_loadu_ps(b.add(i * NR));
        let b1 = _mm256_loadu_ps(b.add(i * NR + 8));
        for (r, row) in acc.iter_mut().enumerate() {
            let ar = _mm256_broadcast_ss(&*a.add(i * MR + r));
            row[0] = _mm256_fmadd_ps(ar, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ar, b1, row[1]);
        }
    }
    let cp = c.as_mut_ptr();
    for (r, row) in acc.iter().enumerate() {
        let p = cp.add(r * ldc);
        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), row[0]));
        _mm256_storeu_ps(p.add(8), _mm256_add_ps(_mm256_loadu_ps(p.add(8)), row[1]));
    }
}
