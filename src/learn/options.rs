//! What a user chooses for [`learn`](super::learn), in the user's words: the one options model
//! both front ends fill in (the `relu-fpt learn` command line and Python's `ReluNetRegressor`),
//! check with [`LearnOptions::check`] and turn into a [`LearnConfig`] with
//! [`LearnOptions::into_config`], so the same options give the same configuration and the same
//! model. Each option's meaning is written once, on its field below; the command line's help
//! reads it from [`LearnOptions::doc`], and the Python docstring repeats it word for word (a
//! Python test compares them). Names in backquotes are other options.

use super::{LearnConfig, LearnMethod, PAPER_BUDGET};
use crate::error::{Error, Result};

/// Declares [`LearnOptions`] and keeps the text of each field's doc comment for
/// [`LearnOptions::doc`].
macro_rules! learn_options {
    ($(#[doc = $doc:literal])* pub struct LearnOptions {
        $($(#[doc = $fdoc:literal])+ pub $name:ident : $ty:ty,)*
    }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct LearnOptions {
            $($(#[doc = $fdoc])+ pub $name: $ty,)*
        }

        impl LearnOptions {
            /// Each option's name and the lines of its doc comment.
            const DOCS: &'static [(&'static str, &'static [&'static str])] =
                &[$((stringify!($name), &[$($fdoc),+])),*];
        }
    };
}

learn_options! {
    /// The options of `learn`; see the module docs. [`Default`] holds each option's default.
    pub struct LearnOptions {
        /// The pipeline. `default`: filtered PCA with its additions (whitening, refine steps,
        /// residual rounds), enumerate-and-test and the sphere-net fit, then the gradient stages
        /// (descent, deep net, polish). `paper`: the paper's algorithm as written (filtered
        /// PCA's label rounds, each after the first conditioned on cells of every direction
        /// found so far, then enumerate-and-test over the product net of bias-free networks of
        /// widths `hidden` as the final model); no sphere-net fit and no gradient stage, so
        /// `whiten`, `descent_epochs`, `deep_widths`, `deep_epochs`, `polish`, `polish_epochs`
        /// and `spare_rows` do not apply, and `refine_steps` counts refine sweeps (an
        /// addition: the paper's round again on each direction, conditioned on the others,
        /// with a cell SIR beside its filters).
        /// Give `hidden` the architecture to enumerate (e.g. 16 for a 16-unit teacher).
        pub method: LearnMethod,
        /// Hidden widths of the candidate networks enumerate-and-test evaluates (each at least
        /// 1).
        pub hidden: Vec<usize>,
        /// Most candidate networks enumerate-and-test evaluates, at least 1 (none given: 512,
        /// or 1,000,000 with method `paper`, a cap its sweeps rarely reach).
        pub budget: Option<usize>,
        /// Largest subspace dimension filtered PCA may report, and the most basis rows the
        /// model may have, spare rows included: a bound, not a limit of the method (the
        /// dimension itself is found).
        pub max_dim: usize,
        /// Fraction of the rows (the last ones) held out for validation, strictly between 0
        /// and 1.
        pub validation_fraction: f64,
        /// Refine the network and the basis jointly (Adam on all weights and on B) after the
        /// search; off: no polish.
        pub polish: bool,
        /// Most passes of the polish over the training rows, at least 1 (none given: 30, fewer
        /// on more than 160,000 rows: at most 4.8 million row reads in all, at least one pass;
        /// a number given is not cut to a number of row reads). Like every trainer stage it
        /// ends sooner when its validation error stops improving.
        pub polish_epochs: Option<usize>,
        /// Spare basis rows the polish may grow into, each kept only when it lowers the
        /// validation error (at most `max_dim` rows in all; none given: 2, or r for r > 4
        /// directions from the subspace stage).
        pub spare_rows: Option<usize>,
        /// Most passes of the descent on z = B x with B fixed, from the search's network; 0:
        /// no descent, and no deep-net stage unless `deep_epochs` is given (none given: 30,
        /// fewer on more than 50,000 rows: at most 1.5 million row reads, at least two passes;
        /// a number given is not cut to a number of row reads). Like every trainer stage it
        /// ends sooner when its validation error stops improving.
        pub descent_epochs: Option<usize>,
        /// Hidden widths of a second network on z, trained from a random start by the same
        /// descent (the deep-net stage) and kept when it validates better; a one-hidden-layer
        /// fit approximates a deep teacher poorly. It runs when the descent's residual shows
        /// structure on z, or for as long as it keeps ahead of the descent after as many row
        /// reads (the report's deep_net_decision says which). Widths of 0 are dropped; none
        /// left: no deep-net stage. None given: [32, 32, 32] trains a pilot of 500,000 row
        /// reads (at most an eighth of the stage's), then [32, 32] is trained and goes on past
        /// as many row reads unless that pilot validates at least 20% better, when [32, 32, 32]
        /// is trained instead (without a time budget; with one, [32, 32] and no pilot).
        pub deep_widths: Option<Vec<usize>>,
        /// Most passes of the deep-net stage; 0: no deep-net stage (none given: as
        /// `descent_epochs` when that is given, else 60, fewer on more than about 170,000
        /// rows: at most 10 million row reads, at least three passes; a number given is not cut
        /// to a number of row reads).
        pub deep_epochs: Option<usize>,
        /// The stages that fit the network on z = B x (enumerate-and-test, the sphere-net fit,
        /// the descent, the deep net and the polish) read at most this many training rows (the
        /// first ones); none given: every row. Filtered PCA reads every training row either
        /// way.
        pub max_train_rows: Option<usize>,
        /// Gauss-Newton steps on the filtered-PCA basis after its rounds, one pass over the
        /// data each (0: none). With method `paper`: at most this many refine sweeps, each
        /// finding every direction again by the paper's round conditioned on the others (its
        /// filters' estimate or the cell SIR of its bin means, whichever predicts the smaller
        /// angle), one pass per direction (two in the first sweep where the cell SIR, read
        /// first, does not settle it; 0: none, the paper's rounds alone).
        pub refine_steps: usize,
        /// Learn on the whitened inputs Sigma^(-1/2) (x - mu) rather than on the raw x (the
        /// model always reads the raw x); off: learn on the raw x.
        pub whiten: bool,
        /// Wall-clock seconds the learning may take: the stages are planned to end within it
        /// and the best model found is returned when it runs out (the report's budget_notes
        /// say what the budget cut). A budgeted run depends on the machine's speed and load,
        /// so it is not reproducible across machines. None given: no limit; every trainer
        /// stage ends when its validation error stops improving, or after its passes.
        pub time_budget: Option<f64>,
        /// Validation MSE/Var at which learning stops, strictly between 0 and 1: a trainer
        /// stage ends at its first check at or below it, and the stages after the one whose
        /// model reached it do not run (the report's target_note says which). For a user who
        /// needs a given accuracy rather than the best the data supports. None given: no
        /// target. Applies to the default method.
        pub target_error: Option<f64>,
        /// Seed of every random choice: the same seed, data and options give the same model
        /// (without a time budget).
        pub seed: u64,
    }
}

impl Default for LearnOptions {
    fn default() -> Self {
        let c = LearnConfig::default();
        LearnOptions {
            method: c.method,
            hidden: c.search_config.hidden,
            budget: None,
            max_dim: c.subspace_config.max_dim,
            validation_fraction: c.validation_fraction,
            polish: c.polish,
            polish_epochs: None,
            spare_rows: None,
            descent_epochs: None,
            deep_widths: None,
            deep_epochs: None,
            max_train_rows: None,
            refine_steps: c.subspace_config.refine_steps,
            whiten: c.subspace_config.whiten,
            time_budget: None,
            target_error: None,
            seed: c.seed,
        }
    }
}

/// How a front end writes an option set to a value in its messages: the command line as
/// `--validation 1.5`, Python as `validation_fraction=1.5`. Called with the option's field
/// name and the value as text.
pub type Spelling<'a> = &'a dyn Fn(&str, &str) -> String;

/// The field names' own spelling, `name=value` (Python's keyword arguments).
pub fn keyword_spelling(name: &str, value: &str) -> String {
    format!("{name}={value}")
}

impl LearnOptions {
    /// The meaning of option `name` (a field name), as written on its field: the doc comment's
    /// lines joined by single spaces. Empty for an unknown name.
    pub fn doc(name: &str) -> String {
        Self::DOCS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, lines)| {
                lines
                    .iter()
                    .flat_map(|l| l.split_whitespace())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    }

    /// The options' field names, in declaration order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::DOCS.iter().map(|(n, _)| *n)
    }

    /// Checks the options with messages in the field names' spelling (`max_dim=0: ...`).
    pub fn check(&self) -> Result<()> {
        self.check_as(&keyword_spelling)
    }

    /// Checks each option on its own (what needs the data, such as `max_train_rows` against
    /// d, is [`LearnOptions::check_for_dim`]); `spell` writes an option as the front end
    /// names it.
    pub fn check_as(&self, spell: Spelling) -> Result<()> {
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return Err(Error::invalid(format!(
                "{}: the fraction of rows held out for validation must lie strictly between 0 and 1 (default 0.2)",
                spell("validation_fraction", &self.validation_fraction.to_string())
            )));
        }
        if self.budget == Some(0) {
            return Err(Error::invalid(format!(
                "{}: enumerate-and-test needs at least one candidate (default 512)",
                spell("budget", "0")
            )));
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return Err(Error::invalid(format!(
                "{}: give hidden widths of at least 1 each (default 4)",
                spell("hidden", &format!("{:?}", self.hidden))
            )));
        }
        if self.max_dim == 0 {
            return Err(Error::invalid(format!(
                "{}: the subspace needs room for at least one direction; give {} or more (default 32)",
                spell("max_dim", "0"),
                spell("max_dim", "1")
            )));
        }
        if self.polish && self.polish_epochs == Some(0) {
            return Err(Error::invalid(format!(
                "{}: give at least one pass, or {} to skip the polish",
                spell("polish_epochs", "0"),
                spell("polish", "false")
            )));
        }
        if let Some(b) = self.time_budget {
            if !(b.is_finite() && b > 0.0) {
                return Err(Error::invalid(format!(
                    "{}: give a positive number of seconds (e.g. {}), or leave it out to learn to the accuracy the data supports",
                    spell("time_budget", &b.to_string()),
                    spell("time_budget", "30")
                )));
            }
        }
        if let Some(t) = self.target_error {
            if !(t > 0.0 && t < 1.0) {
                return Err(Error::invalid(format!(
                    "{}: give a validation MSE/Var strictly between 0 and 1 (e.g. {}), or leave it out to learn to the accuracy the data supports",
                    spell("target_error", &t.to_string()),
                    spell("target_error", "0.01")
                )));
            }
            if self.method == LearnMethod::Paper {
                return Err(Error::invalid(format!(
                    "{}: the paper's algorithm runs as written, with no stage to skip; a target error applies to the default method",
                    spell("target_error", &t.to_string()),
                )));
            }
        }
        Ok(())
    }

    /// Checks what depends on the input dimension d: `max_train_rows` must leave the fitting
    /// stages at least [`min_fit_rows`] rows.
    pub fn check_for_dim(&self, d: usize, spell: Spelling) -> Result<()> {
        if let Some(m) = self.max_train_rows {
            let need = min_fit_rows(d);
            if m < need {
                return Err(Error::invalid(format!(
                    "{}: the fitting stages need at least {need} rows here (one minibatch of {}, and 2 (d + 1) = {} for the polish, which fits the basis's d = {d} columns); give {} or more, or leave it out to use every training row",
                    spell("max_train_rows", &m.to_string()),
                    super::PolishConfig::default().batch_size,
                    2 * (d + 1),
                    spell("max_train_rows", &need.to_string()),
                )));
            }
        }
        Ok(())
    }

    /// The pipeline's configuration: every option in its one place, the rest at
    /// [`LearnConfig::default`]. A number of passes given replaces its stage's default rule
    /// (at most so many passes, cut to a number of row reads on many rows) by exactly that
    /// many passes at most (the stage still ends sooner when its validation error stops
    /// improving).
    pub fn into_config(self) -> LearnConfig {
        let mut config = LearnConfig {
            method: self.method,
            seed: self.seed,
            validation_fraction: self.validation_fraction,
            polish: self.polish,
            deep_candidates: match self.deep_widths {
                None => LearnConfig::default().deep_candidates,
                Some(w) => {
                    let w: Vec<usize> = w.into_iter().filter(|&w| w > 0).collect();
                    if w.is_empty() {
                        Vec::new()
                    } else {
                        vec![w]
                    }
                }
            },
            spare_rows: self.spare_rows,
            max_train_rows: self.max_train_rows,
            time_budget: self.time_budget,
            target_error: self.target_error,
            ..LearnConfig::default()
        };
        if let Some(b) = self.budget {
            config.search_config.budget = b;
        } else if self.method == LearnMethod::Paper {
            config.search_config.budget = PAPER_BUDGET;
        }
        config.search_config.hidden = self.hidden;
        config.subspace_config.max_dim = self.max_dim;
        config.subspace_config.refine_steps = self.refine_steps;
        config.subspace_config.whiten = self.whiten;
        if let Some(e) = self.polish_epochs {
            config.polish_config.epochs = e;
            config.polish_config.row_budget = 0;
        }
        if let Some(e) = self.descent_epochs {
            config.descent = e > 0;
            config.descent_config.epochs = e;
            config.descent_config.row_budget = 0;
        }
        match self.deep_epochs.or(self.descent_epochs) {
            Some(0) => config.deep_candidates.clear(),
            Some(e) => {
                config.deep_config.epochs = e;
                config.deep_config.row_budget = 0;
            }
            None => {}
        }
        config
    }
}

/// The fewest rows the fitting stages can work on for d inputs: one Adam minibatch, and twice
/// the d + 1 parameters of a basis row with its share of the network, which the polish fits.
pub fn min_fit_rows(d: usize) -> usize {
    let batch = super::PolishConfig::default().batch_size;
    batch.max(2 * (d + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_the_default_config() {
        assert_eq!(
            LearnOptions::default().into_config(),
            LearnConfig::default()
        );
    }

    #[test]
    fn passes_given_are_not_cut_by_row_reads() {
        let c = LearnOptions {
            polish_epochs: Some(3),
            descent_epochs: Some(4),
            ..LearnOptions::default()
        }
        .into_config();
        assert_eq!((c.polish_config.epochs, c.polish_config.row_budget), (3, 0));
        assert_eq!(
            (c.descent_config.epochs, c.descent_config.row_budget),
            (4, 0)
        );
        // The deep net follows the descent unless given its own.
        assert_eq!((c.deep_config.epochs, c.deep_config.row_budget), (4, 0));
        let c = LearnOptions {
            descent_epochs: Some(0),
            ..LearnOptions::default()
        }
        .into_config();
        assert!(!c.descent && c.deep_candidates.is_empty());
        let c = LearnOptions {
            descent_epochs: Some(0),
            deep_epochs: Some(5),
            ..LearnOptions::default()
        }
        .into_config();
        assert!(
            !c.descent
                && c.deep_candidates == LearnConfig::default().deep_candidates
                && c.deep_config.epochs == 5
        );
        // Widths given: that network only; all zero: no deep-net stage.
        let given = |w: Vec<usize>| {
            LearnOptions {
                deep_widths: Some(w),
                ..LearnOptions::default()
            }
            .into_config()
            .deep_candidates
        };
        assert_eq!(given(vec![64, 0, 64]), vec![vec![64, 64]]);
        assert!(given(vec![0]).is_empty());
    }

    #[test]
    fn every_option_has_its_meaning() {
        assert_eq!(LearnOptions::names().count(), 17);
        for name in LearnOptions::names() {
            let doc = LearnOptions::doc(name);
            assert!(doc.len() > 20 && !doc.contains("  "), "{name}: {doc:?}");
        }
        assert!(LearnOptions::doc("polish_epochs").starts_with("Most passes of the polish"));
    }

    #[test]
    fn checks_name_the_option_as_the_front_end_spells_it() {
        let bad = LearnOptions {
            validation_fraction: 1.5,
            ..LearnOptions::default()
        };
        let msg = bad.check().unwrap_err().to_string();
        assert!(msg.contains("validation_fraction=1.5"), "{msg}");
        let cli = |name: &str, value: &str| format!("--{} {value}", name.replace('_', "-"));
        let msg = bad.check_as(&cli).unwrap_err().to_string();
        assert!(msg.contains("--validation-fraction 1.5"), "{msg}");
        let no_polish = LearnOptions {
            polish: false,
            polish_epochs: Some(0),
            ..LearnOptions::default()
        };
        assert!(no_polish.check().is_ok());
    }
}
