//! Compute backends. One [`Backend`] trait with a CPU and a GPU (wgpu) implementation; every
//! pass over the data goes through it, and tests are written once against the trait.

mod candidates;
pub mod cpu;
pub mod gpu;
pub mod mpi;
pub mod trainer;

pub use candidates::{
    check_evaluation_inputs, tri_len, CandidateBatch, CandidateStats, ProjectedSamples,
};
pub use trainer::{Adam, FactoredShape, NormalEquations, Pass, SphereFeatures};

use crate::data::{for_each_chunk, SampleSource};
use crate::error::Result;
use crate::moments::{BinSpec, FilteredMoments, FitMoments, SampleWeight};
use crate::network::Network;

/// Which device computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// A hardware GPU when there is one, otherwise the CPU (with a one-line notice).
    Auto,
    /// All CPU cores.
    Cpu,
    /// A GPU adapter, software adapters (lavapipe) included.
    Gpu,
}

/// The kind of device a pass runs on; reports write it as "cpu" or "gpu".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Gpu,
}

impl Device {
    /// "cpu" or "gpu": the name reports and tables print.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A device that computes the statistics of a pass over the data.
pub trait Backend: Send + Sync {
    /// The device of this backend's own passes.
    fn kind(&self) -> Device;
    /// Human description: CPU model and threads, or the adapter name and driver.
    fn description(&self) -> String;
    /// Binned, filtered first and second moments over the whole source.
    fn moments(
        &self,
        source: &dyn SampleSource,
        spec: &BinSpec,
        weight: SampleWeight,
        progress: &indicatif::ProgressBar,
    ) -> Result<FilteredMoments>;
    /// Per-candidate SSE and last-layer normal equations over projected samples.
    fn evaluate_candidates(
        &self,
        samples: &ProjectedSamples,
        batch: &CandidateBatch,
    ) -> Result<CandidateStats>;
    /// Sums for one Gauss-Newton step of the basis given a fit h on z = B x ([`FitMoments`]).
    fn fit_moments(
        &self,
        source: &dyn SampleSource,
        basis: &[Vec<f64>],
        fit: &Network,
        progress: &indicatif::ProgressBar,
    ) -> Result<FitMoments>;
    /// Outputs of `network` on `rows` samples (x row-major, rows x input_dim).
    fn predict(&self, network: &Network, x: &[f32], rows: usize) -> Result<Vec<f32>>;

    /// z = B x for `x` (rows x d, row-major) with B the r x d rows of `basis` (row-major):
    /// rows x r values, each a dot product summed in f64 and rounded to f32.
    fn project(&self, basis: &[f64], x: &[f32], rows: usize) -> Result<Vec<f32>>;

    /// Adam steps of the factorised model x -> B x -> small network over one window of
    /// training rows (`x`: rows x d, `y`: rows), which the backend may keep resident for the
    /// whole call: minibatch k is rows `k batch_size .. (k + 1) batch_size` (the last may be
    /// shorter); for each, the backend computes the gradient of the summed squared error with
    /// respect to `params` (layout in [`FactoredShape`]) as f64 sums, and calls
    /// `adam.step(gradient, rows, params)` on the host before the next minibatch. With
    /// `train_basis` false, B is held fixed (its gradient entries are zero), the descent on z.
    /// The result must not depend on the thread count.
    #[allow(clippy::too_many_arguments)]
    fn train_window(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        batch_size: usize,
        params: &mut [f64],
        adam: &mut Adam,
    ) -> Result<()>;

    /// The gradient of the summed squared error over the rows `x`, `y` with respect to `params`
    /// ([`FactoredShape`] layout, B's entries zero unless `train_basis`), as f64 sums: one
    /// minibatch of [`Backend::train_window`], for a caller that adds gradients from several
    /// processes before the Adam step (the MPI backend), with the same per-minibatch
    /// arithmetic as `train_window`, so that a device also trains under MPI.
    fn gradient_sum(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        params: &[f64],
    ) -> Result<Vec<f64>>;

    /// Whether this backend assembles training windows of `source` itself
    /// ([`Backend::train_window_of`]): a device that draws the rows of a built-in teacher, or
    /// holds a copy of the rows, where the trainer runs. When false (the default), the trainer
    /// reads each window's rows on the host and calls [`Backend::train_window`].
    fn assembles_windows(&self, source: &dyn SampleSource) -> bool {
        let _ = source;
        false
    }

    /// Whether [`Backend::train_window`] is this process's CPU trainer
    /// ([`cpu::trainer::train_window`]) and nothing else, so that the trainer may hand it
    /// windows of z = B x it holds ([`cpu::trainer::train_window_on_z`]) when B is fixed. Not
    /// for a backend that trains elsewhere or splits the rows (MPI).
    fn trains_on_host(&self) -> bool {
        false
    }

    /// [`Backend::train_window`] over rows of `source` that the backend assembles itself: the
    /// rows of `blocks` ((first row, rows) each) concatenated, then taken in `order` (a
    /// permutation of the window's rows). Called only when [`Backend::assembles_windows`] says
    /// so; same rows, same steps as `train_window` on rows read by the host.
    #[allow(clippy::too_many_arguments)]
    fn train_window_of(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        source: &dyn SampleSource,
        blocks: &[(u64, usize)],
        order: &[u32],
        batch_size: usize,
        params: &mut [f64],
        adam: &mut Adam,
    ) -> Result<()> {
        let _ = (
            shape,
            train_basis,
            source,
            blocks,
            order,
            batch_size,
            params,
            adam,
        );
        Err(crate::error::Error::invalid(
            "this backend does not assemble training windows (train_window reads them)",
        ))
    }

    /// Normal equations (sum phi phi^T, sum phi y, in f64) of the sphere-net features of
    /// z = B x over every row of `source`.
    fn feature_normal_equations(
        &self,
        source: &dyn SampleSource,
        features: &SphereFeatures,
        progress: &indicatif::ProgressBar,
    ) -> Result<NormalEquations>;

    /// Summed squared error of each network over every row of `source` (validation scoring),
    /// in f64, chunks added in order. The default streams chunks through [`Backend::predict`].
    fn sse(&self, networks: &[&Network], source: &dyn SampleSource) -> Result<Vec<f64>> {
        let mut sums = vec![0.0f64; networks.len()];
        for_each_chunk(source, SCORE_CHUNK_ROWS, |_, x, y| {
            for (net, sum) in networks.iter().zip(&mut sums) {
                let p = self.predict(net, x, y.len())?;
                *sum += p
                    .iter()
                    .zip(y)
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum::<f64>();
            }
            Ok(())
        })?;
        Ok(sums)
    }

    /// f64 sums over the rows of `source` computed on the host by `pass` (called with the
    /// rows to read; returns `len` sums), for the small passes outside the kernels (the label
    /// variance, paired error differences). The default calls `pass(source)`; the MPI backend
    /// calls it on this rank's rows and adds the sums across the ranks.
    fn row_sums(
        &self,
        source: &dyn SampleSource,
        len: usize,
        pass: &mut dyn FnMut(&dyn SampleSource) -> Result<Vec<f64>>,
    ) -> Result<Vec<f64>> {
        let _ = len;
        pass(source)
    }

    /// The device that runs `pass` on this backend (the default: this backend's own).
    fn device_of(&self, pass: Pass) -> Device {
        let _ = pass;
        self.kind()
    }
}

/// Rows per chunk of the validation scoring pass ([`Backend::sse`]).
pub const SCORE_CHUNK_ROWS: usize = 1 << 16;

/// Typed error (not a panic) for a projection request of the wrong size.
pub fn check_projection(basis: &[f64], x: &[f32], rows: usize) -> Result<()> {
    if rows == 0 && x.is_empty() {
        return Ok(());
    }
    let d = x.len().checked_div(rows).unwrap_or(0);
    if d == 0 || x.len() != rows * d || basis.is_empty() || !basis.len().is_multiple_of(d) {
        return Err(crate::Error::invalid(format!(
            "project: {} input values for {rows} rows and a basis of {} values (need r x d)",
            x.len(),
            basis.len()
        )));
    }
    Ok(())
}

/// Typed error (not a panic) for an input block of the wrong size.
pub fn check_predict_input(network: &Network, x: &[f32], rows: usize) -> Result<()> {
    if x.len() != rows * network.input_dim {
        return Err(crate::Error::invalid(format!(
            "predict: {} input values for {rows} rows of d = {}",
            x.len(),
            network.input_dim
        )));
    }
    Ok(())
}

/// Opens the backend the user asked for. `Auto` takes a hardware GPU when there is one and
/// otherwise the CPU, saying so in one line on stderr; `Gpu` also accepts a software adapter
/// (lavapipe), which is what CI tests.
pub fn select(choice: BackendChoice) -> Result<Box<dyn Backend>> {
    match choice {
        BackendChoice::Cpu => Ok(Box::new(cpu::CpuBackend::new())),
        BackendChoice::Gpu => Ok(Box::new(gpu::GpuBackend::new(true)?)),
        BackendChoice::Auto => match gpu::GpuBackend::new(false) {
            Ok(g) => Ok(Box::new(g)),
            Err(e) => {
                if crate::runtime::is_root() {
                    eprintln!(
                        "note: using the CPU backend ({e}); pass --backend gpu to use a software adapter"
                    );
                }
                Ok(Box::new(cpu::CpuBackend::new()))
            }
        },
    }
}
