//! MPI scale-out (`--features mpi`): P ranks give the single-process results.
//!
//! `cargo test --features mpi --test mpi` runs this binary as one process, which
//! 1. writes small sample files (one file, the same rows as three shards, a file with a NaN),
//! 2. starts itself under `mpirun --allow-run-as-root --oversubscribe -n 2`, where each rank runs
//!    the library-level cases below against the CPU backend computed locally on the same rank
//!    (moments, fit moments, sphere-net normal equations, validation errors, the trainer's
//!    minibatches, candidate statistics, whitening, filtered PCA with residual rounds, learn
//!    through the streaming trainer, shard lists, the GPU backend (lavapipe in CI), the ordered
//!    stream to rank 0, a bad file on one rank), and
//! 3. runs the `relu-fpt` command line with one process and under `mpirun -n 2` and compares.
//!
//! Tolerances, P ranks against one process (the output prints each measured difference):
//! - sums taken in f64 (moments of one bin, fit moments, sphere-net normal equations, validation
//!   errors, minibatch gradients, candidate statistics): the same terms grouped differently,
//!   ALIGNED_TOL = 1e-12 relative. Rank boundaries fall on multiples of 16384 rows, where the
//!   one-bin kernel's f32 chunks start too (d a power of two);
//! - sums containing f32 runs that a rank boundary regroups (moments of several bins, whose runs
//!   are per bin; one bin below P x 16384 rows): F32_TOL = 1e-5 relative;
//! - what is computed from them: whitening maps within WHITEN_TOL = 1e-10, bases within
//!   BASIS_TOL = 1e-5; learned models, which carry the several-bin moments' f32 differences
//!   through the basis and the trainer, predict within MODEL_TOL = 1e-5 with validation MSE
//!   within MSE_TOL = 1e-6 relative and parameters within PARAM_TOL = 1e-6.
//!
//! A harness-less test: every rank must run the same collective calls in the same order, and a
//! failed assertion must take the whole job down (the panic hook calls MPI_Abort).

use relu_fpt::backend::cpu::CpuBackend;
use relu_fpt::backend::gpu::GpuBackend;
use relu_fpt::backend::mpi;
use relu_fpt::backend::{
    Adam, Backend, CandidateBatch, CandidateStats, FactoredShape, ProjectedSamples, SphereFeatures,
};
use relu_fpt::data::{
    for_each_chunk, open_samples, write_npy_f32, GaussianSource, MemorySource, NpySource,
    SampleRange, SampleSource,
};
use relu_fpt::learn::{learn, train, LearnConfig, PolishConfig, Stage};
use relu_fpt::moments::{BinSpec, FilteredMoments, SampleWeight};
use relu_fpt::network::Network;
use relu_fpt::subspace::estimate_whitening;
use relu_fpt::subspace::{find_subspace, RoundKind, SubspaceConfig};
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
const F32_TOL: f64 = 1e-5;
/// Whitening maps (largest entry difference): eigenvectors of one-bin sums, f64 only.
const WHITEN_TOL: f64 = 1e-10;
/// Bases (largest entry difference): eigenvectors of several-bin sums, which carry F32_TOL
/// differences (divided by eigenvalue gaps of order one).
const BASIS_TOL: f64 = 1e-5;
/// Learned models, which carry the binned moments' f32 differences (F32_TOL) through the basis
/// and the trainer: predictions within MODEL_TOL (labels of size 1), validation MSE within
/// MSE_TOL relative, parameters within PARAM_TOL (the command line's model file).
const MODEL_TOL: f64 = 1e-5;
const MSE_TOL: f64 = 1e-6;
const PARAM_TOL: f64 = 1e-6;

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
    assert!(diff < BASIS_TOL, "subspace bases differ by {diff}");
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
    assert!(
        (va - vb).abs() <= MSE_TOL * va,
        "validation MSE {va} vs {vb}"
    );
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
    assert!(diff < PARAM_TOL, "learned parameters differ by {diff}");
    println!(
        "cli learn: parameters within {diff:.1e}, validation MSE {vb:.3e} (relative difference {:.1e})",
        (va - vb).abs() / va
    );

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

    // Moments. One bin (the whitening statistics' pass): rank ranges aligned to the kernel's
    // f32 chunks, so only f64 additions regroup (ALIGNED_TOL); fewer rows than P x 16384 cut a
    // chunk (F32_TOL). Several bins (the filtered-PCA rounds): each bin's rows are summed in
    // f32 runs that a rank boundary regroups whatever the alignment (F32_TOL).
    let bar = indicatif::ProgressBar::hidden();
    let label_bins = BinSpec::label_bins(D, vec![-1.0, -0.3, 0.0, 0.2, 0.9]);
    for (rows, spec, tol) in [
        (N, BinSpec::single(D), ALIGNED_TOL),
        (5_000, BinSpec::single(D), F32_TOL),
        (N, label_bins.clone(), F32_TOL),
        (5_000, label_bins, F32_TOL),
    ] {
        let s = source(rows);
        for weight in [SampleWeight::Unit, SampleWeight::Label] {
            let one = cpu.moments(&s, &spec, weight, &bar).unwrap();
            let all = split.moments(&s, &spec, weight, &bar).unwrap();
            assert_eq!(one.count, all.count);
            let diff = all.relative_difference(&one);
            assert!(
                diff < tol,
                "moments, N = {rows}, K = {}: relative difference {diff}",
                spec.bins()
            );
            say(format!(
                "moments N = {rows}, K = {} {weight:?}: within {diff:.1e}",
                spec.bins()
            ));
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

    // Host-side sums (label variance, the spare rows' paired test).
    let mut label_sums = |rows: &dyn SampleSource| -> relu_fpt::Result<Vec<f64>> {
        let mut t = vec![0.0; 3];
        for_each_chunk(rows, 4096, |_, _, y| {
            for &v in y {
                t[0] += 1.0;
                t[1] += v as f64;
                t[2] += (v as f64).powi(2);
            }
            Ok(())
        })?;
        Ok(t)
    };
    let one = cpu.row_sums(&s, 3, &mut label_sums).unwrap();
    let all = split.row_sums(&s, 3, &mut label_sums).unwrap();
    let diff = rel(&all, &one);
    assert!(
        diff < ALIGNED_TOL && all[0] == N as f64,
        "row sums: {one:?} vs {all:?}"
    );
    say(format!("row sums: within {diff:.1e}"));

    // The trainer's minibatches: rows split, gradients combined, the same Adam steps. The last
    // minibatch has one row, so one rank contributes nothing to it.
    let shape = FactoredShape::of(&fit, D).unwrap();
    let start = shape.pack(&fit, &basis).unwrap();
    let (wx, wy) = read_all(&source(12 * 256 + 1));
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

    // The streaming trainer: windows of one 4096-row block, shuffled, 2 epochs, each scored on
    // the validation rows.
    let (train_rows, val_rows) = (
        SampleRange::new(&s, 0, 40_000).unwrap(),
        SampleRange::new(&s, 40_000, N - 40_000).unwrap(),
    );
    let tc = PolishConfig {
        epochs: 2,
        window_bytes: 4096 * 4 * D,
        seed: 9,
        ..Default::default()
    };
    let one = train(&cpu, &train_rows, &val_rows, &shape, &start, true, &tc).unwrap();
    let all = train(
        split.as_ref(),
        &train_rows,
        &val_rows,
        &shape,
        &start,
        true,
        &tc,
    )
    .unwrap();
    assert_eq!((one.steps, one.epochs), (all.steps, all.epochs));
    let diff = rel(&all.params, &one.params).max((all.after - one.after).abs() / one.after);
    assert!(diff < ALIGNED_TOL, "streaming trainer: {diff}");
    say(format!(
        "streaming trainer ({} steps): parameters and validation MSE within {diff:.1e}",
        all.steps
    ));

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

    // Whitening statistics (one K = 1 pass) on anisotropic, shifted inputs: x_i scaled by
    // 2^(-1 .. 1) and moved by 1 - i / 10, labels unchanged.
    let (x, y) = read_all(&source(N));
    let aniso = MemorySource {
        dim: D,
        x: x.chunks_exact(D)
            .flat_map(|row| {
                row.iter().enumerate().map(|(i, &v)| {
                    let scale = (2.0f32).powf(2.0 * i as f32 / (D - 1) as f32 - 1.0);
                    v * scale + 1.0 - 0.1 * i as f32
                })
            })
            .collect(),
        y,
    };
    let (w1, w2) = (
        estimate_whitening(&cpu, &aniso).unwrap(),
        estimate_whitening(split.as_ref(), &aniso).unwrap(),
    );
    let (m1, m2) = (w1.map.as_ref().unwrap(), w2.map.as_ref().unwrap());
    let diff = max_abs(&w1.mean, &w2.mean).max(max_abs(&m1.concat(), &m2.concat()));
    assert!(
        diff < WHITEN_TOL,
        "whitening: mean and map differ by {diff}"
    );
    say(format!("whitening: mean and map within {diff:.1e}"));

    // Filtered PCA (whitening, label and residual rounds, refine steps).
    let config = SubspaceConfig {
        refine_steps: 2,
        ..SubspaceConfig::default()
    };
    let one = find_subspace(&cpu, &s, &config).unwrap();
    let all = find_subspace(split.as_ref(), &s, &config).unwrap();
    assert_eq!(one.basis.len(), all.basis.len());
    assert_eq!(one.rounds.len(), all.rounds.len());
    assert!(
        all.rounds.iter().any(|r| r.kind == RoundKind::Residual),
        "a residual round ran"
    );
    let diff = max_abs(&one.basis.concat(), &all.basis.concat());
    assert!(diff < BASIS_TOL, "subspace basis: {diff}");
    say(format!(
        "subspace ({} rounds): basis within {diff:.1e}",
        all.rounds.len()
    ));

    // learn on the anisotropic inputs: the whitened pipeline, the streaming trainer (descent
    // and polish, minibatches split), the spare rows' paired test.
    let lc = LearnConfig {
        search_config: relu_fpt::search::SearchConfig {
            budget: 48,
            ..LearnConfig::default().search_config
        },
        seed: 5,
        descent_config: PolishConfig {
            epochs: 3,
            ..Default::default()
        },
        polish_config: PolishConfig {
            epochs: 2,
            ..Default::default()
        },
        // Few passes of the deep net too: thousands of Adam steps would amplify the f32
        // regrouping of the binned moments (about 1e-7) like any change of summation order.
        deep_config: PolishConfig {
            epochs: 3,
            row_budget: 0,
            ..LearnConfig::default().deep_config
        },
        ..LearnConfig::default()
    };
    let one = learn(&cpu, &aniso, &lc).unwrap();
    let all = learn(split.as_ref(), &aniso, &lc).unwrap();
    let whitening = all.subspace.as_ref().unwrap().whitening.as_ref().unwrap();
    assert!(whitening.map.is_some(), "{}", whitening.summary());
    for stage in [Stage::Descent, Stage::Polish] {
        let st = all.stages.iter().find(|s| s.stage == stage).unwrap();
        assert!(st.row_reads > 0, "the {stage} stage trained");
    }
    assert_eq!(
        (one.final_stage.as_str(), one.stages.len()),
        (all.final_stage.as_str(), all.stages.len())
    );
    let diff = (one.validation_mse - all.validation_mse).abs() / one.validation_mse;
    assert!(diff < MSE_TOL, "learn validation MSE: relative {diff}");
    let probe: Vec<f32> = aniso.x[..500 * D].to_vec();
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
        (pdiff as f64) < MODEL_TOL,
        "learned models predict differently by {pdiff}"
    );
    say(format!(
        "learn (final stage {}): validation MSE within {diff:.1e}, predictions within {pdiff:.1e}",
        all.final_stage
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
    let diff = a.relative_difference(&one);
    assert!(diff < F32_TOL, "shard list against one process: {diff}");
    say(format!(
        "shards: the same sums as the one file, bit for bit; within {diff:.1e} of one process"
    ));

    // The GPU backend under MPI (lavapipe in CI): each rank opens its own device, and the split
    // passes give the sums of one device over all rows.
    let gpu = GpuBackend::new(true).unwrap_or_else(|e| {
        panic!("the GPU case needs an adapter (install mesa-vulkan-drivers for lavapipe): {e}")
    });
    let spec = BinSpec::label_bins(D, vec![-0.5, 0.0, 0.5]);
    let one = gpu.moments(&s, &spec, SampleWeight::Unit, &bar).unwrap();
    let one_fit = gpu.fit_moments(&s, &basis, &fit, &bar).unwrap();
    let mut one_params = start.clone();
    let mut adam = Adam::new(start.len(), 0.01, 12);
    gpu.train_window(&shape, true, &wx, &wy, 256, &mut one_params, &mut adam)
        .unwrap();
    let split_gpu = mpi::distribute(Box::new(gpu));
    let all = split_gpu
        .moments(&s, &spec, SampleWeight::Unit, &bar)
        .unwrap();
    let all_fit = split_gpu.fit_moments(&s, &basis, &fit, &bar).unwrap();
    assert_eq!(one.count, all.count);
    let diff = all
        .relative_difference(&one)
        .max(rel(&all_fit.gram, &one_fit.gram).max(rel(&all_fit.cross, &one_fit.cross)));
    assert!(diff < F32_TOL, "GPU moments and fit moments: {diff}");
    let mut all_params = start.clone();
    let mut adam = Adam::new(start.len(), 0.01, 12);
    split_gpu
        .train_window(&shape, true, &wx, &wy, 256, &mut all_params, &mut adam)
        .unwrap();
    let train_diff = rel(&all_params, &one_params);
    assert!(train_diff < F32_TOL, "GPU train window: {train_diff}");
    say(format!(
        "GPU ({}): moments and fit moments within {diff:.1e}, train window within {train_diff:.1e}",
        split_gpu.description()
    ));

    // A basis past the GPU fit kernel's rank 8 (refine steps of a 12-direction subspace): the
    // GPU backend sums it with the CPU pass over this rank's rows only (the refine steps once
    // built a bare CPU backend for it, and every rank read every row).
    struct RowCounter<'a>(&'a dyn SampleSource, std::sync::atomic::AtomicU64);
    impl SampleSource for RowCounter<'_> {
        fn dim(&self) -> usize {
            self.0.dim()
        }
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read(
            &self,
            start: u64,
            rows: usize,
            x: &mut Vec<f32>,
            y: &mut Vec<f32>,
        ) -> Result<usize, Error> {
            let n = self.0.read(start, rows, x, y)?;
            self.1
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
        fn describe(&self) -> String {
            "rows counted".into()
        }
    }
    let wide: Vec<Vec<f64>> = (0..12)
        .map(|j| (0..D).map(|i| f64::from(u8::from(i == j))).collect())
        .collect();
    let wide_fit = teacher(12, 13);
    let counted = RowCounter(&s, Default::default());
    let all = split_gpu
        .fit_moments(&counted, &wide, &wide_fit, &bar)
        .unwrap();
    let one = cpu.fit_moments(&s, &wide, &wide_fit, &bar).unwrap();
    let read = counted.1.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(all.rows, one.rows);
    let diff = rel(&all.cross, &one.cross).max(rel(&all.gram, &one.gram));
    assert!(diff < ALIGNED_TOL, "rank-12 fit moments: {diff}");
    assert!(
        read <= N / 2 + 16_384 && read + 16_384 >= N / 2,
        "rank {} read {read} of {N} rows",
        mpi::rank()
    );
    say(format!(
        "GPU rank-12 fit moments: within {diff:.1e}, each rank read its half ({read} rows here)"
    ));

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

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max)
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
