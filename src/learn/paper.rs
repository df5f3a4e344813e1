//! `learn --method paper`: the paper's algorithm as written (docs/algorithm.md, "The paper's
//! algorithm"). Filtered PCA's label rounds, each after the first conditioned on cells of every
//! direction found before it ([`crate::subspace::Method::Paper`]), then enumerate-and-test over
//! the product net on z = B x ([`crate::search::Generator::Sweep`]: every hidden unit on a net
//! of the sphere, bias-free as the paper's networks are, the output layer by least squares),
//! whose pick is the final hypothesis. No gradient is taken: no descent, deep-net or polish
//! stage runs, and neither do the sphere-net fit, whitening, refine steps or residual rounds.
//!
//! Also here: which parts of a `learn` report are the paper's and which are additions
//! ([`parts`]), for both methods.

use super::{
    mse, project_head, streamed_label_variance, validation_split, LearnConfig, LearnReport, Stage,
    StageReport,
};
use crate::backend::{Backend, Pass};
use crate::data::{SampleRange, SampleSource};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::progress::StageClock;
use crate::search::{enumerate_and_test, Generator, SearchConfig};
use crate::subspace::{find_subspace, Method, RoundKind, SubspaceConfig};

/// Which pipeline `learn` runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LearnMethod {
    /// Filtered PCA with its additions, enumerate-and-test and the sphere-net fit, then the
    /// gradient stages (descent, deep net, polish).
    #[default]
    Default,
    /// The paper's algorithm as written: conditioned label rounds, then enumerate-and-test over
    /// the product net as the final hypothesis; no gradient stages.
    Paper,
}

impl LearnMethod {
    /// "default" or "paper".
    pub fn name(self) -> &'static str {
        match self {
            LearnMethod::Default => "default",
            LearnMethod::Paper => "paper",
        }
    }
}

/// Most candidates the paper's enumerate-and-test evaluates when no budget is given: a cap, not
/// a target (the sweeps end by themselves; parity k = 4's sixteen units take about 3e4).
pub const PAPER_BUDGET: usize = 1_000_000;

/// Rows (training and validation each, the first ones) on which the paper's candidates are
/// scored: enough to rank candidates a few 1e-5 of Var(y) apart (the scores are paired: every
/// candidate sees the same rows), a fifth of the default search's, since the sweeps score far
/// more candidates.
pub const PAPER_SCORE_ROWS: usize = 10_000;

/// Runs the paper's pipeline; see the module docs. Called by [`super::learn`].
pub(super) fn learn_paper(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    config: &LearnConfig,
) -> Result<LearnReport> {
    let origin = std::time::Instant::now();
    let n = source.len() as usize;
    let d = source.dim();
    let (n_train, n_val) = validation_split(n, config.validation_fraction)?;
    let train = SampleRange::new(source, 0, n_train as u64)?;
    let n_fit = n_train.min(config.max_train_rows.unwrap_or(usize::MAX).max(1));
    let fit_rows = SampleRange::new(source, 0, n_fit as u64)?;
    let val = SampleRange::new(source, (n - n_val) as u64, n_val as u64)?;
    let stage = |name: Stage, pass: Pass, rows: u64, t: StageClock, mse| {
        StageReport::new(backend, origin, name, pass, rows, rows, t, mse)
    };

    let t = StageClock::start();
    let (basis, subspace) = match &config.known_basis {
        Some(b) => (b.clone(), None),
        None => {
            let sc = SubspaceConfig {
                method: Method::Paper,
                seed: config.seed,
                ..config.subspace_config.clone()
            };
            let report = find_subspace(backend, &train, &sc)?;
            if let Some(none) = report.no_structure() {
                return Err(Error::NoStructure(Box::new(none)));
            }
            (report.basis.clone(), Some(report))
        }
    };
    let r = basis.len();
    let max_dim = config.subspace_config.max_dim;
    if r == 0 || r > max_dim || basis.iter().any(|b| b.len() != d) {
        return Err(Error::invalid(format!(
            "learn: subspace of dimension {r} for d = {d}, max_dim {max_dim}"
        )));
    }
    let mut subspace_stage = stage(Stage::Subspace, Pass::Moments, n_train as u64, t, None);
    subspace_stage.row_reads = subspace.as_ref().map_or(0, |s| s.samples_used);
    if subspace.is_some() {
        subspace_stage.announce(1.0, Some(r), None);
    }
    let validation_var = streamed_label_variance(backend, &val)?;

    let t = StageClock::start();
    let flat: Vec<f64> = basis.iter().flatten().copied().collect();
    let rows = config.search_config.max_rows.clamp(1, PAPER_SCORE_ROWS);
    let sub_train = project_head(backend, &fit_rows, &flat, r, rows)?;
    let sub_val = project_head(backend, &val, &flat, r, rows)?;
    let search_config = SearchConfig {
        seed: config.seed,
        generator: Generator::Sweep,
        // The paper's networks are bias-free.
        bias_bound: 0.0,
        max_rows: rows,
        ..config.search_config.clone()
    };
    let found = enumerate_and_test(backend, &sub_train, &sub_val, &search_config)?;
    let model = Network::with_projection(&found.network, &basis)?;
    let validation_mse = mse(backend, &model, &val)?;
    let enumerate = stage(
        Stage::Enumerate,
        Pass::Evaluate,
        sub_train.len() as u64,
        t,
        Some(validation_mse),
    );
    enumerate.announce(validation_var, None, None);
    Ok(LearnReport {
        model,
        dimension: r,
        subspace,
        validation_mse,
        validation_var,
        enumerate_mse: validation_mse,
        sphere_net_mse: None,
        descent_mse: None,
        deep_net_mse: None,
        polished_mse: None,
        deepen_mse: None,
        chosen: Stage::Enumerate,
        final_stage: Stage::Enumerate,
        candidates_evaluated: found.candidates_evaluated,
        full_net_log10: found.full_net_log10,
        train_rows: n_train,
        validation_rows: n_val,
        stages: vec![subspace_stage, enumerate],
        backend: backend.description(),
        method: LearnMethod::Paper,
        deep_net_decision: None,
        deep_net_evidence: None,
        deepen_decision: None,
        time_budget: None,
        budget_notes: Vec::new(),
        target_error: None,
        target_note: None,
    })
}

/// One part of the algorithm in a `learn` report: the paper's or an addition, and whether it
/// ran.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Part {
    pub name: &'static str,
    /// True for the paper's own steps, false for this implementation's additions.
    pub paper: bool,
    pub ran: bool,
}

/// The parts of the algorithm and whether each ran in `report` (see docs/algorithm.md, "What
/// is the paper's and what is added").
pub fn parts(report: &LearnReport) -> Vec<Part> {
    let sub = report.subspace.as_ref();
    let label_rounds = sub.map_or(0, |s| {
        s.rounds
            .iter()
            .filter(|r| r.kind == RoundKind::Label)
            .count()
    });
    let stage = |name: Stage| report.stages.iter().any(|s| s.stage == name);
    let default = report.method == LearnMethod::Default;
    let part = |name, paper, ran| Part { name, paper, ran };
    vec![
        part("label round 1 (filtered PCA on y)", true, sub.is_some()),
        part(
            "conditioned label rounds (cells of the found directions)",
            true,
            label_rounds > 1,
        ),
        part("enumerate-and-test", true, stage(Stage::Enumerate)),
        part(
            "calibrated null (random-group contrasts)",
            false,
            sub.is_some(),
        ),
        part(
            "whitening",
            false,
            sub.is_some_and(|s| s.whitening.is_some()),
        ),
        part("filtered means", false, sub.is_some() && default),
        part(
            "refine steps (Gauss-Newton on B)",
            false,
            sub.is_some_and(|s| !s.refine.is_empty()),
        ),
        part(
            "refine sweeps (the paper's round on each direction, conditioned on the others, with a cell SIR beside its filters)",
            false,
            sub.is_some_and(|s| s.rounds.iter().any(|r| r.kind == RoundKind::Refine)),
        ),
        part(
            "residual rounds",
            false,
            sub.is_some_and(|s| s.rounds.iter().any(|r| r.kind == RoundKind::Residual)),
        ),
        part(
            "greedy candidate generator",
            false,
            default && stage(Stage::Enumerate),
        ),
        part("sphere-net fit", false, stage(Stage::SphereNet)),
        part("descent on z (Adam)", false, stage(Stage::Descent)),
        part("deep net on z (Adam)", false, stage(Stage::DeepNet)),
        part(
            "polish (Adam on B and the network)",
            false,
            stage(Stage::Polish),
        ),
        part(
            "deepen (one more hidden layer, polished)",
            false,
            stage(Stage::Deepen),
        ),
    ]
}

/// Whether the stage that produced the final model is the paper's.
pub fn final_stage_is_paper(report: &LearnReport) -> bool {
    report.final_stage == Stage::Enumerate
}

/// The summary's lines on the parts (see [`parts`]).
pub fn parts_summary(report: &LearnReport) -> String {
    let p = parts(report);
    let list = |paper: bool, ran: bool| -> String {
        let names: Vec<&str> = p
            .iter()
            .filter(|x| x.paper == paper && x.ran == ran)
            .map(|x| x.name)
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    format!(
        "method {}: the paper's steps that ran: {}; additions that ran: {}; not run: {}; the final model is {} (from the {} stage)\n",
        report.method.name(),
        list(true, true),
        list(false, true),
        {
            let not: Vec<&str> = p.iter().filter(|x| !x.ran).map(|x| x.name).collect();
            if not.is_empty() {
                "none".to_string()
            } else {
                not.join(", ")
            }
        },
        if final_stage_is_paper(report) {
            "the paper's hypothesis"
        } else {
            "an addition's (no guarantee of the paper covers it)"
        },
        report.final_stage
    )
}

/// [`parts`] as JSON: `[{"name": .., "paper": bool, "ran": bool}, ..]`.
pub fn parts_json(report: &LearnReport) -> serde_json::Value {
    serde_json::to_value(parts(report)).expect("names and flags")
}
