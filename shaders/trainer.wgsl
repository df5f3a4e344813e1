// The small network's passes of the trainer and of validation scoring, on rows whose inputs
// (z = B x, or x itself) are already on the device; launcher in src/backend/gpu/trainer.rs,
// f64 twin in src/backend/cpu/trainer.rs.
//
// `forward_backward`: one workgroup per block of SB rows. Layer by layer, the SB x outputs dot
// products are dealt over the workgroup's invocations (neighbouring invocations take
// neighbouring rows of one unit: they read the same weight, a broadcast, and write neighbouring
// words); each layer's outputs (after its ReLU) go to a scratch plane (unit-major, row stride
// `stride`), separated by storage barriers. Then the output delta 2 (F - y) and, layer by layer
// downwards, the deltas of each layer's inputs (masked by ReLU'(a) = [a > 0], so an input that
// is exactly 0 passes no gradient, as on the CPU), down to dLoss/dz when B is trained.
// `gradient`: one invocation per (parameter, chunk of RC rows) sums its gradient entry over the
// chunk in a register, in row order, and writes one f32 partial; the host adds the chunks in
// f64. B's entries are sum_rows dLoss/dz_j x_i (x read coalesced: neighbouring invocations take
// neighbouring i).
// `adam_step`: one invocation per trained parameter adds its chunk partials in order and takes
// Adam's step (the host's rule, in f32, with the step's scalars computed on the host in f64),
// so a whole window of minibatches runs without the host.
// `gather_rows`: one invocation per (row, column) of a window the device drew itself puts the
// window's rows in the trainer's order: win[s] = raw[order[s]] for s < rows.
// `score`: the forward pass, then each row's squared error into a scratch plane.
// `sum_squares`: one workgroup per WG RPT rows (coalesced strided reads, then a tree in
// workgroup memory) writes one f32 partial per workgroup; the host adds them in f64.
//
// Nothing is summed across workgroups on the device, and every sum runs in a fixed order, so
// the results are the same from run to run.
//
// params: the parameter vector in the trainer's layout (B first, r x d; then per layer the
// weights, outputs x inputs row-major, then the bias), f32.
// layers: per small-network layer 8 words: inputs, outputs, weight offset, bias offset (in
// params), output plane, delta plane (scratch offsets), input plane (scratch offset, or NONE:
// the `inputs` binding), unused.

override WG: u32 = 64u;   // invocations per workgroup (a power of two)
override SB: u32 = 8u;    // rows per workgroup of forward_backward and score
override RC: u32 = 256u;  // rows per gradient partial
override RPT: u32 = 8u;   // rows per invocation of sum_squares
const NONE: u32 = 0xffffffffu;

struct Info {
    rows: u32,    // rows of this dispatch
    depth: u32,   // layers of the small network
    stride: u32,  // row stride of the scratch planes (>= rows)
    in_off: u32,  // input i of row s: inputs[in_off + s in_rs + i in_cs]
    in_rs: u32,
    in_cs: u32,
    y_off: u32,   // label of row s: ys[y_off + s]
    x_off: u32,   // x of row s: xs[x_off + s d + i] (B's gradient)
    d: u32,
    r: u32,
    first: u32,   // first gradient entry summed: r d when B is fixed, else 0
    params: u32,  // length of the parameter vector
    dz_off: u32,  // scratch planes of dLoss/dz (r of them)
    sq_off: u32,  // scratch plane of squared errors (score)
    slot: u32,    // first partial written by sum_squares
    chunks: u32,  // gradient chunks of RC rows
    lr: f32,      // adam_step: this step's rate, the bias corrections 1 - b1^t and 1 - b2^t,
    c1: f32,      // and 1 / rows (the gradient of the mean squared error)
    c2: f32,
    inv_rows: f32,
}

@group(0) @binding(0) var<uniform> info: Info;
@group(0) @binding(1) var<storage, read> inputs: array<f32>;
@group(0) @binding(2) var<storage, read> xs: array<f32>;
@group(0) @binding(3) var<storage, read> ys: array<f32>;
@group(0) @binding(4) var<storage, read> params: array<f32>;
@group(0) @binding(5) var<storage, read> layers: array<u32>;
@group(0) @binding(6) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;
@group(0) @binding(8) var<storage, read_write> params_rw: array<f32>; // adam_step: the parameters
@group(0) @binding(9) var<storage, read_write> adam_m: array<f32>;
@group(0) @binding(10) var<storage, read_write> adam_v: array<f32>;
@group(0) @binding(11) var<storage, read> raw_x: array<f32>;  // gather_rows: rows as drawn
@group(0) @binding(12) var<storage, read> raw_y: array<f32>;
@group(0) @binding(13) var<storage, read> order: array<u32>;  // window row -> drawn row
@group(0) @binding(14) var<storage, read_write> win_x: array<f32>;
@group(0) @binding(15) var<storage, read_write> win_y: array<f32>;

var<workgroup> red: array<f32, WG>;

// Input i of row `row` of a layer whose inputs are plane `src` (or the `inputs` binding).
fn input_of(src: u32, i: u32, row: u32) -> f32 {
    if src == NONE {
        return inputs[info.in_off + row * info.in_rs + i * info.in_cs];
    }
    return scratch[src + i * info.stride + row];
}

// Outputs of every layer for rows first .. first + SB, into their planes.
fn forward(t: u32, first: u32) {
    for (var l = 0u; l < info.depth; l++) {
        let nin = layers[8u * l];
        let nout = layers[8u * l + 1u];
        let w = layers[8u * l + 2u];
        let b = layers[8u * l + 3u];
        let act = layers[8u * l + 4u];
        let src = layers[8u * l + 6u];
        let relu = l + 1u < info.depth;
        for (var e = t; e < SB * nout; e += WG) {
            let o = e / SB;
            let row = first + e % SB;
            if row < info.rows {
                var acc = params[b + o];
                let wo = w + o * nin;
                for (var i = 0u; i < nin; i++) {
                    acc = fma(params[wo + i], input_of(src, i, row), acc);
                }
                if relu {
                    acc = max(acc, 0.0);
                }
                scratch[act + o * info.stride + row] = acc;
            }
        }
        storageBarrier();
    }
}

@compute @workgroup_size(WG)
fn forward_backward(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = (wid.x + wid.y * nwg.x) * SB;
    // Uniform per workgroup: the barriers below stay in uniform control flow.
    if first >= info.rows {
        return;
    }
    forward(t, first);
    let top = 8u * (info.depth - 1u);
    for (var s = t; s < SB; s += WG) {
        let row = first + s;
        if row < info.rows {
            let f = scratch[layers[top + 4u] + row];
            scratch[layers[top + 5u] + row] = 2.0 * (f - ys[info.y_off + row]);
        }
    }
    storageBarrier();
    // Layer l - 1's input deltas; dLoss/dz (below the first layer) only when B is trained.
    let stop = select(0u, 1u, info.first > 0u);
    for (var l = info.depth; l > stop; l--) {
        let k = 8u * (l - 1u);
        let nin = layers[k];
        let nout = layers[k + 1u];
        let w = layers[k + 2u];
        let delta = layers[k + 5u];
        let src = layers[k + 6u];
        var dst = info.dz_off;
        if l > 1u {
            dst = layers[k - 8u + 5u];
        }
        for (var e = t; e < SB * nin; e += WG) {
            let i = e / SB;
            let row = first + e % SB;
            if row < info.rows {
                var g = 0.0;
                for (var o = 0u; o < nout; o++) {
                    g = fma(params[w + o * nin + i], scratch[delta + o * info.stride + row], g);
                }
                if l > 1u && scratch[src + i * info.stride + row] <= 0.0 {
                    g = 0.0;
                }
                scratch[dst + i * info.stride + row] = g;
            }
        }
        storageBarrier();
    }
}

@compute @workgroup_size(WG)
fn gradient(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = info.first + gid.x + gid.y * nwg.x * WG;
    if e >= info.params {
        return;
    }
    let r0 = gid.z * RC;
    let r1 = min(info.rows, r0 + RC);
    var acc = 0.0;
    let basis_len = info.r * info.d;
    if e < basis_len {
        let j = e / info.d;
        let i = e % info.d;
        let dz = info.dz_off + j * info.stride;
        for (var row = r0; row < r1; row++) {
            acc = fma(scratch[dz + row], xs[info.x_off + row * info.d + i], acc);
        }
    } else {
        var l = 0u;
        for (var k = 1u; k < info.depth; k++) {
            if layers[8u * k + 2u] <= e {
                l = k;
            }
        }
        let nin = layers[8u * l];
        let w = layers[8u * l + 2u];
        let b = layers[8u * l + 3u];
        let delta = layers[8u * l + 5u];
        let src = layers[8u * l + 6u];
        if e < b {
            let o = (e - w) / nin;
            let i = (e - w) % nin;
            let dl = delta + o * info.stride;
            for (var row = r0; row < r1; row++) {
                acc = fma(scratch[dl + row], input_of(src, i, row), acc);
            }
        } else {
            let dl = delta + (e - b) * info.stride;
            for (var row = r0; row < r1; row++) {
                acc += scratch[dl + row];
            }
        }
    }
    partials[gid.z * info.params + e] = acc;
}

@compute @workgroup_size(WG)
fn score(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = (wid.x + wid.y * nwg.x) * SB;
    if first >= info.rows {
        return;
    }
    forward(t, first);
    let out = layers[8u * (info.depth - 1u) + 4u];
    for (var s = t; s < SB; s += WG) {
        let row = first + s;
        if row < info.rows {
            let e = scratch[out + row] - ys[info.y_off + row];
            scratch[info.sq_off + row] = e * e;
        }
    }
}

@compute @workgroup_size(WG)
fn sum_squares(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let base = wid.x * WG * RPT;
    if base >= info.rows {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < RPT; k++) {
        let row = base + k * WG + t;
        if row < info.rows {
            acc += scratch[info.sq_off + row];
        }
    }
    red[t] = acc;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h /= 2u) {
        if t < h {
            red[t] += red[t + h];
        }
        workgroupBarrier();
    }
    if t == 0u {
        partials[info.slot + wid.x] = red[0];
    }
}

const B1: f32 = 0.9;
const B2: f32 = 0.999;
// 1 - B1 and 1 - B2 written out: 1.0 - B2 in f32 is 1.3e-5 off 0.001 (B2 rounds up), which
// would scale every step by 6e-6.
const ONE_MINUS_B1: f32 = 0.1;
const ONE_MINUS_B2: f32 = 0.001;
const EPS: f32 = 1e-8;

@compute @workgroup_size(WG)
fn adam_step(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = info.first + gid.x + gid.y * nwg.x * WG;
    if e >= info.params {
        return;
    }
    var g = 0.0;
    for (var c = 0u; c < info.chunks; c++) {
        g += partials[c * info.params + e];
    }
    g *= info.inv_rows;
    let m = B1 * adam_m[e] + ONE_MINUS_B1 * g;
    let v = B2 * adam_v[e] + ONE_MINUS_B2 * g * g;
    adam_m[e] = m;
    adam_v[e] = v;
    params_rw[e] -= info.lr * (m / info.c1) / (sqrt(v / info.c2) + EPS);
}

@compute @workgroup_size(WG)
fn gather_rows(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = gid.x + gid.y * nwg.x * WG;
    let s = e / info.d;
    let k = e % info.d;
    if s >= info.rows {
        return;
    }
    let src = order[s];
    win_x[e] = raw_x[src * info.d + k];
    if k == 0u {
        win_y[s] = raw_y[src];
    }
}
