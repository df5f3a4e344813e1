//! The whole pipeline: hold out a validation split (the last rows), find the subspace on the
//! training split, search a network on z = B x (the sphere-net fit from normal equations
//! streamed over the training rows, then enumerate-and-test on a bounded subsample, keeping
//! whichever validates better), descend from it on z with B fixed, train a deeper network on z
//! when the evidence says it can help ([`gate`]), polish the better network together with B,
//! polish once more with one more hidden layer when the model is not done (the deepen stage), and
//! return the compact model x -> small network(B x). With whitening (on by default) filtered PCA
//! estimates mu and Sigma from its first pass, the fitting stages read W (x - mu) through a
//! view, and the map is folded into the model so that it acts on the raw x. The trainer
//! stages are the streaming trainer
//! ([`train`]) over every training row, each ending when its validation error stops improving
//! ([`StopRule`]); every stage's result is scored on the whole validation split, streamed.
//! Memory is bounded by a few chunks of rows and the model, whatever N: nothing holds x or z
//! for all rows. With a time budget ([`budget`]) the stages are planned to end within it.

pub mod budget;
pub mod gate;
mod grow;
pub mod options;
mod paper;
mod polish;
mod stage;
mod train;
pub mod work;

pub use budget::Budget;
pub use gate::{DeepNetEvidence, DeepNetGate};
pub use options::{min_fit_rows, LearnOptions};
pub use paper::{parts, LearnMethod, Part, PAPER_BUDGET, PAPER_SCORE_ROWS};
pub use polish::{dense_mse, polish, DenseSamples, PolishConfig, PolishResult};
pub use stage::Stage;
pub use train::{
    mse, train, train_until, validation_mse, window_rows, Check, Limits, Race, StopReason,
    StopRule, TrainOutcome, BLOCK_ROWS,
};

use crate::backend::{Backend, Device, FactoredShape, Pass, ProjectedSamples};
use crate::data::whiten::{WhitenedSource, Whitening};
use crate::data::{for_each_chunk, SampleRange, SampleSource};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::progress::{num, StageClock};
use crate::search::{search, sphere_net_fit_streamed, SearchConfig, SphereNetConfig};
use crate::subspace::{find_subspace, SubspaceConfig, SubspaceReport};
use std::time::Instant;

/// Settings of [`learn`]: what the front ends make of a user's [`LearnOptions`]
/// ([`LearnOptions::into_config`]), and the stages' own settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnConfig {
    /// The pipeline: the default one, or the paper's algorithm as written (`paper`).
    pub method: LearnMethod,
    /// Seed of every random choice: its one home (`learn` seeds every stage from it, so the
    /// `seed` fields of the stage settings below are not read).
    pub seed: u64,
    /// Fraction of the rows (the last ones) held out for validation, in (0, 1).
    pub validation_fraction: f64,
    /// After the search, train its network on z = B x with the basis fixed (descent is benign
    /// in r dimensions; docs/algorithm.md, the fitting stages).
    pub descent: bool,
    /// Descent settings (the polish's trainer on z; its seed is taken from `seed`).
    pub descent_config: PolishConfig,
    /// Refine the found network and the basis jointly after the search (see `polish`).
    pub polish: bool,
    /// Also fit sphere-net features plus ridge and keep it if it validates better.
    pub sphere_net: bool,
    /// Hidden widths of a second network on z, trained by the descent from a random start
    /// (the "deep-net" stage) and kept when it validates better than the descent from the
    /// search's pick; empty: no such stage. A one-hidden-layer fit approximates a deep teacher
    /// poorly, and descent in r dimensions is cheap and benign. With more than one candidate
    /// (cheapest first, and no time budget), each but the first trains a pilot of
    /// `deep_pilot_rows` row reads (to the first check after them) from its random start; the
    /// first is the stage and goes on past as many row reads unless their pick validates better
    /// by a margin ([`DEEP_PILOT_MARGIN`]), which is then trained instead.
    pub deep_candidates: Vec<Vec<usize>>,
    pub deep_pilot_rows: u64,
    /// The deep-net stage's trainer settings (its seed is derived from `seed`).
    pub deep_config: PolishConfig,
    /// Polish settings (its seed is taken from `seed`).
    pub polish_config: PolishConfig,
    /// Enumerate-and-test settings: the hidden widths of the candidates (`hidden`) and the most
    /// candidates it evaluates (`budget`) live here.
    pub search_config: SearchConfig,
    /// Sphere-net settings.
    pub sphere_config: SphereNetConfig,
    /// Filtered-PCA settings. Its `max_dim`, the largest subspace dimension accepted (a user
    /// bound, default 32 as for `subspace`, not a limit of any stage), also bounds the rows
    /// the polish may grow B to.
    pub subspace_config: SubspaceConfig,
    /// A subspace basis (orthonormal rows, r x d) to use instead of filtered PCA: oracle runs
    /// and tests. `None` runs filtered PCA.
    pub known_basis: Option<Vec<Vec<f64>>>,
    /// The stages that fit the network on z (enumerate-and-test, whose subsample is bounded by
    /// `search_config.max_rows` anyway, the sphere-net fit, the descent and the polish) read at
    /// most this many training rows (the first ones); `None`, the default, reads them all.
    /// Filtered PCA always reads every training row.
    pub max_train_rows: Option<usize>,
    /// Spare basis rows the polish may grow into (at most `max_dim` rows in all); each is kept
    /// only when the validation error says it helps (see `grow`). `None`, the default:
    /// [`auto_spare_rows`] of the subspace stage's dimension.
    pub spare_rows: Option<usize>,
    /// When the deep-net stage runs ([`gate`]); `None`: whenever `deep_widths` is not empty.
    pub deep_gate: Option<DeepNetGate>,
    /// Wall-clock seconds the whole pipeline may take ([`budget`]); `None`, the default: no
    /// limit, and the result depends only on the data, the settings and the seed.
    pub time_budget: Option<f64>,
    /// Validation MSE/Var at which the pipeline stops ([`Run::reached`]): trainer stages end
    /// at the first check at or below it and later stages do not run. `None`: no target.
    pub target_error: Option<f64>,
}

impl Default for LearnConfig {
    fn default() -> Self {
        LearnConfig {
            method: LearnMethod::Default,
            seed: 0,
            validation_fraction: 0.2,
            descent: true,
            // On all training rows: 30 passes over 1e5 rows (the old cap), and on more rows
            // passes over all of them adding up to the same 3e6 row reads (at least two). At
            // d = 128, N = 1e6 (4 passes over 8e5 rows) the descent ends where 30 passes over
            // 1e5 rows did (parity 3.36e-3 both), and on the label-noise teacher 8 passes over
            // 4e5 rows end lower than 30 over 1e5.
            //
            // Now (issue 22) it ends sooner when its validation error stops improving, and on
            // more than 5e4 rows its passes add up to 1.5e6 row reads: what comes after it (the
            // polish, or the deep net) trains the same network again, so its last digits were
            // not worth their seconds (issue 22, the parity demo: 1.6e6 row reads instead of
            // 3.2e6, 4.1e-3 of Var(y) against 3.9e-3 after it, and test MSE/Var 3.6e-6 against
            // 2.9e-6 after the polish).
            descent_config: PolishConfig {
                row_budget: 1_500_000,
                min_epochs: 2,
                stop: Some(StopRule::default()),
                ..PolishConfig::default()
            },
            polish: true,
            sphere_net: true,
            // On the random [6, 6] teacher (d = 96, 6e5 rows) the descent from the sphere-net
            // fit ended at 1.2e-3 of Var(y) where MLPRegressor reached 1.1e-5 in full d; two
            // layers of 32 fit such teachers and cost a few seconds per 1e6 rows. A third
            // layer (issue 26) fits them further: validation MSE/Var after the polish 4.8e-6
            // against 6.9e-5 there (25 s against 19 s on 2 cores); [64, 64] reached 3.9e-6
            // in 32 s, [48, 48, 48] 1.3e-5 in 36 s. The pilots choose per teacher.
            deep_candidates: vec![vec![32, 32], vec![32, 32, 32]],
            // On that teacher the candidates' validation errors were ordered by then as at
            // the end of the stage.
            deep_pilot_rows: 500_000,
            // From a random start it needs more steps than the descent from a fit. Its
            // patience is long (issue 22): a deep net cut at its first plateau (1.5e6 row reads)
            // was as good on validation but polished 3x worse on the random [8, 8] network
            // (3.4e-7 against 1.0e-7), and 3e6 gave the old results back.
            deep_config: PolishConfig {
                epochs: 60,
                row_budget: 10_000_000,
                min_epochs: 3,
                stop: Some(StopRule {
                    patience_rows: 3_000_000,
                    // ... but only material gains renew it: at its plateau (the basis's error
                    // on random [16, 8] at d = 256, 2.5e5 rows) the paired test still found
                    // gains of 0.1% significant and the stage read 1.1e7 rows for 2% in all;
                    // with this rule 5.1e6, and the quarter-size benchmark's final errors were
                    // within 1.15x of before (five better).
                    material: true,
                    ..StopRule::default()
                }),
                ..PolishConfig::default()
            },
            // 30 passes, at most 4.8e6 row reads (at least one pass): with the deep net ending
            // once it has caught up with the descent, the reads it no longer takes go here,
            // where B moves too (the first polish's row budget also grows by what the deep
            // net's plan had left, `Run::polish_bonus_reads`). On the quarter-size benchmark
            // (one sitting each, c56fa50) 30 rather than 15 passes after a deep net caught up
            // took the test MSE/Var of the random [6, 6] network from 2.5e-5 to 1.0e-6 and of
            // parity k = 4 at d = 128 from 2.9e-6 to 5.8e-7, and the anisotropic case's back
            // from 1.9e-5 to 6.0e-6 (3.7e-6 with the deep net trained to its plateau and 15
            // passes). On more than 1.6e5 rows, passes over all rows adding up to 4.8e6 row
            // reads. At d = 128, N = 1e6 (8e5 training rows), validation MSE/Var: parity 2.4e-6
            // after 6 passes, 1.3e-5 after 3, 1.9e-5 after 15 passes over 1e5 rows; fan
            // 1.4e-7, 1.2e-6 and 2.0e-7. The polish is step-limited on smooth teachers. It
            // ends sooner when its validation error stops improving.
            polish_config: PolishConfig {
                epochs: 30,
                row_budget: 4_800_000,
                min_epochs: 1,
                stop: Some(StopRule {
                    patience_rows: 1_500_000,
                    // Its gains come from the decaying step size: where the checks bounced
                    // above the best, a decay over a quarter of the row reads so far ended
                    // while the error still fell (full size, seed 1: parity k = 4 at d = 128
                    // 6.3e-4 -> 2.4e-6 in 0.7e6 row reads; Student t5 inputs at 1.0e-5), and
                    // one twice as long as them (to the plan's end) took validation MSE/Var
                    // to 3.6e-7 and 4.9e-6. Where the checks sat at the best (label noise, a
                    // deep parity) it stays short.
                    step_noise_ratio: 1.5,
                    step_noise_finish_fraction: 2.0,
                    wait_for_gain: true,
                    ..StopRule::default()
                }),
                ..PolishConfig::default()
            },
            search_config: SearchConfig {
                hidden: vec![4],
                // Measured at d = 128, N = 1e6 on the five benchmark teachers: the sphere-net
                // fit beat enumerate-and-test on all of them at 4096 candidates too, and the
                // descent starts from the better; 512 keeps the search near half a second.
                budget: 512,
                ..SearchConfig::default()
            },
            sphere_config: SphereNetConfig::default(),
            subspace_config: SubspaceConfig {
                max_dim: 32,
                ..SubspaceConfig::default()
            },
            known_basis: None,
            max_train_rows: None,
            spare_rows: None,
            deep_gate: Some(DeepNetGate::default()),
            time_budget: None,
            target_error: None,
        }
    }
}

/// Validation MSE before and after the polish.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PolishedMse {
    pub before: f64,
    pub after: f64,
    /// Whether the polished network was kept (only when `after < before`).
    pub kept: bool,
}

impl From<&PolishResult> for PolishedMse {
    fn from(r: &PolishResult) -> Self {
        PolishedMse {
            before: r.before,
            after: r.after,
            kept: r.kept,
        }
    }
}

impl From<&TrainOutcome> for PolishedMse {
    fn from(r: &TrainOutcome) -> Self {
        PolishedMse {
            before: r.before,
            after: r.after,
            kept: r.kept,
        }
    }
}

/// One stage of [`learn`]: where it ran, what it read, how long it took, and the validation
/// error of its result. Its JSON has these fields.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StageReport {
    /// Which stage.
    pub stage: Stage,
    /// The device of the stage's passes over the rows.
    pub device: Device,
    /// Distinct training rows the stage computed on.
    pub rows: u64,
    /// Rows streamed, repeated passes included (validation scoring not counted).
    pub row_reads: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// CPU seconds this process spent during the stage, all its threads together (Linux; None
    /// elsewhere): the host's computing, as opposed to waiting on the device or the disk. It is
    /// process CPU time, so a driver's busy threads count, and on a software adapter (lavapipe)
    /// the device's own work runs on the CPU and counts too. Under MPI: rank 0's.
    pub host_cpu_seconds: Option<f64>,
    /// Validation MSE of the stage's result on the whole validation split (the best epoch for
    /// the trainers, kept or not); None for the subspace.
    pub validation_mse: Option<f64>,
    /// Wall seconds from the start of `learn` to the start of the stage.
    pub started: f64,
    /// Why a trainer stage ended (written as [`StopReason::as_str`]); None for the other
    /// stages.
    pub stopped: Option<StopReason>,
    /// A trainer stage's validation checks ([`Check`], its seconds counted from the start of
    /// `learn` like `started`, not from the stage's start as in [`TrainOutcome`]).
    pub curve: Vec<Check>,
}

impl StageReport {
    /// Prints the stage's line on stderr (see [`crate::progress::stage_done`]): rows, row reads
    /// when they differ, seconds, and its validation MSE / `var` when it has one.
    pub(crate) fn announce(&self, var: f64, directions: Option<usize>, kept: Option<bool>) {
        crate::progress::stage_done(self.stage.as_str(), || {
            let mut facts = Vec::new();
            if let Some(r) = directions {
                facts.push(format!("{r} direction{}", if r == 1 { "" } else { "s" }));
            }
            facts.push(format!("{} rows", crate::progress::count(self.rows)));
            if self.row_reads != self.rows {
                facts.push(format!(
                    "{} row reads",
                    crate::progress::count(self.row_reads)
                ));
            }
            facts.push(crate::progress::seconds(self.seconds));
            if let Some(m) = self.validation_mse {
                let mut f = format!("validation MSE/Var {}", num(m / var.max(1e-300)));
                if kept == Some(false) {
                    f += " (not kept)";
                }
                facts.push(f);
            }
            if let Some(why) = &self.stopped {
                facts.push(format!("ended: {why}"));
            }
            facts
        });
    }
}

/// What [`learn`] returns. Its JSON ([`LearnReport::to_json`]) has these fields, and a few
/// more derived from them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LearnReport {
    /// The model on the original d-dim input, in compact form (projection B, then the small
    /// network); `subspace` is the span of B. In the JSON: the network module's own schema.
    #[serde(serialize_with = "model_json")]
    pub model: Network,
    /// Subspace dimension r that the search and the descent worked in.
    pub dimension: usize,
    /// What filtered PCA reported (None when a known basis was given).
    #[serde(serialize_with = "subspace_json")]
    pub subspace: Option<SubspaceReport>,
    /// Validation MSE of the returned model.
    pub validation_mse: f64,
    /// Variance of the validation labels (MSE / Var is the relative error).
    pub validation_var: f64,
    /// Validation MSE of enumerate-and-test's best network (on the whole validation split).
    pub enumerate_mse: f64,
    /// Validation MSE of the sphere-net fit, when it ran.
    pub sphere_net_mse: Option<f64>,
    /// Descent errors on the projected problem, when it ran.
    pub descent_mse: Option<PolishedMse>,
    /// The deep-net stage, when it ran: `before` is the error it had to beat, `kept` whether
    /// it did.
    pub deep_net_mse: Option<PolishedMse>,
    /// Polish errors, when it ran.
    pub polished_mse: Option<PolishedMse>,
    /// The deepen stage's errors, when it ran.
    pub deepen_mse: Option<PolishedMse>,
    /// The search's pick: [`Stage::Enumerate`] or [`Stage::SphereNet`].
    pub chosen: Stage,
    /// The stage whose result is the returned model (any but [`Stage::Subspace`]).
    pub final_stage: Stage,
    /// Candidates evaluated, and log10 of the full net's size at the chosen resolution.
    pub candidates_evaluated: usize,
    pub full_net_log10: f64,
    /// Training and validation rows.
    pub train_rows: usize,
    pub validation_rows: usize,
    /// The stages in order.
    pub stages: Vec<StageReport>,
    /// The backend's description.
    pub backend: String,
    /// The pipeline that ran (see [`parts`] for which of its parts are the paper's).
    pub method: LearnMethod,
    /// Whether the deep-net stage ran, and why ([`gate`]); None when it was not asked for
    /// (no `deep_widths`, or no descent to compare with).
    pub deep_net_decision: Option<String>,
    /// The residual test behind that decision, when it ran.
    pub deep_net_evidence: Option<DeepNetEvidence>,
    /// Whether the deepen stage ran, and why; None when it was not asked for (no polish, no
    /// deep-net candidates, or a time budget).
    pub deepen_decision: Option<String>,
    /// The time budget in seconds, when there was one.
    pub time_budget: Option<f64>,
    /// What the time budget changed, stage by stage (empty without one).
    pub budget_notes: Vec<String>,
    /// The target validation MSE/Var ([`LearnConfig::target_error`]), when there was one.
    pub target_error: Option<f64>,
    /// Whether the target was reached, and which stages it left out (None without a target).
    pub target_note: Option<String>,
}

impl LearnReport {
    /// A few human lines, and the stage table.
    pub fn summary(&self) -> String {
        let var = self.validation_var.max(1e-300);
        let r = self.model.layer_input_dim();
        let grown = if r > self.dimension {
            format!(", {} more grown in the polish", r - self.dimension)
        } else {
            String::new()
        };
        let mut s = format!(
            "learned a {:?} ReLU network on z = B x, B of {r} rows ({} from the subspace stage{grown}), x in R^{} ({} train / {} validation rows, {})\n",
            self.model.hidden_widths(),
            self.dimension,
            self.model.input_dim,
            self.train_rows,
            self.validation_rows,
            self.backend
        );
        match &self.subspace {
            Some(sub) => s += &sub.summary(),
            None => s += "subspace: given (known basis)\n",
        }
        s += &paper::parts_summary(self);
        s += &format!(
            "validation MSE {}, MSE/Var {}; final model from the {} stage (search kept {}; enumerate-and-test {} candidates of a net of 10^{:.1})\n",
            num(self.validation_mse),
            num(self.validation_mse / var),
            self.final_stage,
            self.chosen,
            self.candidates_evaluated,
            self.full_net_log10
        );
        if let Some(why) = &self.deep_net_decision {
            s += &format!("deep-net stage: {why}\n");
        }
        if let Some(why) = &self.deepen_decision {
            s += &format!("deepen stage: {why}\n");
        }
        if let Some(b) = self.time_budget {
            s += &format!(
                "time budget {b} s (a budgeted run depends on this machine's speed and load, so it is not reproducible across machines): {}\n",
                if self.budget_notes.is_empty() {
                    "no stage was cut".to_string()
                } else {
                    self.budget_notes.join("; ")
                }
            );
        }
        if let Some(note) = &self.target_note {
            s += &format!("target: {note}\n");
        }
        s += &format!(
            "{:<11} {:<6} {:>10} {:>11} {:>8} {:>8} {:>11} {:>11}\n",
            "stage", "device", "rows", "row reads", "seconds", "host CPU", "val MSE", "MSE/Var"
        );
        for st in &self.stages {
            let (mse, rel) = match st.validation_mse {
                Some(m) => (num(m), num(m / var)),
                None => ("-".to_string(), "-".to_string()),
            };
            let kept = match st.stage {
                Stage::Descent => self.descent_mse.map(|p| p.kept),
                Stage::DeepNet => self.deep_net_mse.map(|p| p.kept),
                Stage::Polish => self.polished_mse.map(|p| p.kept),
                Stage::Deepen => self.deepen_mse.map(|p| p.kept),
                Stage::Subspace | Stage::Enumerate | Stage::SphereNet => None,
            };
            let cpu = st
                .host_cpu_seconds
                .map_or("-".to_string(), |c| format!("{c:.2}"));
            s += &format!(
                "{:<11} {:<6} {:>10} {:>11} {:>8.2} {:>8} {:>11} {:>11}{}{}\n",
                st.stage,
                st.device,
                st.rows,
                st.row_reads,
                st.seconds,
                cpu,
                mse,
                rel,
                match kept {
                    Some(false) => " (not kept)",
                    _ => "",
                },
                st.stopped
                    .as_ref()
                    .map_or(String::new(), |w| format!(" [{w}]"))
            );
        }
        s
    }

    /// The report and the model as JSON: its fields, and `model_dimension` (the model's rows
    /// of B), `parts` ([`parts`]) and `reproducible` (no time budget).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a report of numbers and strings");
        let fields = v.as_object_mut().expect("a struct is an object");
        fields.insert(
            "model_dimension".into(),
            self.model.layer_input_dim().into(),
        );
        fields.insert("parts".into(), paper::parts_json(self));
        fields.insert("reproducible".into(), self.time_budget.is_none().into());
        v
    }

    /// The validation error of the best model so far against wall seconds since `learn`
    /// started: every stage's result at its end, and the trainers' checks in between (on their
    /// check rows), as (seconds, validation MSE) points in time order. What a time-to-accuracy
    /// comparison reads.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        let mut best = f64::INFINITY;
        let mut out = Vec::new();
        for st in &self.stages {
            for c in &st.curve {
                best = best.min(c.best_mse);
                out.push((c.seconds, best));
            }
            if let Some(m) = st.validation_mse {
                best = best.min(m);
                out.push((st.started + st.seconds, best));
            }
        }
        out
    }
}

/// [`LearnReport::model`] in the JSON: the network module's own schema.
fn model_json<S: serde::Serializer>(model: &Network, s: S) -> std::result::Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&model.to_value(), s)
}

/// [`LearnReport::subspace`] in the JSON: the subspace report's own.
fn subspace_json<S: serde::Serializer>(
    report: &Option<SubspaceReport>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&report.as_ref().map(SubspaceReport::to_value), s)
}

/// The line of the stage just recorded (see [`StageReport::announce`]).
fn announce_last(stages: &[StageReport], var: f64, kept: Option<bool>) {
    if let Some(st) = stages.last() {
        st.announce(var, None, kept);
    }
}

/// Spare rows the polish gets by default when the subspace stage found r directions: 2 up to
/// r = 4, then r. A first layer of high rank has more directions too weak for filtered PCA at
/// a given N (measured at 1e6 rows: a random [12, 6] network at d = 128, 8 of 12 found, MSE/Var
/// 1.4e-3 with 2 spare rows and 1.1e-7 with 4; a random [16, 8] network at d = 256, 8 of 16
/// found, 7.5e-3 with 4 and 9e-7 with 8), while for small r two cost little and catch a missed
/// direction. Unused rows are pruned after the polish.
pub fn auto_spare_rows(r: usize) -> usize {
    if r <= 4 {
        2
    } else {
        r
    }
}

/// Length of a spare basis row at the start of the polish (B's rows have length 1): small, so
/// the grown network starts within about 1e-4 of the ungrown one.
const GROW_SCALE: f64 = 1e-2;
/// A spare row is kept when dropping it raises the validation error by more than this many
/// standard errors of the paired difference (one-sided, about 1e-3 by chance).
const PRUNE_Z: f64 = 3.0;

/// Mixed into the seed of the deep-net stage's start and sample order.
const DEEP_NET_SEED: u64 = 0x6465_6570_6e65_7421;

/// At or below this validation MSE / Var the model is done and the deepen stage does not run
/// (on noiseless data the polish ends near 1e-6; a noise floor above this leaves the stage to
/// try, and it is kept only when it validates better).
const DEEPEN_BAR: f64 = 1e-4;
/// Mixed into the seed of the deepen stage's sample order.
const DEEPEN_SEED: u64 = 0x6465_6570_656e_0001;
/// Widest new layer the deepen stage trains at the polish's step size ([`deepen_step_scale`]):
/// the deep-net candidates' width, at which its gains were measured.
const DEEPEN_WIDTH: usize = 32;

/// A costlier deep-net candidate (a later one) is chosen only when its pilot's validation
/// error is below this times the chosen one's: a near tie is noise, and on the random [8, 8]
/// teacher (d = 128, 1e6 rows) the pilots' 5.1e-3 against 5.2e-3 for [32, 32] would have
/// given 1.1e-6 after the polish instead of 2.3e-7; on the [6, 6] one 1.3e-3 against 2.2e-3
/// gave 4.8e-6 instead of 6.9e-5.
const DEEP_PILOT_MARGIN: f64 = 0.8;

/// A network on r inputs with the given hidden widths and one output, He-initialised (weights
/// N(0, 2 / fan-in), the output layer N(0, 1 / fan-in)) with small biases, so that the units'
/// hyperplanes do not all pass through the origin.
fn random_start(r: usize, widths: &[usize], seed: u64) -> Result<Network> {
    use rand::{RngExt, SeedableRng};
    use rand_distr::StandardNormal;
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut layers = Vec::with_capacity(widths.len() + 1);
    let mut inputs = r;
    for (i, &outputs) in widths.iter().chain(std::iter::once(&1)).enumerate() {
        let gain = if i < widths.len() { 2.0 } else { 1.0 };
        let scale = (gain / inputs as f64).sqrt();
        let weights = (0..inputs * outputs)
            .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
            .collect();
        let bias = (0..outputs)
            .map(|_| 0.1 * rng.sample::<f64, _>(StandardNormal))
            .collect();
        layers.push(crate::network::Layer::new(inputs, outputs, weights, bias)?);
        inputs = outputs;
    }
    Ok(Network::new(r, layers)?)
}

/// The subspace stage's result: the basis (r rows of the frame the fitting stages read),
/// filtered PCA's report when it ran, the whitening that frame is (None: the raw x), and what
/// a budget changed.
struct FoundBasis {
    basis: Vec<Vec<f64>>,
    report: Option<SubspaceReport>,
    whitening: Option<Whitening>,
    note: Option<String>,
}

/// The subspace basis: the configured one (on the raw x), or filtered PCA on the training
/// split (within its share of a budget, saying what the budget changed). With whitening on,
/// filtered PCA estimates mu and Sigma from its first pass and the basis is returned in the
/// whitened frame, where the fitting stages then run.
fn find_basis(
    backend: &dyn Backend,
    train: &dyn SampleSource,
    config: &LearnConfig,
    budget: Option<&Budget>,
) -> Result<FoundBasis> {
    if let Some(b) = &config.known_basis {
        return Ok(FoundBasis {
            basis: b.clone(),
            report: None,
            whitening: None,
            note: None,
        });
    }
    let sc = SubspaceConfig {
        seed: config.seed,
        ..config.subspace_config.clone()
    };
    let (report, note) = match budget {
        Some(b) => budget::subspace_within(backend, train, &sc, b)?,
        None => (find_subspace(backend, train, &sc)?, None),
    };
    if let Some(none) = report.no_structure() {
        return Err(Error::NoStructure(Box::new(none)));
    }
    // W = I and mu = 0: the raw rows are the whitened rows.
    let whitening = (report.whitening.clone()).filter(|w| !w.is_identity());
    Ok(FoundBasis {
        basis: report.frame_basis.clone(),
        report: Some(report),
        whitening,
        note,
    })
}

/// z = B x for the first `rows` rows of `source` (the search's bounded subsample), on the
/// backend.
fn project_head(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    basis: &[f64],
    rank: usize,
    rows: usize,
) -> Result<ProjectedSamples> {
    let head = SampleRange::new(source, 0, source.len().min(rows as u64))?;
    let mut out = ProjectedSamples {
        rank,
        z: Vec::with_capacity(head.len() as usize * rank),
        y: Vec::with_capacity(head.len() as usize),
    };
    for_each_chunk(&head, 1 << 14, |_, x, y| {
        out.z.extend(backend.project(basis, x, y.len())?);
        out.y.extend_from_slice(y);
        Ok(())
    })?;
    Ok(out)
}

/// Variance of the labels of `source`, streamed (f64 sums, split across MPI ranks).
fn streamed_label_variance(backend: &dyn Backend, source: &dyn SampleSource) -> Result<f64> {
    let sums = backend.row_sums(source, 3, &mut |rows| {
        let mut s = vec![0f64; 3];
        for_each_chunk(rows, 1 << 16, |_, _, y| {
            for &v in y {
                s[0] += 1.0;
                s[1] += v as f64;
                s[2] += (v as f64).powi(2);
            }
            Ok(())
        })?;
        Ok(s)
    })?;
    let (n, sum, sum2) = (sums[0], sums[1], sums[2]);
    let mean = sum / n.max(1.0);
    Ok((sum2 / n.max(1.0) - mean * mean).max(0.0))
}

/// Training and validation rows: the last `fraction` of the rows (at least one) validate.
pub(crate) fn validation_split(n: usize, fraction: f64) -> Result<(usize, usize)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::invalid(
            "learn: validation_fraction must lie strictly between 0 and 1",
        ));
    }
    if n < 2 {
        return Err(Error::invalid(format!(
            "learn: needs at least 2 samples of positive dimension (got {n})"
        )));
    }
    let n_val = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    Ok((n - n_val, n_val))
}

/// Runs the pipeline; see the module docs.
pub fn learn(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    config: &LearnConfig,
) -> Result<LearnReport> {
    let budget = match config.time_budget {
        None => None,
        Some(_) if config.method == LearnMethod::Paper => {
            return Err(Error::invalid(
                "learn: the paper's algorithm runs as written, with no stage to plan: a time budget applies to the default method",
            ))
        }
        Some(_) if crate::runtime::ranks() > 1 => {
            return Err(Error::invalid(
                "learn: a time budget is not available under mpirun: the ranks would read different clocks and take different decisions; run without it, or as one process",
            ))
        }
        Some(b) => Some(Budget::new(b)?),
    };
    learn_in(backend, source, config, budget.as_ref(), Instant::now())
}

/// The best model so far, passed from stage to stage: the network on z, the basis B, its
/// validation error and the stage that made it.
struct Best {
    network: Network,
    basis: Vec<Vec<f64>>,
    validation_mse: f64,
    stage: Stage,
}

/// What the stages of one run share: where they read, what they are told, and what they have
/// reported so far.
struct Run<'a> {
    backend: &'a dyn Backend,
    config: &'a LearnConfig,
    budget: Option<&'a Budget>,
    /// When the whole run began (the stages' start times count from it).
    origin: Instant,
    /// Input dimension d.
    d: usize,
    /// The training rows the fitting stages read.
    fit_rows: SampleRange<'a>,
    n_fit: usize,
    /// The validation rows every stage scores its result on.
    val: SampleRange<'a>,
    /// Variance of their labels.
    validation_var: f64,
    stages: Vec<StageReport>,
    budget_notes: Vec<String>,
    /// Set when the best model first reaches the target error ([`Run::reached`]).
    target_note: Option<String>,
    /// Row reads of its plan the deep net left when it caught up: the first polish's row
    /// budget grows by them (still at most its passes).
    polish_bonus_reads: u64,
}

/// What enumerate-and-test leaves for the later stages: its bounded subsamples of z (the
/// deep-net gate's residual test reads them), its counts, and the seconds one pass over the
/// validation split took (what a budget reserves for the last ones).
struct Enumerated {
    network: Network,
    validation_mse: f64,
    sub_train: ProjectedSamples,
    sub_val: ProjectedSamples,
    candidates_evaluated: usize,
    full_net_log10: f64,
    validation_pass: f64,
}

/// What the descent leaves for the deep-net stage.
struct Descended {
    errors: PolishedMse,
    curve: Vec<Check>,
    /// Whether the budget's deadline ended it.
    cut: bool,
}

/// What the deep-net stage decided.
#[derive(Default)]
struct DeepNetOutcome {
    errors: Option<PolishedMse>,
    /// The better model the polish does not start from, when the deep net was kept within its
    /// margin: the model when the polish does not beat it.
    fallback: Option<Best>,
    decision: Option<String>,
    evidence: Option<DeepNetEvidence>,
}

/// The deep-net stage's pilots ([`Run::deep_pilots`]) of every candidate but the first: each
/// one's run, the rival of the first (their pick, see [`chosen_widths`]), and their row reads
/// and seconds in all.
#[derive(Default)]
struct DeepPilots {
    rival: Option<usize>,
    runs: Vec<PilotRun>,
    pilot_rows: u64,
    row_reads: u64,
    seconds: f64,
}

/// One pilot: its widths, outcome and trained network, and the row reads and seconds of the
/// pilots before it.
struct PilotRun {
    widths: Vec<usize>,
    outcome: TrainOutcome,
    network: Network,
    reads_before: u64,
    seconds_before: f64,
}

impl DeepPilots {
    /// What the race of the `first` candidate (best `first_mse` on the check rows after the
    /// pilots' row reads) against the pilots found, `chosen` being trained; None when there
    /// were no pilots.
    fn finding(
        &self,
        first: &[usize],
        first_mse: f64,
        chosen: &[usize],
        var: f64,
    ) -> Option<String> {
        (!self.runs.is_empty()).then(|| {
            let best = |p: &PilotRun| p.outcome.best_checked().unwrap_or(f64::NAN);
            let each: Vec<String> = std::iter::once(format!("[{}] {}", list(first), num(first_mse / var)))
                .chain((self.runs.iter()).map(|p| format!("[{}] {}", list(&p.widths), num(best(p) / var))))
                .collect();
            format!(
                "hidden widths [{}] chosen by a race of {} row reads from random starts, the first candidate's being the stage's own beginning (validation MSE/Var on the check rows {})",
                list(chosen),
                crate::progress::count(self.pilot_rows),
                each.join(", ")
            )
        })
    }
}

/// The pilots' pick from (widths, best validation MSE on the check rows) (see
/// [`DEEP_PILOT_MARGIN`]): candidates come cheapest first, and a later one must earn its cost.
fn chosen_widths(tried: &[(Vec<usize>, f64)]) -> &[usize] {
    let mut chosen: (&[usize], f64) = (&[], f64::INFINITY);
    for (widths, mse) in tried {
        // A pilot that diverged counts as infinitely bad.
        let mse = if mse.is_finite() { *mse } else { f64::INFINITY };
        if mse < DEEP_PILOT_MARGIN * chosen.1 || chosen.0.is_empty() {
            chosen = (widths, mse);
        }
    }
    chosen.0
}

/// Why the deepen stage does not run on a model at validation MSE/Var `rel` with `depth`
/// hidden layers, when the deepest deep-net candidate has `deepest`; None: it runs.
fn deepen_skipped(rel: f64, depth: usize, deepest: usize) -> Option<String> {
    if rel <= DEEPEN_BAR {
        Some(format!(
            "the model is at validation MSE/Var {}, at or below {}",
            num(rel),
            num(DEEPEN_BAR)
        ))
    } else if rel >= 0.5 {
        // Parity k = 10 at d = 64: 8 s for nothing.
        Some(format!(
            "the model is at validation MSE/Var {}: it explains less than half of Var(y), so a deeper start from it is little better than the deep-net stage's random start",
            num(rel)
        ))
    } else if depth == 0 || depth >= deepest {
        Some(format!(
            "the network has {depth} hidden layers and the deepest deep-net candidate {deepest}"
        ))
    } else {
        None
    }
}

/// The deepen stage's new layer is as wide as the polished network's last hidden layer; its
/// step size is the polish's at most [`DEEPEN_WIDTH`] units and falls as 1 / width beyond.
/// Adam's first steps move every weight by about the step size with the sign of its gradient,
/// which for a row of the new identity layer is the same on every input (its inputs are ReLU
/// outputs, all >= 0), so a unit's input moves by about the step size times the width. At the
/// polish's step size the [300, 300] network of parity k = 6 (d = 64, 2.56e5 rows) jumped from
/// 1.1e-4 of Var(y) to 7e-3 and came back to 1.12e-4 only as the step size decayed; with this
/// rule the stage ends at 5.0e-6 in the same row reads. No case of the quarter-size benchmark
/// changes: their networks are at most 32 wide.
fn deepen_step_scale(deepened: &Network) -> f64 {
    let width = deepened.hidden_widths().last().copied().unwrap_or(1).max(1);
    (DEEPEN_WIDTH as f64 / width as f64).min(1.0)
}

/// Widths as "32, 32".
fn list(w: &[usize]) -> String {
    w.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl StageReport {
    /// A stage's report, its clock `t` read now; `origin` is when `learn` began.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        backend: &dyn Backend,
        origin: Instant,
        name: Stage,
        pass: Pass,
        rows: u64,
        row_reads: u64,
        t: StageClock,
        mse: Option<f64>,
    ) -> Self {
        StageReport {
            stage: name,
            device: backend.device_of(pass),
            rows,
            row_reads,
            seconds: t.seconds(),
            host_cpu_seconds: t.cpu_seconds(),
            validation_mse: mse,
            started: (origin.elapsed().as_secs_f64() - t.seconds()).max(0.0),
            stopped: None,
            curve: Vec::new(),
        }
    }
}

impl Run<'_> {
    /// A stage's report, its clock read now.
    fn stage(
        &self,
        name: Stage,
        pass: Pass,
        rows: u64,
        row_reads: u64,
        t: StageClock,
        mse: Option<f64>,
    ) -> StageReport {
        StageReport::new(
            self.backend,
            self.origin,
            name,
            pass,
            rows,
            row_reads,
            t,
            mse,
        )
    }

    /// Adam on the network on z = B x with the basis fixed (the descent and the deep net): the
    /// outcome and the trained network.
    fn train_on_z(
        &self,
        network: &Network,
        basis: &[Vec<f64>],
        pc: &PolishConfig,
        limits: &Limits,
    ) -> Result<(TrainOutcome, Network)> {
        let shape = FactoredShape::of(network, self.d)?;
        let start = shape.pack(network, basis)?;
        let res = train::train_until(
            self.backend,
            &self.fit_rows,
            &self.val,
            &shape,
            &start,
            false,
            pc,
            limits,
        )?;
        let trained = shape.unpack(&res.params)?.1;
        Ok((res, trained))
    }

    /// A trainer stage's report from its outcome: its checks on the run's clock.
    fn trained(&self, name: Stage, res: &TrainOutcome, t: StageClock) -> StageReport {
        let report = self.stage(
            name,
            Pass::TrainWindow,
            res.rows,
            res.row_reads,
            t,
            Some(res.after),
        );
        let started = report.started;
        StageReport {
            stopped: Some(res.stop),
            curve: res
                .curve
                .iter()
                .map(|c| Check {
                    seconds: started + c.seconds,
                    ..*c
                })
                .collect(),
            ..report
        }
    }

    /// Row reads a trainer stage with settings `pc` plans over the training rows it reads.
    fn planned_reads(&self, pc: &PolishConfig) -> u64 {
        let n = (self.fit_rows.len() as usize).min(pc.max_rows.max(1));
        (pc.epochs_for(n) * n) as u64
    }

    /// A validation MSE as a fraction of the validation labels' variance.
    fn relative(&self, mse: f64) -> f64 {
        mse / self.validation_var.max(1e-300)
    }

    /// Whether the best model is at or below the target error ([`LearnConfig::target_error`]),
    /// so that no later stage runs; the first time, the note says after which stage.
    fn reached(&mut self, best: &Best) -> bool {
        let Some(target) = self.config.target_error else {
            return false;
        };
        let rel = self.relative(best.validation_mse);
        if rel > target {
            return false;
        }
        if self.target_note.is_none() {
            let after = self.stages.last().map_or(Stage::Subspace, |s| s.stage);
            self.target_note = Some(format!(
                "validation MSE/Var {} at or below the target {} after the {after} stage: the stages after it did not run",
                num(rel),
                num(target)
            ));
        }
        true
    }

    /// The target error as a validation MSE: a trainer stage ends at the first check at or
    /// below it.
    fn target_mse(&self) -> Option<f64> {
        (self.config.target_error).map(|t| t * self.validation_var)
    }

    /// Records a stage and prints its line.
    fn record(&mut self, report: StageReport, kept: Option<bool>) {
        self.stages.push(report);
        announce_last(&self.stages, self.validation_var, kept);
    }

    /// Enumerate-and-test on a bounded subsample of z: its cost is candidates x rows, and the
    /// ranking needs far fewer rows than the fit. Its pick is scored on the whole validation
    /// split like every other stage's. A budget scales both to the time left.
    fn enumerate(&mut self, basis: &[Vec<f64>]) -> Result<Enumerated> {
        let (backend, config) = (self.backend, self.config);
        let t = StageClock::start();
        let r = basis.len();
        let flat: Vec<f64> = basis.iter().flatten().copied().collect();
        let mut search_config = SearchConfig {
            seed: config.seed,
            ..config.search_config.clone()
        };
        if let Some(b) = self.budget {
            search_config.budget = b.scaled(config.search_config.budget, 20.0, 16);
            search_config.max_rows = b.scaled(search_config.max_rows, 5_000.0, 10_000);
            if search_config.budget < config.search_config.budget {
                self.budget_notes.push(format!(
                    "enumerate-and-test on {} candidates and {} rows",
                    search_config.budget, search_config.max_rows
                ));
            }
        }
        let sub_rows = search_config.max_rows.max(1);
        let sub_train = project_head(backend, &self.fit_rows, &flat, r, sub_rows)?;
        let sub_val = project_head(backend, &self.val, &flat, r, sub_rows)?;
        let found = search(backend, &sub_train, &sub_val, &search_config, None)?;
        let network = found.enumerate.network.clone();
        // One pass over the validation split, timed: what the budget reserves for the last ones.
        let scored = Instant::now();
        let validation_mse = mse(
            backend,
            &Network::with_projection(&network, basis)?,
            &self.val,
        )?;
        let validation_pass = scored.elapsed().as_secs_f64();
        let report = self.stage(
            Stage::Enumerate,
            Pass::Evaluate,
            sub_train.len() as u64,
            sub_train.len() as u64,
            t,
            Some(validation_mse),
        );
        self.record(report, None);
        Ok(Enumerated {
            network,
            validation_mse,
            sub_train,
            sub_val,
            candidates_evaluated: found.enumerate.candidates_evaluated,
            full_net_log10: found.enumerate.full_net_log10,
            validation_pass,
        })
    }

    /// The sphere-net fit on `basis` from normal equations streamed over the training rows:
    /// its network and validation error.
    fn sphere_net(&mut self, basis: &[Vec<f64>]) -> Result<(Network, f64)> {
        let t = StageClock::start();
        let mut sphere_config = SphereNetConfig {
            seed: self.config.seed,
            ..self.config.sphere_config.clone()
        };
        if let Some(b) = self.budget {
            let rows = b.scaled(self.n_fit, 10_000.0, 20_000);
            if rows < self.n_fit.min(sphere_config.max_rows) {
                sphere_config.max_rows = rows;
                self.budget_notes
                    .push(format!("the sphere-net fit on at most {rows} rows"));
            }
        }
        let bar = crate::progress::bar(self.n_fit as u64, "sphere-net");
        let fit = sphere_net_fit_streamed(
            self.backend,
            &self.fit_rows,
            &self.val,
            basis,
            &sphere_config,
            &bar,
        )?;
        bar.finish_and_clear();
        let m = fit.fit.validation_mse;
        let report = self.stage(
            Stage::SphereNet,
            Pass::FeatureNormalEquations,
            fit.rows,
            fit.rows,
            t,
            Some(m),
        );
        self.record(report, None);
        Ok((fit.fit.network, m))
    }

    /// The descent on z from the best network, B fixed; kept when it validates better.
    fn descent(&mut self, best: &mut Best) -> Result<Descended> {
        let t = StageClock::start();
        let pc = PolishConfig {
            seed: self.config.seed,
            ..self.config.descent_config.clone()
        };
        let limits = Limits {
            deadline: self.budget.map(|b| b.deadline(0.25)),
            target: self.target_mse(),
            ..Limits::default()
        };
        let (res, trained) = self.train_on_z(&best.network, &best.basis, &pc, &limits)?;
        let errors = PolishedMse::from(&res);
        let report = self.trained(Stage::Descent, &res, t);
        self.record(report, Some(res.kept));
        if res.kept {
            best.network = trained;
            best.validation_mse = res.after;
            best.stage = Stage::Descent;
        }
        Ok(Descended {
            errors,
            cut: res.stop == StopReason::Deadline,
            curve: res.curve,
        })
    }

    /// The deep-net stage: whether it runs (see `gate`: the residual test first; without
    /// structure on z, a race against the descent's curve, or under a budget no stage at
    /// all), then a deeper network on z from a random start, kept within its margin.
    /// `sub` is a subsample of z = B x (training, validation) for the residual test, which
    /// runs only when there is a descent to race.
    fn deep_net(
        &mut self,
        best: &mut Best,
        sub: (&ProjectedSamples, &ProjectedSamples),
        descended: Option<&Descended>,
    ) -> Result<DeepNetOutcome> {
        let config = self.config;
        let r = best.basis.len();
        let mut out = DeepNetOutcome::default();
        let mut limits = Limits {
            deadline: self.budget.map(|b| b.deadline(0.5)),
            target: self.target_mse(),
            ..Limits::default()
        };
        let mut run = true;
        if let (Some(gate), Some(descended)) = (&config.deep_gate, descended) {
            let ev = gate::deep_net_evidence(
                &best.network,
                sub.0,
                sub.1,
                &SphereNetConfig {
                    seed: config.seed,
                    ..gate.features.clone()
                },
                gate,
                self.validation_var,
            )?;
            let figures = ev.finding();
            let cut = descended.cut;
            if self.budget.is_some() && (cut || !ev.run) {
                // A descent cut short leaves structure on z that more descent would take; and
                // a budget has no time for a pilot.
                run = false;
                out.decision = Some(if cut {
                    "skipped: the time budget cut the descent short, so its residual says nothing about a deeper network".to_string()
                } else {
                    format!(
                        "skipped: {figures}, and under a time budget there is no time for a pilot"
                    )
                });
                self.budget_notes.push("no deep-net stage".to_string());
            } else if ev.run {
                out.decision = Some(format!("ran: {figures}"));
            } else {
                limits.race = Some(Race {
                    at: gate.race_rows,
                    against: descended.curve.clone(),
                    margin: gate.race_margin,
                });
                // What is left on z is noise and the basis's error, which only the polish
                // moves: the deep net is trained for the polish to start from, and a network
                // of its width at the descent's error is that start. Training it on towards
                // its own plateau (random [6, 6] at d = 96: 3.0 s for 4.6e-3 -> 3.3e-3 of
                // Var(y)) is slow; with those row reads the polish (see `polish_config`) ended
                // lower on 15 of the quarter-size benchmark's 19 cases than before, within 1%
                // on two, 1.3x higher on the random [16, 8] network and 1.6x on the
                // anisotropic inputs.
                limits.caught_up = Some(best.validation_mse);
                out.decision = Some(format!(
                    "raced the descent ({figures}): past {} row reads only when ahead of the descent after as many",
                    crate::progress::count(gate.race_rows)
                ));
            }
            out.evidence = Some(ev);
        }
        if !run {
            return Ok(out);
        }
        let t = StageClock::start();
        let pc = PolishConfig {
            seed: config.seed ^ DEEP_NET_SEED,
            ..config.deep_config.clone()
        };
        let pilots = self.deep_pilots(&best.basis, &pc)?;
        let race = limits.race.take();
        let behind = |rc: &Race, res: &TrainOutcome| {
            rc.behind(res.best_checked().unwrap_or(f64::INFINITY), res.row_reads)
        };
        // The first (cheapest) candidate is the stage, racing the descent and the rival's
        // pilot; only when the rival is ahead of it after as many row reads is the rival
        // trained instead. Without a rival its first row reads are no pilot's again.
        let rival = pilots.rival.map(|i| &pilots.runs[i]);
        let first = &config.deep_candidates[0];
        let first_limits = Limits {
            race: race.clone(),
            rival: rival.map(|p| Race {
                at: pilots.pilot_rows,
                against: p.outcome.curve.clone(),
                margin: 1.0 / DEEP_PILOT_MARGIN,
            }),
            ..limits.clone()
        };
        let start_net = random_start(r, first, pc.seed)?;
        let (first_res, first_net) =
            self.train_on_z(&start_net, &best.basis, &pc, &first_limits)?;
        let first_at_pilot = first_res
            .curve
            .iter()
            .find(|c| c.row_reads >= pilots.pilot_rows)
            .or(first_res.curve.last())
            .map_or(f64::NAN, |c| c.best_mse);
        // The run that decided the race with the descent (its curve), the stage's outcome, and
        // where its checks stand among the stage's row reads and seconds.
        let (decider, mut res, trained, offset, stage_reads, widths) = match rival {
            Some(p) if first_res.stop == StopReason::Outpaced => {
                let spent = (pilots.row_reads + first_res.row_reads, t.seconds());
                match &race {
                    // The rival's pilot reached the race's row reads: it decided the race.
                    Some(rc) if p.outcome.row_reads >= rc.at && behind(rc, &p.outcome) => {
                        let res = TrainOutcome {
                            stop: StopReason::Behind,
                            ..p.outcome.clone()
                        };
                        let offset = (p.reads_before, p.seconds_before);
                        let net = p.network.clone();
                        (Some(&p.outcome.curve), res, net, offset, spent.0, &p.widths)
                    }
                    _ => {
                        let decided = race.as_ref().is_some_and(|rc| p.outcome.row_reads >= rc.at);
                        let lim = Limits {
                            race: race.clone().filter(|_| !decided),
                            ..limits.clone()
                        };
                        let start_net = random_start(r, &p.widths, pc.seed)?;
                        let (res, net) = self.train_on_z(&start_net, &best.basis, &pc, &lim)?;
                        let reads = spent.0 + res.row_reads;
                        let decider = decided.then_some(&p.outcome.curve);
                        (decider, res, net, spent, reads, &p.widths)
                    }
                }
            }
            _ => {
                let reads = pilots.row_reads + first_res.row_reads;
                let offset = (pilots.row_reads, pilots.seconds);
                (None, first_res, first_net, offset, reads, first)
            }
        };
        let net_name = format!("the network of hidden widths [{}]", list(widths));
        let margin = config.deep_gate.as_ref().map_or(1.0, |g| g.keep_margin);
        let kept = res.kept && res.after < margin * best.validation_mse;
        let var = self.validation_var.max(1e-300);
        // The first check at or past the race's row reads of the run that decided it.
        let race_check = |rc: &Race| {
            let curve = decider.unwrap_or(&res.curve);
            (curve.iter().map(|c| c.row_reads))
                .find(|&n| n >= rc.at)
                .unwrap_or(rc.at)
        };
        if res.stop == StopReason::Behind {
            let at = res.curve.last();
            out.decision = Some(format!(
                "stopped after its race of {} row reads: {net_name} from a random start was at validation MSE/Var {} where the descent had been at {} after as many, so the teacher is no deeper than the descent's network can fit; and {}",
                crate::progress::count(res.row_reads),
                num(at.map_or(f64::NAN, |c| c.best_mse) / var),
                num(race
                    .as_ref()
                    .and_then(|r| r.incumbent_at(res.row_reads))
                    .unwrap_or(f64::NAN)
                    / var),
                out.evidence.as_ref().map_or(String::new(), |e| e.finding())
            ));
        } else if res.stop == StopReason::CaughtUp {
            let at = res.curve.last();
            self.polish_bonus_reads = self.planned_reads(&pc).saturating_sub(stage_reads);
            out.decision = Some(format!(
                "ran until it caught up: {net_name} from a random start was at validation MSE/Var {} after {} row reads, where the {} stage's model is at {}; the rest is the polish's, which starts from it with the {} row reads of this stage's plan left; and {}",
                num(at.map_or(f64::NAN, |c| c.best_mse) / var),
                crate::progress::count(at.map_or(0, |c| c.row_reads)),
                best.stage,
                num(best.validation_mse / var),
                crate::progress::count(self.polish_bonus_reads),
                out.evidence.as_ref().map_or(String::new(), |e| e.finding())
            ));
        } else if let Some(rc) = &race {
            out.decision = Some(format!(
                "ran: after a race of {} row reads {net_name} from a random start was ahead of the descent after as many; and {}",
                crate::progress::count(race_check(rc)),
                out.evidence.as_ref().map_or(String::new(), |e| e.finding())
            ));
        }
        if let Some(note) = pilots.finding(first, first_at_pilot, widths, var) {
            let why = out.decision.take().unwrap_or_else(|| "ran".to_string());
            out.decision = Some(format!("{why}; {note}"));
        }
        // The stage's reads and clock include the pilots'.
        res.row_reads = stage_reads;
        for c in &mut res.curve {
            c.row_reads += offset.0;
            c.seconds += offset.1;
        }
        let report = self.trained(Stage::DeepNet, &res, t);
        self.record(report, Some(kept));
        out.errors = Some(PolishedMse {
            before: best.validation_mse,
            after: res.after,
            kept,
        });
        if kept {
            // Within the margin but not better: the descent's network stays the fallback.
            if res.after >= best.validation_mse {
                out.fallback = Some(Best {
                    network: best.network.clone(),
                    basis: best.basis.clone(),
                    validation_mse: best.validation_mse,
                    stage: best.stage,
                });
            }
            best.network = trained;
            best.validation_mse = res.after;
            best.stage = Stage::DeepNet;
        }
        Ok(out)
    }

    /// Pilots of the deep net's candidates after the first (none with one candidate or under
    /// a time budget), each from its random start for `deep_pilot_rows` row reads (at most an
    /// eighth of the stage's); the first candidate races their pick ([`DEEP_PILOT_MARGIN`]).
    fn deep_pilots(&self, basis: &[Vec<f64>], pc: &PolishConfig) -> Result<DeepPilots> {
        let candidates = &self.config.deep_candidates;
        let mut out = DeepPilots {
            pilot_rows: self.config.deep_pilot_rows,
            ..DeepPilots::default()
        };
        if candidates.len() < 2 || self.budget.is_some() {
            return Ok(out);
        }
        let t = StageClock::start();
        // On few rows, at most an eighth of the stage's planned row reads.
        out.pilot_rows = out.pilot_rows.min(self.planned_reads(pc) / 8).max(1);
        let limits = Limits {
            pilot: Some(out.pilot_rows),
            ..Limits::default()
        };
        for widths in &candidates[1..] {
            let (reads_before, seconds_before) = (out.row_reads, t.seconds());
            let start = random_start(basis.len(), widths, pc.seed)?;
            let (outcome, network) = self.train_on_z(&start, basis, pc, &limits)?;
            out.row_reads += outcome.row_reads;
            out.runs.push(PilotRun {
                widths: widths.clone(),
                reads_before,
                seconds_before,
                outcome,
                network,
            });
        }
        let tried: Vec<(Vec<usize>, f64)> = (out.runs.iter())
            .map(|p| {
                let best = p.outcome.best_checked().unwrap_or(f64::INFINITY);
                (p.widths.clone(), best)
            })
            .collect();
        let pick = chosen_widths(&tried);
        out.rival = out.runs.iter().position(|p| p.widths == pick);
        out.seconds = t.seconds();
        Ok(out)
    }

    /// After a polish that grew the basis (not under a budget): when the polish had not
    /// started from the deep net (it was not kept, or there was none to keep), the deep net's
    /// verdict was made on a basis without the grown rows, so it is trained again on them and,
    /// when kept, polished once more (the polish's errors then). On a deep teacher with biases
    /// and 10% noise (d = 256, 6e5 rows: 5 of 8 directions found, 3 grown) the polish had
    /// reached 3.0e-2 of Var(y) against a noise floor of 1e-2; the deep net on the 8 rows
    /// 1.1e-2, and the polish after it 1.06e-2. The residual test saw no structure on the grown
    /// z there (its ReLU features fit less than the wide network already had), so it does not
    /// gate this.
    fn deep_net_again(
        &mut self,
        best: &mut Best,
        enumerated: &Enumerated,
        deep: &mut DeepNetOutcome,
        fallback: &mut Option<Best>,
    ) -> Result<Option<PolishedMse>> {
        if deep.errors.is_some_and(|e| e.kept) || self.config.deep_candidates.is_empty() {
            return Ok(None);
        }
        let flat: Vec<f64> = best.basis.iter().flatten().copied().collect();
        let rows = enumerated.sub_train.len().max(enumerated.sub_val.len());
        let rank = best.basis.len();
        let sub_train = project_head(self.backend, &self.fit_rows, &flat, rank, rows)?;
        let sub_val = project_head(self.backend, &self.val, &flat, rank, rows)?;
        let again = self.deep_net(best, (&sub_train, &sub_val), None)?;
        deep.decision = Some(format!(
            "{}; the polish grew the basis to {rank} rows, so it ran again on them{}",
            deep.decision
                .take()
                .unwrap_or_else(|| "not run".to_string()),
            (again.decision).map_or(String::new(), |why| format!(": {why}"))
        ));
        deep.errors = again.errors;
        if !again.errors.is_some_and(|e| e.kept) {
            return Ok(None);
        }
        *fallback = again.fallback;
        Ok(Some(self.polish(
            best,
            fallback,
            enumerated.validation_pass,
        )?))
    }

    /// The polish: the best network and B together, grown by spare rows that are kept only
    /// when they help; kept when it beats the best (or the fallback, when there is one). When
    /// it kept every spare row it grew, directions are likely still missing (a deep teacher
    /// with biases and noise: 4 of 8 found, 2 spare rows both kept), so it runs again from its
    /// result with as many new spare rows, while rows are left under `max_dim` (not under a
    /// time budget, nor when the spare rows were given).
    fn polish(
        &mut self,
        best: &mut Best,
        fallback: &mut Option<Best>,
        validation_pass: f64,
    ) -> Result<PolishedMse> {
        let config = self.config;
        let max_dim = config.subspace_config.max_dim;
        let mut spare = config
            .spare_rows
            .unwrap_or_else(|| auto_spare_rows(best.basis.len()));
        let before = best.validation_mse;
        let mut any_kept = false;
        let mut round = 0;
        loop {
            let (errors, offered, kept) =
                self.polish_round(best, fallback, validation_pass, spare, round, Stage::Polish)?;
            any_kept |= errors.kept;
            let again = errors.kept
                && offered > 0
                && kept == offered
                && best.basis.len() < max_dim
                && config.spare_rows.is_none()
                && self.budget.is_none()
                && !self.reached(best);
            if !again {
                return Ok(PolishedMse {
                    before,
                    after: if any_kept {
                        best.validation_mse
                    } else {
                        errors.after
                    },
                    kept: any_kept,
                });
            }
            spare = offered;
            round += 1;
        }
    }

    /// One polish from the best model with `spare` spare rows (fewer when `max_dim` or d
    /// leaves less room; round > 0 changes the seed), reported as stage `name`: its errors, the
    /// spare rows offered and those kept.
    fn polish_round(
        &mut self,
        best: &mut Best,
        fallback: &mut Option<Best>,
        validation_pass: f64,
        spare: usize,
        round: u64,
        name: Stage,
    ) -> Result<(PolishedMse, usize, usize)> {
        let (backend, config) = (self.backend, self.config);
        let r = best.basis.len();
        let max_dim = config.subspace_config.max_dim;
        let t = StageClock::start();
        let mut pc = PolishConfig {
            seed: config.seed ^ round,
            ..config.polish_config.clone()
        };
        // The row reads a caught-up deep net left (once; a row budget of 0 means the passes
        // were given, and are not cut or grown).
        if name == Stage::Polish && pc.row_budget > 0 {
            pc.row_budget += std::mem::take(&mut self.polish_bonus_reads) as usize;
        }
        if name == Stage::Deepen {
            pc.learning_rate *= deepen_step_scale(&best.network);
        }
        let mut spare = spare.min(max_dim.saturating_sub(r));
        // Pruning spare rows costs a paired pass over the validation split each: under a
        // budget only when they leave most of the time to the training.
        if self
            .budget
            .is_some_and(|b| b.left() < 30.0 * validation_pass * (spare as f64 + 1.0))
        {
            if spare > 0 {
                self.budget_notes
                    .push("no spare rows in the polish".to_string());
            }
            spare = 0;
        }
        let (start_net, start_basis) = if spare > 0 {
            grow::grow(&best.network, &best.basis, spare, GROW_SCALE, pc.seed)?
        } else {
            (best.network.clone(), best.basis.clone())
        };
        // Fewer when d leaves less room.
        let spare = start_basis.len() - best.basis.len();
        // Under a budget it ends in time to prune the spare rows (a paired pass over the
        // validation split each, two predictions a row) and score the result.
        let limits = Limits {
            deadline: self.budget.map(|b| {
                b.end_less(validation_pass * (1.5 * spare as f64 + 1.5) + 0.03 * b.seconds())
            }),
            target: self.target_mse(),
            ..Limits::default()
        };
        let shape = FactoredShape::of(&start_net, self.d)?;
        let start = shape.pack(&start_net, &start_basis)?;
        let res = train::train_until(
            backend,
            &self.fit_rows,
            &self.val,
            &shape,
            &start,
            true,
            &pc,
            &limits,
        )?;
        let mut errors = PolishedMse {
            before: best.validation_mse,
            after: res.after,
            kept: false,
        };
        if res.kept && res.after < best.validation_mse {
            let (grown_basis, grown) = shape.unpack(&res.params)?;
            let pruned = grow::prune(backend, &grown, &grown_basis, spare, PRUNE_Z, &self.val)?;
            let after = if pruned.kept < spare {
                mse(
                    backend,
                    &Network::with_projection(&pruned.network, &pruned.basis)?,
                    &self.val,
                )?
            } else {
                res.after
            };
            errors.after = after;
            let bar = fallback
                .as_ref()
                .map_or(best.validation_mse, |f| f.validation_mse);
            if after < bar {
                (best.network, best.basis) = (pruned.network, pruned.basis);
                best.validation_mse = after;
                best.stage = name;
                errors.kept = true;
                *fallback = None;
            }
        }
        let report = StageReport {
            validation_mse: Some(errors.after),
            ..self.trained(name, &res, t)
        };
        self.record(report, Some(errors.kept));
        let kept = if errors.kept { best.basis.len() - r } else { 0 };
        Ok((errors, spare, kept))
    }

    /// The deepen stage, last: when the model is above [`DEEPEN_BAR`] of Var(y) (and explains
    /// at least half of it) and has fewer hidden layers than the deepest deep-net candidate,
    /// the polish once more from the same function with one more hidden layer
    /// ([`grow::deepen`]), kept when it validates better. Not run under a time budget, nor
    /// without the polish or deep-net candidates (its errors and decision are None then). The
    /// deep-net pilots cannot tell the depths apart where the polish can: on a deep [8, 8, 8]
    /// teacher with biases and 10% label noise (d = 256, 6e5 rows) the [32, 32] and
    /// [32, 32, 32] pilots' validation curves stay within 2% of each other up to 5e6 row
    /// reads, while this stage took the test MSE/Var from 1.3e-3 to 5.5e-4 (seed 1) and from
    /// 5.0e-4 to 3.0e-4 (seed 2).
    fn deepen(
        &mut self,
        best: &mut Best,
        validation_pass: f64,
    ) -> Result<(Option<PolishedMse>, Option<String>)> {
        let config = self.config;
        let deepest = config.deep_candidates.iter().map(Vec::len).max();
        let Some(deepest) = deepest.filter(|_| config.polish && self.budget.is_none()) else {
            return Ok((None, None));
        };
        let rel = self.relative(best.validation_mse);
        let depth = best.network.layers.len() - 1;
        if let Some(why) = deepen_skipped(rel, depth, deepest) {
            return Ok((None, Some(format!("skipped: {why}"))));
        }
        let shallow = best.network.clone();
        best.network = grow::deepen(&shallow)?;
        let widths = best.network.hidden_widths();
        let (errors, _, _) = self.polish_round(
            best,
            &mut None,
            validation_pass,
            0,
            DEEPEN_SEED,
            Stage::Deepen,
        )?;
        if !errors.kept {
            best.network = shallow;
        }
        let why = format!(
            "ran: the model was at validation MSE/Var {} (above {}) with {depth} hidden layers; polished again from the same function with one more ([{}], the new layer started as the identity): {}, {}",
            num(rel),
            num(DEEPEN_BAR),
            list(&widths),
            num(self.relative(errors.after)),
            if errors.kept { "kept" } else { "not kept" }
        );
        Ok((Some(errors), Some(why)))
    }
}

/// [`learn`] within an optional budget; `origin` is when the whole run began (the stages'
/// start times count from it): the subspace, then the fitting stages on it.
fn learn_in(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    config: &LearnConfig,
    budget: Option<&Budget>,
    origin: Instant,
) -> Result<LearnReport> {
    let n = source.len() as usize;
    let d = source.dim();
    if d == 0 {
        return Err(Error::invalid(format!(
            "learn: needs at least 2 samples of positive dimension (got {n} of dimension {d})"
        )));
    }
    let (n_train, _) = validation_split(n, config.validation_fraction)?;
    if config.method == LearnMethod::Paper {
        return paper::learn_paper(backend, source, config);
    }
    // The subspace.
    let t = StageClock::start();
    let found = find_basis(
        backend,
        &SampleRange::new(source, 0, n_train as u64)?,
        config,
        budget,
    )?;
    let subspace_stage = StageReport::new(
        backend,
        origin,
        Stage::Subspace,
        Pass::Moments,
        n_train as u64,
        found.report.as_ref().map_or(0, |s| s.samples_used),
        t,
        None,
    );
    // A given basis has no stage to speak of.
    if found.report.is_some() {
        subspace_stage.announce(1.0, Some(found.basis.len()), None);
    }
    // With whitening the fitting stages read W (x - mu), and the map is folded into the model
    // so that it acts on the raw x.
    let view = found
        .whitening
        .as_ref()
        .map(|w| WhitenedSource::new(source, w))
        .transpose()?;
    let fit_source: &dyn SampleSource = match &view {
        Some(v) => v,
        None => source,
    };
    let mut out = fit_on_basis(
        backend,
        fit_source,
        config,
        budget,
        origin,
        found.basis,
        subspace_stage,
    )?;
    if let Some(w) = &found.whitening {
        out.model = w.fold(&out.model)?;
    }
    out.subspace = found.report;
    out.budget_notes.splice(0..0, found.note);
    Ok(out)
}

/// The fitting stages on a found basis (rows of `source`'s frame), in order, each passing the
/// best model so far to the next; `subspace_stage` is the subspace stage's report.
fn fit_on_basis(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    config: &LearnConfig,
    budget: Option<&Budget>,
    origin: Instant,
    basis: Vec<Vec<f64>>,
    subspace_stage: StageReport,
) -> Result<LearnReport> {
    let n = source.len() as usize;
    let d = source.dim();
    let (n_train, n_val) = validation_split(n, config.validation_fraction)?;
    // What the fitting stages read.
    let n_fit = n_train.min(config.max_train_rows.unwrap_or(usize::MAX).max(1));
    let mut run = Run {
        backend,
        config,
        budget,
        origin,
        d,
        fit_rows: SampleRange::new(source, 0, n_fit as u64)?,
        n_fit,
        val: SampleRange::new(source, (n - n_val) as u64, n_val as u64)?,
        validation_var: 0.0,
        stages: Vec::new(),
        budget_notes: Vec::new(),
        target_note: None,
        polish_bonus_reads: 0,
    };
    let r = basis.len();
    let max_dim = config.subspace_config.max_dim;
    if r == 0 || r > max_dim || basis.iter().any(|b| b.len() != d) {
        return Err(Error::invalid(format!(
            "learn: subspace of dimension {r} (rows of length {:?}) for d = {d}, max_dim {max_dim}",
            basis.first().map(|b| b.len()),
        )));
    }
    run.stages.push(subspace_stage);
    // Under a budget, fewer validation rows when the time left is short: every stage scores
    // its result on them, and the trainers their checks.
    if let Some(b) = budget {
        let rows = b.scaled(n_val, 10_000.0, 16_384);
        if rows < n_val {
            run.val = SampleRange::new(source, (n - n_val) as u64, rows as u64)?;
            run.budget_notes.push(format!(
                "validation on the first {rows} of {n_val} held-out rows"
            ));
        }
    }
    // Before the first stage with a validation error, so that its line can say MSE / Var.
    run.validation_var = streamed_label_variance(backend, &run.val)?;

    // The sphere-net fit before enumerate-and-test: it costs about half as much and is usually
    // the better start, so the run holds a model sooner (what a time budget or a time-to-
    // accuracy comparison reads). The better of the two is kept whichever came first, as
    // before.
    let sphere = if config.sphere_net {
        Some(run.sphere_net(&basis)?)
    } else {
        None
    };
    let enumerated = run.enumerate(&basis)?;
    let mut best = Best {
        network: enumerated.network.clone(),
        basis,
        validation_mse: enumerated.validation_mse,
        stage: Stage::Enumerate,
    };
    let sphere_net_mse = sphere.map(|(network, m)| {
        if m < best.validation_mse {
            (best.network, best.validation_mse, best.stage) = (network, m, Stage::SphereNet);
        }
        m
    });
    let chosen = best.stage;
    // With a target error, each stage runs only while the best model is above it.
    let descended = if config.descent && !run.reached(&best) {
        Some(run.descent(&mut best)?)
    } else {
        None
    };
    let sub = (&enumerated.sub_train, &enumerated.sub_val);
    let mut deep = if config.deep_candidates.is_empty() || run.reached(&best) {
        DeepNetOutcome::default()
    } else {
        run.deep_net(&mut best, sub, descended.as_ref())?
    };
    let mut fallback = deep.fallback.take();
    // The deep net's fallback is the better model when it was kept within its margin.
    let reached = run.reached(fallback.as_ref().unwrap_or(&best));
    let mut polished_mse = if config.polish && !reached {
        Some(run.polish(&mut best, &mut fallback, enumerated.validation_pass)?)
    } else {
        None
    };
    if best.basis.len() > r
        && polished_mse.is_some_and(|p| p.kept)
        && budget.is_none()
        && !run.reached(&best)
    {
        let polished = run.deep_net_again(&mut best, &enumerated, &mut deep, &mut fallback)?;
        polished_mse = polished.or(polished_mse);
    }
    if let Some(f) = fallback {
        (best.network, best.validation_mse, best.stage) = (f.network, f.validation_mse, f.stage);
    }
    let (deepen_mse, deepen_decision) = if run.reached(&best) {
        (None, None)
    } else {
        run.deepen(&mut best, enumerated.validation_pass)?
    };
    if let (Some(target), None) = (config.target_error, &run.target_note) {
        run.target_note = Some(format!(
            "validation MSE/Var {}: the target {} was not reached; every stage ran",
            num(run.relative(best.validation_mse)),
            num(target)
        ));
    }
    let Run {
        stages,
        mut budget_notes,
        validation_var,
        target_note,
        ..
    } = run;
    if let Some(b) = budget {
        for st in &stages {
            if st.stopped == Some(StopReason::Deadline) {
                budget_notes.push(format!("the {} ended at its deadline", st.stage));
            }
        }
        if b.spent() > b.seconds() + 0.01 {
            budget_notes.push(format!(
                "the run overran the budget by {:.2} s",
                b.spent() - b.seconds()
            ));
        }
    }
    let model = Network::with_projection(&best.network, &best.basis)?;
    Ok(LearnReport {
        model,
        dimension: r,
        subspace: None,
        validation_mse: best.validation_mse,
        validation_var,
        enumerate_mse: enumerated.validation_mse,
        sphere_net_mse,
        descent_mse: descended.map(|d| d.errors),
        deep_net_mse: deep.errors,
        polished_mse,
        deepen_mse,
        chosen,
        final_stage: best.stage,
        candidates_evaluated: enumerated.candidates_evaluated,
        full_net_log10: enumerated.full_net_log10,
        train_rows: n_train,
        validation_rows: n_val,
        stages,
        backend: backend.description(),
        method: LearnMethod::Default,
        deep_net_decision: deep.decision,
        deep_net_evidence: deep.evidence,
        deepen_decision,
        time_budget: budget.map(Budget::seconds),
        budget_notes,
        target_error: config.target_error,
        target_note,
    })
}

#[cfg(test)]
mod tests {
    use super::{chosen_widths, deepen_skipped, deepen_step_scale};

    #[test]
    fn the_deepen_stage_runs_above_its_bar_below_the_deepest_candidate() {
        assert!(deepen_skipped(1.1e-2, 2, 3).is_none());
        assert!(deepen_skipped(2e-4, 1, 2).is_none());
        let poor = deepen_skipped(0.9, 2, 3).unwrap();
        assert!(poor.contains("less than half"), "{poor}");
        let done = deepen_skipped(1e-4, 2, 3).unwrap();
        assert!(done.contains("at or below"), "{done}");
        let deep = deepen_skipped(1e-2, 3, 3).unwrap();
        assert!(deep.contains("has 3 hidden layers"), "{deep}");
        // A network with no hidden layer has no layer to repeat.
        assert!(deepen_skipped(1e-2, 0, 3).is_some());
    }

    /// The deepen stage's step size is the polish's up to 32 units and 32 / width beyond.
    #[test]
    fn a_wide_new_layer_takes_smaller_steps() {
        use crate::network::{Layer, Network};
        let deepened = |w: usize| {
            let layer = |i: usize, o: usize| Layer::new(i, o, vec![0.0; i * o], vec![0.0; o]);
            let net = Network::new(4, vec![layer(4, w).unwrap(), layer(w, 1).unwrap()]).unwrap();
            super::grow::deepen(&net).unwrap()
        };
        assert_eq!(deepened(300).hidden_widths(), vec![300, 300]);
        assert_eq!(deepen_step_scale(&deepened(16)), 1.0);
        assert_eq!(deepen_step_scale(&deepened(32)), 1.0);
        assert!((deepen_step_scale(&deepened(300)) - 32.0 / 300.0).abs() < 1e-15);
    }

    #[test]
    fn a_costlier_deep_net_must_earn_its_cost() {
        let tried = |a: f64, b: f64| vec![(vec![32, 32], a), (vec![32, 32, 32], b)];
        // A near tie keeps the cheaper; a clear gain takes the deeper.
        assert_eq!(chosen_widths(&tried(5.2e-3, 5.1e-3)), [32, 32]);
        assert_eq!(chosen_widths(&tried(2.2e-3, 1.3e-3)), [32, 32, 32]);
        assert_eq!(chosen_widths(&tried(1e-3, 2e-3)), [32, 32]);
        // A pilot that diverged (NaN) is never chosen over one that did not.
        assert_eq!(chosen_widths(&tried(1e-3, f64::NAN)), [32, 32]);
        assert_eq!(chosen_widths(&tried(f64::NAN, 1e-3)), [32, 32, 32]);
    }
}
