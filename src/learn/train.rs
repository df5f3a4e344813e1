//! The streaming trainer: Adam on the factorised model x -> B x -> small network over every
//! training row, epoch after epoch, with memory bounded by one window of rows whatever N.
//!
//! Order of the rows: the training rows are cut into blocks of [`BLOCK_ROWS`]; each epoch visits
//! the blocks in a seeded random order, a few at a time (a window of about `window_bytes` of
//! x), and shuffles the rows of each window before cutting it into minibatches. So a minibatch
//! mixes rows from several places of the file (a file sorted by label does not give sorted
//! minibatches), every row is seen once per epoch, and the order depends only on the seed and
//! N, never on the thread count. With one window (N at most a window) the order is a plain
//! shuffle of all rows per epoch, as in the in-memory reference [`super::polish`].
//!
//! The minibatch passes run on the backend ([`Backend::train_window`]), which takes Adam's steps
//! from the host's [`Adam`] (a GPU runs them on the device). A backend that assembles the
//! rows itself ([`Backend::assembles_windows`]: a GPU that draws a built-in teacher's samples
//! or holds a copy of the rows) gets each window's blocks and order instead of its rows
//! ([`Backend::train_window_of`]), so no row is drawn, read or moved on the host. After each
//! epoch the model is scored on the whole validation split (streamed); the epoch with the best
//! validation error is kept, and only if it beats the start.

use super::PolishConfig;
use crate::backend::{Adam, Backend, FactoredShape};
use crate::data::SampleSource;
use crate::error::{Error, Result};
use crate::network::Network;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

/// Rows per block of the epoch order (part of the reproducibility contract: changing it
/// changes the order, so the trained model, for a seed).
pub const BLOCK_ROWS: usize = 4096;

/// Mixed into the seed of the block order, so it is not the row shuffles' stream.
const BLOCK_ORDER_TAG: u64 = 0x0b10_c0de_5eed_0001;

/// What [`train`] returns.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Parameters of the kept model (the start when the trained one did not validate better).
    pub params: Vec<f64>,
    /// Validation MSE of the start.
    pub before: f64,
    /// Validation MSE of the best epoch (may be worse than `before`; then it is not kept).
    pub after: f64,
    /// True when the trained model replaced the start.
    pub kept: bool,
    /// Epochs run.
    pub epochs: usize,
    /// Distinct training rows (after any row cap).
    pub rows: u64,
    /// Adam steps taken.
    pub steps: usize,
}

/// Validation MSE of the compact network of `params` over every row of `val`.
pub fn validation_mse(
    backend: &dyn Backend,
    shape: &FactoredShape,
    params: &[f64],
    val: &dyn SampleSource,
) -> Result<f64> {
    let net = shape.compact(params)?;
    mse(backend, &net, val)
}

/// MSE of a network over every row of `source`, streamed.
pub fn mse(backend: &dyn Backend, net: &Network, source: &dyn SampleSource) -> Result<f64> {
    let sse = backend.sse(&[net], source)?;
    Ok(sse[0] / source.len().max(1) as f64)
}

/// Rows per window for dimension d: whole blocks, at least one.
pub fn window_rows(d: usize, window_bytes: usize) -> usize {
    (window_bytes / (4 * d.max(1)) / BLOCK_ROWS).max(1) * BLOCK_ROWS
}

/// Rows of x and y (a block as read, or a shuffled window); or, for a backend that assembles
/// windows itself, only the window's blocks and its order.
#[derive(Clone, Default)]
struct Window {
    x: Vec<f32>,
    y: Vec<f32>,
    /// (first row, rows) of each block, when the backend assembles the window.
    blocks: Vec<(u64, usize)>,
    /// The window's row order, when the backend assembles the window.
    order: Vec<u32>,
}

/// The order of a window's rows: its blocks concatenated, shuffled by `rng` (the one stream
/// of shuffles, whether the host or the backend assembles the rows).
fn window_order(
    window: &[usize],
    block_len: &impl Fn(usize) -> usize,
    rng: &mut rand::rngs::StdRng,
) -> Vec<usize> {
    let len: usize = window.iter().map(|&b| block_len(b)).sum();
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(rng);
    order
}

/// Reads the blocks of `window` into `blocks` and gathers their rows, shuffled by `rng`, into
/// `out`.
fn read_window(
    train: &dyn SampleSource,
    window: &[usize],
    block_len: &(impl Fn(usize) -> usize + Sync),
    blocks: &mut [Window],
    rng: &mut rand::rngs::StdRng,
    mut out: Window,
) -> Result<Window> {
    let d = train.dim();
    // The blocks in parallel: a generated block (a built-in teacher) is only two tasks of work,
    // and files take parallel positioned reads.
    window
        .par_iter()
        .zip(blocks.par_iter_mut())
        .try_for_each(|(&b, buf)| -> Result<()> {
            let want = block_len(b);
            let got = train.read((b * BLOCK_ROWS) as u64, want, &mut buf.x, &mut buf.y)?;
            if got != want {
                return Err(Error::invalid(format!(
                    "{} returned {got} rows at row {} where {want} were expected",
                    train.describe(),
                    b * BLOCK_ROWS
                )));
            }
            Ok(())
        })?;
    let order = window_order(window, block_len, rng);
    let len = order.len();
    let at: Vec<(usize, usize)> = order
        .iter()
        .map(|&k| locate(window, k, block_len))
        .collect();
    out.x.resize(len * d, 0.0);
    out.y.resize(len, 0.0);
    let blocks = &*blocks;
    out.x
        .par_chunks_mut(d.max(1))
        .zip(out.y.par_iter_mut())
        .zip(at.par_iter())
        .for_each(|((x, y), &(j, i))| {
            x.copy_from_slice(&blocks[j].x[i * d..(i + 1) * d]);
            *y = blocks[j].y[i];
        });
    Ok(out)
}

/// Which block of `window` (its position) and which row of it is row `k` of the window, the
/// blocks taken in order.
fn locate(window: &[usize], mut k: usize, block_len: &impl Fn(usize) -> usize) -> (usize, usize) {
    for (j, &b) in window.iter().enumerate() {
        let len = block_len(b);
        if k < len {
            return (j, k);
        }
        k -= len;
    }
    unreachable!("row index within the window")
}

/// The block order of every epoch, cut into windows (lists of block indices).
fn epoch_windows(
    blocks: usize,
    per_window: usize,
    epochs: usize,
    seed: u64,
) -> Vec<Vec<Vec<usize>>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ BLOCK_ORDER_TAG);
    (0..epochs)
        .map(|_| {
            let mut order: Vec<usize> = (0..blocks).collect();
            order.shuffle(&mut rng);
            order.chunks(per_window).map(<[usize]>::to_vec).collect()
        })
        .collect()
}

/// Adam on every row of `train` from `start` (parameters in the [`FactoredShape`] layout),
/// scoring each epoch on `val`; B is trained only when `train_basis`. See the module docs.
pub fn train(
    backend: &dyn Backend,
    train: &dyn SampleSource,
    val: &dyn SampleSource,
    shape: &FactoredShape,
    start: &[f64],
    train_basis: bool,
    config: &PolishConfig,
) -> Result<TrainOutcome> {
    let d = shape.input_dim;
    if train.dim() != d || val.dim() != d || train.is_empty() || val.is_empty() {
        return Err(Error::invalid(format!(
            "trainer: training ({} rows of d = {}) and validation ({} rows of d = {}) samples must be non-empty and match the model's d = {d}",
            train.len(),
            train.dim(),
            val.len(),
            val.dim()
        )));
    }
    if start.len() != shape.params() || config.batch_size == 0 {
        return Err(Error::invalid(format!(
            "trainer: {} start parameters for a shape with {}, batch size {}",
            start.len(),
            shape.params(),
            config.batch_size
        )));
    }
    let n = (train.len() as usize).min(config.max_rows.max(1));
    let blocks = n.div_ceil(BLOCK_ROWS);
    let block_len = |b: usize| BLOCK_ROWS.min(n - b * BLOCK_ROWS);
    let per_window = window_rows(d, config.window_bytes) / BLOCK_ROWS;
    let epochs = config.epochs_for(n);
    let plan = epoch_windows(blocks, per_window, epochs, config.seed);
    let batch = config.batch_size;
    let total_steps: usize = plan
        .iter()
        .flatten()
        .map(|w| {
            w.iter()
                .map(|&b| block_len(b))
                .sum::<usize>()
                .div_ceil(batch)
        })
        .sum();

    let before = validation_mse(backend, shape, start, val)?;
    let mut p = start.to_vec();
    let mut adam = Adam::new(p.len(), config.learning_rate, total_steps);
    let mut best = (f64::INFINITY, p.clone());
    // A reader thread reads and shuffles the next window while the backend trains on this one
    // (two windows in flight, so memory stays bounded); the shuffles run in window order on
    // that one thread, so the order does not depend on timing.
    let windows = plan.iter().map(Vec::len).collect::<Vec<_>>();
    // A backend that draws the rows itself gets only each window's blocks and order.
    let assembled = backend.assembles_windows(train);
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Window>>(1);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Window>();
        let plan = &plan;
        let block_len = &block_len;
        scope.spawn(move || {
            let mut blocks = vec![Window::default(); per_window];
            let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
            for window in plan.iter().flatten() {
                let out = back_rx.try_recv().unwrap_or_default();
                let built = if assembled {
                    Ok(Window {
                        blocks: window
                            .iter()
                            .map(|&b| ((b * BLOCK_ROWS) as u64, block_len(b)))
                            .collect(),
                        order: window_order(window, block_len, &mut rng)
                            .into_iter()
                            .map(|k| k as u32)
                            .collect(),
                        ..Window::default()
                    })
                } else {
                    read_window(train, window, block_len, &mut blocks, &mut rng, out)
                };
                let failed = built.is_err();
                if tx.send(built).is_err() || failed {
                    return;
                }
            }
        });
        for count in windows {
            for _ in 0..count {
                let w = rx.recv().map_err(|_| {
                    Error::invalid("trainer: the reader thread stopped without an error")
                })??;
                if assembled {
                    backend.train_window_of(
                        shape,
                        train_basis,
                        train,
                        &w.blocks,
                        &w.order,
                        batch,
                        &mut p,
                        &mut adam,
                    )?;
                } else {
                    backend.train_window(
                        shape,
                        train_basis,
                        &w.x,
                        &w.y,
                        batch,
                        &mut p,
                        &mut adam,
                    )?;
                }
                // The reader may be gone after the last window.
                let _ = back_tx.send(w);
            }
            if p.iter().any(|v| !v.is_finite()) {
                // Diverged: no later epoch can recover, and the best so far stands.
                break;
            }
            let mse = validation_mse(backend, shape, &p, val)?;
            if mse < best.0 {
                best = (mse, p.clone());
            }
        }
        Ok(())
    })?;
    let after = if epochs == 0 { before } else { best.0 };
    let kept = after < before;
    Ok(TrainOutcome {
        params: if kept { best.1 } else { start.to_vec() },
        before,
        after,
        kept,
        epochs,
        rows: n as u64,
        steps: adam.steps(),
    })
}
