//! Smoke kernel (`shaders/smoke.wgsl`): y = a x + b over a buffer, with its CPU twin. Proves
//! from day one that the adapter compiles and runs WGSL and that readback works.

use super::{GpuContext, GpuError};

const WORKGROUP: u32 = 64;

/// The CPU twin of the smoke kernel, in f64.
pub fn smoke_twin(a: f32, b: f32, x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| a as f64 * v as f64 + b as f64).collect()
}

/// Runs y = a x + b on the device and returns y.
pub fn smoke_kernel(ctx: &GpuContext, a: f32, b: f32, x: &[f32]) -> Result<Vec<f32>, GpuError> {
    let n = x.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let bytes = (n * 4) as u64;
    let groups = (n as u32).div_ceil(WORKGROUP);
    if groups > ctx.limits.max_compute_workgroups_per_dimension {
        return Err(GpuError::TooLarge(format!(
            "smoke kernel: {n} values need {groups} workgroups"
        )));
    }
    let pipeline = ctx.compute_pipeline(
        "smoke",
        include_str!("../../../shaders/smoke.wgsl"),
        "main",
        &[("WORKGROUP", WORKGROUP as f64)],
    )?;
    let params = ctx.uniform_buffer("smoke params", 16);
    let xs = ctx.storage_buffer("smoke x", bytes)?;
    let ys = ctx.storage_buffer("smoke y", bytes)?;
    let staging = ctx.staging_buffer("smoke readback", bytes);
    let mut p = [0u8; 16];
    p[0..4].copy_from_slice(&a.to_le_bytes());
    p[4..8].copy_from_slice(&b.to_le_bytes());
    p[8..12].copy_from_slice(&(n as u32).to_le_bytes());
    ctx.queue.write_buffer(&params, 0, &p);
    ctx.queue.write_buffer(&xs, 0, bytemuck::cast_slice(x));
    let bind = ctx.bind_group("smoke", &pipeline, &[(0, &params), (1, &xs), (2, &ys)])?;
    let mut encoder = ctx.encode_dispatch("smoke", &pipeline, &bind, [groups, 1, 1]);
    encoder.copy_buffer_to_buffer(&ys, 0, &staging, 0, bytes);
    ctx.submit_and_read("smoke", encoder, &staging, bytes, 2.0 * n as f64)
}

/// Runs the smoke kernel on a fixed ramp of 10,007 values and returns the largest absolute
/// difference from the f64 twin (a healthy adapter gives about 1e-6 or less).
pub fn smoke_test(ctx: &GpuContext) -> crate::Result<f64> {
    let x: Vec<f32> = (0..10_007).map(|i| (i as f32) * 1e-3 - 5.0).collect();
    let (a, b) = (1.5f32, -0.25f32);
    let got = smoke_kernel(ctx, a, b, &x)?;
    let want = smoke_twin(a, b, &x);
    if got.len() != want.len() {
        return Err(GpuError::Kernel(format!(
            "smoke kernel returned {} values for {}",
            got.len(),
            want.len()
        ))
        .into());
    }
    Ok(got
        .iter()
        .zip(&want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max))
}
