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
//      then phi y. Rows past the end of the samples are all zero and add nothing.
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
const MAXPER: u32 = 16u;

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

    var cols: array<u32, MAXPER>;
    var acc: array<f32, MAXPER>;
    for (var m = 0u; m < PER; m++) {
        let k = t + m * WG;
        cols[m] = select(0u, columns_of(k), k < info.stat_len);
        acc[m] = 0.0;
    }

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
            for (var m = 0u; m < PER; m++) {
                let c = cols[m];
                acc[m] = fma(plane[base + (c & 0xffffu)], plane[base + (c >> 16u)], acc[m]);
            }
        }
        workgroupBarrier();
    }
    let out = (chunk * info.cand_count + cand) * info.stat_len;
    for (var m = 0u; m < PER; m++) {
        let k = t + m * WG;
        if k < info.stat_len {
            partial[out + k] = acc[m];
        }
    }
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
