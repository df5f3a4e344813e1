//! Synthetic samples from a teacher network: x ~ N(0, I_d), y = teacher(x) + N(0, noise_sd^2).
//!
//! Reproducibility: rows are generated in fixed blocks of [`BLOCK_ROWS`] rows. Block `b` draws
//! its x values (row by row, d values each) from its own `Xoshiro256PlusPlus` generator and its
//! label noise from a second one; each generator's 256-bit state is the SplitMix64 finaliser of
//! (seed, b, stream tag, a constant), so distinct (seed, block, stream) never share a state.
//! Xoshiro256PlusPlus is one of rand's named portable generators (stable output across releases
//! and platforms), and normals come from `rand_distr::StandardNormal` (ziggurat, f64, rounded to
//! f32). Labels come from `Network::forward_f32` (f64 arithmetic per row, so a row's label does
//! not depend on which rows share its batch); noise is added in f64 before rounding to f32. A read
//! of any row range slices whole blocks, so the bytes depend only on the seed, never
//! on chunk size, start offset or thread count.

use super::SampleSource;
use crate::error::{Error, Result};
use crate::network::Network;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Rows per generator block (part of the reproducibility contract: changing it changes data).
pub const BLOCK_ROWS: u64 = 4096;

/// Stream tags: which generator of a block.
const STREAM_X: u64 = 1;
const STREAM_NOISE: u64 = 2;

/// SplitMix64 finaliser: a bijection on u64 that mixes every input bit into every output bit.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The generator of one (seed, block, stream).
fn block_rng(seed: u64, block: u64, stream: u64) -> Xoshiro256PlusPlus {
    let words = [
        splitmix64(seed),
        splitmix64(block ^ 0x5851_f42d_4c95_7f2d),
        splitmix64(stream ^ 0x1405_7b7e_f767_814f),
        splitmix64(seed ^ block.rotate_left(32) ^ stream.rotate_left(48)),
    ];
    let mut bytes = [0u8; 32];
    for (dst, w) in bytes.chunks_exact_mut(8).zip(words) {
        dst.copy_from_slice(&w.to_le_bytes());
    }
    Xoshiro256PlusPlus::from_seed(bytes)
}

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

    /// Fills rows `lo .. lo + y.len()` of `block` (offsets within the block) into `x`, `y`.
    fn fill_block(&self, block: u64, lo: usize, x: &mut [f32], y: &mut [f32]) {
        let d = self.network.input_dim;
        debug_assert_eq!(x.len(), y.len() * d);
        // Rows before `lo` are drawn and dropped so each row's values do not depend on `lo`.
        let mut rng = block_rng(self.seed, block, STREAM_X);
        for _ in 0..lo * d {
            let _: f64 = rng.sample(StandardNormal);
        }
        for v in x.iter_mut() {
            let z: f64 = rng.sample(StandardNormal);
            *v = z as f32;
        }
        if !y.is_empty() {
            y.copy_from_slice(&self.network.forward_f32(x, y.len()));
        }
        if self.noise_sd > 0.0 {
            let mut rng = block_rng(self.seed, block, STREAM_NOISE);
            for _ in 0..lo {
                let _: f64 = rng.sample(StandardNormal);
            }
            for label in y.iter_mut() {
                let z: f64 = rng.sample(StandardNormal);
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
        let end = start + (rows as u64).min(self.rows - start);
        let n = (end - start) as usize;
        x.clear();
        y.clear();
        x.resize(n * d, 0.0);
        y.resize(n, 0.0);
        // One task per block overlapped by start..end, each owning its slice of the output.
        let mut tasks = Vec::new();
        let (mut x_rest, mut y_rest) = (x.as_mut_slice(), y.as_mut_slice());
        let mut row = start;
        while row < end {
            let block = row / BLOCK_ROWS;
            let lo = row - block * BLOCK_ROWS;
            let take = ((block + 1) * BLOCK_ROWS).min(end) - row;
            let (xb, xr) = x_rest.split_at_mut(take as usize * d);
            let (yb, yr) = y_rest.split_at_mut(take as usize);
            tasks.push((block, lo as usize, xb, yb));
            x_rest = xr;
            y_rest = yr;
            row += take;
        }
        tasks
            .into_par_iter()
            .for_each(|(block, lo, xb, yb)| self.fill_block(block, lo, xb, yb));
        Ok(n)
    }

    /// The generator, seed, size, noise and every weight bit of the teacher (in hex): equal
    /// keys, equal samples, whatever two teachers look alike.
    fn identity(&self) -> Option<String> {
        use std::fmt::Write;
        let mut key = format!(
            "gaussian v1 seed {} rows {} noise {:016x} d {}",
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
