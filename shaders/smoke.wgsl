// Smoke kernel: y[i] = a * x[i] + b. Proves the adapter compiles and runs WGSL.

struct Params {
    a: f32,
    b: f32,
    n: u32,
    _pad: u32,
}

override WORKGROUP: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i < params.n {
        y[i] = params.a * x[i] + params.b;
    }
}
