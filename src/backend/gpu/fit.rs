//! Launcher of the Gauss-Newton fit-moments kernel (`shaders/fit_moments.wgsl`), the GPU
//! override of [`crate::backend::Backend::fit_moments`].
//!
//! Samples come from the batch feeder (`feed.rs`: a resident copy, or uploads overlapped with
//! compute, two in flight). Per dispatch (at most `max_batch_rows` rows and one grid of
//! workgroups) one workgroup runs per chunk of samples and writes an f32 partial of the
//! `d + r + 1` output rows (cross, gram, sse); `reduce_chunks` adds a dispatch's partials into
//! one slot of a sums buffer that stays on the device; the host reads all slots back once per
//! pass (or when 32 MiB of them are full) and adds them in f64.
//!
//! Precision: f32 per sample (z = B x, the network pass), f32 sums over blocks of at most
//! `block` samples, f32 sums of at most `chunk / block` block sums, f32 sums over a dispatch's
//! chunks in blocks of 16, f64 across dispatches.
//!
//! Limits: any rank r (z and g of a block sit in workgroup memory, `block * (2 r' + 1)` words
//! for r' = r rounded up to 8, checked against the adapter as [`GpuError::TooLarge`];
//! [`FitKernelParams::for_rank`] halves the block until it fits); networks of any depth and
//! width. With two or more hidden layers every
//! invocation keeps its sample's hidden activations in a device scratch buffer (sum of hidden
//! widths f32 words per invocation; one hidden layer is streamed and needs none). Buffers are
//! checked against the adapter's binding limits and the block against its workgroup storage
//! ([`GpuError::TooLarge`]); a large scratch buffer shortens the batch instead. On software
//! adapters (lavapipe stops an invocation silently after 65,535 loop iterations) the chunk is
//! shortened until one invocation's loops fit `loop_budget`; a single block that does not fit
//! is [`GpuError::TooLarge`] (from about d = 1,300 at r = 8 with 256 hidden units).

/// Rank columns one invocation sums in registers at a time (`JB` in WGSL).
const RANK_GROUP: usize = 8;

/// The rank rounded up to whole register groups (`RP` in WGSL).
fn padded_rank(r: usize) -> usize {
    r.div_ceil(RANK_GROUP) * RANK_GROUP
}

use super::context::PipelineCache;
use super::feed::ResidentSamples;
use super::{GpuContext, GpuError};
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::moments::{check_fit_request, FitMoments};
use crate::network::Network;
use std::sync::Arc;

/// Longest f32 partial sum in samples; longer chunks would cost precision (WGPU-NOTES 3).
const MAX_CHUNK: u32 = 16_384;

/// Tunables of the fit-moments kernel; `workgroup_size`, `block` and the chunk length become
/// the WGSL `override` constants `WG`, `SB` and `CHUNK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FitKernelParams {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// Samples per block (a multiple of `workgroup_size`): z, g and e of a block sit in
    /// workgroup memory, `block * (2 r' + 1)` f32 words (r' = r rounded up to 8).
    pub block: u32,
    /// Most samples per workgroup and f32 partial (a multiple of `block`, <= 16,384); cut
    /// further to fit `loop_budget`.
    pub chunk: u32,
    /// Most samples per uploaded batch.
    pub max_batch_rows: u32,
    /// Loop iterations one invocation may run; `Some` on software adapters (lavapipe truncates
    /// beyond 65,535 silently), `None` on hardware.
    pub loop_budget: Option<u64>,
}

impl FitKernelParams {
    /// Defaults for a device: 64 invocations; blocks of 128 samples and chunks of 1,024 on
    /// hardware (one workgroup per chunk, so shorter chunks keep more of the GPU busy, while the
    /// partials read back stay ~1 % of the x uploaded); blocks of 64 on software adapters, with
    /// a 30,000-iteration loop budget that cuts the chunk further; batches of 2^20 rows.
    pub fn for_context(ctx: &GpuContext) -> Self {
        let workgroup_size = 64.min(ctx.max_workgroup_1d());
        let block = if ctx.is_software() { 1 } else { 2 } * workgroup_size;
        FitKernelParams {
            workgroup_size,
            block,
            chunk: (1024 / block).max(1) * block,
            max_batch_rows: 1 << 20,
            loop_budget: ctx.is_software().then_some(30_000),
        }
    }

    /// [`Self::for_context`] with the block halved (then the workgroup with it, down to one
    /// invocation) until z, g and e of a block at rank `r` fit the adapter's workgroup memory.
    pub fn for_rank(ctx: &GpuContext, r: usize) -> Self {
        let mut p = Self::for_context(ctx);
        let room = ctx.limits.max_compute_workgroup_storage_size as u64;
        while p.block > 1 && shared_bytes(p.block, r) > room {
            if p.block > p.workgroup_size {
                p.block /= 2;
            } else {
                p.workgroup_size /= 2;
                p.block = p.workgroup_size;
            }
        }
        p.chunk = (1024 / p.block).max(1) * p.block;
        p
    }
}

/// Workgroup memory of one block at rank `r`: z and g (padded rank) and e.
fn shared_bytes(block: u32, r: usize) -> u64 {
    block as u64 * (2 * padded_rank(r) as u64 + 1) * 4
}

/// Loop iterations of one invocation for one chunk of `chunk` samples. Every loop counts on
/// lavapipe; the rank loops (constant trip count R) are unrolled there in practice but are
/// counted anyway, to be safe.
fn loop_cost(d: u64, r: u64, net: &Network, wg: u64, block: u64, chunk: u64) -> u64 {
    let rp = padded_rank(r as usize) as u64;
    let jb = RANK_GROUP as u64;
    let groups = rp / jb;
    let layers = &net.layers;
    let last = layers.len() - 1;
    let network = match last {
        0 => r,
        1 => r + layers[0].outputs as u64 * (1 + 2 * r),
        _ => {
            let forward: u64 = layers[..last]
                .iter()
                .map(|l| l.outputs as u64 * (1 + l.inputs as u64))
                .sum();
            let backward: u64 = layers[1..last]
                .iter()
                .map(|l| 1 + l.inputs as u64 * (1 + l.outputs as u64))
                .sum();
            forward + layers[last].inputs as u64 + backward + rp * (1 + layers[0].outputs as u64)
        }
    };
    let per_sample = 1 + rp + groups * (1 + 2 * jb + d * (1 + jb)) + network;
    let rows = (d + r + 1).div_ceil(wg);
    let per_block =
        1 + block.div_ceil(wg) * per_sample + rows * groups * (1 + 2 * jb + block * (1 + jb));
    chunk.div_ceil(block) * per_block
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    workgroup_size: u32,
    block: u32,
    chunk: u32,
    rank: u32,
    deep: bool,
}

/// The fit pass and the per-dispatch reduction of its chunk partials.
pub struct FitPipelines {
    fit: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
}

/// Compiled fit-moments pipelines, one per (tunables, rank, deep or not).
pub type FitPipelineCache = PipelineCache<PipelineKey, FitPipelines>;

fn pipelines(
    ctx: &GpuContext,
    cache: &FitPipelineCache,
    key: PipelineKey,
) -> Result<Arc<FitPipelines>> {
    Ok(
        cache.get_or_build(key, || -> Result<FitPipelines, GpuError> {
            let constants = [
                ("WG", key.workgroup_size as f64),
                ("SB", key.block as f64),
                ("CHUNK", key.chunk as f64),
                ("R", key.rank as f64),
                ("DEEP", if key.deep { 1.0 } else { 0.0 }),
            ];
            let wgsl = include_str!("../../../shaders/fit_moments.wgsl");
            Ok(FitPipelines {
                fit: ctx.compute_pipeline("fit moments", wgsl, "fit_moments", &constants)?,
                reduce: ctx.compute_pipeline("fit reduce", wgsl, "reduce_chunks", &constants)?,
            })
        })?,
    )
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Info {
    rows: u32,
    dim: u32,
    depth: u32,
    m: u32,
    /// First row of this dispatch in the device batch.
    base: u32,
    /// Chunks in this dispatch (what `reduce_chunks` adds up).
    chunks: u32,
    /// Where `reduce_chunks` writes this dispatch's sums, in units of m r words.
    slot: u32,
    pad: u32,
}

/// Most bytes of per-dispatch sums kept on the device before they are read back.
const MAX_SUMS_BYTES: usize = 32 << 20;

/// Flops of one sample: z = B x and the cross sums (2 d r each), the network's forward and
/// backward passes, the gram sums.
fn sample_flops(d: usize, fit: &Network) -> f64 {
    let r = fit.input_dim as f64;
    let network: f64 = fit
        .layers
        .iter()
        .map(|l| 4.0 * (l.inputs as f64 + 1.0) * l.outputs as f64)
        .sum();
    4.0 * d as f64 * r + network + 2.0 * r * r
}

/// Sizes fixed for one call.
struct Plan {
    key: PipelineKey,
    /// Output rows per partial: d + r + 1.
    m: usize,
    batch_rows: usize,
    /// Scratch words per invocation: the sum of hidden widths for deep networks, else 0.
    scratch_words: usize,
}

fn plan(
    ctx: &GpuContext,
    d: usize,
    rows: u64,
    fit: &Network,
    kp: &FitKernelParams,
) -> Result<Plan> {
    let r = fit.input_dim;
    let wg = kp.workgroup_size;
    if wg == 0
        || kp.block == 0
        || !kp.block.is_multiple_of(wg)
        || kp.chunk == 0
        || kp.chunk > MAX_CHUNK
        || !kp.chunk.is_multiple_of(kp.block)
        || kp.max_batch_rows == 0
    {
        return Err(Error::invalid(format!(
            "fit kernel parameters out of range (block a multiple of the workgroup size, chunk \
             a multiple of block and <= {MAX_CHUNK}): {kp:?}"
        )));
    }
    ctx.check_workgroup_1d("fit kernel", wg)?;
    let lim = &ctx.limits;
    let shared = shared_bytes(kp.block, r);
    if shared > lim.max_compute_workgroup_storage_size as u64 {
        return Err(GpuError::TooLarge(format!(
            "fit kernel: a block of {} samples at rank {r} needs {shared} bytes of workgroup \
             memory; this adapter has {} (use a smaller block)",
            kp.block, lim.max_compute_workgroup_storage_size
        ))
        .into());
    }
    let mut chunk = kp.chunk;
    if let Some(budget) = kp.loop_budget {
        let cost = |c: u32| {
            loop_cost(
                d as u64,
                r as u64,
                fit,
                wg as u64,
                kp.block as u64,
                c as u64,
            )
        };
        let one_block = cost(kp.block);
        if one_block > budget {
            return Err(GpuError::TooLarge(format!(
                "fit kernel: one block of {} samples needs {one_block} loop iterations per \
                 invocation (d = {d}, r = {r}), over the software adapter's budget of {budget}; \
                 use the CPU backend",
                kp.block
            ))
            .into());
        }
        chunk = chunk.min((budget / one_block) as u32 * kp.block);
    }
    let m = d + r + 1;
    let max_binding = ctx.max_binding();
    let row_bytes = (d.max(1) * 4) as u64;
    let partial_bytes = (m * r * 4) as u64;
    let deep = fit.layers.len() > 2;
    let scratch_words = if deep {
        fit.hidden_widths().iter().sum()
    } else {
        0
    };
    // Per workgroup (= chunk) of a dispatch: its partial and its invocations' scratch.
    let group_bytes = partial_bytes.max((scratch_words * wg as usize * 4) as u64);
    let max_groups = lim.max_compute_workgroups_per_dimension as u64;
    let watchdog_rows = (ctx.max_dispatch_flops() / sample_flops(d, fit)).max(chunk as f64) as u64;
    let batch_rows = (kp.max_batch_rows as u64)
        .min(watchdog_rows)
        .min(rows.max(1))
        .min(max_binding / row_bytes)
        .min(max_groups * chunk as u64)
        .min(max_binding / group_bytes * chunk as u64);
    if batch_rows == 0 {
        return Err(GpuError::TooLarge(format!(
            "fit kernel: one sample of d = {d} ({row_bytes} bytes) or one workgroup's partial or \
             scratch ({group_bytes} bytes) does not fit this adapter's binding limit of \
             {max_binding} bytes"
        ))
        .into());
    }
    Ok(Plan {
        key: PipelineKey {
            workgroup_size: wg,
            block: kp.block,
            chunk,
            rank: r as u32,
            deep,
        },
        m,
        batch_rows: batch_rows as usize,
        scratch_words,
    })
}

/// [`FitMoments`] of `source` on the device with explicit tunables (tests force streaming and
/// short chunks with small values).
// The backend trait's arguments plus device, pipeline cache, tunables and residency.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit_moments_with(
    ctx: &GpuContext,
    cache: &FitPipelineCache,
    source: &dyn SampleSource,
    basis: &[Vec<f64>],
    fit: &Network,
    kp: &FitKernelParams,
    resident: Option<&ResidentSamples>,
    progress: &indicatif::ProgressBar,
) -> Result<FitMoments> {
    let d = source.dim();
    check_fit_request(source, basis, fit)?;
    fit.validate()?;
    let r = basis.len();
    let mut total = FitMoments::zeros(d, r);
    let plan = plan(ctx, d, source.len(), fit, kp)?;
    if source.is_empty() {
        return Ok(total);
    }
    let pipes = pipelines(ctx, cache, plan.key)?;
    let chunk = plan.key.chunk as usize;
    let m = plan.m;

    // Basis (zero rows up to the padded rank) and network, uploaded once.
    let mut basis_f32: Vec<f32> = basis.iter().flatten().map(|&v| v as f32).collect();
    basis_f32.resize(padded_rank(r) * d, 0.0);
    let mut params: Vec<f32> = Vec::new();
    let mut shape: Vec<u32> = Vec::new();
    for l in &fit.layers {
        let woff = params.len();
        params.extend(l.weights.iter().map(|&w| w as f32));
        let boff = params.len();
        params.extend(l.bias.iter().map(|&b| b as f32));
        shape.extend([l.inputs as u32, l.outputs as u32, woff as u32, boff as u32]);
    }
    let basis_buf = ctx.storage_buffer("fit basis", (basis_f32.len() * 4) as u64)?;
    let net_buf = ctx.storage_buffer("fit network", (params.len() * 4) as u64)?;
    let shape_buf = ctx.storage_buffer("fit shape", (shape.len() * 4) as u64)?;
    ctx.queue
        .write_buffer(&basis_buf, 0, bytemuck::cast_slice(&basis_f32));
    ctx.queue
        .write_buffer(&net_buf, 0, bytemuck::cast_slice(&params));
    ctx.queue
        .write_buffer(&shape_buf, 0, bytemuck::cast_slice(&shape));

    // Per-dispatch buffers, sized for the largest dispatch; the sums of every dispatch stay on
    // the device (slots of m r words) until the end of the pass or until the buffer is full.
    let slot_bytes = m * r * 4;
    let partial_bytes = (plan.batch_rows.div_ceil(chunk) * slot_bytes) as u64;
    let partial_buf = ctx.storage_buffer("fit partials", partial_bytes)?;
    let scratch_bytes =
        plan.batch_rows.div_ceil(chunk) * plan.key.workgroup_size as usize * plan.scratch_words * 4;
    let scratch_buf = ctx.storage_buffer("fit scratch", scratch_bytes as u64)?;
    let dispatches = (source.len() as usize).div_ceil(plan.batch_rows);
    let slots = dispatches
        .min((MAX_SUMS_BYTES / slot_bytes).max(1))
        .min((ctx.max_binding() as usize / slot_bytes).max(1));
    let sums_bytes = (slots * slot_bytes) as u64;
    let sums_buf = ctx.storage_buffer("fit sums", sums_bytes)?;
    let info_buf = ctx.uniform_buffer("fit info", std::mem::size_of::<Info>() as u64);
    let reduce_bind = ctx.bind_group(
        "fit reduce",
        &pipes.reduce,
        &[(0, &info_buf), (6, &partial_buf), (8, &sums_buf)],
    )?;

    let mut used = 0usize;
    let mut flops_pending = 0.0f64;
    let read_sums = |total: &mut FitMoments, used: usize, flops: f64| -> Result<()> {
        let bytes = (used * slot_bytes) as u64;
        let staging = ctx.staging_buffer("fit sums readback", bytes);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fit sums"),
            });
        enc.copy_buffer_to_buffer(&sums_buf, 0, &staging, 0, bytes);
        let sums: Vec<f32> = ctx.submit_and_read("fit moments", enc, &staging, bytes, flops)?;
        super::context::check_finite("fit moments", &sums)?;
        add_partials(total, &sums, m);
        Ok(())
    };
    let row_flops = sample_flops(d, fit);
    super::feed::for_each_batch(
        ctx,
        resident,
        source,
        super::feed::batch_rows(ctx, d, kp.max_batch_rows as usize, chunk),
        row_flops,
        |batch| -> Result<Option<wgpu::SubmissionIndex>> {
            let bind_group = ctx.bind_group(
                "fit moments",
                &pipes.fit,
                &[
                    (0, &info_buf),
                    (1, batch.x),
                    (2, batch.y),
                    (3, &basis_buf),
                    (4, &net_buf),
                    (5, &shape_buf),
                    (6, &partial_buf),
                    (7, &scratch_buf),
                ],
            )?;
            let mut last = None;
            for base in (0..batch.rows).step_by(plan.batch_rows) {
                if used == slots {
                    read_sums(&mut total, used, flops_pending)?;
                    used = 0;
                    flops_pending = 0.0;
                }
                let rows = plan.batch_rows.min(batch.rows - base);
                let chunks = rows.div_ceil(chunk);
                let info = Info {
                    rows: rows as u32,
                    dim: d as u32,
                    depth: fit.layers.len() as u32,
                    m: m as u32,
                    base: base as u32,
                    chunks: chunks as u32,
                    slot: used as u32,
                    pad: 0,
                };
                ctx.queue
                    .write_buffer(&info_buf, 0, bytemuck::bytes_of(&info));
                let mut enc = ctx
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("fit moments"),
                    });
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                    pass.set_pipeline(&pipes.fit);
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(chunks as u32, 1, 1);
                    pass.set_pipeline(&pipes.reduce);
                    pass.set_bind_group(0, &reduce_bind, &[]);
                    let wg = plan.key.workgroup_size as usize;
                    pass.dispatch_workgroups((m * r).div_ceil(wg) as u32, 1, 1);
                }
                last = Some(ctx.submit("fit moments", enc)?);
                total.rows += rows as u64;
                used += 1;
                flops_pending += rows as f64 * row_flops;
            }
            progress.inc(batch.rows as u64);
            Ok(last)
        },
    )?;
    if used > 0 {
        read_sums(&mut total, used, flops_pending)?;
    }
    Ok(total)
}

/// Adds per-dispatch sums (each `m = d + r + 1` rows of r: cross rows, gram rows, then the sse
/// in column 0 of the last row) into `total` in f64.
fn add_partials(total: &mut FitMoments, sums: &[f32], m: usize) {
    let (d, r) = (total.dim, total.rank);
    for part in sums.chunks_exact(m * r) {
        for (t, &v) in total.cross.iter_mut().zip(&part[..d * r]) {
            *t += v as f64;
        }
        for (t, &v) in total.gram.iter_mut().zip(&part[d * r..(d + r) * r]) {
            *t += v as f64;
        }
        total.sse += part[(d + r) * r] as f64;
    }
}
