//! The network model: batched forward passes, gradient, JSON files (versions 1 and 2), the
//! compact form with a projection, first-layer span and lift.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use relu_fpt::network::{Layer, Network, NetworkError};

fn gaussian(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.sample(StandardNormal)).collect()
}

/// A random network d -> widths -> 1 with nonzero biases.
fn random_network(d: usize, widths: &[usize], seed: u64) -> Network {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut layers = Vec::new();
    let mut inputs = d;
    for &outputs in widths.iter().chain(&[1]) {
        let scale = 1.0 / (inputs as f64).sqrt();
        let w = gaussian(&mut rng, inputs * outputs)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        let b = gaussian(&mut rng, outputs)
            .into_iter()
            .map(|v| 0.3 * v)
            .collect();
        layers.push(Layer::new(inputs, outputs, w, b).unwrap());
        inputs = outputs;
    }
    Network::new(d, layers).unwrap()
}

/// Orthonormal r x d rows (Gram-Schmidt of Gaussian rows).
fn orthonormal_rows(r: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut rows: Vec<Vec<f64>> = Vec::new();
    while rows.len() < r {
        let mut v = gaussian(&mut rng, d);
        for u in &rows {
            let c: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= c * b);
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        rows.push(v.into_iter().map(|a| a / n).collect());
    }
    rows
}

fn bits(net: &Network) -> Vec<u64> {
    let mut out = vec![net.input_dim as u64];
    for l in &net.layers {
        out.extend(l.weights.iter().chain(&l.bias).map(|v| v.to_bits()));
    }
    for row in net.projection.iter().chain(&net.subspace).flatten() {
        out.extend(row.iter().map(|v| v.to_bits()));
    }
    out
}

#[test]
fn json_round_trip_is_bit_exact() {
    let mut net = random_network(5, &[4, 3], 11);
    // Values that naive decimal printing or parsing would not reproduce exactly.
    net.layers[0].weights[0] = 0.1 + 0.2;
    net.layers[0].weights[1] = 1e-300;
    net.layers[0].weights[2] = f64::MIN_POSITIVE / 3.0; // subnormal
    net.layers[0].weights[3] = -123456.789e10;
    net.layers[1].bias[0] = 1.0 / 3.0;
    net.subspace = Some(orthonormal_rows(2, 5, 3));
    // Arbitrary finite bit patterns across every exponent.
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(99);
    let mut wide = random_network(400, &[8], 13);
    for w in wide.layers[0].weights.iter_mut() {
        *w = loop {
            let v = f64::from_bits(rng.random::<u64>());
            if v.is_finite() {
                break v;
            }
        };
    }
    let back = Network::from_json(&wide.to_json(), "memory").unwrap();
    assert_eq!(bits(&back), bits(&wide));
    // The value a report embeds is the text's, parsed.
    for n in [&net, &wide] {
        let parsed: serde_json::Value = serde_json::from_str(&n.to_json()).unwrap();
        assert_eq!(n.to_value(), parsed);
    }

    let text = net.to_json();
    let back = Network::from_json(&text, "memory").unwrap();
    assert_eq!(bits(&back), bits(&net));
    assert_eq!(back, net);
    assert_eq!(back.to_json(), text);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.json");
    net.save(&path).unwrap();
    let loaded = Network::load(&path).unwrap();
    assert_eq!(bits(&loaded), bits(&net));
    // The temporary file was renamed away: only the target is left.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("net.json")]);

    // Overwriting an existing file replaces it whole.
    let other = random_network(5, &[2], 12);
    other.save(&path).unwrap();
    assert_eq!(Network::load(&path).unwrap(), other);
}

#[test]
fn json_schema_fields_are_as_documented() {
    let net = random_network(3, &[2], 1);
    let v: serde_json::Value = serde_json::from_str(&net.to_json()).unwrap();
    assert_eq!(v["format"], "relu-fpt/network");
    assert_eq!(v["version"], 2);
    assert_eq!(v["input_dim"], 3);
    assert!(v["projection"].is_null());
    assert_eq!(v["layers"][0]["weights"].as_array().unwrap().len(), 2);
    assert_eq!(v["layers"][0]["weights"][1].as_array().unwrap().len(), 3);
    assert_eq!(v["layers"][1]["bias"].as_array().unwrap().len(), 1);
    assert!(v["subspace"].is_null());
}

/// A valid file with one edit applied to its JSON value.
fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut net = random_network(3, &[2], 5);
    net.subspace = Some(orthonormal_rows(2, 3, 6));
    let mut v: serde_json::Value = serde_json::from_str(&net.to_json()).unwrap();
    edit(&mut v);
    v.to_string()
}

fn parse_err(text: &str) -> (NetworkError, String) {
    let e = Network::from_json(text, "teacher.json").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("teacher.json"),
        "message names the file: {msg}"
    );
    (e, msg)
}

#[test]
fn bad_json_cases_give_their_errors() {
    use serde_json::json;

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.json");
    let e = Network::load(&missing).unwrap_err();
    assert!(matches!(e, NetworkError::Unreadable { .. }), "{e:?}");
    assert!(e.to_string().contains("absent.json"));

    let (e, msg) = parse_err("{\n  \"format\": \"relu-fpt/network\",\n  \"version\": 1,,\n}");
    match e {
        NetworkError::NotJson { line, column, .. } => {
            assert_eq!(line, 3);
            assert!(column > 0);
        }
        other => panic!("expected NotJson, got {other:?}"),
    }
    assert!(msg.contains("line 3"), "{msg}");

    let (e, _) = parse_err(&edited(|v| v["format"] = json!("onnx")));
    assert!(matches!(e, NetworkError::WrongFormat { .. }), "{e:?}");
    let (e, _) = parse_err(&edited(|v| {
        v.as_object_mut().unwrap().remove("format");
    }));
    assert!(matches!(e, NetworkError::WrongFormat { .. }), "{e:?}");

    let (e, msg) = parse_err(&edited(|v| v["version"] = json!(3)));
    assert!(
        matches!(e, NetworkError::UnsupportedVersion { .. }),
        "{e:?}"
    );
    assert!(msg.contains("versions 1 and 2"), "{msg}");

    // A version-1 file has no projection; one that claims it is refused, naming the field.
    let (e, msg) = parse_err(&edited(|v| {
        v["version"] = json!(1);
        v["projection"] = json!([[1.0, 0.0, 0.0]]);
    }));
    assert!(matches!(e, NetworkError::BadField { .. }), "{e:?}");
    assert!(
        msg.contains("projection") && msg.contains("version"),
        "{msg}"
    );
    // A projection whose rows are not of length input_dim.
    let (e, msg) = parse_err(&edited(|v| v["projection"] = json!([[1.0, 0.0]])));
    assert!(matches!(e, NetworkError::ShapeMismatch { .. }), "{e:?}");
    assert!(msg.contains("projection"), "{msg}");

    let (e, msg) = parse_err(&edited(|v| {
        v["layers"][0]["weights"][1] = json!([1.0, 2.0]);
    }));
    assert!(matches!(e, NetworkError::Ragged { .. }), "{e:?}");
    assert!(msg.contains("layers[0].weights[1]"), "{msg}");

    // Weights that do not take input_dim inputs.
    let (e, msg) = parse_err(&edited(|v| {
        v["layers"][0]["weights"] = json!([[1.0, 2.0], [3.0, 4.0]]);
    }));
    assert!(matches!(e, NetworkError::ShapeMismatch { .. }), "{e:?}");
    assert!(msg.contains("layers[0].weights"), "{msg}");
    // A second layer that does not take the first layer's outputs.
    let (e, msg) = parse_err(&edited(|v| {
        v["layers"][1]["weights"] = json!([[1.0, 2.0, 3.0]]);
    }));
    assert!(matches!(e, NetworkError::ShapeMismatch { .. }), "{e:?}");
    assert!(msg.contains("layers[1].weights"), "{msg}");
    // A bias of the wrong length.
    let (e, msg) = parse_err(&edited(|v| v["layers"][0]["bias"] = json!([0.0])));
    assert!(matches!(e, NetworkError::ShapeMismatch { .. }), "{e:?}");
    assert!(msg.contains("layers[0].bias"), "{msg}");

    let (e, msg) = parse_err(&edited(|v| {
        v["layers"][1]["weights"] = json!([[1.0, 2.0], [3.0, 4.0]]);
        v["layers"][1]["bias"] = json!([0.0, 0.0]);
    }));
    assert!(
        matches!(e, NetworkError::NotScalar { outputs: 2, .. }),
        "{e:?}"
    );
    assert!(msg.contains("layers[1]"), "{msg}");

    let (e, msg) = parse_err(&edited(|v| v["layers"][0]["weights"][1][2] = json!(null)));
    assert!(matches!(e, NetworkError::NonFinite { .. }), "{e:?}");
    assert!(msg.contains("layers[0].weights[1][2]"), "{msg}");
    let (e, msg) = parse_err(&edited(|v| v["layers"][1]["bias"][0] = json!("NaN")));
    assert!(matches!(e, NetworkError::NonFinite { .. }), "{e:?}");
    assert!(msg.contains("layers[1].bias[0]"), "{msg}");

    let (e, msg) = parse_err(&edited(|v| v["subspace"][1] = json!([1.0, 0.0])));
    assert!(
        matches!(
            e,
            NetworkError::SubspaceRow {
                expected: 3,
                found: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(msg.contains("subspace[1]"), "{msg}");

    let (e, msg) = parse_err(&edited(|v| v["layers"][0]["weights"][0][0] = json!("one")));
    assert!(matches!(e, NetworkError::BadField { .. }), "{e:?}");
    assert!(msg.contains("layers[0].weights[0][0]"), "{msg}");
    let (e, msg) = parse_err(&edited(|v| {
        v.as_object_mut().unwrap().remove("input_dim");
    }));
    assert!(matches!(e, NetworkError::BadField { .. }), "{e:?}");
    assert!(msg.contains("input_dim"), "{msg}");

    // save refuses non-finite parameters and leaves no file behind.
    let mut bad = random_network(3, &[2], 7);
    bad.layers[0].bias[1] = f64::NAN;
    let path = dir.path().join("nan.json");
    let e = bad.save(&path).unwrap_err();
    assert!(matches!(e, NetworkError::NonFinite { .. }), "{e:?}");
    assert!(e.to_string().contains("layers[0].bias[1]"));
    assert!(!path.exists());
    // An unwritable destination (a missing directory) is a typed error.
    let e = random_network(3, &[2], 7)
        .save(&dir.path().join("no/such/dir/net.json"))
        .unwrap_err();
    assert!(matches!(e, NetworkError::Unwritable { .. }), "{e:?}");
}

#[test]
fn forward_f32_matches_forward_f64() {
    let d = 37;
    let net = random_network(d, &[16, 8, 4], 21);
    let rows = 1000; // several blocks: exercises the parallel path
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let x32: Vec<f32> = (0..rows * d)
        .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
        .collect();
    let x64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
    let y32 = net.forward_f32(&x32, rows);
    let y64 = net.forward_f64(&x64, rows);
    assert_eq!(y32.len(), rows);
    assert_eq!(y64.len(), rows);
    let scale = y64.iter().map(|v| v.abs()).fold(0.0, f64::max);
    assert!(scale > 0.0);
    let mut nonzero = 0;
    for (i, (&a, &b)) in y32.iter().zip(&y64).enumerate() {
        assert!(
            (a as f64 - b).abs() <= 1e-5 * b.abs().max(1e-3 * scale),
            "row {i}: f32 {a} vs f64 {b}"
        );
        let one = net.forward_one_f64(&x64[i * d..(i + 1) * d]);
        assert!((one - b).abs() <= 1e-12 * (1.0 + b.abs()), "row {i}");
        nonzero += (b != 0.0) as usize;
    }
    assert!(nonzero > rows / 2);
    // A small batch (single block) and an empty batch.
    assert_eq!(net.forward_f64(&x64[..3 * d], 3), y64[..3].to_vec());
    assert!(net.forward_f32(&[], 0).is_empty());
}

#[test]
fn gradient_matches_central_differences() {
    let d = 9;
    let net = random_network(d, &[6, 5], 31);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
    let h = 1e-6;
    let mut nonzero = 0;
    for _ in 0..20 {
        let x = gaussian(&mut rng, d);
        let g = net.gradient(&x);
        assert_eq!(g.len(), d);
        for j in 0..d {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp[j] += h;
            xm[j] -= h;
            let fd = (net.forward_one_f64(&xp) - net.forward_one_f64(&xm)) / (2.0 * h);
            assert!(
                (fd - g[j]).abs() < 1e-6 * (1.0 + g[j].abs()),
                "coordinate {j}: fd {fd} vs {}",
                g[j]
            );
            nonzero += (g[j] != 0.0) as usize;
        }
    }
    assert!(nonzero > 0);

    // ReLU'(0) = 0: at x = 0 a bias-free unit sits exactly at its kink and contributes nothing.
    let kink = Network::new(
        2,
        vec![
            Layer::new(2, 1, vec![1.0, 2.0], vec![0.0]).unwrap(),
            Layer::new(1, 1, vec![3.0], vec![0.0]).unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(kink.gradient(&[0.0, 0.0]), vec![0.0, 0.0]);
    assert_eq!(kink.gradient(&[1.0, 0.0]), vec![3.0, 6.0]);
}

#[test]
fn first_layer_span_is_orthonormal_and_spans_the_rows() {
    // Four rows of rank 2 in R^5.
    let a = [1.0, 2.0, 0.0, -1.0, 0.5];
    let b = [0.0, 1.0, 1.0, 0.0, -2.0];
    let rows: Vec<f64> = [(1.0, 0.0), (0.0, 1.0), (2.0, -3.0), (0.5, 0.5)]
        .iter()
        .flat_map(|&(p, q)| a.iter().zip(&b).map(move |(x, y)| p * x + q * y))
        .collect();
    let net = Network::new(
        5,
        vec![
            Layer::new(5, 4, rows.clone(), vec![0.0; 4]).unwrap(),
            Layer::new(4, 1, vec![1.0; 4], vec![0.0]).unwrap(),
        ],
    )
    .unwrap();
    let span = net.first_layer_span();
    assert_eq!(span.len(), 2);
    for (i, u) in span.iter().enumerate() {
        for (j, v) in span.iter().enumerate() {
            let dot: f64 = u.iter().zip(v).map(|(p, q)| p * q).sum();
            assert!((dot - (i == j) as u8 as f64).abs() < 1e-12);
        }
    }
    // Every weight row lies in the span.
    for row in rows.chunks(5) {
        let mut rest = row.to_vec();
        for u in &span {
            let c: f64 = u.iter().zip(row).map(|(p, q)| p * q).sum();
            rest.iter_mut().zip(u).for_each(|(r, v)| *r -= c * v);
        }
        assert!(rest.iter().map(|v| v * v).sum::<f64>() < 1e-20);
    }
}

#[test]
fn lift_equals_composing_by_hand() {
    let (r, d) = (3, 8);
    let small = random_network(r, &[5, 4], 41);
    let basis = orthonormal_rows(r, d, 42);
    let lifted = small.lift(&basis).unwrap();
    assert_eq!(lifted.input_dim, d);
    assert_eq!(lifted.subspace.as_ref(), Some(&basis));
    assert_eq!(lifted.layers[1..], small.layers[1..]);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(43);
    for _ in 0..50 {
        let x = gaussian(&mut rng, d);
        let z: Vec<f64> = basis
            .iter()
            .map(|b| b.iter().zip(&x).map(|(p, q)| p * q).sum())
            .collect();
        let want = small.forward_one_f64(&z);
        let got = lifted.forward_one_f64(&x);
        assert!(
            (want - got).abs() < 1e-12 * (1.0 + want.abs()),
            "{want} vs {got}"
        );
    }
    // The lifted first layer spans (part of) the basis.
    assert_eq!(lifted.first_layer_span().len(), r);
    // Wrong basis sizes are typed errors.
    assert!(matches!(
        small.lift(&basis[..2]),
        Err(NetworkError::Shape(_))
    ));
    let mut ragged = basis.clone();
    ragged[1].pop();
    assert!(matches!(small.lift(&ragged), Err(NetworkError::Shape(_))));
}

/// The compact form (projection, then the small network) and the dense version-1 form (W1 P as
/// the first layer) are the same function: outputs, gradients and files agree.
#[test]
fn compact_and_dense_forms_agree_and_round_trip() {
    let small = random_network(3, &[5, 4], 31);
    let basis = orthonormal_rows(3, 9, 32);
    let compact = Network::with_projection(&small, &basis).unwrap();
    assert_eq!(compact.input_dim, 9);
    assert_eq!(compact.layers[0].inputs, 3);
    let dense = small.lift(&basis).unwrap();
    assert_eq!(dense.layers, compact.dense().layers);

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(33);
    let rows = 300;
    let x = gaussian(&mut rng, rows * 9);
    let a = compact.forward_f64(&x, rows);
    let b = dense.forward_f64(&x, rows);
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-12 * (1.0 + q.abs()), "{p} vs {q}");
    }
    let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    assert_eq!(compact.forward_f32(&xf, rows).len(), rows);
    for i in 0..5 {
        let row = &x[i * 9..(i + 1) * 9];
        let (g1, g2) = (compact.gradient(row), dense.gradient(row));
        for (p, q) in g1.iter().zip(&g2) {
            assert!((p - q).abs() < 1e-12, "{p} vs {q}");
        }
    }
    // Same first-layer span, and the subspace is the projection's span.
    let span = compact.first_layer_span();
    assert_eq!(span.len(), 3);
    assert_eq!(compact.subspace.as_ref().map(Vec::len), Some(3));

    // Version 2 round trip, bit for bit; the dense form written as a version-1 file (as older
    // builds wrote models) reads back and predicts the same.
    let back = Network::from_json(&compact.to_json(), "compact.json").unwrap();
    assert_eq!(bits(&back), bits(&compact));
    assert_eq!(back.projection, compact.projection);
    let mut v1: serde_json::Value = serde_json::from_str(&dense.to_json()).unwrap();
    v1["version"] = serde_json::json!(1);
    v1.as_object_mut().unwrap().remove("projection");
    let old = Network::from_json(&v1.to_string(), "v1.json").unwrap();
    let c = old.forward_f64(&x, rows);
    for (p, q) in a.iter().zip(&c) {
        assert!((p - q).abs() <= 1e-12 * (1.0 + q.abs()), "{p} vs {q}");
    }

    // Shapes that do not chain are typed errors, not panics.
    assert!(Network::with_projection(&small, &basis[..2]).is_err());
    assert!(Network::with_projection(&compact, &basis).is_err());
    assert!(compact.lift(&basis).is_err());
}
