//! `learn` on whitened inputs: filtered PCA on the training split estimates mu and Sigma (from
//! its first pass) and finds the subspace in the whitened frame (the rounds read the raw rows,
//! see `data::whiten`); the rest of the pipeline runs on W (x - mu), and the map is folded into
//! the model so that it acts on the raw x.

use super::{learn_in, validation_split, Budget, LearnConfig, LearnReport, Stage, StageReport};
use crate::backend::{Backend, Pass};
use crate::data::whiten::{WhitenedSource, Whitening};
use crate::data::{SampleRange, SampleSource};
use crate::error::{Error, Result};
use crate::progress::StageClock;
use crate::subspace::{find_subspace, SubspaceConfig};

/// See the module docs. Called by [`learn`] when whitening is on and no basis is given.
pub(super) fn learn_whitened(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    config: &LearnConfig,
    budget: Option<&Budget>,
    origin: std::time::Instant,
) -> Result<LearnReport> {
    let (n_train, _) = validation_split(source.len() as usize, config.validation_fraction)?;
    let train = SampleRange::new(source, 0, n_train as u64)?;
    let t = StageClock::start();
    let sc = SubspaceConfig {
        seed: config.seed,
        whiten: true,
        ..config.subspace_config.clone()
    };
    let (report, note) = match budget {
        Some(b) => super::budget::subspace_within(backend, &train, &sc, b)?,
        None => (find_subspace(backend, &train, &sc)?, None),
    };
    if let Some(none) = report.no_structure() {
        return Err(Error::NoStructure(Box::new(none)));
    }
    let (subspace_seconds, subspace_cpu) = (t.seconds(), t.cpu_seconds());
    let whitening = report
        .whitening
        .clone()
        .unwrap_or_else(|| Whitening::identity(source.dim()));
    // The stage's line now, before the inner run's stages print theirs.
    let stage = StageReport {
        stage: Stage::Subspace,
        device: backend.device_of(Pass::Moments),
        rows: n_train as u64,
        row_reads: report.samples_used,
        seconds: subspace_seconds,
        host_cpu_seconds: subspace_cpu,
        validation_mse: None,
        started: (origin.elapsed().as_secs_f64() - t.seconds()).max(0.0),
        stopped: None,
        curve: Vec::new(),
    };
    stage.announce(1.0, Some(report.basis.len()), None);
    let mut inner = config.clone();
    inner.subspace_config.whiten = false;
    inner.known_basis = Some(report.frame_basis.clone());
    let mut out = if whitening.is_identity() {
        // W = I and mu = 0: the raw rows are the whitened rows.
        learn_in(backend, source, &inner, budget, origin)?
    } else {
        let view = WhitenedSource::new(source, &whitening)?;
        let mut r = learn_in(backend, &view, &inner, budget, origin)?;
        r.model = whitening.fold(&r.model)?;
        r
    };
    // The inner run reported an empty subspace stage (the basis was given): fill it in.
    if let Some(st) = out.stages.iter_mut().find(|s| s.stage == Stage::Subspace) {
        *st = stage;
    }
    out.subspace = Some(report);
    if let Some(note) = note {
        out.budget_notes.insert(0, note);
    }
    Ok(out)
}
