//! The learn pipeline on small planted instances with a given subspace basis (exact, or tilted
//! by a known angle so that the polish has something to fix).

mod common;

use rand::{RngExt, SeedableRng};
use relu_fpt::data::MemorySource;
use relu_fpt::learn::{dense_mse, learn, lift_network, DenseSamples, LearnConfig};
use relu_fpt::network::{Layer, Network};

const D: usize = 12;

/// Orthonormal rows e_0 and (cos a) e_1 + (sin a) e_5: a basis tilted by `a` from span(e_0, e_1).
fn basis(tilt: f64) -> Vec<Vec<f64>> {
    let mut b0 = vec![0.0; D];
    b0[0] = 1.0;
    let mut b1 = vec![0.0; D];
    b1[1] = tilt.cos();
    b1[5] = tilt.sin();
    vec![b0, b1]
}

/// A two-unit network with biases acting on span(e_0, e_1), scaled by `steep`.
fn teacher(steep: f64) -> Network {
    let (a, b) = (0.7f64, 2.5f64);
    let inner = Network::new(
        2,
        vec![
            Layer::new(
                2,
                2,
                vec![a.cos(), a.sin(), b.cos(), b.sin()],
                vec![0.3, -0.5],
            )
            .unwrap(),
            Layer::new(2, 1, vec![1.5 * steep, -steep], vec![0.2]).unwrap(),
        ],
    )
    .unwrap();
    let mut t = lift_network(&inner, &basis(0.0)).unwrap();
    t.subspace = None;
    t
}

fn source(net: &Network, n: usize, seed: u64) -> MemorySource {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * D)
        .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    let y = x
        .chunks_exact(D)
        .map(|row| {
            let v: Vec<f64> = row.iter().map(|&a| a as f64).collect();
            net.forward_one_f64(&v) as f32
        })
        .collect();
    MemorySource { dim: D, x, y }
}

fn config(tilt: f64) -> LearnConfig {
    LearnConfig {
        hidden: vec![2],
        budget: 1500,
        known_basis: Some(basis(tilt)),
        ..LearnConfig::default()
    }
}

#[test]
fn learn_with_the_true_subspace_fits_a_planted_network() {
    let net = teacher(1.0);
    let src = source(&net, 4000, 1);
    let rep = learn(common::cpu(), &src, &config(0.0)).unwrap();
    eprintln!("{}", rep.summary());
    let ratio = rep.validation_mse / rep.validation_var;
    assert!(ratio < 1e-3, "MSE/Var {ratio}\n{}", rep.summary());
    assert_eq!(rep.dimension, 2);
    assert_eq!(rep.model.input_dim, D);
    assert_eq!(rep.validation_rows, 800);
    assert!(rep.model.subspace.is_some());
    // The reported validation error is the model's own error on the last 800 rows.
    let val = DenseSamples {
        dim: D,
        x: &src.x[3200 * D..],
        y: &src.y[3200..],
    };
    let direct = dense_mse(&rep.model, &val);
    assert!((direct - rep.validation_mse).abs() < 1e-6 * rep.validation_var.max(1.0));
    let json = rep.to_json();
    assert_eq!(json["dimension"], 2);
    assert!(json["chosen"] == "enumerate" || json["chosen"] == "sphere-net");
    assert!(rep.summary().contains("MSE/Var"));
}

#[test]
fn polish_repairs_a_tilted_subspace() {
    // A steep teacher and a basis 0.08 rad off: the search alone is limited by the tilt.
    let net = teacher(4.0);
    let src = source(&net, 4000, 2);
    let mut cfg = config(0.08);
    cfg.sphere_net = false;
    let rep = learn(common::cpu(), &src, &cfg).unwrap();
    eprintln!("{}", rep.summary());
    let p = rep.polished_mse.expect("polish ran");
    assert!(p.kept, "{}", rep.summary());
    assert!(p.after < 0.01 * p.before, "{}", rep.summary());
    assert_eq!(rep.validation_mse, p.after);
}

#[test]
fn bad_learn_requests_are_errors() {
    let net = teacher(1.0);
    let src = source(&net, 200, 3);
    let cpu = common::cpu();
    let bad_fraction = LearnConfig {
        validation_fraction: 1.0,
        ..config(0.0)
    };
    assert!(learn(cpu, &src, &bad_fraction).is_err());
    let too_big = LearnConfig {
        max_dim: 1,
        ..config(0.0)
    };
    assert!(learn(cpu, &src, &too_big).is_err());
    let wrong_len = LearnConfig {
        known_basis: Some(vec![vec![1.0; D + 1]]),
        ..config(0.0)
    };
    assert!(learn(cpu, &src, &wrong_len).is_err());
}

/// Parity-ReLU sum (ALGORITHM.md 4.2 (A)) with k = 4 on the first four coordinates of R^16.
fn parity4_source(n: usize, seed: u64) -> MemorySource {
    let d = 16;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * d)
        .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    let y = x
        .chunks_exact(d)
        .map(|row| {
            let mut f = 0.0f64;
            for code in 0..16u32 {
                let mut chi = 1.0;
                let mut dot = 0.0;
                for (i, &z) in row[..4].iter().enumerate() {
                    let w = if code >> i & 1 == 1 { -1.0 } else { 1.0 };
                    chi *= w;
                    dot += w * z as f64;
                }
                f += chi * (dot / 2.0).max(0.0);
            }
            f as f32
        })
        .collect();
    MemorySource { dim: d, x, y }
}

#[test]
fn learn_parity4_on_its_subspace() {
    let src = parity4_source(20000, 4);
    let basis: Vec<Vec<f64>> = (0..4)
        .map(|i| (0..16).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    let cfg = LearnConfig {
        hidden: vec![16],
        budget: 400,
        known_basis: Some(basis),
        ..LearnConfig::default()
    };
    let rep = learn(common::cpu(), &src, &cfg).unwrap();
    eprintln!("{}", rep.summary());
    let ratio = rep.validation_mse / rep.validation_var;
    assert!(ratio < 0.06, "parity-4 MSE/Var {ratio}");
}

/// A random depth-3 network with biases on a random 3-dim subspace of R^10.
#[test]
fn learn_a_random_deep_network_with_biases() {
    let d = 10;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let layer = |i: usize, o: usize, rng: &mut rand::rngs::StdRng| {
        let w = (0..i * o)
            .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal) / (i as f64).sqrt())
            .collect();
        let b = (0..o)
            .map(|_| 0.3 * rng.sample::<f64, _>(rand_distr::StandardNormal))
            .collect();
        Layer::new(i, o, w, b).unwrap()
    };
    let inner = Network::new(
        3,
        vec![
            layer(3, 4, &mut rng),
            layer(4, 3, &mut rng),
            layer(3, 1, &mut rng),
        ],
    )
    .unwrap();
    // Orthonormal basis: three coordinate directions mixed by a fixed rotation in (e2, e7).
    let (c, s) = (0.6f64, 0.8f64);
    let mut basis = vec![vec![0.0; d]; 3];
    basis[0][0] = 1.0;
    basis[1][2] = c;
    basis[1][7] = s;
    basis[2][4] = 1.0;
    let mut teacher = lift_network(&inner, &basis).unwrap();
    teacher.subspace = None;
    let n = 8000;
    let x: Vec<f32> = (0..n * d)
        .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    let y = x
        .chunks_exact(d)
        .map(|row| {
            let v: Vec<f64> = row.iter().map(|&a| a as f64).collect();
            teacher.forward_one_f64(&v) as f32
        })
        .collect();
    let src = MemorySource { dim: d, x, y };
    let cfg = LearnConfig {
        hidden: vec![4, 3],
        budget: 1500,
        known_basis: Some(basis),
        ..LearnConfig::default()
    };
    let rep = learn(common::cpu(), &src, &cfg).unwrap();
    eprintln!("{}", rep.summary());
    let ratio = rep.validation_mse / rep.validation_var;
    assert!(ratio < 0.02, "random deep network MSE/Var {ratio}");
}

#[test]
fn learn_is_deterministic_and_runs_on_the_gpu_backend() {
    let net = teacher(1.0);
    let src = source(&net, 1500, 6);
    let cfg = LearnConfig {
        budget: 300,
        polish_config: relu_fpt::learn::PolishConfig {
            epochs: 5,
            ..Default::default()
        },
        ..config(0.03)
    };
    let a = learn(common::cpu(), &src, &cfg).unwrap();
    let b = learn(common::cpu(), &src, &cfg).unwrap();
    assert_eq!(a.model, b.model);
    assert_eq!(a.validation_mse, b.validation_mse);
    let g = learn(common::gpu(), &src, &cfg).unwrap();
    assert!(
        g.validation_mse / g.validation_var < 0.05,
        "{}",
        g.summary()
    );
    assert!(g.backend != a.backend);
}

#[test]
fn learn_without_polish_reports_the_search_fit() {
    let net = teacher(1.0);
    let src = source(&net, 1500, 7);
    let cfg = LearnConfig {
        budget: 300,
        polish: false,
        ..config(0.0)
    };
    let rep = learn(common::cpu(), &src, &cfg).unwrap();
    assert!(rep.polished_mse.is_none());
    let best = rep.enumerate_mse.min(rep.sphere_net_mse.unwrap());
    assert_eq!(rep.validation_mse, best);
    let val = DenseSamples {
        dim: D,
        x: &src.x[1200 * D..],
        y: &src.y[1200..],
    };
    let direct = dense_mse(&rep.model, &val);
    assert!(
        (direct - rep.validation_mse).abs() < 1e-4 * rep.validation_var,
        "{direct} vs {}",
        rep.validation_mse
    );
}
