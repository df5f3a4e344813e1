//! The streaming trainer and its backend passes: the streamed descent and polish against the
//! in-memory reference, thread-count independence, each trainer pass on both backends against
//! an f64 twin, the growing basis, and learn's stage report.

mod common;

use rand::{RngExt, SeedableRng};
use relu_fpt::backend::{
    Adam, Backend, Device, FactoredShape, NormalEquations, Pass, SphereFeatures,
};
use relu_fpt::data::{GaussianSource, MemorySource, SampleRange};
use relu_fpt::learn::{
    learn, polish, train, DenseSamples, LearnConfig, PolishConfig, Stage, BLOCK_ROWS,
};
use relu_fpt::network::{Layer, Network};
use relu_fpt::search::SphereNetConfig;

fn random_layer(rng: &mut rand::rngs::StdRng, inputs: usize, outputs: usize) -> Layer {
    let w = (0..inputs * outputs)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let b = (0..outputs).map(|_| rng.random_range(-0.3..0.3)).collect();
    Layer::new(inputs, outputs, w, b).unwrap()
}

/// A teacher on a 2-dim subspace of R^6, a student on a basis 0.1 rad off it, and samples.
struct Case {
    student: Network,
    basis: Vec<Vec<f64>>,
    source: MemorySource,
}

fn case(n: usize) -> Case {
    let d = 6;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let small = Network::new(
        2,
        vec![random_layer(&mut rng, 2, 5), random_layer(&mut rng, 5, 1)],
    )
    .unwrap();
    let truth = vec![
        vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
    ];
    let teacher = Network::with_projection(&small, &truth).unwrap();
    let tilt = 0.1f64;
    let basis = vec![
        vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        vec![0.0, tilt.cos(), tilt.sin(), 0.0, 0.0, 0.0],
    ];
    // The student starts from perturbed teacher weights.
    let mut student = small.clone();
    for l in &mut student.layers {
        l.weights
            .iter_mut()
            .for_each(|w| *w += rng.random_range(-0.2..0.2));
    }
    let _ = d;
    Case {
        student,
        basis,
        source: common::labelled_samples(&teacher, n, 12),
    }
}

fn dense(s: &MemorySource, from: usize, to: usize) -> DenseSamples<'_> {
    DenseSamples {
        dim: s.dim,
        x: &s.x[from * s.dim..to * s.dim],
        y: &s.y[from..to],
    }
}

/// Largest difference between the parameters of two compact networks of one shape.
fn max_param_diff(a: &Network, b: &Network) -> f64 {
    let flat = |n: &Network| -> Vec<f64> {
        let mut v: Vec<f64> = n.projection.iter().flatten().flatten().copied().collect();
        for l in &n.layers {
            v.extend(&l.weights);
            v.extend(&l.bias);
        }
        v
    };
    let (fa, fb) = (flat(a), flat(b));
    assert_eq!(fa.len(), fb.len());
    fa.iter()
        .zip(&fb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// On one window (all training rows in one block), the streamed trainer runs the same
/// minibatches, gradients and Adam steps as the in-memory reference: the same model up to the
/// validation scoring (f32 outputs against f64), on both backends, B trained or fixed.
#[test]
fn streamed_training_equals_the_in_memory_trainer() {
    let c = case(3000);
    let (n_train, n) = (2400, 3000);
    let train_src = SampleRange::new(&c.source, 0, n_train as u64).unwrap();
    let val_src = SampleRange::new(&c.source, n_train as u64, (n - n_train) as u64).unwrap();
    let cfg = PolishConfig {
        epochs: 4,
        // Not a divisor of the rows: a short last minibatch, and uneven parts.
        batch_size: 70,
        seed: 3,
        ..PolishConfig::default()
    };
    let shape = FactoredShape::of(&c.student, 6).unwrap();
    let start = shape.pack(&c.student, &c.basis).unwrap();
    for train_basis in [true, false] {
        let reference = polish(
            &c.student,
            &c.basis,
            train_basis,
            &dense(&c.source, 0, n_train),
            &dense(&c.source, n_train, n),
            &cfg,
        )
        .unwrap();
        assert!(reference.kept && reference.after < 0.5 * reference.before);
        for backend in common::backends() {
            let out = train(
                backend,
                &train_src,
                &val_src,
                &shape,
                &start,
                train_basis,
                &cfg,
            )
            .unwrap();
            assert!(out.kept);
            assert_eq!((out.epochs, out.rows), (4, n_train as u64));
            assert_eq!(out.steps, 4 * n_train.div_ceil(70));
            let model = shape.compact(&out.params).unwrap();
            let diff = max_param_diff(&model, &reference.network);
            assert!(
                diff < 1e-6,
                "{} basis {train_basis}: {diff}",
                backend.kind()
            );
            // The GPU takes Adam's steps in f32 (its parameters held in f32): parameters within
            // 1e-6 move predictions by ~1e-6 |x|, against residuals of ~1e-2 here, so the
            // validation MSE by up to ~1e-4 of itself (lavapipe: 1.3e-5). The CPU agrees to
            // 4e-8.
            let bound = if backend.kind() == Device::Gpu {
                1e-4
            } else {
                1e-6
            };
            let rel = (out.after - reference.after).abs() / reference.after;
            assert!(rel < bound, "{} vs {}", out.after, reference.after);
            if !train_basis {
                assert_eq!(model.projection.as_ref(), Some(&c.basis));
            }
        }
    }
}

/// Several windows of blocks, shuffled per epoch: the same bits on one and on three threads.
#[test]
fn one_and_several_threads_give_identical_models() {
    let c = case(3 * BLOCK_ROWS + 700 + 1000);
    let n_train = 3 * BLOCK_ROWS + 700;
    let train_src = SampleRange::new(&c.source, 0, n_train as u64).unwrap();
    let val_src = SampleRange::new(&c.source, n_train as u64, 1000).unwrap();
    let cfg = PolishConfig {
        epochs: 2,
        // Two blocks per window: windows of two blocks and of the short last block.
        window_bytes: 2 * BLOCK_ROWS * 6 * 4,
        seed: 5,
        ..PolishConfig::default()
    };
    let shape = FactoredShape::of(&c.student, 6).unwrap();
    let start = shape.pack(&c.student, &c.basis).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            train(
                common::cpu(),
                &train_src,
                &val_src,
                &shape,
                &start,
                true,
                &cfg,
            )
        })
        .unwrap()
    };
    let (one, three) = (run(1), run(3));
    assert!(one.kept, "{one:?}");
    assert_eq!(one.params, three.params);
    assert_eq!(one.after.to_bits(), three.after.to_bits());
    // A different seed gives a different order, so a different model.
    let other = train(
        common::cpu(),
        &train_src,
        &val_src,
        &shape,
        &start,
        true,
        &PolishConfig {
            seed: 6,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(other.params, one.params);
}

/// z = B x on both backends against f64 dot products: the CPU sums in f64 (within 1e-6 of
/// 1 + |z|), the GPU in f32 (within 1e-6 of 1 + sum |B_ji x_i|).
#[test]
fn projection_matches_f64_on_both_backends() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for (d, r, rows) in [(1, 1, 1), (13, 3, 700), (64, 5, 1030)] {
        let basis: Vec<f64> = (0..r * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-3.0..3.0)).collect();
        for backend in common::backends() {
            let z = backend.project(&basis, &x, rows).unwrap();
            assert_eq!(z.len(), rows * r);
            for (i, row) in x.chunks_exact(d).enumerate() {
                for (j, b) in basis.chunks_exact(d).enumerate() {
                    let want: f64 = b.iter().zip(row).map(|(p, &q)| p * q as f64).sum();
                    let got = z[i * r + j] as f64;
                    let scale = match backend.kind().as_str() {
                        "cpu" => want.abs(),
                        _ => b.iter().zip(row).map(|(p, &q)| (p * q as f64).abs()).sum(),
                    };
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + scale),
                        "{} {got} {want}",
                        backend.kind()
                    );
                }
            }
            assert!(backend.project(&basis, &x[1..], rows).is_err());
            assert!(backend.project(&basis, &[], 0).unwrap().is_empty());
        }
    }
}

/// One train window on both backends takes the Adam steps of gradients checked against finite
/// differences of the summed squared error (the CPU gradient's own unit test), so here: the two
/// backends agree with each other and with one hand-rolled Adam step on a one-minibatch window.
#[test]
fn train_window_steps_adam_on_gradient_sums_on_both_backends() {
    let c = case(300);
    let shape = FactoredShape::of(&c.student, 6).unwrap();
    let start = shape.pack(&c.student, &c.basis).unwrap();
    let (x, y) = (&c.source.x[..300 * 6], &c.source.y[..300]);
    // Summed squared error at parameters p, for central differences.
    let sse = |p: &[f64]| -> f64 {
        let net = shape.compact(p).unwrap();
        x.chunks_exact(6)
            .zip(y)
            .map(|(row, &t)| {
                let v: Vec<f64> = row.iter().map(|&a| a as f64).collect();
                (net.forward_one_f64(&v) - t as f64).powi(2)
            })
            .sum()
    };
    let mut results = Vec::new();
    for backend in common::backends() {
        let mut p = start.clone();
        let mut adam = Adam::new(p.len(), 1e-3, 10);
        backend
            .train_window(&shape, true, x, y, 300, &mut p, &mut adam)
            .unwrap();
        assert_eq!(adam.steps(), 1);
        results.push(p);
    }
    // The GPU's gradient is f32 (tests/gpu_trainer.rs bounds it) and it takes the step in f32,
    // holding the parameters in f32: after one step the two agree within f32's rounding of the
    // parameter (2^-24 |p|) and of the step's few operations (8 units of 2^-23 of the step,
    // at most lr = 1e-3): far below the step size.
    let eps = f32::EPSILON as f64;
    for (a, b) in results[0].iter().zip(&results[1]) {
        assert!(
            (a - b).abs() <= 1e-12 + a.abs() * eps + 8.0 * 1e-3 * eps,
            "{a} {b}"
        );
    }
    // Adam's first step moves every parameter by lr against the sign of its gradient.
    for (k, &was) in start.iter().enumerate() {
        let h = 1e-6;
        let (mut up, mut down) = (start.clone(), start.clone());
        up[k] += h;
        down[k] -= h;
        let g = (sse(&up) - sse(&down)) / (2.0 * h);
        if g.abs() > 1.0 {
            let want = was - 1e-3 * g.signum();
            for moved in results.iter().map(|p| p[k]) {
                // Plus the f32 rounding of the GPU's parameter.
                assert!(
                    (moved - want).abs() < 1e-8 + want.abs() * eps,
                    "parameter {k}: {moved} vs {want}"
                );
            }
        }
    }
    // B fixed: the basis entries do not move, the others do.
    let mut p = start.clone();
    let mut adam = Adam::new(p.len(), 1e-3, 10);
    common::gpu()
        .train_window(&shape, false, x, y, 128, &mut p, &mut adam)
        .unwrap();
    assert_eq!(adam.steps(), 3);
    assert_eq!(p[..shape.basis_len()], start[..shape.basis_len()]);
    assert_ne!(p[shape.basis_len()..], start[shape.basis_len()..]);
    let mut bad = start.clone();
    assert!(common::cpu()
        .train_window(&shape, true, &x[1..], y, 100, &mut bad, &mut adam)
        .is_err());
}

/// The feature normal equations on both backends against f64 sums in one loop: within 1e-9
/// of 1 + |entry| on the CPU (f64), within 1e-5 of 1 + sqrt(G_ii G_jj) on the GPU (f32 chunks).
#[test]
fn feature_normal_equations_match_f64_sums_on_both_backends() {
    let c = case(5000);
    let features = SphereFeatures {
        basis: c.basis.iter().flatten().copied().collect(),
        rank: 2,
        directions: vec![1.0, 0.0, -0.6, 0.8, 0.0, -1.0],
        thresholds: vec![-0.5, 0.0, 1.0],
    };
    let f = features.len();
    assert_eq!(f, 3 * 3 + 2 + 1);
    let mut want = NormalEquations::zeros(f);
    let mut phi = Vec::new();
    for (row, &y) in c.source.x.chunks_exact(6).zip(&c.source.y) {
        let z: Vec<f64> = c
            .basis
            .iter()
            .map(|b| b.iter().zip(row).map(|(p, &q)| p * q as f64).sum())
            .collect();
        features.of_z(&z, &mut phi);
        let mut k = 0;
        for i in 0..f {
            want.rhs[i] += phi[i] * y as f64;
            for j in i..f {
                want.gram[k] += phi[i] * phi[j];
                k += 1;
            }
        }
    }
    for backend in common::backends() {
        let got = backend
            .feature_normal_equations(&c.source, &features, &indicatif::ProgressBar::hidden())
            .unwrap();
        assert_eq!(got.rows, 5000);
        // Row i of the packed triangle starts at diag[i]; y^2 bounds the right-hand sides.
        let starts: Vec<usize> = (0..f).map(|i| (0..i).map(|k| f - k).sum()).collect();
        let y2: f64 = c.source.y.iter().map(|&y| (y as f64).powi(2)).sum();
        let mut scales = Vec::new();
        for i in 0..f {
            for j in i..f {
                scales.push((want.gram[starts[i]] * want.gram[starts[j]]).sqrt());
            }
        }
        scales.extend((0..f).map(|i| (want.gram[starts[i]] * y2).sqrt()));
        for ((a, b), s) in got
            .gram
            .iter()
            .chain(&got.rhs)
            .zip(want.gram.iter().chain(&want.rhs))
            .zip(scales)
        {
            let tol = match backend.kind().as_str() {
                "cpu" => 1e-9 * (1.0 + b.abs()),
                _ => 1e-5 * (1.0 + s),
            };
            assert!((a - b).abs() <= tol, "{} {a} {b}", backend.kind());
        }
    }
}

/// Validation scoring: summed squared errors of several networks in one pass.
#[test]
fn sse_of_several_networks_matches_f64_on_both_backends() {
    let c = case(3000);
    let other = Network::with_projection(&c.student, &c.basis).unwrap();
    let zero = Network::new(6, vec![Layer::new(6, 1, vec![0.0; 6], vec![0.0]).unwrap()]).unwrap();
    for backend in common::backends() {
        let got = backend.sse(&[&other, &zero], &c.source).unwrap();
        let want_zero: f64 = c.source.y.iter().map(|&y| (y as f64).powi(2)).sum();
        let want: f64 = c
            .source
            .x
            .chunks_exact(6)
            .zip(&c.source.y)
            .map(|(row, &y)| {
                let v: Vec<f64> = row.iter().map(|&a| a as f64).collect();
                (other.forward_one_f64(&v) - y as f64).powi(2)
            })
            .sum();
        assert!((got[0] - want).abs() < 1e-5 * want, "{got:?} {want}");
        // f64 sums on the CPU, f32 partials of 512 rows on the GPU.
        let tol = if backend.kind() == Device::Cpu {
            1e-9
        } else {
            1e-6
        };
        assert!((got[1] - want_zero).abs() < tol * want_zero);
    }
}

/// Each backend runs every pass on its own device, and says so.
#[test]
fn backends_say_which_device_runs_each_pass() {
    let cpu = common::cpu();
    let gpu = common::gpu();
    for pass in [
        Pass::Moments,
        Pass::TrainWindow,
        Pass::Project,
        Pass::Predict,
    ] {
        assert_eq!(cpu.device_of(pass), Device::Cpu);
    }
    for pass in [
        Pass::Moments,
        Pass::Evaluate,
        Pass::TrainWindow,
        Pass::FeatureNormalEquations,
        Pass::Project,
    ] {
        assert_eq!(gpu.device_of(pass), Device::Gpu);
    }
}

/// A basis that lacks one of the teacher's two directions: the polish's spare row grows into
/// it (the dimension goes to 2 and the error falls far below what one direction allows). Given
/// both directions, the spare rows carry nothing and are pruned.
#[test]
fn the_polish_grows_a_missing_direction_and_prunes_useless_ones() {
    let d = 8;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let small = Network::new(
        2,
        vec![random_layer(&mut rng, 2, 6), random_layer(&mut rng, 6, 1)],
    )
    .unwrap();
    let e = |i: usize| -> Vec<f64> { (0..d).map(|j| f64::from(u8::from(i == j))).collect() };
    let teacher = Network::with_projection(&small, &[e(0), e(1)]).unwrap();
    let source = common::labelled_samples(&teacher, 20_000, 22);
    let cfg = |basis: Vec<Vec<f64>>| LearnConfig {
        known_basis: Some(basis),
        search_config: relu_fpt::search::SearchConfig {
            budget: 100,
            ..LearnConfig::default().search_config
        },
        sphere_config: SphereNetConfig {
            max_directions: 24,
            ..SphereNetConfig::default()
        },
        polish_config: PolishConfig {
            epochs: 25,
            ..PolishConfig::default()
        },
        spare_rows: Some(2),
        seed: 4,
        ..LearnConfig::default()
    };
    let one = learn(common::cpu(), &source, &cfg(vec![e(0)])).unwrap();
    eprintln!("{}", one.summary());
    let polished = one.polished_mse.unwrap();
    assert!(polished.kept, "{}", one.summary());
    assert_eq!(one.dimension, 1);
    assert_eq!(one.model.layer_input_dim(), 2, "{}", one.summary());
    assert!(polished.after < 0.05 * polished.before, "{polished:?}");
    // The grown row lies in the teacher's span.
    let angles =
        relu_fpt::metrics::principal_angles(one.model.subspace.as_ref().unwrap(), &[e(0), e(1)]);
    assert!(angles.iter().all(|&a| a < 0.1), "{angles:?}");

    let both = learn(common::cpu(), &source, &cfg(vec![e(0), e(1)])).unwrap();
    assert_eq!(both.model.layer_input_dim(), 2, "{}", both.summary());
}

/// Unit vector i of R^d.
fn unit(d: usize, i: usize) -> Vec<f64> {
    (0..d).map(|j| f64::from(u8::from(i == j))).collect()
}

/// A one-hidden-layer teacher on the first four coordinates of R^10, its samples, and a
/// configuration that starts from two of its four directions.
fn half_known_teacher() -> (MemorySource, LearnConfig) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let small = Network::new(
        4,
        vec![random_layer(&mut rng, 4, 8), random_layer(&mut rng, 8, 1)],
    )
    .unwrap();
    let basis: Vec<Vec<f64>> = (0..4).map(|i| unit(10, i)).collect();
    let teacher = Network::with_projection(&small, &basis).unwrap();
    let source = common::labelled_samples(&teacher, 30_000, 24);
    let cfg = LearnConfig {
        known_basis: Some(basis[..2].to_vec()),
        search_config: relu_fpt::search::SearchConfig {
            budget: 100,
            ..LearnConfig::default().search_config
        },
        polish_config: PolishConfig {
            epochs: 25,
            ..PolishConfig::default()
        },
        seed: 5,
        ..LearnConfig::default()
    };
    (source, cfg)
}

/// A basis that lacks two of the teacher's four directions: the polish keeps both of its two
/// default spare rows, so it runs again with two more, which find nothing and are pruned.
#[test]
fn the_polish_grows_again_while_every_spare_row_is_kept() {
    let (source, cfg) = half_known_teacher();
    let cfg = LearnConfig {
        deep_candidates: Vec::new(),
        ..cfg
    };
    let e = |i| unit(10, i);
    let rep = learn(common::cpu(), &source, &cfg).unwrap();
    let polishes = rep
        .stages
        .iter()
        .filter(|s| s.stage == Stage::Polish)
        .count();
    assert_eq!(polishes, 2, "{}", rep.summary());
    assert_eq!(rep.model.layer_input_dim(), 4, "{}", rep.summary());
    let angles = relu_fpt::metrics::principal_angles(
        rep.model.subspace.as_ref().unwrap(),
        &[e(0), e(1), e(2), e(3)],
    );
    assert!(angles.iter().all(|&a| a < 0.1), "{angles:?}");
    let polished = rep.polished_mse.unwrap();
    assert!(polished.kept && polished.after == rep.validation_mse);
}

/// When the polish grew the basis and did not start from the deep net (here a deep net of one
/// pass, which the descent beats), the deep net is trained again on the grown basis, and the
/// report says so.
#[test]
fn the_deep_net_runs_again_on_a_basis_the_polish_grew() {
    let (source, cfg) = half_known_teacher();
    let cfg = LearnConfig {
        deep_candidates: vec![vec![8, 8]],
        deep_gate: None,
        deep_config: PolishConfig {
            epochs: 1,
            row_budget: 0,
            ..LearnConfig::default().deep_config
        },
        ..cfg
    };
    let rep = learn(common::cpu(), &source, &cfg).unwrap();
    let deep_stages = rep
        .stages
        .iter()
        .filter(|s| s.stage == Stage::DeepNet)
        .count();
    let why = rep.deep_net_decision.clone().unwrap_or_default();
    assert_eq!(deep_stages, 2, "{}", rep.summary());
    assert!(why.contains("grew the basis to 4 rows"), "{why}");
    assert_eq!(rep.model.layer_input_dim(), 4, "{}", rep.summary());
}

/// The polish's default spare rows: two for a small basis, as many as the basis has rows for a
/// large one.
#[test]
fn default_spare_rows_grow_with_the_basis() {
    let rows: Vec<usize> = (0..=10).map(relu_fpt::learn::auto_spare_rows).collect();
    assert_eq!(rows, vec![2, 2, 2, 2, 2, 5, 6, 7, 8, 9, 10]);
}

/// learn's stages: in order, each with its device, rows and validation error, the final model
/// from the stage that says so, and the same in JSON and the summary.
#[test]
fn learn_reports_every_stage() {
    let spec = relu_fpt::teacher::TeacherSpec {
        seed: 3,
        ..relu_fpt::teacher::TeacherSpec::new(relu_fpt::teacher::TeacherKind::Fan, 12)
    };
    let teacher = relu_fpt::teacher::build(&spec).unwrap();
    let source = GaussianSource::new(teacher.network.clone(), 20_000, 4, 0.0).unwrap();
    let cfg = LearnConfig {
        search_config: relu_fpt::search::SearchConfig {
            budget: 100,
            ..LearnConfig::default().search_config
        },
        sphere_config: SphereNetConfig {
            max_directions: 24,
            ..SphereNetConfig::default()
        },
        max_train_rows: Some(12_000),
        ..LearnConfig::default()
    };
    let rep = learn(common::cpu(), &source, &cfg).unwrap();
    let names: Vec<&str> = rep.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(
        names,
        [
            "subspace",
            "sphere-net",
            "enumerate",
            "descent",
            "deep-net",
            "polish"
        ]
    );
    assert_eq!((rep.train_rows, rep.validation_rows), (16_000, 4000));
    for s in &rep.stages {
        assert_eq!(s.device, Device::Cpu);
        assert!(s.row_reads >= s.rows, "{s:?}");
        // The cap holds in the fitting stages; filtered PCA reads every training row.
        let most = if s.stage == Stage::Subspace {
            16_000
        } else {
            12_000
        };
        assert!(s.rows >= 1 && s.rows <= most, "{s:?}");
        assert!(s.seconds >= 0.0);
        assert_eq!(s.validation_mse.is_none(), s.stage == Stage::Subspace);
    }
    assert_eq!(rep.stages[1].validation_mse, rep.sphere_net_mse);
    assert_eq!(rep.stages[2].validation_mse, Some(rep.enumerate_mse));
    let descent = rep.descent_mse.unwrap();
    let deep = rep.deep_net_mse.unwrap();
    let polish = rep.polished_mse.unwrap();
    assert_eq!(rep.stages[3].validation_mse, Some(descent.after));
    assert_eq!(rep.stages[4].validation_mse, Some(deep.after));
    assert_eq!(rep.stages[5].validation_mse, Some(polish.after));
    assert_eq!(rep.stages[4].rows, 12_000);
    assert_eq!(rep.stages[0].rows, 16_000);
    assert_eq!(rep.stages[3].rows, 12_000);
    assert_eq!(rep.stages[3].row_reads % rep.stages[3].rows, 0);
    // The final model's error is the error of the stage it came from, the smallest kept one.
    let from = rep
        .stages
        .iter()
        .find(|s| s.stage == rep.final_stage)
        .unwrap();
    assert_eq!(from.validation_mse, Some(rep.validation_mse));
    let expected_final = if polish.kept {
        "polish"
    } else if deep.kept {
        "deep-net"
    } else if descent.kept {
        "descent"
    } else {
        rep.chosen.as_str()
    };
    assert_eq!(rep.final_stage.as_str(), expected_final);
    let direct = relu_fpt::learn::mse(
        common::cpu(),
        &rep.model,
        &SampleRange::new(&source, 16_000, 4000).unwrap(),
    )
    .unwrap();
    assert!((direct - rep.validation_mse).abs() <= 1e-9 * direct.max(1e-12));

    // The whole pipeline gives the same model on one thread.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let single = pool
        .install(|| learn(common::cpu(), &source, &cfg))
        .unwrap();
    assert_eq!(single.model, rep.model);
    assert_eq!(
        single.validation_mse.to_bits(),
        rep.validation_mse.to_bits()
    );

    let json = rep.to_json();
    let stages = json["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 6);
    for (j, s) in stages.iter().zip(&rep.stages) {
        assert_eq!(j["stage"], s.stage.as_str());
        assert_eq!(j["device"], "cpu");
        assert_eq!(j["rows"], s.rows);
        assert!(j["seconds"].as_f64().is_some());
    }
    assert_eq!(json["final_stage"], rep.final_stage.as_str());
    let summary = rep.summary();
    assert!(summary.contains("val MSE") && summary.contains("polish"));
    // Small errors keep their digits.
    assert!(!summary.contains("0.0000"), "{summary}");
}

/// The same model saved as a version-2 file (compact: projection, then the small network) and
/// as a version-1 file (its dense form, no projection) predicts the same through the command
/// line, up to the f32 rounding of the outputs and the summation order.
#[test]
fn version_1_and_version_2_files_predict_the_same_through_the_cli() {
    use relu_fpt::data::write_npy_f32;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let (d, r) = (10, 3);
    let small = Network::new(
        r,
        vec![random_layer(&mut rng, r, 7), random_layer(&mut rng, 7, 1)],
    )
    .unwrap();
    let projection: Vec<Vec<f64>> = (0..r)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let compact = Network::with_projection(&small, &projection).unwrap();
    let v2 = dir.path().join("v2.json");
    compact.save(&v2).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&compact.dense().to_json()).unwrap();
    json["version"] = 1.into();
    json.as_object_mut().unwrap().remove("projection");
    let v1 = dir.path().join("v1.json");
    std::fs::write(&v1, json.to_string()).unwrap();
    let rows = 700;
    let x: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-2.0..2.0)).collect();
    let x_path = dir.path().join("x.npy");
    write_npy_f32(&x_path, &[rows, d], &x).unwrap();
    let mut outputs = Vec::new();
    for (name, model) in [("p1.npy", &v1), ("p2.npy", &v2)] {
        let out = dir.path().join(name);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
            .args(["predict", "--backend", "cpu", "--model"])
            .arg(model)
            .arg("--x")
            .arg(&x_path)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // An (N,) float32 file as `predict` writes it: magic, version 1.0, header, data.
        let bytes = std::fs::read(&out).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let p: Vec<f32> = bytes[10 + header_len..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(p.len(), rows);
        outputs.push(p);
    }
    for (i, (a, b)) in outputs[0].iter().zip(&outputs[1]).enumerate() {
        let row: Vec<f64> = x[i * d..(i + 1) * d].iter().map(|&v| v as f64).collect();
        let want = compact.forward_one_f64(&row);
        assert!(
            (a - b).abs() <= 1e-6 * (1.0 + want.abs() as f32),
            "row {i}: {a} {b}"
        );
        assert!((*b as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()));
    }
}
