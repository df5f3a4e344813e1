//! The estimator's answer when there is nothing for relu-fpt to learn: filtered PCA found no
//! direction above its null (or there are too few rows to run it). A ridge regression on x,
//! its penalty chosen by generalised cross-validation, written as a one-layer network (no
//! hidden layer), so that predict, save and ONNX export work unchanged.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use relu_fpt::network::{Layer, Network};
use relu_fpt::Error;

/// Fewer rows than this skip learning: a validation split and one filter need more.
pub const MIN_LEARN_ROWS: u64 = 10;

/// A fitted ridge regression.
pub struct Ridge {
    pub network: Network,
    /// The penalty chosen (on the centred normal equations: X^T X + alpha I).
    pub alpha: f64,
    /// Its generalised cross-validation estimate of the prediction error (None for n < 2).
    pub gcv_mse: Option<f64>,
}

/// Ridge regression of y on x (n rows of d, row-major) with an intercept. The penalty is the
/// minimiser of the GCV criterion RSS / (n (1 - df / n)^2) over a logarithmic grid of
/// multiples of the mean eigenvalue of the centred X^T X; everything is computed from the
/// d x d moments in the eigenbasis, so the cost is one pass over the rows plus one d x d
/// eigendecomposition.
pub fn ridge(x: &[f32], y: &[f32], d: usize) -> Result<Ridge, Error> {
    let n = y.len();
    if n == 0 {
        return Err(Error::invalid("ridge fallback: no samples"));
    }
    let nf = n as f64;
    let mut mean_x = vec![0.0f64; d];
    for row in x.chunks_exact(d) {
        mean_x
            .iter_mut()
            .zip(row)
            .for_each(|(m, &v)| *m += v as f64);
    }
    mean_x.iter_mut().for_each(|m| *m /= nf);
    let mean_y = y.iter().map(|&v| v as f64).sum::<f64>() / nf;

    // Centred moments: S = sum (x - mu)(x - mu)^T, c = sum (x - mu)(y - mean y).
    let mut s = DMatrix::<f64>::zeros(d, d);
    let mut c = DVector::<f64>::zeros(d);
    let mut centred = DVector::<f64>::zeros(d);
    let mut yy = 0.0;
    for (row, &label) in x.chunks_exact(d).zip(y) {
        for j in 0..d {
            centred[j] = row[j] as f64 - mean_x[j];
        }
        let e = label as f64 - mean_y;
        s.ger(1.0, &centred, &centred, 1.0);
        c.axpy(e, &centred, 1.0);
        yy += e * e;
    }
    let eig = SymmetricEigen::new(s);
    let lambda: Vec<f64> = eig.eigenvalues.iter().map(|&l| l.max(0.0)).collect();
    let proj = eig.eigenvectors.transpose() * &c;
    let scale = lambda.iter().sum::<f64>() / d as f64;

    let mut best: Option<(f64, f64)> = None;
    if scale > 0.0 && n >= 2 {
        for step in 0..=32 {
            let alpha = scale * 10f64.powf(-6.0 + 8.0 * step as f64 / 32.0);
            // In the eigenbasis: w_k = p_k / (l_k + a); RSS = yy - sum p_k^2 (l_k + 2a) /
            // (l_k + a)^2; df = sum l_k / (l_k + a) (plus one for the intercept).
            let (mut fitted, mut df) = (0.0, 1.0);
            for (&l, &p) in lambda.iter().zip(proj.iter()) {
                fitted += p * p * (l + 2.0 * alpha) / (l + alpha).powi(2);
                df += l / (l + alpha);
            }
            let rss = (yy - fitted).max(0.0);
            let denom = (1.0 - df / nf).max(1.0 / nf);
            let gcv = rss / (nf * denom * denom);
            if best.is_none_or(|(_, g)| gcv < g) {
                best = Some((alpha, gcv));
            }
        }
    }
    let (alpha, gcv_mse) = match best {
        Some((a, g)) => (a, Some(g)),
        None => (0.0, None),
    };
    let w: Vec<f64> = if let Some((a, _)) = best {
        let coef = DVector::from_iterator(
            d,
            lambda.iter().zip(proj.iter()).map(|(&l, &p)| p / (l + a)),
        );
        (&eig.eigenvectors * coef).iter().copied().collect()
    } else {
        // Constant x (or a single row): the mean is the prediction.
        vec![0.0; d]
    };
    let bias = mean_y - w.iter().zip(&mean_x).map(|(a, b)| a * b).sum::<f64>();
    let layer = Layer::new(d, 1, w, vec![bias])?;
    Ok(Ridge {
        network: Network::new(d, vec![layer])?,
        alpha,
        gcv_mse,
    })
}
