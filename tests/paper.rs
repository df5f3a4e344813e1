//! The paper's algorithm as written (`--method paper`): its conditioned label rounds, its
//! enumerate-and-test over the product net, the pipeline end to end, and its null on labels
//! independent of x. Bounds on fitted errors are twice the worst of the seeds measured with
//! each test's exact settings (release build; the code is deterministic).

mod common;

use relu_fpt::backend::Backend;
use relu_fpt::data::{GaussianSource, MemorySource};
use relu_fpt::learn::{learn, LearnConfig, LearnMethod, Stage};
use relu_fpt::metrics::principal_angles;
use relu_fpt::search::bench::teacher_samples;
use relu_fpt::search::{enumerate_and_test, label_variance, mse_of, Generator, SearchConfig};
use relu_fpt::subspace::{
    find_subspace, MeansOnly, Method, RefineEstimate, RoundKind, SubspaceConfig, SubspaceReport,
};
use relu_fpt::teacher::{self, TeacherKind, TeacherSpec};

fn largest_angle(basis: &[Vec<f64>], truth: &[Vec<f64>]) -> f64 {
    if basis.len() < truth.len() {
        return std::f64::consts::FRAC_PI_2;
    }
    principal_angles(basis, truth)
        .into_iter()
        .fold(0.0, f64::max)
}

/// The composite teacher (a fan in a plane, plus 0.5 relu on an orthogonal direction q3) at
/// d = 32 from 1e5 rows. The first round's filters see q3 too, but weaker than the plane (its
/// aggregate score 17 against 41 and 40), so with `merge_fraction` 0.5 the first round keeps
/// only the plane; the second round, with the plane projected out and its filters split by the
/// 3 x 3 cells of z on both plane directions, finds q3. The paper method has no residual
/// rounds or refine steps. (The default method's filtered means see q3 in round 1 even then.)
/// Measured over teacher seeds 1-5: rounds accepted 2, 1, 0 on each, largest angle 0.084 to
/// 0.107 rad; bound 0.22.
#[test]
fn conditioned_rounds_find_the_composite_third_direction() {
    let mut spec = TeacherSpec::new(TeacherKind::Composite, 32);
    spec.seed = 2;
    let t = teacher::build(&spec).unwrap();
    let source = GaussianSource::new(t.network.clone(), 100_000, 11, 0.0).unwrap();
    let config = SubspaceConfig {
        method: Method::Paper,
        merge_fraction: 0.5,
        // The paper's rounds alone (no refine sweeps).
        refine_steps: 0,
        ..SubspaceConfig::default()
    };
    let report = find_subspace(common::cpu(), &source, &config).unwrap();
    eprintln!("{}", report.summary());
    assert_eq!(report.dim(), 3, "{}", report.summary());
    // Label rounds only: no residual rounds, no refine steps, no whitening.
    assert!(report.rounds.iter().all(|r| r.kind == RoundKind::Label));
    assert!(report.refine.is_empty());
    assert!(report.whitening.is_none());
    let accepted: Vec<usize> = report.rounds.iter().map(|r| r.accepted).collect();
    assert_eq!(
        accepted,
        [2, 1, 0],
        "round 1 keeps the plane, round 2 finds q3"
    );
    // Round 2 is conditioned on cells of both plane directions.
    let r2 = &report.rounds[1];
    assert_eq!(r2.cell_axes, 2);
    assert!(r2.cells >= 9, "{} cells", r2.cells);
    let angle = largest_angle(&report.basis, &t.network.first_layer_span());
    assert!(angle < 0.22, "largest angle {angle}");
    let why = report.stopped.as_deref().unwrap_or("");
    assert!(why.contains("round 3 found no direction"), "{why}");
}

/// The paper method's cells are the occupied cells of a grid on every found direction: on
/// parity k = 4 (d = 24, 2e5 rows) the second round conditions on all four directions, on as
/// many own cells as the rows afford (each expecting 2 x 20 d rows), and finds nothing more.
#[test]
fn paper_rounds_condition_on_every_found_direction() {
    let mut spec = TeacherSpec::new(TeacherKind::Parity, 24);
    spec.seed = 2;
    let t = teacher::build(&spec).unwrap();
    let source = GaussianSource::new(t.network.clone(), 200_000, 5, 0.0).unwrap();
    let config = SubspaceConfig {
        method: Method::Paper,
        refine_steps: 0,
        ..SubspaceConfig::default()
    };
    let report = find_subspace(common::cpu(), &source, &config).unwrap();
    eprintln!("{}", report.summary());
    assert_eq!(report.dim(), 4);
    assert_eq!(report.rounds.len(), 2);
    let r2 = &report.rounds[1];
    assert_eq!(r2.cell_axes, 4, "conditioned on all found directions");
    assert_eq!(r2.accepted, 0);
    // 3^4 = 81 cells of about 2470 rows each afford the 2 x 20 x 24 = 960 rows a cell needs:
    // 81 own cells plus the pooled one (empty here).
    assert_eq!(r2.cells_per_axis, 3);
    assert_eq!(r2.cells, 82);
    assert!(r2.cell_coverage > 0.99);
    assert!(r2.accumulator_bytes <= 1 << 30);
    // The report names what the paper method leaves out.
    let text = report.summary();
    assert!(
        text.contains("not run: whitening, Gauss-Newton refine steps, residual rounds"),
        "{text}"
    );
    let json = report.to_value();
    assert_eq!(json["method"], "paper");
    assert_eq!(json["rounds"][1]["cells"], 82);
}

/// Refine sweeps (`refine_steps` > 0): the directions the rounds found are turned within
/// their span, then each is found again by the paper's round with the others as its basis,
/// conditioned on their cells, as its filters' direction or its cell SIR, whichever predicts
/// the smaller angle. On parity k = 4 (d = 32, 4e5 rows) round 1 finds the four directions
/// through label filters alone; the sweeps cut the largest angle. Measured over teacher seeds
/// 1-5 (when three sweeps always ran): 0.060 -> 0.033, 0.060 -> 0.030, 0.053 -> 0.023,
/// 0.056 -> 0.023, 0.063 -> 0.020 rad
/// (seed 3: round 2 adds a fifth direction at 1.05 times the bar); with the filters' estimate
/// alone the sweeps had reached 0.050, 0.040, 0.050, 0.039 on seeds 1-4. Asserted on seed 2:
/// below 0.6 times the rounds' own. Each refine round says which estimate the direction now
/// is, its predicted angle and how far it moved (0: kept), and whether it read the bin means
/// alone.
#[test]
fn refine_sweeps_sharpen_the_paper_basis() {
    let mut spec = TeacherSpec::new(TeacherKind::Parity, 32);
    spec.seed = 2;
    let t = teacher::build(&spec).unwrap();
    let truth = t.network.first_layer_span();
    let source = GaussianSource::new(t.network.clone(), 400_000, 7, 0.0).unwrap();
    let plain = SubspaceConfig {
        method: Method::Paper,
        refine_steps: 0,
        ..SubspaceConfig::default()
    };
    let rounds = find_subspace(common::cpu(), &source, &plain).unwrap();
    let swept = SubspaceConfig {
        refine_steps: 3,
        ..plain
    };
    let report = find_subspace(common::cpu(), &source, &swept).unwrap();
    eprintln!("{}", report.summary());
    assert_eq!(report.dim(), 4);
    let (before, after) = (
        largest_angle(&rounds.basis, &truth),
        largest_angle(&report.basis, &truth),
    );
    assert!(after < 0.6 * before, "largest angle {before} -> {after}");
    // The label rounds are the plain run's; then refine rounds of one direction each,
    // conditioned on the other three, each saying how far it moved its direction.
    let labels = rounds.rounds.len();
    assert!(report.rounds[..labels]
        .iter()
        .all(|r| r.kind == RoundKind::Label));
    let refine = &report.rounds[labels..];
    assert!(!refine.is_empty() && refine.len().is_multiple_of(4) && refine.len() <= 12);
    // The first sweep reads each direction's bin means first; on this teacher its cell SIR
    // predicts at most half the angle of the direction's estimate from round 1, so no refine
    // round reads second moments, later ones for the same reason.
    for r in &refine[..4] {
        assert_eq!(r.refinement.bin_means, Some(MeansOnly::SirAhead));
        let (_, before) = r.refinement.predicted_angle.unwrap();
        assert!(r.refinement.sir_angle.is_some_and(|a| 2.0 * a <= before));
    }
    for r in refine {
        assert_eq!(r.kind, RoundKind::Refine);
        assert!(r.refinement.bin_means.is_some());
        assert_eq!((r.cell_axes, r.accepted, r.filters), (3, 0, 0));
        assert!(r.scores.is_empty());
        assert!(
            r.refinement.moved.is_some_and(|a| (0.0..0.5).contains(&a)),
            "{:?}",
            r.refinement.moved
        );
        // A direction moves exactly when an estimate of the round predicts a smaller angle;
        // a cell SIR kept lies within 1.5x the predicted angles of the direction it refined.
        let (now, before) = r.refinement.predicted_angle.unwrap();
        let by = r.refinement.refined_by.unwrap();
        assert_eq!(
            by == RefineEstimate::Kept,
            now == before,
            "{by:?} {now} {before}"
        );
        assert!(now <= before && r.refinement.sir_score.is_some());
        if by == RefineEstimate::CellSir {
            assert!(
                r.refinement.sir_disagreement.is_some_and(|v| v <= 1.5),
                "{r:?}"
            );
        }
    }
    // Parity is odd in each direction within the others' cells: the cell SIR sees it.
    assert!(refine
        .iter()
        .any(|r| r.refinement.refined_by == Some(RefineEstimate::CellSir)
            && r.refinement.moved > Some(0.0)));
    let text = report.summary();
    assert!(text.contains("then refine sweeps"), "{text}");
    assert!(text.contains("to the cell SIR estimate"), "{text}");
    let why = report.stopped.as_deref().unwrap_or("");
    assert!(
        why.contains("refine sweep") && why.contains("turned within their span"),
        "{why}"
    );
}

/// Where the first sweep's cell SIR, read first, does not predict at most half the angle of a
/// direction's estimate from the round that found it, a pass of second moments follows as the
/// next round, with the filters and the cell SIR again: on the composite teacher (d = 16, 4e4
/// rows) the cell SIR predicts 0.59-0.74 of it (teacher seeds 1, 2), so every first-sweep
/// round is such a pair.
#[test]
fn the_first_sweep_reads_second_moments_where_its_cell_sir_is_not_far_ahead() {
    let t = teacher::build(&TeacherSpec::new(TeacherKind::Composite, 16)).unwrap();
    let source = GaussianSource::new(t.network.clone(), 40_000, 2, 0.0).unwrap();
    let config = SubspaceConfig {
        method: Method::Paper,
        refine_steps: 1,
        ..SubspaceConfig::default()
    };
    let report = find_subspace(common::cpu(), &source, &config).unwrap();
    eprintln!("{}", report.summary());
    assert_eq!(report.dim(), 3);
    let refine: Vec<_> = (report.rounds.iter())
        .filter(|r| r.kind == RoundKind::Refine)
        .collect();
    assert_eq!(refine.len(), 6, "a pair of rounds per direction");
    for pair in refine.chunks(2) {
        let (first, full) = (&pair[0].refinement, &pair[1]);
        assert_eq!(first.bin_means, Some(MeansOnly::SirFirst));
        assert_eq!((pair[0].filters, pair[0].accepted), (0, 0));
        assert!(first.refined_by.is_none() && first.moved.is_none());
        // The full pass: filters, one direction, and the same cells.
        assert_eq!(full.refinement.bin_means, None);
        assert!(full.filters > 0 && full.accepted == 1 && full.scores.len() == 1);
        assert_eq!((full.cells, full.cell_axes), (pair[0].cells, 2));
        let (now, before) = full.refinement.predicted_angle.unwrap();
        assert!(now <= before && full.refinement.refined_by.is_some());
        // Its bin means are the first pass's: the same cell SIR, which did not settle (to
        // rounding: the full pass sums x in f32 runs split by its random groups; measured
        // 7e-5 of the angle apart).
        let (a, b) = (first.sir_angle.unwrap(), full.refinement.sir_angle.unwrap());
        assert!((a - b).abs() <= 1e-3 * a, "{a} {b}");
        assert!(2.0 * a > before, "{a} {before}");
    }
    let text = report.summary();
    assert!(text.contains("did not settle the round"), "{text}");
}

/// A refine round's cell SIR that lies further from the direction it refines than their
/// predicted angles allow (1.5x their root-sum-square) is set aside: on deep parity k = 3
/// (d = 64, 3.2e5 rows, seed 2) the others' errors leak into it, and used anyway it drifted
/// further with every sweep, the basis ending 0.61 rad off the span. Some refine round sets it
/// aside and says so, and the basis stays within 0.3 rad (measured 0.148; the filters' estimate
/// alone reached 0.063).
#[test]
fn a_cell_sir_far_from_its_direction_is_set_aside() {
    let mut spec = TeacherSpec::new(TeacherKind::DeepParity, 64);
    spec.k = Some(3);
    spec.seed = 2;
    let t = teacher::build(&spec).unwrap();
    let truth = t.network.first_layer_span();
    let source = GaussianSource::new(t.network.clone(), 320_000, 2, 0.0).unwrap();
    let config = SubspaceConfig {
        method: Method::Paper,
        ..SubspaceConfig::default()
    };
    let report = find_subspace(common::cpu(), &source, &config).unwrap();
    let aside: Vec<_> = (report.rounds.iter())
        .filter(|r| r.refinement.sir_disagreement.is_some_and(|v| v > 1.5))
        .collect();
    assert!(!aside.is_empty(), "{}", report.summary());
    assert!(aside
        .iter()
        .all(|r| r.refinement.refined_by != Some(RefineEstimate::CellSir)));
    assert!(report.summary().contains("set aside"));
    let angle = largest_angle(&report.basis, &truth);
    assert!(report.dim() == 3 && angle < 0.3, "{angle}");
}

/// The product net (every unit on a net of the sphere, searched unit by unit at halving
/// resolutions, the output layer by least squares) recovers bias-free width-2 teachers in
/// r = 2 from the true basis, on both backends, with no gradient step. Measured over teacher
/// seeds 1-10 (3000 training and 1500 validation rows): MSE/Var 8.9e-11 to 2.9e-7, after
/// 1083 to 2773 candidates; bound 6e-7.
#[test]
fn product_net_recovers_a_width_two_teacher_from_the_true_basis() {
    for backend in common::backends() {
        for seed in 1..=2 {
            let spec = TeacherSpec {
                widths: vec![2],
                k: Some(2),
                seed,
                ..TeacherSpec::new(TeacherKind::Random, 2)
            };
            let (train, _) = teacher_samples(&spec, 3000, 100 + seed).unwrap();
            let (val, _) = teacher_samples(&spec, 1500, 200 + seed).unwrap();
            let var = label_variance(&val.y);
            let config = SearchConfig {
                hidden: vec![2],
                generator: Generator::Sweep,
                bias_bound: 0.0,
                budget: 100_000,
                seed,
                ..SearchConfig::default()
            };
            let res = enumerate_and_test(backend, &train, &val, &config).unwrap();
            let ratio = res.validation_mse / var;
            assert!(
                ratio < 6e-7,
                "{} seed {seed}: MSE/Var {ratio}",
                backend.kind()
            );
            // The report is the network's own error.
            assert!((mse_of(&res.network, &val) - res.validation_mse).abs() < 4e-5 * var);
            assert_eq!(res.generator, Generator::Sweep);
            // Bias-free, as the paper's networks.
            assert!(res.network.layers[0].bias.iter().all(|&b| b == 0.0));
            // The net's points are unit vectors.
            for o in 0..2 {
                let row = res.network.layers[0].row(o);
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!((norm - 1.0).abs() < 1e-6, "{norm}");
            }
            assert!(res.candidates_evaluated < config.budget);
        }
    }
}

/// Same seed, same network; and a deep architecture (units of the first hidden layer scored
/// through the backend, the last layer's by the rank-one update) fits a random [2, 2] teacher.
/// Measured over teacher seeds 1-5: MSE/Var 6.1e-10 to 6.0e-5; bound 1.2e-4.
#[test]
fn product_net_search_is_deterministic_and_handles_depth() {
    let spec = TeacherSpec {
        widths: vec![2, 2],
        k: Some(2),
        seed: 3,
        ..TeacherSpec::new(TeacherKind::Random, 2)
    };
    let (train, _) = teacher_samples(&spec, 3000, 7).unwrap();
    let (val, _) = teacher_samples(&spec, 1500, 8).unwrap();
    let var = label_variance(&val.y);
    let config = SearchConfig {
        hidden: vec![2, 2],
        generator: Generator::Sweep,
        bias_bound: 0.0,
        budget: 100_000,
        seed: 3,
        ..SearchConfig::default()
    };
    let a = enumerate_and_test(common::cpu(), &train, &val, &config).unwrap();
    let b = enumerate_and_test(common::cpu(), &train, &val, &config).unwrap();
    assert_eq!(a.network, b.network);
    assert_eq!(a.candidates_evaluated, b.candidates_evaluated);
    let ratio = a.validation_mse / var;
    assert!(ratio < 1.2e-4, "MSE/Var {ratio}");
}

/// `learn --method paper` end to end on a width-2 random teacher (d = 16, 6e4 rows): two
/// label rounds, enumerate-and-test as the final hypothesis, no gradient stage; the report
/// says which parts ran. Measured over seeds 1-5: test MSE/Var 1.2e-3 to 5.8e-3 (the angle of
/// the rounds' basis sets it: without refine steps it is what round 1 gives); bound 1.2e-2.
#[test]
fn learn_paper_end_to_end() {
    let spec = TeacherSpec {
        widths: vec![2],
        k: Some(2),
        seed: 1,
        ..TeacherSpec::new(TeacherKind::Random, 16)
    };
    let t = teacher::build(&spec).unwrap();
    let source = GaussianSource::new(t.network.clone(), 60_000, 3, 0.0).unwrap();
    let config = LearnConfig {
        method: LearnMethod::Paper,
        search_config: relu_fpt::search::SearchConfig {
            hidden: vec![2],
            budget: relu_fpt::learn::PAPER_BUDGET,
            ..LearnConfig::default().search_config
        },
        seed: 1,
        ..LearnConfig::default()
    };
    let report = learn(common::cpu(), &source, &config).unwrap();
    eprintln!("{}", report.summary());
    let stages: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(stages, ["subspace", "enumerate"]);
    assert_eq!(report.final_stage, Stage::Enumerate);
    assert!(report.descent_mse.is_none() && report.polished_mse.is_none());
    let test = GaussianSource::new(t.network.clone(), 20_000, 99, 0.0).unwrap();
    let mse = relu_fpt::learn::mse(common::cpu(), &report.model, &test).unwrap();
    let mut ys = Vec::new();
    relu_fpt::data::for_each_chunk(&test, 4096, |_, _, y| {
        ys.extend_from_slice(y);
        Ok(())
    })
    .unwrap();
    let var = label_variance(&ys);
    assert!(mse / var < 1.2e-2, "test MSE/Var {}", mse / var);
    let parts = relu_fpt::learn::parts(&report);
    let ran = |name: &str| parts.iter().find(|p| p.name.starts_with(name)).unwrap().ran;
    assert!(ran("enumerate-and-test") && ran("label round 1"));
    assert!(ran("refine sweeps"));
    assert!(!ran("polish") && !ran("descent") && !ran("refine steps") && !ran("whitening"));
    let json = report.to_json();
    assert_eq!(json["method"], "paper");
    assert!(report
        .summary()
        .contains("the final model is the paper's hypothesis"));
}

/// Labels independent of x: the paper method accepts nothing (the same calibrated null as the
/// default method, without the filtered means); scripts/false_positives.py measures its rate
/// (`--extra-flags "--method paper"`).
#[test]
fn paper_method_finds_nothing_in_pure_noise() {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    for seed in 1..=3u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (d, n) = (16, 40_000);
        let x = (0..n * d)
            .map(|_| rand_distr::StandardNormal.sample(&mut rng))
            .collect();
        let y = (0..n)
            .map(|_| rand_distr::StandardNormal.sample(&mut rng))
            .collect();
        let source = MemorySource { dim: d, x, y };
        let config = SubspaceConfig {
            method: Method::Paper,
            seed,
            ..SubspaceConfig::default()
        };
        let report: SubspaceReport = find_subspace(common::cpu(), &source, &config).unwrap();
        assert_eq!(report.dim(), 0, "seed {seed}: {}", report.summary());
        assert!(report.no_structure().is_some());
    }
}

/// The paper method's rounds on the GPU backend find what the CPU's find (the cells are
/// computed on the host, the moments on the device): the rounds alone to 1e-3 rad; with up to
/// three refine sweeps, the same estimates chosen in every refine round, the same later rounds
/// reading the bin means alone (at least one), and the bases apart by less than a fifth of the
/// smallest predicted angle. The cell SIR reads the bins' mean deviations
/// from their cell's, small differences of the device's f32 sums, and each refine round
/// conditions on cells of the last ones' directions, so the difference grows from round to
/// round (measured: 1.4e-3 to 4.9e-3 rad after one sweep, 1.7e-3 to 7.9e-3 after three,
/// against predicted angles of 0.038-0.051; with the bin-means rounds, two sweeps here,
/// 1.2e-3 to 6.7e-3 against 0.039).
#[test]
fn paper_rounds_run_on_the_gpu_backend() {
    let mut spec = TeacherSpec::new(TeacherKind::Composite, 16);
    spec.seed = 2;
    let t = teacher::build(&spec).unwrap();
    let source = GaussianSource::new(t.network.clone(), 40_000, 2, 0.0).unwrap();
    let rounds_only = SubspaceConfig {
        method: Method::Paper,
        refine_steps: 0,
        ..SubspaceConfig::default()
    };
    let config = SubspaceConfig {
        refine_steps: 3,
        ..rounds_only.clone()
    };
    let run =
        |backend: &dyn Backend, c: &SubspaceConfig| find_subspace(backend, &source, c).unwrap();
    let gpu = run(common::gpu(), &rounds_only);
    let cpu = run(common::cpu(), &rounds_only);
    assert_eq!(gpu.dim(), cpu.dim());
    assert!(gpu.rounds.len() >= 2, "a conditioned round ran");
    assert!(principal_angles(&gpu.basis, &cpu.basis)
        .iter()
        .all(|&a| a < 1e-3));
    let gpu = run(common::gpu(), &config);
    let cpu = run(common::cpu(), &config);
    assert_eq!(gpu.rounds.len(), cpu.rounds.len());
    let refine: Vec<_> = (gpu.rounds.iter().zip(&cpu.rounds))
        .filter(|(g, _)| g.kind == RoundKind::Refine)
        .collect();
    assert!(!refine.is_empty());
    assert!(refine
        .iter()
        .all(|(g, c)| g.refinement.refined_by == c.refinement.refined_by));
    // The rounds that read the bin means alone (a host pass through the backend's row sums:
    // every first-sweep round reads them first) are the same rounds on both.
    assert!(refine
        .iter()
        .all(|(g, c)| g.refinement.bin_means == c.refinement.bin_means));
    assert!(refine
        .iter()
        .any(|(g, _)| g.refinement.bin_means == Some(MeansOnly::FiltersBehind)));
    let smallest = (refine.iter())
        .filter_map(|(_, c)| c.refinement.predicted_angle)
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min);
    let apart = principal_angles(&gpu.basis, &cpu.basis);
    assert!(
        apart.iter().all(|&a| a < smallest / 5.0),
        "{apart:?} vs {smallest}"
    );
}
