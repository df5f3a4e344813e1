//! Batched candidate evaluation on the GPU (`shaders/evaluate.wgsl`).
//!
//! Candidates are streamed in blocks of at most `max_candidates_per_dispatch` and samples in
//! blocks of at most `max_chunks_per_dispatch` chunks. Each (candidate block, sample block) is
//! one submission: the `evaluate` pass writes f32 partial sums per (chunk, candidate), the
//! `reduce` pass sums them over chunks, and the host adds the reduced block into f64 totals.
//! On software adapters (lavapipe) the chunk length is cut so that one invocation stays inside
//! Mesa's 65,535-iteration loop budget. Limits: rank and hidden widths <= 64, depth <= 8; larger
//! requests return [`crate::Error::InvalidRequest`] (the CPU backend has no such limits).

use super::GpuContext;
use crate::backend::{
    check_evaluation_inputs, tri_len, CandidateBatch, CandidateStats, ProjectedSamples,
};
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex, OnceLock};
use wgpu::util::DeviceExt;

/// Widest hidden layer (and rank) the kernel's activation array holds.
pub const MAX_GPU_WIDTH: usize = 64;
/// Deepest hidden stack the kernel's uniform block describes.
pub const MAX_GPU_DEPTH: usize = 8;

/// Tunables of the evaluation kernel. `workgroup_size` and `chunk_len` become the WGSL
/// `override` constants `WG` and `CHUNK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvaluateKernelParams {
    /// Invocations per workgroup (candidates side by side).
    pub workgroup_size: u32,
    /// Samples one invocation sums in f32 before the partial is written.
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
    /// Defaults for a device: 64-wide workgroups, chunks of 256 samples, at most 1e5
    /// candidates per dispatch, and a 30,000-iteration loop budget on software adapters.
    pub fn for_context(ctx: &GpuContext) -> Self {
        EvaluateKernelParams {
            workgroup_size: 64
                .min(ctx.limits.max_compute_invocations_per_workgroup)
                .min(ctx.limits.max_compute_workgroup_size_x),
            chunk_len: 256,
            max_chunks_per_dispatch: 256,
            max_candidates_per_dispatch: 100_000,
            loop_budget: ctx.is_software().then_some(30_000),
        }
    }
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
    pad: [u32; 2],
    widths: [u32; 8],
}

struct Pipelines {
    evaluate: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
}

/// Pipelines per (device, workgroup size, chunk length), built once.
type PipelineCache = Mutex<Vec<((wgpu::Device, u32, u32), Arc<Pipelines>)>>;

fn pipelines(ctx: &GpuContext, wg: u32, chunk: u32) -> Result<Arc<Pipelines>> {
    static CACHE: OnceLock<PipelineCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    let key = (ctx.device.clone(), wg, chunk);
    if let Some((_, p)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(p.clone());
    }
    let wgsl = include_str!("../../../shaders/evaluate.wgsl");
    let constants = [("WG", wg as f64), ("CHUNK", chunk as f64)];
    let p = Arc::new(Pipelines {
        evaluate: ctx.compute_pipeline("evaluate", wgsl, "evaluate", &constants)?,
        reduce: ctx.compute_pipeline("evaluate reduce", wgsl, "reduce", &constants)?,
    });
    cache.push((key, p.clone()));
    Ok(p)
}

pub(crate) fn evaluate_candidates(
    ctx: &GpuContext,
    samples: &ProjectedSamples,
    batch: &CandidateBatch,
) -> Result<CandidateStats> {
    evaluate_candidates_with(ctx, samples, batch, &EvaluateKernelParams::for_context(ctx))
}

/// Loop iterations of one sample in the kernel (every non-unrolled loop counts on lavapipe).
fn loop_cost_per_sample(batch: &CandidateBatch) -> u64 {
    let f = batch.feature_dim() as u64;
    let mut cost = batch.inputs as u64 + 1;
    let mut width = batch.inputs as u64;
    for &h in &batch.hidden {
        cost += h as u64 * (width + 1) + 1;
        width = h as u64;
    }
    cost + 2 * f + tri_len(f as usize) as u64
}

/// Batched evaluation with explicit kernel tunables (tests force streaming with small values).
pub fn evaluate_candidates_with(
    ctx: &GpuContext,
    samples: &ProjectedSamples,
    batch: &CandidateBatch,
    kp: &EvaluateKernelParams,
) -> Result<CandidateStats> {
    check_evaluation_inputs(samples, batch)?;
    if samples.rank > MAX_GPU_WIDTH || batch.hidden.iter().any(|&h| h > MAX_GPU_WIDTH) {
        return Err(Error::invalid(format!(
            "GPU evaluation takes rank and hidden widths up to {MAX_GPU_WIDTH} (got rank {}, widths {:?}); use the CPU backend",
            samples.rank, batch.hidden
        )));
    }
    if batch.hidden.len() > MAX_GPU_DEPTH {
        return Err(Error::invalid(format!(
            "GPU evaluation takes up to {MAX_GPU_DEPTH} hidden layers (got {}); use the CPU backend",
            batch.hidden.len()
        )));
    }
    if kp.workgroup_size == 0 || kp.chunk_len == 0 || kp.max_chunks_per_dispatch == 0 {
        return Err(Error::invalid(
            "evaluate kernel: workgroup size, chunk length and chunks per dispatch must be positive",
        ));
    }
    let f = batch.feature_dim();
    let tri = tri_len(f);
    let stat_len = 1 + tri + f;
    let count = batch.count();
    let n = samples.len();
    let mut stats = CandidateStats {
        feature_dim: f,
        sse: vec![0.0; count],
        gram: vec![0.0; count * tri],
        feature_y: vec![0.0; count * f],
    };
    if count == 0 || n == 0 {
        return Ok(stats);
    }

    // Chunk length inside the loop budget.
    let mut chunk = kp.chunk_len as u64;
    if let Some(budget) = kp.loop_budget {
        let per = loop_cost_per_sample(batch);
        let room = budget.saturating_sub(stat_len as u64);
        if per > room {
            return Err(Error::invalid(format!(
                "this architecture needs {per} loop iterations per sample, over the software \
                 adapter's budget of {budget}; use the CPU backend"
            )));
        }
        chunk = chunk.min(room / per).max(1);
    }
    let chunk = chunk as u32;

    // Dispatch sizes within the binding limits.
    let limit = ctx.max_binding().min(1 << 29);
    ctx.check_binding("projected samples", (samples.z.len() * 4) as u64)?;
    let total_chunks = n.div_ceil(chunk as usize);
    let mut chunks_per = total_chunks.min(kp.max_chunks_per_dispatch as usize);
    let stat_bytes = (stat_len * 4) as u64;
    let per = batch.params_per_candidate();
    let mut cands_per = count.min(kp.max_candidates_per_dispatch.max(1));
    cands_per = cands_per.min((limit / (chunks_per as u64 * stat_bytes)).max(1) as usize);
    cands_per = cands_per.min((limit / (per as u64 * 4)).max(1) as usize);
    if chunks_per as u64 * cands_per as u64 * stat_bytes > limit {
        chunks_per = (limit / (cands_per as u64 * stat_bytes)).max(1) as usize;
    }
    let wg = kp.workgroup_size;
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    cands_per = cands_per.min(max_groups * wg as usize);
    chunks_per = chunks_per.min(max_groups);

    let pipes = pipelines(ctx, wg, chunk)?;
    let device = &ctx.device;
    let z_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("evaluate z"),
        contents: bytemuck::cast_slice(&samples.z),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let y_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("evaluate y"),
        contents: bytemuck::cast_slice(&samples.y),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let mut widths = [0u32; 8];
    for (w, &h) in widths.iter_mut().zip(&batch.hidden) {
        *w = h as u32;
    }

    let samples_per = chunks_per * chunk as usize;
    for c0 in (0..count).step_by(cands_per) {
        let cc = cands_per.min(count - c0);
        // Candidate-minor (transposed) so that neighbouring invocations read neighbouring words.
        let block = &batch.params[c0 * per..(c0 + cc) * per];
        let mut transposed = vec![0.0f32; cc * per];
        for (c, p) in block.chunks_exact(per).enumerate() {
            for (i, &v) in p.iter().enumerate() {
                transposed[i * cc + c] = v;
            }
        }
        let params_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("evaluate params"),
            contents: bytemuck::cast_slice(&transposed),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let out_bytes = (cc * stat_len * 4) as u64;
        let reduced = ctx.storage_buffer("evaluate reduced", out_bytes)?;
        let readback = ctx.staging_buffer("evaluate readback", out_bytes);
        for s0 in (0..n).step_by(samples_per) {
            let sc = samples_per.min(n - s0);
            let kc = sc.div_ceil(chunk as usize);
            let info = Info {
                sample_start: s0 as u32,
                sample_count: sc as u32,
                cand_count: cc as u32,
                chunk_count: kc as u32,
                rank: samples.rank as u32,
                depth: batch.hidden.len() as u32,
                params_per: per as u32,
                feat: f as u32,
                stat_len: stat_len as u32,
                tri: tri as u32,
                pad: [0; 2],
                widths,
            };
            let info_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("evaluate info"),
                contents: bytemuck::bytes_of(&info),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let partial =
                ctx.storage_buffer("evaluate partial", (kc * cc * stat_len * 4) as u64)?;
            let eval_bg = ctx.bind_group(
                "evaluate bind group",
                &pipes.evaluate,
                &[
                    (0, &info_buf),
                    (1, &z_buf),
                    (2, &y_buf),
                    (3, &params_buf),
                    (4, &partial),
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
                pass.set_pipeline(&pipes.evaluate);
                pass.set_bind_group(0, &eval_bg, &[]);
                pass.dispatch_workgroups(cc.div_ceil(wg as usize) as u32, kc as u32, 1);
                let groups = (cc * stat_len).div_ceil(wg as usize);
                let gx = groups.min(max_groups.min(32_768));
                let gy = groups.div_ceil(gx);
                pass.set_pipeline(&pipes.reduce);
                pass.set_bind_group(0, &reduce_bg, &[]);
                pass.dispatch_workgroups(gx as u32, gy as u32, 1);
            }
            enc.copy_buffer_to_buffer(&reduced, 0, &readback, 0, out_bytes);
            let sums: Vec<f32> = ctx.submit_and_read("evaluate", enc, &readback, out_bytes)?;
            // sums is stat-major: sums[k * cc + ci].
            for ci in 0..cc {
                let c = c0 + ci;
                stats.sse[c] += sums[ci] as f64;
                for (k, g) in stats.gram[c * tri..(c + 1) * tri].iter_mut().enumerate() {
                    *g += sums[(1 + k) * cc + ci] as f64;
                }
                for (k, g) in stats.feature_y[c * f..(c + 1) * f].iter_mut().enumerate() {
                    *g += sums[(1 + tri + k) * cc + ci] as f64;
                }
            }
        }
    }
    Ok(stats)
}
