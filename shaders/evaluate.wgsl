// Batched evaluation of small ReLU networks on projected samples z (N x rank); launcher in
// src/backend/gpu/evaluate.rs, f64 twin in src/search/evaluate_ref.rs.
//
// `evaluate`: one workgroup per (candidate, chunk of samples). The chunk is walked in tiles of
// SB samples; per tile the workgroup
//   1. copies the tile's z rows into activation plane 0 (workgroup memory, rows of STRIDE);
//   2. runs the hidden layers, the SB x width dot products of a layer dealt over the
//      invocations (neighbouring invocations take neighbouring samples of one unit, so they
//      read the same weight: a broadcast), ping-ponging between the two planes;
//   3. appends to every sample's row of features phi (last hidden activations) the constant 1,
//      the label y and the residual e = output - y, so that row is A = (phi, 1, y, e);
//   4. adds A_a A_b over the tile into registers, every invocation owning up to MAXPER of the
//      stat_len statistics: k = 0 the SSE (e e), then the packed upper triangle of phi phi^T,
//      then phi y. Rows past the end of the samples are all zero and add nothing. The sums sit
//      in MAXPER scalar registers a0..a15 (a run-time-indexed private array may live in local
//      memory); the slots from PER on are skipped by pipeline-constant conditions.
// Nothing is read or written in global memory per sample except z and y; each workgroup writes
// its stat_len f32 sums once, to partial[(chunk * cand_count + cand) * stat_len + k].
// `reduce`: one invocation per (candidate, statistic) adds the chunk partials of a dispatch.
//
// Limits (checked by the launcher): rank and hidden widths such that 2 SB STRIDE words fit the
// adapter's workgroup memory, stat_len <= WG * MAXPER; any depth.
//
// params: candidate-major, each candidate's parameters packed layer by layer (weights row-major
// out x in, then biases; the output weights and bias last).
// shape: per hidden layer 4 words: inputs, outputs, weight offset, bias offset (in a candidate).

override WG: u32 = 64u;      // invocations per workgroup
override SB: u32 = 32u;      // samples per tile
override STRIDE: u32 = 8u;   // row stride of a plane: >= max(rank, hidden widths) + 3
override PER: u32 = 1u;      // statistics per invocation: ceil(stat_len / WG) <= MAXPER
override TILES: u32 = 8u;    // tiles per chunk: a chunk is SB * TILES samples
const MAXPER: u32 = 16u;   // statistic slots a0..a15

struct Info {
    sample_start: u32, // first sample of this dispatch
    sample_count: u32, // samples in this dispatch
    cand_count: u32,   // candidates in this dispatch
    chunk_count: u32,  // chunks in this dispatch
    rank: u32,
    depth: u32,        // hidden layers
    params_per: u32,   // parameters per candidate
    feat: u32,         // f = last hidden width + 1
    stat_len: u32,     // 1 + f (f + 1) / 2 + f
    tri: u32,          // f (f + 1) / 2
    out_off: u32,      // offset of the output weights in a candidate
    pad: u32,
}

@group(0) @binding(0) var<uniform> info: Info;
@group(0) @binding(1) var<storage, read> zs: array<f32>;
@group(0) @binding(2) var<storage, read> ys: array<f32>;
@group(0) @binding(3) var<storage, read> params: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;
@group(0) @binding(5) var<storage, read_write> reduced: array<f32>;
@group(0) @binding(6) var<storage, read> shape: array<u32>;

var<workgroup> plane: array<f32, 2u * SB * STRIDE>;

// Columns (a, b) of A whose product statistic k sums; packed as a | b << 16.
fn columns_of(k: u32) -> u32 {
    let f = info.feat;
    if k == 0u {
        return (f + 1u) | ((f + 1u) << 16u);
    }
    if k <= info.tri {
        var q = k - 1u;
        var i = 0u;
        while q >= f - i {
            q -= f - i;
            i++;
        }
        return i | ((i + q) << 16u);
    }
    return (k - 1u - info.tri) | (f << 16u);
}

// Columns of this invocation's statistic m (k = t + m WG), packed as in columns_of; 0 for a
// slot past PER or a statistic past the end (computed, never written).
fn slot_columns(t: u32, m: u32) -> u32 {
    let k = t + m * WG;
    if m < PER && k < info.stat_len {
        return columns_of(k);
    }
    return 0u;
}

// a + A_a A_b for the row of A at `base` and the columns c.
fn product(base: u32, c: u32, a: f32) -> f32 {
    return fma(plane[base + (c & 0xffffu)], plane[base + (c >> 16u)], a);
}

// Writes this invocation's statistic m when the slot is live and the statistic exists.
fn put(out: u32, t: u32, m: u32, a: f32) {
    let k = t + m * WG;
    if m < PER && k < info.stat_len {
        partial[out + k] = a;
    }
}

@compute @workgroup_size(WG)
fn evaluate(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    // Uniform per workgroup: the barriers below stay in uniform control flow.
    if g >= info.cand_count * info.chunk_count {
        return;
    }
    let cand = g % info.cand_count;
    let chunk = g / info.cand_count;
    let pbase = cand * info.params_per;
    let rank = info.rank;

    // Statistic slots: slot m is live when m < PER (a pipeline constant).
    let c0 = slot_columns(t, 0u);
    let c1 = slot_columns(t, 1u);
    let c2 = slot_columns(t, 2u);
    let c3 = slot_columns(t, 3u);
    let c4 = slot_columns(t, 4u);
    let c5 = slot_columns(t, 5u);
    let c6 = slot_columns(t, 6u);
    let c7 = slot_columns(t, 7u);
    let c8 = slot_columns(t, 8u);
    let c9 = slot_columns(t, 9u);
    let c10 = slot_columns(t, 10u);
    let c11 = slot_columns(t, 11u);
    let c12 = slot_columns(t, 12u);
    let c13 = slot_columns(t, 13u);
    let c14 = slot_columns(t, 14u);
    let c15 = slot_columns(t, 15u);
    var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
    var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
    var a8 = 0.0; var a9 = 0.0; var a10 = 0.0; var a11 = 0.0;
    var a12 = 0.0; var a13 = 0.0; var a14 = 0.0; var a15 = 0.0;

    let first = chunk * SB * TILES;
    let last = min(first + SB * TILES, info.sample_count);
    let half = SB * STRIDE;
    for (var s0 = first; s0 < last; s0 += SB) {
        // 1. z rows of the tile (zero past the end).
        for (var e = t; e < SB * rank; e += WG) {
            let s = e / rank;
            let i = e % rank;
            var v = 0.0;
            if s0 + s < last {
                v = zs[(info.sample_start + s0 + s) * rank + i];
            }
            plane[s * STRIDE + i] = v;
        }
        workgroupBarrier();
        // 2. Hidden layers.
        var src = 0u;
        var width = rank;
        for (var l = 0u; l < info.depth; l++) {
            let h = shape[4u * l + 1u];
            let woff = pbase + shape[4u * l + 2u];
            let boff = pbase + shape[4u * l + 3u];
            let dst = 1u - src;
            for (var e = t; e < SB * h; e += WG) {
                let o = e / SB;
                let s = e % SB;
                var pre = params[boff + o];
                let w = woff + o * width;
                let a = src * half + s * STRIDE;
                for (var i = 0u; i < width; i++) {
                    pre = fma(params[w + i], plane[a + i], pre);
                }
                plane[dst * half + s * STRIDE + o] = max(pre, 0.0);
            }
            workgroupBarrier();
            src = dst;
            width = h;
        }
        // 3. Rows A = (phi, 1, y, e); all zero past the end of the samples.
        let fb = src * half;
        let ow = pbase + info.out_off;
        for (var s = t; s < SB; s += WG) {
            let base = fb + s * STRIDE;
            if s0 + s < last {
                let yv = ys[info.sample_start + s0 + s];
                var out = params[ow + width];
                for (var i = 0u; i < width; i++) {
                    out = fma(params[ow + i], plane[base + i], out);
                }
                plane[base + width] = 1.0;
                plane[base + width + 1u] = yv;
                plane[base + width + 2u] = out - yv;
            } else {
                for (var i = 0u; i < width + 3u; i++) {
                    plane[base + i] = 0.0;
                }
            }
        }
        workgroupBarrier();
        // 4. Products into registers.
        for (var s = 0u; s < SB; s++) {
            let base = fb + s * STRIDE;
            a0 = product(base, c0, a0);
            if PER > 1u { a1 = product(base, c1, a1); }
            if PER > 2u { a2 = product(base, c2, a2); }
            if PER > 3u { a3 = product(base, c3, a3); }
            if PER > 4u { a4 = product(base, c4, a4); }
            if PER > 5u { a5 = product(base, c5, a5); }
            if PER > 6u { a6 = product(base, c6, a6); }
            if PER > 7u { a7 = product(base, c7, a7); }
            if PER > 8u { a8 = product(base, c8, a8); }
            if PER > 9u { a9 = product(base, c9, a9); }
            if PER > 10u { a10 = product(base, c10, a10); }
            if PER > 11u { a11 = product(base, c11, a11); }
            if PER > 12u { a12 = product(base, c12, a12); }
            if PER > 13u { a13 = product(base, c13, a13); }
            if PER > 14u { a14 = product(base, c14, a14); }
            if PER > 15u { a15 = product(base, c15, a15); }
        }
        workgroupBarrier();
    }
    let out = (chunk * info.cand_count + cand) * info.stat_len;
    put(out, t, 0u, a0);
    put(out, t, 1u, a1);
    put(out, t, 2u, a2);
    put(out, t, 3u, a3);
    put(out, t, 4u, a4);
    put(out, t, 5u, a5);
    put(out, t, 6u, a6);
    put(out, t, 7u, a7);
    put(out, t, 8u, a8);
    put(out, t, 9u, a9);
    put(out, t, 10u, a10);
    put(out, t, 11u, a11);
    put(out, t, 12u, a12);
    put(out, t, 13u, a13);
    put(out, t, 14u, a14);
    put(out, t, 15u, a15);
}

@compute @workgroup_size(WG)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = gid.x + gid.y * nwg.x * WG;
    let total = info.cand_count * info.stat_len;
    if q >= total {
        return;
    }
    var acc = 0.0;
    for (var c = 0u; c < info.chunk_count; c++) {
        acc += partial[c * total + q];
    }
    reduced[q] = acc;
}
