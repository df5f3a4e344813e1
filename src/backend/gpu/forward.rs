//! Batched forward pass of a full [`Network`] on the GPU (`shaders/forward.wgsl`), the GPU
//! override of [`crate::backend::Backend::predict`].
//!
//! One workgroup of `workgroup_size` invocations evaluates `samples_per_group` samples layer by
//! layer: each layer's dot products are shared round-robin by the workgroup, hidden activations
//! sit in workgroup memory (4,096 f32 words: two planes of `samples_per_group x max_width`), and
//! the first layer reads x from storage. x is streamed in pieces of at most `rows_per_dispatch`
//! rows that also fit one storage binding, into two device slots so that an upload overlaps
//! the work on the previous piece; outputs are read back once (per 64 MiB of them). Arithmetic is f32 (the CPU default accumulates in f64).
//! Limits: hidden widths up to 2,048 ([`GpuError::TooLarge`] beyond); on software adapters the
//! per-invocation loop count must fit the loop budget even with one sample per workgroup, which
//! holds for d up to about 30,000 at widths <= the workgroup size.

use super::context::PipelineCache;
use super::{GpuContext, GpuError};
use crate::error::{Error, Result};
use crate::network::Network;
use std::sync::Arc;

/// f32 words of workgroup memory the kernel's activation array holds (`ACT_WORDS` in WGSL).
const ACT_WORDS: usize = 4096;
/// Widest hidden layer the kernel takes (one sample per workgroup, two planes).
pub const MAX_FORWARD_WIDTH: usize = ACT_WORDS / 2;

/// Tunables of the forward kernel; `workgroup_size`, `samples_per_group` and `max_width` become
/// the WGSL `override` constants `WG`, `SB` and `MAXW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardKernelParams {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// Samples one workgroup evaluates together (2 * samples_per_group * max_width <= 4096).
    pub samples_per_group: u32,
    /// Row stride of the activation planes: at least the widest hidden layer.
    pub max_width: u32,
    /// Rows per dispatch; x is streamed in pieces of at most this many rows.
    pub rows_per_dispatch: usize,
    /// Loop iterations one invocation may run; `Some` on software adapters (lavapipe truncates
    /// beyond 65,535 silently), `None` on hardware.
    pub loop_budget: Option<u64>,
}

impl ForwardKernelParams {
    /// Defaults for `network` on this device: 64-wide workgroups, `max_width` the widest hidden
    /// layer rounded up to 16, as many samples per group as the activation array holds (at
    /// most 32), cut further to keep inside the loop budget on software adapters.
    pub fn for_network(ctx: &GpuContext, network: &Network) -> Self {
        let widest = network.hidden_widths().into_iter().max().unwrap_or(1);
        let max_width = widest
            .max(1)
            .next_multiple_of(16)
            .min(MAX_FORWARD_WIDTH.max(widest));
        let workgroup_size = 64.min(ctx.max_workgroup_1d());
        let loop_budget = ctx.is_software().then_some(30_000);
        let mut samples_per_group = (ACT_WORDS / (2 * max_width)).clamp(1, 32) as u32;
        if let Some(budget) = loop_budget {
            while samples_per_group > 1
                && loop_cost(network, workgroup_size, samples_per_group) > budget
            {
                samples_per_group /= 2;
            }
        }
        ForwardKernelParams {
            workgroup_size,
            samples_per_group,
            max_width: max_width as u32,
            rows_per_dispatch: 1 << 16,
            loop_budget,
        }
    }
}

/// Loop iterations one invocation runs for one sample block (every loop counts on lavapipe).
fn loop_cost(network: &Network, wg: u32, sb: u32) -> u64 {
    let per_layer = |l: &crate::network::Layer| {
        let dots = (sb as u64 * l.outputs as u64).div_ceil(wg as u64);
        dots * (l.inputs as u64 + 1) + 1
    };
    network.layers.iter().map(per_layer).sum::<u64>() + 1
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Info {
    /// Rows below this index are evaluated.
    rows: u32,
    depth: u32,
    /// First row of the dispatch.
    base: u32,
    pad: u32,
}

/// (workgroup size, samples per group, max width): what a compiled forward pipeline depends on.
pub type PipelineKey = (u32, u32, u32);

/// Forward pipelines per (workgroup size, samples per group, max width), built once per
/// backend.
pub type ForwardPipelineCache = PipelineCache<PipelineKey, wgpu::ComputePipeline>;

fn pipeline(
    ctx: &GpuContext,
    cache: &ForwardPipelineCache,
    kp: &ForwardKernelParams,
) -> Result<Arc<wgpu::ComputePipeline>> {
    let key = (kp.workgroup_size, kp.samples_per_group, kp.max_width);
    Ok(cache.get_or_build(key, || {
        let constants = [
            ("WG", kp.workgroup_size as f64),
            ("SB", kp.samples_per_group as f64),
            ("MAXW", kp.max_width as f64),
        ];
        let wgsl = include_str!("../../../shaders/forward.wgsl");
        ctx.compute_pipeline("forward", wgsl, "forward", &constants)
    })?)
}

/// Checks the tunables against the network and the device.
fn check_params(ctx: &GpuContext, network: &Network, kp: &ForwardKernelParams) -> Result<()> {
    if kp.workgroup_size == 0 || kp.samples_per_group == 0 || kp.rows_per_dispatch == 0 {
        return Err(Error::invalid(
            "forward kernel: workgroup size, samples per group and rows per dispatch must be positive",
        ));
    }
    let widest = network.hidden_widths().into_iter().max().unwrap_or(0);
    if widest > MAX_FORWARD_WIDTH {
        return Err(GpuError::TooLarge(format!(
            "a hidden layer of width {widest}; the forward kernel takes up to {MAX_FORWARD_WIDTH}"
        ))
        .into());
    }
    if widest > kp.max_width as usize
        || 2 * kp.samples_per_group as usize * kp.max_width as usize > ACT_WORDS
    {
        return Err(Error::invalid(format!(
            "forward kernel: max_width {} must cover the widest hidden layer ({widest}) and \
             2 * samples_per_group * max_width must be <= {ACT_WORDS}",
            kp.max_width
        )));
    }
    ctx.check_workgroup_1d("forward kernel", kp.workgroup_size)?;
    if let Some(budget) = kp.loop_budget {
        let cost = loop_cost(network, kp.workgroup_size, kp.samples_per_group);
        if cost > budget {
            return Err(GpuError::TooLarge(format!(
                "the forward pass needs {cost} loop iterations per invocation, over the software \
                 adapter's budget of {budget}; use the CPU backend"
            ))
            .into());
        }
    }
    Ok(())
}

/// Parameters and layer layout of `network` as the kernel reads them (f32 weights then bias per
/// layer; per layer inputs, outputs, weight offset, bias offset).
fn pack(network: &Network) -> (Vec<f32>, Vec<u32>) {
    let mut params: Vec<f32> = Vec::new();
    let mut layout: Vec<u32> = Vec::new();
    for l in &network.layers {
        let woff = params.len();
        params.extend(l.weights.iter().map(|&w| w as f32));
        let boff = params.len();
        params.extend(l.bias.iter().map(|&b| b as f32));
        layout.extend([l.inputs as u32, l.outputs as u32, woff as u32, boff as u32]);
    }
    (params, layout)
}

/// A network uploaded once for [`DeviceForward::encode`] over device-resident rows.
pub(crate) struct DeviceForward {
    pipeline: Arc<wgpu::ComputePipeline>,
    params: wgpu::Buffer,
    layout: wgpu::Buffer,
    depth: u32,
    samples_per_group: usize,
    row_flops: f64,
    input_dim: usize,
}

impl DeviceForward {
    /// Uploads `network` (a plain layer stack: no projection) and checks it against the
    /// kernel's limits on this device (an error when it does not fit, e.g. a hidden layer wider
    /// than [`MAX_FORWARD_WIDTH`] or, on software adapters, past the loop budget).
    pub(crate) fn new(
        ctx: &GpuContext,
        cache: &ForwardPipelineCache,
        network: &Network,
    ) -> Result<Self> {
        network.validate()?;
        if network.projection.is_some() {
            return Err(Error::invalid(
                "forward on device: fold the projection first (Network::dense)",
            ));
        }
        let kp = ForwardKernelParams::for_network(ctx, network);
        check_params(ctx, network, &kp)?;
        let (params, layout) = pack(network);
        let params_buf = ctx.storage_buffer("forward params", (params.len() * 4) as u64)?;
        ctx.queue
            .write_buffer(&params_buf, 0, bytemuck::cast_slice(&params));
        let layout_buf = ctx.storage_buffer("forward layout", (layout.len() * 4) as u64)?;
        ctx.queue
            .write_buffer(&layout_buf, 0, bytemuck::cast_slice(&layout));
        let row_flops = network
            .layers
            .iter()
            .map(|l| 2.0 * (l.inputs as f64 + 1.0) * l.outputs as f64)
            .sum();
        Ok(DeviceForward {
            pipeline: pipeline(ctx, cache, &kp)?,
            params: params_buf,
            layout: layout_buf,
            depth: network.layers.len() as u32,
            samples_per_group: kp.samples_per_group as usize,
            row_flops,
            input_dim: network.input_dim,
        })
    }

    /// Flops of one row.
    pub(crate) fn row_flops(&self) -> f64 {
        self.row_flops
    }

    /// Encodes the network over rows `0..rows` of `x` (rows of input_dim f32), writing one f32
    /// per row into `out`, in dispatches of at most the context's flop limit.
    pub(crate) fn encode(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        rows: usize,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        // The kernel reads rows x input_dim words of x and writes rows words of out, unchecked.
        if x.size() < (rows * self.input_dim * 4) as u64 || out.size() < (rows * 4) as u64 {
            return Err(GpuError::Kernel(format!(
                "forward on device: {rows} rows of {} inputs do not fit buffers of {} and {} bytes",
                self.input_dim,
                x.size(),
                out.size()
            ))
            .into());
        }
        let sb = self.samples_per_group;
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
        let watchdog_rows = (ctx.max_dispatch_flops() / self.row_flops.max(1.0)).max(sb as f64);
        let piece = (watchdog_rows as usize)
            .min(max_groups.saturating_mul(max_groups).saturating_mul(sb))
            .max(sb)
            / sb
            * sb;
        for base in (0..rows).step_by(piece) {
            let n = piece.min(rows - base);
            let info = Info {
                rows: (base + n) as u32,
                depth: self.depth,
                base: base as u32,
                pad: 0,
            };
            let info_buf = ctx.uniform_buffer("forward info", std::mem::size_of::<Info>() as u64);
            ctx.queue
                .write_buffer(&info_buf, 0, bytemuck::bytes_of(&info));
            let bind = ctx.bind_group(
                "forward on device",
                &self.pipeline,
                &[
                    (0, &info_buf),
                    (1, x),
                    (2, &self.params),
                    (3, &self.layout),
                    (4, out),
                ],
            )?;
            let groups = n.div_ceil(sb);
            let gx = groups.min(max_groups);
            let gy = groups.div_ceil(gx);
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(gx as u32, gy as u32, 1);
        }
        Ok(())
    }
}

/// Evaluates `network` on `rows` samples of `x` (row-major `rows x input_dim`) with explicit
/// kernel tunables (tests force streaming with small values).
pub fn predict_with(
    ctx: &GpuContext,
    cache: &ForwardPipelineCache,
    network: &Network,
    x: &[f32],
    rows: usize,
    kp: &ForwardKernelParams,
) -> Result<Vec<f32>> {
    crate::backend::check_predict_input(network, x, rows)?;
    network.validate()?;
    // The kernel runs plain layer stacks: a projection is folded into the first layer here.
    let dense;
    let network = if network.projection.is_some() {
        dense = network.dense();
        &dense
    } else {
        network
    };
    check_params(ctx, network, kp)?;
    if rows == 0 {
        return Ok(Vec::new());
    }
    let d = network.input_dim;

    // Parameters and layout, uploaded once.
    let (params, layout) = pack(network);
    let params_buf = ctx.storage_buffer("forward params", (params.len() * 4) as u64)?;
    ctx.queue
        .write_buffer(&params_buf, 0, bytemuck::cast_slice(&params));
    let layout_buf = ctx.storage_buffer("forward layout", (layout.len() * 4) as u64)?;
    ctx.queue
        .write_buffer(&layout_buf, 0, bytemuck::cast_slice(&layout));

    // Piece size: the dispatch cap, one storage binding of x, and the workgroup grid.
    let sb = kp.samples_per_group as usize;
    let row_bytes = (d.max(1) * 4) as u64;
    let binding_rows = (ctx.max_binding().min(1 << 28) / row_bytes) as usize;
    if binding_rows == 0 {
        return Err(GpuError::TooLarge(format!(
            "one row of x needs {row_bytes} bytes; this adapter allows {}",
            ctx.max_binding()
        ))
        .into());
    }
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    // Flops of one row; a dispatch holds at most the context's limit (driver watchdogs).
    let row_flops: f64 = network
        .layers
        .iter()
        .map(|l| 2.0 * (l.inputs as f64 + 1.0) * l.outputs as f64)
        .sum();
    let watchdog_rows = (ctx.max_dispatch_flops() / row_flops.max(1.0)).max(sb as f64) as usize;
    let piece_rows = rows
        .min(kp.rows_per_dispatch)
        .min(watchdog_rows)
        .min(binding_rows)
        .min(max_groups.saturating_mul(max_groups).saturating_mul(sb));
    // Two x slots: the upload of piece i + 1 overlaps the work on piece i, and piece i + 2
    // waits for piece i (so at most two uploads are staged). Outputs gather in one readback
    // buffer of at most 64 MiB, read when full and at the end.
    let x_slots = [
        ctx.storage_buffer("forward x", piece_rows as u64 * row_bytes)?,
        ctx.storage_buffer("forward x", piece_rows as u64 * row_bytes)?,
    ];
    let out_bytes = (piece_rows * 4) as u64;
    let out_buf = ctx.storage_buffer("forward out", out_bytes)?;
    let staging_rows = rows.min((64 << 20) / 4).max(piece_rows);
    let staging = ctx.staging_buffer("forward readback", (staging_rows * 4) as u64);
    let info_buf = ctx.uniform_buffer("forward info", std::mem::size_of::<Info>() as u64);
    let pipeline = pipeline(ctx, cache, kp)?;
    let mut binds = Vec::with_capacity(2);
    for x_buf in &x_slots {
        binds.push(ctx.bind_group(
            "forward bind group",
            &pipeline,
            &[
                (0, &info_buf),
                (1, x_buf),
                (2, &params_buf),
                (3, &layout_buf),
                (4, &out_buf),
            ],
        )?);
    }

    let mut out = Vec::with_capacity(rows);
    let mut in_flight: [Option<wgpu::SubmissionIndex>; 2] = [None, None];
    let mut staged = 0usize;
    for (i, r0) in (0..rows).step_by(piece_rows).enumerate() {
        let n = piece_rows.min(rows - r0);
        if staged + n > staging_rows {
            let bytes = (staged * 4) as u64;
            let flops = staged as f64 * row_flops;
            out.extend(ctx.read_back::<f32>("forward", &staging, bytes, None, flops)?);
            staged = 0;
        }
        let slot = i % 2;
        if let Some(done) = in_flight[slot].take() {
            ctx.wait("forward upload", Some(done), n as f64 * row_flops)?;
        }
        let info = Info {
            rows: n as u32,
            depth: network.layers.len() as u32,
            base: 0,
            pad: 0,
        };
        ctx.queue
            .write_buffer(&info_buf, 0, bytemuck::bytes_of(&info));
        if d > 0 {
            ctx.queue.write_buffer(
                &x_slots[slot],
                0,
                bytemuck::cast_slice(&x[r0 * d..(r0 + n) * d]),
            );
        }
        let groups = n.div_ceil(sb);
        let gx = groups.min(max_groups);
        let gy = groups.div_ceil(gx);
        let mut enc = ctx.encode_dispatch(
            "forward",
            &pipeline,
            &binds[slot],
            [gx as u32, gy as u32, 1],
        );
        enc.copy_buffer_to_buffer(&out_buf, 0, &staging, (staged * 4) as u64, (n * 4) as u64);
        in_flight[slot] = Some(ctx.submit("forward", enc)?);
        staged += n;
    }
    if staged > 0 {
        let bytes = (staged * 4) as u64;
        out.extend(ctx.read_back::<f32>(
            "forward",
            &staging,
            bytes,
            None,
            staged as f64 * row_flops,
        )?);
    }
    Ok(out)
}
