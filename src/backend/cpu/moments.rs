//! CPU binned filtered moments (docs/algorithm.md, "Filtered PCA" and "Numerics").
//!
//! The sums of w x x^T go through [`Syrk`]: an f32 register-blocked kernel (AVX-512, AVX2/FMA
//! or portable, chosen at run time) over runs of at most [`RUN_ROWS`] rows of one bin, each run
//! added into f64. Every f64 sum is taken in an order fixed by N and d alone, so the result is
//! the same bits whatever the thread count:
//! - **K = 1**: the rows are cut into at most [`MAX_PARTITIONS`] contiguous partitions (a count
//!   set by N and d, not by the threads); each sums its chunks of [`RUN_ROWS`] rows (at most 4 MiB
//!   of x; one run each, the kernel fetching each slice's rows while it multiplies the last) into its own f64 accumulators, and the
//!   partitions are merged in order. The accumulators are one triangle each, so merging is
//!   cheap.
//! - **K > 1**: the rows are read in blocks of about [`BLOCK_BYTES`] of x, or with many bins
//!   enough rows for [`ROWS_PER_BIN`] a bin up to [`MAX_BLOCK_BYTES`] or the accumulators' size
//!   (at most [`MAX_ACC_BLOCK_BYTES`]); sub-chunks are read and binned in parallel; per block,
//!   each bin's rows are listed by index (a counting sort of indices, no copy of x) and packed
//!   by the kernel straight from where they lie. The work is
//!   split by bin, and a bin's output rows into groups when there are few bins, so every output
//!   value has one owner and no K-fold accumulators are merged.
//!
//! A row's bin follows [`BinSpec::bin_of`]'s rule with z = B^T x computed in f64 (eight-lane
//! sums), so bins agree with [`crate::moments::reference_moments`] except for a z within ~1e-15
//! relative of an edge. Counts, weight sums, y and y^2 sums are accumulated per row in f64, in
//! row order.

pub use super::syrk::{Isa, MomentKernel, RUN_ROWS};

use super::syrk::{tri_offset, Rows, Syrk};
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::moments::{count_below, BinSpec, FilteredMoments, SampleWeight};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Mutex;

/// Bytes of x per chunk when K = 1 (at most RUN_ROWS rows): long chunks leave few slices
/// whose rows the kernel could not fetch ahead (the first of each run).
const SINGLE_BIN_CHUNK_BYTES: usize = 4 << 20;
/// Most partitions of the rows when K = 1 (fixed, so the sum order does not follow the threads).
pub const MAX_PARTITIONS: u64 = 64;
/// Budget for the K = 1 partitions' f64 accumulators together.
const PARTITION_BUDGET_BYTES: usize = 1 << 30;
/// Bytes of x per sub-chunk (one read task) when K > 1.
const SUB_CHUNK_BYTES: usize = 1 << 20;
/// Bytes of x per block when K > 1: the rows whose bins are summed in one parallel step.
pub const BLOCK_BYTES: usize = 32 << 20;
/// Rows per bin a block aims at when K > 1. Each bin's run ends by adding its f32 triangle
/// into the f64 one (d^2 / 2 values through memory), which a few dozen rows per bin did not
/// pay for: at d = 256, K = 1008 the blocks of BLOCK_BYTES ran at 38 GFLOP/s, blocks of 512
/// rows a bin at 110 (`relu-fpt bench moments --d 256 --bins 1008 --n 1000000`).
pub const ROWS_PER_BIN: usize = 512;
/// Most bytes of x per block (read into memory when the source is not already there), unless
/// the pass's f64 accumulators take more: a block may then be as large as they are, up to
/// [`MAX_ACC_BLOCK_BYTES`], so that the pass holds at most about twice its accumulators. With
/// 256 MiB, the paper method's rounds at d = 512 (K = 1008, 1.1 GB of accumulators) had about
/// 130 rows a bin: `bench moments --backend cpu --d 512 --bins 1008 --n 1000000` ran at
/// 121 GFLOP/s, and at 157 with blocks as large as the accumulators (512 rows a bin).
pub const MAX_BLOCK_BYTES: usize = 256 << 20;
/// Most bytes of x per block whatever the accumulators take.
pub const MAX_ACC_BLOCK_BYTES: usize = 1 << 30;
/// Work items per thread and block aimed at when K > 1 (load balance across unequal bins).
const ITEMS_PER_THREAD: usize = 4;

/// Binned, filtered moments over the whole source on all cores, with the kernel named by
/// `RELU_FPT_CPU_KERNEL` or else the widest the CPU has.
pub fn moments(
    source: &dyn SampleSource,
    spec: &BinSpec,
    weight: SampleWeight,
    progress: &indicatif::ProgressBar,
) -> Result<FilteredMoments> {
    moments_with_kernel(source, spec, weight, MomentKernel::Auto, progress)
}

/// [`moments`] on a chosen kernel (an error when the CPU lacks it).
pub fn moments_with_kernel(
    source: &dyn SampleSource,
    spec: &BinSpec,
    weight: SampleWeight,
    kernel: MomentKernel,
    progress: &indicatif::ProgressBar,
) -> Result<FilteredMoments> {
    spec.check_request(source)?;
    let isa = kernel.resolve()?;
    let m = if spec.bins() == 1 {
        single_bin(source, spec, weight, isa, progress)?
    } else {
        binned(source, spec, weight, isa, progress)?
    };
    // The micro-kernels multiply in f32: weights or products past 3.4e38 become inf.
    if let Some(v) = m.sum_xx.iter().chain(&m.sum_x).find(|v| !v.is_finite()) {
        return Err(crate::Error::invalid(format!(
            "moments: a sum is {v}; the products of x and the label weights ({weight:?}) are \
             too large for f32: rescale x and y (e.g. divide y by its standard deviation)"
        )));
    }
    Ok(m)
}

/// Rows `start..start + rows` of x and y: the source's own memory when it holds them (no
/// copy), else read into `x` and `y`; an error unless all of them came back.
fn rows_of<'a>(
    source: &'a dyn SampleSource,
    start: u64,
    rows: usize,
    x: &'a mut Vec<f32>,
    y: &'a mut Vec<f32>,
) -> Result<(&'a [f32], &'a [f32])> {
    let d = source.dim();
    let (xs, ys) = match source.in_memory(start, rows) {
        Some(v) => v,
        None => {
            source.read(start, rows, x, y)?;
            (&x[..], &y[..])
        }
    };
    if xs.len() != rows * d || ys.len() != rows {
        return Err(Error::invalid(format!(
            "{} returned {} rows at row {start}, expected {rows}",
            source.describe(),
            ys.len()
        )));
    }
    Ok((xs, ys))
}

/// Rows stored one after another.
struct Contiguous<'a> {
    x: &'a [f32],
    w: &'a [f32],
    d: usize,
}

impl Rows for Contiguous<'_> {
    #[inline(always)]
    fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.d..(i + 1) * self.d]
    }
    #[inline(always)]
    fn weight(&self, i: usize) -> f32 {
        self.w[i]
    }
}

/// K = 1: fixed partitions of contiguous rows, merged in order.
fn single_bin(
    source: &dyn SampleSource,
    spec: &BinSpec,
    weight: SampleWeight,
    isa: Isa,
    progress: &indicatif::ProgressBar,
) -> Result<FilteredMoments> {
    let d = spec.dim;
    let n = source.len();
    let chunk = (SINGLE_BIN_CHUNK_BYTES / (4 * d)).clamp(256, RUN_ROWS);
    let chunks = n.div_ceil(chunk as u64);
    let acc_bytes = FilteredMoments::bin_bytes(d);
    let parts = chunks
        .min(MAX_PARTITIONS)
        .min((PARTITION_BUDGET_BYTES / acc_bytes) as u64)
        .max(1);
    let weighted = weight != SampleWeight::Unit;
    let partials: Vec<Result<FilteredMoments>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mut acc = FilteredMoments::zeros(d, 1);
            let mut syrk = Syrk::new(isa, d);
            let (mut x, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
            for c in p * chunks / parts..(p + 1) * chunks / parts {
                let start = c * chunk as u64;
                let want = (n - start).min(chunk as u64) as usize;
                let (xs, ys) = rows_of(source, start, want, &mut x, &mut y)?;
                w.clear();
                for &yi in ys {
                    let yv = yi as f64;
                    let wv = weight.of(yv);
                    acc.count[0] += 1;
                    acc.weight_sum[0] += wv;
                    acc.sum_y[0] += yv;
                    acc.sum_y2[0] += yv * yv;
                    w.push(wv as f32);
                }
                let set = Contiguous { x: xs, w: &w, d };
                syrk.run(
                    &set,
                    0..want,
                    0..d,
                    weighted,
                    &mut acc.sum_xx,
                    &mut acc.sum_x,
                );
                progress.inc(want as u64);
            }
            Ok(acc)
        })
        .collect();
    let mut total = FilteredMoments::zeros(d, 1);
    for part in partials {
        total.merge(&part?);
    }
    Ok(total)
}

/// One sub-chunk of a block: its rows and labels (the source's memory, or read into `x`, `y`),
/// bins and weights.
#[derive(Default)]
struct SubChunk<'s> {
    x: Vec<f32>,
    y: Vec<f32>,
    view: Option<(&'s [f32], &'s [f32])>,
    bin: Vec<u32>,
    w: Vec<f32>,
}

impl SubChunk<'_> {
    fn xs(&self) -> &[f32] {
        self.view.map_or(&self.x, |v| v.0)
    }
    fn ys(&self) -> &[f32] {
        self.view.map_or(&self.y, |v| v.1)
    }
}

/// Rows of one bin in a block, by index (sub-chunk << shift | row).
struct Gathered<'a> {
    subs: &'a [SubChunk<'a>],
    index: &'a [u32],
    shift: u32,
    d: usize,
}

impl Rows for Gathered<'_> {
    #[inline(always)]
    fn row(&self, i: usize) -> &[f32] {
        let g = self.index[i] as usize;
        let r = g & ((1 << self.shift) - 1);
        &self.subs[g >> self.shift].xs()[r * self.d..(r + 1) * self.d]
    }
    #[inline(always)]
    fn weight(&self, i: usize) -> f32 {
        let g = self.index[i] as usize;
        self.subs[g >> self.shift].w[g & ((1 << self.shift) - 1)]
    }
}

/// A bin's rows in a block and the output rows (with their accumulators) one task sums.
struct Item<'a> {
    rows: &'a [u32],
    out: Range<usize>,
    xx: &'a mut [f64],
    sx: &'a mut [f64],
}

/// K > 1: blocks of rows; per block, work split by bin (and output rows), packed by index.
fn binned(
    source: &dyn SampleSource,
    spec: &BinSpec,
    weight: SampleWeight,
    isa: Isa,
    progress: &indicatif::ProgressBar,
) -> Result<FilteredMoments> {
    let d = spec.dim;
    let bins = spec.bins();
    let n = source.len();
    let tri = d * (d + 1) / 2;
    let sub = 1usize << (SUB_CHUNK_BYTES / (4 * d)).clamp(64, 4096).ilog2();
    let shift = sub.trailing_zeros();
    let acc_bytes = bins * FilteredMoments::bin_bytes(d);
    let cap = MAX_BLOCK_BYTES.max(acc_bytes.min(MAX_ACC_BLOCK_BYTES));
    let block_bytes = BLOCK_BYTES.max((bins * ROWS_PER_BIN * 4 * d).min(cap));
    let subs_per_block = (block_bytes / (sub * 4 * d)).max(1);
    let block = sub * subs_per_block;
    let weighted = weight != SampleWeight::Unit;
    let use_avx2 = dot_avx2_available();
    let threads = rayon::current_num_threads();
    let mut subs: Vec<SubChunk> = (0..subs_per_block).map(|_| SubChunk::default()).collect();
    let mut acc = FilteredMoments::zeros(d, bins);
    let mut order: Vec<u32> = Vec::new();
    let mut offsets = vec![0usize; bins + 1];
    let pool: Mutex<Vec<Syrk>> = Mutex::new(Vec::new());
    let mut start = 0u64;
    while start < n {
        let rows = (n - start).min(block as u64) as usize;
        let m = rows.div_ceil(sub);
        subs[..m]
            .par_iter_mut()
            .enumerate()
            .try_for_each(|(s, sc)| -> Result<()> {
                let first = start + (s * sub) as u64;
                let want = (rows - s * sub).min(sub);
                sc.view = source.in_memory(first, want);
                let (xs, ys) = match sc.view {
                    Some(v) => v,
                    None => {
                        source.read(first, want, &mut sc.x, &mut sc.y)?;
                        (&sc.x[..], &sc.y[..])
                    }
                };
                if xs.len() != want * d || ys.len() != want {
                    return Err(Error::invalid(format!(
                        "{} returned {} rows at row {first}, expected {want}",
                        source.describe(),
                        ys.len()
                    )));
                }
                sc.bin.clear();
                sc.w.clear();
                for (row, &y) in xs.chunks_exact(d).zip(ys) {
                    let yv = y as f64;
                    sc.bin.push(bin_of_row(spec, use_avx2, row, yv) as u32);
                    sc.w.push(weight.of(yv) as f32);
                }
                Ok(())
            })?;
        // Scalar sums in row order, and each bin's rows (a counting sort of indices).
        offsets.iter_mut().for_each(|o| *o = 0);
        for sc in &subs[..m] {
            for &b in &sc.bin {
                offsets[b as usize + 1] += 1;
            }
        }
        for b in 0..bins {
            offsets[b + 1] += offsets[b];
        }
        order.resize(rows, 0);
        let mut next = offsets.clone();
        for (s, sc) in subs[..m].iter().enumerate() {
            for (i, (&b, &y)) in sc.bin.iter().zip(sc.ys()).enumerate() {
                let b = b as usize;
                let yv = y as f64;
                acc.count[b] += 1;
                acc.weight_sum[b] += weight.of(yv);
                acc.sum_y[b] += yv;
                acc.sum_y2[b] += yv * yv;
                order[next[b]] = ((s << shift) | i) as u32;
                next[b] += 1;
            }
        }
        // One task per (bin, group of output rows); groups only when bins are few.
        let mut items = Vec::new();
        for (b, (xx_bin, sx_bin)) in acc
            .sum_xx
            .chunks_mut(tri)
            .zip(acc.sum_x.chunks_mut(d))
            .enumerate()
        {
            let bin_rows = &order[offsets[b]..offsets[b + 1]];
            if bin_rows.is_empty() {
                continue;
            }
            let want = (ITEMS_PER_THREAD * threads * bin_rows.len()).div_ceil(rows);
            let bounds = row_groups(d, want, isa.row_block());
            let (mut xx_rest, mut sx_rest) = (xx_bin, sx_bin);
            for g in bounds.windows(2) {
                let (xx, rest) = xx_rest.split_at_mut(tri_offset(g[1], d) - tri_offset(g[0], d));
                xx_rest = rest;
                let (sx, rest) = sx_rest.split_at_mut(g[1] - g[0]);
                sx_rest = rest;
                items.push(Item {
                    rows: bin_rows,
                    out: g[0]..g[1],
                    xx,
                    sx,
                });
            }
        }
        let subs_ref = &subs[..m];
        items.into_par_iter().for_each(|item| {
            let taken = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut syrk = taken.unwrap_or_else(|| Syrk::new(isa, d));
            let set = Gathered {
                subs: subs_ref,
                index: item.rows,
                shift,
                d,
            };
            let mut r = 0;
            while r < item.rows.len() {
                let end = (r + RUN_ROWS).min(item.rows.len());
                syrk.run(&set, r..end, item.out.clone(), weighted, item.xx, item.sx);
                r = end;
            }
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(syrk);
        });
        progress.inc(rows as u64);
        start += rows as u64;
    }
    Ok(acc)
}

/// Bounds 0 = b_0 < b_1 < .. < b_g = d of at most `groups` groups of output rows with about
/// equal shares of the triangle, each a multiple of `row_block` but the last, and at least
/// two row blocks per group.
fn row_groups(d: usize, groups: usize, row_block: usize) -> Vec<usize> {
    let groups = groups.clamp(1, d.div_ceil(2 * row_block).max(1));
    let total = tri_offset(d, d);
    let mut bounds = vec![0];
    for j in 1..groups {
        let target = total * j / groups;
        let mut r = (0..d).find(|&r| tri_offset(r, d) >= target).unwrap_or(d);
        r = (r + row_block / 2) / row_block * row_block;
        if r > *bounds.last().expect("starts at 0") && r < d {
            bounds.push(r);
        }
    }
    bounds.push(d);
    bounds
}

fn dot_avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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
    let mut band = 0.0;
    for (j, edges) in spec.axis_edges.iter().enumerate() {
        let row = &spec.basis[j * d..(j + 1) * d];
        // |x|^2 in the same vectorised pass as the first z (a sequential sum of d squares
        // would be latency-bound and cost as much as the SYRK at K = 64).
        let (mut z, norm2) = dot_f64(use_avx2, row, x, j == 0);
        if j == 0 {
            // The lanes' |x|^2 is within a factor 1 + d 2^-53 of the exact one: the band
            // is widened by 1% to cover it.
            band = 1.01 * (d as f64 + 2.0) * f64::EPSILON * norm2.sqrt() + f64::MIN_POSITIVE;
        }
        if edges.iter().any(|&e| (z - e).abs() <= band) {
            z = row.iter().zip(x).map(|(a, &b)| a * b as f64).sum();
        }
        cell = cell * per_axis + count_below(edges, z);
    }
    cell * spec.y_bins() + count_below(&spec.y_edges[cell], y)
}

/// b . x and, when `norm` is set, |x|^2 (else 0), both in f64 over eight interleaved lanes.
fn dot_f64(use_avx2: bool, b: &[f64], x: &[f32], norm: bool) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2 {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe {
            if norm {
                dot_f64_avx2::<true>(b, x)
            } else {
                dot_f64_avx2::<false>(b, x)
            }
        };
    }
    let _ = use_avx2;
    if norm {
        dot_f64_lanes::<true>(b, x)
    } else {
        dot_f64_lanes::<false>(b, x)
    }
}

/// [`dot_f64_lanes`] in AVX2 registers (the compiler's version converts x one value at a
/// time); the same eight lanes, each a fused multiply-add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f64_avx2<const NORM: bool>(b: &[f64], x: &[f32]) -> (f64, f64) {
    use std::arch::x86_64::*;
    let n = b.len().min(x.len()) / 8 * 8;
    let (mut d0, mut d1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let (mut s0, mut s1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut i = 0;
    while i < n {
        let x0 = _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i)));
        let x1 = _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i + 4)));
        d0 = _mm256_fmadd_pd(_mm256_loadu_pd(b.as_ptr().add(i)), x0, d0);
        d1 = _mm256_fmadd_pd(_mm256_loadu_pd(b.as_ptr().add(i + 4)), x1, d1);
        if NORM {
            s0 = _mm256_fmadd_pd(x0, x0, s0);
            s1 = _mm256_fmadd_pd(x1, x1, s1);
        }
        i += 8;
    }
    let mut lanes = [0.0f64; 8];
    let mut squares = [0.0f64; 8];
    _mm256_storeu_pd(lanes.as_mut_ptr(), d0);
    _mm256_storeu_pd(lanes.as_mut_ptr().add(4), d1);
    _mm256_storeu_pd(squares.as_mut_ptr(), s0);
    _mm256_storeu_pd(squares.as_mut_ptr().add(4), s1);
    for (l, (bb, v)) in b[n..].iter().zip(&x[n..]).enumerate() {
        let xv = *v as f64;
        lanes[l] += bb * xv;
        if NORM {
            squares[l] += xv * xv;
        }
    }
    (lanes.iter().sum(), squares.iter().sum())
}

#[inline(always)]
fn dot_f64_lanes<const NORM: bool>(b: &[f64], x: &[f32]) -> (f64, f64) {
    const LANES: usize = 8;
    let mut lanes = [0.0f64; LANES];
    let mut squares = [0.0f64; LANES];
    let mut bc = b.chunks_exact(LANES);
    let mut xc = x.chunks_exact(LANES);
    for (bb, v) in (&mut bc).zip(&mut xc) {
        for l in 0..LANES {
            let xv = v[l] as f64;
            lanes[l] += bb[l] * xv;
            if NORM {
                squares[l] += xv * xv;
            }
        }
    }
    for (l, (bb, v)) in bc.remainder().iter().zip(xc.remainder()).enumerate() {
        let xv = *v as f64;
        lanes[l] += bb * xv;
        if NORM {
            squares[l] += xv * xv;
        }
    }
    (lanes.iter().sum(), squares.iter().sum())
}
