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
//                no races). Runs and pieces come from the host's sort or, where the device has
//                f64, from the device's (binning.wgsl); bin_samples serves the host's sort.
// lavapipe caps every invocation at 65,535 loop iterations in total; here the longest loop is
// CHUNK / BK slabs (512 by default), inner loops have constant trip counts and unroll.

override WG: u32 = 16u;          // workgroup side: WG x WG invocations per tile
override TM: u32 = 8u;           // outputs per invocation along each side: 4 or 8
override BK: u32 = 16u;          // samples staged in workgroup memory per slab
override CHUNK: u32 = 4096u;     // most samples in one piece (a multiple of BK)
override WEIGHT_MODE: u32 = 0u;  // 0: w = 1, 1: w = y, 2: w = y^2
override USE_PERM: bool = true;  // false: samples are already in bin order (K = 1)
override BIN_WG: u32 = 256u;     // invocations per workgroup of bin_samples
override VEC_X: bool = false;    // d % 4 == 0: x is read through `x4`, a word per 4 columns
override GROUPS: u32 = TM / 4u;  // vec4 groups per invocation and side: 1 or 2
override TILE: u32 = WG * TM;
override TILE4: u32 = TILE / 4u;
override SLAB: u32 = BK * TILE4; // vec4 words per slab and operand
override LOADS: u32 = (SLAB + WG * WG - 1u) / (WG * WG); // words staged per invocation: 1-4

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
    group: u32,       // this dispatch group within the batch (piece_base / pieces per group)
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
@group(0) @binding(11) var<storage, read> runs: array<vec4<u32>>;    // per group: (first piece, count, bin, -)
@group(0) @binding(12) var<storage, read_write> totals: array<f32>;  // per bin: triangle, w x
@group(0) @binding(13) var<storage, read_write> partial_sx: array<f32>; // per (piece, tile): w x
@group(0) @binding(14) var<storage, read> x4: array<vec4<f32>>;     // x again, when VEC_X
@group(0) @binding(15) var<storage, read> run_counts: array<u32>;    // runs per dispatch group

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

// Two slabs of each operand: the invocations fill one while they multiply from the other,
// so one barrier per slab suffices (see syrk_tiles).
var<workgroup> a_slab: array<vec4<f32>, 2u * SLAB>;
var<workgroup> b_slab: array<vec4<f32>, 2u * SLAB>;

fn weight_of(v: f32) -> f32 {
    if WEIGHT_MODE == 1u {
        return v;
    }
    if WEIGHT_MODE == 2u {
        return v * v;
    }
    return 1.0;
}

// Columns c .. c + 3 of sample `row` (zero past d); c is a multiple of 4.
fn load4(row: u32, c: u32) -> vec4<f32> {
    if VEC_X {
        // d is a multiple of 4 (the launcher sets VEC_X only then): whole words or none.
        if c < p.dim {
            return x4[(row * p.dim + c) / 4u];
        }
        return vec4<f32>(0.0);
    }
    let at = row * p.dim + c;
    if c + 3u < p.dim {
        return vec4<f32>(x[at], x[at + 1u], x[at + 2u], x[at + 3u]);
    }
    var v = vec4<f32>(0.0);
    if c < p.dim {
        v.x = x[at];
    }
    if c + 1u < p.dim {
        v.y = x[at + 1u];
    }
    if c + 2u < p.dim {
        v.z = x[at + 2u];
    }
    return v;
}

// Word e of the slab at sample s0 of the piece: sample s0 + e / TILE4, columns 4 (e % TILE4)
// .. + 3 of the row block (a, weighted) and of the column block (b); zero past the piece.
struct SlabWord {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn fetch(e: u32, s0: u32, len: u32, start: u32, i0: u32, j0: u32) -> SlabWord {
    let s = s0 + e / TILE4;
    let c = 4u * (e % TILE4);
    var out = SlabWord(vec4<f32>(0.0), vec4<f32>(0.0));
    if e < SLAB && s < len {
        var row = start + s;
        if USE_PERM {
            row = perm[row];
        }
        out.a = weight_of(y[row]) * load4(row, i0 + c);
        out.b = load4(row, j0 + c);
    }
    return out;
}

fn store(buf: u32, e: u32, w: SlabWord) {
    if e < SLAB {
        a_slab[buf * SLAB + e] = w.a;
        b_slab[buf * SLAB + e] = w.b;
    }
}

// One partial output row: 4 columns of `v` at tile row `row`, columns from `col`.
fn put(base: u32, row: u32, col: u32, v: vec4<f32>) {
    let at = base + row * TILE + col;
    partial[at] = v.x;
    partial[at + 1u] = v.y;
    partial[at + 2u] = v.z;
    partial[at + 3u] = v.w;
}

// An invocation owns rows 4 (g WG + bi) + r and columns 4 (h WG + bj) .. + 3 of the tile for
// g, h < GROUPS, r < 4: accumulator c{g}{h}_{r}, with (bi, bj) = (lid.y, lid.x). The
// accumulators are named variables, not an array, so they stay in registers on every
// compiler; with TM = 4 only the c00 ones are used. Diagonal tiles skip blocks wholly below the
// diagonal (their transposes are computed): with TM = 8 the block g = 1, h = 0, a quarter of
// the tile; with TM = 4 the first WG (WG + 1) / 2 invocations take the blocks bi <= bj in
// order and the others, whole warps of them, only stage samples: almost half the tile.
@compute @workgroup_size(WG, WG)
fn syrk_tiles(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let pair = pairs[wid.x];
    // A read-only load at a workgroup-uniform index: uniform, so the barriers below sit in
    // uniform control flow.
    let piece = pieces[p.piece_base + wid.y];
    let len = min(piece.y, CHUNK);
    // An empty piece slot (the device's sort plans for the most pieces a batch can have).
    if len == 0u {
        return;
    }
    let i0 = pair.x * TILE;
    let j0 = pair.y * TILE;
    let diag = pair.x == pair.y;
    let tid = lid.y * WG + lid.x;
    let step = WG * WG;
    var bi = lid.y;
    var bj = lid.x;
    var owns_block = true;
    if diag && GROUPS == 1u {
        // Invocation t takes the t-th block of the upper triangle, row by row.
        var t = tid;
        var row = 0u;
        while row < WG && t >= WG - row {
            t -= WG - row;
            row++;
        }
        owns_block = row < WG;
        bi = row;
        bj = row + t;
    }
    var c00_0 = vec4<f32>(0.0); var c00_1 = vec4<f32>(0.0);
    var c00_2 = vec4<f32>(0.0); var c00_3 = vec4<f32>(0.0);
    var c01_0 = vec4<f32>(0.0); var c01_1 = vec4<f32>(0.0);
    var c01_2 = vec4<f32>(0.0); var c01_3 = vec4<f32>(0.0);
    var c10_0 = vec4<f32>(0.0); var c10_1 = vec4<f32>(0.0);
    var c10_2 = vec4<f32>(0.0); var c10_3 = vec4<f32>(0.0);
    var c11_0 = vec4<f32>(0.0); var c11_1 = vec4<f32>(0.0);
    var c11_2 = vec4<f32>(0.0); var c11_3 = vec4<f32>(0.0);
    var sx0 = vec4<f32>(0.0);
    var sx1 = vec4<f32>(0.0);

    // Slab 0 into buffer 0. Each invocation stages LOADS words of each operand per slab.
    var w0 = fetch(tid, 0u, len, piece.x, i0, j0);
    var w1 = w0;
    var w2 = w0;
    var w3 = w0;
    if LOADS > 1u { w1 = fetch(tid + step, 0u, len, piece.x, i0, j0); }
    if LOADS > 2u { w2 = fetch(tid + 2u * step, 0u, len, piece.x, i0, j0); }
    if LOADS > 3u { w3 = fetch(tid + 3u * step, 0u, len, piece.x, i0, j0); }
    store(0u, tid, w0);
    if LOADS > 1u { store(0u, tid + step, w1); }
    if LOADS > 2u { store(0u, tid + 2u * step, w2); }
    if LOADS > 3u { store(0u, tid + 3u * step, w3); }
    workgroupBarrier();

    let slabs = (len + BK - 1u) / BK;
    for (var s = 0u; s < slabs; s++) {
        let buf = s & 1u;
        let more = s + 1u < slabs;
        // The next slab's loads are in flight while this one is multiplied.
        if more {
            let s0 = (s + 1u) * BK;
            w0 = fetch(tid, s0, len, piece.x, i0, j0);
            if LOADS > 1u { w1 = fetch(tid + step, s0, len, piece.x, i0, j0); }
            if LOADS > 2u { w2 = fetch(tid + 2u * step, s0, len, piece.x, i0, j0); }
            if LOADS > 3u { w3 = fetch(tid + 3u * step, s0, len, piece.x, i0, j0); }
        }
        if owns_block {
            for (var k = 0u; k < BK; k++) {
                let at = buf * SLAB + k * TILE4;
                let a0 = a_slab[at + bi];
                let b0 = b_slab[at + bj];
                c00_0 = fma(vec4<f32>(a0.x), b0, c00_0);
                c00_1 = fma(vec4<f32>(a0.y), b0, c00_1);
                c00_2 = fma(vec4<f32>(a0.z), b0, c00_2);
                c00_3 = fma(vec4<f32>(a0.w), b0, c00_3);
                if diag {
                    sx0 += a0;
                }
                if GROUPS > 1u {
                    let a1 = a_slab[at + WG + bi];
                    let b1 = b_slab[at + WG + bj];
                    c01_0 = fma(vec4<f32>(a0.x), b1, c01_0);
                    c01_1 = fma(vec4<f32>(a0.y), b1, c01_1);
                    c01_2 = fma(vec4<f32>(a0.z), b1, c01_2);
                    c01_3 = fma(vec4<f32>(a0.w), b1, c01_3);
                    c11_0 = fma(vec4<f32>(a1.x), b1, c11_0);
                    c11_1 = fma(vec4<f32>(a1.y), b1, c11_1);
                    c11_2 = fma(vec4<f32>(a1.z), b1, c11_2);
                    c11_3 = fma(vec4<f32>(a1.w), b1, c11_3);
                    if diag {
                        sx1 += a1;
                    } else {
                        c10_0 = fma(vec4<f32>(a1.x), b0, c10_0);
                        c10_1 = fma(vec4<f32>(a1.y), b0, c10_1);
                        c10_2 = fma(vec4<f32>(a1.z), b0, c10_2);
                        c10_3 = fma(vec4<f32>(a1.w), b0, c10_3);
                    }
                }
            }
        }
        // The other buffer was last read before the previous barrier: safe to refill.
        if more {
            let nb = 1u - buf;
            store(nb, tid, w0);
            if LOADS > 1u { store(nb, tid + step, w1); }
            if LOADS > 2u { store(nb, tid + 2u * step, w2); }
            if LOADS > 3u { store(nb, tid + 3u * step, w3); }
        }
        workgroupBarrier();
    }

    if !owns_block {
        return;
    }
    let base = (wid.y * p.pair_count + wid.x) * TILE * TILE;
    let r0 = 4u * bi;
    let q0 = 4u * bj;
    put(base, r0, q0, c00_0);
    put(base, r0 + 1u, q0, c00_1);
    put(base, r0 + 2u, q0, c00_2);
    put(base, r0 + 3u, q0, c00_3);
    if GROUPS > 1u {
        let r1 = r0 + 4u * WG;
        let q1 = q0 + 4u * WG;
        put(base, r0, q1, c01_0);
        put(base, r0 + 1u, q1, c01_1);
        put(base, r0 + 2u, q1, c01_2);
        put(base, r0 + 3u, q1, c01_3);
        put(base, r1, q0, c10_0);
        put(base, r1 + 1u, q0, c10_1);
        put(base, r1 + 2u, q0, c10_2);
        put(base, r1 + 3u, q0, c10_3);
        put(base, r1, q1, c11_0);
        put(base, r1 + 1u, q1, c11_1);
        put(base, r1 + 2u, q1, c11_2);
        put(base, r1 + 3u, q1, c11_3);
    }
    // One invocation per row block writes the w x sums: the one on the diagonal.
    if diag && bi == bj {
        let sbase = (wid.y * p.tiles + pair.x) * TILE;
        for (var r = 0u; r < 4u; r++) {
            partial_sx[sbase + r0 + r] = sx0[r];
            if GROUPS > 1u {
                partial_sx[sbase + r0 + 4u * WG + r] = sx1[r];
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
    // The group's runs start at its first piece slot; dispatches may hold spare run slots.
    if wid.z >= run_counts[p.group] {
        return;
    }
    let run = runs[p.piece_base + wid.z];
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
