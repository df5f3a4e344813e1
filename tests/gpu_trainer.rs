//! The trainer's GPU passes (projection, minibatch gradients and Adam windows, sphere-net
//! normal equations, validation scoring) against their f64 CPU twins, on whatever adapter is
//! present (lavapipe in CI; a missing adapter fails). Sizes are small: each test runs in a few
//! seconds on lavapipe.

mod common;

use common::{CountingSource, Rng};

use relu_fpt::backend::cpu::project::project_f64;
use relu_fpt::backend::cpu::trainer::{feature_normal_equations, window_gradient};
use relu_fpt::backend::gpu::{
    FeatureKernelParams, GpuBackend, ProjectKernelParams, TrainerKernelParams,
};
use relu_fpt::backend::{Adam, Backend, Device, FactoredShape, Pass, SphereFeatures};
use relu_fpt::data::{MemorySource, SampleSource};
use relu_fpt::network::{Layer, Network};

fn gpu() -> &'static GpuBackend {
    common::gpu()
}

fn hidden() -> indicatif::ProgressBar {
    indicatif::ProgressBar::hidden()
}

/// A small ReLU network on r inputs with these hidden widths, weights scaled by 1/sqrt(fan-in),
/// biases 0.3 N(0, 1).
fn network(rng: &mut Rng, r: usize, hidden: &[usize]) -> Network {
    let mut layers = Vec::new();
    let mut width = r;
    for &out in hidden.iter().chain(&[1]) {
        let scale = 1.0 / (width as f64).sqrt();
        let weights = rng.normals(out * width).iter().map(|v| v * scale).collect();
        let bias = rng.normals(out).iter().map(|v| 0.3 * v).collect();
        layers.push(Layer::new(width, out, weights, bias).expect("layer"));
        width = out;
    }
    Network::new(r, layers).expect("network")
}

/// r rows of length d, N(0, 1/d) entries (not orthonormal: the passes must not assume it).
fn basis(rng: &mut Rng, r: usize, d: usize) -> Vec<Vec<f64>> {
    let s = 1.0 / (d as f64).sqrt();
    (0..r)
        .map(|_| rng.normals(d).iter().map(|v| v * s).collect())
        .collect()
}

/// n Gaussian rows of x and labels from `net` on B x plus a little noise.
fn samples(rng: &mut Rng, d: usize, n: usize, net: &Network) -> MemorySource {
    let x = rng.normals_f32(n * d);
    let y = x
        .chunks_exact(d)
        .map(|row| {
            let v: Vec<f64> = row.iter().map(|&a| a as f64).collect();
            (net.forward_one_f64(&v) + 0.1 * rng.normal()) as f32
        })
        .collect();
    MemorySource { dim: d, x, y }
}

#[test]
fn projection_matches_the_f64_twin() {
    // (d, r, rows): rank 1, a ragged rank and d, rank > 8 (two rank blocks with a small block),
    // and rows that are no multiple of any tile.
    let mut rng = Rng(1);
    for &(d, r, rows, rank_block) in &[
        (5usize, 1usize, 1_003usize, None),
        (131, 3, 777, None),
        (64, 12, 1_001, None),
        (40, 10, 333, Some(4u32)),
    ] {
        let b: Vec<f64> = basis(&mut rng, r, d).concat();
        let x = rng.normals_f32(rows * d);
        let mut params = ProjectKernelParams::for_shape(gpu().context(), r, d);
        if let Some(rb) = rank_block {
            // Three rank blocks, short slabs, and pieces of 100 rows.
            params.rank_block = rb;
            params.rows_per_tile = params.workgroup_size / rb;
            params.slab = 8;
            params.rows_per_dispatch = 100;
        }
        let got = gpu()
            .project_with(&b, &x, rows, &params)
            .expect("gpu project");
        let want = project_f64(&b, d, &x);
        assert_eq!(got.len(), want.len());
        for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let (row, j) = (k / r, k % r);
            let scale: f64 = (0..d)
                .map(|i| (b[j * d + i] * x[row * d + i] as f64).abs())
                .sum();
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale + 1e-30,
                "d {d} r {r}: z[{row}][{j}] = {g} vs {w}"
            );
        }
        // The trait's pass gives the same bits as the explicit one with the defaults.
        if rank_block.is_none() {
            assert_eq!(gpu().project(&b, &x, rows).expect("trait project"), got);
        }
    }
    assert!(
        gpu().project(&[1.0; 3], &[0.0; 4], 2).is_err(),
        "ragged input"
    );
}

/// Largest |entry| of each block of the parameter vector (B, then each layer's weights and
/// bias), for the gradient tolerance.
fn block_scales(shape: &FactoredShape, g: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; g.len()];
    let mut spans = vec![(0, shape.basis_len())];
    for (i, o, at) in shape.layers() {
        spans.push((at, at + i * o + o));
    }
    for (a, b) in spans {
        let m = g[a..b].iter().fold(0.0f64, |m, v| m.max(v.abs()));
        out[a..b].iter_mut().for_each(|s| *s = m);
    }
    out
}

#[test]
fn minibatch_gradients_match_the_f64_twin() {
    // (d, r, hidden, rows): rank 1; a deep small net; rank > 8; a wide layer. 300 rows are two
    // gradient chunks of 256 with a ragged end.
    let mut rng = Rng(2);
    for (d, r, hidden, rows) in [
        (6usize, 1usize, vec![4usize], 300usize),
        (33, 3, vec![8, 7, 6, 5], 300),
        (20, 10, vec![6], 257),
        (17, 2, vec![96], 150),
    ] {
        let net = network(&mut rng, r, &hidden);
        let b = basis(&mut rng, r, d);
        let teacher = Network::with_projection(&network(&mut rng, r, &hidden), &b).unwrap();
        let src = samples(&mut rng, d, rows, &teacher);
        let shape = FactoredShape::of(&net, d).unwrap();
        let params = shape.pack(&net, &b).unwrap();
        for train_basis in [true, false] {
            let got = gpu()
                .train_gradient(&shape, train_basis, &src.x, &src.y, &params)
                .expect("gpu gradient");
            let want = window_gradient(&shape, train_basis, &src.x, &src.y, &params).unwrap();
            let scales = block_scales(&shape, &want);
            for (k, ((&g, &w), &s)) in got.iter().zip(&want).zip(&scales).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * s + 1e-12,
                    "{hidden:?} r {r} train_basis {train_basis}: entry {k}: {g} vs {w} (scale {s})"
                );
            }
            if !train_basis {
                assert!(got[..shape.basis_len()].iter().all(|&v| v == 0.0));
            }
            // The check has teeth: most of the entries it compares are not zero.
            let from = if train_basis { 0 } else { shape.basis_len() };
            let live = want[from..].iter().filter(|v| v.abs() > 0.0).count();
            assert!(live > (shape.params() - from) / 2, "{live} live entries");
        }
    }
}

/// Adam windows on both backends from the same start: the parameters stay within 1e-5 of
/// each other after 12 steps of a learning rate 1e-2 (lavapipe: 1e-8), and the device repeats
/// itself bit for bit.
#[test]
fn train_windows_follow_the_cpu_and_repeat_exactly() {
    let mut rng = Rng(3);
    let (d, r) = (12, 2);
    let student = network(&mut rng, r, &[8, 4]);
    let b = basis(&mut rng, r, d);
    let teacher = Network::with_projection(&network(&mut rng, r, &[5]), &b).unwrap();
    let src = samples(&mut rng, d, 1_000, &teacher);
    let shape = FactoredShape::of(&student, d).unwrap();
    let start = shape.pack(&student, &b).unwrap();
    for train_basis in [true, false] {
        let run = |backend: &dyn Backend| {
            let mut p = start.clone();
            let mut adam = Adam::new(p.len(), 1e-2, 24);
            // Two windows of 6 minibatches of 90 rows (the last 50).
            for w in [&src.x[..500 * d], &src.x[500 * d..]] {
                let rows = w.len() / d;
                let y = if w.as_ptr() == src.x.as_ptr() {
                    &src.y[..rows]
                } else {
                    &src.y[500..]
                };
                backend
                    .train_window(&shape, train_basis, w, y, 90, &mut p, &mut adam)
                    .expect("train window");
            }
            assert_eq!(adam.steps(), 12);
            p
        };
        let cpu = run(common::cpu());
        let g1 = run(gpu());
        let g2 = run(gpu());
        assert_eq!(g1, g2, "same inputs, same bits");
        let moved = cpu
            .iter()
            .zip(&start)
            .filter(|(a, b)| (*a - *b).abs() > 1e-3)
            .count();
        assert!(moved > shape.params() / 2, "the parameters moved");
        for (k, ((&c, &g), &s)) in cpu.iter().zip(&g1).zip(&start).enumerate() {
            assert!(
                (c - g).abs() <= 1e-5,
                "train_basis {train_basis}: parameter {k}: cpu {c} gpu {g} (start {s})"
            );
            if !train_basis && k < shape.basis_len() {
                assert_eq!(g, s, "B stays fixed");
            }
        }
    }
}

#[test]
fn normal_equations_match_the_f64_twin() {
    // Rank 1, 3 and 10 (> 8); short chunks and few chunks per dispatch, so that the rows are
    // many dispatches with ragged ends and the sums slots fill up.
    let mut rng = Rng(4);
    for &(d, r, m, rows, short) in &[
        (7usize, 1usize, 2usize, 2_003usize, false),
        (19, 3, 9, 3_001, true),
        (24, 10, 5, 1_500, true),
    ] {
        let b = basis(&mut rng, r, d);
        let teacher = Network::with_projection(&network(&mut rng, r, &[4]), &b).unwrap();
        let src = samples(&mut rng, d, rows, &teacher);
        let directions: Vec<f64> = (0..m)
            .flat_map(|_| {
                let u = rng.normals(r);
                let n = u.iter().map(|v| v * v).sum::<f64>().sqrt();
                u.into_iter().map(move |v| v / n)
            })
            .collect();
        let features = SphereFeatures {
            basis: b.concat(),
            rank: r,
            directions,
            thresholds: vec![-0.5, 0.0, 0.7],
        };
        let mut params = FeatureKernelParams::for_rank(gpu().context(), r);
        if short {
            params.chunk = 96;
            params.max_chunks = 3;
        }
        let got = gpu()
            .feature_normal_equations_with(&src, &features, &params, &hidden())
            .expect("gpu normal equations");
        let want = feature_normal_equations(&src, &features, &hidden()).unwrap();
        let f = features.len();
        assert_eq!((got.features, got.rows), (f, rows as u64));
        let mut diag = Vec::new();
        let mut at = 0;
        for i in 0..f {
            diag.push(want.gram[at]);
            at += f - i;
        }
        let y2: f64 = src.y.iter().map(|&v| (v as f64).powi(2)).sum();
        let mut at = 0;
        for i in 0..f {
            for j in i..f {
                let tol = 1e-5 * (diag[i] * diag[j]).sqrt() + 1e-9;
                assert!(
                    (got.gram[at] - want.gram[at]).abs() <= tol,
                    "r {r}: G[{i}][{j}] = {} vs {}",
                    got.gram[at],
                    want.gram[at]
                );
                at += 1;
            }
            let tol = 1e-5 * (diag[i] * y2).sqrt() + 1e-9;
            assert!(
                (got.rhs[i] - want.rhs[i]).abs() <= tol,
                "r {r}: rhs[{i}] = {} vs {}",
                got.rhs[i],
                want.rhs[i]
            );
        }
        // The trait's pass with the default tunables agrees as well.
        let default = gpu()
            .feature_normal_equations(&src, &features, &hidden())
            .unwrap();
        assert_eq!(default.rows, rows as u64);
        let close = default
            .gram
            .iter()
            .zip(&want.gram)
            .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(diag[0]));
        assert!(close, "default tunables");
    }
}

#[test]
fn scores_match_the_f64_twin_and_reuse_resident_rows() {
    let mut rng = Rng(5);
    let d = 14;
    let b = basis(&mut rng, 3, d);
    let teacher = Network::with_projection(&network(&mut rng, 3, &[4]), &b).unwrap();
    let src = CountingSource::new(samples(&mut rng, d, 2_345, &teacher), "gpu_trainer scores");
    // Compact networks (rank 3, rank 9 with a deep small net, a wide one) and a dense one.
    let nets = [
        Network::with_projection(&network(&mut rng, 3, &[4]), &b).unwrap(),
        Network::with_projection(&network(&mut rng, 9, &[6, 5, 4]), &basis(&mut rng, 9, d))
            .unwrap(),
        Network::with_projection(&network(&mut rng, 3, &[150]), &b).unwrap(),
        network(&mut rng, d, &[7]),
    ];
    let refs: Vec<&Network> = nets.iter().collect();
    let want = common::cpu().sse(&refs, &src.inner).unwrap();
    let got = gpu().sse(&refs, &src).expect("gpu scores");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-6 * w, "sse {g} vs {w}");
    }
    let reads = src.reads();
    // Pieces of 300 rows and partials of 64 rows: many dispatches, ragged ends; the rows come
    // from the device copy the first pass left.
    let small = TrainerKernelParams {
        score_rows: 300,
        rows_per_invocation: 2,
        workgroup_size: 32,
        rows_per_group: 4,
        ..TrainerKernelParams::for_context(gpu().context())
    };
    let again = gpu().sse_with(&refs, &src, Some(&small)).unwrap();
    assert_eq!(src.reads(), reads);
    for (g, w) in again.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-6 * w, "small pieces: sse {g} vs {w}");
    }
    assert_eq!(gpu().sse(&refs, &src).unwrap(), got, "same bits every pass");
    // Mismatched inputs are typed errors.
    let wrong = network(&mut rng, d + 1, &[2]);
    assert!(gpu().sse(&[&wrong], &src).is_err());
}

#[test]
fn every_pass_runs_on_the_gpu_backend() {
    for pass in [
        Pass::Moments,
        Pass::FitMoments,
        Pass::Evaluate,
        Pass::Predict,
        Pass::Project,
        Pass::TrainWindow,
        Pass::FeatureNormalEquations,
    ] {
        assert_eq!(gpu().device_of(pass), Device::Gpu, "{pass:?}");
        assert_eq!(common::cpu().device_of(pass), Device::Cpu, "{pass:?}");
    }
}

/// `learn` on both backends, end to end (filtered PCA, search, sphere-net, descent, polish), on
/// a small case of a teacher family (d = 8, N = 8,000 with label noise 0.1, 6 epochs of descent
/// and of polish): the same dimension, validation errors within 10% of each other (lavapipe:
/// within 1%), and on the GPU every stage's passes ran on the device. (Without noise the
/// errors of a nearly exact fit are small numbers that f32 and f64 descents reach by different
/// paths: 20% apart on the fan teacher.)
fn learn_matches_the_cpu(spec: relu_fpt::teacher::TeacherSpec) {
    use relu_fpt::data::GaussianSource;
    use relu_fpt::learn::{learn, LearnConfig, PolishConfig};
    let config = LearnConfig {
        search_config: relu_fpt::search::SearchConfig {
            budget: 100,
            ..LearnConfig::default().search_config
        },
        sphere_config: relu_fpt::search::SphereNetConfig {
            max_directions: 24,
            ..Default::default()
        },
        descent_config: PolishConfig {
            epochs: 6,
            ..LearnConfig::default().descent_config
        },
        deep_config: PolishConfig {
            epochs: 6,
            row_budget: 0,
            ..LearnConfig::default().deep_config
        },
        polish_config: PolishConfig {
            epochs: 6,
            ..Default::default()
        },
        ..LearnConfig::default()
    };
    let teacher = relu_fpt::teacher::build(&spec).unwrap();
    let src = GaussianSource::new(teacher.network.clone(), 8_000, 17, 0.1).unwrap();
    let c = learn(common::cpu(), &src, &config).expect("cpu learn");
    let g = learn(gpu(), &src, &config).expect("gpu learn");
    assert_eq!(g.dimension, c.dimension, "{}\n{}", c.summary(), g.summary());
    assert_eq!(g.dimension, teacher.relevant_dim, "{}", g.summary());
    assert!(
        (g.validation_mse - c.validation_mse).abs() <= 0.1 * c.validation_mse,
        "{}: cpu {} gpu {}\n{}\n{}",
        teacher.name,
        c.validation_mse,
        g.validation_mse,
        c.summary(),
        g.summary()
    );
    assert_eq!(g.stages.len(), 6, "{}", g.summary());
    for st in &g.stages {
        assert_eq!(st.device, Device::Gpu, "{}: {}", teacher.name, g.summary());
    }
}

#[test]
fn learn_on_the_gpu_matches_the_cpu_parity() {
    use relu_fpt::teacher::{TeacherKind, TeacherSpec};
    learn_matches_the_cpu(TeacherSpec {
        k: Some(4),
        ..TeacherSpec::new(TeacherKind::Parity, 8)
    });
}

#[test]
fn learn_on_the_gpu_matches_the_cpu_fan() {
    use relu_fpt::teacher::{TeacherKind, TeacherSpec};
    learn_matches_the_cpu(TeacherSpec {
        m: Some(4),
        ..TeacherSpec::new(TeacherKind::Fan, 8)
    });
}

#[test]
fn learn_on_the_gpu_matches_the_cpu_deep_parity() {
    use relu_fpt::teacher::{TeacherKind, TeacherSpec};
    learn_matches_the_cpu(TeacherSpec {
        k: Some(3),
        ..TeacherSpec::new(TeacherKind::DeepParity, 8)
    });
}

#[test]
fn learn_on_the_gpu_matches_the_cpu_composite() {
    use relu_fpt::teacher::{TeacherKind, TeacherSpec};
    learn_matches_the_cpu(TeacherSpec::new(TeacherKind::Composite, 8));
}

#[test]
fn learn_on_the_gpu_matches_the_cpu_random_network() {
    use relu_fpt::teacher::{TeacherKind, TeacherSpec};
    learn_matches_the_cpu(TeacherSpec {
        widths: vec![4, 3],
        k: Some(2),
        bias: true,
        ..TeacherSpec::new(TeacherKind::Random, 8)
    });
}

/// Through the command line on the GPU backend: `learn --json` reports device "gpu" for every
/// stage, and each stage that reads all the training rows says so.
#[test]
fn cli_learn_on_the_gpu_reports_every_stage_on_the_device() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
        .args(["learn", "--teacher", "fan", "--d", "8", "--n", "6000"])
        .args(["--backend", "gpu", "--budget", "64", "--json"])
        .args(["--descent-epochs", "3", "--polish-epochs", "3", "--out"])
        .arg(&model)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let stages = report["stages"].as_array().expect("stages");
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    // Three polish passes leave the fan above 1e-4 of Var(y): the deepen stage runs too.
    assert_eq!(
        names,
        [
            "subspace",
            "sphere-net",
            "enumerate",
            "descent",
            "deep-net",
            "polish",
            "deepen"
        ]
    );
    let train_rows = report["train_rows"].as_u64().expect("train_rows");
    for st in stages {
        assert_eq!(st["device"], "gpu", "{st}");
        if st["stage"] != "enumerate" {
            assert_eq!(st["rows"].as_u64(), Some(train_rows), "{st}");
        }
    }
    assert!(model.exists());
}

/// Near the software adapter's loop budget the rows per workgroup drop to one and the gradient
/// is still exact (lavapipe would silently cut a longer loop short: the estimate must not
/// undercount); past it the request is a typed error, not a wrong result. On hardware there is
/// no budget and both run.
#[test]
fn wide_layers_fit_the_loop_budget_or_fail_cleanly() {
    let mut rng = Rng(6);
    let ctx = gpu().context();
    let d = 5;
    for (width, fits) in [(14_000usize, true), (20_000, false)] {
        let net = network(&mut rng, 2, &[width]);
        let b = basis(&mut rng, 2, d);
        let src = samples(
            &mut rng,
            d,
            40,
            &Network::with_projection(&net, &b).unwrap(),
        );
        let shape = FactoredShape::of(&net, d).unwrap();
        let params = shape.pack(&net, &b).unwrap();
        let kp = TrainerKernelParams::for_widths(ctx, &shape.widths);
        let got = gpu().train_gradient(&shape, true, &src.x, &src.y, &params);
        if let Some(budget) = kp.loop_budget {
            assert_eq!(kp.rows_per_group, 1, "{kp:?}");
            assert_eq!(kp.loop_cost(&shape.widths) <= budget, fits, "{kp:?}");
        }
        if fits || kp.loop_budget.is_none() {
            let got = got.expect("within the budget");
            let want = window_gradient(&shape, true, &src.x, &src.y, &params).unwrap();
            let scales = block_scales(&shape, &want);
            // Each basis gradient sums `width` hidden units' f32 products per row. The rounding
            // error of an f32 sum of n terms grows like sqrt(n) u |partial sums| (u = 2^-24,
            // errors of random sign), and the partial sums may exceed the block's largest
            // gradient s where terms cancel; 8 sqrt(n) u s allows for that (5.7e-5 s at
            // n = 14000, where an H200 measured 2.5e-5 s). Narrow layers keep the 1e-5 bound.
            let tol = (8.0 * (width as f64).sqrt() * f32::EPSILON as f64 / 2.0).max(1e-5);
            for ((&g, &w), &s) in got.iter().zip(&want).zip(&scales) {
                assert!(
                    (g - w).abs() <= tol * s + 1e-12,
                    "width {width}: {g} vs {w} (bound {tol:.2e} x {s:.3e})"
                );
            }
        } else {
            let e = got.unwrap_err();
            assert!(
                matches!(
                    e,
                    relu_fpt::Error::Gpu(relu_fpt::backend::gpu::GpuError::TooLarge(_))
                ),
                "{e}"
            );
        }
    }
}

/// Requests of the wrong size are typed errors on the device too.
#[test]
fn bad_trainer_requests_are_errors() {
    let mut rng = Rng(7);
    let d = 4;
    let net = network(&mut rng, 2, &[3]);
    let b = basis(&mut rng, 2, d);
    let src = samples(
        &mut rng,
        d,
        50,
        &Network::with_projection(&net, &b).unwrap(),
    );
    let shape = FactoredShape::of(&net, d).unwrap();
    let mut params = shape.pack(&net, &b).unwrap();
    let mut adam = Adam::new(params.len(), 1e-3, 10);
    let g = gpu();
    assert!(g
        .train_window(
            &shape,
            true,
            &src.x[1..],
            &src.y,
            16,
            &mut params,
            &mut adam
        )
        .is_err());
    assert!(g
        .train_window(&shape, true, &src.x, &src.y, 0, &mut params, &mut adam)
        .is_err());
    let mut short = params[1..].to_vec();
    assert!(g
        .train_window(&shape, false, &src.x, &src.y, 16, &mut short, &mut adam)
        .is_err());
    assert_eq!(adam.steps(), 0);
    let features = SphereFeatures {
        basis: b.concat()[1..].to_vec(),
        rank: 2,
        directions: vec![1.0, 0.0],
        thresholds: vec![0.0],
    };
    assert!(g
        .feature_normal_equations(&src, &features, &hidden())
        .is_err());
}

/// A whitened view names itself by its source and the exact map it applies: the GPU keeps it
/// resident across scoring passes, and two whitenings of one source never share a copy.
#[test]
fn whitened_views_are_kept_resident_under_their_own_keys() {
    use relu_fpt::data::whiten::{WhitenedSource, Whitening};
    let mut rng = Rng(8);
    let d = 6;
    let b = basis(&mut rng, 2, d);
    let teacher = Network::with_projection(&network(&mut rng, 2, &[3]), &b).unwrap();
    let src = CountingSource::new(
        samples(&mut rng, d, 1_500, &teacher),
        "gpu_trainer whitened",
    );
    let whitening = |scale: f64| Whitening {
        map: Some(
            (0..d - 1)
                .map(|i| (0..d).map(|j| if i == j { scale } else { 0.1 }).collect())
                .collect(),
        ),
        mean: vec![0.05; d],
        ..Whitening::identity(d)
    };
    let (w1, w2) = (whitening(1.0), whitening(1.5));
    let (v1, v2) = (
        WhitenedSource::new(&src, &w1).unwrap(),
        WhitenedSource::new(&src, &w2).unwrap(),
    );
    let again = WhitenedSource::new(&src, &w1).unwrap();
    assert_eq!(v1.identity(), again.identity());
    assert_ne!(v1.identity(), v2.identity());
    assert!(WhitenedSource::new(&src.inner, &w1)
        .unwrap()
        .identity()
        .is_none());
    // Scoring on each view: the first pass reads the source, later passes use the device copy.
    let net = network(&mut rng, d - 1, &[4]);
    let count = || src.reads();
    for view in [&v1, &v2] {
        let want = common::cpu().sse(&[&net], view).unwrap();
        let before = count();
        let first = gpu().sse(&[&net], view).unwrap();
        let read = count();
        assert!(read > before);
        assert_eq!(gpu().sse(&[&net], view).unwrap(), first);
        assert_eq!(count(), read, "the second pass reads the resident copy");
        assert!((first[0] - want[0]).abs() <= 1e-6 * want[0]);
    }
}

/// A window the device draws itself (a built-in teacher's rows, generated and put in order on
/// the device) trains exactly as the same rows drawn by the device, read back and uploaded as a
/// host window: same bits. (The device's labels come from its f32 forward pass, so they may
/// differ from the host's f64 ones in the last bit; every GPU pass uses the device's.)
#[test]
fn windows_drawn_on_the_device_train_as_the_same_rows_uploaded() {
    use relu_fpt::data::{GaussianSource, SampleRange};
    let mut rng = Rng(41);
    let d = 12;
    let teacher = Network::with_projection(&network(&mut rng, 2, &[5]), &basis(&mut rng, 2, d))
        .unwrap()
        .dense();
    let source = GaussianSource::new(teacher, 20_000, 5, 0.05).unwrap();
    // A split of it, as the trainer sees it (rows 2000.. of the source).
    let train = SampleRange::new(&source, 2_000, 15_000).unwrap();
    assert!(gpu().assembles_windows(&train));
    let plain = MemorySource {
        dim: d,
        x: vec![0.0; d],
        y: vec![0.0],
    };
    assert!(!gpu().assembles_windows(&plain));
    assert!(!relu_fpt::backend::cpu::CpuBackend::default().assembles_windows(&train));

    let blocks = [(4_096u64, 4_096usize), (12_288, 2_712)];
    let rows: usize = blocks.iter().map(|b| b.1).sum();
    let mut order: Vec<u32> = (0..rows as u32).collect();
    for i in (1..rows).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    // The device's rows, read back, in that order.
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for &(start, len) in &blocks {
        let (bx, by) =
            relu_fpt::backend::gpu::generate_on_device(gpu().context(), &train, start, len)
                .unwrap()
                .expect("the device draws a teacher's rows");
        x.extend(bx);
        y.extend(by);
    }
    let xs: Vec<f32> = order
        .iter()
        .flat_map(|&k| x[k as usize * d..(k as usize + 1) * d].to_vec())
        .collect();
    let ys: Vec<f32> = order.iter().map(|&k| y[k as usize]).collect();

    let student = network(&mut rng, 2, &[4]);
    let shape = FactoredShape::of(&student, d).unwrap();
    let start = shape.pack(&student, &basis(&mut rng, 2, d)).unwrap();
    for train_basis in [true, false] {
        let mut results = Vec::new();
        for drawn in [false, true] {
            let mut p = start.clone();
            let mut adam = Adam::new(p.len(), 5e-3, 100);
            if drawn {
                gpu()
                    .train_window_of(
                        &shape,
                        train_basis,
                        &train,
                        &blocks,
                        &order,
                        64,
                        &mut p,
                        &mut adam,
                    )
                    .unwrap();
            } else {
                gpu()
                    .train_window(&shape, train_basis, &xs, &ys, 64, &mut p, &mut adam)
                    .unwrap();
            }
            assert_eq!(adam.steps(), rows.div_ceil(64));
            results.push(p);
        }
        assert_ne!(results[0], start, "the window trained");
        assert_eq!(results[0], results[1], "B trained: {train_basis}");
    }
    // An order that does not fit the blocks is refused.
    let mut p = start.clone();
    let mut adam = Adam::new(p.len(), 5e-3, 100);
    assert!(gpu()
        .train_window_of(
            &shape,
            true,
            &train,
            &blocks,
            &order[1..],
            64,
            &mut p,
            &mut adam
        )
        .is_err());
}

/// A window of a source the device holds a copy of is copied from that copy (no row read on
/// the host), blocks straddling the copy's batches; once the copy is evicted the rows are read
/// on the host instead. Either way the window trains as the same rows uploaded: same bits.
#[test]
fn windows_from_a_device_copy_train_as_the_same_rows_uploaded() {
    use relu_fpt::backend::gpu::MomentKernelParams;
    use relu_fpt::moments::{BinSpec, SampleWeight};
    // A backend of its own: this test evicts its copies.
    let gpu = GpuBackend::new(true).expect("a GPU adapter (lavapipe in CI)");
    let mut rng = Rng(43);
    let d = 10;
    let teacher =
        Network::with_projection(&network(&mut rng, 2, &[5]), &basis(&mut rng, 2, d)).unwrap();
    let src = CountingSource::new(
        samples(&mut rng, d, 12_000, &teacher),
        "gpu_trainer windows from a device copy",
    );
    assert!(!gpu.assembles_windows(&src), "no copy yet");
    // A moments pass in batches of 5000 rows leaves the copy.
    let params = MomentKernelParams {
        max_batch_rows: 5_000,
        ..MomentKernelParams::for_dim(d)
    };
    gpu.moments_with(
        &src,
        &BinSpec::single(d),
        SampleWeight::Unit,
        &params,
        &hidden(),
    )
    .unwrap();
    assert!(gpu.assembles_windows(&src), "the copy is held");

    let blocks = [(4_096u64, 4_096usize), (8_192, 3_808)];
    let rows: usize = blocks.iter().map(|b| b.1).sum();
    let mut order: Vec<u32> = (0..rows as u32).collect();
    for i in (1..rows).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let picked: Vec<usize> = order
        .iter()
        .map(|&k| {
            let k = k as usize;
            if k < 4_096 {
                4_096 + k
            } else {
                8_192 + k - 4_096
            }
        })
        .collect();
    let xs: Vec<f32> = picked
        .iter()
        .flat_map(|&i| src.inner.x[i * d..(i + 1) * d].to_vec())
        .collect();
    let ys: Vec<f32> = picked.iter().map(|&i| src.inner.y[i]).collect();

    let student = network(&mut rng, 2, &[4]);
    let shape = FactoredShape::of(&student, d).unwrap();
    let start = shape.pack(&student, &basis(&mut rng, 2, d)).unwrap();
    let run = |assembled: bool| {
        let mut p = start.clone();
        let mut adam = Adam::new(p.len(), 5e-3, 100);
        if assembled {
            gpu.train_window_of(&shape, true, &src, &blocks, &order, 64, &mut p, &mut adam)
                .unwrap();
        } else {
            gpu.train_window(&shape, true, &xs, &ys, 64, &mut p, &mut adam)
                .unwrap();
        }
        p
    };
    let uploaded = run(false);
    assert_ne!(uploaded, start, "the window trained");
    let reads = src.reads();
    assert_eq!(run(true), uploaded, "copied from the device copy");
    assert_eq!(src.reads(), reads, "no row read on the host");
    gpu.resident().clear();
    assert_eq!(
        run(true),
        uploaded,
        "read on the host once the copy is gone"
    );
    assert!(src.reads() > reads);
}
