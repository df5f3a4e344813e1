//! The learn pipeline on small planted instances with a given subspace basis (exact, or tilted
//! by a known angle so that the polish has something to fix).

mod common;

use rand::{RngExt, SeedableRng};
use relu_fpt::data::GaussianSource;
use relu_fpt::data::MemorySource;
use relu_fpt::learn::{dense_mse, learn, DenseSamples, LearnConfig};
use relu_fpt::metrics::principal_angles;
use relu_fpt::network::{Layer, Network};
use relu_fpt::teacher::{build, TeacherKind, TeacherSpec};

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
    let mut t = inner.lift(&basis(0.0)).unwrap();
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

/// A random depth-3 network with biases (widths [4, 3], k = 3) in d = 10, on its subspace.
#[test]
fn learn_a_random_deep_network_with_biases() {
    let spec = TeacherSpec {
        widths: vec![4, 3],
        k: Some(3),
        bias: true,
        seed: 5,
        ..TeacherSpec::new(TeacherKind::Random, 10)
    };
    let teacher = build(&spec).unwrap();
    let src = GaussianSource::new(teacher.network.clone(), 8000, 6, 0.0).unwrap();
    let cfg = LearnConfig {
        hidden: vec![4, 3],
        budget: 1500,
        known_basis: Some(teacher.basis.clone()),
        polish_config: relu_fpt::learn::PolishConfig {
            epochs: 80,
            ..Default::default()
        },
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
    // The descent on z starts from the search's best and is kept only when it improves.
    // (The same network scored by another summation order: equal to rounding.)
    let descent = rep.descent_mse.unwrap();
    assert!(
        (descent.before - best).abs() < 1e-6 * best,
        "{descent:?} vs {best}"
    );
    assert_eq!(rep.validation_mse, descent.before.min(descent.after));
    assert_eq!(descent.kept, descent.after < descent.before);
    let search_only = LearnConfig {
        descent: false,
        ..cfg.clone()
    };
    let rep_search = learn(common::cpu(), &src, &search_only).unwrap();
    assert!(rep_search.descent_mse.is_none());
    assert_eq!(rep_search.validation_mse, best);
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

/// The end-to-end tests' settings: a small search (budget 200, 48 sphere directions) and 10
/// polish epochs, so each test takes a few seconds.
fn small_search(hidden: Vec<usize>, polish: bool) -> LearnConfig {
    LearnConfig {
        hidden,
        budget: 200,
        sphere_config: relu_fpt::search::SphereNetConfig {
            max_directions: 48,
            ..Default::default()
        },
        polish_config: relu_fpt::learn::PolishConfig {
            epochs: 10,
            ..Default::default()
        },
        polish,
        ..LearnConfig::default()
    }
}

/// The whole pipeline, filtered PCA included: parity-4 in d = 16.
#[test]
fn learn_end_to_end_parity4() {
    let spec = TeacherSpec {
        k: Some(4),
        seed: 7,
        ..TeacherSpec::new(TeacherKind::Parity, 16)
    };
    let teacher = build(&spec).unwrap();
    let src = GaussianSource::new(teacher.network.clone(), 100_000, 8, 0.0).unwrap();
    let rep = learn(common::cpu(), &src, &small_search(vec![16], true)).unwrap();
    eprintln!("{}", rep.summary());
    assert_eq!(rep.dimension, 4, "{}", rep.summary());
    assert!(rep.subspace.is_some());
    let ratio = rep.validation_mse / rep.validation_var;
    assert!(ratio < 0.02, "parity-4 end to end MSE/Var {ratio}");
}

/// End to end (filtered PCA, no known basis) on a built-in teacher in d = 24 with N = 1e5 on the
/// CPU, with `small_search`. Asserts the teacher's relevant dimension is found, the
/// found basis is within `max_angle` (rad) of the teacher's first-layer span, and validation
/// MSE/Var is below `max_ratio`.
fn end_to_end(spec: TeacherSpec, hidden: Vec<usize>, max_angle: f64, max_ratio: f64) {
    end_to_end_with(spec, hidden, true, max_angle, max_ratio);
}

fn end_to_end_with(
    spec: TeacherSpec,
    hidden: Vec<usize>,
    polish: bool,
    max_angle: f64,
    max_ratio: f64,
) {
    let teacher = build(&spec).unwrap();
    let src = GaussianSource::new(teacher.network.clone(), 100_000, spec.seed + 100, 0.0).unwrap();
    let rep = learn(common::cpu(), &src, &small_search(hidden, polish)).unwrap();
    eprintln!("{}: {}", teacher.name, rep.summary());
    assert_eq!(rep.polished_mse.is_some(), polish);
    assert_eq!(rep.dimension, teacher.relevant_dim, "{}", rep.summary());
    let found = &rep.subspace.as_ref().expect("filtered PCA ran").basis;
    let angles = principal_angles(found, &teacher.network.first_layer_span());
    assert_eq!(angles.len(), teacher.relevant_dim);
    let largest = angles[angles.len() - 1];
    assert!(
        largest < max_angle,
        "{}: largest angle {largest}",
        teacher.name
    );
    let ratio = rep.validation_mse / rep.validation_var;
    assert!(ratio < max_ratio, "{}: MSE/Var {ratio}", teacher.name);
}

// Bounds below: measured on teacher seeds 1-8 (samples seeded seed + 100) at this size, set at
// 2-4x the worst seed. A pipeline that loses a direction lands far above them (losing the
// composite's ReLU direction alone leaves about 0.08; deep parity, odd in each hidden coordinate,
// goes to about 1); at half the samples (N = 5e4) the fan already exceeds its bound.

/// (B) fan, m = 4, in d = 24. Measured largest angle 0.044-0.058 rad, MSE/Var 1.0e-5 to
/// 2.7e-5 (the polish takes it there from the sphere-net fit's 3e-2 on seed 3).
#[test]
fn learn_end_to_end_fan() {
    let spec = TeacherSpec {
        m: Some(4),
        seed: 3,
        ..TeacherSpec::new(TeacherKind::Fan, 24)
    };
    end_to_end(spec, vec![8], 0.15, 1e-4);
}

/// (C) deep parity, k = 3, in d = 24. Measured largest angle 0.070-0.099 rad, MSE/Var 0.017
/// to 0.023; handed the true basis it reaches 0.017-0.019 (seeds 1-3), so the fit, not the
/// subspace, sets this level.
#[test]
fn learn_end_to_end_deep_parity3() {
    let spec = TeacherSpec {
        k: Some(3),
        seed: 3,
        ..TeacherSpec::new(TeacherKind::DeepParity, 24)
    };
    end_to_end(spec, vec![6, 8], 0.2, 0.05);
}

/// (D) composite (fan plane plus a ReLU direction, relevant dimension 3), in d = 24. Measured
/// largest angle 0.052-0.088 rad, MSE/Var 1.2e-4 to 3.7e-3.
#[test]
fn learn_end_to_end_composite() {
    let spec = TeacherSpec {
        seed: 3,
        ..TeacherSpec::new(TeacherKind::Composite, 24)
    };
    end_to_end(spec, vec![9], 0.2, 0.01);
}

/// The whole pipeline on a random depth-3 network with biases (k = 3) in d = 16.
#[test]
fn learn_end_to_end_random_network_with_biases() {
    let spec = TeacherSpec {
        widths: vec![4, 3],
        k: Some(3),
        bias: true,
        seed: 9,
        ..TeacherSpec::new(TeacherKind::Random, 16)
    };
    let teacher = build(&spec).unwrap();
    let src = GaussianSource::new(teacher.network.clone(), 40_000, 10, 0.0).unwrap();
    let cfg = LearnConfig {
        hidden: vec![4, 3],
        budget: 500,
        polish_config: relu_fpt::learn::PolishConfig {
            epochs: 10,
            ..Default::default()
        },
        ..LearnConfig::default()
    };
    let rep = learn(common::cpu(), &src, &cfg).unwrap();
    eprintln!("{}", rep.summary());
    let ratio = rep.validation_mse / rep.validation_var;
    assert!(ratio < 0.01, "random network end to end MSE/Var {ratio}");
}

#[test]
fn row_caps_bound_the_work_and_errors_stay_on_all_validation_rows() {
    let net = teacher(1.0);
    let src = source(&net, 2000, 11);
    let mut cfg = config(0.02);
    cfg.budget = 300;
    cfg.search_config.max_rows = 300;
    cfg.sphere_config.max_rows = 400;
    cfg.polish_config.max_rows = 500;
    cfg.polish_config.epochs = 5;
    let rep = learn(common::cpu(), &src, &cfg).unwrap();
    let val = DenseSamples {
        dim: D,
        x: &src.x[1600 * D..],
        y: &src.y[1600..],
    };
    let direct = dense_mse(&rep.model, &val);
    assert!(
        (direct - rep.validation_mse).abs() < 1e-6 * rep.validation_var,
        "{direct} vs {}",
        rep.validation_mse
    );
    let p = rep.polished_mse.unwrap();
    assert_eq!(p.kept, p.after < p.before);
    assert!(
        rep.validation_mse / rep.validation_var < 0.2,
        "{}",
        rep.summary()
    );
}

/// Without the polish: the search and the descent on z alone, on the found basis. Measured on
/// teacher seeds 1-4: fan 8.9e-6 to 1.2e-5, composite 5.7e-4 to 1.1e-3, deep parity 6.0e-3 to
/// 6.5e-3 (the sphere-net fit the descent starts from: 1.8e-2, 0.21-0.31, 0.14); bounds about
/// 3x the worst seed.
#[test]
fn learn_end_to_end_without_polish() {
    let cases = [
        (TeacherKind::Fan, vec![8], 0.15, 5e-5),
        (TeacherKind::Composite, vec![9], 0.2, 3e-3),
        (TeacherKind::DeepParity, vec![6, 8], 0.2, 0.02),
    ];
    for (kind, hidden, max_angle, max_ratio) in cases {
        let spec = TeacherSpec {
            seed: 3,
            ..TeacherSpec::new(kind, 24)
        };
        end_to_end_with(spec, hidden, false, max_angle, max_ratio);
    }
}
