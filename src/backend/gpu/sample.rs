//! Launcher of `shaders/sample.wgsl`: rows of a [`Synthetic`] source generated on the device,
//! so that a pass over a built-in teacher's samples never moves x over the bus.
//!
//! Per batch (one submission): `sample_x` writes the stream's inputs (and the group column);
//! the teacher's forward pass (`forward.wgsl`, on the raw rows, the group column given weight
//! zero) writes the labels; `centre_x` subtracts the centre; the residual model's forward pass
//! (on the centred rows) and `finish_labels` add the noise and subtract the residual. Then the
//! labels (4 bytes a row) are read back, because passes sum per-bin label statistics on the
//! host in f64.
//!
//! Why labels on the device and not on the host from a regenerated x: the host would have to
//! generate all of x again (d normals a row, the work the device saves), while the labels cost
//! one forward pass of a small network per row on the device and 4 bytes of readback. They are
//! f32 there (the CPU source sums each row in f64), so they agree with `read` to the forward
//! kernel's f32 rounding (about 1e-6 relative; tests state the bound); x agrees bit for bit.

use super::context::PipelineCache;
use super::forward::{DeviceForward, ForwardPipelineCache};
use super::{GpuContext, GpuError};
use crate::data::philox;
use crate::data::{SampleSource, Synthetic};
use crate::error::{Error, Result};
use crate::network::{Layer, Network};
use std::sync::Arc;

const SHADER: &str = include_str!("../../../shaders/sample.wgsl");
/// Invocations per workgroup (`WG`).
const WORKGROUP: u32 = 256;
/// Bytes of the uniform `Params`.
const PARAMS_BYTES: u64 = 64;

struct Pipelines {
    words: wgpu::ComputePipeline,
    sample: wgpu::ComputePipeline,
    centre: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    forward: ForwardPipelineCache,
}

/// Pipelines of this device, built once (the generator is reached from the batch feeder,
/// which has no backend at hand, so they live in the context).
fn pipelines(ctx: &GpuContext) -> Result<Arc<Pipelines>> {
    Ok(ctx.launcher_state(|| -> Result<Pipelines, GpuError> {
        let lim = &ctx.limits;
        if WORKGROUP > lim.max_compute_invocations_per_workgroup
            || WORKGROUP > lim.max_compute_workgroup_size_x
        {
            return Err(GpuError::TooLarge(format!(
                "the sampler's workgroups of {WORKGROUP} invocations exceed this adapter's limit"
            )));
        }
        let constants = [("WG", WORKGROUP as f64)];
        let build = |entry: &str| ctx.compute_pipeline("sample", SHADER, entry, &constants);
        Ok(Pipelines {
            words: build("philox_words")?,
            sample: build("sample_x")?,
            centre: build("centre_x")?,
            finish: build("finish_labels")?,
            forward: PipelineCache::default(),
        })
    })?)
}

/// The transform's tables in the order the shader reads them (see its header).
fn tables() -> Vec<u32> {
    let mut t = Vec::with_capacity(714);
    t.extend_from_slice(&philox::COS_Q31);
    t.extend_from_slice(&philox::SIN_Q31);
    t.extend_from_slice(&philox::LOG_INV_Q31);
    for v in philox::LOG_NEG_LN_Q58 {
        t.extend([v as u32, (v >> 32) as u32]);
    }
    t.extend_from_slice(&philox::LOG_H_Q31);
    t.extend([philox::LN2_Q58 as u32, (philox::LN2_Q58 >> 32) as u32]);
    t.push(philox::PI_HALF_Q31 as u32);
    t
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    stride: u32,
    groups_per_row: u32,
    row_lo: u32,
    row_hi: u32,
    key_lo: u32,
    key_hi: u32,
    stream: u32,
    group_count: u32,
    gbase_lo: u32,
    gbase_hi: u32,
    pow32_mod: u32,
    noise_sd: f32,
    has_residual: u32,
    word_group: u32,
}

/// Workgroup grid for `items` invocations: (x, y) with x within the adapter's limit.
fn grid(ctx: &GpuContext, items: u64) -> Result<[u32; 2]> {
    let groups = items.div_ceil(WORKGROUP as u64).max(1);
    let max = ctx.limits.max_compute_workgroups_per_dimension as u64;
    let gx = groups.min(max);
    let gy = groups.div_ceil(gx);
    if gy > max {
        return Err(GpuError::TooLarge(format!(
            "{items} sampler invocations exceed this adapter's {max} x {max} workgroup grid"
        ))
        .into());
    }
    Ok([gx as u32, gy as u32])
}

/// `network` as a plain layer stack (projection folded in, no subspace record) with `extra`
/// zero-weight inputs appended (it reads rows with a group column).
fn widen(network: &Network, extra: usize) -> Network {
    let mut n = network.dense();
    n.subspace = None;
    if extra == 0 {
        return n;
    }
    let first = &n.layers[0];
    let inputs = first.inputs + extra;
    let mut weights = Vec::with_capacity(first.outputs * inputs);
    for row in first.weights.chunks_exact(first.inputs) {
        weights.extend_from_slice(row);
        weights.extend(std::iter::repeat_n(0.0, extra));
    }
    n.layers[0] = Layer {
        inputs,
        outputs: first.outputs,
        weights,
        bias: first.bias.clone(),
    };
    n.input_dim = inputs;
    n
}

/// A [`Synthetic`] source set up on the device: tables, centre and networks uploaded once.
pub(crate) struct Generator {
    recipe: Synthetic,
    pipes: Arc<Pipelines>,
    tables: wgpu::Buffer,
    centre: Option<wgpu::Buffer>,
    teacher: DeviceForward,
    residual: Option<DeviceForward>,
}

impl Generator {
    /// The generator of `recipe`, or `None` when the device cannot run one of its parts (a
    /// network the forward kernel does not take here, a group count past 65,535, rows past
    /// 2^32 in one source): the caller then reads the source on the host.
    pub(crate) fn new(ctx: &GpuContext, recipe: &Synthetic) -> Result<Option<Generator>> {
        let stride = recipe.stride();
        let extra = stride - recipe.teacher.input_dim;
        if recipe
            .groups
            .is_some_and(|g| g.groups == 0 || g.groups > 65_535)
            || recipe.rows > u32::MAX as u64
            || recipe.teacher.input_dim == 0
            || recipe
                .centre
                .as_ref()
                .is_some_and(|c| c.len() != recipe.teacher.input_dim)
            || recipe
                .residual
                .as_ref()
                .is_some_and(|r| r.input_dim != recipe.teacher.input_dim)
        {
            return Ok(None);
        }
        let pipes = pipelines(ctx)?;
        let forward = |net: &Network| match DeviceForward::new(ctx, &pipes.forward, net) {
            Ok(f) => Ok(Some(f)),
            Err(Error::Gpu(GpuError::TooLarge(_))) => Ok(None),
            Err(e) => Err(e),
        };
        let Some(teacher) = forward(&widen(&recipe.teacher, extra))? else {
            return Ok(None);
        };
        let residual = match &recipe.residual {
            Some(net) => match forward(&widen(net, extra))? {
                Some(f) => Some(f),
                None => return Ok(None),
            },
            None => None,
        };
        let table = tables();
        let tables_buf = ctx.storage_buffer("sample tables", (table.len() * 4) as u64)?;
        ctx.queue
            .write_buffer(&tables_buf, 0, bytemuck::cast_slice(&table));
        let centre = match &recipe.centre {
            Some(c) => {
                let buf = ctx.storage_buffer("sample centre", (c.len() * 4) as u64)?;
                ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(c));
                Some(buf)
            }
            None => None,
        };
        Ok(Some(Generator {
            recipe: recipe.clone(),
            pipes,
            tables: tables_buf,
            centre,
            teacher,
            residual,
        }))
    }

    /// Flops-like work of one row (for wait bounds): the draws and the forward passes.
    pub(crate) fn row_flops(&self) -> f64 {
        let draw = 400.0 * self.recipe.teacher.input_dim as f64;
        draw + self.teacher.row_flops() + self.residual.as_ref().map_or(0.0, |r| r.row_flops())
    }

    fn params(&self, start: u64, rows: usize) -> Params {
        let r = &self.recipe;
        let d = r.teacher.input_dim;
        let row = r.first_row + start;
        let key = philox::key_of(r.seed);
        let mut p = Params {
            rows: rows as u32,
            dim: d as u32,
            stride: r.stride() as u32,
            groups_per_row: d.div_ceil(4) as u32,
            row_lo: row as u32,
            row_hi: (row >> 32) as u32,
            key_lo: key[0],
            key_hi: key[1],
            noise_sd: r.noise_sd as f32,
            has_residual: u32::from(r.residual.is_some()),
            ..Default::default()
        };
        if let Some(g) = r.groups {
            let base = g
                .seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(g.first_row + start)
                .wrapping_add(0x632b_e59b_d9b4_e019);
            p.group_count = g.groups as u32;
            p.gbase_lo = base as u32;
            p.gbase_hi = (base >> 32) as u32;
            p.pow32_mod = ((1u64 << 32) % g.groups as u64) as u32;
        }
        p
    }

    /// Generates rows `start .. start + rows` of the source into `x` (rows x stride f32) and
    /// `y` (rows f32) and returns the labels read back. One submission, waited for; `queued`
    /// is the work submitted before it that the wait also covers (the queue runs in order), so
    /// that the wait's bound counts it.
    pub(crate) fn generate(
        &self,
        ctx: &GpuContext,
        start: u64,
        rows: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        queued: f64,
    ) -> Result<Vec<f32>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("sample"),
            });
        self.encode(ctx, &mut enc, start, rows, x, y)?;
        let bytes = (rows * 4) as u64;
        let staging = ctx.staging_buffer("sample labels readback", bytes);
        enc.copy_buffer_to_buffer(y, 0, &staging, 0, bytes);
        let flops = rows as f64 * self.row_flops() + queued;
        Ok(ctx.submit_and_read("sample", enc, &staging, bytes, flops)?)
    }

    /// Encodes the generation of rows `start .. start + rows` into `x` and `y` (nothing is read
    /// back).
    pub(crate) fn encode(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        start: u64,
        rows: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let r = &self.recipe;
        if start + rows as u64 > r.rows {
            return Err(Error::invalid(format!(
                "sampler: rows {start}..{} past the {} rows of the source",
                start + rows as u64,
                r.rows
            )));
        }
        let d = r.teacher.input_dim;
        let params = ctx.uniform_buffer("sample params", PARAMS_BYTES);
        ctx.queue
            .write_buffer(&params, 0, bytemuck::bytes_of(&self.params(start, rows)));
        let h = ctx.storage_buffer(
            "sample residual",
            if self.residual.is_some() { rows * 4 } else { 4 } as u64,
        )?;
        let p = &self.pipes;
        let sample_bind = ctx.bind_group(
            "sample x",
            &p.sample,
            &[(0, &params), (1, &self.tables), (2, x)],
        )?;
        let finish_bind = ctx.bind_group(
            "sample labels",
            &p.finish,
            &[(0, &params), (1, &self.tables), (3, y), (5, &h)],
        )?;
        let dispatch = |enc: &mut wgpu::CommandEncoder,
                        pipe: &wgpu::ComputePipeline,
                        bind: &wgpu::BindGroup,
                        items: u64|
         -> Result<()> {
            let [gx, gy] = grid(ctx, items)?;
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(pipe);
            pass.set_bind_group(0, bind, &[]);
            pass.dispatch_workgroups(gx, gy, 1);
            Ok(())
        };
        dispatch(enc, &p.sample, &sample_bind, (rows * d.div_ceil(4)) as u64)?;
        self.teacher.encode(ctx, enc, x, rows, y)?;
        if let Some(c) = &self.centre {
            let bind =
                ctx.bind_group("sample centre", &p.centre, &[(0, &params), (2, x), (4, c)])?;
            dispatch(enc, &p.centre, &bind, (rows * d) as u64)?;
        }
        if let Some(res) = &self.residual {
            res.encode(ctx, enc, x, rows, &h)?;
        }
        dispatch(enc, &p.finish, &finish_bind, rows as u64)
    }

    /// The recipe this generator draws.
    pub(crate) fn recipe(&self) -> &Synthetic {
        &self.recipe
    }
}

/// Raw Philox words of counters (first_row + i, group, stream) for i < count under `seed`,
/// computed on the device (4 per counter): the stream's twin test.
pub fn philox_words_on_device(
    ctx: &GpuContext,
    seed: u64,
    first_row: u64,
    count: usize,
    group: u32,
    stream: u32,
) -> Result<Vec<u32>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let pipes = pipelines(ctx)?;
    let key = philox::key_of(seed);
    let p = Params {
        rows: count as u32,
        row_lo: first_row as u32,
        row_hi: (first_row >> 32) as u32,
        key_lo: key[0],
        key_hi: key[1],
        stream,
        word_group: group,
        ..Default::default()
    };
    let params = ctx.uniform_buffer("philox params", PARAMS_BYTES);
    ctx.queue.write_buffer(&params, 0, bytemuck::bytes_of(&p));
    let bytes = (count * 16) as u64;
    let out = ctx.storage_buffer("philox words", bytes)?;
    let bind = ctx.bind_group("philox words", &pipes.words, &[(0, &params), (6, &out)])?;
    let [gx, gy] = grid(ctx, count as u64)?;
    let mut enc = ctx.encode_dispatch("philox words", &pipes.words, &bind, [gx, gy, 1]);
    let staging = ctx.staging_buffer("philox words readback", bytes);
    enc.copy_buffer_to_buffer(&out, 0, &staging, 0, bytes);
    Ok(ctx.submit_and_read("philox words", enc, &staging, bytes, count as f64 * 200.0)?)
}

/// Rows `start .. start + rows` of `source` generated on the device and read back (x, y), or
/// `None` when the source is not one the device generates ([`SampleSource::synthetic`]).
pub fn generate_on_device(
    ctx: &GpuContext,
    source: &dyn SampleSource,
    start: u64,
    rows: usize,
) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let Some(recipe) = source.synthetic() else {
        return Ok(None);
    };
    let Some(gen) = Generator::new(ctx, &recipe)? else {
        return Ok(None);
    };
    let rows = rows.min(recipe.rows.saturating_sub(start) as usize);
    let xb = (rows * recipe.stride() * 4) as u64;
    let x = ctx.storage_buffer("generated x", xb)?;
    let y = ctx.storage_buffer("generated y", (rows * 4) as u64)?;
    let ys = gen.generate(ctx, start, rows, &x, &y, 0.0)?;
    let staging = ctx.staging_buffer("generated x readback", xb);
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("generated x"),
        });
    enc.copy_buffer_to_buffer(&x, 0, &staging, 0, xb);
    let xs = ctx.submit_and_read("generated x", enc, &staging, xb, 0.0)?;
    Ok(Some((xs, ys)))
}
