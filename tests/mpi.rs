//! MPI scale-out (`--features mpi`): P ranks give the single-process results.
//!
//! `cargo test --features mpi --test mpi` runs this binary as one process, which
//! 1. writes small sample files (one file, the same rows as three shards, a file with a NaN),
//! 2. starts itself under `mpirun --allow-run-as-root --oversubscribe -n 2`, where each rank runs
//!    the library-level cases below against the CPU backend computed locally on the same rank
//!    (moments, fit moments, sphere-net normal equations, validation errors, the trainer's
//!    minibatches, candidate statistics, filtered PCA, learn, shard lists, the ordered stream to rank 0, a bad file on
//!    one rank), and
//! 3. runs the `relu-fpt` command line with one process and under `mpirun -n 2` and compares.
//!
//! Tolerance: rank boundaries fall on multiples of 16384 rows, where the CPU kernels' f32 chunk
//! sums start too (d a power of two), so only the grouping of f64 additions differs: 1e-12
//! relative. Below P x 16384 rows the ranks split evenly and cut f32 chunks: 1e-5 relative.
//! A harness-less test: every rank must run the same collective calls in the same order, and a
//! failed assertion must take the whole job down (the panic hook calls MPI_Abort).

use relu_fpt::backend::cpu::CpuBackend;
use relu_fpt::backend::mpi;
use relu_fpt::backend::{
    Adam, Backend, CandidateBatch, CandidateStats, FactoredShape, ProjectedSamples, SphereFeatures,
};
use relu_fpt::data::{
    for_each_chunk, open_samples, write_npy_f32, GaussianSource, NpySource, SampleSource,
};
use relu_fpt::learn::{learn, LearnConfig, PolishConfig};
use relu_fpt::moments::{BinSpec, FilteredMoments, SampleWeight};
use relu_fpt::network::Network;
use relu_fpt::subspace::{find_subspace, SubspaceConfig};
use relu_fpt::teacher::{build, TeacherKind, TeacherSpec};
use relu_fpt::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DIR_VAR: &str = "RELU_FPT_MPI_TEST_DIR";
/// Rows of the main data set: three aligned granules plus a tail.
const N: u64 = 3 * 16384 + 1000;
const D: usize = 16;
/// Rows of the file with a NaN, and the NaN's row (in rank 1's half).
const BAD_N: u64 = 40_000;
const BAD_ROW: u64 = 30_000;
const ALIGNED_TOL: f64 = 1e-12;
const UNALIGNED_TOL: f64 = 1e-5;

fn main() {
    if std::env::var_os(DIR_VAR).is_some() {
        rank_cases();
    } else {
        launcher();
    }
}

fn teacher(dim: usize, seed: u64) -> Network {
    let spec = TeacherSpec {
        k: Some(2),
        seed,
        ..TeacherSpec::new(TeacherKind::Random, dim)
    };
    build(&spec).unwrap().network
}

fn source(rows: u64) -> GaussianSource {
    GaussianSource::new(teacher(D, 3), rows, 3, 0.05).unwrap()
}

fn read_all(s: &dyn SampleSource) -> (Vec<f32>, Vec<f32>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for_each_chunk(s, 1 << 16, |_, xs, ys| {
        x.extend_from_slice(xs);
        y.extend_from_slice(ys);
        Ok(())
    })
    .unwrap();
    (x, y)
}

// ---------------------------------------------------------------------------------------------
// The launcher: files, the MPI run, the command line.

fn mpirun(args: &[&str], program: &Path, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-n", "2"])
        .arg(program)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| {
        panic!("mpirun could not be started ({e}): install openmpi-bin and libopenmpi-dev")
    })
}

fn one_process(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write_files(dir: &Path) {
    let (x, y) = read_all(&source(N));
    let n = N as usize;
    write_npy_f32(&dir.join("x.npy"), &[n, D], &x).unwrap();
    write_npy_f32(&dir.join("y.npy"), &[n], &y).unwrap();
    // The same rows as three shards of unequal size, boundaries off every alignment.
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    let cuts = [0, 7_777, 30_001, n];
    for (i, w) in cuts.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        let xs = &x[a * D..b * D];
        write_npy_f32(&dir.join(format!("shards/x_{i}.npy")), &[b - a, D], xs).unwrap();
        write_npy_f32(&dir.join(format!("shards/y_{i}.npy")), &[b - a], &y[a..b]).unwrap();
    }
    let (mut x, y) = read_all(&source(BAD_N));
    x[BAD_ROW as usize * D + 3] = f32::NAN;
    write_npy_f32(&dir.join("x_bad.npy"), &[BAD_N as usize, D], &x).unwrap();
    write_npy_f32(&dir.join("y_bad.npy"), &[BAD_N as usize], &y).unwrap();
}

fn launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_files(dir);
    let me = std::env::current_exe().unwrap();
    let o = mpirun(&[], &me, &[(DIR_VAR, dir)]);
    let out = ok(&o, "the rank-level cases under mpirun -n 2");
    print!("{out}");
    cli_cases(dir);
    println!("mpi: all cases passed");
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

fn json_of(text: &str) -> serde_json::Value {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line (from rank 0 only): {text}");
    serde_json::from_str(lines[0]).unwrap()
}

fn max_diff(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    match (a, b) {
        (serde_json::Value::Array(p), serde_json::Value::Array(q)) => {
            assert_eq!(p.len(), q.len());
            p.iter()
                .zip(q)
                .map(|(u, v)| max_diff(u, v))
                .fold(0.0, f64::max)
        }
        _ => (a.as_f64().unwrap() - b.as_f64().unwrap()).abs(),
    }
}

fn cli_cases(dir: &Path) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_relu-fpt"));
    let (x, y) = (path(dir, "x.npy"), path(dir, "y.npy"));
    let (xs, ys) = (path(dir, "shards/x_*.npy"), path(dir, "shards/y_*.npy"));

    // subspace: one process against two ranks on the shard list.
    let s1 = path(dir, "s1.json");
    let s2 = path(dir, "s2.json");
    let common = ["--backend", "cpu", "--json", "--refine-steps", "2"];
    let a = json_of(&ok(
        &one_process(
            &[
                &["subspace", "--x", &x, "--y", &y, "--out", &s1],
                &common[..],
            ]
            .concat(),
        ),
        "subspace, one process",
    ));
    let b = json_of(&ok(
        &mpirun(
            &[
                &["subspace", "--x", &xs, "--y", &ys, "--out", &s2],
                &common[..],
            ]
            .concat(),
            &bin,
            &[],
        ),
        "subspace, two ranks",
    ));
    assert_eq!(
        (a["ranks"].as_u64(), b["ranks"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(b["communication"]["combines"].as_u64().unwrap() > 0);
    let diff = max_diff(&a["basis"], &b["basis"]);
    assert!(diff < 1e-10, "subspace bases differ by {diff}");
    println!("cli subspace: basis within {diff:.1e} of one process");

    // learn: the model equals the single-process model.
    let m1 = path(dir, "m1.json");
    let m2 = path(dir, "m2.json");
    let small = [
        "--backend",
        "cpu",
        "--json",
        "--budget",
        "48",
        "--descent-epochs",
        "3",
        "--polish-epochs",
        "2",
        "--refine-steps",
        "1",
    ];
    let a = json_of(&ok(
        &one_process(&[&["learn", "--x", &x, "--y", &y, "--out", &m1], &small[..]].concat()),
        "learn, one process",
    ));
    let b = json_of(&ok(
        &mpirun(
            &[&["learn", "--x", &x, "--y", &y, "--out", &m2], &small[..]].concat(),
            &bin,
            &[],
        ),
        "learn, two ranks",
    ));
    let (va, vb) = (
        a["validation_mse"].as_f64().unwrap(),
        b["validation_mse"].as_f64().unwrap(),
    );
    assert!((va - vb).abs() <= 1e-9 * va, "validation MSE {va} vs {vb}");
    let (ma, mb) = (
        Network::load(Path::new(&m1)).unwrap(),
        Network::load(Path::new(&m2)).unwrap(),
    );
    let flat = |m: &Network| -> Vec<f64> {
        let mut v: Vec<f64> = m.projection.iter().flatten().flatten().copied().collect();
        for l in &m.layers {
            v.extend(&l.weights);
            v.extend(&l.bias);
        }
        v
    };
    let (pa, pb) = (flat(&ma), flat(&mb));
    assert_eq!(pa.len(), pb.len());
    let diff = pa
        .iter()
        .zip(&pb)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-9, "learned parameters differ by {diff}");
    println!("cli learn: parameters within {diff:.1e}, validation MSE {vb:.3e}");

    // predict: the same bytes; eval: the same numbers (rank 0 sums in row order).
    let p1 = path(dir, "p1.npy");
    let p2 = path(dir, "p2.npy");
    ok(
        &one_process(&[
            "predict",
            "--model",
            &m1,
            "--x",
            &x,
            "--out",
            &p1,
            "--backend",
            "cpu",
        ]),
        "predict, one process",
    );
    let said = ok(
        &mpirun(
            &[
                "predict",
                "--model",
                &m1,
                "--x",
                &xs,
                "--out",
                &p2,
                "--backend",
                "cpu",
            ],
            &bin,
            &[],
        ),
        "predict, two ranks",
    );
    assert_eq!(said.lines().count(), 1, "one summary line: {said}");
    assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
    let eval = [
        "eval",
        "--model",
        &m1,
        "--x",
        &x,
        "--y",
        &y,
        "--json",
        "--backend",
        "cpu",
    ];
    let a = json_of(&ok(&one_process(&eval), "eval, one process"));
    let b = json_of(&ok(&mpirun(&eval, &bin, &[]), "eval, two ranks"));
    assert_eq!(a["mse"], b["mse"]);
    assert_eq!(a["n"], b["n"]);
    println!("cli predict and eval: identical to one process");

    // A NaN only rank 1 reads (past the 100 000-row pilot every rank reads) stops both ranks.
    let big = 140_000u64;
    let (mut xb, yb) = read_all(&source(big));
    xb[120_000 * D + 5] = f32::NAN;
    let xbad = dir.join("x_nan.npy");
    write_npy_f32(&xbad, &[big as usize, D], &xb).unwrap();
    write_npy_f32(&dir.join("y_nan.npy"), &[big as usize], &yb).unwrap();
    let out = path(dir, "never.json");
    let o = mpirun(
        &[
            "subspace",
            "--x",
            &xbad.to_string_lossy(),
            "--y",
            &path(dir, "y_nan.npy"),
            "--out",
            &out,
            "--backend",
            "cpu",
        ],
        &bin,
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "exit code 2 for bad input: {err}");
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("relu-fpt")).collect();
    assert_eq!(ours.len(), 1, "one error line, from rank 0: {err}");
    assert!(
        ours[0].contains("rank 1 of 2")
            && ours[0].contains("x_nan.npy")
            && ours[0].contains("row 120000"),
        "{}",
        ours[0]
    );
    assert!(!Path::new(&out).exists(), "no output after a failure");
    assert!(!err.contains("panicked"), "{err}");
    println!("cli bad file on rank 1: {}", ours[0]);
}

// ---------------------------------------------------------------------------------------------
// Under mpirun: every rank runs these in the same order.

fn rank_cases() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("rank {}: {info}", mpi::rank());
        mpi::abort_job_after_panic();
    }));
    let _launch = mpi::Launch::start().unwrap();
    assert_eq!(mpi::ranks(), 2, "run under mpirun -n 2");
    let dir = PathBuf::from(std::env::var_os(DIR_VAR).unwrap());
    let cpu = CpuBackend::new();
    let split = mpi::distribute(Box::new(CpuBackend::new()));
    let say = |s: String| {
        if mpi::is_root() {
            println!("{s}");
        }
    };

    // Moments: aligned (N >= 2 x 16384) and unaligned ranges, two weights, label bins.
    let bar = indicatif::ProgressBar::hidden();
    for (rows, tol) in [(N, ALIGNED_TOL), (5_000, UNALIGNED_TOL)] {
        let s = source(rows);
        let spec = BinSpec::label_bins(D, vec![-1.0, -0.3, 0.0, 0.2, 0.9]);
        for weight in [SampleWeight::Unit, SampleWeight::Label] {
            let one = cpu.moments(&s, &spec, weight, &bar).unwrap();
            let all = split.moments(&s, &spec, weight, &bar).unwrap();
            assert_eq!(one.count, all.count);
            let diff = all.relative_difference(&one);
            assert!(
                diff < tol,
                "moments, N = {rows}: relative difference {diff}"
            );
            say(format!("moments N = {rows} {weight:?}: within {diff:.1e}"));
        }
    }

    // Fit moments on the teacher's span with a small fit.
    let s = source(N);
    let basis = teacher(D, 3).first_layer_span();
    let fit = teacher(basis.len(), 11);
    let one = cpu.fit_moments(&s, &basis, &fit, &bar).unwrap();
    let all = split.fit_moments(&s, &basis, &fit, &bar).unwrap();
    assert_eq!(one.rows, all.rows);
    let diff = rel(&all.cross, &one.cross)
        .max(rel(&all.gram, &one.gram))
        .max(rel(&[all.sse], &[one.sse]));
    assert!(diff < ALIGNED_TOL, "fit moments: {diff}");
    say(format!("fit moments: within {diff:.1e}"));

    // The trainer's sums: sphere-net normal equations and validation errors.
    let features = SphereFeatures {
        basis: basis.iter().flatten().copied().collect(),
        rank: basis.len(),
        directions: vec![1.0, 0.0, 0.6, 0.8, -0.8, 0.6],
        thresholds: vec![-0.5, 0.0, 0.7],
    };
    let one = cpu.feature_normal_equations(&s, &features, &bar).unwrap();
    let all = split.feature_normal_equations(&s, &features, &bar).unwrap();
    assert_eq!(one.rows, all.rows);
    let diff = rel(&all.gram, &one.gram).max(rel(&all.rhs, &one.rhs));
    assert!(diff < ALIGNED_TOL, "normal equations: {diff}");
    let net = teacher(D, 4);
    let nets = [&net, &fit.lift(&basis).unwrap()];
    let (one, all) = (cpu.sse(&nets, &s).unwrap(), split.sse(&nets, &s).unwrap());
    let sse_diff = rel(&all, &one);
    assert!(
        sse_diff < ALIGNED_TOL,
        "validation errors: {one:?} vs {all:?}"
    );
    say(format!(
        "normal equations: within {diff:.1e}; validation errors: within {sse_diff:.1e}"
    ));

    // The trainer's minibatches: rows split, gradients combined, the same Adam steps.
    let shape = FactoredShape::of(&fit, D).unwrap();
    let start = shape.pack(&fit, &basis).unwrap();
    let (wx, wy) = read_all(&source(3000));
    for train_basis in [true, false] {
        let (mut p1, mut p2) = (start.clone(), start.clone());
        let (mut a1, mut a2) = (Adam::new(p1.len(), 0.01, 12), Adam::new(p2.len(), 0.01, 12));
        cpu.train_window(&shape, train_basis, &wx, &wy, 256, &mut p1, &mut a1)
            .unwrap();
        split
            .train_window(&shape, train_basis, &wx, &wy, 256, &mut p2, &mut a2)
            .unwrap();
        assert_eq!(a1.steps(), a2.steps());
        let diff = rel(&p2, &p1);
        assert!(
            diff < ALIGNED_TOL,
            "train window (basis {train_basis}): {diff}"
        );
        say(format!(
            "train window (basis trained: {train_basis}): within {diff:.1e}"
        ));
    }

    // Candidate statistics over projected samples (rows split, candidates whole).
    let (x, y) = read_all(&source(20_001));
    let r = basis.len();
    let z: Vec<f32> = x
        .chunks_exact(D)
        .flat_map(|row| {
            basis
                .iter()
                .map(move |b| b.iter().zip(row).map(|(p, &q)| p * q as f64).sum::<f64>() as f32)
        })
        .collect();
    let samples = ProjectedSamples { rank: r, z, y };
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut batch = CandidateBatch {
        inputs: r,
        hidden: vec![4],
        params: Vec::new(),
    };
    batch.params = (0..37 * batch.params_per_candidate())
        .map(|_| next())
        .collect();
    let one = cpu.evaluate_candidates(&samples, &batch).unwrap();
    let all = split.evaluate_candidates(&samples, &batch).unwrap();
    let diff = stats_diff(&all, &one);
    assert!(diff < ALIGNED_TOL, "candidate statistics: {diff}");
    say(format!("candidate statistics: within {diff:.1e}"));

    // Filtered PCA and the whole pipeline.
    let config = SubspaceConfig {
        refine_steps: 2,
        ..SubspaceConfig::default()
    };
    let one = find_subspace(&cpu, &s, &config).unwrap();
    let all = find_subspace(split.as_ref(), &s, &config).unwrap();
    assert_eq!(one.basis.len(), all.basis.len());
    let diff = one
        .basis
        .iter()
        .flatten()
        .zip(all.basis.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-10, "subspace basis: {diff}");
    say(format!("subspace: basis within {diff:.1e}"));

    let lc = LearnConfig {
        budget: 48,
        seed: 5,
        descent_config: PolishConfig {
            epochs: 3,
            ..Default::default()
        },
        polish_config: PolishConfig {
            epochs: 2,
            ..Default::default()
        },
        ..LearnConfig::default()
    };
    let one = learn(&cpu, &s, &lc).unwrap();
    let all = learn(split.as_ref(), &s, &lc).unwrap();
    let diff = (one.validation_mse - all.validation_mse).abs() / one.validation_mse;
    assert!(diff < 1e-9, "learn validation MSE: relative {diff}");
    let probe: Vec<f32> = read_all(&source(500)).0;
    let (pa, pb) = (
        one.model.forward_f32(&probe, 500),
        all.model.forward_f32(&probe, 500),
    );
    let pdiff = pa
        .iter()
        .zip(&pb)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        pdiff < 1e-5,
        "learned models predict differently by {pdiff}"
    );
    say(format!(
        "learn: validation MSE within {diff:.1e}, predictions within {pdiff:.1e}"
    ));

    // Shard list against the one file: same rows, so the split passes give the same bits.
    let whole = NpySource::open(&dir.join("x.npy"), &dir.join("y.npy")).unwrap();
    let shards = open_samples(&dir.join("shards/x_*.npy"), &dir.join("shards/y_*.npy")).unwrap();
    assert_eq!(shards.len(), N);
    let spec = BinSpec::label_bins(D, vec![-0.5, 0.0, 0.5]);
    let a = split
        .moments(&whole, &spec, SampleWeight::Unit, &bar)
        .unwrap();
    let b = split
        .moments(shards.as_ref(), &spec, SampleWeight::Unit, &bar)
        .unwrap();
    assert_eq!(a, b, "shard list and one file");
    let one: FilteredMoments = cpu
        .moments(&whole, &spec, SampleWeight::Unit, &bar)
        .unwrap();
    assert!(a.relative_difference(&one) < ALIGNED_TOL);
    say("shards: the same sums as the one file, bit for bit".to_string());

    // The ordered stream: rank 0 sees every row's value once, in order.
    let net = teacher(D, 3);
    let mut got = Vec::new();
    mpi::stream_to_root(
        &whole,
        4096,
        true,
        |x, rows| Ok(net.forward_f32(x, rows)),
        |p, y| {
            assert_eq!(p.len(), y.len());
            got.extend_from_slice(p);
            Ok(())
        },
    )
    .unwrap();
    if mpi::is_root() {
        let (x, _) = read_all(&whole);
        assert_eq!(got, net.forward_f32(&x, N as usize));
    } else {
        assert!(got.is_empty());
    }
    say("stream to rank 0: every prediction once, in row order".to_string());

    // A bad file only rank 1 reads: both ranks stop, with rank 1's message.
    let bad = NpySource::open(&dir.join("x_bad.npy"), &dir.join("y_bad.npy")).unwrap();
    let e = split
        .moments(&bad, &BinSpec::single(D), SampleWeight::Unit, &bar)
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("x_bad.npy") && text.contains(&format!("row {BAD_ROW}")),
        "{text}"
    );
    assert_eq!(e.exit_code(), 2);
    if mpi::rank() == 1 {
        assert!(matches!(e, Error::Data(_)), "rank 1's own error: {e:?}");
    } else {
        assert!(
            matches!(
                e,
                Error::Rank {
                    rank: 1,
                    ranks: 2,
                    ..
                }
            ),
            "rank 0 reports rank 1's failure: {e:?}"
        );
    }
    say(format!("bad file on rank 1: {text}"));
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
    let den: f64 = b.iter().map(|q| q * q).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn stats_diff(a: &CandidateStats, b: &CandidateStats) -> f64 {
    assert_eq!(a.feature_dim, b.feature_dim);
    rel(&a.sse, &b.sse)
        .max(rel(&a.gram, &b.gram))
        .max(rel(&a.feature_y, &b.feature_y))
}
