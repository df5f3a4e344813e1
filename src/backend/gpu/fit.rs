//! Launcher of the Gauss-Newton fit-moments kernel (`shaders/fit_moments.wgsl`), the GPU
//! override of [`crate::backend::Backend::fit_moments`].
//!
//! Samples are streamed in batches (at most `max_batch_rows` rows, one storage binding of x and
//! at most one grid of workgroups); a scoped reader thread fetches the next batch while the
//! device works. Per batch one dispatch runs one workgroup per chunk of samples; each writes an
//! f32 partial of the `d + r + 1` output rows (cross, gram, sse), which the host reads back and
//! adds up in f64.
//!
//! Precision: f32 per sample (z = B x, the network pass), f32 sums over blocks of at most
//! `block` samples, f32 sums of at most `chunk / block` block sums, f64 across chunks.
//!
//! Limits: rank r <= 8 (the request check every backend makes); networks of any depth and
//! width. With two or more hidden layers every
//! invocation keeps its sample's hidden activations in a device scratch buffer (sum of hidden
//! widths f32 words per invocation; one hidden layer is streamed and needs none). Buffers are
//! checked against the adapter's binding limits and the block against its workgroup storage
//! ([`GpuError::TooLarge`]); a large scratch buffer shortens the batch instead. On software
//! adapters (lavapipe stops an invocation silently after 65,535 loop iterations) the chunk is
//! shortened until one invocation's loops fit `loop_budget`; a single block that does not fit
//! is [`GpuError::TooLarge`] (from about d = 1,300 at r = 8 with 256 hidden units).

use super::context::PipelineCache;
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
    /// Samples per block (a multiple of `workgroup_size`): g and e of a block sit in workgroup
    /// memory, `block * (r + 1)` f32 words.
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
        let workgroup_size = 64
            .min(ctx.limits.max_compute_invocations_per_workgroup)
            .min(ctx.limits.max_compute_workgroup_size_x);
        let block = if ctx.is_software() { 1 } else { 2 } * workgroup_size;
        FitKernelParams {
            workgroup_size,
            block,
            chunk: (1024 / block).max(1) * block,
            max_batch_rows: 1 << 20,
            loop_budget: ctx.is_software().then_some(30_000),
        }
    }
}

/// Loop iterations of one invocation for one chunk of `chunk` samples. Every loop counts on
/// lavapipe; the rank loops (constant trip count R) are unrolled there in practice but are
/// counted anyway, to be safe.
fn loop_cost(d: u64, r: u64, net: &Network, wg: u64, block: u64, chunk: u64) -> u64 {
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
            forward + layers[last].inputs as u64 + backward + r * (1 + layers[0].outputs as u64)
        }
    };
    let per_sample = 1 + 2 * r + d * (1 + r) + network;
    let rows = (d + r + 1).div_ceil(wg);
    let per_block = 1 + block.div_ceil(wg) * per_sample + rows * (2 * r + block * (1 + r));
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

/// Compiled fit-moments pipelines, one per (tunables, rank, deep or not).
pub type FitPipelineCache = PipelineCache<PipelineKey, wgpu::ComputePipeline>;

fn pipeline(
    ctx: &GpuContext,
    cache: &FitPipelineCache,
    key: PipelineKey,
) -> Result<Arc<wgpu::ComputePipeline>> {
    Ok(cache.get_or_build(key, || {
        let constants = [
            ("WG", key.workgroup_size as f64),
            ("SB", key.block as f64),
            ("CHUNK", key.chunk as f64),
            ("R", key.rank as f64),
            ("DEEP", if key.deep { 1.0 } else { 0.0 }),
        ];
        let wgsl = include_str!("../../../shaders/fit_moments.wgsl");
        ctx.compute_pipeline("fit moments", wgsl, "fit_moments", &constants)
    })?)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Info {
    rows: u32,
    dim: u32,
    depth: u32,
    m: u32,
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
    let lim = &ctx.limits;
    if wg > lim.max_compute_invocations_per_workgroup || wg > lim.max_compute_workgroup_size_x {
        return Err(GpuError::TooLarge(format!(
            "fit kernel: workgroups of {wg} invocations; this adapter allows {}",
            lim.max_compute_invocations_per_workgroup
                .min(lim.max_compute_workgroup_size_x)
        ))
        .into());
    }
    let shared = kp.block as u64 * (r as u64 + 1) * 4;
    if shared > lim.max_compute_workgroup_storage_size as u64 {
        return Err(GpuError::TooLarge(format!(
            "fit kernel: a block of {} samples at rank {r} needs {shared} bytes of workgroup \
             memory; this adapter has {}",
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
    let batch_rows = (kp.max_batch_rows as u64)
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
pub(crate) fn fit_moments_with(
    ctx: &GpuContext,
    cache: &FitPipelineCache,
    source: &dyn SampleSource,
    basis: &[Vec<f64>],
    fit: &Network,
    kp: &FitKernelParams,
    progress: &indicatif::ProgressBar,
) -> Result<FitMoments> {
    let d = source.dim();
    check_fit_request(source, basis, fit)?;
    // The kernel holds z and the gradient in arrays of MAXR = 8 (shaders/fit_moments.wgsl).
    if basis.len() > 8 {
        return Err(Error::invalid(format!(
            "fit moments on the GPU: need 1..=8 basis rows (the kernel's MAXR), got {}",
            basis.len()
        )));
    }
    fit.validate()?;
    let r = basis.len();
    let mut total = FitMoments::zeros(d, r);
    let plan = plan(ctx, d, source.len(), fit, kp)?;
    if source.is_empty() {
        return Ok(total);
    }
    let pipeline = pipeline(ctx, cache, plan.key)?;
    let chunk = plan.key.chunk as usize;
    let m = plan.m;

    // Basis and network, uploaded once.
    let basis_f32: Vec<f32> = basis.iter().flatten().map(|&v| v as f32).collect();
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

    // Per-batch buffers, sized for the largest batch.
    let x_buf = ctx.storage_buffer("fit x", (plan.batch_rows * d * 4) as u64)?;
    let y_buf = ctx.storage_buffer("fit y", (plan.batch_rows * 4) as u64)?;
    let partial_bytes = (plan.batch_rows.div_ceil(chunk) * m * r * 4) as u64;
    let partial_buf = ctx.storage_buffer("fit partials", partial_bytes)?;
    let staging = ctx.staging_buffer("fit readback", partial_bytes);
    let scratch_bytes =
        plan.batch_rows.div_ceil(chunk) * plan.key.workgroup_size as usize * plan.scratch_words * 4;
    let scratch_buf = ctx.storage_buffer("fit scratch", scratch_bytes as u64)?;
    let info_buf = ctx.uniform_buffer("fit info", std::mem::size_of::<Info>() as u64);
    let bind_group = ctx.bind_group(
        "fit moments",
        &pipeline,
        &[
            (0, &info_buf),
            (1, &x_buf),
            (2, &y_buf),
            (3, &basis_buf),
            (4, &net_buf),
            (5, &shape_buf),
            (6, &partial_buf),
            (7, &scratch_buf),
        ],
    )?;

    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let batch_rows = plan.batch_rows;
        scope.spawn(move || super::moments::read_ahead(source, batch_rows, tx));
        let mut start = 0u64;
        while start < source.len() {
            let Ok(read) = rx.recv() else { break };
            let (xs, ys, rows) = read?;
            if rows > plan.batch_rows || xs.len() != rows * d || ys.len() != rows {
                return Err(Error::invalid(format!(
                    "sample source returned {} x values and {} labels for {rows} rows of d = {d}",
                    xs.len(),
                    ys.len()
                )));
            }
            let info = Info {
                rows: rows as u32,
                dim: d as u32,
                depth: fit.layers.len() as u32,
                m: m as u32,
            };
            ctx.queue
                .write_buffer(&info_buf, 0, bytemuck::bytes_of(&info));
            ctx.queue.write_buffer(&x_buf, 0, bytemuck::cast_slice(&xs));
            ctx.queue.write_buffer(&y_buf, 0, bytemuck::cast_slice(&ys));
            let chunks = rows.div_ceil(chunk);
            let mut enc =
                ctx.encode_dispatch("fit moments", &pipeline, &bind_group, [chunks as u32, 1, 1]);
            let bytes = (chunks * m * r * 4) as u64;
            enc.copy_buffer_to_buffer(&partial_buf, 0, &staging, 0, bytes);
            let sums: Vec<f32> = ctx.submit_and_read("fit moments", enc, &staging, bytes)?;
            add_partials(&mut total, &sums, m);
            total.rows += rows as u64;
            progress.inc(rows as u64);
            start += rows as u64;
        }
        Ok(())
    })?;
    Ok(total)
}

/// Adds chunk partials (each `m = d + r + 1` rows of r: cross rows, gram rows, then the sse
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
