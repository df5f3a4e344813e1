// A batch's bins and its counting sort into bin order, on the device, for the binned moments
// (launcher: src/backend/gpu/binning.rs; the SYRK that reads the result: moments.wgsl). Needs
// f64 in shaders (wgpu's SHADER_F64). Six entry points, dispatched in this order per batch:
//   bin_rows      one invocation per row: z = B^T x in f64, the cell, the label bin. A row
//                 whose z lies within the f64 error bound of an axis edge is binned as computed
//                 and copied to the near-edge list (bin, y, x), which the host rechecks with the
//                 f64 rule once per pass and corrects (moves the row's sums to the right bin).
//                 With f64 such rows are as rare as values within ~1e-13 of an edge.
//   count_blocks  one workgroup per block of BLOCK rows: the block's histogram of bins.
//   scan_bins     one workgroup per bin: each block's offset within the bin, and its total.
//   plan_pieces   one invocation: where each bin starts, its pieces of at most `chunk` rows and,
//                 per dispatch group of `group_pieces` pieces, the runs of pieces of one bin
//                 (what moments.wgsl's reduce_runs sums). A serial loop over bins and pieces,
//                 a few thousand steps.
//   scatter_rows  one workgroup per block: perm[sorted position] = row, stable within a bin
//                 (a row's rank among equal bins of its chunk, plus the bin's running offset),
//                 so the sums are the same on every run.
//   piece_stats   one workgroup per piece slot: the piece's sums of w, y, y^2 and its length,
//                 kept for the whole pass and read back once (the host adds them in f64).
// lavapipe caps an invocation at 65,535 loop iterations; the launcher checks the longest loops
// (bin_rows: r (d + edges) + label edges; plan_pieces: bins + pieces + groups).

override WG: u32 = 256u;        // invocations per workgroup (count, scan, scatter, stats)
override BLOCK: u32 = 1024u;    // rows per block of the counting sort (a multiple of WG)
override MAX_BINS: u32 = 4096u; // room for a block's histogram in workgroup memory
override WEIGHT_MODE: u32 = 0u; // 0: w = 1, 1: w = y, 2: w = y^2
override VEC_X: bool = false;   // d % 4 == 0: rows are read through `x4`, a word per 4 columns

struct Params {
    dim: u32,          // d
    rows: u32,         // rows in this batch
    rank: u32,         // r
    axis_edges: u32,   // edges per z axis
    y_edges: u32,      // label edges per cell
    y_bins: u32,       // y_edges + 1
    bins: u32,         // K
    blocks: u32,       // ceil(rows / BLOCK)
    max_pieces: u32,   // piece slots per batch
    group_pieces: u32, // pieces per SYRK dispatch group
    groups: u32,       // dispatch groups per batch: ceil(max_pieces / group_pieces)
    near_cap: u32,     // rows the near-edge list holds
    stats_base: u32,   // first slot of this batch in `stats`
    chunk: u32,        // most rows in one piece
    _pad1: u32,
    _pad2: u32,
}

struct NearCount {
    rows: atomic<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> basis: array<f64>;
@group(0) @binding(4) var<storage, read> axis_edges: array<f64>;
@group(0) @binding(5) var<storage, read> y_edges: array<f32>;
@group(0) @binding(6) var<storage, read_write> bins: array<u32>;
@group(0) @binding(7) var<storage, read_write> near: NearCount;
@group(0) @binding(8) var<storage, read_write> near_bin: array<u32>;
@group(0) @binding(9) var<storage, read_write> near_y: array<f32>;
@group(0) @binding(10) var<storage, read_write> near_x: array<f32>;
@group(0) @binding(11) var<storage, read_write> block_counts: array<u32>; // blocks x bins
@group(0) @binding(12) var<storage, read_write> bin_counts: array<u32>;   // bins
@group(0) @binding(13) var<storage, read_write> pieces: array<vec2<u32>>; // (start, length)
@group(0) @binding(14) var<storage, read_write> piece_bins: array<u32>;
@group(0) @binding(15) var<storage, read_write> runs: array<vec4<u32>>;   // per group: (first, count, bin, -)
@group(0) @binding(16) var<storage, read_write> run_counts: array<u32>;   // per group
@group(0) @binding(17) var<storage, read_write> perm: array<u32>;
@group(0) @binding(18) var<storage, read_write> stats: array<vec4<f32>>;  // (w, y, y^2, rows)
@group(0) @binding(19) var<storage, read_write> stats_bin: array<u32>;
@group(0) @binding(20) var<storage, read_write> bin_starts: array<u32>;   // bins
@group(0) @binding(21) var<storage, read> x4: array<vec4<f32>>;            // x again, when VEC_X

// 2^-52: twice f64's unit roundoff.
const TWO_ULP64: f64 = 2.220446049250313e-16lf;

@compute @workgroup_size(WG)
fn bin_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.rows {
        return;
    }
    let row = i * p.dim;
    var cell = 0u;
    var is_near = false;
    for (var j = 0u; j < p.rank; j++) {
        var z = 0.0lf;
        var s = 0.0lf;
        let b = j * p.dim;
        if VEC_X {
            for (var k = 0u; k < p.dim; k += 4u) {
                let v = x4[(row + k) / 4u];
                for (var l = 0u; l < 4u; l++) {
                    let bv = basis[b + k + l];
                    let xv = f64(v[l]);
                    z += bv * xv;
                    s += abs(bv) * abs(xv);
                }
            }
        } else {
            for (var k = 0u; k < p.dim; k++) {
                let v = f64(x[row + k]);
                z += basis[b + k] * v;
                s += abs(basis[b + k]) * abs(v);
            }
        }
        // The host sums the same d products in f64 in order; any order, fused or not, is
        // within d u S of the exact sum (u = 2^-53), so the two differ by at most d 2^-52 S.
        let band = f64(p.dim + 2u) * TWO_ULP64 * s;
        var below = 0u;
        for (var e = 0u; e < p.axis_edges; e++) {
            let edge = axis_edges[j * p.axis_edges + e];
            if edge < z {
                below++;
            }
            if abs(z - edge) <= band {
                is_near = true;
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
    let bin = cell * p.y_bins + ybin;
    bins[i] = bin;
    if is_near {
        let slot = atomicAdd(&near.rows, 1u);
        if slot < p.near_cap {
            near_bin[slot] = bin;
            near_y[slot] = yv;
            for (var k = 0u; k < p.dim; k++) {
                near_x[slot * p.dim + k] = x[row + k];
            }
        }
    }
}

var<workgroup> hist: array<atomic<u32>, MAX_BINS>;

@compute @workgroup_size(WG)
fn count_blocks(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let block = wid.x;
    for (var b = lid.x; b < p.bins; b += WG) {
        atomicStore(&hist[b], 0u);
    }
    workgroupBarrier();
    for (var t = lid.x; t < BLOCK; t += WG) {
        let i = block * BLOCK + t;
        if i < p.rows {
            atomicAdd(&hist[bins[i]], 1u);
        }
    }
    workgroupBarrier();
    for (var b = lid.x; b < p.bins; b += WG) {
        block_counts[block * p.bins + b] = atomicLoad(&hist[b]);
    }
}

var<workgroup> part: array<u32, WG>;

@compute @workgroup_size(WG)
fn scan_bins(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let b = wid.x;
    // Invocation t owns blocks [t per, (t + 1) per).
    let per = (p.blocks + WG - 1u) / WG;
    let first = lid.x * per;
    let end = min(first + per, p.blocks);
    var sum = 0u;
    for (var k = first; k < end; k++) {
        sum += block_counts[k * p.bins + b];
    }
    part[lid.x] = sum;
    workgroupBarrier();
    // Inclusive scan of the WG partial sums (Hillis-Steele).
    for (var off = 1u; off < WG; off *= 2u) {
        var v = part[lid.x];
        if lid.x >= off {
            v += part[lid.x - off];
        }
        workgroupBarrier();
        part[lid.x] = v;
        workgroupBarrier();
    }
    var run = part[lid.x] - sum;
    for (var k = first; k < end; k++) {
        let c = block_counts[k * p.bins + b];
        block_counts[k * p.bins + b] = run;
        run += c;
    }
    if lid.x == WG - 1u {
        bin_counts[b] = part[WG - 1u];
    }
}

// Runs are written when they close; the open run lives in registers (no read-after-write of
// device memory in the serial loop).
@compute @workgroup_size(1)
fn plan_pieces() {
    var start = 0u;
    var piece = 0u;
    var group = 0u;      // group of the open run
    var in_group = 0u;   // runs closed in `group`
    var run_first = 0u;  // the open run: first piece (within its group), count, bin
    var run_count = 0u;
    var run_bin = 0u;
    for (var b = 0u; b < p.bins; b++) {
        bin_starts[b] = start;
        let n = bin_counts[b];
        for (var s = 0u; s < n; s += p.chunk) {
            pieces[piece] = vec2<u32>(start + s, min(p.chunk, n - s));
            piece_bins[piece] = b;
            let g = piece / p.group_pieces;
            if run_count > 0u && (g != group || b != run_bin) {
                runs[group * p.group_pieces + in_group] = vec4<u32>(run_first, run_count, run_bin, 0u);
                in_group++;
                run_count = 0u;
            }
            if g != group {
                run_counts[group] = in_group;
                group = g;
                in_group = 0u;
            }
            if run_count == 0u {
                run_first = piece - g * p.group_pieces;
                run_bin = b;
            }
            run_count++;
            piece++;
        }
        start += n;
    }
    if run_count > 0u {
        runs[group * p.group_pieces + in_group] = vec4<u32>(run_first, run_count, run_bin, 0u);
        in_group++;
    }
    run_counts[group] = in_group;
    for (var g = group + 1u; g < p.groups; g++) {
        run_counts[g] = 0u;
    }
    for (var q = piece; q < p.max_pieces; q++) {
        pieces[q] = vec2<u32>(0u, 0u);
        piece_bins[q] = 0u;
    }
}

var<workgroup> next: array<u32, MAX_BINS>;
var<workgroup> chunk_bins: array<u32, WG>;

@compute @workgroup_size(WG)
fn scatter_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let block = wid.x;
    let none = 0xffffffffu;
    for (var b = lid.x; b < p.bins; b += WG) {
        next[b] = bin_starts[b] + block_counts[block * p.bins + b];
    }
    workgroupBarrier();
    for (var c0 = 0u; c0 < BLOCK; c0 += WG) {
        let i = block * BLOCK + c0 + lid.x;
        var b = none;
        if i < p.rows {
            b = bins[i];
        }
        chunk_bins[lid.x] = b;
        workgroupBarrier();
        var rank = 0u;
        var last = true;
        if b != none {
            for (var t = 0u; t < lid.x; t++) {
                if chunk_bins[t] == b {
                    rank++;
                }
            }
            for (var t = lid.x + 1u; t < WG; t++) {
                if chunk_bins[t] == b {
                    last = false;
                    break;
                }
            }
            perm[next[b] + rank] = i;
        }
        workgroupBarrier();
        // The bin's last row of the chunk moves the bin's offset past the chunk's rows.
        if b != none && last {
            next[b] += rank + 1u;
        }
        workgroupBarrier();
    }
}

fn weight_of(v: f32) -> f32 {
    if WEIGHT_MODE == 1u {
        return v;
    }
    if WEIGHT_MODE == 2u {
        return v * v;
    }
    return 1.0;
}

var<workgroup> red: array<vec4<f32>, WG>;
var<workgroup> piece_here: vec2<u32>;

@compute @workgroup_size(WG)
fn piece_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let slot = wid.x;
    // Broadcast, so that the loop bound below (and the barriers after it) are uniform.
    if lid.x == 0u {
        piece_here = pieces[slot];
    }
    let piece = workgroupUniformLoad(&piece_here);
    var acc = vec4<f32>(0.0);
    for (var t = lid.x; t < piece.y; t += WG) {
        let yv = y[perm[piece.x + t]];
        acc += vec4<f32>(weight_of(yv), yv, yv * yv, 0.0);
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid.x < half {
            red[lid.x] += red[lid.x + half];
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        let total = red[0];
        stats[p.stats_base + slot] = vec4<f32>(total.x, total.y, total.z, f32(piece.y));
        stats_bin[p.stats_base + slot] = piece_bins[slot];
    }
}
