//! Teacher networks: seeded, bias-free benchmark targets (docs/algorithm.md, "Hard teachers") and random deep
//! networks. Every teacher is a plain [`Network`] on R^d, so one code path evaluates everything.
//!
//! Construction: each teacher is first built as a small network on its hidden coordinates
//! z = Qᵀx ∈ R^k, scaled to unit output variance, then lifted to R^d through a random rotation
//! Q (d x k, orthonormal columns). So F(x) depends on x only through z, and the relevant
//! subspace U = span Q = rowspan W_1 has dimension k ([`Teacher::relevant_dim`]).
//!
//! Reproducibility: all randomness comes from `rand::rngs::Xoshiro256PlusPlus` (a named,
//! portable generator whose output is fixed across rand releases and platforms), seeded with
//! `seed_from_u64` (SplitMix64 expansion) of a per-purpose seed derived from `spec.seed`, and
//! normals from `rand_distr::StandardNormal`. The same spec gives bit-identical weights.
//!
//! Normalisation: the output is divided (last layer weights and bias) by its standard deviation
//! estimated on 2^16 Gaussian samples of z drawn from a seed derived from `spec.seed`, so
//! Var(y) = 1 up to about 1% estimation error.

use crate::error::{Error, Result};
use crate::network::{Layer, Network};
use crate::safety::{bytes, flops, widths, MAX_FLAG_FLOPS, MAX_TEACHER_PARAMS};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

/// Samples used to estimate a teacher's output standard deviation.
pub const NORMALISATION_SAMPLES: usize = 1 << 16;

/// Largest k for the parity teachers, which have 2^k hidden units.
pub const MAX_PARITY_K: usize = 16;

/// Coupling c of the deep-parity teacher's second layer (c = 1 would reduce it to parity).
const DEEP_PARITY_C: f64 = 2.0;

/// Which teacher to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum TeacherKind {
    /// Random deep network: hidden `widths`, first layer spanning a random k-dim subspace,
    /// Gaussian weights scaled by 1/sqrt(fan-in), optional biases.
    Random,
    /// (A) parity-ReLU sum, one hidden layer of 2^k units, k even: all Hermite coefficients of
    /// degree < k vanish.
    Parity,
    /// (B) alternating fan of 2m units in a hidden plane, m even >= 4: orthogonal to every
    /// polynomial of degree < m.
    Fan,
    /// (C) deep parity: two hidden layers (2k and 2^k units), odd in every hidden coordinate.
    DeepParity,
    /// (D) composite: fan (m = 4) on a plane, normalised, plus 0.5 relu(q3 . x) on an
    /// orthogonal direction; relevant dimension 3. Needs the iteration of filtered PCA.
    Composite,
}

impl TeacherKind {
    /// The CLI name (as `clap` spells it).
    pub fn cli_name(self) -> &'static str {
        match self {
            TeacherKind::Random => "random",
            TeacherKind::Parity => "parity",
            TeacherKind::Fan => "fan",
            TeacherKind::DeepParity => "deep-parity",
            TeacherKind::Composite => "composite",
        }
    }
}

impl std::fmt::Display for TeacherKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// What to build. Fields a kind does not use: `widths` is read by `random` only; `k` by
/// `random`, `parity` and `deep-parity`; `m` by `fan` and `composite`; `bias` by `random` only.
/// Giving `k`, `m` or `bias` to a kind that does not use them is an error (not silently ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeacherSpec {
    pub kind: TeacherKind,
    /// Input dimension d.
    pub dim: usize,
    /// Hidden widths of the random teacher (default [4, 4]).
    pub widths: Vec<usize>,
    /// Hidden dimension: random (default widths[0]), parity (default 4, even), deep-parity
    /// (default 3).
    pub k: Option<usize>,
    /// Fan half-count: fan (default 4), composite (default 4); even and >= 4.
    pub m: Option<usize>,
    /// Random biases in every layer (random teacher only).
    pub bias: bool,
    pub seed: u64,
}

impl TeacherSpec {
    /// Defaults: widths [4, 4], k and m at their per-kind defaults, no biases, seed 0.
    pub fn new(kind: TeacherKind, dim: usize) -> Self {
        TeacherSpec {
            kind,
            dim,
            widths: vec![4, 4],
            k: None,
            m: None,
            bias: false,
            seed: 0,
        }
    }
}

/// A built teacher.
#[derive(Clone, Debug)]
pub struct Teacher {
    /// The teacher as a network on R^d (its `subspace` is `None`; use
    /// [`Network::first_layer_span`] or [`Teacher::basis`]).
    pub network: Network,
    /// Dimension of the relevant subspace U = rowspan W_1.
    pub relevant_dim: usize,
    /// Human-readable description, e.g. `parity(k=4, d=64, seed=1)`.
    pub name: String,
    /// The hidden coordinates: rows q_1..q_k (orthonormal, length d), z_j = q_j . x. The
    /// teacher is a function of z; for (A)/(C) it is odd in each z_j, for (B) q_1, q_2 span the
    /// fan's plane, for (D) q_3 is the extra ReLU direction.
    pub basis: Vec<Vec<f64>>,
}

/// Builds the teacher a spec describes. Invalid specs give [`Error::InvalidRequest`] naming the
/// flag (`--d`, `--k`, `--m`, `--widths`, `--bias`) and what is accepted.
pub fn build(spec: &TeacherSpec) -> Result<Teacher> {
    let d = spec.dim;
    if d == 0 {
        return Err(Error::invalid(
            "--d must be >= 1 (the input dimension), got 0",
        ));
    }
    let kind = spec.kind;
    if spec.bias && kind != TeacherKind::Random {
        return Err(Error::invalid(format!(
            "--bias applies to the random teacher only; the {kind} teacher is bias-free by construction (leave --bias out)"
        )));
    }
    let uses_k = matches!(
        kind,
        TeacherKind::Random | TeacherKind::Parity | TeacherKind::DeepParity
    );
    let uses_m = matches!(kind, TeacherKind::Fan | TeacherKind::Composite);
    if let (false, Some(k)) = (uses_k, spec.k) {
        return Err(Error::invalid(format!(
            "--k {k} does not apply to the {kind} teacher (its relevant dimension is fixed); leave --k out"
        )));
    }
    if let (false, Some(m)) = (uses_m, spec.m) {
        return Err(Error::invalid(format!(
            "--m {m} applies to the fan and composite teachers only; leave --m out for {kind}"
        )));
    }

    let (small, k, detail) = match kind {
        TeacherKind::Random => {
            if spec.widths.is_empty() || spec.widths.contains(&0) {
                return Err(Error::invalid(format!(
                    "--widths must list at least one hidden width, each >= 1; got {:?}",
                    spec.widths
                )));
            }
            let k = spec.k.unwrap_or(spec.widths[0]);
            check_k(k, d)?;
            if k > spec.widths[0] {
                return Err(Error::invalid(format!(
                    "--k {k} exceeds the first hidden width {} (--widths): the first layer's rows cannot span more dimensions than there are rows; use --k <= {}",
                    spec.widths[0], spec.widths[0]
                )));
            }
            let widths = spec
                .widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(",");
            (
                random_small(k, &spec.widths, spec.bias, spec.seed)?,
                k,
                format!("k={k}, widths=[{widths}], bias={}", spec.bias),
            )
        }
        TeacherKind::Parity => {
            let k = spec.k.unwrap_or(4);
            check_k(k, d)?;
            if k % 2 == 1 {
                return Err(Error::invalid(format!(
                    "--k {k} is odd: the parity teacher is identically zero for odd k; use an even --k (2, 4, 6, ...) or --teacher deep-parity, which allows odd k"
                )));
            }
            check_parity_size(k)?;
            (parity_small(k)?, k, format!("k={k}"))
        }
        TeacherKind::DeepParity => {
            let k = spec.k.unwrap_or(3);
            check_k(k, d)?;
            check_parity_size(k)?;
            (
                deep_parity_small(k)?,
                k,
                format!("k={k}, c={DEEP_PARITY_C}"),
            )
        }
        TeacherKind::Fan => {
            let m = spec.m.unwrap_or(4);
            check_m(m)?;
            if d < 2 {
                return Err(Error::invalid(format!(
                    "--d {d} is too small for the fan teacher: its relevant subspace is a plane; use --d >= 2"
                )));
            }
            (fan_small(m)?, 2, format!("m={m}"))
        }
        TeacherKind::Composite => {
            let m = spec.m.unwrap_or(4);
            check_m(m)?;
            if d < 3 {
                return Err(Error::invalid(format!(
                    "--d {d} is too small for the composite teacher: its relevant subspace has dimension 3; use --d >= 3"
                )));
            }
            (composite_small(m, spec.seed)?, 3, format!("m={m}"))
        }
    };

    let small = normalised(small, derive_seed(spec.seed, TAG_NORMALISE))?;
    let basis = random_rotation(d, k, derive_seed(spec.seed, TAG_ROTATION));
    let mut network = small.lift(&basis)?;
    network.subspace = None;
    Ok(Teacher {
        network,
        relevant_dim: k,
        name: format!("{kind}({detail}, d={d}, seed={})", spec.seed),
        basis,
    })
}

/// Seed tags: one independent stream per purpose.
const TAG_ROTATION: u64 = 1;
const TAG_WEIGHTS: u64 = 2;
const TAG_NORMALISE: u64 = 3;
const TAG_FAN_NORMALISE: u64 = 4;

/// SplitMix64 finaliser of (seed, tag): distinct tags give unrelated generator seeds.
fn derive_seed(seed: u64, tag: u64) -> u64 {
    let mut z = seed ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn check_k(k: usize, d: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::invalid(
            "--k must be >= 1 (the hidden dimension), got 0",
        ));
    }
    if k > d {
        return Err(Error::invalid(format!(
            "--k {k} exceeds --d {d}: the hidden subspace must fit in R^d; use --k <= --d"
        )));
    }
    Ok(())
}

fn check_parity_size(k: usize) -> Result<()> {
    if k > MAX_PARITY_K {
        return Err(Error::invalid(format!(
            "--k {k} is too large: parity teachers have 2^k hidden units; use --k <= {MAX_PARITY_K}"
        )));
    }
    Ok(())
}

fn check_m(m: usize) -> Result<()> {
    if m % 2 == 1 || m < 4 {
        return Err(Error::invalid(format!(
            "--m {m} is not accepted: m must be even and >= 4 (odd m gives the zero function, m = 2 is |z1| - |z2|, which plain PCA sees); use --m 4, 6, 8, ..."
        )));
    }
    Ok(())
}

/// A d x k random rotation, returned as k orthonormal rows of length d: the Q factor of a
/// Gaussian d x k matrix (Householder QR), columns signed so that diag(R) > 0, which makes Q
/// Haar-distributed and a deterministic function of `seed`.
pub fn random_rotation(d: usize, k: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    // Drawn row by row (d rows of k), so the matrix depends only on (seed, d, k).
    let values: Vec<f64> = (0..d * k).map(|_| rng.sample(StandardNormal)).collect();
    let g = nalgebra::DMatrix::from_row_slice(d, k, &values);
    let qr = g.qr();
    let q = qr.q();
    let r = qr.r();
    (0..k)
        .map(|j| {
            let sign = if r[(j, j)] < 0.0 { -1.0 } else { 1.0 };
            (0..d).map(|i| sign * q[(i, j)]).collect()
        })
        .collect()
}

/// Random network on k inputs: first layer widths[0] x k, later layers Gaussian / sqrt(fan-in),
/// biases N(0, 1/4) when asked.
fn random_small(k: usize, widths: &[usize], bias: bool, seed: u64) -> Result<Network> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(derive_seed(seed, TAG_WEIGHTS));
    let mut layers = Vec::with_capacity(widths.len() + 1);
    let mut inputs = k;
    for &outputs in widths.iter().chain(std::iter::once(&1)) {
        let scale = 1.0 / (inputs as f64).sqrt();
        let weights: Vec<f64> = (0..inputs * outputs)
            .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
            .collect();
        let biases: Vec<f64> = if bias {
            (0..outputs)
                .map(|_| 0.5 * rng.sample::<f64, _>(StandardNormal))
                .collect()
        } else {
            vec![0.0; outputs]
        };
        layers.push(Layer::new(inputs, outputs, weights, biases)?);
        inputs = outputs;
    }
    Ok(Network::new(k, layers)?)
}

/// The sign pattern w in {±1}^k of index `index` (bit i set means w_i = -1) and χ(w) = Π w_i.
fn sign_pattern(index: usize, k: usize) -> (Vec<f64>, f64) {
    let w: Vec<f64> = (0..k)
        .map(|i| if index >> i & 1 == 1 { -1.0 } else { 1.0 })
        .collect();
    let chi = w.iter().product();
    (w, chi)
}

/// (A) f_k(z) = Σ_w χ(w) σ(<w, z>/√k), w over {±1}^k.
fn parity_small(k: usize) -> Result<Network> {
    let units = 1usize << k;
    let scale = 1.0 / (k as f64).sqrt();
    let mut first = Vec::with_capacity(units * k);
    let mut out = Vec::with_capacity(units);
    for index in 0..units {
        let (w, chi) = sign_pattern(index, k);
        first.extend(w.iter().map(|v| v * scale));
        out.push(chi);
    }
    Ok(Network::new(
        k,
        vec![
            Layer::new(k, units, first, vec![0.0; units])?,
            Layer::new(units, 1, out, vec![0.0])?,
        ],
    )?)
}

/// (B) f_m(z) = Σ_{j<2m} (-1)^j σ(cos(jπ/m) z_1 + sin(jπ/m) z_2): the fan's first layer rows and
/// output weights.
fn fan_units(m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rows = Vec::with_capacity(4 * m);
    let mut out = Vec::with_capacity(2 * m);
    for j in 0..2 * m {
        let angle = j as f64 * std::f64::consts::PI / m as f64;
        rows.push(angle.cos());
        rows.push(angle.sin());
        out.push(if j % 2 == 0 { 1.0 } else { -1.0 });
    }
    (rows, out)
}

fn fan_small(m: usize) -> Result<Network> {
    let (rows, out) = fan_units(m);
    Ok(Network::new(
        2,
        vec![
            Layer::new(2, 2 * m, rows, vec![0.0; 2 * m])?,
            Layer::new(2 * m, 1, out, vec![0.0])?,
        ],
    )?)
}

/// (C) layer 1: a_i^+ = σ(z_i), a_i^- = σ(-z_i) (units 2i, 2i+1); layer 2:
/// h_w = σ(Σ_i a_i^{w_i} - c Σ_i a_i^{-w_i}); output Σ_w χ(w) h_w.
fn deep_parity_small(k: usize) -> Result<Network> {
    let mut first = vec![0.0; 2 * k * k];
    for i in 0..k {
        first[(2 * i) * k + i] = 1.0;
        first[(2 * i + 1) * k + i] = -1.0;
    }
    let units = 1usize << k;
    let mut second = Vec::with_capacity(units * 2 * k);
    let mut out = Vec::with_capacity(units);
    for index in 0..units {
        let (w, chi) = sign_pattern(index, k);
        for &wi in &w {
            // (a_i^+, a_i^-) coefficients: the unit on the side of w_i counts +1, the other -c.
            if wi > 0.0 {
                second.extend([1.0, -DEEP_PARITY_C]);
            } else {
                second.extend([-DEEP_PARITY_C, 1.0]);
            }
        }
        out.push(chi);
    }
    Ok(Network::new(
        k,
        vec![
            Layer::new(k, 2 * k, first, vec![0.0; 2 * k])?,
            Layer::new(2 * k, units, second, vec![0.0; units])?,
            Layer::new(units, 1, out, vec![0.0])?,
        ],
    )?)
}

/// (D) fan_m(z_1, z_2)/std(fan_m) + 0.5 σ(z_3), one hidden layer of 2m + 1 units.
fn composite_small(m: usize, seed: u64) -> Result<Network> {
    let fan = fan_small(m)?;
    let fan_std = output_std(&fan, derive_seed(seed, TAG_FAN_NORMALISE));
    if fan_std.is_nan() || fan_std <= 0.0 {
        return Err(Error::invalid(format!(
            "--m {m}: the fan block has zero variance; use --m 4, 6, 8, ..."
        )));
    }
    let (rows2, out) = fan_units(m);
    let units = 2 * m + 1;
    let mut first = Vec::with_capacity(units * 3);
    for row in rows2.chunks_exact(2) {
        first.extend([row[0], row[1], 0.0]);
    }
    first.extend([0.0, 0.0, 1.0]);
    let mut last: Vec<f64> = out.iter().map(|v| v / fan_std).collect();
    last.push(0.5);
    Ok(Network::new(
        3,
        vec![
            Layer::new(3, units, first, vec![0.0; units])?,
            Layer::new(units, 1, last, vec![0.0])?,
        ],
    )?)
}

/// Standard deviation of the network's output on N(0, I) inputs, estimated on
/// [`NORMALISATION_SAMPLES`] samples from `seed` (sequential f64 sums: deterministic).
fn output_std(net: &Network, seed: u64) -> f64 {
    let r = net.input_dim;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let x: Vec<f64> = (0..NORMALISATION_SAMPLES * r)
        .map(|_| rng.sample(StandardNormal))
        .collect();
    let y = net.forward_f64(&x, NORMALISATION_SAMPLES);
    let n = y.len() as f64;
    let mean = y.iter().sum::<f64>() / n;
    let var = y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    var.sqrt()
}

/// Divides the last layer (weights and bias) by the estimated output std, so Var(y) ≈ 1.
fn normalised(mut net: Network, seed: u64) -> Result<Network> {
    let std = output_std(&net, seed);
    if !(std > 0.0 && std.is_finite()) {
        return Err(Error::invalid(
            "the teacher's output is constant on Gaussian inputs (every path is dead); try another --seed or wider --widths",
        ));
    }
    let last = net.layers.last_mut().expect("a network has layers");
    last.weights.iter_mut().for_each(|w| *w /= std);
    last.bias.iter_mut().for_each(|b| *b /= std);
    Ok(net)
}

/// Parameters the built-in teacher of these flags would have, as an upper bound (its first
/// layer lifted to d inputs, its random rotation, and the widths of the random teacher).
pub fn teacher_params(d: usize, widths_: &[usize], k: Option<usize>, m: Option<usize>) -> u128 {
    let d = d as u128;
    let first = widths_.first().copied().unwrap_or(4) as u128;
    let k = k.unwrap_or(4) as u128;
    let m = m.unwrap_or(4) as u128;
    let rows = first.max(k).max(2 * m).max(16);
    let deeper: u128 = widths_
        .windows(2)
        .map(|w| w[0] as u128 * w[1] as u128)
        .sum();
    rows * d + 3 * k.max(3) * d + deeper
}

/// Refuses a teacher network above [`MAX_TEACHER_PARAMS`] before it is built.
pub fn check_teacher_size(
    d: usize,
    widths_: &[usize],
    k: Option<usize>,
    m: Option<usize>,
) -> Result<()> {
    let p = teacher_params(d, widths_, k, m);
    if p > MAX_TEACHER_PARAMS {
        return Err(Error::invalid(format!(
            "--d {d} with --widths {}: the teacher would have about {p:.1e} parameters ({} in f64), above the {MAX_TEACHER_PARAMS:.0e} a built-in teacher may have; use a smaller --d or --widths",
            widths(widths_),
            bytes(p * 8),
            p = p as f64,
            MAX_TEACHER_PARAMS = MAX_TEACHER_PARAMS as f64
        )));
    }
    Ok(())
}

/// Refuses a built-in teacher whose construction and sampling (its scale is set on
/// 65536 samples, then every one of `n` rows is a forward pass) would exceed
/// [`MAX_FLAG_FLOPS`]; returns a note when the work is above 1e12 flops (the teacher's
/// forward pass is a plain f64 loop of a few GFLOP/s).
pub fn check_teacher_work(
    d: usize,
    widths_: &[usize],
    k: Option<usize>,
    m: Option<usize>,
    n: u64,
) -> Result<Option<String>> {
    let params = teacher_params(d, widths_, k, m) as f64;
    let work = 2.0 * params * (NORMALISATION_SAMPLES as f64 + n as f64);
    if work > MAX_FLAG_FLOPS {
        return Err(Error::invalid(format!(
            "--n {n} samples of a teacher of about {params:.1e} parameters (--d {d}, --widths {}): at least {}; refused above {MAX_FLAG_FLOPS:.0e} flops: lower --n, --d or --widths",
            widths(widths_),
            flops(work)
        )));
    }
    Ok((work > 1e12).then(|| {
        format!(
            "note: a teacher of about {params:.1e} parameters (--widths {}) and --n {n} samples mean about {} of forward passes (the teacher's own loop runs a few GFLOP/s)",
            widths(widths_),
            flops(work)
        )
    }))
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn teacher_sizes() {
        assert!(check_teacher_size(128, &[4, 4], None, None).is_ok());
        assert!(check_teacher_size(4_000_000_000, &[4, 4], None, None).is_err());
        assert!(check_teacher_size(8, &[100_000_000], None, None).is_err());
    }
}
