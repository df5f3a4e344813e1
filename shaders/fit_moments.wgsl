// Sums for one Gauss-Newton step of a basis B (src/moments.rs `FitMoments`; launcher in
// src/backend/gpu/fit.rs). Per sample: z = B x (R values), the fit's output h(z) and gradient
// g = grad_z h(z), the residual e = y - h(z); summed: cross = e x g^T (d x R), gram = g g^T,
// sse = e^2.
//
// One workgroup per chunk of CHUNK consecutive samples (one f32 partial per chunk, added up in
// f64 on the host). The chunk is walked in blocks of SB samples:
//   phase 1  each invocation takes SB / WG samples of the block: z, forward and backward pass
//            of the network, then g and e go to workgroup memory;
//   phase 2  invocations split the M = d + R + 1 output rows: row i < d sums x_i e g^T (x read
//            straight from storage: for one sample, neighbouring invocations read neighbouring
//            words), rows d..d+R sum g_a g^T, row d + R sums e^2 (column 0). Each block's sums
//            are added to the chunk's partial, which the workgroup owns (no atomics).
// So an f32 sum runs over at most SB terms, and a partial over at most CHUNK / SB block sums.
//
// The rank R is any size: z and g live in workgroup memory (rows of RP = R rounded up to JB),
// and loops over the rank run in register groups of JB columns (z = B x in phase 1, the sums of
// phase 2), so no private array depends on R. The host pads the basis with zero rows to RP.
//
// lavapipe stops an invocation after 65,535 loop iterations in total, silently; the host
// counts this kernel's loops per chunk (fit.rs `loop_cost`) and shortens CHUNK to fit.
//
// net: every layer's row-major weights (out x in), then its biases, as f32.
// shape: per layer 4 words: inputs, outputs, weight offset, bias offset (in net).

override WG: u32 = 64u;      // invocations per workgroup
override SB: u32 = 128u;     // samples per block (a multiple of WG)
override CHUNK: u32 = 4096u; // samples per partial (a multiple of SB)
override R: u32 = 1u;        // basis rank = network inputs
override DEEP: bool = false; // true: two or more hidden layers (activations go to `scratch`)
const JB: u32 = 8u;          // rank columns per register group
override RP: u32 = (R + JB - 1u) / JB * JB; // R rounded up to whole groups

struct Info {
    rows: u32,   // samples in this dispatch
    dim: u32,    // d
    depth: u32,  // layers, output layer included
    m: u32,      // output rows: d + R + 1
    base: u32,   // first sample of this dispatch in the bound x and y
    chunks: u32, // chunk partials this dispatch writes
    slot: u32,   // where reduce_chunks puts their sum in `sums` (units of m R words)
    pad: u32,
}

@group(0) @binding(0) var<uniform> info: Info;
@group(0) @binding(1) var<storage, read> xs: array<f32>;
@group(0) @binding(2) var<storage, read> ys: array<f32>;
@group(0) @binding(3) var<storage, read> basis: array<f32>;
@group(0) @binding(4) var<storage, read> net: array<f32>;
@group(0) @binding(5) var<storage, read> shape: array<u32>;
@group(0) @binding(6) var<storage, read_write> partial: array<f32>;
// Deep networks only: sum of hidden widths f32 words per invocation of the dispatch.
@group(0) @binding(7) var<storage, read_write> scratch: array<f32>;
// Per dispatch, the sum of its chunk partials (reduce_chunks); read back once per pass.
@group(0) @binding(8) var<storage, read_write> sums: array<f32>;

// Per sample of the block: z (phase 1) and g (the network pass), RP words each; e.
var<workgroup> z_sh: array<f32, SB * RP>;
var<workgroup> g_sh: array<f32, SB * RP>;
var<workgroup> e_sh: array<f32, SB>;

// No hidden layer, or one: the hidden units are streamed, nothing is stored. Reads z from and
// writes g (zero in the padding columns) to row `zb` of z_sh / g_sh; returns the output.
fn eval_shallow(zb: u32) -> f32 {
    for (var j = 0u; j < RP; j++) {
        g_sh[zb + j] = 0.0;
    }
    if info.depth == 1u {
        let woff = shape[2];
        var out = net[shape[3]];
        for (var j = 0u; j < R; j++) {
            let w = net[woff + j];
            out = fma(w, z_sh[zb + j], out);
            g_sh[zb + j] = w;
        }
        return out;
    }
    let h = shape[1];
    let woff = shape[2];
    let boff = shape[3];
    let voff = shape[6];
    var out = net[shape[7]];
    for (var o = 0u; o < h; o++) {
        var pre = net[boff + o];
        for (var j = 0u; j < R; j++) {
            pre = fma(net[woff + o * R + j], z_sh[zb + j], pre);
        }
        // ReLU'(0) = 0, as on the CPU.
        if pre > 0.0 {
            let v = net[voff + o];
            out = fma(v, pre, out);
            for (var j = 0u; j < R; j++) {
                g_sh[zb + j] = fma(v, net[woff + o * R + j], g_sh[zb + j]);
            }
        }
    }
    return out;
}

// Two or more hidden layers: forward pass keeping every hidden activation in this invocation's
// slot of `scratch` (element k at k * stride + slot, so neighbouring invocations touch
// neighbouring words), then the backward pass overwrites each layer's activations with its
// deltas (d out / d pre-activation). A large private array would do the same, but lavapipe
// takes seconds to compile one.
fn eval_deep(zb: u32, slot: u32, stride: u32) -> f32 {
    let last = info.depth - 1u;
    var in_off = 0u;
    var out_off = 0u;
    for (var l = 0u; l < last; l++) {
        let nin = shape[4u * l];
        let nout = shape[4u * l + 1u];
        let woff = shape[4u * l + 2u];
        let boff = shape[4u * l + 3u];
        for (var o = 0u; o < nout; o++) {
            var pre = net[boff + o];
            let w = woff + o * nin;
            if l == 0u {
                for (var j = 0u; j < R; j++) {
                    pre = fma(net[w + j], z_sh[zb + j], pre);
                }
            } else {
                for (var i = 0u; i < nin; i++) {
                    pre = fma(net[w + i], scratch[(in_off + i) * stride + slot], pre);
                }
            }
            scratch[(out_off + o) * stride + slot] = max(pre, 0.0);
        }
        in_off = out_off;
        out_off += nout;
    }
    // Output layer; its weights are the deltas of the last hidden layer's active units.
    let top_in = shape[4u * last];
    let top_w = shape[4u * last + 2u];
    var out = net[shape[4u * last + 3u]];
    for (var i = 0u; i < top_in; i++) {
        let k = (in_off + i) * stride + slot;
        let a = scratch[k];
        let w = net[top_w + i];
        out = fma(w, a, out);
        scratch[k] = select(0.0, w, a > 0.0);
    }
    // Hidden layers last-1 .. 1: delta of layer l-1 = mask * W_l^T delta_l.
    var cur = in_off;
    for (var l = last - 1u; l >= 1u; l--) {
        let nin = shape[4u * l];
        let nout = shape[4u * l + 1u];
        let woff = shape[4u * l + 2u];
        let below = cur - nin;
        for (var i = 0u; i < nin; i++) {
            var s = 0.0;
            for (var o = 0u; o < nout; o++) {
                s = fma(scratch[(cur + o) * stride + slot], net[woff + o * nin + i], s);
            }
            let k = (below + i) * stride + slot;
            scratch[k] = select(0.0, s, scratch[k] > 0.0);
        }
        cur = below;
    }
    // First layer: g = W_0^T delta_0.
    let h0 = shape[1];
    let w0 = shape[2];
    for (var j = 0u; j < RP; j++) {
        var s = 0.0;
        if j < R {
            for (var o = 0u; o < h0; o++) {
                s = fma(scratch[o * stride + slot], net[w0 + o * R + j], s);
            }
        }
        g_sh[zb + j] = s;
    }
    return out;
}

@compute @workgroup_size(WG)
fn fit_moments(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let d = info.dim;
    let slot = wid.x * WG + t;
    let stride = nwg.x * WG;
    let chunk_start = wid.x * CHUNK;
    let chunk_end = min(chunk_start + CHUNK, info.rows);
    let out = wid.x * info.m * R;
    for (var b0 = chunk_start; b0 < chunk_end; b0 += SB) {
        let nb = min(SB, chunk_end - b0);
        // Phase 1: per-sample network pass.
        for (var s = t; s < nb; s += WG) {
            let row = info.base + b0 + s;
            let zb = s * RP;
            // z = B x, JB basis rows at a time in registers (x re-read per group, from cache).
            for (var j0 = 0u; j0 < RP; j0 += JB) {
                var z: array<f32, JB>;
                for (var j = 0u; j < JB; j++) {
                    z[j] = 0.0;
                }
                for (var i = 0u; i < d; i++) {
                    let xv = xs[row * d + i];
                    for (var j = 0u; j < JB; j++) {
                        z[j] = fma(basis[(j0 + j) * d + i], xv, z[j]);
                    }
                }
                for (var j = 0u; j < JB; j++) {
                    z_sh[zb + j0 + j] = z[j];
                }
            }
            var out: f32;
            if DEEP {
                out = eval_deep(zb, slot, stride);
            } else {
                out = eval_shallow(zb);
            }
            e_sh[s] = ys[row] - out;
        }
        workgroupBarrier();
        // Phase 2: this block's sums, one output row and JB columns at a time.
        for (var i = t; i < info.m; i += WG) {
            for (var j0 = 0u; j0 < RP; j0 += JB) {
                var acc: array<f32, JB>;
                for (var j = 0u; j < JB; j++) {
                    acc[j] = 0.0;
                }
                if i < d {
                    for (var s = 0u; s < nb; s++) {
                        let xe = xs[(info.base + b0 + s) * d + i] * e_sh[s];
                        for (var j = 0u; j < JB; j++) {
                            acc[j] = fma(xe, g_sh[s * RP + j0 + j], acc[j]);
                        }
                    }
                } else if i < d + R {
                    let a = i - d;
                    for (var s = 0u; s < nb; s++) {
                        let ga = g_sh[s * RP + a];
                        for (var j = 0u; j < JB; j++) {
                            acc[j] = fma(ga, g_sh[s * RP + j0 + j], acc[j]);
                        }
                    }
                } else if j0 == 0u {
                    for (var s = 0u; s < nb; s++) {
                        acc[0] = fma(e_sh[s], e_sh[s], acc[0]);
                    }
                }
                let first = b0 == chunk_start;
                for (var j = 0u; j < JB; j++) {
                    if j0 + j < R {
                        let k = out + i * R + j0 + j;
                        partial[k] = select(partial[k] + acc[j], acc[j], first);
                    }
                }
            }
        }
        workgroupBarrier();
    }
}

// One invocation per output word: the sum of this dispatch's chunk partials, in blocks of 16
// (shorter f32 chains than one running sum), into slot `info.slot` of `sums`.
@compute @workgroup_size(WG)
fn reduce_chunks(@builtin(global_invocation_id) gid: vec3<u32>) {
    let words = info.m * R;
    let e = gid.x;
    if e >= words {
        return;
    }
    var total = 0.0;
    for (var c0 = 0u; c0 < info.chunks; c0 += 16u) {
        var block = 0.0;
        for (var c = c0; c < min(c0 + 16u, info.chunks); c++) {
            block += partial[c * words + e];
        }
        total += block;
    }
    sums[info.slot * words + e] = total;
}
