// z = B x for rows of x (row-major, d columns) and the r rows of B; launcher in
// src/backend/gpu/project.rs, f64 twin in src/backend/cpu/project.rs.
//
// One workgroup per tile of TR rows and RB basis rows: invocation t < TR * RB owns the single
// output (row t / RB, basis row t % RB) and keeps its sum in a register. The tile's rows of x
// are staged KT columns at a time in workgroup memory (consecutive invocations load consecutive
// columns of one row: coalesced), padded by one word per row so that invocations reading the
// same column of different rows hit different banks; B is read from storage (every invocation
// of one basis row reads the same word: a broadcast). Zeros past the ends of x. Arithmetic f32.
//
// z is written at z_off + row * z_rs + j * z_cs: row-major (z_rs = r, z_cs = 1) for the
// projection pass, feature-major (z_rs = 1, z_cs = a row stride) for the trainer's planes.

override WG: u32 = 64u;   // invocations per workgroup (>= TR * RB)
override TR: u32 = 16u;   // rows per tile
override RB: u32 = 4u;    // basis rows per tile
override KT: u32 = 32u;   // columns of x per slab

struct Info {
    rows: u32,      // rows to project
    d: u32,         // columns of x and of B
    r: u32,         // rows of B
    x_row0: u32,    // first row of x
    z_off: u32,
    z_rs: u32,
    z_cs: u32,
    basis_off: u32, // offset of B in `basis`
}

@group(0) @binding(0) var<uniform> info: Info;
@group(0) @binding(1) var<storage, read> xs: array<f32>;
@group(0) @binding(2) var<storage, read> basis: array<f32>;
@group(0) @binding(3) var<storage, read_write> zs: array<f32>;

var<workgroup> tile: array<f32, TR * (KT + 1u)>;

@compute @workgroup_size(WG)
fn project(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row0 = (wid.x + wid.y * nwg.x) * TR;
    // Uniform per workgroup: the barriers below stay in uniform control flow.
    if row0 >= info.rows {
        return;
    }
    let s = t / RB;
    let j = wid.z * RB + t % RB;
    let owns = t < TR * RB && row0 + s < info.rows && j < info.r;
    let stride = KT + 1u;
    let d = info.d;
    var acc = 0.0;
    for (var k0 = 0u; k0 < d; k0 += KT) {
        for (var e = t; e < TR * KT; e += WG) {
            let rr = e / KT;
            let c = e % KT;
            var v = 0.0;
            if row0 + rr < info.rows && k0 + c < d {
                v = xs[(info.x_row0 + row0 + rr) * d + k0 + c];
            }
            tile[rr * stride + c] = v;
        }
        workgroupBarrier();
        if owns {
            let b = info.basis_off + j * d + k0;
            let a = s * stride;
            let kn = min(KT, d - k0);
            for (var c = 0u; c < kn; c++) {
                acc = fma(basis[b + c], tile[a + c], acc);
            }
        }
        workgroupBarrier();
    }
    if owns {
        zs[info.z_off + (row0 + s) * info.z_rs + j * info.z_cs] = acc;
    }
}
