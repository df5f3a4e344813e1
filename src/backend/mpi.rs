//! Scale-out across processes and machines with MPI (cargo feature `mpi`).
//!
//! Under `mpirun -n P relu-fpt ...` every rank runs the same command on the same inputs. The
//! passes over the samples split by rows: [`MpiBackend`] wraps the backend each rank chose and
//! runs it on the rank's contiguous row range, then combines the returned sums (binned moments,
//! fit moments, candidate statistics, sphere-net normal equations, validation errors, the
//! host's small row sums) across ranks. The trainer's windows are read whole on every rank (the
//! shuffled order is the one process's); each minibatch's rows split across the ranks and their
//! gradient sums are combined before the Adam step. The host steps between passes (bin edges,
//! eigendecompositions, the search's control, Adam on small parameter vectors) run redundantly
//! on every rank: their inputs are the combined sums, which every rank receives bit for bit from
//! rank 0, so every rank takes the same decisions and issues the same passes in the same order.
//! Rank 0 alone writes outputs and prints.
//!
//! Sums are combined in a fixed order (a binary tree over ranks, lower ranks first, then a
//! broadcast from rank 0), so a run is deterministic for a given P; against one process the
//! additions are grouped differently, which moves the sums by a few units in the last place.
//!
//! Errors: before every combination the ranks agree whether any of them failed (an allreduce
//! of the lowest failing rank); if one did, it broadcasts its message and every rank returns an
//! error, [`Error::Rank`] on the others, so all stop together with that rank's message and exit
//! code. [`agree`] is the same agreement at the end of a command, which also catches a rank that
//! failed outside a pass (the agreement is the same collective call wherever it is made, so a
//! rank that stopped early meets the others at their next combination).
//!
//! Without the feature, or when not launched by an MPI launcher, every function here is the
//! single-process identity: one rank, nothing to combine.

use super::{
    Adam, Backend, CandidateBatch, CandidateStats, Device, FactoredShape, NormalEquations, Pass,
    ProjectedSamples, SphereFeatures,
};
use crate::data::{for_each_chunk, SampleSource};
use crate::error::{Error, Result};
use crate::moments::{BinSpec, FilteredMoments, FitMoments, SampleWeight};
use crate::network::Network;
use std::sync::atomic::{AtomicU64, Ordering};

/// Payload counters of this process (for reports and the scaling benchmark).
static COMBINES: AtomicU64 = AtomicU64::new(0);
static COMBINED_BYTES: AtomicU64 = AtomicU64::new(0);
static GATHERED_BYTES: AtomicU64 = AtomicU64::new(0);

// The launch facts live in `runtime`; here for the callers that already ask the MPI module.
use crate::runtime::launched_size;
pub use crate::runtime::{is_root, local_rank, rank, ranks};

/// Communication so far in this process: what the scaling benchmark reports per pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Communication {
    /// Accumulators combined across ranks (one per split pass or evaluation batch).
    pub combines: u64,
    /// Bytes of those accumulators (each counted once: with P ranks every rank but 0 sends
    /// this much up the reduction tree and receives as much in the broadcast).
    pub combined_bytes: u64,
    /// Bytes of per-row results (predictions, labels) sent to rank 0 by `stream_to_root`.
    pub gathered_bytes: u64,
}

/// Counters since the start of the process.
pub fn communication() -> Communication {
    Communication {
        combines: COMBINES.load(Ordering::Relaxed),
        combined_bytes: COMBINED_BYTES.load(Ordering::Relaxed),
        gathered_bytes: GATHERED_BYTES.load(Ordering::Relaxed),
    }
}

/// Which of a machine's devices this rank computes on, given whether each is hardware (in the
/// order the driver lists them): under MPI, the hardware devices are dealt to the ranks of one
/// machine by [`local_rank`] (rank i on device i mod count), so that each rank on a node with
/// several GPUs gets its own. None with one rank, or when there is no hardware device (then the
/// caller opens its usual choice).
pub fn device_for_this_rank(hardware: &[bool]) -> Option<usize> {
    if ranks() <= 1 {
        return None;
    }
    deal_device(hardware, local_rank())
}

/// The `local_rank`-th hardware device, cyclically; None when there is none.
fn deal_device(hardware: &[bool], local_rank: usize) -> Option<usize> {
    let devices: Vec<usize> = (0..hardware.len()).filter(|&i| hardware[i]).collect();
    (!devices.is_empty()).then(|| devices[local_rank % devices.len()])
}

/// The contiguous rows `start .. start + len` of `n` that this rank owns; see [`split_range`].
pub fn local_range(n: u64) -> (u64, u64) {
    split_range(n, rank(), ranks())
}

/// Rank boundaries fall on multiples of this many rows (when every rank still gets some): the
/// CPU kernel sums one bin's rows in f32 chunks of up to this many rows counted from the start
/// of its range (for power-of-two d), so aligned ranges cut no chunk that one process would sum
/// whole, and only f64 additions regroup.
pub const RANGE_ALIGN: u64 = 16384;

/// Rows of rank `p` of `ranks` out of `n`: rank q starts at `q n / P` rounded to the nearest
/// multiple of [`RANGE_ALIGN`] (exactly `q n / P` when n < P x RANGE_ALIGN).
pub fn split_range(n: u64, p: usize, ranks: usize) -> (u64, u64) {
    let ranks = ranks.max(1) as u128;
    let at = |q: usize| {
        let even = n as u128 * q as u128 / ranks;
        if q as u128 >= ranks || (n as u128) < ranks * RANGE_ALIGN as u128 {
            return even as u64;
        }
        let a = RANGE_ALIGN as u128;
        (((even + a / 2) / a * a).min(n as u128)) as u64
    };
    (at(p), at(p + 1) - at(p))
}

/// Held by `main` for the whole run: starts MPI when a launcher started this process (and the
/// feature is on), and finalises it when dropped.
pub struct Launch {
    #[cfg(feature = "mpi")]
    _universe: Option<::mpi::environment::Universe>,
}

impl Launch {
    /// Starts MPI when launched by `mpirun` (or another MPI launcher) and otherwise does nothing,
    /// so a plain run never needs an MPI library at run time. On ranks other than 0, standard
    /// output goes to /dev/null: summaries come from rank 0 only. Fails when a launcher started
    /// several processes but this build has no MPI (each would do the whole job alone).
    pub fn start() -> Result<Launch> {
        #[cfg(feature = "mpi")]
        {
            let universe = imp::start()?;
            Ok(Launch {
                _universe: universe,
            })
        }
        #[cfg(not(feature = "mpi"))]
        {
            match launched_size() {
                Some(p) if p > 1 => Err(Error::invalid(format!(
                    "started as one of {p} processes by an MPI launcher, but this relu-fpt was built without MPI: \
                     build it with `cargo build --release --features mpi` (needs an MPI library, e.g. libopenmpi-dev), \
                     or run it without mpirun"
                ))),
                _ => Ok(Launch {}),
            }
        }
    }
}

/// Wraps `backend` in an [`MpiBackend`] when there are several ranks; otherwise returns it.
pub fn distribute(backend: Box<dyn Backend>) -> Box<dyn Backend> {
    if ranks() > 1 {
        Box::new(MpiBackend { inner: backend })
    } else {
        backend
    }
}

/// The end-of-command agreement: every rank calls it with its outcome and all return the same
/// verdict (the lowest failing rank's error; [`Error::Rank`] on the other ranks). Returns
/// `outcome` unchanged with one rank, or when the ranks already agreed on a failure.
pub fn agree(outcome: Result<()>) -> Result<()> {
    if ranks() <= 1 || imp::failure_agreed() {
        return outcome;
    }
    imp::checkpoint(outcome)
}

/// The exit status of a command that failed with `code`, once the ranks agreed on the failure
/// and rank 0 printed it: `code` on rank 0 and 0 on the others, after a barrier. mpirun stops
/// the whole job as soon as one rank exits non-zero, so if another rank exited with the code
/// first, rank 0 could be killed before or while it prints; this way rank 0 is never killed, and
/// mpirun's own exit status is rank 0's code.
pub fn exit_status(code: u8) -> u8 {
    if ranks() <= 1 {
        return code;
    }
    imp::barrier();
    if is_root() {
        code
    } else {
        0
    }
}

/// Called from the panic hook: with several ranks, a panicking rank takes the job down with
/// MPI_Abort (its peers would otherwise wait for it forever).
pub fn abort_job_after_panic() {
    if ranks() > 1 {
        imp::abort(70);
    }
}

/// Streams `source` through `compute` (chunk x rows -> one value per row) and hands every chunk's
/// values and labels to `sink` in row order, on rank 0 only. With several ranks the chunks are
/// dealt round-robin (chunk c to rank c mod P), so each rank reads and computes 1/P of the rows
/// while rank 0 receives the results of one chunk per rank per round and consumes them in
/// order: memory stays at P chunks whatever N. With `labels` the sink also gets each chunk's y
/// (sent to rank 0 with the values); without, it gets an empty slice.
pub fn stream_to_root(
    source: &dyn SampleSource,
    chunk_rows: usize,
    labels: bool,
    mut compute: impl FnMut(&[f32], usize) -> Result<Vec<f32>>,
    mut sink: impl FnMut(&[f32], &[f32]) -> Result<()>,
) -> Result<()> {
    if ranks() <= 1 {
        return for_each_chunk(source, chunk_rows, |_, x, y| {
            let p = compute(x, y.len())?;
            sink(&p, if labels { y } else { &[] })
        });
    }
    imp::stream_to_root(source, chunk_rows, labels, &mut compute, &mut sink)
}

/// A [`Backend`] that splits every pass by rows across the MPI ranks and combines the sums;
/// see the module docs. `predict` stays local (it is per-row: [`stream_to_root`] splits it).
pub struct MpiBackend {
    inner: Box<dyn Backend>,
}

impl MpiBackend {
    /// The backend this rank computes on.
    pub fn inner(&self) -> &dyn Backend {
        self.inner.as_ref()
    }
}

/// Accumulators that add across ranks, flattened for the wire.
trait Sums {
    fn pack(&self) -> (Vec<f64>, Vec<u64>);
    fn unpack(&mut self, floats: &[f64], counts: &[u64]);
}

/// Copies consecutive pieces of `flat` back into `fields`.
fn scatter(flat: &[f64], fields: &mut [&mut Vec<f64>]) {
    let mut at = 0;
    for f in fields.iter_mut() {
        let n = f.len();
        f.copy_from_slice(&flat[at..at + n]);
        at += n;
    }
}

impl Sums for FilteredMoments {
    fn pack(&self) -> (Vec<f64>, Vec<u64>) {
        let floats = [
            &self.weight_sum[..],
            &self.sum_x,
            &self.sum_xx,
            &self.sum_y,
            &self.sum_y2,
        ]
        .concat();
        (floats, self.count.clone())
    }
    fn unpack(&mut self, floats: &[f64], counts: &[u64]) {
        scatter(
            floats,
            &mut [
                &mut self.weight_sum,
                &mut self.sum_x,
                &mut self.sum_xx,
                &mut self.sum_y,
                &mut self.sum_y2,
            ],
        );
        self.count.copy_from_slice(counts);
    }
}

impl Sums for FitMoments {
    fn pack(&self) -> (Vec<f64>, Vec<u64>) {
        (
            [&[self.sse][..], &self.cross, &self.gram].concat(),
            vec![self.rows],
        )
    }
    fn unpack(&mut self, floats: &[f64], counts: &[u64]) {
        self.sse = floats[0];
        scatter(&floats[1..], &mut [&mut self.cross, &mut self.gram]);
        self.rows = counts[0];
    }
}

impl Sums for CandidateStats {
    fn pack(&self) -> (Vec<f64>, Vec<u64>) {
        (
            [&self.sse[..], &self.gram, &self.feature_y].concat(),
            Vec::new(),
        )
    }
    fn unpack(&mut self, floats: &[f64], _: &[u64]) {
        scatter(
            floats,
            &mut [&mut self.sse, &mut self.gram, &mut self.feature_y],
        );
    }
}

impl Sums for NormalEquations {
    fn pack(&self) -> (Vec<f64>, Vec<u64>) {
        ([&self.gram[..], &self.rhs].concat(), vec![self.rows])
    }
    fn unpack(&mut self, floats: &[f64], counts: &[u64]) {
        scatter(floats, &mut [&mut self.gram, &mut self.rhs]);
        self.rows = counts[0];
    }
}

/// Plain f64 sums: per-network squared errors, gradient sums.
struct Floats(Vec<f64>);

impl Sums for Floats {
    fn pack(&self) -> (Vec<f64>, Vec<u64>) {
        (self.0.clone(), Vec::new())
    }
    fn unpack(&mut self, floats: &[f64], _: &[u64]) {
        self.0.copy_from_slice(floats);
    }
}

/// Runs `pass` on this rank's rows of `source` (or returns `empty` when it has none), then
/// combines the sums across the ranks.
fn split_pass<T: Sums>(
    source: &dyn SampleSource,
    progress: Option<&indicatif::ProgressBar>,
    empty: impl FnOnce() -> Result<T>,
    pass: impl FnOnce(&dyn SampleSource) -> Result<T>,
) -> Result<T> {
    let (start, len) = local_range(source.len());
    let local = if len == 0 {
        empty()
    } else {
        if let Some(bar) = progress {
            bar.set_length(len);
        }
        crate::data::SampleRange::new(source, start, len).and_then(|part| pass(&part))
    };
    combine(local)
}

/// Agrees on failure, then sums `local` over the ranks (fixed order, identical on every rank).
fn combine<T: Sums>(local: Result<T>) -> Result<T> {
    let mut total = imp::checkpoint(local)?;
    let (mut floats, mut counts) = total.pack();
    imp::tree_sum(&mut floats);
    imp::tree_sum(&mut counts);
    total.unpack(&floats, &counts);
    COMBINES.fetch_add(1, Ordering::Relaxed);
    COMBINED_BYTES.fetch_add(8 * (floats.len() + counts.len()) as u64, Ordering::Relaxed);
    Ok(total)
}

impl Backend for MpiBackend {
    fn kind(&self) -> Device {
        self.inner.kind()
    }

    fn description(&self) -> String {
        format!(
            "{} on each of {} MPI ranks",
            self.inner.description(),
            ranks()
        )
    }

    fn moments(
        &self,
        source: &dyn SampleSource,
        spec: &BinSpec,
        weight: SampleWeight,
        progress: &indicatif::ProgressBar,
    ) -> Result<FilteredMoments> {
        split_pass(
            source,
            Some(progress),
            || {
                spec.check_request(source)?;
                Ok(FilteredMoments::zeros(spec.dim, spec.bins()))
            },
            |part| self.inner.moments(part, spec, weight, progress),
        )
    }

    fn fit_moments(
        &self,
        source: &dyn SampleSource,
        basis: &[Vec<f64>],
        fit: &Network,
        progress: &indicatif::ProgressBar,
    ) -> Result<FitMoments> {
        split_pass(
            source,
            Some(progress),
            || {
                crate::moments::check_fit_request(source, basis, fit)?;
                Ok(FitMoments::zeros(source.dim(), basis.len()))
            },
            |part| self.inner.fit_moments(part, basis, fit, progress),
        )
    }

    fn evaluate_candidates(
        &self,
        samples: &ProjectedSamples,
        batch: &CandidateBatch,
    ) -> Result<CandidateStats> {
        let local = super::check_evaluation_inputs(samples, batch).and_then(|()| {
            let (start, len) = local_range(samples.len() as u64);
            let (start, len) = (start as usize, len as usize);
            if len == 0 {
                let (count, f) = (batch.count(), batch.feature_dim());
                return Ok(CandidateStats {
                    feature_dim: f,
                    sse: vec![0.0; count],
                    gram: vec![0.0; count * super::tri_len(f)],
                    feature_y: vec![0.0; count * f],
                });
            }
            let r = samples.rank;
            let part = ProjectedSamples {
                rank: r,
                z: samples.z[start * r..(start + len) * r].to_vec(),
                y: samples.y[start..start + len].to_vec(),
            };
            self.inner.evaluate_candidates(&part, batch)
        });
        combine(local)
    }

    fn predict(&self, network: &Network, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.inner.predict(network, x, rows)
    }

    fn project(&self, basis: &[f64], x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.inner.project(basis, x, rows)
    }

    /// Every rank holds the same window; each minibatch's rows split across the ranks, whose
    /// gradient sums are combined before the (replicated) Adam step.
    fn train_window(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        batch_size: usize,
        params: &mut [f64],
        adam: &mut Adam,
    ) -> Result<()> {
        let d = shape.input_dim;
        if batch_size == 0 || x.len() != y.len() * d {
            // The inner backend's own check names the fault (the same on every rank).
            return self
                .inner
                .train_window(shape, train_basis, x, y, batch_size, params, adam);
        }
        for start in (0..y.len()).step_by(batch_size) {
            let len = batch_size.min(y.len() - start);
            let (lo, n) = split_range(len as u64, rank(), ranks());
            let (a, b) = (start + lo as usize, start + (lo + n) as usize);
            let local = self
                .inner
                .gradient_sum(shape, train_basis, &x[a * d..b * d], &y[a..b], params)
                .map(Floats);
            let grad = combine(local)?.0;
            adam.step(&grad, len, params);
        }
        Ok(())
    }

    fn gradient_sum(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        params: &[f64],
    ) -> Result<Vec<f64>> {
        self.inner.gradient_sum(shape, train_basis, x, y, params)
    }

    fn feature_normal_equations(
        &self,
        source: &dyn SampleSource,
        features: &SphereFeatures,
        progress: &indicatif::ProgressBar,
    ) -> Result<NormalEquations> {
        split_pass(
            source,
            Some(progress),
            || Ok(NormalEquations::zeros(features.len())),
            |part| {
                self.inner
                    .feature_normal_equations(part, features, progress)
            },
        )
    }

    fn sse(&self, networks: &[&Network], source: &dyn SampleSource) -> Result<Vec<f64>> {
        split_pass(
            source,
            None,
            || Ok(Floats(vec![0.0; networks.len()])),
            |part| self.inner.sse(networks, part).map(Floats),
        )
        .map(|s| s.0)
    }

    fn row_sums(
        &self,
        source: &dyn SampleSource,
        len: usize,
        pass: &mut dyn FnMut(&dyn SampleSource) -> Result<Vec<f64>>,
    ) -> Result<Vec<f64>> {
        split_pass(
            source,
            None,
            || Ok(Floats(vec![0.0; len])),
            |part| match pass(part)? {
                sums if sums.len() == len => Ok(Floats(sums)),
                sums => Err(Error::invalid(format!(
                    "row sums: the pass returned {} sums where {len} were declared",
                    sums.len()
                ))),
            },
        )
        .map(|s| s.0)
    }

    fn device_of(&self, pass: Pass) -> Device {
        self.inner.device_of(pass)
    }
}

#[cfg(feature = "mpi")]
mod imp {
    //! The MPI calls. All of them happen on the thread that runs the command, one at a time (the
    //! library is initialised for serialised calls and a lock keeps them so).

    use super::{Error, Result, SampleSource, GATHERED_BYTES};
    use crate::runtime::{world, World};
    use ::mpi::collective::SystemOperation;
    use ::mpi::datatype::Equivalence;
    use ::mpi::environment::{Threading, Universe};
    use ::mpi::topology::SimpleCommunicator;
    use ::mpi::traits::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    static FAILURE_AGREED: AtomicBool = AtomicBool::new(false);
    static CALLS: Mutex<()> = Mutex::new(());
    /// Largest message, in elements: MPI counts are C ints.
    const MAX_MESSAGE: usize = 1 << 24;

    pub(super) fn failure_agreed() -> bool {
        FAILURE_AGREED.load(Ordering::SeqCst)
    }

    fn comm() -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    pub(super) fn start() -> Result<Option<Universe>> {
        if super::launched_size().is_none() {
            return Ok(None);
        }
        let Some((universe, _provided)) = ::mpi::initialize_with_threading(Threading::Serialized)
        else {
            return Err(Error::invalid(
                "MPI was already initialised in this process",
            ));
        };
        let w = universe.world();
        let world = World {
            rank: w.rank() as usize,
            size: w.size() as usize,
        };
        crate::runtime::set_world(world);
        if world.rank != 0 {
            silence_stdout();
        }
        Ok(Some(universe))
    }

    /// Points standard output at /dev/null (ranks other than 0: summaries come from rank 0).
    fn silence_stdout() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let _ = std::io::stdout().flush();
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            // SAFETY: dup2 on two valid descriptors; stdout keeps its number.
            unsafe {
                libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
            }
        }
    }

    pub(super) fn abort(code: i32) -> ! {
        comm().abort(code)
    }

    pub(super) fn barrier() {
        let _guard = lock();
        comm().barrier();
    }

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        CALLS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The failure agreement; see the module docs. Returns `local` when no rank failed.
    pub(super) fn checkpoint<T>(local: Result<T>) -> Result<T> {
        let w = world().expect("checkpoint needs MPI");
        let _guard = lock();
        let c = comm();
        let mine = if local.is_err() { w.rank } else { w.size } as i32;
        let mut first = 0i32;
        c.all_reduce_into(&mine, &mut first, SystemOperation::min());
        let first = first as usize;
        if first >= w.size {
            return local;
        }
        FAILURE_AGREED.store(true, Ordering::SeqCst);
        let root = c.process_at_rank(first as i32);
        let mut header = [0u64; 2];
        let mut text = Vec::new();
        if let Err(e) = &local {
            if first == w.rank {
                text = e.to_string().into_bytes();
                header = [text.len() as u64, u64::from(e.exit_code())];
            }
        }
        root.broadcast_into(&mut header[..]);
        text.resize(header[0] as usize, 0);
        root.broadcast_into(&mut text[..]);
        match local {
            Err(e) if first == w.rank => Err(e),
            _ => Err(Error::Rank {
                rank: first,
                ranks: w.size,
                exit_code: header[1] as u8,
                message: String::from_utf8_lossy(&text).into_owned(),
            }),
        }
    }

    /// Sums `data` over the ranks: a binary tree (at step s, rank p with p mod 2s = 0 adds what
    /// rank p + s holds, lower rank first), then a broadcast of rank 0's total. The grouping
    /// depends only on P, and every rank ends with the same bits.
    pub(super) fn tree_sum<T>(data: &mut [T])
    where
        T: Equivalence + Copy + Default + std::ops::AddAssign,
    {
        let w = world().expect("tree_sum needs MPI");
        let _guard = lock();
        let c = comm();
        let mut received = vec![T::default(); data.len().min(MAX_MESSAGE)];
        let mut step = 1;
        while step < w.size {
            if w.rank.is_multiple_of(2 * step) {
                let partner = w.rank + step;
                if partner < w.size {
                    let from = c.process_at_rank(partner as i32);
                    for piece in data.chunks_mut(MAX_MESSAGE) {
                        let buf = &mut received[..piece.len()];
                        from.receive_into(buf);
                        piece.iter_mut().zip(buf.iter()).for_each(|(a, b)| *a += *b);
                    }
                }
            } else {
                let to = c.process_at_rank((w.rank - step) as i32);
                for piece in data.chunks(MAX_MESSAGE) {
                    to.send(piece);
                }
                break;
            }
            step *= 2;
        }
        let root = c.process_at_rank(0);
        for piece in data.chunks_mut(MAX_MESSAGE) {
            root.broadcast_into(piece);
        }
    }

    type Compute<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<f32>> + 'a;
    type Sink<'a> = dyn FnMut(&[f32], &[f32]) -> Result<()> + 'a;

    pub(super) fn stream_to_root(
        source: &dyn SampleSource,
        chunk_rows: usize,
        labels: bool,
        compute: &mut Compute<'_>,
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        let w = world().expect("stream_to_root needs MPI");
        if chunk_rows == 0 {
            return Err(Error::invalid("stream_to_root: chunk_rows must be >= 1"));
        }
        let n = source.len();
        let chunks = n.div_ceil(chunk_rows as u64);
        let rounds = chunks.div_ceil(w.size as u64);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let mine = round * w.size as u64 + w.rank as u64;
            let local = if mine < chunks {
                source
                    .read(mine * chunk_rows as u64, chunk_rows, &mut x, &mut y)
                    .and_then(|rows| compute(&x, rows))
            } else {
                Ok(Vec::new())
            };
            let values = checkpoint(local)?;
            if w.rank != 0 {
                if mine < chunks {
                    let _guard = lock();
                    let c = comm();
                    let to = c.process_at_rank(0);
                    to.send(&values[..]);
                    if labels {
                        to.send(&y[..]);
                    }
                }
                continue;
            }
            // Rank 0 receives the whole round before consuming it, so a failing sink never
            // leaves a peer blocked in a send.
            let mut parts = vec![(values, if labels { y.clone() } else { Vec::new() })];
            {
                let _guard = lock();
                let c = comm();
                for q in 1..w.size {
                    if round * w.size as u64 + (q as u64) < chunks {
                        let from = c.process_at_rank(q as i32);
                        let (p, _) = from.receive_vec::<f32>();
                        let yq = if labels {
                            from.receive_vec::<f32>().0
                        } else {
                            Vec::new()
                        };
                        GATHERED_BYTES
                            .fetch_add(4 * (p.len() + yq.len()) as u64, Ordering::Relaxed);
                        parts.push((p, yq));
                    }
                }
            }
            for (p, yq) in &parts {
                sink(p, yq)?;
            }
        }
        Ok(())
    }
}

#[cfg(not(feature = "mpi"))]
mod imp {
    //! Without MPI there is one rank and nothing to combine.

    use super::{Result, SampleSource};

    pub(super) fn failure_agreed() -> bool {
        false
    }

    pub(super) fn abort(_code: i32) {}

    pub(super) fn barrier() {}

    pub(super) fn checkpoint<T>(local: Result<T>) -> Result<T> {
        local
    }

    pub(super) fn tree_sum<T>(_data: &mut [T]) {}

    type Compute<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<f32>> + 'a;
    type Sink<'a> = dyn FnMut(&[f32], &[f32]) -> Result<()> + 'a;

    pub(super) fn stream_to_root(
        _source: &dyn SampleSource,
        _chunk_rows: usize,
        _labels: bool,
        _compute: &mut Compute<'_>,
        _sink: &mut Sink<'_>,
    ) -> Result<()> {
        unreachable!("one rank streams locally")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_rows_once_in_order() {
        for n in [0u64, 1, 5, 4096, 40_000, 1_000_003] {
            for p in 1..6 {
                let mut next = 0;
                for q in 0..p {
                    let (start, len) = split_range(n, q, p);
                    assert_eq!(start, next);
                    next += len;
                }
                assert_eq!(next, n);
            }
        }
        // Aligned when large enough, within one granule of even.
        let (start, len) = split_range(2_000_000, 1, 2);
        assert_eq!((start % RANGE_ALIGN, start + len), (0, 2_000_000));
        assert!(start.abs_diff(1_000_000) <= RANGE_ALIGN / 2);
    }

    #[test]
    fn ranks_of_a_machine_are_dealt_its_hardware_devices() {
        // Two GPUs and a software adapter listed between them.
        let listed = [true, false, true];
        let picks: Vec<_> = (0..5).map(|r| deal_device(&listed, r)).collect();
        assert_eq!(picks, [Some(0), Some(2), Some(0), Some(2), Some(0)]);
        assert_eq!(deal_device(&[false], 1), None);
        assert_eq!(deal_device(&[], 0), None);
        // One process keeps the driver's preferred adapter.
        assert_eq!(device_for_this_rank(&listed), None);
    }

    #[test]
    fn one_rank_is_the_identity() {
        assert_eq!((ranks(), rank(), is_root()), (1, 0, true));
        assert_eq!(local_range(10), (0, 10));
        let e = agree(Err(Error::invalid("x"))).unwrap_err();
        assert_eq!(e.to_string(), "x");
    }
}
