//! ONNX export: the written bytes decode to the documented graph, and evaluating that graph
//! (a small interpreter for MatMul, Gemm and Relu below) reproduces the network; parameters
//! float32 cannot hold are refused by field; `relu-fpt export` writes the file or fails cleanly.

use prost::Message;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use relu_fpt::export::onnx::proto::{self, ModelProto, TensorProto};
use relu_fpt::export::{onnx_bytes, ExportError, IR_VERSION, OPSET_VERSION};
use relu_fpt::network::{Layer, Network};
use std::collections::HashMap;
use std::process::Command;

fn gaussian(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.sample(StandardNormal)).collect()
}

/// A random network `inputs -> widths -> 1` with biases.
fn random_layers(inputs: usize, widths: &[usize], rng: &mut Xoshiro256PlusPlus) -> Vec<Layer> {
    let mut layers = Vec::new();
    let mut width = inputs;
    for &outputs in widths.iter().chain(&[1]) {
        let w = gaussian(rng, width * outputs);
        let b = gaussian(rng, outputs);
        layers.push(Layer::new(width, outputs, w, b).unwrap());
        width = outputs;
    }
    layers
}

fn plain_network(d: usize, widths: &[usize], seed: u64) -> Network {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    Network::new(d, random_layers(d, widths, &mut rng)).unwrap()
}

/// The compact form: a projection (r x d, not orthonormal) then a small network on z.
fn compact_network(d: usize, r: usize, widths: &[usize], seed: u64) -> Network {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let small = Network::new(r, random_layers(r, widths, &mut rng)).unwrap();
    let projection: Vec<Vec<f64>> = (0..r).map(|_| gaussian(&mut rng, d)).collect();
    Network::with_projection(&small, &projection).unwrap()
}

/// A row-major f64 matrix (rows x cols).
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

fn from_tensor(t: &TensorProto) -> Matrix {
    assert_eq!(t.data_type, proto::FLOAT, "{}", t.name);
    let dims: Vec<usize> = t.dims.iter().map(|&n| n as usize).collect();
    let (rows, cols) = match dims[..] {
        [n] => (1, n),
        [r, c] => (r, c),
        _ => panic!("{}: unexpected dims {dims:?}", t.name),
    };
    assert_eq!(t.float_data.len(), rows * cols, "{}", t.name);
    Matrix {
        rows,
        cols,
        data: t.float_data.iter().map(|&v| v as f64).collect(),
    }
}

/// Evaluates the decoded graph on x (n x d) with the ONNX semantics of the three operators.
fn run_graph(model: &ModelProto, x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let graph = model.graph.as_ref().expect("a graph");
    let mut values: HashMap<String, Matrix> = graph
        .initializer
        .iter()
        .map(|t| (t.name.clone(), from_tensor(t)))
        .collect();
    values.insert(
        graph.input[0].name.clone(),
        Matrix {
            rows: n,
            cols: d,
            data: x.to_vec(),
        },
    );
    for node in &graph.node {
        let arg = |i: usize| &values[&node.input[i]];
        let out = match node.op_type.as_str() {
            "MatMul" => {
                let (a, b) = (arg(0), arg(1));
                assert_eq!(a.cols, b.rows, "{}", node.name);
                let mut data = vec![0.0; a.rows * b.cols];
                for i in 0..a.rows {
                    for k in 0..a.cols {
                        for j in 0..b.cols {
                            data[i * b.cols + j] += a.data[i * a.cols + k] * b.data[k * b.cols + j];
                        }
                    }
                }
                Matrix {
                    rows: a.rows,
                    cols: b.cols,
                    data,
                }
            }
            "Gemm" => {
                let trans_b = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "transB")
                    .map(|a| {
                        assert_eq!(a.r#type, proto::ATTRIBUTE_INT);
                        a.i
                    })
                    .unwrap_or(0);
                assert_eq!(
                    trans_b, 1,
                    "{}: weights are stored outputs x inputs",
                    node.name
                );
                let (a, w, c) = (arg(0), arg(1), arg(2));
                assert_eq!(a.cols, w.cols, "{}", node.name);
                assert_eq!(c.cols, w.rows, "{}", node.name);
                let mut data = vec![0.0; a.rows * w.rows];
                for i in 0..a.rows {
                    for o in 0..w.rows {
                        let mut s = c.data[o];
                        for k in 0..a.cols {
                            s += a.data[i * a.cols + k] * w.data[o * w.cols + k];
                        }
                        data[i * w.rows + o] = s;
                    }
                }
                Matrix {
                    rows: a.rows,
                    cols: w.rows,
                    data,
                }
            }
            "Relu" => {
                let a = arg(0);
                Matrix {
                    rows: a.rows,
                    cols: a.cols,
                    data: a.data.iter().map(|v| v.max(0.0)).collect(),
                }
            }
            other => panic!("unexpected operator {other}"),
        };
        values.insert(node.output[0].clone(), out);
    }
    let y = &values[&graph.output[0].name];
    assert_eq!((y.rows, y.cols), (n, 1));
    y.data.clone()
}

fn shape(v: &proto::ValueInfoProto) -> Vec<String> {
    let t = v.r#type.as_ref().unwrap().tensor_type.as_ref().unwrap();
    assert_eq!(t.elem_type, proto::FLOAT, "{}", v.name);
    t.shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| match (&d.dim_param, d.dim_value) {
            (Some(p), None) => p.clone(),
            (None, Some(v)) => v.to_string(),
            other => panic!("{}: a dimension sets {other:?}", v.name),
        })
        .collect()
}

fn check_round_trip(net: &Network, ops: &[&str]) {
    let bytes = onnx_bytes(net, "network").unwrap();
    let model = ModelProto::decode(&bytes[..]).unwrap();
    assert_eq!(model.ir_version, IR_VERSION);
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].domain, "");
    assert_eq!(model.opset_import[0].version, OPSET_VERSION);
    let graph = model.graph.as_ref().unwrap();
    let got: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(got, ops);
    assert_eq!(graph.input.len(), 1);
    assert_eq!(graph.input[0].name, "x");
    let d = net.input_dim;
    assert_eq!(shape(&graph.input[0]), ["N".to_string(), d.to_string()]);
    assert_eq!(graph.output[0].name, "y");
    assert_eq!(shape(&graph.output[0]), ["N", "1"]);

    let n = 64;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(99);
    let x = gaussian(&mut rng, n * d);
    let want = net.forward_f64(&x, n);
    let got = run_graph(&model, &x, n, d);
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        // Only the float32 rounding of the parameters separates the two.
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "row {i}: graph {g}, network {w}"
        );
    }
    // Some unit is active and some is not: the comparison exercised the Relus.
    assert!(want.iter().any(|&v| v != want[0]));
}

#[test]
fn plain_network_exports_as_gemm_and_relu_per_layer() {
    let net = plain_network(5, &[6, 3], 1);
    check_round_trip(&net, &["Gemm", "Relu", "Gemm", "Relu", "Gemm"]);
    let model = ModelProto::decode(&onnx_bytes(&net, "network").unwrap()[..]).unwrap();
    let names: Vec<&str> = model
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias",
            "layers.2.weight",
            "layers.2.bias"
        ]
    );
    let w0 = &model.graph.as_ref().unwrap().initializer[0];
    assert_eq!(w0.dims, [6, 5]);
    assert_eq!(w0.float_data[1], net.layers[0].weights[1] as f32);
}

#[test]
fn compact_network_exports_its_projection_as_a_matmul() {
    let net = compact_network(12, 3, &[4], 2);
    check_round_trip(&net, &["MatMul", "Gemm", "Relu", "Gemm"]);
    let model = ModelProto::decode(&onnx_bytes(&net, "network").unwrap()[..]).unwrap();
    let p = &model.graph.as_ref().unwrap().initializer[0];
    assert_eq!(p.name, "projection");
    assert_eq!(p.dims, [12, 3]);
    // Transposed: entry (j, i) is P[i][j].
    let projection = net.projection.as_ref().unwrap();
    assert_eq!(p.float_data[3 + 2], projection[2][1] as f32);
}

#[test]
fn a_linear_model_exports_as_one_gemm() {
    let net = plain_network(3, &[], 3);
    check_round_trip(&net, &["Gemm"]);
}

#[test]
fn parameters_float32_cannot_hold_are_refused_by_field() {
    let mut net = compact_network(4, 2, &[3], 4);
    net.layers[1].weights[2] = 1e300;
    match onnx_bytes(&net, "m.json") {
        Err(e @ ExportError::NotFloat32 { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("m.json") && msg.contains("layers[1].weights[0][2]"),
                "{msg}"
            );
        }
        other => panic!("expected NotFloat32, got {other:?}"),
    }
    let mut net = compact_network(4, 2, &[3], 4);
    net.projection.as_mut().unwrap()[1][3] = -1e39;
    let msg = onnx_bytes(&net, "m.json").unwrap_err().to_string();
    assert!(msg.contains("projection[1][3]"), "{msg}");
}

#[test]
fn export_command_writes_onnx_or_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let net = compact_network(6, 2, &[3], 5);
    net.save(&model).unwrap();
    let out = dir.path().join("model.onnx");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_relu-fpt"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let written = std::fs::read(&out).unwrap();
    assert_eq!(written, onnx_bytes(&net, "unused").unwrap());

    // A broken model file: one line naming the file and field, exit 2, nothing written.
    let bad = dir.path().join("bad.json");
    let text = net
        .to_json()
        .replacen("\"input_dim\": 6", "\"input_dim\": 0", 1);
    std::fs::write(&bad, text).unwrap();
    let bad_out = dir.path().join("bad.onnx");
    let o = run(&[
        "export",
        "--model",
        bad.to_str().unwrap(),
        "--out",
        bad_out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.json") && err.contains("input_dim"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!bad_out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Values float32 cannot hold: refused by field, nothing written.
    let huge = dir.path().join("huge.json");
    let mut net = net.clone();
    net.layers[0].bias[1] = 1e200;
    net.save(&huge).unwrap();
    let o = run(&[
        "export",
        "--model",
        huge.to_str().unwrap(),
        "--out",
        bad_out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("huge.json") && err.contains("layers[0].bias[1]"),
        "{err}"
    );
    assert!(!bad_out.exists());
}
