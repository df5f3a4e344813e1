//! The counter-based sample stream behind the built-in teachers: Philox 4x32-10 (Salmon et al.,
//! "Parallel random numbers: as easy as 1, 2, 3", SC 2011) and a Box-Muller transform done in
//! integer arithmetic, so that the GPU kernel (`shaders/sample.wgsl`) and this CPU twin give the
//! same f32 normals bit for bit.
//!
//! Why integers: WGSL promises neither correctly rounded `log`/`cos`/`sqrt` nor the absence of
//! fused multiply-adds, so a float Box-Muller differs between the CPU and each GPU by a few
//! ulps. Here every step is an exact integer operation on values below 2^64 (the shader builds
//! 64-bit products from 16-bit halves): table lookups, short polynomials in fixed point, the
//! exact integer square root (checked by squaring, so devices whose float first guesses differ
//! still agree), and a final rounding to 24 bits done in integers. The only float operation is
//! the last one, an exact conversion of that 24-bit integer scaled by a power of two.
//!
//! Value of column j of row i under seed s: Philox with key (s mod 2^32, s / 2^32) and counter
//! (j / 4, i mod 2^32, i / 2^32, stream) gives words w0..w3; (w0, w1) -> columns 4q, 4q + 1 and
//! (w2, w3) -> columns 4q + 2, 4q + 3 by [`normal_pair`]. So a value depends on (seed, row,
//! column) only: any chunking, order or thread count gives the same bytes.
//!
//! Accuracy against an exact Box-Muller of the same words (r = sqrt(-2 ln u1) with
//! u1 = (w0 | 1) / 2^32, angle 2 pi w1 / 2^32): |z - z_exact| <= ulp(z) / 2 + 4e-9 r +
//! 2e-8 |z| (the rounding of the result, the sine/cosine to about 3 units of 2^-31, the log to
//! about 1e-9 relative), checked on 10^6 values by `normals_match_an_exact_box_muller`. The
//! tail is cut at r = sqrt(2 ln 2^32) = 6.66 (probability 2.5e-11 beyond), as for any 32-bit
//! Box-Muller.

/// Philox 4x32 multipliers and Weyl key increments (Random123).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Stream tag (counter word 3) of the inputs x.
pub const STREAM_X: u32 = 0;
/// Stream tag of the label noise (one normal per row, column 0).
pub const STREAM_NOISE: u32 = 1;

/// Philox 4x32 with 10 rounds: a bijection of the counter for each key.
#[inline(always)]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = M0 as u64 * c[0] as u64;
        let p1 = M1 as u64 * c[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The Philox key of a seed.
pub fn key_of(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The Philox counter of (row, group of four columns, stream).
pub fn counter_of(row: u64, group: u32, stream: u32) -> [u32; 4] {
    [group, row as u32, (row >> 32) as u32, stream]
}

include!("philox_tables.rs");

/// pi / 2 * 2^31, rounded.
pub const PI_HALF_Q31: u64 = 3_373_259_426;
/// ln 2 * 2^58, rounded.
pub const LN2_Q58: u64 = 0x02c5_c85f_df47_3de7;
/// h(d) = -ln(1 - d) / d = 1 + d/2 + d^2/3 + ... + d^5/6 in Q31 (2^31 / k rounded), lowest
/// degree first; for d <= 1/65 the next term is below 2e-12 relative.
pub const LOG_H_Q31: [u32; 6] = [
    2_147_483_648,
    1_073_741_824,
    715_827_883,
    536_870_912,
    429_496_730,
    357_913_941,
];

/// The Box-Muller radius sqrt(-2 ln u) of u = (w | 1) / 2^32 as R 2^e, R in [2^30, 2^31).
///
/// u = m 2^-k with m = vn / 2^32 in [1/2, 1) (vn = (w | 1) << k); m lies in interval j of 64
/// equal ones, whose right end is c_j; m / c_j = 1 - d with 0 <= d < 1/65, and
/// -ln u = k ln 2 - ln c_j + d h(d). When k = 0 and j = 63 (u >= 127/128, c_j = 1) the sum is
/// d h(d) alone, taken from t = 2^32 - vn exactly, so small radii keep their relative precision.
///
/// Written without branches (both cases computed, one selected) so that a CPU runs it at full
/// speed on random words and the batch loop of [`fill_rows`] vectorises.
#[inline(always)]
pub fn radius(w: u32) -> (u32, i32) {
    let v = w | 1;
    let k = v.leading_zeros();
    let vn = v << k;
    let j = ((vn >> 25) & 63) as usize;
    let q = vn as u64 * LOG_INV_Q31[j] as u64;
    let d63 = (1u64 << 63) - q;
    let d31 = d63 >> 32;
    let mut h = LOG_H_Q31[5];
    for &c in LOG_H_Q31[..5].iter().rev() {
        h = ((h as u64 * d31) >> 31) as u32 + c;
    }
    // r^2 = 2 (-ln u) = X0 2^f.
    let small = (k == 0) & (j == 63);
    let tiny = 0u32.wrapping_sub(vn) as u64 * h as u64;
    let dh = ((d63 >> 25) * h as u64) >> 11;
    let general = k as u64 * LN2_Q58 + LOG_NEG_LN_Q58[j] + dh;
    let mask = (small as u64).wrapping_neg();
    let x0 = (tiny & mask) | (general & !mask);
    let f = -57 - 5 * small as i32;
    // X = X0 2^-s in [2^60, 2^62) with f + s even, so r = sqrt(X) 2^((f + s) / 2).
    let bits = 64 - x0.leading_zeros() as i32;
    let mut s = bits - 62;
    s += (f + s) & 1;
    let x = (x0 >> s.max(0) as u32) << (-s).max(0) as u32;
    (isqrt62(x), (f + s) >> 1)
}

/// floor(sqrt(x)) for x in [2^60, 2^62): the f64 root rounded to an integer is within 1 of the
/// exact floor, so one step each way makes it exact (the answer is unique: a device whose
/// first guess differs still agrees). The conversions go through the 2^52 exponent trick, which
/// the compiler vectorises (`as` casts between floats and integers it does not).
#[inline(always)]
fn isqrt62(x: u64) -> u32 {
    const MAGIC: u64 = 0x4330_0000_0000_0000;
    const TWO52: f64 = 4_503_599_627_370_496.0;
    let hi = f64::from_bits(MAGIC | (x >> 32)) - TWO52;
    let lo = f64::from_bits(MAGIC | (x & 0xffff_ffff)) - TWO52;
    let root = (hi * 4_294_967_296.0 + lo).sqrt();
    let mut r = ((root + TWO52).to_bits() as u32).clamp(1 << 30, (1 << 31) - 1);
    r -= (r as u64 * r as u64 > x) as u32;
    r += ((r as u64 + 1) * (r as u64 + 1) <= x) as u32;
    r
}

/// |cos| and |sin| of the angle 2 pi w / 2^32 in Q31, and whether each is negative.
///
/// The quarter turn is cut into 256 steps: cos and sin of the step come from tables, those of
/// the remainder phi < pi / 512 from 1 - phi^2 / 2 and phi - phi^3 / 6 (next terms below
/// 1e-10), combined by the angle-sum formulas.
#[inline(always)]
pub fn angle(w: u32) -> ([u32; 2], [bool; 2]) {
    let x = w & 0x3fff_ffff;
    let j = (x >> 22) as usize;
    let p39 = ((x & 0x3f_ffff) as u64 * PI_HALF_Q31) >> 22;
    let sq31 = (p39 * p39) >> 47;
    let cos_phi = (1u64 << 31) - (sq31 >> 1);
    // phi^3 2^31 < 2^9; floor(v / 6) = (v 43691) >> 18 for v < 2^16.
    let cube = ((p39 * sq31) >> 39) as u32;
    let sin_phi = (p39 >> 8) - ((cube * 43_691) >> 18) as u64;
    let (cj, sj) = (COS_Q31[j] as u64, SIN_Q31[j] as u64);
    let (a, b) = (cj * cos_phi, sj * sin_phi);
    let c = ((a.max(b) - b) >> 31) as u32;
    let s = ((sj * cos_phi + cj * sin_phi) >> 31) as u32;
    let quadrant = w >> 30;
    let odd = quadrant & 1 == 1;
    let (mc, ms) = (if odd { s } else { c }, if odd { c } else { s });
    ([mc, ms], [quadrant == 1 || quadrant == 2, quadrant >= 2])
}

/// R 2^e m / 2^31, negated when `negative`: the exact 62-bit product R m rounded to 24 bits in
/// integers (half up; a carry to 2^24 is still exact), then scaled by a power of two.
#[inline(always)]
fn scale(r: u32, e: i32, m: u32, negative: bool) -> f32 {
    let p = r as u64 * m as u64;
    let sh = (64 - p.leading_zeros() as i32 - 24).max(1);
    let mant = (((p >> (sh - 1) as u32) + 1) >> 1) as u32;
    let pow2 = f32::from_bits(((e + sh - 31 + 127) as u32) << 23);
    let v = (mant as i32 as f32) * pow2;
    f32::from_bits(v.to_bits() | ((negative & (m != 0)) as u32) << 31)
}

/// Two standard normals from two words: (r cos a, r sin a).
#[inline(always)]
pub fn normal_pair(w_radius: u32, w_angle: u32) -> (f32, f32) {
    let (r, e) = radius(w_radius);
    let (m, neg) = angle(w_angle);
    (scale(r, e, m[0], neg[0]), scale(r, e, m[1], neg[1]))
}

/// The four normals of (seed, row, group of columns, stream).
pub fn normals4(seed: u64, row: u64, group: u32, stream: u32) -> [f32; 4] {
    let w = philox4x32_10(counter_of(row, group, stream), key_of(seed));
    let (a, b) = normal_pair(w[0], w[1]);
    let (c, d) = normal_pair(w[2], w[3]);
    [a, b, c, d]
}

/// Fills `x` (one row of x.len() columns) with the inputs of `row`.
pub fn fill_row(seed: u64, row: u64, x: &mut [f32]) {
    fill_rows(seed, row, x.len(), x);
}

/// Counters handled together by [`fill_rows`] (the vector loop's width).
const LANES: usize = 16;

/// The normals of `LANES` counters (stream [`STREAM_X`]): 4 per counter, in counter order.
/// Each step runs over all lanes in its own loop (structure of arrays), which the compiler
/// turns into vector code.
#[inline(always)]
fn batch(key: [u32; 2], counters: &[[u32; 4]; LANES], out: &mut [f32; 4 * LANES]) {
    const PAIRS: usize = 2 * LANES;
    let mut wr = [0u32; PAIRS];
    let mut wa = [0u32; PAIRS];
    for (l, &c) in counters.iter().enumerate() {
        let w = philox4x32_10(c, key);
        wr[2 * l] = w[0];
        wa[2 * l] = w[1];
        wr[2 * l + 1] = w[2];
        wa[2 * l + 1] = w[3];
    }
    let mut r = [0u32; PAIRS];
    let mut e = [0i32; PAIRS];
    for i in 0..PAIRS {
        (r[i], e[i]) = radius(wr[i]);
    }
    let mut m = [[0u32; 2]; PAIRS];
    let mut neg = [[false; 2]; PAIRS];
    for i in 0..PAIRS {
        (m[i], neg[i]) = angle(wa[i]);
    }
    for i in 0..PAIRS {
        out[2 * i] = scale(r[i], e[i], m[i][0], neg[i][0]);
        out[2 * i + 1] = scale(r[i], e[i], m[i][1], neg[i][1]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn batch_avx2(key: [u32; 2], counters: &[[u32; 4]; LANES], out: &mut [f32; 4 * LANES]) {
    batch(key, counters, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512cd,avx512dq,avx512vl,avx512bw")]
unsafe fn batch_avx512(key: [u32; 2], counters: &[[u32; 4]; LANES], out: &mut [f32; 4 * LANES]) {
    batch(key, counters, out)
}

/// The widest vector instructions [`fill_rows`] may use on this CPU: 2 = AVX-512 (with CD, DQ,
/// VL, BW), 1 = AVX2, 0 = none.
#[cfg(target_arch = "x86_64")]
fn vector_level() -> u8 {
    static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512cd")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
        {
            2
        } else {
            u8::from(std::is_x86_feature_detected!("avx2"))
        }
    })
}

/// Fills `x` with rows `first_row ..` of `d` inputs each (x.len() a multiple of d): the same
/// values as [`normals4`] column by column, generated `LANES` counters at a time (with AVX2
/// when the CPU has it; the arithmetic is integer, so both paths give the same bits).
pub fn fill_rows(seed: u64, first_row: u64, d: usize, x: &mut [f32]) {
    if d == 0 {
        return;
    }
    let key = key_of(seed);
    let groups = d.div_ceil(4);
    let rows = x.len() / d;
    #[cfg(target_arch = "x86_64")]
    let level = vector_level();
    let total = rows * groups;
    let mut counters = [[0u32; 4]; LANES];
    let mut out = [0f32; 4 * LANES];
    let mut next = 0usize;
    while next < total {
        let n = LANES.min(total - next);
        for (l, c) in counters.iter_mut().enumerate() {
            let i = next + l.min(n - 1);
            *c = counter_of(
                first_row + (i / groups) as u64,
                (i % groups) as u32,
                STREAM_X,
            );
        }
        #[cfg(target_arch = "x86_64")]
        match level {
            // SAFETY: the CPU has these features (vector_level checked them).
            2 => unsafe { batch_avx512(key, &counters, &mut out) },
            1 => unsafe { batch_avx2(key, &counters, &mut out) },
            _ => batch(key, &counters, &mut out),
        }
        #[cfg(not(target_arch = "x86_64"))]
        batch(key, &counters, &mut out);
        for l in 0..n {
            let i = next + l;
            let (row, q) = (i / groups, i % groups);
            let col = 4 * q;
            let take = 4.min(d - col);
            x[row * d + col..row * d + col + take].copy_from_slice(&out[4 * l..4 * l + take]);
        }
        next += n;
    }
}

/// The label noise of `row` (a standard normal).
pub fn noise(seed: u64, row: u64) -> f32 {
    normals4(seed, row, 0, STREAM_NOISE)[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // Random123 kat_vectors, philox4x32 10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn isqrt_is_exact() {
        for x in [
            1u64 << 60,
            (1 << 62) - 1,
            1_234_567_890_123_456_789,
            (1 << 61) + 1,
        ] {
            let r = isqrt62(x) as u64;
            assert!(r * r <= x && (r + 1) * (r + 1) > x, "{x}");
        }
    }

    /// The worst of |z - z_exact| / (ulp(z) / 2 + 4e-9 r + 2e-8 |z|) between the integer
    /// transform and an f64 Box-Muller of the same words: at most 1 when the documented bound
    /// holds.
    fn worst_ratio(pairs: u64) -> f64 {
        let mut worst = 0.0f64;
        for i in 0..pairs {
            let w = philox4x32_10(counter_of(i, 7, 3), key_of(0x5eed));
            for (a, b) in [(w[0], w[1]), (w[2], w[3])] {
                let (z0, z1) = normal_pair(a, b);
                let u = (a | 1) as f64 / 2f64.powi(32);
                let r = (-2.0 * u.ln()).sqrt();
                let th = std::f64::consts::TAU * b as f64 / 2f64.powi(32);
                for (got, want) in [(z0, r * th.cos()), (z1, r * th.sin())] {
                    let half_ulp = if got == 0.0 {
                        0.0
                    } else {
                        2f64.powi((got.abs() as f64).log2().floor() as i32 - 24)
                    };
                    let bound = half_ulp + 4e-9 * r + 2e-8 * want.abs();
                    worst = worst.max((got as f64 - want).abs() / bound);
                }
            }
        }
        worst
    }

    #[test]
    fn normals_match_an_exact_box_muller() {
        let worst = worst_ratio(500_000);
        eprintln!("worst difference: {worst:.3} of the bound");
        assert!(worst <= 1.0, "{worst} of the bound");
    }

    #[test]
    fn extreme_words() {
        // u1 at both ends (w | 1 = 1 and 2^32 - 1) and the angle at every quadrant edge.
        for a in [0u32, 1, u32::MAX, u32::MAX - 1, 1 << 31, (1 << 31) - 1] {
            for b in [0u32, 1 << 30, 1 << 31, 3 << 30, u32::MAX, (1 << 30) - 1] {
                let (z0, z1) = normal_pair(a, b);
                let u = (a | 1) as f64 / 2f64.powi(32);
                let r = (-2.0 * u.ln()).sqrt();
                let th = std::f64::consts::TAU * b as f64 / 2f64.powi(32);
                assert!(
                    (z0 as f64 - r * th.cos()).abs() <= 1e-6 * r.max(1e-3),
                    "{a} {b} {z0}"
                );
                assert!(
                    (z1 as f64 - r * th.sin()).abs() <= 1e-6 * r.max(1e-3),
                    "{a} {b} {z1}"
                );
            }
        }
    }

    /// The stream's moments, tails and neighbour correlations over 2^20 values are those of
    /// independent standard normals within 5 standard errors.
    #[test]
    fn the_stream_looks_standard_normal() {
        let (rows, d) = (1usize << 14, 64);
        let mut x = vec![0f32; rows * d];
        fill_rows(2024, 1 << 33, d, &mut x);
        let n = x.len() as f64;
        let mean = |f: &dyn Fn(f64) -> f64| x.iter().map(|&v| f(v as f64)).sum::<f64>() / n;
        let se = |var: f64| 5.0 * (var / n).sqrt();
        let m1 = mean(&|z| z);
        let m2 = mean(&|z| z * z);
        let m3 = mean(&|z| z * z * z);
        let m4 = mean(&|z| z.powi(4));
        assert!(m1.abs() < se(1.0), "mean {m1}");
        assert!((m2 - 1.0).abs() < se(2.0), "variance {m2}");
        assert!(m3.abs() < se(15.0), "third moment {m3}");
        assert!((m4 - 3.0).abs() < se(96.0), "fourth moment {m4}");
        for (t, p) in [
            (1.0, 0.317_310_507_9),
            (2.0, 0.045_500_263_9),
            (3.0, 0.002_699_796),
        ] {
            let got = mean(&|z| f64::from(u8::from(z.abs() > t)));
            assert!(
                (got - p).abs() < se(p * (1.0 - p)),
                "P(|z| > {t}) = {got}, want {p}"
            );
        }
        // Neighbouring columns (same Philox call or Box-Muller pair) and rows are uncorrelated.
        for (a, b) in [(0usize, 1usize), (1, 2), (3, 4), (0, d)] {
            let pairs = x.len() - b;
            let c = (0..pairs)
                .map(|i| x[i] as f64 * x[i + b - a] as f64)
                .sum::<f64>()
                / pairs as f64;
            assert!(
                c.abs() < 5.0 / (pairs as f64).sqrt(),
                "correlation at lag {} = {c}",
                b - a
            );
        }
    }

    /// The portable batch, the AVX2 and the AVX-512 builds (those the CPU has) give the scalar
    /// twin's bits.
    #[test]
    fn every_vector_path_gives_the_scalar_bits() {
        let key = key_of(0xabcdef);
        let mut counters = [[0u32; 4]; LANES];
        for (l, c) in counters.iter_mut().enumerate() {
            *c = counter_of(5_000_000_000 + 3 * l as u64, l as u32 % 5, STREAM_X);
        }
        let mut want = [0f32; 4 * LANES];
        for (l, c) in counters.iter().enumerate() {
            let z = normals4(0xabcdef, c[1] as u64 | (c[2] as u64) << 32, c[0], STREAM_X);
            want[4 * l..4 * l + 4].copy_from_slice(&z);
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let mut out = [0f32; 4 * LANES];
        batch(key, &counters, &mut out);
        assert_eq!(bits(&out), bits(&want), "portable");
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: checked just above.
                unsafe { batch_avx2(key, &counters, &mut out) };
                assert_eq!(bits(&out), bits(&want), "avx2");
            }
            if vector_level() == 2 {
                // SAFETY: vector_level checked the features.
                unsafe { batch_avx512(key, &counters, &mut out) };
                assert_eq!(bits(&out), bits(&want), "avx512");
            }
        }
    }

    #[test]
    fn ln2_constant() {
        assert!((LN2_Q58 as f64 / 2f64.powi(58) - std::f64::consts::LN_2).abs() < 1e-16);
    }
}
