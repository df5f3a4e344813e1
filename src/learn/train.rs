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
    /// Training rows read, repeats included.
    pub row_reads: u64,
    /// Why the stage ended.
    pub stop: StopReason,
    /// The validation checks in order (per epoch without a stop rule).
    pub curve: Vec<Check>,
}

impl TrainOutcome {
    /// The best validation MSE of its last check (on the check rows, what races compare);
    /// None before any check.
    pub fn best_checked(&self) -> Option<f64> {
        self.curve.last().map(|c| c.best_mse)
    }
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
/// windows itself, only the window's blocks and its order; with [`ResidentZ`], also the
/// window's rows of z (and y).
#[derive(Clone, Default)]
struct Window {
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f64>,
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
    // Rows held in memory are gathered from where they are: copying them into blocks first
    // would double the memory traffic of an in-memory source.
    let borrowed: Option<Vec<(&[f32], &[f32])>> = window
        .iter()
        .map(|&b| train.in_memory((b * BLOCK_ROWS) as u64, block_len(b)))
        .collect();
    if borrowed.is_none() {
        // The blocks in parallel: a generated block (a built-in teacher) is only two tasks of
        // work, and files take parallel positioned reads.
        window
            .par_iter()
            .zip(blocks.par_iter_mut())
            .try_for_each(|(&b, buf)| -> Result<()> {
                let want = block_len(b);
                train.read((b * BLOCK_ROWS) as u64, want, &mut buf.x, &mut buf.y)?;
                Ok(())
            })?;
    }
    let rows: Vec<(&[f32], &[f32])> = match borrowed {
        Some(rows) => rows,
        None => blocks.iter().map(|w| (&w.x[..], &w.y[..])).collect(),
    };
    for (&b, (_, y)) in window.iter().zip(&rows) {
        let want = block_len(b);
        if y.len() != want {
            return Err(Error::invalid(format!(
                "{} returned {} rows at row {} where {want} were expected",
                train.describe(),
                y.len(),
                b * BLOCK_ROWS
            )));
        }
    }
    let order = window_order(window, block_len, rng);
    let len = order.len();
    let at: Vec<(usize, usize)> = order
        .iter()
        .map(|&k| locate(window, k, block_len))
        .collect();
    out.x.resize(len * d, 0.0);
    out.y.resize(len, 0.0);
    out.x
        .par_chunks_mut(d.max(1))
        .zip(out.y.par_iter_mut())
        .zip(at.par_iter())
        .for_each(|((x, y), &(j, i))| {
            x.copy_from_slice(&rows[j].0[i * d..(i + 1) * d]);
            *y = rows[j].1[i];
        });
    Ok(out)
}

/// The most bytes [`ResidentZ`] may hold: a bound that does not grow with N (at r = 4, 7e6
/// training rows; beyond it the trainer reads and projects each window as before).
const RESIDENT_Z_BYTES: u64 = 256 << 20;

/// z = B x (f64, row by row as the CPU trainer computes it from a window of x) and the labels
/// of the first rows of the training source, for a stage with B fixed on the host: each pass
/// then reads r numbers of a row from memory instead of reading d from the source and
/// projecting them again (the deep net reads 40 to 80 passes), and the windows, gathered in
/// the same order, give the same steps and the same bits.
struct ResidentZ {
    rank: usize,
    z: Vec<f64>,
    y: Vec<f32>,
}

impl ResidentZ {
    /// The first `n` rows of `train` for the basis in `start`; None when they would take
    /// more than [`RESIDENT_Z_BYTES`] or a quarter of the memory available.
    fn of(
        train: &dyn SampleSource,
        n: usize,
        shape: &FactoredShape,
        start: &[f64],
    ) -> Result<Option<ResidentZ>> {
        let (r, d) = (shape.rank(), shape.input_dim);
        let bytes = (n * (8 * r + 4)) as u64;
        let room = crate::safety::available_memory().map_or(u64::MAX, |m| m / 4);
        if bytes > RESIDENT_Z_BYTES.min(room) {
            return Ok(None);
        }
        let basis = &start[..shape.basis_len()];
        let mut out = ResidentZ {
            rank: r,
            z: Vec::with_capacity(n * r),
            y: Vec::with_capacity(n),
        };
        let rows = crate::data::SampleRange::new(train, 0, n as u64)?;
        crate::data::for_each_chunk(&rows, 1 << 14, |_, x, y| {
            out.z
                .extend(crate::backend::cpu::project::project_f64(basis, d, x));
            out.y.extend_from_slice(y);
            Ok(())
        })?;
        Ok(Some(out))
    }

    /// The rows of window `w` (its blocks, taken in its order) into its `z` and `y`.
    fn gather(&self, w: &mut Window) {
        let r = self.rank;
        let mut firsts = Vec::with_capacity(w.blocks.len());
        let mut at = 0usize;
        for &(first, len) in &w.blocks {
            firsts.push((at, first as usize));
            at += len;
        }
        w.z.clear();
        w.y.clear();
        for &k in &w.order {
            let k = k as usize;
            let j = firsts.partition_point(|&(start, _)| start <= k) - 1;
            let row = firsts[j].1 + (k - firsts[j].0);
            w.z.extend_from_slice(&self.z[row * r..(row + 1) * r]);
            w.y.push(self.y[row]);
        }
    }
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

/// When the streaming trainer ends a stage before its planned passes ("stop when done"). The
/// step size decays linearly to zero over the planned passes ([`PolishConfig::epochs_for`]);
/// every `check_rows` row reads the model is scored on the check rows, paired row by row with
/// the best model so far. When no check within `patience_rows` row reads has improved on it
/// significantly, the step size decays to zero over a last stretch (`finish_fraction` of the
/// row reads so far: a decaying step size makes its gains at the end) and the stage ends there,
/// keeping its best checked model. Every quantity is counted in row reads and validation
/// errors, never in seconds, so the same seed gives the same model on any machine.
#[derive(Clone, Debug, PartialEq)]
pub struct StopRule {
    /// Row reads between validation checks (rounded up to whole windows; at most one epoch).
    pub check_rows: u64,
    /// The decay starts when no check within this many row reads improved on the best model
    /// significantly (see `z`).
    pub patience_rows: u64,
    /// A check's model improves on the best one significantly when its squared error, paired
    /// row by row with the best model's on the check rows, is lower on average by more than
    /// `z` standard errors of that mean difference.
    pub z: f64,
    /// Validation rows the checks score (the first ones of the split); the kept model is
    /// scored on the whole split at the end.
    pub check_val_rows: u64,
    /// Row reads of the last stretch once patience runs out, as a fraction of the row reads
    /// before it (at least one check's worth, at most what the plan has left).
    pub finish_fraction: f64,
    /// When the checks since the last gain sat well above the best (their median error at
    /// least this many times the best's), the step size, not the data, held the error up:
    /// the decay is what pays, and a longer one pays more, so the last stretch is
    /// `step_noise_finish_fraction` of the row reads before it instead. Infinite: never.
    pub step_noise_ratio: f64,
    /// See `step_noise_ratio`.
    pub step_noise_finish_fraction: f64,
    /// Patience starts only at the first significant gain: for a stage that fine-tunes a
    /// trained model, whose first steps often cost more than they gain before the decaying
    /// step size pays them back (the polish). Otherwise it runs from the stage's start, so a
    /// stage that starts where it cannot improve stops after `patience_rows`.
    pub wait_for_gain: bool,
    /// A gain also has to be material: the best error must have fallen, since the last gain,
    /// by more than `z` standard errors of the validation error itself (MSE sqrt(2 / rows)
    /// for near-Gaussian residuals), not only of the paired difference, which on 32 768 rows
    /// finds a 0.1% gain significant.
    pub material: bool,
}

impl Default for StopRule {
    fn default() -> Self {
        StopRule {
            check_rows: 250_000,
            patience_rows: 750_000,
            z: 2.0,
            check_val_rows: 32_768,
            finish_fraction: 0.25,
            step_noise_ratio: f64::INFINITY,
            step_noise_finish_fraction: 0.25,
            wait_for_gain: false,
            material: false,
        }
    }
}

/// Why a trainer stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// It read every planned pass (no stop rule, or the decay ran into the plan's end).
    Planned,
    /// The validation error stopped improving; the last stretch that followed has ended.
    Plateau,
    /// The time budget ran out (the decay was started early enough to end by then, as far as
    /// the measured speed allowed).
    Deadline,
    /// The parameters became non-finite; the best model before that stands.
    Diverged,
    /// It lost a [`Race`]: another stage was better after as many row reads.
    Behind,
    /// It lost to a rival ([`Limits::rival`]): another candidate's pilot was better after as
    /// many row reads, so that candidate is trained instead.
    Outpaced,
    /// It was a pilot ([`Limits::pilot`]) and read its row reads.
    Pilot,
    /// A check reached the target error ([`Limits::target`]).
    Target,
    /// A check caught up with the best model so far ([`Limits::caught_up`]).
    CaughtUp,
}

impl StopReason {
    /// A word for the report.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Planned => "planned passes",
            StopReason::Plateau => "plateau",
            StopReason::Deadline => "time budget",
            StopReason::Diverged => "diverged",
            StopReason::Behind => "behind the descent",
            StopReason::Outpaced => "outpaced",
            StopReason::Pilot => "pilot",
            StopReason::Target => "target reached",
            StopReason::CaughtUp => "caught up",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Reports write it as [`StopReason::as_str`].
impl serde::Serialize for StopReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One validation check of a trainer stage.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Check {
    /// Row reads of the stage so far.
    pub row_reads: u64,
    /// Wall seconds since the stage began.
    pub seconds: f64,
    /// Validation MSE of the model at this check (on the check rows with a stop rule, on the
    /// whole split per epoch without).
    pub validation_mse: f64,
    /// Validation MSE of the best model so far (what the stage would return if it ended here).
    pub best_mse: f64,
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
    train_until(
        backend,
        train,
        val,
        shape,
        start,
        train_basis,
        config,
        &Limits::default(),
    )
}

/// [`paired_sums`] with the best model's outputs on `val` kept from the check that made it the
/// best (`best_out`; computed when None): the same sums in the same order, one prediction a
/// check instead of two. Also returns cur's outputs. Only for a backend that scores `val` in
/// one pass on this process (not split across MPI ranks).
fn paired_sums_kept(
    backend: &dyn Backend,
    cur: &Network,
    best: &Network,
    best_out: &mut Option<Vec<f32>>,
    val: &dyn SampleSource,
) -> Result<([f64; 4], Vec<f32>)> {
    use crate::backend::SCORE_CHUNK_ROWS;
    use crate::data::for_each_chunk;
    if best_out.is_none() {
        let mut out = Vec::with_capacity(val.len() as usize);
        for_each_chunk(val, SCORE_CHUNK_ROWS, |_, x, y| {
            out.extend(backend.predict(best, x, y.len())?);
            Ok(())
        })?;
        *best_out = Some(out);
    }
    let kept = best_out.as_deref().unwrap_or_default();
    let mut s = [0f64; 4];
    let mut cur_out = Vec::with_capacity(val.len() as usize);
    for_each_chunk(val, SCORE_CHUNK_ROWS, |start, x, y| {
        let pc = backend.predict(cur, x, y.len())?;
        let pb = &kept[start as usize..start as usize + y.len()];
        add_paired(&mut s, &pc, pb, y);
        cur_out.extend_from_slice(&pc);
        Ok(())
    })?;
    Ok((s, cur_out))
}

/// Adds to `s` the paired sums of [`paired_sums`] over rows with labels `y`, cur's outputs `pc`
/// and best's `pb`, row after row.
fn add_paired(s: &mut [f64], pc: &[f32], pb: &[f32], y: &[f32]) {
    for ((&u, &v), &t) in pc.iter().zip(pb).zip(y) {
        let ec = (u as f64 - t as f64).powi(2);
        let diff = ec - (v as f64 - t as f64).powi(2);
        s[0] += 1.0;
        s[1] += ec;
        s[2] += diff;
        s[3] += diff * diff;
    }
}

/// Squared-error sums of the model `cur` on `val`, paired row by row with `best`: rows, the sum
/// of cur's squared errors, and the sum and the sum of squares of (cur's - best's).
fn paired_sums(
    backend: &dyn Backend,
    cur: &Network,
    best: &Network,
    val: &dyn SampleSource,
) -> Result<[f64; 4]> {
    let sums = backend.row_sums(val, 4, &mut |rows| {
        let mut s = vec![0f64; 4];
        crate::data::for_each_chunk(rows, crate::backend::SCORE_CHUNK_ROWS, |_, x, y| {
            let pc = backend.predict(cur, x, y.len())?;
            let pb = backend.predict(best, x, y.len())?;
            add_paired(&mut s, &pc, &pb, y);
            Ok(())
        })?;
        Ok(s)
    })?;
    Ok([sums[0], sums[1], sums[2], sums[3]])
}

/// A race against another stage's validation curve: at the first check after `at` row reads,
/// the stage ends ([`StopReason::Behind`]) unless its best model is better than the other
/// stage's best after as many row reads (the other's last check at or before them, else its
/// first). Both curves must come from the same check rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Race {
    pub at: u64,
    pub against: Vec<Check>,
    /// The stage goes on when its best is below `margin` times the other's.
    pub margin: f64,
}

impl Race {
    /// The other stage's best after at most `reads` row reads.
    pub fn incumbent_at(&self, reads: u64) -> Option<f64> {
        self.against
            .iter()
            .take_while(|c| c.row_reads <= reads)
            .last()
            .or(self.against.first())
            .map(|c| c.best_mse)
    }

    /// Whether a stage whose best after `reads` row reads is `best` has lost the race.
    pub fn behind(&self, best: f64, reads: u64) -> bool {
        self.incumbent_at(reads)
            .is_some_and(|other| best >= self.margin * other)
    }
}

/// What may end a trainer stage besides its own rule: a wall-clock deadline, a race, and the
/// length of a pilot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// The step size is made to reach zero by this time (at the speed measured so far in the
    /// stage), and the stage ends there with the best model so far. Only a deadline makes the
    /// result depend on the machine's speed.
    pub deadline: Option<std::time::Instant>,
    pub race: Option<Race>,
    /// The stage ends ([`StopReason::Pilot`]) at the first check after this many row reads.
    pub pilot: Option<u64>,
    /// A race against another candidate's pilot: lost, the stage ends
    /// ([`StopReason::Outpaced`]) and the caller trains that candidate instead.
    pub rival: Option<Race>,
    /// The stage ends ([`StopReason::Target`]) at the first check whose validation MSE (on
    /// the check rows) is at or below this.
    pub target: Option<f64>,
    /// The stage ends ([`StopReason::CaughtUp`]) at the first check whose validation MSE (on
    /// the check rows) is at or below this: the best model's so far, when what this stage
    /// adds is a start for the next one rather than a lower error of its own.
    pub caught_up: Option<f64>,
}

/// [`train`] within [`Limits`].
#[allow(clippy::too_many_arguments)]
pub fn train_until(
    backend: &dyn Backend,
    train: &dyn SampleSource,
    val: &dyn SampleSource,
    shape: &FactoredShape,
    start: &[f64],
    train_basis: bool,
    config: &PolishConfig,
    limits: &Limits,
) -> Result<TrainOutcome> {
    check_stage(train, val, shape, start, config)?;
    let clock = std::time::Instant::now();
    let n = (train.len() as usize).min(config.max_rows.max(1));
    let blocks = n.div_ceil(BLOCK_ROWS);
    let block_len = |b: usize| BLOCK_ROWS.min(n - b * BLOCK_ROWS);
    let per_window = window_rows(shape.input_dim, config.window_bytes) / BLOCK_ROWS;
    let epochs = config.epochs_for(n);
    let plan = epoch_windows(blocks, per_window, epochs, config.seed);
    let batch = config.batch_size;
    let total_steps: usize = (plan.iter().flatten())
        .map(|w| {
            w.iter()
                .map(|&b| block_len(b))
                .sum::<usize>()
                .div_ceil(batch)
        })
        .sum();

    let before = validation_mse(backend, shape, start, val)?;
    let mut p = start.to_vec();
    // A deadline needs checks, so that the model at the deadline is scored: without a stop
    // rule it gets one that never stops early.
    let checks_only = StopRule {
        patience_rows: u64::MAX,
        ..StopRule::default()
    };
    let limited = limits.deadline.is_some()
        || limits.race.is_some()
        || limits.rival.is_some()
        || limits.pilot.is_some()
        || limits.target.is_some()
        || limits.caught_up.is_some();
    let rule = config.stop.as_ref().or(limited.then_some(&checks_only));
    let mut adam = Adam::new(p.len(), config.learning_rate, total_steps);
    // The check rows.
    let check_val = match rule {
        Some(r) => Some(crate::data::SampleRange::new(
            val,
            0,
            val.len().min(r.check_val_rows.max(1)),
        )?),
        None => None,
    };
    let waits = rule.is_some_and(|r| r.wait_for_gain);
    let planned_reads = (n * epochs) as u64;
    let mut progress = Progress::new(clock, start, shape.compact(start)?, planned_reads, waits);
    progress.keep_outputs = backend.trains_on_host();
    let check_every = rule.map_or(1, |r| r.check_rows.clamp(1, n as u64));
    let mut epochs_run = 0usize;
    // A reader thread reads and shuffles the next window while the backend trains on this one
    // (two windows in flight, so memory stays bounded); the shuffles run in window order on
    // that one thread, so the order does not depend on timing.
    let windows = plan.iter().map(Vec::len).collect::<Vec<_>>();
    // With B fixed on a host trainer, z = B x of the rows is computed once and each window's
    // rows gathered from it; a backend that draws the rows itself gets only each window's
    // blocks and order. Either way the reader sends only those.
    let resident = if train_basis || !backend.trains_on_host() {
        None
    } else {
        ResidentZ::of(train, n, shape, start)?
    };
    let assembled = resident.is_some() || backend.assembles_windows(train);
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Window>>(1);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Window>();
        let reader = WindowReader {
            train,
            plan: &plan,
            per_window,
            block_len: &block_len,
            assembled,
            resident: resident.as_ref(),
            seed: config.seed,
        };
        scope.spawn(move || reader.send_all(tx, back_rx));
        'epochs: for (epoch, count) in windows.into_iter().enumerate() {
            for k in 0..count {
                let w = rx.recv().map_err(|_| {
                    Error::invalid("trainer: the reader thread stopped without an error")
                })??;
                if resident.is_some() {
                    crate::backend::cpu::trainer::train_window_on_z(
                        shape, &w.z, &w.y, batch, &mut p, &mut adam,
                    )?;
                } else if assembled {
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
                progress.reads += if assembled { w.order.len() } else { w.y.len() } as u64;
                // The reader may be gone after the last window.
                let _ = back_tx.send(w);
                let Some(rule) = rule else {
                    continue;
                };
                if p.iter().any(|v| !v.is_finite()) {
                    progress.reason = StopReason::Diverged;
                    break 'epochs;
                }
                if let Some(t) = limits.deadline {
                    progress.follow_deadline(t, &mut adam);
                }
                let last =
                    (epoch + 1 == epochs && k + 1 == count) || progress.reads >= progress.end;
                if progress.reads - progress.last_check < check_every && !last {
                    continue;
                }
                let check = check_val.as_ref().expect("check rows with a stop rule");
                progress.check(backend, shape, &p, check, rule)?;
                if let Some(reason) = progress.decide(rule, limits, check_every, &mut adam) {
                    progress.reason = reason;
                    break 'epochs;
                }
            }
            epochs_run = epoch + 1;
            if rule.is_some() {
                continue;
            }
            if p.iter().any(|v| !v.is_finite()) {
                // Diverged: no later epoch can recover, and the best so far stands.
                progress.reason = StopReason::Diverged;
                break;
            }
            let mse = validation_mse(backend, shape, &p, val)?;
            progress.record(mse, &p);
        }
        Ok(())
    })?;
    let best = progress.best;
    let after = match rule {
        None if epochs == 0 => before,
        None => best.0,
        // The best model on the whole split (the start when no check beat it).
        Some(_) if progress.best_trained => validation_mse(backend, shape, &best.1, val)?,
        Some(_) => before,
    };
    let kept = after < before;
    Ok(TrainOutcome {
        params: if kept { best.1 } else { start.to_vec() },
        before,
        after,
        kept,
        epochs: epochs_run,
        rows: n as u64,
        steps: adam.steps(),
        row_reads: progress.reads,
        stop: progress.reason,
        curve: progress.curve,
    })
}

/// The checks of a stage's inputs: non-empty samples of the model's d, parameters of its shape.
fn check_stage(
    train: &dyn SampleSource,
    val: &dyn SampleSource,
    shape: &FactoredShape,
    start: &[f64],
    config: &PolishConfig,
) -> Result<()> {
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
    Ok(())
}

/// The reader thread's work: each window of the plan in order, its rows read and shuffled (or,
/// when the backend assembles windows, only its blocks and order).
struct WindowReader<'a, F> {
    train: &'a dyn SampleSource,
    plan: &'a [Vec<Vec<usize>>],
    per_window: usize,
    block_len: &'a F,
    assembled: bool,
    /// Gathers each window's z (and y) too: the reader thread does it while the trainer
    /// trains on the window before (8% of the deep-net stage's time on the trainer's own).
    resident: Option<&'a ResidentZ>,
    seed: u64,
}

impl<F: Fn(usize) -> usize + Sync> WindowReader<'_, F> {
    /// Sends the windows in order, reusing the buffers that come back; stops at the first
    /// error or when the trainer hangs up.
    fn send_all(
        self,
        tx: std::sync::mpsc::SyncSender<Result<Window>>,
        back_rx: std::sync::mpsc::Receiver<Window>,
    ) {
        let mut blocks = vec![Window::default(); self.per_window];
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        for window in self.plan.iter().flatten() {
            let out = back_rx.try_recv().unwrap_or_default();
            let built = if self.assembled {
                let mut w = Window {
                    blocks: window
                        .iter()
                        .map(|&b| ((b * BLOCK_ROWS) as u64, (self.block_len)(b)))
                        .collect(),
                    order: window_order(window, self.block_len, &mut rng)
                        .into_iter()
                        .map(|k| k as u32)
                        .collect(),
                    z: out.z,
                    y: out.y,
                    ..Window::default()
                };
                if let Some(resident) = self.resident {
                    resident.gather(&mut w);
                }
                Ok(w)
            } else {
                read_window(
                    self.train,
                    window,
                    self.block_len,
                    &mut blocks,
                    &mut rng,
                    out,
                )
            };
            let failed = built.is_err();
            if tx.send(built).is_err() || failed {
                return;
            }
        }
    }
}

/// Where a stage stands: its row reads, its best model, its checks, and where its step size
/// reaches zero.
struct Progress {
    clock: std::time::Instant,
    /// Row reads the plan makes.
    planned_reads: u64,
    reads: u64,
    /// The best (check error, parameters), and the best as a network (the start until a check
    /// beats it; the error is infinite before the first check).
    best: (f64, Vec<f64>),
    best_net: Network,
    /// The best model's outputs on the check rows, when kept ([`paired_sums_kept`]).
    keep_outputs: bool,
    best_out: Option<Vec<f32>>,
    /// With a stop rule: whether a check's model replaced the start as the best.
    best_trained: bool,
    curve: Vec<Check>,
    reason: StopReason,
    /// Row reads at the last significant improvement (None before the first) and at the last
    /// check, and where the step size reaches zero (the plan's end, or sooner when a deadline
    /// says so).
    last_gain: Option<u64>,
    /// The best error at the last gain (the start's before the first).
    gain_mse: f64,
    last_check: u64,
    end: u64,
    /// Whether the race and the rival's race have been decided.
    raced: bool,
    raced_rival: bool,
    /// Whether patience ran out and the stage is in its last stretch, and where the step size
    /// would reach zero without a deadline (the plan's end, or the last stretch's).
    finishing: bool,
    cap: u64,
    /// When and at how many row reads the first window ended (the deadline's speed counts
    /// from there).
    since: Option<(std::time::Instant, u64)>,
}

impl Progress {
    fn new(
        clock: std::time::Instant,
        start: &[f64],
        start_net: Network,
        planned_reads: u64,
        waits: bool,
    ) -> Self {
        Progress {
            clock,
            planned_reads,
            reads: 0,
            best: (f64::INFINITY, start.to_vec()),
            best_net: start_net,
            keep_outputs: false,
            best_out: None,
            best_trained: false,
            curve: Vec::new(),
            reason: StopReason::Planned,
            last_gain: (!waits).then_some(0),
            gain_mse: f64::INFINITY,
            last_check: 0,
            end: planned_reads,
            raced: false,
            raced_rival: false,
            finishing: false,
            cap: planned_reads,
            since: None,
        }
    }

    /// The deadline: at the speed measured so far (from the end of the first window, so that
    /// the stage's start-up does not count), the rows left before it; the step size is made to
    /// reach zero there (never past the plan's end).
    fn follow_deadline(&mut self, t: std::time::Instant, adam: &mut Adam) {
        let reads = self.reads;
        let now = std::time::Instant::now();
        let (t0, r0) = *self.since.get_or_insert((now, reads));
        let rate = if reads > r0 {
            (reads - r0) as f64 / (now - t0).as_secs_f64().max(1e-9)
        } else {
            reads as f64 / self.clock.elapsed().as_secs_f64().max(1e-9)
        };
        let secs = t.saturating_duration_since(now).as_secs_f64();
        let want = (reads + (secs * rate) as u64).min(self.cap);
        if secs <= 0.0 {
            // The time is up: this window's model is the stage's last.
            self.end = reads;
        } else if want.abs_diff(self.end) * 20 > self.end.saturating_sub(reads).max(1) {
            // Re-planned when it moves by more than 5% of what is left.
            let left = want.saturating_sub(reads).max(1);
            decay_over_reads(adam, reads, left);
            self.end = reads + left;
        }
    }

    /// Scores the current parameters `p` on the check rows, paired with the best so far, and
    /// keeps them when they are better; a significant gain resets the patience.
    fn check(
        &mut self,
        backend: &dyn Backend,
        shape: &FactoredShape,
        p: &[f64],
        check_rows: &dyn SampleSource,
        rule: &StopRule,
    ) -> Result<()> {
        let z = rule.z;
        self.last_check = self.reads;
        let cur = shape.compact(p)?;
        let ([rows, sse, sd, sd2], cur_out) = if self.keep_outputs {
            let best = &self.best_net;
            let (sums, out) =
                paired_sums_kept(backend, &cur, best, &mut self.best_out, check_rows)?;
            (sums, Some(out))
        } else {
            (
                paired_sums(backend, &cur, &self.best_net, check_rows)?,
                None,
            )
        };
        let rows = rows.max(1.0);
        let mse = sse / rows;
        let mean = sd / rows;
        let se = ((sd2 / rows - mean * mean).max(0.0) / rows).sqrt();
        // Before the first check, the start's error on the check rows.
        let best_mse = if self.best.0.is_finite() {
            self.best.0
        } else {
            mse - mean
        };
        let reference = self.gain_mse.min(best_mse);
        let material = !rule.material || reference - mse > z * mse * (2.0 / rows).sqrt();
        if mean < -z * se && material {
            self.last_gain = Some(self.reads);
            self.gain_mse = mse;
        }
        if mse < best_mse {
            self.best = (mse, p.to_vec());
            self.best_net = cur;
            self.best_out = cur_out;
            self.best_trained = true;
        } else {
            self.best.0 = best_mse;
        }
        self.push_check(mse);
        Ok(())
    }

    /// After a check: why the stage ends now, if it does (its step size's end, a pilot's
    /// length, a lost race). When patience has run out, the step size decays to zero over a
    /// last stretch (the gains of a decaying step size come at its end), and the stage ends
    /// there.
    fn decide(
        &mut self,
        rule: &StopRule,
        limits: &Limits,
        check_every: u64,
        adam: &mut Adam,
    ) -> Option<StopReason> {
        let reads = self.reads;
        if reads >= self.end && reads < self.planned_reads {
            return Some(if self.end < self.cap {
                StopReason::Deadline
            } else {
                StopReason::Plateau
            });
        }
        // Patience runs from the last significant gain (see `wait_for_gain`).
        let out_of_patience =
            (self.last_gain).filter(|&g| !self.finishing && reads - g >= rule.patience_rows);
        if let Some(gain) = out_of_patience {
            self.finishing = true;
            let fraction = if self.median_excess(gain) >= rule.step_noise_ratio {
                rule.step_noise_finish_fraction
            } else {
                rule.finish_fraction
            };
            let left = ((fraction * reads as f64) as u64)
                .max(check_every)
                .min(self.end - reads);
            self.cap = reads + left;
            if self.cap < self.end {
                decay_over_reads(adam, reads, left);
                self.end = self.cap;
            }
        }
        if limits.pilot.is_some_and(|p| reads >= p) {
            return Some(StopReason::Pilot);
        }
        let best = self.best.0;
        if limits.target.is_some_and(|t| best <= t) {
            return Some(StopReason::Target);
        }
        let lost = |race: Option<&Race>, decided: &mut bool| {
            let due = race.filter(|r| reads >= r.at && !*decided);
            *decided |= due.is_some();
            due.is_some_and(|r| r.behind(best, reads))
        };
        // The rival first: outpaced, the rival's own pilot decides the other race.
        if lost(limits.rival.as_ref(), &mut self.raced_rival) {
            return Some(StopReason::Outpaced);
        }
        if lost(limits.race.as_ref(), &mut self.raced) {
            return Some(StopReason::Behind);
        }
        // Not before the rival's race is decided: that race picks the network caught up.
        let rival_due = limits.rival.as_ref().is_some_and(|r| reads < r.at);
        if !rival_due && limits.caught_up.is_some_and(|t| best <= t) {
            return Some(StopReason::CaughtUp);
        }
        None
    }

    /// An epoch's end without a stop rule: the whole split's error `mse` of `p`.
    fn record(&mut self, mse: f64, p: &[f64]) {
        if mse < self.best.0 {
            self.best = (mse, p.to_vec());
        }
        self.push_check(mse);
    }

    /// The median, over the checks after row read `from`, of each check's error over the best
    /// one's so far (1 for a check that is the best): near 1 when the checks sit at the best,
    /// well above it when the step size keeps the model bouncing above it. 1 without checks.
    fn median_excess(&self, from: u64) -> f64 {
        let mut ratios: Vec<f64> = (self.curve.iter())
            .filter(|c| c.row_reads > from)
            .map(|c| c.validation_mse / c.best_mse)
            .collect();
        if ratios.is_empty() {
            return 1.0;
        }
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2]
    }

    fn push_check(&mut self, mse: f64) {
        self.curve.push(Check {
            row_reads: self.reads,
            seconds: self.clock.elapsed().as_secs_f64(),
            validation_mse: mse,
            best_mse: self.best.0,
        });
    }
}

/// Makes Adam's step size reach zero after `left` more row reads, at the steps per row read so
/// far.
fn decay_over_reads(adam: &mut Adam, reads: u64, left: u64) {
    let steps_per_read = adam.steps() as f64 / reads.max(1) as f64;
    adam.decay_over(((left as f64 * steps_per_read).ceil() as usize).max(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::MemorySource;

    /// Keeping the best model's outputs gives the sums of predicting them again, bit for bit,
    /// on rows in more than one scoring chunk.
    #[test]
    fn kept_outputs_give_the_paired_sums() {
        let backend = crate::backend::cpu::CpuBackend::new();
        let n = crate::backend::SCORE_CHUNK_ROWS + 1000;
        let val = MemorySource {
            dim: 2,
            x: (0..2 * n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect(),
            y: (0..n)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect(),
        };
        let net = |w: [f64; 2], b: f64| {
            Network::new(
                2,
                vec![
                    crate::network::Layer::new(2, 2, vec![w[0], 0.3, -0.2, w[1]], vec![b, 0.1])
                        .unwrap(),
                    crate::network::Layer::new(2, 1, vec![1.0, -0.5], vec![0.05]).unwrap(),
                ],
            )
            .unwrap()
        };
        let (cur, best) = (net([0.9, 1.1], 0.2), net([1.0, 0.8], -0.1));
        let direct = paired_sums(&backend, &cur, &best, &val).unwrap();
        let mut kept = None;
        let (first, cur_out) = paired_sums_kept(&backend, &cur, &best, &mut kept, &val).unwrap();
        assert_eq!(first, direct);
        assert_eq!(cur_out, backend.predict(&cur, &val.x, n).unwrap());
        // Computed once: the kept outputs are used as they are.
        let (again, _) = paired_sums_kept(&backend, &cur, &best, &mut kept, &val).unwrap();
        assert_eq!(again, direct);
        assert!(direct[2] != 0.0);
    }

    /// The windows [`ResidentZ`] gathers hold the rows, in the order, that [`read_window`]
    /// reads: with an identity basis z is x itself.
    #[test]
    fn resident_windows_hold_the_rows_read_windows_hold() {
        let (n, d) = (3 * BLOCK_ROWS + 100, 2);
        let source = MemorySource {
            dim: d,
            x: (0..n * d).map(|i| i as f32).collect(),
            y: (0..n).map(|i| -(i as f32)).collect(),
        };
        let net = Network::new(
            d,
            vec![
                crate::network::Layer::new(d, 2, vec![1.0, 0.0, 0.0, 1.0], vec![0.0; 2]).unwrap(),
                crate::network::Layer::new(2, 1, vec![1.0, 1.0], vec![0.0]).unwrap(),
            ],
        )
        .unwrap();
        let shape = FactoredShape::of(&net, d).unwrap();
        let eye = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let start = shape.pack(&net, &eye).unwrap();
        let resident = ResidentZ::of(&source, n, &shape, &start).unwrap().unwrap();
        let blocks = n.div_ceil(BLOCK_ROWS);
        let block_len = |b: usize| BLOCK_ROWS.min(n - b * BLOCK_ROWS);
        let plan = epoch_windows(blocks, 2, 2, 9);
        let (mut read_rng, mut order_rng) = (
            rand::rngs::StdRng::seed_from_u64(9),
            rand::rngs::StdRng::seed_from_u64(9),
        );
        let mut bufs = vec![Window::default(); 2];
        for window in plan.iter().flatten() {
            let read = read_window(
                &source,
                window,
                &block_len,
                &mut bufs,
                &mut read_rng,
                Window::default(),
            )
            .unwrap();
            let mut assembled = Window {
                blocks: (window.iter())
                    .map(|&b| ((b * BLOCK_ROWS) as u64, block_len(b)))
                    .collect(),
                order: window_order(window, &block_len, &mut order_rng)
                    .into_iter()
                    .map(|k| k as u32)
                    .collect(),
                ..Window::default()
            };
            resident.gather(&mut assembled);
            let x: Vec<f64> = read.x.iter().map(|&v| v as f64).collect();
            assert_eq!(assembled.z, x);
            assert_eq!(assembled.y, read.y);
        }
    }

    /// When patience runs out, the last stretch is long when the checks since the last gain
    /// bounced well above the best (the step size held the error up) and short when they sat
    /// at it (the data's floor).
    #[test]
    fn the_last_stretch_is_long_when_the_checks_bounce_above_the_best() {
        let rule = StopRule {
            check_rows: 100,
            patience_rows: 300,
            step_noise_ratio: 1.5,
            step_noise_finish_fraction: 2.0,
            ..StopRule::default()
        };
        let net = Network::new(
            1,
            vec![crate::network::Layer::new(1, 1, vec![1.0], vec![0.0]).unwrap()],
        )
        .unwrap();
        // The stretch's end after checks at 100..=400 row reads of errors `mses` (a gain at
        // the first), with 10_000 row reads planned.
        let end = |mses: [f64; 4]| {
            let mut p = Progress::new(
                std::time::Instant::now(),
                &[1.0],
                net.clone(),
                10_000,
                false,
            );
            let mut adam = Adam::new(1, 1e-3, 10_000);
            let mut best = f64::INFINITY;
            for (i, &m) in mses.iter().enumerate() {
                p.reads = 100 * (i as u64 + 1);
                best = best.min(m);
                p.best.0 = best;
                p.push_check(m);
                if i == 0 {
                    p.last_gain = Some(p.reads);
                }
                assert_eq!(p.decide(&rule, &Limits::default(), 100, &mut adam), None);
            }
            assert!(p.finishing);
            p.end
        };
        assert_eq!(end([1.0, 3.0, 2.0, 4.0]), 400 + 800);
        assert_eq!(end([1.0, 1.1, 1.0, 1.2]), 400 + 100);
    }
}
