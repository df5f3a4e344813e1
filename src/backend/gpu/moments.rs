//! Launcher of the binned filtered-moments kernels (`shaders/moments.wgsl`).
//!
//! Samples come from the batch feeder (`feed.rs`: a resident copy, or uploads of at most 256 MiB
//! overlapped with compute, two in flight). Per batch (at most
//! [`MomentKernelParams::max_batch_rows`] rows and 256 MiB of x):
//! 1. with K > 1 bins, the batch is sorted into bin order and cut into pieces of at most
//!    `piece_rows` samples of one bin. Where the device has f64 in shaders this all happens on
//!    the device (`binning.rs`: bin ids with z in f64, a counting sort, pieces, runs, per-piece
//!    label sums), with nothing read back inside the pass; rows within f64 rounding of an axis
//!    edge are rechecked by the host at the end. Elsewhere `bin_samples` computes the bin ids
//!    (z in f32, near-edge rows flagged and rebinned by the host with the f64 rule), the host
//!    reads them back (4 bytes a sample), sums count, weight, y and y^2 per bin in f64 and
//!    counting-sorts the batch ([`sort_batch`]). Either way every bin equals the CPU backend's;
//! 2. `syrk_tiles` sums w x x^T in f32 per (piece, upper-triangle tile), each invocation owning
//!    a `per_invocation` x `per_invocation` block (4 x 4 by default) read as vec4 from
//!    double-buffered workgroup memory; the diagonal tiles also sum w x from the values they
//!    stage, so the vector costs no extra tile row; `reduce_runs` adds each bin's pieces into
//!    that bin's total on the device (atomics-free);
//! 3. the totals are read back once per pass (and every 64 dispatch groups before that) and
//!    added in f64.
//!
//! Pipelines are compiled once per (kernel parameters, weight, K = 1 or not) and cached in
//! [`MomentPipelineCache`], held by the `GpuBackend`.
//!
//! Precision: f32 sums over at most `chunk` (4096) samples, f32 sums of at most 16 such
//! partials in blocks (up to `max_pieces_per_group` in all), f32 totals over at most 64 groups,
//! then f64 on the host; counts are exact, and weight, y and y^2 sums are f64 from the start
//! (host sort) or f32 over one piece, then f64 (device sort). Measured on
//! lavapipe against `reference_moments`: relative difference 1e-7 to 1.4e-6.
//!
//! Device limits: every buffer is checked against `max_storage_buffer_binding_size` and
//! `max_buffer_size` before use ([`GpuError::TooLarge`] otherwise); on lavapipe one set of
//! partial tiles and the K per-bin triangles must each fit 128 MiB, which caps d near 8000 at
//! K = 1 and near 1000 at K = 64.

use super::binning;
use super::context::PipelineCache;
use super::feed::{DeviceBatch, ResidentSamples};
use super::{GpuContext, GpuError};
use crate::data::SampleSource;
use crate::error::Result;
use crate::moments::{BinSpec, FilteredMoments, SampleWeight};
use std::sync::Arc;

const SHADER: &str = include_str!("../../../shaders/moments.wgsl");
/// Invocations per workgroup of `bin_samples`.
const BIN_WORKGROUP: u32 = 256;
/// Bytes of the uniform `Params` struct.
const PARAMS_BYTES: u64 = 48;
/// Environment variable that overrides the SYRK tile: "WG,TM,BK" (workgroup side, outputs per
/// invocation and side, samples per slab), for sweeps on a hardware GPU.
pub const MOMENT_TILE_ENV: &str = "RELU_FPT_GPU_MOMENT_TILE";
/// Environment variable that chooses where K > 1 bins are sorted: "device" (the default, where
/// the adapter has f64 in shaders) or "host" (for measuring one against the other).
pub const MOMENT_BINNING_ENV: &str = "RELU_FPT_GPU_BINNING";

/// Tunables of the moments kernels, fed to WGSL `override` constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MomentKernelParams {
    /// Workgroup side of `syrk_tiles`: WG x WG invocations, output tiles of
    /// `workgroup_side * per_invocation` on a side.
    pub workgroup_side: u32,
    /// Outputs each invocation owns along each side of the tile (`TM`): 4 or 8.
    pub per_invocation: u32,
    /// Samples staged in workgroup memory per step (`BK`).
    pub slab: u32,
    /// Most samples one f32 accumulator sums (`CHUNK`, a multiple of `slab`, <= 4096).
    pub chunk: u32,
    /// Most pieces (partial tiles per output tile) per dispatch group.
    pub max_pieces_per_group: u32,
    /// Most samples per uploaded batch.
    pub max_batch_rows: u32,
    /// Bin and sort K > 1 bins on the device where it has f64 in shaders (`binning.rs`);
    /// false: on the host, one readback of the bin ids per batch.
    pub device_binning: bool,
}

impl Default for MomentKernelParams {
    fn default() -> Self {
        MomentKernelParams {
            workgroup_side: 16,
            per_invocation: 4,
            slab: 16,
            chunk: 4096,
            max_pieces_per_group: 4096,
            max_batch_rows: 1 << 20,
            device_binning: true,
        }
    }
}

impl MomentKernelParams {
    /// Defaults sized for dimension `d`: 64-wide tiles (16 x 16 invocations of 4 x 4 outputs),
    /// 32-wide below d = 32 (less padding work), slabs of 16 samples, unless
    /// [`MOMENT_TILE_ENV`] says otherwise (then a bad value is reported by the pass, not
    /// ignored), and with bins sorted where [`MOMENT_BINNING_ENV`] says. On an H200 at N = 1e7 (docs/measurements/2026-12-04-h200-syrk.json) 4 x 4
    /// outputs per invocation beat 8 x 8 by 1.5x at d = 512 and 1024: fewer registers, more
    /// workgroups resident per multiprocessor.
    pub fn for_dim(d: usize) -> Self {
        let mut p = Self::default();
        if d < 32 {
            p.workgroup_side = 8;
        }
        if let Ok(v) = std::env::var(MOMENT_TILE_ENV) {
            let parts: Vec<u32> = v.split(',').filter_map(|t| t.trim().parse().ok()).collect();
            match parts[..] {
                [wg, tm, bk] => {
                    p.workgroup_side = wg;
                    p.per_invocation = tm;
                    p.slab = bk;
                }
                // An unusable value becomes parameters that `check` refuses, naming them.
                _ => p.workgroup_side = 0,
            }
        }
        if std::env::var(MOMENT_BINNING_ENV).is_ok_and(|v| v.trim() == "host") {
            p.device_binning = false;
        }
        p
    }

    /// Bytes of workgroup memory `syrk_tiles` uses: two slabs of each operand.
    pub fn workgroup_bytes(&self) -> u32 {
        4 * self.slab * self.tile() * 4
    }

    /// Words of each operand one invocation stages per slab (the shader's `LOADS`).
    fn loads(&self) -> u32 {
        let wg2 = self.workgroup_side * self.workgroup_side;
        (self.slab * self.tile() / 4).div_ceil(wg2.max(1))
    }

    /// Output tile side.
    pub fn tile(&self) -> u32 {
        self.workgroup_side * self.per_invocation
    }

    fn check(&self) -> Result<(), GpuError> {
        let ok = self.workgroup_side > 0
            && matches!(self.per_invocation, 4 | 8)
            && self.slab > 0
            && (1..=4).contains(&self.loads())
            && self.chunk > 0
            && self.chunk <= 4096
            && self.chunk.is_multiple_of(self.slab)
            && self.max_pieces_per_group > 0
            && self.max_pieces_per_group <= 4096
            && self.max_batch_rows > 0;
        if ok {
            Ok(())
        } else {
            Err(GpuError::Kernel(format!(
                "moment kernel parameters out of range (per_invocation 4 or 8, chunk a multiple \
                 of slab and <= 4096, slab x tile / 4 at most 4 words per invocation; \
                 {MOMENT_TILE_ENV} is \"WG,TM,BK\"): {self:?}"
            )))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    params: MomentKernelParams,
    weight: u32,
    use_perm: bool,
    vec_x: bool,
}

pub struct MomentPipelines {
    bin: wgpu::ComputePipeline,
    syrk: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
}

/// Compiled moment pipelines, built once per configuration and reused by every call.
pub type MomentPipelineCache = PipelineCache<PipelineKey, MomentPipelines>;

fn pipelines(
    ctx: &GpuContext,
    cache: &MomentPipelineCache,
    key: PipelineKey,
) -> Result<Arc<MomentPipelines>, GpuError> {
    cache.get_or_build(key, || {
        let k = key.params;
        let constants = [
            ("WG", k.workgroup_side as f64),
            ("TM", k.per_invocation as f64),
            ("BK", k.slab as f64),
            ("CHUNK", k.chunk as f64),
            ("WEIGHT_MODE", key.weight as f64),
            ("USE_PERM", if key.use_perm { 1.0 } else { 0.0 }),
            ("BIN_WG", BIN_WORKGROUP as f64),
            ("VEC_X", if key.vec_x { 1.0 } else { 0.0 }),
        ];
        Ok(MomentPipelines {
            bin: ctx.compute_pipeline("moments bin", SHADER, "bin_samples", &constants)?,
            syrk: ctx.compute_pipeline("moments syrk", SHADER, "syrk_tiles", &constants)?,
            reduce: ctx.compute_pipeline("moments reduce", SHADER, "reduce_runs", &constants)?,
        })
    })
}

fn weight_code(w: SampleWeight) -> u32 {
    match w {
        SampleWeight::Unit => 0,
        SampleWeight::Label => 1,
        SampleWeight::LabelSquared => 2,
    }
}

/// Workgroups one batch's SYRK should give the device at least (an H200 holds about a
/// thousand 64-wide tiles' workgroups at once): below that, pieces get shorter.
const MIN_WORKGROUPS: usize = 4096;

/// Group sums an f32 device total adds before it is read back and added in f64.
const FLUSH_GROUPS: usize = 64;

/// A run of consecutive samples of one bin in the sorted batch, at most `chunk` long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The bin.
    pub bin: usize,
    /// First position in the sorted batch.
    pub start: u32,
    /// Samples.
    pub len: u32,
}

/// A batch in bin order: what the SYRK kernels read ([`sort_batch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOrder {
    /// Runs of one bin each, bins in increasing order.
    pub pieces: Vec<Piece>,
    /// Sorted position -> sample index, stable within a bin (empty when not asked for).
    pub perm: Vec<u32>,
}

/// The host's share of a batch with K > 1 bins: adds each sample's count, weight, y and y^2 to
/// its bin in f64 (in sample order) and counting-sorts the batch into bin order, cut into
/// pieces of at most `chunk` samples. The per-bin sums of w x x^T run on the device; this pass
/// over 4-byte bin ids stays here because the f64 label sums and the f64 recheck of samples
/// near an edge need the ids on the host anyway (`benches/batch_sort.rs` times it).
pub fn sort_batch(
    bin_ids: &[u32],
    ys: &[f32],
    weight: SampleWeight,
    chunk: usize,
    want_perm: bool,
    out: &mut FilteredMoments,
) -> BatchOrder {
    let k = out.bins;
    let mut counts = vec![0usize; k];
    for (&b, &yv) in bin_ids.iter().zip(ys) {
        let b = b as usize;
        let yv = yv as f64;
        counts[b] += 1;
        out.count[b] += 1;
        out.weight_sum[b] += weight.of(yv);
        out.sum_y[b] += yv;
        out.sum_y2[b] += yv * yv;
    }
    let mut pieces = Vec::new();
    let mut offset = 0usize;
    let mut next = vec![0u32; k];
    for (b, &n) in counts.iter().enumerate() {
        next[b] = offset as u32;
        let mut s = 0;
        while s < n {
            let len = chunk.min(n - s);
            pieces.push(Piece {
                bin: b,
                start: (offset + s) as u32,
                len: len as u32,
            });
            s += len;
        }
        offset += n;
    }
    let mut perm = Vec::new();
    if want_perm {
        perm.resize(bin_ids.len(), 0u32);
        for (i, &b) in bin_ids.iter().enumerate() {
            let slot = &mut next[b as usize];
            perm[*slot as usize] = i as u32;
            *slot += 1;
        }
    }
    BatchOrder { pieces, perm }
}

/// Sizes fixed for one call.
struct Plan {
    d: usize,
    /// Words per bin in the totals: the packed triangle, then w x.
    bin_stride: usize,
    tiles: usize,
    pairs: Vec<[u32; 2]>,
    batch_rows: usize,
    /// Most rows in one piece: the kernel's chunk, or fewer when a batch would otherwise give
    /// the device too few workgroups.
    piece_rows: usize,
    group_pieces: usize,
    max_pieces: usize,
    /// Flops of one piece of the SYRK.
    piece_flops: f64,
}

/// Sizes for `spec` over `rows` samples in total: batches no larger than the data.
fn plan(
    ctx: &GpuContext,
    spec: &BinSpec,
    rows: u64,
    params: &MomentKernelParams,
) -> Result<Plan, GpuError> {
    params.check()?;
    let d = spec.dim;
    let bins = spec.bins();
    // lavapipe silently truncates an invocation after 65,535 loop iterations in total;
    // bin_samples loops r (d + axis edges) + y edges times.
    let bin_loops = spec.rank() * (d + spec.cells_per_axis()) + spec.y_bins();
    if ctx.is_software() && spec.bins() > 1 && bin_loops > 60_000 {
        return Err(GpuError::TooLarge(format!(
            "binning r = {} axes of d = {d} loops {bin_loops} times per sample, past the \
             software adapter's 65,535-iteration budget",
            spec.rank()
        )));
    }
    let lim = &ctx.limits;
    let wg = params.workgroup_side;
    let tile = params.tile() as usize;
    if wg * wg > lim.max_compute_invocations_per_workgroup
        || wg > lim.max_compute_workgroup_size_x
        || wg > lim.max_compute_workgroup_size_y
        || BIN_WORKGROUP > lim.max_compute_workgroup_size_x
        || BIN_WORKGROUP > lim.max_compute_invocations_per_workgroup
    {
        return Err(GpuError::TooLarge(format!(
            "workgroups of {wg} x {wg} or {BIN_WORKGROUP} invocations exceed this adapter's limits"
        )));
    }
    let shared = params.workgroup_bytes();
    if shared > lim.max_compute_workgroup_storage_size {
        return Err(GpuError::TooLarge(format!(
            "the moment kernel needs {shared} bytes of workgroup memory; this adapter has {}",
            lim.max_compute_workgroup_storage_size
        )));
    }
    let bin_stride = d * (d + 1) / 2 + d;
    let tiles = d.div_ceil(tile);
    let mut pairs = Vec::with_capacity(tiles * (tiles + 1) / 2);
    for ti in 0..tiles {
        for tj in ti..tiles {
            pairs.push([ti as u32, tj as u32]);
        }
    }
    let max_binding = ctx.max_binding() as usize;
    let max_groups = lim.max_compute_workgroups_per_dimension as usize;
    let piece_bytes = pairs.len() * tile * tile * 4;
    let triangle_bytes = bin_stride * 4;
    if piece_bytes > max_binding || triangle_bytes > max_binding || pairs.len() > max_groups {
        return Err(GpuError::TooLarge(format!(
            "d = {d}: one set of partial tiles needs {piece_bytes} bytes and one triangle \
             {triangle_bytes} bytes; this adapter binds at most {max_binding} bytes"
        )));
    }
    // Rows of x per batch: one binding of at most MAX_BATCH_BYTES (the size every pass uses, so
    // a resident copy made by one pass serves the others, and streamed batches overlap), whole
    // chunks when more than one fits.
    let row_bytes = d * 4;
    let mut batch_rows = (max_binding.min(super::feed::MAX_BATCH_BYTES as usize) / row_bytes)
        .min(params.max_batch_rows as usize)
        .min(max_groups * BIN_WORKGROUP as usize);
    if batch_rows == 0 {
        return Err(GpuError::TooLarge(format!(
            "d = {d}: one sample of {row_bytes} bytes exceeds the binding limit {max_binding}"
        )));
    }
    let chunk = params.chunk as usize;
    if batch_rows > chunk {
        batch_rows -= batch_rows % chunk;
    }
    batch_rows = batch_rows.min(rows.max(1) as usize);
    // Pieces short enough that a batch gives the device MIN_WORKGROUPS workgroups (small d has
    // few tile pairs: at d = 128, 3), in whole slabs, at least 256 rows.
    let slab = params.slab as usize;
    let piece_rows = ((batch_rows * pairs.len() / MIN_WORKGROUPS)
        .max(256)
        .min(chunk)
        / slab)
        .max(1)
        * slab;
    // A piece's flops (every tile pair over a full piece); a dispatch group holds at most the
    // context's limit (driver watchdogs), but at least one piece.
    let piece_flops = 2.0 * (pairs.len() * tile * tile) as f64 * piece_rows as f64;
    let watchdog_pieces = (ctx.max_dispatch_flops() / piece_flops).max(1.0) as usize;
    let group_pieces = (params.max_pieces_per_group as usize)
        .min(watchdog_pieces)
        .min(max_binding / piece_bytes)
        .min(max_binding / triangle_bytes)
        .min(max_groups);
    let max_pieces = batch_rows.min(batch_rows.div_ceil(piece_rows) + bins);
    Ok(Plan {
        d,
        bin_stride,
        tiles,
        pairs,
        batch_rows,
        piece_rows,
        group_pieces,
        max_pieces,
        piece_flops,
    })
}

fn params_bytes(spec: &BinSpec, plan: &Plan, rows: usize, piece_base: usize) -> [u8; 48] {
    let r = spec.rank();
    let axis = if r > 0 { spec.cells_per_axis() - 1 } else { 0 };
    let words: [u32; 12] = [
        plan.d as u32,
        rows as u32,
        r as u32,
        axis as u32,
        (spec.y_bins() - 1) as u32,
        spec.y_bins() as u32,
        plan.pairs.len() as u32,
        plan.tiles as u32,
        piece_base as u32,
        plan.bin_stride as u32,
        (plan.d * (plan.d + 1) / 2) as u32,
        (piece_base / plan.group_pieces) as u32,
    ];
    let mut out = [0u8; 48];
    out.copy_from_slice(bytemuck::cast_slice(&words));
    out
}

/// The largest f32 that is <= `e` (finite `e`): for every f32 y, `e < y` iff that value < y.
pub(crate) fn f32_at_or_below(e: f64) -> f32 {
    let near = e as f32;
    if near as f64 > e {
        near.next_down()
    } else {
        near
    }
}

/// Bit 31 of a bin id from `bin_samples`: z lies too close to an axis edge to trust f32.
const NEAR_EDGE: u32 = 1 << 31;

/// Replaces the bin ids flagged [`NEAR_EDGE`] by the f64 rule ([`BinSpec::bin_of`]) on their
/// rows; `rows_x(list)` returns the x rows of the listed batch rows (concatenated).
fn settle_near_edges(
    spec: &BinSpec,
    bin_ids: &mut [u32],
    ys: &[f32],
    rows_x: impl FnOnce(&[usize]) -> Result<Vec<f32>>,
) -> Result<usize> {
    let near: Vec<usize> = (0..bin_ids.len())
        .filter(|&i| bin_ids[i] == NEAR_EDGE)
        .collect();
    if near.is_empty() {
        return Ok(0);
    }
    let d = spec.dim;
    let xs = rows_x(&near)?;
    let mut row = vec![0.0f64; d];
    for (k, &i) in near.iter().enumerate() {
        for (t, &v) in row.iter_mut().zip(&xs[k * d..(k + 1) * d]) {
            *t = v as f64;
        }
        bin_ids[i] = spec.bin_of(&row, ys[i] as f64) as u32;
    }
    Ok(near.len())
}

/// Copies the listed rows of a device x buffer (rows of `d` f32) back to the host.
fn gather_rows(ctx: &GpuContext, x: &wgpu::Buffer, d: usize, rows: &[usize]) -> Result<Vec<f32>> {
    let row_bytes = (d * 4) as u64;
    // At most 64 MiB of rows per readback.
    let per = ((64u64 << 20) / row_bytes).max(1) as usize;
    let mut out = Vec::with_capacity(rows.len() * d);
    for part in rows.chunks(per) {
        let bytes = part.len() as u64 * row_bytes;
        let staging = ctx.staging_buffer("moments near-edge rows", bytes);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("moments near-edge rows"),
            });
        for (k, &r) in part.iter().enumerate() {
            enc.copy_buffer_to_buffer(
                x,
                r as u64 * row_bytes,
                &staging,
                k as u64 * row_bytes,
                row_bytes,
            );
        }
        let got: Vec<f32> =
            ctx.submit_and_read("moments near-edge rows", enc, &staging, bytes, bytes as f64)?;
        out.extend_from_slice(&got);
    }
    Ok(out)
}

fn f32s(v: impl Iterator<Item = f64>) -> Vec<f32> {
    v.map(|e| e as f32).collect()
}

/// Computes [`FilteredMoments`] of `source` on the device (see the module docs for the plan).
// The backend trait's four arguments plus device, pipeline cache, tunables and residency.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gpu_moments(
    ctx: &GpuContext,
    cache: &MomentPipelineCache,
    source: &dyn SampleSource,
    spec: &BinSpec,
    weight: SampleWeight,
    params: &MomentKernelParams,
    resident: Option<&ResidentSamples>,
    progress: &indicatif::ProgressBar,
) -> Result<FilteredMoments> {
    if spec.bins() == 0 {
        return Err(GpuError::NoBins.into());
    }
    spec.check_request(source)?;
    let mut pass = MomentPass::new(ctx, cache, source.len(), spec, weight, params)?;
    let row_flops = pass.plan.piece_flops / pass.plan.piece_rows as f64;
    super::feed::for_each_batch(
        ctx,
        resident,
        source,
        pass.plan.batch_rows,
        row_flops,
        |batch| {
            let last = pass.batch(batch)?;
            progress.inc(batch.rows as u64);
            Ok(last)
        },
    )?;
    match pass.finish()? {
        Some(moments) => Ok(moments),
        None => {
            // More rows lay on bin edges than the near-edge list holds: bin on the host.
            let host = MomentKernelParams {
                device_binning: false,
                ..*params
            };
            gpu_moments(ctx, cache, source, spec, weight, &host, resident, progress)
        }
    }
}

/// One moments pass: its plan, pipelines and buffers (sized for the largest batch and group),
/// and the sums gathered so far.
struct MomentPass<'a> {
    ctx: &'a GpuContext,
    spec: &'a BinSpec,
    weight: SampleWeight,
    params: MomentKernelParams,
    plan: Plan,
    pipes: Arc<MomentPipelines>,
    params_buf: wgpu::Buffer,
    basis_buf: wgpu::Buffer,
    axis_buf: wgpu::Buffer,
    yedge_buf: wgpu::Buffer,
    bins_buf: wgpu::Buffer,
    bins_staging: wgpu::Buffer,
    perm_buf: wgpu::Buffer,
    pieces_buf: wgpu::Buffer,
    pairs_buf: wgpu::Buffer,
    partial_buf: wgpu::Buffer,
    partial_sx_buf: wgpu::Buffer,
    /// Runs per dispatch group, each group's at its first piece slot; and their counts.
    runs_buf: wgpu::Buffer,
    run_counts_buf: wgpu::Buffer,
    /// Per-bin triangles and w x sums, summed on the device over groups and batches.
    totals_buf: wgpu::Buffer,
    reduce_bind: wgpu::BindGroup,
    /// The device's sort of K > 1 bins, where it has one (else the host sorts).
    device_binning: Option<binning::DeviceBinning<'a>>,
    /// f64 sums so far.
    out: FilteredMoments,
    /// Work and dispatch groups since the device's f32 totals were last read back.
    flops: f64,
    groups: usize,
}

impl<'a> MomentPass<'a> {
    fn new(
        ctx: &'a GpuContext,
        cache: &MomentPipelineCache,
        rows: u64,
        spec: &'a BinSpec,
        weight: SampleWeight,
        params: &MomentKernelParams,
    ) -> Result<Self> {
        let (d, k) = (spec.dim, spec.bins());
        let plan = plan(ctx, spec, rows, params)?;
        let use_perm = k > 1;
        let pipes = pipelines(
            ctx,
            cache,
            PipelineKey {
                params: *params,
                weight: weight_code(weight),
                use_perm,
                // Every x buffer is a whole number of 16-byte words when d is a multiple of 4.
                vec_x: d.is_multiple_of(4),
            },
        )?;
        let tile = params.tile() as usize;
        let basis = f32s(spec.basis.iter().copied());
        let axis_edges = f32s(spec.axis_edges.iter().flatten().copied());
        // Rounded down: for an f32 label y, `e < y` in f64 equals `down(e) < y` in f32.
        let y_edges: Vec<f32> = spec
            .y_edges
            .iter()
            .flatten()
            .map(|&e| f32_at_or_below(e))
            .collect();
        let layout = binning::Layout {
            batch_rows: plan.batch_rows,
            piece_rows: plan.piece_rows,
            max_pieces: plan.max_pieces,
            group_pieces: plan.group_pieces,
        };
        let groups_per_batch = layout.groups();
        let device_binning = match use_perm && params.device_binning {
            true => binning::DeviceBinning::new(ctx, spec, weight_code(weight), &y_edges, layout)?,
            false => None,
        };
        let host_sorts = use_perm && device_binning.is_none();
        let storage = |label: &str, bytes: usize| ctx.storage_buffer(label, bytes as u64);
        let upload = |buf: &wgpu::Buffer, words: &[f32]| {
            if !words.is_empty() {
                ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(words));
            }
        };
        let basis_buf = storage("moments basis", basis.len() * 4)?;
        upload(&basis_buf, &basis);
        let axis_buf = storage("moments axis edges", axis_edges.len() * 4)?;
        upload(&axis_buf, &axis_edges);
        let yedge_buf = storage("moments y edges", y_edges.len() * 4)?;
        upload(&yedge_buf, &y_edges);
        let pairs_buf = storage("moments pairs", plan.pairs.len() * 8)?;
        ctx.queue
            .write_buffer(&pairs_buf, 0, bytemuck::cast_slice(&plan.pairs));
        let params_buf = ctx.uniform_buffer("moments params", PARAMS_BYTES);
        let partial_buf = storage(
            "moments partial tiles",
            plan.group_pieces * plan.pairs.len() * tile * tile * 4,
        )?;
        let partial_sx_buf = storage(
            "moments partial w x",
            plan.group_pieces * plan.tiles * tile * 4,
        )?;
        let runs_buf = storage("moments runs", groups_per_batch * plan.group_pieces * 16)?;
        let run_counts_buf = storage("moments run counts", groups_per_batch * 4)?;
        let totals_buf = storage("moments totals", k * plan.bin_stride * 4)?;
        let reduce_bind = ctx.bind_group(
            "moments reduce",
            &pipes.reduce,
            &[
                (0, &params_buf),
                (10, &partial_buf),
                (11, &runs_buf),
                (12, &totals_buf),
                (13, &partial_sx_buf),
                (15, &run_counts_buf),
            ],
        )?;
        // The buffers start zeroed (wgpu clears new buffers).
        Ok(MomentPass {
            ctx,
            spec,
            weight,
            params: *params,
            bins_buf: storage("moments bins", plan.batch_rows * 4)?,
            bins_staging: ctx.staging_buffer(
                "moments bins readback",
                if host_sorts { plan.batch_rows * 4 } else { 4 } as u64,
            ),
            perm_buf: storage(
                "moments perm",
                if use_perm { plan.batch_rows * 4 } else { 4 },
            )?,
            pieces_buf: storage("moments pieces", plan.max_pieces * 8)?,
            plan,
            pipes,
            params_buf,
            basis_buf,
            axis_buf,
            yedge_buf,
            pairs_buf,
            partial_buf,
            partial_sx_buf,
            runs_buf,
            run_counts_buf,
            totals_buf,
            reduce_bind,
            device_binning,
            out: FilteredMoments::zeros(d, k),
            flops: 0.0,
            groups: 0,
        })
    }

    /// Reads the device's f32 totals back, adds them to the f64 sums and clears them (at the
    /// end, and every [`FLUSH_GROUPS`] groups before that, so that no f32 total sums more than
    /// that many group sums).
    fn flush(&mut self) -> Result<()> {
        let ctx = self.ctx;
        // The buffer may be longer (sizes round up to 16 bytes).
        let bytes = (self.spec.bins() * self.plan.bin_stride * 4) as u64;
        let staging = ctx.staging_buffer("moments totals readback", bytes);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("moments totals"),
            });
        enc.copy_buffer_to_buffer(&self.totals_buf, 0, &staging, 0, bytes);
        enc.clear_buffer(&self.totals_buf, 0, None);
        let totals: Vec<f32> =
            ctx.submit_and_read("moments totals", enc, &staging, bytes, self.flops)?;
        super::context::check_finite("moments", &totals)?;
        let d = self.spec.dim;
        let tri = d * (d + 1) / 2;
        for (b, packed) in totals.chunks_exact(self.plan.bin_stride).enumerate() {
            add_bin(&mut self.out, b, packed, tri);
        }
        self.flops = 0.0;
        self.groups = 0;
        Ok(())
    }

    /// One batch: its bins sorted (on the device or the host), then its SYRK groups.
    fn batch(&mut self, batch: &DeviceBatch) -> Result<Option<wgpu::SubmissionIndex>> {
        // The layout keeps `perm` even when USE_PERM is false (it is then a 16-byte dummy).
        let syrk_bind = self.ctx.bind_group(
            "moments syrk",
            &self.pipes.syrk,
            &[
                (0, &self.params_buf),
                (1, batch.x),
                (2, batch.y),
                (7, &self.perm_buf),
                (8, &self.pieces_buf),
                (9, &self.pairs_buf),
                (10, &self.partial_buf),
                (13, &self.partial_sx_buf),
                (14, batch.x),
            ],
        )?;
        if self.device_binning.is_some() {
            self.device_sorted_batch(batch, &syrk_bind)
        } else {
            self.host_sorted_batch(batch, &syrk_bind)
        }
    }

    /// One dispatch group: the SYRK over `count` piece slots from `base`, then the sums of at
    /// most `runs` runs into the totals.
    fn syrk_group(
        &mut self,
        syrk_bind: &wgpu::BindGroup,
        rows: usize,
        base: usize,
        count: usize,
        runs: usize,
    ) -> Result<wgpu::SubmissionIndex> {
        let ctx = self.ctx;
        let d = self.spec.dim as u32;
        ctx.queue.write_buffer(
            &self.params_buf,
            0,
            &params_bytes(self.spec, &self.plan, rows, base),
        );
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("moments syrk"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&self.pipes.syrk);
            pass.set_bind_group(0, syrk_bind, &[]);
            pass.dispatch_workgroups(self.plan.pairs.len() as u32, count as u32, 1);
            pass.set_pipeline(&self.pipes.reduce);
            pass.set_bind_group(0, &self.reduce_bind, &[]);
            // Rows 0..d of the triangle and row d for the w x sums.
            let wg = self.params.workgroup_side;
            pass.dispatch_workgroups(d.div_ceil(wg), (d + 1).div_ceil(wg), runs as u32);
        }
        let index = ctx.submit("moments syrk", enc)?;
        self.flops += count as f64 * self.plan.piece_flops;
        self.groups += 1;
        if self.groups == FLUSH_GROUPS {
            self.flush()?;
        }
        Ok(index)
    }

    /// Bins, sort, pieces and runs on the device (`binning.rs`); nothing comes back here.
    fn device_sorted_batch(
        &mut self,
        batch: &DeviceBatch,
        syrk_bind: &wgpu::BindGroup,
    ) -> Result<Option<wgpu::SubmissionIndex>> {
        let ctx = self.ctx;
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("moments binning"),
            });
        let targets = binning::SortTargets {
            bins: &self.bins_buf,
            pieces: &self.pieces_buf,
            perm: &self.perm_buf,
            runs: &self.runs_buf,
            run_counts: &self.run_counts_buf,
        };
        if let Some(binning) = self.device_binning.as_mut() {
            binning.encode_batch(&mut enc, self.spec, batch.x, batch.y, batch.rows, &targets)?;
        }
        ctx.submit("moments binning", enc)?;
        let (group, slots) = (self.plan.group_pieces, self.plan.max_pieces);
        let mut last = None;
        for base in (0..slots).step_by(group) {
            let count = group.min(slots - base);
            let runs = count.min(self.spec.bins());
            last = Some(self.syrk_group(syrk_bind, batch.rows, base, count, runs)?);
        }
        if self.device_binning.as_ref().is_some_and(|b| b.stats_full()) {
            self.flush()?;
            if let Some(binning) = self.device_binning.as_mut() {
                binning.take_stats(&mut self.out)?;
            }
        }
        Ok(last)
    }

    /// Bin ids on the device (none for K = 1), read back, checked near the edges and
    /// counting-sorted here with the label sums in f64; then the SYRK groups.
    fn host_sorted_batch(
        &mut self,
        batch: &DeviceBatch,
        syrk_bind: &wgpu::BindGroup,
    ) -> Result<Option<wgpu::SubmissionIndex>> {
        let ctx = self.ctx;
        let rows = batch.rows;
        let use_perm = self.spec.bins() > 1;
        let mut bin_ids = vec![0u32; rows];
        if use_perm {
            bin_ids = self.bin_ids(batch)?;
        }
        let order = sort_batch(
            &bin_ids,
            batch.y_host,
            self.weight,
            self.plan.piece_rows,
            use_perm,
            &mut self.out,
        );
        if use_perm {
            ctx.queue
                .write_buffer(&self.perm_buf, 0, bytemuck::cast_slice(&order.perm));
        }
        let pieces = order.pieces;
        let piece_words: Vec<[u32; 2]> = pieces.iter().map(|p| [p.start, p.len]).collect();
        if !piece_words.is_empty() {
            ctx.queue
                .write_buffer(&self.pieces_buf, 0, bytemuck::cast_slice(&piece_words));
        }
        let mut last = None;
        for (g, group) in pieces.chunks(self.plan.group_pieces).enumerate() {
            let base = g * self.plan.group_pieces;
            // Runs of consecutive pieces of one bin: (first piece, count, bin, 0), written at
            // the group's first piece slot.
            let mut runs: Vec<[u32; 4]> = Vec::new();
            for (q, piece) in group.iter().enumerate() {
                match runs.last_mut() {
                    Some(run) if run[2] as usize == piece.bin => run[1] += 1,
                    _ => runs.push([q as u32, 1, piece.bin as u32, 0]),
                }
            }
            ctx.queue.write_buffer(
                &self.runs_buf,
                (base * 16) as u64,
                bytemuck::cast_slice(&runs),
            );
            ctx.queue.write_buffer(
                &self.run_counts_buf,
                (g * 4) as u64,
                bytemuck::bytes_of(&(runs.len() as u32)),
            );
            last = Some(self.syrk_group(syrk_bind, rows, base, group.len(), runs.len())?);
        }
        Ok(last)
    }

    /// The batch's bin ids from `bin_samples`, read back (one wait), the rows flagged near an
    /// edge rebinned with the f64 rule.
    fn bin_ids(&mut self, batch: &DeviceBatch) -> Result<Vec<u32>> {
        let ctx = self.ctx;
        let (spec, rows) = (self.spec, batch.rows);
        let (d, k) = (spec.dim, spec.bins());
        let bin_bind = ctx.bind_group(
            "moments bin",
            &self.pipes.bin,
            &[
                (0, &self.params_buf),
                (1, batch.x),
                (2, batch.y),
                (3, &self.basis_buf),
                (4, &self.axis_buf),
                (5, &self.yedge_buf),
                (6, &self.bins_buf),
            ],
        )?;
        ctx.queue.write_buffer(
            &self.params_buf,
            0,
            &params_bytes(spec, &self.plan, rows, 0),
        );
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("moments bin"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&self.pipes.bin);
            pass.set_bind_group(0, &bin_bind, &[]);
            pass.dispatch_workgroups((rows as u32).div_ceil(BIN_WORKGROUP), 1, 1);
        }
        let bytes = (rows * 4) as u64;
        enc.copy_buffer_to_buffer(&self.bins_buf, 0, &self.bins_staging, 0, bytes);
        let flops = 2.0 * (rows * spec.rank() * d) as f64 + self.flops;
        let mut bin_ids =
            ctx.submit_and_read("moments bin", enc, &self.bins_staging, bytes, flops)?;
        self.flops = 0.0;
        settle_near_edges(spec, &mut bin_ids, batch.y_host, |near| {
            match batch.x_host {
                Some(xs) => Ok(near
                    .iter()
                    .flat_map(|&i| &xs[i * d..(i + 1) * d])
                    .copied()
                    .collect()),
                None => gather_rows(ctx, batch.x, d, near),
            }
        })?;
        if let Some(&bad) = bin_ids.iter().find(|&&b| b as usize >= k) {
            return Err(GpuError::Kernel(format!("bin kernel returned bin {bad} of {k}")).into());
        }
        Ok(bin_ids)
    }

    /// The pass's moments: the last totals, and the device sort's label sums and near-edge
    /// corrections; `None` when the device sort's near-edge list overflowed (the pass must be
    /// run again with the host's sort).
    fn finish(mut self) -> Result<Option<FilteredMoments>> {
        if self.out.total_count() > 0 || self.device_binning.is_some() {
            self.flush()?;
        }
        if let Some(binning) = self.device_binning.take() {
            if !binning.finish(self.spec, self.weight, &mut self.out)? {
                return Ok(None);
            }
        }
        Ok(Some(self.out))
    }
}

/// Adds one bin's totals (the packed upper triangle of w x x^T, rows of length d - i, then the
/// d sums of w x) into `out`.
fn add_bin(out: &mut FilteredMoments, bin: usize, packed: &[f32], tri: usize) {
    let d = out.dim;
    for (t, v) in out.sum_xx[bin * tri..(bin + 1) * tri]
        .iter_mut()
        .zip(&packed[..tri])
    {
        *t += *v as f64;
    }
    for (t, v) in out.sum_x[bin * d..(bin + 1) * d]
        .iter_mut()
        .zip(&packed[tri..tri + d])
    {
        *t += *v as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bin order, stable within a bin, cut at `chunk`; the label sums in f64 per bin.
    #[test]
    fn sort_batch_orders_by_bin_stably_and_sums_labels() {
        let bins = [2u32, 0, 2, 1, 2, 0, 2];
        let ys = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let mut out = FilteredMoments::zeros(3, 4);
        let order = sort_batch(&bins, &ys, SampleWeight::Unit, 3, true, &mut out);
        assert_eq!(order.perm, vec![1, 5, 3, 0, 2, 4, 6]);
        let runs: Vec<(usize, u32, u32)> = order
            .pieces
            .iter()
            .map(|p| (p.bin, p.start, p.len))
            .collect();
        assert_eq!(runs, vec![(0, 0, 2), (1, 2, 1), (2, 3, 3), (2, 6, 1)]);
        assert_eq!(out.count, vec![2, 1, 4, 0]);
        assert_eq!(out.sum_y, vec![8.0, 4.0, 16.0, 0.0]);
        assert_eq!(out.sum_y2, vec![40.0, 16.0, 84.0, 0.0]);
        assert_eq!(out.weight_sum, vec![2.0, 1.0, 4.0, 0.0]);
        let no_perm = sort_batch(&bins, &ys, SampleWeight::Unit, 3, false, &mut out);
        assert!(no_perm.perm.is_empty());
        assert_eq!(no_perm.pieces, order.pieces);
    }
}
