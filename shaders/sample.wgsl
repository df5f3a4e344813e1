// Gaussian samples generated on the device: the counter-based stream of src/data/philox.rs
// (Philox 4x32-10 and its integer Box-Muller transform), bit for bit; launcher in
// src/backend/gpu/sample.rs. Every step is integer arithmetic on 32-bit words (64-bit values
// are vec2<u32> (lo, hi), products built from 16-bit halves) except the last, an exact
// conversion of a 24-bit integer scaled by a power of two, so neither fused multiply-adds nor
// the device's float square root change a bit (the square root's float guess is corrected by
// exact integer steps to the unique integer root).
//
// Entry points, one invocation per item:
//   philox_words   raw Philox words of counters (first_row + i, group, stream) (tests)
//   sample_x       the inputs: one counter = 4 columns of one row (the last group of a row
//                  drops columns >= dim); with a group column (group_count > 0) column `dim`
//                  holds the row's group, as RoundSource writes it on the host
//   centre_x       x[:, :dim] -= centre (its own pass: the subtraction must see the rounded x)
//   finish_labels  y = y + noise_sd * noise(row) - h (h: the residual model's output)
//
// `tables` holds the transform's tables (philox.rs): cos[256], sin[256] (Q31), log inverse[64]
// (Q31), -ln c_j [64] (Q58, lo/hi), h coefficients [6] (Q31), ln 2 (Q58, lo/hi), pi/2 (Q31).

override WG: u32 = 256u;

struct Params {
    rows: u32,          // rows in this batch
    dim: u32,           // columns drawn per row
    stride: u32,        // floats per row of x (dim, or dim + 1 with a group column)
    groups_per_row: u32,// ceil(dim / 4)
    row_lo: u32,        // stream row of batch row 0
    row_hi: u32,
    key_lo: u32,        // Philox key (the seed)
    key_hi: u32,
    stream: u32,        // counter word 3 (philox_words)
    group_count: u32,   // groups of the group column; 0: none
    gbase_lo: u32,      // splitmix state of batch row 0 of the group column
    gbase_hi: u32,
    pow32_mod: u32,     // 2^32 mod group_count
    noise_sd: f32,
    has_residual: u32,
    word_group: u32,    // counter word 0 (philox_words)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tables: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> centre: array<f32>;
@group(0) @binding(5) var<storage, read> h: array<f32>;
@group(0) @binding(6) var<storage, read_write> words: array<u32>;

const COS_AT: u32 = 0u;
const SIN_AT: u32 = 256u;
const INV_AT: u32 = 512u;
const NLN_AT: u32 = 576u;
const H_AT: u32 = 704u;
const LN2_AT: u32 = 710u;
const PI_HALF_AT: u32 = 712u;

const M0: u32 = 0xD2511F53u;
const M1: u32 = 0xCD9E8D57u;
const W0: u32 = 0x9E3779B9u;
const W1: u32 = 0xBB67AE85u;

// ---- 64-bit arithmetic on (lo, hi) ----

fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((mid << 16u) | (p00 & 0xffffu), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

fn gt64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x > b.x);
}

// a >> n for n in 0..63.
fn shr64(a: vec2<u32>, n: u32) -> vec2<u32> {
    if n == 0u {
        return a;
    }
    if n < 32u {
        return vec2<u32>((a.x >> n) | (a.y << (32u - n)), a.y >> n);
    }
    return vec2<u32>(a.y >> (n - 32u), 0u);
}

// a << n for n in 0..31.
fn shl64(a: vec2<u32>, n: u32) -> vec2<u32> {
    if n == 0u {
        return a;
    }
    return vec2<u32>(a.x << n, (a.y << n) | (a.x >> (32u - n)));
}

fn bits64(a: vec2<u32>) -> i32 {
    if a.y != 0u {
        return 64 - i32(countLeadingZeros(a.y));
    }
    return 32 - i32(countLeadingZeros(a.x));
}

fn mul64_lo(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let w = mul_wide(a.x, b.x);
    return vec2<u32>(w.x, w.y + a.x * b.y + a.y * b.x);
}

// ---- Philox 4x32-10 ----

fn philox(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if round > 0u {
            k = k + vec2<u32>(W0, W1);
        }
        let p0 = mul_wide(M0, c.x);
        let p1 = mul_wide(M1, c.z);
        c = vec4<u32>(p1.y ^ c.y ^ k.x, p1.x, p0.y ^ c.w ^ k.y, p0.x);
    }
    return c;
}

fn counter_of(row: u32, group: u32, stream: u32) -> vec4<u32> {
    let lo = p.row_lo + row;
    let hi = p.row_hi + select(0u, 1u, lo < p.row_lo);
    return vec4<u32>(group, lo, hi, stream);
}

// ---- the integer Box-Muller transform (philox.rs radius, isqrt62, angle, scale) ----

fn isqrt62(xv: vec2<u32>) -> u32 {
    let xf = f32(xv.y) * 4294967296.0 + f32(xv.x);
    let r0 = clamp(u32(sqrt(xf)), 1u << 30u, (1u << 31u) - 1u);
    // One Newton step from the float guess (its error is a few hundred units), then exact
    // corrections: the result is the unique integer floor(sqrt(x)).
    let sq = mul_wide(r0, r0);
    var e: f32;
    if gt64(sq, xv) {
        let d = sub64(sq, xv);
        e = -(f32(d.y) * 4294967296.0 + f32(d.x));
    } else {
        let d = sub64(xv, sq);
        e = f32(d.y) * 4294967296.0 + f32(d.x);
    }
    var r = u32(i32(r0) + i32(round(e / (2.0 * f32(r0)))));
    r = clamp(r, 1u << 30u, (1u << 31u) - 1u);
    for (var i = 0; i < 8; i++) {
        if !gt64(mul_wide(r, r), xv) {
            break;
        }
        r -= 1u;
    }
    for (var i = 0; i < 8; i++) {
        let r1 = r + 1u;
        if gt64(mul_wide(r1, r1), xv) {
            break;
        }
        r = r1;
    }
    return r;
}

// (R, e): sqrt(-2 ln u) = R 2^e for u = (w | 1) / 2^32.
fn radius(w: u32) -> vec2<i32> {
    let v = w | 1u;
    let k = countLeadingZeros(v);
    let vn = v << k;
    let j = (vn >> 25u) & 63u;
    let q = mul_wide(vn, tables[INV_AT + j]);
    let d63 = sub64(vec2<u32>(0u, 0x80000000u), q);
    let d31 = d63.y;
    var hq = tables[H_AT + 5u];
    for (var i = 0u; i < 5u; i++) {
        let prod = shr64(mul_wide(hq, d31), 31u);
        hq = prod.x + tables[H_AT + 4u - i];
    }
    let small = k == 0u && j == 63u;
    let tiny = mul_wide(0u - vn, hq);
    let d38 = (d63.x >> 25u) | (d63.y << 7u);
    let dh = shr64(mul_wide(d38, hq), 11u);
    let kl = mul_wide(k, tables[LN2_AT]);
    let kln2 = vec2<u32>(kl.x, kl.y + k * tables[LN2_AT + 1u]);
    let nln = vec2<u32>(tables[NLN_AT + 2u * j], tables[NLN_AT + 2u * j + 1u]);
    let general = add64(add64(kln2, nln), dh);
    let x0 = select(general, tiny, small);
    let f = select(-57, -62, small);
    var s = bits64(x0) - 62;
    s += (f + s) & 1;
    let xs = shl64(shr64(x0, u32(max(s, 0))), u32(max(-s, 0)));
    return vec2<i32>(i32(isqrt62(xs)), (f + s) >> 1u);
}

// (|cos|, |sin|, cos < 0, sin < 0) of 2 pi w / 2^32, magnitudes in Q31.
fn angle(w: u32) -> vec4<u32> {
    let xq = w & 0x3fffffffu;
    let j = xq >> 22u;
    let p39 = shr64(mul_wide(xq & 0x3fffffu, tables[PI_HALF_AT]), 22u).x;
    let sq31 = shr64(mul_wide(p39, p39), 47u).x;
    let cos_phi = (1u << 31u) - (sq31 >> 1u);
    let cube = shr64(mul_wide(p39, sq31), 39u).x;
    let sin_phi = (p39 >> 8u) - ((cube * 43691u) >> 18u);
    let cj = tables[COS_AT + j];
    let sj = tables[SIN_AT + j];
    let a = mul_wide(cj, cos_phi);
    let b = mul_wide(sj, sin_phi);
    let c = shr64(select(vec2<u32>(0u), sub64(a, b), gt64(a, b)), 31u).x;
    let s = shr64(add64(mul_wide(sj, cos_phi), mul_wide(cj, sin_phi)), 31u).x;
    let quadrant = w >> 30u;
    let odd = (quadrant & 1u) == 1u;
    return vec4<u32>(
        select(c, s, odd),
        select(s, c, odd),
        select(0u, 1u, quadrant == 1u || quadrant == 2u),
        select(0u, 1u, quadrant >= 2u),
    );
}

// R 2^e m / 2^31, negative when `neg` (and m > 0).
fn scale(r: u32, e: i32, m: u32, neg: u32) -> f32 {
    let prod = mul_wide(r, m);
    let sh = max(bits64(prod) - 24, 1);
    let mant = (shr64(prod, u32(sh - 1)).x + 1u) >> 1u;
    let pow2 = bitcast<f32>(u32(e + sh - 31 + 127) << 23u);
    let v = f32(mant) * pow2;
    let sign = select(0u, 0x80000000u, neg == 1u && m != 0u);
    return bitcast<f32>(bitcast<u32>(v) | sign);
}

fn normal_pair(w_radius: u32, w_angle: u32) -> vec2<f32> {
    let re = radius(w_radius);
    let a = angle(w_angle);
    let r = u32(re.x);
    return vec2<f32>(scale(r, re.y, a.x, a.z), scale(r, re.y, a.y, a.w));
}

// ---- the group column (subspace/sources.rs group_of: splitmix64 of seed and row) ----

fn group_of(row: u32) -> u32 {
    var z = add64(vec2<u32>(p.gbase_lo, p.gbase_hi), vec2<u32>(row, 0u));
    z = vec2<u32>(z.x ^ shr64(z, 30u).x, z.y ^ shr64(z, 30u).y);
    z = mul64_lo(z, vec2<u32>(0x1ce4e5b9u, 0xbf58476du));
    z = vec2<u32>(z.x ^ shr64(z, 27u).x, z.y ^ shr64(z, 27u).y);
    z = mul64_lo(z, vec2<u32>(0x133111ebu, 0x94d049bbu));
    z = vec2<u32>(z.x ^ shr64(z, 31u).x, z.y ^ shr64(z, 31u).y);
    let g = p.group_count;
    return ((z.y % g) * p.pow32_mod + z.x % g) % g;
}

fn item(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn philox_words(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = item(wid, nwg, lid);
    if i >= p.rows {
        return;
    }
    let w = philox(counter_of(i, p.word_group, p.stream), vec2<u32>(p.key_lo, p.key_hi));
    words[4u * i] = w.x;
    words[4u * i + 1u] = w.y;
    words[4u * i + 2u] = w.z;
    words[4u * i + 3u] = w.w;
}

@compute @workgroup_size(WG)
fn sample_x(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = item(wid, nwg, lid);
    if i >= p.rows * p.groups_per_row {
        return;
    }
    let row = i / p.groups_per_row;
    let q = i % p.groups_per_row;
    let w = philox(counter_of(row, q, 0u), vec2<u32>(p.key_lo, p.key_hi));
    let z01 = normal_pair(w.x, w.y);
    let z23 = normal_pair(w.z, w.w);
    let z = array<f32, 4>(z01.x, z01.y, z23.x, z23.y);
    let base = row * p.stride;
    let col = 4u * q;
    for (var l = 0u; l < 4u; l++) {
        if col + l < p.dim {
            x[base + col + l] = z[l];
        }
    }
    if p.group_count > 0u && q == 0u {
        x[base + p.dim] = f32(group_of(row));
    }
}

@compute @workgroup_size(WG)
fn centre_x(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = item(wid, nwg, lid);
    if i >= p.rows * p.dim {
        return;
    }
    let row = i / p.dim;
    let col = i % p.dim;
    let at = row * p.stride + col;
    x[at] = x[at] - centre[col];
}

@compute @workgroup_size(WG)
fn finish_labels(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = item(wid, nwg, lid);
    if i >= p.rows {
        return;
    }
    var v = y[i];
    if p.noise_sd > 0.0 {
        let w = philox(counter_of(i, 0u, 1u), vec2<u32>(p.key_lo, p.key_hi));
        v = v + p.noise_sd * normal_pair(w.x, w.y).x;
    }
    if p.has_residual != 0u {
        v = v - h[i];
    }
    y[i] = v;
}
