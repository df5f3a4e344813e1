// Batched evaluation of small ReLU networks on projected samples z (N x rank).
//
// `evaluate`: one invocation per (candidate, chunk of CHUNK samples). It runs the candidate's
// hidden layers, forms phi = (last hidden activations, 1), and accumulates in f32 over its
// chunk: the SSE of the full output, the packed upper triangle of phi phi^T and phi * y. Short
// chunks keep f32 error near 1e-7; the host sums in f64 across dispatches.
// `reduce`: one invocation per (candidate, statistic) sums the chunk partials of one dispatch.
//
// Layouts are candidate-minor so that neighbouring invocations (candidates) touch neighbouring
// words: params[i * cand_count + cand], partial[(chunk * stat_len + k) * cand_count + cand],
// reduced[k * cand_count + cand], with k = 0 the SSE, then the packed triangle, then phi * y.
// Limits: rank and hidden widths <= 64 (two halves of the activation array), depth <= 8.

override WG: u32 = 64u;
override CHUNK: u32 = 256u;
const HALF: u32 = 65u;

struct Info {
    sample_start: u32,
    sample_count: u32,
    cand_count: u32,
    chunk_count: u32,
    rank: u32,
    depth: u32,
    params_per: u32,
    feat: u32,
    stat_len: u32,
    tri: u32,
    pad0: u32,
    pad1: u32,
    widths: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> info: Info;
@group(0) @binding(1) var<storage, read> zs: array<f32>;
@group(0) @binding(2) var<storage, read> ys: array<f32>;
@group(0) @binding(3) var<storage, read> params: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;
@group(0) @binding(5) var<storage, read_write> reduced: array<f32>;

fn width_of(l: u32) -> u32 {
    return info.widths[l / 4u][l % 4u];
}

@compute @workgroup_size(WG)
fn evaluate(@builtin(global_invocation_id) gid: vec3<u32>) {
    let cand = gid.x;
    let chunk = gid.y;
    if (cand >= info.cand_count || chunk >= info.chunk_count) {
        return;
    }
    let cc = info.cand_count;
    let base = chunk * info.stat_len * cc + cand;
    for (var k = 0u; k < info.stat_len; k++) {
        partial[base + k * cc] = 0.0;
    }
    let first = chunk * CHUNK;
    let last = min(first + CHUNK, info.sample_count);
    let fy0 = base + (1u + info.tri) * cc;
    var act: array<f32, 130>;
    var sse = 0.0;
    for (var s = first; s < last; s++) {
        let row = info.sample_start + s;
        for (var i = 0u; i < info.rank; i++) {
            act[i] = zs[row * info.rank + i];
        }
        var width = info.rank;
        var inb = 0u;
        var off = 0u;
        for (var l = 0u; l < info.depth; l++) {
            let h = width_of(l);
            let outb = HALF - inb;
            for (var o = 0u; o < h; o++) {
                var acc = params[(off + h * width + o) * cc + cand];
                let wrow = off + o * width;
                for (var i = 0u; i < width; i++) {
                    acc += params[(wrow + i) * cc + cand] * act[inb + i];
                }
                act[outb + o] = max(acc, 0.0);
            }
            off += h * width + h;
            width = h;
            inb = outb;
        }
        act[inb + width] = 1.0;
        let yv = ys[row];
        var out = 0.0;
        for (var i = 0u; i < info.feat; i++) {
            out += params[(off + i) * cc + cand] * act[inb + i];
        }
        sse += (out - yv) * (out - yv);
        var k = base + cc;
        for (var i = 0u; i < info.feat; i++) {
            let pi = act[inb + i];
            partial[fy0 + i * cc] += pi * yv;
            for (var j = i; j < info.feat; j++) {
                partial[k] += pi * act[inb + j];
                k += cc;
            }
        }
    }
    partial[base] = sse;
}

@compute @workgroup_size(WG)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    let total = info.cand_count * info.stat_len;
    if (t >= total) {
        return;
    }
    var acc = 0.0;
    for (var c = 0u; c < info.chunk_count; c++) {
        acc += partial[c * total + t];
    }
    reduced[t] = acc;
}
