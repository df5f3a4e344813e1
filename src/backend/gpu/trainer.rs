//! Launcher of the small-network kernels (`shaders/trainer.wgsl`): the GPU overrides of
//! [`crate::backend::Backend::train_window`] and [`crate::backend::Backend::sse`].
//!
//! **Train window.** The window's x and y are uploaded once (in segments of whole minibatches
//! that fit one storage binding). With B fixed, z = B x is projected once per segment into
//! unit-major planes (`project.rs`); with B trained it is projected per minibatch from the
//! current B. Each minibatch runs the projection (when B is trained), `forward_backward`
//! (activations and deltas in scratch planes) and `gradient` (one f32 partial per parameter and
//! chunk of `chunk_rows` rows). Then, for [`crate::backend::Backend::train_window`], `adam_step`
//! takes Adam's step on the device (the host's rule in f32, the step's scalars from the host's
//! [`Adam`] in f64): the parameters and Adam's moments go up at the start of the window and
//! come back at its end, and 64 minibatches run per submission, each with its own uniform
//! parameter block, so the host waits once per window instead of once per minibatch. For a
//! single gradient (`train_gradient`, the MPI backend's minibatch share) the host reads the
//! partials back and adds the chunks in f64 instead.
//!
//! **Scoring (sse).** Sources come through the batch feeder (`feed.rs`), so a validation split
//! that is resident on the device is never uploaded again. Per piece of a batch and per
//! network: the projection (for compact networks), `score` (the forward pass and each row's
//! squared error) and `sum_squares` (one f32 partial per `workgroup_size x
//! rows_per_invocation` rows); partials stay on the device until the end of the pass (or until
//! their buffer is full) and are added in f64 on the host, in order.
//!
//! Precision: f32 arithmetic per row (the CPU twin runs in f64); gradient sums in f32 over at
//! most `chunk_rows` rows, then f64. The tests hold the device's minibatch gradient within
//! 1e-5 of the largest entry of its block (B, or one layer) of the f64 gradient (lavapipe:
//! 3e-7), the parameters after 12 Adam steps within 1e-5 (lavapipe: 1e-8) and the scores
//! within 1e-6 relative (lavapipe: 2e-8). A row whose pre-activation lies within rounding of 0
//! may take the other side of a ReLU than on the CPU; its share of the gradient then differs.
//! Results do not change from run to run (fixed summation orders, no atomics).
//!
//! Limits: any depth and widths whose scratch planes fit one storage binding; on software
//! adapters one invocation's loops must fit the loop budget, which cuts the rows per workgroup
//! down to one and then fails with [`GpuError::TooLarge`] (widths of a few thousand).

use super::context::PipelineCache;
use super::feed::{for_each_batch, ResidentRows, ResidentSamples};
use super::project::{ProjectInfo, ProjectKernelParams, ProjectPipelineCache, Projector};
use super::sample::Generator;
use super::{GpuContext, GpuError};
use crate::backend::trainer::{Adam, FactoredShape};
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::network::Network;
use std::sync::Arc;

/// Marks a layer whose input is the `inputs` binding (`NONE` in WGSL).
const FROM_INPUTS: u32 = u32::MAX;
/// Words per layer in the layer table.
const LAYER_WORDS: usize = 8;
/// f32 partials the scoring pass keeps on the device before reading them back (4 MiB).
const SCORE_SLOTS: usize = 1 << 20;

/// Tunables of the small-network kernels; `workgroup_size`, `rows_per_group`, `chunk_rows` and
/// `rows_per_invocation` become the WGSL `override` constants `WG`, `SB`, `RC` and `RPT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainerKernelParams {
    /// Invocations per workgroup (a power of two).
    pub workgroup_size: u32,
    /// Rows one workgroup runs forward (and backward) together.
    pub rows_per_group: u32,
    /// Rows per f32 gradient partial.
    pub chunk_rows: u32,
    /// Rows each invocation of `sum_squares` adds before the workgroup's tree.
    pub rows_per_invocation: u32,
    /// Most rows per scoring dispatch (bounds the scratch planes).
    pub score_rows: usize,
    /// Loop iterations one invocation may run; `Some` on software adapters (lavapipe truncates
    /// beyond 65,535 silently), `None` on hardware.
    pub loop_budget: Option<u64>,
}

impl TrainerKernelParams {
    /// Defaults: 64 invocations, 16 rows per workgroup, gradient partials of 256 rows, score
    /// partials of 512 rows, 2^16 rows per scoring dispatch, and a 30,000-iteration loop budget
    /// on software adapters.
    pub fn for_context(ctx: &GpuContext) -> Self {
        let most = ctx.max_workgroup_1d();
        let mut workgroup_size = 64u32;
        while workgroup_size > most {
            workgroup_size /= 2;
        }
        TrainerKernelParams {
            workgroup_size: workgroup_size.max(1),
            rows_per_group: 16,
            chunk_rows: 256,
            rows_per_invocation: 8,
            score_rows: 1 << 16,
            loop_budget: ctx.is_software().then_some(30_000),
        }
    }

    /// [`Self::for_context`] with the rows per workgroup halved until one invocation of the
    /// forward and backward passes over layers of these `widths` (inputs first) fits the loop
    /// budget.
    pub fn for_widths(ctx: &GpuContext, widths: &[usize]) -> Self {
        let mut p = Self::for_context(ctx);
        if let Some(budget) = p.loop_budget {
            while p.rows_per_group > 1 && p.loop_cost(widths) > budget {
                p.rows_per_group /= 2;
            }
        }
        p
    }

    /// Loop iterations of one invocation of `forward_backward` (the longest kernel) over
    /// layers of these widths.
    pub fn loop_cost(&self, widths: &[usize]) -> u64 {
        let (sb, wg) = (
            self.rows_per_group as u64,
            self.workgroup_size.max(1) as u64,
        );
        let layer = |w: &[usize]| {
            let (nin, nout) = (w[0] as u64, w[1] as u64);
            (sb * nout).div_ceil(wg) * (nin + 1) + (sb * nin).div_ceil(wg) * (nout + 1) + 2
        };
        let gradient = self.chunk_rows as u64 + widths.len() as u64 + 1;
        let sum = self.rows_per_invocation as u64 + 32;
        let pass: u64 = widths.windows(2).map(layer).sum::<u64>() + sb.div_ceil(wg) + 2;
        pass.max(gradient).max(sum)
    }

    fn check(&self, ctx: &GpuContext, widths: &[usize]) -> Result<()> {
        let wg = self.workgroup_size;
        if wg == 0
            || !wg.is_power_of_two()
            || self.rows_per_group == 0
            || self.chunk_rows == 0
            || self.rows_per_invocation == 0
            || self.score_rows == 0
        {
            return Err(Error::invalid(
                "trainer kernels: the workgroup size must be a power of two and every tunable positive",
            ));
        }
        ctx.check_workgroup_1d("trainer kernels", wg)?;
        if let Some(budget) = self.loop_budget {
            let cost = self.loop_cost(widths);
            if cost > budget {
                return Err(GpuError::TooLarge(format!(
                    "a network of widths {widths:?} needs {cost} loop iterations per invocation, \
                     over the software adapter's budget of {budget}; use the CPU backend"
                ))
                .into());
            }
        }
        Ok(())
    }
}

/// The four entry points of `trainer.wgsl` for one configuration.
pub struct TrainerPipelines {
    forward_backward: wgpu::ComputePipeline,
    gradient: wgpu::ComputePipeline,
    score: wgpu::ComputePipeline,
    sum_squares: wgpu::ComputePipeline,
    adam_step: wgpu::ComputePipeline,
    gather_rows: wgpu::ComputePipeline,
}

/// (WG, SB, RC, RPT): what the compiled trainer pipelines depend on.
pub type TrainerPipelineKey = (u32, u32, u32, u32);

/// Trainer pipelines by configuration, built once per backend.
pub type TrainerPipelineCache = PipelineCache<TrainerPipelineKey, TrainerPipelines>;

fn pipelines(
    ctx: &GpuContext,
    cache: &TrainerPipelineCache,
    kp: &TrainerKernelParams,
) -> Result<Arc<TrainerPipelines>> {
    let key = (
        kp.workgroup_size,
        kp.rows_per_group,
        kp.chunk_rows,
        kp.rows_per_invocation,
    );
    Ok(
        cache.get_or_build(key, || -> std::result::Result<_, GpuError> {
            let constants = [
                ("WG", kp.workgroup_size as f64),
                ("SB", kp.rows_per_group as f64),
                ("RC", kp.chunk_rows as f64),
                ("RPT", kp.rows_per_invocation as f64),
            ];
            let wgsl = include_str!("../../../shaders/trainer.wgsl");
            let build = |entry: &str| ctx.compute_pipeline("trainer", wgsl, entry, &constants);
            Ok(TrainerPipelines {
                forward_backward: build("forward_backward")?,
                gradient: build("gradient")?,
                score: build("score")?,
                sum_squares: build("sum_squares")?,
                adam_step: build("adam_step")?,
                gather_rows: build("gather_rows")?,
            })
        })?,
    )
}

/// One dispatch's sizes and offsets (`Info` in WGSL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Info {
    rows: u32,
    depth: u32,
    stride: u32,
    in_off: u32,
    in_rs: u32,
    in_cs: u32,
    y_off: u32,
    x_off: u32,
    d: u32,
    r: u32,
    first: u32,
    params: u32,
    dz_off: u32,
    sq_off: u32,
    slot: u32,
    chunks: u32,
    lr: f32,
    c1: f32,
    c2: f32,
    inv_rows: f32,
}

/// The layer table of a small network and where its scratch planes lie.
struct NetLayout {
    /// [`LAYER_WORDS`] words per layer (see `trainer.wgsl`).
    table: Vec<u32>,
    /// Planes used: activations, deltas, then dz (r planes) and one squared-error plane.
    planes: usize,
    /// Offsets (words) of the dz planes and of the squared-error plane.
    dz_off: u32,
    sq_off: u32,
}

/// The table for layers (inputs, outputs, weight offset in the parameter vector; each bias
/// follows its weights) with `r` dz planes (0 when only scoring), planes of `stride` words.
fn net_layout(layers: &[(usize, usize, usize)], r: usize, stride: usize) -> NetLayout {
    let units: usize = layers.iter().map(|l| l.1).sum();
    let mut table = Vec::with_capacity(layers.len() * LAYER_WORDS);
    let (mut act, mut src) = (0usize, None::<usize>);
    for &(nin, nout, w) in layers {
        let delta = units + act;
        table.extend([
            nin as u32,
            nout as u32,
            w as u32,
            (w + nin * nout) as u32,
            (act * stride) as u32,
            (delta * stride) as u32,
            src.map_or(FROM_INPUTS, |p| (p * stride) as u32),
            0,
        ]);
        src = Some(act);
        act += nout;
    }
    NetLayout {
        table,
        planes: 2 * units + r + 1,
        dz_off: (2 * units * stride) as u32,
        sq_off: ((2 * units + r) * stride) as u32,
    }
}

/// Flops of one row through the small network (forward), for wait bounds.
fn small_flops(layers: &[(usize, usize, usize)]) -> f64 {
    layers
        .iter()
        .map(|&(i, o, _)| 2.0 * (i as f64 + 1.0) * o as f64)
        .sum()
}

/// Workgroup grid for `groups` workgroups: (x, y) within the adapter's per-dimension limit.
fn grid(ctx: &GpuContext, groups: usize) -> (u32, u32) {
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let gx = groups.clamp(1, max);
    (gx as u32, groups.div_ceil(gx) as u32)
}

/// The host's step after a minibatch: `step(gradient, rows, params)` with the f64 gradient sum
/// in the [`FactoredShape`] layout.
pub(crate) type HostStep<'a> = &'a mut dyn FnMut(&[f64], usize, &mut [f64]);

/// Who takes the Adam steps of a window.
pub(crate) enum Steps<'a> {
    /// The host, after each minibatch's gradient is read back.
    Host(HostStep<'a>),
    /// The device (`adam_step`), [`DEVICE_STEPS`] minibatches per submission; the parameters
    /// and Adam's moments are uploaded at the start of the window and read back at its end.
    Device(&'a mut Adam),
}

/// Minibatches per submission when the device takes the Adam steps.
const DEVICE_STEPS: usize = 64;

/// Where the device gets the rows of a window it assembles.
pub(crate) enum WindowSource<'a> {
    /// Drawn by a generator (a built-in teacher's rows).
    Drawn(&'a Generator),
    /// Copied from the source's copy on the device, batch after batch.
    Resident(&'a [ResidentRows]),
    /// Read on the host and uploaded (the copy was evicted since the trainer asked).
    Host(&'a dyn SampleSource),
}

/// Where a window's rows are.
pub(crate) enum WindowRows<'a> {
    /// On the host: uploaded in segments.
    Host { x: &'a [f32], y: &'a [f32] },
    /// Already on the device (one segment): `rows` rows of x (rows x d) and their labels.
    Device {
        x: wgpu::Buffer,
        y: wgpu::Buffer,
        rows: usize,
    },
}

/// Runs the minibatches of one window (see the module docs), with the Adam steps taken as
/// `steps` says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_window(
    ctx: &GpuContext,
    cache: &TrainerPipelineCache,
    project_cache: &ProjectPipelineCache,
    shape: &FactoredShape,
    train_basis: bool,
    data: WindowRows,
    batch_size: usize,
    params: &mut [f64],
    mut steps: Steps,
) -> Result<()> {
    let rows = match &data {
        WindowRows::Host { x, y } => {
            crate::backend::cpu::trainer::check_window(shape, x, y, batch_size, params)?;
            y.len()
        }
        WindowRows::Device { rows, .. } => {
            // The shape, batch and parameters; the rows are the device's own, sized by it.
            crate::backend::cpu::trainer::check_window(shape, &[], &[], batch_size, params)?;
            *rows
        }
    };
    if rows == 0 {
        return Ok(());
    }
    let on_device = matches!(data, WindowRows::Device { .. });
    let plan = WindowPlan::new(ctx, shape, train_basis, rows, batch_size, on_device)?;
    let pipes = pipelines(ctx, cache, &plan.kp)?;
    let pkp = ProjectKernelParams::for_shape(ctx, plan.r, plan.d);
    let projector = Projector::new(ctx, project_cache, &pkp, plan.d)?;
    let slots = match steps {
        Steps::Host(_) => 1,
        Steps::Device(_) => DEVICE_STEPS.min(plan.segment.div_ceil(plan.batch)),
    };
    let bufs = WindowBuffers::new(ctx, &pipes, &projector, &plan, &data, slots)?;
    let device_adam = match &mut steps {
        Steps::Device(adam) => Some(bufs.upload_adam(ctx, &pipes, &plan, adam, params)?),
        Steps::Host(_) => None,
    };
    let d = plan.d;
    let mut grad = vec![0.0f64; plan.np];
    for s0 in (0..rows).step_by(plan.segment) {
        let seg = plan.segment.min(rows - s0);
        if let WindowRows::Host { x, y } = &data {
            ctx.queue
                .write_buffer(&bufs.x, 0, bytemuck::cast_slice(&x[s0 * d..(s0 + seg) * d]));
            ctx.queue
                .write_buffer(&bufs.y, 0, bytemuck::cast_slice(&y[s0..s0 + seg]));
        }
        if !train_basis {
            if let Steps::Host(_) = steps {
                ctx.queue
                    .write_buffer(&bufs.params, 0, bytemuck::cast_slice(&f32s(params)));
            }
            bufs.project_segment(ctx, &projector, &plan, seg)?;
        }
        // Minibatches in submissions of `slots`.
        let starts: Vec<usize> = (0..seg).step_by(plan.batch).collect();
        for group in starts.chunks(slots) {
            let minibatches = Minibatches {
                starts: group,
                seg,
                adam: device_adam.as_ref().map(|a| &a.binds[..]),
            };
            bufs.run_minibatches(
                ctx,
                &pipes,
                &projector,
                &plan,
                &minibatches,
                &mut steps,
                params,
                &mut grad,
            )?;
        }
    }
    if let (Steps::Device(adam), Some(state)) = (&mut steps, &device_adam) {
        bufs.read_state(ctx, &plan, state, adam, params)?;
    }
    Ok(())
}

/// The sizes of one window's kernels, fixed for the whole window.
struct WindowPlan {
    d: usize,
    r: usize,
    /// Parameters in the [`FactoredShape`] layout.
    np: usize,
    rows: usize,
    batch: usize,
    /// Rows per upload: whole minibatches whose x (and z) fit one binding.
    segment: usize,
    /// The first trained parameter (entries below it, a fixed B, are not trained).
    first: usize,
    train_basis: bool,
    layers: Vec<(usize, usize, usize)>,
    layout: NetLayout,
    kp: TrainerKernelParams,
    /// Flops per row of one minibatch (for wait bounds).
    row_flops: f64,
}

impl WindowPlan {
    /// The plan for `rows` rows in minibatches of `batch_size`, checked against the adapter's
    /// binding size (`on_device`: the window is one buffer already, so it must fit one segment).
    fn new(
        ctx: &GpuContext,
        shape: &FactoredShape,
        train_basis: bool,
        rows: usize,
        batch_size: usize,
        on_device: bool,
    ) -> Result<WindowPlan> {
        let (d, r, np) = (shape.input_dim, shape.rank(), shape.params());
        let kp = TrainerKernelParams::for_widths(ctx, &shape.widths);
        kp.check(ctx, &shape.widths)?;
        let batch = batch_size.min(rows);
        let layers = shape.layers();
        let layout = net_layout(&layers, r, batch);
        let too_large = |what: &str, bytes: u64| -> Error {
            GpuError::TooLarge(format!(
                "trainer: {what} needs {bytes} bytes; this adapter allows {} per binding",
                ctx.max_binding()
            ))
            .into()
        };
        // Segments of whole minibatches whose x (and z) fit one binding and at most 256 MiB.
        let row_bytes = (d * 4) as u64;
        let cap = ctx.max_binding().min(256 << 20);
        let per_segment = (cap / row_bytes).min(cap / (r as u64 * 4)) as usize / batch * batch;
        if per_segment == 0 {
            return Err(too_large("one minibatch of x", batch as u64 * row_bytes));
        }
        let segment = per_segment.min(rows);
        if on_device && segment < rows {
            return Err(too_large(
                "a window drawn on the device",
                rows as u64 * row_bytes,
            ));
        }
        let plan = WindowPlan {
            d,
            r,
            np,
            rows,
            batch,
            segment,
            first: if train_basis { 0 } else { shape.basis_len() },
            train_basis,
            row_flops: 2.0 * (r * d) as f64 * if train_basis { 2.0 } else { 0.0 }
                + 3.0 * small_flops(&layers),
            layers,
            layout,
            kp,
        };
        if plan.scratch_bytes() > ctx.max_binding() {
            return Err(too_large(
                "the activation planes of one minibatch",
                plan.scratch_bytes(),
            ));
        }
        if plan.partial_bytes() > ctx.max_binding() {
            return Err(too_large(
                "the gradient partials of one minibatch",
                plan.partial_bytes(),
            ));
        }
        Ok(plan)
    }

    fn scratch_bytes(&self) -> u64 {
        (self.layout.planes * self.batch * 4) as u64
    }

    fn partial_bytes(&self) -> u64 {
        (self.batch.div_ceil(self.kp.chunk_rows as usize) * self.np * 4) as u64
    }

    /// The projection's parameter block for `n` rows from `row0` of the segment.
    fn project_info(&self, row0: usize, n: usize) -> ProjectInfo {
        ProjectInfo {
            rows: n as u32,
            d: self.d as u32,
            r: self.r as u32,
            x_row0: row0 as u32,
            z_off: row0 as u32,
            z_rs: 1,
            z_cs: self.segment as u32,
            basis_off: 0,
        }
    }

    /// The kernels' parameter block for the minibatch of `len` rows from `m0` of the segment.
    fn info(&self, m0: usize, len: usize) -> Info {
        Info {
            rows: len as u32,
            depth: self.layers.len() as u32,
            stride: self.batch as u32,
            in_off: m0 as u32,
            in_rs: 1,
            in_cs: self.segment as u32,
            y_off: m0 as u32,
            x_off: (m0 * self.d) as u32,
            d: self.d as u32,
            r: self.r as u32,
            first: self.first as u32,
            params: self.np as u32,
            dz_off: self.layout.dz_off,
            sq_off: self.layout.sq_off,
            slot: 0,
            chunks: len.div_ceil(self.kp.chunk_rows as usize) as u32,
            ..Info::default()
        }
    }
}

/// One submission's minibatches: their first rows in a segment of `seg` rows, and the Adam
/// steps' bind groups when the device takes the steps.
struct Minibatches<'a> {
    starts: &'a [usize],
    seg: usize,
    adam: Option<&'a [wgpu::BindGroup]>,
}

/// The device's Adam moments and the bind groups of its steps, one per slot.
struct DeviceAdam {
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    binds: Vec<wgpu::BindGroup>,
}

/// The buffers of one window, and the bind groups of its `slots` minibatch slots (one uniform
/// parameter block each, at the adapter's offset alignment, so that a submission can hold many
/// minibatches; one slot when the host steps).
struct WindowBuffers {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    params: wgpu::Buffer,
    partials: wgpu::Buffer,
    info: wgpu::Buffer,
    project_info: wgpu::Buffer,
    slot_bytes: u64,
    forward_backward: Vec<wgpu::BindGroup>,
    gradient: Vec<wgpu::BindGroup>,
    project: Vec<wgpu::BindGroup>,
}

const INFO_SIZE: u64 = std::mem::size_of::<Info>() as u64;
const PROJECT_INFO_SIZE: u64 = std::mem::size_of::<ProjectInfo>() as u64;

impl WindowBuffers {
    fn new(
        ctx: &GpuContext,
        pipes: &TrainerPipelines,
        projector: &Projector,
        plan: &WindowPlan,
        data: &WindowRows,
        slots: usize,
    ) -> Result<WindowBuffers> {
        let (x, y) = match data {
            WindowRows::Host { .. } => (
                ctx.storage_buffer("trainer x", (plan.segment * plan.d * 4) as u64)?,
                ctx.storage_buffer("trainer y", (plan.segment * 4) as u64)?,
            ),
            WindowRows::Device { x, y, .. } => (x.clone(), y.clone()),
        };
        let z = ctx.storage_buffer("trainer z", (plan.segment * plan.r * 4) as u64)?;
        let params = ctx.storage_buffer("trainer params", (plan.np * 4) as u64)?;
        let table = ctx.storage_buffer("trainer layers", (plan.layout.table.len() * 4) as u64)?;
        ctx.queue
            .write_buffer(&table, 0, bytemuck::cast_slice(&plan.layout.table));
        let scratch = ctx.storage_buffer("trainer scratch", plan.scratch_bytes())?;
        let partials = ctx.storage_buffer("trainer partials", plan.partial_bytes())?;
        let slot_bytes = INFO_SIZE
            .max(PROJECT_INFO_SIZE)
            .next_multiple_of(ctx.limits.min_uniform_buffer_offset_alignment.max(16) as u64);
        let info = ctx.uniform_buffer("trainer info", slots as u64 * slot_bytes);
        let project_info = ctx.uniform_buffer("trainer project info", slots as u64 * slot_bytes);
        let buffer = wgpu::Buffer::as_entire_binding;
        let (mut forward_backward, mut gradient, mut project) = (vec![], vec![], vec![]);
        for k in 0..slots {
            let info_k = slot_of(&info, k, INFO_SIZE, slot_bytes);
            forward_backward.push(ctx.bind_group_with(
                "trainer forward-backward",
                &pipes.forward_backward,
                vec![
                    (0, info_k.clone()),
                    (1, buffer(&z)),
                    (3, buffer(&y)),
                    (4, buffer(&params)),
                    (5, buffer(&table)),
                    (6, buffer(&scratch)),
                ],
            )?);
            gradient.push(ctx.bind_group_with(
                "trainer gradient",
                &pipes.gradient,
                vec![
                    (0, info_k),
                    (1, buffer(&z)),
                    (2, buffer(&x)),
                    (5, buffer(&table)),
                    (6, buffer(&scratch)),
                    (7, buffer(&partials)),
                ],
            )?);
            let project_k = slot_of(&project_info, k, PROJECT_INFO_SIZE, slot_bytes);
            project.push(projector.bind_with(ctx, project_k, &x, &params, &z)?);
        }
        Ok(WindowBuffers {
            x,
            y,
            params,
            partials,
            info,
            project_info,
            slot_bytes,
            forward_backward,
            gradient,
            project,
        })
    }

    /// Slot `k` of the kernels' parameter blocks.
    fn info_slot(&self, k: usize) -> wgpu::BindingResource<'_> {
        slot_of(&self.info, k, INFO_SIZE, self.slot_bytes)
    }

    /// Uploads the parameters and Adam's moments for the device's steps, and binds the steps.
    fn upload_adam(
        &self,
        ctx: &GpuContext,
        pipes: &TrainerPipelines,
        plan: &WindowPlan,
        adam: &mut Adam,
        params: &[f64],
    ) -> Result<DeviceAdam> {
        let (m, v) = adam.moments_mut();
        let m_buf = ctx.storage_buffer("trainer adam m", (plan.np * 4) as u64)?;
        let v_buf = ctx.storage_buffer("trainer adam v", (plan.np * 4) as u64)?;
        ctx.queue
            .write_buffer(&m_buf, 0, bytemuck::cast_slice(&f32s(m)));
        ctx.queue
            .write_buffer(&v_buf, 0, bytemuck::cast_slice(&f32s(v)));
        ctx.queue
            .write_buffer(&self.params, 0, bytemuck::cast_slice(&f32s(params)));
        let buffer = wgpu::Buffer::as_entire_binding;
        let binds = (0..self.forward_backward.len())
            .map(|k| {
                ctx.bind_group_with(
                    "trainer adam",
                    &pipes.adam_step,
                    vec![
                        (0, self.info_slot(k)),
                        (7, buffer(&self.partials)),
                        (8, buffer(&self.params)),
                        (9, buffer(&m_buf)),
                        (10, buffer(&v_buf)),
                    ],
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(DeviceAdam {
            m: m_buf,
            v: v_buf,
            binds,
        })
    }

    /// Projects the segment's first `seg` rows once (B fixed), in dispatches the device allows.
    fn project_segment(
        &self,
        ctx: &GpuContext,
        projector: &Projector,
        plan: &WindowPlan,
        seg: usize,
    ) -> Result<()> {
        let most = projector.max_rows(ctx, plan.r, plan.d);
        for a in (0..seg).step_by(most) {
            let info = plan.project_info(a, most.min(seg - a));
            ctx.queue
                .write_buffer(&self.project_info, 0, bytemuck::bytes_of(&info));
            let mut enc = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("trainer project"),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                projector.dispatch(ctx, &mut pass, &self.project[0], &info);
            }
            ctx.submit("trainer project", enc)?;
        }
        Ok(())
    }

    /// Runs one submission of minibatches: the device steps, or the host reads the one
    /// minibatch's gradient back and steps.
    #[allow(clippy::too_many_arguments)]
    fn run_minibatches(
        &self,
        ctx: &GpuContext,
        pipes: &TrainerPipelines,
        projector: &Projector,
        plan: &WindowPlan,
        batches: &Minibatches,
        steps: &mut Steps,
        params: &mut [f64],
        grad: &mut [f64],
    ) -> Result<()> {
        let slot = self.slot_bytes as usize;
        let mut infos = vec![0u8; self.forward_backward.len() * slot];
        let mut pinfos = infos.clone();
        let mut work = Vec::with_capacity(batches.starts.len());
        for (k, &m0) in batches.starts.iter().enumerate() {
            let len = plan.batch.min(batches.seg - m0);
            let mut info = plan.info(m0, len);
            if let Steps::Device(adam) = steps {
                let st = adam.next_step();
                info.lr = st.learning_rate as f32;
                info.c1 = st.c1 as f32;
                info.c2 = st.c2 as f32;
                info.inv_rows = 1.0 / len as f32;
            }
            let at = k * slot;
            infos[at..at + INFO_SIZE as usize].copy_from_slice(bytemuck::bytes_of(&info));
            let pinfo = plan.project_info(m0, len);
            pinfos[at..at + PROJECT_INFO_SIZE as usize].copy_from_slice(bytemuck::bytes_of(&pinfo));
            work.push((len, info.chunks, pinfo));
        }
        if let Steps::Host(_) = steps {
            ctx.queue
                .write_buffer(&self.params, 0, bytemuck::cast_slice(&f32s(params)));
        }
        ctx.queue.write_buffer(&self.info, 0, &infos);
        if plan.train_basis {
            ctx.queue.write_buffer(&self.project_info, 0, &pinfos);
        }
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("trainer minibatches"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for (k, (len, chunks, pinfo)) in work.iter().enumerate() {
                if plan.train_basis {
                    projector.dispatch(ctx, &mut pass, &self.project[k], pinfo);
                }
                let (gx, gy) = grid(ctx, len.div_ceil(plan.kp.rows_per_group as usize));
                pass.set_pipeline(&pipes.forward_backward);
                pass.set_bind_group(0, &self.forward_backward[k], &[]);
                pass.dispatch_workgroups(gx, gy, 1);
                let trained = plan.np - plan.first;
                let (gx, gy) = grid(ctx, trained.div_ceil(plan.kp.workgroup_size as usize));
                pass.set_pipeline(&pipes.gradient);
                pass.set_bind_group(0, &self.gradient[k], &[]);
                pass.dispatch_workgroups(gx, gy, *chunks);
                if let Some(adam) = batches.adam {
                    pass.set_pipeline(&pipes.adam_step);
                    pass.set_bind_group(0, &adam[k], &[]);
                    pass.dispatch_workgroups(gx, gy, 1);
                }
            }
        }
        let flops: f64 = work.iter().map(|w| w.0 as f64 * plan.row_flops).sum();
        match steps {
            Steps::Device(_) => {
                ctx.submit("trainer minibatches", enc)?;
                Ok(())
            }
            Steps::Host(step) => {
                let (len, chunks, _) = work[0];
                let bytes = chunks as u64 * plan.np as u64 * 4;
                let staging = ctx.staging_buffer("trainer readback", bytes);
                enc.copy_buffer_to_buffer(&self.partials, 0, &staging, 0, bytes);
                let partials: Vec<f32> =
                    ctx.submit_and_read("trainer minibatch", enc, &staging, bytes, flops)?;
                grad.fill(0.0);
                for chunk in partials.chunks_exact(plan.np) {
                    grad[plan.first..]
                        .iter_mut()
                        .zip(&chunk[plan.first..])
                        .for_each(|(g, &v)| *g += v as f64);
                }
                step(grad, len, params);
                Ok(())
            }
        }
    }

    /// Reads the trained parameters and Adam's moments back once, after the device's steps.
    fn read_state(
        &self,
        ctx: &GpuContext,
        plan: &WindowPlan,
        state: &DeviceAdam,
        adam: &mut Adam,
        params: &mut [f64],
    ) -> Result<()> {
        let (np, first) = (plan.np, plan.first);
        let bytes = (np * 4) as u64;
        let staging = ctx.staging_buffer("trainer state readback", 3 * bytes);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("trainer state"),
            });
        enc.copy_buffer_to_buffer(&self.params, 0, &staging, 0, bytes);
        enc.copy_buffer_to_buffer(&state.m, 0, &staging, bytes, bytes);
        enc.copy_buffer_to_buffer(&state.v, 0, &staging, 2 * bytes, bytes);
        let flops = plan.rows as f64 * plan.row_flops;
        let read: Vec<f32> =
            ctx.submit_and_read("trainer state", enc, &staging, 3 * bytes, flops)?;
        // Entries below `first` (a fixed B) are not trained: they keep their f64 values.
        let (m, v) = adam.moments_mut();
        for (k, dst) in [params, m, v].into_iter().enumerate() {
            for (t, &s) in dst[first..]
                .iter_mut()
                .zip(&read[k * np + first..(k + 1) * np])
            {
                *t = s as f64;
            }
        }
        Ok(())
    }
}

/// Slot `k` (of `size` bytes, `slot_bytes` apart) of a buffer of uniform parameter blocks.
fn slot_of(buf: &wgpu::Buffer, k: usize, size: u64, slot_bytes: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: k as u64 * slot_bytes,
        size: std::num::NonZeroU64::new(size),
    })
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&e| e as f32).collect()
}

/// A network prepared for scoring: parameters (f32, layer by layer), its layer table, and its
/// projection on the device with the kernel that applies it (compact networks).
struct ScoredNet {
    params: wgpu::Buffer,
    table: wgpu::Buffer,
    projection: Option<wgpu::Buffer>,
    projector: Option<Projector>,
    rank: usize,
    depth: usize,
    dz_off: u32,
    sq_off: u32,
    row_flops: f64,
}

impl ScoredNet {
    /// Uploads `n` (rows of d) for pieces of at most `piece_cap` rows.
    fn new(
        ctx: &GpuContext,
        project_cache: &ProjectPipelineCache,
        n: &Network,
        d: usize,
        piece_cap: usize,
    ) -> Result<Self> {
        let mut flat: Vec<f32> = Vec::new();
        let mut layers = Vec::new();
        for l in &n.layers {
            layers.push((l.inputs, l.outputs, flat.len()));
            flat.extend(l.weights.iter().map(|&w| w as f32));
            flat.extend(l.bias.iter().map(|&b| b as f32));
        }
        let rank = n.projection.as_ref().map_or(0, Vec::len);
        let layout = net_layout(&layers, 0, piece_cap);
        let params = ctx.storage_buffer("score params", (flat.len() * 4) as u64)?;
        ctx.queue
            .write_buffer(&params, 0, bytemuck::cast_slice(&flat));
        let table = ctx.storage_buffer("score layers", (layout.table.len() * 4) as u64)?;
        ctx.queue
            .write_buffer(&table, 0, bytemuck::cast_slice(&layout.table));
        let (projection, projector) = match &n.projection {
            Some(p) => {
                let b: Vec<f32> = p.iter().flatten().map(|&v| v as f32).collect();
                let buf = ctx.storage_buffer("score projection", (b.len() * 4) as u64)?;
                ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(&b));
                let pkp = ProjectKernelParams::for_shape(ctx, p.len(), d);
                (
                    Some(buf),
                    Some(Projector::new(ctx, project_cache, &pkp, d)?),
                )
            }
            None => (None, None),
        };
        Ok(ScoredNet {
            params,
            table,
            projection,
            projector,
            rank,
            depth: n.layers.len(),
            dz_off: layout.dz_off,
            sq_off: layout.sq_off,
            row_flops: small_flops(&layers) + 2.0 * (rank * d) as f64,
        })
    }
}

/// Each network valid and on the source's d.
fn check_scored(networks: &[&Network], source: &dyn SampleSource) -> Result<()> {
    let d = source.dim();
    for net in networks {
        net.validate()?;
        if net.input_dim != d {
            return Err(Error::invalid(format!(
                "scoring: a network on d = {} for samples of d = {d} ({})",
                net.input_dim,
                source.describe()
            )));
        }
    }
    Ok(())
}

/// The sizes of a scoring pass: the largest rank and scratch planes of the networks, and the
/// rows per piece (one dispatch) that their planes and projections allow.
struct ScoreSizes {
    r_max: usize,
    planes: usize,
    piece_cap: usize,
}

impl ScoreSizes {
    fn new(ctx: &GpuContext, networks: &[&Network], kp: &TrainerKernelParams) -> Result<Self> {
        let r_max = networks
            .iter()
            .map(|n| n.projection.as_ref().map_or(0, Vec::len))
            .max()
            .unwrap_or(0);
        let planes = networks
            .iter()
            .map(|n| 2 * n.layers.iter().map(|l| l.outputs).sum::<usize>() + 1)
            .max()
            .unwrap_or(1);
        let max_binding = ctx.max_binding();
        let piece_cap = kp
            .score_rows
            .min((max_binding / (planes as u64 * 4)) as usize)
            .min((max_binding / (r_max.max(1) as u64 * 4)) as usize)
            .min(
                ctx.limits.max_compute_workgroups_per_dimension as usize
                    * kp.rows_per_group as usize,
            );
        if piece_cap == 0 {
            return Err(GpuError::TooLarge(format!(
                "scoring: one row's {planes} scratch words do not fit this adapter's binding limit of {max_binding} bytes"
            ))
            .into());
        }
        Ok(ScoreSizes {
            r_max,
            planes,
            piece_cap,
        })
    }
}

/// Summed squared error of each network over every row of `source`, streamed through the
/// batch feeder (see the module docs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sse(
    ctx: &GpuContext,
    cache: &TrainerPipelineCache,
    project_cache: &ProjectPipelineCache,
    networks: &[&Network],
    source: &dyn SampleSource,
    resident: Option<&ResidentSamples>,
    kp: Option<&TrainerKernelParams>,
) -> Result<Vec<f64>> {
    let d = source.dim();
    let mut sums = vec![0.0f64; networks.len()];
    check_scored(networks, source)?;
    if networks.is_empty() || source.is_empty() {
        return Ok(sums);
    }
    let kp = scoring_params(ctx, networks, kp)?;
    let pipes = pipelines(ctx, cache, &kp)?;
    let ScoreSizes {
        r_max,
        planes,
        piece_cap,
    } = ScoreSizes::new(ctx, networks, &kp)?;
    let prepared = networks
        .iter()
        .map(|n| ScoredNet::new(ctx, project_cache, n, d, piece_cap))
        .collect::<Result<Vec<_>>>()?;
    let scratch = ctx.storage_buffer("score scratch", (planes * piece_cap * 4) as u64)?;
    let z_buf = ctx.storage_buffer("score z", (r_max.max(1) * piece_cap * 4) as u64)?;
    let per_partial = (kp.workgroup_size * kp.rows_per_invocation) as usize;
    let mut partials = ScorePartials::new(ctx, SCORE_SLOTS.max(piece_cap.div_ceil(per_partial)))?;
    let info_buf = ctx.uniform_buffer("score info", std::mem::size_of::<Info>() as u64);
    let sum_bind = ctx.bind_group(
        "score sums",
        &pipes.sum_squares,
        &[(0, &info_buf), (6, &scratch), (7, &partials.buf)],
    )?;
    let max_row_flops = prepared.iter().map(|p| p.row_flops).fold(0.0, f64::max);
    let batch_rows = super::feed::batch_rows(ctx, d, usize::MAX, piece_cap);
    for_each_batch(
        ctx,
        resident,
        source,
        batch_rows,
        max_row_flops * networks.len() as f64,
        |batch| -> Result<Option<wgpu::SubmissionIndex>> {
            let mut last = None;
            let mut binds = Vec::with_capacity(prepared.len());
            for net in &prepared {
                let project = match (&net.projector, &net.projection) {
                    (Some(p), Some(b)) => Some(p.bind(ctx, batch.x, b, &z_buf)?),
                    _ => None,
                };
                let inputs = if project.is_some() { &z_buf } else { batch.x };
                let score = ctx.bind_group(
                    "score",
                    &pipes.score,
                    &[
                        (0, &info_buf),
                        (1, inputs),
                        (3, batch.y),
                        (4, &net.params),
                        (5, &net.table),
                        (6, &scratch),
                    ],
                )?;
                binds.push((project, score));
            }
            for p0 in (0..batch.rows).step_by(piece_cap) {
                let n = piece_cap.min(batch.rows - p0);
                let groups = n.div_ceil(per_partial);
                for (k, (net, (project_bind, score_bind))) in
                    prepared.iter().zip(&binds).enumerate()
                {
                    let slot = partials.reserve(ctx, groups, &mut sums)?;
                    let compact = project_bind.is_some();
                    let info = Info {
                        rows: n as u32,
                        depth: net.depth as u32,
                        stride: piece_cap as u32,
                        in_off: if compact { 0 } else { (p0 * d) as u32 },
                        in_rs: if compact { 1 } else { d as u32 },
                        in_cs: if compact { piece_cap as u32 } else { 1 },
                        y_off: p0 as u32,
                        d: d as u32,
                        r: net.rank as u32,
                        dz_off: net.dz_off,
                        sq_off: net.sq_off,
                        slot: slot as u32,
                        ..Info::default()
                    };
                    ctx.queue
                        .write_buffer(&info_buf, 0, bytemuck::bytes_of(&info));
                    let pinfo = ProjectInfo {
                        rows: n as u32,
                        d: d as u32,
                        r: net.rank as u32,
                        x_row0: p0 as u32,
                        z_off: 0,
                        z_rs: 1,
                        z_cs: piece_cap as u32,
                        basis_off: 0,
                    };
                    if let Some(p) = &net.projector {
                        p.write_info(ctx, &pinfo);
                    }
                    let mut enc =
                        ctx.device
                            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                                label: Some("score"),
                            });
                    {
                        let mut pass =
                            enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                        if let (Some(p), Some(b)) = (&net.projector, project_bind) {
                            p.dispatch(ctx, &mut pass, b, &pinfo);
                        }
                        let (gx, gy) = grid(ctx, n.div_ceil(kp.rows_per_group as usize));
                        pass.set_pipeline(&pipes.score);
                        pass.set_bind_group(0, score_bind, &[]);
                        pass.dispatch_workgroups(gx, gy, 1);
                        pass.set_pipeline(&pipes.sum_squares);
                        pass.set_bind_group(0, &sum_bind, &[]);
                        pass.dispatch_workgroups(groups as u32, 1, 1);
                    }
                    last = Some(ctx.submit("scoring", enc)?);
                    partials.wrote(k, groups, n as f64 * net.row_flops);
                }
            }
            Ok(last)
        },
    )?;
    partials.flush(ctx, &mut sums)?;
    Ok(sums)
}

/// The scoring tunables: those given, or the context's defaults with rows per workgroup cut to
/// fit the widest network; checked against every network.
fn scoring_params(
    ctx: &GpuContext,
    networks: &[&Network],
    kp: Option<&TrainerKernelParams>,
) -> Result<TrainerKernelParams> {
    let widths_of = |n: &Network| -> Vec<usize> {
        let mut w = vec![n.layer_input_dim()];
        w.extend(n.layers.iter().map(|l| l.outputs));
        w
    };
    let kp = match kp {
        Some(kp) => *kp,
        None => {
            let mut kp = TrainerKernelParams::for_context(ctx);
            for n in networks {
                let fitted = TrainerKernelParams::for_widths(ctx, &widths_of(n));
                kp.rows_per_group = kp.rows_per_group.min(fitted.rows_per_group);
            }
            kp
        }
    };
    for n in networks {
        kp.check(ctx, &widths_of(n))?;
    }
    Ok(kp)
}

/// The scoring pass's f32 partial sums on the device, in the order they were written, read
/// back and added in f64 per network when the buffer is full and at the end.
struct ScorePartials {
    buf: wgpu::Buffer,
    slots: usize,
    /// (network, partials) in the order written.
    written: Vec<(usize, usize)>,
    used: usize,
    /// Work submitted since the last readback (its wait bound).
    pending_flops: f64,
}

impl ScorePartials {
    fn new(ctx: &GpuContext, slots: usize) -> Result<Self> {
        Ok(ScorePartials {
            buf: ctx.storage_buffer("score partials", (slots * 4) as u64)?,
            slots,
            written: Vec::new(),
            used: 0,
            pending_flops: 0.0,
        })
    }

    /// The first of `count` free slots, after reading the buffer back if it has too few.
    fn reserve(&mut self, ctx: &GpuContext, count: usize, sums: &mut [f64]) -> Result<usize> {
        if self.used + count > self.slots {
            self.flush(ctx, sums)?;
        }
        Ok(self.used)
    }

    /// Records `count` partials of network `net` written by work of `flops`.
    fn wrote(&mut self, net: usize, count: usize, flops: f64) {
        self.written.push((net, count));
        self.used += count;
        self.pending_flops += flops;
    }

    /// Reads the partials back and adds them to their networks' sums.
    fn flush(&mut self, ctx: &GpuContext, sums: &mut [f64]) -> Result<()> {
        if self.used == 0 {
            return Ok(());
        }
        let bytes = (self.used * 4) as u64;
        let staging = ctx.staging_buffer("score readback", bytes);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("score readback"),
            });
        enc.copy_buffer_to_buffer(&self.buf, 0, &staging, 0, bytes);
        let parts: Vec<f32> =
            ctx.submit_and_read("scoring", enc, &staging, bytes, self.pending_flops)?;
        let mut at = 0;
        for &(net, count) in &self.written {
            sums[net] += parts[at..at + count].iter().map(|&v| v as f64).sum::<f64>();
            at += count;
        }
        self.written.clear();
        self.used = 0;
        self.pending_flops = 0.0;
        Ok(())
    }
}

impl super::GpuBackend {
    /// The minibatches of one training window on the device, with `step(gradient, rows,
    /// params)` called on the host after each ([`crate::backend::Backend::train_window`]
    /// passes its Adam step).
    #[allow(clippy::too_many_arguments)]
    pub fn train_window_steps(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        batch_size: usize,
        params: &mut [f64],
        mut step: impl FnMut(&[f64], usize, &mut [f64]),
    ) -> Result<()> {
        run_window(
            &self.ctx,
            &self.trainer_pipelines,
            &self.project_pipelines,
            shape,
            train_basis,
            WindowRows::Host { x, y },
            batch_size,
            params,
            Steps::Host(&mut step),
        )
    }

    /// The minibatches of one training window with Adam's steps on the device: the window's
    /// rows go up once, the parameters and Adam's moments go up at its start and come back at
    /// its end, and the minibatches run [`DEVICE_STEPS`] to a submission
    /// ([`crate::backend::Backend::train_window`] on this backend).
    #[allow(clippy::too_many_arguments)]
    pub fn train_window_on_device(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        batch_size: usize,
        params: &mut [f64],
        adam: &mut Adam,
    ) -> Result<()> {
        run_window(
            &self.ctx,
            &self.trainer_pipelines,
            &self.project_pipelines,
            shape,
            train_basis,
            WindowRows::Host { x, y },
            batch_size,
            params,
            Steps::Device(adam),
        )
    }

    /// [`crate::backend::Backend::train_window_of`]: the window's blocks put on the device as
    /// `rows_from` says (drawn there, copied from a resident copy, or read on the host as a last
    /// resort), put in `order` there (`gather_rows`), then trained as
    /// [`GpuBackend::train_window_on_device`] does.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn train_assembled_window(
        &self,
        rows_from: WindowSource,
        shape: &FactoredShape,
        train_basis: bool,
        blocks: &[(u64, usize)],
        order: &[u32],
        batch_size: usize,
        params: &mut [f64],
        adam: &mut Adam,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let d = shape.input_dim;
        let rows: usize = blocks.iter().map(|b| b.1).sum();
        if order.len() != rows || rows == 0 {
            return Err(Error::invalid(format!(
                "train window: an order of {} rows for blocks of {rows} rows",
                order.len()
            )));
        }
        let kp = TrainerKernelParams::for_widths(ctx, &shape.widths);
        kp.check(ctx, &shape.widths)?;
        let pipes = pipelines(ctx, &self.trainer_pipelines, &kp)?;
        let row_bytes = (d * 4) as u64;
        let storage = |label: &str, bytes: u64| ctx.storage_buffer(label, bytes);
        let raw_x = storage("window rows x", rows as u64 * row_bytes)?;
        let raw_y = storage("window rows y", (rows * 4) as u64)?;
        let order_buf = storage("window order", (rows * 4) as u64)?;
        ctx.queue
            .write_buffer(&order_buf, 0, bytemuck::cast_slice(order));
        let win_x = storage("window x", rows as u64 * row_bytes)?;
        let win_y = storage("window y", (rows * 4) as u64)?;
        let info = Info {
            rows: rows as u32,
            d: d as u32,
            ..Info::default()
        };
        let info_buf = ctx.uniform_buffer("window gather info", std::mem::size_of::<Info>() as u64);
        ctx.queue
            .write_buffer(&info_buf, 0, bytemuck::bytes_of(&info));
        let gather = ctx.bind_group(
            "window gather",
            &pipes.gather_rows,
            &[
                (0, &info_buf),
                (11, &raw_x),
                (12, &raw_y),
                (13, &order_buf),
                (14, &win_x),
                (15, &win_y),
            ],
        )?;
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("window rows"),
            });
        match rows_from {
            WindowSource::Drawn(gen) => {
                if gen.recipe().stride() != d {
                    return Err(Error::invalid(
                        "train window: the generator's rows are not d wide",
                    ));
                }
                let most = blocks.iter().map(|b| b.1).max().unwrap_or(1);
                let block_x = storage("window block x", most as u64 * row_bytes)?;
                let block_y = storage("window block y", (most * 4) as u64)?;
                let mut at = 0u64;
                for &(start, len) in blocks {
                    gen.encode(ctx, &mut enc, start, len, &block_x, &block_y)?;
                    let (xb, yb) = (len as u64 * row_bytes, (len * 4) as u64);
                    enc.copy_buffer_to_buffer(&block_x, 0, &raw_x, at * row_bytes, xb);
                    enc.copy_buffer_to_buffer(&block_y, 0, &raw_y, at * 4, yb);
                    at += len as u64;
                }
            }
            WindowSource::Resident(batches) => {
                // Each block's rows from the batches that hold them (a block may straddle two).
                let mut at = 0u64;
                for &(start, len) in blocks {
                    let (mut row, end) = (start, start + len as u64);
                    let mut first = 0u64;
                    for b in batches.iter() {
                        let last = first + b.rows as u64;
                        if row < end && row < last && row >= first {
                            let n = end.min(last) - row;
                            let off = row - first;
                            enc.copy_buffer_to_buffer(
                                &b.x,
                                off * row_bytes,
                                &raw_x,
                                at * row_bytes,
                                n * row_bytes,
                            );
                            enc.copy_buffer_to_buffer(&b.y, off * 4, &raw_y, at * 4, n * 4);
                            at += n;
                            row += n;
                        }
                        first = last;
                    }
                    if row != end {
                        return Err(Error::invalid(format!(
                            "train window: rows {start}..{end} past the device copy's {first}"
                        )));
                    }
                }
            }
            WindowSource::Host(source) => {
                let (mut x, mut y) = (Vec::new(), Vec::new());
                let mut at = 0u64;
                for &(start, len) in blocks {
                    let got = source.read(start, len, &mut x, &mut y)?;
                    if got != len || x.len() != len * d {
                        return Err(Error::invalid(format!(
                            "{} returned {got} rows of {len} at row {start}",
                            source.describe()
                        )));
                    }
                    ctx.queue
                        .write_buffer(&raw_x, at * row_bytes, bytemuck::cast_slice(&x));
                    ctx.queue
                        .write_buffer(&raw_y, at * 4, bytemuck::cast_slice(&y));
                    at += len as u64;
                }
            }
        }
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            let (gx, gy) = grid(ctx, (rows * d).div_ceil(kp.workgroup_size as usize));
            pass.set_pipeline(&pipes.gather_rows);
            pass.set_bind_group(0, &gather, &[]);
            pass.dispatch_workgroups(gx, gy, 1);
        }
        ctx.submit("window rows", enc)?;
        run_window(
            ctx,
            &self.trainer_pipelines,
            &self.project_pipelines,
            shape,
            train_basis,
            WindowRows::Device {
                x: win_x,
                y: win_y,
                rows,
            },
            batch_size,
            params,
            Steps::Device(adam),
        )
    }

    /// Gradient of the summed squared error of the factorised model over all rows of `x` and
    /// `y` (one minibatch), in the [`FactoredShape`] layout, f64 sums of f32 chunk partials;
    /// B's entries are zero unless `train_basis` (tests compare it with the CPU twin).
    pub fn train_gradient(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        params: &[f64],
    ) -> Result<Vec<f64>> {
        let mut p = params.to_vec();
        let mut out = vec![0.0; p.len()];
        let rows = y.len().max(1);
        self.train_window_steps(shape, train_basis, x, y, rows, &mut p, |g, _, _| {
            out.copy_from_slice(g)
        })?;
        Ok(out)
    }

    /// [`crate::backend::Backend::sse`] with explicit kernel parameters (`None`: the defaults
    /// for the networks).
    pub fn sse_with(
        &self,
        networks: &[&Network],
        source: &dyn SampleSource,
        params: Option<&TrainerKernelParams>,
    ) -> Result<Vec<f64>> {
        sse(
            &self.ctx,
            &self.trainer_pipelines,
            &self.project_pipelines,
            networks,
            source,
            Some(&self.resident),
            params,
        )
    }
}
