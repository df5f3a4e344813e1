//! The learn pipeline on small planted instances, with a given subspace basis (exact, or tilted
//! by a known angle so that the polish has something to fix) and end to end. Every test uses
//! the default hidden widths (a user does not know the teacher's).
//!
//! Error bounds are twice the worst of ten seeds (1-10) with each test's exact settings,
//! measured with
//!
//!   RELU_FPT_MEASURE_SEEDS=10 cargo test --release --test learn -- --nocapture --test-threads 1
//!
//! which runs every seeded case on seeds 1-10 and prints its errors ("measure: ...") instead of
//! asserting the bounds; the code is deterministic, so a debug build gives the same numbers.

mod common;

use relu_fpt::backend::Backend;
use relu_fpt::data::GaussianSource;
use relu_fpt::data::MemorySource;
use relu_fpt::learn::{dense_mse, learn, DenseSamples, LearnConfig, LearnReport, Stage};
use relu_fpt::metrics::principal_angles;
use relu_fpt::network::{Layer, Network};
use relu_fpt::teacher::{build, TeacherKind, TeacherSpec};

const D: usize = 12;

/// The seeds a test runs: `default`, or 1..=N under RELU_FPT_MEASURE_SEEDS=N.
fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("RELU_FPT_MEASURE_SEEDS") {
        Ok(n) => (1..=n.parse::<u64>().expect("RELU_FPT_MEASURE_SEEDS: a count")).collect(),
        Err(_) => default.to_vec(),
    }
}

fn measuring() -> bool {
    std::env::var("RELU_FPT_MEASURE_SEEDS").is_ok()
}

/// Asserts `value < bound`, or prints the value when measuring.
fn below(value: f64, bound: f64, what: &str, rep: &LearnReport) {
    if measuring() {
        println!(
            "measure: {what}: {value:.3e} (bound {bound:.1e}; chosen {}, enumerate {:.2e}, sphere-net {:.2e})",
            rep.chosen,
            rep.enumerate_mse / rep.validation_var,
            rep.sphere_net_mse.unwrap_or(f64::NAN) / rep.validation_var
        );
    } else {
        assert!(
            value < bound,
            "{what}: {value} >= {bound}\n{}",
            rep.summary()
        );
    }
}

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

fn config(tilt: f64) -> LearnConfig {
    LearnConfig {
        known_basis: Some(basis(tilt)),
        ..LearnConfig::default()
    }
}

/// The model's error on the last `n_val` rows of `src`, recomputed here.
fn direct_mse(rep: &LearnReport, src: &MemorySource, n_val: usize) -> f64 {
    let n = src.y.len();
    let val = DenseSamples {
        dim: src.dim,
        x: &src.x[(n - n_val) * src.dim..],
        y: &src.y[n - n_val..],
    };
    dense_mse(&rep.model, &val)
}

/// Random width-2 teachers with biases (k = 2, d = 12), the true basis given, the default
/// settings. Enumerate-and-test can represent them exactly and the sphere-net fit cannot (its
/// net of directions leaves a floor of 1e-3 to 1e-2, tests/search.rs), so the search must pick
/// enumerate-and-test. Measured MSE/Var over seeds 1-10: see the bound.
#[test]
fn learn_with_the_true_subspace_fits_width_two_teachers() {
    for seed in seeds(&[1, 2]) {
        let spec = TeacherSpec {
            widths: vec![2],
            k: Some(2),
            bias: true,
            seed,
            ..TeacherSpec::new(TeacherKind::Random, D)
        };
        let t = build(&spec).unwrap();
        let src = common::labelled_samples(&t.network, 4000, 100 + seed);
        let cfg = LearnConfig {
            known_basis: Some(t.basis.clone()),
            seed,
            ..LearnConfig::default()
        };
        let rep = learn(common::cpu(), &src, &cfg).unwrap();
        let ratio = rep.validation_mse / rep.validation_var;
        below(
            ratio,
            1e-3,
            &format!("width-2 known basis seed {seed}"),
            &rep,
        );
        assert_eq!(rep.chosen, Stage::Enumerate, "{}", rep.summary());
        assert_eq!(rep.to_json()["chosen"], "enumerate");
        assert_eq!(rep.dimension, 2);
        assert_eq!(rep.model.input_dim, D);
        assert_eq!(rep.validation_rows, 800);
        assert!(rep.model.subspace.is_some());
        // The reported validation error is the model's own error on the last 800 rows.
        let direct = direct_mse(&rep, &src, 800);
        assert!((direct - rep.validation_mse).abs() < 1e-6 * rep.validation_var);
    }
}

/// A steep teacher and a basis 0.08 rad off: the search alone is limited by the tilt, and
/// the polish (which moves the basis) must take most of that error away. Measured after/before
/// over sample seeds 1-10: see the bound.
#[test]
fn polish_repairs_a_tilted_subspace() {
    let net = teacher(4.0);
    for seed in seeds(&[2]) {
        let src = common::labelled_samples(&net, 4000, seed);
        let mut cfg = config(0.08);
        cfg.sphere_net = false;
        // The polish's share of the repair, from the two-layer deep net the bound was measured
        // with (from the three-layer one the pilots pick here it starts 1.4x lower, 3.1e-3
        // against 4.4e-3 of Var(y) after the pilots, and ends at 1.6e-4).
        cfg.deep_candidates = vec![vec![32, 32]];
        let rep = learn(common::cpu(), &src, &cfg).unwrap();
        let p = rep.polished_mse.expect("polish ran");
        below(
            p.after / p.before,
            0.01,
            &format!("tilted polish after/before seed {seed}"),
            &rep,
        );
        assert!(p.kept, "{}", rep.summary());
        assert_eq!(rep.validation_mse, p.after);
    }
}

#[test]
fn bad_learn_requests_are_errors() {
    let net = teacher(1.0);
    let src = common::labelled_samples(&net, 200, 3);
    let cpu = common::cpu();
    let bad_fraction = LearnConfig {
        validation_fraction: 1.0,
        ..config(0.0)
    };
    assert!(learn(cpu, &src, &bad_fraction).is_err());
    let too_big = LearnConfig {
        subspace_config: relu_fpt::subspace::SubspaceConfig {
            max_dim: 1,
            ..LearnConfig::default().subspace_config
        },
        ..config(0.0)
    };
    assert!(learn(cpu, &src, &too_big).is_err());
    let wrong_len = LearnConfig {
        known_basis: Some(vec![vec![1.0; D + 1]]),
        ..config(0.0)
    };
    assert!(learn(cpu, &src, &wrong_len).is_err());
}

/// Random depth-3 networks with biases (widths [4, 3], k = 3) in d = 10 on their subspace, the
/// default widths and 80 polish epochs. Measured MSE/Var over teacher seeds 1-10 on the
/// counter-based sample stream: 1.9e-4 to 1.02e-2, and 6.0e-2 on seed 5 (there the descent and
/// the polish do not improve on the enumerate fit); the bound is twice the worst.
#[test]
fn learn_random_deep_networks_with_biases() {
    for seed in seeds(&[5]) {
        let spec = TeacherSpec {
            widths: vec![4, 3],
            k: Some(3),
            bias: true,
            seed,
            ..TeacherSpec::new(TeacherKind::Random, 10)
        };
        let teacher = build(&spec).unwrap();
        let src = GaussianSource::new(teacher.network.clone(), 8000, seed + 1, 0.0).unwrap();
        let cfg = LearnConfig {
            search_config: relu_fpt::search::SearchConfig {
                budget: 1500,
                ..LearnConfig::default().search_config
            },
            known_basis: Some(teacher.basis.clone()),
            polish_config: relu_fpt::learn::PolishConfig {
                epochs: 80,
                ..Default::default()
            },
            ..LearnConfig::default()
        };
        let rep = learn(common::cpu(), &src, &cfg).unwrap();
        let ratio = rep.validation_mse / rep.validation_var;
        below(
            ratio,
            0.12,
            &format!("random [4, 3] known basis seed {seed}"),
            &rep,
        );
    }
}

/// Same seed, same model; the GPU backend runs the same pipeline (its evaluation kernel scores
/// the candidates) and reaches the CPU's bound of the test above on its width-2 teachers.
#[test]
fn learn_is_deterministic_and_runs_on_the_gpu_backend() {
    let spec = TeacherSpec {
        widths: vec![2],
        k: Some(2),
        bias: true,
        seed: 1,
        ..TeacherSpec::new(TeacherKind::Random, D)
    };
    let t = build(&spec).unwrap();
    let src = common::labelled_samples(&t.network, 1500, 6);
    let cfg = LearnConfig {
        known_basis: Some(t.basis.clone()),
        polish_config: relu_fpt::learn::PolishConfig {
            epochs: 5,
            ..Default::default()
        },
        ..LearnConfig::default()
    };
    let a = learn(common::cpu(), &src, &cfg).unwrap();
    let b = learn(common::cpu(), &src, &cfg).unwrap();
    assert_eq!(a.model, b.model);
    assert_eq!(a.validation_mse, b.validation_mse);
    let gpu = common::gpu();
    let g = learn(gpu, &src, &cfg).unwrap();
    // Each report names the backend that ran it.
    assert_eq!(gpu.kind(), relu_fpt::backend::Device::Gpu);
    assert_eq!(g.backend, gpu.description(), "{}", g.summary());
    assert_eq!(a.backend, common::cpu().description());
    below(
        g.validation_mse / g.validation_var,
        1e-3,
        "width-2 on the gpu backend",
        &g,
    );
}

/// Without the polish the model is the descent's (or the search's) network on the basis, and
/// without the descent it is the search's pick, on the same width-2 teacher as above (where
/// the pick is enumerate-and-test).
#[test]
fn learn_without_polish_reports_the_search_fit() {
    let net = teacher(1.0);
    let src = common::labelled_samples(&net, 1500, 7);
    let cfg = LearnConfig {
        polish: false,
        ..config(0.0)
    };
    let rep = learn(common::cpu(), &src, &cfg).unwrap();
    assert!(rep.polished_mse.is_none());
    assert_eq!(rep.chosen, Stage::Enumerate, "{}", rep.summary());
    // The descent on z starts from enumerate-and-test's network and is kept only when it
    // improves. (The same network scored by another summation order: equal to rounding.)
    let descent = rep.descent_mse.unwrap();
    assert!(
        (descent.before - rep.enumerate_mse).abs() < 1e-6 * rep.enumerate_mse,
        "{descent:?} vs {}",
        rep.enumerate_mse
    );
    assert_eq!(rep.validation_mse, descent.before.min(descent.after));
    assert_eq!(descent.kept, descent.after < descent.before);
    let search_only = LearnConfig {
        descent: false,
        ..cfg.clone()
    };
    let rep_search = learn(common::cpu(), &src, &search_only).unwrap();
    assert!(rep_search.descent_mse.is_none());
    assert_eq!(rep_search.validation_mse, rep_search.enumerate_mse);
    let direct = direct_mse(&rep, &src, 300);
    assert!(
        (direct - rep.validation_mse).abs() < 1e-4 * rep.validation_var,
        "{direct} vs {}",
        rep.validation_mse
    );
}

/// The end-to-end tests' settings: default widths, a small search (budget 200, 48 sphere
/// directions) and 10 polish epochs, so each test takes a few seconds.
fn small_search(polish: bool) -> LearnConfig {
    LearnConfig {
        search_config: relu_fpt::search::SearchConfig {
            budget: 200,
            ..LearnConfig::default().search_config
        },
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

/// End to end (filtered PCA, no known basis) on a built-in teacher with N = 1e5 on the CPU,
/// with `small_search`. Asserts the teacher's relevant dimension is found, the found basis is
/// within `max_angle` (rad) of the teacher's first-layer span, and validation MSE/Var is below
/// `max_ratio`, on each seed.
fn end_to_end(
    spec: TeacherSpec,
    default_seeds: &[u64],
    polish: bool,
    max_angle: f64,
    max_ratio: f64,
) {
    for seed in seeds(default_seeds) {
        let spec = TeacherSpec {
            seed,
            ..spec.clone()
        };
        let teacher = build(&spec).unwrap();
        let src = GaussianSource::new(teacher.network.clone(), 100_000, seed + 100, 0.0).unwrap();
        let rep = learn(common::cpu(), &src, &small_search(polish)).unwrap();
        assert_eq!(rep.polished_mse.is_some(), polish);
        assert_eq!(rep.dimension, teacher.relevant_dim, "{}", rep.summary());
        let found = &rep.subspace.as_ref().expect("filtered PCA ran").basis;
        let angles = principal_angles(found, &teacher.network.first_layer_span());
        assert_eq!(angles.len(), teacher.relevant_dim);
        let what = format!(
            "{}{}",
            teacher.name,
            if polish { "" } else { " without polish" }
        );
        below(
            angles[angles.len() - 1],
            max_angle,
            &format!("{what}: largest angle"),
            &rep,
        );
        below(
            rep.validation_mse / rep.validation_var,
            max_ratio,
            &format!("{what}: MSE/Var"),
            &rep,
        );
    }
}

/// (A) parity-4 in d = 16: every Hermite moment below degree 4 vanishes.
#[test]
fn learn_end_to_end_parity4() {
    let spec = TeacherSpec {
        k: Some(4),
        ..TeacherSpec::new(TeacherKind::Parity, 16)
    };
    end_to_end(spec, &[7], true, 0.2, 0.02);
}

/// (B) fan, m = 4, in d = 24.
#[test]
fn learn_end_to_end_fan() {
    let spec = TeacherSpec {
        m: Some(4),
        ..TeacherSpec::new(TeacherKind::Fan, 24)
    };
    end_to_end(spec, &[3], true, 0.15, 1e-4);
}

/// (C) deep parity, k = 3, in d = 24.
#[test]
fn learn_end_to_end_deep_parity3() {
    let spec = TeacherSpec {
        k: Some(3),
        ..TeacherSpec::new(TeacherKind::DeepParity, 24)
    };
    end_to_end(spec, &[3], true, 0.2, 0.05);
}

/// (D) composite (fan plane plus a ReLU direction, relevant dimension 3), in d = 24.
#[test]
fn learn_end_to_end_composite() {
    end_to_end(
        TeacherSpec::new(TeacherKind::Composite, 24),
        &[3],
        true,
        0.2,
        0.01,
    );
}

/// Without the polish: the search and the descent on z alone, on the found basis.
#[test]
fn learn_end_to_end_without_polish() {
    let fan = TeacherSpec {
        m: Some(4),
        ..TeacherSpec::new(TeacherKind::Fan, 24)
    };
    end_to_end(fan, &[3], false, 0.15, 5e-5);
    end_to_end(
        TeacherSpec::new(TeacherKind::Composite, 24),
        &[3],
        false,
        0.2,
        3e-3,
    );
    let deep_parity = TeacherSpec {
        k: Some(3),
        ..TeacherSpec::new(TeacherKind::DeepParity, 24)
    };
    end_to_end(deep_parity, &[3], false, 0.2, 0.02);
}

/// The whole pipeline on random depth-3 networks with biases (k = 3) in d = 16, N = 4e4.
#[test]
fn learn_end_to_end_random_network_with_biases() {
    for seed in seeds(&[9]) {
        let spec = TeacherSpec {
            widths: vec![4, 3],
            k: Some(3),
            bias: true,
            seed,
            ..TeacherSpec::new(TeacherKind::Random, 16)
        };
        let teacher = build(&spec).unwrap();
        let src = GaussianSource::new(teacher.network.clone(), 40_000, seed + 1, 0.0).unwrap();
        let cfg = LearnConfig {
            search_config: relu_fpt::search::SearchConfig {
                budget: 500,
                ..LearnConfig::default().search_config
            },
            polish_config: relu_fpt::learn::PolishConfig {
                epochs: 10,
                ..Default::default()
            },
            ..LearnConfig::default()
        };
        let rep = learn(common::cpu(), &src, &cfg).unwrap();
        below(
            rep.validation_mse / rep.validation_var,
            0.01,
            &format!("random [4, 3] end to end seed {seed}"),
            &rep,
        );
    }
}

/// Row caps on each stage bound the work, and errors are still reported on every validation
/// row.
#[test]
fn row_caps_bound_the_work_and_errors_stay_on_all_validation_rows() {
    let net = teacher(1.0);
    for seed in seeds(&[11]) {
        let src = common::labelled_samples(&net, 2000, seed);
        let mut cfg = config(0.02);
        cfg.search_config.budget = 300;
        cfg.search_config.max_rows = 300;
        cfg.sphere_config.max_rows = 400;
        cfg.polish_config.max_rows = 500;
        cfg.polish_config.epochs = 5;
        let rep = learn(common::cpu(), &src, &cfg).unwrap();
        let direct = direct_mse(&rep, &src, 400);
        assert!(
            (direct - rep.validation_mse).abs() < 1e-6 * rep.validation_var,
            "{direct} vs {}",
            rep.validation_mse
        );
        let p = rep.polished_mse.unwrap();
        assert_eq!(p.kept, p.after < p.before);
        below(
            rep.validation_mse / rep.validation_var,
            0.2,
            &format!("row caps seed {seed}"),
            &rep,
        );
    }
}
