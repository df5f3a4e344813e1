//! The f32 weighted SYRK under the CPU moments: for a run of rows (named by index, so that a
//! bin's rows are packed straight from where they lie) it forms rows `out` of the upper
//! triangle of X^T diag(w) X and the column sums of diag(w) X in f32, then adds both into f64
//! accumulators (docs/algorithm.md, "Numerics": f32 within short runs, f64 across them).
//!
//! Three micro-kernels, chosen at run time ([`MomentKernel`], [`Isa`]):
//! - AVX-512F: 8 x 32 tiles, 16 zmm accumulators, A broadcast from memory;
//! - AVX2/FMA: 6 x 16 tiles, 12 ymm accumulators;
//! - portable: the AVX2 layout in plain Rust (what the compiler makes of it).
//!
//! Each slice of at most `KC` rows is packed once into column panels of `NR` values (B, zero
//! beyond d). With unit weights and `MR` dividing `NR` the kernel broadcasts A straight out of
//! B's panels, so a row is copied once; otherwise A = w x is packed into panels of `MR` rows.
//! Tiles run panel by panel (the panel stays in L1 while every row block above the diagonal
//! passes over it; the AVX-512 slice is 128 rows so that a B panel and the A rows broadcast
//! from another stay in L1 together). While the tiles of one slice run, each tile asks for a
//! share of the next slice's cache lines (a prefetch every few of its rows): packing then reads
//! L2 instead of stalling on memory, which had cost a third of the pass at d = 128. A row block's first tile starts at its first row rounded down to a vector,
//! so the triangle costs about half a vector of extra columns per row block. The column sums
//! (the augmented (x, 1) column of the moment) are summed from the packed panels, d adds per
//! row, instead of widening every tile.
//!
//! Every output value is a sum over the rows in order within `KC` slices, so it does not
//! depend on how the rows of the output are split between calls (threads).

use crate::error::{Error, Result};
use std::ops::Range;

/// Longest run summed in f32 before it is added into f64.
pub const RUN_ROWS: usize = 4096;

/// Environment variable that forces a moments kernel when the backend asks for `Auto`.
pub const KERNEL_ENV: &str = "RELU_FPT_CPU_KERNEL";

/// Which f32 micro-kernel the CPU moments use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MomentKernel {
    /// `RELU_FPT_CPU_KERNEL` when set, otherwise the widest the CPU has.
    #[default]
    Auto,
    /// AVX-512F (8 x 32 tiles).
    Avx512,
    /// AVX2 and FMA (6 x 16 tiles).
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl MomentKernel {
    /// The instruction set this choice runs on: an error when the CPU lacks it, or when
    /// `RELU_FPT_CPU_KERNEL` names none.
    pub fn resolve(self) -> Result<Isa> {
        let (isa, from_env) = match self {
            MomentKernel::Auto => match std::env::var(KERNEL_ENV) {
                Ok(v) if !v.trim().is_empty() => {
                    let k = <MomentKernel as clap::ValueEnum>::from_str(v.trim(), true).map_err(
                        |_| {
                            Error::invalid(format!(
                                "{KERNEL_ENV}={v}: expected auto, avx512, avx2 or portable"
                            ))
                        },
                    )?;
                    match k.isa() {
                        Some(isa) => (isa, true),
                        None => return Ok(Isa::best()),
                    }
                }
                _ => return Ok(Isa::best()),
            },
            k => (k.isa().expect("not Auto"), false),
        };
        if !isa.available() {
            let how = if from_env {
                format!("{KERNEL_ENV}={}", isa.name())
            } else {
                format!("kernel {}", isa.name())
            };
            return Err(Error::invalid(format!(
                "{how}: this CPU lacks {}; choose {} or auto",
                isa.needs(),
                Isa::ALL
                    .iter()
                    .filter(|i| i.available())
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(isa)
    }

    fn isa(self) -> Option<Isa> {
        match self {
            MomentKernel::Auto => None,
            MomentKernel::Avx512 => Some(Isa::Avx512),
            MomentKernel::Avx2 => Some(Isa::Avx2),
            MomentKernel::Portable => Some(Isa::Portable),
        }
    }
}

/// An instruction set with a micro-kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// Plain Rust.
    Portable,
}

impl Isa {
    /// Widest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// "avx512", "avx2" or "portable".
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    fn needs(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512F",
            Isa::Avx2 => "AVX2 and FMA",
            Isa::Portable => "nothing",
        }
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The widest one this CPU runs.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Portable)
    }

    /// Rows per tile: work split across calls must start at a multiple of this.
    pub fn row_block(self) -> usize {
        match self {
            Isa::Avx512 => Avx512::MR,
            Isa::Avx2 => Avx2::MR,
            Isa::Portable => Portable::MR,
        }
    }
}

/// Rows of a run: row `i` (at least d values) and its weight.
pub trait Rows: Sync {
    /// The values of row `i`; only the first d are read.
    fn row(&self, i: usize) -> &[f32];
    /// The weight of row `i`.
    fn weight(&self, i: usize) -> f32;
}

/// Offset of row `a`'s first entry in a row-by-row packed upper triangle of dimension d.
pub fn tri_offset(a: usize, d: usize) -> usize {
    a * d - a * a.saturating_sub(1) / 2
}

/// A 64-byte aligned f32 buffer (full-width vector loads never straddle a cache line).
struct Aligned {
    buf: Vec<f32>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0.0f32; len + 16];
        let off = buf.as_ptr().align_offset(64).min(16);
        Aligned { buf, off, len }
    }
    fn slice(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }
    fn slice_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// Buffers of the weighted SYRK for one dimension and kernel; one per thread.
pub struct Syrk {
    isa: Isa,
    d: usize,
    /// Column panels of B: (d rounded up to NR) / NR panels of KC x NR.
    bpack: Aligned,
    /// Row panels of A = w x: (d rounded up to MR) / MR panels of KC x MR.
    apack: Aligned,
    /// f32 result, (d rounded up to MR) rows by ldc = d rounded up to NR columns.
    c: Aligned,
    /// f32 column sums of diag(w) X over the run.
    sum_x: Vec<f32>,
    /// Addresses of the cache lines of the next slice's rows, fetched during the tiles.
    ahead: Vec<usize>,
}

impl Syrk {
    /// Workspace for dimension d on the given kernel.
    pub fn new(isa: Isa, d: usize) -> Self {
        let (mr, nr, kc) = match isa {
            Isa::Avx512 => (Avx512::MR, Avx512::NR, Avx512::KC),
            Isa::Avx2 => (Avx2::MR, Avx2::NR, Avx2::KC),
            Isa::Portable => (Portable::MR, Portable::NR, Portable::KC),
        };
        let da = d.div_ceil(mr) * mr;
        let db = d.div_ceil(nr) * nr;
        Syrk {
            isa,
            d,
            bpack: Aligned::new(kc * db),
            apack: Aligned::new(kc * da),
            c: Aligned::new(da * db),
            sum_x: vec![0.0; da.max(db)],
            ahead: Vec::new(),
        }
    }

    /// Adds rows `out` of the upper triangle of sum over `range` of w_i x_i x_i^T into `xx`
    /// (those rows of a packed upper triangle: from `tri_offset(out.start)` to
    /// `tri_offset(out.end)`) and the column sums of w_i x_i for columns `out` into `sx`.
    /// `out.start` must be a multiple of the kernel's row block; `range` at most RUN_ROWS rows.
    /// `weighted` false means every weight is 1 (the weights are not read).
    pub fn run<R: Rows>(
        &mut self,
        rows: &R,
        range: Range<usize>,
        out: Range<usize>,
        weighted: bool,
        xx: &mut [f64],
        sx: &mut [f64],
    ) {
        let d = self.d;
        assert!(out.start < out.end && out.end <= d);
        assert!(out.start.is_multiple_of(self.isa.row_block()));
        assert!(range.len() <= RUN_ROWS);
        assert_eq!(xx.len(), tri_offset(out.end, d) - tri_offset(out.start, d));
        assert_eq!(sx.len(), out.len());
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Syrk::new is only given an Isa that `available()` confirmed (resolve).
            Isa::Avx512 => unsafe { run_avx512(self, rows, range, out.clone(), weighted) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX2 and FMA were detected.
            Isa::Avx2 => unsafe { run_avx2(self, rows, range, out.clone(), weighted) },
            _ => run_generic::<Portable, R>(self, rows, range, out.clone(), weighted),
        }
        self.add_into(xx, sx, out);
    }

    /// Adds the f32 rows `out` of the upper triangle and the column sums into f64.
    fn add_into(&self, xx: &mut [f64], sx: &mut [f64], out: Range<usize>) {
        let d = self.d;
        let ldc = self.ldc();
        let c = self.c.slice();
        let mut k = 0;
        for a in out.clone() {
            let row = &c[a * ldc + a..a * ldc + d];
            for (p, v) in xx[k..k + d - a].iter_mut().zip(row) {
                *p += *v as f64;
            }
            k += d - a;
        }
        for (s, v) in sx.iter_mut().zip(&self.sum_x[out]) {
            *s += *v as f64;
        }
    }

    fn ldc(&self) -> usize {
        let nr = match self.isa {
            Isa::Avx512 => Avx512::NR,
            Isa::Avx2 => Avx2::NR,
            Isa::Portable => Portable::NR,
        };
        self.d.div_ceil(nr) * nr
    }
}

/// A micro-kernel and its tile layout.
trait MicroKernel {
    /// Rows per tile (broadcast side).
    const MR: usize;
    /// Columns per B panel.
    const NR: usize;
    /// Values per vector: a tile is 1..=NR/V vectors wide.
    const V: usize;
    /// Rows per packed slice.
    const KC: usize;
    /// Column sums of an A panel (rows of MR values).
    fn column_sums_a(panel: &[f32], out: &mut [f32]);
    /// Column sums of a B panel (rows of NR values).
    fn column_sums_b(panel: &[f32], out: &mut [f32]);
    /// c[MR rows, nv * V columns] (row stride ldc) += sum over kc rows k of
    /// a[k * a_stride + r] * b[k * NR + j], asking for the cache lines at `ahead` (addresses)
    /// in L2 along the way.
    ///
    /// # Safety
    /// a, b, c must hold what the sum reads and writes; the CPU must have the kernel's ISA.
    // A micro-kernel's operands are raw pointers with their strides: bundling them would only
    // hide the layout the safety contract speaks of.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        nv: usize,
        a: *const f32,
        a_stride: usize,
        b: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        ahead: &[usize],
    );
}

struct Avx512;
struct Avx2;
struct Portable;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<R: Rows>(
    s: &mut Syrk,
    rows: &R,
    range: Range<usize>,
    out: Range<usize>,
    weighted: bool,
) {
    run_generic::<Avx512, R>(s, rows, range, out, weighted)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R: Rows>(
    s: &mut Syrk,
    rows: &R,
    range: Range<usize>,
    out: Range<usize>,
    weighted: bool,
) {
    run_generic::<Avx2, R>(s, rows, range, out, weighted)
}

/// The driver, inlined into each ISA's entry point so packing is compiled for that ISA too.
#[inline(always)]
fn run_generic<K: MicroKernel, R: Rows>(
    s: &mut Syrk,
    rows: &R,
    range: Range<usize>,
    out: Range<usize>,
    weighted: bool,
) {
    let d = s.d;
    let db = d.div_ceil(K::NR) * K::NR;
    let ldc = db;
    let nb = db / K::NR;
    let jb_lo = out.start / K::NR;
    let rb0 = out.start / K::MR;
    let rb1 = out.end.div_ceil(K::MR);
    // A from B's panels needs every row block inside one panel.
    let pack_a = weighted || !K::NR.is_multiple_of(K::MR);
    s.c.slice_mut()[rb0 * K::MR * ldc..rb1 * K::MR * ldc].fill(0.0);
    s.sum_x[out.start..rb1 * K::MR].fill(0.0);
    let mut start = range.start;
    while start < range.end {
        let kc = K::KC.min(range.end - start);
        // Pack B (columns from panel jb_lo on) and, when needed, A = w x (rows rb0..rb1).
        {
            let bpack = s.bpack.slice_mut();
            let apack = s.apack.slice_mut();
            for k in 0..kc {
                let x = &rows.row(start + k)[..d];
                for jb in jb_lo..nb {
                    let c0 = jb * K::NR;
                    let dst = &mut bpack[(jb * K::KC + k) * K::NR..][..K::NR];
                    if c0 + K::NR <= d {
                        dst.copy_from_slice(&x[c0..c0 + K::NR]);
                    } else {
                        dst[..d - c0].copy_from_slice(&x[c0..]);
                        dst[d - c0..].fill(0.0);
                    }
                }
                if pack_a {
                    let w = if weighted {
                        rows.weight(start + k)
                    } else {
                        1.0
                    };
                    for rb in rb0..rb1 {
                        let r0 = rb * K::MR;
                        let dst = &mut apack[((rb - rb0) * K::KC + k) * K::MR..][..K::MR];
                        let width = K::MR.min(d - r0);
                        for (t, v) in dst[..width].iter_mut().zip(&x[r0..r0 + width]) {
                            *t = w * v;
                        }
                        dst[width..].fill(0.0);
                    }
                }
            }
        }
        // Tiles, panel by panel, with the next slice's rows fetched into L2 a few rows per
        // tile meanwhile (the FMAs hide the memory latency that packing them would stall on).
        let bp = s.bpack.slice().as_ptr();
        let ap = s.apack.slice().as_ptr();
        let cp = s.c.slice_mut().as_mut_ptr();
        let next = start + kc..(start + kc + K::KC).min(range.end);
        s.ahead.clear();
        for i in next {
            let x = &rows.row(i)[..d];
            let p = x.as_ptr() as usize;
            s.ahead.extend((p & !63..p + 4 * d).step_by(64));
        }
        let tiles: usize = (jb_lo..nb)
            .map(|jb| {
                (rb0..rb1)
                    .take_while(|rb| rb * K::MR < (jb + 1) * K::NR)
                    .count()
            })
            .sum();
        let ahead = &s.ahead;
        let mut tile_no = 0;
        for jb in jb_lo..nb {
            let p0 = jb * K::NR;
            for rb in rb0..rb1 {
                let row0 = rb * K::MR;
                if row0 >= p0 + K::NR {
                    break;
                }
                let lines =
                    &ahead[ahead.len() * tile_no / tiles..ahead.len() * (tile_no + 1) / tiles];
                tile_no += 1;
                let c_start = if row0 > p0 { row0 / K::V * K::V } else { p0 };
                let nv = (p0 + K::NR - c_start) / K::V;
                // SAFETY: every offset below stays inside the packed panels (kc <= KC rows)
                // and inside C (row0 + MR <= da rows, c_start + nv V <= db columns).
                unsafe {
                    let (a, a_stride) = if pack_a {
                        (ap.add((rb - rb0) * K::KC * K::MR), K::MR)
                    } else {
                        (bp.add((row0 / K::NR) * K::KC * K::NR + row0 % K::NR), K::NR)
                    };
                    K::tile(
                        nv,
                        a,
                        a_stride,
                        bp.add(jb * K::KC * K::NR + (c_start - p0)),
                        kc,
                        cp.add(row0 * ldc + c_start),
                        ldc,
                        lines,
                    );
                }
            }
        }
        // Column sums of w x for the output rows, from the panels just packed.
        if pack_a {
            let apack = s.apack.slice();
            for rb in rb0..rb1 {
                let panel = &apack[(rb - rb0) * K::KC * K::MR..][..kc * K::MR];
                let r0 = rb * K::MR;
                K::column_sums_a(panel, &mut s.sum_x[r0..r0 + K::MR]);
            }
        } else {
            let bpack = s.bpack.slice();
            for jb in jb_lo..out.end.div_ceil(K::NR) {
                let panel = &bpack[jb * K::KC * K::NR..][..kc * K::NR];
                let mut sums = [0.0f32; 64];
                K::column_sums_b(panel, &mut sums[..K::NR]);
                let c0 = jb * K::NR;
                for c in c0.max(out.start)..(c0 + K::NR).min(out.end) {
                    s.sum_x[c] += sums[c - c0];
                }
            }
        }
        start += kc;
    }
}

/// Asks for the cache line holding address `p` in L2 (no effect on any result; a prefetch
/// never faults, whatever the address).
#[inline(always)]
fn prefetch_line(p: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// out[j] += sum over rows k of panel[k * W + j], in four interleaved partial sums (so the
/// additions pipeline and vectorise); the order depends only on the panel.
#[inline(always)]
fn add_column_sums<const W: usize>(panel: &[f32], out: &mut [f32]) {
    let mut part = [[0.0f32; W]; 4];
    let mut quads = panel.chunks_exact(4 * W);
    for q in &mut quads {
        for (p, rowv) in part.iter_mut().zip(q.chunks_exact(W)) {
            for (a, v) in p.iter_mut().zip(rowv) {
                *a += v;
            }
        }
    }
    for (p, rowv) in part.iter_mut().zip(quads.remainder().chunks_exact(W)) {
        for (a, v) in p.iter_mut().zip(rowv) {
            *a += v;
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o += (part[0][j] + part[1][j]) + (part[2][j] + part[3][j]);
    }
}

impl MicroKernel for Avx512 {
    #[inline(always)]
    fn column_sums_a(panel: &[f32], out: &mut [f32]) {
        add_column_sums::<{ Self::MR }>(panel, out)
    }
    #[inline(always)]
    fn column_sums_b(panel: &[f32], out: &mut [f32]) {
        add_column_sums::<{ Self::NR }>(panel, out)
    }
    const MR: usize = 8;
    const NR: usize = 32;
    const V: usize = 16;
    const KC: usize = 128;
    #[inline(always)]
    unsafe fn tile(
        nv: usize,
        a: *const f32,
        a_stride: usize,
        b: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        ahead: &[usize],
    ) {
        #[cfg(target_arch = "x86_64")]
        match nv {
            2 => tile_avx512::<2>(a, a_stride, b, kc, c, ldc, ahead),
            _ => tile_avx512::<1>(a, a_stride, b, kc, c, ldc, ahead),
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "AVX-512 on {nv} vectors outside x86_64 ({a:?} {a_stride} {b:?} {kc} {c:?} {ldc} {})",
            ahead.len()
        )
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const NV: usize>(
    a: *const f32,
    a_stride: usize,
    b: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    ahead: &[usize],
) {
    use std::arch::x86_64::*;
    // One line of `ahead` every `step` rows, spread over the tile; the rest after it.
    let step = if ahead.is_empty() {
        usize::MAX
    } else {
        (kc / ahead.len()).max(1)
    };
    let (mut next_line, mut fetched) = (0, 0);
    const MR: usize = Avx512::MR;
    const NR: usize = Avx512::NR;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let mut bv = [_mm512_setzero_ps(); NV];
    for k in 0..kc {
        if k == next_line && fetched < ahead.len() {
            prefetch_line(ahead[fetched]);
            fetched += 1;
            next_line += step;
        }
        let bk = b.add(k * NR);
        for (v, reg) in bv.iter_mut().enumerate() {
            *reg = _mm512_loadu_ps(bk.add(16 * v));
        }
        let ak = a.add(k * a_stride);
        for (r, row) in acc.iter_mut().enumerate() {
            let ar = _mm512_set1_ps(*ak.add(r));
            for (reg, bb) in row.iter_mut().zip(&bv) {
                *reg = _mm512_fmadd_ps(ar, *bb, *reg);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, reg) in row.iter().enumerate() {
            let p = c.add(r * ldc + 16 * v);
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), *reg));
        }
    }
    ahead[fetched..].iter().for_each(|&p| prefetch_line(p));
}

impl MicroKernel for Avx2 {
    #[inline(always)]
    fn column_sums_a(panel: &[f32], out: &mut [f32]) {
        add_column_sums::<{ Self::MR }>(panel, out)
    }
    #[inline(always)]
    fn column_sums_b(panel: &[f32], out: &mut [f32]) {
        add_column_sums::<{ Self::NR }>(panel, out)
    }
    const MR: usize = 6;
    const NR: usize = 16;
    const V: usize = 8;
    const KC: usize = 256;
    #[inline(always)]
    unsafe fn tile(
        nv: usize,
        a: *const f32,
        a_stride: usize,
        b: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        ahead: &[usize],
    ) {
        #[cfg(target_arch = "x86_64")]
        match nv {
            2 => tile_avx2::<2>(a, a_stride, b, kc, c, ldc, ahead),
            _ => tile_avx2::<1>(a, a_stride, b, kc, c, ldc, ahead),
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "AVX2 on {nv} vectors outside x86_64 ({a:?} {a_stride} {b:?} {kc} {c:?} {ldc} {})",
            ahead.len()
        )
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const NV: usize>(
    a: *const f32,
    a_stride: usize,
    b: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    ahead: &[usize],
) {
    use std::arch::x86_64::*;
    // One line of `ahead` every `step` rows, spread over the tile; the rest after it.
    let step = if ahead.is_empty() {
        usize::MAX
    } else {
        (kc / ahead.len()).max(1)
    };
    let (mut next_line, mut fetched) = (0, 0);
    const MR: usize = Avx2::MR;
    const NR: usize = Avx2::NR;
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    let mut bv = [_mm256_setzero_ps(); NV];
    for k in 0..kc {
        if k == next_line && fetched < ahead.len() {
            prefetch_line(ahead[fetched]);
            fetched += 1;
            next_line += step;
        }
        let bk = b.add(k * NR);
        for (v, reg) in bv.iter_mut().enumerate() {
            *reg = _mm256_loadu_ps(bk.add(8 * v));
        }
        let ak = a.add(k * a_stride);
        for (r, row) in acc.iter_mut().enumerate() {
            let ar = _mm256_broadcast_ss(&*ak.add(r));
            for (reg, bb) in row.iter_mut().zip(&bv) {
                *reg = _mm256_fmadd_ps(ar, *bb, *reg);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, reg) in row.iter().enumerate() {
            let p = c.add(r * ldc + 8 * v);
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), *reg));
        }
    }
    ahead[fetched..].iter().for_each(|&p| prefetch_line(p));
}

impl MicroKernel for Portable {
    #[inline(always)]
    fn column_sums_a(panel: &[f32], out: &mut [f32]) {
        add_column_sums::<{ Self::MR }>(panel, out)
    }
    #[inline(always)]
    fn column_sums_b(panel: &[f32], out: &mut [f32]) {
        add_column_sums::<{ Self::NR }>(panel, out)
    }
    const MR: usize = 6;
    const NR: usize = 16;
    const V: usize = 8;
    const KC: usize = 256;
    #[inline(always)]
    unsafe fn tile(
        nv: usize,
        a: *const f32,
        a_stride: usize,
        b: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        ahead: &[usize],
    ) {
        ahead.iter().for_each(|&p| prefetch_line(p));
        let width = nv * Self::V;
        let mut acc = [[0.0f32; Self::NR]; Self::MR];
        for k in 0..kc {
            let bk = std::slice::from_raw_parts(b.add(k * Self::NR), width);
            let ak = std::slice::from_raw_parts(a.add(k * a_stride), Self::MR);
            for (row, &ar) in acc.iter_mut().zip(ak) {
                for (v, bb) in row[..width].iter_mut().zip(bk) {
                    *v += ar * bb;
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let cr = std::slice::from_raw_parts_mut(c.add(r * ldc), width);
            for (p, v) in cr.iter_mut().zip(&row[..width]) {
                *p += v;
            }
        }
    }
}
