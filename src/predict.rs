//! Predictions streamed through a model ([`predict_stream`]), and the error statistics that
//! `eval` and the demo report from them ([`ErrorSums`], [`Evaluation`]).

use crate::backend::Backend;
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::network::Network;
use crate::progress::num;

/// Streams x through the model on the backend, handing each chunk's predictions to `sink`. A
/// reader thread reads the next chunk while this one is computed (two chunks in flight).
pub fn predict_stream(
    backend: &dyn Backend,
    model: &Network,
    source: &dyn SampleSource,
    mut sink: impl FnMut(&[f32], &[f32]) -> Result<()>,
) -> Result<()> {
    const CHUNK: usize = 1 << 16;
    let bar = crate::progress::bar(source.len(), "predict");
    if crate::runtime::ranks() > 1 {
        // Under mpirun each rank predicts every P-th chunk and rank 0 consumes them all in order.
        crate::backend::mpi::stream_to_root(
            source,
            CHUNK,
            true,
            |x, rows| backend.predict(model, x, rows),
            |p, y| {
                bar.inc(p.len() as u64);
                sink(p, y)
            },
        )?;
        bar.finish_and_clear();
        return Ok(());
    }
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(Vec<f32>, Vec<f32>)>>(1);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<(Vec<f32>, Vec<f32>)>();
        scope.spawn(move || {
            let mut start = 0u64;
            while start < source.len() {
                let (mut x, mut y) = back_rx.try_recv().unwrap_or_default();
                let read = source.read(start, CHUNK, &mut x, &mut y);
                let stop = match &read {
                    Ok(0) | Err(_) => true,
                    Ok(n) => {
                        start += *n as u64;
                        false
                    }
                };
                if tx.send(read.map(|_| (x, y))).is_err() || stop {
                    return;
                }
            }
        });
        let mut seen = 0u64;
        for chunk in rx {
            let (x, y) = chunk?;
            if y.is_empty() {
                break;
            }
            let p = backend.predict(model, &x, y.len())?;
            bar.inc(y.len() as u64);
            seen += y.len() as u64;
            sink(&p, &y)?;
            let _ = back_tx.send((x, y));
        }
        if seen != source.len() {
            return Err(Error::invalid(format!(
                "{} returned no rows at row {seen} of {}",
                source.describe(),
                source.len()
            )));
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// Sums over streamed (prediction, label) pairs, in row order, in f64.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorSums {
    /// Rows.
    pub n: u64,
    /// Sum of y and of y^2.
    pub sum_y: f64,
    pub sum_y2: f64,
    /// Sum of the squared errors e = (p - y)^2, and of e^2.
    pub sse: f64,
    pub sse2: f64,
}

impl ErrorSums {
    /// Adds a chunk's predictions `p` and labels `y`.
    pub fn add(&mut self, p: &[f32], y: &[f32]) {
        for (&pi, &yi) in p.iter().zip(y) {
            let e = (pi as f64 - yi as f64).powi(2);
            self.n += 1;
            self.sum_y += yi as f64;
            self.sum_y2 += (yi as f64).powi(2);
            self.sse += e;
            self.sse2 += e * e;
        }
    }

    /// Mean squared error.
    pub fn mse(&self) -> f64 {
        self.sse / self.n as f64
    }

    /// Variance of the labels (may round to zero or below for constant labels).
    pub fn label_variance(&self) -> f64 {
        let nf = self.n as f64;
        self.sum_y2 / nf - (self.sum_y / nf).powi(2)
    }

    /// The MSE, its 95% interval and the same relative to Var(y).
    pub fn evaluation(&self) -> Evaluation {
        let nf = self.n as f64;
        let mse = self.mse();
        let var = self.label_variance().max(f64::MIN_POSITIVE);
        // 95% interval of the mean squared error by the central limit theorem.
        let half = 1.96 * ((self.sse2 / nf - mse * mse).max(0.0) / nf).sqrt();
        Evaluation {
            n: self.n,
            mse,
            mse_ci95: [mse - half, mse + half],
            var_y: var,
            relative_mse: mse / var,
            relative_mse_ci95: [(mse - half) / var, (mse + half) / var],
        }
    }
}

/// How well a model predicts labelled samples: what `eval` reports (its JSON has these fields).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Rows.
    pub n: u64,
    /// Mean squared error and its 95% interval (central limit theorem).
    pub mse: f64,
    pub mse_ci95: [f64; 2],
    /// Variance of the labels (at least the smallest positive f64).
    pub var_y: f64,
    /// MSE / Var(y) and its interval.
    pub relative_mse: f64,
    pub relative_mse_ci95: [f64; 2],
}

impl Evaluation {
    /// One human line.
    pub fn line(&self) -> String {
        format!(
            "{} samples: MSE {} (95% interval {} to {}), MSE/Var(y) {} ({} to {})",
            self.n,
            num(self.mse),
            num(self.mse_ci95[0]),
            num(self.mse_ci95[1]),
            num(self.relative_mse),
            num(self.relative_mse_ci95[0]),
            num(self.relative_mse_ci95[1])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorSums;

    #[test]
    fn error_sums_give_the_mse_its_interval_and_the_relative_error() {
        let mut s = ErrorSums::default();
        s.add(&[1.0], &[0.0]);
        s.add(&[2.0], &[2.0]);
        let e = s.evaluation();
        assert_eq!((e.n, e.mse, e.var_y, e.relative_mse), (2, 0.5, 1.0, 0.5));
        // e = [1, 0]: Var(e) = 0.25, half width 1.96 sqrt(0.25 / 2).
        let half = 1.96 * (0.25f64 / 2.0).sqrt();
        assert_eq!(e.mse_ci95, [0.5 - half, 0.5 + half]);
        assert!(e.line().starts_with("2 samples: MSE 0.5"), "{}", e.line());
        // Constant labels: Var(y) is floored at the smallest positive f64, never zero.
        let mut c = ErrorSums::default();
        c.add(&[1.0, 1.0], &[3.0, 3.0]);
        assert_eq!(c.evaluation().var_y, f64::MIN_POSITIVE);
    }
}
