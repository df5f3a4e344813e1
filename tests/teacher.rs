//! Teacher networks: symmetries, vanishing low-degree moments, relevant dimension, seeding,
//! rejected specs.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use relu_fpt::teacher::{build, Teacher, TeacherKind, TeacherSpec};
use relu_fpt::Error;

fn spec(kind: TeacherKind, dim: usize, seed: u64) -> TeacherSpec {
    let mut s = TeacherSpec::new(kind, dim);
    s.seed = seed;
    s
}

fn gaussian_rows(rows: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..rows * d).map(|_| rng.sample(StandardNormal)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| p * q).sum()
}

/// x with its component along the unit vector q negated (z_j -> -z_j when q = q_j).
fn reflect(x: &[f64], q: &[f64]) -> Vec<f64> {
    let c = 2.0 * dot(x, q);
    x.iter().zip(q).map(|(v, u)| v - c * u).collect()
}

/// Checks F(map(x)) = -F(x) on random points, with F(x) not identically 0.
fn assert_antisymmetric(t: &Teacher, map: impl Fn(&[f64]) -> Vec<f64>) {
    let d = t.network.input_dim;
    let x = gaussian_rows(200, d, 77);
    let mut largest: f64 = 0.0;
    for row in x.chunks(d) {
        let a = t.network.forward_one_f64(row);
        let b = t.network.forward_one_f64(&map(row));
        assert!(
            (a + b).abs() < 1e-10 * (1.0 + a.abs()),
            "{}: F = {a}, F(mapped) = {b}",
            t.name
        );
        largest = largest.max(a.abs());
    }
    assert!(largest > 0.1, "{}: output is (near) zero", t.name);
}

/// Monte Carlo degree <= 2 moments: (max |E[y x_i]| / se, max |E[y (x_i x_j - δ_ij)]| / se,
/// E[y^2], se of E[y^2]), with se the sample standard error of each mean.
fn low_degree_moments(t: &Teacher, n: usize, seed: u64) -> (f64, f64, f64, f64) {
    let d = t.network.input_dim;
    let x = gaussian_rows(n, d, seed);
    let y = t.network.forward_f64(&x, n);
    let z_score = |f: &dyn Fn(usize) -> f64| {
        let (mut s, mut s2) = (0.0, 0.0);
        for i in 0..n {
            let v = f(i);
            s += v;
            s2 += v * v;
        }
        let mean = s / n as f64;
        let var = (s2 / n as f64 - mean * mean).max(0.0);
        (mean, (var / n as f64).sqrt())
    };
    let mut worst1: f64 = 0.0;
    let mut worst2: f64 = 0.0;
    for a in 0..d {
        let (m, se) = z_score(&|i| y[i] * x[i * d + a]);
        worst1 = worst1.max(m.abs() / se);
        for b in a..d {
            let delta = (a == b) as u8 as f64;
            let (m, se) = z_score(&|i| y[i] * (x[i * d + a] * x[i * d + b] - delta));
            worst2 = worst2.max(m.abs() / se);
        }
    }
    let (m2, se2) = z_score(&|i| y[i] * y[i]);
    (worst1, worst2, m2, se2)
}

fn assert_hard(t: &Teacher) {
    let (z1, z2, m2, se2) = low_degree_moments(t, 200_000, 5);
    eprintln!(
        "{}: z1 {z1:.2} z2 {z2:.2} E[y^2] {m2:.4} se {se2:.4}",
        t.name
    );
    assert!(
        z1 < 4.0,
        "{}: E[y x] is {z1:.1} standard errors from 0",
        t.name
    );
    assert!(
        z2 < 4.0,
        "{}: E[y (xx^T - I)] is {z2:.1} standard errors from 0",
        t.name
    );
    assert!(
        m2 > 10.0 * se2,
        "{}: E[y^2] = {m2} does not stand out",
        t.name
    );
    assert!(
        (m2 - 1.0).abs() < 0.05,
        "{}: E[y^2] = {m2}, expected about 1",
        t.name
    );
}

#[test]
fn parity_is_odd_in_each_hidden_coordinate() {
    for k in [2, 4] {
        let mut s = spec(TeacherKind::Parity, 8, 3);
        s.k = Some(k);
        let t = build(&s).unwrap();
        assert_eq!(t.basis.len(), k);
        for q in &t.basis {
            assert_antisymmetric(&t, |x| reflect(x, q));
        }
    }
}

#[test]
fn deep_parity_is_odd_in_each_hidden_coordinate() {
    let t = build(&spec(TeacherKind::DeepParity, 8, 4)).unwrap();
    assert_eq!(t.basis.len(), 3);
    assert_eq!(t.network.layers.len(), 3);
    for q in &t.basis {
        assert_antisymmetric(&t, |x| reflect(x, q));
    }
}

#[test]
fn fan_flips_sign_under_rotation_by_pi_over_m() {
    let mut s = spec(TeacherKind::Fan, 8, 5);
    s.m = Some(6);
    let t = build(&s).unwrap();
    let (q1, q2) = (&t.basis[0], &t.basis[1]);
    let angle = std::f64::consts::PI / 6.0;
    let (c, sn) = (angle.cos(), angle.sin());
    assert_antisymmetric(&t, |x| {
        let (a, b) = (dot(x, q1), dot(x, q2));
        let (na, nb) = (c * a - sn * b, sn * a + c * b);
        x.iter()
            .zip(q1.iter().zip(q2))
            .map(|(v, (u1, u2))| v + (na - a) * u1 + (nb - b) * u2)
            .collect()
    });
}

#[test]
fn parity_low_degree_moments_vanish() {
    assert_hard(&build(&spec(TeacherKind::Parity, 8, 6)).unwrap());
    // Power check: with k = 2 the degree-2 coefficient E[y z_1 z_2] is not zero, and the same
    // statistic sees it.
    let mut s = spec(TeacherKind::Parity, 8, 6);
    s.k = Some(2);
    let (z1, z2, _, _) = low_degree_moments(&build(&s).unwrap(), 200_000, 5);
    assert!(z1 < 4.0 && z2 > 20.0, "parity k=2: z = {z1:.1}, {z2:.1}");
}

#[test]
fn fan_low_degree_moments_vanish() {
    assert_hard(&build(&spec(TeacherKind::Fan, 8, 7)).unwrap());
}

#[test]
fn deep_parity_low_degree_moments_vanish() {
    assert_hard(&build(&spec(TeacherKind::DeepParity, 8, 8)).unwrap());
}

/// The same moment test has power: a random network's degree-1/2 moments stand far out.
#[test]
fn random_teacher_low_degree_moments_do_not_vanish() {
    let t = build(&spec(TeacherKind::Random, 8, 9)).unwrap();
    let (z1, z2, _, _) = low_degree_moments(&t, 200_000, 5);
    assert!(
        z1.max(z2) > 20.0,
        "random teacher moments z = {z1:.1}, {z2:.1}"
    );
    // Normalised to unit variance (its mean need not be 0).
    let n = 50_000;
    let y = t.network.forward_f64(&gaussian_rows(n, 8, 6), n);
    let mean = y.iter().sum::<f64>() / n as f64;
    let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    assert!((var - 1.0).abs() < 0.05, "Var(y) = {var}");
}

#[test]
fn first_layer_span_has_the_relevant_dimension() {
    let mut random = spec(TeacherKind::Random, 10, 1);
    random.widths = vec![6, 4, 3];
    random.k = Some(3);
    random.bias = true;
    let mut parity6 = spec(TeacherKind::Parity, 10, 2);
    parity6.k = Some(6);
    let cases = [
        (random, 3),
        (spec(TeacherKind::Random, 10, 1), 4),
        (spec(TeacherKind::Parity, 10, 2), 4),
        (parity6, 6),
        (spec(TeacherKind::Fan, 10, 3), 2),
        (spec(TeacherKind::DeepParity, 10, 4), 3),
        (spec(TeacherKind::Composite, 10, 5), 3),
    ];
    for (s, dim) in cases {
        let t = build(&s).unwrap();
        assert_eq!(t.relevant_dim, dim, "{}", t.name);
        let span = t.network.first_layer_span();
        assert_eq!(span.len(), dim, "{}", t.name);
        // The span is the span of the hidden coordinates.
        for u in &span {
            let inside: f64 = t.basis.iter().map(|q| dot(u, q).powi(2)).sum();
            assert!((inside - 1.0).abs() < 1e-9, "{}", t.name);
        }
        for (i, p) in t.basis.iter().enumerate() {
            for (j, q) in t.basis.iter().enumerate() {
                assert!((dot(p, q) - (i == j) as u8 as f64).abs() < 1e-12);
            }
        }
        assert_eq!(t.network.input_dim, 10);
        assert!(t.network.subspace.is_none());
    }
}

#[test]
fn composite_is_a_fan_plus_a_relu_on_an_orthogonal_direction() {
    let t = build(&spec(TeacherKind::Composite, 6, 11)).unwrap();
    let q3 = &t.basis[2];
    // Along q3 alone the fan block is 0 (fan(0) = 0): F(s q3) = c relu(s) for some c > 0.
    let up = t
        .network
        .forward_one_f64(&q3.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
    let down = t
        .network
        .forward_one_f64(&q3.iter().map(|v| -2.0 * v).collect::<Vec<_>>());
    assert!(up > 0.0 && down.abs() < 1e-12, "{up} {down}");
    // Unit variance overall.
    let (_, _, m2, _) = low_degree_moments(&t, 50_000, 3);
    assert!((m2 - 1.0).abs() < 0.05, "E[y^2] = {m2}");
}

#[test]
fn same_seed_same_bytes_different_seed_different() {
    for kind in [
        TeacherKind::Random,
        TeacherKind::Parity,
        TeacherKind::Fan,
        TeacherKind::DeepParity,
        TeacherKind::Composite,
    ] {
        let a = build(&spec(kind, 12, 42)).unwrap().network.to_json();
        let b = build(&spec(kind, 12, 42)).unwrap().network.to_json();
        let c = build(&spec(kind, 12, 43)).unwrap().network.to_json();
        assert_eq!(a, b, "{kind}");
        assert_ne!(a, c, "{kind}");
    }
}

fn rejected(s: &TeacherSpec, flag: &str) {
    match build(s) {
        Err(Error::InvalidRequest(msg)) => assert!(msg.contains(flag), "{msg}"),
        other => panic!("{s:?} should be rejected naming {flag}, got {other:?}"),
    }
}

#[test]
fn invalid_specs_are_rejected_naming_the_flag() {
    let with = |kind, d, k: Option<usize>, m: Option<usize>| {
        let mut s = TeacherSpec::new(kind, d);
        s.k = k;
        s.m = m;
        s
    };
    rejected(&with(TeacherKind::Parity, 8, Some(3), None), "--k");
    rejected(&with(TeacherKind::Parity, 8, Some(0), None), "--k");
    rejected(&with(TeacherKind::Parity, 4, Some(6), None), "--k");
    rejected(&with(TeacherKind::Parity, 0, None, None), "--d");
    rejected(&with(TeacherKind::DeepParity, 2, Some(3), None), "--k");
    rejected(&with(TeacherKind::Fan, 8, None, Some(5)), "--m");
    rejected(&with(TeacherKind::Fan, 8, None, Some(2)), "--m");
    rejected(&with(TeacherKind::Fan, 1, None, None), "--d");
    rejected(&with(TeacherKind::Fan, 8, Some(2), None), "--k");
    rejected(&with(TeacherKind::Composite, 2, None, None), "--d");
    rejected(&with(TeacherKind::Composite, 8, None, Some(3)), "--m");
    rejected(&with(TeacherKind::Random, 8, Some(5), None), "--k"); // k > widths[0] = 4
    rejected(&with(TeacherKind::Random, 3, None, None), "--k"); // k = 4 > d = 3
    rejected(&with(TeacherKind::Random, 8, None, Some(4)), "--m");
    let mut s = TeacherSpec::new(TeacherKind::Random, 8);
    s.widths = vec![];
    rejected(&s, "--widths");
    let mut s = TeacherSpec::new(TeacherKind::Parity, 8);
    s.bias = true;
    rejected(&s, "--bias");
    // Odd k is fine for deep parity, even m >= 4 for fan.
    assert!(build(&with(TeacherKind::DeepParity, 8, Some(5), None)).is_ok());
    assert!(build(&with(TeacherKind::Fan, 8, None, Some(8))).is_ok());
}

#[test]
fn cli_names_are_as_documented() {
    use clap::ValueEnum;
    let names: Vec<String> = TeacherKind::value_variants()
        .iter()
        .map(|k| k.to_possible_value().unwrap().get_name().to_string())
        .collect();
    assert_eq!(
        names,
        ["random", "parity", "fan", "deep-parity", "composite"]
    );
    for k in TeacherKind::value_variants() {
        assert_eq!(k.to_possible_value().unwrap().get_name(), k.cli_name());
    }
}
