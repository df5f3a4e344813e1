//! GPU backend: WGSL kernels in `shaders/`, one launcher module per kernel.

mod binning;
mod context;
mod evaluate;
mod features;
mod feed;
mod fit;
mod forward;
mod moments;
mod project;
mod sample;
mod smoke;
mod trainer;

pub use context::{
    list_adapters, GpuContext, ShaderChecks, WaitPolicy, SHADER_CHECKS_ENV, WAIT_SECONDS_ENV,
};
pub use evaluate::{evaluate_candidates_with, EvaluateKernelParams};
pub use feed::{ResidentSamples, MAX_BATCH_BYTES, RESIDENT_MIB_ENV};
pub use fit::FitKernelParams;
use fit::FitPipelineCache;
use forward::ForwardPipelineCache;
pub use forward::{ForwardKernelParams, MAX_FORWARD_WIDTH};
use moments::MomentPipelineCache;
pub use moments::{sort_batch, BatchOrder, MomentKernelParams, Piece};
pub use sample::{generate_on_device, philox_words_on_device};
pub use smoke::{smoke_kernel, smoke_test, smoke_twin};
// The trainer's passes: projection, small-network training and scoring, sphere-net features.
pub use features::FeatureKernelParams;
pub use project::ProjectKernelParams;
pub use trainer::TrainerKernelParams;

use crate::backend::{
    Adam, Backend, CandidateBatch, CandidateStats, Device, FactoredShape, NormalEquations, Pass,
    ProjectedSamples, SphereFeatures,
};
use crate::data::SampleSource;
use crate::error::Result;
use crate::moments::{BinSpec, FilteredMoments, FitMoments, SampleWeight};
use crate::network::Network;

/// Errors from adapter selection and kernels.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable adapter.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The request exceeds what this adapter supports (binding size, workgroup limits);
    /// the message names the size and the limit.
    #[error("too large for this GPU: {0}")]
    TooLarge(String),
    /// A bin specification with no bins (K = 0).
    #[error("the bin specification has K = 0 bins")]
    NoBins,
    /// Shader compilation, pipeline or dispatch validation failed.
    #[error("GPU kernel error: {0}")]
    Kernel(String),
    /// The device ran out of memory.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// The device was lost (reset, removed, or destroyed) while it had work.
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// The device did not finish a submission within the wait bound
    /// ([`context::WaitPolicy`]).
    #[error("GPU timed out: {0}")]
    Timeout(String),
    /// Mapping a readback buffer failed.
    #[error("GPU buffer map failed: {0}")]
    Map(String),
    /// A sum the device keeps in f32 left the f32 range (above 3.4e38): the data's scale is
    /// too large for the GPU's sums (the CPU backend sums in f64).
    #[error("GPU sums overflowed f32: {0}")]
    Overflow(String),
}

/// Bases of more rank than this are fitted by the CPU pass (see `fit_moments`).
const GPU_FIT_MAX_RANK: usize = 8;

/// The wgpu implementation of [`Backend`].
pub struct GpuBackend {
    ctx: GpuContext,
    moment_pipelines: MomentPipelineCache,
    resident: ResidentSamples,
    forward_pipelines: ForwardPipelineCache,
    fit_pipelines: FitPipelineCache,
    project_pipelines: project::ProjectPipelineCache,
    trainer_pipelines: trainer::TrainerPipelineCache,
    feature_pipelines: features::FeaturePipelineCache,
    /// The generator of the last training source whose windows this device drew (a train()
    /// call asks for hundreds of windows of one source), by the source's identity.
    window_generator: std::sync::Mutex<Option<(String, std::sync::Arc<sample::Generator>)>>,
}

impl GpuBackend {
    /// Opens a device; `allow_software` accepts lavapipe (CI), `false` wants real hardware.
    pub fn new(allow_software: bool) -> Result<Self> {
        let ctx = GpuContext::new(allow_software)?;
        let resident = ResidentSamples::new(ResidentSamples::default_budget(&ctx));
        Ok(GpuBackend {
            ctx,
            moment_pipelines: MomentPipelineCache::default(),
            resident,
            forward_pipelines: ForwardPipelineCache::default(),
            fit_pipelines: FitPipelineCache::default(),
            project_pipelines: Default::default(),
            trainer_pipelines: Default::default(),
            feature_pipelines: Default::default(),
            window_generator: Default::default(),
        })
    }

    /// The device generator of `source`'s rows, when the device can draw them (a built-in
    /// teacher's samples or a view of them); kept for the next call on the same source.
    fn window_generator(
        &self,
        source: &dyn SampleSource,
    ) -> Result<Option<std::sync::Arc<sample::Generator>>> {
        let Some(recipe) = source.synthetic() else {
            return Ok(None);
        };
        if recipe.stride() != source.dim() || recipe.rows != source.len() {
            return Ok(None);
        }
        let key = source.identity();
        let mut held = self
            .window_generator
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let (Some(key), Some((k, gen))) = (&key, held.as_ref()) {
            if k == key {
                return Ok(Some(gen.clone()));
            }
        }
        let Some(gen) = sample::Generator::new(&self.ctx, &recipe)? else {
            return Ok(None);
        };
        let gen = std::sync::Arc::new(gen);
        *held = key.map(|k| (k, gen.clone()));
        Ok(Some(gen))
    }

    /// The open device.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Replaces how long waits for the device may last and how much work one dispatch may
    /// hold ([`WaitPolicy`]).
    pub fn set_wait_policy(&self, policy: WaitPolicy) {
        self.ctx.set_wait_policy(policy);
    }

    /// [`Backend::moments`] with explicit kernel parameters (tests, tuning).
    pub fn moments_with(
        &self,
        source: &dyn SampleSource,
        spec: &BinSpec,
        weight: SampleWeight,
        params: &MomentKernelParams,
        progress: &indicatif::ProgressBar,
    ) -> Result<FilteredMoments> {
        moments::gpu_moments(
            &self.ctx,
            &self.moment_pipelines,
            source,
            spec,
            weight,
            params,
            Some(&self.resident),
            progress,
        )
    }

    /// [`Backend::predict`] with explicit kernel parameters (tests, tuning).
    pub fn predict_with(
        &self,
        network: &Network,
        x: &[f32],
        rows: usize,
        params: &ForwardKernelParams,
    ) -> Result<Vec<f32>> {
        forward::predict_with(&self.ctx, &self.forward_pipelines, network, x, rows, params)
    }

    /// [`Backend::fit_moments`] with explicit kernel parameters (tests, tuning).
    pub fn fit_moments_with(
        &self,
        source: &dyn SampleSource,
        basis: &[Vec<f64>],
        fit: &Network,
        params: &FitKernelParams,
        progress: &indicatif::ProgressBar,
    ) -> Result<FitMoments> {
        fit::fit_moments_with(
            &self.ctx,
            &self.fit_pipelines,
            source,
            basis,
            fit,
            params,
            Some(&self.resident),
            progress,
        )
    }

    /// Bytes of sample data the backend may keep on the device between passes (every pass over
    /// a source reads the device copy when one is held): sources that name themselves
    /// ([`SampleSource::identity`]) and fit whole are kept, least recently used evicted first;
    /// 0 turns this off and frees the copies. The default is
    /// [`ResidentSamples::default_budget`].
    pub fn set_resident_budget(&self, bytes: u64) {
        self.resident.set_budget(bytes);
    }

    /// The residency cache (budget, counters).
    pub fn resident(&self) -> &ResidentSamples {
        &self.resident
    }
}

impl Backend for GpuBackend {
    fn kind(&self) -> Device {
        Device::Gpu
    }

    fn description(&self) -> String {
        self.ctx.describe()
    }

    fn moments(
        &self,
        source: &dyn SampleSource,
        spec: &BinSpec,
        weight: SampleWeight,
        progress: &indicatif::ProgressBar,
    ) -> Result<FilteredMoments> {
        let params = MomentKernelParams::for_dim(spec.dim);
        self.moments_with(source, spec, weight, &params, progress)
    }

    fn evaluate_candidates(
        &self,
        samples: &ProjectedSamples,
        batch: &CandidateBatch,
    ) -> Result<CandidateStats> {
        evaluate::evaluate_candidates(&self.ctx, samples, batch)
    }

    fn fit_moments(
        &self,
        source: &dyn SampleSource,
        basis: &[Vec<f64>],
        fit: &Network,
        progress: &indicatif::ProgressBar,
    ) -> Result<FitMoments> {
        // Past rank 8 the CPU pass sums the rows of this backend's share (under MPI, of this
        // rank's): the device kernel keeps z in registers, eight at a time.
        if basis.len() > GPU_FIT_MAX_RANK {
            return crate::backend::cpu::CpuBackend::new()
                .fit_moments(source, basis, fit, progress);
        }
        let params = FitKernelParams::for_rank(&self.ctx, basis.len());
        self.fit_moments_with(source, basis, fit, &params, progress)
    }

    fn predict(&self, network: &Network, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        crate::backend::check_predict_input(network, x, rows)?;
        // Tunables for the layer stack the kernel runs (a projection folded in).
        let dense = network.dense();
        let params = ForwardKernelParams::for_network(&self.ctx, &dense);
        self.predict_with(&dense, x, rows, &params)
    }

    fn project(&self, basis: &[f64], x: &[f32], rows: usize) -> Result<Vec<f32>> {
        crate::backend::check_projection(basis, x, rows)?;
        let d = x.len().checked_div(rows).unwrap_or(1);
        let params = ProjectKernelParams::for_shape(&self.ctx, basis.len() / d.max(1), d);
        self.project_with(basis, x, rows, &params)
    }

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
        self.train_window_on_device(shape, train_basis, x, y, batch_size, params, adam)
    }

    fn assembles_windows(&self, source: &dyn SampleSource) -> bool {
        self.window_generator(source).is_ok_and(|g| g.is_some())
            || self.resident.held(source).is_some()
    }

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
        // Drawn on the device, else copied from the device's copy, else (the copy was evicted
        // since the trainer asked) read here.
        let gen = self.window_generator(source)?;
        let held = self.resident.held(source);
        let rows_from = match (&gen, &held) {
            (Some(gen), _) => trainer::WindowSource::Drawn(gen),
            (None, Some(batches)) => trainer::WindowSource::Resident(batches),
            (None, None) => trainer::WindowSource::Host(source),
        };
        self.train_assembled_window(
            rows_from,
            shape,
            train_basis,
            blocks,
            order,
            batch_size,
            params,
            adam,
        )
    }

    /// One minibatch of `train_window` on the device (the MPI backend adds these across ranks).
    fn gradient_sum(
        &self,
        shape: &FactoredShape,
        train_basis: bool,
        x: &[f32],
        y: &[f32],
        params: &[f64],
    ) -> Result<Vec<f64>> {
        self.train_gradient(shape, train_basis, x, y, params)
    }

    fn feature_normal_equations(
        &self,
        source: &dyn SampleSource,
        features: &SphereFeatures,
        progress: &indicatif::ProgressBar,
    ) -> Result<NormalEquations> {
        let params = FeatureKernelParams::for_rank(&self.ctx, features.rank);
        self.feature_normal_equations_with(source, features, &params, progress)
    }

    fn sse(&self, networks: &[&Network], source: &dyn SampleSource) -> Result<Vec<f64>> {
        self.sse_with(networks, source, None)
    }

    /// Every pass runs on the device.
    fn device_of(&self, _pass: Pass) -> Device {
        Device::Gpu
    }
}
