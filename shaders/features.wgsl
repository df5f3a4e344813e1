// Normal equations of the sphere-net features of z = B x: sum a a^T over rows, where
// a = (phi(z), y) and phi(z) = (relu(<u_j, z> - t_k) for directions j and thresholds k, z, 1);
// launcher in src/backend/gpu/features.rs, f64 twin in src/backend/cpu/trainer.rs.
//
// `gram`: one TILE x TILE workgroup per (tile pair ti <= tj of a's na entries, chunk of CHUNK
// rows). Invocation (lj, li) owns G[ti TILE + li][tj TILE + lj] in a register. Per slab of
// TILE rows, invocation (x, y) computes entry ti TILE + x and entry tj TILE + y of row
// k0 + y from z on the fly (r multiply-adds per direction feature: phi is never stored) into
// workgroup memory; then every invocation adds TILE products. One f32 partial per (chunk,
// entry) of the upper tiles. `reduce`: one invocation per entry (i <= j) adds a dispatch's
// chunk partials in order into one slot of `sums`; the host adds the slots in f64. The last
// column of a holds y, so G[i][na - 1] is sum phi_i y.
//
// feat: the m x r directions (row-major), then the nt thresholds.

override TILE: u32 = 16u;     // output tile side; TILE x TILE invocations
override CHUNK: u32 = 4096u;  // rows per f32 partial (a multiple of TILE)

struct Info {
    rows: u32,   // rows of this dispatch
    r: u32,
    m: u32,      // directions
    nt: u32,     // thresholds
    na: u32,     // entries of a: m nt + r + 1 features, then y
    z_rs: u32,   // z of (row, q): zs[row z_rs + q]
    y_off: u32,  // y of row: ys[y_off + row]
    chunks: u32, // chunks of this dispatch
    slot: u32,   // slot of sums written by reduce
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> info: Info;
@group(0) @binding(1) var<storage, read> zs: array<f32>;
@group(0) @binding(2) var<storage, read> ys: array<f32>;
@group(0) @binding(3) var<storage, read> feat: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> sums: array<f32>;

var<workgroup> a_sh: array<f32, TILE * TILE>;
var<workgroup> b_sh: array<f32, TILE * TILE>;

// Entry k of a for row `row`; 0 past the end of a (tile padding).
fn entry(k: u32, row: u32) -> f32 {
    let mt = info.m * info.nt;
    let z = row * info.z_rs;
    if k < mt {
        let u = (k / info.nt) * info.r;
        var s = 0.0;
        for (var q = 0u; q < info.r; q++) {
            s = fma(feat[u + q], zs[z + q], s);
        }
        return max(s - feat[info.m * info.r + k % info.nt], 0.0);
    }
    if k < mt + info.r {
        return zs[z + k - mt];
    }
    if k == mt + info.r {
        return 1.0;
    }
    if k == mt + info.r + 1u {
        return ys[info.y_off + row];
    }
    return 0.0;
}

@compute @workgroup_size(TILE, TILE)
fn gram(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let ti = wid.x;
    let tj = wid.y;
    // Uniform per workgroup: the barriers below stay in uniform control flow.
    if tj < ti {
        return;
    }
    let start = wid.z * CHUNK;
    let end = min(info.rows, start + CHUNK);
    var acc = 0.0;
    for (var k0 = start; k0 < end; k0 += TILE) {
        let row = k0 + lid.y;
        var a = 0.0;
        var b = 0.0;
        if row < end {
            a = entry(ti * TILE + lid.x, row);
            b = entry(tj * TILE + lid.x, row);
        }
        a_sh[lid.y * TILE + lid.x] = a;
        b_sh[lid.y * TILE + lid.x] = b;
        workgroupBarrier();
        for (var k = 0u; k < TILE; k++) {
            acc = fma(a_sh[k * TILE + lid.y], b_sh[k * TILE + lid.x], acc);
        }
        workgroupBarrier();
    }
    let gi = ti * TILE + lid.y;
    let gj = tj * TILE + lid.x;
    if gi < info.na && gj < info.na {
        partials[wid.z * info.na * info.na + gi * info.na + gj] = acc;
    }
}

@compute @workgroup_size(TILE * TILE)
fn reduce(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let q = gid.x + gid.y * nwg.x * TILE * TILE;
    let n2 = info.na * info.na;
    if q >= n2 || q % info.na < q / info.na {
        return;
    }
    var acc = 0.0;
    for (var c = 0u; c < info.chunks; c++) {
        acc += partials[c * n2 + q];
    }
    sums[info.slot * n2 + q] = acc;
}
