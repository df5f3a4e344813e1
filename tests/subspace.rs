//! Filtered PCA and its baselines on the benchmark teachers of the algorithm notes (CPU backend
//! unless said, small N). The method never sees the teacher; the tests compare its output with
//! the teacher's hidden basis.
//!
//! Bounds come from measured distributions, not from the method's own scores:
//! `python3 scripts/subspace_test_bounds.py` runs each case's family and sizes on seeds 1..10
//! (teacher and samples from the seed). Worst of ten, measured on this version:
//!
//! | case | dims found | worst largest angle | worst gradient energy missed |
//! |---|---|---|---|
//! | parity k=4, d=48, N=2e5 | 4/4 on all | 0.069 | 3.1e-3 |
//! | fan, d=32, N=1e5 | 2/2 on all | 0.0013 | 1.3e-6 |
//! | deep parity, d=32, N=1e5 | 3/3 on all | 0.28 (one teacher with a weak unit) | 1.1e-4 |
//! | composite, d=32, N=1e5 | 3/3 on all | 0.048 | 7.1e-5 |
//! | random [3,3], biases, noise 0.1, d=32, N=2e5 | 3/3 on 8, 2/3 on 2 | - | 1.8e-4 |
//!
//! Each test allows 2x the worst of ten (the gradient energy missed, which weighs a direction by
//! how much the teacher uses it, for every case; the angle where no seed had a weak direction).

mod common;

use relu_fpt::backend::Backend;
use relu_fpt::data::whiten::Whitening;
use relu_fpt::data::{GaussianSource, MemorySource, SampleSource};
use relu_fpt::learn::{learn, LearnConfig};
use relu_fpt::metrics::{gradient_energy_missed, principal_angles};
use relu_fpt::network::{Layer, Network};
use relu_fpt::subspace::eigen::top_eigenpairs;
use relu_fpt::subspace::{find_subspace, Method, RoundKind, SubspaceConfig, SubspaceReport};
use relu_fpt::teacher::{self, Teacher, TeacherKind, TeacherSpec};

fn teacher(kind: TeacherKind, d: usize, seed: u64) -> Teacher {
    let mut spec = TeacherSpec::new(kind, d);
    spec.seed = seed;
    teacher::build(&spec).unwrap()
}

fn run(t: &Teacher, rows: u64, noise: f64, config: &SubspaceConfig) -> SubspaceReport {
    let source = GaussianSource::new(t.network.clone(), rows, 11, noise).unwrap();
    let report = find_subspace(common::cpu(), &source, config).unwrap();
    eprintln!("{}\n{}", t.name, report.summary());
    report
}

fn largest_angle(report: &SubspaceReport, t: &Teacher) -> f64 {
    principal_angles(&report.basis, &t.basis)
        .into_iter()
        .fold(0.0, f64::max)
}

fn energy_missed(report: &SubspaceReport, t: &Teacher) -> f64 {
    gradient_energy_missed(&t.network, &report.basis, 20_000, 3)
}

/// Filtered PCA finds the teacher's dimension, misses at most `energy` of its gradient energy
/// and, when given, has its largest angle below `angle` (both 2x the worst of ten seeds).
fn check_filtered(t: &Teacher, rows: u64, noise: f64, energy: f64, angle: Option<f64>) {
    let report = run(t, rows, noise, &SubspaceConfig::default());
    assert_eq!(report.dim(), t.relevant_dim, "{}: dimension", t.name);
    let missed = energy_missed(&report, t);
    assert!(missed < energy, "{}: energy missed {missed:.2e}", t.name);
    if let Some(bound) = angle {
        let a = largest_angle(&report, t);
        assert!(a < bound, "{}: largest angle {a:.4} rad", t.name);
    }
}

fn check_phd_fails(t: &Teacher, rows: u64) {
    let config = SubspaceConfig {
        method: Method::Phd,
        dim: Some(t.relevant_dim),
        ..SubspaceConfig::default()
    };
    let report = run(t, rows, 0.0, &config);
    assert_eq!(report.dim(), t.relevant_dim);
    let angle = largest_angle(&report, t);
    assert!(angle > 1.0, "{}: pHd angle {angle:.3} rad", t.name);
}

#[test]
fn parity_filtered_succeeds_where_phd_fails() {
    let t = teacher(TeacherKind::Parity, 48, 1);
    check_filtered(&t, 200_000, 0.0, 6.2e-3, Some(0.14));
    check_phd_fails(&t, 200_000);
}

#[test]
fn fan_filtered_succeeds_where_phd_fails() {
    let t = teacher(TeacherKind::Fan, 32, 1);
    check_filtered(&t, 100_000, 0.0, 2.6e-6, Some(0.0026));
    check_phd_fails(&t, 100_000);
}

#[test]
fn deep_parity_filtered() {
    check_filtered(
        &teacher(TeacherKind::DeepParity, 32, 1),
        100_000,
        0.0,
        2.2e-4,
        None,
    );
}

#[test]
fn composite_filtered() {
    check_filtered(
        &teacher(TeacherKind::Composite, 32, 1),
        100_000,
        0.0,
        1.4e-4,
        Some(0.096),
    );
}

#[test]
fn random_deep_with_biases_and_noise_filtered() {
    let mut spec = TeacherSpec::new(TeacherKind::Random, 32);
    spec.widths = vec![3, 3];
    spec.bias = true;
    spec.seed = 2;
    let t = teacher::build(&spec).unwrap();
    let report = run(&t, 200_000, 0.1, &SubspaceConfig::default());
    // Two of ten seeds found 2 of the 3 directions (the third carrying < 1e-4 of the energy);
    // never more than 3.
    assert!(
        (2..=3).contains(&report.dim()),
        "dimension {}",
        report.dim()
    );
    let missed = energy_missed(&report, &t);
    assert!(missed < 3.6e-4, "energy missed {missed:.2e}");
}

#[test]
fn save_recovers_deep_parity_and_sir_does_not() {
    let t = teacher(TeacherKind::DeepParity, 32, 1);
    let save = run(
        &t,
        100_000,
        0.0,
        &SubspaceConfig {
            method: Method::Save,
            dim: Some(3),
            ..SubspaceConfig::default()
        },
    );
    assert_eq!(save.dim(), 3);
    assert!(largest_angle(&save, &t) < 0.2);
    let sir = run(
        &t,
        100_000,
        0.0,
        &SubspaceConfig {
            method: Method::Sir,
            dim: Some(3),
            ..SubspaceConfig::default()
        },
    );
    // SIR sees only slice means, which vanish for a teacher odd in every coordinate.
    assert!(largest_angle(&sir, &t) > 1.0);
}

/// The Gauss-Newton steps after the rounds cut the gradient energy the basis misses. Measured
/// (seeds 1-5, these sizes): deep parity 4.5e-3..5.5e-3 without the steps against
/// 4e-5..6e-5 with them, fan 1.4e-3..2.3e-3 against 7e-7..1e-6, ratios below 0.015; the test
/// asks for 0.1. Each step's residual is below the one before (a step that raised it would be
/// undone), by about what the step before promised.
#[test]
fn gauss_newton_steps_sharpen_the_basis() {
    for (kind, d) in [(TeacherKind::DeepParity, 32), (TeacherKind::Fan, 32)] {
        let t = teacher(kind, d, 11);
        let rounds_only = SubspaceConfig {
            refine_steps: 0,
            ..SubspaceConfig::default()
        };
        let coarse = run(&t, 100_000, 0.0, &rounds_only);
        let fine = run(&t, 100_000, 0.0, &SubspaceConfig::default());
        assert!(coarse.refine.is_empty());
        // Without refine steps there are no residual rounds either.
        assert!(coarse.rounds.iter().all(|r| r.kind == RoundKind::Label));
        assert!((1..=3).contains(&fine.refine.len()), "{}", fine.summary());
        assert_eq!(coarse.dim(), t.relevant_dim);
        assert_eq!(fine.dim(), t.relevant_dim);
        let (before, after) = (energy_missed(&coarse, &t), energy_missed(&fine, &t));
        assert!(
            after < 0.1 * before,
            "{}: {before:.2e} -> {after:.2e} energy missed",
            t.name
        );
        for w in fine.refine.windows(2) {
            assert!(w[1].residual_mse < w[0].residual_mse, "{}", fine.summary());
            // A step that promised less than 0.5% would have ended the steps; what the next
            // pass measured is the gain the promise foretold, within a factor of about 2.
            let promised = w[0].promised_gain.unwrap();
            let delivered = 1.0 - w[1].residual_mse / w[0].residual_mse;
            assert!(promised >= 0.005, "{}", fine.summary());
            assert!(
                promised > 0.4 * delivered && promised < 1.5 * delivered,
                "{}",
                fine.summary()
            );
        }
        // The steps end at their number, at a residual that did not drop by 1%, or at a
        // promise below 0.5% (deep parity here: 0.49%, kept without a pass to measure it).
        let last = fine.refine.last().unwrap();
        let small_promise = last.promised_gain.is_some_and(|g| g < 0.005);
        assert!(
            fine.refine.len() == 3 || last.promised_gain.is_none() || small_promise,
            "{}",
            fine.summary()
        );
        if kind == TeacherKind::DeepParity {
            assert!(small_promise, "{}", fine.summary());
        }
    }
}

/// Labels independent of x, with the inputs drawn by `draw_x` (rows of d) and labels by
/// `draw_y`, from a seed.
fn pure_noise(
    rows: usize,
    d: usize,
    seed: u64,
    draw_x: impl Fn(&mut rand::rngs::StdRng) -> f32,
    draw_y: impl Fn(&mut rand::rngs::StdRng) -> f32,
) -> MemorySource {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x = (0..rows * d).map(|_| draw_x(&mut rng)).collect();
    let y = (0..rows).map(|_| draw_y(&mut rng)).collect();
    MemorySource { dim: d, x, y }
}

fn gauss(rng: &mut rand::rngs::StdRng) -> f32 {
    use rand_distr::Distribution;
    rand_distr::StandardNormal.sample(rng)
}

/// y independent of x: the calibrated null accepts nothing, on every seed, for Gaussian x and
/// labels and for heavy-tailed ones (Student t with 3 degrees of freedom: the Gaussian edges
/// are wrong there and the null must absorb it). scripts/false_positives.py measures the rate
/// at d = 64, N = 4e5 (20 of 20 seeds clean) and the margin this relies on.
#[test]
fn pure_noise_labels_give_no_directions() {
    use rand_distr::Distribution;
    let t3 = rand_distr::StudentT::new(3.0).unwrap();
    for seed in 1..=4u64 {
        let sources = [
            pure_noise(40_000, 16, seed, gauss, gauss),
            pure_noise(
                40_000,
                16,
                100 + seed,
                |r| t3.sample(r) as f32,
                |r| t3.sample(r) as f32,
            ),
        ];
        for (i, source) in sources.iter().enumerate() {
            let config = SubspaceConfig {
                seed,
                ..SubspaceConfig::default()
            };
            let report = find_subspace(common::cpu(), source, &config).unwrap();
            assert_eq!(
                report.dim(),
                0,
                "seed {seed}, law {i}: {}",
                report.summary()
            );
            assert_eq!(report.rounds.len(), 1);
            let none = report.no_structure().expect("a typed no-structure outcome");
            assert!(none.best_score < none.threshold, "{none}");
            assert!(none.to_string().contains("no structure found"), "{none}");
        }
    }
}

/// `learn` on pure noise stops with the typed error, not a model.
#[test]
fn learn_on_pure_noise_is_a_no_structure_error() {
    let source = pure_noise(30_000, 12, 9, gauss, gauss);
    let err = learn(common::cpu(), &source, &LearnConfig::default()).unwrap_err();
    assert!(
        matches!(err, relu_fpt::Error::NoStructure(_)),
        "expected NoStructure, got {err}"
    );
    let relu_fpt::Error::NoStructure(none) = err else {
        unreachable!()
    };
    assert_eq!(none.rows, 24_000, "runs on the training split");
}

/// Too few rows for any label filter: the outcome says so (not "no signal") and names the
/// rows a filter needs and a row count to try.
#[test]
fn too_few_rows_for_any_filter_says_so() {
    let source = pure_noise(100, 16, 3, gauss, gauss);
    let report = find_subspace(common::cpu(), &source, &SubspaceConfig::default()).unwrap();
    let none = report.no_structure().expect("a typed no-structure outcome");
    assert_eq!(none.filters, 0);
    assert_eq!(none.min_filter_rows, 20 * 16, "min_filter_factor 20 x d");
    assert_eq!(none.suggested_rows, Some(4 * 320));
    let text = none.to_string();
    assert!(text.contains("too few rows per filter"), "{text}");
    assert!(text.contains("at least 1280 rows"), "{text}");
    assert!(!text.contains("may not depend on x"), "{text}");
}

/// The CLI: `learn` on pure noise says so, exits 2 and writes no model.
#[test]
fn cli_learn_reports_no_structure_and_writes_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let source = pure_noise(20_000, 8, 4, gauss, gauss);
    let (xp, yp) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    relu_fpt::data::save_npy(&source, &xp, &yp, 8192).unwrap();
    let model = dir.path().join("model.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
        .args(["learn", "--backend", "cpu", "--x"])
        .arg(&xp)
        .arg("--y")
        .arg(&yp)
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no structure found"), "{stderr}");
    assert!(stderr.contains("threshold"), "{stderr}");
    assert!(!model.exists());
}

/// A teacher whose third direction carries about 1e-3 of the gradient energy:
/// |x1| + |x2| + eps relu(x3) with eps^2 / 2 = 1e-3 x 2. The first round (filters on y, where
/// the strong part dominates every quantile) misses it; on the residual y - h(B x) it is all
/// that is left, and a residual round finds it.
#[test]
fn residual_rounds_find_a_weak_direction_the_first_round_misses() {
    let d = 16;
    let eps = (4e-3f64).sqrt();
    let mut first = vec![0.0; 5 * d];
    for (unit, (coord, sign)) in [(0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0), (2, 1.0)]
        .into_iter()
        .enumerate()
    {
        first[unit * d + coord] = sign;
    }
    let net = Network::new(
        d,
        vec![
            Layer::new(d, 5, first, vec![0.0; 5]).unwrap(),
            Layer::new(5, 1, vec![1.0, 1.0, 1.0, 1.0, eps], vec![0.0]).unwrap(),
        ],
    )
    .unwrap();
    let e3: Vec<Vec<f64>> = vec![(0..d).map(|i| f64::from(u8::from(i == 2))).collect()];
    let strong: Vec<Vec<f64>> = (0..2)
        .map(|j| (0..d).map(|i| f64::from(u8::from(i == j))).collect())
        .collect();
    let weak_share = gradient_energy_missed(&net, &strong, 20_000, 5);
    assert!(
        (5e-4..2e-3).contains(&weak_share),
        "the weak direction carries {weak_share:.2e} of the energy"
    );
    let source = GaussianSource::new(net.clone(), 150_000, 3, 0.0).unwrap();
    let no_residual = SubspaceConfig {
        residual_rounds: 0,
        ..SubspaceConfig::default()
    };
    let first_rounds = find_subspace(common::cpu(), &source, &no_residual).unwrap();
    eprintln!("{}", first_rounds.summary());
    assert_eq!(first_rounds.dim(), 2, "{}", first_rounds.summary());
    let full = find_subspace(common::cpu(), &source, &SubspaceConfig::default()).unwrap();
    eprintln!("{}", full.summary());
    assert_eq!(full.dim(), 3, "{}", full.summary());
    let found = full
        .rounds
        .iter()
        .position(|r| r.kind == RoundKind::Residual && r.accepted == 1)
        .expect("a residual round added it");
    assert!(full.rounds[found].best_ratio() >= 1.0);
    // x3 lies in the found span (angle between e3 and the basis).
    let angle = principal_angles(&e3, &full.basis)[0];
    assert!(angle < 0.05, "x3 at {angle:.3} rad from the found span");
}

/// x = A x~ + mu with an anisotropic A (eigenvalues of Sigma = A A^T in [1/4, 4], a random
/// rotation) against its whitened twin x~ ~ N(0, I): the same dimension, and models whose
/// predictions on their own inputs agree. The raw run's model reads raw x: its whitening is
/// folded in.
#[test]
fn anisotropic_inputs_match_their_whitened_twin() {
    use rand::SeedableRng;
    let d = 12;
    let spec = TeacherSpec {
        seed: 4,
        widths: vec![3, 3],
        ..TeacherSpec::new(TeacherKind::Random, d)
    };
    let t = teacher::build(&spec).unwrap();
    let rows = 60_000;
    let twin = GaussianSource::new(t.network.clone(), rows, 8, 0.0).unwrap();
    let (mut xt, mut y) = (Vec::new(), Vec::new());
    twin.read(0, rows as usize, &mut xt, &mut y).unwrap();
    // A = Q diag(s) with s^2 log-uniform on [1/4, 4], Q a random orthogonal matrix.
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let g = nalgebra::DMatrix::from_fn(d, d, |_, _| f64::from(gauss(&mut rng)));
    let q = g.qr().q();
    let s: Vec<f64> = (0..d)
        .map(|i| {
            (0.25f64.ln() + 16f64.ln() * i as f64 / (d - 1) as f64)
                .exp()
                .sqrt()
        })
        .collect();
    let mu: Vec<f64> = (0..d).map(|i| 3.0 - 0.5 * i as f64).collect();
    let a = &q * nalgebra::DMatrix::from_diagonal(&nalgebra::DVector::from_vec(s));
    let mut xr = vec![0.0f32; xt.len()];
    for (raw, white) in xr.chunks_exact_mut(d).zip(xt.chunks_exact(d)) {
        for i in 0..d {
            let v: f64 = (0..d).map(|j| a[(i, j)] * white[j] as f64).sum();
            raw[i] = (v + mu[i]) as f32;
        }
    }
    let raw = MemorySource {
        dim: d,
        x: xr.clone(),
        y: y.clone(),
    };
    let white = MemorySource {
        dim: d,
        x: xt.clone(),
        y: y.clone(),
    };
    let config = LearnConfig {
        search_config: relu_fpt::search::SearchConfig {
            budget: 100,
            ..LearnConfig::default().search_config
        },
        descent_config: relu_fpt::learn::PolishConfig {
            epochs: 5,
            ..Default::default()
        },
        polish_config: relu_fpt::learn::PolishConfig {
            epochs: 3,
            ..Default::default()
        },
        ..LearnConfig::default()
    };
    let m_raw = learn(common::cpu(), &raw, &config).unwrap();
    let m_white = learn(common::cpu(), &white, &config).unwrap();
    // The subspace each learn run found (on its training split).
    let sub_raw = m_raw.subspace.as_ref().unwrap();
    let sub_white = m_white.subspace.as_ref().unwrap();
    assert_eq!(sub_raw.dim(), sub_white.dim());
    assert_eq!(sub_raw.dim(), t.relevant_dim);
    let w = sub_raw.whitening.as_ref().unwrap();
    assert!(w.map.is_some(), "{}", w.summary());
    assert!(sub_white.whitening.as_ref().unwrap().is_identity());
    // The raw span is A^-T times the twin's: compare in the twin's coordinates.
    let ainv_t = a.clone().try_inverse().unwrap().transpose();
    let mapped: Vec<f64> = sub_white
        .basis
        .iter()
        .flat_map(|b| {
            (&ainv_t * nalgebra::DVector::from_vec(b.clone()))
                .data
                .as_vec()
                .clone()
        })
        .collect();
    // principal_angles takes orthonormal rows.
    let mapped = relu_fpt::network::row_space_basis(&mapped, sub_white.dim(), d, 1e-12);
    let between = principal_angles(&mapped, &sub_raw.basis)
        .into_iter()
        .fold(0.0, f64::max);
    // Each span lies within 0.04 rad of the teacher's on seeds 1-6 of this family (isotropic
    // inputs, d = 12, N = 1e5), so at most 0.08 apart; the bound is twice that.
    assert!(between < 0.16, "raw and twin spans {between:.3} rad apart");

    eprintln!("{}\n{}", m_raw.summary(), m_white.summary());
    assert_eq!(m_raw.model.input_dim, d);
    let test = GaussianSource::new(t.network.clone(), 20_000, 99, 0.0).unwrap();
    let (mut xtest, mut ytest) = (Vec::new(), Vec::new());
    test.read(0, 20_000, &mut xtest, &mut ytest).unwrap();
    let xraw: Vec<f32> = xtest
        .chunks_exact(d)
        .flat_map(|white| {
            (0..d)
                .map(|i| {
                    let v: f64 = (0..d).map(|j| a[(i, j)] * white[j] as f64).sum();
                    (v + mu[i]) as f32
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let p_raw = common::cpu().predict(&m_raw.model, &xraw, 20_000).unwrap();
    let p_white = common::cpu()
        .predict(&m_white.model, &xtest, 20_000)
        .unwrap();
    let var = relu_fpt::search::label_variance(&ytest);
    let mse = |p: &[f32]| -> f64 {
        p.iter()
            .zip(&ytest)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum::<f64>()
            / ytest.len() as f64
            / var
    };
    let diff = p_raw
        .iter()
        .zip(&p_white)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum::<f64>()
        / ytest.len() as f64
        / var;
    let (e_raw, e_white) = (mse(&p_raw), mse(&p_white));
    eprintln!("test MSE/Var: raw {e_raw:.2e}, twin {e_white:.2e}, between {diff:.2e}");
    // Both learn the teacher; the two models differ by no more than their own errors do
    // (each is within e of y, so within 2 (e_raw + e_white) of each other), plus the twin's
    // figure as slack for the estimated whitening.
    // Measured 1.0e-5 and 1.6e-5 at N = 1e5 (this teacher learns to the fit's floor).
    assert!(e_raw < 1e-3 && e_white < 1e-3, "{e_raw:.2e} {e_white:.2e}");
    assert!(
        diff <= 2.0 * (e_raw + e_white) + e_white,
        "{diff:.2e} vs {e_raw:.2e} + {e_white:.2e}"
    );
}

/// Folding the whitening into a model: the folded model on raw x equals the model on
/// W (x - mu), for a compact model and for a dense one; a rank-deficient covariance (a
/// duplicated and a constant column) drops those directions and stays finite.
#[test]
fn whitening_folds_into_the_model_and_drops_null_directions() {
    use rand::SeedableRng;
    let d = 6;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let rows = 20_000;
    let mut x = Vec::with_capacity(rows * d);
    for _ in 0..rows {
        let a = f64::from(gauss(&mut rng));
        let b = f64::from(gauss(&mut rng));
        let c = f64::from(gauss(&mut rng));
        let e = f64::from(gauss(&mut rng));
        // Column 3 repeats column 0; column 5 is constant.
        x.extend(
            [
                a * 3.0 + 1.0,
                a + 0.5 * b,
                c * 0.2 - 4.0,
                a * 3.0 + 1.0,
                e,
                7.0,
            ]
            .map(|v| v as f32),
        );
    }
    let source = MemorySource {
        dim: d,
        x: x.clone(),
        y: vec![0.0; rows],
    };
    let mut sigma = nalgebra::DMatrix::zeros(d, d);
    let mut mean = vec![0.0; d];
    for r in x.chunks_exact(d) {
        for i in 0..d {
            mean[i] += f64::from(r[i]) / rows as f64;
        }
    }
    for r in x.chunks_exact(d) {
        for i in 0..d {
            for j in 0..d {
                sigma[(i, j)] +=
                    (f64::from(r[i]) - mean[i]) * (f64::from(r[j]) - mean[j]) / rows as f64;
            }
        }
    }
    let w = Whitening::from_moments(mean, sigma, rows as u64);
    assert_eq!(w.dropped, 2, "{}", w.summary());
    assert_eq!(w.output_dim(), 4);
    assert!(w.summary().contains("dropped 2"), "{}", w.summary());
    let view = relu_fpt::data::whiten::WhitenedSource::new(&source, &w).unwrap();
    let (mut xw, mut yw) = (Vec::new(), Vec::new());
    view.read(0, rows, &mut xw, &mut yw).unwrap();
    assert!(xw.iter().all(|v| v.is_finite()));
    // Whitened coordinates have unit variance.
    for i in 0..4 {
        let var: f64 = xw
            .chunks_exact(4)
            .map(|r| f64::from(r[i]).powi(2))
            .sum::<f64>()
            / rows as f64;
        assert!((var - 1.0).abs() < 1e-3, "coordinate {i}: variance {var}");
    }
    let small = Network::new(
        2,
        vec![
            Layer::new(
                2,
                3,
                vec![0.5, -1.0, 1.5, 0.2, -0.7, 0.9],
                vec![0.1, -0.2, 0.3],
            )
            .unwrap(),
            Layer::new(3, 1, vec![1.0, -2.0, 0.5], vec![0.05]).unwrap(),
        ],
    )
    .unwrap();
    let compact = Network::with_projection(
        &small,
        &[vec![0.3, -0.2, 0.9, 0.1], vec![-0.5, 0.4, 0.2, 0.7]],
    )
    .unwrap();
    let dense = compact.dense();
    for model in [compact, dense] {
        let folded = w.fold(&model).unwrap();
        assert_eq!(folded.input_dim, d);
        let on_white = model.forward_f32(&xw[..400 * 4], 400);
        let on_raw = folded.forward_f32(&x[..400 * d], 400);
        for (a, b) in on_white.iter().zip(&on_raw) {
            assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }
}

/// The Lanczos solver against nalgebra's full eigendecomposition on random symmetric
/// matrices: a noise bulk alone (the null's case: the extreme eigenvalue sits at the edge of
/// a dense spectrum) and with planted spikes of both signs (the signal's case).
#[test]
fn top_eigenpairs_match_the_full_eigendecomposition() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    for (n, spikes) in [
        (60, vec![]),
        (150, vec![]),
        (150, vec![3.0, -2.5, 2.0]),
        (300, vec![1.5]),
    ] {
        let g = nalgebra::DMatrix::from_fn(n, n, |_, _| f64::from(gauss(&mut rng)));
        let mut m = (&g + g.transpose()) / (2.0 * (2.0 * n as f64).sqrt());
        for (k, &s) in spikes.iter().enumerate() {
            let v =
                nalgebra::DVector::from_fn(n, |i, _| if i % spikes.len() == k { 1.0 } else { 0.0 })
                    .normalize();
            m += &v * v.transpose() * s;
        }
        let full = nalgebra::SymmetricEigen::new(m.clone());
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            full.eigenvalues[b]
                .abs()
                .total_cmp(&full.eigenvalues[a].abs())
        });
        let want = 4;
        let got = top_eigenpairs(
            n,
            want,
            |v, out| {
                let r = &m * nalgebra::DVector::from_column_slice(v);
                out.copy_from_slice(r.as_slice());
            },
            3,
        );
        assert_eq!(got.len(), want);
        let scale = full.eigenvalues[order[0]].abs();
        for (k, (value, vector)) in got.iter().enumerate() {
            let truth = full.eigenvalues[order[k]];
            assert!(
                (value - truth).abs() < 1e-6 * scale,
                "n {n}, pair {k}: {value} vs {truth}"
            );
            // Vectors of well-separated eigenvalues (the spikes) agree up to sign.
            if k < spikes.len() {
                let t = full.eigenvectors.column(order[k]);
                let c: f64 = vector.iter().zip(t.iter()).map(|(a, b)| a * b).sum();
                assert!(c.abs() > 1.0 - 1e-8, "n {n}, pair {k}: |cos| {}", c.abs());
            }
        }
    }
}

#[test]
fn same_input_same_result_and_json_shape() {
    let t = teacher(TeacherKind::Fan, 16, 2);
    let a = run(&t, 40_000, 0.0, &SubspaceConfig::default());
    let b = run(&t, 40_000, 0.0, &SubspaceConfig::default());
    // Everything but the wall times is a function of the samples.
    let untimed = |r: &SubspaceReport| {
        let mut r = r.clone();
        r.rounds.iter_mut().for_each(|round| {
            round.seconds = 0.0;
            round.pass_seconds = 0.0;
            round.host_seconds = 0.0;
        });
        r.refine.iter_mut().for_each(|step| step.seconds = 0.0);
        r
    };
    assert_eq!(untimed(&a), untimed(&b));
    let v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    assert_eq!(v["format"], "relu-fpt/subspace");
    assert_eq!(v["version"], 2);
    assert_eq!(v["input_dim"], 16);
    assert_eq!(v["method"], "filtered");
    assert_eq!(v["samples_used"].as_u64(), Some(a.samples_used));
    assert_eq!(v["basis"].as_array().unwrap().len(), a.dim());
    assert_eq!(v["basis"][0].as_array().unwrap().len(), 16);
    assert_eq!(v["whitening"]["identity"], true);
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), a.rounds.len());
    assert_eq!(rounds[0]["kind"], "label");
    assert_eq!(rounds.last().unwrap()["kind"], "residual");
    for key in [
        "accepted",
        "scores",
        "top_eigenvalues",
        "null_edge",
        "best_score",
        "null_max",
        "threshold",
        "cell_axes",
        "bins",
        "accumulator_bytes",
        "seconds",
        "host_seconds",
    ] {
        assert!(rounds[0].get(key).is_some(), "round key {key}");
    }
    assert_eq!(v["refine"].as_array().unwrap().len(), a.refine.len());
    assert!(a.summary().contains("round 1 (label)"));
}

#[test]
fn bad_requests_are_typed_errors() {
    let t = teacher(TeacherKind::Fan, 8, 1);
    let source = GaussianSource::new(t.network.clone(), 1000, 1, 0.0).unwrap();
    let cases = [
        SubspaceConfig {
            method: Method::Save,
            ..SubspaceConfig::default()
        },
        SubspaceConfig {
            max_dim: 0,
            ..SubspaceConfig::default()
        },
        SubspaceConfig {
            dim: Some(9),
            ..SubspaceConfig::default()
        },
        SubspaceConfig {
            null_margin: 0.5,
            ..SubspaceConfig::default()
        },
        SubspaceConfig {
            null_replicates: 0,
            ..SubspaceConfig::default()
        },
        SubspaceConfig {
            round1_tails: vec![1.5],
            ..SubspaceConfig::default()
        },
    ];
    for config in cases {
        let err = find_subspace(common::cpu(), &source, &config).unwrap_err();
        assert!(matches!(err, relu_fpt::Error::InvalidRequest(_)), "{err}");
    }
    let empty = MemorySource {
        dim: 4,
        x: Vec::new(),
        y: Vec::new(),
    };
    assert!(find_subspace(common::cpu(), &empty, &SubspaceConfig::default()).is_err());
}

/// One full filtered-PCA run on the GPU backend (lavapipe in CI): same dimension as on the CPU
/// and the same basis up to f32 rounding of the sums.
#[test]
fn filtered_pca_on_the_gpu_backend_matches_the_cpu() {
    let t = teacher(TeacherKind::Fan, 16, 5);
    let source = GaussianSource::new(t.network.clone(), 120_000, 11, 0.0).unwrap();
    let config = SubspaceConfig::default();
    let cpu = find_subspace(common::cpu(), &source, &config).unwrap();
    let gpu = find_subspace(common::gpu(), &source, &config).unwrap();
    eprintln!("{}\n{}", cpu.summary(), gpu.summary());
    assert_eq!(gpu.dim(), t.relevant_dim);
    assert_eq!(gpu.dim(), cpu.dim());
    let between = principal_angles(&gpu.basis, &cpu.basis)
        .into_iter()
        .fold(0.0, f64::max);
    assert!(
        between < 1e-3,
        "GPU and CPU bases differ by {between:.2e} rad"
    );
    // The fan bound of the CPU cases (2x the worst of ten seeds at d = 32).
    assert!(energy_missed(&gpu, &t) < 2.6e-6);
}

/// Few rows at large d (issue 26): parity k = 4 at d = 160 from 2e4 rows stands about 1.2
/// times the null maximum, under the fixed margin of 1.25 and over the one that shrinks with
/// d, so the label round finds directions the fixed margin refused (`scripts/few_rows.py`:
/// `learn` fits 8 of 10 seeds to 1e-2 of Var(y) from such rows, none before), while labels
/// independent of x at the same size still give nothing.
#[test]
fn parity_at_d160_from_2e4_rows_clears_the_shrinking_margin_and_noise_does_not() {
    let t = teacher(TeacherKind::Parity, 160, 1);
    let report = run(&t, 20_000, 0.0, &SubspaceConfig::default());
    let first = &report.rounds[0];
    assert!(first.accepted >= 1, "{}", report.summary());
    let fixed = 1.25 * first.null_max;
    assert!(first.threshold < fixed, "{}", report.summary());
    assert!(first.best_score < fixed, "the fixed margin refused it");
    let missed = energy_missed(&report, &t);
    assert!(missed < 0.75, "energy missed {missed:.2e}");

    let noise = pure_noise(20_000, 160, 5, gauss, gauss);
    let none = find_subspace(common::cpu(), &noise, &SubspaceConfig::default()).unwrap();
    assert_eq!(none.dim(), 0, "{}", none.summary());
}

/// A merge of candidates that each cleared the bar errs a little low in every one filter: parity
/// k = 4 at d = 256 from 64 000 rows merged its fourth direction at 0.995 of the bar, and the
/// label round found three of four (the learned model then stood at 0.52 of Var(y)).
#[test]
fn parity_at_d256_from_64000_rows_keeps_its_fourth_merged_direction() {
    // The rows `learn --teacher parity --d 256 --k 4 --n 64000 --seed 3` fits on.
    let t = teacher(TeacherKind::Parity, 256, 3);
    let source = GaussianSource::new(t.network.clone(), 64_000, 3, 0.0).unwrap();
    let train = relu_fpt::data::SampleRange::new(&source, 0, 51_200).unwrap();
    let config = SubspaceConfig {
        seed: 3,
        ..LearnConfig::default().subspace_config
    };
    let report = find_subspace(common::cpu(), &train, &config).unwrap();
    assert_eq!(report.rounds[0].accepted, 4, "{}", report.summary());
    let missed = energy_missed(&report, &t);
    assert!(missed < 0.1, "energy missed {missed:.2e}");
}
