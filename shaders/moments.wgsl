// Binned, filtered second moments (src/moments.rs defines the statistic; launcher in
// src/backend/gpu/moments.rs). Three entry points, run per batch of samples:
//   bin_samples  one invocation per sample: z = B^T x, cell, y-bin -> bin id. The host's rule
//                (BinSpec::bin_of) compares z in f64; here z is f32, so a sample whose z lies
//                within the f32 error bound of an axis edge is flagged (bit 31) and the host
//                recomputes its bin in f64. y edges arrive rounded down to f32, which makes
//                `edge < y` exact for f32 labels. So every bin agrees with the f64 rule.
//   syrk_tiles   one workgroup per (upper-triangle output tile, piece): a piece is a run of at
//                most CHUNK samples of one bin (the host groups samples by bin). Sums w x x^T
//                in f32 over the piece into one partial tile per (piece, tile) - no atomics.
//                The workgroup's WG x WG invocations each own TM x TM outputs (rows and columns
//                in groups of 4, read from workgroup memory as vec4); samples are staged BK at
//                a time. Diagonal tiles also sum w x over their columns (the vector the host
//                needs besides the matrix), from the values they stage anyway, so it costs no
//                extra tile.
//   reduce_runs  one invocation per (run of same-bin pieces, i <= j) and per (run, column) of
//                w x: sums that run's partials and adds them to its bin's packed upper
//                triangle and w x sums in `totals` (a dispatch holds at most one run per bin:
//                no races).
// lavapipe caps every invocation at 65,535 loop iterations in total; here the longest loop is
// CHUNK / BK slabs (512 by default), inner loops have constant trip counts and unroll.

override WG: u32 = 16u;          // workgroup side: WG x WG invocations per tile
override TM: u32 = 8u;           // outputs per invocation along each side: 4 or 8
override BK: u32 = 8u;           // samples staged in workgroup memory per slab
override CHUNK: u32 = 4096u;     // most samples in one piece (a multiple of BK)
override WEIGHT_MODE: u32 = 0u;  // 0: w = 1, 1: w = y, 2: w = y^2
override USE_PERM: bool = true;  // false: samples are already in bin order (K = 1)
override BIN_WG: u32 = 256u;     // invocations per workgroup of bin_samples
override GROUPS: u32 = TM / 4u;  // vec4 groups per invocation and side
const MAX_GROUPS: u32 = 2u;      // private arrays need constant sizes: room for TM = 8
override TILE: u32 = WG * TM;
override TILE4: u32 = TILE / 4u;

struct Params {
    dim: u32,         // d
    rows: u32,        // samples in this batch
    rank: u32,        // r
    axis_edges: u32,  // edges per z axis
    y_edges: u32,     // y edges per cell
    y_bins: u32,      // y_edges + 1
    pair_count: u32,  // upper-triangle tile pairs
    tiles: u32,       // tiles per side
    piece_base: u32,  // first piece of this dispatch group
    bin_stride: u32,  // words per bin in `totals`: tri + d
    tri: u32,         // d (d + 1) / 2
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> basis: array<f32>;
@group(0) @binding(4) var<storage, read> axis_edges: array<f32>;
@group(0) @binding(5) var<storage, read> y_edges: array<f32>;
@group(0) @binding(6) var<storage, read_write> bins: array<u32>;
@group(0) @binding(7) var<storage, read> perm: array<u32>;
@group(0) @binding(8) var<storage, read> pieces: array<vec2<u32>>;   // (start, length)
@group(0) @binding(9) var<storage, read> pairs: array<vec2<u32>>;    // (tile row, tile col)
@group(0) @binding(10) var<storage, read_write> partial: array<f32>;
@group(0) @binding(11) var<storage, read> runs: array<vec4<u32>>;    // (first piece, count, bin, -)
@group(0) @binding(12) var<storage, read_write> totals: array<f32>;  // per bin: triangle, w x
@group(0) @binding(13) var<storage, read_write> partial_sx: array<f32>; // per (piece, tile): w x

const NEAR_EDGE: u32 = 0x80000000u;
const TWO_ULP: f32 = 1.1920929e-7; // 2^-23: twice f32's unit roundoff

@compute @workgroup_size(BIN_WG)
fn bin_samples(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.rows {
        return;
    }
    let row = i * p.dim;
    var cell = 0u;
    var near = false;
    for (var j = 0u; j < p.rank; j++) {
        var z = 0.0;
        var s = 0.0;
        let b = j * p.dim;
        for (var k = 0u; k < p.dim; k++) {
            z = fma(basis[b + k], x[row + k], z);
            s = fma(abs(basis[b + k]), abs(x[row + k]), s);
        }
        // |z - exact| <= (d + 1) u S with or without fused fma, plus the basis rounding
        // (u S); twice that, plus the edge's own rounding twice over.
        let band = f32(p.dim + 2u) * TWO_ULP * s + 1e-30;
        var below = 0u;
        for (var e = 0u; e < p.axis_edges; e++) {
            let edge = axis_edges[j * p.axis_edges + e];
            if edge < z {
                below++;
            }
            if abs(z - edge) <= band + TWO_ULP * abs(edge) {
                near = true;
            }
        }
        cell = cell * (p.axis_edges + 1u) + below;
    }
    let yv = y[i];
    var ybin = 0u;
    for (var e = 0u; e < p.y_edges; e++) {
        if y_edges[cell * p.y_edges + e] < yv {
            ybin++;
        }
    }
    bins[i] = select(cell * p.y_bins + ybin, NEAR_EDGE, near);
}

var<workgroup> a_slab: array<vec4<f32>, BK * TILE4>;
var<workgroup> b_slab: array<vec4<f32>, BK * TILE4>;

fn weight_of(v: f32) -> f32 {
    if WEIGHT_MODE == 1u {
        return v;
    }
    if WEIGHT_MODE == 2u {
        return v * v;
    }
    return 1.0;
}

// Columns c .. c + 3 of sample `row` (zero past d).
fn load4(row: u32, c: u32) -> vec4<f32> {
    let at = row * p.dim + c;
    if c + 3u < p.dim {
        return vec4<f32>(x[at], x[at + 1u], x[at + 2u], x[at + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var l = 0u; l < 4u; l++) {
        if c + l < p.dim {
            v[l] = x[at + l];
        }
    }
    return v;
}

var<workgroup> piece_len: u32;

@compute @workgroup_size(WG, WG)
fn syrk_tiles(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let pair = pairs[wid.x];
    let piece = pieces[p.piece_base + wid.y];
    if lid.x == 0u && lid.y == 0u {
        piece_len = min(piece.y, CHUNK);
    }
    // Uniform across the workgroup, so the barriers below sit in uniform control flow.
    let len = workgroupUniformLoad(&piece_len);
    let i0 = pair.x * TILE;
    let j0 = pair.y * TILE;
    let diag = pair.x == pair.y;
    let tid = lid.y * WG + lid.x;
    // acc[(4 g + r) GROUPS + h]: row 4 (g WG + lid.y) + r, columns 4 (h WG + lid.x) .. + 3.
    var acc: array<vec4<f32>, 4u * MAX_GROUPS * MAX_GROUPS>;
    var sx: array<vec4<f32>, MAX_GROUPS>;
    for (var s0 = 0u; s0 < len; s0 += BK) {
        // Stage BK samples of both column blocks, four columns per word.
        for (var e = tid; e < BK * TILE4; e += WG * WG) {
            let k = e / TILE4;
            let c4 = e % TILE4;
            let s = s0 + k;
            var av = vec4<f32>(0.0);
            var bv = vec4<f32>(0.0);
            if s < len {
                var row = piece.x + s;
                if USE_PERM {
                    row = perm[row];
                }
                let w = weight_of(y[row]);
                av = w * load4(row, i0 + 4u * c4);
                bv = load4(row, j0 + 4u * c4);
            }
            a_slab[e] = av;
            b_slab[e] = bv;
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            var a: array<vec4<f32>, MAX_GROUPS>;
            var b: array<vec4<f32>, MAX_GROUPS>;
            for (var g = 0u; g < GROUPS; g++) {
                a[g] = a_slab[k * TILE4 + g * WG + lid.y];
                b[g] = b_slab[k * TILE4 + g * WG + lid.x];
            }
            if diag {
                for (var g = 0u; g < GROUPS; g++) {
                    sx[g] += a[g];
                }
            }
            for (var g = 0u; g < GROUPS; g++) {
                for (var r = 0u; r < 4u; r++) {
                    let am = vec4<f32>(a[g][r]);
                    for (var h = 0u; h < GROUPS; h++) {
                        let at = (4u * g + r) * GROUPS + h;
                        acc[at] = fma(am, b[h], acc[at]);
                    }
                }
            }
        }
        workgroupBarrier();
    }
    let base = (wid.y * p.pair_count + wid.x) * TILE * TILE;
    for (var g = 0u; g < GROUPS; g++) {
        for (var r = 0u; r < 4u; r++) {
            let row = 4u * (g * WG + lid.y) + r;
            for (var h = 0u; h < GROUPS; h++) {
                let v = acc[(4u * g + r) * GROUPS + h];
                let at = base + row * TILE + 4u * (h * WG + lid.x);
                partial[at] = v.x;
                partial[at + 1u] = v.y;
                partial[at + 2u] = v.z;
                partial[at + 3u] = v.w;
            }
        }
    }
    if diag && lid.x == 0u {
        let sbase = (wid.y * p.tiles + pair.x) * TILE;
        for (var g = 0u; g < GROUPS; g++) {
            for (var r = 0u; r < 4u; r++) {
                partial_sx[sbase + 4u * (g * WG + lid.y) + r] = sx[g][r];
            }
        }
    }
}

@compute @workgroup_size(WG, WG)
fn reduce_runs(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let i = gid.y;
    let j = gid.x;
    let d = p.dim;
    let run = runs[wid.z];
    // Row d of the grid: the w x sums, one column each.
    if i == d && j < d {
        var total = 0.0;
        for (var q0 = 0u; q0 < run.y; q0 += 16u) {
            var block = 0.0;
            let end = min(q0 + 16u, run.y);
            for (var q = q0; q < end; q++) {
                block += partial_sx[(run.x + q) * p.tiles * TILE + j];
            }
            total += block;
        }
        let at = run.z * p.bin_stride + p.tri + j;
        totals[at] = totals[at] + total;
        return;
    }
    if i >= d || j >= d || j < i {
        return;
    }
    let ti = i / TILE;
    let tj = j / TILE;
    // Tile pairs are numbered row by row over ti <= tj.
    let pair = ti * (2u * p.tiles - ti + 1u) / 2u + (tj - ti);
    let offset = (i % TILE) * TILE + (j % TILE);
    // Blocks of 16 partials, then the block sums: shorter f32 chains than one running sum.
    var total = 0.0;
    for (var q0 = 0u; q0 < run.y; q0 += 16u) {
        var block = 0.0;
        let end = min(q0 + 16u, run.y);
        for (var q = q0; q < end; q++) {
            block += partial[((run.x + q) * p.pair_count + pair) * TILE * TILE + offset];
        }
        total += block;
    }
    let at = run.z * p.bin_stride + i * (2u * d - i + 1u) / 2u + (j - i);
    totals[at] = totals[at] + total;
}
