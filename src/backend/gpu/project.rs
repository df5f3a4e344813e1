//! Launcher of the projection kernel z = B x (`shaders/project.wgsl`): the GPU override of
//! [`crate::backend::Backend::project`], and the first step of the trainer, feature and scoring
//! passes, which project device-resident rows into device planes with [`Projector`].
//!
//! One workgroup per tile of `rows_per_tile` rows and `rank_block` basis rows, one output per
//! invocation summed in a register over slabs of `slab` columns staged in workgroup memory.
//! Precision: f32 products and sums over d terms (the CPU twin sums in f64); the tests hold
//! the difference under 1e-5 of the sum of |B_ji x_i|.
//!
//! Limits: any r and d that fit one storage binding per row block; on software adapters one
//! invocation runs about d + 16 d / slab loop iterations, so d up to about 25,000 fits the
//! 65,535-iteration budget (beyond, [`GpuError::TooLarge`]).

use super::context::PipelineCache;
use super::{GpuContext, GpuError};
use crate::error::{Error, Result};
use std::sync::Arc;

/// Tunables of the projection kernel; `workgroup_size`, `rows_per_tile`, `rank_block` and
/// `slab` become the WGSL `override` constants `WG`, `TR`, `RB` and `KT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjectKernelParams {
    /// Invocations per workgroup (at least `rows_per_tile * rank_block`).
    pub workgroup_size: u32,
    /// Rows of x one workgroup projects.
    pub rows_per_tile: u32,
    /// Basis rows one workgroup projects on (more are spread over the dispatch's z dimension).
    pub rank_block: u32,
    /// Columns of x staged in workgroup memory at a time (`rows_per_tile * (slab + 1)` words).
    pub slab: u32,
    /// Most rows per dispatch of the projection pass (x is uploaded in pieces of this many).
    pub rows_per_dispatch: usize,
    /// Loop iterations one invocation may run; `Some` on software adapters (lavapipe truncates
    /// beyond 65,535 silently), `None` on hardware.
    pub loop_budget: Option<u64>,
}

/// Workgroup words the staged slab may take by default (8 KiB: half the portable minimum).
const SLAB_WORDS: u32 = 2048;

impl ProjectKernelParams {
    /// Defaults for rank r and dimension d: 128 invocations (fewer when the adapter allows
    /// fewer), all r basis rows in one tile when r <= 128 and as many rows as leave no
    /// invocation idle beyond the remainder, slabs of up to 256 columns in 8 KiB of workgroup
    /// memory, 2^16 rows per dispatch, and a 30,000-iteration loop budget on software adapters.
    pub fn for_shape(ctx: &GpuContext, r: usize, d: usize) -> Self {
        let workgroup_size = 128.min(ctx.max_workgroup_1d()).max(1);
        let rank_block = (r.max(1) as u32).min(workgroup_size);
        let rows_per_tile = (workgroup_size / rank_block).max(1);
        let room = (SLAB_WORDS / rows_per_tile).saturating_sub(1).max(4);
        let want = (d.max(1) as u32).next_multiple_of(4);
        let slab = (room / 4 * 4).clamp(4, 256).min(want);
        ProjectKernelParams {
            workgroup_size,
            rows_per_tile,
            rank_block,
            slab,
            rows_per_dispatch: 1 << 16,
            loop_budget: ctx.is_software().then_some(30_000),
        }
    }

    /// Loop iterations one invocation runs for dimension `d`.
    pub fn loop_cost(&self, d: usize) -> u64 {
        let slabs = (d.max(1) as u64).div_ceil(self.slab.max(1) as u64);
        let loads = (self.rows_per_tile as u64 * self.slab as u64)
            .div_ceil(self.workgroup_size.max(1) as u64);
        slabs * (loads + self.slab as u64 + 1) + 1
    }

    fn check(&self, ctx: &GpuContext, d: usize) -> Result<()> {
        let (wg, tr, rb, kt) = (
            self.workgroup_size,
            self.rows_per_tile,
            self.rank_block,
            self.slab,
        );
        if wg == 0 || tr == 0 || rb == 0 || kt == 0 || self.rows_per_dispatch == 0 {
            return Err(Error::invalid(
                "projection kernel: every tunable must be positive",
            ));
        }
        if tr as u64 * rb as u64 > wg as u64 {
            return Err(Error::invalid(format!(
                "projection kernel: rows_per_tile x rank_block = {} exceeds the workgroup size {wg}",
                tr as u64 * rb as u64
            )));
        }
        ctx.check_workgroup_1d("projection kernel", wg)?;
        let words = tr as u64 * (kt as u64 + 1);
        let room = ctx.limits.max_compute_workgroup_storage_size as u64 / 4;
        if words > room {
            return Err(GpuError::TooLarge(format!(
                "projection slab of {words} words; this adapter's workgroup memory holds {room}"
            ))
            .into());
        }
        if let Some(budget) = self.loop_budget {
            let cost = self.loop_cost(d);
            if cost > budget {
                return Err(GpuError::TooLarge(format!(
                    "projecting rows of d = {d} needs {cost} loop iterations per invocation, over \
                     the software adapter's budget of {budget}; use the CPU backend"
                ))
                .into());
            }
        }
        Ok(())
    }
}

/// What a compiled projection pipeline depends on: (WG, TR, RB, KT).
pub type ProjectPipelineKey = (u32, u32, u32, u32);

/// Projection pipelines by configuration, built once per backend.
pub type ProjectPipelineCache = PipelineCache<ProjectPipelineKey, wgpu::ComputePipeline>;

/// Where one dispatch reads and writes (`Info` in WGSL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ProjectInfo {
    /// Rows to project.
    pub rows: u32,
    /// Columns of x and of B.
    pub d: u32,
    /// Rows of B.
    pub r: u32,
    /// First row of x in its buffer.
    pub x_row0: u32,
    /// z of (row, j) goes to z_off + row z_rs + j z_cs.
    pub z_off: u32,
    pub z_rs: u32,
    pub z_cs: u32,
    /// Offset of B in its buffer (words).
    pub basis_off: u32,
}

/// A compiled projection kernel with its own parameter block, for launchers that project rows
/// already on the device. Its `Info` is one uniform buffer: write it, then submit, before
/// writing it again.
pub(crate) struct Projector {
    pipeline: Arc<wgpu::ComputePipeline>,
    kp: ProjectKernelParams,
    info_buf: wgpu::Buffer,
}

impl Projector {
    /// The kernel for rows of dimension `d` with tunables `kp`, checked against the device.
    pub(crate) fn new(
        ctx: &GpuContext,
        cache: &ProjectPipelineCache,
        kp: &ProjectKernelParams,
        d: usize,
    ) -> Result<Projector> {
        kp.check(ctx, d)?;
        let key = (kp.workgroup_size, kp.rows_per_tile, kp.rank_block, kp.slab);
        let pipeline = cache.get_or_build(key, || {
            let constants = [
                ("WG", kp.workgroup_size as f64),
                ("TR", kp.rows_per_tile as f64),
                ("RB", kp.rank_block as f64),
                ("KT", kp.slab as f64),
            ];
            let wgsl = include_str!("../../../shaders/project.wgsl");
            ctx.compute_pipeline("project", wgsl, "project", &constants)
        })?;
        Ok(Projector {
            pipeline,
            kp: *kp,
            info_buf: ctx.uniform_buffer("project info", std::mem::size_of::<ProjectInfo>() as u64),
        })
    }

    /// Binds x (rows x d, row-major), B (r x d at `basis_off`) and the output z.
    pub(crate) fn bind(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        basis: &wgpu::Buffer,
        z: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup> {
        self.bind_with(ctx, self.info_buf.as_entire_binding(), x, basis, z)
    }

    /// [`Projector::bind`] with the parameter block read from `info` (a slot of a caller's
    /// buffer holding many) instead of this projector's own.
    pub(crate) fn bind_with(
        &self,
        ctx: &GpuContext,
        info: wgpu::BindingResource,
        x: &wgpu::Buffer,
        basis: &wgpu::Buffer,
        z: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup> {
        Ok(ctx.bind_group_with(
            "project bind group",
            &self.pipeline,
            vec![
                (0, info),
                (1, x.as_entire_binding()),
                (2, basis.as_entire_binding()),
                (3, z.as_entire_binding()),
            ],
        )?)
    }

    /// Writes the parameter block of the next submission.
    pub(crate) fn write_info(&self, ctx: &GpuContext, info: &ProjectInfo) {
        ctx.queue
            .write_buffer(&self.info_buf, 0, bytemuck::bytes_of(info));
    }

    /// Records the dispatch for `info` (as written with [`Projector::write_info`]).
    pub(crate) fn dispatch(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        bind: &wgpu::BindGroup,
        info: &ProjectInfo,
    ) {
        if info.rows == 0 || info.r == 0 {
            return;
        }
        let tiles = (info.rows as usize).div_ceil(self.kp.rows_per_tile as usize);
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
        let gx = tiles.min(max_groups);
        let gy = tiles.div_ceil(gx);
        let gz = (info.r as usize).div_ceil(self.kp.rank_block as usize);
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind, &[]);
        pass.dispatch_workgroups(gx as u32, gy as u32, gz as u32);
    }

    /// Most rows one dispatch may take: the workgroup grid, and the work limit of one dispatch
    /// (2 r d flops per row).
    pub(crate) fn max_rows(&self, ctx: &GpuContext, r: usize, d: usize) -> usize {
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
        let grid = max_groups
            .saturating_mul(max_groups)
            .saturating_mul(self.kp.rows_per_tile as usize);
        let flops = 2.0 * r.max(1) as f64 * d.max(1) as f64;
        let watchdog = (ctx.max_dispatch_flops() / flops).max(1.0) as usize;
        grid.min(watchdog).min(u32::MAX as usize).max(1)
    }
}

/// z = B x on the device for the `rows` rows of `x` (rows x d) and the rows of `basis` (r x d,
/// row-major): rows x r values, row-major. x is uploaded in pieces of at most
/// `kp.rows_per_dispatch` rows that fit one storage binding.
pub(crate) fn project_with(
    ctx: &GpuContext,
    cache: &ProjectPipelineCache,
    basis: &[f64],
    x: &[f32],
    rows: usize,
    kp: &ProjectKernelParams,
) -> Result<Vec<f32>> {
    crate::backend::check_projection(basis, x, rows)?;
    if rows == 0 {
        return Ok(Vec::new());
    }
    let d = x.len() / rows;
    let r = basis.len() / d;
    let projector = Projector::new(ctx, cache, kp, d)?;
    let row_bytes = (d * 4) as u64;
    let binding_rows = (ctx.max_binding() / row_bytes) as usize;
    let z_rows = (ctx.max_binding() / (r as u64 * 4)) as usize;
    let piece = rows
        .min(kp.rows_per_dispatch)
        .min(binding_rows)
        .min(z_rows)
        .min(projector.max_rows(ctx, r, d));
    if piece == 0 {
        return Err(GpuError::TooLarge(format!(
            "one row of d = {d} ({row_bytes} bytes) does not fit this adapter's binding limit of {} bytes",
            ctx.max_binding()
        ))
        .into());
    }
    let basis_f32: Vec<f32> = basis.iter().map(|&v| v as f32).collect();
    let basis_buf = ctx.storage_buffer("project basis", (basis_f32.len() * 4) as u64)?;
    ctx.queue
        .write_buffer(&basis_buf, 0, bytemuck::cast_slice(&basis_f32));
    let x_buf = ctx.storage_buffer("project x", piece as u64 * row_bytes)?;
    let z_bytes = (piece * r * 4) as u64;
    let z_buf = ctx.storage_buffer("project z", z_bytes)?;
    let staging = ctx.staging_buffer("project readback", z_bytes);
    let bind = projector.bind(ctx, &x_buf, &basis_buf, &z_buf)?;
    let mut out = Vec::with_capacity(rows * r);
    for r0 in (0..rows).step_by(piece) {
        let n = piece.min(rows - r0);
        ctx.queue
            .write_buffer(&x_buf, 0, bytemuck::cast_slice(&x[r0 * d..(r0 + n) * d]));
        let info = ProjectInfo {
            rows: n as u32,
            d: d as u32,
            r: r as u32,
            x_row0: 0,
            z_off: 0,
            z_rs: r as u32,
            z_cs: 1,
            basis_off: 0,
        };
        projector.write_info(ctx, &info);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("project"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            projector.dispatch(ctx, &mut pass, &bind, &info);
        }
        let bytes = (n * r * 4) as u64;
        enc.copy_buffer_to_buffer(&z_buf, 0, &staging, 0, bytes);
        let flops = 2.0 * (n * r * d) as f64;
        out.extend(ctx.submit_and_read::<f32>("project", enc, &staging, bytes, flops)?);
    }
    Ok(out)
}

impl super::GpuBackend {
    /// [`crate::backend::Backend::project`] with explicit kernel parameters (tests, tuning).
    pub fn project_with(
        &self,
        basis: &[f64],
        x: &[f32],
        rows: usize,
        params: &ProjectKernelParams,
    ) -> Result<Vec<f32>> {
        project_with(&self.ctx, &self.project_pipelines, basis, x, rows, params)
    }
}
