//! Launcher of the sphere-net normal-equations kernel (`shaders/features.wgsl`), the GPU
//! override of [`crate::backend::Backend::feature_normal_equations`].
//!
//! Samples come through the batch feeder (`feed.rs`: a resident copy, or uploads overlapped
//! with compute). Per dispatch (at most `max_chunks` chunks of `chunk` rows) one submission
//! projects the rows (z = B x into a row-major plane, `project.rs`), runs `gram` (f32 partials
//! of a a^T for a = (phi(z), y) per chunk, the features computed on the fly) and `reduce` (the
//! chunks of the dispatch added into one slot of a sums buffer that stays on the device). The
//! host reads the slots back at the end of the pass (or when 32 MiB of them are full) and adds
//! them in f64.
//!
//! Precision: z and the features in f32; each entry is an f32 sum over at most `chunk` rows
//! (4,096 by default: about 1e-7 relative on random data), then an
//! f32 sum of at most `max_chunks` chunk sums, then f64 across dispatches. The tests hold
//! every entry within 1e-5 of sqrt(G_ii G_jj) of the f64 twin.
//!
//! Limits: the na x na partial of one chunk (na = features + 1) must fit one storage binding
//! (na up to about 5,000 at 128 MiB); on software adapters the chunk is shortened until one
//! invocation's loops (about chunk (2 r + 20) / 16) fit the loop budget.

use super::context::PipelineCache;
use super::feed::{batch_rows, for_each_batch, ResidentSamples};
use super::project::{ProjectInfo, ProjectKernelParams, ProjectPipelineCache, Projector};
use super::{GpuContext, GpuError};
use crate::backend::trainer::{NormalEquations, SphereFeatures};
use crate::data::SampleSource;
use crate::error::{Error, Result};
use std::sync::Arc;

/// Bytes of per-dispatch sums kept on the device before they are read back.
const MAX_SUMS_BYTES: u64 = 32 << 20;

/// Tunables of the normal-equations kernel; `tile` and `chunk` become the WGSL `override`
/// constants `TILE` and `CHUNK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureKernelParams {
    /// Output tile side (tile x tile invocations per workgroup).
    pub tile: u32,
    /// Rows per f32 partial (a multiple of `tile`).
    pub chunk: u32,
    /// Chunks per dispatch (their partials are added on the device in f32).
    pub max_chunks: u32,
    /// Loop iterations one invocation may run; `Some` on software adapters (lavapipe truncates
    /// beyond 65,535 silently), `None` on hardware.
    pub loop_budget: Option<u64>,
}

impl FeatureKernelParams {
    /// Defaults: 16 x 16 tiles, chunks of 4,096 rows, 16 chunks per dispatch, and on software
    /// adapters a 30,000-iteration loop budget that shortens the chunk for a large rank r.
    pub fn for_rank(ctx: &GpuContext, r: usize) -> Self {
        let mut p = FeatureKernelParams {
            tile: 16,
            chunk: 4096,
            max_chunks: 16,
            loop_budget: ctx.is_software().then_some(30_000),
        };
        while p.chunk > p.tile && p.loop_budget.is_some_and(|b| p.loop_cost(r) > b) {
            p.chunk = (p.chunk / 2).max(p.tile);
        }
        p
    }

    /// Loop iterations of one `gram` invocation at rank r.
    pub fn loop_cost(&self, r: usize) -> u64 {
        let slabs = (self.chunk as u64).div_ceil(self.tile.max(1) as u64);
        slabs * (2 * r as u64 + self.tile as u64 + 2) + 1
    }

    fn check(&self, ctx: &GpuContext, r: usize) -> Result<()> {
        let (t, c) = (self.tile, self.chunk);
        if t == 0 || c == 0 || self.max_chunks == 0 || c % t != 0 {
            return Err(Error::invalid(
                "normal-equations kernel: positive tunables with the chunk a multiple of the tile",
            ));
        }
        let most = ctx.limits.max_compute_invocations_per_workgroup;
        if t * t > most
            || t > ctx.limits.max_compute_workgroup_size_x
            || t > ctx.limits.max_compute_workgroup_size_y
        {
            return Err(GpuError::TooLarge(format!(
                "normal-equations tile of {t} x {t} invocations; this adapter allows {most}"
            ))
            .into());
        }
        if let Some(budget) = self.loop_budget {
            let cost = self.loop_cost(r);
            if cost > budget {
                return Err(GpuError::TooLarge(format!(
                    "the normal equations at rank {r} need {cost} loop iterations per \
                     invocation, over the software adapter's budget of {budget}; use the CPU \
                     backend"
                ))
                .into());
            }
        }
        Ok(())
    }
}

/// The two entry points of `features.wgsl` for one configuration.
pub struct FeaturePipelines {
    gram: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
}

/// Pipelines by (tile, chunk), built once per backend.
pub type FeaturePipelineCache = PipelineCache<(u32, u32), FeaturePipelines>;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Info {
    rows: u32,
    r: u32,
    m: u32,
    nt: u32,
    na: u32,
    z_rs: u32,
    y_off: u32,
    chunks: u32,
    slot: u32,
    pad: [u32; 3],
}

/// Checks the features against the source (the CPU twin's checks, same messages).
fn check_features(features: &SphereFeatures, d: usize) -> Result<()> {
    if features.rank == 0
        || features.basis.len() != features.rank * d
        || !features.directions.len().is_multiple_of(features.rank)
    {
        return Err(Error::invalid(format!(
            "sphere-net normal equations: a basis of {} values and directions of {} values for r = {} and d = {d}",
            features.basis.len(),
            features.directions.len(),
            features.rank
        )));
    }
    Ok(())
}

fn pipelines(
    ctx: &GpuContext,
    cache: &FeaturePipelineCache,
    kp: &FeatureKernelParams,
) -> Result<Arc<FeaturePipelines>> {
    Ok(cache.get_or_build(
        (kp.tile, kp.chunk),
        || -> std::result::Result<_, GpuError> {
            let constants = [("TILE", kp.tile as f64), ("CHUNK", kp.chunk as f64)];
            let wgsl = include_str!("../../../shaders/features.wgsl");
            Ok(FeaturePipelines {
                gram: ctx.compute_pipeline("normal equations", wgsl, "gram", &constants)?,
                reduce: ctx.compute_pipeline("normal equations", wgsl, "reduce", &constants)?,
            })
        },
    )?)
}

/// The sizes of one pass: one chunk's partial must fit a binding; dispatches of at most
/// `chunks` chunks (`dispatch_rows` rows) within the binding limit, the grid, the projection's
/// limit and the watchdog.
struct FeaturePlan {
    /// Bytes of one (f + 1)^2 partial.
    slot_bytes: u64,
    chunk: usize,
    chunks: usize,
    row_flops: f64,
    dispatch_rows: usize,
    /// Tiles per side of the (f + 1)^2 sums.
    tiles: usize,
}

impl FeaturePlan {
    fn new(
        ctx: &GpuContext,
        kp: &FeatureKernelParams,
        projector: &Projector,
        features: &SphereFeatures,
        d: usize,
    ) -> Result<FeaturePlan> {
        let (r, f) = (features.rank, features.len());
        let m = features.directions.len() / r;
        let nt = features.thresholds.len();
        let na = f + 1;
        let slot_bytes = (na * na * 4) as u64;
        let max_binding = ctx.max_binding();
        if slot_bytes > max_binding {
            return Err(GpuError::TooLarge(format!(
                "the normal equations of {f} features need {slot_bytes}-byte partials; this \
                 adapter allows {max_binding} per binding"
            ))
            .into());
        }
        let chunk = kp.chunk as usize;
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
        let chunks = (kp.max_chunks as u64)
            .min(max_binding / slot_bytes)
            .min(max_groups as u64)
            .max(1) as usize;
        let row_flops = 2.0 * (r * d) as f64 + (na * na) as f64 + 2.0 * (m * nt * r) as f64;
        let watchdog = (ctx.max_dispatch_flops() / row_flops).max(chunk as f64) as usize / chunk;
        let chunks = chunks.min(watchdog.max(1));
        let dispatch_rows = (chunks * chunk)
            .min((max_binding / (r as u64 * 4)) as usize / chunk * chunk)
            .min(projector.max_rows(ctx, r, d) / chunk * chunk)
            .max(chunk);
        let tiles = na.div_ceil(kp.tile as usize);
        if tiles > max_groups {
            return Err(GpuError::TooLarge(format!(
                "{f} features need {tiles} tiles per side; this adapter allows {max_groups} workgroups per dimension"
            ))
            .into());
        }
        Ok(FeaturePlan {
            slot_bytes,
            chunk,
            chunks,
            row_flops,
            dispatch_rows,
            tiles,
        })
    }
}

/// The basis, and the directions followed by the thresholds, in f32 on the device.
fn upload_features(
    ctx: &GpuContext,
    features: &SphereFeatures,
) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
    let basis: Vec<f32> = features.basis.iter().map(|&v| v as f32).collect();
    let basis_buf = ctx.storage_buffer("features basis", (basis.len() * 4) as u64)?;
    ctx.queue
        .write_buffer(&basis_buf, 0, bytemuck::cast_slice(&basis));
    let feat: Vec<f32> = features
        .directions
        .iter()
        .chain(&features.thresholds)
        .map(|&v| v as f32)
        .collect();
    let feat_buf = ctx.storage_buffer("features directions", (feat.len() * 4) as u64)?;
    ctx.queue
        .write_buffer(&feat_buf, 0, bytemuck::cast_slice(&feat));
    Ok((basis_buf, feat_buf))
}

/// Adds partial sums ((f + 1) x (f + 1) slots, row-major: the gram's upper triangle, then
/// each row's last column the right-hand side) into the f64 totals.
fn add_slots(total: &mut NormalEquations, sums: &[f32]) {
    let f = total.features;
    let na = f + 1;
    for slot in sums.chunks_exact(na * na) {
        let mut at = 0;
        for i in 0..f {
            for j in i..f {
                total.gram[at] += slot[i * na + j] as f64;
                at += 1;
            }
            total.rhs[i] += slot[i * na + f] as f64;
        }
    }
}

/// [`crate::backend::Backend::feature_normal_equations`] on the device with explicit tunables.
#[allow(clippy::too_many_arguments)]
pub(crate) fn normal_equations_with(
    ctx: &GpuContext,
    cache: &FeaturePipelineCache,
    project_cache: &ProjectPipelineCache,
    source: &dyn SampleSource,
    features: &SphereFeatures,
    kp: &FeatureKernelParams,
    resident: Option<&ResidentSamples>,
    progress: &indicatif::ProgressBar,
) -> Result<NormalEquations> {
    let d = source.dim();
    check_features(features, d)?;
    let (r, f) = (features.rank, features.len());
    let m = features.directions.len() / r;
    let nt = features.thresholds.len();
    let na = f + 1;
    let mut total = NormalEquations::zeros(f);
    if source.is_empty() {
        return Ok(total);
    }
    kp.check(ctx, r)?;
    let pkp = ProjectKernelParams::for_shape(ctx, r, d);
    let projector = Projector::new(ctx, project_cache, &pkp, d)?;
    let pipes = pipelines(ctx, cache, kp)?;

    let plan = FeaturePlan::new(ctx, kp, &projector, features, d)?;
    let FeaturePlan {
        slot_bytes,
        chunk,
        chunks,
        row_flops,
        dispatch_rows,
        tiles,
    } = plan;
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;

    let (basis_buf, feat_buf) = upload_features(ctx, features)?;
    let z_buf = ctx.storage_buffer("features z", (dispatch_rows * r * 4) as u64)?;
    let partial_buf = ctx.storage_buffer("features partials", chunks as u64 * slot_bytes)?;
    let dispatches = (source.len() as usize).div_ceil(dispatch_rows);
    let slots = (dispatches as u64)
        .min((MAX_SUMS_BYTES / slot_bytes).max(1))
        .min(ctx.max_binding() / slot_bytes)
        .max(1) as usize;
    let sums_buf = ctx.storage_buffer("features sums", slots as u64 * slot_bytes)?;
    let info_buf = ctx.uniform_buffer("features info", std::mem::size_of::<Info>() as u64);
    let reduce_bind = ctx.bind_group(
        "features reduce",
        &pipes.reduce,
        &[(0, &info_buf), (4, &partial_buf), (5, &sums_buf)],
    )?;

    let mut used = 0usize;
    let mut pending = 0.0f64;
    let read_sums = |total: &mut NormalEquations, used: usize, flops: f64| -> Result<()> {
        let bytes = used as u64 * slot_bytes;
        let staging = ctx.staging_buffer("features readback", bytes);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("features sums"),
            });
        enc.copy_buffer_to_buffer(&sums_buf, 0, &staging, 0, bytes);
        let sums: Vec<f32> =
            ctx.submit_and_read("normal equations", enc, &staging, bytes, flops)?;
        add_slots(total, &sums);
        Ok(())
    };
    for_each_batch(
        ctx,
        resident,
        source,
        batch_rows(ctx, d, usize::MAX, dispatch_rows),
        row_flops,
        |batch| -> Result<Option<wgpu::SubmissionIndex>> {
            let project_bind = projector.bind(ctx, batch.x, &basis_buf, &z_buf)?;
            let gram_bind = ctx.bind_group(
                "features gram",
                &pipes.gram,
                &[
                    (0, &info_buf),
                    (1, &z_buf),
                    (2, batch.y),
                    (3, &feat_buf),
                    (4, &partial_buf),
                ],
            )?;
            let mut last = None;
            for p0 in (0..batch.rows).step_by(dispatch_rows) {
                if used == slots {
                    read_sums(&mut total, used, pending)?;
                    used = 0;
                    pending = 0.0;
                }
                let n = dispatch_rows.min(batch.rows - p0);
                let used_chunks = n.div_ceil(chunk);
                let pinfo = ProjectInfo {
                    rows: n as u32,
                    d: d as u32,
                    r: r as u32,
                    x_row0: p0 as u32,
                    z_off: 0,
                    z_rs: r as u32,
                    z_cs: 1,
                    basis_off: 0,
                };
                projector.write_info(ctx, &pinfo);
                let info = Info {
                    rows: n as u32,
                    r: r as u32,
                    m: m as u32,
                    nt: nt as u32,
                    na: na as u32,
                    z_rs: r as u32,
                    y_off: p0 as u32,
                    chunks: used_chunks as u32,
                    slot: used as u32,
                    pad: [0; 3],
                };
                ctx.queue
                    .write_buffer(&info_buf, 0, bytemuck::bytes_of(&info));
                let mut enc = ctx
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("normal equations"),
                    });
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                    projector.dispatch(ctx, &mut pass, &project_bind, &pinfo);
                    pass.set_pipeline(&pipes.gram);
                    pass.set_bind_group(0, &gram_bind, &[]);
                    pass.dispatch_workgroups(tiles as u32, tiles as u32, used_chunks as u32);
                    let groups = (na * na).div_ceil((kp.tile * kp.tile) as usize);
                    let gx = groups.min(max_groups);
                    pass.set_pipeline(&pipes.reduce);
                    pass.set_bind_group(0, &reduce_bind, &[]);
                    pass.dispatch_workgroups(gx as u32, groups.div_ceil(gx) as u32, 1);
                }
                last = Some(ctx.submit("normal equations", enc)?);
                total.rows += n as u64;
                used += 1;
                pending += n as f64 * row_flops;
            }
            progress.inc(batch.rows as u64);
            Ok(last)
        },
    )?;
    if used > 0 {
        read_sums(&mut total, used, pending)?;
    }
    Ok(total)
}

impl super::GpuBackend {
    /// [`crate::backend::Backend::feature_normal_equations`] with explicit kernel parameters
    /// (tests, tuning).
    pub fn feature_normal_equations_with(
        &self,
        source: &dyn SampleSource,
        features: &SphereFeatures,
        params: &FeatureKernelParams,
        progress: &indicatif::ProgressBar,
    ) -> Result<NormalEquations> {
        normal_equations_with(
            &self.ctx,
            &self.feature_pipelines,
            &self.project_pipelines,
            source,
            features,
            params,
            Some(&self.resident),
            progress,
        )
    }
}
