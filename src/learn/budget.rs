//! The time budget (`learn --time-budget SECONDS`, `time_budget=` in Python): the pipeline
//! plans its stages to end within the budget and returns the best model it has when the time
//! is up (anytime learning).
//!
//! The plan: filtered PCA first runs on a prefix of the training rows (a pilot) and, when the
//! pilot's speed says a run on more rows fits in its share of the budget, again on as many as
//! fit; enumerate-and-test and the sphere-net fit get fewer candidates and rows in proportion to
//! the time left; each trainer stage gets a deadline (a share of the time left) by which its
//! step size has decayed to zero, measured against its own speed as it runs; the deep-net stage
//! runs only when the descent's residual shows structure on z (no pilot race fits a budget);
//! the polish ends early enough to prune its spare rows and score the model before the end.
//!
//! Only this mode reads the clock: without a budget every decision is counted in row reads and
//! validation errors, so the same seed gives the same model on any machine. A budgeted run
//! depends on the machine's speed and load, so it is not reproducible across machines (nor,
//! exactly, across runs on a busy one).

use crate::backend::Backend;
use crate::data::{SampleRange, SampleSource};
use crate::error::{Error, Result};
use crate::subspace::{find_subspace, SubspaceConfig, SubspaceReport};
use std::time::{Duration, Instant};

/// Share of the budget the subspace stage may take, pilot included.
const SUBSPACE_SHARE: f64 = 0.35;
/// Rows of the subspace pilot (fewer when there are fewer training rows).
const PILOT_ROWS: u64 = 65_536;

/// A wall-clock budget that started when `learn` did.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    start: Instant,
    seconds: f64,
}

impl Budget {
    /// A budget of `seconds` from now; fails unless it is positive and finite.
    pub fn new(seconds: f64) -> Result<Budget> {
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(Error::invalid(format!(
                "learn: time_budget must be a positive number of seconds (got {seconds})"
            )));
        }
        Ok(Budget {
            start: Instant::now(),
            seconds,
        })
    }

    /// The budget in seconds.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Seconds since the budget started.
    pub fn spent(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Seconds left (0 when spent).
    pub fn left(&self) -> f64 {
        (self.seconds - self.spent()).max(0.0)
    }

    /// The moment `share` of the time left from now has passed.
    pub fn deadline(&self, share: f64) -> Instant {
        Instant::now() + Duration::from_secs_f64(share.clamp(0.0, 1.0) * self.left())
    }

    /// The moment the budget ends, less `reserve` seconds.
    pub fn end_less(&self, reserve: f64) -> Instant {
        self.start + Duration::from_secs_f64((self.seconds - reserve).max(0.0))
    }

    /// `full` scaled to the time left: `per_second` per second left, at least `least`, at most
    /// `full`.
    pub fn scaled(&self, full: usize, per_second: f64, least: usize) -> usize {
        ((self.left() * per_second) as usize).clamp(least.min(full), full)
    }
}

/// Filtered PCA on `train` within the subspace stage's share of `budget` (see the module docs;
/// the pilot makes at most one refine step and no residual round):
/// the report, and what the budget changed (None when the run read every row).
pub fn subspace_within(
    backend: &dyn Backend,
    train: &dyn SampleSource,
    config: &SubspaceConfig,
    budget: &Budget,
) -> Result<(SubspaceReport, Option<String>)> {
    let n = train.len();
    let pilot_rows = n.min(PILOT_ROWS);
    let t = Instant::now();
    // The pilot is quick: at most one refine step and no residual round (the polish moves the
    // basis anyway).
    let quick = SubspaceConfig {
        refine_steps: config.refine_steps.min(1),
        residual_rounds: 0,
        ..config.clone()
    };
    let pilot = find_subspace(backend, &SampleRange::new(train, 0, pilot_rows)?, &quick);
    if pilot_rows == n {
        return Ok((pilot?, None));
    }
    // The full settings cost more per row than the pilot's (more refine steps, residual
    // rounds): counted as passes over the rows.
    let passes = |c: &SubspaceConfig| 2.0 + c.refine_steps as f64 + c.residual_rounds.min(1) as f64;
    let per_row = t.elapsed().as_secs_f64() / pilot_rows as f64 * passes(config) / passes(&quick);
    let share = SUBSPACE_SHARE * budget.seconds() - budget.spent();
    let fits = ((share / per_row.max(1e-12)) as u64).min(n);
    let pilot_found = pilot.as_ref().is_ok_and(|r| r.no_structure().is_none());
    // A second run when it reads at least twice the pilot's rows, or when the pilot found
    // nothing and there is time for any more rows.
    if fits >= 2 * pilot_rows || (!pilot_found && fits > pilot_rows) {
        let rows = SampleRange::new(train, 0, fits)?;
        let full = find_subspace(backend, &rows, config)?;
        let note = (fits < n).then(|| {
            format!(
                "filtered PCA on the first {fits} of {n} training rows (a pilot on {pilot_rows} timed it)"
            )
        });
        if full.no_structure().is_none() || !pilot_found {
            return Ok((full, note));
        }
    }
    Ok((
        pilot?,
        Some(format!(
            "filtered PCA on the first {pilot_rows} of {n} training rows (a run on more did not fit)"
        )),
    ))
}
