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

    // eval with the teacher reports angles and a small relative error on fresh samples.
    let test = generate(dir.path(), "test", "20000", "4");
    let o = relu_fpt(&[
        "eval",
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
