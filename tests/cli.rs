//! The command line end to end: files numpy can read, one-line errors with exit code 2 and no
//! output left behind, and learn -> predict -> eval through the JSON model file.

use relu_fpt::data::{write_npy_f32, NpySource, SampleSource};
use std::path::Path;
use std::process::{Command, Output};

fn relu_fpt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(o));
    let err = stderr(o);
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
}

#[test]
fn generate_writes_npy_files_and_teacher_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let o = relu_fpt(&[
        "generate",
        "--teacher",
        "parity",
        "--d",
        "16",
        "--k",
        "4",
        "--n",
        "3000",
        "--seed",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let source = NpySource::open(&out.join("x.npy"), &out.join("y.npy")).unwrap();
    assert_eq!((source.len(), source.dim()), (3000, 16));
    let teacher = relu_fpt::network::Network::load(&out.join("teacher.json")).unwrap();
    assert_eq!(teacher.input_dim, 16);
    // The labels are the teacher's outputs.
    let (mut x, mut y) = (Vec::new(), Vec::new());
    source.read(0, 100, &mut x, &mut y).unwrap();
    let want = teacher.forward_f32(&x, 100);
    assert_eq!(y, want);
    // Same seed, same bytes.
    let again = dir.path().join("again");
    relu_fpt(&[
        "generate",
        "--teacher",
        "parity",
        "--d",
        "16",
        "--k",
        "4",
        "--n",
        "3000",
        "--seed",
        "1",
        "--out",
        again.to_str().unwrap(),
    ]);
    for f in ["x.npy", "y.npy", "teacher.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn bad_teacher_parameters_fail_cleanly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let o = relu_fpt(&[
        "generate",
        "--teacher",
        "parity",
        "--d",
        "16",
        "--k",
        "3",
        "--n",
        "10",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "--k");
    assert!(!out.join("x.npy").exists());
    let o = relu_fpt(&[
        "generate",
        "--teacher",
        "fan",
        "--d",
        "8",
        "--m",
        "5",
        "--n",
        "10",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "--m");
}

#[test]
fn bad_input_files_name_the_file_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    let y = dir.path().join("y.npy");
    write_npy_f32(&x, &[10, 3], &[0.5; 30]).unwrap();
    write_npy_f32(&y, &[9], &[0.0; 9]).unwrap();
    let model = dir.path().join("model.json");
    let args = [
        "learn",
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        model.to_str().unwrap(),
    ];
    let o = relu_fpt(&args);
    assert_clean_failure(&o, "x.npy");
    assert!(!model.exists());
    // NaN in x: named by row, no output.
    let mut vals = vec![0.5f32; 30];
    vals[7] = f32::NAN;
    write_npy_f32(&x, &[10, 3], &vals).unwrap();
    write_npy_f32(&y, &[10], &[0.0; 10]).unwrap();
    let out = dir.path().join("s.json");
    let o = relu_fpt(&[
        "subspace",
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "row 2");
    assert!(!out.exists());
    // Not an npy file at all.
    std::fs::write(&x, b"hello").unwrap();
    let o = relu_fpt(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    // A model file that is not JSON.
    std::fs::write(&model, b"{ not json").unwrap();
    write_npy_f32(&x, &[10, 3], &[0.5; 30]).unwrap();
    let pred = dir.path().join("pred.npy");
    let o = relu_fpt(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        pred.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "model.json");
    assert!(!pred.exists());
}

fn generate(dir: &Path, name: &str, n: &str, seed: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let o = relu_fpt(&[
        "generate",
        "--teacher",
        "random",
        "--d",
        "12",
        "--widths",
        "3,3",
        "--n",
        n,
        "--seed",
        seed,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn learn_predict_eval_round_trip_through_the_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let train = generate(dir.path(), "train", "60000", "4");
    let model = dir.path().join("model.json");
    let o = relu_fpt(&[
        "learn",
        "--x",
        train.join("x.npy").to_str().unwrap(),
        "--y",
        train.join("y.npy").to_str().unwrap(),
        "--backend",
        "cpu",
        "--hidden",
        "3",
        "--budget",
        "512",
        "--json",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    let reported = report["validation_mse"].as_f64().expect("validation_mse");

    // predict on the validation rows (the last 20%) reproduces the reported validation error.
    let source = NpySource::open(&train.join("x.npy"), &train.join("y.npy")).unwrap();
    let n_val = (source.len() as f64 * 0.2).round() as usize;
    let start = source.len() - n_val as u64;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    source.read(start, n_val, &mut x, &mut y).unwrap();
    let xv = dir.path().join("xv.npy");
    write_npy_f32(&xv, &[n_val, 12], &x).unwrap();
    let pred = dir.path().join("pred.npy");
    let o = relu_fpt(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--x",
        xv.to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        pred.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p = NpySource::open_inputs(&pred);
    assert!(p.is_err(), "predictions are a vector, not a matrix");
    let preds = read_vector(&pred);
    let mse: f64 = preds
        .iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / n_val as f64;
    assert!(
        (mse - reported).abs() <= 1e-4 * reported.max(1e-3),
        "predict MSE {mse} vs learn {reported}"
    );

    // eval with the teacher reports angles and a small relative error on fresh samples, and
    // draws predictions and residuals against the labels.
    let test = generate(dir.path(), "test", "20000", "4");
    let plot = dir.path().join("eval.svg");
    let o = relu_fpt(&[
        "eval",
        "--plot",
        plot.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--x",
        test.join("x.npy").to_str().unwrap(),
        "--y",
        test.join("y.npy").to_str().unwrap(),
        "--teacher",
        train.join("teacher.json").to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(e["relative_mse"].as_f64().unwrap() < 0.1, "{e}");
    assert!(e["principal_angles"].as_array().unwrap().len() >= 2, "{e}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(
        svg.matches("class=\"legend\"").count(),
        2,
        "two panels, each with a legend"
    );
    assert!(svg.contains("residual (prediction - label)"));
    assert!(svg.matches("class=\"xtick\"").count() >= 8);
    assert!(svg.matches("class=\"ytick\"").count() >= 8);
}

/// Reads an (N,) float32 .npy file written by `predict`.
fn read_vector(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The `  NAME: ..` lines a run printed on stderr as its stages and rounds ended, in order.
fn stage_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains(": "))
        .map(str::to_string)
        .collect()
}

/// The value after `key` in a stage line ("validation MSE/Var 1.234e-5" -> 1.234e-5).
fn value_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split([' ', ',']).find(|w| !w.is_empty())?.parse().ok()
}

#[test]
fn learn_prints_a_line_per_stage_on_a_piped_stderr_and_quiet_silences_them() {
    // Stderr is a pipe here, as in a log or a batch job: no bars, one line per stage.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let args = [
        "learn",
        "--teacher",
        "fan",
        "--d",
        "8",
        "--n",
        "6000",
        "--backend",
        "cpu",
        "--budget",
        "64",
        "--descent-epochs",
        "3",
        "--polish-epochs",
        "3",
        "--json",
        "--out",
        model.to_str().unwrap(),
    ];
    let started = std::time::Instant::now();
    let o = relu_fpt(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
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
    let lines = stage_lines(&o);
    assert!(
        stderr(&o).lines().all(|l| l.starts_with("  ")),
        "only stage lines: {}",
        stderr(&o)
    );
    // First, the built-in teacher's samples drawn into memory once.
    assert!(
        lines[0].starts_with("  samples: 6000 rows drawn into memory, "),
        "{lines:#?}"
    );
    let lines = &lines[1..];
    // The filtered-PCA rounds and refine steps first, then one line per stage, in order.
    let rounds = report["subspace"]["rounds"].as_array().unwrap().len();
    let refines = report["subspace"]["refine"].as_array().unwrap().len();
    let inner: Vec<&String> = lines
        .iter()
        .take_while(|l| l.starts_with("  subspace round") || l.starts_with("  subspace refine"))
        .collect();
    assert_eq!(inner.len(), rounds + refines, "{lines:#?}");
    assert!(
        inner[0].starts_with("  subspace round 1 (label): "),
        "{}",
        inner[0]
    );
    let outer: Vec<&String> = lines[inner.len()..].iter().collect();
    let outer_names: Vec<&str> = outer
        .iter()
        .map(|l| l.trim_start().split(':').next().unwrap())
        .collect();
    assert_eq!(outer_names, names, "{lines:#?}");
    let var = report["validation_var"].as_f64().unwrap();
    for (line, st) in outer.iter().zip(stages) {
        // Rows and seconds on every line, the stage's validation error where it has one.
        assert!(line.contains(" rows, ") && line.contains(" s"), "{line}");
        match st["validation_mse"].as_f64() {
            Some(m) => {
                let shown = value_after(line, "validation MSE/Var ").expect(line);
                assert!(
                    (shown - m / var).abs() <= 1e-3 * (m / var),
                    "{line}: {} in the JSON",
                    m / var
                );
            }
            None => assert!(!line.contains("validation"), "{line}"),
        }
        // The host's CPU time during the stage: never more than the threads could give.
        let cpu = st["host_cpu_seconds"]
            .as_f64()
            .expect("host_cpu_seconds on Linux");
        let wall = st["seconds"].as_f64().unwrap();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(cpu >= 0.0 && cpu <= wall * threads + 0.05, "{st}");
    }
    let dimension = report["dimension"].as_u64().unwrap();
    assert!(
        outer[0].starts_with(&format!("  subspace: {dimension} direction")),
        "{}",
        outer[0]
    );

    // --quiet: nothing on stderr, and the same JSON on stdout (timings aside).
    let mut quiet_args = args.to_vec();
    quiet_args.insert(1, "--quiet");
    let q = relu_fpt(&quiet_args);
    assert!(q.status.success(), "{}", stderr(&q));
    assert_eq!(stderr(&q), "", "--quiet prints nothing on stderr");
    let quiet: serde_json::Value = serde_json::from_slice(&q.stdout).expect("one JSON line");
    for key in ["validation_mse", "model", "final_stage", "dimension"] {
        assert_eq!(quiet[key], report[key], "{key}");
    }
    assert!(
        started.elapsed().as_secs() < 120,
        "two tiny runs took {:?}",
        started.elapsed()
    );
}

#[test]
fn subspace_prints_a_line_per_round_and_refine_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.json");
    let o = relu_fpt(&[
        "subspace",
        "--teacher",
        "fan",
        "--d",
        "8",
        "--n",
        "6000",
        "--backend",
        "cpu",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    let rounds = report["rounds"].as_array().unwrap();
    let lines = stage_lines(&o);
    let round_lines: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("  subspace round "))
        .collect();
    assert_eq!(round_lines.len(), rounds.len(), "{lines:#?}");
    for (i, (line, r)) in round_lines.iter().zip(rounds).enumerate() {
        let accepted = r["accepted"].as_u64().unwrap();
        let head = format!(
            "  subspace round {} ({}): ",
            i + 1,
            r["kind"].as_str().unwrap()
        );
        assert!(line.starts_with(&head), "{line}");
        let found = match accepted {
            0 => "no direction".to_string(),
            1 => "1 direction,".to_string(),
            k => format!("{k} directions,"),
        };
        assert!(
            line.contains(&found) && line.contains("6000 rows"),
            "{line}"
        );
    }
    let refine = report["refine"].as_array().unwrap().len();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("  subspace refine "))
            .count(),
        refine,
        "{lines:#?}"
    );
    assert_eq!(lines.len(), rounds.len() + refine, "{lines:#?}");
}

/// The rows of a `bench moments` table: (d, K) and the rest of the row's cells.
fn table_rows(stdout: &str) -> Vec<(usize, usize, Vec<String>)> {
    stdout
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let d = cells.first()?.parse().ok()?;
            let k = cells.get(1)?.parse().ok()?;
            Some((d, k, cells[2..].iter().map(|c| c.to_string()).collect()))
        })
        .collect()
}

#[test]
fn bench_trainer_reports_its_speed_and_the_same_parameters_on_any_thread_count() {
    let run = |threads: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
            .args(["bench", "trainer", "--widths", "3,16,8", "--rows", "3000"])
            .args(["--batch", "64", "--passes", "2", "--runs", "1", "--json"])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .expect("the binary runs");
        assert!(o.status.success(), "{}", stderr(&o));
        let line = String::from_utf8(o.stdout).unwrap();
        assert_eq!(line.lines().count(), 1, "{line}");
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    let (one, two) = (run("1"), run("2"));
    assert_eq!(one["threads"], 1);
    assert_eq!(two["threads"], 2);
    assert_eq!(one["widths"], serde_json::json!([3, 16, 8, 1]));
    for r in [&one, &two] {
        let us = r["us_per_row"].as_f64().unwrap();
        let gflops = r["gflops"].as_f64().unwrap();
        assert!(us > 0.0 && us.is_finite() && gflops > 0.0, "{r}");
        // 6000 row reads of (3 x 16 + 16 x 8 + 8) x 3 - 3 x 16 multiply-adds in that time.
        let want = 2.0 * 504.0 / us / 1e3;
        assert!((gflops / want - 1.0).abs() < 1e-9, "{r}");
    }
    assert_eq!(one["params_hash"], two["params_hash"]);
}

const BENCH_SIZES: [&str; 8] = [
    "--n", "20000", "--d", "16,32", "--bins", "1,4", "--runs", "5",
];

#[test]
fn bench_moments_tables_every_size_and_keeps_the_single_line() {
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", "moments", "--peak-gflops", "100"];
        args.extend_from_slice(extra);
        let o = relu_fpt(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    // One backend, one size: today's single line.
    let one = bench(&["--n", "20000", "--d", "16", "--runs", "5"]);
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(
        one.starts_with("cpu (") && one.contains("N = 20000, d = 16, K = 1: median "),
        "{one}"
    );
    // Several sizes: one table, a row per (d, K) in order, seconds, GFLOP/s and share of peak.
    let table = bench(&BENCH_SIZES);
    let rows = table_rows(&table);
    let sizes: Vec<(usize, usize)> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(sizes, [(16, 1), (16, 4), (32, 1), (32, 4)], "{table}");
    for (_, _, cells) in &rows {
        assert_eq!(cells.len(), 3, "{table}");
        assert!(cells[0].parse::<f64>().unwrap() > 0.0, "{table}");
        assert!(cells[2].ends_with('%'), "{table}");
    }
    assert!(
        table.contains("cpu s") && !table.contains("gpu/cpu"),
        "{table}"
    );
    // --json: one line per result with the single result's fields.
    let json = bench(&[&BENCH_SIZES[..], &["--json"]].concat());
    let single = bench(&["--n", "20000", "--d", "16", "--runs", "5", "--json"]);
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let single: serde_json::Value = serde_json::from_str(single.trim()).unwrap();
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 4, "{json}");
    for (v, (d, k)) in lines.iter().zip(&sizes) {
        assert_eq!(keys(v), keys(&single), "{v}");
        assert_eq!(
            (v["d"].as_u64(), v["bins"].as_u64()),
            (Some(*d as u64), Some(*k as u64))
        );
        assert_eq!(v["backend"], "cpu");
        assert_eq!(v["peak_gflops"], 100.0);
    }
}

/// On the GPU (lavapipe in CI; a missing adapter fails, as every GPU test does): both backends
/// in one table with the GPU/CPU ratio, and one JSON line per backend and size.
#[test]
fn bench_moments_compares_the_cpu_with_the_gpu_in_one_table() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "moments",
            "--backend",
            "cpu,gpu",
            "--peak-gflops",
            "100",
        ];
        args.extend_from_slice(&BENCH_SIZES);
        args.extend_from_slice(extra);
        let o = relu_fpt(&args);
        assert!(o.status.success(), "needs a GPU adapter: {}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let table = run(&[]);
    assert!(table.lines().any(|l| l.starts_with("cpu: ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("gpu: ")), "{table}");
    assert!(table.contains("generated on the device") && table.contains("host memory"));
    assert!(table.contains("gpu/cpu"), "{table}");
    let rows = table_rows(&table);
    let sizes: Vec<(usize, usize)> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(sizes, [(16, 1), (16, 4), (32, 1), (32, 4)], "{table}");
    for (_, _, cells) in &rows {
        // cpu s, cpu GFLOP/s, cpu %peak, gpu s, gpu GFLOP/s, gpu/cpu.
        assert_eq!(cells.len(), 6, "{table}");
        let (cpu, gpu) = (
            cells[0].parse::<f64>().unwrap(),
            cells[3].parse::<f64>().unwrap(),
        );
        let ratio: f64 = cells[5].trim_end_matches('x').parse().unwrap();
        // The ratio is of the unrounded seconds; the cells show them to 1e-4 s.
        let slack = 0.5e-4 * (1.0 / cpu + 1.0 / gpu) + 1e-3;
        assert!((ratio / (cpu / gpu) - 1.0).abs() <= slack, "{table}");
    }
    let json = run(&["--json"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 8, "{json}");
    let got: Vec<(String, u64, u64)> = lines
        .iter()
        .map(|v| {
            (
                v["backend"].as_str().unwrap().to_string(),
                v["d"].as_u64().unwrap(),
                v["bins"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = Vec::new();
    for b in ["cpu", "gpu"] {
        for (d, k) in [(16, 1), (16, 4), (32, 1), (32, 4)] {
            want.push((b.to_string(), d, k));
        }
    }
    assert_eq!(got, want);
    assert!(lines[4]["peak_gflops"].is_null() && lines[4]["data"] == "generated on the device");
}

/// A built-in teacher's samples are drawn into memory once, and files read into memory once (a
/// line on stderr says which), unless --stream; the model is the same all three ways.
#[test]
fn learn_holds_its_samples_in_memory_once_and_learns_what_streaming_gives() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(dir.path(), "data", "20000", "4");
    let small = [
        "--hidden",
        "2",
        "--budget",
        "64",
        "--deep-widths",
        "0",
        "--polish-epochs",
        "2",
        "--backend",
        "cpu",
        "--seed",
        "4",
    ];
    let from_files = dir.path().join("files.json");
    let (x, y) = (data.join("x.npy"), data.join("y.npy"));
    let mut args = vec![
        "learn",
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--out",
        from_files.to_str().unwrap(),
    ];
    args.extend(small);
    let o = relu_fpt(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("  samples: 20000 rows read into memory, "),
        "{}",
        stderr(&o)
    );
    let streamed = dir.path().join("streamed.json");
    args[6] = streamed.to_str().unwrap();
    args.push("--stream");
    let o = relu_fpt(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("into memory"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&from_files).unwrap(),
        std::fs::read(&streamed).unwrap()
    );
    let teacher = [
        "--teacher",
        "random",
        "--d",
        "12",
        "--widths",
        "3,3",
        "--n",
        "20000",
    ];
    let from_teacher = dir.path().join("teacher.json");
    let mut args = vec!["learn", "--out", from_teacher.to_str().unwrap()];
    args.extend(teacher);
    args.extend(small);
    let o = relu_fpt(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("  samples: 20000 rows drawn into memory, "),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(&from_files).unwrap(),
        std::fs::read(&from_teacher).unwrap()
    );
    // --quiet says nothing about it.
    args.push("--quiet");
    let o = relu_fpt(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("into memory"), "{}", stderr(&o));
}
