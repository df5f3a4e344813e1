//! `Backend::predict` on both backends: agreement with `Network::forward_one_f64`, streaming,
//! typed errors.

mod common;

use relu_fpt::backend::gpu::{ForwardKernelParams, GpuError, MAX_FORWARD_WIDTH};
use relu_fpt::backend::Backend;
use relu_fpt::error::Error;
use relu_fpt::network::{Layer, Network};

/// Small deterministic generator (xorshift64*), so the tests need no RNG API.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A random network d -> hidden... -> 1 with weights N(0, 2/inputs) and optional biases.
fn random_network(d: usize, hidden: &[usize], biases: bool, seed: u64) -> Network {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut widths = vec![d];
    widths.extend_from_slice(hidden);
    widths.push(1);
    let layers = widths
        .windows(2)
        .map(|w| {
            let scale = (2.0 / w[0] as f64).sqrt();
            let weights = (0..w[0] * w[1]).map(|_| rng.normal() * scale).collect();
            let bias = (0..w[1])
                .map(|_| if biases { 0.3 * rng.normal() } else { 0.0 })
                .collect();
            Layer::new(w[0], w[1], weights, bias).unwrap()
        })
        .collect();
    Network::new(d, layers).unwrap()
}

fn gaussian_x(rows: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed ^ 0xD1B5_4A32_D192_ED03);
    (0..rows * d).map(|_| rng.normal() as f32).collect()
}

/// Largest |pred - reference| relative to the RMS of the reference outputs.
fn relative_error(network: &Network, x: &[f32], rows: usize, pred: &[f32]) -> f64 {
    assert_eq!(pred.len(), rows);
    let d = network.input_dim;
    let reference: Vec<f64> = (0..rows)
        .map(|r| {
            let xr: Vec<f64> = x[r * d..(r + 1) * d].iter().map(|&v| v as f64).collect();
            network.forward_one_f64(&xr)
        })
        .collect();
    let rms = (reference.iter().map(|v| v * v).sum::<f64>() / rows as f64).sqrt();
    assert!(rms > 1e-3, "degenerate test network (output RMS {rms})");
    reference
        .iter()
        .zip(pred)
        .map(|(r, &p)| (r - p as f64).abs())
        .fold(0.0, f64::max)
        / rms
}

fn check_agreement(backend: &dyn Backend, d: usize, hidden: &[usize], biases: bool, rows: usize) {
    let network = random_network(d, hidden, biases, (d * 31 + hidden.len()) as u64);
    let x = gaussian_x(rows, d, d as u64 + rows as u64);
    let pred = backend.predict(&network, &x, rows).unwrap();
    let err = relative_error(&network, &x, rows, &pred);
    assert!(
        err < 1e-5,
        "{} backend, d = {d}, hidden {hidden:?}, biases {biases}, {rows} rows: relative error {err:e}",
        backend.kind()
    );
}

#[test]
fn predict_matches_forward_one_f64_on_small_shapes() {
    for backend in common::backends() {
        check_agreement(backend, 1, &[], true, 37);
        check_agreement(backend, 1, &[3], false, 5);
        check_agreement(backend, 7, &[5], false, 101);
        check_agreement(backend, 7, &[64, 13, 64], true, 203);
        check_agreement(backend, 130, &[64, 17], true, 333);
        check_agreement(backend, 130, &[33, 64, 9], false, 259);
    }
}

/// d * h1 = 1024 * 64 = 65,536 multiply-adds per sample in the first layer: a kernel that gave
/// one invocation a whole sample would exceed lavapipe's 65,535-iteration loop budget.
#[test]
fn predict_matches_forward_one_f64_past_the_naive_loop_budget() {
    for backend in common::backends() {
        check_agreement(backend, 1024, &[64], true, 97);
        check_agreement(backend, 1024, &[64, 32, 16], false, 45);
    }
}

#[test]
fn gpu_predict_streams_pieces_and_small_groups() {
    let gpu = common::gpu();
    let network = random_network(130, &[40, 21], true, 5);
    let rows = 211;
    let x = gaussian_x(rows, 130, 9);
    let default = ForwardKernelParams::for_network(gpu.context(), &network);
    for (wg, sb, rows_per_dispatch) in [(64, 1, 50), (32, 3, 64), (16, 8, 17), (64, 16, 1000)] {
        let params = ForwardKernelParams {
            workgroup_size: wg,
            samples_per_group: sb,
            rows_per_dispatch,
            ..default
        };
        let pred = gpu.predict_with(&network, &x, rows, &params).unwrap();
        let err = relative_error(&network, &x, rows, &pred);
        assert!(err < 1e-5, "params {params:?}: relative error {err:e}");
    }
}

#[test]
fn predict_rejects_a_mismatched_x_length() {
    let network = random_network(7, &[5], true, 1);
    let x = gaussian_x(10, 7, 2);
    for backend in common::backends() {
        let err = backend.predict(&network, &x[..69], 10).unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
        let err = backend.predict(&network, &x, 11).unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
        assert!(backend.predict(&network, &[], 0).unwrap().is_empty());
    }
}

#[test]
fn gpu_predict_refuses_layers_wider_than_its_limit() {
    let network = random_network(1, &[MAX_FORWARD_WIDTH + 1], true, 3);
    let x = gaussian_x(4, 1, 4);
    let err = common::gpu().predict(&network, &x, 4).unwrap_err();
    assert!(matches!(err, Error::Gpu(GpuError::TooLarge(_))), "{err}");
    // The CPU backend has no such limit.
    let pred = common::cpu().predict(&network, &x, 4).unwrap();
    assert!(relative_error(&network, &x, 4, &pred) < 1e-5);
}

/// A compact model (projection r x d, then a small network) predicts what its dense form does,
/// on both backends.
#[test]
fn predict_runs_the_compact_form() {
    let (d, r) = (96, 3);
    let small = random_network(r, &[24, 8], true, 7);
    let projection: Vec<Vec<f64>> = (0..r)
        .map(|i| {
            let row = gaussian_x(1, d, 50 + i as u64);
            row.iter().map(|&v| v as f64 / (d as f64).sqrt()).collect()
        })
        .collect();
    let compact = Network::with_projection(&small, &projection).unwrap();
    let rows = 150;
    let x = gaussian_x(rows, d, 77);
    for backend in common::backends() {
        let pred = backend.predict(&compact, &x, rows).unwrap();
        let err = relative_error(&compact.dense(), &x, rows, &pred);
        assert!(err < 1e-5, "{}: relative error {err:e}", backend.kind());
    }
}
