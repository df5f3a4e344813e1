//! Stop when done, and the time budget (issue 22): a trainer stage ends when its validation
//! error stops improving (and not before its first gain when it waits for one), a stage that
//! loses its race against another's curve stops after the pilot and says why, a deadline ends a
//! stage with the best model so far, and `learn --time-budget` returns a model within a
//! generous bound of the budget and says that the budget cut it. Every case is small (a few
//! thousand rows, a few thousand parameters), so the whole file takes seconds.

mod common;

use relu_fpt::backend::{Device, FactoredShape};
use relu_fpt::data::{write_npy_f32, GaussianSource, MemorySource, SampleRange, SampleSource};
use relu_fpt::learn::{
    learn, train_until, Check, LearnConfig, Limits, PolishConfig, Race, Stage, StopReason,
    StopRule, TrainOutcome,
};
use relu_fpt::network::{Layer, Network};
use relu_fpt::progress::count;
use std::process::Command;
use std::time::{Duration, Instant};

const D: usize = 6;
const N_TRAIN: usize = 8192;
const N_VAL: usize = 2048;

/// A width-3 network on span(e_0, e_1) of R^6, its basis, and noisy samples of it: training
/// from the teacher itself cannot lower the validation error beyond noise.
fn noisy_teacher() -> (Network, Vec<Vec<f64>>, MemorySource) {
    let small = Network::new(
        2,
        vec![
            Layer::new(
                2,
                3,
                vec![1.0, 0.2, -0.4, 1.0, 0.7, -0.6],
                vec![0.1, -0.2, 0.0],
            )
            .unwrap(),
            Layer::new(3, 1, vec![1.0, -0.8, 0.5], vec![0.05]).unwrap(),
        ],
    )
    .unwrap();
    let mut basis = vec![vec![0.0; D]; 2];
    basis[0][0] = 1.0;
    basis[1][1] = 1.0;
    let teacher = Network::with_projection(&small, &basis).unwrap();
    let mut source = common::labelled_samples(&teacher, N_TRAIN + N_VAL, 7);
    let mut rng = common::Rng(3);
    for y in &mut source.y {
        *y += 0.3 * rng.normal() as f32;
    }
    (small, basis, source)
}

/// Trainer settings: one check per epoch of the training rows, 40 epochs planned.
fn config(wait_for_gain: bool) -> PolishConfig {
    PolishConfig {
        epochs: 40,
        seed: 2,
        stop: Some(StopRule {
            check_rows: N_TRAIN as u64,
            patience_rows: 3 * N_TRAIN as u64,
            check_val_rows: N_VAL as u64,
            wait_for_gain,
            ..StopRule::default()
        }),
        ..PolishConfig::default()
    }
}

fn split(source: &MemorySource) -> (SampleRange<'_>, SampleRange<'_>) {
    (
        SampleRange::new(source, 0, N_TRAIN as u64).unwrap(),
        SampleRange::new(source, N_TRAIN as u64, N_VAL as u64).unwrap(),
    )
}

/// A stage that starts where it cannot improve (the teacher itself, noisy labels) stops after
/// its patience, on both backends, with the same bits on one and three threads; told to wait
/// for a first gain, it runs its planned passes instead.
#[test]
fn a_stage_that_cannot_improve_stops_after_its_patience() {
    let (small, basis, source) = noisy_teacher();
    let (train, val) = split(&source);
    let (shape, start) = packed(&small, &basis);
    let planned = 40 * N_TRAIN as u64;
    for backend in common::backends() {
        let run = |threads: usize, cfg: &PolishConfig| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                train_until(
                    backend,
                    &train,
                    &val,
                    &shape,
                    &start,
                    false,
                    cfg,
                    &Limits::default(),
                )
            })
            .unwrap()
        };
        let out = run(1, &config(false));
        assert_eq!(out.stop, StopReason::Plateau, "{}: {out:?}", backend.kind());
        assert!(
            out.row_reads < planned / 4,
            "{}: {} row reads of {planned} planned",
            backend.kind(),
            out.row_reads
        );
        assert_eq!(out.row_reads, out.curve.last().unwrap().row_reads);
        // Each check scored the check rows; the curve's best never rises.
        assert!(out.curve.windows(2).all(|w| w[1].best_mse <= w[0].best_mse));
        if backend.kind() == Device::Cpu {
            let three = run(3, &config(false));
            assert_eq!(out.params, three.params);
            assert_eq!(out.row_reads, three.row_reads);
            assert_eq!(out.after.to_bits(), three.after.to_bits());
        }
        let waiting = run(1, &config(true));
        assert_eq!(waiting.row_reads, planned, "{waiting:?}");
        assert_eq!(waiting.stop, StopReason::Planned);
    }
}

/// A start a little off the teacher (its output bias 0.05 high, label noise 0.3): the first
/// checks find a gain the paired test calls significant (a few percent of the error), so the
/// patience starts again there; a rule that also wants a material gain (more than two
/// standard errors of the validation error itself) sees none and stops at its patience from
/// the start, with the same model quality within that gain.
#[test]
fn a_gain_within_the_errors_own_noise_does_not_renew_patience() {
    let (small, basis, source) = noisy_teacher();
    let (train, val) = split(&source);
    let mut off = small.clone();
    off.layers[1].bias[0] += 0.05;
    let (shape, start) = packed(&off, &basis);
    let run = |material: bool| {
        let mut cfg = config(false);
        if let Some(rule) = cfg.stop.as_mut() {
            rule.material = material;
        }
        run_on_cpu(&train, &val, &shape, &start, &cfg, &Limits::default())
    };
    let (paired, material) = (run(false), run(true));
    assert_eq!(material.stop, StopReason::Plateau, "{material:?}");
    assert_eq!(paired.stop, StopReason::Plateau, "{paired:?}");
    // Patience 3 epochs from the start, then a last stretch of a quarter of that.
    assert_eq!(material.row_reads, 4 * N_TRAIN as u64, "{material:?}");
    assert!(paired.row_reads > material.row_reads, "{paired:?}");
    // What the longer run gained is within the error's own noise.
    let se = material.after * (2.0 / N_VAL as f64).sqrt();
    assert!(
        material.after - paired.after < 2.0 * se,
        "{} {}",
        material.after,
        paired.after
    );
    assert!(material.kept && material.after < material.before);
}

/// The layout of `net` on `basis` in R^D, and its packed parameters.
fn packed(net: &Network, basis: &[Vec<f64>]) -> (FactoredShape, Vec<f64>) {
    let shape = FactoredShape::of(net, D).unwrap();
    let start = shape.pack(net, basis).unwrap();
    (shape, start)
}

/// The teacher's shape with a fresh output layer far from the teacher's, so that training
/// improves from its start: the layout and the packed start.
fn fresh_start(small: &Network, basis: &[Vec<f64>]) -> (FactoredShape, Vec<f64>) {
    let mut fresh = small.clone();
    fresh.layers[1].weights = vec![0.1, 0.1, 0.1];
    packed(&fresh, basis)
}

/// A stage with B fixed on the CPU backend.
fn run_on_cpu(
    train: &SampleRange<'_>,
    val: &SampleRange<'_>,
    shape: &FactoredShape,
    start: &[f64],
    cfg: &PolishConfig,
    limits: &Limits,
) -> TrainOutcome {
    train_until(common::cpu(), train, val, shape, start, false, cfg, limits).unwrap()
}

/// A race against a curve that cannot be beaten stops after the pilot and says so; against
/// one that is beaten at once, the stage runs on.
#[test]
fn a_stage_that_loses_its_race_stops_after_the_pilot() {
    let (small, basis, source) = noisy_teacher();
    let (train, val) = split(&source);
    let (shape, start) = fresh_start(&small, &basis);
    let cfg = PolishConfig {
        epochs: 12,
        ..config(false)
    };
    let race = |best_mse: f64| Limits {
        deadline: None,
        race: Some(Race {
            at: 2 * N_TRAIN as u64,
            against: vec![Check {
                row_reads: N_TRAIN as u64,
                seconds: 0.0,
                validation_mse: best_mse,
                best_mse,
            }],
            margin: 1.0,
        }),
        ..Limits::default()
    };
    let run = |limits: &Limits| run_on_cpu(&train, &val, &shape, &start, &cfg, limits);
    let lost = run(&race(0.0));
    assert_eq!(lost.stop, StopReason::Behind, "{lost:?}");
    assert_eq!(lost.row_reads, 2 * N_TRAIN as u64);
    let won = run(&race(1e9));
    assert_ne!(won.stop, StopReason::Behind, "{won:?}");
    assert!(won.row_reads > 2 * N_TRAIN as u64);
    assert!(won.kept && won.after < won.before);
    // A pilot ends at the first check after its row reads, scored like any stage.
    let pilot = run(&Limits {
        pilot: Some(2 * N_TRAIN as u64),
        ..Limits::default()
    });
    assert_eq!(pilot.stop, StopReason::Pilot, "{pilot:?}");
    assert_eq!(pilot.row_reads, 2 * N_TRAIN as u64);
    assert!(pilot.kept && pilot.after < pilot.before);
}

/// A deadline that has passed ends a stage after its first window, with the best model of its
/// one check, and says so.
#[test]
fn a_passed_deadline_ends_a_stage_after_one_window() {
    let (small, basis, source) = noisy_teacher();
    let (train, val) = split(&source);
    let (shape, start) = fresh_start(&small, &basis);
    let cfg = PolishConfig {
        // Windows of one block, so that the first ends well before the epoch does.
        window_bytes: relu_fpt::learn::BLOCK_ROWS * D * 4,
        ..config(false)
    };
    let limits = Limits {
        deadline: Some(Instant::now()),
        ..Limits::default()
    };
    let out = train_until(
        common::cpu(),
        &train,
        &val,
        &shape,
        &start,
        true,
        &cfg,
        &limits,
    )
    .unwrap();
    assert_eq!(out.stop, StopReason::Deadline, "{out:?}");
    assert_eq!(out.row_reads, relu_fpt::learn::BLOCK_ROWS as u64);
    assert_eq!(out.curve.len(), 1);
    assert!(out.after.is_finite());
}

/// The samples of a random [4, 4] teacher on a 3-dim subspace of R^16.
fn random_teacher_source(n: u64) -> GaussianSource {
    noisy_random_teacher_source(n, 0.0)
}

/// The same with label noise of standard deviation `noise_sd`.
fn noisy_random_teacher_source(n: u64, noise_sd: f64) -> GaussianSource {
    let spec = relu_fpt::teacher::TeacherSpec {
        k: Some(3),
        widths: vec![4, 4],
        seed: 5,
        ..relu_fpt::teacher::TeacherSpec::new(relu_fpt::teacher::TeacherKind::Random, 16)
    };
    let teacher = relu_fpt::teacher::build(&spec).unwrap();
    GaussianSource::new(teacher.network, n, 6, noise_sd).unwrap()
}

/// `learn` with a time budget returns a model well within a generous bound of it, says what the
/// budget cut and that such a run is not reproducible; without one, the report says the run
/// is, and why the deep-net stage ran or stopped.
#[test]
fn learn_within_a_time_budget_says_what_it_cut() {
    let source = random_teacher_source(300_000);
    let budget = 1.5;
    let t = Instant::now();
    let rep = learn(
        common::cpu(),
        &source,
        &LearnConfig {
            time_budget: Some(budget),
            seed: 3,
            ..LearnConfig::default()
        },
    )
    .unwrap();
    let took = t.elapsed().as_secs_f64();
    // Generous: a busy machine may overrun the plan, never by this much.
    assert!(
        took < 3.0 * budget + 5.0,
        "{took} s for a {budget} s budget"
    );
    assert_eq!(rep.time_budget, Some(budget));
    assert!(!rep.budget_notes.is_empty(), "{}", rep.summary());
    assert!(rep.validation_mse.is_finite() && rep.validation_mse < rep.validation_var);
    let summary = rep.summary();
    assert!(summary.contains("not reproducible"), "{summary}");
    let json = rep.to_json();
    assert_eq!(json["reproducible"], false);
    assert_eq!(json["time_budget"], budget);
    // What became of the deep-net stage is said either way.
    let why = rep.deep_net_decision.clone().unwrap();
    if !rep.stages.iter().any(|s| s.stage == Stage::DeepNet) {
        assert!(why.starts_with("skipped"), "{why}");
    }
    // The curve: best validation error against seconds, in time order, never rising.
    let curve = rep.curve();
    assert!(curve
        .windows(2)
        .all(|w| w[0].0 <= w[1].0 + 1e-9 && w[1].1 <= w[0].1));

    let bad = learn(
        common::cpu(),
        &source,
        &LearnConfig {
            time_budget: Some(0.0),
            ..LearnConfig::default()
        },
    );
    assert!(bad.unwrap_err().to_string().contains("time_budget"));
}

/// Learns with `cfg`: the report, its deep-net stage and the stage's decision.
fn deep_net_run(
    source: &GaussianSource,
    cfg: &LearnConfig,
) -> (
    relu_fpt::learn::LearnReport,
    relu_fpt::learn::StageReport,
    String,
) {
    let rep = learn(common::cpu(), source, cfg).unwrap();
    let deep = (rep.stages.iter())
        .find(|s| s.stage == Stage::DeepNet)
        .unwrap()
        .clone();
    let why = rep.deep_net_decision.clone().unwrap();
    (rep, deep, why)
}

/// A teacher the search's network fits exactly (one hidden layer without biases on one
/// direction: the sphere-net features relu(+-z) represent it): the deep-net stage runs only
/// its race, stops behind the descent, and the report says why, in the summary and the JSON
/// alike.
#[test]
fn the_deep_net_stage_stops_after_its_race_when_it_cannot_help() {
    let spec = relu_fpt::teacher::TeacherSpec {
        k: Some(1),
        widths: vec![3],
        seed: 3,
        ..relu_fpt::teacher::TeacherSpec::new(relu_fpt::teacher::TeacherKind::Random, 12)
    };
    let teacher = relu_fpt::teacher::build(&spec).unwrap();
    let source = GaussianSource::new(teacher.network, 40_000, 4, 0.0).unwrap();
    let mut cfg = LearnConfig {
        search_config: relu_fpt::search::SearchConfig {
            budget: 64,
            ..LearnConfig::default().search_config
        },
        polish: false,
        seed: 2,
        ..LearnConfig::default()
    };
    let pilot = 64_000;
    cfg.deep_gate.as_mut().unwrap().race_rows = pilot;
    cfg.deep_candidates = vec![vec![32, 32]];
    let (rep, deep, why) = deep_net_run(&source, &cfg);
    assert_eq!(
        deep.stopped.map(StopReason::as_str),
        Some("behind the descent"),
        "{}",
        rep.summary()
    );
    // The first check at or past the pilot's row reads (one per pass of 32000 rows).
    assert_eq!(deep.row_reads, pilot);
    assert_ne!(rep.final_stage, Stage::DeepNet);
    assert!(
        why.starts_with("stopped after its race of 64000 row reads"),
        "{why}"
    );
    assert!(why.contains("no structure on z"), "{why}");
    assert!(rep.summary().contains(&format!("deep-net stage: {why}")));
    assert_eq!(rep.to_json()["deep_net_decision"], why.as_str());
    assert_eq!(rep.to_json()["reproducible"], true);

    // A margin no pilot can miss: the stage goes on past its race, and says why.
    let mut generous = cfg.clone();
    generous.deep_gate.as_mut().unwrap().race_margin = 1e12;
    let (_, deep, why) = deep_net_run(&source, &generous);
    assert_ne!(deep.stopped, Some(StopReason::Behind), "{why}");
    assert!(deep.row_reads > pilot, "{why}");
    assert!(
        why.starts_with("ran: after a race of 64000 row reads")
            && why.contains("ahead of the descent after as many"),
        "{why}"
    );

    // With two candidates, the deeper one's pilot runs first and the first candidate's run
    // is the race: behind, nothing more is trained (the stage reads the pilot's row reads and
    // the race's, no more).
    cfg.deep_candidates = vec![vec![32, 32], vec![32, 32, 32]];
    cfg.deep_pilot_rows = pilot;
    let (_, deep, why) = deep_net_run(&source, &cfg);
    assert_eq!(deep.stopped, Some(StopReason::Behind), "{why}");
    assert_eq!(deep.row_reads, 2 * pilot, "{why}");
    assert!(
        why.starts_with("stopped after its race of 64000 row reads"),
        "{why}"
    );
    assert!(
        why.contains("chosen by a race of 64000 row reads") && why.contains("[32, 32, 32] "),
        "{why}"
    );
}

/// Past its race, with no structure on z, the deep-net stage ends at its first check at or
/// below the descent's error (what it would gain after that, the polish moves B for), reads
/// fewer rows than its plan, and says so.
#[test]
fn the_deep_net_stage_ends_once_it_catches_up_with_the_descent() {
    let source = random_teacher_source(40_000);
    let mut cfg = LearnConfig {
        polish: false,
        seed: 2,
        deep_candidates: vec![vec![8, 8]],
        ..LearnConfig::default()
    };
    // A short descent that a deeper network catches up with; no residual counts as
    // structure, so the stage takes the race's path, and no race is lost.
    cfg.descent_config.epochs = 2;
    cfg.descent_config.row_budget = 0;
    let gate = cfg.deep_gate.as_mut().unwrap();
    gate.min_share = f64::INFINITY;
    gate.race_rows = 32_000;
    gate.race_margin = 1e12;
    let (rep, deep, why) = deep_net_run(&source, &cfg);
    assert_eq!(
        deep.stopped,
        Some(StopReason::CaughtUp),
        "{}",
        rep.summary()
    );
    assert!(why.starts_with("ran until it caught up: "), "{why}");
    assert!(
        why.contains("where the descent stage's model is at"),
        "{why}"
    );
    let descent = rep.descent_mse.expect("a descent").after;
    let (last, before) = deep.curve.split_last().unwrap();
    assert!(last.best_mse <= descent, "{why}");
    assert!(before.iter().all(|c| c.best_mse > descent), "{why}");
    let planned = cfg.deep_config.epochs_for(32_000) as u64 * 32_000;
    assert!(deep.row_reads < planned, "{} of {planned}", deep.row_reads);
    assert_eq!(rep.to_json()["deep_net_decision"], why.as_str());
    let left = planned - deep.row_reads;
    let said = format!(
        "with the {} row reads of this stage's plan left",
        count(left)
    );
    assert!(why.contains(&said), "{why}");

    // The first polish gets those row reads on top of its row budget (here two passes, and
    // no stop rule, so that it reads exactly its plan): whole passes of 32000 rows.
    cfg.polish = true;
    cfg.polish_config.epochs = 1000;
    cfg.polish_config.row_budget = 64_000;
    cfg.polish_config.stop = None;
    let (rep, _, _) = deep_net_run(&source, &cfg);
    let polish = (rep.stages.iter())
        .find(|s| s.stage == Stage::Polish)
        .unwrap();
    assert_eq!(
        polish.row_reads,
        (64_000 + left).div_ceil(32_000) * 32_000,
        "{}",
        rep.summary()
    );
}

/// The deep-net stage alone after the descent (no gate, no polish): `candidates` raced by
/// pilots of `pilot` row reads.
fn pilot_race_config(candidates: Vec<Vec<usize>>, pilot: u64) -> LearnConfig {
    LearnConfig {
        polish: false,
        deep_gate: None,
        deep_pilot_rows: pilot,
        deep_candidates: candidates,
        seed: 4,
        ..LearnConfig::default()
    }
}

/// With two candidate architectures the deep-net stage trains a pilot of the second, races the
/// first against it (the first's run going on as the stage unless the pilot is ahead), counts
/// every row read as its own, and says what the race found.
#[test]
fn the_deep_net_stage_chooses_its_widths_by_pilots() {
    let source = random_teacher_source(40_000);
    let pilot = 32_000;
    let cfg = pilot_race_config(vec![vec![8, 8], vec![8, 8, 8]], pilot);
    let (rep, deep, why) = deep_net_run(&source, &cfg);
    let chosen = ["[8, 8]", "[8, 8, 8]"]
        .into_iter()
        .find(|w| {
            why.contains(&format!(
                "hidden widths {w} chosen by a race of 32000 row reads"
            ))
        })
        .unwrap_or_else(|| panic!("{why}"));
    assert!(
        why.contains("[8, 8] ") && why.contains("[8, 8, 8] "),
        "{why}"
    );
    // A pilot and a whole stage (its first check is after one pass of 32000 rows).
    assert!(deep.row_reads >= 2 * pilot, "{}", deep.row_reads);
    if rep.final_stage == Stage::DeepNet {
        // The model: as many hidden layers as the widths chosen, and the output layer.
        let depth = chosen.matches(',').count() + 1;
        assert_eq!(rep.model.layers.len(), depth + 1, "{chosen}");
    }
    // Same seed, same choice.
    let again = learn(common::cpu(), &source, &cfg).unwrap();
    assert_eq!(again.deep_net_decision, rep.deep_net_decision);
}

/// A first candidate far behind the pilot of the second (one hidden unit against [8, 8]) stops
/// at the race and the second is trained from its start: the model has its widths, and the
/// stage reads the pilot's, the race's and its own row reads.
#[test]
fn the_first_deep_net_candidate_gives_way_to_a_pilot_that_is_ahead() {
    let source = random_teacher_source(40_000);
    let pilot = 32_000;
    let cfg = pilot_race_config(vec![vec![1], vec![8, 8]], pilot);
    let (rep, deep, why) = deep_net_run(&source, &cfg);
    assert!(
        why.contains("hidden widths [8, 8] chosen by a race of 32000 row reads"),
        "{why}"
    );
    assert_ne!(deep.stopped, Some(StopReason::Outpaced), "{why}");
    assert!(deep.row_reads >= 3 * pilot, "{}", deep.row_reads);
    if rep.final_stage == Stage::DeepNet {
        assert_eq!(rep.model.layers.len(), 3, "{why}");
    }
}

/// The deepen stage, on labels with noise (so the model stays above 1e-4 of Var(y)): when the
/// model has fewer hidden layers than the deepest candidate it polishes once more with one
/// more, and its result is the model only when it validates better; the report says what it
/// did either way. Without deep-net candidates, or without the polish, it is not asked for.
#[test]
fn the_deepen_stage_keeps_one_more_layer_only_when_it_validates_better() {
    let source = noisy_random_teacher_source(40_000, 0.2);
    let mut cfg = LearnConfig {
        deep_gate: None,
        deep_pilot_rows: 32_000,
        deep_candidates: vec![vec![8, 8], vec![8, 8, 8]],
        polish_config: PolishConfig {
            epochs: 4,
            ..LearnConfig::default().polish_config
        },
        seed: 4,
        ..LearnConfig::default()
    };
    let rep = learn(common::cpu(), &source, &cfg).unwrap();
    let why = rep.deepen_decision.clone().unwrap();
    let depth = rep.model.layers.len() - 1;
    assert!(rep.validation_mse > 1e-4 * rep.validation_var, "{why}");
    let d = rep
        .deepen_mse
        .unwrap_or_else(|| panic!("{}", rep.summary()));
    assert!(why.starts_with("ran: "), "{why}");
    let last = rep.stages.last().unwrap();
    assert_eq!(last.stage, Stage::Deepen);
    assert_eq!(last.validation_mse, Some(d.after));
    let before = if d.kept { depth - 1 } else { depth };
    assert!(
        why.contains(&format!("with {before} hidden layers")),
        "{why}"
    );
    if d.kept {
        assert!(d.after < d.before, "{why}");
        assert_eq!(rep.final_stage, Stage::Deepen);
        assert_eq!(rep.validation_mse, d.after);
    } else {
        assert_ne!(rep.final_stage, Stage::Deepen);
        assert!(rep.validation_mse <= d.after, "{why}");
    }
    assert!(rep.summary().contains(&format!("deepen stage: {why}")));
    assert_eq!(rep.to_json()["deepen_decision"], why.as_str());

    cfg.polish = false;
    let rep = learn(common::cpu(), &source, &cfg).unwrap();
    assert!(rep.deepen_decision.is_none() && rep.deepen_mse.is_none());
    assert!(rep.stages.iter().all(|s| s.stage != Stage::Deepen));
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
}

/// Through the command line: `--time-budget` ends `learn` in time and says so; a budget that is
/// not a positive number of seconds is refused by name before any work.
#[test]
fn the_time_budget_flag() {
    let dir = tempfile::tempdir().unwrap();
    let source = random_teacher_source(100_000);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    source.read(0, 100_000, &mut x, &mut y).unwrap();
    let (xp, yp) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    write_npy_f32(&xp, &[100_000, 16], &x).unwrap();
    write_npy_f32(&yp, &[100_000], &y).unwrap();
    let model = dir.path().join("model.json");
    let learn_with = |budget: &str| {
        bin()
            .args(["learn", "--backend", "cpu", "--quiet"])
            .arg(format!("--time-budget={budget}"))
            .arg("--x")
            .arg(&xp)
            .arg("--y")
            .arg(&yp)
            .arg("--out")
            .arg(&model)
            .output()
            .unwrap()
    };
    let t = Instant::now();
    let out = learn_with("1");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("time budget 1 s") && text.contains("not reproducible"),
        "{text}"
    );
    assert!(model.exists());
    std::fs::remove_file(&model).unwrap();
    for bad in ["0", "-2", "NaN", "inf"] {
        let out = learn_with(bad);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--time-budget"), "{bad}: {err}");
        assert!(!model.exists(), "{bad}");
    }
}

/// A trainer stage told a target ends at its first check at or below it, on the check rows;
/// a target no check reaches changes nothing.
#[test]
fn a_stage_ends_at_its_first_check_at_the_target() {
    with_a_free_stage(|free, run| {
        // Halfway between the start's error and the best the stage reaches.
        let first = free.curve.first().unwrap().best_mse;
        let last = free.curve.last().unwrap().best_mse;
        let target = 0.5 * (first + last);
        let limits = |target: f64| Limits {
            target: Some(target),
            ..Limits::default()
        };
        let out = run(&limits(target));
        assert_eq!(out.stop, StopReason::Target, "{out:?}");
        let at = out.curve.iter().position(|c| c.best_mse <= target).unwrap();
        assert_eq!(at + 1, out.curve.len(), "{out:?}");
        assert!(out.row_reads < free.row_reads, "{out:?}");
        // Until it stopped, the same checks as the stage without a target.
        let checks = |c: &[Check]| {
            c.iter()
                .map(|c| (c.row_reads, c.best_mse.to_bits()))
                .collect::<Vec<_>>()
        };
        assert_eq!(checks(&out.curve), checks(&free.curve[..out.curve.len()]));
        let unreached = run(&limits(0.5 * last));
        assert_eq!(unreached.stop, free.stop);
        assert_eq!(unreached.params, free.params);
    });
}

/// The noisy teacher's stage with a fresh output layer and 12 passes, trained without limits
/// (`free`), and a runner of the same stage within given limits, for `f`.
fn with_a_free_stage(f: impl FnOnce(&TrainOutcome, &dyn Fn(&Limits) -> TrainOutcome)) {
    let (small, basis, source) = noisy_teacher();
    let (train, val) = split(&source);
    let (shape, start) = fresh_start(&small, &basis);
    let cfg = PolishConfig {
        epochs: 12,
        ..config(true)
    };
    let free = run_on_cpu(&train, &val, &shape, &start, &cfg, &Limits::default());
    f(&free, &|limits| {
        run_on_cpu(&train, &val, &shape, &start, &cfg, limits)
    });
}

/// A stage told to catch up with another model's error ends at its first check at or below
/// it (the checks until then as without it), but not before a rival's race is due: the race
/// decides which network is the one caught up.
#[test]
fn a_stage_ends_when_it_catches_up_but_not_before_its_rival_race() {
    with_a_free_stage(|free, run| {
        let first = free.curve.first().unwrap().best_mse;
        let last = free.curve.last().unwrap().best_mse;
        // Reached at the first check.
        let caught = |rival: Option<Race>| Limits {
            caught_up: Some(first),
            rival,
            ..Limits::default()
        };
        let out = run(&caught(None));
        assert_eq!(out.stop, StopReason::CaughtUp, "{out:?}");
        assert_eq!(out.curve.len(), 1, "{out:?}");
        assert_eq!(out.row_reads, N_TRAIN as u64);
        assert_eq!(out.curve[0].best_mse.to_bits(), first.to_bits());
        // A rival race due at the third check (one no check loses): not before it.
        let rival = Race {
            at: 3 * N_TRAIN as u64,
            against: vec![Check {
                row_reads: N_TRAIN as u64,
                seconds: 0.0,
                validation_mse: 1e9,
                best_mse: 1e9,
            }],
            margin: 1.0,
        };
        let raced = run(&caught(Some(rival)));
        assert_eq!(raced.stop, StopReason::CaughtUp, "{raced:?}");
        assert_eq!(raced.row_reads, 3 * N_TRAIN as u64, "{raced:?}");
        assert_eq!(raced.curve.len(), 3);
        // A level no check reaches changes nothing.
        let unreached = run(&Limits {
            caught_up: Some(0.5 * last),
            ..Limits::default()
        });
        assert_eq!(unreached.stop, free.stop);
        assert_eq!(unreached.params, free.params);
    });
}

/// `learn` with a target error: the stages after the one whose model reached it do not run,
/// and the report says so; a target that is not reached leaves the run as it was.
#[test]
fn learn_stops_at_its_target_error() {
    let source = random_teacher_source(60_000);
    let run = |target: Option<f64>| {
        learn(
            common::cpu(),
            &source,
            &LearnConfig {
                target_error: target,
                seed: 3,
                ..LearnConfig::default()
            },
        )
        .unwrap()
    };
    let full = run(None);
    assert!(full.target_note.is_none());
    let var = full.validation_var;
    // The descent's error, which the polish lowers: a target just above it.
    let descent = full.descent_mse.expect("a descent").after / var;
    let polished = full.validation_mse / var;
    assert!(polished < 0.5 * descent, "{}", full.summary());
    let target = 1.2 * descent;
    let cut = run(Some(target));
    let names: Vec<Stage> = cut.stages.iter().map(|s| s.stage).collect();
    assert!(!names.contains(&Stage::Polish), "{}", cut.summary());
    assert!(!names.contains(&Stage::Deepen), "{}", cut.summary());
    assert!(cut.validation_mse / var <= target, "{}", cut.summary());
    let note = cut.target_note.clone().unwrap();
    assert!(note.contains("did not run"), "{note}");
    assert!(cut.summary().contains("target: "), "{}", cut.summary());
    assert_eq!(cut.to_json()["target_error"], target);
    // Far below what the data supports: every stage runs, as without a target.
    let unreached = run(Some(1e-12));
    assert!(unreached.target_note.unwrap().contains("not reached"));
    assert_eq!(unreached.model, full.model);
    for bad in [0.0, 1.0, -0.5, f64::NAN] {
        let options = relu_fpt::learn::LearnOptions {
            target_error: Some(bad),
            ..Default::default()
        };
        let err = options.check().unwrap_err().to_string();
        assert!(err.contains("target_error"), "{bad}: {err}");
    }
}

/// Through the command line: `--target-error` outside (0, 1), or with `--method paper`, is
/// refused by name before any work, with no output file.
#[test]
fn the_target_error_flag_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let learn_with = |extra: &[&str]| {
        bin()
            .args(["learn", "--backend", "cpu", "--quiet"])
            .args(["--teacher", "parity", "--d", "8", "--k", "2", "--n", "2000"])
            .args(extra)
            .arg("--out")
            .arg(&model)
            .output()
            .unwrap()
    };
    for bad in ["0", "1", "-0.5", "NaN"] {
        let out = learn_with(&[&format!("--target-error={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--target-error"), "{bad}: {err}");
        assert!(!model.exists(), "{bad}");
    }
    let out = learn_with(&["--target-error", "0.01", "--method", "paper"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("default method"), "{err}");
    assert!(!model.exists());
}
