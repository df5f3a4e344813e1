//! Synthetic samples from a teacher network: x ~ N(0, I_d), y = teacher(x) + N(0, noise_sd^2).
//!
//! Reproducibility: every input value is a function of (seed, row, column) only, through the
//! counter-based stream of [`super::philox`] (Philox 4x32-10 and an integer Box-Muller
//! transform), and the label noise of a row through the same stream with its own tag. So the
//! bytes depend only on the seed, never on chunk size, start offset or thread count, and the GPU
//! backend generates the same x on the device bit for bit (see [`Synthetic`]). Labels come from
//! `Network::forward_f32` (f64 arithmetic per row, so a row's label does not depend on which rows
//! share its batch); noise is added in f64 before rounding to f32.

use super::philox;
use super::SampleSource;
use crate::error::{Error, Result};
use crate::network::Network;
use rayon::prelude::*;

/// Rows generated per parallel task by [`GaussianSource::read`] (any value gives the same data).
const TASK_ROWS: usize = 2048;

/// Gaussian inputs labelled by a teacher network, generated on demand (nothing is stored).
#[derive(Clone, Debug)]
pub struct GaussianSource {
    network: Network,
    rows: u64,
    seed: u64,
    noise_sd: f64,
}

impl GaussianSource {
    /// `rows` samples x ~ N(0, I_d) (d = the teacher's input dimension) with labels
    /// `network(x) + noise_sd * N(0, 1)`. Fails on an invalid network or a negative or
    /// non-finite `noise_sd`.
    pub fn new(network: Network, rows: u64, seed: u64, noise_sd: f64) -> Result<GaussianSource> {
        network.validate()?;
        if !(noise_sd.is_finite() && noise_sd >= 0.0) {
            return Err(Error::invalid(format!(
                "label noise sd must be finite and >= 0, got {noise_sd}"
            )));
        }
        if network.input_dim == 0 {
            return Err(Error::invalid("the teacher network has input dimension 0"));
        }
        Ok(GaussianSource {
            network,
            rows,
            seed,
            noise_sd,
        })
    }

    /// The teacher.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Label noise standard deviation.
    pub fn noise_sd(&self) -> f64 {
        self.noise_sd
    }

    /// Fills rows `first .. first + y.len()` into `x`, `y`.
    fn fill(&self, first: u64, x: &mut [f32], y: &mut [f32]) {
        let d = self.network.input_dim;
        debug_assert_eq!(x.len(), y.len() * d);
        philox::fill_rows(self.seed, first, d, x);
        if !y.is_empty() {
            y.copy_from_slice(&self.network.forward_f32(x, y.len()));
        }
        if self.noise_sd > 0.0 {
            for (i, label) in y.iter_mut().enumerate() {
                let z = philox::noise(self.seed, first + i as u64) as f64;
                *label = (*label as f64 + self.noise_sd * z) as f32;
            }
        }
    }
}

impl SampleSource for GaussianSource {
    fn dim(&self) -> usize {
        self.network.input_dim
    }

    fn len(&self) -> u64 {
        self.rows
    }

    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let d = self.network.input_dim;
        let start = start.min(self.rows);
        let n = (rows as u64).min(self.rows - start) as usize;
        x.clear();
        y.clear();
        x.resize(n * d, 0.0);
        y.resize(n, 0.0);
        x.par_chunks_mut(TASK_ROWS * d)
            .zip(y.par_chunks_mut(TASK_ROWS))
            .enumerate()
            .for_each(|(t, (xb, yb))| self.fill(start + (t * TASK_ROWS) as u64, xb, yb));
        Ok(n)
    }

    /// The generator, seed, size, noise and every weight bit of the teacher (in hex): equal
    /// keys, equal samples, whatever two teachers look alike.
    fn identity(&self) -> Option<String> {
        use std::fmt::Write;
        let mut key = format!(
            "gaussian philox v2 seed {} rows {} noise {:016x} d {}",
            self.seed,
            self.rows,
            self.noise_sd.to_bits(),
            self.network.input_dim
        );
        let mut put = |v: &f64| {
            let _ = write!(key, " {:x}", v.to_bits());
        };
        if let Some(p) = &self.network.projection {
            p.iter().flatten().for_each(&mut put);
        }
        for layer in &self.network.layers {
            layer.weights.iter().for_each(&mut put);
            layer.bias.iter().for_each(&mut put);
        }
        let shape: Vec<usize> = self.network.layers.iter().map(|l| l.outputs).collect();
        Some(format!("{key} layers {shape:?}"))
    }

    fn synthetic(&self) -> Option<super::Synthetic> {
        Some(super::Synthetic {
            teacher: self.network.clone(),
            seed: self.seed,
            noise_sd: self.noise_sd,
            first_row: 0,
            rows: self.rows,
            centre: None,
            residual: None,
            groups: None,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} Gaussian samples (d = {}, seed {}, label noise sd {}) from a teacher with hidden widths {:?}",
            self.rows,
            self.network.input_dim,
            self.seed,
            self.noise_sd,
            self.network.hidden_widths()
        )
    }
}
