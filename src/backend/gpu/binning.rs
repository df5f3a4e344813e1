//! Launcher of the device-side binning (`shaders/binning.wgsl`): for K > 1 bins, each batch's
//! bin ids, its counting sort into bin order, its pieces and runs, and the per-piece label sums
//! are computed on the device, so the moments pass (`moments.rs`) never waits for the host
//! inside a pass. The host reads back, once per pass (and every [`STATS_BATCHES`] batches before
//! that), the per-piece sums of w, y and y^2 (added in f64 per bin) and the few rows whose z lay
//! within f64 rounding of an axis edge, which it rebins with the f64 rule
//! ([`BinSpec::bin_of`]) and moves to their right bin in f64: so every bin equals the CPU
//! backend's, as with the host's binning.
//!
//! Needs f64 in shaders (`wgpu::Features::SHADER_F64`); without it, with more than
//! [`MAX_BINS`] bins, or when the near-edge list overflows (a pass over many rows exactly on
//! an edge, e.g. discrete data), the moments pass bins on the host instead.

use super::context::PipelineCache;
use super::{GpuContext, GpuError};
use crate::error::Result;
use crate::moments::{BinSpec, FilteredMoments, SampleWeight};
use std::sync::Arc;

const SHADER: &str = include_str!("../../../shaders/binning.wgsl");
/// Invocations per workgroup.
const WORKGROUP: u32 = 256;
/// Rows per block of the counting sort.
const BLOCK: u32 = 1024;
/// Most bins the sort takes (a block's histogram lives in workgroup memory).
pub const MAX_BINS: usize = 4096;
/// Batches whose per-piece sums the device keeps before the host adds them up.
const STATS_BATCHES: usize = 256;
/// Bytes of the uniform `Params` struct.
const PARAMS_BYTES: u64 = 64;

/// How a pass's batches are cut, from the moments plan.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Most rows in a batch.
    pub batch_rows: usize,
    /// Most rows in a piece.
    pub piece_rows: usize,
    /// Piece slots per batch (an upper bound on the pieces of any batch).
    pub max_pieces: usize,
    /// Pieces per SYRK dispatch group.
    pub group_pieces: usize,
}

impl Layout {
    /// Dispatch groups per batch.
    pub fn groups(&self) -> usize {
        self.max_pieces.div_ceil(self.group_pieces)
    }
}

/// The buffers the sort fills and the SYRK reads (owned by the moments pass).
pub(crate) struct SortTargets<'a> {
    /// Bin id per batch row.
    pub bins: &'a wgpu::Buffer,
    /// (start, length) per piece slot.
    pub pieces: &'a wgpu::Buffer,
    /// Sorted position -> batch row.
    pub perm: &'a wgpu::Buffer,
    /// Per group: runs of pieces of one bin, (first piece in the group, count, bin, 0).
    pub runs: &'a wgpu::Buffer,
    /// Per group: its number of runs.
    pub run_counts: &'a wgpu::Buffer,
}

struct Pipelines {
    bin_rows: wgpu::ComputePipeline,
    count_blocks: wgpu::ComputePipeline,
    scan_bins: wgpu::ComputePipeline,
    plan_pieces: wgpu::ComputePipeline,
    scatter_rows: wgpu::ComputePipeline,
    piece_stats: wgpu::ComputePipeline,
}

type BinningPipelineCache = PipelineCache<(u32, bool), Pipelines>;

fn pipelines(ctx: &GpuContext, weight: u32, vec_x: bool) -> Result<Arc<Pipelines>, GpuError> {
    let cache = ctx.launcher_state(|| Ok::<_, GpuError>(BinningPipelineCache::default()))?;
    cache.get_or_build((weight, vec_x), || {
        let constants = [
            ("WG", WORKGROUP as f64),
            ("BLOCK", BLOCK as f64),
            ("MAX_BINS", MAX_BINS as f64),
            ("WEIGHT_MODE", weight as f64),
            ("VEC_X", if vec_x { 1.0 } else { 0.0 }),
        ];
        let build = |entry: &str| ctx.compute_pipeline(entry, SHADER, entry, &constants);
        Ok(Pipelines {
            bin_rows: build("bin_rows")?,
            count_blocks: build("count_blocks")?,
            scan_bins: build("scan_bins")?,
            plan_pieces: build("plan_pieces")?,
            scatter_rows: build("scatter_rows")?,
            piece_stats: build("piece_stats")?,
        })
    })
}

/// One pass's device binning: its buffers and what it has summed so far.
pub(crate) struct DeviceBinning<'c> {
    ctx: &'c GpuContext,
    pipes: Arc<Pipelines>,
    layout: Layout,
    dim: usize,
    bins: usize,
    near_cap: usize,
    params: wgpu::Buffer,
    basis: wgpu::Buffer,
    axis_edges: wgpu::Buffer,
    y_edges: wgpu::Buffer,
    near_count: wgpu::Buffer,
    near_bin: wgpu::Buffer,
    near_y: wgpu::Buffer,
    near_x: wgpu::Buffer,
    block_counts: wgpu::Buffer,
    bin_counts: wgpu::Buffer,
    bin_starts: wgpu::Buffer,
    piece_bins: wgpu::Buffer,
    stats: wgpu::Buffer,
    stats_bin: wgpu::Buffer,
    /// Batches whose sums sit in `stats`.
    stats_batches: usize,
}

impl<'c> DeviceBinning<'c> {
    /// The device binning of `spec` for a pass cut as `layout`, or `None` when this device or
    /// spec cannot have it (no f64 in shaders, more than [`MAX_BINS`] bins, a software
    /// adapter's loop budget): the pass then bins on the host.
    pub(crate) fn new(
        ctx: &'c GpuContext,
        spec: &BinSpec,
        weight: u32,
        y_edges: &[f32],
        layout: Layout,
    ) -> Result<Option<Self>> {
        let d = spec.dim;
        let k = spec.bins();
        let blocks = layout.batch_rows.div_ceil(BLOCK as usize);
        // The serial loop of plan_pieces: bins, pieces, groups and piece slots.
        let plan_loops = k + 2 * layout.max_pieces + layout.groups();
        if !ctx.device.features().contains(wgpu::Features::SHADER_F64)
            || k > MAX_BINS
            || (ctx.is_software() && plan_loops > 60_000)
            || BLOCK > ctx.max_workgroup_1d()
            || WORKGROUP > ctx.max_workgroup_1d()
            || (blocks as u64) > ctx.limits.max_compute_workgroups_per_dimension as u64
            || (layout.max_pieces as u64) > ctx.limits.max_compute_workgroups_per_dimension as u64
        {
            return Ok(None);
        }
        // A near-edge row costs d + 2 words; at most 64 MiB of them per pass.
        let near_cap = ((64usize << 20) / ((d + 2) * 4)).clamp(1, 4096);
        let stats_slots = STATS_BATCHES * layout.max_pieces;
        let words = |n: usize| (n * 4) as u64;
        let basis: Vec<f64> = spec.basis.clone();
        let axis: Vec<f64> = spec.axis_edges.iter().flatten().copied().collect();
        let storage = |label: &str, bytes: u64| ctx.storage_buffer(label, bytes);
        let binning = DeviceBinning {
            ctx,
            pipes: pipelines(ctx, weight, d.is_multiple_of(4))?,
            layout,
            dim: d,
            bins: k,
            near_cap,
            params: ctx.uniform_buffer("binning params", PARAMS_BYTES),
            basis: storage("binning basis", (basis.len() * 8) as u64)?,
            axis_edges: storage("binning axis edges", (axis.len() * 8) as u64)?,
            y_edges: storage("binning y edges", words(y_edges.len()))?,
            near_count: storage("binning near count", 16)?,
            near_bin: storage("binning near bins", words(near_cap))?,
            near_y: storage("binning near labels", words(near_cap))?,
            near_x: storage("binning near rows", words(near_cap * d))?,
            block_counts: storage("binning block counts", words(blocks * k))?,
            bin_counts: storage("binning bin counts", words(k))?,
            bin_starts: storage("binning bin starts", words(k))?,
            piece_bins: storage("binning piece bins", words(layout.max_pieces))?,
            stats: storage("binning piece sums", (stats_slots * 16) as u64)?,
            stats_bin: storage("binning piece sum bins", words(stats_slots))?,
            stats_batches: 0,
        };
        let q = &ctx.queue;
        if !basis.is_empty() {
            q.write_buffer(&binning.basis, 0, bytemuck::cast_slice(&basis));
        }
        if !axis.is_empty() {
            q.write_buffer(&binning.axis_edges, 0, bytemuck::cast_slice(&axis));
        }
        if !y_edges.is_empty() {
            q.write_buffer(&binning.y_edges, 0, bytemuck::cast_slice(y_edges));
        }
        Ok(Some(binning))
    }

    /// Whether the per-piece sums are full: [`DeviceBinning::take_stats`] must run before the
    /// next batch.
    pub(crate) fn stats_full(&self) -> bool {
        self.stats_batches == STATS_BATCHES
    }

    /// Encodes the binning and sort of one batch (`rows` rows of `x` and `y`) into `targets`.
    pub(crate) fn encode_batch(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        spec: &BinSpec,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        targets: &SortTargets,
    ) -> Result<()> {
        if self.stats_full() {
            return Err(GpuError::Kernel("binning: per-piece sums full".into()).into());
        }
        let ctx = self.ctx;
        let l = self.layout;
        let r = spec.rank();
        let axis = if r > 0 { spec.cells_per_axis() - 1 } else { 0 };
        let blocks = rows.div_ceil(BLOCK as usize);
        let words: [u32; 16] = [
            self.dim as u32,
            rows as u32,
            r as u32,
            axis as u32,
            (spec.y_bins() - 1) as u32,
            spec.y_bins() as u32,
            self.bins as u32,
            blocks as u32,
            l.max_pieces as u32,
            l.group_pieces as u32,
            l.groups() as u32,
            self.near_cap as u32,
            (self.stats_batches * l.max_pieces) as u32,
            l.piece_rows as u32,
            0,
            0,
        ];
        ctx.queue
            .write_buffer(&self.params, 0, bytemuck::cast_slice(&words));
        let p = &self.pipes;
        let pb = &self.params;
        let bind = |label: &str, pipe: &wgpu::ComputePipeline, list: &[(u32, &wgpu::Buffer)]| {
            ctx.bind_group(label, pipe, list)
        };
        let groups = [
            (
                &p.bin_rows,
                bind(
                    "binning bin_rows",
                    &p.bin_rows,
                    &[
                        (0, pb),
                        (1, x),
                        (2, y),
                        (3, &self.basis),
                        (4, &self.axis_edges),
                        (5, &self.y_edges),
                        (6, targets.bins),
                        (7, &self.near_count),
                        (8, &self.near_bin),
                        (9, &self.near_y),
                        (10, &self.near_x),
                        (21, x),
                    ],
                )?,
                (rows as u32).div_ceil(WORKGROUP),
            ),
            (
                &p.count_blocks,
                bind(
                    "binning count_blocks",
                    &p.count_blocks,
                    &[(0, pb), (6, targets.bins), (11, &self.block_counts)],
                )?,
                blocks as u32,
            ),
            (
                &p.scan_bins,
                bind(
                    "binning scan_bins",
                    &p.scan_bins,
                    &[(0, pb), (11, &self.block_counts), (12, &self.bin_counts)],
                )?,
                self.bins as u32,
            ),
            (
                &p.plan_pieces,
                bind(
                    "binning plan_pieces",
                    &p.plan_pieces,
                    &[
                        (0, pb),
                        (12, &self.bin_counts),
                        (13, targets.pieces),
                        (14, &self.piece_bins),
                        (15, targets.runs),
                        (16, targets.run_counts),
                        (20, &self.bin_starts),
                    ],
                )?,
                1,
            ),
            (
                &p.scatter_rows,
                bind(
                    "binning scatter_rows",
                    &p.scatter_rows,
                    &[
                        (0, pb),
                        (6, targets.bins),
                        (11, &self.block_counts),
                        (17, targets.perm),
                        (20, &self.bin_starts),
                    ],
                )?,
                blocks as u32,
            ),
            (
                &p.piece_stats,
                bind(
                    "binning piece_stats",
                    &p.piece_stats,
                    &[
                        (0, pb),
                        (2, y),
                        (13, targets.pieces),
                        (14, &self.piece_bins),
                        (17, targets.perm),
                        (18, &self.stats),
                        (19, &self.stats_bin),
                    ],
                )?,
                l.max_pieces as u32,
            ),
        ];
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("binning"),
            timestamp_writes: None,
        });
        for (pipe, group, count) in &groups {
            pass.set_pipeline(pipe);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(*count, 1, 1);
        }
        drop(pass);
        self.stats_batches += 1;
        Ok(())
    }

    /// Reads the per-piece sums back and adds count, weight, y and y^2 per bin into `out` in
    /// f64 (waits for the work submitted so far).
    pub(crate) fn take_stats(&mut self, out: &mut FilteredMoments) -> Result<()> {
        let slots = self.stats_batches * self.layout.max_pieces;
        self.stats_batches = 0;
        if slots == 0 {
            return Ok(());
        }
        let sums: Vec<[f32; 4]> = self.read("binning piece sums", &self.stats, slots * 16)?;
        let bins: Vec<u32> = self.read("binning piece bins", &self.stats_bin, slots * 4)?;
        super::context::check_finite("binning label sums", bytemuck::cast_slice(&sums))?;
        for (s, &b) in sums.iter().zip(&bins) {
            let b = b as usize;
            if s[3] == 0.0 {
                continue;
            }
            if b >= self.bins {
                return Err(GpuError::Kernel(format!(
                    "binning: a piece of bin {b} of {}",
                    self.bins
                ))
                .into());
            }
            out.count[b] += s[3] as u64;
            out.weight_sum[b] += s[0] as f64;
            out.sum_y[b] += s[1] as f64;
            out.sum_y2[b] += s[2] as f64;
        }
        Ok(())
    }

    /// Ends the pass: the remaining per-piece sums, then the near-edge rows rebinned with the
    /// f64 rule and their sums moved to the right bin. `Ok(false)` when the near-edge list
    /// overflowed: the pass's moments cannot be trusted and must be computed again with the
    /// host's binning.
    pub(crate) fn finish(
        mut self,
        spec: &BinSpec,
        weight: SampleWeight,
        out: &mut FilteredMoments,
    ) -> Result<bool> {
        self.take_stats(out)?;
        let count: Vec<u32> = self.read("binning near count", &self.near_count, 4)?;
        let near = count[0] as usize;
        if near > self.near_cap {
            return Ok(false);
        }
        if near == 0 {
            return Ok(true);
        }
        let d = self.dim;
        let bins: Vec<u32> = self.read("binning near bins", &self.near_bin, near * 4)?;
        let ys: Vec<f32> = self.read("binning near labels", &self.near_y, near * 4)?;
        let xs: Vec<f32> = self.read("binning near rows", &self.near_x, near * d * 4)?;
        let mut row = vec![0.0f64; d];
        for (i, (&from, &yv)) in bins.iter().zip(&ys).enumerate() {
            for (t, &v) in row.iter_mut().zip(&xs[i * d..(i + 1) * d]) {
                *t = v as f64;
            }
            let yv = yv as f64;
            let to = spec.bin_of(&row, yv);
            let from = from as usize;
            if to == from {
                continue;
            }
            move_row(out, from, to, &row, yv, weight.of(yv));
        }
        Ok(true)
    }

    fn read<T: bytemuck::Pod>(
        &self,
        what: &str,
        buf: &wgpu::Buffer,
        bytes: usize,
    ) -> Result<Vec<T>> {
        let ctx = self.ctx;
        let bytes = bytes as u64;
        let staging = ctx.staging_buffer(what, bytes);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, bytes);
        Ok(ctx.submit_and_read(what, enc, &staging, bytes, 0.0)?)
    }
}

/// Moves one row's share of every sum (count, weight, y, y^2, w x, w x x^T) from bin `from` to
/// bin `to`, in f64.
fn move_row(out: &mut FilteredMoments, from: usize, to: usize, row: &[f64], y: f64, w: f64) {
    let d = out.dim;
    let tri = d * (d + 1) / 2;
    out.count[from] -= 1;
    out.count[to] += 1;
    for (b, sign) in [(from, -1.0), (to, 1.0)] {
        let s = sign * w;
        out.weight_sum[b] += s;
        out.sum_y[b] += sign * y;
        out.sum_y2[b] += sign * y * y;
        let mut at = b * tri;
        for a in 0..d {
            out.sum_x[b * d + a] += s * row[a];
            for &c in &row[a..] {
                out.sum_xx[at] += s * row[a] * c;
                at += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::MemorySource;
    use crate::moments::reference_moments;

    /// Moving a row between bins gives the moments of the spec that bins it there.
    #[test]
    fn a_moved_row_counts_in_its_new_bin() {
        let d = 3;
        let x = vec![0.5f32, -1.0, 2.0, -0.75, 0.25, 1.5, 0.1, 0.2, -0.3];
        let y = vec![1.5f32, -0.5, 0.25];
        let src = MemorySource {
            dim: d,
            x: x.clone(),
            y,
        };
        // Row 2 (x0 = 0.1) lies above an edge at 0.0 and below one at 0.2.
        let spec = |edge: f64| BinSpec {
            dim: d,
            basis: vec![1.0, 0.0, 0.0],
            axis_edges: vec![vec![edge]],
            y_edges: vec![vec![]; 2],
        };
        let weight = SampleWeight::Label;
        let mut got = reference_moments(&src, &spec(0.0), weight).unwrap();
        let want = reference_moments(&src, &spec(0.2), weight).unwrap();
        let row: Vec<f64> = x[6..9].iter().map(|&v| v as f64).collect();
        move_row(&mut got, 1, 0, &row, 0.25, weight.of(0.25));
        assert_eq!(got.count, want.count);
        assert!(
            got.relative_difference(&want) < 1e-12,
            "{got:?} vs {want:?}"
        );
    }
}
