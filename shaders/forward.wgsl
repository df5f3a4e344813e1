// Batched forward pass of a full ReLU network (`Network`): x (rows x d, row-major) -> one f32
// output per row.
//
// One workgroup of WG invocations evaluates a block of SB samples, layer by layer. In each
// layer the SB * outputs dot products are dealt round-robin over the workgroup's invocations,
// so one invocation runs ceil(SB * outputs / WG) dot products of length `inputs` per layer
// (the host picks SB so that this stays inside lavapipe's 65,535-iteration loop budget; a
// naive one-invocation-per-sample kernel would run d * h1 iterations for the first layer
// alone). The first layer reads x straight from storage; hidden activations live in workgroup
// memory, two planes of SB x MAXW (ping-pong), separated by barriers. Arithmetic is f32.
//
// params: per layer, the row-major weights (outputs x inputs) then the bias, as f32.
// shape: per layer 4 words: inputs, outputs, weight offset, bias offset (in params).

override WG: u32 = 64u;
override SB: u32 = 8u;
override MAXW: u32 = 256u;
const ACT_WORDS: u32 = 4096u;

struct Info {
    rows: u32,   // rows < this are evaluated (x and outs are indexed by row)
    depth: u32,
    base: u32,   // first row of this dispatch
    pad1: u32,
}

@group(0) @binding(0) var<uniform> info: Info;
@group(0) @binding(1) var<storage, read> xs: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<f32>;
@group(0) @binding(3) var<storage, read> shape: array<u32>;
@group(0) @binding(4) var<storage, read_write> outs: array<f32>;

var<workgroup> act: array<f32, ACT_WORDS>;

@compute @workgroup_size(WG)
fn forward(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let first = info.base + (wid.x + wid.y * nwg.x) * SB;
    let plane = SB * MAXW;
    var src = 0u;
    for (var l = 0u; l < info.depth; l++) {
        let nin = shape[4u * l];
        let nout = shape[4u * l + 1u];
        let woff = shape[4u * l + 2u];
        let boff = shape[4u * l + 3u];
        let dst = 1u - src;
        let last_layer = l + 1u == info.depth;
        let total = SB * nout;
        for (var idx = t; idx < total; idx += WG) {
            let s = idx / nout;
            let o = idx % nout;
            let row = first + s;
            var acc = params[boff + o];
            let w = woff + o * nin;
            if (l == 0u) {
                if (row < info.rows) {
                    let xb = row * nin;
                    for (var i = 0u; i < nin; i++) {
                        acc += params[w + i] * xs[xb + i];
                    }
                }
            } else {
                let ab = src * plane + s * MAXW;
                for (var i = 0u; i < nin; i++) {
                    acc += params[w + i] * act[ab + i];
                }
            }
            if (last_layer) {
                if (row < info.rows) {
                    outs[row] = acc;
                }
            } else {
                act[dst * plane + s * MAXW + o] = max(acc, 0.0);
            }
        }
        workgroupBarrier();
        src = dst;
    }
}
