//! A basis that can grow in the polish: spare rows of B, started small, that the polish may
//! turn into directions the subspace stage missed; afterwards each spare row is kept only when
//! removing it makes the validation error significantly worse.
//!
//! A spare row starts as a random unit direction orthogonal to B, scaled by `scale`, and feeds
//! the first hidden layer through small random weights, so the grown network starts within
//! about scale^2 of the ungrown one and the gradient reaches both the row and its weights.
//! After the polish the spare rows are first rewritten, without changing the function, as
//! orthonormal directions ordered by how much the first layer uses them (an SVD of the first
//! layer's spare columns times the spare rows), so that two rows sharing one new direction
//! become one used row and one unused. Then the least used are dropped while the paired test
//! allows: on every validation row, the squared error without the row minus with it; a row
//! stays when the mean of that difference exceeds `z` standard errors.
//!
//! The network can grow deeper too ([`deepen`]): one more hidden layer that starts as the
//! identity, so the polish resumes from the same function with more room.

use crate::backend::Backend;
use crate::data::{for_each_chunk, SampleSource};
use crate::error::Result;
use crate::network::{Layer, Network};
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

/// The same function with one more hidden layer: an identity layer after the last hidden one,
/// with zero biases (its inputs are ReLU outputs, so ReLU(I h + 0) = h exactly). A network with
/// no hidden layer comes back unchanged.
pub fn deepen(network: &Network) -> Result<Network> {
    let mut deeper = network.clone();
    let Some(last_hidden) = deeper.layers.len().checked_sub(2) else {
        return Ok(deeper);
    };
    let w = deeper.layers[last_hidden].outputs;
    let mut eye = vec![0.0; w * w];
    for i in 0..w {
        eye[i * w + i] = 1.0;
    }
    (deeper.layers).insert(last_hidden + 1, Layer::new(w, w, eye, vec![0.0; w])?);
    deeper.validate()?;
    Ok(deeper)
}

/// `network` (on r inputs) and `basis` (r rows) with `spare` more basis rows and first-layer
/// inputs, started small (see the module docs); fewer when d - r is smaller (the caller reads
/// the count off the result).
pub fn grow(
    network: &Network,
    basis: &[Vec<f64>],
    spare: usize,
    scale: f64,
    seed: u64,
) -> Result<(Network, Vec<Vec<f64>>)> {
    let d = basis.first().map_or(0, Vec::len);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6e0d_5a1e_0000_0001);
    let mut rows = basis.to_vec();
    // Orthogonal to B and to each other: Gram-Schmidt against an orthonormal copy of the rows.
    let mut ortho: Vec<Vec<f64>> = Vec::new();
    for b in basis {
        push_orthonormal(&mut ortho, b.clone());
    }
    let spare = spare.min(d.saturating_sub(ortho.len()));
    let mut added = 0;
    while added < spare {
        let v: Vec<f64> = (0..d).map(|_| rng.sample(StandardNormal)).collect();
        if let Some(u) = push_orthonormal(&mut ortho, v) {
            rows.push(u.iter().map(|a| a * scale).collect());
            added += 1;
        }
    }
    let first = &network.layers[0];
    let inputs = first.inputs + spare;
    let mut weights = Vec::with_capacity(first.outputs * inputs);
    for o in 0..first.outputs {
        weights.extend_from_slice(first.row(o));
        weights.extend((0..spare).map(|_| scale * rng.sample::<f64, _>(StandardNormal)));
    }
    let mut layers = network.layers.clone();
    layers[0] = Layer::new(inputs, first.outputs, weights, first.bias.clone())?;
    Ok((Network::new(inputs, layers)?, rows))
}

/// Gram-Schmidt step: adds `v` made orthonormal to `ortho` (twice, for accuracy) and returns
/// it, or None when `v` lies (numerically) in their span.
fn push_orthonormal(ortho: &mut Vec<Vec<f64>>, mut v: Vec<f64>) -> Option<Vec<f64>> {
    let norm0 = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    for _ in 0..2 {
        for u in ortho.iter() {
            let c: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= c * b);
        }
    }
    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    if norm.is_nan() || norm <= 1e-6 * norm0.max(1e-300) {
        return None;
    }
    v.iter_mut().for_each(|a| *a /= norm);
    ortho.push(v.clone());
    Some(v)
}

/// The network and basis without basis row `drop` (and its first-layer input).
pub fn without_row(
    network: &Network,
    basis: &[Vec<f64>],
    drop: usize,
) -> Result<(Network, Vec<Vec<f64>>)> {
    let first = &network.layers[0];
    let weights = (0..first.outputs)
        .flat_map(|o| {
            first
                .row(o)
                .iter()
                .enumerate()
                .filter(move |&(i, _)| i != drop)
                .map(|(_, &w)| w)
        })
        .collect();
    let mut layers = network.layers.clone();
    layers[0] = Layer::new(first.inputs - 1, first.outputs, weights, first.bias.clone())?;
    let rows = basis
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != drop)
        .map(|(_, b)| b.clone())
        .collect();
    Ok((Network::new(first.inputs - 1, layers)?, rows))
}

/// Mean over the rows of `source` of (error of `a`)^2 - (error of `b`)^2, and its standard
/// error.
pub fn paired_difference(
    backend: &dyn Backend,
    a: &Network,
    b: &Network,
    source: &dyn SampleSource,
) -> Result<(f64, f64)> {
    let sums = backend.row_sums(source, 3, &mut |rows| {
        let mut s = vec![0f64; 3];
        for_each_chunk(rows, crate::backend::SCORE_CHUNK_ROWS, |_, x, y| {
            let pa = backend.predict(a, x, y.len())?;
            let pb = backend.predict(b, x, y.len())?;
            for ((&u, &v), &t) in pa.iter().zip(&pb).zip(y) {
                let diff = (u as f64 - t as f64).powi(2) - (v as f64 - t as f64).powi(2);
                s[0] += 1.0;
                s[1] += diff;
                s[2] += diff * diff;
            }
            Ok(())
        })?;
        Ok(s)
    })?;
    let (n, sum, sum2) = (sums[0], sums[1], sums[2]);
    let mean = sum / n.max(1.0);
    let var = (sum2 / n.max(1.0) - mean * mean).max(0.0);
    Ok((mean, (var / n.max(1.0)).sqrt()))
}

/// The same function with the spare rows (the last `spare` rows of `basis`) rewritten as
/// orthonormal directions ordered by decreasing use: W_s B_s = U S V^T, rows V^T, first-layer
/// columns U S.
pub fn canonical_spare(
    network: &Network,
    basis: &[Vec<f64>],
    spare: usize,
) -> Result<(Network, Vec<Vec<f64>>)> {
    use nalgebra::DMatrix;
    let first = &network.layers[0];
    let (h, r_all) = (first.outputs, first.inputs);
    let r = r_all - spare;
    let d = basis.first().map_or(0, Vec::len);
    if spare == 0 || d < spare {
        return Ok((network.clone(), basis.to_vec()));
    }
    // The part of each spare row inside the span of B's first r rows, C B with
    // C = B_s B^T (B B^T)^-1, moves into the first r columns of the first layer.
    let b = DMatrix::from_fn(r, d, |i, k| basis[i][k]);
    let mut bs = DMatrix::from_fn(spare, d, |j, k| basis[r + j][k]);
    let mut w = DMatrix::from_row_slice(h, r_all, &first.weights);
    if r > 0 {
        if let Some(inv) = (&b * b.transpose()).try_inverse() {
            let c = &bs * b.transpose() * inv; // s x r
            let ws = w.columns(r, spare).into_owned();
            let fold = ws * &c; // h x r
            let mut head = w.columns_mut(0, r);
            head += fold;
            bs -= c * &b;
        }
    }
    // B_s^T = Q R (Q: d x s orthonormal columns).
    let bs = bs.transpose();
    let qr = bs.qr();
    let (q, rr) = (qr.q(), qr.r());
    let ws = w.columns(r, spare).into_owned();
    let svd = (ws * rr.transpose()).svd(true, true);
    let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
        return Ok((network.clone(), basis.to_vec()));
    };
    // nalgebra orders singular values decreasingly.
    let rows_new = &q * v_t.transpose(); // d x s: new rows as columns
    let cols_new = u * DMatrix::from_diagonal(&svd.singular_values); // h x s
    let mut rows = basis[..r].to_vec();
    rows.extend((0..spare).map(|j| (0..d).map(|i| rows_new[(i, j)]).collect()));
    w.columns_mut(r, spare).copy_from(&cols_new);
    let weights: Vec<f64> = (0..h)
        .flat_map(|o| (0..r_all).map(move |i| (o, i)))
        .map(|(o, i)| w[(o, i)])
        .collect();
    let mut layers = network.layers.clone();
    layers[0] = Layer::new(r_all, h, weights, first.bias.clone())?;
    Ok((Network::new(r_all, layers)?, rows))
}

/// What pruning decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Pruned {
    /// The small network and basis after pruning.
    pub network: Network,
    pub basis: Vec<Vec<f64>>,
    /// Spare rows kept.
    pub kept: usize,
}

/// Rewrites the spare rows (the last `spare` rows of `basis`) by [`canonical_spare`], then
/// drops them one at a time, least used first, while dropping one does not make validation
/// significantly worse (by `z` standard errors of the paired difference).
pub fn prune(
    backend: &dyn Backend,
    network: &Network,
    basis: &[Vec<f64>],
    spare: usize,
    z: f64,
    val: &dyn SampleSource,
) -> Result<Pruned> {
    let (mut net, mut rows) = canonical_spare(network, basis, spare)?;
    let mut left = spare;
    while left > 0 {
        let full = Network::with_projection(&net, &rows)?;
        let cut = without_row(&net, &rows, rows.len() - 1)?;
        let candidate = Network::with_projection(&cut.0, &cut.1)?;
        let (mean, se) = paired_difference(backend, &candidate, &full, val)?;
        // How much worse the cut model is, in standard errors.
        if mean > z * se {
            break;
        }
        (net, rows) = cut;
        left -= 1;
    }
    Ok(Pruned {
        network: net,
        basis: rows,
        kept: left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deepened_network_is_the_same_function_one_layer_deeper() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let (d, h1, h2) = (5, 4, 3);
        let net = crate::network::random_network(&mut rng, &[d, h1, h2, 1]);
        let mut draw =
            |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let deeper = deepen(&net).unwrap();
        assert_eq!(deeper.hidden_widths(), [h1, h2, h2]);
        for _ in 0..50 {
            let x = draw(d);
            assert_eq!(net.forward_one_f64(&x), deeper.forward_one_f64(&x));
        }
        // No hidden layer: nothing to deepen.
        let linear = Network::new(d, vec![Layer::new(d, 1, draw(d), draw(1)).unwrap()]).unwrap();
        assert_eq!(deepen(&linear).unwrap(), linear);
    }

    #[test]
    fn canonical_spare_rows_keep_the_function_and_are_orthonormal_off_b() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (d, r, spare, h) = (7, 2, 3, 5);
        let net = crate::network::random_network(&mut rng, &[r + spare, h, 1]);
        let mut draw =
            |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let basis: Vec<Vec<f64>> = (0..r + spare).map(|_| draw(d)).collect();
        let (net2, basis2) = canonical_spare(&net, &basis, spare).unwrap();
        assert_eq!(basis2[..r], basis[..r]);
        let before = Network::with_projection(&net, &basis).unwrap();
        let after = Network::with_projection(&net2, &basis2).unwrap();
        for _ in 0..20 {
            let x = draw(d);
            let (a, b) = (before.forward_one_f64(&x), after.forward_one_f64(&x));
            assert!((a - b).abs() < 1e-10, "{a} {b}");
        }
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        for i in r..r + spare {
            for j in 0..r + spare {
                let want = f64::from(u8::from(i == j));
                let got = dot(&basis2[i], &basis2[j]);
                assert!((got - want).abs() < 1e-10, "rows {i}, {j}: {got}");
            }
        }
        // Columns ordered by use: decreasing norm of the first layer's spare columns.
        let col = |j: usize| -> f64 {
            (0..h)
                .map(|o| net2.layers[0].row(o)[j].powi(2))
                .sum::<f64>()
        };
        assert!(col(r) >= col(r + 1) && col(r + 1) >= col(r + 2));
    }

    #[test]
    fn growth_stops_at_the_input_dimension() {
        let net = Network::new(
            2,
            vec![
                Layer::new(2, 3, vec![0.5; 6], vec![0.0; 3]).unwrap(),
                Layer::new(3, 1, vec![1.0; 3], vec![0.0]).unwrap(),
            ],
        )
        .unwrap();
        let basis = vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]];
        let (grown, rows) = grow(&net, &basis, 4, 1e-2, 1).unwrap();
        assert_eq!((grown.input_dim, rows.len()), (3, 3));
        assert!(rows[2][2].abs() > 0.0 && rows[2][..2].iter().all(|v| v.abs() < 1e-12));
    }
}
