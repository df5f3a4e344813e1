//! Batched candidate evaluation on the GPU (`shaders/evaluate.wgsl`).
//!
//! One workgroup per (candidate, chunk of samples): activations of a tile of samples sit in
//! workgroup memory, each invocation keeps its share of the candidate's statistics in registers,
//! and a workgroup writes its f32 sums once per chunk (the shader's header says how). Candidates
//! are streamed in blocks of at most `max_candidates_per_dispatch` and samples in blocks of at
//! most `max_chunks_per_dispatch` chunks. Each (candidate block, sample block) is one
//! submission: the `evaluate` pass writes f32 partial sums per (chunk, candidate), the `reduce`
//! pass sums them over chunks, and the host adds the reduced block into f64 totals. On software
//! adapters (lavapipe) the chunk is cut so that one invocation stays inside Mesa's
//! 65,535-iteration loop budget.
//!
//! Limits: the rank r and the hidden widths are runtime sizes; two planes of `samples_per_tile`
//! rows of max(r, widths) + 3 words must fit the adapter's workgroup memory (r up to about
//! 2,000 on a 16 KiB adapter with one sample per tile), and the statistics of one candidate
//! (1 + f(f+1)/2 + f for f = last width + 1) at most 16 per invocation. Past either the request
//! fails with [`GpuError::TooLarge`] naming the sizes; the CPU backend has no such limits.

use super::{GpuContext, GpuError};
use crate::backend::{
    check_evaluation_inputs, tri_len, CandidateBatch, CandidateStats, ProjectedSamples,
};
use crate::error::{Error, Result};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Statistics one invocation holds in registers (`MAXPER` in WGSL).
pub const MAX_STATS_PER_INVOCATION: usize = 16;

/// Tunables of the evaluation kernel; `workgroup_size`, `samples_per_tile` and the chunk (in
/// tiles) become the WGSL `override` constants `WG`, `SB` and `TILES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvaluateKernelParams {
    /// Invocations per workgroup (they share one candidate).
    pub workgroup_size: u32,
    /// Samples whose activations sit in workgroup memory together.
    pub samples_per_tile: u32,
    /// Samples one workgroup sums in f32 before its partial is written (a multiple of
    /// `samples_per_tile`; cut further to fit `loop_budget`).
    pub chunk_len: u32,
    /// Sample chunks per dispatch (bounds the partial buffer and the f32 reduce length).
    pub max_chunks_per_dispatch: u32,
    /// Candidates per dispatch; more are streamed.
    pub max_candidates_per_dispatch: usize,
    /// Loop iterations one invocation may run; `Some` on software adapters (lavapipe truncates
    /// beyond 65,535 silently), `None` on hardware.
    pub loop_budget: Option<u64>,
}

impl EvaluateKernelParams {
    /// Defaults for a device: 64-wide workgroups, tiles of 32 samples, chunks of 1,024 samples,
    /// at most 1e5 candidates per dispatch, and a 30,000-iteration loop budget on software
    /// adapters.
    pub fn for_context(ctx: &GpuContext) -> Self {
        EvaluateKernelParams {
            workgroup_size: 64.min(ctx.max_workgroup_1d()),
            samples_per_tile: 32,
            chunk_len: 1024,
            max_chunks_per_dispatch: 256,
            max_candidates_per_dispatch: 100_000,
            loop_budget: ctx.is_software().then_some(30_000),
        }
    }

    /// [`Self::for_context`] adjusted to one architecture: workgroups of 32 when a candidate
    /// has at most 32 statistics (fewer idle invocations while summing), wider ones (up to the
    /// adapter's limit) when it has more than 16 per invocation, and tiles shortened until two
    /// planes fit the workgroup memory.
    pub fn for_batch(ctx: &GpuContext, batch: &CandidateBatch) -> Self {
        let mut p = Self::for_context(ctx);
        let stats = stat_len(batch.feature_dim()) as u32;
        let most = ctx.max_workgroup_1d();
        if stats <= 32 {
            p.workgroup_size = p.workgroup_size.min(32);
        }
        while (p.workgroup_size as usize) * MAX_STATS_PER_INVOCATION < stats as usize
            && p.workgroup_size * 2 <= most
        {
            p.workgroup_size *= 2;
        }
        let stride = plane_stride(batch) as u64;
        let room = ctx.limits.max_compute_workgroup_storage_size as u64;
        while p.samples_per_tile > 1 && 2 * p.samples_per_tile as u64 * stride * 4 > room {
            p.samples_per_tile /= 2;
        }
        p.chunk_len = p.chunk_len.next_multiple_of(p.samples_per_tile);
        p
    }
}

/// Statistics per candidate: SSE, packed Phi^T Phi, Phi^T y.
fn stat_len(f: usize) -> usize {
    1 + tri_len(f) + f
}

/// Row stride of an activation plane: the widest row (rank or hidden width) plus the constant,
/// y and e columns, odd so that invocations reading one column of neighbouring rows hit
/// different banks.
fn plane_stride(batch: &CandidateBatch) -> usize {
    let widest = batch.hidden.iter().copied().fold(batch.inputs, usize::max);
    (widest + 3) | 1
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Info {
    sample_start: u32,
    sample_count: u32,
    cand_count: u32,
    chunk_count: u32,
    rank: u32,
    depth: u32,
    params_per: u32,
    feat: u32,
    stat_len: u32,
    tri: u32,
    out_off: u32,
    pad: u32,
}

struct Pipelines {
    evaluate: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
}

/// What a compiled pipeline depends on: workgroup size, tile, stride, statistics per
/// invocation, tiles per chunk.
type PipelineKey = (u32, u32, u32, u32, u32);

/// Pipelines per key, built once per device (held by the context: a static keyed by
/// `wgpu::Device` mixed up devices, whose ids repeat across instances).
type EvaluatePipelineCache = super::context::PipelineCache<PipelineKey, Pipelines>;

fn pipelines(ctx: &GpuContext, key: PipelineKey) -> Result<Arc<Pipelines>> {
    let cache = ctx.launcher_state(|| Ok::<_, GpuError>(EvaluatePipelineCache::default()))?;
    Ok(cache.get_or_build(key, || -> Result<Pipelines, GpuError> {
        let wgsl = include_str!("../../../shaders/evaluate.wgsl");
        let (wg, sb, stride, per, tiles) = key;
        let constants = [
            ("WG", wg as f64),
            ("SB", sb as f64),
            ("STRIDE", stride as f64),
            ("PER", per as f64),
            ("TILES", tiles as f64),
        ];
        Ok(Pipelines {
            evaluate: ctx.compute_pipeline("evaluate", wgsl, "evaluate", &constants)?,
            reduce: ctx.compute_pipeline("evaluate reduce", wgsl, "reduce", &constants)?,
        })
    })?)
}

pub(crate) fn evaluate_candidates(
    ctx: &GpuContext,
    samples: &ProjectedSamples,
    batch: &CandidateBatch,
) -> Result<CandidateStats> {
    evaluate_candidates_with(
        ctx,
        samples,
        batch,
        &EvaluateKernelParams::for_batch(ctx, batch),
    )
}

/// Loop iterations of one invocation per tile of `sb` samples with `wg` invocations (every
/// non-unrolled loop counts on lavapipe; the statistics, straight-line code over four vec4
/// register blocks, are counted as `per + 1` per sample, an upper bound).
fn loop_cost_per_tile(batch: &CandidateBatch, wg: u64, sb: u64, per: u64) -> u64 {
    let r = batch.inputs as u64;
    let mut cost = 1 + (sb * r).div_ceil(wg);
    let mut width = r;
    for &h in &batch.hidden {
        cost += 1 + (sb * h as u64).div_ceil(wg) * (width + 1);
        width = h as u64;
    }
    cost + sb.div_ceil(wg) * (width + 3) + sb * (per + 1)
}

/// Batched evaluation with explicit kernel tunables (tests force streaming with small values).
pub fn evaluate_candidates_with(
    ctx: &GpuContext,
    samples: &ProjectedSamples,
    batch: &CandidateBatch,
    kp: &EvaluateKernelParams,
) -> Result<CandidateStats> {
    check_evaluation_inputs(samples, batch)?;
    let (count, n, f) = (batch.count(), samples.len(), batch.feature_dim());
    let mut stats = CandidateStats {
        feature_dim: f,
        sse: vec![0.0; count],
        gram: vec![0.0; count * tri_len(f)],
        feature_y: vec![0.0; count * f],
    };
    let mut plan = EvaluatePlan::new(ctx, batch, kp)?;
    if count == 0 || n == 0 {
        return Ok(stats);
    }
    plan.fit_dispatches(ctx, samples, batch, kp)?;
    let pipes = pipelines(
        ctx,
        (
            kp.workgroup_size,
            kp.samples_per_tile,
            plan.stride as u32,
            plan.per_invocation as u32,
            plan.tiles as u32,
        ),
    )?;
    let device = &ctx.device;
    let init = |label: &str, contents: &[u8], usage| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage,
        })
    };
    let storage = wgpu::BufferUsages::STORAGE;
    let z_buf = init("evaluate z", bytemuck::cast_slice(&samples.z), storage);
    let y_buf = init("evaluate y", bytemuck::cast_slice(&samples.y), storage);
    let (table, out_off) = layer_table(batch);
    let shape_buf = init("evaluate shape", bytemuck::cast_slice(&table), storage);
    let per = batch.params_per_candidate();
    let stat_bytes = (plan.stat_len * 4) as u64;
    let samples_per = plan.chunks_per * plan.chunk;
    for c0 in (0..count).step_by(plan.cands_per) {
        let cc = plan.cands_per.min(count - c0);
        let params = bytemuck::cast_slice(&batch.params[c0 * per..(c0 + cc) * per]);
        let params_buf = init("evaluate params", params, storage);
        let out_bytes = cc as u64 * stat_bytes;
        let reduced = ctx.storage_buffer("evaluate reduced", out_bytes)?;
        let readback = ctx.staging_buffer("evaluate readback", out_bytes);
        for s0 in (0..n).step_by(samples_per) {
            let sc = samples_per.min(n - s0);
            let kc = sc.div_ceil(plan.chunk);
            let info = Info {
                sample_start: s0 as u32,
                sample_count: sc as u32,
                cand_count: cc as u32,
                chunk_count: kc as u32,
                rank: samples.rank as u32,
                depth: batch.hidden.len() as u32,
                params_per: per as u32,
                feat: f as u32,
                stat_len: plan.stat_len as u32,
                tri: tri_len(f) as u32,
                out_off: out_off as u32,
                pad: 0,
            };
            let info_buf = init(
                "evaluate info",
                bytemuck::bytes_of(&info),
                wgpu::BufferUsages::UNIFORM,
            );
            let partial = ctx.storage_buffer("evaluate partial", kc as u64 * out_bytes)?;
            let eval_bg = ctx.bind_group(
                "evaluate bind group",
                &pipes.evaluate,
                &[
                    (0, &info_buf),
                    (1, &z_buf),
                    (2, &y_buf),
                    (3, &params_buf),
                    (4, &partial),
                    (6, &shape_buf),
                ],
            )?;
            let reduce_bg = ctx.bind_group(
                "evaluate reduce bind group",
                &pipes.reduce,
                &[(0, &info_buf), (4, &partial), (5, &reduced)],
            )?;
            let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("evaluate"),
            });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("evaluate"),
                    timestamp_writes: None,
                });
                let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
                let groups = cc * kc;
                let gx = groups.min(max_groups);
                pass.set_pipeline(&pipes.evaluate);
                pass.set_bind_group(0, &eval_bg, &[]);
                pass.dispatch_workgroups(gx as u32, groups.div_ceil(gx) as u32, 1);
                let groups = (cc * plan.stat_len).div_ceil(kp.workgroup_size as usize);
                let gx = groups.min(max_groups);
                pass.set_pipeline(&pipes.reduce);
                pass.set_bind_group(0, &reduce_bg, &[]);
                pass.dispatch_workgroups(gx as u32, groups.div_ceil(gx) as u32, 1);
            }
            enc.copy_buffer_to_buffer(&reduced, 0, &readback, 0, out_bytes);
            let flops = plan.dispatch_flops(cc, kc);
            let sums: Vec<f32> =
                ctx.submit_and_read("evaluate", enc, &readback, out_bytes, flops)?;
            super::context::check_finite("candidate evaluation", &sums)?;
            add_block(&mut stats, c0, plan.stat_len, &sums);
        }
    }
    Ok(stats)
}

/// The sizes of one evaluation: statistics per candidate, the chunk inside the loop budget,
/// and the candidates and chunks per dispatch within the binding limits and the grid.
struct EvaluatePlan {
    stat_len: usize,
    per_invocation: usize,
    stride: usize,
    tiles: u64,
    /// Samples per chunk (`tiles` tiles).
    chunk: usize,
    chunks_per: usize,
    cands_per: usize,
    /// Flops of one (candidate, sample): the hidden layers, the output, the statistics.
    pair_flops: f64,
}

impl EvaluatePlan {
    /// The kernel's tunables checked against the batch and the adapter (the dispatch sizes
    /// come from [`Self::fit_dispatches`]).
    fn new(
        ctx: &GpuContext,
        batch: &CandidateBatch,
        kp: &EvaluateKernelParams,
    ) -> Result<EvaluatePlan> {
        let (wg, sb) = (kp.workgroup_size, kp.samples_per_tile);
        if wg == 0
            || sb == 0
            || kp.chunk_len == 0
            || !kp.chunk_len.is_multiple_of(sb)
            || kp.max_chunks_per_dispatch == 0
            || kp.max_candidates_per_dispatch == 0
        {
            return Err(Error::invalid(format!(
                "evaluate kernel: sizes must be positive and the chunk a multiple of the tile: {kp:?}"
            )));
        }
        ctx.check_workgroup_1d("evaluate kernel", wg)?;
        let f = batch.feature_dim();
        let stat_len = stat_len(f);
        let per_invocation = stat_len.div_ceil(wg as usize);
        if per_invocation > MAX_STATS_PER_INVOCATION {
            return Err(GpuError::TooLarge(format!(
                "evaluate kernel: a last hidden layer of width {} gives {stat_len} statistics per \
                 candidate, more than {MAX_STATS_PER_INVOCATION} for each of {wg} invocations; use \
                 wider workgroups or the CPU backend",
                f - 1
            ))
            .into());
        }
        let stride = plane_stride(batch);
        let shared = 2 * sb as u64 * stride as u64 * 4;
        let room = ctx.limits.max_compute_workgroup_storage_size;
        if shared > room as u64 {
            return Err(GpuError::TooLarge(format!(
                "evaluate kernel: rank {} and hidden widths {:?} need {shared} bytes of workgroup \
                 memory for tiles of {sb} samples; this adapter has {room} (use fewer samples per \
                 tile, or the CPU backend)",
                batch.inputs, batch.hidden
            ))
            .into());
        }
        let mut pair_flops = 2.0 * (f + stat_len) as f64;
        let mut width = batch.inputs;
        for &h in &batch.hidden {
            pair_flops += 2.0 * (width as f64 + 1.0) * h as f64;
            width = h;
        }
        Ok(EvaluatePlan {
            stat_len,
            per_invocation,
            stride,
            tiles: 0,
            chunk: 0,
            chunks_per: 0,
            cands_per: 0,
            pair_flops,
        })
    }

    /// The chunk inside the loop budget, and candidates and chunks per dispatch: within the
    /// binding limit, as an x-by-y grid of at most max_groups^2 workgroups, and no more work
    /// than a driver watchdog allows.
    fn fit_dispatches(
        &mut self,
        ctx: &GpuContext,
        samples: &ProjectedSamples,
        batch: &CandidateBatch,
        kp: &EvaluateKernelParams,
    ) -> Result<()> {
        // Tiles per chunk inside the loop budget.
        let (wg, sb) = (kp.workgroup_size, kp.samples_per_tile);
        let f = batch.feature_dim();
        let mut tiles = (kp.chunk_len / sb) as u64;
        if let Some(budget) = kp.loop_budget {
            let per_tile =
                loop_cost_per_tile(batch, wg as u64, sb as u64, self.per_invocation as u64);
            let room = budget.saturating_sub(MAX_STATS_PER_INVOCATION as u64 * f as u64);
            if per_tile > room {
                return Err(GpuError::TooLarge(format!(
                    "this architecture needs {per_tile} loop iterations per tile of {sb} samples, \
                     over the software adapter's budget of {budget}; use the CPU backend"
                ))
                .into());
            }
            tiles = tiles.min(room / per_tile).max(1);
        }
        self.tiles = tiles;
        self.chunk = tiles as usize * sb as usize;
        let limit = ctx.max_binding();
        ctx.check_binding("projected samples", (samples.z.len() * 4) as u64)?;
        let stat_bytes = (self.stat_len * 4) as u64;
        let per = batch.params_per_candidate();
        let total_chunks = samples.len().div_ceil(self.chunk);
        let mut chunks_per = total_chunks.min(kp.max_chunks_per_dispatch as usize);
        let mut cands_per = batch.count().min(kp.max_candidates_per_dispatch);
        cands_per = cands_per.min((limit / (chunks_per as u64 * stat_bytes)).max(1) as usize);
        cands_per = cands_per.min((limit / (per as u64 * 4)).max(1) as usize);
        if chunks_per as u64 * cands_per as u64 * stat_bytes > limit {
            chunks_per = (limit / (cands_per as u64 * stat_bytes)).max(1) as usize;
        }
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
        let max_flops = ctx.max_dispatch_flops();
        while cands_per * chunks_per > max_groups * max_groups
            || (self.dispatch_flops(cands_per, chunks_per) > max_flops
                && cands_per * chunks_per > 1)
        {
            if chunks_per > 1 {
                chunks_per = chunks_per.div_ceil(2);
            } else {
                cands_per = cands_per.div_ceil(2);
            }
        }
        self.chunks_per = chunks_per;
        self.cands_per = cands_per;
        Ok(())
    }

    fn dispatch_flops(&self, cands: usize, chunks: usize) -> f64 {
        cands as f64 * (chunks * self.chunk) as f64 * self.pair_flops
    }
}

/// Per hidden layer: inputs, outputs, weight offset, bias offset (within a candidate); and the
/// offset of the output weights.
fn layer_table(batch: &CandidateBatch) -> (Vec<u32>, usize) {
    let mut table: Vec<u32> = Vec::new();
    let mut width = batch.inputs;
    let mut off = 0usize;
    for &h in &batch.hidden {
        table.extend([width as u32, h as u32, off as u32, (off + h * width) as u32]);
        off += h * width + h;
        width = h;
    }
    table.resize(table.len().max(4), 0);
    (table, off)
}

/// Adds one block's reduced sums (candidate-major from candidate `c0`: `sums[ci * stat_len +
/// k]`, k = 0 the SSE, then the gram, then phi y) into the f64 totals.
fn add_block(stats: &mut CandidateStats, c0: usize, stat_len: usize, sums: &[f32]) {
    let f = stats.feature_dim;
    let tri = tri_len(f);
    for (ci, s) in sums.chunks_exact(stat_len).enumerate() {
        let c = c0 + ci;
        stats.sse[c] += s[0] as f64;
        for (g, &v) in stats.gram[c * tri..(c + 1) * tri].iter_mut().zip(&s[1..]) {
            *g += v as f64;
        }
        for (g, &v) in stats.feature_y[c * f..(c + 1) * f]
            .iter_mut()
            .zip(&s[1 + tri..])
        {
            *g += v as f64;
        }
    }
}
